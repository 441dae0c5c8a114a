# lib.sh — what the shell tests share; sourced after they set $tmp (a scratch directory) and
# failures=0.

fail() { echo "FAIL $*"; failures=$((failures + 1)); }
pass() { echo "ok   $*"; }

# expect STATUS PATTERN DESCRIPTION -- COMMAND...: exit status and a pattern in stdout+stderr;
# a failure (status 1 or 2) must say so in exactly one line on stderr.
expect() {
  want=$1; pattern=$2; what=$3; shift 4
  "$@" >"$tmp/out" 2>"$tmp/err"
  got=$?
  if [ "$got" -ne "$want" ]; then
    fail "$what: exit $got, wanted $want: $(head -c 300 "$tmp/err")"
  elif ! cat "$tmp/out" "$tmp/err" | grep -q -- "$pattern"; then
    fail "$what: output lacks '$pattern': $(cat "$tmp/out" "$tmp/err" | head -c 400)"
  elif [ "$want" -ne 0 ] && [ "$(wc -l <"$tmp/err")" -ne 1 ]; then
    fail "$what: error is not one line: $(cat "$tmp/err")"
  else
    pass "$what"
  fi
}

# set_tensor FILE NAME VALUE: every value of the float32 tensor NAME of the safetensors FILE
# set to VALUE, in place (a model whose numbers overflow, made from a sound one)
set_tensor() {
  /usr/bin/python3 - "$@" <<'PY'
import json, struct, sys
path, name, value = sys.argv[1], sys.argv[2], float(sys.argv[3])
with open(path, "r+b") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    t = json.loads(f.read(n))[name]
    assert t["dtype"] == "F32", t["dtype"]
    a, b = t["data_offsets"]
    f.seek(8 + n + a)
    f.write(struct.pack("<f", value) * ((b - a) // 4))
PY
}

# strict_json FILE: whether FILE is one JSON document as the standard has it (no NaN, no
# Infinity, which Python's reader would otherwise take)
strict_json() {
  /usr/bin/python3 -c 'import json, sys
def refuse(c): raise ValueError(c)
json.load(open(sys.argv[1]), parse_constant=refuse)' "$1" 2>/dev/null
}

# on_tty COMMAND...: runs it with a terminal (script(1), a pseudo-terminal) on standard input
# and output and its stderr still ours, for a command that wants a terminal before anything
# else (pesc tui). Stopped after 60 s, so a workbench that did start cannot hang the test.
# TERM is a terminal's that the workbench can draw on (CI has none, or dumb), unless the
# command sets its own with env.
on_tty() {
  cmdline="TERM=xterm-256color; export TERM;"
  for a in "$@"; do cmdline="$cmdline '$(printf %s "$a" | sed "s/'/'\\\\''/g")'"; done
  timeout 60 script -qec "$cmdline 2>&3" /dev/null 3>&2 </dev/null
}

# tty_lines FILE: what a command wrote on a terminal (script(1)'s typescript) as lines: each
# carriage return a line break, and the erase-line code that begins a rewritten line
# (pesc_show_phase's) and the empty lines left out.
tty_lines() { tr '\r' '\n' <"$1" | sed 's/^.\[K//' | grep -v '^$'; }

# close A B TOL: |A - B| <= TOL * |B|
close() { awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN { d = a - b; if (d < 0) d = -d; m = b < 0 ? -b : b; exit !(d <= t * m) }'; }

# st_edit FILE EDIT...: rewrites a .safetensors file with each EDIT made, as a damaged or
# hand-edited file would have it while still being a well-formed file: KEY=VALUE sets a
# __metadata__ string, NAME[I]=X float32 element I of tensor NAME (nan, inf, -1, ...). The
# header is padded again as pesc pads it, so only the edited values differ.
st_edit() {
  /usr/bin/python3 - "$@" <<'PY'
import json, struct, sys
path = sys.argv[1]
data = open(path, 'rb').read()
n = struct.unpack('<Q', data[:8])[0]
header = json.loads(data[8:8 + n])
body = bytearray(data[8 + n:])
for edit in sys.argv[2:]:
    key, value = edit.split('=', 1)
    if key.endswith(']'):
        name, index = key[:-1].split('[')
        at = header[name]['data_offsets'][0] + 4 * int(index)
        body[at:at + 4] = struct.pack('<f', float(value))
    else:
        header.setdefault('__metadata__', {})[key] = value
text = json.dumps(header, separators=(',', ':')).encode()
text += b' ' * (-len(text) % 8)
open(path, 'wb').write(struct.pack('<Q', len(text)) + text + bytes(body))
PY
}

# ---- the workbench under tmux (tui.sh, tui-fetch.sh, view.sh) ----------------------------------
# $sock names a private tmux server, $win the session the workbench runs in.
screen() { tmux -L "$sock" capture-pane -p -t "$win" 2>/dev/null; }
wait_for() {   # wait_for PATTERN [SECONDS]: until the screen shows the pattern (grep -E)
  i=0
  while [ "$i" -lt $((${2:-10} * 10)) ]; do
    screen | grep -Eq -- "$1" && return 0
    sleep 0.1
    i=$((i + 1))
  done
  return 1
}
check() {   # check PATTERN DESCRIPTION [SECONDS]
  if wait_for "$1" "${3:-10}"; then pass "$2"; else fail "$2: no '$1' on screen:"; screen | sed 's/^/    | /'; fi
}
keys() { tmux -L "$sock" send-keys -t "$win" "$@"; }
# paste_text TEXT: TEXT pasted as a terminal pastes, its line breaks as CR; wrapped in the
# bracketed-paste markers while the program in the pane has that mode on
paste_text() { tmux -L "$sock" set-buffer -b pasted "$1" && tmux -L "$sock" paste-buffer -p -d -b pasted -t "$win"; }
# tui_start COLS ROWS COMMAND...: COMMAND in a fresh detached tmux server of that size (a new
# socket each time); its stderr goes to $tmp/stderr, its exit status to $tmp/status.
starts=0
tui_start() {
  [ -n "${sock:-}" ] && tmux -L "$sock" kill-server 2>/dev/null
  starts=$((starts + 1))
  sock="pesc-$win-$$-$starts"
  rm -f "$tmp/status"
  cols=$1 rows=$2
  shift 2
  tmux -L "$sock" -f /dev/null new-session -d -s "$win" -x "$cols" -y "$rows" \
    "$* 2>$tmp/stderr; echo \$? >$tmp/status; sleep 60"
}
# wait_status FILE [SECONDS]: until FILE (where the tmux command writes its exit status) is there
wait_status() {
  i=0
  while [ ! -s "$1" ] && [ "$i" -lt $((${2:-30} * 10)) ]; do sleep 0.1; i=$((i + 1)); done
  cat "$1" 2>/dev/null
}

# quit_confirmed DESCRIPTION [SECONDS [QUESTION]]: q, its question on screen (a run with
# --save: whether to save and stop), y; then the exit status must be 0
quit_confirmed() {
  keys q
  check "${3:-Save a checkpoint and stop the run}" "q asks first"
  keys y
  [ "$(wait_status "$tmp/status" "${2:-30}")" = 0 ] && pass "$1" \
    || fail "$1: status '$(cat "$tmp/status" 2>/dev/null)': $(cat "$tmp/stderr")"
}

# ---- the test HTTP server (fetch.sh, tui-fetch.sh) ---------------------------------------------
# start_httpd ROOT [OPTIONS...]: tests/httpd on two ephemeral ports of 127.0.0.1, logging to
# $tmp/http.log; sets server_pid, port_a, port_b and base (port A's URL). The caller's cleanup
# kills $server_pid. Nothing from the caller's environment may send requests elsewhere.
start_httpd() {
  root=$1; shift
  log="$tmp/http.log"
  "$top_builddir/tests/httpd" --root "$root" --ports "$tmp/ports" --log "$log" "$@" &
  server_pid=$!
  i=0
  while [ ! -s "$tmp/ports" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
  [ -s "$tmp/ports" ] || { echo "the test server did not start" >&2; exit 99; }
  read -r port_a port_b <"$tmp/ports"
  base="http://127.0.0.1:$port_a"
  unset HF_TOKEN HF_ENDPOINT http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY
  no_proxy='*'; NO_PROXY='*'
  XDG_CACHE_HOME="$tmp/cache"
  export no_proxy NO_PROXY XDG_CACHE_HOME
}

# profile_flops TOKENS < JSON: of a `pesc bench --profile --json` step of TOKENS tokens, prints
# the FLOPs a token its products' rows add up to and the MFU's flops_per_token; true when they
# agree (two accountings: one from the ops' arguments, one from the model's shape).
profile_flops() {
  json=$(cat)
  want=$(printf '%s' "$json" | grep -o '"flops_per_token": [0-9]*' | cut -d' ' -f2)
  got=$(printf '%s' "$json" | grep -o '"flops_per_step": [0-9.e+]*' |
        awk -v n="$1" '{ s += $2 } END { printf "%.17g\n", s / n }')
  echo "${got:-none} ${want:-none}"
  [ -n "$want" ] && [ -n "$got" ] && [ "$want" -gt 0 ] && close "$got" "$want" 1e-6
}
