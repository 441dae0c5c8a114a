/* model — loading: config.json and the safetensors weights of a Hugging Face checkpoint, laid
 * out in one backend allocation. Crafting is in model_craft.c, the passes in model_forward.c. */
#include "model.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model_internal.h"
#include "safetensors.h"

/* ---- weight layout ------------------------------------------------------------------------ */

typedef struct param_list {
    model_tensor *items;
    float ***slots;              /* where each tensor's pointer goes in the model */
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
        list->slots = xrealloc(list->slots, (size_t)list->cap * sizeof *list->slots);
    }
    model_tensor *p = &list->items[list->n];
    memset(p, 0, sizeof *p);
    list->slots[list->n++] = slot;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->name, sizeof p->name, fmt, ap);
    va_end(ap);
    p->ndim = cols ? 2 : 1;
    p->shape[0] = rows;
    p->shape[1] = cols;
    p->n = (size_t)rows * (size_t)(cols ? cols : 1);
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
        if (!c->no_pre_norms)   /* (OLMo 2 has no norm before its attention nor its FFN) */
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
        if (c->qk_norm) {   /* a head's, or (OLMo 2) the whole q's and k's */
            add_param(list, &L->q_norm, c->qk_norm_whole ? q : c->head_dim, 0,
                      "model.layers.%d.self_attn.q_norm.weight", l);
            add_param(list, &L->k_norm, c->qk_norm_whole ? kv : c->head_dim, 0,
                      "model.layers.%d.self_attn.k_norm.weight", l);
        }
        /* Gemma's post_attention_layernorm norms the attention's output; its FFN's input norm
         * is pre_feedforward_layernorm */
        if (c->sandwich_norms) {
            add_param(list, &L->attn_post_norm, C, 0,
                      "model.layers.%d.post_attention_layernorm.weight", l);
            if (!c->no_pre_norms)
                add_param(list, &L->ffn_norm, C, 0,
                          "model.layers.%d.pre_feedforward_layernorm.weight", l);
            add_param(list, &L->ffn_post_norm, C, 0,
                      "model.layers.%d.post_feedforward_layernorm.weight", l);
        } else {
            add_param(list, &L->ffn_norm, C, 0, "model.layers.%d.post_attention_layernorm.weight",
                      l);
        }
        add_param(list, &L->w_gate, F, C, "model.layers.%d.mlp.gate_proj.weight", l);
        add_param(list, &L->w_up, F, C, "model.layers.%d.mlp.up_proj.weight", l);
        add_param(list, &L->w_down, C, F, "model.layers.%d.mlp.down_proj.weight", l);
    }
    add_param(list, &m->final_norm, C, 0, "model.norm.weight");
    if (!c->tie_word_embeddings)
        add_param(list, &m->lm_head, V, C, "lm_head.weight");
}

void model_format_shape(char *buf, size_t len, int ndim, const int64_t *shape)
{
    size_t used = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < ndim && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, "%s%" PRId64, i ? ", " : "", shape[i]);
    if (used < len)
        snprintf(buf + used, len - used, "]");
}

/* Base tensor t's values go up from host memory; while the base is packed, its first values
 * are kept as loaded (model_base_sample). */
static void upload_base(model *m, const model_tensor *t, const float *host)
{
    if (m->packed_block && t >= m->base_tensors && t < m->base_tensors + m->n_base_tensors)
        memcpy(m->base_samples + (size_t)(t - m->base_tensors) * MODEL_SAMPLE, host,
               (t->n < MODEL_SAMPLE ? t->n : MODEL_SAMPLE) * sizeof *host);
    backend_upload(m->backend, t->data, host, t->n * sizeof *host);
}

int model_upload_tensor(model *m, const model_tensor *t, const st_tensor *src, const char *where,
                        const char *expectation, float *staging, pesc_error *err)
{
    int same = src->ndim == t->ndim;
    for (int i = 0; same && i < t->ndim; i++)
        same = src->shape[i] == t->shape[i];
    if (!same) {
        char want[64], got[64];
        model_format_shape(want, sizeof want, t->ndim, t->shape);
        model_format_shape(got, sizeof got, src->ndim, src->shape);
        return pesc_fail(err, "%s: tensor %s has shape %s but %s %s", where, t->name, got,
                         expectation, want);
    }
    if (st_to_f32(src, staging, err) != 0)
        return pesc_fail_prefix(err, "%s", where);
    /* one NaN would make every step non-finite: name it here rather than skip steps later */
    for (size_t i = 0; i < t->n; i++)
        if (!isfinite(staging[i]))
            return pesc_fail(err, "%s: tensor %s holds %s at element %zu: the file is damaged "
                             "(fetch or save it again)", where, t->name,
                             isnan(staging[i]) ? "NaN" : "inf", i);
    upload_base(m, t, staging);
    return 0;
}

/* Whether base tensor i (of list) is read by products alone: every 2-D weight but the
 * embedding table, which is gathered. */
static int product_weight(const model *m, const param_list *list, int i)
{
    return list->items[i].ndim == 2 && list->slots[i] != &m->embed;
}

/* Lists the tensors, allocates the block and points every tensor into it. Where the backend
 * keeps frozen weights in its own format (backend_alloc_frozen: CUDA in bf16 math), the weights
 * that only products read go there from the start, and the rest to the block: the fp32 base is
 * never on the device at once (model_unpack undoes it for full mode). */
static int layout_weights(model *m, param_list *list, size_t *largest, pesc_error *err)
{
    list_params(m, list);
    size_t total = 0, products = 0;
    *largest = 0;
    for (int i = 0; i < list->n; i++) {
        total += model_pad(list->items[i].n);
        products += product_weight(m, list, i) ? model_pad(list->items[i].n) : 0;
        *largest = list->items[i].n > *largest ? list->items[i].n : *largest;
    }
    m->base_tensors = list->items;
    m->n_base_tensors = list->n;
    m->packed_block = products ? backend_alloc_frozen(m->backend, products) : NULL;
    size_t block = m->packed_block ? total - products : total;
    m->param_block = backend_alloc(m->backend, (block ? block : 1) * sizeof(float), err);
    if (!m->param_block)   /* the size comes from the shape (config.json's, or bench's): say so */
        return pesc_fail_prefix(err, "the weights (%d layers, hidden %d, intermediate %d, vocab %d: %.2f "
                                "billion parameters, %.1f GiB as fp32) do not fit",
                                m->config.n_layers, m->config.hidden_size, m->config.intermediate_size,
                                m->config.vocab_size, (double)total / 1e9,
                                (double)total * sizeof(float) / 1073741824.0);
    m->param_floats = block;
    m->packed_floats = m->packed_block ? products : 0;
    if (m->packed_block)
        m->base_samples = xcalloc((size_t)list->n * MODEL_SAMPLE, sizeof *m->base_samples);
    float *cursor[2] = {m->param_block, m->packed_block};
    m->n_params = 0;
    for (int i = 0; i < list->n; i++) {
        model_tensor *t = &list->items[i];
        int to = m->packed_block && product_weight(m, list, i);
        t->data = *list->slots[i] = cursor[to];
        cursor[to] += model_pad(t->n);
        m->n_params += (long long)t->n;
    }
    if (m->config.tie_word_embeddings)
        m->lm_head = m->embed;
    return 0;
}

int model_upload_named(model *m, const model_tensor *tensors, int n, model_find_fn find,
                       const void *source, const char *where, const char *missing,
                       const char *expectation, pesc_error *err)
{
    size_t largest = 0;
    for (int i = 0; i < n; i++)
        largest = tensors[i].n > largest ? tensors[i].n : largest;
    float *staging = xmalloc((largest ? largest : 1) * sizeof *staging);
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        const char *file = where;
        const st_tensor *src = find(source, tensors[i].name, &file);
        if (!src)
            rc = pesc_fail(err, "%s: tensor %s is missing (%s)", where, tensors[i].name, missing);
        else
            rc = model_upload_tensor(m, &tensors[i], src, file, expectation, staging, err);
    }
    free(staging);
    return rc;
}

const st_tensor *model_find_in_set(const void *set, const char *name, const char **file)
{
    const st_file *f = NULL;
    const st_tensor *t = st_set_find(set, name, &f);
    if (t)
        *file = f->path;
    return t;
}

const st_tensor *model_find_in_file(const void *file, const char *name, const char **path)
{
    const st_file *f = file;
    *path = f->path;
    return st_find(f, name);
}

void model_file_name(const model *m, const char *name, char *out, size_t len)
{
    const char *p = m->text_prefix;
    if (!*p)
        snprintf(out, len, "%s", name);
    else if (strncmp(name, "model.", 6) == 0)
        snprintf(out, len, "%s%s", p, name + 6);
    else   /* the head, were it untied: beside the model's tensors */
        snprintf(out, len, "%s%s", strncmp(p, "language_model.", 15) == 0 ? "language_model." : "",
                 name);
}

/* Gemma scales its embeddings by sqrt(hidden_size) made in the weights' dtype, as it was
 * trained and as transformers runs it (Gemma3TextScaledWordEmbedding): a BF16 or F16 table's
 * factor is that float rounded to 8 or 11 significant bits (gemma-3-4b's sqrt(2560) = 50.596
 * is 50.5 in bf16). */
static void gemma_embedding_scale(model *m, const st_set *set)
{
    char name[160];
    model_file_name(m, "model.embed_tokens.weight", name, sizeof name);
    const st_tensor *t =
        hfconfig_embedding_module_scales(&m->config) ? st_set_find(set, name, NULL) : NULL;
    int bits = !t ? 0 : t->dtype == ST_BF16 ? 8 : t->dtype == ST_F16 ? 11 : 0;
    if (bits) {
        int e;
        double f = frexp((double)(float)m->config.embedding_multiplier, &e);   /* [0.5, 1) */
        m->config.embedding_multiplier = ldexp(nearbyint(ldexp(f, bits)), e - bits);
    }
}

/* Gemma3ForConditionalGeneration: where its files keep the text model (model.text_prefix) */
static int find_text_prefix(model *m, const st_set *set, pesc_error *err)
{
    static const char *const prefixes[] = {"language_model.model.", "model.language_model."};
    if (!m->config.nested_text)
        return 0;
    for (size_t i = 0; i < sizeof prefixes / sizeof *prefixes; i++) {
        char probe[96];
        snprintf(probe, sizeof probe, "%sembed_tokens.weight", prefixes[i]);
        if (st_set_find(set, probe, NULL)) {
            snprintf(m->text_prefix, sizeof m->text_prefix, "%s", prefixes[i]);
            return 0;
        }
    }
    return pesc_fail(err, "%s: %s's text model is not there: no "
                     "language_model.model.embed_tokens.weight (the hub's layout) nor "
                     "model.language_model.embed_tokens.weight (transformers' since 4.52)",
                     set->dir, m->config.architecture);
}

int model_fused_part(const hf_config *c, const char *name, char *joined, size_t len,
                     int64_t *first, int64_t *rows)
{
    if (!c->fused_proj)
        return 0;
    int64_t q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim;
    int64_t F = c->intermediate_size;
    static const struct {
        const char *part, *whole;
        int q, kv, F;   /* the part's first row: q * this + kv * this + F * this */
    } parts[] = {
        {"self_attn.q_proj.weight", "self_attn.qkv_proj.weight", 0, 0, 0},
        {"self_attn.k_proj.weight", "self_attn.qkv_proj.weight", 1, 0, 0},
        {"self_attn.v_proj.weight", "self_attn.qkv_proj.weight", 1, 1, 0},
        {"mlp.gate_proj.weight", "mlp.gate_up_proj.weight", 0, 0, 0},
        {"mlp.up_proj.weight", "mlp.gate_up_proj.weight", 0, 0, 1},
    };
    int layer, at = 0;
    if (sscanf(name, "model.layers.%d.%n", &layer, &at) != 1 || at == 0)
        return 0;
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++)
        if (strcmp(name + at, parts[i].part) == 0) {
            snprintf(joined, len, "model.layers.%d.%s", layer, parts[i].whole);
            *first = parts[i].q * q + parts[i].kv * kv + parts[i].F * F;
            *rows = i < 3 ? q + 2 * kv : 2 * F;
            return i < 3 ? 3 : 2;
        }
    return 0;
}

/* The base's files, with Phi-3's joined tensors seen as their parts (row ranges of them). */
typedef struct base_source {
    const model *m;
    const st_set *set;
    st_tensor *parts;            /* named as the model's tensors */
    const char **part_files;
    int n_parts;
} base_source;

static const st_tensor *find_base(const void *source, const char *name, const char **file)
{
    const base_source *b = source;
    for (int i = 0; i < b->n_parts; i++)
        if (strcmp(b->parts[i].name, name) == 0) {
            *file = b->part_files[i];
            return &b->parts[i];
        }
    char in_file[160];
    model_file_name(b->m, name, in_file, sizeof in_file);
    return model_find_in_set(b->set, in_file, file);
}

/* The parts of every joined tensor the model's list names, or an error naming a joined
 * tensor that is missing or of another shape than config.json implies. */
static int split_joined(const model *m, const param_list *list, base_source *b, pesc_error *err)
{
    b->parts = xcalloc((size_t)list->n, sizeof *b->parts);
    b->part_files = xcalloc((size_t)list->n, sizeof *b->part_files);
    for (int i = 0; i < list->n; i++) {
        const model_tensor *t = &list->items[i];
        char joined[160];
        int64_t first, rows;
        if (!model_fused_part(&m->config, t->name, joined, sizeof joined, &first, &rows))
            continue;
        const st_file *f = NULL;
        const st_tensor *src = st_set_find(b->set, joined, &f);
        if (!src)
            return pesc_fail(err, "%s: tensor %s is missing (%s keeps q, k, v and gate, up "
                             "joined)", b->set->dir, joined, m->config.architecture);
        if (src->ndim != 2 || src->shape[0] != rows || src->shape[1] != t->shape[1]) {
            char got[64];
            model_format_shape(got, sizeof got, src->ndim, src->shape);
            return pesc_fail(err, "%s: tensor %s has shape %s but config.json implies [%" PRId64
                             ", %" PRId64 "]", f->path, joined, got, rows, t->shape[1]);
        }
        size_t row_bytes = (size_t)src->shape[1] * st_dtype_size(src->dtype);
        st_tensor *p = &b->parts[b->n_parts];
        *p = *src;
        p->name = (char *)t->name;
        p->shape[0] = t->shape[0];
        p->n_elements = (size_t)t->n;
        p->nbytes = (size_t)t->shape[0] * row_bytes;
        p->data = (const char *)src->data + (size_t)first * row_bytes;
        b->part_files[b->n_parts++] = f->path;
    }
    return 0;
}

static int load_weights(model *m, const st_set *set, pesc_error *err)
{
    param_list list = {0};
    size_t largest;
    base_source base = {.m = m, .set = set};
    int rc = layout_weights(m, &list, &largest, err);
    if (rc == 0)
        rc = split_joined(m, &list, &base, err);
    char missing[160];
    snprintf(missing, sizeof missing, "the checkpoint does not match its config.json%s%s%s",
             m->text_prefix[0] ? "; its text model's tensors are read as " : "", m->text_prefix,
             m->text_prefix[0] ? "*" : "");
    if (rc == 0)
        rc = model_upload_named(m, list.items, list.n, find_base, &base, set->dir, missing,
                                "config.json implies", err);
    free(base.parts);
    free(base.part_files);
    free(list.slots);
    if (!m->base_tensors)
        free(list.items);
    return rc;
}

/* RoPE's frequencies on the backend for a pass over `positions` positions (0: Gemma's sliding
 * layers' own), or NULL. */
static float *upload_freq(model *m, long positions, pesc_error *err)
{
    size_t bytes = (size_t)(m->config.head_dim / 2) * sizeof(float);
    float *host = xmalloc(bytes), *on = backend_alloc(m->backend, bytes, err);
    if (positions > 0)
        hfconfig_inv_freq(&m->config, positions, host);
    else
        hfconfig_inv_freq_local(&m->config, host);
    if (on)
        backend_upload(m->backend, on, host, bytes);
    free(host);
    return on;
}

/* RoPE's frequencies within the original context, (longrope) past it, and (Gemma) of the
 * sliding layers. */
static int upload_inv_freq(model *m, pesc_error *err)
{
    long past = (long)m->config.rope_original_max_position + 1;
    if (!(m->inv_freq = upload_freq(m, 1, err)))
        return -1;
    if (hfconfig_rope_long(&m->config, past) && !(m->inv_freq_long = upload_freq(m, past, err)))
        return -1;
    if (m->config.rope_local_theta > 0 && !(m->inv_freq_local = upload_freq(m, 0, err)))
        return -1;
    return 0;
}

/* Weights of layers past config.json's num_hidden_layers: the config does not describe the
 * file, and a model built from it would compute something else without a word (transformers
 * says "weights not used"). */
static int check_no_extra_layers(const model *m, const st_set *set, pesc_error *err)
{
    char prefix[48];
    snprintf(prefix, sizeof prefix, "%slayers.", m->text_prefix[0] ? m->text_prefix : "model.");
    size_t n = strlen(prefix);
    for (int f = 0; f < set->n_files; f++)
        for (int i = 0; i < set->files[f].n_tensors; i++) {
            const char *name = set->files[f].tensors[i].name;
            char *end;
            long layer = strncmp(name, prefix, n) == 0 ? strtol(name + n, &end, 10) : -1;
            if (layer >= m->config.n_layers && *end == '.')
                return pesc_fail(err, "%s holds %s, a weight of layer %ld, and %s/config.json's "
                                 "num_hidden_layers is %d: the config does not describe these "
                                 "weights (use the config.json that came with them)",
                                 set->files[f].path, name, layer, set->dir, m->config.n_layers);
        }
    return 0;
}

int model_load(model *m, const char *dir, pesc_backend *b, pesc_error *err)
{
    memset(m, 0, sizeof *m);
    m->backend = b;
    snprintf(m->source, sizeof m->source, "%s", dir);
    if (hfconfig_load(&m->config, dir, err) != 0)
        return -1;
    m->layers = xcalloc((size_t)m->config.n_layers, sizeof *m->layers);
    st_set set = {0};
    int rc = st_set_open(&set, dir, err);
    if (rc == 0)
        rc = find_text_prefix(m, &set, err);
    if (rc == 0)
        rc = check_no_extra_layers(m, &set, err);
    if (rc == 0)
        rc = load_weights(m, &set, err);
    if (rc == 0)
        gemma_embedding_scale(m, &set);
    if (rc == 0)
        rc = upload_inv_freq(m, err);
    if (rc == 0 && m->config.num_experts > 0)
        rc = model_load_crafted(m, &set, err);
    st_set_close(&set);
    if (rc != 0)
        model_free(m);
    return rc;
}

/* Norms that scale by 1, everything else U(-1/sqrt(fan_in), 1/sqrt(fan_in)): a model that computes
 * like a real one, for benchmarks and tests. */
int model_init_random(model *m, const hf_config *c, pesc_backend *b, uint64_t seed,
                      pesc_error *err)
{
    memset(m, 0, sizeof *m);
    m->backend = b;
    m->config = *c;
    m->layers = xcalloc((size_t)c->n_layers, sizeof *m->layers);
    param_list list = {0};
    size_t largest;
    if (layout_weights(m, &list, &largest, err) != 0) {
        free(list.slots);
        if (!m->base_tensors)
            free(list.items);
        model_free(m);
        return -1;
    }
    free(list.slots);
    float *host = xmalloc(largest * sizeof *host);
    uint64_t state = seed ? seed : 1;
    for (int i = 0; i < m->n_base_tensors; i++) {
        const model_tensor *t = &m->base_tensors[i];
        double bound = t->ndim == 2 ? 1.0 / sqrt((double)t->shape[1]) : 0.0;
        for (size_t j = 0; j < t->n; j++) {
            double u = pesc_xorshift_uniform(&state);
            host[j] = t->ndim == 2 ? (float)((2.0 * u - 1.0) * bound) : 1.0f - c->norm_offset;
        }
        upload_base(m, t, host);
    }
    free(host);
    if (upload_inv_freq(m, err) != 0) {
        model_free(m);
        return -1;
    }
    return 0;
}

int model_init_config(model *m, const char *config_path, pesc_backend *b, uint64_t seed,
                      pesc_error *err)
{
    hf_config shape;
    char *text = NULL;
    int rc = pesc_read_file(config_path, &text, NULL, err);
    if (rc == 0)
        rc = hfconfig_parse(&shape, text, config_path, err);
    free(text);
    if (rc == 0)
        rc = model_init_random(m, &shape, b, seed, err);
    return rc;
}

int model_unpack(model *m, pesc_error *err)
{
    pesc_backend *b = m->backend;
    if (!m->packed_block)
        return 0;
    size_t total = m->param_floats + m->packed_floats;
    float *block = backend_alloc(b, total * sizeof(float), err);
    if (!block)
        return pesc_fail_prefix(err, "the weights in fp32 for --train full (%.1f GiB) do not fit",
                                (double)total * sizeof(float) / 1073741824.0);
    param_list list = {0};
    list_params(m, &list);   /* the slots: the same tensors, in the same order */
    float *cursor = block;
    for (int i = 0; i < m->n_base_tensors; i++) {
        model_tensor *t = &m->base_tensors[i];
        backend_copy(b, cursor, t->data, t->n * sizeof(float));   /* bf16 ones widened */
        t->data = *list.slots[i] = cursor;
        cursor += model_pad(t->n);
    }
    if (m->config.tie_word_embeddings)
        m->lm_head = m->embed;
    free(list.items);
    free(list.slots);
    backend_free(b, m->param_block);
    backend_free(b, m->packed_block);
    m->param_block = block;
    m->param_floats = total;
    m->packed_block = NULL;
    m->packed_floats = 0;
    return 0;
}

void model_freeze_base(model *m)
{
    /* packed, the fp32 rest feeds a product only as a tied LM head */
    if (!m->packed_block || m->lm_head == m->embed)
        backend_freeze(m->backend, m->param_block, m->param_floats);
}

void model_base_sample(model *m, int i, float *out, size_t n)
{
    if (m->base_samples)
        memcpy(out, m->base_samples + (size_t)i * MODEL_SAMPLE, n * sizeof *out);
    else
        backend_download(m->backend, out, m->base_tensors[i].data, n * sizeof *out);
}

void model_free(model *m)
{
    if (m->backend) {
        model_free_activations(m);
        backend_free(m->backend, m->param_block);
        backend_free(m->backend, m->packed_block);
        backend_free(m->backend, m->inv_freq);
        backend_free(m->backend, m->inv_freq_long);
        backend_free(m->backend, m->inv_freq_local);
        backend_free(m->backend, m->crafted_block);
        backend_free(m->backend, m->grad_block);
        backend_free(m->backend, m->k_cache);
        backend_free(m->backend, m->v_cache);
        backend_free(m->backend, m->picks);
    }
    free(m->slot_len);
    free(m->layers);
    free(m->pesc_layers);
    free(m->base_tensors);
    free(m->base_samples);
    if (m->trainables != m->base_tensors)
        free(m->trainables);
    model_routing_free(&m->routing);
    memset(m, 0, sizeof *m);
}

void model_shift_targets(int32_t *targets, const int32_t *ids, const int32_t *labels, int T)
{
    const int32_t *src = labels ? labels : ids;
    for (int t = 0; t + 1 < T; t++)
        targets[t] = src[t + 1] < 0 ? -100 : src[t + 1];
    if (T > 0)
        targets[T - 1] = -100;
}
