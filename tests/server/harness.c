/*
 * harness.c: the ntcp-stuntd test harness (see harness.h): an in-process
 * server on a loop thread and small blocking clients with deadlines.
 */
#include "harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void test_config(ntcp_stuntd_config *cfg, const char *ip1, const char *ip2)
{
    char a[96];
    ntcp_stuntd_config_init(cfg);
    snprintf(a, sizeof(a), strchr(ip1, ':') ? "[%s]:0" : "%s:0", ip1);
    ntcp_stuntd_config_set_addr(cfg, false, a);
    snprintf(a, sizeof(a), strchr(ip2, ':') ? "[%s]:0" : "%s:0", ip2);
    ntcp_stuntd_config_set_addr(cfg, true, a);
    cfg->udp_rate = 0;
    cfg->cb_rate = 0;
    const char *dbg = getenv("NTCP_TEST_DEBUG");
    cfg->log_level = dbg && *dbg == '1' ? NTCP_LOG_DEBUG : NTCP_LOG_WARN;
    cfg->log_prefix = "stuntd-test";
}

static void stop_cb(uv_async_t *a)
{
    harness *h = a->data;
    ntcp_stuntd_stop(h->s);
    uv_close((uv_handle_t *)a, NULL);
}

static void run_loop(void *arg)
{
    harness *h = arg;
    uv_run(&h->loop, UV_RUN_DEFAULT);
}

int harness_start(harness *h, const ntcp_stuntd_config *cfg)
{
    memset(h, 0, sizeof(*h));
    uv_loop_init(&h->loop);
    char err[256];
    int rc = ntcp_stuntd_start(&h->loop, cfg, &h->s, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "harness: %s\n", err);
        uv_loop_close(&h->loop);
        return rc;
    }
    int fi = cfg->primary[NTCP_STUNTD_V4].ss_family ? NTCP_STUNTD_V4 : NTCP_STUNTD_V6;
    struct sockaddr_storage p, a;
    ntcp_stuntd_addrs(h->s, fi, &p, &a);
    h->addr[0][0] = p;
    h->addr[1][1] = a;
    h->addr[0][1] = p;
    h->addr[1][0] = a;
    if (p.ss_family == AF_INET6) {
        ((struct sockaddr_in6 *)&h->addr[0][1])->sin6_port = ((struct sockaddr_in6 *)&a)->sin6_port;
        ((struct sockaddr_in6 *)&h->addr[1][0])->sin6_port = ((struct sockaddr_in6 *)&p)->sin6_port;
    } else {
        ((struct sockaddr_in *)&h->addr[0][1])->sin_port = ((struct sockaddr_in *)&a)->sin_port;
        ((struct sockaddr_in *)&h->addr[1][0])->sin_port = ((struct sockaddr_in *)&p)->sin_port;
    }
    uv_async_init(&h->loop, &h->stop, stop_cb);
    h->stop.data = h;
    uv_thread_create(&h->th, run_loop, h);
    return 0;
}

int harness_stop(harness *h)
{
    uv_async_send(&h->stop);
    uv_thread_join(&h->th);
    /* Close callbacks queued by the stop have run inside uv_run. */
    return uv_loop_close(&h->loop);
}

bool sa_same_ip(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return false;
    if (a->ss_family == AF_INET6)
        return memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
                      &((const struct sockaddr_in6 *)b)->sin6_addr, 16) == 0;
    return ((const struct sockaddr_in *)a)->sin_addr.s_addr ==
           ((const struct sockaddr_in *)b)->sin_addr.s_addr;
}

uint16_t sa_port_of(const struct sockaddr_storage *a)
{
    return a->ss_family == AF_INET6 ? ntohs(((const struct sockaddr_in6 *)a)->sin6_port)
                                    : ntohs(((const struct sockaddr_in *)a)->sin_port);
}

bool sa_equal(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    return sa_same_ip(a, b) && sa_port_of(a) == sa_port_of(b);
}

void sa_make(struct sockaddr_storage *out, const char *ip, uint16_t port)
{
    memset(out, 0, sizeof(*out));
    if (strchr(ip, ':')) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)out;
        s6->sin6_family = AF_INET6;
        inet_pton(AF_INET6, ip, &s6->sin6_addr);
        s6->sin6_port = htons(port);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)out;
        s4->sin_family = AF_INET;
        inet_pton(AF_INET, ip, &s4->sin_addr);
        s4->sin_port = htons(port);
    }
}

static socklen_t salen(const struct sockaddr_storage *a)
{
    return a->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

int udp_socket(const char *ip)
{
    struct sockaddr_storage a;
    sa_make(&a, ip, 0);
    int fd = socket(a.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (bind(fd, (struct sockaddr *)&a, salen(&a)) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int wait_readable(int fd, int timeout_ms)
{
    int64_t deadline = now_ms() + timeout_ms;
    for (;;) {
        int left = (int)(deadline - now_ms());
        if (left < 0)
            left = 0;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, left);
        if (r > 0)
            return 1;
        if (r == 0)
            return 0;
        if (errno != EINTR)
            return 0;
    }
}

int udp_recv(int fd, uint8_t *buf, size_t cap, int timeout_ms, struct sockaddr_storage *from)
{
    if (!wait_readable(fd, timeout_ms))
        return -1;
    struct sockaddr_storage tmp;
    socklen_t fl = sizeof(tmp);
    ssize_t n = recvfrom(fd, buf, cap, 0, (struct sockaddr *)&tmp, &fl);
    if (from)
        *from = tmp;
    return n < 0 ? -1 : (int)n;
}

int udp_send(int fd, const void *buf, size_t len, const struct sockaddr_storage *to)
{
    return sendto(fd, buf, len, 0, (const struct sockaddr *)to, salen(to)) == (ssize_t)len ? 0
                                                                                            : -1;
}

size_t build_request(uint8_t *buf, size_t cap, const req_opts *o, uint8_t tid[STUN_TID_SIZE])
{
    if (o->rfc3489) {
        for (int i = 0; i < STUN_TID_SIZE; i++)
            tid[i] = (uint8_t)(rand() & 0xff);
        tid[0] = 0x5a; /* anything but the cookie */
    } else {
        stun_new_tid(tid);
    }
    stun_builder b;
    stun_build_init(&b, buf, cap, o->method ? o->method : STUN_BINDING, o->cls, tid, o->rfc3489);
    if (o->has_change)
        stun_build_change_request(&b, o->change);
    if (o->response_port) {
        uint8_t v[4] = {(uint8_t)(o->response_port >> 8), (uint8_t)o->response_port, 0, 0};
        stun_build_attr(&b, STUN_ATTR_RESPONSE_PORT, v, 4);
    }
    if (o->timeout_ms)
        stun_build_u32(&b, STUNT_ATTR_TIMEOUT, o->timeout_ms);
    if (o->unknown_attr) {
        uint8_t v[4] = {1, 2, 3, 4};
        stun_build_attr(&b, o->unknown_attr, v, 4);
    }
    if (o->fingerprint)
        stun_build_fingerprint(&b);
    int n = stun_build_finish(&b, NULL);
    return n > 0 ? (size_t)n : 0;
}

int tcp_connect(const struct sockaddr_storage *dst, const struct sockaddr_storage *from, bool reuse)
{
    int fd = socket(dst->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (reuse) {
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    }
    if ((from && bind(fd, (const struct sockaddr *)from, salen(from)) < 0) ||
        connect(fd, (const struct sockaddr *)dst, salen(dst)) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int tcp_listen_reuse(const struct sockaddr_storage *addr)
{
    int fd = socket(addr->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)addr, salen(addr)) < 0 || listen(fd, 8) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int read_exact(int fd, uint8_t *buf, size_t len, int64_t deadline)
{
    size_t got = 0;
    while (got < len) {
        int left = (int)(deadline - now_ms());
        if (left <= 0 || !wait_readable(fd, left))
            return -1;
        ssize_t n = read(fd, buf + got, len - got);
        if (n == 0)
            return 0;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        got += (size_t)n;
    }
    return 1;
}

int tcp_read_msg(int fd, uint8_t *buf, size_t cap, int timeout_ms)
{
    int64_t deadline = now_ms() + timeout_ms;
    if (cap < STUN_HEADER_SIZE)
        return -1;
    int r = read_exact(fd, buf, STUN_HEADER_SIZE, deadline);
    if (r <= 0)
        return r;
    size_t body = ((size_t)buf[2] << 8) | buf[3];
    if (STUN_HEADER_SIZE + body > cap)
        return -1;
    r = read_exact(fd, buf + STUN_HEADER_SIZE, body, deadline);
    if (r <= 0)
        return r;
    return (int)(STUN_HEADER_SIZE + body);
}

int write_all(int fd, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}
