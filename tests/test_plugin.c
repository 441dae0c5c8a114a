/* test_plugin — the loader refuses broken modules with a message naming file and problem (and
 * survives them), and a format plugin is first-class: found by name, chosen by --format auto,
 * its records tokenized through the chat template and carrying their source. Source formats
 * (open/next, as the generated demo data uses) load through the same registry. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dataset.h"
#include "plugin.h"
#include "tokenizer/fixture.h"
#include "check.h"

static char dir[] = "/tmp/pesc-test-pluginXXXXXX";
static char builddir[2048];

static void module_path(char *out, size_t cap, const char *sub, const char *name)
{
    snprintf(out, cap, "%s/%s/.libs/%s.so", builddir, sub, name);
}

static void test_refusals(void)
{
    static const struct { const char *name, *problem; } cases[] = {
        {"bad_abi", "built for plugin ABI 999 and this pesc speaks ABI 1"},
        {"no_entry", "no pesc_plugin_entry symbol"},
        {"data_entry", "its pesc_plugin_entry is not a function"},
        {"undefined_symbol", "undefined symbol: pesc_function_nobody_defines"},
        {"stray_pointer", "outside the module"},
        {"bad_name", "name must be 1 to 31"},
        {"control_description", "its description holds a control character"},
        {"not_there", "cannot load it"},
    };
    pesc_plugins *p = plugins_new();
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char path[4096];
        module_path(path, sizeof path, "tests/plugins", cases[i].name);
        pesc_error err = {{0}};
        int rc = plugins_load_file(p, path, NULL, &err);
        CHECK(rc == -1 && strstr(err.msg, path) && strstr(err.msg, cases[i].problem),
              "%s: refusal must name the file and '%s': %s", cases[i].name, cases[i].problem,
              err.msg);
        CHECK(strchr(err.msg, '\n') == NULL, "%s: one line", cases[i].name);
    }
    CHECK(plugins_count(p) == 8, "refused modules are listed: %d", plugins_count(p));
    for (int i = 0; i < plugins_count(p); i++)
        CHECK(plugins_get(p, i)->plugin == NULL && plugins_get(p, i)->problem[0],
              "refused module %d has a problem and no descriptor", i);
    plugins_delete(p);

    /* scanning a directory of broken modules: nothing loads, nothing fails */
    char tests_dir[4096];
    snprintf(tests_dir, sizeof tests_dir, "%s/tests/plugins", builddir);
    p = plugins_new();
    CHECK(plugins_scan_dir(p, tests_dir, "test") == 0 && plugins_count(p) == 7,
          "scan: %d listed", plugins_count(p));
    plugins_delete(p);
}

static char *write_file(const char *name, const char *text)
{
    static char path[4][512];
    static int next;
    char *out = path[next++ % 4];
    snprintf(out, 512, "%s/%s", dir, name);
    FILE *f = fopen(out, "w");
    fputs(text, f);
    fclose(f);
    return out;
}

static void check_decoded(tokenizer *t, const ds_records *d, int i, const char *want)
{
    if (i >= d->n) {
        CHECK(0, "record %d missing", i);
        return;
    }
    char *text = tok_decode(t, d->items[i].ids, d->items[i].len, 0, NULL);
    CHECK(strcmp(text, want) == 0, "record %d: got %s", i, text);
    free(text);
}

static void test_format_plugin(tokenizer *t)
{
    char path[4096];
    module_path(path, sizeof path, "plugins", "example_format");
    pesc_error err = {{0}};
    const char *files[] = {path, path};   /* the same file twice loads once */
    pesc_plugins *p = plugins_open(files, 2, &err);
    CHECK(p != NULL, "open: %s", err.msg);
    if (!p)
        return;
    const pesc_plugin *qa = plugins_find(p, PESC_PLUGIN_FORMAT, "qa");
    CHECK(qa && strcmp(qa->version, "1.0") == 0, "qa found with its version");
    ds_formats *formats = plugins_formats(p, &err);
    CHECK(formats != NULL, "formats: %s", err.msg);
    ds_format f;
    CHECK(ds_formats_parse(formats, "qa", &f, &err) == 0 && f > DS_TOKENS, "qa by name: %s",
          err.msg);
    CHECK(ds_formats_parse(formats, "alpaca", &f, &err) == 0 && f == DS_ALPACA,
          "built-ins keep their places");
    CHECK(ds_format_parse("qa", &f, &err) == -1, "the built-in parser does not know plugins");
    CHECK(ds_formats_add(formats, "qa", "", qa->format, "again", &err) == -1 &&
          strstr(err.msg, "already defined"), "a taken name: %s", err.msg);

    /* auto: qa records next to built-in ones (a JSON string is a text record; a plain line
     * after JSON objects would be a broken record); the source index travels with every
     * record */
    const char *data = write_file("mixed.jsonl",
        "{\"q\": \"hello\", \"a\": \"world\"}\n"
        "{\"q\": \"x\", \"a\": \"y\", \"context\": \"S\"}\n"
        "{\"query\": \"1+1\", \"response\": \"2\"}\n"
        "\"a plain line\"\n");
    ds_records d = {0};
    ds_load_options lo = {.format = DS_AUTO, .tok = t, .strict = 1, .formats = formats,
                          .source = 3};
    CHECK(dataset_load(&d, data, &lo, &err) == 0 && d.n == 4, "auto: %s", err.msg);
    check_decoded(t, &d, 0, "<s>### Human:\nhello\n### Assistant:\nworld</s>");
    check_decoded(t, &d, 1, "<s>### System:\nS\n### Human:\nx\n### Assistant:\ny</s>");
    check_decoded(t, &d, 2, "<s>### Human:\n1+1\n### Assistant:\n2</s>");
    check_decoded(t, &d, 3, "<s>a plain line</s>");
    if (d.n > 0) {
        const ds_record *r = &d.items[0];
        int trained = 0;
        for (int i = 0; i < r->len; i++)
            trained += r->labels && r->labels[i] != -100;
        CHECK(r->labels && r->labels[0] == -100 && trained > 0 && trained < r->len,
              "only the answer carries loss (%d of %d)", trained, r->len);
        CHECK(r->source == 3 && d.items[1].line == 2, "source %d, line %ld", r->source,
              d.items[1].line);
    }
    dataset_free(&d);

    /* --format qa: its own line syntax, and its errors with file and line */
    data = write_file("lines.txt", "what\tthat\n{\"q\": 5, \"a\": \"x\"}\n");
    CHECK(ds_formats_parse(formats, "qa", &lo.format, &err) == 0, "qa");
    CHECK(dataset_load(&d, data, &lo, &err) == -1 && strstr(err.msg, "lines.txt:2") &&
          strstr(err.msg, "\"q\" and \"a\" must be strings"), "strict qa error: %s", err.msg);
    dataset_free(&d);
    lo.strict = 0;
    CHECK(dataset_load(&d, data, &lo, &err) == 0 && d.n == 1 && d.skipped == 1,
          "lenient qa: %s", err.msg);
    check_decoded(t, &d, 0, "<s>### Human:\nwhat\n### Assistant:\nthat</s>");
    dataset_free(&d);

    ds_formats_delete(formats);
    plugins_delete(p);
}

/* ---- a source format, in process: records made by next(), chosen by probe ------------- */

typedef struct counter { int left, made; } counter;

static void *gen_open(const char *path, char *err, size_t errlen)
{
    int n = atoi(path + 4);
    if (n <= 0) {
        snprintf(err, errlen, "expected gen:N with N > 0");
        return NULL;
    }
    counter *c = calloc(1, sizeof *c);
    c->left = n;
    return c;
}

static int gen_next(const pesc_format_host *h, void *source, pesc_record_out *out)
{
    counter *c = source;
    if (c->left-- <= 0)
        return 0;
    if (++c->made == 2)
        return h->fail(out, "record two is bad on purpose");
    int32_t ids[3] = {c->made, c->made + 1, c->made + 2};
    h->tokens(out, ids, NULL, 3);
    return 1;
}

static void gen_close(void *source) { free(source); }
static int gen_probe(const char *path) { return strncmp(path, "gen:", 4) == 0 ? 100 : 0; }

static const pesc_format_ops gen_ops = {.size = sizeof gen_ops, .open = gen_open,
                                        .next = gen_next, .close = gen_close, .probe = gen_probe};

static void test_source_format(void)
{
    ds_formats *formats = ds_formats_new();
    pesc_error err = {{0}};
    CHECK(ds_formats_add(formats, "gen", "test", &gen_ops, "test", &err) == 0, "%s", err.msg);
    ds_records d = {0};
    ds_load_options lo = {.format = DS_AUTO, .formats = formats, .vocab_size = 64, .source = 1};
    CHECK(dataset_load(&d, "gen:4", &lo, &err) == 0 && d.n == 3 && d.skipped == 1,
          "auto picks the source by its probe: %d records, %ld skipped: %s", d.n, d.skipped,
          err.msg);
    CHECK(d.n == 3 && d.items[1].ids[0] == 3 && d.items[1].line == 3 && d.items[1].source == 1,
          "records of a source keep index and source");
    dataset_free(&d);
    lo.strict = 1;
    CHECK(dataset_load(&d, "gen:4", &lo, &err) == -1 && strstr(err.msg, "gen:4: record 2") &&
          strstr(err.msg, "bad on purpose"), "strict source: %s", err.msg);
    dataset_free(&d);
    CHECK(dataset_load(&d, "gen:0", &lo, &err) == -1 && strstr(err.msg, "gen:N"),
          "open failure: %s", err.msg);
    dataset_free(&d);
    ds_formats_delete(formats);
}

int main(void)
{
    const char *b = getenv("top_builddir");
    if (!realpath(b ? b : ".", builddir))
        return 99;
    if (!mkdtemp(dir))
        return 99;
    tokenizer *t = fixture_tokenizer();
    if (!t)
        return 99;
    test_refusals();
    test_format_plugin(t);
    test_source_format();
    tok_delete(t);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        failures++;
    if (failures) {
        fprintf(stderr, "test_plugin: %d failures\n", failures);
        return 1;
    }
    printf("test_plugin: refusals, format plugin and source formats as expected\n");
    return 0;
}
