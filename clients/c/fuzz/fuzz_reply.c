/* libFuzzer target: wwep_parse_reply on any bytes, and on every prefix of
 * them. A complete `A` reply formats back to its first 11 bytes, uppercased;
 * `X...` is complete at its first byte; no prefix of a partial reply is an
 * error; parsing without an output gives the same verdict. */
#include "wwep.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

static int upper(int c)
{
    return (c >= 'a' && c <= 'f') ? c - 'a' + 'A' : c;
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    wwep_reply reply;
    char text[WWEP_REPLY_TEXT_MAX];
    size_t i, n;
    int verdict = wwep_parse_reply(data, size, &reply);
    if (verdict != wwep_parse_reply(data, size, NULL)) abort();
    if (verdict != WWEP_REPLY_COMPLETE && verdict != WWEP_REPLY_PARTIAL &&
        verdict != WWEP_ERR_REPLY)
        abort();
    if (size > 0 && data[0] == 'X' && (verdict != WWEP_REPLY_COMPLETE || reply.accepted)) abort();
    if (verdict == WWEP_REPLY_PARTIAL) {
        /* At most `A`, ten digits and a `\r`; no shorter prefix an error. */
        if (size > 12) abort();
        for (i = 0; i < size; i++)
            if (wwep_parse_reply(data, i, NULL) == WWEP_ERR_REPLY) abort();
    }
    if (verdict == WWEP_REPLY_COMPLETE && data[0] == 'A') {
        if (!reply.accepted || size < 11 || size > 13) abort();
        n = wwep_format_reply(text, &reply);
        if (n != 11) abort();
        for (i = 0; i < n; i++)
            if (text[i] != upper(data[i])) abort();
    }
    return 0;
}
