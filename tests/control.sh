#!/bin/sh
# control.sh — the --control socket of a headless run as several clients use it: an attached
# view's open connection does not lock out other clients, a client past the limit is refused
# in one line (a view so refused gets in once there is room), arguments out of range are
# refused naming their range, as is a prompt the model cannot take (past its context, ids it
# has not), a second generate is refused while one runs, and the run stops cleanly while
# clients are still connected. A client's last line without its newline is answered; a line
# too long, or one with a NUL byte, is refused in a reply, and the lines after it are served.
# A generate a stop cuts short says so; an lr that ends a schedule says so. The view part runs
# under tmux when it is installed.
set -u
top_srcdir=${top_srcdir:-.}
top_builddir=${top_builddir:-.}
pesc="$top_builddir/pesc"
sockcmd="$top_builddir/tests/sockcmd"
base="$top_srcdir/tests/reference/data/llama-gqa-f32"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/pesc-control.XXXXXX") || exit 99
pids=""
sock=
trap '[ -n "$sock" ] && tmux -L "$sock" kill-server 2>/dev/null; for p in $pids; do kill -9 "$p" 2>/dev/null; done; rm -rf "$tmp"' EXIT
failures=0
win=control
. "$top_srcdir/tests/lib.sh"

# 64 records of 20 random ids below the model's vocabulary of 64
awk 'BEGIN { srand(7); for (r = 0; r < 64; r++) { printf "{\"input_ids\": ["; for (t = 0; t < 20; t++) printf "%s%d", t ? ", " : "", int(rand() * 64); print "]}" } }' >"$tmp/data.jsonl"
csock="$tmp/control.sock"
# shellcheck disable=SC2086
"$pesc" train --headless --model "$base" --data "$tmp/data.jsonl" --seq 24 --batch 4 --experts 4 \
  --adapter-dim 8 --backend cpu --steps 1000000 --log "$tmp/run.jsonl" --control "$csock" \
  >/dev/null 2>"$tmp/run.err" &
run=$!
pids="$pids $run"
for _ in $(seq 300); do [ -S "$csock" ] && break; sleep 0.1; done
[ -S "$csock" ] || { echo "the run did not open its control socket: $(cat "$tmp/run.err")"; exit 99; }
export LANG=C.UTF-8 LC_ALL=C.UTF-8

# the log names the socket (absolute), for a view of it to say what steers the run
head -n 1 "$tmp/run.jsonl" | grep -qF "\"control\":\"$csock\"" \
  && pass "the log's start line names the control socket" || fail "start line: $(head -n 1 "$tmp/run.jsonl")"
mkdir "$tmp/rel"
abs_pesc=$(cd "$(dirname "$pesc")" && pwd)/pesc abs_base=$(cd "$base" && pwd)
(cd "$tmp/rel" && "$abs_pesc" train --headless --model "$abs_base" --data "$tmp/data.jsonl" \
  --seq 24 --batch 4 --steps 1 --backend cpu --log rel.jsonl --control rel.sock >/dev/null 2>&1)
head -n 1 "$tmp/rel/rel.jsonl" | grep -qF "\"control\":\"$(cd "$tmp/rel" && pwd -P)/rel.sock\"" \
  && pass "a relative --control is named from the root" || fail "start line: $(head -n 1 "$tmp/rel/rel.jsonl")"

# lines: wait until FILE has N lines (a held client has its replies), at most 30 s
lines() {
  for _ in $(seq 300); do [ "$(wc -l <"$1")" -ge "$2" ] && return 0; sleep 0.1; done
  return 1
}

# one client stays connected, as `pesc view --attach` does; another still gets its replies
"$sockcmd" --hold 1 "$csock" resume >"$tmp/held1" &
held1=$!
pids="$pids $held1"
lines "$tmp/held1" 1
reply=$(timeout 30 "$sockcmd" "$csock" "lr 0.004")
[ "$reply" = "ok: lr 0.004" ] && [ "$(cat "$tmp/held1")" = "ok: resume" ] \
  && pass "a command is answered while another client stays connected" \
  || fail "with a client connected, 'lr 0.004' got '$reply' (the held one '$(cat "$tmp/held1")')"

# sixteen at once are served; the seventeenth is refused in one line, not left hanging
"$sockcmd" --hold 15 "$csock" resume >"$tmp/held15" &
held15=$!
pids="$pids $held15"
lines "$tmp/held15" 15
served=$(grep -c '^ok: resume$' "$tmp/held15")
reply=$(timeout 30 "$sockcmd" "$csock" pause 2>&1)
[ "$served" = 15 ] && [ "$reply" = "error: too many clients on this control socket (16); close one and try again" ] \
  && pass "16 clients served at once, the 17th refused: $reply" \
  || fail "16 clients: $served of 15 more served; the 17th got '$reply'"

# a view attached past the limit hears why, and gets in once a slot is free
if command -v tmux >/dev/null 2>&1; then
  tui_start 100 30 "$pesc" view "$tmp/run.jsonl" --attach "$csock"
  check "RUNNING" "a 17th client: the view starts, following the log"
  keys Space
  check "too many clients" "the view's command is refused, saying why"
fi
kill "$held15"
wait "$held15" 2>/dev/null
# the trainer frees the 15 slots as it reads their ends, which may come after the view's next
# key: once a command gets through, so does the view's
for i in $(seq 100); do
  [ "$(timeout 5 "$sockcmd" "$csock" resume 2>&1)" = "ok: resume" ] && break
  sleep 0.1
done
if command -v tmux >/dev/null 2>&1; then
  keys Space
  check "ok: pause" "once clients left, the view's next command gets through"
  check "PAUSED" "the pause shows in the log"
  keys Space
  check "ok: resume" "and the one after it"
  check "RUNNING" "the resume shows in the log"   # q on a paused run would ask first
  keys q
  [ "$(wait_status "$tmp/status" 10)" = 0 ] && pass "q leaves the view with status 0" \
    || fail "q: status '$(cat "$tmp/status" 2>/dev/null)': $(cat "$tmp/stderr")"
else
  echo "SKIP the view past the limit: tmux is not installed"
fi

# the slots of clients that left are free again
reply=$(timeout 30 "$sockcmd" "$csock" "aux 0.02")
[ "$reply" = "ok: aux 0.02" ] && pass "clients that left make room for new ones" \
  || fail "after 15 clients left, 'aux 0.02' got '$reply'"
# the steps after it log the coefficient they ran with (aux_loss carries it; it was said only
# in the aux event)
i=0; while ! grep -q '"aux_coef":0.02[,}]' "$tmp/run.jsonl" && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
grep -q '"aux_coef":0.02[,}]' "$tmp/run.jsonl" && pass "the step records log the new aux coefficient" ||
  fail "no step record with aux_coef 0.02: $(tail -n 1 "$tmp/run.jsonl" | grep -o '"aux_coef":[^,]*')"

# a client that closes its end after its commands (echo ... | socat, as pesc-train(1) shows)
# gets every reply, then the end of the connection
reply=$(timeout 30 "$sockcmd" --half-close "$csock" "aux 0.02" "lr *1")
[ "$reply" = "ok: aux 0.02
ok: lr *1" ] && pass "commands then a half-close: both replies, then the socket closes" \
  || fail "half-closed client got '$reply'"
# raw: what `printf BYTES | socat - UNIX-CONNECT:SOCKET` gets back (the bytes as printf has
# them, then the client's end closed); the connection must end in a close, not a reset
raw() { printf "$1" | timeout 30 "$sockcmd" --stdin "$csock" 2>&1; }
reply=$(raw 'aux 0.02\nlr *1')
[ "$reply" = "ok: aux 0.02
ok: lr *1" ] && pass "a last line without its newline is answered as the client closes its end" \
  || fail "'aux 0.02\\\\nlr *1', then a half-close, got '$reply'"
# a line past 1023 bytes is refused, the rest of it read and let go, the lines after it served
long=$(head -c 3000 /dev/zero | tr '\0' x)
reply=$(raw "$long\\naux 0.02\\n$long")
[ "$reply" = "error: command line too long
ok: aux 0.02
error: command line too long" ] && pass "lines of 3000 bytes are refused in a reply, not a reset" \
  || fail "3000-byte lines around 'aux 0.02' got '$reply'"
# 1023 bytes and the newline are a line (refused as too long once); 1024 are one too many
reply=$(raw "$(head -c 1023 /dev/zero | tr '\0' x)\n$(head -c 1024 /dev/zero | tr '\0' x)\n")
printf '%s\n' "$reply" | head -n 1 | grep -q "^error: unknown command 'xxx" &&
  [ "$(printf '%s\n' "$reply" | sed -n 2p)" = "error: command line too long" ] &&
  [ "$(printf '%s\n' "$reply" | wc -l)" = 2 ] &&
  pass "a line of 1023 bytes is a command, one of 1024 too long" \
  || fail "lines of 1023 and 1024 bytes got '$(printf '%s' "$reply" | cut -c1-60)'"
reply=$(raw 'resume\000\npause\000junk\n')
[ "$reply" = "error: a NUL byte in the command
error: a NUL byte in the command" ] && pass "a NUL byte in a command line is refused" \
  || fail "'resume\\\\000' and 'pause\\\\000junk' got '$reply'"

# out-of-range and malformed arguments are refused, naming the argument and its range
refused() {   # refused LINE PATTERN: the reply to LINE is an error matching PATTERN (grep -E)
  reply=$(timeout 30 "$sockcmd" "$csock" "$1")
  case "$reply" in
    "error: "*) echo "$reply" | grep -Eq -- "$2" && pass "'$(printf %.50s "$1")' refused: $reply" \
                  || fail "'$(printf %.50s "$1")': the reply '$reply' lacks '$2'" ;;
    *) fail "'$(printf %.50s "$1")' was not refused: '$reply'" ;;
  esac
}
refused "generate layer=99 ids:1,2" "layer=99 .*layers are 0 to 1"
refused "generate layer=2 ids:1,2" "layer=2 .*layers are 0 to 1"
refused "generate layer=-1 ids:1,2" "layer=-1 .*layers are 0 to 1"
refused "generate layer=0.5 ids:1,2" "layer=0.5 .*layers are 0 to 1"
refused "generate max=1.5 ids:1,2" "max=1.5 .*whole number of tokens, 1 to 4096"
refused "generate max=0 ids:1,2" "max=0 .*1 to 4096"
refused "generate max=5000 ids:1,2" "max=5000 .*1 to 4096"
refused "generate max=$(printf '0%.0s' $(seq 40))1 ids:1,2" "the value of max is 41 characters"
refused "generate max=12abc ids:1,2" "max=12abc is not a number"
refused "generate temp=-1 ids:1,2" "temp=-1 .*0 \(greedy\) to 10"
refused "generate top_p=0 ids:1,2" "top_p=0 .*above 0, at most 1"
refused "generate top_p=1e999 ids:1,2" "top_p=1e999 is not a number"
refused "generate heat=1 ids:1,2" "unknown setting 'heat'"
refused "generate ids:$(printf '1,%.0s' $(seq 300))1" "the prompt is 605 bytes; at most 511"
# a prompt the model cannot answer is refused in the reply, not in the log seconds after an "ok"
refused "generate ids:$(printf '1,%.0s' $(seq 127))1" \
  "the prompt is 128 tokens, and the model's context \(max_position_embeddings\) is 128: shorten it"
refused "generate ids:1,64" "prompt ids must be integers below 64"
refused "lr 11" "lr '11': .*0 to 10"
refused "lr -1" "lr '-1': .*0 to 10"
refused "lr 1e-4x" "lr '1e-4x'"
refused "lr *0" "lr '\*0': .*factor above 0"
# a factor is checked against the rate it makes (8 x 2 is past 10), paused so that no step
# takes the rate of 8: refused in the reply, or, when the run has not yet taken the rate it
# scales (sent together, or the reply raced the trainer), by the trainer in a note
past_ten() {   # past_ten REPLIES RATE: refused in a reply or in a note of the log
  grep -q "^error: lr: a learning rate of $2 is past the largest, 10" "$1" ||
    grep -q "\"event\":\"note\".*lr: a learning rate of $2 is past the largest, 10; the rate stays" \
      "$tmp/run.jsonl"
}
timeout 30 "$sockcmd" "$csock" pause "lr 8" >/dev/null
for _ in $(seq 300); do grep -q '"event":"lr".*learning rate 8 ' "$tmp/run.jsonl" && break; sleep 0.1; done
timeout 30 "$sockcmd" "$csock" "lr *2" >"$tmp/replies"
for _ in $(seq 50); do past_ten "$tmp/replies" 16 && break; sleep 0.1; done
past_ten "$tmp/replies" 16 && pass "lr 8, then *2: refused, past 10" \
  || fail "lr 8, *2: '$(cat "$tmp/replies")': $(grep '"event":"\(lr\|note\)"' "$tmp/run.jsonl" | tail -n 3)"
timeout 30 "$sockcmd" "$csock" "lr 0.004" >/dev/null
for _ in $(seq 300); do grep -q '"event":"lr".*learning rate 0.004 (was 8)' "$tmp/run.jsonl" && break; sleep 0.1; done
timeout 30 "$sockcmd" "$csock" "lr 5" "lr *10" "lr 0.004" resume >"$tmp/replies"
for _ in $(seq 300); do grep -q '"event":"lr".*learning rate 0.004 (was 5)' "$tmp/run.jsonl" && break; sleep 0.1; done
past_ten "$tmp/replies" "[0-9.e+]*" && pass "lr 5 and *10 sent together: *10 is refused, past 10" \
  || fail "lr 5, *10: '$(tr '\n' '|' <"$tmp/replies")': $(grep '"event":"\(lr\|note\)"' "$tmp/run.jsonl" | tail -n 4)"
# a rate set live takes the place of the schedule for good: said when a schedule or warmup was
# still to move it (here cosine in its warmup), not by the next lr nor for a constant rate
# (the replies above)
cos_sock="$tmp/cosine.sock"
"$pesc" train --headless --model "$base" --data "$tmp/data.jsonl" --seq 24 --batch 4 \
  --backend cpu --steps 100000 --schedule cosine --warmup 1000 --log "$tmp/cosine.jsonl" \
  --control "$cos_sock" >/dev/null 2>"$tmp/cosine.err" &
cos_run=$!
pids="$pids $cos_run"
for _ in $(seq 300); do [ -S "$cos_sock" ] && break; sleep 0.1; done
timeout 30 "$sockcmd" "$cos_sock" pause "lr 0.001" "lr *2" stop >"$tmp/replies"
ended="the rate is constant from now on: --schedule cosine and the rest of --warmup no longer apply"
for _ in $(seq 300); do kill -0 "$cos_run" 2>/dev/null || break; sleep 0.1; done
[ "$(sed -n 2,3p "$tmp/replies")" = "ok: lr 0.001; $ended
ok: lr *2" ] && grep -q "\"event\":\"lr\".*\"text\":\"learning rate 0.001 (was [0-9.e-]*); $ended\"" "$tmp/cosine.jsonl" &&
  grep -q '"event":"lr".*"text":"learning rate 0.002 (was 0.001)"' "$tmp/cosine.jsonl" \
  && pass "lr on a cosine schedule in its warmup says the rate is constant from then on, once" \
  || fail "lr on a cosine schedule: '$(tr '\n' '|' <"$tmp/replies")': $(grep '"event":"lr"' "$tmp/cosine.jsonl")"
refused "aux -0.5" "aux '-0.5': .*0 to 1000"
refused "aux 2000" "aux '2000': .*0 to 1000"
refused "pause now" "pause takes no argument"

# a reply quotes what the client sent, but never its control bytes: an escape sequence (here
# one that retitles an xterm) comes back as \xNN, a C1 control as \u00NN, UTF-8 as it is, and
# at most 15 bytes of an unknown word
esc=$(printf '\033')
commands="(pause, resume, lr, aux, save, eval, stop, generate)"
reply=$(timeout 30 "$sockcmd" "$csock" "$(printf 'x\033]0;owned\007\tq')")
[ "$reply" = "error: unknown command 'x\\x1b]0;owned\\x07\\x09q' $commands" ] \
  && pass "control bytes in an unknown command come back escaped: $reply" \
  || fail "an unknown command with control bytes got '$(printf %s "$reply" | cat -v)'"
reply=$(timeout 30 "$sockcmd" "$csock" "$(printf 'h\303\251\302\233x')")
want=$(printf 'h\303\251\\u009bx')
[ "$reply" = "error: unknown command '$want' $commands" ] \
  && pass "UTF-8 in a reply is kept, a C1 control escaped: $reply" \
  || fail "UTF-8 and C1 in an unknown command got '$(printf %s "$reply" | cat -v)'"
reply=$(timeout 30 "$sockcmd" "$csock" "$(printf "$esc%.0s" $(seq 200))")
want=$(printf '\\x1b%.0s' $(seq 15))
[ "$reply" = "error: unknown command '$want' $commands" ] \
  && pass "200 escape bytes: 15 quoted, escaped, in one line" \
  || fail "200 escape bytes got '$(printf %s "$reply" | cat -v)'"
reply=$(timeout 30 "$sockcmd" "$csock" "generate layer=1 max=3 temp=0.5 top_p=0.9 ids:1,2")
[ "$reply" = "ok: generating up to 3 tokens (the answer: the log's generate event)" ] \
  && pass "a generate within every range is taken" || fail "a generate within range got '$reply'"
for _ in $(seq 300); do grep -q '"event":"generate".*for: ids:1,2' "$tmp/run.jsonl" && break; sleep 0.1; done
# its answer (ids here: the run has no tokenizer) is in the log's event with its prompt, for a
# view of the log to show, and on the headless run's stderr
line=$(grep '"event":"generate".*for: ids:1,2' "$tmp/run.jsonl")
printf '%s\n' "$line" | grep -q '"prompt":"ids:1,2"' &&
  printf '%s\n' "$line" | grep -q '"answer":"\( [0-9]*\)\{0,3\}"' &&
  grep -q "^pesc train: step [0-9]*, [0-3] tokens for: ids:1,2:$" "$tmp/run.err" &&
  pass "a generate's prompt and answer are in its log event and on stderr" ||
  fail "a generate's answer: '$line' / $(head -c 300 "$tmp/run.err")"

# generates sent together: one runs, the others are told it is busy; every "ok" has its answer
g="generate max=4096 ids:3,4"
timeout 60 "$sockcmd" "$csock" "$g" "$g" "$g" "$g" "$g" >"$tmp/gen"
oks=$(grep -c '^ok: generating up to 4096 tokens' "$tmp/gen")
busy=$(grep -c '^error: busy: a generate is already running' "$tmp/gen")
answers=0 busy_events=0
for _ in $(seq 300); do
  answers=$(grep -c '"event":"generate".*tokens.* for: ids:3,4' "$tmp/run.jsonl")
  busy_events=$(grep -c '"event":"generate".*"text":"busy' "$tmp/run.jsonl")
  [ $((answers + busy_events)) -ge "$oks" ] && break
  sleep 0.1
done
[ "$oks" -ge 1 ] && [ $((oks + busy)) = 5 ] && [ "$answers" = "$oks" ] && [ "$busy_events" = 0 ] \
  && pass "5 generates at once: $oks taken and answered, $busy refused as busy" \
  || fail "5 generates at once: replies '$(tr '\n' '|' <"$tmp/gen")', $answers answers and $busy_events busy events in the log"

# stop with a client still connected: the run ends, the socket is removed; a generate sent
# with it is cut short, and its answer says so rather than pass for all the model had to say
reply=$(timeout 30 "$sockcmd" "$csock" "generate max=4096 ids:5,6" stop | tail -n 1)
status=
for _ in $(seq 300); do kill -0 "$run" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$run" 2>/dev/null; then
  fail "the run did not end within 30 s of 'stop' ('$reply') with a client connected"
else
  wait "$run"
  status=$?
  [ "$reply" = "ok: stop" ] && [ "$status" -eq 0 ] && [ ! -e "$csock" ] \
    && pass "stop with a client connected: the run ends (exit 0) and removes its socket" \
    || fail "stop with a client connected: reply '$reply', exit $status: $(cat "$tmp/run.err")"
fi
grep -q '"event":"generate".*"text":"[0-9]* tokens (cut short by the stop) for: ids:5,6"' "$tmp/run.jsonl" &&
  grep -q "^pesc train: step [0-9]*, [0-9]* tokens (cut short by the stop) for: ids:5,6:$" "$tmp/run.err" \
  && pass "a generate the stop cut short says so, in the log and on stderr" \
  || fail "a generate sent with stop: $(grep '"event":"generate".*ids:5,6' "$tmp/run.jsonl")"

if [ "$failures" -ne 0 ]; then
  echo "$failures failures"
  exit 1
fi
exit 0
