// asyppo::nccl_comm on one rank (run only where a CUDA device is present; the runner exits 77 =
// skipped otherwise). Checks the collectives' contract on one rank, and that the batch-global
// algorithms give bit-identical results with nccl_comm and with single_process, on the CPU backend
// (the communicator works on host memory) and on the CUDA backend.
#include <catch2/catch.hpp>

#include <cstdint>
#include <random>
#include <vector>

#include "asyppo/asyppo.hpp"
#include "asyppo/backend/cuda/cuda_backend.cuh"
#include "asyppo/comm/nccl.cuh"

using namespace asyppo;

namespace {

nccl_comm one_rank() {
  ncclUniqueId id;
  REQUIRE(ncclGetUniqueId(&id) == ncclSuccess);
  return nccl_comm::init(0, 1, id, nullptr);
}

}  // namespace

TEST_CASE("nccl_comm: collectives on one rank", "[nccl]") {
  const nccl_comm c = one_rank();
  CHECK(c.rank() == 0);
  CHECK(c.size() == 1);
  std::vector<std::uint64_t> u{1, 2, 3};
  c.allreduce_sum(u.data(), 3);
  CHECK(u == std::vector<std::uint64_t>{1, 2, 3});
  std::vector<double> d{0.5, -2.25};
  c.allreduce_sum(d.data(), 2);
  CHECK(d == std::vector<double>{0.5, -2.25});
  CHECK(c.exclusive_scan_sum(std::uint64_t{7}) == 0u);
  const std::int64_t in[2] = {-4, 9};
  std::int64_t out[2] = {0, 0};
  c.allgather(in, 2, out);
  CHECK(out[0] == -4);
  CHECK(out[1] == 9);
}

TEST_CASE("nccl_comm: advantage step identical to single_process", "[nccl]") {
  const nccl_comm c = one_rank();
  const int K = 2, B = 24, Tn = 300;
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<float> u(0, 1);
  std::vector<float> V(static_cast<std::size_t>(K) * B * Tn), r(static_cast<std::size_t>(B) * Tn, 0.f);
  std::vector<std::uint8_t> m(static_cast<std::size_t>(B) * Tn);
  std::vector<std::int64_t> ids(B);
  for (auto& x : V) x = u(rng);
  for (int b = 0; b < B; ++b) {
    const int L = 1 + static_cast<int>(rng() % Tn);
    for (int t = 0; t < Tn; ++t) m[static_cast<std::size_t>(b) * Tn + t] = t < L;
    r[static_cast<std::size_t>(b) * Tn + L - 1] = static_cast<float>(rng() % 2);
    ids[static_cast<std::size_t>(b)] = b / 4;
  }
  auto run = [&](auto comm) {
    std::vector<float> adv(m.size()), ret(m.size()), w(static_cast<std::size_t>(K) * B);
    std::vector<std::uint8_t> am(m.size()), em(m.size());
    const auto s = advantage_step(cpu_backend(1),
                                  advantage_inputs<float>{{V.data(), K, B, Tn}, {r.data(), B, Tn}, {m.data(), B, Tn},
                                                          {ids.data(), B}},
                                  advantage_outputs<float>{{adv.data(), B, Tn}, {ret.data(), B, Tn}, {am.data(), B, Tn},
                                                           {em.data(), B, Tn}, {w.data(), K, B}},
                                  advantage_config{}, comm);
    return std::make_tuple(adv, ret, am, em, w, s.valid_tokens, s.adv_masked, s.entropy_masked);
  };
  CHECK(run(c) == run(single_process{}));
}
