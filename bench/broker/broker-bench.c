/*
 * broker-bench: how much the broker holds and how fast it coordinates, over
 * loopback, alone or as a cluster of nodes on one redis-server (-n). Brokers
 * and peer generators run in child processes (so each one's memory and
 * descriptors are its own); this process directs the phases and prints peers
 * held, heap and RSS per peer, Redis memory per peer, full and ticket
 * registrations/s against the Ed25519 verifications/s of one core measured in
 * the same run, and connect coordinations/s (across nodes in a cluster).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <openssl/evp.h>
#include <uv.h>

#include "broker.h"
#include "broker_proto.h"
#include "identity.h"
#include "ntcp.h"

#define NKEYS 16
#define PHASE_LIMIT_MS 120000
#define MAX_NODES 8

/* ---- a broker (child process) ---- */

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
    /* CPU time of the whole process, its thread pool (signature checks)
     * included. */
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    unsigned long long cpu_us = (unsigned long long)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000ull +
                                (unsigned long long)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
    char line[256];
    int n = snprintf(line, sizeof line, "%llu %llu %zu %ld %llu %llu %llu\n",
                     (unsigned long long)st.peers, (unsigned long long)st.sessions, mi.uordblks,
                     rss_kib(getpid()), (unsigned long long)st.connects_ok,
                     (unsigned long long)st.cluster_up, cpu_us);
    if (write(stats_fd, line, (size_t)n) != n)
        _exit(3);
}

static void on_term(uv_signal_t *h, int sig)
{
    (void)sig;
    uv_stop(h->loop);
}

static int run_broker(int fd, const char *cluster)
{
    uv_loop_t *loop = uv_default_loop();
    ntcp_broker_config cfg = {0};
    cfg.listen = "127.0.0.1:0";
    cfg.expiry_s = 600;
    cfg.source_rate = -1; /* every peer comes from a handful of loopback addresses */
    cfg.peer_rate = -1;
    cfg.max_sessions = 2000000;
    cfg.cluster = cluster;
    cfg.broker_id = "bench";
    if (ntcp_broker_start(loop, &cfg, &child_broker) < 0)
        return 1;
    stats_fd = fd;
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

/* ---- the peers of one node (child process) ---- */

enum { P_IDLE, P_CONNECTING, P_HELLO, P_SIGNED, P_REG, P_DEAD, P_CLOSING };

typedef struct client {
    uv_tcp_t tcp;
    uv_connect_t creq;
    int idx; /* global */
    uint8_t state;
    bool resumed;
    uint8_t ticket_len;
    uint8_t ticket[BROKER_TICKET_MAX];
    uint8_t rkey[32];
    stun_framer fr;
    uint8_t buf[1024];
} client;

typedef struct gen {
    uv_loop_t *loop;
    client *c;
    int n, base, total, nodes, node, window, nsources, nconnects;
    int next, done, failed, inflight, closing;
    int conn_done, conn_err, gos;
    bool use_tickets; /* this phase re-registers with them */
    char phase;
    uint64_t t0;
    struct sockaddr_in broker;
    EVP_PKEY *keys[NKEYS];
    uint8_t pubs[NKEYS][32];
    uv_poll_t ctl;
    int ctl_fd, rep_fd;
    uv_timer_t deadline;
} gen;

static gen G;

static void name_of(int i, char *out)
{
    sprintf(out, "peer%06d", i);
}

static void send_raw(client *c, const uint8_t *msg, size_t len)
{
    uv_buf_t b = uv_buf_init((char *)msg, (unsigned)len);
    if (uv_try_write((uv_stream_t *)&c->tcp, &b, 1) != (int)len) {
        c->state = P_DEAD;
        G.failed++;
    }
}

static void report(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void report(const char *fmt, ...)
{
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (write(G.rep_fd, line, (size_t)n) != n)
        _exit(3);
}

static void phase_done(void)
{
    uv_timer_stop(&G.deadline);
    uint64_t t1 = uv_hrtime();
    if (G.phase == 'r' || G.phase == 't')
        report("%c %d %d %llu %llu\n", G.phase, G.done, G.failed, (unsigned long long)G.t0,
               (unsigned long long)t1);
    else if (G.phase == 'c')
        report("c %d %d %llu %llu\n", G.conn_done, G.conn_err, (unsigned long long)G.t0,
               (unsigned long long)t1);
    G.phase = 0;
}

static void start_next_registration(void);
static void start_next_connect(void);

static void send_register(client *c, const uint8_t chal[32], const char *id, size_t idlen)
{
    uint8_t out[BROKER_MAX_MESSAGE], tid[STUN_TID_SIZE];
    char name[BROKER_NAME_MAX + 1];
    stun_builder sb;
    name_of(c->idx, name);
    int k = c->idx % NKEYS;
    stun_new_tid(tid);
    stun_build_init(&sb, out, sizeof out, BROKER_REGISTER, STUN_REQUEST, tid, false);
    stun_build_attr(&sb, BROKER_ATTR_NAME, name, strlen(name));
    stun_build_attr(&sb, BROKER_ATTR_PUBLIC_KEY, G.pubs[k], 32);
    stun_build_attr(&sb, BROKER_ATTR_CHALLENGE, chal, 32);
    if (G.use_tickets && c->ticket_len) {
        uint8_t proof[32];
        broker_resume_proof(proof, c->rkey, id, idlen, chal, name, strlen(name), G.pubs[k]);
        stun_build_attr(&sb, BROKER_ATTR_TICKET, c->ticket, c->ticket_len);
        stun_build_attr(&sb, BROKER_ATTR_PROOF, proof, 32);
        c->resumed = true;
    } else {
        uint8_t tr[BROKER_TRANSCRIPT_MAX], sig[64];
        int tl = broker_transcript(tr, sizeof tr, id, idlen, chal, name, strlen(name), G.pubs[k]);
        ntcp_identity_sign(G.keys[k], tr, (size_t)tl, sig);
        stun_build_attr(&sb, BROKER_ATTR_SIGNATURE, sig, 64);
        c->resumed = false;
    }
    send_raw(c, out, (size_t)stun_build_finish(&sb, NULL));
    c->state = P_SIGNED;
}

static void handle(client *c, const uint8_t *msg, size_t len)
{
    stun_msg m;
    uint16_t unknown[8];
    size_t nunknown;
    if (stun_parse(&m, msg, len) < 0 || broker_validate(&m, unknown, 8, &nunknown) < 0)
        return;
    uint8_t out[BROKER_MAX_MESSAGE];
    stun_builder sb;
    if ((c->state == P_HELLO || (c->state == P_SIGNED && c->resumed)) && m.cls == STUN_ERROR) {
        /* The challenge (or, after a refused ticket, a new one). */
        uint8_t chal[32];
        const char *id;
        size_t idlen;
        if (broker_get_fixed(&m, BROKER_ATTR_CHALLENGE, chal, 32) < 0 ||
            stun_get_string(&m, BROKER_ATTR_BROKER_ID, &id, &idlen) < 0) {
            c->state = P_DEAD;
            G.failed++;
            G.inflight--;
            start_next_registration();
            return;
        }
        if (c->state == P_SIGNED)
            c->ticket_len = 0;
        send_register(c, chal, id, idlen);
        return;
    }
    if (c->state == P_SIGNED) {
        G.inflight--;
        const stun_attr *tk = stun_find(&m, BROKER_ATTR_TICKET);
        if (m.cls == STUN_SUCCESS && (!G.use_tickets || c->resumed)) {
            c->state = P_REG;
            G.done++;
            if (tk && broker_get_fixed(&m, BROKER_ATTR_RESUME_KEY, c->rkey, 32) == 0) {
                memcpy(c->ticket, stun_attr_value(&m, tk), tk->len);
                c->ticket_len = (uint8_t)tk->len;
            }
        } else {
            c->state = m.cls == STUN_SUCCESS ? P_REG : P_DEAD;
            G.failed++;
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
        G.gos++;
    } else if (m.method == BROKER_CONNECT) {
        G.inflight--;
        if (m.cls == STUN_SUCCESS)
            G.conn_done++;
        else
            G.conn_err++;
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
        if (c->state != P_DEAD && c->state != P_CLOSING) {
            if (c->state == P_SIGNED || c->state == P_HELLO) {
                G.inflight--;
                G.failed++;
                c->state = P_DEAD;
                start_next_registration();
            } else {
                c->state = P_DEAD;
            }
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
        G.failed++;
        G.inflight--;
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
    stun_build_attr(&sb, BROKER_ATTR_PUBLIC_KEY, G.pubs[c->idx % NKEYS], 32);
    c->state = P_HELLO;
    send_raw(c, out, (size_t)stun_build_finish(&sb, NULL));
}

static void start_next_registration(void)
{
    while (G.inflight < G.window && G.next < G.n && G.phase) {
        client *c = &G.c[G.next++];
        uv_tcp_init(G.loop, &c->tcp);
        c->tcp.data = c;
        c->creq.data = c;
        /* Several loopback sources: one has only ~28k ephemeral ports. The
         * port is chosen at connect(), not bind() (IP_BIND_ADDRESS_NO_PORT):
         * a port-0 bind scans the bound ports and gets slow with thousands. */
        struct sockaddr_in src = {0};
        src.sin_family = AF_INET;
        src.sin_addr.s_addr = htonl(0x7F000002u + (uint32_t)(c->idx % G.nsources));
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int one = 1;
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (fd < 0 || bind(fd, (struct sockaddr *)&src, sizeof src) != 0 ||
            uv_tcp_open(&c->tcp, fd) != 0) {
            if (fd >= 0)
                close(fd);
            c->state = P_DEAD;
            G.failed++;
            continue;
        }
        c->state = P_CONNECTING;
        G.inflight++;
        if (uv_tcp_connect(&c->creq, &c->tcp, (struct sockaddr *)&G.broker, on_connected) < 0) {
            c->state = P_DEAD;
            G.failed++;
            G.inflight--;
        }
    }
    if (G.inflight == 0 && G.phase && (G.next == G.n))
        phase_done();
}

/* A requester here asks for a peer of the next node (in a cluster: every
 * connect crosses nodes), or of this one when it is alone. */
static void start_next_connect(void)
{
    while (G.inflight < G.window && G.next < G.nconnects && G.phase) {
        int k = G.next++;
        client *c = &G.c[k % G.n];
        int other = G.nodes > 1 ? (G.node + 1) % G.nodes : G.node;
        int tgt = other * G.n + (int)(((long)k * 7919 + 1) % G.n);
        if (tgt == c->idx)
            tgt = G.base + (tgt - G.base + 1) % G.n;
        if (c->state != P_REG) {
            G.conn_err++;
            continue;
        }
        uint8_t out[128], tid[STUN_TID_SIZE];
        char name[BROKER_NAME_MAX + 1];
        stun_builder sb;
        name_of(tgt, name);
        stun_new_tid(tid);
        stun_build_init(&sb, out, sizeof out, BROKER_CONNECT, STUN_REQUEST, tid, false);
        stun_build_attr(&sb, BROKER_ATTR_NAME, name, strlen(name));
        G.inflight++;
        send_raw(c, out, (size_t)stun_build_finish(&sb, NULL));
    }
    if (G.inflight == 0 && G.phase)
        phase_done();
}

static void on_closed(uv_handle_t *h)
{
    client *c = h->data;
    c->state = P_IDLE;
    if (--G.closing == 0) {
        /* Every session gone: now again, with the tickets. */
        G.t0 = uv_hrtime();
        G.next = G.done = G.failed = G.inflight = 0;
        start_next_registration();
    }
}

static void on_deadline(uv_timer_t *t)
{
    (void)t;
    if (G.phase) {
        fprintf(stderr, "broker-bench: phase %c hit its time limit\n", G.phase);
        G.inflight = 0;
        phase_done();
    }
}

static void on_ctl(uv_poll_t *h, int status, int events)
{
    (void)h;
    (void)events;
    char cmd;
    if (status < 0 || read(G.ctl_fd, &cmd, 1) != 1 || cmd == 'q') {
        uv_stop(G.loop);
        return;
    }
    G.phase = cmd;
    G.t0 = uv_hrtime();
    G.next = G.done = G.failed = G.inflight = 0;
    uv_timer_start(&G.deadline, on_deadline, PHASE_LIMIT_MS, 0);
    if (cmd == 'r') {
        G.use_tickets = false;
        start_next_registration();
    } else if (cmd == 't') {
        /* Every peer leaves and comes back with its ticket. */
        G.use_tickets = true;
        G.closing = 0;
        for (int i = 0; i < G.n; i++)
            if (!uv_is_closing((uv_handle_t *)&G.c[i].tcp) && G.c[i].state != P_IDLE) {
                G.c[i].state = P_CLOSING;
                G.closing++;
                uv_close((uv_handle_t *)&G.c[i].tcp, on_closed);
            }
        if (G.closing == 0)
            start_next_registration();
    } else if (cmd == 'c') {
        G.conn_done = G.conn_err = G.gos = 0;
        start_next_connect();
    }
}

static int run_peers(int node, int nodes, int n, int port, int ctl_fd, int rep_fd, int window,
                     int nsources, int nconnects)
{
    G.loop = uv_default_loop();
    G.node = node;
    G.nodes = nodes;
    G.n = n;
    G.base = node * n;
    G.window = window;
    G.nsources = nsources;
    G.nconnects = nconnects;
    G.ctl_fd = ctl_fd;
    G.rep_fd = rep_fd;
    G.c = calloc((size_t)n, sizeof *G.c);
    for (int i = 0; i < n; i++)
        G.c[i].idx = G.base + i;
    uv_ip4_addr("127.0.0.1", port, &G.broker);
    for (int i = 0; i < NKEYS; i++) {
        ntcp_identity_generate(&G.keys[i]);
        ntcp_identity_public(G.keys[i], G.pubs[i]);
    }
    uv_timer_init(G.loop, &G.deadline);
    uv_poll_init(G.loop, &G.ctl, ctl_fd);
    uv_poll_start(&G.ctl, UV_READABLE, on_ctl);
    report("ready\n");
    uv_run(G.loop, UV_RUN_DEFAULT);
    return 0;
}

/* ---- the director (this process) ---- */

typedef struct snap {
    unsigned long long peers, sessions, connects, up, cpu_us;
    size_t heap;
    long rss;
} snap;

typedef struct node {
    pid_t pid;
    FILE *in;
    int port;
    snap s0, s1, s2;
} node;

typedef struct peers {
    pid_t pid;
    FILE *in;
    int ctl;
} peers;

static int query(node *b, snap *s)
{
    kill(b->pid, SIGUSR1);
    return fscanf(b->in, "%llu %llu %zu %ld %llu %llu %llu", &s->peers, &s->sessions, &s->heap,
                  &s->rss, &s->connects, &s->up, &s->cpu_us) == 7 ? 0 : -1;
}

/* Ed25519 verifications per second on one core, of the same key and
 * message size as a registration's transcript. */
static double verifications_per_s(void)
{
    EVP_PKEY *k;
    ntcp_identity_generate(&k);
    uint8_t pub[32], msg[120], sig[64];
    memset(msg, 'x', sizeof msg);
    ntcp_identity_public(k, pub);
    ntcp_identity_sign(k, msg, sizeof msg, sig);
    uint64_t t0 = uv_hrtime(), n = 0;
    while (uv_hrtime() - t0 < 1000000000ull) {
        for (int i = 0; i < 100; i++)
            if (ntcp_identity_verify(pub, msg, sizeof msg, sig) == 0)
                n++;
    }
    EVP_PKEY_free(k);
    return (double)n / ((double)(uv_hrtime() - t0) / 1e9);
}

static long redis_memory(int port)
{
    redisContext *r = redisConnect("127.0.0.1", port);
    long used = -1;
    if (r && !r->err) {
        redisReply *rep = redisCommand(r, "INFO memory");
        const char *at = rep && rep->type == REDIS_REPLY_STRING ? strstr(rep->str, "used_memory:") : NULL;
        if (at)
            used = atol(at + strlen("used_memory:"));
        freeReplyObject(rep);
    }
    if (r)
        redisFree(r);
    return used;
}

static int free_port(void)
{
    int t = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (bind(t, (struct sockaddr *)&a, sizeof a) < 0 || getsockname(t, (struct sockaddr *)&a, &al) < 0)
        return -1;
    close(t);
    return ntohs(a.sin_port);
}

/* Waits for one line from every generator; sums counts, spans the times. */
static void collect(peers *pp, int np, char want, long *ok, long *bad, double *secs)
{
    unsigned long long t0 = ~0ull, t1 = 0;
    *ok = *bad = 0;
    for (int i = 0; i < np; i++) {
        char ph;
        int a, b;
        unsigned long long s, e;
        if (fscanf(pp[i].in, " %c %d %d %llu %llu", &ph, &a, &b, &s, &e) != 5 || ph != want) {
            fprintf(stderr, "broker-bench: generator %d did not report\n", i);
            exit(1);
        }
        *ok += a;
        *bad += b;
        t0 = s < t0 ? s : t0;
        t1 = e > t1 ? e : t1;
    }
    *secs = (double)(t1 - t0) / 1e9;
}

static void command_all(peers *pp, int np, char cmd)
{
    for (int i = 0; i < np; i++)
        if (write(pp[i].ctl, &cmd, 1) != 1)
            exit(1);
}

int main(int argc, char **argv)
{
    int npeers = 50000, nconnects = 20000, window = 256, nsources = 4, nodes = 0;
    const char *redis_path = "/usr/bin/redis-server";
    int c;
    while ((c = getopt(argc, argv, "p:c:w:s:n:R:h")) != -1) {
        switch (c) {
        case 'p': npeers = atoi(optarg); break;
        case 'c': nconnects = atoi(optarg); break;
        case 'w': window = atoi(optarg); break;
        case 's': nsources = atoi(optarg); break;
        case 'n': nodes = atoi(optarg); break;
        case 'R': redis_path = optarg; break;
        default:
            fprintf(stderr, "usage: broker-bench [-p peers 50000] [-c connects 20000] "
                            "[-w window 256] [-s loopback sources 4]\n"
                            "                    [-n cluster nodes (0: one broker, no Redis)] "
                            "[-R redis-server]\n");
            return 2;
        }
    }
    if (npeers < 2 || window < 1 || nsources < 1 || nsources > 250 || nodes < 0 || nodes > MAX_NODES)
        return 2;
    int ngen = nodes ? nodes : 1;
    int per = npeers / ngen;
    /* Each peer is one descriptor in its generator and one in its broker. */
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if ((rlim_t)per + 1000 > rl.rlim_cur) {
        int fit = (int)rl.rlim_cur - 1000;
        fprintf(stderr, "broker-bench: descriptor limit %llu: %d peers per node instead of %d\n",
                (unsigned long long)rl.rlim_cur, fit, per);
        per = fit;
    }
    npeers = per * ngen;
    signal(SIGPIPE, SIG_IGN);

    double vps = verifications_per_s();

    pid_t redis = 0;
    int redis_port = 0;
    char url[64] = "";
    long redis0 = 0;
    if (nodes) {
        redis_port = free_port();
        char port[16];
        snprintf(port, sizeof port, "%d", redis_port);
        redis = fork();
        if (redis == 0) {
            int null = open("/dev/null", O_WRONLY);
            dup2(null, 1);
            execl(redis_path, redis_path, "--port", port, "--bind", "127.0.0.1", "--save", "",
                  "--appendonly", "no", (char *)NULL);
            _exit(127);
        }
        for (int i = 0; i < 500 && (redis0 = redis_memory(redis_port)) < 0; i++)
            poll(NULL, 0, 10);
        if (redis0 < 0) {
            fprintf(stderr, "broker-bench: redis-server (%s) did not start\n", redis_path);
            return 1;
        }
        snprintf(url, sizeof url, "redis://127.0.0.1:%d", redis_port);
    }

    node nd[MAX_NODES];
    for (int i = 0; i < ngen; i++) {
        int pfd[2];
        if (pipe(pfd) != 0)
            return 1;
        nd[i].pid = fork();
        if (nd[i].pid == 0) {
            close(pfd[0]);
            _exit(run_broker(pfd[1], nodes ? url : NULL));
        }
        close(pfd[1]);
        nd[i].in = fdopen(pfd[0], "r");
        if (fscanf(nd[i].in, "%d", &nd[i].port) != 1) {
            fprintf(stderr, "broker-bench: a broker did not start\n");
            return 1;
        }
    }
    /* In a cluster, every node reachable before the peers come. */
    for (int i = 0; i < ngen; i++) {
        for (int k = 0; k < 500; k++) {
            if (query(&nd[i], &nd[i].s0) < 0)
                return 1;
            if (!nodes || nd[i].s0.up)
                break;
            poll(NULL, 0, 10);
        }
    }

    peers pp[MAX_NODES];
    for (int i = 0; i < ngen; i++) {
        int ctl[2], rep[2];
        if (pipe(ctl) != 0 || pipe(rep) != 0)
            return 1;
        pp[i].pid = fork();
        if (pp[i].pid == 0) {
            close(ctl[1]);
            close(rep[0]);
            _exit(run_peers(i, ngen, per, nd[i].port, ctl[0], rep[1], window, nsources,
                            nconnects / ngen));
        }
        close(ctl[0]);
        close(rep[1]);
        pp[i].ctl = ctl[1];
        pp[i].in = fdopen(rep[0], "r");
        char line[16];
        if (fscanf(pp[i].in, "%15s", line) != 1 || strcmp(line, "ready") != 0)
            return 1;
    }

    long ok, bad, rok, rbad, tok, tbad, cok, cbad;
    double treg, ttk, tconn;
    command_all(pp, ngen, 'r');
    collect(pp, ngen, 'r', &rok, &rbad, &treg);
    for (int i = 0; i < ngen; i++)
        query(&nd[i], &nd[i].s1);
    long redis1 = nodes ? redis_memory(redis_port) : 0;
    command_all(pp, ngen, 't');
    collect(pp, ngen, 't', &tok, &tbad, &ttk);
    for (int i = 0; i < ngen; i++)
        query(&nd[i], &nd[i].s2);
    command_all(pp, ngen, 'c');
    collect(pp, ngen, 'c', &cok, &cbad, &tconn);
    (void)ok;
    (void)bad;
    command_all(pp, ngen, 'q');
    for (int i = 0; i < ngen; i++)
        waitpid(pp[i].pid, NULL, 0);
    for (int i = 0; i < ngen; i++) {
        kill(nd[i].pid, SIGTERM);
        waitpid(nd[i].pid, NULL, 0);
    }
    if (redis) {
        kill(redis, SIGTERM);
        waitpid(redis, NULL, 0);
    }

    unsigned long long held = 0;
    double heap = 0, rss = 0, cpu_full = 0, cpu_ticket = 0;
    for (int i = 0; i < ngen; i++) {
        cpu_full += (double)(nd[i].s1.cpu_us - nd[i].s0.cpu_us);
        cpu_ticket += (double)(nd[i].s2.cpu_us - nd[i].s1.cpu_us);
        held += nd[i].s1.peers;
        heap += (double)nd[i].s1.heap - (double)nd[i].s0.heap;
        rss += ((double)nd[i].s1.rss - (double)nd[i].s0.rss) * 1024.0;
    }
    printf("broker-bench: %d peers over loopback from %d source addresses, window %d, %s\n",
           npeers, nsources, window,
           nodes ? "a cluster" : "one broker");
    if (nodes)
        printf("nodes:                     %d, one redis-server, %d peers each\n", nodes, per);
    printf("registered peers held:     %llu (failed %ld)\n", held, rbad);
    for (int i = 0; i < ngen && nodes; i++)
        printf("  node %d:                  %llu peers, %llu sessions\n", i, nd[i].s1.peers,
               nd[i].s1.sessions);
    if (held > 0) {
        printf("heap per peer:             %.0f bytes\n", heap / (double)held);
        printf("RSS per peer:              %.0f bytes\n", rss / (double)held);
        if (nodes)
            printf("Redis memory per peer:     %.0f bytes (used_memory %ld -> %ld)\n",
                   (double)(redis1 - redis0) / (double)held, redis0, redis1);
    }
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    printf("Ed25519 verifications/s:   %.0f on one core (this run)\n", vps);
    printf("full registrations/s:      %.0f (%ld in %.2f s; %.0f per core of %ld, %.2f of a core's "
           "verifications; the peers' signatures run on the same cores)\n",
           rok / treg, rok, treg, rok / treg / (double)ncpu, ncpu, rok / treg / (double)ncpu / vps);
    printf("ticket registrations/s:    %.0f (%ld in %.2f s, %ld refused or failed; %.1fx the full)\n",
           tok / ttk, tok, ttk, tbad, (tok / ttk) / (rok / treg));
    if (rok > 0 && tok > 0)
        printf("broker CPU per registration: full %.1f us, by ticket %.1f us (%.1fx less; the "
               "ticket phase also pays each old session's close)\n",
               cpu_full / (double)rok, cpu_ticket / (double)tok,
               (cpu_full / (double)rok) / (cpu_ticket / (double)tok));
    printf("connect coordinations/s:   %.0f (%ld in %.2f s%s; %ld errors)\n", cok / tconn, cok, tconn,
           nodes > 1 ? ", each across two nodes" : "", cbad);
    return 0;
}
