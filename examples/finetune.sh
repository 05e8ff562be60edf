#!/bin/sh
# finetune.sh: adapt stories260K (children's stories) to the Brown corpus (adult
# prose) with each of qlora-train's methods, then merge the LoRA and QLoRA
# adapters, re-quantize and score: the fine-tuning pipeline end to end.
# The Brown corpus's last 3000 lines are held out for evaluation.
# Usage: examples/finetune.sh [OUTDIR]
#   env: QTC_BIN, QTC_SHARED, STEPS (default 20), BATCH (default 8), WINDOWS (held-out
#   windows of 128 scored, default 64); the issue's table used STEPS=500 BATCH=16
#   WINDOWS=all (`make bench-tables` runs that).
set -eu
BIN=${QTC_BIN:-bin}
SHARED=${QTC_SHARED:-../shared}
MODEL=$SHARED/models/stories260K/stories260K.bin
OUT=${1:-finetune-out}
STEPS=${STEPS:-20}
BATCH=${BATCH:-8}
WINDOWS=${WINDOWS:-64}
[ "$WINDOWS" = all ] && WINDOWS=1000000
mkdir -p "$OUT"
head -n -3000 "$SHARED/data/brown.txt" >"$OUT/brown-train.txt"
tail -n 3000 "$SHARED/data/brown.txt" >"$OUT/brown-eval.txt"
# tokenize the training text once; every run reads the token file
"$BIN/qeval" "$MODEL" --text "$OUT/brown-train.txt" --windows 1 --save-tokens "$OUT/brown-train.tok" >/dev/null 2>&1

score() { # MODEL [ARGS]: perplexity on the held-out lines (ctx 128, every window)
    m=$1
    shift
    "$BIN/qeval" "$m" --text "$OUT/brown-eval.txt" --windows "$WINDOWS" --tokenizer "$SHARED/models/stories260K/tok512.bin" "$@" 2>/dev/null
}

echo "== fine-tuning on brown.txt: $STEPS steps of $BATCH x 128 tokens, LoRA rank 8 alpha 16 on every linear layer"
printf '%-9s %-6s %12s %12s %12s %10s %9s\n' method base "eval before" "eval after" "ppl after" "trained" "tokens/s"
for method in lora qlora adapter prefix; do
    lr=1e-3
    [ "$method" = prefix ] && lr=1e-2
    "$BIN/qlora-train" "$MODEL" --data "$OUT/brown-train.tok" --eval "$OUT/brown-eval.txt" --eval-windows "$WINDOWS" \
        --method "$method" --target all-linear --rank 8 --steps "$STEPS" --batch "$BATCH" --ctx 128 --lr "$lr" \
        -o "$OUT/$method" 2>"$OUT/$method.log"
    base=$(sed -n 's/.*linear base \([a-z0-9-]*\) .*/\1/p' "$OUT/$method.log")
    weights=$(sed -n 's/.*, \([0-9]*\) trainable weights.*/\1/p' "$OUT/$method.log")
    before=$(sed -n 's/.*step 0 eval: loss \([0-9.]*\),.*/\1/p' "$OUT/$method.log")
    after=$(sed -n "s/.*step $STEPS eval: loss \([0-9.]*\),.*/\1/p" "$OUT/$method.log")
    ppl=$(sed -n "s/.*step $STEPS eval: loss [0-9.]*, perplexity \([0-9.]*\) .*/\1/p" "$OUT/$method.log")
    tps=$(sed -n "s/.*step $STEPS\/$STEPS .* \([0-9]*\) tokens\/s.*/\1/p" "$OUT/$method.log")
    printf '%-9s %-6s %12s %12s %12s %10s %9s\n' "$method" "$base" "$before" "$after" "$ppl" "$weights" "$tps"
done

echo "== merged and re-quantized (perplexity on the held-out lines; KLD against the adapted f32 model)"
"$BIN/merge" "$MODEL" "$OUT/lora" -o "$OUT/lora-merged.safetensors" 2>/dev/null
"$BIN/qconv" "$OUT/lora-merged.safetensors" --to q8_0 -o "$OUT/lora-merged-q8_0.gguf" 2>/dev/null
"$BIN/qconv" "$OUT/lora-merged.safetensors" --to int8 -o "$OUT/lora-merged-int8.safetensors" 2>/dev/null
"$BIN/qconv" "$MODEL" --to nf4 -o "$OUT/base-nf4.safetensors" 2>/dev/null
"$BIN/merge" "$OUT/base-nf4.safetensors" "$OUT/qlora" --to f32 -o "$OUT/qlora-merged.safetensors" 2>/dev/null
"$BIN/merge" "$OUT/base-nf4.safetensors" "$OUT/qlora" -o "$OUT/qlora-merged-nf4.safetensors" 2>/dev/null
"$BIN/merge" "$OUT/base-nf4.safetensors" "$OUT/qlora" --to q8_0 -o "$OUT/qlora-merged-q8_0.gguf" 2>/dev/null
printf '%-36s %s\n' "model" "score"
for m in lora-merged.safetensors lora-merged-q8_0.gguf lora-merged-int8.safetensors; do
    printf '%-36s %s\n' "$m" "$(score "$OUT/$m" --ref "$OUT/lora-merged.safetensors" | tr '\n' ' ')"
done
for m in qlora-merged.safetensors qlora-merged-nf4.safetensors qlora-merged-q8_0.gguf; do
    printf '%-36s %s\n' "$m" "$(score "$OUT/$m" --ref "$OUT/qlora-merged.safetensors" | tr '\n' ' ')"
done
printf '%-36s %s\n' "stories260K (no fine-tuning)" "$(score "$MODEL")"
