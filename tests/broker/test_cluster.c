/*
 * test_cluster.c: ntcp-brokerd as a cluster on a real redis-server, both
 * started here on free loopback ports and stopped by PID: lookups and
 * connects across nodes, a name takeover refused across nodes, a node
 * holding many peers killed with SIGKILL (they re-register on another node
 * within two keepalive intervals, no name lost), Redis killed and started
 * again (registrations refused meanwhile, everything back after), the
 * relay's offer and RELAY-ADDR across nodes (TURN configured on the nodes;
 * no TURN server is needed: only the broker's part is tested).
 * Peers are broker sessions (src/session.c) on this test's loop.
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
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <uv.h>

#include "broker_proto.h"
#include "identity.h"
#include "ntcp.h"
#include "session.h"

static const char *brokerd_path, *redis_path;

#define EXPIRY_S 3 /* the nodes' --expiry: a keepalive (REFRESH) a second */
#define KEEPALIVE_MS (EXPIRY_S * 1000 / 3)

static uint64_t now_ms(void)
{
    return uv_hrtime() / 1000000;
}

/* n free loopback ports, distinct: each socket stays bound until all are
 * chosen (ports chosen one at a time may repeat, and a node then "starts"
 * on the port of another). */
static void free_ports(int *port, int n)
{
    int t[8];
    assert_true(n <= 8);
    for (int i = 0; i < n; i++) {
        t[i] = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t al = sizeof a;
        assert_int_equal(bind(t[i], (struct sockaddr *)&a, sizeof a), 0);
        assert_int_equal(getsockname(t[i], (struct sockaddr *)&a, &al), 0);
        port[i] = ntohs(a.sin_port);
    }
    for (int i = 0; i < n; i++)
        close(t[i]);
}

static bool can_connect(int port)
{
    int t = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bool ok = connect(t, (struct sockaddr *)&a, sizeof a) == 0;
    close(t);
    return ok;
}

typedef struct fx {
    uv_loop_t loop;
    int redis_port;
    pid_t redis;
    pid_t node[3];
    int port[3];
    bool turn[3];          /* start_node(): with --turn-server and the secret file */
    char turn_secret[64];  /* the secret file's path ("" until made) */
} fx;

#define TURN_SERVER "127.0.0.1:3478"
#define TURN_SECRET "cluster-turn-s3cr3t"
#define TURN_TTL_S 600

static pid_t spawn(const char *const argv[])
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (!getenv("CLUSTER_TEST_LOG")) {
            int null = open("/dev/null", O_WRONLY);
            dup2(null, 1);
            dup2(null, 2);
        }
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    return pid;
}

/* Until port takes connections, pid still running (a process that could
 * not bind its port must not pass for one that did). */
static void wait_port(int port, pid_t pid)
{
    uint64_t end = now_ms() + 10000;
    while (!can_connect(port)) {
        assert_true(now_ms() < end);
        assert_int_equal(waitpid(pid, NULL, WNOHANG), 0); /* still running */
        poll(NULL, 0, 10);
    }
    assert_int_equal(waitpid(pid, NULL, WNOHANG), 0);
}

static void start_redis(fx *f)
{
    char port[16];
    snprintf(port, sizeof port, "%d", f->redis_port);
    /* No persistence: what a restart loses is then all of Redis's state. */
    const char *argv[] = {redis_path, "--port", port, "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no", "--daemonize", "no", NULL};
    f->redis = spawn(argv);
    wait_port(f->redis_port, f->redis);
}

static void start_node(fx *f, int i)
{
    char listen[32], url[64], expiry[16], ttl[16];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", f->port[i]);
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/1", f->redis_port);
    snprintf(expiry, sizeof expiry, "%d", EXPIRY_S);
    snprintf(ttl, sizeof ttl, "%d", TURN_TTL_S);
    const char *argv[24] = {brokerd_path, "--listen", listen, "--cluster", url, "--id",
                            "test-cluster", "--expiry", expiry, "--stats", "0",
                            "--source-rate", "0"};
    int n = 13;
    if (f->turn[i]) {
        if (!f->turn_secret[0]) {
            snprintf(f->turn_secret, sizeof f->turn_secret, "/tmp/ntcp-cluster-turn-XXXXXX");
            int fd = mkstemp(f->turn_secret);
            assert_true(fd >= 0);
            assert_int_equal(write(fd, TURN_SECRET "\n", sizeof TURN_SECRET),
                             (ssize_t)sizeof TURN_SECRET);
            close(fd);
        }
        argv[n++] = "--turn-server";
        argv[n++] = TURN_SERVER;
        argv[n++] = "--turn-secret-file";
        argv[n++] = f->turn_secret;
        argv[n++] = "--turn-ttl";
        argv[n++] = ttl;
    }
    if (getenv("CLUSTER_TEST_LOG"))
        argv[n++] = "--verbose";
    argv[n] = NULL;
    f->node[i] = spawn(argv);
    wait_port(f->port[i], f->node[i]);
}

/* Returns the exit status (0 also when there was nothing to stop). */
static int stop_pid(pid_t *pid, int sig)
{
    int st = 0;
    if (*pid <= 0)
        return 0;
    kill(*pid, sig);
    waitpid(*pid, &st, 0);
    *pid = 0;
    return st;
}

static int setup(void **state)
{
    if (!brokerd_path || !redis_path)
        return 0;
    fx *f = calloc(1, sizeof *f);
    uv_loop_init(&f->loop);
    int ports[4];
    free_ports(ports, 4);
    f->redis_port = ports[0];
    for (int i = 0; i < 3; i++)
        f->port[i] = ports[i + 1];
    start_redis(f);
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
    if (!f)
        return 0;
    /* A node stops cleanly on SIGTERM: exit 0 (under the sanitizers, no
     * leak and no error either). */
    int bad = 0;
    for (int i = 0; i < 3; i++) {
        int st = stop_pid(&f->node[i], SIGTERM);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "node %d ended with status 0x%x\n", i, st);
            bad = 1;
        }
    }
    stop_pid(&f->redis, SIGTERM);
    uint64_t end = now_ms() + 3000;
    while (uv_run(&f->loop, UV_RUN_NOWAIT) && now_ms() < end)
        ;
    uv_walk(&f->loop, close_any, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(&f->loop);
    if (f->turn_secret[0])
        unlink(f->turn_secret);
    free(f);
    return rc ? rc : -bad;
}

#define NEED_SERVERS()                                                                             \
    do {                                                                                           \
        if (!*state) {                                                                             \
            fprintf(stderr, "skipped: needs ntcp-brokerd and redis-server\n");                    \
            skip();                                                                                \
        }                                                                                          \
    } while (0)

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

/* ---- peers ---- */

typedef struct peer {
    ntcp_session *s;
    EVP_PKEY *key;
    uint8_t pub[32];
    char name[32];
    int state, err, code, refusals;
    bool accept, offered, got_go;
    broker_go go;
    unsigned raw_isns; /* RAW-ISN relayed to this peer: how many, the last */
    uint8_t raw_nonce[BROKER_NONCE_SIZE];
    struct sockaddr_storage raw_ext;
    uint32_t raw_isn;
    unsigned relay_addrs; /* RELAY-ADDR relayed to this peer: how many, the last */
    uint8_t relay_nonce[BROKER_NONCE_SIZE];
    struct sockaddr_storage relayed;
    char relay_why[256];
} peer;

static void on_relay_addr(ntcp_session *s, const uint8_t nonce[BROKER_NONCE_SIZE],
                          const struct sockaddr_storage *relayed, const char *why, void *user)
{
    (void)s;
    peer *p = user;
    p->relay_addrs++;
    memcpy(p->relay_nonce, nonce, BROKER_NONCE_SIZE);
    p->relayed = *relayed;
    snprintf(p->relay_why, sizeof p->relay_why, "%s", why ? why : "");
}

static void on_raw_isn(ntcp_session *s, const uint8_t nonce[BROKER_NONCE_SIZE],
                       const struct sockaddr_storage *ext, uint32_t isn, void *user)
{
    (void)s;
    peer *p = user;
    p->raw_isns++;
    memcpy(p->raw_nonce, nonce, BROKER_NONCE_SIZE);
    p->raw_ext = *ext;
    p->raw_isn = isn;
}

static bool on_offer(ntcp_session *s, const broker_peer_info *from, void *user)
{
    (void)s;
    (void)from;
    peer *p = user;
    p->offered = true;
    return p->accept;
}

static void on_go(ntcp_session *s, const broker_go *go, void *user)
{
    (void)s;
    peer *p = user;
    p->go = *go;
    p->go.peer.profile = NULL;
    p->got_go = true;
}

static void on_state(ntcp_session *s, int state, int err, int code, void *user)
{
    (void)s;
    peer *p = user;
    p->state = state;
    p->err = err;
    if (code) {
        p->code = code;
        p->refusals++;
    }
}

/* How long a REGISTER or REFRESH may go unanswered before the session
 * counts its broker as lost. */
static uint32_t request_timeout_ms = 2000;

static void peer_start(fx *f, peer *p, const char *name, const char *brokers, EVP_PKEY *key)
{
    memset(p, 0, sizeof *p);
    p->accept = true;
    snprintf(p->name, sizeof p->name, "%s", name);
    if (key) {
        EVP_PKEY_up_ref(key);
        p->key = key;
    } else {
        assert_int_equal(ntcp_identity_generate(&p->key), 0);
    }
    assert_int_equal(ntcp_identity_public(p->key, p->pub), 0);
    ntcp_session_config c = {0};
    c.broker = brokers;
    c.name = p->name;
    c.key = p->key;
    c.broker_id = "test-cluster";
    c.backoff_min_ms = 50;
    c.backoff_max_ms = 500;
    c.request_timeout_ms = request_timeout_ms;
    c.on_offer = on_offer;
    c.on_go = on_go;
    c.on_state = on_state;
    c.on_raw_isn = on_raw_isn;
    c.on_relay_addr = on_relay_addr;
    c.user = p;
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

static bool was_refused(void *arg)
{
    return ((peer *)arg)->refusals > 0;
}

static int broker_port(const peer *p)
{
    struct sockaddr_storage ss;
    if (ntcp_session_broker_addr(p->s, &ss) < 0)
        return -1;
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

typedef struct result {
    bool done;
    int err, code;
    broker_go go;
    broker_peer_info info;
} result;

static void on_connect_done(ntcp_session *s, int err, int code, const broker_go *go, void *arg)
{
    (void)s;
    result *r = arg;
    r->done = true;
    r->err = err;
    r->code = code;
    if (go) {
        r->go = *go;
        r->go.peer.profile = NULL;
    }
}

static void on_lookup_done(ntcp_session *s, int err, int code, const broker_peer_info *info,
                           void *arg)
{
    (void)s;
    result *r = arg;
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

static void lookup(fx *f, peer *p, const char *name, result *r)
{
    memset(r, 0, sizeof *r);
    assert_int_equal(ntcp_session_lookup(p->s, name, 3000, on_lookup_done, r), 0);
    assert_true(wait_for(f, result_done, r, 4000));
}

static void connect_to(fx *f, peer *from, peer *to, result *r)
{
    memset(r, 0, sizeof *r);
    to->got_go = false;
    assert_int_equal(ntcp_session_connect(from->s, to->name, 3000, on_connect_done, r), 0);
    assert_true(wait_for(f, result_done, r, 4000));
}

static bool got_raw_isn(void *arg)
{
    return ((peer *)arg)->raw_isns > 0;
}

static bool got_go(void *arg)
{
    return ((peer *)arg)->got_go;
}

static char *node_addr(fx *f, int i, char *buf, size_t len)
{
    snprintf(buf, len, "127.0.0.1:%d", f->port[i]);
    return buf;
}

/* ---- tests ---- */

/* Nodes 0 and 1 up, alice registered at node 0 (a0) and bob at node 1 (a1). */
static void alice_and_bob(fx *f, peer *a, peer *b, char a0[32], char a1[32])
{
    start_node(f, 0);
    start_node(f, 1);
    peer_start(f, a, "alice", node_addr(f, 0, a0, 32), NULL);
    peer_start(f, b, "bob", node_addr(f, 1, a1, 32), NULL);
    assert_true(wait_for(f, is_registered, a, 5000));
    assert_true(wait_for(f, is_registered, b, 5000));
}

/* alice on node 0, bob on node 1: each finds and reaches the other; the
 * CONNECT-GOs carry one nonce and each end's data; a refusal and an
 * unknown name come back as from one broker; alice's name is hers on every
 * node. */
static void test_cross_node(void **state)
{
    NEED_SERVERS();
    fx *f = *state;
    char a0[32], a1[32];
    peer a, b;
    alice_and_bob(f, &a, &b, a0, a1);

    result r;
    lookup(f, &a, "bob", &r);
    assert_int_equal(r.err, 0);
    assert_memory_equal(r.info.public_key, b.pub, 32);
    lookup(f, &b, "alice", &r);
    assert_int_equal(r.err, 0);
    assert_memory_equal(r.info.public_key, a.pub, 32);
    lookup(f, &a, "nobody", &r);
    assert_int_equal(r.err, NTCP_ENOTFOUND);

    connect_to(f, &a, &b, &r);
    assert_int_equal(r.err, 0);
    assert_true(b.offered);
    assert_true(wait_for(f, got_go, &b, 2000));
    assert_memory_equal(r.go.nonce, b.go.nonce, BROKER_NONCE_SIZE);
    assert_string_equal(r.go.peer.name, "bob");
    assert_memory_equal(r.go.peer.public_key, b.pub, 32);
    assert_string_equal(b.go.peer.name, "alice");
    assert_memory_equal(b.go.peer.public_key, a.pub, 32);
    assert_int_equal(r.go.role, BROKER_ROLE_REQUESTER);
    assert_int_equal(b.go.role, BROKER_ROLE_TARGET);
    /* The start delays: both ends start within the margin (2-20 ms) of
     * each other, so each waits at least the margin and not seconds. */
    assert_true(r.go.start_delay_ms >= 2 && r.go.start_delay_ms < 1000);
    assert_true(b.go.start_delay_ms >= 2 && b.go.start_delay_ms < 1000);

    /* RAW-ISN (STUNT#1, NATBlaster) crosses the nodes to the other end of
     * that connect, each way. */
    struct sockaddr_storage ext;
    assert_int_equal(ntcp_session_public_addr(a.s, &ext), 0);
    assert_int_equal(ntcp_session_send_raw_isn(a.s, r.go.nonce, &ext, 1111, false), 0);
    assert_true(wait_for(f, got_raw_isn, &b, 2000));
    assert_int_equal(b.raw_isn, 1111);
    assert_memory_equal(b.raw_nonce, r.go.nonce, BROKER_NONCE_SIZE);
    assert_int_equal(ntcp_session_public_addr(b.s, &ext), 0);
    assert_int_equal(ntcp_session_send_raw_isn(b.s, b.go.nonce, &ext, 2222, false), 0);
    assert_true(wait_for(f, got_raw_isn, &a, 2000));
    assert_int_equal(a.raw_isn, 2222);

    /* The other way, refused by its target. */
    a.accept = false;
    connect_to(f, &b, &a, &r);
    assert_int_equal(r.err, NTCP_EPROTO);
    assert_int_equal(r.code, BROKER_ERR_DECLINED);

    /* A takeover of alice's name with another key, at the other node. */
    peer imp;
    peer_start(f, &imp, "alice", a1, NULL);
    assert_true(wait_for(f, was_refused, &imp, 5000));
    assert_int_equal(imp.code, BROKER_ERR_CONFLICT);
    assert_int_equal(ntcp_session_registrations(imp.s), 0);
    lookup(f, &b, "alice", &r);
    assert_int_equal(r.err, 0);
    assert_memory_equal(r.info.public_key, a.pub, 32);

    /* alice herself at the other node (same key): the newest session wins,
     * the one at node 0 is told and ends. */
    peer a2;
    peer_start(f, &a2, "alice", a1, a.key);
    assert_true(wait_for(f, is_registered, &a2, 5000));
    assert_true(wait_for(f, was_refused, &a, 5000));
    assert_int_equal(a.code, BROKER_ERR_CONFLICT);
    peer_stop(&a); /* its session would come back and take the name again */
    b.got_go = false;
    a2.got_go = false;
    connect_to(f, &b, &a2, &r); /* bob and alice now on one node */
    assert_int_equal(r.err, 0);
    peer_stop(&imp);
    peer_stop(&a2);
    peer_stop(&b);
}

static void sa4(struct sockaddr_storage *ss, int port)
{
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    sin->sin_family = AF_INET;
    sin->sin_port = htons((uint16_t)port);
    sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
}

/* A GO's relay offer, as one broker makes it (test_broker.c,
 * test_turn_credentials): the TURN server the nodes were given and TURN
 * REST credentials for that end's own name, the TTL ahead, whose password
 * is base64(HMAC-SHA1(secret, username)) (checked with OpenSSL directly). */
static void check_turn(const broker_go *g, const char *name)
{
    struct sockaddr_storage want;
    sa4(&want, 3478);
    assert_int_equal(g->turn_server.ss_family, AF_INET);
    assert_memory_equal(&g->turn_server, &want, sizeof(struct sockaddr_in));
    char *colon = strchr(g->turn_user, ':');
    assert_non_null(colon);
    assert_string_equal(colon + 1, name);
    long long expiry = strtoll(g->turn_user, NULL, 10);
    long long now = (long long)time(NULL);
    assert_true(expiry >= now + TURN_TTL_S - 5 && expiry <= now + TURN_TTL_S + 5);
    uint8_t mac[EVP_MAX_MD_SIZE];
    unsigned maclen = 0;
    assert_non_null(HMAC(EVP_sha1(), TURN_SECRET, sizeof TURN_SECRET - 1,
                         (const uint8_t *)g->turn_user, strlen(g->turn_user), mac, &maclen));
    char b64[64];
    EVP_EncodeBlock((unsigned char *)b64, mac, (int)maclen);
    assert_string_equal(g->turn_pass, b64);
}

typedef struct relay_wait {
    peer *p;
    unsigned n;
} relay_wait;

static bool got_relay_addrs(void *arg)
{
    relay_wait *w = arg;
    return w->p->relay_addrs >= w->n;
}

/* Nodes 0 and 1 with the same TURN server and secret, node 2 with none;
 * alice at node 0, bob at node 1, carol at node 1, dave at node 2.
 * - alice to bob, TCP and UDP: both GOs offer the relay, each with its own
 *   end's credentials, as on one broker;
 * - bob's RELAY-ADDR reaches alice, with the connect's nonce and the
 *   address (or the reason for none), and alice's reaches bob; not
 *   forwarded: carol's with that connect's nonce (she is no end of it),
 *   bob's with a nonce of no connect of his;
 * - dave to bob and bob to dave: one node without TURN, no relay at either
 *   end (a requester offered a relay waits for a RELAY-ADDR that no target
 *   without one would send). */
static void test_cross_node_relay(void **state)
{
    NEED_SERVERS();
    fx *f = *state;
    f->turn[0] = f->turn[1] = true;
    char a0[32], a1[32], a2[32];
    peer a, b, c, d;
    alice_and_bob(f, &a, &b, a0, a1);
    peer_start(f, &c, "carol", a1, NULL);
    assert_true(wait_for(f, is_registered, &c, 5000));

    result r;
    connect_to(f, &a, &b, &r);
    assert_int_equal(r.err, 0);
    assert_true(wait_for(f, got_go, &b, 2000));
    uint8_t nonce[BROKER_NONCE_SIZE];
    memcpy(nonce, r.go.nonce, sizeof nonce);
    assert_memory_equal(b.go.nonce, nonce, sizeof nonce);
    check_turn(&r.go, "alice");
    check_turn(&b.go, "bob");

    /* carol, at bob's node but no end of this connect, sends its nonce.
     * Her lookup of alice goes through Redis after it: had node 1
     * forwarded it, it would reach alice before anything bob sends next. */
    struct sockaddr_storage fake, relayed;
    sa4(&fake, 40001);
    sa4(&relayed, 40002);
    assert_int_equal(ntcp_session_send_relay_addr(c.s, nonce, &fake, NULL), 0);
    result lr;
    lookup(f, &c, "alice", &lr);
    assert_int_equal(lr.err, 0);
    uint8_t wrong[BROKER_NONCE_SIZE];
    memcpy(wrong, nonce, sizeof wrong);
    wrong[0] ^= 1;
    assert_int_equal(ntcp_session_send_relay_addr(b.s, wrong, &fake, NULL), 0);
    assert_int_equal(ntcp_session_send_relay_addr(b.s, nonce, &relayed, NULL), 0);
    relay_wait wa = {&a, 1};
    assert_true(wait_for(f, got_relay_addrs, &wa, 2000));
    assert_int_equal(a.relay_addrs, 1); /* bob's, and only his */
    assert_memory_equal(a.relay_nonce, nonce, sizeof nonce);
    assert_memory_equal(&a.relayed, &relayed, sizeof(struct sockaddr_in));

    /* No relay at the target, and why: the reason crosses too. */
    assert_int_equal(ntcp_session_send_relay_addr(b.s, nonce, NULL, "the peer's policy forbids the relay"), 0);
    wa.n = 2;
    assert_true(wait_for(f, got_relay_addrs, &wa, 2000));
    assert_int_equal(a.relayed.ss_family, 0);
    assert_string_equal(a.relay_why, "the peer's policy forbids the relay");

    /* The other way, from the requester's node to the target's. */
    assert_int_equal(ntcp_session_send_relay_addr(a.s, nonce, &relayed, NULL), 0);
    relay_wait wb = {&b, 1};
    assert_true(wait_for(f, got_relay_addrs, &wb, 2000));
    assert_memory_equal(b.relay_nonce, nonce, sizeof nonce);
    assert_memory_equal(&b.relayed, &relayed, sizeof(struct sockaddr_in));

    /* UDP: the same offer, and RELAY-ADDR crosses for the UDP relay. */
    memset(&r, 0, sizeof r);
    b.got_go = false;
    assert_int_equal(ntcp_session_connect_ex(a.s, "bob", BROKER_TRANSPORT_UDP, 3000,
                                             on_connect_done, &r), 0);
    assert_true(wait_for(f, result_done, &r, 4000));
    assert_int_equal(r.err, 0);
    assert_true(wait_for(f, got_go, &b, 2000));
    assert_int_equal(r.go.transport, BROKER_TRANSPORT_UDP);
    check_turn(&r.go, "alice");
    check_turn(&b.go, "bob");
    assert_int_equal(ntcp_session_send_relay_addr(b.s, b.go.nonce, &relayed, NULL), 0);
    wa.n = 3;
    assert_true(wait_for(f, got_relay_addrs, &wa, 2000));
    assert_memory_equal(a.relay_nonce, r.go.nonce, sizeof nonce);
    assert_int_equal(c.relay_addrs, 0);

    /* A node without TURN on either side of a connect: no relay at all. */
    start_node(f, 2);
    peer_start(f, &d, "dave", node_addr(f, 2, a2, sizeof a2), NULL);
    assert_true(wait_for(f, is_registered, &d, 5000));
    peer *pairs[2][2] = {{&d, &b}, {&b, &d}}; /* requester, target */
    for (int i = 0; i < 2; i++) {
        peer *from = pairs[i][0], *to = pairs[i][1];
        to->got_go = false;
        connect_to(f, from, to, &r);
        assert_int_equal(r.err, 0);
        assert_true(wait_for(f, got_go, to, 2000));
        assert_int_equal(r.go.turn_server.ss_family, 0);
        assert_int_equal(to->go.turn_server.ss_family, 0);
    }
    peer_stop(&a);
    peer_stop(&b);
    peer_stop(&c);
    peer_stop(&d);
}

typedef struct crowd {
    peer *p;
    size_t n;
    int port; /* all registered there (0: anywhere) */
    unsigned want;
} crowd;

static bool all_registered(void *arg)
{
    crowd *c = arg;
    for (size_t i = 0; i < c->n; i++)
        if (!is_registered(&c->p[i]) || ntcp_session_registrations(c->p[i].s) < c->want ||
            (c->port && broker_port(&c->p[i]) != c->port))
            return false;
    return true;
}

/* Node 0 holds many peers and is killed with SIGKILL: every one is
 * registered on node 1 (the other entry of its list) within two keepalive
 * intervals, no name is lost, and a peer on node 2 still finds and
 * reaches them. */
static void test_node_killed(void **state)
{
    NEED_SERVERS();
    fx *f = *state;
    size_t n = 1000;
    if (getenv("CLUSTER_TEST_PEERS"))
        n = (size_t)atoi(getenv("CLUSTER_TEST_PEERS"));
    start_node(f, 0);
    start_node(f, 2);
    char list[80], a2[32];
    /* Node 1 is not up yet: every peer lands on node 0. */
    snprintf(list, sizeof list, "127.0.0.1:%d, 127.0.0.1:%d", f->port[0], f->port[1]);
    peer *ps = calloc(n, sizeof *ps);
    for (size_t i = 0; i < n; i++) {
        char name[32];
        snprintf(name, sizeof name, "p%zu", i);
        peer_start(f, &ps[i], name, list, NULL);
    }
    crowd c = {ps, n, f->port[0], 1};
    assert_true(wait_for(f, all_registered, &c, 60000));
    peer z;
    peer_start(f, &z, "zed", node_addr(f, 2, a2, sizeof a2), NULL);
    assert_true(wait_for(f, is_registered, &z, 5000));
    start_node(f, 1);

    stop_pid(&f->node[0], SIGKILL);
    uint64_t t0 = now_ms();
    c.port = f->port[1];
    c.want = 2;
    bool ok = wait_for(f, all_registered, &c, 2 * KEEPALIVE_MS);
    uint64_t took = now_ms() - t0;
    fprintf(stderr, "# %zu peers re-registered on another node in %llu ms (keepalive %d ms)\n", n,
            (unsigned long long)took, KEEPALIVE_MS);
    assert_true(ok);
    /* Each came back with the ticket node 0 gave it (the nodes share the
     * key that seals them): no signature to check on node 1. */
    size_t resumed = 0;
    for (size_t i = 0; i < n; i++)
        resumed += ntcp_session_resumed(ps[i].s);
    assert_int_equal(resumed, n);

    /* No name lost: each peer looks up the next one (a session may ask 50
     * a second: one each, all at once), and zed, on node 2, finds a sample
     * across nodes, each with its key. */
    result *rs = calloc(n, sizeof *rs);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(ntcp_session_lookup(ps[i].s, ps[(i + 1) % n].name, 10000,
                                             on_lookup_done, &rs[i]), 0);
    for (size_t i = 0; i < n; i++) {
        assert_true(wait_for(f, result_done, &rs[i], 15000));
        assert_int_equal(rs[i].err, 0);
        assert_memory_equal(rs[i].info.public_key, ps[(i + 1) % n].pub, 32);
    }
    free(rs);
    for (size_t i = 0; i < n; i += n / 40 + 1) {
        result r;
        lookup(f, &z, ps[i].name, &r);
        assert_int_equal(r.err, 0);
        assert_memory_equal(r.info.public_key, ps[i].pub, 32);
    }
    /* And reaches some across nodes. */
    for (size_t i = 0; i < n && i < 10; i++) {
        result r;
        connect_to(f, &z, &ps[i], &r);
        assert_int_equal(r.err, 0);
    }
    for (size_t i = 0; i < n; i++)
        peer_stop(&ps[i]);
    peer_stop(&z);
    free(ps);
}

/* Node 0 stops answering (SIGSTOP: its connections stay open, nothing
 * comes back): each peer's next REFRESH goes unanswered, and within two
 * keepalive intervals of the stop (one to send it, the request timeout of
 * half an interval to give up on it) every peer is on node 1. */
static void test_node_silent(void **state)
{
    NEED_SERVERS();
    fx *f = *state;
    size_t n = 100;
    start_node(f, 0);
    char list[80];
    snprintf(list, sizeof list, "127.0.0.1:%d, 127.0.0.1:%d", f->port[0], f->port[1]);
    request_timeout_ms = KEEPALIVE_MS / 2;
    peer *ps = calloc(n, sizeof *ps);
    for (size_t i = 0; i < n; i++) {
        char name[32];
        snprintf(name, sizeof name, "s%zu", i);
        peer_start(f, &ps[i], name, list, NULL);
    }
    request_timeout_ms = 2000;
    crowd c = {ps, n, f->port[0], 1};
    assert_true(wait_for(f, all_registered, &c, 20000));
    start_node(f, 1);
    assert_int_equal(kill(f->node[0], SIGSTOP), 0);
    uint64_t t0 = now_ms();
    c.port = f->port[1];
    c.want = 2;
    bool ok = wait_for(f, all_registered, &c, 2 * KEEPALIVE_MS);
    fprintf(stderr, "# %zu peers of a silent node re-registered on another in %llu ms\n", n,
            (unsigned long long)(now_ms() - t0));
    assert_true(ok);
    for (size_t i = 0; i < n; i++)
        peer_stop(&ps[i]);
    free(ps);
    stop_pid(&f->node[0], SIGKILL); /* a stopped process ends on SIGKILL too */
}

static bool refused_503(void *arg)
{
    peer *p = arg;
    return p->refusals > 0 && p->code == BROKER_ERR_FULL;
}

/* Redis killed: registrations held by the nodes stay, new ones are refused
 * with 503; Redis started again (empty: no persistence): the nodes
 * reconnect and write their registrations and bindings back, the refused
 * peer registers, lookups across nodes work again and a takeover is still
 * refused. */
static void test_redis_restarted(void **state)
{
    NEED_SERVERS();
    fx *f = *state;
    char a0[32], a1[32];
    peer a, b;
    alice_and_bob(f, &a, &b, a0, a1);

    stop_pid(&f->redis, SIGKILL);
    peer late;
    peer_start(f, &late, "late", a0, NULL);
    assert_true(wait_for(f, refused_503, &late, 5000));
    /* Lookups that need Redis say so (503), the session stays. */
    result r;
    lookup(f, &a, "bob", &r);
    assert_int_equal(r.err, NTCP_EPROTO);
    assert_int_equal(r.code, BROKER_ERR_FULL);
    assert_true(is_registered(&a) && is_registered(&b));

    start_redis(f);
    bool back = wait_for(f, is_registered, &late, 10000);
    if (!back)
        fprintf(stderr, "late: state %d err %d code %d refusals %d why %s\n", late.state, late.err,
                late.code, late.refusals, ntcp_session_last_error(late.s));
    assert_true(back);
    uint64_t end = now_ms() + 10000;
    do {
        lookup(f, &a, "bob", &r);
    } while (r.err != 0 && now_ms() < end);
    assert_int_equal(r.err, 0);
    assert_memory_equal(r.info.public_key, b.pub, 32);
    connect_to(f, &b, &a, &r);
    assert_int_equal(r.err, 0);
    peer imp;
    peer_start(f, &imp, "alice", a1, NULL);
    assert_true(wait_for(f, was_refused, &imp, 5000));
    assert_int_equal(imp.code, BROKER_ERR_CONFLICT);
    peer_stop(&imp);
    peer_stop(&late);
    peer_stop(&a);
    peer_stop(&b);
}

int main(int argc, char **argv)
{
    if (argc > 2) {
        brokerd_path = argv[1];
        redis_path = argv[2];
    }
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_cross_node, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cross_node_relay, setup, teardown),
        cmocka_unit_test_setup_teardown(test_node_killed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_node_silent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_restarted, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
