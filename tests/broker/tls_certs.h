/*
 * tls_certs.h: throwaway certificates for the TLS tests, made with OpenSSL's
 * API in a test directory: a CA and a broker certificate it signs (names
 * broker.test, 127.0.0.1, ::1), an unrelated CA, and a self-signed broker
 * certificate with a key of its own (for pins and reloads).
 */
#ifndef NTCP_TEST_TLS_CERTS_H
#define NTCP_TEST_TLS_CERTS_H

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "tls.h"

typedef struct tls_files {
    char ca[160], other_ca[160];
    char cert[160], key[160];           /* signed by ca */
    char self_cert[160], self_key[160]; /* self-signed, another key */
    char pin[80], self_pin[80];         /* "sha256/..." of cert's and self_cert's keys */
} tls_files;

static bool tc_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, issuer ? issuer : x, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    if (!e)
        return false;
    bool ok = X509_add_ext(x, e, -1) == 1;
    X509_EXTENSION_free(e);
    return ok;
}

/* issuer NULL: self-signed with key. */
static X509 *tc_cert(EVP_PKEY *key, const char *cn, bool ca, X509 *issuer, EVP_PKEY *issuer_key,
                     const char *san)
{
    X509 *x = X509_new();
    if (!x)
        return NULL;
    unsigned char serial[8];
    RAND_bytes(serial, sizeof serial);
    serial[0] &= 0x7F;
    BIGNUM *bn = BN_bin2bn(serial, sizeof serial, NULL);
    bool ok = bn && X509_set_version(x, 2) == 1 &&
              BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL &&
              X509_gmtime_adj(X509_getm_notBefore(x), -3600) != NULL &&
              X509_gmtime_adj(X509_getm_notAfter(x), 86400) != NULL &&
              X509_set_pubkey(x, key) == 1;
    BN_free(bn);
    X509_NAME *name = X509_get_subject_name(x);
    ok = ok && X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0) == 1;
    ok = ok && X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name) == 1;
    ok = ok && tc_ext(x, issuer, NID_basic_constraints, ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
    ok = ok && tc_ext(x, issuer, NID_key_usage,
                      ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature");
    ok = ok && tc_ext(x, issuer, NID_subject_key_identifier, "hash");
    if (!ca)
        ok = ok && tc_ext(x, issuer, NID_ext_key_usage, "serverAuth");
    if (san)
        ok = ok && tc_ext(x, issuer, NID_subject_alt_name, san);
    ok = ok && X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256()) > 0;
    if (!ok) {
        X509_free(x);
        return NULL;
    }
    return x;
}

static bool tc_write(const char *path, X509 *x, EVP_PKEY *key)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return false;
    bool ok = x ? PEM_write_X509(f, x) == 1
                : PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL) == 1;
    return fclose(f) == 0 && ok;
}

static bool tc_pin(X509 *x, char *out, size_t len)
{
    uint8_t pin[NTCP_TLS_PIN_SIZE];
    char b64[64];
    if (ntcp_tls_cert_pin(x, pin) < 0)
        return false;
    EVP_EncodeBlock((unsigned char *)b64, pin, sizeof pin);
    snprintf(out, len, "sha256/%s", b64);
    return true;
}

/* Makes every file in dir. Returns false on any failure. */
static bool tls_files_make(tls_files *t, const char *dir)
{
    memset(t, 0, sizeof *t);
    snprintf(t->ca, sizeof t->ca, "%s/ca.pem", dir);
    snprintf(t->other_ca, sizeof t->other_ca, "%s/other-ca.pem", dir);
    snprintf(t->cert, sizeof t->cert, "%s/broker.pem", dir);
    snprintf(t->key, sizeof t->key, "%s/broker.key", dir);
    snprintf(t->self_cert, sizeof t->self_cert, "%s/self.pem", dir);
    snprintf(t->self_key, sizeof t->self_key, "%s/self.key", dir);
    EVP_PKEY *cak = EVP_EC_gen("P-256"), *ok2 = EVP_EC_gen("P-256");
    EVP_PKEY *bk = EVP_EC_gen("P-256"), *sk = EVP_EC_gen("P-256");
    X509 *ca = NULL, *other = NULL, *leaf = NULL, *self = NULL;
    bool ok = cak && ok2 && bk && sk;
    ok = ok && (ca = tc_cert(cak, "ntcp test CA", true, NULL, NULL, NULL)) != NULL;
    ok = ok && (other = tc_cert(ok2, "another CA", true, NULL, NULL, NULL)) != NULL;
    ok = ok && (leaf = tc_cert(bk, "broker.test", false, ca, cak,
                               "DNS:broker.test,IP:127.0.0.1,IP:::1")) != NULL;
    ok = ok && (self = tc_cert(sk, "self.test", false, NULL, NULL,
                               "DNS:self.test,IP:127.0.0.1,IP:::1")) != NULL;
    ok = ok && tc_write(t->ca, ca, NULL) && tc_write(t->other_ca, other, NULL) &&
         tc_write(t->cert, leaf, NULL) && tc_write(t->key, NULL, bk) &&
         tc_write(t->self_cert, self, NULL) && tc_write(t->self_key, NULL, sk);
    ok = ok && tc_pin(leaf, t->pin, sizeof t->pin) && tc_pin(self, t->self_pin, sizeof t->self_pin);
    X509_free(ca);
    X509_free(other);
    X509_free(leaf);
    X509_free(self);
    EVP_PKEY_free(cak);
    EVP_PKEY_free(ok2);
    EVP_PKEY_free(bk);
    EVP_PKEY_free(sk);
    return ok;
}

#endif
