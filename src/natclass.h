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
    /* Another probe socket's local and mapped address, when the primary
     * probe (got[0]) had no answer but that one had: whether there is a NAT
     * is still known. got_other false: no other probe was answered either. */
    struct sockaddr_storage other_local, other_mapped;
    bool got_other;
    /* Filtering. UDP: was a response with CHANGE-REQUEST (IP and port, port
     * only) received? TCP: did the connect-back from (other IP and port,
     * other port) get through? NO only when the NAT answered that it did
     * not (TCP: an RST or ICMP error); silence is counted in silent_*. */
    ntcp_tristate_t from_other_both;
    ntcp_tristate_t from_other_port;
    /* Tries of each test that met silence while the path to the server
     * worked (UDP: requests sent after, or with, an answered plain request
     * on the same port and given their round trip; TCP: the server's SYNs,
     * counted on RFC 6298's retransmission schedule). Silence is read as
     * NO once there are ntcp_silence_needed() of them. */
    unsigned silent_both, silent_port;
    /* Loss seen on the link by probes that had to be answered: of `tries`
     * sent (datagrams, SYNs), `lost` were not. */
    unsigned lost, tries;
    /* TCP: the stunt_outcome of the connect-back from the other IP and port
     * when it did not get through (-1 when not known). */
    int syn_outcome;
    /* Port allocation: (local port, mapped port) of successive new mappings,
     * in the order they were made: seq_pos[i] is the place in the burst of
     * sample i (a lost probe leaves a gap), seq_first[i] whether its first
     * packet was answered, so that the mapping surely dates from its place
     * (a retransmitted one may have been made later). */
    uint16_t seq_local[NTCP_OBS_MAX_SEQ];
    uint16_t seq_mapped[NTCP_OBS_MAX_SEQ];
    uint8_t seq_pos[NTCP_OBS_MAX_SEQ];
    bool seq_first[NTCP_OBS_MAX_SEQ];
    size_t nseq;
    ntcp_tristate_t hairpin;
    int lifetime_s;
} ntcp_nat_obs;

/* Initialises o: nothing observed yet (every tristate unknown, every sample
 * at its own place and answered at once). */
void ntcp_nat_obs_init(ntcp_nat_obs *o, bool tcp);

/* How many tries met by silence make "it does not come through" the
 * answer, when `lost` of `tries` probes that had to be answered were lost:
 * enough that a path which lets them through would have answered one of
 * them but for a chance of NTCP_SILENCE_RISK. No loss seen: NTCP_SILENCE_MIN.
 * UINT_MAX when the link loses so much that no number will do. */
#define NTCP_SILENCE_MIN 3
#define NTCP_SILENCE_RISK 1e-5
unsigned ntcp_silence_needed(unsigned lost, unsigned tries);

/* Classifies o into out. Never guesses: a field that the observations do not
 * settle is UNKNOWN, and out->why says which observation was missing. */
void ntcp_classify(const ntcp_nat_obs *o, ntcp_nat_behaviour_t *out);

#endif /* NTCP_NATCLASS_H */
