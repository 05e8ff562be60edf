"""qlayout_oracle.py: decodes the quantized layouts qtc writes (compressed-tensors
pack-quantized / int-quantized, bitsandbytes NF4) with numpy alone, following
their published definitions, and checks the result against qtc's own
dequantization of the same file (written with qconv --to f32), bit for bit.
Usage: python3 qlayout_oracle.py QUANTIZED.safetensors DEQUANTIZED.safetensors"""
import json
import struct
import sys

import numpy as np

DT = {"F32": np.float32, "I32": np.int32, "I8": np.int8, "U8": np.uint8}

def load(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    h = json.loads(raw[8:8 + n])
    meta = h.pop("__metadata__", {})
    out = {}
    for k, v in h.items():
        b, e = v["data_offsets"]
        out[k] = np.frombuffer(raw[8 + n + b:8 + n + e], dtype=DT[v["dtype"]]).reshape(v["shape"])
    return out, meta

q, meta = load(sys.argv[1])
deq, _ = load(sys.argv[2])
cfg = json.loads(meta["qtc.config"]).get("quantization_config", {})
checked = 0
for name in deq:
    mod = name[:-len(".weight")] if name.endswith(".weight") else name
    if cfg.get("quant_method") == "compressed-tensors" and mod + ".weight_scale" in q:
        w = cfg["config_groups"]["group_0"]["weights"]
        bits, gs = w["num_bits"], w["group_size"]
        scale = q[mod + ".weight_scale"].astype(np.float32)
        if bits == 8:
            vals = q[mod + ".weight"].astype(np.int32)
            zp = q.get(mod + ".weight_zero_point")
            zp = None if zp is None else zp.astype(np.int32)
        else:
            rows, cols = (int(x) for x in q[mod + ".weight_shape"])
            per = 32 // bits
            words = q[mod + ".weight_packed"].view(np.uint32)
            shifts = np.arange(per, dtype=np.uint32) * bits
            vals = ((words[:, :, None] >> shifts) & ((1 << bits) - 1)).reshape(rows, -1)[:, :cols].astype(np.int32)
            vals -= 1 << (bits - 1)
            zp = q.get(mod + ".weight_zero_point")
            if zp is not None:  # packed along dimension 0
                zw = zp.view(np.uint32)
                z = ((zw[:, None, :] >> shifts[None, :, None]) & ((1 << bits) - 1)).reshape(-1, zw.shape[-1])
                zp = z[:scale.shape[0] if scale.ndim == 2 else 1].astype(np.int32) - (1 << (bits - 1))
        rows, cols = vals.shape
        if scale.ndim == 1:  # per tensor
            s_full = np.full((rows, cols), scale[0], dtype=np.float32)
            z_full = np.zeros((rows, cols), np.int32) if zp is None else np.full((rows, cols), zp.reshape(-1)[0])
        else:
            g = cols if w["strategy"] == "channel" else gs
            idx = np.arange(cols) // g
            s_full = scale[:, idx]
            z_full = np.zeros((rows, cols), np.int32) if zp is None else zp.reshape(rows, -1)[:, idx]
        want = ((vals - z_full).astype(np.float32) * s_full).astype(np.float32)
    elif name + ".quant_state.bitsandbytes__nf4" in q:
        st = json.loads(bytes(q[name + ".quant_state.bitsandbytes__nf4"]).decode())
        rows, cols = st["shape"]
        packed = q[name].reshape(-1)
        codes = np.empty(packed.size * 2, np.uint8)
        codes[0::2] = packed >> 4  # the first value in the high nibble
        codes[1::2] = packed & 15
        codes = codes[:rows * cols]
        qm = q[name + ".quant_map"]
        if "nested_offset" in st:
            am = (q[name + ".nested_quant_map"][q[name + ".absmax"]] *
                  np.repeat(q[name + ".nested_absmax"], 256)[:q[name + ".absmax"].size]).astype(np.float32)
            am = (am + np.float32(st["nested_offset"])).astype(np.float32)
        else:
            am = q[name + ".absmax"]
        want = (qm[codes] * np.repeat(am, st["blocksize"])[:rows * cols]).astype(np.float32).reshape(rows, cols)
    else:
        continue
    got = deq[name]
    assert got.shape == want.shape, name
    assert np.array_equal(got, want), f"{name}: max diff {np.abs(got - want).max()}"
    checked += 1
assert checked > 0, "no quantized weight found"
print(f"{checked} quantized weights decode identically")
