/*
 * wwep: a small C99 client library for the WWEP register protocol.
 *
 * No allocation, no global state. Formatting and parsing follow the server's
 * rules: hex digits in either case are accepted, output is uppercase and
 * zero-padded, a reply is `A` + 10 hex digits (a `\n` or `\r\n` may follow) or
 * anything starting with `X` (its reason, if any, is kept in the reply line
 * but never judged).
 *
 * One transaction runs over a wwep_transport: four callbacks that a board's
 * own socket layer (lwIP, ESP-IDF, WICED, POSIX) supplies. wwep_posix_* is a
 * transport over POSIX sockets; wwep_tls_* (compiled when WWEP_WITH_MBEDTLS is
 * defined) wraps any transport in mbedTLS.
 */
#ifndef WWEP_H
#define WWEP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Results. Every function returns WWEP_OK (0) or one of these (< 0). */
#define WWEP_OK 0
#define WWEP_ERR_ARG (-1)      /* bad argument: a malformed MAC, request, ... */
#define WWEP_ERR_CONNECT (-2)  /* name lookup or TCP connect failed */
#define WWEP_ERR_IO (-3)       /* a read or write failed */
#define WWEP_ERR_TIMEOUT (-4)  /* connect, read or handshake took too long */
#define WWEP_ERR_TLS (-5)      /* TLS setup, handshake or verification failed */
#define WWEP_ERR_REPLY (-6)    /* the server's reply is malformed or cut short */
#define WWEP_ERR_FULL (-7)     /* the register store has no free entry */
#define WWEP_ERR_NOT_FOUND (-8) /* a register that was never written */
#define WWEP_ERR_MISMATCH (-9) /* an `A` for another device, register or
                                 * (for a write) value than the request's */

/* Longest request, 11 characters, plus a NUL. */
#define WWEP_REQUEST_MAX 12
/* Reply text kept for printing: `A` + 10 hex digits, plus a NUL. */
#define WWEP_REPLY_TEXT_MAX 12
/* The reply line as received (an `X` may carry a reason), plus a NUL. */
#define WWEP_REPLY_LINE_MAX 64
/* How long wwep_transact waits for the reason after an `X` before it takes
 * the `X` as it is (the server closes right after its reply). */
#define WWEP_REASON_WAIT_MS 100

/* A short English name of a result code, for messages. */
const char *wwep_strerror(int code);

/* ---- messages ---------------------------------------------------------- */

/* Writes "W%04X%02X%04X" and a NUL into out (at least WWEP_REQUEST_MAX bytes);
 * returns 11, the length without the NUL. */
size_t wwep_format_write(char *out, uint16_t device, uint8_t reg, uint16_t value);
/* Writes "R%04X%02X" and a NUL; returns 7. */
size_t wwep_format_read(char *out, uint16_t device, uint8_t reg);

typedef struct wwep_request {
    char command;      /* 'R' or 'W' */
    uint16_t device;
    uint8_t reg;
    uint16_t value;    /* 0 for 'R' */
} wwep_request;

/* Parses a whole request as the server does: uppercase `R`/`W`, hex in either
 * case, exact length, an optional `\n` or `\r\n` after it. WWEP_OK or
 * WWEP_ERR_ARG. */
int wwep_parse_request(const char *buf, size_t len, wwep_request *out);

typedef struct wwep_reply {
    int accepted;      /* 1 for `A`, 0 for `X` */
    uint16_t device;   /* the fields of an `A` reply; 0 after `X` */
    uint8_t reg;
    uint16_t value;
    /* Set by wwep_transact: the reply line as the server sent it, without its
     * `\n` or `\r\n` (`A04FB050001`, `X`, `X forbidden`), NUL-terminated. */
    char line[WWEP_REPLY_LINE_MAX];
} wwep_reply;

/* What wwep_parse_reply makes of the bytes received so far. */
#define WWEP_REPLY_COMPLETE 1  /* *out is filled in */
#define WWEP_REPLY_PARTIAL 0   /* a valid beginning: read on */
/* or WWEP_ERR_REPLY: no reply starts like this */

/* Parses the bytes of a reply received so far. `X...` is complete at its first
 * byte (the rest is a reason, ignored). `A` is complete after 10 hex digits,
 * optionally followed by `\n` or `\r\n` (a lone `\r` after them is PARTIAL);
 * anything else after them is WWEP_ERR_REPLY. */
int wwep_parse_reply(const unsigned char *buf, size_t len, wwep_reply *out);

/* Formats a parsed reply as the server writes it: "A%04X%02X%04X" or "X",
 * with a NUL, into out (at least WWEP_REPLY_TEXT_MAX bytes). Returns the length. */
size_t wwep_format_reply(char *out, const wwep_reply *reply);

/* The device id of a board: the 16-bit sum of the six bytes of its MAC.
 * Accepts "aa:bb:cc:dd:ee:ff", "aa-bb-...", either case. WWEP_OK or
 * WWEP_ERR_ARG. */
int wwep_device_from_mac_text(const char *mac, uint16_t *device);
/* The same from the six bytes. */
uint16_t wwep_device_from_mac(const uint8_t mac[6]);

/* ---- one transaction over a transport ---------------------------------- */

typedef struct wwep_transport {
    void *ctx;
    /* Opens a connection to host:port within timeout_ms. WWEP_OK or < 0. */
    int (*connect)(void *ctx, const char *host, uint16_t port, uint32_t timeout_ms);
    /* Writes up to len bytes; returns how many (> 0) or < 0. */
    int (*write)(void *ctx, const unsigned char *buf, size_t len);
    /* Reads up to len bytes, waiting at most timeout_ms: returns how many
     * (> 0), 0 when the peer has closed, WWEP_ERR_TIMEOUT or another < 0. */
    int (*read)(void *ctx, unsigned char *buf, size_t len, uint32_t timeout_ms);
    /* Closes the connection; safe to call after a failed connect. */
    void (*close)(void *ctx);
} wwep_transport;

/* One WWEP transaction: connect, write the request (no terminator, as a
 * device client does), read until the reply is complete or the server
 * closes, close. timeout_ms bounds the connect and each wait for bytes.
 * After an `X` it reads the reason up to a `\n`, the server's close or
 * WWEP_REASON_WAIT_MS, whichever comes first.
 * On WWEP_OK, *reply holds the reply (accepted or not) and reply->line the
 * line as received. An `A` must answer the request: the same device and
 * register, and for a write the same value; any other `A` is
 * WWEP_ERR_MISMATCH, with *reply and reply->line holding it, so that a write
 * acknowledged for another register is never taken for the board's own. */
int wwep_transact(const wwep_transport *t, const char *host, uint16_t port,
                  uint32_t timeout_ms, const char *request, wwep_reply *reply);

/* ---- POSIX sockets ----------------------------------------------------- */

#if defined(WWEP_WITH_POSIX)
typedef struct wwep_posix {
    int fd;
} wwep_posix;

/* Fills *t with a transport over POSIX sockets using *p for its state. Nagle
 * is left as the platform sets it. */
void wwep_posix_transport(wwep_posix *p, wwep_transport *t);
#endif

/* ---- mbedTLS ------------------------------------------------------------ */

#if defined(WWEP_WITH_MBEDTLS)
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>

typedef struct wwep_tls {
    const wwep_transport *under;  /* the byte stream TLS runs over */
    const char *hostname;         /* verified against the server's certificate */
    uint32_t timeout_ms;
    int resume;                   /* offer the last session again */
    int have_session;
    int ready;                    /* the SSL context is set up */
    int last_error;               /* the last mbedTLS error code, or 0 */
    uint32_t verify_flags;        /* certificate verification flags, or 0 */
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
    mbedtls_x509_crt ca;
    mbedtls_x509_crt cert;
    mbedtls_pk_context key;
    mbedtls_ssl_config conf;
    mbedtls_ssl_context ssl;
    mbedtls_ssl_session session;
} wwep_tls;

/* Prepares *tls over the transport *under: seeds the random generator from
 * the mbedTLS entropy pool (the sources the mbedTLS build provides: on a board
 * without the platform's default source, configure MBEDTLS_ENTROPY_HARDWARE_ALT
 * and supply mbedtls_hardware_poll from the chip's random number generator)
 * and sets TLS 1.2 client defaults with verification required. Call
 * wwep_tls_free when done, even after an error. */
int wwep_tls_init(wwep_tls *tls, const wwep_transport *under);
/* The CA the server's certificate must chain to: a PEM (NUL included in len)
 * or DER buffer, or a file (PEM may hold several certificates). */
int wwep_tls_ca_buffer(wwep_tls *tls, const unsigned char *buf, size_t len);
int wwep_tls_ca_file(wwep_tls *tls, const char *path);
/* An optional client certificate and its key. */
int wwep_tls_client_buffer(wwep_tls *tls, const unsigned char *cert, size_t cert_len,
                           const unsigned char *key, size_t key_len);
int wwep_tls_client_file(wwep_tls *tls, const char *cert_path, const char *key_path);
/* Offer the previous connection's session (ID or ticket) on the next one. */
void wwep_tls_resume(wwep_tls *tls, int on);
/* Fills *t with the TLS transport. The host name given to connect is the one
 * verified; mbedTLS 2.x checks it against DNS names only, never IP SANs. */
void wwep_tls_transport(wwep_tls *tls, wwep_transport *t);
/* Describes the last TLS error into buf (one line). */
void wwep_tls_describe(const wwep_tls *tls, char *buf, size_t len);
void wwep_tls_free(wwep_tls *tls);
#endif

#ifdef __cplusplus
}
#endif
#endif
