#include "runtime/page_pool.h"

#include <string>

namespace moex {

PagePool::PagePool(int num_pages, int page_size) : num_pages_(num_pages), page_size_(page_size) {
  free_.reserve(size_t(num_pages));
  for (int p = num_pages - 1; p >= 0; --p) free_.push_back(p);  // page 0 is handed out first
}

Status PagePool::reserve(std::vector<int32_t>* pages, int64_t num_tokens) {
  const int64_t needed = (num_tokens + page_size_ - 1) / page_size_;
  if (needed - int64_t(pages->size()) > int64_t(free_.size())) {
    return {StatusCode::kOutOfMemory, "KV cache full: " + std::to_string(num_tokens) + " tokens need " +
                                          std::to_string(needed) + " pages, " + std::to_string(free_.size()) +
                                          " free of " + std::to_string(num_pages_) + " (raise --max-context)"};
  }
  while (int64_t(pages->size()) < needed) {
    pages->push_back(free_.back());
    free_.pop_back();
  }
  return Status::ok();
}

void PagePool::release(std::vector<int32_t>* pages) {
  for (auto it = pages->rbegin(); it != pages->rend(); ++it) free_.push_back(*it);
  pages->clear();
}

}  // namespace moex
