// The paged-attention variant from the environment (kernels/attention/attention.h), read once.
#include <cstdlib>
#include <cstring>

#include "kernels/attention/attention.h"

namespace moex::kernels {

AttnVariant attn_variant() {
  static const AttnVariant v = [] {
    AttnVariant r;
    if (const char* s = std::getenv("MOEX_ATTN_SHORT_SPLIT"); s && std::strcmp(s, "256") == 0) r.short_split_keys = 256;
    if (const char* h = std::getenv("MOEX_ATTN_HOIST"); h && std::strcmp(h, "0") == 0) r.hoist_pages = false;
    if (const char* g = std::getenv("MOEX_GQA_TC"); g && std::strcmp(g, "0") == 0) r.gqa_tensor_cores = false;
    if (const char* k = std::getenv("MOEX_GQA_TC_SPLIT")) {
      if (std::strcmp(k, "64") == 0) r.gqa_tc_short_split_keys = 64;
      if (std::strcmp(k, "128") == 0) r.gqa_tc_short_split_keys = 128;
    }
    return r;
  }();
  return v;
}

}  // namespace moex::kernels
