#!/bin/sh
# tui-fetch.sh — `pesc tui --data URL` downloads inside the workbench: under tmux, against
# tests/httpd on 127.0.0.1 serving the file slowly, the Downloads panel shows the transfer
# with its progress while the status line says it is downloading; then training starts on the
# downloaded file. A stop during the download keeps the partial file and the next start
# resumes it; a 404 is a failed run that names the URL, and q then exits 1 with one line.
# Skips (77) without tmux.
set -u
top_srcdir=${top_srcdir:-.}
top_builddir=${top_builddir:-.}
pesc="$top_builddir/pesc"
command -v tmux >/dev/null 2>&1 || { echo "SKIP: tmux is not installed (tools/install-deps)"; exit 77; }
[ -x "$top_builddir/tests/httpd" ] || { echo "tui-fetch.sh: tests/httpd is not built" >&2; exit 99; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/pesc-tui-fetch.XXXXXX") || exit 99
sock=
server_pid=
cleanup() {
  [ -n "$sock" ] && tmux -L "$sock" kill-server 2>/dev/null
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 99' INT TERM
failures=0
win=tui
. "$top_srcdir/tests/lib.sh"
export LANG=C.UTF-8 LC_ALL=C.UTF-8

mkdir -p "$tmp/served/files"
"$pesc" demo-data -o "$tmp/served/files/tasks.jsonl" --records 400 >/dev/null 2>&1 \
  || { echo "tui-fetch.sh: pesc demo-data failed" >&2; exit 99; }
size=$(wc -c <"$tmp/served/files/tasks.jsonl" | tr -d ' ')
rate=$((size / 6))   # about six seconds for the whole file: long enough to watch
start_httpd "$tmp/served" --lifetime 240
cache_file() { find "$XDG_CACHE_HOME/pesc" -name "$1" 2>/dev/null | head -n 1; }
run="--steps 100000 --seed 1 --save $tmp/ck"

# ---- a stop while downloading keeps the part -----------------------------------------------------
tui_start 100 30 "$pesc" tui --data "'$base/f/tasks.jsonl?rate=$rate'" $run
check "Downloads" "the Downloads panel opens" 20
check "tasks\\.jsonl .*[0-9]+%" "the transfer is shown with its progress"
check "STARTING .*downloading" "the status line says it is downloading"
# nothing to save yet: the question says the partial file stays
quit_confirmed "stopping during the download exits 0" 30 \
  "Stop the run before it begins\\? \\(a download keeps its partial file"
part=$(cache_file "tasks.jsonl*.part")
[ -n "$part" ] && [ -s "$part" ] && [ -z "$(cache_file tasks.jsonl)" ] \
  && pass "the partial download is kept ($(wc -c <"$part" | tr -d ' ') of $size bytes)" \
  || fail "no partial file kept in the cache: $(find "$XDG_CACHE_HOME" 2>&1)"

# ---- the next start resumes it and trains on the file --------------------------------------------
tui_start 100 30 "$pesc" tui --data "'$base/f/tasks.jsonl?rate=$rate'" $run
check "tasks\\.jsonl" "the resumed transfer is shown" 20
check "RUNNING" "training starts after the download" 90
check "step ([2-9]|[1-9][0-9])" "steps are taken on the downloaded data" 90
cmp -s "$(cache_file tasks.jsonl)" "$tmp/served/files/tasks.jsonl" && pass "the cached file is complete and right" \
  || fail "the cached file differs from the served one"
grep " target=/f/tasks.jsonl?rate=$rate " "$log" | tail -n 1 | grep -q "range=bytes=[1-9]" \
  && pass "the second start asked only for the rest" \
  || fail "no resume: $(grep " target=/f/tasks.jsonl" "$log" | tail -n 1)"
quit_confirmed "q saves, stops and exits 0" 60

# ---- a missing file is a failed run that names the URL -------------------------------------------
tui_start 100 30 "$pesc" tui --data "$base/f/nothing.jsonl" $run
check "FAILED" "a 404 fails the run" 20
check "nothing\\.jsonl" "the failure names the file"
# the reason is on the status line, after the badge (it was only on stderr, after quitting)
check "FAILED +.*nothing\\.jsonl.*404" "the status line says why the run failed"
check "the run failed before it began" "the console does not invite prompts to a run that never began"
keys q
status=$(wait_status "$tmp/status" 10)
if [ "$status" = 1 ] && grep -q "$base/f/nothing.jsonl" "$tmp/stderr" && \
   [ "$(wc -l <"$tmp/stderr")" -eq 1 ]; then
  pass "q leaves with 1 and one line naming the URL"
else
  fail "404: status '$status', stderr: $(cat "$tmp/stderr")"
fi

echo "tui-fetch.sh: $failures failure(s)"
[ "$failures" -eq 0 ]
