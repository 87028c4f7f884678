/*
 * natclass.c: NAT classification from discovery's observations, and the
 * names of each behaviour (RFC 4787/5382 terms, classic cone names, and
 * NTCP 0.2's mapping names).
 */
#include "natclass.h"

#include <netinet/in.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void ntcp_nat_obs_init(ntcp_nat_obs *o, bool tcp)
{
    memset(o, 0, sizeof *o);
    o->tcp = tcp;
    o->syn_outcome = -1;
    for (size_t i = 0; i < NTCP_OBS_MAX_SEQ; i++) {
        o->seq_pos[i] = (uint8_t)i;
        o->seq_first[i] = true;
    }
}

unsigned ntcp_silence_needed(unsigned lost, unsigned tries)
{
    if (lost == 0)
        return NTCP_SILENCE_MIN;
    /* The loss rate of one try (a request and its answer), estimated with
     * one loss and one answer more than seen (Laplace): a few tries that all
     * came back do not make a lossless link. */
    double q = ((double)lost + 1) / ((double)tries + 2);
    double miss = 1;
    unsigned n = 0;
    while (miss > NTCP_SILENCE_RISK) {
        if (++n > 64)
            return UINT_MAX;
        miss *= q;
    }
    return n < NTCP_SILENCE_MIN ? NTCP_SILENCE_MIN : n;
}

/* Appends a reason to out->why, "; "-separated. */
static void why(ntcp_nat_behaviour_t *out, const char *fmt, ...)
{
    size_t used = strlen(out->why);
    if (used + 3 >= sizeof out->why)
        return;
    if (used) {
        memcpy(out->why + used, "; ", 3);
        used += 2;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out->why + used, sizeof out->why - used, fmt, ap);
    va_end(ap);
}

#define SA(x) ((const struct sockaddr *)(x))

static ntcp_nat_dep_t classify_mapping(const ntcp_nat_obs *o, ntcp_nat_behaviour_t *out)
{
    if (!o->got[NTCP_OBS_PRIMARY])
        return NTCP_DEP_UNKNOWN; /* the reason is given already */
    if (!o->got[NTCP_OBS_ALT_IP] || !o->got[NTCP_OBS_ALT_BOTH]) {
        why(out, "mapping: no answer from the server's alternate address");
        return NTCP_DEP_UNKNOWN;
    }
    const struct sockaddr *m0 = SA(&o->mapped[0]), *m1 = SA(&o->mapped[1]), *m2 = SA(&o->mapped[2]);
    if (ntcp_sockaddr_equal(m0, m1) && ntcp_sockaddr_equal(m1, m2))
        return NTCP_DEP_ENDPOINT_INDEPENDENT;
    if (!ntcp_sockaddr_equal(m0, m1) && ntcp_sockaddr_equal(m1, m2))
        return NTCP_DEP_ADDRESS;
    return NTCP_DEP_ADDRESS_PORT;
}

/* A test's answer: YES or NO as seen, silence as NO when there was enough
 * of it for the loss on the link, else UNKNOWN with the reason. */
static ntcp_tristate_t settle(ntcp_tristate_t seen, unsigned silent, const ntcp_nat_obs *o,
                              const char *what, ntcp_nat_behaviour_t *out)
{
    if (seen != NTCP_UNKNOWN)
        return seen;
    if (silent == 0) {
        why(out, "filtering: the test from the other %s did not complete", what);
        return NTCP_UNKNOWN;
    }
    unsigned need = ntcp_silence_needed(o->lost, o->tries);
    if (silent >= need)
        return NTCP_NO;
    why(out, "filtering: no answer from the other %s in %u tries, but the link lost %u of %u "
             "probes: silence is not conclusive",
        what, silent, o->lost, o->tries);
    return NTCP_UNKNOWN;
}

static ntcp_nat_dep_t classify_filtering(const ntcp_nat_obs *o, ntcp_tristate_t *both,
                                         ntcp_nat_behaviour_t *out)
{
    if (o->from_other_both == NTCP_YES) {
        *both = NTCP_YES;
        return NTCP_DEP_ENDPOINT_INDEPENDENT;
    }
    *both = settle(o->from_other_both, o->silent_both, o, "address and port", out);
    if (*both == NTCP_UNKNOWN)
        return NTCP_DEP_UNKNOWN;
    ntcp_tristate_t port = settle(o->from_other_port, o->silent_port, o, "port", out);
    if (port == NTCP_YES)
        return NTCP_DEP_ADDRESS;
    if (port == NTCP_NO)
        return NTCP_DEP_ADDRESS_PORT;
    return NTCP_DEP_UNKNOWN;
}

static int16_t port_diff(uint16_t a, uint16_t b)
{
    return (int16_t)(uint16_t)(b - a);
}

/* The largest |delta| still called sequential: beyond it a "pattern" of
 * three samples is as likely to be chance as allocation. */
#define MAX_DELTA 64

/* Whether the samples of o (all, or with first_only those answered at once)
 * lie on one line by their place in the burst: mapped port = first + delta *
 * places, delta a small non-zero step. It takes two samples at least. */
static bool on_a_line(const ntcp_nat_obs *o, bool first_only, int *delta)
{
    size_t a = o->nseq, b = o->nseq, n = 0;
    for (size_t i = 0; i < o->nseq; i++) {
        if (first_only && !o->seq_first[i])
            continue;
        n++;
        if (a == o->nseq)
            a = i;
        else if (b == o->nseq)
            b = i;
    }
    if (n < 2)
        return false;
    int places = o->seq_pos[b] - o->seq_pos[a];
    int16_t diff = port_diff(o->seq_mapped[a], o->seq_mapped[b]);
    if (places <= 0 || diff % places)
        return false;
    int d = diff / places;
    if (d == 0 || d < -MAX_DELTA || d > MAX_DELTA)
        return false;
    for (size_t i = 0; i < o->nseq; i++) {
        if (first_only && !o->seq_first[i])
            continue;
        int k = o->seq_pos[i] - o->seq_pos[a];
        if ((uint16_t)(o->seq_mapped[a] + d * k) != o->seq_mapped[i])
            return false;
    }
    *delta = d;
    return true;
}

static ntcp_port_alloc_t classify_ports(const ntcp_nat_obs *o, int *delta, ntcp_nat_behaviour_t *out)
{
    *delta = 0;
    if (o->nseq < 3) {
        why(out, "port allocation: fewer than 3 new mappings observed");
        return NTCP_PORTS_UNKNOWN;
    }
    bool preserved = true;
    for (size_t i = 0; i < o->nseq; i++)
        preserved = preserved && o->seq_local[i] == o->seq_mapped[i];
    if (preserved)
        return NTCP_PORTS_PRESERVED;
    int d;
    if (on_a_line(o, false, &d)) {
        *delta = d;
        return NTCP_PORTS_SEQUENTIAL;
    }
    /* Off the line. Random, unless only the retransmitted samples are off
     * it: their first packet may have been lost before the NAT, so that
     * their mapping was made later, out of its place. */
    size_t first = 0;
    for (size_t i = 0; i < o->nseq; i++)
        first += o->seq_first[i];
    if (first == o->nseq || (first >= 2 && !on_a_line(o, true, &d)))
        return NTCP_PORTS_RANDOM;
    why(out, "port allocation: the mappings answered at once %s, the retransmitted ones are off "
             "their line",
        first >= 2 ? "are sequential" : "are too few to tell");
    return NTCP_PORTS_UNKNOWN;
}

static ntcp_syn_answer_t syn_from_outcome(int outcome)
{
    switch (outcome) {
    case 0: return NTCP_SYN_ACCEPTED; /* STUNT_CONNECTED */
    case 1: return NTCP_SYN_RST;      /* STUNT_REFUSED */
    case 2: return NTCP_SYN_ICMP;     /* STUNT_ICMP */
    case 3: return NTCP_SYN_DROPPED;  /* STUNT_TIMEOUT */
    }
    return NTCP_SYN_UNKNOWN;
}

void ntcp_classify(const ntcp_nat_obs *o, ntcp_nat_behaviour_t *out)
{
    memset(out, 0, sizeof *out);
    out->hairpin = o->hairpin;
    out->lifetime_s = o->lifetime_s;
    const struct sockaddr *local = SA(&o->local), *mapped = SA(&o->mapped[NTCP_OBS_PRIMARY]);
    if (!o->got[NTCP_OBS_PRIMARY]) {
        if (!o->got_other) {
            out->reach = NTCP_REACH_BLOCKED;
            why(out, "no answer from the server's primary address");
            return;
        }
        /* That probe was lost; another port tells whether there is a NAT. */
        why(out, "the probe to the server's primary address got no answer: mapping and hairpin "
                 "not tested");
        local = SA(&o->other_local);
        mapped = SA(&o->other_mapped);
    }
    bool natted = !ntcp_sockaddr_equal(local, mapped);
    ntcp_tristate_t both;
    out->filtering = classify_filtering(o, &both, out);
    if (natted) {
        out->reach = NTCP_REACH_NAT;
        out->mapping = classify_mapping(o, out);
        out->ports = classify_ports(o, &out->delta, out);
    } else {
        /* Without a NAT the mapping is the identity. */
        out->mapping = NTCP_DEP_ENDPOINT_INDEPENDENT;
        out->ports = NTCP_PORTS_PRESERVED;
        if (out->filtering == NTCP_DEP_ENDPOINT_INDEPENDENT) {
            out->reach = NTCP_REACH_OPEN;
            out->filtering = NTCP_DEP_NONE;
        } else if (out->filtering == NTCP_DEP_UNKNOWN) {
            out->reach = NTCP_REACH_UNKNOWN;
            why(out, "reach: public address, but filtering unknown");
        } else {
            out->reach = NTCP_REACH_FIREWALL;
        }
    }
    if (o->tcp) {
        if (both == NTCP_YES)
            out->syn = NTCP_SYN_ACCEPTED;
        else if (both == NTCP_NO)
            out->syn = o->from_other_both == NTCP_NO ? syn_from_outcome(o->syn_outcome)
                                                     : NTCP_SYN_DROPPED; /* enough silence */
        if (out->syn == NTCP_SYN_UNKNOWN)
            why(out, "syn: no connect-back outcome");
    }
}

const char *ntcp_reach_name(ntcp_reach_t r)
{
    switch (r) {
    case NTCP_REACH_BLOCKED: return "blocked";
    case NTCP_REACH_OPEN: return "open";
    case NTCP_REACH_FIREWALL: return "firewall";
    case NTCP_REACH_NAT: return "nat";
    case NTCP_REACH_UNKNOWN: break;
    }
    return "unknown";
}

const char *ntcp_dep_name(ntcp_nat_dep_t d)
{
    switch (d) {
    case NTCP_DEP_NONE: return "none";
    case NTCP_DEP_ENDPOINT_INDEPENDENT: return "endpoint-independent";
    case NTCP_DEP_ADDRESS: return "address-dependent";
    case NTCP_DEP_ADDRESS_PORT: return "address-and-port-dependent";
    case NTCP_DEP_UNKNOWN: break;
    }
    return "unknown";
}

const char *ntcp_ports_name(ntcp_port_alloc_t p)
{
    switch (p) {
    case NTCP_PORTS_PRESERVED: return "preserved";
    case NTCP_PORTS_SEQUENTIAL: return "sequential";
    case NTCP_PORTS_RANDOM: return "random";
    case NTCP_PORTS_UNKNOWN: break;
    }
    return "unknown";
}

const char *ntcp_syn_name(ntcp_syn_answer_t s)
{
    switch (s) {
    case NTCP_SYN_ACCEPTED: return "accepted";
    case NTCP_SYN_DROPPED: return "drop";
    case NTCP_SYN_RST: return "rst";
    case NTCP_SYN_ICMP: return "icmp";
    case NTCP_SYN_UNKNOWN: break;
    }
    return "unknown";
}

const char *ntcp_tristate_name(ntcp_tristate_t t)
{
    return t == NTCP_YES ? "yes" : t == NTCP_NO ? "no" : "unknown";
}

const char *ntcp_classic_name(const ntcp_nat_behaviour_t *b)
{
    switch (b->reach) {
    case NTCP_REACH_BLOCKED: return "blocked";
    case NTCP_REACH_OPEN: return "open";
    case NTCP_REACH_FIREWALL: return "firewall";
    case NTCP_REACH_UNKNOWN: return "unknown";
    case NTCP_REACH_NAT: break;
    }
    if (b->mapping == NTCP_DEP_ADDRESS || b->mapping == NTCP_DEP_ADDRESS_PORT)
        return "symmetric";
    if (b->mapping != NTCP_DEP_ENDPOINT_INDEPENDENT)
        return "unknown";
    switch (b->filtering) {
    case NTCP_DEP_ENDPOINT_INDEPENDENT: return "full cone";
    case NTCP_DEP_ADDRESS: return "restricted cone";
    case NTCP_DEP_ADDRESS_PORT: return "port-restricted cone";
    default: break;
    }
    return "unknown";
}

ntcp_legacy_type_t ntcp_legacy_type(const ntcp_nat_behaviour_t *b)
{
    if (b->reach == NTCP_REACH_OPEN || b->reach == NTCP_REACH_FIREWALL)
        return NTCP_LEGACY_NONE;
    if (b->reach != NTCP_REACH_NAT)
        return NTCP_LEGACY_UNKNOWN;
    switch (b->mapping) {
    case NTCP_DEP_ENDPOINT_INDEPENDENT: return NTCP_LEGACY_INDEPENDENT;
    case NTCP_DEP_ADDRESS: return NTCP_LEGACY_ADDRESS_DEPENDENT;
    case NTCP_DEP_ADDRESS_PORT:
        /* Which of the two depends on the ports: unknown ports, unknown name. */
        if (b->ports == NTCP_PORTS_UNKNOWN)
            return NTCP_LEGACY_UNKNOWN;
        return b->ports == NTCP_PORTS_RANDOM ? NTCP_LEGACY_SESSION_DEPENDENT
                                             : NTCP_LEGACY_ADDRESS_PORT_DEPENDENT;
    default: break;
    }
    return NTCP_LEGACY_UNKNOWN;
}

const char *ntcp_legacy_name(ntcp_legacy_type_t t)
{
    switch (t) {
    case NTCP_LEGACY_NONE: return "None";
    case NTCP_LEGACY_INDEPENDENT: return "Independent";
    case NTCP_LEGACY_ADDRESS_DEPENDENT: return "AddressDependent";
    case NTCP_LEGACY_ADDRESS_PORT_DEPENDENT: return "AddressPortDependent";
    case NTCP_LEGACY_SESSION_DEPENDENT: return "SessionDependent";
    case NTCP_LEGACY_UNKNOWN: break;
    }
    return "unknown";
}
