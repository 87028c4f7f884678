/*
 * e2e_udp.c: one peer of the end-to-end UDP hole-punching test in the lab
 * (tests/udp/e2e_udp_lab.py runs one in host a and one in host b): UDP
 * discovery against ntcp-stuntd, a broker session with UDP keepalives and
 * the profile blob, a UDP CONNECT, udp_plan_make(), the punch (key proof
 * included) from the session's keepalive socket, the keepalive on the
 * punched path, then N datagrams each way, every one checked (sequence
 * number and content; the zero-length keepalives are dropped, as an
 * application must). Prints one JSON line; exits 0 on success, 1 on a
 * traversal or transfer failure, 2 on a usage or setup error.
 *
 *   e2e_udp --name N --stun HOST[:PORT] --broker IP:PORT --broker-udp IP:PORT
 *           (--peer NAME | --wait) [--timeout-ms MS] [--count N]
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <openssl/evp.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "addr.h"
#include "e2e_common.h"
#include "identity.h"
#include "ntcp.h"
#include "plan.h"
#include "session.h"
#include "udp_plan.h"
#include "udp_punch.h"
#include "verify.h"

#define DGRAM_SIZE 200

typedef struct app {
    uv_loop_t loop;
    uv_timer_t timer, retry;
    const char *name, *peer;
    bool requester;
    uint32_t timeout_ms;
    unsigned count;
    EVP_PKEY *key;
    ntcp_session *s;
    plan_profile me_prof;
    bool registered, going, done;
    unsigned asks, waits;
    udp_plan pl;
    char plan_json[2048];
    int rc;
    ntcp_udp_punch_result res;
    bool have_res;
    char err[256];
} app;

static void fail(app *a, const char *why)
{
    if (a->done)
        return;
    a->done = true;
    snprintf(a->err, sizeof a->err, "%s", why);
    a->rc = 1;
    uv_stop(&a->loop);
}

static void on_punch(udp_puncher *p, const ntcp_udp_punch_result *r, void *user)
{
    (void)p;
    app *a = user;
    a->res = *r;
    a->have_res = true;
    a->done = true;
    uv_stop(&a->loop);
}

static void ask(app *a, uint64_t delay_ms);

/* Both ends: the plan from both profiles, the keepalive socket, the punch. */
static void go(app *a, const broker_go *g)
{
    if (a->going)
        return;
    if (g->transport != BROKER_TRANSPORT_UDP) {
        fail(a, "CONNECT-GO is not for UDP");
        return;
    }
    uint64_t t_go = uv_now(&a->loop);
    plan_profile peer;
    int rc = plan_profile_decode(g->peer.profile, g->peer.profile_len, &peer);
    if (rc < 0 || !peer.has[PLAN_UDP4]) {
        fail(a, "the peer's profile blob is missing or has no UDP behaviour");
        return;
    }
    udp_plan_input in;
    udp_plan_input_init(&in);
    in.me.udp = a->me_prof.b[PLAN_UDP4];
    ntcp_session_public_udp(a->s, &in.me.public_udp);
    in.me.rtt_ms = a->me_prof.rtt_ms;
    in.peer.udp = peer.b[PLAN_UDP4];
    in.peer.public_udp = g->peer.public_udp;
    in.peer.npriv = g->peer.nprivate < PLAN_MAX_PRIVATE ? g->peer.nprivate : PLAN_MAX_PRIVATE;
    for (size_t i = 0; i < in.peer.npriv; i++)
        in.peer.priv[i] = g->peer.private_addr[i];
    in.peer.rtt_ms = peer.rtt_ms;
    in.initiator = g->role == BROKER_ROLE_REQUESTER;
    rc = udp_plan_make(&in, &a->pl);
    if (rc == NTCP_EINVAL && a->asks < 20) {
        /* A UDP keepalive has not reached the broker yet: the requester
         * asks again, the target waits for that next GO. */
        fprintf(stderr, "%s: %s; again\n", a->name, a->pl.reason);
        if (a->requester)
            ask(a, 300);
        return;
    }
    a->going = true;
    udp_plan_format(&a->pl, a->plan_json, sizeof a->plan_json);
    ntcp_udp_punch_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.plan = &a->pl;
    /* The next keepalive of the session's new socket would be one more
     * mapping on a sequential NAT, inside the predicted window: after the
     * punch. */
    if (ntcp_session_take_udp(a->s, 30000, &cfg.fd, NULL, NULL) < 0) {
        fail(a, "no UDP keepalive socket to take");
        return;
    }
    cfg.start_at = t_go + g->start_delay_ms;
    if (ntcp_verify_params_from_go(&cfg.verify, g) < 0) {
        close(cfg.fd);
        fail(a, "CONNECT-GO without the peer's key");
        return;
    }
    cfg.verify.key = a->key;
    cfg.verify.name = a->name;
    if (ntcp_udp_punch_start(&a->loop, &cfg, on_punch, a, NULL) < 0) {
        close(cfg.fd);
        fail(a, "cannot start the punch");
    }
}

static void on_go(ntcp_session *s, const broker_go *g, void *user)
{
    (void)s;
    go(user, g);
}

static void on_connect(ntcp_session *s, int err, int code, const broker_go *g, void *arg)
{
    (void)s;
    app *a = arg;
    if (a->done || a->going)
        return;
    if (err == 0) {
        go(a, g);
        return;
    }
    fprintf(stderr, "%s: connect: %s (code %d)\n", a->name, ntcp_strerror(err), code);
    /* The peer may not have registered yet, or (on a lossy link) an answer
     * came late: ask again. */
    if ((err == NTCP_ENOTFOUND || err == NTCP_EUNREACHABLE || err == NTCP_ETIMEDOUT) &&
        a->asks < 100) {
        ask(a, 200);
        return;
    }
    char why[128];
    snprintf(why, sizeof why, "connect refused: %s (code %d)", ntcp_strerror(err), code);
    fail(a, why);
}

static void ask_now(uv_timer_t *t)
{
    app *a = t->data;
    struct sockaddr_storage u;
    if (a->done || a->going)
        return;
    /* Our own UDP mapping must be known first (the GO we get carries the
     * peer's; the one the peer gets carries ours). */
    if (ntcp_session_public_udp(a->s, &u) != 0) {
        if (++a->waits % 20 == 0)
            fprintf(stderr, "%s: our UDP keepalive has no answer yet\n", a->name);
        ask(a, 100);
        return;
    }
    a->asks++;
    if (ntcp_session_connect_ex(a->s, a->peer, BROKER_TRANSPORT_UDP, 5000, on_connect, a) < 0)
        fail(a, "ntcp_session_connect_ex failed");
}

static void ask(app *a, uint64_t delay_ms)
{
    uv_timer_start(&a->retry, ask_now, delay_ms, 0);
}

static void on_state(ntcp_session *s, int state, int err, int code, void *user)
{
    (void)s;
    (void)err;
    (void)code;
    app *a = user;
    if (state == NTCP_SESSION_REGISTERED && !a->registered) {
        a->registered = true;
        fprintf(stderr, "%s: registered\n", a->name);
        if (a->requester)
            ask(a, 0);
    }
}

static void on_deadline(uv_timer_t *t)
{
    fail(t->data, "overall timeout (no punch result)");
}

/* Datagram i from a sender: "<tag> <i>" then bytes derived from both. */
static size_t fill(uint8_t *b, bool requester, unsigned i)
{
    int n = snprintf((char *)b, DGRAM_SIZE, "%c %u ", requester ? 'R' : 'T', i);
    for (size_t k = (size_t)n; k < DGRAM_SIZE; k++)
        b[k] = (uint8_t)(i * 31u + k * 7u + (requester ? 1u : 2u));
    return DGRAM_SIZE;
}

typedef struct xfer {
    unsigned sent, got, bad, zero, dup, stray;
    uint64_t ms;
} xfer;

/* Sends count datagrams (paced: 2 per ms) and receives the peer's
 * count, each checked against what that sender must have sent. The
 * keepalive runs meanwhile; its zero-length datagrams are counted and
 * dropped. */
static int transfer(app *a, int fd, unsigned count, uint32_t timeout_ms, xfer *x)
{
    memset(x, 0, sizeof *x);
    int big = 1 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    uint64_t t0 = e2e_mono_ms();
    uint8_t *seen = calloc(count, 1);
    uint8_t buf[2048], want[DGRAM_SIZE];
    int rc = 1;
    while (x->got < count || x->sent < count) {
        uint64_t t = e2e_mono_ms();
        if (t - t0 > timeout_ms)
            break;
        uv_run(&a->loop, UV_RUN_NOWAIT); /* the keepalive's timer */
        /* 2 per ms: the lab runs several pairs at once on a small machine,
         * and a burst would overflow a queue on the way (softirq backlog,
         * socket buffer) where a real link would pace them anyway. */
        unsigned due = (unsigned)((t - t0) * 2 + 2);
        while (x->sent < count && x->sent < due) {
            size_t n = fill(buf, a->requester, x->sent);
            if (send(fd, buf, n, MSG_DONTWAIT) < 0) {
                if (errno == EAGAIN || errno == ECONNREFUSED)
                    break; /* a full buffer; an ICMP error of an earlier one: retried */
                goto out;
            }
            x->sent++;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        poll(&p, 1, x->sent < count ? 1 : 50);
        for (;;) {
            ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
            if (r < 0)
                break;
            if (r == 0) {
                x->zero++; /* a keepalive */
                continue;
            }
            udp_dgram d;
            if (udp_dgram_parse(buf, (size_t)r, &d) == 0 && d.kind != UDP_DG_PROBE) {
                /* A repeated PROOF or PICK after a lost confirmation
                 * (docs/verify.md, "Over UDP"): dropped, as ntcp's readers do. */
                x->stray++;
                continue;
            }
            unsigned i;
            char tag;
            if (sscanf((char *)buf, "%c %u ", &tag, &i) != 2 || tag != (a->requester ? 'T' : 'R') ||
                i >= count) {
                x->bad++;
                continue;
            }
            fill(want, !a->requester, i);
            if ((size_t)r != DGRAM_SIZE || memcmp(buf, want, DGRAM_SIZE) != 0) {
                x->bad++;
                continue;
            }
            if (seen[i]) {
                x->dup++;
                continue;
            }
            seen[i] = 1;
            x->got++;
        }
    }
    rc = x->got == count && x->sent == count && x->bad == 0 ? 0 : 1;
out:
    /* The peer may still miss a few of ours: keep reading its last ones
     * briefly is not needed, UDP sends never wait for the receiver. */
    free(seen);
    x->ms = e2e_mono_ms() - t0;
    return rc;
}

static void usage(void)
{
    fprintf(stderr, "usage: e2e_udp --name N --stun HOST[:PORT] --broker IP:PORT --broker-udp IP:PORT\n"
                    "               (--peer NAME | --wait) [--timeout-ms MS] [--count N]\n");
}

int main(int argc, char **argv)
{
    app a;
    memset(&a, 0, sizeof a);
    a.timeout_ms = 30000;
    a.count = 1000;
    const char *stun = NULL, *broker = NULL, *broker_udp = NULL;
    bool wait = false;
    static const struct option opts[] = {
        {"name", 1, 0, 'n'},       {"stun", 1, 0, 's'}, {"broker", 1, 0, 'b'},
        {"broker-udp", 1, 0, 'u'}, {"peer", 1, 0, 'p'}, {"wait", 0, 0, 'w'},
        {"timeout-ms", 1, 0, 't'}, {"count", 1, 0, 'c'}, {0, 0, 0, 0}};
    for (int c; (c = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
        switch (c) {
        case 'n': a.name = optarg; break;
        case 's': stun = optarg; break;
        case 'b': broker = optarg; break;
        case 'u': broker_udp = optarg; break;
        case 'p': a.peer = optarg; break;
        case 'w': wait = true; break;
        case 't': a.timeout_ms = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'c': a.count = (unsigned)strtoul(optarg, NULL, 10); break;
        default: usage(); return 2;
        }
    }
    if (!a.name || !stun || !broker || !broker_udp || (!a.peer) == !wait || a.count == 0) {
        usage();
        return 2;
    }
    a.requester = a.peer != NULL;
    /* 1. Discovery, UDP over IPv4; 2. the profile blob. */
    ntcp_nat_profile_t np;
    uint8_t blob[PLAN_BLOB_MAX];
    int blen = 0;
    uint64_t discover_ms = 0;
    int prc = e2e_profile("e2e_udp", a.name, stun, NTCP_DISCOVER_UDP | NTCP_DISCOVER_IPV4, false,
                          &np, blob, &blen, &a.me_prof, &discover_ms);
    if (prc != 0)
        return prc;

    /* 3. The broker session, with UDP keepalives. */
    if (ntcp_identity_generate(&a.key) < 0)
        return 2;
    if (uv_loop_init(&a.loop) < 0)
        return 2;
    uv_timer_init(&a.loop, &a.timer);
    uv_timer_init(&a.loop, &a.retry);
    a.timer.data = a.retry.data = &a;
    uv_timer_start(&a.timer, on_deadline, a.timeout_ms, 0);
    ntcp_session_config sc;
    memset(&sc, 0, sizeof sc);
    sc.broker = broker;
    sc.broker_udp = broker_udp;
    sc.name = a.name;
    sc.key = a.key;
    sc.profile = blob;
    sc.profile_len = (size_t)blen;
    sc.on_go = on_go;
    sc.on_state = on_state;
    sc.user = &a;
    if (ntcp_session_start(&a.loop, &sc, &a.s) < 0) {
        fprintf(stderr, "e2e_udp: session start failed\n");
        return 2;
    }
    uv_run(&a.loop, UV_RUN_DEFAULT);
    uv_timer_stop(&a.timer);

    /* 4. The result, a keepalive, and the datagrams. */
    xfer x;
    memset(&x, 0, sizeof x);
    int xrc = -1;
    unsigned kas = 0;
    if (a.have_res && a.res.err == 0) {
        ntcp_udp_keepalive *k = NULL;
        ntcp_udp_keepalive_start(&a.loop, a.res.fd, 100, &k);
        xrc = transfer(&a, a.res.fd, a.count, 10000, &x);
        if (k) {
            kas = ntcp_udp_keepalive_count(k);
            ntcp_udp_keepalive_stop(k);
        }
        /* Let the peer's last datagrams and keepalives land before the
         * socket goes (a closed port would answer with ICMP errors). */
        usleep(300000);
        close(a.res.fd);
        a.rc = xrc == 0 ? 0 : 1;
    } else {
        a.rc = 1;
    }
    static char rj[2048];
    if (a.have_res)
        ntcp_udp_punch_result_json(&a.res, rj, sizeof rj);
    else
        snprintf(rj, sizeof rj, "null");
    char pub[64] = "";
    struct sockaddr_storage pa;
    memset(&pa, 0, sizeof pa);
    if (a.s && ntcp_session_public_addr(a.s, &pa) == 0)
        ntcp_addr_str((struct sockaddr *)&pa, pub, sizeof pub);
    printf("{\"name\":\"%s\",\"role\":\"%s\",\"ok\":%s,\"classic\":\"%s\",\"public\":\"%s\","
           "\"discover_ms\":%llu,\"method\":\"%s\",\"ms\":%lld,\"sent\":%u,\"received\":%u,"
           "\"bad\":%u,\"dup\":%u,\"stray\":%u,\"keepalives_sent\":%u,\"keepalives_seen\":%u,\"transfer_ms\":%llu,"
           "\"error\":\"%s\",\"punch\":%s,\"plan\":%s}\n",
           a.name, a.requester ? "requester" : "target", a.rc == 0 ? "true" : "false",
           ntcp_classic_name(&np.udp4), pub, (unsigned long long)discover_ms,
           a.have_res && a.res.err == 0 ? udp_method_name(a.res.method) : "none",
           a.have_res ? (long long)a.res.elapsed_ms : -1LL, x.sent, x.got, x.bad, x.dup, x.stray, kas,
           x.zero, (unsigned long long)x.ms, a.err, rj, a.plan_json[0] ? a.plan_json : "null");
    fflush(stdout);

    ntcp_session_close(a.s);
    uv_walk(&a.loop, e2e_close_handle, NULL);
    uv_run(&a.loop, UV_RUN_DEFAULT);
    uv_loop_close(&a.loop);
    EVP_PKEY_free(a.key);
    return a.rc;
}
