/*
 * test_broker_tls.c: the broker and peer sessions over TLS 1.3, in-process
 * on loopback, with throwaway certificates: registration and connects by CA
 * and name or by pin, refusals (pin, CA, name) with their reasons, plain and
 * TLS on the wrong port, a port for each, garbage and stalled handshakes,
 * records split byte by byte, KeyUpdate, close_notify, certificate reload,
 * and the ntcp-brokerd options. Waits poll with deadlines.
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
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <uv.h>

#include "addr.h"
#include "broker.h"
#include "broker_proto.h"
#include "identity.h"
#include "ntcp.h"
#include "session.h"
#include "tls.h"
#include "tls_certs.h"

typedef struct fx {
    uv_loop_t loop;
    ntcp_broker *broker;
    ntcp_broker_config cfg;
    char addr[64], tls_addr[64];
    int port, tls_port;
    bool stopped;
    char dir[64];
    tls_files files;
} fx;

static uint64_t now_ms(void)
{
    return uv_hrtime() / 1000000;
}

typedef bool (*pred_fn)(void *arg);

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

static void quiet_log(void *user, int level, const char *msg)
{
    (void)user;
    if (getenv("BROKER_TEST_LOG"))
        fprintf(stderr, "[broker %d] %s\n", level, msg);
}

static void start_broker(fx *f)
{
    assert_int_equal(ntcp_broker_start(&f->loop, &f->cfg, &f->broker), 0);
    struct sockaddr_storage ss;
    assert_int_equal(ntcp_broker_tcp_addr(f->broker, &ss), 0);
    f->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    snprintf(f->addr, sizeof f->addr, "127.0.0.1:%d", f->port);
    f->tls_port = 0;
    f->tls_addr[0] = '\0';
    if (ntcp_broker_tls_addr(f->broker, &ss) == 0) {
        f->tls_port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        snprintf(f->tls_addr, sizeof f->tls_addr, "127.0.0.1:%d", f->tls_port);
    }
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
    if (!f)
        return -1;
    uv_loop_init(&f->loop);
    strcpy(f->dir, "/tmp/ntcp-broker-tls-XXXXXX");
    if (!mkdtemp(f->dir) || !tls_files_make(&f->files, f->dir))
        return -1;
    f->cfg.listen = "127.0.0.1:0";
    f->cfg.broker_id = "test-broker";
    f->cfg.log = quiet_log;
    f->cfg.log_level = NTCP_LOG_DEBUG;
    f->cfg.source_rate = -1;
    f->cfg.tls_cert = f->files.cert;
    f->cfg.tls_key = f->files.key;
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

/* ---- peers ---- */

typedef struct peer {
    ntcp_session *s;
    EVP_PKEY *key;
    uint8_t pub[32];
    int state, err;
    int failures; /* state changes with an error */
    bool got_go;
    broker_go go;
} peer;

static void on_go(ntcp_session *s, const broker_go *go, void *user)
{
    peer *p = user;
    (void)s;
    p->go = *go;
    p->go.peer.profile = NULL;
    p->go.peer.profile_len = 0;
    p->got_go = true;
}

static void on_state(ntcp_session *s, int state, int err, int code, void *user)
{
    peer *p = user;
    (void)s;
    (void)code;
    p->state = state;
    if (err) {
        p->err = err;
        p->failures++;
    }
}

typedef struct tls_opts {
    bool tls, insecure;
    const char *ca, *host, *pin;
} tls_opts;

static void peer_start(fx *f, peer *p, const char *broker, const char *name, const tls_opts *o)
{
    memset(p, 0, sizeof *p);
    assert_int_equal(ntcp_identity_generate(&p->key), 0);
    assert_int_equal(ntcp_identity_public(p->key, p->pub), 0);
    ntcp_session_config c = {0};
    c.broker = broker;
    c.name = name;
    c.key = p->key;
    c.broker_id = "test-broker";
    c.backoff_min_ms = 50;
    c.backoff_max_ms = 500;
    c.request_timeout_ms = 2000;
    c.on_go = on_go;
    c.on_state = on_state;
    c.user = p;
    if (o) {
        c.tls = o->tls;
        c.tls_insecure = o->insecure;
        c.tls_ca_file = o->ca;
        c.tls_host = o->host;
        c.tls_pin = o->pin;
    }
    assert_int_equal(ntcp_session_start(&f->loop, &c, &p->s), 0);
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
    return ((peer *)arg)->state == NTCP_SESSION_REGISTERED;
}

static bool has_failed(void *arg)
{
    return ((peer *)arg)->failures > 0;
}

typedef struct result {
    bool done;
    int err, code;
    broker_go go;
    broker_peer_info info;
} result;

static void on_connect_done(ntcp_session *s, int err, int code, const broker_go *go, void *arg)
{
    result *r = arg;
    (void)s;
    r->done = true;
    r->err = err;
    r->code = code;
    if (go) {
        r->go = *go;
        r->go.peer.profile = NULL;
    }
}

static void on_lookup_done(ntcp_session *s, int err, int code, const broker_peer_info *info, void *arg)
{
    result *r = arg;
    (void)s;
    r->done = true;
    r->err = err;
    r->code = code;
    if (info) {
        r->info = *info;
        r->info.profile = NULL;
    }
}

static bool result_done(void *arg)
{
    return ((result *)arg)->done;
}

static void connect_ok(fx *f, peer *from, peer *to, const char *to_name)
{
    result r;
    memset(&r, 0, sizeof r);
    to->got_go = false;
    assert_int_equal(ntcp_session_connect(from->s, to_name, 3000, on_connect_done, &r), 0);
    assert_true(wait_for(f, result_done, &r, 4000));
    assert_int_equal(r.err, 0);
    assert_string_equal(r.go.peer.name, to_name);
    assert_memory_equal(r.go.peer.public_key, to->pub, 32);
    assert_true(wait_for(f, flag_set, &to->got_go, 2000));
    assert_memory_equal(r.go.nonce, to->go.nonce, BROKER_NONCE_SIZE);
    assert_memory_equal(to->go.peer.public_key, from->pub, 32);
}

static ntcp_broker_stats stats(fx *f)
{
    ntcp_broker_stats st;
    ntcp_broker_get_stats(f->broker, &st);
    return st;
}

/* ---- raw clients: a TCP socket, with or without our TLS layer ---- */

typedef struct raw {
    int fd;
    SSL_CTX *ctx;
    ntcp_tls *t;
    uint8_t plain[8192];
    size_t plen;
    int rc;    /* the TLS layer's error, 0 while fine */
    bool eof;  /* the broker closed the connection */
} raw;

static void raw_connect(fx *f, raw *r, int port)
{
    (void)f;
    memset(r, 0, sizeof *r);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    r->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(r->fd >= 0);
    assert_int_equal(connect(r->fd, (struct sockaddr *)&sin, sizeof sin), 0);
}

static void raw_tls(fx *f, raw *r, int port)
{
    raw_connect(f, r, port);
    ntcp_tls_verify v = {.ca_file = f->files.ca};
    char err[320];
    assert_non_null(r->ctx = ntcp_tls_client_ctx(&v, err, sizeof err));
    assert_non_null(r->t = ntcp_tls_new(r->ctx, false, "broker.test", &v));
}

static void raw_close(raw *r)
{
    if (r->fd >= 0)
        close(r->fd);
    r->fd = -1;
    ntcp_tls_free(r->t);
    SSL_CTX_free(r->ctx);
    r->t = NULL;
    r->ctx = NULL;
}

/* Sends ciphertext the layer holds, chunk bytes per send(), running the
 * broker's loop in between, so that it reads records in pieces. */
static void raw_flush(fx *f, raw *r, size_t chunk)
{
    uint8_t buf[16384];
    size_t n;
    while ((n = ntcp_tls_take(r->t, buf, sizeof buf)) > 0) {
        for (size_t off = 0; off < n; off += chunk) {
            size_t k = n - off < chunk ? n - off : chunk;
            if (send(r->fd, buf + off, k, MSG_NOSIGNAL) != (ssize_t)k)
                return; /* the broker closed: seen by the next read */
            if (chunk < n)
                uv_run(&f->loop, UV_RUN_NOWAIT);
        }
    }
}

static void raw_send_plain(fx *f, raw *r, const void *data, size_t len, size_t chunk)
{
    if (r->t) {
        assert_int_equal(ntcp_tls_write(r->t, data, len), 0);
        raw_flush(f, r, chunk);
    } else {
        assert_int_equal(send(r->fd, data, len, MSG_NOSIGNAL), (ssize_t)len);
    }
}

/* Runs the broker and reads until pred(r) holds or timeout_ms pass. */
static bool raw_wait(fx *f, raw *r, bool (*pred)(raw *), uint32_t timeout_ms)
{
    uint64_t end = now_ms() + timeout_ms;
    for (;;) {
        if (pred(r))
            return true;
        if (now_ms() > end)
            return false;
        uint8_t buf[16384];
        ssize_t n = r->eof ? -1 : recv(r->fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno == ECONNRESET))
            r->eof = true;
        if (n > 0 && !r->t) {
            size_t k = (size_t)n < sizeof r->plain - r->plen ? (size_t)n : sizeof r->plain - r->plen;
            memcpy(r->plain + r->plen, buf, k);
            r->plen += k;
        } else if (n > 0) {
            assert_int_equal(ntcp_tls_feed(r->t, buf, (size_t)n), 0);
        }
        if (r->t && r->rc == 0) {
            int rc;
            while ((rc = ntcp_tls_read(r->t, r->plain + r->plen, sizeof r->plain - r->plen)) > 0)
                r->plen += (size_t)rc;
            if (rc < 0)
                r->rc = rc;
            if (!r->eof)
                raw_flush(f, r, 65536);
        }
        if (n > 0)
            continue;
        uv_run(&f->loop, UV_RUN_NOWAIT);
        struct pollfd pfd = {.fd = r->fd, .events = POLLIN};
        poll(&pfd, 1, 2);
    }
}

static bool raw_established(raw *r)
{
    return r->t && ntcp_tls_established(r->t);
}

static bool raw_has_msg(raw *r)
{
    return r->plen >= 20 && r->plen >= 20 + (size_t)((r->plain[2] << 8) | r->plain[3]);
}

static bool raw_eof(raw *r)
{
    return r->eof;
}

static bool raw_tls_closed(raw *r)
{
    return r->rc != 0;
}

/* Takes the first message of r->plain; returns its error code (0 success). */
static int raw_take_code(raw *r)
{
    size_t total = 20 + (size_t)((r->plain[2] << 8) | r->plain[3]);
    stun_msg m;
    int code = -1;
    if (stun_parse(&m, r->plain, total) == 0) {
        if (m.cls == STUN_SUCCESS)
            code = 0;
        else if (m.cls == STUN_ERROR)
            broker_get_error(&m, &code, NULL, NULL);
    }
    memmove(r->plain, r->plain + total, r->plen - total);
    r->plen -= total;
    return code;
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

/* ---- tests ---- */

static void test_register_and_connect_over_tls(void **state)
{
    fx *f = *state;
    start_broker(f);
    assert_int_equal(f->tls_port, f->port); /* a certificate alone: the one port is TLS */
    tls_opts by_name = {.tls = true, .ca = f->files.ca, .host = "broker.test"};
    tls_opts by_ip = {.tls = true, .ca = f->files.ca}; /* the name is the broker's address */
    tls_opts by_pin = {.tls = true, .pin = f->files.pin};
    peer a, b, c;
    peer_start(f, &a, f->addr, "alice", &by_name);
    peer_start(f, &b, f->addr, "bob", &by_pin);
    peer_start(f, &c, f->addr, "carol", &by_ip);
    assert_true(wait_for(f, is_registered, &a, 3000));
    assert_true(wait_for(f, is_registered, &b, 3000));
    assert_true(wait_for(f, is_registered, &c, 3000));
    assert_string_equal(ntcp_session_tls_error(a.s), "");

    result r;
    memset(&r, 0, sizeof r);
    assert_int_equal(ntcp_session_lookup(a.s, "bob", 2000, on_lookup_done, &r), 0);
    assert_true(wait_for(f, result_done, &r, 3000));
    assert_int_equal(r.err, 0);
    assert_memory_equal(r.info.public_key, b.pub, 32);
    struct sockaddr_storage bpub;
    assert_int_equal(ntcp_session_public_addr(b.s, &bpub), 0);
    assert_int_equal(ntcp_sa_port(&r.info.public_addr), ntcp_sa_port(&bpub));

    connect_ok(f, &a, &b, "bob");
    connect_ok(f, &c, &a, "alice");
    ntcp_broker_stats st = stats(f);
    assert_int_equal(st.tls_sessions, 3);
    assert_int_equal(st.sessions, 3);
    assert_int_equal(st.connects_ok, 2);
    assert_int_equal(st.tls_failed, 0);
    peer_stop(&a);
    peer_stop(&b);
    peer_stop(&c);
}

static bool four_tls_failures(void *arg)
{
    ntcp_broker_stats st;
    ntcp_broker_get_stats(arg, &st);
    return st.tls_failed >= 4;
}

typedef struct refusal {
    tls_opts o;
    const char *why;
} refusal;

static void test_refused_certificates(void **state)
{
    fx *f = *state;
    start_broker(f);
    refusal cases[] = {
        {{.tls = true, .pin = f->files.self_pin}, "certificate pin mismatch"},
        {{.tls = true, .ca = f->files.other_ca, .host = "broker.test"},
         "certificate verify failed: unable to get local issuer certificate"},
        {{.tls = true, .ca = f->files.ca, .host = "other.test"},
         "certificate verify failed: hostname mismatch"},
        {{.tls = true, .ca = f->files.ca, .host = "broker.test", .pin = f->files.self_pin},
         "certificate pin mismatch"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        peer p;
        peer_start(f, &p, f->addr, "mallory", &cases[i].o);
        assert_true(wait_for(f, has_failed, &p, 3000));
        assert_int_equal(p.err, NTCP_ECERT);
        assert_string_equal(ntcp_session_tls_error(p.s), cases[i].why);
        assert_int_equal(ntcp_session_registrations(p.s), 0);
        peer_stop(&p);
    }
    /* Contradictions and bad pins are refused at once. */
    peer p;
    ntcp_session_config c = {0};
    EVP_PKEY *k;
    assert_int_equal(ntcp_identity_generate(&k), 0);
    c.broker = f->addr;
    c.name = "x";
    c.key = k;
    c.tls = true;
    c.tls_insecure = true;
    c.tls_pin = f->files.pin;
    assert_int_equal(ntcp_session_start(&f->loop, &c, &p.s), NTCP_EINVAL);
    c.tls_insecure = false;
    c.tls_pin = "sha256/short";
    assert_int_equal(ntcp_session_start(&f->loop, &c, &p.s), NTCP_EINVAL);
    c.tls_pin = NULL;
    c.tls_ca_file = "/nonexistent/ca.pem";
    assert_int_equal(ntcp_session_start(&f->loop, &c, &p.s), NTCP_ECONFIG);
    EVP_PKEY_free(k);
    /* The broker saw the alerts; nobody registered. */
    assert_true(wait_for(f, four_tls_failures, f->broker, 2000));
    ntcp_broker_stats st = stats(f);
    assert_int_equal(st.tls_failed, 4);
    assert_int_equal(st.registrations, 0);
}

static void test_wrong_port_and_both_ports(void **state)
{
    fx *f = *state;
    /* One plain port and one TLS port. */
    f->cfg.tls_listen = "127.0.0.1:0";
    start_broker(f);
    assert_true(f->tls_port != 0 && f->tls_port != f->port);
    tls_opts pin = {.tls = true, .pin = f->files.pin};

    /* A plain session on the TLS port: the broker's alert tells it. */
    peer p;
    peer_start(f, &p, f->tls_addr, "plain", NULL);
    assert_true(wait_for(f, has_failed, &p, 3000));
    assert_int_equal(p.err, NTCP_ETLS);
    assert_string_equal(ntcp_session_tls_error(p.s), "the broker speaks TLS: turn TLS on");
    peer_stop(&p);
    /* A TLS session on the plain port: the broker answers 400 in STUN,
     * which is no TLS record. */
    peer_start(f, &p, f->addr, "secure", &pin);
    assert_true(wait_for(f, has_failed, &p, 3000));
    assert_int_equal(p.err, NTCP_ETLS);
    assert_string_equal(ntcp_session_tls_error(p.s),
                        "the broker answered in plain TCP: no TLS on this port");
    assert_int_equal(stats(f).bad_sessions, 2); /* both wrong-port sessions */
    peer_stop(&p);

    /* Each on its own port: both register, and connect to each other. */
    peer a, b;
    peer_start(f, &a, f->addr, "alice", NULL);
    peer_start(f, &b, f->tls_addr, "bob", &pin);
    assert_true(wait_for(f, is_registered, &a, 3000));
    assert_true(wait_for(f, is_registered, &b, 3000));
    connect_ok(f, &a, &b, "bob");
    connect_ok(f, &b, &a, "alice");
    ntcp_broker_stats st = stats(f);
    assert_int_equal(st.tls_sessions, 1);
    assert_int_equal(st.sessions, 2);
    peer_stop(&a);
    peer_stop(&b);
}

static void test_silent_broker(void **state)
{
    fx *f = *state;
    /* A port that accepts TCP (the kernel does) and never answers the
     * ClientHello: the session gives up after its request timeout. */
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sin;
    assert_int_equal(bind(l, (struct sockaddr *)&sin, sizeof sin), 0);
    assert_int_equal(listen(l, 8), 0);
    assert_int_equal(getsockname(l, (struct sockaddr *)&sin, &len), 0);
    snprintf(f->addr, sizeof f->addr, "127.0.0.1:%d", ntohs(sin.sin_port));
    tls_opts pin = {.tls = true, .pin = f->files.pin};
    peer p;
    peer_start(f, &p, f->addr, "alice", &pin);
    assert_true(wait_for(f, has_failed, &p, 4000));
    assert_int_equal(p.err, NTCP_ETIMEDOUT); /* request_timeout_ms, 2000 */
    assert_int_equal(ntcp_session_registrations(p.s), 0);
    peer_stop(&p);
    close(l);
}

static bool no_sessions(void *arg)
{
    ntcp_broker_stats st;
    ntcp_broker_get_stats(arg, &st);
    return st.sessions == 0 && st.tls_sessions == 0;
}

static void test_garbage_and_stalled_handshakes(void **state)
{
    fx *f = *state;
    f->cfg.handshake_ms = 300;
    start_broker(f);
    raw r;
    /* Garbage: closed at once (after OpenSSL's alert, if any). */
    raw_connect(f, &r, f->port);
    raw_send_plain(f, &r, "GET / HTTP/1.0\r\n\r\n", 18, 0);
    assert_true(raw_wait(f, &r, raw_eof, 2000));
    assert_int_equal(stats(f).reaped, 0); /* not the reaper: the TLS layer */
    raw_close(&r);
    /* A plain STUN request: the same. */
    uint8_t buf[512], pub[32] = {1};
    raw_connect(f, &r, f->port);
    raw_send_plain(f, &r, buf, build_hello(buf, sizeof buf, "plain", pub), 0);
    assert_true(raw_wait(f, &r, raw_eof, 2000));
    raw_close(&r);
    assert_int_equal(stats(f).tls_failed, 2);

    /* Half a ClientHello, then nothing: reaped after the handshake time. */
    raw_tls(f, &r, f->port);
    assert_int_equal(ntcp_tls_read(r.t, NULL, 0), 0);
    size_t n = ntcp_tls_take(r.t, buf, 40);
    assert_int_equal(n, 40);
    assert_int_equal(send(r.fd, buf, n, MSG_NOSIGNAL), (ssize_t)n);
    assert_true(raw_wait(f, &r, raw_eof, 2000));
    assert_int_equal(stats(f).reaped, 1); /* the reaper, not an error */
    assert_int_equal(stats(f).tls_failed, 2);
    raw_close(&r);
    /* Connected, never a byte: reaped too. */
    raw_connect(f, &r, f->port);
    assert_true(raw_wait(f, &r, raw_eof, 2000));
    raw_close(&r);
    /* Handshake done, then silence: still not registered, reaped. */
    raw_tls(f, &r, f->port);
    raw_flush(f, &r, 65536);
    assert_true(raw_wait(f, &r, raw_established, 2000));
    assert_true(raw_wait(f, &r, raw_eof, 2000));
    raw_close(&r);

    ntcp_broker_stats st = stats(f);
    assert_int_equal(st.reaped, 3);
    assert_int_equal(st.tls_failed, 2);
    assert_true(wait_for(f, no_sessions, f->broker, 2000));
}

static void test_split_records_keyupdate_close_notify(void **state)
{
    fx *f = *state;
    start_broker(f);
    raw r;
    raw_tls(f, &r, f->port);
    /* The handshake one byte per segment. */
    raw_flush(f, &r, 1);
    assert_true(raw_wait(f, &r, raw_established, 3000));
    /* A REGISTER in 1-byte records' worth of segments: the 401 comes. */
    EVP_PKEY *k;
    assert_int_equal(ntcp_identity_generate(&k), 0);
    uint8_t pub[32], buf[512];
    ntcp_identity_public(k, pub);
    size_t n = build_hello(buf, sizeof buf, "splitter", pub);
    raw_send_plain(f, &r, buf, n, 1);
    assert_true(raw_wait(f, &r, raw_has_msg, 2000));
    assert_int_equal(raw_take_code(&r), BROKER_ERR_UNAUTHORIZED);
    /* Two messages in one record, then one message across two records. */
    uint8_t two[1024];
    size_t n1 = build_hello(two, sizeof two, "splitter", pub);
    size_t n2 = build_hello(two + n1, sizeof two - n1, "splitter", pub);
    raw_send_plain(f, &r, two, n1 + n2, 65536);
    raw_send_plain(f, &r, buf, 10, 65536);
    raw_send_plain(f, &r, buf + 10, n - 10, 65536);
    for (int i = 0; i < 3; i++) {
        assert_true(raw_wait(f, &r, raw_has_msg, 2000));
        assert_int_equal(raw_take_code(&r), BROKER_ERR_UNAUTHORIZED);
    }
    /* KeyUpdate, asking the broker to update too; the session goes on. */
    assert_int_equal(ntcp_tls_key_update(r.t), 0);
    raw_send_plain(f, &r, buf, n, 65536);
    assert_true(raw_wait(f, &r, raw_has_msg, 2000));
    assert_int_equal(raw_take_code(&r), BROKER_ERR_UNAUTHORIZED);
    assert_int_equal(r.rc, 0);
    /* close_notify: the broker answers with its own and closes. */
    ntcp_tls_shutdown(r.t);
    raw_flush(f, &r, 65536);
    assert_true(raw_wait(f, &r, raw_tls_closed, 2000));
    assert_int_equal(r.rc, NTCP_ECLOSED);
    assert_true(raw_wait(f, &r, raw_eof, 2000));
    raw_close(&r);
    assert_true(wait_for(f, no_sessions, f->broker, 2000));
    assert_int_equal(stats(f).tls_failed, 0);
    assert_int_equal(stats(f).bad_sessions, 0);
    EVP_PKEY_free(k);
}

static bool copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "r"), *out = fopen(to, "w");
    char buf[8192];
    size_t n;
    bool ok = in && out;
    while (ok && (n = fread(buf, 1, sizeof buf, in)) > 0)
        ok = fwrite(buf, 1, n, out) == n;
    if (in)
        fclose(in);
    if (out && fclose(out) != 0)
        ok = false;
    return ok;
}

static void test_certificate_reload(void **state)
{
    fx *f = *state;
    /* The broker reads copies, so the test can replace them. */
    char cert[192], key[192];
    snprintf(cert, sizeof cert, "%s/live.pem", f->dir);
    snprintf(key, sizeof key, "%s/live.key", f->dir);
    assert_true(copy_file(f->files.cert, cert) && copy_file(f->files.key, key));
    f->cfg.tls_cert = cert;
    f->cfg.tls_key = key;
    start_broker(f);
    tls_opts old_pin = {.tls = true, .pin = f->files.pin};
    tls_opts new_pin = {.tls = true, .pin = f->files.self_pin};
    peer a;
    peer_start(f, &a, f->addr, "alice", &old_pin);
    assert_true(wait_for(f, is_registered, &a, 3000));

    /* A new key and certificate (self-signed), then SIGHUP's reload. */
    assert_true(copy_file(f->files.self_cert, cert) && copy_file(f->files.self_key, key));
    assert_int_equal(ntcp_broker_reload(f->broker), 0);
    peer b, c;
    peer_start(f, &b, f->addr, "bob", &new_pin);
    assert_true(wait_for(f, is_registered, &b, 3000));
    peer_start(f, &c, f->addr, "carol", &old_pin); /* new connections see the new key */
    assert_true(wait_for(f, has_failed, &c, 3000));
    assert_int_equal(c.err, NTCP_ECERT);
    peer_stop(&c);
    /* alice's session began with the old certificate and goes on. */
    assert_int_equal(a.state, NTCP_SESSION_REGISTERED);
    assert_int_equal(ntcp_session_registrations(a.s), 1);
    connect_ok(f, &b, &a, "alice");

    /* A broken file: the reload fails and the current certificate stays. */
    FILE *fp = fopen(cert, "w");
    assert_non_null(fp);
    fputs("not a certificate\n", fp);
    fclose(fp);
    assert_int_equal(ntcp_broker_reload(f->broker), NTCP_ECONFIG);
    peer_start(f, &c, f->addr, "carol", &new_pin);
    assert_true(wait_for(f, is_registered, &c, 3000));
    peer_stop(&a);
    peer_stop(&b);
    peer_stop(&c);
}

static void test_config_errors(void **state)
{
    fx *f = *state;
    ntcp_broker *b = NULL;
    f->cfg.tls_key = NULL; /* a certificate without its key */
    assert_int_equal(ntcp_broker_start(&f->loop, &f->cfg, &b), NTCP_ECONFIG);
    f->cfg.tls_key = f->files.self_key; /* the wrong key */
    assert_int_equal(ntcp_broker_start(&f->loop, &f->cfg, &b), NTCP_ECONFIG);
    f->cfg.tls_cert = NULL;
    f->cfg.tls_key = NULL;
    f->cfg.tls_listen = "127.0.0.1:0"; /* a TLS port without a certificate */
    assert_int_equal(ntcp_broker_start(&f->loop, &f->cfg, &b), NTCP_ECONFIG);
    assert_null(b);
    /* Without TLS there is no TLS address. */
    f->cfg.tls_listen = NULL;
    start_broker(f);
    struct sockaddr_storage ss;
    assert_int_equal(ntcp_broker_tls_addr(f->broker, &ss), NTCP_ENOTFOUND);
}

/* ---- the program ---- */

static const char *brokerd_path;

static int run_brokerd_usage(const char *a1, const char *a2, const char *a3, const char *a4)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 1);
        dup2(devnull, 2);
        execl(brokerd_path, brokerd_path, "--listen", "127.0.0.1:0", a1, a2, a3, a4, (char *)NULL);
        _exit(127);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_brokerd_tls(void **state)
{
    fx *f = *state;
    if (!brokerd_path) {
        skip();
        return;
    }
    /* Half a TLS setup is a usage error. */
    assert_int_equal(run_brokerd_usage("--tls-cert", f->files.cert, NULL, NULL), 2);
    assert_int_equal(run_brokerd_usage("--tls-listen", "127.0.0.1:0", NULL, NULL), 2);
    /* A key that does not match cannot start. */
    assert_int_equal(run_brokerd_usage("--tls-cert", f->files.cert, "--tls-key", f->files.self_key), 1);

    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(pfd[1], 2);
        close(pfd[0]);
        close(pfd[1]);
        execl(brokerd_path, brokerd_path, "--listen", "127.0.0.1:0", "--tls-cert", f->files.cert,
              "--tls-key", f->files.key, "--id", "test-broker", "--stats", "0", (char *)NULL);
        _exit(127);
    }
    close(pfd[1]);
    char line[1024];
    size_t len = 0;
    int port = 0;
    uint64_t end = now_ms() + 5000;
    while (now_ms() < end && len < sizeof line - 1 && !port) {
        struct pollfd p = {.fd = pfd[0], .events = POLLIN};
        if (poll(&p, 1, 100) <= 0)
            continue;
        ssize_t n = read(pfd[0], line + len, sizeof line - 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
        line[len] = '\0';
        const char *at = strstr(line, "listening on 127.0.0.1:");
        if (at && strstr(at, "(TLS)"))
            port = atoi(at + strlen("listening on 127.0.0.1:"));
    }
    close(pfd[0]);
    assert_true(port > 0);
    snprintf(f->addr, sizeof f->addr, "127.0.0.1:%d", port);
    tls_opts o = {.tls = true, .ca = f->files.ca, .host = "broker.test"};
    peer a;
    peer_start(f, &a, f->addr, "alice", &o);
    assert_true(wait_for(f, is_registered, &a, 5000));
    /* SIGHUP reloads the (same) certificate; the session stays. */
    assert_int_equal(kill(pid, SIGHUP), 0);
    peer b;
    peer_start(f, &b, f->addr, "bob", &o);
    assert_true(wait_for(f, is_registered, &b, 5000));
    connect_ok(f, &b, &a, "alice");
    peer_stop(&a);
    peer_stop(&b);

    /* The public API: a context with a "tls://" broker and its CA... */
    char url[80];
    snprintf(url, sizeof url, "tls://127.0.0.1:%d", port);
    ntcp_config_t nc;
    ntcp_config_init(&nc);
    nc.broker = url;
    nc.name = "dave";
    nc.broker_ca = f->files.ca;
    ntcp_t *ctx;
    assert_int_equal(ntcp_new(&nc, &ctx), 0);
    assert_int_equal(ntcp_listen(ctx, NULL, 5000), 0);
    ntcp_free(ctx);
    /* ...and one whose pin is not the broker's: told at once, not at the
     * timeout. */
    nc.broker_ca = NULL;
    nc.broker_pin = f->files.self_pin;
    nc.name = "eve";
    assert_int_equal(ntcp_new(&nc, &ctx), 0);
    assert_int_equal(ntcp_listen(ctx, NULL, 5000), NTCP_ECERT); /* not ETIMEDOUT */
    ntcp_free(ctx);
    assert_int_equal(kill(pid, SIGTERM), 0);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        brokerd_path = argv[1];
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_register_and_connect_over_tls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused_certificates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_port_and_both_ports, setup, teardown),
        cmocka_unit_test_setup_teardown(test_garbage_and_stalled_handshakes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_silent_broker, setup, teardown),
        cmocka_unit_test_setup_teardown(test_split_records_keyupdate_close_notify, setup, teardown),
        cmocka_unit_test_setup_teardown(test_certificate_reload, setup, teardown),
        cmocka_unit_test_setup_teardown(test_config_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_brokerd_tls, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
