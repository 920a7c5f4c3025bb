/* libFuzzer target: the server (framer, store, slots) fed one connection's
 * bytes in arbitrary pieces over a scripted listener, transport and clock.
 *
 * Input: byte 0 says how the connection ends after its bytes (bit 7: the
 * client goes silent, so the gap judges it; else it closes) and how many
 * split points follow (bits 0-2); each of those bytes is one piece's length
 * (1-16); the rest is what the client sends.
 *
 * Checks: the server answers once (a closed, empty connection not at all);
 * the reply is `A` and ten uppercase hex digits or `X`, ended by nothing,
 * `\n` or `\r\n` as a received terminator allows; an `A` answers a valid
 * request that the received bytes start with, its fields the request's (a
 * read's value the store's); at most WWEP_MESSAGE_MAX bytes are kept; and
 * when the bytes are exactly one valid request, the reply is the one the
 * same bytes in one piece get (its terminator too, unless a piece ended
 * right before the request's terminator: a bare request is answered at
 * once, bare, as a board needs). */
#include "wwep_server.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

#define MAX_PIECES 8
/* Register 0B of device 0FAC holds 1234 before every run, so reads can be A. */
#define PRESET_DEVICE 0x0FAC
#define PRESET_REG 0x0B
#define PRESET_VALUE 0x1234

typedef struct script {
    const unsigned char *bytes;
    size_t size, sent;
    size_t piece_len[MAX_PIECES];
    size_t pieces, piece, piece_sent;
    int silent_after;     /* go silent instead of closing */
    int accepted, closed;
    uint32_t clock_ms;
    char reply[WWEP_ANSWER_MAX + 8];
    size_t reply_len;
    int transactions;
    unsigned char received[WWEP_MESSAGE_MAX + 1];
    size_t received_len;
} script;

static int conn_read(void *ctx, unsigned char *buf, size_t len, uint32_t timeout_ms)
{
    script *s = ctx;
    size_t n;
    (void)timeout_ms;
    if (s->sent == s->size) {
        if (!s->silent_after) return 0;
        s->clock_ms += 10; /* time passes while the client says nothing */
        return WWEP_ERR_TIMEOUT;
    }
    n = s->piece < s->pieces ? s->piece_len[s->piece] - s->piece_sent : s->size - s->sent;
    if (n > s->size - s->sent) n = s->size - s->sent;
    if (n > len) n = len;
    memcpy(buf, s->bytes + s->sent, n);
    s->sent += n;
    s->piece_sent += n;
    if (s->piece < s->pieces && s->piece_sent == s->piece_len[s->piece]) {
        s->piece++;
        s->piece_sent = 0;
    }
    return (int)n;
}

static int conn_write(void *ctx, const unsigned char *buf, size_t len)
{
    script *s = ctx;
    if (s->reply_len + len > sizeof s->reply) abort();
    memcpy(s->reply + s->reply_len, buf, len);
    s->reply_len += len;
    return (int)len;
}

static void conn_close(void *ctx)
{
    script *s = ctx;
    if (s->closed) abort(); /* closed twice */
    s->closed = 1;
}

static int lst_accept(void *ctx, wwep_transport *conn, char *peer, size_t peer_len,
                      uint32_t timeout_ms)
{
    script *s = ctx;
    (void)timeout_ms;
    if (s->accepted) return WWEP_ERR_TIMEOUT;
    s->accepted = 1;
    conn->ctx = s;
    conn->connect = NULL;
    conn->read = conn_read;
    conn->write = conn_write;
    conn->close = conn_close;
    if (peer_len > 0) peer[0] = '\0';
    return WWEP_OK;
}

static uint32_t clock_now(void *ctx)
{
    return ((script *)ctx)->clock_ms;
}

static void on_transaction(void *ctx, const wwep_transaction *t)
{
    script *s = ctx;
    s->transactions++;
    if (t->received_len > WWEP_MESSAGE_MAX) abort();
    memcpy(s->received, t->received, t->received_len);
    s->received_len = t->received_len;
    if (t->reply_len != s->reply_len || memcmp(t->reply, s->reply, t->reply_len) != 0) abort();
}

/* Serves one connection that sends bytes[0..size) in the given pieces. */
static void serve(script *s)
{
    static wwep_entry table[4];
    wwep_store store;
    wwep_server server;
    wwep_server_config config;
    wwep_listener listener;
    wwep_clock clock;
    int steps;
    wwep_store_init(&store, table, 4);
    if (wwep_store_write(&store, PRESET_DEVICE, PRESET_REG, PRESET_VALUE) != WWEP_OK) abort();
    clock.ctx = s;
    clock.now_ms = clock_now;
    wwep_server_config_defaults(&config);
    config.on_transaction = on_transaction;
    config.hook_ctx = s;
    if (wwep_server_init(&server, &store, &clock, &config) != WWEP_OK) abort();
    listener.ctx = s;
    listener.listen = NULL;
    listener.accept = lst_accept;
    listener.close = NULL;
    if (wwep_server_add_listener(&server, &listener) != WWEP_OK) abort();
    /* A connection ends within its time limit: 5000 ms at 10 ms a read. */
    for (steps = 0; steps < 2000 && !s->closed; steps++) wwep_server_step(&server, 0);
    if (!s->closed) abort();
}

static int hex_upper(const char *p, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'A' && p[i] <= 'F'))) return 0;
    return 1;
}

/* Whether the bytes hold a `\r\n`. */
static int has_crlf(const unsigned char *b, size_t len)
{
    size_t i;
    for (i = 0; i + 1 < len; i++)
        if (b[i] == '\r' && b[i + 1] == '\n') return 1;
    return 0;
}

static void check(const script *s)
{
    const char *r = s->reply;
    size_t body;
    wwep_request req;
    if (s->transactions == 0) {
        /* Only a connection that closed having sent nothing goes unanswered. */
        if (s->size != 0 || s->silent_after || s->reply_len != 0) abort();
        return;
    }
    if (s->transactions != 1) abort();
    body = s->reply_len;
    if (body >= 2 && r[body - 2] == '\r' && r[body - 1] == '\n') {
        body -= 2;
        if (!has_crlf(s->received, s->received_len)) abort();
    } else if (body >= 1 && r[body - 1] == '\n') {
        body -= 1;
        if (!memchr(s->received, '\n', s->received_len)) abort();
    }
    if (body == 1 && r[0] == 'X') return;
    if (body != 11 || r[0] != 'A' || !hex_upper(r + 1, 10)) abort();
    if (s->received_len < 7) abort();
    if (s->received[0] == 'W') {
        if (s->received_len < 11 ||
            wwep_parse_request((const char *)s->received, 11, &req) != WWEP_OK)
            abort();
    } else if (wwep_parse_request((const char *)s->received, 7, &req) != WWEP_OK) {
        abort();
    }
    {
        char expect[WWEP_REPLY_TEXT_MAX];
        wwep_reply want;
        want.accepted = 1;
        want.device = req.device;
        want.reg = req.reg;
        want.value = req.command == 'W' ? req.value : PRESET_VALUE;
        if (req.command == 'R' && !(req.device == PRESET_DEVICE && req.reg == PRESET_REG)) abort();
        wwep_format_reply(expect, &want);
        if (memcmp(expect, r, 11) != 0) abort();
    }
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    static script split, whole;
    wwep_request req;
    size_t i, header;
    if (size == 0) return 0;
    memset(&split, 0, sizeof split);
    split.silent_after = (data[0] & 0x80) != 0;
    split.pieces = data[0] & 0x07;
    header = 1 + split.pieces;
    if (size < header) return 0;
    for (i = 0; i < split.pieces; i++) split.piece_len[i] = 1 + (data[1 + i] & 0x0F);
    split.bytes = data + header;
    split.size = size - header;
    serve(&split);
    check(&split);

    /* Exactly one valid request: in pieces or in one, the same reply. */
    if (wwep_parse_request((const char *)split.bytes, split.size, &req) == WWEP_OK) {
        memset(&whole, 0, sizeof whole);
        whole.silent_after = split.silent_after;
        whole.bytes = split.bytes;
        whole.size = split.size;
        serve(&whole);
        check(&whole);
        size_t body = whole.reply[0] == 'A' ? 11 : 1;
        if (split.reply_len < body || memcmp(whole.reply, split.reply, body) != 0) abort();
        if (split.reply_len > body && (whole.reply_len != split.reply_len ||
                                       memcmp(whole.reply, split.reply, whole.reply_len) != 0))
            abort();
    }
    return 0;
}
