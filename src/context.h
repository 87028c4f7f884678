/*
 * context.h: the library context (ntcp_t) shared by discovery and, later, the
 * broker session and the traversal engine. Internal.
 */
#ifndef NTCP_CONTEXT_H
#define NTCP_CONTEXT_H

#include "ntcp.h"

struct ntcp {
    char **stun_servers; /* owned, each malloc'd */
    size_t n_stun_servers;
};

/* Splits "host[:port]", "[v6]:port" or "v6" into host and port (default_port
 * when absent). host gets a NUL-terminated copy. Returns 0 or NTCP_EINVAL. */
int ntcp_split_host_port(const char *s, char *host, size_t hostlen, uint16_t *port,
                         uint16_t default_port);

#endif /* NTCP_CONTEXT_H */
