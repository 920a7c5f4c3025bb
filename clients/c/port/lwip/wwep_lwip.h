/*
 * wwep over lwIP: a wwep_transport whose sockets are lwIP's (lwip_socket,
 * lwip_connect, lwip_poll, lwip_recv, lwip_send, lwip_close), a wwep_listener
 * for the server (lwip_bind, lwip_listen, lwip_accept), and a wwep_clock over
 * lwIP's sys_now, for a board
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
#include "wwep_server.h"

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

/* How long a closed connection is still read (its write side shut): lwIP
 * answers a close with unread bytes by a reset, which can destroy the reply
 * before the client has read it. Same as the POSIX listener's. */
#ifndef WWEP_LWIP_LINGER_MS
#define WWEP_LWIP_LINGER_MS 500
#endif

struct wwep_lwip_listener;

/* An accepted connection; `sock` first, so its address is the conn's. */
typedef struct wwep_lwip_conn {
    wwep_lwip sock;
    struct wwep_lwip_listener *owner;
} wwep_lwip_conn;

typedef struct wwep_lwip_listener {
    int fd;                                    /* the listening socket, or -1 */
    wwep_lwip_conn conns[WWEP_SERVER_SLOTS];   /* accepted connections */
    int closing[WWEP_SERVER_SLOTS];            /* lingering sockets, or -1 */
    uint32_t closing_since[WWEP_SERVER_SLOTS];
} wwep_lwip_listener;

/* Fills *out with a listener over lwIP sockets (IPv4) using *l for its
 * state: listen takes a dotted address ("0.0.0.0" for every interface). */
void wwep_lwip_listener_init(wwep_lwip_listener *l, wwep_listener *out);
/* A wwep_clock over lwIP's sys_now (ctx unused). */
uint32_t wwep_lwip_now_ms(void *ctx);

#ifdef __cplusplus
}
#endif
#endif
