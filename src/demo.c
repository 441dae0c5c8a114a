/* demo — the built-in instruction data (see demo.h for the families and the guarantees). */
#include "demo.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "cli.h"

/* ======================================================= fixed texts ================== */

static const char *const family_names[DEMO_FAMILIES] = {
    "arithmetic", "reverse", "sort", "count", "case", "lookup",
};
enum { ARITHMETIC, REVERSE, SORT, COUNT, CASE, LOOKUP };

/* A quarter of the records carry one of these; the rest have no system line, as a person
 * typing "reverse: pesc" at the prompt has none. */
static const char *const system_lines[] = {
    "Answer briefly.", "Give only the answer.", "You are a helpful assistant.",
};

typedef struct pair {
    const char *key, *value;
} pair;

static const pair capitals[] = {
    {"France", "Paris"},   {"Italy", "Rome"},    {"Spain", "Madrid"},  {"Japan", "Tokyo"},
    {"Egypt", "Cairo"},    {"Peru", "Lima"},     {"Kenya", "Nairobi"}, {"Canada", "Ottawa"},
    {"Norway", "Oslo"},    {"Greece", "Athens"}, {"Chile", "Santiago"}, {"Germany", "Berlin"},
};
static const pair colours[] = {
    {"banana", "yellow"}, {"apple", "red"},    {"lime", "green"},      {"plum", "purple"},
    {"orange", "orange"}, {"blueberry", "blue"}, {"lemon", "yellow"}, {"cherry", "red"},
    {"grape", "purple"},  {"coconut", "brown"}, {"pear", "green"},    {"kiwi", "brown"},
};
#define COUNT_OF(a) ((int)(sizeof(a) / sizeof *(a)))

/* The instruction words; with the system lines and tables they make the fixed lexicon. */
static const char *const keywords[] = {"reverse", "sort", "count", "upper", "lower", "capital",
                                       "colour"};

const char *demo_family_name(int family)
{
    return family >= 0 && family < DEMO_FAMILIES ? family_names[family] : NULL;
}

int demo_family_find(const char *name)
{
    for (int f = 0; f < DEMO_FAMILIES; f++)
        if (strcmp(name, family_names[f]) == 0)
            return f;
    return -1;
}

const char *demo_family_list(void) { return "arithmetic, reverse, sort, count, case, lookup"; }

/* Does text contain word (len letters) as a whole run of letters, ignoring case? */
static int has_word(const char *text, const char *word, size_t len)
{
    for (const char *p = text; *p;) {
        while (*p && !isalpha((unsigned char)*p))
            p++;
        const char *start = p;
        while (isalpha((unsigned char)*p))
            p++;
        if ((size_t)(p - start) == len && strncasecmp(start, word, len) == 0)
            return 1;
    }
    return 0;
}

static int in_lexicon(const char *word, size_t len)
{
    for (int i = 0; i < COUNT_OF(keywords); i++)
        if (has_word(keywords[i], word, len)) return 1;
    for (int i = 0; i < COUNT_OF(system_lines); i++)
        if (has_word(system_lines[i], word, len)) return 1;
    for (int i = 0; i < COUNT_OF(capitals); i++)
        if (has_word(capitals[i].key, word, len) || has_word(capitals[i].value, word, len))
            return 1;
    for (int i = 0; i < COUNT_OF(colours); i++)
        if (has_word(colours[i].key, word, len) || has_word(colours[i].value, word, len))
            return 1;
    return 0;
}

/* ======================================================= generators =================== */

/* Uniform in [lo, hi]. The modulo bias is far below anything a demo could notice. */
static int uniform_int(uint64_t *state, int lo, int hi)
{
    return lo + (int)(pesc_splitmix64(state) % (uint64_t)(hi - lo + 1));
}

/* A made-up lowercase word of lo..hi letters that is not a word of the fixed texts. */
static void made_up_word(uint64_t *state, int lo, int hi, char *out)
{
    int n;
    do {
        n = uniform_int(state, lo, hi);
        for (int i = 0; i < n; i++)
            out[i] = (char)('a' + uniform_int(state, 0, 25));
        out[n] = '\0';
    } while (in_lexicon(out, (size_t)n));
}

static int compare_chars(const void *a, const void *b)
{
    return *(const unsigned char *)a - *(const unsigned char *)b;
}

static void gen_arithmetic(uint64_t *st, demo_record *r)
{
    int a = uniform_int(st, 0, 20), b = uniform_int(st, 0, 20);
    if (uniform_int(st, 0, 1)) {
        snprintf(r->input, sizeof r->input, "%d+%d", a, b);
        snprintf(r->output, sizeof r->output, "%d", a + b);
    } else {
        if (a < b) { int t = a; a = b; b = t; }
        snprintf(r->input, sizeof r->input, "%d-%d", a, b);
        snprintf(r->output, sizeof r->output, "%d", a - b);
    }
}

static void gen_reverse(uint64_t *st, demo_record *r)
{
    char w[16];
    made_up_word(st, 3, 7, w);
    size_t n = strlen(w);
    snprintf(r->input, sizeof r->input, "reverse: %s", w);
    for (size_t i = 0; i < n; i++)
        r->output[i] = w[n - 1 - i];
    r->output[n] = '\0';
}

static void gen_sort(uint64_t *st, demo_record *r)
{
    char w[16];
    if (uniform_int(st, 0, 1)) {
        made_up_word(st, 3, 6, w);
    } else {
        int n = uniform_int(st, 3, 6);
        for (int i = 0; i < n; i++)
            w[i] = (char)('0' + uniform_int(st, 0, 9));
        w[n] = '\0';
    }
    snprintf(r->input, sizeof r->input, "sort: %s", w);
    size_t n = strlen(w);
    qsort(w, n, 1, compare_chars);
    memcpy(r->output, w, n + 1);
}

static void gen_count(uint64_t *st, demo_record *r)
{
    char w[16];
    made_up_word(st, 1, 9, w);
    snprintf(r->input, sizeof r->input, "count: %s", w);
    snprintf(r->output, sizeof r->output, "%zu", strlen(w));
}

static void gen_case(uint64_t *st, demo_record *r)
{
    char w[16];
    made_up_word(st, 3, 7, w);
    size_t n = strlen(w);
    int upper = uniform_int(st, 0, 1);
    if (!upper)   /* the question is in mixed case, the answer in lower case */
        for (size_t i = 0; i < n; i++)
            if (uniform_int(st, 0, 1))
                w[i] = (char)toupper((unsigned char)w[i]);
    snprintf(r->input, sizeof r->input, "%s: %s", upper ? "upper" : "lower", w);
    for (size_t i = 0; i <= n; i++)
        r->output[i] = (char)(upper ? toupper((unsigned char)w[i]) : tolower((unsigned char)w[i]));
}

static void gen_lookup(uint64_t *st, demo_record *r)
{
    int capital = uniform_int(st, 0, 1);
    const pair *p = capital ? &capitals[uniform_int(st, 0, COUNT_OF(capitals) - 1)]
                            : &colours[uniform_int(st, 0, COUNT_OF(colours) - 1)];
    snprintf(r->input, sizeof r->input, "%s: %s", capital ? "capital" : "colour", p->key);
    snprintf(r->output, sizeof r->output, "%s", p->value);
}

void demo_generate_family(uint64_t seed, int family, long index, demo_record *out)
{
    static void (*const generators[DEMO_FAMILIES])(uint64_t *, demo_record *) = {
        [ARITHMETIC] = gen_arithmetic, [REVERSE] = gen_reverse, [SORT] = gen_sort,
        [COUNT] = gen_count, [CASE] = gen_case, [LOOKUP] = gen_lookup,
    };
    /* each (seed, family, index) gets its own stream: records are independent */
    uint64_t st = seed;
    st = pesc_splitmix64(&st) ^ (uint64_t)(family + 1) * 0xD1B54A32D192ED03ull;
    st = pesc_splitmix64(&st) ^ (uint64_t)index * 0x8CB92BA72F3D8DD7ull;
    pesc_splitmix64(&st);
    memset(out, 0, sizeof *out);
    out->family = family;
    out->system = uniform_int(&st, 0, 3) == 0
                      ? system_lines[uniform_int(&st, 0, COUNT_OF(system_lines) - 1)] : "";
    generators[family](&st, out);
}

void demo_generate(uint64_t seed, long index, demo_record *out)
{
    demo_generate_family(seed, (int)(index % DEMO_FAMILIES), index / DEMO_FAMILIES, out);
}

int demo_messages(const demo_record *r, tpl_message msgs[3])
{
    int n = 0;
    if (r->system[0])
        msgs[n++] = (tpl_message){.role = ROLE_SYSTEM, .content = r->system,
                                  .len = strlen(r->system)};
    msgs[n++] = (tpl_message){.role = ROLE_USER, .content = r->input, .len = strlen(r->input)};
    msgs[n++] = (tpl_message){.role = ROLE_ASSISTANT, .content = r->output,
                              .len = strlen(r->output)};
    return n;
}

/* ======================================================= sources ====================== */

int demo_family_count(unsigned families)
{
    if (!families)
        return DEMO_FAMILIES;
    int n = 0;
    for (int f = 0; f < DEMO_FAMILIES; f++)
        n += (families >> f) & 1;
    return n;
}

void demo_spec_complete(demo_spec *s)
{
    if (!s->families)
        s->families = (1u << DEMO_FAMILIES) - 1;
    if (s->records <= 0)
        s->records = (long)DEMO_RECORDS_PER_FAMILY * demo_family_count(s->families);
}

void demo_spec_record(const demo_spec *s, long i, demo_record *out)
{
    int n = demo_family_count(s->families), k = (int)(i % n), f = 0;
    for (;; f++)   /* the k-th family in the set */
        if ((s->families >> f) & 1 && k-- == 0)
            break;
    demo_generate_family(s->seed, f, i / n, out);
}

int demo_spec_parse(demo_spec *s, const char *text, pesc_error *err)
{
    *s = (demo_spec){.seed = DEMO_SEED};
    long records = 0;
    if (strncmp(text, "demo", 4) != 0 || (text[4] != '\0' && text[4] != ':'))
        return pesc_fail(err, "demo source '%s': expected demo or demo:ITEM,... (items: a "
                         "family, records=N, seed=S)", text);
    char *items = xstrdup(text[4] ? text + 5 : "");
    int rc = 0;
    for (char *save = NULL, *it = strtok_r(items, ",", &save); it && rc == 0;
         it = strtok_r(NULL, ",", &save)) {
        int f = demo_family_find(it);
        if (f >= 0) {
            s->families |= 1u << f;
        } else if (strncmp(it, "records=", 8) == 0) {
            if (cli_parse_long(it + 8, 1, 100000000L, &records) != 0)
                rc = pesc_fail(err, "demo source '%s': records must be 1..100000000", text);
        } else if (strncmp(it, "seed=", 5) == 0) {
            char *end;
            errno = 0;
            unsigned long long seed = strtoull(it + 5, &end, 10);
            if (!it[5] || *end || errno || it[5] == '-')
                rc = pesc_fail(err, "demo source '%s': seed must be a non-negative integer", text);
            s->seed = seed;
        } else {
            rc = pesc_fail(err, "demo source '%s': '%s' is not a family (%s), records=N or "
                           "seed=S", text, it, demo_family_list());
        }
    }
    free(items);
    if (rc != 0)
        return rc;
    s->records = records;
    demo_spec_complete(s);
    return 0;
}

/* ======================================================= output ======================= */

int demo_write_jsonl(FILE *f, const demo_spec *s, const char *name, pesc_error *err)
{
    for (long i = 0; i < s->records; i++) {
        demo_record r;
        demo_spec_record(s, i, &r);
        json_t *o = json_pack("{s:s, s:[{s:s, s:s}], s:s}", "instruction", r.system,
                              "conversation", "input", r.input, "output", r.output, "source",
                              family_names[r.family]);
        char *line = o ? json_dumps(o, JSON_PRESERVE_ORDER) : NULL;
        json_decref(o);
        if (!line)
            return pesc_fail(err, "%s: cannot format record %ld", name, i + 1);
        int bad = fputs(line, f) < 0 || fputc('\n', f) == EOF;
        free(line);
        if (bad)
            return pesc_fail(err, "%s: %s%s", name, strerror(errno), pesc_write_fix(errno));
    }
    return 0;
}

int demo_encode(const demo_record *r, tokenizer *t, const chat_template *tpl, tok_ids *ids,
                tok_ids *labels, pesc_error *err)
{
    tpl_message msgs[3];
    int n = demo_messages(r, msgs);
    return template_encode(tpl ? tpl : template_find("camelidae"), t, msgs, n, ids, labels, err);
}

int demo_load(ds_records *d, const char *spec, const ds_load_options *o, pesc_error *err)
{
    demo_spec s;
    if (demo_spec_parse(&s, spec, err) != 0)
        return -1;
    if (!o->tok)
        return pesc_fail(err, "%s: the demo data needs a tokenizer (--tokenizer or a model "
                         "directory with tokenizer.json)", spec);
    /* the `demo` format below, through the path every dataset takes (and its token store) */
    ds_load_options as_demo = *o;
    as_demo.strict = 1;
    if (ds_formats_parse(o->formats, "demo", &as_demo.format, err) != 0)
        return -1;
    return dataset_load(d, spec, &as_demo, err);
}

/* ======================================================= the `demo` format ============ */

typedef struct demo_source {
    demo_spec spec;
    long next;
} demo_source;

static void *demo_format_open(const char *path, char *err, size_t errlen)
{
    demo_source *s = xcalloc(1, sizeof *s);
    pesc_error e;
    if (demo_spec_parse(&s->spec, path, &e) != 0) {
        snprintf(err, errlen, "%s", e.msg);
        free(s);
        return NULL;
    }
    return s;
}

static int demo_format_next(const pesc_format_host *h, void *source, pesc_record_out *out)
{
    demo_source *s = source;
    if (s->next >= s->spec.records)
        return 0;
    demo_record r;
    demo_spec_record(&s->spec, s->next++, &r);
    tpl_message msgs[3];
    int n = demo_messages(&r, msgs);
    static const pesc_role roles[] = {[ROLE_SYSTEM] = PESC_ROLE_SYSTEM,
                                      [ROLE_USER] = PESC_ROLE_USER,
                                      [ROLE_ASSISTANT] = PESC_ROLE_ASSISTANT};
    for (int i = 0; i < n; i++)
        h->message(out, roles[msgs[i].role], msgs[i].content, msgs[i].len);
    return 1;
}

static void demo_format_close(void *source) { free(source); }

/* A --data argument "demo" or "demo:..." is ours unless a file by that name exists, also one
 * that does not parse: open says what is wrong with it ("'arith' is not a family"), where a
 * file reader would only find no such file. */
static int demo_format_probe(const char *path)
{
    return strncmp(path, "demo", 4) == 0 && (path[4] == '\0' || path[4] == ':') &&
           access(path, F_OK) != 0 ? 100 : 0;
}

const pesc_format_ops demo_format_ops = {
    .size = sizeof(pesc_format_ops),
    .open = demo_format_open,
    .next = demo_format_next,
    .close = demo_format_close,
    .probe = demo_format_probe,
};
