/* test_demo — the built-in demo data and tokenizer: records are a function of (seed, family,
 * index); every family's answer is right (recomputed here independently, the lookup facts
 * from this file's own table); `demo-data` JSONL loads through the dataset loader as
 * camelidae and gives the same tokens as the `demo` format; the demo tokenizer loads, stays
 * small, round-trips every demo text exactly and spells made-up words letter by letter. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dataset.h"
#include "demo.h"
#include "tokenizer.h"
#include "check.h"

enum { N_RECORDS = 3000 };

static int same_record(const demo_record *a, const demo_record *b)
{
    return a->family == b->family && strcmp(a->system, b->system) == 0 &&
           strcmp(a->input, b->input) == 0 && strcmp(a->output, b->output) == 0;
}

static void test_determinism(void)
{
    int differ = 0;
    for (long i = 0; i < N_RECORDS; i++) {
        demo_record a, b, c, d;
        demo_generate(42, i, &a);
        demo_generate(42, i, &b);
        demo_generate_family(42, (int)(i % DEMO_FAMILIES), i / DEMO_FAMILIES, &c);
        demo_generate(43, i, &d);
        CHECK(same_record(&a, &b), "record %ld: not deterministic", i);
        CHECK(same_record(&a, &c), "record %ld: the mix differs from its family's record", i);
        CHECK(a.family == i % DEMO_FAMILIES, "record %ld: family %d", i, a.family);
        differ += !same_record(&a, &d);
    }
    CHECK(differ > N_RECORDS / 2, "another seed changes only %d of %d records", differ, N_RECORDS);
    /* two records of a family are not all the same */
    int distinct = 0;
    for (int f = 0; f < DEMO_FAMILIES; f++) {
        demo_record a, b;
        demo_generate_family(1, f, 0, &a);
        demo_generate_family(1, f, 1, &b);
        demo_record c;
        demo_generate_family(1, f, 2, &c);
        distinct += !same_record(&a, &b) || !same_record(&a, &c);
    }
    CHECK(distinct == DEMO_FAMILIES, "some family repeats one record");
}

/* ---- the answers, recomputed ---- */

static const char *const facts[][2] = {
    {"capital: France", "Paris"},   {"capital: Italy", "Rome"},     {"capital: Spain", "Madrid"},
    {"capital: Japan", "Tokyo"},    {"capital: Egypt", "Cairo"},    {"capital: Peru", "Lima"},
    {"capital: Kenya", "Nairobi"},  {"capital: Canada", "Ottawa"},  {"capital: Norway", "Oslo"},
    {"capital: Greece", "Athens"},  {"capital: Chile", "Santiago"}, {"capital: Germany", "Berlin"},
    {"colour: banana", "yellow"},   {"colour: apple", "red"},       {"colour: lime", "green"},
    {"colour: plum", "purple"},     {"colour: orange", "orange"},   {"colour: blueberry", "blue"},
    {"colour: lemon", "yellow"},    {"colour: cherry", "red"},      {"colour: grape", "purple"},
    {"colour: coconut", "brown"},   {"colour: pear", "green"},      {"colour: kiwi", "brown"},
};

static int all_of(const char *s, int (*is)(int))
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (!is((unsigned char)*s))
            return 0;
    return 1;
}

/* The right answer to r's input, or NULL when the input is not a well-formed task. */
static const char *answer(const demo_record *r, char *buf, size_t cap)
{
    const char *in = r->input;
    const char *arg = strchr(in, ':') ? strchr(in, ':') + 2 : NULL;
    switch (r->family) {
    case 0: {
        int a, b, used = 0;
        char op;
        if (sscanf(in, "%d%c%d%n", &a, &op, &b, &used) != 3 || in[used] || a < 0 || b < 0 ||
            a > 20 || b > 20 || (op != '+' && op != '-'))
            return NULL;
        if (op == '-' && a < b)
            return NULL;
        snprintf(buf, cap, "%d", op == '+' ? a + b : a - b);
        return buf;
    }
    case 1: {
        if (strncmp(in, "reverse: ", 9) || !all_of(arg, islower))
            return NULL;
        size_t n = strlen(arg);
        for (size_t i = 0; i < n; i++)
            buf[i] = arg[n - 1 - i];
        buf[n] = '\0';
        return buf;
    }
    case 2: {
        if (strncmp(in, "sort: ", 6) || (!all_of(arg, islower) && !all_of(arg, isdigit)))
            return NULL;
        size_t n = strlen(arg);
        memcpy(buf, arg, n + 1);
        for (size_t i = 1; i < n; i++)   /* insertion sort: independent of the generator's */
            for (size_t j = i; j > 0 && buf[j - 1] > buf[j]; j--) {
                char t = buf[j]; buf[j] = buf[j - 1]; buf[j - 1] = t;
            }
        return buf;
    }
    case 3:
        if (strncmp(in, "count: ", 7) || !all_of(arg, islower) || strlen(arg) > 9)
            return NULL;
        snprintf(buf, cap, "%zu", strlen(arg));
        return buf;
    case 4: {
        int upper = strncmp(in, "upper: ", 7) == 0;
        if ((!upper && strncmp(in, "lower: ", 7)) || !all_of(arg, isalpha) ||
            (upper && !all_of(arg, islower)))
            return NULL;
        size_t i = 0;
        for (; arg[i]; i++)
            buf[i] = (char)(upper ? toupper((unsigned char)arg[i]) : tolower((unsigned char)arg[i]));
        buf[i] = '\0';
        return buf;
    }
    case 5:
        for (size_t i = 0; i < sizeof facts / sizeof *facts; i++)
            if (strcmp(in, facts[i][0]) == 0)
                return facts[i][1];
        return NULL;
    }
    return NULL;
}

static void test_answers(void)
{
    static const char *const systems[] = {"", "Answer briefly.", "Give only the answer.",
                                          "You are a helpful assistant."};
    int seen[DEMO_FAMILIES] = {0}, with_system = 0, lower = 0, digits = 0;
    for (long i = 0; i < 6 * N_RECORDS; i++) {
        demo_record r;
        demo_generate(DEMO_SEED, i, &r);
        char buf[DEMO_TEXT_MAX];
        const char *want = answer(&r, buf, sizeof buf);
        CHECK(want && strcmp(want, r.output) == 0, "%s record %ld: '%s' -> '%s', wanted '%s'",
              demo_family_name(r.family), i, r.input, r.output, want ? want : "(bad input)");
        int known = 0;
        for (int k = 0; k < 4; k++)
            known |= strcmp(r.system, systems[k]) == 0;
        CHECK(known, "record %ld: system line '%s'", i, r.system);
        CHECK(strlen(r.input) < 24 && strlen(r.output) < 12, "record %ld is not short", i);
        seen[r.family]++;
        with_system += r.system[0] != 0;
        lower += r.family == 4 && r.input[0] == 'l';
        digits += r.family == 2 && isdigit((unsigned char)r.input[6]);
    }
    for (int f = 0; f < DEMO_FAMILIES; f++)
        CHECK(seen[f] == N_RECORDS, "family %s: %d records", demo_family_name(f), seen[f]);
    CHECK(with_system > 6 * N_RECORDS / 8 && with_system < 6 * N_RECORDS / 3,
          "%d records of %d have a system line", with_system, 6 * N_RECORDS);
    CHECK(lower > N_RECORDS / 3 && digits > N_RECORDS / 3, "case or sort lacks a variant");
    CHECK(demo_family_find("reverse") == 1 && demo_family_find("nope") == -1 &&
          strcmp(demo_family_name(5), "lookup") == 0 && !demo_family_name(6), "family names");
}

static void test_spec(void)
{
    demo_spec s;
    pesc_error err;
    CHECK(demo_spec_parse(&s, "demo", &err) == 0 && s.families == 63 &&
          s.records == 6L * DEMO_RECORDS_PER_FAMILY && s.seed == DEMO_SEED, "spec demo");
    CHECK(demo_spec_parse(&s, "demo:reverse,sort,records=10,seed=5", &err) == 0 &&
          s.families == 6 && s.records == 10 && s.seed == 5, "spec with items");
    demo_record a, b;
    demo_spec_record(&s, 3, &a);          /* record 3 = the second sort record */
    demo_generate_family(5, 2, 1, &b);
    CHECK(same_record(&a, &b), "a spec deals records round-robin over its families");
    CHECK(demo_spec_parse(&s, "demo:lookup", &err) == 0 && s.records == DEMO_RECORDS_PER_FAMILY,
          "one family: its default size");
    CHECK(demo_spec_parse(&s, "demo:bogus", &err) == -1 && strstr(err.msg, "'bogus'"),
          "unknown item: %s", err.msg);
    CHECK(demo_spec_parse(&s, "demos", &err) == -1, "demos is not a demo source");
    CHECK(demo_spec_parse(&s, "demo:records=0", &err) == -1, "records=0");
    CHECK(demo_spec_parse(&s, "demo:seed=x", &err) == -1, "seed=x");
}

/* ---- the tokenizer ---- */

static char *render(const demo_record *r, size_t *len)
{
    char *s = malloc(256);
    int n = snprintf(s, 256, "<s>%s%s%s### Human:\n%s\n### Assistant:\n%s</s>",
                     r->system[0] ? "### System:\n" : "", r->system, r->system[0] ? "\n" : "",
                     r->input, r->output);
    *len = (size_t)n;
    return s;
}

static void test_tokenizer(tokenizer *t)
{
    CHECK(tok_vocab_size(t) <= 512, "vocabulary of %d tokens", tok_vocab_size(t));
    CHECK(tok_bos(t) == 1 && tok_eos(t) == 2 && tok_pad(t) == 3 && tok_token_id(t, "<unk>") == 0,
          "special ids: bos %d eos %d pad %d", tok_bos(t), tok_eos(t), tok_pad(t));
    const char *markers[] = {"### System:", "### Human:", "### Assistant:"};
    for (int i = 0; i < 3; i++)
        CHECK(tok_token_id(t, markers[i]) >= 0, "no token for '%s'", markers[i]);
    const char *words[] = {"reverse", "capital", "Paris", "banana"};
    for (int i = 0; i < 4; i++)
        CHECK(tok_token_id(t, words[i]) >= 0, "no whole-word token for '%s'", words[i]);

    const chat_template *tpl = template_find("camelidae");
    long max_tokens = 0;
    for (long i = 0; i < N_RECORDS; i++) {
        demo_record r;
        demo_generate(7, i, &r);
        size_t len;
        char *text = render(&r, &len);
        tok_ids ids = {0}, via_tpl = {0}, labels = {0};
        pesc_error err;
        CHECK(tok_encode(t, text, len, 0, &ids, &err) == 0, "encode: %s", err.msg);
        char *back = tok_decode(t, ids.ids, ids.n, 0, NULL);
        CHECK(back && strcmp(back, text) == 0, "round trip of '%s' gives '%s'", text, back);
        CHECK(demo_encode(&r, t, tpl, &via_tpl, &labels, &err) == 0, "demo_encode: %s", err.msg);
        CHECK(via_tpl.n == ids.n && memcmp(via_tpl.ids, ids.ids, (size_t)ids.n * 4) == 0,
              "record %ld: the template renders other tokens than '%s'", i, text);
        /* the labels are exactly the answer and </s> */
        int first = 0;
        while (first < labels.n && labels.ids[first] == -100)
            first++;
        char *answer_text = tok_decode(t, labels.ids + first, labels.n - first, 0, NULL);
        char want[64];
        snprintf(want, sizeof want, "%s</s>", r.output);
        CHECK(answer_text && strcmp(answer_text, want) == 0, "record %ld labels '%s'", i,
              answer_text);
        /* made-up words and answers about letters come letter by letter */
        if (r.family >= 1 && r.family <= 4)
            CHECK(labels.n - first == (int)strlen(r.output) + 1,
                  "record %ld: answer '%s' is %d tokens", i, r.output, labels.n - first - 1);
        max_tokens = ids.n > max_tokens ? ids.n : max_tokens;
        free(answer_text);
        free(back);
        free(text);
        tok_ids_free(&ids);
        tok_ids_free(&via_tpl);
        tok_ids_free(&labels);
    }
    CHECK(max_tokens <= 40, "a demo record takes %ld tokens", max_tokens);
    /* anything else still encodes (byte fallback) and comes back */
    const char *other = "Größe: 10\t€ ✓ reverse: Hello, World!\n";
    tok_ids ids = {0};
    pesc_error err;
    CHECK(tok_encode(t, other, strlen(other), 0, &ids, &err) == 0, "encode: %s", err.msg);
    char *back = tok_decode(t, ids.ids, ids.n, 0, NULL);
    CHECK(back && strcmp(back, other) == 0, "round trip of non-demo text gives '%s'", back);
    free(back);
    ids.n = 0;
    CHECK(tok_encode(t, "hi", 2, TOK_ADD_SPECIAL, &ids, &err) == 0 && ids.n == 3 &&
          ids.ids[0] == 1, "encode with special tokens adds <s>");
    tok_ids_free(&ids);
}

/* ---- demo-data output through the dataset loader ---- */

static void test_jsonl(tokenizer *t)
{
    char path[] = "/tmp/pesc-test-demoXXXXXX";
    int fd = mkstemp(path);
    FILE *f = fdopen(fd, "w");
    demo_spec s = {.seed = 99, .records = 600};
    demo_spec_complete(&s);
    pesc_error err = {{0}};
    CHECK(demo_write_jsonl(f, &s, path, &err) == 0, "write: %s", err.msg);
    fclose(f);
    for (int fmt = 0; fmt < 2; fmt++) {
        ds_records from_file = {0}, generated = {0};
        ds_load_options lo = {.tok = t, .strict = 1, .source = 2, .vocab_size = tok_vocab_size(t)};
        CHECK(ds_format_parse(fmt ? "auto" : "camelidae", &lo.format, &err) == 0, "format");
        CHECK(dataset_load(&from_file, path, &lo, &err) == 0, "load demo-data output: %s", err.msg);
        CHECK(demo_load(&generated, "demo:seed=99,records=600", &lo, &err) == 0, "demo_load: %s",
              err.msg);
        CHECK(from_file.n == 600 && generated.n == 600, "%d and %d records", from_file.n,
              generated.n);
        for (int i = 0; i < from_file.n && i < generated.n; i++) {
            const ds_record *a = &from_file.items[i], *b = &generated.items[i];
            int same = a->len == b->len && a->source == 2 && b->source == 2 &&
                       memcmp(a->ids, b->ids, (size_t)a->len * 4) == 0 && a->labels &&
                       b->labels && memcmp(a->labels, b->labels, (size_t)a->len * 4) == 0;
            CHECK(same, "record %d: the file and the demo format disagree", i + 1);
        }
        /* demo_load appends after records that are there */
        CHECK(demo_load(&generated, "demo:count,records=5", &lo, &err) == 0 && generated.n == 605,
              "demo_load appends");
        dataset_free(&from_file);
        dataset_free(&generated);
    }
    ds_records none = {0};
    ds_load_options no_tok = {.format = DS_CAMELIDAE};
    CHECK(demo_load(&none, "demo", &no_tok, &err) == -1 && strstr(err.msg, "tokenizer"),
          "demo_load without a tokenizer: %s", err.msg);
    unlink(path);
}

/* ---- the `demo` format's table, through a host that records the messages ---- */

struct pesc_record_out {
    int n;
    pesc_role roles[4];
    char text[4][DEMO_TEXT_MAX];
};

static void host_message(pesc_record_out *out, pesc_role role, const char *text, size_t len)
{
    if (out->n < 4 && len < DEMO_TEXT_MAX) {
        out->roles[out->n] = role;
        memcpy(out->text[out->n], text, len);
        out->text[out->n++][len] = '\0';
    }
}

static void test_format_ops(void)
{
    const pesc_format_ops *ops = &demo_format_ops;
    pesc_format_host host = {.size = sizeof host, .message = host_message};
    char err[256] = "";
    CHECK(ops->size == sizeof *ops && ops->open && ops->next && ops->close, "format table");
    /* a demo: argument that does not parse is claimed too, so that open says what is wrong */
    CHECK(ops->probe("demo:sort") == 100 && ops->probe("demo") == 100 &&
          ops->probe("data.jsonl") == 0 && ops->probe("demo:nope") == 100 &&
          ops->probe("demonstration.jsonl") == 0, "probe");
    CHECK(!ops->open("demo:nope", err, sizeof err) && strstr(err, "nope"), "open: %s", err);
    void *src = ops->open("demo:case,lookup,records=7,seed=3", err, sizeof err);
    CHECK(src, "open: %s", err);
    int n = 0;
    while (src && (ops->next(&host, src, &(pesc_record_out){0})) == 1)
        n++;
    if (src)
        ops->close(src);
    CHECK(n == 7, "the source gave %d records, wanted 7", n);
    /* the messages of the first record */
    src = ops->open("demo:lookup,records=1,seed=3", err, sizeof err);
    pesc_record_out out = {0};
    CHECK(src && ops->next(&host, src, &out) == 1, "next");
    demo_record r;
    demo_generate_family(3, 5, 0, &r);
    int k = 0;
    if (r.system[0])
        CHECK(out.roles[k] == PESC_ROLE_SYSTEM && strcmp(out.text[k++], r.system) == 0, "system");
    CHECK(out.n == k + 2 && out.roles[k] == PESC_ROLE_USER && strcmp(out.text[k], r.input) == 0 &&
          out.roles[k + 1] == PESC_ROLE_ASSISTANT && strcmp(out.text[k + 1], r.output) == 0,
          "messages of the demo format: %d, '%s' '%s'", out.n, out.text[0], out.text[1]);
    CHECK(src && ops->next(&host, src, &out) == 0, "the source ends after its records");
    if (src)
        ops->close(src);
}

int main(void)
{
    const char *top = getenv("top_srcdir") ? getenv("top_srcdir") : ".";
    char path[4096];
    snprintf(path, sizeof path, "%s/data/demo/tokenizer.json", top);
    test_determinism();
    test_answers();
    test_spec();
    test_format_ops();
    pesc_error err;
    tokenizer *t = tok_load(path, &err);
    CHECK(t, "the demo tokenizer does not load: %s", err.msg);
    if (t) {
        test_tokenizer(t);
        test_jsonl(t);
        tok_delete(t);
    }
    if (failures)
        fprintf(stderr, "%d failure(s)\n", failures);
    return failures ? 1 : 0;
}
