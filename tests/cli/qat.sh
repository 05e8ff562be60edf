#!/bin/sh
# qat-train's command line: a short QAT run whose exported model scores in qeval
# exactly what training reported, plain and frozen-layer fine-tuning, and bad
# input. Last line: "qat: N passed, N failed".
set -u
BIN=${QTC_BIN:-bin}
SHARED=${QTC_SHARED:-../shared}
Q="$BIN/qat-train"
E="$BIN/qeval"
M=$SHARED/models/stories260K/stories260K.bin
TOK=$SHARED/models/stories260K/tok512.bin
TRAIN=$SHARED/data/tinystories-train.txt
EVAL=$SHARED/data/tinystories-eval.txt
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
NAME=qat
. tests/cli/lib.sh

# scores_as_trained WHAT STEP MODEL WINDOWS: qeval's perplexity and KLD of the
# exported MODEL (ctx 64) equal what training's evaluation at STEP printed to $T/err
scores_as_trained() {
    grep "step $2 eval" "$T/err" | sed -E 's/.*perplexity ([0-9.]+) .*KLD ([0-9.]+).*/\1 \2/' >"$T/trained"
    "$E" "$3" --tokenizer "$TOK" --text "$EVAL" --ctx 64 --windows "$4" --ref "$M" --json >"$T/out" 2>/dev/null
    python3 -c "
import json; d=json.load(open('$T/out')); ppl, kld = open('$T/trained').read().split()
assert '%.4f' % d['ppl'] == ppl and '%.5f' % d['kld'] == kld, (d['ppl'], d['kld'], ppl, kld)" 2>"$T/err" && ok ||
        bad "$1 scores what training reported: $(cat "$T/err")"
}

expect 0 "--help" "$Q" --help
expect 1 "no data" "$Q" "$M" -o "$T/x.safetensors"
expect 1 "bad bits" "$Q" "$M" --data "$TRAIN" --wbits 9 -o "$T/x.safetensors"

# QAT: int4 groups of 32, distillation; the exported model scores what training reported
expect 0 "QAT run" "$Q" "$M" --data "$TRAIN" --eval "$EVAL" --eval-windows 8 --steps 12 --batch 4 --ctx 64 \
    --log-json "$T/log.jsonl" --plot "$T/curves.svg" -o "$T/qat.safetensors"
stderr_has "QAT run" "fake quantization int4-g32, loss KL divergence"
scores_as_trained "the exported model" 12 "$T/qat.safetensors" 8
"$BIN/qconv" "$T/qat.safetensors" --inspect >"$T/out" 2>&1
stdout_has "exported in the trained scheme" "q_proj.weight *int4-g32"
check "--plot draws the training loss and the evaluations" python3 -c "
import xml.etree.ElementTree as ET
root = ET.parse('$T/curves.svg').getroot()
lines = [e for e in root.iter() if e.tag.endswith('polyline')]
assert len(lines) == 2 and len(lines[0].get('points').split()) == 12 and len(lines[1].get('points').split()) == 2"
check "--log-json events" python3 -c "
import json; ev=[json.loads(l) for l in open('$T/log.jsonl')]
assert [e['event'] for e in ev].count('step') == 12 and [e['event'] for e in ev].count('eval') == 2"

# LSQ: learned scales and zero points, exported as learned: qeval scores what training reported
expect 0 "LSQ run" "$Q" "$M" --data "$TRAIN" --eval "$EVAL" --eval-windows 6 --lsq --asym --steps 8 --batch 4 --ctx 64 \
    -o "$T/lsq.safetensors"
stderr_has "LSQ run" "int4-g32-asym, learned scales"
scores_as_trained "the LSQ model" 8 "$T/lsq.safetensors" 6
expect 1 "--lsq with checkpoints" "$Q" "$M" --data "$TRAIN" --lsq --save-every 2 --steps 2 -o "$T/x.safetensors"

# W4A8: activations fake-quantized too (per tensor from the observer, or per token)
expect 0 "W4A8 per tensor" "$Q" "$M" --data "$TRAIN" --eval "$EVAL" --eval-windows 4 --abits 8 --observer-steps 2 \
    --steps 4 --batch 2 --ctx 32 -o "$T/w4a8.safetensors"
stderr_has "W4A8 per tensor" "int4-g32 + int8 inputs per tensor"
python3 -c "
import re; k=[float(x) for x in re.findall(r'KLD ([0-9.]+)', open('$T/err').read())]
assert len(k) == 2 and 0 < k[0] < 1, k" 2>"$T/py" && ok || bad "W4A8 evaluations are sane: $(cat "$T/py")"
expect 0 "W4A8 per token" "$Q" "$M" --data "$TRAIN" --abits 8 --act-per-token --steps 2 --batch 2 --ctx 32 -o "$T/w4a8t.safetensors"
# W4A8 with ranges from qcalib: before training, the student is exactly qconv's int4-g32 model with
# its inputs quantized by the calibration file, so its first evaluation is what qeval --act-calib says
"$BIN/qcalib" "$M" --data "$TRAIN" --tokens 4096 --method percentile -o "$T/calib.json" 2>/dev/null
expect 0 "W4A8 with calibrated ranges" "$Q" "$M" --data "$TRAIN" --eval "$EVAL" --eval-windows 4 --ctx 64 --abits 8 \
    --calib "$T/calib.json" --steps 2 --batch 2 -o "$T/w4a8c.safetensors"
stderr_has "W4A8 with calibrated ranges" "int8 inputs per tensor (calibrated)"
want=$(grep "step 0 eval" "$T/err" | sed -E 's/.*perplexity ([0-9.]+) .*/\1/')
"$BIN/qconv" "$M" --to int4-g32 -o "$T/int4.safetensors" 2>/dev/null
got=$("$E" "$T/int4.safetensors" --tokenizer "$TOK" --act-calib "$T/calib.json" --text "$EVAL" --ctx 64 --windows 4 2>/dev/null | sed -E 's/perplexity ([0-9.]+) .*/\1/')
[ -n "$want" ] && [ "$want" = "$got" ] && ok || bad "calibrated W4A8 starts at $want, qeval --act-calib says $got"
expect 1 "--calib without --abits" "$Q" "$M" --data "$TRAIN" --calib "$T/calib.json" --steps 1 -o "$T/x.safetensors"
expect 1 "--abits needs quantized weights" "$Q" "$M" --data "$TRAIN" --wbits 32 --abits 8 --steps 1 -o "$T/x.safetensors"

# a run stopped at a checkpoint and resumed ends where an uninterrupted run does
common="--data $TRAIN --steps 6 --batch 2 --ctx 32 --lr 2e-3 --seed 5"
expect 0 "uninterrupted run" "$Q" "$M" $common -o "$T/straight.safetensors"
expect 0 "run stopped at step 3" "$Q" "$M" $common --save-every 2 --stop-after 3 --checkpoint "$T/ck" -o "$T/resumed.safetensors"
stderr_has "run stopped at step 3" "stopped after step 3; continue with --resume"
absent "a stopped run writes no output" "$T/resumed.safetensors"
expect 0 "resumed run" "$Q" "$M" $common --resume "$T/ck" -o "$T/resumed.safetensors"
stderr_has "resumed run" "resuming .*after step 3"
check "resumed output equals the uninterrupted one" cmp "$T/straight.safetensors" "$T/resumed.safetensors"
expect 0 "a checkpoint is a model" "$BIN/qconv" "$T/ck/checkpoint.safetensors" --inspect

# data-free: the float model writes the training text (seeded: twice the same output)
expect 0 "data-free QAT" "$Q" "$M" --data-free 600 --steps 3 --batch 2 --ctx 32 -o "$T/df1.safetensors"
stderr_has "data-free QAT" "the float model wrote 627 tokens of training data (19 sequences)"
"$Q" "$M" --data-free 600 --steps 3 --batch 2 --ctx 32 -o "$T/df2.safetensors" 2>/dev/null
check "data-free runs repeat" cmp "$T/df1.safetensors" "$T/df2.safetensors"
expect 1 "data and data-free together" "$Q" "$M" --data "$TRAIN" --data-free 100 -o "$T/x.safetensors"

# plain fine-tuning with frozen embeddings: the embedding is unchanged, the rest moves
expect 0 "frozen-layer fine-tuning" "$Q" "$M" --data "$TRAIN" --wbits 32 --freeze embed_tokens --steps 5 --batch 2 \
    --ctx 32 --lr 1e-3 -o "$T/ft.safetensors"
stderr_has "frozen-layer fine-tuning" "loss cross-entropy, 46 of 47 tensors trained"
"$BIN/qconv" "$M" -o "$T/base.safetensors" 2>/dev/null
check "frozen tensors stay, trained ones move" python3 -c "
import json, struct
def load(p):
    b=open(p,'rb').read(); n=struct.unpack('<Q',b[:8])[0]; h=json.loads(b[8:8+n]); h.pop('__metadata__',None)
    return {k: b[8+n+v['data_offsets'][0]:8+n+v['data_offsets'][1]] for k,v in h.items()}
a=load('$T/base.safetensors'); b=load('$T/ft.safetensors')
assert a['model.embed_tokens.weight'] == b['model.embed_tokens.weight']
assert a['model.layers.0.self_attn.q_proj.weight'] != b['model.layers.0.self_attn.q_proj.weight']"
expect 1 "everything frozen" "$Q" "$M" --data "$TRAIN" --wbits 32 --freeze . --steps 2 -o "$T/x.safetensors"
stderr_has "everything frozen" "no parameter to train"
expect 1 "schemes cannot go to GGUF" "$Q" "$M" --data "$TRAIN" --steps 1 --batch 1 --ctx 16 -o "$T/x.gguf"
absent "no output on failure" "$T/x.gguf"
# divergence: exit 4, no output model, the last checkpoint kept
expect 4 "divergence stops the run" "$Q" "$M" --data "$TRAIN" --wbits 32 --ce --steps 6 --batch 2 --ctx 32 --lr 1e30 \
    --warmup 0 --save-every 1 --checkpoint "$T/nanck" -o "$T/nan.safetensors"
stderr_has "divergence stops the run" "step 2: the loss is NaN"
absent "divergence leaves no output" "$T/nan.safetensors"
check "the checkpoint before the NaN is kept" test -s "$T/nanck/checkpoint.safetensors"

printf 'tiny\n' >"$T/tiny.txt"
expect 2 "too little data" "$Q" "$M" --data "$T/tiny.txt" --steps 2 -o "$T/x.safetensors"
stderr_has "too little data" "not one window"

# --- PyTorch replays the same fine-tuning (model, batches, AdamW, clipping, schedule)
TORCH_PY=
for py in python3 /usr/bin/python3; do
    if "$py" -c "import torch, numpy" 2>/dev/null; then TORCH_PY=$py; break; fi
done
if [ -n "$TORCH_PY" ]; then
    "$BIN/qconv" "$M" -o "$T/or.safetensors" 2>/dev/null
    "$E" "$T/or.safetensors" --text "$EVAL" --windows 2 --save-tokens "$T/or.tok" >/dev/null 2>&1
    expect 0 "fine-tuning for the PyTorch replay" "$Q" "$T/or.safetensors" --data "$T/or.tok" --wbits 32 --ce \
        --steps 10 --batch 4 --ctx 64 --lr 3e-3 --seed 7 --log-json "$T/or.jsonl" -o "$T/or-out.safetensors"
    check "PyTorch's losses match qat-train's, step by step" "$TORCH_PY" tests/oracle/train_oracle.py \
        "$T/or.safetensors" "$T/or.tok" "$T/or.jsonl" 10 4 64 3e-3 7
    check "...and a replay with another learning rate does not" sh -c "! '$TORCH_PY' tests/oracle/train_oracle.py \
        '$T/or.safetensors' '$T/or.tok' '$T/or.jsonl' 10 4 64 3.3e-3 7"
    expect 0 "the same fine-tuning with --grad-checkpoint" "$Q" "$T/or.safetensors" --data "$T/or.tok" --wbits 32 --ce \
        --steps 10 --batch 4 --ctx 64 --lr 3e-3 --seed 7 --grad-checkpoint --log-json "$T/orc.jsonl" -o "$T/orc-out.safetensors"
    check "PyTorch's losses match qat-train's with --grad-checkpoint" "$TORCH_PY" tests/oracle/train_oracle.py \
        "$T/or.safetensors" "$T/or.tok" "$T/orc.jsonl" 10 4 64 3e-3 7
    expect 0 "int4-g32 QAT for the PyTorch replay" "$Q" "$T/or.safetensors" --data "$T/or.tok" --wbits 4 --group 32 --ce \
        --steps 2 --batch 8 --ctx 64 --lr 1e-3 --seed 7 --log-json "$T/or4.jsonl" -o "$T/or4-out.safetensors"
    check "PyTorch's fake quantization and STE give qat-train's QAT losses" "$TORCH_PY" tests/oracle/train_oracle.py \
        "$T/or.safetensors" "$T/or.tok" "$T/or4.jsonl" 2 8 64 1e-3 7 4 32
else
    echo "skip: python3-torch not installed" >&2
    skip=$((skip + 7))
fi

finish
