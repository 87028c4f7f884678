/*
 * ntcp.h: the one public header of libntcp, NAT traversal for plain TCP.
 *
 * Conventions: every function that can fail returns a negative NTCP_E* code
 * (0 or a positive count on success); ntcp_strerror() names it. The library
 * never calls exit() and keeps no global mutable state.
 */
#ifndef NTCP_H
#define NTCP_H

#ifdef __cplusplus
extern "C" {
#endif

#define NTCP_VERSION_MAJOR 0
#define NTCP_VERSION_MINOR 1
#define NTCP_VERSION_PATCH 0
#define NTCP_VERSION_STRING "0.1.0"

/* Error codes. Values are stable: new codes are only ever appended. */
enum {
    NTCP_OK = 0,
    NTCP_EINVAL = -1,        /* invalid argument */
    NTCP_ENOMEM = -2,        /* out of memory */
    NTCP_ENOSPC = -3,        /* caller's buffer too small (size needed reported) */
    NTCP_ETRUNCATED = -4,    /* message shorter than its header or length says */
    NTCP_EMALFORMED = -5,    /* header invalid: top bits, length not a multiple of 4 */
    NTCP_EBADATTR = -6,      /* attribute runs past the end or has an invalid value */
    NTCP_EPADDING = -7,      /* attribute padding missing or past the message */
    NTCP_EFAMILY = -8,       /* unknown address family in an address attribute */
    NTCP_EINTEGRITY = -9,    /* MESSAGE-INTEGRITY(-SHA256) does not verify */
    NTCP_EFINGERPRINT = -10, /* FINGERPRINT wrong or not the last attribute */
    NTCP_ENOTFOUND = -11,    /* the attribute or item is absent */
    NTCP_ENOTSTUN = -12,     /* not a STUN message at all */
    NTCP_ETIMEDOUT = -13,    /* no answer in time */
    NTCP_ESYS = -14,         /* a system call failed; errno says more */
    NTCP_EUNREACHABLE = -15, /* the server or peer cannot be reached */
    NTCP_ERANGE = -16,       /* a value is outside its allowed range */
    NTCP_EPROTO = -17,       /* the peer broke the protocol */
    NTCP_ECONFIG = -18,      /* configuration file or option invalid */
    NTCP_ECLOSED = -19,      /* the object was closed or stopped */
};

/* A static, never-NULL English description of an NTCP_E* code. */
const char *ntcp_strerror(int err);

/* The library's version string, e.g. "0.1.0". */
const char *ntcp_version(void);

#ifdef __cplusplus
}
#endif

#endif /* NTCP_H */
