/* wwep-board-server: course exercises 4, 5 and 7 as a program. The library's
 * server over POSIX sockets, serving the open port, the secure port or both
 * from one register store, with the flag names of wwep-server:
 *
 *   wwep-board-server [--bind ADDR] [--plain-port P] [--tls-port T]
 *       [--cert FILE --key FILE [--client-ca FILE]] [--no-tls | --no-plain]
 *       [--capacity N] [--timeout-ms MS] [--gap-ms MS]
 *
 * Each listener's address is printed on stderr as it starts ("plain listener
 * on 127.0.0.1:27708"); each transaction is one line on stdout, in the
 * reference console's shape: #count port peer "message" -> "reply".
 * SIGTERM or SIGINT stops it (exit 0). Exit 2 for flags that do not make
 * sense, 1 when a file cannot be used or a port cannot be bound. --help
 * prints the usage.
 */
#define _POSIX_C_SOURCE 200112L
#include "wwep_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Entries the store can be given; the table is static, so it costs only the
 * pages a capacity actually touches. */
#define CAPACITY_MAX (1u << 20)
#define DEFAULT_CAPACITY 400
/* How long one step may wait: the most a stop request waits to be seen. */
#define STEP_WAIT_MS 100

static wwep_entry table[CAPACITY_MAX];
static volatile sig_atomic_t stop_requested;

/* What the console hooks need: the name of each listener the server has,
 * by its index, and the TLS server that can say why a handshake failed. */
typedef struct console {
    const char *names[WWEP_SERVER_LISTENERS];
#if defined(WWEP_WITH_MBEDTLS)
    const wwep_tls_server *tls;
#endif
} console;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static int bad_flag(const char *flag, const char *why)
{
    fprintf(stderr, "wwep-board-server: %s %s\n", flag, why);
    return 2;
}

/* Parses a decimal number in [min, max] into *out. */
static int number(const char *text, unsigned long min, unsigned long max, unsigned long *out)
{
    char *end;
    unsigned long v;
    if (text == NULL || *text < '0' || *text > '9') return 0;
    v = strtoul(text, &end, 10);
    if (*end != '\0' || v < min || v > max) return 0;
    *out = v;
    return 1;
}

/* Writes bytes as the Rust server's log does: printable ASCII as it is,
 * `\n`, `\r`, `\\`, `\"` and `\xNN` for the rest. */
static void put_escaped(const unsigned char *b, size_t len)
{
    size_t i;
    for (i = 0; i < len; i++) {
        unsigned char c = b[i];
        if (c == '\n') fputs("\\n", stdout);
        else if (c == '\r') fputs("\\r", stdout);
        else if (c == '\\' || c == '"') printf("\\%c", c);
        else if (c < 0x20 || c > 0x7e) printf("\\x%02X", c);
        else putchar(c);
    }
}

static void console_line(void *ctx, const wwep_transaction *t)
{
    const console *c = ctx;
    printf("#%lu %s %s \"", t->count, c->names[t->listener], t->peer);
    put_escaped(t->received, t->received_len);
    fputs("\" -> \"", stdout);
    put_escaped((const unsigned char *)t->reply, t->reply_len);
    fputs("\"\n", stdout);
    fflush(stdout);
}

/* A connection that ended without a reply, on stderr: a reset, or a TLS
 * handshake that failed (no client certificate, a client that does not trust
 * ours, a client too slow to finish). */
static void failure_line(void *ctx, size_t listener, const char *peer, int code)
{
    const console *c = ctx;
    char why[160];
    snprintf(why, sizeof why, "%s", wwep_strerror(code));
#if defined(WWEP_WITH_MBEDTLS)
    if (strcmp(c->names[listener], "tls") == 0 && c->tls->last_error != 0)
        wwep_tls_server_describe(c->tls, why, sizeof why);
#endif
    fprintf(stderr, "wwep-board-server: %s %s: closed without a reply: %s\n", c->names[listener],
            peer, why);
}

typedef struct options {
    const char *bind, *cert, *key, *client_ca;
    unsigned long plain_port, tls_port, capacity, timeout_ms, gap_ms;
    int plain, tls;
} options;

static const char USAGE[] =
    "usage: wwep-board-server [--bind ADDR] [--plain-port P] [--tls-port T]\n"
    "           [--cert FILE --key FILE [--client-ca FILE]] [--no-tls | --no-plain]\n"
    "           [--capacity N] [--timeout-ms MS] [--gap-ms MS]\n"
    "Serves WWEP from a fixed register store on the open port (default 27708) and\n"
    "the TLS port (default 40508); port 0 picks a free one. One line per\n"
    "transaction on stdout. Exit 0 after SIGTERM or SIGINT, 1 when a file or port\n"
    "cannot be used, 2 for flags that do not make sense.\n";

static int takes_value(const char *flag)
{
    static const char *const flags[] = {"--bind", "--cert", "--key", "--client-ca",
                                        "--plain-port", "--tls-port", "--capacity",
                                        "--timeout-ms", "--gap-ms"};
    size_t i;
    for (i = 0; i < sizeof flags / sizeof flags[0]; i++)
        if (strcmp(flag, flags[i]) == 0) return 1;
    return 0;
}

static int parse(int argc, char **argv, options *o)
{
    int i;
    o->bind = "0.0.0.0";
    o->cert = o->key = o->client_ca = NULL;
    o->plain_port = 27708;
    o->tls_port = 40508;
    o->capacity = DEFAULT_CAPACITY;
    o->timeout_ms = 5000;
    o->gap_ms = 100;
    o->plain = o->tls = 1;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int takes = 1;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(USAGE, stdout);
            return -1;
        } else if (strcmp(a, "--no-plain") == 0) o->plain = 0, takes = 0;
        else if (strcmp(a, "--no-tls") == 0) o->tls = 0, takes = 0;
        else if (!takes_value(a))
            return bad_flag(a, "is not an option of wwep-board-server");
        else if (v == NULL)
            return bad_flag(a, "needs a value");
        else if (strcmp(a, "--bind") == 0) o->bind = v;
        else if (strcmp(a, "--cert") == 0) o->cert = v;
        else if (strcmp(a, "--key") == 0) o->key = v;
        else if (strcmp(a, "--client-ca") == 0) o->client_ca = v;
        else if (strcmp(a, "--plain-port") == 0) {
            if (!number(v, 0, 65535, &o->plain_port)) return bad_flag(a, "must be a port, 0-65535");
        } else if (strcmp(a, "--tls-port") == 0) {
            if (!number(v, 0, 65535, &o->tls_port)) return bad_flag(a, "must be a port, 0-65535");
        } else if (strcmp(a, "--capacity") == 0) {
            if (!number(v, 1, CAPACITY_MAX, &o->capacity))
                return bad_flag(a, "must be a number of registers, 1-1048576");
        } else if (strcmp(a, "--timeout-ms") == 0) {
            if (!number(v, 1, 3600000, &o->timeout_ms))
                return bad_flag(a, "must be milliseconds, 1-3600000");
        } else if (strcmp(a, "--gap-ms") == 0) {
            if (!number(v, 1, 3600000, &o->gap_ms))
                return bad_flag(a, "must be milliseconds, 1-3600000");
        }
        i += takes;
    }
    {
        unsigned char addr[16];
        if (inet_pton(AF_INET, o->bind, addr) != 1 && inet_pton(AF_INET6, o->bind, addr) != 1)
            return bad_flag("--bind", "must be an IP address, such as 0.0.0.0 or ::");
    }
    if (!o->plain && !o->tls) return bad_flag("--no-plain", "and --no-tls together leave nothing to serve");
    if (o->tls && (o->cert == NULL || o->key == NULL))
        return bad_flag(o->cert == NULL ? "--cert" : "--key",
                        "is needed for the TLS port (or give --no-tls)");
#if !defined(WWEP_WITH_MBEDTLS)
    if (o->tls) return bad_flag("--tls-port", "needs a build with mbedTLS (or give --no-tls)");
#endif
    return 0;
}

#if defined(WWEP_WITH_MBEDTLS)
#include <mbedtls/error.h>
/* Whether the certificate file loads by itself, so that an error can name
 * the right one of the two files; why says what is wrong with it. */
static int certificate_loads(const char *path, char *why, size_t len)
{
    mbedtls_x509_crt crt;
    int rc;
    mbedtls_x509_crt_init(&crt);
    rc = mbedtls_x509_crt_parse_file(&crt, path);
    mbedtls_x509_crt_free(&crt);
    if (rc < 0) mbedtls_strerror(rc, why, len);
    else if (rc > 0) snprintf(why, len, "%d certificates in it cannot be parsed", rc);
    return rc == 0;
}

static int cannot(const char *what, const char *file, const char *why)
{
    fprintf(stderr, "wwep-board-server: cannot use %s %s: %s\n", what, file, why);
    return 1;
}
#endif

int main(int argc, char **argv)
{
    static wwep_server server;
    static wwep_posix_listener plain_sock, tls_sock;
#if defined(WWEP_WITH_MBEDTLS)
    static wwep_tls_server tls;
    char why[160];
#endif
    wwep_listener plain, tls_under, secure;
    wwep_store store;
    wwep_clock clock;
    wwep_server_config config;
    options o;
    static console hooks;
    struct sigaction sa;
    int rc, status = 0, have_plain = 0, have_tls = 0;

    rc = parse(argc, argv, &o);
    if (rc != 0) return rc < 0 ? 0 : rc;  /* -1: --help was answered */
    setvbuf(stdout, NULL, _IOLBF, 0);

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    wwep_store_init(&store, table, o.capacity);
    clock.ctx = NULL;
    clock.now_ms = wwep_posix_now_ms;
    wwep_server_config_defaults(&config);
    config.timeout_ms = (uint32_t)o.timeout_ms;
    config.gap_ms = (uint32_t)o.gap_ms;
    config.on_transaction = console_line;
    config.on_failure = failure_line;
    config.hook_ctx = &hooks;
    wwep_server_init(&server, &store, &clock, &config);

    wwep_posix_listener_init(&plain_sock, &plain);
    wwep_posix_listener_init(&tls_sock, &tls_under);
#if defined(WWEP_WITH_MBEDTLS)
    if (wwep_tls_server_init(&tls, &tls_under) != WWEP_OK) {
        wwep_tls_server_describe(&tls, why, sizeof why);
        fprintf(stderr, "wwep-board-server: cannot set up TLS: %s\n", why);
        wwep_tls_server_free(&tls);
        return 1;
    }
    wwep_tls_server_listener(&tls, &secure);
    hooks.tls = &tls;
    if (o.tls) {
        if (!certificate_loads(o.cert, why, sizeof why)) {
            status = cannot("certificate", o.cert, why);
        } else if (wwep_tls_server_cert_file(&tls, o.cert, o.key) != WWEP_OK) {
            /* The certificate alone loads, so the key is what failed. */
            wwep_tls_server_describe(&tls, why, sizeof why);
            status = cannot("key", o.key, why);
        } else if (o.client_ca != NULL &&
                   wwep_tls_server_client_ca_file(&tls, o.client_ca) != WWEP_OK) {
            wwep_tls_server_describe(&tls, why, sizeof why);
            status = cannot("client CA", o.client_ca, why);
        } else if (wwep_tls_server_start(&tls) != WWEP_OK) {
            wwep_tls_server_describe(&tls, why, sizeof why);
            fprintf(stderr, "wwep-board-server: cannot set up TLS: %s\n", why);
            status = 1;
        }
    }
#else
    (void)tls_under;
    memset(&secure, 0, sizeof secure);
#endif

    if (status == 0 && o.plain) {
        uint16_t port;
        if (plain.listen(plain.ctx, o.bind, (uint16_t)o.plain_port, &port) != WWEP_OK) {
            fprintf(stderr, "wwep-board-server: cannot listen on %s port %lu: %s\n", o.bind,
                    o.plain_port, strerror(errno));
            status = 1;
        } else {
            have_plain = 1;
            hooks.names[server.listener_count] = "plain";
            wwep_server_add_listener(&server, &plain);
            fprintf(stderr, "wwep-board-server: plain listener on %s%s%s:%u\n",
                    strchr(o.bind, ':') ? "[" : "", o.bind, strchr(o.bind, ':') ? "]" : "",
                    (unsigned)port);
        }
    }
    if (status == 0 && o.tls) {
        uint16_t port;
        if (secure.listen(secure.ctx, o.bind, (uint16_t)o.tls_port, &port) != WWEP_OK) {
            fprintf(stderr, "wwep-board-server: cannot listen on %s port %lu: %s\n", o.bind,
                    o.tls_port, strerror(errno));
            status = 1;
        } else {
            have_tls = 1;
            hooks.names[server.listener_count] = "tls";
            wwep_server_add_listener(&server, &secure);
            fprintf(stderr, "wwep-board-server: tls listener on %s%s%s:%u\n",
                    strchr(o.bind, ':') ? "[" : "", o.bind, strchr(o.bind, ':') ? "]" : "",
                    (unsigned)port);
        }
    }

    while (status == 0 && !stop_requested) wwep_server_step(&server, STEP_WAIT_MS);
    if (status == 0) {
        wwep_server_stop(&server);
        fprintf(stderr, "wwep-board-server: stopped after %lu transactions\n", server.count);
    }
    if (have_plain) plain.close(plain.ctx);
    if (have_tls) secure.close(secure.ctx);
#if defined(WWEP_WITH_MBEDTLS)
    wwep_tls_server_free(&tls);
#endif
    return status;
}
