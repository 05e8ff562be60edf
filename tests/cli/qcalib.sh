#!/bin/sh
# qcalib's command line: the calibration file with provenance, the imatrix as
# llama.cpp's GGUF (read by @huggingface/gguf), GPTQ models that score better
# than round-to-nearest in qeval, and bad input. Last line: "qcalib: N passed, N failed".
set -u
BIN=${QTC_BIN:-bin}
SHARED=${QTC_SHARED:-../shared}
Q="$BIN/qcalib"
M=$SHARED/models/stories260K/stories260K.bin
TOK=$SHARED/models/stories260K/tok512.bin
TRAIN=$SHARED/data/tinystories-train.txt
EVAL=$SHARED/data/tinystories-eval.txt
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
NAME=qcalib
. tests/cli/lib.sh
head -c 400000 "$SHARED/data/tinystories-train.txt" >"$T/train.txt" # enough for every run here, quick to tokenize
TRAIN=$T/train.txt
PY=$(command -v python3 || echo /usr/bin/python3) # the standard library is enough here

expect 0 "--help" "$Q" --help
expect 1 "no data" "$Q" "$M" -o "$T/c.json"
expect 1 "nothing to write" "$Q" "$M" --data "$TRAIN"
expect 1 "bad method" "$Q" "$M" --data "$TRAIN" --method entropy -o "$T/c.json"
expect 1 "GPTQ into a calibration file" "$Q" "$M" --data "$TRAIN" --gptq -o "$T/c.json"
expect 1 "GPTQ into GGUF" "$Q" "$M" --data "$TRAIN" --gptq -o "$T/g.gguf"

expect 0 "calibration file and imatrix" "$Q" "$M" --data "$TRAIN" --tokens 8192 --method kl -o "$T/c.json" --imatrix "$T/im.gguf"
stderr_has "calibration file and imatrix" "8192 tokens of"
check "the calibration file records its data" python3 -c "
import hashlib, json
c = json.load(open('$T/c.json'))
assert c['format'] == 'qtc-calibration' and c['method'] == 'kl' and c['bits'] == 8, c
assert c['source']['sha256'] == hashlib.sha256(open('$TRAIN', 'rb').read()).hexdigest()
assert c['source']['tokens'] == 8192 and c['source']['ctx'] == 128
t = c['tensors']
assert len(t) == 35, len(t)
for k, v in t.items():
    i = v['input']
    assert i['observed_min'] <= i['min'] < 0 < i['max'] <= i['observed_max'] + 1e-9, (k, i)
    assert -128 <= i['zero_point'] <= 127 and i['scale'] > 0"
if [ -d tests/oracle/node_modules/@huggingface/gguf ] && command -v node >/dev/null; then
    check "@huggingface/gguf reads the imatrix" node tests/oracle/imatrix_oracle.mjs "$T/im.gguf" "$TRAIN" 64 128 35
else skip=$((skip + 1)); fi
expect 0 "--plot" "$Q" "$M" --data "$TRAIN" --tokens 4096 --method percentile --plot "$T/plots"
check "--plot draws every histogram with its range and an index" python3 -c "
import xml.etree.ElementTree as ET, os, re
files = [f for f in os.listdir('$T/plots') if f.endswith('.svg')]
assert len(files) == 35, len(files)
root = ET.parse('$T/plots/model.layers.2.mlp.down_proj.weight.svg').getroot()
paths = [e for e in root.iter() if e.tag.endswith('path')]
reds = [e for e in root.iter() if e.tag.endswith('line') and e.get('stroke') == '#d62728']
assert len(paths) == 1 and paths[0].get('d').count('M') > 20 and len(reds) == 2
idx = open('$T/plots/index.html').read()
assert len(re.findall(r'<img src=\"model\.layers\.[0-9]+\..*?\.svg\"', idx)) == 35"
for m in minmax percentile mse; do
    expect 0 "$m ranges" "$Q" "$M" --data "$TRAIN" --tokens 8192 --method $m -o "$T/$m.json"
done
check "clipping methods clip: kl and mse ranges inside min-max" python3 -c "
import json
mm = json.load(open('$T/minmax.json'))['tensors']
for f in ['$T/mse.json', '$T/c.json', '$T/percentile.json']:
    t = json.load(open(f))['tensors']
    assert all(t[k]['input']['max'] <= mm[k]['input']['max'] + 1e-9 for k in t)
    assert sum(t[k]['input']['max'] < mm[k]['input']['max'] for k in t) > 5, f"

kld() { m=$1; shift; "$BIN/qeval" "$m" --tokenizer "$TOK" --text "$EVAL" --windows 64 --ref "$M" --json "$@" 2>/dev/null | python3 -c "import json,sys; print(json.load(sys.stdin)['kld'])"; }

# W8A8: int8 weights, inputs quantized with the file's static ranges; clipping beats min-max here
"$BIN/qconv" "$M" --to int8 -o "$T/w8.safetensors" 2>/dev/null
w8=$(kld "$T/w8.safetensors")
mm=$(kld "$T/w8.safetensors" --act-calib "$T/minmax.json")
pc=$(kld "$T/w8.safetensors" --act-calib "$T/percentile.json")
if awk "BEGIN{exit !($w8 < $pc && $pc < $mm)}"; then ok; else bad "W8A8 KLD: weights only $w8, percentile $pc, min-max $mm"; fi
expect 0 "SmoothQuant" "$Q" "$M" --data "$TRAIN" --tokens 8192 --smoothquant --method percentile --ranges "$T/sq.json" -o "$T/sq.safetensors"
stderr_has "SmoothQuant" "logits by at most [0-9.]*e-0[5-9]"
"$BIN/qconv" "$T/sq.safetensors" --inspect >"$T/out" 2>&1
stdout_has "SmoothQuant weights are int8 per channel" "gate_proj.weight *int8"
sq=$(kld "$T/sq.safetensors" --act-calib "$T/sq.json")
if awk "BEGIN{exit !($sq < $mm)}"; then ok; else bad "SmoothQuant W8A8 KLD $sq vs min-max $mm"; fi
expect 2 "--act-calib with a model file" "$BIN/qeval" "$M" --act-calib "$T/im.gguf" --text "$EVAL" --windows 2
stderr_has "--act-calib with a model file" "not a qtc calibration file"

# GPTQ: scored against the float model, better than round-to-nearest at the same scheme
"$BIN/qconv" "$M" --to int4-g32 -o "$T/rtn.safetensors" 2>/dev/null
expect 0 "GPTQ int4-g32" "$Q" "$M" --data "$TRAIN" --tokens 16384 --gptq --act-order -o "$T/gptq.safetensors"
stderr_has "GPTQ int4-g32" "35 weights by GPTQ to int4-g32 (act-order)"
"$BIN/qconv" "$T/gptq.safetensors" --inspect >"$T/out" 2>&1
stdout_has "stored as int4-g32" "q_proj.weight *int4-g32"
r=$(kld "$T/rtn.safetensors")
g=$(kld "$T/gptq.safetensors")
if awk "BEGIN{exit !($g < 0.75 * $r)}"; then ok; else bad "GPTQ KLD $g vs round-to-nearest $r"; fi
# every layer calibrated on the float model's inputs instead of the quantized layers' outputs
expect 0 "GPTQ --no-sequential" "$Q" "$M" --data "$TRAIN" --tokens 16384 --gptq --no-sequential -o "$T/gptq-ns.safetensors"
stderr_has "GPTQ --no-sequential" "to int4-g32 (not sequential)"
g2=$(kld "$T/gptq-ns.safetensors")
if awk "BEGIN{exit !($g2 < 0.75 * $r && $g2 != $g)}"; then ok; else bad "GPTQ (not sequential) KLD $g2 vs round-to-nearest $r, sequential $g"; fi

# AWQ: scales folded into the norms and up_proj leave the float model's function (checked by the tool), and help
expect 0 "AWQ int4-g32" "$Q" "$M" --data "$TRAIN" --tokens 16384 --awq -o "$T/awq.safetensors"
stderr_has "AWQ int4-g32" "logits by at most [0-9.]*e-0[5-9]"
stderr_has "AWQ int4-g32" "AWQ: output error"
stderr_has "AWQ int4-g32" "AWQ clipping: group output error"
a=$(kld "$T/awq.safetensors")
if awk "BEGIN{exit !($a < 0.85 * $r)}"; then ok; else bad "AWQ KLD $a vs round-to-nearest $r"; fi
expect 0 "AWQ without clipping" "$Q" "$M" --data "$TRAIN" --tokens 16384 --awq --no-clip -o "$T/awq-nc.safetensors"
a2=$(kld "$T/awq-nc.safetensors")
if awk "BEGIN{exit !($a < $a2 && $a2 < $r)}"; then ok; else bad "AWQ KLD $a with clipping, $a2 without, round-to-nearest $r"; fi

# the imatrix weights qconv's integer rounding: better than plain round-to-nearest
expect 0 "qconv --imatrix" "$BIN/qconv" "$M" --to int4-g32 --imatrix "$T/im.gguf" -o "$T/imx.safetensors"
i=$(kld "$T/imx.safetensors")
if awk "BEGIN{exit !($i < 0.9 * $r)}"; then ok; else bad "imatrix-weighted KLD $i vs round-to-nearest $r"; fi
# ... and ggml's block types, as llama-quantize rounds with an imatrix
expect 0 "qconv --to q4_0" "$BIN/qconv" "$M" --to q4_0 -o "$T/q40.gguf"
expect 0 "qconv --to q4_0 --imatrix" "$BIN/qconv" "$M" --to q4_0 --imatrix "$T/im.gguf" -o "$T/q40-imx.gguf"
stderr_has "qconv --to q4_0 --imatrix" "30 tensors rounded with the importance matrix"
r0=$(kld "$T/q40.gguf")
i0=$(kld "$T/q40-imx.gguf")
if awk "BEGIN{exit !($i0 < 0.97 * $r0)}"; then ok; else bad "Q4_0 imatrix-weighted KLD $i0 vs plain $r0"; fi
expect 2 "qconv --imatrix with a model file" "$BIN/qconv" "$M" --to int4-g32 --imatrix "$M" -o "$T/bad.safetensors"
stderr_has "qconv --imatrix with a model file" "not an imatrix GGUF"
absent "no output after a bad imatrix" "$T/bad.safetensors"

# GPTQ's own layout in an HF folder (qweight, qzeros, scales, g_idx), read back by qtc and by numpy
expect 0 "GPTQ layout int8-g32" "$Q" "$M" --data "$TRAIN" --tokens 8192 --gptq --wbits 8 -o "$T/gq" --format hf
stderr_has "GPTQ layout int8-g32" "by GPTQ to int8-g32 in GPTQ's layout"
"$BIN/qconv" "$T/gq" --inspect >"$T/out" 2>&1
stdout_has "GPTQ folder reads as int8-g32" "q_proj.weight *int8-g32"
expect 0 "GPTQ layout asymmetric" "$Q" "$M" --data "$TRAIN" --tokens 8192 --gptq --wbits 8 --asym -o "$T/gqa" --format hf
expect 0 "GPTQ folder to f32" "$BIN/qconv" "$T/gq" --to f32 -o "$T/gq32.safetensors"
expect 0 "asymmetric GPTQ folder to f32" "$BIN/qconv" "$T/gqa" --to f32 -o "$T/gqa32.safetensors"
NUMPY_PY=
for py in python3 /usr/bin/python3; do
    if "$py" -c "import numpy" 2>/dev/null; then NUMPY_PY=$py; break; fi
done
if [ -n "$NUMPY_PY" ]; then
    check "numpy dequantizes the GPTQ layout as qtc does" "$NUMPY_PY" tests/oracle/gptq_oracle.py "$T/gq" "$T/gq32.safetensors"
    check "... asymmetric too" "$NUMPY_PY" tests/oracle/gptq_oracle.py "$T/gqa" "$T/gqa32.safetensors"
else
    skip=$((skip + 2))
fi
g8=$(kld "$T/gq")
"$Q" "$M" --data "$TRAIN" --tokens 8192 --gptq --wbits 8 --layout compressed-tensors -o "$T/gq.safetensors" 2>/dev/null
c8=$(kld "$T/gq.safetensors")
if awk "BEGIN{d = $g8 - $c8; exit !(d < 0.02 * $c8 + 1e-4 && -d < 0.02 * $c8 + 1e-4)}"; then ok; else bad "GPTQ layout KLD $g8 vs compressed-tensors $c8"; fi
# a GPTQ folder that lies: a qzeros shape that disagrees with qweight, a permuted g_idx
cp -r "$T/gq" "$T/gq-bad"
$PY - "$T/gq-bad/model.safetensors" qzeros <<'PYEOF'
import json, struct, sys
path, what = sys.argv[1], sys.argv[2]
raw = bytearray(open(path, "rb").read())
n = struct.unpack("<Q", raw[:8])[0]
head = json.loads(raw[8:8 + n])
e = head["model.layers.1.mlp.up_proj.qzeros"]
e["shape"] = [1, e["shape"][0] * e["shape"][1]]  # the same bytes in another shape
text = json.dumps(head, separators=(",", ":")).encode()
text += b" " * (n - len(text))
open(path, "wb").write(raw[:8] + text + raw[8 + n:])
PYEOF
expect 2 "GPTQ qzeros of the wrong shape" "$BIN/qconv" "$T/gq-bad" --to f32 -o "$T/bad.safetensors"
stderr_has "GPTQ qzeros of the wrong shape" "model.layers.1.mlp.up_proj': GPTQ parts"
absent "no output from a lying GPTQ folder" "$T/bad.safetensors"
cp -r "$T/gq" "$T/gq-perm"
$PY - "$T/gq-perm/model.safetensors" <<'PYEOF'
import json, struct, sys
path = sys.argv[1]
raw = bytearray(open(path, "rb").read())
n = struct.unpack("<Q", raw[:8])[0]
head = json.loads(raw[8:8 + n])
b = 8 + n + head["model.layers.0.self_attn.q_proj.g_idx"]["data_offsets"][0]
struct.pack_into("<ii", raw, b, 1, 0)  # inputs 0 and 1 in each other's groups
open(path, "wb").write(raw)
PYEOF
expect 2 "GPTQ with act-order g_idx" "$BIN/qeval" "$T/gq-perm" --tokenizer "$TOK" --text "$EVAL" --windows 1
stderr_has "GPTQ with act-order g_idx" "act-order groups are not supported"
expect 1 "GPTQ layout at 4 bits on 172-wide rows" "$Q" "$M" --data "$TRAIN" --tokens 8192 --gptq -o "$T/gq4" --format hf
stderr_has "GPTQ layout at 4 bits on 172-wide rows" "a multiple of 8 at 4 bits"
absent "no folder after a refused layout" "$T/gq4"

# qconv --calib: the static input scales stored beside int8 weights as compressed-tensors does (W8A8)
expect 0 "qconv --calib" "$BIN/qconv" "$M" --to int8 --calib "$T/c.json" --format hf -o "$T/w8a8"
check "input_activations in quantization_config" $PY -c '
import json, sys
a = json.load(open(sys.argv[1]))["quantization_config"]["config_groups"]["group_0"]["input_activations"]
assert a["num_bits"] == 8 and a["type"] == "int" and a["strategy"] == "tensor" and a["dynamic"] is False, a' "$T/w8a8/config.json"
check "input scales equal the calibration file's" $PY - "$T/w8a8/model.safetensors" "$T/c.json" <<'PYEOF'
import json, struct, sys
raw = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
head = json.loads(raw[8:8 + n])
calib = json.load(open(sys.argv[2]))["tensors"]
seen = 0
for w, e in calib.items():
    mod = w[:-len(".weight")]
    s, z = head[mod + ".input_scale"], head[mod + ".input_zero_point"]
    assert s["dtype"] == "F32" and s["shape"] == [1] and z["dtype"] == "I8" and z["shape"] == [1], (s, z)
    scale = struct.unpack("<f", raw[8 + n + s["data_offsets"][0]:8 + n + s["data_offsets"][1]])[0]
    zero = struct.unpack("<b", raw[8 + n + z["data_offsets"][0]:8 + n + z["data_offsets"][1]])[0]
    assert abs(scale - e["input"]["scale"]) <= 1e-7 * scale and zero == e["input"]["zero_point"], (mod, scale, zero, e)
    assert head[w]["dtype"] == "I8", head[w]
    seen += 1
assert seen == 35, seen
PYEOF
# qeval applies a model's own static input scales: the same scores as --act-calib on its int8 weights
"$BIN/qeval" "$T/w8a8" --tokenizer "$TOK" --text "$EVAL" --windows 16 --ref "$M" --json >"$T/a.json" 2>"$T/err"
check "qeval notes the model's input scales" grep -q "35 linear inputs quantized to int8 with the model's static scales" "$T/err"
"$BIN/qconv" "$M" --to int8 -o "$T/w8.safetensors" 2>/dev/null
"$BIN/qeval" "$T/w8.safetensors" --tokenizer "$TOK" --text "$EVAL" --windows 16 --ref "$M" --act-calib "$T/c.json" --json >"$T/b.json" 2>/dev/null
grep -E '"(kld|ppl|nll)"' "$T/a.json" >"$T/a.txt"
grep -E '"(kld|ppl|nll)"' "$T/b.json" >"$T/b.txt"
check "W8A8 from the model file == --act-calib" cmp "$T/a.txt" "$T/b.txt"
check "... and scores were compared" grep -q kld "$T/a.txt"
expect 1 "qconv --calib into Q8_0 blocks" "$BIN/qconv" "$M" --to q8_0 --calib "$T/c.json" -o "$T/bad.gguf"
stderr_has "qconv --calib into Q8_0 blocks" "not stored in an integer scheme"
absent "no output after --calib into blocks" "$T/bad.gguf"
head -c 200 "$T/c.json" >"$T/cut.json"
expect 2 "qconv --calib truncated" "$BIN/qconv" "$M" --to int8 --calib "$T/cut.json" -o "$T/bad.safetensors"
stderr_has "qconv --calib truncated" "not a qtc calibration file"
absent "no output after a truncated calibration file" "$T/bad.safetensors"

# per-channel ranges (min-max of each input channel) for qeval --act-calib: tighter than one range per tensor
expect 1 "--per-channel with --method kl" "$Q" "$M" --data "$TRAIN" --per-channel --method kl -o "$T/pc.json"
expect 0 "--per-channel" "$Q" "$M" --data "$TRAIN" --tokens 8192 --per-channel -o "$T/pc.json"
expect 0 "per-tensor minmax" "$Q" "$M" --data "$TRAIN" --tokens 8192 -o "$T/pt.json"
check "per-channel file: one scale per input channel" $PY -c '
import json, sys
d = json.load(open(sys.argv[1]))
assert d["granularity"] == "channel"
c = d["tensors"]["model.layers.2.mlp.down_proj.weight"]["input"]["channels"]
assert len(c["scale"]) == len(c["zero_point"]) == len(c["min"]) == len(c["max"]) == 172
for lo, hi, s, z in zip(c["min"], c["max"], c["scale"], c["zero_point"]):
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    assert abs(s - max((hi - lo) / 255, 1.1920929e-07)) <= 1e-6 * s, (lo, hi, s)
    assert -128 <= z <= 127' "$T/pc.json"
kc=$(kld "$T/w8.safetensors" --act-calib "$T/pc.json")
kt=$(kld "$T/w8.safetensors" --act-calib "$T/pt.json")
if awk "BEGIN{exit !($kc < 0.5 * $kt)}"; then ok; else bad "per-channel W8A8 KLD $kc vs per-tensor $kt"; fi
expect 1 "qconv --calib with per-channel ranges" "$BIN/qconv" "$M" --to int8 --calib "$T/pc.json" -o "$T/bad.safetensors"
stderr_has "qconv --calib with per-channel ranges" "per-channel input ranges"
absent "no output after per-channel --calib" "$T/bad.safetensors"

# bad input
printf 'x' >"$T/junk.bin"
expect 2 "not a model" "$Q" "$T/junk.bin" --data "$TRAIN" -o "$T/x.json"
absent "no calibration file after bad input" "$T/x.json"
printf 'hi\n' >"$T/short.txt"
expect 2 "too little text" "$Q" "$M" --data "$T/short.txt" -o "$T/x.json"
stderr_has "too little text" "not one window of 128"
absent "no calibration file after too little text" "$T/x.json"
expect 2 "missing data" "$Q" "$M" --data "$T/none.txt" -o "$T/x.json"
finish
