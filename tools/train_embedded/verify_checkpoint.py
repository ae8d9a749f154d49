#!/usr/bin/env python3
"""Checks a folder written by train.py (or run_on_device.sh) before it becomes models/moex-kjv-dsv3.

usage: verify_checkpoint.py --model DIR [--text .deps/corpus/heldout.txt]

Checks: the issue-3 architecture points in config.json; tensor names equal to the Hub's
per-expert DeepseekV3 names, bf16 weights with an fp32 e_score_correction_bias; the checkpoint
<= 40 MB; at most 8 files, each below 16 MiB; the model reloads with AutoModelForCausalLM with no
missing or unexpected weights and gives finite logits; the tokenizer is byte-level BPE with
<|endoftext|> = 0 and round-trips the given text; generation_config.json names EOS 0.
Prints one line per problem and exits 1 if there is any.
"""
import argparse
import json
import os
import sys

import torch
from tokenizers import Tokenizer
import transformers
from transformers import AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

transformers.utils.logging.disable_progress_bar()

MAX_FILES = 8


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--text", default=".deps/corpus/heldout.txt", help="text the tokenizer must round-trip")
    args = ap.parse_args()
    d = args.model
    problems = common.check_checkpoint(d)

    files = sorted(f for f in os.listdir(d) if os.path.isfile(os.path.join(d, f)))
    if len(files) > MAX_FILES:
        problems.append(f"{d}: {len(files)} files, more than {MAX_FILES}: {files}")
    for f in files:
        if os.path.getsize(os.path.join(d, f)) >= common.MAX_FILE_BYTES:
            problems.append(f"{d}/{f}: not below 16 MiB")

    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    gen_path = os.path.join(d, "generation_config.json")
    if not os.path.exists(gen_path):
        problems.append(f"{gen_path}: missing")
    else:
        with open(gen_path) as f:
            gen = json.load(f)
        if gen.get("eos_token_id") != common.EOS_ID:
            problems.append(f"{gen_path}: eos_token_id {gen.get('eos_token_id')!r}, expected {common.EOS_ID}")

    # Tokenizer.
    tok_path = os.path.join(d, "tokenizer.json")
    tok = Tokenizer.from_file(tok_path)
    with open(tok_path) as f:
        tj = json.load(f)
    pre = tj.get("pre_tokenizer") or {}
    kinds = [p.get("type") for p in pre.get("pretokenizers", [])]
    if tj["model"]["type"] != "BPE" or kinds != ["Split", "ByteLevel"] or (tj.get("decoder") or {}).get("type") != "ByteLevel":
        problems.append(f"{tok_path}: not Split + ByteLevel BPE with a ByteLevel decoder ({tj['model']['type']}, {kinds})")
    if tok.id_to_token(common.EOS_ID) != "<|endoftext|>":
        problems.append(f"{tok_path}: id 0 is {tok.id_to_token(0)!r}, not <|endoftext|>")
    vocab = tok.get_vocab_size()
    if not 4096 <= vocab <= 8192 or vocab != cfg["vocab_size"]:
        problems.append(f"{tok_path}: vocabulary {vocab} (config vocab_size {cfg['vocab_size']}, want 4096..8192)")
    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    enc = tok.encode(text, add_special_tokens=False)
    if tok.decode(enc.ids, skip_special_tokens=False) != text:
        problems.append(f"{tok_path}: does not round-trip {args.text}")
    eos_text = "Amen.\n<|endoftext|>Genesis 1\n"
    eos_ids = tok.encode(eos_text, add_special_tokens=False).ids
    if common.EOS_ID not in eos_ids or tok.decode(eos_ids, skip_special_tokens=False) != eos_text:
        problems.append(f"{tok_path}: <|endoftext|> in text is not encoded as id 0 or does not round-trip")

    # Reload with transformers.
    model, info = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, experts_implementation="eager",
                                                       output_loading_info=True)
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        if info.get(key):
            problems.append(f"{d}: from_pretrained reports {key}: {sorted(info[key])[:3]}")
    if type(model).__name__ != "DeepseekV3ForCausalLM":
        problems.append(f"{d}: AutoModelForCausalLM gave {type(model).__name__}")
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([enc.ids[:64]]), use_cache=False).logits
    if not torch.isfinite(logits).all():
        problems.append(f"{d}: non-finite logits")
    bias = model.model.layers[cfg["first_k_dense_replace"]].mlp.gate.e_score_correction_bias
    print(f"{d}: {len(files)} files, {sum(os.path.getsize(os.path.join(d, f)) for f in files)} bytes; "
          f"vocab {vocab}; {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; "
          f"layer-{cfg['first_k_dense_replace']} bias range [{bias.min():.4f}, {bias.max():.4f}]")
    for p in problems:
        print("PROBLEM: " + p)
    print("verify_checkpoint: " + ("FAILED" if problems else "all checks passed"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
