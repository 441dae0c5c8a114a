#!/bin/sh
# sinks.sh — the metric sinks' outputs across runs, as a user meets them: a fresh run refuses a
# csv FILE, a tensorboard DIR or an --eval-samples FILE that holds something else (a dataset, a
# model's config.json, another run's rows or events) and leaves it as it was, and a run refused
# leaves no file behind that its next try would be refused for; a run resumed after a crash
# writes each step once to the csv, to what TensorBoard shows and to its --eval-samples, and its
# log's line cut short by the crash stays a line of its own.
set -u
top_srcdir=${top_srcdir:-.}
top_builddir=${top_builddir:-.}
pesc="$top_builddir/pesc"
base="$top_srcdir/tests/reference/data/llama-gqa-f32"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/pesc-sinks.XXXXXX") || exit 99
trap 'rm -rf "$tmp"' EXIT
failures=0
. "$top_srcdir/tests/lib.sh"

# 64 records of 20 random ids below the model's vocabulary of 64
awk 'BEGIN { srand(7); for (r = 0; r < 64; r++) { printf "{\"input_ids\": ["; for (t = 0; t < 20; t++) printf "%s%d", t ? ", " : "", int(rand() * 64); print "]}" } }' >"$tmp/data.jsonl"
common="--model $base --data $tmp/data.jsonl --seq 24 --batch 4 --experts 4 --adapter-dim 8 --lr 1e-2 --backend cpu"

# unchanged FILE COPY WHAT: the refused run left FILE as COPY has it
unchanged() { cmp -s "$1" "$2" || fail "$3 changed $1: $(head -c 200 "$1")"; }

# ---- a fresh run writes new or empty outputs only -----------------------------------------------
# a dataset and an exported model's config.json named as the csv: other data, never written
"$pesc" demo-data -o "$tmp/demo.jsonl" --records 50 --seed 3 >/dev/null || exit 99
cp "$tmp/demo.jsonl" "$tmp/demo.before"
mkdir "$tmp/exp" && printf '{"model_type": "llama", "hidden_size": 64}\n' >"$tmp/exp/config.json"
cp "$tmp/exp/config.json" "$tmp/config.before"
# shellcheck disable=SC2086
expect 1 "\-\-sink csv:$tmp/demo.jsonl: $tmp/demo.jsonl is not a pesc csv (its first line is not step,wall_time,elapsed_s,...), and this sink would destroy it: name another file" \
  "--sink csv onto a dataset is refused" -- \
  "$pesc" train --headless $common --steps 1 --sink "csv:$tmp/demo.jsonl"
unchanged "$tmp/demo.jsonl" "$tmp/demo.before" "a run refused for --sink csv:DATASET"
# shellcheck disable=SC2086
expect 1 "$tmp/exp/config.json is not a pesc csv" "--sink csv onto a model's config.json is refused" -- \
  "$pesc" train --headless $common --steps 1 --sink "csv:$tmp/exp/config.json"
unchanged "$tmp/exp/config.json" "$tmp/config.before" "a run refused for --sink csv:config.json"

# another run's csv is that run's rows: refused as a fresh run's --log FILE holding a log is
# shellcheck disable=SC2086
"$pesc" train --headless $common --steps 2 --sink "csv:$tmp/a.csv" --sink "tensorboard:$tmp/a.tb" \
  >/dev/null 2>"$tmp/err" || fail "run a: $(cat "$tmp/err")"
cp "$tmp/a.csv" "$tmp/a.before"
# shellcheck disable=SC2086
expect 1 "\-\-sink csv:$tmp/a.csv: $tmp/a.csv already holds a pesc csv ([0-9]* bytes), which a fresh run would replace: remove it, name another file, or continue its run with \-\-resume" \
  "--sink csv onto another run's csv is refused" -- \
  "$pesc" train --headless $common --steps 1 --sink "csv:$tmp/a.csv"
unchanged "$tmp/a.csv" "$tmp/a.before" "a run refused for another run's csv"
: >"$tmp/empty.csv"
# shellcheck disable=SC2086
expect 0 "step 1/1" "an empty --sink csv FILE is taken" -- \
  "$pesc" train --headless $common --steps 1 --sink "csv:$tmp/empty.csv"
[ "$(cut -d, -f1 "$tmp/empty.csv" | tr '\n' ' ')" = "step 1 " ] || fail "the empty csv got $(cat "$tmp/empty.csv")"

# a tensorboard DIR with another run's event files: TensorBoard would merge the two runs
# shellcheck disable=SC2086
expect 1 "\-\-sink tensorboard:$tmp/a.tb: $tmp/a.tb already holds TensorBoard event files, which TensorBoard would merge with this run's: name another directory (\-\-sink tensorboard:DIR), remove them, or continue its run with \-\-resume" \
  "--sink tensorboard onto another run's directory is refused" -- \
  "$pesc" train --headless $common --steps 1 --sink "tensorboard:$tmp/a.tb"
[ "$(find "$tmp/a.tb" -name 'events.out.tfevents.*' | wc -l)" = 1 ] ||
  fail "a run refused for its tensorboard DIR added to it: $(ls "$tmp/a.tb")"

# a run refused for one sink leaves no file of the others (a BASE.csv, an event file) that
# would refuse its next try
# shellcheck disable=SC2086
expect 1 "$tmp/exp/config.json is not a pesc csv" "a run refused for its second sink" -- \
  "$pesc" train --headless $common --steps 1 --log "$tmp/b.jsonl" --sink csv --sink "tensorboard:$tmp/b.tb" \
  --sink "csv:$tmp/exp/config.json"
[ ! -e "$tmp/b.csv" ] && [ -z "$(find "$tmp/b.tb" -name 'events.out.tfevents.*' 2>/dev/null)" ] ||
  fail "a refused run left $(ls "$tmp/b.csv" "$tmp/b.tb" 2>&1)"
# shellcheck disable=SC2086
expect 0 "step 1/1" "its next try, without the bad sink, runs" -- \
  "$pesc" train --headless $common --steps 1 --log "$tmp/b.jsonl" --sink csv --sink "tensorboard:$tmp/b.tb"

# --eval-samples appends: to answers, never to a dataset
expect 1 "\-\-eval-samples $tmp/demo.jsonl holds other data (its first line is no answer line of \-\-eval-samples), which the answers appended would spoil: name another file" \
  "--eval-samples onto a dataset is refused" -- \
  "$pesc" train --headless --steps 1 --eval-generate exact:6 --eval-samples "$tmp/demo.jsonl"
unchanged "$tmp/demo.jsonl" "$tmp/demo.before" "a run refused for --eval-samples DATASET"
expect 0 "step 1/1" "--eval-samples: a first run" -- \
  "$pesc" train --headless --steps 1 --eval-generate exact:6 --eval-samples "$tmp/ans.jsonl"
expect 0 "step 1/1" "--eval-samples: a second run appends to the first's answers" -- \
  "$pesc" train --headless --steps 1 --eval-generate exact:6 --eval-samples "$tmp/ans.jsonl"
[ "$(wc -l <"$tmp/ans.jsonl")" = 12 ] || fail "--eval-samples twice: $(wc -l <"$tmp/ans.jsonl") lines, wanted 12"

# ---- a resume after a crash: the steps past the checkpoint are run again, and drawn once -------
# tb_steps DIR N: the steps TensorBoard shows of the run in DIR, one a line: its event files read
# in name order, each SessionLog START purging the steps at or past its own, as TensorBoard's
# event accumulator does
# (with no python3: 1 to N, what is wanted, as the event files cannot be read back)
tb_steps() {
  if ! command -v python3 >/dev/null; then
    echo "skip reading back TensorBoard's event files: no python3" >&2
    seq "$2"
    return
  fi
  python3 - "$1" <<'PY'
import glob, os, struct, sys
def varint(b, i):
    v = s = 0
    while True:
        c = b[i]; i += 1; v |= (c & 0x7f) << s; s += 7
        if c < 0x80:
            return v, i
def fields(b):
    i, out = 0, []
    while i < len(b):
        key, i = varint(b, i)
        wire = key & 7
        if wire == 0:
            v, i = varint(b, i)
        elif wire == 1:
            v = b[i:i + 8]; i += 8
        elif wire == 5:
            v = b[i:i + 4]; i += 4
        else:
            n, i = varint(b, i); v = b[i:i + n]; i += n
        out.append((key >> 3, v))
    return out
steps = []
for path in sorted(glob.glob(os.path.join(sys.argv[1], "events.out.tfevents.*"))):
    data = open(path, "rb").read()
    at = 0
    while at < len(data):
        n = struct.unpack("<Q", data[at:at + 8])[0]
        event = dict(fields(data[at + 12:at + 12 + n]))
        at += 16 + n
        if 6 in event and dict(fields(event[6])).get(1) == 1:
            steps = [s for s in steps if s < event.get(2, 0)]
        elif 5 in event:
            steps.append(event[2])
print("\n".join(map(str, steps)))
PY
}
# a run that saves at step 5 and is killed during step 9's record: its checkpoint of step 8
# never made, its log and csv past the checkpoint, the log's last line cut short
# shellcheck disable=SC2086
"$pesc" train --headless $common --steps 8 --save "$tmp/ck" --save-every 5 --log "$tmp/run.jsonl" \
  --sink csv --sink tensorboard >/dev/null 2>"$tmp/err" || fail "the run to crash: $(cat "$tmp/err")"
rm -r "$tmp/ck/step-00000008"
sed -i '/"event":"\(save\|finish\)","step":8/d' "$tmp/run.jsonl"
printf '{"step":9,"loss":' >>"$tmp/run.jsonl"
"$pesc" train --headless --resume "$tmp/ck" --steps 12 --sink csv --sink tensorboard >/dev/null 2>"$tmp/err"
status=$?
csv_steps=$(cut -d, -f1 "$tmp/run.csv" | tr '\n' ' ')
tb=$(tb_steps "$tmp/run.tb" 12 | tr '\n' ' ')
[ $status -eq 0 ] && [ "$csv_steps" = "step 1 2 3 4 5 6 7 8 9 10 11 12 " ] &&
  pass "--resume after a crash: the csv's rows past the checkpoint are dropped, every step once" ||
  fail "--resume after a crash: exit $status, csv steps $csv_steps $(head -c 300 "$tmp/err")"
[ "$tb" = "1 2 3 4 5 6 7 8 9 10 11 12 " ] &&
  pass "--resume after a crash: a SessionLog START at step 6 has TensorBoard draw every step once" ||
  fail "--resume after a crash: TensorBoard draws steps $tb"
grep -q '^{"step":9,"loss":$' "$tmp/run.jsonl" &&
  [ "$(grep -c '^{"event":"start",.*"resumed_step":5[,}]' "$tmp/run.jsonl")" = 1 ] &&
  pass "--resume after a crash: the log's cut line stays one line; the start line says resumed_step 5" ||
  fail "--resume after a crash: the log reads $(grep -n 'start\|"step":9,' "$tmp/run.jsonl" | cut -c1-120)"
# a pesc before resumed_step, or the same run resumed again with nothing past its checkpoint
# shellcheck disable=SC2086
"$pesc" train --headless --resume "$tmp/ck" --steps 14 --sink csv --sink tensorboard >/dev/null 2>"$tmp/err"
[ "$(cut -d, -f1 "$tmp/run.csv" | tr '\n' ' ')" = "step 1 2 3 4 5 6 7 8 9 10 11 12 13 14 " ] &&
  [ "$(tb_steps "$tmp/run.tb" 14 | tr '\n' ' ')" = "1 2 3 4 5 6 7 8 9 10 11 12 13 14 " ] &&
  pass "--resume from the newest checkpoint: rows appended, none dropped" ||
  fail "--resume again: csv $(cut -d, -f1 "$tmp/run.csv" | tr '\n' ' '), tb $(tb_steps "$tmp/run.tb" 14 | tr '\n' ' ') $(head -c 300 "$tmp/err")"
grep -q "also wrote to" "$tmp/err" &&
  fail "--resume given the run's sinks again still notes them: $(cat "$tmp/err")"
# a row cut short (the csv sink failed mid-row, the run went on and saved later): the resumed
# run's first row starts a line of its own, and the cut one is gone
printf '14,17' >>"$tmp/run.csv"
"$pesc" train --headless --resume "$tmp/ck" --steps 15 --sink csv >/dev/null 2>"$tmp/err"
[ "$(cut -d, -f1 "$tmp/run.csv" | tr '\n' ' ')" = "step 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 " ] &&
  [ "$(awk -F, '{ print NF }' "$tmp/run.csv" | sort -u | wc -l)" = 1 ] &&
  pass "--resume after a csv row cut short: it is dropped, and every row is whole" ||
  fail "--resume after a cut row: csv $(cut -d, -f1 "$tmp/run.csv" | tr '\n' ' ') $(head -c 300 "$tmp/err")"
# --resume takes no sinks from the checkpoint: one the run had and this run lacks is named
grep -q "the run also wrote to --sink tensorboard, not given here: --resume takes no --sink or --plugin from the checkpoint; give them again to go on writing there" "$tmp/err" &&
  pass "--resume without one of the run's sinks says so" ||
  fail "--resume without --sink tensorboard: $(head -c 300 "$tmp/err")"
# the run's own BASE.csv named besides --sink csv: one file, refused, not two writers of it
cp "$tmp/run.csv" "$tmp/run.before"
expect 1 "\-\-sink csv:$tmp/run.csv writes where \-\-sink csv does: give it once" \
  "--resume with --sink csv and --sink csv:BASE.csv is refused" -- \
  "$pesc" train --headless --resume "$tmp/ck" --steps 16 --sink csv --sink "csv:$tmp/run.csv"
unchanged "$tmp/run.csv" "$tmp/run.before" "a resume refused for --sink csv twice"
# a resumed run's event file sorts after those there, also after one of a later second (two
# runs in one second, a clock set back): TensorBoard reads them in the order of their names
: >"$tmp/run.tb/events.out.tfevents.9999999990.later.1"
"$pesc" train --headless --resume "$tmp/ck" --steps 16 --sink csv --sink tensorboard >/dev/null 2>"$tmp/err"
last=$(ls "$tmp/run.tb" | sort | tail -n 1)
case $last in
  events.out.tfevents.9999999991.*) [ -s "$tmp/run.tb/$last" ] ;;
  *) false ;;
esac && pass "a resumed run's event file is named to be read after those there" ||
  fail "the event files, in name order: $(ls "$tmp/run.tb" | sort | tr '\n' ' ') $(head -c 300 "$tmp/err")"

# --eval-samples after a crash: another run's answers there first, then a run killed after its
# checkpoint of step 2 (its step 3 and 4 answers written, the last line cut short); resumed, it
# answers steps 3 and 4 again, and its file has each step's answers once, every line whole
samples_steps() { sed 's/^{"step": \([0-9]*\),.*/\1/' "$1" | uniq -c | awk '{ printf "%s:%s ", $2, $1 }'; }
"$pesc" train --headless --steps 4 --eval-every 2 --eval-generate exact:6 \
  --eval-samples "$tmp/ans-crash.jsonl" >/dev/null 2>"$tmp/err" || fail "the other run: $(cat "$tmp/err")"
"$pesc" train --headless --steps 4 --eval-every 1 --save-every 2 --eval-generate exact:6 \
  --eval-samples "$tmp/ans-crash.jsonl" --save "$tmp/ans-ck" >/dev/null 2>"$tmp/err" ||
  fail "the run to crash: $(cat "$tmp/err")"
cp -r "$tmp/ans-ck/step-00000002" "$tmp/ans-step2"
rm -r "$tmp/ans-ck/step-00000004"
printf '{"step": 4, "source": "ari' >>"$tmp/ans-crash.jsonl"
"$pesc" train --headless --resume "$tmp/ans-ck" --steps 4 >/dev/null 2>"$tmp/err"
status=$?
got=$(samples_steps "$tmp/ans-crash.jsonl")
[ $status -eq 0 ] && [ "$got" = "2:6 4:6 1:6 2:6 3:6 4:6 " ] && [ "$(grep -vc '^{"step": [0-9]*, .*}$' "$tmp/ans-crash.jsonl")" = 0 ] &&
  pass "--eval-samples resumed after a crash: the answers past the checkpoint dropped, the cut line too, the other run's kept" ||
  fail "--eval-samples resumed after a crash: exit $status, steps $got $(head -c 300 "$tmp/err")"
# a checkpoint saved by a stop during step 2's evaluation (pending, its length where that
# evaluation began, as such a stop writes it): its answers of step 2 are dropped too
rm -r "$tmp/ans-ck/step-00000002" "$tmp/ans-ck/step-00000004"
cp -r "$tmp/ans-step2" "$tmp/ans-ck/step-00000002"
before=$(head -n 18 "$tmp/ans-crash.jsonl" | wc -c)
sed -i "s/\"eval_samples_bytes\": [0-9]*/\"eval_samples_bytes\": $before, \"eval_pending\": true/" \
  "$tmp/ans-ck/step-00000002/state.json"
"$pesc" train --headless --resume "$tmp/ans-ck" --steps 4 >/dev/null 2>"$tmp/err"
status=$?
got=$(samples_steps "$tmp/ans-crash.jsonl")
[ $status -eq 0 ] && [ "$got" = "2:6 4:6 1:6 2:6 3:6 4:6 " ] &&
  pass "--eval-samples resumed from a pending evaluation: its answers of that step given once" ||
  fail "--eval-samples resumed from a pending evaluation: exit $status, steps $got $(head -c 300 "$tmp/err")"

# ---- a log that cannot grow (a full disk; here the file size limit) ---------------------------
# the sink stops and the run goes on; the log ends on its last whole line (a line cut short
# was left at its end) and reads as a log to the end
(
  trap '' XFSZ
  ulimit -f 16
  # shellcheck disable=SC2086
  exec "$pesc" train --headless $common --steps 60 --log "$tmp/full.jsonl"
) >/dev/null 2>"$tmp/err"
status=$?
size=$(wc -c <"$tmp/full.jsonl")
if [ "$status" -ne 0 ] || ! grep -q "sink jsonl: .*full.jsonl: File too large; the sink is disabled and the run goes on" "$tmp/err"; then
  fail "a log past the file size limit: exit $status: $(head -c 300 "$tmp/err")"
elif [ "$size" -ge 16384 ] || [ "$(tail -c 1 "$tmp/full.jsonl" | od -An -c | tr -d ' ')" != '\n' ]; then
  fail "a log past the file size limit ends mid-line ($size bytes): $(tail -c 80 "$tmp/full.jsonl")"
elif "$pesc" inspect "$tmp/full.jsonl" 2>&1 | grep -q "not JSON"; then
  fail "a log past the file size limit has a line that is not JSON: $("$pesc" inspect "$tmp/full.jsonl" 2>&1 | head -c 300)"
else
  pass "a log past the file size limit stops on a whole line, and the run goes on"
fi

echo "$failures failure(s)"
[ "$failures" -eq 0 ]
