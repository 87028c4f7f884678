/*
 * fuzz_ticket.c: libFuzzer target for the broker's resumption tickets
 * (src/broker/ticket.c): the first byte picks the sealed form (opened with a
 * fixed key: every length and tag check) or the plaintext's parser (what is
 * left once the tag holds); no crash, no read past the input, and a
 * plaintext that parses seals and opens back to the same ticket.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "broker_int.h"
#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint8_t KEY[TICKET_KEY_SIZE] = "fuzz-ticket-key-0123456789abcdef";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    ticket t, back;
    if (data[0] & 1) {
        int rc = ticket_open(KEY, data + 1, size - 1, &t);
        FUZZ_CHECK(rc == 0 || rc < 0);
        return 0;
    }
    if (ticket_parse(data + 1, size - 1, &t) < 0)
        return 0;
    FUZZ_CHECK(strlen(t.name) >= 1 && strlen(t.name) <= BROKER_NAME_MAX);
    uint8_t sealed[BROKER_TICKET_MAX];
    int n = ticket_seal(KEY, &t, sealed, sizeof sealed);
    FUZZ_CHECK(n > 0);
    FUZZ_CHECK(ticket_open(KEY, sealed, (size_t)n, &back) == 0);
    FUZZ_CHECK(memcmp(&t, &back, sizeof t) == 0);
    return 0;
}
