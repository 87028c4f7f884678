/*
 * config.c: ntcp-stuntd's configuration: defaults, address parsing, the
 * [stunt] section of an INI file (NTCP 0.2's keys) and the sanity checks.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <ini.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "addr.h"
#include "stuntd_int.h"

void ntcp_stuntd_config_init(ntcp_stuntd_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->udp = cfg->tcp = true;
    /* Enough for a NAT discovery from behind a large NAT, far too little
     * to make the server worth using as a reflector. */
    cfg->udp_rate = 100;
    cfg->udp_burst = 200;
    cfg->rate_slots = 65536;
    cfg->tcp_idle_ms = 30000;
    cfg->tcp_max_conns = 1024;
    /* A connect-back only ever goes to the requester itself (docs/protocol.md
     * 3.6): the bucket bounds the server's work, not a reflection. One
     * discovery uses 4 per family on a clean link and up to 10 on a lossy
     * one; 40 lets a host run several in a row (an application restarted,
     * a few on one host or behind one NAT) and 2/s refills one a
     * discovery's worth every few seconds. */
    cfg->cb_rate = 2;
    cfg->cb_burst = 40;
    cfg->cb_max_timeout_ms = 10000;
    cfg->cb_max_pending = 256;
    cfg->log_level = NTCP_LOG_INFO;
    cfg->log_prefix = "ntcp-stuntd";
}

static int parse_port(const char *s, uint16_t *port)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end != '\0' || v < 0 || v > 65535)
        return NTCP_EINVAL;
    *port = (uint16_t)v;
    return 0;
}

int ntcp_stuntd_parse_addr(const char *s, uint16_t default_port, struct sockaddr_storage *out)
{
    return ntcp_parse_addr(s, default_port, out);
}

int ntcp_stuntd_config_set_addr(ntcp_stuntd_config *cfg, bool alternate, const char *s)
{
    struct sockaddr_storage ss;
    uint16_t def = alternate ? NTCP_STUNTD_DEFAULT_ALT_PORT : NTCP_STUNTD_DEFAULT_PORT;
    if (ntcp_stuntd_parse_addr(s, def, &ss) < 0)
        return NTCP_EINVAL;
    int fi = ss.ss_family == AF_INET6 ? NTCP_STUNTD_V6 : NTCP_STUNTD_V4;
    if (alternate)
        cfg->alternate[fi] = ss;
    else
        cfg->primary[fi] = ss;
    return 0;
}

/* NTCP 0.2 gives each IP and port as separate keys; they are gathered here
 * and turned into addresses once the whole file is read. */
struct ini_state {
    char ip[2][INET6_ADDRSTRLEN + 2];
    char port[2][8];
    bool have_ip[2], have_port[2];
    char bad[128];
};

static int stunt_ini_cb(void *user, const char *section, const char *name, const char *value)
{
    struct ini_state *st = user;
    if (strcasecmp(section, "stunt") != 0)
        return 1;
    int which = -1, isport = 0;
    if (strcasecmp(name, "stuntIp") == 0)
        which = 0;
    else if (strcasecmp(name, "otherStuntIp") == 0)
        which = 1;
    else if (strcasecmp(name, "stuntPort") == 0)
        which = 0, isport = 1;
    else if (strcasecmp(name, "otherStuntPort") == 0)
        which = 1, isport = 1;
    if (which < 0)
        return 1; /* other NTCP 0.2 keys live here too */
    if (isport) {
        uint16_t p;
        if (parse_port(value, &p) < 0) {
            snprintf(st->bad, sizeof(st->bad), "%s: not a port: %s", name, value);
            return 0;
        }
        snprintf(st->port[which], sizeof(st->port[which]), "%u", p);
        st->have_port[which] = true;
    } else {
        if (strlen(value) >= sizeof(st->ip[which])) {
            snprintf(st->bad, sizeof(st->bad), "%s: not an IP address", name);
            return 0;
        }
        snprintf(st->ip[which], sizeof(st->ip[which]), "%s", value);
        st->have_ip[which] = true;
    }
    return 1;
}

int ntcp_stuntd_config_load(ntcp_stuntd_config *cfg, const char *path, char *err, size_t errlen)
{
    struct ini_state st;
    memset(&st, 0, sizeof(st));
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return NTCP_ESYS;
    }
    int line = ini_parse_file(f, stunt_ini_cb, &st);
    fclose(f);
    if (line != 0) {
        snprintf(err, errlen, "%s:%d: %s", path, line, st.bad[0] ? st.bad : "syntax error");
        return NTCP_ECONFIG;
    }
    for (int which = 0; which < 2; which++) {
        if (!st.have_ip[which]) {
            if (st.have_port[which]) {
                snprintf(err, errlen, "%s: %s without %s", path,
                         which ? "otherStuntPort" : "stuntPort",
                         which ? "otherStuntIp" : "stuntIp");
                return NTCP_ECONFIG;
            }
            continue;
        }
        struct sockaddr_storage ss;
        uint16_t port = which ? NTCP_STUNTD_DEFAULT_ALT_PORT : NTCP_STUNTD_DEFAULT_PORT;
        if (st.have_port[which])
            parse_port(st.port[which], &port);
        if (ntcp_stuntd_parse_addr(st.ip[which], port, &ss) < 0) {
            snprintf(err, errlen, "%s: %s: not an IP address: %s", path,
                     which ? "otherStuntIp" : "stuntIp", st.ip[which]);
            return NTCP_ECONFIG;
        }
        /* A port in the IP value ("1.2.3.4:5") wins only when no port key. */
        if (st.have_port[which]) {
            if (ss.ss_family == AF_INET6)
                ((struct sockaddr_in6 *)&ss)->sin6_port = htons(port);
            else
                ((struct sockaddr_in *)&ss)->sin_port = htons(port);
        }
        int fi = ss.ss_family == AF_INET6 ? NTCP_STUNTD_V6 : NTCP_STUNTD_V4;
        if (which)
            cfg->alternate[fi] = ss;
        else
            cfg->primary[fi] = ss;
    }
    return 0;
}

int ntcp_stuntd_config_check(const ntcp_stuntd_config *cfg, char *err, size_t errlen)
{
    static const char *const fam[] = {"IPv4", "IPv6"};
    int served = 0;
    for (int fi = 0; fi < NTCP_STUNTD_NFAM; fi++) {
        const struct sockaddr_storage *p = &cfg->primary[fi], *a = &cfg->alternate[fi];
        if (p->ss_family == 0 && a->ss_family == 0)
            continue;
        if (p->ss_family == 0 || a->ss_family == 0) {
            snprintf(err, errlen, "%s: both a primary and an alternate address are needed",
                     fam[fi]);
            return NTCP_ECONFIG;
        }
        if (ntcp_sockaddr_same_ip((const struct sockaddr *)p, (const struct sockaddr *)a)) {
            snprintf(err, errlen, "%s: the primary and alternate addresses must differ", fam[fi]);
            return NTCP_ECONFIG;
        }
        uint16_t pp = ntcp_sa_port(p), ap = ntcp_sa_port(a);
        if (pp == ap && pp != 0) {
            snprintf(err, errlen, "%s: the primary and alternate ports must differ (both %u)",
                     fam[fi], pp);
            return NTCP_ECONFIG;
        }
        served++;
    }
    if (!served) {
        snprintf(err, errlen, "no addresses: give --primary and --alternate, or --config");
        return NTCP_ECONFIG;
    }
    if (!cfg->udp && !cfg->tcp) {
        snprintf(err, errlen, "neither UDP nor TCP is enabled");
        return NTCP_ECONFIG;
    }
    if (cfg->udp_rate < 0 || cfg->cb_rate < 0 || cfg->tcp_max_conns == 0 ||
        cfg->cb_max_pending == 0 || cfg->rate_slots == 0) {
        snprintf(err, errlen, "a limit is out of range");
        return NTCP_ECONFIG;
    }
    return 0;
}
