#!/usr/bin/python3
"""Time one PESC training step (forward + backward + AdamW) in PyTorch.

    /usr/bin/python3 bench/torch_pesc_step.py --style official|vectorised [shape flags]

The model is a Llama decoder (RMSNorm, RoPE, causal attention, SwiGLU FFN) with random frozen
weights (requires_grad False). Every FFN is a PESC layer as in DESIGN §1:
y = h + s * sum_{i in top-k} w_i U_i GELU(D_i dropout(h)), with h = FFN(x) computed once.
The trainables are the routers and the adapters (non-zero U), updated with AdamW after global-norm
clipping. The loss is CE over every token plus the Switch load-balancing loss (with its
router gradient).

Styles (they differ only in the MoE adapter layer):
  official    the Camelidae modeling code's way: repeat each token k times, loop over the
              experts in Python, pick each expert's rows with a boolean mask
              (`rows[sel == i] += expert_i(inp[sel == i])`), then do a weighted sum over
              the k slots. Experts are separate nn.Linear-like weights.
  vectorised  group by expert without masks: argsort the (token, slot) assignments by expert,
              gather the token rows into a zero-padded [E, max_count, C] block, run two
              batched matmuls (bmm) with the stacked D [E, R, C] and U [E, C, R], then scale
              by the routing weights and scatter-add back with index_add_.

It prints one JSON line: {"style", "tokens_per_s", "step_ms", "threads", "device_used_bytes"
(the GPU's memory in use after the steps; 0 on the CPU), ...}.
CPU float32 by default; `--device cuda [--bf16]` runs on a GPU (bf16 autocast for the forward).
"""

import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F


def parse():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--style", choices=["official", "vectorised"], default="official")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--ffn", type=int, default=704)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--adapter-dim", type=int, default=64)
    ap.add_argument("--adapter-scale", type=float, default=0.25)
    ap.add_argument("--adapter-dropout", type=float, default=0.1)
    ap.add_argument("--aux-coef", type=float, default=0.01)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--max-grad-norm", type=float, default=0.3)
    ap.add_argument("--steps", type=int, default=5, help="timed steps (default 5)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for the forward (cuda)")
    ap.add_argument("--seed", type=int, default=1234)
    a = ap.parse_args()
    if a.dim % a.heads or a.heads % a.kv_heads or (a.dim // a.heads) % 2:
        ap.error("dim must split into heads of even size, and heads into kv-heads")
    if not 1 <= a.top_k <= a.experts:
        ap.error("need 1 <= top-k <= experts")
    return a


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------


class Model:
    def __init__(self, a, dev):
        g = torch.Generator().manual_seed(a.seed)
        C, I, V, L = a.dim, a.ffn, a.vocab, a.layers
        hd = C // a.heads
        self.a, self.hd = a, hd

        def frozen(*shape, std):
            return (torch.randn(*shape, generator=g) * std).to(dev)

        def kaiming(*shape):  # nn.Linear default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            b = 1.0 / math.sqrt(shape[-1])
            return ((torch.rand(*shape, generator=g) * 2 - 1) * b).to(dev).requires_grad_(True)

        def nonzero(*shape, std):
            return (torch.randn(*shape, generator=g) * std).to(dev).requires_grad_(True)

        self.embed = frozen(V, C, std=1.0)
        self.layers = []
        for _ in range(L):
            lw = {
                "ln1": torch.ones(C, device=dev), "ln2": torch.ones(C, device=dev),
                "q": frozen(C, C, std=C ** -0.5), "k": frozen(a.kv_heads * hd, C, std=C ** -0.5),
                "v": frozen(a.kv_heads * hd, C, std=C ** -0.5), "o": frozen(C, C, std=C ** -0.5),
                "gate": frozen(I, C, std=C ** -0.5), "up": frozen(I, C, std=C ** -0.5),
                "down": frozen(C, I, std=I ** -0.5),
                "router": kaiming(a.experts, C),
            }
            if a.style == "official":   # one pair of separate weights per expert (nn.ModuleDict of Linear)
                lw["D"] = [kaiming(a.adapter_dim, C) for _ in range(a.experts)]
                lw["U"] = [nonzero(C, a.adapter_dim, std=0.02) for _ in range(a.experts)]
            else:                        # stacked: D [E, R, C], U [E, C, R]
                lw["D"] = kaiming(a.experts, a.adapter_dim, C)
                lw["U"] = nonzero(a.experts, C, a.adapter_dim, std=0.02)
            self.layers.append(lw)
        self.norm = torch.ones(C, device=dev)
        self.head = frozen(V, C, std=C ** -0.5)
        inv = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        fr = torch.outer(torch.arange(a.seq, dtype=torch.float32), inv)
        emb = torch.cat((fr, fr), dim=-1)
        self.cos, self.sin = emb.cos().to(dev), emb.sin().to(dev)
        self.mask = torch.full((a.seq, a.seq), float("-inf"), device=dev).triu(1)

    def trainables(self):
        out = []
        for lw in self.layers:
            out.append(lw["router"])
            if isinstance(lw["D"], list):
                out += lw["D"] + lw["U"]
            else:
                out += [lw["D"], lw["U"]]
        return out


def rms(x, w, eps=1e-5):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rot(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def attention(m, lw, x):
    a = m.a
    Bn, Tn, C = x.shape
    hd, nh, nkv = m.hd, a.heads, a.kv_heads
    q = F.linear(x, lw["q"]).view(Bn, Tn, nh, hd).transpose(1, 2)
    k = F.linear(x, lw["k"]).view(Bn, Tn, nkv, hd).transpose(1, 2)
    v = F.linear(x, lw["v"]).view(Bn, Tn, nkv, hd).transpose(1, 2)
    q = q * m.cos + rot(q) * m.sin
    k = k * m.cos + rot(k) * m.sin
    if nh != nkv:
        r = nh // nkv
        k = k[:, :, None].expand(Bn, nkv, r, Tn, hd).reshape(Bn, nh, Tn, hd)
        v = v[:, :, None].expand(Bn, nkv, r, Tn, hd).reshape(Bn, nh, Tn, hd)
    s = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(hd) + m.mask
    p = torch.softmax(s.float(), dim=-1).to(q.dtype)
    o = torch.matmul(p, v).transpose(1, 2).reshape(Bn, Tn, C)
    return F.linear(o, lw["o"])


def switch_aux(r, idx, E, K, coef):
    """alpha * E * sum_i f_i P_i; f from the top-k assignments (no grad), P = mean softmax (grad)."""
    N = r.shape[0]
    f = torch.bincount(idx.reshape(-1), minlength=E).to(r.dtype) / (N * K)
    P = torch.softmax(r.float(), dim=-1).mean(0)
    return coef * E * (f * P).sum()


def moe_official(m, lw, x, h, training):
    """The Camelidae layer: repeat_interleave by k, Python loop over experts, boolean masks."""
    a = m.a
    C = x.shape[-1]
    x = x.reshape(-1, C)
    h = h.reshape(-1, C)
    r = F.linear(x, lw["router"])
    wts, idx = torch.topk(r, a.top_k, dim=-1)
    wts = wts.softmax(dim=-1)
    sel = idx.view(-1)
    inp = h.repeat_interleave(a.top_k, dim=0)
    out = h.repeat_interleave(a.top_k, dim=0)
    for i in range(a.experts):
        rows = sel == i
        z = F.dropout(inp[rows], p=a.adapter_dropout, training=training)
        out[rows] += a.adapter_scale * F.linear(F.gelu(F.linear(z, lw["D"][i])), lw["U"][i])
    y = (out.view(*wts.shape, -1) * wts.unsqueeze(-1)).sum(dim=1)
    return y, switch_aux(r, idx, a.experts, a.top_k, a.aux_coef)


def moe_vectorised(m, lw, x, h, training):
    """Sort the (token, slot) pairs by expert, gather into a padded [E, M, C] block, two bmm, scatter-add."""
    a = m.a
    C = x.shape[-1]
    E, K = a.experts, a.top_k
    x = x.reshape(-1, C)
    h = h.reshape(-1, C)
    N = h.shape[0]
    r = F.linear(x, lw["router"])
    wts, idx = torch.topk(r, K, dim=-1)
    wts = wts.softmax(dim=-1)
    flat = idx.reshape(-1)
    order = torch.argsort(flat)                      # assignments grouped by expert
    e_sorted = flat[order]
    tok = torch.div(order, K, rounding_mode="floor")  # token of each sorted assignment
    counts = torch.bincount(flat, minlength=E)
    starts = torch.cumsum(counts, 0) - counts
    M = int(counts.max())
    slot = e_sorted * M + (torch.arange(N * K, device=h.device) - starts[e_sorted])
    z = F.dropout(h.index_select(0, tok), p=a.adapter_dropout, training=training)
    blk = z.new_zeros(E * M, C).index_copy(0, slot, z).view(E, M, C)
    u = torch.bmm(F.gelu(torch.bmm(blk, lw["D"].transpose(1, 2))), lw["U"].transpose(1, 2))  # [E, M, C]
    contrib = u.reshape(E * M, C).index_select(0, slot) * wts.reshape(-1)[order].unsqueeze(1).to(u.dtype)
    y = h.index_add(0, tok, (a.adapter_scale * contrib).to(h.dtype))
    return y, switch_aux(r, idx, E, K, a.aux_coef)


def loss_fn(m, ids, labels, training=True):
    a = m.a
    moe = moe_official if a.style == "official" else moe_vectorised
    x = m.embed[ids]
    aux = 0.0
    for lw in m.layers:
        x = x + attention(m, lw, rms(x, lw["ln1"]))
        xn = rms(x, lw["ln2"])
        h = F.linear(F.silu(F.linear(xn, lw["gate"])) * F.linear(xn, lw["up"]), lw["down"])  # frozen FFN, once
        y, al = moe(m, lw, xn, h, training)
        aux = aux + al
        x = x + y.view_as(x)
    logits = F.linear(rms(x, m.norm), m.head)
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, a.vocab).float(), labels[:, 1:].reshape(-1))
    return ce + aux


def main():
    a = parse()
    dev = torch.device(a.device)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    m = Model(a, dev)
    params = m.trainables()
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    g = torch.Generator().manual_seed(a.seed + 1)
    ids = torch.randint(0, a.vocab, (a.batch, a.seq), generator=g).to(dev)
    labels = ids.clone()
    use_amp = a.bf16 and dev.type == "cuda"

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def step():
        opt.zero_grad(set_to_none=True)
        if use_amp:
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                loss = loss_fn(m, ids, labels)
        else:
            loss = loss_fn(m, ids, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, a.max_grad_norm)
        opt.step()
        return loss

    for _ in range(a.warmup):
        step()
    sync()
    t0 = time.perf_counter()
    times = []
    for _ in range(a.steps):
        t1 = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - t1)
    total = time.perf_counter() - t0
    step_s = total / a.steps
    tokens = a.batch * a.seq
    used = 0   # the GPU's memory in use after the steps, as nvidia-smi counts it (pesc bench's)
    if dev.type == "cuda":
        free, total_bytes = torch.cuda.mem_get_info(dev)
        used = total_bytes - free
    print(json.dumps({
        "style": a.style,
        "tokens_per_s": tokens / step_s,
        "step_ms": step_s * 1e3,
        "step_ms_min": min(times) * 1e3,
        "threads": a.threads,
        "device": a.device + ("+bf16" if use_amp else ""),
        "steps": a.steps,
        "loss": float(loss),
        "device_used_bytes": used,
        "trainable_params": sum(p.numel() for p in params),
        "torch": torch.__version__,
        "shape": {"dim": a.dim, "layers": a.layers, "heads": a.heads, "kv_heads": a.kv_heads, "ffn": a.ffn,
                  "vocab": a.vocab, "seq": a.seq, "batch": a.batch, "experts": a.experts, "top_k": a.top_k,
                  "adapter_dim": a.adapter_dim},
    }))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
