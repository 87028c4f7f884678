/*
 * connect_back.c: the STUNT connect-back test (docs/protocol.md). Over a TCP
 * control connection a client asks the server to open a new TCP connection to
 * the control connection's source address from another local address; the
 * server reports whether a SYN-ACK, an RST, an ICMP error or nothing came back.
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sock_linux.h"
#include "stuntd_int.h"

enum { CB_CONNECTING = 0, CB_LINGER = 1 };

static const char *const outcome_names[] = {"connected", "refused", "icmp", "timeout", "local"};

static void cb_handle_closed(uv_handle_t *h)
{
    stuntd_cb *cb = h->data;
    if (--cb->handles > 0)
        return;
    ntcp_stuntd *s = cb->s;
    free(cb);
    stuntd_handle_closed(s);
}

void stuntd_cb_close(stuntd_cb *cb, bool rst)
{
    if (cb->closing)
        return;
    cb->closing = true;
    ntcp_stuntd *s = cb->s;
    if (cb->prev)
        cb->prev->next = cb->next;
    else
        s->cbs = cb->next;
    if (cb->next)
        cb->next->prev = cb->prev;
    if (cb->conn) {
        cb->conn->ncb--;
        cb->conn = NULL;
    }
    s->st.cb_pending--;
    if (cb->fd >= 0) {
        if (rst) {
            /* An abortive close leaves no TIME_WAIT on the server's side, so
             * the same test can be repeated at once. */
            struct linger lg = {.l_onoff = 1, .l_linger = 0};
            setsockopt(cb->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        }
    }
    if (cb->poll_init)
        uv_close((uv_handle_t *)&cb->poll, cb_handle_closed);
    uv_close((uv_handle_t *)&cb->timer, cb_handle_closed);
    if (cb->fd >= 0)
        close(cb->fd);
    cb->fd = -1;
}

void stuntd_cb_detach(stuntd_conn *c)
{
    stuntd_cb *next;
    for (stuntd_cb *cb = c->s->cbs; cb; cb = next) {
        next = cb->next;
        if (cb->conn == c)
            stuntd_cb_close(cb, true); /* nobody is left to hear the outcome */
    }
}

/* The first ICMP error queued on the socket (IP_RECVERR): 1 and its type and
 * code, or 0 when the failure did not come from ICMP. */
static int read_icmp(int fd, uint8_t *type, uint8_t *code)
{
    ntcp_sock_err se;
    for (int i = 0; i < 8 && ntcp_sock_err_read(fd, &se); i++)
        if (se.icmp) {
            *type = se.type;
            *code = se.code;
            return 1;
        }
    return 0;
}

static void cb_linger_poll_cb(uv_poll_t *h, int status, int events);
static void cb_linger_timer_cb(uv_timer_t *t);

/* Reports the outcome on the control connection; on success, greets the
 * client over the new connection and waits for it to close first. */
static void cb_finish(stuntd_cb *cb, int outcome, uint8_t icmp_type, uint8_t icmp_code)
{
    ntcp_stuntd *s = cb->s;
    stunt_connect_result res = {
        .outcome = (uint8_t)outcome,
        .icmp_type = icmp_type,
        .icmp_code = icmp_code,
        .elapsed_ms = (uint32_t)((uv_hrtime() - cb->start_ns) / 1000000u),
    };
    const struct sockaddr *target = (struct sockaddr *)&cb->target;
    const struct sockaddr *local = (struct sockaddr *)&cb->local;
    char a1[64], a2[64];
    if (outcome == STUNT_ICMP)
        SLOG(s, NTCP_LOG_DEBUG, "connect-back %s -> %s: icmp type %u code %u in %u ms",
             ntcp_addr_str(local, a1, sizeof(a1)), ntcp_addr_str(target, a2, sizeof(a2)),
             icmp_type, icmp_code, res.elapsed_ms);
    else
        SLOG(s, NTCP_LOG_DEBUG, "connect-back %s -> %s: %s in %u ms",
             ntcp_addr_str(local, a1, sizeof(a1)), ntcp_addr_str(target, a2, sizeof(a2)),
             outcome_names[outcome], res.elapsed_ms);
    uint8_t buf[RESP_MAX];
    stun_builder b;
    if (outcome == STUNT_CONNECTED) {
        /* The indication carries the request's transaction id so that the
         * client can tell this connection from any other arriving SYN. */
        stun_build_init(&b, buf, sizeof(buf), STUN_BINDING, STUN_INDICATION, cb->tid, cb->rfc3489);
        stun_build_addr(&b, cb->rfc3489 ? STUN_ATTR_MAPPED_ADDRESS : STUN_ATTR_XOR_MAPPED_ADDRESS,
                        target);
        stun_build_addr(&b, cb->rfc3489 ? STUN_ATTR_SOURCE_ADDRESS : STUN_ATTR_RESPONSE_ORIGIN,
                        local);
        if (!cb->rfc3489) {
            stun_build_string(&b, STUN_ATTR_SOFTWARE, SOFTWARE_NAME);
            stun_build_fingerprint(&b);
        }
        int len = stun_build_finish(&b, NULL);
        if (len > 0) {
            ssize_t w = send(cb->fd, buf, (size_t)len, MSG_NOSIGNAL);
            (void)w; /* a fresh connection's send buffer is empty */
        }
    }
    if (cb->conn) {
        stun_build_init(&b, buf, sizeof(buf), STUNT_CONNECT_BACK, STUN_SUCCESS, cb->tid,
                        cb->rfc3489);
        stunt_build_connect_result(&b, &res);
        stun_build_addr(&b, cb->rfc3489 ? STUN_ATTR_MAPPED_ADDRESS : STUN_ATTR_XOR_MAPPED_ADDRESS,
                        target);
        stun_build_addr(&b, cb->rfc3489 ? STUN_ATTR_SOURCE_ADDRESS : STUN_ATTR_RESPONSE_ORIGIN,
                        local);
        if (!cb->rfc3489) {
            stun_build_string(&b, STUN_ATTR_SOFTWARE, SOFTWARE_NAME);
            if (cb->fingerprint)
                stun_build_fingerprint(&b);
        }
        int len = stun_build_finish(&b, NULL);
        stuntd_conn *c = cb->conn;
        c->ncb--;
        cb->conn = NULL;
        if (len > 0)
            stuntd_conn_send(c, buf, (size_t)len);
    }
    if (outcome != STUNT_CONNECTED) {
        stuntd_cb_close(cb, false);
        return;
    }
    cb->state = CB_LINGER;
    uv_poll_start(&cb->poll, UV_READABLE, cb_linger_poll_cb);
    uv_timer_start(&cb->timer, cb_linger_timer_cb, CB_LINGER_MS, 0);
}

static void cb_failed(stuntd_cb *cb, int err)
{
    uint8_t type = 0, code = 0;
    if (read_icmp(cb->fd, &type, &code))
        cb_finish(cb, STUNT_ICMP, type, code);
    else if (err == ECONNREFUSED || err == ECONNRESET)
        cb_finish(cb, STUNT_REFUSED, 0, 0);
    else if (err == ETIMEDOUT)
        cb_finish(cb, STUNT_TIMEOUT, 0, 0);
    else
        cb_finish(cb, STUNT_LOCAL, 0, 0);
}

static void cb_linger_poll_cb(uv_poll_t *h, int status, int events)
{
    stuntd_cb *cb = h->data;
    (void)events;
    if (status < 0) {
        stuntd_cb_close(cb, true);
        return;
    }
    uint8_t junk[2048];
    for (;;) {
        ssize_t n = read(cb->fd, junk, sizeof(junk));
        if (n > 0)
            continue;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        /* The client closed first: our close leaves TIME_WAIT on its side. */
        stuntd_cb_close(cb, n < 0);
        return;
    }
}

static void cb_linger_timer_cb(uv_timer_t *t)
{
    stuntd_cb_close(t->data, true);
}

static void cb_connect_poll_cb(uv_poll_t *h, int status, int events)
{
    stuntd_cb *cb = h->data;
    (void)events;
    int err = 0;
    socklen_t el = sizeof(err);
    if (getsockopt(cb->fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0)
        err = errno;
    if (err == 0 && status < 0)
        err = ECONNREFUSED;
    uv_timer_stop(&cb->timer);
    uv_poll_stop(&cb->poll);
    if (err == 0)
        cb_finish(cb, STUNT_CONNECTED, 0, 0);
    else
        cb_failed(cb, err);
}

static void cb_connect_timer_cb(uv_timer_t *t)
{
    stuntd_cb *cb = t->data;
    uv_poll_stop(&cb->poll);
    /* An ICMP error may have raced the timer. */
    uint8_t type = 0, code = 0;
    if (read_icmp(cb->fd, &type, &code))
        cb_finish(cb, STUNT_ICMP, type, code);
    else
        cb_finish(cb, STUNT_TIMEOUT, 0, 0);
}

static void cb_reply_error(stuntd_conn *c, const stun_msg *m, int code, const char *reason)
{
    uint8_t buf[RESP_MAX];
    size_t len = stuntd_build_error(m, code, reason, buf, sizeof(buf));
    if (len)
        stuntd_conn_send(c, buf, len);
}

void stuntd_cb_start(stuntd_conn *c, const stun_msg *m)
{
    ntcp_stuntd *s = c->s;
    uint32_t flags = 0;
    char a1[64];
    if (stun_get_change_request(m, &flags) < 0 ||
        (flags & (STUN_CHANGE_IP | STUN_CHANGE_PORT)) == 0) {
        cb_reply_error(c, m, 400, "Connect-back needs CHANGE-REQUEST");
        return;
    }
    uint32_t timeout = CB_DEFAULT_TIMEOUT_MS;
    if (stun_get_u32(m, STUNT_ATTR_TIMEOUT, &timeout) < 0)
        timeout = CB_DEFAULT_TIMEOUT_MS;
    if (timeout > s->cfg.cb_max_timeout_ms)
        timeout = s->cfg.cb_max_timeout_ms;
    if (timeout < CB_MIN_TIMEOUT_MS)
        timeout = CB_MIN_TIMEOUT_MS;
    if (c->ncb >= CB_PER_CONN || s->st.cb_pending >= s->cfg.cb_max_pending) {
        s->st.cb_rate_limited++;
        cb_reply_error(c, m, 429, "Too Many Connect-Backs");
        return;
    }
    if (!rl_allow(&s->cb_rl, (struct sockaddr *)&c->peer, uv_now(s->loop))) {
        s->st.cb_rate_limited++;
        SLOG(s, NTCP_LOG_DEBUG, "connect-back for %s: rate limited",
             ntcp_addr_str((struct sockaddr *)&c->peer, a1, sizeof(a1)));
        cb_reply_error(c, m, 429, "Rate Limited");
        return;
    }
    stuntd_cb *cb = calloc(1, sizeof(*cb));
    if (!cb) {
        cb_reply_error(c, m, 500, "Server Error");
        return;
    }
    const stuntd_sock *l = c->l;
    int ip = l->ip ^ ((flags & STUN_CHANGE_IP) ? 1 : 0);
    int port = l->port ^ ((flags & STUN_CHANGE_PORT) ? 1 : 0);
    cb->s = s;
    cb->conn = c;
    cb->fd = -1;
    memcpy(cb->tid, m->tid, STUN_TID_SIZE);
    cb->rfc3489 = m->rfc3489;
    cb->fingerprint = m->fingerprint >= 0;
    cb->local = s->fam[l->fam].addr[ip][port];
    cb->target = c->peer; /* never anywhere else: no scanning through us */
    cb->start_ns = uv_hrtime();
    cb->next = s->cbs;
    if (s->cbs)
        s->cbs->prev = cb;
    s->cbs = cb;
    c->ncb++;
    s->st.cb_pending++;
    s->st.cb_started++;
    s->handles++;
    uv_timer_init(s->loop, &cb->timer);
    cb->timer.data = cb;
    cb->handles = 1;

    const struct sockaddr *local = (struct sockaddr *)&cb->local;
    const struct sockaddr *target = (struct sockaddr *)&cb->target;
    /* Bound below, after IPV6_V6ONLY, which only counts before the bind. */
    int fd = ntcp_sock_open(local->sa_family, SOCK_STREAM, NTCP_SOCK_REUSE, NULL);
    if (fd < 0) {
        SLOG(s, NTCP_LOG_WARN, "connect-back socket: %s", strerror(-fd));
        cb_finish(cb, STUNT_LOCAL, 0, 0);
        return;
    }
    cb->fd = fd;
    int one = 1;
    if (local->sa_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    /* With RECVERR the ICMP error that aborts the connect is queued with its
     * type and code, which tells it apart from an RST. */
    ntcp_sock_recverr(fd, local->sa_family, true);
    if (bind(fd, local, stuntd_salen(local)) < 0) {
        SLOG(s, NTCP_LOG_WARN, "connect-back: cannot bind %s: %s",
             ntcp_addr_str(local, a1, sizeof(a1)), strerror(errno));
        cb_finish(cb, STUNT_LOCAL, 0, 0);
        return;
    }
    uv_poll_init(s->loop, &cb->poll, fd);
    cb->poll.data = cb;
    cb->poll_init = true;
    cb->handles = 2;
    int rc;
    do
        rc = connect(fd, target, stuntd_salen(target));
    while (rc < 0 && errno == EINTR);
    if (rc == 0) {
        cb_finish(cb, STUNT_CONNECTED, 0, 0);
        return;
    }
    if (errno != EINPROGRESS) {
        int e = errno;
        if (e == EADDRNOTAVAIL || e == EADDRINUSE)
            SLOG(s, NTCP_LOG_WARN, "connect-back %s -> %s: %s", ntcp_addr_str(local, a1, sizeof(a1)),
                 ntcp_addr_str(target, (char[64]){0}, 64), strerror(e));
        cb_failed(cb, e);
        return;
    }
    uv_poll_start(&cb->poll, UV_WRITABLE, cb_connect_poll_cb);
    uv_timer_start(&cb->timer, cb_connect_timer_cb, timeout, 0);
}
