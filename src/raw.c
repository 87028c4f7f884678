/*
 * raw.c: builds the TCP segments STUNT#1 and NATBlaster send with a raw
 * socket (IPv4 header, TCP header, checksums). Pure and portable; the I/O is
 * in raw_linux.c.
 */
#include "raw.h"

#include <netinet/in.h>
#include <string.h>

#include "ntcp.h"

uint16_t raw_inet_checksum(const void *data, size_t len, uint32_t sum)
{
    const uint8_t *p = data;
    for (; len > 1; p += 2, len -= 2)
        sum += (uint32_t)(p[0] << 8 | p[1]);
    if (len)
        sum += (uint32_t)(p[0] << 8);
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v)
{
    put16(p, (uint16_t)(v >> 16));
    put16(p + 2, (uint16_t)v);
}

int raw_build_tcp4(const raw_segment *s, uint8_t *buf, size_t cap)
{
    if (!s || !buf || s->src.ss_family != AF_INET || s->dst.ss_family != AF_INET)
        return NTCP_EINVAL;
    size_t tcplen = s->mss ? 24 : 20, len = 20 + tcplen;
    if (cap < len)
        return NTCP_ENOSPC;
    const struct sockaddr_in *sa = (const struct sockaddr_in *)&s->src;
    const struct sockaddr_in *da = (const struct sockaddr_in *)&s->dst;
    memset(buf, 0, len);
    uint8_t *ip = buf, *tcp = buf + 20;
    ip[0] = 0x45;
    put16(ip + 2, (uint16_t)len);
    put16(ip + 6, 0x4000); /* DF, as the kernel's own segments */
    ip[8] = s->ttl ? s->ttl : 64;
    ip[9] = IPPROTO_TCP;
    memcpy(ip + 12, &sa->sin_addr, 4);
    memcpy(ip + 16, &da->sin_addr, 4);
    put16(ip + 10, raw_inet_checksum(ip, 20, 0));

    memcpy(tcp, &sa->sin_port, 2);
    memcpy(tcp + 2, &da->sin_port, 2);
    put32(tcp + 4, s->seq);
    put32(tcp + 8, s->ack);
    tcp[12] = (uint8_t)((tcplen / 4) << 4);
    tcp[13] = s->flags;
    put16(tcp + 14, s->window);
    if (s->mss) {
        tcp[20] = 2; /* MSS, RFC 9293 3.2 */
        tcp[21] = 4;
        put16(tcp + 22, s->mss);
    }
    /* The pseudo-header: source, destination, zero, protocol, TCP length. */
    uint8_t ph[12];
    memcpy(ph, ip + 12, 8);
    ph[8] = 0;
    ph[9] = IPPROTO_TCP;
    put16(ph + 10, (uint16_t)tcplen);
    uint16_t c = raw_inet_checksum(ph, sizeof ph, 0);
    put16(tcp + 16, raw_inet_checksum(tcp, tcplen, (uint16_t)~c));
    return (int)len;
}
