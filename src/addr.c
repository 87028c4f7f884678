/*
 * addr.c: parsing, formatting and comparing socket addresses; the one place
 * that knows the "[v6]:port" syntax.
 */
#include "addr.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int split(const char *s, char *host, size_t hostlen, uint16_t *port, bool *has_port)
{
    const char *h = s, *p = NULL;
    size_t hl;
    if (!s || !*s)
        return NTCP_EINVAL;
    if (*s == '[') {
        const char *close = strchr(s, ']');
        if (!close)
            return NTCP_EINVAL;
        h = s + 1;
        hl = (size_t)(close - h);
        if (close[1] == ':')
            p = close + 2;
        else if (close[1] != '\0')
            return NTCP_EINVAL;
    } else {
        const char *colon = strchr(s, ':');
        if (colon && strchr(colon + 1, ':')) {
            hl = strlen(s); /* a bare IPv6 address: no port */
        } else if (colon) {
            hl = (size_t)(colon - s);
            p = colon + 1;
        } else {
            hl = strlen(s);
        }
    }
    if (hl == 0 || hl >= hostlen)
        return NTCP_EINVAL;
    memcpy(host, h, hl);
    host[hl] = '\0';
    *has_port = p != NULL;
    if (p) {
        char *end;
        errno = 0;
        unsigned long v = strtoul(p, &end, 10);
        if (!isdigit((unsigned char)*p) || *end || errno || v > 65535)
            return NTCP_EINVAL;
        *port = (uint16_t)v;
    }
    return 0;
}

int ntcp_split_host_port(const char *s, char *host, size_t hostlen, uint16_t *port,
                         uint16_t default_port)
{
    bool has_port;
    if (split(s, host, hostlen, port, &has_port) < 0)
        return NTCP_EINVAL;
    if (!has_port)
        *port = default_port;
    return 0;
}

int ntcp_parse_addr(const char *s, int default_port, struct sockaddr_storage *out)
{
    char host[INET6_ADDRSTRLEN + 1];
    uint16_t port = 0;
    bool has_port;
    memset(out, 0, sizeof *out);
    if (split(s, host, sizeof host, &port, &has_port) < 0)
        return NTCP_EINVAL;
    if (!has_port) {
        if (default_port < 0 || default_port > 65535)
            return NTCP_EINVAL;
        port = (uint16_t)default_port;
    }
    struct sockaddr_in *v4 = (struct sockaddr_in *)out;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)out;
    if (s[0] != '[' && inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(port);
        return 0;
    }
    if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(port);
        return 0;
    }
    memset(out, 0, sizeof *out);
    return NTCP_EINVAL;
}

const char *ntcp_list_next(const char **p, size_t *len)
{
    const char *s = *p;
    while (*s == ',' || *s == ' ' || *s == '\t')
        s++;
    if (!*s) {
        *p = s;
        return NULL;
    }
    *len = strcspn(s, ", \t");
    *p = s + *len;
    return s;
}

const char *ntcp_addr_str(const struct sockaddr *sa, char *buf, size_t len)
{
    char ip[INET6_ADDRSTRLEN];
    if (!sa || !buf || len == 0)
        return "?";
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof ip);
        snprintf(buf, len, "%s:%u", ip, ntohs(sin->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof ip);
        snprintf(buf, len, "[%s]:%u", ip, ntohs(sin6->sin6_port));
    } else {
        snprintf(buf, len, "(family %d)", sa->sa_family);
    }
    return buf;
}

uint16_t ntcp_sa_port(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)ss)->sin_port);
    if (ss->ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
    return 0;
}

void ntcp_sa_set_port(struct sockaddr_storage *ss, uint16_t port)
{
    if (ss->ss_family == AF_INET)
        ((struct sockaddr_in *)ss)->sin_port = htons(port);
    else if (ss->ss_family == AF_INET6)
        ((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
}

socklen_t ntcp_sa_len(const struct sockaddr_storage *ss)
{
    return ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

bool ntcp_sockaddr_same_ip(const struct sockaddr *a, const struct sockaddr *b)
{
    if (a->sa_family != b->sa_family)
        return false;
    if (a->sa_family == AF_INET)
        return ((const struct sockaddr_in *)a)->sin_addr.s_addr ==
               ((const struct sockaddr_in *)b)->sin_addr.s_addr;
    if (a->sa_family == AF_INET6)
        return memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
                      &((const struct sockaddr_in6 *)b)->sin6_addr, 16) == 0;
    return false;
}

bool ntcp_sockaddr_equal(const struct sockaddr *a, const struct sockaddr *b)
{
    return ntcp_sockaddr_same_ip(a, b) &&
           ntcp_sa_port((const struct sockaddr_storage *)a) ==
               ntcp_sa_port((const struct sockaddr_storage *)b);
}
