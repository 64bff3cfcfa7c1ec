// asyppo/comm/nccl_mpi.cuh: an NCCL communicator bootstrapped through MPI.
//
// Rank 0 of the MPI communicator creates the NCCL unique id, MPI_Bcast hands it to every rank,
// and each rank initialises its NCCL rank (MPI rank r -> NCCL rank r). Collective over the MPI
// communicator; each rank must have selected its GPU (cudaSetDevice) before. Needs asyppo::nccl
// and asyppo::mpi; only valid under nvcc.
#pragma once

#include "asyppo/comm/mpi.hpp"
#include "asyppo/comm/nccl.cuh"

namespace asyppo {

inline nccl_comm nccl_comm_from_mpi(const mpi_comm& mpi, cudaStream_t stream) {
  ncclUniqueId id{};
  if (mpi.rank() == 0) {
    const ncclResult_t r = ncclGetUniqueId(&id);
    if (r != ncclSuccess) detail::fail("asyppo::nccl_comm_from_mpi", "ncclGetUniqueId", ncclGetErrorString(r));
  }
  if (MPI_Bcast(&id, static_cast<int>(sizeof id), MPI_BYTE, 0, mpi.get()) != MPI_SUCCESS)
    detail::fail("asyppo::nccl_comm_from_mpi", "MPI_Bcast", "broadcast of the NCCL unique id failed");
  return nccl_comm::init(mpi.rank(), mpi.size(), id, stream);
}

}  // namespace asyppo
