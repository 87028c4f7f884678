/*
 * plan_go.h: the plan's input from a CONNECT-GO, built in one place for
 * everything that plans (src/rt_conn.c; the lab tests go through the public
 * API): both ends must make their plans from the same facts, and copies of
 * this glue drifted apart before (one never set the sampled port).
 * Internal to libntcp.
 */
#ifndef NTCP_PLAN_GO_H
#define NTCP_PLAN_GO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "broker_proto.h"
#include "plan.h"

/* Fills *in (plan_input_init() first) for a TCP plan:
 *   me:        this end's profile (its blob decoded back: what the peer sees);
 *   me_public: this end's session address as the broker saw it;
 *   priv, npriv: the private addresses this end registered, port 0 meaning
 *              the session's local port (session_port), as the peer got them;
 *   g, peer:   the CONNECT-GO and the peer's decoded profile (zeroed when it
 *              had none or it did not decode: an unknown peer).
 * The raw methods' switches (raw_enabled, broker_spoofs) stay the caller's. */
void plan_input_from_go(plan_input *in, const plan_profile *me,
                        const struct sockaddr_storage *me_public,
                        const struct sockaddr_storage *priv, size_t npriv, uint16_t session_port,
                        const broker_go *g, const plan_profile *peer);

#endif /* NTCP_PLAN_GO_H */
