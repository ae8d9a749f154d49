// Fixed pool of KV cache pages handed out to sequences (a block manager without prefix
// sharing yet). Page ids index the model's per-layer caches.
#pragma once
#include <cstdint>
#include <vector>

#include "core/status.h"

namespace moex {

class PagePool {
 public:
  PagePool(int num_pages, int page_size);
  int page_size() const { return page_size_; }
  int num_pages() const { return num_pages_; }
  int free_pages() const { return int(free_.size()); }
  // Grow `pages` so that it covers `num_tokens` token slots.
  Status reserve(std::vector<int32_t>* pages, int64_t num_tokens);
  void release(std::vector<int32_t>* pages);

 private:
  int num_pages_;
  int page_size_;
  std::vector<int32_t> free_;  // LIFO free list
};

}  // namespace moex
