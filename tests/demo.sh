#!/bin/sh
# demo.sh — `pesc demo-data` as a user meets it, inputs a user gets wrong on the demo model
# (byte order marks, blank lines, empty paths, PATH:WEIGHT, answers past --seq or the
# context, negative token ids), and `pesc eval --routing` on the crafted reference model
# (tests/reference/data/pesc-e4k1) with its two records as two sources.
set -u
top_srcdir=${top_srcdir:-.}
top_builddir=${top_builddir:-.}
pesc="$top_builddir/pesc"
p="$top_srcdir/tests/reference/data/pesc-e4k1"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/pesc-demo.XXXXXX") || exit 99
trap 'rm -rf "$tmp"' EXIT
failures=0
. "${top_srcdir:-.}/tests/lib.sh"



# ---- the built-in demo keeps what the command line sets ----
# (it once replaced --batch, --seq, --lr and --warmup with its own defaults, 16 x 64 at 2e-3)
"$pesc" train --headless --steps 1 --batch 4 --lr 1e-3 --warmup 0 --log "$tmp/given.jsonl" \
  >/dev/null 2>"$tmp/err" || fail "demo training with --batch 4: $(cat "$tmp/err")"
tokens=$(sed -n 's/^{"step":1,.*"tokens":\([0-9]*\),.*/\1/p' "$tmp/given.jsonl")
lr=$(sed -n 's/^{"step":1,.*"lr":\([0-9.e-]*\),.*/\1/p' "$tmp/given.jsonl")
if [ -n "$tokens" ] && [ "$tokens" -gt 0 ] && [ "$tokens" -le 256 ] && close "$lr" 1e-3 1e-6; then
  pass "demo: --batch 4 packs $tokens tokens (<= 4 x 64), --lr 1e-3 --warmup 0 trains at $lr"
else
  fail "demo ignored the command line: $tokens tokens (wanted <= 256), lr '$lr' (wanted 1e-3)"
fi

# a dataset inspect refuses says why in one line (not ten warnings first), and --model demo
# reads the demo's tokenizer
"$pesc" demo-data -o "$tmp/demo20.jsonl" --records 20 >/dev/null 2>&1
expect 1 "demo20.jsonl: no usable records (all 20 were skipped" \
  "inspect of a file refused for its format: one line" -- \
  "$pesc" inspect "$tmp/demo20.jsonl" --model demo --format alpaca
# a config.json with fewer layers than its weights hold is refused, naming a weight left over
cp -r "$top_srcdir/data/demo" "$tmp/two-layers"
sed 's/"num_hidden_layers": *4/"num_hidden_layers": 2/' "$top_srcdir/data/demo/config.json" \
  >"$tmp/two-layers/config.json"
expect 1 "holds model.layers.2.*num_hidden_layers is 2: the config does not describe" \
  "weights of layers past num_hidden_layers are refused" -- \
  "$pesc" generate --model "$tmp/two-layers" --prompt x --max-tokens 1
# a large file of zeros is no log and no text: refused at its first byte, not read whole
truncate -s 20M "$tmp/zeros.jsonl"
expect 1 "zeros.jsonl:1: a NUL byte" "inspect of a zero-filled file: refused at once" -- \
  "$pesc" inspect "$tmp/zeros.jsonl"
# --model demo names the built-in demo's model (from any directory without one called demo)
(cd "$tmp" && "$OLDPWD/$pesc" generate --model demo --prompt 'upper: abc' --max-tokens 4) \
  >"$tmp/out" 2>&1
[ "$(cat "$tmp/out")" = "ABC" ] && pass "--model demo is the demo's model" ||
  fail "--model demo: $(head -c 300 "$tmp/out")"

expect 2 "\-\-format alpaca describes \-\-data files" "demo training refuses a --format it would ignore" -- \
  "$pesc" train --headless --steps 1 --format alpaca
# a typo in a demo: source says what is wrong with it, not that no such file exists
expect 1 "demo:arith: .*'arith' is not a family (arithmetic, " "train --data demo:arith" -- \
  "$pesc" train --headless --model demo --data demo:arith --steps 1
expect 1 "demo:records=0: .*records must be 1\.\.100000000" "eval --data demo:records=0" -- \
  "$pesc" eval --model demo --data demo:records=0
expect 1 "demo:seed=x: .*seed must be a non-negative integer" "train --data demo:seed=x" -- \
  "$pesc" train --headless --model demo --data demo:seed=x --steps 1

# ---- inputs a user gets wrong, on the demo model ----
d="$top_srcdir/data/demo"
"$pesc" demo-data -o "$tmp/eight.jsonl" --records 8 --seed 3 >/dev/null || exit 99
# eval_json ARGS...: what pesc eval --json prints (empty on failure)
eval_json() { "$pesc" eval --backend cpu --json "$@" 2>/dev/null; }

# the epoch in the log and the status line is fractional: 8 records in rows of one, 2 a step
"$pesc" train --headless --model "$d" --data "$tmp/eight.jsonl" --batch 2 --steps 5 --backend cpu \
  --log "$tmp/epochs.jsonl" >/dev/null 2>&1
epochs=$(grep -o '"epoch":[0-9.]*' "$tmp/epochs.jsonl" | cut -d: -f2 | tr '\n' ' ')
[ "$epochs" = "0.25 0.5 0.75 1.0 1.25 " ] && pass "the epoch goes 0.25 a step over 8 records, 2 a step" \
  || fail "epochs in the log: '$epochs'"

# a UTF-8 byte order mark (as some Windows editors save) before config.json, tokenizer.json,
# tokenizer_config.json, a sharded model's index, a data file or the lines of tokenize --jsonl
# changes nothing
bom=$(printf '\357\273\277')
mkdir "$tmp/bom"
for f in config.json tokenizer.json tokenizer_config.json eight.jsonl; do
  src="$d/$f"; [ "$f" = eight.jsonl ] && src="$tmp/$f"
  { printf '%s' "$bom"; cat "$src"; } >"$tmp/bom/$f"
done
ln -s "$(cd "$d" && pwd)/model.safetensors" "$tmp/bom/model.safetensors"
plain=$(eval_json --model "$d" --data "$tmp/eight.jsonl")
marked=$(eval_json --model "$tmp/bom" --data "$tmp/bom/eight.jsonl")
if [ -n "$plain" ] && [ "$plain" = "$marked" ]; then
  pass "byte order marks in the model's JSON files and the data: the same eval ($marked)"
else
  fail "byte order marks: eval '$marked', without them '$plain'"
fi
sharded="$top_srcdir/tests/reference/data/mistral-sharded-f16"
mkdir "$tmp/shards" && cp "$sharded"/model-0000* "$sharded/config.json" "$tmp/shards/"
{ printf '%s' "$bom"; cat "$sharded/model.safetensors.index.json"; } >"$tmp/shards/model.safetensors.index.json"
plain=$(eval_json --model "$sharded" --data "$sharded/records.jsonl")
marked=$(eval_json --model "$tmp/shards" --data "$sharded/records.jsonl")
[ -n "$plain" ] && [ "$plain" = "$marked" ] && pass "... and in a sharded model's index" ||
  fail "a byte order mark in model.safetensors.index.json: eval '$marked', without it '$plain'"
a=$(printf '"hi"\n' | "$pesc" tokenize --model "$d" --jsonl)
b=$(printf '%s"hi"\n' "$bom" | "$pesc" tokenize --model "$d" --jsonl 2>&1)
[ -n "$a" ] && [ "$a" = "$b" ] && pass "tokenize --jsonl skips a byte order mark" || fail "tokenize --jsonl after a BOM: '$b', wanted '$a'"
printf '"h\377i"\n' >"$tmp/latin.jsonl"
expect 1 "stdin:1: not valid UTF-8 (byte 3 of the line" "tokenize --jsonl says a string is not UTF-8" \
  -- sh -c "'$pesc' tokenize --model '$d' --jsonl <'$tmp/latin.jsonl'"

# tokenize --jsonl and --decode keep one output line per input line, blank ones too
printf '"a"\n\n"b"\n \n' | "$pesc" tokenize --model "$d" --jsonl >"$tmp/ids.jsonl" 2>"$tmp/err"
"$pesc" tokenize --model "$d" --decode <"$tmp/ids.jsonl" >"$tmp/text.jsonl" 2>>"$tmp/err"
b_ids=$(printf '"b"\n' | "$pesc" tokenize --model "$d" --jsonl)
if [ "$(wc -l <"$tmp/ids.jsonl")" -eq 4 ] && [ -z "$(sed -n 2p "$tmp/ids.jsonl")" ] &&
   [ "$(sed -n 3p "$tmp/ids.jsonl")" = "$b_ids" ] && [ -z "$(sed -n 4p "$tmp/ids.jsonl")" ] &&
   [ "$(wc -l <"$tmp/text.jsonl")" -eq 4 ] && [ "$(sed -n 3p "$tmp/text.jsonl")" = '"<s>b"' ]; then
  pass "tokenize --jsonl: a blank line for a blank line, and back through --decode"
else
  fail "tokenize blank lines: $(cat "$tmp/ids.jsonl" "$tmp/text.jsonl" "$tmp/err" | tr '\n' '|')"
fi

# an empty path is named as '' (or is a usage error), and nothing is written for it
expect 2 "PATH '': the path is empty; name a model directory" "inspect ''" -- "$pesc" inspect ""
expect 2 "\-\-model '': the path is empty; name a model directory" "tokenize --model ''" -- "$pesc" tokenize --model ""
expect 2 "^pesc eval: \-\-data '': the path is empty" "eval --data '' is a usage error" -- \
  "$pesc" eval --model "$d" --data ""
mkdir "$tmp/cwd"
expect 2 "\-o '': the path is empty; name a file, or - for standard output" "demo-data -o '' is a usage error" -- \
  sh -c 'cd "$1" && exec "$2" demo-data -o "" --records 2' sh "$tmp/cwd" "$(cd "$(dirname "$pesc")" && pwd)/pesc"
[ -z "$(ls -A "$tmp/cwd")" ] && pass "... and leaves no temporary behind" || fail "-o '' left $(ls -A "$tmp/cwd")"

# a file whose name ends in :NUMBER: the number is a weight, and the message says so
cp "$tmp/eight.jsonl" "$tmp/x:5"
expect 2 "':5' is read as a weight .*give $tmp/x:5:1" "--data FILE:5 where FILE:5 is the file" -- \
  "$pesc" train --headless --model "$d" --data "$tmp/x:5" --steps 1 --backend cpu
expect 2 "'abc' is no weight" "--data FILE:abc where FILE exists" -- \
  "$pesc" train --headless --model "$d" --data "$tmp/eight.jsonl:abc" --steps 1 --backend cpu

# an answer past --seq (a long question) is nothing to learn: refused alone, noted among others
awk 'BEGIN { q = ""; for (i = 0; i < 60; i++) q = q "ab "; printf "{\"instruction\": \"\", \"conversation\": [{\"input\": \"%s\", \"output\": \"yes\"}]}\n", q }' >"$tmp/late.jsonl"
expect 1 "no token to learn within \-\-seq 32: .*raise \-\-seq" "answers all past --seq are refused" -- \
  "$pesc" train --headless --model "$d" --data "$tmp/late.jsonl" --seq 32 --steps 1 --backend cpu
cat "$tmp/late.jsonl" "$tmp/eight.jsonl" >"$tmp/some-late.jsonl"
expect 0 "records with no answer within \-\-seq 32: 1 of 9" "a record whose answer is past --seq is noted" -- \
  "$pesc" train --headless --model "$d" --data "$tmp/some-late.jsonl" --seq 32 --batch 4 --steps 1 \
  --backend cpu --log "$tmp/late-log.jsonl"
grep -q '"event":"note".*no answer within --seq 32: 1 of 9' "$tmp/late-log.jsonl" &&
  pass "... in the log too" || fail "no note in the log: $(grep event "$tmp/late-log.jsonl")"
# its time is the run's (seconds from the start), not the clock's since the epoch
note_s=$(grep '"event":"note".*no answer within' "$tmp/late-log.jsonl" |
  sed -n 's/.*"elapsed_s":\([0-9.e+-]*\),.*/\1/p')
awk -v t="$note_s" 'BEGIN { exit !(t != "" && t >= 0 && t < 600) }' &&
  pass "the note's elapsed_s ($note_s) counts from the run's start" || fail "the note's elapsed_s is '$note_s'"

# eval sees the model's context (128 tokens on the demo), not --seq: a question longer than
# that leaves nothing to score, and the one line says so
awk 'BEGIN { q = ""; for (i = 0; i < 200; i++) q = q "ab "; printf "{\"instruction\": \"\", \"conversation\": [{\"input\": \"%s\", \"output\": \"yes\"}]}\n", q }' >"$tmp/beyond.jsonl"
expect 1 "no token is predicted within the model's context of 128 tokens .*lies past it" \
  "eval of a record whose answer is past the context" -- "$pesc" eval --model "$d" --data "$tmp/beyond.jsonl"
# ... and trained, at --seq cut to that context (the default): raising --seq is no advice there
cat "$tmp/beyond.jsonl" "$tmp/eight.jsonl" >"$tmp/some-beyond.jsonl"
expect 0 "records longer than \-\-seq 128: 1 of 9, .*; \-\-seq 128 is all of the model's context (128 tokens, max_position_embeddings): split or shorten the records" \
  "records cut at the model's context: what helps is said, not 'raise --seq'" -- \
  "$pesc" train --headless --model "$d" --data "$tmp/some-beyond.jsonl" --batch 4 --steps 1 --backend cpu
grep -q "no answer within \-\-seq 128: 1 of 9 (their answers lie past it); they train nothing; \-\-seq 128 is all of the model's context (128 tokens, max_position_embeddings): shorten their prompts" "$tmp/err" &&
  ! grep -q "raise \-\-seq" "$tmp/err" &&
  pass "... and answers past it: shorten the prompts" || fail "answers past the context: $(cat "$tmp/err")"

# inspect checks ids against no vocabulary: a negative one is no token id, with no "(0..-1)"
printf '{"input_ids": [1, -5, 3]}\n' >"$tmp/negative.jsonl"
expect 1 "negative.jsonl:1: \"input_ids\"\[1\] = -5 is not a token id (0 or more)$" \
  "inspect of a tokens file with a negative id" -- "$pesc" inspect "$tmp/negative.jsonl"

# ---- demo-data ----
expect 0 "usage: pesc demo-data" "demo-data --help" -- "$pesc" demo-data --help
expect 0 "demo-data" "listed in pesc --help" -- "$pesc" --help
expect 2 "\-o FILE is required (\-o \- writes to standard output)" "demo-data without -o" -- "$pesc" demo-data
expect 2 "\-\-family nope: the families are arithmetic" "unknown family" -- "$pesc" demo-data -o x --family nope
expect 2 "\-\-records 0: expected an integer from 1 to 100000000" "zero records" -- "$pesc" demo-data -o x --records 0
expect 2 "\-\-seed -1" "negative seed" -- "$pesc" demo-data -o x --seed -1
: >"$tmp/a-file"
expect 1 "$tmp/a-file/d.jsonl: cannot create a file in $tmp/a-file: Not a directory" \
  "unwritable output names the file" -- "$pesc" demo-data -o "$tmp/a-file/d.jsonl"
"$pesc" demo-data -o "$tmp/made/here/d.jsonl" --records 2 && [ "$(wc -l <"$tmp/made/here/d.jsonl")" -eq 2 ] \
  && pass "an output in directories not made yet makes them" || fail "demo-data -o in a new directory"

"$pesc" demo-data -o "$tmp/all.jsonl" || fail "demo-data -o FILE"
[ "$(wc -l <"$tmp/all.jsonl")" -eq 6000 ] || fail "demo-data wrote $(wc -l <"$tmp/all.jsonl") records, wanted 6000"
for family in arithmetic reverse sort count case lookup; do
  n=$(grep -c "\"source\": \"$family\"" "$tmp/all.jsonl")
  [ "$n" -eq 1000 ] || fail "family $family: $n records, wanted 1000"
done
"$pesc" demo-data -o "$tmp/again.jsonl" && cmp -s "$tmp/all.jsonl" "$tmp/again.jsonl" \
  && pass "same seed, same file" || fail "demo-data is not reproducible"
# a file already there is not replaced unasked (it may be the user's own data)
expect 1 "again.jsonl is already there (.* bytes): give \-\-force to replace it" \
  "demo-data refuses to replace a file" -- "$pesc" demo-data -o "$tmp/again.jsonl" --seed 3
cmp -s "$tmp/all.jsonl" "$tmp/again.jsonl" || fail "a refused demo-data changed the file"
# a failed write (past a file size limit, which pesc does not die of: it fails the write as a
# full disk does) leaves an existing FILE whole
mkdir "$tmp/full" && cp "$tmp/all.jsonl" "$tmp/full/d.jsonl"
expect 1 "$tmp/full/d.jsonl: File too large; the file size limit (ulimit -f)" \
  "a file past ulimit -f is one line that names the file and the limit" -- \
  sh -c 'ulimit -f 64; exec "$@"' sh "$pesc" demo-data -o "$tmp/full/d.jsonl" --seed 3 --force
cmp -s "$tmp/all.jsonl" "$tmp/full/d.jsonl" && [ "$(ls -A "$tmp/full")" = d.jsonl ] &&
  pass "... and the existing file is untouched, no temporary left" ||
  fail "a full disk changed the existing file or left $(ls -A "$tmp/full")"
expect 1 "$tmp/full is a directory" "a directory as -o is called one" -- "$pesc" demo-data -o "$tmp/full"
"$pesc" demo-data -o - --records 50 --seed 7 >"$tmp/seed7.jsonl"
cmp -s "$tmp/seed7.jsonl" "$tmp/all.jsonl" && fail "--seed changes nothing"
head -n 50 "$tmp/all.jsonl" | cmp -s - "$tmp/seed7.jsonl" && fail "--seed 7 gives the default records"
"$pesc" demo-data -o - --records 50 --seed 7 | cmp -s - "$tmp/seed7.jsonl" \
  && pass "--seed is reproducible" || fail "--seed 7 twice differs"
"$pesc" demo-data -o "$tmp/rev.jsonl" --family reverse --records 20
if [ "$(grep -c '"source": "reverse"' "$tmp/rev.jsonl")" -eq 20 ] &&
   grep -q '"input": "reverse: [a-z]*", "output": "[a-z]*"' "$tmp/rev.jsonl"; then
  pass "--family reverse"
else
  fail "--family reverse: $(head -n 2 "$tmp/rev.jsonl")"
fi
# the reverse answers, checked by the shell
bad=$(sed -n 's/.*"input": "reverse: \([a-z]*\)", "output": "\([a-z]*\)".*/\1 \2/p' "$tmp/rev.jsonl" |
      while read -r word answer; do
        [ "$(printf '%s' "$word" | rev)" = "$answer" ] || echo "$word"
      done)
[ -z "$bad" ] && pass "reverse answers" || fail "wrong reversal of: $bad"
# arithmetic answers, checked by awk
awk -F'"' '/"source": "arithmetic"/ { split($10, t, /[-+]/); want = index($10, "+") ? t[1] + t[2] : t[1] - t[2];
     if (want != $14 && bad++ == 0) print } END { exit bad > 0 }' "$tmp/all.jsonl" \
  && pass "arithmetic answers" || fail "arithmetic answers are wrong"

# ---- eval --routing on the crafted reference model, one record per source ----
head -n 1 "$p/records.jsonl" >"$tmp/first.jsonl"
tail -n 1 "$p/records.jsonl" >"$tmp/second.jsonl"
a="$p/trainables.safetensors"
expect 0 '"routing"' "eval --routing --json" -- "$pesc" eval --model "$p" --adapters "$a" \
  --data "$tmp/first.jsonl" --data "$tmp/second.jsonl" --routing --json
cp "$tmp/out" "$tmp/routing.json"
# the scores are the same as without --routing, and as for one file with both records
loss=$(sed -n 's/.*"loss": \([^,]*\),.*/\1/p' "$tmp/routing.json")
awk -v a="$loss" 'BEGIN { d = a - 4.868344877774743; exit !(d < 5e-5 && d > -5e-5) }' \
  && pass "two sources: the loss PyTorch computed" || fail "two sources: loss '$loss'"
/usr/bin/python3 - "$tmp/routing.json" <<'PY' && pass "routing figures are consistent" || fail "routing figures"
import json, math, sys
r = json.load(open(sys.argv[1]))["routing"]
assert r["layers"] == 2 and r["experts"] == 4 and r["top_k"] == 1, r
assert [s["name"].rsplit("/", 1)[1] for s in r["sources"]] == ["first.jsonl", "second.jsonl"]
assert all(s["tokens"] == 12 for s in r["sources"]), r["sources"]
for s in r["sources"]:
    for layer in s["share"]:
        assert len(layer) == 4 and abs(sum(layer) - 1) < 1e-5, layer
        assert all(abs(x * 12 - round(x * 12)) < 1e-4 for x in layer), layer   # counts / 12
def js(p, q):
    m = [(a + b) / 2 for a, b in zip(p, q)]
    kl = lambda x: sum(a * math.log2(a / c) for a, c in zip(x, m) if a > 0)
    return (kl(p) + kl(q)) / 2
for l in range(2):
    want = js(r["sources"][0]["share"][l], r["sources"][1]["share"][l])
    assert abs(r["divergence"][l] - want) < 1e-5 and 0 < want <= 1, (l, r["divergence"], want)
assert abs(r["mean_divergence"] - sum(r["divergence"]) / 2) < 1e-5
PY
# a source alone routes its tokens as it does next to another
"$pesc" eval --model "$p" --adapters "$a" --data "$tmp/first.jsonl" --routing --json >"$tmp/alone.json"
/usr/bin/python3 - "$tmp/routing.json" "$tmp/alone.json" <<'PY' && pass "routing of a source alone" || fail "routing of a source alone differs"
import json, sys
both, alone = (json.load(open(f))["routing"] for f in sys.argv[1:3])
assert both["sources"][0]["share"] == alone["sources"][0]["share"]
assert alone["divergence"] == [None, None] and alone["mean_divergence"] is None
PY
expect 0 "divergence between sources (mean pairwise Jensen-Shannon, bits): 0\.[0-9]" \
  "eval --routing text" -- "$pesc" eval --model "$p" --adapters "$a" --data "$tmp/first.jsonl" \
  --data "$tmp/second.jsonl" --routing
grep -q "^mean divergence over layers: 0\.[0-9]" "$tmp/out" || fail "text: no mean divergence"
[ "$(grep -c "first.jsonl" "$tmp/out")" -eq 2 ] || fail "text: a row per source and layer"
expect 1 "\-\-routing needs a crafted model" "eval --routing of a dense model" -- \
  "$pesc" eval --model "$p" --data "$tmp/first.jsonl" --routing
expect 2 "\-\-demo and \-\-data" "--demo with --data" -- "$pesc" eval --model "$p" --demo --data x
expect 2 "\-\-data FILE (or \-\-demo, or \-\-choices FILE) is required" "eval without data" -- "$pesc" eval --model "$p"

# the demo families as sources need the demo model (data/demo), made by tools/make-demo-base
if [ -f "$d/model.safetensors" ]; then
  expect 0 "^loss " "eval --demo on the demo base model" -- "$pesc" eval --model "$d" --demo --records 5
else
  echo "skip eval --demo (no demo base model yet; tools/make-demo-base)"
fi

echo "$failures failure(s)"
[ "$failures" -eq 0 ]
