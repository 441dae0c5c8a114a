#!/bin/sh
# emu.sh — the CUDA backend's own source, built for the CPU emulator (tests/emu/, the module
# tests/gpu/pesc-cuda-emu.la), where no GPU is, with the device running behind the host as on
# a GPU (PESC_EMU_DEFER): test_cuda_ops (every op against the CPU, on every attention path and
# math), test_cuda_step (whole steps against the CPU, and two identical runs, with each
# training attention path, and flash with fast-bf16 products, the pairing the MFU target
# needs), and pesc itself (`pesc devices`, `pesc train --backend cuda` runs against the same
# run on the CPU, one on the second of two emulated GPUs, one steered through its control
# socket, `pesc generate` against the CPU's text, `generate --prompts` against the CPU's
# lines, `pesc eval --choices` against the CPU's answers); also in bf16 math, with the frozen
# weights in bf16 alone, and in the emulator's immediate mode; the host's waits for the
# device, a step's and a token's; the memory estimate a run makes against what it then holds,
# and `pesc bench --profile`'s FLOPs against the MFU's; bf16 math's kept operand copies.
# What it checks: the kernels' indexing, masks and synchronisation, the host side's launches,
# products, scratch, devices and errors, the module's loading. Not speed, and not the longest
# attention shapes (test_cuda_ops leaves those to a GPU: tests/gpu/device-check).
set -u
top_srcdir=${top_srcdir:-.}
top_builddir=${top_builddir:-.}
pesc="$top_builddir/pesc"
module="$top_builddir/tests/gpu/.libs/pesc-cuda-emu.so"
m="$top_srcdir/tests/reference/data/llama-gqa-f32"
[ -f "$module" ] || { echo "emu.sh: $module is not built"; exit 99; }
case $module in /*) ;; *) module="$PWD/$module" ;; esac
tmp=$(mktemp -d "${TMPDIR:-/tmp}/pesc-emu.XXXXXX") || exit 99
trap 'rm -rf "$tmp"' EXIT
failures=0
. "$top_srcdir/tests/lib.sh"
PESC_CUDA_MODULE=$module
# Everything runs with the device behind the host, as on a GPU (PESC_EMU_DEFER: work waits
# until the host waits for it; a result read early is stale or NaN, page-locked memory
# rewritten under a pending copy aborts, and so does host code touching device memory),
# except where a run says PESC_EMU_DEFER=0: the emulator's immediate mode, kept working.
PESC_EMU_DEFER=1
# The comparisons below keep TF32's bounds and the fused attention (the defaults until an
# H200 measured bf16 and flash faster): runs in another math or path name it, and one run
# checks the defaults themselves.
PESC_CUDA_MATH=tf32 PESC_CUDA_ATTENTION=fused
export PESC_CUDA_MODULE PESC_EMU_DEFER PESC_CUDA_MATH PESC_CUDA_ATTENTION

run() {
  echo "== $*"
  env top_srcdir="$top_srcdir" top_builddir="$top_builddir" "$@"
  rc=$?
  [ $rc -eq 0 ] && pass "$*" || fail "$* exited $rc"
}
run "$top_builddir/tests/gpu/test_cuda_ops"
for attention in fused gemm flash flash-wmma; do
  run env PESC_CUDA_ATTENTION=$attention "$top_builddir/tests/gpu/test_cuda_step"
done
run env PESC_CUDA_ATTENTION=flash PESC_CUDA_MATH=fast-bf16 "$top_builddir/tests/gpu/test_cuda_step"
# bf16 math, where the crafted model's frozen product weights are kept in bf16 alone, with
# flash attention: the defaults
run env PESC_CUDA_MATH=bf16 PESC_CUDA_ATTENTION=flash "$top_builddir/tests/gpu/test_cuda_step"
# ... with dQ made from the dS the dK/dV kernel stores (PESC_CUDA_FLASH_DQ=stored)
run env PESC_CUDA_MATH=bf16 PESC_CUDA_ATTENTION=flash PESC_CUDA_FLASH_DQ=stored \
  "$top_builddir/tests/gpu/test_cuda_step"
# ... with the experts' row products on pesc's own mma kernels (PESC_CUDA_EXPERTS=mma)
run env PESC_CUDA_MATH=bf16 PESC_CUDA_EXPERTS=mma "$top_builddir/tests/gpu/test_cuda_step"
# ... with the adapters' rows laid out by expert, on multiples of 32 rows (its 256 slots of 4
# experts: at least 32 an expert), with room for groups all alike (their products then
# strided batched calls)
run env PESC_CUDA_MATH=bf16 PESC_CUDA_ATTENTION=flash PESC_CUDA_EXPERT_ALIGN=32 \
  PESC_CUDA_EXPERT_ROOM=2 "$top_builddir/tests/gpu/test_cuda_step"
# ... and on 16s with no room (a block and rows after it): in TF32, whose weight gradients
# over the rows after the block add to the block's from the step's first write, and in bf16
# with the weight gradients grouped (PESC_CUDA_GROUPED=all)
run env PESC_CUDA_EXPERT_ALIGN=16 "$top_builddir/tests/gpu/test_cuda_step"
run env PESC_CUDA_MATH=bf16 PESC_CUDA_GROUPED=all PESC_CUDA_EXPERT_ALIGN=16 \
  "$top_builddir/tests/gpu/test_cuda_step"
# the ops in the emulator's immediate mode
run env PESC_EMU_DEFER=0 "$top_builddir/tests/gpu/test_cuda_ops"

# the defaults: bf16 products, flash attention (on the mma kernels), the adapters grouped
out=$(env -u PESC_CUDA_MATH -u PESC_CUDA_ATTENTION "$pesc" bench --backend cuda --dim 256 \
  --layers 1 --ffn 704 --vocab 512 --seq 64 --batch 2 --steps 1 --json 2>"$tmp/err")
case $out in
  *'"device": "CUDA emulator'*' bf16 products (adapters grouped), flash (mma) attention, '*)
    pass "the CUDA backend's defaults: bf16 products, flash attention" ;;
  *) fail "the CUDA backend's defaults: $(echo "$out" | sed -n 's/.*"device": "\([^"]*\)".*/\1/p') $(head -c 300 "$tmp/err")" ;;
esac
# ... and before sm_80 (no bf16 tensor cores, no flash kernels): TF32 and the fused attention
out=$(env -u PESC_CUDA_MATH -u PESC_CUDA_ATTENTION PESC_EMU_SM=75 "$pesc" bench --backend cuda \
  --dim 256 --layers 1 --ffn 704 --vocab 512 --seq 64 --batch 2 --steps 1 --json 2>"$tmp/err")
case $out in
  *'(sm_75, '*' tf32 products (adapters grouped), fused (flash needs sm_80) attention, '*)
    pass "the CUDA backend's defaults on sm_75: TF32 products, fused attention" ;;
  *) fail "the CUDA backend's defaults on sm_75: $(echo "$out" | sed -n 's/.*"device": "\([^"]*\)".*/\1/p') $(head -c 300 "$tmp/err")" ;;
esac
"$pesc" devices >"$tmp/devices" 2>&1
grep -q "^cuda:0  CUDA emulator (CPU)" "$tmp/devices" &&
  pass "pesc devices lists the emulated GPU" || fail "pesc devices: $(cat "$tmp/devices")"

# a run on the emulated GPU against the same run on the CPU: every step's loss, with dropout,
# packing and recomputation, on the fused and the gemm attention (this model's heads of 16 are
# below flash attention's 32, and its products too narrow for bf16: test_cuda_step covers
# those)
train() {   # log (made anew), backend, environment...
  log=$1 backend=$2
  shift 2
  rm -f "$log"   # a fresh run refuses a log that holds one
  env "$@" "$pesc" train --headless --model "$m" --data "$m/records.jsonl" --format tokens \
    --seq 16 --batch 2 --pack --recompute --experts 4 --adapter-dim 8 --steps 4 \
    --backend "$backend" --log "$log" >/dev/null 2>"$tmp/err"
}
losses() { grep '"step":' "$1" | grep '"loss"' | sed 's/.*"loss":\([^,]*\),.*/\1/' | tr '\n' ' '; }
train "$tmp/cpu.jsonl" cpu
# and on the second of two GPUs (PESC_CUDA_DEVICE=1): the trainer thread, not the one that
# made the backend, runs the ops, and a launch from the wrong device is refused; and with one
# adapter product an expert instead of grouped ones (PESC_CUDA_GROUPED=0); and in bf16 math,
# the frozen weights kept in bf16 alone (products this narrow widen them to fp32 again); and
# in the emulator's immediate mode (PESC_EMU_DEFER=0)
for variant in "tf32 fused 1e-5 1 0 1 1" "tf32 gemm 1e-4 1 0 1 1" "tf32 fused 1e-5 2 1 1 1" \
               "tf32 fused 1e-5 1 0 0 1" "bf16 fused 2e-3 1 0 1 1" "tf32 fused 1e-5 1 0 1 0"; do
  set -- $variant
  if ! train "$tmp/gpu.jsonl" cuda PESC_CUDA_MATH=$1 PESC_CUDA_ATTENTION=$2 PESC_EMU_DEVICES=$4 \
      PESC_CUDA_DEVICE=$5 PESC_CUDA_GROUPED=$6 PESC_EMU_DEFER=$7; then
    fail "pesc train --backend cuda ($1, $2, device $5 of $4, grouped $6, deferred $7): $(head -c 300 "$tmp/err")"
    continue
  fi
  want=$(losses "$tmp/cpu.jsonl") got=$(losses "$tmp/gpu.jsonl") ok=1 i=0
  for l in $want; do
    i=$((i + 1))
    close "$(echo "$got" | cut -d' ' -f$i)" "$l" "$3" || ok=0
  done
  [ $ok -eq 1 ] && [ $i -eq 4 ] &&
    pass "pesc train --backend cuda ($1, $2, device $5 of $4, grouped $6, deferred $7): the CPU's losses within $3 ($got)" ||
    fail "pesc train --backend cuda ($1, $2, device $5 of $4, grouped $6, deferred $7): losses '$got', the CPU's '$want'"
done
# the adapters' rows laid out by expert (PESC_CUDA_EXPERT_ALIGN, _ROOM: packed on 8s, all
# alike on 16s, all alike unrounded; 64 slots of 4 experts, 16 an expert) give the losses of perm's order bit for bit on the
# emulator, whose products sum each row alike wherever it lies: with the adapters' dropout,
# packing and recomputation, in bf16
layout_losses() {   # align room
  rm -f "$tmp/layout.jsonl"
  PESC_CUDA_MATH=bf16 PESC_CUDA_EXPERT_ALIGN=$1 PESC_CUDA_EXPERT_ROOM=$2 "$pesc" train \
    --headless --model "$m" --data "$m/records.jsonl" --format tokens --seq 16 --batch 2 --pack \
    --recompute --experts 4 --adapter-dim 8 --adapter-dropout 0.1 --steps 4 --backend cuda \
    --log "$tmp/layout.jsonl" >/dev/null 2>"$tmp/err" && losses "$tmp/layout.jsonl"
}
want=$(layout_losses 1 1)
for layout in "8 1" "16 2" "1 3"; do
  got=$(layout_losses $layout)
  [ -n "$want" ] && [ "$got" = "$want" ] &&
    pass "pesc train --backend cuda, rows laid out by expert ($layout): perm's order's losses ($got)" ||
    fail "pesc train --backend cuda, rows laid out by expert ($layout): '$got', perm's order's '$want' $(head -c 300 "$tmp/err")"
done
# Gemma 3's and Gemma 2's models (head_dim 16, below flash's 32; Gemma 2's scores and logits
# softcapped): a run's losses, with NEFTune's noise on the embeddings (the same draws on both),
# and the loss of its checkpoint as pesc eval gives it (inference's one set of buffers for
# every layer), each against the CPU's
for family in gemma3 gemma2; do
  g="$top_srcdir/tests/reference/data/$family-f32"
  for backend in cpu cuda; do
    "$pesc" train --headless --model "$g" --data "$g/records.jsonl" --format tokens --seq 16 \
      --batch 2 --experts 4 --adapter-dim 8 --lora-rank 2 --steps 3 --neftune 5 --backend $backend \
      --log "$tmp/$family-$backend.jsonl" --save "$tmp/$family-$backend" >/dev/null 2>"$tmp/err" ||
      fail "pesc train --backend $backend on $family: $(head -c 300 "$tmp/err")"
    "$pesc" eval --model "$g" --adapters "$tmp/$family-cpu" --data "$g/records.jsonl" --json \
      --backend $backend 2>"$tmp/err" | sed -n 's/.*"loss": \([^,]*\),.*/\1/p' >"$tmp/$family-eval-$backend"
  done
  want=$(losses "$tmp/$family-cpu.jsonl") got=$(losses "$tmp/$family-cuda.jsonl") ok=1 i=0
  for l in $want; do
    i=$((i + 1))
    close "$(echo "$got" | cut -d' ' -f$i)" "$l" 1e-5 || ok=0
  done
  e_cpu=$(cat "$tmp/$family-eval-cpu") e_gpu=$(cat "$tmp/$family-eval-cuda")
  [ $ok -eq 1 ] && [ $i -eq 3 ] && [ -n "$e_gpu" ] && close "$e_gpu" "$e_cpu" 1e-5 &&
    pass "$family on the emulated GPU: the CPU's losses ($got) and eval loss ($e_gpu)" ||
    fail "$family on the emulated GPU: losses '$got', the CPU's '$want'; eval '$e_gpu', the CPU's '$e_cpu'"
done
# where a step makes the host wait for the device (the issue's "say where"): once a layer for
# its routing (the statistics and group sizes the adapters' products need), then for the
# loss, at the end of the backward (backend_check: the step's faults), for the clipping norm
# and for the adapters' norms; with recomputation too. Counted by the deferred emulator
# (PESC_EMU_REPORT's host_waits) as 8 steps' waits less 4 steps', over 4.
host_waits() {   # steps
  PESC_EMU_REPORT="$tmp/waits" "$pesc" train --headless --model "$m" \
    --data "$m/records.jsonl" --format tokens --seq 16 --batch 2 --pack --recompute \
    --experts 4 --adapter-dim 8 --steps "$1" --backend cuda >/dev/null 2>"$tmp/err" &&
    sed -n 's/^host_waits //p' "$tmp/waits"
}
w4=$(host_waits 4) w8=$(host_waits 8)
layers=$(sed -n 's/.*"num_hidden_layers": *\([0-9]*\).*/\1/p' "$m/config.json")
[ -n "$w4" ] && [ -n "$w8" ] && [ $(((w8 - w4) % 4)) -eq 0 ] &&
  [ $(((w8 - w4) / 4)) -eq $((layers + 4)) ] &&
  pass "a training step waits for the device $(((w8 - w4) / 4)) times: each layer's routing, the loss, the backward's end, two norms" ||
  fail "a training step's waits for the device: '$w4' in 4 steps, '$w8' in 8 (want $layers layers + 4 a step): $(head -c 300 "$tmp/err")"
# a run steered on the emulated GPU: a new learning rate and a
# greedy generate between steps (its KV cache beside the training's memory), a step after it
# in the new rate, then stop
csock="$tmp/control.sock"
"$pesc" train --headless --model "$m" --data "$m/records.jsonl" --format tokens \
  --seq 16 --batch 2 --experts 4 --adapter-dim 8 --steps 1000000 --backend cuda \
  --log "$tmp/steer.jsonl" --control "$csock" >/dev/null 2>"$tmp/steer.err" &
steer=$!
for _ in $(seq 300); do grep -q '^{"step":2,' "$tmp/steer.jsonl" 2>/dev/null && break; sleep 0.1; done
replies=$("$top_builddir/tests/sockcmd" "$csock" "lr 0.0005" "generate max=4 temp=0 ids:1,2" 2>&1 |
  tr '\n' '|')
for _ in $(seq 300); do grep -q '"event":"generate".* for: ids:1,2' "$tmp/steer.jsonl" && break; sleep 0.1; done
at=$(sed -n 's/^{"event":"generate","step":\([0-9]*\),.*/\1/p' "$tmp/steer.jsonl" | head -n 1)
next="^{\"step\":$((${at:-0} + 1)),"
for _ in $(seq 300); do grep -q "$next" "$tmp/steer.jsonl" && break; sleep 0.1; done
"$top_builddir/tests/sockcmd" "$csock" stop >/dev/null 2>&1
for _ in $(seq 300); do kill -0 $steer 2>/dev/null || break; sleep 0.1; done
kill -9 $steer 2>/dev/null
wait $steer
status=$?
[ "$replies" = "ok: lr 0.0005|ok: generating up to 4 tokens (the answer: the log's generate event)|" ] && [ "$status" -eq 0 ] &&
  grep -q '"event":"generate".*"text":"4 tokens for: ids:1,2"' "$tmp/steer.jsonl" &&
  grep "$next" "$tmp/steer.jsonl" | grep -q '"loss":[0-9].*"lr":0.0005,' &&
  pass "pesc train --backend cuda steered: lr and a generate between steps, step $((at + 1)) on, stop" ||
  fail "pesc train --backend cuda steered: replies '$replies', exit $status, generate at step '$at': $(head -c 300 "$tmp/steer.err")"
# --eval-generate between steps on the emulated GPU: the demo's held-out loss and greedy
# answers after 2 steps, as the CPU's (in fp32 products: TF32's rounding flipped a near tie in
# a longer run, 11 answers of 24 right against the CPU's 12)
heldout() {   # log (made anew), backend, environment...
  log=$1 backend=$2
  shift 2
  rm -f "$log"
  env "$@" "$pesc" train --headless --eval-data demo:arithmetic,seed=1235,records=12 \
    --eval-data demo:sort,seed=1235,records=12 --eval-generate exact --steps 2 --batch 4 \
    --eval-every 2 --lr 3e-2 --warmup 0 --backend "$backend" --log "$log" >/dev/null 2>"$tmp/err"
}
scores() { sed -n 's/.*"text":"\(eval loss [0-9.]*\|eval answers [0-9.]* right ([0-9]* of [0-9]*\).*/\1/p' "$1" | tr '\n' '|'; }
heldout "$tmp/heldout-cpu.jsonl" cpu
heldout "$tmp/heldout-gpu.jsonl" cuda PESC_CUDA_MATH=fp32
want=$(scores "$tmp/heldout-cpu.jsonl") got=$(scores "$tmp/heldout-gpu.jsonl")
case $want in *"eval loss"*"eval answers"*) ok=1 ;; *) ok=0 ;; esac
[ "$ok" = 1 ] && [ "$got" = "$want" ] &&
  pass "--eval-generate on the emulated GPU: the CPU's held-out loss and answers ($got)" ||
  fail "--eval-generate on the emulated GPU: '$got', the CPU's '$want': $(head -c 300 "$tmp/err")"
# a checkpoint saved in bf16 math, frozen weights in bf16 alone, continues on the CPU: the
# base is the one it was trained on
resume() {   # backend, log, pesc train options...
  backend=$1 log=$2
  shift 2
  PESC_CUDA_MATH=bf16 "$pesc" train --headless --model "$m" --data "$m/records.jsonl" \
    --format tokens --seq 16 --batch 2 --experts 4 --adapter-dim 8 --backend "$backend" \
    --log "$log" "$@" >/dev/null 2>"$tmp/err"
}
if resume cuda "$tmp/bf16.jsonl" --steps 2 --save "$tmp/save" &&
    resume cpu "$tmp/resumed.jsonl" --steps 4 --resume "$tmp/save" --save "$tmp/save2" &&
    grep -q '"text":"training from step 2 of 4"' "$tmp/resumed.jsonl" &&
    grep -q '^{"step":4,' "$tmp/resumed.jsonl"; then
  pass "a bf16-math checkpoint resumes on the CPU"
else
  fail "a bf16-math checkpoint resumes on the CPU: $(head -c 300 "$tmp/err")"
fi
train "$tmp/bad.jsonl" cuda PESC_CUDA_GROUPED=yes
grep -qx "pesc train: --backend cuda: PESC_CUDA_GROUPED=yes: give 1 (grouped adapter products, the default), all (the bf16 weight gradients grouped too) or 0 (one product an expert)" "$tmp/err" &&
  pass "PESC_CUDA_GROUPED=yes is refused, naming the choices" ||
  fail "PESC_CUDA_GROUPED=yes: $(head -c 300 "$tmp/err")"
train "$tmp/bad.jsonl" cuda PESC_CUDA_EXPERTS=wgmma
grep -qx "pesc train: --backend cuda: PESC_CUDA_EXPERTS=wgmma: choose cublas or mma" "$tmp/err" &&
  pass "PESC_CUDA_EXPERTS=wgmma is refused, naming the choices" ||
  fail "PESC_CUDA_EXPERTS=wgmma: $(head -c 300 "$tmp/err")"
train "$tmp/bad.jsonl" cuda PESC_CUDA_EXPERT_ALIGN=0
grep -qx "pesc train: --backend cuda: PESC_CUDA_EXPERT_ALIGN=0: give the rows to pad each expert's group to a multiple of, 1 to 1024 (default 1)" "$tmp/err" &&
  pass "PESC_CUDA_EXPERT_ALIGN=0 is refused, naming the range" ||
  fail "PESC_CUDA_EXPERT_ALIGN=0: $(head -c 300 "$tmp/err")"
train "$tmp/bad.jsonl" cuda PESC_CUDA_LOGITS_MIB=8
grep -qx "pesc train: --backend cuda: PESC_CUDA_LOGITS_MIB=8: give the logits made at a time in MiB, 16 to 4096 (default 64)" "$tmp/err" &&
  pass "PESC_CUDA_LOGITS_MIB=8 is refused, naming the range" ||
  fail "PESC_CUDA_LOGITS_MIB=8: $(head -c 300 "$tmp/err")"
train "$tmp/bad.jsonl" cuda PESC_CUDA_EXPERT_ROOM=1.5x
grep -qx "pesc train: --backend cuda: PESC_CUDA_EXPERT_ROOM=1.5x: give the adapters' rows as a multiple of the routed pairs, 1 to 4 (default 1)" "$tmp/err" &&
  pass "PESC_CUDA_EXPERT_ROOM=1.5x is refused, naming the range" ||
  fail "PESC_CUDA_EXPERT_ROOM=1.5x: $(head -c 300 "$tmp/err")"
train "$tmp/bad.jsonl" cuda PESC_CUDA_FLASH_DQ=store
grep -qx "pesc train: --backend cuda: PESC_CUDA_FLASH_DQ=store: choose recompute (the default) or stored" "$tmp/err" &&
  pass "PESC_CUDA_FLASH_DQ=store is refused, naming the choices" ||
  fail "PESC_CUDA_FLASH_DQ=store: $(head -c 300 "$tmp/err")"
train "$tmp/bad.jsonl" cuda PESC_CUDA_ATTENTION=flash2
grep -qx "pesc train: --backend cuda: PESC_CUDA_ATTENTION=flash2: choose flash, fused, gemm or flash-wmma" "$tmp/err" &&
  pass "PESC_CUDA_ATTENTION=flash2 is refused, naming the choices" ||
  fail "PESC_CUDA_ATTENTION=flash2: $(head -c 300 "$tmp/err")"
demo="$top_srcdir/data/demo"
# The memory estimate a run makes before it starts (check_memory; its "memory" event in the
# log), against what the run then takes on the emulated GPU (PESC_EMU_REPORT: the most it held
# at once, less what it held at the estimate): no less, and at most 5% more (the events' MiB
# are rounded to 0.1). On a GPU a little smaller than the peak, the run is refused up front
# with the numbers, not failed mid-step. With the scratch that differs most: attention's gemm
# path, flash attention in bf16 math (the products' bf16 operand copies; and with the stored
# dS, PESC_CUDA_FLASH_DQ=stored, here as attention "flash-stored"), recomputation,
# LoRA in bf16 math (its narrow products widen the FFN's bf16 activations to fp32), and
# --train full in bf16 math (every weight an operand to copy).
awk 'BEGIN { srand(7); for (r = 0; r < 16; r++) { printf "{\"input_ids\": [";
  for (i = 0; i < 128; i++) printf "%s%d", i ? ", " : "", int(rand() * 400); print "]}" } }' \
  >"$tmp/rows.jsonl"
fit() {   # KiB of GPU memory, math, attention, pesc train options...
  kb=$1 math=$2 attention=${3%-stored} dq=recompute
  [ "$3" = flash-stored ] && dq=stored
  shift 3
  rm -f "$tmp/fit.jsonl"
  PESC_EMU_MEMORY_KB=$kb PESC_EMU_REPORT="$tmp/report" PESC_CUDA_MATH=$math \
    PESC_CUDA_ATTENTION=$attention PESC_CUDA_FLASH_DQ=$dq "$pesc" train --headless --model "$demo" \
    --data "$tmp/rows.jsonl" --format tokens --seq 128 --batch 4 --steps 1 --backend cuda \
    --log "$tmp/fit.jsonl" "$@" >/dev/null 2>"$tmp/err"
}
crafted="--experts 4 --adapter-dim 16"
for variant in "tf32 gemm $crafted" "bf16 flash $crafted" "bf16 flash-stored $crafted" \
               "bf16 flash $crafted --recompute" \
               "bf16 flash $crafted --lora-rank 8" "bf16 fused --train full"; do
  set -- $variant
  if ! fit 1024000 "$@"; then   # 1000 MiB: the event's figures in MiB
    fail "memory estimate ($variant): the run failed: $(head -c 300 "$tmp/err")"
    continue
  fi
  peak=$(sed -n 's/^peak_bytes //p' "$tmp/report")
  verdict=$(grep '"event":"memory"' "$tmp/fit.jsonl" | awk -v peak="$peak" '
    function mib(v, unit) {
      if (unit ~ /^KiB/) return v / 1024
      if (unit ~ /^GiB/) return v * 1024
      if (unit ~ /^B/) return v / 1048576
      return v
    }
    { n = split($0, w, " ")
      for (i = 1; i < n; i++) {
        if (w[i] == "needs") need = mib(w[i + 1], w[i + 2])
        if (w[i] == "free" && w[i + 1] == "of") {
          free = mib(w[i - 2], w[i - 1])
          total = mib(w[i + 2], w[i + 3])
        }
      }
      taken = peak / 1048576 - (total - free)
      ok = need >= taken - 0.15 && need <= taken * 1.05 + 0.15
      printf "%s: estimated %.1f MiB, took %.2f MiB", ok ? "ok" : "off", need, taken }')
  case $verdict in
    ok:*) pass "memory estimate ($variant): ${verdict#ok: }" ;;
    *) fail "memory estimate ($variant): ${verdict:-no memory event in the log}" ;;
  esac
  peak_kb=$((peak / 1024))
  if fit $((peak_kb - 64)) "$@"; then
    fail "memory estimate ($variant): a GPU of $((peak_kb - 64)) KiB, below the peak, ran"
  elif grep -q "^pesc train: training needs .* but the GPU has .* free: lower --batch" \
      "$tmp/err"; then
    pass "memory estimate ($variant): a GPU below the peak of $peak_kb KiB is refused up front"
  else
    fail "memory estimate ($variant): below the peak of $peak_kb KiB: $(head -c 300 "$tmp/err")"
  fi
done
# pesc bench reports the same estimate beside what its steps and AdamW took: no less, at most
# 5% more (the device check prints both for each run on a GPU)
out=$(PESC_CUDA_MATH=bf16 "$pesc" bench --backend cuda --dim 256 --layers 2 --ffn 704 \
  --vocab 1024 --seq 64 --batch 4 --steps 1 --json --profile 2>"$tmp/err")
estimate=$(echo "$out" | sed -n 's/.*"memory_estimate_bytes": \([0-9]*\).*/\1/p')
taken=$(echo "$out" | sed -n 's/.*"memory_taken_bytes": \([0-9]*\).*/\1/p')
[ "${taken:-0}" -gt 0 ] && [ "$estimate" -ge "$taken" ] &&
  [ "$estimate" -le $((taken / 20 * 21)) ] &&
  pass "pesc bench (bf16): the steps took $taken bytes, estimated $estimate" ||
  fail "pesc bench (bf16): took '$taken' bytes, estimated '$estimate': $(head -c 300 "$tmp/err")"
# and its profile, which the device check prints: the products' FLOPs of a step (256 tokens)
# are the MFU's
if flops=$(echo "$out" | profile_flops 256); then
  pass "pesc bench --profile (bf16): the products' FLOPs are the MFU's, ${flops#* } a token"
else
  fail "pesc bench --profile (bf16): FLOPs a token, the products' and the MFU's: $flops"
fi
# PESC_CUDA_LOGITS_MIB: the logits in larger slices. At vocabulary 70000, 512 tokens: slices
# of 256 rows (the least) by default, all 512 at once with 256 MiB; the estimate and the memory
# the steps took grow by at least those 256 rows of fp32 logits. Both estimates cover what the
# steps took, within 5%: at dim 64 the head's products run in fp32 (a side of 64), widening
# the frozen bf16 head first, which the estimate once left out (17 MB short)
logits_run() {
  env "$@" PESC_CUDA_MATH=bf16 "$pesc" bench --backend cuda --dim 64 --layers 1 --heads 4 \
    --ffn 128 --vocab 70000 --seq 64 --batch 8 --steps 1 --json 2>"$tmp/err" |
    sed -n 's/.*"memory_estimate_bytes": \([0-9]*\), "memory_taken_bytes": \([0-9]*\).*/\1 \2/p'
}
read -r est64 took64 <<END
$(logits_run PESC_CUDA_LOGITS_MIB=)
END
read -r est256 took256 <<END
$(logits_run PESC_CUDA_LOGITS_MIB=256)
END
more=$((256 * 70000 * 4))
[ -n "$took64" ] && [ -n "$took256" ] && [ $((est256 - est64)) -ge $more ] &&
  [ $((took256 - took64)) -ge $more ] && [ "$est64" -ge "$took64" ] &&
  [ "$est64" -le $((took64 / 20 * 21)) ] && [ "$est256" -ge "$took256" ] &&
  [ "$est256" -le $((took256 / 20 * 21)) ] &&
  pass "PESC_CUDA_LOGITS_MIB=256: estimated $est64 -> $est256 bytes, took $took64 -> $took256" ||
  fail "PESC_CUDA_LOGITS_MIB=256: estimated $est64 -> '$est256', took $took64 -> '$took256'" \
    "(each to grow by $more): $(head -c 300 "$tmp/err")"
# ... and the parts of the adapters' and flash attention's time (the fused attention this
# script runs otherwise marks none), by the device's clock between marks: each one marked,
# together no more than their op's wall time (the waits around it included); grouped heads,
# so that the backward's sums over a group's query heads are a part too
out=$(PESC_CUDA_MATH=bf16 PESC_CUDA_ATTENTION=flash "$pesc" bench --backend cuda --dim 256 \
  --layers 2 --heads 4 --kv-heads 2 --ffn 704 --vocab 1024 --seq 64 --batch 4 --steps 1 \
  --json --profile 2>"$tmp/err")
parts_of() {   # OP: the op's parts' labels and ms a step, a line each
  echo "$out" | grep -o "{\"op\": \"[^\"]*\", \"part_of\": \"$1\", [^}]*}" |
    sed 's/{"op": "\([^"]*\)".*"ms_per_step": \([0-9.]*\).*/\1\t\2/'
}
op_ms() {
  echo "$out" | grep -o "{\"op\": \"$1\", \"calls_per_step\": [^}]*}" |
    sed 's/.*"ms_per_step": \([0-9.]*\).*/\1/'
}
for want in "moe_adapter_forward:6" "moe_adapter_backward:8" "attention_forward:2" \
            "attention_backward:4"; do
  op=${want%:*}
  got=$(parts_of "$op" | wc -l)
  sum=$(parts_of "$op" | awk -F'\t' '{ s += $2 } END { print s + 0 }')
  whole=$(op_ms "$op")
  [ "$got" -eq "${want#*:}" ] &&
    awk -v s="$sum" -v w="${whole:-0}" 'BEGIN { exit !(s > 0 && s <= w + 0.05) }' &&
    pass "pesc bench --profile: $op's $got parts, $sum of its $whole ms" ||
    fail "pesc bench --profile: $op: $got parts (wanted ${want#*:}), $sum ms of" \
      "'$whole': $(parts_of "$op" | tr '\n' ' ') $(head -c 300 "$tmp/err")"
done
# ... and so with the adapters' rows laid out by expert (more rows; the pad rows' products not
# counted), which the device line names
out=$(PESC_CUDA_MATH=bf16 PESC_CUDA_EXPERT_ALIGN=32 PESC_CUDA_EXPERT_ROOM=2 "$pesc" bench \
  --backend cuda --dim 256 --layers 2 --ffn 704 --vocab 1024 --seq 64 --batch 4 --steps 1 \
  --json --profile 2>"$tmp/err")
estimate=$(echo "$out" | sed -n 's/.*"memory_estimate_bytes": \([0-9]*\).*/\1/p')
taken=$(echo "$out" | sed -n 's/.*"memory_taken_bytes": \([0-9]*\).*/\1/p')
case $out in *'(adapters grouped, rows on 32s, room 2x)'*) named=1 ;; *) named=0 ;; esac
# ... and says how many rows the adapters' products ran over: more than the routed pairs
# (2 layers of 256 tokens, top-2)
rows=$(echo "$out" | sed -n 's/.*"adapter_rows": \([0-9]*\).*/\1/p')
routed=$(echo "$out" | sed -n 's/.*"adapter_routed": \([0-9]*\).*/\1/p')
[ "${routed:-0}" -eq 1024 ] && [ "${rows:-0}" -gt "$routed" ] &&
  pass "pesc bench (rows on 32s, room 2x): the adapters' products ran over $rows rows for $routed routed" ||
  fail "pesc bench (rows on 32s, room 2x): adapter_rows '$rows', adapter_routed '$routed'"
[ $named -eq 1 ] && [ "${taken:-0}" -gt 0 ] && [ "$estimate" -ge "$taken" ] &&
  [ "$estimate" -le $((taken / 20 * 21)) ] &&
  pass "pesc bench (bf16, rows on 32s, room 2x): the steps took $taken bytes, estimated $estimate" ||
  fail "pesc bench (bf16, rows on 32s, room 2x): took '$taken' bytes, estimated '$estimate': $(echo "$out" | head -c 600) $(head -c 300 "$tmp/err")"
if flops=$(echo "$out" | profile_flops 256); then
  pass "pesc bench --profile (bf16, rows on 32s): the products' FLOPs are the MFU's"
else
  fail "pesc bench --profile (bf16, rows on 32s): FLOPs a token, the products' and the MFU's: $flops"
fi
# bf16 math's operand copies kept for the products after (PESC_CUDA_REUSE, the default) give
# the losses of converting every product's operands, bit for bit, with fewer kernels: gate and
# up, and the output gradients of down (the adapters' backward writes its copy) and of o
# (RMSNorm's backward) convert nothing (4 a layer and step), nor do the adapters' weights
# (AdamW writes their bf16 values: 4 a layer and step, for one conversion when the run
# starts), nor the logits' gradient (cross-entropy's backward; one slice a step at this
# shape). The attention's normed input, q, k, v, output and their gradients, the FFN's
# activations and their gradients are bf16 either way.
for reuse in 1 0; do
  PESC_CUDA_REUSE=$reuse PESC_EMU_REPORT="$tmp/report$reuse" PESC_CUDA_MATH=bf16 \
    "$pesc" train --headless --model "$demo" --data "$tmp/rows.jsonl" --format tokens \
    --seq 128 --batch 4 --steps 3 --experts 4 --adapter-dim 16 --backend cuda \
    --log "$tmp/reuse$reuse.jsonl" --save "$tmp/reuse-save$reuse" >/dev/null 2>"$tmp/err" ||
    fail "PESC_CUDA_REUSE=$reuse: $(head -c 300 "$tmp/err")"
done
kept=$(losses "$tmp/reuse1.jsonl") converted=$(losses "$tmp/reuse0.jsonl")
fewer=$(($(sed -n 's/^launches //p' "$tmp/report0") - $(sed -n 's/^launches //p' "$tmp/report1")))
[ -n "$kept" ] && [ "$kept" = "$converted" ] && [ "$fewer" -eq $((8 * 4 * 3 - 1 + 3)) ] &&
  pass "bf16 operand copies kept: the same losses ($kept), $fewer fewer kernels in 3 steps" ||
  fail "bf16 operand copies kept: losses '$kept', converting '$converted', $fewer fewer kernels"
# ... and in generation with those adapters loaded: the loaded trainables' bf16 values are
# made as they are uploaded, so each token's forward converts nothing for gate, up and the
# adapters' two weights (4 a layer), nor for the tied head (1): 17 kernels a token fewer than
# converting (9 where the loaded adapters' weights would convert)
adapters=$(ls "$tmp"/reuse-save1/step-*/trainables.safetensors 2>/dev/null | head -1)
gen_fewer() {   # tokens: fewer_tokens = the kernels PESC_CUDA_REUSE=1 saves in making them
  for reuse in 1 0; do
    PESC_CUDA_REUSE=$reuse PESC_EMU_REPORT="$tmp/gen-report$reuse" PESC_CUDA_MATH=bf16 \
      "$pesc" generate --model "$demo" --adapters "$adapters" --prompt "Once upon a time" --raw \
      --max-tokens "$1" --backend cuda >"$tmp/gen-reuse$reuse" 2>"$tmp/err" ||
      fail "pesc generate --adapters, PESC_CUDA_REUSE=$reuse: $(head -c 300 "$tmp/err")"
  done
  cmp -s "$tmp/gen-reuse1" "$tmp/gen-reuse0" || fail "pesc generate --adapters: the text differs"
  fewer_tokens=$(($(sed -n 's/^launches //p' "$tmp/gen-report0") -
                  $(sed -n 's/^launches //p' "$tmp/gen-report1")))
}
gen_fewer 4
fewer4=$fewer_tokens
gen_fewer 8
fewer8=$fewer_tokens
[ $((fewer8 - fewer4)) -eq $((4 * (4 * 4 + 1))) ] &&
  pass "pesc generate --adapters (bf16): the same text, 17 kernels fewer a token, copies kept" ||
  fail "pesc generate --adapters (bf16): $fewer4 fewer kernels for 4 tokens, $fewer8 for 8"
# generation (the KV cache, the cached attention) on the emulated GPU: the CPU's greedy text
# (and in bf16 math, the weights kept in bf16 alone: the same tokens on this model; and in
# the emulator's immediate mode)
for run in cpu:tf32:1 cuda:tf32:1 cuda:bf16:1 cuda:tf32:0; do
  set -- $(echo "$run" | tr : ' ')
  PESC_CUDA_MATH=$2 PESC_EMU_DEFER=$3 PESC_EMU_REPORT="$tmp/gen-waits-$run" "$pesc" generate \
    --model "$demo" --prompt "Once upon a time" --raw --max-tokens 24 --backend "$1" \
    >"$tmp/gen-$run" 2>"$tmp/err" || fail "pesc generate --backend $1 ($2, deferred $3): $(head -c 300 "$tmp/err")"
done
for run in cuda:tf32:1 cuda:bf16:1 cuda:tf32:0; do
  set -- $(echo "$run" | tr : ' ')
  [ -s "$tmp/gen-cpu:tf32:1" ] && cmp -s "$tmp/gen-cpu:tf32:1" "$tmp/gen-$run" &&
    pass "pesc generate --backend $1 ($2, deferred $3): the CPU's 24 greedy tokens" ||
    fail "pesc generate --backend $1 ($2, deferred $3): '$(cat "$tmp/gen-$run")', the CPU's '$(cat "$tmp/gen-cpu:tf32:1")'"
done
# ... and one wait for the device a token: its sampled id (in bf16 math too, whose weights
# pass through a staging area as they load)
for math in tf32 bf16; do
  waits=$(sed -n 's/^host_waits //p' "$tmp/gen-waits-cuda:$math:1")
  [ "$waits" = 24 ] && pass "pesc generate --backend cuda ($math) waits for the device once a token (24)" ||
    fail "pesc generate --backend cuda ($math) waits for the device $waits times for 24 tokens"
done
# a --chat conversation on the emulated GPU: the cache kept between turns (and grown, at 16
# answer tokens a turn, its rows copied on the device) gives the CPU's answers, in tf32 and
# bf16 (with the rows not copied, the second answer is empty)
printf 'capital: France\nreverse: abc\ncapital: Japan\n' >"$tmp/chat.txt"
"$pesc" generate --model "$demo" --chat --max-tokens 16 --backend cpu <"$tmp/chat.txt" >"$tmp/chat-cpu" 2>"$tmp/err" ||
  fail "pesc generate --chat --backend cpu: $(head -c 300 "$tmp/err")"
for math in tf32 bf16; do
  PESC_CUDA_MATH=$math "$pesc" generate --model "$demo" --chat --max-tokens 16 --backend cuda <"$tmp/chat.txt" \
    >"$tmp/chat-$math" 2>"$tmp/err" || fail "pesc generate --chat ($math): $(head -c 300 "$tmp/err")"
  [ "$(wc -l <"$tmp/chat-cpu")" = 3 ] && cmp -s "$tmp/chat-cpu" "$tmp/chat-$math" &&
    pass "pesc generate --chat --backend cuda ($math): the CPU's three answers" ||
    fail "pesc generate --chat ($math): '$(cat "$tmp/chat-$math")', the CPU's '$(cat "$tmp/chat-cpu")'"
done
# generate --prompts on the emulated GPU: 48 demo prompts, 40 at a time (40 slots of one KV
# cache, prompts passes and steps of many sequences through attention_step_forward), the
# CPU's lines (in fp32 products, as --eval-generate above)
"$pesc" demo-data -o "$tmp/prompts.jsonl" --records 48 --seed 8 2>/dev/null
"$pesc" generate --model "$demo" --prompts "$tmp/prompts.jsonl" --max-tokens 16 --batch 40 \
  --backend cpu >"$tmp/prompts-cpu" 2>"$tmp/err" || fail "pesc generate --prompts --backend cpu: $(head -c 300 "$tmp/err")"
PESC_CUDA_MATH=fp32 "$pesc" generate --model "$demo" --prompts "$tmp/prompts.jsonl" --max-tokens 16 \
  --batch 40 --backend cuda >"$tmp/prompts-gpu" 2>"$tmp/err" || fail "pesc generate --prompts --backend cuda: $(head -c 300 "$tmp/err")"
[ "$(wc -l <"$tmp/prompts-cpu")" = 48 ] && cmp -s "$tmp/prompts-cpu" "$tmp/prompts-gpu" &&
  pass "pesc generate --prompts --batch 40 --backend cuda: the CPU's 48 answers" ||
  fail "pesc generate --prompts --backend cuda: $(diff "$tmp/prompts-cpu" "$tmp/prompts-gpu" | head -n 4)"
# eval --choices: a question's options as one padded batch, on the emulated GPU, picking the
# CPU's answers (the same accuracies, plain and a byte), in tf32 and bf16
cp "$top_srcdir/tests/choices-demo.jsonl" "$tmp/mc.jsonl"
# (and MMLU's layout after a worked example: the letters decoded on the shared prefix in the
# KV cache, the same picks)
"$pesc" eval --model "$demo" --choices "$tmp/mc.jsonl" --json --backend cpu >"$tmp/mc-cpu" 2>"$tmp/err" ||
  fail "pesc eval --choices --backend cpu: $(head -c 300 "$tmp/err")"
"$pesc" eval --model "$demo" --choices "$tmp/mc.jsonl" --letters --raw --shots 1 --backend cpu \
  --samples "$tmp/mcs-cpu" >/dev/null 2>"$tmp/err" || fail "pesc eval --choices --letters --backend cpu: $(head -c 300 "$tmp/err")"
picks() { sed 's/"scores".*"shared"/"shared"/' "$1"; }
for math in tf32 bf16; do
  PESC_CUDA_MATH=$math "$pesc" eval --model "$demo" --choices "$tmp/mc.jsonl" --json --backend cuda \
    >"$tmp/mc-$math" 2>"$tmp/err" || fail "pesc eval --choices ($math): $(head -c 300 "$tmp/err")"
  grep -q '"accuracy": 1,' "$tmp/mc-cpu" && cmp -s "$tmp/mc-cpu" "$tmp/mc-$math" &&
    pass "pesc eval --choices --backend cuda ($math): the CPU's answers to eight questions" ||
    fail "pesc eval --choices ($math): '$(cat "$tmp/mc-$math")', the CPU's '$(cat "$tmp/mc-cpu")'"
  PESC_CUDA_MATH=$math "$pesc" eval --model "$demo" --choices "$tmp/mc.jsonl" --letters --raw --shots 1 \
    --backend cuda --samples "$tmp/mcs-$math" >/dev/null 2>"$tmp/err" ||
    fail "pesc eval --choices --letters ($math): $(head -c 300 "$tmp/err")"
  [ "$(grep -c '"shared": [1-9]' "$tmp/mcs-cpu")" = 7 ] && [ "$(picks "$tmp/mcs-cpu")" = "$(picks "$tmp/mcs-$math")" ] &&
    pass "pesc eval --choices --letters --backend cuda ($math): on the shared prefix, the CPU's picks" ||
    fail "pesc eval --choices --letters ($math): '$(picks "$tmp/mcs-$math")', the CPU's '$(picks "$tmp/mcs-cpu")'"
done
[ "$failures" -eq 0 ]
