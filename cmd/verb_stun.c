/*
 * verb_stun.c: `ntcp stun`, a minimal STUN/STUNT client (UDP or TCP,
 * RFC 8489, RFC 5780, RFC 3489 and ntcp's connect-back test) built on the
 * codec in src/stun.h.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <linux/errqueue.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "ntcp.h"
#include "sock_linux.h"
#include "stun.h"
#include "verbs.h"

/* Exit codes, documented in --help and ntcp(1). */
enum {
    EXIT_OK = 0,
    EXIT_USAGE = 1,
    EXIT_NOANSWER = 2, /* no answer, unreachable, local failure */
    EXIT_PROTO = 3,    /* error response or protocol error */
};

#define DEFAULT_PORT "3478"
#define RTO_MS 500  /* RFC 8489 6.2.1: initial RTO */
#define RC_DEFAULT 7 /* RFC 8489 6.2.1: Rc */
#define RM 16        /* RFC 8489 6.2.1: Rm */
#define TI_MS 39500  /* RFC 8489 6.2.2: Ti, the TCP transaction timeout */
#define CB_GRACE_MS 2000 /* wait this long for the connect-back's indication */

static const char *prog = "ntcp";

void ntcp_usage_stun(FILE *f)
{
    fprintf(f,
            "usage: ntcp stun [OPTIONS] SERVER[:PORT]\n"
            "\n"
            "Send a STUN Binding request to SERVER (a host name, an IPv4 address, or an\n"
            "IPv6 address as [ADDR]:PORT; default port " DEFAULT_PORT ") and print what\n"
            "the server saw: the mapped address (XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS),\n"
            "the response origin, the other address and the server's software.\n"
            "\n"
            "Options:\n"
            "  -4, -6                   use IPv4 or IPv6 only\n"
            "  -t, --tcp                use TCP (default UDP)\n"
            "  -u, --udp                use UDP\n"
            "  -l, --local IP:PORT      bind the local socket to IP:PORT\n"
            "  -T, --timeout MS         give up after MS milliseconds in all\n"
            "                           (default: RFC 8489, 39500)\n"
            "      --rto MS             initial UDP retransmission timeout (default 500)\n"
            "      --rc N               UDP transmissions at most (default 7)\n"
            "  -c, --change ip|port|both  add CHANGE-REQUEST (RFC 5780 / RFC 3489)\n"
            "  -r, --response-port N    add RESPONSE-PORT (RFC 5780)\n"
            "  -f, --fingerprint        add FINGERPRINT\n"
            "      --rfc3489            send a classic RFC 3489 request (no magic cookie);\n"
            "                           prints MAPPED-, SOURCE- and CHANGED-ADDRESS\n"
            "  -b, --connect-back port|ip|both\n"
            "                           STUNT connect-back test (implies --tcp): ask the\n"
            "                           server to open a new TCP connection to our mapped\n"
            "                           address from another port, IP, or both; we also\n"
            "                           listen on our local port and report whether the\n"
            "                           connection arrived with the server's indication\n"
            "      --cb-timeout MS      the server's connect-back timeout (STUNT TIMEOUT)\n"
            "      --no-listen          with --connect-back: do not listen on the local\n"
            "                           port (the connect-back should then be refused)\n"
            "  -j, --json               print one JSON object (keys in ntcp(1))\n"
            "  -v, --verbose            log messages sent and received to stderr\n"
            "  -h, --help               show this help\n"
            "\n"
            "Exit codes: 0 success (a connect-back outcome of any kind is a success),\n"
            "1 usage error, 2 no answer, unreachable or local failure, 3 error response\n"
            "or protocol error.\n");
}

/* ---------- small helpers ---------- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int poll_ms(int64_t until)
{
    int64_t d = until - now_ms();
    if (d < 0)
        return 0;
    if (d > 60000)
        return 60000;
    return (int)d;
}

static bool parse_uint(const char *s, unsigned long max, unsigned long *out)
{
    char *end;
    if (!s || !*s || *s == '-' || *s == '+')
        return false;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *end || v > max)
        return false;
    *out = v;
    return true;
}

/* Splits "host", "host:port", "[v6]", "[v6]:port" or a bare IPv6 address.
 * *port is left alone when the string has none. */
static bool split_hostport(const char *s, char *host, size_t hlen, const char **port)
{
    const char *colon;
    size_t n;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close)
            return false;
        n = (size_t)(close - s - 1);
        if (close[1] == ':')
            *port = close + 2;
        else if (close[1] != '\0')
            return false;
        s++;
    } else if ((colon = strchr(s, ':')) && !strchr(colon + 1, ':')) {
        n = (size_t)(colon - s);
        *port = colon + 1;
    } else {
        n = strlen(s);
    }
    if (n == 0 || n >= hlen)
        return false;
    memcpy(host, s, n);
    host[n] = '\0';
    return true;
}

static const char *addr_str(const struct sockaddr_storage *ss, char *buf, size_t len)
{
    return ntcp_addr_str((const struct sockaddr *)ss, buf, len);
}

static socklen_t ss_len(const struct sockaddr_storage *ss)
{
    return ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

static uint16_t ss_port(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
    return ntohs(((const struct sockaddr_in *)ss)->sin_port);
}

/* ---------- options and results ---------- */

typedef struct options {
    int family; /* AF_UNSPEC, AF_INET, AF_INET6 */
    bool tcp;
    const char *local;
    long timeout_ms; /* -1: the RFC default */
    unsigned rto_ms;
    unsigned rc;
    uint32_t change; /* CHANGE-REQUEST flags, 0: none */
    bool have_change;
    long response_port; /* -1: none */
    bool fingerprint;
    bool rfc3489;
    uint32_t connect_back; /* flags; 0 with have_cb: same IP and port */
    bool have_cb;
    long cb_timeout_ms; /* -1: none */
    bool no_listen;
    bool json;
    bool verbose;
    const char *server;
} options;

typedef struct result {
    int exit_code;
    const char *status; /* "ok", "error-response", "timeout", ... */
    char message[256];  /* the reason when not ok */
    struct sockaddr_storage server, local, from;
    bool have_server, have_local, have_from;
    /* Address attributes of the response. */
    struct sockaddr_storage xor_mapped, mapped, origin, other, source, changed;
    bool have_xor_mapped, have_mapped, have_origin, have_other, have_source, have_changed;
    char software[256];
    bool have_software;
    int err_code;
    char err_reason[256];
    uint16_t unknown[STUN_MAX_UNKNOWN];
    size_t nunknown;
    double rtt_ms;
    unsigned transmissions;
    /* Connect-back. */
    bool have_cbr;
    stunt_connect_result cbr;
    bool listening, accepted, indication;
    struct sockaddr_storage accepted_from;
} result;

static void fail(result *r, int code, const char *status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void fail(result *r, int code, const char *status, const char *fmt, ...)
{
    va_list ap;
    r->exit_code = code;
    r->status = status;
    va_start(ap, fmt);
    vsnprintf(r->message, sizeof r->message, fmt, ap);
    va_end(ap);
}

static void vlog(const options *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void vlog(const options *o, const char *fmt, ...)
{
    if (!o->verbose)
        return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", prog);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void log_msg(const options *o, const char *dir, const stun_msg *m, size_t len,
                    const struct sockaddr_storage *peer)
{
    char a[96] = "?";
    if (!o->verbose)
        return;
    if (peer)
        addr_str(peer, a, sizeof a);
    vlog(o, "%s %s %s (%zu bytes, %zu attributes) %s %s", dir, stun_method_name(m->method),
         stun_class_name(m->cls), len, m->nattrs, dir[0] == 's' ? "to" : "from", a);
}

/* ---------- the request ---------- */

static int make_tid(const options *o, uint8_t tid[STUN_TID_SIZE])
{
    if (!o->rfc3489)
        return stun_new_tid(tid);
    /* RFC 3489: 128 random bits; avoid the cookie so the server sees a
     * classic request. */
    do {
        if (getrandom(tid, STUN_TID_SIZE, 0) != STUN_TID_SIZE)
            return NTCP_ESYS;
    } while (tid[0] == 0x21 && tid[1] == 0x12 && tid[2] == 0xA4 && tid[3] == 0x42);
    return 0;
}

static int build_request(const options *o, const uint8_t tid[STUN_TID_SIZE], uint8_t *buf,
                         size_t cap)
{
    stun_builder b;
    uint16_t method = o->have_cb ? STUNT_CONNECT_BACK : STUN_BINDING;
    stun_build_init(&b, buf, cap, method, STUN_REQUEST, tid, o->rfc3489);
    if (o->have_cb) {
        stun_build_change_request(&b, o->connect_back);
        if (o->cb_timeout_ms >= 0)
            stun_build_u32(&b, STUNT_ATTR_TIMEOUT, (uint32_t)o->cb_timeout_ms);
    } else if (o->have_change) {
        stun_build_change_request(&b, o->change);
    }
    if (o->response_port >= 0)
        stun_build_u32(&b, STUN_ATTR_RESPONSE_PORT, (uint32_t)o->response_port << 16);
    if (o->fingerprint)
        stun_build_fingerprint(&b);
    return stun_build_finish(&b, NULL);
}

/* Common to UDP and TCP: note the server, make the transaction id and the
 * request. Returns the request's length, or -1 after fail(). */
static int prepare_request(result *r, const struct addrinfo *ai, const options *o,
                           uint8_t tid[STUN_TID_SIZE], uint8_t *req, size_t cap)
{
    memcpy(&r->server, ai->ai_addr, ai->ai_addrlen);
    r->have_server = true;
    if (make_tid(o, tid) < 0) {
        fail(r, EXIT_NOANSWER, "local-error", "no random bytes for the transaction id");
        return -1;
    }
    int reqlen = build_request(o, tid, req, cap);
    if (reqlen < 0) {
        fail(r, EXIT_PROTO, "local-error", "cannot build the request: %s", ntcp_strerror(reqlen));
        return -1;
    }
    return reqlen;
}

/* Takes what we print from a response that matched our transaction. */
static void take_response(const options *o, const stun_msg *m, result *r)
{
    r->have_xor_mapped = stun_get_addr(m, STUN_ATTR_XOR_MAPPED_ADDRESS, &r->xor_mapped) == 0;
    r->have_mapped = stun_get_addr(m, STUN_ATTR_MAPPED_ADDRESS, &r->mapped) == 0;
    r->have_origin = stun_get_addr(m, STUN_ATTR_RESPONSE_ORIGIN, &r->origin) == 0;
    r->have_other = stun_get_addr(m, STUN_ATTR_OTHER_ADDRESS, &r->other) == 0;
    r->have_source = stun_get_addr(m, STUN_ATTR_SOURCE_ADDRESS, &r->source) == 0;
    r->have_changed = stun_get_addr(m, STUN_ATTR_CHANGED_ADDRESS, &r->changed) == 0;
    /* XOR-MAPPED-ADDRESS only means something with the cookie. */
    if (o->rfc3489 || m->rfc3489)
        r->have_xor_mapped = false;

    const char *s;
    size_t n;
    if (stun_get_string(m, STUN_ATTR_SOFTWARE, &s, &n) == 0) {
        if (n >= sizeof r->software)
            n = sizeof r->software - 1;
        memcpy(r->software, s, n);
        r->software[n] = '\0';
        r->have_software = true;
    }

    if (m->cls == STUN_ERROR) {
        int code = 0;
        const char *reason = "";
        size_t rlen = 0;
        if (stun_get_error(m, &code, &reason, &rlen) != 0) {
            fail(r, EXIT_PROTO, "protocol-error", "error response without a valid ERROR-CODE");
            return;
        }
        r->err_code = code;
        if (rlen >= sizeof r->err_reason)
            rlen = sizeof r->err_reason - 1;
        memcpy(r->err_reason, reason, rlen);
        r->err_reason[rlen] = '\0';
        if (code == 420)
            stun_get_unknown(m, r->unknown, STUN_MAX_UNKNOWN, &r->nunknown);
        fail(r, EXIT_PROTO, "error-response", "%d %s", code, r->err_reason);
        return;
    }
    /* RFC 8489 6.3.4: unknown comprehension-required attributes in a success
     * response make the transaction fail. */
    if (m->nunknown) {
        fail(r, EXIT_PROTO, "protocol-error",
             "success response with unknown comprehension-required attribute 0x%04x",
             m->unknown[0]);
        return;
    }
    if (o->have_cb) {
        if (stunt_get_connect_result(m, &r->cbr) == 0) {
            r->have_cbr = true;
        } else {
            fail(r, EXIT_PROTO, "protocol-error", "connect-back response without CONNECT-RESULT");
            return;
        }
    } else if (!r->have_xor_mapped && !r->have_mapped) {
        fail(r, EXIT_PROTO, "protocol-error", "success response without a mapped address");
        return;
    }
    r->exit_code = EXIT_OK;
    r->status = "ok";
}

/* Whether a parsed message answers our request. */
static bool matches(const stun_msg *m, const uint8_t tid[STUN_TID_SIZE], uint16_t method)
{
    return memcmp(m->tid, tid, STUN_TID_SIZE) == 0 && m->method == method &&
           (m->cls == STUN_SUCCESS || m->cls == STUN_ERROR);
}

/* ---------- sockets ---------- */

static int resolve(const char *host, const char *port, int family, int socktype, int flags,
                   struct addrinfo **res, result *r)
{
    struct addrinfo hints = {0};
    hints.ai_family = family;
    hints.ai_socktype = socktype;
    hints.ai_flags = flags;
    int e = getaddrinfo(host, port, &hints, res);
    if (e) {
        fail(r, EXIT_NOANSWER, "resolve-error", "%s: %s", host,
             e == EAI_SYSTEM ? strerror(errno) : gai_strerror(e));
        return -1;
    }
    return 0;
}

/* Parses --local into ss; 0, or -1 with r filled in. */
static int parse_local(const options *o, int socktype, struct sockaddr_storage *ss, result *r)
{
    char host[256];
    const char *port = "0";
    struct addrinfo *ai;
    if (!split_hostport(o->local, host, sizeof host, &port)) {
        fail(r, EXIT_USAGE, "usage-error", "bad --local address: %s", o->local);
        return -1;
    }
    if (resolve(host, port, o->family, socktype, AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE,
                &ai, r) < 0) {
        r->exit_code = EXIT_USAGE;
        r->status = "usage-error";
        return -1;
    }
    memcpy(ss, ai->ai_addr, ai->ai_addrlen);
    freeaddrinfo(ai);
    return 0;
}

/* Reads an ICMP error queued on a UDP socket (IP_RECVERR). Returns true and
 * fills r when it was an error about our traffic. */
static bool read_icmp_error(int fd, result *r)
{
    ntcp_sock_err se;
    if (!ntcp_sock_err_read(fd, &se) || !se.icmp)
        return false;
    fail(r, EXIT_NOANSWER, "unreachable", "%s (ICMP%s type %u code %u)", strerror(se.err),
         se.origin == SO_EE_ORIGIN_ICMP6 ? "v6" : "", se.type, se.code);
    return true;
}

static void run_udp(const options *o, const struct addrinfo *ai, result *r)
{
    uint8_t tid[STUN_TID_SIZE];
    uint8_t req[512], buf[STUN_MAX_MESSAGE];
    int fd = -1;
    bool malformed = false;

    int reqlen = prepare_request(r, ai, o, tid, req, sizeof req);
    if (reqlen < 0)
        return;
    fd = socket(ai->ai_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fail(r, EXIT_NOANSWER, "local-error", "socket: %s", strerror(errno));
        return;
    }
    if (o->local) {
        struct sockaddr_storage la;
        if (parse_local(o, SOCK_DGRAM, &la, r) < 0)
            goto out;
        if (bind(fd, (struct sockaddr *)&la, ss_len(&la)) < 0) {
            fail(r, EXIT_NOANSWER, "local-error", "bind %s: %s", o->local, strerror(errno));
            goto out;
        }
    }
    /* ICMP errors (port unreachable) end the transaction at once instead of
     * retransmitting to a server that is not there. */
    ntcp_sock_recverr(fd, ai->ai_family, true);

    int64_t start = now_ms();
    unsigned rto = o->rto_ms;
    uint64_t total = 0; /* the RFC's whole schedule: sum of RTOs and Rm * RTO */
    for (unsigned i = 0; i + 1 < o->rc; i++)
        total += (uint64_t)o->rto_ms << (i < 40 ? i : 40);
    total += (uint64_t)RM * o->rto_ms;
    int64_t deadline = start + (o->timeout_ms >= 0 ? o->timeout_ms : (int64_t)total);
    int64_t next_send = start, last_send = start, final_end = 0;

    for (;;) {
        int64_t now = now_ms();
        if (r->transmissions < o->rc && now >= next_send && now < deadline) {
            ssize_t n = sendto(fd, req, (size_t)reqlen, 0, ai->ai_addr, ai->ai_addrlen);
            if (n < 0) {
                if (errno == ECONNREFUSED || errno == EHOSTUNREACH || errno == ENETUNREACH) {
                    if (!read_icmp_error(fd, r))
                        fail(r, EXIT_NOANSWER, "unreachable", "sendto: %s", strerror(errno));
                } else {
                    fail(r, EXIT_NOANSWER, "local-error", "sendto: %s", strerror(errno));
                }
                goto out;
            }
            r->transmissions++;
            last_send = now;
            if (o->verbose) {
                stun_msg sm;
                if (stun_parse(&sm, req, (size_t)reqlen) == 0)
                    log_msg(o, "sent", &sm, (size_t)reqlen, &r->server);
            }
            if (r->transmissions < o->rc) {
                next_send = now + rto;
                rto = rto > 0x7fffffffu / 2 ? rto : rto * 2;
            } else {
                final_end = now + (int64_t)RM * o->rto_ms;
            }
        }
        int64_t until = r->transmissions < o->rc ? next_send : final_end;
        if (until > deadline)
            until = deadline;
        if (now >= until && (r->transmissions >= o->rc || now >= deadline))
            break;

        struct pollfd p = {fd, POLLIN, 0};
        int pr = poll(&p, 1, poll_ms(until));
        if (pr < 0 && errno != EINTR) {
            fail(r, EXIT_NOANSWER, "local-error", "poll: %s", strerror(errno));
            goto out;
        }
        if (pr <= 0)
            continue;
        if (p.revents & POLLERR) {
            if (read_icmp_error(fd, r))
                goto out;
            continue;
        }
        struct sockaddr_storage from;
        socklen_t fl = sizeof from;
        ssize_t n = recvfrom(fd, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
        if (n < 0)
            continue;
        stun_msg m;
        int e = stun_parse(&m, buf, (size_t)n);
        if (e < 0) {
            if (m.len && memcmp(m.tid, tid, STUN_TID_SIZE) == 0) {
                malformed = true;
                vlog(o, "dropped a malformed response: %s", ntcp_strerror(e));
            }
            continue;
        }
        log_msg(o, "received", &m, (size_t)n, &from);
        if (!matches(&m, tid, STUN_BINDING))
            continue;
        r->rtt_ms = (double)(now_ms() - last_send);
        memcpy(&r->from, &from, sizeof from);
        r->have_from = true;
        take_response(o, &m, r);
        goto out;
    }
    if (malformed)
        fail(r, EXIT_PROTO, "protocol-error", "only malformed responses after %u transmissions",
             r->transmissions);
    else
        fail(r, EXIT_NOANSWER, "timeout", "no answer after %u transmissions in %lld ms",
             r->transmissions, (long long)(now_ms() - start));
out:
    if (fd >= 0) {
        socklen_t sl = sizeof r->local;
        if (getsockname(fd, (struct sockaddr *)&r->local, &sl) == 0)
            r->have_local = true;
        close(fd);
    }
}

/* A TCP socket with the options a shared local port needs; -1 and errno
 * on failure. */
static int tcp_socket(int family, bool reuseport)
{
    unsigned reuse = NTCP_SOCK_REUSEADDR | (reuseport ? NTCP_SOCK_REUSEPORT : 0);
    int fd = ntcp_sock_open(family, SOCK_STREAM, reuse, NULL);
    if (fd < 0) {
        errno = -fd;
        return -1;
    }
    return fd;
}

/* Looks in a framer for the message we wait for. Returns 1 when found (and
 * handled), 0 when more bytes are needed, -1 on a stream error. */
static int scan_stream(const options *o, stun_framer *f, const uint8_t tid[STUN_TID_SIZE],
                       uint16_t method, bool want_indication, result *r,
                       const struct sockaddr_storage *peer)
{
    const uint8_t *msg;
    size_t len;
    int e;
    while ((e = stun_framer_next(f, &msg, &len)) == 1) {
        stun_msg m;
        int pe = stun_parse(&m, msg, len);
        if (pe < 0) {
            vlog(o, "dropped a malformed message: %s", ntcp_strerror(pe));
            if (!want_indication && m.len && memcmp(m.tid, tid, STUN_TID_SIZE) == 0) {
                fail(r, EXIT_PROTO, "protocol-error", "malformed response: %s",
                     ntcp_strerror(pe));
                return -1;
            }
            continue;
        }
        log_msg(o, "received", &m, len, peer);
        if (want_indication) {
            if (m.cls == STUN_INDICATION && m.method == STUN_BINDING &&
                memcmp(m.tid, tid, STUN_TID_SIZE) == 0)
                return 1;
            continue;
        }
        if (matches(&m, tid, method)) {
            take_response(o, &m, r);
            return 1;
        }
    }
    if (e < 0 && !want_indication)
        fail(r, EXIT_PROTO, "protocol-error", "bad stream from the server: %s", ntcp_strerror(e));
    return e < 0 ? -1 : 0;
}

/* Reads what is there into a framer: >0 bytes read, 0 at end of stream,
 * -1 on error, -2 when nothing is there yet. */
static ssize_t fill(int fd, stun_framer *f)
{
    uint8_t *p;
    size_t avail;
    stun_framer_space(f, &p, &avail);
    if (avail == 0)
        return -1;
    ssize_t n = recv(fd, p, avail, MSG_DONTWAIT);
    if (n < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? -2 : -1;
    if (n > 0)
        stun_framer_commit(f, (size_t)n);
    return n;
}

static void run_tcp(const options *o, const struct addrinfo *ai, result *r)
{
    static uint8_t sbuf[STUN_MAX_MESSAGE + 64], abuf[4096];
    uint8_t tid[STUN_TID_SIZE], req[512];
    int fd = -1, lfd = -1, afd = -1;
    stun_framer sf, af;
    uint16_t method = o->have_cb ? STUNT_CONNECT_BACK : STUN_BINDING;
    int64_t start = now_ms();
    int64_t deadline = start + (o->timeout_ms >= 0 ? o->timeout_ms : TI_MS);
    int64_t grace_end = 0;
    bool got_response = false, sent = false, connected = false;
    int64_t sent_at = 0;

    int reqlen = prepare_request(r, ai, o, tid, req, sizeof req);
    if (reqlen < 0)
        return;
    fd = tcp_socket(ai->ai_family, o->have_cb);
    if (fd < 0) {
        fail(r, EXIT_NOANSWER, "local-error", "socket: %s", strerror(errno));
        return;
    }
    struct sockaddr_storage la = {0};
    la.ss_family = (sa_family_t)ai->ai_family;
    if (o->local && parse_local(o, SOCK_STREAM, &la, r) < 0)
        goto out;
    if ((o->local || o->have_cb) && bind(fd, (struct sockaddr *)&la, ss_len(&la)) < 0) {
        fail(r, EXIT_NOANSWER, "local-error", "bind: %s", strerror(errno));
        goto out;
    }
    if (o->have_cb && !o->no_listen) {
        /* Listen on the control connection's own local port before the
         * request leaves, so the server's new connection finds it open. */
        socklen_t sl = sizeof la;
        getsockname(fd, (struct sockaddr *)&la, &sl);
        lfd = tcp_socket(ai->ai_family, true);
        if (lfd < 0 || bind(lfd, (struct sockaddr *)&la, ss_len(&la)) < 0 || listen(lfd, 4) < 0) {
            char a[96];
            fail(r, EXIT_NOANSWER, "local-error", "listen on %s: %s", addr_str(&la, a, sizeof a),
                 strerror(errno));
            goto out;
        }
        r->listening = true;
    }
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
        fail(r, EXIT_NOANSWER, "unreachable", "connect: %s", strerror(errno));
        goto out;
    }
    stun_framer_init(&sf, sbuf, sizeof sbuf);
    stun_framer_init(&af, abuf, sizeof abuf);

    for (;;) {
        int64_t now = now_ms();
        int64_t until = got_response ? grace_end : deadline;
        if (now >= until)
            break;
        struct pollfd p[3];
        int np = 0, ifd = -1, ilfd = -1, iafd = -1;
        if (!got_response) {
            ifd = np;
            p[np++] = (struct pollfd){fd, connected ? POLLIN : POLLOUT, 0};
        }
        if (lfd >= 0 && afd < 0) {
            ilfd = np;
            p[np++] = (struct pollfd){lfd, POLLIN, 0};
        }
        if (afd >= 0) {
            iafd = np;
            p[np++] = (struct pollfd){afd, POLLIN, 0};
        }
        if (np == 0)
            break;
        int pr = poll(p, (nfds_t)np, poll_ms(until));
        if (pr < 0 && errno != EINTR) {
            fail(r, EXIT_NOANSWER, "local-error", "poll: %s", strerror(errno));
            goto out;
        }
        if (pr <= 0)
            continue;

        if (ifd >= 0 && p[ifd].revents) {
            if (!connected) {
                int err = 0;
                socklen_t el = sizeof err;
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
                if (err) {
                    fail(r, EXIT_NOANSWER, "unreachable", "connect: %s", strerror(err));
                    goto out;
                }
                connected = true;
                socklen_t sl = sizeof r->local;
                if (getsockname(fd, (struct sockaddr *)&r->local, &sl) == 0)
                    r->have_local = true;
                if (send(fd, req, (size_t)reqlen, MSG_NOSIGNAL) != reqlen) {
                    fail(r, EXIT_NOANSWER, "unreachable", "send: %s", strerror(errno));
                    goto out;
                }
                sent = true;
                sent_at = now_ms();
                r->transmissions = 1;
                if (o->verbose) {
                    stun_msg sm;
                    if (stun_parse(&sm, req, (size_t)reqlen) == 0)
                        log_msg(o, "sent", &sm, (size_t)reqlen, &r->server);
                }
            } else {
                ssize_t n = fill(fd, &sf);
                if (n == 0 || n == -1) {
                    fail(r, EXIT_NOANSWER, "closed", "the server closed the connection%s%s",
                         n == -1 ? ": " : " without an answer", n == -1 ? strerror(errno) : "");
                    goto out;
                }
                int s = scan_stream(o, &sf, tid, method, false, r, &r->server);
                if (s < 0)
                    goto out;
                if (s == 1) {
                    got_response = true;
                    r->rtt_ms = (double)(now_ms() - sent_at);
                    r->from = r->server;
                    r->have_from = true;
                    if (r->exit_code != EXIT_OK || !o->have_cb)
                        goto out;
                    /* A connected outcome: give the indication a moment to
                     * arrive on the accepted connection. Otherwise take
                     * only what is already there. */
                    grace_end = now_ms() + (r->cbr.outcome == STUNT_CONNECTED && lfd >= 0
                                                ? CB_GRACE_MS : 50);
                    if (grace_end > deadline && r->cbr.outcome == STUNT_CONNECTED)
                        grace_end = deadline > now_ms() + 50 ? deadline : now_ms() + 50;
                }
            }
        }
        if (ilfd >= 0 && (p[ilfd].revents & POLLIN)) {
            socklen_t al = sizeof r->accepted_from;
            afd = accept4(lfd, (struct sockaddr *)&r->accepted_from, &al,
                          SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (afd >= 0) {
                r->accepted = true;
                char a[96];
                vlog(o, "accepted a connection from %s", addr_str(&r->accepted_from, a, sizeof a));
            }
        }
        if (iafd >= 0 && p[iafd].revents) {
            int s;
            ssize_t n = fill(afd, &af);
            if (n == 0 || n == -1) {
                close(afd);
                afd = -2; /* do not accept again */
                if (lfd >= 0) {
                    close(lfd);
                    lfd = -1;
                }
            } else if (n > 0 &&
                       (s = scan_stream(o, &af, tid, method, true, r, &r->accepted_from)) != 0) {
                r->indication = s == 1;
                close(afd);
                afd = -2;
                if (lfd >= 0) {
                    close(lfd);
                    lfd = -1;
                }
            }
        }
        if (got_response && (r->indication || (lfd < 0 && afd < 0)))
            goto out;
    }
    if (!got_response) {
        if (!sent)
            fail(r, EXIT_NOANSWER, "timeout", "could not connect in %lld ms",
                 (long long)(now_ms() - start));
        else
            fail(r, EXIT_NOANSWER, "timeout", "no answer in %lld ms",
                 (long long)(now_ms() - start));
    }
out:
    if (afd >= 0)
        close(afd);
    if (lfd >= 0)
        close(lfd);
    if (fd >= 0) {
        if (!r->have_local) {
            socklen_t sl = sizeof r->local;
            if (getsockname(fd, (struct sockaddr *)&r->local, &sl) == 0 && ss_port(&r->local))
                r->have_local = true;
        }
        close(fd);
    }
}

/* ---------- output ---------- */

static const char *outcome_name(uint8_t o)
{
    switch (o) {
    case STUNT_CONNECTED: return "connected";
    case STUNT_REFUSED: return "refused";
    case STUNT_ICMP: return "icmp";
    case STUNT_TIMEOUT: return "timeout";
    case STUNT_LOCAL: return "local";
    }
    return "unknown";
}

static const char *change_name(uint32_t flags)
{
    switch (flags & (STUN_CHANGE_IP | STUN_CHANGE_PORT)) {
    case STUN_CHANGE_IP: return "ip";
    case STUN_CHANGE_PORT: return "port";
    case STUN_CHANGE_IP | STUN_CHANGE_PORT: return "both";
    }
    return "none";
}

static void json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p < 0x20 || *p == 0x7f)
            fprintf(f, "\\u%04x", *p);
        else
            fputc(*p, f);
    }
    fputc('"', f);
}

typedef struct jw {
    FILE *f;
    bool first;
} jw;

static void jkey(jw *w, const char *k)
{
    fprintf(w->f, "%s", w->first ? "" : ", ");
    w->first = false;
    json_string(w->f, k);
    fputs(": ", w->f);
}

static void jstr(jw *w, const char *k, const char *v)
{
    jkey(w, k);
    json_string(w->f, v);
}

static void jaddr(jw *w, const char *k, const struct sockaddr_storage *ss)
{
    char a[96];
    jstr(w, k, addr_str(ss, a, sizeof a));
}

static void print_json(const options *o, const result *r)
{
    jw w = {stdout, true};
    FILE *f = stdout;
    fputc('{', f);
    jstr(&w, "status", r->status);
    jkey(&w, "exit");
    fprintf(f, "%d", r->exit_code);
    if (r->exit_code != EXIT_OK)
        jstr(&w, "message", r->message);
    jstr(&w, "transport", o->tcp ? "tcp" : "udp");
    if (r->have_server)
        jaddr(&w, "server", &r->server);
    if (r->have_local)
        jaddr(&w, "local", &r->local);
    if (r->have_from)
        jaddr(&w, "from", &r->from);
    if (r->have_xor_mapped)
        jaddr(&w, "xor_mapped_address", &r->xor_mapped);
    if (r->have_mapped)
        jaddr(&w, "mapped_address", &r->mapped);
    if (r->have_xor_mapped || r->have_mapped) {
        bool x = r->have_xor_mapped;
        jaddr(&w, "mapped", x ? &r->xor_mapped : &r->mapped);
    }
    if (r->have_origin)
        jaddr(&w, "response_origin", &r->origin);
    if (r->have_other)
        jaddr(&w, "other_address", &r->other);
    if (r->have_source)
        jaddr(&w, "source_address", &r->source);
    if (r->have_changed)
        jaddr(&w, "changed_address", &r->changed);
    if (r->have_software)
        jstr(&w, "software", r->software);
    if (r->err_code) {
        jkey(&w, "error_code");
        fprintf(f, "%d", r->err_code);
        jstr(&w, "error_reason", r->err_reason);
        if (r->nunknown) {
            jkey(&w, "unknown_attributes");
            fputc('[', f);
            for (size_t i = 0; i < r->nunknown; i++)
                fprintf(f, "%s%u", i ? ", " : "", r->unknown[i]);
            fputc(']', f);
        }
    }
    if (r->transmissions) {
        jkey(&w, "transmissions");
        fprintf(f, "%u", r->transmissions);
    }
    if (r->have_from) {
        jkey(&w, "rtt_ms");
        fprintf(f, "%.0f", r->rtt_ms);
    }
    if (o->have_cb) {
        jkey(&w, "connect_back");
        jw c = {f, true};
        fputc('{', f);
        jstr(&c, "change", change_name(o->connect_back));
        if (r->have_cbr) {
            jstr(&c, "outcome", outcome_name(r->cbr.outcome));
            if (r->cbr.outcome == STUNT_ICMP) {
                jkey(&c, "icmp_type");
                fprintf(f, "%u", r->cbr.icmp_type);
                jkey(&c, "icmp_code");
                fprintf(f, "%u", r->cbr.icmp_code);
            }
            jkey(&c, "elapsed_ms");
            fprintf(f, "%u", (unsigned)r->cbr.elapsed_ms);
        }
        jkey(&c, "listening");
        fputs(r->listening ? "true" : "false", f);
        jkey(&c, "accepted");
        fputs(r->accepted ? "true" : "false", f);
        if (r->accepted)
            jaddr(&c, "accepted_from", &r->accepted_from);
        jkey(&c, "indication");
        fputs(r->indication ? "true" : "false", f);
        fputc('}', f);
    }
    fputs("}\n", f);
}

static void print_text(const options *o, const result *r)
{
    char a[96];
    FILE *f = stdout;
    if (r->have_server)
        fprintf(f, "server            %s (%s%s)\n", addr_str(&r->server, a, sizeof a),
                o->tcp ? "tcp" : "udp", o->rfc3489 ? ", rfc3489" : "");
    if (r->have_local)
        fprintf(f, "local address     %s\n", addr_str(&r->local, a, sizeof a));
    if (r->have_xor_mapped)
        fprintf(f, "mapped address    %s\n", addr_str(&r->xor_mapped, a, sizeof a));
    else if (r->have_mapped)
        fprintf(f, "mapped address    %s%s\n", addr_str(&r->mapped, a, sizeof a),
                o->rfc3489 ? "" : " (MAPPED-ADDRESS)");
    if (r->have_origin)
        fprintf(f, "response origin   %s\n", addr_str(&r->origin, a, sizeof a));
    if (r->have_other)
        fprintf(f, "other address     %s\n", addr_str(&r->other, a, sizeof a));
    if (r->have_source)
        fprintf(f, "source address    %s\n", addr_str(&r->source, a, sizeof a));
    if (r->have_changed)
        fprintf(f, "changed address   %s\n", addr_str(&r->changed, a, sizeof a));
    if (r->have_software)
        fprintf(f, "software          %s\n", r->software);
    if (r->have_from && !o->tcp)
        fprintf(f, "received from     %s\n", addr_str(&r->from, a, sizeof a));
    if (r->have_from)
        fprintf(f, "round trip        %.0f ms (%u transmission%s)\n", r->rtt_ms,
                r->transmissions, r->transmissions == 1 ? "" : "s");
    if (o->have_cb && r->have_cbr) {
        fprintf(f, "connect-back      %s", outcome_name(r->cbr.outcome));
        if (r->cbr.outcome == STUNT_ICMP)
            fprintf(f, " (type %u code %u)", r->cbr.icmp_type, r->cbr.icmp_code);
        fprintf(f, " after %u ms (change %s)\n", (unsigned)r->cbr.elapsed_ms,
                change_name(o->connect_back));
        if (r->accepted)
            fprintf(f, "accepted          yes, from %s\n",
                    addr_str(&r->accepted_from, a, sizeof a));
        else
            fprintf(f, "accepted          no%s\n", r->listening ? "" : " (not listening)");
        fprintf(f, "indication        %s\n", r->indication ? "yes" : "no");
    }
    if (r->err_code) {
        fprintf(f, "error             %d %s\n", r->err_code, r->err_reason);
        if (r->nunknown) {
            fprintf(f, "unknown attributes");
            for (size_t i = 0; i < r->nunknown; i++)
                fprintf(f, " 0x%04x", r->unknown[i]);
            fputc('\n', f);
        }
    }
    if (r->exit_code != EXIT_OK && !r->err_code)
        fprintf(stderr, "%s stun: %s: %s\n", prog, r->status, r->message);
}

/* ---------- the verb ---------- */

static bool parse_change(const char *s, uint32_t *flags)
{
    if (!strcmp(s, "ip"))
        *flags = STUN_CHANGE_IP;
    else if (!strcmp(s, "port"))
        *flags = STUN_CHANGE_PORT;
    else if (!strcmp(s, "both"))
        *flags = STUN_CHANGE_IP | STUN_CHANGE_PORT;
    else if (!strcmp(s, "none"))
        *flags = 0;
    else
        return false;
    return true;
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int usage_error(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s stun: ", prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry `ntcp help stun`.\n");
    return EXIT_USAGE;
}

enum { OPT_RTO = 256, OPT_RC, OPT_RFC3489, OPT_CB_TIMEOUT, OPT_NO_LISTEN };

int ntcp_verb_stun(int argc, char **argv)
{
    static const struct option lopts[] = {
        {"tcp", no_argument, NULL, 't'},
        {"udp", no_argument, NULL, 'u'},
        {"local", required_argument, NULL, 'l'},
        {"timeout", required_argument, NULL, 'T'},
        {"rto", required_argument, NULL, OPT_RTO},
        {"rc", required_argument, NULL, OPT_RC},
        {"change", required_argument, NULL, 'c'},
        {"response-port", required_argument, NULL, 'r'},
        {"fingerprint", no_argument, NULL, 'f'},
        {"rfc3489", no_argument, NULL, OPT_RFC3489},
        {"connect-back", required_argument, NULL, 'b'},
        {"cb-timeout", required_argument, NULL, OPT_CB_TIMEOUT},
        {"no-listen", no_argument, NULL, OPT_NO_LISTEN},
        {"json", no_argument, NULL, 'j'},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    options o = {0};
    o.family = AF_UNSPEC;
    o.timeout_ms = -1;
    o.rto_ms = RTO_MS;
    o.rc = RC_DEFAULT;
    o.response_port = -1;
    o.cb_timeout_ms = -1;
    unsigned long v;
    int c;

    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":46tul:T:c:r:fb:jvh", lopts, NULL)) != -1) {
        switch (c) {
        case '4': o.family = AF_INET; break;
        case '6': o.family = AF_INET6; break;
        case 't': o.tcp = true; break;
        case 'u': o.tcp = false; break;
        case 'l': o.local = optarg; break;
        case 'T':
            if (!parse_uint(optarg, 86400000, &v))
                return usage_error("bad --timeout: %s", optarg);
            o.timeout_ms = (long)v;
            break;
        case OPT_RTO:
            if (!parse_uint(optarg, 60000, &v) || v == 0)
                return usage_error("bad --rto: %s", optarg);
            o.rto_ms = (unsigned)v;
            break;
        case OPT_RC:
            if (!parse_uint(optarg, 30, &v) || v == 0)
                return usage_error("bad --rc: %s (1..30)", optarg);
            o.rc = (unsigned)v;
            break;
        case 'c':
            if (!parse_change(optarg, &o.change))
                return usage_error("bad --change: %s (ip, port or both)", optarg);
            o.have_change = true;
            break;
        case 'r':
            if (!parse_uint(optarg, 65535, &v) || v == 0)
                return usage_error("bad --response-port: %s", optarg);
            o.response_port = (long)v;
            break;
        case 'f': o.fingerprint = true; break;
        case OPT_RFC3489: o.rfc3489 = true; break;
        case 'b':
            if (!parse_change(optarg, &o.connect_back) || o.connect_back == 0)
                return usage_error("bad --connect-back: %s (ip, port or both)", optarg);
            o.have_cb = true;
            break;
        case OPT_CB_TIMEOUT:
            if (!parse_uint(optarg, 600000, &v))
                return usage_error("bad --cb-timeout: %s", optarg);
            o.cb_timeout_ms = (long)v;
            break;
        case OPT_NO_LISTEN: o.no_listen = true; break;
        case 'j': o.json = true; break;
        case 'v': o.verbose = true; break;
        case 'h': ntcp_usage_stun(stdout); return EXIT_OK;
        case ':': return usage_error("option %s needs a value", argv[optind - 1]);
        default: return usage_error("unknown option %s", argv[optind - 1]);
        }
    }
    if (optind != argc - 1)
        return usage_error(optind >= argc ? "which server?" : "one server only");
    o.server = argv[optind];
    if (o.have_cb)
        o.tcp = true;
    if ((o.cb_timeout_ms >= 0 || o.no_listen) && !o.have_cb)
        return usage_error("--cb-timeout and --no-listen go with --connect-back");
    if (o.have_cb && o.rfc3489)
        return usage_error("--connect-back needs an RFC 8489 request, not --rfc3489");

    char host[256];
    const char *port = DEFAULT_PORT;
    if (!split_hostport(o.server, host, sizeof host, &port) || !parse_uint(port, 65535, &v) ||
        v == 0)
        return usage_error("bad server address: %s", o.server);

    result r = {0};
    r.status = "ok";
    struct addrinfo *ai = NULL;
    int socktype = o.tcp ? SOCK_STREAM : SOCK_DGRAM;
    if (o.local && o.family == AF_UNSPEC) {
        /* The local address decides the family when none is asked for. */
        struct sockaddr_storage la;
        if (parse_local(&o, socktype, &la, &r) < 0)
            return usage_error("%s", r.message);
        o.family = la.ss_family;
    }
    if (resolve(host, port, o.family, socktype, AI_NUMERICSERV, &ai, &r) == 0) {
        /* Several addresses: the first that gets an answer (or a protocol
         * answer) wins; unreachable ones fall through to the next. */
        for (struct addrinfo *p = ai; p; p = p->ai_next) {
            result one = {0};
            one.status = "ok";
            if (o.tcp)
                run_tcp(&o, p, &one);
            else
                run_udp(&o, p, &one);
            r = one;
            if (r.exit_code != EXIT_NOANSWER || strcmp(r.status, "unreachable") != 0)
                break;
        }
        freeaddrinfo(ai);
    }
    if (o.json)
        print_json(&o, &r);
    else
        print_text(&o, &r);
    return r.exit_code;
}
