/* wwep_listener over POSIX sockets, and a monotonic clock. The accepted
 * connection's read and write are wwep_posix_transport's. */
#if !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200112L
#endif
#include "wwep_server.h"

#if defined(WWEP_WITH_POSIX)
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BACKLOG 16

uint32_t wwep_posix_now_ms(void *ctx)
{
    struct timespec ts;
    (void)ctx;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint32_t)((uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u);
}

static int set_nonblocking(int fd)
{
    int flags = fcntl(fd, F_GETFL, 0);
    return flags < 0 ? -1 : fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

/* Reads and drops what fd has without waiting. 1 at end of file or error. */
static int drained(int fd)
{
    unsigned char sink[256];
    for (;;) {
        ssize_t n = recv(fd, sink, sizeof sink, MSG_DONTWAIT);
        if (n > 0) continue;
        if (n < 0 && errno == EINTR) continue;
        return !(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
    }
}

/* Ends lingering connections whose client has closed or whose time is up
 * (all of them when `all`). */
static void reap(wwep_posix_listener *l, int all)
{
    uint32_t t = wwep_posix_now_ms(NULL);
    size_t i;
    for (i = 0; i < WWEP_SERVER_SLOTS; i++) {
        int fd = l->closing[i];
        if (fd < 0) continue;
        if (all || drained(fd) || (uint32_t)(t - l->closing_since[i]) >= WWEP_LINGER_MS) {
            close(fd);
            l->closing[i] = -1;
        }
    }
}

static void conn_close(void *ctx)
{
    wwep_posix_conn *c = ctx;
    wwep_posix_listener *l = c->owner;
    int fd = c->sock.fd;
    size_t i;
    c->sock.fd = -1;
    if (fd < 0) return;
    /* The reply is out: say so with a FIN, then keep reading for a moment
     * (see WWEP_LINGER_MS) unless the client has closed already. */
    if (shutdown(fd, SHUT_WR) == 0 && !drained(fd)) {
        for (i = 0; i < WWEP_SERVER_SLOTS; i++) {
            if (l->closing[i] < 0) {
                l->closing[i] = fd;
                l->closing_since[i] = wwep_posix_now_ms(NULL);
                return;
            }
        }
    }
    close(fd);
}

static int lst_listen(void *ctx, const char *addr, uint16_t port, uint16_t *bound_port)
{
    wwep_posix_listener *l = ctx;
    struct addrinfo hints, *res;
    struct sockaddr_storage got;
    socklen_t got_len = sizeof got;
    char service[8];
    int fd, one = 1;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV;
    snprintf(service, sizeof service, "%u", (unsigned)port);
    if (getaddrinfo(addr, service, &hints, &res) != 0) return WWEP_ERR_ARG;
    fd = socket(res->ai_family, res->ai_socktype, res->ai_protocol);
    if (fd < 0) {
        freeaddrinfo(res);
        return WWEP_ERR_IO;
    }
    /* A restarted server binds again at once despite old connections in
     * TIME_WAIT. */
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, BACKLOG) != 0 ||
        set_nonblocking(fd) != 0 || getsockname(fd, (struct sockaddr *)&got, &got_len) != 0) {
        /* errno says why (in use, not this machine's address) to the caller. */
        int why = errno;
        freeaddrinfo(res);
        close(fd);
        errno = why;
        return WWEP_ERR_IO;
    }
    freeaddrinfo(res);
    l->fd = fd;
    if (bound_port != NULL) {
        if (got.ss_family == AF_INET6)
            *bound_port = ntohs(((struct sockaddr_in6 *)&got)->sin6_port);
        else
            *bound_port = ntohs(((struct sockaddr_in *)&got)->sin_port);
    }
    return WWEP_OK;
}

static void describe_peer(const struct sockaddr_storage *sa, socklen_t len, char *peer,
                          size_t peer_len)
{
    char host[64], serv[8];
    if (peer_len == 0) return;
    if (getnameinfo((const struct sockaddr *)sa, len, host, sizeof host, serv, sizeof serv,
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
        snprintf(peer, peer_len, "?");
        return;
    }
    snprintf(peer, peer_len, sa->ss_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host, serv);
}

static int lst_accept(void *ctx, wwep_transport *conn, char *peer, size_t peer_len,
                      uint32_t timeout_ms)
{
    wwep_posix_listener *l = ctx;
    struct sockaddr_storage sa;
    socklen_t sa_len = sizeof sa;
    struct pollfd pfd;
    wwep_posix_conn *c = NULL;
    size_t i;
    int fd, rc;
    reap(l, 0);
    for (i = 0; i < WWEP_SERVER_SLOTS && c == NULL; i++)
        if (l->conns[i].sock.fd < 0) c = &l->conns[i];
    /* Every connection context in use: leave the newcomer in the backlog. */
    if (c == NULL) return WWEP_ERR_TIMEOUT;
    pfd.fd = l->fd;
    pfd.events = POLLIN;
    do rc = poll(&pfd, 1, (int)timeout_ms);
    while (rc < 0 && errno == EINTR);
    if (rc == 0) return WWEP_ERR_TIMEOUT;
    if (rc < 0) return WWEP_ERR_IO;
    fd = accept(l->fd, (struct sockaddr *)&sa, &sa_len);
    if (fd < 0) {
        /* Gone before it was taken: as if none had come. */
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ECONNABORTED || errno == EINTR)
            return WWEP_ERR_TIMEOUT;
        /* Out of descriptors or memory: the connection stays in the backlog
         * and poll would report it again at once, so back off for the time
         * given instead of spinning. */
        (void)poll(NULL, 0, (int)timeout_ms);
        return WWEP_ERR_IO;
    }
    describe_peer(&sa, sa_len, peer, peer_len);
    wwep_posix_transport(&c->sock, conn);
    c->sock.fd = fd;
    c->owner = l;
    conn->connect = NULL;
    conn->close = conn_close;
    return WWEP_OK;
}

static void lst_close(void *ctx)
{
    wwep_posix_listener *l = ctx;
    reap(l, 1);
    if (l->fd >= 0) close(l->fd);
    l->fd = -1;
}

void wwep_posix_listener_init(wwep_posix_listener *l, wwep_listener *out)
{
    size_t i;
    l->fd = -1;
    for (i = 0; i < WWEP_SERVER_SLOTS; i++) {
        l->conns[i].sock.fd = -1;
        l->conns[i].owner = l;
        l->closing[i] = -1;
        l->closing_since[i] = 0;
    }
    out->ctx = l;
    out->listen = lst_listen;
    out->accept = lst_accept;
    out->close = lst_close;
}
#else
/* ISO C wants something in every translation unit. */
typedef int wwep_posix_listener_unused;
#endif
