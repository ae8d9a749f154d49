#!/usr/bin/env bash
# Quick start, part 1: set up, build, and generate text with the embedded default model.
#   scripts/run.sh [moex run flags...]    e.g. scripts/run.sh --prompt "And God said" -n 80
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh build
if [ $# -eq 0 ]; then
  set -- --prompt "And it came to pass" -n 120 --temperature 0.8 --top-p 0.95 --seed 1
fi
exec build/tools/moex run "$@"
