// Token sampling on the CPU backend (contract: src/ops/sampling.h).
#include "backend/cpu/cpu_ops.h"

namespace moex::cpu {

Status sample(const Ctx&, const ops::SampleParams&) { return unsupported("sample: not implemented on the cpu backend yet"); }

}  // namespace moex::cpu
