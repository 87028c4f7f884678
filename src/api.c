/*
 * api.c: ntcp_listen, ntcp_accept, ntcp_connect, ntcp_udp_punch, their
 * asynchronous forms and ntcp_stop(): the callers' side of the context's
 * runtime (rt.h: its types, threads and who owns what). The request queue,
 * the runtime thread's start and stop, and on its loop the requests'
 * dispatch and the tick (deadlines). Bring-up: rt_bringup.c; connections:
 * rt_conn.c.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <uv.h>

#include "broker_proto.h"
#include "context.h"
#include "discover.h"
#include "engine.h"
#include "ntcp.h"
#include "portmux.h"
#include "relay.h"
#include "rt.h"
#include "session.h"
#include "udp_punch.h"

#define DEFAULT_TIMEOUT_MS 30000
#define TICK_MS 50

void rt_info_init(ntcp_conn_info_t *i, const char *peer, bool initiator)
{
    memset(i, 0, sizeof *i);
    i->size = sizeof *i;
    snprintf(i->peer, sizeof i->peer, "%s", peer ? peer : "");
    i->initiator = initiator;
    i->broker_ms = i->start_ms = i->connected_ms = i->verified_ms = -1;
}

/* Copies what the caller's (possibly older, smaller) struct has room for. */
static void info_copy_out(ntcp_conn_info_t *dst, const ntcp_conn_info_t *src)
{
    if (!dst)
        return;
    size_t n = dst->size && dst->size < sizeof *src ? dst->size : sizeof *src;
    memcpy(dst, src, n);
    dst->size = n;
}

/* ---- completing requests ---- */

void rt_req_complete(ntcp_rt *rt, req *r, int status, const ntcp_conn_info_t *info)
{
    if (r->blocking) {
        pthread_mutex_lock(&rt->mu);
        r->status = status;
        if (info)
            r->info = *info;
        else /* "filled in every case" (ntcp.h), also when ended before it started */
            rt_info_init(&r->info, r->kind == R_CONNECT ? r->name : "", r->kind == R_CONNECT);
        r->done = true;
        pthread_cond_broadcast(&rt->cv);
        pthread_mutex_unlock(&rt->mu);
        return;
    }
    if (r->kind == R_LISTEN) {
        if (r->listen_cb)
            r->listen_cb(rt->ctx, status, r->user);
    } else if (r->conn_cb) {
        ntcp_conn_info_t empty;
        if (!info) {
            rt_info_init(&empty, r->kind == R_CONNECT ? r->name : "", r->kind == R_CONNECT);
            info = &empty;
        }
        r->conn_cb(rt->ctx, status, info, r->user);
    } else if (status >= 0) {
        close(status);
    }
    free(r);
}

void rt_unlink_waiting(ntcp_rt *rt, req *r)
{
    for (req **p = &rt->waiting; *p; p = &(*p)->next)
        if (*p == r) {
            *p = r->next;
            return;
        }
}

/* An incoming verified connection: to an accept callback, or the queue. */
void rt_deliver_incoming(ntcp_rt *rt, int fd, const ntcp_conn_info_t *info)
{
    if (rt->acb_head) {
        req *r = rt->acb_head;
        rt->acb_head = r->next;
        if (!rt->acb_head)
            rt->acb_tail = NULL;
        rt_req_complete(rt, r, fd, info);
        return;
    }
    queued *q = malloc(sizeof *q);
    if (!q) {
        close(fd);
        return;
    }
    q->next = NULL;
    q->fd = fd;
    q->info = *info;
    pthread_mutex_lock(&rt->mu);
    if (rt->aq_tail)
        rt->aq_tail->next = q;
    else
        rt->aq_head = q;
    rt->aq_tail = q;
    pthread_cond_broadcast(&rt->cv);
    pthread_mutex_unlock(&rt->mu);
}

/* ---- requests on the loop ---- */

static void handle(ntcp_rt *rt, req *r)
{
    if (r->kind == R_UDP_CLOSE) {
        rt_udp_close_fd(rt, r->status);
        rt_req_complete(rt, r, 0, NULL);
        return;
    }
    if (r->kind == R_ACCEPT_CB) {
        /* A connection already queued goes to it at once. */
        pthread_mutex_lock(&rt->mu);
        queued *q = rt->aq_head;
        if (q) {
            rt->aq_head = q->next;
            if (!rt->aq_head)
                rt->aq_tail = NULL;
        }
        pthread_mutex_unlock(&rt->mu);
        if (q) {
            rt_req_complete(rt, r, q->fd, &q->info);
            free(q);
            return;
        }
        r->next = NULL;
        if (rt->acb_tail)
            rt->acb_tail->next = r;
        else
            rt->acb_head = r;
        rt->acb_tail = r;
        return;
    }
    const char *name = r->kind == R_LISTEN ? r->name : rt->ctx->name;
    if (r->kind == R_LISTEN && !r->name[0])
        name = rt->ctx->name;
    if (rt->phase != P_IDLE && name && strcmp(name, rt->name) != 0 && r->kind == R_LISTEN) {
        ntcp_conn_info_t info;
        rt_info_init(&info, "", false);
        snprintf(info.detail, sizeof info.detail,
                 "this context is registered as %s: one name per context", rt->name);
        rt_req_complete(rt, r, NTCP_EINVAL, &info);
        return;
    }
    if (rt->phase == P_REGISTERED) {
        rt_req_registered(rt, r);
        return;
    }
    if (rt->phase == P_IDLE && !name) { /* a connect with no name registered */
        rt_req_complete(rt, r, NTCP_ECONFIG, NULL);
        return;
    }
    r->next = rt->waiting;
    rt->waiting = r;
    if (rt->phase == P_IDLE) {
        snprintf(rt->name, sizeof rt->name, "%s", name);
        rt_bring_up(rt);
    }
}

static void on_wake(uv_async_t *a)
{
    ntcp_rt *rt = a->data;
    pthread_mutex_lock(&rt->mu);
    req *list = rt->rq_head;
    rt->rq_head = rt->rq_tail = NULL;
    bool stop = rt->stopping;
    pthread_mutex_unlock(&rt->mu);
    while (list) {
        req *n = list->next;
        list->next = NULL;
        if (stop)
            rt_req_complete(rt, list, NTCP_ECLOSED, NULL);
        else
            handle(rt, list);
        list = n;
    }
    if (!stop)
        return;

    /* Stop: every request and connection ends, every handle closes. */
    rt_fail_waiting(rt, NTCP_ECLOSED, "the context is being freed");
    while (rt->acb_head) {
        req *r = rt->acb_head;
        rt->acb_head = r->next;
        rt_req_complete(rt, r, NTCP_ECLOSED, NULL);
    }
    rt->acb_tail = NULL;
    for (conn *c = rt->conns, *n; c; c = n) {
        n = c->next;
        if (c->e) {
            c->cancel_err = NTCP_ECLOSED;
            ntcp_engine_cancel(c->e); /* its callback frees c */
        } else if (c->p) {
            c->cancel_err = NTCP_ECLOSED;
            ntcp_udp_punch_cancel(c->p); /* its callback frees c */
        } else if (c->relay) {
            c->cancel_err = NTCP_ECLOSED;
            ntcp_relay_cancel(c->relay); /* its callback frees c */
        } else if (c->urelay_wait && !c->finished) {
            snprintf(c->urelay_why, sizeof c->urelay_why, "the context is being freed");
            rt_conn_udp_relay_failed(c, NTCP_ECLOSED); /* frees c */
        } else if (c->retry_at && !c->finished) {
            snprintf(c->info.detail, sizeof c->info.detail, "the context is being freed");
            rt_conn_finish(c, NTCP_ECLOSED); /* no broker answer pending: frees c */
        }
        /* Otherwise c waits for the broker's answer: closing the session
         * below gives it (NTCP_ECLOSED), and rt_conn_on_connect_answer ends it. */
    }
    ntcp_relay_close_all(&rt->relays); /* allocations of handed-over relayed sockets */
    ntcp_relay_bridge_close_all(&rt->bridges); /* and the UDP paths' bridges */
    /* The handed-over UDP paths' keepalives (the application's descriptors
     * stay open). */
    rt_keepalives_stop_all(rt);
    if (rt->s) {
        ntcp_session_close(rt->s); /* pending connects complete with NTCP_ECLOSED */
        rt->s = NULL;
    }
    rt->phase = P_IDLE;
    if (rt->sampling)
        ntcp_port_sample_cancel(rt->sampling);
    /* Every engine was cancelled above and removed its registrations. */
    ntcp_portmux_free(rt->mux);
    rt->mux = NULL;
    uv_close((uv_handle_t *)&rt->tick, NULL);
    uv_close((uv_handle_t *)&rt->wake, NULL);
}

static void on_tick(uv_timer_t *t)
{
    ntcp_rt *rt = t->data;
    uint64_t now = rt_mono_ms();
    for (req *w = rt->waiting, *n; w; w = n) {
        n = w->next;
        if (now < w->deadline)
            continue;
        rt_unlink_waiting(rt, w);
        ntcp_conn_info_t info;
        rt_info_init(&info, w->kind == R_CONNECT ? w->name : "", w->kind == R_CONNECT);
        snprintf(info.detail, sizeof info.detail, "%s",
                 rt->phase == P_DISCOVER     ? "timed out discovering the NAT"
                 : rt->phase == P_REGISTERED ? "timed out waiting for this context's "
                                               "connection under way to end"
                                             : "timed out registering with the broker");
        rt_req_complete(rt, w, NTCP_ETIMEDOUT, &info);
    }
    for (conn *c = rt->conns, *n; c; c = n) {
        n = c->next;
        if (c->urelay_wait && !c->finished && now >= c->urelay_deadline) {
            snprintf(c->urelay_why, sizeof c->urelay_why, "%s",
                     c->bridge ? "the relay's allocation did not finish in time"
                               : "no relayed address from the peer in time");
            rt_conn_udp_relay_failed(c, NTCP_ETIMEDOUT); /* frees c */
            continue;
        }
        if (c->retry_at && !c->finished && c->r && now >= c->retry_at && now < c->r->deadline) {
            /* UDP: ask the broker again (the peer's mapping was unknown). */
            c->retry_at = 0;
            int rc = ntcp_session_connect_ex(rt->s, c->r->name, BROKER_TRANSPORT_UDP,
                                             (uint32_t)(c->r->deadline - now),
                                             rt_conn_on_connect_answer, c);
            if (rc < 0) {
                snprintf(c->info.detail, sizeof c->info.detail, "cannot ask the broker: %s",
                         ntcp_strerror(rc));
                rt_conn_finish(c, rc);
            }
            continue;
        }
        if (!c->r || c->finished || now < c->r->deadline)
            continue;
        if (c->e) {
            c->cancel_err = NTCP_ETIMEDOUT;
            ntcp_engine_cancel(c->e);
        } else if (c->p) {
            c->cancel_err = NTCP_ETIMEDOUT;
            ntcp_udp_punch_cancel(c->p);
        } else if (c->relay) {
            c->cancel_err = NTCP_ETIMEDOUT;
            ntcp_relay_cancel(c->relay); /* on_relay ends c */
        } else if (c->urelay_wait) {
            snprintf(c->urelay_why, sizeof c->urelay_why, "timed out waiting for the relay");
            rt_conn_udp_relay_failed(c, NTCP_ETIMEDOUT); /* frees c */
        } else if (c->retry_at) {
            snprintf(c->info.detail, sizeof c->info.detail,
                     "timed out: the broker never had the peer's UDP mapping");
            rt_conn_finish(c, NTCP_ETIMEDOUT); /* no broker answer pending: frees c */
        } else {
            snprintf(c->info.detail, sizeof c->info.detail, "%s",
                     c->going ? "timed out" : "timed out waiting for the broker's answer");
            c->finished = true;
            req *r = c->r;
            c->r = NULL;
            rt_req_complete(rt, r, NTCP_ETIMEDOUT, &c->info);
            /* the session's answer will still come: rt_conn_on_connect_answer frees c */
        }
    }
    rt_run_held(rt);
    rt_accept_all_sync(rt); /* a policy set since: offers again */
}

static void *rt_main(void *arg)
{
    ntcp_rt *rt = arg;
    uv_run(&rt->loop, UV_RUN_DEFAULT);
    /* Closing callbacks of the session and engines. */
    uv_run(&rt->loop, UV_RUN_DEFAULT);
    /* Connections still in the list were waiting for a broker answer that
     * the closed session will never give. */
    while (rt->conns)
        rt_conn_free(rt->conns);
    pthread_mutex_lock(&rt->mu);
    rt->stopped = true;
    pthread_cond_broadcast(&rt->cv);
    pthread_mutex_unlock(&rt->mu);
    return NULL;
}

/* A public call's use of the runtime: rt_enter() counts the caller in
 * rt->users (and starts the runtime when create says so and there is none);
 * rt_leave() counts it out. ntcp_stop() waits until no caller is in, so a
 * call never touches a runtime being freed; after it every call returns
 * NTCP_ECLOSED. */
static ntcp_rt *get_rt(ntcp_t *ctx, int *err);

static ntcp_rt *rt_enter(ntcp_t *ctx, bool create, int *err)
{
    pthread_mutex_lock(&ctx->rt_mu);
    if (ctx->stopped) {
        pthread_mutex_unlock(&ctx->rt_mu);
        *err = NTCP_ECLOSED;
        return NULL;
    }
    bool have = ctx->rt != NULL;
    pthread_mutex_unlock(&ctx->rt_mu);
    if (!have && !create) {
        *err = NTCP_ENOTREADY;
        return NULL;
    }
    return get_rt(ctx, err); /* NTCP_ENOTREADY races are harmless: it then starts one */
}

static void rt_leave(ntcp_rt *rt)
{
    pthread_mutex_lock(&rt->mu);
    rt->users--;
    pthread_cond_broadcast(&rt->cv);
    pthread_mutex_unlock(&rt->mu);
}

/* The context's runtime, counting the caller in (rt_enter()). */
static ntcp_rt *get_rt(ntcp_t *ctx, int *err)
{
    pthread_mutex_lock(&ctx->rt_mu);
    if (ctx->stopped) {
        pthread_mutex_unlock(&ctx->rt_mu);
        *err = NTCP_ECLOSED;
        return NULL;
    }
    ntcp_rt *rt = ctx->rt;
    if (rt) {
        pthread_mutex_lock(&rt->mu);
        rt->users++;
        pthread_mutex_unlock(&rt->mu);
        pthread_mutex_unlock(&ctx->rt_mu);
        return rt;
    }
    *err = NTCP_ENOMEM;
    rt = calloc(1, sizeof *rt);
    if (!rt)
        goto out;
    rt->ctx = ctx;
    rt->prof_status = NTCP_ENOTREADY;
    const char *dbg = getenv("NTCP_DEBUG");
    rt->debug = dbg && *dbg && strcmp(dbg, "0") != 0;
    pthread_mutex_init(&rt->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&rt->cv, &ca);
    pthread_condattr_destroy(&ca);
    *err = NTCP_ESYS;
    if (uv_loop_init(&rt->loop) < 0)
        goto fail;
    uv_async_init(&rt->loop, &rt->wake, on_wake);
    rt->wake.data = rt;
    uv_timer_init(&rt->loop, &rt->tick);
    rt->tick.data = rt;
    uv_timer_start(&rt->tick, on_tick, TICK_MS, TICK_MS);
    if (ntcp_portmux_new(&rt->loop, &rt->mux) < 0)
        rt->mux = NULL; /* engines then listen alone, one at a time (portmux.h) */
    if (pthread_create(&rt->th, NULL, rt_main, rt) != 0) {
        uv_close((uv_handle_t *)&rt->wake, NULL);
        uv_close((uv_handle_t *)&rt->tick, NULL);
        ntcp_portmux_free(rt->mux);
        uv_run(&rt->loop, UV_RUN_DEFAULT);
        uv_loop_close(&rt->loop);
        goto fail;
    }
    rt->users = 1;
    ctx->rt = rt;
    pthread_mutex_unlock(&ctx->rt_mu);
    return rt;
fail:
    pthread_cond_destroy(&rt->cv);
    pthread_mutex_destroy(&rt->mu);
    free(rt);
    rt = NULL;
out:
    pthread_mutex_unlock(&ctx->rt_mu);
    return NULL;
}

void ntcp_rt_shutdown(ntcp_t *ctx)
{
    pthread_mutex_lock(&ctx->rt_mu);
    ctx->stopped = true;
    ntcp_rt *rt = ctx->rt;
    bool other = rt && rt->shutting;
    if (rt)
        rt->shutting = true;
    pthread_mutex_unlock(&ctx->rt_mu);
    if (other) {
        /* Another thread's ntcp_stop() or ntcp_free() is ending it: wait
         * until it is gone (rare: both at once), never join or free it twice. */
        for (;;) {
            pthread_mutex_lock(&ctx->rt_mu);
            bool gone = ctx->rt == NULL;
            pthread_mutex_unlock(&ctx->rt_mu);
            if (gone)
                return;
            struct timespec ms = {0, 1000000};
            nanosleep(&ms, NULL);
        }
    }
    if (!rt)
        return;
    pthread_mutex_lock(&rt->mu);
    rt->stopping = true;
    pthread_cond_broadcast(&rt->cv);
    pthread_mutex_unlock(&rt->mu);
    uv_async_send(&rt->wake);
    pthread_join(rt->th, NULL);
    pthread_mutex_lock(&rt->mu);
    while (rt->users > 0) /* callers leave (their requests ended with NTCP_ECLOSED) */
        pthread_cond_wait(&rt->cv, &rt->mu);
    pthread_mutex_unlock(&rt->mu);
    pthread_mutex_lock(&ctx->rt_mu);
    ctx->rt = NULL;
    pthread_mutex_unlock(&ctx->rt_mu);
    for (queued *q = rt->aq_head, *n; q; q = n) {
        n = q->next;
        close(q->fd);
        free(q);
    }
    EVP_PKEY_free(rt->key);
    uv_loop_close(&rt->loop);
    pthread_cond_destroy(&rt->cv);
    pthread_mutex_destroy(&rt->mu);
    free(rt);
}

void ntcp_stop(ntcp_t *ctx)
{
    if (ctx)
        ntcp_rt_shutdown(ctx);
}

/* ---- the public functions ---- */

static int check_ready(ntcp_t *ctx)
{
    if (!ctx->broker)
        return NTCP_ECONFIG;
    if (ctx->name)
        return 0;
    /* No configured name, but ntcp_listen(ctx, name, ...) registered one:
     * connects go out under it (ntcp.h). */
    bool named = false;
    pthread_mutex_lock(&ctx->rt_mu);
    if (ctx->rt) {
        pthread_mutex_lock(&ctx->rt->mu);
        named = ctx->rt->listening;
        pthread_mutex_unlock(&ctx->rt->mu);
    }
    pthread_mutex_unlock(&ctx->rt_mu);
    return named ? 0 : NTCP_ECONFIG;
}

static uint64_t deadline_of(int timeout_ms)
{
    return rt_mono_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : DEFAULT_TIMEOUT_MS);
}

/* Queues r for the loop. Returns 0, or NTCP_ECLOSED (r not queued). */
static int submit(ntcp_rt *rt, req *r)
{
    pthread_mutex_lock(&rt->mu);
    if (rt->stopping) {
        pthread_mutex_unlock(&rt->mu);
        return NTCP_ECLOSED;
    }
    r->next = NULL;
    if (rt->rq_tail)
        rt->rq_tail->next = r;
    else
        rt->rq_head = r;
    rt->rq_tail = r;
    pthread_mutex_unlock(&rt->mu);
    uv_async_send(&rt->wake);
    return 0;
}

/* Waits for a blocking request to be done; returns its status. */
static int wait_done(ntcp_rt *rt, req *r)
{
    pthread_mutex_lock(&rt->mu);
    while (!r->done)
        pthread_cond_wait(&rt->cv, &rt->mu);
    pthread_mutex_unlock(&rt->mu);
    return r->status;
}

static int check_name(const char *name)
{
    return name && broker_name_valid(name, strlen(name)) ? 0 : NTCP_EINVAL;
}

int ntcp_listen(ntcp_t *ctx, const char *name, int timeout_ms)
{
    if (!ctx || (name && check_name(name) < 0))
        return NTCP_EINVAL;
    if (!ctx->broker || (!name && !ctx->name))
        return NTCP_ECONFIG;
    int err = 0;
    ntcp_rt *rt = rt_enter(ctx, true, &err);
    if (!rt)
        return err;
    req r;
    memset(&r, 0, sizeof r);
    r.kind = R_LISTEN;
    snprintf(r.name, sizeof r.name, "%s", name ? name : ctx->name);
    r.t0 = rt_mono_ms();
    r.deadline = deadline_of(timeout_ms);
    r.blocking = true;
    int rc = submit(rt, &r);
    if (rc == 0)
        rc = wait_done(rt, &r);
    rt_leave(rt);
    return rc;
}

int ntcp_listen_async(ntcp_t *ctx, const char *name, ntcp_listen_cb cb, void *user_ptr)
{
    if (!ctx || !cb || (name && check_name(name) < 0))
        return NTCP_EINVAL;
    if (!ctx->broker || (!name && !ctx->name))
        return NTCP_ECONFIG;
    int err = 0;
    ntcp_rt *rt = rt_enter(ctx, true, &err);
    if (!rt)
        return err;
    req *r = calloc(1, sizeof *r);
    if (!r) {
        rt_leave(rt);
        return NTCP_ENOMEM;
    }
    r->kind = R_LISTEN;
    snprintf(r->name, sizeof r->name, "%s", name ? name : ctx->name);
    r->t0 = rt_mono_ms();
    r->deadline = deadline_of(0);
    r->listen_cb = cb;
    r->user = user_ptr;
    int rc = submit(rt, r);
    if (rc < 0)
        free(r);
    rt_leave(rt);
    return rc;
}

static int connect_common(ntcp_t *ctx, const char *peer, ntcp_transport_t transport,
                          int timeout_ms, req *r)
{
    if (!ctx || check_name(peer) < 0 || (transport != NTCP_TCP && transport != NTCP_UDP))
        return NTCP_EINVAL;
    int rc = check_ready(ctx);
    if (rc < 0)
        return rc;
    r->kind = R_CONNECT;
    snprintf(r->name, sizeof r->name, "%s", peer);
    r->transport = transport;
    r->t0 = rt_mono_ms();
    r->deadline = deadline_of(timeout_ms);
    return 0;
}

static int connect_blocking(ntcp_t *ctx, const char *peer, ntcp_transport_t transport,
                            ntcp_conn_info_t *info, int timeout_ms)
{
    req r;
    memset(&r, 0, sizeof r);
    int rc = connect_common(ctx, peer, transport, timeout_ms, &r);
    if (rc == 0) {
        ntcp_rt *rt = rt_enter(ctx, true, &rc);
        if (rt) {
            r.blocking = true;
            rc = submit(rt, &r);
            if (rc == 0) {
                rc = wait_done(rt, &r);
                rt_leave(rt);
                info_copy_out(info, &r.info);
                return rc;
            }
            rt_leave(rt);
        }
    }
    if (info) {
        ntcp_conn_info_t tmp;
        rt_info_init(&tmp, peer, true);
        tmp.transport = transport;
        snprintf(tmp.detail, sizeof tmp.detail, "%s",
                 rc == NTCP_ECONFIG ? "no broker or no name configured" : ntcp_strerror(rc));
        info_copy_out(info, &tmp);
    }
    return rc;
}

int ntcp_connect(ntcp_t *ctx, const char *peer, ntcp_conn_info_t *info, int timeout_ms)
{
    return connect_blocking(ctx, peer, NTCP_TCP, info, timeout_ms);
}

int ntcp_udp_punch(ntcp_t *ctx, const char *peer, ntcp_conn_info_t *info, int timeout_ms)
{
    return connect_blocking(ctx, peer, NTCP_UDP, info, timeout_ms);
}

static int connect_async(ntcp_t *ctx, const char *peer, ntcp_transport_t transport,
                         int timeout_ms, ntcp_conn_cb cb, void *user_ptr)
{
    if (!cb)
        return NTCP_EINVAL;
    req *r = calloc(1, sizeof *r);
    if (!r)
        return NTCP_ENOMEM;
    int rc = connect_common(ctx, peer, transport, timeout_ms, r);
    ntcp_rt *rt = rc == 0 ? rt_enter(ctx, true, &rc) : NULL;
    if (rt) {
        r->conn_cb = cb;
        r->user = user_ptr;
        rc = submit(rt, r);
        rt_leave(rt);
    }
    if (rc < 0)
        free(r);
    return rc;
}

int ntcp_connect_async(ntcp_t *ctx, const char *peer, int timeout_ms, ntcp_conn_cb cb,
                       void *user_ptr)
{
    return connect_async(ctx, peer, NTCP_TCP, timeout_ms, cb, user_ptr);
}

int ntcp_udp_punch_async(ntcp_t *ctx, const char *peer, int timeout_ms, ntcp_conn_cb cb,
                         void *user_ptr)
{
    return connect_async(ctx, peer, NTCP_UDP, timeout_ms, cb, user_ptr);
}

int ntcp_udp_close(ntcp_t *ctx, int fd)
{
    if (!ctx || fd < 0)
        return NTCP_EINVAL;
    int err = 0;
    ntcp_rt *rt = rt_enter(ctx, false, &err);
    if (!rt) /* no runtime, or stopped: no keepalive runs */
        return close(fd) == 0 ? 0 : NTCP_ESYS;
    req r;
    memset(&r, 0, sizeof r);
    r.kind = R_UDP_CLOSE;
    r.status = fd;
    r.blocking = true;
    int rc = submit(rt, &r);
    if (rc == 0)
        wait_done(rt, &r);
    rt_leave(rt);
    if (rc < 0) /* stopping: the keepalives are gone with the runtime */
        return close(fd) == 0 ? 0 : NTCP_ESYS;
    return 0;
}

int ntcp_udp_is_control(const void *buf, size_t len)
{
    if (len == 0)
        return 1; /* a keepalive */
    udp_dgram d;
    return buf && udp_dgram_parse(buf, len, &d) == 0;
}

int ntcp_accept(ntcp_t *ctx, ntcp_conn_info_t *info, int timeout_ms)
{
    if (!ctx)
        return NTCP_EINVAL;
    int err = 0;
    ntcp_rt *rt = rt_enter(ctx, false, &err);
    if (!rt)
        return err;
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    if (timeout_ms > 0) {
        until.tv_sec += timeout_ms / 1000;
        until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
    }
    pthread_mutex_lock(&rt->mu);
    if (!rt->listening) {
        pthread_mutex_unlock(&rt->mu);
        rt_leave(rt);
        return NTCP_ENOTREADY;
    }
    int rc = NTCP_ETIMEDOUT;
    for (;;) {
        if (rt->stopping) {
            rc = NTCP_ECLOSED;
            break;
        }
        queued *q = rt->aq_head;
        if (q) {
            rt->aq_head = q->next;
            if (!rt->aq_head)
                rt->aq_tail = NULL;
            rc = q->fd;
            info_copy_out(info, &q->info);
            free(q);
            break;
        }
        if (timeout_ms == 0)
            break;
        if (timeout_ms < 0)
            pthread_cond_wait(&rt->cv, &rt->mu);
        else if (pthread_cond_timedwait(&rt->cv, &rt->mu, &until) == ETIMEDOUT)
            timeout_ms = 0; /* one last look */
    }
    pthread_mutex_unlock(&rt->mu);
    rt_leave(rt);
    return rc;
}

int ntcp_accept_async(ntcp_t *ctx, ntcp_conn_cb cb, void *user_ptr)
{
    if (!ctx || !cb)
        return NTCP_EINVAL;
    int err = 0;
    ntcp_rt *rt = rt_enter(ctx, false, &err);
    if (!rt)
        return err;
    req *r = calloc(1, sizeof *r);
    int rc = NTCP_ENOMEM;
    if (r) {
        r->kind = R_ACCEPT_CB;
        r->conn_cb = cb;
        r->user = user_ptr;
        rc = submit(rt, r);
        if (rc < 0)
            free(r);
    }
    rt_leave(rt);
    return rc;
}

int ntcp_set_policy(ntcp_t *ctx, ntcp_policy_fn fn, void *user_ptr)
{
    if (!ctx)
        return NTCP_EINVAL;
    ctx->policy = fn;
    ctx->policy_user = user_ptr;
    return 0;
}

int ntcp_get_profile(ntcp_t *ctx, ntcp_nat_profile_t *profile)
{
    if (!ctx || !profile)
        return NTCP_EINVAL;
    memset(profile, 0, sizeof *profile);
    profile->size = sizeof *profile;
    pthread_mutex_lock(&ctx->rt_mu);
    ntcp_rt *rt = ctx->rt;
    int st = NTCP_ENOTREADY;
    if (rt) {
        pthread_mutex_lock(&rt->mu);
        *profile = rt->prof;
        st = rt->prof_status;
        pthread_mutex_unlock(&rt->mu);
    }
    pthread_mutex_unlock(&ctx->rt_mu);
    return st;
}
