/*
 * verb_peer.c: `ntcp listen` and `ntcp connect`, nc through NATs: stdin goes
 * to the peer, the peer goes to stdout. Both register a name with the
 * connection broker; `connect` asks for the peer by name, and the library
 * (ntcp_connect / ntcp_accept) traverses the NATs and verifies the peer's
 * key before a byte of the application's flows.
 */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "addr.h"
#include "ntcp.h"
#include "verbs.h"

/* Exit codes, documented in the help and ntcp(1). */
enum {
    P_OK = 0,
    P_USAGE = 1,       /* usage or configuration error */
    P_UNREACHABLE = 2, /* no connection: NATs not traversable, timed out, broker unreachable */
    P_NOPEER = 3,      /* the broker knows no such peer */
    P_REFUSED = 4,     /* refused: by the peer's policy, the broker, or the key proof */
    P_IO = 5,          /* connected, then a read or write failed */
};

static const char *const OPTIONS_HELP =
    "  -i, --id NAME            this peer's name at the broker (or `name` in the\n"
    "                           configuration file)\n"
    "  -b, --broker HOST:PORT   the connection broker (or `broker` / NTCP 0.2's\n"
    "                           ConnectionBroker in the configuration file);\n"
    "                           tls://HOST:PORT for TLS; a list \"a:P, b:P\" (the\n"
    "                           nodes of a cluster): one is used, the next on failure\n"
    "      --broker-ca FILE     TLS: the CAs that may sign the broker's certificate\n"
    "      --broker-pin PIN     TLS: sha256/BASE64 of the broker's public key\n"
    "  -s, --stun HOST[:PORT]   ntcp-stuntd server for NAT discovery (default port\n"
    "                           3478); repeat for a list. Without one the NAT is not\n"
    "                           probed and fewer methods are tried\n"
    "  -c, --config FILE        configuration file (docs/configuration.md). Default:\n"
    "                           $NTCP_CONFIG, else ~/.config/ntcp/ntcp.conf, else\n"
    "                           /etc/ntcp/ntcp.conf, when readable\n"
    "  -k, --key FILE           Ed25519 identity, made on first use with mode 0600\n"
    "                           (default: key_file in the configuration, else\n"
    "                           ~/.config/ntcp/NAME.key)\n"
    "  -t, --timeout MS         give up after MS milliseconds (default 30000)\n"
    "  -R, --relay MODE         the TURN relay the broker offers (docs/relay.md):\n"
    "                           auto (when no direct method works), never, always\n"
    "                           (or `relay` in the configuration; default auto)\n"
    "  -M, --methods LIST       the TCP methods this end may try, e.g. stunt2,p2pnat\n"
    "                           (names as --json reports them; or `methods` in the\n"
    "                           configuration; default all)\n"
    "  -j, --json               print one JSON status line on stderr (method, times,\n"
    "                           addresses, each attempt; docs/traversal.md); listen\n"
    "                           first prints {\"listening\":\"NAME\"} once registered\n"
    "  -q, --quiet              no progress lines on stderr\n"
    "  -u, --udp                UDP instead of TCP: each line of stdin is one datagram,\n"
    "                           each datagram from the peer one line of stdout\n"
    "  -w, --wait MS            (UDP) after the end of stdin, go on printing the\n"
    "                           peer's datagrams until MS ms pass without one (2000)\n"
    "  -I, --interval MS        (UDP) send at most one datagram every MS ms (0)\n"
    "  -h, --help               show this help\n";

static const char *const EXIT_HELP =
    "Exit codes: 0 success, 1 usage or configuration error, 2 no connection (NATs\n"
    "not traversable, timed out, broker unreachable), 3 unknown peer, 4 refused (by\n"
    "the peer, the broker, or a failed key proof), 5 I/O error after connecting.\n";

void ntcp_usage_listen(FILE *f)
{
    fprintf(f,
            "usage: ntcp listen --id NAME [OPTIONS]\n"
            "\n"
            "Register NAME with the connection broker and wait for a peer's `ntcp connect`;\n"
            "then copy stdin to the peer and the peer to stdout, like nc -l, until both\n"
            "directions have ended (the end of stdin half-closes the connection). The peer\n"
            "has proved it holds the key the broker bound to its name.\n"
            "\n"
            "Options:\n"
            "%s"
            "  -K, --keep-open          after a connection ends, wait for the next one\n"
            "  -a, --allow NAME         accept connections from NAME only (repeatable)\n"
            "\n%s",
            OPTIONS_HELP, EXIT_HELP);
}

void ntcp_usage_connect(FILE *f)
{
    fprintf(f,
            "usage: ntcp connect --id NAME [OPTIONS] PEER\n"
            "\n"
            "Register NAME with the connection broker, open a TCP connection to the peer\n"
            "registered as PEER through whatever NATs sit between (same LAN, direct,\n"
            "reversal, STUNT#2, P2PNAT, port prediction), check that it holds PEER's key,\n"
            "then copy stdin to the peer and the peer to stdout, like nc.\n"
            "\n"
            "Options:\n"
            "%s"
            "\n%s",
            OPTIONS_HELP, EXIT_HELP);
}

typedef struct popts {
    bool listen;
    const char *id, *broker, *config, *key, *peer, *broker_ca, *broker_pin;
    const char *stun[16];
    size_t nstun;
    const char *allow[16];
    size_t nallow;
    int timeout_ms;
    bool json, quiet, keep_open, udp;
    int wait_ms, interval_ms;
    int relay; /* -1: not given */
    const char *methods; /* NULL: not given */
} popts;

static int usage_error(const popts *o, const char *fmt, const char *arg)
{
    fprintf(stderr, "ntcp %s: ", o->listen ? "listen" : "connect");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nTry 'ntcp %s --help'.\n", o->listen ? "listen" : "connect");
    return P_USAGE;
}

static int exit_code_of(int err)
{
    switch (err) {
    case NTCP_ENOPEER: return P_NOPEER;
    case NTCP_EREFUSED:
    case NTCP_EINTEGRITY: return P_REFUSED;
    case NTCP_ECONFIG:
    case NTCP_EINVAL: return P_USAGE;
    default: return P_UNREACHABLE;
    }
}

static int parse(int argc, char **argv, popts *o)
{
    static const struct option lo[] = {
        {"id", required_argument, NULL, 'i'},      {"broker", required_argument, NULL, 'b'},
        {"stun", required_argument, NULL, 's'},    {"config", required_argument, NULL, 'c'},
        {"key", required_argument, NULL, 'k'},     {"timeout", required_argument, NULL, 't'},
        {"json", no_argument, NULL, 'j'},          {"quiet", no_argument, NULL, 'q'},
        {"keep-open", no_argument, NULL, 'K'},     {"allow", required_argument, NULL, 'a'},
        {"help", no_argument, NULL, 'h'},          {"broker-ca", required_argument, NULL, 'C'},
        {"broker-pin", required_argument, NULL, 'P'}, {"udp", no_argument, NULL, 'u'},
        {"wait", required_argument, NULL, 'w'},    {"interval", required_argument, NULL, 'I'},
        {"relay", required_argument, NULL, 'R'},  {"methods", required_argument, NULL, 'M'},
        {NULL, 0, NULL, 0}};
    o->timeout_ms = 30000;
    o->wait_ms = 2000;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, o->listen ? "i:b:s:c:k:t:jqKa:huw:I:R:M:" : "i:b:s:c:k:t:jqhuw:I:R:M:", lo,
                            NULL)) != -1) {
        switch (c) {
        case 'i': o->id = optarg; break;
        case 'b': o->broker = optarg; break;
        case 'C': o->broker_ca = optarg; break;
        case 'P': o->broker_pin = optarg; break;
        case 's':
            if (o->nstun == sizeof o->stun / sizeof o->stun[0])
                return usage_error(o, "too many --stun servers (%s)", "16 at most");
            o->stun[o->nstun++] = optarg;
            break;
        case 'c': o->config = optarg; break;
        case 'k': o->key = optarg; break;
        case 't': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || v <= 0 || v > 3600000)
                return usage_error(o, "--timeout wants milliseconds, 1 to 3600000: %s", optarg);
            o->timeout_ms = (int)v;
            break;
        }
        case 'j': o->json = true; break;
        case 'u': o->udp = true; break;
        case 'w':
        case 'I': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || v < 0 || v > 3600000)
                return usage_error(o, c == 'w' ? "--wait wants milliseconds, 0 to 3600000: %s"
                                               : "--interval wants milliseconds, 0 to 3600000: %s",
                                   optarg);
            if (c == 'w')
                o->wait_ms = (int)v;
            else
                o->interval_ms = (int)v;
            break;
        }
        case 'q': o->quiet = true; break;
        case 'M': o->methods = optarg; break;
        case 'R':
            if (!strcmp(optarg, "auto"))
                o->relay = NTCP_RELAY_AUTO;
            else if (!strcmp(optarg, "never"))
                o->relay = NTCP_RELAY_NEVER;
            else if (!strcmp(optarg, "always"))
                o->relay = NTCP_RELAY_ALWAYS;
            else
                return usage_error(o, "--relay wants auto, never or always: %s", optarg);
            break;
        case 'K':
            if (!o->listen)
                return usage_error(o, "%s is for ntcp listen", "--keep-open");
            o->keep_open = true;
            break;
        case 'a':
            if (!o->listen)
                return usage_error(o, "%s is for ntcp listen", "--allow");
            if (o->nallow == sizeof o->allow / sizeof o->allow[0])
                return usage_error(o, "too many --allow names (%s)", "16 at most");
            o->allow[o->nallow++] = optarg;
            break;
        case 'h':
            if (o->listen)
                ntcp_usage_listen(stdout);
            else
                ntcp_usage_connect(stdout);
            return -1;
        default:
            fprintf(stderr, "Try 'ntcp %s --help'.\n", o->listen ? "listen" : "connect");
            return P_USAGE;
        }
    }
    if (o->listen && optind != argc)
        return usage_error(o, "unexpected argument %s", argv[optind]);
    if (!o->listen) {
        if (optind != argc - 1)
            return usage_error(o, "%s", optind == argc ? "which PEER?" : "one PEER only");
        o->peer = argv[optind];
    }
    return 0;
}

/* Makes the context: the configuration file first, then the options over it. */
static int make_context(popts *o, ntcp_t **out, char *keybuf, size_t keylen)
{
    char confbuf[512];
    const char *config = o->config ? o->config : ntcp_cli_default_config(confbuf, sizeof confbuf);
    ntcp_t *file_ctx = NULL;
    if (config) {
        int rc = ntcp_new_from_file(config, &file_ctx);
        if (rc < 0)
            return usage_error(o, "cannot use the configuration file %s", config);
    }
    const char *stun[32];
    size_t n = 0;
    for (size_t i = 0; i < o->nstun; i++)
        stun[n++] = o->stun[i];
    /* The file's servers when no --stun was given: all of them (up to 32). */
    for (size_t i = 0; o->nstun == 0 && file_ctx && i < 32 && ntcp_get_stun_server(file_ctx, i);
         i++)
        stun[n++] = ntcp_get_stun_server(file_ctx, i);
    ntcp_config_t cfg;
    ntcp_config_init(&cfg);
    cfg.stun_servers = stun;
    cfg.n_stun_servers = n;
    cfg.broker = o->broker ? o->broker : file_ctx ? ntcp_get_broker(file_ctx) : NULL;
    cfg.name = o->id ? o->id : file_ctx ? ntcp_get_name(file_ctx) : NULL;
    cfg.key_file = o->key ? o->key : file_ctx ? ntcp_get_key_file(file_ctx) : NULL;
    /* TLS: from the file unless the options say otherwise. */
    cfg.broker_tls = file_ctx && !o->broker ? ntcp_get_broker_tls(file_ctx) : 0;
    cfg.broker_ca = o->broker_ca ? o->broker_ca : file_ctx ? ntcp_get_broker_ca(file_ctx) : NULL;
    cfg.broker_pin = o->broker_pin ? o->broker_pin
                                   : file_ctx ? ntcp_get_broker_pin(file_ctx) : NULL;
    cfg.broker_tls_insecure = file_ctx ? ntcp_get_broker_tls_insecure(file_ctx) : 0;
    if (o->broker_ca || o->broker_pin)
        cfg.broker_tls = 1;
    cfg.relay = o->relay >= 0 ? o->relay : file_ctx ? (int)ntcp_get_relay(file_ctx) : (int)NTCP_RELAY_AUTO;
    cfg.methods = o->methods ? o->methods : file_ctx ? ntcp_get_methods(file_ctx) : NULL;
    int code = P_OK;
    if (!cfg.name)
        code = usage_error(o, "no name: give --id NAME%s", " (or `name` in the configuration)");
    else if (!cfg.broker)
        code = usage_error(o, "no broker: give --broker HOST:PORT%s",
                           " (or `broker` in the configuration)");
    if (code == P_OK && !cfg.key_file) {
        /* ~/.config/ntcp/NAME.key: the name stays ours across runs. */
        const char *xdg = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");
        char dir[400];
        if (xdg && *xdg)
            snprintf(dir, sizeof dir, "%s/ntcp", xdg);
        else if (home && *home)
            snprintf(dir, sizeof dir, "%s/.config/ntcp", home);
        else
            dir[0] = '\0';
        if (dir[0]) {
            char parent[400];
            snprintf(parent, sizeof parent, "%s", dir);
            char *slash = strrchr(parent, '/');
            if (slash && slash != parent) {
                *slash = '\0';
                mkdir(parent, 0700);
            }
            mkdir(dir, 0700);
            snprintf(keybuf, keylen, "%s/%s.key", dir, cfg.name);
            cfg.key_file = keybuf;
        }
    }
    ntcp_t *ctx = NULL;
    if (code == P_OK) {
        int rc = ntcp_new(&cfg, &ctx);
        ntcp_config_t only;
        ntcp_config_init(&only);
        only.methods = cfg.methods;
        ntcp_t *probe = NULL;
        if (rc == NTCP_ECONFIG && cfg.methods && ntcp_new(&only, &probe) < 0)
            code = usage_error(o,
                               "unknown method in \"%s\" (methods: same-lan, direct, reversal, "
                               "stunt2, p2pnat, predict, stunt1, natblaster, birthday)",
                               cfg.methods);
        else if (rc < 0)
            code = usage_error(o, "invalid settings: %s", ntcp_strerror(rc));
        ntcp_free(probe);
    }
    ntcp_free(file_ctx);
    if (code != P_OK) {
        ntcp_free(ctx);
        return code;
    }
    *out = ctx;
    return P_OK;
}

/* stdin -> fd and fd -> stdout until both directions have ended: stdin's
 * end is sent as a half close (SHUT_WR), and the peer's end of stream does
 * not stop what we still have to send (the two sides' inputs end at
 * different times: `ntcp listen <file` and `ntcp connect </dev/null` must
 * copy the whole file). */
static int pump(int fd, bool stdin_open)
{
    char buf[16384];
    bool in_open = stdin_open, net_open = true;
    while (net_open || in_open) {
        struct pollfd p[2] = {{.fd = net_open ? fd : -1, .events = POLLIN},
                              {.fd = in_open ? 0 : -1, .events = POLLIN}};
        int n = poll(p, 2, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return P_IO;
        }
        if (p[0].revents) {
            ssize_t r = recv(fd, buf, sizeof buf, 0);
            if (r < 0 && (errno == EINTR || errno == EAGAIN))
                continue;
            if (r < 0 && errno != ECONNRESET)
                return P_IO;
            if (r <= 0) {
                if (r < 0) /* reset: nothing more goes either way */
                    return P_OK;
                net_open = false;
                continue;
            }
            for (ssize_t off = 0; off < r;) {
                ssize_t w = write(1, buf + off, (size_t)(r - off));
                if (w < 0 && errno != EINTR)
                    return P_IO;
                if (w > 0)
                    off += w;
            }
        }
        if (in_open && p[1].revents) {
            ssize_t r = read(0, buf, sizeof buf);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0) {
                in_open = false;
                shutdown(fd, SHUT_WR);
                continue;
            }
            for (ssize_t off = 0; off < r;) {
                ssize_t w = send(fd, buf + off, (size_t)(r - off), MSG_NOSIGNAL);
                if (w < 0 && errno != EINTR)
                    return P_IO;
                if (w > 0)
                    off += w;
            }
        }
    }
    return P_OK;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* UDP: each line of stdin one datagram (without its newline), at most one
 * every interval_ms; each datagram of the peer one line of stdout; ntcp's
 * own datagrams (keepalives, handshake repeats) are dropped. Ends wait_ms
 * after the end of stdin (and of what was queued from it) without a datagram
 * from the peer. */
static int pump_udp(int fd, bool stdin_open, int wait_ms, int interval_ms)
{
    static char line[65536];
    size_t have = 0;
    char buf[65536];
    bool in_open = stdin_open;
    uint64_t next_send = 0;
    for (;;) {
        /* A complete line (or, at the end of stdin, the rest) waiting to go? */
        char *nl = have ? memchr(line, '\n', have) : NULL;
        bool pending = nl || (!in_open && have > 0) || have == sizeof line;
        uint64_t now = now_ms();
        if (pending && now >= next_send) {
            size_t len = nl ? (size_t)(nl - line) : have;
            if (send(fd, line, len, 0) < 0 && errno != ECONNREFUSED && errno != EINTR)
                return P_IO;
            size_t used = nl ? len + 1 : len;
            memmove(line, line + used, have - used);
            have -= used;
            next_send = now + (uint64_t)interval_ms;
            continue;
        }
        int timeout = pending ? (int)(next_send - now) : in_open ? -1 : wait_ms;
        bool read_in = in_open && !pending;
        struct pollfd p[2] = {{.fd = fd, .events = POLLIN}, {.fd = read_in ? 0 : -1, .events = POLLIN}};
        int n = poll(p, 2, timeout);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return P_IO;
        }
        if (n == 0 && !pending)
            return P_OK; /* stdin done and the peer quiet for wait_ms */
        if (p[0].revents) {
            ssize_t r = recv(fd, buf, sizeof buf - 1, 0);
            if (r < 0) {
                if (errno == EINTR || errno == EAGAIN)
                    continue;
                return P_IO; /* ECONNREFUSED: the peer's port is gone */
            }
            if (!ntcp_udp_is_control(buf, (size_t)r)) {
                buf[r] = '\n';
                for (ssize_t off = 0; off < r + 1;) {
                    ssize_t w = write(1, buf + off, (size_t)(r + 1 - off));
                    if (w < 0 && errno != EINTR)
                        return P_IO;
                    if (w > 0)
                        off += w;
                }
            }
        }
        if (read_in && p[1].revents) {
            ssize_t r = read(0, line + have, sizeof line - have);
            if (r < 0 && errno == EINTR)
                continue;
            if (r > 0)
                have += (size_t)r;
            else
                in_open = false;
        }
    }
}

static void report(const popts *o, int status, const ntcp_conn_info_t *info)
{
    if (o->json) {
        char line[8192]; /* up to 16 attempts' reports */
        ntcp_conn_info_json(info, status, line, sizeof line);
        fprintf(stderr, "%s\n", line);
        return;
    }
    if (o->quiet && status >= 0)
        return;
    if (status < 0) {
        if (o->listen)
            fprintf(stderr, "ntcp listen: %s: %s\n", ntcp_strerror(status), info->detail);
        else
            fprintf(stderr, "ntcp connect: no connection to %s: %s: %s\n", info->peer,
                    ntcp_strerror(status), info->detail);
        return;
    }
    char loc[64] = "", rem[64] = "";
    ntcp_addr_str((const struct sockaddr *)&info->local, loc, sizeof loc);
    ntcp_addr_str((const struct sockaddr *)&info->remote, rem, sizeof rem);
    char via[80] = "";
    if (info->relay.ss_family) {
        char rb[64];
        snprintf(via, sizeof via, " through %s",
                 ntcp_addr_str((const struct sockaddr *)&info->relay, rb, sizeof rb));
    }
    fprintf(stderr, "ntcp: connected %s %s by %s%s in %lld ms (%s -> %s), key verified\n",
            info->initiator ? "to" : "from", info->peer, info->method, via,
            (long long)info->verified_ms, loc, rem);
}

static int policy_allow(ntcp_t *ctx, const char *peer, ntcp_transport_t t, void *user)
{
    (void)ctx;
    const popts *o = user;
    if (o->udp && t != NTCP_UDP)
        return 0; /* listen --udp: UDP paths only */
    if (o->nallow == 0)
        return 1;
    for (size_t i = 0; i < o->nallow; i++)
        if (!strcmp(o->allow[i], peer))
            return 1;
    return 0;
}

static int run(int argc, char **argv, bool listen)
{
    popts o;
    memset(&o, 0, sizeof o);
    o.listen = listen;
    o.relay = -1;
    int rc = parse(argc, argv, &o);
    if (rc != 0)
        return rc < 0 ? P_OK : rc;
    signal(SIGPIPE, SIG_IGN);
    ntcp_t *ctx = NULL;
    char keybuf[512];
    rc = make_context(&o, &ctx, keybuf, sizeof keybuf);
    if (rc != P_OK)
        return rc;
    int code = P_OK;
    ntcp_conn_info_t info;
    memset(&info, 0, sizeof info);
    info.size = sizeof info;
    if (listen) {
        if (o.nallow || o.udp)
            ntcp_set_policy(ctx, policy_allow, &o);
        int st = ntcp_listen(ctx, NULL, o.timeout_ms);
        if (st < 0) {
            fprintf(stderr, "ntcp listen: cannot register %s with %s: %s\n", ntcp_get_name(ctx),
                    ntcp_get_broker(ctx), ntcp_strerror(st));
            ntcp_free(ctx);
            return exit_code_of(st);
        }
        if (o.json) {
            /* Scripts learn that peers may connect now; the status line of
             * each connection follows. */
            fprintf(stderr, "{\"listening\":\"%s\"}\n", ntcp_get_name(ctx));
        } else if (!o.quiet) {
            ntcp_nat_profile_t prof;
            int ps = ntcp_get_profile(ctx, &prof);
            fprintf(stderr, "ntcp: listening as %s at %s (TCP NAT: %s)\n", ntcp_get_name(ctx),
                    ntcp_get_broker(ctx),
                    ps == NTCP_ECONFIG ? "not probed, no --stun" : ntcp_classic_name(&prof.tcp4));
        }
        bool stdin_open = true;
        do {
            int fd = ntcp_accept(ctx, &info, -1);
            if (fd < 0) {
                code = exit_code_of(fd);
                break;
            }
            report(&o, fd, &info);
            if (info.transport == NTCP_UDP) {
                code = pump_udp(fd, stdin_open, o.wait_ms, o.interval_ms);
                ntcp_udp_close(ctx, fd);
            } else {
                code = pump(fd, stdin_open);
                close(fd);
            }
            stdin_open = false; /* one stdin: the next peers only send */
        } while (o.keep_open && code == P_OK);
    } else {
        int fd = o.udp ? ntcp_udp_punch(ctx, o.peer, &info, o.timeout_ms)
                       : ntcp_connect(ctx, o.peer, &info, o.timeout_ms);
        report(&o, fd, &info);
        if (fd < 0) {
            code = exit_code_of(fd);
        } else if (o.udp) {
            code = pump_udp(fd, true, o.wait_ms, o.interval_ms);
            ntcp_udp_close(ctx, fd);
        } else {
            code = pump(fd, true);
            close(fd);
        }
    }
    ntcp_free(ctx);
    return code;
}

int ntcp_verb_listen(int argc, char **argv)
{
    return run(argc, argv, true);
}

int ntcp_verb_connect(int argc, char **argv)
{
    return run(argc, argv, false);
}
