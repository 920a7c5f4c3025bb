/*
 * wwep_server: the board side of WWEP (course exercises 4, 5 and 7) beside the
 * client in wwep.h. C99, no allocation, no global state.
 *
 * Four parts, each usable alone:
 *   - the framer (wwep_frame_message, wwep_frame_final): the server's rules for
 *     where a message ends, bytes in and a verdict out, no I/O;
 *   - the store (wwep_store_*): a fixed table of (device, register, value)
 *     entries in memory the caller owns, `X` when full;
 *   - the transport-server interface (wwep_listener): listen, accept within a
 *     time limit; an accepted connection is a wwep_transport (read, write,
 *     close) whose context the listener owns;
 *   - the server (wwep_server_*): up to WWEP_SERVER_SLOTS connections at once
 *     in fixed slots, advanced by wwep_server_step, so a silent client holds
 *     only its own slot until its time limit.
 *
 * wwep_posix_listener (WWEP_WITH_POSIX) is a listener over POSIX sockets;
 * wwep_tls_server (WWEP_WITH_MBEDTLS) wraps any listener in mbedTLS.
 */
#ifndef WWEP_SERVER_H
#define WWEP_SERVER_H

#include "wwep.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Connections served at once. 1 is the course's "one connection at a time"
 * (exercise 4): a second client waits in the stack's accept backlog. Each
 * slot costs a wwep_slot (184 bytes on a 64-bit PC, less on a 32-bit board)
 * plus its listener's connection context (an int for POSIX; for TLS an
 * mbedTLS context and its record buffers, see docs/board-library.md). */
#ifndef WWEP_SERVER_SLOTS
#define WWEP_SERVER_SLOTS 4
#endif

/* Listeners one server serves from (exercise 7: the open and the secure port). */
#ifndef WWEP_SERVER_LISTENERS
#define WWEP_SERVER_LISTENERS 2
#endif

/* The most bytes of one message kept before it is judged as it stands: a
 * valid request with its terminator is at most 13, the rest is slack for
 * people typing, never a reason to buffer more. Same as the Rust server. */
#define WWEP_MESSAGE_MAX 64

/* Longest reply: `A` + 10 hex digits + `\r\n`, plus a NUL. */
#define WWEP_ANSWER_MAX 14

/* "ip:port" of a peer, IPv6 in brackets, plus a NUL. */
#define WWEP_PEER_MAX 48

/* ---- the framer: where a message ends ----------------------------------- */

/* How a request ended; its reply ends the same way. */
#define WWEP_TERM_NONE 0
#define WWEP_TERM_LF 1
#define WWEP_TERM_CRLF 2

typedef struct wwep_frame {
    size_t len;      /* the message is buf[0..len), terminator excluded */
    int terminator;  /* WWEP_TERM_* */
} wwep_frame;

#define WWEP_FRAME_PARTIAL 0   /* more bytes may change the verdict: read on */
#define WWEP_FRAME_COMPLETE 1  /* *out is filled in; bytes after it are ignored */

/* Judges the bytes received so far on a connection that may send more.
 * The message is complete at the first of: a `\n`; the length its command
 * needs (R 7, W 11), judging every byte already received, so `W0FAC0B12345`
 * in one piece is complete (and `X`); WWEP_MESSAGE_MAX bytes. A message that
 * starts with any other byte is `X` at once, with what has arrived (a line
 * that came whole keeps its end, so a person at a terminal still gets the
 * reply on its own line).
 * Returns WWEP_FRAME_PARTIAL or WWEP_FRAME_COMPLETE. */
int wwep_frame_message(const unsigned char *buf, size_t len, wwep_frame *out);

/* Judges the bytes when no more will be waited for (end of file, the gap,
 * the time limit, a full buffer). A lone `\r` at the end is a terminator cut
 * short and is dropped; anything else is judged as it stands. */
void wwep_frame_final(const unsigned char *buf, size_t len, wwep_frame *out);

/* ---- the store ---------------------------------------------------------- */

typedef struct wwep_entry {
    uint16_t device;
    uint8_t reg;
    uint16_t value;
} wwep_entry;

/* A table the caller owns, kept sorted by (device, register) so a read is a
 * binary search. Any of the 65,536 x 256 registers can be stored; at most
 * `capacity` of them at once. */
typedef struct wwep_store {
    wwep_entry *entries;
    size_t capacity;
    size_t count;
} wwep_store;

/* Uses entries[0..capacity) (e.g. `static wwep_entry table[400];`), empty. */
void wwep_store_init(wwep_store *store, wwep_entry *entries, size_t capacity);
/* Stores a value. Overwriting an existing register always succeeds; a new
 * one needs a free entry. WWEP_OK or WWEP_ERR_FULL. */
int wwep_store_write(wwep_store *store, uint16_t device, uint8_t reg, uint16_t value);
/* WWEP_OK and *value, or WWEP_ERR_NOT_FOUND for a register never written. */
int wwep_store_read(const wwep_store *store, uint16_t device, uint8_t reg, uint16_t *value);

/* The one transaction: parses a framed message (wwep_frame_*), applies it to
 * the store and writes the reply, ended by `terminator`, with a NUL into out
 * (at least WWEP_ANSWER_MAX bytes). Returns the reply's length. */
size_t wwep_answer(wwep_store *store, const unsigned char *message, size_t len,
                   int terminator, char *out);

/* ---- the transport-server interface ------------------------------------ */

typedef struct wwep_listener {
    void *ctx;
    /* Listens on addr:port (a numeric address; port 0 lets the stack pick)
     * and puts the port it got in *bound_port. WWEP_OK or < 0. */
    int (*listen)(void *ctx, const char *addr, uint16_t port, uint16_t *bound_port);
    /* Waits at most timeout_ms for a new connection. On WWEP_OK, *conn is a
     * transport over it (read, write and close; connect is unused) whose
     * context the listener owns until conn->close, and peer holds "ip:port"
     * (NUL-terminated, at most peer_len bytes). WWEP_ERR_TIMEOUT when none
     * came; another < 0 when accepting failed (the server goes on). A
     * listener must be able to hold WWEP_SERVER_SLOTS connections at once. */
    int (*accept)(void *ctx, wwep_transport *conn, char *peer, size_t peer_len,
                  uint32_t timeout_ms);
    /* Stops listening; connections already accepted are not affected. */
    void (*close)(void *ctx);
} wwep_listener;

/* A clock the port supplies: milliseconds from any origin, wrapping at 2^32
 * (differences are taken modulo 2^32, so a wrap is harmless). */
typedef struct wwep_clock {
    void *ctx;
    uint32_t (*now_ms)(void *ctx);
} wwep_clock;

/* ---- the server --------------------------------------------------------- */

/* One answered message, for the console line (count, peer, message, reply). */
typedef struct wwep_transaction {
    unsigned long count;           /* 1, 2, 3... since wwep_server_init */
    size_t listener;               /* index given by wwep_server_add_listener */
    const char *peer;              /* "ip:port" */
    const unsigned char *received; /* every byte received, terminator included */
    size_t received_len;
    const char *reply;             /* the reply as sent, terminator included */
    size_t reply_len;
} wwep_transaction;

typedef struct wwep_server_config {
    /* From accept to the whole message (a TLS handshake included); bytes
     * trickling in do not extend it. A silent connection then gets `X`. */
    uint32_t timeout_ms;
    /* A started message that pauses this long is judged as it stands. */
    uint32_t gap_ms;
    /* While connections are open and nothing happens, how long one step
     * waits in accept before it looks at them again: the most a byte that
     * has arrived waits to be read. */
    uint32_t tick_ms;
    /* Called after each reply is written (optional). */
    void (*on_transaction)(void *ctx, const wwep_transaction *t);
    /* Called when a connection ends without a reply because reading or
     * writing failed (a reset; for TLS, a failed handshake): the listener's
     * index, the peer and the result code (optional). */
    void (*on_failure)(void *ctx, size_t listener, const char *peer, int code);
    void *hook_ctx;
} wwep_server_config;

/* Defaults of the Rust server: timeout 5000 ms, gap 100 ms; tick 5 ms. */
void wwep_server_config_defaults(wwep_server_config *config);

/* One connection's state; the fields are the library's. */
typedef struct wwep_slot {
    int state;                 /* free, reading */
    size_t listener;
    wwep_transport conn;
    uint32_t accepted_at;
    uint32_t last_byte_at;
    size_t len;
    unsigned char buf[WWEP_MESSAGE_MAX];
    char peer[WWEP_PEER_MAX];
} wwep_slot;

typedef struct wwep_server {
    wwep_store *store;
    wwep_clock clock;
    wwep_server_config config;
    const wwep_listener *listeners[WWEP_SERVER_LISTENERS];
    size_t listener_count;
    size_t next_listener;      /* the listener accepted from first next time */
    unsigned long count;
    wwep_slot slots[WWEP_SERVER_SLOTS];
} wwep_server;

/* Prepares *server over a store and a clock. config may be NULL (defaults).
 * WWEP_OK or WWEP_ERR_ARG. */
int wwep_server_init(wwep_server *server, wwep_store *store, const wwep_clock *clock,
                     const wwep_server_config *config);
/* Serves connections from a listener that is already listening. Its index
 * (0, 1, ...) is the one in wwep_transaction. WWEP_OK or WWEP_ERR_ARG when
 * WWEP_SERVER_LISTENERS are already there. */
int wwep_server_add_listener(wwep_server *server, const wwep_listener *listener);
/* One round: accepts into free slots, reads what each open connection has,
 * answers every message that is complete or whose gap or time limit has
 * passed, closes answered connections. Waits at most wait_ms in total
 * (tick_ms at a time while connections are open). Returns how many
 * connections are open after it. Call it in a loop. */
int wwep_server_step(wwep_server *server, uint32_t wait_ms);
/* Connections open now. */
size_t wwep_server_open(const wwep_server *server);
/* Closes every open connection: a started message is judged as it stands,
 * a silent connection gets `X`. Listeners are the caller's to close. */
void wwep_server_stop(wwep_server *server);

/* ---- POSIX sockets ----------------------------------------------------- */

#if defined(WWEP_WITH_POSIX)
/* How long a closed connection is still read (its write side shut) so that
 * bytes the client sends after the reply do not make the stack answer with a
 * reset that could destroy the reply before the client reads it. */
#ifndef WWEP_LINGER_MS
#define WWEP_LINGER_MS 500
#endif

struct wwep_posix_listener;

/* An accepted connection; `sock` first, so its address is the conn's. */
typedef struct wwep_posix_conn {
    wwep_posix sock;
    struct wwep_posix_listener *owner;
} wwep_posix_conn;

typedef struct wwep_posix_listener {
    int fd;
    wwep_posix_conn conns[WWEP_SERVER_SLOTS];
    /* Closed connections still being read until the client closes or
     * WWEP_LINGER_MS pass; -1 when unused. Looked after by accept. */
    int closing[WWEP_SERVER_SLOTS];
    uint32_t closing_since[WWEP_SERVER_SLOTS];
} wwep_posix_listener;

/* Fills *out with a listener over POSIX sockets using *l for its state.
 * A connection's close shuts its write side and lingers (WWEP_LINGER_MS);
 * the listener's close ends the lingering ones too. */
void wwep_posix_listener_init(wwep_posix_listener *l, wwep_listener *out);
/* A wwep_clock over CLOCK_MONOTONIC (ctx unused). */
uint32_t wwep_posix_now_ms(void *ctx);
#endif

/* ---- mbedTLS ------------------------------------------------------------ */

#if defined(WWEP_WITH_MBEDTLS)
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/ssl_ticket.h>
#include <mbedtls/x509_crt.h>

struct wwep_tls_server;

/* One TLS connection: its own SSL context, set up once and reset for each
 * new connection (mbedTLS's ssl_server.c `reset:` loop), so the memory a
 * slot uses is fixed after wwep_tls_server_start. */
typedef struct wwep_tls_conn {
    struct wwep_tls_server *server;
    wwep_transport raw;          /* the accepted connection TLS runs over */
    uint32_t timeout_ms;         /* the current read's time limit */
    int busy;
    int handshaken;              /* the handshake has finished */
    mbedtls_ssl_context ssl;
} wwep_tls_conn;

typedef struct wwep_tls_server {
    const wwep_listener *under;  /* the listener TLS runs over */
    int started;
    int last_error;              /* the last mbedTLS error code, or 0 */
    uint32_t verify_flags;       /* the last client verification flags, or 0 */
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
    mbedtls_x509_crt cert;
    mbedtls_pk_context key;
    mbedtls_x509_crt client_ca;
    mbedtls_ssl_config conf;
    mbedtls_ssl_ticket_context ticket;
    wwep_tls_conn conns[WWEP_SERVER_SLOTS];
} wwep_tls_server;

/* Prepares *tls over the listener *under (seeding the random generator from
 * the mbedTLS entropy pool; see wwep_tls_init about a board's source) with
 * TLS 1.2 server defaults, no client certificate asked. Call
 * wwep_tls_server_free when done, even after an error. */
int wwep_tls_server_init(wwep_tls_server *tls, const wwep_listener *under);
/* The server's certificate (PEM: leaf first, then intermediates; or DER) and
 * its key (PKCS#8, PKCS#1 or SEC1, PEM or DER, unencrypted). A PEM buffer's
 * length includes its NUL. */
int wwep_tls_server_cert_buffer(wwep_tls_server *tls, const unsigned char *cert,
                                size_t cert_len, const unsigned char *key, size_t key_len);
int wwep_tls_server_cert_file(wwep_tls_server *tls, const char *cert_path,
                              const char *key_path);
/* Requires every client to present a certificate that chains to a CA here. */
int wwep_tls_server_client_ca_buffer(wwep_tls_server *tls, const unsigned char *buf,
                                     size_t len);
int wwep_tls_server_client_ca_file(wwep_tls_server *tls, const char *path);
/* After the certificate (and client CA): enables session tickets and sets up
 * the SSL context of every slot. WWEP_OK or WWEP_ERR_TLS. */
int wwep_tls_server_start(wwep_tls_server *tls);
/* Fills *out with the TLS listener: listen and close are the underlying
 * listener's; accept takes its connection and returns a transport whose
 * read runs the handshake without blocking past its time limit (a read
 * with time limit 0 advances it as far as the bytes that have arrived). */
void wwep_tls_server_listener(wwep_tls_server *tls, wwep_listener *out);
/* Describes the last TLS error into buf (one line). */
void wwep_tls_server_describe(const wwep_tls_server *tls, char *buf, size_t len);
void wwep_tls_server_free(wwep_tls_server *tls);
#endif

#ifdef __cplusplus
}
#endif
#endif
