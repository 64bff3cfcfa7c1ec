// Error paths of every advantage-side entry point: each throws asyppo::error (a
// std::invalid_argument) whose what() names the argument at fault, and leaves every output
// untouched (outputs are filled with a sentinel and checked after the throw).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "asyppo/asyppo.hpp"

using namespace asyppo;
using i64 = std::int64_t;

namespace {

constexpr double S = -12345.0;  // sentinel for real outputs
constexpr std::uint8_t SM = 0xAB;  // sentinel for mask outputs
const double NaN = std::numeric_limits<double>::quiet_NaN();
const double Inf = std::numeric_limits<double>::infinity();

// f() must throw asyppo::error, caught as std::invalid_argument, from `where`, naming `arg`.
void rejects(const std::function<void()>& f, const std::string& where, const std::string& arg) {
  bool thrown = false;
  try {
    f();
  } catch (const std::invalid_argument& e) {
    thrown = true;
    const auto* ae = dynamic_cast<const asyppo::error*>(&e);
    REQUIRE(ae != nullptr);
    INFO("what(): " << e.what());
    CHECK(ae->where() == where);
    CHECK(ae->argument() == arg);
    CHECK(std::string(e.what()).find(arg) != std::string::npos);
    CHECK(std::string(e.what()).rfind(where, 0) == 0);  // the message starts with the entry point
  }
  INFO("expected " << where << " to reject " << arg);
  REQUIRE(thrown);
}

bool all_eq(const std::vector<double>& v, double s) {
  for (double x : v)
    if (!(x == s)) return false;
  return true;
}
bool all_eq(const std::vector<std::uint8_t>& v, std::uint8_t s) {
  for (auto x : v)
    if (x != s) return false;
  return true;
}
bool all_eq(const std::vector<i64>& v, i64 s) {
  for (auto x : v)
    if (x != s) return false;
  return true;
}

// Common batch: K = 2, B = 3, T = 4; token (1,3) and row 2's last two tokens are masked.
struct fx {
  static constexpr int K = 2, B = 3, T = 4;
  std::vector<double> V = std::vector<double>(K * B * T, 0.25);
  std::vector<double> r = std::vector<double>(B * T, 0.0);
  std::vector<std::uint8_t> m = {1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 0, 0};
  std::vector<i64> ids = {4, 4, 9};
  std::vector<double> scores = {1, 0, 1};
  std::vector<double> o1 = std::vector<double>(B * T, S), o2 = o1, o3 = o1, o4 = o1;
  std::vector<double> seq = std::vector<double>(B, S), shard = std::vector<double>(K * B, S);
  std::vector<std::uint8_t> am = std::vector<std::uint8_t>(B * T, SM), em = am;
  std::vector<i64> crit = std::vector<i64>(B, -99);
  fx() {
    for (int i = 0; i < K * B * T; ++i) V[static_cast<std::size_t>(i)] = 0.1 * (i % 7);
    r[3] = 1;
  }
  critic_view<const double> values() const { return {V.data(), K, B, T}; }
  token_view<const double> rewards() const { return {r.data(), B, T}; }
  mask_view mask() const { return {m.data(), B, T}; }
  seq_view<const i64> group_ids() const { return {ids.data(), B}; }
  seq_view<const double> seq_scores() const { return {scores.data(), B}; }
  token_view<double> out(std::vector<double>& v) { return {v.data(), B, T}; }
  bool untouched() const {
    return all_eq(o1, S) && all_eq(o2, S) && all_eq(o3, S) && all_eq(o4, S) && all_eq(seq, S) && all_eq(shard, S) &&
           all_eq(am, SM) && all_eq(em, SM) && all_eq(crit, -99);
  }
  // Views of the common shapes with a twist.
  template <class T_, int R>
  static view<T_, R> with_extent(view<T_, R> v, int d, index_t e) {
    v.extent[d] = e;
    return v;
  }
  template <class T_, int R>
  static view<T_, R> with_stride(view<T_, R> v, int d, index_t s) {
    v.stride[d] = s;
    return v;
  }
  template <class T_, int R>
  static view<T_, R> null_data(view<T_, R> v) {
    v.data = nullptr;
    return v;
  }
};

}  // namespace

TEST_CASE("errors: ensemble_stats", "[errors]") {
  const std::string W = "asyppo::ensemble_stats";
  auto run = [](fx&, critic_view<const double> v, mask_view m, ensemble_outputs<double> o, bool check = true) {
    ensemble_stats(cpu_backend(), v, m, o, std_kind::population, check);
  };
  auto outs = [](fx& f) {
    return ensemble_outputs<double>{f.out(f.o1), f.out(f.o2), f.out(f.o3), f.out(f.o4)};
  };
  struct bad {
    const char* arg;
    std::function<void(fx&)> call;
  };
  const std::vector<bad> cases = {
      {"values", [&](fx& f) { run(f, critic_view<const double>(f.V.data(), 0, fx::B, fx::T), f.mask(), outs(f)); }},
      {"values", [&](fx& f) { run(f, fx::with_stride(f.values(), 2, -1), f.mask(), outs(f)); }},
      {"values", [&](fx& f) { run(f, fx::with_extent(f.values(), 1, -3), f.mask(), outs(f)); }},
      {"values", [&](fx& f) { run(f, fx::null_data(f.values()), f.mask(), outs(f)); }},
      {"mask", [&](fx& f) { run(f, f.values(), fx::with_extent(f.mask(), 1, 5), outs(f)); }},
      {"mask", [&](fx& f) { run(f, f.values(), fx::with_stride(f.mask(), 0, -4), outs(f)); }},
      {"out.mean", [&](fx& f) {
         auto o = outs(f);
         o.mean = fx::with_extent(o.mean, 0, 2);
         run(f, f.values(), f.mask(), o);
       }},
      {"out.std", [&](fx& f) {
         auto o = outs(f);
         o.std = token_view<double>::strided(f.o2.data(), {fx::B, fx::T}, {1, 1});  // overlapping
         run(f, f.values(), f.mask(), o);
       }},
      {"out.max", [&](fx& f) {
         auto o = outs(f);
         o.max = fx::with_stride(o.max, 1, -1);
         run(f, f.values(), f.mask(), o);
       }},
      {"values", [&](fx& f) {
         f.V[5] = NaN;  // critic 0, token (1,1): valid
         run(f, f.values(), f.mask(), outs(f));
       }},
      {"values", [&](fx& f) {
         f.V[fx::B * fx::T + 0] = -Inf;  // critic 1, token (0,0)
         run(f, f.values(), f.mask(), outs(f));
       }},
  };
  for (const auto& c : cases) {
    fx f;
    rejects([&] { c.call(f); }, W, c.arg);
    CHECK(f.untouched());
  }
  // NaN on a masked token is accepted; check_finite = false skips the check.
  fx f;
  f.V[7] = NaN;  // (1,3) masked
  run(f, f.values(), f.mask(), outs(f));
  CHECK(f.o1[7] == 0.0);
  CHECK(std::isfinite(f.o2[0]));
  fx g;
  g.V[0] = NaN;
  CHECK_NOTHROW(run(g, g.values(), g.mask(), outs(g), false));
}

TEST_CASE("errors: shard_weights", "[errors]") {
  const std::string W = "asyppo::shard_weights";
  struct bad {
    const char* arg;
    std::function<void(fx&)> call;
  };
  auto w = [](fx& f) { return view<double, 2>(f.shard.data(), fx::K, fx::B); };
  auto c = [](fx& f) { return seq_view<i64>(f.crit.data(), fx::B); };
  const std::vector<bad> cases = {
      {"K", [&](fx& f) { shard_weights(cpu_backend(), f.group_ids(), 0, w(f), shard_mode::contiguous, c(f)); }},
      {"K", [&](fx& f) { shard_weights(cpu_backend(), f.group_ids(), -2, w(f), shard_mode::contiguous, c(f)); }},
      {"group_ids", [&](fx& f) { shard_weights(cpu_backend(), fx::with_stride(f.group_ids(), 0, -1), 2, w(f), shard_mode::contiguous, c(f)); }},
      {"group_ids", [&](fx& f) { shard_weights(cpu_backend(), fx::null_data(f.group_ids()), 2, w(f), shard_mode::contiguous, c(f)); }},
      {"weights", [&](fx& f) { shard_weights(cpu_backend(), f.group_ids(), 3, w(f), shard_mode::contiguous, c(f)); }},  // K mismatch
      {"weights", [&](fx& f) {
         shard_weights(cpu_backend(), f.group_ids(), 2, view<double, 2>::strided(f.shard.data(), {2, 3}, {1, 1}),
                       shard_mode::contiguous, c(f));
       }},
      {"critic_of", [&](fx& f) { shard_weights(cpu_backend(), f.group_ids(), 2, w(f), shard_mode::contiguous, fx::with_extent(c(f), 0, 2)); }},
  };
  for (const auto& cs : cases) {
    fx f;
    rejects([&] { cs.call(f); }, W, cs.arg);
    CHECK(f.untouched());
  }
}

TEST_CASE("errors: gae", "[errors]") {
  const std::string W = "asyppo::gae";
  struct bad {
    const char* arg;
    std::function<void(fx&, gae_options&)> prep;  // may modify inputs / options
    std::function<void(fx&, const gae_options&)> call;
  };
  auto outs = [](fx& f) { return gae_outputs<double>{f.out(f.o1), f.out(f.o2), f.out(f.o3)}; };
  auto plain = [&](fx& f, const gae_options& o) { gae(cpu_backend(), f.values(), f.rewards(), f.mask(), o, outs(f)); };
  auto nop = [](fx&, gae_options&) {};
  std::vector<bad> cases = {
      {"values", nop, [&](fx& f, const gae_options& o) {
         gae(cpu_backend(), critic_view<const double>(f.V.data(), 0, fx::B, fx::T), f.rewards(), f.mask(), o, outs(f));
       }},
      {"values", nop, [&](fx& f, const gae_options& o) { gae(cpu_backend(), fx::with_stride(f.values(), 0, -12), f.rewards(), f.mask(), o, outs(f)); }},
      {"values", nop, [&](fx& f, const gae_options& o) { gae(cpu_backend(), fx::null_data(f.values()), f.rewards(), f.mask(), o, outs(f)); }},
      {"rewards", nop, [&](fx& f, const gae_options& o) { gae(cpu_backend(), f.values(), fx::with_extent(f.rewards(), 1, 3), f.mask(), o, outs(f)); }},
      {"rewards", nop, [&](fx& f, const gae_options& o) { gae(cpu_backend(), f.values(), fx::null_data(f.rewards()), f.mask(), o, outs(f)); }},
      {"rewards", nop, [&](fx& f, const gae_options& o) { gae(cpu_backend(), f.values(), fx::with_stride(f.rewards(), 1, -1), f.mask(), o, outs(f)); }},
      {"mask", nop, [&](fx& f, const gae_options& o) { gae(cpu_backend(), f.values(), f.rewards(), fx::with_extent(f.mask(), 0, 4), o, outs(f)); }},
      {"mask", nop, [&](fx& f, const gae_options& o) { gae(cpu_backend(), f.values(), f.rewards(), fx::null_data(f.mask()), o, outs(f)); }},
      {"out.advantages", nop, [&](fx& f, const gae_options& o) {
         auto out = outs(f);
         out.advantages = fx::with_extent(out.advantages, 1, 5);
         gae(cpu_backend(), f.values(), f.rewards(), f.mask(), o, out);
       }},
      {"out.returns", nop, [&](fx& f, const gae_options& o) {
         auto out = outs(f);
         out.returns = token_view<double>::strided(f.o2.data(), {fx::B, fx::T}, {2, 1});  // rows overlap
         gae(cpu_backend(), f.values(), f.rewards(), f.mask(), o, out);
       }},
      {"out.std", nop, [&](fx& f, const gae_options& o) {
         auto out = outs(f);
         out.std = fx::with_stride(out.std, 0, -4);
         gae(cpu_backend(), f.values(), f.rewards(), f.mask(), o, out);
       }},
      {"gamma", [](fx&, gae_options& o) { o.gamma = 1.5; }, plain},
      {"gamma", [](fx&, gae_options& o) { o.gamma = -0.1; }, plain},
      {"gamma", [](fx&, gae_options& o) { o.gamma = NaN; }, plain},
      {"lambda_actor", [](fx&, gae_options& o) { o.lambda_actor = 1.0000001; }, plain},
      {"lambda_actor", [](fx&, gae_options& o) { o.lambda_actor = NaN; }, plain},
      {"lambda_critic", [](fx&, gae_options& o) { o.lambda_critic = -0.5; }, plain},
      {"lambda_critic", [](fx&, gae_options& o) { o.lambda_critic = NaN; }, plain},
      {"adaptive_lambda_alpha", [](fx&, gae_options& o) { o.adaptive_lambda_alpha = -0.05; }, plain},
      {"adaptive_lambda_alpha", [](fx&, gae_options& o) { o.adaptive_lambda_alpha = NaN; }, plain},
      {"adaptive_lambda_alpha", [](fx&, gae_options& o) { o.adaptive_lambda_alpha = Inf; }, plain},
      {"adaptive_lambda_min", [](fx&, gae_options& o) {
         o.adaptive_lambda_alpha = 0.05;
         o.adaptive_lambda_min = -0.1;
       }, plain},
      {"adaptive_lambda_max", [](fx&, gae_options& o) {
         o.adaptive_lambda_alpha = 0.05;
         o.adaptive_lambda_min = 0.9;
         o.adaptive_lambda_max = 0.8;
       }, plain},
      {"values or rewards", [](fx& f, gae_options&) { f.V[fx::B * fx::T + 2] = NaN; }, plain},
      {"values or rewards", [](fx& f, gae_options&) { f.r[9] = Inf; }, plain},
  };
  for (const auto& c : cases) {
    fx f;
    gae_options o;
    c.prep(f, o);
    rejects([&] { c.call(f, o); }, W, c.arg);
    CHECK(f.untouched());
  }
  // NaN on masked tokens (values and rewards) is accepted and does not reach the outputs.
  fx f;
  f.V[7] = NaN;
  f.V[fx::B * fx::T + 11] = NaN;
  f.r[10] = NaN;
  plain(f, gae_options{});
  for (int i = 0; i < fx::B * fx::T; ++i) CHECK(std::isfinite(f.o1[i]));
  // check_finite = false skips the check.
  fx g;
  g.r[0] = NaN;
  gae_options o;
  o.check_finite = false;
  CHECK_NOTHROW(plain(g, o));
}

TEST_CASE("errors: masked_whiten", "[errors]") {
  const std::string W = "asyppo::masked_whiten";
  struct bad {
    const char* arg;
    std::function<void(fx&)> call;
  };
  auto x = [](fx& f) { return token_view<const double>(f.r.data(), fx::B, fx::T); };
  auto opt = [](double eps) {
    whiten_options o;
    o.eps = eps;
    return o;
  };
  const std::vector<bad> cases = {
      {"x", [&](fx& f) { masked_whiten(cpu_backend(), fx::null_data(x(f)), f.mask(), f.out(f.o1)); }},
      {"x", [&](fx& f) { masked_whiten(cpu_backend(), fx::with_stride(x(f), 0, -1), f.mask(), f.out(f.o1)); }},
      {"mask", [&](fx& f) { masked_whiten(cpu_backend(), x(f), fx::with_extent(f.mask(), 1, 2), f.out(f.o1)); }},
      {"mask", [&](fx& f) { masked_whiten(cpu_backend(), x(f), fx::null_data(f.mask()), f.out(f.o1)); }},
      {"out", [&](fx& f) { masked_whiten(cpu_backend(), x(f), f.mask(), fx::null_data(f.out(f.o1))); }},
      {"out", [&](fx& f) { masked_whiten(cpu_backend(), x(f), f.mask(), fx::with_extent(f.out(f.o1), 0, 1)); }},
      {"out", [&](fx& f) {
         masked_whiten(cpu_backend(), x(f), f.mask(), token_view<double>::strided(f.o1.data(), {fx::B, fx::T}, {0, 1}));
       }},
      {"eps", [&](fx& f) { masked_whiten(cpu_backend(), x(f), f.mask(), f.out(f.o1), opt(-1e-8)); }},
      {"eps", [&](fx& f) { masked_whiten(cpu_backend(), x(f), f.mask(), f.out(f.o1), opt(NaN)); }},
      {"eps", [&](fx& f) { masked_whiten(cpu_backend(), x(f), f.mask(), f.out(f.o1), opt(Inf)); }},
      {"x", [&](fx& f) {
         f.r[1] = NaN;
         masked_whiten(cpu_backend(), x(f), f.mask(), f.out(f.o1));
       }},
  };
  for (const auto& c : cases) {
    fx f;
    rejects([&] { c.call(f); }, W, c.arg);
    CHECK(f.untouched());
  }
  fx f;
  f.r[11] = NaN;  // masked
  masked_whiten(cpu_backend(), x(f), f.mask(), f.out(f.o1));
  CHECK(f.o1[11] == 0.0);
  CHECK(std::isfinite(f.o1[0]));
  fx g;
  g.r[0] = Inf;
  whiten_options o;
  o.check_finite = false;
  CHECK_NOTHROW(masked_whiten(cpu_backend(), x(g), g.mask(), g.out(g.o1), o));
}

TEST_CASE("errors: compute_masked_moments and masked_moments_to", "[errors]") {
  auto x = [](fx& f) { return token_view<const double>(f.r.data(), fx::B, fx::T); };
  masked_moments m{-1, -1, -1};
  const std::vector<std::pair<const char*, std::function<void(fx&)>>> cases = {
      {"x", [&](fx& f) { compute_masked_moments(cpu_backend(), fx::null_data(x(f)), f.mask(), true); }},
      {"mask", [&](fx& f) { compute_masked_moments(cpu_backend(), x(f), fx::with_extent(f.mask(), 1, 2), true); }},
      {"mask", [&](fx& f) { compute_masked_moments(cpu_backend(), x(f), fx::null_data(f.mask()), true); }},
  };
  for (const auto& [arg, call] : cases) {
    fx f;
    rejects([&] { call(f); }, "asyppo::compute_masked_moments", arg);
  }
  const std::vector<std::pair<const char*, std::function<void(fx&)>>> to_cases = {
      {"x", [&](fx& f) { masked_moments_to(cpu_backend(), fx::null_data(x(f)), f.mask(), true, &m); }},
      {"mask", [&](fx& f) { masked_moments_to(cpu_backend(), x(f), fx::with_extent(f.mask(), 1, 2), true, &m); }},
      {"result", [&](fx& f) { masked_moments_to(cpu_backend(), x(f), f.mask(), true, nullptr); }},
  };
  for (const auto& [arg, call] : to_cases) {
    fx f;
    rejects([&] { call(f); }, "asyppo::masked_moments_to", arg);
  }
  CHECK(m.count == -1);
  CHECK(m.mean == -1);
}

TEST_CASE("errors: grpo, rloo, reinforce++(-baseline), sequence_scores", "[errors]") {
  struct bad {
    const char* where;
    const char* arg;
    std::function<void(fx&)> call;
  };
  auto outs = [](fx& f) { return outcome_outputs<double>{f.out(f.o1), seq_view<double>(f.seq.data(), fx::B)}; };
  auto grpo_eps = [](double eps) {
    grpo_options o;
    o.eps = eps;
    return o;
  };
  auto rf_opt = [](double gamma, double eps) {
    reinforce_options o;
    o.gamma = gamma;
    o.whiten.eps = eps;
    return o;
  };
  const char* G = "asyppo::grpo_advantages";
  const char* R = "asyppo::rloo_advantages";
  const char* RB = "asyppo::reinforce_pp_baseline_advantages";
  const char* RP = "asyppo::reinforce_pp_advantages";
  const char* SS = "asyppo::sequence_scores";
  const std::vector<bad> cases = {
      {G, "eps", [&](fx& f) { grpo_advantages(cpu_backend(), f.seq_scores(), f.group_ids(), f.mask(), outs(f), grpo_eps(-1e-6)); }},
      {G, "eps", [&](fx& f) { grpo_advantages(cpu_backend(), f.seq_scores(), f.group_ids(), f.mask(), outs(f), grpo_eps(NaN)); }},
      {G, "scores", [&](fx& f) { grpo_advantages(cpu_backend(), fx::null_data(f.seq_scores()), f.group_ids(), f.mask(), outs(f)); }},
      {G, "scores", [&](fx& f) { grpo_advantages(cpu_backend(), fx::with_stride(f.seq_scores(), 0, -1), f.group_ids(), f.mask(), outs(f)); }},
      {G, "group_ids", [&](fx& f) { grpo_advantages(cpu_backend(), f.seq_scores(), fx::with_extent(f.group_ids(), 0, 2), f.mask(), outs(f)); }},
      {G, "group_ids", [&](fx& f) { grpo_advantages(cpu_backend(), f.seq_scores(), fx::null_data(f.group_ids()), f.mask(), outs(f)); }},
      {G, "mask", [&](fx& f) { grpo_advantages(cpu_backend(), f.seq_scores(), f.group_ids(), fx::with_extent(f.mask(), 0, 4), outs(f)); }},
      {G, "mask", [&](fx& f) { grpo_advantages(cpu_backend(), f.seq_scores(), f.group_ids(), fx::null_data(f.mask()), outs(f)); }},
      {G, "out.advantages", [&](fx& f) {
         auto o = outs(f);
         o.advantages = fx::with_extent(o.advantages, 1, 3);
         grpo_advantages(cpu_backend(), f.seq_scores(), f.group_ids(), f.mask(), o);
       }},
      {G, "out.sequence", [&](fx& f) {
         auto o = outs(f);
         o.sequence = seq_view<double>::strided(f.seq.data(), {fx::B}, {0});
         grpo_advantages(cpu_backend(), f.seq_scores(), f.group_ids(), f.mask(), o);
       }},
      {G, "scores", [&](fx& f) {
         f.scores[2] = NaN;
         grpo_advantages(cpu_backend(), f.seq_scores(), f.group_ids(), f.mask(), outs(f));
       }},
      {R, "scores", [&](fx& f) {
         f.scores[0] = Inf;
         rloo_advantages(cpu_backend(), f.seq_scores(), f.group_ids(), f.mask(), outs(f));
       }},
      {R, "group_ids", [&](fx& f) { rloo_advantages(cpu_backend(), f.seq_scores(), fx::with_extent(f.group_ids(), 0, 4), f.mask(), outs(f)); }},
      {R, "out.sequence", [&](fx& f) {
         auto o = outs(f);
         o.sequence = fx::with_extent(o.sequence, 0, 1);
         rloo_advantages(cpu_backend(), f.seq_scores(), f.group_ids(), f.mask(), o);
       }},
      {RB, "out.advantages", [&](fx& f) {
         auto o = outs(f);
         o.advantages = fx::null_data(o.advantages);
         reinforce_pp_baseline_advantages(cpu_backend(), f.seq_scores(), f.group_ids(), f.mask(), o);
       }},
      {RB, "eps", [&](fx& f) { reinforce_pp_baseline_advantages(cpu_backend(), f.seq_scores(), f.group_ids(), f.mask(), outs(f), rf_opt(1, -1)); }},
      {RB, "scores", [&](fx& f) {
         f.scores[1] = NaN;
         reinforce_pp_baseline_advantages(cpu_backend(), f.seq_scores(), f.group_ids(), f.mask(), outs(f));
       }},
      {RP, "rewards", [&](fx& f) { reinforce_pp_advantages(cpu_backend(), fx::null_data(f.rewards()), f.mask(), f.out(f.o1)); }},
      {RP, "mask", [&](fx& f) { reinforce_pp_advantages(cpu_backend(), f.rewards(), fx::with_extent(f.mask(), 1, 9), f.out(f.o1)); }},
      {RP, "advantages", [&](fx& f) { reinforce_pp_advantages(cpu_backend(), f.rewards(), f.mask(), fx::null_data(f.out(f.o1))); }},
      {RP, "advantages", [&](fx& f) {
         reinforce_pp_advantages(cpu_backend(), f.rewards(), f.mask(), token_view<double>::strided(f.o1.data(), {fx::B, fx::T}, {1, 1}));
       }},
      {RP, "gamma", [&](fx& f) { reinforce_pp_advantages(cpu_backend(), f.rewards(), f.mask(), f.out(f.o1), rf_opt(1.01, 1e-8)); }},
      {RP, "gamma", [&](fx& f) { reinforce_pp_advantages(cpu_backend(), f.rewards(), f.mask(), f.out(f.o1), rf_opt(NaN, 1e-8)); }},
      {RP, "eps", [&](fx& f) { reinforce_pp_advantages(cpu_backend(), f.rewards(), f.mask(), f.out(f.o1), rf_opt(1, NaN)); }},
      {RP, "rewards", [&](fx& f) {
         f.r[4] = -Inf;
         reinforce_pp_advantages(cpu_backend(), f.rewards(), f.mask(), f.out(f.o1));
       }},
      {SS, "rewards", [&](fx& f) { sequence_scores(cpu_backend(), fx::with_stride(f.rewards(), 1, -1), seq_view<double>(f.seq.data(), fx::B)); }},
      {SS, "scores", [&](fx& f) { sequence_scores(cpu_backend(), f.rewards(), seq_view<double>(f.seq.data(), 2)); }},
      {SS, "scores", [&](fx& f) { sequence_scores(cpu_backend(), f.rewards(), seq_view<double>(nullptr, fx::B)); }},
  };
  for (const auto& c : cases) {
    fx f;
    rejects([&] { c.call(f); }, c.where, c.arg);
    CHECK(f.untouched());
  }
  // NaN rewards on masked tokens are accepted by REINFORCE++; check_finite = false skips checks.
  fx f;
  f.r[7] = NaN;
  reinforce_pp_advantages(cpu_backend(), f.rewards(), f.mask(), f.out(f.o1));
  CHECK(f.o1[7] == 0.0);
  CHECK(std::isfinite(f.o1[0]));
  fx g;
  g.scores[0] = NaN;
  grpo_options go;
  go.check_finite = false;
  CHECK_NOTHROW(grpo_advantages(cpu_backend(), g.seq_scores(), g.group_ids(), g.mask(), outs(g), go));
}

TEST_CASE("errors: uncertainty_masks", "[errors]") {
  const std::string W = "asyppo::uncertainty_masks";
  struct bad {
    const char* arg;
    std::function<void(fx&, mask_options&)> prep;
  };
  auto sig = [](fx& f) { return token_view<const double>(f.r.data(), fx::B, fx::T); };
  auto am = [](fx& f) { return mask_out(f.am.data(), fx::B, fx::T); };
  auto em = [](fx& f) { return mask_out(f.em.data(), fx::B, fx::T); };
  auto nop = [](fx&, mask_options&) {};
  // Shape errors, one call each.
  const std::vector<std::pair<const char*, std::function<void(fx&)>>> shape_cases = {
      {"sigma", [&](fx& f) { uncertainty_masks(cpu_backend(), fx::null_data(sig(f)), f.mask(), am(f), em(f)); }},
      {"sigma", [&](fx& f) { uncertainty_masks(cpu_backend(), fx::with_stride(sig(f), 0, -4), f.mask(), am(f), em(f)); }},
      {"mask", [&](fx& f) { uncertainty_masks(cpu_backend(), sig(f), fx::with_extent(f.mask(), 0, 1), am(f), em(f)); }},
      {"mask", [&](fx& f) { uncertainty_masks(cpu_backend(), sig(f), fx::null_data(f.mask()), am(f), em(f)); }},
      {"adv_mask", [&](fx& f) { uncertainty_masks(cpu_backend(), sig(f), f.mask(), fx::with_extent(am(f), 1, 2), em(f)); }},
      {"entropy_mask", [&](fx& f) {
         uncertainty_masks(cpu_backend(), sig(f), f.mask(), am(f), mask_out::strided(f.em.data(), {fx::B, fx::T}, {2, 1}));
       }},
  };
  for (const auto& c : shape_cases) {
    fx f;
    rejects([&] { c.second(f); }, W, c.first);
    CHECK(f.untouched());
  }
  const std::vector<bad> cases = {
      {"adv_fraction", [](fx&, mask_options& o) { o.adv_fraction = 1.0; }},
      {"adv_fraction", [](fx&, mask_options& o) { o.adv_fraction = -0.1; }},
      {"adv_fraction", [](fx&, mask_options& o) { o.adv_fraction = NaN; }},
      {"entropy_fraction", [](fx&, mask_options& o) { o.entropy_fraction = 1.0; }},
      {"entropy_fraction", [](fx&, mask_options& o) { o.entropy_fraction = -0.1; }},
      {"entropy_fraction", [](fx&, mask_options& o) { o.entropy_fraction = NaN; }},
      {"sigma", [](fx& f, mask_options&) { f.r[2] = NaN; }},
      {"sigma", [](fx& f, mask_options&) { f.r[8] = Inf; }},
  };
  for (const auto& c : cases) {
    fx f;
    mask_options o;
    c.prep(f, o);
    rejects([&] { uncertainty_masks(cpu_backend(), sig(f), f.mask(), am(f), em(f), o); }, W, c.arg);
    CHECK(f.untouched());
  }
  (void)nop;
  // NaN sigma on masked tokens accepted; check_finite = false skips the check.
  fx f;
  f.r[10] = NaN;
  CHECK_NOTHROW(uncertainty_masks(cpu_backend(), sig(f), f.mask(), am(f), em(f)));
  CHECK(f.am[10] == 0);
  fx g;
  g.r[0] = NaN;
  mask_options o;
  o.check_finite = false;
  CHECK_NOTHROW(uncertainty_masks(cpu_backend(), sig(g), g.mask(), am(g), em(g), o));
}

TEST_CASE("errors: advantage_step", "[errors]") {
  const std::string W = "asyppo::advantage_step";
  struct bad {
    const char* arg;
    std::function<void(fx&, advantage_inputs<double>&, advantage_outputs<double>&, advantage_config&)> prep;
  };
  auto inputs = [](fx& f) { return advantage_inputs<double>{f.values(), f.rewards(), f.mask(), f.group_ids()}; };
  auto outputs = [](fx& f) {
    return advantage_outputs<double>{f.out(f.o1), f.out(f.o2), mask_out(f.am.data(), fx::B, fx::T),
                                     mask_out(f.em.data(), fx::B, fx::T), view<double, 2>(f.shard.data(), fx::K, fx::B),
                                     f.out(f.o3)};
  };
  using I = advantage_inputs<double>;
  using O = advantage_outputs<double>;
  using C = advantage_config;
  const std::vector<bad> cases = {
      {"critics", [](fx&, I&, O&, C& c) { c.critics = 0; }},
      {"values", [](fx&, I&, O&, C& c) { c.critics = 3; }},  // K != config.critics
      {"values", [](fx& f, I& in, O&, C&) { in.values = fx::with_stride(f.values(), 1, -4); }},
      {"values", [](fx& f, I& in, O&, C&) { in.values = fx::null_data(f.values()); }},
      {"rewards", [](fx& f, I& in, O&, C&) { in.rewards = fx::with_extent(f.rewards(), 0, 2); }},
      {"mask", [](fx& f, I& in, O&, C&) { in.mask = fx::with_extent(f.mask(), 1, 3); }},
      {"mask", [](fx& f, I& in, O&, C&) { in.mask = fx::null_data(f.mask()); }},
      {"group_ids", [](fx& f, I& in, O&, C&) { in.group_ids = fx::with_extent(f.group_ids(), 0, 4); }},
      {"out.advantages", [](fx& f, I&, O& o, C&) { o.advantages = fx::null_data(f.out(f.o1)); }},
      {"out.returns", [](fx& f, I&, O& o, C&) { o.returns = fx::with_extent(f.out(f.o2), 1, 3); }},
      {"out.adv_mask", [](fx&, I&, O& o, C&) { o.adv_mask = mask_out(nullptr, fx::B, fx::T); }},
      {"out.entropy_mask", [](fx& f, I&, O& o, C&) {
         o.entropy_mask = mask_out::strided(f.em.data(), {fx::B, fx::T}, {1, 1});
       }},
      {"out.shard_weights", [](fx& f, I&, O& o, C&) { o.shard_weights = view<double, 2>(f.shard.data(), 1, fx::B); }},
      {"out.std", [](fx& f, I&, O& o, C&) { o.std = fx::with_stride(f.out(f.o3), 1, -1); }},
      {"gamma", [](fx&, I&, O&, C& c) { c.gamma = 2; }},
      {"gamma", [](fx&, I&, O&, C& c) { c.gamma = NaN; }},
      {"lambda_actor", [](fx&, I&, O&, C& c) { c.lambda_actor = -0.01; }},
      {"lambda_critic", [](fx&, I&, O&, C& c) { c.lambda_critic = NaN; }},
      {"adaptive_lambda_alpha", [](fx&, I&, O&, C& c) { c.adaptive_lambda_alpha = -1; }},
      {"adv_mask_fraction", [](fx&, I&, O&, C& c) { c.adv_mask_fraction = 1.0; }},
      {"adv_mask_fraction", [](fx&, I&, O&, C& c) { c.adv_mask_fraction = -0.1; }},
      {"adv_mask_fraction", [](fx&, I&, O&, C& c) { c.adv_mask_fraction = NaN; }},
      {"entropy_filter_fraction", [](fx&, I&, O&, C& c) { c.entropy_filter_fraction = 1.0; }},
      {"entropy_filter_fraction", [](fx&, I&, O&, C& c) { c.entropy_filter_fraction = NaN; }},
      {"eps", [](fx&, I&, O&, C& c) {
         c.whiten_advantages = true;
         c.whiten.eps = -1;
       }},
      {"values or rewards", [](fx& f, I&, O&, C&) { f.V[1] = NaN; }},
      {"values or rewards", [](fx& f, I&, O&, C&) { f.r[8] = Inf; }},
  };
  for (const auto& c : cases) {
    fx f;
    auto in = inputs(f);
    auto out = outputs(f);
    advantage_config cfg;
    c.prep(f, in, out, cfg);
    rejects([&] { advantage_step(cpu_backend(), in, out, cfg); }, W, c.arg);
    CHECK(f.untouched());
  }
  // NaN on masked tokens is accepted; check_finite = false skips the check.
  fx f;
  f.V[7] = NaN;
  f.r[11] = NaN;
  const auto s = advantage_step(cpu_backend(), inputs(f), outputs(f));
  CHECK(s.valid_tokens == 9);
  for (int i = 0; i < fx::B * fx::T; ++i) CHECK(std::isfinite(f.o1[i]));
  fx g;
  g.r[0] = NaN;
  advantage_config cfg;
  cfg.check_finite = false;
  CHECK_NOTHROW(advantage_step(cpu_backend(), inputs(g), outputs(g), cfg));
}
