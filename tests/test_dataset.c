/* test_dataset — formats (JSONL, JSON array, gzip), skipped and strict bad records, mixture
 * weights, truncation, packing (positions and document ids), seeded order and an exact cursor
 * round trip. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "dataset.h"
#include "tokenizer/fixture.h"

static int failures;

#define CHECK(cond, ...) do { if (!(cond)) { failures++; fprintf(stderr, __VA_ARGS__); \
                              fputc('\n', stderr); } } while (0)

static char dir[] = "/tmp/pesc-test-datasetXXXXXX";

static const char *write_file(const char *name, const char *text, int gzip)
{
    static char path[8][512];
    static int next;
    char *p = path[next++ % 8];
    snprintf(p, 512, "%s/%s", dir, name);
    if (gzip) {
        gzFile g = gzopen(p, "wb");
        gzwrite(g, text, (unsigned)strlen(text));
        gzclose(g);
    } else {
        FILE *f = fopen(p, "w");
        fputs(text, f);
        fclose(f);
    }
    return p;
}

static char *decode_record(tokenizer *t, const ds_record *r)
{
    return tok_decode(t, r->ids, r->len, 0, NULL);
}

static void test_formats(tokenizer *t)
{
    static const struct { const char *name, *line, *want; } cases[] = {
        {"camelidae", "{\"instruction\": \"S\", \"conversation\": [{\"input\": \"q\", \"output\": \"a\"}]}",
         "<s>### System:\nS\n### Human:\nq\n### Assistant:\na</s>"},
        {"corpus", "{\"instruction\": \"\", \"conversation\": [], \"corpus\": \"plain text\"}",
         "<s>plain text</s>"},
        {"alpaca", "{\"instruction\": \"do\", \"input\": \"x\", \"output\": \"y\"}",
         "<s>### Human:\ndo\n\nx\n### Assistant:\ny</s>"},
        {"sharegpt", "{\"conversations\": [{\"from\": \"system\", \"value\": \"S\"}, {\"from\": \"human\", "
         "\"value\": \"q\"}, {\"from\": \"gpt\", \"value\": \"a\"}]}",
         "<s>### System:\nS\n### Human:\nq\n### Assistant:\na</s>"},
        {"openai", "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", "
         "\"content\": \"a\"}]}", "<s>### Human:\nq\n### Assistant:\na</s>"},
        {"metamath", "{\"query\": \"1+1\", \"response\": \"2\", \"type\": \"GSM\"}",
         "<s>### Human:\n1+1\n### Assistant:\n2</s>"},
        {"magicoder", "{\"problem\": \"p\", \"solution\": \"s\"}", "<s>### Human:\np\n### Assistant:\ns</s>"},
        {"magicoder2", "{\"instruction\": \"i\", \"response\": \"r\"}", "<s>### Human:\ni\n### Assistant:\nr</s>"},
        {"text", "{\"text\": \"hello world\"}", "<s>hello world</s>"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char body[1024];
        snprintf(body, sizeof body, "%s\n", cases[i].line);
        const char *path = write_file("one.jsonl", body, 0);
        ds_records d = {0};
        pesc_error err = {{0}};
        ds_load_options lo = {.format = DS_AUTO, .tok = t, .strict = 1};
        int rc = dataset_load(&d, path, &lo, &err);
        CHECK(rc == 0 && d.n == 1, "%s: %s", cases[i].name, err.msg);
        if (rc == 0) {
            char *text = decode_record(t, &d.items[0]);
            CHECK(strcmp(text, cases[i].want) == 0, "%s: got %s", cases[i].name, text);
            free(text);
        }
        dataset_free(&d);
    }
}

static void test_array_gzip_and_bad_records(tokenizer *t)
{
    /* a JSON array over several lines, gzip-compressed, with a string holding ']' and '}' */
    const char *array = "[\n {\"text\": \"a ] } [ {\"},\n {\"text\": \"second\"}\n ,{\"query\": 5, "
                        "\"response\": \"x\"},\n \"a bare string\"\n]\n";
    const char *path = write_file("array.json.gz", array, 1);
    ds_records d = {0};
    pesc_error err = {{0}};
    FILE *warn = tmpfile();
    ds_load_options lo = {.format = DS_AUTO, .tok = t, .warn = warn};
    CHECK(dataset_load(&d, path, &lo, &err) == 0, "array: %s", err.msg);
    CHECK(d.n == 3 && d.skipped == 1, "array: %d records, %ld skipped", d.n, d.skipped);
    CHECK(d.n == 3 && d.items[1].line == 3 && d.items[2].line == 5, "array: record lines %ld %ld",
          d.n > 1 ? d.items[1].line : -1, d.n > 2 ? d.items[2].line : -1);
    char msg[512] = {0};
    rewind(warn);
    CHECK(fgets(msg, sizeof msg, warn) && strstr(msg, "array.json.gz:4") && strstr(msg, "query"),
          "the warning names file, line and key: %s", msg);
    fclose(warn);
    dataset_free(&d);

    lo.warn = NULL;
    lo.strict = 1;
    CHECK(dataset_load(&d, path, &lo, &err) == -1 && strstr(err.msg, "array.json.gz:4"),
          "strict: %s", err.msg);
    dataset_free(&d);
    lo.strict = 0;
    path = write_file("empty.jsonl", "\n\n{\"nothing\": 1}\n", 0);
    CHECK(dataset_load(&d, path, &lo, &err) == -1 && strstr(err.msg, "no usable records"),
          "empty dataset must fail: %s", err.msg);
    dataset_free(&d);
}

static void write_numbers(const char *name, int first, int n, char *path_out)
{
    char *body = malloc(64 * (size_t)n + 1), *p = body;
    for (int i = 0; i < n; i++)
        p += sprintf(p, "{\"input_ids\": [%d, %d, %d], \"labels\": [-100, %d, %d]}\n", first + i,
                     first + i, first + i, first + i, first + i);
    strcpy(path_out, write_file(name, body, 0));
    free(body);
}

static void test_batches(void)
{
    ds_source src[2];
    char a[512], b[512];
    write_numbers("a.jsonl", 1000, 10, a);
    write_numbers("b.jsonl", 2000, 4, b);
    pesc_error err = {{0}};
    CHECK(ds_source_parse(&src[0], a, &err) == 0 && src[0].weight == 1.0, "parse a");
    char arg[600];
    snprintf(arg, sizeof arg, "%s:2.5", b);
    CHECK(ds_source_parse(&src[1], arg, &err) == 0 && src[1].weight == 2.5 &&
          strcmp(src[1].path, b) == 0, "parse b:2.5");
    CHECK(ds_source_parse(&src[1], "x:0", &err) == -1, "weight 0 must fail");
    snprintf(arg, sizeof arg, "%s:2.5", b);
    ds_source_parse(&src[1], arg, &err);

    ds_load_options lo = {.format = DS_TOKENS};
    ds_options o = {.batch = 2, .seq = 8, .pack = 1, .shuffle = 1, .seed = 7, .epochs = 2};
    dataset *ds = dataset_open(src, 2, &lo, &o, &err);
    CHECK(ds != NULL, "open: %s", err.msg);
    if (!ds) return;
    ds_batch batch;
    ds_batch_init(&batch, 2, 8);
    long from_a = 0, from_b = 0, batches = 0, saved_at = -1;
    ds_cursor saved = {0};
    int32_t saved_ids[16];
    while (dataset_next_batch(ds, &batch) > 0) {
        batches++;
        if (batches == 3) {   /* the batch after a saved cursor must come back identically */
            memcpy(saved_ids, batch.ids, sizeof saved_ids);
        }
        if (batches == 2) {
            saved = dataset_cursor(ds);
            saved_at = batches;
        }
        for (int r = 0; r < batch.rows; r++) {
            CHECK(batch.row_tokens[r] == 6, "packing: two 3-token records fit in 8 (%d)", batch.row_tokens[r]);
            for (int k = 0; k < 8; k++) {
                int i = r * 8 + k;
                int doc = k < 6 ? k / 3 : -1;
                CHECK(batch.doc_ids[i] == doc, "doc id at %d,%d: %d", r, k, batch.doc_ids[i]);
                CHECK(batch.positions[i] == (k < 6 ? k % 3 : 0), "position at %d,%d", r, k);
                if (k < 6 && k % 3 == 0) {
                    if (batch.sources[i] == 0) from_a++; else from_b++;
                    CHECK((batch.sources[i] == 0) == (batch.ids[i] < 2000), "source of a token");
                }
                /* targets: next label within the document only */
                int32_t want = (k % 3 < 2 && k < 6) ? batch.ids[i + 1] : -100;
                CHECK(batch.targets[i] == want, "target at %d,%d: %d want %d", r, k, batch.targets[i], want);
                CHECK(batch.labels[i] == (k < 6 && k % 3 ? batch.ids[i] : -100), "label at %d,%d", r, k);
            }
        }
    }
    /* two epochs: a's 10 records twice; b's 4 records 2 or 3 times each per epoch */
    CHECK(from_a == 20 && from_b >= 16 && from_b <= 24, "mixture: %ld from a, %ld from b", from_a, from_b);
    CHECK(batches >= 10, "two epochs of batches: %ld", batches);
    CHECK(saved_at == 2, "cursor saved");
    CHECK(dataset_seek(ds, &saved, &err) == 0, "seek: %s", err.msg);
    CHECK(dataset_next_batch(ds, &batch) > 0 && memcmp(batch.ids, saved_ids, sizeof saved_ids) == 0,
          "the batch after a restored cursor must be the same");
    ds_cursor bad = saved;
    bad.fingerprint ^= 1;
    CHECK(dataset_seek(ds, &bad, &err) == -1, "a foreign cursor must be refused");
    dataset_delete(ds);

    /* no packing, truncation to seq: one record a row, cut and counted */
    o = (ds_options){.batch = 3, .seq = 2, .pack = 0, .shuffle = 0, .seed = 1, .epochs = 1};
    ds = dataset_open(src, 1, &lo, &o, &err);
    CHECK(ds && dataset_stats(ds)->truncated == 10 && dataset_stats(ds)->truncated_tokens == 10,
          "truncation counted");
    ds_batch_free(&batch);
    ds_batch_init(&batch, 3, 2);
    CHECK(ds && dataset_next_batch(ds, &batch) == 3 && batch.ids[0] == 1000 && batch.ids[2] == 1001,
          "unshuffled order, one record a row");
    dataset_delete(ds);
    ds_batch_free(&batch);
}

int main(void)
{
    if (!mkdtemp(dir))
        return 99;
    tokenizer *t = fixture_tokenizer();
    if (!t)
        return 99;
    test_formats(t);
    test_array_gzip_and_bad_records(t);
    test_batches();
    tok_delete(t);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        failures++;
    if (failures) {
        fprintf(stderr, "test_dataset: %d failures\n", failures);
        return 1;
    }
    printf("test_dataset: formats, bad records, mixture, packing and cursor as expected\n");
    return 0;
}
