#!/bin/sh
# calibrate.sh: qcalib on stories260K: calibrated on tinystories-train.txt,
# scored on tinystories-eval.txt against the float model (KLD, perplexity):
# weights at int4 per group of 32, int4 per channel and int3 per group of 32
# by round to nearest, imatrix-weighted rounding, AWQ and GPTQ; then W8A8
# (int8 weights per channel, int8 inputs with static ranges) for each range
# method, plain and after SmoothQuant.
# Usage: examples/calibrate.sh [OUTDIR]
#   env: QTC_BIN, QTC_SHARED, TOKENS (calibration tokens, default 16384; 0: all),
#   WINDOWS (eval windows of 128, default 64; all: every window), SCHEMES (default
#   int4-g32), METHODS (default minmax percentile), GGML_TYPES (default q4_0). `make bench-tables`
#   runs the whole table: TOKENS=0 WINDOWS=all SCHEMES="int4-g32 int4 int3-g32"
#   METHODS="minmax percentile mse kl" GGML_TYPES="q4_0 q4_1 q5_0".
set -eu
BIN=${QTC_BIN:-bin}
SHARED=${QTC_SHARED:-../shared}
MODEL=$SHARED/models/stories260K/stories260K.bin
TOK=$SHARED/models/stories260K/tok512.bin
TRAIN=$SHARED/data/tinystories-train.txt
EVAL=$SHARED/data/tinystories-eval.txt
OUT=${1:-calibrate-out}
TOKENS=${TOKENS:-16384}
WINDOWS=${WINDOWS:-64}
SCHEMES=${SCHEMES:-int4-g32}
METHODS=${METHODS:-minmax percentile}
GGML_TYPES=${GGML_TYPES:-q4_0}
[ "$WINDOWS" = all ] && WINDOWS=1000000
mkdir -p "$OUT"

score() { # MODEL [qeval options]: "KLD k  ppl p" against the float model
    m=$1
    shift
    "$BIN/qeval" "$m" --tokenizer "$TOK" --text "$EVAL" --windows "$WINDOWS" --ref "$MODEL" --json "$@" 2>/dev/null |
        awk -F'[:,]' '/"kld":/ {k = $2} /"ppl":/ {p = $2} END {printf "KLD %.4f  ppl %.3f", k, p}'
}

# the calibration text tokenized once (a qtc token file; its sha256 is what the outputs record)
"$BIN/qeval" "$MODEL" --text "$TRAIN" --windows 1 --save-tokens "$OUT/train.tok" >/dev/null 2>&1
TRAIN=$OUT/train.tok
"$BIN/qcalib" "$MODEL" --data "$TRAIN" --tokens "$TOKENS" --imatrix "$OUT/imatrix.gguf" 2>/dev/null
echo "== weights (calibration: $([ "$TOKENS" = 0 ] && echo all the || echo "$TOKENS") tokens of tinystories-train): KLD and perplexity on tinystories-eval"
printf '%-10s %-24s %-24s %-24s %-24s %-24s\n' scheme "round to nearest" "imatrix-weighted" "AWQ (clipped)" "GPTQ (act-order)" \
    "GPTQ, not sequential"
for s in $SCHEMES; do
    bits=${s#int}; bits=${bits%%-*}
    case $s in *-g*) group=${s##*-g} ;; *) group=0 ;; esac
    "$BIN/qconv" "$MODEL" --to "$s" -o "$OUT/rtn-$s.safetensors" 2>/dev/null
    "$BIN/qconv" "$MODEL" --to "$s" --imatrix "$OUT/imatrix.gguf" -o "$OUT/imx-$s.safetensors" 2>/dev/null
    "$BIN/qcalib" "$MODEL" --data "$TRAIN" --tokens "$TOKENS" --awq --wbits "$bits" --group "$group" -o "$OUT/awq-$s.safetensors" 2>/dev/null
    "$BIN/qcalib" "$MODEL" --data "$TRAIN" --tokens "$TOKENS" --gptq --act-order --wbits "$bits" --group "$group" \
        -o "$OUT/gptq-$s.safetensors" 2>/dev/null
    "$BIN/qcalib" "$MODEL" --data "$TRAIN" --tokens "$TOKENS" --gptq --act-order --no-sequential --wbits "$bits" \
        --group "$group" -o "$OUT/gptq-ns-$s.safetensors" 2>/dev/null
    printf '%-10s %-24s %-24s %-24s %-24s %-24s\n' "$s" "$(score "$OUT/rtn-$s.safetensors")" "$(score "$OUT/imx-$s.safetensors")" \
        "$(score "$OUT/awq-$s.safetensors")" "$(score "$OUT/gptq-$s.safetensors")" "$(score "$OUT/gptq-ns-$s.safetensors")"
done

echo "== ggml block types (GGUF), as llama-quantize rounds them without and with the imatrix"
printf '%-10s %-24s %-24s\n' type "round to nearest" "imatrix-weighted"
for t in $GGML_TYPES; do
    "$BIN/qconv" "$MODEL" --to "$t" -o "$OUT/rtn-$t.gguf" 2>/dev/null
    "$BIN/qconv" "$MODEL" --to "$t" --imatrix "$OUT/imatrix.gguf" -o "$OUT/imx-$t.gguf" 2>/dev/null
    printf '%-10s %-24s %-24s\n' "$t" "$(score "$OUT/rtn-$t.gguf")" "$(score "$OUT/imx-$t.gguf")"
done

echo "== W8A8: int8 weights per channel, int8 inputs per tensor with static ranges: KLD and perplexity"
"$BIN/qconv" "$MODEL" --to int8 -o "$OUT/w8.safetensors" 2>/dev/null
printf '%-22s %-24s\n' "int8 weights only" "$(score "$OUT/w8.safetensors")"
printf '%-22s %-24s %-24s\n' "range method" "plain" "SmoothQuant (alpha 0.5)"
for m in $METHODS; do
    "$BIN/qcalib" "$MODEL" --data "$TRAIN" --tokens "$TOKENS" --method "$m" -o "$OUT/$m.json" 2>/dev/null
    "$BIN/qcalib" "$MODEL" --data "$TRAIN" --tokens "$TOKENS" --method "$m" --smoothquant --ranges "$OUT/sq-$m.json" \
        -o "$OUT/sq-$m.safetensors" 2>/dev/null
    printf '%-22s %-24s %-24s\n' "$m" "$(score "$OUT/w8.safetensors" --act-calib "$OUT/$m.json")" \
        "$(score "$OUT/sq-$m.safetensors" --act-calib "$OUT/sq-$m.json")"
done
