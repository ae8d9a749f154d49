// The op implementations of the CPU reference backend, one function per Backend virtual.
// Contracts and shapes: src/ops/*.h. Each validates its params first and returns
// invalid_argument naming the op and tensor at fault.
#pragma once
#include "backend/cpu/cpu_common.h"
#include "ops/attention.h"
#include "ops/elementwise.h"
#include "ops/fused.h"
#include "ops/fused_moe.h"
#include "ops/matmul.h"
#include "ops/norm.h"
#include "ops/nsa.h"
#include "ops/prefill_attention.h"
#include "ops/rope.h"
#include "ops/routing.h"
#include "ops/sampling.h"

namespace moex::cpu {

Status embedding(const Ctx& ctx, const ops::EmbeddingParams& p);
Status copy(const Ctx& ctx, const ops::CopyParams& p);
Status add(const Ctx& ctx, const ops::AddParams& p);
Status silu_mul(const Ctx& ctx, const ops::SiluMulParams& p);
Status random_uniform(const Ctx& ctx, const ops::RandomUniformParams& p);
Status rms_norm(const Ctx& ctx, const ops::RmsNormParams& p);
Status rope(const Ctx& ctx, const ops::RopeParams& p);
Status matmul(const Ctx& ctx, const ops::MatmulParams& p);
Status route(const Ctx& ctx, const ops::RouteParams& p);
Status fused_moe(const Ctx& ctx, const ops::FusedMoeParams& p);
Status cache_write(const Ctx& ctx, const ops::CacheWriteParams& p);
Status gqa_attention(const Ctx& ctx, const ops::GqaAttentionParams& p);
Status mla_attention(const Ctx& ctx, const ops::MlaAttentionParams& p);
Status nsa_forward(const Ctx& ctx, const ops::NsaForwardParams& p);  // nsa.cpp
Status nsa_decode(const Ctx& ctx, const ops::NsaDecodeParams& p);    // nsa.cpp
Status prefill_attention(const Ctx& ctx, const ops::PrefillAttentionParams& p);  // prefill_attention.cpp
Status sample(const Ctx& ctx, const ops::SampleParams& p);           // sampling.cpp
Status add_rms_norm(const Ctx& ctx, const ops::AddRmsNormParams& p);      // fused.cpp
Status qkv_rope_cache(const Ctx& ctx, const ops::QkvRopeCacheParams& p);  // fused.cpp
Status mla_rope_cache(const Ctx& ctx, const ops::MlaRopeCacheParams& p);  // fused.cpp

}  // namespace moex::cpu
