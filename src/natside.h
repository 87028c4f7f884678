/*
 * natside.h: how the planners read one end's NAT behaviour (pure): can the
 * peer know where this end's new connections come from (its mapping), and
 * what gets in once this end has sent towards the peer (its filter). The
 * TCP planner (plan.c) and the UDP one (udp_plan.c) share this reading, so
 * that both transports judge a NAT alike. Internal to libntcp.
 */
#ifndef NTCP_NATSIDE_H
#define NTCP_NATSIDE_H

#include <stdbool.h>

#include "ntcp.h"

/* Can the peer know where a new connection of this end comes from? */
typedef enum { NAT_MAP_KNOWN, NAT_MAP_PREDICT, NAT_MAP_RANDOM } nat_map_class;
/* What gets in once this end has sent towards the peer. */
typedef enum { NAT_FILT_OPEN, NAT_FILT_ADDR, NAT_FILT_PORT } nat_filt_class;

typedef struct nat_side {
    nat_map_class map;
    nat_filt_class filt;
    bool blocked;     /* the transport does not get through at all */
    bool map_assumed; /* mapping unknown: tried as endpoint-independent */
    int delta;        /* NAT_MAP_PREDICT: the port step */
} nat_side;

/* Reads b. tcp: a NAT that accepts unsolicited SYNs (NTCP_SYN_ACCEPTED)
 * filters nothing for TCP. */
void nat_side_classify(const ntcp_nat_behaviour_t *b, bool tcp, nat_side *out);

#endif /* NTCP_NATSIDE_H */
