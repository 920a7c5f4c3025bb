/*
 * lwIP's own TCP/IP stack on a Linux TAP device, for running the board
 * programs on a PC: lwIP's unix port (tcpip_init, its pthread sys_arch) and
 * its tapif network interface. On a board, the board's own bring-up (its
 * Wi-Fi or Ethernet netif) takes this file's place.
 */
#ifndef WWEP_LWIP_TAP_H
#define WWEP_LWIP_TAP_H

#include <stddef.h>

/* Starts lwIP's tcpip thread and puts one interface on the existing TAP
 * device `tap` with `address` ("A.B.C.D/NN") and an optional `gateway`
 * (NULL for none) as its default route. 0, or -1 with a reason in why. */
int wwep_lwip_tap_up(const char *tap, const char *address, const char *gateway, char *why,
                     size_t why_len);

#endif
