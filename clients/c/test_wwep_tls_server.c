/* The TLS server's buffer calls, and the library's two halves talking to each
 * other: certificate, key and client CA are read into memory (as a board
 * holds them) and given with the _buffer calls; a forked child is a board
 * running wwep_transact over the client's TLS transport.
 *
 *   test_wwep_tls_server CA SERVER-CERT SERVER-KEY CLIENT-CERT CLIENT-KEY
 *
 * The server requires a client certificate: a board that presents one is
 * answered `A`; one that does not fails its handshake, and the server reports
 * the failure. Exit 0 when both went so. */
#define _POSIX_C_SOURCE 200112L
#include "wwep_server.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define FILE_MAX 16384

typedef struct blob {
    unsigned char bytes[FILE_MAX];
    size_t len;
} blob;

/* Reads a file as a board would have it in flash: PEM with its NUL counted
 * (what mbedTLS's parsers want), DER as it is. */
static int load(const char *path, blob *b)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) return 0;
    b->len = fread(b->bytes, 1, FILE_MAX - 1, f);
    fclose(f);
    b->bytes[b->len] = '\0';
    if (strstr((const char *)b->bytes, "-----BEGIN") != NULL) b->len++;
    return 1;
}

static blob ca, server_cert, server_key, client_cert, client_key;
static int failures_reported;

static void on_failure(void *ctx, size_t listener, const char *peer, int code)
{
    (void)ctx, (void)listener, (void)peer, (void)code;
    failures_reported++;
}

/* The board: one write over TLS; exit 0 on `A0FAC0B1234`, 3 when the
 * transaction failed, 4 on any other reply. */
static int board(uint16_t port, int with_certificate)
{
    static wwep_tls tls;
    wwep_posix sock;
    wwep_transport tcp, secure;
    wwep_reply reply;
    int rc;
    wwep_posix_transport(&sock, &tcp);
    if (wwep_tls_init(&tls, &tcp) != WWEP_OK ||
        wwep_tls_ca_buffer(&tls, ca.bytes, ca.len) != WWEP_OK)
        return 5;
    if (with_certificate && wwep_tls_client_buffer(&tls, client_cert.bytes, client_cert.len,
                                                   client_key.bytes, client_key.len) != WWEP_OK)
        return 5;
    wwep_tls_transport(&tls, &secure);
    rc = wwep_transact(&secure, "localhost", port, 5000, "W0FAC0B1234", &reply);
    wwep_tls_free(&tls);
    if (rc != WWEP_OK) return 3;
    return strcmp(reply.line, "A0FAC0B1234") == 0 ? 0 : 4;
}

/* Serves until the child exits (or 10 s pass); returns its exit status. */
static int serve_until_exit(wwep_server *server, pid_t child)
{
    uint32_t began = wwep_posix_now_ms(NULL);
    int status;
    for (;;) {
        pid_t done = waitpid(child, &status, WNOHANG);
        if (done == child) return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        if ((uint32_t)(wwep_posix_now_ms(NULL) - began) > 10000) {
            kill(child, SIGKILL);
            waitpid(child, &status, 0);
            return -2;
        }
        wwep_server_step(server, 20);
    }
}

int main(int argc, char **argv)
{
    static wwep_entry table[8];
    static wwep_store store;
    static wwep_server server;
    static wwep_posix_listener sock;
    static wwep_tls_server tls;
    wwep_listener under, secure;
    wwep_clock clock;
    wwep_server_config config;
    uint16_t port;
    int with, without;
    pid_t child;
    char why[160];

    if (argc != 6 || !load(argv[1], &ca) || !load(argv[2], &server_cert) ||
        !load(argv[3], &server_key) || !load(argv[4], &client_cert) || !load(argv[5], &client_key)) {
        fprintf(stderr, "usage: test_wwep_tls_server CA SERVER-CERT SERVER-KEY CLIENT-CERT CLIENT-KEY\n");
        return 2;
    }
    wwep_posix_listener_init(&sock, &under);
    if (wwep_tls_server_init(&tls, &under) != WWEP_OK ||
        wwep_tls_server_cert_buffer(&tls, server_cert.bytes, server_cert.len, server_key.bytes,
                                    server_key.len) != WWEP_OK ||
        wwep_tls_server_client_ca_buffer(&tls, ca.bytes, ca.len) != WWEP_OK ||
        wwep_tls_server_start(&tls) != WWEP_OK) {
        wwep_tls_server_describe(&tls, why, sizeof why);
        fprintf(stderr, "test_wwep_tls_server: TLS setup failed: %s\n", why);
        return 1;
    }
    wwep_tls_server_listener(&tls, &secure);
    if (secure.listen(secure.ctx, "127.0.0.1", 0, &port) != WWEP_OK) {
        fprintf(stderr, "test_wwep_tls_server: cannot listen\n");
        return 1;
    }
    wwep_store_init(&store, table, 8);
    clock.ctx = NULL;
    clock.now_ms = wwep_posix_now_ms;
    wwep_server_config_defaults(&config);
    config.on_failure = on_failure;
    wwep_server_init(&server, &store, &clock, &config);
    wwep_server_add_listener(&server, &secure);

    fflush(NULL);
    child = fork();
    if (child == 0) _exit(board(port, 1));
    with = serve_until_exit(&server, child);
    child = fork();
    if (child == 0) _exit(board(port, 0));
    without = serve_until_exit(&server, child);
    /* The refused handshake is reported once the server has read the alert. */
    {
        uint32_t began = wwep_posix_now_ms(NULL);
        while (failures_reported == 0 && (uint32_t)(wwep_posix_now_ms(NULL) - began) < 5000)
            wwep_server_step(&server, 20);
    }
    wwep_server_stop(&server);
    secure.close(secure.ctx);
    wwep_tls_server_free(&tls);

    if (with != 0 || without != 3 || failures_reported != 1) {
        fprintf(stderr,
                "test_wwep_tls_server: with a certificate: exit %d (want 0), without: exit %d "
                "(want 3), failures reported: %d (want 1)\n",
                with, without, failures_reported);
        return 1;
    }
    printf("test_wwep_tls_server: all passed\n");
    return 0;
}
