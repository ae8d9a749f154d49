#!/usr/bin/env python3
"""Tiny random checkpoints of each family moex runs, with Hugging Face reference outputs.

For every variant below this writes tests/fixtures/models/<name>/:
  config.json            Hub-style (rope_theta + rope_scaling, Hub key names), not the
                         transformers-5 rewrite, because moex must read what the Hub serves
  generation_config.json as save_pretrained writes it
  model.safetensors      Hub tensor names: per-expert `mlp.experts.E.{gate,up,down}_proj.weight`
                         (Mixtral: `block_sparse_moe.experts.E.w1/w2/w3.weight`); transformers 5
                         fuses experts in memory and save_pretrained converts them back
  expected.safetensors   prompt_ids [P] i64, logits [P, vocab] f32 (HF, every prompt position),
                         generated_ids [16] i64 (HF generate, greedy, no EOS stop),
                         gen_logits_margin [] f32 (smallest top1 - top2 gap on the greedy path),
                         rope_inv_freq [rot_dim / 2] f32 and rope_attention_scaling [] f32 (HF's rope init)
Every checkpoint is reloaded through from_pretrained from the rewritten files and must give the
same logits, so the Hub layout written here is the one transformers itself accepts.

Weights are random with a per-matrix std of 1/sqrt(fan_in) (embeddings std 1, norms 1 + 0.1 N)
so that activations are O(1) and greedy picks are decided by clear margins; seeds are fixed.
bf16 variants store bf16 weights; their reference logits come from HF running the same bf16
values upcast to fp32 (so moex's fp32 CPU path must match tightly), and `logits_bf16` holds HF's
native bf16 run for a loose check.

Usage: python3 tools/gen_fixtures.py [--out tests/fixtures/models] [--only name,...]
"""
import argparse
import copy
import json
import math
import os
import shutil
import sys

import torch
from safetensors.torch import save_file, load_file
import transformers
from transformers import (DeepseekV2Config, DeepseekV2ForCausalLM, DeepseekV3Config, DeepseekV3ForCausalLM,
                          MixtralConfig, MixtralForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM)

PROMPT_LEN = 12
GEN_TOKENS = 16
VOCAB = 384

YARN_V2 = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 4096,
           "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 0.707, "mscale_all_dim": 0.707}
YARN_V3 = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0, "original_max_position_embeddings": 4096,
           "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 0.8}

COMMON = dict(vocab_size=VOCAB, hidden_size=64, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2,
              pad_token_id=0, max_position_embeddings=16384)

VARIANTS = {
    # Qwen3-MoE: qk-norm, normalised top-k, layer 1 dense through mlp_only_layers.
    "qwen3_moe": (Qwen3MoeConfig, Qwen3MoeForCausalLM, torch.float32, 11, dict(
        COMMON, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=24,
        intermediate_size=96, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=3,
        norm_topk_prob=True, mlp_only_layers=[1], rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        tie_word_embeddings=False)),
    # bf16 weights and tied embeddings (no lm_head.weight in the file).
    "qwen3_moe_bf16": (Qwen3MoeConfig, Qwen3MoeForCausalLM, torch.bfloat16, 12, dict(
        COMMON, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
        intermediate_size=96, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2,
        norm_topk_prob=True, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True)),
    "mixtral": (MixtralConfig, MixtralForCausalLM, torch.float32, 21, dict(
        COMMON, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
        num_local_experts=4, num_experts_per_tok=2, sliding_window=None,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, tie_word_embeddings=False)),
    # Sliding window shorter than the prompt: positions >= 5 stop seeing the first tokens.
    "mixtral_swa": (MixtralConfig, MixtralForCausalLM, torch.float32, 23, dict(
        COMMON, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, intermediate_size=48,
        num_local_experts=4, num_experts_per_tok=2, sliding_window=5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False)),
    # DeepSeek-V2-Lite-like: no q_lora, group-limited greedy, 2 shared experts, dense layer 0, YaRN.
    "deepseek_v2": (DeepseekV2Config, DeepseekV2ForCausalLM, torch.float32, 31, dict(
        COMMON, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=None,
        kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12, intermediate_size=96,
        moe_intermediate_size=24, n_routed_experts=8, num_experts_per_tok=3, n_shared_experts=2,
        first_k_dense_replace=1, topk_method="group_limited_greedy", n_group=4, topk_group=2,
        routed_scaling_factor=1.5, norm_topk_prob=False, rope_parameters=dict(YARN_V2),
        tie_word_embeddings=False)),
    # DeepSeek-V2 with q_lora and plain greedy routing, no dense layer, default RoPE.
    "deepseek_v2_qlora": (DeepseekV2Config, DeepseekV2ForCausalLM, torch.float32, 32, dict(
        COMMON, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=48,
        kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, intermediate_size=96,
        moe_intermediate_size=24, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1,
        first_k_dense_replace=0, topk_method="greedy", n_group=1, topk_group=1, routed_scaling_factor=1.0,
        norm_topk_prob=False, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False)),
    # DeepSeek-V3-like: q_lora, sigmoid + noaux_tc with a random correction bias, groups, YaRN.
    "deepseek_v3": (DeepseekV3Config, DeepseekV3ForCausalLM, torch.float32, 41, dict(
        COMMON, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=48,
        kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, intermediate_size=96,
        moe_intermediate_size=24, n_routed_experts=8, num_experts_per_tok=3, n_shared_experts=1,
        first_k_dense_replace=1, n_group=4, topk_group=2, routed_scaling_factor=2.5, norm_topk_prob=True,
        rope_parameters=dict(YARN_V3), max_position_embeddings=32768, rope_interleave=True, num_nextn_predict_layers=0,
        tie_word_embeddings=False)),
}


def randomize(model, seed):
    """Every parameter and buffer that matters gets fresh values with O(1) activations."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:  # norms
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("embed_tokens.weight"):
                p.copy_(torch.randn(p.shape, generator=g))
            else:  # [.., out, in] linear layout (3-D for fused experts)
                fan_in = p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))


def hub_config(cfg_dict, model_type, torch_dtype):
    """transformers 5 writes rope_parameters / dtype / renamed expert counts; the Hub has the
    older spelling, which is what moex must parse (and transformers still reads)."""
    d = dict(cfg_dict)
    rp = d.pop("rope_parameters", None) or {}
    d["rope_theta"] = rp.get("rope_theta", 10000.0)
    if rp.get("rope_type", "default") != "default":
        scaling = {k: v for k, v in rp.items() if k not in ("rope_theta", "rope_type")}
        scaling["type"] = rp["rope_type"]
        d["rope_scaling"] = scaling
    else:
        d["rope_scaling"] = None
    d.pop("dtype", None)
    if d.get("head_dim", 0) is None:  # Mixtral: the Hub config has no head_dim at all
        d.pop("head_dim")
    d["torch_dtype"] = torch_dtype
    if model_type == "qwen3_moe" and "num_local_experts" in d:
        d["num_experts"] = d.pop("num_local_experts")
    if model_type in ("deepseek_v2", "deepseek_v3"):
        for k in ("num_experts", "num_local_experts"):
            if k in d:
                d["n_routed_experts"] = d.pop(k)
    if model_type == "deepseek_v3" and "num_mtp_layers" in d:
        d["num_nextn_predict_layers"] = d.pop("num_mtp_layers")
    if model_type in ("deepseek_v2", "deepseek_v3"):
        # Hub DeepSeek configs have no head_dim (transformers derives it = qk_rope_head_dim) and
        # spell out the routing that transformers hard-codes for V3.
        d.pop("head_dim", None)
        d.pop("qk_head_dim", None)
        d["scoring_func"] = "sigmoid" if model_type == "deepseek_v3" else "softmax"
        if model_type == "deepseek_v3":
            d["topk_method"] = "noaux_tc"
    return d


@torch.no_grad()
def greedy_reference(model, prompt):
    """HF generate (greedy, KV cache) and the smallest top1-top2 logit gap along the path."""
    out = model.generate(prompt[None], max_new_tokens=GEN_TOKENS, min_new_tokens=GEN_TOKENS, do_sample=False,
                         eos_token_id=None, pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    gen = out.sequences[0, prompt.numel():]
    margin = min(float((s[0].topk(2).values[0] - s[0].topk(2).values[1])) for s in out.scores)
    # The same tokens from full recomputation (no cache): guards against cache quirks in HF.
    seq = prompt.clone()
    for _ in range(GEN_TOKENS):
        nxt = model(seq[None]).logits[0, -1].argmax()
        seq = torch.cat([seq, nxt[None]])
    assert torch.equal(seq[prompt.numel():], gen), "HF generate disagrees with full recompute"
    return gen, margin


def make_variant(name, out_root):
    cfg_cls, model_cls, dtype, seed, kwargs = VARIANTS[name]
    torch.manual_seed(seed)
    cfg = cfg_cls(**kwargs)
    cfg._attn_implementation = "eager"
    model = model_cls(cfg).eval().float()
    randomize(model, seed)
    if dtype != torch.float32:  # bf16 values, fp32 compute for the reference (buffers such as
        with torch.no_grad():     # inv_freq stay fp32, as from_pretrained rebuilds them)
            for p in model.parameters():
                p.copy_(p.to(dtype).float())
    g = torch.Generator().manual_seed(1000 + seed)
    prompt = torch.randint(3, VOCAB, (PROMPT_LEN,), generator=g)

    d = os.path.join(out_root, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    copy.deepcopy(model).to(dtype).save_pretrained(d)
    cfg_path = os.path.join(d, "config.json")
    with open(cfg_path) as f:
        cfg_json = json.load(f)
    with open(cfg_path, "w") as f:
        json.dump(hub_config(cfg_json, cfg.model_type, "float32" if dtype == torch.float32 else "bfloat16"), f,
                  indent=2, sort_keys=True)
        f.write("\n")
    # Hub layout check: per-expert tensors, Hub module names.
    names = list(load_file(os.path.join(d, "model.safetensors")).keys())
    assert not any("gate_up_proj" in n for n in names), "fused experts were written"
    assert any(".experts.0." in n for n in names), "no per-expert tensors"
    if cfg.model_type == "mixtral":
        assert any("block_sparse_moe.experts.0.w1.weight" in n for n in names), "Mixtral names not Hub style"

    with torch.no_grad():
        logits = model(prompt[None]).logits[0].float()
    gen, margin = greedy_reference(model, prompt)

    # Reload from the rewritten files: transformers must accept them and agree.
    reloaded = model_cls.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        logits2 = reloaded(prompt[None]).logits[0].float()
    assert torch.equal(logits, logits2), f"{name}: reload from Hub-style files changed the logits"

    rotary = model.model.rotary_emb
    expected = {"prompt_ids": prompt.to(torch.int64), "logits": logits.contiguous(),
                "generated_ids": gen.to(torch.int64), "gen_logits_margin": torch.tensor(margin),
                "rope_inv_freq": rotary.inv_freq.float().contiguous(),
                "rope_attention_scaling": torch.tensor(float(rotary.attention_scaling))}
    if dtype != torch.float32:
        native = model_cls.from_pretrained(d, dtype=dtype, attn_implementation="eager").eval()
        with torch.no_grad():
            expected["logits_bf16"] = native(prompt[None]).logits[0].float().contiguous()
    save_file(expected, os.path.join(d, "expected.safetensors"),
              # one key: safetensors writes metadata maps in arbitrary order, so the file would differ run to run
              metadata={"generator": f"tools/gen_fixtures.py seed={seed} transformers={transformers.__version__} "
                                     f"torch={torch.__version__}"})
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    print(f"{name}: {size / 1e6:.2f} MB, prompt {prompt.tolist()}, generated {gen.tolist()}, "
          f"min greedy margin {margin:.4f}")
    if margin < 5e-3:
        print(f"warning: {name} has a near-tie on its greedy path; pick another seed", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "models"))
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)  # deterministic reductions
    names = [n for n in args.only.split(",") if n] or list(VARIANTS)
    for n in names:
        make_variant(n, args.out)


if __name__ == "__main__":
    main()
