/* wwep over lwIP sockets: see wwep_lwip.h. */
/* lwIP's arch.h takes ssize_t from <unistd.h> only when <limits.h> says
 * SSIZE_MAX, which is POSIX. */
#define _POSIX_C_SOURCE 200112L
#include "wwep_lwip.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "lwip/inet.h"
#include "lwip/sockets.h"
#include "lwip/sys.h"

/* lwIP defines O_NONBLOCK and F_GETFL/F_SETFL itself, with its own values,
 * unless the system's socket headers are used (LWIP_SOCKET_EXTERNAL_HEADERS,
 * as in Debian's build): then lwIP was built with the C library's, and so is
 * this file. Including <fcntl.h> first would mix the two on a board. */
#if !defined(O_NONBLOCK) || !defined(F_GETFL)
#include <fcntl.h>
#endif

#define BACKLOG 8

/* The address connect should use for host: a dotted IPv4 address as it is,
 * or a name from the table. 0 when there is none. */
static int lookup(const wwep_lwip *p, const char *host, struct sockaddr_in *sa)
{
    size_t i;
    const char *address = host;
    for (i = 0; p->hosts != NULL && i < p->host_count; i++)
        if (strcmp(p->hosts[i].name, host) == 0) address = p->hosts[i].address;
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    return lwip_inet_pton(AF_INET, address, &sa->sin_addr) == 1;
}

/* Waits up to timeout_ms for events on fd: > 0 when they came, 0 on a timeout,
 * < 0 on an error. */
static int wait_for(int fd, short events, uint32_t timeout_ms)
{
    struct pollfd pfd;
    int rc;
    pfd.fd = fd;
    pfd.events = events;
    pfd.revents = 0;
    do rc = lwip_poll(&pfd, 1, (int)timeout_ms);
    while (rc < 0 && errno == EINTR);
    return rc;
}

static int lwip_port_connect(void *ctx, const char *host, uint16_t port, uint32_t timeout_ms)
{
    wwep_lwip *p = ctx;
    struct sockaddr_in sa;
    int flags, err = 0, rc;
    socklen_t errlen = sizeof err;
    p->fd = -1;
    if (!lookup(p, host, &sa)) return WWEP_ERR_CONNECT;
    sa.sin_port = htons(port);
    p->fd = lwip_socket(AF_INET, SOCK_STREAM, 0);
    if (p->fd < 0) return WWEP_ERR_CONNECT;
    /* A non-blocking connect finished by poll: a blocking one waits for all
     * of TCP's SYN retries, far past timeout_ms. */
    flags = lwip_fcntl(p->fd, F_GETFL, 0);
    if (flags < 0 || lwip_fcntl(p->fd, F_SETFL, flags | O_NONBLOCK) < 0) return WWEP_ERR_CONNECT;
    if (lwip_connect(p->fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        if (errno != EINPROGRESS) return WWEP_ERR_CONNECT;
        rc = wait_for(p->fd, POLLOUT, timeout_ms);
        if (rc == 0) return WWEP_ERR_TIMEOUT;
        if (rc < 0) return WWEP_ERR_CONNECT;
        if (lwip_getsockopt(p->fd, SOL_SOCKET, SO_ERROR, &err, &errlen) != 0 || err != 0)
            return WWEP_ERR_CONNECT;
    }
    if (lwip_fcntl(p->fd, F_SETFL, flags) < 0) return WWEP_ERR_CONNECT;
    return WWEP_OK;
}

static int lwip_port_write(void *ctx, const unsigned char *buf, size_t len)
{
    wwep_lwip *p = ctx;
    ssize_t n;
    do n = lwip_send(p->fd, buf, len, 0);
    while (n < 0 && errno == EINTR);
    return n > 0 ? (int)n : WWEP_ERR_IO;
}

static int lwip_port_read(void *ctx, unsigned char *buf, size_t len, uint32_t timeout_ms)
{
    wwep_lwip *p = ctx;
    ssize_t n;
    int rc = wait_for(p->fd, POLLIN, timeout_ms);
    if (rc == 0) return WWEP_ERR_TIMEOUT;
    if (rc < 0) return WWEP_ERR_IO;
    do n = lwip_recv(p->fd, buf, len, 0);
    while (n < 0 && errno == EINTR);
    if (n < 0) return WWEP_ERR_IO;
    return (int)n;
}

static void lwip_port_close(void *ctx)
{
    wwep_lwip *p = ctx;
    if (p->fd >= 0) lwip_close(p->fd);
    p->fd = -1;
}

void wwep_lwip_transport(wwep_lwip *p, wwep_transport *t)
{
    p->fd = -1;
    p->hosts = NULL;
    p->host_count = 0;
    t->ctx = p;
    t->connect = lwip_port_connect;
    t->write = lwip_port_write;
    t->read = lwip_port_read;
    t->close = lwip_port_close;
}

/* ---- the listener ------------------------------------------------------ */

uint32_t wwep_lwip_now_ms(void *ctx)
{
    (void)ctx;
    return (uint32_t)sys_now();
}

/* Reads and drops what fd has without waiting. 1 at end of file or error. */
static int drained(int fd)
{
    unsigned char sink[256];
    for (;;) {
        ssize_t n = lwip_recv(fd, sink, sizeof sink, MSG_DONTWAIT);
        if (n > 0) continue;
        if (n < 0 && errno == EINTR) continue;
        return !(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
    }
}

/* Ends lingering connections whose client has closed or whose time is up
 * (all of them when `all`). */
static void reap(wwep_lwip_listener *l, int all)
{
    uint32_t t = wwep_lwip_now_ms(NULL);
    size_t i;
    for (i = 0; i < WWEP_SERVER_SLOTS; i++) {
        int fd = l->closing[i];
        if (fd < 0) continue;
        if (all || drained(fd) || (uint32_t)(t - l->closing_since[i]) >= WWEP_LWIP_LINGER_MS) {
            lwip_close(fd);
            l->closing[i] = -1;
        }
    }
}

static void conn_close(void *ctx)
{
    wwep_lwip_conn *c = ctx;
    wwep_lwip_listener *l = c->owner;
    int fd = c->sock.fd;
    size_t i;
    c->sock.fd = -1;
    if (fd < 0) return;
    /* The reply is out: a FIN, then keep reading for a moment unless the
     * client has closed already. */
    if (lwip_shutdown(fd, SHUT_WR) == 0 && !drained(fd)) {
        for (i = 0; i < WWEP_SERVER_SLOTS; i++) {
            if (l->closing[i] < 0) {
                l->closing[i] = fd;
                l->closing_since[i] = wwep_lwip_now_ms(NULL);
                return;
            }
        }
    }
    lwip_close(fd);
}

static int lst_listen(void *ctx, const char *addr, uint16_t port, uint16_t *bound_port)
{
    wwep_lwip_listener *l = ctx;
    struct sockaddr_in sa, got;
    socklen_t got_len = sizeof got;
    int fd, flags, one = 1;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    if (lwip_inet_pton(AF_INET, addr, &sa.sin_addr) != 1) return WWEP_ERR_ARG;
    fd = lwip_socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return WWEP_ERR_IO;
    (void)lwip_setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    flags = lwip_fcntl(fd, F_GETFL, 0);
    if (lwip_bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || lwip_listen(fd, BACKLOG) != 0 ||
        flags < 0 || lwip_fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0 ||
        lwip_getsockname(fd, (struct sockaddr *)&got, &got_len) != 0) {
        lwip_close(fd);
        return WWEP_ERR_IO;
    }
    l->fd = fd;
    if (bound_port != NULL) *bound_port = ntohs(got.sin_port);
    return WWEP_OK;
}

static int lst_accept(void *ctx, wwep_transport *conn, char *peer, size_t peer_len,
                      uint32_t timeout_ms)
{
    wwep_lwip_listener *l = ctx;
    struct sockaddr_in sa;
    socklen_t sa_len = sizeof sa;
    wwep_lwip_conn *c = NULL;
    char host[16];
    size_t i;
    int fd, rc;
    reap(l, 0);
    for (i = 0; i < WWEP_SERVER_SLOTS && c == NULL; i++)
        if (l->conns[i].sock.fd < 0) c = &l->conns[i];
    /* Every connection context in use: leave the newcomer in the backlog. */
    if (c == NULL) return WWEP_ERR_TIMEOUT;
    rc = wait_for(l->fd, POLLIN, timeout_ms);
    if (rc == 0) return WWEP_ERR_TIMEOUT;
    if (rc < 0) return WWEP_ERR_IO;
    fd = lwip_accept(l->fd, (struct sockaddr *)&sa, &sa_len);
    if (fd < 0) return (errno == EAGAIN || errno == EWOULDBLOCK) ? WWEP_ERR_TIMEOUT : WWEP_ERR_IO;
    if (peer_len > 0) {
        if (lwip_inet_ntop(AF_INET, &sa.sin_addr, host, sizeof host) == NULL) host[0] = '\0';
        /* "255.255.255.255:65535" and a NUL fit in WWEP_PEER_MAX. */
        snprintf(peer, peer_len, "%s:%u", host[0] ? host : "?", (unsigned)ntohs(sa.sin_port));
    }
    wwep_lwip_transport(&c->sock, conn);
    c->sock.fd = fd;
    c->owner = l;
    conn->connect = NULL;
    conn->close = conn_close;
    return WWEP_OK;
}

static void lst_close(void *ctx)
{
    wwep_lwip_listener *l = ctx;
    reap(l, 1);
    if (l->fd >= 0) lwip_close(l->fd);
    l->fd = -1;
}

void wwep_lwip_listener_init(wwep_lwip_listener *l, wwep_listener *out)
{
    size_t i;
    l->fd = -1;
    for (i = 0; i < WWEP_SERVER_SLOTS; i++) {
        l->conns[i].sock.fd = -1;
        l->conns[i].sock.hosts = NULL;
        l->conns[i].sock.host_count = 0;
        l->conns[i].owner = l;
        l->closing[i] = -1;
        l->closing_since[i] = 0;
    }
    out->ctx = l;
    out->listen = lst_listen;
    out->accept = lst_accept;
    out->close = lst_close;
}
