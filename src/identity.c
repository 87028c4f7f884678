/*
 * identity.c: Ed25519 identity keys for the broker protocol: made on first
 * use, kept in a PEM file only its owner can read, and the sign/verify calls
 * the registration challenge needs (OpenSSL EVP, no hand-written crypto).
 */
#include "identity.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/pem.h>

#include "ntcp.h"

int ntcp_identity_generate(EVP_PKEY **out)
{
    *out = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    return *out ? 0 : NTCP_ENOMEM;
}

static int write_key(const char *path, EVP_PKEY *key)
{
    size_t n = strlen(path);
    char *tmp = malloc(n + 16);
    if (!tmp)
        return NTCP_ENOMEM;
    snprintf(tmp, n + 16, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        free(tmp);
        return NTCP_ESYS;
    }
    FILE *f = fdopen(fd, "w");
    if (!f) {
        close(fd);
        unlink(tmp);
        free(tmp);
        return NTCP_ESYS;
    }
    int ok = PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL);
    ok = ok && fflush(f) == 0 && fsync(fileno(f)) == 0;
    if (fclose(f) != 0)
        ok = 0;
    if (!ok || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        free(tmp);
        errno = e;
        return NTCP_ESYS;
    }
    free(tmp);
    return 0;
}

int ntcp_identity_load(const char *path, int create, EVP_PKEY **out)
{
    *out = NULL;
    if (!path || !*path)
        return NTCP_EINVAL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno != ENOENT)
            return NTCP_ESYS;
        if (!create)
            return NTCP_ENOTFOUND;
        EVP_PKEY *key;
        int rc = ntcp_identity_generate(&key);
        if (rc < 0)
            return rc;
        rc = write_key(path, key);
        if (rc < 0) {
            EVP_PKEY_free(key);
            return rc;
        }
        *out = key;
        return 0;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return NTCP_ESYS;
    }
    /* A private key others can read is no longer private: refuse it rather
     * than sign with it, like ssh does. */
    if (st.st_mode & 077) {
        close(fd);
        return NTCP_ECONFIG;
    }
    FILE *f = fdopen(fd, "r");
    if (!f) {
        close(fd);
        return NTCP_ESYS;
    }
    EVP_PKEY *key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    if (!key)
        return NTCP_ECONFIG;
    if (EVP_PKEY_get_id(key) != EVP_PKEY_ED25519) {
        EVP_PKEY_free(key);
        return NTCP_ECONFIG;
    }
    *out = key;
    return 0;
}

int ntcp_identity_public(EVP_PKEY *key, uint8_t pub[NTCP_ED25519_PUB])
{
    size_t len = NTCP_ED25519_PUB;
    if (!key || EVP_PKEY_get_raw_public_key(key, pub, &len) != 1 || len != NTCP_ED25519_PUB)
        return NTCP_EINVAL;
    return 0;
}

int ntcp_identity_sign(EVP_PKEY *key, const uint8_t *msg, size_t len, uint8_t sig[NTCP_ED25519_SIG])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx)
        return NTCP_ENOMEM;
    size_t siglen = NTCP_ED25519_SIG;
    int ok = EVP_DigestSignInit(ctx, NULL, NULL, NULL, key) == 1 &&
             EVP_DigestSign(ctx, sig, &siglen, msg, len) == 1 && siglen == NTCP_ED25519_SIG;
    EVP_MD_CTX_free(ctx);
    return ok ? 0 : NTCP_EINVAL;
}

int ntcp_identity_verify(const uint8_t pub[NTCP_ED25519_PUB], const uint8_t *msg, size_t len,
                         const uint8_t sig[NTCP_ED25519_SIG])
{
    EVP_PKEY *key = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pub, NTCP_ED25519_PUB);
    if (!key)
        return NTCP_EINTEGRITY; /* not a valid point: no signature can match */
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx) {
        EVP_PKEY_free(key);
        return NTCP_ENOMEM;
    }
    int ok = EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, key) == 1 &&
             EVP_DigestVerify(ctx, sig, NTCP_ED25519_SIG, msg, len) == 1;
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(key);
    return ok ? 0 : NTCP_EINTEGRITY;
}

void ntcp_identity_pub_b64(const uint8_t pub[NTCP_ED25519_PUB], char out[45])
{
    EVP_EncodeBlock((unsigned char *)out, pub, NTCP_ED25519_PUB);
    out[44] = '\0';
}

int ntcp_identity_pub_from_b64(const char *s, size_t len, uint8_t pub[NTCP_ED25519_PUB])
{
    /* 32 bytes are 44 characters with exactly one '=' of padding. */
    if (len != 44 || s[43] != '=' || s[42] == '=')
        return NTCP_EINVAL;
    unsigned char tmp[33];
    if (EVP_DecodeBlock(tmp, (const unsigned char *)s, 44) != 33)
        return NTCP_EINVAL;
    memcpy(pub, tmp, NTCP_ED25519_PUB);
    return 0;
}
