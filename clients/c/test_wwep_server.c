/* Unit tests of the server core: the framer (every prefix of a valid request
 * is partial; the framing table of the Rust server), the store (full, an
 * overwrite when full, the whole key space), the answer, and the server over
 * scripted connections and a clock the test moves: bare 7 and 11 bytes
 * answered at once, the gap, end of file, a silent client's `X` freeing its
 * slot, a silent client holding only its own slot. */
#include "wwep_server.h"

#include <stdio.h>
#include <string.h>

static int failures;

#define CHECK(cond)                                                         \
    do {                                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "%s:%d: failed: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                     \
        }                                                                   \
    } while (0)

/* ---- framer -------------------------------------------------------------- */

static int frame_is(const char *in, size_t len, int verdict, size_t want_len, int term)
{
    wwep_frame f;
    int got;
    f.len = 999;
    f.terminator = -1;
    got = wwep_frame_message((const unsigned char *)in, len, &f);
    if (got != verdict) return 0;
    return verdict == WWEP_FRAME_PARTIAL || (f.len == want_len && f.terminator == term);
}

#define COMPLETE(s, n, t) frame_is(s, sizeof s - 1, WWEP_FRAME_COMPLETE, n, t)
#define PARTIAL(s) frame_is(s, sizeof s - 1, WWEP_FRAME_PARTIAL, 0, 0)

static void test_every_prefix_is_partial(void)
{
    static const char *const valid[] = {"W0FAC0B1234", "R0FAC0B", "W0FAC0B1234\r\n",
                                        "R0fac0b\r\n"};
    size_t i, cut;
    for (i = 0; i < sizeof valid / sizeof valid[0]; i++) {
        size_t body = strcspn(valid[i], "\r");
        for (cut = 0; cut < body; cut++)
            CHECK(frame_is(valid[i], cut, WWEP_FRAME_PARTIAL, 0, 0));
        CHECK(frame_is(valid[i], body, WWEP_FRAME_COMPLETE, body, WWEP_TERM_NONE));
    }
    /* A message followed by a lone CR waits for the LF. */
    CHECK(PARTIAL("R0FAC0B\r"));
}

static void test_framing_rules(void)
{
    unsigned char full[WWEP_MESSAGE_MAX];
    wwep_frame f;
    CHECK(COMPLETE("W0FAC0B1234", 11, WWEP_TERM_NONE));
    CHECK(COMPLETE("W0FAC0B1234\n", 11, WWEP_TERM_LF));
    CHECK(COMPLETE("W0FAC0B1234\r\n", 11, WWEP_TERM_CRLF));
    CHECK(COMPLETE("R0FAC0B", 7, WWEP_TERM_NONE));
    CHECK(COMPLETE("R0FAC0B\n", 7, WWEP_TERM_LF));
    CHECK(COMPLETE("R0FAC0B\r\ntrailing", 7, WWEP_TERM_CRLF));
    CHECK(COMPLETE("R0FAC0B\ngarbage", 7, WWEP_TERM_LF));
    /* Judged on every byte received: one byte too many is a bad message. */
    CHECK(COMPLETE("W0FAC0B12345", 12, WWEP_TERM_NONE));
    CHECK(COMPLETE("W0FAC0B12345\n", 12, WWEP_TERM_LF));
    CHECK(COMPLETE("R0FAC0Bxyz", 10, WWEP_TERM_NONE));
    /* A newline before the required length ends a short message. */
    CHECK(COMPLETE("W01234\n", 6, WWEP_TERM_LF));
    CHECK(COMPLETE("W01234\r\n", 6, WWEP_TERM_CRLF));
    CHECK(COMPLETE("\n", 0, WWEP_TERM_LF));
    CHECK(COMPLETE("\r\n", 0, WWEP_TERM_CRLF));
    /* An illegal command letter is judged at once, with what has come. */
    CHECK(COMPLETE("h", 1, WWEP_TERM_NONE));
    CHECK(COMPLETE("hello", 5, WWEP_TERM_NONE));
    CHECK(COMPLETE("hello\r", 5, WWEP_TERM_NONE));
    CHECK(COMPLETE("hello\n", 5, WWEP_TERM_LF));
    CHECK(COMPLETE("w0fac0b1234", 11, WWEP_TERM_NONE));
    CHECK(COMPLETE("\x16\x03\x01", 3, WWEP_TERM_NONE));
    memset(full, 'Z', sizeof full);
    CHECK(wwep_frame_message(full, sizeof full, &f) == WWEP_FRAME_COMPLETE &&
          f.len == WWEP_MESSAGE_MAX && f.terminator == WWEP_TERM_NONE);
}

static int final_is(const char *in, size_t want_len, int term)
{
    wwep_frame f;
    wwep_frame_final((const unsigned char *)in, strlen(in), &f);
    return f.len == want_len && f.terminator == term;
}

static void test_final_framing(void)
{
    CHECK(final_is("W01234", 6, WWEP_TERM_NONE));
    CHECK(final_is("R0FAC0B\r", 7, WWEP_TERM_NONE));
    CHECK(final_is("R0F", 3, WWEP_TERM_NONE));
    CHECK(final_is("hello\r", 5, WWEP_TERM_NONE));
    CHECK(final_is("R0FAC0B\n", 7, WWEP_TERM_LF));
    CHECK(final_is("", 0, WWEP_TERM_NONE));
}

/* ---- store and answer ----------------------------------------------------- */

static void test_store(void)
{
    wwep_entry table[3];
    wwep_store s;
    uint16_t v = 0;
    wwep_store_init(&s, table, 3);
    CHECK(wwep_store_read(&s, 0x0FAC, 0x0B, &v) == WWEP_ERR_NOT_FOUND);
    CHECK(wwep_store_write(&s, 0xFFFF, 0xFF, 1) == WWEP_OK);
    CHECK(wwep_store_write(&s, 0x0000, 0x00, 2) == WWEP_OK);
    CHECK(wwep_store_write(&s, 0x1234, 0x05, 3) == WWEP_OK);
    /* The fourth distinct register does not fit; the three are untouched. */
    CHECK(wwep_store_write(&s, 0xABCD, 0x05, 4) == WWEP_ERR_FULL);
    CHECK(wwep_store_read(&s, 0xABCD, 0x05, &v) == WWEP_ERR_NOT_FOUND);
    /* An overwrite always fits. */
    CHECK(wwep_store_write(&s, 0xFFFF, 0xFF, 0xBEEF) == WWEP_OK);
    CHECK(wwep_store_read(&s, 0xFFFF, 0xFF, &v) == WWEP_OK && v == 0xBEEF);
    CHECK(wwep_store_read(&s, 0x0000, 0x00, &v) == WWEP_OK && v == 2);
    CHECK(wwep_store_read(&s, 0x1234, 0x05, &v) == WWEP_OK && v == 3);
    /* Same register number, another device: another register. */
    CHECK(wwep_store_read(&s, 0x1235, 0x05, &v) == WWEP_ERR_NOT_FOUND);
    CHECK(s.count == 3);
}

static void test_store_keeps_order(void)
{
    static wwep_entry table[512];
    wwep_store s;
    uint16_t v;
    unsigned i, ok = 1;
    wwep_store_init(&s, table, 512);
    /* Keys written in a scrambled order are all found again. */
    for (i = 0; i < 512; i++) {
        unsigned k = (i * 197u) % 512u;
        ok &= wwep_store_write(&s, (uint16_t)(k * 131u), (uint8_t)k, (uint16_t)(k + 1)) == WWEP_OK;
    }
    for (i = 0; i < 512; i++)
        ok &= wwep_store_read(&s, (uint16_t)(i * 131u), (uint8_t)i, &v) == WWEP_OK &&
              v == (uint16_t)(i + 1);
    CHECK(ok);
    CHECK(wwep_store_write(&s, 7, 7, 7) == WWEP_ERR_FULL);
}

static int answers(wwep_store *s, const char *msg, int term, const char *want)
{
    char out[WWEP_ANSWER_MAX];
    size_t n = wwep_answer(s, (const unsigned char *)msg, strlen(msg), term, out);
    return n == strlen(want) && strcmp(out, want) == 0;
}

static void test_answer(void)
{
    wwep_entry table[4];
    wwep_store s;
    wwep_store_init(&s, table, 4);
    CHECK(answers(&s, "R0FAC0B", WWEP_TERM_NONE, "X"));
    CHECK(answers(&s, "W0FAC0B1234", WWEP_TERM_NONE, "A0FAC0B1234"));
    CHECK(answers(&s, "R0FAC0B", WWEP_TERM_LF, "A0FAC0B1234\n"));
    /* Lowercase hex is accepted and answered in uppercase. */
    CHECK(answers(&s, "W0fac0babcd", WWEP_TERM_CRLF, "A0FAC0BABCD\r\n"));
    CHECK(answers(&s, "R0fac0b", WWEP_TERM_NONE, "A0FAC0BABCD"));
    /* A lowercase command is X. */
    CHECK(answers(&s, "r0fac0b", WWEP_TERM_NONE, "X"));
    CHECK(answers(&s, "w0fac0b1234", WWEP_TERM_NONE, "X"));
    CHECK(answers(&s, "W01234", WWEP_TERM_NONE, "X"));
    CHECK(answers(&s, "W0FAC0B12345", WWEP_TERM_NONE, "X"));
    CHECK(answers(&s, "W0FAC0BG234", WWEP_TERM_NONE, "X"));
    CHECK(answers(&s, "", WWEP_TERM_LF, "X\n"));
}

/* ---- the server over scripted connections -------------------------------- */

static uint32_t clock_ms;

static uint32_t fake_now(void *ctx)
{
    (void)ctx;
    return clock_ms;
}

/* A connection: chunks arriving at given times, then (optionally) an end of
 * file; what the server wrote, and whether it closed. */
typedef struct chunk {
    uint32_t at;
    const char *bytes;  /* NULL: end of file */
} chunk;

typedef struct conn {
    chunk chunks[4];
    int next;
    uint32_t arrives;   /* when the connection is there to accept */
    int read_error;     /* if not 0, what every read returns (a reset) */
    int accepted, closed;
    uint32_t closed_at;
    char written[32];
    size_t written_len;
} conn;

typedef struct fake_listener {
    conn *conns;
    int count, next;
} fake_listener;

/* Moves the clock on to `until` (as a wait that nothing ends would). */
static void sleep_until(uint32_t until)
{
    if ((int32_t)(until - clock_ms) > 0) clock_ms = until;
}

static int c_read(void *ctx, unsigned char *buf, size_t len, uint32_t timeout_ms)
{
    conn *c = ctx;
    chunk *k = c->next < 4 ? &c->chunks[c->next] : NULL;
    size_t n;
    if (c->read_error != 0) return c->read_error;
    if (k == NULL || (k->bytes == NULL && k->at == 0)) {
        /* Nothing more will come: a client that keeps quiet. */
        sleep_until(clock_ms + timeout_ms);
        return WWEP_ERR_TIMEOUT;
    }
    if ((int32_t)(k->at - clock_ms) > 0) {
        if ((int32_t)(k->at - (clock_ms + timeout_ms)) > 0) {
            sleep_until(clock_ms + timeout_ms);
            return WWEP_ERR_TIMEOUT;
        }
        sleep_until(k->at);
    }
    if (k->bytes == NULL) return 0;
    n = strlen(k->bytes);
    if (n > len) n = len;
    memcpy(buf, k->bytes, n);
    c->next++;
    return (int)n;
}

static int c_write(void *ctx, const unsigned char *buf, size_t len)
{
    conn *c = ctx;
    if (c->closed || c->written_len + len >= sizeof c->written) return WWEP_ERR_IO;
    memcpy(c->written + c->written_len, buf, len);
    c->written_len += len;
    c->written[c->written_len] = '\0';
    return (int)len;
}

static void c_close(void *ctx)
{
    conn *c = ctx;
    c->closed = 1;
    c->closed_at = clock_ms;
}

static int l_accept(void *ctx, wwep_transport *t, char *peer, size_t peer_len,
                    uint32_t timeout_ms)
{
    fake_listener *l = ctx;
    conn *c;
    if (l->next >= l->count) {
        sleep_until(clock_ms + timeout_ms);
        return WWEP_ERR_TIMEOUT;
    }
    c = &l->conns[l->next];
    if ((int32_t)(c->arrives - clock_ms) > 0) {
        if ((int32_t)(c->arrives - (clock_ms + timeout_ms)) > 0) {
            sleep_until(clock_ms + timeout_ms);
            return WWEP_ERR_TIMEOUT;
        }
        sleep_until(c->arrives);
    }
    l->next++;
    c->accepted = 1;
    t->ctx = c;
    t->connect = NULL;
    t->read = c_read;
    t->write = c_write;
    t->close = c_close;
    snprintf(peer, peer_len, "10.0.0.%d:4000", l->next);
    return WWEP_OK;
}

static int failures_seen, failure_code;
static size_t failure_listener;

static void failed(void *ctx, size_t listener, const char *peer, int code)
{
    (void)ctx;
    (void)peer;
    failures_seen++;
    failure_listener = listener;
    failure_code = code;
}

static wwep_entry table[8];
static wwep_store store;
static wwep_server server;
static fake_listener fake;
static wwep_listener listener;
static unsigned long transactions;

static void count(void *ctx, const wwep_transaction *t)
{
    (void)ctx;
    transactions = t->count;
}

/* A server with one fake listener over `conns`, timeout 5000, gap 100. */
static void start(conn *conns, int n, size_t capacity)
{
    wwep_clock clock;
    wwep_server_config config;
    clock_ms = 1000;
    transactions = 0;
    clock.ctx = NULL;
    clock.now_ms = fake_now;
    wwep_store_init(&store, table, capacity);
    wwep_server_config_defaults(&config);
    config.on_transaction = count;
    config.on_failure = failed;
    failures_seen = 0;
    failure_code = 0;
    wwep_server_init(&server, &store, &clock, &config);
    fake.conns = conns;
    fake.count = n;
    fake.next = 0;
    listener.ctx = &fake;
    listener.listen = NULL;
    listener.accept = l_accept;
    listener.close = NULL;
    wwep_server_add_listener(&server, &listener);
}

/* Steps until every connection is closed or the clock passes `limit`. A
 * server whose steps stop moving time on (a busy loop) fails instead of
 * hanging the test. */
static void run_until(conn *conns, int n, uint32_t limit)
{
    int i, open;
    long steps = 0;
    do {
        wwep_server_step(&server, 50);
        for (open = 0, i = 0; i < n; i++) open += !conns[i].closed;
    } while (open > 0 && (int32_t)(limit - clock_ms) > 0 && ++steps < 100000);
    CHECK(steps < 100000);
}

/* One connection sending `chunks`; returns it served. */
static conn one(const chunk *chunks, int n)
{
    conn c;
    memset(&c, 0, sizeof c);
    memcpy(c.chunks, chunks, (size_t)n * sizeof *chunks);
    c.arrives = 1000;
    start(&c, 1, 8);
    run_until(&c, 1, 20000);
    return c;
}

static void test_bare_messages_answered_at_once(void)
{
    chunk w[] = {{1000, "W0FAC0B1234"}};
    chunk r[] = {{1000, "R0FAC0B"}};
    conn c = one(w, 1);
    CHECK(strcmp(c.written, "A0FAC0B1234") == 0);
    CHECK(c.closed && c.closed_at == 1000);
    /* A read on a fresh store: nothing there, X at once. */
    c = one(r, 1);
    CHECK(strcmp(c.written, "X") == 0 && c.closed_at == 1000);
}

static void test_split_message_is_joined(void)
{
    chunk k[] = {{1000, "W0FA"}, {1050, "C0B12"}, {1090, "34"}};
    conn c = one(k, 3);
    CHECK(strcmp(c.written, "A0FAC0B1234") == 0);
    CHECK(c.closed_at == 1090);
}

static void test_gap(void)
{
    chunk k[] = {{1000, "W01234"}};
    chunk late[] = {{1000, "W0FAC0B"}, {1099, "1234"}};
    conn c = one(k, 1);
    /* Judged when 100 ms have passed without a byte, not before. */
    CHECK(strcmp(c.written, "X") == 0);
    CHECK(c.closed_at >= 1100 && c.closed_at <= 1100 + 5);
    /* 99 ms apart is still one message. */
    c = one(late, 2);
    CHECK(strcmp(c.written, "A0FAC0B1234") == 0);
}

static void test_terminators_and_trailing_bytes(void)
{
    chunk lf[] = {{1000, "W0fac0b1234\n"}};
    chunk crlf[] = {{1000, "R0FAC0B\r"}, {1010, "\n"}};
    chunk trailing[] = {{1000, "W0FAC0B12345"}};
    chunk after[] = {{1000, "W0FAC0B1234\r\nmore"}};
    chunk lower[] = {{1000, "w0fac0b1234\n"}};
    conn c = one(lf, 1);
    CHECK(strcmp(c.written, "A0FAC0B1234\n") == 0);
    c = one(crlf, 2);
    CHECK(strcmp(c.written, "X\r\n") == 0 && c.closed_at == 1010);
    c = one(trailing, 1);
    CHECK(strcmp(c.written, "X") == 0 && c.closed_at == 1000);
    c = one(after, 1);
    CHECK(strcmp(c.written, "A0FAC0B1234\r\n") == 0);
    c = one(lower, 1);
    CHECK(strcmp(c.written, "X\n") == 0);
}

static void test_end_of_file(void)
{
    chunk half[] = {{1000, "R0FAC0B\r"}, {1020, NULL}};
    chunk short_eof[] = {{1000, "W01"}, {1010, NULL}};
    chunk nothing[] = {{1030, NULL}};
    conn c = one(half, 2);
    /* A terminator cut short by the end of file is dropped. */
    CHECK(strcmp(c.written, "X") == 0 && c.closed_at == 1020);
    c = one(short_eof, 2);
    CHECK(strcmp(c.written, "X") == 0 && c.closed_at == 1010);
    /* Nothing sent, then closed: nobody to answer. */
    c = one(nothing, 1);
    CHECK(c.written_len == 0 && c.closed && c.closed_at == 1030);
    CHECK(transactions == 0);
}

/* A connection whose read fails (a reset, a failed handshake) is closed
 * without a reply, and the failure hook says so; no transaction is counted. */
static void test_a_failed_read_is_reported(void)
{
    conn c;
    memset(&c, 0, sizeof c);
    c.arrives = 1000;
    c.read_error = WWEP_ERR_TLS;
    start(&c, 1, 8);
    run_until(&c, 1, 20000);
    CHECK(c.closed && c.written_len == 0 && c.closed_at == 1000);
    CHECK(failures_seen == 1 && failure_code == WWEP_ERR_TLS && failure_listener == 0);
    CHECK(transactions == 0);
}

static void test_silent_client_gets_x_after_its_time(void)
{
    chunk none[] = {{0, NULL}};
    conn c = one(none, 1);
    CHECK(strcmp(c.written, "X") == 0);
    CHECK(c.closed_at >= 6000 && c.closed_at <= 6000 + 5);
}

/* WWEP_SERVER_SLOTS silent clients fill every slot; one more waits in the
 * backlog until their time is up, and is served then. With two slots or
 * more, a talking client beside a silent one is served at once. */
static void test_slots(void)
{
    conn conns[WWEP_SERVER_SLOTS + 1];
    int i;
    memset(conns, 0, sizeof conns);
    for (i = 0; i < WWEP_SERVER_SLOTS; i++) conns[i].arrives = 1000;
    conns[WWEP_SERVER_SLOTS].arrives = 1200;
    conns[WWEP_SERVER_SLOTS].chunks[0].at = 1200;
    conns[WWEP_SERVER_SLOTS].chunks[0].bytes = "W0FAC0B1234";
    start(conns, WWEP_SERVER_SLOTS + 1, 8);
    run_until(conns, WWEP_SERVER_SLOTS + 1, 3000);
    CHECK(!conns[WWEP_SERVER_SLOTS].accepted);
    CHECK(wwep_server_open(&server) == WWEP_SERVER_SLOTS);
    run_until(conns, WWEP_SERVER_SLOTS + 1, 20000);
    for (i = 0; i < WWEP_SERVER_SLOTS; i++)
        CHECK(strcmp(conns[i].written, "X") == 0 && conns[i].closed_at <= 6000 + 5);
    CHECK(strcmp(conns[WWEP_SERVER_SLOTS].written, "A0FAC0B1234") == 0);
    CHECK(conns[WWEP_SERVER_SLOTS].closed_at <= 6000 + 10);
    CHECK(wwep_server_open(&server) == 0);

#if WWEP_SERVER_SLOTS >= 2
    memset(conns, 0, sizeof conns);
    conns[0].arrives = 1000;
    conns[1].arrives = 1100;
    /* Its message comes after it is accepted, so only stepping it finds it. */
    conns[1].chunks[0].at = 1150;
    conns[1].chunks[0].bytes = "R0FAC0B\n";
    start(conns, 2, 8);
    run_until(conns, 2, 20000);
    CHECK(strcmp(conns[1].written, "X\n") == 0);
    CHECK(conns[1].closed_at <= 1150 + 5);
    CHECK(conns[0].closed_at >= 6000);
#endif
}

static void test_full_store_through_the_server(void)
{
    static const char *const msgs[] = {"W000001AAAA\n", "W000002BBBB\n", "W000003CCCC\n",
                                       "W000004DDDD\n", "W0000010001\n", "R000001\n"};
    static const char *const want[] = {"A000001AAAA\n", "A000002BBBB\n", "A000003CCCC\n",
                                       "X\n", "A0000010001\n", "A0000010001\n"};
    conn conns[6];
    int i;
    memset(conns, 0, sizeof conns);
    for (i = 0; i < 6; i++) {
        conns[i].arrives = 1000 + 10 * (uint32_t)i;
        conns[i].chunks[0].at = conns[i].arrives;
        conns[i].chunks[0].bytes = msgs[i];
    }
    start(conns, 6, 3);
    run_until(conns, 6, 20000);
    for (i = 0; i < 6; i++) CHECK(strcmp(conns[i].written, want[i]) == 0);
    CHECK(transactions == 6 && failures_seen == 0);
}

/* A flood of clients answered at once: one step takes a bounded number of
 * them and returns, so the caller's loop keeps control. */
static void test_a_step_takes_a_bounded_number(void)
{
    static conn conns[4 * WWEP_SERVER_SLOTS];
    int i, n = (int)(sizeof conns / sizeof conns[0]);
    memset(conns, 0, sizeof conns);
    for (i = 0; i < n; i++) {
        conns[i].arrives = 1000;
        conns[i].chunks[0].at = 1000;
        conns[i].chunks[0].bytes = "R0FAC0B";
    }
    start(conns, n, 8);
    wwep_server_step(&server, 0);
    CHECK(fake.next == WWEP_SERVER_SLOTS);
    CHECK(strcmp(conns[0].written, "X") == 0 && conns[0].closed);
    run_until(conns, n, 2000);
    CHECK(fake.next == n && transactions == (unsigned long)n);
}

/* Two listeners (exercise 7): a step takes turns between them, so a flood on
 * one port leaves the other served in the same step, and the transaction
 * names the listener it came from. */
static void test_two_listeners_take_turns(void)
{
    static conn busy[4 * WWEP_SERVER_SLOTS], quiet[1];
    static fake_listener second;
    static wwep_listener second_listener;
    int i, n = (int)(sizeof busy / sizeof busy[0]);
    memset(busy, 0, sizeof busy);
    memset(quiet, 0, sizeof quiet);
    for (i = 0; i < n; i++) {
        busy[i].arrives = 1000;
        busy[i].chunks[0].at = 1000;
        busy[i].chunks[0].bytes = "W0001010001";
    }
    quiet[0].arrives = 1000;
    quiet[0].chunks[0].at = 1000;
    quiet[0].chunks[0].bytes = "R000101";
    start(busy, n, 8);
    second.conns = quiet;
    second.count = 1;
    second.next = 0;
    second_listener = listener;
    second_listener.ctx = &second;
    CHECK(wwep_server_add_listener(&server, &second_listener) == WWEP_OK);
    /* A third is one more than WWEP_SERVER_LISTENERS. */
    CHECK(wwep_server_add_listener(&server, &second_listener) == WWEP_ERR_ARG);
    wwep_server_step(&server, 0);
    CHECK(quiet[0].closed && strcmp(quiet[0].written, "A0001010001") == 0);
    CHECK(fake.next < n);
}

static void test_stop_judges_what_is_open(void)
{
    conn conns[2];
    memset(conns, 0, sizeof conns);
    conns[0].arrives = 1000;
    conns[0].chunks[0].at = 1000;
    conns[0].chunks[0].bytes = "R0FA";
    start(conns, WWEP_SERVER_SLOTS >= 2 ? 2 : 1, 8);
    conns[1].arrives = 1000;
    wwep_server_step(&server, 0);
    wwep_server_stop(&server);
    CHECK(strcmp(conns[0].written, "X") == 0 && conns[0].closed);
#if WWEP_SERVER_SLOTS >= 2
    CHECK(strcmp(conns[1].written, "X") == 0 && conns[1].closed);
#endif
    CHECK(wwep_server_open(&server) == 0);
}

int main(void)
{
    test_every_prefix_is_partial();
    test_framing_rules();
    test_final_framing();
    test_store();
    test_store_keeps_order();
    test_answer();
    test_bare_messages_answered_at_once();
    test_split_message_is_joined();
    test_gap();
    test_terminators_and_trailing_bytes();
    test_end_of_file();
    test_silent_client_gets_x_after_its_time();
    test_a_failed_read_is_reported();
    test_slots();
    test_full_store_through_the_server();
    test_a_step_takes_a_bounded_number();
    test_two_listeners_take_turns();
    test_stop_judges_what_is_open();
    if (failures) {
        fprintf(stderr, "test_wwep_server: %d failed\n", failures);
        return 1;
    }
    printf("test_wwep_server: all passed\n");
    return 0;
}
