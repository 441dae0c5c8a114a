/* test_hfconfig — config.json parsing: defaults, every supported family, and the refusals. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "hfconfig.h"
#include "check.h"

#define BASE "\"vocab_size\": 100, \"hidden_size\": 64, \"intermediate_size\": 128, " \
             "\"num_hidden_layers\": 2, \"num_attention_heads\": 8"

static void expect_error(const char *json, const char *needle)
{
    hf_config c;
    pesc_error err = {{0}};
    int rc = hfconfig_parse(&c, json, "cfg.json", &err);
    CHECK(rc == -1, "accepted: %s", json);
    CHECK(rc == -1 && strstr(err.msg, needle) && strstr(err.msg, "cfg.json"),
          "message \"%s\" should name cfg.json and contain \"%s\"", err.msg, needle);
}

/* Keys that, after a config's text up to its closing brace (PREFIX), are refused with their
 * message */
typedef struct refusal {
    const char *keys, *message;
} refusal;

static void expect_refusals(const char *tag, const char *prefix, const refusal *bad, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char text[1024];
        hf_config c;
        pesc_error err = {{0}};
        snprintf(text, sizeof text, "%s%s", prefix, bad[i].keys);
        int rc = hfconfig_parse(&c, text, "x", &err);
        CHECK(rc != 0 && strstr(err.msg, bad[i].message), "%s %s: %s", tag, bad[i].keys, err.msg);
    }
}

static void test_defaults(void)
{
    hf_config c;
    pesc_error err = {{0}};
    int rc = hfconfig_parse(&c, "{\"architectures\": [\"LlamaForCausalLM\"], " BASE "}", "x", &err);
    CHECK(rc == 0, "llama defaults: %s", err.msg);
    CHECK(c.n_kv_heads == 8 && c.head_dim == 8, "kv heads %d head_dim %d", c.n_kv_heads, c.head_dim);
    CHECK(c.rope_theta == 10000.0 && c.rope_type == HF_ROPE_DEFAULT, "rope defaults");
    CHECK(!c.tie_word_embeddings && !c.qkv_bias && !c.sliding_window, "switches off by default");
    CHECK(hfconfig_param_count(&c) == 2 * 100 * 64 + 64 +
          2 * (2 * 64 + 4 * 64 * 64 + 3 * 64 * 128), "param count %lld", hfconfig_param_count(&c));
}

static void test_families(void)
{
    hf_config c;
    pesc_error err = {{0}};
    int rc = hfconfig_parse(&c, "{\"architectures\": [\"Qwen2ForCausalLM\"], " BASE
                            ", \"num_key_value_heads\": 2, \"tie_word_embeddings\": true, "
                            "\"sliding_window\": 4096, \"use_sliding_window\": false}", "x", &err);
    CHECK(rc == 0 && c.qkv_bias && !c.o_bias && c.tie_word_embeddings && c.n_kv_heads == 2 &&
          c.sliding_window == 0, "qwen2: %s", err.msg);
    rc = hfconfig_parse(&c, "{\"architectures\": [\"MistralForCausalLM\"], " BASE
                        ", \"sliding_window\": 4096, \"head_dim\": 16}", "x", &err);
    CHECK(rc == 0 && c.sliding_window == 4096 && c.head_dim == 16, "mistral: %s", err.msg);
    rc = hfconfig_parse(&c, "{\"architectures\": [\"LlamaForCausalLM\"], " BASE
                        ", \"attention_bias\": true, \"eos_token_id\": [7, 9], \"bos_token_id\": 1}",
                        "x", &err);
    CHECK(rc == 0 && c.qkv_bias && c.o_bias && c.eos_token_id == 7 && c.bos_token_id == 1,
          "llama attention_bias: %s", err.msg);
    /* Qwen3: no biases (attention_bias false), each head of q and k RMS-normed, head_dim given */
    rc = hfconfig_parse(&c, "{\"architectures\": [\"Qwen3ForCausalLM\"], " BASE
                        ", \"head_dim\": 32, \"attention_bias\": false, \"use_sliding_window\": "
                        "false, \"sliding_window\": null, \"tie_word_embeddings\": true}", "x",
                        &err);
    CHECK(rc == 0 && c.qk_norm && !c.qkv_bias && !c.o_bias && c.head_dim == 32 &&
          c.sliding_window == 0, "qwen3: %s", err.msg);
    CHECK(hfconfig_param_count(&c) == 100 * 64 + 64 +   /* tied; q, k, v, o of 8 heads of 32 */
          2 * (2 * 64 + 4 * 64 * 8 * 32 + 3 * 64 * 128 + 2 * 32),
          "qwen3 param count %lld", hfconfig_param_count(&c));
    rc = hfconfig_parse(&c, "{\"architectures\": [\"Qwen3ForCausalLM\"], " BASE
                        ", \"attention_bias\": true}", "x", &err);
    CHECK(rc == 0 && c.qk_norm && c.qkv_bias && c.o_bias, "qwen3 attention_bias: %s", err.msg);
    rc = hfconfig_parse(&c, "{\"architectures\": [\"Qwen3ForCausalLM\"], " BASE
                        ", \"use_sliding_window\": true}", "x", &err);
    CHECK(rc != 0 && strstr(err.msg, "use_sliding_window=true is not supported for Qwen3"),
          "qwen3 sliding window refused: %s", err.msg);
    /* Phi-3 (mini-4k's keys): q, k, v and gate, up joined in the files; Mistral's window */
    rc = hfconfig_parse(&c, "{\"architectures\": [\"Phi3ForCausalLM\"], " BASE
                        ", \"sliding_window\": 2047, \"rope_scaling\": null, \"embd_pdrop\": "
                        "0.0, \"original_max_position_embeddings\": 4096}", "x", &err);
    CHECK(rc == 0 && c.fused_proj && c.sliding_window == 2047 && !c.qkv_bias,
          "phi3: %s", err.msg);
    CHECK(hfconfig_param_count(&c) == 2 * 100 * 64 + 64 + 2 * (2 * 64 + 4 * 64 * 64 +
          3 * 64 * 128), "phi3 param count %lld", hfconfig_param_count(&c));
    rc = hfconfig_parse(&c, "{\"architectures\": [\"MistralForCausalLM\"], " BASE "}", "x",
                        &err);
    CHECK(rc == 0 && !c.fused_proj, "only phi3 joins projections: %s", err.msg);
    /* Phi-4-mini rotates 3/4 of each head: RoPE's frequencies are over those values */
    float f[3];
    rc = hfconfig_parse(&c, "{\"architectures\": [\"Phi3ForCausalLM\"], " BASE
                        ", \"partial_rotary_factor\": 0.75}", "x", &err);
    CHECK(rc == 0 && c.rotary_dim == 6 && hfconfig_rotary_dim(&c) == 6, "phi4-mini: %s",
          err.msg);
    hfconfig_inv_freq(&c, 1, f);
    CHECK(fabs(f[1] - pow(10000.0, -2.0 / 6)) < 1e-7 && fabs(f[2] - pow(10000.0, -4.0 / 6)) < 1e-7,
          "partial inv_freq over 6 values: %g %g", f[1], f[2]);
    rc = hfconfig_parse(&c, "{\"architectures\": [\"LlamaForCausalLM\"], " BASE "}", "x", &err);
    CHECK(rc == 0 && hfconfig_rotary_dim(&c) == 8, "whole heads by default: %d",
          hfconfig_rotary_dim(&c));
    expect_error("{\"architectures\": [\"Phi3ForCausalLM\"], " BASE
                 ", \"partial_rotary_factor\": 0.625}",
                 "partial_rotary_factor 0.625 must leave an even number of a head's 8 values to "
                 "rotate");
    expect_error("{\"architectures\": [\"Phi3ForCausalLM\"], " BASE
                 ", \"partial_rotary_factor\": 0}", "partial_rotary_factor 0 must leave");
    /* refused before the product (a float past INT_MAX into an int, found by the fuzzer) */
    expect_error("{\"architectures\": [\"Phi3ForCausalLM\"], " BASE
                 ", \"partial_rotary_factor\": 444444440.75}",
                 "partial_rotary_factor 4.44444e+08 must leave");
}

/* SmolLM3: Llama's layers, RoPE left out of the NoPE ones; tied and theta 2e6 by default */
#define SMOL "{\"architectures\": [\"SmolLM3ForCausalLM\"], \"vocab_size\": 100, " \
             "\"hidden_size\": 64, \"intermediate_size\": 128, \"num_hidden_layers\": 8, " \
             "\"num_attention_heads\": 8"

/* Granite: Llama's layers with four multipliers, each 1 when absent */
#define GRANITE "{\"architectures\": [\"GraniteForCausalLM\"], \"vocab_size\": 100, " \
                "\"hidden_size\": 64, \"intermediate_size\": 128, \"num_hidden_layers\": 2, " \
                "\"num_attention_heads\": 4"

static void test_granite(void)
{
    hf_config c;
    pesc_error err = {{0}};
    int rc = hfconfig_parse(&c, GRANITE ", \"embedding_multiplier\": 12.0, "
                            "\"residual_multiplier\": 0.22, \"attention_multiplier\": 0.015625, "
                            "\"logits_scaling\": 8.0, \"tie_word_embeddings\": true}", "x", &err);
    CHECK(rc == 0 && hfconfig_embedding_scale(&c) == 12.0 && hfconfig_residual_scale(&c) == 0.22 &&
          fabs(hfconfig_query_scale(&c) - 0.015625 * 4.0) < 1e-15 &&
          hfconfig_logit_scale(&c) == 0.125, "granite multipliers: %s", err.msg);
    rc = hfconfig_parse(&c, GRANITE "}", "x", &err);   /* GraniteConfig's defaults: 1 each */
    CHECK(rc == 0 && hfconfig_embedding_scale(&c) == 1.0 && hfconfig_residual_scale(&c) == 1.0 &&
          hfconfig_query_scale(&c) == 4.0 && hfconfig_logit_scale(&c) == 1.0 &&
          !c.tie_word_embeddings, "granite defaults: %s", err.msg);
    /* the other families: 1 but the query's, whose 1/sqrt(head_dim) the attention makes */
    rc = hfconfig_parse(&c, "{\"architectures\": [\"LlamaForCausalLM\"], " BASE
                        ", \"embedding_multiplier\": 12.0, \"logits_scaling\": 8.0}", "x", &err);
    CHECK(rc == 0 && hfconfig_embedding_scale(&c) == 1.0 && hfconfig_query_scale(&c) == 1.0 &&
          hfconfig_logit_scale(&c) == 1.0, "llama ignores granite's keys: %s", err.msg);
    static const refusal bad[] = {
        {", \"residual_multiplier\": 0}", "\"residual_multiplier\" must be a positive number"},
        {", \"logits_scaling\": -8}", "\"logits_scaling\" must be a positive number"},
        {", \"attention_multiplier\": \"0.1\"}", "\"attention_multiplier\" must be a number"},
        {", \"mlp_bias\": true}", "mlp_bias=true is not supported"},
        {", \"partial_rotary_factor\": 0.5}", "partial_rotary_factor is not supported for Granite"},
    };
    expect_refusals("granite", GRANITE, bad, sizeof bad / sizeof *bad);
}

/* Gemma 3's text model, as gemma-3-1b's config.json (from 26 layers to 8) */
#define GEMMA3_SIZES "{\"architectures\": [\"Gemma3ForCausalLM\"], " \
                     "\"model_type\": \"gemma3_text\", \"vocab_size\": 262144, " \
                     "\"hidden_size\": 1152, \"intermediate_size\": 6912, " \
                     "\"num_hidden_layers\": 8, \"num_attention_heads\": 4, " \
                     "\"num_key_value_heads\": 1, \"head_dim\": 256"
#define GEMMA3_KEYS ", \"hidden_activation\": \"gelu_pytorch_tanh\", " \
                    "\"query_pre_attn_scalar\": 256, \"rope_local_base_freq\": 10000, " \
                    "\"rope_theta\": 1000000, \"sliding_window\": 512, " \
                    "\"final_logit_softcapping\": null, \"attn_logit_softcapping\": null"
#define GEMMA3 GEMMA3_SIZES GEMMA3_KEYS ", \"rope_scaling\": null"

static void test_gemma3(void)
{
    hf_config c;
    pesc_error err = {{0}};
    int rc = hfconfig_parse(&c, GEMMA3 ", \"sliding_window_pattern\": 6}", "x", &err);
    CHECK(rc == 0, "gemma3: %s", err.msg);
    CHECK(c.norm_offset == 1.0f && c.sandwich_norms && c.gelu_ffn && c.qk_norm &&
          c.tie_word_embeddings && !c.qkv_bias, "gemma3 switches");
    CHECK(fabs(hfconfig_embedding_scale(&c) - sqrt(1152.0)) < 1e-12 &&
          fabs(hfconfig_query_scale(&c) - 1.0) < 1e-12 && hfconfig_residual_scale(&c) == 1.0 &&
          hfconfig_logit_scale(&c) == 1.0, "gemma3 scales: embedding %g, query %g",
          hfconfig_embedding_scale(&c), hfconfig_query_scale(&c));
    /* layers 5 of every 6 slide, at the local RoPE; the 6th attends to all at rope_theta's */
    for (int l = 0; l < 8; l++) {
        int global = l == 5;
        CHECK(hfconfig_layer_window(&c, l) == (global ? 0 : 512) &&
              hfconfig_layer_local_rope(&c, l) == !global, "gemma3 layer %d", l);
    }
    float local[128], global[128];
    hfconfig_inv_freq_local(&c, local);
    hfconfig_inv_freq(&c, 1, global);
    CHECK(local[1] == (float)(1.0 / pow(10000.0, 2.0 / 256)) &&
          global[1] == (float)(1.0 / pow(1e6, 2.0 / 256)), "gemma3 frequencies %g %g", local[1],
          global[1]);
    CHECK(hfconfig_param_count(&c) == 262144LL * 1152 + 1152 +
          8 * (4LL * 1152 + 2 * 256 + 1152 * 1024 * 2 + 2 * 1152 * 256 + 3LL * 1152 * 6912),
          "gemma3 param count %lld", hfconfig_param_count(&c));
    /* layer_types rather than the pattern; query_pre_attn_scalar apart from head_dim; the
     * defaults of Gemma3TextConfig */
    rc = hfconfig_parse(&c, "{\"architectures\": [\"Gemma3ForCausalLM\"], " BASE
                        ", \"query_pre_attn_scalar\": 64, \"layer_types\": "
                        "[\"full_attention\", \"sliding_attention\"]}", "x", &err);
    CHECK(rc == 0 && c.head_dim == 256 && c.rope_theta == 1e6 && c.sliding_window == 4096 &&
          c.rope_local_theta == 10000.0 && c.tie_word_embeddings &&
          hfconfig_layer_window(&c, 0) == 0 && hfconfig_layer_window(&c, 1) == 4096 &&
          fabs(hfconfig_query_scale(&c) - 2.0) < 1e-12, "gemma3 defaults: %s", err.msg);
    /* the global layers alone take rope_scaling */
    rc = hfconfig_parse(&c, GEMMA3_SIZES GEMMA3_KEYS ", \"_sliding_window_pattern\": 2, "
                        "\"rope_scaling\": "
                        "{\"rope_type\": \"linear\", \"factor\": 8.0}}", "x", &err);
    hfconfig_inv_freq_local(&c, local);
    hfconfig_inv_freq(&c, 1, global);
    CHECK(rc == 0 && hfconfig_layer_window(&c, 1) == 0 && hfconfig_layer_window(&c, 2) == 512 &&
          local[1] == (float)(1.0 / pow(10000.0, 2.0 / 256)) &&
          global[1] == (float)(1.0 / pow(1e6, 2.0 / 256) / 8.0), "gemma3 scaled: %s", err.msg);
    CHECK(c.attn_logit_softcapping == 0 && c.final_logit_softcapping == 0, "gemma3: no softcaps");
    /* softcaps where a Gemma 3 file sets them (transformers applies them as Gemma 2's) */
    rc = hfconfig_parse(&c, GEMMA3_SIZES ", \"attn_logit_softcapping\": 50.0}", "x", &err);
    CHECK(rc == 0 && c.attn_logit_softcapping == 50.0 && c.final_logit_softcapping == 0,
          "gemma3 softcap: %s", err.msg);
    static const refusal bad[] = {
        {", \"final_logit_softcapping\": 0}", "\"final_logit_softcapping\" must be a positive number or null"},
        {", \"attn_logit_softcapping\": \"50\"}", "\"attn_logit_softcapping\" must be a positive number or null"},
        {", \"hidden_activation\": \"gelu\"}", "hidden_activation \"gelu\" is not supported"},
        {", \"attention_bias\": true}", "attention_bias=true is not supported for Gemma 3"},
        {", \"use_bidirectional_attention\": true}", "use_bidirectional_attention=true"},
        {", \"layer_types\": [\"full_attention\"]}",
         "\"layer_types\" must be a list of \"sliding_attention\" or \"full_attention\" for each of the 8 layers"},
        {", \"layer_types\": [1, 2, 3, 4, 5, 6, 7, 8]}", "layer_types[0] must be"},
        {", \"sliding_window_pattern\": 0}", "\"sliding_window_pattern\" must be at least 1"},
        {", \"query_pre_attn_scalar\": 0}", "query_pre_attn_scalar and rope_local_base_freq"},
        {", \"partial_rotary_factor\": 0.5}", "partial_rotary_factor is not supported for Gemma"},
    };
    expect_refusals("gemma3", GEMMA3_SIZES, bad, sizeof bad / sizeof *bad);
    /* gemma-3-4b-it's config.json: the text model's keys in text_config, the rest left to
     * Gemma3TextConfig's defaults (8 heads on 4, head_dim 256, 262208 tokens, tied); the
     * export's PESC keys and EOS at the top */
    rc = hfconfig_parse(&c, "{\"architectures\": [\"Gemma3ForConditionalGeneration\"], "
                        "\"model_type\": \"gemma3\", \"eos_token_id\": [1, 106], "
                        "\"text_config\": {\"hidden_size\": 2560, \"intermediate_size\": 10240, "
                        "\"model_type\": \"gemma3_text\", \"num_hidden_layers\": 34, "
                        "\"rope_scaling\": {\"factor\": 8.0, \"rope_type\": \"linear\"}, "
                        "\"sliding_window\": 1024}, \"vision_config\": {\"hidden_size\": 1152}, "
                        "\"num_experts\": 8, \"topk\": 2, \"adapter_dim\": 512}", "x", &err);
    CHECK(rc == 0 && c.nested_text && c.vocab_size == 262208 && c.hidden_size == 2560 &&
          c.n_layers == 34 && c.n_heads == 8 && c.n_kv_heads == 4 && c.head_dim == 256 &&
          c.tie_word_embeddings && c.gelu_ffn && c.sandwich_norms && c.rope_type == HF_ROPE_LINEAR &&
          hfconfig_layer_window(&c, 4) == 1024 && hfconfig_layer_window(&c, 5) == 0 &&
          c.eos_token_id == 1 && c.num_experts == 8 && c.max_position_embeddings == 131072,
          "gemma3 4b: %s", err.msg);
    expect_error("{\"architectures\": [\"Gemma3ForConditionalGeneration\"], " BASE "}",
                 "Gemma3ForConditionalGeneration keeps its text model's keys in \"text_config\"");
    expect_error("{\"architectures\": [\"Gemma3ForConditionalGeneration\"], \"text_config\": "
                 "{\"final_logit_softcapping\": -30.0}}",
                 "cfg.json (text_config): \"final_logit_softcapping\" must be a positive");
}

/* Gemma 2: gemma-2-2b-it's config.json (26 layers to 4): Gemma 3's layer without QK-norm or a
 * second RoPE, every other layer sliding (the first), the scores and the logits softcapped */
#define GEMMA2_SIZES "{\"architectures\": [\"Gemma2ForCausalLM\"], \"model_type\": \"gemma2\", " \
                     "\"vocab_size\": 256000, \"hidden_size\": 2304, " \
                     "\"intermediate_size\": 9216, \"num_hidden_layers\": 4, " \
                     "\"num_attention_heads\": 8, \"num_key_value_heads\": 4, \"head_dim\": 256"

static void test_gemma2(void)
{
    hf_config c;
    pesc_error err = {{0}};
    int rc = hfconfig_parse(&c, GEMMA2_SIZES ", \"attention_bias\": false, "
                            "\"attn_logit_softcapping\": 50.0, \"bos_token_id\": 2, "
                            "\"cache_implementation\": \"hybrid\", \"eos_token_id\": [1, 107], "
                            "\"final_logit_softcapping\": 30.0, "
                            "\"hidden_act\": \"gelu_pytorch_tanh\", "
                            "\"hidden_activation\": \"gelu_pytorch_tanh\", "
                            "\"max_position_embeddings\": 8192, \"pad_token_id\": 0, "
                            "\"query_pre_attn_scalar\": 256, \"rms_norm_eps\": 1e-06, "
                            "\"rope_theta\": 10000.0, \"sliding_window\": 4096, "
                            "\"torch_dtype\": \"float32\"}", "x", &err);
    CHECK(rc == 0, "gemma2: %s", err.msg);
    CHECK(c.norm_offset == 1.0f && c.sandwich_norms && c.gelu_ffn && !c.qk_norm &&
          c.tie_word_embeddings && c.rope_local_theta == 0 && c.eos_token_id == 1 &&
          c.attn_logit_softcapping == 50.0 && c.final_logit_softcapping == 30.0 &&
          hfconfig_embedding_module_scales(&c) &&
          fabs(hfconfig_embedding_scale(&c) - 48.0) < 1e-12 &&
          fabs(hfconfig_query_scale(&c) - 1.0) < 1e-12, "gemma2 switches");
    for (int l = 0; l < 4; l++)   /* layers 0 and 2 slide; all turn one RoPE */
        CHECK(hfconfig_layer_window(&c, l) == (l % 2 ? 0 : 4096) &&
              !hfconfig_layer_local_rope(&c, l), "gemma2 layer %d", l);
    /* Gemma2Config's defaults: softcaps 50 and 30 when absent, none when null; layer_types
     * as transformers >= 4.53 writes them */
    rc = hfconfig_parse(&c, "{\"architectures\": [\"Gemma2ForCausalLM\"], " BASE
                        ", \"layer_types\": [\"full_attention\", \"sliding_attention\"]}", "x",
                        &err);
    CHECK(rc == 0 && c.head_dim == 256 && c.rope_theta == 10000.0 && c.sliding_window == 4096 &&
          c.max_position_embeddings == 8192 && c.attn_logit_softcapping == 50.0 &&
          c.final_logit_softcapping == 30.0 && hfconfig_layer_window(&c, 0) == 0 &&
          hfconfig_layer_window(&c, 1) == 4096, "gemma2 defaults: %s", err.msg);
    rc = hfconfig_parse(&c, GEMMA2_SIZES ", \"attn_logit_softcapping\": null, "
                        "\"final_logit_softcapping\": null}", "x", &err);
    CHECK(rc == 0 && c.attn_logit_softcapping == 0 && c.final_logit_softcapping == 0,
          "gemma2 without softcaps: %s", err.msg);
    static const refusal bad[] = {
        {", \"attn_logit_softcapping\": 0.0}", "\"attn_logit_softcapping\" must be a positive number or null"},
        {", \"hidden_activation\": \"gelu\"}", "hidden_activation \"gelu\" is not supported for Gemma2ForCausalLM"},
        {", \"attention_bias\": true}", "attention_bias=true is not supported for Gemma 2"},
        {", \"query_pre_attn_scalar\": -1}", "query_pre_attn_scalar must be positive"},
        {", \"layer_types\": [\"full_attention\"]}", "\"layer_types\" must be a list"},
    };
    expect_refusals("gemma2", GEMMA2_SIZES, bad, sizeof bad / sizeof *bad);
}

/* OLMo 2 (OLMo-2-0425-1B's config.json, 16 layers to 2): no norm before its blocks, one after
 * each, q and k normed whole */
static void test_olmo2(void)
{
    hf_config c;
    pesc_error err = {{0}};
    int rc = hfconfig_parse(&c, "{\"architectures\": [\"Olmo2ForCausalLM\"], "
                            "\"model_type\": \"olmo2\", \"vocab_size\": 100352, "
                            "\"hidden_size\": 2048, \"intermediate_size\": 8192, "
                            "\"num_hidden_layers\": 2, \"num_attention_heads\": 16, "
                            "\"num_key_value_heads\": 16, \"rope_theta\": 500000, "
                            "\"rms_norm_eps\": 1e-06, \"attention_bias\": false, "
                            "\"hidden_act\": \"silu\", \"tie_word_embeddings\": false}", "x", &err);
    CHECK(rc == 0 && c.qk_norm && c.qk_norm_whole && c.sandwich_norms && c.no_pre_norms &&
          c.norm_offset == 0.0f && !c.gelu_ffn && hfconfig_embedding_scale(&c) == 1.0 &&
          hfconfig_query_scale(&c) == 1.0 && c.head_dim == 128, "olmo2: %s", err.msg);
    /* per layer: two post norms, q_norm and k_norm as wide as q and k */
    CHECK(hfconfig_param_count(&c) == 2 * 100352LL * 2048 + 2048 +
          2 * (2 * 2048 + 2 * 2048 + 4LL * 2048 * 2048 + 3LL * 2048 * 8192),
          "olmo2 param count %lld", hfconfig_param_count(&c));
    static const refusal bad[] = {
        {", \"hidden_act\": \"gelu\"}", "hidden_act \"gelu\" is not supported"},
        {", \"mlp_bias\": true}", "mlp_bias=true is not supported"},
    };
    expect_refusals("olmo2", "{\"architectures\": [\"Olmo2ForCausalLM\"], " BASE, bad,
                    sizeof bad / sizeof *bad);
}

static void test_smollm3(void)
{
    hf_config c;
    pesc_error err = {{0}};
    char ropes[9] = {0};
    int rc = hfconfig_parse(&c, SMOL ", \"num_key_value_heads\": 2}", "x", &err);
    for (int l = 0; l < 8; l++)
        ropes[l] = hfconfig_layer_rope(&c, l) ? 'r' : '-';
    CHECK(rc == 0 && strcmp(ropes, "rrr-rrr-") == 0 && c.tie_word_embeddings &&
          c.rope_theta == 2e6 && !c.qkv_bias && c.sliding_window == 0,
          "smollm3 defaults: %s, layers %s", err.msg, ropes);
    CHECK(hfconfig_param_count(&c) == 100 * 64 + 64 +   /* tied; kv 2 heads of 8 */
          8 * (2 * 64 + 64 * 64 + 2 * 64 * 16 + 64 * 64 + 3 * 64 * 128),
          "smollm3 param count %lld", hfconfig_param_count(&c));
    /* as released: the list given (here longer than the layers, as transformers allows), and
     * the keys that are the defaults of other families */
    rc = hfconfig_parse(&c, SMOL ", \"no_rope_layers\": [0, 1, 1, 1, 1, 1, 0, 1, 0], "
                        "\"no_rope_layer_interval\": 4, \"use_sliding_window\": false, "
                        "\"sliding_window\": null, \"tie_word_embeddings\": false, "
                        "\"rope_theta\": 5000000.0, \"attention_bias\": false}", "x", &err);
    for (int l = 0; l < 8; l++)
        ropes[l] = hfconfig_layer_rope(&c, l) ? 'r' : '-';
    CHECK(rc == 0 && strcmp(ropes, "-rrrrr-r") == 0 && !c.tie_word_embeddings &&
          c.rope_theta == 5e6, "smollm3 no_rope_layers: %s, layers %s", err.msg, ropes);
    rc = hfconfig_parse(&c, SMOL ", \"no_rope_layer_interval\": 3}", "x", &err);
    for (int l = 0; l < 8; l++)
        ropes[l] = hfconfig_layer_rope(&c, l) ? 'r' : '-';
    CHECK(rc == 0 && strcmp(ropes, "rr-rr-rr") == 0, "smollm3 interval 3: %s", ropes);
    /* the other families rotate every layer */
    rc = hfconfig_parse(&c, "{\"architectures\": [\"LlamaForCausalLM\"], " BASE
                        ", \"no_rope_layers\": [0, 0]}", "x", &err);
    CHECK(rc == 0 && hfconfig_layer_rope(&c, 0) && hfconfig_layer_rope(&c, 1) &&
          !c.tie_word_embeddings && c.rope_theta == 10000.0, "llama ignores no_rope_layers");
    expect_error(SMOL ", \"no_rope_layers\": [1, 1, 1, 0]}",
                 "\"no_rope_layers\" must be a list of a 1 (RoPE) or 0 (none) for each of the 8 layers");
    expect_error(SMOL ", \"no_rope_layers\": [1, 1, 1, 2, 1, 1, 1, 0]}",
                 "no_rope_layers[3] must be a 1 (RoPE) or 0 (none)");
    expect_error(SMOL ", \"no_rope_layers\": \"1110\"}", "\"no_rope_layers\" must be a list");
    expect_error(SMOL ", \"no_rope_layer_interval\": 0}",
                 "\"no_rope_layer_interval\" must be at least 1");
    expect_error(SMOL ", \"use_sliding_window\": true, \"sliding_window\": 4096}",
                 "use_sliding_window=true is not supported for SmolLM3");
    expect_error(SMOL ", \"mlp_bias\": true}", "mlp_bias=true is not supported");
}

static void test_rope(void)
{
    hf_config c;
    pesc_error err = {{0}};
    float f[4];
    int rc = hfconfig_parse(&c, "{\"architectures\": [\"LlamaForCausalLM\"], " BASE
                            ", \"rope_scaling\": {\"type\": \"linear\", \"factor\": 4.0}}", "x", &err);
    CHECK(rc == 0 && c.rope_type == HF_ROPE_LINEAR, "linear: %s", err.msg);
    hfconfig_inv_freq(&c, 1, f);
    CHECK(fabs(f[0] - 0.25) < 1e-7 && fabs(f[1] - 0.25 * pow(10000.0, -0.25)) < 1e-7,
          "linear inv_freq %g %g", f[0], f[1]);
    /* llama3: wavelengths 2pi*10000^(i/4) = 6.28, 62.8, 628, 6283 against original 64 with
     * low 1, high 4: thresholds 64 and 16 — kept, scaled, scaled, scaled; none smoothed */
    rc = hfconfig_parse(&c, "{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"rope_scaling\": "
                        "{\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0, "
                        "\"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 64}}",
                        "x", &err);
    CHECK(rc == 0 && c.rope_type == HF_ROPE_LLAMA3, "llama3: %s", err.msg);
    hfconfig_inv_freq(&c, 1, f);
    double base1 = pow(10000.0, -0.25), wavelen1 = 2 * M_PI / base1;
    double smooth = (64.0 / wavelen1 - 1.0) / 3.0;
    double want1 = (1 - smooth) * base1 / 8 + smooth * base1;
    CHECK(fabs(f[0] - 1.0) < 1e-7, "llama3 high frequency kept: %g", f[0]);
    CHECK(fabs(f[1] - want1) < 1e-7 * want1, "llama3 medium frequency smoothed: %g vs %g", f[1], want1);
    CHECK(fabs(f[3] - pow(10000.0, -0.75) / 8) < 1e-9, "llama3 low frequency scaled: %g", f[3]);
}

/* Phi-3's 128k models: longrope's short factors within the original context, its long ones
 * for a pass past it, and cos and sin scaled by sqrt(1 + ln(max / original) / ln(original)) */
static void test_longrope(void)
{
    hf_config c;
    pesc_error err = {{0}};
    float f[4];
#define PHI3 "{\"architectures\": [\"Phi3ForCausalLM\"], " BASE ", \"max_position_embeddings\": "
    int rc = hfconfig_parse(&c, PHI3 "131072, \"original_max_position_embeddings\": 4096, "
                            "\"rope_scaling\": {\"type\": \"longrope\", \"short_factor\": "
                            "[1.0, 1.5, 2.0, 4.0], \"long_factor\": [1, 2, 3, 4]}}", "x", &err);
    CHECK(rc == 0 && c.rope_type == HF_ROPE_LONGROPE, "longrope: %s", err.msg);
    CHECK(c.max_position_embeddings == 131072 && c.rope_original_max_position == 4096,
          "contexts: %d from %d", c.max_position_embeddings, c.rope_original_max_position);
    double want = sqrt(1.0 + log(32.0) / log(4096.0));
    CHECK(fabs(c.rope_attention_factor - want) < 1e-12, "attention factor %.17g, want %.17g",
          c.rope_attention_factor, want);
    hfconfig_inv_freq(&c, 4096, f);
    CHECK(!hfconfig_rope_long(&c, 4096) && fabs(f[0] - 1.0) < 1e-7 &&
          fabs(f[1] - pow(10000.0, -0.25) / 1.5) < 1e-7 &&
          fabs(f[3] - pow(10000.0, -0.75) / 4.0) < 1e-9, "short factors divide: %g %g %g", f[0],
          f[1], f[3]);
    hfconfig_inv_freq(&c, 4097, f);
    CHECK(hfconfig_rope_long(&c, 4097) && fabs(f[1] - pow(10000.0, -0.25) / 2) < 1e-7 &&
          fabs(f[3] - pow(10000.0, -0.75) / 4.0) < 1e-9, "long factors past 4096: %g %g", f[1],
          f[3]);
    /* "su" is its old name; a given attention_factor stands */
    rc = hfconfig_parse(&c, PHI3 "8192, \"original_max_position_embeddings\": 4096, "
                        "\"rope_scaling\": {\"type\": \"su\", \"short_factor\": [1, 1, 1, 1], "
                        "\"long_factor\": [1, 1, 1, 1], \"attention_factor\": 1.5}}", "x", &err);
    CHECK(rc == 0 && c.rope_type == HF_ROPE_LONGROPE && c.rope_attention_factor == 1.5,
          "su with attention_factor: %s", err.msg);
    expect_error(PHI3 "8192, \"original_max_position_embeddings\": 4096, \"rope_scaling\": "
                 "{\"type\": \"longrope\", \"short_factor\": [1, 2], \"long_factor\": [1, 2]}}",
                 "longrope rope_scaling needs \"short_factor\", a list of 4 numbers (half the "
                 "rotated values of a head)");
    expect_error(PHI3 "8192, \"original_max_position_embeddings\": 4096, \"rope_scaling\": "
                 "{\"type\": \"longrope\", \"short_factor\": [1, 2, 0, 1]}}",
                 "rope_scaling short_factor[2] must be a positive number");
    expect_error(PHI3 "8192, \"original_max_position_embeddings\": 4096, \"rope_scaling\": "
                 "{\"type\": \"longrope\", \"short_factor\": [1, 2, 3, 1]}}",
                 "longrope rope_scaling needs \"long_factor\", a list of 4 numbers");
    expect_error(PHI3 "8192, \"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4}}",
                 "rope_scaling type \"yarn\" is not supported; supported: linear, llama3, "
                 "longrope");
#undef PHI3
}

/* An exported PESC model: Camelidae's keys; absent keys mean a dense model. */
static void test_crafting(void)
{
    hf_config c;
    pesc_error err = {{0}};
    int rc = hfconfig_parse(&c, "{\"architectures\": [\"LlamaForCausalLM\"], " BASE "}", "x", &err);
    CHECK(rc == 0 && c.num_experts == 0, "dense: num_experts %d", c.num_experts);
    rc = hfconfig_parse(&c, "{\"architectures\": [\"LlamaForCausalLM\"], " BASE
                        ", \"num_experts\": 8, \"topk\": 2, \"adapter_dim\": 64, "
                        "\"moe_scaling\": 0.5, \"output_router_logits\": false}", "x", &err);
    CHECK(rc == 0 && c.num_experts == 8 && c.topk == 2 && c.adapter_dim == 64 &&
          c.moe_scaling == 0.5, "crafted: %s", err.msg);
    rc = hfconfig_parse(&c, "{\"architectures\": [\"LlamaForCausalLM\"], " BASE
                        ", \"num_experts\": 4, \"topk\": 1, \"adapter_dim\": 8}", "x", &err);
    CHECK(rc == 0 && c.moe_scaling == 0.25, "moe_scaling defaults to 0.25: %g", c.moe_scaling);
    expect_error("{\"architectures\": [\"LlamaForCausalLM\"], " BASE
                 ", \"num_experts\": 4, \"adapter_dim\": 8}", "\"topk\" is missing");
    expect_error("{\"architectures\": [\"LlamaForCausalLM\"], " BASE
                 ", \"num_experts\": 4, \"topk\": 5, \"adapter_dim\": 8}", "topk 5");
    expect_error("{\"architectures\": [\"LlamaForCausalLM\"], " BASE
                 ", \"num_experts\": 4, \"topk\": 2, \"adapter_dim\": 0}", "adapter_dim 0");
    /* the run's chat template, as pesc export records it */
    CHECK(c.pesc_template[0] == '\0', "no pesc_template: \"%s\"", c.pesc_template);
    rc = hfconfig_parse(&c, "{\"architectures\": [\"LlamaForCausalLM\"], " BASE
                        ", \"pesc_template\": \"chatml\"}", "x", &err);
    CHECK(rc == 0 && strcmp(c.pesc_template, "chatml") == 0, "pesc_template: %s", err.msg);
    expect_error("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"pesc_template\": 3}",
                 "\"pesc_template\" must name a chat template");
}

int main(void)
{
    test_defaults();
    test_families();
    test_smollm3();
    test_granite();
    test_gemma3();
    test_gemma2();
    test_olmo2();
    test_rope();
    test_longrope();
    test_crafting();
    expect_error("{", "not valid JSON");
    expect_error("[1]", "JSON object");
    expect_error("{\"architectures\": [\"GPT2LMHeadModel\"], " BASE "}",
                 "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM");
    expect_error("{" BASE "}", "architectures");
    /* only whole names of the list count, not pieces of one or of two */
    static const char *const near[] = {"Llama", "ForCausalLM", "LlamaForCausalLMX",
                                       "XLlamaForCausalLM", "Qwen3ForCausalLM, Phi3ForCausalLM",
                                       ", MistralForCausalLM", ""};
    for (size_t i = 0; i < sizeof near / sizeof *near; i++) {
        char json[256];
        snprintf(json, sizeof json, "{\"architectures\": [\"%s\"], " BASE "}", near[i]);
        expect_error(json, "is not supported; supported: LlamaForCausalLM");
    }
    /* absurd sizes are refused by the parser, not by an allocation of their size */
    expect_error("{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 100, "
                 "\"hidden_size\": 64, \"intermediate_size\": 128, \"num_hidden_layers\": "
                 "1000000000, \"num_attention_heads\": 8}",
                 "\"num_hidden_layers\" must be an integer from 1 to 1024");
    expect_error("{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": -1, "
                 "\"hidden_size\": 64, \"intermediate_size\": 128, \"num_hidden_layers\": 2, "
                 "\"num_attention_heads\": 8}", "\"vocab_size\" must be an integer from 1 to 4194304");
    expect_error("{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 100, "
                 "\"hidden_size\": \"64\", \"intermediate_size\": 128, \"num_hidden_layers\": 2, "
                 "\"num_attention_heads\": 8}",
                 "\"hidden_size\" must be an integer from 1 to 65536 (not a string: write it "
                 "without quotes)");
    expect_error("{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 10}", "hidden_size");
    expect_error("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"num_key_value_heads\": 3}",
                 "multiple");
    expect_error("{\"architectures\": [\"LlamaForCausalLM\"], " BASE
                 ", \"rope_scaling\": {\"type\": \"yarn\", \"factor\": 2}}", "yarn");
    expect_error("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"hidden_act\": \"gelu\"}",
                 "gelu");
    expect_error("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"hidden_size\": \"64\"}",
                 "hidden_size");
    expect_error("{\"architectures\": [\"Qwen2ForCausalLM\"], " BASE ", \"use_sliding_window\": true}",
                 "use_sliding_window");
    expect_error("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"mlp_bias\": true}",
                 "mlp_bias");
    printf("%d failure%s\n", failures, failures == 1 ? "" : "s");
    return failures ? 1 : 0;
}
