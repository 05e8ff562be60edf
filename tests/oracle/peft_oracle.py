"""peft_oracle.py: reads a PEFT LoRA folder qtc wrote with json and numpy alone
(independent of qtc) and checks it has PEFT's layout: adapter_config.json with
the fields PEFT's LoraConfig reads, adapter_model.safetensors with
__metadata__ {"format": "pt"}, keys
base_model.model.model.layers.N.(self_attn|mlp).<proj>.lora_(A|B).weight,
lora_A [r, in] and lora_B [out, r] for every targeted module.
With BASE and MERGED (f32 safetensors files of the same model), also checks
that MERGED = BASE + (alpha / r) B A for every adapted weight, computed here in
float64, and that every other tensor is unchanged.
Usage: python3 peft_oracle.py ADAPTER_DIR [BASE.safetensors MERGED.safetensors [WEIGHT]]"""
import json
import re
import struct
import sys

import numpy as np


def read_safetensors(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    buf = raw[8 + n:]
    out = {}
    for k, v in header.items():
        b, e = v["data_offsets"]
        assert v["dtype"] == "F32", f"{k}: {v['dtype']}"
        out[k] = np.frombuffer(buf[b:e], dtype=np.float32).reshape(v["shape"])
    return meta, out


adapter = sys.argv[1]
cfg = json.load(open(f"{adapter}/adapter_config.json"))
for field in ["peft_type", "task_type", "r", "lora_alpha", "target_modules", "use_rslora", "use_dora", "fan_in_fan_out",
              "bias", "lora_dropout", "base_model_name_or_path", "rank_pattern", "alpha_pattern"]:
    assert field in cfg, f"adapter_config.json lacks {field}"
assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM" and cfg["bias"] == "none", cfg
assert cfg["use_dora"] is False and cfg["fan_in_fan_out"] is False, cfg
r, alpha = cfg["r"], cfg["lora_alpha"]
scale = alpha / (r ** 0.5 if cfg["use_rslora"] else r)
meta, t = read_safetensors(f"{adapter}/adapter_model.safetensors")
assert meta.get("format") == "pt", meta
key = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)\.lora_([AB])\.weight$")
modules = {}
for k, v in t.items():
    m = key.match(k)
    assert m, f"not a PEFT LoRA key: {k}"
    modules.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = v
targets = cfg["target_modules"]
for (layer, mod), ab in modules.items():
    assert set(ab) == {"A", "B"}, f"layer {layer} {mod}: {sorted(ab)}"
    assert ab["A"].shape[0] == r and ab["B"].shape[1] == r, f"{mod}: rank {ab['A'].shape} {ab['B'].shape} vs r={r}"
    if isinstance(targets, list):
        assert mod.split(".")[1] in targets, f"{mod} not in target_modules {targets}"
if len(sys.argv) > 3:
    weight = float(sys.argv[4]) if len(sys.argv) > 4 else 1.0
    _, base = read_safetensors(sys.argv[2])
    _, merged = read_safetensors(sys.argv[3])
    assert set(base) == set(merged), "the merged model's tensors differ from the base's"
    adapted = {f"model.layers.{l}.{mod}.weight": ab for (l, mod), ab in modules.items()}
    worst = 0.0
    for k in base:
        if k in adapted:
            ab = adapted[k]
            want = base[k].astype(np.float64) + weight * scale * (ab["B"].astype(np.float64) @ ab["A"].astype(np.float64))
            err = np.abs(merged[k] - want).max() / max(np.abs(want).max(), 1e-30)
            worst = max(worst, err)
            assert err < 1e-6, f"{k}: merged differs from W + s B A by {err:.3g} (relative to max |W'|)"
        else:
            assert np.array_equal(base[k], merged[k]), f"{k} changed but has no adapter"
    assert adapted, "no adapted weight"
print(f"peft oracle: {len(modules)} modules, r={r}, alpha={alpha}: PEFT layout" + (" and merge exact" if len(sys.argv) > 3 else ""))
