#!/bin/sh
# demo.sh: qconv's main pipeline on stories260K (the llama2.c checkpoint in
# ../shared/models): read it, write it as safetensors, an HF folder and GGUF,
# quantize it to ggml types, integer groups and NF4, and print what each
# quantization lost. `make demo` runs it; so does the test suite.
# Usage: examples/demo.sh [OUTDIR]   (env: QTC_BIN, QTC_SHARED)
set -eu
BIN=${QTC_BIN:-bin}
SHARED=${QTC_SHARED:-../shared}
MODEL=$SHARED/models/stories260K/stories260K.bin
OUT=${1:-demo-out}
mkdir -p "$OUT"

echo "== the model"
"$BIN/qconv" "$MODEL" --inspect | head -3

echo "== formats: llama2.c -> safetensors -> HF folder -> GGUF (f32, bit for bit)"
"$BIN/qconv" "$MODEL" -o "$OUT/stories260K.safetensors" 2>/dev/null
"$BIN/qconv" "$OUT/stories260K.safetensors" -o "$OUT/stories260K-hf/" 2>/dev/null
"$BIN/qconv" "$OUT/stories260K-hf" -o "$OUT/stories260K-f32.gguf" 2>/dev/null
ls -l "$OUT"

echo "== quantization: bits per weight (whole model, f32 embeddings and norms included) and the"
echo "   relative RMS error of the weights. K-quants need rows of 256: this model's rows are 64"
echo "   and 172 wide, so they fall back per tensor as llama.cpp does (Q4_K->Q5_0, Q6_K->Q8_0)."
printf '%-16s %-22s %s\n' "scheme" "file" "summary"
for t in q8_0 q6_k q5_1 q4_0 q4_k; do
    "$BIN/qconv" "$MODEL" --to "$t" -o "$OUT/stories260K-$t.gguf" 2>"$OUT/$t.log"
    printf '%-16s %-22s %s\n' "$t" "stories260K-$t.gguf" "$(tail -n 1 "$OUT/$t.log")"
done
for t in int8 int4-g32 int4-g32-asym nf4; do
    "$BIN/qconv" "$MODEL" --to "$t" -o "$OUT/stories260K-$t.safetensors" 2>"$OUT/$t.log"
    printf '%-16s %-22s %s\n' "$t" "stories260K-$t.safetensors" "$(tail -n 1 "$OUT/$t.log")"
done

echo "== one tensor in detail (Q4_0; the 172-wide down projection falls back to f16)"
grep -E "layers.0.(self_attn.q_proj|mlp.down_proj)" "$OUT/q4_0.log"
echo "demo: done, outputs in $OUT/"
