/* dataset — see dataset.h. */
#include "dataset.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "stream.h"

/* ========================================================= tokens-format records ===== */

/* Reads an array of integers; labels may hold -100, ids may not. */
static int read_ids(json_t *array, const char *key, int allow_ignore, int vocab_size,
                    int32_t **out, int *len, const char *path, long line, pesc_error *err)
{
    if (!json_is_array(array))
        return pesc_fail(err, "%s:%ld: \"%s\" must be an array of token ids", path, line, key);
    size_t n = json_array_size(array);
    if (n == 0 || n > (1u << 24))
        return pesc_fail(err, "%s:%ld: \"%s\" must hold between 1 and %u ids", path, line, key,
                         1u << 24);
    int32_t *ids = xmalloc(n * sizeof *ids);
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(array, i);
        json_int_t id = json_is_integer(v) ? json_integer_value(v) : -1;
        int ok = json_is_integer(v) && ((allow_ignore && id == -100) ||
                 (id >= 0 && (vocab_size <= 0 || id < vocab_size)));
        if (!ok) {
            free(ids);
            if (!json_is_integer(v))
                return pesc_fail(err, "%s:%ld: \"%s\"[%zu] is not an integer", path, line, key, i);
            return pesc_fail(err, "%s:%ld: \"%s\"[%zu] = %lld is outside the vocabulary "
                             "(0..%d%s)", path, line, key, i, (long long)id, vocab_size - 1,
                             allow_ignore ? ", or -100 to ignore" : "");
        }
        ids[i] = (int32_t)id;
    }
    *out = ids;
    *len = (int)n;
    return 0;
}

static int tokens_record(ds_record *r, json_t *root, int vocab_size, const char *path, long line,
                         pesc_error *err)
{
    int label_len = 0;
    if (read_ids(json_object_get(root, "input_ids"), "input_ids", 0, vocab_size, &r->ids,
                 &r->len, path, line, err) != 0)
        return -1;
    json_t *labels = json_object_get(root, "labels");
    if (labels && !json_is_null(labels)) {
        if (read_ids(labels, "labels", 1, vocab_size, &r->labels, &label_len, path, line, err))
            return -1;
        if (label_len != r->len)
            return pesc_fail(err, "%s:%ld: \"labels\" has %d entries but \"input_ids\" has %d",
                             path, line, label_len, r->len);
    }
    return 0;
}

/* ================================================================ formats ============ */

static const char *const format_names[] = {
    [DS_AUTO] = "auto", [DS_CAMELIDAE] = "camelidae", [DS_ALPACA] = "alpaca",
    [DS_SHAREGPT] = "sharegpt", [DS_OPENAI] = "openai", [DS_METAMATH] = "metamath",
    [DS_MAGICODER] = "magicoder", [DS_TEXT] = "text", [DS_TOKENS] = "tokens",
};

int ds_format_parse(const char *name, ds_format *out, pesc_error *err)
{
    for (int i = 0; i <= DS_TOKENS; i++)
        if (strcmp(name, format_names[i]) == 0) {
            *out = (ds_format)i;
            return 0;
        }
    return pesc_fail(err, "--format %s: not a known format (auto, camelidae, alpaca, sharegpt, "
                     "openai, metamath, magicoder, text, tokens)", name);
}

const char *ds_format_name(ds_format f) { return format_names[f]; }

/* The format a record's keys imply. */
static ds_format detect_format(json_t *o)
{
    if (json_is_string(o)) return DS_TEXT;
    if (json_object_get(o, "input_ids")) return DS_TOKENS;
    if (json_object_get(o, "conversation") || json_object_get(o, "corpus")) return DS_CAMELIDAE;
    if (json_object_get(o, "conversations")) return DS_SHAREGPT;
    if (json_object_get(o, "messages")) return DS_OPENAI;
    if (json_object_get(o, "query") && json_object_get(o, "response")) return DS_METAMATH;
    if (json_object_get(o, "problem") && json_object_get(o, "solution")) return DS_MAGICODER;
    if (json_object_get(o, "instruction") && json_object_get(o, "response")) return DS_MAGICODER;
    if (json_object_get(o, "instruction") && json_object_get(o, "output")) return DS_ALPACA;
    if (json_object_get(o, "text")) return DS_TEXT;
    return DS_AUTO;
}

typedef struct msg_list {
    tpl_message *v;
    int n, cap;
    char *owned[2];              /* joined strings made here */
} msg_list;

static void msg_add(msg_list *l, tpl_role role, json_t *s)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 8;
        l->v = xrealloc(l->v, (size_t)l->cap * sizeof *l->v);
    }
    l->v[l->n++] = (tpl_message){role, json_string_value(s), json_string_length(s)};
}

static int need_string(json_t *o, const char *key, json_t **out, const char *what,
                       pesc_error *err)
{
    *out = json_object_get(o, key);
    if (!json_is_string(*out))
        return pesc_fail(err, "%s: \"%s\" must be a string", what, key);
    return 0;
}

static int role_of(const char *s, tpl_role *role)
{
    static const struct { const char *name; tpl_role role; } roles[] = {
        {"system", ROLE_SYSTEM}, {"human", ROLE_USER}, {"user", ROLE_USER},
        {"gpt", ROLE_ASSISTANT}, {"assistant", ROLE_ASSISTANT}, {"model", ROLE_ASSISTANT},
        {"bot", ROLE_ASSISTANT}, {"chatgpt", ROLE_ASSISTANT}};
    for (size_t i = 0; i < sizeof roles / sizeof *roles; i++)
        if (strcmp(s, roles[i].name) == 0) {
            *role = roles[i].role;
            return 0;
        }
    return -1;
}

/* A list of turns: [{role_key, content_key}] as sharegpt and openai store them. */
static int turns(json_t *array, const char *list_key, const char *role_key,
                 const char *content_key, msg_list *m, pesc_error *err)
{
    if (!json_is_array(array) || json_array_size(array) == 0)
        return pesc_fail(err, "\"%s\" must be a non-empty array", list_key);
    size_t i;
    json_t *t;
    json_array_foreach(array, i, t) {
        json_t *r = json_object_get(t, role_key), *c = json_object_get(t, content_key);
        tpl_role role;
        if (!json_is_string(r) || role_of(json_string_value(r), &role) != 0)
            return pesc_fail(err, "%s[%zu].%s must be system, user/human or assistant/gpt",
                             list_key, i, role_key);
        if (!json_is_string(c))
            return pesc_fail(err, "%s[%zu].%s must be a string", list_key, i, content_key);
        msg_add(m, role, c);
    }
    return 0;
}

/* Fills m (or *text for plain-text records) from one JSON record. */
static int record_messages(json_t *o, ds_format f, msg_list *m, json_t **text, pesc_error *err)
{
    json_t *a, *b, *c;
    *text = NULL;
    if (f == DS_AUTO && (f = detect_format(o)) == DS_AUTO)
        return pesc_fail(err, "no known format fits this record's keys (use --format)");
    if (f != DS_TEXT && !json_is_object(o))
        return pesc_fail(err, "a %s record must be a JSON object", format_names[f]);
    switch (f) {
    case DS_TEXT:
        *text = json_is_string(o) ? o : json_object_get(o, "text");
        if (!json_is_string(*text))
            return pesc_fail(err, "a text record needs \"text\": string");
        return 0;
    case DS_CAMELIDAE: {
        json_t *corpus = json_object_get(o, "corpus");
        if (json_is_string(corpus) && json_string_length(corpus) > 0) {
            *text = corpus;
            return 0;
        }
        json_t *sys = json_object_get(o, "instruction"), *conv = json_object_get(o, "conversation");
        if (json_is_string(sys) && json_string_length(sys) > 0)
            msg_add(m, ROLE_SYSTEM, sys);
        if (!json_is_array(conv) || json_array_size(conv) == 0)
            return pesc_fail(err, "\"conversation\" must be a non-empty array (or give \"corpus\")");
        size_t i;
        json_t *t;
        json_array_foreach(conv, i, t) {
            if (need_string(t, "input", &a, "conversation[]", err) ||
                need_string(t, "output", &b, "conversation[]", err))
                return -1;
            msg_add(m, ROLE_USER, a);
            msg_add(m, ROLE_ASSISTANT, b);
        }
        return 0;
    }
    case DS_ALPACA: {
        if (need_string(o, "instruction", &a, "alpaca", err) || need_string(o, "output", &c, "alpaca", err))
            return -1;
        b = json_object_get(o, "input");
        json_t *sys = json_object_get(o, "system");
        if (json_is_string(sys) && json_string_length(sys) > 0)
            msg_add(m, ROLE_SYSTEM, sys);
        if (json_is_string(b) && json_string_length(b) > 0) {
            /* instruction and input in one user turn, as the Alpaca prompt shows them */
            size_t la = json_string_length(a), lb = json_string_length(b);
            char *joined = xmalloc(la + lb + 3);
            memcpy(joined, json_string_value(a), la);
            memcpy(joined + la, "\n\n", 2);
            memcpy(joined + la + 2, json_string_value(b), lb + 1);
            m->owned[0] = joined;
            if (m->n == m->cap) {
                m->cap = m->cap ? 2 * m->cap : 8;
                m->v = xrealloc(m->v, (size_t)m->cap * sizeof *m->v);
            }
            m->v[m->n++] = (tpl_message){ROLE_USER, joined, la + lb + 2};
        } else {
            msg_add(m, ROLE_USER, a);
        }
        msg_add(m, ROLE_ASSISTANT, c);
        return 0;
    }
    case DS_SHAREGPT:
        return turns(json_object_get(o, "conversations"), "conversations", "from", "value", m, err);
    case DS_OPENAI:
        return turns(json_object_get(o, "messages"), "messages", "role", "content", m, err);
    case DS_METAMATH:
        if (need_string(o, "query", &a, "metamath", err) || need_string(o, "response", &b, "metamath", err))
            return -1;
        msg_add(m, ROLE_USER, a);
        msg_add(m, ROLE_ASSISTANT, b);
        return 0;
    case DS_MAGICODER:
        if (json_object_get(o, "problem")) {
            if (need_string(o, "problem", &a, "magicoder", err) ||
                need_string(o, "solution", &b, "magicoder", err))
                return -1;
        } else if (need_string(o, "instruction", &a, "magicoder", err) ||
                   need_string(o, "response", &b, "magicoder", err)) {
            return -1;
        }
        msg_add(m, ROLE_USER, a);
        msg_add(m, ROLE_ASSISTANT, b);
        return 0;
    case DS_AUTO: case DS_TOKENS:
        break;
    }
    return pesc_fail(err, "internal: format %d", (int)f);
}

/* One parsed JSON value -> one record. Errors name nothing; the caller adds file:line. */
static int make_record(ds_record *r, json_t *o, const ds_load_options *lo, const char *path,
                       long line, pesc_error *err)
{
    memset(r, 0, sizeof *r);
    r->source = lo->source;
    r->line = line;
    ds_format f = lo->format == DS_AUTO ? detect_format(o) : lo->format;
    if (f == DS_TOKENS) {
        if (!json_is_object(o))
            return pesc_fail(err, "%s:%ld: a record must be a JSON object with \"input_ids\"",
                             path, line);
        return tokens_record(r, o, lo->vocab_size, path, line, err);
    }
    if (!lo->tok)
        return pesc_fail(err, "%s:%ld: a %s record needs a tokenizer (--tokenizer or a model "
                         "directory with tokenizer.json)", path, line, format_names[f]);
    const chat_template *tpl = lo->tpl ? lo->tpl : template_find("camelidae");
    msg_list m = {0};
    json_t *text;
    tok_ids ids = {0}, labels = {0};
    int rc = record_messages(o, f, &m, &text, err);
    if (rc == 0)
        rc = text ? template_encode_text(tpl, lo->tok, json_string_value(text),
                                         json_string_length(text), &ids, &labels, err)
                  : template_encode(tpl, lo->tok, m.v, m.n, &ids, &labels, err);
    for (int i = 0; rc == 0 && lo->vocab_size > 0 && i < ids.n; i++)
        if (ids.ids[i] >= lo->vocab_size)
            rc = pesc_fail(err, "token id %d is outside the model's vocabulary (%d): the "
                           "tokenizer does not belong to this model", ids.ids[i], lo->vocab_size);
    if (rc == 0 && ids.n > (1 << 24))
        rc = pesc_fail(err, "record of %d tokens is too long", ids.n);
    if (rc == 0) {
        r->ids = ids.ids;
        r->len = ids.n;
        int all = 1;
        for (int i = 0; i < labels.n && all; i++)
            all = labels.ids[i] == ids.ids[i];
        if (all) tok_ids_free(&labels);
        else r->labels = labels.ids;
    } else {
        tok_ids_free(&ids);
        tok_ids_free(&labels);
        pesc_fail_prefix(err, "%s:%ld", path, line);
    }
    free(m.v);
    free(m.owned[0]);
    free(m.owned[1]);
    return rc;
}

/* ======================================================= reading files in records ===== */

/* Cuts a stream into JSON texts: JSONL lines, or the elements of one top-level array. */
typedef struct reader {
    pesc_stream *s;
    const char *path;
    char buf[1 << 16];
    size_t pos, len;
    int eof, array, started;
    long line;                   /* current line (1-based) */
    char *item;                  /* the current JSON text */
    size_t item_len, item_cap;
    long item_line;
} reader;

static int rd_byte(reader *r, pesc_error *err)
{
    if (r->pos == r->len) {
        if (r->eof)
            return -1;
        ssize_t got = stream_read(r->s, r->buf, sizeof r->buf, err);
        if (got < 0)
            return -2;
        if (got == 0) {
            r->eof = 1;
            return -1;
        }
        r->pos = 0;
        r->len = (size_t)got;
    }
    int c = (unsigned char)r->buf[r->pos++];
    if (c == '\n')
        r->line++;
    return c;
}

static void item_put(reader *r, char c)
{
    if (r->item_len + 2 > r->item_cap) {
        r->item_cap = r->item_cap ? 2 * r->item_cap : 4096;
        r->item = xrealloc(r->item, r->item_cap);
    }
    r->item[r->item_len++] = c;
    r->item[r->item_len] = '\0';
}

/* The next JSON text (or plain line) into r->item: 1, 0 at the end, -1 on error. */
static int rd_next(reader *r, pesc_error *err)
{
    int c;
    r->item_len = 0;
    if (!r->started) {   /* '[' first means one JSON array; anything else is lines */
        r->started = 1;
        while ((c = rd_byte(r, err)) == ' ' || c == '\t' || c == '\r' || c == '\n')
            ;
        if (c == -2) return -1;
        if (c == -1) return 0;
        if (c == '[') r->array = 1;
        else r->pos--, r->line -= c == '\n';
    }
    if (!r->array) {
        for (;;) {
            r->item_len = 0;
            r->item_line = r->line;
            while ((c = rd_byte(r, err)) >= 0 && c != '\n')
                item_put(r, (char)c);
            if (c == -2) return -1;
            if (r->item_len && r->item[r->item_len - 1] == '\r')
                r->item[--r->item_len] = '\0';
            if (strspn(r->item ? r->item : "", " \t") < r->item_len)
                return 1;
            if (c == -1) return 0;
        }
    }
    /* inside the array: skip separators, then copy one value, counting depth outside strings */
    while ((c = rd_byte(r, err)) == ' ' || c == '\t' || c == '\r' || c == '\n' || c == ',')
        ;
    if (c == -2) return -1;
    if (c == ']' || c == -1)
        return c == ']' ? 0 : pesc_fail(err, "%s:%ld: the JSON array is not closed", r->path, r->line);
    r->item_line = r->line;
    int depth = 0, in_string = 0, escape = 0;
    for (;; c = rd_byte(r, err)) {
        if (c == -2) return -1;
        if (c == -1) return pesc_fail(err, "%s:%ld: the JSON array ends inside a value", r->path, r->line);
        if (!in_string && depth == 0 && (c == ',' || c == ']')) {
            r->pos--;   /* leave the separator for the next call */
            if (c == '\n') r->line--;
            return 1;
        }
        item_put(r, (char)c);
        if (in_string) {
            if (escape) escape = 0;
            else if (c == '\\') escape = 1;
            else if (c == '"') in_string = 0;
        } else if (c == '"') {
            in_string = 1;
        } else if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            if (--depth == 0) return 1;
        }
    }
}

enum { MAX_WARNINGS_SHOWN = 10 };

int dataset_load(ds_records *d, const char *path, const ds_load_options *lo, pesc_error *err)
{
    reader *r = xcalloc(1, sizeof *r);
    r->path = path;
    r->line = 1;
    r->s = stream_open(path, err);
    if (!r->s) {
        free(r);
        return -1;
    }
    int capacity = d->n, rc = 0, before = d->n, got;
    long skipped = 0;
    while ((got = rd_next(r, err)) > 0) {
        json_t *o = NULL;
        int plain = !r->array && r->item[strspn(r->item, " \t")] != '{' &&
                    r->item[strspn(r->item, " \t")] != '"';
        json_error_t jerr;
        pesc_error rec_err = {{0}};
        if (plain && (lo->format == DS_TEXT || lo->format == DS_AUTO))
            o = json_string(r->item);   /* a plain text line is a document */
        else
            o = json_loadb(r->item, r->item_len, JSON_DECODE_ANY, &jerr);
        if (d->n == capacity) {
            capacity = capacity ? 2 * capacity : 256;
            d->items = xrealloc(d->items, (size_t)capacity * sizeof *d->items);
        }
        int ok;
        if (!o) {
            pesc_fail(&rec_err, "%s:%ld: not valid JSON (column %d: %s)", path, r->item_line,
                      jerr.column, jerr.text);
            ok = 0;
        } else {
            ok = make_record(&d->items[d->n], o, lo, path, r->item_line, &rec_err) == 0;
        }
        json_decref(o);
        if (ok) {
            d->n++;
            continue;
        }
        if (lo->strict) {
            *err = rec_err;
            rc = -1;
            break;
        }
        if (lo->warn && skipped < MAX_WARNINGS_SHOWN)
            fprintf(lo->warn, "warning: %s (record skipped)\n", rec_err.msg);
        skipped++;
    }
    if (got < 0)
        rc = -1;
    if (rc == 0 && lo->warn && skipped > MAX_WARNINGS_SHOWN)
        fprintf(lo->warn, "warning: %s: %ld records skipped in all\n", path, skipped);
    d->skipped += skipped;
    if (rc == 0 && d->n == before)
        rc = pesc_fail(err, "%s: no usable records%s", path,
                       skipped ? " (every record was skipped; see the warnings)" : "");
    stream_close(r->s);
    free(r->item);
    free(r);
    return rc;
}

int dataset_load_tokens(ds_records *d, const char *path, int vocab_size, pesc_error *err)
{
    memset(d, 0, sizeof *d);
    ds_load_options lo = {.format = DS_TOKENS, .vocab_size = vocab_size, .strict = 1};
    int rc = dataset_load(d, path, &lo, err);
    if (rc != 0)
        dataset_free(d);
    return rc;
}

void dataset_free(ds_records *d)
{
    for (int i = 0; i < d->n; i++) {
        free(d->items[i].ids);
        free(d->items[i].labels);
    }
    free(d->items);
    memset(d, 0, sizeof *d);
}

int ds_source_parse(ds_source *s, const char *arg, pesc_error *err)
{
    s->weight = 1.0;
    const char *colon = strrchr(arg, ':');
    size_t n = strlen(arg);
    if (colon && colon[1]) {
        char *end;
        errno = 0;
        double w = strtod(colon + 1, &end);
        if (*end == '\0' && errno == 0) {
            if (!(w > 0) || !isfinite(w))
                return pesc_fail(err, "--data %s: the weight after ':' must be > 0", arg);
            s->weight = w;
            n = (size_t)(colon - arg);
        }
    }
    if (n == 0 || n >= sizeof s->path)
        return pesc_fail(err, "--data '%s': expected PATH or PATH:WEIGHT", arg);
    memcpy(s->path, arg, n);
    s->path[n] = '\0';
    return 0;
}

/* ================================================================= batches =========== */

struct dataset {
    ds_records rec;
    ds_options opt;
    double *weights;             /* (n_sources) */
    ds_stats stats;
    int32_t pad;
    uint32_t *order;             /* this epoch's record indices */
    long n_order;
    long epoch, position;
    uint64_t fingerprint;
};

static uint64_t splitmix(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double uniform(uint64_t *state) { return (double)(splitmix(state) >> 11) * 0x1p-53; }

/* Epoch e's order: each record weight times (the fraction drawn), then shuffled. */
static void build_order(dataset *ds, long epoch)
{
    uint64_t rng = ds->opt.seed ^ (0xd1b54a32d192ed03ull * (uint64_t)(epoch + 1));
    long cap = 0;
    ds->n_order = 0;
    for (int i = 0; i < ds->rec.n; i++) {
        double w = ds->weights[ds->rec.items[i].source];
        long copies = (long)floor(w);
        if (uniform(&rng) < w - floor(w))
            copies++;
        for (long k = 0; k < copies; k++) {
            if (ds->n_order == cap) {
                cap = cap ? 2 * cap : 1024;
                ds->order = xrealloc(ds->order, (size_t)cap * sizeof *ds->order);
            }
            ds->order[ds->n_order++] = (uint32_t)i;
        }
    }
    if (ds->opt.shuffle)
        for (long i = ds->n_order - 1; i > 0; i--) {
            long j = (long)(splitmix(&rng) % (uint64_t)(i + 1));
            uint32_t tmp = ds->order[i];
            ds->order[i] = ds->order[j];
            ds->order[j] = tmp;
        }
    ds->epoch = epoch;
    ds->position = 0;
}

static uint64_t fingerprint(const dataset *ds)
{
    uint64_t h = 0xcbf29ce484222325ull;
    uint64_t parts[] = {(uint64_t)ds->rec.n, (uint64_t)ds->stats.tokens, ds->opt.seed,
                        (uint64_t)ds->opt.seq, (uint64_t)ds->opt.batch, (uint64_t)ds->opt.pack,
                        (uint64_t)ds->opt.shuffle};
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++)
        h = (h ^ parts[i]) * 0x100000001b3ull;
    for (int i = 0; i < ds->stats.n_sources; i++) {
        uint64_t w;
        memcpy(&w, &ds->weights[i], sizeof w);
        h = (h ^ w) * 0x100000001b3ull;
    }
    return h;
}

dataset *dataset_open(const ds_source *sources, int n_sources, const ds_load_options *lo,
                      const ds_options *o, pesc_error *err)
{
    if (n_sources < 1 || o->batch < 1 || o->seq < 2) {
        pesc_fail(err, "a dataset needs at least one --data, a batch >= 1 and a sequence >= 2");
        return NULL;
    }
    dataset *ds = xcalloc(1, sizeof *ds);
    ds->opt = *o;
    ds->weights = xmalloc((size_t)n_sources * sizeof *ds->weights);
    ds->stats.n_sources = n_sources;
    ds->stats.source_records = xcalloc((size_t)n_sources, sizeof *ds->stats.source_records);
    for (int i = 0; i < n_sources; i++) {
        ds_load_options one = *lo;
        one.source = i;
        ds->weights[i] = sources[i].weight;
        int before = ds->rec.n;
        if (dataset_load(&ds->rec, sources[i].path, &one, err) != 0) {
            dataset_delete(ds);
            return NULL;
        }
        ds->stats.source_records[i] = ds->rec.n - before;
    }
    ds->stats.records = ds->rec.n;
    ds->stats.skipped = ds->rec.skipped;
    for (int i = 0; i < ds->rec.n; i++) {
        int len = ds->rec.items[i].len;
        ds->stats.tokens += len;
        if (len > o->seq) {
            ds->stats.truncated++;
            ds->stats.truncated_tokens += len - o->seq;
        }
    }
    ds->pad = lo->tok ? (tok_pad(lo->tok) >= 0 ? tok_pad(lo->tok) : tok_eos(lo->tok)) : 0;
    if (ds->pad < 0)
        ds->pad = 0;
    build_order(ds, 0);
    ds->fingerprint = fingerprint(ds);
    return ds;
}

void dataset_delete(dataset *ds)
{
    if (!ds)
        return;
    dataset_free(&ds->rec);
    free(ds->weights);
    free(ds->stats.source_records);
    free(ds->order);
    free(ds);
}

void ds_batch_init(ds_batch *b, int B, int T)
{
    memset(b, 0, sizeof *b);
    b->B = B;
    b->T = T;
    size_t n = (size_t)B * (size_t)T;
    b->ids = xmalloc(n * sizeof *b->ids);
    b->labels = xmalloc(n * sizeof *b->labels);
    b->targets = xmalloc(n * sizeof *b->targets);
    b->positions = xmalloc(n * sizeof *b->positions);
    b->doc_ids = xmalloc(n * sizeof *b->doc_ids);
    b->sources = xmalloc(n * sizeof *b->sources);
    b->row_tokens = xmalloc((size_t)B * sizeof *b->row_tokens);
}

void ds_batch_free(ds_batch *b)
{
    free(b->ids);
    free(b->labels);
    free(b->targets);
    free(b->positions);
    free(b->doc_ids);
    free(b->sources);
    free(b->row_tokens);
    memset(b, 0, sizeof *b);
}

/* The next record in order, moving to the next epoch when one ends; NULL when done. */
static const ds_record *peek_record(dataset *ds)
{
    while (ds->position >= ds->n_order) {
        if (ds->opt.epochs > 0 && ds->epoch + 1 >= ds->opt.epochs)
            return NULL;
        build_order(ds, ds->epoch + 1);
    }
    return &ds->rec.items[ds->order[ds->position]];
}

/* Lays record r at [at, at + n) of row b (n <= its length), document doc. */
static void place(ds_batch *b, int row, int at, const ds_record *r, int n, int doc)
{
    size_t base = (size_t)row * (size_t)b->T + (size_t)at;
    for (int i = 0; i < n; i++) {
        b->ids[base + i] = r->ids[i];
        b->labels[base + i] = r->labels ? r->labels[i] : r->ids[i];
        b->positions[base + i] = i;
        b->doc_ids[base + i] = doc;
        b->sources[base + i] = r->source;
    }
    for (int i = 0; i < n; i++) {
        int32_t next = i + 1 < n ? b->labels[base + i + 1] : -100;
        b->targets[base + i] = next;
        b->n_targets += next != -100;
    }
}

int dataset_next_batch(dataset *ds, ds_batch *b)
{
    int T = b->T;
    b->rows = 0;
    b->n_targets = 0;
    b->epoch = ds->epoch;
    for (int row = 0; row < b->B; row++) {
        int used = 0, doc = 0;
        const ds_record *r;
        while ((r = peek_record(ds)) != NULL) {
            int n = r->len < T ? r->len : T;
            if (used + n > T)
                break;   /* does not fit: next row (a record is never split) */
            if (used == 0 && doc == 0 && row == 0)
                b->epoch = ds->epoch;
            place(b, row, used, r, n, doc++);
            used += n;
            ds->position++;
            if (!ds->opt.pack)
                break;
        }
        size_t base = (size_t)row * (size_t)T;
        for (int i = used; i < T; i++) {
            b->ids[base + i] = ds->pad;
            b->labels[base + i] = b->targets[base + i] = -100;
            b->positions[base + i] = 0;
            b->doc_ids[base + i] = -1;
            b->sources[base + i] = -1;
        }
        b->row_tokens[row] = used;
        if (used == 0)
            break;
        b->rows++;
    }
    return b->rows;
}

ds_cursor dataset_cursor(const dataset *ds)
{
    return (ds_cursor){ds->epoch, ds->position, ds->fingerprint};
}

int dataset_seek(dataset *ds, const ds_cursor *c, pesc_error *err)
{
    if (c->fingerprint != ds->fingerprint)
        return pesc_fail(err, "the saved data cursor belongs to other data or batch options "
                         "(records, tokens, seed, --seq, --batch, --pack or weights changed)");
    if (c->epoch < 0 || c->position < 0)
        return pesc_fail(err, "the saved data cursor is invalid");
    build_order(ds, c->epoch);
    if (c->position > ds->n_order)
        return pesc_fail(err, "the saved data cursor is past the end of epoch %ld", c->epoch);
    ds->position = c->position;
    return 0;
}

const ds_stats *dataset_stats(const dataset *ds) { return &ds->stats; }
const ds_records *dataset_records(const dataset *ds) { return &ds->rec; }
