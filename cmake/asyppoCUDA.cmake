# asyppoCUDA.cmake: the CUDA language and toolkit for ASYPPO_ENABLE_CUDA=ON.
#
# CUDA 13's nvcc supports sm_75 and newer only, and CMake's default (or `native`, which needs a
# GPU at configure time) must not be used on GPU-less build machines: unless the caller sets
# CMAKE_CUDA_ARCHITECTURES, build for sm_80 and sm_90 (A100, H100).
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES OR CMAKE_CUDA_ARCHITECTURES STREQUAL "")
  set(CMAKE_CUDA_ARCHITECTURES 80 90)
endif()
# C++20 for CUDA: CMake >= 3.26 knows nvcc's -std=c++20. CMake 3.25 (Debian 12, the CI machine)
# does not: enable_language(CUDA) fails with CMAKE_CUDA_STANDARD=20, and so does generation of any
# CUDA target whose CXX_STANDARD is 20 (CMake falls back to it for CUDA). There, after
# enable_language, the flags are taught to CMake (nvcc >= 12 accepts -std=c++20).
set(_asyppo_cuda_teach_std20 FALSE)
if(CMAKE_VERSION VERSION_LESS 3.26)
  set(_asyppo_cuda_teach_std20 TRUE)
  if(DEFINED CMAKE_CUDA_STANDARD AND CMAKE_CUDA_STANDARD STREQUAL "20")
    unset(CMAKE_CUDA_STANDARD)
    unset(CMAKE_CUDA_STANDARD CACHE)
  endif()
endif()
if(NOT DEFINED CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX} AND EXISTS /usr/local/cuda/bin/nvcc)
  set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
endif()
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)
if(_asyppo_cuda_teach_std20)
  set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
  set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
  list(APPEND CMAKE_CUDA_COMPILE_FEATURES cuda_std_20)
  list(REMOVE_DUPLICATES CMAKE_CUDA_COMPILE_FEATURES)
endif()
if(NOT DEFINED CMAKE_CUDA_STANDARD)
  set(CMAKE_CUDA_STANDARD 20)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
endif()
if(CMAKE_CUDA_COMPILER_VERSION VERSION_LESS 12.0)
  message(FATAL_ERROR "asyppo: the CUDA backend needs CUDA 12 or newer (CCCL 2.x/3.x), found ${CMAKE_CUDA_COMPILER_VERSION}")
endif()
message(STATUS "asyppo: CUDA ${CMAKE_CUDA_COMPILER_VERSION}, architectures ${CMAKE_CUDA_ARCHITECTURES}")
