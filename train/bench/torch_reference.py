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
"""
import argparse
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

T = 128  # tokens per frame
VOCAB = 1024
BOS = VOCAB


class RMSNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(d))

    def forward(self, x):
        x = x.float()
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 2.0**-16) * self.gain


class Block(nn.Module):
    def __init__(self, d, heads, k, mlp):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = RMSNorm(d), RMSNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.up = nn.Linear(d, mlp, bias=False)
        self.down = nn.Linear(mlp, d, bias=False)
        self.frame_bias = nn.Parameter(torch.zeros(heads, k + 1))

    def forward(self, x, mask, offsets):
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(d, dim=2)
        q, k, v = (t.reshape(b, n, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        bias = self.frame_bias[:, offsets] + mask  # [heads, N, N]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        x = x + self.out(y.transpose(1, 2).reshape(b, n, d))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class Gpt(nn.Module):
    def __init__(self, layers, d, heads, k, mlp):
        super().__init__()
        self.tok_prev = nn.Embedding(VOCAB + 1, d)
        self.tok_same = nn.Embedding(VOCAB + 1, d)
        self.pos = nn.Embedding(T, d)
        self.blocks = nn.ModuleList(Block(d, heads, k, mlp) for _ in range(layers))
        self.norm_out = RMSNorm(d)
        self.head_bias = nn.Parameter(torch.zeros(VOCAB))
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, prev, same, mask, offsets):
        n = prev.shape[1]
        x = self.tok_prev(prev) + self.tok_same(same) + self.pos(torch.arange(n, device=prev.device) % T)
        for blk in self.blocks:
            x = blk(x, mask, offsets)
        return F.linear(self.norm_out(x), self.tok_same.weight[:VOCAB]) + self.head_bias


def layout(frames, k, device):
    """Attention mask (0 or -inf) and frame offsets for windows of `frames` frames."""
    f = torch.arange(frames * T, device=device) // T
    dt = f[:, None] - f[None, :]
    causal = torch.ones(frames * T, frames * T, device=device, dtype=torch.bool).tril()
    allowed = causal & (dt <= k)
    mask = torch.zeros(allowed.shape, device=device).masked_fill(~allowed, float("-inf"))
    return mask, dt.clamp(0, k)


def main():
    a = argparse.ArgumentParser()
    for name, default in [("layers", 2), ("width", 128), ("heads", 4), ("context-frames", 2), ("mlp-width", 512),
                          ("batch", 8), ("frames", 4), ("steps", 30), ("warmup-steps", 5)]:
        a.add_argument("--" + name, type=int, default=default)
    a.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a.add_argument("--compile", action="store_true", help="torch.compile the model")
    args = a.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(1)
    k = args.context_frames
    model = Gpt(args.layers, args.width, args.heads, k, args.mlp_width).to(dev)
    params = sum(p.numel() for p in model.parameters())
    fwd = torch.compile(model) if args.compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    frames = k + args.frames
    mask, offsets = layout(frames, k, dev)
    n = frames * T
    tokens = torch.randint(0, VOCAB, (args.batch, (frames + 1) * T), device=dev)
    prev, same, target = tokens[:, T - 1:T - 1 + n], tokens[:, :n], tokens[:, T:T + n]
    scored = torch.zeros(n, device=dev)
    scored[k * T:] = 1.0
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32

    def step():
        with torch.autocast(dev.type, dtype=dtype, enabled=dev.type == "cuda"):
            logits = fwd(prev, same, mask, offsets)
        nll = F.cross_entropy(logits.float().reshape(-1, VOCAB), target.reshape(-1), reduction="none")
        loss = (nll.reshape(args.batch, n) * scored).sum() / (scored.sum() * args.batch)
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
    print(f"torch: {rate:.0f} tokens/s ({params} parameters, batch {args.batch} x {args.frames} scored frames, "
          f"{args.steps} steps in {secs:.2f} s, {dtype}, {dev}{mem}, loss {loss.item() / math.log(2):.3f} bits)")


if __name__ == "__main__":
    main()
