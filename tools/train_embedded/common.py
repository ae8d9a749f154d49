"""Shared pieces of the embedded-model scripts: corpus streams, the held-out evaluation protocol,
expert-load counting, the unigram baseline and the checks on a saved checkpoint.

Held-out evaluation protocol (the one `moex perplexity` implements, so the numbers compare):
  1. Read heldout.txt as one string (UTF-8, as written by prepare_corpus.sh).
  2. Tokenize it as ONE stream with tokenizer.json: no BOS, no EOS, nothing added.
  3. Chop the stream into consecutive non-overlapping windows of 256 tokens, from token 0; the
     last window keeps the remainder (dropped if it has fewer than 2 tokens).
  4. Run each window on its own (positions 0..len-1, no state carried between windows).
  5. Mean NLL = sum over windows of -log p(token[t] | token[<t]) for t = 1..len-1, divided by the
     number of such predicted tokens; perplexity = exp(mean NLL), natural log.
"""
import json
import math
import os
import re

import torch
import torch.nn.functional as F

EOS_ID = 0
EVAL_WINDOW = 256
MAX_FILE_BYTES = 16 * 1024 * 1024  # the device returns files below 16 MiB
MAX_CHECKPOINT_BYTES = 40_000_000  # issue 3: checkpoint at most 40 MB on disk


def read_documents(path):
    """Documents of a corpus file: separated by one empty line; each keeps its final newline."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return [d.strip("\n") + "\n" for d in text.split("\n\n") if d.strip()]


def training_stream(tokenizer, path):
    """Token ids of a split as the model is trained on it: each document followed by EOS.

    The EOS after a chapter teaches the model to stop; the held-out stream (below) has none,
    which costs a little at its 58 chapter boundaries and nothing anywhere else.
    """
    docs = read_documents(path)
    ids = []
    for enc in tokenizer.encode_batch(docs, add_special_tokens=False):
        ids.extend(enc.ids)
        ids.append(EOS_ID)
    return ids, len(docs)


def eval_stream(tokenizer, path):
    """Token ids of a split under the evaluation protocol: the file as one string, nothing added."""
    with open(path, encoding="utf-8") as f:
        return tokenizer.encode(f.read(), add_special_tokens=False).ids


def eval_windows(ids, window=EVAL_WINDOW):
    """Consecutive non-overlapping windows; the tail is kept when it has at least 2 tokens."""
    out = [ids[i:i + window] for i in range(0, len(ids), window)]
    return [w for w in out if len(w) >= 2]


class ExpertLoadCounter:
    """Counts, per MoE layer, how many (token, slot) assignments each routed expert receives.

    Hooks the router (DeepseekV3TopkRouter) of every MoE layer; its third output is the
    [tokens, top_k] expert ids the experts then run.
    """

    def __init__(self, model):
        self.layers = []
        self.counts = []
        self.enabled = True
        self._handles = []
        for i, layer in enumerate(model.model.layers):
            gate = getattr(layer.mlp, "gate", None)
            if gate is None or not hasattr(gate, "e_score_correction_bias"):
                continue
            n = gate.e_score_correction_bias.numel()
            self.layers.append(i)
            self.counts.append(torch.zeros(n, dtype=torch.long, device=gate.weight.device))
            self._handles.append(gate.register_forward_hook(self._hook(len(self.counts) - 1)))

    def _hook(self, slot):
        def hook(_module, _inputs, output):
            if self.enabled:
                topk_ids = output[2]  # [tokens, top_k]
                self.counts[slot] += torch.bincount(topk_ids.reshape(-1), minlength=self.counts[slot].numel())
        return hook

    def reset(self):
        for c in self.counts:
            c.zero_()

    def remove(self):
        for h in self._handles:
            h.remove()


def load_report(layers, counts):
    """Per layer: counts, max/mean and min/mean, and whether all experts are within [1/3, 3] x mean."""
    report = []
    for layer, c in zip(layers, counts):
        c = [int(x) for x in c.tolist()]
        mean = sum(c) / len(c)
        hi = max(c) / mean if mean else float("inf")
        lo = min(c) / mean if mean else 0.0
        report.append({"layer": layer, "counts": c, "max_over_mean": round(hi, 4),
                       "min_over_mean": round(lo, 4), "within_3x": bool(hi <= 3.0 and lo >= 1.0 / 3.0)})
    return report


def format_load_report(report):
    lines = []
    for r in report:
        lines.append(f"  layer {r['layer']}: max/mean {r['max_over_mean']:.3f} min/mean {r['min_over_mean']:.3f} "
                     f"{'ok' if r['within_3x'] else 'OUT OF [1/3, 3]'}  counts {r['counts']}")
    return "\n".join(lines)


@torch.no_grad()
def evaluate_nll(model, windows, device, batch_size=32, autocast_dtype=None):
    """Sum of NLL (nats, fp32 log-softmax) and count of predicted tokens over the windows."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    # Full windows batch together; a shorter tail runs alone.
    by_len = {}
    for w in windows:
        by_len.setdefault(len(w), []).append(w)
    for length, group in sorted(by_len.items(), reverse=True):
        for i in range(0, len(group), batch_size):
            x = torch.tensor(group[i:i + batch_size], dtype=torch.long, device=device)
            with torch.autocast(device_type=device.type, dtype=autocast_dtype or torch.bfloat16,
                                enabled=autocast_dtype is not None):
                logits = model(input_ids=x, use_cache=False).logits
            logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
            nll = -logp.gather(-1, x[:, 1:, None]).squeeze(-1)
            total += float(nll.double().sum())
            count += nll.numel()
    model.train(was_training)
    return total, count


def unigram_nll(train_ids, windows, vocab_size):
    """Add-one smoothed unigram model from the train stream, scored on the predicted tokens of
    the evaluation windows (token 1..len-1 of each, the same tokens the LM is scored on)."""
    counts = torch.bincount(torch.tensor(train_ids, dtype=torch.long), minlength=vocab_size).double()
    logp = torch.log((counts + 1.0) / (counts.sum() + vocab_size))
    total, count = 0.0, 0
    for w in windows:
        t = torch.tensor(w[1:], dtype=torch.long)
        total += float(-logp[t].sum())
        count += t.numel()
    return total, count


def expected_hub_names(cfg):
    """The tensor names of a DeepseekV3ForCausalLM checkpoint on the Hub for this config
    (per-expert tensors, no multi-token-prediction layers)."""
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    if not cfg.get("tie_word_embeddings", False):
        names.append("lm_head.weight")
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
        a = p + "self_attn."
        if cfg.get("q_lora_rank"):
            names += [a + "q_a_proj.weight", a + "q_a_layernorm.weight", a + "q_b_proj.weight"]
        else:
            names.append(a + "q_proj.weight")
        names += [a + "kv_a_proj_with_mqa.weight", a + "kv_a_layernorm.weight", a + "kv_b_proj.weight",
                  a + "o_proj.weight"]
        m = p + "mlp."
        if i < cfg["first_k_dense_replace"]:
            names += [m + "gate_proj.weight", m + "up_proj.weight", m + "down_proj.weight"]
            continue
        names += [m + "gate.weight", m + "gate.e_score_correction_bias"]
        names += [m + f"shared_experts.{w}.weight" for w in ("gate_proj", "up_proj", "down_proj")]
        for e in range(cfg["n_routed_experts"]):
            names += [m + f"experts.{e}.{w}.weight" for w in ("gate_proj", "up_proj", "down_proj")]
    return names


FUSED_EXPERTS_RE = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(gate_up_proj|down_proj)$")


def unfuse_experts(model_dir):
    """Rewrites shards that hold fused expert tensors (transformers 5.x in-memory layout:
    experts.gate_up_proj [E, 2I, H], experts.down_proj [E, H, I]) as per-expert Hub tensors
    (experts.N.{gate,up,down}_proj.weight). Returns the number of fused tensors converted."""
    from safetensors.torch import load_file, save_file

    index_path = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index_path):
        with open(index_path) as f:
            index = json.load(f)
        shard_files = sorted(set(index["weight_map"].values()))
    else:
        index, shard_files = None, ["model.safetensors"]
    converted = 0
    for shard in shard_files:
        path = os.path.join(model_dir, shard)
        tensors = load_file(path)
        if not any(FUSED_EXPERTS_RE.match(k) for k in tensors):
            continue
        out = {}
        for name, t in tensors.items():
            m = FUSED_EXPERTS_RE.match(name)
            if not m:
                out[name] = t
                continue
            converted += 1
            prefix, kind = m.groups()
            for e in range(t.shape[0]):
                if kind == "gate_up_proj":
                    gate, up = t[e].chunk(2, dim=0)  # rows [0, I) gate, [I, 2I) up
                    out[f"{prefix}.{e}.gate_proj.weight"] = gate.contiguous()
                    out[f"{prefix}.{e}.up_proj.weight"] = up.contiguous()
                else:
                    out[f"{prefix}.{e}.down_proj.weight"] = t[e].contiguous()
        save_file(out, path, metadata={"format": "pt"})
        if index is not None:
            wm = index["weight_map"]
            for name in list(wm):
                if wm[name] == shard:
                    del wm[name]
            for name in out:
                wm[name] = shard
    if index is not None and converted:
        index["weight_map"] = dict(sorted(index["weight_map"].items()))
        index.setdefault("metadata", {})["total_size"] = sum(
            os.path.getsize(os.path.join(model_dir, s)) for s in shard_files)
        with open(index_path, "w") as f:
            json.dump(index, f, indent=2)
    return converted


def check_checkpoint(model_dir):
    """Problems with a saved checkpoint as a list of one-line messages (empty: all good):
    tensor names equal the Hub names, dtypes (bf16; the correction bias fp32 as on the Hub),
    file sizes and the architecture points issue 3 asks for."""
    from safetensors import safe_open

    problems = []
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    want = {
        "architectures": ["DeepseekV3ForCausalLM"], "kv_lora_rank": 512, "qk_rope_head_dim": 64,
        "first_k_dense_replace": 1, "n_shared_experts": 1, "scoring_func": "sigmoid",
        "topk_method": "noaux_tc",
    }
    for k, v in want.items():
        if cfg.get(k) != v:
            problems.append(f"config.json: {k} is {cfg.get(k)!r}, expected {v!r}")
    if cfg.get("n_routed_experts", 0) < 16:
        problems.append(f"config.json: n_routed_experts {cfg.get('n_routed_experts')} < 16")
    if cfg.get("num_experts_per_tok", 0) < 4:
        problems.append(f"config.json: num_experts_per_tok {cfg.get('num_experts_per_tok')} < 4")
    if not (cfg.get("n_group", 1) > 1 and cfg.get("topk_group", 1) > 1):
        problems.append(f"config.json: n_group {cfg.get('n_group')} / topk_group {cfg.get('topk_group')} not > 1")

    index_path = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index_path):
        with open(index_path) as f:
            shard_files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        shard_files = ["model.safetensors"]
    found = {}
    total = 0
    for shard in shard_files:
        path = os.path.join(model_dir, shard)
        size = os.path.getsize(path)
        total += size
        if size >= MAX_FILE_BYTES:
            problems.append(f"{shard}: {size} bytes, not below 16 MiB")
        with safe_open(path, "pt") as g:
            for k in g.keys():
                found[k] = g.get_slice(k).get_dtype()
    if total > MAX_CHECKPOINT_BYTES:
        problems.append(f"{model_dir}: safetensors total {total} bytes > {MAX_CHECKPOINT_BYTES}")
    expected = set(expected_hub_names(cfg))
    missing, extra = expected - set(found), set(found) - expected
    if missing:
        problems.append(f"{model_dir}: {len(missing)} Hub tensor names missing, e.g. {sorted(missing)[:3]}")
    if extra:
        problems.append(f"{model_dir}: {len(extra)} unexpected tensor names, e.g. {sorted(extra)[:3]}")
    for k, dt in found.items():
        want_dt = "F32" if k.endswith("e_score_correction_bias") else "BF16"
        if dt != want_dt:
            problems.append(f"{model_dir}: tensor {k} is {dt}, expected {want_dt}")
    return problems


def nll_summary(total, count):
    mean = total / count
    return {"mean_nll": mean, "perplexity": math.exp(mean), "predicted_tokens": count}
