#!/usr/bin/env python3
"""Top-1 parity of moex and HF transformers on the same seeded random weights.

Both sides get bit-identical weights without any file: every tensor is generated from
(seed, Hub checkpoint name, element index) with moex's generator (src/model/model_base.cpp,
WeightLoader::read_host / load_f32), re-implemented here vectorised in torch int64.

  python3 tools/hf_random_parity.py --config-dir tools/parity_configs/qwen3_30b_a3b \
      --moex build/tools/moex --seed 1 --tokens 256 [--device cuda|cpu] [--json OUT.json]

Steps: (a) write a seeded random id file, (b) run `moex logits` (its own process, so its GPU
memory is gone before HF starts), (c) build the HF model from the same config.json and fill
every parameter (fused experts mapped slice by slice as moex packs them), (d) run HF on the same
ids, (e) report top-1 agreement; exit 1 below --min-agreement.

--device cuda: moex on cuda (bf16), HF in bf16 on the GPU, HF logits from the bf16 final hidden
state in fp32 (as moex's lm-head matmul writes fp32). --device cpu: moex `cpu` (fp32 compute on
the checkpoint-dtype weights) vs HF fp32 on the CPU: the generator check, expected 100%.
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

MASK64 = (1 << 64) - 1


def _i64(c):
    """A uint64 constant as the int64 with the same bits."""
    c &= MASK64
    return c - (1 << 64) if c >= (1 << 63) else c


K_GOLDEN, K_MUL1, K_MUL2 = _i64(0x9E3779B97F4A7C15), _i64(0xBF58476D1CE4E5B9), _i64(0x94D049BB133111EB)


def splitmix64_py(x):
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def fnv1a_py(s):
    h = 1469598103934665603
    for c in s.encode():
        h = ((h ^ c) * 1099511628211) & MASK64
    return h


def _srl(x, k):
    """Logical right shift of int64 bits (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def splitmix64_t(x):
    """splitmix64 on an int64 tensor holding uint64 bits (add/mul wrap mod 2^64)."""
    x = x + K_GOLDEN
    x = (x ^ _srl(x, 30)) * K_MUL1
    x = (x ^ _srl(x, 27)) * K_MUL2
    return x ^ _srl(x, 31)


HALF_WIDTH = float(np.float32(0.02) * np.sqrt(np.float32(3.0)))  # 0.02f * std::sqrt(3.0f), in f32
CHUNK = 1 << 25


def gen_uniform(name, seed, n, device):
    """moex read_host (random path) values of tensor `name` before the dtype store, [n] f32."""
    base = _i64(splitmix64_py((seed ^ fnv1a_py(name)) & MASK64))
    out = torch.empty(n, dtype=torch.float32, device=device)
    for start in range(0, n, CHUNK):
        idx = torch.arange(start, min(n, start + CHUNK), dtype=torch.int64, device=device)
        h = splitmix64_t(idx + base)
        u = _srl(h, 11).to(torch.float64) * (1.0 / 9007199254740992.0)
        out[start:start + idx.numel()] = ((2.0 * u - 1.0) * HALF_WIDTH).to(torch.float32)
    return out


def gen_bias(name, seed, n, device):
    """moex load_f32 (random path): 0.1f * float(int64(h % 2001) - 1000) / 1000.f, [n] f32."""
    # Computed on the CPU: torch on CUDA divides by a scalar as a multiply by its reciprocal,
    # which is not the correctly rounded division moex does (and the tensor is tiny).
    base = _i64(splitmix64_py((seed ^ fnv1a_py(name)) & MASK64))
    idx = torch.arange(n, dtype=torch.int64)
    h = splitmix64_t(idx + base)
    # Unsigned h % 2001 from the two 32-bit halves (int64 % would see h as signed).
    hi, lo = _srl(h, 32), h & 0xFFFFFFFF
    r = ((hi % 2001) * ((1 << 32) % 2001) + lo) % 2001
    x = (r - 1000).to(torch.float32)
    return ((x * torch.tensor(0.1, dtype=torch.float32)) / torch.tensor(1000.0, dtype=torch.float32)).to(device)


def self_check(device):
    """The vectorised generator equals the scalar one (catches shift/wrap mistakes per device)."""
    for name, seed in (("model.embed_tokens.weight", 7), ("x", 2**63 + 5)):
        base = splitmix64_py((seed ^ fnv1a_py(name)) & MASK64)
        t = gen_uniform(name, seed, 4096, device).cpu()
        b = gen_bias(name, seed, 4096, device).cpu()
        for i in (0, 1, 17, 4095):
            h = splitmix64_py((base + i) & MASK64)
            u = (h >> 11) * (1.0 / 9007199254740992.0)
            assert float(np.float32((2.0 * u - 1.0) * HALF_WIDTH)) == float(t[i]), (name, i)
            xb = np.float32(int(h % 2001) - 1000)
            assert float((np.float32(0.1) * xb) / np.float32(1000.0)) == float(b[i]), (name, i)


# ----------------------------------------------------------------------------------------------
# HF parameter name -> Hub checkpoint tensor names (as moex's loader reads them)


def expert_names(arch, hf_prefix):
    """Hub names of (gate, up, down) of expert e under HF prefix '...mlp.experts.'."""
    if arch == "mixtral":
        hub = hf_prefix.replace(".mlp.", ".block_sparse_moe.")
        return (lambda e: f"{hub}{e}.w1.weight", lambda e: f"{hub}{e}.w3.weight", lambda e: f"{hub}{e}.w2.weight")
    return (lambda e: f"{hf_prefix}{e}.gate_proj.weight", lambda e: f"{hf_prefix}{e}.up_proj.weight",
            lambda e: f"{hf_prefix}{e}.down_proj.weight")


def hub_name(arch, hf_name):
    if arch == "mixtral":
        hf_name = hf_name.replace(".mlp.", ".block_sparse_moe.")
    return hf_name


def is_norm_name(name):
    parts = name.split(".")
    return len(parts) >= 2 and parts[-1] == "weight" and "norm" in parts[-2]


def fill_model(model, cfg, seed, ckpt_dtype, device):
    """Writes moex's random values into every state_dict tensor of `model`; returns the count."""
    arch = cfg.model_type
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    filled = 0

    def values(name, shape, dtype):
        n = math.prod(shape)
        if is_norm_name(name):
            v = torch.ones(n, dtype=torch.float32, device=device)
        else:
            v = gen_uniform(name, seed, n, device)
        # moex stores in the checkpoint dtype (then bf16 on the GPU): round the same way.
        return v.to(ckpt_dtype).to(dtype).view(shape)

    with torch.no_grad():
        for name, t in model.state_dict(keep_vars=True).items():
            t = t.data if isinstance(t, torch.nn.Parameter) else t
            if tied and name == "lm_head.weight":
                continue  # shares the embedding's storage, as moex's lm_head_ = embed_
            m = re.match(r"(.*\.experts\.)(gate_up_proj|down_proj)$", name)
            if m:
                gate, up, down = expert_names(arch, m.group(1))
                inter = cfg.intermediate_size if arch == "mixtral" else cfg.moe_intermediate_size
                h = cfg.hidden_size
                for e in range(t.shape[0]):
                    if m.group(2) == "gate_up_proj":
                        # moex w13[e] = [gate rows; up rows] [2I, H]; HF 5.x keeps [E, 2I, H] (or [E, H, 2I]).
                        w = torch.cat([values(gate(e), (inter, h), t.dtype), values(up(e), (inter, h), t.dtype)], 0)
                        t[e].copy_(w if tuple(t.shape[1:]) == (2 * inter, h) else w.t())
                    else:
                        d = values(down(e), (h, inter), t.dtype)  # [H, I]
                        t[e].copy_(d if tuple(t.shape[1:]) == (h, inter) else d.t())
                filled += 1
                continue
            hub = hub_name(arch, name)
            if name.endswith("e_score_correction_bias"):
                t.copy_(gen_bias(hub, seed, t.numel(), device).to(t.dtype).view(t.shape))
            else:
                t.copy_(values(hub, tuple(t.shape), t.dtype))
            filled += 1
    return filled


# ----------------------------------------------------------------------------------------------


def read_moex_logits(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"MOEXLOGT":
        raise SystemExit(f"{path}: not a moex logits file")
    version, tokens, vocab, k, full = np.frombuffer(data, dtype="<i4", count=5, offset=8)
    off = 28
    argmax = np.frombuffer(data, dtype="<i4", count=tokens, offset=off)
    off += 4 * tokens
    if full:
        logits = np.frombuffer(data, dtype="<f4", count=tokens * vocab, offset=off).reshape(tokens, vocab)
        order = np.argsort(-logits, axis=1, kind="stable")[:, :5]
        return argmax, order, np.take_along_axis(logits, order, 1), vocab
    ids = np.frombuffer(data, dtype="<i4", count=tokens * k, offset=off).reshape(tokens, k)
    off += 4 * tokens * k
    vals = np.frombuffer(data, dtype="<f4", count=tokens * k, offset=off).reshape(tokens, k)
    return argmax, ids, vals, vocab


def fp32_routers(model):
    """Makes every top-k router module compute its logits in fp32: its weight becomes fp32 (the
    same values: bf16 -> fp32 is exact) and its input is cast to fp32 on entry. Returns the count."""
    count = 0
    for module in model.modules():
        name = type(module).__name__
        if not name.lower().endswith("topkrouter"):
            continue
        module.weight.data = module.weight.data.float()
        module.register_forward_pre_hook(lambda _m, args: (args[0].float(),) + tuple(args[1:]))
        count += 1
    if count == 0:
        raise SystemExit("--hf-fp32-router: no *TopKRouter module found in this model")
    return count


def hf_logits(model, x, m_top1):
    """HF argmax [T], top-5 logits [T, 5], row rms [T] and its logit of moex's top-1 [T]; logits
    in fp32 from the final hidden state, as moex's lm-head matmul writes fp32."""
    with torch.no_grad():
        hidden = model.model(input_ids=x).last_hidden_state[0]  # [T, hidden]
        lm = model.get_output_embeddings().weight                 # [vocab, hidden]
        logits = torch.nn.functional.linear(hidden.float(), lm.float())  # [T, vocab] f32
        top = torch.topk(logits, 5, dim=1)
        out = (torch.argmax(logits, dim=1).cpu().numpy(), top.values.cpu().numpy(),
               logits.pow(2).mean(1).sqrt().cpu().numpy(), logits.gather(1, m_top1[:, None])[:, 0].cpu().numpy())
    del logits, hidden
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config-dir", required=True, help="folder with config.json (no weights needed)")
    ap.add_argument("--moex", required=True, help="path of the moex binary")
    ap.add_argument("--seed", type=int, default=1, help="weight seed (moex --weight-seed) and id seed")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--moex-device", default=None, help="override moex --device (default: cuda, or cpu)")
    ap.add_argument("--hf-dtype", choices=["bfloat16", "float32"], default=None,
                    help="HF compute dtype (default: bfloat16 on cuda, float32 on cpu)")
    ap.add_argument("--fp32-floor", action="store_true",
                    help="also run HF in fp32 first (needs 2x the bf16 memory) and report top-1 agreement of "
                         "moex and of HF-bf16 with it")
    ap.add_argument("--hf-fp32-router", action="store_true",
                    help="compute HF's router logits in fp32 from the bf16 hidden state (moex computes every "
                         "family's router logits in fp32, as HF's own DeepSeek routers do; HF's Qwen3-MoE and "
                         "Mixtral routers round them to bf16)")
    ap.add_argument("--num-layers", type=int, default=None,
                    help="override num_hidden_layers (both sides read a copy of config.json in the work dir): "
                         "agreement as a function of depth")
    ap.add_argument("--min-agreement", type=float, default=0.99)
    ap.add_argument("--json", default=None, help="write the summary here too")
    ap.add_argument("--workdir", default=None, help="keep the id and logits files here")
    args = ap.parse_args()

    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    device = torch.device(args.device)
    moex_device = args.moex_device or ("cuda" if args.device == "cuda" else "cpu")
    hf_dtype = getattr(torch, args.hf_dtype or ("bfloat16" if args.device == "cuda" else "float32"))
    self_check(device)

    with open(os.path.join(args.config_dir, "config.json")) as f:
        raw = json.load(f)
    workdir = args.workdir or tempfile.mkdtemp(prefix="moex_parity_")
    os.makedirs(workdir, exist_ok=True)
    config_dir = args.config_dir
    if args.num_layers is not None:
        if args.num_layers < 1:
            raise SystemExit("--num-layers must be >= 1")
        raw["num_hidden_layers"] = args.num_layers
        config_dir = os.path.join(workdir, "config")
        os.makedirs(config_dir, exist_ok=True)
        with open(os.path.join(config_dir, "config.json"), "w") as f:
            json.dump(raw, f)
    raw.pop("auto_map", None)
    cfg = AutoConfig.for_model(**raw)
    ckpt_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(
        raw.get("torch_dtype") or raw.get("dtype") or "float32", torch.float32)

    rng = np.random.default_rng(args.seed)
    ids = rng.integers(0, cfg.vocab_size, size=args.tokens, dtype=np.int64)
    ids_path, out_path = os.path.join(workdir, "ids.txt"), os.path.join(workdir, "moex_logits.bin")
    with open(ids_path, "w") as f:
        f.write(" ".join(str(int(i)) for i in ids) + "\n")

    # (b) moex first, in its own process.
    t0 = time.time()
    cmd = [args.moex, "logits", "--model", config_dir, "--random-weights", "--weight-seed", str(args.seed),
           "--device", moex_device, "--prompt-ids-file", ids_path, "--out", out_path]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    moex_s = time.time() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"moex logits failed (exit {proc.returncode})")
    m_argmax, m_ids, m_vals, vocab = read_moex_logits(out_path)

    # (c) HF on the same weights. With --fp32-floor it is built in fp32 first (the reference that
    # shows how far bf16 itself moves top-1 on these weights), then cast to hf_dtype in place.
    t0 = time.time()
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32 if args.fp32_floor else hf_dtype)
    model.eval()
    filled = fill_model(model, cfg, args.seed, ckpt_dtype, device)
    routers = fp32_routers(model) if args.hf_fp32_router else 0
    fill_s = time.time() - t0
    x = torch.tensor(ids, device=device).unsqueeze(0)
    m_top1 = torch.tensor(m_argmax, device=device, dtype=torch.int64)
    t0 = time.time()
    floor = None
    if args.fp32_floor:
        floor = hf_logits(model, x, m_top1)
        with torch.no_grad():
            for p in model.parameters():  # buffers (rope inv_freq) stay fp32, as when built in bf16
                p.data = p.data.to(hf_dtype)
    # (d) HF logits.
    h_argmax, h_vals, row_rms, hf_at_moex = hf_logits(model, x, m_top1)
    hf_s = time.time() - t0

    # (e) the verdict.
    agree = m_argmax == h_argmax
    margin = h_vals[:, 0] - h_vals[:, 1]
    # bf16 noise: a relative 2^-8 of the logit scale (fp32 runs: 2^-20).
    rel = 2.0 ** -8 if hf_dtype == torch.bfloat16 or moex_device != "cpu" else 2.0 ** -20
    noise = rel * np.maximum(np.abs(h_vals[:, 0]), row_rms)
    dis = ~agree
    summary = {
        "config_dir": args.config_dir, "num_layers": int(cfg.num_hidden_layers), "model_type": cfg.model_type, "seed": args.seed, "tokens": int(args.tokens),
        "vocab": int(vocab), "moex_device": moex_device, "hf_device": str(device), "hf_dtype": str(hf_dtype),
        "hf_tensors_filled": filled, "hf_fp32_routers": routers,
        "top1_agreement": float(agree.mean()),
        "disagreements": int(dis.sum()),
        "disagreements_within_bf16_noise": int((dis & (margin <= noise)).sum()),
        "frac_disagreements_within_noise": float((dis & (margin <= noise)).sum() / max(1, dis.sum())),
        "hf_top2_margin_median": float(np.median(margin)),
        # moex's top-1 logit vs HF's logit of the same token.
        "max_abs_top1_logit_diff": float(np.max(np.abs(m_vals[:, 0] - hf_at_moex))),
        "mean_abs_top1_logit_diff": float(np.mean(np.abs(m_vals[:, 0] - hf_at_moex))),
        "hf_logit_rms_mean": float(np.mean(row_rms)),
        "max_gap_hf_top1_vs_moex_top1_in_hf": float(np.max(h_vals[:, 0] - hf_at_moex)),
        "moex_seconds": round(moex_s, 1), "hf_build_fill_seconds": round(fill_s, 1), "hf_forward_seconds": round(hf_s, 1),
        "min_agreement": args.min_agreement,
        "torch_version": torch.__version__, "transformers_version": transformers.__version__,
    }
    if floor is not None:
        summary["moex_vs_hf_fp32_top1_agreement"] = float((m_argmax == floor[0]).mean())
        summary["hf_bf16_vs_hf_fp32_top1_agreement"] = float((h_argmax == floor[0]).mean())
    summary["pass"] = summary["top1_agreement"] >= args.min_agreement
    text = json.dumps(summary, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0 if summary["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
