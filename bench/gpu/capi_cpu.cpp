// bench/gpu/capi_cpu.cpp: the C interface of capi.hpp on the CPU backend (host buffers). The thread
// count comes from ASYPPO_BENCH_THREADS (default 1). Used to check the comparison scripts without a GPU.
#include <cstdlib>

#include "asyppo/backend/cpu.hpp"
#include "capi.hpp"

namespace {
const asyppo::cpu_backend& cpu_for(void*) {
  static const asyppo::cpu_backend be([] {
    const char* s = std::getenv("ASYPPO_BENCH_THREADS");
    return s ? std::atoi(s) : 1;
  }());
  return be;
}
}  // namespace

ASYPPO_BENCH_CAPI_EXPORTS("cpu", cpu_for)
