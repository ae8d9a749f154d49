// Model::load: config -> the family's model -> weights (checkpoint or random) on the backend.
#include "model/model.h"

#include "model/archs/archs.h"
#include "model/weights/safetensors.h"

namespace moex {

Expected<std::unique_ptr<Model>> Model::load(const std::string& dir, Backend& backend, const LoadOptions& options) {
  MOEX_ASSIGN_OR_RETURN(ModelConfig config, load_model_config(dir));
  std::unique_ptr<ModelBase> model;
  switch (config.arch) {
    case Arch::kQwen3Moe: model = make_qwen3_moe_model(backend, config); break;
    case Arch::kMixtral: model = make_mixtral_model(backend, config); break;
    case Arch::kDeepseekV2:
    case Arch::kDeepseekV3: model = make_deepseek_model(backend, config); break;
  }
  if (!model) return unsupported(dir + "/config.json: architecture not supported by moex");
  if (options.random_weights) {
    MOEX_RETURN_IF_ERROR(model->load_weights(nullptr, options.seed));
  } else {
    MOEX_ASSIGN_OR_RETURN(SafetensorsCheckpoint ckpt, SafetensorsCheckpoint::open_dir(dir));
    Status st = model->load_weights(&ckpt, options.seed);
    if (!st.is_ok()) return Status(st.code(), dir + ": " + st.message());
  }
  return std::unique_ptr<Model>(std::move(model));
}

}  // namespace moex
