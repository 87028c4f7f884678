/*
 * ntcp-brokerd: the connection broker program, a thin main() around the
 * broker library (src/broker/): options, logging to stderr, SIGHUP to reload
 * the authorized keys and the TLS certificate, SIGINT/SIGTERM to stop, a
 * periodic stats line.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/rand.h>
#include <sys/stat.h>
#include <uv.h>

#include "broker.h"
#include "logline.h"
#include "ntcp.h"

static const char usage[] =
    "usage: ntcp-brokerd --listen IP:PORT [--udp IP:PORT|none] [--authorized-keys FILE]\n"
    "                    [--state-dir DIR] [--expiry S] [--id STRING] [--stats S]\n"
    "                    [--tls-cert FILE --tls-key FILE [--tls-listen IP:PORT]]\n"
    "                    [--spoof] [--cluster redis://HOST:PORT[/DB]] [--source-rate R]\n"
    "                    [--peer-rate R]\n"
    "                    [--ticket-key-file FILE] [--turn-server IP:PORT\n"
    "                    --turn-secret-file FILE [--turn-ttl S]] [--verbose] [--quiet]\n"
    "       ntcp-brokerd --help | --version\n"
    "\n"
    "The ntcp connection broker: peers register a name bound to an Ed25519 key,\n"
    "keep it alive, look each other up and ask to be connected.\n"
    "\n"
    "  --listen IP:PORT         TCP address for peer sessions (e.g. 0.0.0.0:3479)\n"
    "  --udp IP:PORT|none       UDP address for keepalives (NAT mapping discovery);\n"
    "                           the --listen address and port by default (peers send\n"
    "                           them there); none: no UDP, UDP connects are refused\n"
    "  --authorized-keys FILE   only these names and keys may register: lines of\n"
    "                           \"name base64-ed25519-public-key\"; SIGHUP re-reads it\n"
    "  --state-dir DIR          remember first-use name bindings across restarts\n"
    "  --expiry S               a registration lives S seconds without refresh (60)\n"
    "  --id STRING              broker identity peers sign (\"ntcp-brokerd\")\n"
    "  --stats S                log a stats line every S seconds (60; 0: never)\n"
    "  --tls-cert FILE          PEM certificate (chain) for TLS 1.3; SIGHUP re-reads it\n"
    "  --tls-key FILE           its PEM private key\n"
    "                           with both, --listen speaks TLS only, unless:\n"
    "  --tls-listen IP:PORT     TLS here, and --listen stays plain TCP\n"
    "  --spoof                  send STUNT#1's spoofed SYN-ACKs to the two ends of\n"
    "                           a connect (needs CAP_NET_RAW; off by default)\n"
    "  --ticket-key-file FILE   the key that seals resumption tickets (32 bytes, made\n"
    "                           with mode 0600 if missing), so that tickets outlive a\n"
    "                           restart; without it a random key per process (in a\n"
    "                           cluster the nodes share one in Redis)\n"
    "  --peer-rate R            requests per second from one peer's session (50, burst\n"
    "                           2x; 0: unlimited): a peer making many connections\n"
    "                           in a row needs more\n"
    "  --source-rate R          new sessions and signed registrations per second from\n"
    "                           one address (100, burst 10x; 0: unlimited)\n"
    "  --cluster URL            one node of a cluster sharing registrations, name\n"
    "                           bindings, lookups and connects through this Redis\n"
    "                           (redis://HOST:PORT[/DB]); all nodes need the same --id\n"
    "  --turn-server IP:PORT    the relay of last resort: a TURN server (coturn with\n"
    "                           use-auth-secret); each CONNECT-GO carries it and\n"
    "                           time-limited TURN REST credentials for that end\n"
    "  --turn-secret-file FILE  the shared secret (coturn's static-auth-secret),\n"
    "                           first line of FILE\n"
    "  --turn-ttl S             the credentials' validity in seconds (86400)\n"
    "  --verbose, --quiet       more or fewer log lines\n";

typedef struct app {
    uv_loop_t *loop;
    ntcp_broker *broker;
    uv_signal_t sighup, sigint, sigterm;
    uv_timer_t stats;
    ntcp_broker_stats last;
    bool cluster;
    uint64_t last_ms;
} app;

static void log_line(void *user, int level, const char *msg)
{
    (void)user;
    char start[96];
    ntcp_log_prefix(start, sizeof start, level & 3, "ntcp-brokerd", false);
    fprintf(stderr, "%s%s\n", start, msg);
}

static long rss_kib(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, resident = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

static void on_stats(uv_timer_t *t)
{
    app *a = t->data;
    ntcp_broker_stats st;
    ntcp_broker_get_stats(a->broker, &st);
    uint64_t now = uv_now(a->loop);
    double secs = (double)(now - a->last_ms) / 1000.0;
    double rps = secs > 0 ? (double)(st.requests - a->last.requests) / secs : 0;
    struct mallinfo2 mi = mallinfo2();
    char line[512];
    snprintf(line, sizeof line,
             "stats: peers %llu, sessions %llu, bindings %llu, requests/s %.1f, "
             "registrations %llu, connects %llu ok %llu failed, refused %llu, bad sessions %llu, "
             "reaped %llu, rate limited %llu, tls sessions %llu, tls failures %llu, "
             "raw-isn %llu, spoofed %llu, resumptions %llu, tickets refused %llu, cluster %s, "
             "heap %zu KiB, rss %ld KiB",
             (unsigned long long)st.peers, (unsigned long long)st.sessions,
             (unsigned long long)st.bindings, rps, (unsigned long long)st.registrations,
             (unsigned long long)st.connects_ok, (unsigned long long)st.connects_failed,
             (unsigned long long)st.refused, (unsigned long long)st.bad_sessions,
             (unsigned long long)st.reaped, (unsigned long long)st.rate_limited,
             (unsigned long long)st.tls_sessions, (unsigned long long)st.tls_failed,
             (unsigned long long)st.raw_isn, (unsigned long long)st.spoofed,
             (unsigned long long)st.resumptions, (unsigned long long)st.tickets_refused,
             a->cluster ? (st.cluster_up ? "up" : "down") : "off",
             mi.uordblks / 1024, rss_kib());
    log_line(NULL, NTCP_LOG_INFO, line);
    a->last = st;
    a->last_ms = now;
}

static void on_hup(uv_signal_t *h, int sig)
{
    app *a = h->data;
    (void)sig;
    int rc = ntcp_broker_reload(a->broker);
    if (rc < 0)
        log_line(NULL, NTCP_LOG_ERROR,
                 "reload failed; the previous keys or certificate stay in force");
    else
        log_line(NULL, NTCP_LOG_INFO, "reloaded");
}

static void on_stopped(void *arg)
{
    app *a = arg;
    uv_close((uv_handle_t *)&a->sighup, NULL);
    uv_close((uv_handle_t *)&a->sigint, NULL);
    uv_close((uv_handle_t *)&a->sigterm, NULL);
    uv_close((uv_handle_t *)&a->stats, NULL);
}

static void on_term(uv_signal_t *h, int sig)
{
    app *a = h->data;
    log_line(NULL, NTCP_LOG_INFO, sig == SIGINT ? "interrupted; stopping" : "stopping");
    uv_signal_stop(&a->sigint);
    uv_signal_stop(&a->sigterm);
    ntcp_broker_stop(a->broker, on_stopped, a);
}

/* 32 bytes from path, made (random, mode 0600) when it does not exist; a
 * file others may read is refused, as an identity key is. */
static int load_ticket_key(const char *path, uint8_t key[32])
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd >= 0 && (RAND_bytes(key, 32) != 1 || write(fd, key, 32) != 32 || fsync(fd) != 0)) {
            close(fd);
            unlink(path);
            fd = -1;
        } else if (fd >= 0) {
            close(fd);
            return 0;
        }
    }
    struct stat st = {0};
    if (fd < 0 || fstat(fd, &st) != 0 || (st.st_mode & 077) || read(fd, key, 32) != 32) {
        fprintf(stderr, "ntcp-brokerd: --ticket-key-file %s: %s\n", path,
                fd < 0 ? strerror(errno) : (st.st_mode & 077) ? "readable by others (chmod 600)"
                                                             : "not 32 bytes");
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"udp", required_argument, NULL, 'u'},
        {"authorized-keys", required_argument, NULL, 'k'},
        {"state-dir", required_argument, NULL, 's'},
        {"expiry", required_argument, NULL, 'e'},
        {"id", required_argument, NULL, 'i'},
        {"stats", required_argument, NULL, 'S'},
        {"tls-cert", required_argument, NULL, 'C'},
        {"tls-key", required_argument, NULL, 'K'},
        {"tls-listen", required_argument, NULL, 'T'},
        {"spoof", no_argument, NULL, 'P'},
        {"cluster", required_argument, NULL, 'R'},
        {"source-rate", required_argument, NULL, 'r'},
        {"peer-rate", required_argument, NULL, 'p'},
        {"ticket-key-file", required_argument, NULL, 't'},
        {"turn-server", required_argument, NULL, 'U'},
        {"turn-secret-file", required_argument, NULL, 'F'},
        {"turn-ttl", required_argument, NULL, 'L'},
        {"verbose", no_argument, NULL, 'v'},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    ntcp_broker_config cfg = {0};
    cfg.log = log_line;
    cfg.log_level = NTCP_LOG_INFO;
    long stats_s = 60;
    const char *ticket_file = NULL;
    uint8_t ticket_key[32];
    int c;
    while ((c = getopt_long(argc, argv, "l:u:k:s:e:i:S:C:K:T:PR:r:p:t:U:F:L:vqhV", opts, NULL)) != -1) {
        char *end;
        switch (c) {
        case 'l': cfg.listen = optarg; break;
        case 'u': cfg.udp = optarg; break;
        case 'k': cfg.authorized_keys = optarg; break;
        case 's': cfg.state_dir = optarg; break;
        case 'i': cfg.broker_id = optarg; break;
        case 'C': cfg.tls_cert = optarg; break;
        case 'K': cfg.tls_key = optarg; break;
        case 'T': cfg.tls_listen = optarg; break;
        case 'P': cfg.spoof = true; break;
        case 'R': cfg.cluster = optarg; break;
        case 't': ticket_file = optarg; break;
        case 'r': {
            double v = strtod(optarg, &end);
            if (*end || v < 0 || v > 1e7) {
                fprintf(stderr, "ntcp-brokerd: --source-rate wants a rate >= 0\n");
                return 2;
            }
            /* Many peers behind one address (a NAT, a test) need more. */
            cfg.source_rate = v > 0 ? v : -1;
            cfg.source_burst = v > 0 ? (uint32_t)(v * 10 < 1 ? 1 : v * 10) : 0;
            break;
        }
        case 'p': {
            double v = strtod(optarg, &end);
            if (*end || v < 0 || v > 1e7) {
                fprintf(stderr, "ntcp-brokerd: --peer-rate wants a rate >= 0\n");
                return 2;
            }
            cfg.peer_rate = v > 0 ? v : -1;
            cfg.peer_burst = v > 0 ? (uint32_t)(v * 2 < 1 ? 1 : v * 2) : 0;
            break;
        }
        case 'U': cfg.turn_server = optarg; break;
        case 'F': cfg.turn_secret_file = optarg; break;
        case 'L': {
            long v = strtol(optarg, &end, 10);
            if (*end || v < 60 || v > 7 * 86400) {
                fprintf(stderr, "ntcp-brokerd: --turn-ttl wants 60..604800 seconds\n");
                return 2;
            }
            cfg.turn_ttl_s = (uint32_t)v;
            break;
        }
        case 'e': {
            long v = strtol(optarg, &end, 10);
            if (*end || v < 1 || v > 86400) {
                fprintf(stderr, "ntcp-brokerd: --expiry wants 1..86400 seconds\n");
                return 2;
            }
            cfg.expiry_s = (uint32_t)v;
            break;
        }
        case 'S':
            stats_s = strtol(optarg, &end, 10);
            if (*end || stats_s < 0) {
                fprintf(stderr, "ntcp-brokerd: --stats wants seconds\n");
                return 2;
            }
            break;
        case 'v': cfg.log_level = NTCP_LOG_DEBUG; break;
        case 'q': cfg.log_level = NTCP_LOG_WARN; break;
        case 'h': fputs(usage, stdout); return 0;
        case 'V': printf("ntcp-brokerd %s (broker protocol 1)\n", ntcp_version()); return 0;
        default: fputs(usage, stderr); return 2;
        }
    }
    if (optind < argc || !cfg.listen) {
        fputs(usage, stderr);
        return 2;
    }
    /* Peers send their UDP keepalives to the broker's own address and
     * port: a broker without UDP there could never learn a mapping, and
     * every UDP punch would wait for one in vain. */
    if (!cfg.udp)
        cfg.udp_on_listen = true;
    else if (!strcmp(cfg.udp, "none"))
        cfg.udp = NULL;
    if (!cfg.tls_cert != !cfg.tls_key || (cfg.tls_listen && !cfg.tls_cert)) {
        fprintf(stderr, "ntcp-brokerd: --tls-cert and --tls-key go together; --tls-listen needs both\n");
        return 2;
    }
    if (ticket_file) {
        if (load_ticket_key(ticket_file, ticket_key) < 0)
            return 1;
        cfg.ticket_key = ticket_key;
    }
    if (!cfg.turn_server != !cfg.turn_secret_file) {
        fprintf(stderr, "ntcp-brokerd: --turn-server and --turn-secret-file go together\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);

    app a = {0};
    a.loop = uv_default_loop();
    a.cluster = cfg.cluster != NULL;
    int rc = ntcp_broker_start(a.loop, &cfg, &a.broker);
    if (rc < 0) {
        fprintf(stderr, "ntcp-brokerd: cannot start: %s\n", ntcp_strerror(rc));
        return 1;
    }
    uv_signal_init(a.loop, &a.sighup);
    uv_signal_init(a.loop, &a.sigint);
    uv_signal_init(a.loop, &a.sigterm);
    a.sighup.data = a.sigint.data = a.sigterm.data = &a;
    uv_signal_start(&a.sighup, on_hup, SIGHUP);
    uv_signal_start(&a.sigint, on_term, SIGINT);
    uv_signal_start(&a.sigterm, on_term, SIGTERM);
    uv_timer_init(a.loop, &a.stats);
    a.stats.data = &a;
    a.last_ms = uv_now(a.loop);
    if (stats_s > 0)
        uv_timer_start(&a.stats, on_stats, (uint64_t)stats_s * 1000, (uint64_t)stats_s * 1000);
    uv_run(a.loop, UV_RUN_DEFAULT);
    uv_loop_close(a.loop);
    return 0;
}
