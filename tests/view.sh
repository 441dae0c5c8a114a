#!/bin/sh
# view.sh — `pesc view` on synthetic run logs under tmux, read back with capture-pane: the
# panels are there, the views and keys work, a long history stays evenly spaced also with
# held-out losses at every step, the log is followed as it grows, --attach steers
# the run (pause, LR, prompt, a pasted prompt of two lines), a logged answer is shown, resizing to 40x12 and back keeps it
# running, more layers than lines scroll and the frames say which are shown, q leaves with 0
# and bracketed paste off, as Ctrl-Z does until fg;
# malformed lines are counted on the status line, after the note of a log gone quiet; a run
# resumed after a crash shows each step once; a run killed under an attached view is shown
# gone within seconds (paused or running, asked or not); a failed run's reason reaches
# stderr under "pesc view:" with the log's control characters shown as escapes; a long log is
# said to be read (READING, the share read) until it is, with no rate or ETA; further logs
# are runs compared on the loss panel, each named with its latest smoothed loss, followed as
# they grow, and a compared log that is missing or no run log is an error at start.
# Needs no terminal of its own: tmux runs detached on a private socket, killed at the end.
set -u
top_srcdir=${top_srcdir:-.}
top_builddir=${top_builddir:-.}
pesc="$top_builddir/pesc"
fake="$top_builddir/tests/ui_fake_run"
command -v tmux >/dev/null 2>&1 || { echo "SKIP: tmux is not installed (tools/install-deps)"; exit 77; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/pesc-view.XXXXXX") || exit 99
sock=
fake_pid=""
killed_pids=""
cleanup() {
  tmux -L "$sock" kill-server 2>/dev/null
  [ -n "$fake_pid" ] && kill "$fake_pid" 2>/dev/null
  for p in $killed_pids; do kill -9 "$p" 2>/dev/null; done
  rm -rf "$tmp"
}
trap cleanup EXIT
failures=0
win=view
. "$top_srcdir/tests/lib.sh"

export LANG=C.UTF-8 LC_ALL=C.UTF-8
step_now() { screen | sed -n 's/.*step \([0-9][0-9]*\)\/.*/\1/p' | head -n 1; }

# ---- usage errors, without a terminal ---------------------------------------------------------
"$pesc" view >/dev/null 2>"$tmp/err"; st=$?
[ "$st" -eq 2 ] && grep -q "pesc view: which run log" "$tmp/err" && pass "view without a log: usage error" \
  || fail "view without a log: exit $st: $(cat "$tmp/err")"
"$pesc" view "$tmp/missing.jsonl" >/dev/null 2>"$tmp/err"; st=$?
[ "$st" -eq 1 ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] && grep -q "missing.jsonl" "$tmp/err" \
  && pass "missing log: one line, exit 1" || fail "missing log: exit $st: $(cat "$tmp/err")"
"$pesc" view --help | grep -q "usage: pesc view" && pass "view --help" || fail "view --help"
: >"$tmp/empty.jsonl"
"$pesc" view "$tmp/empty.jsonl" </dev/null >/dev/null 2>"$tmp/err"; st=$?
[ "$st" -eq 1 ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] && grep -q "^pesc view: the workbench needs a terminal" "$tmp/err" \
  && pass "no terminal: one line, named 'pesc view:', exit 1" || fail "no terminal: exit $st: $(cat "$tmp/err")"

# a dataset is no run log: said at once (it once waited for a first step forever)
printf '{"text": "a record"}\n{"text": "another"}\n' >"$tmp/dataset.jsonl"
"$pesc" view "$tmp/dataset.jsonl" </dev/null >/dev/null 2>"$tmp/err"; st=$?
[ "$st" -eq 1 ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] && grep -q "dataset.jsonl: not a run log" "$tmp/err" \
  && pass "a dataset as the log: not a run log, exit 1" || fail "a dataset as the log: exit $st: $(cat "$tmp/err")"

# a FIFO's open once waited for a writer, before the terminal; a device is no log either
mkfifo "$tmp/fifo.jsonl"
for f in "$tmp/fifo.jsonl" /dev/zero; do
  timeout 10 "$pesc" view "$f" </dev/null >/dev/null 2>"$tmp/err"; st=$?
  [ "$st" -eq 1 ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] && grep -q "not a regular file" "$tmp/err" \
    && pass "view $f: not a regular file, exit 1" || fail "view $f: exit $st: $(cat "$tmp/err")"
done

# ---- a finished run ---------------------------------------------------------------------------
"$fake" "$tmp/done.jsonl" --steps 60 || exit 99
# --attach to no run: what the path is and how to get one (once "Connection refused" for a
# regular file)
"$pesc" view "$tmp/done.jsonl" --attach "$tmp/dataset.jsonl" </dev/null >/dev/null 2>"$tmp/err"; st=$?
[ "$st" -eq 1 ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] && grep -q "dataset.jsonl: not a socket; give the path a running pesc train --control PATH made" "$tmp/err" \
  && pass "--attach to a regular file: not a socket" || fail "--attach to a file: exit $st: $(cat "$tmp/err")"
"$pesc" view "$tmp/done.jsonl" --attach "$tmp/nosock" </dev/null >/dev/null 2>"$tmp/err"; st=$?
[ "$st" -eq 1 ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] && grep -q "nosock: no run is listening there (no such file)" "$tmp/err" \
  && pass "--attach to nothing: no run is listening" || fail "--attach to nothing: exit $st: $(cat "$tmp/err")"
tui_start 100 30 "$pesc" view "$tmp/done.jsonl"
check "FINISHED" "finished run shows FINISHED"
check "step 60/60" "status line shows the last step"
check "eval 4.265" "the loss legend shows the last held-out loss (step 60)"
for panel in "Routing: all slots" "Loss" "Adapter norms" "Prompt"; do
  check "$panel" "panel '$panel' is shown"
done
check "L0 +3[0-9] .*▲1" "layer 0's hot expert is marked (the mean of the last 20 steps)"
check "Routing: all slots, mean of 20 steps" "the routing title says its numbers are a mean of 20 steps"
check "L3 .* 0 .*✕1" "layer 3's idle expert is marked"
check "finish +all steps done" "events are listed"
keys v
check "Routing: first choice, step 60" "v: first-choice view, of the latest step"
keys v v
check "source-a " "v: per-source view names the sources"
check "source-b-dialogue +[0-9]" "v: a source's name of 17 characters is shown whole"
check "v view  ↑↓ source  ←→ layer" "per source: the key bar says Up/Down moves the source"
keys q
# a source none of the step's tokens came from is said so, not drawn as every expert idle
"$fake" "$tmp/tokenless.jsonl" --steps 5 --tokenless-source 1 || exit 99
tui_start 100 30 "$pesc" view "$tmp/tokenless.jsonl"
check "FINISHED" "a run with a source of no tokens"
keys v v v
check "source-b-dialogue +no tokens at this step" "per source: a source without tokens says so"
screen | grep -q "✕8" && fail "a source without tokens drawn as 8 idle experts" ||
  pass "... and marks no idle experts"
keys q
tui_start 100 30 "$pesc" view "$tmp/done.jsonl"
check "FINISHED" "the finished run again"
keys v v v
keys v
check "Routing: layer history, layer 0" "v: one layer's history"
keys 2 z
check "whole run, z zoom" "2 z: loss over the whole run"
keys '?'
check "any key closes this help" "? shows the help"
# a view's help gives a view's keys: q and Ctrl-C leave it, the run goes on (it once said they
# stop the run), and without --attach there is nothing to steer
check "Ctrl-C +leave the view; the run goes on" "the help: Ctrl-C leaves the view, the run goes on"
check "pause, learning rate, save, prompt: pesc view --attach" "the help: steering needs --attach"
screen | grep -q "Space  *pause" && fail "a read-only view's help offers Space" ||
  pass "a read-only view's help leaves out the steering keys"
keys x
wait_for "any key closes" 1 && sleep 0.3
screen | grep -q "any key closes" && fail "help did not close" || pass "help closes"
keys Space
check "error: a read-only view: --attach SOCKET steers the run$" \
  "steering a read-only view says how to attach, over the status line's last segments"

tmux -L "$sock" resize-window -t view -x 40 -y 12
check "step 60/60" "resized to 40x12: still drawing"
screen | grep -q "Adapter norms" && fail "40x12 should fold the norms panel" || pass "40x12 folds panels away"
keys Tab
check "Adapter norms" "Tab at 40x12 moves to the next panel"
tmux -L "$sock" resize-window -t view -x 100 -y 30
check "Routing" "resized back to 100x30: routing again"
check "Prompt" "resized back to 100x30: console again"
keys q
[ "$(wait_status "$tmp/status" 5)" = 0 ] && pass "q leaves with status 0" \
  || fail "q: status '$(cat "$tmp/status" 2>/dev/null)' $(cat "$tmp/stderr")"

# ---- a run resumed after a crash: killed in step 25's record after its save at 20, resumed
# there; the steps it runs again replace those logged past the save (the start line's
# resumed_step), and the record cut short is one malformed line -----------------------------------
"$fake" "$tmp/crashed.jsonl" --steps 40 || exit 99
cut=$(grep -n '^{"step":24,' "$tmp/crashed.jsonl" | cut -d: -f1)
from=$(grep -n '^{"step":21,' "$tmp/crashed.jsonl" | cut -d: -f1)
{ head -n "$cut" "$tmp/crashed.jsonl"
  echo '{"step":25,"loss":'
  head -n 1 "$tmp/crashed.jsonl" | sed 's/}$/,"resumed_step":20}/'
  tail -n +"$from" "$tmp/crashed.jsonl"
} >"$tmp/resumed.jsonl"
tui_start 100 30 "$pesc" view "$tmp/resumed.jsonl"
check "layer 0, last 40 steps" "a 40-step run resumed at 20 after a crash at 24: 40 steps in the history, not 44"
check "1 malformed line skipped" "the record cut short by the crash is one malformed line, skipped"
keys q

# ---- --eval-generate's answers: the latest share right in the loss legend with a sparkline of
# the evaluations, on a second row when the first is full (at 100x30 it is) -----------------
"$fake" "$tmp/answers.jsonl" --steps 60 --answers 200 || exit 99
tui_start 100 30 "$pesc" view "$tmp/answers.jsonl"
check "smoothed 4.302 eval 4.265" "answers: the legend's first row as without them"
check "││ answers 0.750 ▁▄█ aux 0.01" \
  "answers: the latest share right (step 60) and its rise over 3 evaluations, on the second row"
keys q

# ---- a generate event's prompt and answer (a run without a screen, prompted through --control)
{ grep -v '"event":"finish"' "$tmp/done.jsonl"
  printf '%s\n' '{"event":"generate","step":60,"elapsed_s":9,"text":"5 tokens for: capital: Peru","prompt":"capital: Peru","answer":"Lima, on the Rimac"}'
} >"$tmp/answered.jsonl"
tui_start 100 30 "$pesc" view "$tmp/answered.jsonl"
check "capital: Peru" "the Prompt panel shows a generate event's prompt"
check "Lima, on the Rimac" "the Prompt panel shows a generate event's answer"

# ---- no colours: character shades --------------------------------------------------------------
tui_start 100 30 env NO_COLOR=1 "$pesc" view "$tmp/done.jsonl"
check "░|▒|▓|█" "NO_COLOR draws the heat scale in shades"
check "max 128  colours none" "NO_COLOR: the console says tokens get no colours (it said on)"
keys q

# ---- more layers than lines: the frames say which are shown, and follow the selected layer ----
"$fake" "$tmp/deep.jsonl" --steps 5 --layers 22 || exit 99
tui_start 80 24 "$pesc" view "$tmp/deep.jsonl"
check "L0-11 of 22 ─┘" "80x24, 22 layers: the routing frame says L0-11 of 22 are shown"
check "L0-3 of 22 ─┘" "80x24, 22 layers: the norms frame says L0-3 of 22 are shown"
keys 1; for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14; do keys Down; done
check "L3-14 of 22 ─┘" "Down to layer 14 scrolls the routing rows and says so"
check "L11-14 of 22 ─┘" "the norms rows follow the selected layer"
keys q

# ---- held-out losses at every step of a long run: the history stays evenly spaced -------------
# the recent loss window spans the steps it does for a run scored every 20 steps, not one point
# a step, and the legend shows the last held-out loss
"$fake" "$tmp/every20.jsonl" --steps 10000 || exit 99
"$fake" "$tmp/every1.jsonl" --steps 10000 --eval-every 1 || exit 99
# the window's first step once the screen holds still: FINISHED (on the first line) can be on
# the screen while the rest of that frame is still on its way to the terminal
loss_from() {
  was= now=$(screen | sed -n 's/.*││ *step \([0-9][0-9]*\) .*/\1/p' | head -n 1) i=0
  while [ "$now" != "$was" ] && [ "$i" -lt 30 ]; do
    sleep 0.2
    was=$now now=$(screen | sed -n 's/.*││ *step \([0-9][0-9]*\) .*/\1/p' | head -n 1) i=$((i + 1))
  done
  echo "$now"
}
tui_start 140 30 "$pesc" view "$tmp/every20.jsonl"
wait_for "FINISHED" 20
from20=$(loss_from)
tui_start 140 30 "$pesc" view "$tmp/every1.jsonl"
wait_for "FINISHED" 20
from1=$(loss_from)
if [ -n "$from20" ] && [ "$from1" = "$from20" ] && screen | grep -q "eval 2.515"; then
  pass "scored at every step of 10000: the recent window from step $from1, as when every 20th"
else
  fail "scored at every step: recent window from step '$from1', every 20th from '$from20':"
  screen | sed 's/^/    | /'
fi
keys q

# ---- a long log: read over several frames, said so, not replayed as if it ran ----------------
# 1500 steps of 24 layers of 16 experts, 48 MB: the view once showed it RUNNING at the steps as
# they were read, with their old rates, and took seconds more over it
"$fake" "$tmp/long-run.jsonl" --steps 1500 --layers 24 --experts 16 || exit 99
tui_start 100 30 "$pesc" view "$tmp/long-run.jsonl"
if wait_for "READING .*step [0-9]+/1500 .* read [0-9]+%" 10; then
  screen | head -n 1 | grep -q "tok/s\|ETA" && fail "a long log being read shows a rate or ETA: $(screen | head -n 1)" \
    || pass "a long log being read says so, with no rate or ETA"
else
  fail "a long log being read: no 'READING ... read N%' on screen:"; screen | sed 's/^/    | /'
fi
check "FINISHED +step 1500/1500" "... and is shown whole once read" 30
keys q
rm -f "$tmp/long-run.jsonl"

# ---- malformed lines: counted on the status line for the whole view, after a quiet log's note ---
{ head -n 3 "$tmp/done.jsonl"; echo 'not a record'; tail -n +4 "$tmp/done.jsonl"; } >"$tmp/bad.jsonl"
tui_start 100 30 "$pesc" view "$tmp/bad.jsonl"
check "FINISHED" "a log with a malformed line is shown to its end"
check "1 malformed line skipped" "the skipped line is counted on the status line once steps are shown"
keys q
# no finish event: a running log that has gone quiet; the last line is cut off
{ head -n 3 "$tmp/done.jsonl"; echo 'not a record'; tail -n +4 "$tmp/done.jsonl" | grep -v '"event":"finish"'
  echo '{"event":'; } >"$tmp/quiet.jsonl"
tui_start 130 30 env PESC_VIEW_STALL_S=1 "$pesc" view "$tmp/quiet.jsonl"
check "(RUNNING|QUIET) .*step 60/60" "a quiet log is shown"
check "no new lines for [0-9]+ s; 2 malformed lines skipped" "the quiet log's note comes first, the count after it"
# quiet past the stall time, the badge says so and the ETA is not promised (a killed run's
# view said RUNNING with an ETA for as long as it was left open)
check "QUIET .*step 60/60.*ETA --" "a quiet log: QUIET on the badge, no ETA"
keys q
# 80 columns: the note is read whole, over the row's last segments (it was cut, or not shown)
tui_start 80 24 env PESC_VIEW_STALL_S=1 "$pesc" view "$tmp/quiet.jsonl"
check "no new lines for [0-9]+ s; 2 malformed lines skipped *$" "a quiet log's note is read whole in 80 columns"
keys q
# a log a killed run left ten minutes ago is quiet since then, not since the view began
touch -d '10 minutes ago' "$tmp/quiet.jsonl"
tui_start 130 30 "$pesc" view "$tmp/quiet.jsonl"
check "no new lines for (59[0-9]|6[0-9][0-9]) s" "a log written long ago is quiet since it was written"
# a line that is no record is no sign of life: the log stays quiet since its last record
echo 'not a record' >>"$tmp/quiet.jsonl"
check "no new lines for (59[0-9]|6[0-9][0-9]) s; 3 malformed" "a junk line appended leaves the log quiet"
keys q
PESC_VIEW_STALL_S=0 "$pesc" view "$tmp/quiet.jsonl" </dev/null >/dev/null 2>"$tmp/err"; st=$?
[ "$st" -eq 1 ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] && grep -q "^pesc view: PESC_VIEW_STALL_S=0: " "$tmp/err" \
  && pass "PESC_VIEW_STALL_S=0 is refused in one line" || fail "PESC_VIEW_STALL_S=0: exit $st: $(cat "$tmp/err")"

# ---- runs compared: by step on the loss panel, named with their latest smoothed loss -----------
# done: 60 steps, smoothed 4.302; higher: 40 steps 1 above it; lower: 200 steps, scored every 7th;
# bad.jsonl has a malformed line after its first (not fatal); grows.jsonl is empty at first
"$fake" "$tmp/higher.jsonl" --steps 40 --loss-offset 1 || exit 99
"$fake" "$tmp/lower.jsonl" --steps 200 --loss-offset -0.5 --eval-every 7 || exit 99
"$pesc" view "$tmp/done.jsonl" "$tmp/higher.jsonl" "$tmp/other-missing.jsonl" </dev/null >/dev/null \
  2>"$tmp/err"; st=$?
[ "$st" -eq 1 ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] && grep -q "^pesc view: .*other-missing.jsonl" "$tmp/err" \
  && pass "a missing compared log: one line naming it, exit 1" \
  || fail "missing compared log: exit $st: $(cat "$tmp/err")"
echo 'not a record' >"$tmp/notalog.jsonl"
"$pesc" view "$tmp/done.jsonl" "$tmp/notalog.jsonl" </dev/null >/dev/null 2>"$tmp/err"; st=$?
[ "$st" -eq 1 ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] \
  && grep -q "^pesc view: .*notalog.jsonl: not a run log" "$tmp/err" \
  && pass "a compared file that is no run log: one line naming it, exit 1" \
  || fail "compared non-log: exit $st: $(cat "$tmp/err")"
h="$tmp/higher.jsonl"
"$pesc" view "$tmp/done.jsonl" "$h" "$h" "$h" "$h" "$h" </dev/null >/dev/null 2>"$tmp/err"; st=$?
[ "$st" -eq 2 ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] && grep -q "at most 4" "$tmp/err" \
  && pass "5 compared logs: usage error, exit 2" || fail "5 compared logs: exit $st: $(cat "$tmp/err")"
: >"$tmp/grows.jsonl"
tui_start 140 30 "$pesc" view "$tmp/done.jsonl" "$tmp/higher.jsonl" "$tmp/lower.jsonl" "$tmp/bad.jsonl" \
  "$tmp/grows.jsonl"
keys 2 f
check "higher.jsonl 6.231" "compared: the legend names a shorter run with its smoothed loss"
check "lower.jsonl 2.275" "compared: and a longer one, scored more often"
check "bad.jsonl 4.302" "compared: a log with a malformed line is drawn"
check "grows.jsonl --" "compared: an empty log waits for its first step"
check "smoothed 4.302 eval 4.265" "compared: the first run's legend is its own"
check "FINISHED +step 60/60" "compared: the status line is the first run's"
cat "$tmp/higher.jsonl" >>"$tmp/grows.jsonl"
check "grows.jsonl 6.231" "compared: a compared log is followed as it grows"
keys q

# ---- Ctrl-Z: the shell gets plain pastes while the view is stopped; after fg they are marked again
tmux -L "$sock" kill-server 2>/dev/null
sock="pesc-$win-$$-shell"
tmux -L "$sock" -f /dev/null new-session -d -s "$win" -x 100 -y 30 "env PS1='$ ' sh -i"
keys "$pesc view $tmp/done.jsonl" Enter
check "FINISHED" "the view runs under an interactive shell"
keys C-z
check "Stopped" "Ctrl-Z stops the view"
paste_text "at the shell"
check "at the shell" "a paste while the view is stopped reaches the shell"
screen | grep -q "200~" && fail "bracketed paste stays on while the view is stopped: $(screen | grep "200~")" \
  || pass "Ctrl-Z turns bracketed paste off"
keys C-u fg Enter
check "FINISHED" "fg brings the view back"
paste_text "$(printf 'one\ntwo')"
check "❯ one⏎two" "after fg a paste is marked again"
keys Escape q

# ---- a log replaced by a FIFO while viewed; a line of 64 MiB --------------------------------
# hwm FILE: the peak resident KiB of the view whose pid is in FILE
hwm() { awk '/^VmHWM/ { print $2 }' "/proc/$(cat "$1")/status" 2>/dev/null; }
cp "$tmp/done.jsonl" "$tmp/swap.jsonl"
tui_start 100 30 sh -c "'echo \$\$ >$tmp/pid; exec $pesc view $tmp/swap.jsonl'"
check "FINISHED" "a log to be replaced is shown"
base=$(hwm "$tmp/pid")
rm "$tmp/swap.jsonl" && mkfifo "$tmp/swap.jsonl"   # the view's reopen once blocked on it
sleep 0.5
keys q
[ "$(wait_status "$tmp/status" 5)" = 0 ] && pass "a log replaced by a FIFO: q still leaves" \
  || fail "log replaced by a FIFO: status '$(cat "$tmp/status" 2>/dev/null)' $(cat "$tmp/stderr")"
{ head -c 67108864 /dev/zero | tr '\0' x; echo; cat "$tmp/done.jsonl"; } >"$tmp/long.jsonl"
tui_start 100 30 sh -c "'echo \$\$ >$tmp/pid; exec $pesc view $tmp/long.jsonl'"
check "step 60/60" "the lines after a 64 MiB line are read" 20
long=$(hwm "$tmp/pid")
[ -n "$base" ] && [ -n "$long" ] && [ $((long - base)) -lt 49152 ] && pass "the long line is not held in memory" \
  || fail "a 64 MiB line grew the view from ${base:-?} to ${long:-?} KiB"
keys q
rm -f "$tmp/long.jsonl"

# ---- a failed run: its reason on stderr, the log's control characters made visible ----------
{
  printf '%s\n' '{"event":"begin","step":0,"elapsed_s":0,"text":"training"}'
  printf '%s\n' '{"event":"error","step":1,"elapsed_s":1,"text":"disk \u001b[31mred\u001b[0m\rback\u0007 bell \u009b2J c1\nline 2"}'
} >"$tmp/failed.jsonl"
tui_start 100 30 "$pesc" view "$tmp/failed.jsonl"
check "FAILED" "a failed run shows FAILED"
check 'disk \\x1b\[31mred\\x1b\[0m\\x0dback\\x07 bell \\u009b2J c1 +│$' \
  "the event's control characters are shown as escapes"
check '^│ {22}line 2 +│$' "an event's line break goes on under its text"
keys q
st=$(wait_status "$tmp/status" 5)
[ "$st" = 1 ] && [ "$(wc -l <"$tmp/stderr")" -eq 1 ] &&
  grep -q '^pesc view: the run failed: disk \\x1b\[31mred\\x1b\[0m\\x0dback\\x07 bell \\u009b2J c1\\x0aline 2$' "$tmp/stderr" &&
  ! tr -d '\n' <"$tmp/stderr" | LC_ALL=C grep -q '[[:cntrl:]]' && ! grep -q "$(printf '\302\233')" "$tmp/stderr" \
  && pass "q on a failed run: exit 1, one line naming 'pesc view:', no control characters" \
  || fail "failed run: status '$st', stderr: $(od -c "$tmp/stderr" | head -n 6)"

# ---- a growing log, steered through its control socket -----------------------------------------
"$fake" "$tmp/live.jsonl" --steps 2000 --interval-ms 40 --control "$tmp/control.sock" &
fake_pid=$!
i=0; while [ ! -S "$tmp/control.sock" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
# a read-only view of it names the socket that steers it, as its log says
tui_start 100 30 "$pesc" view "$tmp/live.jsonl"
check "RUNNING" "a read-only view of a run with a control socket"
keys Space
check "error: a read-only view: --attach $tmp/control.sock steers the run$" \
  "steering it says which socket steers the run"
keys q
tui_start 100 30 "$pesc" view "$tmp/live.jsonl" --attach "$tmp/control.sock"
check "RUNNING" "live log: RUNNING"
keys '?'
check "q  F10 +leave the view; the run goes on \\(asked first" "an attached view's help: q leaves it"
check "Space +pause / resume the run" "an attached view's help has the steering keys"
keys x
a=$(step_now); sleep 1; b=$(step_now)
[ -n "$a" ] && [ -n "$b" ] && [ "$b" -gt "$a" ] && pass "the log is followed ($a -> $b)" \
  || fail "the step counter did not move ($a -> $b)"
keys Space
check "PAUSED" "Space pauses the run"
sleep 0.3; a=$(step_now); sleep 0.8; b=$(step_now)
[ -n "$a" ] && [ "$a" = "$b" ] && pass "paused: the step counter stops at $a" || fail "paused but steps moved ($a -> $b)"
grep -q '"event":"pause"' "$tmp/live.jsonl" && pass "pause reached the run" || fail "no pause event in the log"
# an evaluation made while paused has no step record to carry it: its event does (the fake
# run's scores 0.7771; a step the schedule evaluates already has its own)
keys e
if [ $((a % 20)) -ne 0 ]; then
  check "eval 0\\.777" "e while paused: the evaluation shows in the legend at once"
fi
keys +
check "ok: lr 0.00025" "+ gets the run's reply"
check "lr 2.50e-04\\*" "+ shows the new LR while paused, marked as set by hand"
# a save while paused: its clock counts on though no line comes (it stood at 0 s)
keys s
check "saved 0s ago" "s while paused: saved just now"
check "saved [2-9]s ago" "... and the clock since it counts on while paused" 6
keys Space
check "RUNNING" "Space resumes"
at_new_lr() { grep -q '"lr":0.00025[,}]' "$tmp/live.jsonl"; }
i=0; while ! at_new_lr && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
at_new_lr && pass "the steps after run at the new LR" \
  || fail "no step record at the new LR in the log"
grep -q '"event":"lr"' "$tmp/live.jsonl" && pass "the LR change is in the log" || fail "no lr event in the log"
keys / "hello there" Enter
check "echo: hello there" "a prompt gets an answer"
# pasted text comes marked (bracketed paste, which the view turns on): a paste of two lines is
# one prompt, its line break kept (shown as ⏎) and sent with it by the Enter that follows
paste_text "$(printf 'first line\nsecond line')"
check "❯ first line⏎second line" "a pasted line break stays in the prompt, shown as ⏎"
keys Enter
check "echo: first line" "the pasted prompt gets an answer"
n=$(grep -c '"event":"generate"' "$tmp/live.jsonl")
[ "$n" -eq 2 ] && grep -q '"text":"echo: first line\\nsecond line"' "$tmp/live.jsonl" \
  && pass "a paste of two lines, then Enter: one prompt with both lines" \
  || fail "a paste of two lines: $n prompts: $(grep '"event":"generate"' "$tmp/live.jsonl")"
tmux -L "$sock" resize-window -t view -x 40 -y 12
sleep 0.5
tmux -L "$sock" resize-window -t view -x 100 -y 30
check "Adapter norms" "resize to 40x12 and back while following"
keys Escape
sleep 0.2
# leaving a paused run asks first (nobody may be left to resume it); r resumes it and leaves
keys Space
check "PAUSED" "paused again before leaving"
keys q
check "The run is paused, and stays paused once this view has left" "q on a paused run asks first"
resumes=$(grep -c '"event":"resume"' "$tmp/live.jsonl")
keys r
[ "$(wait_status "$tmp/status" 5)" = 0 ] && pass "r resumes the run and detaches with status 0" \
  || fail "q r: status '$(cat "$tmp/status" 2>/dev/null)'"
[ "$(grep -c '"event":"resume"' "$tmp/live.jsonl")" -gt "$resumes" ] \
  && pass "... and the run got the resume" || fail "q r: no resume event in the log"
# the terminal echoes a paste now: without its markers, once the view has turned the mode off
paste_text "pasted after the view"
check "pasted after the view" "a paste after the view reaches the terminal"
screen | grep -q "200~" && fail "the view left bracketed paste on: $(screen | grep "200~")" \
  || pass "the view turns bracketed paste off as it leaves"
kill -0 "$fake_pid" 2>/dev/null && pass "the run goes on after the view leaves" || fail "the run ended with the view"

# ---- a run killed under an attached view: shown gone (stopped), not paused or running forever --
# killed_run NAME [COLS ROWS]: a fake run steered through $tmp/NAME.sock, logging to
# $tmp/NAME.jsonl, viewed attached (100x30); its pid in $killed
killed_run() {
  "$fake" "$tmp/$1.jsonl" --steps 2000 --interval-ms 40 --control "$tmp/$1.sock" &
  killed=$!
  killed_pids="$killed_pids $killed"
  i=0; while [ ! -S "$tmp/$1.sock" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
  tui_start "${2:-100}" "${3:-30}" "$pesc" view "$tmp/$1.jsonl" --attach "$tmp/$1.sock"
  check "RUNNING" "$1: attached"
}
# paused, its log says nothing more: the view looks at the socket while it waits
killed_run paused-killed
keys Space
check "PAUSED" "paused-killed: paused"
kill -KILL "$killed"
wait "$killed" 2>/dev/null
check "STOPPED" "paused-killed: the view shows the run stopped, within seconds"
check "the run is gone: its socket is closed" \
  "a paused run killed: the view says it is gone, within seconds"
# nothing takes a prompt or a command there: the key bar offers none, only what still works
if screen | tail -n 1 | grep -q "Go" && ! screen | tail -n 1 | grep -q "Prompt\|Pause\|Save"; then
  pass "a run gone: the key bar leaves out / Prompt and the steering keys"
else
  fail "a run gone: the key bar reads '$(screen | tail -n 1)'"
fi
keys q
[ "$(wait_status "$tmp/status" 5)" = 0 ] && pass "q on it leaves at once, offering no resume" \
  || { fail "q on a paused run killed: status '$(cat "$tmp/status" 2>/dev/null)'"; screen | sed 's/^/    | /'; }
# running, not yet quiet: the first command refused says it
killed_run running-killed
kill -KILL "$killed"
wait "$killed" 2>/dev/null
keys Space
check "no run is listening there" "a running run killed: Space gets the refusal"
check "STOPPED" "... and the view shows the run stopped"
check "the run is gone: its socket is closed" "... and gone"
keys q
# running, nothing sent: the run's end of the view's connection closes with it, and the view
# says so unasked within a second or two (it once waited for the log to go quiet, 30 s); in 80
# columns too, where the note once did not fit
killed_run running-unasked 80 24
kill -KILL "$killed"
wait "$killed" 2>/dev/null
check "STOPPED" "a running run killed: shown stopped unasked, within 3 s" 3
check "the run is gone: its socket is closed" "... and said to be gone" 3
keys q

if [ "$failures" -ne 0 ]; then
  echo "$failures failures"
  exit 1
fi
exit 0
