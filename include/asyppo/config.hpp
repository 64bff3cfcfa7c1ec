// asyppo/config.hpp: portability macros and the index type shared by every header.
//
// ASYPPO_HD marks every function and functor that must run on the host and on a CUDA
// device; under a plain C++ compiler it expands to nothing. Functors built by the
// algorithms hold only pointers and scalars, call no virtual function and never throw,
// so the same functor runs in the CPU backend's loops and in a CUDA kernel.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define ASYPPO_HD __host__ __device__
#else
#define ASYPPO_HD
#endif

#define ASYPPO_INLINE ASYPPO_HD inline

namespace asyppo {

/// Signed 64-bit index for every extent, stride and flat position: B*T*K overflows 32 bits
/// at the paper's scale (1024 x 8192 x 2 = 16.8M is fine, but callers pack far larger batches).
using index_t = std::int64_t;

}  // namespace asyppo
