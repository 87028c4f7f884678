/*
 * e2e.c: one peer of the end-to-end traversal test in the lab
 * (tests/engine/e2e_lab.py runs one in host a and one in host b): discovery
 * against ntcp-stuntd, a broker session carrying the profile blob, CONNECT-GO,
 * plan_make(), the attempt engine, then 1 MiB each way on the winning socket,
 * checked by SHA-256. Prints one JSON line and exits 0 on success, 1 on a
 * traversal or transfer failure, 2 on a usage or setup error.
 *
 *   e2e --name N --stun HOST[:PORT] --broker IP:PORT (--peer NAME | --wait)
 *       [--timeout-ms MS] [--bytes N] [--raw | --raw-only stunt1|natblaster]
 *
 * --raw: the raw methods may be planned (the profile's raw flag when this
 * process may use raw sockets; the broker's SPOOF answer for STUNT#1).
 * --raw-only M: the same, with only the plan's RAW_SYN attempts kept, as
 * method M (stunt1 needs a broker started with --spoof).
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
#include "engine.h"
#include "identity.h"
#include "ntcp.h"
#include "plan.h"
#include "plan_go.h"
#include "raw.h"
#include "session.h"
#include "verify.h"

typedef struct app {
    uv_loop_t loop;
    uv_timer_t timer; /* overall deadline, and connect retries */
    const char *name, *peer, *broker;
    bool requester;
    uint32_t timeout_ms;
    size_t bytes;
    EVP_PKEY *key;
    ntcp_session *s;
    struct sockaddr_storage broker_addr;
    plan_profile me_prof; /* my blob, decoded back: what the peer sees */
    ntcp_nat_behaviour_t tcp4;
    uint16_t session_port;
    struct sockaddr_storage priv; /* the private address reported to the broker (port 0) */
    bool registered, going, done;
    uint64_t t_go;
    plan pl;
    char plan_json[4096];
    int rc; /* exit code */
    ntcp_engine_result res;
    bool have_res;
    bool raw;                  /* --raw or --raw-only */
    ntcp_method_t raw_only;    /* --raw-only: NTCP_METHOD_STUNT1 / NATBLASTER, else NONE */
    ntcp_engine *eng;          /* while running */
    uint8_t nonce[BROKER_NONCE_SIZE];
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

static void on_engine(ntcp_engine *e, const ntcp_engine_result *r, void *user)
{
    (void)e;
    app *a = user;
    a->eng = NULL;
    a->res = *r;
    a->have_res = true;
    a->done = true;
    uv_stop(&a->loop);
}

static void send_isn(void *user, const struct sockaddr_storage *ext, uint32_t isn, bool spoof)
{
    app *a = user;
    ntcp_session_send_raw_isn(a->s, a->nonce, ext, isn, spoof);
}

/* Both ends: the plan from both profiles, then the engine. */
static void go(app *a, const broker_go *g)
{
    if (a->going)
        return;
    a->going = true;
    a->t_go = uv_now(&a->loop);
    plan_profile peer;
    int rc = plan_profile_decode(g->peer.profile, g->peer.profile_len, &peer);
    if (rc < 0 || !peer.has[PLAN_TCP4]) {
        fail(a, "the peer's profile blob is missing or invalid");
        return;
    }
    struct sockaddr_storage sl, pub;
    if (ntcp_session_local_addr(a->s, &sl) == 0)
        a->session_port = ntcp_sa_port(&sl);
    ntcp_session_public_addr(a->s, &pub);
    plan_input in;
    plan_input_init(&in);
    /* The library's own builder (plan_go.h): our private address went to
     * the broker with port 0, the session's. */
    plan_input_from_go(&in, &a->me_prof, &pub, &a->priv, a->priv.ss_family ? 1 : 0,
                       a->session_port, g, &peer);
    in.raw_enabled = a->raw;
    in.broker_spoofs = a->raw_only ? a->raw_only == NTCP_METHOD_STUNT1 : ntcp_session_broker_spoofs(a->s);
    plan_make(&in, &a->pl); /* an impossible plan goes to the engine, which reports it */
    if (a->raw_only) {
        /* Only the raw attempt(s): the lab pair must connect by them alone. */
        size_t k = 0;
        for (size_t i = 0; i < a->pl.n; i++)
            if (a->pl.a[i].role == PLAN_RAW_SYN)
                a->pl.a[k++] = a->pl.a[i];
        a->pl.n = k;
        if (a->pl.status == 0 && k == 0) {
            fail(a, "--raw-only: the plan has no raw attempt (both ends raw, known mappings?)");
            return;
        }
    }
    memcpy(a->nonce, g->nonce, sizeof a->nonce);
    plan_format(&a->pl, true, a->plan_json, sizeof a->plan_json);

    ntcp_engine_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.plan = &a->pl;
    cfg.session_port = a->session_port;
    cfg.start_at = a->t_go + g->start_delay_ms;
    if (ntcp_verify_params_from_go(&cfg.verify, g) < 0) {
        fail(a, "CONNECT-GO without the peer's key");
        return;
    }
    cfg.verify.key = a->key;
    cfg.verify.name = a->name;
    cfg.raw_send_isn = send_isn;
    cfg.raw_user = a;
    if (ntcp_engine_start(&a->loop, &cfg, on_engine, a, &a->eng) < 0)
        fail(a, "cannot start the engine");
}

static void on_raw_isn(ntcp_session *s, const uint8_t nonce[BROKER_NONCE_SIZE],
                       const struct sockaddr_storage *ext, uint32_t isn, void *user)
{
    (void)s;
    (void)ext;
    app *a = user;
    if (a->eng && memcmp(nonce, a->nonce, sizeof a->nonce) == 0)
        ntcp_engine_raw_isn(a->eng, isn);
}

static void on_go(ntcp_session *s, const broker_go *g, void *user)
{
    (void)s;
    go(user, g);
}

static void ask(app *a);

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
    /* The peer may not have registered yet: ask again shortly. */
    if (err == NTCP_ENOTFOUND || err == NTCP_EUNREACHABLE) {
        ask(a);
        return;
    }
    char why[128];
    snprintf(why, sizeof why, "connect refused: %s (code %d)", ntcp_strerror(err), code);
    fail(a, why);
}

static void ask_now(uv_timer_t *t)
{
    app *a = t->data;
    if (!a->done && !a->going && ntcp_session_connect(a->s, a->peer, 5000, on_connect, a) < 0)
        fail(a, "ntcp_session_connect failed");
}

static uv_timer_t retry_timer;

static void ask(app *a)
{
    retry_timer.data = a;
    uv_timer_start(&retry_timer, ask_now, 200, 0);
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
        if (a->requester) {
            retry_timer.data = a;
            uv_timer_start(&retry_timer, ask_now, 0, 0);
        }
    }
}

static void on_deadline(uv_timer_t *t)
{
    fail(t->data, "overall timeout (no engine result)");
}

/* Deterministic data per sender: both ends can hash what the other sends. */
static uint8_t data_byte(bool requester, size_t i)
{
    uint32_t x = (uint32_t)i * 2654435761u + (requester ? 0x1234567u : 0x7654321u);
    x ^= x >> 13;
    x *= 0x5bd1e995u;
    return (uint8_t)(x >> 24);
}

static void sha_of(bool requester, size_t n, uint8_t out[32])
{
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    EVP_DigestInit_ex(c, EVP_sha256(), NULL);
    uint8_t buf[4096];
    for (size_t off = 0; off < n;) {
        size_t k = n - off < sizeof buf ? n - off : sizeof buf;
        for (size_t i = 0; i < k; i++)
            buf[i] = data_byte(requester, off + i);
        EVP_DigestUpdate(c, buf, k);
        off += k;
    }
    EVP_DigestFinal_ex(c, out, NULL);
    EVP_MD_CTX_free(c);
}

/* Sends n bytes and receives n bytes at once (poll: neither end blocks the
 * other's sending), then checks the received bytes' SHA-256. */
static int transfer(int fd, bool requester, size_t n, uint32_t timeout_ms, uint64_t *ms)
{
    uint64_t t0 = e2e_mono_ms();
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    EVP_DigestInit_ex(c, EVP_sha256(), NULL);
    size_t sent = 0, got = 0;
    uint8_t buf[16384];
    int rc = -1;
    while (sent < n || got < n) {
        if (e2e_mono_ms() - t0 > timeout_ms)
            goto out;
        struct pollfd p = {.fd = fd, .events = (short)((got < n ? POLLIN : 0) | (sent < n ? POLLOUT : 0))};
        if (poll(&p, 1, 200) < 0 && errno != EINTR)
            goto out;
        if (sent < n && (p.revents & POLLOUT)) {
            size_t k = n - sent < sizeof buf ? n - sent : sizeof buf;
            for (size_t i = 0; i < k; i++)
                buf[i] = data_byte(requester, sent + i);
            ssize_t w = send(fd, buf, k, MSG_NOSIGNAL);
            if (w < 0 && errno != EAGAIN && errno != EINTR)
                goto out;
            if (w > 0)
                sent += (size_t)w;
        }
        if (got < n && (p.revents & (POLLIN | POLLHUP | POLLERR))) {
            size_t k = n - got < sizeof buf ? n - got : sizeof buf;
            ssize_t r = recv(fd, buf, k, 0);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
                goto out;
            if (r > 0) {
                EVP_DigestUpdate(c, buf, (size_t)r);
                got += (size_t)r;
            }
        }
    }
    uint8_t h[32], want[32];
    EVP_DigestFinal_ex(c, h, NULL);
    sha_of(!requester, n, want);
    rc = memcmp(h, want, 32) == 0 ? 0 : 1;
out:
    EVP_MD_CTX_free(c);
    *ms = e2e_mono_ms() - t0;
    return rc;
}

static void usage(void)
{
    fprintf(stderr, "usage: e2e --name N --stun HOST[:PORT] --broker IP:PORT (--peer NAME | --wait)\n"
                    "           [--timeout-ms MS] [--bytes N] [--raw | --raw-only stunt1|natblaster]\n");
}

int main(int argc, char **argv)
{
    app a;
    memset(&a, 0, sizeof a);
    a.timeout_ms = 30000;
    a.bytes = 1 << 20;
    const char *stun = NULL;
    bool wait = false;
    static const struct option opts[] = {
        {"name", 1, 0, 'n'}, {"stun", 1, 0, 's'},       {"broker", 1, 0, 'b'}, {"peer", 1, 0, 'p'},
        {"wait", 0, 0, 'w'}, {"timeout-ms", 1, 0, 't'}, {"bytes", 1, 0, 'B'},
        {"raw", 0, 0, 'r'},  {"raw-only", 1, 0, 'R'},       {0, 0, 0, 0}};
    for (int c; (c = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
        switch (c) {
        case 'n': a.name = optarg; break;
        case 's': stun = optarg; break;
        case 'b': a.broker = optarg; break;
        case 'p': a.peer = optarg; break;
        case 'w': wait = true; break;
        case 't': a.timeout_ms = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'B': a.bytes = strtoul(optarg, NULL, 10); break;
        case 'r': a.raw = true; break;
        case 'R':
            a.raw = true;
            if (strcmp(optarg, "stunt1") == 0)
                a.raw_only = NTCP_METHOD_STUNT1;
            else if (strcmp(optarg, "natblaster") == 0)
                a.raw_only = NTCP_METHOD_NATBLASTER;
            else {
                usage();
                return 2;
            }
            break;
        default: usage(); return 2;
        }
    }
    if (!a.name || !stun || !a.broker || (!a.peer) == !wait) {
        usage();
        return 2;
    }
    a.requester = a.peer != NULL;
    if (ntcp_parse_hostport(a.broker, &a.broker_addr) < 0) {
        fprintf(stderr, "e2e: bad --broker\n");
        return 2;
    }
    /* 1. Discovery, TCP over IPv4; 2. the profile blob. */
    char rwhy[160] = "";
    bool raw_ok = a.raw && raw_check(rwhy, sizeof rwhy) == 0;
    if (a.raw && !raw_ok)
        fprintf(stderr, "e2e: raw methods not usable: %s\n", rwhy);
    ntcp_nat_profile_t np;
    uint8_t blob[PLAN_BLOB_MAX];
    int blen = 0;
    uint64_t discover_ms = 0;
    int prc = e2e_profile("e2e", a.name, stun, NTCP_DISCOVER_TCP | NTCP_DISCOVER_IPV4, raw_ok, &np,
                          blob, &blen, &a.me_prof, &discover_ms);
    if (prc != 0)
        return prc;

    /* 3. The broker session. */
    if (ntcp_identity_generate(&a.key) < 0) {
        fprintf(stderr, "e2e: no key\n");
        return 2;
    }
    if (uv_loop_init(&a.loop) < 0)
        return 2;
    uv_timer_init(&a.loop, &a.timer);
    uv_timer_init(&a.loop, &retry_timer);
    a.timer.data = &a;
    uv_timer_start(&a.timer, on_deadline, a.timeout_ms, 0);
    ntcp_session_config sc;
    memset(&sc, 0, sizeof sc);
    sc.broker = a.broker;
    sc.name = a.name;
    sc.key = a.key;
    /* The private address: the local end of a route to the broker. */
    int ufd = socket(a.broker_addr.ss_family, SOCK_DGRAM, 0);
    socklen_t plen = sizeof a.priv;
    if (ufd < 0 || connect(ufd, (struct sockaddr *)&a.broker_addr, ntcp_sa_len(&a.broker_addr)) < 0 ||
        getsockname(ufd, (struct sockaddr *)&a.priv, &plen) < 0)
        memset(&a.priv, 0, sizeof a.priv);
    if (ufd >= 0)
        close(ufd);
    ntcp_sa_set_port(&a.priv, 0);
    if (a.priv.ss_family != 0) {
        sc.private_addrs = &a.priv;
        sc.nprivate = 1;
    }
    sc.profile = blob;
    sc.profile_len = (size_t)blen;
    sc.on_go = on_go;
    sc.on_state = on_state;
    sc.on_raw_isn = on_raw_isn;
    sc.user = &a;
    if (ntcp_session_start(&a.loop, &sc, &a.s) < 0) {
        fprintf(stderr, "e2e: session start failed\n");
        return 2;
    }
    uv_run(&a.loop, UV_RUN_DEFAULT);

    /* 4. The result, and 1 MiB each way on the winner. */
    uint64_t xfer_ms = 0;
    int xrc = -1;
    if (a.have_res && a.res.err == 0) {
        xrc = transfer(a.res.fd, a.requester, a.bytes, 20000, &xfer_ms);
        close(a.res.fd);
        a.rc = xrc == 0 ? 0 : 1;
    } else {
        a.rc = 1;
    }
    static char ej[8192];
    if (a.have_res)
        ntcp_engine_result_json(&a.res, ej, sizeof ej);
    else
        snprintf(ej, sizeof ej, "null");
    char pub[64] = "";
    struct sockaddr_storage pa;
    if (a.s && ntcp_session_public_addr(a.s, &pa) == 0)
        ntcp_addr_str((struct sockaddr *)&pa, pub, sizeof pub);
    printf("{\"name\":\"%s\",\"role\":\"%s\",\"ok\":%s,\"classic\":\"%s\",\"syn\":\"%s\","
           "\"public\":\"%s\",\"session_port\":%u,\"discover_ms\":%llu,"
           "\"method\":\"%s\",\"ms\":%lld,\"transfer\":\"%s\",\"transfer_ms\":%llu,\"bytes\":%zu,"
           "\"error\":\"%s\",\"engine\":%s,\"plan\":%s}\n",
           a.name, a.requester ? "requester" : "target", a.rc == 0 ? "true" : "false",
           ntcp_classic_name(&np.tcp4), ntcp_syn_name(np.tcp4.syn), pub, a.session_port,
           (unsigned long long)discover_ms,
           a.have_res && a.res.err == 0 ? ntcp_method_name(a.res.method) : "none",
           a.have_res ? (long long)a.res.elapsed_ms : -1LL,
           xrc == 0 ? "sha256-ok" : xrc == 1 ? "sha256-mismatch" : "none",
           (unsigned long long)xfer_ms, a.bytes, a.err, ej,
           a.plan_json[0] ? a.plan_json : "null");
    fflush(stdout);

    ntcp_session_close(a.s);
    uv_walk(&a.loop, e2e_close_handle, NULL);
    uv_run(&a.loop, UV_RUN_DEFAULT);
    uv_loop_close(&a.loop);
    EVP_PKEY_free(a.key);
    return a.rc;
}
