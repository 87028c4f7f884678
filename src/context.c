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

#include "plan.h"
#include "session.h"
#include "tls.h"

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

/* Replaces *slot with a copy of value (NULL clears it). */
static int set_string(char **slot, const char *value)
{
    char *copy = NULL;
    if (value && !(copy = strdup(value)))
        return NTCP_ENOMEM;
    free(*slot);
    *slot = copy;
    return 0;
}

/* The methods list, parsed (plan.h); "" and NULL: all. */
static int set_methods(ntcp_t *ctx, const char *value)
{
    unsigned mask;
    if (plan_methods_parse(value, &mask) < 0)
        return NTCP_ECONFIG;
    int rc = set_string(&ctx->methods, mask ? value : NULL);
    if (rc == 0)
        ctx->methods_mask = mask;
    return rc;
}

const char *ntcp_get_methods(const ntcp_t *ctx)
{
    return ctx ? ctx->methods : NULL;
}

static int set_broker(ntcp_t *ctx, const char *value)
{
    if (value && !strncasecmp(value, "tls://", 6)) {
        value += 6;
        ctx->broker_tls = 1;
    }
    /* One "host:port" or a list of them (ntcp_session_config.broker); a
     * broker has no default port: say which. */
    char hosts[NTCP_SESSION_MAX_BROKERS][256];
    uint16_t ports[NTCP_SESSION_MAX_BROKERS];
    if (value && ntcp_broker_list_parse(value, hosts, ports, NTCP_SESSION_MAX_BROKERS) < 0)
        return NTCP_EINVAL;
    return set_string(&ctx->broker, value);
}

static int set_pin(ntcp_t *ctx, const char *value)
{
    uint8_t pins[NTCP_TLS_MAX_PINS][NTCP_TLS_PIN_SIZE];
    if (value && ntcp_tls_parse_pins(value, pins, NTCP_TLS_MAX_PINS) < 0)
        return NTCP_EINVAL;
    return set_string(&ctx->broker_pin, value);
}

/* yes/no, true/false, on/off, 1/0. */
static int set_flag(int *slot, const char *value)
{
    static const char *const yes[] = {"yes", "true", "on", "1"}, *const no[] = {"no", "false", "off", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (!strcasecmp(value, yes[i]) || !strcasecmp(value, no[i])) {
            *slot = !strcasecmp(value, yes[i]);
            return 0;
        }
    }
    return NTCP_EINVAL;
}

/* A CA or pin without TLS, or "check nothing" with something to check, is
 * a mistake worth refusing: the user meant something else. */
static int check_tls(const ntcp_t *ctx)
{
    if (!ctx->broker_tls && (ctx->broker_ca || ctx->broker_pin || ctx->broker_tls_insecure))
        return NTCP_EINVAL;
    if (ctx->broker_tls_insecure && (ctx->broker_ca || ctx->broker_pin))
        return NTCP_EINVAL;
    return 0;
}

int ntcp_get_broker_tls(const ntcp_t *ctx)
{
    return ctx ? ctx->broker_tls : 0;
}

const char *ntcp_get_broker_ca(const ntcp_t *ctx)
{
    return ctx ? ctx->broker_ca : NULL;
}

const char *ntcp_get_broker_pin(const ntcp_t *ctx)
{
    return ctx ? ctx->broker_pin : NULL;
}

int ntcp_get_broker_tls_insecure(const ntcp_t *ctx)
{
    return ctx ? ctx->broker_tls_insecure : 0;
}

const char *ntcp_get_broker(const ntcp_t *ctx)
{
    return ctx ? ctx->broker : NULL;
}

const char *ntcp_get_name(const ntcp_t *ctx)
{
    return ctx ? ctx->name : NULL;
}

const char *ntcp_get_key_file(const ntcp_t *ctx)
{
    return ctx ? ctx->key_file : NULL;
}

const char *ntcp_get_stun_server(const ntcp_t *ctx, size_t i)
{
    return ctx && i < ctx->n_stun_servers ? ctx->stun_servers[i] : NULL;
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
    pthread_mutex_init(&ctx->rt_mu, NULL);
    for (size_t i = 0; cfg && i < cfg->n_stun_servers; i++) {
        int rc = ntcp_add_stun_server(ctx, cfg->stun_servers[i]);
        if (rc < 0) {
            ntcp_free(ctx);
            return rc;
        }
    }
    /* Fields added after the first version are read only when the caller's
     * struct has them. */
    if (cfg && cfg->size >= offsetof(ntcp_config_t, key_file) + sizeof cfg->key_file) {
        int rc = set_broker(ctx, cfg->broker);
        if (rc == 0)
            rc = set_string(&ctx->name, cfg->name);
        if (rc == 0)
            rc = set_string(&ctx->key_file, cfg->key_file);
        if (rc < 0) {
            ntcp_free(ctx);
            return rc;
        }
    }
    if (cfg && cfg->size >= offsetof(ntcp_config_t, broker_tls_insecure) +
                                sizeof cfg->broker_tls_insecure) {
        if (cfg->broker_tls)
            ctx->broker_tls = 1; /* a "tls://" broker turned it on already */
        ctx->broker_tls_insecure = cfg->broker_tls_insecure != 0;
        int rc = set_string(&ctx->broker_ca, cfg->broker_ca);
        if (rc == 0)
            rc = set_pin(ctx, cfg->broker_pin);
        if (rc == 0)
            rc = check_tls(ctx);
        if (rc < 0) {
            ntcp_free(ctx);
            return rc;
        }
    }
    if (cfg && cfg->size >= offsetof(ntcp_config_t, relay) + sizeof cfg->relay) {
        if (cfg->relay < NTCP_RELAY_AUTO || cfg->relay > NTCP_RELAY_ALWAYS) {
            ntcp_free(ctx);
            return NTCP_ECONFIG;
        }
        ctx->relay = cfg->relay;
    }
    if (cfg && cfg->size >= offsetof(ntcp_config_t, methods) + sizeof cfg->methods) {
        int rc = set_methods(ctx, cfg->methods);
        if (rc < 0) {
            ntcp_free(ctx);
            return rc;
        }
    }
    *out = ctx;
    return 0;
}

int ntcp_set_relay(ntcp_t *ctx, ntcp_relay_policy_t policy)
{
    if (!ctx || policy < NTCP_RELAY_AUTO || policy > NTCP_RELAY_ALWAYS)
        return NTCP_EINVAL;
    ctx->relay = policy;
    return 0;
}

ntcp_relay_policy_t ntcp_get_relay(const ntcp_t *ctx)
{
    return ctx ? (ntcp_relay_policy_t)ctx->relay : NTCP_RELAY_AUTO;
}

/* "auto", "never", "always" (the file's relay key, the CLI's --relay). */
static int set_relay_word(int *out, const char *v)
{
    if (!strcasecmp(v, "auto"))
        *out = NTCP_RELAY_AUTO;
    else if (!strcasecmp(v, "never") || !strcasecmp(v, "no") || !strcasecmp(v, "off"))
        *out = NTCP_RELAY_NEVER;
    else if (!strcasecmp(v, "always"))
        *out = NTCP_RELAY_ALWAYS;
    else
        return NTCP_ECONFIG;
    return 0;
}

struct ini_state {
    ntcp_t *ctx;
    int err;
};

static int on_ini_line(void *user, const char *section, const char *name, const char *value)
{
    struct ini_state *st = user;
    /* The peer's own keys live in [ntcp] (or before any section), so that a
     * file shared with the servers keeps their sections apart. */
    bool own = !*section || !strcasecmp(section, "ntcp");
    int rc = 0;
    if ((own && !strcasecmp(name, "broker")) || !strcasecmp(name, "ConnectionBroker"))
        rc = set_broker(st->ctx, value);
    else if (own && !strcasecmp(name, "name"))
        rc = set_string(&st->ctx->name, value);
    else if (own && !strcasecmp(name, "key_file"))
        rc = set_string(&st->ctx->key_file, value);
    else if (own && !strcasecmp(name, "broker_tls"))
        rc = set_flag(&st->ctx->broker_tls, value);
    else if (own && !strcasecmp(name, "broker_tls_insecure"))
        rc = set_flag(&st->ctx->broker_tls_insecure, value);
    else if (own && !strcasecmp(name, "broker_ca"))
        rc = set_string(&st->ctx->broker_ca, value);
    else if (own && !strcasecmp(name, "broker_pin"))
        rc = set_pin(st->ctx, value);
    else if (own && !strcasecmp(name, "relay"))
        rc = set_relay_word(&st->ctx->relay, value);
    else if (own && !strcasecmp(name, "methods"))
        rc = set_methods(st->ctx, value);
    if (rc < 0) {
        st->err = rc;
        return 0;
    }
    if (strcasecmp(name, "stun_server") && strcasecmp(name, "WellKnownStunServer"))
        return 1; /* other keys belong to other parts (the servers' sections) */
    char list[1024];
    snprintf(list, sizeof list, "%s", value);
    char *save = NULL;
    for (char *tok = strtok_r(list, ", \t", &save); tok; tok = strtok_r(NULL, ", \t", &save)) {
        rc = ntcp_add_stun_server(st->ctx, tok);
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
    if (line == 0 && !st.err)
        st.err = check_tls(*out);
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
    ntcp_rt_shutdown(ctx);
    pthread_mutex_destroy(&ctx->rt_mu);
    for (size_t i = 0; i < ctx->n_stun_servers; i++)
        free(ctx->stun_servers[i]);
    free(ctx->stun_servers);
    free(ctx->broker);
    free(ctx->name);
    free(ctx->key_file);
    free(ctx->broker_ca);
    free(ctx->broker_pin);
    free(ctx->methods);
    free(ctx);
}
