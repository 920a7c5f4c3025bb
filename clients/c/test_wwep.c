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
