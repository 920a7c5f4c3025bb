/*
 * wwep over lwIP: a wwep_transport whose sockets are lwIP's (lwip_socket,
 * lwip_connect, lwip_poll, lwip_recv, lwip_send, lwip_close), for a board
 * that runs lwIP with an OS (NO_SYS=0, LWIP_SOCKET=1, LWIP_SOCKET_POLL or
 * LWIP_POLL). Nothing here allocates; the state is the caller's.
 *
 * lwIP's socket calls are used by their lwip_ names, so this builds whether
 * or not the lwIP configuration maps the BSD names (LWIP_COMPAT_SOCKETS).
 *
 * A board without DNS names its server by address, or maps names to
 * addresses with a small table (wwep_lwip_host): the name given to
 * wwep_transact is still the one a TLS certificate is checked against.
 */
#ifndef WWEP_LWIP_H
#define WWEP_LWIP_H

#include "wwep.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A host name and the IPv4 address it stands for, "198.18.3.1". */
typedef struct wwep_lwip_host {
    const char *name;
    const char *address;
} wwep_lwip_host;

typedef struct wwep_lwip {
    int fd;                         /* lwIP's socket, or -1 */
    const wwep_lwip_host *hosts;    /* names connect may be given, or NULL */
    size_t host_count;
} wwep_lwip;

/* Fills *t with a transport over lwIP sockets using *p for its state. connect
 * takes a dotted IPv4 address, or a name from p->hosts (set them after this
 * call). Nagle is left as lwIP sets it. */
void wwep_lwip_transport(wwep_lwip *p, wwep_transport *t);

#ifdef __cplusplus
}
#endif
#endif
