/*
 * error.c: names of the library's error codes and its version string.
 */
#include "ntcp.h"

const char *ntcp_strerror(int err)
{
    switch (err) {
    case NTCP_OK: return "success";
    case NTCP_EINVAL: return "invalid argument";
    case NTCP_ENOMEM: return "out of memory";
    case NTCP_ENOSPC: return "buffer too small";
    case NTCP_ETRUNCATED: return "message truncated";
    case NTCP_EMALFORMED: return "malformed message header";
    case NTCP_EBADATTR: return "malformed attribute";
    case NTCP_EPADDING: return "bad attribute padding";
    case NTCP_EFAMILY: return "unknown address family";
    case NTCP_EINTEGRITY: return "message integrity check failed";
    case NTCP_EFINGERPRINT: return "fingerprint check failed";
    case NTCP_ENOTFOUND: return "not found";
    case NTCP_ENOTSTUN: return "not a STUN message";
    case NTCP_ETIMEDOUT: return "timed out";
    case NTCP_ESYS: return "system call failed";
    case NTCP_EUNREACHABLE: return "unreachable";
    case NTCP_ERANGE: return "value out of range";
    case NTCP_EPROTO: return "protocol error";
    case NTCP_ECONFIG: return "invalid configuration";
    case NTCP_ECLOSED: return "closed";
    case NTCP_ENOPEER: return "unknown peer";
    case NTCP_EREFUSED: return "refused";
    case NTCP_ENOTREADY: return "not registered with the broker";
    case NTCP_ETLS: return "TLS failed";
    case NTCP_ECERT: return "certificate refused";
    }
    return "unknown error";
}

const char *ntcp_version(void)
{
    return NTCP_VERSION_STRING;
}
