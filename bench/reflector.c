/*
 * reflector.c: the physical limit for the STUN benchmark. It does only what any
 * STUN server must do with a Binding request (turn it in place into a success
 * response with one XOR-MAPPED-ADDRESS of the source), batched, so that
 * ntcp-stuntd and coturn can be measured against what the kernel allows.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BATCH 64         /* datagrams per recvmmsg/sendmmsg */
#define DGRAM_MAX 2048   /* larger than any Binding request we answer */
#define CONN_IN 65536    /* per TCP connection: requests read at once */
#define CONN_OUT 131072  /* responses (44 bytes) can be longer than requests (20) */
#define MAX_EVENTS 64

static const uint32_t cookie = 0x2112A442u;

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static uint16_t get16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

/*
 * Turns the Binding request in buf (len bytes, already checked to be whole)
 * into the minimal success response, in place; buf must have room for 44
 * bytes. Returns the response length, or 0 when the message is not a Binding
 * request (dropped: a reflector answers nothing else).
 * Per RFC 8489 the response keeps the transaction id; an RFC 3489 request (no
 * magic cookie) gets MAPPED-ADDRESS, since XOR needs the cookie.
 */
static size_t reflect(uint8_t *buf, size_t len, const struct sockaddr_storage *src)
{
    if (len < 20 || (buf[0] & 0xC0) != 0 || get16(buf) != 0x0001)
        return 0;
    if ((size_t)get16(buf + 2) + 20 != len)
        return 0;
    bool xor = memcmp(buf + 4, &(uint32_t){htonl(cookie)}, 4) == 0;
    uint8_t *a = buf + 20;
    size_t vlen;
    if (src->ss_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)src;
        uint16_t port = ntohs(s4->sin_port);
        uint32_t ip = ntohl(s4->sin_addr.s_addr);
        vlen = 8;
        a[4] = 0;
        a[5] = 1;
        if (xor) {
            port ^= (uint16_t)(cookie >> 16);
            ip ^= cookie;
        }
        put16(a + 6, port);
        a[8] = (uint8_t)(ip >> 24);
        a[9] = (uint8_t)(ip >> 16);
        a[10] = (uint8_t)(ip >> 8);
        a[11] = (uint8_t)ip;
    } else if (src->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)src;
        uint16_t port = ntohs(s6->sin6_port);
        vlen = 20;
        a[4] = 0;
        a[5] = 2;
        if (xor)
            port ^= (uint16_t)(cookie >> 16);
        put16(a + 6, port);
        memcpy(a + 8, &s6->sin6_addr, 16);
        if (xor)
            for (int i = 0; i < 16; i++)
                a[8 + i] ^= buf[4 + i]; /* cookie then transaction id */
    } else {
        return 0;
    }
    put16(buf, 0x0101); /* Binding, success class */
    put16(buf + 2, (uint16_t)(4 + vlen));
    put16(a, xor ? 0x0020 : 0x0001);
    put16(a + 2, (uint16_t)vlen);
    return 20 + 4 + vlen;
}

static int parse_addr(const char *s, struct sockaddr_storage *ss, socklen_t *sl)
{
    char host[128];
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= sizeof host)
        return -1;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = 0;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 0 || port > 65535)
        return -1;
    memset(ss, 0, sizeof *ss);
    char *h = host;
    if (h[0] == '[' && h[strlen(h) - 1] == ']') {
        h[strlen(h) - 1] = 0;
        h++;
    }
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, h, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        *sl = sizeof *s4;
    } else if (inet_pton(AF_INET6, h, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        *sl = sizeof *s6;
    } else {
        return -1;
    }
    return 0;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

/* ---- UDP ---- */

static uint8_t ubuf[BATCH][DGRAM_MAX];
static struct sockaddr_storage uaddr[BATCH];
static struct iovec uiov[BATCH];
static struct mmsghdr umsg[BATCH];
static struct mmsghdr uout[BATCH];

static void udp_ready(int fd)
{
    /* Drain everything queued, one recvmmsg/sendmmsg pair per batch. */
    for (int rounds = 0; rounds < 64; rounds++) {
        for (int i = 0; i < BATCH; i++) {
            uiov[i].iov_base = ubuf[i];
            uiov[i].iov_len = DGRAM_MAX;
            umsg[i].msg_hdr = (struct msghdr){.msg_name = &uaddr[i],
                                              .msg_namelen = sizeof uaddr[i],
                                              .msg_iov = &uiov[i],
                                              .msg_iovlen = 1};
        }
        int n = recvmmsg(fd, umsg, BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0)
            return;
        int m = 0;
        for (int i = 0; i < n; i++) {
            size_t r = reflect(ubuf[i], umsg[i].msg_len, &uaddr[i]);
            if (!r)
                continue;
            uiov[i].iov_len = r;
            uout[m].msg_hdr = umsg[i].msg_hdr;
            uout[m].msg_hdr.msg_iov = &uiov[i];
            m++;
        }
        for (int done = 0; done < m;) {
            int s = sendmmsg(fd, uout + done, (unsigned)(m - done), 0);
            if (s < 0) {
                if (errno == EINTR)
                    continue;
                break; /* a full socket buffer or an ICMP error: drop the rest */
            }
            done += s;
        }
        if (n < BATCH)
            return;
    }
}

/* ---- TCP ---- */

typedef struct conn {
    int fd;
    bool want_out; /* registered for EPOLLOUT (responses held back) */
    struct sockaddr_storage peer;
    size_t inlen;
    size_t outoff, outlen;
    uint8_t in[CONN_IN];
    uint8_t out[CONN_OUT];
} conn;

static void conn_close(int ep, conn *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c);
}

/* Waits for writability (out) or readability; epoll_ctl only on a change,
 * since one per write would cost as much as the write. */
static void conn_want(int ep, conn *c, bool out)
{
    if (c->want_out == out)
        return;
    c->want_out = out;
    struct epoll_event ev = {.events = out ? EPOLLOUT : EPOLLIN, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Writes what is pending; returns false when the connection died. */
static bool conn_flush(int ep, conn *c)
{
    while (c->outoff < c->outlen) {
        ssize_t w = write(c->fd, c->out + c->outoff, c->outlen - c->outoff);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                conn_want(ep, c, true);
                return true;
            }
            return false;
        }
        c->outoff += (size_t)w;
    }
    c->outoff = c->outlen = 0;
    conn_want(ep, c, false);
    return true;
}

static void conn_ready(int ep, conn *c, uint32_t events)
{
    if (c->outlen) {
        /* Back-pressure: read nothing more until the last responses left. */
        if (!conn_flush(ep, c))
            conn_close(ep, c);
        return;
    }
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
        return;
    ssize_t r = read(c->fd, c->in + c->inlen, sizeof c->in - c->inlen);
    if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
        conn_close(ep, c);
        return;
    }
    if (r < 0)
        return;
    c->inlen += (size_t)r;
    size_t off = 0;
    while (c->inlen - off >= 20) {
        uint8_t *msg = c->in + off;
        if (msg[0] & 0xC0) { /* not STUN: nothing sensible to do but hang up */
            conn_close(ep, c);
            return;
        }
        size_t mlen = 20 + (size_t)get16(msg + 2);
        if (mlen > sizeof c->in) {
            conn_close(ep, c);
            return;
        }
        if (c->inlen - off < mlen)
            break;
        if (c->outlen + 44 > sizeof c->out)
            break; /* the rest waits for the next round */
        /* Build from a copy of the header alone: the response may be longer
         * than the request and must not overwrite the next pipelined one,
         * and a Binding response does not depend on the request's
         * attributes. */
        uint8_t tmp[44];
        memcpy(tmp, msg, 20);
        put16(tmp + 2, 0);
        size_t rl = reflect(tmp, 20, &c->peer);
        if (rl) {
            memcpy(c->out + c->outlen, tmp, rl);
            c->outlen += rl;
        }
        off += mlen;
    }
    memmove(c->in, c->in + off, c->inlen - off);
    c->inlen -= off;
    if (c->outlen && !conn_flush(ep, c))
        conn_close(ep, c);
}

static void tcp_accept(int ep, int lfd)
{
    for (int i = 0; i < 64; i++) {
        conn *c = calloc(1, sizeof *c);
        if (!c)
            return;
        socklen_t sl = sizeof c->peer;
        c->fd = accept4(lfd, (struct sockaddr *)&c->peer, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (c->fd < 0) {
            free(c);
            return;
        }
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
            close(c->fd);
            free(c);
        }
    }
}

static void usage(FILE *f)
{
    fprintf(f, "usage: reflector [--listen IP:PORT] [--cpu N] [--no-udp] [--no-tcp]\n"
               "  Minimal STUN Binding reflector (benchmark baseline), UDP and TCP on the\n"
               "  same port. Default 127.0.0.1:3478. Port 0 picks a free port; the\n"
               "  chosen address is printed as 'listening IP:PORT' on stdout.\n");
}

int main(int argc, char **argv)
{
    const char *listen_s = "127.0.0.1:3478";
    int cpu = -1;
    bool udp = true, tcp = true;
    static const struct option opts[] = {
        {"listen", required_argument, 0, 'l'}, {"cpu", required_argument, 0, 'c'},
        {"no-udp", no_argument, 0, 'U'},      {"no-tcp", no_argument, 0, 'T'},
        {"help", no_argument, 0, 'h'},        {0, 0, 0, 0},
    };
    int o;
    while ((o = getopt_long(argc, argv, "l:c:h", opts, NULL)) != -1) {
        switch (o) {
        case 'l': listen_s = optarg; break;
        case 'c': cpu = atoi(optarg); break;
        case 'U': udp = false; break;
        case 'T': tcp = false; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        if (sched_setaffinity(0, sizeof set, &set) < 0)
            die("sched_setaffinity");
    }
    signal(SIGPIPE, SIG_IGN);
    struct sockaddr_storage ss;
    socklen_t sl;
    if (parse_addr(listen_s, &ss, &sl) < 0) {
        fprintf(stderr, "reflector: bad address %s\n", listen_s);
        return 2;
    }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1");
    int ufd = -1, lfd = -1;
    int one = 1;
    if (udp) {
        ufd = socket(ss.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (ufd < 0)
            die("socket");
        /* A deep queue so bursts from a large window are not dropped. */
        int sz = 4 << 20;
        setsockopt(ufd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
        setsockopt(ufd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
        if (bind(ufd, (struct sockaddr *)&ss, sl) < 0)
            die("bind udp");
        /* With port 0, TCP takes the port UDP got. */
        socklen_t bl = sizeof ss;
        getsockname(ufd, (struct sockaddr *)&ss, &bl);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
        epoll_ctl(ep, EPOLL_CTL_ADD, ufd, &ev);
    }
    if (tcp) {
        lfd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (lfd < 0)
            die("socket");
        setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(lfd, (struct sockaddr *)&ss, sl) < 0)
            die("bind tcp");
        if (listen(lfd, 512) < 0)
            die("listen");
        socklen_t bl = sizeof ss;
        getsockname(lfd, (struct sockaddr *)&ss, &bl);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &lfd};
        epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    }
    char host[INET6_ADDRSTRLEN];
    uint16_t port;
    if (ss.ss_family == AF_INET) {
        inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, host, sizeof host);
        port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        printf("listening %s:%u\n", host, port);
    } else {
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, host, sizeof host);
        port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
        printf("listening [%s]:%u\n", host, port);
    }
    fflush(stdout);

    struct epoll_event evs[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(ep, evs, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            void *p = evs[i].data.ptr;
            if (p == NULL)
                udp_ready(ufd);
            else if (p == &lfd)
                tcp_accept(ep, lfd);
            else
                conn_ready(ep, p, evs[i].events);
        }
    }
}
