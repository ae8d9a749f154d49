// Facts about the current device that launch heuristics use (never results: a choice made from
// them changes how work is split, not the bits a row gets).
#pragma once

namespace moex::kernels {

// Streaming multiprocessors of the current device; 132 (an H100 SXM) if the query fails.
int sm_count();

}  // namespace moex::kernels
