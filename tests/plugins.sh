#!/bin/sh
# plugins.sh — plugins as a user meets them: `pesc plugins` lists modules found through
# PESC_PLUGIN_PATH (a build directory works) with versions and refusals; a broken --plugin is
# one line naming file and problem; `pesc eval --plugin example_format.so --format qa` scores
# a model on the example schema exactly as the same conversations in the built-in camelidae
# format score.
set -u
top_srcdir=${top_srcdir:-.}
top_builddir=${top_builddir:-.}
pesc="$top_builddir/pesc"
plugins="$top_builddir/plugins"
broken="$top_builddir/tests/plugins"
model="$top_srcdir/tests/reference/data/llama-gqa-f32"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/pesc-plugins.XXXXXX") || exit 99
trap 'rm -rf "$tmp"' EXIT
failures=0
. "${top_srcdir:-.}/tests/lib.sh"
unset PESC_PLUGIN_PATH


[ -f "$plugins/.libs/csv.so" ] && [ -f "$plugins/.libs/example_format.so" ] ||
  { echo "the plugin modules are not built in $plugins/.libs"; exit 99; }


expect 0 "usage: pesc plugins" "plugins --help" -- "$pesc" plugins --help
expect 0 "jsonl *built-in" "plugins without modules lists the built-ins" -- env PESC_PLUGIN_PATH="" "$pesc" plugins
expect 0 "tensorboard *1.0" "PESC_PLUGIN_PATH=build dir finds the modules" -- env PESC_PLUGIN_PATH="$plugins" "$pesc" plugins
for name in "csv *1.0" "qa *1.0" "camelidae *built-in" "example_format.so (\$PESC_PLUGIN_PATH)"; do
  grep -q -- "$name" "$tmp/out" || fail "pesc plugins lacks '$name'"
done
expect 0 "refused modules" "broken modules on the path are listed, not fatal" -- env PESC_PLUGIN_PATH="$plugins:$broken" "$pesc" plugins
grep -q "bad_abi.so.*ABI 999" "$tmp/out" && grep -q "undefined_symbol.so.*undefined symbol" "$tmp/out" &&
  grep -q "data_entry.so.*is not a function" "$tmp/out" ||
  fail "refusals lack their reasons: $(cat "$tmp/out")"
expect 1 "bad_abi.so: it was built for plugin ABI 999" "a --plugin of another ABI is an error" -- \
  "$pesc" plugins --plugin "$broken/.libs/bad_abi.so"
expect 1 "no_entry.so: no pesc_plugin_entry symbol" "a --plugin without the entry symbol" -- \
  "$pesc" plugins --plugin "$broken/.libs/no_entry.so"
expect 1 "data_entry.so: its pesc_plugin_entry is not a function" \
  "a --plugin whose entry symbol is a variable is refused (it was called: a crash)" -- \
  "$pesc" plugins --plugin "$broken/.libs/data_entry.so"
# --plugin is the file named: a FIFO must not block dlopen's read, a bare name that is no file
# here must not be looked up on the library path (libc.so.6 would be found there)
mkfifo "$tmp/fifo.so"
expect 1 "fifo.so: not a regular file" "a --plugin FIFO is refused, not waited on" -- \
  timeout 10 "$pesc" plugins --plugin "$tmp/fifo.so"
expect 1 "libc.so.6: cannot load it: No such file" "a --plugin bare name is not searched for" -- \
  sh -c 'cd "$1" && exec "$2" plugins --plugin libc.so.6' sh "$tmp" "$(cd "$top_builddir" && pwd)/pesc"

# a 36-token tokenizer within the reference model's 64-id vocabulary: characters, <unk> for
# the rest, <s> and </s> for the template
{
  printf '{"normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,\n'
  printf ' "added_tokens": [{"id": 1, "content": "<s>", "special": true}, {"id": 2, "content": "</s>", "special": true}],\n'
  printf ' "model": {"type": "BPE", "unk_token": "<unk>", "merges": [], "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2'
  i=3
  for c in a b c d e f g h i j k l m n o p q r s t u v w x y z '#' ' ' ':' '\\n' H A '?'; do
    printf ', "%s": %d' "$c" "$i"; i=$((i + 1))
  done
  printf '}}}\n'
} >"$tmp/tokenizer.json"
printf '{"bos_token": "<s>", "eos_token": "</s>"}\n' >"$tmp/tokenizer_config.json"
printf '{"q": "what is a cat?", "a": "a small animal"}\n{"q": "say hi", "a": "hi", "context": "be nice"}\n' >"$tmp/qa.jsonl"
printf '{"instruction": "", "conversation": [{"input": "what is a cat?", "output": "a small animal"}]}\n{"instruction": "be nice", "conversation": [{"input": "say hi", "output": "hi"}]}\n' >"$tmp/camelidae.jsonl"
printf 'what is a cat?\ta small animal\n' >"$tmp/qa.tsv"

expect 0 '"loss"' "eval, the built-in camelidae format" -- \
  env PESC_PLUGIN_PATH="" "$pesc" eval --model "$model" --tokenizer "$tmp/tokenizer.json" --data "$tmp/camelidae.jsonl" --format camelidae --json
reference=$(cat "$tmp/out")
expect 0 '"loss"' "eval --plugin example_format.so --format qa" -- \
  env PESC_PLUGIN_PATH="" "$pesc" eval --model "$model" --tokenizer "$tmp/tokenizer.json" --data "$tmp/qa.jsonl" --format qa \
  --plugin "$plugins/.libs/example_format.so" --json
[ "$(cat "$tmp/out")" = "$reference" ] && pass "qa records score exactly as camelidae ones: $reference" ||
  fail "qa scored $(cat "$tmp/out"), camelidae $reference"
expect 0 '"loss"' "eval --format auto picks qa from PESC_PLUGIN_PATH" -- \
  env PESC_PLUGIN_PATH="$plugins" "$pesc" eval --model "$model" --tokenizer "$tmp/tokenizer.json" --data "$tmp/qa.jsonl" --json
[ "$(cat "$tmp/out")" = "$reference" ] || fail "auto scored $(cat "$tmp/out"), camelidae $reference"
expect 0 '"tokens"' "eval --format qa reads QUESTION<TAB>ANSWER lines" -- \
  env PESC_PLUGIN_PATH="$plugins" "$pesc" eval --model "$model" --tokenizer "$tmp/tokenizer.json" --data "$tmp/qa.tsv" --format qa --json
expect 2 "\-\-format qa: not a known format (.*PESC_PLUGIN_PATH or \-\-plugin FILE" "--format qa without the plugin" -- \
  env PESC_PLUGIN_PATH="" "$pesc" eval --model "$model" --data "$tmp/qa.jsonl" --format qa
# a format that takes lines gets every line that is not JSON, also after JSON records
{ cat "$tmp/qa.jsonl"; cat "$tmp/qa.tsv"; } >"$tmp/mixed.jsonl"
expect 0 '"tokens"' "eval --format qa reads a QUESTION<TAB>ANSWER line after JSON records" -- \
  env PESC_PLUGIN_PATH="$plugins" "$pesc" eval --model "$model" --tokenizer "$tmp/tokenizer.json" --data "$tmp/mixed.jsonl" --format qa --json
printf '{"q": 1, "a": "x"}\n' >"$tmp/bad.jsonl"
expect 1 'bad.jsonl:1: qa: "q" and "a" must be strings' "a bad qa record names file and line" -- \
  env PESC_PLUGIN_PATH="$plugins" "$pesc" eval --model "$model" --tokenizer "$tmp/tokenizer.json" --data "$tmp/bad.jsonl" --format qa

# a run whose --data no file holds (the demo's, a format plugin's source) resumes from its
# checkpoint alone; gen:6:1 is the source gen:6, weight 1, and is recorded as that
gen="$broken/working/.libs/gen_source.so"
train="$pesc train --model demo --steps 2 --seq 64 --batch 2"
expect 0 "step 2/2" "train --data demo" -- $train --data demo --save "$tmp/r6/ck"
expect 0 "step 3/3" "resume a run on --data demo" -- "$pesc" train --resume "$tmp/r6/ck" --steps 3
expect 0 "step 2/2" "train on a plugin's source gen:6" -- \
  $train --plugin "$gen" --data gen:6:1 --save "$tmp/r7"
expect 0 "step 3/3" "resume a run on a plugin's source" -- \
  "$pesc" train --plugin "$gen" --resume "$tmp/r7" --steps 3
expect 1 "\-\-data gen:6: no file gen (gen:6:1 is the source gen:6 with weight 1)" \
  "--data gen:6 a format claims is read as gen, weight 6: the message says so" -- \
  $train --plugin "$gen" --data gen:6
expect 1 "\-\-data nothere.jsonl:2: no file nothere.jsonl (the number after" \
  "--data FILE:WEIGHT with no FILE" -- $train --data nothere.jsonl:2
expect 1 "the run's data gen:6 cannot be read.*--plugin FILE" "resume without the source's plugin" -- \
  "$pesc" train --resume "$tmp/r7" --steps 4

echo "$failures failure(s)"
[ "$failures" -eq 0 ]
