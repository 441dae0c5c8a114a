/* test_reference — the dense forward pass against PyTorch.
 *
 * tests/reference/make_reference.py (Debian's python3-torch) wrote tiny Hugging Face models and,
 * computed in float64 from the weights as stored, every record's logits and losses. Here each
 * model is loaded the way `pesc eval` loads it and must match: logits by normalized error and
 * losses by relative error, both within 1e-5. Exit 0 pass, 1 fail, 99 missing data. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "dataset.h"
#include "model.h"

#define TOLERANCE 1e-5

static const char *const models[] = {"llama-gqa-f32",       "qwen2-bias-f32",
                                     "llama-bf16-tied",     "mistral-sharded-f16",
                                     "qwen3-qknorm-f32",    "phi3-fused-bf16",
                                     "phi3-longrope-f32",   "phi4mini-partial-f32",
                                     "smollm3-nope-f32",    "granite-mult-f32",
                                     "gemma3-f32",          "gemma3-mm-bf16",
                                     "gemma3-mm-f32",       "olmo2-f32",
                                     "gemma2-f32"};
static int failures;

static void verdict(int ok, const char *model_name, const char *what, double err)
{
    printf("%-4s %-20s %-28s %.2e\n", ok ? "ok" : "FAIL", model_name, what, err);
    failures += !ok;
}

static double logits_error(const float *got, json_t *rows, int T, int V)
{
    double diff = 0.0, norm = 0.0;
    if ((int)json_array_size(rows) != T)
        return INFINITY;
    for (int t = 0; t < T; t++) {
        json_t *row = json_array_get(rows, (size_t)t);
        if ((int)json_array_size(row) != V)
            return INFINITY;
        for (int v = 0; v < V; v++) {
            double want = json_number_value(json_array_get(row, (size_t)v));
            double d = got[(size_t)t * V + v] - want;
            diff += d * d;
            norm += want * want;
        }
    }
    return sqrt(diff) / sqrt(norm);
}

static double relative(double got, double want)
{
    return fabs(got - want) / fabs(want);
}

/* Scores one record and compares its logits and loss; adds to the totals. */
static int check_record(model *m, const ds_record *r, json_t *expected, const char *name, int index,
                        double *nll_total, long long *count_total)
{
    int V = m->config.vocab_size;
    int32_t *targets = malloc((size_t)r->len * sizeof *targets);
    float *logits = malloc((size_t)r->len * V * sizeof *logits);
    pesc_error err;
    double nll;
    long long count;
    model_shift_targets(targets, r->ids, r->labels, r->len);
    int rc = model_forward(m, r->ids, 1, r->len, &err);
    if (rc == 0)
        rc = model_nll(m, targets, &nll, &count, logits, &err);
    if (rc != 0) {
        printf("FAIL %s record %d: %s\n", name, index, err.msg);
        failures++;
    } else {
        char what[64];
        snprintf(what, sizeof what, "record %d logits", index);
        double e = logits_error(logits, json_object_get(expected, "logits"), r->len, V);
        verdict(e <= TOLERANCE, name, what, e);
        json_t *want_loss = json_object_get(expected, "loss");
        long long want_count = json_integer_value(json_object_get(expected, "tokens"));
        snprintf(what, sizeof what, "record %d loss (%lld tokens)", index, count);
        if (json_is_null(want_loss))
            verdict(count == 0 && want_count == 0, name, what, 0.0);
        else {
            e = relative(nll / (double)count, json_number_value(want_loss));
            verdict(e <= TOLERANCE && count == want_count, name, what, e);
        }
        *nll_total += nll;
        *count_total += count;
    }
    free(targets);
    free(logits);
    return rc;
}

static void check_model(pesc_backend *b, const char *root, const char *name)
{
    char dir[1024], path[1200];
    snprintf(dir, sizeof dir, "%s/tests/reference/data/%s", root, name);
    pesc_error err;
    model m;
    ds_records d = {0};
    snprintf(path, sizeof path, "%s/expected.json", dir);
    json_error_t jerr;
    json_t *expected = json_load_file(path, 0, &jerr);
    if (!expected || model_load(&m, dir, b, &err) != 0) {
        printf("FAIL %s: %s\n", name, expected ? err.msg : jerr.text);
        failures++;
        json_decref(expected);
        return;
    }
    snprintf(path, sizeof path, "%s/records.jsonl", dir);
    json_t *records = json_object_get(expected, "records");
    if (dataset_load_tokens(&d, path, m.config.vocab_size, &err) != 0 ||
        d.n != (int)json_array_size(records)) {
        printf("FAIL %s: records: %s\n", name, err.msg);
        failures++;
    } else {
        double nll = 0.0;
        long long count = 0;
        for (int i = 0; i < d.n; i++)
            check_record(&m, &d.items[i], json_array_get(records, (size_t)i), name, i, &nll,
                         &count);
        double e = relative(nll / (double)count,
                            json_number_value(json_object_get(expected, "loss")));
        verdict(e <= TOLERANCE &&
                count == json_integer_value(json_object_get(expected, "tokens")),
                name, "loss over all records", e);
    }
    dataset_free(&d);
    model_free(&m);
    json_decref(expected);
}

int main(void)
{
    const char *root = getenv("top_srcdir");
    if (!root)
        root = ".";
    pesc_error err;
    pesc_backend *b = backend_new("cpu", &err);
    if (!b) {
        fprintf(stderr, "%s\n", err.msg);
        return 99;
    }
    for (size_t i = 0; i < sizeof models / sizeof *models; i++)
        check_model(b, root, models[i]);
    backend_delete(b);
    printf("%d failure%s\n", failures, failures == 1 ? "" : "s");
    return failures ? 1 : 0;
}
