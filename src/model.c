/* model — see model.h. */
#include "model.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

/* ---- weight layout ------------------------------------------------------------------------ */

typedef struct param_spec {
    char name[96];
    float **slot;
    int ndim;
    int64_t shape[2];
} param_spec;

typedef struct param_list {
    param_spec *items;
    int n, cap;
} param_list;

static void add_param(param_list *list, float **slot, int64_t rows, int64_t cols,
                      const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static void add_param(param_list *list, float **slot, int64_t rows, int64_t cols,
                      const char *fmt, ...)
{
    if (list->n == list->cap) {
        list->cap = list->cap ? 2 * list->cap : 64;
        list->items = xrealloc(list->items, (size_t)list->cap * sizeof *list->items);
    }
    param_spec *p = &list->items[list->n++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->name, sizeof p->name, fmt, ap);
    va_end(ap);
    p->slot = slot;
    p->ndim = cols ? 2 : 1;
    p->shape[0] = rows;
    p->shape[1] = cols;
}

/* Every tensor the config implies, with the Hugging Face name and shape. */
static void list_params(model *m, param_list *list)
{
    const hf_config *c = &m->config;
    int64_t C = c->hidden_size, F = c->intermediate_size, V = c->vocab_size;
    int64_t q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim;
    add_param(list, &m->embed, V, C, "model.embed_tokens.weight");
    for (int l = 0; l < c->n_layers; l++) {
        model_layer *L = &m->layers[l];
        add_param(list, &L->attn_norm, C, 0, "model.layers.%d.input_layernorm.weight", l);
        add_param(list, &L->wq, q, C, "model.layers.%d.self_attn.q_proj.weight", l);
        add_param(list, &L->wk, kv, C, "model.layers.%d.self_attn.k_proj.weight", l);
        add_param(list, &L->wv, kv, C, "model.layers.%d.self_attn.v_proj.weight", l);
        add_param(list, &L->wo, C, q, "model.layers.%d.self_attn.o_proj.weight", l);
        if (c->qkv_bias) {
            add_param(list, &L->bq, q, 0, "model.layers.%d.self_attn.q_proj.bias", l);
            add_param(list, &L->bk, kv, 0, "model.layers.%d.self_attn.k_proj.bias", l);
            add_param(list, &L->bv, kv, 0, "model.layers.%d.self_attn.v_proj.bias", l);
        }
        if (c->o_bias)
            add_param(list, &L->bo, C, 0, "model.layers.%d.self_attn.o_proj.bias", l);
        add_param(list, &L->ffn_norm, C, 0, "model.layers.%d.post_attention_layernorm.weight", l);
        add_param(list, &L->w_gate, F, C, "model.layers.%d.mlp.gate_proj.weight", l);
        add_param(list, &L->w_up, F, C, "model.layers.%d.mlp.up_proj.weight", l);
        add_param(list, &L->w_down, C, F, "model.layers.%d.mlp.down_proj.weight", l);
    }
    add_param(list, &m->final_norm, C, 0, "model.norm.weight");
    if (!c->tie_word_embeddings)
        add_param(list, &m->lm_head, V, C, "lm_head.weight");
}

static size_t spec_elements(const param_spec *p)
{
    return (size_t)p->shape[0] * (size_t)(p->ndim == 2 ? p->shape[1] : 1);
}

static void format_shape(char *buf, size_t len, int ndim, const int64_t *shape)
{
    size_t used = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < ndim && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, "%s%" PRId64, i ? ", " : "", shape[i]);
    if (used < len)
        snprintf(buf + used, len - used, "]");
}

/* Finds, checks and uploads one tensor; staging is a host buffer large enough for it. */
static int load_param(model *m, const st_set *set, const param_spec *p, float *staging,
                      pesc_error *err)
{
    const st_file *file = NULL;
    const st_tensor *t = st_set_find(set, p->name, &file);
    if (!t)
        return pesc_fail(err, "%s: tensor %s is missing (the checkpoint does not match its "
                         "config.json)", set->dir, p->name);
    int same = t->ndim == p->ndim;
    for (int i = 0; same && i < p->ndim; i++)
        same = t->shape[i] == p->shape[i];
    if (!same) {
        char want[64], got[64];
        format_shape(want, sizeof want, p->ndim, p->shape);
        format_shape(got, sizeof got, t->ndim, t->shape);
        return pesc_fail(err, "%s: tensor %s has shape %s but config.json implies %s",
                         file->path, p->name, got, want);
    }
    if (st_to_f32(t, staging, err) != 0)
        return pesc_fail_prefix(err, "%s", file->path);
    backend_upload(m->backend, *p->slot, staging, t->n_elements * sizeof(float));
    return 0;
}

static int load_weights(model *m, const char *dir, pesc_error *err)
{
    param_list list = {0};
    list_params(m, &list);
    size_t total = 0, largest = 0;
    for (int i = 0; i < list.n; i++) {
        size_t n = spec_elements(&list.items[i]);
        total += (n + 15) & ~(size_t)15;   /* keep every tensor 64-byte aligned */
        largest = n > largest ? n : largest;
    }
    m->n_params = 0;
    int rc = -1;
    st_set set = {0};
    float *staging = NULL;
    if (st_set_open(&set, dir, err) != 0)
        goto out;
    m->param_block = backend_alloc(m->backend, total * sizeof(float), err);
    if (!m->param_block)
        goto out;
    staging = xmalloc(largest * sizeof(float));
    float *cursor = m->param_block;
    for (int i = 0; i < list.n; i++) {
        size_t n = spec_elements(&list.items[i]);
        *list.items[i].slot = cursor;
        cursor += (n + 15) & ~(size_t)15;
        if (load_param(m, &set, &list.items[i], staging, err) != 0)
            goto out;
        m->n_params += (long long)n;
    }
    if (m->config.tie_word_embeddings)
        m->lm_head = m->embed;
    rc = 0;
out:
    free(staging);
    st_set_close(&set);
    free(list.items);
    return rc;
}

int model_load(model *m, const char *dir, pesc_backend *b, pesc_error *err)
{
    memset(m, 0, sizeof *m);
    m->backend = b;
    if (hfconfig_load(&m->config, dir, err) != 0)
        return -1;
    m->layers = xcalloc((size_t)m->config.n_layers, sizeof *m->layers);
    if (load_weights(m, dir, err) != 0) {
        model_free(m);
        return -1;
    }
    int half = m->config.head_dim / 2;
    float *inv_freq = xmalloc((size_t)half * sizeof(float));
    hfconfig_inv_freq(&m->config, inv_freq);
    m->inv_freq = backend_alloc(b, (size_t)half * sizeof(float), err);
    if (m->inv_freq)
        backend_upload(b, m->inv_freq, inv_freq, (size_t)half * sizeof(float));
    free(inv_freq);
    if (!m->inv_freq) {
        model_free(m);
        return -1;
    }
    return 0;
}

void model_free(model *m)
{
    if (m->backend) {
        backend_free(m->backend, m->param_block);
        backend_free(m->backend, m->act_block);
        backend_free(m->backend, m->inv_freq);
    }
    free(m->layers);
    memset(m, 0, sizeof *m);
}

/* ---- activations -------------------------------------------------------------------------- */

/* Grows the activation block to hold N tokens; logits are kept to a bounded slice. */
static int ensure_activations(model *m, int N, pesc_error *err)
{
    if (N <= m->act.capacity)
        return 0;
    const hf_config *c = &m->config;
    size_t C = (size_t)c->hidden_size, F = (size_t)c->intermediate_size;
    size_t q = (size_t)c->n_heads * c->head_dim, kv = (size_t)c->n_kv_heads * c->head_dim;
    size_t V = (size_t)c->vocab_size;
    /* ~64 MiB of float logits at most, and never fewer than one row */
    size_t rows = (64u << 20) / (V * sizeof(float));
    rows = rows < 1 ? 1 : rows > (size_t)N ? (size_t)N : rows;
    size_t n = (size_t)N;
    size_t floats[] = {n * C, n * C, n * q, n * kv, n * kv, n * q, n * C, n * F, n * F,
                       rows * V, rows};
    size_t total = 0;
    for (size_t i = 0; i < sizeof floats / sizeof *floats; i++)
        total += (floats[i] + 15) & ~(size_t)15;
    total += 3 * ((n + 15) & ~(size_t)15);   /* tokens, targets, positions (int32) */
    backend_free(m->backend, m->act_block);
    m->act.capacity = 0;
    m->act_block = backend_alloc(m->backend, total * sizeof(float), err);
    if (!m->act_block)
        return -1;
    float *cursor = m->act_block;
    float **slots[] = {&m->act.x, &m->act.xn, &m->act.q, &m->act.k, &m->act.v, &m->act.att,
                       &m->act.proj, &m->act.gate, &m->act.up, &m->act.logits, &m->act.losses};
    for (size_t i = 0; i < sizeof slots / sizeof *slots; i++) {
        *slots[i] = cursor;
        cursor += (floats[i] + 15) & ~(size_t)15;
    }
    int32_t **ints[] = {&m->act.tokens, &m->act.targets, &m->act.pos};
    for (size_t i = 0; i < 3; i++) {
        *ints[i] = (int32_t *)cursor;
        cursor += (n + 15) & ~(size_t)15;
    }
    m->act.capacity = N;
    m->act.logit_rows = (int)rows;
    return 0;
}

/* ---- forward ------------------------------------------------------------------------------ */

static void attention_block(model *m, const model_layer *L, int B, int T)
{
    const hf_config *c = &m->config;
    pesc_backend *b = m->backend;
    model_activations *a = &m->act;
    int N = B * T, C = c->hidden_size, D = c->head_dim, Hq = c->n_heads, Hkv = c->n_kv_heads;
    rmsnorm_forward(b, a->xn, NULL, a->x, L->attn_norm, N, C, (float)c->rms_norm_eps);
    matmul_forward(b, a->q, a->xn, L->wq, L->bq, N, C, Hq * D);
    matmul_forward(b, a->k, a->xn, L->wk, L->bk, N, C, Hkv * D);
    matmul_forward(b, a->v, a->xn, L->wv, L->bv, N, C, Hkv * D);
    rope_forward(b, a->q, a->q, a->pos, m->inv_freq, N, Hq, D);
    rope_forward(b, a->k, a->k, a->pos, m->inv_freq, N, Hkv, D);
    attention_forward(b, a->att, NULL, a->q, a->k, a->v, B, T, Hq, Hkv, D, c->sliding_window);
    matmul_forward(b, a->proj, a->att, L->wo, L->bo, N, Hq * D, C);
    residual_forward(b, a->x, a->x, a->proj, (size_t)N * C);
}

static void ffn_block(model *m, const model_layer *L, int N)
{
    const hf_config *c = &m->config;
    pesc_backend *b = m->backend;
    model_activations *a = &m->act;
    int C = c->hidden_size, F = c->intermediate_size;
    rmsnorm_forward(b, a->xn, NULL, a->x, L->ffn_norm, N, C, (float)c->rms_norm_eps);
    matmul_forward(b, a->gate, a->xn, L->w_gate, NULL, N, C, F);
    matmul_forward(b, a->up, a->xn, L->w_up, NULL, N, C, F);
    swiglu_forward(b, a->gate, a->gate, a->up, (size_t)N * F);
    matmul_forward(b, a->proj, a->gate, L->w_down, NULL, N, F, C);
    residual_forward(b, a->x, a->x, a->proj, (size_t)N * C);
}

int model_forward(model *m, const int32_t *tokens, int B, int T, pesc_error *err)
{
    const hf_config *c = &m->config;
    int N = B * T;
    if (B <= 0 || T <= 0)
        return pesc_fail(err, "model: empty batch");
    for (int i = 0; i < N; i++)
        if (tokens[i] < 0 || tokens[i] >= c->vocab_size)
            return pesc_fail(err, "token id %d is outside the model's vocabulary (%d tokens)",
                             tokens[i], c->vocab_size);
    if (ensure_activations(m, N, err) != 0)
        return -1;
    int32_t *pos = xmalloc((size_t)N * sizeof *pos);
    for (int i = 0; i < N; i++)
        pos[i] = i % T;
    backend_upload(m->backend, m->act.pos, pos, (size_t)N * sizeof *pos);
    backend_upload(m->backend, m->act.tokens, tokens, (size_t)N * sizeof *tokens);
    free(pos);
    m->B = B;
    m->T = T;

    embedding_forward(m->backend, m->act.x, m->act.tokens, m->embed, N, c->hidden_size);
    for (int l = 0; l < c->n_layers; l++) {
        attention_block(m, &m->layers[l], B, T);
        ffn_block(m, &m->layers[l], N);
    }
    rmsnorm_forward(m->backend, m->act.xn, NULL, m->act.x, m->final_norm, N, c->hidden_size,
                    (float)c->rms_norm_eps);
    return 0;
}

int model_nll(model *m, const int32_t *targets, double *nll, long long *count,
              float *logits_out, pesc_error *err)
{
    const hf_config *c = &m->config;
    int N = m->B * m->T, C = c->hidden_size, V = c->vocab_size;
    if (N <= 0)
        return pesc_fail(err, "model_nll: no forward pass to score");
    for (int i = 0; i < N; i++)
        if (targets[i] >= V)
            return pesc_fail(err, "label %d is outside the model's vocabulary (%d tokens)",
                             targets[i], V);
    backend_upload(m->backend, m->act.targets, targets, (size_t)N * sizeof *targets);
    float *losses = xmalloc((size_t)m->act.logit_rows * sizeof *losses);
    double sum = 0.0;
    long long counted = 0;
    for (int start = 0; start < N; start += m->act.logit_rows) {
        int rows = N - start < m->act.logit_rows ? N - start : m->act.logit_rows;
        matmul_forward(m->backend, m->act.logits, m->act.xn + (size_t)start * C, m->lm_head, NULL,
                       rows, C, V);
        crossentropy_forward(m->backend, m->act.losses, m->act.logits, m->act.targets + start,
                             rows, V);
        backend_download(m->backend, losses, m->act.losses, (size_t)rows * sizeof *losses);
        if (logits_out)
            backend_download(m->backend, logits_out + (size_t)start * V, m->act.logits,
                             (size_t)rows * V * sizeof(float));
        for (int i = 0; i < rows; i++)
            if (targets[start + i] >= 0) {
                sum += losses[i];
                counted++;
            }
    }
    free(losses);
    *nll = sum;
    *count = counted;
    return 0;
}

void model_shift_targets(int32_t *targets, const int32_t *ids, const int32_t *labels, int T)
{
    const int32_t *src = labels ? labels : ids;
    for (int t = 0; t + 1 < T; t++)
        targets[t] = src[t + 1] < 0 ? -100 : src[t + 1];
    if (T > 0)
        targets[T - 1] = -100;
}
