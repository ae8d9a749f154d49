#!/usr/bin/env python3
"""How far does bf16 alone move a random MoE network? HF transformers against itself, on the CPU.

Builds a reduced-width, full-depth random Qwen3-MoE or Mixtral (hidden 512; weight std scaled by
sqrt(full hidden / 512) so each layer has the full model's gains), runs it in fp32 and in bf16 on
the same 256 random ids and prints, per layer, the relative error of the bf16 hidden state, then
the top-1 agreement of the logits. `--layer0` instead splits layer 0's error into attention,
router (tokens whose expert set changes) and MoE output. No moex code runs: this measures the
networks, not an implementation (docs/hf-parity.md, "Why the 99% target is not met").

  python3 tools/parity_drift_study.py --arch mixtral --init hf --layers 8
  python3 tools/parity_drift_study.py --arch mixtral --init scaled --layers 8   # GPT-2 style
  python3 tools/parity_drift_study.py --arch qwen3 --layers 2 --layer0
"""
import argparse
import math

import torch
import transformers

WIDTH = 512


def build(arch, layers):
    if arch == "mixtral":
        cfg = transformers.MixtralConfig(hidden_size=WIDTH, intermediate_size=1792, num_hidden_layers=layers,
                                         num_attention_heads=4, num_key_value_heads=1, head_dim=128,
                                         num_local_experts=8, num_experts_per_tok=2, vocab_size=32000,
                                         max_position_embeddings=4096, rope_theta=1e6)
        return transformers.MixtralForCausalLM(cfg), 4096
    cfg = transformers.Qwen3MoeConfig(hidden_size=WIDTH, moe_intermediate_size=192, intermediate_size=1536,
                                      num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=1,
                                      head_dim=128, num_experts=128, num_experts_per_tok=8, vocab_size=32000,
                                      max_position_embeddings=4096, norm_topk_prob=True)
    return transformers.Qwen3MoeForCausalLM(cfg), 2048


def fill(model, init, layers, full_hidden):
    """Uniform weights: std 0.02 x sqrt(full_hidden / WIDTH) for matrices, 0.02 (or 1 with
    --init emb1) for the embedding, norms 1; --init scaled divides the residual-branch outputs
    (o_proj, down_proj, w2) by sqrt(2 layers)."""
    gain = math.sqrt(full_hidden / WIDTH)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 or "norm" in name:
                p.fill_(1.0)
                continue
            std = (1.0 if init == "emb1" else 0.02) if "embed" in name else 0.02 * gain
            if init == "scaled" and any(k in name for k in ("o_proj", "down_proj", "w2")):
                std /= math.sqrt(2 * layers)
            p.uniform_(-std * math.sqrt(3), std * math.sqrt(3))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", choices=["mixtral", "qwen3"], default="mixtral")
    ap.add_argument("--init", choices=["hf", "scaled", "emb1"], default="hf")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--layer0", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    model, full_hidden = build(args.arch, args.layers)
    model.config._attn_implementation = "eager"
    model = model.float().eval()
    fill(model, args.init, args.layers, full_hidden)
    ids = torch.randint(0, 32000, (1, 256))
    captured = {}
    if args.layer0:
        layer = model.model.layers[0]
        moe = layer.mlp if hasattr(layer, "mlp") else layer.block_sparse_moe

        def hook(name):
            def grab(_mod, _inp, out):
                o = out[0] if isinstance(out, tuple) else out
                captured.setdefault(name, []).append((o[0] if o.dim() == 3 else o).float().clone())
            return grab
        layer.self_attn.register_forward_hook(hook("attention"))
        moe.register_forward_hook(hook("moe"))
        moe.gate.register_forward_hook(hook("router"))
    with torch.no_grad():
        out32 = model(ids, output_hidden_states=True)
        model = model.to(torch.bfloat16)
        out16 = model(ids, output_hidden_states=True)
    if args.layer0:
        top_k = 2 if args.arch == "mixtral" else 8
        for name, (a, b) in captured.items():
            if name == "router":
                a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
                sa = a.topk(top_k, -1).indices.sort(-1).values
                sb = b.topk(top_k, -1).indices.sort(-1).values
                print(f"router: {100 * (sa != sb).any(-1).float().mean():.1f}% of tokens change their expert set")
            else:
                rel = (a - b).norm(dim=-1) / a.norm(dim=-1)
                print(f"{name}: relative error mean {rel.mean():.4f}, median {rel.median():.4f}")
        return
    for i, (a, b) in enumerate(zip(out32.hidden_states, out16.hidden_states)):
        a, b = a[0].float(), b[0].float()
        rel = ((a - b).norm(dim=-1) / a.norm(dim=-1)).mean()
        print(f"hidden state {i}: rms {a.pow(2).mean().sqrt():.3f}, bf16 relative error {rel:.4f}")
    l32, l16 = out32.logits[0].float(), out16.logits[0].float()
    agree = (l32.argmax(-1) == l16.argmax(-1)).float().mean()
    print(f"{args.arch} init {args.init} layers {args.layers}: bf16 vs fp32 top-1 agreement {100 * agree:.1f}%")


if __name__ == "__main__":
    main()
