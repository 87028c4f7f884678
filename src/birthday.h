/*
 * birthday.h: what the UDP and the TCP birthday searches share (docs/udp.md,
 * docs/traversal.md): their sizes and the random order of the ports guessed.
 * Against a NAT that picks a random port per destination, the random end
 * makes many mappings towards the other end's one known port, and the other
 * end guesses random ports of the random end's address until one matches.
 *
 * Internal to libntcp.
 */
#ifndef NTCP_BIRTHDAY_H
#define NTCP_BIRTHDAY_H

#include <stdint.h>

/* 256 mappings on the random side, 2048 distinct random ports guessed by the
 * other at 500 a second. With the NAT choosing among 64512 ports
 * (1024-65535), a miss has probability (1 - 256/64512)^2048 ~ e^-8.1, about
 * 3 in 10,000; the first hit comes after ~250 guesses (0.5 s) on average. */
#define NTCP_BIRTHDAY_SOCKETS 256
#define NTCP_BIRTHDAY_GUESSES 2048
#define NTCP_BIRTHDAY_PPS 500
/* The ports a NAT hands out are taken to be these (Linux's default range
 * for a masquerade with random ports, and most NATs'). */
#define NTCP_BIRTHDAY_PORT_LO 1024

/* Fills out[0..n) with n distinct ports of [NTCP_BIRTHDAY_PORT_LO, 65535]
 * in a random order (a partial Fisher-Yates shuffle; n at most 64512).
 * Returns 0, NTCP_EINVAL (n too large) or NTCP_ENOMEM. */
int ntcp_birthday_ports(uint16_t *out, unsigned n);

#endif /* NTCP_BIRTHDAY_H */
