/*
 * stuntd.c: the STUN/STUNT server's setup and teardown, the answer to one
 * request (shared by UDP and TCP), and the UDP path: one uv_poll_t per
 * socket, drained with recvmmsg and answered with sendmmsg in batches.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "logline.h"
#include "sock_linux.h"
#include "stuntd_int.h"

void stuntd_log(const ntcp_stuntd *s, int level, const char *fmt, ...)
{
    char line[1024];
    int n = ntcp_log_prefix(line, sizeof(line), level, s->prefix, true);
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < sizeof(line))
        n += vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof(line) - 1)
        n = (int)sizeof(line) - 2;
    line[n++] = '\n';
    /* One write per line, so lines of concurrent writers do not interleave. */
    ssize_t w = write(STDERR_FILENO, line, (size_t)n);
    (void)w;
}

socklen_t stuntd_salen(const struct sockaddr *sa)
{
    return sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

/* ---- answering one request ---------------------------------------------- */

static size_t build_error(const stun_msg *m, bool parsed, int code, const char *reason,
                          uint8_t *out, size_t cap)
{
    stun_builder b;
    stun_build_init(&b, out, cap, m->method, STUN_ERROR, m->tid, m->rfc3489);
    stun_build_error(&b, code, reason);
    if (parsed && code == 420 && m->nunknown > 0)
        stun_build_unknown(&b, m->unknown, m->nunknown);
    if (!m->rfc3489) {
        stun_build_string(&b, STUN_ATTR_SOFTWARE, SOFTWARE_NAME);
        if (parsed && m->fingerprint >= 0)
            stun_build_fingerprint(&b);
    }
    int len = stun_build_finish(&b, NULL);
    return len > 0 ? (size_t)len : 0;
}

size_t stuntd_build_error(const stun_msg *m, int code, const char *reason, uint8_t *out,
                          size_t cap)
{
    return build_error(m, true, code, reason, out, cap);
}

static int reply_error(const stun_msg *m, bool parsed, int code, const char *reason,
                       uint8_t *out, size_t cap, stuntd_reply *r)
{
    r->len = build_error(m, parsed, code, reason, out, cap);
    return r->len ? ACT_REPLY : ACT_NONE;
}

int stuntd_handle(ntcp_stuntd *s, const stuntd_sock *sk, const struct sockaddr *src,
                  const uint8_t *pkt, size_t n, uint8_t *out, size_t cap, stuntd_reply *r,
                  stun_msg *m)
{
    char abuf[64];
    r->oip = sk->ip;
    r->oport = sk->port;
    r->dport = 0;
    r->len = 0;
    if (n < STUN_HEADER_SIZE || !stun_looks_like(pkt, n)) {
        SLOG(s, NTCP_LOG_DEBUG, "%s %s: %zu bytes that are not STUN: dropped",
             sk->tcp ? "tcp" : "udp", ntcp_addr_str(src, abuf, sizeof(abuf)), n);
        return ACT_NONE;
    }
    memset(m, 0, offsetof(stun_msg, attrs));
    int e = stun_parse(m, pkt, n);
    if (e < 0) {
        /* A request with the magic cookie is certainly meant as STUN: tell
         * the client with a 400. Without the cookie it is as likely to be
         * junk, and UDP junk gets no answer. A wrong FINGERPRINT means "not
         * STUN after all": silently discarded (RFC 8489 6.3). */
        bool answer = m->len != 0 && m->cls == STUN_REQUEST && (sk->tcp || !m->rfc3489) &&
                      e != NTCP_EFINGERPRINT && e != NTCP_ENOTSTUN;
        SLOG(s, NTCP_LOG_DEBUG, "%s %s: malformed message (%s)%s", sk->tcp ? "tcp" : "udp",
             ntcp_addr_str(src, abuf, sizeof(abuf)), ntcp_strerror(e),
             answer ? ": 400" : ": dropped");
        if (!answer)
            return ACT_NONE;
        return reply_error(m, false, 400, "Bad Request", out, cap, r);
    }
    if (m->cls != STUN_REQUEST) {
        SLOG(s, NTCP_LOG_DEBUG, "%s %s: %s %s ignored", sk->tcp ? "tcp" : "udp",
             ntcp_addr_str(src, abuf, sizeof(abuf)), stun_method_name(m->method),
             stun_class_name(m->cls));
        return ACT_NONE;
    }
    if (m->nunknown > 0)
        return reply_error(m, true, 420, "Unknown Attribute", out, cap, r);

    if (m->method == STUNT_CONNECT_BACK) {
        if (!sk->tcp)
            return reply_error(m, true, 400, "Connect-back needs TCP", out, cap, r);
        return ACT_CONNECT_BACK;
    }
    if (m->method != STUN_BINDING)
        return reply_error(m, true, 400, "Unknown Method", out, cap, r);

    uint32_t flags = 0;
    if (stun_get_change_request(m, &flags) == 0) {
        flags &= STUN_CHANGE_IP | STUN_CHANGE_PORT;
        if (flags && sk->tcp)
            return reply_error(m, true, 400, "CHANGE-REQUEST needs UDP", out, cap, r);
        if (flags & STUN_CHANGE_IP)
            r->oip ^= 1;
        if (flags & STUN_CHANGE_PORT)
            r->oport ^= 1;
    }
    uint16_t rport;
    if (stun_get_response_port(m, &rport) == 0) {
        if (sk->tcp)
            return reply_error(m, true, 400, "RESPONSE-PORT needs UDP", out, cap, r);
        if (rport == 0)
            return reply_error(m, true, 400, "Bad RESPONSE-PORT", out, cap, r);
        r->dport = rport;
    }

    const stuntd_family *f = &s->fam[sk->fam];
    const struct sockaddr *origin = (const struct sockaddr *)&f->addr[r->oip][r->oport];
    const struct sockaddr *other = (const struct sockaddr *)&f->addr[!sk->ip][!sk->port];
    stun_builder b;
    stun_build_init(&b, out, cap, STUN_BINDING, STUN_SUCCESS, m->tid, m->rfc3489);
    if (m->rfc3489) {
        stun_build_addr(&b, STUN_ATTR_MAPPED_ADDRESS, src);
        stun_build_addr(&b, STUN_ATTR_SOURCE_ADDRESS, origin);
        stun_build_addr(&b, STUN_ATTR_CHANGED_ADDRESS, other);
    } else {
        stun_build_addr(&b, STUN_ATTR_XOR_MAPPED_ADDRESS, src);
        stun_build_addr(&b, STUN_ATTR_MAPPED_ADDRESS, src);
        stun_build_addr(&b, STUN_ATTR_RESPONSE_ORIGIN, origin);
        stun_build_addr(&b, STUN_ATTR_OTHER_ADDRESS, other);
        stun_build_string(&b, STUN_ATTR_SOFTWARE, SOFTWARE_NAME);
        if (m->fingerprint >= 0)
            stun_build_fingerprint(&b);
    }
    int len = stun_build_finish(&b, NULL);
    if (len <= 0)
        return ACT_NONE;
    r->len = (size_t)len;
    return ACT_REPLY;
}

/* ---- UDP ------------------------------------------------------------------ */

static void udp_send(ntcp_stuntd *s, stuntd_family *f, size_t nout)
{
    for (int k = 0; k < 4 && nout > 0; k++) {
        unsigned cnt = 0;
        for (size_t j = 0; j < nout; j++) {
            if (s->sout[j] != k)
                continue;
            struct msghdr *h = &s->smsg[cnt].msg_hdr;
            memset(h, 0, sizeof(*h));
            s->siov[cnt].iov_base = s->sbuf[j];
            s->siov[cnt].iov_len = s->slen[j];
            h->msg_name = &s->sdst[j];
            h->msg_namelen = stuntd_salen((struct sockaddr *)&s->sdst[j]);
            h->msg_iov = &s->siov[cnt];
            h->msg_iovlen = 1;
            cnt++;
        }
        if (cnt == 0)
            continue;
        int fd = f->udp[k >> 1][k & 1].fd;
        unsigned done = 0;
        while (done < cnt) {
            int w = sendmmsg(fd, s->smsg + done, cnt - done, MSG_DONTWAIT);
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                /* EAGAIN (send buffer full) or a per-destination error on the
                 * first message: drop it and go on with the rest. */
                s->st.udp_dropped++;
                done++;
                continue;
            }
            done += (unsigned)w;
            s->st.udp_out += (unsigned)w;
        }
    }
}

static void udp_poll_cb(uv_poll_t *h, int status, int events)
{
    stuntd_sock *sk = h->data;
    ntcp_stuntd *s = sk->s;
    (void)events;
    if (status < 0) {
        /* A pending socket error (POLLERR) stops the handle in libuv: clear
         * it and go on serving. */
        int e = 0;
        socklen_t el = sizeof(e);
        getsockopt(sk->fd, SOL_SOCKET, SO_ERROR, &e, &el);
        SLOG(s, NTCP_LOG_DEBUG, "udp socket error: %s", strerror(e));
        uv_poll_start(h, UV_READABLE, udp_poll_cb);
        return;
    }
    stuntd_family *f = &s->fam[sk->fam];
    uint64_t now = uv_now(s->loop);
    stun_msg m;
    for (int round = 0; round < UDP_ROUNDS; round++) {
        for (int i = 0; i < UDP_BATCH; i++) {
            struct msghdr *mh = &s->rmsg[i].msg_hdr;
            s->riov[i].iov_base = s->rbuf[i];
            s->riov[i].iov_len = UDP_MAX_IN;
            mh->msg_name = &s->rsrc[i];
            mh->msg_namelen = sizeof(s->rsrc[i]);
            mh->msg_iov = &s->riov[i];
            mh->msg_iovlen = 1;
            mh->msg_control = NULL;
            mh->msg_controllen = 0;
            mh->msg_flags = 0;
        }
        int n = recvmmsg(sk->fd, s->rmsg, UDP_BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0)
            break;
        s->st.udp_in += (unsigned)n;
        size_t nout = 0;
        for (int i = 0; i < n; i++) {
            if (s->rmsg[i].msg_hdr.msg_flags & MSG_TRUNC)
                continue;
            const struct sockaddr *src = (const struct sockaddr *)&s->rsrc[i];
            stuntd_reply r;
            int act = stuntd_handle(s, sk, src, s->rbuf[i], s->rmsg[i].msg_len, s->sbuf[nout],
                                    RESP_MAX, &r, &m);
            if (act != ACT_REPLY)
                continue;
            if (!rl_allow(&s->udp_rl, src, now)) {
                s->st.udp_rate_limited++;
                continue;
            }
            memcpy(&s->sdst[nout], src, stuntd_salen(src));
            if (r.dport)
                ntcp_sa_set_port(&s->sdst[nout], r.dport);
            s->sout[nout] = (uint8_t)(r.oip * 2 + r.oport);
            s->slen[nout] = r.len;
            nout++;
        }
        udp_send(s, f, nout);
        if (n < UDP_BATCH)
            break;
    }
}

/* ---- setup ----------------------------------------------------------------- */

/* With SO_REUSEPORT our listener would silently join another program's
 * listener on the same address (same user). A bind without it, but with
 * SO_REUSEADDR so that TIME_WAIT leftovers do not count, tells first. */
static bool tcp_port_taken(const struct sockaddr_storage *ss)
{
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    int one = 1;
    if (ss->ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    bool taken = bind(fd, (const struct sockaddr *)ss, stuntd_salen((const struct sockaddr *)ss)) < 0 &&
                 errno == EADDRINUSE;
    close(fd);
    return taken;
}

static int open_sock(stuntd_sock *sk, const struct sockaddr_storage *ss)
{
    int fd = socket(ss->ss_family, (sk->tcp ? SOCK_STREAM : SOCK_DGRAM) | SOCK_NONBLOCK |
                                        SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    if (ss->ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (sk->tcp && tcp_port_taken(ss)) {
        close(fd);
        return -EADDRINUSE;
    }
    if (sk->tcp) {
        /* Connect-back sockets bind to a listener's address: both need
         * SO_REUSEPORT (and the same owner, see privdrop.c). */
        ntcp_sock_reuse(fd, NTCP_SOCK_REUSE);
    } else {
        /* Bursts from many clients: a bigger queue drops less. */
        int sz = 4 << 20;
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
    }
    if (bind(fd, (const struct sockaddr *)ss, stuntd_salen((const struct sockaddr *)ss)) < 0 ||
        (sk->tcp && listen(fd, 1024) < 0)) {
        int e = errno;
        close(fd);
        return -e;
    }
    sk->fd = fd;
    return 0;
}

static void close_family_fds(stuntd_family *f)
{
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++) {
            if (f->udp[i][j].fd >= 0)
                close(f->udp[i][j].fd);
            if (f->tcp[i][j].fd >= 0)
                close(f->tcp[i][j].fd);
            f->udp[i][j].fd = f->tcp[i][j].fd = -1;
        }
}

/* Binds the eight sockets of a family. A port of 0 is chosen by the kernel on
 * the first socket and then used for the other three of its index; when that
 * port is taken on the other IP, everything is closed and tried again. */
static int bind_family(ntcp_stuntd *s, int fi, char *err, size_t errlen)
{
    stuntd_family *f = &s->fam[fi];
    const struct sockaddr_storage *p = &s->cfg.primary[fi], *a = &s->cfg.alternate[fi];
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++) {
            stuntd_sock *u = &f->udp[i][j], *t = &f->tcp[i][j];
            *u = (stuntd_sock){.s = s, .fam = fi, .ip = i, .port = j, .tcp = false, .fd = -1};
            *t = (stuntd_sock){.s = s, .fam = fi, .ip = i, .port = j, .tcp = true, .fd = -1};
        }
    bool ephemeral = ntcp_sa_port(p) == 0 || ntcp_sa_port(a) == 0;
    for (int attempt = 0; attempt < 100; attempt++) {
        uint16_t ports[2] = {ntcp_sa_port(p), ntcp_sa_port(a)};
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 2; j++) {
                f->addr[i][j] = i == 0 ? *p : *a;
                ntcp_sa_set_port(&f->addr[i][j], ports[j]);
            }
        int rc = 0;
        stuntd_sock *failed = NULL;
        for (int proto = 0; proto < 2 && rc == 0; proto++) {
            if ((proto == 0 && !s->cfg.udp) || (proto == 1 && !s->cfg.tcp))
                continue;
            for (int k = 0; k < 4 && rc == 0; k++) {
                int i = k >> 1, j = k & 1;
                stuntd_sock *sk = proto == 0 ? &f->udp[i][j] : &f->tcp[i][j];
                rc = open_sock(sk, &f->addr[i][j]);
                if (rc < 0) {
                    failed = sk;
                    break;
                }
                if (ports[j] == 0) {
                    struct sockaddr_storage got;
                    socklen_t gl = sizeof(got);
                    getsockname(sk->fd, (struct sockaddr *)&got, &gl);
                    ports[j] = ntcp_sa_port(&got);
                    for (int ii = 0; ii < 2; ii++)
                        ntcp_sa_set_port(&f->addr[ii][j], ports[j]);
                }
            }
        }
        if (rc == 0) {
            f->on = true;
            return 0;
        }
        close_family_fds(f);
        if (ephemeral && rc == -EADDRINUSE)
            continue;
        char abuf[64];
        snprintf(err, errlen, "cannot bind %s %s: %s", failed->tcp ? "TCP" : "UDP",
                 ntcp_addr_str((struct sockaddr *)&f->addr[failed->ip][failed->port], abuf,
                               sizeof(abuf)),
                 strerror(-rc));
        return NTCP_ESYS;
    }
    snprintf(err, errlen, "cannot find a free pair of ports on both addresses");
    return NTCP_ESYS;
}

static void sock_closed_cb(uv_handle_t *h)
{
    stuntd_sock *sk = h->data;
    stuntd_handle_closed(sk->s);
}

static void server_free(ntcp_stuntd *s)
{
    rl_free(&s->udp_rl);
    rl_free(&s->cb_rl);
    free(s);
}

void stuntd_handle_closed(ntcp_stuntd *s)
{
    if (--s->handles == 0 && s->stopping)
        server_free(s);
}

int ntcp_stuntd_start(uv_loop_t *loop, const ntcp_stuntd_config *cfg, ntcp_stuntd **out,
                      char *err, size_t errlen)
{
    char dummy[8];
    if (!err) {
        err = dummy;
        errlen = sizeof(dummy);
    }
    err[0] = '\0';
    *out = NULL;
    int rc = ntcp_stuntd_config_check(cfg, err, errlen);
    if (rc < 0)
        return rc;
    ntcp_stuntd *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NTCP_ENOMEM;
    }
    s->loop = loop;
    s->cfg = *cfg;
    snprintf(s->prefix, sizeof(s->prefix), "%s", cfg->log_prefix ? cfg->log_prefix : "");
    s->cfg.log_prefix = s->prefix;
    for (int fi = 0; fi < NTCP_STUNTD_NFAM; fi++)
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 2; j++)
                s->fam[fi].udp[i][j].fd = s->fam[fi].tcp[i][j].fd = -1;
    if (rl_init(&s->udp_rl, cfg->udp_rate, cfg->udp_burst, cfg->rate_slots) < 0 ||
        rl_init(&s->cb_rl, cfg->cb_rate, cfg->cb_burst, cfg->rate_slots) < 0) {
        server_free(s);
        snprintf(err, errlen, "out of memory");
        return NTCP_ENOMEM;
    }
    for (int fi = 0; fi < NTCP_STUNTD_NFAM; fi++) {
        if (cfg->primary[fi].ss_family == 0)
            continue;
        rc = bind_family(s, fi, err, errlen);
        if (rc < 0) {
            for (int fj = 0; fj < fi; fj++)
                close_family_fds(&s->fam[fj]);
            server_free(s);
            return rc;
        }
    }
    char list[1024];
    size_t ll = 0;
    list[0] = '\0';
    for (int fi = 0; fi < NTCP_STUNTD_NFAM; fi++) {
        stuntd_family *f = &s->fam[fi];
        if (!f->on)
            continue;
        for (int proto = 0; proto < 2; proto++)
            for (int k = 0; k < 4; k++) {
                stuntd_sock *sk = proto == 0 ? &f->udp[k >> 1][k & 1] : &f->tcp[k >> 1][k & 1];
                if (sk->fd < 0)
                    continue;
                uv_poll_init(loop, &sk->poll, sk->fd);
                sk->poll.data = sk;
                sk->poll_init = true;
                s->handles++;
                uv_poll_start(&sk->poll, UV_READABLE, sk->tcp ? stuntd_tcp_accept_cb : udp_poll_cb);
                char abuf[64];
                int w = snprintf(list + ll, sizeof(list) - ll, "%s%s %s", ll ? ", " : "",
                                 sk->tcp ? "tcp" : "udp",
                                 ntcp_addr_str((struct sockaddr *)&f->addr[sk->ip][sk->port], abuf,
                                               sizeof(abuf)));
                if (w > 0 && (size_t)w < sizeof(list) - ll)
                    ll += (size_t)w;
            }
    }
    SLOG(s, NTCP_LOG_INFO, "%s listening on %s", SOFTWARE_NAME, list);
    SLOG(s, NTCP_LOG_INFO,
         "limits: udp %.0f/s burst %u per IP, tcp idle %u ms, max %u connections, "
         "connect-back %.2f/s burst %u per IP",
         cfg->udp_rate, cfg->udp_burst, cfg->tcp_idle_ms, cfg->tcp_max_conns, cfg->cb_rate,
         cfg->cb_burst);
    *out = s;
    return 0;
}

void ntcp_stuntd_stop(ntcp_stuntd *s)
{
    if (!s || s->stopping)
        return;
    s->stopping = true;
    /* Each conn and cb holds one count in s->handles until it is freed, so
     * the server cannot be freed under them. */
    s->handles++;
    while (s->conns)
        stuntd_conn_close(s->conns);
    while (s->cbs)
        stuntd_cb_close(s->cbs, true);
    for (int fi = 0; fi < NTCP_STUNTD_NFAM; fi++) {
        stuntd_family *f = &s->fam[fi];
        for (int proto = 0; proto < 2; proto++)
            for (int k = 0; k < 4; k++) {
                stuntd_sock *sk = proto == 0 ? &f->udp[k >> 1][k & 1] : &f->tcp[k >> 1][k & 1];
                if (sk->poll_init) {
                    uv_close((uv_handle_t *)&sk->poll, sock_closed_cb);
                    sk->poll_init = false;
                }
                if (sk->fd >= 0) {
                    close(sk->fd);
                    sk->fd = -1;
                }
            }
    }
    stuntd_handle_closed(s);
}

int ntcp_stuntd_addrs(const ntcp_stuntd *s, int fi, struct sockaddr_storage *primary,
                      struct sockaddr_storage *alternate)
{
    if (fi < 0 || fi >= NTCP_STUNTD_NFAM || !s->fam[fi].on)
        return NTCP_ENOTFOUND;
    if (primary)
        *primary = s->fam[fi].addr[0][0];
    if (alternate)
        *alternate = s->fam[fi].addr[1][1];
    return 0;
}

void ntcp_stuntd_get_stats(const ntcp_stuntd *s, ntcp_stuntd_stats *st)
{
    *st = s->st;
}
