/*
 * keys.c: the broker's name -> key bindings (a hash table with a random
 * SipHash key, so nobody can aim names at one chain), the authorized-keys
 * file, the first-use bindings kept in --state-dir, and per-source buckets.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <netinet/in.h>

#include "broker_int.h"
#include "identity.h"
#include "ntcp.h"

/* ---- SipHash-2-4 (Aumasson & Bernstein), written from the paper ---- */

static uint64_t rotl(uint64_t x, int b)
{
    return (x << b) | (x >> (64 - b));
}

static uint64_t le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

#define SIPROUND                                                                                   \
    do {                                                                                           \
        v0 += v1; v1 = rotl(v1, 13); v1 ^= v0; v0 = rotl(v0, 32);                                  \
        v2 += v3; v3 = rotl(v3, 16); v3 ^= v2;                                                     \
        v0 += v3; v3 = rotl(v3, 21); v3 ^= v0;                                                     \
        v2 += v1; v1 = rotl(v1, 17); v1 ^= v2; v2 = rotl(v2, 32);                                  \
    } while (0)

uint64_t broker_siphash(const uint8_t key[16], const void *data, size_t len)
{
    const uint8_t *in = data;
    uint64_t k0 = le64(key), k1 = le64(key + 8);
    uint64_t v0 = 0x736f6d6570736575ULL ^ k0, v1 = 0x646f72616e646f6dULL ^ k1;
    uint64_t v2 = 0x6c7967656e657261ULL ^ k0, v3 = 0x7465646279746573ULL ^ k1;
    size_t whole = len - len % 8;
    for (size_t i = 0; i < whole; i += 8) {
        uint64_t m = le64(in + i);
        v3 ^= m;
        SIPROUND;
        SIPROUND;
        v0 ^= m;
    }
    uint64_t last = (uint64_t)len << 56;
    for (size_t i = 0; i < len % 8; i++)
        last |= (uint64_t)in[whole + i] << (8 * i);
    v3 ^= last;
    SIPROUND;
    SIPROUND;
    v0 ^= last;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* ---- the table ---- */

static size_t slot(const ntcp_broker *b, const char *name, size_t len)
{
    return (size_t)broker_siphash(b->hash_key, name, len) & (b->table_size - 1);
}

binding *binding_find(ntcp_broker *b, const char *name, size_t len)
{
    for (binding *x = b->table[slot(b, name, len)]; x; x = x->next)
        if (x->namelen == len && memcmp(x->name, name, len) == 0)
            return x;
    return NULL;
}

static void grow(ntcp_broker *b)
{
    size_t n = b->table_size * 2;
    binding **t = calloc(n, sizeof *t);
    if (!t)
        return; /* chains just get longer */
    for (size_t i = 0; i < b->table_size; i++) {
        binding *x = b->table[i];
        while (x) {
            binding *next = x->next;
            size_t j = (size_t)broker_siphash(b->hash_key, x->name, x->namelen) & (n - 1);
            x->next = t[j];
            t[j] = x;
            x = next;
        }
    }
    free(b->table);
    b->table = t;
    b->table_size = n;
}

binding *binding_add(ntcp_broker *b, const char *name, size_t len, const uint8_t key[32], uint8_t flags)
{
    if (b->st.bindings >= b->table_size)
        grow(b);
    binding *x = malloc(sizeof *x + len + 1);
    if (!x)
        return NULL;
    x->live = NULL;
    memcpy(x->key, key, BROKER_KEY_SIZE);
    x->flags = flags;
    x->namelen = (uint8_t)len;
    memcpy(x->name, name, len);
    x->name[len] = '\0';
    size_t i = slot(b, name, len);
    x->next = b->table[i];
    b->table[i] = x;
    b->st.bindings++;
    return x;
}

void binding_remove(ntcp_broker *b, binding *x)
{
    binding **pp = &b->table[slot(b, x->name, x->namelen)];
    while (*pp && *pp != x)
        pp = &(*pp)->next;
    if (*pp)
        *pp = x->next;
    if (x->live) {
        x->live->bind = NULL;
        notify_ended(x->live, BROKER_ERR_FORBIDDEN, "No longer authorized");
    }
    free(x);
    b->st.bindings--;
}

void bindings_free(ntcp_broker *b)
{
    for (size_t i = 0; i < b->table_size; i++) {
        binding *x = b->table[i];
        while (x) {
            binding *next = x->next;
            free(x);
            x = next;
        }
    }
    free(b->table);
    b->table = NULL;
}

/* ---- files of "name base64-key" lines ---- */

/* Splits one line; false for blank lines and comments. */
static int parse_line(char *line, char **name, size_t *namelen, uint8_t key[32])
{
    char *p = line;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p == '\0' || *p == '#' || *p == '\n' || *p == '\r')
        return 0;
    char *n = p;
    while (*p && *p != ' ' && *p != '\t')
        p++;
    size_t nl = (size_t)(p - n);
    while (*p == ' ' || *p == '\t')
        p++;
    char *k = p;
    while (*p && *p != ' ' && *p != '\t' && *p != '\n' && *p != '\r')
        p++;
    size_t kl = (size_t)(p - k);
    if (!broker_name_valid(n, nl) || ntcp_identity_pub_from_b64(k, kl, key) < 0)
        return NTCP_EINVAL;
    *name = n;
    *namelen = nl;
    return 1;
}

int keys_load_authorized(ntcp_broker *b, bool reload)
{
    FILE *f = fopen(b->authorized_keys, "re");
    if (!f) {
        broker_logf(b, NTCP_LOG_ERROR, "cannot open authorized keys %s: %s", b->authorized_keys,
                    strerror(errno));
        return NTCP_ECONFIG;
    }
    /* Parse everything first, so that a broken file leaves the old keys. */
    size_t cap = 64, n = 0;
    struct ent { char name[BROKER_NAME_MAX + 1]; uint8_t key[32]; } *e = malloc(cap * sizeof *e);
    char line[512];
    int lineno = 0, rc = 0;
    while (e && fgets(line, sizeof line, f)) {
        lineno++;
        char *name;
        size_t nl;
        int r = parse_line(line, &name, &nl, e[n].key);
        if (r < 0) {
            broker_logf(b, NTCP_LOG_ERROR, "%s:%d: expected \"name base64-ed25519-key\"",
                        b->authorized_keys, lineno);
            rc = NTCP_ECONFIG;
            break;
        }
        if (r == 0)
            continue;
        memcpy(e[n].name, name, nl);
        e[n].name[nl] = '\0';
        if (++n == cap) {
            void *ne = realloc(e, 2 * cap * sizeof *e);
            if (!ne) {
                free(e);
                e = NULL;
                break;
            }
            e = ne;
            cap *= 2;
        }
    }
    fclose(f);
    if (!e)
        return NTCP_ENOMEM;
    if (rc < 0) {
        free(e);
        return rc;
    }
    if (reload)
        for (size_t i = 0; i < b->table_size; i++)
            for (binding *x = b->table[i]; x; x = x->next)
                x->flags |= BIND_STALE;
    for (size_t i = 0; i < n; i++) {
        size_t nl = strlen(e[i].name);
        binding *x = binding_find(b, e[i].name, nl);
        if (x && !(x->flags & BIND_STALE))
            continue; /* a duplicate line: the first one counts */
        if (x) {
            x->flags = BIND_AUTHORIZED;
            if (memcmp(x->key, e[i].key, 32) != 0) {
                memcpy(x->key, e[i].key, 32);
                if (x->live) {
                    /* The session proved the old key, not this one. */
                    x->live->bind = NULL;
                    notify_ended(x->live, BROKER_ERR_FORBIDDEN, "Key changed");
                    x->live = NULL;
                }
            }
        } else if (!binding_add(b, e[i].name, nl, e[i].key, BIND_AUTHORIZED)) {
            free(e);
            return NTCP_ENOMEM;
        }
    }
    free(e);
    if (reload) {
        for (size_t i = 0; i < b->table_size; i++) {
            binding *x = b->table[i];
            while (x) {
                binding *next = x->next;
                if (x->flags & BIND_STALE)
                    binding_remove(b, x);
                x = next;
            }
        }
    }
    broker_logf(b, NTCP_LOG_INFO, "%zu authorized keys loaded from %s", n, b->authorized_keys);
    return 0;
}

static int read_bindings(ntcp_broker *b, const char *path)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return errno == ENOENT ? 0 : NTCP_ECONFIG;
    char line[512];
    int lineno = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        char *name;
        size_t nl;
        uint8_t key[32];
        int r = parse_line(line, &name, &nl, key);
        if (r < 0) {
            /* A torn last journal line (a crash mid-write) is skipped. */
            broker_logf(b, NTCP_LOG_WARN, "%s:%d: unreadable line skipped", path, lineno);
            continue;
        }
        if (r == 0 || binding_find(b, name, nl))
            continue; /* the first binding of a name is the one that counts */
        if (!binding_add(b, name, nl, key, 0)) {
            fclose(f);
            return NTCP_ENOMEM;
        }
    }
    fclose(f);
    return 0;
}

static int write_line(FILE *f, const binding *x)
{
    char k[45];
    ntcp_identity_pub_b64(x->key, k);
    return fprintf(f, "%s %s\n", x->name, k) < 0 ? -1 : 0;
}

/* Loads bindings + journal, writes them back as one snapshot (temporary file,
 * fsync, rename, fsync of the directory) and empties the journal. */
int keys_load_state(ntcp_broker *b)
{
    size_t dl = strlen(b->state_dir);
    char *snap = malloc(dl + 32), *jour = malloc(dl + 32), *tmp = malloc(dl + 32);
    int rc = NTCP_ENOMEM;
    if (!snap || !jour || !tmp)
        goto out;
    snprintf(snap, dl + 32, "%s/bindings", b->state_dir);
    snprintf(jour, dl + 32, "%s/bindings.journal", b->state_dir);
    snprintf(tmp, dl + 32, "%s/bindings.tmp", b->state_dir);
    if (mkdir(b->state_dir, 0700) != 0 && errno != EEXIST) {
        rc = NTCP_ECONFIG;
        goto out;
    }
    if ((rc = read_bindings(b, snap)) < 0 || (rc = read_bindings(b, jour)) < 0)
        goto out;
    rc = NTCP_ECONFIG;
    FILE *f = fopen(tmp, "we");
    if (!f)
        goto out;
    bool ok = true;
    for (size_t i = 0; i < b->table_size && ok; i++)
        for (binding *x = b->table[i]; x && ok; x = x->next)
            ok = write_line(f, x) == 0;
    ok = ok && fflush(f) == 0 && fsync(fileno(f)) == 0;
    if (fclose(f) != 0 || !ok || rename(tmp, snap) != 0) {
        unlink(tmp);
        goto out;
    }
    int dfd = open(b->state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    /* The snapshot now holds the journal's lines: start it empty. */
    b->journal_fd = open(jour, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
    if (b->journal_fd < 0)
        goto out;
    broker_logf(b, NTCP_LOG_INFO, "%llu name bindings loaded from %s",
                (unsigned long long)b->st.bindings, b->state_dir);
    rc = 0;
out:
    free(snap);
    free(jour);
    free(tmp);
    return rc;
}

void keys_persist(ntcp_broker *b, const binding *x)
{
    if (b->journal_fd < 0)
        return;
    char line[BROKER_NAME_MAX + 64], k[45];
    ntcp_identity_pub_b64(x->key, k);
    int n = snprintf(line, sizeof line, "%s %s\n", x->name, k);
    /* One write() of one line with O_APPEND: a crash leaves at most a torn
     * last line, which the loader skips. */
    if (write(b->journal_fd, line, (size_t)n) != n)
        broker_logf(b, NTCP_LOG_ERROR, "cannot write the bindings journal: %s", strerror(errno));
}

/* ---- per-source buckets ---- */

bool src_allow(ntcp_broker *b, const struct sockaddr *sa, uint64_t now_ms)
{
    if (!b->src)
        return true;
    uint8_t ip[16] = {0};
    if (sa->sa_family == AF_INET) {
        ip[10] = ip[11] = 0xff;
        memcpy(ip + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    } else if (sa->sa_family == AF_INET6) {
        memcpy(ip, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
    }
    now_ms += 1; /* 0 marks an empty slot */
    src_bucket *set = &b->src[(broker_siphash(b->hash_key, ip, 16) % SRC_SETS) * SRC_WAYS];
    src_bucket *e = NULL, *old = &set[0];
    for (int i = 0; i < SRC_WAYS; i++) {
        if (set[i].last_ms && memcmp(set[i].ip, ip, 16) == 0) {
            e = &set[i];
            break;
        }
        if (set[i].last_ms < old->last_ms)
            old = &set[i];
    }
    if (!e) {
        e = old;
        memcpy(e->ip, ip, 16);
        e->tokens = b->source_burst;
        e->last_ms = now_ms;
    }
    e->tokens += (double)(now_ms - e->last_ms) * b->source_rate / 1000.0;
    if (e->tokens > b->source_burst)
        e->tokens = b->source_burst;
    e->last_ms = now_ms;
    if (e->tokens < 1.0)
        return false;
    e->tokens -= 1.0;
    return true;
}
