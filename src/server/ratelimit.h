/*
 * ratelimit.h: per-source-IP token buckets in a fixed-size table, so that the
 * server's answers to any one address are bounded (no amplifier, no scanner)
 * and the memory is bounded too, whatever the number of sources.
 */
#ifndef NTCP_RATELIMIT_H
#define NTCP_RATELIMIT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

/* 4-way set associative: a new source replaces the least recently seen entry
 * of its set. A replaced source starts again with a full bucket, which is the
 * price of bounded memory; with the keyed hash an attacker cannot aim at a
 * victim's set. */
#define RL_WAYS 4

typedef struct rl_entry {
    uint8_t ip[16];   /* IPv4 as ::ffff:a.b.c.d */
    uint64_t last_ms; /* last refill; 0 = empty slot */
    double tokens;
} rl_entry;

typedef struct ratelimit {
    double rate;  /* tokens per second; 0 = unlimited */
    double burst; /* bucket size */
    uint32_t nsets;
    uint64_t key[2]; /* hash key, random per table */
    rl_entry *e;     /* nsets * RL_WAYS; owned */
} ratelimit;

/* slots is rounded up to a power of two times RL_WAYS. Returns 0 or
 * NTCP_ENOMEM. With rate 0 no memory is taken and every call allows. */
int rl_init(ratelimit *rl, double rate, uint32_t burst, uint32_t slots);
void rl_free(ratelimit *rl);
/* Takes one token for sa's IP at time now_ms (monotonic, > 0); false when
 * the bucket is empty. */
bool rl_allow(ratelimit *rl, const struct sockaddr *sa, uint64_t now_ms);

#endif
