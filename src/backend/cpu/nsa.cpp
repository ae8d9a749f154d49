// Native Sparse Attention on the CPU: the reference (contract: src/ops/nsa.h).
#include "backend/cpu/cpu_ops.h"

namespace moex::cpu {

Status nsa_forward(const Ctx&, const ops::NsaForwardParams&) { return unsupported("nsa_forward: not implemented on the cpu backend yet"); }
Status nsa_decode(const Ctx&, const ops::NsaDecodeParams&) { return unsupported("nsa_decode: not implemented on the cpu backend yet"); }

}  // namespace moex::cpu
