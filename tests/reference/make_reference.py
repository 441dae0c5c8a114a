#!/usr/bin/python3
"""Generate tiny random Hugging Face-layout checkpoints and exact reference outputs.

Run with the system Python (Debian's python3-torch / python3-numpy):

    /usr/bin/python3 tests/reference/make_reference.py [NAME...]

For every model (or only the NAMEd ones) below this writes, under tests/reference/data/<name>/:

  config.json                 HF-style config (sorted keys, indent 2, like HF's save_pretrained)
  model.safetensors           or model-0000k-of-00002.safetensors + model.safetensors.index.json
  records.jsonl               one {"input_ids": [...]} (optionally "labels") per line
  expected.json               exact float64 logits and losses

The forward pass is written out by hand in torch, following transformers'
LlamaForCausalLM / Qwen2ForCausalLM / MistralForCausalLM / Qwen3ForCausalLM / Phi3ForCausalLM /
SmolLM3ForCausalLM / GraniteForCausalLM / Gemma2ForCausalLM / Gemma3ForCausalLM / Olmo2ForCausalLM
eager code paths (Phi-3 stores q|k|v as one qkv_proj and gate|up as one gate_up_proj: its
file is written joined, and the forward takes the parts as Phi3Attention and Phi3MLP slice them;
Gemma 2's and Gemma 3's layers are sandwiched between norms whose stored weights are offsets
from 1, and Gemma 2 caps its attention scores and its logits with tanh;
OLMo 2's blocks read the residual stream unnormed and have their outputs normed before each
residual sum, with q and k normed over their whole width before the split into heads;
Gemma3ForConditionalGeneration's files hold that text model under other names, its config in
text_config, beside a vision tower and a projector that are not computed).
Everything is computed in float64 from the weights *as stored* (bf16/f16 values
rounded first, then upcast), so expected.json holds the exact answers that a
lower-precision implementation approximates.  The output is deterministic:
re-running produces byte-identical files.
"""

import json
import math
import os
import struct
import sys

import torch

assert sys.byteorder == "little", "safetensors data is written with native (little-endian) byte order"

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
TRANSFORMERS_VERSION = "4.46.0"  # only a realistic-looking config key; transformers is not used

# --------------------------------------------------------------------------
# Model definitions
# --------------------------------------------------------------------------

def smollm3_config(**keys):
    """A SmolLM3ForCausalLM config.json with SmolLM3-3B's keys: Llama's layers with RoPE left
    out of the NoPE ones (no_rope_layers: 1 RoPE, 0 none), and no tie_word_embeddings key:
    transformers leaves out a value equal to its own default (true), as the released file does."""
    config = {
        "architectures": ["SmolLM3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": None,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "max_window_layers": 28,
        "mlp_bias": False,
        "model_type": "smollm3",
        "no_rope_layer_interval": 4,
        "pad_token_id": 0,
        "pretraining_tp": 2,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 5000000.0,
        "sliding_window": None,
        "transformers_version": "4.54.0",
        "use_cache": False,
        "use_sliding_window": False,
        "vocab_size": 64,
    }
    config.update(keys)
    return config


def granite_config(**keys):
    """A GraniteForCausalLM config.json with Granite-3.x's keys: Llama's layers with four
    multipliers (the embedding's output, each block's output before the residual sum, the
    attention's scores in place of 1/sqrt(head_dim), the logits divided)."""
    config = {
        "architectures": ["GraniteForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attention_multiplier": 0.1,
        "bos_token_id": 0,
        "embedding_multiplier": 12.0,
        "eos_token_id": 0,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "logits_scaling": 4.0,
        "mlp_bias": False,
        "model_type": "granite",
        "pad_token_id": 0,
        "residual_multiplier": 0.22,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 10000000.0,
        "tie_word_embeddings": True,
        "transformers_version": "4.46.0",
        "use_cache": True,
        "vocab_size": 64,
    }
    config.update(keys)
    return config


def gemma2_config(**keys):
    """A Gemma2ForCausalLM config.json (model_type gemma2) with the keys of the Gemma 2 releases
    (gemma-2-2b's file, as transformers 4.42.4 saved it): Gemma 3's sandwiched layer of (1 + w)
    norms, scaled embeddings, query_pre_attn_scalar and GELU (tanh) FFN, but no QK-norm, one RoPE
    (rope_theta, default type) for every layer, no layer_types key (the even layers slide, the odd
    ones see everything), the attention's scores and the logits capped by tanh
    (attn_logit_softcapping, final_logit_softcapping), and no tie_word_embeddings key (tied:
    Gemma2Config's default).  The released softcaps (50 and 30) are left as they are here; a
    fixture gives small ones that bite in a tiny random model."""
    config = {
        "architectures": ["Gemma2ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_logit_softcapping": 50.0,
        "bos_token_id": 2,
        "cache_implementation": "hybrid",
        "eos_token_id": 1,
        "final_logit_softcapping": 30.0,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_activation": "gelu_pytorch_tanh",
        "initializer_range": 0.02,
        "model_type": "gemma2",
        "pad_token_id": 0,
        "rms_norm_eps": 1e-06,
        "rope_theta": 10000.0,
        "torch_dtype": "float32",
        "transformers_version": "4.42.4",
        "use_cache": True,
        "vocab_size": 64,
    }
    config.update(keys)
    return config


def gemma3_config(**keys):
    """A Gemma3ForCausalLM config.json (model_type gemma3_text) with the keys of Gemma 3's
    text-only releases (gemma-3-270m's file, as transformers 4.55 saves it): scaled embeddings,
    RMSNorms whose weight is an offset from 1 on both sides of the attention and the FFN, QK-norm,
    scores scaled by query_pre_attn_scalar ** -0.5, a GELU (tanh) FFN, sliding-window layers with
    their own RoPE base (rope_local_base_freq, no scaling) between full-attention ones (rope_theta
    with rope_scaling), always tied."""
    config = {
        "architectures": ["Gemma3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_logit_softcapping": None,
        "bos_token_id": 2,
        "eos_token_id": 1,
        "final_logit_softcapping": None,
        "hidden_activation": "gelu_pytorch_tanh",
        "initializer_range": 0.02,
        "model_type": "gemma3_text",
        "pad_token_id": 0,
        "rms_norm_eps": 1e-06,
        "rope_local_base_freq": 10000.0,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
        "transformers_version": "4.55.0",
        "use_bidirectional_attention": False,
        "use_cache": True,
        "vocab_size": 64,
    }
    config.update(keys)
    return config


def olmo2_config(**keys):
    """An Olmo2ForCausalLM config.json (model_type olmo2) with the keys of AI2's OLMo 2 releases
    (allenai/OLMo-2-0425-1B's file): Llama's attention and SiLU FFN without their input norms,
    each block's output normed (post_attention_layernorm, post_feedforward_layernorm) before the
    residual sum, q and k normed over the whole projection (q_norm [heads * head_dim], k_norm
    [kv_heads * head_dim]) before the split into heads, no biases, untied.  The released file's
    token ids (bos and eos 100257, pad 100277) lie outside this vocabulary of 64: small ones
    instead."""
    config = {
        "architectures": ["Olmo2ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "model_type": "olmo2",
        "pad_token_id": 0,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
        "transformers_version": "4.48.0",
        "use_cache": True,
        "vocab_size": 64,
    }
    config.update(keys)
    return config


def gemma3_mm_config(text_config, **keys):
    """A Gemma3ForConditionalGeneration config.json (model_type gemma3): the keys of the multimodal
    Gemma 3 releases (gemma-3-4b/12b/27b), the text model's keys nested in text_config and a tiny
    SigLIP vision_config.  Like the released files, text_config leaves out the keys equal to
    Gemma3TextConfig's defaults (hidden_activation gelu_pytorch_tanh, null softcappings,
    attention_bias false, tie_word_embeddings true); unlike them it gives every size, since those
    defaults are gemma-3-4b's.  Only the text model is computed; the vision tower and the projector
    are in the file only to be ignored."""
    config = {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "boi_token_index": 255999,
        "eoi_token_index": 256000,
        "eos_token_id": [1, 106],
        "image_token_index": 262144,
        "initializer_range": 0.02,
        "mm_tokens_per_image": 256,
        "model_type": "gemma3",
        "text_config": text_config,
        "vision_config": {
            "hidden_size": 16,
            "image_size": 32,
            "intermediate_size": 32,
            "model_type": "siglip_vision_model",
            "num_attention_heads": 2,
            "num_hidden_layers": 1,
            "patch_size": 16,
            "vision_use_head": False,
        },
    }
    config.update(keys)
    return config


def gemma3_mm_text_config(**keys):
    """text_config of a tiny Gemma3ForConditionalGeneration: gemma3_text with every size given,
    GQA (2 heads, 1 kv head), query_pre_attn_scalar 20 (not head_dim 16), window 5, linear RoPE
    scaling 2 on the global layers, and the given layer kinds (sliding_window_pattern or
    layer_types)."""
    config = {
        "head_dim": 16,
        "hidden_size": 32,
        "intermediate_size": 48,
        "max_position_embeddings": 256,
        "model_type": "gemma3_text",
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "num_key_value_heads": 1,
        "query_pre_attn_scalar": 20,
        "rms_norm_eps": 1e-06,
        "rope_local_base_freq": 10000.0,
        "rope_scaling": {"factor": 2.0, "rope_type": "linear"},
        "rope_theta": 1000000.0,
        "sliding_window": 5,
        "vocab_size": 64,
    }
    config.update(keys)
    return config


def phi3_config(**keys):
    """A Phi3ForCausalLM config.json with Phi-3-mini's keys: 2 layers of 4 heads, vocabulary 64,
    and the given keys (sizes, context, rope_scaling, window, dtype)."""
    config = {
        "architectures": ["Phi3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "embd_pdrop": 0.0,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "model_type": "phi3",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "pad_token_id": 0,
        "resid_pdrop": 0.0,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "transformers_version": TRANSFORMERS_VERSION,
        "use_cache": True,
        "vocab_size": 64,
    }
    config.update(keys)
    return config


def f32_model(name, seed, config):
    """A model stored in F32, in one model.safetensors"""
    return {"name": name, "seed": seed, "dtype": torch.float32, "shards": 1, "config": config}


MODELS = [
    {
        "name": "llama-gqa-f32",
        "seed": 1001,
        "dtype": torch.float32,
        "shards": 1,
        "config": {
            "architectures": ["LlamaForCausalLM"],
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": 1,
            # Llama 3.x configs carry a list of eos ids
            "eos_token_id": [2, 3],
            "hidden_act": "silu",
            "hidden_size": 64,
            "initializer_range": 0.02,
            "intermediate_size": 96,
            "max_position_embeddings": 128,
            "mlp_bias": False,
            "model_type": "llama",
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "num_key_value_heads": 2,
            "pretraining_tp": 1,
            "rms_norm_eps": 1e-05,
            "rope_scaling": {
                "factor": 8.0,
                "high_freq_factor": 4.0,
                "low_freq_factor": 1.0,
                "original_max_position_embeddings": 16,
                "rope_type": "llama3",
            },
            "rope_theta": 10000.0,
            "tie_word_embeddings": False,
            "torch_dtype": "float32",
            "transformers_version": TRANSFORMERS_VERSION,
            "use_cache": True,
            "vocab_size": 64,
        },
    },
    {
        "name": "qwen2-bias-f32",
        "seed": 1002,
        "dtype": torch.float32,
        "shards": 1,
        "config": {
            "architectures": ["Qwen2ForCausalLM"],
            "attention_dropout": 0.0,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "hidden_act": "silu",
            "hidden_size": 48,
            "initializer_range": 0.02,
            "intermediate_size": 80,
            "max_position_embeddings": 256,
            "max_window_layers": 2,
            "model_type": "qwen2",
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "num_key_value_heads": 1,
            "rms_norm_eps": 1e-06,
            "rope_scaling": None,
            "rope_theta": 1000000.0,
            # Present in real Qwen2 configs but ignored because use_sliding_window is false.
            "sliding_window": 32768,
            "tie_word_embeddings": True,
            "torch_dtype": "float32",
            "transformers_version": TRANSFORMERS_VERSION,
            "use_cache": True,
            "use_sliding_window": False,
            "vocab_size": 64,
        },
    },
    {
        "name": "llama-bf16-tied",
        "seed": 1003,
        "dtype": torch.bfloat16,
        "shards": 1,
        "config": {
            "architectures": ["LlamaForCausalLM"],
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "head_dim": 24,
            "hidden_act": "silu",
            "hidden_size": 64,
            "initializer_range": 0.02,
            "intermediate_size": 80,
            "max_position_embeddings": 64,
            "mlp_bias": False,
            "model_type": "llama",
            "num_attention_heads": 4,
            "num_hidden_layers": 3,
            "num_key_value_heads": 4,
            "pretraining_tp": 1,
            "rms_norm_eps": 1e-05,
            # legacy spelling "type" (HF maps it to "rope_type")
            "rope_scaling": {"factor": 2.0, "type": "linear"},
            "rope_theta": 10000.0,
            "tie_word_embeddings": True,
            "torch_dtype": "bfloat16",
            "transformers_version": TRANSFORMERS_VERSION,
            "use_cache": True,
            "vocab_size": 64,
        },
    },
    {
        "name": "mistral-sharded-f16",
        "seed": 1004,
        "dtype": torch.float16,
        "shards": 2,
        "config": {
            "architectures": ["MistralForCausalLM"],
            "attention_dropout": 0.0,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "hidden_act": "silu",
            "hidden_size": 32,
            "initializer_range": 0.02,
            "intermediate_size": 64,
            "max_position_embeddings": 512,
            "model_type": "mistral",
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "num_key_value_heads": 2,
            "rms_norm_eps": 1e-05,
            "rope_theta": 10000.0,
            "sliding_window": 8,
            "tie_word_embeddings": False,
            "torch_dtype": "float16",
            "transformers_version": TRANSFORMERS_VERSION,
            "use_cache": True,
            "vocab_size": 64,
        },
    },
    {
        # Qwen3: no q/k/v biases, QK-norm (an RMSNorm over each head of q and k, before RoPE),
        # and an explicit head_dim: 4 heads x 16 = 64 != hidden 48.  Keys as in Qwen3-0.6B's config.
        "name": "qwen3-qknorm-f32",
        "seed": 1005,
        "dtype": torch.float32,
        "shards": 1,
        "config": {
            "architectures": ["Qwen3ForCausalLM"],
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "head_dim": 16,
            "hidden_act": "silu",
            "hidden_size": 48,
            "initializer_range": 0.02,
            "intermediate_size": 80,
            "max_position_embeddings": 256,
            "max_window_layers": 2,
            "model_type": "qwen3",
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "num_key_value_heads": 2,
            "rms_norm_eps": 1e-06,
            "rope_scaling": None,
            # an integer, as in the published Qwen3 configs
            "rope_theta": 1000000,
            # null in real Qwen3 configs; unused anyway because use_sliding_window is false
            "sliding_window": None,
            "tie_word_embeddings": True,
            "torch_dtype": "float32",
            # Qwen3 needs transformers >= 4.51
            "transformers_version": "4.51.0",
            "use_cache": True,
            "use_sliding_window": False,
            "vocab_size": 64,
        },
    },
    {
        # Phi-3: Llama's math with q, k, v joined in qkv_proj and gate, up in gate_up_proj;
        # bf16 as released; a sliding window (Phi-3-mini-4k's is 2047) short enough to act here.
        "name": "phi3-fused-bf16",
        "seed": 1006,
        "dtype": torch.bfloat16,
        "shards": 1,
        "config": phi3_config(hidden_size=64, intermediate_size=80, max_position_embeddings=128,
                              num_key_value_heads=2, original_max_position_embeddings=128,
                              rope_scaling=None, sliding_window=7, torch_dtype="bfloat16"),
    },
    # Phi-3.5-mini's longrope, shrunk: context 256 grown from 32, so the attention factor
    # is sqrt(1 + ln 8 / ln 32); records shorter than 32 use the short factors
    f32_model("phi3-longrope-f32", 1007,
              phi3_config(hidden_size=48, intermediate_size=64, max_position_embeddings=256,
                          num_key_value_heads=4, original_max_position_embeddings=32,
                          rope_scaling={"long_factor": [1.5, 2.0, 3.0, 4.5, 6.0, 8.0],
                                        "short_factor": [1.0, 1.25, 1.6, 2.0, 2.7, 3.5],
                                        "type": "longrope"},
                          sliding_window=262144, torch_dtype="float32")),
    # Phi-4-mini's shape, shrunk: RoPE on 3/4 of each head (12 of 16 values, 6 factors),
    # longrope from an original context of 10 (records of 7 and 1 tokens take the short
    # factors, of 20 and 12 the long ones), GQA, tied embeddings
    f32_model("phi4mini-partial-f32", 1008,
              phi3_config(hidden_size=64, intermediate_size=96, max_position_embeddings=256,
                          num_key_value_heads=2, original_max_position_embeddings=10,
                          partial_rotary_factor=0.75,
                          rope_scaling={"long_factor": [1.0, 1.5, 2.0, 3.0, 5.0, 8.0],
                                        "short_factor": [1.0, 1.1, 1.3, 1.8, 2.4, 3.2],
                                        "type": "longrope"},
                          sliding_window=262144, tie_word_embeddings=True,
                          torch_dtype="float32")),
    # SmolLM3's shape, shrunk: the middle of three layers without RoPE (its q and k as
    # projected), GQA, tied by default
    f32_model("smollm3-nope-f32", 1009,
              smollm3_config(hidden_size=64, intermediate_size=96, max_position_embeddings=256,
                             num_attention_heads=4, num_hidden_layers=3, num_key_value_heads=2,
                             layer_types=["full_attention"] * 3, no_rope_layers=[1, 0, 1],
                             torch_dtype="float32")),
    # Granite-3's shape, shrunk: its four multipliers (attention_multiplier 0.1 where
    # 1/sqrt(16) would be 0.25), GQA, tied
    f32_model("granite-mult-f32", 1010,
              granite_config(hidden_size=64, intermediate_size=96, max_position_embeddings=256,
                             num_attention_heads=4, num_hidden_layers=2, num_key_value_heads=2,
                             torch_dtype="float32")),
    # Gemma 3's text model, shrunk: two sliding-window layers (window 6; RoPE base 1e4, unscaled)
    # then a full-attention one (base 1e6, linear factor 4), query_pre_attn_scalar 24 (scores
    # times 24 ** -0.5 where 1/sqrt(16) would be 0.25), embeddings times sqrt(64), every norm
    # weight (all seven kinds) random around 0 since the norms multiply by 1 + w, GQA, tied
    f32_model("gemma3-f32", 1011,
              gemma3_config(_sliding_window_pattern=3, head_dim=16, hidden_size=64,
                            intermediate_size=96,
                            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                            max_position_embeddings=256, num_attention_heads=4, num_hidden_layers=3,
                            num_key_value_heads=2, query_pre_attn_scalar=24,
                            rope_scaling={"factor": 4.0, "rope_type": "linear"}, sliding_window=6,
                            torch_dtype="float32")),
    # The same text model inside Gemma3ForConditionalGeneration, as the hub's multimodal files
    # (transformers 4.50) store it: BF16, text_config with sliding_window_pattern 2 (layer 0
    # slides, layer 1 is global), tensors language_model.model.*, no lm_head (tied), and three
    # vision / projector tensors to ignore; the file's tensors sorted by name as safetensors saves
    {"name": "gemma3-mm-bf16", "seed": 1012, "dtype": torch.bfloat16, "shards": 1,
     "mm_layout": "4.50",
     "config": gemma3_mm_config(gemma3_mm_text_config(sliding_window_pattern=2),
                                torch_dtype="bfloat16", transformers_version="4.50.0.dev0")},
    # Again as transformers >= 4.52 writes it: F32, text_config with layer_types, tensors
    # model.language_model.*, the vision tower and the projector under model. (first in the file,
    # in the model's state_dict order)
    {"name": "gemma3-mm-f32", "seed": 1013, "dtype": torch.float32, "shards": 1,
     "mm_layout": "4.52",
     "config": gemma3_mm_config(
         gemma3_mm_text_config(layer_types=["sliding_attention", "full_attention"]),
         torch_dtype="float32", transformers_version="4.55.0")},
    # OLMo 2's shape, shrunk: no norm before the attention or the MLP (they read the residual
    # stream), post_attention_layernorm and post_feedforward_layernorm on their outputs before
    # each residual sum, q_norm over all 4 x 16 = 64 values of q and k_norm over k's 2 x 16 = 32
    # (not per head) before RoPE, theta 5e5, every norm weight (all five kinds) random around 1
    # with std 0.3, GQA, untied
    f32_model("olmo2-f32", 1014,
              olmo2_config(hidden_size=64, intermediate_size=96, max_position_embeddings=256,
                           num_attention_heads=4, num_hidden_layers=2, num_key_value_heads=2,
                           torch_dtype="float32")),
    # Gemma 2's shape, shrunk: as gemma-2-2b's file (transformers 4.42) no layer_types key, so
    # layers 0 and 2 slide (window 6) and layer 1 sees everything, all with one RoPE (theta 1e4);
    # no QK-norm; query_pre_attn_scalar 24 (scores times 24 ** -0.5), embeddings times sqrt(64),
    # every norm weight (all five kinds) random around 0 since the norms multiply by 1 + w, GQA,
    # tied by default (no tie_word_embeddings key).  The released softcaps (50 on the scores,
    # 30 on the logits) would hardly bend this tiny model's (scores up to 4.3, logits up to 10):
    # 2 and 3 do, so that a cap left out, misplaced or swapped changes the logits
    f32_model("gemma2-f32", 1015,
              gemma2_config(attn_logit_softcapping=2.0, final_logit_softcapping=3.0, head_dim=16,
                            hidden_size=64, intermediate_size=96, max_position_embeddings=256,
                            num_attention_heads=4, num_hidden_layers=3, num_key_value_heads=2,
                            query_pre_attn_scalar=24, sliding_window=6)),
]

# Record lengths per model (all between 1 and 20; each has a length-1 record and one >= 17).
# The record at LABELED_INDEX gets explicit labels containing -100.
RECORD_LENGTHS = {
    "llama-gqa-f32": [1, 6, 13, 20, 17],
    "qwen2-bias-f32": [9, 1, 18, 4, 19],
    "llama-bf16-tied": [3, 1, 17, 11],
    "mistral-sharded-f16": [1, 20, 7, 18, 12],
    "qwen3-qknorm-f32": [4, 19, 1, 14],
    "phi3-fused-bf16": [2, 16, 1, 20, 9],
    "phi3-longrope-f32": [20, 5, 1, 18],
    "phi4mini-partial-f32": [7, 1, 20, 12],
    "smollm3-nope-f32": [15, 1, 19, 6],
    "granite-mult-f32": [11, 1, 20, 5],
    "gemma3-f32": [13, 1, 20, 6, 17],
    "gemma3-mm-bf16": [1, 18, 7, 12],
    "gemma3-mm-f32": [9, 1, 19, 4],
    "olmo2-f32": [12, 1, 19, 7],
    "gemma2-f32": [14, 1, 20, 5, 17],
}
LABELED_INDEX = {
    "llama-gqa-f32": 4,
    "qwen2-bias-f32": 2,
    "llama-bf16-tied": 3,
    "mistral-sharded-f16": 3,
    "qwen3-qknorm-f32": 3,
    "phi3-fused-bf16": 1,
    "phi3-longrope-f32": 0,
    "phi4mini-partial-f32": 2,
    "smollm3-nope-f32": 2,
    "granite-mult-f32": 2,
    "gemma3-f32": 4,
    "gemma3-mm-bf16": 1,
    "gemma3-mm-f32": 2,
    "olmo2-f32": 2,
    "gemma2-f32": 4,
}

# --------------------------------------------------------------------------
# Config interpretation (as in transformers)
# --------------------------------------------------------------------------


def text_config_of(cfg):
    """The language model's config: cfg itself, or Gemma3ForConditionalGeneration's text_config
    with the top level's torch_dtype (the dtype its weights are stored in, which rounds Gemma's
    embedding scale: multipliers_of)."""
    text = cfg.get("text_config")
    if text is None:
        return cfg
    assert cfg["architectures"] == ["Gemma3ForConditionalGeneration"] and cfg["model_type"] == "gemma3"
    assert text["model_type"] == "gemma3_text"
    text = dict(text)
    text.setdefault("torch_dtype", cfg.get("torch_dtype", "float32"))
    return text


def head_dim_of(cfg):
    # LlamaConfig / MistralConfig: head_dim = config.head_dim if given, else hidden_size // num_attention_heads.
    # Qwen2 always uses hidden_size // num_attention_heads; Qwen3 uses config.head_dim.
    hd = cfg.get("head_dim")
    if hd is None:
        hd = cfg["hidden_size"] // cfg["num_attention_heads"]
    return hd


def rotary_dim_of(cfg):
    # Phi-3 (Phi-4-mini): RoPE on the first int(head_dim * partial_rotary_factor) values of a head
    return int(head_dim_of(cfg) * cfg.get("partial_rotary_factor", 1.0))


def tied_of(cfg):
    # SmolLM3Config, Gemma2Config and Gemma3TextConfig default to tied embeddings (a file may then
    # leave the key out); the others to untied
    return cfg.get("tie_word_embeddings", cfg["model_type"] in ("smollm3", "gemma2", "gemma3_text"))


def is_gemma3(cfg):
    return cfg["model_type"] == "gemma3_text"


def is_gemma2(cfg):
    return cfg["model_type"] == "gemma2"


def is_gemma(cfg):
    """Gemma 2 or Gemma 3: the (1 + w) norms on both sides of each block, the scaled embeddings,
    query_pre_attn_scalar, the GELU (tanh) FFN, the softcap keys."""
    return is_gemma2(cfg) or is_gemma3(cfg)


def is_olmo2(cfg):
    return cfg["model_type"] == "olmo2"


def has_input_norms(cfg):
    """Whether the attention and the FFN read a normed x (input_layernorm, and
    post_attention_layernorm or Gemma 3's pre_feedforward_layernorm).  Olmo2DecoderLayer has
    neither: both blocks read the residual stream itself."""
    return not is_olmo2(cfg)


def has_post_norms(cfg):
    """Whether each block's output is normed before its residual sum: Gemma 2's and Gemma 3's
    post_attention_layernorm and post_feedforward_layernorm, and OLMo 2's of the same names."""
    return is_gemma(cfg) or is_olmo2(cfg)


STORAGE_DTYPE = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def uses_rope(cfg, layer):
    # SmolLM3Attention: use_rope = config.no_rope_layers[layer_idx] (1 RoPE, 0 none); the
    # default list leaves it out of every no_rope_layer_interval-th layer
    if cfg["model_type"] != "smollm3":
        return True
    flags = cfg.get("no_rope_layers")
    if flags is None:
        return (layer + 1) % cfg.get("no_rope_layer_interval", 4) != 0
    return bool(flags[layer])


def multipliers_of(cfg):
    """GraniteModel / GraniteDecoderLayer / GraniteForCausalLM: inputs_embeds *
    embedding_multiplier; residual + block(x) * residual_multiplier; scores *
    attention_multiplier (GraniteAttention.scaling); logits / logits_scaling. GraniteConfig's
    defaults are 1.0 each.
    Gemma 3: embeddings times sqrt(hidden_size) (Gemma3TextScaledWordEmbedding: the scale is made
    a float32 tensor and cast to the weights' dtype, so it is rounded to the storage dtype: exact
    8 for hidden 64), scores times query_pre_attn_scalar ** -0.5 (Gemma3Attention.scaling), the
    residual and the logits unscaled.  Gemma 2 the same (Gemma2Model's normalizer is a tensor of
    the hidden states' dtype, Gemma2Attention.scaling query_pre_attn_scalar ** -0.5).
    The other families: 1, 1, 1/sqrt(head_dim), 1."""
    if is_gemma(cfg):
        dt = STORAGE_DTYPE[cfg.get("torch_dtype", "float32")]
        scale = torch.tensor(cfg["hidden_size"] ** 0.5, dtype=torch.float32).to(dt)
        return {"embedding": float(scale), "residual": 1.0,
                "attention": cfg["query_pre_attn_scalar"] ** -0.5, "logits": 1.0}
    if cfg["model_type"] != "granite":
        return {"embedding": 1.0, "residual": 1.0, "attention": 1.0 / math.sqrt(head_dim_of(cfg)),
                "logits": 1.0}
    return {"embedding": cfg.get("embedding_multiplier", 1.0),
            "residual": cfg.get("residual_multiplier", 1.0),
            "attention": cfg.get("attention_multiplier", 1.0),
            "logits": cfg.get("logits_scaling", 1.0)}


def has_qk_norm(cfg):
    # Qwen3Attention: q_norm / k_norm (Qwen3RMSNorm over head_dim, eps rms_norm_eps) on every head
    # of q and k, after the projection and before RoPE.  Gemma3Attention likewise, with
    # Gemma3RMSNorm (its 1 + w).  Gemma2Attention has none.
    return cfg["model_type"] in ("qwen3", "gemma3_text")


def has_whole_qk_norm(cfg):
    # Olmo2Attention: q_norm = Olmo2RMSNorm(num_attention_heads * head_dim) on q_proj's whole
    # output and k_norm = Olmo2RMSNorm(num_key_value_heads * head_dim) on k_proj's, one mean of
    # squares over all heads together, before the split into heads and RoPE; v is not normed.
    return is_olmo2(cfg)


def norm_of(cfg):
    """The RMSNorm of the family: Gemma2RMSNorm and Gemma3RMSNorm multiply by (1 + w), the others
    by w."""
    return gemma_rms_norm if is_gemma(cfg) else rms_norm


def ffn_act_of(cfg):
    """The FFN's activation: SiLU, but Gemma 2's and Gemma 3's hidden_activation gelu_pytorch_tanh
    (torch's gelu with approximate="tanh")."""
    if not is_gemma(cfg):
        return torch.nn.functional.silu
    act = cfg.get("hidden_activation", "gelu_pytorch_tanh")
    assert act == "gelu_pytorch_tanh", ("unsupported hidden_activation", act)
    return gelu_tanh


def gelu_tanh(x):
    return torch.nn.functional.gelu(x, approximate="tanh")


def sliding_flags_of(cfg):
    """layer_types (transformers >= 4.53) as one flag per layer, True for "sliding_attention";
    None when the file has no layer_types."""
    types = cfg.get("layer_types")
    if types is None:
        return None
    assert len(types) == cfg["num_hidden_layers"]
    assert all(t in ("sliding_attention", "full_attention") for t in types), types
    return [t == "sliding_attention" for t in types]


def gemma3_sliding(cfg, layer):
    """Gemma3TextConfig: layer_types[layer] == "sliding_attention"; a file without layer_types
    (the first Gemma 3 releases) gives sliding_window_pattern P: layer l slides iff
    (l + 1) % P != 0 (every P-th layer full).  transformers 4.55 saves P as
    _sliding_window_pattern next to layer_types; when both are given they must agree."""
    P = cfg.get("sliding_window_pattern", cfg.get("_sliding_window_pattern", 6))
    by_pattern = [(l + 1) % P != 0 for l in range(cfg["num_hidden_layers"])]
    flags = sliding_flags_of(cfg)
    if flags is None:
        return by_pattern[layer]
    if "sliding_window_pattern" in cfg or "_sliding_window_pattern" in cfg:
        assert flags == by_pattern, ("layer_types and the sliding window pattern disagree",
                                     cfg["layer_types"], P)
    return flags[layer]


def gemma2_sliding(cfg, layer):
    """Gemma2Config: layer_types[layer] == "sliding_attention" (transformers >= 4.53 writes
    layer_types, by default sliding on the even layers); the released files (transformers 4.42)
    have none: Gemma2Attention slides iff not bool(layer_idx % 2), the even layers."""
    flags = sliding_flags_of(cfg)
    return layer % 2 == 0 if flags is None else flags[layer]


def layer_window_of(cfg, layer):
    """The sliding window of one layer (None: full causal attention).  Gemma 2's and Gemma 3's
    sliding layers take sliding_window, their full-attention layers none; the other families one
    for all."""
    if is_gemma2(cfg):
        return cfg["sliding_window"] if gemma2_sliding(cfg, layer) else None
    if not is_gemma3(cfg):
        return sliding_window_of(cfg)
    assert not cfg.get("use_bidirectional_attention", False)
    return cfg["sliding_window"] if gemma3_sliding(cfg, layer) else None


def rope_config_of(cfg, layer):
    """The config whose RoPE a layer uses.  Gemma3TextModel's rotary_emb_local for the sliding
    layers: theta rope_local_base_freq and the default rope (rope_scaling dropped); its
    rotary_emb (rope_theta with rope_scaling) for the full-attention ones.  Others (Gemma 2's
    layers all alike, rope_theta and the default rope): cfg."""
    if not (is_gemma3(cfg) and gemma3_sliding(cfg, layer)):
        return cfg
    local = dict(cfg)
    local["rope_theta"] = cfg["rope_local_base_freq"]
    local["rope_scaling"] = None
    return local


def rope_cos_sin(cfg, dtype, T):
    """cos and sin [T, rotary dim] of positions 0..T-1: cat(freqs, freqs), times longrope's
    attention factor."""
    inv_freq = inv_freq_of(cfg, dtype, T)
    pos = torch.arange(T, dtype=dtype)
    freqs = torch.outer(pos, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * attention_factor_of(cfg), emb.sin() * attention_factor_of(cfg)


def softcaps_of(cfg):
    """The tanh caps {"attention": c or None, "final": c or None}.  Gemma 2 (and Gemma 3, whose
    releases set both null): eager_attention_forward caps the scaled scores before the mask is
    added, scores = tanh(scores / c) * c with c = attn_logit_softcapping; Gemma{2,3}ForCausalLM
    caps the logits likewise with final_logit_softcapping.  The other families have neither."""
    caps = {"attention": cfg.get("attn_logit_softcapping"), "final": cfg.get("final_logit_softcapping")}
    assert is_gemma(cfg) or caps == {"attention": None, "final": None}, caps
    return caps


def softcap(x, cap):
    """transformers' softcapping: x / cap, tanh, times cap (x itself when cap is None)."""
    if cap is None:
        return x
    return torch.tanh(x / cap) * cap


def sliding_window_of(cfg):
    if cfg["model_type"] in ("mistral", "phi3"):
        return cfg.get("sliding_window")
    if cfg["model_type"] in ("qwen2", "qwen3", "smollm3"):
        # Only active when use_sliding_window is true (Qwen: for layers >= max_window_layers;
        # SmolLM3: for its NoPE layers); all models here have it false.
        assert not cfg.get("use_sliding_window", False)
        return None
    return None


def inv_freq_of(cfg, dtype, seq_len):
    """RoPE inverse frequencies, as transformers' modeling_rope_utils.

    default: inv_freq = 1 / theta ** (arange(0, d, 2) / d)
    linear:  inv_freq / factor   (HF divides positions by factor; identical)
    llama3:  _compute_llama3_parameters, reproduced line by line below.
    longrope (Phi-3's 128k models; "su" before): _compute_longrope_parameters, as
             longrope_frequency_update picks it for a forward pass of seq_len positions:
             inv_freq / short_factor within original_max_position_embeddings, inv_freq /
             long_factor past it.  Its cos and sin are scaled too: attention_factor_of.
    The other rope types have attention_factor 1.0 (no cos/sin scaling).
    """
    d = rotary_dim_of(cfg)
    base = cfg["rope_theta"]
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.int64).to(dtype) / d))
    rs = cfg.get("rope_scaling")
    if rs is None:
        return inv_freq
    rope_type = rs.get("rope_type", rs.get("type"))
    if rope_type == "linear":
        return inv_freq / rs["factor"]
    if rope_type in ("longrope", "su"):
        ext = rs["long_factor"] if seq_len > longrope_context(cfg) else rs["short_factor"]
        return inv_freq / torch.tensor(ext, dtype=dtype)
    if rope_type == "llama3":
        factor = rs["factor"]
        low_freq_factor = rs["low_freq_factor"]
        high_freq_factor = rs["high_freq_factor"]
        old_context_len = rs["original_max_position_embeddings"]

        low_freq_wavelen = old_context_len / low_freq_factor
        high_freq_wavelen = old_context_len / high_freq_factor

        wavelen = 2 * math.pi / inv_freq
        # wavelen < high_freq_wavelen: do nothing
        # wavelen > low_freq_wavelen: divide by factor
        inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        # otherwise: interpolate between the two, using a smooth factor
        smooth_factor = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
        smoothed_inv_freq = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
        is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
        inv_freq_llama = torch.where(is_medium_freq, smoothed_inv_freq, inv_freq_llama)
        return inv_freq_llama
    raise ValueError("unsupported rope type %r" % rope_type)


def attention_factor_of(cfg):
    """What cos and sin are multiplied by: longrope's attention factor (transformers'
    _compute_longrope_parameters; Phi-3 configs carry original_max_position_embeddings, and the
    factor is max_position_embeddings over it), else 1."""
    rs = cfg.get("rope_scaling")
    if rs is None or rs.get("rope_type", rs.get("type")) not in ("longrope", "su"):
        return 1.0
    if rs.get("attention_factor") is not None:
        return rs["attention_factor"]
    original = cfg.get("original_max_position_embeddings")
    factor = cfg["max_position_embeddings"] / original if original else rs.get("factor", 1.0)
    original = original or cfg["max_position_embeddings"]
    return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))


def longrope_context(cfg):
    """The positions the short factors hold for (transformers switches to the long ones for a
    pass past original_max_position_embeddings); None for other rope types."""
    rs = cfg.get("rope_scaling")
    if rs is None or rs.get("rope_type", rs.get("type")) not in ("longrope", "su"):
        return None
    return cfg.get("original_max_position_embeddings") or cfg["max_position_embeddings"]


# --------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------


def make_weights(spec):
    """Random weights in HF naming, rounded to the storage dtype. Returns ordered list of (name, tensor)."""
    cfg = text_config_of(spec["config"])
    g = torch.Generator().manual_seed(spec["seed"])
    H = cfg["hidden_size"]
    I = cfg["intermediate_size"]
    V = cfg["vocab_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg["num_key_value_heads"]
    hd = head_dim_of(cfg)
    qwen = cfg["model_type"] == "qwen2"  # q/k/v biases (Qwen3 has none: attention_bias false)
    qk_norm = has_qk_norm(cfg)
    tied = tied_of(cfg)
    gemma = is_gemma(cfg)
    olmo2 = is_olmo2(cfg)

    def lin_std(fan_in):
        return min(0.3, max(0.1, 1.0 / math.sqrt(fan_in)))

    def randn(shape, std, mean=0.0):
        t = torch.randn(*shape, generator=g, dtype=torch.float32) * std + mean
        return t.to(spec["dtype"])

    def norm_w(shape):
        # around 1, so that a missing norm shows; Gemma 2 and 3 store the offset from 1 (their norms
        # multiply by 1 + w): around 0 with std 0.3, so that a missing "1 +" shows too; OLMo 2's
        # around 1 with std 0.3, so that a norm moved, left out or added shows
        if gemma:
            return randn(shape, 0.3)
        return randn(shape, 0.3, 1.0) if olmo2 else randn(shape, 0.1, 1.0)

    w = []
    w.append(("model.embed_tokens.weight", randn((V, H), 0.2 if tied else 0.3)))
    for i in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % i
        if has_input_norms(cfg):
            w.append((p + "input_layernorm.weight", norm_w((H,))))
        w.append((p + "self_attn.q_proj.weight", randn((nh * hd, H), lin_std(H))))
        if qwen:
            w.append((p + "self_attn.q_proj.bias", randn((nh * hd,), 0.2)))
        w.append((p + "self_attn.k_proj.weight", randn((nkv * hd, H), lin_std(H))))
        if qwen:
            w.append((p + "self_attn.k_proj.bias", randn((nkv * hd,), 0.2)))
        w.append((p + "self_attn.v_proj.weight", randn((nkv * hd, H), lin_std(H))))
        if qwen:
            w.append((p + "self_attn.v_proj.bias", randn((nkv * hd,), 0.2)))
        w.append((p + "self_attn.o_proj.weight", randn((H, nh * hd), lin_std(nh * hd))))
        if qk_norm:
            # like the layernorms
            w.append((p + "self_attn.q_norm.weight", norm_w((hd,))))
            w.append((p + "self_attn.k_norm.weight", norm_w((hd,))))
        if has_whole_qk_norm(cfg):
            # OLMo 2: over the whole projection, [heads * head_dim] and [kv_heads * head_dim]
            w.append((p + "self_attn.q_norm.weight", norm_w((nh * hd,))))
            w.append((p + "self_attn.k_norm.weight", norm_w((nkv * hd,))))
        w.append((p + "post_attention_layernorm.weight", norm_w((H,))))
        if gemma:
            w.append((p + "pre_feedforward_layernorm.weight", norm_w((H,))))
        w.append((p + "mlp.gate_proj.weight", randn((I, H), lin_std(H))))
        w.append((p + "mlp.up_proj.weight", randn((I, H), lin_std(H))))
        w.append((p + "mlp.down_proj.weight", randn((H, I), lin_std(I))))
        if has_post_norms(cfg):
            w.append((p + "post_feedforward_layernorm.weight", norm_w((H,))))
    w.append(("model.norm.weight", norm_w((H,))))
    if not tied:
        w.append(("lm_head.weight", randn((V, H), lin_std(H))))
    return w


def join_phi3(weights):
    """The file's tensors of a Phi-3 model: each layer's q, k, v concatenated by rows as
    self_attn.qkv_proj, and gate, up as mlp.gate_up_proj, in the place of the first part."""
    named = dict(weights)
    out = []
    for name, t in weights:
        for first, parts, joined in (("q_proj", ("q_proj", "k_proj", "v_proj"), "qkv_proj"),
                                     ("gate_proj", ("gate_proj", "up_proj"), "gate_up_proj")):
            if name.endswith("." + first + ".weight"):
                stem = name[: -len(first + ".weight")]
                out.append((stem + joined + ".weight",
                            torch.cat([named[stem + p + ".weight"] for p in parts], dim=0)))
                break
        else:
            if not any(name.endswith("." + p + ".weight") for p in ("k_proj", "v_proj", "up_proj")):
                out.append((name, t))
    return out


def split_phi3(cfg, W):
    """The parts of a Phi-3 model's joined tensors, sliced as transformers' Phi3Attention
    (query_pos = heads * head_dim; k the next kv_heads * head_dim rows; v the rest) and Phi3MLP
    (gate, up = gate_up.chunk(2)) do."""
    hd = head_dim_of(cfg)
    query_pos = cfg["num_attention_heads"] * hd
    kv = cfg["num_key_value_heads"] * hd
    out = {}
    for name, t in W.items():
        if name.endswith(".qkv_proj.weight"):
            stem = name[: -len("qkv_proj.weight")]
            out[stem + "q_proj.weight"] = t[:query_pos]
            out[stem + "k_proj.weight"] = t[query_pos : query_pos + kv]
            out[stem + "v_proj.weight"] = t[query_pos + kv :]
        elif name.endswith(".gate_up_proj.weight"):
            stem = name[: -len("gate_up_proj.weight")]
            gate, up = t.chunk(2, dim=0)
            out[stem + "gate_proj.weight"], out[stem + "up_proj.weight"] = gate, up
        else:
            out[name] = t
    return out


# Gemma3ForConditionalGeneration's names: the text model's prefix (for model.*), and the vision
# tower's and the projector's tensors in the file, which the text model does not read
MM_LAYOUTS = {
    # transformers 4.50 (the hub's files): language_model.model.*, vision_tower.*,
    # multi_modal_projector.*
    "4.50": {
        "text": "language_model.model.",
        "extra": lambda vc, H: [
            ("vision_tower.vision_model.embeddings.patch_embedding.weight",
             (vc["hidden_size"], 3, vc["patch_size"], vc["patch_size"])),
            ("vision_tower.vision_model.post_layernorm.weight", (vc["hidden_size"],)),
            ("multi_modal_projector.mm_input_projection_weight", (vc["hidden_size"], H)),
        ],
        "sorted": True,
    },
    # transformers >= 4.52: everything under model. (model.language_model.*, no .model. inside)
    "4.52": {
        "text": "model.language_model.",
        "extra": lambda vc, H: [
            ("model.vision_tower.vision_model.post_layernorm.weight", (vc["hidden_size"],)),
            ("model.multi_modal_projector.mm_input_projection_weight", (vc["hidden_size"], H)),
        ],
        "sorted": False,
    },
}


def mm_file_weights(spec, weights):
    """The file's tensors of a Gemma3ForConditionalGeneration model: the text model's (model.X
    renamed to the layout's prefix + X; no lm_head, Gemma 3 being tied) and small random vision
    and projector tensors, drawn from their own generator so the text weights stay those of the
    seed.  4.50's sorted by name (as safetensors saves them), 4.52's in the model's order: the
    vision tower, the projector, then the language model."""
    layout = MM_LAYOUTS[spec["mm_layout"]]
    cfg = spec["config"]
    g = torch.Generator().manual_seed(spec["seed"] + 7000)
    extra = [(name, (torch.randn(*shape, generator=g, dtype=torch.float32) * 0.2).to(spec["dtype"]))
             for name, shape in layout["extra"](cfg["vision_config"], text_config_of(cfg)["hidden_size"])]
    text = []
    for name, t in weights:
        assert name.startswith("model."), ("a tied Gemma 3 has no lm_head", name)
        text.append((layout["text"] + name[len("model."):], t))
    out = extra + text
    if layout["sorted"]:
        out.sort(key=lambda nt: nt[0])
    return out


def mm_text_weights(spec, W):
    """The text model's tensors of a Gemma3ForConditionalGeneration file, named model.X again
    (the vision and projector tensors left out)."""
    prefix = MM_LAYOUTS[spec["mm_layout"]]["text"]
    return {"model." + n[len(prefix):]: t for n, t in W.items() if n.startswith(prefix)}


# --------------------------------------------------------------------------
# safetensors writer
# --------------------------------------------------------------------------

ST_DTYPE = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def tensor_bytes(t):
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().tobytes()


def write_safetensors(path, tensors):
    header = {"__metadata__": {"format": "pt"}}
    blobs = []
    off = 0
    for name, t in tensors:
        b = tensor_bytes(t)
        header[name] = {"dtype": ST_DTYPE[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hj += b" " * ((-len(hj)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)


def write_checkpoint(outdir, spec, weights):
    if spec["shards"] == 1:
        write_safetensors(os.path.join(outdir, "model.safetensors"), weights)
        return
    n = spec["shards"]
    sizes = [t.numel() * t.element_size() for _, t in weights]
    total = sum(sizes)
    # split in file order at (roughly) equal byte counts, like save_pretrained's max_shard_size
    shards = [[] for _ in range(n)]
    acc = 0
    for (name, t), sz in zip(weights, sizes):
        k = min(n - 1, acc * n // total)
        shards[k].append((name, t))
        acc += sz
    weight_map = {}
    for k, sh in enumerate(shards):
        fn = "model-%05d-of-%05d.safetensors" % (k + 1, n)
        write_safetensors(os.path.join(outdir, fn), sh)
        for name, _ in sh:
            weight_map[name] = fn
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(outdir, "model.safetensors.index.json"), "w") as f:
        f.write(json.dumps(index, indent=2) + "\n")


# --------------------------------------------------------------------------
# Forward pass (HF eager semantics)
# --------------------------------------------------------------------------


def rms_norm(x, w, eps):
    # LlamaRMSNorm: weight * (x * rsqrt(mean(x^2) + eps))
    return w * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps))


def gemma_rms_norm(x, w, eps):
    # Gemma3RMSNorm: (x * rsqrt(mean(x^2) + eps)) * (1 + weight): the stored weight is an offset
    return (1.0 + w) * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps))


def apply_rope(x, cos, sin):
    """transformers' apply_rotary_pos_emb: rotate-half on the first cos.shape[-1] values of each
    head, the rest passed through (all of them but for Phi-3's partial_rotary_factor)."""
    r = cos.shape[-1]
    x_rot, x_pass = x[..., :r], x[..., r:]
    return torch.cat([x_rot * cos + rotate_half(x_rot) * sin, x_pass], dim=-1)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def linear(x, W, b=None):
    y = x @ W.t()
    if b is not None:
        y = y + b
    return y


def forward(cfg, W, ids, dtype):
    """Logits [T, V] for one record. W: dict name -> tensor (already converted to dtype)."""
    T = len(ids)
    H = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg["num_key_value_heads"]
    hd = head_dim_of(cfg)
    n_rep = nh // nkv
    eps = cfg["rms_norm_eps"]
    post_norms = has_post_norms(cfg)           # Gemma's, OLMo 2's
    norm = norm_of(cfg)                        # Gemma's: (1 + w)
    act = ffn_act_of(cfg)                      # Gemma's: GELU (tanh)
    caps = softcaps_of(cfg)                    # Gemma 2's: tanh on the scores and the logits

    # mask: query q may attend key k iff k <= q and, with a sliding window,
    # k > q - sliding_window (i.e. q - k < sliding_window: the current token plus the
    # sliding_window - 1 previous ones).  This is current transformers' sliding_window_overlay.
    # Gemma 2, Gemma 3: their sliding layers only.
    qi = torch.arange(T).unsqueeze(1)
    ki = torch.arange(T).unsqueeze(0)

    mult = multipliers_of(cfg)
    x = W["model.embed_tokens.weight"][torch.tensor(ids, dtype=torch.long)] * mult["embedding"]  # [T, H]
    for i in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % i
        # RoPE tables, positions 0..T-1; cos/sin = cat(freqs, freqs) (Gemma 3: per layer kind)
        cos, sin = rope_cos_sin(rope_config_of(cfg, i), dtype, T)     # [T, r]
        sw = layer_window_of(cfg, i)
        allowed = ki <= qi
        if sw is not None:
            allowed = allowed & (ki > qi - sw)
        # OLMo 2: no input_layernorm, the attention reads x itself
        h = norm(x, W[p + "input_layernorm.weight"], eps) if has_input_norms(cfg) else x
        q = linear(h, W[p + "self_attn.q_proj.weight"], W.get(p + "self_attn.q_proj.bias"))
        k = linear(h, W[p + "self_attn.k_proj.weight"], W.get(p + "self_attn.k_proj.bias"))
        v = linear(h, W[p + "self_attn.v_proj.weight"], W.get(p + "self_attn.v_proj.bias"))
        if has_whole_qk_norm(cfg):
            # OLMo 2: q = q_norm(q_proj(x)) over all heads * head_dim values at once, k likewise
            # over kv_heads * head_dim, before the split into heads; v is not normed
            q = norm(q, W[p + "self_attn.q_norm.weight"], eps)
            k = norm(k, W[p + "self_attn.k_norm.weight"], eps)
        q = q.view(T, nh, hd)
        k = k.view(T, nkv, hd)
        if has_qk_norm(cfg):
            # Qwen3, Gemma 3: q = q_norm(q_proj(h).view(T, nh, hd)), same for k; v is not normed
            q = norm(q, W[p + "self_attn.q_norm.weight"], eps)
            k = norm(k, W[p + "self_attn.k_norm.weight"], eps)
        q = q.transpose(0, 1)  # [nh, T, hd]
        k = k.transpose(0, 1)  # [nkv, T, hd]
        v = v.view(T, nkv, hd).transpose(0, 1)
        if uses_rope(cfg, i):
            q = apply_rope(q, cos, sin)
            k = apply_rope(k, cos, sin)
        # repeat_kv: query head j uses kv head j // n_rep
        k = k[:, None].expand(nkv, n_rep, T, hd).reshape(nh, T, hd)
        v = v[:, None].expand(nkv, n_rep, T, hd).reshape(nh, T, hd)
        scores = (q @ k.transpose(1, 2)) * mult["attention"]
        scores = softcap(scores, caps["attention"])           # before the mask, as Gemma 2's eager
        scores = scores.masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        a = (probs @ v).transpose(0, 1).reshape(T, nh * hd)
        if post_norms:
            # Gemma2DecoderLayer, Gemma3DecoderLayer, Olmo2DecoderLayer: x = r +
            # post_attention_layernorm(o_proj(att)); the FFN reads pre_feedforward_layernorm(x)
            # (Gemma) or x itself (OLMo 2), and its output goes through post_feedforward_layernorm
            x = x + norm(linear(a, W[p + "self_attn.o_proj.weight"]), W[p + "post_attention_layernorm.weight"], eps)
            h = norm(x, W[p + "pre_feedforward_layernorm.weight"], eps) if has_input_norms(cfg) else x
        else:
            x = x + linear(a, W[p + "self_attn.o_proj.weight"]) * mult["residual"]
            h = norm(x, W[p + "post_attention_layernorm.weight"], eps)
        g = linear(h, W[p + "mlp.gate_proj.weight"])
        u = linear(h, W[p + "mlp.up_proj.weight"])
        f = linear(act(g) * u, W[p + "mlp.down_proj.weight"])
        if post_norms:
            f = norm(f, W[p + "post_feedforward_layernorm.weight"], eps)
        x = x + f * mult["residual"]
    x = norm(x, W["model.norm.weight"], eps)
    head = W["model.embed_tokens.weight"] if tied_of(cfg) else W["lm_head.weight"]
    return softcap(linear(x, head) / mult["logits"], caps["final"])


def record_nll(logits, labels):
    """Sum of NLL and count of predicted tokens: logits[t] predicts labels[t+1]; -100 ignored."""
    lab = torch.tensor(labels[1:], dtype=torch.long)
    keep = lab != -100
    n = int(keep.sum())
    if n == 0:
        return 0.0, 0
    lp = torch.log_softmax(logits[:-1].to(torch.float64), dim=-1)
    nll = -lp[keep].gather(1, lab[keep].unsqueeze(1)).squeeze(1)
    return float(nll.sum()), n


# --------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------


def make_records(spec):
    name = spec["name"]
    V = text_config_of(spec["config"])["vocab_size"]
    g = torch.Generator().manual_seed(spec["seed"] + 5000)
    recs = []
    for j, T in enumerate(RECORD_LENGTHS[name]):
        ids = torch.randint(0, V, (T,), generator=g).tolist()
        rec = {"input_ids": ids}
        if j == LABELED_INDEX[name]:
            labels = list(ids)
            # a masked "prompt" (label 0 is never predicted anyway), a masked token in
            # the middle, and one label that differs from the input token (labels are
            # used as given; HF does not require labels == input_ids)
            for t in range(min(4, T)):
                labels[t] = -100
            labels[T // 2 + 1] = -100
            labels[T - 2] = (ids[T - 2] + 7) % V
            rec["labels"] = labels
        recs.append(rec)
    return recs


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def build(spec):
    cfg = spec["config"]
    outdir = os.path.join(DATA, spec["name"])
    os.makedirs(outdir, exist_ok=True)
    for fn in os.listdir(outdir):
        os.remove(os.path.join(outdir, fn))

    weights = make_weights(spec)
    if cfg["model_type"] == "phi3":
        weights = join_phi3(weights)
    if spec.get("mm_layout"):
        weights = mm_file_weights(spec, weights)
    with open(os.path.join(outdir, "config.json"), "w") as f:
        f.write(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    write_checkpoint(outdir, spec, weights)

    recs = make_records(spec)
    with open(os.path.join(outdir, "records.jsonl"), "w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")

    W64 = {n: t.to(torch.float64) for n, t in weights}  # stored values, exactly upcast
    W32 = {n: t.to(torch.float32) for n, t in weights}
    if cfg["model_type"] == "phi3":
        W64, W32 = split_phi3(cfg, W64), split_phi3(cfg, W32)
    if spec.get("mm_layout"):
        W64, W32 = mm_text_weights(spec, W64), mm_text_weights(spec, W32)
    cfg = text_config_of(cfg)  # the model computed: Gemma3ForConditionalGeneration's text model

    out_recs = []
    tot_nll, tot_n = 0.0, 0
    tot_nll32 = 0.0
    worst = 0.0
    for r in recs:
        ids = r["input_ids"]
        labels = r.get("labels", ids)
        assert len(labels) == len(ids)
        l64 = forward(cfg, W64, ids, torch.float64)
        l32 = forward(cfg, W32, ids, torch.float32)
        assert torch.isfinite(l64).all()
        # self-check: float32 evaluation of the same forward matches to ~1e-5 relative
        err = float(((l32.to(torch.float64) - l64).abs() / (1.0 + l64.abs())).max())
        worst = max(worst, err)
        assert err < 1e-5, (spec["name"], err)
        nll, n = record_nll(l64, labels)
        nll32, _ = record_nll(l32, labels)
        tot_nll += nll
        tot_nll32 += nll32
        tot_n += n
        out_recs.append({
            "loss": (nll / n) if n else None,
            "tokens": n,
            "logits": [[float(v) for v in row] for row in l64.tolist()],
        })
    loss = tot_nll / tot_n
    loss32 = tot_nll32 / tot_n
    assert abs(loss32 - loss) <= 1e-5 * abs(loss), (spec["name"], loss, loss32)
    expected = {"loss": loss, "tokens": tot_n, "records": out_recs}
    with open(os.path.join(outdir, "expected.json"), "w") as f:
        f.write(json.dumps(expected) + "\n")

    softcap_effects(spec["name"], cfg, W64, recs)
    logit_abs = max(max(abs(v) for row in rr["logits"] for v in row) for rr in out_recs)
    print("%-20s loss %.17g over %d tokens  (per record: %s)  max|logit| %.3f  f32-vs-f64 max rel err %.2e"
          % (spec["name"], loss, tot_n,
             ", ".join("null" if rr["loss"] is None else "%.4f" % rr["loss"] for rr in out_recs),
             logit_abs, worst))


def softcap_effects(name, cfg, W, recs):
    """For a model with tanh caps (Gemma 2's): how much the logits and the loss move when each cap
    is left out, printed and asserted to be far above the C test's tolerance (1e-5 relative, as
    the norm of a record's logit error over the norm of its logits), so a cap missed or misplaced
    fails it."""
    for which, key in (("attention", "attn_logit_softcapping"), ("final", "final_logit_softcapping")):
        if softcaps_of(cfg)[which] is None:
            continue
        uncapped = dict(cfg)
        uncapped[key] = None
        worst_abs = worst_rel = 0.0
        nll, nll_off, n = 0.0, 0.0, 0
        for r in recs:
            ids = r["input_ids"]
            l64 = forward(cfg, W, ids, torch.float64)
            off = forward(uncapped, W, ids, torch.float64)
            worst_abs = max(worst_abs, float((off - l64).abs().max()))
            worst_rel = max(worst_rel, float((off - l64).norm() / l64.norm()))
            a, k = record_nll(l64, r.get("labels", ids))
            b, _ = record_nll(off, r.get("labels", ids))
            nll, nll_off, n = nll + a, nll_off + b, n + k
        print("%-20s without %-9s softcap %-5g: logits move by %.3g max abs, %.3g relative (the "
              "record moved most; C test tolerance 1e-5), loss %.6f -> %.6f"
              % (name, which, softcaps_of(cfg)[which], worst_abs, worst_rel, nll / n, nll_off / n))
        assert worst_abs > 1e-2 and worst_rel > 1e-3, (name, which, worst_abs, worst_rel)


def main():
    torch.manual_seed(0)  # nothing uses the global generator; every draw has its own seeded Generator
    torch.set_num_threads(1)  # keep reductions in a fixed order
    os.makedirs(DATA, exist_ok=True)
    # optional arguments: the names of the models to (re)write; default all
    wanted = sys.argv[1:] or [spec["name"] for spec in MODELS]
    unknown = set(wanted) - {spec["name"] for spec in MODELS}
    assert not unknown, "unknown model(s): %s" % ", ".join(sorted(unknown))
    for spec in MODELS:
        if spec["name"] in wanted:
            build(spec)


if __name__ == "__main__":
    main()
