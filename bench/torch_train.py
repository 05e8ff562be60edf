"""torch_train.py: the peer baseline for bench_train and bench_lora, measured
in the same `make bench` run: PyTorch training a llama of the same shapes
(B16 x T256, cross-entropy, forward + backward + AdamW + clipping), fp32 and
with int4 groups of 32 through torch.fake_quantize_per_channel_affine; and
LoRA (rank 8, alpha 16, every linear layer, the base frozen) on an f32 base
and on an NF4 base dequantized in the forward as bitsandbytes' reference
backend does (codes looked up in the NF4 table, times the block's absmax), on
2 threads.
Tokens/s is the mean over the steps after the first, as bench_train reports.
Skips itself when torch is missing.

With arguments it runs one configuration and prints one line for a caller
(bench_sizes, which runs each configuration in a fresh process and takes its
peak RSS from wait4):
  torch_train.py --shape 15M|260K --batch B --ctx T --steps N [--mode full|lora|qlora]
                 [--rank R] [--threads N]
  -> "torch_train: step1_s S tokens_per_s X torch VERSION" (X is nan for one step)"""
import argparse
import math
import sys
import time

try:
    import torch
except ImportError:
    print("torch_train: python3-torch not installed, skipped")
    sys.exit(0)

SHAPES = {"15M": (288, 768, 6, 6, 6, 32000), "260K": (64, 172, 5, 8, 4, 512)}


def fake_quant(w, group=32, bits=4):
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    rows, cols = w.shape
    pad = -cols % group
    gw = torch.nn.functional.pad(w, (0, pad)).reshape(-1, group)
    with torch.no_grad():
        amax = torch.maximum(-gw.min(1).values.clamp(max=0), gw.max(1).values.clamp(min=0))
        scale = (amax / ((qmax - qmin) / 2)).clamp(min=torch.finfo(torch.float32).eps)
    zero = torch.zeros(gw.shape[0], dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(gw, scale, zero, 0, qmin, qmax).reshape(rows, cols + pad)[:, :cols]


NF4 = torch.tensor([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                    0.7229568362236023, 1.0])


def nf4_pack(w):
    """codes (uint8, one per weight) and absmax per block of 64 of the flattened weight"""
    blocks = w.detach().reshape(-1, 64)
    absmax = blocks.abs().max(1).values
    codes = (blocks / absmax[:, None]).unsqueeze(-1).sub(NF4).abs().argmin(-1).to(torch.uint8)
    return codes, absmax, w.shape


def nf4_dequant(packed):
    codes, absmax, shape = packed
    return (NF4[codes.long()] * absmax[:, None]).reshape(shape)


def run(name, dim, hidden, layers, heads, kv, vocab, quant, steps, mode="full", B=16, T=256, rank=8):
    """mode: full (every weight trains), lora (rank-r adapters, alpha 2r, on a frozen f32 base), qlora (the same
    on NF4). Prints the line for `name`, or with name None returns (step 1 seconds, tokens/s after it)."""
    hd = dim // heads
    g = torch.Generator().manual_seed(1)
    w = lambda *shape: (0.02 * torch.randn(*shape, generator=g)).requires_grad_(mode == "full")
    P = {"embed": w(vocab, dim), "norm": torch.ones(dim, requires_grad=mode == "full")}
    for l in range(layers):
        for k, shape in {"q": (hd * heads, dim), "k": (hd * kv, dim), "v": (hd * kv, dim), "o": (dim, hd * heads),
                         "gate": (hidden, dim), "up": (hidden, dim), "down": (dim, hidden)}.items():
            P[f"{l}.{k}"] = w(*shape)
        P[f"{l}.n1"] = torch.ones(dim, requires_grad=mode == "full")
        P[f"{l}.n2"] = torch.ones(dim, requires_grad=mode == "full")
    lin = (lambda x, k: x @ fake_quant(P[k]).T) if quant else (lambda x, k: x @ P[k].T)
    if mode != "full":  # LoRA on every linear layer: A Kaiming-like, B zero; the base frozen (NF4 for qlora)
        r, scale, L = rank, 2.0, {}
        for k in [k for k in P if k.split(".")[-1] in ("q", "k", "v", "o", "gate", "up", "down")]:
            L[k] = ((torch.rand(r, P[k].shape[1], generator=g) * 2 - 1) / math.sqrt(P[k].shape[1])).requires_grad_(), \
                torch.zeros(P[k].shape[0], r, requires_grad=True)
            if mode == "qlora":
                P[k] = nf4_pack(P[k])
        base = (lambda k: nf4_dequant(P[k])) if mode == "qlora" else (lambda k: P[k])
        lin = lambda x, k: x @ base(k).T + scale * ((x @ L[k][0].T) @ L[k][1].T)
    inv = 10000.0 ** (-torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    ang = torch.arange(T, dtype=torch.float32)[:, None] * inv[None, :]
    cos, sin = torch.cos(ang)[None, :, None, :], torch.sin(ang)[None, :, None, :]
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)

    def rms(x, wt):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * wt

    def rope(x):
        a, b = x[..., : hd // 2], x[..., hd // 2:]
        return torch.cat([a * cos - b * sin, a * sin + b * cos], -1)

    def forward(tok):
        x = P["embed"][tok]
        for l in range(layers):
            h = rms(x, P[f"{l}.n1"])
            q = rope(lin(h, f"{l}.q").view(B, T, heads, hd)).transpose(1, 2)
            k = rope(lin(h, f"{l}.k").view(B, T, kv, hd)).repeat_interleave(heads // kv, 2).transpose(1, 2)
            v = lin(h, f"{l}.v").view(B, T, kv, hd).repeat_interleave(heads // kv, 2).transpose(1, 2)
            a = torch.softmax((q @ k.transpose(-1, -2) / math.sqrt(hd)).masked_fill(mask, float("-inf")), -1)
            x = x + lin((a @ v).transpose(1, 2).reshape(B, T, dim), f"{l}.o")
            h = rms(x, P[f"{l}.n2"])
            x = x + lin(torch.nn.functional.silu(lin(h, f"{l}.gate")) * lin(h, f"{l}.up"), f"{l}.down")
        return rms(x, P["norm"]) @ P["embed"].T

    params = list(P.values()) if mode == "full" else [t for ab in L.values() for t in ab]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    data = torch.randint(0, vocab, (B, T + 1), generator=g)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(forward(data[:, :T]).reshape(-1, vocab), data[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
    tps = B * T * (steps - 1) / sum(times[1:]) if steps > 1 else float("nan")
    if name is None:
        return times[0], tps
    print(f"{name:<42} {tps:8.0f} tokens/s (PyTorch {torch.__version__}, steps 2..{steps})")


if len(sys.argv) > 1:
    ap = argparse.ArgumentParser(description="one configuration of the PyTorch peer")
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--mode", choices=["full", "lora", "qlora"], default="full")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    step1, tps = run(None, *SHAPES[a.shape], False, a.steps, a.mode, a.batch, a.ctx, a.rank)
    print(f"torch_train: step1_s {step1:.6f} tokens_per_s {tps:.3f} torch {torch.__version__}")
    sys.exit(0)

torch.set_num_threads(2)
print(f"PyTorch baseline, threads {torch.get_num_threads()}; batch 16, ctx 256")
run("stories260K fp32", 64, 172, 5, 8, 4, 512, False, 12)
run("stories260K int4-g32 fake quant", 64, 172, 5, 8, 4, 512, True, 12)
run("generated 15M llama fp32", 288, 768, 6, 6, 6, 32000, False, 3)
run("generated 15M llama int4-g32 fake quant", 288, 768, 6, 6, 6, 32000, True, 3)
print("PyTorch LoRA baselines (bench_lora): rank 8, alpha 16, all linear layers")
run("stories260K LoRA, f32 base", 64, 172, 5, 8, 4, 512, False, 12, "lora")
run("stories260K QLoRA, NF4 base", 64, 172, 5, 8, 4, 512, False, 12, "qlora")
run("generated 15M llama LoRA, f32 base", 288, 768, 6, 6, 6, 32000, False, 3, "lora")
run("generated 15M llama QLoRA, NF4 base", 288, 768, 6, 6, 6, 32000, False, 3, "qlora")
