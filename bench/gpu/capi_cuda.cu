// bench/gpu/capi_cuda.cu: the C interface of capi.hpp on the CUDA backend: buffers in device memory,
// work queued on the caller's stream (a cudaStream_t passed as void*; PyTorch:
// torch.cuda.current_stream().cuda_stream). Calls that return host values wait for that stream.
// One backend per stream is kept for the life of the process, so its cuBLAS handle is created once.
#include <memory>
#include <utility>
#include <vector>

#include "asyppo/backend/cuda/cuda_backend.cuh"
#include "capi.hpp"

namespace {
const asyppo::cuda_backend& cuda_for(void* stream) {
  static std::vector<std::pair<void*, std::unique_ptr<asyppo::cuda_backend>>> backends;
  for (const auto& [s, be] : backends)
    if (s == stream) return *be;
  backends.emplace_back(stream, std::make_unique<asyppo::cuda_backend>(static_cast<cudaStream_t>(stream)));
  return *backends.back().second;
}
}  // namespace

ASYPPO_BENCH_CAPI_EXPORTS("cuda", cuda_for)
