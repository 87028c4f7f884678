/*
 * tls.c: TLS 1.3 over memory BIOs (OpenSSL) for the broker session: contexts
 * from PEM files, certificate checks by CA and name or by SPKI pin, and the
 * feed/read/write/take cycle that the libuv callbacks drive.
 */
#include "tls.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>

#include "addr.h"

#include "identity.h"
#include "ntcp.h"

struct ntcp_tls {
    SSL *ssl;
    BIO *rbio, *wbio;          /* owned by ssl */
    bool server, chain, failed, pin_failed;
    int fail_code;
    uint8_t pins[NTCP_TLS_MAX_PINS][NTCP_TLS_PIN_SIZE];
    size_t npins;
    char err[320];
};

/* ---- pins ---- */

int ntcp_tls_parse_pins(const char *s, uint8_t pins[][NTCP_TLS_PIN_SIZE], size_t max)
{
    if (!s)
        return NTCP_EINVAL;
    size_t n = 0, len;
    const char *p = s;
    while ((p = ntcp_list_next(&s, &len))) {
        if (len < 7 || strncasecmp(p, "sha256/", 7) != 0)
            return NTCP_EINVAL;
        const char *b64 = p + 7;
        size_t blen = len - 7;
        if (blen == 45 && *b64 == '/') { /* curl's "sha256//", not a '/' of base64 */
            b64++;
            blen--;
        }
        if (n == max)
            return NTCP_ERANGE;
        if (ntcp_identity_pub_from_b64(b64, blen, pins[n]) < 0)
            return NTCP_EINVAL;
        n++;
    }
    return n ? (int)n : NTCP_EINVAL;
}

int ntcp_tls_cert_pin(X509 *cert, uint8_t pin[NTCP_TLS_PIN_SIZE])
{
    X509_PUBKEY *spki = cert ? X509_get_X509_PUBKEY(cert) : NULL;
    unsigned char *der = NULL;
    int len = spki ? i2d_X509_PUBKEY(spki, &der) : -1;
    if (len <= 0)
        return NTCP_EINVAL;
    unsigned int mdlen = 0;
    int ok = EVP_Digest(der, (size_t)len, pin, &mdlen, EVP_sha256(), NULL);
    OPENSSL_free(der);
    return ok == 1 && mdlen == NTCP_TLS_PIN_SIZE ? 0 : NTCP_EINVAL;
}

/* ---- contexts ---- */

static void openssl_reason(char *err, size_t errlen, const char *what)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    snprintf(err, errlen, "%s%s%s", what, r ? ": " : "", r ? r : "");
    ERR_clear_error();
}

static SSL_CTX *common_ctx(const SSL_METHOD *method)
{
    SSL_CTX *ctx = SSL_CTX_new(method);
    if (!ctx)
        return NULL;
    /* TLS 1.3 only: both ends are libntcp, so nothing older needs serving;
     * 1.3 has no renegotiation, always forward secrecy, and encrypts the
     * server's certificate. */
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    /* Idle sessions are the common case: no buffers held between records. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    return ctx;
}

SSL_CTX *ntcp_tls_server_ctx(const char *cert_file, const char *key_file, char *err, size_t errlen)
{
    ERR_clear_error();
    if (!cert_file || !key_file) {
        snprintf(err, errlen, "a certificate and a key file are both needed");
        return NULL;
    }
    SSL_CTX *ctx = common_ctx(TLS_server_method());
    if (!ctx) {
        openssl_reason(err, errlen, "cannot make a TLS context");
        return NULL;
    }
    /* Sessions live for hours and reconnect rarely: no resumption tickets. */
    SSL_CTX_set_num_tickets(ctx, 0);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
        char what[300];
        snprintf(what, sizeof what, "cannot load the certificate %s", cert_file);
        openssl_reason(err, errlen, what);
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
        char what[300];
        snprintf(what, sizeof what, "cannot load the key %s", key_file);
        openssl_reason(err, errlen, what);
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        openssl_reason(err, errlen, "the key does not match the certificate");
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

/* Replaces OpenSSL's chain check, so that a pin alone can vouch for a
 * self-signed certificate, and a CA and a pin can be asked for together. */
static int cert_verify(X509_STORE_CTX *x, void *arg)
{
    (void)arg;
    SSL *ssl = X509_STORE_CTX_get_ex_data(x, SSL_get_ex_data_X509_STORE_CTX_idx());
    ntcp_tls *t = ssl ? SSL_get_app_data(ssl) : NULL;
    if (!t)
        return 0;
    if (t->chain && X509_verify_cert(x) != 1)
        return 0; /* the chain or the name: the store context says which */
    if (t->npins) {
        uint8_t pin[NTCP_TLS_PIN_SIZE];
        bool ok = false;
        if (ntcp_tls_cert_pin(X509_STORE_CTX_get0_cert(x), pin) == 0)
            for (size_t i = 0; i < t->npins && !ok; i++)
                ok = CRYPTO_memcmp(pin, t->pins[i], sizeof pin) == 0;
        if (!ok) {
            t->pin_failed = true;
            X509_STORE_CTX_set_error(x, X509_V_ERR_APPLICATION_VERIFICATION);
            return 0;
        }
    }
    return 1;
}

SSL_CTX *ntcp_tls_client_ctx(const ntcp_tls_verify *v, char *err, size_t errlen)
{
    ERR_clear_error();
    SSL_CTX *ctx = common_ctx(TLS_client_method());
    if (!ctx) {
        openssl_reason(err, errlen, "cannot make a TLS context");
        return NULL;
    }
    if (v && v->insecure) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
        return ctx;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_cert_verify_callback(ctx, cert_verify, NULL);
    if (v && v->ca_file) {
        if (SSL_CTX_load_verify_locations(ctx, v->ca_file, NULL) != 1) {
            char what[300];
            snprintf(what, sizeof what, "cannot load the CA file %s", v->ca_file);
            openssl_reason(err, errlen, what);
            SSL_CTX_free(ctx);
            return NULL;
        }
    } else if (!v || v->npins == 0) {
        if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
            openssl_reason(err, errlen, "cannot load the system's CA certificates");
            SSL_CTX_free(ctx);
            return NULL;
        }
    }
    return ctx;
}

/* ---- connections ---- */

ntcp_tls *ntcp_tls_new(SSL_CTX *ctx, bool server, const char *host, const ntcp_tls_verify *v)
{
    ntcp_tls *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->server = server;
    t->ssl = SSL_new(ctx);
    t->rbio = BIO_new(BIO_s_mem());
    t->wbio = BIO_new(BIO_s_mem());
    if (!t->ssl || !t->rbio || !t->wbio) {
        BIO_free(t->rbio);
        BIO_free(t->wbio);
        SSL_free(t->ssl);
        free(t);
        ERR_clear_error();
        return NULL;
    }
    /* An empty read BIO means "more to come", never end of file. */
    BIO_set_mem_eof_return(t->rbio, -1);
    SSL_set_bio(t->ssl, t->rbio, t->wbio);
    SSL_set_app_data(t->ssl, t);
    if (server) {
        SSL_set_accept_state(t->ssl);
        return t;
    }
    SSL_set_connect_state(t->ssl);
    if (v && !v->insecure) {
        t->npins = v->npins < NTCP_TLS_MAX_PINS ? v->npins : NTCP_TLS_MAX_PINS;
        if (t->npins)
            memcpy(t->pins, v->pins, t->npins * NTCP_TLS_PIN_SIZE);
        t->chain = v->ca_file || t->npins == 0;
    }
    if (host && *host) {
        unsigned char ip[16];
        bool literal = inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1;
        int ok = 1;
        if (literal) {
            ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), host);
        } else {
            /* RFC 6066 3: SNI carries DNS names only, never address literals. */
            ok = SSL_set1_host(t->ssl, host) == 1 && SSL_set_tlsext_host_name(t->ssl, host) == 1;
        }
        if (!ok) {
            ntcp_tls_free(t);
            ERR_clear_error();
            return NULL;
        }
    }
    return t;
}

void ntcp_tls_free(ntcp_tls *t)
{
    if (!t)
        return;
    SSL_free(t->ssl);
    free(t);
}

int ntcp_tls_feed(ntcp_tls *t, const void *data, size_t len)
{
    if (len == 0)
        return 0;
    if (len > INT32_MAX || BIO_write(t->rbio, data, (int)len) != (int)len)
        return NTCP_ENOMEM;
    return 0;
}

static int failure(ntcp_tls *t, int rc)
{
    int e = SSL_get_error(t->ssl, rc);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        ERR_clear_error();
        return 0;
    }
    t->failed = true;
    if (e == SSL_ERROR_ZERO_RETURN) {
        snprintf(t->err, sizeof t->err, "the peer closed the TLS session");
        t->fail_code = NTCP_ECLOSED;
        ERR_clear_error();
        return t->fail_code;
    }
    long vr = t->server ? X509_V_OK : SSL_get_verify_result(t->ssl);
    if (t->pin_failed) {
        snprintf(t->err, sizeof t->err, "certificate pin mismatch");
        t->fail_code = NTCP_ECERT;
    } else if (vr != X509_V_OK) {
        snprintf(t->err, sizeof t->err, "certificate verify failed: %s",
                 X509_verify_cert_error_string(vr));
        t->fail_code = NTCP_ECERT;
    } else {
        openssl_reason(t->err, sizeof t->err, "TLS failed");
        t->fail_code = NTCP_ETLS;
    }
    ERR_clear_error();
    if (t->server && !SSL_is_init_finished(t->ssl) && BIO_ctrl_pending(t->wbio) == 0) {
        /* OpenSSL stays silent when the first bytes are no TLS at all (a
         * plain broker session on the TLS port). A fatal protocol_version
         * alert, in the clear as before any handshake (RFC 8446 5.1, 6),
         * tells the peer what this port speaks. */
        static const uint8_t alert[7] = {0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 70};
        BIO_write(t->wbio, alert, sizeof alert);
    }
    return t->fail_code;
}

int ntcp_tls_read(ntcp_tls *t, void *buf, size_t cap)
{
    if (t->failed)
        return t->fail_code;
    ERR_clear_error();
    if (!SSL_is_init_finished(t->ssl)) {
        int rc = SSL_do_handshake(t->ssl);
        if (rc != 1)
            return failure(t, rc);
    }
    if (cap > INT32_MAX)
        cap = INT32_MAX;
    int n = SSL_read(t->ssl, buf, (int)cap);
    int rc = n > 0 ? n : failure(t, n);
    /* The peer asked us to update our keys too (RFC 8446 4.6.3): answer
     * now, not at our next write, which may be a refresh period away. */
    /* OpenSSL would send it with our next SSL_write() only; asking for a
     * key update that requests none is that same answer, sent at once. */
    if (rc >= 0 && SSL_get_key_update_type(t->ssl) == SSL_KEY_UPDATE_NOT_REQUESTED &&
        SSL_key_update(t->ssl, SSL_KEY_UPDATE_NOT_REQUESTED) == 1)
        SSL_do_handshake(t->ssl);
    if (rc >= 0)
        ERR_clear_error();
    return rc;
}

int ntcp_tls_write(ntcp_tls *t, const void *data, size_t len)
{
    if (t->failed || !SSL_is_init_finished(t->ssl) || len > INT32_MAX)
        return NTCP_ETLS;
    if (len == 0)
        return 0;
    ERR_clear_error();
    int n = SSL_write(t->ssl, data, (int)len);
    if (n == (int)len)
        return 0;
    failure(t, n);
    return NTCP_ETLS;
}

void ntcp_tls_shutdown(ntcp_tls *t)
{
    /* After the peer's close_notify ours still goes: the orderly answer. */
    if ((t->failed && t->fail_code != NTCP_ECLOSED) || !SSL_is_init_finished(t->ssl))
        return;
    ERR_clear_error();
    if (SSL_get_shutdown(t->ssl) & SSL_SENT_SHUTDOWN)
        return;
    SSL_shutdown(t->ssl);
    ERR_clear_error();
}

size_t ntcp_tls_pending(const ntcp_tls *t)
{
    return BIO_ctrl_pending(t->wbio);
}

size_t ntcp_tls_take(ntcp_tls *t, void *buf, size_t cap)
{
    if (cap > INT32_MAX)
        cap = INT32_MAX;
    int n = BIO_read(t->wbio, buf, (int)cap);
    return n > 0 ? (size_t)n : 0;
}

bool ntcp_tls_established(const ntcp_tls *t)
{
    return SSL_is_init_finished(t->ssl) && !t->failed;
}

const char *ntcp_tls_error(const ntcp_tls *t)
{
    return t->err;
}

int ntcp_tls_key_update(ntcp_tls *t)
{
    if (!ntcp_tls_established(t))
        return NTCP_ETLS;
    ERR_clear_error();
    if (SSL_key_update(t->ssl, SSL_KEY_UPDATE_REQUESTED) != 1 || SSL_do_handshake(t->ssl) != 1) {
        ERR_clear_error();
        return NTCP_ETLS;
    }
    return 0;
}
