#!/bin/sh
# A 40-layer tiny llama (more parameters than any fixed cap the tools once had:
# 362 tensors, 922 with LSQ's scales and zero points) goes through every
# trainer, checkpoints and resumes, merges and scores. Last line: "deep: N
# passed, N failed".
set -u
BIN=${QTC_BIN:-bin}
SHARED=${QTC_SHARED:-../shared}
TRAIN=$SHARED/data/tinystories-train.txt
EVAL=$SHARED/data/tinystories-eval.txt
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
NAME=deep
. tests/cli/lib.sh

# The model: an HF folder written with Python's standard library only (config,
# safetensors with seeded N(0, 0.02) weights, stories260K's tokenizer).
D=$T/deep40
mkdir -p "$D"
cp "$SHARED/models/stories260K-hf/tokenizer.json" "$SHARED/models/stories260K-hf/tokenizer_config.json" "$D/"
python3 - "$D" <<'EOF'
import json, random, struct, sys
d = sys.argv[1]
L, dim, hidden, vocab, heads = 40, 16, 32, 512, 2
cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": dim,
       "intermediate_size": hidden, "num_hidden_layers": L, "num_attention_heads": heads,
       "num_key_value_heads": heads, "head_dim": dim // heads, "vocab_size": vocab,
       "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
       "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32"}
json.dump(cfg, open(d + "/config.json", "w"))
shapes = {"model.embed_tokens.weight": (vocab, dim), "model.norm.weight": (dim,)}
for l in range(L):
    p = "model.layers.%d." % l
    for n in ("input_layernorm", "post_attention_layernorm"):
        shapes[p + n + ".weight"] = (dim,)
    for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"):
        shapes[p + n + ".weight"] = (dim, dim)
    shapes[p + "mlp.gate_proj.weight"] = (hidden, dim)
    shapes[p + "mlp.up_proj.weight"] = (hidden, dim)
    shapes[p + "mlp.down_proj.weight"] = (dim, hidden)
rng = random.Random(7)
header, blobs, off = {}, [], 0
for name in sorted(shapes):
    shape = shapes[name]
    n = 1
    for s in shape:
        n *= s
    vals = [1.0] * n if len(shape) == 1 else [rng.gauss(0, 0.02) for _ in range(n)]
    b = struct.pack("<%df" % n, *vals)
    header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [off, off + len(b)]}
    blobs.append(b)
    off += len(b)
h = json.dumps(header).encode()
h += b" " * (-len(h) % 8)
with open(d + "/model.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
EOF
[ -f "$D/model.safetensors" ] && ok || bad "writing the 40-layer model"

head -c 100000 "$TRAIN" >"$T/train.txt"
head -c 20000 "$EVAL" >"$T/eval.txt"
TRAIN_FLAGS="--data $T/train.txt --steps 3 --batch 2 --ctx 32 --eval $T/eval.txt --eval-windows 2"
expect 0 "QAT on 40 layers" "$BIN/qat-train" "$D" $TRAIN_FLAGS --save-every 2 -o "$T/qat.safetensors"
stderr_has "QAT on 40 layers" "362 of 362 tensors trained"
"$BIN/qconv" "$T/qat.safetensors" --inspect >"$T/out" 2>&1
stdout_has "the last layer exported" "model.layers.39.mlp.down_proj.weight *int4-g32"
expect 0 "the checkpoint resumes" "$BIN/qat-train" "$D" $TRAIN_FLAGS --steps 4 --resume "$T/qat.safetensors.ckpt" \
    -o "$T/qat4.safetensors"
stderr_has "the checkpoint resumes" "after step 2"
expect 0 "LSQ on 40 layers" "$BIN/qat-train" "$D" $TRAIN_FLAGS --lsq --asym -o "$T/lsq.safetensors"
expect 0 "QLoRA on 40 layers" "$BIN/qlora-train" "$D" $TRAIN_FLAGS --method qlora --target all-linear \
    --save-every 2 -o "$T/lora"
stderr_has "QLoRA on 40 layers" "in 560 tensors"
expect 0 "merge on 40 layers" "$BIN/merge" "$D" "$T/lora" -o "$T/merged.safetensors"
expect 0 "score the merged model" "$BIN/qeval" "$T/merged.safetensors" --text "$T/eval.txt" --ctx 32 --windows 2 --ref "$D"

# a path past QTC_PATH_MAX is refused, not cut short (17 folders of 250 characters: 4267 bytes)
long=$T
seg=$(printf '%0250d' 0)
for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17; do long=$long/$seg; done
if mkdir -p "$long" 2>/dev/null; then
    expect 1 "a too long output path" "$BIN/qconv" "$D" -o "$long/x.safetensors"
    stderr_has "a too long output path" "longer than"
    expect 1 "a too long adapter path" "$BIN/qlora-train" "$D" $TRAIN_FLAGS -o "$long/lora"
    stderr_has "a too long adapter path" "longer than"
    absent "no adapter folder" "$long/lora"
else
    skip=$((skip + 1))
fi

finish
