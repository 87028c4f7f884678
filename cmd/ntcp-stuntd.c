/*
 * ntcp-stuntd: the STUN/STUNT server program. A thin main() around
 * src/server/stuntd.c: options, the event loop, signals and dropping root.
 * Usage in docs/ntcp-stuntd.8.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "logline.h"
#include "ntcp.h"
#include "stuntd.h"

/* Exit codes (also in the man page). */
enum { EXIT_USAGE = 2, EXIT_START = 1 };

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: ntcp-stuntd --primary IP[:PORT] --alternate IP[:PORT] [options]\n"
            "       ntcp-stuntd --config FILE [options]\n"
            "\n"
            "A STUN server (RFC 8489, RFC 5780, RFC 3489) with ntcp's STUNT connect-back\n"
            "test, on two addresses and two ports, over UDP and TCP.\n"
            "\n"
            "Addresses (each may be given once for IPv4 and once for IPv6; [addr]:port for\n"
            "IPv6; port 0 = any free port, the same on both addresses):\n"
            "  -p, --primary IP[:PORT]    primary address (default port 3478)\n"
            "  -a, --alternate IP[:PORT]  alternate address (default port 3479)\n"
            "  -c, --config FILE          read the [stunt] section of FILE (keys stuntIp,\n"
            "                             stuntPort, otherStuntIp, otherStuntPort); options\n"
            "                             given on the command line win\n"
            "      --no-udp, --no-tcp     do not serve UDP, TCP\n"
            "\n"
            "Limits:\n"
            "      --udp-rate PPS         UDP responses per second per source IP (default 100;\n"
            "                             0 = unlimited)\n"
            "      --udp-burst N          UDP bucket size per source IP (default 200)\n"
            "      --rate-slots N         source IPs tracked by each rate limiter (65536)\n"
            "      --tcp-idle SECONDS     close TCP connections idle this long (30; 0 = never)\n"
            "      --max-conns N          TCP connections open at once (default 1024)\n"
            "      --cb-rate PER_SEC      connect-backs per second per client IP (default 2;\n"
            "                             0 = unlimited)\n"
            "      --cb-burst N           connect-back bucket size per client IP (default 40)\n"
            "      --cb-max-timeout MS    cap on the connect-back timeout (default 10000)\n"
            "      --cb-max-pending N     connect-backs in flight at once (default 256)\n"
            "\n"
            "Other:\n"
            "  -u, --user NAME            user to run as once the sockets are bound\n"
            "                             (default nobody when started as root)\n"
            "  -v, --verbose              debug logs (malformed messages, connect-backs)\n"
            "  -q, --quiet                log warnings and errors only\n"
            "      --log-level LEVEL      error, warn, info (default) or debug\n"
            "  -h, --help                 this help\n"
            "  -V, --version              the version\n"
            "\n"
            "Exit status: 0 after SIGINT or SIGTERM, 1 when the server cannot start\n"
            "(bind, user change), 2 for a usage or configuration error.\n");
}

enum {
    OPT_UDP_RATE = 256,
    OPT_UDP_BURST,
    OPT_RATE_SLOTS,
    OPT_TCP_IDLE,
    OPT_MAX_CONNS,
    OPT_CB_RATE,
    OPT_CB_BURST,
    OPT_CB_MAX_TIMEOUT,
    OPT_CB_MAX_PENDING,
    OPT_LOG_LEVEL,
    OPT_NO_UDP,
    OPT_NO_TCP,
};

static int parse_double(const char *opt, const char *s, double max, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || v < 0 || v > max) {
        fprintf(stderr, "ntcp-stuntd: %s: invalid value: %s\n", opt, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_u32(const char *opt, const char *s, uint32_t min, uint32_t max, uint32_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v < min || v > max) {
        fprintf(stderr, "ntcp-stuntd: %s: invalid value: %s (%u..%u)\n", opt, s, min, max);
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

struct app {
    ntcp_stuntd *srv;
    uv_signal_t sigint, sigterm;
};

static void on_signal(uv_signal_t *h, int signum)
{
    struct app *app = h->data;
    ntcp_stuntd_stats st;
    ntcp_stuntd_get_stats(app->srv, &st);
    char start[96];
    ntcp_log_prefix(start, sizeof start, NTCP_LOG_INFO, "ntcp-stuntd", true);
    fprintf(stderr,
            "%s%s: stopping (udp in %llu out %llu rate-limited %llu; tcp "
            "connections %llu; connect-backs %llu)\n",
            start, strsignal(signum), (unsigned long long)st.udp_in, (unsigned long long)st.udp_out,
            (unsigned long long)st.udp_rate_limited, (unsigned long long)st.tcp_accepted,
            (unsigned long long)st.cb_started);
    ntcp_stuntd_stop(app->srv);
    uv_close((uv_handle_t *)&app->sigint, NULL);
    uv_close((uv_handle_t *)&app->sigterm, NULL);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"primary", required_argument, NULL, 'p'},
        {"alternate", required_argument, NULL, 'a'},
        {"config", required_argument, NULL, 'c'},
        {"user", required_argument, NULL, 'u'},
        {"verbose", no_argument, NULL, 'v'},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {"udp-rate", required_argument, NULL, OPT_UDP_RATE},
        {"udp-burst", required_argument, NULL, OPT_UDP_BURST},
        {"rate-slots", required_argument, NULL, OPT_RATE_SLOTS},
        {"tcp-idle", required_argument, NULL, OPT_TCP_IDLE},
        {"max-conns", required_argument, NULL, OPT_MAX_CONNS},
        {"cb-rate", required_argument, NULL, OPT_CB_RATE},
        {"cb-burst", required_argument, NULL, OPT_CB_BURST},
        {"cb-max-timeout", required_argument, NULL, OPT_CB_MAX_TIMEOUT},
        {"cb-max-pending", required_argument, NULL, OPT_CB_MAX_PENDING},
        {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
        {"no-udp", no_argument, NULL, OPT_NO_UDP},
        {"no-tcp", no_argument, NULL, OPT_NO_TCP},
        {NULL, 0, NULL, 0},
    };
    ntcp_stuntd_config cfg;
    ntcp_stuntd_config_init(&cfg);
    const char *config = NULL, *user = NULL;
    /* Addresses from the command line are applied after the config file. */
    const char *addr_arg[8];
    bool addr_alt[8];
    int naddr = 0;
    char err[256];
    double d;
    int c;
    while ((c = getopt_long(argc, argv, "p:a:c:u:vqhV", opts, NULL)) != -1) {
        switch (c) {
        case 'p':
        case 'a':
            if (naddr == 8) {
                fprintf(stderr, "ntcp-stuntd: too many addresses\n");
                return EXIT_USAGE;
            }
            addr_alt[naddr] = c == 'a';
            addr_arg[naddr++] = optarg;
            break;
        case 'c':
            config = optarg;
            break;
        case 'u':
            user = optarg;
            break;
        case 'v':
            if (cfg.log_level < NTCP_LOG_DEBUG)
                cfg.log_level++;
            break;
        case 'q':
            cfg.log_level = NTCP_LOG_WARN;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("ntcp-stuntd %s\n", ntcp_version());
            return 0;
        case OPT_UDP_RATE:
            if (parse_double("--udp-rate", optarg, 1e9, &cfg.udp_rate) < 0)
                return EXIT_USAGE;
            break;
        case OPT_UDP_BURST:
            if (parse_u32("--udp-burst", optarg, 1, 1000000000, &cfg.udp_burst) < 0)
                return EXIT_USAGE;
            break;
        case OPT_RATE_SLOTS:
            if (parse_u32("--rate-slots", optarg, 4, 1u << 26, &cfg.rate_slots) < 0)
                return EXIT_USAGE;
            break;
        case OPT_TCP_IDLE:
            if (parse_double("--tcp-idle", optarg, 86400, &d) < 0)
                return EXIT_USAGE;
            cfg.tcp_idle_ms = (uint32_t)(d * 1000);
            break;
        case OPT_MAX_CONNS:
            if (parse_u32("--max-conns", optarg, 1, 10000000, &cfg.tcp_max_conns) < 0)
                return EXIT_USAGE;
            break;
        case OPT_CB_RATE:
            if (parse_double("--cb-rate", optarg, 1e6, &cfg.cb_rate) < 0)
                return EXIT_USAGE;
            break;
        case OPT_CB_BURST:
            if (parse_u32("--cb-burst", optarg, 1, 1000000, &cfg.cb_burst) < 0)
                return EXIT_USAGE;
            break;
        case OPT_CB_MAX_TIMEOUT:
            if (parse_u32("--cb-max-timeout", optarg, 100, 600000, &cfg.cb_max_timeout_ms) < 0)
                return EXIT_USAGE;
            break;
        case OPT_CB_MAX_PENDING:
            if (parse_u32("--cb-max-pending", optarg, 1, 100000, &cfg.cb_max_pending) < 0)
                return EXIT_USAGE;
            break;
        case OPT_LOG_LEVEL: {
            static const char *const names[] = {"error", "warn", "info", "debug"};
            int lvl = -1;
            for (int i = 0; i < 4; i++)
                if (strcmp(optarg, names[i]) == 0)
                    lvl = i;
            if (lvl < 0) {
                fprintf(stderr, "ntcp-stuntd: --log-level: error, warn, info or debug\n");
                return EXIT_USAGE;
            }
            cfg.log_level = lvl;
            break;
        }
        case OPT_NO_UDP:
            cfg.udp = false;
            break;
        case OPT_NO_TCP:
            cfg.tcp = false;
            break;
        default:
            fprintf(stderr, "Try 'ntcp-stuntd --help'.\n");
            return EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "ntcp-stuntd: unexpected argument: %s\nTry 'ntcp-stuntd --help'.\n",
                argv[optind]);
        return EXIT_USAGE;
    }
    if (config && ntcp_stuntd_config_load(&cfg, config, err, sizeof(err)) < 0) {
        fprintf(stderr, "ntcp-stuntd: %s\n", err);
        return EXIT_USAGE;
    }
    for (int i = 0; i < naddr; i++) {
        if (ntcp_stuntd_config_set_addr(&cfg, addr_alt[i], addr_arg[i]) < 0) {
            fprintf(stderr, "ntcp-stuntd: %s: not a numeric IP[:PORT] or [IPv6][:PORT]: %s\n",
                    addr_alt[i] ? "--alternate" : "--primary", addr_arg[i]);
            return EXIT_USAGE;
        }
    }
    if (ntcp_stuntd_config_check(&cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "ntcp-stuntd: %s\n", err);
        return EXIT_USAGE;
    }
    if (!user && geteuid() == 0)
        user = "nobody";

    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0) {
        fprintf(stderr, "ntcp-stuntd: cannot create the event loop\n");
        return EXIT_START;
    }
    struct app app = {0};
    int rc = ntcp_stuntd_start(&loop, &cfg, &app.srv, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "ntcp-stuntd: %s\n", err);
        uv_loop_close(&loop);
        return EXIT_START;
    }
    if (user && ntcp_stuntd_drop_privileges(app.srv, user, err, sizeof(err)) < 0) {
        fprintf(stderr, "ntcp-stuntd: %s\n", err);
        return EXIT_START;
    }
    uv_signal_init(&loop, &app.sigint);
    uv_signal_init(&loop, &app.sigterm);
    app.sigint.data = app.sigterm.data = &app;
    uv_signal_start(&app.sigint, on_signal, SIGINT);
    uv_signal_start(&app.sigterm, on_signal, SIGTERM);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return 0;
}
