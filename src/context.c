/*
 * context.c: making, configuring and freeing an ntcp_t, including the INI
 * configuration file (inih; NTCP 0.2's key names are accepted).
 */
#include "context.h"

#include <ini.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

void ntcp_config_init(ntcp_config_t *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->size = sizeof *cfg;
}

int ntcp_add_stun_server(ntcp_t *ctx, const char *server)
{
    char host[256];
    uint16_t port;
    if (!ctx || !server || ntcp_split_host_port(server, host, sizeof host, &port, 3478) < 0 ||
        port == 0)
        return NTCP_EINVAL;
    char **grown = realloc(ctx->stun_servers, (ctx->n_stun_servers + 1) * sizeof *grown);
    if (!grown)
        return NTCP_ENOMEM;
    ctx->stun_servers = grown;
    if (!(grown[ctx->n_stun_servers] = strdup(server)))
        return NTCP_ENOMEM;
    ctx->n_stun_servers++;
    return 0;
}

int ntcp_new(const ntcp_config_t *cfg, ntcp_t **out)
{
    if (!out)
        return NTCP_EINVAL;
    *out = NULL;
    if (cfg && cfg->size < offsetof(ntcp_config_t, n_stun_servers) + sizeof(size_t))
        return NTCP_EINVAL;
    ntcp_t *ctx = calloc(1, sizeof *ctx);
    if (!ctx)
        return NTCP_ENOMEM;
    for (size_t i = 0; cfg && i < cfg->n_stun_servers; i++) {
        int rc = ntcp_add_stun_server(ctx, cfg->stun_servers[i]);
        if (rc < 0) {
            ntcp_free(ctx);
            return rc;
        }
    }
    *out = ctx;
    return 0;
}

struct ini_state {
    ntcp_t *ctx;
    int err;
};

static int on_ini_line(void *user, const char *section, const char *name, const char *value)
{
    struct ini_state *st = user;
    (void)section;
    if (strcasecmp(name, "stun_server") && strcasecmp(name, "WellKnownStunServer"))
        return 1; /* other keys belong to other parts (servers, broker) */
    char list[1024];
    snprintf(list, sizeof list, "%s", value);
    char *save = NULL;
    for (char *tok = strtok_r(list, ", \t", &save); tok; tok = strtok_r(NULL, ", \t", &save)) {
        int rc = ntcp_add_stun_server(st->ctx, tok);
        if (rc < 0) {
            st->err = rc;
            return 0;
        }
    }
    return 1;
}

int ntcp_new_from_file(const char *path, ntcp_t **out)
{
    int rc = ntcp_new(NULL, out);
    if (rc < 0)
        return rc;
    struct ini_state st = {*out, 0};
    int line = ini_parse(path, on_ini_line, &st);
    if (line != 0 || st.err) {
        ntcp_free(*out);
        *out = NULL;
        return st.err == NTCP_ENOMEM ? NTCP_ENOMEM : NTCP_ECONFIG;
    }
    return 0;
}

void ntcp_free(ntcp_t *ctx)
{
    if (!ctx)
        return;
    for (size_t i = 0; i < ctx->n_stun_servers; i++)
        free(ctx->stun_servers[i]);
    free(ctx->stun_servers);
    free(ctx);
}
