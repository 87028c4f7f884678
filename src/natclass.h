/*
 * natclass.h: turns what the discovery probes observed into a NAT behaviour
 * (RFC 4787 / RFC 5382 terms). A pure function: no I/O, no clock, so every
 * combination is covered by table-driven tests.
 */
#ifndef NTCP_NATCLASS_H
#define NTCP_NATCLASS_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "addr.h"
#include "ntcp.h"

/* Which server endpoint a mapping was observed towards (RFC 5780 4.3). */
enum {
    NTCP_OBS_PRIMARY = 0, /* primary IP, primary port */
    NTCP_OBS_ALT_IP = 1,  /* alternate IP, primary port */
    NTCP_OBS_ALT_BOTH = 2 /* alternate IP, alternate port */
};

#define NTCP_OBS_MAX_SEQ 8

typedef struct ntcp_nat_obs {
    bool tcp;
    /* The probe socket's own address (IP as routed towards the server). */
    struct sockaddr_storage local;
    /* Mapped addresses seen from that one local port towards the three
     * server endpoints; got[i] false when that probe had no answer. */
    struct sockaddr_storage mapped[3];
    bool got[3];
    /* Filtering. UDP: was a response with CHANGE-REQUEST (IP and port, port
     * only) received? TCP: did the connect-back from (other IP and port,
     * other port) get through? */
    ntcp_tristate_t from_other_both;
    ntcp_tristate_t from_other_port;
    /* TCP: the stunt_outcome of the connect-back from the other IP and port
     * when it did not get through (-1 when not known). */
    int syn_outcome;
    /* Port allocation: (local port, mapped port) of successive new mappings,
     * in the order they were made. */
    uint16_t seq_local[NTCP_OBS_MAX_SEQ];
    uint16_t seq_mapped[NTCP_OBS_MAX_SEQ];
    size_t nseq;
    ntcp_tristate_t hairpin;
    int lifetime_s;
} ntcp_nat_obs;

/* Initialises o: nothing observed yet (every tristate unknown). */
void ntcp_nat_obs_init(ntcp_nat_obs *o, bool tcp);

/* Classifies o into out. Never guesses: a field that the observations do not
 * settle is UNKNOWN, and out->why says which observation was missing. */
void ntcp_classify(const ntcp_nat_obs *o, ntcp_nat_behaviour_t *out);

#endif /* NTCP_NATCLASS_H */
