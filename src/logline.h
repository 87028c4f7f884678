/*
 * logline.h: the start of a server's log line, for a terminal or a file
 * ("2026-12-06T05:55:15.779Z ntcp-stuntd info: ") or for the systemd
 * journal ("<6>ntcp-stuntd info: ": the journal stamps the time itself and
 * takes the priority from the prefix, so `journalctl -p warning` works).
 * Internal to the servers; not part of ntcp.h.
 */
#ifndef NTCP_LOGLINE_H
#define NTCP_LOGLINE_H

#include <stdbool.h>
#include <stddef.h>

/* True when standard error is the journal's stream: $JOURNAL_STREAM names
 * its device and inode (systemd.exec(5)). */
bool ntcp_log_to_journal(void);

/* Writes the line's start into buf (snprintf rules: returns the length it
 * needed). level: 0 error, 1 warning, 2 info, 3 debug (NTCP_LOG_*);
 * millis: show milliseconds in the timestamp. */
int ntcp_log_prefix(char *buf, size_t len, int level, const char *prog, bool millis);

#endif
