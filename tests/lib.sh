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

# close A B TOL: |A - B| <= TOL * |B|
close() { awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN { d = a - b; if (d < 0) d = -d; m = b < 0 ? -b : b; exit !(d <= t * m) }'; }
