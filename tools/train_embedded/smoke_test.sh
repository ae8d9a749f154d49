#!/usr/bin/env bash
# End-to-end check of the embedded-model pipeline on the CPU at a tiny scale (issue 3, item 6).
#
# usage: tools/train_embedded/smoke_test.sh [WORK_DIR]   (run from the repository root)
#
# Runs every script the GPU job runs, with the "tiny" preset and a 60 s budget: corpus ->
# tokenizer (must equal the committed models/moex-kjv-dsv3/tokenizer.json) -> train.py (sharded
# save: index + several shards, like the real model) -> verify_checkpoint.py (Hub names, dtypes,
# reload with AutoModelForCausalLM, tokenizer round trip, file limits) -> eval_hf.py (must give the
# held-out loss train.py reported) -> the fused-experts conversion on a checkpoint written with
# fused names on purpose. Exits non-zero on the first failure.
set -euo pipefail
work=${1:-/tmp/moex_embedded_smoke}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
rm -rf "$work"
mkdir -p "$work"
start=$(date +%s)

echo "== corpus"
"$here/prepare_corpus.sh" "$work/corpus"

echo "== tokenizer"
python3 "$here/train_tokenizer.py" --corpus "$work/corpus" --out "$work/tokenizer.json"
if [[ -f models/moex-kjv-dsv3/tokenizer.json ]]; then
  cmp "$work/tokenizer.json" models/moex-kjv-dsv3/tokenizer.json \
    && echo "tokenizer.json is identical to models/moex-kjv-dsv3/tokenizer.json"
fi

echo "== train (tiny preset, 60 s)"
python3 "$here/train.py" --corpus "$work/corpus" --tokenizer "$work/tokenizer.json" --out "$work/model" \
  --preset tiny --batch-size 8 --seq-len 128 --time-budget-s 60 --sweep 0.02:0.1,0.04:0.0 \
  --valid-windows 8 --evals-per-epoch 100 --warmup-steps 5 --calibration-steps 5 --log-every 5 \
  --max-shard-size 1MB 2>&1 | grep -v "Writing model shards\|Loading weights"
ls -l "$work/model"

echo "== verify"
python3 "$here/verify_checkpoint.py" --model "$work/model" --text "$work/corpus/heldout.txt" 2>&1 | grep -v "Loading weights"

echo "== eval_hf (must match train.py's held-out number)"
python3 "$here/eval_hf.py" --model "$work/model" --text "$work/corpus/heldout.txt" --train "$work/corpus/train.txt" \
  --json "$work/eval_hf.json" 2>&1 | grep -v "Loading weights"
python3 - "$work" <<'EOF'
import json, sys
work = sys.argv[1]
t = json.load(open(f"{work}/model/training.json"))["results"]
e = json.load(open(f"{work}/eval_hf.json"))
a, b = t["heldout_hf_fp32"]["mean_nll"], e["hf"]["mean_nll"]
ua, ub = t["heldout_unigram_add_one"]["mean_nll"], e["unigram_add_one"]["mean_nll"]
print(f"held-out mean NLL: train.py {a:.6f}, eval_hf.py {b:.6f}; unigram {ua:.6f} / {ub:.6f}")
assert abs(a - b) < 1e-4 and abs(ua - ub) < 1e-9, "train.py and eval_hf.py disagree"
assert t["heldout_hf_fp32"]["predicted_tokens"] == e["hf"]["predicted_tokens"]
EOF

echo "== fused experts are converted back to Hub names"
python3 - "$work" "$here" <<'EOF'
import json, os, shutil, sys
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM
work, here = sys.argv[1], sys.argv[2]
sys.path.insert(0, here)
import common
src, dst = f"{work}/model", f"{work}/fused"
ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, experts_implementation="eager")
os.makedirs(dst)
for f in ("config.json", "generation_config.json", "tokenizer.json"):
    shutil.copy(f"{src}/{f}", dst)
# Write the in-memory (fused) names on purpose, split over two shards with an index.
state = {k: v.to(torch.float32 if k.endswith("e_score_correction_bias") else torch.bfloat16).contiguous()
         for k, v in ref.state_dict().items()}
keys = sorted(state)
assert any(common.FUSED_EXPERTS_RE.match(k) for k in keys), "expected fused expert tensors in memory"
halves = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
          "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
weight_map = {}
for name, ks in halves.items():
    save_file({k: state[k] for k in ks}, f"{dst}/{name}", metadata={"format": "pt"})
    weight_map.update({k: name for k in ks})
json.dump({"metadata": {}, "weight_map": weight_map}, open(f"{dst}/model.safetensors.index.json", "w"))
n = common.unfuse_experts(dst)
problems = common.check_checkpoint(dst)
assert n > 0 and not problems, (n, problems)
got = AutoModelForCausalLM.from_pretrained(dst, dtype=torch.float32, experts_implementation="eager")
x = torch.randint(0, ref.config.vocab_size, (1, 32))
with torch.no_grad():
    same = torch.equal(ref(input_ids=x).logits, got(input_ids=x).logits)
assert same, "logits differ after the conversion"
print(f"converted {n} fused tensors; names are the Hub's; logits identical after reload")
EOF
echo "smoke test passed in $(( $(date +%s) - start )) s"
