/* Unit tests of the message rules: every prefix of a valid reply, every
 * malformed one, requests, the device id from a MAC. */
#include "wwep.h"

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

/* A transport that plays back the server's reply in chunks, then reports
 * `end` (0 for a close, or an error such as WWEP_ERR_TIMEOUT). */
typedef struct script {
    const char *chunks[4];
    int next, end, closed;
} script;

static int s_connect(void *ctx, const char *host, uint16_t port, uint32_t timeout_ms)
{
    (void)ctx, (void)host, (void)port, (void)timeout_ms;
    return WWEP_OK;
}

static int s_write(void *ctx, const unsigned char *buf, size_t len)
{
    (void)ctx, (void)buf;
    return (int)len;
}

static int s_read(void *ctx, unsigned char *buf, size_t len, uint32_t timeout_ms)
{
    script *s = ctx;
    const char *chunk = s->next < 4 ? s->chunks[s->next] : NULL;
    size_t n;
    (void)timeout_ms;
    if (chunk == NULL) return s->end;
    n = strlen(chunk);
    if (n > len) n = len;
    memcpy(buf, chunk, n);
    if (n == strlen(chunk)) s->next++;
    else s->chunks[s->next] = chunk + n;
    return (int)n;
}

static void s_close(void *ctx)
{
    ((script *)ctx)->closed = 1;
}

/* wwep_transact of `request` over the script: its result, and the reply
 * line in *r. */
static int played_for(const char *request, script s, wwep_reply *r)
{
    wwep_transport t;
    int rc;
    t.ctx = &s;
    t.connect = s_connect;
    t.write = s_write;
    t.read = s_read;
    t.close = s_close;
    rc = wwep_transact(&t, "board", 27708, 500, request, r);
    if (!s.closed) rc = -100;
    return rc;
}

static int played(script s, wwep_reply *r)
{
    return played_for("W04FB050001", s, r);
}

static int parse(const char *s, wwep_reply *r)
{
    return wwep_parse_reply((const unsigned char *)s, strlen(s), r);
}

int main(void)
{
    static const char *valid[] = {"A04FB050001", "a", "A0fac0B1234\n", "AFFFFFFFFFF\r\n"};
    static const char *malformed[] = {"", "B", "a04FB050001", "A04FG050001", "A 04FB05000",
                                      "A04FB0500011", "A04FB050001\n\n", "A04FB050001\rx",
                                      "R04FB05", "W04FB050001", "\n", " X"};
    char buf[WWEP_REQUEST_MAX], text[WWEP_REPLY_TEXT_MAX];
    wwep_reply r;
    wwep_request q;
    uint16_t dev;
    size_t i, n;

    /* Every proper prefix of a valid `A` reply is partial; the whole is complete. */
    for (i = 0; i < sizeof valid / sizeof valid[0]; i++) {
        const char *v = valid[i];
        if (v[0] != 'A') continue;
        for (n = 0; n < 11; n++)
            CHECK(wwep_parse_reply((const unsigned char *)v, n, &r) == WWEP_REPLY_PARTIAL);
        CHECK(parse(v, &r) == WWEP_REPLY_COMPLETE && r.accepted);
    }
    CHECK(parse("A0fac0B1234\r", &r) == WWEP_REPLY_PARTIAL);
    CHECK(parse("A0fac0B1234", &r) == WWEP_REPLY_COMPLETE && r.device == 0x0FAC && r.reg == 0x0B &&
          r.value == 0x1234);
    wwep_format_reply(text, &r);
    CHECK(strcmp(text, "A0FAC0B1234") == 0);
    CHECK(parse("AFFFFFFFFFF\r\n", &r) == WWEP_REPLY_COMPLETE && r.device == 0xFFFF &&
          r.reg == 0xFF && r.value == 0xFFFF);
    /* X is complete at its first byte; a reason after it is ignored. */
    CHECK(parse("X", &r) == WWEP_REPLY_COMPLETE && !r.accepted);
    CHECK(parse("X Not Found\n", &r) == WWEP_REPLY_COMPLETE && !r.accepted);
    CHECK(parse("X illegal command", &r) == WWEP_REPLY_COMPLETE && !r.accepted);
    wwep_format_reply(text, &r);
    CHECK(strcmp(text, "X") == 0);
    /* The empty reply so far is partial; the malformed ones are errors. */
    CHECK(parse("", &r) == WWEP_REPLY_PARTIAL);
    for (i = 1; i < sizeof malformed / sizeof malformed[0]; i++) {
        if (parse(malformed[i], &r) != WWEP_ERR_REPLY) {
            fprintf(stderr, "malformed reply accepted: \"%s\"\n", malformed[i]);
            failures++;
        }
    }

    /* A transaction keeps the reply line as the server sent it. */
    {
        script a = {{"A04FB", "050001\n"}, 0, 0, 0};
        script cr = {{"A04FB050001\r", "\n"}, 0, 0, 0};
        script x = {{"X"}, 0, 0, 0};
        script reason = {{"X forb", "idden\n", "junk"}, 0, 0, 0};
        script waited = {{"X Not Found"}, 0, WWEP_ERR_TIMEOUT, 0};
        script cut = {{"A04FB05"}, 0, 0, 0};
        script silent = {{NULL}, 0, WWEP_ERR_TIMEOUT, 0};
        script longer = {{"X 0123456789012345678901234567890123456789012345678901234567890123456789"},
                         0, 0, 0};
        CHECK(played(a, &r) == WWEP_OK && r.accepted && strcmp(r.line, "A04FB050001") == 0);
        CHECK(played(cr, &r) == WWEP_OK && r.accepted && strcmp(r.line, "A04FB050001") == 0);
        CHECK(played(x, &r) == WWEP_OK && !r.accepted && strcmp(r.line, "X") == 0);
        CHECK(played(reason, &r) == WWEP_OK && !r.accepted && strcmp(r.line, "X forbidden") == 0);
        CHECK(played(waited, &r) == WWEP_OK && !r.accepted && strcmp(r.line, "X Not Found") == 0);
        CHECK(played(cut, &r) == WWEP_ERR_REPLY);
        CHECK(played(silent, &r) == WWEP_ERR_TIMEOUT);
        CHECK(played(longer, &r) == WWEP_OK && !r.accepted &&
              strlen(r.line) == WWEP_REPLY_LINE_MAX - 1 && strncmp(r.line, "X 0123", 6) == 0);
    }

    /* An `A` must answer the request: another device, register or (for a
     * write) value is WWEP_ERR_MISMATCH, the reply kept for the message. */
    {
        static const char *others[] = {"A1111050001", "A04FB060001", "A04FB050002\n"};
        script x = {{"X"}, 0, 0, 0};
        script same_register = {{"A04FB059999"}, 0, 0, 0};
        for (i = 0; i < sizeof others / sizeof others[0]; i++) {
            script s = {{NULL}, 0, 0, 0};
            s.chunks[0] = others[i];
            if (played(s, &r) != WWEP_ERR_MISMATCH || !r.accepted ||
                strncmp(r.line, others[i], 11) != 0) {
                fprintf(stderr, "mismatched reply taken: \"%s\"\n", others[i]);
                failures++;
            }
        }
        {
            script closed = {{"A1111229999"}, 0, 0, 0};
            CHECK(played(closed, &r) == WWEP_ERR_MISMATCH && r.device == 0x1111 &&
                  strcmp(r.line, "A1111229999") == 0);
        }
        CHECK(played(x, &r) == WWEP_OK && !r.accepted);
        /* A read's value is the register's, whatever it is. */
        CHECK(played_for("R04FB05", same_register, &r) == WWEP_OK && r.value == 0x9999);
        {
            script other_register = {{"A04FB069999"}, 0, 0, 0};
            CHECK(played_for("R04FB05", other_register, &r) == WWEP_ERR_MISMATCH);
        }
        CHECK(strcmp(wwep_strerror(WWEP_ERR_MISMATCH), "reply for another request") == 0);
    }

    /* Requests: uppercase out, either case in. */
    CHECK(wwep_format_write(buf, 0x04FB, 0x05, 0x0001) == 11 && strcmp(buf, "W04FB050001") == 0);
    CHECK(wwep_format_read(buf, 0x0fac, 0x0b) == 7 && strcmp(buf, "R0FAC0B") == 0);
    CHECK(wwep_parse_request("w0fac0b1234", 11, &q) == WWEP_ERR_ARG);
    CHECK(wwep_parse_request("W0fac0b1234\r\n", 13, &q) == WWEP_OK && q.value == 0x1234);
    CHECK(wwep_parse_request("R0FAC0b\n", 8, &q) == WWEP_OK && q.command == 'R' && q.reg == 0x0B);
    CHECK(wwep_parse_request("W01234", 6, &q) == WWEP_ERR_ARG);
    CHECK(wwep_parse_request("R0FAC0G", 7, &q) == WWEP_ERR_ARG);

    /* The device id: the 16-bit sum of the MAC's bytes. */
    CHECK(wwep_device_from_mac_text("aa:bb:cc:dd:ee:ff", &dev) == WWEP_OK && dev == 0x04FB);
    CHECK(wwep_device_from_mac_text("AA-BB-CC-DD-EE-FF", &dev) == WWEP_OK && dev == 0x04FB);
    CHECK(wwep_device_from_mac_text("00:00:00:00:00:00", &dev) == WWEP_OK && dev == 0);
    CHECK(wwep_device_from_mac_text("aa:bb:cc:dd:ee", &dev) == WWEP_ERR_ARG);
    CHECK(wwep_device_from_mac_text("aa:bb:cc:dd:ee:ff:00", &dev) == WWEP_ERR_ARG);
    CHECK(wwep_device_from_mac_text("aa:bb:cc:dd:ee:fg", &dev) == WWEP_ERR_ARG);
    CHECK(wwep_device_from_mac_text("a:bb:cc:dd:ee:ff", &dev) == WWEP_ERR_ARG);

    if (failures) {
        fprintf(stderr, "%d unit test checks failed\n", failures);
        return 1;
    }
    printf("wwep unit tests: all passed\n");
    return 0;
}
