// bench_mpi_advantage: the global (multi-process) advantage step against the single-process step,
// and the bytes each rank contributes to the collectives per step.
//
// Run:  mpiexec -n 4 --oversubscribe --allow-run-as-root build/release/bench/bench_mpi_advantage [reps]
// Plain main() with std::chrono (Google Benchmark under MPI is awkward); rank 0 prints the tables.
//
// Batch: every rank builds the same synthetic rollout batch of R*rows x T tokens from a fixed seed
// (K = 2 critics, float, long-tailed response lengths with holes, 0/1 outcome reward, noisy critics;
// the recipe of bench_advantage.cpp) and takes rows [r*rows, (r+1)*rows). Config: the paper's
// defaults (k = h = 0.2, batch scope, gamma = lambda = 1, summary statistics on), cpu_backend(1).
//   single-process R*rows x T   rank 0 alone runs advantage_step on the whole batch (the other ranks
//                               wait in a sleeping poll loop, not in a spinning MPI barrier)
//   single-process rows x T     rank 0 alone on one rank's share (what perfect scaling would give)
//   global R x (rows x T)       every rank runs advantage_step on its rows with the MPI communicator;
//                               time = max over ranks of each repetition (barrier before each)
// Reported: median over reps (default 7) after one warm-up, in milliseconds.
//
// Bytes: a counting communicator forwards every call to asyppo::mpi_comm and adds up, per rank, the
// payload this rank contributes to each collective: n * sizeof(T) for allreduce_sum and allgather,
// sizeof(T) for exclusive_scan_sum. (What goes over the wire depends on MPI's algorithm: a ring
// allreduce sends about 2 (R-1)/R times the payload, an allgather (R-1)/R times R payloads; and
// mpi_comm implements a double allreduce_sum as an allgather, so its wire volume is R times its
// payload; the payload is the machine-independent number.) Shown for the mask selection alone
// (uncertainty_masks on the same sigma) and for the whole step, at two sizes, to show that the
// selection's volume does not depend on the number of tokens.
#include "synthetic_rollout.hpp"
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "asyppo/asyppo.hpp"
#include "asyppo/comm/mpi.hpp"

namespace {

using asyppo::index_t;
using F = float;
constexpr index_t kK = 2;
constexpr int kGroup = 8;

// ---- communicator that counts ----------------------------------------------------------------
struct comm_tally {
  std::uint64_t calls = 0, bytes = 0;
  std::map<std::string, std::pair<std::uint64_t, std::uint64_t>> by_kind;  // kind -> (calls, bytes)
  void add(const std::string& kind, std::uint64_t b) {
    ++calls;
    bytes += b;
    auto& e = by_kind[kind];
    ++e.first;
    e.second += b;
  }
};

template <class T>
const char* type_name() {
  if constexpr (std::is_same_v<T, double>) return "f64";
  else if constexpr (std::is_same_v<T, float>) return "f32";
  else if constexpr (std::is_same_v<T, std::uint64_t>) return "u64";
  else if constexpr (std::is_same_v<T, std::int64_t>) return "i64";
  else return "other";
}

/// Forwards the communicator contract to an inner communicator and counts payload bytes.
template <class Inner>
struct counting_comm {
  const Inner* inner;
  comm_tally* tally;
  int rank() const { return inner->rank(); }
  int size() const { return inner->size(); }
  template <class T>
  void allreduce_sum(T* d, index_t n) const {
    tally->add(std::string("allreduce_sum<") + type_name<T>() + ">", static_cast<std::uint64_t>(n) * sizeof(T));
    inner->allreduce_sum(d, n);
  }
  template <class T>
  T exclusive_scan_sum(T v) const {
    tally->add(std::string("exclusive_scan_sum<") + type_name<T>() + ">", sizeof(T));
    return inner->exclusive_scan_sum(v);
  }
  template <class T>
  void allgather(const T* in, index_t n, T* out) const {
    tally->add(std::string("allgather<") + type_name<T>() + ">", static_cast<std::uint64_t>(n) * sizeof(T));
    inner->allgather(in, n, out);
  }
};

// ---- synthetic batch (the benchmarks' shared recipe) -----------------------------------------
using batch = asyppo_bench::rollout;

batch make_batch(index_t B, index_t T, std::uint64_t seed = 1) { return asyppo_bench::make_rollout(B, T, kK, kGroup, seed); }

/// Rows [b0, b1) of d.
batch rows_of(const batch& d, index_t b0, index_t b1) {
  batch o;
  o.K = d.K;
  o.B = b1 - b0;
  o.T = d.T;
  const index_t BT = d.B * d.T;
  for (index_t k = 0; k < kK; ++k)
    o.values.insert(o.values.end(), d.values.begin() + k * BT + b0 * d.T, d.values.begin() + k * BT + b1 * d.T);
  o.rewards.assign(d.rewards.begin() + b0 * d.T, d.rewards.begin() + b1 * d.T);
  o.mask.assign(d.mask.begin() + b0 * d.T, d.mask.begin() + b1 * d.T);
  o.ids.assign(d.ids.begin() + b0, d.ids.begin() + b1);
  o.scores.assign(d.scores.begin() + b0, d.scores.begin() + b1);
  return o;
}

struct outputs {
  std::vector<F> adv, ret, sd;
  std::vector<std::uint8_t> am, em;
  explicit outputs(index_t n)
      : adv(static_cast<std::size_t>(n)), ret(static_cast<std::size_t>(n)), sd(static_cast<std::size_t>(n)),
        am(static_cast<std::size_t>(n)), em(static_cast<std::size_t>(n)) {}
};

template <class Comm>
asyppo::advantage_summary step(const batch& d, outputs& o, const Comm& comm) {
  using namespace asyppo;
  const advantage_inputs<F> in{critic_view<const F>(d.values.data(), kK, d.B, d.T),
                               token_view<const F>(d.rewards.data(), d.B, d.T), mask_view(d.mask.data(), d.B, d.T),
                               seq_view<const std::int64_t>(d.ids.data(), d.B)};
  const advantage_outputs<F> out{token_view<F>(o.adv.data(), d.B, d.T), token_view<F>(o.ret.data(), d.B, d.T),
                                 mask_out(o.am.data(), d.B, d.T), mask_out(o.em.data(), d.B, d.T), view<F, 2>{},
                                 token_view<F>(o.sd.data(), d.B, d.T)};
  return advantage_step(cpu_backend(1), in, out, advantage_config{}, comm);
}

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

/// Barrier whose waiting ranks sleep (so they do not steal the cores of a rank being timed alone).
void quiet_barrier() {
  MPI_Request req;
  MPI_Ibarrier(MPI_COMM_WORLD, &req);
  int done = 0;
  while (!done) {
    MPI_Test(&req, &done, MPI_STATUS_IGNORE);
    if (!done) std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

struct size_result {
  index_t rows = 0, T = 0;
  double single_full_ms = 0, single_share_ms = 0, global_ms = 0;
  comm_tally step_tally, mask_tally;
  bool masks_match = true;
};

size_result run_size(const asyppo::mpi_comm& world, index_t rows, index_t T, int reps) {
  const int R = world.size(), me = world.rank();
  size_result res;
  res.rows = rows;
  res.T = T;
  const batch full = make_batch(R * rows, T);
  const batch mine = rows_of(full, me * rows, (me + 1) * rows);

  // Single process, rank 0 alone (whole batch, then one rank's share).
  outputs fo(full.B * T), so(rows * T);
  quiet_barrier();
  if (me == 0) {
    std::vector<double> tf, ts;
    for (int i = 0; i <= reps; ++i) {
      const double t0 = now_ms();
      step(full, fo, asyppo::single_process{});
      if (i > 0) tf.push_back(now_ms() - t0);
    }
    const batch share = rows_of(full, 0, rows);
    for (int i = 0; i <= reps; ++i) {
      const double t0 = now_ms();
      step(share, so, asyppo::single_process{});
      if (i > 0) ts.push_back(now_ms() - t0);
    }
    res.single_full_ms = median(tf);
    res.single_share_ms = median(ts);
  }
  quiet_barrier();

  // Global step: every rank on its rows.
  outputs go(rows * T);
  std::vector<double> tg;
  for (int i = 0; i <= reps; ++i) {
    MPI_Barrier(MPI_COMM_WORLD);
    const double t0 = now_ms();
    step(mine, go, world);
    double dt = now_ms() - t0;
    MPI_Allreduce(MPI_IN_PLACE, &dt, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (i > 0) tg.push_back(dt);
  }
  res.global_ms = median(tg);

  // Bytes of one step, and of the mask selection alone (uncertainty_masks on the step's sigma).
  const counting_comm<asyppo::mpi_comm> cs{&world, &res.step_tally};
  step(mine, go, cs);
  std::vector<std::uint8_t> am(static_cast<std::size_t>(rows * T)), em(static_cast<std::size_t>(rows * T));
  const counting_comm<asyppo::mpi_comm> cm{&world, &res.mask_tally};
  asyppo::uncertainty_masks(asyppo::cpu_backend(1), asyppo::token_view<const F>(go.sd.data(), rows, T),
                            asyppo::mask_view(mine.mask.data(), rows, T), asyppo::mask_out(am.data(), rows, T),
                            asyppo::mask_out(em.data(), rows, T), asyppo::mask_options{}, cm);

  // Correctness: each rank's masks (step and selection alone) against its slice of the single-process
  // masks of the whole batch (computed by rank 0, broadcast).
  std::vector<std::uint8_t> full_am(static_cast<std::size_t>(full.B * T));
  if (me == 0) full_am = fo.am;
  MPI_Bcast(full_am.data(), static_cast<int>(full_am.size()), MPI_UINT8_T, 0, MPI_COMM_WORLD);
  int ok = std::equal(go.am.begin(), go.am.end(), full_am.begin() + me * rows * T) &&
           std::equal(am.begin(), am.end(), full_am.begin() + me * rows * T);
  MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  res.masks_match = ok != 0;
  return res;
}

std::string human(std::uint64_t b) {
  char buf[64];
  if (b >= (1u << 20)) std::snprintf(buf, sizeof buf, "%.2f MiB", static_cast<double>(b) / (1 << 20));
  else if (b >= 1024) std::snprintf(buf, sizeof buf, "%.1f KiB", static_cast<double>(b) / 1024);
  else std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(b));
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rc = 0;
  {
    const asyppo::mpi_comm world;
    const int reps = argc > 1 ? std::max(1, std::atoi(argv[1])) : 7;
    const int R = world.size();
    std::vector<size_result> results;
    for (index_t rows : {index_t(16), index_t(64)}) results.push_back(run_size(world, rows, 4096, reps));
    if (world.rank() == 0) {
      std::printf("bench_mpi_advantage: R = %d ranks, K = %lld critics, float, cpu_backend(1) per rank, "
                  "median of %d reps (ms)\n\n",
                  R, static_cast<long long>(kK), reps);
      std::printf("| tokens per rank | single-process, whole batch | single-process, one share | global step, %d ranks |"
                  " masks == single-process |\n|---|---|---|---|---|\n", R);
      for (const auto& r : results)
        std::printf("| %lld x %lld (total %d x %lld x %lld) | %.1f | %.1f | %.1f | %s |\n", static_cast<long long>(r.rows),
                    static_cast<long long>(r.T), R, static_cast<long long>(r.rows), static_cast<long long>(r.T),
                    r.single_full_ms, r.single_share_ms, r.global_ms, r.masks_match ? "yes" : "NO");
      std::printf("\nPayload bytes each rank contributes per call (collective calls / bytes):\n\n");
      std::printf("| tokens per rank | mask selection (uncertainty_masks) | whole advantage step |\n|---|---|---|\n");
      for (const auto& r : results)
        std::printf("| %lld x %lld | %llu calls, %s | %llu calls, %s |\n", static_cast<long long>(r.rows),
                    static_cast<long long>(r.T), static_cast<unsigned long long>(r.mask_tally.calls),
                    human(r.mask_tally.bytes).c_str(), static_cast<unsigned long long>(r.step_tally.calls),
                    human(r.step_tally.bytes).c_str());
      std::printf("\nWhole step by call kind (%lld x %lld per rank):\n\n| call | calls | bytes |\n|---|---|---|\n",
                  static_cast<long long>(results.back().rows), static_cast<long long>(results.back().T));
      for (const auto& [kind, cb] : results.back().step_tally.by_kind)
        std::printf("| %s | %llu | %s |\n", kind.c_str(), static_cast<unsigned long long>(cb.first), human(cb.second).c_str());
    }
    for (const auto& r : results) rc |= r.masks_match ? 0 : 1;
  }
  MPI_Finalize();
  return rc;
}
