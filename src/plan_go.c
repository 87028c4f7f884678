/*
 * plan_go.c: the plan's input from a CONNECT-GO (plan_go.h).
 */
#include "plan_go.h"

#include "addr.h"

void plan_input_from_go(plan_input *in, const plan_profile *me,
                        const struct sockaddr_storage *me_public,
                        const struct sockaddr_storage *priv, size_t npriv, uint16_t session_port,
                        const broker_go *g, const plan_profile *peer)
{
    if (me->has[PLAN_TCP4])
        in->me.tcp = me->b[PLAN_TCP4];
    in->me.public_addr = *me_public;
    /* My private addresses as the peer got them from the broker. */
    in->me.npriv = npriv < PLAN_MAX_PRIVATE ? npriv : PLAN_MAX_PRIVATE;
    for (size_t k = 0; k < in->me.npriv; k++) {
        in->me.priv[k] = priv[k];
        if (ntcp_sa_port(&in->me.priv[k]) == 0)
            ntcp_sa_set_port(&in->me.priv[k], session_port);
    }
    in->me.rtt_ms = me->rtt_ms;
    in->me.seq_port = me->seq_port[PLAN_TCP4];
    in->me.nat_hops = me->nat_hops;
    in->me.raw = me->raw;
    if (peer->has[PLAN_TCP4])
        in->peer.tcp = peer->b[PLAN_TCP4];
    in->peer.public_addr = g->peer.public_addr;
    in->peer.npriv = g->peer.nprivate < PLAN_MAX_PRIVATE ? g->peer.nprivate : PLAN_MAX_PRIVATE;
    for (size_t k = 0; k < in->peer.npriv; k++)
        in->peer.priv[k] = g->peer.private_addr[k];
    in->peer.rtt_ms = peer->rtt_ms;
    in->peer.seq_port = peer->seq_port[PLAN_TCP4];
    in->peer.nat_hops = peer->nat_hops;
    in->peer.raw = peer->raw;
    in->initiator = g->role == BROKER_ROLE_REQUESTER;
}
