/*
 * identity.h: a peer's Ed25519 identity key (made on first use, stored as PEM
 * with mode 0600) and the signatures the broker protocol needs. Internal to
 * libntcp; OpenSSL does the cryptography.
 */
#ifndef NTCP_IDENTITY_H
#define NTCP_IDENTITY_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#define NTCP_ED25519_PUB 32
#define NTCP_ED25519_SIG 64

/* Loads the private key from path; when the file does not exist and create is
 * true, makes a new key and writes it there (PEM, PKCS#8, mode 0600, written
 * to a temporary file then renamed, so a crash leaves no half key). A key
 * file readable by group or others is refused (NTCP_ECONFIG).
 * On success *out is a new EVP_PKEY owned by the caller (EVP_PKEY_free).
 * Returns 0, NTCP_ENOTFOUND, NTCP_ECONFIG (not an Ed25519 key, bad mode),
 * NTCP_ESYS (errno says more) or NTCP_ENOMEM. */
int ntcp_identity_load(const char *path, int create, EVP_PKEY **out);
/* A fresh key, not stored. Caller owns it. */
int ntcp_identity_generate(EVP_PKEY **out);
/* The raw 32-byte public key. */
int ntcp_identity_public(EVP_PKEY *key, uint8_t pub[NTCP_ED25519_PUB]);
int ntcp_identity_sign(EVP_PKEY *key, const uint8_t *msg, size_t len,
                       uint8_t sig[NTCP_ED25519_SIG]);
/* 0 when sig is pub's signature of msg, NTCP_EINTEGRITY when not. */
int ntcp_identity_verify(const uint8_t pub[NTCP_ED25519_PUB], const uint8_t *msg, size_t len,
                         const uint8_t sig[NTCP_ED25519_SIG]);
/* Base64 (standard alphabet, padded) of a public key: 44 chars + NUL. */
void ntcp_identity_pub_b64(const uint8_t pub[NTCP_ED25519_PUB], char out[45]);
/* Parses base64 of exactly 32 bytes. Returns 0 or NTCP_EINVAL. */
int ntcp_identity_pub_from_b64(const char *s, size_t len, uint8_t pub[NTCP_ED25519_PUB]);

#endif
