/*
 * stun-load.c: a STUN Binding load generator for the server benchmark. Keeps a
 * window of requests outstanding on each of several UDP sockets or TCP
 * connections, validates every response with libntcp's codec, and prints
 * requests/s, p50/p99 latency and the errors it saw.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
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
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "stun.h"

#define BATCH 64          /* datagrams per recvmmsg/sendmmsg */
#define DGRAM_MAX 2048
#define TCP_RBUF 65536
#define REQ_LEN 20        /* a Binding request with no attributes */
#define MAX_RECONNECTS 1000

/* ---- options ---- */

static struct {
    bool tcp;
    const char *server;
    const char *bind_ip;
    int sockets;
    int window;
    double duration, warmup;
    int cpu;
    bool json;
    bool check;
    bool probe;
    int timeout_ms; /* UDP: a request unanswered this long is lost and replaced */
    int server_pid; /* to report the server's CPU use over the measurement */
    const char *label;
} opt = {
    .server = "127.0.0.1:3478",
    .sockets = 4,
    .window = 16,
    .duration = 10,
    .warmup = 2,
    .cpu = -1,
    .timeout_ms = 500,
};

/* ---- time and latency histogram ---- */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Log-linear buckets over nanoseconds: 64 per power of two, so any
 * percentile is within about 1.6% of the true value, in a fixed 30 KB table
 * that recording never has to grow or sort. */
#define SUB_BITS 6
#define SUB (1u << SUB_BITS)
#define NBUCKETS (64 * SUB)
static uint64_t hist[NBUCKETS];
static uint64_t hist_n, lat_max;

static unsigned bucket_of(uint64_t v)
{
    if (v < SUB)
        return (unsigned)v;
    unsigned e = 63u - (unsigned)__builtin_clzll(v); /* e >= SUB_BITS */
    return (e - SUB_BITS + 1) * SUB + (unsigned)((v >> (e - SUB_BITS)) & (SUB - 1));
}

static uint64_t bucket_low(unsigned b)
{
    if (b < SUB)
        return b;
    unsigned e = b / SUB + SUB_BITS - 1;
    return ((uint64_t)1 << e) | ((uint64_t)(b % SUB) << (e - SUB_BITS));
}

static void hist_add(uint64_t v)
{
    hist[bucket_of(v)]++;
    hist_n++;
    if (v > lat_max)
        lat_max = v;
}

static double hist_pct(double p)
{
    if (!hist_n)
        return 0;
    uint64_t rank = (uint64_t)ceil(p * (double)hist_n);
    if (rank < 1)
        rank = 1;
    uint64_t acc = 0;
    for (unsigned b = 0; b < NBUCKETS; b++) {
        acc += hist[b];
        if (acc >= rank) /* the middle of the bucket */
            return (double)(bucket_low(b) + bucket_low(b + 1)) / 2.0;
    }
    return (double)lat_max;
}

/* ---- counters ---- */

static struct {
    uint64_t sent, valid, late, lost, closed, senderr;
    uint64_t bad_parse, bad_tid, bad_class, bad_addr;
} cnt;

static uint64_t invalid_total(void)
{
    return cnt.bad_parse + cnt.bad_tid + cnt.bad_class + cnt.bad_addr;
}

/* ---- sockets ---- */

/*
 * Transaction id layout (after the cookie): run(4) socket(2) slot(2) gen(4).
 * The socket and slot say at once which outstanding request a response
 * answers; gen tells a late answer to a replaced request from a forged one;
 * run, random per process, keeps two runs against one server apart.
 */
typedef struct slot {
    uint64_t sent_ns;
    uint32_t gen;
    bool out;
} slot;

typedef struct lsock {
    int fd;
    uint16_t idx;
    struct sockaddr_storage local; /* what XOR-MAPPED-ADDRESS must say */
    slot *slots;
    uint16_t *freeq; /* slots waiting to be (re)sent */
    int nfree;
    int outstanding;
    /* TCP */
    stun_framer fr;
    uint8_t *rbuf;
    uint8_t *wbuf;
    size_t woff, wlen;
    bool want_out;
} lsock;

static lsock *socks;
static int ep;
static uint32_t run_id;
static struct sockaddr_storage server_addr;
static socklen_t server_len;
static uint64_t t_measure, t_end;

static int parse_addr(const char *s, struct sockaddr_storage *ss, socklen_t *sl, bool need_port)
{
    char host[128];
    const char *colon = strrchr(s, ':');
    long port = 0;
    if (need_port || (colon && s[0] != '[' && strchr(s, ':') == colon)) {
        if (!colon || (size_t)(colon - s) >= sizeof host)
            return -1;
        char *end;
        port = strtol(colon + 1, &end, 10);
        if (*end || port < 0 || port > 65535)
            return -1;
    } else {
        colon = s + strlen(s);
        if ((size_t)(colon - s) >= sizeof host)
            return -1;
    }
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = 0;
    char *h = host;
    size_t hl = strlen(h);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
        h[hl - 1] = 0;
        h++;
    }
    memset(ss, 0, sizeof *ss);
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

static bool same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return false;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
    return x->sin6_port == y->sin6_port &&
           memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
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

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Writes the request for slot s of socket k into out (REQ_LEN bytes), with
 * the codec, so that the generator sends what a real client would. */
static void build_request(lsock *k, uint16_t s, uint8_t *out)
{
    uint8_t tid[STUN_TID_SIZE];
    put32(tid, STUN_MAGIC_COOKIE);
    put32(tid + 4, run_id);
    put16(tid + 8, k->idx);
    put16(tid + 10, s);
    put32(tid + 12, k->slots[s].gen);
    stun_builder b;
    stun_build_init(&b, out, REQ_LEN, STUN_BINDING, STUN_REQUEST, tid, false);
    int r = stun_build_finish(&b, NULL);
    if (r != REQ_LEN) {
        fprintf(stderr, "stun-load: building a request failed (%d)\n", r);
        exit(1);
    }
}

/* Checks one response received on socket k at time t; frees its slot when it
 * answers an outstanding request. Returns true when it was valid. */
static bool handle_response(lsock *k, const uint8_t *buf, size_t len, uint64_t t)
{
    bool count = t >= t_measure && t < t_end;
    stun_msg m;
    if (stun_parse(&m, buf, len) != 0) {
        if (count)
            cnt.bad_parse++;
        return false;
    }
    if (get32(m.tid) != STUN_MAGIC_COOKIE || get32(m.tid + 4) != run_id ||
        (uint16_t)(m.tid[8] << 8 | m.tid[9]) != k->idx) {
        if (count)
            cnt.bad_tid++;
        return false;
    }
    uint16_t s = (uint16_t)(m.tid[10] << 8 | m.tid[11]);
    uint32_t gen = get32(m.tid + 12);
    if (s >= opt.window) {
        if (count)
            cnt.bad_tid++;
        return false;
    }
    slot *sl = &k->slots[s];
    if (!sl->out || gen != sl->gen) {
        /* Over UDP, an answer to a request already given up as lost; over
         * TCP there is no such thing. */
        if (count) {
            if (!opt.tcp && (int32_t)(sl->gen - gen) > 0)
                cnt.late++;
            else
                cnt.bad_tid++;
        }
        return false;
    }
    /* The request is answered, right or wrong: free its slot so a wrong
     * answer does not stall the window. */
    sl->out = false;
    sl->gen++;
    k->outstanding--;
    k->freeq[k->nfree++] = s;
    if (m.cls != STUN_SUCCESS || m.method != STUN_BINDING) {
        if (count)
            cnt.bad_class++;
        return false;
    }
    struct sockaddr_storage mapped;
    if (stun_get_addr(&m, STUN_ATTR_XOR_MAPPED_ADDRESS, &mapped) != 0 ||
        !same_addr(&mapped, &k->local)) {
        if (count)
            cnt.bad_addr++;
        return false;
    }
    if (count) {
        cnt.valid++;
        hist_add(t - sl->sent_ns);
    }
    return true;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void set_cpu(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) < 0)
        die("sched_setaffinity");
}

/* Opens (or reopens) socket k: connected, non-blocking, its local address
 * noted as the one the server must report. Returns false on failure. */
static bool sock_open(lsock *k)
{
    k->fd = socket(server_addr.ss_family,
                   (opt.tcp ? SOCK_STREAM : SOCK_DGRAM) | SOCK_CLOEXEC, 0);
    if (k->fd < 0)
        die("socket");
    if (opt.bind_ip) {
        struct sockaddr_storage b;
        socklen_t bl;
        if (parse_addr(opt.bind_ip, &b, &bl, false) < 0) {
            fprintf(stderr, "stun-load: bad --bind %s\n", opt.bind_ip);
            exit(2);
        }
        if (bind(k->fd, (struct sockaddr *)&b, bl) < 0)
            die("bind");
    }
    if (!opt.tcp) {
        /* Room for a whole window and more, so a burst is not dropped here. */
        int sz = 1 << 20;
        setsockopt(k->fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
        setsockopt(k->fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
    }
    if (connect(k->fd, (struct sockaddr *)&server_addr, server_len) < 0) {
        if (!opt.probe)
            perror("stun-load: connect");
        close(k->fd);
        k->fd = -1;
        return false;
    }
    int one = 1;
    if (opt.tcp)
        setsockopt(k->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (fcntl(k->fd, F_SETFL, fcntl(k->fd, F_GETFL) | O_NONBLOCK) < 0)
        die("fcntl");
    socklen_t ll = sizeof k->local;
    getsockname(k->fd, (struct sockaddr *)&k->local, &ll);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = k};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, k->fd, &ev) < 0)
        die("epoll_ctl");
    k->want_out = false;
    k->woff = k->wlen = 0;
    if (opt.tcp)
        stun_framer_init(&k->fr, k->rbuf, TCP_RBUF);
    return true;
}

/* ---- UDP ---- */

static void arm(lsock *k, bool out)
{
    if (k->want_out == out)
        return;
    k->want_out = out;
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = k};
    epoll_ctl(ep, EPOLL_CTL_MOD, k->fd, &ev);
}

/* Marks the slots about to leave as outstanding, sent at t. */
static void mark_sent(lsock *k, uint16_t s, uint64_t t)
{
    k->slots[s].out = true;
    k->slots[s].sent_ns = t;
    k->outstanding++;
    if (t >= t_measure && t < t_end)
        cnt.sent++;
}

static void udp_send(lsock *k)
{
    static uint8_t bufs[BATCH][REQ_LEN];
    static struct iovec iov[BATCH];
    static struct mmsghdr mm[BATCH];
    while (k->nfree > 0) {
        uint64_t t = now_ns();
        if (t >= t_end)
            return; /* no new requests once the run is over */
        int n = k->nfree < BATCH ? k->nfree : BATCH;
        for (int i = 0; i < n; i++) {
            build_request(k, k->freeq[k->nfree - 1 - i], bufs[i]);
            iov[i] = (struct iovec){.iov_base = bufs[i], .iov_len = REQ_LEN};
            mm[i] = (struct mmsghdr){.msg_hdr = {.msg_iov = &iov[i], .msg_iovlen = 1}};
        }
        int r = sendmmsg(k->fd, mm, (unsigned)n, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == ENOBUFS) {
                arm(k, true);
                return;
            }
            /* An ICMP error (ECONNREFUSED) for an earlier datagram: these
             * requests go out as if sent and time out if unanswered, so a
             * dead server costs timeouts, not a busy loop. */
            if (t >= t_measure && t < t_end)
                cnt.senderr++;
            r = n;
            for (int i = 0; i < r; i++)
                mark_sent(k, k->freeq[k->nfree - 1 - i], t);
            k->nfree -= r;
            return;
        }
        for (int i = 0; i < r; i++)
            mark_sent(k, k->freeq[k->nfree - 1 - i], t);
        k->nfree -= r;
        if (r < n) {
            arm(k, true);
            return;
        }
    }
    arm(k, false);
}

static bool got_valid;

static void udp_recv(lsock *k)
{
    static uint8_t rb[BATCH][DGRAM_MAX];
    static struct iovec iov[BATCH];
    static struct mmsghdr mm[BATCH];
    for (int rounds = 0; rounds < 16; rounds++) {
        for (int i = 0; i < BATCH; i++) {
            iov[i] = (struct iovec){.iov_base = rb[i], .iov_len = DGRAM_MAX};
            mm[i] = (struct mmsghdr){.msg_hdr = {.msg_iov = &iov[i], .msg_iovlen = 1}};
        }
        int n = recvmmsg(k->fd, mm, BATCH, MSG_DONTWAIT, NULL);
        if (n < 0) {
            if (errno == ECONNREFUSED) /* the server is not (yet) there */
                continue;
            break;
        }
        uint64_t t = now_ns();
        for (int i = 0; i < n; i++) {
            if (mm[i].msg_hdr.msg_flags & MSG_TRUNC) {
                if (t >= t_measure && t < t_end)
                    cnt.bad_parse++;
                continue;
            }
            if (handle_response(k, rb[i], mm[i].msg_len, t))
                got_valid = true;
        }
        if (n < BATCH)
            break;
    }
    udp_send(k);
}

/* Requests unanswered for opt.timeout_ms are counted lost and replaced by new
 * ones (a new transaction id), so that the window never stalls. */
static void udp_expire(lsock *k, uint64_t t)
{
    uint64_t limit = (uint64_t)opt.timeout_ms * 1000000u;
    for (int s = 0; s < opt.window; s++) {
        slot *sl = &k->slots[s];
        if (!sl->out || t - sl->sent_ns < limit)
            continue;
        if (t >= t_measure && t < t_end)
            cnt.lost++;
        sl->out = false;
        sl->gen++;
        k->outstanding--;
        k->freeq[k->nfree++] = (uint16_t)s;
    }
    udp_send(k);
}

/* ---- TCP ---- */

static int reconnects;

static void tcp_send(lsock *k)
{
    uint64_t t = now_ns();
    if (k->fd < 0)
        return;
    if (k->woff) {
        memmove(k->wbuf, k->wbuf + k->woff, k->wlen - k->woff);
        k->wlen -= k->woff;
        k->woff = 0;
    }
    /* All freed slots go out together: one write for the whole batch. */
    while (k->nfree > 0 && t < t_end) {
        uint16_t s = k->freeq[--k->nfree];
        build_request(k, s, k->wbuf + k->wlen);
        k->wlen += REQ_LEN;
        mark_sent(k, s, t);
    }
    while (k->woff < k->wlen) {
        ssize_t w = write(k->fd, k->wbuf + k->woff, k->wlen - k->woff);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                arm(k, true);
                return;
            }
            return; /* the read side will see the connection die */
        }
        k->woff += (size_t)w;
    }
    k->woff = k->wlen = 0;
    arm(k, false);
}

/* The server closed or broke the connection: what was outstanding is lost;
 * open a new one so that the load stays the same. */
static void tcp_reset(lsock *k)
{
    uint64_t t = now_ns();
    bool count = t >= t_measure && t < t_end;
    if (count)
        cnt.closed++;
    epoll_ctl(ep, EPOLL_CTL_DEL, k->fd, NULL);
    close(k->fd);
    k->fd = -1;
    k->nfree = 0;
    for (int s = 0; s < opt.window; s++) {
        if (k->slots[s].out && count)
            cnt.lost++;
        k->slots[s].out = false;
        k->slots[s].gen++;
        k->freeq[k->nfree++] = (uint16_t)s;
    }
    k->outstanding = 0;
    if (opt.probe || t >= t_end || ++reconnects > MAX_RECONNECTS)
        return;
    if (sock_open(k))
        tcp_send(k);
}

static void tcp_recv(lsock *k)
{
    for (int rounds = 0; rounds < 8; rounds++) {
        uint8_t *p;
        size_t avail;
        stun_framer_space(&k->fr, &p, &avail);
        if (avail == 0) {
            tcp_reset(k);
            return;
        }
        ssize_t r = read(k->fd, p, avail);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
            tcp_reset(k);
            return;
        }
        if (r < 0)
            break;
        stun_framer_commit(&k->fr, (size_t)r);
        uint64_t t = now_ns();
        const uint8_t *msg;
        size_t len;
        int rc;
        while ((rc = stun_framer_next(&k->fr, &msg, &len)) == 1)
            if (handle_response(k, msg, len, t))
                got_valid = true;
        if (rc < 0) {
            if (t >= t_measure && t < t_end)
                cnt.bad_parse++;
            tcp_reset(k);
            return;
        }
        if ((size_t)r < avail)
            break;
    }
    tcp_send(k);
}

/* ---- CPU accounting ---- */

static double self_cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

/* The server's user+system seconds from /proc, or -1: it tells whether the
 * server was the bottleneck (near 100% of its core) or the generator was. */
static double server_cpu(void)
{
    if (opt.server_pid <= 0)
        return -1;
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", opt.server_pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p)
        return -1;
    unsigned long ut = 0, st = 0;
    /* Fields after the command: state(3) ... utime(14) stime(15). */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* ---- main ---- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: stun-load [--udp|--tcp] [--server IP:PORT] [--sockets N] [--window N]\n"
            "                 [--duration S] [--warmup S] [--cpu N] [--json] [--check]\n"
            "                 [--timeout MS] [--bind IP] [--server-pid PID] [--label TEXT]\n"
            "                 [--probe]\n"
            "  Keeps N x window STUN Binding requests outstanding and validates every\n"
            "  response. Defaults: --udp --server 127.0.0.1:3478 --sockets 4 --window 16\n"
            "  --duration 10 --warmup 2 --timeout 500.\n"
            "  --check     exit 3 when any response was invalid or none was valid\n"
            "  --probe     exit 0 at the first valid response (waits up to --duration)\n"
            "  --server-pid also report that process's CPU use during the measurement\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"udp", no_argument, 0, 'u'},         {"tcp", no_argument, 0, 't'},
        {"server", required_argument, 0, 's'}, {"sockets", required_argument, 0, 'n'},
        {"window", required_argument, 0, 'w'}, {"duration", required_argument, 0, 'd'},
        {"warmup", required_argument, 0, 'W'}, {"cpu", required_argument, 0, 'c'},
        {"json", no_argument, 0, 'j'},         {"check", no_argument, 0, 'C'},
        {"probe", no_argument, 0, 'p'},        {"timeout", required_argument, 0, 'T'},
        {"bind", required_argument, 0, 'b'},   {"server-pid", required_argument, 0, 'P'},
        {"label", required_argument, 0, 'L'},  {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    int o;
    while ((o = getopt_long(argc, argv, "uts:n:w:d:W:c:jh", opts, NULL)) != -1) {
        switch (o) {
        case 'u': opt.tcp = false; break;
        case 't': opt.tcp = true; break;
        case 's': opt.server = optarg; break;
        case 'n': opt.sockets = atoi(optarg); break;
        case 'w': opt.window = atoi(optarg); break;
        case 'd': opt.duration = atof(optarg); break;
        case 'W': opt.warmup = atof(optarg); break;
        case 'c': opt.cpu = atoi(optarg); break;
        case 'j': opt.json = true; break;
        case 'C': opt.check = true; break;
        case 'p': opt.probe = true; break;
        case 'T': opt.timeout_ms = atoi(optarg); break;
        case 'b': opt.bind_ip = optarg; break;
        case 'P': opt.server_pid = atoi(optarg); break;
        case 'L': opt.label = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (opt.probe) {
        opt.sockets = 1;
        opt.window = 1;
        opt.warmup = 0;
        if (opt.timeout_ms > 100)
            opt.timeout_ms = 100;
    }
    if (opt.sockets < 1 || opt.sockets > 4096 || opt.window < 1 || opt.window > 65535 ||
        opt.duration <= 0 || opt.warmup < 0 || opt.timeout_ms < 1) {
        fprintf(stderr, "stun-load: bad option value\n");
        return 2;
    }
    if (parse_addr(opt.server, &server_addr, &server_len, true) < 0) {
        fprintf(stderr, "stun-load: bad --server %s (want IP:PORT)\n", opt.server);
        return 2;
    }
    if (opt.cpu >= 0)
        set_cpu(opt.cpu);
    signal(SIGPIPE, SIG_IGN);
    run_id = (uint32_t)now_ns() ^ ((uint32_t)getpid() << 16);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1");

    socks = calloc((size_t)opt.sockets, sizeof *socks);
    if (!socks)
        die("calloc");
    for (int i = 0; i < opt.sockets; i++) {
        lsock *k = &socks[i];
        k->idx = (uint16_t)i;
        k->slots = calloc((size_t)opt.window, sizeof *k->slots);
        k->freeq = calloc((size_t)opt.window, sizeof *k->freeq);
        if (opt.tcp) {
            k->rbuf = malloc(TCP_RBUF);
            k->wbuf = malloc((size_t)opt.window * REQ_LEN);
        }
        if (!k->slots || !k->freeq || (opt.tcp && (!k->rbuf || !k->wbuf)))
            die("calloc");
        for (int s = 0; s < opt.window; s++)
            k->freeq[k->nfree++] = (uint16_t)(opt.window - 1 - s);
        if (!sock_open(k))
            return 1;
    }

    uint64_t t0 = now_ns();
    t_measure = t0 + (uint64_t)(opt.warmup * 1e9);
    t_end = t_measure + (uint64_t)(opt.duration * 1e9);
    for (int i = 0; i < opt.sockets; i++)
        opt.tcp ? tcp_send(&socks[i]) : udp_send(&socks[i]);

    double cpu0 = -1, scpu0 = -1, cpu1 = -1, scpu1 = -1;
    bool snapped = false;
    uint64_t last_scan = t0, t = t0;
    struct epoll_event evs[64];
    while (t < t_end) {
        if (!snapped && t >= t_measure) {
            snapped = true;
            cpu0 = self_cpu();
            scpu0 = server_cpu();
        }
        uint64_t next = snapped ? t_end : t_measure;
        int ms = (int)((next - t) / 1000000u) + 1;
        if (ms > 20)
            ms = 20;
        int n = epoll_wait(ep, evs, 64, ms);
        if (n < 0 && errno != EINTR)
            die("epoll_wait");
        for (int i = 0; i < n; i++) {
            lsock *k = evs[i].data.ptr;
            if (k->fd < 0)
                continue;
            if (opt.tcp) {
                if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
                    tcp_recv(k);
                else if (evs[i].events & EPOLLOUT)
                    tcp_send(k);
            } else {
                if (evs[i].events & (EPOLLIN | EPOLLERR))
                    udp_recv(k);
                else if (evs[i].events & EPOLLOUT)
                    udp_send(k);
            }
        }
        t = now_ns();
        if (opt.probe && got_valid)
            return 0;
        if (!opt.tcp && t - last_scan > 20000000u) {
            last_scan = t;
            for (int i = 0; i < opt.sockets; i++)
                udp_expire(&socks[i], t);
        }
    }
    if (opt.probe)
        return 1;
    cpu1 = self_cpu();
    scpu1 = server_cpu();
    double secs = opt.duration;
    double rps = (double)cnt.valid / secs;
    double p50 = hist_pct(0.50) / 1000.0, p99 = hist_pct(0.99) / 1000.0;
    double gen_cpu = snapped ? (cpu1 - cpu0) / secs * 100 : -1;
    double srv_cpu = (scpu0 >= 0 && scpu1 >= 0) ? (scpu1 - scpu0) / secs * 100 : -1;
    const char *tr = opt.tcp ? "tcp" : "udp";
    if (opt.json) {
        printf("{\"label\":\"%s\",\"transport\":\"%s\",\"server\":\"%s\",\"sockets\":%d,"
               "\"window\":%d,\"duration\":%.3f,\"warmup\":%.3f,\"rps\":%.0f,"
               "\"p50_us\":%.1f,\"p99_us\":%.1f,\"max_us\":%.1f,\"sent\":%" PRIu64
               ",\"valid\":%" PRIu64 ",\"invalid\":%" PRIu64 ",\"bad_parse\":%" PRIu64
               ",\"bad_tid\":%" PRIu64 ",\"bad_class\":%" PRIu64 ",\"bad_addr\":%" PRIu64
               ",\"late\":%" PRIu64 ",\"lost\":%" PRIu64 ",\"closed\":%" PRIu64
               ",\"send_errors\":%" PRIu64 ",\"gen_cpu_pct\":%.1f,\"server_cpu_pct\":%.1f}\n",
               opt.label ? opt.label : "", tr, opt.server, opt.sockets, opt.window, opt.duration,
               opt.warmup, rps, p50, p99, (double)lat_max / 1000.0, cnt.sent, cnt.valid,
               invalid_total(), cnt.bad_parse, cnt.bad_tid, cnt.bad_class, cnt.bad_addr,
               cnt.late, cnt.lost, cnt.closed, cnt.senderr, gen_cpu, srv_cpu);
    } else {
        printf("stun-load: %s%s%s %s, %d %s x window %d, %.1f s after %.1f s warm-up\n",
               opt.label ? opt.label : "", opt.label ? " " : "", tr, opt.server, opt.sockets,
               opt.tcp ? "connections" : "sockets", opt.window, opt.duration, opt.warmup);
        printf("  requests/s  %.0f\n", rps);
        printf("  latency     p50 %.1f us, p99 %.1f us, max %.1f us\n", p50, p99,
               (double)lat_max / 1000.0);
        printf("  responses   %" PRIu64 " valid, %" PRIu64 " invalid (parse %" PRIu64
               ", tid %" PRIu64 ", class %" PRIu64 ", address %" PRIu64 "), %" PRIu64 " late\n",
               cnt.valid, invalid_total(), cnt.bad_parse, cnt.bad_tid, cnt.bad_class,
               cnt.bad_addr, cnt.late);
        printf("  requests    %" PRIu64 " sent, %" PRIu64 " lost, %" PRIu64
               " connections closed, %" PRIu64 " send errors\n",
               cnt.sent, cnt.lost, cnt.closed, cnt.senderr);
        printf("  cpu         generator %.0f%%", gen_cpu);
        if (srv_cpu >= 0)
            printf(", server %.0f%%", srv_cpu);
        printf(" (of one core)\n");
    }
    if (opt.check && (invalid_total() > 0 || cnt.valid == 0))
        return 3;
    return 0;
}
