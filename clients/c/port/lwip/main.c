/*
 * The board programs over lwIP on a PC. mk/lwip.mk compiles a program's own
 * source (wwep-button.c, wwep-board-server.c) unchanged, with
 *
 *   -Dmain=wwep_program_main
 *   -Dwwep_posix_transport=wwep_lwip_posix_transport
 *   -Dwwep_posix_listener_init=wwep_lwip_posix_listener_init
 *   -Dwwep_posix_now_ms=wwep_lwip_now_ms
 *
 * so that this main runs first: it takes the interface's flags
 *
 *   --tap NAME --address A.B.C.D/NN [--gateway A.B.C.D] [--resolve HOST=A.B.C.D]...
 *
 * out of the command line, puts lwIP's stack on the TAP device (tap.c), and
 * calls the program with the rest; every transport the program makes is then
 * lwIP's, and so is every listener and the server's clock. The programs are compiled with WWEP_WITH_POSIX for the wwep_posix
 * type they declare, wwep.c without it: no Linux socket call is linked in. lwIP has no DNS here: --resolve maps a name the program is given to
 * an address (the name is still the one a TLS certificate is checked against).
 */
#define _POSIX_C_SOURCE 200112L
#include "tap.h"
#include "wwep_lwip.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The transports and listeners one program may hold at once. */
#define PROGRAM_TRANSPORTS 16
#define PROGRAM_LISTENERS 4
#define PROGRAM_HOSTS 4

int wwep_program_main(int argc, char **argv);
void wwep_lwip_posix_transport(wwep_posix *posix, wwep_transport *t);
void wwep_lwip_posix_listener_init(wwep_posix_listener *posix, wwep_listener *out);

static wwep_lwip sockets[PROGRAM_TRANSPORTS];
static size_t sockets_used;
static wwep_lwip_listener listeners[PROGRAM_LISTENERS];
static size_t listeners_used;
static wwep_lwip_host hosts[PROGRAM_HOSTS];
static char host_names[PROGRAM_HOSTS][64];
static size_t host_count;

/* Stands in for wwep_posix_transport: the program's own wwep_posix stays
 * unused, each transport gets a socket state of its own from a fixed pool. */
void wwep_lwip_posix_transport(wwep_posix *posix, wwep_transport *t)
{
    wwep_lwip *p;
    (void)posix;
    if (sockets_used == PROGRAM_TRANSPORTS) {
        fprintf(stderr, "lwIP port: more than %d transports\n", PROGRAM_TRANSPORTS);
        exit(2);
    }
    p = &sockets[sockets_used++];
    wwep_lwip_transport(p, t);
    p->hosts = hosts;
    p->host_count = host_count;
}

/* Stands in for wwep_posix_listener_init, the same way. */
void wwep_lwip_posix_listener_init(wwep_posix_listener *posix, wwep_listener *out)
{
    (void)posix;
    if (listeners_used == PROGRAM_LISTENERS) {
        fprintf(stderr, "lwIP port: more than %d listeners\n", PROGRAM_LISTENERS);
        exit(2);
    }
    wwep_lwip_listener_init(&listeners[listeners_used++], out);
}

static int usage(const char *program, const char *why)
{
    fprintf(stderr,
            "%s: %s\nover lwIP it also takes: --tap NAME --address A.B.C.D/NN "
            "[--gateway A.B.C.D] [--resolve HOST=A.B.C.D]...\n",
            program, why);
    return 2;
}

int main(int argc, char **argv)
{
    const char *tap = NULL, *address = NULL, *gateway = NULL;
    const char *program = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
    char why[160];
    int i, kept = 1;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **slot = NULL;
        if (strcmp(a, "--") == 0) break;
        if (strcmp(a, "--tap") == 0) slot = &tap;
        else if (strcmp(a, "--address") == 0) slot = &address;
        else if (strcmp(a, "--gateway") == 0) slot = &gateway;
        else if (strcmp(a, "--resolve") != 0) {
            argv[kept++] = argv[i];
            continue;
        }
        if (i + 1 >= argc) return usage(program, "an interface flag needs a value after it");
        if (slot != NULL) {
            *slot = argv[++i];
        } else {
            const char *value = argv[++i], *eq = strchr(value, '=');
            size_t n = eq ? (size_t)(eq - value) : 0;
            if (eq == NULL || n == 0 || n >= sizeof host_names[0])
                return usage(program, "--resolve takes HOST=A.B.C.D");
            if (host_count == PROGRAM_HOSTS) return usage(program, "too many --resolve");
            memcpy(host_names[host_count], value, n);
            host_names[host_count][n] = '\0';
            hosts[host_count].name = host_names[host_count];
            hosts[host_count].address = eq + 1;
            host_count++;
        }
    }
    for (; i < argc; i++) argv[kept++] = argv[i];
    argv[kept] = NULL;
    if (tap == NULL || address == NULL) return usage(program, "--tap and --address are required");
    if (wwep_lwip_tap_up(tap, address, gateway, why, sizeof why) != 0) return usage(program, why);
    return wwep_program_main(kept, argv);
}
