/* wwep: see wwep.h. C99, no allocation, no global state. */
#if defined(WWEP_WITH_POSIX) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200112L
#endif
#include "wwep.h"

#include <string.h>

const char *wwep_strerror(int code)
{
    switch (code) {
    case WWEP_OK: return "ok";
    case WWEP_ERR_ARG: return "bad argument";
    case WWEP_ERR_CONNECT: return "cannot connect";
    case WWEP_ERR_IO: return "read or write failed";
    case WWEP_ERR_TIMEOUT: return "timed out";
    case WWEP_ERR_TLS: return "TLS failed";
    case WWEP_ERR_REPLY: return "malformed reply";
    case WWEP_ERR_FULL: return "store full";
    case WWEP_ERR_NOT_FOUND: return "not found";
    case WWEP_ERR_MISMATCH: return "reply for another request";
    default: return "unknown error";
    }
}

static const char HEX[] = "0123456789ABCDEF";

static void put_hex(char *out, uint32_t value, int digits)
{
    int i;
    for (i = digits - 1; i >= 0; i--) {
        out[i] = HEX[value & 0xF];
        value >>= 4;
    }
}

static int nibble(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* The value of n hex digits, or -1. */
static long hex_field(const unsigned char *p, int n)
{
    long v = 0;
    int i;
    for (i = 0; i < n; i++) {
        int d = nibble(p[i]);
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

size_t wwep_format_write(char *out, uint16_t device, uint8_t reg, uint16_t value)
{
    out[0] = 'W';
    put_hex(out + 1, device, 4);
    put_hex(out + 5, reg, 2);
    put_hex(out + 7, value, 4);
    out[11] = '\0';
    return 11;
}

size_t wwep_format_read(char *out, uint16_t device, uint8_t reg)
{
    out[0] = 'R';
    put_hex(out + 1, device, 4);
    put_hex(out + 5, reg, 2);
    out[7] = '\0';
    return 7;
}

/* Length without a trailing "\n" or "\r\n". */
static size_t strip_terminator(const unsigned char *b, size_t len)
{
    if (len >= 1 && b[len - 1] == '\n') {
        len--;
        if (len >= 1 && b[len - 1] == '\r') len--;
    }
    return len;
}

int wwep_parse_request(const char *buf, size_t len, wwep_request *out)
{
    const unsigned char *b = (const unsigned char *)buf;
    long device, reg, value = 0;
    if (buf == NULL || out == NULL) return WWEP_ERR_ARG;
    len = strip_terminator(b, len);
    if (len == 0) return WWEP_ERR_ARG;
    if (!((b[0] == 'R' && len == 7) || (b[0] == 'W' && len == 11))) return WWEP_ERR_ARG;
    device = hex_field(b + 1, 4);
    reg = hex_field(b + 5, 2);
    if (b[0] == 'W') value = hex_field(b + 7, 4);
    if (device < 0 || reg < 0 || value < 0) return WWEP_ERR_ARG;
    out->command = (char)b[0];
    out->device = (uint16_t)device;
    out->reg = (uint8_t)reg;
    out->value = (uint16_t)value;
    return WWEP_OK;
}

int wwep_parse_reply(const unsigned char *buf, size_t len, wwep_reply *out)
{
    size_t i;
    if (len == 0) return WWEP_REPLY_PARTIAL;
    if (buf[0] == 'X') {
        if (out) {
            out->accepted = 0;
            out->device = 0;
            out->reg = 0;
            out->value = 0;
        }
        return WWEP_REPLY_COMPLETE;
    }
    if (buf[0] != 'A') return WWEP_ERR_REPLY;
    for (i = 1; i < len && i < 11; i++)
        if (nibble(buf[i]) < 0) return WWEP_ERR_REPLY;
    if (len < 11) return WWEP_REPLY_PARTIAL;
    if (len == 12 && buf[11] == '\r') return WWEP_REPLY_PARTIAL;
    if (!(len == 11 || (len == 12 && buf[11] == '\n') ||
          (len == 13 && buf[11] == '\r' && buf[12] == '\n')))
        return WWEP_ERR_REPLY;
    if (out) {
        out->accepted = 1;
        out->device = (uint16_t)hex_field(buf + 1, 4);
        out->reg = (uint8_t)hex_field(buf + 5, 2);
        out->value = (uint16_t)hex_field(buf + 7, 4);
    }
    return WWEP_REPLY_COMPLETE;
}

size_t wwep_format_reply(char *out, const wwep_reply *r)
{
    if (!r->accepted) {
        out[0] = 'X';
        out[1] = '\0';
        return 1;
    }
    out[0] = 'A';
    put_hex(out + 1, r->device, 4);
    put_hex(out + 5, r->reg, 2);
    put_hex(out + 7, r->value, 4);
    out[11] = '\0';
    return 11;
}

uint16_t wwep_device_from_mac(const uint8_t mac[6])
{
    uint32_t sum = 0;
    int i;
    for (i = 0; i < 6; i++) sum += mac[i];
    return (uint16_t)(sum & 0xFFFF);
}

int wwep_device_from_mac_text(const char *mac, uint16_t *device)
{
    uint8_t bytes[6];
    const unsigned char *p = (const unsigned char *)mac;
    int i;
    if (mac == NULL || device == NULL) return WWEP_ERR_ARG;
    for (i = 0; i < 6; i++) {
        int hi, lo;
        if (i > 0) {
            if (*p != ':' && *p != '-') return WWEP_ERR_ARG;
            p++;
        }
        if (*p == '\0') return WWEP_ERR_ARG;
        hi = nibble(p[0]);
        if (hi < 0 || p[1] == '\0') return WWEP_ERR_ARG;
        lo = nibble(p[1]);
        if (lo < 0) return WWEP_ERR_ARG;
        bytes[i] = (uint8_t)(hi * 16 + lo);
        p += 2;
    }
    if (*p != '\0') return WWEP_ERR_ARG;
    *device = wwep_device_from_mac(bytes);
    return WWEP_OK;
}

/* Whether buf[0..have) is a whole reply line: an `A` reply, or an `X` whose
 * reason has ended (a `\n`) or filled the buffer. */
static int line_complete(const unsigned char *buf, size_t have, size_t cap)
{
    if (have == 0) return 0;
    if (buf[0] == 'X') return memchr(buf, '\n', have) != NULL || have == cap;
    return !(have == 12 && buf[11] == '\r');
}

/* Copies the reply line, without its terminator, into reply->line. */
static void keep_line(wwep_reply *reply, const unsigned char *buf, size_t have)
{
    size_t n = 0;
    while (n < have && n < WWEP_REPLY_LINE_MAX - 1 && buf[n] != '\n' &&
           !(buf[n] == '\r' && (n + 1 == have || buf[n + 1] == '\n')))
        n++;
    memcpy(reply->line, buf, n);
    reply->line[n] = '\0';
}

/* WWEP_OK, or WWEP_ERR_MISMATCH when an `A` answers another request than q
 * (an `X` answers any). */
static int answers(const wwep_request *q, const wwep_reply *r)
{
    if (!r->accepted) return WWEP_OK;
    if (r->device != q->device || r->reg != q->reg) return WWEP_ERR_MISMATCH;
    if (q->command == 'W' && r->value != q->value) return WWEP_ERR_MISMATCH;
    return WWEP_OK;
}

int wwep_transact(const wwep_transport *t, const char *host, uint16_t port,
                  uint32_t timeout_ms, const char *request, wwep_reply *reply)
{
    unsigned char buf[WWEP_REPLY_LINE_MAX - 1];
    size_t have = 0, sent = 0, len;
    wwep_request check;
    int rc;
    if (t == NULL || host == NULL || request == NULL || reply == NULL) return WWEP_ERR_ARG;
    reply->line[0] = '\0';
    len = strlen(request);
    if (wwep_parse_request(request, len, &check) != WWEP_OK) return WWEP_ERR_ARG;
    len = strip_terminator((const unsigned char *)request, len);
    rc = t->connect(t->ctx, host, port, timeout_ms);
    if (rc != WWEP_OK) {
        t->close(t->ctx);
        return rc;
    }
    while (sent < len) {
        rc = t->write(t->ctx, (const unsigned char *)request + sent, len - sent);
        if (rc <= 0) {
            t->close(t->ctx);
            return rc < 0 ? rc : WWEP_ERR_IO;
        }
        sent += (size_t)rc;
    }
    for (;;) {
        int state = wwep_parse_reply(buf, have, reply);
        int is_x = have > 0 && buf[0] == 'X';
        size_t want;
        if (state == WWEP_ERR_REPLY) {
            t->close(t->ctx);
            return WWEP_ERR_REPLY;
        }
        if (state == WWEP_REPLY_COMPLETE && line_complete(buf, have, sizeof buf)) break;
        /* An `A` reply is complete at 11 bytes (its terminator may follow);
         * an `X` reason may fill the buffer. */
        want = is_x ? sizeof buf - have : (have < 11 ? 11 : 13) - have;
        rc = t->read(t->ctx, buf + have, want, is_x && timeout_ms > WWEP_REASON_WAIT_MS
                                                   ? WWEP_REASON_WAIT_MS
                                                   : timeout_ms);
        if (rc == 0 || (rc < 0 && is_x)) {
            /* Closed (or, after an `X`, no more reason): what has arrived
             * must be a whole reply. */
            t->close(t->ctx);
            if (wwep_parse_reply(buf, have, reply) != WWEP_REPLY_COMPLETE) return WWEP_ERR_REPLY;
            keep_line(reply, buf, have);
            return answers(&check, reply);
        }
        if (rc < 0) {
            t->close(t->ctx);
            return rc;
        }
        have += (size_t)rc;
    }
    t->close(t->ctx);
    keep_line(reply, buf, have);
    return answers(&check, reply);
}

/* ---- POSIX sockets ----------------------------------------------------- */
#if defined(WWEP_WITH_POSIX)
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0
#endif

static int posix_try(const struct addrinfo *ai, uint32_t timeout_ms)
{
    int fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
    int flags, err = 0;
    socklen_t errlen = sizeof err;
    struct pollfd pfd;
    if (fd < 0) return -1;
    flags = fcntl(fd, F_GETFL, 0);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) goto fail;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        int rc;
        if (errno != EINPROGRESS) goto fail;
        pfd.fd = fd;
        pfd.events = POLLOUT;
        do rc = poll(&pfd, 1, (int)timeout_ms);
        while (rc < 0 && errno == EINTR);
        if (rc <= 0) goto fail;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &errlen) != 0 || err != 0) goto fail;
    }
    if (fcntl(fd, F_SETFL, flags) < 0) goto fail;
    return fd;
fail:
    close(fd);
    return -1;
}

static int posix_connect(void *ctx, const char *host, uint16_t port, uint32_t timeout_ms)
{
    wwep_posix *p = ctx;
    struct addrinfo hints, *res, *ai;
    char service[8];
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(service, sizeof service, "%u", (unsigned)port);
    p->fd = -1;
    if (getaddrinfo(host, service, &hints, &res) != 0) return WWEP_ERR_CONNECT;
    for (ai = res; ai != NULL && p->fd < 0; ai = ai->ai_next) p->fd = posix_try(ai, timeout_ms);
    freeaddrinfo(res);
    return p->fd < 0 ? WWEP_ERR_CONNECT : WWEP_OK;
}

static int posix_write(void *ctx, const unsigned char *buf, size_t len)
{
    wwep_posix *p = ctx;
    ssize_t n;
    do n = send(p->fd, buf, len, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    return n > 0 ? (int)n : WWEP_ERR_IO;
}

static int posix_read(void *ctx, unsigned char *buf, size_t len, uint32_t timeout_ms)
{
    wwep_posix *p = ctx;
    struct pollfd pfd;
    ssize_t n;
    int rc;
    pfd.fd = p->fd;
    pfd.events = POLLIN;
    do rc = poll(&pfd, 1, (int)timeout_ms);
    while (rc < 0 && errno == EINTR);
    if (rc == 0) return WWEP_ERR_TIMEOUT;
    if (rc < 0) return WWEP_ERR_IO;
    do n = recv(p->fd, buf, len, 0);
    while (n < 0 && errno == EINTR);
    if (n < 0) return WWEP_ERR_IO;
    return (int)n;
}

static void posix_close(void *ctx)
{
    wwep_posix *p = ctx;
    if (p->fd >= 0) close(p->fd);
    p->fd = -1;
}

void wwep_posix_transport(wwep_posix *p, wwep_transport *t)
{
    p->fd = -1;
    t->ctx = p;
    t->connect = posix_connect;
    t->write = posix_write;
    t->read = posix_read;
    t->close = posix_close;
}
#endif

/* ---- mbedTLS ------------------------------------------------------------ */
#if defined(WWEP_WITH_MBEDTLS)
#include <stdio.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/version.h>

#if MBEDTLS_VERSION_NUMBER >= 0x03000000
#define WWEP_MBEDTLS3 1
#endif

static int bio_send(void *ctx, const unsigned char *buf, size_t len)
{
    wwep_tls *tls = ctx;
    int rc = tls->under->write(tls->under->ctx, buf, len);
    return rc > 0 ? rc : MBEDTLS_ERR_NET_SEND_FAILED;
}

static int bio_recv_timeout(void *ctx, unsigned char *buf, size_t len, uint32_t timeout)
{
    wwep_tls *tls = ctx;
    int rc = tls->under->read(tls->under->ctx, buf, len, timeout ? timeout : tls->timeout_ms);
    if (rc == WWEP_ERR_TIMEOUT) return MBEDTLS_ERR_SSL_TIMEOUT;
    if (rc < 0) return MBEDTLS_ERR_NET_RECV_FAILED;
    return rc;
}

int wwep_tls_init(wwep_tls *tls, const wwep_transport *under)
{
    static const unsigned char pers[] = "wwep";
    int rc;
    memset(tls, 0, sizeof *tls);
    tls->under = under;
    tls->timeout_ms = 5000;
    mbedtls_entropy_init(&tls->entropy);
    mbedtls_ctr_drbg_init(&tls->drbg);
    mbedtls_x509_crt_init(&tls->ca);
    mbedtls_x509_crt_init(&tls->cert);
    mbedtls_pk_init(&tls->key);
    mbedtls_ssl_config_init(&tls->conf);
    mbedtls_ssl_init(&tls->ssl);
    mbedtls_ssl_session_init(&tls->session);
    rc = mbedtls_ctr_drbg_seed(&tls->drbg, mbedtls_entropy_func, &tls->entropy, pers,
                               sizeof pers - 1);
    if (rc == 0)
        rc = mbedtls_ssl_config_defaults(&tls->conf, MBEDTLS_SSL_IS_CLIENT,
                                         MBEDTLS_SSL_TRANSPORT_STREAM, MBEDTLS_SSL_PRESET_DEFAULT);
    if (rc != 0) {
        tls->last_error = rc;
        return WWEP_ERR_TLS;
    }
    mbedtls_ssl_conf_authmode(&tls->conf, MBEDTLS_SSL_VERIFY_REQUIRED);
    mbedtls_ssl_conf_rng(&tls->conf, mbedtls_ctr_drbg_random, &tls->drbg);
    mbedtls_ssl_conf_read_timeout(&tls->conf, tls->timeout_ms);
#if defined(MBEDTLS_SSL_SESSION_TICKETS)
    mbedtls_ssl_conf_session_tickets(&tls->conf, MBEDTLS_SSL_SESSION_TICKETS_ENABLED);
#endif
#if defined(WWEP_MBEDTLS3) && MBEDTLS_VERSION_NUMBER >= 0x03020000
    /* The protocol's boards speak TLS 1.2. */
    mbedtls_ssl_conf_max_tls_version(&tls->conf, MBEDTLS_SSL_VERSION_TLS1_2);
#endif
    return WWEP_OK;
}

static int ssl_ready(wwep_tls *tls)
{
    int rc;
    mbedtls_ssl_conf_ca_chain(&tls->conf, &tls->ca, NULL);
    rc = mbedtls_ssl_setup(&tls->ssl, &tls->conf);
    if (rc != 0) {
        tls->last_error = rc;
        return WWEP_ERR_TLS;
    }
    mbedtls_ssl_set_bio(&tls->ssl, tls, bio_send, NULL, bio_recv_timeout);
    return WWEP_OK;
}

int wwep_tls_ca_buffer(wwep_tls *tls, const unsigned char *buf, size_t len)
{
    int rc = mbedtls_x509_crt_parse(&tls->ca, buf, len);
    if (rc != 0) {
        tls->last_error = rc < 0 ? rc : 0;
        return WWEP_ERR_TLS;
    }
    return WWEP_OK;
}

int wwep_tls_client_buffer(wwep_tls *tls, const unsigned char *cert, size_t cert_len,
                           const unsigned char *key, size_t key_len)
{
    int rc = mbedtls_x509_crt_parse(&tls->cert, cert, cert_len);
#if defined(WWEP_MBEDTLS3)
    if (rc == 0)
        rc = mbedtls_pk_parse_key(&tls->key, key, key_len, NULL, 0, mbedtls_ctr_drbg_random,
                                  &tls->drbg);
#else
    if (rc == 0) rc = mbedtls_pk_parse_key(&tls->key, key, key_len, NULL, 0);
#endif
    if (rc == 0) rc = mbedtls_ssl_conf_own_cert(&tls->conf, &tls->cert, &tls->key);
    if (rc != 0) {
        tls->last_error = rc < 0 ? rc : 0;
        return WWEP_ERR_TLS;
    }
    return WWEP_OK;
}

#if defined(MBEDTLS_FS_IO)
int wwep_tls_ca_file(wwep_tls *tls, const char *path)
{
    int rc = mbedtls_x509_crt_parse_file(&tls->ca, path);
    if (rc != 0) {
        tls->last_error = rc < 0 ? rc : 0;
        return WWEP_ERR_TLS;
    }
    return WWEP_OK;
}

int wwep_tls_client_file(wwep_tls *tls, const char *cert_path, const char *key_path)
{
    int rc = mbedtls_x509_crt_parse_file(&tls->cert, cert_path);
#if defined(WWEP_MBEDTLS3)
    if (rc == 0)
        rc = mbedtls_pk_parse_keyfile(&tls->key, key_path, NULL, mbedtls_ctr_drbg_random,
                                      &tls->drbg);
#else
    if (rc == 0) rc = mbedtls_pk_parse_keyfile(&tls->key, key_path, NULL);
#endif
    if (rc == 0) rc = mbedtls_ssl_conf_own_cert(&tls->conf, &tls->cert, &tls->key);
    if (rc != 0) {
        tls->last_error = rc < 0 ? rc : 0;
        return WWEP_ERR_TLS;
    }
    return WWEP_OK;
}
#endif

void wwep_tls_resume(wwep_tls *tls, int on)
{
    tls->resume = on;
}

static int tls_connect(void *ctx, const char *host, uint16_t port, uint32_t timeout_ms)
{
    wwep_tls *tls = ctx;
    int rc;
    tls->timeout_ms = timeout_ms;
    tls->verify_flags = 0;
    tls->last_error = 0;
    mbedtls_ssl_conf_read_timeout(&tls->conf, timeout_ms);
    if (!tls->ready) {
        rc = ssl_ready(tls);
        if (rc != WWEP_OK) return rc;
        tls->ready = 1;
    } else if ((rc = mbedtls_ssl_session_reset(&tls->ssl)) != 0) {
        tls->last_error = rc;
        return WWEP_ERR_TLS;
    }
    rc = tls->under->connect(tls->under->ctx, host, port, timeout_ms);
    if (rc != WWEP_OK) return rc;
    rc = mbedtls_ssl_set_hostname(&tls->ssl, host);
    if (rc == 0 && tls->resume && tls->have_session)
        rc = mbedtls_ssl_set_session(&tls->ssl, &tls->session);
    if (rc != 0) {
        tls->last_error = rc;
        return WWEP_ERR_TLS;
    }
    do rc = mbedtls_ssl_handshake(&tls->ssl);
    while (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE);
    if (rc != 0) {
        tls->last_error = rc;
        tls->verify_flags = mbedtls_ssl_get_verify_result(&tls->ssl);
        if (tls->verify_flags == (uint32_t)-1) tls->verify_flags = 0;
        return rc == MBEDTLS_ERR_SSL_TIMEOUT ? WWEP_ERR_TIMEOUT : WWEP_ERR_TLS;
    }
    if (tls->resume) {
        mbedtls_ssl_session_free(&tls->session);
        mbedtls_ssl_session_init(&tls->session);
        tls->have_session = mbedtls_ssl_get_session(&tls->ssl, &tls->session) == 0;
    }
    return WWEP_OK;
}

static int tls_write(void *ctx, const unsigned char *buf, size_t len)
{
    wwep_tls *tls = ctx;
    int rc;
    do rc = mbedtls_ssl_write(&tls->ssl, buf, len);
    while (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE);
    if (rc > 0) return rc;
    tls->last_error = rc;
    return WWEP_ERR_IO;
}

static int tls_read(void *ctx, unsigned char *buf, size_t len, uint32_t timeout_ms)
{
    wwep_tls *tls = ctx;
    int rc;
    mbedtls_ssl_conf_read_timeout(&tls->conf, timeout_ms);
    do rc = mbedtls_ssl_read(&tls->ssl, buf, len);
    while (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE
#if defined(WWEP_MBEDTLS3) && defined(MBEDTLS_ERR_SSL_RECEIVED_NEW_SESSION_TICKET)
           || rc == MBEDTLS_ERR_SSL_RECEIVED_NEW_SESSION_TICKET
#endif
    );
    if (rc >= 0) return rc;
    if (rc == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY) return 0;
    if (rc == MBEDTLS_ERR_SSL_TIMEOUT) return WWEP_ERR_TIMEOUT;
    tls->last_error = rc;
    return WWEP_ERR_IO;
}

static void tls_close(void *ctx)
{
    wwep_tls *tls = ctx;
    if (tls->ready) (void)mbedtls_ssl_close_notify(&tls->ssl);
    tls->under->close(tls->under->ctx);
}

void wwep_tls_transport(wwep_tls *tls, wwep_transport *t)
{
    t->ctx = tls;
    t->connect = tls_connect;
    t->write = tls_write;
    t->read = tls_read;
    t->close = tls_close;
}

void wwep_tls_describe(const wwep_tls *tls, char *buf, size_t len)
{
    size_t used;
    if (len == 0) return;
    buf[0] = '\0';
#if defined(MBEDTLS_ERROR_C)
    if (tls->last_error != 0) mbedtls_strerror(tls->last_error, buf, len);
#else
    if (tls->last_error != 0) snprintf(buf, len, "mbedTLS error -0x%04X", -tls->last_error);
#endif
    used = strlen(buf);
    if (tls->verify_flags != 0 && used + 3 < len) {
        size_t i;
        if (used > 0) {
            buf[used++] = ':';
            buf[used++] = ' ';
        }
        mbedtls_x509_crt_verify_info(buf + used, len - used, "", tls->verify_flags);
        /* One line: the flags' descriptions end in newlines. */
        for (i = 0; buf[i] != '\0'; i++)
            if (buf[i] == '\n') buf[i] = (buf[i + 1] == '\0') ? '\0' : ';';
    }
}

void wwep_tls_free(wwep_tls *tls)
{
    mbedtls_ssl_free(&tls->ssl);
    mbedtls_ssl_config_free(&tls->conf);
    mbedtls_ssl_session_free(&tls->session);
    mbedtls_pk_free(&tls->key);
    mbedtls_x509_crt_free(&tls->cert);
    mbedtls_x509_crt_free(&tls->ca);
    mbedtls_ctr_drbg_free(&tls->drbg);
    mbedtls_entropy_free(&tls->entropy);
}
#endif
