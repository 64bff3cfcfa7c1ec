// The runner of every GPU test executable (built once, as the static library asyppo_gpu_main).
//
// Exits 77 (CTest's SKIP_RETURN_CODE for the `gpu` label) when no CUDA device can be used:
// cudaGetDeviceCount failing (35 cudaErrorInsufficientDriver without a driver, 34
// cudaErrorStubLibrary with the stub libcuda, 100 cudaErrorNoDevice) or reporting 0 devices. The
// error code is checked, not only the count: on failure the count is left untouched. Nothing else
// touches CUDA before this check.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cuda_runtime.h>

#include <cstdio>

int main(int argc, char* argv[]) {
  int devices = 0;
  const cudaError_t status = cudaGetDeviceCount(&devices);
  if (status != cudaSuccess || devices <= 0) {
    std::printf("SKIPPED: no usable CUDA device (cudaGetDeviceCount: %s (%d), count %d)\n",
                cudaGetErrorName(status), static_cast<int>(status), status == cudaSuccess ? devices : 0);
    return 77;
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess)
    std::printf("CUDA device 0: %s (sm_%d%d, %d SMs)\n", prop.name, prop.major, prop.minor, prop.multiProcessorCount);
  return Catch::Session().run(argc, argv);
}
