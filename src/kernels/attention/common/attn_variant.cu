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
    return r;
  }();
  return v;
}

}  // namespace moex::kernels
