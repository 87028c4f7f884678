/*
 * verbs.h: the verbs of the `ntcp` tool that live in their own files. Each
 * returns the process exit code.
 */
#ifndef NTCP_VERBS_H
#define NTCP_VERBS_H

#include <stdio.h>

/* `ntcp stun` (verb_stun.c). */
int ntcp_verb_stun(int argc, char **argv);
void ntcp_usage_stun(FILE *f);

int ntcp_verb_discover(int argc, char **argv);
void ntcp_usage_discover(FILE *f);

/* `ntcp listen` and `ntcp connect` (verb_peer.c). */
int ntcp_verb_listen(int argc, char **argv);
int ntcp_verb_connect(int argc, char **argv);
void ntcp_usage_listen(FILE *f);
void ntcp_usage_connect(FILE *f);

/* The configuration file used when none is named: $NTCP_CONFIG, else
 * ~/.config/ntcp/ntcp.conf ($XDG_CONFIG_HOME), else /etc/ntcp/ntcp.conf, or
 * NULL when none is readable. buf holds the path when it is built. */
const char *ntcp_cli_default_config(char *buf, size_t len);

#endif
