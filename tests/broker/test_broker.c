/*
 * test_broker.c: the broker and peer sessions in-process on one libuv loop,
 * over loopback: registration, lookup, connect coordination, refusals
 * (signature, replay, bound names, authorized keys), persistence, restarts,
 * vanishing targets, bad input and reaping. Waits poll with deadlines.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <uv.h>

#include "broker.h"
#include "broker_proto.h"
#include "identity.h"
#include "ntcp.h"
#include "raw.h"
#include "session.h"
#include "sock_linux.h"

/* ---- fixture ---- */

typedef struct fx {
    uv_loop_t loop;
    ntcp_broker *broker;
    ntcp_broker_config cfg;
    char addr[64], uaddr[64];
    int port;
    bool stopped;
    char dir[64];
} fx;

static uint64_t now_ms(void)
{
    return uv_hrtime() / 1000000;
}

typedef bool (*pred_fn)(void *arg);

/* Runs the loop until pred holds or timeout_ms pass. Timers in the broker
 * and the sessions keep the loop waking up. */
static bool wait_for(fx *f, pred_fn pred, void *arg, uint32_t timeout_ms)
{
    uint64_t end = now_ms() + timeout_ms;
    while (!pred(arg)) {
        if (now_ms() > end)
            return false;
        uv_run(&f->loop, UV_RUN_ONCE);
    }
    return true;
}

static void pump(fx *f, uint32_t ms)
{
    uint64_t end = now_ms() + ms;
    while (now_ms() < end)
        uv_run(&f->loop, UV_RUN_ONCE);
}

static void quiet_log(void *user, int level, const char *msg)
{
    (void)user;
    if (getenv("BROKER_TEST_LOG"))
        fprintf(stderr, "[broker %d] %s\n", level, msg);
}

static void default_cfg(fx *f)
{
    memset(&f->cfg, 0, sizeof f->cfg);
    f->cfg.listen = "127.0.0.1:0";
    f->cfg.udp = "127.0.0.1:0";
    f->cfg.broker_id = "test-broker";
    f->cfg.log = quiet_log;
    f->cfg.log_level = NTCP_LOG_DEBUG;
}

static void start_broker(fx *f)
{
    assert_int_equal(ntcp_broker_start(&f->loop, &f->cfg, &f->broker), 0);
    struct sockaddr_storage ss;
    assert_int_equal(ntcp_broker_tcp_addr(f->broker, &ss), 0);
    f->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    snprintf(f->addr, sizeof f->addr, "127.0.0.1:%d", f->port);
    if (ntcp_broker_udp_addr(f->broker, &ss) == 0)
        snprintf(f->uaddr, sizeof f->uaddr, "127.0.0.1:%d",
                 ntohs(((struct sockaddr_in *)&ss)->sin_port));
    f->stopped = false;
}

static void on_broker_stopped(void *arg)
{
    *(bool *)arg = true;
}

static bool flag_set(void *arg)
{
    return *(bool *)arg;
}

static void stop_broker(fx *f)
{
    if (!f->broker)
        return;
    ntcp_broker_stop(f->broker, on_broker_stopped, &f->stopped);
    assert_true(wait_for(f, flag_set, &f->stopped, 2000));
    f->broker = NULL;
}

static int setup(void **state)
{
    fx *f = calloc(1, sizeof *f);
    uv_loop_init(&f->loop);
    strcpy(f->dir, "/tmp/ntcp-broker-test-XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    default_cfg(f);
    *state = f;
    return 0;
}

static void close_any(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static int teardown(void **state)
{
    fx *f = *state;
    stop_broker(f);
    /* Whatever a failed test left open is closed here, so that the next
     * test runs (its memory is lost, but only after a failure). */
    uint64_t end = now_ms() + 3000;
    while (uv_run(&f->loop, UV_RUN_NOWAIT) && now_ms() < end)
        ;
    uv_walk(&f->loop, close_any, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(&f->loop);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", f->dir);
    if (system(cmd) != 0)
        rc = -1;
    free(f);
    return rc;
}

/* ---- peers through ntcp_session ---- */

typedef struct peer {
    fx *f;
    ntcp_session *s;
    EVP_PKEY *key;
    uint8_t pub[32];
    int state, err, code;
    int refusals; /* state changes with a broker code */
    bool accept;
    bool offered;
    uint32_t offer_transport;
    char offer_from[BROKER_NAME_MAX + 1];
    uint8_t offer_key[32];
    bool got_go;
    broker_go go;
    uint8_t go_profile[BROKER_PROFILE_MAX];
    unsigned raw_isns; /* RAW-ISN relayed to this peer: how many, the last */
    uint8_t raw_nonce[BROKER_NONCE_SIZE];
    struct sockaddr_storage raw_ext;
    uint32_t raw_isn;
} peer;

static void on_raw_isn(ntcp_session *s, const uint8_t nonce[BROKER_NONCE_SIZE],
                       const struct sockaddr_storage *ext, uint32_t isn, void *user)
{
    peer *p = user;
    (void)s;
    p->raw_isns++;
    memcpy(p->raw_nonce, nonce, BROKER_NONCE_SIZE);
    p->raw_ext = *ext;
    p->raw_isn = isn;
}

static bool on_offer(ntcp_session *s, const broker_peer_info *from, void *user)
{
    peer *p = user;
    (void)s;
    p->offered = true;
    p->offer_transport = from->transport;
    strcpy(p->offer_from, from->name);
    memcpy(p->offer_key, from->public_key, 32);
    return p->accept;
}

static void on_go(ntcp_session *s, const broker_go *go, void *user)
{
    peer *p = user;
    (void)s;
    p->go = *go;
    if (go->peer.profile_len)
        memcpy(p->go_profile, go->peer.profile, go->peer.profile_len);
    p->go.peer.profile = p->go_profile;
    p->got_go = true;
}

static void on_state(ntcp_session *s, int state, int err, int code, void *user)
{
    peer *p = user;
    (void)s;
    p->state = state;
    p->err = err;
    if (code) {
        p->code = code;
        p->refusals++;
    }
}

static void peer_start_full(fx *f, peer *p, const char *name, EVP_PKEY *key,
                            const struct sockaddr_storage *priv, size_t npriv,
                            const char *profile)
{
    memset(p, 0, sizeof *p);
    p->f = f;
    p->accept = true;
    if (key) {
        EVP_PKEY_up_ref(key);
        p->key = key;
    } else {
        assert_int_equal(ntcp_identity_generate(&p->key), 0);
    }
    assert_int_equal(ntcp_identity_public(p->key, p->pub), 0);
    ntcp_session_config c = {0};
    c.broker = f->addr;
    c.broker_udp = f->uaddr[0] ? f->uaddr : NULL;
    c.name = name;
    c.key = p->key;
    c.broker_id = "test-broker";
    c.private_addrs = priv;
    c.nprivate = npriv;
    c.profile = (const uint8_t *)profile;
    c.profile_len = profile ? strlen(profile) : 0;
    c.backoff_min_ms = 50;
    c.backoff_max_ms = 500;
    c.request_timeout_ms = 2000;
    c.on_offer = on_offer;
    c.on_go = on_go;
    c.on_state = on_state;
    c.on_raw_isn = on_raw_isn;
    c.user = p;
    assert_int_equal(ntcp_session_start(&f->loop, &c, &p->s), 0);
}

static void peer_start(fx *f, peer *p, const char *name, EVP_PKEY *key)
{
    peer_start_full(f, p, name, key, NULL, 0, NULL);
}

static void peer_stop(peer *p)
{
    if (p->s)
        ntcp_session_close(p->s);
    p->s = NULL;
    EVP_PKEY_free(p->key);
    p->key = NULL;
}

static bool is_registered(void *arg)
{
    peer *p = arg;
    return p->state == NTCP_SESSION_REGISTERED;
}

static bool was_refused(void *arg)
{
    peer *p = arg;
    return p->refusals > 0;
}

typedef struct result {
    bool done;
    int err, code;
    broker_go go;
    broker_peer_info info;
    uint8_t profile[BROKER_PROFILE_MAX];
    uint64_t at_ms;
} result;

static void on_connect_done(ntcp_session *s, int err, int code, const broker_go *go, void *arg)
{
    result *r = arg;
    (void)s;
    r->done = true;
    r->err = err;
    r->code = code;
    r->at_ms = now_ms();
    if (go) {
        r->go = *go;
        if (go->peer.profile_len)
            memcpy(r->profile, go->peer.profile, go->peer.profile_len);
        r->go.peer.profile = r->profile;
    }
}

static void on_lookup_done(ntcp_session *s, int err, int code, const broker_peer_info *info, void *arg)
{
    result *r = arg;
    (void)s;
    r->done = true;
    r->err = err;
    r->code = code;
    r->at_ms = now_ms();
    if (info) {
        r->info = *info;
        if (info->profile_len)
            memcpy(r->profile, info->profile, info->profile_len);
        r->info.profile = r->profile;
    }
}

static bool result_done(void *arg)
{
    return ((result *)arg)->done;
}

static void lookup(fx *f, peer *p, const char *name, result *r)
{
    memset(r, 0, sizeof *r);
    assert_int_equal(ntcp_session_lookup(p->s, name, 2000, on_lookup_done, r), 0);
    assert_true(wait_for(f, result_done, r, 3000));
}

static void sa4(struct sockaddr_storage *ss, const char *ip, int port)
{
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    sin->sin_family = AF_INET;
    sin->sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, ip, &sin->sin_addr);
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
    return x->sin6_port == y->sin6_port && memcmp(&x->sin6_addr, &y->sin6_addr, 16) == 0;
}

/* ---- raw clients, for what a well-behaved session never sends ---- */

typedef struct raw {
    int fd;
    uint8_t buf[8192];
    size_t len;
    uint8_t msg[4096];
    size_t msglen;
} raw;

static void raw_connect(fx *f, raw *r)
{
    memset(r, 0, sizeof *r);
    struct sockaddr_storage ss;
    sa4(&ss, "127.0.0.1", f->port);
    r->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(r->fd >= 0);
    /* Loopback connects complete in the kernel, before the broker accepts. */
    assert_int_equal(connect(r->fd, (struct sockaddr *)&ss, sizeof(struct sockaddr_in)), 0);
}

static void raw_send(raw *r, const void *data, size_t len)
{
    assert_int_equal(send(r->fd, data, len, MSG_NOSIGNAL), (ssize_t)len);
}

/* 1: a whole message in r->msg; 0: the broker closed; -1: timeout. */
static int raw_next(fx *f, raw *r, uint32_t timeout_ms)
{
    uint64_t end = now_ms() + timeout_ms;
    for (;;) {
        if (r->len >= 4) {
            size_t total = 20 + (size_t)((r->buf[2] << 8) | r->buf[3]);
            if (r->len >= total && total <= sizeof r->msg) {
                memcpy(r->msg, r->buf, total);
                r->msglen = total;
                memmove(r->buf, r->buf + total, r->len - total);
                r->len -= total;
                return 1;
            }
        }
        ssize_t n = recv(r->fd, r->buf + r->len, sizeof r->buf - r->len, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno == ECONNRESET))
            return 0;
        if (n > 0) {
            r->len += (size_t)n;
            continue;
        }
        if (now_ms() > end)
            return -1;
        uv_run(&f->loop, UV_RUN_NOWAIT);
        struct pollfd pfd = {.fd = r->fd, .events = POLLIN};
        poll(&pfd, 1, 2);
    }
}

static void raw_close(raw *r)
{
    if (r->fd >= 0)
        close(r->fd);
    r->fd = -1;
}

/* The error code of the message in r->msg (0 for a success, -1 not STUN). */
static int raw_code(raw *r, uint16_t *method)
{
    stun_msg m;
    if (stun_parse(&m, r->msg, r->msglen) < 0)
        return -1;
    if (method)
        *method = m.method;
    if (m.cls == STUN_SUCCESS)
        return 0;
    int code = -1;
    if (m.cls == STUN_ERROR)
        broker_get_error(&m, &code, NULL, NULL);
    return code;
}

/* Sends an error response or garbage and expects: an error response with
 * want_code, then the end of the session. */
static void expect_error_then_close(fx *f, raw *r, int want_code)
{
    assert_int_equal(raw_next(f, r, 2000), 1);
    assert_int_equal(raw_code(r, NULL), want_code);
    int rc;
    while ((rc = raw_next(f, r, 2000)) == 1)
        ;
    assert_int_equal(rc, 0);
}

static size_t build_hello(uint8_t *buf, size_t cap, const char *name, const uint8_t pub[32])
{
    uint8_t tid[STUN_TID_SIZE];
    stun_new_tid(tid);
    stun_builder sb;
    stun_build_init(&sb, buf, cap, BROKER_REGISTER, STUN_REQUEST, tid, false);
    stun_build_attr(&sb, BROKER_ATTR_NAME, name, strlen(name));
    stun_build_attr(&sb, BROKER_ATTR_PUBLIC_KEY, pub, 32);
    int n = stun_build_finish(&sb, NULL);
    assert_true(n > 0);
    return (size_t)n;
}

/* Hello, challenge, signed register. signer signs (a wrong key when it is not
 * the one named). The signed message is left in out for replays. Returns the
 * final answer's code (0 = registered). */
static int raw_register(fx *f, raw *r, const char *name, EVP_PKEY *key, EVP_PKEY *signer,
                        uint8_t *out, size_t *outlen)
{
    uint8_t pub[32], buf[1024];
    ntcp_identity_public(key, pub);
    raw_send(r, buf, build_hello(buf, sizeof buf, name, pub));
    assert_int_equal(raw_next(f, r, 2000), 1);
    assert_int_equal(raw_code(r, NULL), 401);
    stun_msg m;
    assert_int_equal(stun_parse(&m, r->msg, r->msglen), 0);
    uint8_t chal[32];
    const char *id;
    size_t idlen;
    assert_int_equal(broker_get_fixed(&m, BROKER_ATTR_CHALLENGE, chal, 32), 0);
    assert_int_equal(stun_get_string(&m, BROKER_ATTR_BROKER_ID, &id, &idlen), 0);
    uint8_t tr[BROKER_TRANSCRIPT_MAX], sig[64];
    int tl = broker_transcript(tr, sizeof tr, id, idlen, chal, name, strlen(name), pub);
    assert_true(tl > 0);
    assert_int_equal(ntcp_identity_sign(signer, tr, (size_t)tl, sig), 0);
    uint8_t tid[STUN_TID_SIZE];
    stun_new_tid(tid);
    stun_builder sb;
    stun_build_init(&sb, buf, sizeof buf, BROKER_REGISTER, STUN_REQUEST, tid, false);
    stun_build_attr(&sb, BROKER_ATTR_NAME, name, strlen(name));
    stun_build_attr(&sb, BROKER_ATTR_PUBLIC_KEY, pub, 32);
    stun_build_attr(&sb, BROKER_ATTR_CHALLENGE, chal, 32);
    stun_build_attr(&sb, BROKER_ATTR_SIGNATURE, sig, 64);
    int n = stun_build_finish(&sb, NULL);
    assert_true(n > 0);
    if (out) {
        memcpy(out, buf, (size_t)n);
        *outlen = (size_t)n;
    }
    raw_send(r, buf, (size_t)n);
    assert_int_equal(raw_next(f, r, 2000), 1);
    return raw_code(r, NULL);
}

/* ---- tests ---- */

static void test_register_lookup_connect(void **state)
{
    fx *f = *state;
    start_broker(f);
    struct sockaddr_storage apriv[2], bpriv[1];
    sa4(&apriv[0], "192.168.1.10", 4000);
    sa4(&apriv[1], "10.0.0.10", 4001);
    sa4(&bpriv[0], "192.168.7.20", 5000);
    peer a, b;
    peer_start_full(f, &a, "alice", NULL, apriv, 2, "profile-of-alice");
    peer_start_full(f, &b, "bob", NULL, bpriv, 1, "profile-of-bob");
    assert_true(wait_for(f, is_registered, &a, 3000));
    assert_true(wait_for(f, is_registered, &b, 3000));

    /* The UDP keepalive teaches the broker bob's UDP mapping. */
    struct sockaddr_storage budp, bpub, apub;
    uint64_t end = now_ms() + 3000;
    while (ntcp_session_public_udp(b.s, &budp) != 0 && now_ms() < end)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(ntcp_session_public_udp(b.s, &budp), 0);
    assert_int_equal(ntcp_session_public_addr(b.s, &bpub), 0);
    assert_int_equal(ntcp_session_public_addr(a.s, &apub), 0);
    assert_int_equal(bpub.ss_family, AF_INET);
    assert_int_equal(((struct sockaddr_in *)&bpub)->sin_addr.s_addr, htonl(INADDR_LOOPBACK));

    result r;
    lookup(f, &a, "bob", &r);
    assert_int_equal(r.err, 0);
    assert_string_equal(r.info.name, "bob");
    assert_true(r.info.has_public_key);
    assert_memory_equal(r.info.public_key, b.pub, 32);
    assert_true(same_addr(&r.info.public_addr, &bpub));
    assert_true(same_addr(&r.info.public_udp, &budp));
    assert_int_equal(r.info.nprivate, 1);
    assert_true(same_addr(&r.info.private_addr[0], &bpriv[0]));
    assert_int_equal(r.info.profile_len, strlen("profile-of-bob"));
    assert_memory_equal(r.info.profile, "profile-of-bob", r.info.profile_len);

    memset(&r, 0, sizeof r);
    assert_int_equal(ntcp_session_connect(a.s, "bob", 3000, on_connect_done, &r), 0);
    assert_true(wait_for(f, result_done, &r, 4000));
    assert_int_equal(r.err, 0);
    assert_true(wait_for(f, flag_set, &b.got_go, 2000));
    /* The target saw who asked, with the key the broker vouched for. */
    assert_true(b.offered);
    assert_string_equal(b.offer_from, "alice");
    assert_memory_equal(b.offer_key, a.pub, 32);
    /* Requester's CONNECT-GO: bob's data. */
    assert_string_equal(r.go.peer.name, "bob");
    assert_memory_equal(r.go.peer.public_key, b.pub, 32);
    assert_true(same_addr(&r.go.peer.public_addr, &bpub));
    assert_true(same_addr(&r.go.peer.public_udp, &budp));
    assert_int_equal(r.go.peer.nprivate, 1);
    assert_true(same_addr(&r.go.peer.private_addr[0], &bpriv[0]));
    assert_memory_equal(r.go.peer.profile, "profile-of-bob", strlen("profile-of-bob"));
    assert_int_equal(r.go.role, BROKER_ROLE_REQUESTER);
    /* Target's CONNECT-GO: alice's data. */
    assert_string_equal(b.go.peer.name, "alice");
    assert_memory_equal(b.go.peer.public_key, a.pub, 32);
    assert_true(same_addr(&b.go.peer.public_addr, &apub));
    assert_int_equal(b.go.peer.nprivate, 2);
    assert_true(same_addr(&b.go.peer.private_addr[0], &apriv[0]));
    assert_true(same_addr(&b.go.peer.private_addr[1], &apriv[1]));
    assert_memory_equal(b.go.peer.profile, "profile-of-alice", strlen("profile-of-alice"));
    assert_int_equal(b.go.role, BROKER_ROLE_TARGET);
    /* One session nonce for both ends, not all zeros. */
    assert_memory_equal(r.go.nonce, b.go.nonce, BROKER_NONCE_SIZE);
    uint8_t zero[BROKER_NONCE_SIZE] = {0};
    assert_memory_not_equal(r.go.nonce, zero, BROKER_NONCE_SIZE);
    /* Start delays: each end waits the margin (an eighth of the slower
     * round trip, 2 to 20 ms, by default) plus half the difference between
     * the slower end's round trip and its own, so the slower end waits just
     * the margin and both SYNs leave together. */
    assert_true(r.go.rtt_us > 0 && b.go.rtt_us > 0);
    uint32_t slow = r.go.rtt_us > b.go.rtt_us ? r.go.rtt_us : b.go.rtt_us;
    uint32_t margin = slow / 8000;
    margin = margin < 2 ? 2 : margin > 20 ? 20 : margin;
    assert_int_equal(r.go.start_delay_ms, (slow - r.go.rtt_us) / 2 / 1000 +
                                              ((slow - r.go.rtt_us) / 2 % 1000 ? 1 : 0) + margin);
    assert_int_equal(b.go.start_delay_ms, (slow - b.go.rtt_us) / 2 / 1000 +
                                              ((slow - b.go.rtt_us) / 2 % 1000 ? 1 : 0) + margin);
    assert_true(r.go.start_delay_ms == margin || b.go.start_delay_ms == margin);

    /* A second connect gets a fresh nonce. */
    uint8_t first[BROKER_NONCE_SIZE];
    memcpy(first, r.go.nonce, sizeof first);
    b.got_go = false;
    memset(&r, 0, sizeof r);
    assert_int_equal(ntcp_session_connect(b.s, "alice", 3000, on_connect_done, &r), 0);
    assert_true(wait_for(f, result_done, &r, 4000));
    assert_int_equal(r.err, 0);
    assert_memory_not_equal(r.go.nonce, first, BROKER_NONCE_SIZE);
    assert_string_equal(r.go.peer.name, "alice");

    ntcp_broker_stats st;
    ntcp_broker_get_stats(f->broker, &st);
    assert_int_equal(st.peers, 2);
    assert_int_equal(st.connects_ok, 2);
    assert_int_equal(st.pending, 0);
    peer_stop(&a);
    peer_stop(&b);
}

/* STUNT#1 / NATBlaster (docs/broker-protocol.md 5.1): RAW-ISN goes to the
 * other end of the connect named by its nonce, and only there; one for an
 * unknown nonce or for another address than the session's is dropped. With
 * --spoof (CAP_NET_RAW) the REGISTER answer says so and both ends' RAW-ISNs
 * with SPOOF make two SYN-ACKs; without the capability the broker does not
 * start. */
static bool got_raw(void *arg)
{
    return ((peer *)arg)->raw_isns > 0;
}

static void test_raw_isn(void **state)
{
    fx *f = *state;
    char why[160];
    bool can_raw = raw_check(why, sizeof why) == 0;
    f->cfg.spoof = true;
    if (!can_raw) {
        /* No CAP_NET_RAW (or built without NTCP_RAW): --spoof cannot start. */
        assert_int_equal(ntcp_broker_start(&f->loop, &f->cfg, &f->broker), NTCP_ESYS);
        f->broker = NULL;
        f->cfg.spoof = false;
    }
    start_broker(f);
    peer a, b, c;
    peer_start(f, &a, "alice", NULL);
    peer_start(f, &b, "bob", NULL);
    peer_start(f, &c, "carol", NULL);
    assert_true(wait_for(f, is_registered, &a, 3000));
    assert_true(wait_for(f, is_registered, &b, 3000));
    assert_true(wait_for(f, is_registered, &c, 3000));
    assert_int_equal(ntcp_session_broker_spoofs(a.s), can_raw);

    result r;
    memset(&r, 0, sizeof r);
    assert_int_equal(ntcp_session_connect(a.s, "bob", 3000, on_connect_done, &r), 0);
    assert_true(wait_for(f, result_done, &r, 4000));
    assert_int_equal(r.err, 0);
    assert_true(wait_for(f, flag_set, &b.got_go, 2000));
    struct sockaddr_storage apub, bpub, other;
    assert_int_equal(ntcp_session_public_addr(a.s, &apub), 0);
    assert_int_equal(ntcp_session_public_addr(b.s, &bpub), 0);

    /* Relayed to bob, with alice's address and ISN. */
    assert_int_equal(ntcp_session_send_raw_isn(a.s, r.go.nonce, &apub, 0xfffffff0u, false), 0);
    assert_true(wait_for(f, got_raw, &b, 2000));
    assert_int_equal(b.raw_isn, 0xfffffff0u);
    assert_true(same_addr(&b.raw_ext, &apub));
    assert_memory_equal(b.raw_nonce, r.go.nonce, BROKER_NONCE_SIZE);

    /* Dropped: a nonce of no connect; an address not the session's; a
     * session that is not part of the connect (carol). */
    uint8_t wrong[BROKER_NONCE_SIZE];
    memcpy(wrong, r.go.nonce, sizeof wrong);
    wrong[0] ^= 1;
    b.raw_isns = 0;
    assert_int_equal(ntcp_session_send_raw_isn(a.s, wrong, &apub, 1, false), 0);
    sa4(&other, "192.0.2.1", 40000);
    assert_int_equal(ntcp_session_send_raw_isn(a.s, r.go.nonce, &other, 2, false), 0);
    assert_int_equal(ntcp_session_send_raw_isn(c.s, r.go.nonce, &apub, 3, false), 0);
    pump(f, 300);
    assert_int_equal(b.raw_isns, 0);
    assert_int_equal(a.raw_isns, 0);
    assert_int_equal(a.state, NTCP_SESSION_REGISTERED); /* dropped, not closed */
    assert_int_equal(c.state, NTCP_SESSION_REGISTERED);

    /* Both ends ask for the spoof: two SYN-ACKs, if the broker may. */
    assert_int_equal(ntcp_session_send_raw_isn(a.s, r.go.nonce, &apub, 100, true), 0);
    assert_int_equal(ntcp_session_send_raw_isn(b.s, r.go.nonce, &bpub, 200, true), 0);
    assert_true(wait_for(f, got_raw, &a, 2000));
    assert_int_equal(a.raw_isn, 200);
    pump(f, 100);
    ntcp_broker_stats st;
    ntcp_broker_get_stats(f->broker, &st);
    assert_int_equal(st.raw_isn, 3);
    assert_int_equal(st.spoofed, can_raw ? 2 : 0);
    peer_stop(&a);
    peer_stop(&b);
    peer_stop(&c);
}

/* A UDP connect (issue 7): TRANSPORT goes from the CONNECT to the OFFER and
 * both CONNECT-GOs, which carry each end's PUBLIC-UDP; the session shares its
 * keepalive socket: a stranger's datagram goes to its sink, and a socket
 * bound to the same port and connected gets that peer's datagrams. */
static bool udp_known(void *arg)
{
    struct sockaddr_storage ss;
    return ntcp_session_public_udp(((peer *)arg)->s, &ss) == 0;
}

typedef struct sink_log {
    unsigned n;
    struct sockaddr_storage from;
    size_t len;
} sink_log;

static void on_sink(void *user, const struct sockaddr_storage *from, const uint8_t *buf, size_t len)
{
    sink_log *l = user;
    (void)buf;
    l->n++;
    l->from = *from;
    l->len = len;
}

static bool sink_got_one(void *arg)
{
    return ((sink_log *)arg)->n > 0;
}

static bool sink_got_21(void *arg)
{
    return ((sink_log *)arg)->n >= 21;
}

static void test_udp_connect_and_share(void **state)
{
    fx *f = *state;
    start_broker(f);
    peer a, b;
    peer_start(f, &a, "alice", NULL);
    peer_start(f, &b, "bob", NULL);
    assert_true(wait_for(f, is_registered, &a, 3000));
    assert_true(wait_for(f, is_registered, &b, 3000));
    assert_true(wait_for(f, udp_known, &a, 3000));
    assert_true(wait_for(f, udp_known, &b, 3000));
    struct sockaddr_storage audp, budp, blocal;
    assert_int_equal(ntcp_session_public_udp(a.s, &audp), 0);
    assert_int_equal(ntcp_session_public_udp(b.s, &budp), 0);
    assert_int_equal(ntcp_session_local_udp(b.s, &blocal), 0);

    /* TCP, the default: no transport anywhere. */
    result r;
    memset(&r, 0, sizeof r);
    assert_int_equal(ntcp_session_connect(a.s, "bob", 3000, on_connect_done, &r), 0);
    assert_true(wait_for(f, result_done, &r, 4000));
    assert_int_equal(r.err, 0);
    assert_true(wait_for(f, flag_set, &b.got_go, 2000));
    assert_int_equal(b.offer_transport, BROKER_TRANSPORT_TCP);
    assert_int_equal(r.go.transport, BROKER_TRANSPORT_TCP);
    assert_int_equal(b.go.transport, BROKER_TRANSPORT_TCP);

    /* UDP. */
    b.got_go = false;
    b.offered = false;
    memset(&r, 0, sizeof r);
    assert_int_equal(ntcp_session_connect_ex(a.s, "bob", BROKER_TRANSPORT_UDP, 3000,
                                             on_connect_done, &r), 0);
    assert_true(wait_for(f, result_done, &r, 4000));
    assert_int_equal(r.err, 0);
    assert_true(wait_for(f, flag_set, &b.got_go, 2000));
    assert_true(b.offered);
    assert_int_equal(b.offer_transport, BROKER_TRANSPORT_UDP);
    assert_int_equal(r.go.transport, BROKER_TRANSPORT_UDP);
    assert_int_equal(b.go.transport, BROKER_TRANSPORT_UDP);
    assert_true(same_addr(&r.go.peer.public_udp, &budp));
    assert_true(same_addr(&b.go.peer.public_udp, &audp));
    assert_memory_equal(r.go.nonce, b.go.nonce, BROKER_NONCE_SIZE);
    /* A transport this version does not know is refused locally. */
    assert_int_equal(ntcp_session_connect_ex(a.s, "bob", 2, 3000, on_connect_done, &r),
                     NTCP_EINVAL);

    /* The target shares its keepalive socket: the port the broker saw. */
    sink_log sl;
    memset(&sl, 0, sizeof sl);
    ntcp_session_set_udp_sink(b.s, on_sink, &sl);
    int fd = -1;
    struct sockaddr_storage tl, tp, nl;
    assert_int_equal(ntcp_session_share_udp(b.s, &fd, &tl, &tp), 0);
    assert_true(fd >= 0);
    assert_true(same_addr(&tl, &blocal));
    assert_true(same_addr(&tp, &budp));
    /* The session keeps it: same port, same mapping at the broker. */
    assert_int_equal(ntcp_session_local_udp(b.s, &nl), 0);
    assert_true(same_addr(&nl, &blocal));
    lookup(f, &a, "bob", &r);
    assert_int_equal(r.err, 0);
    assert_true(same_addr(&r.info.public_udp, &budp));

    /* A stranger's datagram reaches the sink. */
    int x = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    struct sockaddr_storage xa;
    sa4(&xa, "127.0.0.1", 0);
    assert_int_equal(bind(x, (struct sockaddr *)&xa, sizeof(struct sockaddr_in)), 0);
    socklen_t xl = sizeof xa;
    getsockname(x, (struct sockaddr *)&xa, &xl);
    uint8_t ping[4] = {1, 2, 3, 4};
    assert_int_equal(sendto(x, ping, 4, 0, (struct sockaddr *)&blocal, sizeof(struct sockaddr_in)), 4);
    assert_true(wait_for(f, sink_got_one, &sl, 2000));
    assert_true(same_addr(&sl.from, &xa));
    assert_int_equal(sl.len, 4);

    /* A socket bound to the same port (SO_REUSEPORT) and connected to the
     * stranger gets the stranger's datagrams from then on; the session still
     * gets everyone else's. */
    int c = ntcp_sock_open(AF_INET, SOCK_DGRAM, NTCP_SOCK_REUSEPORT, &blocal);
    assert_true(c >= 0);
    assert_int_equal(connect(c, (struct sockaddr *)&xa, sizeof(struct sockaddr_in)), 0);
    int y = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    for (int k = 0; k < 20; k++) {
        assert_int_equal(sendto(x, ping, 4, 0, (struct sockaddr *)&blocal, sizeof(struct sockaddr_in)), 4);
        assert_int_equal(sendto(y, ping, 3, 0, (struct sockaddr *)&blocal, sizeof(struct sockaddr_in)), 3);
    }
    assert_true(wait_for(f, sink_got_21, &sl, 3000));
    pump(f, 50); /* none more */
    assert_int_equal(sl.n, 1 + 20);
    assert_int_equal(sl.len, 3); /* y's, never x's */
    uint8_t in[8];
    for (int k = 0; k < 20; k++)
        assert_int_equal(recv(c, in, sizeof in, MSG_DONTWAIT), 4);
    assert_int_equal(recv(c, in, sizeof in, MSG_DONTWAIT), -1);
    /* The shared duplicate sends from the session's port. */
    assert_int_equal(sendto(fd, ping, 4, 0, (struct sockaddr *)&xa, sizeof(struct sockaddr_in)), 4);
    struct sockaddr_storage from;
    socklen_t fl = sizeof from;
    pump(f, 20);
    assert_int_equal(recvfrom(x, in, sizeof in, MSG_DONTWAIT, (struct sockaddr *)&from, &fl), 4);
    assert_int_equal(((struct sockaddr_in *)&from)->sin_port, ((struct sockaddr_in *)&blocal)->sin_port);
    close(c);
    close(x);
    close(y);
    close(fd);
    peer_stop(&a);
    peer_stop(&b);
}

/* A lost keepalive is sent again: a session's first keepalives go through a
 * relay that drops the first three; the mapping is known long before the
 * next REFRESH (20 s) would have sent one. */
static void test_udp_keepalive_retried(void **state)
{
    fx *f = *state;
    start_broker(f);
    int relay = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    int fwd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    struct sockaddr_storage ra, broker_udp, sess;
    sa4(&ra, "127.0.0.1", 0);
    assert_int_equal(bind(relay, (struct sockaddr *)&ra, sizeof(struct sockaddr_in)), 0);
    socklen_t rl = sizeof ra;
    getsockname(relay, (struct sockaddr *)&ra, &rl);
    assert_int_equal(ntcp_parse_hostport(f->uaddr, &broker_udp), 0);
    char real[64];
    snprintf(real, sizeof real, "%s", f->uaddr);
    snprintf(f->uaddr, sizeof f->uaddr, "127.0.0.1:%d", ntohs(((struct sockaddr_in *)&ra)->sin_port));
    peer a;
    peer_start(f, &a, "alice", NULL);
    snprintf(f->uaddr, sizeof f->uaddr, "%s", real);
    assert_true(wait_for(f, is_registered, &a, 3000));
    int seen = 0;
    bool have_sess = false;
    struct sockaddr_storage got;
    uint64_t t0 = now_ms(), end = t0 + 6000;
    while (ntcp_session_public_udp(a.s, &got) != 0 && now_ms() < end) {
        uv_run(&f->loop, UV_RUN_NOWAIT);
        uint8_t buf[512];
        struct sockaddr_storage from;
        socklen_t fl = sizeof from;
        ssize_t n = recvfrom(relay, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
        if (n > 0) {
            sess = from;
            have_sess = true;
            if (++seen > 3)
                sendto(fwd, buf, (size_t)n, 0, (struct sockaddr *)&broker_udp,
                       sizeof(struct sockaddr_in));
        }
        n = recv(fwd, buf, sizeof buf, 0);
        if (n > 0 && have_sess)
            sendto(relay, buf, (size_t)n, 0, (struct sockaddr *)&sess, sizeof(struct sockaddr_in));
        usleep(2000);
    }
    assert_int_equal(ntcp_session_public_udp(a.s, &got), 0);
    assert_true(seen >= 4);
    assert_true(now_ms() - t0 < 5000);
    /* The mapping is the relay's forwarding socket, as the broker saw it. */
    struct sockaddr_storage fa;
    socklen_t fal = sizeof fa;
    getsockname(fwd, (struct sockaddr *)&fa, &fal);
    assert_int_equal(((struct sockaddr_in *)&got)->sin_port, ((struct sockaddr_in *)&fa)->sin_port);
    close(relay);
    close(fwd);
    peer_stop(&a);
}

static void test_unknown_and_declined(void **state)
{
    fx *f = *state;
    start_broker(f);
    peer a, b;
    peer_start(f, &a, "alice", NULL);
    peer_start(f, &b, "bob", NULL);
    b.accept = false;
    assert_true(wait_for(f, is_registered, &a, 3000));
    assert_true(wait_for(f, is_registered, &b, 3000));

    result r;
    lookup(f, &a, "nobody", &r);
    assert_int_equal(r.err, NTCP_ENOTFOUND);
    assert_int_equal(r.code, BROKER_ERR_UNKNOWN_USER);

    memset(&r, 0, sizeof r);
    assert_int_equal(ntcp_session_connect(a.s, "nobody", 2000, on_connect_done, &r), 0);
    assert_true(wait_for(f, result_done, &r, 3000));
    assert_int_equal(r.err, NTCP_ENOTFOUND);
    assert_int_equal(r.code, 700);

    /* bob's policy refuses. */
    memset(&r, 0, sizeof r);
    assert_int_equal(ntcp_session_connect(a.s, "bob", 2000, on_connect_done, &r), 0);
    assert_true(wait_for(f, result_done, &r, 3000));
    assert_int_equal(r.err, NTCP_EPROTO);
    assert_int_equal(r.code, BROKER_ERR_DECLINED);
    assert_true(b.offered);
    assert_false(b.got_go);
    peer_stop(&a);
    peer_stop(&b);
}

/* ACCEPT-ALL: a target that accepts anyone's connects of a transport gets
 * its CONNECT-GO without an OFFER (a round trip less); the other transport,
 * and the flag taken back by a REFRESH, go through the offer again. */
static void test_accept_all(void **state)
{
    fx *f = *state;
    start_broker(f);
    peer a, b;
    peer_start(f, &a, "alice", NULL);
    peer_start(f, &b, "bob", NULL);
    assert_int_equal(ntcp_session_set_accept_all(b.s, 99), NTCP_EINVAL);
    assert_int_equal(ntcp_session_set_accept_all(b.s, BROKER_ACCEPT_TCP), 0);
    assert_true(wait_for(f, is_registered, &a, 3000));
    assert_true(wait_for(f, is_registered, &b, 3000));
    pump(f, 100); /* the REFRESH with the flag, if it left after the REGISTER */

    result r;
    memset(&r, 0, sizeof r);
    assert_int_equal(ntcp_session_connect(a.s, "bob", 3000, on_connect_done, &r), 0);
    assert_true(wait_for(f, result_done, &r, 3000));
    assert_int_equal(r.err, 0);
    assert_true(wait_for(f, flag_set, &b.got_go, 2000));
    assert_false(b.offered); /* no offer: bob accepts anyone over TCP */
    assert_string_equal(b.go.peer.name, "alice");
    assert_int_equal(b.go.role, BROKER_ROLE_TARGET);
    assert_int_equal(r.go.role, BROKER_ROLE_REQUESTER);
    assert_memory_equal(b.go.nonce, r.go.nonce, BROKER_NONCE_SIZE);
    assert_memory_equal(r.go.peer.public_key, b.pub, 32);

    /* Taken back: the next connect asks bob first, who declines. */
    b.got_go = false;
    b.accept = false;
    assert_int_equal(ntcp_session_set_accept_all(b.s, 0), 0);
    pump(f, 200);
    memset(&r, 0, sizeof r);
    assert_int_equal(ntcp_session_connect(a.s, "bob", 3000, on_connect_done, &r), 0);
    assert_true(wait_for(f, result_done, &r, 3000));
    assert_int_equal(r.code, BROKER_ERR_DECLINED);
    assert_true(b.offered);
    assert_false(b.got_go);
    peer_stop(&a);
    peer_stop(&b);
}

static void test_bad_signature_and_replay(void **state)
{
    fx *f = *state;
    f->cfg.source_rate = -1;
    start_broker(f);
    EVP_PKEY *k, *other;
    assert_int_equal(ntcp_identity_generate(&k), 0);
    assert_int_equal(ntcp_identity_generate(&other), 0);

    /* Signed by another key than the one named. */
    raw r1;
    raw_connect(f, &r1);
    assert_int_equal(raw_register(f, &r1, "dave", k, other, NULL, NULL), 403);
    int rc;
    while ((rc = raw_next(f, &r1, 2000)) == 1)
        ;
    assert_int_equal(rc, 0); /* and the session is closed */
    raw_close(&r1);

    /* A good registration, recorded... */
    raw r2, r3;
    uint8_t rec[1024];
    size_t reclen;
    raw_connect(f, &r2);
    assert_int_equal(raw_register(f, &r2, "dave", k, k, rec, &reclen), 0);
    /* ...replayed on the same session... */
    raw_send(&r2, rec, reclen);
    expect_error_then_close(f, &r2, 400);
    raw_close(&r2);
    /* ...and on a new session that has its own challenge. */
    raw_connect(f, &r3);
    uint8_t pub[32], buf[512];
    ntcp_identity_public(k, pub);
    raw_send(&r3, buf, build_hello(buf, sizeof buf, "dave", pub));
    assert_int_equal(raw_next(f, &r3, 2000), 1);
    assert_int_equal(raw_code(&r3, NULL), 401);
    raw_send(&r3, rec, reclen);
    expect_error_then_close(f, &r3, BROKER_ERR_STALE);
    raw_close(&r3);
    /* Replayed without asking for a challenge first. */
    raw_connect(f, &r3);
    raw_send(&r3, rec, reclen);
    expect_error_then_close(f, &r3, BROKER_ERR_STALE);
    raw_close(&r3);

    ntcp_broker_stats st;
    ntcp_broker_get_stats(f->broker, &st);
    assert_int_equal(st.refused, 3);
    EVP_PKEY_free(k);
    EVP_PKEY_free(other);
}

static void test_second_key_refused(void **state)
{
    fx *f = *state;
    start_broker(f);
    peer c1, c2, obs;
    peer_start(f, &c1, "carol", NULL);
    assert_true(wait_for(f, is_registered, &c1, 3000));
    peer_start(f, &c2, "carol", NULL); /* another key, same name */
    assert_true(wait_for(f, was_refused, &c2, 3000));
    assert_int_equal(c2.code, BROKER_ERR_CONFLICT);
    assert_int_equal(ntcp_session_registrations(c2.s), 0);
    /* The first carol is untouched. */
    peer_start(f, &obs, "observer", NULL);
    assert_true(wait_for(f, is_registered, &obs, 3000));
    result r;
    lookup(f, &obs, "carol", &r);
    assert_int_equal(r.err, 0);
    assert_memory_equal(r.info.public_key, c1.pub, 32);
    assert_int_equal(c1.state, NTCP_SESSION_REGISTERED);
    assert_int_equal(ntcp_session_registrations(c1.s), 1);
    /* The same key from a new session takes the name over (a restart). */
    peer c3;
    c1.refusals = 0;
    peer_start(f, &c3, "carol", c1.key);
    assert_true(wait_for(f, is_registered, &c3, 3000));
    /* ...and the replaced session is told why (it then retries slowly). */
    assert_true(wait_for(f, was_refused, &c1, 3000));
    assert_int_equal(c1.code, BROKER_ERR_CONFLICT);
    peer_stop(&c1);
    peer_stop(&c2);
    peer_stop(&c3);
    peer_stop(&obs);
}

static void write_keys(const char *path, const char *n1, EVP_PKEY *k1, const char *n2, EVP_PKEY *k2)
{
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    uint8_t pub[32];
    char b64[45];
    fprintf(fp, "# test keys\n\n");
    if (k1) {
        ntcp_identity_public(k1, pub);
        ntcp_identity_pub_b64(pub, b64);
        fprintf(fp, "%s %s\n", n1, b64);
    }
    if (k2) {
        ntcp_identity_public(k2, pub);
        ntcp_identity_pub_b64(pub, b64);
        fprintf(fp, "%s\t%s\n", n2, b64);
    }
    fclose(fp);
}

static bool not_registered(void *arg)
{
    return ((peer *)arg)->state != NTCP_SESSION_REGISTERED;
}

static void test_authorized_keys(void **state)
{
    fx *f = *state;
    char path[128];
    snprintf(path, sizeof path, "%s/authorized_keys", f->dir);
    EVP_PKEY *ka, *km;
    assert_int_equal(ntcp_identity_generate(&ka), 0);
    assert_int_equal(ntcp_identity_generate(&km), 0);
    write_keys(path, "alice", ka, NULL, NULL);
    f->cfg.authorized_keys = path;
    start_broker(f);

    peer a, a2, m;
    peer_start(f, &a, "alice", ka);
    assert_true(wait_for(f, is_registered, &a, 3000));
    peer_start(f, &m, "mallory", km); /* not in the file */
    assert_true(wait_for(f, was_refused, &m, 3000));
    assert_int_equal(m.code, BROKER_ERR_FORBIDDEN);
    peer_start(f, &a2, "alice", NULL); /* in the file, with another key */
    assert_true(wait_for(f, was_refused, &a2, 3000));
    assert_int_equal(a2.code, BROKER_ERR_FORBIDDEN);
    assert_int_equal(a.state, NTCP_SESSION_REGISTERED);

    /* SIGHUP: mallory in, alice out. mallory's session retries by itself. */
    write_keys(path, "mallory", km, NULL, NULL);
    assert_int_equal(ntcp_broker_reload(f->broker), 0);
    assert_true(wait_for(f, is_registered, &m, 3000));
    assert_true(wait_for(f, not_registered, &a, 3000));
    a.refusals = 0;
    assert_true(wait_for(f, was_refused, &a, 3000));
    assert_int_equal(a.code, BROKER_ERR_FORBIDDEN);

    /* A broken file leaves the keys in force. */
    FILE *fp = fopen(path, "w");
    fprintf(fp, "mallory not-base64\n");
    fclose(fp);
    assert_int_equal(ntcp_broker_reload(f->broker), NTCP_ECONFIG);
    pump(f, 200);
    assert_int_equal(m.state, NTCP_SESSION_REGISTERED);

    peer_stop(&a);
    peer_stop(&a2);
    peer_stop(&m);
    EVP_PKEY_free(ka);
    EVP_PKEY_free(km);
}

static void test_state_dir(void **state)
{
    fx *f = *state;
    char sdir[128];
    snprintf(sdir, sizeof sdir, "%s/state", f->dir);
    f->cfg.state_dir = sdir;
    start_broker(f);
    EVP_PKEY *k;
    assert_int_equal(ntcp_identity_generate(&k), 0);
    peer e;
    peer_start(f, &e, "erin", k);
    assert_true(wait_for(f, is_registered, &e, 3000));
    peer_stop(&e);
    stop_broker(f);

    /* A new broker on the same state: the binding holds. */
    start_broker(f);
    ntcp_broker_stats st;
    ntcp_broker_get_stats(f->broker, &st);
    assert_int_equal(st.bindings, 1);
    peer impostor, again;
    peer_start(f, &impostor, "erin", NULL);
    assert_true(wait_for(f, was_refused, &impostor, 3000));
    assert_int_equal(impostor.code, BROKER_ERR_CONFLICT);
    peer_start(f, &again, "erin", k);
    assert_true(wait_for(f, is_registered, &again, 3000));
    peer_stop(&impostor);
    peer_stop(&again);
    stop_broker(f);

    /* The journal was folded into the snapshot, still there a third time. */
    start_broker(f);
    ntcp_broker_get_stats(f->broker, &st);
    assert_int_equal(st.bindings, 1);
    EVP_PKEY_free(k);
}

typedef struct two { peer *a, *b; unsigned want; } two;

static bool both_reregistered(void *arg)
{
    two *t = arg;
    return ntcp_session_registrations(t->a->s) >= t->want &&
           ntcp_session_registrations(t->b->s) >= t->want && is_registered(t->a) &&
           is_registered(t->b);
}

static bool both_lost(void *arg)
{
    two *t = arg;
    return !is_registered(t->a) && !is_registered(t->b);
}

static void test_broker_restart(void **state)
{
    fx *f = *state;
    f->cfg.expiry_s = 3; /* keepalive period: a third, 1 s */
    start_broker(f);
    peer a, b;
    peer_start(f, &a, "alice", NULL);
    peer_start(f, &b, "bob", NULL);
    two t = {&a, &b, 1};
    assert_true(wait_for(f, both_reregistered, &t, 3000));

    /* Killed and back on the same port, with no state, once both peers
     * have noticed. */
    char listen[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", f->port);
    stop_broker(f);
    f->cfg.listen = listen;
    assert_true(wait_for(f, both_lost, &t, 3000));
    start_broker(f);
    uint64_t t0 = now_ms();
    t.want = 2;
    /* Within two keepalive periods, with nothing done by the application. */
    assert_true(wait_for(f, both_reregistered, &t, 2000));
    uint64_t took = now_ms() - t0;
    assert_true(took <= 2000);
    result r;
    lookup(f, &a, "bob", &r);
    assert_int_equal(r.err, 0);
    assert_memory_equal(r.info.public_key, b.pub, 32);
    peer_stop(&a);
    peer_stop(&b);
}

static bool none_pending(void *arg)
{
    ntcp_broker_stats st;
    ntcp_broker_get_stats(arg, &st);
    return st.pending == 0;
}

static void test_target_vanishes(void **state)
{
    fx *f = *state;
    f->cfg.source_rate = -1;
    start_broker(f);
    peer a;
    peer_start(f, &a, "alice", NULL);
    assert_true(wait_for(f, is_registered, &a, 3000));
    EVP_PKEY *k;
    assert_int_equal(ntcp_identity_generate(&k), 0);

    /* The target's session ends while the offer waits: error at once. */
    raw g;
    raw_connect(f, &g);
    assert_int_equal(raw_register(f, &g, "ghost", k, k, NULL, NULL), 0);
    result r;
    memset(&r, 0, sizeof r);
    uint64_t t0 = now_ms();
    assert_int_equal(ntcp_session_connect(a.s, "ghost", 3000, on_connect_done, &r), 0);
    assert_int_equal(raw_next(f, &g, 2000), 1);
    uint16_t method;
    stun_msg m;
    assert_int_equal(stun_parse(&m, g.msg, g.msglen), 0);
    assert_int_equal(m.method, BROKER_OFFER);
    assert_int_equal(m.cls, STUN_REQUEST);
    raw_close(&g);
    assert_true(wait_for(f, result_done, &r, 3000));
    assert_int_equal(r.err, NTCP_EPROTO);
    assert_int_equal(r.code, BROKER_ERR_GONE);
    assert_true(r.at_ms - t0 < 3000);

    /* A target that never answers: the requester hears within its timeout. */
    raw g2;
    raw_connect(f, &g2);
    assert_int_equal(raw_register(f, &g2, "ghost", k, k, NULL, NULL), 0);
    memset(&r, 0, sizeof r);
    t0 = now_ms();
    assert_int_equal(ntcp_session_connect(a.s, "ghost", 800, on_connect_done, &r), 0);
    assert_int_equal(raw_next(f, &g2, 2000), 1);
    assert_int_equal(raw_code(&g2, &method), -1); /* a request, not an answer */
    assert_int_equal(method, BROKER_OFFER);
    assert_true(wait_for(f, result_done, &r, 2000));
    assert_true(r.err == NTCP_ETIMEDOUT || (r.err == NTCP_EPROTO && r.code == BROKER_ERR_TIMEOUT));
    assert_true(r.at_ms - t0 <= 800 + 250); /* the timeout plus scheduling slack */
    assert_true(wait_for(f, none_pending, f->broker, 2000)); /* nothing left behind */
    ntcp_broker_stats st;
    ntcp_broker_get_stats(f->broker, &st);
    assert_int_equal(st.connects_failed, 2);
    raw_close(&g2);
    peer_stop(&a);
    EVP_PKEY_free(k);
}

static void test_bad_input(void **state)
{
    fx *f = *state;
    f->cfg.source_rate = -1;
    start_broker(f);
    peer a, b;
    peer_start(f, &a, "alice", NULL);
    peer_start(f, &b, "bob", NULL);
    assert_true(wait_for(f, is_registered, &a, 3000));
    assert_true(wait_for(f, is_registered, &b, 3000));

    raw r;
    /* Not STUN at all. */
    raw_connect(f, &r);
    raw_send(&r, "GET / HTTP/1.0\r\n\r\n", 18);
    expect_error_then_close(f, &r, 400);
    raw_close(&r);

    /* Oversized: a header announcing 4000 bytes. */
    uint8_t big[20] = {0x0E, 0xD1, 0x0F, 0xA0, 0x21, 0x12, 0xA4, 0x42};
    raw_connect(f, &r);
    raw_send(&r, big, sizeof big);
    expect_error_then_close(f, &r, 400);
    raw_close(&r);

    /* Out of order: a refresh before registering. */
    uint8_t buf[512], tid[STUN_TID_SIZE];
    stun_builder sb;
    stun_new_tid(tid);
    stun_build_init(&sb, buf, sizeof buf, BROKER_REFRESH, STUN_REQUEST, tid, false);
    int n = stun_build_finish(&sb, NULL);
    raw_connect(f, &r);
    raw_send(&r, buf, (size_t)n);
    expect_error_then_close(f, &r, 400);
    raw_close(&r);

    /* Out of order: a response nobody asked for, after registering. */
    EVP_PKEY *k;
    assert_int_equal(ntcp_identity_generate(&k), 0);
    raw_connect(f, &r);
    assert_int_equal(raw_register(f, &r, "rogue", k, k, NULL, NULL), 0);
    stun_build_init(&sb, buf, sizeof buf, BROKER_REFRESH, STUN_SUCCESS, tid, false);
    n = stun_build_finish(&sb, NULL);
    raw_send(&r, buf, (size_t)n);
    expect_error_then_close(f, &r, 400);
    raw_close(&r);

    /* A malformed attribute (a name with a space), split over two writes. */
    stun_build_init(&sb, buf, sizeof buf, BROKER_REGISTER, STUN_REQUEST, tid, false);
    stun_build_attr(&sb, BROKER_ATTR_NAME, "bad name", 8);
    n = stun_build_finish(&sb, NULL);
    raw_connect(f, &r);
    raw_send(&r, buf, 3);
    pump(f, 50);
    raw_send(&r, buf + 3, (size_t)n - 3);
    expect_error_then_close(f, &r, 400);
    raw_close(&r);

    /* An unknown comprehension-required attribute: 420, session kept. */
    stun_build_init(&sb, buf, sizeof buf, BROKER_REGISTER, STUN_REQUEST, tid, false);
    stun_build_attr(&sb, 0x4E3E, "x", 1);
    n = stun_build_finish(&sb, NULL);
    raw_connect(f, &r);
    raw_send(&r, buf, (size_t)n);
    assert_int_equal(raw_next(f, &r, 2000), 1);
    assert_int_equal(raw_code(&r, NULL), 420);
    raw_close(&r);

    /* Everyone else carried on. */
    ntcp_broker_stats st;
    ntcp_broker_get_stats(f->broker, &st);
    assert_int_equal(st.bad_sessions, 5);
    assert_int_equal(a.state, NTCP_SESSION_REGISTERED);
    assert_int_equal(ntcp_session_registrations(a.s), 1);
    assert_int_equal(ntcp_session_registrations(b.s), 1);
    result res;
    memset(&res, 0, sizeof res);
    assert_int_equal(ntcp_session_connect(a.s, "bob", 2000, on_connect_done, &res), 0);
    assert_true(wait_for(f, result_done, &res, 3000));
    assert_int_equal(res.err, 0);
    peer_stop(&a);
    peer_stop(&b);
    EVP_PKEY_free(k);
}

static void test_reaping_and_rate_limit(void **state)
{
    fx *f = *state;
    f->cfg.handshake_ms = 300;
    f->cfg.expiry_s = 1;
    f->cfg.source_rate = -1;
    f->cfg.peer_rate = 5;
    f->cfg.peer_burst = 5;
    start_broker(f);
    peer a;
    peer_start(f, &a, "alice", NULL); /* refreshes every 333 ms */
    assert_true(wait_for(f, is_registered, &a, 3000));

    /* Half-open: connected, never a word. */
    raw r;
    raw_connect(f, &r);
    uint64_t t0 = now_ms();
    assert_int_equal(raw_next(f, &r, 2000), 0);
    assert_true(now_ms() - t0 < 1000);
    raw_close(&r);

    /* Registered, then silent: reaped after the expiry, then unknown. */
    EVP_PKEY *k;
    assert_int_equal(ntcp_identity_generate(&k), 0);
    raw_connect(f, &r);
    assert_int_equal(raw_register(f, &r, "quiet", k, k, NULL, NULL), 0);
    result res;
    lookup(f, &a, "quiet", &res);
    assert_int_equal(res.err, 0);
    assert_int_equal(raw_next(f, &r, 3000), 0);
    raw_close(&r);
    lookup(f, &a, "quiet", &res);
    assert_int_equal(res.code, BROKER_ERR_UNKNOWN_USER);
    ntcp_broker_stats st;
    ntcp_broker_get_stats(f->broker, &st);
    assert_int_equal(st.reaped, 2);
    /* alice kept refreshing, so she is still there. */
    assert_int_equal(a.state, NTCP_SESSION_REGISTERED);
    assert_int_equal(ntcp_session_registrations(a.s), 1);

    /* Per-peer rate limit: a burst of lookups meets 429. */
    raw_connect(f, &r);
    assert_int_equal(raw_register(f, &r, "greedy", k, k, NULL, NULL), 0);
    uint8_t buf[128], tid[STUN_TID_SIZE];
    stun_builder sb;
    int limited = 0;
    for (int i = 0; i < 12; i++) {
        stun_new_tid(tid);
        stun_build_init(&sb, buf, sizeof buf, BROKER_LOOKUP, STUN_REQUEST, tid, false);
        stun_build_attr(&sb, BROKER_ATTR_NAME, "alice", 5);
        int n = stun_build_finish(&sb, NULL);
        raw_send(&r, buf, (size_t)n);
        assert_int_equal(raw_next(f, &r, 2000), 1);
        if (raw_code(&r, NULL) == BROKER_ERR_RATE_LIMITED)
            limited++;
    }
    assert_true(limited >= 5);
    raw_close(&r);
    peer_stop(&a);
    EVP_PKEY_free(k);
}

static void test_source_rate_limit(void **state)
{
    fx *f = *state;
    f->cfg.source_rate = 0.5; /* new sessions from one address: burst 3, then 1 per 2 s */
    f->cfg.source_burst = 3;
    start_broker(f);
    raw r[5];
    int closed = 0;
    for (int i = 0; i < 5; i++)
        raw_connect(f, &r[i]);
    /* The sessions over the burst are closed at once, the others stay. */
    for (int i = 0; i < 5; i++)
        if (raw_next(f, &r[i], 300) == 0)
            closed++;
    assert_int_equal(closed, 2);
    ntcp_broker_stats st;
    ntcp_broker_get_stats(f->broker, &st);
    assert_int_equal(st.rate_limited, 2);
    for (int i = 0; i < 5; i++)
        raw_close(&r[i]);
}

/* --turn-server / --turn-secret-file: both CONNECT-GOs carry the TURN
 * server and TURN REST credentials minted for that end's own name, whose
 * password is base64(HMAC-SHA1(secret, username)) (checked here with
 * OpenSSL directly) and whose expiry is the TTL ahead. Half a setting or an
 * unreadable secret file refuses to start. */
static void test_turn_credentials(void **state)
{
    fx *f = *state;
    char secret_path[128];
    snprintf(secret_path, sizeof secret_path, "%s/turn-secret", f->dir);
    FILE *sf = fopen(secret_path, "w");
    assert_non_null(sf);
    fputs("s3cr3t-for-coturn\n", sf);
    fclose(sf);

    ntcp_broker *bad = NULL;
    f->cfg.turn_server = "127.0.0.1:3478";
    assert_int_equal(ntcp_broker_start(&f->loop, &f->cfg, &bad), NTCP_ECONFIG);
    f->cfg.turn_secret_file = "/nonexistent/turn-secret";
    assert_int_equal(ntcp_broker_start(&f->loop, &f->cfg, &bad), NTCP_ECONFIG);
    f->cfg.turn_secret_file = secret_path;
    f->cfg.turn_ttl_s = 600;
    start_broker(f);

    peer a, b;
    peer_start(f, &a, "alice", NULL);
    peer_start(f, &b, "bob", NULL);
    assert_true(wait_for(f, is_registered, &a, 3000));
    assert_true(wait_for(f, is_registered, &b, 3000));
    result r;
    memset(&r, 0, sizeof r);
    assert_int_equal(ntcp_session_connect(a.s, "bob", 3000, on_connect_done, &r), 0);
    assert_true(wait_for(f, result_done, &r, 4000));
    assert_int_equal(r.err, 0);
    assert_true(wait_for(f, flag_set, &b.got_go, 2000));

    const broker_go *gos[2] = {&r.go, &b.go};
    const char *names[2] = {"alice", "bob"};
    for (int i = 0; i < 2; i++) {
        const broker_go *g = gos[i];
        struct sockaddr_storage want;
        sa4(&want, "127.0.0.1", 3478);
        assert_true(same_addr(&g->turn_server, &want));
        char *colon = strchr(g->turn_user, ':');
        assert_non_null(colon);
        assert_string_equal(colon + 1, names[i]);
        long long expiry = strtoll(g->turn_user, NULL, 10);
        long long now = (long long)time(NULL);
        assert_true(expiry >= now + 600 - 5 && expiry <= now + 600 + 5);
        uint8_t mac[EVP_MAX_MD_SIZE];
        unsigned maclen = 0;
        assert_non_null(HMAC(EVP_sha1(), "s3cr3t-for-coturn", 17, (const uint8_t *)g->turn_user,
                             strlen(g->turn_user), mac, &maclen));
        char b64[64];
        EVP_EncodeBlock((unsigned char *)b64, mac, (int)maclen);
        assert_string_equal(g->turn_pass, b64);
    }
    peer_stop(&a);
    peer_stop(&b);
    stop_broker(f);
}

static void test_ipv6(void **state)
{
    fx *f = *state;
    f->cfg.listen = "[::1]:0";
    f->cfg.udp = "[::1]:0";
    assert_int_equal(ntcp_broker_start(&f->loop, &f->cfg, &f->broker), 0);
    struct sockaddr_storage ss;
    assert_int_equal(ntcp_broker_tcp_addr(f->broker, &ss), 0);
    assert_int_equal(ss.ss_family, AF_INET6);
    snprintf(f->addr, sizeof f->addr, "[::1]:%d", ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
    assert_int_equal(ntcp_broker_udp_addr(f->broker, &ss), 0);
    snprintf(f->uaddr, sizeof f->uaddr, "[::1]:%d", ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
    peer a, b;
    peer_start(f, &a, "alice6", NULL);
    peer_start(f, &b, "bob6", NULL);
    assert_true(wait_for(f, is_registered, &a, 3000));
    assert_true(wait_for(f, is_registered, &b, 3000));
    struct sockaddr_storage budp;
    uint64_t end = now_ms() + 3000;
    while (ntcp_session_public_udp(b.s, &budp) != 0 && now_ms() < end)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(budp.ss_family, AF_INET6);
    result r;
    memset(&r, 0, sizeof r);
    assert_int_equal(ntcp_session_connect(a.s, "bob6", 3000, on_connect_done, &r), 0);
    assert_true(wait_for(f, result_done, &r, 4000));
    assert_int_equal(r.err, 0);
    assert_int_equal(r.go.peer.public_addr.ss_family, AF_INET6);
    assert_true(same_addr(&r.go.peer.public_udp, &budp));
    peer_stop(&a);
    peer_stop(&b);
}

/* A broker without UDP refuses a UDP connect at once (501), without
 * bothering the target; TCP connects go on. */
static void test_no_udp_refused(void **state)
{
    fx *f = *state;
    f->cfg.udp = NULL;
    start_broker(f);
    assert_int_equal(f->uaddr[0], '\0');
    peer a, b;
    peer_start(f, &a, "alice", NULL);
    peer_start(f, &b, "bob", NULL);
    assert_true(wait_for(f, is_registered, &a, 3000));
    assert_true(wait_for(f, is_registered, &b, 3000));
    result r;
    memset(&r, 0, sizeof r);
    assert_int_equal(ntcp_session_connect_ex(a.s, "bob", BROKER_TRANSPORT_UDP, 60000,
                                             on_connect_done, &r), 0);
    assert_true(wait_for(f, result_done, &r, 4000));
    assert_int_equal(r.err, NTCP_EPROTO);
    assert_int_equal(r.code, BROKER_ERR_NO_UDP);
    assert_false(b.offered);
    memset(&r, 0, sizeof r);
    assert_int_equal(ntcp_session_connect(a.s, "bob", 3000, on_connect_done, &r), 0);
    assert_true(wait_for(f, result_done, &r, 4000));
    assert_int_equal(r.err, 0);
    assert_true(b.offered);
    peer_stop(&a);
    peer_stop(&b);
}

static bool round_failed(void *arg)
{
    peer *p = arg;
    return p->err != 0 && ntcp_session_round_failed(p->s);
}

/* A list of brokers none of which listens: each is tried in turn, and the
 * end of the round is reported with every cause. */
static void test_every_broker_refused(void **state)
{
    fx *f = *state;
    int l1 = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), l2 = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_storage a1, a2;
    sa4(&a1, "127.0.0.1", 0);
    sa4(&a2, "127.0.0.1", 0);
    socklen_t len = sizeof(struct sockaddr_in);
    /* Two ports bound, never listened on: connections to them are refused. */
    assert_int_equal(bind(l1, (struct sockaddr *)&a1, len), 0);
    assert_int_equal(bind(l2, (struct sockaddr *)&a2, len), 0);
    getsockname(l1, (struct sockaddr *)&a1, &len);
    getsockname(l2, (struct sockaddr *)&a2, &len);
    char d1[32], d2[32];
    snprintf(d1, sizeof d1, "127.0.0.1:%d", ntohs(((struct sockaddr_in *)&a1)->sin_port));
    snprintf(d2, sizeof d2, "127.0.0.1:%d", ntohs(((struct sockaddr_in *)&a2)->sin_port));
    snprintf(f->addr, sizeof f->addr, "%s,%s", d1, d2);
    f->uaddr[0] = '\0';
    peer p;
    peer_start(f, &p, "alice", NULL);
    assert_true(wait_for(f, round_failed, &p, 3000));
    assert_int_equal(p.err, NTCP_EUNREACHABLE);
    const char *why = ntcp_session_last_error(p.s);
    assert_non_null(strstr(why, d1));
    assert_non_null(strstr(why, d2));
    assert_non_null(strstr(why, "connection refused"));
    assert_int_equal(ntcp_session_registrations(p.s), 0);
    peer_stop(&p);
    close(l1);
    close(l2);
}

static bool resumed_once(void *arg)
{
    peer *p = arg;
    return is_registered(p) && ntcp_session_registrations(p->s) >= 2;
}

/* Resumption tickets: a peer whose broker restarted with the same ticket
 * key registers again without a signature; with another key its ticket is
 * refused and it signs. */
static void test_ticket_resumption(void **state)
{
    fx *f = *state;
    uint8_t tkey[32];
    memset(tkey, 7, sizeof tkey);
    f->cfg.ticket_key = tkey;
    start_broker(f);
    char listen[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", f->port);
    peer a;
    peer_start(f, &a, "alice", NULL);
    assert_true(wait_for(f, is_registered, &a, 3000));
    assert_int_equal(ntcp_session_resumed(a.s), 0);

    stop_broker(f);
    f->cfg.listen = listen;
    start_broker(f);
    assert_true(wait_for(f, resumed_once, &a, 5000));
    assert_int_equal(ntcp_session_resumed(a.s), 1);
    ntcp_broker_stats st;
    ntcp_broker_get_stats(f->broker, &st);
    assert_int_equal(st.resumptions, 1);
    assert_int_equal(st.tickets_refused, 0);

    /* Another key: the ticket is refused, the peer signs the new challenge
     * on the same session. */
    stop_broker(f);
    uint8_t other[32];
    memset(other, 9, sizeof other);
    f->cfg.ticket_key = other;
    start_broker(f);
    unsigned before = ntcp_session_registrations(a.s);
    uint64_t end = now_ms() + 5000;
    while (!(is_registered(&a) && ntcp_session_registrations(a.s) > before) && now_ms() < end)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_true(ntcp_session_registrations(a.s) > before);
    assert_int_equal(ntcp_session_resumed(a.s), 1);
    ntcp_broker_get_stats(f->broker, &st);
    assert_int_equal(st.resumptions, 0);
    assert_int_equal(st.tickets_refused, 1);
    peer_stop(&a);
}

/* What a session never sends: a ticket with a wrong proof (a new challenge
 * comes back, the session stays), then the right proof, then that very
 * message replayed on another session (a stale challenge). */
static void test_ticket_forged_and_replayed(void **state)
{
    fx *f = *state;
    start_broker(f);
    EVP_PKEY *k;
    assert_int_equal(ntcp_identity_generate(&k), 0);
    uint8_t pub[32];
    ntcp_identity_public(k, pub);
    raw r;
    raw_connect(f, &r);
    assert_int_equal(raw_register(f, &r, "alice", k, k, NULL, NULL), 0);
    stun_msg m;
    assert_int_equal(stun_parse(&m, r.msg, r.msglen), 0);
    const stun_attr *tk = stun_find(&m, BROKER_ATTR_TICKET);
    assert_non_null(tk);
    uint8_t ticket[BROKER_TICKET_MAX], rkey[32];
    size_t tlen = tk->len;
    memcpy(ticket, stun_attr_value(&m, tk), tlen);
    assert_int_equal(broker_get_fixed(&m, BROKER_ATTR_RESUME_KEY, rkey, 32), 0);

    raw r2;
    raw_connect(f, &r2);
    uint8_t buf[1024], chal[32], proof[32], tid[STUN_TID_SIZE];
    for (int round = 0; round < 2; round++) {
        if (round == 0) {
            raw_send(&r2, buf, build_hello(buf, sizeof buf, "alice", pub));
            assert_int_equal(raw_next(f, &r2, 2000), 1);
        }
        assert_int_equal(raw_code(&r2, NULL), 401);
        assert_int_equal(stun_parse(&m, r2.msg, r2.msglen), 0);
        assert_int_equal(broker_get_fixed(&m, BROKER_ATTR_CHALLENGE, chal, 32), 0);
        uint8_t key[32];
        memcpy(key, rkey, 32);
        if (round == 0)
            key[0] ^= 1; /* a thief without the resume key */
        assert_int_equal(broker_resume_proof(proof, key, "test-broker", 11, chal, "alice", 5, pub), 0);
        stun_new_tid(tid);
        stun_builder sb;
        stun_build_init(&sb, buf, sizeof buf, BROKER_REGISTER, STUN_REQUEST, tid, false);
        stun_build_attr(&sb, BROKER_ATTR_NAME, "alice", 5);
        stun_build_attr(&sb, BROKER_ATTR_PUBLIC_KEY, pub, 32);
        stun_build_attr(&sb, BROKER_ATTR_CHALLENGE, chal, 32);
        stun_build_attr(&sb, BROKER_ATTR_TICKET, ticket, tlen);
        stun_build_attr(&sb, BROKER_ATTR_PROOF, proof, 32);
        int n = stun_build_finish(&sb, NULL);
        assert_true(n > 0);
        raw_send(&r2, buf, (size_t)n);
        assert_int_equal(raw_next(f, &r2, 2000), 1);
        if (round == 1)
            assert_int_equal(raw_code(&r2, NULL), 0); /* registered by ticket */
        /* round 0: the 401 with a new challenge is checked at the top */
        if (round == 1) {
            ntcp_broker_stats st;
            ntcp_broker_get_stats(f->broker, &st);
            assert_int_equal(st.resumptions, 1);
            assert_int_equal(st.tickets_refused, 1);
            /* The replay on a third session: its challenge is another. */
            raw r3;
            raw_connect(f, &r3);
            uint8_t hb[256];
            raw_send(&r3, hb, build_hello(hb, sizeof hb, "alice", pub));
            assert_int_equal(raw_next(f, &r3, 2000), 1);
            raw_send(&r3, buf, (size_t)n);
            expect_error_then_close(f, &r3, BROKER_ERR_STALE);
            raw_close(&r3);
        }
    }
    raw_close(&r);
    raw_close(&r2);
    EVP_PKEY_free(k);
}

/* ---- the program: ntcp-brokerd killed with SIGKILL and started again ---- */

static const char *brokerd_path;

/* Starts ntcp-brokerd and reads the port it bound from its first log line. */
static pid_t spawn_brokerd(const char *listen, const char *state_dir, int *port)
{
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(pfd[1], 2);
        close(pfd[0]);
        close(pfd[1]);
        /* The ticket key beside the state dir: tickets outlive a restart. */
        char tkey[160];
        snprintf(tkey, sizeof tkey, "%s.ticket-key", state_dir);
        execl(brokerd_path, brokerd_path, "--listen", listen, "--state-dir", state_dir,
              "--expiry", "3", "--id", "test-broker", "--stats", "0", "--ticket-key-file", tkey,
              (char *)NULL);
        _exit(127);
    }
    close(pfd[1]);
    char line[512];
    size_t len = 0;
    uint64_t end = now_ms() + 5000;
    *port = 0;
    while (now_ms() < end && len < sizeof line - 1) {
        struct pollfd p = {.fd = pfd[0], .events = POLLIN};
        if (poll(&p, 1, 100) <= 0)
            continue;
        ssize_t n = read(pfd[0], line + len, sizeof line - 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
        line[len] = '\0';
        const char *at = strstr(line, "listening on 127.0.0.1:");
        if (at && strchr(at, ' ' ) && strstr(at, "(TCP)")) {
            *port = atoi(at + strlen("listening on 127.0.0.1:"));
            break;
        }
    }
    close(pfd[0]); /* later log lines go nowhere (SIGPIPE is ignored there) */
    assert_true(*port > 0);
    return pid;
}

/* ntcp-brokerd on an ephemeral port with its state in the test's dir;
 * f->addr names it. */
static pid_t spawn_in_dir(fx *f, char sdir[128])
{
    snprintf(sdir, 128, "%s/state", f->dir);
    pid_t pid = spawn_brokerd("127.0.0.1:0", sdir, &f->port);
    snprintf(f->addr, sizeof f->addr, "127.0.0.1:%d", f->port);
    return pid;
}

static void test_brokerd_killed_and_restarted(void **state)
{
    fx *f = *state;
    if (!brokerd_path) {
        skip();
        return;
    }
    char sdir[128];
    pid_t pid = spawn_in_dir(f, sdir);
    f->uaddr[0] = '\0';
    peer a, b;
    peer_start(f, &a, "alice", NULL);
    peer_start(f, &b, "bob", NULL);
    two t = {&a, &b, 1};
    assert_true(wait_for(f, both_reregistered, &t, 5000));

    /* Killed outright: no goodbye to anyone. */
    assert_int_equal(kill(pid, SIGKILL), 0);
    assert_int_equal(waitpid(pid, NULL, 0), pid);
    assert_true(wait_for(f, both_lost, &t, 3000));
    char listen[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", f->port);
    int port2;
    pid = spawn_brokerd(listen, sdir, &port2);
    assert_int_equal(port2, f->port);
    uint64_t t0 = now_ms();
    t.want = 2;
    /* Both back within two keepalive periods (2 x 1 s) of the restart, by
     * the tickets the first process gave them (--ticket-key-file). */
    assert_true(wait_for(f, both_reregistered, &t, 2000));
    assert_true(now_ms() - t0 <= 2000);
    assert_int_equal(ntcp_session_resumed(a.s), 1);
    assert_int_equal(ntcp_session_resumed(b.s), 1);
    /* The bindings made before the kill hold: alice's name keeps her key. */
    peer impostor;
    peer_start(f, &impostor, "alice", NULL);
    assert_true(wait_for(f, was_refused, &impostor, 3000));
    assert_int_equal(impostor.code, BROKER_ERR_CONFLICT);
    result r;
    lookup(f, &b, "alice", &r);
    assert_int_equal(r.err, 0);
    assert_memory_equal(r.info.public_key, a.pub, 32);
    peer_stop(&a);
    peer_stop(&b);
    peer_stop(&impostor);
    assert_int_equal(kill(pid, SIGTERM), 0);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* ntcp-brokerd without --udp keeps UDP on its TCP address and port, where
 * peers send their keepalives by default. */
static void test_brokerd_udp_default(void **state)
{
    fx *f = *state;
    if (!brokerd_path) {
        skip();
        return;
    }
    char sdir[128];
    pid_t pid = spawn_in_dir(f, sdir);
    snprintf(f->uaddr, sizeof f->uaddr, "127.0.0.1:%d", f->port);
    peer a;
    peer_start(f, &a, "alice", NULL);
    assert_true(wait_for(f, is_registered, &a, 3000));
    /* The keepalive was answered: the broker listens there. */
    assert_true(wait_for(f, udp_known, &a, 3000));
    peer_stop(&a);
    assert_int_equal(kill(pid, SIGTERM), 0);
    assert_int_equal(waitpid(pid, NULL, 0), pid);
}

typedef struct on_port {
    peer *p;
    int port; /* registered with the broker on this port */
    unsigned want;
} on_port;

static bool registered_on(void *arg)
{
    on_port *o = arg;
    struct sockaddr_storage ss;
    return is_registered(o->p) && ntcp_session_registrations(o->p->s) >= o->want &&
           ntcp_session_broker_addr(o->p->s, &ss) == 0 &&
           ntohs(((struct sockaddr_in *)&ss)->sin_port) == o->port;
}

/* Two ntcp-brokerd, one list: a peer on the one killed with SIGKILL is
 * registered on the other within two keepalive intervals, and a peer that
 * was there already reaches it. */
static void test_failover_on_kill(void **state)
{
    fx *f = *state;
    if (!brokerd_path) {
        skip();
        return;
    }
    char s1[128], s2[128];
    snprintf(s1, sizeof s1, "%s/state1", f->dir);
    snprintf(s2, sizeof s2, "%s/state2", f->dir);
    int port1, port2;
    pid_t pid1 = spawn_brokerd("127.0.0.1:0", s1, &port1);
    pid_t pid2 = spawn_brokerd("127.0.0.1:0", s2, &port2);
    /* The keepalive interval: a refresh a second. */
    const uint32_t keepalive_ms = 1000;
    snprintf(f->addr, sizeof f->addr, "127.0.0.1:%d, 127.0.0.1:%d", port1, port2);
    f->uaddr[0] = '\0';
    peer a;
    peer_start(f, &a, "alice", NULL);
    assert_true(wait_for(f, is_registered, &a, 3000));
    struct sockaddr_storage ss;
    assert_int_equal(ntcp_session_broker_addr(a.s, &ss), 0);
    int on = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    assert_true(on == port1 || on == port2);
    int other = on == port1 ? port2 : port1;
    pid_t victim = on == port1 ? pid1 : pid2, survivor = on == port1 ? pid2 : pid1;
    /* bob only on the survivor. */
    char only[64];
    snprintf(only, sizeof only, "127.0.0.1:%d", other);
    snprintf(f->addr, sizeof f->addr, "%s", only);
    peer b;
    peer_start(f, &b, "bob", NULL);
    assert_true(wait_for(f, is_registered, &b, 3000));

    assert_int_equal(kill(victim, SIGKILL), 0);
    assert_int_equal(waitpid(victim, NULL, 0), victim);
    on_port o = {&a, other, 2};
    assert_true(wait_for(f, registered_on, &o, 2 * keepalive_ms));
    result r;
    lookup(f, &b, "alice", &r);
    assert_int_equal(r.err, 0);
    assert_memory_equal(r.info.public_key, a.pub, 32);
    memset(&r, 0, sizeof r);
    assert_int_equal(ntcp_session_connect(b.s, "alice", 3000, on_connect_done, &r), 0);
    assert_true(wait_for(f, result_done, &r, 4000));
    assert_int_equal(r.err, 0);
    assert_true(wait_for(f, flag_set, &a.got_go, 2000));
    peer_stop(&a);
    peer_stop(&b);
    assert_int_equal(kill(survivor, SIGTERM), 0);
    assert_int_equal(waitpid(survivor, NULL, 0), survivor);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        brokerd_path = argv[1];
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_register_lookup_connect, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_and_declined, setup, teardown),
        cmocka_unit_test_setup_teardown(test_accept_all, setup, teardown),
        cmocka_unit_test_setup_teardown(test_udp_connect_and_share, setup, teardown),
        cmocka_unit_test_setup_teardown(test_udp_keepalive_retried, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_signature_and_replay, setup, teardown),
        cmocka_unit_test_setup_teardown(test_second_key_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_authorized_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_state_dir, setup, teardown),
        cmocka_unit_test_setup_teardown(test_broker_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_target_vanishes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_input, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reaping_and_rate_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_source_rate_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ipv6, setup, teardown),
        cmocka_unit_test_setup_teardown(test_turn_credentials, setup, teardown),
        cmocka_unit_test_setup_teardown(test_raw_isn, setup, teardown),
        cmocka_unit_test_setup_teardown(test_brokerd_killed_and_restarted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_udp_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ticket_resumption, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ticket_forged_and_replayed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_every_broker_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_brokerd_udp_default, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failover_on_kill, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
