"""torch_train.py: the peer baseline for bench_train, measured in the same
`make bench` run: PyTorch training a llama of the same shapes (B16 x T256,
cross-entropy, forward + backward + AdamW + clipping), fp32 and with int4
groups of 32 through torch.fake_quantize_per_channel_affine, on 2 threads.
Tokens/s is the mean over the steps after the first, as bench_train reports.
Skips itself when torch is missing."""
import math
import sys
import time

try:
    import torch
except ImportError:
    print("torch_train: python3-torch not installed, skipped")
    sys.exit(0)

torch.set_num_threads(2)
B, T = 16, 256


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


def run(name, dim, hidden, layers, heads, kv, vocab, quant, steps):
    hd = dim // heads
    g = torch.Generator().manual_seed(1)
    w = lambda *shape: (0.02 * torch.randn(*shape, generator=g)).requires_grad_()
    P = {"embed": w(vocab, dim), "norm": torch.ones(dim, requires_grad=True)}
    for l in range(layers):
        for k, shape in {"q": (hd * heads, dim), "k": (hd * kv, dim), "v": (hd * kv, dim), "o": (dim, hd * heads),
                         "gate": (hidden, dim), "up": (hidden, dim), "down": (dim, hidden)}.items():
            P[f"{l}.{k}"] = w(*shape)
        P[f"{l}.n1"] = torch.ones(dim, requires_grad=True)
        P[f"{l}.n2"] = torch.ones(dim, requires_grad=True)
    lin = (lambda x, k: x @ fake_quant(P[k]).T) if quant else (lambda x, k: x @ P[k].T)
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

    params = list(P.values())
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
    tps = B * T * (steps - 1) / sum(times[1:])
    print(f"{name:<42} {tps:8.0f} tokens/s (PyTorch {torch.__version__}, steps 2..{steps})")


print(f"PyTorch baseline, threads {torch.get_num_threads()}; batch {B}, ctx {T}")
run("stories260K fp32", 64, 172, 5, 8, 4, 512, False, 12)
run("stories260K int4-g32 fake quant", 64, 172, 5, 8, 4, 512, True, 12)
run("generated 15M llama fp32", 288, 768, 6, 6, 6, 32000, False, 4)
run("generated 15M llama int4-g32 fake quant", 288, 768, 6, 6, 6, 32000, True, 4)
