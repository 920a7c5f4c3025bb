/* lwIP on a TAP device: see tap.h. */
#define _POSIX_C_SOURCE 200112L
#include "tap.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lwip/ip4_addr.h"
#include "lwip/netif.h"
#include "lwip/sys.h"
#include "lwip/tcpip.h"
#include "netif/tapif.h"

/* With Debian's liblwip 2.1.3, a frame from the TAP device longer than about
 * 590 bytes is copied past the end of the 616-byte pool buffer tapif received
 * it into (valgrind shows the writes in pbuf_take under tapif's thread; a TLS
 * handshake's certificate crashes the program). So the interface's MTU is
 * 576, IPv4's minimum: lwIP then announces an MSS of 536 and the peer sends
 * no longer frames. The Linux side of the TAP device
 * should have MTU 576 too (ip link set NAME mtu 576), for frames other than
 * TCP's. */
#define TAP_MTU 576

static struct netif tap_netif;

static void tcpip_ready(void *arg)
{
    sys_sem_signal((sys_sem_t *)arg);
}

/* "A.B.C.D/NN" into an address and a netmask; 0 when malformed. */
static int parse_cidr(const char *text, ip4_addr_t *address, ip4_addr_t *mask)
{
    char copy[32];
    char *slash, *end;
    unsigned long bits;
    size_t len = strlen(text);
    if (len >= sizeof copy) return 0;
    memcpy(copy, text, len + 1);
    slash = strchr(copy, '/');
    if (slash == NULL) return 0;
    *slash = '\0';
    bits = strtoul(slash + 1, &end, 10);
    if (slash[1] == '\0' || *end != '\0' || bits < 1 || bits > 32) return 0;
    if (!ip4addr_aton(copy, address)) return 0;
    ip4_addr_set_u32(mask, lwip_htonl(bits == 32 ? 0xFFFFFFFFUL : ~(0xFFFFFFFFUL >> bits)));
    return 1;
}

int wwep_lwip_tap_up(const char *tap, const char *address, const char *gateway, char *why,
                     size_t why_len)
{
    ip4_addr_t ip, mask, gw;
    sys_sem_t ready;
    struct netif *added;
    if (!parse_cidr(address, &ip, &mask)) {
        snprintf(why, why_len, "--address %s is not A.B.C.D/NN", address);
        return -1;
    }
    ip4_addr_set_zero(&gw);
    if (gateway != NULL && !ip4addr_aton(gateway, &gw)) {
        snprintf(why, why_len, "--gateway %s is not A.B.C.D", gateway);
        return -1;
    }
    /* tapif opens this existing device instead of creating tap0 and running
     * ifconfig on it. */
    if (setenv("PRECONFIGURED_TAPIF", tap, 1) != 0) {
        snprintf(why, why_len, "cannot set PRECONFIGURED_TAPIF");
        return -1;
    }
    if (sys_sem_new(&ready, 0) != ERR_OK) {
        snprintf(why, why_len, "cannot start lwIP");
        return -1;
    }
    tcpip_init(tcpip_ready, &ready);
    sys_sem_wait(&ready);
    sys_sem_free(&ready);
    /* tapif_init exits the program when the device cannot be opened, saying
     * why on stderr. */
    LOCK_TCPIP_CORE();
    added = netif_add(&tap_netif, &ip, &mask, &gw, NULL, tapif_init, tcpip_input);
    if (added != NULL) {
        tap_netif.mtu = TAP_MTU;
        netif_set_default(&tap_netif);
        netif_set_up(&tap_netif);
    }
    UNLOCK_TCPIP_CORE();
    if (added == NULL) {
        snprintf(why, why_len, "cannot add an lwIP interface on %s", tap);
        return -1;
    }
    return 0;
}
