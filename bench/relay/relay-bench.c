/*
 * relay-bench.c: figures for the relay of last resort (docs/relay.md), run
 * by run-relay-bench.sh against a coturn it starts:
 *   relay-bench time SERVER SECRET_FILE RUNS
 *       per run: a TCP allocation (with the 401 challenge), a permission, the
 *       peer's connect to the relayed address, ConnectionAttempt and
 *       ConnectionBind, then the key proof over the relayed stream; prints
 *       the median and p90 of the time to the verified socket, in ms and in
 *       round trips to the server (the median of plain TCP connects to it),
 *       from the start and from the moment the allocation was ready.
 *   relay-bench throughput SERVER SECRET_FILE MIB
 *       MIB mebibytes one way through a relayed TCP connection, then through
 *       a direct loopback connection; prints MiB/s of both.
 * A benchmark: it prints figures and asserts nothing about them.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "addr.h"
#include "identity.h"
#include "turn.h"
#include "turn_client.h"
#include "verify.h"

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

typedef struct job {
    const char *mode;
    size_t bytes;
    turn_client *c;
    struct sockaddr_storage relayed;
    struct sockaddr_in me;
    pthread_t th;
    bool started;
    EVP_PKEY *a, *b;
    uint8_t nonce[BROKER_NONCE_SIZE];
    double t0, t_alloc, t_done;
    int err;
    double mibps;
} job;

static int prove(job *j, int fd, bool relay_side)
{
    ntcp_verify_params p = {0};
    p.key = relay_side ? j->a : j->b;
    p.name = relay_side ? "alice" : "bob";
    p.peer_name = relay_side ? "bob" : "alice";
    ntcp_identity_public(relay_side ? j->b : j->a, p.peer_key);
    memcpy(p.nonce, j->nonce, sizeof p.nonce);
    p.role = relay_side ? BROKER_ROLE_TARGET : BROKER_ROLE_REQUESTER;
    p.timeout_ms = 10000;
    ntcp_verify_result r;
    return ntcp_verify_fd(fd, &p, &r);
}

/* Sends j->bytes to fd and returns (the receiver measures). */
static void send_all(int fd, size_t bytes)
{
    static uint8_t buf[65536];
    for (size_t off = 0; off < bytes;) {
        size_t n = bytes - off < sizeof buf ? bytes - off : sizeof buf;
        ssize_t w = send(fd, buf, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        off += (size_t)w;
    }
}

static double recv_all(int fd, size_t bytes)
{
    static uint8_t buf[65536];
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    double t0 = 0;
    size_t got = 0;
    while (got < bytes) {
        ssize_t r = recv(fd, buf, sizeof buf, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        if (!got)
            t0 = now_ms();
        got += (size_t)r;
    }
    double s = (now_ms() - t0) / 1e3;
    return s > 0 ? bytes / 1048576.0 / s : -1;
}

static void *peer(void *arg)
{
    job *j = arg;
    int fd = socket(j->relayed.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (connect(fd, (struct sockaddr *)&j->relayed, ntcp_sa_len(&j->relayed)) < 0) {
        close(fd);
        return NULL;
    }
    if (!strcmp(j->mode, "time")) {
        if (prove(j, fd, false) == 0) {
            /* wait for the relay side to close, so nothing is cut short */
            char c;
            while (recv(fd, &c, 1, 0) > 0) {
            }
            close(fd);
        }
    } else {
        send_all(fd, j->bytes);
        char c;
        while (recv(fd, &c, 1, 0) > 0) {
        }
        close(fd);
    }
    return NULL;
}

static void on_event(turn_client *c, const turn_event *ev, void *user)
{
    job *j = user;
    switch (ev->type) {
    case TURN_EV_ALLOCATED:
        j->relayed = ev->relayed;
        turn_client_permit(c, (struct sockaddr *)&j->me);
        return;
    case TURN_EV_PERMITTED:
        j->t_alloc = now_ms();
        j->started = !pthread_create(&j->th, NULL, peer, j);
        return;
    case TURN_EV_CONNECTION:
        if (!strcmp(j->mode, "time")) {
            j->err = prove(j, ev->fd, true);
            j->t_done = now_ms();
            if (j->err == 0)
                close(ev->fd);
        } else {
            j->mibps = recv_all(ev->fd, j->bytes);
            close(ev->fd);
        }
        turn_client_close(c);
        return;
    case TURN_EV_ERROR:
        fprintf(stderr, "relay-bench: %s\n", ev->why);
        j->err = ev->err;
        turn_client_close(c);
        return;
    default:
        return;
    }
}

static int run_once(job *j, const turn_client_config *cfg)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    j->t0 = now_ms();
    j->err = 0;
    j->t_done = j->t_alloc = 0;
    if (turn_client_start(&loop, cfg, on_event, j, &j->c) < 0)
        return -1;
    uv_run(&loop, UV_RUN_DEFAULT);
    if (j->started)
        pthread_join(j->th, NULL);
    j->started = false;
    uv_loop_close(&loop);
    return j->err;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double *v, int n, double p)
{
    qsort(v, (size_t)n, sizeof *v, cmp);
    int i = (int)(p * (n - 1) + 0.5);
    return v[i];
}

/* A round trip to the server: the median time of a plain TCP connect. */
static double server_rtt(const struct sockaddr_storage *srv)
{
    double v[9];
    int n = 0;
    for (int i = 0; i < 9; i++) {
        int fd = socket(srv->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        double t = now_ms();
        if (connect(fd, (const struct sockaddr *)srv, ntcp_sa_len(srv)) == 0)
            v[n++] = now_ms() - t;
        close(fd);
    }
    return n ? pct(v, n, 0.5) : 0;
}

/* Direct loopback: the same transfer without a relay. */
static double direct(size_t bytes)
{
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    socklen_t al = sizeof a;
    if (bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 1) < 0 ||
        getsockname(l, (struct sockaddr *)&a, &al) < 0)
        return -1;
    job j = {.mode = "throughput", .bytes = bytes};
    memcpy(&j.relayed, &a, sizeof a);
    pthread_create(&j.th, NULL, peer, &j);
    int fd = accept(l, NULL, NULL);
    double r = recv_all(fd, bytes);
    close(fd);
    pthread_join(j.th, NULL);
    close(l);
    return r;
}

int main(int argc, char **argv)
{
    if (argc != 5 || (strcmp(argv[1], "time") && strcmp(argv[1], "throughput"))) {
        fprintf(stderr, "usage: %s time|throughput SERVER SECRET_FILE RUNS|MIB\n", argv[0]);
        return 2;
    }
    char secret[256] = "";
    FILE *f = fopen(argv[3], "r");
    if (!f || !fgets(secret, sizeof secret, f))
        return 2;
    fclose(f);
    secret[strcspn(secret, "\r\n")] = 0;
    turn_client_config cfg = {.transport = TURN_TRANSPORT_TCP, .timeout_ms = 10000};
    if (ntcp_parse_addr(argv[2], -1, &cfg.server) < 0)
        return 2;
    char user[128], pass[64];
    if (turn_rest_credentials(secret, strlen(secret), "bench", (uint64_t)time(NULL) + 3600, user,
                              sizeof user, pass, sizeof pass) < 0)
        return 2;
    cfg.user = user;
    cfg.pass = pass;
    job j = {.mode = argv[1]};
    j.me.sin_family = AF_INET;
    inet_pton(AF_INET, "127.0.0.1", &j.me.sin_addr);
    long n = strtol(argv[4], NULL, 10);
    if (n < 1)
        return 2;

    if (!strcmp(j.mode, "throughput")) {
        j.bytes = (size_t)n * 1048576;
        if (run_once(&j, &cfg) != 0)
            return 1;
        double d = direct(j.bytes);
        printf("throughput %ld MiB: relayed through coturn %.0f MiB/s, direct %.0f MiB/s (%.0f%%)\n",
               n, j.mibps, d, d > 0 ? 100.0 * j.mibps / d : 0);
        return 0;
    }
    if (ntcp_identity_generate(&j.a) < 0 || ntcp_identity_generate(&j.b) < 0)
        return 2;
    double rtt = server_rtt(&cfg.server);
    double *total = calloc((size_t)n, sizeof *total), *after = calloc((size_t)n, sizeof *after);
    int ok = 0;
    for (long i = 0; i < n; i++) {
        memset(j.nonce, (int)i, sizeof j.nonce);
        if (run_once(&j, &cfg) != 0 || !j.t_done)
            continue;
        total[ok] = j.t_done - j.t0;
        after[ok] = j.t_done - j.t_alloc;
        ok++;
    }
    if (!ok) {
        printf("no run succeeded\n");
        return 1;
    }
    double tm = pct(total, ok, 0.5), t9 = pct(total, ok, 0.9);
    double am = pct(after, ok, 0.5), a9 = pct(after, ok, 0.9);
    printf("runs %d of %ld, RTT to the server %.1f ms\n", ok, n, rtt);
    /* Below half a millisecond (loopback) round trips mean nothing. */
    if (rtt >= 0.5) {
        printf("from start (allocate, permission, connect, bind, proof): median %.0f ms (%.1f RTT), "
               "p90 %.0f ms (%.1f RTT)\n", tm, tm / rtt, t9, t9 / rtt);
        printf("from allocation ready (connect, bind, proof): median %.0f ms (%.1f RTT), "
               "p90 %.0f ms (%.1f RTT)\n", am, am / rtt, a9, a9 / rtt);
    } else {
        printf("from start (allocate, permission, connect, bind, proof): median %.1f ms, p90 %.1f ms\n",
               tm, t9);
        printf("from allocation ready (connect, bind, proof): median %.1f ms, p90 %.1f ms\n", am, a9);
    }
    return 0;
}
