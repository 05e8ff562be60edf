#!/bin/sh
# --grad-checkpoint (activation checkpointing): qat-train and qlora-train give
# what they give without it, byte for byte: the written model or adapter, and
# every step's loss and gradient norm and every evaluation in --log-json (the
# speed left out). Last line: "checkpoint: N passed, N failed".
set -u
BIN=${QTC_BIN:-bin}
SHARED=${QTC_SHARED:-../shared}
M=$SHARED/models/stories260K/stories260K.bin
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
NAME=checkpoint
. tests/cli/lib.sh
head -n 2000 "$SHARED/data/brown.txt" >"$T/train.txt"
tail -n 200 "$SHARED/data/brown.txt" >"$T/eval.txt"
RUN="--data $T/train.txt --eval $T/eval.txt --eval-windows 4 --steps 4 --batch 4 --ctx 64 --eval-every 2"

# same WHAT OUT_A OUT_B: the outputs (files, or every file of two folders) and the logs agree
same() {
    if [ -d "$2" ]; then # a PEFT folder
        diff -r "$2" "$3" >/dev/null && ok || bad "$1: the outputs differ"
    else
        cmp -s "$2" "$3" && ok || bad "$1: the outputs differ"
    fi
    sed -E 's/,"tokens_per_s":[^,}]*//' "$2.json" >"$T/log.a"
    sed -E 's/,"tokens_per_s":[^,}]*//' "$3.json" >"$T/log.b"
    if [ "$(grep -c '"event":"step"' "$T/log.a")" -eq 4 ] && cmp -s "$T/log.a" "$T/log.b"; then ok; else
        bad "$1: the logs differ: $(diff "$T/log.a" "$T/log.b" | head -n 4)"
    fi
}
# trainer TOOL WHAT EXT FLAGS...: TOOL with FLAGS, without and with --grad-checkpoint
trainer() {
    tool=$1 name=$2 ext=$3
    shift 3
    a=$T/a$ext b=$T/b$ext
    rm -rf "$a" "$b"
    expect 0 "$name" "$BIN/$tool" "$M" $RUN "$@" --log-json "$a.json" -o "$a"
    expect 0 "$name, checkpointed" "$BIN/$tool" "$M" $RUN "$@" --grad-checkpoint --log-json "$b.json" -o "$b"
    same "$name" "$a" "$b"
}

trainer qlora-train "QLoRA on every linear layer, dropout 0.1" "" --method qlora --target all-linear --dropout 0.1
trainer qlora-train "LoRA, dropout 0.2, 2 micro-batches" "" --method lora --dropout 0.2 --grad-accum 2
trainer qlora-train "bottleneck adapters" "" --method adapter
trainer qlora-train "prefix tuning" "" --method prefix --prefix-len 4
trainer qat-train "QAT int4 with observed int8 inputs (distillation)" .safetensors --wbits 4 --abits 8
trainer qat-train "QAT with LSQ" .safetensors --wbits 4 --asym --lsq
trainer qat-train "plain fp32 fine-tuning" .safetensors --wbits 32

finish
