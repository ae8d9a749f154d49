#!/usr/bin/env bash
# Builds the text corpus of the embedded model from Debian packages (public-domain English):
#   bible-kjv-text (the King James Version) read with the `bible` program of bible-kjv, and,
#   with --with-fortunes, the fortunes-min collection (training split only).
#
# usage: tools/train_embedded/prepare_corpus.sh OUT_DIR [--with-fortunes]
#
# Writes into OUT_DIR:
#   train.txt    chapters used for training (and for the tokenizer and the unigram baseline)
#   valid.txt    every 20th chapter (index % 20 == 9): early-stopping checks only, never trained on
#   heldout.txt  every 20th chapter (index % 20 == 19): the reported held-out split, never trained
#                on and never used to pick anything
#   manifest.json  chapter lists per split, byte counts and sha256 of each file
# A chapter is a document: "Book N" on its first line, then one verse per line (no verse
# numbers); documents are separated by one empty line. Idempotent: packages are installed only
# when missing, and the files are rewritten from scratch each run.
set -euo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: $0 OUT_DIR [--with-fortunes]" >&2
  exit 2
fi
out_dir=$1
shift
with_fortunes=0
for arg in "$@"; do
  case "$arg" in
    --with-fortunes) with_fortunes=1 ;;
    *) echo "prepare_corpus.sh: unknown argument '$arg'" >&2; exit 2 ;;
  esac
done

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
packages=(bible-kjv bible-kjv-text)
[[ $with_fortunes == 1 ]] && packages+=(fortunes-min)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "prepare_corpus.sh: installing ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -ne 0 ]] && sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}"
fi

mkdir -p "$out_dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Pretty-printed output with a huge line width: a "Book N" line per chapter, then one
# "  V text" line per verse. The whole canon is one verse range.
bible -l1000000 'gen1:1-rev22:21' > "$tmp/kjv.txt"

fortune_args=()
if [[ $with_fortunes == 1 ]]; then
  for f in /usr/share/games/fortunes/fortunes /usr/share/games/fortunes/literature \
           /usr/share/games/fortunes/riddles; do
    [[ -f $f ]] && fortune_args+=(--fortunes "$f")
  done
fi

python3 "$here/split_corpus.py" --kjv "$tmp/kjv.txt" --out "$out_dir" "${fortune_args[@]}"
