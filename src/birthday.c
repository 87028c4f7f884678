/*
 * birthday.c: the random order of ports guessed by a birthday search, shared
 * by the UDP punch and the TCP engine (birthday.h).
 */
#include "birthday.h"

#include <stdlib.h>

#include <openssl/rand.h>

#include "ntcp.h"

int ntcp_birthday_ports(uint16_t *out, unsigned n)
{
    const unsigned span = 65536 - NTCP_BIRTHDAY_PORT_LO;
    if (n > span)
        return NTCP_EINVAL;
    uint16_t *all = malloc(span * sizeof *all);
    if (!all)
        return NTCP_ENOMEM;
    for (unsigned i = 0; i < span; i++)
        all[i] = (uint16_t)(NTCP_BIRTHDAY_PORT_LO + i);
    for (unsigned i = 0; i < n; i++) {
        uint32_t r;
        /* Guesses need not be secret, only spread: a failed RNG falls back
         * to a multiplicative hash of the index. */
        if (RAND_bytes((unsigned char *)&r, sizeof r) != 1)
            r = (uint32_t)i * 2654435761u;
        unsigned j = i + r % (span - i);
        uint16_t t = all[i];
        all[i] = all[j];
        all[j] = t;
        out[i] = all[i];
    }
    free(all);
    return 0;
}
