// imatrix_oracle.mjs: reads an imatrix GGUF with @huggingface/gguf
// (independent of qtc) and checks llama.cpp's layout: general.type imatrix,
// imatrix.datasets / chunk_count / chunk_size, and per weight
// <llama.cpp name>.in_sum2 (F32, ne [in, 1]) with <name>.counts (F32, ne [1, 1]).
// Usage: node imatrix_oracle.mjs FILE DATASET CHUNKS CHUNK_SIZE WEIGHTS
import { gguf } from "@huggingface/gguf";

const [path, dataset, chunks, size, weights] = process.argv.slice(2);
const { metadata: md, tensorInfos } = await gguf(path, { allowLocalFile: true });
const problems = [];
const need = (cond, msg) => { if (!cond) problems.push(msg); };
need(md["general.type"] === "imatrix", `general.type ${md["general.type"]}`);
need(Array.isArray(md["imatrix.datasets"]) && md["imatrix.datasets"][0] === dataset, "imatrix.datasets");
need(md["imatrix.chunk_count"] === Number(chunks), `chunk_count ${md["imatrix.chunk_count"]}`);
need(md["imatrix.chunk_size"] === Number(size), `chunk_size ${md["imatrix.chunk_size"]}`);
const byName = new Map(tensorInfos.map((t) => [t.name, t]));
let n = 0;
for (const t of tensorInfos) {
  if (!t.name.endsWith(".in_sum2")) continue;
  n++;
  const base = t.name.slice(0, -8);
  need(/^blk\.\d+\.(attn_[qkv]|attn_output|ffn_gate|ffn_up|ffn_down)\.weight$/.test(base), `name ${t.name}`);
  need(t.dtype === 0 && t.shape.length === 2 && Number(t.shape[1]) === 1, `${t.name}: type ${t.dtype} ne ${t.shape}`);
  const c = byName.get(`${base}.counts`);
  need(c && c.dtype === 0 && Number(c.shape[0]) === 1, `${base}.counts`);
}
need(n === Number(weights), `${n} weights, want ${weights}`);
need(tensorInfos.length === 2 * n, `${tensorInfos.length} tensors`);
if (problems.length) {
  console.error(problems.join("\n"));
  process.exit(1);
}
console.log(`imatrix oracle: ${n} weights`);
