#!/usr/bin/env python3
"""Held-out loss of a checkpoint with HF transformers on the CPU: the reference for `moex perplexity`.

usage: eval_hf.py --model models/moex-kjv-dsv3 [--text .deps/corpus/heldout.txt]
                  [--train .deps/corpus/train.txt] [--dtype float32|bfloat16] [--json OUT]

Protocol (common.py; `moex perplexity` must do the same for the numbers to compare):
  the text file read as one UTF-8 string and tokenized with the model's tokenizer.json as ONE
  stream, with no BOS/EOS added; cut into consecutive non-overlapping windows of 256 tokens from
  token 0 (the last, shorter window kept if it has >= 2 tokens); each window run on its own from
  position 0; mean NLL (natural log) over every predicted token (tokens 1..len-1 of each window);
  perplexity = exp(mean NLL).
--dtype float32 (default) runs the bf16 weights upcast exactly, with fp32 compute: the value an
fp32-accumulating engine should approach. bfloat16 runs HF in bf16 end to end.
With --train, also prints the add-one smoothed unigram perplexity (counts from the train split,
each document followed by EOS, as train.py streams it) on the same predicted tokens.
"""
import argparse
import json
import os
import sys
import time

import torch
from tokenizers import Tokenizer
import transformers
from transformers import AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

transformers.utils.logging.disable_progress_bar()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="checkpoint folder (config.json, safetensors, tokenizer.json)")
    ap.add_argument("--text", default=".deps/corpus/heldout.txt")
    ap.add_argument("--tokenizer", default=None, help="default: MODEL/tokenizer.json")
    ap.add_argument("--train", default=None, help="train.txt, for the unigram baseline")
    ap.add_argument("--window", type=int, default=common.EVAL_WINDOW)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--max-windows", type=int, default=0, help="evaluate only the first N windows (0: all)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.time()
    tok = Tokenizer.from_file(args.tokenizer or os.path.join(args.model, "tokenizer.json"))
    ids = common.eval_stream(tok, args.text)
    windows = common.eval_windows(ids, args.window)
    if args.max_windows:
        windows = windows[:args.max_windows]
    dtype = getattr(torch, args.dtype)
    # The eager expert loop is HF's reference path (and needs no aligned memory on the CPU).
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, experts_implementation="eager").eval()
    load = common.ExpertLoadCounter(model)
    total, count = common.evaluate_nll(model, windows, torch.device("cpu"), args.batch_size)
    report = common.load_report(load.layers, load.counts)
    result = {
        "model": os.path.abspath(args.model), "text": os.path.abspath(args.text), "dtype": args.dtype,
        "stream_tokens": len(ids), "windows": len(windows), "window": args.window,
        "hf": common.nll_summary(total, count), "expert_load": report,
        "expert_load_within_3x_all_layers": all(r["within_3x"] for r in report),
    }
    print(f"{args.text}: {len(ids)} tokens, {len(windows)} windows of {args.window}, {count} predicted tokens")
    print(f"HF ({args.dtype}): mean NLL {result['hf']['mean_nll']:.5f}  perplexity {result['hf']['perplexity']:.4f}")
    if args.train:
        train_ids, _ = common.training_stream(tok, args.train)
        u_total, u_count = common.unigram_nll(train_ids, windows, tok.get_vocab_size())
        result["unigram_add_one"] = common.nll_summary(u_total, u_count)
        print(f"unigram (add-one): mean NLL {result['unigram_add_one']['mean_nll']:.5f}  "
              f"perplexity {result['unigram_add_one']['perplexity']:.3f}")
    print("expert load (assignments per routed expert):")
    print(common.format_load_report(report))
    result["seconds"] = round(time.time() - t0, 1)
    print(f"{result['seconds']} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
