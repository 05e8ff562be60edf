// gguf_oracle.mjs: reads a GGUF with @huggingface/gguf (an implementation
// independent of qtc) and checks it against qtc's own listing of the same file
// (qconv --inspect --json, HF names) given on stdin: every tensor present under
// llama.cpp's name with the reversed shape and the same ggml type, offsets
// aligned and inside the file, and the metadata llama.cpp needs.
// Usage: qconv F --inspect --json | node gguf_oracle.mjs F [expected_file_type]
import { gguf } from "@huggingface/gguf";
import { readFileSync, statSync } from "node:fs";

const path = process.argv[2];
const qtc = JSON.parse(readFileSync(0, "utf8"));
const { metadata: md, tensorInfos, tensorDataOffset } = await gguf(path, { allowLocalFile: true });
const ggmlType = { f32: 0, f16: 1, q4_0: 2, q4_1: 3, q5_0: 6, q5_1: 7, q8_0: 8, q4_k: 12, q5_k: 13, q6_k: 14, bf16: 30 };
const rename = [
  [/^model\.embed_tokens\.weight$/, "token_embd.weight"],
  [/^model\.norm\.weight$/, "output_norm.weight"],
  [/^lm_head\.weight$/, "output.weight"],
  [/^model\.layers\.(\d+)\.input_layernorm\.weight$/, "blk.$1.attn_norm.weight"],
  [/^model\.layers\.(\d+)\.self_attn\.q_proj\.weight$/, "blk.$1.attn_q.weight"],
  [/^model\.layers\.(\d+)\.self_attn\.k_proj\.weight$/, "blk.$1.attn_k.weight"],
  [/^model\.layers\.(\d+)\.self_attn\.v_proj\.weight$/, "blk.$1.attn_v.weight"],
  [/^model\.layers\.(\d+)\.self_attn\.o_proj\.weight$/, "blk.$1.attn_output.weight"],
  [/^model\.layers\.(\d+)\.post_attention_layernorm\.weight$/, "blk.$1.ffn_norm.weight"],
  [/^model\.layers\.(\d+)\.mlp\.gate_proj\.weight$/, "blk.$1.ffn_gate.weight"],
  [/^model\.layers\.(\d+)\.mlp\.up_proj\.weight$/, "blk.$1.ffn_up.weight"],
  [/^model\.layers\.(\d+)\.mlp\.down_proj\.weight$/, "blk.$1.ffn_down.weight"],
];
const problems = [];
const need = (cond, msg) => { if (!cond) problems.push(msg); };
need(md.version === 3, `version ${md.version}`);
need(md["general.architecture"] === "llama", "general.architecture");
const align = md["general.alignment"] ?? 32;
need(Number(md.tensor_count) === qtc.tensors.length, `tensor_count ${md.tensor_count} vs ${qtc.tensors.length}`);
for (const k of ["llama.embedding_length", "llama.block_count", "llama.feed_forward_length", "llama.attention.head_count",
                 "llama.attention.head_count_kv", "llama.rope.dimension_count", "llama.context_length"])
  need(typeof md[k] === "number" && md[k] > 0, `metadata ${k}`);
need(Array.isArray(md["tokenizer.ggml.tokens"]) && md["tokenizer.ggml.tokens"].length === md["llama.vocab_size"], "tokenizer tokens");
if (process.argv[3] !== undefined) need(md["general.file_type"] === Number(process.argv[3]), `file_type ${md["general.file_type"]}`);
const byName = new Map(tensorInfos.map((t) => [t.name, t]));
const size = statSync(path).size;
for (const t of qtc.tensors) {
  let name = t.name;
  for (const [re, to] of rename) if (re.test(name)) { name = name.replace(re, to); break; }
  const g = byName.get(name);
  if (!g) { problems.push(`missing ${name}`); continue; }
  need(JSON.stringify(g.shape.map(Number)) === JSON.stringify([...t.shape].reverse()), `${name} shape ${g.shape}`);
  need(g.dtype === ggmlType[t.type], `${name} type ${g.dtype} vs ${t.type}`);
  const off = Number(tensorDataOffset) + Number(g.offset);
  need(Number(g.offset) % align === 0 && off + t.bytes <= size, `${name} offset ${g.offset}`);
}
if (problems.length) { console.error(problems.slice(0, 10).join("\n")); process.exit(1); }
