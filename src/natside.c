/*
 * natside.c: the planners' reading of one end's NAT (natside.h). Pure.
 */
#include "natside.h"

#include <string.h>

void nat_side_classify(const ntcp_nat_behaviour_t *b, bool tcp, nat_side *out)
{
    memset(out, 0, sizeof *out);
    out->blocked = b->reach == NTCP_REACH_BLOCKED;
    /* No translation (open, firewall): every port keeps its number. */
    bool natted = b->reach != NTCP_REACH_OPEN && b->reach != NTCP_REACH_FIREWALL;
    if (!natted || b->mapping == NTCP_DEP_ENDPOINT_INDEPENDENT) {
        out->map = NAT_MAP_KNOWN;
    } else if (b->mapping == NTCP_DEP_UNKNOWN) {
        /* Discovery did not settle it: trying the mapping the broker saw
         * costs a SYN or a datagram, giving up costs the connection. */
        out->map = NAT_MAP_KNOWN;
        out->map_assumed = true;
    } else if (b->ports == NTCP_PORTS_SEQUENTIAL && b->delta != 0) {
        /* Address-dependent mappings change with the peer's address, which
         * differs from the broker's: as unknown as address-and-port ones. */
        out->map = NAT_MAP_PREDICT;
        out->delta = b->delta;
    } else {
        /* Random, unknown, or preserved: a preserved port collides with the
         * session's own external port (or the keepalive socket's), so the
         * NAT picks one nobody can know. */
        out->map = NAT_MAP_RANDOM;
    }
    if (b->reach == NTCP_REACH_OPEN || b->filtering == NTCP_DEP_NONE ||
        b->filtering == NTCP_DEP_ENDPOINT_INDEPENDENT || (tcp && b->syn == NTCP_SYN_ACCEPTED))
        out->filt = NAT_FILT_OPEN;
    else if (b->filtering == NTCP_DEP_ADDRESS)
        out->filt = NAT_FILT_ADDR;
    else
        out->filt = NAT_FILT_PORT; /* including unknown: assume the strictest */
}
