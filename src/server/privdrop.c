/*
 * privdrop.c: giving up root once the sockets are bound. The TCP listeners
 * are handed to the new user first: Linux lets a socket share a listener's
 * port with SO_REUSEPORT only when both belong to the same user, and the
 * connect-back sockets are created after the drop.
 */
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "stuntd_int.h"

int ntcp_stuntd_drop_privileges(ntcp_stuntd *s, const char *user, char *err, size_t errlen)
{
    errno = 0;
    struct passwd *pw = getpwnam(user);
    if (!pw) {
        snprintf(err, errlen, "no such user: %s", user);
        return NTCP_ENOTFOUND;
    }
    uid_t uid = pw->pw_uid;
    gid_t gid = pw->pw_gid;
    for (int fi = 0; fi < NTCP_STUNTD_NFAM; fi++)
        for (int k = 0; k < 4; k++) {
            stuntd_sock *sk = &s->fam[fi].tcp[k >> 1][k & 1];
            /* fchown on a socket sets its owner (sk_uid), which is what the
             * SO_REUSEPORT check compares. */
            if (sk->fd >= 0 && fchown(sk->fd, uid, gid) < 0) {
                snprintf(err, errlen, "cannot give the listeners to %s: %s", user,
                         strerror(errno));
                return NTCP_ESYS;
            }
        }
    if (setgroups(1, &gid) < 0 || setgid(gid) < 0 || setuid(uid) < 0) {
        snprintf(err, errlen, "cannot become %s: %s", user, strerror(errno));
        return NTCP_ESYS;
    }
    if (uid != 0 && setuid(0) == 0) {
        snprintf(err, errlen, "could regain root after becoming %s", user);
        return NTCP_ESYS;
    }
    SLOG(s, NTCP_LOG_INFO, "running as %s (uid %u, gid %u)", user, (unsigned)uid, (unsigned)gid);
    return 0;
}
