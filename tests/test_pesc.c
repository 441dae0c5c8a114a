/* test_pesc — properties of crafting and training that no reference file pins:
 *   - at step 0 the crafted model's loss equals the dense model's exactly (U = 0, LoRA B = 0);
 *   - steps on the load-balancing loss alone move a router biased to one expert toward balance;
 *   - adapter files round-trip (Camelidae names, metadata) into a fresh, uncrafted model;
 *   - crafting a crafted model again keeps its routers and adapters; merged LoRA keeps the
 *     logits;
 *   - gradient accumulation: two half-scaled micro-batches give one batch's gradient;
 *   - the learning-rate schedules follow Hugging Face's formulas;
 *   - activation recomputation gives bit-identical losses, gradients and routing statistics
 *     (with dropout, LoRA everywhere and a packed batch) in less activation memory.
 * Exit 0 pass, 1 fail. */
#define _GNU_SOURCE   /* qsort_r: the reference sampler */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "model.h"
#include "optim.h"
#include "safetensors.h"
#include "sample.h"
#include "check.h"

static pesc_backend *be;

static void die(const pesc_error *err)
{
    printf("FAIL %s\n", err->msg);
    exit(1);
}

/* Mean next-token loss over a few fixed sequences. */
static double dataset_loss(model *m)
{
    static const int32_t ids[3][12] = {{1, 5, 9, 2, 33, 17, 4, 60, 12, 3, 8, 41},
                                       {7, 7, 7, 20, 21, 22, 23, 1, 0, 5, 63, 2},
                                       {50, 40, 30, 20, 10, 0, 11, 22, 33, 44, 55, 62}};
    double total = 0.0;
    long long count = 0;
    pesc_error err;
    for (int r = 0; r < 3; r++) {
        int32_t targets[12];
        double nll;
        long long n;
        model_shift_targets(targets, ids[r], NULL, 12);
        if (model_forward(m, ids[r], 1, 12, &err) != 0 || model_nll(m, targets, &nll, &n, NULL, &err))
            die(&err);
        total += nll;
        count += n;
    }
    return total / (double)count;
}

static void test_step0_equality(const char *root)
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/tests/reference/data/llama-gqa-f32", root);
    model m;
    pesc_error err;
    if (model_load(&m, dir, be, &err) != 0)
        die(&err);
    double dense = dataset_loss(&m);
    pesc_options o;
    pesc_options_default(&o);
    o.adapter_dim = 16;
    o.lora_rank = 4;
    if (model_craft(&m, &o, 7, &err) != 0)
        die(&err);
    double crafted = dataset_loss(&m);
    REPORT(crafted == dense, "step 0: crafted loss %.9g == dense loss %.9g (E 8, k 2, LoRA 4)",
           crafted, dense);
    model_free(&m);
}

/* A one-layer random model whose tokens all carry a large positive channel 0, and a router
 * that sends everything to expert 0 through it. */
static void biased_model(model *m, int E, int K)
{
    hf_config c = {.vocab_size = 32, .hidden_size = 16, .intermediate_size = 24, .n_layers = 1,
                   .n_heads = 2, .n_kv_heads = 2, .head_dim = 8, .rms_norm_eps = 1e-5,
                   .rope_theta = 10000.0};
    pesc_error err;
    if (model_init_random(m, &c, be, 3, &err) != 0)
        die(&err);
    float embed[32 * 16];
    backend_download(be, embed, m->embed, sizeof embed);
    for (int v = 0; v < 32; v++)
        embed[v * 16] = 3.0f;
    backend_upload(be, m->embed, embed, sizeof embed);
    pesc_options o;
    pesc_options_default(&o);
    o.experts = E;
    o.top_k = K;
    o.adapter_dim = 4;
    o.adapter_dropout = 0.0f;
    o.aux_coef = 1.0f;
    if (model_craft(m, &o, 3, &err) != 0)
        die(&err);
    float router[8 * 16] = {0};
    backend_download(be, router, m->pesc_layers[0].router, (size_t)E * 16 * sizeof(float));
    router[0] = 4.0f;
    backend_upload(be, m->pesc_layers[0].router, router, (size_t)E * 16 * sizeof(float));
}

static double imbalance(const model *m)
{
    int E = m->pesc.experts, most = 0, total = 0;
    for (int e = 0; e < E; e++) {
        most = m->routing.counts[e] > most ? m->routing.counts[e] : most;
        total += m->routing.counts[e];
    }
    return most / ((double)total / E);
}

static void test_aux_balances(void)
{
    model m;
    biased_model(&m, 4, 1);
    int32_t tokens[64], targets[64];
    for (int i = 0; i < 64; i++) {
        tokens[i] = (i * 7 + 3) % 32;
        targets[i] = -100;   /* no cross-entropy: the aux loss alone */
    }
    optim_config oc;
    optim_config_default(&oc);
    oc.lr = 0.05f;
    oc.clip = 0.0f;
    optimizer opt;
    pesc_error err;
    model_losses losses;
    if (optim_init(&opt, be, m.n_train, &oc, &err) != 0)
        die(&err);
    double first = 0.0, first_aux = 0.0;
    for (int step = 0; step < 100; step++) {
        model_zero_grad(&m);
        if (model_train_step(&m, tokens, targets, NULL, 4, 16, 1.0f, 0, &losses, &err) != 0)
            die(&err);
        if (step == 0) {
            first = imbalance(&m);
            first_aux = losses.aux;
        }
        optim_step(&opt, m.train_block, m.grad_block, oc.lr, NULL);
    }
    double last = imbalance(&m);
    REPORT(first > 3.5 && last < 0.8 * first && losses.aux < first_aux,
           "aux loss alone: max/mean load %.2f -> %.2f, aux %.4f -> %.4f over 100 steps", first,
           last, first_aux, losses.aux);
    optim_free(&opt);
    model_free(&m);
}

static void test_roundtrip(const char *root)
{
    char dir[1024], path[1200];
    snprintf(dir, sizeof dir, "%s/tests/reference/data/qwen2-bias-f32", root);
    snprintf(path, sizeof path, "%s/pesc-adapters-%d.safetensors",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)getpid());
    model a, b;
    pesc_error err;
    pesc_options o;
    pesc_options_default(&o);
    o.experts = 4;
    o.adapter_dim = 8;
    o.adapter_scale = 0.5f;
    o.lora_rank = 2;
    o.lora_targets = (1u << LORA_Q) | (1u << LORA_DOWN);
    if (model_load(&a, dir, be, &err) != 0 || model_craft(&a, &o, 11, &err) != 0)
        die(&err);
    /* give every trainable a value, so a missed tensor shows */
    float *host = malloc(a.n_train * sizeof *host);
    for (size_t i = 0; i < a.n_train; i++)
        host[i] = (float)sin((double)i * 0.37) * 0.2f;
    backend_upload(be, a.train_block, host, a.n_train * sizeof *host);
    free(host);
    double before = dataset_loss(&a);
    if (model_save_trainables(&a, path, &err) != 0 || model_load(&b, dir, be, &err) != 0 ||
        model_load_trainables(&b, path, &err) != 0)
        die(&err);
    double after = dataset_loss(&b);
    REPORT(after == before && b.pesc.experts == 4 && b.pesc.top_k == 2 && b.pesc.lora_rank == 2 &&
           b.pesc.lora_targets == o.lora_targets && b.pesc.adapter_scale == 0.5f,
           "adapter file round trip: loss %.9g == %.9g, crafting restored from metadata", after,
           before);
    st_file f = {0};
    int named = st_open(&f, path, &err) == 0 &&
                st_find(&f, "model.layers.1.mlp.moe_adapter.experts.expert_3.adapter_up.weight") &&
                st_find(&f, "model.layers.0.mlp.moe_adapter.router.weight") &&
                st_find(&f, "model.layers.0.self_attn.q_proj.lora_A.weight") &&
                st_meta(&f, "num_experts") && strcmp(st_meta(&f, "num_experts"), "4") == 0 &&
                strcmp(st_meta(&f, "moe_scaling"), "0.5") == 0 && strcmp(st_meta(&f, "topk"), "2") == 0 &&
                strcmp(st_meta(&f, "adapter_dim"), "8") == 0;
    REPORT(named, "adapter file carries Camelidae names and string metadata");
    st_close(&f);
    /* a file from another crafting is refused with a message naming it */
    model c;
    pesc_options other = o;
    other.experts = 8;
    if (model_load(&c, dir, be, &err) != 0 || model_craft(&c, &other, 1, &err) != 0)
        die(&err);
    int refused = model_load_trainables(&c, path, &err) != 0 && strstr(err.msg, path);
    REPORT(refused, "mismatched crafting refused: %s", err.msg);
    unlink(path);
    model_free(&a);
    model_free(&b);
    model_free(&c);
}

/* Every trainable gets a value (LoRA B and adapter_up too), so nothing is zero by chance. */
/* Every trainable set to a sine wave of the given frequency (non-zero, so adapters and LoRA do
 * real work). */
static void fill_trainables(model *m, double frequency)
{
    float *host = malloc(m->n_train * sizeof *host);
    for (size_t i = 0; i < m->n_train; i++)
        host[i] = (float)sin((double)i * frequency) * 0.2f;
    backend_upload(be, m->train_block, host, m->n_train * sizeof *host);
    free(host);
}

/* One of the reference models (tests/reference/data/NAME) crafted with o, its trainables
 * filled as fill_trainables does. */
static void crafted_reference(model *m, const char *root, const char *name, const pesc_options *o,
                              uint64_t seed, double frequency)
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/tests/reference/data/%s", root, name);
    pesc_error err;
    if (model_load(m, dir, be, &err) != 0 || model_craft(m, o, seed, &err) != 0)
        die(&err);
    fill_trainables(m, frequency);
}

/* The logits (12 x V) of one fixed sequence. */
static float *sequence_logits(model *m)
{
    static const int32_t ids[12] = {1, 5, 9, 2, 33, 17, 4, 60, 12, 3, 8, 41};
    int32_t targets[12];
    model_shift_targets(targets, ids, NULL, 12);
    float *logits = malloc(12 * (size_t)m->config.vocab_size * sizeof *logits);
    double nll;
    long long n;
    pesc_error err;
    if (model_forward(m, ids, 1, 12, &err) != 0 || model_nll(m, targets, &nll, &n, logits, &err))
        die(&err);
    return logits;
}

/* Crafting a crafted model again keeps routers and adapters (new LoRA starts at B = 0); merging
 * LoRA into the weights keeps the function and leaves routers and adapters as they were. */
static void test_recraft_and_merge(const char *root)
{
    model m;
    pesc_error err;
    pesc_options o;
    pesc_options_default(&o);
    o.experts = 4;
    o.adapter_dim = 8;
    crafted_reference(&m, root, "qwen2-bias-f32", &o, 11, 0.37);
    double before = dataset_loss(&m);
    float router[4];
    backend_download(be, router, m.pesc_layers[1].router, sizeof router);
    o.lora_rank = 2;
    o.lora_alpha = 8.0f;
    if (model_craft(&m, &o, 5, &err) != 0)
        die(&err);
    double after = dataset_loss(&m);
    float router_after[4];
    backend_download(be, router_after, m.pesc_layers[1].router, sizeof router_after);
    REPORT(after == before && m.pesc.lora_rank == 2 &&
           memcmp(router, router_after, sizeof router) == 0,
           "crafting again with LoRA keeps routers and adapters: loss %.9g == %.9g", after, before);
    o.experts = 8;
    REPORT(model_craft(&m, &o, 5, &err) != 0 && strstr(err.msg, "crafted with 4 experts"),
           "crafting again with other experts refused: %s", err.msg);

    /* LoRA with values, merged */
    fill_trainables(&m, 0.37);
    int V = m.config.vocab_size;
    float *with_lora = sequence_logits(&m), wq[8], wq_merged[8];
    backend_download(be, wq, m.layers[0].wq, sizeof wq);
    backend_download(be, router, m.pesc_layers[1].router, sizeof router);
    int lora_tensors = m.n_trainables;
    if (model_merge_lora(&m, &err) != 0)
        die(&err);
    float *merged = sequence_logits(&m);
    backend_download(be, wq_merged, m.layers[0].wq, sizeof wq_merged);
    backend_download(be, router_after, m.pesc_layers[1].router, sizeof router_after);
    double diff = 0.0, moved = 0.0;
    for (int i = 0; i < 12 * V; i++)
        diff = fmax(diff, fabs((double)merged[i] - with_lora[i]));
    for (int i = 0; i < 8; i++)
        moved = fmax(moved, fabs((double)wq_merged[i] - wq[i]));
    REPORT(diff < 1e-5 && moved > 1e-3 && m.pesc.lora_rank == 0 &&
           m.n_trainables == 2 * (1 + 2 * 4) && lora_tensors > m.n_trainables &&
           memcmp(router, router_after, sizeof router) == 0,
           "LoRA merged into the weights (q_proj moved by %.3g): logits within %.3g of the "
           "unmerged model, routers kept, no LoRA left", moved, diff);
    free(with_lora);
    free(merged);
    model_free(&m);
}

/* |got - want| / |want| over n values; NaN where want is all zeros (no comparison holds) */
static double normalized_error(const float *got, const float *want, size_t n)
{
    double diff = 0.0, norm = 0.0;
    for (size_t i = 0; i < n; i++) {
        diff += ((double)got[i] - want[i]) * ((double)got[i] - want[i]);
        norm += (double)want[i] * want[i];
    }
    return norm > 0 ? sqrt(diff / norm) : NAN;
}

static void test_accumulation(void)
{
    model m;
    biased_model(&m, 4, 2);
    m.pesc.aux_coef = 0.01f;
    int32_t tokens[32], targets[32];
    for (int i = 0; i < 32; i++)
        tokens[i] = (i * 5 + 1) % 32;
    for (int b = 0; b < 2; b++)
        model_shift_targets(targets + 16 * b, tokens + 16 * b, NULL, 16);
    memcpy(tokens + 16, tokens, 16 * sizeof *tokens);   /* two identical sequences */
    memcpy(targets + 16, targets, 16 * sizeof *targets);
    pesc_error err;
    float *whole = malloc(m.n_train * sizeof *whole), *parts = malloc(m.n_train * sizeof *parts);
    model_zero_grad(&m);
    if (model_train_step(&m, tokens, targets, NULL, 2, 16, 1.0f, 0, NULL, &err) != 0)
        die(&err);
    backend_download(be, whole, m.grad_block, m.n_train * sizeof *whole);
    model_zero_grad(&m);
    for (int i = 0; i < 2; i++)
        if (model_train_step(&m, tokens, targets, NULL, 1, 16, 0.5f, 0, NULL, &err) != 0)
            die(&err);
    backend_download(be, parts, m.grad_block, m.n_train * sizeof *parts);
    double error = normalized_error(parts, whole, m.n_train);
    REPORT(error < 1e-5,
           "gradient accumulation: 2 x 0.5 micro-batches == 1 batch (normalized error %.1e)",
           error);
    free(whole);
    free(parts);
    model_free(&m);
}

/* The head in slices (a vocabulary past 65536 takes 256 rows of logits at a time): two rows of
 * 200 tokens, 400 in slices of 256 and 144, against each row alone in one slice; every weight
 * training, the head's and the embedding's gradients included. */
static void test_head_slices(void)
{
    enum { V = 70000, T = 200 };
    hf_config c = {.vocab_size = V, .hidden_size = 16, .intermediate_size = 24, .n_layers = 1,
                   .n_heads = 2, .n_kv_heads = 1, .head_dim = 8, .rms_norm_eps = 1e-5,
                   .rope_theta = 10000.0};
    model m;
    pesc_error err;
    pesc_options o;
    pesc_options_default(&o);
    o.mode = TRAIN_FULL;
    if (model_init_random(&m, &c, be, 7, &err) != 0 || model_craft(&m, &o, 7, &err) != 0)
        die(&err);
    int32_t *tokens = malloc(2 * T * sizeof *tokens), *targets = malloc(2 * T * sizeof *targets);
    for (int i = 0; i < 2 * T; i++)
        tokens[i] = (int32_t)(((uint64_t)i * 2654435761u + 17) % V);
    for (int b = 0; b < 2; b++)
        model_shift_targets(targets + T * b, tokens + T * b, NULL, T);
    float *whole = malloc(m.n_train * sizeof *whole), *parts = malloc(m.n_train * sizeof *parts);
    model_losses batch, row[2];
    model_zero_grad(&m);
    if (model_train_step(&m, tokens, targets, NULL, 2, T, 1.0f, 0, &batch, &err) != 0)
        die(&err);
    int sliced = m.act.logit_rows < 2 * T;
    backend_download(be, whole, m.grad_block, m.n_train * sizeof *whole);
    model_zero_grad(&m);
    for (int b = 0; b < 2; b++)
        if (model_train_step(&m, tokens + T * b, targets + T * b, NULL, 1, T, 0.5f, 0, &row[b],
                             &err) != 0)
            die(&err);
    backend_download(be, parts, m.grad_block, m.n_train * sizeof *parts);
    double error = normalized_error(parts, whole, m.n_train);
    double loss_err = fabs(batch.ce - (row[0].ce + row[1].ce) / 2) / batch.ce;
    REPORT(sliced && error < 1e-5 && loss_err < 1e-6,
           "the head in slices of %d rows: the loss (%.1e) and every gradient (normalized error "
           "%.1e) of each row alone", m.act.logit_rows, loss_err, error);
    free(tokens);
    free(targets);
    free(whole);
    free(parts);
    model_free(&m);
}

/* A step without dropout on a model crafted with it: the same gradient before and after a step
 * with dropout (the backward once multiplied by the masks the forward had not applied: a
 * second layer and LoRA are what take the gradient through the first layer's adapters). */
static void test_dropout_off(void)
{
    hf_config c = {.vocab_size = 32, .hidden_size = 16, .intermediate_size = 24, .n_layers = 2,
                   .n_heads = 2, .n_kv_heads = 2, .head_dim = 8, .rms_norm_eps = 1e-5,
                   .rope_theta = 10000.0};
    pesc_error err;
    model m;
    pesc_options o;
    pesc_options_default(&o);
    o.experts = 4;
    o.top_k = 2;
    o.adapter_dim = 4;
    o.adapter_dropout = 0.5f;
    o.lora_rank = 2;
    if (model_init_random(&m, &c, be, 3, &err) != 0 || model_craft(&m, &o, 3, &err) != 0)
        die(&err);
    int32_t tokens[32], targets[32];
    for (int i = 0; i < 32; i++)
        tokens[i] = (i * 5 + 1) % 32;
    for (int b = 0; b < 2; b++)
        model_shift_targets(targets + 16 * b, tokens + 16 * b, NULL, 16);
    float *want = malloc(m.n_train * sizeof *want), *got = malloc(m.n_train * sizeof *got);
    /* the adapters' up projections and LoRA's B start at zero, and so would the gradients
     * through them */
    uint64_t state = 5;
    for (size_t i = 0; i < m.n_train; i++) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        want[i] = (float)((double)(state >> 11) / 9007199254740992.0 - 0.5) * 0.5f;
    }
    backend_upload(be, m.train_block, want, m.n_train * sizeof *want);
    int dropout[] = {0, 1, 0};
    for (int k = 0; k < 3; k++) {
        model_zero_grad(&m);
        if (model_train_step(&m, tokens, targets, NULL, 2, 16, 1.0f, dropout[k], NULL, &err) != 0)
            die(&err);
        backend_download(be, k == 0 ? want : got, m.grad_block, m.n_train * sizeof *got);
    }
    double error = normalized_error(got, want, m.n_train);
    REPORT(error == 0.0,
           "a step without dropout: the same gradient before and after one with (difference %.1e)",
           error);
    free(want);
    free(got);
    model_free(&m);
}

/* Batched generation: three sequences in slots of one cache, prompts of 4, 6 and 9 tokens (the
 * first alone, the others in one padded pass into slots out of order, one of them taken
 * from another sequence), then a token a step for each still going (the
 * second stops after 5 steps): each slot's logits are those of a full forward over its own
 * tokens. Then the one-sequence cache again. */
/* The slots of S sequences (ids, T a row) not yet at their end: each one's slot and its next
 * token, k of them. */
static int step_slots(int S, int T, const int *len, const int *end, const int32_t *ids,
                      int *slots, int32_t *next)
{
    int k = 0;
    for (int s = 0; s < S; s++)
        if (len[s] < end[s]) {
            slots[k] = s;
            next[k++] = ids[s * T + len[s]];
        }
    return k;
}

static void test_cache_slots(model *m, const char *dir, const char *what)
{
    enum { S = 3, T = 16 };
    int V = m->config.vocab_size, prompt[S] = {4, 6, 9}, end[S] = {T, 11, T - 1};
    int32_t ids[S * T], targets[S * T];
    for (int i = 0; i < S * T; i++)
        ids[i] = (i % T * 13 + 5 + 7 * (i / T)) % V;
    float *full = malloc((size_t)S * T * V * sizeof *full);
    float *got = malloc((size_t)S * V * sizeof *got);
    double nll;
    long long n;
    pesc_error err;
    model_shift_targets(targets, ids, NULL, S * T);
    if (model_forward(m, ids, S, T, &err) != 0 || model_nll(m, targets, &nll, &n, full, &err) ||
        model_cache_slots(m, S, 20, &err) != 0)
        die(&err);
    /* the first prompt alone, the other two at once (rows of 9, the 6 padded), into slots 2
     * and 1 in that order, slot 2 holding another sequence before (a slot freed and taken
     * again: answering's continuous batching) */
    int32_t rows[2 * 9], other = 5;
    memcpy(rows, ids + 2 * T, 9 * sizeof *rows);
    memcpy(rows + 9, ids + T, 9 * sizeof *rows);
    rows[9 + 6] = rows[9 + 7] = rows[9 + 8] = 3;
    float *swapped = malloc(2 * (size_t)V * sizeof *swapped);
    if (model_decode_prompts(m, (const int[]){2}, ids + T, (const int[]){7}, 1, 7, got, &err) ||
        model_decode_step(m, (const int[]){2}, &other, 1, got, &err) != 0 ||
        model_decode_prompts(m, (const int[]){0}, ids, prompt, 1, prompt[0], got, &err) != 0 ||
        model_decode_prompts(m, (const int[]){2, 1}, rows, (const int[]){prompt[2], prompt[1]},
                             2, 9, swapped, &err) != 0)
        die(&err);
    memcpy(got + V, swapped + V, (size_t)V * sizeof *got);
    memcpy(got + 2 * (size_t)V, swapped, (size_t)V * sizeof *got);
    free(swapped);
    double worst = 0.0;
    for (int s = 0; s < S; s++) {
        const float *want = full + ((size_t)s * T + prompt[s] - 1) * V;
        for (int v = 0; v < V; v++)
            worst = fmax(worst, fabs(got[(size_t)s * V + v] - want[v]));
    }
    int len[S] = {prompt[0], prompt[1], prompt[2]}, steps = 0;
    for (;;) {
        int slots[S], k;
        int32_t next[S];
        if ((k = step_slots(S, T, len, end, ids, slots, next)) == 0)
            break;
        if (model_decode_step(m, slots, next, k, got, &err) != 0)
            die(&err);
        steps++;
        for (int i = 0; i < k; i++) {
            int s = slots[i];
            const float *want = full + ((size_t)s * T + len[s]) * V;
            for (int v = 0; v < V; v++)
                worst = fmax(worst, fabs(got[(size_t)i * V + v] - want[v]));
            len[s]++;
        }
    }
    int refused = model_decode_step(m, (const int[]){1, 1}, ids, 2, got, &err) != 0 &&
                  model_decode(m, ids, 2, got, NULL, &err) != 0;
    REPORT(worst < 1e-4 && steps == 12 && refused && m->slot_len[1] == 11,
           "slots of one cache, decoded a step for several at once, equal their full forwards "
           "(%s%s): max |diff| %.1e after %d steps", dir, what, worst, steps);
    /* the same steps again, the backend's greedy picks (model_decode_step_greedy): each the
     * first largest of its full forward's (capped) logits */
    int wrong = 0, picked = 0;
    if (model_cache_slots(m, S, 20, &err) != 0 ||
        model_decode_prompts(m, (const int[]){0}, ids, prompt, 1, prompt[0], got, &err) != 0 ||
        model_decode_prompts(m, (const int[]){2, 1}, rows, (const int[]){prompt[2], prompt[1]},
                             2, 9, got + V, &err) != 0)
        die(&err);
    for (int s = 0; s < S; s++)
        len[s] = prompt[s];
    for (;;) {
        int slots[S], k;
        int32_t next[S], picks[S];
        if ((k = step_slots(S, T, len, end, ids, slots, next)) == 0)
            break;
        if (model_decode_step_greedy(m, slots, next, k, picks, &err) != 0)
            die(&err);
        for (int i = 0; i < k; i++) {
            int s = slots[i], best = 0;
            const float *want = full + ((size_t)s * T + len[s]) * V;
            for (int v = 1; v < V; v++)
                best = want[v] > want[best] ? v : best;
            wrong += picks[i] != best;
            picked++;
            len[s]++;
        }
    }
    REPORT(wrong == 0 && picked == 23, "greedy picks on the backend equal the full forward's "
           "argmax (%s%s): %d of %d differ", dir, what, wrong, picked);
    /* one sequence again */
    worst = 0.0;
    if (model_cache_reset(m, 8, &err) != 0 || model_decode(m, ids + T, 6, got, NULL, &err) != 0)
        die(&err);
    for (int v = 0; v < V; v++)
        worst = fmax(worst, fabs(got[v] - full[((size_t)T + 5) * V + v]));
    REPORT(worst < 1e-4, "after slots, one sequence's cache again (%s%s): max |diff| %.1e", dir,
           what, worst);
    free(full);
    free(got);
}

/* Prompts, then slots, on either side of longrope's original context (32 in this model) in
 * one pass: each gets the logits model_decode gives it alone, short factors below, long ones
 * past it (a pass takes one table; the pass splits rather than give the short one the long
 * factors). */
static void test_slots_longrope(const char *root)
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/tests/reference/data/phi3-longrope-f32", root);
    model m;
    pesc_error err;
    if (model_load(&m, dir, be, &err) != 0)
        die(&err);
    int V = m.config.vocab_size, len[2] = {34, 9};
    int32_t ids[2][40];
    for (int s = 0; s < 2; s++)
        for (int i = 0; i < 40; i++)
            ids[s][i] = (i * 7 + 3 + 11 * s) % V;
    float *alone = malloc(2 * (size_t)V * sizeof *alone);
    float *both = malloc(2 * (size_t)V * sizeof *both);
    /* the prompts in one padded pass (rows of 34) first, each as alone */
    int32_t rows[2 * 34] = {0};
    memcpy(rows, ids[0], 34 * sizeof *rows);
    memcpy(rows + 34, ids[1], 9 * sizeof *rows);
    if (model_cache_slots(&m, 2, 40, &err) != 0 ||
        model_decode_prompts(&m, (const int[]){0, 1}, rows, len, 2, 34, both, &err) != 0)
        die(&err);
    for (int s = 0; s < 2; s++)
        if (model_cache_reset(&m, 40, &err) != 0 ||
            model_decode(&m, ids[s], len[s], alone + (size_t)s * V, NULL, &err) != 0)
            die(&err);
    double prompts = 0.0;
    for (size_t i = 0; i < 2 * (size_t)V; i++)
        prompts = fmax(prompts, fabs(both[i] - alone[i]));
    REPORT(prompts < 1e-4, "prompts of 34 and 9 tokens in one pass (longrope's original context "
           "32) equal each decoded alone: max |diff| %.1e", prompts);
    for (int s = 0; s < 2; s++)
        if (model_cache_reset(&m, 40, &err) != 0 ||
            model_decode(&m, ids[s], len[s], alone + (size_t)s * V, NULL, &err) != 0 ||
            model_decode(&m, ids[s] + len[s], 1, alone + (size_t)s * V, NULL, &err) != 0)
            die(&err);
    int slots[2] = {0, 1};
    int32_t next[2] = {ids[0][len[0]], ids[1][len[1]]};
    if (model_cache_slots(&m, 2, 40, &err) != 0 ||
        model_decode_prompts(&m, slots, ids[0], len, 1, len[0], both, &err) != 0 ||
        model_decode_prompts(&m, slots + 1, ids[1], len + 1, 1, len[1], both + V, &err) != 0 ||
        model_decode_step(&m, slots, next, 2, both, &err) != 0)
        die(&err);
    double worst = 0.0;
    for (size_t i = 0; i < 2 * (size_t)V; i++)
        worst = fmax(worst, fabs(both[i] - alone[i]));
    REPORT(worst < 1e-4, "a step of slots at 35 and 10 tokens (longrope's original context 32) "
           "equals each decoded alone: max |diff| %.1e", worst);
    free(alone);
    free(both);
    model_free(&m);
}

/* Generation with the KV cache: logits after a prompt and after each appended token equal
 * those of a full forward over the same tokens (dense and crafted, with a sliding window). */
static void test_kv_cache(const char *root)
{
    static const char *const dirs[] = {"mistral-sharded-f16", "llama-gqa-f32", "smollm3-nope-f32",
                                       "granite-mult-f32", "gemma3-f32", "olmo2-f32",
                                       "gemma2-f32"};
    static const char *const what[] = {", window 8", ", crafted", ", a NoPE layer",
                                       ", Granite's multipliers", ", Gemma 3", ", OLMo 2",
                                       ", Gemma 2's softcaps"};
    for (int d = 0; d < (int)(sizeof dirs / sizeof *dirs); d++) {
        char dir[1024];
        snprintf(dir, sizeof dir, "%s/tests/reference/data/%s", root, dirs[d]);
        model m;
        pesc_error err;
        if (model_load(&m, dir, be, &err) != 0)
            die(&err);
        pesc_options o;
        pesc_options_default(&o);
        if (d == 1 && model_craft(&m, &o, 5, &err) != 0)
            die(&err);
        if (d == 1) {   /* non-zero adapters, so routing matters */
            float *host = malloc(m.n_train * sizeof *host);
            for (size_t i = 0; i < m.n_train; i++)
                host[i] = (float)cos((double)i * 0.11) * 0.3f;
            backend_upload(be, m.train_block, host, m.n_train * sizeof *host);
            free(host);
        }
        int V = m.config.vocab_size, T = 20;
        int32_t ids[20];
        for (int i = 0; i < T; i++)
            ids[i] = (i * 13 + 5) % V;
        float *full = malloc((size_t)T * V * sizeof *full), *step = malloc((size_t)V * sizeof *step);
        int32_t targets[20];
        double nll;
        long long n;
        model_shift_targets(targets, ids, NULL, T);
        if (model_forward(&m, ids, 1, T, &err) != 0 || model_nll(&m, targets, &nll, &n, full, &err) ||
            model_cache_reset(&m, 32, &err) != 0)
            die(&err);
        double worst = 0.0;
        for (int t = 0; t < T; t += t < 6 ? 6 : 1) {   /* a 6-token prompt, then one at a time */
            int len = t < 6 ? 6 : 1;
            if (model_decode(&m, ids + t, len, step, NULL, &err) != 0)
                die(&err);
            int last = t + len - 1;
            for (int v = 0; v < V; v++)
                worst = fmax(worst, fabs(step[v] - full[(size_t)last * V + v]));
        }
        REPORT(worst < 1e-4, "KV-cache decoding equals the full forward (%s%s): max |diff| %.1e",
               dirs[d], what[d], worst);
        /* a conversation's next turn: the first 9 tokens kept in a cache grown past its 32
         * (the rows move), the rest decoded at once, as pesc generate --chat does */
        if (model_cache_keep(&m, 9, 48, &err) != 0 ||
            model_decode(&m, ids + 9, T - 9, step, NULL, &err) != 0)
            die(&err);
        worst = 0.0;
        for (int v = 0; v < V; v++)
            worst = fmax(worst, fabs(step[v] - full[(size_t)(T - 1) * V + v]));
        REPORT(worst < 1e-4 && m.cache_len == T && m.cache_capacity == 48,
               "a kept prefix, the cache grown, then the rest (%s%s): max |diff| %.1e",
               dirs[d], what[d], worst);
        test_cache_slots(&m, dirs[d], what[d]);
        free(full);
        free(step);
        model_free(&m);
    }
}

static void test_sampler(void)
{
    float logits[4] = {0.0f, (float)log(3.0), -30.0f, -30.0f};
    sampler s;
    sampler_init(&s, 0.0f, 0, 1.0f, 1);
    int greedy = sampler_next(&s, logits, 4);
    sampler_free(&s);
    sampler_init(&s, 1.0f, 0, 1.0f, 9);
    int ones = 0;
    for (int i = 0; i < 20000; i++)
        ones += sampler_next(&s, logits, 4) == 1;
    sampler_free(&s);
    float p[3] = {(float)log(0.6), (float)log(0.3), (float)log(0.1)};
    sampler_init(&s, 1.0f, 0, 0.5f, 3);
    int only_first = 1;
    for (int i = 0; i < 2000; i++)
        only_first &= sampler_next(&s, p, 3) == 0;
    sampler_free(&s);
    sampler_init(&s, 1.0f, 2, 1.0f, 4);
    int never_third = 1;
    for (int i = 0; i < 2000; i++)
        never_third &= sampler_next(&s, p, 3) != 2;
    sampler_free(&s);
    REPORT(greedy == 1 && fabs(ones / 20000.0 - 0.75) < 0.02 && only_first && never_third,
           "sampler: greedy, temperature 1 frequency %.3f (0.75), top-p 0.5, top-k 2",
           ones / 20000.0);
    /* logits with no finite largest value (a model that overflows) give no token, -1, in
     * every mode: greedy once picked id 0 of all-NaN logits, sampling garbage */
    float nan_row[3] = {NAN, NAN, NAN}, inf_row[3] = {1.0f, INFINITY, NAN};
    static const struct { float temperature; int top_k; float top_p; } modes[] = {
        {0.0f, 0, 1.0f}, {1.0f, 0, 1.0f}, {0.7f, 2, 1.0f}, {0.7f, 0, 0.9f}};
    int refused = 0;
    for (size_t i = 0; i < sizeof modes / sizeof *modes; i++) {
        sampler_init(&s, modes[i].temperature, modes[i].top_k, modes[i].top_p, 5);
        refused += sampler_next(&s, nan_row, 3) == -1 && sampler_next(&s, inf_row, 3) == -1;
        sampler_free(&s);
    }
    float some_nan[3] = {NAN, 2.0f, 1.0f};
    sampler_init(&s, 0.0f, 0, 1.0f, 1);
    int past_nan = sampler_next(&s, some_nan, 3);
    sampler_free(&s);
    REPORT(refused == 4 && past_nan == 1, "sampler: NaN or infinite logits give -1 in all %d "
           "modes (%d did); a NaN among finite logits is passed over (%d)", 4, refused,
           past_nan);
}

/* The sampler as it was, sorting every id for top-k and top-p: what sampler_next's sort of a
 * prefix must give, draw for draw. */
static int by_probability_ref(const void *a, const void *b, void *probs)
{
    const float *p = probs;
    float x = p[*(const int *)a], y = p[*(const int *)b];
    if (x != y)
        return x < y ? 1 : -1;
    return *(const int *)a - *(const int *)b;
}

static int sampler_next_ref(const sampler *cfg, uint64_t *rng, const float *logits, int V,
                            float *probs, int *order)
{
    int best = 0;
    for (int i = 1; i < V; i++)
        best = logits[i] > logits[best] ? i : best;
    double sum = 0.0;
    for (int i = 0; i < V; i++) {
        probs[i] = expf((logits[i] - logits[best]) / cfg->temperature);
        sum += probs[i];
        order[i] = i;
    }
    int keep = V;
    if ((cfg->top_k > 0 && cfg->top_k < V) || cfg->top_p < 1.0f) {
        qsort_r(order, (size_t)V, sizeof *order, by_probability_ref, probs);
        if (cfg->top_k > 0 && cfg->top_k < keep)
            keep = cfg->top_k;
        double mass = 0.0;
        for (int i = 0; cfg->top_p < 1.0f && i < keep; i++)
            if ((mass += probs[order[i]] / sum) >= cfg->top_p) {
                keep = i + 1;
                break;
            }
        sum = 0.0;
        for (int i = 0; i < keep; i++)
            sum += probs[order[i]];
    }
    double r = pesc_splitmix_uniform(rng) * sum, acc = 0.0;
    for (int i = 0; i < keep; i++)
        if (r < (acc += probs[order[i]]))
            return order[i];
    return order[keep - 1];
}

/* top-k and top-p sort only the likeliest ids (those of probability 1e-4 of the largest and
 * more, fewer where they cover the cut): the draws are the full sort's, over vocabularies of
 * 7 to 32000, sharp and flat logits, ties, and cuts at every shape. */
static void test_sampler_prefix(void)
{
    static const int vocab[] = {7, 1000, 32000};
    static const float spread[] = {0.5f, 4.0f, 12.0f}, temps[] = {0.7f, 1.0f, 2.5f};
    static const int top_ks[] = {0, 1, 5, 50, 6999};
    static const float top_ps[] = {1.0f, 0.3f, 0.9f, 0.999f};
    float *logits = malloc(32000 * sizeof *logits), *probs = malloc(32000 * sizeof *probs);
    int *order = malloc(32000 * sizeof *order), draws = 0, differ = 0;
    uint64_t state = 99;
    for (int v = 0; v < 3; v++)
        for (int sp = 0; sp < 3; sp++)
            for (int c = 0; c < 5 * 4; c++) {
                int V = vocab[v], k = top_ks[c % 5];
                float top_p = top_ps[c / 5], temp = temps[(c + sp) % 3];
                if (k == 0 && top_p >= 1.0f)
                    continue;
                sampler s, ref;
                sampler_init(&s, temp, k, top_p, 1000 + c);
                sampler_init(&ref, temp, k, top_p, 1000 + c);
                for (int round = 0; round < (V > 1000 ? 1 : 20); round++) {
                    for (int i = 0; i < V; i++) {   /* normal-ish, a quarter rounded: ties */
                        double u = pesc_splitmix_uniform(&state) + pesc_splitmix_uniform(&state)
                                   + pesc_splitmix_uniform(&state) - 1.5;
                        logits[i] = (float)(u * spread[sp]);
                        if (i % 4 == 0)
                            logits[i] = roundf(logits[i]);
                    }
                    for (int d = 0; d < (V > 1000 ? 2 : 8); d++, draws++)
                        differ += sampler_next(&s, logits, V) !=
                                  sampler_next_ref(&ref, &ref.rng, logits, V, probs, order);
                }
                sampler_free(&s);
                sampler_free(&ref);
            }
    /* a heavy tail: one id far likelier than each other, the others together likelier than
     * it, so the cut lies below 1e-4 of the largest (the sort takes more ids) */
    int tail = 0;
    for (int i = 0; i < 32000; i++)
        logits[i] = i == 77 ? 0.0f : -10.0f - (float)(i % 3);
    for (int c = 0; c < 2; c++) {
        sampler s, ref;
        sampler_init(&s, 1.0f, c ? 5000 : 0, c ? 1.0f : 0.9f, 5 + c);
        sampler_init(&ref, 1.0f, c ? 5000 : 0, c ? 1.0f : 0.9f, 5 + c);
        for (int d = 0; d < 20; d++, draws++) {
            int id = sampler_next(&s, logits, 32000);
            differ += id != sampler_next_ref(&ref, &ref.rng, logits, 32000, probs, order);
            tail += id != 77;
        }
        sampler_free(&s);
        sampler_free(&ref);
    }
    REPORT(differ == 0 && draws > 2000 && tail >= 5, "sampler: top-k and top-p on the likeliest "
           "ids draw as a sort of them all: %d of %d draws differ (%d of 40 from a heavy tail)",
           differ, draws, tail);
    free(logits);
    free(probs);
    free(order);
}

/* Two documents packed in one row (positions restart, attention stays inside each) train
 * exactly like the same documents in rows of their own, the shorter padded: padding (source
 * -1) is routed nowhere, so the aux and z losses and their gradients are the same too. */
static void test_packing(const char *root)
{
    model m;
    pesc_error err;
    pesc_options o;
    pesc_options_default(&o);
    o.aux_coef = 0.05f;
    o.z_coef = 0.01f;
    o.adapter_dropout = 0.0f;
    crafted_reference(&m, root, "llama-gqa-f32", &o, 2, 0.07);
    enum { A = 7, Bn = 9 };
    int32_t a[A] = {3, 9, 27, 17, 51, 25, 11}, b[Bn] = {2, 4, 8, 16, 32, 0, 63, 5, 40};
    /* packed: one row of 16 */
    int32_t ids[16], targets[16], pos[16], docs[16], src[16];
    memcpy(ids, a, sizeof a);
    memcpy(ids + A, b, sizeof b);
    model_shift_targets(targets, a, NULL, A);
    model_shift_targets(targets + A, b, NULL, Bn);
    for (int i = 0; i < 16; i++) {
        pos[i] = i < A ? i : i - A;
        docs[i] = src[i] = i < A ? 0 : 1;
    }
    model_layout layout = {pos, docs, src};
    float *packed = malloc(m.n_train * sizeof *packed), *apart = malloc(m.n_train * sizeof *apart);
    model_losses lp, la;
    model_zero_grad(&m);
    if (model_train_step(&m, ids, targets, &layout, 1, 16, 1.0f, 0, &lp, &err) != 0)
        die(&err);
    int per_source = m.routing.n_sources == 2 &&
                     m.routing.source_counts[0] + m.routing.source_counts[1] +
                             m.routing.source_counts[2] + m.routing.source_counts[3] > 0;
    backend_download(be, packed, m.grad_block, m.n_train * sizeof *packed);
    long long routed_packed = m.routing.tokens;
    /* apart: two rows of 9, the first padded with ignored targets */
    int32_t ids2[18] = {0}, targets2[18], pos2[18], docs2[18], src2[18];
    memcpy(ids2, a, sizeof a);
    memcpy(ids2 + 9, b, sizeof b);
    for (int i = 0; i < 18; i++) {
        targets2[i] = -100;
        int t = i % 9, pad = i < 9 && t >= A;
        pos2[i] = pad ? 0 : t;
        docs2[i] = src2[i] = pad ? -1 : i / 9;
    }
    model_shift_targets(targets2, a, NULL, A);
    targets2[A - 1] = -100;
    model_shift_targets(targets2 + 9, b, NULL, Bn);
    model_layout layout2 = {pos2, docs2, src2};
    model_zero_grad(&m);
    if (model_train_step(&m, ids2, targets2, &layout2, 2, 9, 1.0f, 0, &la, &err) != 0)
        die(&err);
    backend_download(be, apart, m.grad_block, m.n_train * sizeof *apart);
    double error = normalized_error(packed, apart, m.n_train);
    REPORT(fabs(lp.ce - la.ce) < 1e-5 * la.ce && lp.targets == la.targets && error < 1e-5 &&
               per_source,
           "packing: loss %.7f == %.7f, gradients (error %.1e), per-source routing counted", lp.ce,
           la.ce, error);
    REPORT(lp.aux > 0 && fabs(lp.aux - la.aux) < 1e-6 * lp.aux && fabs(lp.z - la.z) < 1e-6 * lp.z &&
               routed_packed == 16 && m.routing.tokens == 16,
           "padding routed nowhere: aux %.9f == %.9f, z %.9f == %.9f, %lld and %lld tokens routed",
           lp.aux, la.aux, lp.z, la.z, routed_packed, m.routing.tokens);
    free(packed);
    free(apart);
    model_free(&m);
}

/* Two steps of one crafted model; *bytes gets its activation allocation. */
static void recompute_run(const char *root, int recompute, float *grads, model_losses *losses,
                          int *counts, size_t *bytes, size_t *n_train)
{
    model m;
    pesc_error err;
    pesc_options o;
    pesc_options_default(&o);
    o.adapter_dropout = 0.2f;
    o.z_coef = 0.001f;
    o.lora_rank = 4;
    crafted_reference(&m, root, "llama-gqa-f32", &o, 5, 0.13);
    m.recompute = recompute;
    int32_t ids[24], targets[24], pos[24], docs[24], src[24];
    for (int i = 0; i < 24; i++) {
        ids[i] = (i * 11 + 3) % 64;
        pos[i] = i % 12 < 5 ? i % 12 : i % 12 - 5;   /* rows of two documents: 5 + 7 */
        docs[i] = src[i] = i % 12 < 5 ? 0 : 1;
    }
    for (int r = 0; r < 2; r++) {
        model_shift_targets(targets + 12 * r, ids + 12 * r, NULL, 5);
        model_shift_targets(targets + 12 * r + 5, ids + 12 * r + 5, NULL, 7);
    }
    model_layout layout = {pos, docs, src};
    for (int step = 0; step < 2; step++) {
        model_zero_grad(&m);
        if (model_train_step(&m, ids, targets, &layout, 2, 12, 1.0f, 1, &losses[step], &err) != 0)
            die(&err);
    }
    backend_download(be, grads, m.grad_block, m.n_train * sizeof *grads);
    int n = m.config.n_layers * m.pesc.experts;
    memcpy(counts, m.routing.counts, (size_t)(n < 64 ? n : 64) * sizeof *counts);
    *bytes = m.act.bytes;
    *n_train = m.n_train;
    model_free(&m);
}

static void test_recompute(const char *root)
{
    enum { most = 1 << 20 };
    float *kept = calloc(most, sizeof *kept), *again = calloc(most, sizeof *again);
    model_losses lk[2], la[2];
    int ck[64] = {0}, ca[64] = {0};
    size_t bk, ba, nk, na;
    recompute_run(root, 0, kept, lk, ck, &bk, &nk);
    recompute_run(root, 1, again, la, ca, &ba, &na);
    int same = nk == na && nk <= most && memcmp(kept, again, nk * sizeof *kept) == 0 &&
               memcmp(ck, ca, sizeof ck) == 0;
    for (int s = 0; s < 2; s++)
        same = same && lk[s].ce == la[s].ce && lk[s].aux == la[s].aux && lk[s].z == la[s].z;
    double norm = 0.0;
    for (size_t i = 0; i < nk && i < most; i++)
        norm += (double)kept[i] * kept[i];
    REPORT(same && norm > 0 && ba < bk,
           "recompute: losses (%.7f, %.7f), gradients and routing counts bit-identical; "
           "activations %zu -> %zu bytes", la[0].ce, la[1].ce, bk, ba);
    free(kept);
    free(again);
}

static void test_schedules(void)
{
    optim_config c;
    optim_config_default(&c);
    c.lr = 1.0f;
    c.warmup = 10;
    c.total_steps = 110;
    int ok = optim_lr_at(&c, 0) == 0.0 && fabs(optim_lr_at(&c, 5) - 0.5) < 1e-12 &&
             optim_lr_at(&c, 10) == 1.0 && optim_lr_at(&c, 100) == 1.0;
    c.schedule = SCHEDULE_COSINE;
    ok = ok && fabs(optim_lr_at(&c, 60) - 0.5) < 1e-12 && fabs(optim_lr_at(&c, 110)) < 1e-12 &&
         fabs(optim_lr_at(&c, 35) - 0.5 * (1 + cos(M_PI * 0.25))) < 1e-12;
    c.schedule = SCHEDULE_LINEAR;
    ok = ok && fabs(optim_lr_at(&c, 35) - 0.75) < 1e-12 && optim_lr_at(&c, 200) == 0.0 &&
         fabs(optim_lr_at(&c, 3) - 0.3) < 1e-12;
    REPORT(ok, "schedules: constant-with-warmup, cosine and linear as Hugging Face defines them");
}

int main(void)
{
    const char *root = getenv("top_srcdir");
    pesc_error err;
    be = backend_new("cpu", &err);
    if (!be)
        die(&err);
    test_step0_equality(root ? root : ".");
    test_aux_balances();
    test_roundtrip(root ? root : ".");
    test_recraft_and_merge(root ? root : ".");
    test_accumulation();
    test_head_slices();
    test_dropout_off();
    test_schedules();
    test_kv_cache(root ? root : ".");
    test_slots_longrope(root ? root : ".");
    test_sampler();
    test_sampler_prefix();
    test_packing(root ? root : ".");
    test_recompute(root ? root : ".");
    backend_delete(be);
    printf("%d failure%s\n", failures, failures == 1 ? "" : "s");
    return failures ? 1 : 0;
}
