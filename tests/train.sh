#!/bin/sh
# train.sh — pesc train --headless as a user drives it: the JSONL log, the control socket,
# Ctrl-C, SIGHUP and a closed stdout (finish the step, save), kill -9 during saves (the last
# checkpoint always loads), the token store in TMPDIR (left clean, its errors), and resuming
# on a mismatched run refused.
set -u
top_srcdir=${top_srcdir:-.}
top_builddir=${top_builddir:-.}
pesc="$top_builddir/pesc"
sockcmd="$top_builddir/tests/sockcmd"
base="$top_srcdir/tests/reference/data/llama-gqa-f32"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/pesc-train.XXXXXX") || exit 99
pids=""
trap 'for p in $pids; do kill -9 "$p" 2>/dev/null; done; rm -rf "$tmp"' EXIT
failures=0
. "${top_srcdir:-.}/tests/lib.sh"

# 64 records of 20 random ids below the model's vocabulary of 64
awk 'BEGIN { srand(7); for (r = 0; r < 64; r++) { printf "{\"input_ids\": ["; for (t = 0; t < 20; t++) printf "%s%d", t ? ", " : "", int(rand() * 64); print "]}" } }' >"$tmp/data.jsonl"
common="--model $base --data $tmp/data.jsonl --seq 24 --batch 4 --experts 4 --adapter-dim 8 --lr 1e-2 --backend cpu"

# a short run: progress lines, the log, the final checkpoint
# shellcheck disable=SC2086
"$pesc" train --headless $common --steps 6 --log "$tmp/run.jsonl" --save "$tmp/ck" --save-every 3 >"$tmp/out" 2>"$tmp/err"
status=$?
steps=$(grep -c '"loss"' "$tmp/run.jsonl" 2>/dev/null)
if [ $status -eq 0 ] && [ "$steps" = 6 ] && head -n 1 "$tmp/run.jsonl" | grep -q '"event":"start"' &&
   grep -q 'step 6/6' "$tmp/out" && [ -f "$tmp/ck/step-00000006/state.json" ] &&
   [ -f "$tmp/ck/step-00000003/state.json" ] &&
   grep -q '"load":\[\[' "$tmp/run.jsonl"; then
  pass "headless run: 6 step records with loads in the log, progress lines, checkpoints at 3 and 6"
else
  fail "headless run: exit $status, $steps step records: $(head -c 300 "$tmp/err")"
fi
# on a terminal a slow start says what it does (loading, tokenizing) in one line that the
# progress, or an error, then replaces; without one (above) nothing of it is printed
# shellcheck disable=SC2086
script -qec "'$pesc' train --headless $common --steps 1" /dev/null </dev/null >"$tmp/tty.out" 2>&1
grep -q "pesc train: loading the model from .*pesc train: reading and tokenizing the data" "$tmp/tty.out" &&
  tty_lines "$tmp/tty.out" | tail -n 1 | grep -q "^step 1/1" &&
  pass "on a terminal, the start's phases show, and the progress line replaces them" ||
  fail "phases on a terminal: $(cat -v "$tmp/tty.out" | head -c 400)"
grep -q "loading the model" "$tmp/err" && fail "without a terminal the phases were printed: $(head -c 300 "$tmp/err")"
# shellcheck disable=SC2086
script -qec "'$pesc' train --headless $common --steps 1 --data '$tmp/missing.jsonl'" /dev/null </dev/null >"$tmp/tty.out" 2>&1
tty_lines "$tmp/tty.out" | tail -n 1 | grep -q "^pesc train: .*missing.jsonl" &&
  pass "on a terminal, an error after the phases is a clean line of its own" ||
  fail "an error after the phases: $(cat -v "$tmp/tty.out" | head -c 400)"
# the periodic save on the last step is the final checkpoint: step 6 is written once
saves=$(grep -c '"event":"save"' "$tmp/run.jsonl")
[ "$saves" = 2 ] && pass "a periodic save on the last step is not written again at the end" ||
  fail "a run saving every 3 of 6 steps logged $saves saves, wanted 2: $(grep '"save"' "$tmp/run.jsonl")"

# --recompute: the same run, the same losses to the last digit
# shellcheck disable=SC2086
"$pesc" train --headless $common --steps 6 --recompute --log "$tmp/rc.jsonl" >/dev/null 2>&1
losses() { sed -n 's/.*"loss":\([^,]*\),.*/\1/p' "$1"; }
if [ "$(losses "$tmp/rc.jsonl" | wc -l)" = 6 ] && [ "$(losses "$tmp/rc.jsonl")" = "$(losses "$tmp/run.jsonl")" ]; then
  pass "--recompute: the six losses equal the run's without it"
else
  fail "--recompute: losses $(losses "$tmp/rc.jsonl" | tr '\n' ' ') vs $(losses "$tmp/run.jsonl" | tr '\n' ' ')"
fi

# --neftune: noise on the embeddings changes the run, the same again for the same seed, and the
# step's losses of a resumed run are the uninterrupted one's (the noise drawn from the run's
# generator, which the checkpoint keeps); --recompute draws it once, as without
for run in nef nef2; do
  # shellcheck disable=SC2086
  "$pesc" train --headless $common --steps 6 --neftune 5 --log "$tmp/$run.jsonl" \
    --save "$tmp/ck-$run" --save-every 3 >/dev/null 2>&1
done
# shellcheck disable=SC2086
"$pesc" train --headless $common --steps 6 --neftune 5 --recompute --log "$tmp/nefrc.jsonl" >/dev/null 2>&1
rm -rf "$tmp/ck-nefr" && mkdir -p "$tmp/ck-nefr" && cp -r "$tmp/ck-nef/step-00000003" "$tmp/ck-nefr/"
"$pesc" train --headless --resume "$tmp/ck-nefr" --log "$tmp/nefr.jsonl" >/dev/null 2>"$tmp/err"
if [ "$(losses "$tmp/nef.jsonl" | wc -l)" = 6 ] && [ "$(losses "$tmp/nef.jsonl")" != "$(losses "$tmp/run.jsonl")" ] &&
   [ "$(losses "$tmp/nef.jsonl")" = "$(losses "$tmp/nef2.jsonl")" ] &&
   [ "$(losses "$tmp/nef.jsonl")" = "$(losses "$tmp/nefrc.jsonl")" ] &&
   [ "$(losses "$tmp/nefr.jsonl")" = "$(losses "$tmp/nef.jsonl" | tail -n 3)" ] &&
   "$pesc" inspect "$tmp/ck-nef" | grep -q "^neftune       5: the embeddings' noise while training"; then
  pass "--neftune 5: other losses than without, the same twice, with --recompute and resumed"
else
  fail "--neftune: $(losses "$tmp/nef.jsonl" | tr '\n' ' ') / twice $(losses "$tmp/nef2.jsonl" | tr '\n' ' ') / recompute $(losses "$tmp/nefrc.jsonl" | tr '\n' ' ') / resumed $(losses "$tmp/nefr.jsonl" | tr '\n' ' ') / without $(losses "$tmp/run.jsonl" | tr '\n' ' '): $(head -c 300 "$tmp/err")"
fi

# --config: the same run from a file of its options gives the same losses; the command line's
# own override the file's, and its --data list replaces the file's
cat >"$tmp/run.yaml" <<EOF
# the short run above
model: $base
data:
  - $tmp/data.jsonl
seq: 24
batch: 4
experts: 4
adapter_dim: 8    # '_' for '-'
lr: 1e-2
backend: cpu
steps: 6
recompute: false
EOF
"$pesc" train --headless --config "$tmp/run.yaml" --log "$tmp/cfg.jsonl" >/dev/null 2>"$tmp/err"
[ "$(losses "$tmp/cfg.jsonl" | wc -l)" = 6 ] && [ "$(losses "$tmp/cfg.jsonl")" = "$(losses "$tmp/run.jsonl")" ] &&
  pass "--config: a file of the run's options gives its six losses" ||
  fail "--config: losses $(losses "$tmp/cfg.jsonl" | tr '\n' ' ') vs $(losses "$tmp/run.jsonl" | tr '\n' ' '): $(head -c 300 "$tmp/err")"
sed -e 's/^lr: .*/lr: 5e-2/' -e 's/^steps: .*/steps: 9/' -e "s|^  - .*|  - $tmp/missing.jsonl|" \
  "$tmp/run.yaml" >"$tmp/over.yaml"
"$pesc" train --headless --config "$tmp/over.yaml" --lr 1e-2 --steps 6 --data "$tmp/data.jsonl" \
  --log "$tmp/over.jsonl" >/dev/null 2>"$tmp/err"
[ "$(losses "$tmp/over.jsonl")" = "$(losses "$tmp/run.jsonl")" ] &&
  pass "--config: --lr, --steps and --data on the command line override the file's" ||
  fail "--config overridden: losses $(losses "$tmp/over.jsonl" | tr '\n' ' '): $(head -c 300 "$tmp/err")"
# --print-config: the options given, as a file that gives the same run, and prints itself
# again; a value YAML would misread is quoted
# shellcheck disable=SC2086
"$pesc" train --headless $common --steps 6 --print-config >"$tmp/printed.yaml" 2>"$tmp/err"
"$pesc" train --headless --config "$tmp/printed.yaml" --log "$tmp/printed.jsonl" >/dev/null 2>>"$tmp/err"
"$pesc" train --headless --config "$tmp/printed.yaml" --print-config >"$tmp/reprinted.yaml" 2>>"$tmp/err"
[ "$(losses "$tmp/printed.jsonl")" = "$(losses "$tmp/run.jsonl")" ] &&
  cmp -s "$tmp/printed.yaml" "$tmp/reprinted.yaml" && ! grep -q '^headless' "$tmp/printed.yaml" &&
  pass "--print-config: a file of the flags that gives their run's losses, and itself again" ||
  fail "--print-config: losses $(losses "$tmp/printed.jsonl" | tr "\n" " "), reprinted: $(diff "$tmp/printed.yaml" "$tmp/reprinted.yaml" | head -c 300)"
expect 0 '^log: "-x: y #z"$' "--print-config quotes what YAML would misread" -- \
  "$pesc" train --headless --log "-x: y #z" --print-config
# pack: False in a file is --no-pack, which the demo (packing by default) obeys; printed back
printf 'pack: False\nsteps: 1\n' >"$tmp/nopack.yaml"
"$pesc" train --headless --config "$tmp/nopack.yaml" --save "$tmp/nopack" >/dev/null 2>&1
grep -q '"pack": false' "$tmp/nopack/step-00000001/state.json" &&
  [ "$("$pesc" train --headless --config "$tmp/nopack.yaml" --print-config | grep pack)" = "pack: False" ] &&
  [ "$("$pesc" train --headless --no-pack --print-config | grep pack)" = "pack: false" ] &&
  pass "pack: False (and --no-pack) turns the demo's packing off" ||
  fail "pack: False: $(grep -o '"pack": [a-z]*' "$tmp/nopack/step-00000001/state.json")"
printf 'steps: 2\nexperts: 4\nlearning_rate: 1e-3\n' >"$tmp/bad.yaml"
expect 2 "bad.yaml:3: unknown option 'learning_rate': pesc's name for it is 'lr'" \
  "--config: an option of another trainer's name is refused at its line, with pesc's" -- \
  "$pesc" train --headless --config "$tmp/bad.yaml" --log "$tmp/bad.jsonl"
[ -e "$tmp/bad.jsonl" ] && fail "a refused --config run made its log"
printf 'neftune_noise_alpha: 5\n' >"$tmp/bad.yaml"
expect 2 "bad.yaml:1: unknown option 'neftune_noise_alpha': pesc's name for it is 'neftune'" \
  "--config: LLaMA-Factory's NEFTune name is told pesc's" -- \
  "$pesc" train --headless --config "$tmp/bad.yaml"
expect 0 "^neftune: 5$" "--print-config writes --neftune" -- \
  "$pesc" train --headless --neftune 5 --print-config
printf 'steps: 2\nexperts: 4\nexperts: 8\n' >"$tmp/bad.yaml"
expect 2 "bad.yaml:3: 'experts' again: line 2 gave it already" \
  "--config: an option given twice in the file is refused" -- \
  "$pesc" train --headless --config "$tmp/bad.yaml"
printf 'steps: 2\ntop_k: 0\n' >"$tmp/bad.yaml"
expect 2 "bad.yaml:2: --top-k 0" "--config: a bad value is refused at its line" -- \
  "$pesc" train --headless --config "$tmp/bad.yaml"
expect 2 "pesc train: --config $tmp/none.yaml: No such file" "--config: a missing file" -- \
  "$pesc" train --headless --config "$tmp/none.yaml"
printf 'steps: 2\nprint-config: true\n' >"$tmp/bad.yaml"
expect 2 "bad.yaml:2: a config file cannot give 'print-config': give --print-config on the" \
  "--config: print-config in the file is refused at its line" -- \
  "$pesc" train --headless --config "$tmp/bad.yaml"
printf 'headless: true\n' >"$tmp/bad.yaml"
expect 2 "bad.yaml:1: 'headless' is a run without the workbench" \
  "--config: headless in a file pesc tui is given is refused at its line" -- \
  "$pesc" tui --config "$tmp/bad.yaml"

# --eval-choices: multiple-choice questions scored at each evaluation (the built-in demo's
# model answers its tasks'), their accuracy in the log's step records and an eval event, the
# csv sink's eval_accuracy column; --resume alone goes on scoring them
mc="$top_srcdir/tests/choices-demo.jsonl"
"$pesc" train --headless --steps 4 --eval-choices "$mc" --eval-every 2 --log "$tmp/mc.log" \
  --sink "csv:$tmp/mc.csv" --save "$tmp/mcck" >/dev/null 2>"$tmp/err"
status=$?
evals=$(grep -c '"eval_accuracy":1.0,"eval_accuracy_norm":1.0,"eval_questions":8' "$tmp/mc.log")
column=$(head -n 1 "$tmp/mc.csv" 2>/dev/null | tr ',' '\n' | grep -n '^eval_accuracy$' | cut -d: -f1)
cells=$([ -n "$column" ] && cut -d, -f"$column" "$tmp/mc.csv" | tail -n +2 | tr '\n' ' ')
if [ $status -eq 0 ] && [ "$evals" = 2 ] && [ "$cells" = " 1  1 " ] &&
   [ "$(grep -c '"event":"eval".*eval accuracy 1.0000 (1.0000 a byte) on 8 questions, chance 0.2500' "$tmp/mc.log")" = 2 ]; then
  pass "--eval-choices: the accuracy after steps 2 and 4 (8 of 8), in the log, an event and the csv"
else
  fail "--eval-choices: exit $status, $evals evaluations, csv column $column cells '$cells': $(head -c 300 "$tmp/err")"
fi
"$pesc" train --headless --resume "$tmp/mcck" --steps 6 >/dev/null 2>"$tmp/err"
[ "$(grep -c '"eval_questions":8' "$tmp/mc.log")" = 3 ] &&
  pass "--eval-choices: --resume alone scores the run's questions on" ||
  fail "--eval-choices resumed: $(grep -c '"eval_questions"' "$tmp/mc.log") evaluations: $(head -c 300 "$tmp/err")"
printf '{"question": "q", "choices": ["a"], "answer": 0}\n' >"$tmp/mc-bad.jsonl"
expect 1 "\-\-eval-choices: $tmp/mc-bad.jsonl:1: \"choices\" holds 1 option" \
  "--eval-choices: a bad question refuses the run before it starts" -- \
  "$pesc" train --headless --steps 2 --eval-choices "$tmp/mc-bad.jsonl" --log "$tmp/mc-bad.log"
[ -e "$tmp/mc-bad.log" ] && fail "a run refused for its --eval-choices made its log"
# shellcheck disable=SC2086
expect 1 "\-\-eval-choices $mc: the questions are text, and the run has no tokenizer" \
  "--eval-choices on token data without a tokenizer" -- \
  "$pesc" train --headless $common --steps 2 --eval-choices "$mc"
expect 0 "step 2/2" "--eval-every with --eval-choices alone" -- \
  "$pesc" train --headless --steps 2 --eval-choices "$mc" --eval-every 1

# --eval-generate: the held-out records' answers generated at each evaluation (the built-in
# demo's 300 by default, matched exactly), the share right in the log's step records, an eval
# event and the csv; as many right as pesc eval --generate finds with that step's checkpoint
# (a learning rate that moves them within 4 steps: 156 and 151 right); --resume alone goes on
# generating them
"$pesc" train --headless --steps 4 --eval-every 2 --lr 3e-2 --warmup 0 --log "$tmp/gen.log" \
  --sink "csv:$tmp/gen.csv" --save "$tmp/genck" >/dev/null 2>"$tmp/err"
status=$?
evals=$(grep -c '"eval_answer_accuracy":0\.[0-9]*,"eval_answers":300' "$tmp/gen.log")
column=$(head -n 1 "$tmp/gen.csv" 2>/dev/null | tr ',' '\n' | grep -n '^eval_answer_accuracy$' | cut -d: -f1)
cells=$([ -n "$column" ] && cut -d, -f"$column" "$tmp/gen.csv" | tail -n +2 | sed 's/^0\.[0-9]*$/x/' | tr '\n' ' ')
right_at() { grep "\"event\":\"eval\",\"step\":$1,.*eval answers 0\\.[0-9]* right (" "$tmp/gen.log" | sed -n 's/.* right (\([0-9]*\) of 300, exact match).*/\1/p'; }
right=$(right_at 4)
"$pesc" eval --adapters "$tmp/genck" --demo --records 50 --generate --backend cpu >"$tmp/out" 2>&1
scored=$(sed -n 's/^accuracy .*(\([0-9]*\) of 300 answers right, exact match.*/\1/p' "$tmp/out")
# and by family: eval's "arithmetic: 0.2800 (14 of 50)" lines as the run's event has them
families=$(awk -F'[: ]+' '/^[a-z]+: [01]\.[0-9]+ \([0-9]+ of 50\)$/ { printf "%s%s %.2f", n++ ? ", " : "", $1, $2 }' "$tmp/out")
by_source=$(sed -n 's/.*"event":"eval","step":4,.*"text":"eval answers by source: \([^"]*\)".*/\1/p' "$tmp/gen.log")
if [ $status -eq 0 ] && [ "$evals" = 2 ] && [ "$cells" = " x  x " ] && [ -n "$right" ] &&
   [ "$right" = "$scored" ] && [ "$(right_at 2)" != "$right" ] && [ -n "$families" ] &&
   [ "$by_source" = "$families" ]; then
  pass "--eval-generate: the demo's answers after steps 2 and 4 in the log, the csv and events, $right right as pesc eval --generate finds, and by family"
else
  fail "--eval-generate: exit $status, $evals evaluations, csv column $column cells '$cells', $(right_at 2) and $right right against eval's $scored, by source '$by_source' against '$families': $(head -c 300 "$tmp/err") $(tail -n 2 "$tmp/out")"
fi
"$pesc" train --headless --resume "$tmp/genck" --steps 6 >/dev/null 2>"$tmp/err"
[ "$(grep -c '"eval_answers":300' "$tmp/gen.log")" = 3 ] &&
  pass "--eval-generate: --resume alone generates the run's answers on" ||
  fail "--eval-generate resumed: $(grep -c '"eval_answers"' "$tmp/gen.log") evaluations: $(head -c 300 "$tmp/err")"
# MATCH:N answers N of them, spread over the sources (10 of each family), recorded for --resume
"$pesc" train --headless --steps 2 --eval-generate exact:60 --log "$tmp/gen60.log" \
  --save "$tmp/gen60" >/dev/null 2>"$tmp/err"
grep -q '"event":"eval","step":2,.*eval answers 0\.[0-9]* right ([0-9]* of 60, exact match)' "$tmp/gen60.log" &&
  [ "$(grep -c 'eval answers by source: arithmetic [01]\.[0-9]*, reverse .*, lookup [01]\.[0-9]*"' "$tmp/gen60.log")" = 1 ] &&
  grep -q '"eval_generate": "exact:60"' "$tmp/gen60/step-00000002/state.json" &&
  pass "--eval-generate exact:60: 60 of the 300 answered, from every family, kept for --resume" ||
  fail "--eval-generate exact:60: $(grep -o '"text":"eval answers[^"]*' "$tmp/gen60.log" | head -2) $(head -c 300 "$tmp/err")"
# --eval-samples: each answer appended (step first, the family, the verdict), as many right as
# the event says; --resume appends the next evaluation's
ans="$tmp/answers.jsonl"
"$pesc" train --headless --steps 2 --eval-generate exact:12 --eval-samples "$ans" \
  --save "$tmp/gens" --log "$tmp/gens.log" >/dev/null 2>"$tmp/err"
said=$(sed -n 's/.*eval answers 0\.[0-9]* right (\([0-9]*\) of 12, exact match).*/\1/p' "$tmp/gens.log")
"$pesc" train --headless --resume "$tmp/gens" --steps 4 >/dev/null 2>>"$tmp/err"
if [ "$(grep -c '^{"step": 2, "source": "[a-z]*", "line": [0-9]*, "reference": ".*", "answer": ".*", "right": \(true\|false\)}$' "$ans")" = 12 ] &&
   [ "$(grep '^{"step": 2,' "$ans" | grep -c '"right": true}')" = "$said" ] &&
   [ "$(grep -c '^{"step": 4, "source": "lookup",' "$ans")" = 2 ] && [ "$(wc -l <"$ans")" = 24 ]; then
  pass "--eval-samples: 12 answers of step 2 ($said right, as the event says), 12 more after --resume"
else
  fail "--eval-samples: $(wc -l <"$ans" 2>/dev/null) lines, event $said right: $(head -n 2 "$ans" 2>/dev/null) $(head -c 300 "$tmp/err")"
fi
# answers that cannot be written are said on stderr, not only in the log (there may be none),
# and the run goes on
expect 0 "^pesc train: \-\-eval-samples /dev/full: No space left on device; the answers of step 1" \
  "--eval-samples on a full disk: said on stderr, the run goes on" -- \
  "$pesc" train --headless --steps 1 --eval-generate exact:6 --eval-samples /dev/full
# from one --eval-data file whose families come round-robin (demo-data's): a random draw in
# it, not every k-th record (every 6th was one family alone); the same at each evaluation
"$pesc" demo-data -o "$tmp/rr.jsonl" --records 300 --seed 4 >/dev/null
"$pesc" train --headless --steps 2 --eval-every 1 --eval-data "$tmp/rr.jsonl" --eval-generate exact:50 \
  --eval-samples "$tmp/rr-ans.jsonl" >/dev/null 2>"$tmp/err"
lines_at() { grep "^{\"step\": $1," "$tmp/rr-ans.jsonl" | sed -n 's/.*"line": \([0-9]*\),.*/\1/p'; }
residues=$(lines_at 1 | awk '{ print $1 % 6 }' | sort -u | wc -l)
if [ "$(lines_at 1 | wc -l)" = 50 ] && [ "$residues" -ge 5 ] && [ "$(lines_at 1)" = "$(lines_at 2)" ]; then
  pass "--eval-generate exact:50 of one round-robin file: drawn from $residues of its 6 families, the same twice"
else
  fail "--eval-generate exact:50 of one file: $(lines_at 1 | wc -l) answers, lines mod 6 in $residues classes: $(head -c 300 "$tmp/err")"
fi
expect 1 "\-\-eval-samples $tmp/none/a.jsonl: No such file or directory" \
  "--eval-samples in a directory that is not there" -- \
  "$pesc" train --headless --steps 2 --eval-samples "$tmp/none/a.jsonl"
# shellcheck disable=SC2086
expect 2 "\-\-eval-samples keeps the answers \-\-eval-generate MATCH makes" \
  "--eval-samples without --eval-generate" -- \
  "$pesc" train --headless $common --steps 2 --eval-split 8 --eval-samples "$ans"
expect 2 "\-\-eval-generate number:0: after the match, :N is how many held-out records to answer" \
  "--eval-generate with a count of 0" -- "$pesc" train --headless --steps 2 --eval-generate number:0
# shellcheck disable=SC2086
expect 1 "\-\-eval-generate: the answers are matched as text, and the run has no tokenizer" \
  "--eval-generate on token data without a tokenizer" -- \
  "$pesc" train --headless $common --steps 2 --eval-split 8 --eval-generate exact
for i in 1 2 3 4 5 6 7 8; do printf '{"text": "the sky is blue %s"}\n' "$i"; done >"$tmp/text.jsonl"
expect 1 "\-\-eval-split 4: no record has an answer after a prompt" \
  "--eval-generate on records that are all answer" -- \
  "$pesc" train --headless --model "$top_srcdir/data/demo" --data "$tmp/text.jsonl" --steps 2 \
  --eval-split 4 --eval-generate exact --backend cpu
# shellcheck disable=SC2086
expect 2 "\-\-eval-generate answers held-out records: it needs \-\-eval-data FILE or \-\-eval-split X" \
  "--eval-generate without held-out records" -- \
  "$pesc" train --headless $common --steps 2 --eval-generate number
expect 2 "\-\-eval-generate nearly: expected exact" "--eval-generate with an unknown match" -- \
  "$pesc" train --headless --steps 2 --eval-generate nearly

# --resume alone goes on as the run would have: its model, data, held-out split, template,
# shape, seed, length, optimizer settings and crafting come from the checkpoint (once the
# default --lr and schedule, a dropout of 0.1 and the demo's data took over), from any
# directory; the losses and rates of steps 5-8 are those of the uninterrupted run
lr_of() { sed -n 's/.*"lr":\([^,]*\),.*/\1/p' "$1"; }
own="--model $base --data $tmp/data.jsonl --seq 24 --batch 4 --grad-accum 2 --experts 4 --top-k 1
  --adapter-dim 8 --adapter-scale 0.5 --adapter-dropout 0 --z-coef 0.001 --aux-coef 0.02
  --lr 2e-2 --schedule cosine --warmup 2 --weight-decay 0.05 --clip 1 --seed 5 --eval-split 8
  --backend cpu --steps 8"
# shellcheck disable=SC2086
"$pesc" train --headless $own --save "$tmp/alone" --save-every 4 --log "$tmp/alone.jsonl" >/dev/null 2>&1
program=$(cd "$(dirname "$pesc")" && pwd)/$(basename "$pesc")
(cd / && "$program" train --headless --resume "$tmp/alone/step-00000004" --log "$tmp/alone2.jsonl") \
  >"$tmp/out" 2>&1
if [ "$(losses "$tmp/alone2.jsonl" | wc -l)" = 4 ] &&
   [ "$(losses "$tmp/alone2.jsonl")" = "$(losses "$tmp/alone.jsonl" | tail -n 4)" ] &&
   [ "$(lr_of "$tmp/alone2.jsonl")" = "$(lr_of "$tmp/alone.jsonl" | tail -n 4)" ]; then
  pass "--resume alone: steps 5-8 with the losses and rates of the uninterrupted run"
else
  fail "--resume alone: losses $(losses "$tmp/alone2.jsonl" | tr '\n' ' ') vs" \
    "$(losses "$tmp/alone.jsonl" | tail -n 4 | tr '\n' ' '): $(head -c 300 "$tmp/out")"
fi
# a run sized by epochs (one by default, or --epochs 2) resumed goes on by them: its last step,
# short of a whole accumulation, ends at the data's end as the uninterrupted run's does, not
# filled from the next epoch; the final trainables are the same to the bit (50 records: 13
# batches an epoch, 3 to a step)
awk 'BEGIN { srand(11); for (r = 0; r < 50; r++) { printf "{\"input_ids\": ["; for (t = 0; t < 20; t++) printf "%s%d", t ? ", " : "", int(rand() * 64); print "]}" } }' >"$tmp/epoch-data.jsonl"
for length in "" "--epochs 2"; do
  name=epochs${length#--epochs }
  # shellcheck disable=SC2086
  "$pesc" train --headless --model "$base" --data "$tmp/epoch-data.jsonl" --seq 24 --batch 4 \
    --grad-accum 3 --experts 4 --adapter-dim 8 --lr 1e-2 --backend cpu $length \
    --save "$tmp/$name-whole" --save-every 2 --keep 10 >/dev/null 2>&1
  last=$(ls "$tmp/$name-whole" | grep step- | tail -n 1)
  mkdir -p "$tmp/$name-resumed" && cp -r "$tmp/$name-whole/step-00000002" "$tmp/$name-resumed/"
  "$pesc" train --headless --resume "$tmp/$name-resumed" >/dev/null 2>"$tmp/err"
  if [ -n "$last" ] && [ "$last" != step-00000002 ] &&
     cmp -s "$tmp/$name-whole/$last/trainables.safetensors" \
       "$tmp/$name-resumed/$last/trainables.safetensors"; then
    pass "--resume of a run by epochs${length:+ ($length)}: the same trainables at its end ($last)"
  else
    fail "--resume of a run by epochs${length:+ ($length)}: $last differs or is missing" \
      "($(ls "$tmp/$name-resumed")): $(head -c 300 "$tmp/err")"
  fi
done
# from the newest checkpoint without --save or --log, it saves on in the run's directory (as
# often, keeping as many) and appends to the run's log, and says so
"$pesc" train --headless --resume "$tmp/alone" --steps 12 >"$tmp/out" 2>&1
[ -d "$tmp/alone/step-00000012" ] && [ -d "$tmp/alone/step-00000008" ] &&
  [ "$(losses "$tmp/alone.jsonl" | wc -l)" = 12 ] &&
  grep -q "saves on to .*alone and logs on to .*alone.jsonl, as the run did" "$tmp/out" &&
  pass "--resume of the newest checkpoint alone: saves on to its directory, logs on to its log" ||
  fail "--resume of the newest, alone: $(ls "$tmp/alone"), $(losses "$tmp/alone.jsonl" | wc -l) losses: $(head -c 300 "$tmp/out")"
# --save-every given with it acts on the directory taken (it was once refused: no --save)
expect 0 "step 13/13" "--resume of the newest checkpoint with --save-every alone" -- \
  "$pesc" train --headless --resume "$tmp/alone" --steps 13 --save-every 1 --keep 10
[ -d "$tmp/alone/step-00000013" ] && pass "... saved step 13 in the run's directory" ||
  fail "--resume --save-every 1: $(ls "$tmp/alone")"
# a checkpoint's --lr 0.3 with a --weight-decay 10 given on resuming: a product past 1,
# refused as it is on one command line
"$pesc" train --headless --model "$base" --data "$tmp/data.jsonl" --seq 24 --batch 4 \
  --backend cpu --steps 1 --lr 0.3 --save "$tmp/wd" >/dev/null 2>&1
expect 1 "\-\-lr 0.3 with \-\-weight-decay 10: .*wipes them out" \
  "--resume: lr x weight decay is checked with the checkpoint's rate" -- \
  "$pesc" train --headless --resume "$tmp/wd" --steps 2 --weight-decay 10
[ ! -d "$tmp/wd/step-00000002" ] || fail "a refused --resume saved step 2"
# the same for a rate set while the run went, which a resume carries on with
rm -rf "$tmp/wdlive" && cp -r "$tmp/wd" "$tmp/wdlive"
sed 's/"lr_override": null/"lr_override": 5/' "$tmp/wd/step-00000001/state.json" \
  >"$tmp/wdlive/step-00000001/state.json"
expect 1 "the learning rate set while the run went, 5 with \-\-weight-decay 0.5: .*give \-\-lr" \
  "--resume: a live rate x weight decay past 1 is refused" -- \
  "$pesc" train --headless --resume "$tmp/wdlive" --steps 2 --weight-decay 0.5
# --resume of a directory a live run saves into and has not saved in yet: that run is named
"$pesc" train --headless --model "$base" --data "$tmp/data.jsonl" --seq 24 --batch 4 \
  --backend cpu --steps 1000000 --save "$tmp/unsaved" >/dev/null 2>&1 &
unsaved_pid=$!
for _ in $(seq 100); do [ -e "$tmp/unsaved/.lock" ] && break; sleep 0.1; done
expect 1 "unsaved: no checkpoint yet: a run.* saves into it and has saved none" \
  "--resume of a live run's directory with no checkpoint yet names the run" -- \
  "$pesc" train --headless --resume "$tmp/unsaved"
kill "$unsaved_pid"; wait "$unsaved_pid" 2>/dev/null
# a --data file changed after the checkpoint: named as the reason, not the batch options
cp "$tmp/data.jsonl" "$tmp/grown.jsonl"
"$pesc" train --headless --model "$base" --data "$tmp/grown.jsonl" --seq 24 --batch 4 \
  --backend cpu --steps 1 --save "$tmp/grown" >/dev/null 2>&1
head -n 1 "$tmp/data.jsonl" >>"$tmp/grown.jsonl"
expect 1 "grown.jsonl was changed after this checkpoint was saved" \
  "--resume after a --data file changed names the file" -- \
  "$pesc" train --headless --resume "$tmp/grown" --steps 2
# outputs that would destroy something: a resumed run's --log that is data, or another run's
# log, and a sink's target in a checkpoint or on a run log; a log in the --save directory is
# the run's own and resumes
cp "$tmp/data.jsonl" "$tmp/data-copy.jsonl"
expect 1 "data-copy.jsonl is not a pesc run log" "--resume --log of a dataset is refused" -- \
  "$pesc" train --headless --resume "$tmp/wd" --steps 2 --log "$tmp/data-copy.jsonl"
cmp -s "$tmp/data.jsonl" "$tmp/data-copy.jsonl" || fail "a refused --log changed the data"
expect 1 "alone.jsonl is another run's log" "--resume --log of another run's log is refused" -- \
  "$pesc" train --headless --resume "$tmp/wd" --steps 2 --log "$tmp/alone.jsonl"
expect 1 "is a file of a checkpoint" "--sink into a checkpoint's directory is refused" -- \
  "$pesc" train --headless --model "$base" --data "$tmp/data.jsonl" --backend cpu --steps 1 \
  --sink "csv:$tmp/wd/step-00000001/state.json"
expect 1 "alone.jsonl is a pesc run log" "--sink onto a run log is refused" -- \
  "$pesc" train --headless --model "$base" --data "$tmp/data.jsonl" --backend cpu --steps 1 \
  --sink "csv:$tmp/alone.jsonl"
"$pesc" train --headless --model "$base" --data "$tmp/data.jsonl" --seq 24 --batch 4 \
  --backend cpu --steps 1 --save "$tmp/inlog" --log "$tmp/inlog/run.jsonl" >/dev/null 2>&1
expect 0 "step 2/2" "a run whose log is in its --save directory resumes from that directory" -- \
  "$pesc" train --headless --resume "$tmp/inlog" --steps 2
[ "$(losses "$tmp/inlog/run.jsonl" | wc -l)" = 2 ] || fail "the log in the save directory: $(losses "$tmp/inlog/run.jsonl" | wc -l) steps"
# a save directory moved (here copied) elsewhere: saved on there; the log, not beside it, is not
cp -r "$tmp/alone" "$tmp/moved"
before=$(losses "$tmp/alone.jsonl" | wc -l)
"$pesc" train --headless --resume "$tmp/moved" --steps 14 >"$tmp/out" 2>&1
[ -d "$tmp/moved/step-00000014" ] && [ ! -d "$tmp/alone/step-00000014" ] &&
  [ "$(losses "$tmp/alone.jsonl" | wc -l)" = "$before" ] &&
  pass "--resume of a moved save directory saves on there, and leaves the old log alone" ||
  fail "--resume of a moved save directory: $(ls "$tmp/moved"): $(head -c 300 "$tmp/out")"
# a damaged newest checkpoint (its trainables cut short, or its state.json) names the one
# before it to resume from, in the one line
cp -r "$tmp/alone" "$tmp/damaged"
truncate -s 100 "$tmp/damaged/step-00000013/trainables.safetensors"
expect 1 "truncated or not safetensors; the checkpoint before it: \-\-resume $tmp/damaged/step-00000012$" \
  "--resume of a save directory whose newest trainables are damaged names the one before" -- \
  "$pesc" train --headless --resume "$tmp/damaged" --steps 14
echo '{"step": 3' >"$tmp/damaged/step-00000013/state.json"
expect 1 "state.json: .*; the checkpoint before it: \-\-resume $tmp/damaged/step-00000012$" \
  "--resume of a save directory whose newest state.json is damaged names the one before" -- \
  "$pesc" train --headless --resume "$tmp/damaged" --steps 14
# a flag given again replaces the run's value where it may change (--lr), and must match where
# it shapes what was saved (--seq)
# shellcheck disable=SC2086
"$pesc" train --headless --resume "$tmp/alone/step-00000004" --lr 1e-3 --steps 5 \
  --log "$tmp/alone3.jsonl" >/dev/null 2>&1
lr_of "$tmp/alone3.jsonl" | grep -q "^0.000[0-9]*$" && pass "--resume with --lr: the new rate" ||
  fail "--resume with --lr 1e-3 trained at $(lr_of "$tmp/alone3.jsonl")"
expect 1 "was saved with \-\-seq 24; this run asks for \-\-seq 16" "--resume with another --seq" -- \
  "$pesc" train --headless --resume "$tmp/alone/step-00000004" --seq 16
expect 1 "cursor belongs to other data.* (the run had \-\-data .*/data.jsonl: leave out what differs" \
  "--resume with other --data names the run's" -- \
  "$pesc" train --headless --resume "$tmp/alone/step-00000004" --data "$tmp/data.jsonl:2"

# a step short of --grad-accum micro-batches (the data ends first) takes their mean gradient:
# one batch of 4 records under --grad-accum 1 and 3 gives one step of the same gradient norm
# (it was once a third of it)
head -n 4 "$tmp/data.jsonl" >"$tmp/four.jsonl"
for ga in 1 3; do
  "$pesc" train --headless --model "$base" --data "$tmp/four.jsonl" --seq 24 --batch 4 --experts 4 \
    --adapter-dim 8 --backend cpu --epochs 1 --grad-accum $ga --log "$tmp/ga$ga.jsonl" >/dev/null 2>&1
done
norm() { sed -n 's/.*"grad_norm":\([^,]*\),.*/\1/p' "$1"; }
if [ -n "$(norm "$tmp/ga1.jsonl")" ] && close "$(norm "$tmp/ga3.jsonl")" "$(norm "$tmp/ga1.jsonl")" 1e-5; then
  pass "a step with fewer micro-batches than --grad-accum: the mean gradient (norm $(norm "$tmp/ga3.jsonl"))"
else
  fail "short --grad-accum step: norm $(norm "$tmp/ga3.jsonl") vs $(norm "$tmp/ga1.jsonl") with --grad-accum 1"
fi

# a run that cannot fit in memory is refused before it allocates, with the numbers and the fix
avail_gib=$(awk '/^MemAvailable:/ { printf "%d", $2 / 1048576 }' /proc/meminfo 2>/dev/null)
if [ -n "$avail_gib" ] && [ "$avail_gib" -lt 200 ]; then
  expect 1 "needs .* GiB more memory .*--recompute" "a run too big for memory is refused" -- \
    "$pesc" train --headless --model "$base" --data "$tmp/data.jsonl" --seq 32768 --batch 512 --steps 1
else
  echo "skip the memory refusal: this machine has ${avail_gib:-unknown} GiB available"
fi
expect 2 "at most 16777216 tokens" "a micro-batch over 2^24 tokens is a usage error" -- \
  "$pesc" train --headless --model "$base" --data "$tmp/data.jsonl" --seq 32768 --batch 1024
# --save is checked before the first step: a file, or a directory that cannot be made
echo precious >"$tmp/not-a-dir"
expect 1 "\-\-save $tmp/not-a-dir is not a directory" "--save naming a file is refused before training" -- \
  "$pesc" train --headless --model "$base" --data "$tmp/data.jsonl" --steps 1 --save "$tmp/not-a-dir"
expect 1 "\-\-save $tmp/not-a-dir/ck: cannot create it: Not a directory" \
  "--save under a file is refused before training" -- \
  "$pesc" train --headless --model "$base" --data "$tmp/data.jsonl" --steps 1 --save "$tmp/not-a-dir/ck"
# a run of one's own model without --save says, at its start, that nothing it trains is kept
"$pesc" train --headless --model "$base" --data "$tmp/data.jsonl" --steps 1 >/dev/null 2>"$tmp/err"
grep -q "^pesc train: no \-\-save DIR: nothing this run trains is kept" "$tmp/err" \
  && pass "no --save: a note that nothing is kept" || fail "no --save, no note: $(cat "$tmp/err")"

# missing directories above --save, --log and sinks are made, as mkdir -p does
expect 0 "step 1/1" "--save, --log and a sink in directories not made yet" -- \
  "$pesc" train --headless --model "$base" --data "$tmp/data.jsonl" --steps 1 \
  --save "$tmp/made/a/ck" --log "$tmp/made/b/run.jsonl" --sink csv --sink "csv:$tmp/made/c/x.csv"
[ -f "$tmp/made/a/ck/step-00000001/state.json" ] && [ -s "$tmp/made/b/run.jsonl" ] &&
  [ -s "$tmp/made/b/run.csv" ] && [ -s "$tmp/made/c/x.csv" ] \
  && pass "their checkpoint, log and csv files are there" || fail "outputs missing: $(find "$tmp/made")"
[ "$(cat "$tmp/not-a-dir")" = precious ] || fail "--save FILE: the file was touched"
# checkpoints a run does not continue are never overwritten or rotated out: a fresh run into
# another run's save directory, a resumed run into a third one, and a run resumed from an
# older step into its own directory (it would overwrite the newer steps) are all refused
before=$(ls -l "$tmp/ck"/*)
# shellcheck disable=SC2086
expect 1 "\-\-save $tmp/ck already holds another run's checkpoints (step-00000006); continue that run with --resume $tmp/ck" \
  "a fresh run into another run's save directory is refused" -- \
  "$pesc" train --headless $common --steps 1 --save "$tmp/ck" --keep 1
# shellcheck disable=SC2086
expect 1 "\-\-save $tmp/ck holds step-00000006, past the resumed step 3" \
  "a run resumed from step 3 into its own directory holding step 6 is refused" -- \
  "$pesc" train --headless $common --steps 8 --resume "$tmp/ck/step-00000003" --save "$tmp/ck" --keep 1
mkdir "$tmp/third" && cp -r "$tmp/ck/step-00000003" "$tmp/third/"
# shellcheck disable=SC2086
expect 1 "\-\-save $tmp/third already holds another run's checkpoints (step-00000003), and this run continues $tmp/ck/step-00000006" \
  "a resumed run into a third run's save directory is refused" -- \
  "$pesc" train --headless $common --steps 8 --resume "$tmp/ck" --save "$tmp/third" --keep 1
[ "$(ls -l "$tmp/ck"/*)" = "$before" ] && [ -f "$tmp/third/step-00000003/state.json" ] ||
  fail "a refused --save touched checkpoints: $(ls -R "$tmp/ck" "$tmp/third")"
# two runs on one --save DIR would both find it empty, then rotate out each other's
# checkpoints: while a run holds DIR, a second is refused at once, naming the holder, and
# writes nothing (a run killed with -9 holds nothing: see the kill -9 test)
# shellcheck disable=SC2086
"$pesc" train --headless $common --steps 100000 --save "$tmp/busy" --control "$tmp/busy.sock" >/dev/null 2>&1 &
pid=$!
pids="$pids $pid"
for _ in $(seq 100); do [ -S "$tmp/busy.sock" ] && break; sleep 0.1; done
# shellcheck disable=SC2086
expect 1 "\-\-save $tmp/busy is in use by another run (pid $pid); wait for it to end, or save in another directory" \
  "a second run on a --save DIR in use is refused" -- \
  "$pesc" train --headless $common --steps 1 --save "$tmp/busy" --log "$tmp/busy.jsonl"
[ "$(ls -A "$tmp/busy")" = .lock ] && [ ! -e "$tmp/busy.jsonl" ] ||
  fail "a run refused for a --save DIR in use wrote: $(ls -A "$tmp/busy" "$tmp/busy.jsonl" 2>&1)"
"$sockcmd" "$tmp/busy.sock" stop >/dev/null
wait $pid
# a --save DIR removed while its run goes on: a second run may take it then, and the first
# once made it again at its next save and rotated out the second's checkpoints. Now the first
# sees its lock is gone: while another run holds DIR, or DIR holds another run's checkpoints,
# its save fails, naming why, and the other's checkpoints stay; with neither, DIR is made
# again, locked anew, noted, and saved in
in_log() {   # in_log FILE PATTERN: until FILE has a line matching PATTERN (10 s)
  for _ in $(seq 100); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  return 1
}
# shellcheck disable=SC2086
"$pesc" train --headless $common --steps 100000 --save "$tmp/removed/ck" --save-every 1 --keep 2 \
  --control "$tmp/removed-a.sock" --log "$tmp/removed-a.jsonl" >/dev/null 2>"$tmp/removed-a.err" &
pid_a=$!
pids="$pids $pid_a"
in_log "$tmp/removed-a.jsonl" '"event":"save","step":2,' && "$sockcmd" "$tmp/removed-a.sock" pause >/dev/null &&
  in_log "$tmp/removed-a.jsonl" '"event":"pause"'
rm -rf "$tmp/removed/ck"
# shellcheck disable=SC2086
"$pesc" train --headless $common --steps 100000 --save "$tmp/removed/ck" --save-every 1 --keep 10 \
  --control "$tmp/removed-b.sock" --log "$tmp/removed-b.jsonl" >/dev/null 2>&1 &
pid_b=$!
pids="$pids $pid_b"
in_log "$tmp/removed-b.jsonl" '"event":"save","step":3,' && "$sockcmd" "$tmp/removed-b.sock" pause >/dev/null &&
  in_log "$tmp/removed-b.jsonl" '"event":"pause"'
b_saved=$(ls "$tmp/removed/ck")
"$sockcmd" "$tmp/removed-a.sock" save >/dev/null
in_log "$tmp/removed-a.jsonl" '"event":"error"' &&
  grep -q "\"event\":\"error\".*save failed: \-\-save $tmp/removed/ck was removed while the run was on, and another run (pid $pid_b) saves there now" "$tmp/removed-a.jsonl" &&
  [ "$(ls "$tmp/removed/ck")" = "$b_saved" ] &&
  pass "a --save DIR removed and taken by another run: the first's save there fails, naming the other" ||
  fail "a --save DIR removed, another run in it: $(grep '"error"' "$tmp/removed-a.jsonl" | head -c 400) / $(ls "$tmp/removed/ck")"
"$sockcmd" "$tmp/removed-b.sock" stop >/dev/null
wait $pid_b
b_saved=$(ls "$tmp/removed/ck")
"$sockcmd" "$tmp/removed-a.sock" save >/dev/null
in_log "$tmp/removed-a.jsonl" "holds another run's checkpoints" &&
  grep -q "\"event\":\"error\".*save failed: \-\-save $tmp/removed/ck was removed while the run was on, and holds another run's checkpoints (step-[0-9]*) now" "$tmp/removed-a.jsonl" &&
  [ "$(ls "$tmp/removed/ck")" = "$b_saved" ] &&
  pass "... and once it ended: the first does not save among its checkpoints, nor rotates them out" ||
  fail "a --save DIR removed, another run's checkpoints in it: $(grep '"error"' "$tmp/removed-a.jsonl" | tail -n 1 | head -c 400) / $(ls "$tmp/removed/ck")"
rm -rf "$tmp/removed/ck"
"$sockcmd" "$tmp/removed-a.sock" save >/dev/null
in_log "$tmp/removed-a.jsonl" 'removed/ck was removed while the run was on: made again'
# only its lock file removed: the directory, and what was saved there, is still the run's
rm "$tmp/removed/ck/.lock"
refused=$(grep -c "holds another run's checkpoints" "$tmp/removed-a.err")
"$sockcmd" "$tmp/removed-a.sock" save >/dev/null
in_log "$tmp/removed-a.jsonl" 'the lock file of --save .*removed/ck was removed while the run was on: taken again' &&
  [ "$(grep -c "holds another run's checkpoints" "$tmp/removed-a.err")" = "$refused" ] &&
  pass "... and only its lock file removed: taken again, and the run's checkpoints are its own" ||
  fail "a --save DIR's lock file removed: $(tail -n 2 "$tmp/removed-a.err")"
# removed again after the paused run's last save: its stop saves again (it took the checkpoint
# for saved, and ended with none)
in_log "$tmp/removed-a.jsonl" 'taken again' && sleep 0.5 && rm -rf "$tmp/removed/ck"
"$sockcmd" "$tmp/removed-a.sock" stop >/dev/null
wait $pid_a
status=$?
if [ $status -eq 0 ] && [ -f "$tmp/removed/ck/$(ls "$tmp/removed/ck" | grep step- | head -n 1)/state.json" ] &&
   [ "$(cat "$tmp/removed/ck/.lock")" = "$pid_a" ] &&
   grep -qx "pesc train: \-\-save $tmp/removed/ck was removed while the run was on: made again (the checkpoints saved there before went with it)" "$tmp/removed-a.err" &&
   grep -q '"event":"note".*removed/ck was removed while the run was on: made again' "$tmp/removed-a.jsonl"; then
  pass "... and removed again, with no run in it: made again, locked anew, noted and saved in"
else
  fail "a --save DIR removed, made again: exit $status, $(ls -A "$tmp/removed/ck" 2>&1): $(head -c 400 "$tmp/removed-a.err")"
fi
# a run that made its --save DIR and saved nothing, which another run took once it was
# removed: on its way out it leaves the other's lock file (and directory) alone
# shellcheck disable=SC2086
"$pesc" train --headless $common --steps 100000 --save "$tmp/removed2/ck" --save-every 100000 \
  --control "$tmp/removed-c.sock" --log "$tmp/removed-c.jsonl" >/dev/null 2>&1 &
pid_c=$!
pids="$pids $pid_c"
in_log "$tmp/removed-c.jsonl" '"step":2,' && "$sockcmd" "$tmp/removed-c.sock" pause >/dev/null &&
  in_log "$tmp/removed-c.jsonl" '"event":"pause"'
rm -rf "$tmp/removed2/ck"
# shellcheck disable=SC2086
"$pesc" train --headless $common --steps 100000 --save "$tmp/removed2/ck" --save-every 100000 \
  --control "$tmp/removed-d.sock" --log "$tmp/removed-d.jsonl" >/dev/null 2>&1 &
pid_d=$!
pids="$pids $pid_d"
in_log "$tmp/removed-d.jsonl" '"step":1,'
"$sockcmd" "$tmp/removed-c.sock" stop >/dev/null
wait $pid_c
[ "$(cat "$tmp/removed2/ck/.lock" 2>&1)" = "$pid_d" ] &&
  pass "... and a run that saved nothing there leaves the other run's lock file on its way out" ||
  fail "the other run's lock file after the first ended: $(ls -A "$tmp/removed2/ck" 2>&1)"
"$sockcmd" "$tmp/removed-d.sock" stop >/dev/null
wait $pid_d

# a stop during the evaluation after the last step: the checkpoint records it as pending (the
# stop once threw it away, and --resume of it was refused: the run ended at that step), and
# --resume alone does it first, logged as that step's, with the loss the whole run had
awk 'BEGIN { srand(5); for (r = 0; r < 12000; r++) { printf "{\"input_ids\": ["; for (t = 0; t < 20; t++) printf "%s%d", t ? ", " : "", int(rand() * 64); print "]}" } }' >"$tmp/cut-heldout.jsonl"
# shellcheck disable=SC2086
"$pesc" train --headless $common --steps 3 --eval-every 3 --eval-data "$tmp/cut-heldout.jsonl" \
  --log "$tmp/cut-whole.jsonl" >/dev/null 2>&1
# shellcheck disable=SC2086
"$pesc" train --headless $common --steps 3 --eval-every 3 --eval-data "$tmp/cut-heldout.jsonl" \
  --save "$tmp/cut" --log "$tmp/cut.jsonl" >/dev/null 2>"$tmp/cut.err" &
pid=$!
pids="$pids $pid"
# a background job ignores SIGINT until pesc installs its handler: after step 2, it has; the
# stop then comes in step 3 or its evaluation of 12000 records (seconds), which it cuts short
for _ in $(seq 200); do grep -q '"step":2,' "$tmp/cut.jsonl" 2>/dev/null && break; sleep 0.05; done
sleep 0.2
kill -INT $pid
wait $pid
cut_status=$?
"$pesc" train --headless --resume "$tmp/cut" >/dev/null 2>"$tmp/cut-resumed.err"
status=$?
eval_of() { grep '"event":"eval","step":3,' "$1" | sed -n 's/.*"text":"\(eval loss [0-9.]*\) .*/\1/p'; }
if [ $cut_status -eq 0 ] && grep -q "the stop cut step 3's evaluation short: its checkpoint says so, and \-\-resume evaluates it first" "$tmp/cut.err" &&
   [ $status -eq 0 ] && [ -n "$(eval_of "$tmp/cut-whole.jsonl")" ] &&
   [ "$(eval_of "$tmp/cut.jsonl")" = "$(eval_of "$tmp/cut-whole.jsonl")" ] &&
   ! grep -q eval_pending "$tmp/cut/step-00000003/state.json"; then
  pass "a stop during the last step's evaluation: --resume does it first, as that step's"
else
  fail "a stop during an evaluation: exit $cut_status then $status, eval '$(eval_of "$tmp/cut.jsonl")' vs" \
    "'$(eval_of "$tmp/cut-whole.jsonl")': $(head -c 300 "$tmp/cut.err") / $(head -c 300 "$tmp/cut-resumed.err")"
fi

# a final checkpoint that cannot be written fails the run, saying so (its result is not lost
# without a word): the save directory is replaced by a file while the run trains
"$pesc" train --headless --model "$base" --data "$tmp/data.jsonl" --steps 100000 --save "$tmp/gone" \
  --control "$tmp/gone.sock" >/dev/null 2>"$tmp/gone.err" &
pid=$!
pids="$pids $pid"
for _ in $(seq 100); do [ -S "$tmp/gone.sock" ] && break; sleep 0.1; done
rm -rf "$tmp/gone" && : >"$tmp/gone"
"$sockcmd" "$tmp/gone.sock" stop >/dev/null
wait $pid
status=$?
if [ $status -eq 1 ] && grep -q "the final checkpoint was not saved: .*gone" "$tmp/gone.err" &&
   [ "$(wc -l <"$tmp/gone.err")" -eq 1 ]; then
  pass "a final checkpoint that cannot be written fails the run in one line"
else
  fail "final save failure: exit $status, stderr: $(cat "$tmp/gone.err")"
fi

# the log never overwrites an input of the run: the data, or a file of the model directory
cp "$tmp/data.jsonl" "$tmp/data.copy"
expect 1 "\-\-log $tmp/data.jsonl is a \-\-data file of this run" "--log naming the --data file is refused" -- \
  "$pesc" train --headless --model "$base" --data "$tmp/data.jsonl" --steps 1 --log "$tmp/data.jsonl"
cmp -s "$tmp/data.jsonl" "$tmp/data.copy" || fail "--log onto the data changed it"
mkdir "$tmp/logbase" && cp "$base/config.json" "$base/model.safetensors" "$tmp/logbase/"
expect 1 "model.safetensors is a file of the model directory of this run" "--log naming the model's weights is refused" -- \
  "$pesc" train --headless --model "$tmp/logbase" --data "$tmp/data.jsonl" --steps 1 --log "$tmp/logbase/model.safetensors"
cmp -s "$base/model.safetensors" "$tmp/logbase/model.safetensors" || fail "--log onto the weights changed them"

# nor a held-out file (--eval-data, --eval-choices), through --log or a sink; --eval-samples
# appends to neither the data nor the log
"$pesc" demo-data -o "$tmp/demo-train.jsonl" --records 40 2>/dev/null
"$pesc" demo-data -o "$tmp/demo-held.jsonl" --records 20 --seed 9 2>/dev/null
cp "$tmp/demo-held.jsonl" "$tmp/demo-held.copy"
cp "$tmp/demo-train.jsonl" "$tmp/demo-train.copy"
expect 1 "\-\-log $tmp/demo-held.jsonl is an \-\-eval-data file of this run" "--log naming the --eval-data file is refused" -- \
  "$pesc" train --headless --data "$tmp/demo-train.jsonl" --eval-data "$tmp/demo-held.jsonl" --steps 1 --log "$tmp/demo-held.jsonl"
expect 1 "\-\-sink target $tmp/demo-held.jsonl is an \-\-eval-data file" "a csv sink onto the --eval-data file is refused" -- \
  "$pesc" train --headless --data "$tmp/demo-train.jsonl" --eval-data "$tmp/demo-held.jsonl" --steps 1 --sink "csv:$tmp/demo-held.jsonl"
expect 1 "\-\-eval-samples $tmp/demo-train.jsonl is a \-\-data file of this run" "--eval-samples onto the --data file is refused" -- \
  "$pesc" train --headless --data "$tmp/demo-train.jsonl" --eval-split 8 --eval-generate exact --steps 1 \
  --eval-samples "$tmp/demo-train.jsonl"
expect 1 "\-\-eval-samples $tmp/both.jsonl is the \-\-log file of this run" "--eval-samples onto the --log is refused" -- \
  "$pesc" train --headless --data "$tmp/demo-train.jsonl" --eval-split 8 --eval-generate exact --steps 1 \
  --eval-samples "$tmp/both.jsonl" --log "$tmp/both.jsonl"
cmp -s "$tmp/demo-held.jsonl" "$tmp/demo-held.copy" && cmp -s "$tmp/demo-train.jsonl" "$tmp/demo-train.copy" ||
  fail "a refused output changed an input of the run"
# one run a log: a second run naming a live run's log is refused and truncates nothing (it
# once emptied it under the first, which went on writing after a hole of NUL bytes)
"$pesc" train --headless --steps 100000 --log "$tmp/shared.jsonl" --control "$tmp/shared.sock" >/dev/null 2>&1 &
pid=$!
pids="$pids $pid"
for _ in $(seq 100); do [ -S "$tmp/shared.sock" ] && grep -q '"step":2,' "$tmp/shared.jsonl" && break; sleep 0.1; done
expect 1 "the run log $tmp/shared.jsonl is being written by another pesc run" "a second run on a live run's log is refused" -- \
  "$pesc" train --headless --steps 3 --log "$tmp/shared.jsonl"
"$sockcmd" "$tmp/shared.sock" stop >/dev/null
wait $pid
[ "$(tr -d '\000' <"$tmp/shared.jsonl" | wc -c)" = "$(wc -c <"$tmp/shared.jsonl")" ] &&
  [ "$(grep -c '"event":"start"' "$tmp/shared.jsonl")" = 1 ] && grep -q '"event":"stop"' "$tmp/shared.jsonl" &&
  pass "the live run's log is whole" || fail "the shared log: $(head -c 300 "$tmp/shared.jsonl" | cat -v)"

# control clients that hang up before their reply do not end the run (it once died of SIGPIPE)
"$pesc" train --headless --model "$base" --data "$tmp/data.jsonl" --steps 100000 \
  --control "$tmp/hup.sock" >/dev/null 2>"$tmp/hup.err" &
pid=$!
pids="$pids $pid"
for _ in $(seq 100); do [ -S "$tmp/hup.sock" ] && break; sleep 0.1; done
for _ in 1 2 3 4 5; do "$sockcmd" --hang-up "$tmp/hup.sock" "lr 1e-3"; done
sleep 0.5
reply=$("$sockcmd" "$tmp/hup.sock" stop)
wait $pid
status=$?
[ $status -eq 0 ] && [ "$reply" = "ok: stop" ] && pass "clients that hang up before their reply leave the run going" ||
  fail "after clients hung up: exit $status, reply '$reply', $(head -c 300 "$tmp/hup.err")"

# a periodic checkpoint that cannot be written is said on stderr, and the run goes on
"$pesc" train --headless --model "$base" --data "$tmp/data.jsonl" --steps 100000 --save "$tmp/gone2" \
  --save-every 1 --control "$tmp/gone2.sock" >/dev/null 2>"$tmp/gone2.err" &
pid=$!
pids="$pids $pid"
for _ in $(seq 100); do [ -S "$tmp/gone2.sock" ] && break; sleep 0.1; done
# moved away at once (rm -rf raced the saves writing into it, failed, and left a directory);
# a save between the move and the new file makes the directory again, so until a file stands
# there, move again (`true`, not `:`: a special builtin's failed redirection ends the script)
for n in $(seq 50); do
  [ -f "$tmp/gone2" ] && break
  mv "$tmp/gone2" "$tmp/gone2.away$n" 2>/dev/null; true 2>/dev/null >"$tmp/gone2"
done
for _ in $(seq 100); do grep -q "save failed" "$tmp/gone2.err" && break; sleep 0.1; done
"$sockcmd" "$tmp/gone2.sock" stop >/dev/null
wait $pid
grep -q "^pesc train: save failed, training goes on: .*gone2" "$tmp/gone2.err" &&
  pass "a failed periodic save is said on stderr" || fail "periodic save failure: $(head -c 300 "$tmp/gone2.err")"
# --seq past the model's context (128 positions) is said on stderr
"$pesc" train --headless --model "$base" --data "$tmp/data.jsonl" --steps 1 --seq 200 --backend cpu >/dev/null 2>"$tmp/err"
grep -q "^pesc train: --seq 200 is past the model's context of 128 tokens" "$tmp/err" &&
  pass "--seq past max_position_embeddings is noted" || fail "--seq 200: $(cat "$tmp/err")"

# options that would do nothing are refused up front, with what to add or drop
expect 2 "\-\-save-every needs \-\-save DIR" "--save-every without --save" -- \
  "$pesc" train --headless --model "$base" --data "$tmp/data.jsonl" --steps 1 --save-every 1
expect 2 "\-\-lora-targets without \-\-lora-rank: .*add \-\-lora-rank R" "--lora-targets without a rank" -- \
  "$pesc" train --headless --model "$base" --data "$tmp/data.jsonl" --steps 1 --lora-targets q
expect 2 "\-\-lora-rank shapes a PESC model; \-\-train full" "LoRA with --train full" -- \
  "$pesc" train --headless --model "$base" --data "$tmp/data.jsonl" --steps 1 --train full --lora-rank 4
# the demo resumed: its held-out demo: data is the checkpoint's, noted as replaced by itself
# once (the comparison took it for a file)
"$pesc" train --headless --steps 2 --save "$tmp/demo-ck" >/dev/null 2>&1 &&
  "$pesc" train --headless --steps 3 --resume "$tmp/demo-ck" >/dev/null 2>"$tmp/demo-resume.err"
[ -d "$tmp/demo-ck/step-00000003" ] && ! grep -q "replaces" "$tmp/demo-resume.err" &&
  pass "the demo resumed: no note that its eval data replaces itself" ||
  fail "the demo resumed: $(head -c 300 "$tmp/demo-resume.err")"
# a collapsing router is said, once a layer, for a run nobody watches (aux 0, a high LR and
# top-1 of 16: the demo's layers go to 3-6x an even share within 100 steps)
"$pesc" train --headless --steps 110 --aux-coef 0 --lr 0.02 --top-k 1 --experts 16 \
  --log "$tmp/collapse.jsonl" >/dev/null 2>"$tmp/collapse.err"
said=$(grep -c "^pesc train: routing of layer [0-9] is collapsing at step 100: .*an even share (the mean of the last 50 steps); raise the aux coefficient (now 0" "$tmp/collapse.err")
logged=$(grep -c '"event":"note".*routing of layer [0-9] is collapsing' "$tmp/collapse.jsonl")
[ "$said" -ge 1 ] && [ "$said" = "$logged" ] && [ "$(grep -c collapsing "$tmp/collapse.err")" = "$said" ] &&
  pass "a collapsing router is said once a layer, on stderr and in the log ($said layers)" ||
  fail "collapse: $said on stderr, $logged in the log: $(grep collapsing "$tmp/collapse.err" | head -n 2)"
expect 2 "\-\-aux-coef 0.05 acts on PESC routers and adapters; \-\-train full has none: drop \-\-aux-coef" \
  "a routing regulariser with --train full" -- \
  "$pesc" train --headless --model "$base" --data "$tmp/data.jsonl" --steps 1 --train full --aux-coef 0.05
expect 1 "^pesc train: \-\-log: cannot create the run log $tmp/not-a-dir/run.jsonl: Not a directory (name a file" \
  "a --log under a file is named as --log, with the fix" -- \
  "$pesc" train --headless --model "$base" --data "$tmp/data.jsonl" --steps 1 --log "$tmp/not-a-dir/run.jsonl"

# metric sinks: csv beside the log; a sink on a full disk is reported once and training goes on
# shellcheck disable=SC2086
"$pesc" train --headless $common --steps 4 --log "$tmp/s.jsonl" --sink csv --sink "csv:/dev/full" \
  >/dev/null 2>"$tmp/s.err"
status=$?
rows=$(grep -c '^[0-9]' "$tmp/s.csv" 2>/dev/null)
if [ $status -eq 0 ] && [ "$rows" = 4 ] && [ "$(grep -c '^pesc train: sink csv' "$tmp/s.err")" = 1 ] &&
   grep -q '"event":"sink"' "$tmp/s.jsonl" && [ "$(grep -c '"loss"' "$tmp/s.jsonl")" = 4 ]; then
  pass "--sink csv writes a row a step; a full-disk sink is reported once, training goes on"
else
  fail "sinks: exit $status, $rows csv rows: $(cat "$tmp/s.err")"
fi
# a file the run was not told to write (BASE.csv, beside the log or in the working directory)
# is not replaced by a fresh run; the refusal comes before the log is truncated, and a log
# that cannot be made is found before a named sink's file is truncated
cp "$tmp/s.csv" "$tmp/s.csv.before" && cp "$tmp/s.jsonl" "$tmp/s.jsonl.before"
# a named --log that already holds a log is another run's too: a fresh run refuses it
# shellcheck disable=SC2086
expect 1 "\-\-log: $tmp/s.jsonl already holds a log ([0-9]* bytes), which a fresh run would replace: remove it, name another file, or continue its run with \-\-resume" \
  "a fresh run refuses a --log FILE that already holds a log" -- \
  "$pesc" train --headless $common --steps 1 --log "$tmp/s.jsonl"
cmp -s "$tmp/s.jsonl" "$tmp/s.jsonl.before" || fail "a run refused for its --log truncated it"
: >"$tmp/empty.jsonl"
# shellcheck disable=SC2086
expect 0 "step 1/1" "an empty --log FILE is taken" -- "$pesc" train --headless $common --steps 1 --log "$tmp/empty.jsonl"
# a run log: inspect sums it up; as --data it is refused (its notes' "text" once trained)
expect 0 "^steps         1 of 1, [0-9]* s; finished$" "inspect a run log: how far it got and how it ended" -- \
  "$pesc" inspect "$tmp/empty.jsonl"
grep -q "^run log       $tmp/empty.jsonl (pesc view shows it" "$tmp/out" && grep -q "^loss          [0-9.]* at step 1$" "$tmp/out" ||
  fail "inspect a run log: $(cat "$tmp/out")"
# a failed run: its reason is the error before the closing "at step N"; an error the run went
# on after (a save's) is no end
printf '%s\n' '{"event":"start","model":"m","backend":"b","total_steps":5}' \
  '{"event":"error","step":1,"elapsed_s":1,"text":"cannot save: disk full"}' '{"step":2,"loss":1.5,"elapsed_s":2}' \
  '{"event":"error","step":2,"elapsed_s":2,"text":"out of memory"}' \
  '{"event":"error","step":2,"elapsed_s":2,"text":"at step 2"}' >"$tmp/failed.jsonl"
expect 0 "^error         out of memory$" "inspect a failed run's log: the reason, not 'at step N'" -- \
  "$pesc" inspect "$tmp/failed.jsonl"
grep -q "^steps         2 of 5, 2 s; failed$" "$tmp/out" || fail "inspect a failed run's log: $(cat "$tmp/out")"
# shellcheck disable=SC2086
expect 1 "empty.jsonl: a pesc run log (\-\-log), not a dataset" "a run log as --data is refused" -- \
  "$pesc" train --headless $common --steps 1 --data "$tmp/empty.jsonl"
# ... known by its records, not its bytes: re-serialised with spaces (json.dumps), or without
# its start line (tail -n), it is still a log to inspect and no dataset to train on
sed 's/":/": /g; s/,"/, "/g' "$tmp/empty.jsonl" >"$tmp/spaced.jsonl"
expect 0 "^steps         1 of 1, [0-9]* s; finished$" "inspect a log written with spaces" -- \
  "$pesc" inspect "$tmp/spaced.jsonl"
tail -n 2 "$tmp/empty.jsonl" >"$tmp/tail.jsonl"
expect 0 "^run           not said: the log lacks its first line" "inspect the end of a log" -- \
  "$pesc" inspect "$tmp/tail.jsonl"
# shellcheck disable=SC2086
expect 1 "tail.jsonl: a pesc run log (\-\-log), not a dataset" "the end of a log as --data is refused" -- \
  "$pesc" train --headless $common --steps 1 --data "$tmp/tail.jsonl"
expect 2 "read a dataset; $tmp/spaced.jsonl is a pesc run log" "inspect LOG --model is a usage error" -- \
  "$pesc" inspect "$tmp/spaced.jsonl" --model "$base"
printf 'lr: 1\n' >"$tmp/cfg.yaml"
expect 1 "cfg.yaml: not a file pesc inspect reads: a model directory, a checkpoint" \
  "inspect of a file it does not read says what it reads" -- "$pesc" inspect "$tmp/cfg.yaml"
mv "$tmp/s.jsonl" "$tmp/s2.jsonl"   # s.csv stays: BASE.csv of --log s.jsonl, made anew
# shellcheck disable=SC2086
expect 1 "\-\-sink csv: $tmp/s.csv is already there, and this run was not told to replace it: name the file (\-\-sink csv:FILE), remove it, or continue its run with \-\-resume" \
  "--sink csv refuses an existing BASE.csv it was not named" -- \
  "$pesc" train --headless $common --steps 1 --log "$tmp/s.jsonl" --sink csv
cmp -s "$tmp/s.csv" "$tmp/s.csv.before" && [ ! -s "$tmp/s.jsonl" ] ||
  fail "a run refused for its --sink csv changed the csv or wrote the log"
# --sink jsonl beside --log writes the log's own file: refused, saying so (it once blamed an
# "already there" file, the log itself)
# shellcheck disable=SC2086
expect 1 "\-\-sink jsonl: it would write $tmp/s.jsonl, which \-\-log already writes" \
  "--sink jsonl on the --log file is refused, naming --log" -- \
  "$pesc" train --headless $common --steps 1 --log "$tmp/s.jsonl" --sink jsonl --save "$tmp/refused-save"
[ ! -s "$tmp/s.jsonl" ] || fail "a run refused for --sink jsonl wrote the log"
# the --save directory it made for the run it was refused is not left behind (with its .lock)
[ ! -e "$tmp/refused-save" ] && pass "a refused run leaves no --save directory it made" ||
  fail "a refused run left $(ls -A "$tmp/refused-save")"
mkdir "$tmp/cwd" && echo precious >"$tmp/cwd/pesc-run.csv"
absolute() { (cd "$(dirname "$1")" && printf '%s/%s' "$(pwd)" "$(basename "$1")"); }
expect 1 "\-\-sink csv: pesc-run.csv is already there" "--sink csv refuses an existing ./pesc-run.csv" -- \
  sh -c 'cd "$1" && shift && exec "$@"' sh "$tmp/cwd" "$(absolute "$pesc")" train --headless \
  --model "$(absolute "$base")" --data "$tmp/data.jsonl" --backend cpu --steps 1 --sink csv
echo precious >"$tmp/named.csv"
# shellcheck disable=SC2086
expect 1 "\-\-log: cannot create the run log $tmp/not-a-dir/x.jsonl" "a log that cannot be made is refused before any sink opens" -- \
  "$pesc" train --headless $common --steps 1 --log "$tmp/not-a-dir/x.jsonl" --sink "csv:$tmp/named.csv"
[ "$(cat "$tmp/cwd/pesc-run.csv" "$tmp/named.csv")" = "precious
precious" ] || fail "a refused run touched pesc-run.csv or a named --sink file"
# a resumed run appends to BASE.csv: one header, every step's row
# shellcheck disable=SC2086
"$pesc" train --headless $common --steps 2 --save "$tmp/cs" --sink csv >/dev/null 2>"$tmp/err" &&
  "$pesc" train --headless $common --steps 4 --resume "$tmp/cs" --save "$tmp/cs" --sink csv >/dev/null 2>>"$tmp/err"
if [ "$(cut -d, -f1 "$tmp/cs.csv" | tr '\n' ' ')" = "step 1 2 3 4 " ]; then
  pass "--resume appends to BASE.csv"
else
  fail "--resume and --sink csv: $(cut -d, -f1 "$tmp/cs.csv" | tr '\n' ' ') $(cat "$tmp/err")"
fi
# ... under a header of a pesc before eval_loss (the 13th column): the file is rewritten once
# with the column back (empty in the rows before), every row kept, the new rows under it; its
# mode kept, and a link to it still a link (here BASE.csv links to the file)
cp "$tmp/cs.csv" "$tmp/cs.full"
awk -F, -v OFS=, '{ for (i = 13; i < NF; i++) $i = $(i + 1); NF--; print }' "$tmp/cs.full" >"$tmp/cs.real"
chmod 640 "$tmp/cs.real"
rm "$tmp/cs.csv" && ln -s cs.real "$tmp/cs.csv"
# shellcheck disable=SC2086
"$pesc" train --headless $common --steps 6 --resume "$tmp/cs" --save "$tmp/cs" --sink csv >/dev/null 2>"$tmp/err"
status=$?
width=$(head -n 1 "$tmp/cs.full" | awk -F, '{ print NF }')
if [ $status -eq 0 ] && [ "$(head -n 5 "$tmp/cs.csv")" = "$(cat "$tmp/cs.full")" ] &&
  [ "$(cut -d, -f1 "$tmp/cs.csv" | tr '\n' ' ')" = "step 1 2 3 4 5 6 " ] &&
  [ "$(awk -F, '{ print NF }' "$tmp/cs.csv" | sort -u)" = "$width" ] &&
  [ "$(stat -L -c %a "$tmp/cs.csv")" = 640 ] && [ -L "$tmp/cs.csv" ] && ! grep -q sink "$tmp/err" &&
  [ -z "$(find "$tmp" -maxdepth 1 -name 'cs.csv.*' -o -maxdepth 1 -name 'cs.real.*')" ]; then
  pass "--resume under a csv header without eval_loss: the column is added, every row kept"
else
  fail "--resume under an older csv header: exit $status, rows $(cut -d, -f1 "$tmp/cs.csv" | tr '\n' ' ') $(head -n 1 "$tmp/cs.csv" | head -c 200) $(cat "$tmp/err")"
fi
# ... and under a header in another order, each value goes in the column its tag names: here
# loss and tokens swapped, the new rows' tokens (column 4 of the file now) those of the log
awk -F, -v OFS=, '{ t = $4; $4 = $12; $12 = t; print }' "$tmp/cs.csv" >"$tmp/cs.swapped"
rm "$tmp/cs.csv" && cp "$tmp/cs.swapped" "$tmp/cs.csv"
# shellcheck disable=SC2086
"$pesc" train --headless $common --steps 8 --resume "$tmp/cs" --save "$tmp/cs" --sink csv --log "$tmp/cs.jsonl" >/dev/null 2>"$tmp/err"
status=$?
logged=$(sed -n 's/.*"tokens":\([0-9]*\)[,}].*/\1/p' "$tmp/cs.jsonl" | tr '\n' ' ')
if [ $status -eq 0 ] && [ "$(head -n 7 "$tmp/cs.csv")" = "$(cat "$tmp/cs.swapped")" ] &&
  [ "$(tail -n 2 "$tmp/cs.csv" | cut -d, -f4 | tr '\n' ' ')" = "$logged" ] && [ -n "$logged" ]; then
  pass "--resume under a csv header in another order: each value under its own tag"
else
  fail "--resume under a reordered csv header: exit $status, tokens $(tail -n 2 "$tmp/cs.csv" | cut -d, -f4 | tr '\n' ' ') against the log's $logged $(cat "$tmp/err")"
fi
# ... but a file that is not a pesc csv is refused, untouched
printf 'a,b\n1,2\n' >"$tmp/cs.csv"
# shellcheck disable=SC2086
expect 1 "\-\-sink csv: $tmp/cs.csv: its first line is not a pesc csv header" \
  "--resume onto a csv that is not pesc's is refused" -- \
  "$pesc" train --headless $common --steps 9 --resume "$tmp/cs" --save "$tmp/cs" --sink csv
[ "$(cat "$tmp/cs.csv")" = "a,b
1,2" ] || fail "a refused csv was changed: $(cat "$tmp/cs.csv")"

# the control socket: replies, effects in the log, malformed lines refused
# shellcheck disable=SC2086
"$pesc" train --headless $common --steps 100000 --log "$tmp/live.jsonl" --control "$tmp/sock" >/dev/null 2>&1 &
pid=$!
pids="$pids $pid"
for _ in $(seq 100); do [ -S "$tmp/sock" ] && break; sleep 0.1; done
mode=$(stat -c %a "$tmp/sock" 2>/dev/null)
r1=$("$sockcmd" "$tmp/sock" "lr 0.004")
r2=$("$sockcmd" "$tmp/sock" "frobnicate")
r3=$("$sockcmd" "$tmp/sock" "lr *0.5")
r4=$("$sockcmd" "$tmp/sock" "pause")
r6=$("$sockcmd" "$tmp/sock" "save")   # this run has no --save
# a second run refused for its --control socket has not touched its log: the socket is taken
# before any output file is opened, by train and by tui alike
echo precious >"$tmp/keep.jsonl"
for cmd in "train --headless" tui; do
  tty=; [ "$cmd" = tui ] && tty=on_tty   # tui refuses to start without a terminal
  # shellcheck disable=SC2086
  expect 1 "\-\-control $tmp/sock: another run is listening there" "$cmd: a --control socket in use refuses the run" -- \
    $tty "$pesc" $cmd $common --steps 1 --log "$tmp/keep.jsonl" --control "$tmp/sock"
  # shellcheck disable=SC2086
  expect 1 "\-\-control $tmp/keep.jsonl/sock: Not a directory; its directory cannot be made" "$cmd: a --control socket under a file refuses the run, saying why" -- \
    $tty "$pesc" $cmd $common --steps 1 --log "$tmp/keep.jsonl" --control "$tmp/keep.jsonl/sock"
done
# as for the other outputs, the socket's missing directories are made
# shellcheck disable=SC2086
expect 0 "step 1/1" "a --control socket in a missing directory: the directory is made" -- \
  "$pesc" train --headless $common --steps 1 --control "$tmp/no/dir/sock"
[ "$(cat "$tmp/keep.jsonl")" = precious ] || fail "a run refused for its --control socket truncated its --log"
# the step in flight finishes first: measure once the pause is in the log
for _ in $(seq 100); do grep -q '"event":"pause"' "$tmp/live.jsonl" && break; sleep 0.05; done
before=$(grep -c '"loss"' "$tmp/live.jsonl")
sleep 0.5
after=$(grep -c '"loss"' "$tmp/live.jsonl")
r5=$("$sockcmd" "$tmp/sock" "stop")
wait $pid
status=$?
if [ "$mode" = 600 ] && [ "$r1" = "ok: lr 0.004" ] && case "$r2" in "error: unknown command"*) true ;; *) false ;; esac &&
   [ "$r3" = "ok: lr *0.5" ] && [ "$r4" = "ok: pause" ] && [ "$before" = "$after" ] && [ "$r5" = "ok: stop" ] &&
   [ "$r6" = "error: save needs a run started with --save DIR" ] &&
   [ $status -eq 0 ] && grep -q '"event":"lr".*"text":"learning rate 0.004 (was 0.01)"' "$tmp/live.jsonl" &&
   grep -q '"event":"lr".*"text":"learning rate 0.002 (was 0.004)"' "$tmp/live.jsonl" &&
   grep -q '"event":"pause"' "$tmp/live.jsonl" && [ ! -e "$tmp/sock" ]; then
  pass "control socket (mode $mode): lr, lr *0.5, pause holds the steps, stop; a bad line and a save without --save are refused"
else
  fail "control socket: mode '$mode' replies '$r1' '$r2' '$r3' '$r4' '$r5' '$r6', steps $before/$after, exit $status"
fi

# Ctrl-C: finish the step, save, exit 0
# shellcheck disable=SC2086
"$pesc" train --headless $common --steps 100000 --save "$tmp/int" --log "$tmp/int.jsonl" >/dev/null 2>"$tmp/int.err" &
pid=$!
pids="$pids $pid"
# a background job starts with SIGINT ignored until pesc installs its handler: wait for a step
for _ in $(seq 200); do grep -q '"loss"' "$tmp/int.jsonl" 2>/dev/null && break; sleep 0.05; done
kill -INT $pid
wait $pid
status=$?
if [ $status -eq 0 ] && ls "$tmp/int" | grep -q '^step-' && grep -q "stopping after this step" "$tmp/int.err"; then
  pass "SIGINT: the step finishes, a checkpoint is saved, exit 0"
else
  fail "SIGINT: exit $status, checkpoints: $(ls "$tmp/int" 2>&1)"
fi

# a hang-up (the SSH session gone) stops the run as Ctrl-C does: saved, the log closed, exit 0
# (it once killed the run unsaved, exit 129); under nohup, which ignores SIGHUP, it goes on
# shellcheck disable=SC2086
"$pesc" train --headless $common --steps 100000 --save "$tmp/hup" --log "$tmp/hup.jsonl" >/dev/null 2>&1 &
pid=$!
pids="$pids $pid"
for _ in $(seq 200); do grep -q '"loss"' "$tmp/hup.jsonl" 2>/dev/null && break; sleep 0.05; done
kill -HUP $pid
wait $pid
status=$?
if [ $status -eq 0 ] && ls "$tmp/hup" | grep -q '^step-' && tail -n 1 "$tmp/hup.jsonl" | grep -q '"event":"stop"'; then
  pass "SIGHUP: the step finishes, a checkpoint is saved, the log ends with stop, exit 0"
else
  fail "SIGHUP: exit $status, checkpoints: $(ls "$tmp/hup" 2>&1), last log line $(tail -n 1 "$tmp/hup.jsonl" | head -c 100)"
fi
# the same with the terminal itself gone (its progress lines with it): still exit 0, not a
# failure to write standard output
# shellcheck disable=SC2086
/usr/bin/python3 - "$pesc" train --headless $common --steps 100000 --save "$tmp/ptyhup" --log "$tmp/ptyhup.jsonl" \
  >"$tmp/ptyhup.status" 2>"$tmp/ptyhup.err" <<'PY'
import os, pty, signal, subprocess, sys, time
master, slave = pty.openpty()
run = subprocess.Popen(sys.argv[1:], stdin=slave, stdout=slave)
os.close(slave)
start = time.time()
while time.time() - start < 30 and b"step" not in os.read(master, 4096):
    pass
os.close(master)   # the terminal goes away, then the hang-up comes
run.send_signal(signal.SIGHUP)
print(run.wait())
PY
if [ "$(cat "$tmp/ptyhup.status")" = 0 ] && ls "$tmp/ptyhup" | grep -q '^step-' &&
   ! grep -q "standard output" "$tmp/ptyhup.err"; then
  pass "SIGHUP with the terminal gone: saved, exit 0"
else
  fail "SIGHUP with the terminal gone: exit '$(cat "$tmp/ptyhup.status")', $(ls "$tmp/ptyhup" 2>&1), $(cat "$tmp/ptyhup.err")"
fi
# shellcheck disable=SC2086
nohup "$pesc" train --headless $common --steps 100000 --log "$tmp/nohup.jsonl" >/dev/null 2>&1 &
pid=$!
pids="$pids $pid"
for _ in $(seq 200); do grep -q '"loss"' "$tmp/nohup.jsonl" 2>/dev/null && break; sleep 0.05; done
kill -HUP $pid
sleep 0.3
if kill -0 $pid 2>/dev/null; then pass "SIGHUP under nohup: the run goes on"; else fail "SIGHUP under nohup ended the run"; fi
kill -TERM $pid
wait $pid
# standard output that goes away (a `| tee` ended by the hang-up) does not kill the run (it
# once died of SIGPIPE, unsaved): it trains on, and stops saved; the exit says output was lost
# shellcheck disable=SC2086
( "$pesc" train --headless $common --steps 100000 --save "$tmp/pipe" --log "$tmp/pipe.jsonl" 2>"$tmp/pipe.err" &
  echo $! >"$tmp/pipe.pid"; wait $!; echo $? >"$tmp/pipe.status" ) | true &
for _ in $(seq 100); do [ -s "$tmp/pipe.pid" ] && break; sleep 0.05; done
pid=$(cat "$tmp/pipe.pid")
pids="$pids $pid"
for _ in $(seq 200); do
  n=$(grep -c '"loss"' "$tmp/pipe.jsonl" 2>/dev/null)
  [ "${n:-0}" -gt 20 ] && break
  sleep 0.05
done
kill -TERM "$pid"
for _ in $(seq 300); do [ -s "$tmp/pipe.status" ] && break; sleep 0.1; done
if [ "$(cat "$tmp/pipe.status" 2>/dev/null)" = 1 ] && ls "$tmp/pipe" | grep -q '^step-' &&
   tail -n 1 "$tmp/pipe.jsonl" | grep -q '"event":"stop"' &&
   [ "$(grep -c "cannot write to standard output" "$tmp/pipe.err")" = 1 ]; then
  pass "a closed standard output: the run trains on, stops saved on SIGTERM, exit 1 naming stdout"
else
  fail "closed stdout: exit '$(cat "$tmp/pipe.status" 2>/dev/null)', checkpoints: $(ls "$tmp/pipe" 2>&1), $(cat "$tmp/pipe.err")"
fi

# kill -9 at random moments of a run that saves every step: the newest checkpoint resumes
# and trains on (a background job of a script ignores SIGINT until pesc installs its handler,
# so the resumed run is ended with SIGTERM once it has logged a step)
ok=1
for i in 1 2 3 4 5; do
  again=""   # after the first round the directory holds this run's checkpoints: continue it
  [ "$i" -gt 1 ] && again="--resume $tmp/k9"
  # shellcheck disable=SC2086
  "$pesc" train --headless $common --steps 100000 $again --save "$tmp/k9" --save-every 1 --keep 2 >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 100); do ls "$tmp/k9" 2>/dev/null | grep -q '^step-' && break; sleep 0.05; done
  sleep "0.$i"
  kill -9 $pid
  wait $pid 2>/dev/null
  rm -f "$tmp/k9.jsonl"
  # shellcheck disable=SC2086
  "$pesc" train --headless $common --steps 100000 --resume "$tmp/k9" --save "$tmp/k9" --keep 2 \
      --log "$tmp/k9.jsonl" >/dev/null 2>"$tmp/k9.err" &
  pid=$!
  for _ in $(seq 100); do grep -q '"loss"' "$tmp/k9.jsonl" 2>/dev/null && break; sleep 0.1; done
  kill -TERM $pid
  if ! wait $pid || ! grep -q '"loss"' "$tmp/k9.jsonl"; then
    ok=0
    echo "resume after kill -9 #$i failed: $(cat "$tmp/k9.err")"
  fi
done
[ $ok = 1 ] && pass "kill -9 during saves, 5 times: the last checkpoint always resumes and trains on" ||
  fail "kill -9 during saves left a checkpoint that does not load"

# the token store: nothing left in TMPDIR while a run goes or after kill -9; a missing or
# full TMPDIR is one line that names it (a file size limit fails writes as a full disk does)
mkdir "$tmp/store"
# shellcheck disable=SC2086
TMPDIR="$tmp/store" "$pesc" train --headless $common --steps 100000 --log "$tmp/store.jsonl" >/dev/null 2>&1 &
pid=$!
pids="$pids $pid"
for _ in $(seq 100); do grep -q '"loss"' "$tmp/store.jsonl" 2>/dev/null && break; sleep 0.1; done
during=$(ls -A "$tmp/store")
kill -9 $pid
wait $pid 2>/dev/null
if grep -q '"data_records":64,"data_tokens":1280' "$tmp/store.jsonl" && [ -z "$during" ] &&
   [ -z "$(ls -A "$tmp/store")" ]; then
  pass "token store: the start line counts 64 records of 1280 tokens; TMPDIR stays empty, also after kill -9"
else
  fail "token store: in TMPDIR during the run '$during', after kill -9 '$(ls -A "$tmp/store")'; $(head -n 1 "$tmp/store.jsonl")"
fi
# shellcheck disable=SC2086
expect 1 "token store in $tmp/missing.*set TMPDIR" "a missing TMPDIR is named" -- \
  env TMPDIR="$tmp/missing" "$pesc" train --headless $common --steps 1
# shellcheck disable=SC2086
expect 1 "token store in $tmp/store cannot grow past .*TMPDIR" "a full TMPDIR is named" -- \
  env TMPDIR="$tmp/store" sh -c 'ulimit -f 1; trap "" XFSZ; exec "$@"' sh "$pesc" train --headless $common --steps 1

# --data weights that would leave every epoch empty, or make one of billions of records, are
# refused before the first step (both once spun forever)
expect 2 "the weight after ':' must be > 0 and at most 1000" "--data FILE:1e30 is a usage error" -- \
  "$pesc" train --headless --model "$base" --data "$tmp/data.jsonl:1e30" --steps 1 --backend cpu
expect 1 "the \-\-data weights make an epoch of 6.4e-299 records on average" "--data FILE:1e-300 is refused" -- \
  timeout 60 "$pesc" train --headless --model "$base" --data "$tmp/data.jsonl:1e-300" --steps 1 --backend cpu

# records longer than --seq are cut, with --pack too: the tokens no step sees are noted (they
# were once dropped without a word)
awk 'BEGIN { for (r = 0; r < 5; r++) { n = r < 3 ? 40 : 20; printf "{\"input_ids\": ["; for (t = 0; t < n; t++) printf "%s%d", t ? ", " : "", (r + t) % 64; print "]}" } }' >"$tmp/long.jsonl"
for pack in "" --pack; do
  # shellcheck disable=SC2086
  expect 0 "^pesc train: records longer than \-\-seq 24: 3 of 5, cut to their first 24 tokens (48 of 160 tokens never trained on); raise \-\-seq" \
    "records cut to --seq are noted ${pack:-without --pack}" -- \
    "$pesc" train --headless --model "$base" --data "$tmp/long.jsonl" --seq 24 --batch 2 --steps 1 --backend cpu $pack
done

# data with nothing to learn (every label masked) is refused, rather than trained at loss 0
printf '{"input_ids": [1, 2, 3, 4], "labels": [-100, -100, -100, -100]}\n{"input_ids": [5, 6, 7], "labels": [5, -100, -100]}\n' >"$tmp/masked.jsonl"
expect 1 "the \-\-data records have no token to learn: every label is -100" "all-masked data is refused" -- \
  "$pesc" train --headless --model "$base" --data "$tmp/masked.jsonl" --steps 1 --backend cpu

# a NaN in the base weights is named when the model loads (training would skip every step),
# by train and by eval alike
mkdir "$tmp/nanbase" && cp "$base/config.json" "$base/model.safetensors" "$tmp/nanbase/"
header=$(od -An -tu8 -N8 "$base/model.safetensors" | tr -d ' ')
printf '\000\000\300\177' | dd of="$tmp/nanbase/model.safetensors" bs=1 seek=$((8 + header + 4)) conv=notrunc 2>/dev/null
expect 1 "model.safetensors: tensor .* holds NaN at element 1: the file is damaged" "train: a NaN weight is named at load" -- \
  "$pesc" train --headless --model "$tmp/nanbase" --data "$tmp/data.jsonl" --steps 1 --backend cpu
expect 1 "model.safetensors: tensor .* holds NaN at element 1" "eval: a NaN weight is named at load" -- \
  "$pesc" eval --model "$tmp/nanbase" --data "$tmp/data.jsonl" --backend cpu

# finite weights that overflow (every value 8.5e37): the first loss is not finite before any
# update, which no learning rate mends; train says so after --nan-limit batches (not after
# ten halvings), eval names NaN or infinity, and neither sends a CPU run to --backend cpu
mkdir "$tmp/hugebase" && cp "$base/config.json" "$tmp/hugebase/"
size=$(wc -c <"$base/model.safetensors")
{ head -c $((8 + header)) "$base/model.safetensors"; head -c $((size - 8 - header)) /dev/zero | tr '\000' '\176'; } >"$tmp/hugebase/model.safetensors"
expect 1 "step 1: the loss was not finite on 3 steps in a row before any update: the model .* overflows on this data as loaded (its weights, or the adapters it resumed), not from the learning rate$" \
  "train: a base that overflows is blamed at once, not the learning rate" -- \
  "$pesc" train --headless --model "$tmp/hugebase" --data "$tmp/data.jsonl" --steps 1 --backend cpu \
    --save "$tmp/hugesave"
expect 1 "the loss is \(NaN\|infinite\): the model overflows on this data (its weights and --adapters are finite numbers, not what it makes of them)$" \
  "eval: a base that overflows is named, with no --backend cpu advice on the CPU" -- \
  "$pesc" eval --model "$tmp/hugebase" --data "$tmp/data.jsonl" --backend cpu

# the base at the path the checkpoint names has other weights now: said so, not "give --model"
# with the path already given
rm -rf "$tmp/moved" && cp -r "$tmp/ck/step-00000006" "$tmp/moved"
sed 's/"base_fingerprint": "[0-9a-f]*"/"base_fingerprint": "0123456789abcdef"/' \
  "$tmp/ck/step-00000006/state.json" >"$tmp/moved/state.json"
# shellcheck disable=SC2086
expect 1 "was trained on .*llama-gqa-f32, whose weights have changed since (the fingerprint differs): put back the weights" \
  "resume onto a base whose weights changed at the same path" -- \
  "$pesc" train --headless $common --steps 10 --resume "$tmp/moved"

# a damaged state.json is refused, naming the key, rather than resumed at step 0 or with a
# negative coefficient (or read past a number where a name belongs), or with a value outside
# its flag's range cut down to an int (grad_accum 2^31 trained nothing, experts 2^32 + 4 was 4)
for edit in '/"step":/d' 's/"aux_coef": .*/"aux_coef": -1,/' 's/"train": .*/"train": "bogus",/' \
            's/"train": .*/"train": 5,/' 's/"step": 6/"step": "six"/' 's/"pack": false/"pack": 3/' \
            's/"grad_accum": 1/"grad_accum": 2147483648/' 's/"seq": 24/"seq": 2147483648/' \
            's/"batch": 4/"batch": 2147483648/' 's/"experts": 4/"experts": 4294967300/' \
            's/"adapter_scale": .*/"adapter_scale": 1e39,/' \
            's/"batch": 4/"batch": 65536/; s/"seq": 24/"seq": 1048576/' \
            's/"template": "[a-z0-9_-]*"/"template": "nosuch"/'; do
  rm -rf "$tmp/bad" && cp -r "$tmp/ck/step-00000006" "$tmp/bad"
  sed "$edit" "$tmp/ck/step-00000006/state.json" >"$tmp/bad/state.json"
  key=$(printf '%s' "$edit" | sed 's/^[^"]*"\([a-z_]*\)".*/\1/')
  # shellcheck disable=SC2086
  expect 1 "state.json: \"$key\" .*the file is damaged" "a state.json with $edit is refused" -- \
    "$pesc" train --headless $common --steps 10 --resume "$tmp/bad"
done

# damaged AdamW moments are refused at load, naming the file, rather than resumed at step 0
# ("abc"), with a negative step, or with moments that make every update non-finite; the same
# file rewritten unchanged resumes, so the edits are what is refused
for edit in 'adam_step=6' 'adam_step=-1' 'adam_step=abc' 'adam_step=99999999999999999999' \
            'adam_step=' 'adam_step= 6' 'adam_v[3]=nan' 'adam_v[3]=-1' 'adam_v[3]=inf' \
            'adam_m[3]=nan' 'adam_m[3]=-inf'; do
  rm -rf "$tmp/bad" && cp -r "$tmp/ck/step-00000006" "$tmp/bad"
  st_edit "$tmp/bad/optimizer.safetensors" "$edit" || fail "st_edit $edit"
  case $edit in
    adam_step=6) want=0 pattern="step 7/7" ;;
    adam_step*) want=1 pattern="optimizer.safetensors: metadata adam_step .* is not a count of steps" ;;
    *) want=1 pattern="optimizer.safetensors: adam_[mv] holds .* at element 3: the file is damaged" ;;
  esac
  # shellcheck disable=SC2086
  expect $want "$pattern" "optimizer.safetensors with $edit" -- \
    "$pesc" train --headless $common --steps 7 --resume "$tmp/bad"
done

# a value at its flag's bound resumes as the flag allowed it: --adapter-dropout 0.99 is saved
# as the float's 0.9900000095
# shellcheck disable=SC2086
"$pesc" train --headless $common --steps 1 --adapter-dropout 0.99 --save "$tmp/edge" >/dev/null 2>&1
# shellcheck disable=SC2086
expect 0 "step 2/2" "a checkpoint of --adapter-dropout 0.99 resumes" -- \
  "$pesc" train --headless $common --steps 2 --resume "$tmp/edge/step-00000001"

# a state.json cut short (a copy interrupted, a hand edit) is named, with what to do
rm -rf "$tmp/cut" && cp -r "$tmp/ck/step-00000006" "$tmp/cut"
head -c 200 "$tmp/ck/step-00000006/state.json" >"$tmp/cut/state.json"
# shellcheck disable=SC2086
expect 1 "$tmp/cut/state.json: .*(the file is damaged, or not a pesc checkpoint's: use another checkpoint)" \
  "a state.json cut short is refused, saying what to do" -- \
  "$pesc" train --headless $common --steps 10 --resume "$tmp/cut"

# a checkpoint that cannot be read is named with what is wrong, not "no checkpoint here", and
# an older one is not resumed in its place without a word
mkdir -p "$tmp/incomplete/step-00000001"
# shellcheck disable=SC2086
expect 1 "$tmp/incomplete/step-00000001/state.json: No such file or directory (not a complete checkpoint" \
  "--resume of a save directory whose only step-N lacks state.json names it" -- \
  "$pesc" train --headless $common --steps 10 --resume "$tmp/incomplete"
# a save of a step that was there already, killed between its two renames: the old copy it
# had moved aside comes back (it was taken for an unfinished save, and the advice lost it)
dead=$(sh -c 'echo $$')   # a process that has ended
mkdir "$tmp/aside" && cp -r "$tmp/ck/step-00000003" "$tmp/aside/" &&
  cp -r "$tmp/ck/step-00000006" "$tmp/aside/.tmp-step-00000006-$dead.old" &&
  mkdir "$tmp/aside/.tmp-step-00000006-$dead"   # the new copy, half written
expect 0 "checkpoint *$tmp/aside/step-00000006" \
  "a checkpoint moved aside by a save killed mid-replace is put back" -- "$pesc" inspect "$tmp/aside"
[ -f "$tmp/aside/step-00000006/state.json" ] && ! ls -A "$tmp/aside" | grep -q 'old$' ||
  fail "the moved-aside checkpoint: $(ls -A "$tmp/aside")"
# ... also when a run resumes an older step there: put back first, it is not overwritten
mkdir "$tmp/aside2" && cp -r "$tmp/ck/step-00000003" "$tmp/aside2/" &&
  cp -r "$tmp/ck/step-00000006" "$tmp/aside2/.tmp-step-00000006-$dead.old"
# shellcheck disable=SC2086
expect 1 "holds step-00000006, past the resumed step 3, and this run would overwrite it" \
  "a moved-aside checkpoint past the resumed step is put back before the run claims the directory" -- \
  "$pesc" train --headless $common --steps 8 --resume "$tmp/aside2/step-00000003" --save "$tmp/aside2"
mkdir "$tmp/nostate" && cp -r "$tmp/ck/step-00000003" "$tmp/ck/step-00000006" "$tmp/nostate/" &&
  rm "$tmp/nostate/step-00000006/state.json"
# shellcheck disable=SC2086
expect 1 "holds step-00000006, past the resumed step 3, with no state.json: a save that did not finish; remove it" \
  "--resume past a newest step-N without state.json says it is unfinished" -- \
  "$pesc" train --headless $common --steps 10 --resume "$tmp/nostate"
mkdir -p "$tmp/mixed/step-00000009" && cp -r "$tmp/ck/step-00000003" "$tmp/mixed/" &&
  ln -s state.json "$tmp/mixed/step-00000009/state.json"   # a link to itself: never readable
# shellcheck disable=SC2086
expect 1 "$tmp/mixed/step-00000009/state.json: .*(make it readable, or name an older step-N directory)" \
  "an unreadable newest checkpoint is named, not passed over for an older one" -- \
  "$pesc" train --headless $common --steps 10 --resume "$tmp/mixed"
expect 1 "$tmp/mixed/step-00000009/state.json: .*(make it readable" \
  "inspect names the unreadable checkpoint too" -- "$pesc" inspect "$tmp/mixed"
if [ "$(id -u)" = 0 ]; then
  echo "skip the unreadable-permission checkpoints: root reads everything"
else
  mkdir "$tmp/unread" && cp -r "$tmp/ck/step-00000006" "$tmp/unread/"
  for target in "$tmp/unread/step-00000006/state.json" "$tmp/unread/step-00000006"; do
    chmod 000 "$target"
    for at in "$tmp/unread" "$tmp/unread/step-00000006"; do
      # shellcheck disable=SC2086
      expect 1 "$tmp/unread/step-00000006/state.json: Permission denied (make it readable" \
        "--resume $at with $(basename "$target") unreadable names the file" -- \
        "$pesc" train --headless $common --steps 10 --resume "$at"
    done
    chmod u+rwx "$target"
  done
fi

# resuming a run already at or past --steps says so, rather than exiting 0 having done nothing
# shellcheck disable=SC2086
expect 1 "cannot resume: \-\-resume $tmp/ck/step-00000006 is at step 6, and this run ends at step 4: raise \-\-steps" \
  "--resume past --steps is refused" -- "$pesc" train --headless $common --steps 4 --resume "$tmp/ck"

# resuming with another shape is refused with what differs
# shellcheck disable=SC2086
"$pesc" train --headless $common --seq 16 --steps 10 --resume "$tmp/ck" >"$tmp/out" 2>"$tmp/err"
status=$?
if [ $status -eq 1 ] && grep -q "saved with --seq 24" "$tmp/err" && [ "$(wc -l <"$tmp/err")" -eq 1 ]; then
  pass "resume with another --seq refused: $(cat "$tmp/err")"
else
  fail "resume with another --seq: exit $status: $(cat "$tmp/err")"
fi

# every other difference is named in its flag, with the value that continues the run: the
# scales that are part of the trained function when given (they were once silently replaced
# by the checkpoint's), LoRA targets (once shown as two equal numbers), --train, --seed
# shellcheck disable=SC2086
for case in "--adapter-scale 0.5|--adapter-scale 0.25; this run asks for --adapter-scale 0.5: give --adapter-scale 0.25" \
            "--experts 8|--experts 4; this run asks for --experts 8: give --experts 4" \
            "--seed 5|--seed 1; this run asks for --seed 5: give --seed 1"; do
  expect 1 "was saved with ${case#*|}" "resume with ${case%%|*} refused, naming it" -- \
    "$pesc" train --headless $common --steps 10 --resume "$tmp/ck" ${case%%|*}
done
# shellcheck disable=SC2086
expect 1 "\-\-resume $tmp/ck/step-00000006 was saved without \-\-pack; this run packs: leave out \-\-pack" \
  "resume with --pack refused, naming it" -- "$pesc" train --headless $common --steps 10 --resume "$tmp/ck" --pack
cat "$tmp/data.jsonl" "$tmp/data.jsonl" >"$tmp/data2.jsonl"
# shellcheck disable=SC2046 # the options are words
expect 1 "\-\-resume $tmp/ck/step-00000006: the saved data cursor belongs to other data .*give the \-\-data files" \
  "resume on other --data refused, naming the checkpoint" -- \
  "$pesc" train --headless $(printf '%s' "$common" | sed "s|$tmp/data.jsonl|$tmp/data2.jsonl|") --steps 10 --resume "$tmp/ck"
# the same records in another order: the same counts and tokens, other records under the cursor
tac "$tmp/data.jsonl" >"$tmp/data-reversed.jsonl"
# shellcheck disable=SC2046 # the options are words
expect 1 "\-\-resume $tmp/ck/step-00000006: the saved data cursor belongs to other data: the records hold other tokens, or come in another order" \
  "resume on the same records in another order refused" -- \
  "$pesc" train --headless $(printf '%s' "$common" | sed "s|$tmp/data.jsonl|$tmp/data-reversed.jsonl|") --steps 10 --resume "$tmp/ck"
# a checkpoint from before the content was kept still resumes on its data
mkdir "$tmp/old" && cp -r "$tmp/ck/step-00000006" "$tmp/old/"
sed -i '/"content": /d; s/"fingerprint": "\([0-9a-f]*\)",/"fingerprint": "\1"/' "$tmp/old/step-00000006/state.json"
# shellcheck disable=SC2086
expect 0 "step 7/7" "a checkpoint without the data's content resumes" -- \
  "$pesc" train --headless $common --steps 7 --resume "$tmp/old/step-00000006"
# shellcheck disable=SC2086
"$pesc" train --headless $common --steps 1 --lora-rank 2 --lora-targets q,v --save "$tmp/lora" >/dev/null 2>&1
# shellcheck disable=SC2086
expect 1 "saved with \-\-lora-targets q,v; this run asks for \-\-lora-targets q: give \-\-lora-targets q,v" \
  "resume with other --lora-targets names them" -- \
  "$pesc" train --headless $common --steps 2 --lora-rank 2 --lora-targets q --resume "$tmp/lora"
# shellcheck disable=SC2086
expect 1 "saved with \-\-lora-alpha 16; this run asks for \-\-lora-alpha 64" "resume with another --lora-alpha refused" -- \
  "$pesc" train --headless $common --steps 2 --lora-rank 2 --lora-targets q,v --lora-alpha 64 --resume "$tmp/lora"
expect 1 "was saved by a \-\-train pesc run; this run asks for \-\-train full: give \-\-train pesc" \
  "resume of a PESC run with --train full refused" -- \
  "$pesc" train --headless --model "$base" --data "$tmp/data.jsonl" --seq 24 --batch 4 --backend cpu \
  --train full --steps 10 --resume "$tmp/ck"

# a run from --init-config: its random weights are the seed's, so another --seed is named as
# such (it was once "whose weights differ: give --init-config", the file already given)
init="--init-config $base/config.json --data $tmp/data.jsonl --seq 24 --batch 4 --backend cpu --train full"
# shellcheck disable=SC2086
"$pesc" train --headless $init --steps 1 --save "$tmp/ic" >/dev/null 2>&1
# shellcheck disable=SC2086
expect 1 "was saved with \-\-seed 1; this run asks for \-\-seed 3: give \-\-seed 1" \
  "resume of an --init-config run with another --seed names the seed" -- \
  "$pesc" train --headless $init --steps 2 --seed 3 --resume "$tmp/ic"

# a --lr or --aux-coef other than the run's, given on resuming, is the run's, over the live
# values the checkpoint holds (a learning rate set while it ran once won over a lower --lr
# given after a divergence); left out, or the run's own repeated, the live values carry on
cp -r "$tmp/ck/step-00000006" "$tmp/live"
sed -i 's/"lr_override": null/"lr_override": 0.004/' "$tmp/live/state.json"
expect 0 "^lr now        0.004, set while it ran (the schedule's no longer applies)$" \
  "inspect a checkpoint: the learning rate set while it ran, which a resume keeps" -- \
  "$pesc" inspect "$tmp/live"
nolr=$(printf '%s' "$common" | sed 's/ --lr [^ ]*//')
# shellcheck disable=SC2086
"$pesc" train --headless $nolr --steps 7 --resume "$tmp/live" --log "$tmp/carry.jsonl" >/dev/null 2>&1
# shellcheck disable=SC2086
"$pesc" train --headless $common --steps 7 --resume "$tmp/live" --log "$tmp/same.jsonl" >/dev/null 2>&1
# shellcheck disable=SC2086
"$pesc" train --headless $nolr --steps 7 --resume "$tmp/live" --lr 1e-3 --aux-coef 0.05 \
  --save "$tmp/given" --log "$tmp/given.jsonl" >/dev/null 2>"$tmp/given.err"
if grep -q '"step":7,.*"lr":0.004' "$tmp/carry.jsonl" && grep -q '"step":7,.*"lr":0.004' "$tmp/same.jsonl" &&
   grep -q '"step":7,.*"lr":0.001' "$tmp/given.jsonl" &&
   grep -q '"aux_coef": 0.05' "$tmp/given/step-00000007/state.json" &&
   grep -q "^pesc train: \-\-lr 0.001 replaces the checkpoint's learning rate set while it ran, 0.004 (leave \-\-lr out to keep it)$" "$tmp/given.err" &&
   grep -q "^pesc train: \-\-aux-coef 0.05 replaces the checkpoint's 0.01 (leave \-\-aux-coef out to keep it)$" "$tmp/given.err" &&
   ! grep -q "would have taken" "$tmp/given.err"; then
  pass "resume: the live lr carries on, also under the run's own --lr; another --lr and --aux-coef replace it, noted"
else
  fail "resume with --lr/--aux-coef: $(grep -o '"lr":[^,]*' "$tmp/carry.jsonl" "$tmp/same.jsonl" "$tmp/given.jsonl") $(grep aux_coef "$tmp/given/step-00000007/state.json" 2>&1)"
fi

# every other setting given anew on resuming is noted too, a line each, on stderr and in the
# log (they were once taken without a word); the run's own values given again are not
head -n 8 "$tmp/data.jsonl" >"$tmp/anew-heldout.jsonl"
head -n 6 "$tmp/data.jsonl" >"$tmp/anew-heldout6.jsonl"
# shellcheck disable=SC2086
"$pesc" train --headless $common --steps 2 --clip 0.3 --eval-data "$tmp/anew-heldout.jsonl" \
  --save "$tmp/anew" >/dev/null 2>&1
"$pesc" train --headless --resume "$tmp/anew" --steps 3 --save "$tmp/anew-branch" \
  --neftune 5 --clip 0.5 --weight-decay 0.2 --adapter-dropout 0.2 --z-coef 0.01 \
  --eval-data "$tmp/anew-heldout6.jsonl" --log "$tmp/anew.jsonl" >/dev/null 2>"$tmp/anew.err"
"$pesc" train --headless --resume "$tmp/anew" --steps 3 --save "$tmp/anew-same" --clip 0.3 \
  --eval-data "$tmp/anew-heldout.jsonl" >/dev/null 2>"$tmp/anew-same.err"
missing=""
for note in "--neftune 5 replaces the checkpoint's 0 (leave --neftune out to keep it)" \
    "--clip 0.5 replaces the checkpoint's 0.3 (leave --clip out to keep it)" \
    "--weight-decay 0.2 replaces the checkpoint's 0 (leave --weight-decay out to keep it)" \
    "--adapter-dropout 0.2 replaces the checkpoint's 0.1 (leave --adapter-dropout out to keep it)" \
    "--z-coef 0.01 replaces the checkpoint's 0 (leave --z-coef out to keep it)" \
    "--eval-data $tmp/anew-heldout6.jsonl replaces the checkpoint's $tmp/anew-heldout.jsonl (leave --eval-data out to keep it)"; do
  grep -qxF "pesc train: $note" "$tmp/anew.err" &&
    grep -F "\"text\":\"$note\"}" "$tmp/anew.jsonl" | grep -q '"event":"note"' ||
    missing="$missing [$note]"
done
if [ -z "$missing" ] && [ -d "$tmp/anew-branch/step-00000003" ] && ! grep -q "replaces" "$tmp/anew-same.err"; then
  pass "resume: --neftune, --clip, --weight-decay, --adapter-dropout, --z-coef, --eval-data given anew are noted"
else
  fail "resume with settings anew: lacks$missing: $(head -c 600 "$tmp/anew.err") / same: $(head -c 300 "$tmp/anew-same.err")"
fi

# a resumed run's learning rate that is not what the run would have taken next is noted with
# what moved it: --steps under a cosine schedule (it once jumped 60x without a word), --lr
# shellcheck disable=SC2086
"$pesc" train --headless $nolr --lr 1e-3 --schedule cosine --warmup 0 --steps 4 --save-every 2 --save "$tmp/cos" \
  >/dev/null 2>&1
# shellcheck disable=SC2086
expect 0 "the learning rate at step 5 is 0.0005, where the run resumed would have taken 0: 8 steps in all (was 4)" \
  "resume with more --steps under cosine: the learning rate's jump noted" -- \
  "$pesc" train --headless $nolr --steps 8 --resume "$tmp/cos/step-00000004" --save "$tmp/cos8"
# shellcheck disable=SC2086
expect 0 "the learning rate at step 3 is 0.001, where the run resumed would have taken 0.0005: --lr 0.002 (was 0.001)" \
  "resume with another --lr: the learning rate's change noted" -- \
  "$pesc" train --headless $nolr --steps 4 --lr 2e-3 --resume "$tmp/cos/step-00000002" --save "$tmp/cos2"
# shellcheck disable=SC2086
"$pesc" train --headless $nolr --steps 4 --resume "$tmp/cos/step-00000002" --save "$tmp/cos3" 2>"$tmp/err" >/dev/null
grep -q "learning rate at step" "$tmp/err" && fail "resume as the run was: a learning-rate note: $(cat "$tmp/err")" ||
  pass "resume as the run was: no learning-rate note"

# a file whose records are mostly skipped (a binary file, say, of which a few lines pass as
# text) is refused, not trained on what passed
{ head -n 2 "$tmp/data.jsonl"; for _ in 1 2 3 4 5 6; do printf '\377\376 not text\n'; done; } >"$tmp/binary.jsonl"
# shellcheck disable=SC2086
expect 1 "binary.jsonl: 6 of its 8 records were skipped (the first: .*binary.jsonl:3: not valid UTF-8 .*): it is not a dataset pesc reads as it stands" \
  "a file of mostly skipped records is refused" -- "$pesc" train --headless $common --data "$tmp/binary.jsonl" --steps 1

# a line cut short is said so: its end is the line's, not the file's (jansson's "near end of
# file" read as if the whole file had been cut)
{ head -n 2 "$tmp/data.jsonl"; head -n 1 "$tmp/data.jsonl" | cut -c 1-20; tail -n +3 "$tmp/data.jsonl"; } >"$tmp/cut.jsonl"
# shellcheck disable=SC2086
expect 1 "cut.jsonl:3: not valid JSON (column [0-9]*: .* at the end of the line: cut short?)" \
  "a line cut short in the middle of a file: named at its line" -- \
  "$pesc" train --headless $common --data "$tmp/cut.jsonl" --steps 1 --strict

# a skipped bad record is said on stderr and in the log (where the workbench and pesc view
# show it: the workbench's stderr is its screen)
{ head -n 5 "$tmp/data.jsonl"; echo '{"input_ids": "x"}'; tail -n +6 "$tmp/data.jsonl"; } >"$tmp/bad.jsonl"
# shellcheck disable=SC2086
"$pesc" train --headless $common --data "$tmp/bad.jsonl" --steps 1 --log "$tmp/bad.log" >/dev/null 2>"$tmp/err"
grep -q '^pesc train: .*bad.jsonl:6: "input_ids" must be an array of token ids (record skipped)$' "$tmp/err" &&
  grep -q '"event":"note".*bad.jsonl:6: \\"input_ids\\" must be an array' "$tmp/bad.log" &&
  pass "a skipped record: a line on stderr and a note in the log" ||
  fail "a skipped record: stderr '$(cat "$tmp/err")', log notes: $(grep '"note"' "$tmp/bad.log")"

# the default template on a model with its own chat template: a note names the template that
# writes the model's markers; none once --template is given
demo="$top_srcdir/data/demo"
mkdir -p "$tmp/chatml"
cp "$demo/tokenizer.json" "$tmp/chatml/"
printf '{"bos_token": "<s>", "eos_token": "</s>", "chat_template": "{%% for m in messages %%}{{ %s + m.role }}{%% endfor %%}"}\n' \
  "'<|im_start|>'" >"$tmp/chatml/tokenizer_config.json"
"$pesc" demo-data -o "$tmp/chat.jsonl" --records 8 --seed 3 >/dev/null || exit 99
note_of() { "$pesc" train --headless --model "$demo" --tokenizer "$tmp/chatml/tokenizer.json" \
  --data "$tmp/chat.jsonl" --steps 1 --seq 64 --batch 4 --backend cpu "$@" 2>&1 >/dev/null | grep "chat template"; }
note=$(note_of)
case "$note" in
  "pesc train: the model's chat template (tokenizer_config.json) is chatml's, and records are rendered with camelidae (the default): --template chatml trains"*)
    [ -z "$(note_of --template camelidae)" ] &&
      pass "the default template on a chatml model: a note; --template given: none" ||
      fail "a note although --template was given: $(note_of --template camelidae)" ;;
  *) fail "no note on a chatml model trained with the default template: '$note'" ;;
esac
"$pesc" eval --model "$demo" --tokenizer "$tmp/chatml/tokenizer.json" --data "$tmp/chat.jsonl" \
  --backend cpu 2>"$tmp/err" >/dev/null
grep -q "^pesc eval: note: the model's chat template (tokenizer_config.json) is chatml's" "$tmp/err" &&
  pass "pesc eval notes the model's own template too" || fail "pesc eval, no note: $(cat "$tmp/err")"

echo "$failures failure(s)"
[ "$failures" -eq 0 ]
