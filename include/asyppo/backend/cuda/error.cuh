// asyppo/backend/cuda/error.cuh: CUDA/CUB statuses as asyppo::error, and device-pointer checks.
//
// Every runtime or CUB call of the CUDA backend goes through ASYPPO_CUDA_CHECK, which turns a
// status other than cudaSuccess into asyppo::error("asyppo::cuda_backend", "<the call>", ...),
// so the message names the failing call, e.g.
//   asyppo::cuda_backend: cudaMallocAsync(&p, bytes, stream): cudaErrorMemoryAllocation (2): out of memory
// Kernel launches are checked with check_launch("<kernel>") (cudaGetLastError right after the launch).
// Only valid under nvcc (the header is part of the CUDA component, asyppo::cuda).
#pragma once

#if !defined(__CUDACC__)
#error "asyppo/backend/cuda/*.cuh must be compiled by nvcc (a .cu translation unit; link asyppo::cuda)"
#endif

#include <cuda_runtime.h>

#include <string>

#include "asyppo/error.hpp"

namespace asyppo::cuda_detail {

inline constexpr const char* backend_name = "asyppo::cuda_backend";

/// Throws asyppo::error naming `call` when status is not cudaSuccess. Clears the sticky
/// last-error state of non-sticky errors so later calls do not report it again.
inline void check_status(cudaError_t status, const char* call) {
  if (status == cudaSuccess) return;
  (void)cudaGetLastError();
  detail::fail(backend_name, call, cudaGetErrorName(status), " (", static_cast<int>(status),
               "): ", cudaGetErrorString(status));
}

/// A kernel launch's status (cudaLaunchKernelEx): launch-configuration errors (and earlier asynchronous
/// errors) name the kernel.
inline void check_launch(const char* kernel, cudaError_t status) {
  if (status == cudaSuccess) return;
  (void)cudaGetLastError();
  detail::fail(backend_name, kernel, "kernel launch failed: ", cudaGetErrorName(status), " (",
               static_cast<int>(status), "): ", cudaGetErrorString(status));
}

}  // namespace asyppo::cuda_detail

/// Checks a CUDA runtime / CUB status; the error names the call as written.
#define ASYPPO_CUDA_CHECK(call) ::asyppo::cuda_detail::check_status((call), #call)

namespace asyppo {

/// Throws asyppo::error(where, name, ...) unless p (when non-null) is device-accessible memory of
/// `device` (device or managed memory; plain or pinned host memory is rejected). Costs one
/// cudaPointerGetAttributes call (no synchronisation). Every entry point calls it, through
/// cuda_backend::check_memory and detail::check_memory, on each view before any launch.
/// While `stream` is being captured into a CUDA graph, memory the driver does not know (yet) is
/// accepted: a graph allocation (cudaMallocAsync during the capture, which is how the backend's own
/// temporaries and results are allocated then) is mapped only when the graph runs, and until then its
/// attributes read "unregistered", as plain host memory's do. Pinned host memory and other devices'
/// memory are still rejected during a capture.
inline void check_device_pointer(const void* p, int device, const char* where, const char* name,
                                 cudaStream_t stream = nullptr) {
  if (p == nullptr) return;
  cudaPointerAttributes attr{};
  const cudaError_t status = cudaPointerGetAttributes(&attr, p);
  if (status != cudaSuccess) {
    (void)cudaGetLastError();
    detail::fail(where, name, "cudaPointerGetAttributes failed: ", cudaGetErrorName(status));
  }
  switch (attr.type) {
    case cudaMemoryTypeDevice:
      if (attr.device != device)
        detail::fail(where, name, "device pointer of device ", attr.device, ", but the backend uses device ", device);
      return;
    case cudaMemoryTypeManaged: return;
    case cudaMemoryTypeHost:
      detail::fail(where, name, "is a pinned host pointer; the CUDA backend needs device memory");
    case cudaMemoryTypeUnregistered:
    default: {
      cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
      if (stream != nullptr && cudaStreamIsCapturing(stream, &capture) == cudaSuccess &&
          capture == cudaStreamCaptureStatusActive)
        return;  // possibly a graph allocation of this capture (see above)
      (void)cudaGetLastError();
      detail::fail(where, name, "is a host pointer; the CUDA backend needs device memory");
    }
  }
}

}  // namespace asyppo
