/*
 * ratelimit.c: token buckets per source IP in a bounded, set-associative
 * table (see ratelimit.h for why replacement is acceptable).
 */
#include "ratelimit.h"

#include <netinet/in.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>

#include "ntcp.h"

int rl_init(ratelimit *rl, double rate, uint32_t burst, uint32_t slots)
{
    memset(rl, 0, sizeof(*rl));
    rl->rate = rate;
    rl->burst = burst > 0 ? burst : 1;
    if (rate <= 0)
        return 0;
    uint32_t sets = 1;
    while ((uint64_t)sets * RL_WAYS < slots && sets < (1u << 24))
        sets <<= 1;
    rl->nsets = sets;
    rl->e = calloc((size_t)sets * RL_WAYS, sizeof(rl_entry));
    if (!rl->e)
        return NTCP_ENOMEM;
    if (RAND_bytes((unsigned char *)rl->key, sizeof(rl->key)) != 1) {
        /* A fixed key only weakens the spread against a chosen-address
         * attack; the limiter still works. */
        rl->key[0] = 0x9e3779b97f4a7c15ull;
        rl->key[1] = 0xbf58476d1ce4e5b9ull;
    }
    return 0;
}

void rl_free(ratelimit *rl)
{
    free(rl->e);
    rl->e = NULL;
}

/* A keyed mix of the 16 address bytes: splitmix-style finalisers are enough
 * here, the key is secret and the output only picks a set. */
static uint64_t mix(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

static void key_of(const struct sockaddr *sa, uint8_t ip[16])
{
    memset(ip, 0, 16);
    if (sa->sa_family == AF_INET) {
        ip[10] = ip[11] = 0xff;
        memcpy(ip + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    } else if (sa->sa_family == AF_INET6) {
        memcpy(ip, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
    }
}

bool rl_allow(ratelimit *rl, const struct sockaddr *sa, uint64_t now_ms)
{
    if (rl->rate <= 0)
        return true;
    if (now_ms == 0)
        now_ms = 1;
    uint8_t ip[16];
    key_of(sa, ip);
    uint64_t a, b;
    memcpy(&a, ip, 8);
    memcpy(&b, ip + 8, 8);
    uint64_t h = mix(mix(a ^ rl->key[0]) ^ b ^ rl->key[1]);
    rl_entry *set = rl->e + (size_t)(h & (rl->nsets - 1)) * RL_WAYS;
    rl_entry *hit = NULL, *victim = &set[0];
    for (int i = 0; i < RL_WAYS; i++) {
        if (set[i].last_ms != 0 && memcmp(set[i].ip, ip, 16) == 0) {
            hit = &set[i];
            break;
        }
        if (set[i].last_ms < victim->last_ms)
            victim = &set[i];
    }
    if (!hit) {
        hit = victim;
        memcpy(hit->ip, ip, 16);
        hit->tokens = rl->burst;
        hit->last_ms = now_ms;
    } else if (now_ms > hit->last_ms) {
        hit->tokens += (double)(now_ms - hit->last_ms) * rl->rate / 1000.0;
        if (hit->tokens > rl->burst)
            hit->tokens = rl->burst;
        hit->last_ms = now_ms;
    }
    if (hit->tokens < 1.0)
        return false;
    hit->tokens -= 1.0;
    return true;
}
