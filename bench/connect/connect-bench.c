/*
 * connect-bench.c: time from ntcp_connect() to a verified socket (issue 6,
 * "Speed"). Two modes, one per peer, run by bench/connect/run-connect-bench.sh
 * in the lab:
 *
 *   connect-bench serve --id NAME --broker H:P [--stun H[:P]] [--key FILE]
 *       registers NAME and accepts connections until killed: each one gets a
 *       byte back and is closed.
 *   connect-bench connect --id NAME --broker H:P [--stun H[:P]] [--key FILE]
 *                         --peer NAME [--count N] [--rtt-ms MS] [--json]
 *       registers NAME (discovery and registration are outside the timing),
 *       then connects N times (one after the other) and prints, for the
 *       successful ones, the median and the 90th percentile of the time from
 *       the call to the verified socket, in milliseconds and in round trips
 *       of --rtt-ms (the path's RTT between the peers; default: the broker's
 *       measure of this end's RTT), plus the method that won each time.
 *
 * Figures only: nothing here is a test assertion.
 */
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ntcp.h"

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(const double *v, size_t n, double p)
{
    if (n == 0)
        return 0;
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return v[i < n ? i : n - 1];
}

static void usage(FILE *f)
{
    fprintf(f, "usage: connect-bench serve --id NAME --broker HOST:PORT [--stun HOST[:PORT]] "
               "[--key FILE]\n"
               "       connect-bench connect --id NAME --broker HOST:PORT [--stun HOST[:PORT]]\n"
               "                     [--key FILE] --peer NAME [--count N] [--rtt-ms MS] "
               "[--label TEXT] [--json]\n");
}

int main(int argc, char **argv)
{
    if (argc < 2 || (strcmp(argv[1], "serve") && strcmp(argv[1], "connect"))) {
        usage(stderr);
        return 2;
    }
    bool serve = !strcmp(argv[1], "serve");
    const char *id = NULL, *broker = NULL, *stun = NULL, *key = NULL, *peer = NULL;
    const char *label = "";
    int count = 20;
    double rtt_ms = 0;
    bool json = false;
    static const struct option lo[] = {
        {"id", 1, 0, 'i'},    {"broker", 1, 0, 'b'}, {"stun", 1, 0, 's'},  {"key", 1, 0, 'k'},
        {"peer", 1, 0, 'p'},  {"count", 1, 0, 'n'},  {"rtt-ms", 1, 0, 'r'}, {"json", 0, 0, 'j'},
        {"label", 1, 0, 'l'}, {"help", 0, 0, 'h'},   {0, 0, 0, 0}};
    optind = 2;
    for (int c; (c = getopt_long(argc, argv, "", lo, NULL)) != -1;) {
        switch (c) {
        case 'i': id = optarg; break;
        case 'b': broker = optarg; break;
        case 's': stun = optarg; break;
        case 'k': key = optarg; break;
        case 'p': peer = optarg; break;
        case 'n': count = atoi(optarg); break;
        case 'r': rtt_ms = atof(optarg); break;
        case 'j': json = true; break;
        case 'l': label = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!id || !broker || (!serve && !peer) || count < 1 || count > 10000) {
        usage(stderr);
        return 2;
    }
    ntcp_config_t cfg;
    ntcp_config_init(&cfg);
    const char *servers[1] = {stun};
    cfg.stun_servers = servers;
    cfg.n_stun_servers = stun ? 1 : 0;
    cfg.broker = broker;
    cfg.name = id;
    cfg.key_file = key;
    ntcp_t *ctx = NULL;
    int rc = ntcp_new(&cfg, &ctx);
    if (rc < 0) {
        fprintf(stderr, "connect-bench: %s\n", ntcp_strerror(rc));
        return 2;
    }
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    rc = ntcp_listen(ctx, NULL, 30000);
    if (rc < 0) {
        fprintf(stderr, "connect-bench: cannot register %s: %s\n", id, ntcp_strerror(rc));
        ntcp_free(ctx);
        return 1;
    }
    if (serve) {
        fprintf(stderr, "connect-bench: %s registered, serving\n", id);
        while (!stop) {
            int fd = ntcp_accept(ctx, NULL, 200);
            if (fd >= 0) {
                (void)!write(fd, "k", 1);
                close(fd);
            }
        }
        ntcp_free(ctx);
        return 0;
    }

    double *ms = calloc((size_t)count, sizeof *ms);
    /* The steps: to the broker's CONNECT-GO, to the common start, to the
     * TCP handshake, to the end of the key proof. */
    double *st[4];
    for (int k = 0; k < 4; k++)
        st[k] = calloc((size_t)count, sizeof *st[k]);
    char methods[512] = "";
    int ok = 0, failed = 0;
    uint32_t broker_rtt = 0;
    for (int i = 0; i < count && !stop; i++) {
        ntcp_conn_info_t info;
        memset(&info, 0, sizeof info);
        info.size = sizeof info;
        double t0 = now_ms();
        int fd = ntcp_connect(ctx, peer, &info, 15000);
        double t = now_ms() - t0;
        if (fd < 0) {
            failed++;
            fprintf(stderr, "connect-bench: attempt %d: %s: %s\n", i + 1, ntcp_strerror(fd),
                    info.detail);
            continue;
        }
        char b;
        (void)!read(fd, &b, 1); /* the server's byte: the connection carried data */
        close(fd);
        st[0][ok] = (double)info.broker_ms;
        st[1][ok] = (double)(info.start_ms - info.broker_ms);
        st[2][ok] = (double)(info.connected_ms - info.start_ms);
        st[3][ok] = (double)(info.verified_ms - info.connected_ms);
        ms[ok++] = t;
        broker_rtt = info.rtt_ms;
        if (!strstr(methods, info.method) && strlen(methods) + strlen(info.method) + 2 < sizeof methods) {
            if (methods[0])
                strcat(methods, ",");
            strcat(methods, info.method);
        }
        usleep(100000); /* let the previous connection's sockets close */
    }
    qsort(ms, (size_t)ok, sizeof *ms, cmp_double);
    double sm[4];
    for (int k = 0; k < 4; k++) {
        qsort(st[k], (size_t)ok, sizeof *st[k], cmp_double);
        sm[k] = pct(st[k], (size_t)ok, 0.5);
    }
    double rtt = rtt_ms > 0 ? rtt_ms : (double)broker_rtt;
    double med = pct(ms, (size_t)ok, 0.5), p90 = pct(ms, (size_t)ok, 0.9);
    if (json)
        printf("{\"label\":\"%s\",\"ok\":%d,\"failed\":%d,\"median_ms\":%.1f,\"p90_ms\":%.1f,"
               "\"rtt_ms\":%.1f,\"median_rtts\":%.2f,\"p90_rtts\":%.2f,\"methods\":\"%s\","
               "\"median_steps_ms\":{\"broker\":%.0f,\"start_delay\":%.0f,\"handshake\":%.0f,"
               "\"proof\":%.0f}}\n",
               label, ok, failed, med, p90, rtt, rtt > 0 ? med / rtt : 0, rtt > 0 ? p90 / rtt : 0,
               methods, sm[0], sm[1], sm[2], sm[3]);
    else
        printf("%-40s %3d ok %2d failed  median %7.1f ms (%5.2f RTT)  p90 %7.1f ms (%5.2f RTT)  "
               "RTT %.0f ms  %s\n%-40s steps (median ms): broker %.0f, start delay %.0f, "
               "handshake %.0f, key proof %.0f\n",
               label, ok, failed, med, rtt > 0 ? med / rtt : 0, p90, rtt > 0 ? p90 / rtt : 0, rtt,
               methods, "", sm[0], sm[1], sm[2], sm[3]);
    free(ms);
    for (int k = 0; k < 4; k++)
        free(st[k]);
    ntcp_free(ctx);
    return ok ? 0 : 1;
}
