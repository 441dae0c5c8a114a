#!/bin/sh
# bench/tokenizer.sh — encode throughput (MB/s, one thread) of pesc vs Hugging Face tokenizers
# (the node binding) on the same text, in one run.
#
#   tools/fetch-tokenizers --with-hf && bench/tokenizer.sh [./pesc] [MB]
#
# The text: the tokenizer test corpus texts joined by newlines into 64 kB documents, repeated to
# MB megabytes (default 8), one JSON string a line. Both sides encode each document with
# special tokens on one thread; load time is not counted (pesc: a run over the text twice
# minus a run over it once, the fastest of three each; HF: timed after loading and a
# warm-up). Prints per tokenizer: pesc MB/s, HF MB/s, ratio.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
pesc=${1:-$top/pesc}
mb=${2:-8}
files="$top/tests/tokenizer/files"
[ -x "$pesc" ] || { echo "bench/tokenizer.sh: $pesc not built" >&2; exit 1; }
[ -d "$files/node_modules/@anush008/tokenizers" ] ||
    { echo "bench/tokenizer.sh: run tools/fetch-tokenizers --with-hf first" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM

# the corpus texts as JSON strings, repeated to the size asked
node -e '
const fs = require("fs");
const rows = fs.readFileSync(process.argv[1], "utf8").split("\n").filter(Boolean)
  .map((l) => JSON.parse(l).text).filter((t) => t.length);
let out = [], doc = "", size = 0, target = Number(process.argv[2]) * 1e6, i = 0;
while (size < target) {
  const t = rows[i++ % rows.length] + "\n";
  doc += t; size += Buffer.byteLength(t);
  if (doc.length >= 65536) { out.push(JSON.stringify(doc)); doc = ""; }
}
if (doc) out.push(JSON.stringify(doc));
fs.writeFileSync(process.argv[3], out.join("\n") + "\n");
' "$top/tests/tokenizer/expected-qwen3.jsonl" "$mb" "$work/text.jsonl"

# seconds of the fastest of three pesc runs over FILE (with $tok)
best_of_3() {
    for run in 1 2 3; do
        t0=$(date +%s.%N)
        "$pesc" tokenize --tokenizer "$tok" --jsonl <"$1" >/dev/null
        echo "$t0 $(date +%s.%N)"
    done | awk 'NR == 1 || $2 - $1 < best { best = $2 - $1 } END { printf "%.6f", best }'
}

printf '%-8s %10s %10s %7s\n' tokenizer "pesc MB/s" "HF MB/s" ratio
for name in llama2 llama3 qwen3 gemma3 gemma2 gpt4o; do
    tok="$files/$name/tokenizer.json"
    [ -f "$tok" ] || continue
    # pesc: a run over the text twice minus a run over it once is one encode, load excluded
    bytes=$(node -e 'const fs=require("fs");let n=0;for(const l of fs.readFileSync(process.argv[1],"utf8").split("\n"))if(l)n+=Buffer.byteLength(JSON.parse(l));console.log(n)' "$work/text.jsonl")
    cat "$work/text.jsonl" "$work/text.jsonl" >"$work/twice.jsonl"
    # the fastest of three runs of each, so a stall of the shared machine (or of loading a
    # large vocabulary) in one of them does not turn the difference negative
    once=$(best_of_3 "$work/text.jsonl"); twice=$(best_of_3 "$work/twice.jsonl")
    pesc_mbs=$(echo "$bytes $once $twice" | awk '{ printf "%.2f", $1 / 1e6 / ($3 - $2) }')
    hf_mbs=$(RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false node -e '
const { Tokenizer } = require(process.argv[1]);
const fs = require("fs");
const texts = fs.readFileSync(process.argv[3], "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l));
const tok = Tokenizer.fromFile(process.argv[2]);
(async () => {
  for (let i = 0; i < Math.min(4, texts.length); i++) await tok.encode(texts[i], null, { addSpecialTokens: true });
  let bytes = 0; for (const t of texts) bytes += Buffer.byteLength(t);
  const t0 = process.hrtime.bigint();
  for (const t of texts) await tok.encode(t, null, { addSpecialTokens: true });
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  console.log((bytes / 1e6 / s).toFixed(2));
})();' "$files/node_modules/@anush008/tokenizers" "$tok" "$work/text.jsonl")
    printf '%-8s %10s %10s %7s\n' "$name" "$pesc_mbs" "$hf_mbs" \
        "$(echo "$pesc_mbs $hf_mbs" | awk '{ printf "%.2fx", $1 / $2 }')"
done
