/* test_tokenizer_hf — ids and decodes against Hugging Face tokenizers on the committed corpus.
 *
 * tests/tokenizer/expected-NAME.jsonl holds, for every corpus text, the ids HF gives (with and
 * without special tokens) and its decodes (tests/tokenizer/make_expected.js wrote them). The
 * tokenizer files themselves come from tools/fetch-tokenizers; a missing one is skipped, all
 * missing is exit 77. Streaming decode must give the whole decode wherever HF's has no U+FFFD. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tokenizer.h"
#include "check.h"

static char *path_in(const char *dir, const char *rel)
{
    size_t n = strlen(dir) + strlen(rel) + 2;
    char *p = malloc(n);
    snprintf(p, n, "%s/%s", dir, rel);
    return p;
}

static int same_ids(const tok_ids *got, json_t *want)
{
    if ((size_t)got->n != json_array_size(want))
        return 0;
    for (int i = 0; i < got->n; i++)
        if (got->ids[i] != json_integer_value(json_array_get(want, (size_t)i)))
            return 0;
    return 1;
}

static void print_ids(const char *what, const tok_ids *got, json_t *want)
{
    fprintf(stderr, "  %s got:", what);
    for (int i = 0; i < got->n && i < 40; i++)
        fprintf(stderr, " %d", got->ids[i]);
    fprintf(stderr, "\n  %s want:", what);
    for (size_t i = 0; i < json_array_size(want) && i < 40; i++)
        fprintf(stderr, " %lld", (long long)json_integer_value(json_array_get(want, i)));
    fputc('\n', stderr);
}

/* Concatenated streaming decode of ids. */
static char *stream_decode(const tokenizer *t, const tok_ids *ids, int skip)
{
    tok_stream s;
    tok_stream_init(&s, t, skip);
    size_t cap = 64, len = 0, n;
    char *out = malloc(cap);
    for (int i = 0; i <= ids->n; i++) {
        const char *piece = i < ids->n ? tok_stream_push(&s, ids->ids[i], &n) : tok_stream_flush(&s, &n);
        while (len + n + 1 > cap)
            out = realloc(out, cap *= 2);
        memcpy(out + len, piece, n);
        len += n;
    }
    out[len] = '\0';
    tok_stream_free(&s);
    return out;
}

static int run_expected(const char *srcdir, const char *name)
{
    char rel[128];
    snprintf(rel, sizeof rel, "tests/tokenizer/files/%s/tokenizer.json", name);
    char *tok_path = path_in(srcdir, rel);
    if (access(tok_path, R_OK) != 0) {
        printf("SKIP %s: %s absent (run tools/fetch-tokenizers)\n", name, tok_path);
        free(tok_path);
        return 0;
    }
    snprintf(rel, sizeof rel, "tests/tokenizer/expected-%s.jsonl", name);
    char *exp_path = path_in(srcdir, rel);
    pesc_error err = {{0}};
    double t0 = pesc_now();
    tokenizer *t = tok_load(tok_path, &err);
    double load_s = pesc_now() - t0;
    FILE *f = fopen(exp_path, "r");
    CHECK(t != NULL, "%s: load failed: %s", name, err.msg);
    CHECK(f != NULL, "%s: cannot open %s", name, exp_path);
    int rows = 0, bad = 0, stream_checked = 0;
    char *line = NULL;
    size_t cap = 0;
    while (t && f && getline(&line, &cap, f) > 0) {
        json_t *row = json_loads(line, 0, NULL);
        const char *text = json_string_value(json_object_get(row, "text"));
        size_t text_len = json_string_length(json_object_get(row, "text"));
        tok_ids with = {0}, without = {0};
        int ok = tok_encode(t, text, text_len, TOK_ADD_SPECIAL, &with, &err) == 0 &&
                 tok_encode(t, text, text_len, 0, &without, &err) == 0;
        int row_bad = 0;
        if (!ok || !same_ids(&with, json_object_get(row, "ids")) ||
            !same_ids(&without, json_object_get(row, "ids_no_special"))) {
            fprintf(stderr, "%s: row %d ids differ for %s\n", name, rows + 1,
                    json_dumps(json_object_get(row, "text"), JSON_ENCODE_ANY));
            print_ids("ids", &with, json_object_get(row, "ids"));
            row_bad = 1;
        }
        /* decode the expected ids, so a decode check does not depend on encode */
        tok_ids want = {0};
        size_t i;
        json_t *v;
        json_array_foreach(json_object_get(row, "ids"), i, v)
            tok_ids_push(&want, (int32_t)json_integer_value(v));
        for (int skip = 0; skip < 2; skip++) {
            const char *key = skip ? "decode_skip" : "decode";
            const char *expect = json_string_value(json_object_get(row, key));
            size_t n;
            char *got = tok_decode(t, want.ids, want.n, skip, &n);
            if (n != json_string_length(json_object_get(row, key)) || memcmp(got, expect, n) != 0) {
                fprintf(stderr, "%s: row %d %s differs:\n  got  %s\n  want %s\n", name, rows + 1,
                        key, got, expect);
                row_bad = 1;
            }
            /* streaming equals the whole decode wherever HF did not replace bad bytes */
            if (!strstr(expect, "\xef\xbf\xbd")) {
                char *streamed = stream_decode(t, &want, skip);
                if (strcmp(streamed, expect) != 0) {
                    fprintf(stderr, "%s: row %d streamed %s differs:\n  got  %s\n  want %s\n",
                            name, rows + 1, key, streamed, expect);
                    row_bad = 1;
                }
                stream_checked++;
                free(streamed);
            }
            free(got);
        }
        bad += row_bad;
        tok_ids_free(&want);
        tok_ids_free(&with);
        tok_ids_free(&without);
        json_decref(row);
        rows++;
    }
    CHECK(bad == 0, "%s: %d of %d rows differ from Hugging Face", name, bad, rows);
    printf("%s: %d rows, %d mismatches, %d streamed decodes checked (load %.2f s)\n", name, rows,
           bad, stream_checked, load_s);
    free(line);
    if (f)
        fclose(f);
    tok_delete(t);
    free(tok_path);
    free(exp_path);
    return 1;
}

int main(void)
{
    const char *srcdir = getenv("top_srcdir");
    if (!srcdir)
        srcdir = ".";
    static const char *const names[] = {"llama2", "llama3", "qwen3", "gemma3", "gemma2", "gpt4o"};
    int ran = 0;
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        ran += run_expected(srcdir, names[i]);
    if (failures) {
        fprintf(stderr, "test_tokenizer_hf: %d failures\n", failures);
        return 1;
    }
    if (!ran) {
        printf("no tokenizer files: run tools/fetch-tokenizers (skipped)\n");
        return 77;
    }
    return 0;
}
