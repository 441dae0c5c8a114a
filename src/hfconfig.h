/* hfconfig — a Hugging Face config.json for the model families pesc runs: LlamaForCausalLM,
 * MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Phi3ForCausalLM, SmolLM3ForCausalLM
 * (Llama's with RoPE left out of some layers), GraniteForCausalLM, Gemma2ForCausalLM,
 * Gemma3ForCausalLM (and the text model of Gemma3ForConditionalGeneration, from its
 * text_config), Olmo2ForCausalLM, and
 * the PESC keys
 * of an exported (crafted) model (num_experts, topk, adapter_dim, moe_scaling, as Camelidae
 * writes them). Anything else is refused with a message that lists what is supported. Also
 * derives RoPE's inverse frequencies (default, linear, llama3, longrope).
 *
 * Must not: touch weights or backends. */
#ifndef PESC_HFCONFIG_H
#define PESC_HFCONFIG_H

#include "util.h"

typedef enum hf_rope_type {
    HF_ROPE_DEFAULT,
    HF_ROPE_LINEAR,
    HF_ROPE_LLAMA3,
    HF_ROPE_LONGROPE   /* Phi-3's 128k models ("longrope", or "su") */
} hf_rope_type;

enum { HF_MAX_ROPE_FACTORS = 256 };   /* head_dim / 2 at most */
enum { HF_MAX_LAYERS = 1024 };        /* num_hidden_layers at most */
enum { HF_MAX_HEADS = 1024 };         /* num_attention_heads, num_key_value_heads */

typedef struct hf_config {
    char architecture[64];       /* "LlamaForCausalLM" */
    char model_type[32];         /* "llama" */
    int vocab_size;
    int hidden_size;             /* d_model */
    int intermediate_size;       /* FFN width */
    int n_layers;
    int n_heads;
    int n_kv_heads;              /* grouped-query attention: n_heads % n_kv_heads == 0 */
    int head_dim;
    double rms_norm_eps;
    double rope_theta;
    hf_rope_type rope_type;
    double rope_factor;
    double rope_low_freq_factor, rope_high_freq_factor;   /* llama3 */
    int rope_original_max_position;                       /* llama3, longrope */
    /* longrope: inv_freq divided by each short factor while a sequence stays within
     * rope_original_max_position positions, by each long factor past it (transformers
     * switches per forward pass); cos and sin scaled by the attention factor */
    float rope_short_factor[HF_MAX_ROPE_FACTORS], rope_long_factor[HF_MAX_ROPE_FACTORS];
    double rope_attention_factor;
    int max_position_embeddings;
    int tie_word_embeddings;
    int qkv_bias;                /* qwen2, or llama's and qwen3's attention_bias */
    int qk_norm;                 /* qwen3: each head of q and k RMS-normed (q_norm, k_norm) */
    int o_bias;                  /* llama's attention_bias */
    int sliding_window;          /* mistral, phi3, gemma (but its global layers); 0 = none */
    int rotary_dim;              /* values of a head RoPE rotates: head_dim, but for
                                  * partial_rotary_factor (0 = head_dim; hfconfig_rotary_dim) */
    /* SmolLM3's NoPE layers, whose q and k RoPE leaves alone (no_rope_layers[l] == 0, or
     * every no_rope_layer_interval-th layer); all 0 for the other families */
    unsigned char nope[HF_MAX_LAYERS];
    /* Granite's multipliers (0 for the other families: hfconfig_*_scale give 1): the
     * embedding's output, each block's output before the residual sum, the attention's
     * scores (attention_multiplier in place of 1/sqrt(head_dim)), the logits (divided) */
    double embedding_multiplier, residual_multiplier, attention_multiplier, logits_scaling;
    /* Gemma 2 and 3 (0 for the other families): RMSNorm scales by norm_offset + weight (1: its
     * weights are the scale's difference from 1); sandwich_norms (OLMo 2's too): a norm after
     * the attention and one after the FFN (post_attention_layernorm,
     * post_feedforward_layernorm), before each residual sum, the FFN's own input norm being
     * pre_feedforward_layernorm; gelu_ffn:
     * the FFN's gate through GELU's tanh approximation; the sliding window on all layers but
     * the global[] ones, and those alone turn RoPE by rope_theta with rope_scaling: the
     * sliding layers by rope_local_theta, unscaled (Gemma 3; Gemma 2 has one RoPE). Its
     * embedding_multiplier is sqrt(hidden_size), its attention_multiplier
     * query_pre_attn_scalar^-1/2. */
    float norm_offset;
    int sandwich_norms;
    /* OLMo 2: no norm before the attention or the FFN (its sandwich_norms' post norms alone),
     * and QK-norm over each token's whole q and k rather than each head's */
    int no_pre_norms;
    int qk_norm_whole;
    /* Gemma3ForConditionalGeneration: the text model alone, its keys in text_config, its
     * weights under language_model.model. (or model.language_model.), the vision tower's
     * left alone */
    int nested_text;
    int gelu_ffn;
    double rope_local_theta;     /* 0: one RoPE for every layer */
    /* Gemma 2's softcapping (0: none): the attention's scaled scores become
     * cap tanh(score / cap) (attn_logit_softcapping), and so do the logits
     * (final_logit_softcapping); Gemma 3 has the keys too, null in its releases */
    double attn_logit_softcapping, final_logit_softcapping;
    unsigned char global[HF_MAX_LAYERS];
    int fused_proj;              /* phi3: the files hold q|k|v as qkv_proj, gate|up as
                                  * gate_up_proj (model.c splits and joins them) */
    int bos_token_id, eos_token_id;   /* -1 when absent */
    /* A PESC model exported by pesc export (Camelidae's keys): routers and adapters are in
     * its safetensors. num_experts 0 = a dense model (the keys are absent). */
    int num_experts;             /* E */
    int topk;                    /* K */
    int adapter_dim;             /* R */
    double moe_scaling;          /* s, 0.25 when absent */
    /* The chat template the exported model's run trained in (pesc export's "pesc_template":
     * its --template), which commands use where none is given; "": not recorded. */
    char pesc_template[32];
    /* pesc export's "pesc_base_fingerprint": the base model its run trained on (whose
     * checkpoints' --adapters the export already holds); 0: not an export */
    uint64_t pesc_base_fingerprint;
    int pesc_tuning_merged;      /* pesc export's: LoRA or a full run's weights are in it */
} hf_config;

/* Parses config.json text; `where` names the file in messages. */
int hfconfig_parse(hf_config *c, const char *json_text, const char *where, pesc_error *err);
/* Reads DIR/config.json. */
int hfconfig_load(hf_config *c, const char *dir, pesc_error *err);

/* inv_freq (hfconfig_rotary_dim / 2) as Hugging Face computes it for the config's rope type,
 * for a forward pass whose positions reach `positions` (longrope's factors depend on it). */
void hfconfig_inv_freq(const hf_config *c, long positions, float *inv_freq);
/* Whether a forward pass over `positions` positions takes other frequencies than one within
 * the original context (longrope past original_max_position_embeddings). */
int hfconfig_rope_long(const hf_config *c, long positions);
/* The values of each head RoPE rotates (the first ones): head_dim but for a partial rotary. */
int hfconfig_rotary_dim(const hf_config *c);
/* What RoPE's cos and sin are scaled by: longrope's attention factor, else 1. */
double hfconfig_rope_scale(const hf_config *c);
/* Whether RoPE turns q and k of LAYER (0-based): all but SmolLM3's NoPE layers. */
int hfconfig_layer_rope(const hf_config *c, int layer);
/* The sliding window of LAYER: sliding_window, but 0 (none) for Gemma's global layers. */
int hfconfig_layer_window(const hf_config *c, int layer);
/* Whether LAYER turns RoPE by rope_local_theta (Gemma's sliding layers), whose frequencies
 * hfconfig_inv_freq_local gives (D/2 of them, unscaled: the default rope). */
int hfconfig_layer_local_rope(const hf_config *c, int layer);
void hfconfig_inv_freq_local(const hf_config *c, float *inv_freq);

/* Whether the embedding module scales its own output by hfconfig_embedding_scale (Gemma's, in
 * its weights' dtype), rather than the model its embeddings (Granite's) */
int hfconfig_embedding_module_scales(const hf_config *c);

/* Granite's multipliers as factors, 1 where a family has none: the embedding's output, a
 * block's output before the residual sum, q (so that q.k / sqrt(head_dim) comes out times
 * attention_multiplier), the final norm's output (1 / logits_scaling). */
double hfconfig_embedding_scale(const hf_config *c);
double hfconfig_residual_scale(const hf_config *c);
double hfconfig_query_scale(const hf_config *c);
double hfconfig_logit_scale(const hf_config *c);

/* Number of parameters the config implies (tied embeddings counted once). */
long long hfconfig_param_count(const hf_config *c);

#endif
