#!/bin/sh
# qlora-train and merge: the four methods train from one tool and score in
# qeval what training reported; adapters have PEFT's layout (numpy) and
# llama.cpp's GGUF LoRA layout (@huggingface/gguf); merge is exact against a
# numpy recomputation, keeps quantized bases quantized, streams to a pipe, and
# refuses adapters that do not fit. Last line: "lora: N passed, N failed".
set -u
BIN=${QTC_BIN:-bin}
SHARED=${QTC_SHARED:-../shared}
Q="$BIN/qlora-train"
G="$BIN/merge"
E="$BIN/qeval"
C="$BIN/qconv"
M=$SHARED/models/stories260K/stories260K.bin
TOK=$SHARED/models/stories260K/tok512.bin
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
NAME=lora
. tests/cli/lib.sh
head -n 4000 "$SHARED/data/brown.txt" >"$T/train.txt"
tail -n 400 "$SHARED/data/brown.txt" >"$T/eval.txt"
RUN="--data $T/train.txt --eval $T/eval.txt --eval-windows 16 --steps 16 --batch 4 --ctx 64 --lr 3e-3"
NUMPY_PY=
for py in python3 /usr/bin/python3; do
    if "$py" -c "import numpy" 2>/dev/null; then NUMPY_PY=$py; break; fi
done
have_numpy() { [ -n "$NUMPY_PY" ]; }

# eval_improved WHAT: training's last evaluation beat its first
eval_improved() {
    first=$(grep "step 0 eval" "$T/err" | sed -E 's/.*loss ([0-9.]+),.*/\1/')
    last=$(grep "step 16 eval" "$T/err" | sed -E 's/.*loss ([0-9.]+),.*/\1/')
    if [ -n "$first" ] && [ -n "$last" ] && awk "BEGIN{exit !($last < $first)}"; then ok; else bad "$1: eval loss $first -> $last"; fi
}
# scores_as_trained WHAT ADAPTER: qeval with the adapter gives training's last perplexity
scores_as_trained() {
    want=$(grep "step 16 eval" "$T/err" | sed -E 's/.*perplexity ([0-9.]+) .*/\1/')
    got=$("$E" "$M" --adapter "$2" --text "$T/eval.txt" --ctx 64 --windows 16 2>/dev/null | sed -E 's/perplexity ([0-9.]+) .*/\1/')
    if [ -n "$want" ] && [ "$want" = "$got" ]; then ok; else bad "$1: qeval $got, training $want"; fi
}

expect 0 "qlora-train --help" "$Q" --help
expect 0 "merge --help" "$G" --help
expect 1 "no data" "$Q" "$M" -o "$T/x"
expect 1 "bad method" "$Q" "$M" --data "$T/train.txt" --method dora -o "$T/x"
expect 1 "GGUF for a bottleneck adapter" "$Q" "$M" --data "$T/train.txt" --method adapter -o "$T/x.gguf"
expect 1 "bad --embed-type" "$Q" "$M" --data "$T/train.txt" --embed-type f12 -o "$T/x"
expect 1 "qlora on f32" "$Q" "$M" --data "$T/train.txt" --method qlora --base-type f32 -o "$T/x"
expect 1 "bad target regex" "$Q" "$M" --data "$T/train.txt" --target "(" -o "$T/x"
absent "bad target regex leaves no adapter" "$T/x"

# LoRA on the f32 base, all linear layers
expect 0 "LoRA run" "$Q" "$M" $RUN --target all-linear --plot "$T/lora.svg" --log-json "$T/log.jsonl" -o "$T/lora"
stderr_has "LoRA run" "LoRA rank 8, alpha 16 (scale 2)"
# a float base is read from the file's mapping (no f32 copy), but for llama2.c's q/k rows, which are permuted
stderr_has "LoRA run" "linear base f32 0.86 MB, 0.75 MB of it mapped (f32: 0.86 MB); embedding f32 0.12 MB mapped, head tied"
eval_improved "LoRA"
scores_as_trained "LoRA" "$T/lora"
if have_numpy; then
    check "the LoRA folder has PEFT's layout (numpy)" "$NUMPY_PY" tests/oracle/peft_oracle.py "$T/lora"
else skip=$((skip + 1)); fi
check "--log-json events" python3 -c "
import json; ev=[json.loads(l) for l in open('$T/log.jsonl')]
assert [e['event'] for e in ev].count('step') == 16 and [e['event'] for e in ev].count('eval') == 2"
check "--plot wrote an SVG" grep -q "<polyline" "$T/lora.svg"

# the same run written as a GGUF LoRA: llama.cpp's layout, and the same scores through qeval
expect 0 "GGUF LoRA run" "$Q" "$M" $RUN --target all-linear -o "$T/lora.gguf"
scores_as_trained "GGUF LoRA" "$T/lora.gguf"
if [ -d tests/oracle/node_modules/@huggingface/gguf ] && command -v node >/dev/null; then
    check "@huggingface/gguf reads the GGUF LoRA" node tests/oracle/gguf_lora_oracle.mjs "$T/lora.gguf" 16 8 35
else skip=$((skip + 1)); fi


# QLoRA: the base held in NF4 (an eighth of the f32 bytes), the adapter as before; qconv keeps the
# embedding float (schemes are for linear layers), so the comparison with its file keeps it float too
expect 0 "QLoRA run" "$Q" "$M" $RUN --method qlora --embed-type f32 --target q_proj,v_proj -o "$T/qlora"
stderr_has "QLoRA run" "linear base nf4 0.11 MB (f32: 0.86 MB); embedding f32 0.12 MB mapped, head tied"
eval_improved "QLoRA"
"$C" "$M" --to nf4 -o "$T/base-nf4.safetensors" 2>/dev/null
want=$(grep "step 16 eval" "$T/err" | sed -E 's/.*perplexity ([0-9.]+) .*/\1/')
got=$("$E" "$T/base-nf4.safetensors" --adapter "$T/qlora" --text "$T/eval.txt" --ctx 64 --windows 16 2>/dev/null | sed -E 's/perplexity ([0-9.]+) .*/\1/')
[ "$want" = "$got" ] && ok || bad "QLoRA on qconv's NF4 file scores $got, training $want"

# a base file already quantized trains against exactly its stored weights (codes and blocks taken as stored,
# a GGUF's q/k rows of blocks permuted): the first evaluation equals qeval's score of the file
"$C" "$M" --to q8_0 --tensor-type 'embed_tokens=f32' -o "$T/bq8.gguf" 2>/dev/null
for f in "$T/base-nf4.safetensors qlora --embed-type f32" "$T/bq8.gguf lora --base-type q8_0 --embed-type f32"; do
    set -- $f
    file=$1 method=$2
    shift 2
    "$Q" "$file" --data "$T/train.txt" --eval "$T/eval.txt" --eval-windows 8 --steps 1 --batch 2 --ctx 64 --method $method "$@" \
        -o "$T/stored" >/dev/null 2>"$T/err"
    want=$("$E" "$file" --tokenizer "$TOK" --text "$T/eval.txt" --ctx 64 --windows 8 2>/dev/null | sed -E 's/perplexity ([0-9.]+) .*/\1/')
    got=$(grep "step 0 eval" "$T/err" | sed -E 's/.*perplexity ([0-9.]+) .*/\1/')
    [ -n "$want" ] && [ "$want" = "$got" ] && ok || bad "training on $(basename "$file") starts at $got, the file scores $want"
done

# other quantized bases: each scores through qeval as qconv's file of that type does; q4_0 quantizes
# the tied embedding and head too (looked up and fused from the q4_0 table), as qconv's GGUF stores them
for bt in int4-g32 q4_0 int8; do
    case $bt in q4_0) ext=gguf io=q4_0 ;; *) ext=safetensors io=f32 ;; esac
    expect 0 "LoRA on a $bt base" "$Q" "$M" --data "$T/train.txt" --eval "$T/eval.txt" --eval-windows 8 --steps 4 \
        --batch 2 --ctx 64 --base-type $bt --embed-type $io -o "$T/lora-$bt"
    want=$(grep "step 4 eval" "$T/err" | sed -E 's/.*perplexity ([0-9.]+) .*/\1/')
    "$C" "$M" --to $bt --tensor-type "embed_tokens=$io" -o "$T/base-$bt.$ext" 2>/dev/null # the base keeps its embedding
    got=$("$E" "$T/base-$bt.$ext" --tokenizer "$TOK" --adapter "$T/lora-$bt" --text "$T/eval.txt" --ctx 64 --windows 8 2>/dev/null | sed -E 's/perplexity ([0-9.]+) .*/\1/')
    [ -n "$want" ] && [ "$want" = "$got" ] && ok || bad "LoRA on $bt: qeval on qconv's $bt file $got, training $want"
done

# an f16 base is trained as stored (converted a tile at a time, never copied) and scores through
# qeval as the f16 file does
"$C" "$M" --to f16 -o "$T/base-f16.safetensors" 2>/dev/null
expect 0 "LoRA on an f16 base" "$Q" "$T/base-f16.safetensors" --tokenizer "$TOK" --data "$T/train.txt" --eval "$T/eval.txt" \
    --eval-windows 8 --steps 4 --batch 2 --ctx 64 -o "$T/lora-f16"
stderr_has "LoRA on an f16 base" "linear base f16 0.43 MB, 0.43 MB of it mapped (f32: 0.86 MB); embedding f16 0.06 MB mapped, head tied"
want=$(grep "step 4 eval" "$T/err" | sed -E 's/.*perplexity ([0-9.]+) .*/\1/')
got=$("$E" "$T/base-f16.safetensors" --tokenizer "$TOK" --adapter "$T/lora-f16" --text "$T/eval.txt" --ctx 64 --windows 8 2>/dev/null | sed -E 's/perplexity ([0-9.]+) .*/\1/')
[ -n "$want" ] && [ "$want" = "$got" ] && ok || bad "LoRA on f16: qeval on the f16 file $got, training $want"

# bottleneck adapters and prefix tuning
expect 0 "adapter run" "$Q" "$M" $RUN --method adapter --rank 8 -o "$T/adapter"
eval_improved "adapter"
scores_as_trained "adapter" "$T/adapter"
check "adapter config" grep -q '"peft_type":	"BOTTLENECK"' "$T/adapter/adapter_config.json"
expect 0 "prefix run" "$Q" "$M" $RUN --method prefix --prefix-len 4 --lr 3e-2 -o "$T/prefix"
eval_improved "prefix"
scores_as_trained "prefix" "$T/prefix"
check "prefix config" grep -q '"num_virtual_tokens":	4' "$T/prefix/adapter_config.json"
expect 0 "generation with a prefix" "$E" "$M" --adapter "$T/prefix" --generate "Once upon a time" -n 10

# prompt/response JSON lines: the loss counts the responses only
python3 -c "
import json
for line in open('$SHARED/data/tinystories-train.txt').read().split('<|endoftext|>')[:200]:
    s = line.strip().split('. ', 1)
    if len(s) == 2: print(json.dumps({'prompt': s[0] + '.', 'response': s[1]}))" >"$T/sft.jsonl"
expect 0 "SFT run" "$Q" "$M" --data "$T/sft.jsonl" --steps 4 --batch 2 --ctx 64 -o "$T/sft"
stderr_has "SFT run" "prompt/response pairs: responses scored"
printf '{"prompt": "a", "response": "b"}\n{"prompt": "a"}\n' >"$T/bad.jsonl"
expect 2 "a JSON line without a response" "$Q" "$M" --data "$T/bad.jsonl" --steps 2 -o "$T/bad"
stderr_has "a JSON line without a response" "bad.jsonl: line 2"
absent "no adapter after bad data" "$T/bad"

# resuming gives the adapter an uninterrupted run gives
expect 0 "straight run" "$Q" "$M" --data "$T/train.txt" --steps 6 --batch 2 --ctx 32 -o "$T/straight"
expect 0 "stopped run" "$Q" "$M" --data "$T/train.txt" --steps 6 --batch 2 --ctx 32 --stop-after 3 -o "$T/resumed"
expect 0 "resumed run" "$Q" "$M" --data "$T/train.txt" --steps 6 --batch 2 --ctx 32 --resume "$T/resumed.ckpt" -o "$T/resumed"
check "resumed adapter equals the straight run's" cmp "$T/straight/adapter_model.safetensors" "$T/resumed/adapter_model.safetensors"
expect 4 "divergence" "$Q" "$M" --data "$T/train.txt" --steps 6 --batch 2 --ctx 32 --lr 1e30 --clip 0 -o "$T/nan"
absent "no adapter after divergence" "$T/nan"

# merge: exact against numpy, into float and quantized bases, to a pipe
"$C" "$M" -o "$T/base.safetensors" 2>/dev/null
expect 0 "merge sum" "$G" "$T/base.safetensors" "$T/lora" -o "$T/merged.safetensors"
expect 0 "merge with a weight" "$G" "$T/base.safetensors" "$T/lora" --weights 0.5 -o "$T/merged-half.safetensors"
if have_numpy; then
    check "merged = W + s B A (numpy)" "$NUMPY_PY" tests/oracle/peft_oracle.py "$T/lora" "$T/base.safetensors" "$T/merged.safetensors"
    check "merged = W + 0.5 s B A (numpy)" "$NUMPY_PY" tests/oracle/peft_oracle.py "$T/lora" "$T/base.safetensors" "$T/merged-half.safetensors" 0.5
else skip=$((skip + 2)); fi
expect 0 "merged model vs base with the adapter" "$E" "$M" --adapter "$T/lora" --text "$T/eval.txt" --ctx 64 --windows 16 --ref "$T/merged.safetensors"
stdout_has "the merged model is the adapted model" "KL divergence 0.000000"
expect 0 "merge cat" "$G" "$T/base.safetensors" "$T/lora" "$T/lora.gguf" --weights 0.5,0.5 --method cat -o "$T/cat.safetensors"
expect 0 "cat of two halves equals sum of one" "$E" "$T/cat.safetensors" --tokenizer "$TOK" --text "$T/eval.txt" --ctx 64 --windows 16 --ref "$T/merged.safetensors"
stdout_has "cat of two halves equals sum of one" "KL divergence 0.000000"
expect 0 "merge ties" "$G" "$T/base.safetensors" "$T/lora" "$T/lora.gguf" --method ties --density 0.3 -o "$T/ties.safetensors"
expect 0 "merge dare" "$G" "$T/base.safetensors" "$T/lora" --method dare --density 0.5 --seed 7 -o "$T/dare1.safetensors"
expect 0 "merge dare again" "$G" "$T/base.safetensors" "$T/lora" --method dare --density 0.5 --seed 7 -o "$T/dare2.safetensors"
check "dare is repeatable" cmp "$T/dare1.safetensors" "$T/dare2.safetensors"
"$C" "$M" --to q8_0 -o "$T/base-q8.gguf" 2>/dev/null
expect 0 "merge into a Q8_0 base" "$G" "$T/base-q8.gguf" "$T/lora" -o "$T/merged-q8.gguf"
"$C" "$T/merged-q8.gguf" --inspect >"$T/out" 2>&1
stdout_has "the Q8_0 base stays Q8_0" "q_proj.weight *q8_0"
expect 0 "merge into NF4, kept f32" "$G" "$T/base-nf4.safetensors" "$T/qlora" --to f32 -o "$T/merged-nf4-f32.safetensors"
expect 0 "merged NF4 equals the QLoRA model" "$E" "$T/base-nf4.safetensors" --adapter "$T/qlora" --text "$T/eval.txt" --ctx 64 --windows 16 --ref "$T/merged-nf4-f32.safetensors"
stdout_has "merged NF4 equals the QLoRA model" "KL divergence 0.000000"
expect 0 "merge into NF4, re-quantized" "$G" "$T/base-nf4.safetensors" "$T/qlora" -o "$T/merged-nf4.safetensors"
"$C" "$T/merged-nf4.safetensors" --inspect >"$T/out" 2>&1
stdout_has "the NF4 base stays NF4" "v_proj.weight *nf4"
check "merge streams to a pipe" sh -c "'$G' '$T/base.safetensors' '$T/lora' | '$C' - --to q8_0 -o '$T/piped.gguf' 2>/dev/null && test -s '$T/piped.gguf'"

# adapters that do not fit
expect 1 "one weight for two adapters" "$G" "$T/base.safetensors" "$T/lora" "$T/lora" --weights 0.5 -o "$T/m.safetensors"
expect 2 "a missing adapter" "$G" "$T/base.safetensors" "$T/none" -o "$T/m.safetensors"
expect 2 "a prefix adapter" "$G" "$T/base.safetensors" "$T/prefix" -o "$T/m.safetensors"
stderr_has "a prefix adapter" "only LoRA adapters fold into weights"
cp -r "$T/lora" "$T/liar"
sed 's/"r":	8/"r":	4/' "$T/lora/adapter_config.json" >"$T/liar/adapter_config.json"
expect 2 "a rank the tensors disagree with" "$G" "$T/base.safetensors" "$T/liar" -o "$T/m.safetensors"
stderr_has "a rank the tensors disagree with" "lora_A.weight' is f32 \[8, 64\]"
head -c 5000 "$T/lora/adapter_model.safetensors" >"$T/liar/adapter_model.safetensors"
cp "$T/lora/adapter_config.json" "$T/liar/adapter_config.json"
expect 2 "a truncated adapter" "$G" "$T/base.safetensors" "$T/liar" -o "$T/m.safetensors"
python3 -c "
import json; c = json.load(open('$T/lora/adapter_config.json')); c['use_dora'] = True
json.dump(c, open('$T/liar/adapter_config.json', 'w'))"
cp "$T/lora/adapter_model.safetensors" "$T/liar/"
expect 2 "a DoRA adapter" "$G" "$T/base.safetensors" "$T/liar" -o "$T/m.safetensors"
stderr_has "a DoRA adapter" "use_dora"
python3 - "$T/lora/adapter_model.safetensors" "$T/liar/adapter_model.safetensors" <<'PY'
import json, struct, sys
raw = bytearray(open(sys.argv[1], "rb").read()); n = struct.unpack("<Q", raw[:8])[0]; h = json.loads(raw[8:8 + n])
b, _ = h["base_model.model.model.layers.2.mlp.up_proj.lora_B.weight"]["data_offsets"]
raw[8 + n + b + 4 * 5:8 + n + b + 4 * 6] = struct.pack("<f", float("nan"))
open(sys.argv[2], "wb").write(raw)
PY
cp "$T/lora/adapter_config.json" "$T/liar/adapter_config.json"
expect 4 "an adapter with a NaN" "$G" "$T/base.safetensors" "$T/liar" -o "$T/m.safetensors"
stderr_has "an adapter with a NaN" "layers.2.mlp.up_proj.lora_B.weight': element 5 is not finite"
"$Q" "$M" --data "$T/train.txt" --steps 1 --batch 1 --ctx 8 --target q_proj -o "$T/qonly" 2>/dev/null
"$C" "$T/base.safetensors" --tensor-type 'layers\.0\.self_attn\.q_proj=f32' -o "$T/b2.safetensors" 2>/dev/null
python3 - "$T/b2.safetensors" "$T/wrong.safetensors" <<'PY' 2>/dev/null
import json, struct, sys
raw = open(sys.argv[1], "rb").read(); n = struct.unpack("<Q", raw[:8])[0]; h = json.loads(raw[8:8 + n])
h["model.layers.0.self_attn.q_proj.weight"]["shape"] = [32, 128]  # same bytes, another shape
s = json.dumps(h).encode(); s += b" " * (-len(s) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(s)) + s + raw[8 + n:])
PY
expect 2 "a base whose shape disagrees" "$G" "$T/wrong.safetensors" "$T/qonly" -o "$T/m.safetensors"
stderr_has "a base whose shape disagrees" "is \[32, 128\], the adapter.s delta is \[64, 64\]"
absent "no output after refused merges" "$T/m.safetensors"
finish
