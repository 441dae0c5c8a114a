#!/bin/sh
# fetch.sh — downloads, end to end, against tests/httpd on 127.0.0.1 (nothing leaves the
# machine): writes the server's files, starts it on two ephemeral ports, runs test_fetch
# (the engine) and then `pesc fetch` as a user runs it.
# PESC_TEST_VALGRIND=1 runs test_fetch under valgrind (slower; leaks fail the test).
set -u
top_builddir=${top_builddir:-.}
pesc="$top_builddir/pesc"
httpd="$top_builddir/tests/httpd"
test_fetch="$top_builddir/tests/test_fetch"
for prog in "$pesc" "$httpd" "$test_fetch"; do
  [ -x "$prog" ] || { echo "fetch.sh: $prog is not built (set top_builddir)" >&2; exit 99; }
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/pesc-fetch.XXXXXX") || exit 99
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 99' INT TERM
failures=0
. "${top_srcdir:-.}/tests/lib.sh"

# ---- the server's files -----------------------------------------------------------------------
root="$tmp/root"
files="$root/files"
mkdir -p "$files" "$root/hub/datasets/tester/chat/main" "$root/hub/datasets/tester/chat/v1"
printf 'hello pesc\n' >"$files/small.txt"
printf 'redirected\n' >"$files/redir.txt"
printf 'same origin\n' >"$files/self.txt"
head -c 1500000 /dev/urandom >"$files/big.bin"
head -c 8192 /dev/urandom >"$files/slow.bin"
head -c 600000 /dev/urandom >"$files/change.bin"
head -c 700000 /dev/urandom >"$files/change.bin.v2"
i=0
while [ $i -lt 200 ]; do
  printf '{"instruction": "say %d", "output": "%d"}\n' $i $i
  i=$((i + 1))
done >"$files/data.jsonl"
gzip -n -c "$files/data.jsonl" >"$root/hub/datasets/tester/chat/main/train.jsonl.gz"
cp "$files/data.jsonl" "$root/hub/datasets/tester/chat/v1/train.jsonl"

model() {   # model NAME FILE...: a model repository with small stand-in files
  dir="$root/hub/models/tester/$1/main"; shift
  mkdir -p "$dir"
  for f in "$@"; do head -c 3000 /dev/urandom >"$dir/$f"; done
}
model tiny config.json tokenizer.json model-00001-of-00002.safetensors \
  model-00002-of-00002.safetensors
cat >"$root/hub/models/tester/tiny/main/model.safetensors.index.json" <<'EOF'
{"metadata": {"total_size": 6000},
 "weight_map": {"a.weight": "model-00001-of-00002.safetensors",
                "b.weight": "model-00002-of-00002.safetensors",
                "c.weight": "model-00002-of-00002.safetensors"}}
EOF
touch "$root/hub/models/tester/tiny/.private"
model single config.json tokenizer_config.json model.safetensors
model badsha config.json model.safetensors
echo 1111111111111111111111111111111111111111111111111111111111111111 \
  >"$root/hub/models/tester/badsha/main/model.safetensors.linked-etag"
model noweights config.json

# ---- the server ---------------------------------------------------------------------------------
token="pesc-test-token-$$"
start_httpd "$root" --token "$token" --lifetime 150
PESC_HF_ENDPOINT="$base/hub"
PESC_FETCH_BACKOFF_MS=20
PESC_FETCH_STALL_S=1
PESC_FETCH_RETRIES=3
PESC_TEST_ROOT=$root PESC_TEST_LOG=$log PESC_TEST_TOKEN=$token
PESC_TEST_PORT_A=$port_a PESC_TEST_PORT_B=$port_b
export PESC_HF_ENDPOINT PESC_FETCH_BACKOFF_MS PESC_FETCH_STALL_S \
  PESC_FETCH_RETRIES PESC_TEST_ROOT PESC_TEST_LOG PESC_TEST_TOKEN \
  PESC_TEST_PORT_A PESC_TEST_PORT_B

# ---- the engine -----------------------------------------------------------------------------------
if [ "${PESC_TEST_VALGRIND:-0}" = 1 ] && command -v valgrind >/dev/null 2>&1; then
  valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite -q \
    "$test_fetch"
else
  "$test_fetch"
fi
rc=$?
[ $rc -eq 0 ] && pass "test_fetch" || fail "test_fetch (exit $rc)"

# ---- the command ----------------------------------------------------------------------------------
# requests COUNT TARGET: the server log holds COUNT requests for exactly TARGET
requests() { grep -c " target=$2 " "$log"; }

expect 0 "usage: pesc fetch" "fetch --help" -- "$pesc" fetch --help
expect 2 "no URL" "fetch without URL" -- "$pesc" fetch
expect 2 "not a URL" "fetch of a plain path" -- "$pesc" fetch data.jsonl
expect 2 "--jobs" "fetch --jobs 0" -- "$pesc" fetch --jobs 0 "$base/f/small.txt"
expect 2 "64 hex" "fetch --sha256 bad" -- "$pesc" fetch --sha256 abc "$base/f/small.txt"
expect 2 "OWNER/NAME" "fetch of a malformed hf URL" -- "$pesc" fetch hf://justone
# several URLs into a -o that is a file: one usage error before anything is fetched (it once
# failed each URL in turn), the file untouched
echo keep >"$tmp/afile.txt"
expect 2 "\-o $tmp/afile.txt: several URLs go into a directory, and that is a file" \
  "fetch of two URLs into a file is refused at once" -- \
  "$pesc" fetch "$base/f/small.txt" "$base/f/small.txt?b" -o "$tmp/afile.txt"
[ "$(cat "$tmp/afile.txt")" = keep ] || fail "two URLs into a file: the file was changed"
# a disk that takes nothing (here the file size limit 0): nothing is kept, and it is not said
# to be (the message once promised a partial download it had just deleted)
# (its messages through a pipe, which the limit does not stop)
{
  (
    trap '' XFSZ
    ulimit -f 0
    exec "$pesc" fetch -o "$tmp/nothing.bin" "$base/f/big.bin?k=nothing"
  ) 2>&1 >/dev/null
  echo "exit $?"
} | cat >"$tmp/err"
status=$(sed -n 's/^exit //p' "$tmp/err")
if [ "$status" = 1 ] && grep -q "nothing of it could be written; free space and run again" "$tmp/err" &&
   [ ! -e "$tmp/nothing.bin.part" ] && [ ! -e "$tmp/nothing.bin" ]; then
  pass "a download nothing of which could be written says so, and leaves nothing"
else
  fail "a download into no space: exit $status, $(ls "$tmp" | grep nothing): $(cat "$tmp/err")"
fi
expect 2 "whole model" "-o with a whole model" -- "$pesc" fetch -o "$tmp/x" hf://tester/single
expect 2 "whole model" "--force with a whole model" -- "$pesc" fetch --force hf://tester/single
expect 2 "--sha256 $base/f/small.txt: expected 64 hex digits (the hash is missing)" \
  "--sha256 without its hash names the URL it took" -- "$pesc" fetch --sha256 "$base/f/small.txt"
expect 2 "no URL given: -o took $base/f/small.txt as the file to write" \
  "-o without its path says it took the URL" -- "$pesc" fetch -o "$base/f/small.txt"
expect 2 "-o - writes one file to standard output" "-o - with two URLs" -- \
  "$pesc" fetch -o - "$base/f/small.txt" "$base/f/big.bin"

expect 0 "$XDG_CACHE_HOME/pesc/url/" "fetch prints the cached path" -- \
  "$pesc" fetch "$base/f/small.txt?k=cli"
if cmp -s "$(cat "$tmp/out")" "$files/small.txt"; then pass "cached file content"
else fail "cached file content"; fi

expect 0 "$tmp/one.txt" "fetch -o FILE" -- "$pesc" fetch -q -o "$tmp/one.txt" "$base/f/small.txt"
cmp -s "$tmp/one.txt" "$files/small.txt" && pass "-o FILE content" || fail "-o FILE content"
"$pesc" fetch -q -o - "$base/f/small.txt?k=stdout" >"$tmp/stdout.txt" &&
  cmp -s "$tmp/stdout.txt" "$files/small.txt" && [ ! -e ./- ] &&
  pass "-o - writes the content to standard output" ||
  fail "-o -: $(head -c 200 "$tmp/stdout.txt")"

# Stopped (a slow link, SIGTERM; a script's background job ignores SIGINT): one line says the download is kept, and the same
# command resumes it
"$pesc" fetch -q -o "$tmp/slow.bin" "$base/f/big.bin?rate=20000&k=slow" >/dev/null \
  2>"$tmp/int.err" &
slow=$!
for _ in 1 2 3 4 5 6 7 8 9 10; do [ -s "$tmp/slow.bin.part" ] && break; sleep 0.2; done
kill -TERM $slow
wait $slow
rc=$?
[ $rc -eq 143 ] && grep -q "interrupted; what was downloaded so far is kept" "$tmp/int.err" &&
  [ -s "$tmp/slow.bin.part" ] && pass "an interrupted fetch says its download is kept" ||
  fail "interrupted fetch: exit $rc: $(cat "$tmp/int.err"), part: $(ls -l "$tmp/slow.bin.part")"
expect 0 "$tmp/slow.bin" "the interrupted download resumes" -- "$pesc" fetch -q \
  -o "$tmp/slow.bin" "$base/f/big.bin?k=slow"
cmp -s "$tmp/slow.bin" "$files/big.bin" && pass "resumed content" || fail "resumed content"

expect 0 "big.bin" "fetch -o DIR --jobs 2 of three URLs" -- "$pesc" fetch --jobs 2 \
  -o "$tmp/dir" "$base/f/small.txt" "$base/f/big.bin" "hf://datasets/tester/chat/train.jsonl@v1"
if [ "$(sed -n 2p "$tmp/out")" = "$tmp/dir/big.bin" ] && cmp -s "$tmp/dir/big.bin" "$files/big.bin" \
   && cmp -s "$tmp/dir/train.jsonl" "$files/data.jsonl"; then
  pass "paths in argument order, contents right"
else
  fail "paths or contents of -o DIR: $(cat "$tmp/out")"
fi

# -o onto a file that is there already: not taken as the download, not overwritten, no
# request; --force replaces it only with a complete new copy; --sha256 proves it.
printf 'mine\n' >"$tmp/mine.txt"
target="/f/small.txt?k=exists"
expect 1 "$base$target: $tmp/mine.txt already exists; pass --force" \
  "-o onto an existing file is refused" -- "$pesc" fetch -o "$tmp/mine.txt" "$base$target"
[ "$(cat "$tmp/mine.txt")" = mine ] && [ "$(requests 0 "$target")" -eq 0 ] \
  && pass "the existing file is untouched and nothing was requested" \
  || fail "-o onto an existing file: $(cat "$tmp/mine.txt"), $(requests 0 "$target") requests"
expect 1 "gave up" "--force against a failing server" -- "$pesc" fetch -q --force \
  --retries 0 -o "$tmp/mine.txt" "$base/f/small.txt?fail=9&code=503&k=force503"
[ "$(cat "$tmp/mine.txt")" = mine ] && pass "a failed --force download keeps the old file" \
  || fail "a failed --force download changed the file: $(cat "$tmp/mine.txt")"
expect 0 "$tmp/mine.txt" "--force replaces an existing file" -- "$pesc" fetch -q --force \
  -o "$tmp/mine.txt" "$base$target"
cmp -s "$tmp/mine.txt" "$files/small.txt" && pass "--force content" || fail "--force content"
sha=$(sha256sum "$files/small.txt" | cut -d ' ' -f 1)
expect 0 "SHA-256 checked" "--sha256 keeps an existing file that matches" -- "$pesc" fetch \
  --sha256 "$sha" -o "$tmp/mine.txt" "$base/f/small.txt?k=exists-sha"
[ "$(requests 0 "/f/small.txt?k=exists-sha")" -eq 0 ] && pass "no request for a proven file" \
  || fail "a file with the right SHA-256 was downloaded again"
printf 'mine\n' >"$tmp/mine.txt"
expect 0 "$tmp/mine.txt" "--sha256 replaces an existing file that does not match" -- \
  "$pesc" fetch -q --sha256 "$sha" -o "$tmp/mine.txt" "$base/f/small.txt?k=exists-sha"
cmp -s "$tmp/mine.txt" "$files/small.txt" && pass "--sha256 replacement content" \
  || fail "--sha256 replacement content"

expect 1 "$base/f/nothing.txt: not found (HTTP 404); check the URL$" "404 names the URL (and no hub's repository)" -- \
  "$pesc" fetch "$base/f/nothing.txt"
# a port nothing listens on: refused twice, a second apart, not the whole budget of retries
# (which took half a minute); "-o" keeps the cache out of it
expect 1 "http://127.0.0.1:1/x: .*connection refused twice (check the host and port" \
  "a refused connection gives up after a second try" -- "$pesc" fetch -q -o "$tmp/refused" "http://127.0.0.1:1/x"
[ ! -e "$tmp/refused.part" ] && pass "... and leaves no empty .part" || fail "a refused fetch left $tmp/refused.part"
expect 1 "$base/f/nothing.txt" "a URL given twice fails in one line" -- "$pesc" fetch \
  "$base/f/nothing.txt" "$base/f/nothing.txt"

# Two dead URLs whose files share a name: each line on stderr, the retries' included, names
# its own URL, no line comes twice, and each URL's failure is one line.
dead_d="$base/f/d/same.txt?fail=99&code=503"
dead_e="$base/f/e/same.txt?fail=99&code=503"
"$pesc" fetch --retries 2 "$dead_d" "$dead_e" >"$tmp/out" 2>"$tmp/err"
rc=$?
if [ $rc -eq 1 ] && [ -z "$(sort "$tmp/err" | uniq -d)" ] && \
   ! grep -v "^pesc[a-z ]*: $base/f/[de]/same.txt" "$tmp/err" | grep -q . && \
   [ "$(grep -c "^pesc fetch: $dead_d: HTTP 503; gave up" "$tmp/err")" -eq 1 ] && \
   [ "$(grep -c "^pesc fetch: $dead_e: HTTP 503; gave up" "$tmp/err")" -eq 1 ]; then
  pass "two dead URLs of one file name: every line names its own URL, once"
else
  fail "two dead URLs: exit $rc: $(cat "$tmp/err")"
fi
# ... and so does a local failure that both share
"$pesc" fetch -q -o "$tmp/one.txt/sub" "$base/f/small.txt?k=nodir" "$base/f/redir.txt?k=nodir" \
  >"$tmp/out" 2>"$tmp/err"
rc=$?
if [ $rc -eq 1 ] && [ "$(wc -l <"$tmp/err")" -eq 2 ] && \
   grep -q "^pesc fetch: $base/f/small.txt?k=nodir: cannot create directory" "$tmp/err" && \
   grep -q "^pesc fetch: $base/f/redir.txt?k=nodir: cannot create directory" "$tmp/err"; then
  pass "an -o directory that cannot be made: one line per URL, each naming it"
else
  fail "-o under a file: exit $rc: $(cat "$tmp/err")"
fi
expect 1 "SHA-256 mismatch" "wrong --sha256" -- "$pesc" fetch -o "$tmp/bad.txt" \
  --sha256 0000000000000000000000000000000000000000000000000000000000000000 "$base/f/small.txt"
[ ! -e "$tmp/bad.txt" ] && [ ! -e "$tmp/bad.txt.part" ] && pass "no file after a mismatch" \
  || fail "a file was left after a checksum mismatch"

expect 0 "retrying" "retries are reported on stderr" -- "$pesc" fetch \
  "$base/f/small.txt?fail=1&code=503&k=cli503"

# A server that drops every connection after 10 bytes: --retries 1 gives up after two tries,
# with one line that names the URL.
for bad in abc 999 -1 3x; do
  expect 1 "PESC_FETCH_RETRIES=$bad: expected a whole number from 0 to 30" \
    "PESC_FETCH_RETRIES=$bad is refused, not ignored" -- \
    env PESC_FETCH_RETRIES="$bad" "$pesc" fetch -o "$tmp/never.txt" "$base/f/small.txt"
done
[ -e "$tmp/never.txt" ] && fail "a refused PESC_FETCH_RETRIES still fetched"
expect 2 "--retries" "fetch --retries 31" -- "$pesc" fetch --retries 31 "$base/f/small.txt"
target="/f/big.bin?cut=20&send=10&k=cli-few"
expect 1 "$base$target: .*gave up after 2 tries" "--retries 1 against a server that sends 10 \
bytes a try" -- "$pesc" fetch -q --retries 1 -o "$tmp/few.bin" "$base$target"
[ "$(requests 2 "$target")" -eq 2 ] && pass "two requests with --retries 1" \
  || fail "--retries 1: $(requests 2 "$target") requests"

expect 0 "$XDG_CACHE_HOME/pesc/hf/models/tester/single/main" "fetch of a whole model" -- \
  "$pesc" fetch hf://tester/single
[ -f "$(cat "$tmp/out")/model.safetensors" ] && pass "model weights in the directory" \
  || fail "model weights missing"

HF_TOKEN="wrong-$token" expect 1 "HF_TOKEN was sent" "a refused token is named, not shown" -- \
  "$pesc" fetch hf://tester/tiny/config.json
grep -q "wrong-$token" "$tmp/out" "$tmp/err" && fail "the token was printed" \
  || pass "the token is not printed"

# A full disk (here: a file size limit) fails cleanly, keeps the part, and a rerun resumes.
target="/f/big.bin?k=full"
(ulimit -f 1000; trap '' XFSZ; exec "$pesc" fetch -q -o "$tmp/full.bin" "$base$target") \
  >"$tmp/out" 2>"$tmp/err"
rc=$?
if [ $rc -eq 1 ] && grep -q "kept" "$tmp/err" && [ ! -e "$tmp/full.bin" ] && \
   [ -s "$tmp/full.bin.part" ] && [ "$(wc -l <"$tmp/err")" -eq 1 ]; then
  pass "a write failure is one clear line and keeps the partial file"
else
  fail "write failure: exit $rc: $(cat "$tmp/err")"
fi
kept=$(wc -c <"$tmp/full.bin.part" | tr -d ' ')
expect 0 "$tmp/full.bin" "the rerun completes it" -- "$pesc" fetch -q -o "$tmp/full.bin" \
  "$base$target"
cmp -s "$tmp/full.bin" "$files/big.bin" && pass "resumed file content" \
  || fail "resumed file content"
grep " target=$target " "$log" | tail -n 1 | grep -q "range=bytes=$kept-" \
  && pass "the rerun asked for bytes $kept onwards" \
  || fail "the rerun did not resume: $(grep " target=$target " "$log" | tail -n 1)"

# Two processes after the same file: one downloads, the other waits for it (a lock on the
# part); both end with the right file, and it is downloaded once.
target="/f/big.bin?stall=1&k=two"
"$pesc" fetch -q "$base$target" >"$tmp/out1" 2>"$tmp/err1" &
first=$!
sleep 0.3
"$pesc" fetch "$base$target" >"$tmp/out2" 2>"$tmp/err2"
rc2=$?
wait $first
rc1=$?
if [ $rc1 -eq 0 ] && [ $rc2 -eq 0 ] && cmp -s "$(cat "$tmp/out1")" "$files/big.bin" && \
   [ "$(cat "$tmp/out1")" = "$(cat "$tmp/out2")" ] && [ "$(requests 2 "$target")" -eq 2 ]; then
  pass "two processes share one download"
else
  fail "two processes: exit $rc1/$rc2, $(grep -c " target=$target " "$log") requests: \
$(cat "$tmp/err1" "$tmp/err2")"
fi

# On a terminal: progress bars (script(1) gives the command a pseudo-terminal).
if command -v script >/dev/null 2>&1; then
  script -qec "'$pesc' fetch '$base/f/small.txt?fail=1&code=429&retry_after=1&k=tty'" \
    "$tmp/typescript" >/dev/null 2>&1 </dev/null
  if grep -q "\[\.\.\.\.\.\.\.\.\.\.\.\.\.\.\.\.\.\.\.\.\]" "$tmp/typescript" && \
     grep -q "429" "$tmp/typescript"; then
    pass "a terminal gets progress bars"
  else
    fail "no progress bar on a terminal: $(head -c 400 "$tmp/typescript")"
  fi
else
  echo "skip progress bars: script(1) not found"
fi

[ $(requests 1 "/f/small.txt?k=cli") -eq 1 ] && pass "one request for one file" \
  || fail "unexpected requests for /f/small.txt?k=cli"

# Tokenizers from URLs: a model repository gives only its tokenizer files (never the
# weights), and a --tokenizer URL the one file; the ids equal the local files'.
demo="${top_srcdir:-.}/data/demo"
tok_repo="$root/hub/models/tester/tok/main"
mkdir -p "$tok_repo"
cp "$demo/tokenizer.json" "$demo/tokenizer_config.json" "$demo/config.json" "$tok_repo/"
head -c 100000 /dev/urandom >"$tok_repo/model.safetensors"
cp "$demo/tokenizer.json" "$files/tok.json"
echo "reverse: pesc" >"$tmp/text"
"$pesc" tokenize --model "$demo" <"$tmp/text" >"$tmp/ids.local" 2>&1
expect 0 "" "tokenize --model hf://..." -- sh -c '"$1" tokenize --model hf://tester/tok <"$2"' \
  - "$pesc" "$tmp/text"
cmp -s "$tmp/out" "$tmp/ids.local" && pass "tokenize --model URL: the local files' ids" \
  || fail "tokenize --model URL: $(cat "$tmp/out") vs $(cat "$tmp/ids.local")"
grep -q "tester/tok/resolve/main/model.safetensors" "$log" \
  && fail "tokenize --model URL downloaded the weights" || pass "tokenize fetches no weights"
expect 0 "" "tokenize --tokenizer URL" -- sh -c '"$1" tokenize --tokenizer "$2" <"$3"' \
  - "$pesc" "$base/f/tok.json" "$tmp/text"
cmp -s "$tmp/out" "$tmp/ids.local" && pass "tokenize --tokenizer URL: the local file's ids" \
  || fail "tokenize --tokenizer URL: $(cat "$tmp/out") vs $(cat "$tmp/ids.local")"

# Proxies: http_proxy sends the request to the proxy (here the test server, which answers
# requests in absolute form); no_proxy bypasses it.
expect 0 "" "http_proxy is used" -- env http_proxy="$base" no_proxy= NO_PROXY= \
  "$pesc" fetch -q -o "$tmp/proxied.txt" "http://pesc-proxy-test.invalid/f/small.txt?k=proxy"
grep -q " target=http://pesc-proxy-test.invalid/f/small.txt?k=proxy " "$log" && \
  cmp -s "$tmp/proxied.txt" "$files/small.txt" && pass "the proxy got the request in absolute form" \
  || fail "no proxied request in the server log"
expect 0 "" "no_proxy bypasses the proxy" -- env http_proxy=http://127.0.0.1:9 \
  no_proxy=127.0.0.1 NO_PROXY=127.0.0.1 "$pesc" fetch -q -o "$tmp/direct.txt" \
  "$base/f/small.txt?k=noproxy"

# HTTPS: openssl s_server with a certificate made here. Certificates are verified (a
# self-signed one fails with one line that says how to fix it), and the CA-bundle variables are
# honoured, CURL_CA_BUNDLE before SSL_CERT_FILE as curl(1) does.
if command -v openssl >/dev/null 2>&1 && \
   openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
     -subj /CN=localhost -addext "subjectAltName=IP:127.0.0.1" \
     -keyout "$tmp/tls.key" -out "$tmp/tls.pem" >/dev/null 2>&1; then
  (cd "$files" && exec openssl s_server -accept 127.0.0.1:0 -WWW -cert "$tmp/tls.pem" \
     -key "$tmp/tls.key" >"$tmp/tls.out" 2>&1) &
  tls_pid=$!
  i=0
  while ! grep -q "^ACCEPT" "$tmp/tls.out" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
  tls_url="https://127.0.0.1:$(sed -n 's/^ACCEPT .*:\([0-9]*\)$/\1/p' "$tmp/tls.out")/small.txt"
  unset CURL_CA_BUNDLE SSL_CERT_FILE SSL_CERT_DIR
  expect 1 "certificate.*CURL_CA_BUNDLE" "an untrusted certificate is refused" -- \
    "$pesc" fetch -q -o "$tmp/tls0.txt" "$tls_url"
  [ ! -e "$tmp/tls0.txt" ] && pass "nothing is written from an untrusted server" \
    || fail "a file came from an untrusted server"
  CURL_CA_BUNDLE="$tmp/tls.pem" expect 0 "$tmp/tls1.txt" "HTTPS with CURL_CA_BUNDLE" -- \
    "$pesc" fetch -q -o "$tmp/tls1.txt" "$tls_url"
  SSL_CERT_FILE="$tmp/tls.pem" expect 0 "$tmp/tls2.txt" "HTTPS with SSL_CERT_FILE" -- \
    "$pesc" fetch -q -o "$tmp/tls2.txt" "$tls_url"
  cmp -s "$tmp/tls1.txt" "$files/small.txt" && cmp -s "$tmp/tls2.txt" "$files/small.txt" \
    && pass "HTTPS content" || fail "HTTPS content differs"
  kill "$tls_pid" 2>/dev/null
  wait "$tls_pid" 2>/dev/null
else
  echo "skip HTTPS: openssl (Debian package openssl) cannot make a test certificate"
fi

# -o onto something that is not a file (a FIFO here; /dev/null for a user, run as root) is
# never replaced, not even with --force or --sha256: the download would be renamed over it.
if mkfifo "$tmp/fifo" 2>/dev/null; then
  for how in --force "--sha256 $sha"; do
    # shellcheck disable=SC2086
    expect 1 "$tmp/fifo is not a regular file" "-o FIFO with $how is refused" -- \
      "$pesc" fetch -q $how -o "$tmp/fifo" "$base/f/small.txt?k=fifo"
    [ -p "$tmp/fifo" ] && pass "-o FIFO with $how: the FIFO is still there" \
      || fail "-o FIFO with $how: the FIFO was replaced"
  done
else
  echo "skip -o FIFO: mkfifo failed"
fi

# -o DIR/ with one URL names a directory to make, not a file called "DIR/" (which left
# DIR/.part behind and failed to rename it)
expect 0 "^$tmp/newdir/small.txt$" "-o DIR/ makes the directory and writes into it" -- \
  "$pesc" fetch -q -o "$tmp/newdir/" "$base/f/small.txt?k=slash"
cmp -s "$tmp/newdir/small.txt" "$files/small.txt" && [ ! -e "$tmp/newdir/.part" ] \
  && pass "-o DIR/ content, no .part left" || fail "-o DIR/: $(ls -a "$tmp/newdir" 2>&1)"

echo "fetch.sh: $failures failure(s)"
[ $failures -eq 0 ]
