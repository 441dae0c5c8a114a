#!/usr/bin/python3
"""Exact float64 ground truth for PESC crafting, its backward pass and AdamW.

Run with the system Python (Debian's python3-torch / python3-numpy):

    /usr/bin/python3 tests/reference/make_pesc_reference.py [CASE...]

For every case below (or only the named ones) this writes, under tests/reference/data/<case>/:

  config.json              HF config of the dense base model (LlamaForCausalLM, Qwen3ForCausalLM
                           for the pesc-qwen3-* cases, Phi3ForCausalLM with longrope for
                           pesc-phi3-longrope-lora, SmolLM3ForCausalLM with a NoPE layer for
                           pesc-smollm3-lora, GraniteForCausalLM for pesc-granite-lora,
                           Gemma3ForCausalLM for pesc-gemma3-lora, Olmo2ForCausalLM for
                           pesc-olmo2-lora, Gemma2ForCausalLM for pesc-gemma2-lora)
  model.safetensors        the base weights (F32, HF names; Phi-3's q|k|v and gate|up joined)
  trainables.safetensors   initial value of every trainable (F32; Camelidae / PEFT-style names)
  batch.json               {"input_ids": [[...] x B], "labels": [[...] x B]}  (HF-style, unshifted)
  grads.safetensors        d(total loss)/d(trainable) at the initial point (F64, same names)
  expected.json            losses, logits, gradient norm, 10 AdamW steps (see pesc_math.md)

The maths is stated in tests/reference/pesc_math.md; the comments in pesc_forward() repeat it.
Everything is computed in float64 from the stored F32 values (exactly upcast), with one
thread, so a rerun writes byte-identical files.  The script checks itself:

  * its batched dense forward equals make_reference.forward() row by row;
  * with every adapter_up = 0 (and every lora_B = 0) the crafted model's CE equals the dense
    model's CE exactly (bit for bit);
  * autograd gradients agree with central finite differences on a few entries of every
    kind of trainable (routing is checked not to change under the perturbation);
  * top-k routing is decisive: the gap between the k-th and (k+1)-th router logit is
    > MIN_MARGIN for every token and layer, at the initial point and before every AdamW step;
  * with tanh caps (Gemma 2's), leaving out either cap moves the total loss and every gradient
    tensor far beyond the C test's tolerances (printed).
"""

import json
import math
import os
import struct
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_reference as mr  # noqa: E402  (rms_norm, rotate_half, inv_freq_of, forward, ...)

assert sys.byteorder == "little"

DATA = os.path.join(HERE, "data")
F64 = torch.float64
MIN_MARGIN = 1e-6      # required by the spec; the margins actually seen are printed (and far larger)
B, T = 2, 12           # batch rows x tokens per row
N_STEPS = 10

# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------

def base_config(case):
    if case.get("arch") == "qwen3":
        return qwen3_base_config(case["kv_heads"])
    if case.get("arch") == "phi3":
        return phi3_base_config(case["kv_heads"])
    if case.get("arch") == "smollm3":
        # SmolLM3: the first layer without RoPE, so q and k's LoRA reach the scores unrotated;
        # tied by default (no tie_word_embeddings key)
        return mr.smollm3_config(hidden_size=32, intermediate_size=48, max_position_embeddings=64,
                                 num_attention_heads=4, num_hidden_layers=2,
                                 num_key_value_heads=case["kv_heads"],
                                 layer_types=["full_attention"] * 2, no_rope_layers=[0, 1],
                                 torch_dtype="float32")
    if case.get("arch") == "granite":
        # Granite: its four multipliers (the residual one scales the FFN's output and the
        # adapters' together; the adapters still read the FFN's unscaled output), tied
        return mr.granite_config(hidden_size=32, intermediate_size=48, max_position_embeddings=64,
                                 num_attention_heads=4, num_hidden_layers=2,
                                 num_key_value_heads=case["kv_heads"], torch_dtype="float32")
    if case.get("arch") == "gemma3":
        # Gemma 3: sliding (window 5 < T = 12, RoPE base 1e4), full (base 1e6, linear factor 4),
        # sliding; scores times 10 ** -0.5 where 1/sqrt(8) would be 0.354; embeddings times
        # sqrt(32); norms of 1 + w, the FFN's output (and the adapters' with it) normed before the
        # residual sum; GELU (tanh) FFN; tied
        return mr.gemma3_config(_sliding_window_pattern=2, head_dim=8, hidden_size=32,
                                intermediate_size=48,
                                layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                                max_position_embeddings=64, num_attention_heads=4, num_hidden_layers=3,
                                num_key_value_heads=case["kv_heads"], query_pre_attn_scalar=10,
                                rope_scaling={"factor": 4.0, "rope_type": "linear"}, sliding_window=5,
                                torch_dtype="float32")
    if case.get("arch") == "gemma2":
        # Gemma 2: layer_types as transformers >= 4.53 saves them (sliding, full, sliding; window
        # 5 < T = 12), one RoPE (theta 1e4) for all, no QK-norm; scores times 10 ** -0.5 and capped
        # by tanh before the mask, the logits capped too (the case's small caps, which bite here);
        # embeddings times sqrt(32); norms of 1 + w, the FFN's output (and the adapters' with it)
        # normed before the residual sum; GELU (tanh) FFN; tied
        return mr.gemma2_config(attn_logit_softcapping=case["softcaps"][0],
                                final_logit_softcapping=case["softcaps"][1], head_dim=8, hidden_size=32,
                                intermediate_size=48,
                                layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                                max_position_embeddings=64, num_attention_heads=4, num_hidden_layers=3,
                                num_key_value_heads=case["kv_heads"], query_pre_attn_scalar=10,
                                sliding_window=5, transformers_version="4.55.0")
    if case.get("arch") == "olmo2":
        # OLMo 2: no norm before the attention or the FFN (the router reads the residual stream
        # x itself), q and k normed over their whole width ([4 x 8], [2 x 8]) before the split
        # into heads, the attention's and the FFN's outputs (the adapters' with it) normed before
        # each residual sum; theta 5e5, eps 1e-6, untied
        return mr.olmo2_config(hidden_size=32, intermediate_size=48, max_position_embeddings=64,
                               num_attention_heads=4, num_hidden_layers=2,
                               num_key_value_heads=case["kv_heads"], torch_dtype="float32")
    kv_heads = case["kv_heads"]
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 48,
        "max_position_embeddings": 64,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": kv_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": mr.TRANSFORMERS_VERSION,
        "use_cache": True,
        "vocab_size": 64,
    }


def qwen3_base_config(kv_heads):
    # Qwen3: no q/k/v biases, QK-norm before RoPE, explicit head_dim (4 x 12 = 48 != hidden 32),
    # tied embeddings like the small Qwen3 models.  Keys as in Qwen3-0.6B's config.json.
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "head_dim": 12,
        "hidden_act": "silu",
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 48,
        "max_position_embeddings": 64,
        "max_window_layers": 2,
        "model_type": "qwen3",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": kv_heads,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000,
        "sliding_window": None,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "transformers_version": "4.51.0",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": 64,
    }


def phi3_base_config(kv_heads):
    # Phi-3.5-mini's longrope, shrunk: context 64 grown from 8 (attention factor
    # sqrt(1 + ln 8 / ln 8)), rows of T = 12 past 8: the long factors; and Phi-4-mini's
    # partial rotary: 6 of each head's 8 values rotated (3 factors), the rest passed through.
    return mr.phi3_config(hidden_size=32, intermediate_size=48, max_position_embeddings=64,
                          num_key_value_heads=kv_heads, original_max_position_embeddings=8,
                          partial_rotary_factor=0.75,
                          rope_scaling={"long_factor": [1.5, 2.5, 4.0],
                                        "short_factor": [1.0, 1.3, 1.9], "type": "longrope"},
                          sliding_window=None, torch_dtype="float32")


OPTIM = {
    "optimizer": "adamw",        # exactly torch.optim.AdamW (decoupled weight decay)
    "lr": 1e-2,
    "beta1": 0.9,
    "beta2": 0.999,
    "eps": 1e-8,
    "schedule": "constant_with_warmup",
    "warmup_steps": 3,           # lr factor = step/3 for step < 3, else 1 (step 0 has lr 0)
    "max_grad_norm": 0.3,        # torch.nn.utils.clip_grad_norm_
    "steps": N_STEPS,
}

LORA_TARGETS = ["q", "k", "v", "o", "gate", "up", "down"]

CASES = [
    {"name": "pesc-e4k1", "base_seed": 3001, "init_seed": 4009, "batch_seed": 5001, "kv_heads": 4,
     "mode": "pesc", "num_experts": 4, "topk": 1, "adapter_dim": 8, "moe_scaling": 0.25,
     "aux_coef": 0.01, "z_coef": 0.001, "lora_rank": 0, "lora_alpha": 0, "weight_decay": 0.0},
    {"name": "pesc-e8k2-gqa", "base_seed": 3002, "init_seed": 4004, "batch_seed": 5002, "kv_heads": 2,
     "mode": "pesc", "num_experts": 8, "topk": 2, "adapter_dim": 8, "moe_scaling": 0.25,
     "aux_coef": 0.01, "z_coef": 0.0, "lora_rank": 0, "lora_alpha": 0, "weight_decay": 0.0},
    # same base model as pesc-e4k1
    {"name": "pesc-lora", "base_seed": 3001, "init_seed": 4005, "batch_seed": 5003, "kv_heads": 4,
     "mode": "pesc", "num_experts": 4, "topk": 2, "adapter_dim": 8, "moe_scaling": 0.25,
     "aux_coef": 0.01, "z_coef": 0.0, "lora_rank": 4, "lora_alpha": 8, "weight_decay": 0.0},
    # same base model as pesc-e4k1, every weight trainable, no PESC layers
    {"name": "pesc-full", "base_seed": 3001, "init_seed": 4004, "batch_seed": 5004, "kv_heads": 4,
     "mode": "full", "num_experts": 0, "topk": 0, "adapter_dim": 0, "moe_scaling": 0.0,
     "aux_coef": 0.0, "z_coef": 0.0, "lora_rank": 0, "lora_alpha": 0, "weight_decay": 0.01},
    # Qwen3 base (QK-norm, GQA, head_dim 12 with hidden 32, tied): LoRA on every projection,
    # so the q/k LoRA goes through q_norm/k_norm
    {"name": "pesc-qwen3-lora", "arch": "qwen3", "base_seed": 3003, "init_seed": 4006, "batch_seed": 5005,
     "kv_heads": 2, "mode": "pesc", "num_experts": 4, "topk": 2, "adapter_dim": 8, "moe_scaling": 0.25,
     "aux_coef": 0.01, "z_coef": 0.001, "lora_rank": 4, "lora_alpha": 8, "weight_decay": 0.0},
    # Phi-3 base with longrope (q, k scaled by its attention factor), joined q|k|v and gate|up
    # in the file, GQA: LoRA on every projection
    {"name": "pesc-phi3-longrope-lora", "arch": "phi3", "base_seed": 3004, "init_seed": 4008,
     "batch_seed": 5007, "kv_heads": 2, "mode": "pesc", "num_experts": 4, "topk": 2, "adapter_dim": 8,
     "moe_scaling": 0.25, "aux_coef": 0.01, "z_coef": 0.001, "lora_rank": 4, "lora_alpha": 8,
     "weight_decay": 0.0},
    # same Qwen3 base, every weight trainable (q_norm/k_norm included; no lm_head: tied)
    {"name": "pesc-qwen3-full", "arch": "qwen3", "base_seed": 3003, "init_seed": 4007, "batch_seed": 5006,
     "kv_heads": 2, "mode": "full", "num_experts": 0, "topk": 0, "adapter_dim": 0, "moe_scaling": 0.0,
     "aux_coef": 0.0, "z_coef": 0.0, "lora_rank": 0, "lora_alpha": 0, "weight_decay": 0.01},
    # SmolLM3 base (layer 0 without RoPE, GQA, tied): LoRA on every projection
    {"name": "pesc-smollm3-lora", "arch": "smollm3", "base_seed": 3005, "init_seed": 4010,
     "batch_seed": 5008, "kv_heads": 2, "mode": "pesc", "num_experts": 4, "topk": 2, "adapter_dim": 8,
     "moe_scaling": 0.25, "aux_coef": 0.01, "z_coef": 0.001, "lora_rank": 4, "lora_alpha": 8,
     "weight_decay": 0.0},
    # Granite base (embedding, residual, attention and logits multipliers, GQA, tied): LoRA on
    # every projection
    {"name": "pesc-granite-lora", "arch": "granite", "base_seed": 3006, "init_seed": 4011,
     "batch_seed": 5009, "kv_heads": 2, "mode": "pesc", "num_experts": 4, "topk": 2, "adapter_dim": 8,
     "moe_scaling": 0.25, "aux_coef": 0.01, "z_coef": 0.001, "lora_rank": 4, "lora_alpha": 8,
     "weight_decay": 0.0},
    # Gemma 3 base (sandwich norms of 1 + w, QK-norm, sliding and full layers with their own
    # RoPE, query_pre_attn_scalar, scaled embeddings, GELU-tanh FFN, GQA, tied): LoRA on every
    # projection; the adapters' sum goes through post_feedforward_layernorm with the FFN's output
    {"name": "pesc-gemma3-lora", "arch": "gemma3", "base_seed": 3007, "init_seed": 4012,
     "batch_seed": 5010, "kv_heads": 2, "mode": "pesc", "num_experts": 4, "topk": 2, "adapter_dim": 8,
     "moe_scaling": 0.25, "aux_coef": 0.01, "z_coef": 0.001, "lora_rank": 4, "lora_alpha": 8,
     "weight_decay": 0.0},
    # OLMo 2 base (no input norms, whole-width QK-norm, post-attention and post-FFN norms, GQA,
    # untied): LoRA on every projection, so q's and k's LoRA go through the whole-width norms; the
    # router reads the unnormed residual stream, and the adapters' sum goes through
    # post_feedforward_layernorm with the FFN's output.  init_seed 4014: the routing gaps stay
    # >= 6e-3 through the ten steps (4013's fell to 7e-4)
    {"name": "pesc-olmo2-lora", "arch": "olmo2", "base_seed": 3008, "init_seed": 4014,
     "batch_seed": 5011, "kv_heads": 2, "mode": "pesc", "num_experts": 4, "topk": 2, "adapter_dim": 8,
     "moe_scaling": 0.25, "aux_coef": 0.01, "z_coef": 0.001, "lora_rank": 4, "lora_alpha": 8,
     "weight_decay": 0.0},
    # Gemma 2 base (sandwich norms of 1 + w, no QK-norm, sliding and full layers with one RoPE,
    # query_pre_attn_scalar, tanh caps on the scores and the logits, scaled embeddings, GELU-tanh
    # FFN, GQA, tied): LoRA on every projection; the adapters' sum goes through
    # post_feedforward_layernorm with the FFN's output.  softcaps (attention, final): 1.5 and 2.5,
    # not the released 50 and 30, which would hardly bend this model's scores (median 0.7, up to
    # 5.2) and logits (median 0.8, up to 4.5); build() prints what leaving each out does.  init_seed
    # 4017: the routing gaps stay >= 7e-3 through the ten steps (4015's fell to 4e-4, 4016's to 1e-4)
    {"name": "pesc-gemma2-lora", "arch": "gemma2", "softcaps": (1.5, 2.5), "base_seed": 3009,
     "init_seed": 4017, "batch_seed": 5012, "kv_heads": 2, "mode": "pesc", "num_experts": 4, "topk": 2,
     "adapter_dim": 8, "moe_scaling": 0.25, "aux_coef": 0.01, "z_coef": 0.001, "lora_rank": 4,
     "lora_alpha": 8, "weight_decay": 0.0},
]

# --------------------------------------------------------------------------
# safetensors writer (F32 / F64, custom __metadata__)
# --------------------------------------------------------------------------

ST_DTYPE = {torch.float32: "F32", torch.float64: "F64"}


def write_safetensors(path, tensors, metadata):
    header = {"__metadata__": metadata}
    blobs = []
    off = 0
    for name, t in tensors:
        b = t.contiguous().numpy().tobytes()
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


# --------------------------------------------------------------------------
# Weights, trainables, batch
# --------------------------------------------------------------------------


def base_weights(case):
    spec = {"name": case["name"], "seed": case["base_seed"], "dtype": torch.float32,
            "config": base_config(case)}
    return mr.make_weights(spec)  # ordered [(name, F32 tensor)]


def lora_shapes(cfg):
    H, I = cfg["hidden_size"], cfg["intermediate_size"]
    hd = mr.head_dim_of(cfg)
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    # target -> (module prefix inside the layer, out_features, in_features)
    return {
        "q": ("self_attn.q_proj", nh * hd, H),
        "k": ("self_attn.k_proj", nkv * hd, H),
        "v": ("self_attn.v_proj", nkv * hd, H),
        "o": ("self_attn.o_proj", H, nh * hd),
        "gate": ("mlp.gate_proj", I, H),
        "up": ("mlp.up_proj", I, H),
        "down": ("mlp.down_proj", H, I),
    }


def init_trainables(case, cfg, base):
    """Ordered [(name, F32 tensor)] of every trainable's initial value."""
    if case["mode"] == "full":
        return [(n, t.clone()) for n, t in base]
    g = torch.Generator().manual_seed(case["init_seed"])

    def randn(shape, std):
        return (torch.randn(*shape, generator=g, dtype=torch.float32) * std).to(torch.float32)

    H = cfg["hidden_size"]
    E, R = case["num_experts"], case["adapter_dim"]
    out = []
    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d.mlp.moe_adapter." % l
        out.append((p + "router.weight", randn((E, H), 0.5)))            # std 0.5: decisive routing
        for e in range(E):
            q = p + "experts.expert_%d." % e
            out.append((q + "adapter_down.weight", randn((R, H), 0.3)))
            out.append((q + "adapter_up.weight", randn((H, R), 0.1)))    # NON-zero on purpose
    if case["lora_rank"]:
        r = case["lora_rank"]
        shapes = lora_shapes(cfg)
        for l in range(cfg["num_hidden_layers"]):
            for tgt in LORA_TARGETS:
                mod, o, i = shapes[tgt]
                p = "model.layers.%d.%s." % (l, mod)
                out.append((p + "lora_A.weight", randn((r, i), 0.2)))
                out.append((p + "lora_B.weight", randn((o, r), 0.1)))    # NON-zero on purpose
    return out


def make_batch(case, V):
    g = torch.Generator().manual_seed(case["batch_seed"])
    ids = torch.randint(0, V, (B, T), generator=g).tolist()
    labels = [list(r) for r in ids]
    # row 0: a masked 4-token "prompt"; row 1: a masked 2-token prompt, a masked middle token,
    # a masked last token, and one label that differs from its input token.
    for t in range(4):
        labels[0][t] = -100
    for t in range(2):
        labels[1][t] = -100
    labels[1][6] = -100
    labels[1][T - 1] = -100
    labels[1][8] = (ids[1][8] + 5) % V
    return ids, labels


# --------------------------------------------------------------------------
# The model (float64)
# --------------------------------------------------------------------------


def pesc_forward(cfg, case, Wb, P, ids, labels, crafted=True, dt=F64):
    """Return dict(logits [B,T,V], ce, aux, z, total, margin).

    Wb: name -> float64 base weight (frozen, or the trainables themselves in full mode).
    P:  name -> float64 trainable (routers, adapters, LoRA); unused in full mode.
    crafted=False runs the plain dense model (no PESC, no LoRA).
    dt: compute dtype (float64 for every written number; float32 only for the f32 replay check).
    """
    Bn, Tn = len(ids), len(ids[0])
    H = cfg["hidden_size"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = mr.head_dim_of(cfg)
    n_rep = nh // nkv
    eps = cfg["rms_norm_eps"]
    pesc = crafted and case["mode"] == "pesc"
    lora = pesc and case["lora_rank"] > 0
    E, K, s = case["num_experts"], case["topk"], case["moe_scaling"]
    shapes = lora_shapes(cfg)

    def W(layer, tgt):
        # LoRA (PEFT convention, no dropout): W_eff = W + (alpha / rank) * B @ A,
        # A [rank, in], B [out, rank].
        mod = shapes[tgt][0]
        name = "model.layers.%d.%s" % (layer, mod)
        w = Wb[name + ".weight"]
        if lora:
            w = w + (case["lora_alpha"] / case["lora_rank"]) * (P[name + ".lora_B.weight"] @ P[name + ".lora_A.weight"])
        return w

    post_norms = mr.has_post_norms(cfg)                                # Gemma's, OLMo 2's
    input_norms = mr.has_input_norms(cfg)                              # none in OLMo 2
    norm = mr.norm_of(cfg)                                             # Gemma's: (1 + w)
    act = mr.ffn_act_of(cfg)                                           # Gemma's: GELU (tanh)
    caps = mr.softcaps_of(cfg)                                         # Gemma 2's tanh caps
    qi = torch.arange(Tn).unsqueeze(1)
    ki = torch.arange(Tn).unsqueeze(0)
    causal = ki <= qi                                                  # [q, k]: k <= q

    mult = mr.multipliers_of(cfg)                                      # Granite's, Gemma's, else 1s
    idt = torch.tensor(ids, dtype=torch.long)
    x = Wb["model.embed_tokens.weight"][idt] * mult["embedding"]       # [B, T, H]
    aux = torch.zeros((), dtype=dt)
    z = torch.zeros((), dtype=dt)
    margin = math.inf
    routes = []
    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % l
        # RoPE (rotate-half; positions restart at 0 in every row); Gemma 3: per layer kind
        cos, sin = mr.rope_cos_sin(mr.rope_config_of(cfg, l), dt, Tn)   # [T, hd], longrope's factor in
        sw = mr.layer_window_of(cfg, l)                                # Gemma's sliding layers
        allowed = causal if sw is None else causal & (ki > qi - sw)
        # --- attention (HF Llama / Qwen3 / Gemma 2 / Gemma 3 / OLMo 2 eager) ---
        hn = norm(x, Wb[p + "input_layernorm.weight"], eps) if input_norms else x   # OLMo 2: x itself
        q = hn @ W(l, "q").t()                                         # [B, T, nh * hd]
        k = hn @ W(l, "k").t()                                         # [B, T, nkv * hd]
        if mr.has_whole_qk_norm(cfg):
            # OLMo 2 QK-norm: RMSNorm over the (LoRA'd) projection's whole width (weights
            # [nh * hd], [nkv * hd]), before the split into heads and RoPE; v is not normed
            q = norm(q, Wb[p + "self_attn.q_norm.weight"], eps)
            k = norm(k, Wb[p + "self_attn.k_norm.weight"], eps)
        q = q.view(Bn, Tn, nh, hd)
        k = k.view(Bn, Tn, nkv, hd)
        if mr.has_qk_norm(cfg):
            # Qwen3 / Gemma 3 QK-norm: RMSNorm over each head vector (weights [hd]), after the
            # (LoRA'd) projection, before RoPE; v is not normed
            q = norm(q, Wb[p + "self_attn.q_norm.weight"], eps)
            k = norm(k, Wb[p + "self_attn.k_norm.weight"], eps)
        q = q.transpose(1, 2)                                          # [B, nh, T, hd]
        k = k.transpose(1, 2)
        v = (hn @ W(l, "v").t()).view(Bn, Tn, nkv, hd).transpose(1, 2)
        if mr.uses_rope(cfg, l):                                       # SmolLM3's NoPE layers: not
            q = mr.apply_rope(q, cos, sin)
            k = mr.apply_rope(k, cos, sin)
        k = k[:, :, None].expand(Bn, nkv, n_rep, Tn, hd).reshape(Bn, nh, Tn, hd)  # repeat_kv
        v = v[:, :, None].expand(Bn, nkv, n_rep, Tn, hd).reshape(Bn, nh, Tn, hd)
        sc = (q @ k.transpose(-1, -2)) * mult["attention"]             # 1/sqrt(hd) but Granite's, Gemma's
        sc = mr.softcap(sc, caps["attention"])                         # Gemma 2: c tanh(sc / c), before the mask
        sc = sc.masked_fill(~allowed, float("-inf"))
        a = (torch.softmax(sc, dim=-1) @ v).transpose(1, 2).reshape(Bn, Tn, nh * hd)
        if post_norms:
            # Gemma 2, Gemma 3, OLMo 2: x = r + post_attention_layernorm(o); the FFN (and the
            # router) read pre_feedforward_layernorm(x) (Gemma) or the residual stream x itself
            # (OLMo 2)
            x = x + norm(a @ W(l, "o").t(), Wb[p + "post_attention_layernorm.weight"], eps)
            if input_norms:
                xn = norm(x, Wb[p + "pre_feedforward_layernorm.weight"], eps)  # x of DESIGN §1
            else:
                xn = x                                                 # x of DESIGN §1, unnormed
        else:
            x = x + (a @ W(l, "o").t()) * mult["residual"]
            # --- FFN / PESC layer ---
            xn = norm(x, Wb[p + "post_attention_layernorm.weight"], eps)      # x of DESIGN §1
        h = (act(xn @ W(l, "gate").t()) * (xn @ W(l, "up").t())) @ W(l, "down").t()  # frozen FFN, once
        if pesc:
            pm = p + "mlp.moe_adapter."
            N = Bn * Tn
            xf = xn.reshape(N, H)
            hf = h.reshape(N, H)
            r = xf @ P[pm + "router.weight"].t()                       # router logits [N, E]
            srt = torch.sort(r.detach(), dim=-1, descending=True).values
            if K < E:
                margin = min(margin, float((srt[:, K - 1] - srt[:, K]).min()))
            topv, topi = torch.topk(r, K, dim=-1)                      # T = top-k indices
            routes.append([tuple(v) for v in topi.sort(dim=-1).values.tolist()])
            w = torch.softmax(topv, dim=-1)                            # softmax over the k kept logits
            # every expert's adapter on every token (reference only; unselected ones get no
            # gradient because they are never used):  A_e = U_e GELU_erf(D_e h)
            ad = torch.stack([
                F.gelu(hf @ P[pm + "experts.expert_%d.adapter_down.weight" % e].t())
                @ P[pm + "experts.expert_%d.adapter_up.weight" % e].t()
                for e in range(E)], dim=1)                             # [N, E, H]
            sel = ad.gather(1, topi.unsqueeze(-1).expand(N, K, H))     # [N, K, H]
            y = hf + s * (w.unsqueeze(-1) * sel).sum(1)                # h + s * sum_i w_i U_i GELU(D_i h)
            h = y.view(Bn, Tn, H)
            # Switch load balancing: alpha * E * sum_i f_i P_i
            #   f_i = (# (token, slot) assignments to i) / (N*K), no gradient
            #   P_i = mean over all N tokens of softmax over ALL E logits
            f = F.one_hot(topi, E).to(dt).sum(dim=(0, 1)) / (N * K)
            Pm = torch.softmax(r, dim=-1).mean(0)
            aux = aux + case["aux_coef"] * E * (f * Pm).sum()
            # router z-loss: z_coef * mean over tokens of logsumexp(r)^2
            z = z + case["z_coef"] * (torch.logsumexp(r, dim=-1) ** 2).mean()
        if post_norms:
            # Gemma 2, Gemma 3, OLMo 2: the mlp's whole output, FFN and adapters' sum, through
            # post_feedforward_layernorm
            h = norm(h, Wb[p + "post_feedforward_layernorm.weight"], eps)
        x = x + h * mult["residual"]                                   # the experts' mix, scaled
    x = norm(x, Wb["model.norm.weight"], eps)
    head = Wb["model.embed_tokens.weight"] if mr.tied_of(cfg) else Wb["lm_head.weight"]
    logits = mr.softcap((x @ head.t()) / mult["logits"], caps["final"])  # [B, T, V]; Gemma 2: capped
    # CE: logits[b, t] predicts labels[b, t+1]; -100 ignored; mean over all kept targets of the batch
    lab = torch.tensor(labels, dtype=torch.long)[:, 1:].reshape(-1)
    lp = torch.log_softmax(logits[:, :-1].reshape(-1, logits.shape[-1]), dim=-1)
    keep = lab != -100
    ce = -lp[keep].gather(1, lab[keep].unsqueeze(1)).mean()
    total = ce + aux + z
    return {"logits": logits, "ce": ce, "aux": aux, "z": z, "total": total, "margin": margin, "routes": routes}


def routing_of(cfg, case, Wb, P, ids):
    """Top-k expert indices per layer (to check that a perturbation does not reroute)."""
    with torch.no_grad():
        return pesc_forward(cfg, case, Wb, P, ids, [[-100] * len(r) for r in ids])["routes"]


# --------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------


def kind_of(name):
    parts = name.split(".")
    if "lora_A" in parts or "lora_B" in parts:
        return parts[-3] + "." + parts[-2]             # e.g. q_proj.lora_A
    if "moe_adapter" in parts:
        return parts[-2]                               # router / adapter_down / adapter_up
    if name.startswith("model.layers."):
        return parts[-2]                               # q_proj, input_layernorm, ...
    return name


def fd_check(cfg, case, Wb, P, train, ids, labels, grads):
    """Central differences on two entries of every kind of trainable: the one with the largest
    |gradient| and a pseudo-random one with a non-zero gradient."""
    names = list(train.keys())
    kinds = {}
    for n in names:
        kinds.setdefault(kind_of(n), []).append(n)
    g = torch.Generator().manual_seed(case["init_seed"] + 77)
    h = 1e-6
    worst = 0.0
    checked = 0
    route0 = routing_of(cfg, case, Wb, P, ids)
    for kind, ns in sorted(kinds.items()):
        best = max(ns, key=lambda n: float(grads[n].abs().max()))
        picks = [(best, int(grads[best].abs().argmax()))]
        rn = ns[int(torch.randint(0, len(ns), (1,), generator=g))]
        nz = torch.nonzero(grads[rn].reshape(-1) != 0).reshape(-1)   # skip exact zeros (absent embedding rows)
        picks.append((rn, int(nz[int(torch.randint(0, nz.numel(), (1,), generator=g))])))
        for n, idx in picks:
            t = train[n]
            flat = t.view(-1)
            old = float(flat[idx])
            vals = []
            for d in (+h, -h):
                with torch.no_grad():
                    flat[idx] = old + d
                    assert routing_of(cfg, case, Wb, P, ids) == route0, "perturbation changed routing"
                    vals.append(float(pesc_forward(cfg, case, Wb, P, ids, labels)["total"]))
                    flat[idx] = old
            fd = (vals[0] - vals[1]) / (2 * h)
            an = float(grads[n].view(-1)[idx])
            err = abs(fd - an) / max(abs(an), 1e-4)
            worst = max(worst, err)
            assert err < 1e-5, (case["name"], n, idx, fd, an, err)
            assert an != 0.0, (case["name"], n, idx, "zero gradient entry picked")
            checked += 1
    return checked, worst


def zero_adapter_check(cfg, case, Wb, P, ids, labels):
    """U = 0 (and LoRA B = 0): crafted CE must equal dense CE exactly."""
    if case["mode"] != "pesc":
        return
    P0 = {n: (torch.zeros_like(t) if (n.endswith("adapter_up.weight") or n.endswith("lora_B.weight")) else t)
          for n, t in P.items()}
    with torch.no_grad():
        c = pesc_forward(cfg, case, Wb, P0, ids, labels)
        d = pesc_forward(cfg, case, Wb, P0, ids, labels, crafted=False)
    assert float(c["ce"]) == float(d["ce"]), (case["name"], float(c["ce"]), float(d["ce"]))
    assert torch.equal(c["logits"], d["logits"])


def softcap_effects(cfg, case, Wb, P, train, ids, labels, out, grads):
    """For a base with tanh caps (Gemma 2's): how much the total loss and the gradients move when
    each cap is left out, printed and asserted to be far above the C test's tolerances (1e-5
    relative on the losses, 1e-4 on each gradient tensor as the norm of its error over its norm),
    for every gradient tensor, so a cap missed or misplaced fails the test."""
    names = list(grads.keys())
    for which, key in (("attention", "attn_logit_softcapping"), ("final", "final_logit_softcapping")):
        if mr.softcaps_of(cfg)[which] is None:
            continue
        uncapped = dict(cfg)
        uncapped[key] = None
        o = pesc_forward(uncapped, case, Wb, P, ids, labels)
        g = dict(zip(names, torch.autograd.grad(o["total"], [train[n] for n in names])))
        moved = {n: float((g[n] - grads[n]).norm() / grads[n].norm()) for n in names if grads[n].norm() > 0}
        least = min(moved, key=moved.get)
        dl = abs(float(o["total"] - out["total"])) / abs(float(out["total"]))
        print("%-14s without %-9s softcap %-5g: total loss moves by %.3g relative, each gradient "
              "tensor by %.3g to %.3g (least: %s)"
              % (case["name"], which, mr.softcaps_of(cfg)[which], dl, moved[least], max(moved.values()), least))
        assert dl > 1e-3 and moved[least] > 1e-2, (case["name"], which, dl, least, moved[least])


def dense_matches_make_reference(cfg, Wb, ids, case):
    with torch.no_grad():
        d = pesc_forward(cfg, case, Wb, {}, ids, [[-100] * len(r) for r in ids], crafted=False)
        for b in range(len(ids)):
            ref = mr.forward(cfg, Wb, ids[b], F64)
            assert torch.allclose(d["logits"][b], ref, rtol=1e-12, atol=1e-12), case["name"]


# --------------------------------------------------------------------------
# Build one case
# --------------------------------------------------------------------------


def train_steps(cfg, case, base, init, ids, labels, dt):
    """N_STEPS of torch.optim.AdamW + constant-with-warmup + clip_grad_norm_ on the same batch,
    starting from the stored initial trainables, computing in dtype dt.  Returns (history,
    sum of all trainables after the last step, sum of their absolute values, final forward)."""
    names = [n for n, _ in init]
    train = {n: t.to(dt).clone().requires_grad_(True) for n, t in init}
    if case["mode"] == "full":
        Wb, P = train, {}
    else:
        Wb, P = {n: t.to(dt) for n, t in base}, train
    params = [train[n] for n in names]
    opt = torch.optim.AdamW(params, lr=OPTIM["lr"], betas=(OPTIM["beta1"], OPTIM["beta2"]), eps=OPTIM["eps"],
                            weight_decay=case["weight_decay"], amsgrad=False, foreach=False, maximize=False)
    wu = OPTIM["warmup_steps"]
    # HF get_constant_schedule_with_warmup: factor step/warmup for step < warmup, else 1
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda st: float(st) / float(max(1, wu)) if st < wu else 1.0)
    hist = {"steps": [], "step_ce": [], "step_aux": [], "step_z": [], "step_grad_norm": [], "step_lr": [],
            "step_min_margin": []}
    for _ in range(N_STEPS):
        opt.zero_grad(set_to_none=True)
        o = pesc_forward(cfg, case, Wb, P, ids, labels, dt=dt)
        assert o["margin"] > MIN_MARGIN, (case["name"], "margin", o["margin"])
        o["total"].backward()
        # torch: coef = max_norm / (norm + 1e-6), clamped to <= 1, grads *= coef
        gn = float(torch.nn.utils.clip_grad_norm_(params, OPTIM["max_grad_norm"]))
        hist["step_lr"].append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        hist["steps"].append(float(o["total"]))
        hist["step_ce"].append(float(o["ce"]))
        hist["step_aux"].append(float(o["aux"]))
        hist["step_z"].append(float(o["z"]))
        hist["step_grad_norm"].append(gn)
        hist["step_min_margin"].append(o["margin"] if o["margin"] != math.inf else None)
    with torch.no_grad():
        checksum = 0.0
        abssum = 0.0
        for n in names:
            checksum += float(train[n].to(F64).sum())
            abssum += float(train[n].to(F64).abs().sum())
        fin = pesc_forward(cfg, case, Wb, P, ids, labels, dt=dt)
    return hist, checksum, abssum, fin


OUTPUT_FILES = ("config.json", "model.safetensors", "trainables.safetensors", "batch.json",
                "grads.safetensors", "expected.json")


def build(case):
    cfg = base_config(case)
    outdir = os.path.join(DATA, case["name"])
    os.makedirs(outdir, exist_ok=True)
    # remove only what this script writes: pesc-e4k1/records.jsonl (its batch as two records,
    # used by tests/cli.sh and tests/demo.sh) is committed by hand and must survive a rerun
    for fn in OUTPUT_FILES:
        if os.path.exists(os.path.join(outdir, fn)):
            os.remove(os.path.join(outdir, fn))

    base = base_weights(case)
    init = init_trainables(case, cfg, base)
    ids, labels = make_batch(case, cfg["vocab_size"])

    with open(os.path.join(outdir, "config.json"), "w") as f:
        f.write(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    write_safetensors(os.path.join(outdir, "model.safetensors"),
                      mr.join_phi3(base) if cfg["model_type"] == "phi3" else base, {"format": "pt"})
    meta = {"format": "pt"}
    if case["mode"] == "pesc":
        meta.update({"num_experts": str(case["num_experts"]), "topk": str(case["topk"]),
                     "adapter_dim": str(case["adapter_dim"]), "moe_scaling": repr(case["moe_scaling"])})
        if case["lora_rank"]:
            meta.update({"lora_rank": str(case["lora_rank"]), "lora_alpha": str(case["lora_alpha"])})
    write_safetensors(os.path.join(outdir, "trainables.safetensors"), init, meta)
    with open(os.path.join(outdir, "batch.json"), "w") as f:
        f.write(json.dumps({"input_ids": ids, "labels": labels}) + "\n")

    # float64 working copies (exact upcasts of the stored F32 values)
    full = case["mode"] == "full"
    train = {n: t.to(F64).clone().requires_grad_(True) for n, t in init}
    if full:
        Wb, P = train, {}
    else:
        Wb, P = {n: t.to(F64) for n, t in base}, train

    dense_matches_make_reference(cfg, {n: t.to(F64) for n, t in base}, ids, case)
    zero_adapter_check(cfg, case, Wb, P, ids, labels)

    # ---- initial point: losses, logits, gradients ----
    out = pesc_forward(cfg, case, Wb, P, ids, labels)
    names = [n for n, _ in init]
    for l, layer in enumerate(out["routes"]):   # every expert gets >= 1 token, so no gradient is trivially 0
        assert len({e for tok in layer for e in tok}) == case["num_experts"], (case["name"], "unused expert", l)
    gl = torch.autograd.grad(out["total"], [train[n] for n in names])
    grads = dict(zip(names, gl))
    for n in names:
        assert float(grads[n].abs().max()) > 0 or full, ("all-zero gradient", case["name"], n)
    gnorm = float(torch.norm(torch.stack([torch.norm(g, 2.0) for g in gl]), 2.0))
    assert out["margin"] > MIN_MARGIN, (case["name"], out["margin"])
    write_safetensors(os.path.join(outdir, "grads.safetensors"), [(n, grads[n].detach().clone()) for n in names],
                      {"format": "pt"})

    nfd, fdworst = fd_check(cfg, case, Wb, P, train, ids, labels, grads)
    softcap_effects(cfg, case, Wb, P, train, ids, labels, out, grads)

    # ---- 10 AdamW steps on the same batch ----
    hist, checksum, abssum, fin = train_steps(cfg, case, base, init, ids, labels, F64)
    # the same run in float32 (torch's own f32 arithmetic): how far an f32 implementation may drift
    h32, cs32, as32, _ = train_steps(cfg, case, base, init, ids, labels, torch.float32)
    f32_rel = max(abs(a - b) / abs(a) for a, b in zip(hist["steps"], h32["steps"]))
    assert f32_rel < 1e-5, (case["name"], "f32 replay drifts", f32_rel)
    assert abs(cs32 - checksum) < 1e-3, (case["name"], "f32 replay checksum", cs32, checksum)

    config = {
        "mode": case["mode"],
        "base": dict({k: cfg[k] for k in ("vocab_size", "hidden_size", "intermediate_size",
                                          "num_hidden_layers", "num_attention_heads",
                                          "num_key_value_heads", "rms_norm_eps", "rope_theta")},
                     tie_word_embeddings=mr.tied_of(cfg)),
        "head_dim": mr.head_dim_of(cfg),
        "batch": B, "seq": T,
        "num_experts": case["num_experts"], "topk": case["topk"], "adapter_dim": case["adapter_dim"],
        "moe_scaling": case["moe_scaling"], "adapter_dropout": 0.0, "adapter_act": "gelu_erf",
        "aux_coef": case["aux_coef"], "z_coef": case["z_coef"],
        "lora_rank": case["lora_rank"], "lora_alpha": case["lora_alpha"],
        "lora_scaling": (case["lora_alpha"] / case["lora_rank"]) if case["lora_rank"] else 0.0,
        "lora_targets": LORA_TARGETS if case["lora_rank"] else [],
        "lora_dropout": 0.0,
        "weight_decay": case["weight_decay"],
        "weight_decay_on": "every trainable" if case["weight_decay"] else "none",
    }
    config.update(OPTIM)
    expected = {
        "config": config,
        "loss": float(out["ce"]),
        "aux_loss": float(out["aux"]),
        "z_loss": float(out["z"]),
        "total": float(out["total"]),
        "grad_norm": gnorm,
        "min_router_margin": out["margin"] if out["margin"] != math.inf else None,
        "trainable_names": names,
        "num_trainable_params": int(sum(t.numel() for _, t in init)),
        "logits": out["logits"].detach().tolist(),
        "steps": hist["steps"],
        "step_ce": hist["step_ce"],
        "step_aux": hist["step_aux"],
        "step_z": hist["step_z"],
        "step_grad_norm": hist["step_grad_norm"],
        "step_lr": hist["step_lr"],
        "step_min_margin": hist["step_min_margin"],
        "final_total": float(fin["total"]),
        "final_trainables_checksum": checksum,
        "final_trainables_abs_sum": abssum,
        # float32 replay of the same 10 steps by torch (informative, for choosing tolerances)
        "f32_replay": {"steps": h32["steps"], "steps_max_rel_err": f32_rel,
                       "final_trainables_checksum": cs32, "final_trainables_abs_sum": as32},
    }
    with open(os.path.join(outdir, "expected.json"), "w") as f:
        f.write(json.dumps(expected) + "\n")

    mm = [m for m in hist["step_min_margin"] if m is not None] + ([out["margin"]] if out["margin"] != math.inf else [])
    print("%-14s CE %.12f aux %.12g z %.12g total %.12f |g| %.10g  steps %.6f -> %.6f  checksum %.10g  "
          "min margin %s  fd %d entries, worst rel err %.1e"
          % (case["name"], float(out["ce"]), float(out["aux"]), float(out["z"]), float(out["total"]), gnorm,
             hist["steps"][0], hist["steps"][-1], checksum, ("%.3g" % min(mm)) if mm else "n/a", nfd, fdworst))


def main():
    torch.manual_seed(0)       # nothing uses the global generator
    torch.set_num_threads(1)   # fixed reduction order
    os.makedirs(DATA, exist_ok=True)
    # optional arguments: the names of the cases to (re)write; default all
    wanted = sys.argv[1:] or [case["name"] for case in CASES]
    unknown = set(wanted) - {case["name"] for case in CASES}
    assert not unknown, "unknown case(s): %s" % ", ".join(sorted(unknown))
    for case in CASES:
        if case["name"] in wanted:
            build(case)


if __name__ == "__main__":
    main()
