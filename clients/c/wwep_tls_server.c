/* The server side of TLS: a wwep_listener that wraps any other one in
 * mbedTLS (2.28; 3.x where noted). One SSL context per slot, set up once by
 * wwep_tls_server_start and reset when its connection closes, as mbedTLS's
 * ssl_server.c does in its `reset:` loop, so memory stays fixed. Resumption
 * uses session tickets (mbedtls_ssl_ticket): the server keeps no per-session
 * state, where a session cache would allocate an entry per client. */
#include "wwep_server.h"

#if defined(WWEP_WITH_MBEDTLS)
#include <stdio.h>
#include <string.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/version.h>

#if MBEDTLS_VERSION_NUMBER >= 0x03000000
#define WWEP_MBEDTLS3 1
#endif

/* How long a ticket may resume a session. */
#define TICKET_LIFETIME_S 86400

static int fail(wwep_tls_server *tls, int rc)
{
    tls->last_error = rc < 0 ? rc : 0;
    return WWEP_ERR_TLS;
}

static int bio_send(void *ctx, const unsigned char *buf, size_t len)
{
    wwep_tls_conn *c = ctx;
    int rc = c->raw.write(c->raw.ctx, buf, len);
    return rc > 0 ? rc : MBEDTLS_ERR_NET_SEND_FAILED;
}

/* A read that finds nothing within the time limit is "want read": mbedTLS
 * keeps its place and the server comes back on its next step. */
static int bio_recv(void *ctx, unsigned char *buf, size_t len)
{
    wwep_tls_conn *c = ctx;
    int rc = c->raw.read(c->raw.ctx, buf, len, c->timeout_ms);
    if (rc == WWEP_ERR_TIMEOUT) return MBEDTLS_ERR_SSL_WANT_READ;
    if (rc < 0) return MBEDTLS_ERR_NET_RECV_FAILED;
    return rc;
}

int wwep_tls_server_init(wwep_tls_server *tls, const wwep_listener *under)
{
    static const unsigned char pers[] = "wwep server";
    size_t i;
    int rc;
    memset(tls, 0, sizeof *tls);
    tls->under = under;
    mbedtls_entropy_init(&tls->entropy);
    mbedtls_ctr_drbg_init(&tls->drbg);
    mbedtls_x509_crt_init(&tls->cert);
    mbedtls_pk_init(&tls->key);
    mbedtls_x509_crt_init(&tls->client_ca);
    mbedtls_ssl_config_init(&tls->conf);
    mbedtls_ssl_ticket_init(&tls->ticket);
    for (i = 0; i < WWEP_SERVER_SLOTS; i++) {
        tls->conns[i].server = tls;
        mbedtls_ssl_init(&tls->conns[i].ssl);
    }
    rc = mbedtls_ctr_drbg_seed(&tls->drbg, mbedtls_entropy_func, &tls->entropy, pers,
                               sizeof pers - 1);
    if (rc == 0)
        rc = mbedtls_ssl_config_defaults(&tls->conf, MBEDTLS_SSL_IS_SERVER,
                                         MBEDTLS_SSL_TRANSPORT_STREAM, MBEDTLS_SSL_PRESET_DEFAULT);
    if (rc != 0) return fail(tls, rc);
    mbedtls_ssl_conf_rng(&tls->conf, mbedtls_ctr_drbg_random, &tls->drbg);
    mbedtls_ssl_conf_authmode(&tls->conf, MBEDTLS_SSL_VERIFY_NONE);
    /* The protocol's boards speak TLS 1.2; older versions are not offered. */
#if defined(WWEP_MBEDTLS3)
    mbedtls_ssl_conf_min_tls_version(&tls->conf, MBEDTLS_SSL_VERSION_TLS1_2);
    mbedtls_ssl_conf_max_tls_version(&tls->conf, MBEDTLS_SSL_VERSION_TLS1_2);
#else
    mbedtls_ssl_conf_min_version(&tls->conf, MBEDTLS_SSL_MAJOR_VERSION_3,
                                 MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_max_version(&tls->conf, MBEDTLS_SSL_MAJOR_VERSION_3,
                                 MBEDTLS_SSL_MINOR_VERSION_3);
#endif
    return WWEP_OK;
}

int wwep_tls_server_cert_buffer(wwep_tls_server *tls, const unsigned char *cert,
                                size_t cert_len, const unsigned char *key, size_t key_len)
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
    return rc == 0 ? WWEP_OK : fail(tls, rc);
}

int wwep_tls_server_client_ca_buffer(wwep_tls_server *tls, const unsigned char *buf, size_t len)
{
    int rc = mbedtls_x509_crt_parse(&tls->client_ca, buf, len);
    if (rc != 0) return fail(tls, rc);
    mbedtls_ssl_conf_ca_chain(&tls->conf, &tls->client_ca, NULL);
    mbedtls_ssl_conf_authmode(&tls->conf, MBEDTLS_SSL_VERIFY_REQUIRED);
    return WWEP_OK;
}

#if defined(MBEDTLS_FS_IO)
int wwep_tls_server_cert_file(wwep_tls_server *tls, const char *cert_path, const char *key_path)
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
    return rc == 0 ? WWEP_OK : fail(tls, rc);
}

int wwep_tls_server_client_ca_file(wwep_tls_server *tls, const char *path)
{
    /* A CA file may hold several certificates with text between them;
     * mbedTLS reads every PEM block and skips the rest. */
    int rc = mbedtls_x509_crt_parse_file(&tls->client_ca, path);
    if (rc != 0) return fail(tls, rc);
    mbedtls_ssl_conf_ca_chain(&tls->conf, &tls->client_ca, NULL);
    mbedtls_ssl_conf_authmode(&tls->conf, MBEDTLS_SSL_VERIFY_REQUIRED);
    return WWEP_OK;
}
#endif

int wwep_tls_server_start(wwep_tls_server *tls)
{
    size_t i;
    int rc;
#if defined(MBEDTLS_SSL_TICKET_C)
    rc = mbedtls_ssl_ticket_setup(&tls->ticket, mbedtls_ctr_drbg_random, &tls->drbg,
                                  MBEDTLS_CIPHER_AES_256_GCM, TICKET_LIFETIME_S);
    if (rc != 0) return fail(tls, rc);
    mbedtls_ssl_conf_session_tickets_cb(&tls->conf, mbedtls_ssl_ticket_write,
                                        mbedtls_ssl_ticket_parse, &tls->ticket);
#endif
    for (i = 0; i < WWEP_SERVER_SLOTS; i++) {
        wwep_tls_conn *c = &tls->conns[i];
        rc = mbedtls_ssl_setup(&c->ssl, &tls->conf);
        if (rc != 0) return fail(tls, rc);
        mbedtls_ssl_set_bio(&c->ssl, c, bio_send, bio_recv, NULL);
    }
    tls->started = 1;
    return WWEP_OK;
}

/* Finishes the handshake as far as the bytes that have arrived allow.
 * WWEP_OK when done, WWEP_ERR_TIMEOUT when it needs more, or WWEP_ERR_TLS. */
static int handshake(wwep_tls_conn *c)
{
    int rc;
    if (c->handshaken) return WWEP_OK;
    rc = mbedtls_ssl_handshake(&c->ssl);
    if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE)
        return WWEP_ERR_TIMEOUT;
    if (rc != 0) {
        uint32_t flags = mbedtls_ssl_get_verify_result(&c->ssl);
        c->server->last_error = rc;
        c->server->verify_flags = flags == (uint32_t)-1 ? 0 : flags;
        return WWEP_ERR_TLS;
    }
    c->handshaken = 1;
    return WWEP_OK;
}

static int conn_read(void *ctx, unsigned char *buf, size_t len, uint32_t timeout_ms)
{
    wwep_tls_conn *c = ctx;
    int rc;
    c->timeout_ms = timeout_ms;
    rc = handshake(c);
    if (rc != WWEP_OK) return rc;
    rc = mbedtls_ssl_read(&c->ssl, buf, len);
    if (rc >= 0) return rc;
    if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE)
        return WWEP_ERR_TIMEOUT;
    /* close_notify, or a plain end of the stream after the handshake: the
     * client has finished sending. */
    if (rc == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY || rc == MBEDTLS_ERR_SSL_CONN_EOF) return 0;
    c->server->last_error = rc;
    return WWEP_ERR_IO;
}

static int conn_write(void *ctx, const unsigned char *buf, size_t len)
{
    wwep_tls_conn *c = ctx;
    int rc;
    /* Nothing can be sent before the handshake: the server writes then only
     * to answer a client whose time ran out mid-handshake, so say that. */
    if (!c->handshaken) {
        c->server->last_error = MBEDTLS_ERR_SSL_TIMEOUT;
        c->server->verify_flags = 0;
        return WWEP_ERR_TLS;
    }
    c->timeout_ms = 0;
    do rc = mbedtls_ssl_write(&c->ssl, buf, len);
    while (rc == MBEDTLS_ERR_SSL_WANT_WRITE);
    if (rc > 0) return rc;
    c->server->last_error = rc;
    return WWEP_ERR_IO;
}

static void conn_close(void *ctx)
{
    wwep_tls_conn *c = ctx;
    c->timeout_ms = 0;
    if (c->handshaken) (void)mbedtls_ssl_close_notify(&c->ssl);
    c->raw.close(c->raw.ctx);
    /* Ready for the next connection: the `reset:` step. */
    (void)mbedtls_ssl_session_reset(&c->ssl);
    c->handshaken = 0;
    c->busy = 0;
}

static int lst_listen(void *ctx, const char *addr, uint16_t port, uint16_t *bound_port)
{
    wwep_tls_server *tls = ctx;
    return tls->under->listen(tls->under->ctx, addr, port, bound_port);
}

static int lst_accept(void *ctx, wwep_transport *conn, char *peer, size_t peer_len,
                      uint32_t timeout_ms)
{
    wwep_tls_server *tls = ctx;
    wwep_tls_conn *c = NULL;
    size_t i;
    int rc;
    if (!tls->started) return WWEP_ERR_TLS;
    for (i = 0; i < WWEP_SERVER_SLOTS && c == NULL; i++)
        if (!tls->conns[i].busy) c = &tls->conns[i];
    if (c == NULL) return WWEP_ERR_TIMEOUT;
    rc = tls->under->accept(tls->under->ctx, &c->raw, peer, peer_len, timeout_ms);
    if (rc != WWEP_OK) return rc;
    /* The last error describes this connection's failure, not an older one. */
    tls->last_error = 0;
    tls->verify_flags = 0;
    c->busy = 1;
    c->handshaken = 0;
    c->timeout_ms = 0;
    conn->ctx = c;
    conn->connect = NULL;
    conn->read = conn_read;
    conn->write = conn_write;
    conn->close = conn_close;
    return WWEP_OK;
}

static void lst_close(void *ctx)
{
    wwep_tls_server *tls = ctx;
    tls->under->close(tls->under->ctx);
}

void wwep_tls_server_listener(wwep_tls_server *tls, wwep_listener *out)
{
    out->ctx = tls;
    out->listen = lst_listen;
    out->accept = lst_accept;
    out->close = lst_close;
}

void wwep_tls_server_describe(const wwep_tls_server *tls, char *buf, size_t len)
{
    size_t used, i;
    if (len == 0) return;
    buf[0] = '\0';
#if defined(MBEDTLS_ERROR_C)
    if (tls->last_error != 0) mbedtls_strerror(tls->last_error, buf, len);
#else
    if (tls->last_error != 0) snprintf(buf, len, "mbedTLS error -0x%04X", -tls->last_error);
#endif
    used = strlen(buf);
    if (tls->verify_flags != 0 && used + 3 < len) {
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

void wwep_tls_server_free(wwep_tls_server *tls)
{
    size_t i;
    for (i = 0; i < WWEP_SERVER_SLOTS; i++) mbedtls_ssl_free(&tls->conns[i].ssl);
    mbedtls_ssl_ticket_free(&tls->ticket);
    mbedtls_ssl_config_free(&tls->conf);
    mbedtls_x509_crt_free(&tls->client_ca);
    mbedtls_pk_free(&tls->key);
    mbedtls_x509_crt_free(&tls->cert);
    mbedtls_ctr_drbg_free(&tls->drbg);
    mbedtls_entropy_free(&tls->entropy);
}
#else
/* ISO C wants something in every translation unit. */
typedef int wwep_tls_server_unused;
#endif
