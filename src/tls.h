/*
 * tls.h: TLS 1.3 for the broker session, over memory BIOs, so that the caller
 * (a libuv read/write callback, the broker or the peer session) does all the
 * I/O: it feeds the ciphertext it read, takes the ciphertext to send, and
 * reads and writes plaintext. No sockets and no clock here; the handshake
 * timeout is the caller's (the broker's handshake time, the session's
 * request timeout). Internal to libntcp. Protocol: docs/broker-protocol.md 1.
 */
#ifndef NTCP_TLS_H
#define NTCP_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

#define NTCP_TLS_PIN_SIZE 32 /* SHA-256 of the SubjectPublicKeyInfo */
#define NTCP_TLS_MAX_PINS 4  /* the current key and its successors, while rotating */

/* Parses "sha256/BASE64" pins (curl's "sha256//BASE64" too), several
 * separated by commas or spaces, into pins[]. Returns how many (>= 1), or
 * NTCP_EINVAL (syntax, a digest that is not 32 bytes) or NTCP_ERANGE (more
 * than max). */
int ntcp_tls_parse_pins(const char *s, uint8_t pins[][NTCP_TLS_PIN_SIZE], size_t max);

/* The pin of a certificate: SHA-256 of its DER SubjectPublicKeyInfo. */
int ntcp_tls_cert_pin(X509 *cert, uint8_t pin[NTCP_TLS_PIN_SIZE]);

/* A server context for TLS 1.3 only, from PEM files (the certificate file
 * may hold the chain after the leaf). Returns NULL and a reason in err on a
 * file that does not load or a key that does not match the certificate. The
 * caller owns the result (SSL_CTX_free); every connection made from it holds
 * a reference of its own, so a reload may free it while they live. */
SSL_CTX *ntcp_tls_server_ctx(const char *cert_file, const char *key_file, char *err, size_t errlen);

/* How a client checks the server's certificate. */
typedef struct ntcp_tls_verify {
    const char *ca_file;  /* PEM trust anchors; NULL (and no pin): the system's */
    const uint8_t (*pins)[NTCP_TLS_PIN_SIZE]; /* copied; the leaf's key must be one */
    size_t npins;
    bool insecure;        /* no check at all: explicit, never a default */
} ntcp_tls_verify;

/* A client context for TLS 1.3 only. With pins and no CA file only the pin
 * is checked (a self-signed broker certificate is fine); with a CA file (or
 * neither, the system's CAs) the chain and the name are checked, and the
 * pins as well when there are some. Returns NULL and a reason in err. */
SSL_CTX *ntcp_tls_client_ctx(const ntcp_tls_verify *v, char *err, size_t errlen);

typedef struct ntcp_tls ntcp_tls;

/* One connection. server: accept side. Client only: host, the name the
 * certificate must carry, a DNS name (also sent as SNI) or an IP address
 * literal (NULL: no name check); v, the same settings the context was made
 * with (its pins are copied). Returns NULL when out of memory. */
ntcp_tls *ntcp_tls_new(SSL_CTX *ctx, bool server, const char *host, const ntcp_tls_verify *v);
void ntcp_tls_free(ntcp_tls *t);

/* Ciphertext from the socket, any split. Returns 0 or NTCP_ENOMEM. */
int ntcp_tls_feed(ntcp_tls *t, const void *data, size_t len);

/* Advances the handshake, then reads plaintext. Returns the number of bytes
 * (> 0), 0 when more ciphertext is needed, or: NTCP_ECLOSED (the peer sent
 * close_notify), NTCP_ECERT (the server's certificate was refused: CA, name
 * or pin), NTCP_ETLS (any other TLS failure: not TLS, bad record, alert).
 * Send what ntcp_tls_pending() holds after every call, also after errors
 * (an alert may be waiting). KeyUpdate messages are handled inside. */
int ntcp_tls_read(ntcp_tls *t, void *buf, size_t cap);

/* Encrypts plaintext (after the handshake). Returns 0, NTCP_ETLS or
 * NTCP_ENOMEM. The records wait in ntcp_tls_pending(). */
int ntcp_tls_write(ntcp_tls *t, const void *data, size_t len);

/* Queues close_notify (once the handshake is done; otherwise nothing). */
void ntcp_tls_shutdown(ntcp_tls *t);

/* Ciphertext waiting to be sent: its size, and up to cap bytes of it moved
 * into buf by ntcp_tls_take() (returns how many). */
size_t ntcp_tls_pending(const ntcp_tls *t);
size_t ntcp_tls_take(ntcp_tls *t, void *buf, size_t cap);

bool ntcp_tls_established(const ntcp_tls *t);
/* Why the last call failed, for logs and users ("certificate pin mismatch",
 * "certificate verify failed: hostname mismatch", "wrong version number"...);
 * "" when nothing failed. Owned by t. */
const char *ntcp_tls_error(const ntcp_tls *t);
/* Asks the peer to update its keys too (TLS 1.3 KeyUpdate); for tests and
 * long sessions. Returns 0 or NTCP_ETLS. */
int ntcp_tls_key_update(ntcp_tls *t);

#endif
