"""PyTorch reference of cvq's model, timed the way cvq-train trains: the anchor for candle's
training speed (issue: GPU speed). Used on the GPU machine, which has PyTorch; the result is
candle's tokens/s as a ratio to this script's, measured in the same call.

The architecture is cvq-train's (train/src/model.rs): each element sums the embeddings of
the previous token in raster order, the token at the same position in the previous frame,
and the position within the frame; pre-norm blocks with RMSNorm, attention over the element's
own and K previous frames with a learned bias per head and frame offset, a GELU MLP; the
output matrix is the same-position embedding's first 1024 rows plus a bias. Matrix products
in bf16 under autocast, f32 master weights, AdamW, gradient clipping at 1.0, as cvq-train.

    python3 train/bench/torch_reference.py --layers 6 --width 256 --heads 8 --context-frames 4 \
        --mlp-width 1024 --batch 64 --frames 4 --steps 30

prints one line: `torch: N tokens/s (...)`, counting scored tokens (F frames x 128 per window)
as cvq-train does.

It is also the oracle for cvq-train's gradients: `--gradients FILE` reads the parameters, the
batch, the loss and every gradient that `cargo run --release -p cvq-train --example gradients
-- FILE` wrote (f64), recomputes loss and gradients with this model in f64 on the CPU, prints
the largest relative error of each tensor and exits 1 if one exceeds `--tolerance`
(`train/bench/gradient-check.sh` runs both).
"""
import argparse
import json
import math
import sys
import time

import numpy as np

import torch
import torch.nn as nn
import torch.nn.functional as F

T = 128  # tokens per frame
VOCAB = 1024
BOS = VOCAB


def widen(x):
    """x in f32 if it is in a 16-bit type (under autocast), else as it is (f64 stays f64)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class RMSNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(d))

    def forward(self, x):
        x = widen(x)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 2.0**-16) * self.gain


class Block(nn.Module):
    def __init__(self, d, heads, k, mlp, kv_heads=None):
        super().__init__()
        self.heads, self.kv_heads = heads, kv_heads or heads
        self.norm1, self.norm2 = RMSNorm(d), RMSNorm(d)
        self.qkv = nn.Linear(d, d + 2 * self.kv_heads * (d // heads), bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.up = nn.Linear(d, mlp, bias=False)
        self.down = nn.Linear(mlp, d, bias=False)
        self.frame_bias = nn.Parameter(torch.zeros(heads, k + 1))

    def forward(self, x, mask, offsets):
        b, n, d = x.shape
        hd = d // self.heads
        q, k, v = self.qkv(self.norm1(x)).split([d, self.kv_heads * hd, self.kv_heads * hd], dim=2)
        q = q.reshape(b, n, self.heads, hd).transpose(1, 2)
        # Grouped-query attention: query head h reads key/value head h // (heads // kv_heads).
        k, v = (t.reshape(b, n, self.kv_heads, hd).transpose(1, 2).repeat_interleave(self.heads // self.kv_heads, 1)
                for t in (k, v))
        if offsets is None:  # --tuned: `mask` is the frame-block mask of `block_layout`
            y = self.frame_blocks(q, k, v, mask)
        else:
            bias = self.frame_bias[:, offsets] + mask  # [heads, N, N]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        x = x + self.out(y.transpose(1, 2).reshape(b, n, d))
        return x + self.down(F.gelu(self.up(self.norm2(x)), approximate="tanh"))

    def frame_blocks(self, q, k, v, mask):
        """cvq-train's frame-block attention: the queries of frame f against the keys of frames
        f, f-1, .., f-K only (block o = frame offset o, zeros before the window, masked), the
        scale folded into q, the frame bias broadcast per block; [b, heads, N, head_dim]."""
        b, h, n, hd = q.shape
        w, blocks = n // T, self.frame_bias.shape[1]
        pad = lambda t: F.pad(t, (0, 0, (blocks - 1) * T, 0))
        shifted = lambda t: torch.stack([pad(t)[:, :, (blocks - 1 - o) * T:(blocks - 1 - o) * T + n]
                                         .reshape(b, h, w, T, hd) for o in range(blocks)], 3)
        keys, values = (shifted(t).reshape(b, h, w, blocks * T, hd) for t in (k, v))
        scores = (q * hd**-0.5).reshape(b, h, w, T, hd) @ keys.transpose(-1, -2)
        bias = (self.frame_bias[:, None, None, :, None] + mask).reshape(h, w, T, blocks * T)
        att = torch.softmax(widen(scores) + bias, -1).to(values.dtype)
        return (att @ values).reshape(b, h, n, hd)


class Gpt(nn.Module):
    def __init__(self, layers, d, heads, k, mlp, kv_heads=None):
        super().__init__()
        self.tok_prev = nn.Embedding(VOCAB + 1, d)
        self.tok_same = nn.Embedding(VOCAB + 1, d)
        self.pos = nn.Embedding(T, d)
        self.blocks = nn.ModuleList(Block(d, heads, k, mlp, kv_heads) for _ in range(layers))
        self.norm_out = RMSNorm(d)
        self.head_bias = nn.Parameter(torch.zeros(VOCAB))
        for name, p in self.named_parameters():
            if p.dim() == 2 and not name.endswith("frame_bias"):
                nn.init.normal_(p, std=0.02)

    def forward(self, prev, same, mask, offsets, first_scored=0):
        """Logits of the elements from `first_scored` on (--tuned: the scored frames only)."""
        n = prev.shape[1]
        x = self.tok_prev(prev) + self.tok_same(same) + self.pos(torch.arange(n, device=prev.device) % T)
        for blk in self.blocks:
            x = blk(x, mask, offsets)
        return F.linear(self.norm_out(x[:, first_scored:]), self.tok_same.weight[:VOCAB]) + self.head_bias


def reaches(i, j, reach):
    """Whether a query at place i reads place j of an earlier frame: within reach = (rows,
    columns) of it in the 8 x 16 frame ((7, 15): everywhere)."""
    return ((i // 16 - j // 16).abs() <= reach[0]) & ((i % 16 - j % 16).abs() <= reach[1])


def layout(frames, k, device, reach=(7, 15)):
    """Attention mask (0 or -inf) and frame offsets for windows of `frames` frames."""
    e = torch.arange(frames * T, device=device)
    f = e // T
    dt = f[:, None] - f[None, :]
    causal = torch.ones(frames * T, frames * T, device=device, dtype=torch.bool).tril()
    allowed = causal & (dt <= k) & ((dt == 0) | reaches(e[:, None] % T, e[None, :] % T, reach))
    mask = torch.zeros(allowed.shape, device=device).masked_fill(~allowed, float("-inf"))
    return mask, dt.clamp(0, k)


def block_layout(frames, k, device):
    """The frame-block mask `[W, T, K+1, T]` (query frame, query place, block o = frame offset,
    key place): -inf for blocks before the window and, in the query's own frame, for places
    after the query's."""
    f, i, o, j = torch.meshgrid(*(torch.arange(s, device=device) for s in (frames, T, k + 1, T)), indexing="ij")
    allowed = (o <= f) & ((o > 0) | (j <= i))
    return torch.zeros(allowed.shape, device=device).masked_fill(~allowed, float("-inf"))


def read_safetensors(path):
    """The tensors of a safetensors file as numpy arrays (the format is a little-endian u64
    header length, a JSON header of dtype, shape and byte offsets, then the data)."""
    types = {"F64": np.float64, "F32": np.float32, "U32": np.uint32, "I64": np.int64, "U8": np.uint8}
    raw = open(path, "rb").read()
    size = int.from_bytes(raw[:8], "little")
    header, data = json.loads(raw[8:8 + size]), raw[8 + size:]
    out = {}
    for name, t in header.items():
        if name != "__metadata__":
            start, end = t["data_offsets"]
            out[name] = np.frombuffer(data[start:end], dtype=types[t["dtype"]]).reshape(t["shape"])
    return out


def torch_name(name):
    """cvq's parameter name -> this model's ("layers.1.attn.qkv" -> "blocks.1.qkv.weight")."""
    parts = name.split(".")
    if parts[0] == "layers":
        leaf = parts[-1] if parts[-1] in ("frame_bias", "gain") else parts[-1] + ".weight"
        if leaf == "gain":
            leaf = parts[2] + ".gain"
        return f"blocks.{parts[1]}.{leaf}"
    return {"tok_prev": "tok_prev.weight", "tok_same": "tok_same.weight", "pos": "pos.weight",
            "norm_out.gain": "norm_out.gain", "head_bias": "head_bias"}[name]


def check_gradients(path, tolerance):
    """Recompute the loss and every gradient of cvq-train's dump in f64; 0 if all agree."""
    t = read_safetensors(path)
    layers, width, heads, k, mlp, frames, kv_heads, reach_rows, reach_cols = (int(v) for v in t["spec"])
    model = Gpt(layers, width, heads, k, mlp, kv_heads).double()
    params = dict(model.named_parameters())
    names = sorted(n[len("param."):] for n in t if n.startswith("param."))
    assert sorted(torch_name(n) for n in names) == sorted(params), "the two models' parameters differ"
    with torch.no_grad():
        for n in names:
            params[torch_name(n)].copy_(torch.from_numpy(t["param." + n].copy()))
    ids = {key: torch.from_numpy(t["batch." + key].astype(np.int64)) for key in ("prev", "same", "targets")}
    scored = torch.from_numpy(t["batch.mask"].copy())
    mask, offsets = layout(frames, k, "cpu", (reach_rows, reach_cols))
    logits = model(ids["prev"], ids["same"], mask.double(), offsets)
    nll = F.cross_entropy(logits.reshape(-1, VOCAB), ids["targets"].reshape(-1), reduction="none")
    loss = (nll * scored.reshape(-1)).sum() / scored.sum()
    loss.backward()
    worst = abs(loss.item() - float(t["loss"][0])) / abs(loss.item())
    print(f"loss: torch {loss.item():.12f}, cvq-train {float(t['loss'][0]):.12f}, relative error {worst:.2e}")
    print(f"{'tensor':28} {'largest |grad|':>14} {'largest relative error':>23}")
    for n in names:
        ours, theirs = params[torch_name(n)].grad.numpy(), t["grad." + n]
        scale = max(np.abs(ours).max(), 1e-300)
        error = np.abs(ours - theirs).max() / scale
        worst = max(worst, error)
        print(f"{n:28} {scale:14.3e} {error:23.2e}")
    verdict = "agree" if worst <= tolerance else "DISAGREE"
    print(f"{layers} x {width}, {heads} heads ({kv_heads} key/value), reach {reach_rows},{reach_cols}, K={k}, "
          f"MLP {mlp}, {frames} frames per window: largest relative "
          f"error {worst:.2e} (tolerance {tolerance:.0e}): gradients {verdict}")
    return 0 if worst <= tolerance else 1


def check_blocks():
    """The tuned peer's frame-block attention against the dense masked form, in f64 on the
    CPU: the same logits and gradients (so both peers time the same model); 0 if they agree."""
    torch.manual_seed(2)
    layers, d, heads, k, frames = 2, 32, 4, 2, 5
    model = Gpt(layers, d, heads, k, 64).double()
    with torch.no_grad():
        for blk in model.blocks:
            blk.frame_bias.normal_()
    tokens = torch.randint(0, VOCAB, (2, (frames + 1) * T))
    prev, same = tokens[:, T - 1:T - 1 + frames * T], tokens[:, :frames * T]
    results = []
    for mask, offsets in (layout(frames, k, "cpu"), (block_layout(frames, k, "cpu"), None)):
        model.zero_grad()
        logits = model(prev, same, mask.double(), offsets, T)
        (logits * torch.linspace(-1, 1, VOCAB, dtype=torch.float64)).sum().backward()
        results.append([logits.detach()] + [p.grad.clone() for p in model.parameters()])
    worst = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item() for a, b in zip(*results))
    print(f"frame-block vs dense attention (f64, {frames} frames, K={k}): largest relative difference {worst:.2e}")
    return 0 if worst < 1e-10 else 1


def main():
    a = argparse.ArgumentParser()
    for name, default in [("layers", 2), ("width", 128), ("heads", 4), ("context-frames", 2), ("mlp-width", 512),
                          ("batch", 8), ("frames", 4), ("steps", 30), ("warmup-steps", 5)]:
        a.add_argument("--" + name, type=int, default=default)
    a.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a.add_argument("--compile", action="store_true", help="torch.compile the model")
    a.add_argument("--tuned", action="store_true",
                   help="the tuned peer: frame-block attention as cvq-train's, the head on scored frames only, "
                        "torch.compile, fused AdamW (compile time left out: it falls in the warmup steps)")
    a.add_argument("--check-blocks", action="store_true",
                   help="check the tuned peer's frame-block attention against the dense form (f64, CPU)")
    a.add_argument("--gradients", metavar="FILE", help="check cvq-train's gradients in FILE (see above) instead")
    a.add_argument("--tolerance", type=float, default=1e-5,
                   help="largest relative error per tensor for --gradients (default 1e-5: candle's GELU "
                        "backward uses 6-digit constants, relative error ~1e-6)")
    args = a.parse_args()
    if args.check_blocks:
        sys.exit(check_blocks())
    if args.gradients:
        sys.exit(check_gradients(args.gradients, args.tolerance))
    dev = torch.device(args.device)
    torch.manual_seed(1)
    k = args.context_frames
    model = Gpt(args.layers, args.width, args.heads, k, args.mlp_width).to(dev)
    params = sum(p.numel() for p in model.parameters())
    fwd = torch.compile(model) if args.compile or args.tuned else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, fused=args.tuned or None)
    frames = k + args.frames
    mask, offsets = (block_layout(frames, k, dev), None) if args.tuned else layout(frames, k, dev)
    n = frames * T
    first = k * T if args.tuned else 0
    tokens = torch.randint(0, VOCAB, (args.batch, (frames + 1) * T), device=dev)
    prev, same, target = tokens[:, T - 1:T - 1 + n], tokens[:, :n], tokens[:, T:T + n]
    scored = torch.zeros(n, device=dev)
    scored[k * T:] = 1.0
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32

    def step():
        with torch.autocast(dev.type, dtype=dtype, enabled=dev.type == "cuda"):
            logits = fwd(prev, same, mask, offsets, first)
        nll = F.cross_entropy(logits.float().reshape(-1, VOCAB), target[:, first:].reshape(-1), reduction="none")
        loss = (nll.reshape(args.batch, n - first) * scored[first:]).sum() / (scored.sum() * args.batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    for _ in range(args.warmup_steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    loss.item()
    secs = time.perf_counter() - t
    rate = args.steps * args.batch * args.frames * T / secs
    mem = f", peak {torch.cuda.max_memory_allocated() / 1e9:.1f} GB" if dev.type == "cuda" else ""
    print(f"torch{' tuned' if args.tuned else ''}: {rate:.0f} tokens/s ({params} parameters, batch {args.batch} x {args.frames} scored frames, "
          f"{args.steps} steps in {secs:.2f} s, {dtype}, {dev}{mem}, loss {loss.item() / math.log(2):.3f} bits)")


if __name__ == "__main__":
    main()
