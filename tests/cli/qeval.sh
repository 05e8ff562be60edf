#!/bin/sh
# qeval's command line: generation (the README's greedy text), perplexity and
# --ref figures on real text, and bad input (unknown formats, text that cannot
# be encoded, a context larger than the model's). Last line: "qeval: N passed, N failed".
set -u
BIN=${QTC_BIN:-bin}
SHARED=${QTC_SHARED:-../shared}
E="$BIN/qeval"
Q="$BIN/qconv"
M=$SHARED/models
L2C=$M/stories260K/stories260K.bin
TOK=$M/stories260K/tok512.bin
TXT=$SHARED/data/tinystories-eval.txt
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
NAME=qeval
. tests/cli/lib.sh

expect 0 "--help" "$E" --help
expect 1 "no mode" "$E" "$L2C"
expect 1 "both modes" "$E" "$L2C" --text "$TXT" --generate hi

# greedy generation from an empty prompt is the README's text, from each format
python3 - "$SHARED/models/README.md" "$T/want.txt" <<'PY'
import sys
s = open(sys.argv[1]).read()
a = s.index("gives exactly:\n```\n") + len("gives exactly:\n```\n")
open(sys.argv[2], "w").write(s[a:s.index("\n```", a)] + "\n")
PY
"$Q" "$L2C" --to f32 -o "$T/s.gguf" 2>/dev/null
for model in "$L2C" "$M/stories260K-hf" "$T/s.gguf"; do
    expect 0 "generate from $model" "$E" "$model" --generate "" -n 200
    if cmp -s "$T/out" "$T/want.txt"; then ok; else bad "greedy text from $model differs"; fi
done
expect 0 "prompted generation" "$E" "$L2C" --generate "Once upon a time" -n 20
stdout_has "prompted generation" "^Once upon a time, there was"
expect 0 "sampling" "$E" "$L2C" --generate "Tom" -n 30 --temp 0.8 --seed 7
cp "$T/out" "$T/s1"
"$E" "$L2C" --generate "Tom" -n 30 --temp 0.8 --seed 7 >"$T/s2" 2>/dev/null
if cmp -s "$T/s1" "$T/s2"; then ok; else bad "seeded sampling repeats"; fi

# perplexity and reference figures
expect 0 "perplexity" "$E" "$L2C" --text "$TXT" --windows 40 --json
python3 -c "
import json; d=json.load(open('$T/out'))
assert d['windows'] == 40 and d['predictions'] == 40 * 127 and 3 < d['ppl'] < 9, d" 2>"$T/err" && ok || bad "perplexity figures: $(cat "$T/err")"
"$Q" "$L2C" --to q4_0 -o "$T/q4.gguf" 2>/dev/null
expect 0 "--ref" "$E" "$T/q4.gguf" --tokenizer "$TOK" --text "$TXT" --windows 40 --ref "$L2C" --json
python3 -c "
import json; d=json.load(open('$T/out'))
assert 0.01 < d['kld'] < 1 and 0.5 < d['top1'] < 0.99 and d['ppl'] > d['ref_ppl'], d" 2>"$T/err" && ok || bad "--ref figures: $(cat "$T/err")"
expect 0 "--ref against itself" "$E" "$L2C" --text "$TXT" --windows 5 --ref "$M/stories260K-hf" --json
python3 -c "
import json; d=json.load(open('$T/out'))
assert d['kld'] < 1e-9 and d['top1'] == 1 and d['ppl'] == d['ref_ppl'], d" 2>"$T/err" && ok || bad "self reference: $(cat "$T/err")"

# tokenize once, score again from the token file: the same figures
expect 0 "--save-tokens" "$E" "$L2C" --text "$TXT" --windows 20 --json --save-tokens "$T/eval.tok"
cp "$T/out" "$T/from-text.json"
expect 0 "scoring a token file" "$E" "$L2C" --text "$T/eval.tok" --windows 20 --json
python3 -c "
import json; a=json.load(open('$T/from-text.json')); b=json.load(open('$T/out'))
assert a['ppl'] == b['ppl'] and a['predictions'] == b['predictions'], (a, b)" 2>"$T/err" && ok || bad "token file scores: $(cat "$T/err")"

# bad input
printf 'not a model' >"$T/junk"
expect 2 "unknown model format" "$E" "$T/junk" --text "$TXT"
stderr_has "unknown model format" "unknown model format"
expect 1 "--ctx larger than the model's" "$E" "$L2C" --text "$TXT" --ctx 4096
stderr_has "--ctx larger than the model's" "larger than the model's context of 512"
printf 'a\000b\n' >"$T/nul.txt"
expect 2 "text that cannot be encoded" "$E" "$L2C" --text "$T/nul.txt"
stderr_has "text that cannot be encoded" "NUL byte"
mkdir "$T/lonely" && cp "$L2C" "$T/lonely/model.bin"
expect 2 "a model without a tokenizer" "$E" "$T/lonely/model.bin" --text "$TXT"
stderr_has "a model without a tokenizer" "no tokenizer"
expect 2 "a model without a configuration" "$E" "$M/stories260K-hf/model.safetensors" --text "$TXT"
stderr_has "a model without a configuration" "no llama configuration"
printf 'Once upon a time.\n' >"$T/short.txt"
expect 2 "text shorter than a window" "$E" "$L2C" --text "$T/short.txt"
stderr_has "text shorter than a window" "not one window"

finish
