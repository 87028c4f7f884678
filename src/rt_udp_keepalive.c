/*
 * rt_udp_keepalive.c: the keepalives of the UDP paths the runtime handed
 * over (ntcp_udp_punch()), from the hand-over until ntcp_udp_close(), the
 * application's close of the descriptor, or ntcp_free(). Loop thread only.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rt.h"

/* The keepalive of a punched UDP path, until ntcp_udp_close() or ntcp_free(). */
typedef struct ka_entry {
    struct ka_entry *next;
    int fd; /* the application's descriptor (the keepalive sends from its own dup) */
    ntcp_udp_keepalive *k;
    char peer[BROKER_NAME_MAX + 1]; /* the other end's name */
} ka_entry;

/* Frees the keepalives that saw the application close their descriptor. */
static void prune_keepalives(ntcp_rt *rt)
{
    for (ka_entry **p = &rt->kas; *p;) {
        ka_entry *ka = *p;
        if (ntcp_udp_keepalive_ended(ka->k)) {
            *p = ka->next;
            ntcp_udp_keepalive_stop(ka->k);
            free(ka);
        } else {
            p = &ka->next;
        }
    }
}

/* Stops the keepalive of a handed-over UDP path (if any) and closes fd. */
void rt_udp_close_fd(ntcp_rt *rt, int fd)
{
    /* Keepalives that saw their descriptor closed by the application go
     * first: their number may be fd again, now another socket's. */
    prune_keepalives(rt);
    for (ka_entry **p = &rt->kas; *p; p = &(*p)->next)
        if ((*p)->fd == fd) {
            ka_entry *ka = *p;
            *p = ka->next;
            ntcp_udp_keepalive_stop(ka->k);
            free(ka);
            break;
        }
    close(fd);
}

bool rt_udp_path_open(ntcp_rt *rt, uint16_t local_port, const char *peer)
{
    for (ka_entry *ka = rt->kas; ka; ka = ka->next) {
        struct sockaddr_storage l, r;
        if (strcmp(ka->peer, peer) == 0 && ntcp_udp_keepalive_path(ka->k, &l, &r) &&
            ntcp_sa_port(&l) == local_port)
            return true;
    }
    prune_keepalives(rt); /* those found closed just now */
    return false;
}

/* Starts the keepalive of the UDP path fd, handed over now. */
void rt_keepalive_start(ntcp_rt *rt, int fd, const char *peer)
{
    prune_keepalives(rt); /* those whose descriptor the application closed */
    ka_entry *ka = calloc(1, sizeof *ka);
    int lifetime = rt->me.has[PLAN_UDP4] ? rt->me.b[PLAN_UDP4].lifetime_s : 0;
    if (ka && ntcp_udp_keepalive_start(&rt->loop, fd, ntcp_udp_keepalive_interval_ms(lifetime),
                                       &ka->k) == 0) {
        ka->fd = fd;
        snprintf(ka->peer, sizeof ka->peer, "%s", peer);
        ka->next = rt->kas;
        rt->kas = ka;
    } else {
        free(ka);
    }
}

/* Stops every keepalive (the runtime stops); the descriptors stay open. */
void rt_keepalives_stop_all(ntcp_rt *rt)
{
    while (rt->kas) {
        ka_entry *ka = rt->kas;
        rt->kas = ka->next;
        ntcp_udp_keepalive_stop(ka->k);
        free(ka);
    }
}
