/* model_forward — the passes: forward (inference and training), next-token losses, and the
 * backward pass of whatever is trainable.
 *
 * One forward serves both uses: in inference every layer writes the same activation buffers,
 * in training each layer keeps its own for the backward pass. A PESC layer runs the frozen
 * FFN once per token, then only the adapters its tokens picked (DESIGN section 1). */
#include <limits.h>
#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "model_internal.h"
#include "moe_rows.h"

/* every expert count --experts takes has its adapters' rows laid out as the backend asks */
_Static_assert(PESC_MAX_EXPERTS <= PESC_ADAPTER_ROWS_EXPERTS, "moe_rows.h takes fewer experts");

/* ---- activation buffers ------------------------------------------------------------------- */

typedef struct carver {
    void ***slots;
    size_t *counts;              /* in 4-byte elements */
    unsigned char *compact;      /* 1: from backend_alloc_compact's memory */
    int n, cap;
} carver;

static void want_in(carver *c, void *slot, size_t count, int compact)
{
    if (c->n == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 128;
        c->slots = xrealloc(c->slots, (size_t)c->cap * sizeof *c->slots);
        c->counts = xrealloc(c->counts, (size_t)c->cap * sizeof *c->counts);
        c->compact = xrealloc(c->compact, (size_t)c->cap);
    }
    c->slots[c->n] = slot;
    c->compact[c->n] = (unsigned char)compact;
    c->counts[c->n++] = count;
}

static void want(carver *c, void *slot, size_t count) { want_in(c, slot, count, 0); }

/* Only what products and the ops that may take backend_alloc_compact's memory touch goes
 * compact: the attention's normed input, q, k, v and output and their gradients, the FFN's
 * intermediates and their gradients. */
static void want_compact(carver *c, void *slot, size_t count) { want_in(c, slot, count, 1); }

static void carver_free(carver *c)
{
    free(c->slots);
    free(c->counts);
    free(c->compact);
}

static size_t max3(size_t a, size_t b, size_t c) { return a > b ? (a > c ? a : c) : (b > c ? b : c); }

/* Whether LoRA adapts site s of every layer */
static int lora_at(const model *m, int site)
{
    return m->crafted && m->pesc.lora_rank > 0 && (m->pesc.lora_targets & (1u << site));
}

/* Which buffers a layer set holds: inference (x_in and x_mid are the shared residual
 * stream), training (everything, per layer), or the one working set that every layer shares
 * under recomputation (everything but x_in, which each layer keeps for itself). */
typedef enum layer_set { SET_INFERENCE, SET_TRAINING, SET_RECOMPUTE } layer_set;

static void want_layer(model *m, carver *c, layer_acts *a, size_t N, layer_set set)
{
    const hf_config *cf = &m->config;
    size_t C = (size_t)cf->hidden_size, F = (size_t)cf->intermediate_size;
    size_t q = (size_t)cf->n_heads * cf->head_dim, kv = (size_t)cf->n_kv_heads * cf->head_dim;
    int training = set != SET_INFERENCE;
    if (set == SET_TRAINING)
        want(c, &a->x_in, N * C);
    if (training)
        want(c, &a->x_mid, N * C);
    /* the attention's normed input feeds only q, k and v's products (bf16 in bf16 math): compact
     * but where LoRA's narrow products read it too, at fp32 */
    int lora_qkv = lora_at(m, LORA_Q) || lora_at(m, LORA_K) || lora_at(m, LORA_V);
    if (!cf->no_pre_norms) {   /* (OLMo 2's blocks read the stream itself: xn1 is x_in) */
        want_in(c, &a->xn1, N * C, !lora_qkv);
        want(c, &a->rstd1, N);
    }
    /* q, k and v feed RoPE and the attention alone: compact but where LoRA adds its small delta
     * to their products' outputs (with Qwen3's norms, q and k are the norms' outputs) */
    want_in(c, &a->q, N * q, cf->qk_norm || !lora_at(m, LORA_Q));
    want_in(c, &a->k, N * kv, cf->qk_norm || !lora_at(m, LORA_K));
    want_in(c, &a->v, N * kv, !lora_at(m, LORA_V));
    if (cf->qk_norm) {
        want(c, &a->q_raw, N * q);
        want(c, &a->k_raw, N * kv);
        want(c, &a->rstd_q, N * (size_t)cf->n_heads);
        want(c, &a->rstd_k, N * (size_t)cf->n_kv_heads);
    }
    /* the attention's output feeds the o projection's product (and the attention's backward):
     * compact but where LoRA's narrow products read it too */
    want_in(c, &a->att, N * q, !lora_at(m, LORA_O));
    want(c, &a->lse, N * (size_t)cf->n_heads);
    if (!cf->no_pre_norms) {   /* (xn2 is x_mid) */
        want(c, &a->xn2, N * C);
        want(c, &a->rstd2, N);
    }
    /* compact but where LoRA adds its small delta to the product's output: rounded to bf16
     * with it, LoRA's gradients lost their 0.999 cosine with the CPU's (test_cuda_step) */
    want_in(c, &a->gate, N * F, !lora_at(m, LORA_GATE));
    want_in(c, &a->up, N * F, !lora_at(m, LORA_UP));
    want_compact(c, &a->act, N * F);
    want(c, &a->h, N * C);
    if (cf->sandwich_norms) {   /* the norms' inputs (the dense FFN's is h) */
        want(c, &a->att_out, N * C);
        want(c, &a->rstd_att, N);
        if (m->crafted)
            want(c, &a->ffn_out, N * C);
        want(c, &a->rstd_ffn, N);
    }
    if (m->crafted) {
        size_t E = (size_t)m->pesc.experts, K = (size_t)m->pesc.top_k;
        size_t R = (size_t)m->pesc.adapter_dim;
        want(c, &a->router_logits, N * E);
        want(c, &a->probs, N * E);
        want(c, &a->router_lse, N);
        want(c, &a->topk_idx, N * K);
        want(c, &a->topk_w, N * K);
        want(c, &a->perm, N * K);
        /* in the backend's own format (bf16 takes half: floats rounded up) and layout */
        size_t rb = backend_activation_bytes(m->backend);
        size_t rows = backend_adapter_rows(m->backend, N * K, (int)E);
        want(c, &a->gathered, (rows * C * rb + 3) / 4);
        want(c, &a->pre, (rows * R * rb + 3) / 4);
        want(c, &a->gelu, (rows * R * rb + 3) / 4);
        for (int s = 0; s < LORA_SITES; s++)
            if (lora_at(m, s))
                want(c, &a->lora_t[s], N * (size_t)m->pesc.lora_rank);
    }
}

static void want_gradients(model *m, carver *c, size_t N)
{
    const hf_config *cf = &m->config;
    model_activations *a = &m->act;
    size_t C = (size_t)cf->hidden_size, F = (size_t)cf->intermediate_size;
    size_t q = (size_t)cf->n_heads * cf->head_dim, kv = (size_t)cf->n_kv_heads * cf->head_dim;
    want(c, &a->dx, N * C);
    want(c, &a->dxn, N * C);
    if (m->crafted)   /* without adapters h's gradient is dx's */
        want(c, &a->dh, N * C);
    /* written by the attention's backward, turned by RoPE's, read by q, k and v's products:
     * compact but where LoRA's narrow products read them, or Qwen3's norms' backward */
    want_in(c, &a->dq, N * q, !cf->qk_norm && !lora_at(m, LORA_Q));
    want_in(c, &a->dk, N * kv, !cf->qk_norm && !lora_at(m, LORA_K));
    want_in(c, &a->dv, N * kv, !lora_at(m, LORA_V));
    if (cf->qk_norm) {
        want(c, &a->dq_raw, N * q);
        want(c, &a->dk_raw, N * kv);
    }
    /* written by the o projection's product, read by the attention's backward alone */
    want_in(c, &a->datt, N * q, !lora_at(m, LORA_O));
    want_compact(c, &a->dgate, N * F);
    want_compact(c, &a->dup, N * F);
    want_compact(c, &a->dact, N * F);
    if (m->crafted) {
        want(c, &a->drouter, N * (size_t)m->pesc.experts);
        want(c, &a->dtopk_w, N * (size_t)m->pesc.top_k);
        want(c, &a->aux_grad, (size_t)m->config.n_layers * m->pesc.experts);
        if (m->pesc.lora_rank > 0)
            want(c, &a->dlora, N * (size_t)m->pesc.lora_rank);
    }
}

void model_free_activations(model *m)
{
    model_activations *a = &m->act;
    if (a->layers)
        for (int l = 0; l < m->config.n_layers; l++)
            free(a->layers[l].offsets);
    free(a->layers);
    free(a->mask_seed);
    free(a->route_host);
    if (m->backend) {
        backend_free(m->backend, m->act_block);
        backend_free(m->backend, m->act_compact);
    }
    m->act_block = NULL;
    m->act_compact = NULL;
    memset(a, 0, sizeof *a);
}

/* The rows of logits the head computes at a time, of n: the backend's bytes of them
 * (backend_logit_bytes: 64 MiB by default), but 256 rows at least: each slice's products read
 * the whole head (V x C), and on a GPU a slice of fewer rows waits on that read rather than
 * computing (Gemma 3's 262144 tokens: 256 rows, 256 MiB, where 64 MiB would be 64 rows and
 * four times the head's weight traffic). */
static size_t logit_rows(const model *m, size_t V, size_t n)
{
    size_t rows = backend_logit_bytes(m->backend) / (V * sizeof(float));
    rows = rows < 256 ? 256 : rows;
    return rows > n ? n : rows;
}

/* Every buffer of a training or inference pass over n tokens, into c; returns the floats in
 * all (padded), *compact those of them that are compact. a->layers (n_layers) and work
 * receive the slots. */
static size_t plan_activations(model *m, carver *c, model_activations *a, layer_acts *work,
                               size_t n, int training, int recompute, size_t *compact)
{
    const hf_config *cf = &m->config;
    size_t C = (size_t)cf->hidden_size, V = (size_t)cf->vocab_size;
    size_t K = m->crafted ? (size_t)m->pesc.top_k : 1;
    size_t rows = logit_rows(m, V, n);
    a->logit_rows = (int)rows;
    size_t widest = max3(C, (size_t)cf->intermediate_size, (size_t)cf->n_heads * cf->head_dim);
    for (int l = 0; l < (training ? cf->n_layers : 1); l++) {
        if (recompute)
            want(c, &a->layers[l].x_in, n * C);
        else
            want_layer(m, c, &a->layers[l], n, training ? SET_TRAINING : SET_INFERENCE);
    }
    if (recompute)
        want_layer(m, c, work, n, SET_RECOMPUTE);
    want(c, &a->x, n * C);
    want(c, &a->xn, n * C);
    want(c, &a->rstd, n);
    want(c, &a->logits, rows * V);
    want(c, &a->losses, n);
    /* the adapters' rows (moe_adapter_forward's), or K = 1 rows of the widest product */
    size_t slots = m->crafted ? backend_adapter_rows(m->backend, n * K, m->pesc.experts) : n;
    want(c, &a->scratch, slots * widest);
    if (m->crafted)
        want(c, &a->scratch_r, slots * (size_t)m->pesc.adapter_dim);
    want(c, &a->tokens, n);
    want(c, &a->targets, n);
    want(c, &a->pos, n);
    want(c, &a->seg, n);
    if (m->crafted) {
        want(c, &a->sources, n);
        want(c, &a->route_stats, 2 * MOE_STATS(m->pesc.experts, m->pesc.top_k, MODEL_MAX_SOURCES));
    }
    if (training)
        want_gradients(m, c, n);
    size_t total = 0;
    *compact = 0;
    for (int i = 0; i < c->n; i++) {
        total += model_pad(c->counts[i]);
        if (c->compact[i])
            *compact += model_pad(c->counts[i]);
    }
    return total;
}

/* The bytes of a plan's floats, the compact ones in the backend's format */
static size_t plan_bytes(model *m, size_t total, size_t compact)
{
    return (total - compact) * sizeof(float) + compact * backend_activation_bytes(m->backend);
}

size_t model_activation_bytes(model *m, int B, int T, int training, int recompute)
{
    model_activations a = {0};
    a.layers = xcalloc((size_t)m->config.n_layers, sizeof *a.layers);
    layer_acts work = {0};
    carver c = {0};
    size_t compact;
    size_t total = plan_activations(m, &c, &a, &work, (size_t)B * T, training,
                                    training && recompute, &compact);
    carver_free(&c);
    free(a.layers);
    return plan_bytes(m, total, compact);
}

static size_t max2(size_t a, size_t b) { return a > b ? a : b; }

/* The most floats one operand of a product of a training step over B x T tokens holds,
 * frozen weights aside (an activation or gradient, a slice of the logits, a weight where it
 * trains): the CUDA backend keeps bf16 copies of such operands in bf16 math. all: any of them;
 * else the rest but a slice of the logits' gradient and the FFN's intermediates (in bf16 math
 * they live in bf16 alone: never copied). */
static size_t product_operand_floats(const model *m, int B, int T, int all)
{
    const hf_config *cf = &m->config;
    size_t N = (size_t)B * T, C = (size_t)cf->hidden_size, V = (size_t)cf->vocab_size;
    size_t q = (size_t)cf->n_heads * cf->head_dim;
    size_t widest = max3(C, (size_t)cf->intermediate_size, q);
    size_t rows = logit_rows(m, V, N);
    /* an activation or its gradient (an adapter's or LoRA's operands are narrower), a slice of
     * the logits' gradient */
    size_t most = all ? max2(N * widest, rows * V) : N * max2(C, q);
    if (m->n_train && m->trainables == m->base_tensors)   /* full mode: the weights train too */
        most = max3(most, V * C, widest * C);
    return most;
}

/* The most floats of bf16-alone memory one narrow product (a side of at most
 * BACKEND_NARROW_SIDE) reads or writes, which a backend may widen first: LoRA's products at the
 * FFN, over its compact intermediates; and where the frozen weights are in the backend's format
 * (packed), a narrow base product's weight, with its rows in and out (the head's: a slice of
 * rows in; its logits are fp32). */
static size_t narrow_widened_floats(const model *m, int B, int T)
{
    const hf_config *cf = &m->config;
    size_t N = (size_t)B * T, most = 0;
    if (m->crafted && (lora_at(m, LORA_GATE) || lora_at(m, LORA_UP) || lora_at(m, LORA_DOWN)))
        most = N * (size_t)cf->intermediate_size;
    if (!m->packed_floats)
        return most;
    size_t C = (size_t)cf->hidden_size, F = (size_t)cf->intermediate_size;
    size_t Q = (size_t)cf->n_heads * cf->head_dim, KV = (size_t)cf->n_kv_heads * cf->head_dim;
    size_t V = (size_t)cf->vocab_size, rows = logit_rows(m, V, N);
    const size_t products[][3] = {   /* inputs, outputs, the rows' floats besides the weight */
        {C, Q, N * (C + Q)}, {C, KV, N * (C + KV)}, {Q, C, N * (Q + C)}, {C, F, N * (C + F)},
        {F, C, N * (F + C)}, {C, cf->tie_word_embeddings ? 0 : V, rows * C}};
    for (size_t i = 0; i < sizeof products / sizeof *products; i++) {
        size_t in = products[i][0], out = products[i][1];
        if (out && (in <= BACKEND_NARROW_SIDE || out <= BACKEND_NARROW_SIDE))
            most = max2(most, in * out + products[i][2]);
    }
    return most;
}

size_t model_step_bytes(model *m, int B, int T, int recompute)
{
    const hf_config *cf = &m->config;
    backend_step_shape shape = {.batch = B,
                                .seq = T,
                                .heads = cf->n_heads,
                                .kv_heads = cf->n_kv_heads,
                                .head_dim = cf->head_dim,
                                .operand_floats = product_operand_floats(m, B, T, 1),
                                .other_operand_floats = product_operand_floats(m, B, T, 0),
                                .hidden = cf->hidden_size};
    if (m->crafted) {
        shape.experts = m->pesc.experts;
        shape.top_k = m->pesc.top_k;
        shape.adapter_dim = m->pesc.adapter_dim;
    }
    shape.narrow_compact_floats = narrow_widened_floats(m, B, T);
    return model_activation_bytes(m, B, T, 1, recompute) + backend_work_bytes(m->backend, &shape);
}

int model_ensure_activations(model *m, int B, int T, int training, pesc_error *err)
{
    int N = B * T, recompute = training && m->recompute;
    if (N <= m->act.capacity && m->act.per_layer == training && m->act.recompute == recompute)
        return 0;
    model_free_activations(m);
    const hf_config *cf = &m->config;
    model_activations *a = &m->act;
    a->layers = xcalloc((size_t)cf->n_layers, sizeof *a->layers);
    carver c = {0};
    layer_acts work = {0};       /* under recomputation: what every layer shares */
    size_t compact;
    size_t total = plan_activations(m, &c, a, &work, (size_t)N, training, recompute, &compact);
    m->act_block = backend_alloc(m->backend, (total - compact) * sizeof(float), err);
    if (m->act_block)
        m->act_compact = backend_alloc_compact(m->backend, compact, err);
    if (m->act_compact) {
        float *cursor[2] = {m->act_block, m->act_compact};
        for (int i = 0; i < c.n; i++) {
            *c.slots[i] = cursor[c.compact[i]];
            cursor[c.compact[i]] += model_pad(c.counts[i]);
        }
    }
    carver_free(&c);
    if (!m->act_compact) {
        model_free_activations(m);
        return -1;
    }
    for (int l = 0; l < cf->n_layers; l++) {
        layer_acts *L = &a->layers[l];
        if (!training && l > 0)
            *L = a->layers[0];   /* inference: one set for every layer */
        if (recompute) {
            float *x_in = L->x_in;
            *L = work;
            L->x_in = x_in;
        }
        if (!training)
            L->x_in = L->x_mid = a->x;
        if (cf->no_pre_norms) {   /* OLMo 2: the blocks' input is the stream itself */
            L->xn1 = L->x_in;
            L->xn2 = L->x_mid;
        }
        L->offsets = m->crafted ? xcalloc((size_t)m->pesc.experts + 1, sizeof(int)) : NULL;
    }
    a->capacity = N;
    a->bytes = plan_bytes(m, total, compact);
    a->per_layer = training;
    a->recompute = recompute;
    a->mask_seed = training ? xcalloc((size_t)cf->n_layers, sizeof *a->mask_seed) : NULL;
    if (m->crafted)
        a->route_host = xcalloc(MOE_STATS(m->pesc.experts, m->pesc.top_k, MODEL_MAX_SOURCES),
                                sizeof *a->route_host);
    return 0;
}

/* ---- linear layers with optional LoRA ----------------------------------------------------- */

typedef struct linear {
    const float *weight, *bias;  /* (out, in), (out) or NULL */
    const float *lora_a, *lora_b;   /* (rank, in), (out, rank) or NULL */
    int in, out;
} linear;

static linear site_linear(const model *m, int l, int site)
{
    const hf_config *c = &m->config;
    const model_layer *L = &m->layers[l];
    int C = c->hidden_size, F = c->intermediate_size;
    int q = c->n_heads * c->head_dim, kv = c->n_kv_heads * c->head_dim;
    linear lin = {0};
    switch (site) {
    case LORA_Q: lin = (linear){L->wq, L->bq, NULL, NULL, C, q}; break;
    case LORA_K: lin = (linear){L->wk, L->bk, NULL, NULL, C, kv}; break;
    case LORA_V: lin = (linear){L->wv, L->bv, NULL, NULL, C, kv}; break;
    case LORA_O: lin = (linear){L->wo, L->bo, NULL, NULL, q, C}; break;
    case LORA_GATE: lin = (linear){L->w_gate, NULL, NULL, NULL, C, F}; break;
    case LORA_UP: lin = (linear){L->w_up, NULL, NULL, NULL, C, F}; break;
    default: lin = (linear){L->w_down, NULL, NULL, NULL, F, C}; break;
    }
    if (m->crafted) {
        lin.lora_a = m->pesc_layers[l].lora_a[site];
        lin.lora_b = m->pesc_layers[l].lora_b[site];
    }
    return lin;
}

static float lora_scale(const model *m)
{
    return m->pesc.lora_rank > 0 ? m->pesc.lora_alpha / (float)m->pesc.lora_rank : 0.0f;
}

/* out = inp W^T + b + (alpha/rank) (inp A^T) B^T; the scaled inner product t is kept. */
static void linear_forward(model *m, int l, int site, layer_acts *a, float *out,
                           const float *inp, int N)
{
    pesc_backend *b = m->backend;
    linear lin = site_linear(m, l, site);
    matmul_forward(b, out, inp, lin.weight, lin.bias, N, lin.in, lin.out);
    if (!lin.lora_a)
        return;
    int r = m->pesc.lora_rank;
    float *t = a->lora_t[site];
    matmul_forward(b, t, inp, lin.lora_a, NULL, N, lin.in, r);
    vector_scale(b, t, lora_scale(m), (size_t)N * r);
    matmul_forward(b, m->act.scratch, t, lin.lora_b, NULL, N, r, lin.out);
    vector_axpy(b, out, m->act.scratch, 1.0f, (size_t)N * lin.out);
}

/* dinp += dout (W + s B A); gradients of whatever in W, b, A, B is trainable. */
static void linear_backward(model *m, int l, int site, layer_acts *a, float *dinp,
                            const float *dout, const float *inp, int N)
{
    pesc_backend *b = m->backend;
    linear lin = site_linear(m, l, site);
    matmul_backward(b, dinp, model_grad_of(m, lin.weight), model_grad_of(m, lin.bias), dout, inp,
                    lin.weight, N, lin.in, lin.out);
    if (!lin.lora_a)
        return;
    int r = m->pesc.lora_rank;
    float *dt = m->act.dlora;
    vector_zero(b, dt, (size_t)N * r);
    matmul_backward(b, dt, model_grad_of(m, lin.lora_b), NULL, dout, a->lora_t[site],
                    lin.lora_b, N, r, lin.out);
    vector_scale(b, dt, lora_scale(m), (size_t)N * r);
    matmul_backward(b, dinp, model_grad_of(m, lin.lora_a), NULL, dt, inp, lin.lora_a, N, lin.in, r);
}

/* ---- routing ------------------------------------------------------------------------------ */

/* The tokens the routing's means are over: the last forward's routed ones (padding is not
 * routed: moe_route_forward), 1 when there were none (every sum is 0 then). */
static double routed_tokens(const model *m)
{
    return m->routing.tokens > 0 ? (double)m->routing.tokens : 1.0;
}

/* The statistics of DESIGN section 2 and the layer's aux and z losses, from moe_group's, over
 * the routed tokens. */
static void take_routing(model *m, int l, const double *st, int S)
{
    model_routing *r = &m->routing;
    int E = m->pesc.experts, K = m->pesc.top_k, L = m->config.n_layers;
    const double *by_source = st + 4 * E + 2 + K;
    for (int e = 0; e < E; e++) {
        r->counts[(size_t)l * E + e] = (int)st[e];
        r->first[(size_t)l * E + e] = (int)st[E + e];
        r->gate_sum[(size_t)l * E + e] = st[2 * E + e];
        for (int s = 0; s < MODEL_MAX_SOURCES; s++)
            r->source_counts[((size_t)s * L + l) * E + e] =
                s < S ? (int)by_source[(size_t)s * E + e] : 0;
    }
    double n = routed_tokens(m);
    r->entropy[l] = st[4 * E] / n;
    for (int j = 0; j < K; j++)
        r->last_experts[(size_t)l * K + j] = (int32_t)st[4 * E + 2 + j];
    /* Switch loss: alpha * E * sum_i f_i P_i; z-loss: z * mean(lse^2) */
    double aux = 0.0;
    for (int e = 0; e < E; e++)
        aux += st[e] / (n * K) * (st[3 * E + e] / n);
    m->losses.aux += m->pesc.aux_coef * E * aux;
    m->losses.z += m->pesc.z_coef * st[4 * E + 1] / n;
}

/* The routing sources moe_group counts by: all of them while a layout names them, else none */
static int route_sources(const model *m) { return m->cur_sources ? MODEL_MAX_SOURCES : 0; }

/* Groups (token, slot) pairs by expert on the backend (moe_group) and starts the download of
 * the group sizes, which decide the GEMM shapes, with the statistics: the one place a layer's
 * forward waits for a GPU, collected by route_finish after the frozen FFN is queued, so that
 * the GPU has that to run meanwhile. replay: the layer's forward again for the backward pass
 * (recomputation): the same grouping and dropout mask, nothing counted twice, and no wait
 * (the sizes are the forward's). */
static void route_start(model *m, layer_acts *a, int N, int replay)
{
    model_activations *g = &m->act;
    int E = m->pesc.experts, K = m->pesc.top_k, S = route_sources(m);
    moe_group(m->backend, a->perm, g->route_stats, a->topk_idx, a->topk_w, a->probs,
              a->router_lse, S ? g->sources : NULL, N, E, K, S);
    if (!replay)
        backend_download_start(m->backend, g->route_host, g->route_stats,
                               MOE_STATS(E, K, S) * sizeof *g->route_host);
}

/* The routing of layer l taken (route_start's download) into its group bounds */
static void route_finish(model *m, int l, layer_acts *a, int dropout, int replay)
{
    int E = m->pesc.experts;
    if (!replay) {
        backend_download_wait(m->backend);
        take_routing(m, l, m->act.route_host, route_sources(m));
    }
    const int *counts = m->routing.counts + (size_t)l * E;
    int *off = a->offsets;
    off[0] = 0;
    for (int e = 0; e < E; e++)
        off[e + 1] = off[e] + counts[e];
    /* one seed per layer and pass: the adapters draw the mask from it where they apply it
     * (never stored), in the forward, the backward and a recomputed layer's replay */
    if (dropout && !replay && m->pesc.adapter_dropout > 0)
        m->act.mask_seed[l] = pesc_splitmix64(&m->rng);
}

/* The adapters' dropout rate in a pass (0: off, or not training) */
static float adapter_dropout(const model *m, int dropout)
{
    return dropout ? m->pesc.adapter_dropout : 0.0f;
}

/* ---- forward ------------------------------------------------------------------------------ */

/* The model's RMSNorm of N rows of n (Gemma's scale by 1 + weight); no weight: no norm (OLMo 2
 * has none before its blocks, whose input buffers are then the stream's own:
 * model_ensure_activations points xn1 and xn2 at x_in and x_mid) */
static void norm_forward(const model *m, float *out, float *rstd, const float *inp,
                         const float *weight, int N, int n)
{
    const hf_config *c = &m->config;
    if (!weight) {
        assert(out == inp);
        return;
    }
    rmsnorm_forward(m->backend, out, rstd, inp, weight, c->norm_offset, N, n,
                    (float)c->rms_norm_eps);
}

/* dinp += the norm's backward of dout (without a norm, dout itself) */
static void norm_backward(model *m, float *dinp, const float *dout, const float *inp,
                          const float *weight, const float *rstd, int N, int n)
{
    if (!weight)
        vector_axpy(m->backend, dinp, dout, 1.0f, (size_t)N * n);
    else
        rmsnorm_backward(m->backend, dinp, model_grad_of(m, weight), dout, inp, weight,
                         m->config.norm_offset, rstd, N, n);
}

/* The sum of a block's output y into the residual stream: x_out = x + y, where Gemma norms y
 * first (y stays as it was for the norm's backward, rstd receives the norm's; the normed rows
 * go through scratch). */
static void block_residual(model *m, float *x_out, const float *x, const float *y, float *rstd,
                           const float *post_norm, int N)
{
    int C = m->config.hidden_size;
    if (post_norm) {
        norm_forward(m, m->act.scratch, rstd, y, post_norm, N, C);
        y = m->act.scratch;
    }
    residual_forward(m->backend, x_out, x, y, (size_t)N * C);
}

/* RoPE's frequencies in layer l: Gemma's sliding layers have their own */
static const float *layer_freq(const model *m, int l)
{
    return hfconfig_layer_local_rope(&m->config, l) ? m->inv_freq_local : m->act.freq;
}

/* forward_all's past: B sequences of T tokens on their own (PAST_NONE), and (PAST_PROMPTS) their
 * first m->prompt_lens[b] tokens' keys and values into slots m->prompt_slots[b]; or one token of each
 * of B cached slots (PAST_STEP, m->step_slots); or when >= 0 one sequence of T new tokens after
 * `past` cached ones (the one-sequence cache) */
enum { PAST_NONE = -1, PAST_STEP = -2, PAST_PROMPTS = -3 };

/* Each token of a step (T 1) onto its slot's cache and attending to it, each slot as long as
 * its own: one op for them all, the slots on the backend in seg (a step packs nothing) and
 * each one's length in pos (forward_all). */
static void attention_step(model *m, int l, layer_acts *a, int N, int window)
{
    const hf_config *c = &m->config;
    size_t layer = (size_t)m->cache_rows * c->n_kv_heads * c->head_dim;
    attention_step_forward(m->backend, a->att, a->q, a->k, a->v, m->k_cache + l * layer,
                           m->v_cache + l * layer, m->act.seg, m->act.pos, N,
                           m->cache_capacity, c->n_heads, c->n_kv_heads, c->head_dim, window,
                           (float)c->attn_logit_softcapping);
}

static void attention_block(model *m, int l, layer_acts *a, int B, int T, int past)
{
    const hf_config *c = &m->config;
    pesc_backend *b = m->backend;
    int N = B * T, C = c->hidden_size, D = c->head_dim, Hq = c->n_heads, Hkv = c->n_kv_heads;
    const model_layer *L = &m->layers[l];
    norm_forward(m, a->xn1, a->rstd1, a->x_in, L->attn_norm, N, C);
    if (c->qk_norm) {   /* each head of q and k RMS-normed before RoPE (Qwen3, Gemma 3) */
        linear_forward(m, l, LORA_Q, a, a->q_raw, a->xn1, N);
        linear_forward(m, l, LORA_K, a, a->k_raw, a->xn1, N);
        /* per head, or (OLMo 2) over each token's whole q and k */
        int per_q = c->qk_norm_whole ? Hq : 1, per_k = c->qk_norm_whole ? Hkv : 1;
        norm_forward(m, a->q, a->rstd_q, a->q_raw, L->q_norm, N * Hq / per_q, D * per_q);
        norm_forward(m, a->k, a->rstd_k, a->k_raw, L->k_norm, N * Hkv / per_k, D * per_k);
    } else {
        linear_forward(m, l, LORA_Q, a, a->q, a->xn1, N);
        linear_forward(m, l, LORA_K, a, a->k, a->xn1, N);
    }
    linear_forward(m, l, LORA_V, a, a->v, a->xn1, N);
    /* longrope's cos and sin are scaled by its attention factor (1 for the other ropes), q's
     * also by Granite's attention multiplier or Gemma's query_pre_attn_scalar (times sqrt(D),
     * which the attention divides by; both rotate whole heads and have no NoPE layers) */
    int R = hfconfig_rotary_dim(c), window = hfconfig_layer_window(c, l);
    float scale = (float)hfconfig_rope_scale(c), scale_q = scale * (float)hfconfig_query_scale(c);
    const float *freq = layer_freq(m, l);
    if (hfconfig_layer_rope(c, l)) {   /* not in SmolLM3's NoPE layers */
        rope_forward(b, a->q, a->q, m->act.pos, freq, N, Hq, D, R, scale_q);
        rope_forward(b, a->k, a->k, m->act.pos, freq, N, Hkv, D, R, scale);
    }
    if (past == PAST_STEP) {
        attention_step(m, l, a, N, window);
    } else if (past >= 0) {
        size_t row = (size_t)Hkv * D, layer = (size_t)m->cache_rows * row;
        float *kc = m->k_cache + l * layer, *vc = m->v_cache + l * layer;
        backend_copy(b, kc + (size_t)past * row, a->k, (size_t)T * row * sizeof(float));
        backend_copy(b, vc + (size_t)past * row, a->v, (size_t)T * row * sizeof(float));
        attention_cached_forward(b, a->att, a->q, kc, vc, T, past, Hq, Hkv, D, window,
                                 (float)c->attn_logit_softcapping);
    } else {
        attention_forward(b, a->att, a->lse, a->q, a->k, a->v, B, T, Hq, Hkv, D, window,
                          (float)c->attn_logit_softcapping, m->act.packed ? m->act.seg : NULL);
        size_t row = (size_t)Hkv * D, layer = (size_t)m->cache_rows * row;
        size_t slot = (size_t)m->cache_capacity * row;
        for (int i = 0; past == PAST_PROMPTS && i < B; i++) {
            size_t at = (size_t)l * layer + (size_t)m->prompt_slots[i] * slot;
            size_t from = (size_t)i * T * row;
            size_t bytes = (size_t)m->prompt_lens[i] * row * sizeof(float);
            backend_copy(b, m->k_cache + at, a->k + from, bytes);
            backend_copy(b, m->v_cache + at, a->v + from, bytes);
        }
    }
    /* h is free until the FFN writes it (Gemma's att_out is kept for its norm's backward);
     * scratch holds LoRA's product */
    float *out = c->sandwich_norms ? a->att_out : a->h;
    linear_forward(m, l, LORA_O, a, out, a->att, N);
    float residual = (float)hfconfig_residual_scale(c);
    if (residual != 1.0f)   /* Granite */
        vector_scale(b, out, residual, (size_t)N * C);
    block_residual(m, a->x_mid, a->x_in, out, a->rstd_att, L->attn_post_norm, N);
}

/* x_out = x_mid + h + s * sum_k w_k U_k GELU(D_k h), with h = FFN(norm(x_mid)) once (Gemma:
 * x_mid + norm(h + s * sum ...)). */
static void ffn_block(model *m, int l, layer_acts *a, float *x_out, int N, int dropout,
                      int replay)
{
    const hf_config *c = &m->config;
    pesc_backend *b = m->backend;
    int C = c->hidden_size, F = c->intermediate_size;
    const model_layer *L = &m->layers[l];
    norm_forward(m, a->xn2, a->rstd2, a->x_mid, L->ffn_norm, N, C);
    const pesc_layer *P = m->crafted ? &m->pesc_layers[l] : NULL;
    int E = m->pesc.experts, K = m->pesc.top_k;
    if (P) {   /* routing first: its sizes come down while the frozen FFN runs */
        matmul_forward(b, a->router_logits, a->xn2, P->router, NULL, N, C, E);
        moe_route_forward(b, a->topk_idx, a->topk_w, a->probs, a->router_lse, a->router_logits,
                          route_sources(m) ? m->act.sources : NULL, N, E, K);
        route_start(m, a, N, replay);
    }
    linear_forward(m, l, LORA_GATE, a, a->gate, a->xn2, N);
    linear_forward(m, l, LORA_UP, a, a->up, a->xn2, N);
    if (c->gelu_ffn)   /* Gemma */
        geglu_forward(b, a->act, a->gate, a->up, (size_t)N * F);
    else
        swiglu_forward(b, a->act, a->gate, a->up, (size_t)N * F);
    linear_forward(m, l, LORA_DOWN, a, a->h, a->act, N);
    float residual = (float)hfconfig_residual_scale(c);
    if (!P) {
        if (residual != 1.0f)   /* Granite */
            vector_scale(b, a->h, residual, (size_t)N * C);
        block_residual(m, x_out, a->x_mid, a->h, a->rstd_ffn, L->ffn_post_norm, N);
        return;
    }
    route_finish(m, l, a, dropout, replay);
    float drop = adapter_dropout(m, dropout);
    uint64_t seed = dropout ? m->act.mask_seed[l] : 0;
    int R = m->pesc.adapter_dim;
    if (c->sandwich_norms) {
        /* Gemma: the FFN's output, h and the adapters', is normed before the residual sum */
        moe_adapter_forward(b, a->ffn_out, NULL, a->gathered, a->pre, a->gelu, m->act.scratch,
                            a->h, drop, seed, P->down, P->up, a->perm, a->offsets, a->topk_w, N,
                            K, E, C, R, m->pesc.adapter_scale);
        block_residual(m, x_out, a->x_mid, a->ffn_out, a->rstd_ffn, L->ffn_post_norm, N);
        return;
    }
    /* x_out = x_mid + h + the adapters' outputs, the residual in the adapters' last pass.
     * Granite's multiplier m scales the block's output, h and the adapters' (whose input
     * stays h): x_out = m (x_mid / m + h + adapters), exact to a rounding of x_mid. */
    const float *x = a->x_mid;
    if (residual != 1.0f) {
        if (x_out != a->x_mid)   /* (in inference they are one stream) */
            backend_copy(b, x_out, a->x_mid, (size_t)N * C * sizeof(float));
        vector_scale(b, x_out, 1.0f / residual, (size_t)N * C);
        x = x_out;
    }
    moe_adapter_forward(b, x_out, x, a->gathered, a->pre, a->gelu, m->act.scratch, a->h, drop,
                        seed, P->down, P->up, a->perm, a->offsets, a->topk_w, N, K, E, C, R,
                        m->pesc.adapter_scale);
    if (residual != 1.0f)
        vector_scale(b, x_out, residual, (size_t)N * C);
}

/* training keeps every layer's activations; dropout applies the adapter dropout (training
 * only, and only where the options ask for it). */
static int forward_all(model *m, const int32_t *tokens, const model_layout *layout, int B, int T,
                       int training, int dropout, int past, pesc_error *err)
{
    const hf_config *c = &m->config;
    int N = B * T;
    if (B <= 0 || T <= 0)
        return pesc_fail(err, "model: empty batch");
    for (int i = 0; i < N; i++)
        if (tokens[i] < 0 || tokens[i] >= c->vocab_size)
            return pesc_fail(err, "token id %d is outside the model's vocabulary (%d tokens)",
                             tokens[i], c->vocab_size);
    if (model_ensure_activations(m, B, T, training, err) != 0)
        return -1;
    model_activations *a = &m->act;
    int32_t *pos = xmalloc((size_t)N * sizeof *pos), last = 0;
    for (int i = 0; i < N; i++) {
        pos[i] = past >= 0 ? past + i : past == PAST_STEP ? m->slot_len[m->step_slots[i]]
                 : layout && layout->positions ? layout->positions[i] : i % T;
        last = pos[i] > last ? pos[i] : last;
    }
    backend_upload(m->backend, a->pos, pos, (size_t)N * sizeof *pos);
    /* longrope takes its long factors for a pass whose positions go past the original context,
     * as transformers decides per forward pass from the largest position */
    a->freq = hfconfig_rope_long(c, (long)last + 1) ? m->inv_freq_long : m->inv_freq;
    a->packed = layout && layout->doc_ids;
    if (past == PAST_STEP)   /* seg holds the step's slots (attention_step) */
        backend_upload(m->backend, a->seg, m->step_slots, (size_t)N * sizeof *m->step_slots);
    if (a->packed) {
        /* where each token's document starts within its row */
        for (int i = 0; i < N; i++) {
            int t = i % T;
            pos[i] = t > 0 && layout->doc_ids[i] == layout->doc_ids[i - 1] ? pos[i - 1] : t;
        }
        backend_upload(m->backend, a->seg, pos, (size_t)N * sizeof *pos);
    }
    m->cur_sources = layout ? layout->sources : NULL;
    a->dropout = training && dropout;
    if (m->crafted) {
        /* the sources seen (max index + 1), and each token's on the backend for moe_group */
        m->routing.n_sources = 0;
        m->routing.tokens = m->cur_sources ? 0 : N;   /* padding (source -1) is not routed */
        for (int i = 0; m->cur_sources && i < N; i++) {
            m->routing.tokens += m->cur_sources[i] >= 0;
            if (m->cur_sources[i] >= m->routing.n_sources && m->cur_sources[i] < MODEL_MAX_SOURCES)
                m->routing.n_sources = m->cur_sources[i] + 1;
        }
        if (m->cur_sources)
            backend_upload(m->backend, a->sources, m->cur_sources, (size_t)N * sizeof(int32_t));
    }
    backend_upload(m->backend, a->tokens, tokens, (size_t)N * sizeof *tokens);
    free(pos);
    m->B = B;
    m->T = T;
    m->losses = (model_losses){0};
    embedding_forward(m->backend, a->layers[0].x_in, a->tokens, m->embed, N, c->hidden_size);
    /* Gemma's embedding module scales its own output (NEFTune's noise comes after), Granite's
     * model its embeddings' (before) */
    float scale = (float)hfconfig_embedding_scale(c);
    size_t NC = (size_t)N * c->hidden_size;
    int module_scales = hfconfig_embedding_module_scales(c);
    if (scale != 1.0f && module_scales)
        vector_scale(m->backend, a->layers[0].x_in, scale, NC);
    if (training && dropout && m->neftune > 0.0f)   /* uniform, alpha / sqrt(T C) at most */
        vector_add_uniform(m->backend, a->layers[0].x_in, NC,
                           m->neftune / sqrtf((float)T * (float)c->hidden_size),
                           pesc_splitmix64(&m->rng));
    if (scale != 1.0f && !module_scales)
        vector_scale(m->backend, a->layers[0].x_in, scale, NC);
    for (int l = 0; l < c->n_layers; l++) {
        layer_acts *L = &a->layers[l];
        float *x_out = training && l + 1 < c->n_layers ? a->layers[l + 1].x_in : a->x;
        attention_block(m, l, L, B, T, past);
        ffn_block(m, l, L, x_out, N, training && dropout, 0);
    }
    norm_forward(m, a->xn, a->rstd, a->x, m->final_norm, N, c->hidden_size);
    if (hfconfig_logit_scale(c) != 1.0)   /* Granite's logits_scaling, taken before the head */
        vector_scale(m->backend, a->xn, (float)hfconfig_logit_scale(c),
                     (size_t)N * c->hidden_size);
    return 0;
}

int model_forward(model *m, const int32_t *tokens, int B, int T, pesc_error *err)
{
    return forward_all(m, tokens, NULL, B, T, 0, 0, PAST_NONE, err);
}

static int check_targets(const model *m, const int32_t *targets, int N, long long *count,
                         pesc_error *err)
{
    *count = 0;
    for (int i = 0; i < N; i++) {
        if (targets[i] >= m->config.vocab_size)
            return pesc_fail(err, "label %d is outside the model's vocabulary (%d tokens)",
                             targets[i], m->config.vocab_size);
        *count += targets[i] >= 0;
    }
    return 0;
}

/* Gemma 2's final softcap on logits downloaded from the head's product: cap tanh(x / cap), as
 * the cross-entropies take them on the backend. */
static void cap_logits(const hf_config *c, float *logits, size_t n)
{
    double cap = c->final_logit_softcapping;
    for (size_t i = 0; cap > 0 && i < n; i++)
        logits[i] = (float)(cap * tanh(logits[i] / cap));
}

/* Logits a slice of rows at a time: loss of each row, and, when scale_grad != 0, the head's
 * backward (dxn rows and the LM head's gradient when it trains). The losses stay on the backend
 * until the last slice: one wait, not one a slice (unless logits_out takes each slice's, capped
 * as the loss takes them). seq_nll (optional, B) receives each sequence's sum. */
static double head_pass(model *m, const int32_t *targets, float scale_grad, float *logits_out,
                        double *seq_nll)
{
    const hf_config *c = &m->config;
    pesc_backend *b = m->backend;
    model_activations *a = &m->act;
    int N = m->B * m->T, C = c->hidden_size, V = c->vocab_size;
    float cap = (float)c->final_logit_softcapping;
    float *losses = xmalloc((size_t)N * sizeof *losses);
    double sum = 0.0;
    for (int start = 0; start < N; start += a->logit_rows) {
        int rows = N - start < a->logit_rows ? N - start : a->logit_rows;
        const float *xn = a->xn + (size_t)start * C;
        matmul_forward(b, a->logits, xn, m->lm_head, NULL, rows, C, V);
        if (scale_grad != 0.0f)
            crossentropy_backward(b, a->logits, a->losses + start, a->logits,
                                  a->targets + start, scale_grad, rows, V, cap);
        else
            crossentropy_forward(b, a->losses + start, a->logits, a->targets + start, rows, V,
                                 cap);
        if (logits_out) {
            backend_download(b, logits_out + (size_t)start * V, a->logits,
                             (size_t)rows * V * sizeof(float));
            cap_logits(c, logits_out + (size_t)start * V, (size_t)rows * V);
        }
        if (scale_grad == 0.0f)
            continue;
        /* zeroed right before the product that adds into it, which then writes it (GPU) */
        vector_zero(b, a->dxn + (size_t)start * C, (size_t)rows * C);
        matmul_backward(b, a->dxn + (size_t)start * C, model_grad_of(m, m->lm_head), NULL,
                        a->logits, xn, m->lm_head, rows, C, V);
    }
    backend_download(b, losses, a->losses, (size_t)N * sizeof *losses);
    for (int i = 0; i < N; i++)   /* in row order, as before: the same sum */
        if (targets[i] >= 0)
            sum += losses[i];
    for (int i = 0; seq_nll && i < N; i++) {
        if (i % m->T == 0)
            seq_nll[i / m->T] = 0.0;
        if (targets[i] >= 0)
            seq_nll[i / m->T] += losses[i];
    }
    free(losses);
    return sum;
}

int model_nll(model *m, const int32_t *targets, double *nll, long long *count,
              float *logits_out, pesc_error *err)
{
    int N = m->B * m->T;
    if (N <= 0)
        return pesc_fail(err, "model_nll: no forward pass to score");
    if (check_targets(m, targets, N, count, err) != 0)
        return -1;
    backend_upload(m->backend, m->act.targets, targets, (size_t)N * sizeof *targets);
    *nll = head_pass(m, targets, 0.0f, logits_out, NULL);
    return backend_check(m->backend, err);
}

int model_nll_sequences(model *m, const int32_t *targets, double *seq_nll, pesc_error *err)
{
    int N = m->B * m->T;
    long long count;
    if (N <= 0)
        return pesc_fail(err, "model_nll_sequences: no forward pass to score");
    if (check_targets(m, targets, N, &count, err) != 0)
        return -1;
    backend_upload(m->backend, m->act.targets, targets, (size_t)N * sizeof *targets);
    head_pass(m, targets, 0.0f, NULL, seq_nll);
    return backend_check(m->backend, err);
}

int model_score(model *m, const int32_t *tokens, const int32_t *targets, int B, int T,
                double *nll, long long *count, pesc_error *err)
{
    int kept = m->act.per_layer && B * T <= m->act.capacity;
    if (forward_all(m, tokens, NULL, B, T, kept, 0, PAST_NONE, err) != 0)
        return -1;
    return model_nll(m, targets, nll, count, NULL, err);
}

int model_score_sequences(model *m, const int32_t *tokens, const int32_t *targets, int B,
                          int T, double *seq_nll, pesc_error *err)
{
    /* the run's own buffers, grown if need be (the caller keeps B x T within a step's) */
    if (forward_all(m, tokens, NULL, B, T, m->act.per_layer, 0, PAST_NONE, err) != 0)
        return -1;
    return model_nll_sequences(m, targets, seq_nll, err);
}

/* ---- backward ----------------------------------------------------------------------------- */

/* x times factor: x itself where factor is 1, else written to scratch (n floats) */
static const float *times(pesc_backend *b, float *scratch, const float *x, float factor, size_t n)
{
    if (factor == 1.0f)
        return x;
    backend_copy(b, scratch, x, n * sizeof *x);
    vector_scale(b, scratch, factor, n);
    return scratch;
}

/* The gradient of a block's output y (block_residual's) from act.dx = d loss / d x_out: dx
 * itself, or in dxn (free until the products' gradients) Granite's multiplier times dx or
 * the backward of Gemma's norm of y. */
static const float *block_output_grad(model *m, const float *y, const float *rstd,
                                      const float *post_norm)
{
    model_activations *g = &m->act;
    size_t n = (size_t)m->B * m->T * m->config.hidden_size;
    if (!post_norm)
        return times(m->backend, g->dxn, g->dx, (float)hfconfig_residual_scale(&m->config), n);
    vector_zero(m->backend, g->dxn, n);
    norm_backward(m, g->dxn, g->dx, y, post_norm, rstd, m->B * m->T, m->config.hidden_size);
    return g->dxn;
}

/* In: act.dx = d loss / d x_out of layer l. Out: act.dx = d loss / d x_in. */
static void layer_backward(model *m, int l, float loss_scale)
{
    const hf_config *c = &m->config;
    pesc_backend *b = m->backend;
    model_activations *g = &m->act;
    layer_acts *a = &g->layers[l];
    const model_layer *L = &m->layers[l];
    int N = m->B * m->T, C = c->hidden_size, F = c->intermediate_size, D = c->head_dim;
    int Hq = c->n_heads, Hkv = c->n_kv_heads;
    /* x_out = x_mid + h + adapters(h): h receives dx directly and through the adapters (the
     * adapters' backward writes both parts to dh); without adapters its gradient is dx. Each
     * zeroing of a gradient comes right before the product that adds into it first: on a GPU
     * that product writes it instead (cuda_context.zero_at). */
    /* Granite's residual multiplier m: the block's output gradient is m dx (made in dxn, free
     * until the router's product), while x_mid's residual part stays dx; Gemma's: through the
     * norm of the FFN's output */
    const float *dy = block_output_grad(m, m->crafted ? a->ffn_out : a->h, a->rstd_ffn,
                                        L->ffn_post_norm),
                *dh = dy;
    if (m->crafted) {
        const pesc_layer *P = &m->pesc_layers[l];
        dh = g->dh;
        int E = m->pesc.experts, K = m->pesc.top_k;
        moe_adapter_backward(b, g->dh, model_grad_of(m, P->down), model_grad_of(m, P->up),
                             g->dtopk_w, g->scratch, g->scratch_r, dy, a->gathered, a->pre,
                             a->gelu, adapter_dropout(m, g->dropout),
                             g->dropout ? g->mask_seed[l] : 0, P->down, P->up, a->perm,
                             a->offsets, a->topk_w, N, K, E, C, m->pesc.adapter_dim,
                             m->pesc.adapter_scale);
        moe_route_backward(b, g->drouter, g->dtopk_w, a->topk_idx, a->topk_w, a->probs,
                           a->router_lse, g->aux_grad + (size_t)l * E,
                           (float)(loss_scale * m->pesc.z_coef / routed_tokens(m)), N, E, K);
        vector_zero(b, g->dxn, (size_t)N * C);
        matmul_backward(b, g->dxn, model_grad_of(m, P->router), NULL, g->drouter, a->xn2,
                        P->router, N, C, E);
    }
    vector_zero(b, g->dact, (size_t)N * F);
    linear_backward(m, l, LORA_DOWN, a, g->dact, dh, a->act, N);
    if (c->gelu_ffn)
        geglu_backward(b, g->dgate, g->dup, g->dact, a->gate, a->up, (size_t)N * F);
    else
        swiglu_backward(b, g->dgate, g->dup, g->dact, a->gate, a->up, (size_t)N * F);
    if (!m->crafted)
        vector_zero(b, g->dxn, (size_t)N * C);
    linear_backward(m, l, LORA_GATE, a, g->dxn, g->dgate, a->xn2, N);
    linear_backward(m, l, LORA_UP, a, g->dxn, g->dup, a->xn2, N);
    norm_backward(m, g->dx, g->dxn, a->x_mid, L->ffn_norm, a->rstd2, N, C);
    /* now dx = d / d x_mid; the o projection's output gradient is m dx for Granite, Gemma's
     * through its norm (in dxn, free again until q, k and v's products) */
    dy = block_output_grad(m, a->att_out, a->rstd_att, L->attn_post_norm);
    vector_zero(b, g->datt, (size_t)N * Hq * D);
    linear_backward(m, l, LORA_O, a, g->datt, dy, a->att, N);
    attention_backward(b, g->dq, g->dk, g->dv, g->datt, a->q, a->k, a->v, a->att, a->lse, m->B,
                       m->T, Hq, Hkv, D, hfconfig_layer_window(c, l),
                       (float)c->attn_logit_softcapping, g->packed ? g->seg : NULL);
    int R = hfconfig_rotary_dim(c);
    float scale = (float)hfconfig_rope_scale(c), scale_q = scale * (float)hfconfig_query_scale(c);
    if (hfconfig_layer_rope(c, l)) {
        rope_backward(b, g->dq, g->dq, g->pos, layer_freq(m, l), N, Hq, D, R, scale_q);
        rope_backward(b, g->dk, g->dk, g->pos, layer_freq(m, l), N, Hkv, D, R, scale);
    }
    float *dq = g->dq, *dk = g->dk;   /* of the projections' outputs */
    if (c->qk_norm) {
        dq = g->dq_raw;
        dk = g->dk_raw;
        vector_zero(b, dq, (size_t)N * Hq * D);
        vector_zero(b, dk, (size_t)N * Hkv * D);
        int per_q = c->qk_norm_whole ? Hq : 1, per_k = c->qk_norm_whole ? Hkv : 1;
        norm_backward(m, dq, g->dq, a->q_raw, L->q_norm, a->rstd_q, N * Hq / per_q, D * per_q);
        norm_backward(m, dk, g->dk, a->k_raw, L->k_norm, a->rstd_k, N * Hkv / per_k,
                      D * per_k);
    }
    vector_zero(b, g->dxn, (size_t)N * C);
    linear_backward(m, l, LORA_Q, a, g->dxn, dq, a->xn1, N);
    linear_backward(m, l, LORA_K, a, g->dxn, dk, a->xn1, N);
    linear_backward(m, l, LORA_V, a, g->dxn, g->dv, a->xn1, N);
    norm_backward(m, g->dx, g->dxn, a->x_in, L->attn_norm, a->rstd1, N, C);
}

int model_train_step(model *m, const int32_t *tokens, const int32_t *targets,
                     const model_layout *layout, int B, int T, float loss_scale, int dropout,
                     model_losses *out, pesc_error *err)
{
    const hf_config *c = &m->config;
    if (!m->grad_block)
        return pesc_fail(err, "model_train_step: craft the model first (model_craft)");
    int N = B * T;
    long long count;
    if (check_targets(m, targets, N, &count, err) != 0 ||
        forward_all(m, tokens, layout, B, T, 1, dropout, PAST_NONE, err) != 0)
        return -1;
    model_activations *a = &m->act;
    pesc_backend *b = m->backend;
    backend_upload(b, a->targets, targets, (size_t)N * sizeof *targets);
    /* nothing to predict (every label ignored): the routing losses still train */
    float ce_scale = count ? loss_scale / (float)count : 0.0f;
    if (ce_scale == 0.0f)
        vector_zero(b, a->dxn, (size_t)N * c->hidden_size);
    double nll = head_pass(m, targets, ce_scale, NULL, NULL);
    m->losses.ce = count ? nll / (double)count : 0.0;
    m->losses.targets = count;
    vector_zero(b, a->dx, (size_t)N * c->hidden_size);
    if (hfconfig_logit_scale(c) != 1.0)   /* Granite's logits_scaling */
        vector_scale(b, a->dxn, (float)hfconfig_logit_scale(c), (size_t)N * c->hidden_size);
    norm_backward(m, a->dx, a->dxn, a->x, m->final_norm, a->rstd, N, c->hidden_size);
    if (m->crafted) {
        /* d aux / d sum_n probs[n][i] = alpha * E * f_i / n per layer (P_i = that sum / n),
         * f from this forward's counts, n its routed tokens: one upload for every layer, not
         * one inside each layer's backward */
        int E = m->pesc.experts, K = m->pesc.top_k;
        size_t n = (size_t)c->n_layers * E;
        double routed = routed_tokens(m);
        float *aux_grad = xmalloc(n * sizeof *aux_grad);
        for (size_t i = 0; i < n; i++)
            aux_grad[i] = (float)(loss_scale * m->pesc.aux_coef * E * m->routing.counts[i] /
                                  (routed * K) / routed);
        backend_upload(b, a->aux_grad, aux_grad, n * sizeof *aux_grad);
        free(aux_grad);
    }
    for (int l = c->n_layers - 1; l >= 0; l--) {
        if (a->recompute && l + 1 < c->n_layers) {
            /* the shared set holds the top layer's activations; the others run again from
             * their inputs (the output goes to x, which the final norm no longer needs) */
            attention_block(m, l, &a->layers[l], B, T, -1);
            ffn_block(m, l, &a->layers[l], a->x, N, dropout, 1);
        }
        layer_backward(m, l, loss_scale);
    }
    float *dembed = model_grad_of(m, m->embed);
    if (dembed && hfconfig_embedding_scale(c) != 1.0)   /* Granite */
        vector_scale(b, a->dx, (float)hfconfig_embedding_scale(c), (size_t)N * c->hidden_size);
    if (dembed)
        embedding_backward(b, dembed, a->dx, a->tokens, N, c->hidden_size);
    if (out)
        *out = m->losses;
    return backend_check(b, err);   /* a device error surfaces here, once per step */
}

/* ---- generation --------------------------------------------------------------------------- */

int model_cache_reset(model *m, int capacity, pesc_error *err)
{
    return model_cache_keep(m, 0, capacity, err);
}

static size_t cache_row_bytes(const model *m)
{
    return (size_t)m->config.n_kv_heads * m->config.head_dim * sizeof(float);
}

/* Room for rows per layer, the cache's contents forgotten. */
static int cache_alloc(model *m, size_t rows, pesc_error *err)
{
    model_cache_release(m);
    size_t bytes = (size_t)m->config.n_layers * rows * cache_row_bytes(m);
    m->k_cache = backend_alloc(m->backend, bytes, err);
    m->v_cache = m->k_cache ? backend_alloc(m->backend, bytes, err) : NULL;
    if (!m->v_cache) {
        backend_free(m->backend, m->k_cache);
        m->k_cache = NULL;
        return -1;
    }
    m->cache_rows = (int)rows;
    return 0;
}

void model_cache_release(model *m)
{
    backend_free(m->backend, m->k_cache);
    backend_free(m->backend, m->v_cache);
    m->k_cache = m->v_cache = NULL;
    m->cache_rows = m->cache_capacity = m->cache_len = m->cache_slots = 0;
}

int model_cache_keep(model *m, int keep, int capacity, pesc_error *err)
{
    if (keep < 0 || keep > m->cache_len)
        return pesc_fail(err, "model_cache_keep: %d of %d cached tokens", keep, m->cache_len);
    /* one sequence again after slots: slot 0's rows are where the sequence's are */
    m->cache_slots = 1;
    m->cache_capacity = m->cache_rows;
    if (capacity <= m->cache_capacity) {
        m->cache_len = keep;
        return 0;
    }
    if (keep == 0) {   /* nothing to move: the old cache goes first */
        if (cache_alloc(m, (size_t)capacity, err) != 0)
            return -1;
        m->cache_capacity = capacity;
        m->cache_slots = 1;
        return 0;
    }
    /* a larger cache: each layer's first keep rows move over (a layer's rows are capacity
     * apart) */
    const hf_config *c = &m->config;
    size_t row = cache_row_bytes(m);
    size_t bytes = (size_t)c->n_layers * capacity * row;
    float *k = backend_alloc(m->backend, bytes, err);
    float *v = k ? backend_alloc(m->backend, bytes, err) : NULL;
    if (!v) {
        backend_free(m->backend, k);
        return -1;
    }
    for (int l = 0; l < c->n_layers; l++) {
        size_t to = (size_t)l * capacity * row, from = (size_t)l * m->cache_rows * row;
        backend_copy(m->backend, (char *)k + to, (const char *)m->k_cache + from, keep * row);
        backend_copy(m->backend, (char *)v + to, (const char *)m->v_cache + from, keep * row);
    }
    backend_free(m->backend, m->k_cache);
    backend_free(m->backend, m->v_cache);
    m->k_cache = k;
    m->v_cache = v;
    m->cache_rows = m->cache_capacity = capacity;
    m->cache_len = keep;
    return 0;
}

int model_cache_slots(model *m, int slots, int capacity, pesc_error *err)
{
    if (slots < 1 || capacity < 1 || (size_t)slots * capacity > INT_MAX)
        return pesc_fail(err, "model_cache_slots: %d slots of %d tokens", slots, capacity);
    size_t rows = (size_t)slots * capacity;
    if (rows > (size_t)m->cache_rows && cache_alloc(m, rows, err) != 0)
        return -1;
    m->cache_slots = slots;
    m->cache_capacity = capacity;
    m->cache_len = 0;
    m->slot_len = xrealloc(m->slot_len, (size_t)slots * sizeof *m->slot_len);
    memset(m->slot_len, 0, (size_t)slots * sizeof *m->slot_len);
    return 0;
}

int model_cache_slots_fitting(model *m, int capacity, int max)
{
    /* a quarter of what is free, or 1 GiB where the backend cannot say */
    backend_memory mem;
    size_t budget = backend_memory_info(m->backend, &mem) == 0 && mem.available > 0
                    ? mem.available / 4 : (size_t)1 << 30;
    size_t each = 2 * (size_t)m->config.n_layers * capacity * cache_row_bytes(m);
    size_t fit = each > 0 ? budget / each : (size_t)max;
    return fit < 1 ? 1 : fit > (size_t)max ? max : (int)fit;
}

int model_answer_room(const model *m, int n, int wanted, pesc_error *err)
{
    int context = m->config.max_position_embeddings;
    if (context <= 0)
        return wanted;
    if (n >= context)
        return pesc_fail(err, "the prompt is %d tokens, and the model's context "
                         "(max_position_embeddings) is %d: shorten it", n, context);
    return wanted < context - n ? wanted : context - n;
}

/* The logits (V) of rows (n) of the final norm's output, into logits (host), a slice of
 * logit_rows at a time, capped as the model caps them. */
static int last_logits(model *m, int first, int n, float *logits, pesc_error *err)
{
    int C = m->config.hidden_size, V = m->config.vocab_size, slice = m->act.logit_rows;
    for (int start = 0; start < n; start += slice) {
        int rows = n - start < slice ? n - start : slice;
        matmul_forward(m->backend, m->act.logits, m->act.xn + (size_t)(first + start) * C,
                       m->lm_head, NULL, rows, C, V);
        backend_download(m->backend, logits + (size_t)start * V, m->act.logits,
                         (size_t)rows * V * sizeof(float));
    }
    if (backend_check(m->backend, err) != 0)
        return -1;
    cap_logits(&m->config, logits, (size_t)n * V);
    return 0;
}

/* A pass of N tokens with no gradient: in the run's own training buffers when they hold N (as
 * held-out scoring between steps does), not in new ones of the inference layout that the next
 * step would replace again. */
static int kept_buffers(const model *m, int N)
{
    return m->act.per_layer && N <= m->act.capacity;
}

int model_decode(model *m, const int32_t *tokens, int n, float *logits, int32_t *experts,
                 pesc_error *err)
{
    const hf_config *c = &m->config;
    if (n <= 0)
        return pesc_fail(err, "model_decode: no tokens");
    if (m->cache_slots > 1)
        return pesc_fail(err, "model_decode: the cache holds slots (model_cache_reset first)");
    if (m->cache_len + n > m->cache_capacity)
        return pesc_fail(err, "the generation is %d tokens long; the cache holds %d",
                         m->cache_len + n, m->cache_capacity);
    if (forward_all(m, tokens, NULL, 1, n, kept_buffers(m, n), 0, m->cache_len, err) != 0)
        return -1;
    m->cache_len += n;
    if (last_logits(m, n - 1, 1, logits, err) != 0)   /* of the last position only */
        return -1;
    if (experts && m->crafted) {
        int K = m->pesc.top_k;
        /* inference shares one set of buffers across layers: routing kept by route_finish */
        memcpy(experts, m->routing.last_experts, (size_t)c->n_layers * K * sizeof *experts);
    }
    return 0;
}

int model_decode_prompts(model *m, const int *slots, const int32_t *tokens, const int *lens,
                         int n, int T, float *logits, pesc_error *err)
{
    if (n <= 0 || T <= 0 || !m->slot_len)
        return pesc_fail(err, "model_decode_prompts: %d prompts of %d tokens into %d slots", n,
                         T, m->slot_len ? m->cache_slots : 0);
    for (int i = 0; i < n; i++) {
        if (slots[i] < 0 || slots[i] >= m->cache_slots)
            return pesc_fail(err, "model_decode_prompts: slot %d of %d", slots[i],
                             m->cache_slots);
        for (int j = 0; j < i; j++)
            if (slots[j] == slots[i])
                return pesc_fail(err, "model_decode_prompts: two prompts into slot %d",
                                 slots[i]);
        if (lens[i] < 1 || lens[i] > T || lens[i] > m->cache_capacity)
            return pesc_fail(err, "model_decode_prompts: a prompt of %d tokens (rows of %d, "
                             "slots of %d)", lens[i], T, m->cache_capacity);
    }
    /* a pass takes one RoPE table (longrope's long factors past the original context, as
     * transformers picks them for its longest): a prompt that would not take the pass's, as
     * it does alone, runs alone */
    int V = m->config.vocab_size;
    for (int i = 0; n > 1 && i < n; i++)
        if (hfconfig_rope_long(&m->config, lens[i]) != hfconfig_rope_long(&m->config, T)) {
            for (int j = 0; j < n; j++)
                if (model_decode_prompts(m, slots + j, tokens + (size_t)j * T, lens + j, 1,
                                         lens[j], logits + (size_t)j * V, err) != 0)
                    return -1;
            return 0;
        }
    m->prompt_slots = slots;
    m->prompt_lens = lens;
    int rc = forward_all(m, tokens, NULL, n, T, kept_buffers(m, n * T), 0, PAST_PROMPTS, err);
    m->prompt_slots = NULL;
    m->prompt_lens = NULL;
    if (rc != 0)
        return -1;
    for (int i = 0; i < n; i++) {
        m->slot_len[slots[i]] = lens[i];
        if (last_logits(m, i * T + lens[i] - 1, 1, logits + (size_t)i * m->config.vocab_size,
                        err) != 0)
            return -1;
    }
    return 0;
}

/* The greedy picks of rows (n) of the final norm's output into picks (host), a slice of
 * logit_rows at a time: argmax_rows on the backend. A final softcap is applied on the host
 * (cap_logits), where its rounding may tie two logits the backend would tell apart: then the
 * logits come to the host and are picked there, as sampler_next's greedy picks them. */
static int last_picks(model *m, int n, int32_t *picks, pesc_error *err)
{
    int C = m->config.hidden_size, V = m->config.vocab_size, slice = m->act.logit_rows;
    if (m->config.final_logit_softcapping > 0) {
        float *logits = xmalloc((size_t)n * V * sizeof *logits);
        int rc = last_logits(m, 0, n, logits, err);
        for (int r = 0; rc == 0 && r < n; r++)
            if ((picks[r] = pesc_argmax(logits + (size_t)r * V, V)) < 0)
                rc = model_fail_logits(m, err);
        free(logits);
        return rc;
    }
    if (n > m->pick_rows) {
        backend_free(m->backend, m->picks);
        m->pick_rows = 0;
        if (!(m->picks = backend_alloc(m->backend, (size_t)n * sizeof *m->picks, err)))
            return -1;
        m->pick_rows = n;
    }
    for (int start = 0; start < n; start += slice) {
        int rows = n - start < slice ? n - start : slice;
        matmul_forward(m->backend, m->act.logits, m->act.xn + (size_t)start * C, m->lm_head,
                       NULL, rows, C, V);
        argmax_rows(m->backend, m->picks + start, m->act.logits, rows, V);
    }
    backend_download(m->backend, picks, m->picks, (size_t)n * sizeof *picks);
    if (backend_check(m->backend, err) != 0)
        return -1;
    for (int r = 0; r < n; r++)   /* argmax_rows' -1: no finite largest logit */
        if (picks[r] < 0)
            return model_fail_logits(m, err);
    return 0;
}

const char *model_device_advice(const model *m)
{
    return strcmp(backend_name(m->backend), "cpu") == 0
               ? ""
               : "; try --backend cpu to rule out the device";
}

int model_fail_logits(const model *m, pesc_error *err)
{
    return pesc_fail(err, "the model%s%s gives logits that are not finite (NaN or infinity): "
                     "its weights, or adapters, overflow on this input; check them (a "
                     "conversion to float16 or another dtype can break them)%s",
                     m->source[0] ? " " : "", m->source, model_device_advice(m));
}

/* model_decode_step's pass, its logits or its greedy picks after (one of them NULL). */
static int decode_step(model *m, const int *slots, const int32_t *tokens, int n, float *logits,
                       int32_t *picks, pesc_error *err)
{
    if (n <= 0 || !m->slot_len)
        return pesc_fail(err, "model_decode_step: %d slots", n);
    for (int i = 0; i < n; i++) {
        if (slots[i] < 0 || slots[i] >= m->cache_slots)
            return pesc_fail(err, "model_decode_step: slot %d of %d", slots[i], m->cache_slots);
        if (m->slot_len[slots[i]] + 1 > m->cache_capacity)
            return pesc_fail(err, "the generation is %d tokens long; a slot of the cache holds "
                             "%d", m->slot_len[slots[i]] + 1, m->cache_capacity);
        for (int j = 0; j < i; j++)
            if (slots[j] == slots[i])
                return pesc_fail(err, "model_decode_step: slot %d twice", slots[i]);
    }
    /* one RoPE table a pass, as in model_decode_prompts: slots on either side of longrope's
     * original context step apart, each as it would alone */
    int V = m->config.vocab_size, lo = INT_MAX, hi = 0;
    for (int i = 0; i < n; i++) {
        int len = m->slot_len[slots[i]] + 1;
        lo = len < lo ? len : lo;
        hi = len > hi ? len : hi;
    }
    if (hfconfig_rope_long(&m->config, lo) != hfconfig_rope_long(&m->config, hi)) {
        for (int i = 0; i < n; i++)
            if (decode_step(m, slots + i, tokens + i, 1, logits ? logits + (size_t)i * V : NULL,
                            picks ? picks + i : NULL, err) != 0)
                return -1;
        return 0;
    }
    m->step_slots = slots;
    int rc = forward_all(m, tokens, NULL, n, 1, kept_buffers(m, n), 0, PAST_STEP, err);
    m->step_slots = NULL;
    if (rc != 0)
        return -1;
    for (int i = 0; i < n; i++)
        m->slot_len[slots[i]]++;
    return picks ? last_picks(m, n, picks, err) : last_logits(m, 0, n, logits, err);
}

int model_decode_step(model *m, const int *slots, const int32_t *tokens, int n, float *logits,
                      pesc_error *err)
{
    return decode_step(m, slots, tokens, n, logits, NULL, err);
}

int model_decode_step_greedy(model *m, const int *slots, const int32_t *tokens, int n,
                             int32_t *picks, pesc_error *err)
{
    return decode_step(m, slots, tokens, n, NULL, picks, err);
}
