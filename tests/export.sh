#!/bin/sh
# export.sh — pesc export as a user drives it, on the demo model: a checkpoint becomes a
# Camelidae-layout directory that eval, generate and train load directly and that computes what
# base + adapters computed (LoRA merged in, full-mode weights as trained); the checkpoint
# remembers its base; bad inputs fail in one line (the export's model.safetensors as --adapters
# among them, and its own run's checkpoint as --adapters onto it); inspect describes checkpoints and exports.
set -u
top_srcdir=${top_srcdir:-.}
top_builddir=${top_builddir:-.}
pesc="$top_builddir/pesc"
demo="$top_srcdir/data/demo"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/pesc-export.XXXXXX") || exit 99
trap 'rm -rf "$tmp"' EXIT
failures=0
. "${top_srcdir:-.}/tests/lib.sh"

"$pesc" demo-data -o "$tmp/d.jsonl" --records 16 --seed 5 >/dev/null || exit 99
# one batch holds all 16 records, so a run's first step sees exactly what eval scores
common="--data $tmp/d.jsonl --seq 64 --batch 16 --lr 1e-2 --backend cpu --adapter-dropout 0"
# shellcheck disable=SC2086
"$pesc" train --headless --model "$demo" $common --experts 4 --adapter-dim 8 --steps 4 \
  --save "$tmp/ck" >/dev/null 2>"$tmp/train.err" || { echo "training failed: $(cat "$tmp/train.err")"; exit 99; }
ck="$tmp/ck/step-00000004"

# eval_loss ARGS...: the loss of pesc eval --json (empty on failure)
eval_loss() { "$pesc" eval "$@" --data "$tmp/d.jsonl" --json 2>/dev/null | sed -n 's/.*"loss": \([^,]*\),.*/\1/p'; }
greedy() { "$pesc" generate "$@" --prompt "sort: dbca" --max-tokens 12 2>&1; }
# first_loss LOG: the loss of the first step record
first_loss() { grep -m 1 '"loss"' "$1" | sed -n 's/.*"loss":\([^,]*\),.*/\1/p'; }

# the checkpoint names its base, absolutely
if grep -q "\"model\": \"/.*data/demo\"" "$ck/state.json"; then
  pass "state.json names the base model by its absolute path"
else
  fail "state.json lacks the base model: $(grep '"model"' "$ck/state.json")"
fi

# ---- a PESC checkpoint, exported --------------------------------------------------------------
expect 0 "4 experts, top-2, adapter_dim 8" "export a PESC checkpoint" -- "$pesc" export "$tmp/ck" -o "$tmp/exp"
# on a terminal, the phases (loading, writing) show in a line the report then starts over
script -qec "'$pesc' export '$tmp/ck' -o '$tmp/exp-tty'" /dev/null </dev/null >"$tmp/tty.out" 2>&1
grep -q "pesc export: loading the base model from .*pesc export: writing $tmp/exp-tty" "$tmp/tty.out" &&
  tty_lines "$tmp/tty.out" | grep -q "^exported $tmp/ck" &&
  pass "export on a terminal: its phases, then the report on clean lines" ||
  fail "export on a terminal: $(cat -v "$tmp/tty.out" | head -c 400)"
if grep -q '"num_experts": 4' "$tmp/exp/config.json" && grep -q '"topk": 2' "$tmp/exp/config.json" &&
   grep -q '"adapter_dim": 8' "$tmp/exp/config.json" && grep -q '"moe_scaling": 0.25' "$tmp/exp/config.json" &&
   grep -q '"architectures": \[' "$tmp/exp/config.json" && grep -q '"rms_norm_eps": 1e-05\|"rms_norm_eps": 1e-5' "$tmp/exp/config.json" &&
   cmp -s "$demo/tokenizer.json" "$tmp/exp/tokenizer.json" && cmp -s "$demo/tokenizer_config.json" "$tmp/exp/tokenizer_config.json" &&
   [ -z "$(ls -A "$tmp" | grep '^\.tmp-')" ]; then
  pass "config.json has Camelidae's keys, the tokenizer files are copied, no temporary left"
else
  fail "exported directory: $(ls -A "$tmp/exp" "$tmp"); $(cat "$tmp/exp/config.json")"
fi
"$pesc" inspect "$tmp/exp/model.safetensors" >"$tmp/tensors"
if grep -q 'F32   \[4, 128\]  model.layers.3.mlp.moe_adapter.router.weight' "$tmp/tensors" &&
   grep -q '\[8, 128\]  model.layers.0.mlp.moe_adapter.experts.expert_3.adapter_down.weight' "$tmp/tensors" &&
   grep -q '\[128, 8\]  model.layers.2.mlp.moe_adapter.experts.expert_0.adapter_up.weight' "$tmp/tensors" &&
   grep -q 'model.layers.0.mlp.gate_proj.weight' "$tmp/tensors" && grep -q 'metadata format = pt' "$tmp/tensors"; then
  pass "model.safetensors holds base weights, routers and adapters under the Camelidae names"
else
  fail "exported tensors: $(head -c 600 "$tmp/tensors")"
fi

with_adapters=$(eval_loss --model "$demo" --adapters "$ck/trainables.safetensors")
exported=$(eval_loss --model "$tmp/exp")
dense=$(eval_loss --model "$demo")
if [ -n "$exported" ] && [ "$exported" = "$with_adapters" ] && [ "$exported" != "$dense" ]; then
  pass "eval: exported model $exported == base + adapters $with_adapters (dense base: $dense)"
else
  fail "eval: exported '$exported', base + adapters '$with_adapters', dense '$dense'"
fi
# --adapters may name the checkpoint, or the save directory (its newest checkpoint)
by_dir=$(eval_loss --model "$demo" --adapters "$ck")
by_save=$(eval_loss --model "$demo" --adapters "$tmp/ck")
[ -n "$by_dir" ] && [ "$by_dir" = "$with_adapters" ] && [ "$by_save" = "$with_adapters" ] \
  && pass "eval --adapters CHECKPOINT and --adapters SAVE_DIR load its trainables" \
  || fail "eval --adapters: file $with_adapters, checkpoint '$by_dir', save directory '$by_save'"
a=$(greedy --model "$demo" --adapters "$ck/trainables.safetensors")
b=$(greedy --model "$tmp/exp")
if [ -n "$a" ] && [ "$a" = "$b" ]; then
  pass "generate, greedy: the same answer from both ('$b')"
else
  fail "generate: base + adapters '$a', exported '$b'"
fi
# without --model, the base the checkpoint names; a trainables file elsewhere names none
[ "$(eval_loss --adapters "$ck")" = "$with_adapters" ] &&
  [ "$(greedy --adapters "$tmp/ck")" = "$a" ] &&
  pass "eval and generate --adapters CHECKPOINT alone: the run's base, the same loss and answer" ||
  fail "--adapters alone: loss '$(eval_loss --adapters "$ck")', answer '$(greedy --adapters "$tmp/ck")'"
cp "$ck/trainables.safetensors" "$tmp/loose.safetensors"
expect 1 "\-\-model DIR is required: .*loose.safetensors is a trainables file outside a checkpoint" \
  "--adapters FILE alone, outside a checkpoint" -- "$pesc" eval --adapters "$tmp/loose.safetensors" --data "$tmp/d.jsonl"
# a model directory's weights given as --adapters: that directory is the --model to give
expect 1 "\-\-adapters .*/demo/model.safetensors is the weights of the model directory .*/demo: give \-\-model" \
  "--adapters of a model directory's model.safetensors points to --model" -- \
  "$pesc" generate --adapters "$top_srcdir/data/demo/model.safetensors" --prompt "x"
expect 1 "has shape .* (.*step-00000004 trained on .*data/demo, not on .*llama-gqa-f32: leave out --model)" \
  "--adapters CHECKPOINT on another --model that it does not fit: why, in one line" -- \
  "$pesc" generate --model "$top_srcdir/tests/reference/data/llama-gqa-f32" --adapters "$ck" --prompt "x"
grep -q '"pesc_base_fingerprint": "[0-9a-f]\{16\}"' "$tmp/exp/config.json" &&
  pass "config.json records the base the exported run trained on" ||
  fail "no pesc_base_fingerprint in $(cat "$tmp/exp/config.json")"
mkdir "$tmp/badfp" && cp "$tmp/exp/"* "$tmp/badfp/" &&
  sed 's/"pesc_base_fingerprint": "[0-9a-f]*"/"pesc_base_fingerprint": "xyz"/' "$tmp/exp/config.json" >"$tmp/badfp/config.json"
expect 1 "badfp/config.json: \"pesc_base_fingerprint\" must be 16 hexadecimal digits" \
  "a malformed pesc_base_fingerprint is named" -- "$pesc" eval --model "$tmp/badfp" --data "$tmp/d.jsonl"
# a run in another template is scored and prompted in it unless --template says otherwise
# shellcheck disable=SC2086
"$pesc" train --headless --model "$demo" $common --experts 4 --adapter-dim 8 --steps 1 \
  --template chatml --save "$tmp/ckc" >/dev/null 2>&1
in_chatml=$(eval_loss --model "$demo" --adapters "$tmp/ckc" --template chatml)
[ -n "$in_chatml" ] && [ "$(eval_loss --adapters "$tmp/ckc")" = "$in_chatml" ] &&
  [ "$(eval_loss --adapters "$tmp/ckc" --template camelidae)" != "$in_chatml" ] &&
  pass "eval --adapters of a chatml run: in chatml ($in_chatml), unless --template is given" ||
  fail "eval of a chatml run: '$(eval_loss --adapters "$tmp/ckc")', with --template chatml '$in_chatml'"
# its export records the template in config.json, and is scored (and trained on) in it
"$pesc" export "$tmp/ckc" -o "$tmp/expc" >/dev/null 2>&1
grep -q '"pesc_template": "chatml"' "$tmp/expc/config.json" &&
  [ "$(eval_loss --model "$tmp/expc")" = "$in_chatml" ] &&
  "$pesc" inspect "$tmp/expc" | grep -q "^template  *chatml" &&
  pass "the export of a chatml run: pesc_template chatml, scored in it ($in_chatml)" ||
  fail "export of a chatml run: $(grep pesc_template "$tmp/expc/config.json"), loss '$(eval_loss --model "$tmp/expc")'"
# shellcheck disable=SC2086
"$pesc" train --headless --model "$tmp/expc" $common --steps 1 --save "$tmp/ckc2" >/dev/null 2>&1
grep -q '"template": "chatml"' "$tmp/ckc2/step-00000001/state.json" &&
  pass "training on from that export keeps its chatml template" ||
  fail "training on from a chatml export: $(grep '"template"' "$tmp/ckc2/step-00000001/state.json")"

# ---- further tuning from the exported model ---------------------------------------------------
# shellcheck disable=SC2086
"$pesc" train --headless --model "$tmp/exp" $common --steps 2 --log "$tmp/more.jsonl" --save "$tmp/ck2" >/dev/null 2>"$tmp/err"
status=$?
step0=$(first_loss "$tmp/more.jsonl")
if [ $status -eq 0 ] && [ -n "$step0" ] && close "$step0" "$exported" 1e-6 &&
   grep -q '"experts":4,"top_k":2,"adapter_dim":8' "$tmp/more.jsonl"; then
  pass "training on from the export: first loss $step0 == its eval loss $exported (4 experts taken from config.json)"
else
  fail "training on from the export: exit $status, first loss '$step0' vs '$exported': $(cat "$tmp/err")"
fi
# with new LoRA pairs (B = 0) the start is the same model
# shellcheck disable=SC2086
"$pesc" train --headless --model "$tmp/exp" $common --lora-rank 4 --steps 1 --log "$tmp/lora0.jsonl" >/dev/null 2>"$tmp/err"
step0=$(first_loss "$tmp/lora0.jsonl")
if [ -n "$step0" ] && close "$step0" "$exported" 1e-6; then
  pass "training on with --lora-rank 4: first loss $step0 == the export's $exported"
else
  fail "training on with LoRA: first loss '$step0' vs '$exported': $(cat "$tmp/err")"
fi
# shellcheck disable=SC2086
expect 1 "\-\-experts 8: .*num_experts 4" "training on with another --experts is refused" -- \
  "$pesc" train --headless --model "$tmp/exp" $common --experts 8 --steps 1
# shellcheck disable=SC2086
expect 1 "\-\-train full: .*crafted" "training on with --train full is refused" -- \
  "$pesc" train --headless --model "$tmp/exp" $common --train full --steps 1
# the continued run exports again, onto the exported model as its base
expect 0 "exported" "export a run that trained on from an export" -- "$pesc" export "$tmp/ck2" -o "$tmp/out2"
again=$(eval_loss --model "$tmp/out2")
cont=$(eval_loss --model "$tmp/exp" --adapters "$tmp/ck2/step-00000002/trainables.safetensors")
if [ -n "$again" ] && [ "$again" = "$cont" ] && [ "$again" != "$exported" ]; then
  pass "second export $again == export + its new adapters $cont"
else
  fail "second export '$again', export + adapters '$cont', first export '$exported'"
fi

# ---- LoRA merged ------------------------------------------------------------------------------
# shellcheck disable=SC2086
"$pesc" train --headless --model "$demo" $common --experts 4 --adapter-dim 8 --lora-rank 4 --steps 4 \
  --save "$tmp/ckl" >/dev/null 2>"$tmp/err" || fail "LoRA training: $(cat "$tmp/err")"
expect 0 "LoRA      rank 4, merged into the weights" "export merges LoRA" -- "$pesc" export "$tmp/ckl" -o "$tmp/outl"
with_lora=$(eval_loss --model "$demo" --adapters "$tmp/ckl/step-00000004/trainables.safetensors")
merged=$(eval_loss --model "$tmp/outl")
if [ -n "$merged" ] && close "$merged" "$with_lora" 1e-6 &&
   ! "$pesc" inspect "$tmp/outl/model.safetensors" | grep -q lora_; then
  pass "LoRA merged: exported $merged vs base + adapters $with_lora; no lora_ tensors left"
else
  fail "LoRA merge: exported '$merged', base + adapters '$with_lora'"
fi
# the merged weights really moved (their fingerprint is no longer the base's), so the run's
# checkpoint onto the export, which would merge the LoRA twice, is refused; an export that
# only added adapters keeps its base's weights and takes another run's (above)
expect 1 "\-\-model .*outl is an export with its run's tuning merged into its weights, of the base .*step-00000004 was trained on: .*leave out --adapters" \
  "--model EXPORT --adapters of its own LoRA run: refused, both ways out named" -- \
  "$pesc" eval --model "$tmp/outl" --adapters "$tmp/ckl" --data "$tmp/d.jsonl"
a=$(greedy --model "$demo" --adapters "$tmp/ckl/step-00000004/trainables.safetensors")
b=$(greedy --model "$tmp/outl")
[ -n "$a" ] && [ "$a" = "$b" ] && pass "generate, greedy, LoRA merged: the same answer ('$b')" ||
  fail "generate with LoRA: base + adapters '$a', exported '$b'"

# ---- full mode: a dense model with the trained weights ----------------------------------------
# shellcheck disable=SC2086
"$pesc" train --headless --model "$demo" $common --train full --lr 1e-3 --steps 2 --save "$tmp/ckf" >/dev/null 2>"$tmp/err" ||
  fail "full training: $(cat "$tmp/err")"
expect 0 "dense, every weight as trained" "export a --train full checkpoint" -- "$pesc" export "$tmp/ckf" -o "$tmp/outf"
full=$(eval_loss --model "$tmp/outf")
trained=$(eval_loss --model "$demo" --adapters "$tmp/ckf/step-00000002/trainables.safetensors")
if [ -n "$full" ] && [ "$full" = "$trained" ] && [ "$full" != "$dense" ] && ! grep -q num_experts "$tmp/outf/config.json"; then
  pass "full mode: exported dense model $full == the trained weights $trained"
else
  fail "full mode: exported '$full', trained '$trained', dense '$dense'"
fi
expect 1 "saved by a --train full run; this model is crafted (experts 4, top-k 2, adapter-dim 8, no LoRA): give it with the base" \
  "full-mode trainables on an exported PESC model: the mismatch named" -- \
  "$pesc" eval --model "$tmp/exp" --adapters "$tmp/ckf/step-00000002/trainables.safetensors" --data "$tmp/d.jsonl"

# ---- a BF16 base: weights training left alone stay BF16, LoRA-merged ones become F32 ------------
bf16="$top_srcdir/tests/reference/data/llama-bf16-tied"
"$pesc" train --headless --model "$bf16" --data "$bf16/records.jsonl" --seq 24 --batch 4 --experts 4 \
  --adapter-dim 8 --lora-rank 2 --lora-targets q --lr 1e-2 --backend cpu --steps 3 --save "$tmp/ckb" \
  >/dev/null 2>"$tmp/err" || fail "BF16 training: $(cat "$tmp/err")"
expect 0 "exported" "export a run on a BF16 base" -- "$pesc" export "$tmp/ckb" -o "$tmp/outb"
kept=$("$pesc" eval --model "$bf16" --adapters "$tmp/ckb/step-00000003/trainables.safetensors" \
  --data "$bf16/records.jsonl" --json | sed -n 's/.*"loss": \([^,]*\),.*/\1/p')
outb=$("$pesc" eval --model "$tmp/outb" --data "$bf16/records.jsonl" --json | sed -n 's/.*"loss": \([^,]*\),.*/\1/p')
# 29 base tensors: the 3 q_proj merged (F32), 26 copied as BF16; 3 routers + 24 adapters F32
if "$pesc" inspect "$tmp/outb" | grep -q "dtypes         F32 x30 BF16 x26" && [ -n "$outb" ] &&
   close "$outb" "$kept" 1e-6 && grep -q '"type": "linear"' "$tmp/outb/config.json"; then
  pass "BF16 base: 26 untouched weights stay BF16, merged ones F32; loss $outb vs $kept"
else
  fail "BF16 base: $("$pesc" inspect "$tmp/outb" 2>&1 | grep dtypes), loss '$outb' vs '$kept'"
fi

# ---- Gemma 3, OLMo 2 and Gemma 2: the experts' mix inside their post-FFN norm; a --train full
# run's norms written as stored (Gemma's (1 + w) as its w), the files' own convention; Gemma
# 2's softcaps kept in the export's config.json ------------------------------------------------
for family in gemma3 olmo2 gemma2; do
  fam="$top_srcdir/tests/reference/data/$family-f32"
  family_loss() {
    "$pesc" eval --data "$fam/records.jsonl" --json "$@" | sed -n 's/.*"loss": \([^,]*\),.*/\1/p'
  }
  for mode in pesc full; do
    if [ $mode = pesc ]; then flags="--experts 4 --adapter-dim 8 --lora-rank 2"; else flags="--train full"; fi
    # shellcheck disable=SC2086
    "$pesc" train --headless --model "$fam" --data "$fam/records.jsonl" --seq 24 --batch 4 $flags \
      --lr 1e-2 --backend cpu --steps 3 --save "$tmp/ck$family$mode" >/dev/null 2>"$tmp/err" ||
      fail "$family $mode training: $(cat "$tmp/err")"
    "$pesc" export "$tmp/ck$family$mode" -o "$tmp/out$family$mode" >/dev/null 2>"$tmp/err" ||
      fail "$family $mode export: $(cat "$tmp/err")"
    kept=$(family_loss --model "$fam" --adapters "$tmp/ck$family$mode/step-00000003/trainables.safetensors")
    out=$(family_loss --model "$tmp/out$family$mode")
    base=$(family_loss --model "$fam")
    arch=$(sed -n 's/.*"\([A-Za-z0-9]*ForCausalLM\)".*/\1/p' "$fam/config.json")
    if [ -n "$out" ] && close "$out" "$kept" 1e-6 && ! close "$out" "$base" 1e-4 &&
       grep -q "\"$arch\"" "$tmp/out$family$mode/config.json"; then
      pass "$family $mode: the export's loss $out is the run's $kept (base $base)"
    else
      fail "$family $mode: export '$out', run '$kept', base '$base'"
    fi
  done
done
# Gemma3ForConditionalGeneration (the hub's layout, BF16): its text model exported alone, as
# Gemma3ForCausalLM, the untouched weights still BF16 (their embedding scale rounded so again)
mm="$top_srcdir/tests/reference/data/gemma3-mm-bf16"
"$pesc" train --headless --model "$mm" --data "$mm/records.jsonl" --seq 24 --batch 4 --experts 4 \
  --adapter-dim 8 --lr 1e-2 --backend cpu --steps 3 --save "$tmp/ckmm" >/dev/null 2>"$tmp/err" ||
  fail "Gemma 3 multimodal training: $(cat "$tmp/err")"
"$pesc" export "$tmp/ckmm" -o "$tmp/outmm" >/dev/null 2>"$tmp/err" ||
  fail "Gemma 3 multimodal export: $(cat "$tmp/err")"
kept=$("$pesc" eval --model "$mm" --adapters "$tmp/ckmm" --data "$mm/records.jsonl" --json |
  sed -n 's/.*"loss": \([^,]*\),.*/\1/p')
out=$("$pesc" eval --model "$tmp/outmm" --data "$mm/records.jsonl" --json | sed -n 's/.*"loss": \([^,]*\),.*/\1/p')
if [ -n "$out" ] && close "$out" "$kept" 1e-6 && grep -q '"Gemma3ForCausalLM"' "$tmp/outmm/config.json" &&
   ! grep -q vision_config "$tmp/outmm/config.json" &&
   "$pesc" inspect "$tmp/outmm" | grep -q "dtypes         F32 x18 BF16 x28$" &&
   ! "$pesc" inspect "$tmp/outmm/model.safetensors" | grep -q "vision_tower\|language_model"; then
  pass "Gemma 3 multimodal: exported as its text model, loss $out is the run's $kept"
else
  fail "Gemma 3 multimodal export: loss '$out', the run's '$kept': $("$pesc" inspect "$tmp/outmm" 2>&1 | grep -E 'architecture|dtypes')"
fi

# ---- bad inputs: one line, the CLI contract's exit codes --------------------------------------
expect 2 "CHECKPOINT is required" "export without a checkpoint" -- "$pesc" export -o "$tmp/x"
expect 2 "\-o DIR is required" "export without -o" -- "$pesc" export "$tmp/ck"
expect 1 "$tmp/nowhere: no such checkpoint" "nonexistent checkpoint" -- "$pesc" export "$tmp/nowhere" -o "$tmp/x"
mkdir "$tmp/empty"
expect 1 "no checkpoint here" "a directory that is no checkpoint" -- "$pesc" export "$tmp/empty" -o "$tmp/x"
# a checkpoint from before export: no base in state.json
cp -r "$ck" "$tmp/old"
sed -e '/"model": /d' "$ck/state.json" >"$tmp/old/state.json"   # keys follow it: still JSON
expect 1 "does not say which base model.*\-\-model DIR" "old checkpoint without --model" -- "$pesc" export "$tmp/old" -o "$tmp/x"
expect 0 "exported" "old checkpoint with --model" -- "$pesc" export "$tmp/old" -o "$tmp/outold" --model "$demo"
[ "$(eval_loss --model "$tmp/outold")" = "$exported" ] && pass "old checkpoint + --model exports the same model" ||
  fail "old checkpoint + --model: a different model"
expect 1 "trained on another base model" "--model names another base" -- \
  "$pesc" export "$ck" -o "$tmp/x" --model "$top_srcdir/tests/reference/data/llama-gqa-f32"
# a damaged tokenizer.json of the base is refused before anything is written (it was copied
# into the export, whose first use then failed)
cp -r "$demo" "$tmp/badtok" && printf '{"version": "1.0",' >"$tmp/badtok/tokenizer.json"
expect 1 "the base's tokenizer, which export copies into the model directory: .*badtok/tokenizer.json is not valid JSON" \
  "a base with a damaged tokenizer.json is refused" -- "$pesc" export "$ck" -o "$tmp/xbt" --model "$tmp/badtok"
[ ! -e "$tmp/xbt" ] || fail "a refused export left $tmp/xbt behind"
# an existing, non-empty DIR is kept unless --force; --force replaces an earlier export (a
# model directory) only, never a run's --save directory or a directory of other files
mkdir "$tmp/taken" && echo keep >"$tmp/taken/marker" && echo '{}' >"$tmp/taken/config.json"
mkdir "$tmp/notes" && echo mine >"$tmp/notes/notes.txt"
expect 1 "notes is no earlier export (it has no config.json)" "--force over a directory of other files" -- \
  "$pesc" export "$ck" -o "$tmp/notes" --force
[ "$(cat "$tmp/notes/notes.txt")" = mine ] || fail "--force over other files: they were touched"
mkdir -p "$tmp/otherrun/step-00000100" && : >"$tmp/otherrun/.lock"
expect 1 "otherrun holds a run's checkpoints (.*): \-\-force replaces an earlier export, never" \
  "--force over another run's --save directory" -- "$pesc" export "$ck" -o "$tmp/otherrun" --force
[ -d "$tmp/otherrun/step-00000100" ] || fail "--force over a run: its checkpoint was removed"
expect 1 "already exists and is not empty.*\-\-force" "DIR exists" -- "$pesc" export "$ck" -o "$tmp/taken"
[ -f "$tmp/taken/marker" ] && pass "the existing DIR is untouched" || fail "the existing DIR was changed"
expect 0 "exported" "--force replaces DIR" -- "$pesc" export "$ck" -o "$tmp/taken" --force
echo precious >"$tmp/afile"
expect 1 "afile is a file, not a directory" "-o naming a file is refused, even with --force" -- \
  "$pesc" export "$ck" -o "$tmp/afile" --force
[ "$(cat "$tmp/afile")" = precious ] || fail "-o FILE --force: the file was touched"
# a link is named as one (it was called a file); inside the checkpoint, --keep would delete it
mkdir "$tmp/real" && ln -s real "$tmp/link"
expect 1 "link is a symbolic link; name the directory itself" "-o naming a link to a directory" -- \
  "$pesc" export "$ck" -o "$tmp/link"
expect 1 "optimizer.safetensors holds the optimizer's state (AdamW moments), not trainables: give the checkpoint" \
  "--adapters naming a checkpoint's optimizer file says which file to give" -- \
  "$pesc" eval --adapters "$ck/optimizer.safetensors" --data "$tmp/d.jsonl"
expect 1 "state.json is JSON text, not a safetensors file: give the directory it is in" \
  "--adapters naming a checkpoint's state.json says to give its directory" -- \
  "$pesc" eval --adapters "$ck/state.json" --data "$tmp/d.jsonl"
expect 1 "lies inside the checkpoint" "-o inside the checkpoint is refused" -- \
  "$pesc" export "$ck" -o "$ck/exported"
[ ! -e "$ck/exported" ] && pass "nothing written inside the checkpoint" || fail "$ck/exported was written"
[ ! -e "$tmp/taken/marker" ] && [ -f "$tmp/taken/model.safetensors" ] && pass "--force: the new directory is in place" ||
  fail "--force: $(ls "$tmp/taken")"
expect 1 "holds .*step-00000004" "-o over the checkpoint itself" -- "$pesc" export "$ck" -o "$tmp/ck" --force
[ -f "$ck/state.json" ] && pass "the checkpoint survived" || fail "the checkpoint was removed"
[ -z "$(ls -A "$tmp" | grep '^\.tmp-')" ] && pass "no temporary directory left after the failures" ||
  fail "temporary directories left: $(ls -A "$tmp")"
[ ! -e "$tmp/x" ] && pass "no DIR written by a failed export" || fail "a failed export wrote $tmp/x"

# a write that fails mid-file (past a 200-block file size limit, which pesc does not die of):
# one line that names the limit, and DIR never appears half-written
mkdir "$tmp/cut"
(ulimit -f 200; exec "$pesc" export "$ck" -o "$tmp/cut/model") >/dev/null 2>"$tmp/err"
status=$?
if [ $status -eq 1 ] && grep -q "File too large; .*(ulimit -f)" "$tmp/err" &&
   [ "$(wc -l <"$tmp/err")" -eq 1 ] && [ -z "$(ls -A "$tmp/cut")" ]; then
  pass "an export past the file size limit says so and leaves nothing"
else
  fail "export past ulimit -f: exit $status, $(cat "$tmp/err"), left: $(ls -A "$tmp/cut")"
fi
# ... and one killed mid-write leaves its temporary, which the next export clears
dead=$(sh -c 'echo $$')
mkdir "$tmp/cut/.tmp-model-$dead" && : >"$tmp/cut/.tmp-model-$dead/model.safetensors"
"$pesc" export "$ck" -o "$tmp/cut/model" >/dev/null 2>&1
[ "$(ls -A "$tmp/cut")" = model ] && pass "the next export clears a dead one's temporary" ||
  fail "a dead export's temporary: $(ls -A "$tmp/cut")"

# a damaged export: a router renamed in the header, or config.json that does not fit the tensors
cp -r "$tmp/exp" "$tmp/bad"
off=$(grep -boa 'model.layers.0.mlp.moe_adapter.router' "$tmp/bad/model.safetensors" | head -n 1 | cut -d: -f1)
printf 'R' | dd of="$tmp/bad/model.safetensors" bs=1 seek=$((off + 31)) conv=notrunc 2>/dev/null
expect 1 "tensor model.layers.0.mlp.moe_adapter.router.weight is missing" "a missing router tensor" -- \
  "$pesc" eval --model "$tmp/bad" --data "$tmp/d.jsonl"
cp -r "$tmp/exp" "$tmp/bad2"
sed -i 's/"adapter_dim": 8/"adapter_dim": 16/' "$tmp/bad2/config.json"
expect 1 "adapter_down.weight has shape \[8, 128\] but config.json implies \[16, 128\]" "a misshapen adapter" -- \
  "$pesc" generate --model "$tmp/bad2" --prompt hi

# the crafting in a trainables file's metadata is held to its flags' ranges, naming the file
# and the key: num_experts 1000000 failed as "out of memory" without either, 300 experts and a
# scale of -5 or 1e38 loaded; the file rewritten with its own value loads, so the edits are
# what is refused
for edit in num_experts=4 num_experts=1000000 num_experts=300 topk=0 adapter_dim=70000 \
            moe_scaling=-5 moe_scaling=1e38 moe_scaling=nan lora_rank=70000; do
  cp "$ck/trainables.safetensors" "$tmp/meta.safetensors"
  st_edit "$tmp/meta.safetensors" "$edit" || fail "st_edit $edit"
  if [ "$edit" = num_experts=4 ]; then
    want=0 pattern='"loss"'
  else
    want=1 pattern="meta.safetensors: __metadata__ \"${edit%%=*}\" = \"${edit#*=}\" must be .* as \-\-"
  fi
  expect $want "$pattern" "trainables metadata $edit" -- \
    "$pesc" eval --model "$demo" --adapters "$tmp/meta.safetensors" --data "$tmp/d.jsonl" --json
done

# the export's model.safetensors is a model, not a trainables file: --adapters refuses it (taken
# as --train full weights, its routers and adapters were dropped without a word)
expect 1 "$tmp/exp/model.safetensors is an exported PESC model.*give its directory as \-\-model $tmp/exp, without \-\-adapters" \
  "--adapters EXPORT/model.safetensors is refused, naming the directory" -- \
  "$pesc" eval --model "$demo" --adapters "$tmp/exp/model.safetensors" --data "$tmp/d.jsonl"
expect 1 "is an exported PESC model" "... on the exported model too" -- \
  "$pesc" generate --model "$tmp/exp" --adapters "$tmp/exp/model.safetensors" --prompt hi
# a base whose config.json starts with a UTF-8 byte order mark exports the same model
mkdir "$tmp/bombase"
for f in model.safetensors tokenizer.json tokenizer_config.json; do cp "$demo/$f" "$tmp/bombase/"; done
{ printf '\357\273\277'; cat "$demo/config.json"; } >"$tmp/bombase/config.json"
expect 0 "exported" "export onto a base whose config.json has a byte order mark" -- \
  "$pesc" export "$ck" -o "$tmp/outbom" --model "$tmp/bombase"
[ "$(eval_loss --model "$tmp/outbom")" = "$exported" ] && pass "... and it is the same model" ||
  fail "a BOM base exports another model: $(eval_loss --model "$tmp/outbom") vs $exported"

# ---- inspect ------------------------------------------------------------------------------------
expect 0 "crafted       PESC: 4 experts, top-2, adapter_dim 8" "inspect an exported model" -- "$pesc" inspect "$tmp/exp"
expect 0 "base          /.*data/demo" "inspect a checkpoint" -- "$pesc" inspect "$ck"
# an export the user wrote into the save directory as step-4 is not a checkpoint: inspect does
# not list it, and a run that continues the directory is not refused for it
cp -r "$tmp/ck" "$tmp/ck4"
expect 0 "step-4 beside step-00000004" "export into SAVE/step-4" -- sh -c \
  '"$0" export "$1" -o "$1/step-4" >/dev/null && echo "step-4 beside $(ls "$1" | grep -v step-4)"' "$pesc" "$tmp/ck4"
expect 0 "save dir      $tmp/ck4: 1 checkpoint: step-00000004$" "inspect SAVE lists only pesc's step-N" -- \
  "$pesc" inspect "$tmp/ck4"
# shellcheck disable=SC2086
expect 0 "step 5/5" "a run continues SAVE beside its step-4 export" -- "$pesc" train --headless \
  --model "$demo" $common --experts 4 --adapter-dim 8 --steps 5 --resume "$tmp/ck4" --save "$tmp/ck4" --keep 1
[ -f "$tmp/ck4/step-4/model.safetensors" ] && [ -f "$tmp/ck4/step-00000005/state.json" ] &&
  [ ! -e "$tmp/ck4/step-00000004" ] && pass "--keep 1 rotated step-00000004 out and left the export" ||
  fail "after --keep 1: $(ls "$tmp/ck4")"
expect 0 "LoRA          rank 4" "inspect a save directory (newest checkpoint)" -- "$pesc" inspect "$tmp/ckl"
expect 0 "not recorded" "inspect an old checkpoint" -- "$pesc" inspect "$tmp/old"
rm -rf "$tmp/broken" && cp -r "$ck" "$tmp/broken" && printf 'junk' >"$tmp/broken/trainables.safetensors"
expect 1 "trainables.safetensors" "inspect of a checkpoint with damaged trainables fails in one line" -- \
  "$pesc" inspect "$tmp/broken"

# a file of a checkpoint as CHECKPOINT: the message says to name its directory, not
# "Not a directory"
expect 1 "trainables.safetensors is a file, not a checkpoint (give the step-N directory" \
  "export of a checkpoint's file names the directory to give" -- \
  "$pesc" export "$ck/trainables.safetensors" -o "$tmp/x"

# a run given --tokenizer FILE: the export carries that tokenizer and the tokenizer_config.json
# beside it (BOS, EOS, the chat template), or none when it had none, never the base's
mkdir -p "$tmp/tok-with" "$tmp/tok-bare"
cp "$demo/tokenizer.json" "$tmp/tok-with/" && cp "$demo/tokenizer.json" "$tmp/tok-bare/"
sed 's/"model_max_length": 512/"model_max_length": 256/' "$demo/tokenizer_config.json" >"$tmp/tok-with/tokenizer_config.json"
for t in with bare; do
  # shellcheck disable=SC2086
  "$pesc" train --headless --model "$demo" $common --tokenizer "$tmp/tok-$t/tokenizer.json" \
    --experts 4 --adapter-dim 8 --steps 1 --save "$tmp/ck-$t" >/dev/null 2>&1 &&
    "$pesc" export "$tmp/ck-$t" -o "$tmp/exp-$t" >/dev/null 2>&1
done
cmp -s "$tmp/tok-with/tokenizer_config.json" "$tmp/exp-with/tokenizer_config.json" &&
  [ -f "$tmp/exp-bare/tokenizer.json" ] && [ ! -e "$tmp/exp-bare/tokenizer_config.json" ] &&
  pass "export of a --tokenizer run: its tokenizer_config.json, or none, not the base's" ||
  fail "export of a --tokenizer run: $(ls "$tmp/exp-with" "$tmp/exp-bare" 2>&1 | tr '\n' ' ')"

# ---- Phi-3: q|k|v and gate|up joined in the files, read as parts and written joined again ------
phi="$top_srcdir/tests/reference/data/phi3-fused-bf16"
# LoRA on q alone: qkv_proj is joined from the merged weights, gate_up_proj copied as it was
# (merged, the loss moves in the 7th digit, as the LoRA export's above)
expect 0 "step 3/3" "train on a Phi-3 model with LoRA on q" -- "$pesc" train --headless \
  --model "$phi" --data "$phi/records.jsonl" --seq 32 --batch 5 --steps 3 --lr 1e-2 --experts 4 \
  --adapter-dim 8 --lora-rank 4 --lora-targets q --backend cpu --save "$tmp/phick"
expect 0 "exported" "export the Phi-3 checkpoint" -- "$pesc" export "$tmp/phick" -o "$tmp/phiout"
"$pesc" inspect "$tmp/phiout/model.safetensors" >"$tmp/phitensors"
if grep -q 'F32   \[128, 64\]  model.layers.1.self_attn.qkv_proj.weight' "$tmp/phitensors" &&
   grep -q 'BF16  \[160, 64\]  model.layers.0.mlp.gate_up_proj.weight' "$tmp/phitensors" &&
   ! grep -q 'self_attn[.][qkv]_proj\|mlp[.]gate_proj\|mlp[.]up_proj' "$tmp/phitensors"; then
  pass "a Phi-3 export joins q, k, v (merged) and gate, up (as they were), as Phi-3 files do"
else
  fail "Phi-3 export tensors: $(grep 'layers.0' "$tmp/phitensors" | head -8 | tr '\n' ' ')"
fi
phi_eval() { "$pesc" eval "$@" --data "$phi/records.jsonl" --json 2>&1 | sed -n 's/.*"loss": \([^,]*\),.*/\1/p'; }
phi_tuned=$(phi_eval --model "$phi" --adapters "$tmp/phick")
phi_exported=$(phi_eval --model "$tmp/phiout")
phi_base=$(phi_eval --model "$phi")
[ -n "$phi_exported" ] && close "$phi_exported" "$phi_tuned" 1e-6 && ! close "$phi_base" "$phi_tuned" 1e-3 &&
  pass "the Phi-3 export computes what base + adapters compute ($phi_exported)" ||
  fail "Phi-3: export $phi_exported, base + adapters $phi_tuned, base $phi_base"

echo "$failures failure(s)"
[ "$failures" -eq 0 ]
