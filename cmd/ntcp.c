/*
 * ntcp.c: the ntcp command-line tool: the main help and the dispatch to the
 * verbs, each in its own file (verbs.h): `stun` (verb_stun.c), `discover`
 * (verb_discover.c), `listen` and `connect` (verb_peer.c).
 */
#include <stdio.h>
#include <string.h>

#include "ntcp.h"
#include "verbs.h"

/* Exit codes of the dispatch itself; each verb documents its own, and all
 * agree on these two. */
enum {
    EXIT_OK = 0,
    EXIT_USAGE = 1,
};

static const char *prog = "ntcp";

static void usage_main(FILE *f)
{
    fprintf(f,
            "usage: ntcp [--help | --version] VERB [ARGS]\n"
            "       ntcp help VERB\n"
            "\n"
            "NAT traversal for plain TCP connections.\n"
            "\n"
            "Verbs:\n"
            "  connect  open a TCP connection to a peer by name, through NATs; stdin to\n"
            "           the peer, the peer to stdout (see `ntcp help connect`)\n"
            "  listen   register a name with the broker and wait for a peer's connect\n"
            "           (see `ntcp help listen`)\n"
            "  discover find out what NAT or firewall is in the way, for UDP and TCP,\n"
            "           IPv4 and IPv6 (see `ntcp help discover`)\n"
            "  stun     query a STUN/STUNT server: mapped address, RFC 5780 and\n"
            "           RFC 3489 tests, TCP connect-back (see `ntcp help stun`)\n"
            "  help     show the help of a verb\n"
            "\n"
            "Options:\n"
            "  -h, --help      show this help\n"
            "  -V, --version   show the version\n"
            "\n"
            "Exit codes: 0 success, 1 usage error, 2 no answer or unreachable,\n"
            "3 error response, protocol error, (discover) a partial result, or\n"
            "(connect) an unknown peer; connect and listen: 4 refused, 5 I/O error.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage_main(stderr);
        return EXIT_USAGE;
    }
    const char *verb = argv[1];
    if (!strcmp(verb, "-h") || !strcmp(verb, "--help")) {
        usage_main(stdout);
        return EXIT_OK;
    }
    if (!strcmp(verb, "-V") || !strcmp(verb, "--version")) {
        printf("ntcp %s\n", ntcp_version());
        return EXIT_OK;
    }
    if (!strcmp(verb, "help")) {
        if (argc < 3) {
            usage_main(stdout);
            return EXIT_OK;
        }
        if (!strcmp(argv[2], "stun")) {
            ntcp_usage_stun(stdout);
            return EXIT_OK;
        }
        if (!strcmp(argv[2], "discover")) {
            ntcp_usage_discover(stdout);
            return EXIT_OK;
        }
        if (!strcmp(argv[2], "listen")) {
            ntcp_usage_listen(stdout);
            return EXIT_OK;
        }
        if (!strcmp(argv[2], "connect")) {
            ntcp_usage_connect(stdout);
            return EXIT_OK;
        }
        fprintf(stderr, "%s: no verb %s\n", prog, argv[2]);
        return EXIT_USAGE;
    }
    if (!strcmp(verb, "stun"))
        return ntcp_verb_stun(argc - 1, argv + 1);
    if (!strcmp(verb, "discover"))
        return ntcp_verb_discover(argc - 1, argv + 1);
    if (!strcmp(verb, "listen"))
        return ntcp_verb_listen(argc - 1, argv + 1);
    if (!strcmp(verb, "connect"))
        return ntcp_verb_connect(argc - 1, argv + 1);
    fprintf(stderr, "%s: unknown verb %s\n", prog, verb);
    usage_main(stderr);
    return EXIT_USAGE;
}
