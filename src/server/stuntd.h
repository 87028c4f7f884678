/*
 * stuntd.h: the STUN/STUNT server (ntcp-stuntd) as library code, so that the
 * program is a thin main() and tests can run the server in-process on their
 * own libuv loop. Protocol: docs/protocol.md; usage: docs/ntcp-stuntd.8.
 *
 * Ownership: ntcp_stuntd_config is a plain value owned by the caller; start()
 * copies what it needs (the strings too), so the config may be freed right
 * after. The ntcp_stuntd object is owned by the server itself once started:
 * ntcp_stuntd_stop() closes its handles and the memory is released when libuv
 * has closed the last of them (run the loop until it returns). The loop must
 * outlive the server. Not thread-safe: call everything from the loop's thread.
 */
#ifndef NTCP_STUNTD_H
#define NTCP_STUNTD_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "ntcp.h"

#define NTCP_STUNTD_DEFAULT_PORT 3478
#define NTCP_STUNTD_DEFAULT_ALT_PORT 3479

/* Address families: index into the config's primary[] and alternate[]. */
enum { NTCP_STUNTD_V4 = 0, NTCP_STUNTD_V6 = 1, NTCP_STUNTD_NFAM = 2 };

enum ntcp_log_level {
    NTCP_LOG_ERROR = 0,
    NTCP_LOG_WARN = 1,
    NTCP_LOG_INFO = 2,
    NTCP_LOG_DEBUG = 3,
};

typedef struct ntcp_stuntd_config {
    /* Per family: ss_family is 0 when that family is not served. A port of 0
     * asks for a free port (the same one on both IPs, UDP and TCP). */
    struct sockaddr_storage primary[NTCP_STUNTD_NFAM];
    struct sockaddr_storage alternate[NTCP_STUNTD_NFAM];
    bool udp, tcp;          /* serve UDP, TCP (both by default) */
    double udp_rate;        /* UDP responses per second per source IP; 0 = unlimited */
    uint32_t udp_burst;     /* bucket size */
    uint32_t rate_slots;    /* entries of each rate-limit table (rounded up to 4) */
    uint32_t tcp_idle_ms;   /* close a TCP connection silent this long; 0 = never */
    uint32_t tcp_max_conns; /* connections open at once; more are closed at accept */
    double cb_rate;         /* connect-backs per second per client IP; 0 = unlimited */
    uint32_t cb_burst;
    uint32_t cb_max_timeout_ms; /* cap on STUNT-TIMEOUT */
    uint32_t cb_max_pending;    /* connect-backs in flight, whole server */
    int log_level;              /* enum ntcp_log_level; logs go to stderr */
    const char *log_prefix;     /* e.g. "ntcp-stuntd"; copied; NULL = none */
} ntcp_stuntd_config;

typedef struct ntcp_stuntd ntcp_stuntd;

/* Fills cfg with the defaults (no addresses). */
void ntcp_stuntd_config_init(ntcp_stuntd_config *cfg);

/* Parses "IP", "IP:PORT", "[IPv6]", "[IPv6]:PORT" or a bare IPv6 address
 * (numeric only); default_port when the port is absent. Returns 0 or
 * NTCP_EINVAL. */
int ntcp_stuntd_parse_addr(const char *s, uint16_t default_port, struct sockaddr_storage *out);

/* Sets the primary (alternate = false) or alternate address of the family of
 * the given text, as parsed by ntcp_stuntd_parse_addr() with the default
 * port 3478 (primary) or 3479 (alternate). Returns 0 or NTCP_EINVAL. */
int ntcp_stuntd_config_set_addr(ntcp_stuntd_config *cfg, bool alternate, const char *s);

/* Reads the [stunt] section of an INI file (NTCP 0.2's p2pNetwork.conf keys:
 * stuntIp, stuntPort, otherStuntIp, otherStuntPort, with ':' or '='; other
 * sections and keys are ignored). On error returns NTCP_ECONFIG or
 * NTCP_ESYS and writes a message into err. */
int ntcp_stuntd_config_load(ntcp_stuntd_config *cfg, const char *path, char *err, size_t errlen);

/* Checks that the configuration can run: per family served, two different
 * IPs and two different ports (unless both are 0). Returns 0 or NTCP_ECONFIG
 * with a message in err. */
int ntcp_stuntd_config_check(const ntcp_stuntd_config *cfg, char *err, size_t errlen);

/* Binds every socket and starts serving on loop. On success *out is the
 * server; on failure nothing is left open and err says which socket failed
 * and why ("cannot bind UDP 127.0.0.2:3478: Address already in use").
 * Returns 0, NTCP_ECONFIG, NTCP_ESYS or NTCP_ENOMEM. */
int ntcp_stuntd_start(uv_loop_t *loop, const ntcp_stuntd_config *cfg, ntcp_stuntd **out,
                      char *err, size_t errlen);

/* Stops serving: closes every socket and connection. The object is freed once
 * libuv has closed its handles; do not use it after this call. */
void ntcp_stuntd_stop(ntcp_stuntd *s);

/* The addresses actually bound (ports filled in when 0 was asked). Returns 0
 * or NTCP_ENOTFOUND when the family is not served. */
int ntcp_stuntd_addrs(const ntcp_stuntd *s, int family_index, struct sockaddr_storage *primary,
                      struct sockaddr_storage *alternate);

/* Changes user (setgroups, setgid, setuid) after the sockets are bound. The
 * TCP listeners are first given to that user, so that connect-back sockets
 * (SO_REUSEPORT on the listener's address) still bind afterwards. Returns 0,
 * NTCP_ENOTFOUND (no such user) or NTCP_ESYS (errno set). */
int ntcp_stuntd_drop_privileges(ntcp_stuntd *s, const char *user, char *err, size_t errlen);

/* Counters, for logs and tests. */
typedef struct ntcp_stuntd_stats {
    uint64_t udp_in, udp_out, udp_dropped, udp_rate_limited;
    uint64_t tcp_accepted, tcp_rejected, tcp_idle_closed, tcp_in, tcp_out;
    uint64_t cb_started, cb_rate_limited;
    uint32_t tcp_open, cb_pending;
} ntcp_stuntd_stats;
void ntcp_stuntd_get_stats(const ntcp_stuntd *s, ntcp_stuntd_stats *st);

#endif /* NTCP_STUNTD_H */
