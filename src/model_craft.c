/* model_craft — PESC crafting: routers, expert adapters and LoRA pairs added to a loaded dense
 * model, their initialisation, names and files (Camelidae tensor names, DESIGN section 1). */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "model_internal.h"
#include "safetensors.h"

/* ---- layout ------------------------------------------------------------------------------- */

static void site_shape(const model *m, int site, int *in, int *out)
{
    const hf_config *c = &m->config;
    int C = c->hidden_size, F = c->intermediate_size;
    int q = c->n_heads * c->head_dim, kv = c->n_kv_heads * c->head_dim;
    switch (site) {
    case LORA_Q: *in = C; *out = q; break;
    case LORA_K: case LORA_V: *in = C; *out = kv; break;
    case LORA_O: *in = q; *out = C; break;
    case LORA_GATE: case LORA_UP: *in = C; *out = F; break;
    default: *in = F; *out = C; break;
    }
}

static const char *site_module(int site)
{
    static const char *const names[LORA_SITES] = {
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"};
    return names[site];
}

static int lora_on(const model *m, int site)
{
    return m->pesc.lora_rank > 0 && (m->pesc.lora_targets & (1u << site));
}

typedef struct tensor_list {
    model_tensor *items;
    float ***slots;
    int n, cap;
} tensor_list;

static void add_tensor(tensor_list *list, float **slot, float *data, int64_t rows, int64_t cols,
                       const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static void add_tensor(tensor_list *list, float **slot, float *data, int64_t rows, int64_t cols,
                       const char *fmt, ...)
{
    if (list->n == list->cap) {
        list->cap = list->cap ? 2 * list->cap : 64;
        list->items = xrealloc(list->items, (size_t)list->cap * sizeof *list->items);
        list->slots = xrealloc(list->slots, (size_t)list->cap * sizeof *list->slots);
    }
    model_tensor *t = &list->items[list->n];
    memset(t, 0, sizeof *t);
    list->slots[list->n++] = slot;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    t->data = data;
    t->ndim = 2;
    t->shape[0] = rows;
    t->shape[1] = cols;
    t->n = (size_t)rows * (size_t)cols;
}

/* The crafted tensors in file order. Experts' adapters are views into one (E, R, C) and one
 * (E, C, R) array per layer, so each expert's product is one GEMM on contiguous memory. */
static void list_crafted(model *m, tensor_list *list)
{
    const hf_config *c = &m->config;
    int C = c->hidden_size, E = m->pesc.experts, R = m->pesc.adapter_dim, r = m->pesc.lora_rank;
    for (int l = 0; l < c->n_layers; l++) {
        pesc_layer *P = &m->pesc_layers[l];
        add_tensor(list, &P->router, NULL, E, C, "model.layers.%d.mlp.moe_adapter.router.weight", l);
        for (int e = 0; e < E; e++) {
            add_tensor(list, e ? NULL : &P->down, NULL, R, C,
                       "model.layers.%d.mlp.moe_adapter.experts.expert_%d.adapter_down.weight", l, e);
            add_tensor(list, e ? NULL : &P->up, NULL, C, R,
                       "model.layers.%d.mlp.moe_adapter.experts.expert_%d.adapter_up.weight", l, e);
        }
        for (int s = 0; s < LORA_SITES; s++) {
            if (!lora_on(m, s))
                continue;
            int in, out;
            site_shape(m, s, &in, &out);
            add_tensor(list, &P->lora_a[s], NULL, r, in, "model.layers.%d.%s.lora_A.weight", l,
                       site_module(s));
            add_tensor(list, &P->lora_b[s], NULL, out, r, "model.layers.%d.%s.lora_B.weight", l,
                       site_module(s));
        }
    }
}

/* Places the adapters so that expert e's down/up follow expert 0's contiguously. */
static size_t place_crafted(model *m, tensor_list *list, float *base)
{
    size_t at = 0;
    int E = m->pesc.experts;
    for (int i = 0; i < list->n; i++) {
        model_tensor *t = &list->items[i];
        int expert_block = strstr(t->name, ".experts.expert_0.") != NULL;
        if (strstr(t->name, ".experts.expert_") && !expert_block) {
            /* expert e > 0: right after expert e-1 of the same kind (two entries back) */
            t->data = list->items[i - 2].data ? list->items[i - 2].data + t->n : NULL;
            continue;
        }
        t->data = base ? base + at : NULL;
        at += model_pad(t->n * (expert_block ? (size_t)E : 1));
        if (list->slots[i])
            *list->slots[i] = t->data;
    }
    return at;
}

/* ---- initialisation ----------------------------------------------------------------------- */

/* nn.Linear's default: Kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)). */
static void kaiming_uniform(float *out, size_t n, int fan_in, uint64_t *rng)
{
    double bound = 1.0 / sqrt((double)fan_in);
    for (size_t i = 0; i < n; i++)
        out[i] = (float)((2.0 * pesc_splitmix_uniform(rng) - 1.0) * bound);
}

static void init_crafted(model *m, const tensor_list *list)
{
    size_t largest = 0;
    for (int i = 0; i < list->n; i++)
        largest = list->items[i].n > largest ? list->items[i].n : largest;
    float *host = xmalloc(largest * sizeof *host);
    for (int i = 0; i < list->n; i++) {
        const model_tensor *t = &list->items[i];
        /* adapter_up and lora_B start at zero: the crafted model equals the dense one */
        int zero = strstr(t->name, "adapter_up") || strstr(t->name, "lora_B");
        if (zero)
            memset(host, 0, t->n * sizeof *host);
        else
            kaiming_uniform(host, t->n, (int)t->shape[1], &m->rng);
        backend_upload(m->backend, t->data, host, t->n * sizeof *host);
    }
    free(host);
}

/* Adds the crafted tensors (or, in full mode, makes every base weight trainable), freshly
 * initialised, and their gradients. */
static int craft_fresh(model *m, const pesc_options *o, uint64_t seed, pesc_error *err)
{
    m->pesc = *o;
    m->rng = seed ? seed : 0x5eed;
    if (o->mode == TRAIN_FULL) {
        /* every base weight trains, in place, from fp32 again where loading packed them */
        if (model_unpack(m, err) != 0)
            return -1;
        m->train_block = m->param_block;
        m->n_train = 0;
        for (int i = 0; i < m->n_base_tensors; i++)
            m->n_train += model_pad(m->base_tensors[i].n);
        m->trainables = m->base_tensors;
        m->n_trainables = m->n_base_tensors;
    } else {
        m->pesc_layers = xcalloc((size_t)m->config.n_layers, sizeof *m->pesc_layers);
        tensor_list list = {0};
        list_crafted(m, &list);
        m->n_train = place_crafted(m, &list, NULL);
        m->crafted_block = backend_alloc(m->backend, m->n_train * sizeof(float), err);
        if (!m->crafted_block) {
            free(list.items);
            free(list.slots);
            return -1;
        }
        m->train_block = m->crafted_block;
        vector_zero(m->backend, m->train_block, m->n_train);
        place_crafted(m, &list, m->train_block);
        init_crafted(m, &list);
        free(list.slots);
        m->trainables = list.items;
        m->n_trainables = list.n;
        m->crafted = 1;
        size_t L = (size_t)m->config.n_layers, E = (size_t)o->experts;
        model_routing *r = &m->routing;
        r->counts = xcalloc(L * E, sizeof *r->counts);
        r->first = xcalloc(L * E, sizeof *r->first);
        r->gate_sum = xcalloc(L * E, sizeof *r->gate_sum);
        r->entropy = xcalloc(L, sizeof *r->entropy);
        r->source_counts = xcalloc(MODEL_MAX_SOURCES * L * E, sizeof *r->source_counts);
        r->last_experts = xcalloc(L * (size_t)o->top_k, sizeof *r->last_experts);
    }
    m->grad_block = backend_alloc(m->backend, m->n_train * sizeof(float), err);
    if (!m->grad_block)
        return -1;
    /* only the backward's weight gradients, the optimizer and the vector ops touch them */
    backend_gradients(m->backend, m->grad_block, m->n_train);
    model_zero_grad(m);
    model_free_activations(m);   /* the activation layout changes with routing */
    if (o->mode != TRAIN_FULL)   /* the base stays as it is from here on */
        model_freeze_base(m);
    /* from here on only the optimizer, uploads and copies write the trainables */
    backend_trainables(m->backend, m->train_block, m->n_train);
    return 0;
}

void model_routing_free(model_routing *r)
{
    free(r->counts);
    free(r->first);
    free(r->gate_sum);
    free(r->entropy);
    free(r->source_counts);
    free(r->last_experts);
    memset(r, 0, sizeof *r);
}

/* Takes the crafted part off a crafted model (the base weights stay). */
static void uncraft(model *m)
{
    backend_free(m->backend, m->crafted_block);
    backend_free(m->backend, m->grad_block);
    free(m->pesc_layers);
    free(m->trainables);
    model_routing_free(&m->routing);
    m->crafted_block = m->grad_block = NULL;
    m->train_block = NULL;
    m->pesc_layers = NULL;
    m->trainables = NULL;
    m->n_trainables = 0;
    m->n_train = 0;
    m->crafted = 0;
    model_free_activations(m);
}

/* Crafts a crafted model again with other LoRA settings (or hyperparameters): routers,
 * adapters and any LoRA pair both craftings have keep their values; new ones start as a
 * fresh crafting's do (LoRA B = 0, so the function is unchanged). */
static int recraft(model *m, const pesc_options *o, uint64_t seed, pesc_error *err)
{
    const pesc_options *had = &m->pesc;
    if (o->mode == TRAIN_FULL)
        return pesc_fail(err, "the model is a crafted PESC model: --train full would drop its "
                         "routers and adapters (train its dense base model instead)");
    if (o->experts != had->experts || o->top_k != had->top_k || o->adapter_dim != had->adapter_dim)
        return pesc_fail(err, "the model is crafted with %d experts, top-k %d, adapter-dim %d; "
                         "it cannot be crafted again with %d, %d, %d", had->experts, had->top_k,
                         had->adapter_dim, o->experts, o->top_k, o->adapter_dim);
    size_t n_old = m->n_train;
    float *saved = xmalloc((n_old ? n_old : 1) * sizeof *saved);
    backend_download(m->backend, saved, m->train_block, n_old * sizeof *saved);
    model_tensor *old = m->trainables;   /* kept for the names; offsets into saved */
    int n_old_tensors = m->n_trainables;
    size_t *offsets = xmalloc((size_t)(n_old_tensors ? n_old_tensors : 1) * sizeof *offsets);
    for (int j = 0; j < n_old_tensors; j++)
        offsets[j] = (size_t)(old[j].data - m->train_block);
    m->trainables = NULL;
    uncraft(m);
    int rc = craft_fresh(m, o, seed, err);
    for (int i = 0; rc == 0 && i < m->n_trainables; i++) {
        const model_tensor *t = &m->trainables[i];
        for (int j = 0; j < n_old_tensors; j++)
            if (old[j].n == t->n && strcmp(old[j].name, t->name) == 0) {
                backend_upload(m->backend, t->data, saved + offsets[j], t->n * sizeof *saved);
                break;
            }
    }
    free(offsets);
    free(old);
    free(saved);
    return rc;
}

int model_craft(model *m, const pesc_options *o, uint64_t seed, pesc_error *err)
{
    if (pesc_options_check(o, err) != 0)
        return -1;
    if (m->crafted)
        return recraft(m, o, seed, err);
    if (m->grad_block)
        return pesc_fail(err, "the model trains every weight already (--train full); it cannot "
                         "be crafted");
    return craft_fresh(m, o, seed, err);
}

/* out (rows, cols) = in (cols, rows) transposed. */
static void transpose(float *out, const float *in, int rows, int cols)
{
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++)
            out[(size_t)i * cols + j] = in[(size_t)j * rows + i];
}

float *model_lora_weight(const model *m, int layer, int site)
{
    const model_layer *L = &m->layers[layer];
    float *const weights[LORA_SITES] = {L->wq, L->wk, L->wv, L->wo, L->w_gate, L->w_up, L->w_down};
    return weights[site];
}

int model_merge_lora(model *m, pesc_error *err)
{
    if (!m->crafted || m->pesc.lora_rank == 0)
        return 0;
    if (m->packed_block)   /* pesc export merges on the CPU, where nothing is packed */
        return pesc_fail(err, "the base weights are kept in bf16 on the %s backend: merge the "
                         "LoRA pairs on the CPU (pesc export)", backend_name(m->backend));
    int r = m->pesc.lora_rank;
    float scale = m->pesc.lora_alpha / (float)r;
    size_t largest = 0;
    for (int s = 0; s < LORA_SITES; s++) {
        int in, out;
        site_shape(m, s, &in, &out);
        largest = (size_t)in * out > largest ? (size_t)in * out : largest;
    }
    int max_in = m->config.hidden_size > m->config.intermediate_size ? m->config.hidden_size
                                                                     : m->config.intermediate_size;
    int q = m->config.n_heads * m->config.head_dim;
    max_in = q > max_in ? q : max_in;
    float *delta = backend_alloc(m->backend, largest * sizeof(float), err);
    float *a_t = backend_alloc(m->backend, (size_t)max_in * r * sizeof(float), err);
    float *host = xmalloc((size_t)max_in * r * sizeof *host);
    float *host_t = xmalloc((size_t)max_in * r * sizeof *host_t);
    int rc = delta && a_t ? 0 : -1;
    for (int l = 0; rc == 0 && l < m->config.n_layers; l++)
        for (int s = 0; s < LORA_SITES; s++) {
            if (!lora_on(m, s))
                continue;
            int in, out;
            site_shape(m, s, &in, &out);
            /* W (out, in) += scale * B (out, r) @ A (r, in); matmul_forward multiplies by a
             * transposed weight, so it gets A^T (in, r) */
            backend_download(m->backend, host, m->pesc_layers[l].lora_a[s],
                             (size_t)r * in * sizeof *host);
            transpose(host_t, host, in, r);
            backend_upload(m->backend, a_t, host_t, (size_t)in * r * sizeof *host_t);
            matmul_forward(m->backend, delta, m->pesc_layers[l].lora_b[s], a_t, NULL, out, r, in);
            vector_axpy(m->backend, model_lora_weight(m, l, s), delta, scale, (size_t)out * in);
        }
    free(host_t);
    free(host);
    if (m->backend) {
        backend_free(m->backend, a_t);
        backend_free(m->backend, delta);
    }
    if (rc != 0)
        return -1;
    /* the pairs are in the weights now: craft again without them */
    pesc_options o = m->pesc;
    o.lora_rank = 0;
    return model_craft(m, &o, m->rng, err);
}

int model_load_crafted(model *m, const st_set *set, pesc_error *err)
{
    const hf_config *c = &m->config;
    pesc_options o;
    pesc_options_default(&o);
    o.experts = c->num_experts;
    o.top_k = c->topk;
    o.adapter_dim = c->adapter_dim;
    o.adapter_scale = (float)c->moe_scaling;
    if (model_craft(m, &o, 0, err) != 0)
        return -1;
    char missing[160];
    snprintf(missing, sizeof missing, "config.json makes this a PESC model with num_experts %d, "
             "topk %d, adapter_dim %d; export it again", c->num_experts, c->topk, c->adapter_dim);
    return model_upload_named(m, m->trainables, m->n_trainables, model_find_in_set, set,
                              set->dir, missing, "config.json implies", err);
}

void model_zero_grad(model *m)
{
    if (m->grad_block)
        vector_zero(m->backend, m->grad_block, m->n_train);
}

/* ---- files -------------------------------------------------------------------------------- */

/* The crafting metadata is held to the ranges of the flags that set it (pesc.h): a damaged
 * num_experts of 1000000 would otherwise reach the allocator and fail as "out of memory"
 * without naming the file, and 300 experts or moe_scaling 1e38 would load as no run could
 * have trained them. */
static int meta_int(const st_file *f, const char *key, const char *flag, int min, int max,
                    int *out, pesc_error *err)
{
    const char *v = st_meta(f, key);
    if (!v)
        return pesc_fail(err, "%s: __metadata__ has no \"%s\" (is this a pesc adapter file?)",
                         f->path, key);
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (end != v && !*end && !errno && x >= min && x <= max) {
        *out = (int)x;
        return 0;
    }
    char shown[48];
    pesc_show_controls(shown, sizeof shown, v);
    return pesc_fail(err, "%s: __metadata__ \"%s\" = \"%s\" must be an integer from %d to %d, as "
                     "%s takes (the file is damaged: use another checkpoint)", f->path, key,
                     shown, min, max, flag);
}

/* A number from 0 to max, compared as the float it was saved from (%.9g of a float). */
static int meta_float(const st_file *f, const char *key, const char *flag, double max,
                      float fallback, float *out, pesc_error *err)
{
    const char *v = st_meta(f, key);
    if (!v) {
        *out = fallback;
        return 0;
    }
    char *end;
    double x = strtod(v, &end);
    if (end != v && !*end && x >= 0 && (float)x <= (float)max) {
        *out = (float)x;
        return 0;
    }
    char shown[48];
    pesc_show_controls(shown, sizeof shown, v);
    return pesc_fail(err, "%s: __metadata__ \"%s\" = \"%s\" must be a number from 0 to %g, as "
                     "%s takes (the file is damaged: use another checkpoint)", f->path, key,
                     shown, max, flag);
}

/* 1 when f holds a router or an adapter: a crafted model's weights. */
static int holds_crafted(const st_file *f)
{
    for (int i = 0; i < f->n_tensors; i++)
        if (strstr(f->tensors[i].name, ".mlp.moe_adapter."))
            return 1;
    return 0;
}

/* The crafting a file describes, from its metadata. */
static int options_from_file(const st_file *f, pesc_options *o, pesc_error *err)
{
    pesc_options_default(o);
    /* a file of plain weights (no crafting metadata) is a full-mode file, unless it has routers
     * and adapters: then it is the model.safetensors of pesc export, whose crafting (top-k,
     * scale) is in the config.json beside it; taken as full weights, they would be dropped */
    const char *mode = st_meta(f, "pesc_mode");
    if (st_meta(f, "adam_step")) {   /* the optimizer's moments, beside the trainables */
        char *dir = pesc_parent_dir(f->path);
        pesc_fail(err, "%s holds the optimizer's state (AdamW moments), not trainables: give "
                  "the checkpoint %s, or its trainables.safetensors", f->path, dir);
        free(dir);
        return -1;
    }
    if (!mode && !st_meta(f, "num_experts") && holds_crafted(f)) {
        char *dir = pesc_parent_dir(f->path);
        pesc_fail(err, "%s is an exported PESC model (base weights, routers and adapters), not "
                  "a trainables file: give its directory as --model %s, without --adapters",
                  f->path, dir);
        free(dir);
        return -1;
    }
    if ((mode && strcmp(mode, "full") == 0) || !st_meta(f, "num_experts")) {
        o->mode = TRAIN_FULL;
        return 0;
    }
    if (meta_int(f, "num_experts", "--experts", 1, PESC_MAX_EXPERTS, &o->experts, err) ||
        meta_int(f, "topk", "--top-k", 1, PESC_MAX_EXPERTS, &o->top_k, err) ||
        meta_int(f, "adapter_dim", "--adapter-dim", 1, PESC_MAX_ADAPTER_DIM, &o->adapter_dim,
                 err) ||
        meta_float(f, "moe_scaling", "--adapter-scale", PESC_MAX_COEF, 0.25f, &o->adapter_scale,
                   err))
        return -1;
    if (st_meta(f, "lora_rank") &&
        (meta_int(f, "lora_rank", "--lora-rank", 0, PESC_MAX_LORA_RANK, &o->lora_rank, err) ||
         meta_float(f, "lora_alpha", "--lora-alpha", PESC_MAX_COEF, 16.0f, &o->lora_alpha, err)))
        return -1;
    if (st_meta(f, "lora_targets") &&
        pesc_parse_lora_targets(st_meta(f, "lora_targets"), &o->lora_targets, err) != 0)
        return pesc_fail_prefix(err, "%s", f->path);
    if (o->experts < 1 || o->top_k < 1 || o->top_k > o->experts || o->adapter_dim < 1)
        return pesc_fail(err, "%s: __metadata__ describes an impossible crafting (experts %d, "
                         "topk %d, adapter_dim %d)", f->path, o->experts, o->top_k, o->adapter_dim);
    return 0;
}

/* "--train full", or "experts 8, top-k 2, adapter-dim 64, LoRA rank 4 on q,v" */
static const char *crafting_text(const pesc_options *o, char *buf, size_t n)
{
    if (o->mode == TRAIN_FULL) {
        snprintf(buf, n, "--train full (every weight)");
        return buf;
    }
    int at = snprintf(buf, n, "experts %d, top-k %d, adapter-dim %d", o->experts, o->top_k,
                      o->adapter_dim);
    if (o->lora_rank == 0) {
        snprintf(buf + at, n - (size_t)at, ", no LoRA");
        return buf;
    }
    at += snprintf(buf + at, n - (size_t)at, ", LoRA rank %d on ", o->lora_rank);
    const char *sep = "";
    for (int site = 0; site < LORA_SITES && (size_t)at < n; site++)
        if (o->lora_targets & (1u << site)) {
            at += snprintf(buf + at, n - (size_t)at, "%s%s", sep, pesc_lora_site_name(site));
            sep = ",";
        }
    return buf;
}

static int same_crafting(const pesc_options *a, const pesc_options *b)
{
    if (a->mode != b->mode)
        return 0;
    if (a->mode == TRAIN_FULL)
        return 1;
    return a->experts == b->experts && a->top_k == b->top_k && a->adapter_dim == b->adapter_dim &&
           a->lora_rank == b->lora_rank &&
           (a->lora_rank == 0 || a->lora_targets == b->lora_targets);
}

int model_load_trainables(model *m, const char *path, pesc_error *err)
{
    st_file f = {0};
    if (st_open(&f, path, err) != 0)
        return -1;
    pesc_options wanted;
    int rc = -1;
    if (options_from_file(&f, &wanted, err) != 0)
        goto out;
    if (!m->grad_block) {
        if (model_craft(m, &wanted, 0, err) != 0)
            goto out;
    } else if (m->crafted && wanted.mode == TRAIN_PESC && wanted.experts == m->pesc.experts &&
               wanted.top_k == m->pesc.top_k && wanted.adapter_dim == m->pesc.adapter_dim &&
               !same_crafting(&m->pesc, &wanted)) {
        /* a crafted model (an exported one) and a file with other LoRA pairs: take the file's */
        pesc_options o = m->pesc;
        o.lora_rank = wanted.lora_rank;
        o.lora_alpha = wanted.lora_alpha;
        o.lora_targets = wanted.lora_targets;
        if (model_craft(m, &o, m->rng, err) != 0)
            goto out;
    } else if (!same_crafting(&m->pesc, &wanted)) {
        char file_has[160], model_has[160];
        crafting_text(&wanted, file_has, sizeof file_has);
        crafting_text(&m->pesc, model_has, sizeof model_has);
        if (wanted.mode == TRAIN_FULL)
            pesc_fail(err, "%s was saved by a --train full run; this model is crafted (%s): give "
                      "it with the base that run trained, or export its checkpoint (pesc export) "
                      "and use that as --model", path, model_has);
        else
            pesc_fail(err, "%s was crafted with %s; the model has %s: give it with the model it "
                      "was trained on", path, file_has, model_has);
        goto out;
    }
    /* the file's scale wins: it is part of the trained function */
    m->pesc.adapter_scale = wanted.adapter_scale;
    m->pesc.lora_alpha = wanted.lora_alpha;
    rc = model_upload_named(m, m->trainables, m->n_trainables, model_find_in_file, &f, path,
                            "the file was saved from a different crafting",
                            "the crafted model needs", err);
out:
    st_close(&f);
    return rc;
}

int model_save_trainables(model *m, const char *path, pesc_error *err)
{
    if (!m->grad_block)
        return pesc_fail(err, "nothing to save: the model is not crafted");
    size_t total = 0;
    for (int i = 0; i < m->n_trainables; i++)
        total += m->trainables[i].n;
    float *host = xmalloc((total ? total : 1) * sizeof *host);
    st_write_tensor *out = xcalloc((size_t)m->n_trainables, sizeof *out);
    size_t at = 0;
    for (int i = 0; i < m->n_trainables; i++) {
        const model_tensor *t = &m->trainables[i];
        backend_download(m->backend, host + at, t->data, t->n * sizeof *host);
        out[i] = (st_write_tensor){.name = t->name, .dtype = ST_F32, .ndim = t->ndim,
                                   .shape = {t->shape[0], t->shape[1]}, .data = host + at};
        at += t->n;
    }
    char experts[16], topk[16], dim[16], scale[32], rank[16], alpha[32], targets[64] = "";
    const pesc_options *o = &m->pesc;
    snprintf(experts, sizeof experts, "%d", o->experts);
    snprintf(topk, sizeof topk, "%d", o->top_k);
    snprintf(dim, sizeof dim, "%d", o->adapter_dim);
    snprintf(scale, sizeof scale, "%.9g", (double)o->adapter_scale);
    snprintf(rank, sizeof rank, "%d", o->lora_rank);
    snprintf(alpha, sizeof alpha, "%.9g", (double)o->lora_alpha);
    for (int s = 0; s < LORA_SITES; s++)
        if (o->lora_targets & (1u << s))
            snprintf(targets + strlen(targets), sizeof targets - strlen(targets), "%s%s",
                     targets[0] ? "," : "", pesc_lora_site_name(s));
    const char *keys[] = {"format", "num_experts", "topk", "adapter_dim", "moe_scaling",
                          "lora_rank", "lora_alpha", "lora_targets"};
    const char *values[] = {"pt", experts, topk, dim, scale, rank, alpha, targets};
    const char *full_keys[] = {"format", "pesc_mode"};
    const char *full_values[] = {"pt", "full"};
    int full = o->mode == TRAIN_FULL;
    int rc = st_write(path, out, m->n_trainables, full ? full_keys : keys,
                      full ? full_values : values, full ? 2 : (o->lora_rank ? 8 : 5), err);
    free(out);
    free(host);
    return rc;
}
