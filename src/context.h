/*
 * context.h: the library context (ntcp_t) shared by discovery and, later, the
 * broker session and the traversal engine. Internal.
 */
#ifndef NTCP_CONTEXT_H
#define NTCP_CONTEXT_H

#include <pthread.h>
#include <stdbool.h>

#include "addr.h"
#include "ntcp.h"

struct ntcp_rt; /* rt.h: the runtime thread of ntcp_listen/ntcp_connect */

struct ntcp {
    char **stun_servers; /* owned, each malloc'd */
    size_t n_stun_servers;
    char *broker, *name, *key_file; /* owned, or NULL */
    int broker_tls, broker_tls_insecure; /* 0 or 1 */
    char *broker_ca, *broker_pin;   /* owned, or NULL */
    pthread_mutex_t rt_mu;          /* guards rt and stopped */
    struct ntcp_rt *rt;             /* NULL until the first call that needs it */
    bool stopped;                   /* ntcp_stop(): calls return NTCP_ECLOSED */
    ntcp_policy_fn policy;
    void *policy_user;
    int relay; /* ntcp_relay_policy_t (docs/relay.md) */
    char *methods;         /* the TCP methods plans may use, as given (NULL: all) */
    unsigned methods_mask; /* parsed (plan.h, PLAN_METHOD_BIT); 0: all */
};

/* Stops and frees the runtime (api.c): ntcp_stop(), and ntcp_free() first. */
void ntcp_rt_shutdown(ntcp_t *ctx);

#endif /* NTCP_CONTEXT_H */
