/* test_pesc_reference — PESC crafting, the backward pass and AdamW against PyTorch.
 *
 * tests/reference/make_pesc_reference.py wrote, in float64, six cases (E=4 K=1 with z-loss;
 * E=8 K=2 with GQA; LoRA on every projection; full mode; and on a Qwen3 base, whose heads of q
 * and k are RMS-normed, LoRA everywhere and full mode): a base model, the initial trainables,
 * one batch, the losses, the logits, the gradient of every trainable and the losses of 10
 * AdamW steps. Here the same is computed in float32 and compared: losses and logits within
 * 1e-5 relative, gradients within 1e-4 (normalized error per tensor), the step losses within
 * 1e-4. Exit 0 pass, 1 fail, 99 missing data. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "model.h"
#include "optim.h"
#include "safetensors.h"

static const char *const cases[] = {"pesc-e4k1",       "pesc-e8k2-gqa",   "pesc-lora",
                                    "pesc-full",       "pesc-qwen3-lora", "pesc-qwen3-full",
                                    "pesc-phi3-longrope-lora", "pesc-smollm3-lora",
                                    "pesc-granite-lora", "pesc-gemma3-lora",
                                    "pesc-olmo2-lora", "pesc-gemma2-lora"};
static int failures;

static void verdict(int ok, const char *name, const char *what, double err, double tol)
{
    printf("%-4s %-14s %-62s %.2e (tol %.0e)\n", ok ? "ok" : "FAIL", name, what, err, tol);
    failures += !ok;
}

static double rel(double got, double want) { return fabs(got - want) / (fabs(want) + 1e-30); }

static double num(json_t *obj, const char *key) { return json_number_value(json_object_get(obj, key)); }

static void options_from_json(json_t *cfg, pesc_options *o, optim_config *oc)
{
    pesc_options_default(o);
    const char *mode = json_string_value(json_object_get(cfg, "mode"));
    o->mode = mode && strcmp(mode, "full") == 0 ? TRAIN_FULL : TRAIN_PESC;
    if (o->mode == TRAIN_PESC) {
        o->experts = (int)num(cfg, "num_experts");
        o->top_k = (int)num(cfg, "topk");
        o->adapter_dim = (int)num(cfg, "adapter_dim");
        o->adapter_scale = (float)num(cfg, "moe_scaling");
        o->aux_coef = (float)num(cfg, "aux_coef");
        o->z_coef = (float)num(cfg, "z_coef");
        o->lora_rank = (int)num(cfg, "lora_rank");
        o->lora_alpha = (float)num(cfg, "lora_alpha");
    }
    o->adapter_dropout = 0.0f;
    optim_config_default(oc);
    oc->lr = (float)num(cfg, "lr");
    oc->beta1 = (float)num(cfg, "beta1");
    oc->beta2 = (float)num(cfg, "beta2");
    oc->eps = (float)num(cfg, "eps");
    oc->weight_decay = (float)num(cfg, "weight_decay");
    oc->clip = (float)num(cfg, "max_grad_norm");
    oc->warmup = (long)num(cfg, "warmup_steps");
}

/* B rows of T ids and HF-style labels, shifted into next-token targets. */
static int read_batch(const char *path, int32_t **tokens, int32_t **targets, int *B, int *T)
{
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    json_t *ids = json_object_get(root, "input_ids"), *labels = json_object_get(root, "labels");
    if (!json_is_array(ids) || !json_is_array(labels)) {
        json_decref(root);
        return -1;
    }
    *B = (int)json_array_size(ids);
    *T = (int)json_array_size(json_array_get(ids, 0));
    *tokens = malloc((size_t)*B * *T * sizeof **tokens);
    *targets = malloc((size_t)*B * *T * sizeof **targets);
    int32_t *row_labels = malloc((size_t)*T * sizeof *row_labels);
    for (int b = 0; b < *B; b++) {
        for (int t = 0; t < *T; t++) {
            (*tokens)[b * *T + t] = (int32_t)json_integer_value(json_array_get(json_array_get(ids, b), t));
            row_labels[t] = (int32_t)json_integer_value(json_array_get(json_array_get(labels, b), t));
        }
        model_shift_targets(*targets + b * *T, *tokens + b * *T, row_labels, *T);
    }
    free(row_labels);
    json_decref(root);
    return 0;
}

static void compare_gradients(model *m, const char *dir, const char *name)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/grads.safetensors", dir);
    st_file f = {0};
    pesc_error err;
    if (st_open(&f, path, &err) != 0) {
        printf("FAIL %s: %s\n", name, err.msg);
        failures++;
        return;
    }
    int compared = 0;
    double worst = 0.0;
    const char *worst_name = "";
    for (int i = 0; i < m->n_trainables; i++) {
        const model_tensor *t = &m->trainables[i];
        const st_tensor *src = st_find(&f, t->name);
        float *want = src ? malloc(src->n_elements * sizeof *want) : NULL;
        float *got = malloc(t->n * sizeof *got);
        if (!src || src->n_elements != t->n || st_to_f32(src, want, &err) != 0) {
            printf("FAIL %s: gradient %s missing or mis-shaped in %s\n", name, t->name, path);
            failures++;
        } else {
            backend_download(m->backend, got, t->data - m->train_block + m->grad_block,
                             t->n * sizeof *got);
            double diff = 0.0, norm = 0.0;
            for (size_t j = 0; j < t->n; j++) {
                diff += ((double)got[j] - want[j]) * ((double)got[j] - want[j]);
                norm += (double)want[j] * want[j];
            }
            /* a gradient that is exactly zero (K = 1 routers through w) compares absolutely */
            double e = norm > 0 ? sqrt(diff / norm) : sqrt(diff);
            if (e > worst) {
                worst = e;
                worst_name = t->name;
            }
            compared++;
        }
        free(want);
        free(got);
    }
    char what[200];
    snprintf(what, sizeof what, "%d gradients, worst %.50s", compared, worst_name);
    verdict(worst <= 1e-4 && compared == f.n_tensors, name, what, worst, 1e-4);
    st_close(&f);
}

static void check_case(pesc_backend *b, const char *root, const char *name)
{
    char dir[1024], path[1200];
    snprintf(dir, sizeof dir, "%s/tests/reference/data/%s", root, name);
    snprintf(path, sizeof path, "%s/expected.json", dir);
    json_error_t jerr;
    json_t *expected = json_load_file(path, 0, &jerr);
    json_t *cfg = json_object_get(expected, "config");
    pesc_error err = {{0}};
    model m = {0};
    int32_t *tokens = NULL, *targets = NULL;
    int B = 0, T = 0;
    pesc_options o;
    optim_config oc;
    optimizer opt = {0};
    if (!cfg) {
        printf("FAIL %s: %s: %s\n", name, path, jerr.text);
        failures++;
        return;
    }
    options_from_json(cfg, &o, &oc);
    snprintf(path, sizeof path, "%s/batch.json", dir);
    if (read_batch(path, &tokens, &targets, &B, &T) != 0) {
        printf("FAIL %s: cannot read %s\n", name, path);
        failures++;
        goto out;
    }
    snprintf(path, sizeof path, "%s/trainables.safetensors", dir);
    if (model_load(&m, dir, b, &err) != 0 || model_craft(&m, &o, 1, &err) != 0 ||
        model_load_trainables(&m, path, &err) != 0) {
        printf("FAIL %s: %s\n", name, err.msg);
        failures++;
        goto out;
    }
    /* forward: logits and losses */
    int V = m.config.vocab_size;
    float *logits = malloc((size_t)B * T * V * sizeof *logits);
    double nll;
    long long count;
    if (model_forward(&m, tokens, B, T, &err) == 0 && model_nll(&m, targets, &nll, &count, logits, &err) == 0) {
        json_t *rows = json_object_get(expected, "logits");
        double diff = 0.0, norm = 0.0;
        for (int i = 0; i < B * T; i++)
            for (int v = 0; v < V; v++) {
                double w = json_number_value(json_array_get(json_array_get(
                    json_array_get(rows, (size_t)(i / T)), (size_t)(i % T)), (size_t)v));
                diff += (logits[(size_t)i * V + v] - w) * (logits[(size_t)i * V + v] - w);
                norm += w * w;
            }
        verdict(sqrt(diff / norm) <= 1e-5, name, "logits", sqrt(diff / norm), 1e-5);
        verdict(rel(nll / count, num(expected, "loss")) <= 1e-5, name, "cross-entropy (inference)",
                rel(nll / count, num(expected, "loss")), 1e-5);
    } else {
        printf("FAIL %s: %s\n", name, err.msg);
        failures++;
    }
    free(logits);
    /* backward */
    model_losses losses;
    model_zero_grad(&m);
    if (model_train_step(&m, tokens, targets, NULL, B, T, 1.0f, 0, &losses, &err) != 0) {
        printf("FAIL %s: %s\n", name, err.msg);
        failures++;
        goto out;
    }
    verdict(rel(losses.ce, num(expected, "loss")) <= 1e-5, name, "cross-entropy (training)",
            rel(losses.ce, num(expected, "loss")), 1e-5);
    double want_aux = num(expected, "aux_loss"), want_z = num(expected, "z_loss");
    verdict(want_aux == 0 ? losses.aux == 0 : rel(losses.aux, want_aux) <= 1e-5, name,
            "load-balancing loss", want_aux == 0 ? losses.aux : rel(losses.aux, want_aux), 1e-5);
    verdict(want_z == 0 ? losses.z == 0 : rel(losses.z, want_z) <= 1e-5, name, "z-loss",
            want_z == 0 ? losses.z : rel(losses.z, want_z), 1e-5);
    compare_gradients(&m, dir, name);
    /* 10 AdamW steps on the same batch */
    json_t *steps = json_object_get(expected, "steps");
    if (optim_init(&opt, b, m.n_train, &oc, &err) != 0) {
        printf("FAIL %s: %s\n", name, err.msg);
        failures++;
        goto out;
    }
    double worst = 0.0, norm0 = 0.0;
    for (size_t i = 0; i < json_array_size(steps); i++) {
        model_zero_grad(&m);
        if (model_train_step(&m, tokens, targets, NULL, B, T, 1.0f, 0, &losses, &err) != 0)
            break;
        double total = losses.ce + losses.aux + losses.z;
        double e = rel(total, json_number_value(json_array_get(steps, i)));
        worst = e > worst ? e : worst;
        double norm;
        optim_step(&opt, m.train_block, m.grad_block, optim_lr_at(&oc, (long)i), &norm);
        if (i == 0)
            norm0 = norm;
    }
    char what[64];
    snprintf(what, sizeof what, "total loss over %zu AdamW steps", json_array_size(steps));
    verdict(worst <= 1e-4, name, what, worst, 1e-4);
    verdict(rel(norm0, num(expected, "grad_norm")) <= 1e-4, name, "gradient norm before clipping",
            rel(norm0, num(expected, "grad_norm")), 1e-4);
    /* the sum of every trainable after the steps */
    size_t n_all = 0;
    for (int i = 0; i < m.n_trainables; i++)
        n_all += m.trainables[i].n;
    double sum = 0.0;
    for (int i = 0; i < m.n_trainables; i++) {
        float *host = malloc(m.trainables[i].n * sizeof *host);
        backend_download(b, host, m.trainables[i].data, m.trainables[i].n * sizeof *host);
        for (size_t j = 0; j < m.trainables[i].n; j++)
            sum += fabs(host[j]);
        free(host);
    }
    double want_sum = num(expected, "final_trainables_abs_sum");
    verdict(rel(sum, want_sum) <= 1e-4, name, "sum |trainables| after the steps", rel(sum, want_sum),
            1e-4);
    (void)n_all;
out:
    optim_free(&opt);
    model_free(&m);
    free(tokens);
    free(targets);
    json_decref(expected);
}

int main(void)
{
    const char *root = getenv("top_srcdir");
    pesc_error err;
    pesc_backend *b = backend_new("cpu", &err);
    if (!b) {
        fprintf(stderr, "%s\n", err.msg);
        return 99;
    }
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        check_case(b, root ? root : ".", cases[i]);
    backend_delete(b);
    printf("%d failure%s\n", failures, failures == 1 ? "" : "s");
    return failures ? 1 : 0;
}
