// Tests of the batch-global statistics across MPI ranks (asyppo::mpi_comm, issue 6). Run by CTest
// under `mpiexec -n N --oversubscribe` for N = 1, 2, 3, 4 (tests test_mpi_global_npN, label mpi).
//
// Every rank builds the same random full batch from a fixed seed, computes the single-process result
// on the whole batch, takes its own rows from a random UNEVEN contiguous partition (rank order =
// batch order; some ranks get no row, some get only fully masked rows), runs the distributed
// computation on its rows and compares with its slice of the single-process result:
//   exact (bit-identical): uncertainty masks and mask counts/thresholds (heavy ties included),
//     advantage_step masks, advantages and returns (no whitening), sigma, summary counts, thresholds
//     and quantiles, loss gradients, global loss counts;
//   within tolerance (only the association of the sums differs: per-rank partial sums merged in
//     rank order): double 1e-11 relative to max(1, |reference|); outputs stored as float: 3e-7
//     relative to max(1, |reference|) (one float rounding of a value that differs by ~1e-15);
//     summary moments and group statistics 1e-9 relative (plus 1e-12 absolute); summed losses 1e-12
//     relative (plus 1e-14 absolute).
// Comparisons use CHECK (never REQUIRE) after the collectives, so a failure on one rank does not
// leave the others waiting in a collective; main() combines the ranks' results.
#define CATCH_CONFIG_RUNNER
// Catch2's implementation is compiled in this file (own main); GCC 12 at -O1 with sanitizers flags a
// false -Wmaybe-uninitialized inside std::regex/std::function there.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <catch2/catch.hpp>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "asyppo/asyppo.hpp"
#include "asyppo/comm/mpi.hpp"
#include "asyppo/core/global_counts.hpp"
#include "reference.hpp"

using namespace asyppo;
using i64 = std::int64_t;

namespace {

std::optional<mpi_comm> g_world;  // set in main(): an owned duplicate of MPI_COMM_WORLD
const mpi_comm& world() { return *g_world; }

// ---- tolerances ----------------------------------------------------------------------------
template <class T>
double out_tol() {
  return sizeof(T) == 4 ? 3e-7 : 1e-11;
}

template <class A, class B>
long first_diff(const std::vector<A>& got, const std::vector<B>& want) {
  if (got.size() != want.size()) return -2;
  for (std::size_t i = 0; i < got.size(); ++i)
    if (!(got[i] == static_cast<A>(want[i]))) return static_cast<long>(i);
  return -1;
}

template <class T>
long first_far(const std::vector<T>& got, const std::vector<T>& want, double tol) {
  if (got.size() != want.size()) return -2;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double g = static_cast<double>(got[i]), w = static_cast<double>(want[i]);
    if (!(std::abs(g - w) <= tol * std::max(1.0, std::abs(w)))) return static_cast<long>(i);
  }
  return -1;
}

#define CHECK_SAME(got, want) \
  do {                        \
    const long _d = first_diff(got, want); \
    INFO(#got " first difference at " << _d); \
    CHECK(_d == -1);          \
  } while (0)
#define CHECK_NEAR(got, want, tol) \
  do {                             \
    const long _d = first_far(got, want, tol); \
    INFO(#got " first difference beyond " << (tol) << " at " << _d \
         << (_d >= 0 ? " got " + std::to_string(static_cast<double>(got[static_cast<std::size_t>(_d)])) + " want " + \
                           std::to_string(static_cast<double>(want[static_cast<std::size_t>(_d)])) : std::string())); \
    CHECK(_d == -1);               \
  } while (0)

// ---- partitions ----------------------------------------------------------------------------
/// Contiguous row ranges [begin[r], begin[r+1]) of R ranks over B rows: random uneven sizes. With
/// R >= 2, by seed % 4: 0 nothing special; 1 one rank gets no row (zero_rank); 2 one rank's rows are
/// all masked (masked_rank); 3 both when R >= 3 (else as 2). So most cases keep at least two ranks
/// with valid tokens (tie offsets and group statistics really cross ranks).
struct partition {
  std::vector<int> begin;
  int zero_rank = -1, masked_rank = -1;
  int b0(int r) const { return begin[static_cast<std::size_t>(r)]; }
  int b1(int r) const { return begin[static_cast<std::size_t>(r + 1)]; }
};

partition make_partition(std::uint64_t seed, int B, int R) {
  std::mt19937_64 rng(seed * 7919 + static_cast<std::uint64_t>(R));
  partition p;
  if (R >= 2) {
    const int first = static_cast<int>((seed / 4) % static_cast<std::uint64_t>(R));
    const int mode = static_cast<int>(seed % 4);
    if (mode == 1 || (mode == 3 && R >= 3)) p.zero_rank = first;
    if (mode == 2 || mode == 3) p.masked_rank = (first + 1) % R;
  }
  std::uniform_real_distribution<double> u(0.05, 1.0);
  std::vector<double> w(static_cast<std::size_t>(R));
  for (int r = 0; r < R; ++r) w[static_cast<std::size_t>(r)] = r == p.zero_rank ? 0.0 : u(rng);
  double total = 0;
  for (double x : w) total += x;
  p.begin.assign(static_cast<std::size_t>(R + 1), 0);
  double acc = 0;
  for (int r = 0; r < R; ++r) {
    acc += w[static_cast<std::size_t>(r)];
    p.begin[static_cast<std::size_t>(r + 1)] = r + 1 == R ? B : static_cast<int>(std::floor(B * acc / total));
  }
  if (p.masked_rank >= 0 && p.b1(p.masked_rank) == p.b0(p.masked_rank)) {  // give it one row
    const int mr = p.masked_rank;
    if (p.b1(mr) < B) ++p.begin[static_cast<std::size_t>(mr + 1)];
    else --p.begin[static_cast<std::size_t>(mr)];
    for (int r = 1; r < R; ++r)
      p.begin[static_cast<std::size_t>(r)] = std::max(p.begin[static_cast<std::size_t>(r)], p.begin[static_cast<std::size_t>(r - 1)]);
  }
  return p;
}

/// Rows [b0, b1) of a row-major [.., B, T] tensor with `planes` leading planes of B*T elements.
template <class V>
V rows_of(const V& full, int B, int T, int b0, int b1, int planes = 1) {
  V out;
  for (int k = 0; k < planes; ++k) {
    const std::size_t base = static_cast<std::size_t>(k) * B * T;
    out.insert(out.end(), full.begin() + static_cast<long>(base + static_cast<std::size_t>(b0) * T),
               full.begin() + static_cast<long>(base + static_cast<std::size_t>(b1) * T));
  }
  return out;
}

template <class T>
T* ptr(std::vector<T>& v) {
  return v.empty() ? nullptr : v.data();
}
template <class T>
const T* ptr(const std::vector<T>& v) {
  return v.empty() ? nullptr : v.data();
}

// ---- data ----------------------------------------------------------------------------------
template <class T>
struct batch {
  int K, B, Tn;
  std::vector<T> V, r, sigma, x;  // values [K,B,T], rewards, a sigma tensor, a tensor to whiten
  ref::bytes m;
  std::vector<i64> ids;
  std::vector<T> scores;
  partition part;
};

/// tied: critic values on a coarse grid and sigma with 4 distinct values (heavy ties, zeros included).
template <class T>
batch<T> make_batch(std::uint64_t seed, int R, bool tied, int K = 2, int B = 41, int Tn = 23) {
  std::mt19937_64 rng(seed);
  batch<T> d{K, B, Tn, {}, {}, {}, {}, {}, {}, {}, {}};
  const std::size_t n = static_cast<std::size_t>(B) * Tn;
  std::uniform_int_distribution<int> grid(0, 3);
  std::uniform_real_distribution<double> u(0, 1);
  d.V.resize(static_cast<std::size_t>(K) * n);
  for (auto& v : d.V) v = tied ? static_cast<T>(0.25 * grid(rng)) : static_cast<T>(2 * u(rng) - 1);
  d.sigma.resize(n);
  for (auto& s : d.sigma) s = tied ? static_cast<T>(0.5 * grid(rng)) : static_cast<T>(u(rng));
  d.x.resize(n);
  for (auto& x : d.x) x = static_cast<T>(1000.0 + 3.0 * (u(rng) - 0.5));  // far from 0: tests stability
  d.m = ref::random_mask(rng, B, Tn);
  d.r.assign(n, T(0));
  for (int b = 0; b < B; ++b) {
    int last = -1;
    for (int t = 0; t < Tn; ++t) {
      if (d.m[static_cast<std::size_t>(b) * Tn + t]) last = t;
      d.r[static_cast<std::size_t>(b) * Tn + t] = static_cast<T>(0.01 * (u(rng) - 0.5));
    }
    if (last >= 0) d.r[static_cast<std::size_t>(b) * Tn + last] += static_cast<T>(u(rng) < 0.5 ? 1.0 : 0.0);
  }
  // Groups: ids from a small set (groups span ranks), plus one global singleton.
  std::uniform_int_distribution<int> gid(0, 6);
  for (int b = 0; b < B; ++b) d.ids.push_back(static_cast<i64>(gid(rng)) * 5 - 12);
  d.ids[static_cast<std::size_t>(B / 2)] = 1000;
  for (int b = 0; b < B; ++b)
    d.scores.push_back(u(rng) < 0.5 ? static_cast<T>(u(rng) < 0.5 ? 1.0 : 0.0) : static_cast<T>(3 * u(rng) - 1));
  d.part = make_partition(seed, B, R);
  if (d.part.masked_rank >= 0)
    for (int b = d.part.b0(d.part.masked_rank); b < d.part.b1(d.part.masked_rank); ++b)
      for (int t = 0; t < Tn; ++t) d.m[static_cast<std::size_t>(b) * Tn + t] = 0;
  return d;
}

template <class T>
std::string describe(const batch<T>& d, std::uint64_t seed) {
  std::string s = "seed " + std::to_string(seed) + " R " + std::to_string(world().size()) + " rank " +
                  std::to_string(world().rank()) + " T " + (sizeof(T) == 4 ? "float" : "double") + " rows";
  for (std::size_t r = 0; r + 1 < d.part.begin.size(); ++r)
    s += " [" + std::to_string(d.part.begin[r]) + "," + std::to_string(d.part.begin[r + 1]) + ")";
  s += " zero_rank " + std::to_string(d.part.zero_rank) + " masked_rank " + std::to_string(d.part.masked_rank);
  return s;
}

constexpr std::uint64_t kSeeds = 8;  // seed % 4 picks the partition kind

// ---- uncertainty masks ---------------------------------------------------------------------
template <class T>
void check_masks(std::uint64_t seed, bool tied, double k, double h, mask_scope scope) {
  const int R = world().size(), me = world().rank();
  const auto d = make_batch<T>(seed, R, tied);
  INFO(describe(d, seed) << " tied " << tied << " k " << k << " h " << h << " seq " << (scope == mask_scope::sequence));
  const int B = d.B, Tn = d.Tn, b0 = d.part.b0(me), b1 = d.part.b1(me), nb = b1 - b0;
  const std::size_t n = static_cast<std::size_t>(B) * Tn;
  const cpu_backend be(1);
  mask_options opt;
  opt.adv_fraction = k;
  opt.entropy_fraction = h;
  opt.scope = scope;
  ref::bytes fa(n), fe(n);
  const auto fc = uncertainty_masks(be, token_view<const T>(d.sigma.data(), B, Tn), mask_view(d.m.data(), B, Tn),
                                    mask_out(fa.data(), B, Tn), mask_out(fe.data(), B, Tn), opt);
  const auto sig = rows_of(d.sigma, B, Tn, b0, b1);
  const auto m = rows_of(d.m, B, Tn, b0, b1);
  ref::bytes la(static_cast<std::size_t>(nb) * Tn, 7), le(static_cast<std::size_t>(nb) * Tn, 7);
  const auto lc = uncertainty_masks(be, token_view<const T>(ptr(sig), nb, Tn), mask_view(ptr(m), nb, Tn),
                                    mask_out(ptr(la), nb, Tn), mask_out(ptr(le), nb, Tn), opt, world());
  CHECK_SAME(la, rows_of(fa, B, Tn, b0, b1));
  CHECK_SAME(le, rows_of(fe, B, Tn, b0, b1));
  if (scope == mask_scope::batch) {
    CHECK(lc.valid == fc.valid);
    CHECK(lc.adv_masked == fc.adv_masked);
    CHECK(lc.entropy_masked == fc.entropy_masked);
    CHECK(((std::isnan(lc.adv_threshold) && std::isnan(fc.adv_threshold)) || lc.adv_threshold == fc.adv_threshold));
    CHECK(((std::isnan(lc.entropy_threshold) && std::isnan(fc.entropy_threshold)) ||
           lc.entropy_threshold == fc.entropy_threshold));
    // The single-process masks are the sort-based reference's (so the comparison is not vacuous).
    const auto mk = ref::masks(ref::widen(d.sigma), d.m, B, Tn, k, h, false);
    CHECK_SAME(fa, mk.adv);
    CHECK_SAME(fe, mk.ent);
  }
}

// ---- advantage step ------------------------------------------------------------------------
template <class T>
struct step_result {
  std::vector<T> adv, ret, sd, shard;  // shard: [K, B]
  ref::bytes am, em;
  advantage_summary s;
};

template <class T, class Comm>
step_result<T> run_step(const std::vector<T>& V, const std::vector<T>& r, const ref::bytes& m, const std::vector<i64>& ids,
                        int K, int B, int Tn, const advantage_config& cfg, const Comm& comm) {
  const std::size_t n = static_cast<std::size_t>(B) * Tn;
  step_result<T> o;
  o.adv.assign(n, T(9));
  o.ret.assign(n, T(9));
  o.sd.assign(n, T(9));
  o.am.assign(n, 9);
  o.em.assign(n, 9);
  o.shard.assign(static_cast<std::size_t>(K) * B, T(9));
  advantage_inputs<T> in{critic_view<const T>(ptr(V), K, B, Tn), token_view<const T>(ptr(r), B, Tn),
                         mask_view(ptr(m), B, Tn), seq_view<const i64>(ptr(ids), B)};
  advantage_outputs<T> out{token_view<T>(ptr(o.adv), B, Tn), token_view<T>(ptr(o.ret), B, Tn),
                           mask_out(ptr(o.am), B, Tn), mask_out(ptr(o.em), B, Tn), view<T, 2>(ptr(o.shard), K, B),
                           token_view<T>(ptr(o.sd), B, Tn)};
  o.s = advantage_step(cpu_backend(1), in, out, cfg, comm);
  return o;
}

bool same_or_nan(double a, double b) { return (std::isnan(a) && std::isnan(b)) || a == b; }

template <class T>
void check_step(std::uint64_t seed, bool tied, const advantage_config& cfg) {
  const int R = world().size(), me = world().rank();
  const auto d = make_batch<T>(seed, R, tied, cfg.critics);
  INFO(describe(d, seed) << " tied " << tied << " whiten " << cfg.whiten_advantages << " seq "
                         << (cfg.scope == mask_scope::sequence) << " k " << cfg.adv_mask_fraction << " h "
                         << cfg.entropy_filter_fraction << " K " << cfg.critics);
  const int K = d.K, B = d.B, Tn = d.Tn, b0 = d.part.b0(me), b1 = d.part.b1(me), nb = b1 - b0;
  const auto full = run_step(d.V, d.r, d.m, d.ids, K, B, Tn, cfg, single_process{});
  const auto V = rows_of(d.V, B, Tn, b0, b1, K);
  const auto loc = run_step(V, rows_of(d.r, B, Tn, b0, b1), rows_of(d.m, B, Tn, b0, b1),
                            std::vector<i64>(d.ids.begin() + b0, d.ids.begin() + b1), K, nb, Tn, cfg, world());
  CHECK_SAME(loc.am, rows_of(full.am, B, Tn, b0, b1));
  CHECK_SAME(loc.em, rows_of(full.em, B, Tn, b0, b1));
  CHECK_SAME(loc.sd, rows_of(full.sd, B, Tn, b0, b1));
  CHECK_SAME(loc.ret, rows_of(full.ret, B, Tn, b0, b1));
  // Shards: groups span ranks, positions count members in (rank, index) order = the full batch.
  std::vector<T> shard_slice;
  for (int k = 0; k < K; ++k)
    for (int b = b0; b < b1; ++b) shard_slice.push_back(full.shard[static_cast<std::size_t>(k) * B + b]);
  CHECK_SAME(loc.shard, shard_slice);
  if (cfg.whiten_advantages) CHECK_NEAR(loc.adv, rows_of(full.adv, B, Tn, b0, b1), out_tol<T>());
  else CHECK_SAME(loc.adv, rows_of(full.adv, B, Tn, b0, b1));
  const auto &s = loc.s, &f = full.s;
  CHECK(s.sequences == f.sequences);
  CHECK(s.valid_tokens == f.valid_tokens);
  CHECK(s.adv_masked == f.adv_masked);
  CHECK(s.entropy_masked == f.entropy_masked);
  CHECK(s.adv_mask_fraction == f.adv_mask_fraction);
  CHECK(s.entropy_filter_fraction == f.entropy_filter_fraction);
  CHECK(same_or_nan(s.adv_threshold, f.adv_threshold));
  CHECK(same_or_nan(s.entropy_threshold, f.entropy_threshold));
  for (int q = 0; q < 5; ++q) CHECK(same_or_nan(s.std_quantiles[q], f.std_quantiles[q]));
  CHECK(s.advantage_mean == Approx(f.advantage_mean).epsilon(1e-9).margin(1e-12));
  CHECK(s.advantage_std == Approx(f.advantage_std).epsilon(1e-9).margin(1e-12));
  CHECK(s.return_mean == Approx(f.return_mean).epsilon(1e-9).margin(1e-12));
  CHECK(s.return_std == Approx(f.return_std).epsilon(1e-9).margin(1e-12));
  REQUIRE(s.explained_variance.size() == f.explained_variance.size());
  for (std::size_t k = 0; k < f.explained_variance.size(); ++k) {
    if (std::isnan(f.explained_variance[k])) CHECK(std::isnan(s.explained_variance[k]));
    else CHECK(s.explained_variance[k] == Approx(f.explained_variance[k]).epsilon(1e-9).margin(1e-9));
  }
}

// ---- outcome baselines ---------------------------------------------------------------------
enum class baseline { grpo, dr_grpo, rloo, rfpp };

template <class T>
void check_outcome(std::uint64_t seed, baseline which, singleton_rule single, std_kind sk) {
  const int R = world().size(), me = world().rank();
  const auto d = make_batch<T>(seed, R, false);
  INFO(describe(d, seed) << " baseline " << static_cast<int>(which) << " singleton " << static_cast<int>(single)
                         << " unbiased " << (sk == std_kind::unbiased));
  const int B = d.B, Tn = d.Tn, b0 = d.part.b0(me), b1 = d.part.b1(me), nb = b1 - b0;
  const cpu_backend be(1);
  auto run = [&](const std::vector<T>& sc, const std::vector<i64>& ids, const ref::bytes& m, int rows, auto comm) {
    std::pair<std::vector<T>, std::vector<T>> o{std::vector<T>(static_cast<std::size_t>(rows) * Tn, T(9)),
                                                std::vector<T>(static_cast<std::size_t>(rows), T(9))};
    const outcome_outputs<T> out{token_view<T>(ptr(o.first), rows, Tn), seq_view<T>(ptr(o.second), rows)};
    const seq_view<const T> s(ptr(sc), rows);
    const seq_view<const i64> g(ptr(ids), rows);
    const mask_view mv(ptr(m), rows, Tn);
    if (which == baseline::grpo || which == baseline::dr_grpo) {
      grpo_options opt;
      opt.norm_by_std = which == baseline::grpo;
      opt.singleton = single;
      opt.std = sk;
      grpo_advantages(be, s, g, mv, out, opt, comm);
    } else if (which == baseline::rloo) {
      rloo_options opt;
      opt.singleton = single;
      rloo_advantages(be, s, g, mv, out, opt, comm);
    } else {
      reinforce_options opt;
      opt.singleton = single;
      opt.whiten.unbiased = sk == std_kind::unbiased;
      reinforce_pp_baseline_advantages(be, s, g, mv, out, opt, comm);
    }
    return o;
  };
  const auto full = run(d.scores, d.ids, d.m, B, single_process{});
  const auto loc = run(std::vector<T>(d.scores.begin() + b0, d.scores.begin() + b1),
                       std::vector<i64>(d.ids.begin() + b0, d.ids.begin() + b1), rows_of(d.m, B, Tn, b0, b1), nb,
                       world());
  CHECK_NEAR(loc.first, rows_of(full.first, B, Tn, b0, b1), out_tol<T>());
  CHECK_NEAR(loc.second, std::vector<T>(full.second.begin() + b0, full.second.begin() + b1), out_tol<T>());
}

// ---- whitening -----------------------------------------------------------------------------
template <class T>
void check_whiten(std::uint64_t seed, bool unbiased, padding_mode pad) {
  const int R = world().size(), me = world().rank();
  const auto d = make_batch<T>(seed, R, false);
  INFO(describe(d, seed) << " unbiased " << unbiased << " raw " << (pad == padding_mode::raw));
  const int B = d.B, Tn = d.Tn, b0 = d.part.b0(me), b1 = d.part.b1(me), nb = b1 - b0;
  const cpu_backend be(1);
  whiten_options opt;
  opt.unbiased = unbiased;
  opt.padding = pad;
  std::vector<T> fy(d.x.size());
  const auto fm = masked_whiten(be, token_view<const T>(d.x.data(), B, Tn), mask_view(d.m.data(), B, Tn),
                                token_view<T>(fy.data(), B, Tn), opt);
  const auto x = rows_of(d.x, B, Tn, b0, b1);
  const auto m = rows_of(d.m, B, Tn, b0, b1);
  std::vector<T> y(x.size());
  const auto lm = masked_whiten(be, token_view<const T>(ptr(x), nb, Tn), mask_view(ptr(m), nb, Tn),
                                token_view<T>(ptr(y), nb, Tn), opt, world());
  CHECK(lm.count == fm.count);
  CHECK(lm.mean == Approx(fm.mean).epsilon(1e-12).margin(1e-12));
  CHECK(lm.var == Approx(fm.var).epsilon(1e-9).margin(1e-15));
  CHECK_NEAR(y, rows_of(fy, B, Tn, b0, b1), out_tol<T>());
}

// ---- losses --------------------------------------------------------------------------------
/// Random micro-batch cuts of n rows (1 to 3 micro-batches; empty ones allowed).
std::vector<int> micro_cuts(std::mt19937_64& rng, int n) {
  const int parts = std::uniform_int_distribution<int>(1, 3)(rng);
  std::vector<int> c{0};
  for (int i = 1; i < parts; ++i) c.push_back(std::uniform_int_distribution<int>(0, n)(rng));
  c.push_back(n);
  std::sort(c.begin(), c.end());
  return c;
}

template <class T>
void check_losses(std::uint64_t seed, int mode, bool count_empty_rows) {
  const int R = world().size(), me = world().rank();
  const auto d = make_batch<T>(seed, R, false);
  INFO(describe(d, seed) << " mode " << mode << " count_empty_rows " << count_empty_rows);
  const int K = d.K, B = d.B, Tn = d.Tn, b0 = d.part.b0(me), b1 = d.part.b1(me), nb = b1 - b0;
  const std::size_t n = static_cast<std::size_t>(B) * Tn;
  const cpu_backend be(1);
  std::mt19937_64 rng(seed * 31 + 7);
  std::uniform_real_distribution<double> u(-1, 1);
  std::vector<T> logp(n), old_logp(n), adv(n), newV(static_cast<std::size_t>(K) * n), ret(n);
  for (std::size_t i = 0; i < n; ++i) {
    logp[i] = static_cast<T>(-1 + 0.3 * u(rng));
    old_logp[i] = static_cast<T>(static_cast<double>(logp[i]) + 0.3 * u(rng));
    adv[i] = static_cast<T>(u(rng));
    ret[i] = static_cast<T>(u(rng));
  }
  for (std::size_t i = 0; i < newV.size(); ++i) newV[i] = static_cast<T>(static_cast<double>(d.V[i]) + 0.3 * u(rng));
  ref::bytes am(n);
  for (auto& a : am) a = u(rng) < -0.6 ? 0 : 1;
  std::vector<T> shard(static_cast<std::size_t>(K) * B);
  shard_weights(be, seq_view<const i64>(d.ids.data(), B), K, view<T, 2>(shard.data(), K, B));
  const auto agg = static_cast<loss_aggregation>(mode);

  // Policy loss: one call on the full batch (its own counts are the global counts).
  policy_loss_options po;
  po.aggregation = agg;
  po.dual_clip = 3.0;
  po.normalizer = count_loss_tokens(be, mask_view(d.m.data(), B, Tn)).normalizer(count_empty_rows);
  std::vector<T> fg(n);
  const double full_pl = policy_loss(be,
                                     policy_loss_inputs<T>{token_view<const T>(logp.data(), B, Tn),
                                                           token_view<const T>(old_logp.data(), B, Tn),
                                                           token_view<const T>(adv.data(), B, Tn),
                                                           mask_view(d.m.data(), B, Tn), mask_view(am.data(), B, Tn)},
                                     token_view<T>(fg.data(), B, Tn), po)
                             .loss;
  // Value loss on the full batch, per-critic counts over each critic's shard.
  value_loss_options vo;
  vo.aggregation = agg;
  vo.clip = 0.2;
  for (const auto& c : count_critic_loss_tokens(be, mask_view(d.m.data(), B, Tn), view<const T, 2>(shard.data(), K, B)))
    vo.normalizers.push_back(c.normalizer(count_empty_rows));
  std::vector<T> fgv(newV.size());
  const auto full_vl = value_loss(be,
                                  value_loss_inputs<T>{critic_view<const T>(newV.data(), K, B, Tn),
                                                       critic_view<const T>(d.V.data(), K, B, Tn),
                                                       token_view<const T>(ret.data(), B, Tn),
                                                       {},
                                                       mask_view(d.m.data(), B, Tn),
                                                       view<const T, 2>(shard.data(), K, B)},
                                  critic_view<T>(fgv.data(), K, B, Tn), vo);

  // Distributed: this rank's rows, split into micro-batches; counts summed locally, then globally.
  const auto cuts = micro_cuts(rng, nb);
  loss_counts local;
  std::vector<loss_counts> local_v(static_cast<std::size_t>(K));
  auto slice = [&](int c0, int c1) {  // micro-batch rows [c0, c1) of this rank, as copies
    struct mb {
      std::vector<T> logp, old, adv, V, oldV, ret, shard;
      ref::bytes m, am;
    } o;
    const int gb0 = b0 + c0, gb1 = b0 + c1;
    o.logp = rows_of(logp, B, Tn, gb0, gb1);
    o.old = rows_of(old_logp, B, Tn, gb0, gb1);
    o.adv = rows_of(adv, B, Tn, gb0, gb1);
    o.V = rows_of(newV, B, Tn, gb0, gb1, K);
    o.oldV = rows_of(d.V, B, Tn, gb0, gb1, K);
    o.ret = rows_of(ret, B, Tn, gb0, gb1);
    o.m = rows_of(d.m, B, Tn, gb0, gb1);
    o.am = rows_of(am, B, Tn, gb0, gb1);
    for (int k = 0; k < K; ++k)
      for (int b = gb0; b < gb1; ++b) o.shard.push_back(shard[static_cast<std::size_t>(k) * B + b]);
    return o;
  };
  for (std::size_t c = 0; c + 1 < cuts.size(); ++c) {
    const auto mb = slice(cuts[c], cuts[c + 1]);
    const int rows = cuts[c + 1] - cuts[c];
    local += count_loss_tokens(be, mask_view(ptr(mb.m), rows, Tn));
    const auto cc = count_critic_loss_tokens(be, mask_view(ptr(mb.m), rows, Tn), view<const T, 2>(ptr(mb.shard), K, rows));
    CHECK(cc.size() == static_cast<std::size_t>(K));
    if (cc.size() != static_cast<std::size_t>(K)) continue;
    for (int k = 0; k < K; ++k) local_v[static_cast<std::size_t>(k)] += cc[static_cast<std::size_t>(k)];
  }
  const loss_counts global = allreduce(local, world());
  const std::vector<loss_counts> global_v = allreduce(local_v, world());
  po.normalizer = global.normalizer(count_empty_rows);
  vo.normalizers.clear();
  for (const auto& c : global_v) vo.normalizers.push_back(c.normalizer(count_empty_rows));

  double pl = 0, vl = 0;
  std::vector<double> vlk(static_cast<std::size_t>(K), 0.0);
  std::vector<T> g(static_cast<std::size_t>(nb) * Tn, T(7)), gv(static_cast<std::size_t>(K) * nb * Tn, T(7));
  for (std::size_t c = 0; c + 1 < cuts.size(); ++c) {
    auto mb = slice(cuts[c], cuts[c + 1]);
    const int rows = cuts[c + 1] - cuts[c];
    std::vector<T> mg(static_cast<std::size_t>(rows) * Tn), mgv(static_cast<std::size_t>(K) * rows * Tn);
    pl += policy_loss(be,
                      policy_loss_inputs<T>{token_view<const T>(ptr(mb.logp), rows, Tn),
                                            token_view<const T>(ptr(mb.old), rows, Tn),
                                            token_view<const T>(ptr(mb.adv), rows, Tn), mask_view(ptr(mb.m), rows, Tn),
                                            mask_view(ptr(mb.am), rows, Tn)},
                      token_view<T>(ptr(mg), rows, Tn), po)
              .loss;
    const auto v = value_loss(be,
                              value_loss_inputs<T>{critic_view<const T>(ptr(mb.V), K, rows, Tn),
                                                   critic_view<const T>(ptr(mb.oldV), K, rows, Tn),
                                                   token_view<const T>(ptr(mb.ret), rows, Tn),
                                                   {},
                                                   mask_view(ptr(mb.m), rows, Tn),
                                                   view<const T, 2>(ptr(mb.shard), K, rows)},
                              critic_view<T>(ptr(mgv), K, rows, Tn), vo);
    vl += v.loss;
    for (int k = 0; k < K; ++k) vlk[static_cast<std::size_t>(k)] += v.critics[static_cast<std::size_t>(k)].loss;
    std::copy(mg.begin(), mg.end(), g.begin() + static_cast<long>(cuts[c]) * Tn);
    for (int k = 0; k < K; ++k)
      std::copy(mgv.begin() + static_cast<long>(k) * rows * Tn, mgv.begin() + static_cast<long>(k + 1) * rows * Tn,
                gv.begin() + static_cast<long>(k) * nb * Tn + static_cast<long>(cuts[c]) * Tn);
  }
  double sums[3] = {pl, vl, 0};
  std::vector<double> vsum = vlk;
  world().allreduce_sum(sums, 2);
  world().allreduce_sum(vsum.data(), K);

  // Counts: global == the full batch's, exactly.
  const loss_counts fullc = count_loss_tokens(be, mask_view(d.m.data(), B, Tn));
  CHECK(global.tokens == fullc.tokens);
  CHECK(global.sequences == fullc.sequences);
  CHECK(global.rows == fullc.rows);
  CHECK(global.length == fullc.length);
  const auto fullv = count_critic_loss_tokens(be, mask_view(d.m.data(), B, Tn), view<const T, 2>(shard.data(), K, B));
  for (int k = 0; k < K; ++k) {
    CHECK(global_v[static_cast<std::size_t>(k)].tokens == fullv[static_cast<std::size_t>(k)].tokens);
    CHECK(global_v[static_cast<std::size_t>(k)].sequences == fullv[static_cast<std::size_t>(k)].sequences);
    CHECK(global_v[static_cast<std::size_t>(k)].rows == fullv[static_cast<std::size_t>(k)].rows);
  }
  // Losses: the sum over ranks and micro-batches is the full-batch loss; gradients are exact.
  CHECK(sums[0] == Approx(full_pl).epsilon(1e-12).margin(1e-14));
  CHECK(sums[1] == Approx(full_vl.loss).epsilon(1e-12).margin(1e-14));
  for (int k = 0; k < K; ++k)
    CHECK(vsum[static_cast<std::size_t>(k)] == Approx(full_vl.critics[static_cast<std::size_t>(k)].loss).epsilon(1e-12).margin(1e-14));
  CHECK_SAME(g, rows_of(fg, B, Tn, b0, b1));
  CHECK_SAME(gv, rows_of(fgv, B, Tn, b0, b1, K));
}

}  // namespace

// ---- the communicator itself ---------------------------------------------------------------
TEST_CASE("mpi_comm: rank, size and the four collectives", "[mpi]") {
  const mpi_comm& c = world();
  int r = -1, s = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  CHECK(c.rank() == r);
  CHECK(c.size() == s);
  const mpi_comm plain;  // not owning MPI_COMM_WORLD
  CHECK(plain.get() == MPI_COMM_WORLD);
  CHECK(plain.rank() == r);

  std::uint64_t u[2] = {static_cast<std::uint64_t>(r) + 1, 10};
  c.allreduce_sum(u, 2);
  CHECK(u[0] == static_cast<std::uint64_t>(s) * (s + 1) / 2);
  CHECK(u[1] == static_cast<std::uint64_t>(10 * s));
  std::int64_t i[1] = {-static_cast<std::int64_t>(r)};
  plain.allreduce_sum(i, 1);
  CHECK(i[0] == -static_cast<std::int64_t>(s) * (s - 1) / 2);
  // Doubles: summed in rank order (values that make the order visible).
  const double vals[4] = {1e16, 1.0, -1e16, 1.0};
  double x[1] = {vals[r % 4]}, want = vals[0];
  for (int q = 1; q < s; ++q) want += vals[q % 4];
  c.allreduce_sum(x, 1);
  CHECK(x[0] == want);
  CHECK(c.exclusive_scan_sum(static_cast<std::uint64_t>(r) + 1) == static_cast<std::uint64_t>(r) * (r + 1) / 2);
  CHECK(c.exclusive_scan_sum(std::int64_t{-2}) == -2 * static_cast<std::int64_t>(r));
  double wx = 0;
  for (int q = 0; q < r; ++q) wx = q == 0 ? vals[0] : wx + vals[q % 4];
  CHECK(c.exclusive_scan_sum(vals[r % 4]) == wx);
  std::vector<std::int64_t> g(static_cast<std::size_t>(2 * s));
  const std::int64_t mine[2] = {r, -r};
  c.allgather(mine, 2, g.data());
  for (int q = 0; q < s; ++q) CHECK((g[static_cast<std::size_t>(2 * q)] == q && g[static_cast<std::size_t>(2 * q + 1)] == -q));
  // In place: each rank's values already at its own slot.
  std::vector<double> inplace(static_cast<std::size_t>(s), 0.0);
  inplace[static_cast<std::size_t>(r)] = 0.5 * r;
  c.allgather(inplace.data() + r, 1, inplace.data());
  for (int q = 0; q < s; ++q) CHECK(inplace[static_cast<std::size_t>(q)] == 0.5 * q);
  c.allreduce_sum(static_cast<double*>(nullptr), 0);  // empty: no-op

  // Errors become asyppo::error naming the call.
  try {
    detail::mpi_check("MPI_Allreduce", MPI_ERR_COUNT);
    FAIL("no throw");
  } catch (const asyppo::error& e) {
    CHECK(e.where() == "asyppo::mpi_comm");
    CHECK(e.argument() == "MPI_Allreduce");
  }
  CHECK_THROWS_AS(c.allreduce_sum(static_cast<std::uint64_t*>(nullptr), index_t(INT_MAX) + 1), asyppo::error);
  CHECK_THROWS_AS(c.allgather(static_cast<const double*>(nullptr), -1, static_cast<double*>(nullptr)), asyppo::error);
  CHECK_THROWS_AS(mpi_comm(MPI_COMM_NULL), asyppo::error);
}

TEST_CASE("global loss counts: allreduce of loss_counts", "[mpi]") {
  const int r = world().rank(), s = world().size();
  const loss_counts mine{10 + r, r, 2 * r + 1, static_cast<index_t>(5 + r)};
  const loss_counts g = allreduce(mine, world());
  CHECK(g.tokens == 10 * s + s * (s - 1) / 2);
  CHECK(g.sequences == s * (s - 1) / 2);
  CHECK(g.rows == s * s);
  CHECK(g.length == 5 + s - 1);
  const auto one = allreduce(mine, single_process{});
  CHECK((one.tokens == mine.tokens && one.length == mine.length));
  const auto v = allreduce(std::vector<loss_counts>{mine, loss_counts{1, 1, 1, 3}}, world());
  REQUIRE(v.size() == 2);
  CHECK(v[0].tokens == g.tokens);
  CHECK(v[1].tokens == s);
  CHECK(v[1].length == 3);
  if (s > 1) {  // a mismatched critic count throws on every rank (no rank is left waiting)
    std::vector<loss_counts> bad(static_cast<std::size_t>(r == 0 ? 2 : 1));
    CHECK_THROWS_AS(allreduce(bad, world()), asyppo::error);
  }
}

TEST_CASE("uncertainty masks across ranks are bit-identical to one process", "[mpi]") {
  const double fr[][2] = {{0.2, 0.2}, {0.5, 0.3}, {0.0, 0.15}, {0.37, 0.61}, {0.9, 0.05}};
  for (std::uint64_t seed = 0; seed < kSeeds; ++seed)
    for (bool tied : {true, false})
      for (const auto& f : fr) {
        check_masks<float>(seed, tied, f[0], f[1], mask_scope::batch);
        check_masks<double>(seed, tied, f[0], f[1], mask_scope::batch);
      }
  for (std::uint64_t seed = 0; seed < 4; ++seed) check_masks<float>(seed, true, 0.3, 0.3, mask_scope::sequence);
}

TEST_CASE("advantage_step across ranks equals the full-batch step", "[mpi]") {
  for (std::uint64_t seed = 0; seed < kSeeds; ++seed)
    for (bool tied : {true, false}) {
      advantage_config cfg;
      check_step<float>(seed, tied, cfg);
      check_step<double>(seed, tied, cfg);
      cfg.adv_mask_fraction = 0.45;
      cfg.entropy_filter_fraction = 0.35;
      cfg.critics = 3;
      cfg.gamma = 0.97;
      cfg.lambda_actor = 0.9;
      check_step<float>(seed, tied, cfg);
      cfg.critics = 2;
      cfg.whiten_advantages = true;
      check_step<double>(seed, tied, cfg);
      check_step<float>(seed, tied, cfg);
      cfg.whiten_advantages = false;
      cfg.scope = mask_scope::sequence;
      check_step<double>(seed, tied, cfg);
    }
}

TEST_CASE("masked_whiten across ranks equals one process within tolerance", "[mpi]") {
  for (std::uint64_t seed = 0; seed < kSeeds; ++seed)
    for (bool unbiased : {true, false}) {
      check_whiten<double>(seed, unbiased, padding_mode::zero);
      check_whiten<float>(seed, unbiased, padding_mode::raw);
    }
}

TEST_CASE("GRPO, RLOO and REINFORCE++-baseline with groups spanning ranks", "[mpi]") {
  for (std::uint64_t seed = 0; seed < kSeeds; ++seed)
    for (auto which : {baseline::grpo, baseline::dr_grpo, baseline::rloo, baseline::rfpp})
      for (auto single : {singleton_rule::verl, singleton_rule::zero}) {
        check_outcome<double>(seed, which, single, std_kind::unbiased);
        check_outcome<float>(seed, which, single, std_kind::population);
      }
}

TEST_CASE("policy and value losses with global counts sum to the full-batch loss", "[mpi]") {
  for (std::uint64_t seed = 0; seed < kSeeds; ++seed)
    for (int mode = 0; mode < 5; ++mode) {
      check_losses<double>(seed, mode, seed % 2 == 0);
      if (seed < 4) check_losses<float>(seed, mode, seed % 2 == 1);
    }
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rc = 0;
  {
    g_world.emplace(mpi_comm::duplicate(MPI_COMM_WORLD));
    rc = Catch::Session().run(argc, argv);
    int failed = rc != 0 ? 1 : 0;
    MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (failed && rc == 0) rc = 1;
    g_world.reset();
  }
  MPI_Finalize();
  return rc;
}
