/*
 * raw_linux.c: the Linux side of raw.h. The ISN of our own SYN comes from an
 * AF_PACKET socket with a classic BPF filter on the outgoing SYN's 4-tuple
 * (no libpcap needed); the SYN-ACK goes out through an IPPROTO_RAW socket.
 * Both need CAP_NET_RAW. Built with the NTCP_RAW option; otherwise every
 * function says why it cannot work.
 */
#include "raw.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "ntcp.h"

#if defined(__linux__) && defined(NTCP_HAVE_RAW)

#include <arpa/inet.h>
#include <linux/filter.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <netinet/in.h>

bool raw_built(void)
{
    return true;
}

int raw_check(char *why, size_t len)
{
    int p = socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int perr = p < 0 ? errno : 0;
    int r = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW);
    int rerr = r < 0 ? errno : 0;
    if (p >= 0)
        close(p);
    if (r >= 0)
        close(r);
    if (!perr && !rerr)
        return 0;
    if (why && len)
        snprintf(why, len, "%s socket: %s%s", perr ? "AF_PACKET" : "IPPROTO_RAW",
                 strerror(perr ? perr : rerr),
                 (perr ? perr : rerr) == EPERM ? " (CAP_NET_RAW needed)" : "");
    return NTCP_EUNREACHABLE;
}

int raw_capture_open(uint16_t sport, const struct sockaddr_storage *dst)
{
    if (!dst || dst->ss_family != AF_INET)
        return -EAFNOSUPPORT;
    const struct sockaddr_in *d = (const struct sockaddr_in *)dst;
    uint32_t dip = ntohl(d->sin_addr.s_addr);
    uint16_t dport = ntohs(d->sin_port);
    /* Cooked packets (SOCK_DGRAM) start at the network header. Accept: IPv4,
     * TCP, not a fragment, to dst, from sport to dport, SYN without ACK. */
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_H | BPF_ABS, (uint32_t)(SKF_AD_OFF + SKF_AD_PROTOCOL)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ETH_P_IP, 0, 14),
        BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 9),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, IPPROTO_TCP, 0, 12),
        BPF_STMT(BPF_LD | BPF_H | BPF_ABS, 6),
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, 0x1fff, 10, 0),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 16),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, dip, 0, 8),
        BPF_STMT(BPF_LDX | BPF_B | BPF_MSH, 0),
        BPF_STMT(BPF_LD | BPF_H | BPF_IND, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, sport, 0, 5),
        BPF_STMT(BPF_LD | BPF_H | BPF_IND, 2),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, dport, 0, 3),
        BPF_STMT(BPF_LD | BPF_B | BPF_IND, 13),
        BPF_STMT(BPF_ALU | BPF_AND | BPF_K, RAW_TCP_SYN | RAW_TCP_ACK),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, RAW_TCP_SYN, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, 0),
        BPF_STMT(BPF_RET | BPF_K, 128),
    };
    struct sock_fprog prog = {.len = sizeof code / sizeof code[0], .filter = code};
    /* Protocol 0: nothing is queued until the filter is in place and the
     * bind below says which packets. */
    int fd = socket(AF_PACKET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct sockaddr_ll ll;
    memset(&ll, 0, sizeof ll);
    ll.sll_family = AF_PACKET;
    /* ETH_P_ALL: only such sockets see outgoing packets (a protocol
     * socket sees what comes in); the filter keeps IPv4. */
    ll.sll_protocol = htons(ETH_P_ALL);
    if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog) < 0 ||
        bind(fd, (struct sockaddr *)&ll, sizeof ll) < 0) {
        int err = errno;
        close(fd);
        return -err;
    }
    return fd;
}

int raw_capture_isn(int fd, uint32_t *isn)
{
    int rc = NTCP_ENOTFOUND;
    for (;;) {
        uint8_t pkt[128];
        struct sockaddr_ll from;
        socklen_t fl = sizeof from;
        ssize_t n = recvfrom(fd, pkt, sizeof pkt, 0, (struct sockaddr *)&from, &fl);
        if (n < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK ? rc : -errno;
        /* Only what this host sends (loopback shows a packet twice). */
        if (from.sll_pkttype != PACKET_OUTGOING || n < 20)
            continue;
        size_t ihl = (size_t)(pkt[0] & 0x0f) * 4;
        if (ihl < 20 || (size_t)n < ihl + 8)
            continue;
        const uint8_t *t = pkt + ihl;
        *isn = (uint32_t)t[4] << 24 | (uint32_t)t[5] << 16 | (uint32_t)t[6] << 8 | t[7];
        rc = 0;
    }
}

int raw_send_open(void)
{
    /* IPPROTO_RAW implies IP_HDRINCL: the header is ours, source included. */
    int fd = socket(AF_INET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_RAW);
    return fd < 0 ? -errno : fd;
}

int raw_send_tcp(int fd, const raw_segment *s)
{
    uint8_t buf[64];
    int len = raw_build_tcp4(s, buf, sizeof buf);
    if (len < 0)
        return -EINVAL;
    struct sockaddr_in to = *(const struct sockaddr_in *)&s->dst;
    to.sin_port = 0; /* a raw socket takes no port */
    if (sendto(fd, buf, (size_t)len, 0, (struct sockaddr *)&to, sizeof to) != len)
        return -errno;
    return 0;
}

#else /* built without NTCP_RAW */

bool raw_built(void)
{
    return false;
}

int raw_check(char *why, size_t len)
{
    if (why && len)
        snprintf(why, len, "built without raw-socket support (the NTCP_RAW option)");
    return NTCP_EUNREACHABLE;
}

int raw_capture_open(uint16_t sport, const struct sockaddr_storage *dst)
{
    (void)sport;
    (void)dst;
    return -ENOTSUP;
}

int raw_capture_isn(int fd, uint32_t *isn)
{
    (void)fd;
    (void)isn;
    return -ENOTSUP;
}

int raw_send_open(void)
{
    return -ENOTSUP;
}

int raw_send_tcp(int fd, const raw_segment *s)
{
    (void)fd;
    (void)s;
    return -ENOTSUP;
}

#endif
