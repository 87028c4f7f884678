/*
 * broker-bench: how much the broker holds and how fast it coordinates, over
 * loopback. The broker runs in a child process (so its memory is its own);
 * this process plays every peer. Prints peers held, heap and RSS per peer,
 * registrations/s and connect coordinations/s. Bounded in count and time.
 */
#include <errno.h>
#include <getopt.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <uv.h>

#include "broker.h"
#include "broker_proto.h"
#include "identity.h"
#include "ntcp.h"

#define NKEYS 16
#define PHASE_LIMIT_MS 60000

/* ---- the broker side (child process) ---- */

static int stats_fd = -1;
static ntcp_broker *child_broker;

static long rss_kib(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/statm", (int)pid);
    FILE *f = fopen(path, "r");
    long pages = 0, resident = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

static void on_usr1(uv_signal_t *h, int sig)
{
    (void)h;
    (void)sig;
    ntcp_broker_stats st;
    ntcp_broker_get_stats(child_broker, &st);
    struct mallinfo2 mi = mallinfo2();
    char line[256];
    int n = snprintf(line, sizeof line, "%llu %llu %zu %ld %llu\n", (unsigned long long)st.peers,
                     (unsigned long long)st.sessions, mi.uordblks, rss_kib(getpid()),
                     (unsigned long long)st.connects_ok);
    if (write(stats_fd, line, (size_t)n) != n)
        _exit(3);
}

static void on_term(uv_signal_t *h, int sig)
{
    (void)sig;
    uv_stop(h->loop);
}

static int run_broker(int fd)
{
    uv_loop_t *loop = uv_default_loop();
    ntcp_broker_config cfg = {0};
    cfg.listen = "127.0.0.1:0";
    cfg.expiry_s = 600;
    cfg.source_rate = -1; /* every peer comes from a handful of loopback addresses */
    cfg.max_sessions = 2000000;
    if (ntcp_broker_start(loop, &cfg, &child_broker) < 0)
        return 1;
    stats_fd = fd;
    /* The handlers first: the parent signals as soon as it has the port. */
    uv_signal_t usr1, term;
    uv_signal_init(loop, &usr1);
    uv_signal_start(&usr1, on_usr1, SIGUSR1);
    uv_signal_init(loop, &term);
    uv_signal_start(&term, on_term, SIGTERM);
    struct sockaddr_storage ss;
    ntcp_broker_tcp_addr(child_broker, &ss);
    char line[32];
    int n = snprintf(line, sizeof line, "%d\n", ntohs(((struct sockaddr_in *)&ss)->sin_port));
    if (write(fd, line, (size_t)n) != n)
        return 1;
    uv_run(loop, UV_RUN_DEFAULT);
    return 0;
}

/* ---- the peers (this process) ---- */

enum { P_IDLE, P_CONNECTING, P_HELLO, P_SIGNED, P_REG, P_DEAD };

typedef struct client {
    uv_tcp_t tcp;
    uv_connect_t creq;
    int idx;
    uint8_t state;
    stun_framer fr;
    uint8_t buf[1024];
} client;

typedef struct bench {
    uv_loop_t *loop;
    client *c;
    int npeers, nconnects, window, nsources;
    int next_reg, registered, failed;
    int next_conn, conn_done, conn_err, gos;
    int inflight;
    struct sockaddr_in broker;
    EVP_PKEY *keys[NKEYS];
    uint8_t pubs[NKEYS][32];
    uint64_t t0;
    uv_timer_t deadline;
    bool timed_out;
} bench;

static bench B;

static void name_of(int i, char *out)
{
    sprintf(out, "peer%06d", i);
}

static void send_raw(client *c, const uint8_t *msg, size_t len)
{
    uv_buf_t b = uv_buf_init((char *)msg, (unsigned)len);
    if (uv_try_write((uv_stream_t *)&c->tcp, &b, 1) != (int)len) {
        c->state = P_DEAD; /* socket buffers are empty here: this does not happen */
        B.failed++;
    }
}

static void start_next_registration(void);
static void start_next_connect(void);

static void handle(client *c, const uint8_t *msg, size_t len)
{
    stun_msg m;
    if (stun_parse(&m, msg, len) < 0)
        return;
    uint8_t out[BROKER_MAX_MESSAGE];
    stun_builder sb;
    char name[BROKER_NAME_MAX + 1];
    if (c->state == P_HELLO && m.cls == STUN_ERROR) {
        uint8_t chal[32];
        const char *id;
        size_t idlen;
        if (broker_get_fixed(&m, BROKER_ATTR_CHALLENGE, chal, 32) < 0 ||
            stun_get_string(&m, BROKER_ATTR_BROKER_ID, &id, &idlen) < 0) {
            c->state = P_DEAD;
            B.failed++;
            return;
        }
        name_of(c->idx, name);
        int k = c->idx % NKEYS;
        uint8_t tr[BROKER_TRANSCRIPT_MAX], sig[64], tid[STUN_TID_SIZE];
        int tl = broker_transcript(tr, sizeof tr, id, idlen, chal, name, strlen(name), B.pubs[k]);
        ntcp_identity_sign(B.keys[k], tr, (size_t)tl, sig);
        stun_new_tid(tid);
        stun_build_init(&sb, out, sizeof out, BROKER_REGISTER, STUN_REQUEST, tid, false);
        stun_build_attr(&sb, BROKER_ATTR_NAME, name, strlen(name));
        stun_build_attr(&sb, BROKER_ATTR_PUBLIC_KEY, B.pubs[k], 32);
        stun_build_attr(&sb, BROKER_ATTR_CHALLENGE, chal, 32);
        stun_build_attr(&sb, BROKER_ATTR_SIGNATURE, sig, 64);
        send_raw(c, out, (size_t)stun_build_finish(&sb, NULL));
        c->state = P_SIGNED;
        return;
    }
    if (c->state == P_SIGNED) {
        B.inflight--;
        if (m.cls == STUN_SUCCESS) {
            c->state = P_REG;
            B.registered++;
        } else {
            c->state = P_DEAD;
            B.failed++;
        }
        start_next_registration();
        return;
    }
    if (c->state != P_REG)
        return;
    if (m.method == BROKER_OFFER && m.cls == STUN_REQUEST) {
        stun_build_init(&sb, out, sizeof out, BROKER_OFFER, STUN_SUCCESS, m.tid, false);
        send_raw(c, out, (size_t)stun_build_finish(&sb, NULL));
    } else if (m.method == BROKER_GO) {
        B.gos++;
    } else if (m.method == BROKER_CONNECT) {
        B.inflight--;
        if (m.cls == STUN_SUCCESS)
            B.conn_done++;
        else
            B.conn_err++;
        start_next_connect();
    }
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)hint;
    client *c = h->data;
    uint8_t *p;
    size_t avail;
    stun_framer_space(&c->fr, &p, &avail);
    buf->base = (char *)p;
    buf->len = avail;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    client *c = s->data;
    (void)buf;
    if (n < 0) {
        if (c->state != P_DEAD) {
            c->state = P_DEAD;
            B.failed++;
        }
        uv_read_stop(s);
        return;
    }
    stun_framer_commit(&c->fr, (size_t)n);
    const uint8_t *msg;
    size_t len;
    while (stun_framer_next(&c->fr, &msg, &len) == 1)
        handle(c, msg, len);
}

static void on_connected(uv_connect_t *req, int status)
{
    client *c = req->data;
    if (status < 0) {
        c->state = P_DEAD;
        B.failed++;
        B.inflight--;
        start_next_registration();
        return;
    }
    stun_framer_init(&c->fr, c->buf, sizeof c->buf);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    uint8_t out[256], tid[STUN_TID_SIZE];
    char name[BROKER_NAME_MAX + 1];
    stun_builder sb;
    name_of(c->idx, name);
    stun_new_tid(tid);
    stun_build_init(&sb, out, sizeof out, BROKER_REGISTER, STUN_REQUEST, tid, false);
    stun_build_attr(&sb, BROKER_ATTR_NAME, name, strlen(name));
    stun_build_attr(&sb, BROKER_ATTR_PUBLIC_KEY, B.pubs[c->idx % NKEYS], 32);
    c->state = P_HELLO;
    send_raw(c, out, (size_t)stun_build_finish(&sb, NULL));
}

static void start_next_registration(void)
{
    while (B.inflight < B.window && B.next_reg < B.npeers && !B.timed_out) {
        client *c = &B.c[B.next_reg];
        c->idx = B.next_reg++;
        uv_tcp_init(B.loop, &c->tcp);
        c->tcp.data = c;
        c->creq.data = c;
        /* Several loopback sources: one has only ~28k ephemeral ports. The
         * port is chosen at connect(), not bind() (IP_BIND_ADDRESS_NO_PORT):
         * a port-0 bind scans the bound ports and gets slow with thousands. */
        struct sockaddr_in src = {0};
        src.sin_family = AF_INET;
        src.sin_addr.s_addr = htonl(0x7F000002u + (uint32_t)(c->idx % B.nsources));
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int one = 1;
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (fd < 0 || bind(fd, (struct sockaddr *)&src, sizeof src) != 0 ||
            uv_tcp_open(&c->tcp, fd) != 0) {
            if (fd >= 0)
                close(fd);
            c->state = P_DEAD;
            B.failed++;
            continue;
        }
        c->state = P_CONNECTING;
        B.inflight++;
        if (uv_tcp_connect(&c->creq, &c->tcp, (struct sockaddr *)&B.broker, on_connected) < 0) {
            c->state = P_DEAD;
            B.failed++;
            B.inflight--;
        }
    }
    if (B.inflight == 0)
        uv_stop(B.loop);
}

static void start_next_connect(void)
{
    while (B.inflight < B.window && B.next_conn < B.nconnects && !B.timed_out) {
        int k = B.next_conn++;
        int req = k % B.npeers, tgt = (int)(((long)k * 7919 + 1) % B.npeers);
        if (tgt == req)
            tgt = (tgt + 1) % B.npeers;
        client *c = &B.c[req];
        if (c->state != P_REG || B.c[tgt].state != P_REG) {
            B.conn_err++;
            continue;
        }
        uint8_t out[128], tid[STUN_TID_SIZE];
        char name[BROKER_NAME_MAX + 1];
        stun_builder sb;
        name_of(tgt, name);
        stun_new_tid(tid);
        stun_build_init(&sb, out, sizeof out, BROKER_CONNECT, STUN_REQUEST, tid, false);
        stun_build_attr(&sb, BROKER_ATTR_NAME, name, strlen(name));
        B.inflight++;
        send_raw(c, out, (size_t)stun_build_finish(&sb, NULL));
    }
    if (B.inflight == 0)
        uv_stop(B.loop);
}

static void on_deadline(uv_timer_t *t)
{
    (void)t;
    B.timed_out = true;
    uv_stop(B.loop);
}

typedef struct snap {
    unsigned long long peers, sessions, connects;
    size_t heap;
    long rss;
} snap;

static int query(pid_t pid, FILE *in, snap *s)
{
    kill(pid, SIGUSR1);
    return fscanf(in, "%llu %llu %zu %ld %llu", &s->peers, &s->sessions, &s->heap, &s->rss,
                  &s->connects) == 5 ? 0 : -1;
}

static double secs_since(uint64_t t0)
{
    return (double)(uv_hrtime() - t0) / 1e9;
}

int main(int argc, char **argv)
{
    B.npeers = 50000;
    B.nconnects = 20000;
    B.window = 256;
    B.nsources = 4;
    int c;
    while ((c = getopt(argc, argv, "p:c:w:s:h")) != -1) {
        switch (c) {
        case 'p': B.npeers = atoi(optarg); break;
        case 'c': B.nconnects = atoi(optarg); break;
        case 'w': B.window = atoi(optarg); break;
        case 's': B.nsources = atoi(optarg); break;
        default:
            fprintf(stderr, "usage: broker-bench [-p peers 50000] [-c connects 20000] "
                            "[-w window 256] [-s loopback sources 4]\n");
            return 2;
        }
    }
    if (B.npeers < 2 || B.window < 1 || B.nsources < 1 || B.nsources > 250)
        return 2;
    /* Each peer is one descriptor here and one in the broker. */
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rlim_t want = (rlim_t)B.npeers + 1000;
    if (rl.rlim_cur < want) {
        struct rlimit nrl = {want, rl.rlim_max > want ? rl.rlim_max : want};
        if (setrlimit(RLIMIT_NOFILE, &nrl) != 0) {
            nrl.rlim_cur = nrl.rlim_max = rl.rlim_max;
            setrlimit(RLIMIT_NOFILE, &nrl);
            int fit = (int)rl.rlim_max - 1000;
            fprintf(stderr, "broker-bench: descriptor limit %llu: %d peers instead of %d\n",
                    (unsigned long long)rl.rlim_max, fit, B.npeers);
            B.npeers = fit;
        }
    }
    signal(SIGPIPE, SIG_IGN);

    int pfd[2];
    if (pipe(pfd) != 0)
        return 1;
    pid_t pid = fork();
    if (pid == 0) {
        close(pfd[0]);
        _exit(run_broker(pfd[1]));
    }
    close(pfd[1]);
    FILE *in = fdopen(pfd[0], "r");
    int port;
    if (fscanf(in, "%d", &port) != 1) {
        fprintf(stderr, "broker-bench: the broker did not start\n");
        return 1;
    }
    snap s0, s1, s2;
    if (query(pid, in, &s0) < 0) {
        fprintf(stderr, "broker-bench: no stats from the broker\n");
        return 1;
    }

    B.loop = uv_default_loop();
    B.c = calloc((size_t)B.npeers, sizeof *B.c);
    uv_ip4_addr("127.0.0.1", port, &B.broker);
    for (int i = 0; i < NKEYS; i++) {
        ntcp_identity_generate(&B.keys[i]);
        ntcp_identity_public(B.keys[i], B.pubs[i]);
    }
    uv_timer_init(B.loop, &B.deadline);

    /* Phase 1: register every peer, window requests in flight. */
    uv_timer_start(&B.deadline, on_deadline, PHASE_LIMIT_MS, 0);
    uint64_t t0 = uv_hrtime();
    start_next_registration();
    uv_run(B.loop, UV_RUN_DEFAULT);
    double treg = secs_since(t0);
    uv_timer_stop(&B.deadline);
    if (query(pid, in, &s1) < 0) {
        fprintf(stderr, "broker-bench: no stats from the broker\n");
        return 1;
    }

    /* Phase 2: connect coordinations between registered peers. */
    uv_timer_start(&B.deadline, on_deadline, PHASE_LIMIT_MS, 0);
    B.inflight = 0;
    t0 = uv_hrtime();
    start_next_connect();
    uv_run(B.loop, UV_RUN_DEFAULT);
    double tconn = secs_since(t0);
    /* Let the last GO indications arrive. */
    uint64_t end = uv_hrtime() + 500000000ull;
    while (B.gos < B.conn_done && uv_hrtime() < end)
        uv_run(B.loop, UV_RUN_NOWAIT);
    if (query(pid, in, &s2) < 0) {
        fprintf(stderr, "broker-bench: no stats from the broker\n");
        return 1;
    }
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);

    double peers = (double)s1.peers;
    printf("broker-bench: %d peers over loopback from %d source addresses, window %d%s\n",
           B.npeers, B.nsources, B.window, B.timed_out ? " (a phase hit its time limit)" : "");
    printf("registered peers held:     %llu (failed %d)\n", s1.peers, B.failed);
    printf("broker heap before/after:  %zu / %zu KiB\n", s0.heap / 1024, s1.heap / 1024);
    printf("broker RSS before/after:   %ld / %ld KiB\n", s0.rss, s1.rss);
    if (peers > 0) {
        printf("heap per peer:             %.0f bytes\n", (double)(s1.heap - s0.heap) / peers);
        printf("RSS per peer:              %.0f bytes\n", (double)(s1.rss - s0.rss) * 1024.0 / peers);
    }
    printf("registrations/s:           %.0f (%d in %.2f s, challenge + Ed25519 signature each)\n",
           B.registered / treg, B.registered, treg);
    printf("connect coordinations/s:   %.0f (%d in %.2f s; %d GO indications; %d errors)\n",
           B.conn_done / tconn, B.conn_done, tconn, B.gos, B.conn_err);
    return 0;
}
