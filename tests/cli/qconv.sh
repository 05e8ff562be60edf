#!/bin/sh
# qconv's command line: exit codes and messages, every conversion of stories260K,
# pipes and zstd, determinism across thread counts, hostile and NaN inputs, and
# the outputs checked by independent readers (numpy; @huggingface/gguf).
# Last line: "qconv: N passed, N failed". Env: QTC_BIN, QTC_SHARED.
set -u
BIN=${QTC_BIN:-bin}
SHARED=${QTC_SHARED:-../shared}
Q="$BIN/qconv"
M=$SHARED/models
L2C=$M/stories260K/stories260K.bin
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
NAME=qconv
. tests/cli/lib.sh
no_temps() { if ls "$T" | grep -q 'tmp-'; then bad "$1: temporary files left: $(ls "$T" | grep tmp-)"; else ok; fi; }

# --- usage ---------------------------------------------------------------------
expect 0 "--help" "$Q" --help
if grep -q "usage: qconv" "$T/out"; then ok; else bad "--help prints usage"; fi
expect 1 "no arguments" "$Q"
expect 1 "unknown --to" "$Q" "$L2C" --to q3_x -o "$T/x.gguf"
expect 1 "no output" "$Q" "$L2C"
expect 1 "format not guessable" "$Q" "$L2C" -o "$T/x.bin"
expect 1 "ggml blocks in safetensors" "$Q" "$L2C" --to q8_0 -o "$T/x.safetensors"
stderr_has "ggml blocks in safetensors" "only be stored in GGUF"
absent "usage errors write nothing" "$T/x.safetensors"

# --- bad input -------------------------------------------------------------------
expect 2 "missing input" "$Q" "$T/none.gguf" -o "$T/y.gguf"
stderr_has "missing input" "none.gguf"
printf 'not a model at all' >"$T/junk"
expect 2 "unknown format" "$Q" "$T/junk" -o "$T/y.gguf"
stderr_has "unknown format" "unknown model format"
head -c 500000 "$M/stories260K-hf/model.safetensors" >"$T/cut.safetensors"
expect 2 "truncated safetensors" "$Q" "$T/cut.safetensors" --to f16 -o "$T/y.safetensors"
stderr_has "truncated safetensors" "cut.safetensors"
absent "truncated input leaves no output" "$T/y.safetensors"
no_temps "truncated input"
# a real model with one NaN weight: exit 4 naming tensor and element, nothing written
"$Q" "$L2C" -o "$T/good.safetensors" 2>/dev/null
python3 - "$T/good.safetensors" "$T/nan.safetensors" <<'PY'
import json, struct, sys
raw = bytearray(open(sys.argv[1], "rb").read())
n = struct.unpack("<Q", raw[:8])[0]
t = json.loads(raw[8:8 + n])["model.layers.1.mlp.up_proj.weight"]
at = 8 + n + t["data_offsets"][0] + 4 * 40
raw[at:at + 4] = struct.pack("<f", float("nan"))
open(sys.argv[2], "wb").write(raw)
PY
for t in q8_0 f16; do
    expect 4 "NaN weights to $t" "$Q" "$T/nan.safetensors" --to $t -o "$T/nan.gguf"
    stderr_has "NaN weights to $t" "layers.1.mlp.up_proj.weight': element 40 is NaN"
    absent "NaN leaves no output ($t)" "$T/nan.gguf"
done
expect 3 "unwritable output" "$Q" "$L2C" -o "$T/no/such/dir/x.gguf"

# --- every conversion of stories260K ------------------------------------------------
for t in f32 f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1 q4_k q5_k q6_k; do
    expect 0 "--to $t" "$Q" "$L2C" --to "$t" -o "$T/s-$t.gguf"
    expect 0 "inspect $t" "$Q" "$T/s-$t.gguf" --inspect --json
done
"$Q" "$L2C" --to q4_0 -o "$T/q4.gguf" 2>"$T/err"
stderr_has "fallback reported" "mlp.down_proj.weight.*f16.*q4_0 asked; rows do not split"
expect 0 "to safetensors" "$Q" "$L2C" -o "$T/s.safetensors"
expect 0 "to an HF folder" "$Q" "$L2C" --to bf16 -o "$T/hf/"
check "HF folder has config and weights" test -s "$T/hf/config.json" -a -s "$T/hf/model.safetensors"
expect 0 "from the HF folder" "$Q" "$T/hf" --to f16 -o "$T/from-hf.gguf"
expect 0 "from llama.cpp's own GGUF" "$Q" "$M/tiny-random/llama-2-tiny-random.gguf" --to q8_0 -o "$T/tiny-q8.gguf"
stderr_has "tiny-random falls back" "token_embd\|embed_tokens"

# --- pipes, zstd, determinism ------------------------------------------------------------
TOK=$M/stories260K/tok512.bin
cat "$L2C" | "$Q" - --tokenizer "$TOK" -o - >"$T/pipe.safetensors" 2>/dev/null
check "pipe output equals file output" cmp "$T/pipe.safetensors" "$T/s.safetensors"
"$Q" "$L2C" -o - 2>/dev/null | "$Q" - --to q8_0 -o "$T/pipe-q8.gguf" 2>/dev/null
"$Q" "$T/s.safetensors" --to q8_0 -o "$T/file-q8.gguf" 2>/dev/null
check "pipeline into GGUF" cmp "$T/pipe-q8.gguf" "$T/file-q8.gguf"
expect 0 "zstd output" "$Q" "$L2C" --to q8_0 -o "$T/z.gguf.zst"
"$Q" "$T/z.gguf.zst" -o "$T/unz.gguf" 2>/dev/null
check "zstd round trip" cmp "$T/unz.gguf" "$T/s-q8_0.gguf"
for t in q8_0 q4_k q5_1; do
    "$Q" "$L2C" --to "$t" --threads 1 -o "$T/j1.gguf" 2>/dev/null
    "$Q" "$L2C" --to "$t" --threads 2 -o "$T/j2.gguf" 2>/dev/null
    check "$t does not depend on threads" cmp "$T/j1.gguf" "$T/j2.gguf"
    check "$t is deterministic" cmp "$T/j1.gguf" "$T/s-$t.gguf"
done
"$Q" "$L2C" --to q4_0 --tensor-type 'embed_tokens=q8_0' --tensor-type 'norm=f16' -o "$T/mixed.gguf" 2>/dev/null
"$Q" "$T/mixed.gguf" --inspect >"$T/out" 2>&1
if grep -q "model.embed_tokens.weight *q8_0" "$T/out" && grep -q "model.norm.weight *f16" "$T/out" &&
    grep -q "q_proj.weight *q4_0" "$T/out"; then ok; else bad "--tensor-type rules"; fi

# --- integer and NF4 schemes (safetensors, HF folders) ---------------------------------------
for t in int8 int8-tensor-asym int4-g32 int4-g32-asym int4-g128 int3-g32 int2-g64-asym nf4 nf4-single; do
    expect 0 "--to $t" "$Q" "$L2C" --to "$t" -o "$T/s-$t.safetensors"
    expect 0 "$t read back" "$Q" "$T/s-$t.safetensors" --to f32 -o "$T/deq-$t.safetensors"
done
expect 1 "schemes cannot go to GGUF" "$Q" "$L2C" --to int4-g32 -o "$T/x.gguf"
stderr_has "schemes cannot go to GGUF" "GGUF cannot hold int4-g32"
expect 0 "int4 HF folder" "$Q" "$L2C" --to int4-g32 -o "$T/hf-int4/"
check "HF config carries quantization_config" python3 -c "
import json; q=json.load(open('$T/hf-int4/config.json'))['quantization_config']
assert q['quant_method']=='compressed-tensors' and q['config_groups']['group_0']['weights']['group_size']==32"
"$Q" "$T/hf-int4" --inspect >"$T/out" 2>&1
if grep -q "down_proj.weight *int4-g32" "$T/out"; then ok; else bad "inspect shows the scheme"; fi
"$Q" "$T/s-nf4.safetensors" -o "$T/nf4-copy.safetensors" 2>"$T/err"
stderr_has "a quantized layout is copied exactly" "total: .* rel rms err 0.000e+00"

# --- machine-readable output ------------------------------------------------------------
expect 0 "--json summary" "$Q" "$L2C" --to q8_0 -o "$T/j.gguf" --json --log-json "$T/log.jsonl"
check "--json parses" python3 -c "import json,sys; d=json.load(open('$T/out')); assert 8.5 < d['bits_per_weight'] < 11 and d['rel_rms_err'] < 0.01"
check "--log-json lines parse" python3 -c "
import json
ev=[json.loads(l) for l in open('$T/log.jsonl')]
assert [e['event'] for e in ev].count('tensor') == 47 and ev[-1]['event'] == 'summary'"

# --- independent readers -----------------------------------------------------------------
NUMPY_PY=
for py in python3 /usr/bin/python3; do
    if "$py" -c "import numpy" 2>/dev/null; then NUMPY_PY=$py; break; fi
done
if [ -n "$NUMPY_PY" ]; then
    check "numpy reads the safetensors and finds the checkpoint's values" "$NUMPY_PY" tests/oracle/safetensors_oracle.py "$T/s.safetensors" "$L2C"
    check "numpy: the same through GGUF and back" sh -c "'$Q' '$T/s-f32.gguf' -o '$T/back.safetensors' 2>/dev/null && '$NUMPY_PY' tests/oracle/safetensors_oracle.py '$T/back.safetensors' '$L2C'"
    check "numpy: f16 values" "$NUMPY_PY" tests/oracle/safetensors_oracle.py "$T/hf/model.safetensors" "$L2C"
    for t in int8 int8-tensor-asym int4-g32 int4-g32-asym int4-g128 int3-g32 int2-g64-asym nf4 nf4-single; do
        check "numpy decodes the $t layout as qtc does" "$NUMPY_PY" tests/oracle/qlayout_oracle.py "$T/s-$t.safetensors" "$T/deq-$t.safetensors"
    done
else
    echo "skip: numpy not installed" >&2
    skip=$((skip + 12))
fi
if [ -d tests/oracle/node_modules/@huggingface/gguf ] && command -v node >/dev/null; then
    for t in f32:0 f16:1 bf16:32 q8_0:7 q4_0:2 q4_1:3 q5_0:8 q5_1:9 q4_k:8 q5_k:9 q6_k:7; do
        name=${t%%:*}
        ft=${t#*:}
        check "@huggingface/gguf reads the $name file" sh -c "'$Q' '$T/s-$name.gguf' --inspect --json | node tests/oracle/gguf_oracle.mjs '$T/s-$name.gguf' $ft"
    done
    check "@huggingface/gguf reads the GGUF made from the HF folder" sh -c "'$Q' '$M/stories260K-hf' --to q8_0 -o '$T/hf-q8.gguf' 2>/dev/null && '$Q' '$T/hf-q8.gguf' --inspect --json | node tests/oracle/gguf_oracle.mjs '$T/hf-q8.gguf' 7"
    check "@huggingface/gguf reads the tiny-random conversion" sh -c "'$Q' '$T/tiny-q8.gguf' --inspect --json | node tests/oracle/gguf_oracle.mjs '$T/tiny-q8.gguf'"
else
    echo "skip: @huggingface/gguf not installed (npm install --prefix tests/oracle)" >&2
    skip=$((skip + 13))
fi
no_temps "after all runs"

finish
