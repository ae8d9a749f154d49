// One factory per architecture family; the returned model still needs load_weights().
#pragma once
#include <memory>

#include "model/model_base.h"

namespace moex {

std::unique_ptr<ModelBase> make_qwen3_moe_model(Backend& backend, const ModelConfig& config);
std::unique_ptr<ModelBase> make_mixtral_model(Backend& backend, const ModelConfig& config);
std::unique_ptr<ModelBase> make_deepseek_model(Backend& backend, const ModelConfig& config);  // V2 and V3

}  // namespace moex
