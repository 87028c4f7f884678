/*
 * portmux.c: the shared listener of a context's session port (portmux.h).
 */
#include "portmux.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <netinet/in.h>

#include "addr.h"
#include "ntcp.h"
#include "stun.h"

typedef struct mlistener mlistener;

struct ntcp_portmux_reg {
    ntcp_portmux_reg *next;
    mlistener *l;
    uint8_t sid[VERIFY_SESSION_ID_SIZE];
    ntcp_portmux_take_cb cb;
    void *user;
};

/* Listeners and pending connections start with their mux: the handle's
 * data points at the owner, which on_closed frees. */
struct mlistener {
    ntcp_portmux *m;
    mlistener *next;
    struct sockaddr_storage local;
    int fd;
    uv_poll_t poll;
    unsigned nregs;
};

/* An accepted connection waiting for its HELLO. */
typedef struct mpending {
    ntcp_portmux *m;
    struct mpending *next;
    struct sockaddr_storage local, from;
    int fd;
    uv_poll_t poll;
    uint64_t deadline;
    size_t want; /* bytes the HELLO needs: its header first, then the whole */
} mpending;

struct ntcp_portmux {
    uv_loop_t *loop;
    uv_timer_t timer; /* expires pending connections */
    mlistener *ls;
    ntcp_portmux_reg *regs;
    mpending *pend;
    unsigned npend;
    unsigned handles; /* libuv handles not yet closed (the timer included) */
    bool freed;
    ntcp_portmux_stats st;
};

static void maybe_release(ntcp_portmux *m)
{
    if (m->freed && m->handles == 0)
        free(m);
}

static void on_closed(uv_handle_t *h)
{
    ntcp_portmux *m;
    if (h->type == UV_TIMER) {
        m = h->data;
    } else {
        m = *(ntcp_portmux **)h->data; /* a listener's or pending connection's */
        free(h->data);
    }
    m->handles--;
    maybe_release(m);
}

static bool same_local(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    return ntcp_sockaddr_equal((const struct sockaddr *)a, (const struct sockaddr *)b);
}

/* ---- handing a connection over ---- */

/* Offers fd to the registrations of session sid on local (sid NULL: every
 * registration there, which are then all of one session). Returns true when
 * one took it. A callback may remove registrations: the walk restarts from
 * the head after each decline, skipping those already asked. */
static bool hand_over(ntcp_portmux *m, const struct sockaddr_storage *local, const uint8_t *sid,
                      int fd, const struct sockaddr_storage *from)
{
    ntcp_portmux_reg *asked[16];
    size_t nasked = 0;
    for (;;) {
        ntcp_portmux_reg *r = m->regs;
        for (; r; r = r->next) {
            if (!same_local(&r->l->local, local))
                continue;
            if (sid && memcmp(r->sid, sid, VERIFY_SESSION_ID_SIZE) != 0)
                continue;
            bool seen = false;
            for (size_t k = 0; k < nasked; k++)
                seen = seen || asked[k] == r;
            if (!seen)
                break;
        }
        if (!r || nasked == sizeof asked / sizeof *asked)
            return false;
        asked[nasked++] = r;
        if (r->cb(r->user, fd, from))
            return true;
    }
}

static void drop(ntcp_portmux *m, int fd)
{
    /* An RST, not a FIN: nothing of it lingers on the shared port. */
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
    m->st.dropped++;
}

static void pending_close(mpending *p)
{
    ntcp_portmux *m = p->m;
    for (mpending **pp = &m->pend; *pp; pp = &(*pp)->next)
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    m->npend--;
    uv_poll_stop(&p->poll);
    uv_close((uv_handle_t *)&p->poll, on_closed);
}

/* The connection's first bytes, peeked: a whole HELLO names its session. */
static void on_pending(uv_poll_t *h, int status, int events)
{
    mpending *p = h->data;
    ntcp_portmux *m = p->m;
    uint8_t buf[VERIFY_MAX_MESSAGE];
    ssize_t n = status < 0 ? -1 : recv(p->fd, buf, sizeof buf, MSG_PEEK);
    if (n < 0 && status >= 0 && (errno == EAGAIN || errno == EINTR))
        return;
    int fd = p->fd;
    if (n > 0 && (size_t)n >= STUN_HEADER_SIZE && p->want == STUN_HEADER_SIZE) {
        size_t len = (size_t)((buf[2] << 8) | buf[3]) + STUN_HEADER_SIZE;
        if (len <= VERIFY_MAX_MESSAGE) {
            p->want = len;
            /* Wake when the whole message is in, not on every segment. */
            int lowat = (int)len;
            setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &lowat, sizeof lowat);
        } else {
            n = -1; /* larger than any HELLO */
        }
    }
    /* Part of a message and then the peer's FIN: no more is coming, and
     * the socket would stay readable (SO_RCVLOWAT does not hold past a
     * FIN), waking the loop without end. */
    if (n > 0 && (size_t)n < p->want && (events & UV_DISCONNECT))
        n = -1;
    if (n > 0 && (size_t)n < p->want)
        return; /* SO_RCVLOWAT wakes us when the rest is in */
    struct sockaddr_storage local = p->local, from = p->from;
    size_t want = p->want;
    pending_close(p);
    ntcp_verify_msg vm;
    if (n <= 0 || ntcp_verify_parse(&vm, buf, want, NULL) < 0 || vm.method != VERIFY_HELLO) {
        drop(m, fd);
        return;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof one);
    if (hand_over(m, &local, vm.session_id, fd, &from))
        m->st.by_session++;
    else
        drop(m, fd);
}

static void on_timer(uv_timer_t *t)
{
    ntcp_portmux *m = t->data;
    uint64_t now = uv_now(m->loop);
    for (mpending *p = m->pend, *n; p; p = n) {
        n = p->next;
        if (now >= p->deadline) {
            int fd = p->fd;
            pending_close(p);
            drop(m, fd);
        }
    }
    if (!m->pend)
        uv_timer_stop(&m->timer);
}

/* Counts the sessions registered on local: 0, 1, or 2 for "several". */
static int sessions_on(const ntcp_portmux *m, const struct sockaddr_storage *local)
{
    const uint8_t *first = NULL;
    for (const ntcp_portmux_reg *r = m->regs; r; r = r->next) {
        if (!same_local(&r->l->local, local))
            continue;
        if (!first)
            first = r->sid;
        else if (memcmp(first, r->sid, VERIFY_SESSION_ID_SIZE) != 0)
            return 2;
    }
    return first ? 1 : 0;
}

static void wait_hello(ntcp_portmux *m, const mlistener *l, int fd,
                       const struct sockaddr_storage *from)
{
    if (m->npend >= PORTMUX_MAX_PENDING) {
        drop(m, fd);
        return;
    }
    mpending *p = calloc(1, sizeof *p);
    if (!p || uv_poll_init(m->loop, &p->poll, fd) < 0) {
        free(p);
        drop(m, fd);
        return;
    }
    p->poll.data = p;
    m->handles++;
    p->m = m;
    p->fd = fd;
    p->local = l->local;
    p->from = *from;
    p->want = STUN_HEADER_SIZE;
    p->deadline = uv_now(m->loop) + PORTMUX_PENDING_MS;
    int lowat = STUN_HEADER_SIZE;
    setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &lowat, sizeof lowat);
    p->next = m->pend;
    m->pend = p;
    m->npend++;
    uv_poll_start(&p->poll, UV_READABLE | UV_DISCONNECT, on_pending);
    if (!uv_is_active((uv_handle_t *)&m->timer))
        uv_timer_start(&m->timer, on_timer, 250, 250);
}

static void on_listen(uv_poll_t *h, int status, int events)
{
    (void)events;
    mlistener *l = h->data;
    ntcp_portmux *m = l->m;
    if (status < 0)
        return;
    for (;;) {
        struct sockaddr_storage from;
        socklen_t sl = sizeof from;
        int fd = accept4(l->fd, (struct sockaddr *)&from, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        m->st.accepted++;
        /* The listener may close under a callback (its last registration
         * removed): keep what the rest needs. */
        struct sockaddr_storage local = l->local;
        int n = sessions_on(m, &local);
        if (n == 1) {
            if (hand_over(m, &local, NULL, fd, &from))
                m->st.direct++;
            else
                drop(m, fd);
        } else if (n == 0) {
            drop(m, fd);
        } else {
            wait_hello(m, l, fd, &from);
        }
        /* Was it closed under the callback? */
        mlistener *x = m->ls;
        while (x && x != l)
            x = x->next;
        if (!x)
            return;
    }
}

/* ---- listeners ---- */

static int listener_open(ntcp_portmux *m, const struct sockaddr_storage *local, mlistener **out,
                         int *sys)
{
    int fd = socket(local->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *sys = errno;
        return NTCP_ESYS;
    }
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0 ||
        bind(fd, (const struct sockaddr *)local, ntcp_sa_len(local)) < 0 ||
        listen(fd, SOMAXCONN) < 0) {
        *sys = errno;
        close(fd);
        return NTCP_ESYS;
    }
    mlistener *l = calloc(1, sizeof *l);
    if (!l || uv_poll_init(m->loop, &l->poll, fd) < 0) {
        free(l);
        close(fd);
        return NTCP_ENOMEM;
    }
    l->poll.data = l;
    m->handles++;
    l->m = m;
    l->fd = fd;
    l->local = *local;
    l->next = m->ls;
    m->ls = l;
    m->st.listeners++;
    uv_poll_start(&l->poll, UV_READABLE, on_listen);
    *out = l;
    return 0;
}

static void listener_close(mlistener *l)
{
    ntcp_portmux *m = l->m;
    for (mlistener **pp = &m->ls; *pp; pp = &(*pp)->next)
        if (*pp == l) {
            *pp = l->next;
            break;
        }
    m->st.listeners--;
    uv_poll_stop(&l->poll);
    /* Connections still in its backlog are reset by the close. */
    close(l->fd);
    uv_close((uv_handle_t *)&l->poll, on_closed); /* frees l */
}

/* ---- API ---- */

int ntcp_portmux_new(uv_loop_t *loop, ntcp_portmux **out)
{
    ntcp_portmux *m = calloc(1, sizeof *m);
    if (!m)
        return NTCP_ENOMEM;
    m->loop = loop;
    uv_timer_init(loop, &m->timer);
    m->timer.data = m;
    m->handles = 1;
    *out = m;
    return 0;
}

void ntcp_portmux_free(ntcp_portmux *m)
{
    if (!m)
        return;
    while (m->regs) {
        ntcp_portmux_reg *r = m->regs;
        m->regs = r->next;
        free(r);
    }
    while (m->pend) {
        int fd = m->pend->fd;
        pending_close(m->pend);
        drop(m, fd);
    }
    while (m->ls)
        listener_close(m->ls);
    m->freed = true;
    uv_timer_stop(&m->timer);
    uv_close((uv_handle_t *)&m->timer, on_closed);
}

int ntcp_portmux_add(ntcp_portmux *m, const struct sockaddr_storage *local,
                     const uint8_t session_id[VERIFY_SESSION_ID_SIZE], ntcp_portmux_take_cb cb,
                     void *user, ntcp_portmux_reg **out, int *sys)
{
    int ignored = 0;
    if (!sys)
        sys = &ignored;
    *sys = 0;
    if (!m || m->freed || !local || !session_id || !cb || !out ||
        (local->ss_family != AF_INET && local->ss_family != AF_INET6) || ntcp_sa_port(local) == 0)
        return NTCP_EINVAL;
    ntcp_portmux_reg *r = calloc(1, sizeof *r);
    if (!r)
        return NTCP_ENOMEM;
    mlistener *l = m->ls;
    while (l && !same_local(&l->local, local))
        l = l->next;
    if (!l) {
        int rc = listener_open(m, local, &l, sys);
        if (rc < 0) {
            free(r);
            return rc;
        }
    }
    l->nregs++;
    r->l = l;
    memcpy(r->sid, session_id, sizeof r->sid);
    r->cb = cb;
    r->user = user;
    r->next = m->regs;
    m->regs = r;
    *out = r;
    return 0;
}

void ntcp_portmux_remove(ntcp_portmux_reg *r)
{
    if (!r)
        return;
    mlistener *l = r->l;
    ntcp_portmux *m = l->m;
    for (ntcp_portmux_reg **pp = &m->regs; *pp; pp = &(*pp)->next)
        if (*pp == r) {
            *pp = r->next;
            break;
        }
    free(r);
    if (--l->nregs == 0)
        listener_close(l);
}

void ntcp_portmux_get_stats(const ntcp_portmux *m, ntcp_portmux_stats *out)
{
    *out = m->st;
    out->registrations = 0;
    for (const ntcp_portmux_reg *r = m->regs; r; r = r->next)
        out->registrations++;
    out->pending = m->npend;
}
