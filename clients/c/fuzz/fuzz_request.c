/* libFuzzer target: wwep_parse_request on any bytes. A request it accepts
 * must read back as it was written: the same fields formatted again equal
 * the input, letters uppercased, without its `\n` or `\r\n`. */
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
    wwep_request req;
    char again[WWEP_REQUEST_MAX];
    size_t n, i, body = size;
    if (wwep_parse_request((const char *)data, size, &req) != WWEP_OK) return 0;
    if (body > 0 && data[body - 1] == '\n') body--;
    if (body > 0 && data[body - 1] == '\r' && body < size) body--;
    if (req.command == 'W') n = wwep_format_write(again, req.device, req.reg, req.value);
    else if (req.command == 'R') n = wwep_format_read(again, req.device, req.reg);
    else abort();
    if (req.command == 'R' && req.value != 0) abort();
    if (n != body) abort();
    for (i = 0; i < n; i++)
        if (again[i] != upper(data[i])) abort();
    return 0;
}
