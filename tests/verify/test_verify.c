/*
 * test_verify.c: the key proof on a connected socket (src/verify.c), version
 * 2: each end's whole flight leaves at once and an end is done on the
 * peer's flight alone; honest ends agree on the binding; wrong keys, wrong
 * session, impostors, replays from another connect, reflections, version-1
 * peers, garbage, oversize and stalled peers are refused in time; bytes the
 * peer sends after its proof stay in the socket. Loopback TCP, socketpairs,
 * and the fuzz seeds written by tests/fuzz/make_verify_corpus.py.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "identity.h"
#include "ntcp.h"
#include "verify.h"

/* Keys made once: alice requests, bob is the target, mallory is a stranger
 * who knows everything public (names, keys, even the nonce). */
static EVP_PKEY *alice_key, *bob_key, *mallory_key;
static uint8_t alice_pub[32], bob_pub[32], mallory_pub[32];
static const uint8_t NONCE[32] = "session-nonce-0123456789abcdef!";
static const uint8_t OTHER_NONCE[32] = "another-nonce-0123456789abcdef!";

static int setup_keys(void **state)
{
    (void)state;
    if (ntcp_identity_generate(&alice_key) || ntcp_identity_generate(&bob_key) ||
        ntcp_identity_generate(&mallory_key))
        return -1;
    ntcp_identity_public(alice_key, alice_pub);
    ntcp_identity_public(bob_key, bob_pub);
    ntcp_identity_public(mallory_key, mallory_pub);
    return 0;
}

static int teardown_keys(void **state)
{
    (void)state;
    EVP_PKEY_free(alice_key);
    EVP_PKEY_free(bob_key);
    EVP_PKEY_free(mallory_key);
    return 0;
}

static void alice_params(ntcp_verify_params *p, uint32_t timeout_ms)
{
    memset(p, 0, sizeof *p);
    p->key = alice_key;
    p->name = "alice";
    p->peer_name = "bob";
    memcpy(p->peer_key, bob_pub, 32);
    memcpy(p->nonce, NONCE, 32);
    p->role = BROKER_ROLE_REQUESTER;
    p->timeout_ms = timeout_ms;
}

static void bob_params(ntcp_verify_params *p, uint32_t timeout_ms)
{
    memset(p, 0, sizeof *p);
    p->key = bob_key;
    p->name = "bob";
    p->peer_name = "alice";
    memcpy(p->peer_key, alice_pub, 32);
    memcpy(p->nonce, NONCE, 32);
    p->role = BROKER_ROLE_TARGET;
    p->timeout_ms = timeout_ms;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* A connected loopback TCP pair. */
static void tcp_pair(int fds[2])
{
    int l = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(l >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(l, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(l, 1), 0);
    socklen_t sl = sizeof sa;
    assert_int_equal(getsockname(l, (struct sockaddr *)&sa, &sl), 0);
    fds[0] = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fds[0] >= 0);
    assert_int_equal(connect(fds[0], (struct sockaddr *)&sa, sizeof sa), 0);
    fds[1] = accept(l, NULL, NULL);
    assert_true(fds[1] >= 0);
    close(l);
}

static void unix_pair(int fds[2])
{
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
}

/* Reads exactly n bytes within timeout_ms; returns n, or fewer on EOF,
 * error or deadline. */
static size_t read_exact(int fd, uint8_t *buf, size_t n, int timeout_ms)
{
    size_t got = 0;
    uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
    while (got < n) {
        uint64_t t = now_ms();
        if (t >= deadline)
            break;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, (int)(deadline - t)) <= 0)
            continue;
        ssize_t r = recv(fd, buf + got, n - got, MSG_DONTWAIT);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
            break;
        if (r > 0)
            got += (size_t)r;
    }
    return got;
}

/* One STUN message from a stream: its length, or 0. */
static size_t read_msg(int fd, uint8_t *buf, size_t cap, int timeout_ms)
{
    if (read_exact(fd, buf, 20, timeout_ms) != 20)
        return 0;
    size_t len = 20 + (size_t)((buf[2] << 8) | buf[3]);
    if (len > cap || read_exact(fd, buf + 20, len - 20, timeout_ms) != len - 20)
        return 0;
    return len;
}

static void send_all(int fd, const void *p, size_t n)
{
    assert_int_equal(send(fd, p, n, MSG_NOSIGNAL), (ssize_t)n);
}

/* ---- the async driver on a loop ---- */

typedef struct outcome {
    bool done;
    ntcp_verify_result r;
} outcome;

static void on_done(ntcp_verify *v, const ntcp_verify_result *r, void *user)
{
    (void)v;
    outcome *o = user;
    assert_false(o->done); /* exactly once */
    o->done = true;
    o->r = *r;
}

static void on_guard(uv_timer_t *t)
{
    *(bool *)t->data = true;
}

/* Runs loop until every outcome is done; fails the test after 10 s. */
static void run_until(uv_loop_t *loop, outcome **os, size_t n)
{
    bool expired = false;
    uv_timer_t guard;
    uv_timer_init(loop, &guard);
    guard.data = &expired;
    uv_timer_start(&guard, on_guard, 10000, 0);
    for (;;) {
        bool all = true;
        for (size_t i = 0; i < n; i++)
            all = all && os[i]->done;
        if (all || expired)
            break;
        uv_run(loop, UV_RUN_ONCE);
    }
    uv_close((uv_handle_t *)&guard, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    assert_false(expired);
}

static void expect_closed(int fd)
{
    /* Refused means closed: the descriptor number is free again. */
    assert_int_equal(fcntl(fd, F_GETFD), -1);
    assert_int_equal(errno, EBADF);
}

/* ---- a scripted peer, in a thread: it plays bob, honestly or not ---- */

typedef struct script {
    int fd;
    /* What its HELLO claims. */
    uint32_t role;
    const char *name;
    uint8_t pub[32];
    uint8_t nonce[32];      /* for SESSION-ID */
    /* How it signs. */
    EVP_PKEY *sign_key;
    uint8_t sign_nonce[32]; /* the nonce put in the signed transcript */
    uint32_t sign_role;     /* the role put in the signed transcript */
    uint32_t version;       /* announced in HELLO */
    uint32_t sign_version;  /* put in the transcript as the signer's */
    bool send_proof;
    bool extra_attr;        /* an unknown comprehension-required attribute */
    const uint8_t *trailer; /* sent with the PROOF, in the same send() */
    size_t trailer_len;
    /* What it saw. */
    bool got_hello, got_proof;
    uint8_t alice_random[32];
    size_t after_flight;    /* bytes alice sent after her PROOF (a REFUSE?) */
} script;

static void script_default(script *s, int fd)
{
    memset(s, 0, sizeof *s);
    s->fd = fd;
    s->role = s->sign_role = BROKER_ROLE_TARGET;
    s->name = "bob";
    memcpy(s->pub, bob_pub, 32);
    memcpy(s->nonce, NONCE, 32);
    s->sign_key = bob_key;
    memcpy(s->sign_nonce, NONCE, 32);
    s->send_proof = true;
    s->version = s->sign_version = VERIFY_PROTO_VERSION;
}

static void *script_run(void *arg)
{
    script *s = arg;
    uint8_t buf[1024], out[1024];
    uint8_t random[32], sid[16];
    for (int i = 0; i < 32; i++)
        random[i] = (uint8_t)(0x55 ^ i);
    ntcp_verify_session_id(s->nonce, sid);
    int n;
    uint8_t tid[16];
    stun_new_tid(tid);
    stun_builder b;
    stun_build_init(&b, out, sizeof out, VERIFY_HELLO, STUN_INDICATION, tid, false);
    stun_build_u32(&b, VERIFY_ATTR_VERSION, s->version);
    stun_build_u32(&b, VERIFY_ATTR_ROLE, s->role);
    stun_build_attr(&b, VERIFY_ATTR_SESSION_ID, sid, 16);
    stun_build_attr(&b, VERIFY_ATTR_NAME, s->name, strlen(s->name));
    stun_build_attr(&b, VERIFY_ATTR_PUBLIC_KEY, s->pub, 32);
    stun_build_attr(&b, VERIFY_ATTR_RANDOM, random, 32);
    if (s->extra_attr)
        stun_build_u32(&b, 0x4E4F, 7);
    n = stun_build_finish(&b, NULL);
    if (n <= 0)
        return NULL;
    size_t len = (size_t)n;
    /* Version 2: the PROOF goes with the HELLO, without waiting. */
    if (s->send_proof) {
        uint8_t t[VERIFY_TRANSCRIPT_MAX], sig[64];
        int tl = ntcp_verify_transcript(t, sizeof t, s->sign_role, s->sign_version, s->sign_nonce,
                                        random, "alice", alice_pub, s->name, s->pub);
        if (tl < 0 || ntcp_identity_sign(s->sign_key, t, (size_t)tl, sig) != 0)
            return NULL;
        n = ntcp_verify_build_proof(out + len, sizeof out - len, sig);
        if (n <= 0)
            return NULL;
        len += (size_t)n;
        if (s->trailer_len)
            memcpy(out + len, s->trailer, s->trailer_len);
        len += s->trailer_len;
    }
    if (send(s->fd, out, len, MSG_NOSIGNAL) != (ssize_t)len)
        return NULL;
    ntcp_verify_msg m;
    len = read_msg(s->fd, buf, sizeof buf, 5000);
    if (len == 0 || ntcp_verify_parse(&m, buf, len, NULL) != 0 || m.method != VERIFY_HELLO)
        return NULL;
    s->got_hello = true;
    memcpy(s->alice_random, m.random, 32);
    len = read_msg(s->fd, buf, sizeof buf, 5000);
    if (len == 0 || ntcp_verify_parse(&m, buf, len, NULL) != 0 || m.method != VERIFY_PROOF)
        return NULL;
    s->got_proof = true;
    /* Anything after alice's flight, until she closes (she never sends a
     * REFUSE: her PROOF is always out first). */
    s->after_flight = read_exact(s->fd, buf, sizeof buf, 5000);
    return NULL;
}

/* Alice (blocking wrapper) against a script on a socketpair. */
static int alice_vs_script(script *s, ntcp_verify_result *r, uint32_t timeout_ms)
{
    int fds[2];
    unix_pair(fds);
    s->fd = fds[1];
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, script_run, s), 0);
    ntcp_verify_params p;
    alice_params(&p, timeout_ms);
    int rc = ntcp_verify_fd(fds[0], &p, r);
    if (rc != 0)
        expect_closed(fds[0]); /* before the peer end closes: no fd reuse */
    else
        close(r->fd); /* the script reads until EOF */
    pthread_join(th, NULL);
    close(fds[1]);
    return rc;
}

/* ---- tests ---- */

static void test_codec(void **state)
{
    (void)state;
    uint8_t buf[VERIFY_MAX_MESSAGE], sid[16], rnd[32], sig[64];
    memset(rnd, 7, 32);
    memset(sig, 9, 64);
    assert_int_equal(ntcp_verify_session_id(NONCE, sid), 0);
    int n = ntcp_verify_build_hello(buf, sizeof buf, 1, sid, "bob", bob_pub, rnd);
    assert_true(n > 0 && n < 200);
    ntcp_verify_msg m;
    assert_int_equal(ntcp_verify_parse(&m, buf, (size_t)n, NULL), 0);
    assert_int_equal(m.method, VERIFY_HELLO);
    assert_int_equal(m.version, 2);
    assert_int_equal(m.role, 1);
    assert_memory_equal(m.session_id, sid, 16);
    assert_int_equal(m.name_len, 3);
    assert_memory_equal(m.name, "bob", 3);
    assert_memory_equal(m.public_key, bob_pub, 32);
    assert_memory_equal(m.random, rnd, 32);

    n = ntcp_verify_build_proof(buf, sizeof buf, sig);
    assert_int_equal(ntcp_verify_parse(&m, buf, (size_t)n, NULL), 0);
    assert_int_equal(m.method, VERIFY_PROOF);
    assert_memory_equal(m.signature, sig, 64);

    n = ntcp_verify_build_refuse(buf, sizeof buf, 403, "wrong peer");
    assert_int_equal(ntcp_verify_parse(&m, buf, (size_t)n, NULL), 0);
    assert_int_equal(m.method, VERIFY_REFUSE);
    assert_int_equal(m.code, 403);

    /* A duplicate attribute, a missing one, a wrong class, an unknown
     * comprehension-required one: all refused. */
    uint8_t tid[16];
    stun_new_tid(tid);
    stun_builder b;
    stun_build_init(&b, buf, sizeof buf, VERIFY_PROOF, STUN_INDICATION, tid, false);
    stun_build_attr(&b, VERIFY_ATTR_SIGNATURE, sig, 64);
    stun_build_attr(&b, VERIFY_ATTR_SIGNATURE, sig, 64);
    n = stun_build_finish(&b, NULL);
    assert_int_equal(ntcp_verify_parse(&m, buf, (size_t)n, NULL), NTCP_EBADATTR);
    stun_build_init(&b, buf, sizeof buf, VERIFY_PROOF, STUN_INDICATION, tid, false);
    n = stun_build_finish(&b, NULL);
    assert_int_equal(ntcp_verify_parse(&m, buf, (size_t)n, NULL), NTCP_EBADATTR);
    stun_build_init(&b, buf, sizeof buf, VERIFY_PROOF, STUN_REQUEST, tid, false);
    stun_build_attr(&b, VERIFY_ATTR_SIGNATURE, sig, 64);
    n = stun_build_finish(&b, NULL);
    assert_int_equal(ntcp_verify_parse(&m, buf, (size_t)n, NULL), NTCP_EPROTO);
    stun_build_init(&b, buf, sizeof buf, VERIFY_PROOF, STUN_INDICATION, tid, false);
    stun_build_attr(&b, VERIFY_ATTR_SIGNATURE, sig, 63);
    n = stun_build_finish(&b, NULL);
    assert_int_equal(ntcp_verify_parse(&m, buf, (size_t)n, NULL), NTCP_EBADATTR);
    uint16_t unknown = 0;
    stun_build_init(&b, buf, sizeof buf, VERIFY_PROOF, STUN_INDICATION, tid, false);
    stun_build_attr(&b, VERIFY_ATTR_SIGNATURE, sig, 64);
    stun_build_u32(&b, 0x4E4F, 1);
    stun_build_string(&b, STUN_ATTR_SOFTWARE, "ignored");
    n = stun_build_finish(&b, NULL);
    assert_int_equal(ntcp_verify_parse(&m, buf, (size_t)n, &unknown), NTCP_EBADATTR);
    assert_int_equal(unknown, 0x4E4F);
    /* Comprehension-optional attributes are ignored. */
    stun_build_init(&b, buf, sizeof buf, VERIFY_PROOF, STUN_INDICATION, tid, false);
    stun_build_attr(&b, VERIFY_ATTR_SIGNATURE, sig, 64);
    stun_build_string(&b, STUN_ATTR_SOFTWARE, "ignored");
    stun_build_fingerprint(&b);
    n = stun_build_finish(&b, NULL);
    assert_int_equal(ntcp_verify_parse(&m, buf, (size_t)n, NULL), 0);
}

static void test_transcript_layout(void **state)
{
    (void)state;
    uint8_t t[VERIFY_TRANSCRIPT_MAX], r1[32], r2[32];
    memset(r1, 1, 32);
    memset(r2, 2, 32);
    /* The target's transcript: only what it knows before alice speaks. */
    int n = ntcp_verify_transcript(t, sizeof t, 1, 3, NONCE, r2, "alice", alice_pub, "bob",
                                   bob_pub);
    assert_int_equal(n, 13 + 1 + 4 + 32 + 32 + 1 + 5 + 32 + 1 + 3 + 32);
    assert_memory_equal(t, "NTCP-VERIFY-2", 13);
    assert_int_equal(t[13], 1);
    assert_memory_equal(t + 14, "\0\0\0\3", 4);
    const uint8_t *q = t + 18;
    assert_memory_equal(q, NONCE, 32);
    assert_memory_equal(q + 32, r2, 32);
    assert_int_equal(q[64], 5);
    assert_memory_equal(q + 65, "alice", 5);
    assert_memory_equal(q + 70, alice_pub, 32);
    assert_int_equal(q[102], 3);
    assert_memory_equal(q + 103, "bob", 3);
    assert_memory_equal(q + 106, bob_pub, 32);
    /* The requester's differs in the role byte, the version and the
     * RANDOM only; names and keys stay in role order. */
    uint8_t t0[VERIFY_TRANSCRIPT_MAX];
    assert_int_equal(ntcp_verify_transcript(t0, sizeof t0, 0, 2, NONCE, r1, "alice", alice_pub,
                                            "bob", bob_pub),
                     n);
    assert_int_equal(t0[13], 0);
    assert_memory_equal(t0 + 14, "\0\0\0\2", 4);
    assert_memory_equal(t0 + 18 + 32, r1, 32);
    assert_memory_equal(t0 + 18 + 64, q + 64, (size_t)n - 18 - 64);
    assert_int_equal(ntcp_verify_transcript(t, 10, 1, 2, NONCE, r1, "alice", alice_pub, "bob",
                                            bob_pub),
                     NTCP_ENOSPC);
    assert_int_equal(ntcp_verify_transcript(t, sizeof t, 2, 2, NONCE, r1, "alice", alice_pub,
                                            "bob", bob_pub),
                     NTCP_EINVAL);
    assert_int_equal(ntcp_verify_transcript(t, sizeof t, 0, 2, NONCE, r1, "bad name", alice_pub,
                                            "bob", bob_pub),
                     NTCP_EINVAL);

    /* The binding, over both flights, recomputed by hand. */
    uint8_t in[256], md[32], bind[32];
    size_t k = 0;
    memcpy(in, "NTCP-VERIFY-BINDING-2", 21);
    k = 21;
    memcpy(in + k, "\0\0\0\2\0\0\0\3", 8);
    k += 8;
    memcpy(in + k, NONCE, 32);
    memcpy(in + k + 32, r1, 32);
    memcpy(in + k + 64, r2, 32);
    k += 96;
    in[k++] = 5;
    memcpy(in + k, "alice", 5);
    memcpy(in + k + 5, alice_pub, 32);
    k += 37;
    in[k++] = 3;
    memcpy(in + k, "bob", 3);
    memcpy(in + k + 3, bob_pub, 32);
    k += 35;
    unsigned ml = 0;
    assert_int_equal(EVP_Digest(in, k, md, &ml, EVP_sha256(), NULL), 1);
    assert_int_equal(ntcp_verify_binding(bind, 2, 3, NONCE, r1, r2, "alice", alice_pub, "bob",
                                         bob_pub),
                     0);
    assert_memory_equal(bind, md, 32);
    /* Each RANDOM counts. */
    assert_int_equal(ntcp_verify_binding(bind, 2, 3, NONCE, r1, r1, "alice", alice_pub, "bob",
                                         bob_pub),
                     0);
    assert_memory_not_equal(bind, md, 32);
    assert_int_equal(ntcp_verify_binding(bind, 2, 3, NONCE, r1, r2, "", alice_pub, "bob",
                                         bob_pub),
                     NTCP_EINVAL);
}

/* Takes everything a core has queued, message by message: returns its
 * length; the messages are checked to come one at a time. */
static size_t take_all(ntcp_verify_core *c, uint8_t *dst, size_t cap)
{
    size_t total = 0;
    for (;;) {
        const uint8_t *p;
        size_t len;
        ntcp_verify_core_output(c, &p, &len);
        if (len == 0)
            return total;
        /* One whole message. */
        assert_true(len >= 20);
        assert_int_equal(len, 20 + (size_t)((p[2] << 8) | p[3]));
        assert_true(total + len <= cap);
        memcpy(dst + total, p, len);
        total += len;
        ntcp_verify_core_sent(c, len);
    }
}

/* Two cores talking in memory, each stream fed byte by byte (the split of
 * the stream must not matter); b_out records what b sent. */
static void pump_cores(ntcp_verify_core *a, ntcp_verify_core *b, uint8_t *b_out, size_t *b_out_len)
{
    for (int round = 0; round < 4; round++) {
        uint8_t tmp[2 * VERIFY_MAX_MESSAGE];
        size_t len = take_all(a, tmp, sizeof tmp);
        for (size_t i = 0; i < len && ntcp_verify_core_want(b) > 0; i++)
            ntcp_verify_core_input(b, tmp + i, 1);
        len = take_all(b, tmp, sizeof tmp);
        if (b_out) {
            memcpy(b_out + *b_out_len, tmp, len);
            *b_out_len += len;
        }
        if (len)
            ntcp_verify_core_input(a, tmp, len);
    }
}

/* The point of version 2: a core's whole flight is queued by init, and a
 * core that has sent it and received the peer's is done, with nothing more
 * to write. Neither flight depends on the other. */
static void test_half_round_trip(void **state)
{
    (void)state;
    ntcp_verify_params pa, pb;
    alice_params(&pa, 0);
    bob_params(&pb, 0);
    ntcp_verify_core *a = malloc(sizeof *a), *b = malloc(sizeof *b);
    assert_int_equal(ntcp_verify_core_init(a, &pa, NULL), 0);
    assert_int_equal(ntcp_verify_core_init(b, &pb, NULL), 0);
    uint8_t fa[2 * VERIFY_MAX_MESSAGE], fb[2 * VERIFY_MAX_MESSAGE];
    /* The output comes one message at a time (a datagram transport sends
     * each alone): HELLO, then PROOF. */
    const uint8_t *p;
    size_t len;
    ntcp_verify_core_output(a, &p, &len);
    ntcp_verify_msg m;
    assert_int_equal(ntcp_verify_parse(&m, p, len, NULL), 0);
    assert_int_equal(m.method, VERIFY_HELLO);
    /* A partial send leaves the rest of that message, then the next. */
    ntcp_verify_core_sent(a, 5);
    size_t rest;
    ntcp_verify_core_output(a, &p, &rest);
    assert_int_equal(rest, len - 5);
    memcpy(fa, a->out, len);
    ntcp_verify_core_sent(a, rest);
    size_t la = len + take_all(a, fa + len, sizeof fa - len);
    size_t lb = take_all(b, fb, sizeof fb);
    assert_true(la > len && la < 300 && lb < 300);
    assert_int_equal(ntcp_verify_parse(&m, fa + len, la - len, NULL), 0);
    assert_int_equal(m.method, VERIFY_PROOF);
    /* Both flights crossed: each end has all it needs. */
    assert_int_equal(a->state, VERIFY_WAIT_HELLO);
    assert_int_equal(ntcp_verify_core_input(a, fb, lb), VERIFY_DONE);
    assert_int_equal(ntcp_verify_core_input(b, fa, la), VERIFY_DONE);
    ntcp_verify_core_output(a, &p, &len);
    assert_int_equal(len, 0);
    ntcp_verify_core_output(b, &p, &len);
    assert_int_equal(len, 0);
    assert_int_equal(ntcp_verify_core_want(a), 0);
    assert_int_equal(ntcp_verify_core_want(b), 0);
    assert_memory_equal(a->binding, b->binding, 32);
    /* The binding is the one of both flights: both RANDOMs, in role order. */
    uint8_t bind[32];
    assert_int_equal(ntcp_verify_binding(bind, 2, 2, NONCE, a->random, b->random, "alice",
                                         alice_pub, "bob", bob_pub),
                     0);
    assert_memory_equal(bind, a->binding, 32);
    /* Each end's PROOF is its own transcript's signature, nothing of the
     * peer's in it: the verifier rebuilds it from the signer's HELLO. */
    uint8_t t[VERIFY_TRANSCRIPT_MAX];
    int n = ntcp_verify_transcript(t, sizeof t, BROKER_ROLE_TARGET, 2, NONCE, b->random, "alice",
                                   alice_pub, "bob", bob_pub);
    assert_true(n > 0);
    size_t hb = 20 + (size_t)((fb[2] << 8) | fb[3]);
    assert_int_equal(ntcp_verify_parse(&m, fb + hb, lb - hb, NULL), 0);
    assert_int_equal(ntcp_identity_verify(bob_pub, t, (size_t)n, m.signature), 0);

    /* The order of the crossing does not matter either: b gets a's flight
     * before a sends anything else, and so on. */
    assert_int_equal(ntcp_verify_core_init(a, &pa, NULL), 0);
    assert_int_equal(ntcp_verify_core_init(b, &pb, NULL), 0);
    la = take_all(a, fa, sizeof fa);
    assert_int_equal(ntcp_verify_core_input(b, fa, la), VERIFY_DONE);
    lb = take_all(b, fb, sizeof fb);
    assert_int_equal(ntcp_verify_core_input(a, fb, lb), VERIFY_DONE);
    assert_memory_equal(a->binding, b->binding, 32);
    free(a);
    free(b);
}

static void test_cores_agree(void **state)
{
    (void)state;
    ntcp_verify_params pa, pb;
    alice_params(&pa, 0);
    bob_params(&pb, 0);
    ntcp_verify_core *a = malloc(sizeof *a), *b = malloc(sizeof *b);
    assert_int_equal(ntcp_verify_core_init(a, &pa, NULL), 0);
    assert_int_equal(ntcp_verify_core_init(b, &pb, NULL), 0);
    pump_cores(a, b, NULL, NULL);
    assert_int_equal(a->state, VERIFY_DONE);
    assert_int_equal(b->state, VERIFY_DONE);
    assert_memory_equal(a->binding, b->binding, 32);
    assert_int_equal(ntcp_verify_core_want(a), 0);
    /* Another connection of the same session has another binding. */
    uint8_t first[32];
    memcpy(first, a->binding, 32);
    assert_int_equal(ntcp_verify_core_init(a, &pa, NULL), 0);
    assert_int_equal(ntcp_verify_core_init(b, &pb, NULL), 0);
    pump_cores(a, b, NULL, NULL);
    assert_int_equal(a->state, VERIFY_DONE);
    assert_memory_not_equal(a->binding, first, 32);
    free(a);
    free(b);
}

static void test_async_tcp_ok(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    int fds[2];
    tcp_pair(fds);
    ntcp_verify_params pa, pb;
    alice_params(&pa, 5000);
    bob_params(&pb, 5000);
    outcome oa = {0}, ob = {0};
    assert_int_equal(ntcp_verify_start(&loop, fds[0], &pa, on_done, &oa, NULL), 0);
    assert_int_equal(ntcp_verify_start(&loop, fds[1], &pb, on_done, &ob, NULL), 0);
    assert_false(oa.done); /* never from inside start */
    outcome *os[] = {&oa, &ob};
    run_until(&loop, os, 2);
    assert_int_equal(oa.r.err, 0);
    assert_int_equal(ob.r.err, 0);
    assert_int_equal(oa.r.fd, fds[0]);
    assert_int_equal(ob.r.fd, fds[1]);
    assert_memory_equal(oa.r.binding, ob.r.binding, 32);
    /* The sockets were blocking and are again; the stream carries data. */
    assert_int_equal(fcntl(fds[0], F_GETFL) & O_NONBLOCK, 0);
    send_all(fds[0], "ping", 4);
    uint8_t got[4];
    assert_int_equal(read_exact(fds[1], got, 4, 5000), 4);
    assert_memory_equal(got, "ping", 4);
    close(fds[0]);
    close(fds[1]);
    assert_int_equal(uv_loop_close(&loop), 0);
}

typedef struct bob_thread {
    int fd;
    ntcp_verify_params p;
    ntcp_verify_result r;
    int rc;
} bob_thread;

static void *bob_blocking(void *arg)
{
    bob_thread *t = arg;
    t->rc = ntcp_verify_fd(t->fd, &t->p, &t->r);
    return NULL;
}

/* Both ends with the blocking wrapper; the configuration mistakes are run
 * through the same path. */
static void blocking_pair(const ntcp_verify_params *pa, const ntcp_verify_params *pb,
                          ntcp_verify_result *ra, ntcp_verify_result *rb)
{
    int fds[2];
    tcp_pair(fds);
    bob_thread t = {.fd = fds[1], .p = *pb};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, bob_blocking, &t), 0);
    ntcp_verify_fd(fds[0], pa, ra);
    pthread_join(th, NULL);
    *rb = t.r;
    if (ra->err == 0)
        close(ra->fd);
    if (rb->err == 0)
        close(rb->fd);
}

static void test_blocking_ok(void **state)
{
    (void)state;
    ntcp_verify_params pa, pb;
    alice_params(&pa, 5000);
    bob_params(&pb, 5000);
    ntcp_verify_result ra, rb;
    blocking_pair(&pa, &pb, &ra, &rb);
    assert_int_equal(ra.err, 0);
    assert_int_equal(rb.err, 0);
    assert_memory_equal(ra.binding, rb.binding, 32);
}

static void test_wrong_key_for_target(void **state)
{
    (void)state;
    /* The broker vouched to alice for a key that is not bob's. */
    ntcp_verify_params pa, pb;
    alice_params(&pa, 5000);
    memcpy(pa.peer_key, mallory_pub, 32);
    bob_params(&pb, 5000);
    ntcp_verify_result ra, rb;
    blocking_pair(&pa, &pb, &ra, &rb);
    assert_int_equal(ra.err, NTCP_EINTEGRITY);
    assert_string_equal(ra.why, "not the key the broker vouched for");
    assert_int_equal(ra.fd, -1);
    /* Alice signed what she believes: a transcript that names mallory's
     * key as the target's. Bob refuses it on his own, without being told
     * (no REFUSE in version 2): each signature covers both keys, so the
     * two ends cannot disagree on who is who and both succeed. */
    assert_int_equal(rb.err, NTCP_EINTEGRITY);
    assert_string_equal(rb.why, "the peer's signature does not verify");
    assert_int_equal(rb.peer_code, 0);
    assert_int_equal(rb.fd, -1);
}

static void test_wrong_key_for_requester(void **state)
{
    (void)state;
    ntcp_verify_params pa, pb;
    alice_params(&pa, 5000);
    bob_params(&pb, 5000);
    memcpy(pb.peer_key, mallory_pub, 32);
    ntcp_verify_result ra, rb;
    blocking_pair(&pa, &pb, &ra, &rb);
    assert_int_equal(rb.err, NTCP_EINTEGRITY);
    assert_string_equal(rb.why, "not the key the broker vouched for");
    assert_int_equal(ra.err, NTCP_EINTEGRITY);
    assert_string_equal(ra.why, "the peer's signature does not verify");
}

static void test_wrong_name(void **state)
{
    (void)state;
    ntcp_verify_params pa, pb;
    alice_params(&pa, 5000);
    pa.peer_name = "carol";
    bob_params(&pb, 5000);
    ntcp_verify_result ra, rb;
    blocking_pair(&pa, &pb, &ra, &rb);
    assert_int_equal(ra.err, NTCP_EINTEGRITY);
    assert_string_equal(ra.why, "not the peer's name");
    /* And alice's transcript names carol: bob refuses it. */
    assert_int_equal(rb.err, NTCP_EINTEGRITY);
    assert_string_equal(rb.why, "the peer's signature does not verify");
}

static void test_wrong_nonce(void **state)
{
    (void)state;
    ntcp_verify_params pa, pb;
    alice_params(&pa, 5000);
    bob_params(&pb, 5000);
    memcpy(pb.nonce, OTHER_NONCE, 32);
    ntcp_verify_result ra, rb;
    blocking_pair(&pa, &pb, &ra, &rb);
    /* Each reads the other's HELLO (it left first) and refuses on its
     * own, on the SESSION-ID, before checking any signature. */
    assert_int_equal(ra.err, NTCP_EINTEGRITY);
    assert_int_equal(rb.err, NTCP_EINTEGRITY);
    assert_string_equal(ra.why, "not our session");
    assert_string_equal(rb.why, "not our session");
}

static void test_signature_binds_nonce(void **state)
{
    (void)state;
    /* Bob's real key and the right SESSION-ID, but the signed transcript
     * names another nonce (another session): refused on the signature. */
    script s;
    script_default(&s, -1);
    memcpy(s.sign_nonce, OTHER_NONCE, 32);
    ntcp_verify_result r;
    assert_int_equal(alice_vs_script(&s, &r, 5000), NTCP_EINTEGRITY);
    assert_true(s.got_hello);
}

static void test_honest_script(void **state)
{
    (void)state;
    /* The scripted peer itself passes when honest (so the refusals below
     * are the checks', not the script's). */
    script s;
    script_default(&s, -1);
    ntcp_verify_result r;
    assert_int_equal(alice_vs_script(&s, &r, 5000), 0);
}

static void test_versions(void **state)
{
    (void)state;
    /* A later peer announces 3 and sends a version-2 flight: accepted, its
     * announcement is in what it signed. */
    script s;
    script_default(&s, -1);
    s.version = s.sign_version = 3;
    ntcp_verify_result r;
    assert_int_equal(alice_vs_script(&s, &r, 5000), 0);
    /* Someone rewrote its HELLO's VERSION 3 to 2 on the way (a downgrade):
     * the signature made over what was really announced fails. */
    script_default(&s, -1);
    s.version = 2;
    s.sign_version = 3;
    assert_int_equal(alice_vs_script(&s, &r, 5000), NTCP_EINTEGRITY);
    assert_string_equal(r.why, "the peer's signature does not verify");
    /* A version-1 peer (it would wait for our HELLO to sign): refused at
     * its HELLO, and told nothing (our flight is all it gets). */
    script_default(&s, -1);
    s.version = s.sign_version = 1;
    s.send_proof = false;
    assert_int_equal(alice_vs_script(&s, &r, 5000), NTCP_EPROTO);
    assert_string_equal(r.why, "the peer speaks only version 1");
    assert_true(s.got_proof);
    assert_int_equal(s.after_flight, 0);
}

static void test_impostor(void **state)
{
    (void)state;
    /* Mallory knows both names, both public keys and even the nonce, and
     * claims to be bob; she can only sign with her own key. */
    script s;
    script_default(&s, -1);
    s.sign_key = mallory_key;
    ntcp_verify_result r;
    assert_int_equal(alice_vs_script(&s, &r, 5000), NTCP_EINTEGRITY);
    assert_int_equal(r.fd, -1);
    /* Presenting her own key instead is refused at HELLO, and told so. */
    script_default(&s, -1);
    s.sign_key = mallory_key;
    memcpy(s.pub, mallory_pub, 32);
    assert_int_equal(alice_vs_script(&s, &r, 5000), NTCP_EINTEGRITY);
    assert_string_equal(r.why, "not the key the broker vouched for");
    assert_int_equal(s.after_flight, 0); /* no REFUSE, a plain close */
    /* Bob's own transcript signed by mallory as the requester (the role
     * byte is the signer's): refused on the signature. */
    script_default(&s, -1);
    s.sign_role = BROKER_ROLE_REQUESTER;
    assert_int_equal(alice_vs_script(&s, &r, 5000), NTCP_EINTEGRITY);
}

/* Rewrites the ROLE (the second attribute, value at 32) of the HELLO that
 * starts buf. */
static void set_hello_role(uint8_t *buf, uint32_t role)
{
    assert_int_equal((buf[28] << 8) | buf[29], VERIFY_ATTR_ROLE);
    buf[35] = (uint8_t)role;
}

static void test_replay(void **state)
{
    (void)state;
    /* Record bob's flight on one connection of a connect... */
    ntcp_verify_params pa, pb;
    alice_params(&pa, 0);
    bob_params(&pb, 0);
    ntcp_verify_core *a = malloc(sizeof *a), *b = malloc(sizeof *b);
    assert_int_equal(ntcp_verify_core_init(a, &pa, NULL), 0);
    assert_int_equal(ntcp_verify_core_init(b, &pb, NULL), 0);
    uint8_t rec[2 * VERIFY_MAX_MESSAGE];
    size_t rec_len = 0;
    pump_cores(a, b, rec, &rec_len);
    assert_int_equal(a->state, VERIFY_DONE);
    assert_int_equal(b->state, VERIFY_DONE);
    uint8_t bob_binding[32];
    memcpy(bob_binding, b->binding, 32);

    /* ...and play it to alice in another connect (another nonce): refused
     * on the SESSION-ID... */
    ntcp_verify_params po;
    alice_params(&po, 0);
    memcpy(po.nonce, OTHER_NONCE, 32);
    assert_int_equal(ntcp_verify_core_init(a, &po, NULL), 0);
    assert_int_equal(ntcp_verify_core_input(a, rec, rec_len), VERIFY_FAILED);
    assert_int_equal(a->err, NTCP_EINTEGRITY);
    assert_string_equal(a->why, "not our session");
    /* ...and with the SESSION-ID rewritten to the new one, on the
     * signature: the nonce itself is in what bob signed. */
    uint8_t sid[16], forged[2 * VERIFY_MAX_MESSAGE];
    memcpy(forged, rec, rec_len);
    ntcp_verify_session_id(OTHER_NONCE, sid);
    assert_int_equal((forged[36] << 8) | forged[37], VERIFY_ATTR_SESSION_ID);
    memcpy(forged + 40, sid, 16);
    assert_int_equal(ntcp_verify_core_init(a, &po, NULL), 0);
    assert_int_equal(ntcp_verify_core_input(a, forged, rec_len), VERIFY_FAILED);
    assert_int_equal(a->err, NTCP_EINTEGRITY);
    assert_string_equal(a->why, "the peer's signature does not verify");

    /* Within one connect (one nonce), the proof is bob's whatever the
     * connection: replayed to alice on another connection of the same
     * attempt set, it passes (docs/verify.md 5 says why that is accepted),
     * but the binding alice gets is not the one bob holds: her RANDOM on
     * this connection is not the one bob saw. */
    assert_int_equal(ntcp_verify_core_init(a, &pa, NULL), 0);
    assert_int_equal(ntcp_verify_core_input(a, rec, rec_len), VERIFY_DONE);
    assert_memory_not_equal(a->binding, bob_binding, 32);

    /* Reflection: alice's own flight sent back to her, as it is... */
    uint8_t own[2 * VERIFY_MAX_MESSAGE], fixed[32];
    memset(fixed, 0x3C, sizeof fixed);
    assert_int_equal(ntcp_verify_core_init(a, &pa, fixed), 0);
    size_t own_len = take_all(a, own, sizeof own);
    assert_int_equal(ntcp_verify_core_input(a, own, own_len), VERIFY_FAILED);
    assert_int_equal(a->err, NTCP_EPROTO);
    assert_string_equal(a->why, "peer claims our role");
    /* ...or with its ROLE turned into bob's: her own RANDOM gives it away
     * (and the PROOF, signed with role 0 by alice's key, would not verify
     * as bob's anyway). Nothing is left to send. */
    set_hello_role(own, BROKER_ROLE_TARGET);
    assert_int_equal(ntcp_verify_core_init(a, &pa, fixed), 0);
    take_all(a, rec, sizeof rec);
    assert_int_equal(ntcp_verify_core_input(a, own, own_len), VERIFY_FAILED);
    assert_string_equal(a->why, "our own HELLO came back");
    const uint8_t *p;
    size_t len;
    ntcp_verify_core_output(a, &p, &len);
    assert_int_equal(len, 0);
    /* Bob's flight reflected to bob: the same. */
    assert_int_equal(ntcp_verify_core_init(b, &pb, NULL), 0);
    own_len = take_all(b, own, sizeof own);
    assert_int_equal(ntcp_verify_core_input(b, own, own_len), VERIFY_FAILED);
    assert_string_equal(b->why, "peer claims our role");
    free(a);
    free(b);
}

/* A core failed on the peer's HELLO before its flight went out sends
 * nothing: no REFUSE, and no proof for a peer it refused. */
static void test_no_proof_for_refused(void **state)
{
    (void)state;
    ntcp_verify_params pa, pb;
    alice_params(&pa, 0);
    bob_params(&pb, 0);
    memcpy(pb.nonce, OTHER_NONCE, 32);
    ntcp_verify_core *a = malloc(sizeof *a), *b = malloc(sizeof *b);
    assert_int_equal(ntcp_verify_core_init(a, &pa, NULL), 0);
    assert_int_equal(ntcp_verify_core_init(b, &pb, NULL), 0);
    uint8_t fb[2 * VERIFY_MAX_MESSAGE];
    size_t lb = take_all(b, fb, sizeof fb);
    const uint8_t *p;
    size_t len;
    ntcp_verify_core_output(a, &p, &len);
    ntcp_verify_core_sent(a, len); /* the HELLO is out, the PROOF not yet */
    assert_int_equal(ntcp_verify_core_input(a, fb, lb), VERIFY_FAILED);
    ntcp_verify_core_output(a, &p, &len);
    assert_int_equal(len, 0);
    free(a);
    free(b);
}

/* Alice alone against bytes already waiting in the socket. */
static ntcp_verify_result alice_vs_bytes(const void *bytes, size_t len, uint32_t timeout_ms,
                                         int *peer_fd)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    int fds[2];
    tcp_pair(fds);
    if (len)
        send_all(fds[1], bytes, len);
    ntcp_verify_params pa;
    alice_params(&pa, timeout_ms);
    outcome oa = {0};
    assert_int_equal(ntcp_verify_start(&loop, fds[0], &pa, on_done, &oa, NULL), 0);
    outcome *os[] = {&oa};
    run_until(&loop, os, 1);
    assert_int_equal(uv_loop_close(&loop), 0);
    if (oa.r.err)
        expect_closed(fds[0]);
    else
        close(oa.r.fd);
    if (peer_fd)
        *peer_fd = fds[1];
    else
        close(fds[1]);
    return oa.r;
}

static void test_garbage(void **state)
{
    (void)state;
    uint8_t junk[64];
    memset(junk, 0xFF, sizeof junk);
    int peer;
    ntcp_verify_result r = alice_vs_bytes(junk, sizeof junk, 5000, &peer);
    assert_int_equal(r.err, NTCP_EPROTO);
    assert_string_equal(r.why, "not STUN");
    /* The peer got alice's flight, HELLO and PROOF, then a plain close. */
    uint8_t buf[1024];
    ntcp_verify_msg m;
    size_t len = read_msg(peer, buf, sizeof buf, 5000);
    assert_true(len > 0);
    assert_int_equal(ntcp_verify_parse(&m, buf, len, NULL), 0);
    assert_int_equal(m.method, VERIFY_HELLO);
    len = read_msg(peer, buf, sizeof buf, 5000);
    assert_true(len > 0);
    assert_int_equal(ntcp_verify_parse(&m, buf, len, NULL), 0);
    assert_int_equal(m.method, VERIFY_PROOF);
    assert_int_equal(read_exact(peer, buf, 1, 5000), 0);
    close(peer);

    /* An HTTP request, a STUN header without cookie: refused too. */
    r = alice_vs_bytes("GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27, 5000, NULL);
    assert_int_equal(r.err, NTCP_EPROTO);
    uint8_t nocookie[20] = {0x00, 0x11, 0x00, 0x00};
    nocookie[1] = 0x20;
    r = alice_vs_bytes(nocookie, sizeof nocookie, 5000, NULL);
    assert_int_equal(r.err, NTCP_EPROTO);
}

static void test_oversize(void **state)
{
    (void)state;
    /* A plausible header announcing 4000 bytes: refused on the header,
     * long before the timeout, without waiting for a body. */
    uint8_t h[20] = {0x00, 0x00, 0x0F, 0xA0, 0x21, 0x12, 0xA4, 0x42};
    uint16_t type = 0x0E20; /* HELLO indication: C1C0 = 01 -> bit 4 */
    type = (uint16_t)((type & 0x000F) | ((type & 0x0070) << 1) | ((type & 0x0F80) << 2) | 0x0010);
    h[0] = (uint8_t)(type >> 8);
    h[1] = (uint8_t)type;
    ntcp_verify_result r = alice_vs_bytes(h, sizeof h, 20000, NULL);
    assert_int_equal(r.err, NTCP_EPROTO);
    assert_string_equal(r.why, "message too long");
}

static void test_slowloris_and_silence(void **state)
{
    (void)state;
    uint8_t buf[VERIFY_MAX_MESSAGE], sid[16], rnd[32];
    memset(rnd, 3, 32);
    ntcp_verify_session_id(NONCE, sid);
    int n = ntcp_verify_build_hello(buf, sizeof buf, 1, sid, "bob", bob_pub, rnd);
    assert_true(n > 30);
    /* Half a header, then half a message, then nothing: timed out. */
    ntcp_verify_result r = alice_vs_bytes(buf, 10, 200, NULL);
    assert_int_equal(r.err, NTCP_ETIMEDOUT);
    r = alice_vs_bytes(buf, (size_t)n - 8, 200, NULL);
    assert_int_equal(r.err, NTCP_ETIMEDOUT);
    /* A whole HELLO, then no PROOF. */
    r = alice_vs_bytes(buf, (size_t)n, 200, NULL);
    assert_int_equal(r.err, NTCP_ETIMEDOUT);
    r = alice_vs_bytes(NULL, 0, 200, NULL);
    assert_int_equal(r.err, NTCP_ETIMEDOUT);
}

static void test_early_data(void **state)
{
    (void)state;
    /* Bob's application data rides in the same segment as his PROOF. */
    static const uint8_t app[] = "EARLY-APPLICATION-DATA";
    int fds[2];
    tcp_pair(fds);
    script s;
    script_default(&s, fds[1]);
    s.trailer = app;
    s.trailer_len = sizeof app;
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, script_run, &s), 0);
    ntcp_verify_params pa;
    alice_params(&pa, 5000);
    ntcp_verify_result r;
    int rc = ntcp_verify_fd(fds[0], &pa, &r);
    assert_int_equal(rc, 0);
    uint8_t got[sizeof app + 8];
    assert_int_equal(read_exact(r.fd, got, sizeof app, 5000), sizeof app);
    assert_memory_equal(got, app, sizeof app);
    shutdown(r.fd, SHUT_WR); /* the script reads alice's flight, then EOF */
    pthread_join(th, NULL);
    assert_true(s.got_proof);
    assert_int_equal(s.after_flight, 0);
    close(fds[1]);
    /* Nothing else was in the stream. */
    assert_int_equal(read_exact(r.fd, got, 1, 5000), 0);
    close(r.fd);
}

static void test_peer_closes(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    int fds[2];
    unix_pair(fds);
    send_all(fds[1], "\x00\x11\x00\x08", 4);
    close(fds[1]);
    ntcp_verify_params pa;
    alice_params(&pa, 5000);
    outcome oa = {0};
    assert_int_equal(ntcp_verify_start(&loop, fds[0], &pa, on_done, &oa, NULL), 0);
    outcome *os[] = {&oa};
    run_until(&loop, os, 1);
    assert_int_equal(oa.r.err, NTCP_ECLOSED);
    expect_closed(fds[0]);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_self_connect(void **state)
{
    (void)state;
    /* A TCP self-connect (simultaneous open with oneself, which a punch on
     * one host can produce): alice reads her own HELLO. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    socklen_t sl = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    ntcp_verify_params pa;
    alice_params(&pa, 5000);
    ntcp_verify_result r;
    assert_int_equal(ntcp_verify_fd(fd, &pa, &r), NTCP_EPROTO);
    assert_string_equal(r.why, "peer claims our role");
    expect_closed(fd);
}

static void test_protocol_breaches(void **state)
{
    (void)state;
    /* An unknown comprehension-required attribute. */
    script s;
    script_default(&s, -1);
    s.extra_attr = true;
    ntcp_verify_result r;
    assert_int_equal(alice_vs_script(&s, &r, 5000), NTCP_EPROTO);
    assert_string_equal(r.why, "unknown attribute");
    assert_true(s.got_proof);
    assert_int_equal(s.after_flight, 0);
    /* A peer claiming alice's role. */
    script_default(&s, -1);
    s.role = s.sign_role = BROKER_ROLE_REQUESTER;
    assert_int_equal(alice_vs_script(&s, &r, 5000), NTCP_EPROTO);
    assert_string_equal(r.why, "peer claims our role");
    /* A HELLO, then a second HELLO where the PROOF belongs. */
    uint8_t hb[2 * VERIFY_MAX_MESSAGE], sid2[16], rnd2[32];
    memset(rnd2, 4, 32);
    ntcp_verify_session_id(NONCE, sid2);
    int h = ntcp_verify_build_hello(hb, sizeof hb, 1, sid2, "bob", bob_pub, rnd2);
    memcpy(hb + h, hb, (size_t)h);
    r = alice_vs_bytes(hb, 2 * (size_t)h, 5000, NULL);
    assert_int_equal(r.err, NTCP_EPROTO);
    assert_string_equal(r.why, "expected PROOF");
    /* A REFUSE where the HELLO belongs (no version-2 end sends one, but it
     * is understood): the peer's code is reported. */
    h = ntcp_verify_build_refuse(hb, sizeof hb, VERIFY_ERR_WRONG_PEER, "not you");
    r = alice_vs_bytes(hb, (size_t)h, 5000, NULL);
    assert_int_equal(r.err, NTCP_EPROTO);
    assert_int_equal(r.peer_code, VERIFY_ERR_WRONG_PEER);
    /* A PROOF before any HELLO. */
    uint8_t buf[VERIFY_MAX_MESSAGE], sig[64] = {0};
    int n = ntcp_verify_build_proof(buf, sizeof buf, sig);
    r = alice_vs_bytes(buf, (size_t)n, 5000, NULL);
    assert_int_equal(r.err, NTCP_EPROTO);
    assert_string_equal(r.why, "expected HELLO");
}

/* The driver's half round trip: bob's flight is in the socket and bob never
 * reads; alice is done on it alone, and bob's core, fed alice's flight
 * later, holds the same binding. */
static void test_driver_on_peer_flight_alone(void **state)
{
    (void)state;
    ntcp_verify_params pb;
    bob_params(&pb, 0);
    ntcp_verify_core *b = malloc(sizeof *b);
    assert_int_equal(ntcp_verify_core_init(b, &pb, NULL), 0);
    uint8_t fb[2 * VERIFY_MAX_MESSAGE], fa[2 * VERIFY_MAX_MESSAGE];
    size_t lb = take_all(b, fb, sizeof fb);
    int peer;
    ntcp_verify_result r = alice_vs_bytes(fb, lb, 5000, &peer);
    assert_int_equal(r.err, 0);
    size_t la = read_msg(peer, fa, sizeof fa, 5000);
    assert_true(la > 0);
    size_t l2 = read_msg(peer, fa + la, sizeof fa - la, 5000);
    assert_true(l2 > 0);
    close(peer);
    assert_int_equal(ntcp_verify_core_input(b, fa, la + l2), VERIFY_DONE);
    assert_memory_equal(r.binding, b->binding, 32);
    free(b);
}

#ifdef VERIFY_CORPUS_DIR
static size_t read_file(const char *name, uint8_t *buf, size_t cap)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", VERIFY_CORPUS_DIR, name);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    size_t n = fread(buf, 1, cap, f);
    fclose(f);
    return n;
}

/* The seeds made by tests/fuzz/make_verify_corpus.py, independently of
 * this code (Python, its own Ed25519): the valid flight passes, so both
 * agree on the transcript layout; its variants fail where they should. */
static void test_independent_seeds(void **state)
{
    (void)state;
    static const uint8_t A_SEED[32] = "fuzz-alice-private-key-seed-0001";
    static const uint8_t B_SEED[32] = "fuzz-bob-private-key-seed-000002";
    static const uint8_t F_NONCE[32] = "fuzz-session-nonce-0123456789abc";
    EVP_PKEY *ak = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, A_SEED, 32);
    EVP_PKEY *bk = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, B_SEED, 32);
    assert_non_null(ak);
    assert_non_null(bk);
    ntcp_verify_params p;
    memset(&p, 0, sizeof p);
    p.key = ak;
    p.name = "alice";
    p.peer_name = "bob";
    ntcp_identity_public(bk, p.peer_key);
    memcpy(p.nonce, F_NONCE, 32);
    p.role = BROKER_ROLE_REQUESTER;
    static const struct {
        const char *seed;
        int state, err;
        const char *why;
    } cases[] = {
        {"hello_proof", VERIFY_DONE, 0, ""},
        {"hello_proof_later_version", VERIFY_DONE, 0, ""},
        {"hello_optional_attr", VERIFY_DONE, 0, ""},
        {"hello", VERIFY_WAIT_PROOF, 0, ""},
        {"truncated_flight", VERIFY_WAIT_PROOF, 0, ""},
        {"hello_badproof", VERIFY_FAILED, NTCP_EINTEGRITY, "the peer's signature does not verify"},
        {"hello_proof_downgraded", VERIFY_FAILED, NTCP_EINTEGRITY,
         "the peer's signature does not verify"},
        {"hello_other_nonce", VERIFY_FAILED, NTCP_EINTEGRITY, "the peer's signature does not verify"},
        {"hello_v1", VERIFY_FAILED, NTCP_EPROTO, "the peer speaks only version 1"},
        {"hello_wrong_session", VERIFY_FAILED, NTCP_EINTEGRITY, "not our session"},
        {"hello_our_role", VERIFY_FAILED, NTCP_EPROTO, "peer claims our role"},
        {"hello_wrong_key", VERIFY_FAILED, NTCP_EINTEGRITY, "not the key the broker vouched for"},
        {"hello_wrong_name", VERIFY_FAILED, NTCP_EINTEGRITY, "not the peer's name"},
        {"hello_unknown_attr", VERIFY_FAILED, NTCP_EPROTO, "unknown attribute"},
        {"reflected", VERIFY_FAILED, NTCP_EPROTO, "peer claims our role"},
        {"reflected_role_turned", VERIFY_FAILED, NTCP_EPROTO, "our own HELLO came back"},
        {"hello_hello", VERIFY_FAILED, NTCP_EPROTO, "expected PROOF"},
        {"proof_first", VERIFY_FAILED, NTCP_EPROTO, "expected HELLO"},
        {"refuse", VERIFY_FAILED, NTCP_EPROTO, "the peer refused"},
        {"garbage", VERIFY_FAILED, NTCP_EPROTO, "not STUN"},
        {"oversize_header", VERIFY_FAILED, NTCP_EPROTO, "message too long"},
    };
    ntcp_verify_core *c = malloc(sizeof *c);
    uint8_t buf[1024], zero[32] = {0};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        size_t n = read_file(cases[i].seed, buf, sizeof buf);
        assert_int_equal(ntcp_verify_core_init(c, &p, zero), 0);
        /* As the driver feeds it: never more than wanted. */
        size_t off = 0, want;
        while (off < n && (want = ntcp_verify_core_want(c)) > 0) {
            if (want > n - off)
                want = n - off;
            ntcp_verify_core_input(c, buf + off, want);
            off += want;
        }
        if (c->state != cases[i].state || c->err != cases[i].err ||
            strcmp(c->why, cases[i].why) != 0)
            fail_msg("seed %s: state %d err %d why \"%s\"", cases[i].seed, c->state, c->err,
                     c->why);
        if (strcmp(cases[i].seed, "hello_proof") == 0)
            assert_int_equal(off, n);
        if (strcmp(cases[i].seed, "refuse") == 0)
            assert_int_equal(c->peer_code, 403);
    }
    /* The early data after the PROOF is never taken. */
    size_t n = read_file("hello_proof_early", buf, sizeof buf);
    assert_int_equal(ntcp_verify_core_init(c, &p, zero), 0);
    size_t off = 0, want;
    while (off < n && (want = ntcp_verify_core_want(c)) > 0) {
        ntcp_verify_core_input(c, buf + off, want < n - off ? want : n - off);
        off += want < n - off ? want : n - off;
    }
    assert_int_equal(c->state, VERIFY_DONE);
    assert_int_equal(n - off, 7);
    assert_memory_equal(buf + off, "EARLY!!", 7);
    free(c);
    EVP_PKEY_free(ak);
    EVP_PKEY_free(bk);
}
#endif

static void test_params_from_go(void **state)
{
    (void)state;
    broker_go go;
    memset(&go, 0, sizeof go);
    strcpy(go.peer.name, "bob");
    memcpy(go.peer.public_key, bob_pub, 32);
    memcpy(go.nonce, NONCE, 32);
    go.role = BROKER_ROLE_REQUESTER;
    ntcp_verify_params p;
    memset(&p, 0, sizeof p);
    /* No key in the GO: nothing to check the peer against. */
    assert_int_equal(ntcp_verify_params_from_go(&p, &go), NTCP_EINVAL);
    go.peer.has_public_key = true;
    assert_int_equal(ntcp_verify_params_from_go(&p, &go), 0);
    assert_string_equal(p.peer_name, "bob");
    assert_memory_equal(p.peer_key, bob_pub, 32);
    assert_memory_equal(p.nonce, NONCE, 32);
    assert_int_equal(p.role, BROKER_ROLE_REQUESTER);
}

static void test_cancel_and_args(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    int fds[2];
    unix_pair(fds);
    ntcp_verify_params pa;
    alice_params(&pa, 5000);
    outcome oa = {0};
    ntcp_verify *v;
    assert_int_equal(ntcp_verify_start(&loop, fds[0], &pa, on_done, &oa, &v), 0);
    ntcp_verify_cancel(v);
    assert_false(oa.done);
    outcome *os[] = {&oa};
    run_until(&loop, os, 1);
    assert_int_equal(oa.r.err, NTCP_ECLOSED);
    expect_closed(fds[0]);
    close(fds[1]);

    /* Bad arguments: no callback, the socket untouched. */
    unix_pair(fds);
    pa.name = "bad name";
    assert_int_equal(ntcp_verify_start(&loop, fds[0], &pa, on_done, &oa, NULL), NTCP_EINVAL);
    alice_params(&pa, 5000);
    pa.role = 7;
    assert_int_equal(ntcp_verify_start(&loop, fds[0], &pa, on_done, &oa, NULL), NTCP_EINVAL);
    assert_int_equal(fcntl(fds[0], F_GETFD), 0);
    close(fds[0]);
    close(fds[1]);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_codec),
        cmocka_unit_test(test_transcript_layout),
        cmocka_unit_test(test_cores_agree),
        cmocka_unit_test(test_half_round_trip),
        cmocka_unit_test(test_async_tcp_ok),
        cmocka_unit_test(test_blocking_ok),
        cmocka_unit_test(test_wrong_key_for_target),
        cmocka_unit_test(test_wrong_key_for_requester),
        cmocka_unit_test(test_wrong_name),
        cmocka_unit_test(test_wrong_nonce),
        cmocka_unit_test(test_signature_binds_nonce),
        cmocka_unit_test(test_honest_script),
        cmocka_unit_test(test_versions),
        cmocka_unit_test(test_impostor),
        cmocka_unit_test(test_replay),
        cmocka_unit_test(test_no_proof_for_refused),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_oversize),
        cmocka_unit_test(test_slowloris_and_silence),
        cmocka_unit_test(test_early_data),
        cmocka_unit_test(test_peer_closes),
        cmocka_unit_test(test_self_connect),
        cmocka_unit_test(test_protocol_breaches),
        cmocka_unit_test(test_driver_on_peer_flight_alone),
#ifdef VERIFY_CORPUS_DIR
        cmocka_unit_test(test_independent_seeds),
#endif
        cmocka_unit_test(test_params_from_go),
        cmocka_unit_test(test_cancel_and_args),
    };
    return cmocka_run_group_tests(tests, setup_keys, teardown_keys);
}
