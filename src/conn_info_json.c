/*
 * conn_info_json.c: ntcp_conn_info_json(), a connection's facts
 * (ntcp_conn_info_t) as one line of JSON.
 */
#include <stddef.h>
#include <stdio.h>
#include <sys/socket.h>

#include "addr.h"
#include "ntcp.h"

static size_t json_str(char *buf, size_t len, size_t off, const char *s)
{
    /* Names and addresses are plain; escape the rest of detail conservatively. */
    for (; *s; s++) {
        char c = *s;
        int n;
        if (c == '"' || c == '\\')
            n = snprintf(buf + (off < len ? off : len), off < len ? len - off : 0, "\\%c", c);
        else if ((unsigned char)c < 0x20)
            n = snprintf(buf + (off < len ? off : len), off < len ? len - off : 0, "\\u%04x", c);
        else
            n = snprintf(buf + (off < len ? off : len), off < len ? len - off : 0, "%c", c);
        off += (size_t)(n > 0 ? n : 0);
    }
    return off;
}

size_t ntcp_conn_info_json(const ntcp_conn_info_t *i, int status, char *buf, size_t len)
{
    char loc[64] = "", rem[64] = "", pub[64] = "", ppub[64] = "", rly[64] = "";
    if (i->local.ss_family)
        ntcp_addr_str((const struct sockaddr *)&i->local, loc, sizeof loc);
    if (i->remote.ss_family)
        ntcp_addr_str((const struct sockaddr *)&i->remote, rem, sizeof rem);
    if (i->public_addr.ss_family)
        ntcp_addr_str((const struct sockaddr *)&i->public_addr, pub, sizeof pub);
    if (i->peer_public.ss_family)
        ntcp_addr_str((const struct sockaddr *)&i->peer_public, ppub, sizeof ppub);
    /* The relay's address, only when the struct has it (older callers). */
    if (i->size >= offsetof(ntcp_conn_info_t, relay) + sizeof i->relay && i->relay.ss_family)
        ntcp_addr_str((const struct sockaddr *)&i->relay, rly, sizeof rly);
    size_t off = 0;
#define PUT(...)                                                                                   \
    do {                                                                                           \
        int n_ = snprintf(buf + (off < len ? off : len), off < len ? len - off : 0, __VA_ARGS__);  \
        off += (size_t)(n_ > 0 ? n_ : 0);                                                          \
    } while (0)
    PUT("{\"ok\":%s,\"error\":\"%s\",\"transport\":\"%s\",\"peer\":\"", status >= 0 ? "true" : "false",
        status >= 0 ? "" : ntcp_strerror(status), i->transport == NTCP_UDP ? "udp" : "tcp");
    off = json_str(buf, len, off, i->peer);
    PUT("\",\"role\":\"%s\",\"method\":\"%s\",\"local\":\"%s\",\"remote\":\"%s\","
        "\"public\":\"%s\",\"peer_public\":\"%s\",\"broker_ms\":%lld,\"start_ms\":%lld,"
        "\"connected_ms\":%lld,\"verified_ms\":%lld,\"rtt_ms\":%u,\"attempts\":%u,\"detail\":\"",
        i->initiator ? "initiator" : "target", i->method, loc, rem, pub, ppub,
        (long long)i->broker_ms, (long long)i->start_ms, (long long)i->connected_ms,
        (long long)i->verified_ms, i->rtt_ms, i->attempts);
    off = json_str(buf, len, off, i->detail);
    if (rly[0])
        PUT("\",\"relay\":\"%s", rly);
    PUT("\"");
    /* The attempts and the punch TTL, only when the struct has them. */
    if (i->size >= offsetof(ntcp_conn_info_t, ttl_left_site) + sizeof i->ttl_left_site) {
        PUT(",\"punch_ttl\":%u,\"ttl_left_site\":%s,\"attempt_list\":[", i->punch_ttl,
            i->ttl_left_site ? "true" : "false");
        unsigned n = i->n_attempt < NTCP_MAX_ATTEMPTS ? i->n_attempt : NTCP_MAX_ATTEMPTS;
        for (unsigned k = 0; k < n; k++) {
            const ntcp_attempt_info_t *a = &i->attempt[k];
            PUT("%s{\"method\":\"", k ? "," : "");
            off = json_str(buf, len, off, a->method);
            PUT("\",\"role\":\"");
            off = json_str(buf, len, off, a->role);
            PUT("\",\"outcome\":\"");
            off = json_str(buf, len, off, a->outcome);
            PUT("\",\"errno\":%d,\"started_ms\":%lld,\"connected_ms\":%lld,\"ended_ms\":%lld,"
                "\"syns\":%u,\"refusals\":%u,\"connections\":%u,\"why\":\"",
                a->sys_errno, (long long)a->started_ms, (long long)a->connected_ms,
                (long long)a->ended_ms, a->syns, a->refusals, a->connections);
            off = json_str(buf, len, off, a->why);
            PUT("\"}");
        }
        PUT("]");
    }
    PUT("}");
#undef PUT
    if (len)
        buf[off < len ? off : len - 1] = '\0';
    return off;
}
