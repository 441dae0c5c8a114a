/* test_cuda_step — whole training steps on the CUDA backend against the CPU backend: the same
 * random model (Llama, and Qwen3 with its per-head norms of q and k), crafted the same way, on
 * the same batch, in each of the crafting and layout cases below. The losses must agree within
 * 1e-2 relative and the gradients of every trainable (one vector) must have cosine >= 0.999,
 * each kind of trainable alone 0.9997; two identical GPU runs of several AdamW steps must give
 * identical losses. Exit 77 without a GPU. */
#include <string.h>

#include "gpu_test.h"
#include "model.h"
#include "optim.h"

enum { BATCH = 2, SEQ = 64, MAX_SEQ = 160 };

/* One whole-step comparison: how the model is built and crafted, and the batch's layout. */
typedef struct {
    const char *tag;
    int full;                    /* --train full (else PESC adapters and routers) */
    int lora_rank;               /* with the PESC trainables */
    unsigned lora_targets;       /* bit (1 << LORA_*) per site; 0: all seven */
    int qk_norm;                 /* Qwen3's RMS norm of every head of q and k */
    int window;                  /* sliding window, 0 none */
    int packed;                  /* documents of 24 tokens in a row */
    int recompute;               /* the backward replays each layer's forward */
    int heads, kv_heads, head_dim;   /* 0: 4 heads of 32 on 2 of k and v */
    int micro;                   /* micro-batches whose gradients add up (0: one) */
    int seq;                     /* tokens a row, MAX_SEQ at most (0: SEQ) */
    int rotary;                  /* Phi-4-mini's partial RoPE, longrope-scaled (0: whole heads) */
    int nope;                    /* SmolLM3: layer nope - 1 without RoPE (0: none) */
    int granite;                 /* Granite's embedding, residual, attention, logits factors */
    int gemma;                   /* 3, Gemma 3: (1 + w) norms, four a layer, QK-norm, GELU-tanh
                                  * FFN, window 20 and its own RoPE in layer 0 alone; 2, Gemma
                                  * 2: no QK-norm, one RoPE, the scores and logits softcapped */
    int olmo2;                   /* OLMo 2: norms after the blocks alone, q and k normed whole */
    int vocab;                   /* 0: 512 (the tokens stay below 512) */
} step_case;

/* Tokens whose k-th and (k+1)-th router logits nearly tie go to other experts on the GPU,
 * whose products round differently: one such token moves 1 - cosine by about 1e-3, more than
 * any path's precision (before this, in tf32 math, PESC without LoRA gave 4e-4 to 1.4e-3 in
 * 7 of 10 runs over windows, packing, recompute and two attention paths, 6e-9 now; in fp32
 * math none passed 1e-12). So the routing is made decisive: token t's embedding has 8 at
 * column t % E and 6 at another of the first E columns, router row e reads column e of those
 * E alone, at 0.5, and LoRA's B starts at a tenth of the others' scale (build). On the CPU, in
 * every case here and both layers, the second chosen logit is 2.1 or more and every other 0.9
 * or less, against ~1e-2 of bf16's error (compare_step checks the gap, routing_margin; without
 * this it is 1.7e-4 to 7.9e-4). The routing still depends on the token, and every expert gets
 * rows. */
static void decisive_routing(model *m, pesc_backend *b)
{
    int V = m->config.vocab_size, C = m->config.hidden_size, E = m->pesc.experts;
    float *embed = malloc((size_t)V * C * sizeof *embed);
    backend_download(b, embed, m->embed, (size_t)V * C * sizeof *embed);
    for (int t = 0; t < V; t++) {
        int first = t % E, second = (first + 1 + (t / E) % (E - 1)) % E;
        embed[(size_t)t * C + first] += 8.0f;
        embed[(size_t)t * C + second] += 6.0f;
    }
    backend_upload(b, m->embed, embed, (size_t)V * C * sizeof *embed);
    free(embed);
    float *router = malloc((size_t)E * C * sizeof *router);
    for (int l = 0; l < m->config.n_layers; l++) {
        float *w = m->pesc_layers[l].router;   /* (E, C) */
        backend_download(b, router, w, (size_t)E * C * sizeof *router);
        for (int e = 0; e < E; e++)
            for (int j = 0; j < E; j++)
                router[(size_t)e * C + j] = j == e ? 0.5f : 0.0f;
        backend_upload(b, w, router, (size_t)E * C * sizeof *router);
    }
    free(router);
}

/* The CPU's smallest gap, over every layer and token of its last step, between the K-th and
 * the (K+1)-th largest router logit (host memory: the CPU backend's). */
static double routing_margin(const model *m, int N)
{
    enum { MAX_E = 16 };
    int E = m->pesc.experts, K = m->pesc.top_k;
    if (E > MAX_E || K >= E)
        return 0.0;   /* more experts than this reads: the check fails, naming the margin */
    double margin = INFINITY;
    for (int l = 0; l < m->config.n_layers; l++)
        for (int n = 0; n < N; n++) {
            float r[MAX_E];
            memcpy(r, m->act.layers[l].router_logits + (size_t)n * E, E * sizeof *r);
            for (int i = 0; i <= K; i++)   /* the K + 1 largest first, in order */
                for (int j = i + 1; j < E; j++)
                    if (r[j] > r[i]) {
                        float x = r[i];
                        r[i] = r[j];
                        r[j] = x;
                    }
            margin = fmin(margin, r[K - 1] - r[K]);
        }
    return margin;
}

static void build(model *m, pesc_backend *b, const step_case *sc, pesc_error *err)
{
    int full = sc->full, qk_norm = sc->qk_norm;
    hf_config c = {.vocab_size = 512, .hidden_size = 128, .intermediate_size = 352,
                   .n_layers = 2, .n_heads = 4, .n_kv_heads = 2, .head_dim = 32,
                   .rms_norm_eps = 1e-5, .rope_theta = 10000.0, .bos_token_id = -1,
                   .eos_token_id = -1};
    c.qk_norm = qk_norm;
    c.sliding_window = sc->window;
    if (sc->vocab)
        c.vocab_size = sc->vocab;
    if (sc->heads) {
        c.n_heads = sc->heads;
        c.n_kv_heads = sc->kv_heads;
        c.head_dim = sc->head_dim;
    }
    if (sc->rotary) {   /* the first `rotary` of each head's values, frequencies and scale */
        c.rotary_dim = sc->rotary;
        c.rope_type = HF_ROPE_LONGROPE;
        c.rope_original_max_position = 4096;
        c.rope_attention_factor = 1.2;
        for (int i = 0; i < sc->rotary / 2; i++)
            c.rope_short_factor[i] = c.rope_long_factor[i] = 1.0f + 0.25f * (float)i;
    }
    if (sc->nope)
        c.nope[sc->nope - 1] = 1;
    if (sc->granite) {
        c.embedding_multiplier = 12.0;
        c.residual_multiplier = 0.22;
        c.attention_multiplier = 1.0 / 64.0;
        c.logits_scaling = 8.0;
    }
    if (sc->gemma) {   /* layer 1 global (Gemma 3's at rope_theta and linear scaling) */
        c.sandwich_norms = c.gelu_ffn = 1;
        c.norm_offset = 1.0f;
        c.sliding_window = 20;
        c.global[1] = 1;
        c.embedding_multiplier = sqrt(128.0);
        c.attention_multiplier = 1.0 / sqrt(24.0);
    }
    if (sc->gemma == 3) {
        c.qk_norm = 1;
        c.rope_theta = 1e6;
        c.rope_type = HF_ROPE_LINEAR;
        c.rope_factor = 2.0;
        c.rope_local_theta = 10000.0;
    }
    if (sc->gemma == 2) {   /* low enough to bend this model's scores and logits (loss 1% off) */
        c.attn_logit_softcapping = 0.5;
        c.final_logit_softcapping = 1.0;
    }
    if (sc->olmo2)
        c.qk_norm = c.qk_norm_whole = c.sandwich_norms = c.no_pre_norms = 1;
    snprintf(c.architecture, sizeof c.architecture, "%s",
             sc->granite        ? "GraniteForCausalLM"
             : sc->gemma == 3   ? "Gemma3ForCausalLM"
             : sc->gemma == 2   ? "Gemma2ForCausalLM"
             : sc->olmo2        ? "Olmo2ForCausalLM"
             : qk_norm          ? "Qwen3ForCausalLM"
                                : "LlamaForCausalLM");
    pesc_options o;
    pesc_options_default(&o);
    o.experts = 4;
    o.top_k = 2;
    o.adapter_dim = 16;
    o.z_coef = 1e-3f;
    if (full)
        o.mode = TRAIN_FULL;
    o.lora_rank = sc->lora_rank;
    if (sc->lora_targets)
        o.lora_targets = sc->lora_targets;
    if (model_init_random(m, &c, b, 5, err) != 0 || model_craft(m, &o, 9, err) != 0)
        gpu_test_die(err);
    m->recompute = sc->recompute;
    if (full)
        return;
    /* adapters' up and LoRA's B start at zero: give every trainable the same random values
     * on both backends so that each gradient is nonzero */
    uint64_t state = 77;
    for (int i = 0; i < m->n_trainables; i++) {
        const model_tensor *t = &m->trainables[i];
        float *host = malloc(t->n * sizeof *host);
        double bound = 1.0 / sqrt((double)(t->ndim == 2 ? t->shape[1] : 1));
        if (strstr(t->name, ".lora_B."))   /* LoRA's output at a tenth: decisive_routing */
            bound *= 0.1;
        for (size_t j = 0; j < t->n; j++) {
            state = state * 6364136223846793005ull + 1442695040888963407ull;
            host[j] = (float)(((double)(state >> 11) / 9007199254740992.0 * 2.0 - 1.0) * bound);
        }
        backend_upload(b, t->data, host, t->n * sizeof *host);
        free(host);
    }
    decisive_routing(m, b);
}

/* BATCH rows of T tokens; documents of 24 tokens where packed */
static void batch(int32_t *tokens, int32_t *targets, int32_t *doc_ids, int T, uint64_t seed)
{
    for (int i = 0; i < BATCH * T; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        tokens[i] = (int32_t)((seed >> 33) % 512);
        doc_ids[i] = (i % T) / 24;
    }
    for (int b = 0; b < BATCH; b++)
        model_shift_targets(targets + b * T, tokens + b * T, NULL, T);
}

/* bf16 math keeps q, k, v and the attention's output in bf16 alone but where LoRA adds to
 * their products: here all four compact (pesc, full), none, and mixtures (at q and v: k alone
 * compact; at o: the output alone in fp32) */
#define QV ((1u << LORA_Q) | (1u << LORA_V))
static const step_case cases[] = {
    {.tag = "pesc+lora", .lora_rank = 4},
    {.tag = "pesc+lora, packed", .lora_rank = 4, .packed = 1},
    {.tag = "full", .full = 1},
    {.tag = "pesc+lora, qwen3", .lora_rank = 4, .qk_norm = 1},   /* rmsnorm on N x H rows of D */
    {.tag = "full, qwen3", .full = 1, .qk_norm = 1},   /* and the norms' own gradients */
    {.tag = "pesc"},   /* the default crafting */
    {.tag = "pesc, window 20, packed, recompute", .window = 20, .packed = 1, .recompute = 1},
    {.tag = "pesc+lora at q and v", .lora_rank = 4, .lora_targets = QV},
    {.tag = "pesc+lora at o, recompute", .lora_rank = 4, .lora_targets = 1u << LORA_O,
     .recompute = 1},
    /* TinyLlama's head size and its 8 query heads to one of k and v */
    {.tag = "pesc, 8 heads of 64 on 1, packed", .packed = 1, .heads = 8, .kv_heads = 1,
     .head_dim = 64},
    /* every gradient's first write after the zeroing writes, the later ones add */
    {.tag = "pesc+lora, 2 micro-batches", .lora_rank = 4, .micro = 2},
    {.tag = "full, qwen3, 2 micro-batches", .full = 1, .qk_norm = 1, .micro = 2},
    /* keys in three tiles of flash's 64, whole ones and cut ones; and a window across them */
    {.tag = "pesc+lora at q and v, 150 tokens", .lora_rank = 4, .lora_targets = QV, .seq = 150},
    {.tag = "pesc, 150 tokens, window 90", .window = 90, .seq = 150},
    /* RoPE on 16 of a head's 32 values at scaled cos and sin, and none in layer 0 */
    {.tag = "pesc+lora, longrope on 16 of 32, NoPE 0, recompute", .lora_rank = 4,
     .rotary = 16, .nope = 1, .recompute = 1},
    /* Granite's multipliers, the residual one around the adapters too */
    {.tag = "pesc+lora, granite, packed", .lora_rank = 4, .granite = 1, .packed = 1},
    {.tag = "full, granite", .full = 1, .granite = 1},
    /* Gemma 3's layers: the norms' (1 + w), the FFN's output normed with the adapters' */
    {.tag = "pesc+lora, gemma3, packed", .lora_rank = 4, .gemma = 3, .packed = 1},
    {.tag = "pesc, gemma3, recompute", .gemma = 3, .recompute = 1},
    {.tag = "full, gemma3", .full = 1, .gemma = 3},
    /* Gemma 2's: the scores and the logits softcapped, and their gradients through the caps */
    {.tag = "pesc+lora, gemma2, packed", .lora_rank = 4, .gemma = 2, .packed = 1},
    /* OLMo 2's: the router and the projections read the stream itself */
    {.tag = "pesc+lora, olmo2, recompute", .lora_rank = 4, .olmo2 = 1, .recompute = 1},
    {.tag = "full, olmo2", .full = 1, .olmo2 = 1},
    /* a vocabulary past 65536: the head's logits in slices of 256 rows (260 tokens here: a
     * slice of 4 after the first) */
    {.tag = "pesc+lora, 66000 tokens, the head in slices", .lora_rank = 4, .vocab = 66000,
     .seq = 130},
};

enum { ROUTERS, ADAPTERS, LORA, NORMS, MATRICES, KINDS };
static const char *const kind_names[KINDS] = {"routers", "adapters", "LoRA", "norms",
                                              "matrices"};

static int kind_of(const model_tensor *t)
{
    return strstr(t->name, ".router.") ? ROUTERS
           : strstr(t->name, ".lora_") ? LORA
           : strstr(t->name, ".moe_adapter.") ? ADAPTERS
           : t->ndim == 1 ? NORMS : MATRICES;   /* --train full: the base's */
}

static void compare_step(pesc_backend *cpu, pesc_backend *gpu, const step_case *sc)
{
    pesc_error err;
    model mc, mg;
    int full = sc->full, packed = sc->packed;
    build(&mc, cpu, sc, &err);
    build(&mg, gpu, sc, &err);
    int T = sc->seq ? sc->seq : SEQ;
    int32_t tokens[BATCH * MAX_SEQ], targets[BATCH * MAX_SEQ], docs[BATCH * MAX_SEQ];
    model_layout layout = {.doc_ids = docs};
    model_losses lc, lg;   /* the last micro-batch's */
    model_zero_grad(&mc);
    model_zero_grad(&mg);
    int micro = sc->micro ? sc->micro : 1;
    for (int i = 0; i < micro; i++) {
        batch(tokens, targets, docs, T, 123 + i);
        if (model_train_step(&mc, tokens, targets, packed ? &layout : NULL, BATCH, T,
                             1.0f / micro, 0, &lc, &err) != 0 ||
            model_train_step(&mg, tokens, targets, packed ? &layout : NULL, BATCH, T,
                             1.0f / micro, 0, &lg, &err) != 0 ||
            backend_check(gpu, &err) != 0)
            gpu_test_die(&err);
    }
    const char *tag = sc->tag;
    char what[96];
    if (!full && !sc->recompute) {   /* (recomputation keeps no router logits) */
        double margin = routing_margin(&mc, BATCH * T);
        snprintf(what, sizeof what, "%s: the CPU's routing margin", tag);
        gpu_test_verdict(margin >= 1.0, what, margin, "decisive_routing, >= 1");
    }
    double rel = fabs(lg.ce - lc.ce) / fabs(lc.ce);
    snprintf(what, sizeof what, "%s: cross-entropy %.5f vs cpu %.5f", tag, lg.ce, lc.ce);
    gpu_test_verdict(rel <= 1e-2, what, rel, "relative, <= 1e-2");
    if (!full) {
        double rel_aux = fabs(lg.aux - lc.aux) / (fabs(lc.aux) + 1e-12);
        snprintf(what, sizeof what, "%s: aux loss %.6f vs cpu %.6f", tag, lg.aux, lc.aux);
        gpu_test_verdict(rel_aux <= 1e-2, what, rel_aux, "relative, <= 1e-2");
    }
    size_t n = mc.n_train;
    float *g = malloc(n * sizeof *g);
    backend_download(gpu, g, mg.grad_block, n * sizeof *g);
    /* every trainable as one vector (the bound), then each kind alone where there are
     * several: a kind whose gradient is small beside the others' would hide an error in it
     * (the routers' beside the adapters', or the other way round when the routing is
     * decisive: their inputs' bumps make the routers' gradients large). Alone each is held to
     * 3e-4: bf16 math's worst is 8.3e-5 (Qwen3's norms in full training). One term of the
     * routers' backward dropped gives them 3.8e-4 to 9.8e-4; a second micro-batch's adapter
     * gradients written over the first's, 0.29 alone and 8.2e-5 in the whole: the whole's
     * 1e-3 lets both pass. */
    for (int kind = -1; kind < KINDS; kind++) {
        double dot = 0.0, ng = 0.0, nw = 0.0;
        size_t count = 0;
        for (int i = 0; i < mc.n_trainables; i++) {
            const model_tensor *t = &mc.trainables[i];
            if (kind >= 0 && kind_of(t) != kind)
                continue;
            size_t at = (size_t)(t->data - mc.train_block);
            const float *got = g + at, *want = mc.grad_block + at;   /* CPU memory: host's */
            for (size_t j = 0; j < t->n; j++) {
                dot += (double)got[j] * want[j];
                ng += (double)got[j] * got[j];
                nw += (double)want[j] * want[j];
            }
            count += t->n;
        }
        if (count == 0 || (kind >= 0 && count == n))
            continue;
        double cosine = dot / (sqrt(ng * nw) + 1e-300);
        /* shown as 1 - cosine: the digits that tell one path's precision from another's */
        if (kind < 0)
            snprintf(what, sizeof what, "%s: 1 - gradient cosine, %zu trainables", tag, count);
        else
            snprintf(what, sizeof what, "%s: 1 - cosine, %s alone (%zu)", tag, kind_names[kind],
                     count);
        gpu_test_verdict(cosine >= (kind < 0 ? 0.999 : 0.9997) && nw > 0, what, 1.0 - cosine,
                         kind < 0 ? "cosine >= 0.999" : "cosine >= 0.9997");
        /* and the length, which the cosine does not see: a gradient scaled wrong (a scale
         * passed twice or not at all) has the right direction */
        double stretch = fabs(sqrt(ng / (nw + 1e-300)) - 1.0);
        if (kind < 0)
            snprintf(what, sizeof what, "%s: |gradient| / CPU's - 1", tag);
        else
            snprintf(what, sizeof what, "%s: |gradient| / CPU's - 1, %s alone", tag,
                     kind_names[kind]);
        gpu_test_verdict(stretch <= 1e-2, what, stretch, "<= 1e-2");
    }
    free(g);
    model_free(&mc);
    model_free(&mg);
}

/* Base tensor i of g against want (n values) after rounding to bf16: how many differ. */
static size_t differ_from_bf16(pesc_backend *gpu, const model *g, int i, const float *want)
{
    size_t n = g->base_tensors[i].n, wrong = 0;
    float *got = malloc(n * sizeof *got);
    backend_download(gpu, got, g->base_tensors[i].data, n * sizeof *got);
    for (size_t j = 0; j < n; j++)
        wrong += got[j] != gpu_test_bf16(want[j]);
    free(got);
    return wrong;
}

/* In bf16 math the weights that only products read are loaded into bf16 alone: the base takes
 * about half its fp32 bytes on the device; a download gives the stored values, an upload rounds
 * to them, and the checkpoint fingerprint still sees the values as loaded. --train full gets
 * them back in fp32 (as stored). (The steps above ran on packed weights.) */
static void check_packing(pesc_backend *cpu, pesc_backend *gpu)
{
    pesc_error err;
    model mc, mg;
    /* full: no routing, so the embedding as initialised (decisive_routing) */
    static const step_case full = {.tag = "full", .full = 1};
    build(&mc, cpu, &full, &err);
    hf_config c = mc.config;
    /* the bytes of a model whose FFN is 64 times as wide: the test model's 1.5 MB of weights
     * moved an H200's count of used memory by nothing (it is kept in pages of 2 MiB) */
    hf_config wide = c;
    wide.intermediate_size *= 64;
    double before = gpu_test_device_used(gpu);
    if (model_init_random(&mg, &wide, gpu, 5, &err) != 0)
        gpu_test_die(&err);
    double fp32 = (double)(mg.param_floats + mg.packed_floats) * sizeof(float);
    double base = gpu_test_device_used(gpu) - before;
    gpu_test_verdict(mg.packed_block != NULL && base > 0 && base < 0.6 * fp32,
                     "bf16 math: the product weights loaded in bf16 alone", base / fp32,
                     "device bytes / fp32's, < 0.6");
    model_free(&mg);
    if (model_init_random(&mg, &c, gpu, 5, &err) != 0)
        gpu_test_die(&err);
    /* wq (tensor 2) is packed, the embedding (0) and the norms stay fp32 */
    const float *wq = mc.base_tensors[2].data;
    size_t n = mc.base_tensors[2].n;
    float *got = malloc(MODEL_SAMPLE * sizeof *got), *want = malloc(n * sizeof *want);
    backend_download(gpu, got, mg.base_tensors[0].data, MODEL_SAMPLE * sizeof *got);
    int same = memcmp(got, mc.base_tensors[0].data, MODEL_SAMPLE * sizeof *got) == 0;
    size_t loaded = differ_from_bf16(gpu, &mg, 2, wq);
    for (size_t i = 0; i < n; i++)
        want[i] = 3.0f * wq[i] + 1.0f / 3.0f;
    backend_upload(gpu, mg.base_tensors[2].data, want, n * sizeof *want);
    size_t uploaded = differ_from_bf16(gpu, &mg, 2, want);
    gpu_test_verdict(same && loaded + uploaded == 0 && mg.base_tensors[2].data == mg.layers[0].wq,
                     "packed weights: loads and uploads rounded to bf16, downloads exact",
                     (double)(loaded + uploaded), "values that differ");
    float sample[MODEL_SAMPLE];
    model_base_sample(&mg, 2, sample, MODEL_SAMPLE);
    gpu_test_verdict(memcmp(sample, wq, sizeof sample) == 0,
                     "packed weights: the fingerprint's samples as loaded", 0.0, "fp32 values");
    model_free(&mg);
    /* --train full: one fp32 block again, holding the stored values */
    if (model_init_random(&mg, &c, gpu, 5, &err) != 0)
        gpu_test_die(&err);
    if (model_craft(&mg, &mc.pesc, 9, &err) != 0 || backend_check(gpu, &err) != 0)
        gpu_test_die(&err);
    size_t wrong = differ_from_bf16(gpu, &mg, 2, wq);
    gpu_test_verdict(!mg.packed_block && mg.train_block == mg.param_block &&
                     mg.n_train == mg.param_floats && wrong == 0,
                     "--train full: the weights unpacked to fp32, as stored", (double)wrong,
                     "values that differ");
    free(got);
    free(want);
    if (backend_check(gpu, &err) != 0)
        gpu_test_die(&err);
    model_free(&mc);
    model_free(&mg);
}

/* Several AdamW steps with dropout on; the losses of each step. */
static void run_steps(pesc_backend *gpu, double *losses, int steps)
{
    pesc_error err;
    model m;
    optimizer opt = {0};
    optim_config oc;
    optim_config_default(&oc);
    build(&m, gpu, &cases[0], &err);
    if (optim_init(&opt, gpu, m.n_train, &oc, &err) != 0)
        gpu_test_die(&err);
    int32_t tokens[BATCH * SEQ], targets[BATCH * SEQ], docs[BATCH * SEQ];
    for (int s = 0; s < steps; s++) {
        batch(tokens, targets, docs, SEQ, 1000 + s);
        model_losses l;
        model_zero_grad(&m);
        if (model_train_step(&m, tokens, targets, NULL, BATCH, SEQ, 1.0f, 1, &l, &err) != 0)
            gpu_test_die(&err);
        optim_step(&opt, m.train_block, m.grad_block, 1e-3, NULL);
        losses[s] = l.ce + l.aux + l.z;
    }
    if (backend_check(gpu, &err) != 0)
        gpu_test_die(&err);
    optim_free(&opt);
    model_free(&m);
}

int main(void)
{
    gpu_test_seed();
    pesc_backend *gpu = gpu_test_cuda_or_skip();
    pesc_error err;
    pesc_backend *cpu = backend_new("cpu", &err);
    if (!cpu)
        gpu_test_die(&err);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        compare_step(cpu, gpu, &cases[i]);
    if (strstr(backend_device(gpu), " bf16 products"))   /* not fast-bf16 */
        check_packing(cpu, gpu);
    enum { STEPS = 4 };
    double first[STEPS], second[STEPS];
    run_steps(gpu, first, STEPS);
    run_steps(gpu, second, STEPS);
    int same = memcmp(first, second, sizeof first) == 0;
    gpu_test_verdict(same && first[STEPS - 1] != first[0], "two identical runs: identical losses",
                     first[STEPS - 1], "last loss");
    backend_delete(cpu);
    backend_delete(gpu);
    printf("%d failure%s\n", gpu_test_failures, gpu_test_failures == 1 ? "" : "s");
    return gpu_test_failures ? 1 : 0;
}
