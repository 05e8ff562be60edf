"""gptq_oracle.py: reads an HF folder in GPTQ's layout (AutoGPTQ, checkpoint
format "gptq", v1) with json and numpy alone (independent of qtc): config.json's
quantization_config {"quant_method": "gptq", bits, group_size, sym, desc_act,
...}, and per linear module qweight (int32 [in / (32/bits), out], codes packed
LSB first along the input), qzeros (int32 [groups, out / (32/bits)], zero
points minus 1), scales (float16 [groups, out]) and g_idx (int32 [in]).
Dequantizes every module as w[o, i] = scales[g_idx[i], o] * (q[i, o] -
(qzeros[g_idx[i], o] + 1)) in float64 and checks it against DEQUANT, an f32
safetensors file of the same model (qconv's --to f32 of the folder), to 1e-6.
Usage: python3 gptq_oracle.py FOLDER DEQUANT.safetensors"""
import json
import struct
import sys

import numpy as np

DTYPES = {"F32": np.float32, "F16": np.float16, "I32": np.int32, "I8": np.int8, "U8": np.uint8}


def read_safetensors(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    buf = raw[8 + n:]
    out = {}
    for k, v in header.items():
        b, e = v["data_offsets"]
        out[k] = np.frombuffer(buf[b:e], dtype=DTYPES[v["dtype"]]).reshape(v["shape"])
    return out


def unpack(words, bits, axis):
    """int32 words -> the unsigned values packed LSB first along `axis`."""
    per = 32 // bits
    w = words.astype(np.uint32)
    parts = [(w >> np.uint32(bits * k)) & np.uint32((1 << bits) - 1) for k in range(per)]
    stacked = np.stack(parts, axis=axis + 1)  # value k of word j at position j * per + k
    shape = list(w.shape)
    shape[axis] *= per
    return stacked.reshape(shape).astype(np.int64)


def main():
    folder, dequant = sys.argv[1], sys.argv[2]
    qc = json.load(open(folder + "/config.json"))["quantization_config"]
    assert qc["quant_method"] == "gptq" and qc["checkpoint_format"] == "gptq", qc
    bits, group = qc["bits"], qc["group_size"]
    for key in ("desc_act", "sym", "damp_percent", "static_groups", "true_sequential"):
        assert key in qc, key
    model = read_safetensors(folder + "/model.safetensors")
    ref = read_safetensors(dequant)
    modules = sorted(k[: -len(".qweight")] for k in model if k.endswith(".qweight"))
    assert modules, "no qweight tensors"
    for mod in modules:
        qweight, qzeros = model[mod + ".qweight"], model[mod + ".qzeros"]
        scales, g_idx = model[mod + ".scales"], model[mod + ".g_idx"]
        assert qweight.dtype == np.int32 and qzeros.dtype == np.int32 and scales.dtype == np.float16, mod
        q = unpack(qweight, bits, 0)            # [in, out]
        z = unpack(qzeros, bits, 1) + 1         # [groups, out]
        n_in, n_out = q.shape
        assert g_idx.shape == (n_in,), (mod, g_idx.shape)
        want_g = np.arange(n_in) // (group if group > 0 else n_in)
        assert (g_idx == want_g).all(), mod
        w = scales.astype(np.float64)[g_idx] * (q - z[g_idx])  # [in, out]
        got = ref[mod + ".weight"].astype(np.float64).T
        assert got.shape == w.shape, (mod, got.shape, w.shape)
        err = np.abs(got - w).max()
        assert err <= 1e-6 * max(1.0, np.abs(w).max()), (mod, err)
        if qc["sym"]:
            assert (z == 1 << (bits - 1)).all(), mod
    print(f"{len(modules)} modules dequantize as GPTQ's layout says ({bits} bits, group {group})")


main()
