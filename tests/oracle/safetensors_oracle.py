"""safetensors_oracle.py: reads a safetensors file qtc wrote with numpy alone
(an implementation independent of qtc) and checks it against the llama2.c
checkpoint it came from, read here with numpy too: the header follows the
spec (8-byte padded, reference writer order, offsets tiling the buffer), every
tensor holds the checkpoint's floats, and q/k rows are in HF's rotate-half
order (convert_hf_to_gguf's permute undone).
Usage: python3 safetensors_oracle.py OUT.safetensors stories260K.bin"""
import json
import struct
import sys

import numpy as np

out_path, l2c_path = sys.argv[1], sys.argv[2]
raw = open(out_path, "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
assert n % 8 == 0, "header not padded to 8"
header = json.loads(raw[8:8 + n])
meta = header.pop("__metadata__", {})
assert meta.get("format") == "pt", meta
buf = raw[8 + n:]
size = {"F32": 4, "F16": 2, "BF16": 2, "I8": 1, "U8": 1, "I32": 4}
order = sorted(header, key=lambda k: header[k]["data_offsets"][0])
assert order == sorted(header, key=lambda k: (-size[header[k]["dtype"]], k)), "not in the reference writer's order"
at = 0
for k in order:
    b, e = header[k]["data_offsets"]
    assert b == at, f"{k}: hole or overlap"
    at = e
assert at == len(buf), "buffer not covered"

def tensor(k):
    """The stored values as float32 (bf16 widened by a 16-bit shift)."""
    v = header[k]
    b, e = v["data_offsets"]
    if v["dtype"] == "BF16":
        u = np.frombuffer(buf[b:e], dtype=np.uint16).astype(np.uint32) << 16
        return u.view(np.float32).reshape(v["shape"])
    return np.frombuffer(buf[b:e], dtype={"F32": np.float32, "F16": np.float16}[v["dtype"]]).reshape(v["shape"])


def stored(x, dtype):
    """float32 x as the given safetensors dtype would store it, back as float32."""
    if dtype == "F32":
        return x
    if dtype == "F16":
        return x.astype(np.float16).astype(np.float32)
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)  # bf16: round to nearest even
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32)

h = np.fromfile(l2c_path, dtype=np.int32, count=7)
dim, hidden, layers, heads, kv_heads, vocab, seq = (int(x) for x in h)
w = np.fromfile(l2c_path, dtype=np.float32, offset=28)
hd = dim // heads
kv = hd * kv_heads
pos = 0

def take(*shape):
    global pos
    count = int(np.prod(shape))
    a = w[pos:pos + count].reshape(shape)
    pos += count
    return a

def to_hf(x, n_head):  # inverse of convert_hf_to_gguf's permute
    r = x.shape[0]
    return x.reshape(n_head, r // n_head // 2, 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)

want = {"model.embed_tokens.weight": take(abs(vocab), dim)}
blocks = [("input_layernorm", (dim,)), ("self_attn.q_proj", (dim, dim)), ("self_attn.k_proj", (kv, dim)),
          ("self_attn.v_proj", (kv, dim)), ("self_attn.o_proj", (dim, dim)), ("post_attention_layernorm", (dim,)),
          ("mlp.gate_proj", (hidden, dim)), ("mlp.down_proj", (dim, hidden)), ("mlp.up_proj", (hidden, dim))]
for name, shape in blocks:
    for layer in range(layers):
        t = take(*shape)
        if name == "self_attn.q_proj":
            t = to_hf(t, heads)
        if name == "self_attn.k_proj":
            t = to_hf(t, kv_heads)
        want[f"model.layers.{layer}.{name}.weight"] = t
want["model.norm.weight"] = take(dim)
assert set(want) == set(header), set(want) ^ set(header)
for k, v in want.items():
    got = tensor(k)
    assert got.shape == v.shape, k
    assert np.array_equal(got.astype(np.float32), stored(v, header[k]["dtype"])), f"{k} differs"
print(f"{len(want)} tensors match")
