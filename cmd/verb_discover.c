/*
 * verb_discover.c: `ntcp discover`, the NAT behaviour report: a table for
 * people, or JSON for programs (schema in docs/discover.md).
 */
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ntcp.h"
#include "stun.h"
#include "verbs.h"

/* Exit codes of this verb, documented in its help and ntcp(1). */
enum { D_OK = 0, D_USAGE = 1, D_UNREACHABLE = 2, D_PARTIAL = 3 };

void ntcp_usage_discover(FILE *f)
{
    fprintf(f,
            "usage: ntcp discover [OPTIONS]\n"
            "\n"
            "Find out what NAT or firewall sits between this host and the internet, by\n"
            "probing an ntcp-stuntd server (two addresses, two ports, UDP and TCP):\n"
            "whether there is a NAT, its mapping and filtering (RFC 4787/5382 terms, the\n"
            "classic cone names and NTCP 0.2's names), port allocation and delta,\n"
            "hairpinning, and what it does with an unsolicited TCP SYN. What cannot be\n"
            "determined is reported as unknown, with the reason.\n"
            "\n"
            "Options:\n"
            "  -s, --server HOST[:PORT]  server to probe (default port 3478); repeat for a\n"
            "                            list tried in order\n"
            "  -c, --config FILE         read servers from FILE (stun_server or NTCP 0.2's\n"
            "                            WellKnownStunServer); used when no --server.\n"
            "                            Default: $NTCP_CONFIG, else ~/.config/ntcp/ntcp.conf\n"
            "                            ($XDG_CONFIG_HOME), else /etc/ntcp/ntcp.conf\n"
            "  -u, --udp                 probe UDP only\n"
            "  -t, --tcp                 probe TCP only\n"
            "  -4, -6                    probe IPv4 only, IPv6 only (default: both)\n"
            "  -T, --timeout MS          give up after MS milliseconds (default 10000,\n"
            "                            200000 with --lifetime)\n"
            "  -l, --lifetime            also measure how long an idle UDP mapping lives\n"
            "                            (idle times up to 160 s are tested: ~3 minutes)\n"
            "  -j, --json                print one JSON object (docs/discover.md)\n"
            "  -h, --help                show this help\n"
            "\n"
            "Exit codes: 0 everything determined, 1 usage or configuration error,\n"
            "2 no server answered, 3 partial result (some fields unknown).\n");
}

static void json_str(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

static const char *addr_or_empty(const struct sockaddr_storage *ss, char *buf, size_t len)
{
    if (ss->ss_family != AF_INET && ss->ss_family != AF_INET6)
        return "";
    return ntcp_addr_str((const struct sockaddr *)ss, buf, len);
}

static void json_behaviour(const char *key, const ntcp_nat_behaviour_t *b, bool probed, bool tcp)
{
    char a[80];
    printf("\"%s\":", key);
    if (!probed) {
        printf("{\"probed\":false,\"why\":");
        json_str(b->why);
        printf("}");
        return;
    }
    printf("{\"probed\":true,\"reach\":\"%s\",\"mapping\":\"%s\",\"filtering\":\"%s\","
           "\"ports\":\"%s\",\"delta\":%d,\"hairpin\":\"%s\",",
           ntcp_reach_name(b->reach), ntcp_dep_name(b->mapping), ntcp_dep_name(b->filtering),
           ntcp_ports_name(b->ports), b->delta, ntcp_tristate_name(b->hairpin));
    if (tcp)
        printf("\"syn\":\"%s\",", ntcp_syn_name(b->syn));
    else
        printf("\"syn\":null,");
    printf("\"lifetime_s\":%d,\"classic\":\"%s\",\"ntcp02\":\"%s\",\"local\":", b->lifetime_s,
           ntcp_classic_name(b), ntcp_legacy_name(ntcp_legacy_type(b)));
    json_str(addr_or_empty(&b->local, a, sizeof a));
    printf(",\"mapped\":");
    json_str(addr_or_empty(&b->mapped, a, sizeof a));
    printf(",\"why\":");
    json_str(b->why);
    printf("}");
}

typedef struct column {
    const char *title;
    const ntcp_nat_behaviour_t *b;
    bool tcp;
} column;

static void row(const char *label, const column *cols, int n, const char *(*cell)(const column *, char *, size_t))
{
    char buf[96];
    printf("  %-12s", label);
    for (int i = 0; i < n; i++)
        printf("  %-30s", cell(&cols[i], buf, sizeof buf));
    printf("\n");
}

static const char *c_title(const column *c, char *b, size_t l) { (void)b; (void)l; return c->title; }
static const char *c_reach(const column *c, char *b, size_t l) { (void)b; (void)l; return ntcp_reach_name(c->b->reach); }
static const char *c_classic(const column *c, char *b, size_t l) { (void)b; (void)l; return ntcp_classic_name(c->b); }
static const char *c_legacy(const column *c, char *b, size_t l)
{
    ntcp_legacy_type_t t = ntcp_legacy_type(c->b);
    if (t == NTCP_LEGACY_ADDRESS_PORT_DEPENDENT && c->b->ports == NTCP_PORTS_SEQUENTIAL) {
        snprintf(b, l, "%s, delta %d", ntcp_legacy_name(t), c->b->delta);
        return b;
    }
    return ntcp_legacy_name(t);
}
static const char *c_mapping(const column *c, char *b, size_t l) { (void)b; (void)l; return ntcp_dep_name(c->b->mapping); }
static const char *c_filtering(const column *c, char *b, size_t l) { (void)b; (void)l; return ntcp_dep_name(c->b->filtering); }
static const char *c_ports(const column *c, char *b, size_t l)
{
    if (c->b->ports == NTCP_PORTS_SEQUENTIAL) {
        snprintf(b, l, "sequential, delta %d", c->b->delta);
        return b;
    }
    return ntcp_ports_name(c->b->ports);
}
static const char *c_hairpin(const column *c, char *b, size_t l) { (void)b; (void)l; return ntcp_tristate_name(c->b->hairpin); }
static const char *c_syn(const column *c, char *b, size_t l) { (void)b; (void)l; return c->tcp ? ntcp_syn_name(c->b->syn) : "-"; }
static const char *c_mapped(const column *c, char *b, size_t l) { const char *s = addr_or_empty(&c->b->mapped, b, l); return *s ? s : "-"; }
static const char *c_local(const column *c, char *b, size_t l) { const char *s = addr_or_empty(&c->b->local, b, l); return *s ? s : "-"; }

static const char *c_lifetime(const column *c, char *b, size_t l)
{
    if (c->tcp)
        return "-";
    if (c->b->lifetime_s <= 0)
        return "unknown";
    snprintf(b, l, ">= %d s", c->b->lifetime_s);
    return b;
}

static void print_table(const ntcp_nat_profile_t *p, int status)
{
    column cols[4];
    int n = 0;
    const struct { unsigned fam, tr; const char *title; const ntcp_nat_behaviour_t *b; bool tcp; } all[] = {
        {NTCP_DISCOVER_IPV4, NTCP_DISCOVER_UDP, "UDP/IPv4", &p->udp4, false},
        {NTCP_DISCOVER_IPV4, NTCP_DISCOVER_TCP, "TCP/IPv4", &p->tcp4, true},
        {NTCP_DISCOVER_IPV6, NTCP_DISCOVER_UDP, "UDP/IPv6", &p->udp6, false},
        {NTCP_DISCOVER_IPV6, NTCP_DISCOVER_TCP, "TCP/IPv6", &p->tcp6, true},
    };
    printf("server %s: %s in %u ms (round trip %u ms)\n", p->server[0] ? p->server : "(none answered)",
           status == 0 ? "complete" : status == NTCP_EPROTO ? "partial" : "unreachable", p->elapsed_ms,
           p->rtt_ms);
    for (int i = 0; i < 4; i++)
        if ((p->flags & all[i].fam) && (p->flags & all[i].tr))
            cols[n++] = (column){all[i].title, all[i].b, all[i].tcp};
    if (n) {
        row("", cols, n, c_title);
        row("reach", cols, n, c_reach);
        row("NAT type", cols, n, c_classic);
        row("NTCP 0.2", cols, n, c_legacy);
        row("mapping", cols, n, c_mapping);
        row("filtering", cols, n, c_filtering);
        row("ports", cols, n, c_ports);
        row("hairpin", cols, n, c_hairpin);
        row("SYN answer", cols, n, c_syn);
        row("local", cols, n, c_local);
        row("mapped", cols, n, c_mapped);
        if (p->flags & NTCP_DISCOVER_LIFETIME)
            row("lifetime", cols, n, c_lifetime);
        for (int i = 0; i < n; i++)
            if (cols[i].b->why[0])
                printf("  %s notes: %s\n", cols[i].title, cols[i].b->why);
    }
    for (int i = 0; i < 4; i++)
        if (!((p->flags & all[i].fam) && (p->flags & all[i].tr)) && all[i].b->why[0] &&
            (i % 2 == 0))
            printf("  %s not probed: %s\n", all[i].fam == NTCP_DISCOVER_IPV4 ? "IPv4" : "IPv6",
                   all[i].b->why);
}

static void print_json(const ntcp_nat_profile_t *p, int status)
{
    printf("{\"version\":1,\"status\":\"%s\",\"server\":",
           status == 0 ? "complete" : status == NTCP_EPROTO ? "partial" : "unreachable");
    json_str(p->server);
    printf(",\"elapsed_ms\":%u,\"rtt_ms\":%u,", p->elapsed_ms, p->rtt_ms);
    bool v4 = p->flags & NTCP_DISCOVER_IPV4, v6 = p->flags & NTCP_DISCOVER_IPV6;
    bool udp = p->flags & NTCP_DISCOVER_UDP, tcp = p->flags & NTCP_DISCOVER_TCP;
    json_behaviour("udp4", &p->udp4, v4 && udp, false);
    putchar(',');
    json_behaviour("tcp4", &p->tcp4, v4 && tcp, true);
    putchar(',');
    json_behaviour("udp6", &p->udp6, v6 && udp, false);
    putchar(',');
    json_behaviour("tcp6", &p->tcp6, v6 && tcp, true);
    printf("}\n");
}

/* The configuration file used when none is named: the first that exists. */
const char *ntcp_cli_default_config(char *buf, size_t len)
{
    const char *env = getenv("NTCP_CONFIG");
    if (env && *env)
        return env;
    const char *xdg = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");
    if (xdg && *xdg)
        snprintf(buf, len, "%s/ntcp/ntcp.conf", xdg);
    else if (home && *home)
        snprintf(buf, len, "%s/.config/ntcp/ntcp.conf", home);
    else
        buf[0] = '\0';
    if (buf[0] && access(buf, R_OK) == 0)
        return buf;
    if (access("/etc/ntcp/ntcp.conf", R_OK) == 0)
        return "/etc/ntcp/ntcp.conf";
    return NULL;
}

int ntcp_verb_discover(int argc, char **argv)
{
    static const struct option opts[] = {
        {"server", required_argument, NULL, 's'}, {"config", required_argument, NULL, 'c'},
        {"udp", no_argument, NULL, 'u'},          {"tcp", no_argument, NULL, 't'},
        {"timeout", required_argument, NULL, 'T'}, {"json", no_argument, NULL, 'j'},
        {"lifetime", no_argument, NULL, 'l'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0},
    };
    unsigned flags = 0;
    int timeout = 0;
    bool json = false;
    const char *config = NULL;
    const char *servers[16];
    size_t nservers = 0;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "s:c:utT:j46lh", opts, NULL)) != -1) {
        switch (c) {
        case 's':
            if (nservers == sizeof servers / sizeof servers[0]) {
                fprintf(stderr, "ntcp discover: at most 16 servers\n");
                return D_USAGE;
            }
            servers[nservers++] = optarg;
            break;
        case 'c': config = optarg; break;
        case 'u': flags |= NTCP_DISCOVER_UDP; break;
        case 't': flags |= NTCP_DISCOVER_TCP; break;
        case '4': flags |= NTCP_DISCOVER_IPV4; break;
        case '6': flags |= NTCP_DISCOVER_IPV6; break;
        case 'j': json = true; break;
        case 'l': flags |= NTCP_DISCOVER_LIFETIME; break;
        case 'T': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || v < 100 || v > 600000) {
                fprintf(stderr, "ntcp discover: --timeout takes milliseconds, 100 to 600000\n");
                return D_USAGE;
            }
            timeout = (int)v;
            break;
        }
        case 'h': ntcp_usage_discover(stdout); return D_OK;
        default: ntcp_usage_discover(stderr); return D_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "ntcp discover: unexpected argument '%s'\n", argv[optind]);
        return D_USAGE;
    }
    if (timeout == 0)
        timeout = (flags & NTCP_DISCOVER_LIFETIME) ? 200000 : 10000;
    ntcp_t *ctx = NULL;
    int rc;
    char confbuf[4096];
    if (nservers == 0 && !config && !(config = ntcp_cli_default_config(confbuf, sizeof confbuf))) {
        fprintf(stderr, "ntcp discover: no server: give --server HOST, --config FILE, or put\n"
                        "  stun_server = HOST[:PORT] in $NTCP_CONFIG, ~/.config/ntcp/ntcp.conf or\n"
                        "  /etc/ntcp/ntcp.conf\n");
        return D_USAGE;
    }
    if (nservers == 0 && config) {
        rc = ntcp_new_from_file(config, &ctx);
        if (rc < 0) {
            fprintf(stderr, "ntcp discover: cannot use %s: %s\n", config, ntcp_strerror(rc));
            return D_USAGE;
        }
    } else {
        ntcp_config_t cfg;
        ntcp_config_init(&cfg);
        cfg.stun_servers = servers;
        cfg.n_stun_servers = nservers;
        rc = ntcp_new(&cfg, &ctx);
        if (rc < 0) {
            fprintf(stderr, "ntcp discover: bad server address: %s\n", ntcp_strerror(rc));
            return D_USAGE;
        }
    }
    ntcp_nat_profile_t p;
    memset(&p, 0, sizeof p);
    rc = ntcp_discover_ex(ctx, flags, &p, timeout);
    ntcp_free(ctx);
    if (rc == NTCP_ECONFIG) {
        fprintf(stderr, "ntcp discover: no server: give --server HOST or --config FILE\n");
        return D_USAGE;
    }
    if (rc < 0 && rc != NTCP_EPROTO && rc != NTCP_EUNREACHABLE) {
        fprintf(stderr, "ntcp discover: %s\n", ntcp_strerror(rc));
        return D_UNREACHABLE;
    }
    if (json)
        print_json(&p, rc);
    else
        print_table(&p, rc);
    return rc == 0 ? D_OK : rc == NTCP_EPROTO ? D_PARTIAL : D_UNREACHABLE;
}
