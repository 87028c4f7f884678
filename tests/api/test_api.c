/*
 * test_api.c: the public connection API (ntcp_listen, ntcp_accept,
 * ntcp_connect and their async forms) end to end against a real
 * ntcp-brokerd on 127.0.0.1, started per test and stopped by its PID: two or
 * more contexts in this process connect, the errors come with their codes,
 * and ntcp_free() ends calls in flight (run under ASan + UBSan too).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "identity.h"
#include "ntcp.h"
#include "session.h"

/* Bounds are generous on purpose: the machine running the tests may be
 * loaded, and timings are for bench/, not for assertions. */
#define CONNECT_MS 30000
#define QUICK_MS 15000 /* "at once" for an answer that needs no timeout */

static const char *brokerd_path;

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- the broker: a real ntcp-brokerd per test ---- */

typedef struct fx {
    char dir[64];
    char broker[64]; /* "127.0.0.1:PORT" */
    int port;
    pid_t pid;
} fx;

/* A port free for TCP and UDP on 127.0.0.1 right now (ntcp-brokerd wants
 * --listen and --udp on the same one). */
static int free_port(void)
{
    for (int tries = 0; tries < 50; tries++) {
        int t = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t al = sizeof a;
        if (t < 0 || bind(t, (struct sockaddr *)&a, sizeof a) < 0 ||
            getsockname(t, (struct sockaddr *)&a, &al) < 0) {
            if (t >= 0)
                close(t);
            continue;
        }
        int u = socket(AF_INET, SOCK_DGRAM, 0);
        int ok = u >= 0 && bind(u, (struct sockaddr *)&a, sizeof a) == 0;
        if (u >= 0)
            close(u);
        close(t);
        if (ok)
            return ntohs(a.sin_port);
    }
    return -1;
}

static bool file_has(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    char line[1024];
    bool found = false;
    while (!found && fgets(line, sizeof line, f))
        found = strstr(line, needle) != NULL;
    fclose(f);
    return found;
}

static pid_t spawn_brokerd(fx *f, int port)
{
    char listen[64], sdir[128], logp[128];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
    snprintf(sdir, sizeof sdir, "%s/state", f->dir);
    snprintf(logp, sizeof logp, "%s/brokerd.log", f->dir);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd = open(logp, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0)
            dup2(fd, 2);
        execl(brokerd_path, brokerd_path, "--listen", listen, "--udp", listen, "--state-dir",
              sdir, "--stats", "0", "--verbose", (char *)NULL);
        _exit(127);
    }
    /* Up when it says so; gone (port taken meanwhile) when it exits. */
    char want[96];
    snprintf(want, sizeof want, "listening on 127.0.0.1:%d (TCP)", port);
    uint64_t end = now_ms() + 20000;
    while (now_ms() < end) {
        if (file_has(logp, want))
            return pid;
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid)
            return -1;
        poll(NULL, 0, 20);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

static int setup(void **state)
{
    if (!brokerd_path)
        return -1;
    fx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->dir, sizeof f->dir, "/tmp/ntcp-api-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    for (int tries = 0; tries < 5 && f->pid <= 0; tries++) {
        f->port = free_port();
        assert_true(f->port > 0);
        f->pid = spawn_brokerd(f, f->port);
    }
    assert_true(f->pid > 0);
    snprintf(f->broker, sizeof f->broker, "127.0.0.1:%d", f->port);
    *state = f;
    return 0;
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static void stop_brokerd(fx *f)
{
    if (f->pid <= 0)
        return;
    kill(f->pid, SIGTERM);
    uint64_t end = now_ms() + 10000;
    int st;
    while (waitpid(f->pid, &st, WNOHANG) == 0) {
        if (now_ms() > end) {
            kill(f->pid, SIGKILL);
            waitpid(f->pid, &st, 0);
            break;
        }
        poll(NULL, 0, 10);
    }
    f->pid = 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    stop_brokerd(f);
    if (getenv("NTCP_TEST_KEEP"))
        fprintf(stderr, "kept %s\n", f->dir);
    else
        nftw(f->dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

/* ---- contexts ---- */

/* A context named `name` (NULL: none) with its own key file dir/key.key
 * (key NULL: the name), on the test's broker (broker NULL) or another. */
static ntcp_t *mk_ctx(fx *f, const char *name, const char *key, const char *broker)
{
    char kf[128];
    snprintf(kf, sizeof kf, "%s/%s.key", f->dir, key ? key : name ? name : "anon");
    ntcp_config_t cfg;
    ntcp_config_init(&cfg);
    cfg.broker = broker ? broker : f->broker;
    cfg.name = name;
    cfg.key_file = kf;
    ntcp_t *ctx = NULL;
    assert_int_equal(ntcp_new(&cfg, &ctx), 0);
    return ctx;
}

static void info_clear(ntcp_conn_info_t *i)
{
    memset(i, 0x5a, sizeof *i); /* garbage: the library must fill what it reports */
    i->size = sizeof *i;
}

/* ---- sockets ---- */

static bool same_sa(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return false;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
        return x->sin6_port == y->sin6_port &&
               !memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr);
    }
    return false;
}

static void assert_blocking(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    assert_true(fl >= 0);
    assert_int_equal(fl & O_NONBLOCK, 0);
}

/* The info of a verified connection matches the descriptor. */
static void check_info(const ntcp_conn_info_t *i, int fd, const char *peer, int initiator)
{
    assert_int_equal(i->size, sizeof *i);
    assert_int_equal(i->transport, NTCP_TCP);
    assert_string_equal(i->peer, peer);
    assert_int_equal(i->initiator, initiator);
    assert_true(i->method[0] != '\0');
    assert_non_null(memchr(i->method, '\0', sizeof i->method));
    assert_non_null(memchr(i->detail, '\0', sizeof i->detail));
    assert_true(i->connected_ms >= 0);
    assert_true(i->verified_ms >= i->connected_ms);
    assert_true(i->broker_ms >= 0);
    assert_true(i->start_ms >= i->broker_ms);
    assert_true(i->attempts >= 1);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    memset(&ss, 0, sizeof ss);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&ss, &sl), 0);
    assert_true(same_sa(&ss, &i->local));
    sl = sizeof ss;
    memset(&ss, 0, sizeof ss);
    assert_int_equal(getpeername(fd, (struct sockaddr *)&ss, &sl), 0);
    assert_true(same_sa(&ss, &i->remote));
    assert_int_equal(i->public_addr.ss_family, AF_INET);
    assert_int_equal(i->peer_public.ss_family, AF_INET);
    /* The JSON form parses as one object with the method in it. */
    char js[8192];
    size_t n = ntcp_conn_info_json(i, fd, js, sizeof js);
    assert_true(n > 0 && n < sizeof js);
    assert_int_equal(js[0], '{');
    assert_int_equal(js[n - 1], '}');
    char want[64];
    snprintf(want, sizeof want, "\"method\":\"%s\"", i->method);
    assert_non_null(strstr(js, want));
    /* The plan as it ran: every attempt reported, the winner's "won". */
    assert_int_equal(i->n_attempt, i->attempts);
    assert_true(i->n_attempt >= 1 && i->n_attempt <= NTCP_MAX_ATTEMPTS);
    unsigned won = 0;
    for (unsigned k = 0; k < i->n_attempt; k++) {
        assert_true(i->attempt[k].role[0] && i->attempt[k].outcome[0]);
        if (!strcmp(i->attempt[k].outcome, "won")) {
            won++;
            assert_string_equal(i->attempt[k].method, i->method);
            assert_true(i->attempt[k].connected_ms >= 0);
        }
    }
    assert_int_equal(won, 1);
    assert_non_null(strstr(js, "\"attempt_list\":[{\"method\":"));
    assert_non_null(strstr(js, "\"outcome\":\"won\""));
}

typedef struct writer {
    int fd;
    size_t len;
    unsigned seed;
} writer;

static uint8_t pattern(unsigned seed, size_t k)
{
    return (uint8_t)((k * 131u + seed * 7u + (k >> 9)) & 0xff);
}

static void *write_main(void *arg)
{
    writer *w = arg;
    uint8_t buf[8192];
    for (size_t off = 0; off < w->len;) {
        size_t n = w->len - off < sizeof buf ? w->len - off : sizeof buf;
        for (size_t k = 0; k < n; k++)
            buf[k] = pattern(w->seed, off + k);
        ssize_t s = send(w->fd, buf, n, MSG_NOSIGNAL);
        if (s < 0 && errno == EINTR)
            continue;
        if (s <= 0)
            return (void *)1;
        off += (size_t)s;
    }
    shutdown(w->fd, SHUT_WR);
    return NULL;
}

/* len bytes from a to b, then a's end of stream seen at b. */
static void stream(int a, int b, size_t len, unsigned seed)
{
    writer w = {a, len, seed};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, write_main, &w), 0);
    uint8_t buf[8192];
    size_t got = 0;
    bool bad = false;
    for (;;) {
        struct pollfd p = {.fd = b, .events = POLLIN};
        assert_int_equal(poll(&p, 1, CONNECT_MS), 1);
        ssize_t r = recv(b, buf, sizeof buf, 0);
        if (r < 0 && errno == EINTR)
            continue;
        assert_true(r >= 0);
        if (r == 0)
            break;
        for (ssize_t k = 0; k < r; k++)
            bad = bad || buf[k] != pattern(seed, got + (size_t)k);
        got += (size_t)r;
    }
    void *wr;
    pthread_join(th, &wr);
    assert_null(wr);
    assert_false(bad);
    assert_int_equal(got, len);
}

/* ---- blocking calls on threads ---- */

typedef struct call {
    pthread_t th;
    ntcp_t *ctx;
    const char *peer; /* NULL: ntcp_accept */
    bool udp;         /* ntcp_udp_punch() instead of ntcp_connect() */
    int timeout_ms;
    int rc;
    ntcp_conn_info_t info;
    pid_t tid;
    volatile int started;
    uint64_t t0, t1;
} call;

static void *call_main(void *arg)
{
    call *c = arg;
    c->tid = (pid_t)syscall(SYS_gettid);
    __atomic_store_n(&c->started, 1, __ATOMIC_SEQ_CST);
    c->t0 = now_ms();
    if (c->peer && c->udp)
        c->rc = ntcp_udp_punch(c->ctx, c->peer, &c->info, c->timeout_ms);
    else if (c->peer)
        c->rc = ntcp_connect(c->ctx, c->peer, &c->info, c->timeout_ms);
    else
        c->rc = ntcp_accept(c->ctx, &c->info, c->timeout_ms);
    c->t1 = now_ms();
    return NULL;
}

static void call_start_udp(call *c, ntcp_t *ctx, const char *peer, int timeout_ms, bool udp)
{
    memset(c, 0, sizeof *c);
    c->ctx = ctx;
    c->peer = peer;
    c->udp = udp;
    c->timeout_ms = timeout_ms;
    c->rc = 1000;
    info_clear(&c->info);
    assert_int_equal(pthread_create(&c->th, NULL, call_main, c), 0);
}

static void call_start(call *c, ntcp_t *ctx, const char *peer, int timeout_ms)
{
    call_start_udp(c, ctx, peer, timeout_ms, false);
}

/* True once the thread sleeps in the kernel on a futex (a condition
 * variable, here: ntcp_accept's wait), as /proc says. */
static bool in_futex(const call *c)
{
    if (!__atomic_load_n(&c->started, __ATOMIC_SEQ_CST))
        return false;
    char p[96], buf[64] = "";
    snprintf(p, sizeof p, "/proc/self/task/%d/syscall", (int)c->tid);
    FILE *f = fopen(p, "r");
    if (!f)
        return false;
    bool yes = fgets(buf, sizeof buf, f) && atoi(buf) == SYS_futex;
    fclose(f);
    return yes;
}

static bool wait_futex(const call *c, uint32_t ms)
{
    uint64_t end = now_ms() + ms;
    /* Twice in a row: a mutex handed over briefly also sleeps in a futex. */
    int seen = 0;
    while (seen < 2) {
        if (now_ms() > end)
            return false;
        seen = in_futex(c) ? seen + 1 : 0;
        poll(NULL, 0, 20);
    }
    return true;
}

/* ---- 1. blocking listen, accept, connect ---- */

static void test_blocking(void **state)
{
    fx *f = *state;
    ntcp_t *bob = mk_ctx(f, "bob", NULL, NULL);
    ntcp_t *alice = mk_ctx(f, "alice", NULL, NULL);
    ntcp_conn_info_t ai, bi;

    /* Before ntcp_listen there is nothing to accept. */
    assert_int_equal(ntcp_accept(bob, NULL, 0), NTCP_ENOTREADY);
    assert_int_equal(ntcp_listen(bob, NULL, CONNECT_MS), 0);
    uint64_t t0 = now_ms();
    assert_int_equal(ntcp_listen(bob, NULL, CONNECT_MS), 0); /* again: at once */
    assert_int_equal(ntcp_listen(bob, "bob", CONNECT_MS), 0);
    assert_true(now_ms() - t0 < QUICK_MS);
    /* One name per context. */
    assert_int_equal(ntcp_listen(bob, "robert", CONNECT_MS), NTCP_EINVAL);

    call acc;
    call_start(&acc, bob, NULL, -1);
    info_clear(&ai);
    int afd = ntcp_connect(alice, "bob", &ai, CONNECT_MS);
    assert_true(afd >= 0);
    pthread_join(acc.th, NULL);
    int bfd = acc.rc;
    assert_true(bfd >= 0);
    bi = acc.info;

    assert_blocking(afd);
    assert_blocking(bfd);
    check_info(&ai, afd, "bob", 1);
    check_info(&bi, bfd, "alice", 0);
    /* The two ends of one connection. */
    assert_true(same_sa(&ai.local, &bi.remote));
    assert_true(same_sa(&ai.remote, &bi.local));
    assert_string_equal(ai.method, bi.method);
    assert_true(same_sa(&ai.public_addr, &bi.peer_public));
    assert_true(same_sa(&bi.public_addr, &ai.peer_public));

    /* The stream handed over starts with the application's first byte. */
    stream(afd, bfd, 300000, 1);
    stream(bfd, afd, 300000, 2);
    close(afd);
    close(bfd);

    /* A second connection on the same contexts. */
    call_start(&acc, bob, NULL, CONNECT_MS);
    afd = ntcp_connect(alice, "bob", NULL, CONNECT_MS);
    assert_true(afd >= 0);
    pthread_join(acc.th, NULL);
    assert_true(acc.rc >= 0);
    check_info(&acc.info, acc.rc, "alice", 0);
    stream(afd, acc.rc, 1000, 3);
    stream(acc.rc, afd, 1000, 4);
    close(afd);
    close(acc.rc);

    /* alice called ntcp_connect only: it takes no offers. */
    assert_int_equal(ntcp_accept(alice, NULL, 0), NTCP_ENOTREADY);
    int rc = ntcp_connect(bob, "alice", NULL, CONNECT_MS);
    assert_int_equal(rc, NTCP_EREFUSED);

    ntcp_free(alice);
    ntcp_free(bob);
}

/* A caller's older, smaller info struct gets only what it has room for. */
static void test_small_info(void **state)
{
    fx *f = *state;
    ntcp_t *bob = mk_ctx(f, "bob", NULL, NULL);
    ntcp_t *alice = mk_ctx(f, "alice", NULL, NULL);
    assert_int_equal(ntcp_listen(bob, NULL, CONNECT_MS), 0);
    struct {
        ntcp_conn_info_t i;
        uint8_t guard[64];
    } big;
    memset(&big, 0xa5, sizeof big);
    size_t small = offsetof(ntcp_conn_info_t, method);
    big.i.size = small;
    int fd = ntcp_connect(alice, "bob", &big.i, CONNECT_MS);
    assert_true(fd >= 0);
    assert_int_equal(big.i.size, small);
    assert_string_equal(big.i.peer, "bob");
    const uint8_t *p = (const uint8_t *)&big;
    for (size_t k = small; k < sizeof big; k++)
        assert_int_equal(p[k], 0xa5);
    int bfd = ntcp_accept(bob, NULL, CONNECT_MS);
    assert_true(bfd >= 0);
    close(fd);
    close(bfd);
    ntcp_free(alice);
    ntcp_free(bob);
}

/* ---- 2. the asynchronous forms ---- */

typedef struct async_st {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t main_th;
    bool listen_done, acc_done, con_done, wrong_thread;
    int listen_st, acc_fd, con_fd;
    int acc_calls, con_calls, listen_calls;
    ntcp_conn_info_t acc_info, con_info;
} async_st;

static void as_init(async_st *a)
{
    memset(a, 0, sizeof *a);
    pthread_mutex_init(&a->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&a->cv, &ca);
    pthread_condattr_destroy(&ca);
    a->main_th = pthread_self();
    a->acc_fd = a->con_fd = a->listen_st = 1000;
}

static void as_destroy(async_st *a)
{
    pthread_cond_destroy(&a->cv);
    pthread_mutex_destroy(&a->mu);
}

/* Waits (under no lock) until *flag is true, for at most ms. */
static bool as_wait(async_st *a, bool *flag, uint32_t ms)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&a->mu);
    while (!*flag)
        if (pthread_cond_timedwait(&a->cv, &a->mu, &until) == ETIMEDOUT)
            break;
    bool ok = *flag;
    pthread_mutex_unlock(&a->mu);
    return ok;
}

static void on_listen_cb(ntcp_t *ctx, int status, void *user)
{
    (void)ctx;
    async_st *a = user;
    pthread_mutex_lock(&a->mu);
    a->wrong_thread = a->wrong_thread || pthread_equal(pthread_self(), a->main_th);
    a->listen_st = status;
    a->listen_calls++;
    a->listen_done = true;
    pthread_cond_broadcast(&a->cv);
    pthread_mutex_unlock(&a->mu);
}

static void on_accept_cb(ntcp_t *ctx, int fd, const ntcp_conn_info_t *info, void *user)
{
    (void)ctx;
    async_st *a = user;
    pthread_mutex_lock(&a->mu);
    a->wrong_thread = a->wrong_thread || pthread_equal(pthread_self(), a->main_th);
    a->acc_fd = fd;
    if (info)
        a->acc_info = *info;
    a->acc_calls++;
    a->acc_done = true;
    pthread_cond_broadcast(&a->cv);
    pthread_mutex_unlock(&a->mu);
}

static void on_connect_cb(ntcp_t *ctx, int fd, const ntcp_conn_info_t *info, void *user)
{
    (void)ctx;
    async_st *a = user;
    pthread_mutex_lock(&a->mu);
    a->wrong_thread = a->wrong_thread || pthread_equal(pthread_self(), a->main_th);
    a->con_fd = fd;
    if (info)
        a->con_info = *info;
    a->con_calls++;
    a->con_done = true;
    pthread_cond_broadcast(&a->cv);
    pthread_mutex_unlock(&a->mu);
}

static void test_async(void **state)
{
    fx *f = *state;
    ntcp_t *bob = mk_ctx(f, "bob", NULL, NULL);
    ntcp_t *alice = mk_ctx(f, "alice", NULL, NULL);
    async_st a;
    as_init(&a);

    assert_int_equal(ntcp_listen_async(bob, NULL, NULL, &a), NTCP_EINVAL);
    assert_int_equal(ntcp_connect_async(alice, "bob", CONNECT_MS, NULL, &a), NTCP_EINVAL);
    assert_int_equal(ntcp_accept_async(bob, NULL, &a), NTCP_EINVAL);

    assert_int_equal(ntcp_listen_async(bob, NULL, on_listen_cb, &a), 0);
    assert_true(as_wait(&a, &a.listen_done, CONNECT_MS));
    assert_int_equal(a.listen_st, 0);

    /* The accept callback is waiting before the connection comes. */
    assert_int_equal(ntcp_accept_async(bob, on_accept_cb, &a), 0);
    assert_int_equal(ntcp_connect_async(alice, "bob", CONNECT_MS, on_connect_cb, &a), 0);
    assert_true(as_wait(&a, &a.con_done, CONNECT_MS + 5000));
    assert_true(as_wait(&a, &a.acc_done, CONNECT_MS + 5000));
    assert_true(a.con_fd >= 0);
    assert_true(a.acc_fd >= 0);
    assert_false(a.wrong_thread);
    assert_blocking(a.con_fd);
    assert_blocking(a.acc_fd);
    check_info(&a.con_info, a.con_fd, "bob", 1);
    check_info(&a.acc_info, a.acc_fd, "alice", 0);
    stream(a.con_fd, a.acc_fd, 50000, 5);
    stream(a.acc_fd, a.con_fd, 50000, 6);
    close(a.con_fd);
    close(a.acc_fd);

    /* A connection already queued for ntcp_accept goes to the next accept
     * callback at once: connect blocking, wait until bob has it queued
     * (ntcp_accept with a timeout would take it, so the callback does). */
    pthread_mutex_lock(&a.mu);
    a.acc_done = a.con_done = false;
    pthread_mutex_unlock(&a.mu);
    int fd = ntcp_connect(alice, "bob", NULL, CONNECT_MS);
    assert_true(fd >= 0);
    assert_int_equal(ntcp_accept_async(bob, on_accept_cb, &a), 0);
    assert_true(as_wait(&a, &a.acc_done, CONNECT_MS));
    assert_true(a.acc_fd >= 0);
    assert_string_equal(a.acc_info.peer, "alice");
    stream(fd, a.acc_fd, 1000, 7);
    close(fd);
    close(a.acc_fd);

    /* An async connect that fails calls back once with the error. */
    pthread_mutex_lock(&a.mu);
    a.con_done = false;
    pthread_mutex_unlock(&a.mu);
    assert_int_equal(ntcp_connect_async(alice, "nobody", CONNECT_MS, on_connect_cb, &a), 0);
    assert_true(as_wait(&a, &a.con_done, CONNECT_MS));
    assert_int_equal(a.con_fd, NTCP_ENOPEER);
    assert_string_equal(a.con_info.peer, "nobody");
    assert_int_equal(a.con_info.initiator, 1);

    ntcp_free(alice);
    ntcp_free(bob);
    assert_int_equal(a.listen_calls, 1);
    assert_int_equal(a.acc_calls, 2);
    assert_int_equal(a.con_calls, 2);
    as_destroy(&a);
}

/* ---- 3. errors ---- */

static void test_unknown_peer(void **state)
{
    fx *f = *state;
    ntcp_t *alice = mk_ctx(f, "alice", NULL, NULL);
    ntcp_conn_info_t i;
    info_clear(&i);
    uint64_t t0 = now_ms();
    assert_int_equal(ntcp_connect(alice, "nobody", &i, CONNECT_MS), NTCP_ENOPEER);
    assert_true(now_ms() - t0 < QUICK_MS);
    assert_string_equal(i.peer, "nobody");
    assert_int_equal(i.initiator, 1);
    assert_string_equal(i.method, "");
    assert_true(i.detail[0] != '\0');
    assert_int_equal(i.verified_ms, -1);
    /* Bad names never reach the broker. */
    assert_int_equal(ntcp_connect(alice, "", &i, CONNECT_MS), NTCP_EINVAL);
    assert_int_equal(ntcp_connect(alice, "no spaces", &i, CONNECT_MS), NTCP_EINVAL);
    assert_int_equal(ntcp_connect(alice, NULL, &i, CONNECT_MS), NTCP_EINVAL);
    ntcp_free(alice);
}

typedef struct pol {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int calls;
    char last[65];
    int answer;
    bool block, release; /* block: wait for release before answering */
} pol;

static void pol_init(pol *p, int answer, bool block)
{
    memset(p, 0, sizeof *p);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->answer = answer;
    p->block = block;
}

static int policy_fn(ntcp_t *ctx, const char *peer, ntcp_transport_t t, void *user)
{
    (void)ctx;
    (void)t;
    pol *p = user;
    pthread_mutex_lock(&p->mu);
    p->calls++;
    snprintf(p->last, sizeof p->last, "%s", peer);
    pthread_cond_broadcast(&p->cv);
    while (p->block && !p->release)
        pthread_cond_wait(&p->cv, &p->mu);
    int a = p->answer;
    pthread_mutex_unlock(&p->mu);
    return a;
}

static bool pol_wait_calls(pol *p, int n, uint32_t ms)
{
    uint64_t end = now_ms() + ms;
    pthread_mutex_lock(&p->mu);
    while (p->calls < n && now_ms() < end) {
        pthread_mutex_unlock(&p->mu);
        poll(NULL, 0, 10);
        pthread_mutex_lock(&p->mu);
    }
    bool ok = p->calls >= n;
    pthread_mutex_unlock(&p->mu);
    return ok;
}

static void pol_release(pol *p)
{
    pthread_mutex_lock(&p->mu);
    p->release = true;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

/* A policy set after ntcp_listen() still sees every connect: the listener
 * had told the broker to skip the offers (no policy then); within a tick it
 * takes that back, and a GO that came meanwhile is put to the policy too. */
static void test_policy_after_listen(void **state)
{
    fx *f = *state;
    pol p;
    pol_init(&p, 0, false);
    ntcp_t *bob = mk_ctx(f, "bob", NULL, NULL);
    ntcp_t *alice = mk_ctx(f, "alice", NULL, NULL);
    assert_int_equal(ntcp_listen(bob, NULL, CONNECT_MS), 0);
    int fd = ntcp_connect(alice, "bob", NULL, CONNECT_MS); /* no policy: in */
    assert_true(fd >= 0);
    int bfd = ntcp_accept(bob, NULL, CONNECT_MS);
    assert_true(bfd >= 0);
    close(fd);
    close(bfd);
    assert_int_equal(ntcp_set_policy(bob, policy_fn, &p), 0);
    poll(NULL, 0, 300); /* a tick and the broker's REFRESH */
    ntcp_conn_info_t i;
    info_clear(&i);
    assert_int_equal(ntcp_connect(alice, "bob", &i, CONNECT_MS), NTCP_EREFUSED);
    assert_int_equal(p.calls, 1);
    assert_string_equal(p.last, "alice");
    assert_int_equal(ntcp_accept(bob, NULL, 300), NTCP_ETIMEDOUT);
    ntcp_free(alice);
    ntcp_free(bob);
    pthread_cond_destroy(&p.cv);
    pthread_mutex_destroy(&p.mu);
}

static void test_policy_refuses(void **state)
{
    fx *f = *state;
    pol p;
    pol_init(&p, 0, false);
    ntcp_t *bob = mk_ctx(f, "bob", NULL, NULL);
    ntcp_t *alice = mk_ctx(f, "alice", NULL, NULL);
    assert_int_equal(ntcp_set_policy(bob, policy_fn, &p), 0);
    assert_int_equal(ntcp_listen(bob, NULL, CONNECT_MS), 0);
    ntcp_conn_info_t i;
    info_clear(&i);
    uint64_t t0 = now_ms();
    assert_int_equal(ntcp_connect(alice, "bob", &i, CONNECT_MS), NTCP_EREFUSED);
    assert_true(now_ms() - t0 < QUICK_MS);
    assert_true(i.detail[0] != '\0');
    assert_int_equal(p.calls, 1);
    assert_string_equal(p.last, "alice");
    /* Nothing reached the accept queue. */
    assert_int_equal(ntcp_accept(bob, NULL, 300), NTCP_ETIMEDOUT);

    /* Accepting again lets the next one through. */
    pthread_mutex_lock(&p.mu);
    p.answer = 1;
    pthread_mutex_unlock(&p.mu);
    int fd = ntcp_connect(alice, "bob", NULL, CONNECT_MS);
    assert_true(fd >= 0);
    int bfd = ntcp_accept(bob, NULL, CONNECT_MS);
    assert_true(bfd >= 0);
    stream(fd, bfd, 100, 8);
    close(fd);
    close(bfd);
    assert_int_equal(p.calls, 2);
    ntcp_free(alice);
    ntcp_free(bob);
    pthread_cond_destroy(&p.cv);
    pthread_mutex_destroy(&p.mu);
}

static void test_accept_timeouts(void **state)
{
    fx *f = *state;
    ntcp_t *bob = mk_ctx(f, "bob", NULL, NULL);
    assert_int_equal(ntcp_accept(bob, NULL, 0), NTCP_ENOTREADY);
    assert_int_equal(ntcp_accept(bob, NULL, 100), NTCP_ENOTREADY);
    assert_int_equal(ntcp_accept(NULL, NULL, 0), NTCP_EINVAL);
    assert_int_equal(ntcp_listen(bob, NULL, CONNECT_MS), 0);
    uint64_t t0 = now_ms();
    assert_int_equal(ntcp_accept(bob, NULL, 0), NTCP_ETIMEDOUT);
    assert_true(now_ms() - t0 < QUICK_MS);
    t0 = now_ms();
    assert_int_equal(ntcp_accept(bob, NULL, 400), NTCP_ETIMEDOUT);
    uint64_t took = now_ms() - t0;
    assert_true(took >= 390);
    assert_true(took < 400 + QUICK_MS);
    ntcp_free(bob);
}

static void test_no_config(void **state)
{
    fx *f = *state;
    async_st a;
    as_init(&a);
    ntcp_conn_info_t i;
    /* No broker. */
    ntcp_config_t cfg;
    ntcp_config_init(&cfg);
    cfg.name = "alice";
    ntcp_t *c1 = NULL;
    assert_int_equal(ntcp_new(&cfg, &c1), 0);
    assert_int_equal(ntcp_listen(c1, NULL, 1000), NTCP_ECONFIG);
    assert_int_equal(ntcp_listen(c1, "alice", 1000), NTCP_ECONFIG);
    info_clear(&i);
    assert_int_equal(ntcp_connect(c1, "bob", &i, 1000), NTCP_ECONFIG);
    assert_string_equal(i.peer, "bob");
    assert_true(i.detail[0] != '\0');
    assert_int_equal(ntcp_listen_async(c1, NULL, on_listen_cb, &a), NTCP_ECONFIG);
    assert_int_equal(ntcp_connect_async(c1, "bob", 1000, on_connect_cb, &a), NTCP_ECONFIG);
    assert_int_equal(ntcp_accept(c1, NULL, 0), NTCP_ENOTREADY);
    assert_int_equal(ntcp_accept_async(c1, on_accept_cb, &a), NTCP_ENOTREADY);
    ntcp_free(c1);
    /* No name. */
    ntcp_t *c2 = mk_ctx(f, NULL, "anon", NULL);
    assert_int_equal(ntcp_listen(c2, NULL, 1000), NTCP_ECONFIG);
    assert_int_equal(ntcp_connect(c2, "bob", NULL, 1000), NTCP_ECONFIG);
    assert_int_equal(ntcp_listen_async(c2, NULL, on_listen_cb, &a), NTCP_ECONFIG);
    assert_int_equal(ntcp_connect_async(c2, "bob", 1000, on_connect_cb, &a), NTCP_ECONFIG);
    /* ...until ntcp_listen gives it one: connects then go out under it. */
    assert_int_equal(ntcp_listen(c2, "erin", CONNECT_MS), 0);
    ntcp_t *c3 = mk_ctx(f, "frank", NULL, NULL);
    assert_int_equal(ntcp_listen(c3, NULL, CONNECT_MS), 0);
    int fd = ntcp_connect(c2, "frank", NULL, CONNECT_MS);
    assert_true(fd >= 0);
    ntcp_conn_info_t fi;
    info_clear(&fi);
    int ffd = ntcp_accept(c3, &fi, CONNECT_MS);
    assert_true(ffd >= 0);
    assert_string_equal(fi.peer, "erin");
    close(fd);
    close(ffd);
    ntcp_free(c3);
    ntcp_free(c2);
    assert_int_equal(a.listen_calls + a.con_calls + a.acc_calls, 0);
    as_destroy(&a);
}

/* Nothing listens at the broker's address: the refusal is reported at once
 * with its cause, not when the caller's timeout runs out. */
static void test_dead_broker(void **state)
{
    fx *f = *state;
    int port = free_port(); /* nothing listens there */
    char dead[64];
    snprintf(dead, sizeof dead, "127.0.0.1:%d", port);
    ntcp_t *alice = mk_ctx(f, "alice", NULL, dead);
    /* Timeouts far beyond the test's own: a wait for them would fail it. */
    assert_int_equal(ntcp_listen(alice, NULL, 120000), NTCP_EUNREACHABLE);
    ntcp_conn_info_t i;
    info_clear(&i);
    uint64_t t0 = now_ms();
    assert_int_equal(ntcp_connect(alice, "bob", &i, 120000), NTCP_EUNREACHABLE);
    assert_true(now_ms() - t0 < QUICK_MS);
    assert_string_equal(i.peer, "bob");
    /* The cause names the broker and what happened there. */
    assert_non_null(strstr(i.detail, "unreachable"));
    assert_non_null(strstr(i.detail, dead));
    assert_non_null(strstr(i.detail, "connection refused"));
    /* The async form says the same through its callback. */
    async_st a;
    as_init(&a);
    assert_int_equal(ntcp_connect_async(alice, "bob", 120000, on_connect_cb, &a), 0);
    assert_true(as_wait(&a, &a.con_done, QUICK_MS));
    assert_int_equal(a.con_fd, NTCP_EUNREACHABLE);
    ntcp_free(alice);
    assert_int_equal(a.con_calls, 1);
    as_destroy(&a);
}

/* A broker list whose first entries are dead: the session goes on to the
 * live one by itself (the dead ones are tried in turn, each at once), and
 * the name "localhost" is resolved off the loop. */
static void test_broker_list(void **state)
{
    fx *f = *state;
    char list[200];
    snprintf(list, sizeof list, "127.0.0.1:%d, 127.0.0.1:%d,%s", free_port(), free_port(),
             f->broker);
    ntcp_t *bob = mk_ctx(f, "bob", NULL, list);
    assert_int_equal(ntcp_listen(bob, NULL, CONNECT_MS), 0);
    char named[200];
    snprintf(named, sizeof named, "localhost:%s", strrchr(f->broker, ':') + 1);
    ntcp_t *alice = mk_ctx(f, "alice", NULL, named);
    ntcp_conn_info_t ai, bi;
    info_clear(&ai);
    info_clear(&bi);
    call acc;
    call_start(&acc, bob, NULL, CONNECT_MS);
    int fd = ntcp_connect(alice, "bob", &ai, CONNECT_MS);
    assert_true(fd >= 0);
    pthread_join(acc.th, NULL);
    assert_true(acc.rc >= 0);
    assert_string_equal(acc.info.peer, "alice");
    close(fd);
    close(acc.rc);
    ntcp_free(alice);
    ntcp_free(bob);
}

/* A name bound to another key: refused, also once the first holder left
 * (the broker keeps the binding in its --state-dir). */
static void test_name_taken(void **state)
{
    fx *f = *state;
    ntcp_t *d1 = mk_ctx(f, "dave", "dave1", NULL);
    assert_int_equal(ntcp_listen(d1, NULL, CONNECT_MS), 0);
    ntcp_t *d2 = mk_ctx(f, "dave", "dave2", NULL);
    uint64_t t0 = now_ms();
    assert_int_equal(ntcp_listen(d2, NULL, CONNECT_MS), NTCP_EREFUSED);
    assert_true(now_ms() - t0 < QUICK_MS);
    ntcp_conn_info_t i;
    info_clear(&i);
    assert_int_equal(ntcp_connect(d2, "dave", &i, CONNECT_MS), NTCP_EREFUSED);
    assert_true(i.detail[0] != '\0');
    assert_int_equal(ntcp_accept(d2, NULL, 0), NTCP_ENOTREADY);
    ntcp_free(d2);
    ntcp_free(d1);
    ntcp_t *d3 = mk_ctx(f, "dave", "dave2", NULL);
    assert_int_equal(ntcp_listen(d3, NULL, CONNECT_MS), NTCP_EREFUSED);
    ntcp_free(d3);
    /* The right key still has it. */
    ntcp_t *d4 = mk_ctx(f, "dave", "dave1", NULL);
    assert_int_equal(ntcp_listen(d4, NULL, CONNECT_MS), 0);
    ntcp_free(d4);
}

/* ---- 4. ntcp_free with calls in flight ---- */

/* A peer that never answers: carol's policy holds her runtime until
 * released, so bob's connect waits for the broker's answer. */
static void test_free_while_blocked(void **state)
{
    fx *f = *state;
    pol p;
    pol_init(&p, 0, true);
    ntcp_t *carol = mk_ctx(f, "carol", NULL, NULL);
    ntcp_set_policy(carol, policy_fn, &p);
    assert_int_equal(ntcp_listen(carol, NULL, CONNECT_MS), 0);

    ntcp_t *bob = mk_ctx(f, "bob", NULL, NULL);
    assert_int_equal(ntcp_listen(bob, NULL, CONNECT_MS), 0);
    call acc, con;
    call_start(&acc, bob, NULL, -1);
    assert_true(wait_futex(&acc, CONNECT_MS));
    call_start(&con, bob, "carol", 120000);
    assert_true(pol_wait_calls(&p, 1, CONNECT_MS)); /* the offer reached carol */
    async_st a;
    as_init(&a);
    assert_int_equal(ntcp_accept_async(bob, on_accept_cb, &a), 0);
    assert_int_equal(ntcp_connect_async(bob, "carol", 120000, on_connect_cb, &a), 0);
    assert_true(pol_wait_calls(&p, 1, CONNECT_MS));

    uint64_t t0 = now_ms();
    ntcp_free(bob);
    uint64_t took = now_ms() - t0;
    pthread_join(acc.th, NULL);
    pthread_join(con.th, NULL);
    assert_int_equal(acc.rc, NTCP_ECLOSED);
    assert_int_equal(con.rc, NTCP_ECLOSED);
    assert_string_equal(con.info.peer, "carol");
    assert_true(took < QUICK_MS);
    /* Callbacks pending at ntcp_free are called, once, before it returns. */
    assert_int_equal(a.acc_calls, 1);
    assert_int_equal(a.acc_fd, NTCP_ECLOSED);
    assert_int_equal(a.con_calls, 1);
    assert_int_equal(a.con_fd, NTCP_ECLOSED);
    as_destroy(&a);

    pol_release(&p);
    ntcp_free(carol);
    pthread_cond_destroy(&p.cv);
    pthread_mutex_destroy(&p.mu);
}

/* The broker dies while a connect waits for its answer: the caller hears
 * that the broker is gone (NTCP_EUNREACHABLE), not that its own context
 * was closed (NTCP_ECLOSED). */
static void test_broker_lost(void **state)
{
    fx *f = *state;
    pol p;
    pol_init(&p, 0, true);
    ntcp_t *carol = mk_ctx(f, "carol", NULL, NULL);
    ntcp_set_policy(carol, policy_fn, &p);
    assert_int_equal(ntcp_listen(carol, NULL, CONNECT_MS), 0);
    ntcp_t *alice = mk_ctx(f, "alice", NULL, NULL);
    call con;
    call_start(&con, alice, "carol", 120000);
    assert_true(pol_wait_calls(&p, 1, CONNECT_MS));
    assert_int_equal(kill(f->pid, SIGKILL), 0);
    assert_int_equal(waitpid(f->pid, NULL, 0), f->pid);
    f->pid = 0;
    pthread_join(con.th, NULL);
    assert_int_equal(con.rc, NTCP_EUNREACHABLE);
    assert_true(con.t1 - con.t0 < QUICK_MS);
    assert_true(con.info.detail[0] != '\0');
    ntcp_free(alice);
    pol_release(&p);
    ntcp_free(carol);
    pthread_cond_destroy(&p.cv);
    pthread_mutex_destroy(&p.mu);
}

/* Blocked registering with a broker that is not there. */
static void test_free_while_registering(void **state)
{
    fx *f = *state;
    /* A port that takes the connection and never answers REGISTER. */
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sin;
    assert_int_equal(bind(l, (struct sockaddr *)&sin, sizeof sin), 0);
    assert_int_equal(listen(l, 8), 0);
    assert_int_equal(getsockname(l, (struct sockaddr *)&sin, &len), 0);
    char silent[64];
    snprintf(silent, sizeof silent, "127.0.0.1:%d", ntohs(sin.sin_port));
    ntcp_t *alice = mk_ctx(f, "alice", NULL, silent);
    call con;
    call_start(&con, alice, "bob", 120000);
    assert_true(wait_futex(&con, CONNECT_MS));
    ntcp_free(alice);
    close(l);
    pthread_join(con.th, NULL);
    assert_int_equal(con.rc, NTCP_ECLOSED);
    assert_true(con.t1 - con.t0 < 120000);
}

/* Blocked while the runtime discovers the NAT with a STUN server that never
 * answers (a UDP socket of ours that reads nothing). */
static void test_free_while_discovering(void **state)
{
    fx *f = *state;
    /* ...and a TCP listener on the same port that accepts nothing. The UDP
     * port the kernel picks may be taken for TCP (other tests run at the
     * same time): pick again. */
    int u = -1, t = -1;
    struct sockaddr_in a;
    for (int tries = 0; tries < 50 && t < 0; tries++) {
        if (u >= 0)
            close(u);
        u = socket(AF_INET, SOCK_DGRAM, 0);
        memset(&a, 0, sizeof a);
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t al = sizeof a;
        assert_int_equal(bind(u, (struct sockaddr *)&a, sizeof a), 0);
        assert_int_equal(getsockname(u, (struct sockaddr *)&a, &al), 0);
        t = socket(AF_INET, SOCK_STREAM, 0);
        if (bind(t, (struct sockaddr *)&a, sizeof a) < 0) {
            close(t);
            t = -1;
        }
    }
    assert_true(t >= 0);
    assert_int_equal(listen(t, 16), 0);
    char stun[64];
    snprintf(stun, sizeof stun, "127.0.0.1:%d", ntohs(a.sin_port));
    ntcp_t *alice = mk_ctx(f, "alice", NULL, NULL);
    assert_int_equal(ntcp_add_stun_server(alice, stun), 0);
    call con;
    call_start(&con, alice, "bob", 120000);
    assert_true(wait_futex(&con, CONNECT_MS));
    uint64_t t0 = now_ms();
    ntcp_free(alice);
    uint64_t took = now_ms() - t0;
    pthread_join(con.th, NULL);
    assert_int_equal(con.rc, NTCP_ECLOSED);
    /* Discovery cannot be cancelled: ntcp_free waits for its end, which its
     * own timeout (15 s in api.c) bounds. */
    assert_true(took < 15000 + QUICK_MS);
    close(u);
    close(t);
}

/* A ghost peer: a bare broker session that takes every offer and then does
 * nothing, so the requester's attempts run against nobody. */
typedef struct ghost {
    uv_loop_t loop;
    uv_async_t stop;
    pthread_t th;
    ntcp_session *s;
    EVP_PKEY *key;
    char broker[64];
    volatile int registered, gos;
} ghost;

static void ghost_state(ntcp_session *s, int state, int err, int code, void *user)
{
    (void)s;
    (void)err;
    (void)code;
    ghost *g = user;
    fprintf(stderr, "ghost state %d err %d code %d\n", state, err, code);
    if (state == NTCP_SESSION_REGISTERED)
        __atomic_store_n(&g->registered, 1, __ATOMIC_SEQ_CST);
}

static void ghost_go(ntcp_session *s, const broker_go *go, void *user)
{
    (void)s;
    (void)go;
    ghost *g = user;
    __atomic_add_fetch(&g->gos, 1, __ATOMIC_SEQ_CST);
}

static void ghost_stop_cb(uv_async_t *a)
{
    ghost *g = a->data;
    ntcp_session_close(g->s);
    uv_close((uv_handle_t *)&g->stop, NULL);
}

static void *ghost_main(void *arg)
{
    ghost *g = arg;
    uv_run(&g->loop, UV_RUN_DEFAULT);
    return NULL;
}

static void ghost_start(ghost *g, const char *broker, const char *name)
{
    memset(g, 0, sizeof *g);
    snprintf(g->broker, sizeof g->broker, "%s", broker);
    assert_int_equal(ntcp_identity_generate(&g->key), 0);
    assert_int_equal(uv_loop_init(&g->loop), 0);
    uv_async_init(&g->loop, &g->stop, ghost_stop_cb);
    g->stop.data = g;
    ntcp_session_config sc;
    memset(&sc, 0, sizeof sc);
    sc.broker = g->broker;
    sc.name = name;
    sc.key = g->key;
    sc.on_go = ghost_go;
    sc.on_state = ghost_state;
    sc.user = g;
    assert_int_equal(ntcp_session_start(&g->loop, &sc, &g->s), 0);
    assert_int_equal(pthread_create(&g->th, NULL, ghost_main, g), 0);
    uint64_t end = now_ms() + CONNECT_MS;
    while (!__atomic_load_n(&g->registered, __ATOMIC_SEQ_CST) && now_ms() < end)
        poll(NULL, 0, 10);
    assert_true(g->registered);
}

static void ghost_stop(ghost *g)
{
    uv_async_send(&g->stop);
    pthread_join(g->th, NULL);
    assert_int_equal(uv_loop_close(&g->loop), 0);
    EVP_PKEY_free(g->key);
}

static void test_free_during_attempts(void **state)
{
    fx *f = *state;
    ghost g;
    ghost_start(&g, f->broker, "ghost");
    ntcp_t *alice = mk_ctx(f, "alice", NULL, NULL);
    call con;
    call_start(&con, alice, "ghost", 120000);
    uint64_t end = now_ms() + CONNECT_MS;
    while (!__atomic_load_n(&g.gos, __ATOMIC_SEQ_CST) && now_ms() < end)
        poll(NULL, 0, 5);
    assert_true(g.gos >= 1);
    /* alice's CONNECT-GO left the broker with the ghost's: her attempts are
     * starting or running against nobody. */
    ntcp_free(alice);
    pthread_join(con.th, NULL);
    assert_true(con.rc == NTCP_ECLOSED || con.rc == NTCP_ETIMEDOUT);
    assert_true(con.t1 - con.t0 < 120000);
    ghost_stop(&g);
}

/* A verified connection queued for ntcp_accept() is closed by ntcp_free. */
static void test_free_closes_queued(void **state)
{
    fx *f = *state;
    ntcp_t *bob = mk_ctx(f, "bob", NULL, NULL);
    ntcp_t *alice = mk_ctx(f, "alice", NULL, NULL);
    assert_int_equal(ntcp_listen(bob, NULL, CONNECT_MS), 0);
    int fd = ntcp_connect(alice, "bob", NULL, CONNECT_MS);
    assert_true(fd >= 0);
    ntcp_free(bob); /* never accepted */
    struct pollfd p = {.fd = fd, .events = POLLIN};
    assert_int_equal(poll(&p, 1, CONNECT_MS), 1);
    char c;
    ssize_t r = recv(fd, &c, 1, 0);
    assert_true(r == 0 || (r < 0 && errno == ECONNRESET));
    close(fd);
    ntcp_free(alice);
}

/* ---- 5. parallel connects from one context ---- */

#define NPAR 5

static void test_parallel(void **state)
{
    fx *f = *state;
    ntcp_t *bob = mk_ctx(f, "bob", NULL, NULL);
    ntcp_t *alice = mk_ctx(f, "alice", NULL, NULL);
    assert_int_equal(ntcp_listen(bob, NULL, CONNECT_MS), 0);
    /* alice is not registered yet: the five wait for it together. */
    call c[NPAR];
    for (int k = 0; k < NPAR; k++)
        call_start(&c[k], alice, "bob", 60000);
    int bfd[NPAR];
    ntcp_conn_info_t bi[NPAR];
    for (int k = 0; k < NPAR; k++) {
        info_clear(&bi[k]);
        bfd[k] = ntcp_accept(bob, &bi[k], 60000);
        if (bfd[k] < 0) { /* what went wrong, before the assertion ends the test */
            for (int j = 0; j < NPAR; j++) {
                pthread_join(c[j].th, NULL);
                fprintf(stderr, "connect %d: %d %s: %s\n", j, c[j].rc, c[j].info.method,
                        c[j].info.detail);
            }
        }
        assert_true(bfd[k] >= 0);
        check_info(&bi[k], bfd[k], "alice", 0);
    }
    for (int k = 0; k < NPAR; k++) {
        pthread_join(c[k].th, NULL);
        assert_true(c[k].rc >= 0);
        check_info(&c[k].info, c[k].rc, "bob", 1);
    }
    /* Five distinct connections, paired one to one. */
    for (int k = 0; k < NPAR; k++) {
        uint8_t tag = (uint8_t)(0x40 + k);
        assert_int_equal(send(c[k].rc, &tag, 1, MSG_NOSIGNAL), 1);
    }
    bool seen[NPAR] = {false};
    for (int k = 0; k < NPAR; k++) {
        uint8_t tag = 0;
        assert_int_equal(recv(bfd[k], &tag, 1, 0), 1);
        int idx = tag - 0x40;
        assert_true(idx >= 0 && idx < NPAR);
        assert_false(seen[idx]);
        seen[idx] = true;
        assert_true(same_sa(&bi[k].remote, &c[idx].info.local));
        uint8_t back = (uint8_t)(0x80 + idx);
        assert_int_equal(send(bfd[k], &back, 1, MSG_NOSIGNAL), 1);
    }
    for (int k = 0; k < NPAR; k++) {
        uint8_t back = 0;
        assert_int_equal(recv(c[k].rc, &back, 1, 0), 1);
        assert_int_equal(back, 0x80 + k);
        close(c[k].rc);
        close(bfd[k]);
    }
    assert_int_equal(ntcp_accept(bob, NULL, 0), NTCP_ETIMEDOUT);
    ntcp_free(alice);
    ntcp_free(bob);
}

/* Two requesters at once to one listener: bob runs both offers' attempts
 * at the same time (offers cannot wait), and each requester still gets its
 * own verified connection. */
static void test_two_requesters(void **state)
{
    fx *f = *state;
    ntcp_t *bob = mk_ctx(f, "bob", NULL, NULL);
    ntcp_t *alice = mk_ctx(f, "alice", NULL, NULL);
    ntcp_t *carol = mk_ctx(f, "carol", NULL, NULL);
    assert_int_equal(ntcp_listen(bob, NULL, CONNECT_MS), 0);
    for (int round = 0; round < 3; round++) {
        call c[2];
        call_start(&c[0], alice, "bob", CONNECT_MS);
        call_start(&c[1], carol, "bob", CONNECT_MS);
        int b[2];
        ntcp_conn_info_t bi[2];
        for (int k = 0; k < 2; k++) {
            info_clear(&bi[k]);
            b[k] = ntcp_accept(bob, &bi[k], CONNECT_MS);
            assert_true(b[k] >= 0);
        }
        for (int k = 0; k < 2; k++) {
            pthread_join(c[k].th, NULL);
            assert_true(c[k].rc >= 0);
        }
        /* bob's k-th connection is alice's or carol's, as its info says. */
        for (int k = 0; k < 2; k++) {
            int who = !strcmp(bi[k].peer, "alice") ? 0 : !strcmp(bi[k].peer, "carol") ? 1 : -1;
            assert_true(who >= 0);
            check_info(&bi[k], b[k], who ? "carol" : "alice", 0);
            check_info(&c[who].info, c[who].rc, "bob", 1);
            assert_true(same_sa(&bi[k].remote, &c[who].info.local));
            stream(c[who].rc, b[k], 5000, (unsigned)(10 + who));
            stream(b[k], c[who].rc, 5000, (unsigned)(20 + who));
        }
        assert_string_not_equal(bi[0].peer, bi[1].peer);
        for (int k = 0; k < 2; k++) {
            close(b[k]);
            close(c[k].rc);
        }
    }
    ntcp_free(alice);
    ntcp_free(carol);
    ntcp_free(bob);
}

/* ntcp_stop(): calls blocked in other threads and pending callbacks end
 * with NTCP_ECLOSED, every later call fails at once with it, and
 * ntcp_free() after it is quick. */
static void test_stop(void **state)
{
    fx *f = *state;
    pol p;
    pol_init(&p, 0, true);
    ntcp_t *carol = mk_ctx(f, "carol", NULL, NULL);
    ntcp_set_policy(carol, policy_fn, &p);
    assert_int_equal(ntcp_listen(carol, NULL, CONNECT_MS), 0);

    ntcp_t *bob = mk_ctx(f, "bob", NULL, NULL);
    assert_int_equal(ntcp_listen(bob, NULL, CONNECT_MS), 0);
    call acc, con;
    call_start(&acc, bob, NULL, -1);
    assert_true(wait_futex(&acc, CONNECT_MS));
    call_start(&con, bob, "carol", 120000);
    assert_true(pol_wait_calls(&p, 1, CONNECT_MS));
    async_st a;
    as_init(&a);
    assert_int_equal(ntcp_accept_async(bob, on_accept_cb, &a), 0);

    uint64_t t0 = now_ms();
    ntcp_stop(bob);
    assert_true(now_ms() - t0 < QUICK_MS);
    pthread_join(acc.th, NULL);
    pthread_join(con.th, NULL);
    assert_int_equal(acc.rc, NTCP_ECLOSED);
    assert_int_equal(con.rc, NTCP_ECLOSED);
    assert_int_equal(a.acc_calls, 1);
    assert_int_equal(a.acc_fd, NTCP_ECLOSED);
    /* Everything after it: NTCP_ECLOSED at once, no new runtime. */
    ntcp_conn_info_t i;
    info_clear(&i);
    t0 = now_ms();
    assert_int_equal(ntcp_accept(bob, &i, 5000), NTCP_ECLOSED);
    assert_int_equal(ntcp_listen(bob, NULL, 5000), NTCP_ECLOSED);
    assert_int_equal(ntcp_connect(bob, "carol", &i, 5000), NTCP_ECLOSED);
    assert_int_equal(ntcp_connect_async(bob, "carol", 5000, on_connect_cb, &a), NTCP_ECLOSED);
    assert_int_equal(ntcp_accept_async(bob, on_accept_cb, &a), NTCP_ECLOSED);
    assert_true(now_ms() - t0 < QUICK_MS);
    assert_int_equal(a.con_calls, 0);
    ntcp_stop(bob); /* idempotent */
    ntcp_free(bob);
    as_destroy(&a);
    pol_release(&p);
    ntcp_free(carol);
    pthread_cond_destroy(&p.cv);
    pthread_mutex_destroy(&p.mu);
}

/* One context connects to three listeners at once (each its own engine
 * on the one session port), and each of them gets its own connection. */
static void test_one_to_three(void **state)
{
    fx *f = *state;
    const char *names[3] = {"bob", "carol", "dave"};
    ntcp_t *l[3];
    for (int k = 0; k < 3; k++) {
        l[k] = mk_ctx(f, names[k], NULL, NULL);
        assert_int_equal(ntcp_listen(l[k], NULL, CONNECT_MS), 0);
    }
    ntcp_t *alice = mk_ctx(f, "alice", NULL, NULL);
    assert_int_equal(ntcp_listen(alice, NULL, CONNECT_MS), 0);
    call c[3];
    for (int k = 0; k < 3; k++)
        call_start(&c[k], alice, names[k], CONNECT_MS);
    for (int k = 0; k < 3; k++) {
        ntcp_conn_info_t bi;
        info_clear(&bi);
        int b = ntcp_accept(l[k], &bi, CONNECT_MS);
        assert_true(b >= 0);
        check_info(&bi, b, "alice", 0);
        pthread_join(c[k].th, NULL);
        assert_true(c[k].rc >= 0);
        check_info(&c[k].info, c[k].rc, names[k], 1);
        assert_true(same_sa(&bi.remote, &c[k].info.local));
        stream(c[k].rc, b, 5000, (unsigned)(30 + k));
        stream(b, c[k].rc, 5000, (unsigned)(40 + k));
        close(b);
        close(c[k].rc);
    }
    ntcp_free(alice);
    for (int k = 0; k < 3; k++)
        ntcp_free(l[k]);
}

/* ---- UDP: many punches on one context's socket ---- */

/* The two ends of a punched UDP path: connected to each other, each end's
 * info naming the other, and datagrams both ways (the keepalive's empty
 * ones and repeated handshake datagrams skipped, as applications do). */
static void check_udp_pair(const ntcp_conn_info_t *ci, int cfd, const ntcp_conn_info_t *ti, int tfd,
                           const char *cname, const char *tname, uint8_t tag)
{
    assert_int_equal(ci->transport, NTCP_UDP);
    assert_int_equal(ti->transport, NTCP_UDP);
    assert_string_equal(ci->peer, tname);
    assert_string_equal(ti->peer, cname);
    assert_int_equal(ci->initiator, 1);
    assert_int_equal(ti->initiator, 0);
    int fds[2] = {cfd, tfd};
    for (int dir = 0; dir < 2; dir++) {
        for (uint8_t k = 0; k < 20; k++) {
            uint8_t d[3] = {tag, (uint8_t)dir, k};
            assert_int_equal(send(fds[dir], d, 3, 0), 3);
        }
        uint8_t got = 0;
        uint64_t end = now_ms() + 5000;
        while (got < 20 && now_ms() < end) {
            struct pollfd pf = {.fd = fds[!dir], .events = POLLIN};
            if (poll(&pf, 1, 100) <= 0)
                continue;
            uint8_t b[600];
            ssize_t n = recv(fds[!dir], b, sizeof b, MSG_DONTWAIT);
            if (n <= 0 || ntcp_udp_is_control(b, (size_t)n))
                continue;
            /* Each datagram is this pair's and this direction's, in order
             * on loopback: never another punch's peer. */
            assert_int_equal(n, 3);
            assert_int_equal(b[0], tag);
            assert_int_equal(b[1], dir);
            assert_int_equal(b[2], got);
            got++;
        }
        assert_int_equal(got, 20);
    }
}

/* One context punches UDP to three listeners at once: all three punches
 * share the session's UDP socket, each gets its own connected path. */
static void test_udp_one_to_three(void **state)
{
    fx *f = *state;
    const char *names[3] = {"bob", "carol", "dave"};
    ntcp_t *l[3];
    for (int k = 0; k < 3; k++) {
        l[k] = mk_ctx(f, names[k], NULL, NULL);
        assert_int_equal(ntcp_listen(l[k], NULL, CONNECT_MS), 0);
    }
    ntcp_t *alice = mk_ctx(f, "alice", NULL, NULL);
    assert_int_equal(ntcp_listen(alice, NULL, CONNECT_MS), 0);
    for (int round = 0; round < 2; round++) {
        call c[3];
        for (int k = 0; k < 3; k++)
            call_start_udp(&c[k], alice, names[k], CONNECT_MS, true);
        int b[3];
        ntcp_conn_info_t bi[3];
        for (int k = 0; k < 3; k++) {
            info_clear(&bi[k]);
            b[k] = ntcp_accept(l[k], &bi[k], CONNECT_MS);
            assert_true(b[k] >= 0);
        }
        for (int k = 0; k < 3; k++) {
            pthread_join(c[k].th, NULL);
            assert_true(c[k].rc >= 0);
        }
        /* Three paths from one local port, to three peers. */
        for (int k = 0; k < 3; k++) {
            assert_int_equal(ntohs(((struct sockaddr_in *)&c[k].info.local)->sin_port),
                             ntohs(((struct sockaddr_in *)&c[0].info.local)->sin_port));
            check_udp_pair(&c[k].info, c[k].rc, &bi[k], b[k], "alice", names[k],
                           (uint8_t)(50 + k));
        }
        for (int k = 0; k < 3; k++) {
            ntcp_udp_close(alice, c[k].rc);
            ntcp_udp_close(l[k], b[k]);
        }
    }
    ntcp_free(alice);
    for (int k = 0; k < 3; k++)
        ntcp_free(l[k]);
}

/* Two requesters punch UDP to one listener at the same moment: bob runs
 * both offers' punches at once on his one socket (offers cannot wait). */
static void test_udp_two_requesters(void **state)
{
    fx *f = *state;
    ntcp_t *bob = mk_ctx(f, "bob", NULL, NULL);
    ntcp_t *alice = mk_ctx(f, "alice", NULL, NULL);
    ntcp_t *carol = mk_ctx(f, "carol", NULL, NULL);
    assert_int_equal(ntcp_listen(bob, NULL, CONNECT_MS), 0);
    for (int round = 0; round < 3; round++) {
        call c[2];
        call_start_udp(&c[0], alice, "bob", CONNECT_MS, true);
        call_start_udp(&c[1], carol, "bob", CONNECT_MS, true);
        int b[2];
        ntcp_conn_info_t bi[2];
        for (int k = 0; k < 2; k++) {
            info_clear(&bi[k]);
            b[k] = ntcp_accept(bob, &bi[k], CONNECT_MS);
            assert_true(b[k] >= 0);
        }
        for (int k = 0; k < 2; k++) {
            pthread_join(c[k].th, NULL);
            assert_true(c[k].rc >= 0);
        }
        assert_string_not_equal(bi[0].peer, bi[1].peer);
        for (int k = 0; k < 2; k++) {
            int who = !strcmp(bi[k].peer, "alice") ? 0 : !strcmp(bi[k].peer, "carol") ? 1 : -1;
            assert_true(who >= 0);
            check_udp_pair(&c[who].info, c[who].rc, &bi[k], b[k], who ? "carol" : "alice", "bob",
                           (uint8_t)(60 + who));
        }
        for (int k = 0; k < 2; k++) {
            ntcp_udp_close(bob, b[k]);
            ntcp_udp_close(k ? carol : alice, c[k].rc);
        }
    }
    ntcp_free(alice);
    ntcp_free(carol);
    ntcp_free(bob);
}

/* One direct UDP path per pair of peers: alice and bob punch to each other
 * at the same moment, both listening. Exactly one connection is made (the
 * one alice asked for, her name sorting first, unless the other was done
 * before it began) and the other call fails at once with a reason, not
 * after its timeout; with no relay offered here. */
static void test_udp_mutual(void **state)
{
    fx *f = *state;
    ntcp_t *alice = mk_ctx(f, "alice", NULL, NULL);
    ntcp_t *bob = mk_ctx(f, "bob", NULL, NULL);
    assert_int_equal(ntcp_listen(alice, NULL, CONNECT_MS), 0);
    assert_int_equal(ntcp_listen(bob, NULL, CONNECT_MS), 0);
    for (int round = 0; round < 3; round++) {
        call c[2];
        call_start_udp(&c[0], alice, "bob", CONNECT_MS, true);
        call_start_udp(&c[1], bob, "alice", CONNECT_MS, true);
        for (int k = 0; k < 2; k++)
            pthread_join(c[k].th, NULL);
        int won = c[0].rc >= 0 ? 0 : 1;
        assert_true(c[won].rc >= 0);
        assert_true(c[!won].rc == NTCP_EUNREACHABLE);
        assert_non_null(strstr(c[!won].info.detail, "per pair of peers"));
        assert_true(c[!won].t1 - c[!won].t0 < CONNECT_MS / 2);
        ntcp_t *acc = won == 0 ? bob : alice;
        ntcp_conn_info_t ai;
        info_clear(&ai);
        int a = ntcp_accept(acc, &ai, CONNECT_MS);
        assert_true(a >= 0);
        check_udp_pair(&c[won].info, c[won].rc, &ai, a, won ? "bob" : "alice", won ? "alice" : "bob",
                       (uint8_t)(70 + round));
        ntcp_udp_close(won ? bob : alice, c[won].rc);
        ntcp_udp_close(acc, a);
        /* Nothing else came in at either end. */
        assert_int_equal(ntcp_accept(alice, NULL, 0), NTCP_ETIMEDOUT);
        assert_int_equal(ntcp_accept(bob, NULL, 0), NTCP_ETIMEDOUT);
    }
    ntcp_free(alice);
    ntcp_free(bob);
}

/* A second UDP punch to a peer while the first path is open would be the
 * same 4-tuple: it fails at once saying so (no relay here); once the first
 * is closed, a new one connects. */
static void test_udp_second_while_open(void **state)
{
    fx *f = *state;
    ntcp_t *alice = mk_ctx(f, "alice", NULL, NULL);
    ntcp_t *bob = mk_ctx(f, "bob", NULL, NULL);
    assert_int_equal(ntcp_listen(bob, NULL, CONNECT_MS), 0);
    ntcp_conn_info_t ci, bi;
    info_clear(&ci);
    int a1 = ntcp_udp_punch(alice, "bob", &ci, CONNECT_MS);
    assert_true(a1 >= 0);
    info_clear(&bi);
    int b1 = ntcp_accept(bob, &bi, CONNECT_MS);
    assert_true(b1 >= 0);
    info_clear(&ci);
    uint64_t t0 = now_ms();
    assert_int_equal(ntcp_udp_punch(alice, "bob", &ci, CONNECT_MS), NTCP_EUNREACHABLE);
    assert_true(now_ms() - t0 < CONNECT_MS / 2);
    assert_non_null(strstr(ci.detail, "is open"));
    /* The first path still works. */
    uint8_t d[3] = {9, 9, 9}, in[8];
    assert_int_equal(send(a1, d, 3, 0), 3);
    bool got = false;
    for (uint64_t end = now_ms() + 3000; !got && now_ms() < end;) {
        struct pollfd pf = {.fd = b1, .events = POLLIN};
        if (poll(&pf, 1, 100) > 0) {
            ssize_t n = recv(b1, in, sizeof in, MSG_DONTWAIT);
            got = n == 3 && in[0] == 9;
        }
    }
    assert_true(got);
    ntcp_udp_close(alice, a1);
    ntcp_udp_close(bob, b1);
    info_clear(&ci);
    int a2 = ntcp_udp_punch(alice, "bob", &ci, CONNECT_MS);
    assert_true(a2 >= 0);
    info_clear(&bi);
    int b2 = ntcp_accept(bob, &bi, CONNECT_MS);
    assert_true(b2 >= 0);
    check_udp_pair(&ci, a2, &bi, b2, "alice", "bob", 80);
    ntcp_udp_close(alice, a2);
    ntcp_udp_close(bob, b2);
    ntcp_free(alice);
    ntcp_free(bob);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: test_api PATH-TO-ntcp-brokerd [cmocka filter]\n");
        return 77;
    }
    brokerd_path = argv[1];
    signal(SIGPIPE, SIG_IGN);
    if (argc > 2)
        cmocka_set_test_filter(argv[2]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_blocking, setup, teardown),
        cmocka_unit_test_setup_teardown(test_small_info, setup, teardown),
        cmocka_unit_test_setup_teardown(test_async, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_peer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_policy_refuses, setup, teardown),
        cmocka_unit_test_setup_teardown(test_policy_after_listen, setup, teardown),
        cmocka_unit_test_setup_teardown(test_accept_timeouts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_config, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dead_broker, setup, teardown),
        cmocka_unit_test_setup_teardown(test_broker_list, setup, teardown),
        cmocka_unit_test_setup_teardown(test_name_taken, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_while_blocked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_broker_lost, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_while_registering, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_while_discovering, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_during_attempts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_closes_queued, setup, teardown),
        cmocka_unit_test_setup_teardown(test_parallel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_requesters, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_one_to_three, setup, teardown),
        cmocka_unit_test_setup_teardown(test_udp_one_to_three, setup, teardown),
        cmocka_unit_test_setup_teardown(test_udp_two_requesters, setup, teardown),
        cmocka_unit_test_setup_teardown(test_udp_mutual, setup, teardown),
        cmocka_unit_test_setup_teardown(test_udp_second_while_open, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
