/*
 * raw.h: the privileged packet helpers of STUNT#1 and NATBlaster (issue 6):
 * capture the initial sequence number of this host's own SYN, and send a
 * crafted TCP segment (the SYN-ACK). raw.c builds segments (pure, portable,
 * unit-tested); raw_linux.c does the I/O with an AF_PACKET socket and an
 * IPPROTO_RAW socket (CAP_NET_RAW), built with the NTCP_RAW option
 * (NTCP_HAVE_RAW). Without it every I/O function reports NTCP_EUNREACHABLE
 * and why. IPv4 only: both methods exist to get through IPv4 NATs.
 *
 * Internal to libntcp (and the broker, which spoofs STUNT#1's SYN-ACKs).
 */
#ifndef NTCP_RAW_H
#define NTCP_RAW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define RAW_TCP_SYN 0x02
#define RAW_TCP_RST 0x04
#define RAW_TCP_ACK 0x10

/* One TCP segment without payload, IPv4. Addresses are AF_INET. */
typedef struct raw_segment {
    struct sockaddr_storage src, dst;
    uint32_t seq, ack;
    uint8_t flags;   /* RAW_TCP_* */
    uint16_t window; /* unscaled */
    uint16_t mss;    /* 0: no MSS option */
    uint8_t ttl;     /* 0: 64 */
} raw_segment;

/* The segment's IPv4 header + TCP header (+ MSS option) with both checksums,
 * into buf. Returns its length (40 or 44) or NTCP_EINVAL (not IPv4) /
 * NTCP_ENOSPC. Pure. */
int raw_build_tcp4(const raw_segment *s, uint8_t *buf, size_t cap);

/* The Internet checksum (RFC 1071) of data, starting from sum (host order
 * 32-bit accumulator); folded and complemented. */
uint16_t raw_inet_checksum(const void *data, size_t len, uint32_t sum);

/* Whether this build has the raw helpers (the NTCP_RAW option). */
bool raw_built(void);

/* Whether this process may use them now: opens (and closes) one AF_PACKET
 * and one IPPROTO_RAW socket. 0, or NTCP_EUNREACHABLE with why set (built
 * without NTCP_RAW; "no CAP_NET_RAW (EPERM)"; ...). why may be NULL. */
int raw_check(char *why, size_t len);

/* Opens a capture of this host's outgoing SYN (without ACK) from local port
 * sport to dst (IPv4 address and port): an AF_PACKET socket, non-blocking,
 * with a BPF filter on that 4-tuple, attached before any packet is queued.
 * Returns the fd, or -errno. Open it before connect(). */
int raw_capture_open(uint16_t sport, const struct sockaddr_storage *dst);

/* Reads queued packets; *isn is the sequence number of the last matching
 * outgoing SYN. Returns 0, NTCP_ENOTFOUND (none queued yet) or -errno. */
int raw_capture_isn(int fd, uint32_t *isn);

/* Sends s with an IPPROTO_RAW socket (fd from raw_send_open(): IP_HDRINCL).
 * Returns 0 or -errno. */
int raw_send_open(void);
int raw_send_tcp(int fd, const raw_segment *s);

#endif /* NTCP_RAW_H */
