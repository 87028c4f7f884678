/*
 * sock_linux.c: the shared Linux socket idioms of sock_linux.h.
 */
#include "sock_linux.h"

#include <errno.h>
#include <stddef.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h> /* before linux/errqueue.h, which uses struct timespec */
#include <linux/errqueue.h>
#include <linux/tcp.h> /* struct tcp_info with tcpi_min_rtt, which glibc's lacks */
#include <unistd.h>

#include "addr.h"

int ntcp_sock_reuse(int fd, unsigned flags)
{
    int one = 1;
    if ((flags & NTCP_SOCK_REUSEADDR) &&
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
        return -errno;
    if ((flags & NTCP_SOCK_REUSEPORT) &&
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0)
        return -errno;
    return 0;
}

int ntcp_sock_open(int fam, int type, unsigned reuse, const struct sockaddr_storage *bind_to)
{
    int fd = socket(fam, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int rc = ntcp_sock_reuse(fd, reuse);
    if (rc == 0 && bind_to && bind(fd, (const struct sockaddr *)bind_to, ntcp_sa_len(bind_to)) < 0)
        rc = -errno;
    if (rc < 0) {
        close(fd);
        return rc;
    }
    return fd;
}

int ntcp_sock_set_ttl(int fd, int fam, int ttl)
{
    int rc = fam == AF_INET6 ? setsockopt(fd, IPPROTO_IPV6, IPV6_UNICAST_HOPS, &ttl, sizeof ttl)
                             : setsockopt(fd, IPPROTO_IP, IP_TTL, &ttl, sizeof ttl);
    return rc < 0 ? -errno : 0;
}

int ntcp_sock_recverr(int fd, int fam, bool on)
{
    int v = on;
    int rc = fam == AF_INET6 ? setsockopt(fd, IPPROTO_IPV6, IPV6_RECVERR, &v, sizeof v)
                             : setsockopt(fd, IPPROTO_IP, IP_RECVERR, &v, sizeof v);
    return rc < 0 ? -errno : 0;
}

bool ntcp_sock_err_read(int fd, ntcp_sock_err *out)
{
    memset(out, 0, sizeof *out);
    /* The data is the offending packet's start, which nobody here reads;
     * the control buffer holds the extended error and its offender. */
    uint8_t data[64];
    union {
        char buf[512];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = {.iov_base = data, .iov_len = sizeof data};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
                       .msg_controllen = sizeof ctl.buf};
    if (recvmsg(fd, &m, MSG_ERRQUEUE | MSG_DONTWAIT) < 0)
        return false;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
        /* An IPv6 socket hears of its IPv4-mapped traffic at the IPv4 level. */
        if (!((c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_RECVERR) ||
              (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_RECVERR)))
            continue;
        struct sock_extended_err ee;
        if (c->cmsg_len < CMSG_LEN(sizeof ee))
            continue;
        memcpy(&ee, CMSG_DATA(c), sizeof ee);
        out->origin = ee.ee_origin;
        out->icmp = ee.ee_origin == SO_EE_ORIGIN_ICMP || ee.ee_origin == SO_EE_ORIGIN_ICMP6;
        out->type = ee.ee_type;
        out->code = ee.ee_code;
        out->err = (int)ee.ee_errno;
        /* The offender's address follows the structure (SO_EE_OFFENDER);
         * the kernel fills it for ICMP errors only. */
        size_t have = c->cmsg_len - CMSG_LEN(sizeof ee);
        size_t take = have < sizeof out->offender ? have : sizeof out->offender;
        if (out->icmp && take >= sizeof(sa_family_t))
            memcpy(&out->offender, (const uint8_t *)CMSG_DATA(c) + sizeof ee, take);
        if (out->offender.ss_family != AF_INET && out->offender.ss_family != AF_INET6)
            memset(&out->offender, 0, sizeof out->offender);
        return true;
    }
    return true;
}

bool ntcp_sock_tcp_rtt(int fd, uint32_t *srtt_us, uint32_t *min_rtt_us)
{
    struct tcp_info ti;
    memset(&ti, 0, sizeof ti);
    socklen_t len = sizeof ti;
    *srtt_us = *min_rtt_us = 0;
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0 || ti.tcpi_rtt == 0)
        return false;
    *srtt_us = ti.tcpi_rtt;
    /* An older kernel fills less of the struct: its length says so. */
    if (len >= offsetof(struct tcp_info, tcpi_min_rtt) + sizeof ti.tcpi_min_rtt)
        *min_rtt_us = ti.tcpi_min_rtt == ~0u ? 0 : ti.tcpi_min_rtt;
    return true;
}
