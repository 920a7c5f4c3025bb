/* The server's framing rules (docs/server.md, "How a message is read"), the
 * same decisions as frame and frame_final in the Rust server's
 * src/protocol.rs. Bytes in, a verdict out: no I/O, no clock. */
#include "wwep_server.h"

#include <string.h>

/* The length a command letter requires, or 0 for an illegal letter. */
static size_t required_len(unsigned char command)
{
    if (command == 'R') return 7;
    if (command == 'W') return 11;
    return 0;
}

/* A message that ends at the `\n` at index lf, with an optional `\r` before it. */
static int ended_at_lf(const unsigned char *buf, size_t lf, wwep_frame *out)
{
    if (lf > 0 && buf[lf - 1] == '\r') {
        out->len = lf - 1;
        out->terminator = WWEP_TERM_CRLF;
    } else {
        out->len = lf;
        out->terminator = WWEP_TERM_LF;
    }
    return WWEP_FRAME_COMPLETE;
}

static int complete(size_t len, int terminator, wwep_frame *out)
{
    out->len = len;
    out->terminator = terminator;
    return WWEP_FRAME_COMPLETE;
}

int wwep_frame_message(const unsigned char *buf, size_t len, wwep_frame *out)
{
    const unsigned char *lf;
    size_t need;
    if (len == 0) return WWEP_FRAME_PARTIAL;
    need = required_len(buf[0]);
    if (need == 0) {
        /* Already X, so judged at once rather than after the gap (a board
         * with a lowercase bug would wait it on every message). A line that
         * came whole keeps its end; a `\r` last starts one and is dropped. */
        lf = memchr(buf, '\n', len);
        if (lf != NULL) return ended_at_lf(buf, (size_t)(lf - buf), out);
        return complete(buf[len - 1] == '\r' ? len - 1 : len, WWEP_TERM_NONE, out);
    }
    lf = memchr(buf, '\n', len < need ? len : need);
    if (lf != NULL) return ended_at_lf(buf, (size_t)(lf - buf), out);
    if (len < need) return WWEP_FRAME_PARTIAL;
    if (len == need) return complete(need, WWEP_TERM_NONE, out);
    if (buf[need] == '\n') return complete(need, WWEP_TERM_LF, out);
    if (buf[need] == '\r') {
        if (len == need + 1) return WWEP_FRAME_PARTIAL;
        if (buf[need + 1] == '\n') return complete(need, WWEP_TERM_CRLF, out);
    }
    /* Too long: the whole line (or everything, if it has no end yet) is the
     * message, judged at once, since no byte to come can make it valid. */
    lf = memchr(buf, '\n', len);
    if (lf != NULL) return ended_at_lf(buf, (size_t)(lf - buf), out);
    return complete(len, WWEP_TERM_NONE, out);
}

void wwep_frame_final(const unsigned char *buf, size_t len, wwep_frame *out)
{
    if (wwep_frame_message(buf, len, out) == WWEP_FRAME_COMPLETE) return;
    /* A lone `\r` after the message is a terminator cut short. */
    out->len = (len > 0 && buf[len - 1] == '\r') ? len - 1 : len;
    out->terminator = WWEP_TERM_NONE;
}
