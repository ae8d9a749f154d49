#!/usr/bin/env python3
"""Trains moex's embedded default model, a small DeepseekV3ForCausalLM, on the KJV corpus.

usage: train.py --corpus .deps/corpus --tokenizer models/moex-kjv-dsv3/tokenizer.json --out OUT
                [--time-budget-s 360] [--preset full|tiny] [--sweep 8:0.1,16:0.2,32:0.3] ...

What it does (issue 3):
- HF transformers' DeepseekV3ForCausalLM: MLA (kv_lora_rank 512, rope dim 64), one dense first
  layer, 16 routed experts (top-4, 4 groups of which 2 are kept) plus one shared expert, sigmoid
  scores with e_score_correction_bias (noaux_tc). fp32 master weights, bf16 autocast on the GPU;
  the router runs in fp32 as at inference.
- The corpus is small (~0.9M train tokens), so the run is data-bound, not compute-bound: how many
  epochs and how much dropout suit it cannot be known in advance. --sweep trains a few runs from
  the same seed (epochs:dropout each), sharing the time budget in proportion to their epochs,
  and keeps the state with the lowest loss on the valid split (never the held-out split).
- Each run: AdamW, linear warm-up then cosine decay over its steps; the step count comes from its
  epochs and shrinks to what fits in its share of --time-budget-s (measured after a few steps);
  a hard stop guards the budget. Valid loss and expert load are checked twice per epoch. The saved
  state has the lowest valid loss of all runs, unless one whose valid load keeps every expert
  within [1/3, 3] x mean is at most --balance-tolerance nats worse: then that one.
- Aux-loss-free balancing (DeepSeek-V3): after each step, for every MoE layer,
  bias += gamma * sign(mean_load - load) from the step's per-expert token counts.
- Dropout on the embedding, attention and MLP outputs (forward hooks, training only: the saved
  architecture is unchanged).
- Saves with save_pretrained (bf16, e_score_correction_bias fp32 as in DeepSeek-V3 on the Hub,
  sharded), checks that the tensor names are the Hub's per-expert names, reloads the checkpoint
  with AutoModelForCausalLM (fp32 compute) and reports the held-out loss/perplexity under the
  protocol of common.py, per-expert load on the held-out split, and an add-one unigram baseline.
- Writes training.json (settings, versions, token counts, wall times, loss curves, results).
"""
import argparse
import json
import math
import os
import platform
import random
import shutil
import sys
import time

T_START = time.time()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers import AutoModelForCausalLM, DeepseekV3Config, DeepseekV3ForCausalLM, GenerationConfig  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

transformers.utils.logging.disable_progress_bar()  # keeps the device log short

# Sizes; everything issue 3 fixes (MLA ranks, experts, routing) is in FIXED below.
PRESETS = {
    # 17.6M parameters (35.3 MB in bf16), 8.7M active per token.
    "full": dict(hidden_size=256, intermediate_size=768, moe_intermediate_size=160, num_hidden_layers=6,
                 num_attention_heads=4, q_lora_rank=128, qk_nope_head_dim=64, v_head_dim=64),
    # For the CPU smoke test only.
    "tiny": dict(hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
                 num_attention_heads=2, q_lora_rank=32, qk_nope_head_dim=32, v_head_dim=32),
}
FIXED = dict(
    kv_lora_rank=512, qk_rope_head_dim=64, first_k_dense_replace=1, n_routed_experts=16,
    num_experts_per_tok=4, n_shared_experts=1, n_group=4, topk_group=2, norm_topk_prob=True,
    routed_scaling_factor=2.5, scoring_func="sigmoid", topk_method="noaux_tc", rope_interleave=True,
    tie_word_embeddings=False, num_nextn_predict_layers=0, max_position_embeddings=2048,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, rms_norm_eps=1e-6,
    initializer_range=0.02, attention_bias=False, attention_dropout=0.0, hidden_act="silu",
    bos_token_id=common.EOS_ID, eos_token_id=common.EOS_ID, pad_token_id=None,
)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True, help="folder with train.txt, valid.txt, heldout.txt")
    ap.add_argument("--tokenizer", required=True, help="tokenizer.json from train_tokenizer.py")
    ap.add_argument("--out", required=True, help="output folder (flat: checkpoint + training.json)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="full")
    ap.add_argument("--config-override", default="{}", help='JSON merged into the config, e.g. \'{"num_hidden_layers": 5}\'')
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--device", default="auto", help="auto, cuda or cpu")
    ap.add_argument("--amp", choices=["auto", "on", "off"], default="auto",
                    help="bf16 autocast: auto = on CUDA only; 'on' also on the CPU (to test that path)")
    ap.add_argument("--time-budget-s", type=float, default=360.0, help="wall time of all training runs together")
    ap.add_argument("--sweep", default="8:0.1,16:0.2,32:0.3",
                    help="runs as epochs:dropout, comma-separated; the best on the valid split is kept")
    ap.add_argument("--max-steps", type=int, default=0, help="fixed step count per run (0: from its epochs and budget)")
    ap.add_argument("--batch-size", type=int, default=32, help="sequences per step")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine floor as a fraction of --lr")
    ap.add_argument("--warmup-steps", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--beta1", type=float, default=0.9)
    ap.add_argument("--beta2", type=float, default=0.95)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--bias-update-gamma", type=float, default=1e-2, help="bias update per step (DeepSeek-V3: 1e-3)")
    ap.add_argument("--bias-gamma-schedule", choices=["lr", "constant"], default="lr",
                    help="lr: constant through warm-up, then scaled like the learning rate")
    ap.add_argument("--evals-per-epoch", type=float, default=2.0)
    ap.add_argument("--balance-tolerance", type=float, default=0.02,
                    help="valid loss (nats) given up at most for a state with a balanced valid expert load")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--eval-batch-size", type=int, default=32)
    ap.add_argument("--valid-windows", type=int, default=0, help="use only the first N valid windows (0: all)")
    ap.add_argument("--max-shard-size", default="14MB", help="14 MB gives 3 shards: 8 files in all, each below 16 MiB")
    ap.add_argument("--calibration-steps", type=int, default=30, help="steps timed before fixing the step count")
    return ap.parse_args()


def seed_everything(seed):
    random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def make_config(args, vocab_size):
    fields = dict(PRESETS[args.preset])
    fields.update(FIXED)
    fields.update(json.loads(args.config_override))
    fields["vocab_size"] = vocab_size
    fields["num_key_value_heads"] = fields["num_attention_heads"]
    # The training forward runs HF's reference expert loop: its F.linear calls autocast to bf16,
    # whereas the fused grouped_mm path would be handed fp32 master weights.
    return DeepseekV3Config(experts_implementation="eager", **fields)


def parameter_counts(model, cfg):
    total = sum(p.numel() for p in model.parameters())
    expert = 3 * cfg.hidden_size * cfg.moe_intermediate_size
    n_moe = cfg.num_hidden_layers - cfg.first_k_dense_replace
    idle = n_moe * (cfg.n_routed_experts - cfg.num_experts_per_tok) * expert
    # Per token: every weight but the idle experts and the embedding table (a row lookup).
    active = total - idle - model.model.embed_tokens.weight.numel()
    n_bias = n_moe * cfg.n_routed_experts
    return {"total": total, "active_per_token": active,
            "checkpoint_bytes_estimate": 2 * total + 4 * n_bias}


def add_dropout(model, p):
    """Dropout on what each sub-block adds to the residual stream, and on the embeddings."""
    def hook(module, _inputs, output):
        if not module.training or p <= 0:
            return output
        if isinstance(output, tuple):  # attention returns (output, weights)
            return (F.dropout(output[0], p, True),) + tuple(output[1:])
        return F.dropout(output, p, True)

    handles = [model.model.embed_tokens.register_forward_hook(hook)]
    for layer in model.model.layers:
        handles.append(layer.self_attn.register_forward_hook(hook))
        handles.append(layer.mlp.register_forward_hook(hook))
    return handles


def run_routers_in_fp32(model):
    """HF's router casts to fp32 itself, but autocast would turn its F.linear back to bf16; the
    routing decisions are then those of fp32 inference."""
    gates = []
    for layer in model.model.layers:
        gate = getattr(layer.mlp, "gate", None)
        if gate is None:
            continue
        original = gate.forward

        def forward(hidden_states, _original=original):
            with torch.autocast(device_type=hidden_states.device.type, enabled=False):
                return _original(hidden_states)

        gate.forward = forward
        gates.append(gate)
    return gates


def lr_at(step, total, args):
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    progress = min(1.0, (step - args.warmup_steps) / max(1, total - args.warmup_steps))
    floor = args.lr * args.min_lr_ratio
    return floor + (args.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def bias_gamma_at(step, lr, args):
    """Bias update speed: --bias-update-gamma through the warm-up, then scaled with the cosine
    learning rate (so it ends at --min-lr-ratio times that). A short run needs a fast start: the
    router often sends nearly every token to the same few experts within the first steps, and
    at DeepSeek-V3's 0.001 per step the bias would take hundreds of steps to undo it."""
    if args.bias_gamma_schedule == "constant" or step < args.warmup_steps:
        return args.bias_update_gamma
    return args.bias_update_gamma * lr / args.lr


class Batches:
    """Random windows of seq_len + 1 tokens over the train stream: each epoch starts at a random
    offset in [0, seq_len) and visits the windows in a random order."""

    def __init__(self, stream, seq_len, batch_size, generator, device):
        self.stream, self.seq_len, self.batch_size = stream, seq_len, batch_size
        self.generator, self.device = generator, device
        self.steps_per_epoch = ((stream.numel() - seq_len) // seq_len) // batch_size  # worst offset
        if self.steps_per_epoch < 1:
            raise ValueError(f"train stream of {stream.numel()} tokens is too short for "
                             f"{batch_size} x {seq_len + 1}-token windows")
        self.span = torch.arange(seq_len + 1, device=device)
        self.epoch, self._queue = 0, []

    def next(self):
        if not self._queue:
            offset = int(torch.randint(0, self.seq_len, (1,), generator=self.generator))
            n_win = (self.stream.numel() - offset - 1) // self.seq_len
            starts = offset + torch.randperm(n_win, generator=self.generator) * self.seq_len
            self._queue = [starts[i * self.batch_size:(i + 1) * self.batch_size]
                           for i in range(self.steps_per_epoch)]
            self.epoch += 1
        starts = self._queue.pop(0).to(self.device)
        seq = self.stream[starts[:, None] + self.span]  # [batch, seq_len + 1]
        return seq[:, :-1], seq[:, 1:]


def versions():
    v = {"python": platform.python_version(), "torch": torch.__version__,
         "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
         "platform": platform.platform()}
    try:
        import safetensors
        v["safetensors"] = safetensors.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        v["cuda"] = torch.version.cuda
        v["gpu"] = torch.cuda.get_device_name(0)
    return v


def save_checkpoint(model, out_dir, max_shard_size):
    """bf16 weights, fp32 e_score_correction_bias, sharded; returns how many fused expert
    tensors had to be split back into Hub names (0 with transformers 5.17-5.23)."""
    biases = {n: b.detach().float().clone() for n, b in model.named_buffers() if n.endswith("e_score_correction_bias")}
    model.to(torch.bfloat16)
    for name, module in model.named_modules():
        if hasattr(module, "e_score_correction_bias"):
            module.e_score_correction_bias.data = biases[name + ".e_score_correction_bias"]
    model.generation_config = GenerationConfig(bos_token_id=common.EOS_ID, eos_token_id=common.EOS_ID,
                                               pad_token_id=common.EOS_ID)
    model.save_pretrained(out_dir, max_shard_size=max_shard_size)
    return common.unfuse_experts(out_dir)


class Run:
    """One training run from a fresh initialisation: `epochs` passes at most, `dropout`, its own
    slice of the time budget. Keeps the state with the lowest valid loss (on the CPU)."""

    def __init__(self, index, epochs, dropout, budget_s, args, cfg, data, device):
        self.index, self.epochs, self.dropout, self.budget_s = index, epochs, dropout, budget_s
        self.args, self.cfg, self.data, self.device = args, cfg, data, device
        self.amp = args.amp == "on" or (args.amp == "auto" and device.type == "cuda")
        self.curve, self.valid_curve = [], []
        # Best states by valid loss: of all checks, and of those with a balanced valid load.
        self.best_any, self.best_balanced = None, None
        self.eval_s, self.last_eval_s = 0.0, 0.0  # time spent in valid checks: all, the latest

    def _check_valid(self, model, load, step, t_loop):
        """Valid loss and per-expert load ("balanced": every expert within [1/3, 3] x mean, what
        issue 3 asks of the held-out split). Keeps the best state overall and the best balanced one."""
        t0 = time.time()
        load.reset()  # counts of the last training step were consumed by the bias update
        total, n = common.evaluate_nll(model, self.data["valid_windows"], self.device, self.args.eval_batch_size,
                                       torch.bfloat16 if self.amp else None)
        report = common.load_report(load.layers, load.counts)
        load.reset()
        v = total / n
        balanced = all(r["within_3x"] for r in report)
        hi = max((r["max_over_mean"] for r in report), default=1.0)
        lo = min((r["min_over_mean"] for r in report), default=1.0)
        self.valid_curve.append({"step": step, "elapsed_s": round(time.time() - t_loop, 2), "valid_loss": v,
                                 "max_over_mean_load": hi, "min_over_mean_load": lo, "balanced": balanced})
        marks, snapshot = [], None
        for kind, ok in (("any", True), ("balanced", balanced)):
            current = getattr(self, "best_" + kind)
            if ok and (current is None or v < current["valid_loss"]):
                if snapshot is None:
                    snapshot = {"run": self.index, "step": step, "valid_loss": v, "balanced": balanced,
                                "state": {k: t.detach().to("cpu", copy=True) for k, t in model.state_dict().items()}}
                setattr(self, "best_" + kind, snapshot)
                marks.append(kind)
        mark = f" (best: {', '.join(marks)})" if marks else ""
        print(f"[run {self.index}] step {step}: valid loss {v:.4f} ppl {math.exp(v):.2f} load max/mean {hi:.2f} "
              f"min/mean {lo:.2f}{mark}", flush=True)
        self.last_eval_s = time.time() - t0
        self.eval_s += self.last_eval_s

    def train(self):
        args, device, vocab = self.args, self.device, self.cfg.vocab_size
        seed_everything(args.seed)
        model = DeepseekV3ForCausalLM(self.cfg).to(device)
        add_dropout(model, self.dropout)
        gates = run_routers_in_fp32(model)
        load = common.ExpertLoadCounter(model)
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=args.lr, betas=(args.beta1, args.beta2), eps=1e-8,
                                **({"fused": True} if device.type == "cuda" else {}))
        batches = Batches(self.data["train_stream"], args.seq_len, args.batch_size,
                          torch.Generator().manual_seed(args.seed), device)
        self.steps_per_epoch = batches.steps_per_epoch
        tokens_per_step = args.batch_size * args.seq_len
        self.planned = args.max_steps or max(1, int(self.epochs * batches.steps_per_epoch))
        total_steps = self.planned
        eval_every = max(1, int(batches.steps_per_epoch / args.evals_per_epoch))
        print(f"[run {self.index}] epochs {self.epochs:g} dropout {self.dropout:g}: {batches.steps_per_epoch} "
              f"steps/epoch of {tokens_per_step} tokens, {self.planned} steps planned, valid every {eval_every} "
              f"steps, budget {self.budget_s:.0f} s", flush=True)

        t_loop = time.time()
        self._check_valid(model, load, 0, t_loop)
        model.train()
        step, self.stop_reason = 0, "planned steps done"
        calib = None
        loss_acc, grad_acc, ratio_acc, lr = [], [], [], args.lr
        while step < total_steps:
            if time.time() - t_loop > self.budget_s:
                self.stop_reason = f"time budget reached at step {step}"
                break
            x, y = batches.next()
            lr = lr_at(step, total_steps, args)
            for group in opt.param_groups:
                group["lr"] = lr
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=self.amp):
                logits = model(input_ids=x, use_cache=False).logits
            loss = F.cross_entropy(logits.float().reshape(-1, vocab), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            opt.step()
            # Aux-loss-free balancing (DeepSeek-V3 section 2.1.2): push under-loaded experts up.
            with torch.no_grad():
                ratios = []
                gamma = bias_gamma_at(step, lr, args)
                for gate, c in zip(gates, load.counts):
                    c = c.float()
                    gate.e_score_correction_bias += gamma * torch.sign(c.mean() - c)
                    ratios.append(c.max() / c.mean())
                load.reset()
            step += 1
            loss_acc.append(loss.detach())
            grad_acc.append(grad_norm.detach())
            if ratios:
                ratio_acc.append(torch.stack(ratios).max())

            # Fix the step count from the measured speed, before the cosine part starts.
            if args.max_steps == 0 and step == min(10, total_steps):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                calib = (step, time.time(), self.eval_s)
            if args.max_steps == 0 and calib and step == calib[0] + args.calibration_steps:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                now = time.time()
                # The latest valid check is warm (the first one pays for CUDA start-up).
                t_step = (now - calib[1] - (self.eval_s - calib[2])) / args.calibration_steps
                t_eval = self.last_eval_s
                left = self.budget_s - (now - t_loop)
                evals_left = (total_steps - step) // eval_every + 1
                fit = step + int(max(0.0, left - evals_left * t_eval) / t_step)
                self.ms_per_step = t_step * 1e3
                if fit < total_steps:
                    print(f"[run {self.index}] step {step}: {t_step * 1e3:.0f} ms/step; {total_steps} steps do not "
                          f"fit in the budget, running {fit}", flush=True)
                    total_steps = max(step + 1, fit)
                else:
                    print(f"[run {self.index}] step {step}: {t_step * 1e3:.0f} ms/step; all {total_steps} steps fit "
                          f"(~{(total_steps - step) * t_step + evals_left * t_eval:.0f} s left)", flush=True)

            last = step == total_steps
            if step % args.log_every == 0 or last:
                point = {"run": self.index, "step": step, "epoch": round(step / batches.steps_per_epoch, 3),
                         "tokens": step * tokens_per_step, "elapsed_s": round(time.time() - t_loop, 2), "lr": lr,
                         "train_loss": float(torch.stack(loss_acc).mean()),
                         "grad_norm": float(torch.stack(grad_acc).mean()),
                         "max_over_mean_load": float(torch.stack(ratio_acc).max()) if ratio_acc else None,
                         "bias_abs_max": max((float(g.e_score_correction_bias.abs().max()) for g in gates), default=0.0)}
                self.curve.append(point)
                print(f"[run {self.index}] step {step}/{total_steps} ep {point['epoch']:.2f} loss {point['train_loss']:.4f} "
                      f"lr {lr:.2e} gnorm {point['grad_norm']:.2f} step max/mean load "
                      f"{point['max_over_mean_load'] or 0:.2f} |bias| {point['bias_abs_max']:.3f} t {point['elapsed_s']:.0f}s", flush=True)
                loss_acc, grad_acc, ratio_acc = [], [], []
            if step % eval_every == 0 or last:
                self._check_valid(model, load, step, t_loop)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if self.valid_curve[-1]["step"] != step:  # stopped by the budget between two checks
            self._check_valid(model, load, step, t_loop)
        if loss_acc:  # steps after the last log line (stopped by the budget)
            self.curve.append({"run": self.index, "step": step, "epoch": round(step / batches.steps_per_epoch, 3),
                               "tokens": step * tokens_per_step, "elapsed_s": round(time.time() - t_loop, 2),
                               "lr": lr, "train_loss": float(torch.stack(loss_acc).mean()),
                               "grad_norm": float(torch.stack(grad_acc).mean())})
        self.scheduled, self.steps = total_steps, step
        self.seconds = time.time() - t_loop
        print(f"[run {self.index}] {step} steps ({step / batches.steps_per_epoch:.2f} epochs, "
              f"{step * tokens_per_step} tokens) in {self.seconds:.1f} s; {self.stop_reason}; best valid "
              f"{self.best_any['valid_loss']:.4f} at step {self.best_any['step']}", flush=True)
        del model, opt
        if device.type == "cuda":
            torch.cuda.empty_cache()

    def summary(self):
        return {"run": self.index, "epochs": self.epochs, "dropout": self.dropout, "budget_s": round(self.budget_s, 1),
                "steps_planned": self.planned, "steps_scheduled": self.scheduled, "steps_done": self.steps,
                "epochs_done": round(self.steps / self.steps_per_epoch, 3), "stop_reason": self.stop_reason,
                "ms_per_step": round(getattr(self, "ms_per_step", float("nan")), 1),
                "seconds": round(self.seconds, 1), "valid_checks_s": round(self.eval_s, 1),
                "best": {k: v for k, v in self.best_any.items() if k != "state"},
                "best_balanced": ({k: v for k, v in self.best_balanced.items() if k != "state"}
                                  if self.best_balanced else None)}


def select_state(runs, tolerance):
    """The lowest valid loss of all runs, unless a state with a balanced valid load is within
    `tolerance` nats of it: then the best balanced state (balance is worth a little loss, never
    an undertrained model)."""
    best_any = min((r.best_any for r in runs), key=lambda b: b["valid_loss"])
    balanced = [r.best_balanced for r in runs if r.best_balanced]
    best_bal = min(balanced, key=lambda b: b["valid_loss"]) if balanced else None
    if best_bal and best_bal["valid_loss"] <= best_any["valid_loss"] + tolerance:
        return best_bal
    return best_any


def parse_sweep(text):
    runs = []
    for item in text.split(","):
        epochs, dropout = item.split(":")
        runs.append((float(epochs), float(dropout)))
    return runs


def main():
    args = parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    os.makedirs(args.out, exist_ok=True)
    timings = {}

    # ---- data
    t0 = time.time()
    tok = Tokenizer.from_file(args.tokenizer)
    vocab = tok.get_vocab_size()
    if tok.id_to_token(common.EOS_ID) != "<|endoftext|>":
        sys.exit(f"train.py: {args.tokenizer}: id {common.EOS_ID} is {tok.id_to_token(common.EOS_ID)!r}, not <|endoftext|>")
    split = {s: os.path.join(args.corpus, f"{s}.txt") for s in ("train", "valid", "heldout")}
    for path in split.values():
        if not os.path.exists(path):
            sys.exit(f"train.py: {path} is missing (run prepare_corpus.sh)")
    train_ids, train_docs = common.training_stream(tok, split["train"])
    valid_windows = common.eval_windows(common.eval_stream(tok, split["valid"]))
    if args.valid_windows:
        valid_windows = valid_windows[:args.valid_windows]
    heldout_ids = common.eval_stream(tok, split["heldout"])
    heldout_windows = common.eval_windows(heldout_ids)
    data = {"train_stream": torch.tensor(train_ids, dtype=torch.long, device=device), "valid_windows": valid_windows}
    timings["tokenize_s"] = time.time() - t0
    print(f"data: train {len(train_ids)} tokens ({train_docs} documents + EOS), valid {len(valid_windows)} windows, "
          f"heldout {len(heldout_ids)} tokens in {len(heldout_windows)} windows of {common.EVAL_WINDOW}", flush=True)

    # ---- model size
    cfg = make_config(args, vocab)
    with torch.device("meta"):
        counts = parameter_counts(DeepseekV3ForCausalLM(cfg), cfg)
    print(f"model: {counts['total'] / 1e6:.2f}M parameters, {counts['active_per_token'] / 1e6:.2f}M active per token, "
          f"~{counts['checkpoint_bytes_estimate'] / 1e6:.1f} MB in bf16; device {device}", flush=True)
    if counts["checkpoint_bytes_estimate"] > common.MAX_CHECKPOINT_BYTES:
        sys.exit(f"train.py: config gives a {counts['checkpoint_bytes_estimate']} byte checkpoint, "
                 f"above {common.MAX_CHECKPOINT_BYTES}")

    # ---- the sweep: the budget is shared in proportion to the planned epochs
    sweep = parse_sweep(args.sweep)
    total_epochs = sum(e for e, _ in sweep)
    runs = []
    t_train = time.time()
    for i, (epochs, dropout) in enumerate(sweep):
        budget = args.time_budget_s * epochs / total_epochs
        # A run that finished early leaves its unused time to the next ones.
        budget += max(0.0, args.time_budget_s * sum(e for e, _ in sweep[:i]) / total_epochs - (time.time() - t_train))
        run = Run(i, epochs, dropout, budget, args, cfg, data, device)
        run.train()
        runs.append(run)
    timings["train_s"] = time.time() - t_train
    chosen = select_state(runs, args.balance_tolerance)
    winner = runs[chosen["run"]]
    print(f"selected run {winner.index} (epochs {winner.epochs:g}, dropout {winner.dropout:g}) at step "
          f"{chosen['step']}: valid loss {chosen['valid_loss']:.4f}, valid load "
          f"{'within' if chosen['balanced'] else 'NOT within'} [1/3, 3] x mean", flush=True)

    # ---- save the winner's best state
    t0 = time.time()
    model = DeepseekV3ForCausalLM(cfg)
    model.load_state_dict(chosen["state"])
    model.eval()
    converted = save_checkpoint(model, args.out, args.max_shard_size)
    shutil.copyfile(args.tokenizer, os.path.join(args.out, "tokenizer.json"))
    problems = common.check_checkpoint(args.out)
    timings["save_s"] = time.time() - t0
    del model
    for r in runs:  # free the CPU copies
        for snapshot in (r.best_any, r.best_balanced):
            if snapshot:
                snapshot.pop("state", None)

    # ---- evaluate the checkpoint as saved: reloaded by transformers, fp32 compute
    t0 = time.time()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    reloaded = AutoModelForCausalLM.from_pretrained(args.out, dtype=torch.float32,
                                                    experts_implementation="eager").to(device).eval()
    held_load = common.ExpertLoadCounter(reloaded)
    h_total, h_count = common.evaluate_nll(reloaded, heldout_windows, device, args.eval_batch_size)
    load_report = common.load_report(held_load.layers, held_load.counts)
    held_load.enabled = False
    v_total, v_count = common.evaluate_nll(reloaded, valid_windows, device, args.eval_batch_size)
    u_total, u_count = common.unigram_nll(train_ids, heldout_windows, vocab)
    prompt = "In the beginning"
    prompt_ids = tok.encode(prompt, add_special_tokens=False).ids
    with torch.no_grad():
        out_ids = reloaded.generate(torch.tensor([prompt_ids], device=device), max_new_tokens=48, do_sample=False,
                                    eos_token_id=common.EOS_ID, pad_token_id=common.EOS_ID)[0].tolist()
    timings["final_eval_s"] = time.time() - t0
    timings["total_s"] = time.time() - T_START

    heldout = common.nll_summary(h_total, h_count)
    unigram = common.nll_summary(u_total, u_count)
    print("held-out expert load (assignments per routed expert):")
    print(common.format_load_report(load_report))
    print(f"held-out (HF, fp32 compute on the saved bf16 weights): mean NLL {heldout['mean_nll']:.4f} "
          f"ppl {heldout['perplexity']:.3f} over {h_count} predicted tokens")
    print(f"valid (HF, fp32): mean NLL {v_total / v_count:.4f}; held-out unigram (add-one, train counts) ppl "
          f"{unigram['perplexity']:.2f}")
    print(f"greedy from {prompt!r}: {tok.decode(out_ids)!r}")

    with open(os.path.join(args.out, "config.json")) as f:
        saved_config = json.load(f)
    manifest_path = os.path.join(args.corpus, "manifest.json")
    corpus_files = {}
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            corpus_files = {k: {"bytes": v["bytes"], "sha256": v["sha256"], "documents": v["documents"]}
                            for k, v in json.load(f)["splits"].items()}
    record = {
        "args": vars(args),
        "corpus": corpus_files,
        "versions": versions(),
        "seed": args.seed,
        "device": str(device),
        "config": saved_config,
        "parameters": counts,
        "tokens": {"train": len(train_ids), "train_documents": train_docs,
                   "valid_windows": len(valid_windows), "heldout": len(heldout_ids),
                   "heldout_windows": len(heldout_windows), "tokens_per_step": args.batch_size * args.seq_len,
                   "seen_all_runs": sum(r.steps for r in runs) * args.batch_size * args.seq_len,
                   "seen_selected_run_to_best": chosen["step"] * args.batch_size * args.seq_len},
        "runs": [r.summary() for r in runs],
        "selected": {k: v for k, v in chosen.items() if k != "state"},
        "wall_times_s": {k: round(v, 2) for k, v in timings.items()},
        "eval_protocol": common.__doc__[common.__doc__.index("Held-out evaluation protocol"):].strip(),
        "results": {
            "heldout_hf_fp32": heldout,
            "valid_hf_fp32": common.nll_summary(v_total, v_count),
            "heldout_unigram_add_one": unigram,
            "heldout_expert_load": load_report,
            "expert_load_within_3x_all_layers": all(r["within_3x"] for r in load_report),
            "greedy_sample": {"prompt": prompt, "prompt_ids": prompt_ids, "output_ids": out_ids,
                              "text": tok.decode(out_ids)},
        },
        "checkpoint": {"fused_tensors_converted": converted, "problems": problems,
                       "files": {f: os.path.getsize(os.path.join(args.out, f)) for f in sorted(os.listdir(args.out))}},
        "loss_curve": [p for r in runs for p in r.curve],
        "valid_curve": [dict(p, run=r.index) for r in runs for p in r.valid_curve],
    }
    with open(os.path.join(args.out, "training.json"), "w") as f:
        json.dump(record, f, indent=1)
    print(f"total wall time {timings['total_s']:.1f} s; wrote {args.out}: {', '.join(sorted(os.listdir(args.out)))}")
    if problems:
        print("checkpoint problems:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
