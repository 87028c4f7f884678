/*
 * ntcp_many: many connections at once through the public API (ntcp.h only),
 * for the lab test many_lab.py and for bench/many.
 *
 *   ntcp_many serve   --id NAME COMMON [--expect N]
 *       registers, prints "registered" on stdout, then accepts connections
 *       (ntcp_accept) and echoes each one, in its own thread, until the
 *       peer's end of stream; after N connections (0: until the timeout)
 *       and their echoes, prints a summary and exits 0 when all N came.
 *   ntcp_many connect --id NAME COMMON [--bytes N] [--go FILE] PEER...
 *       registers, prints "registered", waits until FILE exists (so that
 *       many processes start at one moment), then connects to every PEER
 *       at once (ntcp_connect_async), sends N random bytes on each and
 *       checks by SHA-256 that the echo is the same, then closes (no
 *       half-close: a TURN relay does not carry one, docs/relay.md); exits
 *       0 when every peer connected and echoed.
 *   ntcp_many connect ... --udp
 *       the same with UDP (ntcp_udp_punch_async): N bytes in datagrams of
 *       DGRAM_DATA bytes, each numbered, sent again until echoed (at most
 *       IO_TIMEOUT_S), every echo compared with what was sent, then END;
 *       the server echoes a UDP path (its accept says which transport)
 *       until END or IO_TIMEOUT_S of silence.
 *   ntcp_many serve|connect ... --repeat N [--every K]
 *       the soak: N connections in a row (connect: to one PEER), each
 *       echoed and closed before the next, a progress line every K (100)
 *       with the descriptors and resident memory.
 *   COMMON: --broker HOST:PORT --stun HOST:PORT --key FILE --timeout MS
 *           [--methods LIST] (the TCP methods this end may try)
 *
 * Every connection ends in one JSON line on stdout: {"peer", "status",
 * "method", "ok", "ms", "info"} (info: ntcp_conn_info_json()); the last
 * line is {"summary": ...} with the process's descriptors and resident
 * memory.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <dirent.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <poll.h>

#include "ntcp.h"

#define MAX_PEERS 256

static pthread_mutex_t out_mu = PTHREAD_MUTEX_INITIALIZER;
static long registered_rss_kb = -1; /* resident memory once registered, before any connection */

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void usage(void)
{
    fputs("usage: ntcp_many serve --id NAME COMMON [--expect N | --repeat N [--every K]]\n"
          "       ntcp_many connect --id NAME COMMON [--udp] [--bytes N] [--go FILE] PEER...\n"
          "       ntcp_many connect --id NAME COMMON [--bytes N] --repeat N [--every K] PEER\n"
          "COMMON: --broker HOST:PORT [--stun HOST:PORT] --key FILE [--timeout MS]\n"
          "        [--methods LIST] (ntcp_config_t.methods)\n",
          stderr);
}

/* The process's peak resident memory so far (kB), or -1. */
static long peak_rss_kb(void)
{
    long kb = -1;
    FILE *f = fopen("/proc/self/status", "r");
    if (f) {
        char line[256];
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "VmHWM: %ld", &kb) == 1)
                break;
        fclose(f);
    }
    return kb;
}

/* The process's open descriptors and resident memory (kB). */
static void usage_now(int *fds, long *rss_kb)
{
    *fds = 0;
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        for (struct dirent *e; (e = readdir(d));)
            if (e->d_name[0] != '.')
                (*fds)++;
        closedir(d);
        (*fds)--; /* the directory's own */
    }
    *rss_kb = -1;
    FILE *f = fopen("/proc/self/status", "r");
    if (f) {
        char line[256];
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "VmRSS: %ld", rss_kb) == 1)
                break;
        fclose(f);
    }
}

/* ---- one connection's data ---- */

typedef struct job {
    ntcp_t *ctx;
    int fd;
    size_t bytes;       /* connect: what to send; serve: 0 (echo) */
    uint8_t *data;
    ntcp_conn_info_t info;
    int status;
    uint64_t t0;
    bool ok;
    char why[128];
    pthread_t th;
    bool quiet; /* serve --repeat: no line for a good one */
} job;

static void *sender(void *arg)
{
    job *j = arg;
    size_t off = 0;
    while (off < j->bytes) {
        ssize_t n = send(j->fd, j->data + off, j->bytes - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    return NULL;
}

static void print_result(const job *j, const char *peer)
{
    char info[8192];
    ntcp_conn_info_json(&j->info, j->status < 0 ? j->status : 0, info, sizeof info);
    pthread_mutex_lock(&out_mu);
    printf("{\"peer\": \"%s\", \"status\": %d, \"method\": \"%s\", \"ok\": %s, \"ms\": %llu, "
           "\"why\": \"%s\", \"info\": %s}\n",
           peer, j->status < 0 ? j->status : 0, j->info.method, j->ok ? "true" : "false",
           (unsigned long long)(now_ms() - j->t0), j->why, info);
    fflush(stdout);
    pthread_mutex_unlock(&out_mu);
}

/* A transfer that stalls this long ends with a reason instead of hanging. */
#define IO_TIMEOUT_S 30

static void io_timeout(int fd)
{
    struct timeval tv = {.tv_sec = IO_TIMEOUT_S};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

static void run_client_udp(job *j);
static void run_echo_udp(job *j);

/* Connect side: send j->bytes, read the echo, compare digests. */
static void *run_client(void *arg)
{
    job *j = arg;
    if (j->info.transport == NTCP_UDP) {
        run_client_udp(j);
        return NULL;
    }
    io_timeout(j->fd);
    pthread_t s;
    pthread_create(&s, NULL, sender, j);
    EVP_MD_CTX *got = EVP_MD_CTX_new();
    EVP_DigestInit_ex(got, EVP_sha256(), NULL);
    uint8_t buf[16384];
    size_t total = 0;
    /* Until the whole echo is in, then close: no shutdown(SHUT_WR) before,
     * since a TURN relay carries no half-close (docs/relay.md). */
    while (total < j->bytes) {
        size_t want = j->bytes - total < sizeof buf ? j->bytes - total : sizeof buf;
        ssize_t n = recv(j->fd, buf, want, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            snprintf(j->why, sizeof j->why, "recv: %s", n < 0 ? strerror(errno) : "end of stream");
            break;
        }
        EVP_DigestUpdate(got, buf, (size_t)n);
        total += (size_t)n;
    }
    pthread_join(s, NULL);
    uint8_t a[32], b[32];
    EVP_DigestFinal_ex(got, a, NULL);
    EVP_MD_CTX_free(got);
    EVP_Digest(j->data, j->bytes, b, NULL, EVP_sha256(), NULL);
    j->ok = total == j->bytes && memcmp(a, b, 32) == 0;
    if (!j->ok && !j->why[0])
        snprintf(j->why, sizeof j->why, "echo: %zu of %zu bytes, digest %s", total, j->bytes,
                 memcmp(a, b, 32) == 0 ? "equal" : "differs");
    close(j->fd);
    return NULL;
}

/* Serve side: echo until the peer's end of stream. */
static void *run_echo(void *arg)
{
    job *j = arg;
    if (j->info.transport == NTCP_UDP) {
        run_echo_udp(j);
        return NULL;
    }
    io_timeout(j->fd);
    uint8_t buf[16384];
    size_t total = 0;
    for (;;) {
        ssize_t n = recv(j->fd, buf, sizeof buf, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            /* The client closes once it has its echo: an end of stream, or
             * over a TURN relay a reset (no half-close there). The
             * client's digest is the data check. */
            j->ok = total > 0 && (n == 0 || errno == ECONNRESET);
            if (!j->ok)
                snprintf(j->why, sizeof j->why, "after %zu bytes: %s", total,
                         n < 0 ? strerror(errno) : "end of stream before any data");
            break;
        }
        size_t off = 0;
        while (off < (size_t)n) {
            ssize_t w = send(j->fd, buf + off, (size_t)n - off, MSG_NOSIGNAL);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                break;
            off += (size_t)w;
        }
        total += (size_t)n;
    }
    shutdown(j->fd, SHUT_WR);
    close(j->fd);
    j->bytes = total;
    if (!j->quiet)
        print_result(j, j->info.peer);
    return NULL;
}

/* ---- UDP ---- */

#define DGRAM_DATA 1000 /* payload bytes of one datagram, after its number */
#define DGRAM_END "END!"

static bool wait_readable(int fd, int ms)
{
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    return poll(&pf, 1, ms) > 0;
}

/* Connect side over UDP: datagram k carries its number (4 bytes) and bytes
 * [k * DGRAM_DATA, ...) of the data; whatever has no echo yet goes again
 * every round, each echo must equal what was sent. */
static void run_client_udp(job *j)
{
    unsigned n = (unsigned)((j->bytes + DGRAM_DATA - 1) / DGRAM_DATA);
    bool *echoed = calloc(n ? n : 1, 1);
    unsigned got = 0, rounds = 0, bad = 0;
    uint64_t end = now_ms() + IO_TIMEOUT_S * 1000ull;
    uint8_t buf[4 + DGRAM_DATA + 64];
    while (got < n && now_ms() < end) {
        rounds++;
        for (unsigned k = 0; k < n; k++) {
            if (echoed[k])
                continue;
            size_t off = (size_t)k * DGRAM_DATA;
            size_t len = j->bytes - off < DGRAM_DATA ? j->bytes - off : DGRAM_DATA;
            buf[0] = (uint8_t)(k >> 24), buf[1] = (uint8_t)(k >> 16);
            buf[2] = (uint8_t)(k >> 8), buf[3] = (uint8_t)k;
            memcpy(buf + 4, j->data + off, len);
            (void)send(j->fd, buf, 4 + len, MSG_NOSIGNAL);
            if (k % 16 == 15)
                usleep(2000); /* paced: a burst the size of a socket buffer is no test */
        }
        uint64_t round_end = now_ms() + 500;
        while (got < n && now_ms() < round_end) {
            if (!wait_readable(j->fd, 50))
                continue;
            ssize_t r;
            while ((r = recv(j->fd, buf, sizeof buf, MSG_DONTWAIT)) >= 0) {
                if (r < 4 || ntcp_udp_is_control(buf, (size_t)r))
                    continue; /* keepalives, a repeated handshake datagram */
                unsigned k = (unsigned)buf[0] << 24 | (unsigned)buf[1] << 16 |
                             (unsigned)buf[2] << 8 | buf[3];
                size_t off = (size_t)k * DGRAM_DATA;
                if (k >= n || (size_t)r - 4 != (j->bytes - off < DGRAM_DATA ? j->bytes - off
                                                                            : DGRAM_DATA) ||
                    memcmp(buf + 4, j->data + off, (size_t)r - 4) != 0) {
                    bad++;
                    continue;
                }
                if (!echoed[k]) {
                    echoed[k] = true;
                    got++;
                }
            }
        }
    }
    for (int k = 0; k < 3; k++)
        (void)send(j->fd, DGRAM_END, 4, MSG_NOSIGNAL);
    j->ok = got == n && bad == 0;
    if (!j->ok)
        snprintf(j->why, sizeof j->why, "echo: %u of %u datagrams in %u rounds, %u wrong", got, n,
                 rounds, bad);
    free(echoed);
    ntcp_udp_close(j->ctx, j->fd);
}

/* Serve side over UDP: echo every datagram but the keepalives and the
 * handshake's repeats, until END or IO_TIMEOUT_S of silence. */
static void run_echo_udp(job *j)
{
    uint8_t buf[4 + DGRAM_DATA + 64];
    size_t total = 0;
    bool ended = false;
    while (!ended && wait_readable(j->fd, IO_TIMEOUT_S * 1000)) {
        ssize_t r;
        while ((r = recv(j->fd, buf, sizeof buf, MSG_DONTWAIT)) >= 0) {
            if (r == 4 && memcmp(buf, DGRAM_END, 4) == 0) {
                ended = true;
                break;
            }
            if (r == 0 || ntcp_udp_is_control(buf, (size_t)r))
                continue;
            (void)send(j->fd, buf, (size_t)r, MSG_NOSIGNAL);
            total += (size_t)r;
        }
    }
    j->ok = ended && total > 0;
    if (!j->ok)
        snprintf(j->why, sizeof j->why, "after %zu bytes: %s", total,
                 ended ? "END before any data" : "silence");
    ntcp_udp_close(j->ctx, j->fd);
    j->bytes = total;
    if (!j->quiet)
        print_result(j, j->info.peer);
}

/* ---- connect ---- */

typedef struct shared {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
} shared;

typedef struct cjob {
    job j;
    const char *peer;
    shared *sh;
    bool started;
} cjob;

static void on_connected(ntcp_t *ctx, int fd_or_err, const ntcp_conn_info_t *info, void *user)
{
    (void)ctx;
    cjob *c = user;
    c->j.info = *info;
    c->j.status = fd_or_err;
    c->j.fd = fd_or_err;
    if (fd_or_err >= 0) {
        /* The data in a thread of its own: callbacks must not block. */
        c->started = pthread_create(&c->j.th, NULL, run_client, &c->j) == 0;
        if (!c->started) {
            close(fd_or_err);
            snprintf(c->j.why, sizeof c->j.why, "no thread");
        }
    } else {
        snprintf(c->j.why, sizeof c->j.why, "%s", ntcp_strerror(fd_or_err));
    }
    pthread_mutex_lock(&c->sh->mu);
    c->sh->done++;
    pthread_cond_signal(&c->sh->cv);
    pthread_mutex_unlock(&c->sh->mu);
}

static void summary(const char *what, int total, int good, uint64_t t0)
{
    int fds;
    long rss;
    usage_now(&fds, &rss);
    pthread_mutex_lock(&out_mu);
    printf("{\"summary\": \"%s\", \"total\": %d, \"ok\": %d, \"ms\": %llu, \"fds\": %d, "
           "\"rss_kb\": %ld, \"peak_rss_kb\": %ld, \"registered_rss_kb\": %ld}\n",
           what, total, good, (unsigned long long)(now_ms() - t0), fds, rss, peak_rss_kb(),
           registered_rss_kb);
    fflush(stdout);
    pthread_mutex_unlock(&out_mu);
}

/* A progress line: connections so far, descriptors and memory now. */
static void progress(const char *what, int n)
{
    int fds;
    long rss;
    usage_now(&fds, &rss);
    pthread_mutex_lock(&out_mu);
    printf("{\"progress\": \"%s\", \"n\": %d, \"fds\": %d, \"rss_kb\": %ld}\n", what, n, fds, rss);
    fflush(stdout);
    pthread_mutex_unlock(&out_mu);
}

/* The soak: connect to one peer N times in a row, each connection echoed
 * and closed before the next; a line for each failure, progress every
 * `every` (descriptors and memory must not grow). */
static int do_connect_serial(ntcp_t *ctx, const char *peer, size_t bytes, int timeout, int n,
                             int every, bool udp)
{
    uint64_t t0 = now_ms();
    int good = 0;
    job j;
    uint8_t *data = malloc(bytes ? bytes : 1);
    for (int k = 0; k < n; k++) {
        memset(&j, 0, sizeof j);
        j.info.size = sizeof j.info;
        j.ctx = ctx;
        j.bytes = bytes;
        j.data = data;
        RAND_bytes(data, (int)bytes);
        j.t0 = now_ms();
        j.status = udp ? ntcp_udp_punch(ctx, peer, &j.info, timeout)
                       : ntcp_connect(ctx, peer, &j.info, timeout);
        if (j.status >= 0) {
            j.fd = j.status;
            run_client(&j); /* closes it */
        } else {
            snprintf(j.why, sizeof j.why, "%s", ntcp_strerror(j.status));
        }
        good += j.ok;
        if (!j.ok)
            print_result(&j, peer);
        if ((k + 1) % every == 0)
            progress("connect", k + 1);
    }
    free(data);
    summary("connect", n, good, t0);
    return good == n ? 0 : 2;
}

static int do_connect(ntcp_t *ctx, char **peers, int npeers, size_t bytes, const char *go,
                      int timeout, bool udp)
{
    if (go)
        while (access(go, F_OK) != 0)
            usleep(1000);
    shared sh = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    cjob *cs = calloc((size_t)npeers, sizeof *cs);
    uint64_t t0 = now_ms();
    int queued = 0;
    for (int i = 0; i < npeers; i++) {
        cjob *c = &cs[i];
        c->peer = peers[i];
        c->sh = &sh;
        c->j.fd = -1;
        c->j.t0 = t0;
        c->j.bytes = bytes;
        c->j.data = malloc(bytes ? bytes : 1);
        RAND_bytes(c->j.data, (int)bytes);
        c->j.info.size = sizeof c->j.info;
        c->j.ctx = ctx;
        int rc = udp ? ntcp_udp_punch_async(ctx, peers[i], timeout, on_connected, c)
                     : ntcp_connect_async(ctx, peers[i], timeout, on_connected, c);
        if (rc < 0) {
            c->j.status = rc;
            snprintf(c->j.why, sizeof c->j.why, "cannot ask: %s", ntcp_strerror(rc));
            continue;
        }
        queued++;
    }
    pthread_mutex_lock(&sh.mu);
    while (sh.done < queued)
        pthread_cond_wait(&sh.cv, &sh.mu);
    pthread_mutex_unlock(&sh.mu);
    int good = 0;
    for (int i = 0; i < npeers; i++) {
        cjob *c = &cs[i];
        if (c->started)
            pthread_join(c->j.th, NULL);
        good += c->j.ok;
        print_result(&c->j, c->peer);
        free(c->j.data);
    }
    free(cs);
    summary("connect", npeers, good, t0);
    return good == npeers ? 0 : 2;
}

/* ---- serve ---- */

/* Serve N connections one after the other, each echoed in this thread (the
 * soak: nothing piles up but what the library keeps). Prints each one's
 * line only when it failed, and progress every `every`. */
static int do_serve_serial(ntcp_t *ctx, int expect, int timeout, int every)
{
    uint64_t t0 = now_ms();
    int good = 0, n = 0;
    for (; n < expect; n++) {
        job j;
        memset(&j, 0, sizeof j);
        j.info.size = sizeof j.info;
        j.ctx = ctx;
        j.fd = ntcp_accept(ctx, &j.info, timeout);
        if (j.fd < 0) {
            j.status = j.fd;
            snprintf(j.why, sizeof j.why, "accept: %s", ntcp_strerror(j.fd));
            print_result(&j, "?");
            break;
        }
        j.t0 = now_ms();
        j.quiet = true;
        run_echo(&j);
        good += j.ok;
        if (!j.ok)
            print_result(&j, j.info.peer);
        if ((n + 1) % every == 0)
            progress("serve", n + 1);
    }
    summary("serve", n, good, t0);
    return good == expect ? 0 : 2;
}

static int do_serve(ntcp_t *ctx, int expect, int timeout)
{
    uint64_t t0 = now_ms(), end = t0 + (uint64_t)timeout;
    job *js = calloc(expect > 0 ? (size_t)expect : MAX_PEERS, sizeof *js);
    int cap = expect > 0 ? expect : MAX_PEERS, n = 0;
    while (n < cap) {
        uint64_t now = now_ms();
        if (now >= end)
            break;
        job *j = &js[n];
        j->info.size = sizeof j->info;
        j->ctx = ctx;
        int fd = ntcp_accept(ctx, &j->info, (int)(end - now));
        if (fd < 0)
            break;
        j->fd = fd;
        j->t0 = now_ms();
        if (pthread_create(&j->th, NULL, run_echo, j) != 0) {
            close(fd);
            continue;
        }
        n++;
    }
    int good = 0;
    for (int i = 0; i < n; i++) {
        pthread_join(js[i].th, NULL);
        good += js[i].ok;
    }
    free(js);
    summary("serve", n, good, t0);
    return expect > 0 && good == expect ? 0 : (expect > 0 ? 2 : 0);
}

int main(int argc, char **argv)
{
    if (argc < 2 || (strcmp(argv[1], "serve") != 0 && strcmp(argv[1], "connect") != 0)) {
        usage();
        return 1;
    }
    bool serve = strcmp(argv[1], "serve") == 0;
    const char *id = NULL, *broker = NULL, *key = NULL, *go = NULL, *methods = NULL;
    const char *stun[4];
    size_t nstun = 0;
    int timeout = 30000, expect = 0, repeat = 0, every = 100;
    bool udp = false;
    size_t bytes = 65536;
    static const struct option opts[] = {
        {"id", 1, 0, 'i'},      {"broker", 1, 0, 'b'}, {"stun", 1, 0, 's'},
        {"key", 1, 0, 'k'},     {"timeout", 1, 0, 't'}, {"expect", 1, 0, 'n'},
        {"bytes", 1, 0, 'B'},   {"go", 1, 0, 'g'},      {"help", 0, 0, 'h'},
        {"repeat", 1, 0, 'r'},  {"every", 1, 0, 'e'},  {"udp", 0, 0, 'u'},
        {"methods", 1, 0, 'M'},
        {0, 0, 0, 0}};
    optind = 2;
    for (int c; (c = getopt_long(argc, argv, "i:b:s:k:t:n:B:g:hr:e:uM:", opts, NULL)) != -1;) {
        switch (c) {
        case 'i': id = optarg; break;
        case 'b': broker = optarg; break;
        case 's':
            if (nstun < 4)
                stun[nstun++] = optarg;
            break;
        case 'k': key = optarg; break;
        case 't': timeout = atoi(optarg); break;
        case 'n': expect = atoi(optarg); break;
        case 'B': bytes = strtoul(optarg, NULL, 10); break;
        case 'g': go = optarg; break;
        case 'r': repeat = atoi(optarg); break;
        case 'e': every = atoi(optarg); break;
        case 'u': udp = true; break;
        case 'M': methods = optarg; break;
        case 'h': usage(); return 0;
        default: usage(); return 1;
        }
    }
    int npeers = argc - optind;
    if (!id || !broker || !key || timeout <= 0 || expect < 0 || repeat < 0 || every < 1 ||
        (!serve && npeers < 1) || (repeat && !serve && npeers != 1) ||
        npeers > MAX_PEERS || bytes > (64u << 20)) {
        usage();
        return 1;
    }
    ntcp_config_t cfg;
    ntcp_config_init(&cfg);
    cfg.broker = broker;
    cfg.name = id;
    cfg.key_file = key;
    cfg.stun_servers = stun;
    cfg.n_stun_servers = nstun;
    cfg.methods = methods;
    ntcp_t *ctx;
    int rc = ntcp_new(&cfg, &ctx);
    if (rc < 0) {
        fprintf(stderr, "ntcp_many: %s\n", ntcp_strerror(rc));
        return 1;
    }
    rc = ntcp_listen(ctx, NULL, timeout);
    if (rc < 0) {
        fprintf(stderr, "ntcp_many: cannot register: %s\n", ntcp_strerror(rc));
        ntcp_free(ctx);
        return 2;
    }
    int fds0;
    usage_now(&fds0, &registered_rss_kb);
    printf("registered\n");
    fflush(stdout);
    if (repeat)
        rc = serve ? do_serve_serial(ctx, repeat, timeout, every)
                   : do_connect_serial(ctx, argv[optind], bytes, timeout, repeat, every, udp);
    else
        rc = serve ? do_serve(ctx, expect, timeout)
                   : do_connect(ctx, argv + optind, npeers, bytes, go, timeout, udp);
    ntcp_free(ctx);
    return rc;
}
