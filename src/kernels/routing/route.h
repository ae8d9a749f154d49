// Router on the GPU (ops/routing.h): one warp per token.
#pragma once
#include <cuda_runtime.h>

#include "ops/routing.h"

namespace moex::kernels {

constexpr int kRouteMaxExperts = 1024;
constexpr int kRouteMaxGroups = 64;

cudaError_t launch_route(const ops::RouteParams& p, cudaStream_t stream);

}  // namespace moex::kernels
