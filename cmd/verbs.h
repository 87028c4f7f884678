/*
 * verbs.h: the verbs of the `ntcp` tool that live in their own files. Each
 * returns the process exit code.
 */
#ifndef NTCP_VERBS_H
#define NTCP_VERBS_H

#include <stdio.h>

int ntcp_verb_discover(int argc, char **argv);
void ntcp_usage_discover(FILE *f);

#endif
