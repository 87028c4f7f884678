/*
 * fuzz_stun_framer.c: libFuzzer target for the STUN-over-TCP stream framer.
 * Input: byte 0 picks the framer's buffer size and how bytes go in, bytes 1-2
 * seed the chunk sizes, the rest is the stream. Whatever the chunking, the
 * same messages must come out, whole, in order, then the same final status.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fuzz_check.h"
#include "stun.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* odd sizes too: a partial header can then sit at the very end */
static const size_t CAPS[8] = {20, 23, 64, 130, 548, 1501, 4096, STUN_MAX_MESSAGE};

struct outcome {
    size_t nmsgs;
    size_t consumed; /* bytes of the stream delivered as messages */
    int status;      /* 0: stream ended (maybe mid-message), or the error */
};

static uint32_t rng_next(uint32_t *s)
{
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *s = x;
}

/* Feeds stream through a framer of cap bytes in chunks (max_chunk 0: as much
 * as fits each time) and checks each message as it comes out. */
static struct outcome run(const uint8_t *stream, size_t len, size_t cap, uint32_t seed,
                          size_t max_chunk, bool use_space)
{
    uint8_t *storage = malloc(cap);
    FUZZ_CHECK(storage != NULL);
    stun_framer f;
    stun_framer_init(&f, storage, cap);
    struct outcome o = {0, 0, 0};
    size_t fed = 0;
    uint32_t rng = seed | 1;
    for (;;) {
        const uint8_t *msg = NULL;
        size_t mlen = 0;
        int rc = stun_framer_next(&f, &msg, &mlen);
        FUZZ_CHECK(rc == 0 || rc == 1 || rc == NTCP_ENOTSTUN || rc == NTCP_ERANGE);
        FUZZ_CHECK(stun_framer_pending(&f) <= cap);
        if (rc < 0) {
            o.status = rc;
            break;
        }
        if (rc == 1) {
            /* the next slice of the stream, whole, and a STUN message */
            FUZZ_CHECK(mlen >= STUN_HEADER_SIZE && mlen <= cap);
            FUZZ_CHECK(o.consumed + mlen <= fed);
            FUZZ_CHECK(memcmp(msg, stream + o.consumed, mlen) == 0);
            FUZZ_CHECK(stun_looks_like(msg, mlen));
            FUZZ_CHECK(mlen == STUN_HEADER_SIZE + (size_t)((msg[2] << 8) | msg[3]));
            stun_msg m;
            (void)stun_parse(&m, msg, mlen);
            o.nmsgs++;
            o.consumed += mlen;
            FUZZ_CHECK(o.consumed + stun_framer_pending(&f) == fed);
            continue;
        }
        /* every byte fed is either delivered or still held */
        FUZZ_CHECK(o.consumed + stun_framer_pending(&f) == fed);
        if (fed == len)
            break;
        size_t want = len - fed;
        if (max_chunk) {
            size_t c = rng_next(&rng) % max_chunk + 1;
            want = c < want ? c : want;
        }
        size_t took;
        if (use_space) {
            uint8_t *p = NULL;
            size_t avail = 0;
            stun_framer_space(&f, &p, &avail);
            FUZZ_CHECK(avail <= cap);
            took = want < avail ? want : avail;
            memcpy(p, stream + fed, took);
            stun_framer_commit(&f, took);
        } else {
            took = stun_framer_write(&f, stream + fed, want);
            FUZZ_CHECK(took <= want);
        }
        /* Full, and yet no message and no error: the stream would stall. */
        FUZZ_CHECK(took > 0);
        fed += took;
    }
    free(storage);
    return o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    size_t cap = CAPS[data[0] & 7];
    bool use_space = data[0] & 8;
    size_t max_chunk = (size_t)1 << ((data[0] >> 4) & 0x0F); /* 1 .. 32768 */
    uint32_t seed = (uint32_t)data[1] << 8 | data[2];
    const uint8_t *stream = data + 3;
    size_t len = size - 3;

    struct outcome chunked = run(stream, len, cap, seed, max_chunk, use_space);
    struct outcome whole = run(stream, len, cap, 0, 0, !use_space);
    FUZZ_CHECK(chunked.nmsgs == whole.nmsgs);
    FUZZ_CHECK(chunked.consumed == whole.consumed);
    FUZZ_CHECK(chunked.status == whole.status);
    return 0;
}
