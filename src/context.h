/*
 * context.h: the library context (ntcp_t) shared by discovery and, later, the
 * broker session and the traversal engine. Internal.
 */
#ifndef NTCP_CONTEXT_H
#define NTCP_CONTEXT_H

#include "addr.h"
#include "ntcp.h"

struct ntcp {
    char **stun_servers; /* owned, each malloc'd */
    size_t n_stun_servers;
    char *broker, *name, *key_file; /* owned, or NULL */
};

#endif /* NTCP_CONTEXT_H */
