/*
 * tcp.c: STUN over TCP for ntcp-stuntd. Each connection reads big chunks into
 * a stun_framer, answers every whole message, and writes all the answers of
 * one read at once; while a write is pending it stops reading (backpressure).
 * Connections are capped in number and closed when idle.
 */
#include <errno.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "stuntd_int.h"

static void conn_poll_cb(uv_poll_t *h, int status, int events);

static void conn_handle_closed(uv_handle_t *h)
{
    stuntd_conn *c = h->data;
    if (--c->handles > 0)
        return;
    ntcp_stuntd *s = c->s;
    free(c);
    stuntd_handle_closed(s);
}

void stuntd_conn_close(stuntd_conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    ntcp_stuntd *s = c->s;
    stuntd_cb_detach(c);
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->st.tcp_open--;
    uv_close((uv_handle_t *)&c->poll, conn_handle_closed);
    uv_close((uv_handle_t *)&c->timer, conn_handle_closed);
    close(c->fd);
    c->fd = -1;
}

static void conn_set_events(stuntd_conn *c)
{
    /* While answers wait to be written, read nothing more. */
    int ev = c->out_end > c->out_start ? UV_WRITABLE : UV_READABLE;
    if (ev != c->poll_events) {
        c->poll_events = ev;
        uv_poll_start(&c->poll, ev, conn_poll_cb);
    }
}

/* Writes what it can; returns -1 when the connection was closed. */
static int conn_flush(stuntd_conn *c)
{
    while (c->out_end > c->out_start) {
        ssize_t w = send(c->fd, c->out + c->out_start, c->out_end - c->out_start, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            SLOG(c->s, NTCP_LOG_DEBUG, "tcp write: %s", strerror(errno));
            stuntd_conn_close(c);
            return -1;
        }
        c->out_start += (size_t)w;
        c->s->st.tcp_out += (size_t)w;
    }
    c->out_start = c->out_end = 0;
    return 0;
}

static size_t conn_out_room(stuntd_conn *c)
{
    if (c->out_start > 0 && CONN_OUT - c->out_end < RESP_MAX * (CB_PER_CONN + 1)) {
        memmove(c->out, c->out + c->out_start, c->out_end - c->out_start);
        c->out_end -= c->out_start;
        c->out_start = 0;
    }
    return CONN_OUT - c->out_end;
}

void stuntd_conn_send(stuntd_conn *c, const uint8_t *msg, size_t len)
{
    if (c->closing || conn_out_room(c) < len)
        return; /* cannot happen: room is kept for connect-back answers */
    memcpy(c->out + c->out_end, msg, len);
    c->out_end += len;
    if (conn_flush(c) == 0)
        conn_set_events(c);
}

/* Answers the whole messages held, as long as the output has room (keeping
 * room for the answers of connect-backs in flight). Returns the number of
 * messages taken, or -1 if the connection was closed. */
static int conn_process(stuntd_conn *c)
{
    ntcp_stuntd *s = c->s;
    stun_msg m;
    int done = 0;
    while (conn_out_room(c) >= RESP_MAX * (CB_PER_CONN + 1)) {
        const uint8_t *msg;
        size_t len;
        int r = stun_framer_next(&c->fr, &msg, &len);
        if (r == 0)
            break;
        if (r < 0) {
            char abuf[64];
            SLOG(s, NTCP_LOG_DEBUG, "tcp %s: %s: closing",
                 ntcp_addr_str((struct sockaddr *)&c->peer, abuf, sizeof(abuf)),
                 r == NTCP_ERANGE ? "message too large" : "stream is not STUN");
            stuntd_conn_close(c);
            return -1;
        }
        s->st.tcp_in++;
        done++;
        stuntd_reply rep;
        int act = stuntd_handle(s, c->l, (struct sockaddr *)&c->peer, msg, len,
                                c->out + c->out_end, RESP_MAX, &rep, &m);
        if (act == ACT_REPLY) {
            c->out_end += rep.len;
        } else if (act == ACT_CONNECT_BACK) {
            stuntd_cb_start(c, &m);
            if (c->closing)
                return -1;
        }
    }
    return done;
}

static void conn_read(stuntd_conn *c)
{
    for (int round = 0; round < 4; round++) {
        if (c->out_end > c->out_start)
            return;
        uint8_t *p;
        size_t avail;
        stun_framer_space(&c->fr, &p, &avail);
        if (avail == 0) {
            /* Full of whole messages we had no room to answer yet: they go
             * once the output drains. */
            return;
        }
        ssize_t n = read(c->fd, p, avail);
        if (n == 0) {
            /* The client closed (or half-closed): answer what it sent, then
             * close. */
            conn_process(c);
            if (!c->closing) {
                conn_flush(c);
                stuntd_conn_close(c);
            }
            return;
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                SLOG(c->s, NTCP_LOG_DEBUG, "tcp read: %s", strerror(errno));
                stuntd_conn_close(c);
            }
            return;
        }
        stun_framer_commit(&c->fr, (size_t)n);
        c->last_ms = uv_now(c->s->loop);
        if (conn_process(c) < 0 || conn_flush(c) < 0)
            return;
        if ((size_t)n < avail)
            return; /* drained the socket */
    }
}

static void conn_poll_cb(uv_poll_t *h, int status, int events)
{
    stuntd_conn *c = h->data;
    if (status < 0) {
        stuntd_conn_close(c);
        return;
    }
    if (events & UV_WRITABLE) {
        /* Output drained: answer what was held back, then read again. */
        if (conn_flush(c) < 0)
            return;
        while (c->out_end == c->out_start) {
            int done = conn_process(c);
            if (done < 0 || conn_flush(c) < 0)
                return;
            if (done == 0)
                break;
        }
        if (c->out_end == c->out_start)
            conn_read(c);
    } else if (events & (UV_READABLE | UV_DISCONNECT)) {
        conn_read(c);
    }
    if (!c->closing)
        conn_set_events(c);
}

static void conn_timer_cb(uv_timer_t *t)
{
    stuntd_conn *c = t->data;
    ntcp_stuntd *s = c->s;
    uint64_t now = uv_now(s->loop);
    uint64_t idle = s->cfg.tcp_idle_ms;
    /* The timer is re-armed lazily here rather than on every read. */
    if (now - c->last_ms < idle || c->ncb > 0) {
        uint64_t left = c->ncb > 0 ? idle : idle - (now - c->last_ms);
        uv_timer_start(&c->timer, conn_timer_cb, left ? left : 1, 0);
        return;
    }
    char abuf[64];
    SLOG(s, NTCP_LOG_DEBUG, "tcp %s: idle for %u ms: closing",
         ntcp_addr_str((struct sockaddr *)&c->peer, abuf, sizeof(abuf)), s->cfg.tcp_idle_ms);
    s->st.tcp_idle_closed++;
    stuntd_conn_close(c);
}

void stuntd_tcp_accept_cb(uv_poll_t *h, int status, int events)
{
    stuntd_sock *l = h->data;
    ntcp_stuntd *s = l->s;
    (void)events;
    if (status < 0) {
        uv_poll_start(h, UV_READABLE, stuntd_tcp_accept_cb);
        return;
    }
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage peer;
        socklen_t pl = sizeof(peer);
        int fd = accept4(l->fd, (struct sockaddr *)&peer, &pl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                SLOG(s, NTCP_LOG_WARN, "accept: %s", strerror(errno));
            return;
        }
        char abuf[64];
        if (s->st.tcp_open >= s->cfg.tcp_max_conns) {
            s->st.tcp_rejected++;
            SLOG(s, NTCP_LOG_DEBUG, "tcp %s: %u connections open: refused",
                 ntcp_addr_str((struct sockaddr *)&peer, abuf, sizeof(abuf)), s->st.tcp_open);
            close(fd);
            continue;
        }
        stuntd_conn *c = malloc(sizeof(*c));
        if (!c) {
            close(fd);
            continue;
        }
        memset(c, 0, offsetof(stuntd_conn, in));
        c->s = s;
        c->l = l;
        c->fd = fd;
        c->peer = peer;
        c->last_ms = uv_now(s->loop);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        stun_framer_init(&c->fr, c->in, sizeof(c->in));
        uv_poll_init(s->loop, &c->poll, fd);
        uv_timer_init(s->loop, &c->timer);
        c->poll.data = c->timer.data = c;
        c->handles = 2;
        c->poll_events = UV_READABLE;
        uv_poll_start(&c->poll, UV_READABLE, conn_poll_cb);
        if (s->cfg.tcp_idle_ms)
            uv_timer_start(&c->timer, conn_timer_cb, s->cfg.tcp_idle_ms, 0);
        c->next = s->conns;
        if (s->conns)
            s->conns->prev = c;
        s->conns = c;
        s->handles++;
        s->st.tcp_open++;
        s->st.tcp_accepted++;
        SLOG(s, NTCP_LOG_DEBUG, "tcp %s: accepted",
             ntcp_addr_str((struct sockaddr *)&peer, abuf, sizeof(abuf)));
    }
}
