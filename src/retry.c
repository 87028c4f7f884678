/*
 * retry.c: the engine's retry and re-punch rules (retry.h). Pure.
 */
#include "retry.h"

static retry_out out(retry_action_t a, bool count)
{
    retry_out o = {a, count};
    return o;
}

/* A punch socket (its low-TTL SYN, or from the hold time the hold's
 * normal-TTL SYN) ended before connecting. Our NAT's mapping may live on.
 * - Time exceeded for a punch, the normal case once the SYN dies at a
 *   router between the NATs: before the hold time, punch again at once
 *   (while no socket of ours is in SYN-SENT on the punched 4-tuple, a
 *   peer's SYN would draw an RST from our kernel, which ends both NATs'
 *   state); once the SYN has left our site and the hold time has come,
 *   hold the 4-tuple with a normal-TTL SYN instead.
 * - Another ICMP error, or any other error: the NATs' state is left, the
 *   same SYN again shortly.
 * - An RST to a punch: it ended our NAT's state; punching again at once
 *   would only draw more. The regular re-punch comes later.
 * - An RST to the hold: the peer's NAT had no hole yet (the peer's SYN is
 *   late) and its RST ended ours: punch again at once, hold again later. */
static retry_out punch_rule(const retry_in *in)
{
    unsigned limit = RETRY_MAX_REPUNCH + 4u * in->window;
    if (in->stopped || in->target >= 32 || in->repunches >= limit)
        return out(RETRY_NONE, false);
    if (in->was_held)
        return out(in->end == RETRY_END_RST ? RETRY_UNHOLD_PUNCH_NOW : RETRY_SOON, true);
    if (in->end == RETRY_END_TIME_EXCEEDED)
        return out(in->left_site && in->hold_due ? RETRY_HOLD_NOW : RETRY_PUNCH_NOW, true);
    if (in->end != RETRY_END_RST)
        return out(RETRY_SOON, true);
    return out(RETRY_NONE, false);
}

/* A connect (CONNECT, SIMOPEN) refused or failed: nobody listens there
 * yet (the peer's start may lag ours by half a broker round trip) or its
 * NAT answered before its hole existed.
 * - From a fresh port after an ICMP error (not an RST), at once: the error
 *   left our NAT's entry, so the same 4-tuple keeps its mapping and the
 *   prediction holds; without a socket in SYN-SENT the peer's SYN would
 *   meet our listener. After an RST, never: each new SYN from a fresh port
 *   would be a new mapping and move the peer's prediction.
 * - From the session port, at once: while no socket of ours is in SYN-SENT
 *   on the 4-tuple, the peer's SYN finds our listener, whose SYN-ACK
 *   carries another sequence number than the SYN our NAT recorded (Linux
 *   conntrack then marks the connection invalid).
 * - From any port: again after one round trip.
 * Bounded by the refusal count. */
static retry_out connect_rule(const retry_in *in)
{
    if (in->stopped || in->target >= 32)
        return out(RETRY_NONE, false);
    bool icmp = in->end == RETRY_END_ICMP || in->end == RETRY_END_TIME_EXCEEDED;
    if (in->local == PLAN_LOCAL_FRESH)
        return out(icmp && in->refusals < RETRY_MAX_REFUSED_NOW ? RETRY_CONNECT_NOW : RETRY_NONE,
                   false);
    if (in->local == PLAN_LOCAL_SESSION && in->refusals < RETRY_MAX_REFUSED_NOW)
        return out(RETRY_CONNECT_NOW, false);
    if (in->refusals < RETRY_MAX_REFUSED)
        return out(RETRY_AFTER_RTT, false);
    return out(RETRY_NONE, false);
}

retry_out retry_decide(const retry_in *in)
{
    switch (in->role) {
    case PLAN_PUNCH: return punch_rule(in);
    case PLAN_CONNECT:
    case PLAN_SIMOPEN:
    case PLAN_ACCEPT: return connect_rule(in);
    case PLAN_RAW_SYN:
    case PLAN_SPRAY:
    case PLAN_GUESS: break; /* their own machinery: raw_attempt.c, the birthday search */
    }
    return out(RETRY_NONE, false);
}

const char *retry_action_name(retry_action_t a)
{
    switch (a) {
    case RETRY_NONE: return "none";
    case RETRY_PUNCH_NOW: return "punch-now";
    case RETRY_HOLD_NOW: return "hold-now";
    case RETRY_UNHOLD_PUNCH_NOW: return "unhold-punch-now";
    case RETRY_SOON: return "soon";
    case RETRY_CONNECT_NOW: return "connect-now";
    case RETRY_AFTER_RTT: return "after-rtt";
    }
    return "?";
}
