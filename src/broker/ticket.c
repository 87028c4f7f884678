/*
 * ticket.c: resumption tickets (docs/broker-protocol.md 4.1): what a broker
 * gives a registered peer so that it can register again, at any node of its
 * cluster, without an Ed25519 verification. Sealed with AES-256-GCM under a
 * key the nodes share; opening checks the tag before reading anything.
 */
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "broker_int.h"
#include "ntcp.h"

#define TICKET_VERSION 1
#define IV_SIZE 12
#define TAG_SIZE 16
static const char aad[] = "NTCP-TICKET-1";

/* Plaintext: version, expiry (u64 s), flags, family, ip (16), resume key
 * (32), key (32), name length, name. */
#define PLAIN_FIXED (1 + 8 + 1 + 1 + 16 + BROKER_RESUME_KEY_SIZE + BROKER_KEY_SIZE + 1)

int ticket_seal(const uint8_t tkey[TICKET_KEY_SIZE], const ticket *t, uint8_t *out, size_t cap)
{
    size_t namelen = strlen(t->name);
    size_t plen = PLAIN_FIXED + namelen;
    if (namelen == 0 || namelen > BROKER_NAME_MAX || cap < IV_SIZE + plen + TAG_SIZE ||
        IV_SIZE + plen + TAG_SIZE > BROKER_TICKET_MAX)
        return NTCP_ENOSPC;
    uint8_t plain[PLAIN_FIXED + BROKER_NAME_MAX], *p = plain;
    *p++ = TICKET_VERSION;
    for (int i = 7; i >= 0; i--)
        *p++ = (uint8_t)(t->expires >> (8 * i));
    *p++ = t->ip_bound;
    *p++ = t->family;
    memcpy(p, t->ip, 16);
    p += 16;
    memcpy(p, t->resume_key, BROKER_RESUME_KEY_SIZE);
    p += BROKER_RESUME_KEY_SIZE;
    memcpy(p, t->key, BROKER_KEY_SIZE);
    p += BROKER_KEY_SIZE;
    *p++ = (uint8_t)namelen;
    memcpy(p, t->name, namelen);

    if (RAND_bytes(out, IV_SIZE) != 1)
        return NTCP_ESYS;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int len = 0, fin = 0, ok = ctx &&
        EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, tkey, out) == 1 &&
        EVP_EncryptUpdate(ctx, NULL, &len, (const uint8_t *)aad, sizeof aad - 1) == 1 &&
        EVP_EncryptUpdate(ctx, out + IV_SIZE, &len, plain, (int)plen) == 1 &&
        EVP_EncryptFinal_ex(ctx, out + IV_SIZE + len, &fin) == 1 &&
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_SIZE, out + IV_SIZE + plen) == 1;
    EVP_CIPHER_CTX_free(ctx);
    OPENSSL_cleanse(plain, sizeof plain);
    return ok ? (int)(IV_SIZE + plen + TAG_SIZE) : NTCP_ESYS;
}

int ticket_open(const uint8_t tkey[TICKET_KEY_SIZE], const uint8_t *in, size_t len, ticket *t)
{
    memset(t, 0, sizeof *t);
    if (len < IV_SIZE + PLAIN_FIXED + 1 + TAG_SIZE || len > BROKER_TICKET_MAX)
        return NTCP_EINVAL;
    size_t plen = len - IV_SIZE - TAG_SIZE;
    uint8_t plain[BROKER_TICKET_MAX];
    uint8_t tag[TAG_SIZE];
    memcpy(tag, in + len - TAG_SIZE, TAG_SIZE);
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int n = 0, fin = 0, ok = ctx &&
        EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, tkey, in) == 1 &&
        EVP_DecryptUpdate(ctx, NULL, &n, (const uint8_t *)aad, sizeof aad - 1) == 1 &&
        EVP_DecryptUpdate(ctx, plain, &n, in + IV_SIZE, (int)plen) == 1 &&
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_SIZE, tag) == 1 &&
        EVP_DecryptFinal_ex(ctx, plain + n, &fin) == 1;
    EVP_CIPHER_CTX_free(ctx);
    /* Authenticated: made by a node holding the key. Checked all the same. */
    int rc = ok ? ticket_parse(plain, plen, t) : NTCP_EINVAL;
    OPENSSL_cleanse(plain, sizeof plain);
    return rc;
}

int ticket_parse(const uint8_t *plain, size_t plen, ticket *t)
{
    memset(t, 0, sizeof *t);
    const uint8_t *p = plain;
    if (plen < PLAIN_FIXED + 1 || plen > PLAIN_FIXED + BROKER_NAME_MAX || p[0] != TICKET_VERSION)
        return NTCP_EINVAL;
    p++;
    for (int i = 0; i < 8; i++)
        t->expires = t->expires << 8 | *p++;
    t->ip_bound = *p++;
    t->family = *p++;
    memcpy(t->ip, p, 16);
    p += 16;
    memcpy(t->resume_key, p, BROKER_RESUME_KEY_SIZE);
    p += BROKER_RESUME_KEY_SIZE;
    memcpy(t->key, p, BROKER_KEY_SIZE);
    p += BROKER_KEY_SIZE;
    size_t namelen = *p++;
    if (namelen != plen - PLAIN_FIXED || !broker_name_valid((const char *)p, namelen) ||
        (t->ip_bound > 1) || (t->ip_bound && t->family != 4 && t->family != 6)) {
        OPENSSL_cleanse(t, sizeof *t);
        return NTCP_EINVAL;
    }
    memcpy(t->name, p, namelen);
    return 0;
}
