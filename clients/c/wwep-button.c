/* wwep-button: course exercises 1-3 and 6 as a program. Each line on stdin is
 * a button press: toggle the LED (starting off), write it to register 05 of
 * the board's device id, print the reply line as the server sent it.
 *
 *   wwep-button [--tls --ca FILE [--cert FILE --key FILE]] [--resume] HOST PORT MAC
 *
 * Exit 0 if every reply was A, 1 if any was X, 2 on a network or TLS error
 * or an A for another register or value than the one written.
 */
#define _POSIX_C_SOURCE 200112L
#include "wwep.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TIMEOUT_MS 5000

static int usage(const char *why)
{
    fprintf(stderr, "wwep-button: %s\nusage: wwep-button [--tls --ca FILE [--cert FILE --key FILE]] "
                    "[--resume] HOST PORT MAC\n", why);
    return 2;
}

int main(int argc, char **argv)
{
    const char *ca = NULL, *cert = NULL, *key = NULL, *host, *mac;
    int use_tls = 0, resume = 0, i, any_x = 0, status = 0;
    unsigned long port;
    char *end;
    uint16_t device;
    uint16_t led = 0;
    char line[256];
    wwep_posix sock;
    wwep_transport plain, t;
#if defined(WWEP_WITH_MBEDTLS)
    wwep_tls tls;
#endif

    for (i = 1; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--tls") == 0) use_tls = 1;
        else if (strcmp(a, "--resume") == 0) resume = 1;
        else if ((strcmp(a, "--ca") == 0 || strcmp(a, "--cert") == 0 || strcmp(a, "--key") == 0)) {
            if (i + 1 >= argc) return usage("an option needs a FILE after it");
            if (a[2] == 'c' && a[3] == 'a') ca = argv[++i];
            else if (a[2] == 'c') cert = argv[++i];
            else key = argv[++i];
        } else {
            fprintf(stderr, "wwep-button: unknown option %s\n", a);
            return 2;
        }
    }
    if (argc - i != 3) return usage("expected HOST PORT MAC");
    host = argv[i];
    port = strtoul(argv[i + 1], &end, 10);
    if (*argv[i + 1] == '\0' || *end != '\0' || port == 0 || port > 65535)
        return usage("PORT must be a number from 1 to 65535");
    mac = argv[i + 2];
    if (wwep_device_from_mac_text(mac, &device) != WWEP_OK)
        return usage("MAC must be six hex bytes like aa:bb:cc:dd:ee:ff");
    if (!use_tls && (ca || cert || key)) return usage("--ca, --cert and --key need --tls");
    if (use_tls && !ca) return usage("--tls needs --ca FILE");
    if ((cert == NULL) != (key == NULL)) return usage("--cert and --key go together");

    wwep_posix_transport(&sock, &plain);
    t = plain;
#if defined(WWEP_WITH_MBEDTLS)
    if (use_tls) {
        char why[200];
        if (wwep_tls_init(&tls, &plain) != WWEP_OK) {
            wwep_tls_describe(&tls, why, sizeof why);
            fprintf(stderr, "wwep-button: TLS setup failed: %s\n", why);
            wwep_tls_free(&tls);
            return 2;
        }
        if (wwep_tls_ca_file(&tls, ca) != WWEP_OK) {
            wwep_tls_describe(&tls, why, sizeof why);
            fprintf(stderr, "wwep-button: cannot load CA %s: %s\n", ca, why);
            wwep_tls_free(&tls);
            return 2;
        }
        if (cert && wwep_tls_client_file(&tls, cert, key) != WWEP_OK) {
            wwep_tls_describe(&tls, why, sizeof why);
            fprintf(stderr, "wwep-button: cannot load client certificate %s / key %s: %s\n", cert,
                    key, why);
            wwep_tls_free(&tls);
            return 2;
        }
        wwep_tls_resume(&tls, resume);
        wwep_tls_transport(&tls, &t);
    }
#else
    if (use_tls) {
        fprintf(stderr, "wwep-button: built without mbedTLS; --tls is not available\n");
        return 2;
    }
#endif
    (void)resume;

    while (fgets(line, sizeof line, stdin) != NULL) {
        char request[WWEP_REQUEST_MAX];
        wwep_reply reply;
        int rc;
        led = led ? 0 : 1;
        wwep_format_write(request, device, 0x05, led);
        rc = wwep_transact(&t, host, (uint16_t)port, TIMEOUT_MS, request, &reply);
        if (rc == WWEP_ERR_MISMATCH) {
            fprintf(stderr,
                    "wwep-button: %s:%lu acknowledged %s, not the write that was sent (%s)\n",
                    host, port, reply.line, request);
            status = 2;
            break;
        }
        if (rc != WWEP_OK) {
            char why[200] = "";
#if defined(WWEP_WITH_MBEDTLS)
            if (use_tls) wwep_tls_describe(&tls, why, sizeof why);
#endif
            fprintf(stderr, "wwep-button: %s %s:%lu: %s%s%s\n",
                    rc == WWEP_ERR_TLS ? "TLS error with" : "network error with", host, port,
                    wwep_strerror(rc), why[0] ? ": " : "", why);
            status = 2;
            break;
        }
        /* The line as the server sent it, so that an X shows its reason. */
        printf("%s\n", reply.line);
        fflush(stdout);
        if (!reply.accepted) any_x = 1;
    }
#if defined(WWEP_WITH_MBEDTLS)
    if (use_tls) wwep_tls_free(&tls);
#endif
    if (status) return status;
    return any_x ? 1 : 0;
}
