/*
 * sock_linux.h: the few Linux socket idioms that the engine, discovery, the
 * raw methods, the session, the servers and the ntcp program share: a
 * socket that shares its port, the TTL of its packets, and the ICMP errors
 * the kernel queues on it. They exist once here because each needs its
 * options in an order the kernel insists on (SO_REUSEPORT before bind, on
 * every socket of the port) and the error queue's control messages are easy
 * to read wrong. Internal to the library (hidden like everything not in
 * ntcp.h); Linux only, as IP_RECVERR is.
 */
#ifndef NTCP_SOCK_LINUX_H
#define NTCP_SOCK_LINUX_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

/* What ntcp_sock_reuse() sets. A port is shared between sockets only when
 * every one of them set SO_REUSEPORT (and all belong to one user); traversal
 * binds a session's or an attempt's port again and again, with a listener
 * on it. SO_REUSEADDR lets a bind succeed over TIME-WAIT leftovers. */
enum {
    NTCP_SOCK_REUSEADDR = 1,
    NTCP_SOCK_REUSEPORT = 2,
    NTCP_SOCK_REUSE = NTCP_SOCK_REUSEADDR | NTCP_SOCK_REUSEPORT,
};

/* Sets SO_REUSEADDR, then SO_REUSEPORT, as flags say, on fd (before its
 * bind: the kernel checks them there). Returns 0 or -errno (the first
 * failure; nothing after it is set). */
int ntcp_sock_reuse(int fd, unsigned flags);

/* A non-blocking, close-on-exec socket of family fam and type type
 * (SOCK_STREAM, SOCK_DGRAM), with ntcp_sock_reuse(reuse) and then bound to
 * *bind_to when bind_to is not NULL (NULL: the caller binds, or connect()
 * picks the port). Returns the descriptor or -errno (nothing is left open). */
int ntcp_sock_open(int fam, int type, unsigned reuse, const struct sockaddr_storage *bind_to);

/* Sets the TTL (IPv4, IP_TTL) or hop limit (IPv6, IPV6_UNICAST_HOPS) of
 * fd's unicast packets by fam; ttl -1 restores the system's default. A low
 * TTL lets a SYN or datagram open our NAT's mapping and die before the
 * peer. Returns 0 or -errno. */
int ntcp_sock_set_ttl(int fd, int fam, int ttl);

/* Turns IP_RECVERR (IPv6: IPV6_RECVERR) on or off by fam. With it on, the
 * kernel queues each ICMP error about the socket's traffic with its type,
 * code and sender (ntcp_sock_err_read), which tells a port unreachable or
 * an expired TTL from an RST (a connect() sees ECONNREFUSED for both), and
 * gives an unconnected datagram socket its errors at all (ip(7)). Off again
 * on a connection handed to a caller, where ICMP errors should stay soft.
 * Returns 0 or -errno; callers that only lose detail ignore it. */
int ntcp_sock_recverr(int fd, int fam, bool on);

/* One error taken off a socket's error queue (struct sock_extended_err). */
typedef struct ntcp_sock_err {
    uint8_t origin; /* SO_EE_ORIGIN_*; SO_EE_ORIGIN_NONE: the message said nothing */
    bool icmp;      /* origin is SO_EE_ORIGIN_ICMP or SO_EE_ORIGIN_ICMP6 */
    uint8_t type;   /* the ICMP(v6) type and code, when icmp */
    uint8_t code;
    int err;        /* the errno the error means (ECONNREFUSED, EHOSTUNREACH, ...) */
    /* Who sent the ICMP message (SO_EE_OFFENDER); family 0 when not said. */
    struct sockaddr_storage offender;
} ntcp_sock_err;

/* Takes one message off fd's error queue (MSG_ERRQUEUE, without waiting).
 * Returns false when the queue is empty; true when a message was taken,
 * with *out filled from its IP_RECVERR / IPV6_RECVERR control message, or
 * zeroed (origin SO_EE_ORIGIN_NONE) when it carried none. */
bool ntcp_sock_err_read(int fd, ntcp_sock_err *out);

/* The kernel's round trip of a TCP socket, in microseconds (TCP_INFO):
 * *srtt_us the smoothed one (RFC 6298), *min_rtt_us the smallest sample of
 * the last minutes (0 when the kernel does not say). The smoothed one
 * carries the peer's delayed ACKs; the minimum is the path's delay. Returns
 * false when the socket has no measurement yet (nothing acknowledged). */
bool ntcp_sock_tcp_rtt(int fd, uint32_t *srtt_us, uint32_t *min_rtt_us);

#endif /* NTCP_SOCK_LINUX_H */
