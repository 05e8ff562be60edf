// gguf_lora_oracle.mjs: reads a GGUF LoRA adapter with @huggingface/gguf
// (independent of qtc) and checks what llama.cpp's adapter loader needs:
// general.type "adapter", adapter.type "lora", adapter.lora.alpha, the base's
// architecture, and tensors <llama.cpp weight name>.lora_a with ne [in, r] and
// .lora_b with ne [r, out], in pairs, all of one rank.
// Usage: node gguf_lora_oracle.mjs ADAPTER.gguf ALPHA RANK PAIRS
import { gguf } from "@huggingface/gguf";

const [path, alpha, rank, pairs] = process.argv.slice(2);
const { metadata: md, tensorInfos } = await gguf(path, { allowLocalFile: true });
const problems = [];
const need = (cond, msg) => { if (!cond) problems.push(msg); };
need(md["general.type"] === "adapter", `general.type ${md["general.type"]}`);
need(md["adapter.type"] === "lora", `adapter.type ${md["adapter.type"]}`);
need(Math.abs(md["adapter.lora.alpha"] - Number(alpha)) < 1e-6, `adapter.lora.alpha ${md["adapter.lora.alpha"]}`);
need(md["general.architecture"] === "llama", "general.architecture");
const names = new Map(tensorInfos.map((t) => [t.name, t]));
let n = 0;
for (const t of tensorInfos) {
  const m = /^(blk\.\d+\.(attn_[qkv]|attn_output|ffn_gate|ffn_up|ffn_down)\.weight)\.lora_([ab])$/.exec(t.name);
  need(m, `unexpected tensor ${t.name}`);
  if (!m) continue;
  need(t.dtype === 0, `${t.name}: type ${t.dtype}, want F32`);
  if (m[3] === "a") {
    n++;
    const b = names.get(`${m[1]}.lora_b`);
    need(b, `${t.name} has no lora_b`);
    need(Number(t.shape[1]) === Number(rank), `${t.name}: ne ${t.shape}, rank ${rank}`);
    if (b) need(Number(b.shape[0]) === Number(rank), `${m[1]}.lora_b: ne ${b.shape}`);
  }
}
need(n === Number(pairs), `${n} lora_a/lora_b pairs, want ${pairs}`);
if (problems.length) {
  console.error(problems.join("\n"));
  process.exit(1);
}
console.log(`gguf lora oracle: ${n} pairs of rank ${rank}`);
