#!/usr/bin/env python3
"""Trains the byte-level BPE tokenizer of the embedded model on the corpus's train split.

usage: train_tokenizer.py --corpus .deps/corpus --out models/moex-kjv-dsv3/tokenizer.json [--vocab-size 6144]

The tokenizer is GPT-2's scheme, spelled out so that an engine can read it from tokenizer.json:
no normalizer; a Split pre-tokenizer with GPT-2's regex (behavior "isolated") followed by
ByteLevel(add_prefix_space=false, use_regex=false); BPE over the 256 byte symbols; ByteLevel
decoder; no post-processor (nothing is added around the text). Id 0 is <|endoftext|>, the only
special token, used as both BOS and EOS. Only train.txt is read: the held-out text stays unseen.
"""
import argparse
import os
import sys

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import read_documents  # noqa: E402

EOS_TOKEN = "<|endoftext|>"
# GPT-2's pre-tokenizer pattern (contractions, letter runs, digit runs, punctuation runs, spaces).
GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def build_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GPT2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True, help="folder written by prepare_corpus.sh")
    ap.add_argument("--out", required=True, help="path of the tokenizer.json to write")
    ap.add_argument("--vocab-size", type=int, default=6144)
    ap.add_argument("--min-frequency", type=int, default=2)
    args = ap.parse_args()
    if not 4096 <= args.vocab_size <= 8192:
        print(f"train_tokenizer.py: --vocab-size {args.vocab_size} is outside 4096..8192", file=sys.stderr)
        return 2

    docs = read_documents(os.path.join(args.corpus, "train.txt"))
    tok = build_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=args.vocab_size,
        min_frequency=args.min_frequency,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    if tok.token_to_id(EOS_TOKEN) != 0:
        print(f"train_tokenizer.py: {EOS_TOKEN} got id {tok.token_to_id(EOS_TOKEN)}, expected 0", file=sys.stderr)
        return 1

    # Round trip over every training document: byte-level BPE must give the text back exactly.
    encodings = tok.encode_batch(docs, add_special_tokens=False)
    decoded = tok.decode_batch([e.ids for e in encodings], skip_special_tokens=False)
    bad = sum(1 for d, r in zip(docs, decoded) if d != r)
    if bad:
        print(f"train_tokenizer.py: {bad} of {len(docs)} documents do not round-trip", file=sys.stderr)
        return 1

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tok.save(args.out, pretty=True)
    n_tokens = sum(len(e.ids) for e in encodings)
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    print(f"tokenizer: vocab {tok.get_vocab_size()}, {len(docs)} train documents, {n_tokens} tokens, "
          f"{n_bytes / n_tokens:.2f} bytes/token -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
