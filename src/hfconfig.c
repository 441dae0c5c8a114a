/* hfconfig — see hfconfig.h. */
#include "hfconfig.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/cpu_ops.h"

#define SUPPORTED                                                                          \
    "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, "           \
    "Phi3ForCausalLM, SmolLM3ForCausalLM, GraniteForCausalLM, Gemma2ForCausalLM, "           \
    "Gemma3ForCausalLM, Gemma3ForConditionalGeneration, Olmo2ForCausalLM"

/* Bounds far past every released model's, so that a damaged config.json is refused here
 * rather than by an allocation of its absurd size. */
static const struct {
    const char *key;
    int min, max;
} int_limits[] = {
    {"vocab_size", 1, 1 << 22}, {"hidden_size", 1, 1 << 16}, {"intermediate_size", 1, 1 << 18},
    {"num_hidden_layers", 1, HF_MAX_LAYERS}, {"num_attention_heads", 1, HF_MAX_HEADS},
    {"num_key_value_heads", 1, HF_MAX_HEADS}, {"head_dim", 1, 1 << 12}, {"num_experts", 0, 1024},
    {"topk", 0, 1024}, {"adapter_dim", 0, 1 << 16},   /* 0: the crafting check says more */
};

/* key's bounds: [*min, max] (positions and windows: 0 up) */
static int int_limit(const char *key, int *min)
{
    for (size_t i = 0; i < sizeof int_limits / sizeof *int_limits; i++)
        if (strcmp(int_limits[i].key, key) == 0) {
            *min = int_limits[i].min;
            return int_limits[i].max;
        }
    *min = 0;
    return 1 << 30;
}

/* Reads an integer key; `required` keys that are absent are an error. */
static int get_int(json_t *root, const char *key, int required, int fallback, int *out,
                   const char *where, pesc_error *err)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        if (required)
            return pesc_fail(err, "%s: \"%s\" is missing", where, key);
        *out = fallback;
        return 0;
    }
    int min, max = int_limit(key, &min);
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max)
        return pesc_fail(err, "%s: \"%s\" must be an integer from %d to %d%s", where, key, min,
                         max, json_is_string(v) ? " (not a string: write it without quotes)"
                                                : "");
    *out = (int)json_integer_value(v);
    return 0;
}

static int get_number(json_t *root, const char *key, double fallback, double *out,
                      const char *where, pesc_error *err)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        *out = fallback;
        return 0;
    }
    if (!json_is_number(v))
        return pesc_fail(err, "%s: \"%s\" must be a number", where, key);
    *out = json_number_value(v);
    return 0;
}

static int get_bool(json_t *root, const char *key, int fallback, int *out, const char *where,
                    pesc_error *err)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        *out = fallback;
        return 0;
    }
    if (!json_is_boolean(v))
        return pesc_fail(err, "%s: \"%s\" must be true or false", where, key);
    *out = json_is_true(v);
    return 0;
}

/* Gemma 3's text model, on its own or inside Gemma3ForConditionalGeneration */
static int gemma3(const hf_config *c)
{
    return strcmp(c->architecture, "Gemma3ForCausalLM") == 0 || c->nested_text;
}

static int gemma2(const hf_config *c)
{
    return strcmp(c->architecture, "Gemma2ForCausalLM") == 0;
}

/* Gemma 2 or 3: the layer they share ((1 + w) norms around both blocks, GELU-tanh FFN, scaled
 * embeddings, query_pre_attn_scalar, sliding and global layers) */
static int gemma(const hf_config *c)
{
    return gemma2(c) || gemma3(c);
}

/* Whether ARCH is one of SUPPORTED's names (the list the messages give is the one checked). */
static int supported_architecture(const char *arch)
{
    static const char list[] = SUPPORTED;
    size_t n = strlen(arch);
    if (strpbrk(arch, ", "))
        return 0;
    for (const char *p = list; n && (p = strstr(p, arch)) != NULL; p += n)
        if ((p == list || p[-1] == ' ') && (p[n] == ',' || p[n] == '\0'))
            return 1;
    return 0;
}

static int parse_architecture(hf_config *c, json_t *root, const char *where, pesc_error *err)
{
    json_t *archs = json_object_get(root, "architectures");
    const char *arch = NULL;
    if (json_is_array(archs) && json_array_size(archs) == 1)
        arch = json_string_value(json_array_get(archs, 0));
    if (!arch)
        return pesc_fail(err, "%s: \"architectures\" must name one model class; supported: "
                         SUPPORTED, where);
    if (!supported_architecture(arch))
        return pesc_fail(err, "%s: architecture %s is not supported; supported: " SUPPORTED,
                         where, arch);
    snprintf(c->architecture, sizeof c->architecture, "%s", arch);
    const char *type = json_string_value(json_object_get(root, "model_type"));
    snprintf(c->model_type, sizeof c->model_type, "%s", type ? type : "");
    c->nested_text = strcmp(arch, "Gemma3ForConditionalGeneration") == 0;
    return 0;
}

/* The FFN's activation: SiLU, but Gemma's GELU in its tanh form (its key hidden_activation) */
static int parse_activation(hf_config *c, json_t *keys, const char *where, pesc_error *err)
{
    int is_gemma = gemma(c);
    const char *key = is_gemma ? "hidden_activation" : "hidden_act";
    const char *act = json_string_value(json_object_get(keys, key));
    const char *want = is_gemma ? "gelu_pytorch_tanh" : "silu";
    if (act && strcmp(act, want) != 0)
        return pesc_fail(err, "%s: %s \"%s\" is not supported for %s (only %s)", where, key,
                         act, c->architecture, want);
    c->gelu_ffn = is_gemma;
    return 0;
}

/* One of longrope's lists of factors: a positive number for each rotated frequency. */
static int get_factors(json_t *rs, const char *key, int half, float *out, const char *where,
                       pesc_error *err)
{
    json_t *list = json_object_get(rs, key), *v;
    size_t i;
    if (!json_is_array(list) || json_array_size(list) != (size_t)half ||
        half > HF_MAX_ROPE_FACTORS)
        return pesc_fail(err, "%s: longrope rope_scaling needs \"%s\", a list of %d numbers "
                         "(half the rotated values of a head)", where, key, half);
    json_array_foreach(list, i, v) {
        if (!json_is_number(v) || !(json_number_value(v) > 0))
            return pesc_fail(err, "%s: rope_scaling %s[%zu] must be a positive number", where,
                             key, i);
        out[i] = (float)json_number_value(v);
    }
    return 0;
}

/* Phi-3's longrope (transformers' _compute_longrope_parameters): short and long factors, and
 * the attention factor from the context's growth. */
static int parse_longrope(hf_config *c, json_t *root, json_t *rs, const char *where,
                          pesc_error *err)
{
    c->rope_type = HF_ROPE_LONGROPE;
    int half = hfconfig_rotary_dim(c) / 2;
    if (get_factors(rs, "short_factor", half, c->rope_short_factor, where, err) ||
        get_factors(rs, "long_factor", half, c->rope_long_factor, where, err))
        return -1;
    /* Phi-3 keeps the pretrained context beside the extended one; the factor is their ratio */
    int original = 0;
    double factor = c->rope_factor;
    if (get_int(root, "original_max_position_embeddings", 0, 0, &original, where, err) != 0)
        return -1;
    if (original > 0)
        factor = (double)c->max_position_embeddings / original;
    else if (get_int(rs, "original_max_position_embeddings", 0, c->max_position_embeddings,
                     &original, where, err) != 0)
        return -1;
    if (original < 2)
        return pesc_fail(err, "%s: longrope needs original_max_position_embeddings", where);
    if (get_number(rs, "attention_factor", factor <= 1.0 ? 1.0 :
                   sqrt(1.0 + log(factor) / log((double)original)),
                   &c->rope_attention_factor, where, err) != 0)
        return -1;
    if (!(c->rope_attention_factor > 0))
        return pesc_fail(err, "%s: rope_scaling attention_factor must be positive", where);
    c->rope_original_max_position = original;
    return 0;
}

int hfconfig_rotary_dim(const hf_config *c)
{
    return c->rotary_dim > 0 ? c->rotary_dim : c->head_dim;
}

double hfconfig_rope_scale(const hf_config *c)
{
    return c->rope_type == HF_ROPE_LONGROPE ? c->rope_attention_factor : 1.0;
}

double hfconfig_embedding_scale(const hf_config *c)
{
    return c->embedding_multiplier > 0 ? c->embedding_multiplier : 1.0;
}

int hfconfig_embedding_module_scales(const hf_config *c)
{
    return gemma(c);
}

double hfconfig_residual_scale(const hf_config *c)
{
    return c->residual_multiplier > 0 ? c->residual_multiplier : 1.0;
}

double hfconfig_query_scale(const hf_config *c)
{
    return c->attention_multiplier > 0 ? c->attention_multiplier * sqrt((double)c->head_dim)
                                       : 1.0;
}

double hfconfig_logit_scale(const hf_config *c)
{
    return c->logits_scaling > 0 ? 1.0 / c->logits_scaling : 1.0;
}

/* A per-layer flag (nope, global) of LAYER; 0 past the layers a config can have */
static int layer_flag(const unsigned char *flags, int layer)
{
    return layer >= 0 && layer < HF_MAX_LAYERS && flags[layer];
}

int hfconfig_layer_rope(const hf_config *c, int layer)
{
    return !layer_flag(c->nope, layer);
}

int hfconfig_layer_window(const hf_config *c, int layer)
{
    return layer_flag(c->global, layer) ? 0 : c->sliding_window;
}

int hfconfig_layer_local_rope(const hf_config *c, int layer)
{
    return c->rope_local_theta > 0 && !layer_flag(c->global, layer);
}

/* A flag for each layer: from the list LIST_KEY (item_flag makes an item 0 or 1, -1 for one
 * that is not what `items` says), or without it every EVERY_KEY-th layer's (the every-th,
 * 2 every-th, ...; every_default where that is absent too). */
static int parse_layer_flags(hf_config *c, json_t *root, const char *list_key,
                             const char *every_key, int every_default, int (*item_flag)(json_t *),
                             const char *items, unsigned char *flags, const char *where,
                             pesc_error *err)
{
    json_t *list = json_object_get(root, list_key), *v;
    if (!list || json_is_null(list)) {
        int every = every_default;
        if (get_int(root, every_key, 0, every_default, &every, where, err))
            return -1;
        if (every < 1)
            return pesc_fail(err, "%s: \"%s\" must be at least 1", where, every_key);
        for (int l = 0; l < c->n_layers; l++)
            flags[l] = (l + 1) % every == 0;
        return 0;
    }
    if (!json_is_array(list) || json_array_size(list) < (size_t)c->n_layers)
        return pesc_fail(err, "%s: \"%s\" must be a list of %s for each of the %d layers", where,
                         list_key, items, c->n_layers);
    size_t i;
    json_array_foreach(list, i, v) {
        int flag = item_flag(v);
        if (flag < 0)
            return pesc_fail(err, "%s: %s[%zu] must be %s", where, list_key, i, items);
        if (i < (size_t)c->n_layers)
            flags[i] = (unsigned char)flag;
    }
    return 0;
}

/* SmolLM3's no_rope_layers: 1 where RoPE applies, 0 (a NoPE layer) where not */
static int nope_flag(json_t *v)
{
    if (!json_is_integer(v) || (json_integer_value(v) != 0 && json_integer_value(v) != 1))
        return -1;
    return json_integer_value(v) == 0;
}

/* SmolLM3's NoPE layers: no_rope_layers, or every no_rope_layer_interval-th (the 4th, 8th...)
 * goes without. */
static int parse_nope(hf_config *c, json_t *root, const char *where, pesc_error *err)
{
    return parse_layer_flags(c, root, "no_rope_layers", "no_rope_layer_interval", 4, nope_flag,
                             "a 1 (RoPE) or 0 (none)", c->nope, where, err);
}

static int parse_rope_scaling(hf_config *c, json_t *root, const char *where, pesc_error *err)
{
    c->rope_type = HF_ROPE_DEFAULT;
    c->rope_factor = 1.0;
    c->rope_attention_factor = 1.0;
    /* Phi-4-mini rotates 3/4 of each head (transformers: int(head_dim * factor) values) */
    double rotary = 1.0;
    if (get_number(root, "partial_rotary_factor", 1.0, &rotary, where, err))
        return -1;
    /* the range first: a factor past 1 would make the product overflow the int */
    c->rotary_dim = rotary > 0 && rotary <= 1 ? (int)(c->head_dim * rotary) : 0;
    if (c->rotary_dim < 2 || c->rotary_dim % 2 != 0)
        return pesc_fail(err, "%s: partial_rotary_factor %g must leave an even number of a "
                         "head's %d values to rotate (from 2 to all of them)", where, rotary,
                         c->head_dim);
    json_t *rs = json_object_get(root, "rope_scaling");
    if (!rs || json_is_null(rs))
        return 0;
    if (!json_is_object(rs))
        return pesc_fail(err, "%s: \"rope_scaling\" must be an object or null", where);
    const char *type = json_string_value(json_object_get(rs, "rope_type"));
    if (!type)
        type = json_string_value(json_object_get(rs, "type"));
    if (!type)
        return pesc_fail(err, "%s: rope_scaling has no \"rope_type\"", where);
    if (get_number(rs, "factor", 1.0, &c->rope_factor, where, err) != 0)
        return -1;
    if (!(c->rope_factor > 0))
        return pesc_fail(err, "%s: rope_scaling factor must be positive", where);
    if (strcmp(type, "default") == 0) {
        c->rope_type = HF_ROPE_DEFAULT;
    } else if (strcmp(type, "linear") == 0) {
        c->rope_type = HF_ROPE_LINEAR;
    } else if (strcmp(type, "llama3") == 0) {
        c->rope_type = HF_ROPE_LLAMA3;
        if (get_number(rs, "low_freq_factor", 1.0, &c->rope_low_freq_factor, where, err) ||
            get_number(rs, "high_freq_factor", 4.0, &c->rope_high_freq_factor, where, err) ||
            get_int(rs, "original_max_position_embeddings", 1, 0, &c->rope_original_max_position,
                    where, err))
            return -1;
        if (!(c->rope_high_freq_factor > c->rope_low_freq_factor))
            return pesc_fail(err, "%s: llama3 rope_scaling needs high_freq_factor > "
                             "low_freq_factor", where);
    } else if (strcmp(type, "longrope") == 0 || strcmp(type, "su") == 0) {
        return parse_longrope(c, root, rs, where, err);
    } else {
        return pesc_fail(err, "%s: rope_scaling type \"%s\" is not supported; supported: "
                         "linear, llama3, longrope", where, type);
    }
    return 0;
}

static int smollm3(const hf_config *c)
{
    return strcmp(c->architecture, "SmolLM3ForCausalLM") == 0;
}

static int granite(const hf_config *c)
{
    return strcmp(c->architecture, "GraniteForCausalLM") == 0;
}

static int olmo2(const hf_config *c)
{
    return strcmp(c->architecture, "Olmo2ForCausalLM") == 0;
}


/* Granite's four multipliers, each 1 when absent (transformers' GraniteConfig defaults) */
static int parse_multipliers(hf_config *c, json_t *root, const char *where, pesc_error *err)
{
    static const char *const keys[] = {"embedding_multiplier", "residual_multiplier",
                                       "attention_multiplier", "logits_scaling"};
    double *values[] = {&c->embedding_multiplier, &c->residual_multiplier,
                        &c->attention_multiplier, &c->logits_scaling};
    for (int i = 0; i < 4; i++) {
        if (get_number(root, keys[i], 1.0, values[i], where, err))
            return -1;
        if (!(*values[i] > 0) || !isfinite(*values[i]))
            return pesc_fail(err, "%s: \"%s\" must be a positive number", where, keys[i]);
    }
    /* the query's scale goes with RoPE's, which leaves the values past a partial rotary */
    if (hfconfig_rotary_dim(c) != c->head_dim)
        return pesc_fail(err, "%s: partial_rotary_factor is not supported for Granite", where);
    return 0;
}

/* Gemma's layer_types: "full_attention" (global) or "sliding_attention" */
static int global_flag(json_t *v)
{
    const char *type = json_string_value(v);
    return type && strcmp(type, "full_attention") == 0      ? 1
           : type && strcmp(type, "sliding_attention") == 0 ? 0
                                                            : -1;
}

/* Gemma's global layers: layer_types, or in older files every sliding_window_pattern-th
 * layer (Gemma 3: the 6th, 12th, ...; transformers since 4.53 writes it with a leading
 * underscore, beside layer_types; Gemma 2, which has no such key: every other layer, the
 * first sliding). */
static int parse_layer_types(hf_config *c, json_t *root, const char *where, pesc_error *err)
{
    const char *every = json_object_get(root, "sliding_window_pattern")
                            ? "sliding_window_pattern" : "_sliding_window_pattern";
    return parse_layer_flags(c, root, "layer_types", every, gemma2(c) ? 2 : 6, global_flag,
                             "\"sliding_attention\" or \"full_attention\"", c->global, where,
                             err);
}

/* The softcaps: Gemma2Config's defaults (30 and 50) when absent, null none (Gemma 3's
 * defaults and releases) */
static int parse_softcaps(hf_config *c, json_t *root, const char *where, pesc_error *err)
{
    static const char *const keys[] = {"final_logit_softcapping", "attn_logit_softcapping"};
    static const double gemma2_default[] = {30.0, 50.0};
    double *values[] = {&c->final_logit_softcapping, &c->attn_logit_softcapping};
    for (int i = 0; i < 2; i++) {
        json_t *v = json_object_get(root, keys[i]);
        *values[i] = gemma2(c) && !v ? gemma2_default[i] : 0.0;
        if (!v || json_is_null(v))
            continue;
        if (!json_is_number(v) || !(json_number_value(v) > 0) ||
            !isfinite(json_number_value(v)))
            return pesc_fail(err, "%s: \"%s\" must be a positive number or null", where,
                             keys[i]);
        *values[i] = json_number_value(v);
    }
    return 0;
}

/* Gemma 2's and 3's text model: (1 + w) norms, four of them a layer, GELU's tanh in the FFN,
 * sqrt(hidden_size) on the embeddings, query_pre_attn_scalar for the scores' scale, sliding
 * and global layers, the softcaps; Gemma 3's QK-norm and its sliding layers' own RoPE. */
static int parse_gemma(hf_config *c, json_t *root, const char *where, pesc_error *err)
{
    const char *name = gemma2(c) ? "Gemma 2" : "Gemma 3";
    int attention_bias = 0, bidirectional = 0;
    double scalar = 256.0;
    if (get_bool(root, "attention_bias", 0, &attention_bias, where, err) ||
        get_bool(root, "use_bidirectional_attention", 0, &bidirectional, where, err) ||
        get_number(root, "query_pre_attn_scalar", 256.0, &scalar, where, err) ||
        (gemma3(c) &&
         get_number(root, "rope_local_base_freq", 10000.0, &c->rope_local_theta, where, err)) ||
        get_int(root, "sliding_window", 0, 4096, &c->sliding_window, where, err) ||
        parse_layer_types(c, root, where, err) || parse_softcaps(c, root, where, err))
        return -1;
    if (attention_bias || bidirectional)
        return pesc_fail(err, "%s: %s=true is not supported for %s", where,
                         attention_bias ? "attention_bias" : "use_bidirectional_attention", name);
    if (!(scalar > 0) || !isfinite(scalar) || (gemma3(c) && !(c->rope_local_theta > 0)))
        return pesc_fail(err, "%s: query_pre_attn_scalar%s must be positive", where,
                         gemma3(c) ? " and rope_local_base_freq" : "");
    if (hfconfig_rotary_dim(c) != c->head_dim)
        return pesc_fail(err, "%s: partial_rotary_factor is not supported for %s", where, name);
    c->qk_norm = gemma3(c);
    c->norm_offset = 1.0f;
    c->sandwich_norms = 1;
    c->embedding_multiplier = sqrt((double)c->hidden_size);
    c->attention_multiplier = 1.0 / sqrt(scalar);
    return 0;
}

/* Family-specific switches: biases, attention windows and SmolLM3's NoPE layers. */
static int parse_family(hf_config *c, json_t *root, const char *where, pesc_error *err)
{
    int mlp_bias = 0, use_window = 0;
    c->qkv_bias = c->o_bias = c->qk_norm = 0;
    c->sliding_window = 0;
    int qwen2 = strcmp(c->architecture, "Qwen2ForCausalLM") == 0;
    if (qwen2 || strcmp(c->architecture, "Qwen3ForCausalLM") == 0) {
        /* Qwen2: q/k/v biases; Qwen3: attention_bias (false in its releases) and QK-norm */
        int attention_bias = 0;
        if (!qwen2 && get_bool(root, "attention_bias", 0, &attention_bias, where, err))
            return -1;
        c->qkv_bias = qwen2 || attention_bias;
        c->o_bias = attention_bias;
        c->qk_norm = !qwen2;
        if (get_bool(root, "use_sliding_window", 0, &use_window, where, err))
            return -1;
        if (use_window)
            return pesc_fail(err, "%s: use_sliding_window=true is not supported for %s", where,
                             qwen2 ? "Qwen2" : "Qwen3");
    } else if (strcmp(c->architecture, "LlamaForCausalLM") == 0 || smollm3(c) || granite(c) ||
               olmo2(c)) {
        int attention_bias = 0;
        if (get_bool(root, "attention_bias", 0, &attention_bias, where, err) ||
            get_bool(root, "mlp_bias", 0, &mlp_bias, where, err))
            return -1;
        if (mlp_bias)
            return pesc_fail(err, "%s: mlp_bias=true is not supported", where);
        c->qkv_bias = c->o_bias = attention_bias;
        if (smollm3(c)) {
            /* its window would apply only to NoPE layers; the released models have none */
            if (get_bool(root, "use_sliding_window", 0, &use_window, where, err))
                return -1;
            if (use_window)
                return pesc_fail(err, "%s: use_sliding_window=true is not supported for "
                                 "SmolLM3", where);
            if (parse_nope(c, root, where, err))
                return -1;
        }
        if (granite(c) && parse_multipliers(c, root, where, err))
            return -1;
        /* OLMo 2: a norm after each block alone, q and k normed whole */
        c->qk_norm = c->qk_norm_whole = c->sandwich_norms = c->no_pre_norms = olmo2(c);
    } else if (gemma(c)) {
        if (parse_gemma(c, root, where, err))
            return -1;
    } else if (get_int(root, "sliding_window", 0, 0, &c->sliding_window, where, err)) {
        return -1;   /* Mistral's and Phi-3's window */
    }
    /* Phi-3: q, k and v in one qkv_proj, gate and up in one gate_up_proj */
    c->fused_proj = strcmp(c->architecture, "Phi3ForCausalLM") == 0;
    return 0;
}

static int check_shapes(const hf_config *c, const char *where, pesc_error *err)
{
    if (c->vocab_size <= 0 || c->hidden_size <= 0 || c->intermediate_size <= 0 ||
        c->n_layers <= 0 || c->n_heads <= 0 || c->n_kv_heads <= 0 || c->head_dim <= 0)
        return pesc_fail(err, "%s: sizes must be positive (vocab_size, hidden_size, "
                         "intermediate_size, num_hidden_layers, num_attention_heads, "
                         "num_key_value_heads, head_dim)", where);
    if (c->n_heads % c->n_kv_heads != 0)
        return pesc_fail(err, "%s: num_attention_heads (%d) must be a multiple of "
                         "num_key_value_heads (%d)", where, c->n_heads, c->n_kv_heads);
    if (c->head_dim % 2 != 0 || c->head_dim > CPU_MAX_HEAD_DIM)
        return pesc_fail(err, "%s: head_dim %d must be even and at most %d", where, c->head_dim,
                         CPU_MAX_HEAD_DIM);
    if (!(c->rms_norm_eps > 0) || !(c->rope_theta > 0))
        return pesc_fail(err, "%s: rms_norm_eps and rope_theta must be positive", where);
    return 0;
}

/* The crafting of an exported PESC model; absent keys mean a dense model. */
static int parse_crafting(hf_config *c, json_t *root, const char *where, pesc_error *err)
{
    c->moe_scaling = 0.25;
    if (get_int(root, "num_experts", 0, 0, &c->num_experts, where, err) != 0)
        return -1;
    if (c->num_experts == 0)
        return 0;
    static const char *const needed[] = {"topk", "adapter_dim"};
    for (int i = 0; i < 2; i++)
        if (!json_object_get(root, needed[i]))
            return pesc_fail(err, "%s: \"num_experts\" makes this a PESC model, but \"%s\" is "
                             "missing (an exported model has topk and adapter_dim)", where,
                             needed[i]);
    if (get_int(root, "topk", 1, 0, &c->topk, where, err) ||
        get_int(root, "adapter_dim", 1, 0, &c->adapter_dim, where, err) ||
        get_number(root, "moe_scaling", 0.25, &c->moe_scaling, where, err))
        return -1;
    if (c->num_experts > 256 || c->topk < 1 || c->topk > c->num_experts || c->adapter_dim < 1 ||
        !(c->moe_scaling >= 0) || !isfinite(c->moe_scaling))
        return pesc_fail(err, "%s: num_experts %d, topk %d, adapter_dim %d, moe_scaling %g do "
                         "not describe a PESC model (1 <= topk <= num_experts <= 256, "
                         "adapter_dim >= 1, moe_scaling >= 0)", where, c->num_experts, c->topk,
                         c->adapter_dim, c->moe_scaling);
    return 0;
}

/* 16 hexadecimal digits (as checkpoints write fingerprints) into *out; -1 otherwise. */
static int parse_fingerprint(const json_t *v, uint64_t *out)
{
    const char *text = json_is_string(v) ? json_string_value(v) : "";
    if (strlen(text) != 16 || strspn(text, "0123456789abcdefABCDEF") != 16)
        return -1;
    *out = strtoull(text, NULL, 16);
    return 0;
}

int hfconfig_parse(hf_config *c, const char *json_text, const char *where, pesc_error *err)
{
    memset(c, 0, sizeof *c);
    json_error_t jerr;
    json_t *root = json_loads(pesc_skip_bom(json_text, NULL), JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return pesc_fail(err, "%s: not valid JSON (line %d, column %d: %s)", where, jerr.line,
                         jerr.column, jerr.text);
    int rc = -1;
    if (!json_is_object(root)) {
        pesc_fail(err, "%s: must be a JSON object", where);
        goto out;
    }
    if (parse_architecture(c, root, where, err))
        goto out;
    /* Gemma3ForConditionalGeneration: the text model's keys are text_config's, which leaves
     * out those equal to Gemma3TextConfig's defaults (sizes included: gemma-3-4b's gives no
     * heads); the PESC keys an export adds stay at the top */
    json_t *keys = root;
    char in_text[1200];
    if (c->nested_text) {
        keys = json_object_get(root, "text_config");
        if (!json_is_object(keys)) {
            pesc_fail(err, "%s: %s keeps its text model's keys in \"text_config\", which is "
                      "missing", where, c->architecture);
            goto out;
        }
        snprintf(in_text, sizeof in_text, "%s (text_config)", where);
        where = in_text;
    }
    /* Gemma's sizes default to Gemma2Config's and Gemma3TextConfig's (2B's and 4B's) */
    int is_gemma = gemma(c);
    if (parse_activation(c, keys, where, err) ||
        get_int(keys, "vocab_size", !is_gemma, gemma2(c) ? 256000 : 262208, &c->vocab_size,
                where, err) ||
        get_int(keys, "hidden_size", !is_gemma, 2304, &c->hidden_size, where, err) ||
        get_int(keys, "intermediate_size", !is_gemma, 9216, &c->intermediate_size, where, err) ||
        get_int(keys, "num_hidden_layers", !is_gemma, 26, &c->n_layers, where, err) ||
        get_int(keys, "num_attention_heads", !is_gemma, 8, &c->n_heads, where, err))
        goto out;
    if (get_int(keys, "num_key_value_heads", 0, is_gemma ? 4 : c->n_heads, &c->n_kv_heads,
                where, err) ||
        /* Gemma's head_dim is 256 unless given */
        get_int(keys, "head_dim", 0,
                is_gemma ? 256 : c->n_heads ? c->hidden_size / c->n_heads : 0, &c->head_dim,
                where, err) ||
        get_number(keys, "rms_norm_eps", 1e-6, &c->rms_norm_eps, where, err) ||
        /* SmolLM3's own defaults (its config.json leaves out a tie_word_embeddings equal to
         * transformers' own default, true) */
        get_number(keys, "rope_theta", smollm3(c) ? 2e6 : gemma3(c) ? 1e6 : 10000.0,
                   &c->rope_theta, where, err) ||
        get_int(keys, "max_position_embeddings", 0,
                gemma3(c) ? 131072 : gemma2(c) ? 8192 : 2048, &c->max_position_embeddings,
                where, err) ||
        get_bool(keys, "tie_word_embeddings", smollm3(c) || is_gemma, &c->tie_word_embeddings,
                 where, err) ||
        parse_rope_scaling(c, keys, where, err) || parse_family(c, keys, where, err) ||
        check_shapes(c, where, err) || parse_crafting(c, root, where, err))
        goto out;
    json_t *bos = json_object_get(root, "bos_token_id");
    json_t *eos = json_object_get(root, "eos_token_id");
    if (!bos)
        bos = json_object_get(keys, "bos_token_id");
    if (!eos)
        eos = json_object_get(keys, "eos_token_id");
    c->bos_token_id = json_is_integer(bos) ? (int)json_integer_value(bos) : -1;
    /* eos may be a list (llama 3.1); the first is the one a template appends. */
    if (json_is_array(eos))
        eos = json_array_get(eos, 0);
    c->eos_token_id = json_is_integer(eos) ? (int)json_integer_value(eos) : -1;
    json_t *tpl = json_object_get(root, "pesc_template");
    if (tpl && (!json_is_string(tpl) || !*json_string_value(tpl) ||
                strlen(json_string_value(tpl)) >= sizeof c->pesc_template)) {
        pesc_fail(err, "%s: \"pesc_template\" must name a chat template (camelidae, chatml, "
                  "...)", where);
        goto out;
    }
    snprintf(c->pesc_template, sizeof c->pesc_template, "%s", tpl ? json_string_value(tpl) : "");
    json_t *fp = json_object_get(root, "pesc_base_fingerprint");
    c->pesc_base_fingerprint = 0;
    json_t *merged = json_object_get(root, "pesc_tuning_merged");
    if (merged && !json_is_boolean(merged)) {
        pesc_fail(err, "%s: \"pesc_tuning_merged\" must be true or false (pesc export writes "
                  "it)", where);
        goto out;
    }
    c->pesc_tuning_merged = json_is_true(merged);
    if (fp && parse_fingerprint(fp, &c->pesc_base_fingerprint) != 0) {
        pesc_fail(err, "%s: \"pesc_base_fingerprint\" must be 16 hexadecimal digits (pesc export "
                  "writes it; remove the key if the file was edited)", where);
        goto out;
    }
    rc = 0;
out:
    json_decref(root);
    return rc;
}

int hfconfig_load(hf_config *c, const char *dir, pesc_error *err)
{
    char *path = pesc_path_join(dir, "config.json");
    char *text = NULL;
    int rc = pesc_read_file(path, &text, NULL, err);
    if (rc != 0)
        pesc_fail_prefix(err, "%s is not a Hugging Face model directory", dir);
    else
        rc = hfconfig_parse(c, text, path, err);
    free(text);
    free(path);
    return rc;
}

int hfconfig_rope_long(const hf_config *c, long positions)
{
    return c->rope_type == HF_ROPE_LONGROPE && positions > c->rope_original_max_position;
}

void hfconfig_inv_freq(const hf_config *c, long positions, float *inv_freq)
{
    const float *ext = hfconfig_rope_long(c, positions) ? c->rope_long_factor
                                                        : c->rope_short_factor;
    int dim = hfconfig_rotary_dim(c), half = dim / 2;
    for (int i = 0; i < half; i++) {
        /* HF computes base ** (arange(0, dim, 2) / dim) with integer exponents in float32 */
        float exponent = (float)(2 * i) / (float)dim;
        double f = 1.0 / pow(c->rope_theta, (double)exponent);
        if (c->rope_type == HF_ROPE_LINEAR) {
            f /= c->rope_factor;
        } else if (c->rope_type == HF_ROPE_LONGROPE) {
            f /= ext[i];
        } else if (c->rope_type == HF_ROPE_LLAMA3) {
            double old_len = c->rope_original_max_position;
            double low_wavelen = old_len / c->rope_low_freq_factor;
            double high_wavelen = old_len / c->rope_high_freq_factor;
            double wavelen = 2.0 * M_PI / f;
            if (wavelen > low_wavelen) {
                f /= c->rope_factor;
            } else if (wavelen >= high_wavelen) {
                double smooth = (old_len / wavelen - c->rope_low_freq_factor) /
                                (c->rope_high_freq_factor - c->rope_low_freq_factor);
                f = (1.0 - smooth) * f / c->rope_factor + smooth * f;
            }
        }
        inv_freq[i] = (float)f;
    }
}

void hfconfig_inv_freq_local(const hf_config *c, float *inv_freq)
{
    hf_config local = *c;
    local.rope_type = HF_ROPE_DEFAULT;
    local.rope_theta = c->rope_local_theta;
    hfconfig_inv_freq(&local, 1, inv_freq);
}

long long hfconfig_param_count(const hf_config *c)
{
    long long C = c->hidden_size, F = c->intermediate_size, V = c->vocab_size;
    long long q = (long long)c->n_heads * c->head_dim, kv = (long long)c->n_kv_heads * c->head_dim;
    long long layer = 2 * C                         /* two norms (OLMo 2's after the blocks) */
                      + C * q + 2 * C * kv + q * C  /* q, k, v, o */
                      + 3 * C * F;                  /* gate, up, down */
    if (c->qkv_bias)
        layer += q + 2 * kv;
    if (c->o_bias)
        layer += C;
    if (c->qk_norm)
        layer += c->qk_norm_whole ? q + kv : 2 * c->head_dim;
    if (c->sandwich_norms && !c->no_pre_norms)
        layer += 2 * C;
    return V * C * (c->tie_word_embeddings ? 1 : 2) + C + layer * c->n_layers;
}
