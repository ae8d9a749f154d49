#!/usr/bin/env bash
# The GPU job of the embedded model (issue 3), for a fresh GPU machine with no network.
#
# usage (from the repository root):  tools/train_embedded/run_on_device.sh [extra train.py flags]
# environment: OUT (required: output folder), CORPUS (default .deps/corpus),
#              TOKENIZER (default models/moex-kjv-dsv3/tokenizer.json), TIME_BUDGET_S (default 360)
#
# Needs python3 with torch (CUDA), transformers >= 5.17, tokenizers, safetensors; the corpus
# folder written by prepare_corpus.sh (train.txt, valid.txt, heldout.txt, manifest.json) and the
# committed tokenizer.json. Writes, flat into $OUT (8 files, each below 16 MiB):
#   config.json  generation_config.json  model.safetensors.index.json
#   model-0000{1,2,3}-of-00003.safetensors  tokenizer.json
#   training.json (settings, versions, token counts, wall times, loss and valid curves, held-out
#                  results, expert load)
# Timing: ~20 s of start-up, the training runs within TIME_BUDGET_S, ~30 s of saving, held-out
# evaluation and checks; a timeout stops it all at 530 s in any case.
set -uo pipefail
: "${OUT:?set OUT to the output folder}"
corpus=${CORPUS:-.deps/corpus}
tokenizer=${TOKENIZER:-models/moex-kjv-dsv3/tokenizer.json}
budget=${TIME_BUDGET_S:-360}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

for f in "$corpus/train.txt" "$corpus/valid.txt" "$corpus/heldout.txt" "$tokenizer"; do
  if [[ ! -f $f ]]; then
    echo "run_on_device.sh: $f is missing" >&2
    exit 2
  fi
done
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
start=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"

timeout --signal=TERM 530 python3 "$here/train.py" --corpus "$corpus" --tokenizer "$tokenizer" --out "$OUT" \
  --time-budget-s "$budget" "$@"
train_status=$?
echo "train.py exit status $train_status after $(( $(date +%s) - start )) s"

verify_status=1
if [[ -f "$OUT/config.json" ]]; then
  python3 "$here/verify_checkpoint.py" --model "$OUT" --text "$corpus/heldout.txt"
  verify_status=$?
fi
ls -l "$OUT"
echo "run_on_device.sh: done in $(( $(date +%s) - start )) s (train $train_status, verify $verify_status)"
[[ $train_status == 0 && $verify_status == 0 ]]
