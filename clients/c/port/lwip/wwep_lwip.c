/* wwep over lwIP sockets: see wwep_lwip.h. */
/* lwIP's arch.h takes ssize_t from <unistd.h> only when <limits.h> says
 * SSIZE_MAX, which is POSIX. */
#define _POSIX_C_SOURCE 200112L
#include "wwep_lwip.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>

#include "lwip/inet.h"
#include "lwip/sockets.h"

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
