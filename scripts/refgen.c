/* refgen: the smallest one-shot load generator we know how to write, to check
 * that `wwep bench` is not the bottleneck. Each of CONCURRENCY blocking threads
 * loops: socket, connect, write the request, read the reply, close. No
 * timestamps, no statistics, no checks beyond "a reply arrived".
 *
 *   cc -O2 -pthread -o refgen refgen.c
 *   refgen HOST_IPV4 PORT CONCURRENCY SECONDS
 *
 * Prints one JSON object: {"completed":N,"seconds":S,"per_second":R,"errors":E}.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in server;
static atomic_int stop;
static atomic_int counting;

struct worker {
    pthread_t thread;
    unsigned long done, errors;
};

static void *work(void *arg) {
    struct worker *w = arg;
    static const char request[] = "W0FAC0B1234";
    char reply[64];
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        int ok = fd >= 0 && connect(fd, (struct sockaddr *)&server, sizeof server) == 0 &&
                 write(fd, request, sizeof request - 1) == sizeof request - 1 &&
                 read(fd, reply, sizeof reply) > 0;
        if (fd >= 0) close(fd);
        if (atomic_load_explicit(&counting, memory_order_relaxed)) {
            if (ok) w->done++; else w->errors++;
        }
    }
    return NULL;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: refgen HOST_IPV4 PORT CONCURRENCY SECONDS\n");
        return 2;
    }
    server.sin_family = AF_INET;
    server.sin_port = htons((unsigned short)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &server.sin_addr) != 1) {
        fprintf(stderr, "refgen: not an IPv4 address: %s\n", argv[1]);
        return 2;
    }
    int n = atoi(argv[3]);
    double seconds = atof(argv[4]);
    if (n < 1 || seconds <= 0) {
        fprintf(stderr, "refgen: CONCURRENCY and SECONDS must be positive\n");
        return 2;
    }
    struct worker *workers = calloc((size_t)n, sizeof *workers);
    for (int i = 0; i < n; i++) pthread_create(&workers[i].thread, NULL, work, &workers[i]);
    atomic_store(&counting, 1);
    double start = now();
    struct timespec pause = {(time_t)seconds, (long)((seconds - (time_t)seconds) * 1e9)};
    nanosleep(&pause, NULL);
    atomic_store(&counting, 0);
    double elapsed = now() - start;
    atomic_store(&stop, 1);
    unsigned long done = 0, errors = 0;
    for (int i = 0; i < n; i++) {
        pthread_join(workers[i].thread, NULL);
        done += workers[i].done;
        errors += workers[i].errors;
    }
    printf("{\"completed\":%lu,\"seconds\":%.3f,\"per_second\":%.1f,\"errors\":%lu}\n", done,
           elapsed, done / elapsed, errors);
    return 0;
}
