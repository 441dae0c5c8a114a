#!/bin/sh
# heldout.sh — --eval-data: the held-out loss a run logs is the one pesc eval gives the
# checkpoint of that step; when it is measured (--eval-every, the last step, the eval
# command); where it goes (the log, csv); --eval-split (records of --data held out);
# --keep-best, also when DIR/best cannot be made or the disk is full; and the refusals.
set -u
top_srcdir=${top_srcdir:-.}
top_builddir=${top_builddir:-.}
pesc="$top_builddir/pesc"
sockcmd="$top_builddir/tests/sockcmd"
base="$top_srcdir/tests/reference/data/llama-gqa-f32"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/pesc-heldout.XXXXXX") || exit 99
trap 'rm -rf "$tmp"' EXIT
failures=0
. "${top_srcdir:-.}/tests/lib.sh"

# records of random ids below the model's vocabulary of 64: 48 to train on, 11 held out of
# lengths 3 to 33 (past --seq 24: cut as training cuts them), some with untrained labels
awk 'BEGIN { srand(7); for (r = 0; r < 48; r++) { printf "{\"input_ids\": ["; for (t = 0; t < 20; t++) printf "%s%d", t ? ", " : "", int(rand() * 64); print "]}" } }' >"$tmp/train.jsonl"
awk 'BEGIN { srand(11); for (r = 0; r < 11; r++) { n = 3 + 3 * r; printf "{\"input_ids\": ["; for (t = 0; t < n; t++) printf "%s%d", t ? ", " : "", int(rand() * 64); printf "], \"labels\": ["; for (t = 0; t < n; t++) printf "%s%d", t ? ", " : "", t < n / 2 ? -100 : int(rand() * 64); print "]}" } }' >"$tmp/heldout.jsonl"
common="--model $base --data $tmp/train.jsonl --seq 24 --batch 4 --experts 4 --adapter-dim 8 --lr 1e-2 --backend cpu --format tokens"

# shellcheck disable=SC2086
"$pesc" train --headless $common --steps 7 --eval-data "$tmp/heldout.jsonl" --eval-every 3 \
  --log "$tmp/run.jsonl" --save "$tmp/ck" --save-every 3 --sink csv >"$tmp/out" 2>"$tmp/err"
status=$?
evaluated=$(grep '"loss"' "$tmp/run.jsonl" | grep '"eval_loss"' | sed 's/.*"step":\([0-9]*\),.*/\1/' | tr '\n' ' ')
[ $status -eq 0 ] && [ "$evaluated" = "3 6 7 " ] &&
  [ "$(grep -c '"event":"eval"' "$tmp/run.jsonl")" = 3 ] &&
  pass "--eval-every 3 of 7 steps: the held-out loss at steps 3, 6 and the last, with an event each" ||
  fail "evaluations at steps '$evaluated' (exit $status): $(head -c 300 "$tmp/err")"

# the logged loss is pesc eval's of the checkpoint saved at that step; pesc eval scores whole
# records, so it gets the held-out records cut at --seq 24 as the run cut them
cut_at_24() {
  sed 's/^{"input_ids": \[\([^]]*\)\], "labels": \[\([^]]*\)\]}$/\1|\2/' "$1" | while IFS='|' read -r ids labels; do
    ids=$(printf '%s' "$ids" | tr ',' '\n' | head -n 24 | paste -sd, -)
    labels=$(printf '%s' "$labels" | tr ',' '\n' | head -n 24 | paste -sd, -)
    printf '{"input_ids": [%s], "labels": [%s]}\n' "$ids" "$labels"
  done
}
logged=$(grep '"step":6,' "$tmp/run.jsonl" | grep '"eval_loss"' | sed 's/.*"eval_loss":\([^,]*\),.*/\1/')
cut_at_24 "$tmp/heldout.jsonl" >"$tmp/heldout24.jsonl"
"$pesc" eval --model "$base" --adapters "$tmp/ck/step-00000006/trainables.safetensors" \
  --data "$tmp/heldout24.jsonl" --format tokens --backend cpu --json >"$tmp/eval.json" 2>"$tmp/eval.err"
scored=$(sed 's/.*"loss":\([^,}]*\).*/\1/' "$tmp/eval.json")
[ -n "$logged" ] && [ -n "$scored" ] && close "$logged" "$scored" 1e-5 &&
  pass "the held-out loss logged at step 6 ($logged) is pesc eval's of the step-6 checkpoint" ||
  fail "held-out loss at step 6: logged '$logged', pesc eval '$scored' $(head -c 200 "$tmp/eval.err")"
# ... and of the uncut records: eval of the checkpoint says how its run cut them, and --seq
# cuts there
"$pesc" eval --adapters "$tmp/ck/step-00000006" --data "$tmp/heldout.jsonl" --format tokens \
  --backend cpu --json >"$tmp/eval.json" 2>"$tmp/eval.err"
grep -q "note: 3 records are longer than the run's --seq of 24 tokens, where its held-out loss cut them: --seq 24" "$tmp/eval.err" &&
  pass "pesc eval of the checkpoint names the run's --seq that cut records" ||
  fail "eval of the checkpoint: $(cat "$tmp/eval.err")"
"$pesc" eval --model "$base" --adapters "$tmp/ck/step-00000006/trainables.safetensors" \
  --data "$tmp/heldout.jsonl" --format tokens --backend cpu --seq 24 --json >"$tmp/eval.json" 2>/dev/null
scored=$(sed 's/.*"loss":\([^,}]*\).*/\1/' "$tmp/eval.json")
[ -n "$scored" ] && close "$logged" "$scored" 1e-5 && pass "pesc eval --seq 24 cuts as the run did" ||
  fail "eval --seq 24: logged '$logged', pesc eval '$scored'"

# csv: an eval_loss column, empty on the steps without an evaluation
col=$(head -n 1 "$tmp/run.csv" | tr ',' '\n' | grep -n '^eval_loss$' | cut -d: -f1)
cells=$(awk -F, -v c="${col:-0}" 'NR > 1 { printf "%s%s", (NR > 2 ? " " : ""), ($c == "" ? "-" : "x") }' "$tmp/run.csv")
[ -n "$col" ] && [ "$cells" = "- - x - - x x" ] &&
  pass "csv: eval_loss filled at steps 3, 6 and 7 only" ||
  fail "csv eval_loss column ${col:-missing}: '$cells'"

# the default is ten evaluations over the run: every 2 of 20 steps
# shellcheck disable=SC2086
"$pesc" train --headless $common --steps 20 --eval-data "$tmp/heldout.jsonl" --log "$tmp/ten.jsonl" >/dev/null 2>&1
n=$(grep -c '"eval_loss"' "$tmp/ten.jsonl")
[ "$n" = 10 ] && pass "without --eval-every: ten evaluations over 20 steps" ||
  fail "without --eval-every: $n evaluations over 20 steps"
# ... also when the run is no multiple of ten: every 2 of 19 steps, and the last
# shellcheck disable=SC2086
"$pesc" train --headless $common --steps 19 --eval-data "$tmp/heldout.jsonl" --log "$tmp/ten19.jsonl" >/dev/null 2>&1
n=$(grep -c '"eval_loss"' "$tmp/ten19.jsonl")
[ "$n" = 10 ] && pass "without --eval-every: ten evaluations over 19 steps" ||
  fail "without --eval-every: $n evaluations over 19 steps"

# the eval command: an evaluation after the next step
# shellcheck disable=SC2086
"$pesc" train --headless $common --steps 100000 --eval-data "$tmp/heldout.jsonl" --eval-every 100000 \
  --log "$tmp/cmd.jsonl" --control "$tmp/c.sock" >/dev/null 2>&1 &
run=$!
i=0; while [ ! -S "$tmp/c.sock" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
reply=$(timeout 30 "$sockcmd" "$tmp/c.sock" eval)
i=0; while ! grep -q '"eval_loss"' "$tmp/cmd.jsonl" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
timeout 30 "$sockcmd" "$tmp/c.sock" stop >/dev/null
wait $run
[ "$reply" = "ok: eval after the next step, or at once when paused" ] &&
  [ "$(grep -c '"eval_loss"' "$tmp/cmd.jsonl")" = 1 ] &&
  pass "the eval command: one evaluation after the next step" ||
  fail "eval command: reply '$reply', $(grep -c '"eval_loss"' "$tmp/cmd.jsonl") evaluations"

# the eval command while paused: at once, with the weights of the step the run stands at, no
# step taken; with --keep-best a new lowest is saved as that step's checkpoint. The loss is the
# one pesc eval gives that checkpoint.
# shellcheck disable=SC2086
"$pesc" train --headless $common --steps 100000 --eval-data "$tmp/heldout.jsonl" --eval-every 100000 \
  --save "$tmp/paused" --keep-best --log "$tmp/paused.jsonl" --control "$tmp/p.sock" >/dev/null 2>&1 &
run=$!
i=0; while [ ! -S "$tmp/p.sock" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
i=0; while ! grep -q '"loss"' "$tmp/paused.jsonl" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
timeout 30 "$sockcmd" "$tmp/p.sock" pause >/dev/null
i=0; while ! grep -q '"event":"pause"' "$tmp/paused.jsonl" && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
steps_paused=$(grep -c '"loss"' "$tmp/paused.jsonl")
reply=$(timeout 30 "$sockcmd" "$tmp/p.sock" eval)
i=0; while ! grep -q '"event":"eval"' "$tmp/paused.jsonl" && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
i=0; while [ ! -L "$tmp/paused/best" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
steps_after=$(grep -c '"loss"' "$tmp/paused.jsonl")
timeout 30 "$sockcmd" "$tmp/p.sock" stop >/dev/null
wait $run
at=$(grep '"loss"' "$tmp/paused.jsonl" | sed -n "${steps_paused}p" | sed 's/.*"step":\([0-9]*\),.*/\1/')
logged=$(grep '"event":"eval"' "$tmp/paused.jsonl" | sed 's/.*eval loss \([0-9.]*\) .*/\1/')
best=$(readlink "$tmp/paused/best")
"$pesc" eval --model "$base" --adapters "$tmp/paused/$best/trainables.safetensors" \
  --data "$tmp/heldout24.jsonl" --format tokens --backend cpu --json >"$tmp/eval.json" 2>"$tmp/eval.err"
scored=$(sed 's/.*"loss":\([^,}]*\).*/\1/' "$tmp/eval.json")
[ "$steps_after" = "$steps_paused" ] && [ -n "$at" ] && [ "$best" = "$(printf 'step-%08d' "$at")" ] &&
  [ -n "$logged" ] && awk -v a="$logged" -v b="$scored" 'BEGIN { exit !(a - b < 1e-4 && b - a < 1e-4) }' &&
  pass "the eval command while paused: at once at step $at, no step taken, its loss ($logged) the best checkpoint's ($scored)" ||
  fail "eval while paused: reply '$reply', steps $steps_paused -> $steps_after, at '$at', best '$best', logged '$logged', scored '$scored' $(head -c 200 "$tmp/eval.err")"
# shellcheck disable=SC2086
"$pesc" train --headless $common --steps 100000 --control "$tmp/d.sock" >/dev/null 2>&1 &
run=$!
i=0; while [ ! -S "$tmp/d.sock" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
reply=$(timeout 30 "$sockcmd" "$tmp/d.sock" eval)
timeout 30 "$sockcmd" "$tmp/d.sock" stop >/dev/null
wait $run
[ "$reply" = "error: eval needs a run started with --eval-data FILE, --eval-split X or --eval-choices FILE" ] &&
  pass "the eval command without --eval-data is refused" || fail "eval without --eval-data: '$reply'"

# --eval-split: records of --data held out (a seeded choice), not trained on, scored alike
# shellcheck disable=SC2086
"$pesc" train --headless $common --steps 4 --eval-split 0.25 --eval-every 2 --log "$tmp/split.jsonl" \
  --save "$tmp/splitck" >/dev/null 2>"$tmp/err"
status=$?
# shellcheck disable=SC2086
"$pesc" train --headless $common --steps 4 --eval-split 12 --eval-every 2 --log "$tmp/split12.jsonl" \
  >/dev/null 2>&1
split_losses() { grep '"eval_loss"' "$1" | sed 's/.*"eval_loss":\([^,]*\),.*/\1/' | tr '\n' ' '; }
[ $status -eq 0 ] && grep -q '"data_records":36' "$tmp/split.jsonl" &&
  grep -q '"text":"--eval-split 0.25: 12 records held out of training' "$tmp/split.jsonl" &&
  [ "$(split_losses "$tmp/split.jsonl" | wc -w)" = 2 ] &&
  [ "$(split_losses "$tmp/split.jsonl")" = "$(split_losses "$tmp/split12.jsonl")" ] &&
  pass "--eval-split 0.25 of 48: 36 records trained, 12 scored; a count of 12 holds out the same" ||
  fail "--eval-split: exit $status, $(grep -o '"data_records":[0-9]*' "$tmp/split.jsonl"), losses" \
    "'$(split_losses "$tmp/split.jsonl")' vs '$(split_losses "$tmp/split12.jsonl")': $(head -c 200 "$tmp/err")"
# another split is other training data: resuming with it is refused, naming both
# shellcheck disable=SC2086
expect 1 "was saved with \-\-eval-split 0.25; this run asks for \-\-eval-split 0.5: give that" \
  "resuming with another --eval-split" -- \
  "$pesc" train --headless $common --steps 6 --eval-split 0.5 --resume "$tmp/splitck"
# without --eval-split (or --eval-data) the resumed run holds out what the run held out
# shellcheck disable=SC2086
expect 0 "step 6/6" "resuming without the run's --eval-split keeps it" -- \
  "$pesc" train --headless $common --steps 6 --resume "$tmp/splitck" --log "$tmp/split-kept.jsonl" \
  --save "$tmp/split-kept"
grep -q '"data_records":36' "$tmp/split-kept.jsonl" && pass "the resumed run trains on the same 36 records" ||
  fail "the resumed run without --eval-split: $(grep -o '"data_records":[0-9]*' "$tmp/split-kept.jsonl")"
# shellcheck disable=SC2086
expect 0 "step 6/6" "resuming with the run's --eval-split" -- \
  "$pesc" train --headless $common --steps 6 --eval-split 0.25 --resume "$tmp/splitck"
for bad in 0 1.5 -1 x; do
  # shellcheck disable=SC2086
  expect 2 "\-\-eval-split $bad: " "--eval-split $bad is a usage error" -- \
    "$pesc" train --headless $common --eval-split "$bad"
done
# shellcheck disable=SC2086
expect 1 "\-\-eval-split 48 of 48 records leaves none to train on" "--eval-split of every record" -- \
  "$pesc" train --headless $common --eval-split 48
# shellcheck disable=SC2086
expect 1 "\-\-eval-split 0.001 of 48 records holds out none" "--eval-split of no record" -- \
  "$pesc" train --headless $common --eval-split 0.001
# shellcheck disable=SC2086
expect 2 "give \-\-eval-data or \-\-eval-split, not both" "--eval-data with --eval-split" -- \
  "$pesc" train --headless $common --eval-split 0.1 --eval-data "$tmp/heldout.jsonl"

# --keep-best: a save at each new lowest held-out loss, kept out of rotation as DIR/best (here
# the loss rises after step 1 at this learning rate, so --keep 1 alone would lose it)
# shellcheck disable=SC2086
"$pesc" train --headless $common --lr 5e-2 --steps 6 --eval-data "$tmp/heldout.jsonl" --eval-every 1 \
  --save "$tmp/best" --save-every 3 --keep 1 --keep-best --log "$tmp/best.jsonl" >/dev/null 2>"$tmp/err"
status=$?
eval_at() { grep "\"step\":$2," "$1" | grep -o '"eval_loss":[^,]*' | cut -d: -f2; }
lowest=$(grep -o '"step":[0-9]*,.*"eval_loss":[^,]*' "$tmp/best.jsonl" | sed 's/"step":\([0-9]*\),.*"eval_loss":\(.*\)/\2 \1/' | sort -g | head -n 1 | cut -d' ' -f2)
dirs=$(cd "$tmp/best" && ls | tr '\n' ' ')
target=$(readlink "$tmp/best/best")
"$pesc" eval --model "$base" --adapters "$tmp/best/best/trainables.safetensors" --data "$tmp/heldout24.jsonl" \
  --format tokens --backend cpu --json >"$tmp/eval.json" 2>"$tmp/eval.err"
scored=$(sed 's/.*"loss":\([^,}]*\).*/\1/' "$tmp/eval.json")
[ $status -eq 0 ] && [ -n "$lowest" ] && [ "$lowest" != 6 ] &&
  [ "$target" = "$(printf 'step-%08d' "$lowest")" ] &&
  [ "$dirs" = "best $(printf 'step-%08d' "$lowest") step-00000006 " ] &&
  close "$(eval_at "$tmp/best.jsonl" "$lowest")" "$scored" 1e-5 &&
  pass "--keep-best: best -> the step of the lowest held-out loss ($lowest), kept beside --keep 1's newest" ||
  fail "--keep-best: exit $status, lowest at step '$lowest', dirs '$dirs', best -> '$target', scored '$scored': $(head -c 200 "$tmp/err")"
# pesc inspect of the save directory names the best, and its state the step and loss
"$pesc" inspect "$tmp/best" >"$tmp/inspect" 2>&1
grep -q "^save dir .*; best -> $target\$" "$tmp/inspect" &&
  grep -q "^best          $target: held-out loss $(printf '%.4f' "$(eval_at "$tmp/best.jsonl" "$lowest")")\$" "$tmp/inspect" &&
  pass "pesc inspect of a --keep-best save directory names the best and its loss" ||
  fail "pesc inspect of a --keep-best save directory: $(cat "$tmp/inspect")"
# a branch resumed into another --save directory starts its own DIR/best there (the old
# best is not in it), where a resume in place has to beat the best it had
# shellcheck disable=SC2086
"$pesc" train --headless $common --lr 5e-2 --steps 8 --eval-data "$tmp/heldout.jsonl" --eval-every 1 \
  --save "$tmp/branch" --keep-best --resume "$tmp/best/step-00000006" >/dev/null 2>"$tmp/err"
[ -L "$tmp/branch/best" ] && [ "$(readlink "$tmp/branch/best")" = step-00000007 ] &&
  pass "a branch saved elsewhere: its DIR/best is its own, from its first evaluation" ||
  fail "a branch with --keep-best: $(ls -l "$tmp/branch" 2>&1) $(head -c 200 "$tmp/err")"
# resumed in place on the same held-out data, a new best must beat the old (the loss rises
# at this rate); on other held-out data the old loss is no measure, and the best starts afresh
for data in same other; do
  rm -rf "$tmp/again"
  cp -R "$tmp/best" "$tmp/again"
  heldout="$tmp/heldout.jsonl"
  [ $data = other ] && head -n 6 "$tmp/heldout.jsonl" >"$tmp/heldout6.jsonl" && heldout="$tmp/heldout6.jsonl"
  # shellcheck disable=SC2086
  "$pesc" train --headless $common --lr 5e-2 --steps 8 --eval-data "$heldout" --eval-every 1 \
    --save "$tmp/again" --keep-best --resume "$tmp/again/step-00000006" --log "$tmp/again.jsonl" >/dev/null 2>"$tmp/err"
  status=$?
  want=$(printf 'step-%08d' "$lowest")
  [ $data = other ] && want=step-00000007
  noted=$(grep -c '"text":"[^"]*the held-out data differ from those of the best so far (held-out loss' "$tmp/again.jsonl")
  [ $status -eq 0 ] && [ "$(readlink "$tmp/again/best")" = "$want" ] &&
    [ "$noted" = "$([ $data = other ] && echo 1 || echo 0)" ] &&
    pass "resumed in place on the $data held-out data: best -> $want$([ $data = other ] && echo ', with a note')" ||
    fail "resumed in place on the $data held-out data: exit $status, best -> '$(readlink "$tmp/again/best")', notes $noted: $(head -c 200 "$tmp/err")"
done
# an eval asked during a generation of a paused run (here the two lines arrive together, so
# the eval is taken between the generation's tokens) waits for it to end: its answers would
# take the KV cache the generation decodes on. The generation ends whole, then the eval.
"$pesc" train --headless --steps 100000 --eval-every 100000 --eval-generate exact:20 \
  --log "$tmp/race.jsonl" --control "$tmp/r.sock" >/dev/null 2>&1 &
run=$!
i=0; while [ ! -S "$tmp/r.sock" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
timeout 30 "$sockcmd" "$tmp/r.sock" pause >/dev/null
i=0; while ! grep -q '"event":"pause"' "$tmp/race.jsonl" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
replies=$(timeout 30 "$sockcmd" "$tmp/r.sock" "generate max=40 reverse: abcdefghijklmnopqrstuvwxyz" eval | tr '\n' '|')
i=0; while ! grep -q 'eval answers [0-9.]* right' "$tmp/race.jsonl" && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
timeout 30 "$sockcmd" "$tmp/r.sock" stop >/dev/null
wait $run
order=$(grep -o '"event":"\(generate\|eval\)",.*"text":"[^"]*' "$tmp/race.jsonl" |
  sed 's/"event":"\([a-z]*\)",.*"text":"\(.\{0,20\}\).*/\1: \2/' | tr '\n' '|')
case $order in
  "generate: "[1-9]*" tokens for: "*"|eval: eval loss "*"|eval: eval answers "[01]"."*) ok=1 ;;
  *) ok=0 ;;
esac
[ $ok -eq 1 ] && [ "$replies" = "ok: generating up to 40 tokens (the answer: the log's generate event)|ok: eval after the next step, or at once when paused|" ] &&
  pass "an eval asked during a paused run's generation waits for it: the generation ends whole, then the answers" ||
  fail "eval during a generation: replies '$replies', events '$order'"
# --best-by answers: the best is the evaluation with the most --eval-generate answers right
# (the first of equals), its state and pesc inspect say so; resumed in place --best-by loss,
# that best is no measure (a note), and the next evaluation is the best
"$pesc" train --headless --steps 6 --eval-every 2 --lr 3e-2 --warmup 0 --eval-generate exact:60 \
  --keep-best --best-by answers --save "$tmp/ans" --log "$tmp/ans.jsonl" >/dev/null 2>"$tmp/err"
status=$?
most=$(grep -o '^{"step":[0-9]*,.*"eval_answer_accuracy":[0-9.]*' "$tmp/ans.jsonl" |
  sed 's/^{"step":\([0-9]*\),.*"eval_answer_accuracy":\(.*\)/\2 \1/' | sort -k1,1gr -k2,2n | head -n 1)
step=${most#* } share=${most% *}
target=$(printf 'step-%08d' "$step")
"$pesc" inspect "$tmp/ans" >"$tmp/inspect" 2>&1
[ $status -eq 0 ] && [ -n "$most" ] && [ "$(readlink "$tmp/ans/best")" = "$target" ] &&
  grep -q '"best_by": "answers"' "$tmp/ans/step-00000006/state.json" &&
  grep -q "\"best_eval_answers\": $share" "$tmp/ans/step-00000006/state.json" &&
  grep -q "^best          $target: answers right $(printf '%.4f' "$share")\$" "$tmp/inspect" &&
  pass "--best-by answers: best -> the step of the most answers right ($step, $share), in its state and pesc inspect" ||
  fail "--best-by answers: exit $status, most '$most', best -> '$(readlink "$tmp/ans/best")': $(grep best "$tmp/inspect") $(head -c 200 "$tmp/err")"
"$pesc" train --headless --resume "$tmp/ans" --steps 8 --best-by loss >/dev/null 2>"$tmp/err"
[ "$(readlink "$tmp/ans/best")" = step-00000008 ] &&
  grep -q '"text":"[^"]*--best-by differs from that of the best so far (answers right' "$tmp/ans.jsonl" &&
  pass "--best-by loss on a run whose best was by answers: a note, and the next evaluation is the best" ||
  fail "--best-by changed on resume: best -> '$(readlink "$tmp/ans/best")': $(grep -o '"text":"[^"]*best so far[^"]*' "$tmp/ans.jsonl") $(head -c 200 "$tmp/err")"
# shellcheck disable=SC2086
expect 2 "\-\-best-by picks the checkpoint \-\-keep-best keeps" "--best-by without --keep-best" -- \
  "$pesc" train --headless $common --eval-split 8 --best-by loss
# shellcheck disable=SC2086
expect 2 "\-\-best-by answers keeps the checkpoint whose answers are most often right: it needs \-\-eval-generate" \
  "--best-by answers without --eval-generate" -- \
  "$pesc" train --headless $common --eval-split 8 --save "$tmp/x" --keep-best --best-by answers
expect 2 "\-\-best-by most: expected loss" "--best-by with an unknown measure" -- \
  "$pesc" train --headless --best-by most

# resumed from its save directory, the run takes --keep-best on (here on other held-out data,
# so a best starts afresh at step 7); --no-keep-best declines it: no new best is saved, the
# one there stays out of rotation, and the checkpoints record that for the next resume
head -n 6 "$tmp/heldout.jsonl" >"$tmp/heldout6.jsonl"
for flag in "" --no-keep-best; do
  rm -rf "$tmp/again"
  cp -R "$tmp/best" "$tmp/again"
  # shellcheck disable=SC2086
  "$pesc" train --headless $common --lr 5e-2 --steps 8 --eval-data "$tmp/heldout6.jsonl" --eval-every 1 \
    --resume "$tmp/again" $flag >/dev/null 2>"$tmp/err"
  status=$?
  want=step-00000007 recorded=true
  [ -n "$flag" ] && want=$(printf 'step-%08d' "$lowest") recorded=false
  [ $status -eq 0 ] && [ "$(readlink "$tmp/again/best")" = "$want" ] && [ -d "$tmp/again/$want" ] &&
    grep -q "\"keep_best\": *$recorded" "$tmp/again/step-00000008/state.json" &&
    pass "resumed from its save directory ${flag:-without a flag}: best -> $want, keep_best $recorded" ||
    fail "resumed from its save directory ${flag:-without a flag}: exit $status, best -> '$(readlink "$tmp/again/best")', $(ls "$tmp/again" | tr '\n' ' ') $(grep -o '"keep_best":[^,]*' "$tmp/again/step-00000008/state.json"): $(head -c 200 "$tmp/err")"
done
# shellcheck disable=SC2086
expect 2 "\-\-keep-best keeps the checkpoint of the lowest held-out loss: it needs \-\-save DIR" \
  "--keep-best without held-out data" -- "$pesc" train --headless $common --save "$tmp/x" --keep-best
# DIR/best that cannot be made (here a directory is in its place; a file system without
# symbolic links alike) is an error event naming the best checkpoint, which is still kept
mkdir -p "$tmp/nolink/best/mine"
# shellcheck disable=SC2086
"$pesc" train --headless $common --lr 5e-2 --steps 6 --eval-data "$tmp/heldout.jsonl" --eval-every 1 \
  --save "$tmp/nolink" --save-every 3 --keep 1 --keep-best --log "$tmp/nolink.jsonl" >/dev/null 2>"$tmp/err"
status=$?
named=$(grep '"event":"error"' "$tmp/nolink.jsonl" | sed -n 's/.*(the best checkpoint is \(step-[0-9]*\)).*/\1/p' | tail -n 1)
[ $status -eq 0 ] && [ "$named" = "$(printf 'step-%08d' "$lowest")" ] && [ -d "$tmp/nolink/$named" ] &&
  grep -q "\"best_step\": $lowest," "$tmp/nolink/step-00000006/state.json" &&
  pass "DIR/best not made: the error names $named, kept beside the newest and in state.json" ||
  fail "DIR/best not made: exit $status, named '$named', left $(cd "$tmp/nolink" && ls | tr '\n' ' ')"
# a save for a new lowest that fails (a full disk: a file size limit fails writes as one does)
# is not tried again on the steps after it: those weights are not the ones that scored it
# shellcheck disable=SC2086
sh -c 'ulimit -f 32; trap "" XFSZ; exec "$@"' sh "$pesc" train --headless $common --steps 7 \
  --eval-data "$tmp/heldout.jsonl" --eval-every 3 --save "$tmp/nospace" --keep-best \
  --log "$tmp/nospace.jsonl" >/dev/null 2>"$tmp/err"
tried=$(grep '"event":"error"' "$tmp/nospace.jsonl" | grep '"text":"save failed' |
  sed 's/.*"step":\([0-9]*\),.*/\1/' | tr '\n' ' ')
[ "$tried" = "3 6 7 7 " ] &&
  pass "--keep-best on a full disk: a save tried at each evaluation (3, 6, 7) and the final one" ||
  fail "--keep-best on a full disk: saves tried at steps '$tried': $(head -c 200 "$tmp/err")"

# refusals: before the run starts, one line naming the file
# shellcheck disable=SC2086
expect 1 "\-\-eval-data: .*missing.jsonl" "a missing --eval-data file" -- \
  "$pesc" train --headless $common --steps 1 --eval-data "$tmp/missing.jsonl"
printf '{"input_ids": [1, 2, 3], "labels": [-100, -100, -100]}\n' >"$tmp/untrained.jsonl"
# shellcheck disable=SC2086
expect 1 "\-\-eval-data .*untrained.jsonl: no record has a trained token" "held-out data with nothing to score" -- \
  "$pesc" train --headless $common --steps 1 --eval-data "$tmp/untrained.jsonl"
cp "$tmp/untrained.jsonl" "$tmp/untrained2.jsonl"
# shellcheck disable=SC2086
expect 1 "\-\-eval-data .*untrained.jsonl and 1 other file: no record has a trained token" \
  "several --eval-data files with nothing to score are named together" -- \
  "$pesc" train --headless $common --steps 1 --eval-data "$tmp/untrained.jsonl" --eval-data "$tmp/untrained2.jsonl"
# shellcheck disable=SC2086
expect 2 "\-\-eval-every needs \-\-eval-data FILE, \-\-eval-split X or \-\-eval-choices FILE" "--eval-every without held-out data" -- \
  "$pesc" train --headless $common --eval-every 5

[ "$failures" -eq 0 ]
