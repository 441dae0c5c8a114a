#!/bin/sh
# module.sh — the CUDA module (pesc-cuda.so) as pesc opens it: commands that want no GPU do
# not load cuBLAS at all; without a driver, `auto` and `pesc devices` say so without opening
# the module; a missing, foreign or stale module is one line naming the file, and --backend
# auto then runs on the CPU with a note saying why. Needs no GPU.
set -u
top_srcdir=${top_srcdir:-.}
top_builddir=${top_builddir:-.}
pesc="$top_builddir/pesc"
module="$top_builddir/.libs/pesc-cuda.so"
stale="$top_builddir/tests/gpu/.libs/stale_module.so"
fake_driver="$top_builddir/tests/gpu/.libs/fake_driver.so"
m="$top_srcdir/tests/reference/data/llama-gqa-f32"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/pesc-module.XXXXXX") || exit 99
trap 'rm -rf "$tmp"' EXIT
failures=0
. "$top_srcdir/tests/lib.sh"
unset PESC_CUDA_MODULE

if ! "$pesc" --version | grep -q "cuda)"; then
  expect 1 "built without CUDA" "--backend cuda in a build without CUDA" -- \
    "$pesc" eval --model "$m" --data "$m/records.jsonl" --backend cuda
  expect 0 "built without CUDA" "devices in a build without CUDA" -- "$pesc" devices
  [ "$failures" -eq 0 ]
  exit $?
fi
for f in "$module" "$stale" "$fake_driver"; do
  [ -f "$f" ] || { echo "module.sh: $f is not built"; exit 99; }
done

# what the dynamic loader opened while a command ran
opened() { LD_DEBUG=libs "$@" 2>&1 >/dev/null | grep -o 'file=[^ ]*' | sort -u; }

for args in "--version" "--help" "eval --model $m --data $m/records.jsonl --backend cpu"; do
  # shellcheck disable=SC2086
  if opened "$pesc" $args | grep -q cublas; then
    fail "pesc $args opened cuBLAS"
  else
    pass "pesc $args does not open cuBLAS"
  fi
done

"$pesc" devices >"$tmp/devices" 2>&1
if grep -q "libcuda.so.1 was not found" "$tmp/devices"; then
  # no driver here: not even `devices` or `auto` opens the module
  for args in "devices" "eval --model $m --data $m/records.jsonl"; do
    # shellcheck disable=SC2086
    if opened "$pesc" $args | grep -q "pesc-cuda\|cublas"; then
      fail "pesc $args opened the module without a driver"
    else
      pass "pesc $args without a driver does not open the module"
    fi
  done
  "$pesc" eval --model "$m" --data "$m/records.jsonl" >/dev/null 2>"$tmp/err"
  grep -q "auto" "$tmp/err" && fail "auto without a driver printed a note: $(cat "$tmp/err")" ||
    pass "auto without a driver is silent: a CPU machine is no fault"
  expect 1 "^pesc eval: --backend cuda: no CUDA device (no NVIDIA driver" \
    "--backend cuda without a driver" -- "$pesc" eval --model "$m" --data "$m/records.jsonl" --backend cuda
fi

# A driver library that is there but empty: the module is opened from where a pesc in the
# build tree finds it (beside pesc; two directories up for the GPU tests), or from pkglibdir
# for a pesc elsewhere, and the CUDA runtime inside it finds no usable driver (or, on a
# machine with a GPU, the real one).
mkdir "$tmp/driver" "$tmp/bin" && cp "$fake_driver" "$tmp/driver/libcuda.so.1" && cp "$pesc" "$tmp/bin/pesc"
expect 0 "^cuda.*no NVIDIA driver is loaded\|^cuda:0" "devices opens the build tree's module" -- \
  env LD_LIBRARY_PATH="$tmp/driver" "$pesc" devices
env LD_LIBRARY_PATH="$tmp/driver" PESC_TEST_SEED=1 "$top_builddir/tests/gpu/test_cuda_step" >"$tmp/out" 2>&1
case $? in
  77) grep -q "no NVIDIA driver is loaded" "$tmp/out" && pass "a GPU test opens the build tree's module" ||
        fail "a GPU test skipped for another reason: $(cat "$tmp/out")" ;;
  0) pass "a GPU test opens the build tree's module (and found a GPU)" ;;
  *) fail "a GPU test with the build tree's module: $(cat "$tmp/out")" ;;
esac
env LD_LIBRARY_PATH="$tmp/driver" "$pesc" eval --model "$m" --data "$m/records.jsonl" >/dev/null 2>"$tmp/err"
grep -q "auto" "$tmp/err" && fail "auto without a usable driver printed a note: $(cat "$tmp/err")" ||
  pass "auto with no usable device is silent"
expect 0 "^cuda.*(pkglibdir)\|^cuda.*no NVIDIA driver is loaded\|^cuda:0" \
  "a pesc outside the build tree looks in pkglibdir" -- env LD_LIBRARY_PATH="$tmp/driver" "$tmp/bin/pesc" devices

# the module opened by name: it loads, and reports what the CUDA runtime sees
expect 0 "^cuda" "devices through \$PESC_CUDA_MODULE" -- env PESC_CUDA_MODULE="$module" "$pesc" devices
grep -q "pesc_cuda_module\|another build\|cannot be loaded" "$tmp/out" &&
  fail "the build's own module was refused: $(cat "$tmp/out")"

expect 1 "CUDA module $tmp/none.so (\$PESC_CUDA_MODULE) is missing" "--backend cuda, module missing" -- \
  env PESC_CUDA_MODULE="$tmp/none.so" "$pesc" eval --model "$m" --data "$m/records.jsonl" --backend cuda
expect 1 "is not a pesc CUDA module" "--backend cuda, a library that is not the module" -- \
  env PESC_CUDA_MODULE="$top_builddir/plugins/.libs/csv.so" "$pesc" eval --model "$m" \
  --data "$m/records.jsonl" --backend cuda
expect 1 "is from another build of pesc (0.0.0-stale" "--backend cuda, a stale module" -- \
  env PESC_CUDA_MODULE="$stale" "$pesc" eval --model "$m" --data "$m/records.jsonl" --backend cuda
printf 'not an ELF file\n' >"$tmp/junk.so"
expect 1 "cannot be loaded: .*junk.so" "--backend cuda, a module that is not a library" -- \
  env PESC_CUDA_MODULE="$tmp/junk.so" "$pesc" eval --model "$m" --data "$m/records.jsonl" --backend cuda
expect 0 '"loss"' "--backend auto with a stale module runs on the CPU" -- \
  env PESC_CUDA_MODULE="$stale" "$pesc" eval --model "$m" --data "$m/records.jsonl" --json
grep -q "^pesc eval: note: --backend auto runs on the CPU: .*another build" "$tmp/err" &&
  pass "eval says why auto passed the GPU over" || fail "eval's note on auto: $(cat "$tmp/err")"
awk 'BEGIN { for (r = 0; r < 8; r++) print "{\"input_ids\": [1, 2, 3, 4, 5, 6, 7, 8]}" }' >"$tmp/data.jsonl"
expect 0 "^pesc train: --backend auto runs on the CPU: .*another build" \
  "train says why auto passed the GPU over" -- env PESC_CUDA_MODULE="$stale" "$pesc" train \
  --headless --model "$m" --data "$tmp/data.jsonl" --seq 8 --batch 2 --steps 1 --log "$tmp/run.jsonl"
grep -q '"event":"note".*--backend auto runs on the CPU' "$tmp/run.jsonl" &&
  pass "the run's log keeps that note" || fail "no note on auto in the log: $(head -c 600 "$tmp/run.jsonl")"
expect 0 "is from another build" "devices names a stale module" -- \
  env PESC_CUDA_MODULE="$stale" "$pesc" devices

[ "$failures" -eq 0 ]
