#!/bin/sh
# cli.sh — the pesc command line as a user meets it: exit statuses, one-line errors, and
# `pesc eval` / `pesc inspect` on the PyTorch reference models.
set -u
top_srcdir=${top_srcdir:-.}
top_builddir=${top_builddir:-.}
pesc="$top_builddir/pesc"
data="$top_srcdir/tests/reference/data"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/pesc-cli.XXXXXX") || exit 99
trap 'rm -rf "$tmp"' EXIT
failures=0
. "${top_srcdir:-.}/tests/lib.sh"




expect 0 "^pesc [0-9]" "--version" -- "$pesc" --version
expect 0 "usage: pesc \[COMMAND" "--help" -- "$pesc" --help
for cmd in eval inspect devices generate train tui bench export; do
  expect 0 "usage: pesc $cmd" "$cmd --help" -- "$pesc" "$cmd" --help
done
# every command of pesc --help has its man page, and make install installs every page
commands=$("$pesc" --help | awk '/^Commands:/ { on = 1; next } on && /^  [a-z]/ { print $1 } on && /^$/ { exit }')
for cmd in $commands; do
  page="man/pesc-$cmd.1"
  [ -f "$top_srcdir/$page" ] || fail "$cmd has no man page ($page)"
done
# and every option its --help lists is in that page (tui's are train's, in pesc-train(1))
for cmd in $commands; do
  page="man/pesc-$cmd.1"
  [ "$cmd" = tui ] && page=man/pesc-train.1
  [ -f "$top_srcdir/$page" ] || continue
  missing=$("$pesc" "$cmd" --help 2>&1 | grep -o -- '--[a-z][a-z0-9-]*' | sort -u |
    while read -r opt; do
      sed 's/\\-/-/g' "$top_srcdir/$page" | grep -q -- "$opt\([^a-z0-9-]\|$\)" || printf ' %s' "$opt"
    done)
  [ -z "$missing" ] && pass "every option of pesc $cmd --help is in $page" ||
    fail "pesc $cmd --help lists options $page does not describe:$missing"
done
for page in "$top_srcdir"/man/*.[157]; do
  cat "$top_srcdir/Makefile.am" "$top_srcdir"/mk/*.am | grep "dist_man_MANS" -A 3 |
    grep -q "man/$(basename "$page")" ||
    fail "$(basename "$page") is in no dist_man_MANS (Makefile.am, mk/*.am): make install leaves it out"
done
expect 2 "unknown command 'frobnicate' (see pesc --help)" "unknown command" -- "$pesc" frobnicate
expect 2 "unknown command 'trian': did you mean pesc train?" "a typo of a command: the nearest named" -- "$pesc" trian
expect 2 "that is pesc train \-\-headless" "tui --headless points to train" -- "$pesc" tui --headless
# the workbench's own errors name it, as every command's do
expect 1 "^pesc tui: the workbench needs a terminal" "tui without a terminal names 'pesc tui:'" -- \
  sh -c "'$pesc' tui </dev/null"
echo '{"kept": 1}' >"$tmp/kept.jsonl"
expect 1 "^pesc tui: the workbench needs a terminal" "tui --log without a terminal" -- \
  sh -c "'$pesc' tui --log '$tmp/kept.jsonl' </dev/null"
[ "$(cat "$tmp/kept.jsonl")" = '{"kept": 1}' ] && pass "tui without a terminal leaves its --log alone" ||
  fail "tui without a terminal rewrote its --log: $(head -c 200 "$tmp/kept.jsonl")"
# on a terminal, which tui wants before anything else
expect 1 "^pesc tui: the demo cannot start: " "tui without its demo names 'pesc tui:'" -- \
  on_tty env PESC_DEMO_DIR="$tmp/no-demo" "$pesc" tui
# a terminal it cannot draw on is refused before the run starts, naming TERM (dumb once got
# a blank screen and raw escape codes; unset, an empty name)
expect 1 "^pesc tui: the terminal 'dumb' cannot move the cursor: set TERM" "tui on a dumb terminal" -- \
  on_tty env TERM=dumb "$pesc" tui --log "$tmp/dumb.jsonl"
[ -e "$tmp/dumb.jsonl" ] && fail "tui on a dumb terminal started its run" ||
  pass "tui on a dumb terminal starts no run"
expect 1 "^pesc tui: TERM is not set: set it" "tui with TERM unset" -- on_tty env -u TERM "$pesc" tui
expect 1 "^pesc tui: cannot use the terminal 'pesc-no-such' (no terminfo entry)" "tui on an unknown TERM" -- \
  on_tty env TERM=pesc-no-such "$pesc" tui
# a --data that is missing is that, not the installation's fault
expect 1 "^pesc tui: --data: $tmp/none.jsonl: No such file" "tui --data missing names the data alone" -- \
  on_tty "$pesc" tui --data "$tmp/none.jsonl"
# the build tree's pesc finds its demo beside itself, from any working directory
if [ -f "$top_builddir/data/demo/config.json" ]; then
  expect 0 "step 1/1" "the build tree's demo, run from another directory" -- \
    sh -c 'cd "$1" && exec env -u PESC_DEMO_DIR "$2" train --headless --steps 1' sh "$tmp" \
    "$(cd "$top_builddir" && pwd)/pesc"
fi
expect 2 "unknown option" "unknown option" -- "$pesc" eval --frobnicate
expect 2 "unknown option --max-tokns=3: did you mean --max-tokens?" \
  "a typo of an option is told the nearest one" -- "$pesc" generate --max-tokns=3
expect 2 "option \-\-pack takes no value: it is a flag (give \-\-pack alone)" \
  "a value given to a flag is told so, not asked for" -- "$pesc" train --headless --pack=true
expect 2 "unknown option --lrr: did you mean --lr?" "a typo of a short name too" -- \
  "$pesc" train --headless --lrr 1
expect 2 "option --temp is ambiguous: --temperature or --template?" \
  "a prefix of two options names both" -- "$pesc" generate --temp 0
expect 2 "unknown option --learning_rate: pesc's name for it is --lr" \
  "another trainer's name for an option is told pesc's" -- "$pesc" train --headless --learning_rate 1e-4
expect 2 "option --model needs a value" "option without its value" -- "$pesc" eval --model
expect 2 "\-\-model DIR is required" "eval without --model" -- "$pesc" eval --data x
expect 2 "\-\-records counts \-\-demo's records" "eval --records without --demo" -- "$pesc" eval --model x --data y --records 5
expect 2 "\-\-records 0: expected an integer from 1 to 1000000" "eval --demo --records 0" -- "$pesc" eval --demo --records 0
expect 2 "\-\-format yaml" "unsupported format" -- "$pesc" eval --model x --data y --format yaml
for cmd in eval generate bench train tui; do
  expect 2 "\-\-backend tpu: unknown backend; choose auto, cpu or cuda" "$cmd: unknown backend is a usage error" -- \
    "$pesc" "$cmd" --backend tpu
done
for cmd in train tui; do
  expect 2 "\-\-format foo: not a known format" "$cmd: unknown --format is a usage error" -- \
    "$pesc" "$cmd" --model x --data y --format foo
done
# AdamW's decay multiplies the weights by 1 - lr x decay: at 1 or more it wipes them out
for cmd in train tui; do
  expect 2 "\-\-lr 2 with \-\-weight-decay 0.5: .* here 0, which wipes them out" \
    "$cmd: lr x weight decay of 1 is a usage error" -- "$pesc" "$cmd" --lr 2 --weight-decay 0.5
done
# an empty path names no file: a usage error naming the option (--control '' once ran on
# without a socket, --log '' was blamed on --sink and exited 1)
for cmd in train tui; do
  for flag in --model --init-config --tokenizer --save --resume --log --control --plugin; do
    expect 2 "pesc $cmd: $flag '': the path is empty; name " "$cmd $flag '' is a usage error" -- \
      "$pesc" "$cmd" "$flag" ""
  done
  expect 2 "\-\-sink nope: no sink of that name (built-in: jsonl" "$cmd: an unknown --sink is a usage error" -- \
    "$pesc" "$cmd" --sink nope
  expect 2 "\-\-sink jsonl is given twice" "$cmd: a --sink given twice is a usage error" -- \
    "$pesc" "$cmd" --sink jsonl --sink jsonl
  expect 2 "\-\-sink csv:$tmp/./a.csv writes where \-\-sink csv:$tmp/a.csv does: give it once" \
    "$cmd: one --sink TARGET spelled two ways is a usage error (two writers of one file)" -- \
    "$pesc" "$cmd" --sink "csv:$tmp/a.csv" --sink "csv:$tmp/./a.csv"
  # ... or the file a NAME alone writes beside the --log or --save (not "already there")
  expect 2 "\-\-sink csv:$tmp/s.csv writes where \-\-sink csv does: give it once" \
    "$cmd: --sink csv and --sink csv:BASE.csv are a usage error (two writers of one file)" -- \
    "$pesc" "$cmd" --steps 1 --log "$tmp/s.jsonl" --sink csv --sink "csv:$tmp/s.csv"
  expect 2 "\-\-sink tensorboard writes where \-\-sink tensorboard:$tmp/s.tb/ does: give it once" \
    "$cmd: --sink tensorboard:BASE.tb/ and --sink tensorboard are a usage error" -- \
    "$pesc" "$cmd" --steps 1 --save "$tmp/s" --sink "tensorboard:$tmp/s.tb/" --sink tensorboard
  for spec in "" "csv:" ":x"; do
    expect 2 "\-\-sink '$spec': expected NAME or NAME:TARGET, neither empty" "$cmd --sink '$spec' is a usage error" -- \
      "$pesc" "$cmd" --sink "$spec"
  done
done
# ... in every other command too (eval --model '' once loaded the working directory)
while IFS='|' read -r flag args; do
  # shellcheck disable=SC2086 # the arguments are words
  expect 2 "$flag '': the path is empty; name " "${args%% *} $flag '' is a usage error" -- "$pesc" $args ""
done <<'EOF'
--model|eval --demo --model
--adapters|eval --model m --demo --adapters
--tokenizer|eval --model m --demo --tokenizer
--data|eval --model m --data
--plugin|eval --model m --demo --plugin
--model|generate --prompt hi --model
--adapters|generate --model m --adapters
--tokenizer|generate --model m --tokenizer
-o|export ck -o
--model|export ck -o x --model
CHECKPOINT|export -o x
--attach|view log --attach
RUN.jsonl|view
-o|fetch http://127.0.0.1:9/x -o
--plugin|plugins --plugin
EOF
expect 0 "^cpu " "devices" -- "$pesc" devices

# eval against the reference: the loss PyTorch computed in float64
m="$data/llama-gqa-f32"
expect 0 '"loss"' "eval --json" -- "$pesc" eval --model "$m" --data "$m/records.jsonl" --json
loss=$(sed -n 's/.*"loss": \([^,]*\),.*/\1/p' "$tmp/out")
tokens=$(sed -n 's/.*"tokens": \([0-9]*\),.*/\1/p' "$tmp/out")
want=$(sed -n 's/^ *"loss": \([0-9.e-]*\),$/\1/p' "$m/expected.json" | tail -n 1)
if [ -n "$loss" ] && close "$loss" 4.728069026134456 1e-5 && [ "$tokens" = 48 ]; then
  pass "eval loss $loss over $tokens tokens matches PyTorch"
else
  fail "eval loss '$loss' tokens '$tokens' (wanted 4.728069026134456, 48; expected.json says $want)"
fi
# --json output stays JSON where a figure is not finite: a final norm that scales by 1e6
# leaves the loss finite and the perplexity past a double, which is written null (as the run
# log writes such numbers), not "inf"
mkdir "$tmp/big-norm" && cp "$top_srcdir/data/demo/"* "$tmp/big-norm/"
set_tensor "$tmp/big-norm/model.safetensors" model.norm.weight 1e6
expect 0 '"ppl": null' "eval --json: a perplexity past a double is null" -- \
  "$pesc" eval --model "$tmp/big-norm" --demo --records 4 --json --backend cpu
strict_json "$tmp/out" && pass "eval --json of an infinite perplexity is JSON" ||
  fail "eval --json of an infinite perplexity is not JSON: $(cat "$tmp/out")"
# a final norm of 3e38 overflows to NaN logits: generating from them fails in one line that
# names the model, where greedy decoding once printed id 0's text (or nothing) with exit 0,
# and eval --generate scored those answers
mkdir "$tmp/nan-norm" && cp "$top_srcdir/data/demo/"* "$tmp/nan-norm/"
set_tensor "$tmp/nan-norm/model.safetensors" model.norm.weight 3e38
for temperature in 0 0.8; do
  expect 1 "the model $tmp/nan-norm gives logits that are not finite (NaN or infinity)" \
    "generate --temperature $temperature: NaN logits are refused" -- \
    "$pesc" generate --model "$tmp/nan-norm" --prompt hi --max-tokens 4 --temperature $temperature --backend cpu
done
printf 'hi\nho\n' >"$tmp/two-prompts.txt"
expect 1 "the model $tmp/nan-norm gives logits that are not finite" "generate --prompts: NaN logits are refused" -- \
  "$pesc" generate --model "$tmp/nan-norm" --prompts "$tmp/two-prompts.txt" --max-tokens 4 --backend cpu
expect 1 "the model $tmp/nan-norm gives logits that are not finite" "eval --generate: NaN logits are refused" -- \
  "$pesc" eval --model "$tmp/nan-norm" --demo --records 4 --generate --json --backend cpu
# a record without end (a pipe of zeros, a file without newlines) is refused at a bound,
# before it takes the machine's memory; a device (a link to /dev/zero) is refused at once
expect 1 "/dev/stdin:1: a record longer than 64 MiB; a JSONL file holds one record a line" \
  "eval of a record without end stops at 64 MiB" -- \
  sh -c 'head -c 70000000 /dev/zero | "$1" eval --model "$2" --data /dev/stdin' sh "$pesc" "$m"
ln -s /dev/zero "$tmp/zero.jsonl"
expect 1 "\-\-data: $tmp/zero.jsonl is a device, not a file" "eval of a device as data" -- \
  "$pesc" eval --model "$m" --data "$tmp/zero.jsonl"
expect 1 "\-\-tokenizer: /dev/urandom is a device, not a file" "a device as tokenizer.json" -- \
  timeout 20 "$pesc" tokenize --tokenizer /dev/urandom
# nothing to score in several sources: the one line names them all, not the first
printf '{"input_ids": [1]}\n' >"$tmp/one.jsonl" && cp "$tmp/one.jsonl" "$tmp/two.jsonl"
expect 1 "$tmp/one.jsonl and $tmp/two.jsonl: no token is predicted" "eval with nothing to score names every source" -- \
  "$pesc" eval --model "$m" --data "$tmp/one.jsonl" --data "$tmp/two.jsonl"
# output that cannot be written is a failure of every command, in one line naming stdout
if [ -w /dev/full ]; then
  for args in "--version" "--help" "plugins" "devices" "inspect $m" "eval --model $m --data $m/records.jsonl" \
      "generate --model $top_srcdir/data/demo --prompt hi --max-tokens 8 --backend cpu" \
      "demo-data -o - --records 3" "tokenize --model $top_srcdir/data/demo"; do
    # shellcheck disable=SC2086 # the arguments are words
    expect 1 "cannot write to standard output: No space left on device" "pesc $args >/dev/full fails" -- \
      sh -c '"$0" "$@" </dev/null >/dev/full' "$pesc" $args
  done
  # headless progress lines fail as they are flushed, long before the end: still said why
  "$pesc" train --headless --model "$m" --data "$m/records.jsonl" --steps 1 --backend cpu \
    >/dev/full 2>"$tmp/err"
  st=$?
  [ $st -eq 1 ] && tail -n 1 "$tmp/err" | grep -q "cannot write to standard output: No space left" \
    && pass "train --headless >/dev/full fails, saying why" \
    || fail "train --headless >/dev/full: exit $st: $(tail -n 1 "$tmp/err")"
fi
# eval --choices: multiple-choice questions on the demo model, in the record shapes of MMLU
# (an index, a letter, an option's text) and ARC; it answers every one, and the same
# questions with wrong answer keys score 0
if [ -f "$top_builddir/data/demo/config.json" ]; then
  demo="$top_builddir/data/demo"
  cp "$top_srcdir/tests/choices-demo.jsonl" "$tmp/mc.jsonl"   # the demo's tasks, four shapes
  sed -e 's/"answer": [0-9]}/"answer": 2}/' -e 's/"answer": "17"/"answer": "9"/' \
    -e 's/"answerKey": "C"/"answerKey": "A"/' -e 's/"answer": "A"/"answer": "B"/' \
    "$tmp/mc.jsonl" >"$tmp/wrong.jsonl"
  sed -i -e '2s/"answer": 2}/"answer": 1}/' "$tmp/wrong.jsonl"   # sort's right answer is 0
  expect 0 '"accuracy": 1,' "eval --choices: the demo model answers its tasks' questions" -- \
    "$pesc" eval --model "$demo" --choices "$tmp/mc.jsonl" --backend cpu --json
  grep -q '"questions": 8,.*"chance": 0.25}' "$tmp/out" ||
    fail "eval --choices: 8 questions of 4 options: $(cat "$tmp/out")"
  expect 0 "wrong.jsonl: accuracy 0.0000 ± 0.0000" "eval --choices: wrong answer keys score 0" -- \
    "$pesc" eval --model "$demo" --choices "$tmp/wrong.jsonl" --backend cpu
  expect 0 "(1 worked example from each file's first questions, raw, lettered;" "eval --choices --raw --letters --shots 1 --limit 3" -- \
    "$pesc" eval --model "$demo" --choices "$tmp/mc.jsonl" --raw --letters --shots 1 --limit 3
  grep -q "(3 questions, chance 0.2500)" "$tmp/out" || fail "--limit 3 scored: $(cat "$tmp/out")"
  # questions that name subjects (MMLU's): each subject's accuracy and their mean; worked
  # examples from a file (here the same one), of the question's subject
  sed -e '1,4s/^{/{"subject": "strings", /' -e '5,$s/^{/{"subject": "facts", /' "$tmp/mc.jsonl" >"$tmp/subj.jsonl"
  expect 0 "  mean over 2 subjects: 1.0000" "eval --choices: questions with subjects, each reported" -- \
    "$pesc" eval --model "$demo" --choices "$tmp/subj.jsonl"
  grep -q "^  facts  *1.0000  1.0000  (4)$" "$tmp/out" && grep -q "^  strings  *1.0000  1.0000  (4)$" "$tmp/out" ||
    fail "eval --choices by subject: $(cat "$tmp/out")"
  expect 0 '"subject": "strings", "questions": 4,.*"subject_mean": ' "eval --choices --shots-from --json" -- \
    "$pesc" eval --model "$demo" --choices "$tmp/subj.jsonl" --shots-from "$tmp/subj.jsonl" --shots 1 --raw --json
  grep -q '"file": "[^"]*subj.jsonl", "questions": 8,' "$tmp/out" ||
    fail "--shots-from scores every question: $(cat "$tmp/out")"
  expect 1 "\-\-shots-from $tmp/subj.jsonl has fewer than 5 questions of subject strings" \
    "eval --shots-from: a subject short of examples" -- \
    "$pesc" eval --model "$demo" --choices "$tmp/subj.jsonl" --shots-from "$tmp/subj.jsonl" --shots 5
  # MMLU's layout after a worked example: the options' letters decoded on the shared prefix
  # in the KV cache score as the batch of whole options does (--samples: each question's)
  "$pesc" eval --model "$demo" --choices "$tmp/mc.jsonl" --letters --raw --shots 1 \
    --samples "$tmp/shared.jsonl" >/dev/null 2>"$tmp/err" || fail "eval --samples: $(cat "$tmp/err")"
  PESC_MC_BATCH=1 "$pesc" eval --model "$demo" --choices "$tmp/mc.jsonl" --letters --raw --shots 1 \
    --samples "$tmp/batch.jsonl" >/dev/null 2>"$tmp/err" || fail "eval --samples, batched: $(cat "$tmp/err")"
  worst=$(paste -d '|' "$tmp/shared.jsonl" "$tmp/batch.jsonl" | awk -F'|' '
    { split($1, a, /"scores": \[|\], "bytes"/); split($2, b, /"scores": \[|\], "bytes"/)
      n = split(a[2], x, ", "); split(b[2], y, ", ")
      for (i = 1; i <= n; i++) { d = (x[i] - y[i]) / y[i]; if (d < 0) d = -d; if (d > w) w = d }
      rows++ }
    END { printf "%d %g", rows, w }')
  if [ "${worst%% *}" = 7 ] && awk -v w="${worst#* }" 'BEGIN { exit !(w < 1e-5) }' &&
     [ "$(grep -c '"shared": [1-9]' "$tmp/shared.jsonl")" = 7 ] &&
     [ "$(grep -c '"shared": 0}' "$tmp/batch.jsonl")" = 7 ]; then
    pass "eval --choices: options decoded on a shared prefix score as the batch does ($worst)"
  else
    fail "eval --choices, shared prefix against batch: $worst (rows, worst relative difference): $(head -n 1 "$tmp/shared.jsonl")"
  fi
  expect 1 "\-\-samples $tmp/shared.jsonl: File exists: name a new file" "eval --samples refuses an existing file" -- \
    "$pesc" eval --model "$demo" --choices "$tmp/mc.jsonl" --samples "$tmp/shared.jsonl"
  expect 1 "\-\-samples $tmp/nodir/s.jsonl: No such file or directory: its directory does not exist" \
    "eval --samples in a missing directory says so" -- \
    "$pesc" eval --model "$demo" --choices "$tmp/mc.jsonl" --samples "$tmp/nodir/s.jsonl"
  printf '{"question": "q", "choices": ["a", "b"], "answer": "c"}\n' >"$tmp/bad-mc.jsonl"
  expect 1 "\-\-choices: $tmp/bad-mc.jsonl:1: \"answer\": \"c\" is none of the 2 options" \
    "eval --choices: a record whose answer is no option" -- \
    "$pesc" eval --model "$demo" --choices "$tmp/bad-mc.jsonl"
  expect 1 "holds 8 questions: \-\-shots 8 leaves none to score" "eval --choices --shots, all of them" -- \
    "$pesc" eval --model "$demo" --choices "$tmp/mc.jsonl" --shots 8
  expect 1 "past the model's context of 128 (max_position_embeddings): give fewer \-\-shots" \
    "eval --choices: worked examples past the context" -- \
    "$pesc" eval --model "$demo" --choices "$tmp/mc.jsonl" --shots 7 --letters
  # eval --generate: the demo model's greedy answers to its records, each family's accuracy;
  # an answer is what pesc generate gives the record's prompt (the same tokens, the same
  # stops), and matches its reference exactly or not at all
  "$pesc" demo-data -o "$tmp/rev.jsonl" --records 6 --family reverse --seed 3 2>/dev/null
  expect 0 "answers right, exact match;" "eval --generate on the demo's families" -- \
    "$pesc" eval --model "$demo" --demo --records 4 --generate --backend cpu
  grep -q "^lookup: [01].[0-9]* ([0-4] of 4)$" "$tmp/out" || fail "eval --generate by family: $(cat "$tmp/out")"
  "$pesc" eval --model "$demo" --data "$tmp/rev.jsonl" --generate --max-tokens 24 --backend cpu \
    --samples "$tmp/answers.jsonl" >"$tmp/out" 2>"$tmp/err" || fail "eval --generate --samples: $(cat "$tmp/err")"
  ok=1 n=0
  while IFS= read -r line; do
    n=$((n + 1))
    record=$(sed -n "${n}p" "$tmp/rev.jsonl")
    word=$(printf '%s' "$record" | sed 's/.*"input": "reverse: \([a-z]*\)".*/\1/')
    system=$(printf '%s' "$record" | sed 's/.*"instruction": "\([^"]*\)".*/\1/')
    ref=$(printf '%s' "$word" | rev)
    said=$("$pesc" generate --model "$demo" --prompt "reverse: $word" ${system:+--system "$system"} \
      --max-tokens 24 --backend cpu 2>/dev/null)
    right=false
    [ "$said" = "$ref" ] && right=true
    printf '%s\n' "$line" | grep -qF "\"line\": $n, \"reference\": \"$ref\", \"answer\": \"$said\", \"right\": $right}" || ok=0
  done <"$tmp/answers.jsonl"
  [ $ok -eq 1 ] && [ $n -eq 6 ] && grep -q "answers right, exact match" "$tmp/out" &&
    pass "eval --generate: each answer is pesc generate's for its prompt, judged against its reference" ||
    fail "eval --generate against pesc generate: $(head -n 2 "$tmp/answers.jsonl")"
  # answers cut by --max-tokens are counted as cut, not as ordinary wrong ones
  expect 0 "note: 6 of the answers reached their token limit (--max-tokens) before an end marker" \
    "eval --generate --max-tokens 1: the cut answers are said" -- \
    "$pesc" eval --model "$demo" --demo --records 1 --generate --max-tokens 1 --backend cpu
  "$pesc" eval --model "$demo" --demo --records 1 --generate --max-tokens 1 --json --backend cpu >"$tmp/out"
  [ "$(grep -o '"cut": 1}' "$tmp/out" | wc -l)" = 6 ] || fail "eval --generate --json: no cut counts: $(cat "$tmp/out")"
  printf '{"text": "all answer"}\n' >"$tmp/text.jsonl"
  expect 1 "no record has a prompt and an answer to score" "eval --generate on text records" -- \
    "$pesc" eval --model "$demo" --data "$tmp/text.jsonl" --generate
  expect 1 "no record has a prompt and an answer with a number to score" \
    "eval --generate --match number: references without numbers" -- \
    "$pesc" eval --model "$demo" --data "$tmp/rev.jsonl" --generate --match number
fi
expect 2 "\-\-match fuzzy: expected exact" "eval --generate --match, a bad one" -- \
  "$pesc" eval --model x --data z --generate --match fuzzy
expect 2 "\-\-max-tokens is for generated answers: give \-\-generate" "eval --max-tokens alone" -- \
  "$pesc" eval --model x --data z --max-tokens 5
expect 2 "\-\-generate answers \-\-data or \-\-demo records and takes no \-\-choices" \
  "eval --generate --choices" -- "$pesc" eval --model x --choices y --generate
expect 2 "\-\-limit is for \-\-choices questions or \-\-generate's answers" "eval --limit alone" -- \
  "$pesc" eval --model x --data z --limit 3
expect 2 "\-\-choices scores multiple-choice questions and takes no \-\-data" "eval --choices with --data" -- \
  "$pesc" eval --model x --choices y --data z
expect 2 "\-\-shots is for \-\-choices questions" "eval --shots without --choices" -- \
  "$pesc" eval --model x --data z --shots 2
expect 2 "\-\-shots-from gives worked examples: say how many with \-\-shots N" \
  "eval --shots-from without --shots" -- "$pesc" eval --model x --choices y --shots-from z
expect 2 "\-\-raw lays questions out with no template" "eval --raw --template" -- \
  "$pesc" eval --model x --choices y --raw --template chatml
awk 'BEGIN { printf "{\"input_ids\": ["; for (t = 0; t < 200; t++) printf "%s%d", t ? ", " : "", t % 64; print "]}" }' >"$tmp/long.jsonl"
expect 0 "1 record longer than the model's context of 128 tokens (max_position_embeddings) scored on the first 128" \
  "eval cuts a record at the model's context, and says so" -- "$pesc" eval --model "$m" --data "$tmp/long.jsonl" --backend cpu
# PESC adapters from a file: the loss PyTorch computed for the crafted model
p="$data/pesc-e4k1"
expect 0 '"loss"' "eval --adapters" -- "$pesc" eval --model "$p" --adapters "$p/trainables.safetensors" --data "$p/records.jsonl" --json
loss=$(sed -n 's/.*"loss": \([^,]*\),.*/\1/p' "$tmp/out")
if [ -n "$loss" ] && close "$loss" 4.868344877774743 1e-5; then
  pass "eval --adapters loss $loss matches PyTorch"
else
  fail "eval --adapters loss '$loss' (wanted 4.868344877774743)"
fi
expect 1 "has shape \[4, 32\] but the crafted model needs \[4, 64\]" "adapters for another base model" -- \
  "$pesc" eval --model "$m" --adapters "$p/trainables.safetensors" --data "$p/records.jsonl"
m2="$data/mistral-sharded-f16"
expect 0 "loss 4.5451" "eval, sharded F16 checkpoint, text output" -- \
  "$pesc" eval --model "$m2" --data "$m2/records.jsonl"

# bad inputs: one line naming the thing
expect 1 "$tmp/nowhere" "missing model directory" -- "$pesc" eval --model "$tmp/nowhere" --data "$m/records.jsonl"
expect 1 "^pesc eval: --data: $tmp/none.jsonl: No such file" "missing data file names --data" -- "$pesc" eval --model "$m" --data "$tmp/none.jsonl"
expect 1 "^pesc generate: --adapters: $tmp/none: No such file" "missing adapters name --adapters" -- \
  "$pesc" generate --adapters "$tmp/none" --prompt hi
expect 1 "^pesc tokenize: --tokenizer: $tmp/none.json: No such file" "missing tokenizer names --tokenizer" -- \
  "$pesc" tokenize --tokenizer "$tmp/none.json"
expect 1 "^pesc tokenize: --model: $tmp/none: No such file" "tokenize --model of a missing directory" -- \
  "$pesc" tokenize --model "$tmp/none"
expect 1 "^pesc tokenize: --model: $m has no tokenizer.json: give the model's tokenizer with --tokenizer" \
  "tokenize --model of a directory without a tokenizer" -- "$pesc" tokenize --model "$m"
# a Phi-3 config over split q/k/v files: the joined tensor it reads is named
mkdir -p "$tmp/phi-split"
cp "$m/model.safetensors" "$tmp/phi-split/"
sed 's/LlamaForCausalLM/Phi3ForCausalLM/' "$m/config.json" >"$tmp/phi-split/config.json"
expect 1 "phi-split: tensor model.layers.0.self_attn.qkv_proj.weight is missing (Phi3ForCausalLM keeps q, k, v and gate, up joined)" \
  "a Phi-3 model without joined tensors" -- "$pesc" eval --model "$tmp/phi-split" --data "$m/records.jsonl"
# Phi-3's longrope: short factors within the original context, long ones past it
expect 0 "scaling longrope (short factors up to 32 positions, long ones past), attention factor 1.265" \
  "inspect a longrope model" -- "$pesc" inspect "$data/phi3-longrope-f32"
expect 0 "multipliers   embedding 12, residual 0.22, attention 0.1, logits 1/4" \
  "inspect a Granite model" -- "$pesc" inspect "$data/granite-mult-f32"
expect 0 "none in layers 1$" "inspect a SmolLM3 model" -- "$pesc" inspect "$data/smollm3-nope-f32"
expect 0 "window        6; none in layers 2$" "inspect a Gemma 3 model: its global layer" -- \
  "$pesc" inspect "$data/gemma3-f32"
expect 0 "rope local    theta 10000, unscaled, in the sliding layers" \
  "inspect a Gemma 3 model: its sliding layers' RoPE" -- "$pesc" inspect "$data/gemma3-f32"
expect 0 "softcaps      scores 2, logits 3" "inspect a Gemma 2 model: its softcaps" -- \
  "$pesc" inspect "$data/gemma2-f32"
expect 0 "window        6; none in layers 1$" "inspect a Gemma 2 model: every other layer global" \
  -- "$pesc" inspect "$data/gemma2-f32"
expect 0 "blocks        OLMo 2's: a norm after the attention and after the FFN, none before" \
  "inspect an OLMo 2 model" -- "$pesc" inspect "$data/olmo2-f32"
expect 0 "Gemma3ForConditionalGeneration (its text model; the vision tower is not read)" \
  "inspect a multimodal Gemma 3" -- "$pesc" inspect "$data/gemma3-mm-bf16"
# a multimodal config over a text model's files: the layouts looked for are named
mkdir -p "$tmp/mm-text"
cp "$data/gemma3-mm-f32/config.json" "$tmp/mm-text/"
cp "$data/gemma3-f32/model.safetensors" "$tmp/mm-text/"
expect 1 "mm-text: Gemma3ForConditionalGeneration's text model is not there: no language_model.model.embed_tokens.weight" \
  "a multimodal Gemma 3 config over a text model's files" -- \
  "$pesc" eval --model "$tmp/mm-text" --data "$data/gemma3-f32/records.jsonl"
mkdir -p "$tmp/cfgdir/config.json"
expect 1 "cfgdir/config.json is a directory, not a file" "a directory where a file belongs" -- \
  "$pesc" inspect "$tmp/cfgdir"
printf '{"input_ids": [1, 2, 3]}\n{"input_ids": [1, 2\n' >"$tmp/bad.jsonl"
expect 1 "bad.jsonl:2: not valid JSON" "malformed JSONL names the line" -- \
  "$pesc" eval --model "$m" --data "$tmp/bad.jsonl"
printf '{"input_ids": [1, 64]}\n' >"$tmp/oov.jsonl"
expect 1 "oov.jsonl:1: \"input_ids\"\[1\] = 64 is outside the vocabulary" "token outside the vocabulary" -- \
  "$pesc" eval --model "$m" --data "$tmp/oov.jsonl"
printf '{"input_ids": [1, 2], "labels": [1]}\n' >"$tmp/labels.jsonl"
expect 1 "\"labels\" has 1 entries" "labels of the wrong length" -- \
  "$pesc" eval --model "$m" --data "$tmp/labels.jsonl"
printf '{"input_ids": [5]}\n' >"$tmp/single.jsonl"
expect 1 "no token is predicted" "nothing to predict" -- "$pesc" eval --model "$m" --data "$tmp/single.jsonl"

mkdir "$tmp/gpt2" "$tmp/wide"
sed 's/LlamaForCausalLM/GPT2LMHeadModel/' "$m/config.json" >"$tmp/gpt2/config.json"
cp "$m/model.safetensors" "$tmp/gpt2/"
expect 1 "supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM" "unsupported architecture" -- \
  "$pesc" eval --model "$tmp/gpt2" --data "$m/records.jsonl"
sed 's/"intermediate_size": 96/"intermediate_size": 128/' "$m/config.json" >"$tmp/wide/config.json"
cp "$m/model.safetensors" "$tmp/wide/"
expect 1 "has shape \[96, 64\] but config.json implies \[128, 64\]" "tensor shape disagrees with config.json" -- \
  "$pesc" eval --model "$tmp/wide" --data "$m/records.jsonl"
head -c 1000 "$m/model.safetensors" >"$tmp/wide/model.safetensors"
expect 1 "model.safetensors" "truncated safetensors" -- "$pesc" eval --model "$tmp/wide" --data "$m/records.jsonl"

# generate: the demo base model answers a lookup it learned while pre-training, greedily
demo="$top_srcdir/data/demo"
expect 0 "^Paris$" "generate on the demo model" -- "$pesc" generate --model "$demo" --prompt "capital: France"
# on a terminal, loading says so in a line the answer (or the score) then starts over
script -qec "'$pesc' generate --model '$demo' --prompt 'capital: France'" /dev/null </dev/null >"$tmp/tty.out" 2>&1
grep -q "pesc generate: loading the model from" "$tmp/tty.out" && [ "$(tty_lines "$tmp/tty.out" | tail -n 1)" = Paris ] &&
  pass "generate on a terminal: a loading line, then the answer on a clean line" ||
  fail "generate on a terminal: $(cat -v "$tmp/tty.out" | head -c 300)"
ids=$(printf hi | "$pesc" tokenize --model "$demo")
script -qec "printf hi | '$pesc' tokenize --model '$demo'" /dev/null </dev/null >"$tmp/tty.out" 2>&1
grep -q "pesc tokenize: loading the tokenizer from" "$tmp/tty.out" && [ -n "$ids" ] &&
  [ "$(tty_lines "$tmp/tty.out" | tail -n 1)" = "$ids" ] &&
  pass "tokenize on a terminal: a loading line, then the ids on a clean line" ||
  fail "tokenize on a terminal ($ids): $(cat -v "$tmp/tty.out" | head -c 300)"
script -qec "'$pesc' eval --model '$m' --data '$m/records.jsonl'" /dev/null </dev/null >"$tmp/tty.out" 2>&1
grep -q "pesc eval: loading the model from.*pesc eval: scoring 5 records" "$tmp/tty.out" &&
  tty_lines "$tmp/tty.out" | tail -n 1 | grep -q "^loss " &&
  pass "eval on a terminal: its phases, then the score on a clean line" ||
  fail "eval on a terminal: $(cat -v "$tmp/tty.out" | head -c 300)"
printf 'capital: France\n' >"$tmp/prompt.txt"
expect 0 "^Paris$" "generate reads the prompt from standard input" -- sh -c "'$pesc' generate --model '$demo' <'$tmp/prompt.txt'"
expect 2 "\-\-model DIR is required" "generate without --model" -- "$pesc" generate --prompt hi
# --chat: a line a turn (blank lines skipped, a backslash at the end going on to the next line),
# each answered in turn, the conversation in the prompt; the first answer is the single
# prompt's; a full context ends it, not in an error
printf 'capital: \\\nFrance\n\nreverse: abc\n' >"$tmp/chat.txt"
"$pesc" generate --model "$demo" --chat <"$tmp/chat.txt" >"$tmp/chat.out" 2>"$tmp/err" &&
  [ "$(wc -l <"$tmp/chat.out")" = 2 ] && [ "$(head -n 1 "$tmp/chat.out")" = Paris ] &&
  [ ! -s "$tmp/err" ] && pass "generate --chat answers each turn, a line each" ||
  fail "generate --chat: '$(head -c 200 "$tmp/chat.out")' $(head -c 300 "$tmp/err")"
# Ctrl-C (SIGINT) at the prompt ends the conversation as the end of the input does: exit 0
mkfifo "$tmp/chat.fifo"
"$pesc" generate --model "$demo" --chat <"$tmp/chat.fifo" >"$tmp/chat-int.out" 2>"$tmp/chat-int.err" &
chat_pid=$!
exec 7>"$tmp/chat.fifo"
(echo "capital: France" >&7) 2>/dev/null
for i in $(seq 100); do grep -q Paris "$tmp/chat-int.out" 2>/dev/null && break; sleep 0.1; done
kill -INT "$chat_pid" 2>/dev/null
for i in $(seq 100); do kill -0 "$chat_pid" 2>/dev/null || break; sleep 0.1; done
kill -9 "$chat_pid" 2>/dev/null   # not ended by then: a failure, not a hang
wait "$chat_pid"
chat_status=$?
exec 7>&-
[ "$chat_status" = 0 ] && [ "$(cat "$tmp/chat-int.out")" = Paris ] && [ ! -s "$tmp/chat-int.err" ] &&
  pass "generate --chat: Ctrl-C at the prompt ends it, exit 0" ||
  fail "generate --chat, Ctrl-C at the prompt: exit $chat_status, $(cat "$tmp/chat-int.out" "$tmp/chat-int.err" | head -c 300)"
for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo "capital: France"; done >"$tmp/long-chat.txt"
expect 0 "note: the conversation is .* tokens, the model's context .* 128: it ends here" \
  "generate --chat ends when the context is full" -- \
  sh -c "'$pesc' generate --model '$demo' --chat <'$tmp/long-chat.txt'"
expect 2 "\-\-chat reads its turns from standard input.*leave out \-\-prompt" \
  "generate --chat with --prompt" -- "$pesc" generate --model "$demo" --chat --prompt hi
expect 2 "\-\-chat lays the turns out in a chat template.*choose one" "generate --chat with --raw" -- \
  "$pesc" generate --model "$demo" --chat --raw
# --system reaches the model: the greedy answer is not the one without it
with=$("$pesc" generate --model "$demo" --prompt "capital: France" --system "You are terse." 2>&1)
[ -n "$with" ] && [ "$with" != Paris ] && pass "generate --system goes into the prompt" ||
  fail "generate --system: '$with', as without it"
expect 2 "\-\-system goes in the chat template.*choose one" "generate --system with --raw" -- \
  "$pesc" generate --model "$demo" --prompt hi --system x --raw
expect 2 "\-\-top-p cuts what sampling draws from.*add \-\-temperature T" "generate --top-p while greedy" -- \
  "$pesc" generate --model "$demo" --prompt hi --top-p 0.5
# the cuts' off values (the defaults) cut nothing: greedy takes them (--top-k 0 was refused)
expect 0 "" "generate --top-k 0 --top-p 1 while greedy: off, accepted" -- \
  "$pesc" generate --model "$demo" --prompt hi --top-k 0 --top-p 1 --max-tokens 2
expect 2 "\-\-top-p cuts what sampling draws from" "generate --top-p 0.5 then --top-k 0: the cut named" -- \
  "$pesc" generate --model "$demo" --prompt hi --top-p 0.5 --top-k 0
expect 2 "\-\-raw sends the prompt as it is.*choose one" "generate --raw with --template" -- \
  "$pesc" generate --model "$demo" --prompt hi --raw --template chatml
# a plain-text line that is not UTF-8 is named as such (the message once read uninitialised memory)
printf 'plain \377 line\n' >"$tmp/latin1.txt"
expect 1 "latin1.txt:1: not valid UTF-8 text" "a non-UTF-8 text line is named" -- \
  "$pesc" eval --model "$demo" --data "$tmp/latin1.txt"
# a plain line among JSON records is a broken record, not a document of its own (it was read
# as one, changing the loss with no word); a file of plain lines is documents
"$pesc" demo-data -o "$tmp/three.jsonl" --records 3 2>/dev/null
{ head -n 2 "$tmp/three.jsonl"; echo "not json"; tail -n 1 "$tmp/three.jsonl"; } >"$tmp/mixed.jsonl"
expect 1 "mixed.jsonl:3: not valid JSON" "a plain line among JSON records is named as bad JSON" -- \
  "$pesc" eval --model "$demo" --data "$tmp/mixed.jsonl"
# the model's context (128 positions for the demo) bounds the prompt and the answer together
long_prompt=$(printf 'x %.0s' $(seq 60))
expect 0 "stopped after 7 tokens at the model's context of 128" "generate stops at the model's context" -- \
  "$pesc" generate --model "$demo" --raw --prompt "$long_prompt" --max-tokens 50
expect 1 "the prompt is 241 tokens, and the model's context (max_position_embeddings) is 128" \
  "a prompt past the model's context is refused" -- "$pesc" generate --model "$demo" --raw --prompt "$long_prompt$long_prompt"
# generate --prompts: a file's prompts answered several at a time, a JSON line each in the
# file's order. 24 demo records in 16 slots, a slot taking the next prompt as its answer ends
# (continuous batching): each greedy answer is eval --generate's
# for the record (itself pesc generate's, above), its reference the record's last output
"$pesc" demo-data -o "$tmp/held.jsonl" --records 24 --seed 5 2>/dev/null
"$pesc" generate --model "$demo" --prompts "$tmp/held.jsonl" --max-tokens 24 >"$tmp/batch.jsonl" 2>"$tmp/err"
status=$?
"$pesc" eval --model "$demo" --data "$tmp/held.jsonl" --generate --max-tokens 24 \
  --samples "$tmp/eval-answers.jsonl" >/dev/null 2>&1
ours=$(sed 's/^{"line":\([0-9]*\),"prompt":"[^"]*","answer":"\([^"]*\)","tokens":[0-9]*,"finish":"stop","reference":"\([^"]*\)"}$/\1 \2 \3/' "$tmp/batch.jsonl")
theirs=$(sed 's/.*"line": \([0-9]*\), "reference": "\([^"]*\)", "answer": "\([^"]*\)".*/\1 \3 \2/' "$tmp/eval-answers.jsonl")
if [ $status -eq 0 ] && [ "$(wc -l <"$tmp/batch.jsonl")" = 24 ] && [ "$ours" = "$theirs" ] &&
  [ "$(printf '%s\n' "$ours" | cut -d' ' -f1 | tr '\n' ' ')" = "$(seq 24 | tr '\n' ' ')" ]; then
  pass "generate --prompts: 24 answers in the file's order, each eval --generate's, with its reference"
else
  fail "generate --prompts against eval --generate: exit $status $(head -c 300 "$tmp/err") $(printf '%s\n' "$ours" | head -n 3) / $(printf '%s\n' "$theirs" | head -n 3)"
fi
# --batch: five slots (each taken by the next prompt as its answer ends, out of order), and
# one (a queue of 16 prompts, so two queues) give the same lines
for slots in 5 1; do
  "$pesc" generate --model "$demo" --prompts "$tmp/held.jsonl" --max-tokens 24 --batch $slots >"$tmp/batch$slots.jsonl" 2>/dev/null
  cmp -s "$tmp/batch$slots.jsonl" "$tmp/batch.jsonl" &&
    pass "generate --prompts --batch $slots: the same answers as 16 at a time" ||
    fail "generate --prompts --batch $slots: $(diff "$tmp/batch$slots.jsonl" "$tmp/batch.jsonl" | head -n 4)"
done
if [ -w /dev/full ]; then
  expect 1 "cannot write the answers to standard output: No space left on device" \
    "generate --prompts into a full disk says so" -- \
    sh -c '"$0" "$@" >/dev/full' "$pesc" generate --model "$demo" --prompts "$tmp/held.jsonl" --max-tokens 24
fi
"$pesc" eval --model "$demo" --data "$tmp/held.jsonl" --generate --max-tokens 24 --batch 3 \
  --samples "$tmp/eval-answers3.jsonl" >/dev/null 2>&1
cmp -s "$tmp/eval-answers3.jsonl" "$tmp/eval-answers.jsonl" &&
  pass "eval --generate --batch 3: the same answers as 16 at a time" ||
  fail "eval --generate --batch 3: $(diff "$tmp/eval-answers3.jsonl" "$tmp/eval-answers.jsonl" | head -n 4)"
expect 2 "\-\-batch is how many prompts of \-\-prompts FILE are answered at once: give \-\-prompts" \
  "generate --batch without --prompts" -- "$pesc" generate --model "$demo" --prompt hi --batch 4
expect 2 "\-\-batch 257: a whole number of prompts from 1 to 256" "generate --batch 257" -- \
  "$pesc" generate --model "$demo" --prompts x --batch 257
expect 2 "\-\-batch is for generated answers: give \-\-generate" "eval --batch without --generate" -- \
  "$pesc" eval --model x --data z --batch 4
# sampled: prompt i draws with seed S + i, so its answer is --prompt's with that seed (here
# the first and the eighteenth, in the second batch), and a second run gives the same lines
"$pesc" generate --model "$demo" --prompts "$tmp/held.jsonl" --max-tokens 24 --temperature 1.5 \
  --seed 40 >"$tmp/sampled.jsonl" 2>/dev/null
"$pesc" generate --model "$demo" --prompts "$tmp/held.jsonl" --max-tokens 24 --temperature 1.5 \
  --seed 40 >"$tmp/sampled2.jsonl" 2>/dev/null
ok=1
for i in 0 17; do
  input=$(sed -n "$((i + 1))p" "$tmp/held.jsonl" | sed 's/.*"input": "\([^"]*\)".*/\1/')
  said=$("$pesc" generate --model "$demo" --prompt "$input" --max-tokens 24 --temperature 1.5 \
    --seed $((40 + i)) 2>/dev/null)
  sed -n "$((i + 1))p" "$tmp/sampled.jsonl" | grep -qF "\"prompt\":\"$input\",\"answer\":\"$said\"," || ok=0
done
[ $ok -eq 1 ] && cmp -s "$tmp/sampled.jsonl" "$tmp/sampled2.jsonl" && ! cmp -s "$tmp/sampled.jsonl" "$tmp/batch.jsonl" &&
  pass "generate --prompts --temperature: prompt i samples as --prompt does with seed S + i" ||
  fail "generate --prompts sampled: $(head -n 1 "$tmp/sampled.jsonl") $(sed -n 18p "$tmp/sampled.jsonl")"
# the prompt shapes: prompt, question, messages (a last assistant turn the reference),
# conversations, an id kept; plain lines, blank ones passed over
cat >"$tmp/shapes.jsonl" <<'EOF'
{"id": "a", "prompt": "capital: France"}
{"question": "capital: France", "answer": "Paris"}
{"messages": [{"role": "user", "content": "capital: France"}, {"role": "assistant", "content": "Paris"}]}
{"conversations": [{"from": "human", "value": "capital: France"}], "id": 7}
EOF
"$pesc" generate --model "$demo" --prompts "$tmp/shapes.jsonl" >"$tmp/out" 2>"$tmp/err"
printf 'capital: France\n\n  \ncapital: France\n' >"$tmp/plain.txt"
"$pesc" generate --model "$demo" --prompts "$tmp/plain.txt" >"$tmp/plain.out" 2>>"$tmp/err"
if [ "$(cat "$tmp/out")" = '{"line":1,"id":"a","prompt":"capital: France","answer":"Paris","tokens":1,"finish":"stop"}
{"line":2,"prompt":"capital: France","answer":"Paris","tokens":1,"finish":"stop","reference":"Paris"}
{"line":3,"prompt":"capital: France","answer":"Paris","tokens":1,"finish":"stop","reference":"Paris"}
{"line":4,"id":7,"prompt":"capital: France","answer":"Paris","tokens":1,"finish":"stop"}' ] &&
  [ "$(cut -d, -f1,3 "$tmp/plain.out" | tr '\n' ' ')" = '{"line":1,"answer":"Paris" {"line":4,"answer":"Paris" ' ] &&
  [ ! -s "$tmp/err" ]; then
  pass "generate --prompts reads prompt, question, messages and conversations objects, and plain lines"
else
  fail "generate --prompts shapes: $(cat "$tmp/out" "$tmp/plain.out" "$tmp/err" | head -c 600)"
fi
# the model's context: a prompt that fills it gets a line with the error, the others their
# answers, and a note; an answer cut at --max-tokens says so
printf '%s\ncapital: France\n' "$long_prompt$long_prompt" >"$tmp/long.txt"
"$pesc" generate --model "$demo" --raw --prompts "$tmp/long.txt" >"$tmp/out" 2>"$tmp/err"
status=$?
[ $status -eq 0 ] && sed -n 1p "$tmp/out" | grep -q '"error":"the prompt is 241 tokens, and the model.s context (max_position_embeddings) is 128' &&
  sed -n 2p "$tmp/out" | grep -q '"line":2,.*"answer":' &&
  grep -q "note: 1 of 2 prompts (the first on line 1) fill the model's context of 128 tokens" "$tmp/err" &&
  pass "generate --prompts: a prompt past the context has its error line, the rest are answered" ||
  fail "generate --prompts past the context: exit $status $(cat "$tmp/out" "$tmp/err" | head -c 400)"
# ... and when every prompt fills it, nothing was answered: a failure (it once exited 0),
# each prompt's error line written all the same
printf '%s\n%s\n' "$long_prompt$long_prompt" "$long_prompt$long_prompt" >"$tmp/all-long.txt"
expect 1 "all-long.txt: all its prompts fill the model's context of 128 tokens (max_position_embeddings), so none was answered" \
  "generate --prompts where every prompt is too long fails" -- \
  "$pesc" generate --model "$demo" --raw --prompts "$tmp/all-long.txt"
[ "$(grep -c '"error":"the prompt is' "$tmp/out")" = 2 ] ||
  fail "generate --prompts, every prompt too long: the error lines: $(head -c 300 "$tmp/out")"
"$pesc" generate --model "$demo" --prompts "$tmp/held.jsonl" --max-tokens 1 >"$tmp/out" 2>/dev/null
[ "$(grep -c '"tokens":1,"finish":"length"' "$tmp/out")" -gt 0 ] &&
  pass "generate --prompts --max-tokens 1: answers cut say finish length" ||
  fail "generate --prompts --max-tokens 1: $(head -n 2 "$tmp/out")"
# a bad prompt stops the command before the model loads, naming the file and line
printf '{"prompt": "a"}\n{"text": "b", "n": 1}\n' >"$tmp/bad.jsonl"
expect 1 "bad.jsonl:2: no prompt: give it as a \"prompt\" .* this one has \"text\", \"n\"" \
  "generate --prompts: an object without a prompt is named" -- \
  "$pesc" generate --model "$tmp/no-such-model" --prompts "$tmp/bad.jsonl"
printf '{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}\n' >"$tmp/bad.jsonl"
expect 1 "bad.jsonl:1: messages\[1\] is a user turn where an assistant one goes" \
  "generate --prompts: turns out of order are named" -- \
  "$pesc" generate --model "$demo" --prompts "$tmp/bad.jsonl"
printf '{"messages": [{"role": "user", "content": "a"}]}\n' >"$tmp/msgs.jsonl"
expect 1 "msgs.jsonl:1: \-\-raw sends one text as it is; this prompt has a list of messages" \
  "generate --prompts --raw on messages" -- "$pesc" generate --model "$demo" --prompts "$tmp/msgs.jsonl" --raw
# the file is read twice (checked before the model loads): standard input (-) and a pipe are
# kept in a temporary file first (TMPDIR), which is gone after, and named as they were given;
# a device is refused; a byte-order mark before the first plain line is not part of the prompt
mkdir "$tmp/spool"
sed -n 1,5p "$tmp/held.jsonl" >"$tmp/five.jsonl"
"$pesc" generate --model "$demo" --prompts "$tmp/five.jsonl" --max-tokens 24 >"$tmp/five.out" 2>/dev/null
for how in "-" /dev/stdin; do
  TMPDIR="$tmp/spool" sh -c 'cat "$1" | "$2" generate --model "$3" --prompts "$4" --max-tokens 24' sh \
    "$tmp/five.jsonl" "$pesc" "$demo" "$how" >"$tmp/piped.out" 2>"$tmp/err"
  cmp -s "$tmp/piped.out" "$tmp/five.out" && [ -z "$(ls "$tmp/spool")" ] &&
    pass "generate --prompts $how from a pipe: the file's answers, no file left behind" ||
    fail "generate --prompts $how from a pipe: $(head -c 300 "$tmp/err") $(diff "$tmp/piped.out" "$tmp/five.out" | head -n 3) $(ls "$tmp/spool")"
done
expect 1 "standard input:2: the prompt is empty" "generate --prompts -: a bad prompt is named by its line" -- \
  sh -c 'printf "{\"prompt\": \"a\"}\n{\"prompt\": \"\"}\n" | "$1" generate --model "$2" --prompts -' sh "$pesc" "$demo"
expect 1 "cannot keep the prompts of standard input in $tmp/none: No such file or directory; set TMPDIR" \
  "generate --prompts - with TMPDIR missing" -- \
  sh -c 'echo hi | TMPDIR="$3" "$1" generate --model "$2" --prompts -' sh "$pesc" "$demo" "$tmp/none"
expect 1 "the prompts /dev/zero are a device, not a file" "generate --prompts on a device" -- \
  "$pesc" generate --model "$demo" --prompts /dev/zero
printf '\357\273\277capital: France\n' >"$tmp/bom.txt"
"$pesc" generate --model "$demo" --prompts "$tmp/bom.txt" >"$tmp/out" 2>&1
grep -q '^{"line":1,"prompt":"capital: France","answer":"Paris",' "$tmp/out" &&
  pass "generate --prompts: a byte-order mark is not part of the first prompt" ||
  fail "generate --prompts after a BOM: $(head -c 300 "$tmp/out")"
printf '\n\n' >"$tmp/empty.txt"
expect 1 "empty.txt holds no prompt" "generate --prompts on a file of blank lines" -- \
  "$pesc" generate --model "$demo" --prompts "$tmp/empty.txt"
expect 1 "cannot open the prompts $tmp/none.txt: No such file" "generate --prompts on a missing file" -- \
  "$pesc" generate --model "$demo" --prompts "$tmp/none.txt"
printf 'plain \377 line\n' >"$tmp/latin1.txt"
expect 1 "latin1.txt:1: not valid UTF-8" "generate --prompts: a line not UTF-8 is named" -- \
  "$pesc" generate --model "$demo" --prompts "$tmp/latin1.txt"
expect 2 "\-\-prompts answers the prompts of a file; \-\-prompt gives one: choose one" \
  "generate --prompts with --prompt" -- "$pesc" generate --model "$demo" --prompts x --prompt hi
expect 1 "tokenizer.json" "generate on a model without a tokenizer" -- "$pesc" generate --model "$m" --prompt hi
# the prompt must be text: an empty stdin, a NUL byte (</dev/zero once read until memory ran
# out) and --prompt '' are refused in one line; --max-tokens names its bounds
expect 1 "standard input held no prompt" "generate on an empty standard input" -- \
  sh -c '"$1" generate --model "$2" </dev/null' sh "$pesc" "$demo"
expect 1 "standard input holds a NUL byte" "generate on /dev/zero" -- \
  sh -c 'ulimit -v 4000000; exec timeout 20 "$1" generate --model "$2" </dev/zero' sh "$pesc" "$demo"
expect 2 "\-\-prompt '' is empty" "generate --prompt ''" -- "$pesc" generate --model "$demo" --prompt ""
expect 2 "unexpected argument 'reverse: pesc': give the prompt as \-\-prompt TEXT, or on standard input" \
  "generate with the prompt as an argument says where it goes" -- "$pesc" generate --model "$demo" "reverse: pesc"
expect 2 "unexpected argument 'chats.jsonl': a data file goes after \-\-data (see" \
  "train with the data file as an argument says where it goes" -- "$pesc" train --headless chats.jsonl
expect 2 "\-\-max-tokens 1048577: a whole number from 1 to 1048576" "generate --max-tokens past its bound" -- \
  "$pesc" generate --model "$demo" --prompt hi --max-tokens 1048577
expect 2 "\-\-no-special is for encoding" "tokenize --decode with --no-special" -- \
  sh -c 'echo "[1]" | "$1" tokenize --model "$2" --decode --no-special' sh "$pesc" "$demo"

# tokenize: bad tokenizer files and bad input, one line naming the file or the id
expect 1 "text is not valid UTF-8 (byte 3: 0xff)" "tokenize counts a bad byte from 1, as --jsonl does" -- \
  sh -c 'printf "ab\377cd" | "$1" tokenize --model "$2"' sh "$pesc" "$demo"
expect 1 "tokenizer.json is a file, not a model directory: give a tokenizer.json with \-\-tokenizer" \
  "tokenize --model naming the tokenizer file says to give it with --tokenizer" -- \
  sh -c '"$1" tokenize --model "$2/tokenizer.json" </dev/null' sh "$pesc" "$demo"
expect 1 "stdin:1: not valid JSON (column 9: invalid Unicode" "tokenize --jsonl names a lone surrogate" -- \
  sh -c 'printf "\"\\\\ud800x\"\n" | "$1" tokenize --model "$2" --jsonl' sh "$pesc" "$demo"
expect 1 "demo is a directory, not a file: name the tokenizer.json file itself" "tokenize --tokenizer DIR" -- \
  sh -c 'echo hi | "$1" tokenize --tokenizer "$2"' sh "$pesc" "$demo"
mkdir "$tmp/tok"
cp "$demo/tokenizer.json" "$tmp/tok/"
printf '{"bos_token": 1}\n' >"$tmp/tok/tokenizer_config.json"
expect 1 "tokenizer_config.json: \"bos_token\" is a number" "tokenizer_config.json field of the wrong type" -- \
  sh -c 'echo hi | "$1" tokenize --model "$2"' sh "$pesc" "$tmp/tok"
rm "$tmp/tok/tokenizer_config.json"
expect 0 "^1 " "tokenize without tokenizer_config.json" -- sh -c 'echo hi | "$1" tokenize --model "$2"' sh "$pesc" "$tmp/tok"
# --decode: every entry an id of the vocabulary, or an input error (status 1, as for bad data)
decode() { printf '%s\n' "$1" >"$tmp/ids"; "$pesc" tokenize --model "$demo" --decode <"$tmp/ids"; }
expect 0 '^"<s>' "tokenize --decode" -- decode '[1, 330]'
expect 1 "stdin:1: entry 1, id 999999999, is not in the vocabulary: ids run from 0 to [0-9]* (a vocabulary of [0-9]*)" \
  "tokenize --decode, an id outside the vocabulary" -- decode '[1, 999999999]'
expect 1 "entry 0, id -1, is not in the vocabulary" "tokenize --decode, a negative id" -- decode '[-1]'
expect 1 "entry 0, id 4294967297, is not in the vocabulary" "tokenize --decode, an id past 32 bits" -- decode '[4294967297]'
expect 1 'stdin:1: entry 0, "12abc", is not a token id: ids are integers from 0 to [0-9]* (a vocabulary of' \
  "tokenize --decode, a string id" -- decode '["12abc"]'
expect 1 "entry 1, 1.5, is not a token id" "tokenize --decode, a fractional id" -- decode '[1, 1.5]'
# a vocabulary with gaps (the entries A to Z taken out of tokenizer.json): an id in a gap
# has no token, which is said as such (not "not in the vocabulary: ids run from 0 to 417");
# inspect counts the gaps; a model that generates such an id shows it as <id N>
mkdir "$tmp/gaps" && cp "$demo/"* "$tmp/gaps/"
/usr/bin/python3 - "$tmp/gaps/tokenizer.json" <<'PY'
import json, string, sys
t = json.load(open(sys.argv[1]))
for c in string.ascii_uppercase:
    del t["model"]["vocab"][c]
json.dump(t, open(sys.argv[1], "w"))
PY
gap=$(sed -n 's/.*"B": \([0-9]*\).*/\1/p' "$demo/tokenizer.json")
expect 1 "stdin:1: entry 0, id $gap, has no token in tokenizer.json (the vocabulary has gaps: 26 ids missing between 0 and 417)" \
  "tokenize --decode, an id in a gap of the vocabulary" -- \
  sh -c 'echo "[$3]" | "$1" tokenize --model "$2" --decode' sh "$pesc" "$tmp/gaps" "$gap"
expect 0 "^vocabulary    418 ids (4 special; 26 missing: gaps in tokenizer.json's numbering" \
  "inspect a tokenizer.json with gaps counts them" -- "$pesc" inspect "$tmp/gaps/tokenizer.json"
expect 0 "<id [0-9]*>" "generate shows an id with no token as <id N>" -- \
  "$pesc" generate --model "$tmp/gaps" --prompt "upper: hello" --max-tokens 5 --backend cpu
# what tokenize prints, ids separated by spaces, decodes back
expect 0 '^"<s>hello world' "tokenize | tokenize --decode gives the text back" -- \
  sh -c 'echo "hello world" | "$1" tokenize --model "$2" | "$1" tokenize --model "$2" --decode' \
  sh "$pesc" "$demo"
expect 1 "stdin:1: 'x' is not a token id" "tokenize --decode, a word among plain ids" -- decode '1 2 x'
sed '/"ids": \[/{n;s/1/99999/}' "$demo/tokenizer.json" >"$tmp/tok/tokenizer.json"
expect 1 "tokenizer.json: post_processor: special_tokens\[\"<s>\"\].ids\[0\] = 99999 is not in the vocabulary" \
  "a BOS id outside the vocabulary in the post-processor" -- sh -c 'echo hi | "$1" tokenize --model "$2"' sh "$pesc" "$tmp/tok"

# inspect
expect 0 "parameters" "inspect a model directory" -- "$pesc" inspect "$m"
grep -q "LlamaForCausalLM" "$tmp/out" && grep -q "llama3" "$tmp/out" || fail "inspect: architecture or rope missing"
expect 0 "chat template pesc's camelidae matches it" "inspect a tokenizer.json: its template" -- \
  "$pesc" inspect "$top_srcdir/data/demo/tokenizer.json"
grep -q "^vocabulary    418 ids (4 special)$" "$tmp/out" && grep -q "^eos           </s> (2)$" "$tmp/out" &&
  grep -q '^example       "Hello, world! 12345" -> 19 tokens: H|e|l|l|o|,| |w|' "$tmp/out" ||
  fail "inspect tokenizer.json: $(cat "$tmp/out")"
printf '{"model": {"type": "Unigram"}}' >"$tmp/tokenizer.json"
expect 1 "tokenizer.json.*Unigram" "inspect an unsupported tokenizer.json: one line naming it" -- \
  "$pesc" inspect "$tmp/tokenizer.json"
expect 0 "tensors       21 in 2 files" "inspect a sharded model" -- "$pesc" inspect "$m2"
expect 0 "model.layers.0.mlp.down_proj.weight" "inspect a safetensors file" -- "$pesc" inspect "$m/model.safetensors"
expect 0 "records       5" "inspect a tokens dataset" -- "$pesc" inspect "$m/records.jsonl"
# what a file supplies reaches the terminal with its control characters shown as \xNN: a
# tensor name, a metadata value, a token or a log's error cannot clear the screen, retitle
# it or forge a line of the summary
mkdir "$tmp/evil"
/usr/bin/python3 - "$tmp/evil" <<'PY'
import json, struct, sys
d = sys.argv[1]
name = "w\x1b[2J\x1b]0;title\x07\nFORGED tensor"
header = json.dumps({"__metadata__": {"k\x1b[31m": "v\nFORGED metadata"},
                     name: {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
open(d + "/evil.safetensors", "wb").write(struct.pack("<Q", len(header)) + header + bytes(4))
bos = "<s>\x1b[31m\nFORGED token"
json.dump({"model": {"type": "BPE", "vocab": {bos: 0, "a": 1}, "merges": []}},
          open(d + "/tokenizer.json", "w"))
json.dump({"bos_token": bos}, open(d + "/tokenizer_config.json", "w"))
with open(d + "/run.jsonl", "w") as f:
    for o in [{"event": "start", "model": "m\x1b[2J", "backend": "b\nFORGED backend", "total_steps": 2},
              {"event": "error", "step": 1, "elapsed_s": 1, "text": "boom\x1b[1A\nFORGED error"},
              {"event": "error", "step": 1, "elapsed_s": 1, "text": "at step 1"}]:
        f.write(json.dumps(o) + "\n")
PY
for f in evil.safetensors tokenizer.json run.jsonl; do
  "$pesc" inspect "$tmp/evil/$f" >"$tmp/out" 2>&1
  if grep -q "$(printf '\033')" "$tmp/out" || grep -q "^FORGED" "$tmp/out"; then
    fail "inspect $f passes control characters from the file to the terminal: $(od -c "$tmp/out" | head -5)"
  elif ! grep -q '\\x1b' "$tmp/out"; then
    fail "inspect $f: the escape is not shown as \\x1b: $(cat "$tmp/out")"
  else
    pass "inspect $f shows the file's control characters as \\xNN"
  fi
done
# a text dataset, read as training reads it: the predicted tokens are the ones eval scores
"$pesc" demo-data -o "$tmp/chat.jsonl" --records 30 --seed 4 >/dev/null
gzip -c "$tmp/chat.jsonl" >"$tmp/chat.jsonl.gz"
# a .gz that is not gzip data (a file renamed, a download cut at its first bytes) was read as
# plain text, its lines passing for records
cp "$tmp/chat.jsonl" "$tmp/plain.jsonl.gz"
expect 1 "plain.jsonl.gz: named .gz, but it is not gzip data" "a .gz name over plain data is refused" -- \
  "$pesc" inspect "$tmp/plain.jsonl.gz"
expect 0 "^tokens        not counted: 30 text records, which the tokenizer of a model renders (give \-\-model DIR or \-\-tokenizer FILE)$" \
  "inspect a text dataset without a tokenizer: its records, and what counts their tokens" -- \
  "$pesc" inspect "$tmp/chat.jsonl"
grep -q "^records       30$" "$tmp/out" || fail "inspect without a tokenizer: $(cat "$tmp/out")"
expect 0 "^records       30$" "inspect a text dataset with --model" -- \
  "$pesc" inspect "$tmp/chat.jsonl.gz" --model "$demo"
predicted=$(sed -n 's/^tokens  *[0-9]* (\([0-9]*\) predicted)$/\1/p' "$tmp/out")
scored=$("$pesc" eval --model "$demo" --data "$tmp/chat.jsonl" --json | sed 's/.*"tokens": \([0-9]*\).*/\1/')
[ -n "$predicted" ] && [ "$predicted" = "$scored" ] && pass "its predicted tokens are eval's ($scored)" \
  || fail "inspect counts '$predicted' predicted tokens, eval scores '$scored'"
seq -s, 1 600 | sed 's/.*/{"input_ids": [&]}/' >"$tmp/long.jsonl"
echo '{"input_ids": [1, 2, 3]}' >>"$tmp/long.jsonl"
expect 0 "^length        min 3, median 3, mean 301.5, p95 600, max 600$" \
  "inspect: the lengths' distribution" -- "$pesc" inspect "$tmp/long.jsonl"
grep -q "^longer        1 of 2 records over 512 tokens" "$tmp/out" \
  && pass "inspect: the records past the default --seq are counted" || fail "inspect: $(cat "$tmp/out")"
expect 2 "read a dataset; .* is a directory" "inspect a directory with dataset options" -- \
  "$pesc" inspect "$m" --format alpaca
expect 1 "no such file" "inspect a missing path" -- "$pesc" inspect "$tmp/nothing"
# data train and eval take that is no file: the demo's is read, a URL is pesc fetch's first
expect 0 "^records       500$" "inspect demo:sort,records=500" -- \
  "$pesc" inspect demo:sort,records=500 --model "$top_srcdir/data/demo"
expect 1 "'arith' is not a family" "inspect demo:arith names the bad item" -- "$pesc" inspect demo:arith
for url in http://host/data.jsonl hf://datasets/owner/name/data.jsonl; do
  expect 2 "reads local files; download it first with pesc fetch $url (it prints the local path)" \
    "inspect $url says to fetch it" -- "$pesc" inspect "$url"
done
mkfifo "$tmp/fifo.jsonl"   # its open would block; /dev/zero as a dataset would fill memory
expect 1 "fifo.jsonl: not a regular file" "inspect a FIFO" -- timeout 10 "$pesc" inspect "$tmp/fifo.jsonl"
ln -sf /dev/zero "$tmp/zero.jsonl"
expect 1 "zero.jsonl: not a regular file" "inspect a device" -- timeout 10 "$pesc" inspect "$tmp/zero.jsonl"

# bench --profile: every op of the step has its row, products by shape, counted per step
small="--dim 64 --layers 2 --heads 4 --kv-heads 2 --ffn 128 --vocab 256 --seq 32 --batch 2"
expect 2 "\-\-decode times answering, and \-\-batch is for training steps" \
  "bench --decode refuses --batch (it was ignored)" -- "$pesc" bench --decode 1 --batch 3
# layers and heads as a config.json caps them: 10 million layers ran the host out of memory
expect 2 "\-\-layers 10000000: expected a whole number from 1 to 1024" \
  "bench --layers past 1024 is refused before anything is allocated" -- "$pesc" bench --layers 10000000
expect 2 "\-\-kv-heads 1025: expected a whole number from 1 to 1024" \
  "bench --kv-heads past 1024 is refused" -- "$pesc" bench --kv-heads 1025
expect 2 "\-\-heads 8 must split into \-\-kv-heads 3 groups" \
  "bench: a bad --kv-heads is named alone" -- "$pesc" bench --heads 8 --kv-heads 3
expect 0 '"heads": 2, "kv_heads": 2,' "bench --heads alone: as many key/value heads (it once kept 8)" -- \
  "$pesc" bench --dim 64 --layers 1 --heads 2 --ffn 64 --vocab 64 --seq 8 --batch 1 --steps 1 --json --backend cpu
expect 0 "^profile of 2 steps" "bench --profile" -- "$pesc" bench $small --steps 1 --profile --backend cpu
# an op's row: calls/step, ms/step, share, host ms and, for products, TFLOP/s
row() {
  awk -v op="$1" 'substr($0, 3, 40) ~ "^" op " *$" { $0 = substr($0, 43); $1 = $1; print }' \
    "$tmp/out"
}
for want in "attention_forward:2.0" "attention_backward:2.0" "moe_adapter_forward:2.0" \
            "matmul_forward 64x128:4.0" "matmul_backward 128x64:2.0" "adamw_update:1.0"; do
  calls=$(row "${want%:*}" | cut -d' ' -f1)
  [ "$calls" = "${want#*:}" ] || fail "bench --profile: '${want%:*}' $calls calls/step, wanted ${want#*:}"
done
rest=$(awk '/between ops/ { print $(NF - 1) }' "$tmp/out")
awk -v r="$rest" 'BEGIN { exit !(r != "" && r >= 0) }' ||
  fail "bench --profile: the ops add up to more than the step (between ops: '$rest' ms)"
for op in "attention_backward" "moe_adapter_forward" "matmul_forward 64x128" "rmsnorm_forward"; do
  rate=$(row "$op" | awk '{ print $5 }')
  # the host's part is part of the op's time; on the CPU backend, all of it (the last digit)
  row "$op" | awk '{ exit !($4 != "" && $4 <= $2 && $4 >= $2 - 0.011) }' ||
    fail "bench --profile: '$op' host ms not the op's own on the CPU: $(row "$op")"
  case $op in
    rmsnorm*) [ -z "$rate" ] || fail "bench --profile: '$op' has a TFLOP/s figure ($rate)" ;;
    *) awk -v r="$rate" 'BEGIN { exit !(r != "" && r > 0) }' ||
         fail "bench --profile: '$op' lacks its TFLOP/s ('$rate')" ;;
  esac
done
# the products' FLOPs in the profile add up to the MFU's FLOPs per token (64 tokens a step):
# two accountings, one from the ops' arguments and one from the model's shape
for extra in "" "--lora-rank 4 --lora-targets q,v,down" "--train full"; do
  expect 0 '"profile": \[{"op": "' "bench --profile --json $extra" -- \
    "$pesc" bench $small --steps 1 --profile --json --backend cpu $extra
  flops=$(profile_flops 64 <"$tmp/out") ||
    fail "bench --profile $extra: FLOPs a token, the products' and the MFU's: $flops"
done

# bench's weights that cannot be allocated name the shape given on the command line, which
# has no config.json
expect 1 "the weights (32 layers, hidden 4096, intermediate 11008, vocab 32000: 6.74 billion parameters, 25.1 GiB as fp32) do not fit" \
  "bench: weights that do not fit name the shape" -- sh -c 'ulimit -v 2000000 && exec "$0" "$@"' "$pesc" bench \
  --dim 4096 --layers 32 --heads 32 --kv-heads 32 --ffn 11008 --vocab 32000 --backend cpu

# inspect: an unknown option is bad usage (2), not a path that is missing (1); -- ends options
expect 2 "unknown option --bogus" "inspect --bogus is a usage error" -- "$pesc" inspect --bogus
expect 1 "^pesc inspect: --bogus: no such file" "inspect -- --bogus is a path" -- \
  "$pesc" inspect -- --bogus

# bench --decode: answering speed a count of sequences, each rate what its step time gives
# (sequences x 1000 / step_ms, within the rounding of the printed figures)
"$pesc" bench ${small% --seq*} --decode 1,3 --prompt-tokens 8 --answer-tokens 4 --json --backend cpu >"$tmp/out" 2>"$tmp/err"
status=$?
rates=$(sed 's/}, {/\n/g' "$tmp/out" | sed -n 's/.*"sequences": \([0-9]*\), "tokens_per_s": \([0-9.]*\), "step_ms": \([0-9.]*\), "prompt_tokens_per_s": \([0-9.]*\).*/\1 \2 \3 \4/p')
if [ $status -eq 0 ] && [ "$(printf '%s\n' "$rates" | cut -d' ' -f1 | tr '\n' ' ')" = "1 3 " ] &&
  printf '%s\n' "$rates" | awk '{ want = $1 * 1000 / $3; if (!($2 > 0 && $4 > 0 && $2 / want > 0.99 && $2 / want < 1.01)) bad = 1 } END { exit bad }'; then
  pass "bench --decode: a rate for 1 and 3 sequences, each its step time's"
else
  fail "bench --decode: exit $status, '$rates' $(head -c 300 "$tmp/out" "$tmp/err")"
fi
expect 2 "\-\-decode 1,0: up to 16 counts of sequences" "bench --decode with a 0" -- "$pesc" bench --decode 1,0
expect 2 "\-\-decode times answering, and \-\-profile is for training steps" "bench --decode --profile" -- \
  "$pesc" bench --decode 4 --profile
expect 2 "\-\-answer-tokens is for \-\-decode S,...: give it" "bench --answer-tokens alone" -- \
  "$pesc" bench --answer-tokens 4
# bench: --seq x --batch past pesc train's limit is bad usage (it overflowed int: a crash)
expect 2 "at most 16777216 tokens per step" "bench --seq 65536 --batch 65536 is refused" -- \
  "$pesc" bench --seq 65536 --batch 65536 --backend cpu

# plugins: every place a listed module comes from is one that --help names (pesc run from its
# build tree finds the modules built beside it)
expect 0 "(build tree)" "plugins from the build tree" -- env PESC_PLUGIN_PATH= "$pesc" plugins
grep -q "^plugin ABI.*the build tree" "$tmp/out" || fail "plugins: the header's search path lacks the build tree"
"$pesc" plugins --help | grep -q "the build tree" || fail "plugins --help does not name the build tree"

# pesc(1) shows these commands in its SYNOPSIS and names their pages in SEE ALSO
for cmd in generate export inspect tokenize fetch bench devices plugins demo-data; do
  sed 's/\\-/-/g' "$top_srcdir/man/pesc.1" | sed -n '/^.SH SYNOPSIS/,/^.SH DESCRIPTION/p' |
    grep -q "^.B pesc $cmd\b" || fail "pesc(1): the SYNOPSIS lacks pesc $cmd"
  sed 's/\\-/-/g' "$top_srcdir/man/pesc.1" | sed -n '/^.SH SEE ALSO/,$p' |
    grep -q "pesc-$cmd (1)" || fail "pesc(1): SEE ALSO lacks pesc-$cmd(1)"
done

# generate on a model directory without tokenizer.json says to give --tokenizer
expect 1 "llama-gqa-f32 has no tokenizer.json: give the model's tokenizer with --tokenizer" \
  "generate on a model without a tokenizer names --tokenizer" -- \
  "$pesc" generate --model "$data/llama-gqa-f32" --prompt hi --backend cpu

# inspect of a model's config.json describes the model, not "a JSON object over several lines"
expect 0 "^architecture  LlamaForCausalLM" "inspect DIR/config.json describes the model" -- \
  "$pesc" inspect "$data/llama-gqa-f32/config.json"

# generate without --prompt at a terminal says it waits for the prompt (it looked hung)
if command -v script >/dev/null 2>&1; then
  (sleep 1; printf '\004'; sleep 3) | timeout 30 script -qec "'$pesc' generate --model \
'$top_srcdir/data/demo' --backend cpu" "$tmp/typescript" >/dev/null 2>&1
  grep -q "type the prompt, then Ctrl-D" "$tmp/typescript" && pass "generate at a terminal asks for the prompt" \
    || fail "generate at a terminal does not ask for the prompt: $(tr -d '\r' <"$tmp/typescript" | head -c 300)"
else
  echo "skip generate at a terminal: script(1) not found"
fi

echo "$failures failure(s)"
[ "$failures" -eq 0 ]
