/* test_optfile — the config file reader: every form a value takes (plain, quoted, a list of
 * items or [a, b]), comments, and each refusal naming its line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "optfile.h"
#include "check.h"

static optfile *parse(const char *text, pesc_error *err)
{
    return optfile_parse(text, strlen(text), "run.yaml", err);
}

/* The entry named name, or NULL. */
static const optfile_entry *find(const optfile *f, const char *name)
{
    for (int i = 0; i < f->n; i++)
        if (strcmp(f->entries[i].name, name) == 0)
            return &f->entries[i];
    return NULL;
}

static void test_forms(void)
{
    const char *text =
        "\xef\xbb\xbf# a run\r\n"
        "---\n"
        "model: hf://TinyLlama/TinyLlama-1.1B-Chat-v1.0   # the base\n"
        "data:\n"
        "  - alpaca.jsonl:2\n"
        "  - \"slim orca.jsonl\"   # quoted\n"
        "\n"
        "eval_data: ['held out.jsonl', b#c.jsonl, ]\n"
        "lr: 2e-4\n"
        "pack: true\n"
        "sink:\n"
        "- csv\n"
        "- 'tensorboard:it''s'\n"
        "lora-targets: q,k,v\n"
        "template: \"a\\\"b\\\\c\\td\"\n"
        "plugin: []\n"
        "log: # none\n";
    pesc_error err = {{0}};
    optfile *f = parse(text, &err);
    REPORT(f != NULL, "a file of every form reads (%s)", err.msg);
    if (!f)
        return;
    CHECK(f->n == 10, "%d entries", f->n);
    const optfile_entry *e = find(f, "model");
    CHECK(e && e->line == 3 && e->n_values == 1 && !e->is_list &&
              strcmp(e->values[0], "hf://TinyLlama/TinyLlama-1.1B-Chat-v1.0") == 0,
          "model: the comment cut, the URL's ':' kept");
    e = find(f, "data");
    CHECK(e && e->is_list && e->n_values == 2 && strcmp(e->values[0], "alpaca.jsonl:2") == 0 &&
              strcmp(e->values[1], "slim orca.jsonl") == 0, "data: two items");
    e = find(f, "eval-data");
    CHECK(e && e->is_list && e->n_values == 2 && strcmp(e->values[0], "held out.jsonl") == 0 &&
              strcmp(e->values[1], "b#c.jsonl") == 0,
          "eval_data: '_' read as '-', a [list] with a trailing ',' and a '#' inside a word");
    e = find(f, "lr");
    CHECK(e && e->n_values == 1 && strcmp(e->values[0], "2e-4") == 0, "lr");
    e = find(f, "sink");
    CHECK(e && e->n_values == 2 && strcmp(e->values[1], "tensorboard:it's") == 0,
          "items at the name's indent, '' as a quote");
    e = find(f, "lora-targets");
    CHECK(e && e->n_values == 1 && strcmp(e->values[0], "q,k,v") == 0,
          "a plain value keeps its commas");
    e = find(f, "template");
    CHECK(e && e->n_values == 1 && strcmp(e->values[0], "a\"b\\c\td") == 0,
          "double-quoted escapes: got '%s'", e ? e->values[0] : "");
    e = find(f, "plugin");
    CHECK(e && e->is_list && e->n_values == 0, "[] is a list of none");
    e = find(f, "log");
    CHECK(e && !e->is_list && e->n_values == 0, "a name with only a comment has no value");
    optfile_delete(f);
}

/* Each bad file fails, and its message names the line and carries a telling word. */
static void test_refusals(void)
{
    static const struct {
        const char *text, *needle;
    } cases[] = {
        {"lr 2e-4\n", "run.yaml:1: expected 'name: value'"},
        {"--lr: 2e-4\n", "without its dashes"},
        {"lr:2e-4\n", "put a space after 'lr:'"},
        {"lr: 1\nseed: 2\nlr: 3\n", "run.yaml:3: 'lr' again: line 1"},
        {"lr: 1\nlr_x: 2\nseed_: 3\nseed-: 4\n", "run.yaml:4: 'seed-' again: line 3"},
        {"  - a.jsonl\n", "run.yaml:1: a list item with no name above it"},
        {"data:\n  - a\nlr: 1\n  - b\n", "run.yaml:4: a list item with no name"},
        {"lr: 1\n  seed: 2\n", "run.yaml:2: an indented line"},
        {"data:\n  seed: 2\n", "expected '- item' under 'data'"},
        {"data:\n\t- a\n", "run.yaml:2: a tab indents"},
        {"data:\n  -\n", "an empty list item"},
        {"data:\n  - [a]\n", "a list inside a list"},
        {"data: [a, b\n", "must end on its line"},
        {"data: [a,, b]\n", "an empty item"},
        {"data: [a] b\n", "text after the list's ']'"},
        {"model: {path: x}\n", "'{' begins YAML"},
        {"template: |\n  x\n", "'|' begins YAML"},
        {"lr: &a 1\n", "'&' begins YAML"},
        {"data: [a, [b]]\n", "'[' begins YAML"},
        {"model: \"a\n", "no closing \""},
        {"model: 'a\n", "no closing '"},
        {"model: \"a\\qb\"\n", "\\q is not an escape"},
        {"model: \"a\" b\n", "'b' follows the closing quote"},
        {"lr: 1\n---\nlr: 2\n", "run.yaml:2: a second YAML document"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        pesc_error err = {{0}};
        optfile *f = parse(cases[i].text, &err);
        CHECK(!f && strstr(err.msg, cases[i].needle), "case %zu: '%s' gave '%s'", i,
              cases[i].needle, f ? "(accepted)" : err.msg);
        optfile_delete(f);
    }
    pesc_error err = {{0}};
    optfile *f = optfile_parse("lr: 1\nseed: \0 2\n", 13, "run.yaml", &err);
    CHECK(!f && strstr(err.msg, "run.yaml:2: a NUL byte"), "a NUL byte: %s", err.msg);
    optfile_delete(f);
    REPORT(1, "%zu bad files refused, each naming its line", sizeof cases / sizeof *cases + 1);
}

static void test_read(void)
{
    pesc_error err = {{0}};
    optfile *f = optfile_read("no/such/run.yaml", &err);
    CHECK(!f && strstr(err.msg, "no/such/run.yaml") && strstr(err.msg, "No such file"),
          "a missing file: %s", err.msg);
    char path[] = "/tmp/test_optfile.XXXXXX";
    int fd = mkstemp(path);
    FILE *out = fd >= 0 ? fdopen(fd, "w") : NULL;
    CHECK(out != NULL, "a scratch file");
    if (!out)
        return;
    fputs("seed: 7\nsteps: 3", out);   /* no newline at the end */
    fclose(out);
    f = optfile_read(path, &err);
    CHECK(f && f->n == 2 && strcmp(f->entries[1].values[0], "3") == 0,
          "the last line without its newline: %s", f ? "" : err.msg);
    optfile_delete(f);
    remove(path);
    REPORT(failures == 0, "files read from disk");
}

int main(void)
{
    test_forms();
    test_refusals();
    test_read();
    return failures ? 1 : 0;
}
