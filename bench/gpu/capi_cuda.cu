// bench/gpu/capi_cuda.cu: the C interface of capi.hpp on the CUDA backend: buffers in device memory,
// work queued on the caller's stream (a cudaStream_t passed as void*; PyTorch:
// torch.cuda.current_stream().cuda_stream). Calls that return host values wait for that stream.
// One backend per stream is kept for the life of the process, so its cuBLAS handle is created once.
// Temporaries come from the device's current pool (cudaMallocAsync), or, after
// asyppo_bench_set_memory_pool(1), from one asyppo::cuda_memory_pool that keeps its memory across
// synchronisations (to time the calls with and without the driver re-mapping their temporaries).
#include <memory>
#include <utility>
#include <vector>

#include "asyppo/backend/cuda/cuda_backend.cuh"
#include "capi.hpp"

namespace {
bool use_pool = false;

asyppo::cuda_backend cuda_for(void* stream) {
  static std::vector<std::pair<void*, std::unique_ptr<asyppo::cuda_backend>>> backends;
  static std::unique_ptr<asyppo::cuda_memory_pool> pool;
  const asyppo::cuda_backend* be = nullptr;
  for (const auto& [s, b] : backends)
    if (s == stream) be = b.get();
  if (!be) {
    backends.emplace_back(stream, std::make_unique<asyppo::cuda_backend>(static_cast<cudaStream_t>(stream)));
    be = backends.back().second.get();
  }
  if (!use_pool) return *be;
  if (!pool) pool = std::make_unique<asyppo::cuda_memory_pool>(be->device());
  return be->with_memory_pool(*pool);
}
}  // namespace

extern "C" int asyppo_bench_set_memory_pool(int on) {
  use_pool = on != 0;
  return 0;
}

ASYPPO_BENCH_CAPI_EXPORTS("cuda", cuda_for)
