// Tests of core/policy_loss.hpp and core/actor_objective.hpp against the plain references of
// tests/support/loss_reference.hpp, central finite differences, hand-checked numbers, micro-batch
// accumulation, masks, extremes, validation and thread-count determinism.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "loss_reference.hpp"
#include "loss_test_util.hpp"

using namespace asyppo;
using lt::cv;
using lt::mk;
using lt::mv;

namespace {

struct pg_case {
  int B, T;
  lref::vec lp, olp, A;
  lref::bytes m, am;
};

pg_case make_case(std::uint64_t seed, int B, int T, double spread = 1.5) {
  std::mt19937_64 rng(seed);
  pg_case c{B, T, {}, {}, {}, {}, {}};
  const std::size_t n = static_cast<std::size_t>(B) * T;
  c.olp = lref::random_vec(rng, n, -3.0, -0.1);
  const lref::vec d = lref::random_vec(rng, n, -spread, spread);
  c.lp.resize(n);
  for (std::size_t i = 0; i < n; ++i) c.lp[i] = c.olp[i] + d[i];
  c.A = lref::random_vec(rng, n, -2.0, 2.0);
  c.m = lref::random_mask(rng, B, T);
  c.am = lref::random_bits(rng, n, 0.8);
  return c;
}

policy_loss_options pg_opts(int mode, double dual, loss_normalizer n = {}) {
  policy_loss_options o;
  o.clip_low = 0.2;
  o.clip_high = 0.28;
  o.dual_clip = dual;
  o.aggregation = lt::mode_of(mode);
  o.normalizer = n;
  return o;
}

template <class T>
policy_loss_result run_pg(const cpu_backend& be, const pg_case& c, const std::vector<T>& lp, std::vector<T>* grad,
                          const policy_loss_options& o, bool use_am = true) {
  const auto olp = lt::cast<T>(c.olp), A = lt::cast<T>(c.A);
  policy_loss_inputs<T> in{cv(lp, c.B, c.T), cv(olp, c.B, c.T), cv(A, c.B, c.T), mk(c.m, c.B, c.T),
                           use_am ? mk(c.am, c.B, c.T) : mask_view{}};
  return policy_loss(be, in, grad ? mv(*grad, c.B, c.T) : token_view<T>{}, o);
}

}  // namespace

TEST_CASE("policy_loss: hand-checked numbers (method-spec worked example)", "[policy_loss]") {
  cpu_backend be(1);
  auto one = [&](double rho, double A, double eh, double dual) {
    const double lp = std::log(rho), olp = 0.0;
    const std::uint8_t m = 1;
    policy_loss_inputs<double> in{token_view<const double>(&lp, 1, 1), token_view<const double>(&olp, 1, 1),
                                  token_view<const double>(&A, 1, 1), mask_view(&m, 1, 1)};
    policy_loss_options o;
    o.clip_low = 0.2;
    o.clip_high = eh;
    o.dual_clip = dual;
    return policy_loss(be, in, {}, o);
  };
  CHECK(one(1.5, +1, 0.28, 0).loss == Approx(-1.28).epsilon(1e-15));
  CHECK(one(0.5, -1, 0.28, 0).loss == Approx(0.8).epsilon(1e-15));
  CHECK(one(5.0, -1, 0.28, 0).loss == Approx(5.0).epsilon(1e-14));
  const auto d = one(5.0, -1, 0.28, 3.0);
  CHECK(d.loss == Approx(3.0).epsilon(1e-15));
  CHECK(d.metrics.dual_clipped_tokens == 1);
  CHECK(d.metrics.dual_clip_fraction() == 1.0);
  // Inside the clip range the surrogate is -rho A.
  CHECK(one(1.1, 2.0, 0.2, 0).loss == Approx(-2.2).epsilon(1e-14));
}

TEMPLATE_TEST_CASE("policy_loss matches the plain reference (random shapes, every mode)", "[policy_loss]", float,
                   double) {
  using T = TestType;
  cpu_backend be(1);
  std::mt19937_64 shape_rng(11);
  for (int rep = 0; rep < 12; ++rep) {
    const int B = 1 + static_cast<int>(shape_rng() % 9), Tn = 1 + static_cast<int>(shape_rng() % 17);
    pg_case c = make_case(100 + rep, B, Tn, rep % 3 == 0 ? 3.0 : 1.2);
    const auto lpT = lt::cast<T>(c.lp);
    const auto lp = lt::rounded<T>(c.lp), olp = lt::rounded<T>(c.olp), A = lt::rounded<T>(c.A);
    for (int mode = 0; mode < lt::kModes; ++mode) {
      for (double dual : {0.0, 3.0}) {
        const lref::norm n = lref::local_norm(c.m, B, Tn);
        lref::pg_params p{0.2, 0.28, dual, 20.0};
        const auto ref = lref::policy(lp, olp, A, c.m, c.am, B, Tn, p, mode, n);
        std::vector<T> g(static_cast<std::size_t>(B) * Tn, T(7));
        const auto r = run_pg<T>(be, c, lpT, &g, pg_opts(mode, dual));
        INFO("rep " << rep << " mode " << mode << " dual " << dual);
        CHECK(lt::close(r.loss, ref.loss, 1e-12, 1e-12));
        for (std::size_t i = 0; i < g.size(); ++i)
          CHECK(lt::close(static_cast<double>(g[i]), ref.grad[i], lt::grad_rtol<T>(), 1e-30));
        CHECK(r.metrics.valid_tokens == ref.valid);
        CHECK(r.metrics.adv_masked_tokens == ref.adv_masked);
        CHECK(r.metrics.clipped_tokens() == ref.clipped);
        CHECK(r.metrics.clipped_high_tokens == ref.high);
        CHECK(r.metrics.clipped_low_tokens == ref.low);
        CHECK(r.metrics.dual_clipped_tokens == ref.dual);
        CHECK(lt::close(r.metrics.approx_kl_sum, ref.kl_sum, 1e-12, 1e-13));
        CHECK(r.normalizer.tokens == n.N);
        CHECK(r.normalizer.sequences == n.Bg);
        if (ref.valid > 0) {
          CHECK(r.metrics.clip_fraction() == Approx(double(ref.clipped) / ref.valid));
          CHECK(r.metrics.approx_kl() == Approx(ref.kl_sum / ref.valid));
        } else {
          CHECK(std::isnan(r.metrics.clip_fraction()));
        }
      }
    }
  }
}

TEST_CASE("policy_loss gradient matches central finite differences", "[policy_loss][fd]") {
  cpu_backend be(1);
  for (int mode = 0; mode < lt::kModes; ++mode) {
    for (double clamp : {20.0, 1.0}) {
      for (double dual : {0.0, 3.0}) {
        pg_case c = make_case(7 + mode, 3, 6, 1.6);
        const auto o = pg_opts(mode, dual);
        auto o2 = o;
        o2.log_ratio_clamp = clamp;
        std::vector<double> g(c.lp.size());
        run_pg<double>(be, c, c.lp, &g, o2);
        const double h = 1e-6;
        for (std::size_t i = 0; i < c.lp.size(); ++i) {
          auto lp = c.lp;
          lp[i] = c.lp[i] + h;
          const double up = run_pg<double>(be, c, lp, nullptr, o2).loss;
          lp[i] = c.lp[i] - h;
          const double dn = run_pg<double>(be, c, lp, nullptr, o2).loss;
          const double fd = (up - dn) / (2 * h);
          INFO("mode " << mode << " clamp " << clamp << " dual " << dual << " i " << i);
          CHECK(std::fabs(fd - g[i]) <= 1e-7 * std::max(1.0, std::fabs(g[i])));
        }
      }
    }
  }
}

TEST_CASE("policy_loss: clip branches on both sides, dual clip, and the log-ratio clamp", "[policy_loss]") {
  cpu_backend be(1);
  // Tokens: (delta, A): far above with A>0 (clip high), far above with A<0 (unclipped or dual),
  // far below with A<0 (clip low), far below with A>0 (unclipped), inside the range.
  const std::vector<double> d = {2.0, 2.0, -2.0, -2.0, 0.05, 50.0, -50.0};
  const std::vector<double> A = {1.0, -1.0, -1.0, 1.0, 0.7, -1.0, 1.0};
  const int n = static_cast<int>(d.size());
  std::vector<double> olp(n, -1.0), lp(n);
  for (int i = 0; i < n; ++i) lp[i] = olp[i] + d[i];
  const lref::bytes m(n, 1);
  policy_loss_inputs<double> in{cv(lp, 1, n), cv(olp, 1, n), cv(A, 1, n), mk(m, 1, n)};
  for (double dual : {0.0, 3.0}) {
    policy_loss_options o;
    o.clip_low = 0.2;
    o.clip_high = 0.28;
    o.dual_clip = dual;
    o.aggregation = loss_aggregation::token_sum;
    std::vector<double> g(n, 9.0);
    const auto r = policy_loss(be, in, mv(g, 1, n), o);
    const double e2 = std::exp(2.0), em2 = std::exp(-2.0);
    CHECK(g[0] == 0.0);  // clipped high: -A * 1.28
    CHECK(g[2] == 0.0);  // clipped low: -A * 0.8
    CHECK(g[3] == Approx(-em2));  // unclipped: l = -rho
    CHECK(g[4] == Approx(-0.7 * std::exp(0.05)));
    CHECK(g[6] == 0.0);  // A > 0, ratio ~ 0: clipped low side does not bind, but the clamp is active
    CHECK(g[5] == 0.0);  // clamp active (and dual or not)
    double want = -1.28 + 0.8 - em2 - 0.7 * std::exp(0.05) - std::exp(-20.0);
    if (dual == 0.0) {
      CHECK(g[1] == Approx(e2));  // unclipped, l = rho
      want += e2 + std::exp(20.0);
      CHECK(r.metrics.dual_clipped_tokens == 0);
    } else {
      CHECK(g[1] == 0.0);  // dual clip: l = 3
      want += 3.0 + 3.0;
      CHECK(r.metrics.dual_clipped_tokens == 2);
    }
    CHECK(r.loss == Approx(want).epsilon(1e-13));
    CHECK(std::isfinite(r.loss));
    CHECK(r.metrics.clipped_high_tokens == 1);
    CHECK(r.metrics.clipped_low_tokens == 1);
    CHECK(r.metrics.clip_fraction() == Approx(2.0 / n));
  }
  // Clamp off: +-50 still finite (exp(50) ~ 5e21), the gradient is the live -A rho.
  policy_loss_options o;
  o.log_ratio_clamp = 0;
  o.aggregation = loss_aggregation::token_sum;
  std::vector<double> g(n);
  const auto r = policy_loss(be, in, mv(g, 1, n), o);
  CHECK(std::isfinite(r.loss));
  CHECK(g[5] == Approx(std::exp(50.0)));
}

TEST_CASE("zero_unless: a branch-free select that keeps any value or gives +0", "[policy_loss][select]") {
  const double inf = std::numeric_limits<double>::infinity(), nan = std::numeric_limits<double>::quiet_NaN();
  for (double x : {1.5, -2.0, -0.0, 0.0, inf, -inf, 1e-310}) {
    CHECK(detail::zero_unless(true, x) == x);
    CHECK(std::signbit(detail::zero_unless(true, x)) == std::signbit(x));
    CHECK(detail::zero_unless(false, x) == 0.0);
    CHECK_FALSE(std::signbit(detail::zero_unless(false, x)));
  }
  CHECK(std::isnan(detail::zero_unless(true, nan)));
  CHECK(detail::zero_unless(false, nan) == 0.0);
}

TEST_CASE("policy_loss: an overflowing ratio on A = 0 or I^A = 0 tokens gives zero loss and gradient", "[policy_loss]") {
  // Clamp off: exp(800) = +inf. A = 0 and I^A = 0 tokens must contribute exactly 0 (0 * inf is
  // NaN, so the surrogate must select, not multiply); a live token beside them keeps its value.
  cpu_backend be(1);
  const std::vector<double> olp = {-1.0, -1.0, -1.0}, lp = {799.0, 799.0, -0.5}, A = {0.0, 1.0, -0.5};
  const lref::bytes m(3, 1), am = {1, 0, 1};
  policy_loss_inputs<double> in{cv(lp, 1, 3), cv(olp, 1, 3), cv(A, 1, 3), mk(m, 1, 3), mk(am, 1, 3)};
  policy_loss_options o;
  o.log_ratio_clamp = 0;
  o.aggregation = loss_aggregation::token_sum;
  std::vector<double> g(3, 7.0);
  const auto r = policy_loss(be, in, mv(g, 1, 3), o);
  const double rho = std::exp(0.5);  // 1.65 > 1 + eps_high, but with A < 0 the unclipped term binds
  CHECK(g[0] == 0.0);
  CHECK(g[1] == 0.0);
  CHECK(g[2] == Approx(0.5 * rho));
  CHECK(r.loss == Approx(0.5 * rho));
  CHECK(r.metrics.adv_masked_tokens == 1);
  CHECK(r.metrics.clipped_tokens() == 0);
}

TEST_CASE("policy_loss: masked, padded and I^A = 0 tokens get exactly zero gradient", "[policy_loss]") {
  cpu_backend be(1);
  pg_case c = make_case(5, 6, 9, 0.5);
  for (int mode = 0; mode < lt::kModes; ++mode) {
    std::vector<double> g(c.lp.size(), 123.0);
    const auto r = run_pg<double>(be, c, c.lp, &g, pg_opts(mode, 3.0));
    long nonzero = 0;
    for (std::size_t i = 0; i < g.size(); ++i) {
      if (!c.m[i] || !c.am[i]) {
        CHECK(g[i] == 0.0);
        CHECK_FALSE(std::signbit(g[i]));  // +0, not -0 (the selects mask bits)
      }
      else nonzero += g[i] != 0.0;
    }
    CHECK(nonzero > 0);
    // I^A = 0 is the same as A = 0 (D5): loss and gradient.
    pg_case z = c;
    for (std::size_t i = 0; i < z.A.size(); ++i)
      if (!z.am[i]) z.A[i] = 0.0;
    std::vector<double> g2(c.lp.size());
    const auto r2 = run_pg<double>(be, z, z.lp, &g2, pg_opts(mode, 3.0), false);
    CHECK(r2.loss == Approx(r.loss).epsilon(1e-14));
    for (std::size_t i = 0; i < g.size(); ++i) CHECK(g2[i] == g[i]);
  }
}

TEST_CASE("policy_loss: invalid arguments throw asyppo::error and leave outputs untouched", "[policy_loss][errors]") {
  cpu_backend be(1);
  pg_case c = make_case(9, 3, 4);
  const std::vector<double> sentinel(c.lp.size(), -777.0);
  auto expect_throw = [&](const policy_loss_options& o, pg_case cc, bool bad_shape = false) {
    std::vector<double> g = sentinel;
    const auto olp = cc.olp;
    policy_loss_inputs<double> in{cv(cc.lp, 3, 4), cv(olp, 3, bad_shape ? 3 : 4), cv(cc.A, 3, 4), mk(cc.m, 3, 4),
                                  mk(cc.am, 3, 4)};
    CHECK_THROWS_AS(policy_loss(be, in, mv(g, 3, 4), o), asyppo::error);
    CHECK(lt::bit_equal(g, sentinel));
  };
  policy_loss_options o;
  o.clip_low = -0.1;
  expect_throw(o, c);
  o = {};
  o.clip_high = -0.01;
  expect_throw(o, c);
  o = {};
  o.clip_low = 1.5;
  expect_throw(o, c);
  o = {};
  o.dual_clip = 1.0;
  expect_throw(o, c);
  o.dual_clip = 0.5;
  expect_throw(o, c);
  o.dual_clip = std::numeric_limits<double>::quiet_NaN();
  expect_throw(o, c);
  o = {};
  o.log_ratio_clamp = -1;
  expect_throw(o, c);
  o = {};
  o.clip_high = std::numeric_limits<double>::infinity();
  expect_throw(o, c);
  o = {};
  expect_throw(o, c, true);  // mismatched shapes
  o.normalizer.tokens = 1;   // smaller than the local token count
  o.aggregation = loss_aggregation::token_mean;
  expect_throw(o, c);
  o = {};
  o.normalizer.sequences = std::numeric_limits<double>::quiet_NaN();
  expect_throw(o, c);
  // NaN on a valid token is rejected; on a masked token it is ignored.
  pg_case bad = c;
  std::size_t valid = 0, masked = 0;
  bool hv = false, hm = false;
  for (std::size_t i = 0; i < c.m.size(); ++i) {
    if (c.m[i] && !hv) valid = i, hv = true;
    if (!c.m[i] && !hm) masked = i, hm = true;
  }
  REQUIRE(hv);
  bad.lp[valid] = std::numeric_limits<double>::quiet_NaN();
  expect_throw({}, bad);
  if (hm) {
    pg_case ok = c;
    ok.lp[masked] = std::numeric_limits<double>::infinity();
    std::vector<double> g(c.lp.size());
    CHECK(std::isfinite(run_pg<double>(be, ok, ok.lp, &g, {}).loss));
    CHECK(g[masked] == 0.0);
  }
  // Wrong adv_mask / grad shapes and a missing mask.
  {
    std::vector<double> g = sentinel;
    policy_loss_inputs<double> in{cv(c.lp, 3, 4), cv(c.olp, 3, 4), cv(c.A, 3, 4), mk(c.m, 3, 4), mk(c.am, 2, 4)};
    CHECK_THROWS_AS(policy_loss(be, in, mv(g, 3, 4)), asyppo::error);
    in.adv_mask = {};
    in.mask = {};
    CHECK_THROWS_AS(policy_loss(be, in, mv(g, 3, 4)), asyppo::error);
    in.mask = mk(c.m, 3, 4);
    CHECK_THROWS_AS(policy_loss(be, in, mv(g, 4, 3)), asyppo::error);
    CHECK(lt::bit_equal(g, sentinel));
  }
}

TEST_CASE("policy_loss and actor_objective are bit-identical for 1 and 2 threads", "[policy_loss][determinism]") {
  cpu_backend be1(1), be2(2);
  pg_case c = make_case(21, 37, 700);  // 25900 tokens: two reduce tiles
  for (int mode = 0; mode < lt::kModes; ++mode) {
    std::vector<float> g1(c.lp.size()), g2(c.lp.size());
    const auto lp = lt::cast<float>(c.lp);
    const auto r1 = run_pg<float>(be1, c, lp, &g1, pg_opts(mode, 3.0));
    const auto r2 = run_pg<float>(be2, c, lp, &g2, pg_opts(mode, 3.0));
    CHECK(std::memcmp(&r1.loss, &r2.loss, sizeof(double)) == 0);
    CHECK(r1.metrics.approx_kl_sum == r2.metrics.approx_kl_sum);
    CHECK(r1.metrics.clipped_tokens() == r2.metrics.clipped_tokens());
    CHECK(lt::bit_equal(g1, g2));
  }
  std::mt19937_64 rng(3);
  const auto H = lref::random_vec(rng, c.lp.size(), 0.0, 3.0), ref = lref::random_vec(rng, c.lp.size(), -3, 0);
  const auto hm = lref::random_bits(rng, c.lp.size(), 0.8);
  actor_objective_inputs<double> in{cv(c.lp, 37, 700), cv(c.olp, 37, 700), cv(c.A, 37, 700), mk(c.m, 37, 700),
                                    mk(c.am, 37, 700), cv(H, 37, 700), mk(hm, 37, 700), cv(ref, 37, 700)};
  actor_objective_options o;
  o.entropy_coef = 0.01;
  o.kl_coef = 0.1;
  std::vector<double> gl1(c.lp.size()), gl2(c.lp.size()), gh1(c.lp.size()), gh2(c.lp.size());
  const auto a1 = actor_objective(be1, in, actor_objective_outputs<double>{mv(gl1, 37, 700), mv(gh1, 37, 700)}, o);
  const auto a2 = actor_objective(be2, in, actor_objective_outputs<double>{mv(gl2, 37, 700), mv(gh2, 37, 700)}, o);
  CHECK(std::memcmp(&a1.total, &a2.total, sizeof(double)) == 0);
  CHECK(lt::bit_equal(gl1, gl2));
  CHECK(lt::bit_equal(gh1, gh2));
}

TEST_CASE("policy_loss accepts strided views", "[policy_loss]") {
  cpu_backend be(1);
  pg_case c = make_case(33, 4, 5);
  // Column-major copies of logp and advantages.
  std::vector<double> lpT(20), AT(20);
  for (int b = 0; b < 4; ++b)
    for (int t = 0; t < 5; ++t) lpT[t * 4 + b] = c.lp[b * 5 + t], AT[t * 4 + b] = c.A[b * 5 + t];
  policy_loss_inputs<double> in{token_view<const double>::strided(lpT.data(), {4, 5}, {1, 4}), cv(c.olp, 4, 5),
                                token_view<const double>::strided(AT.data(), {4, 5}, {1, 4}), mk(c.m, 4, 5),
                                mk(c.am, 4, 5)};
  std::vector<double> g(20), gT(20);
  const auto r = policy_loss(be, in, token_view<double>::strided(gT.data(), {4, 5}, {1, 4}), pg_opts(2, 3.0));
  const auto r0 = run_pg<double>(be, c, c.lp, &g, pg_opts(2, 3.0));
  CHECK(r.loss == r0.loss);
  for (int b = 0; b < 4; ++b)
    for (int t = 0; t < 5; ++t) CHECK(gT[t * 4 + b] == g[b * 5 + t]);
}

// ---- actor objective --------------------------------------------------------------------------

namespace {

struct actor_case {
  pg_case c;
  lref::vec H, ref;
  lref::bytes hm;
};

actor_case make_actor(std::uint64_t seed, int B, int T) {
  actor_case a{make_case(seed, B, T, 1.6), {}, {}, {}};
  std::mt19937_64 rng(seed ^ 0x9e3779b97f4a7c15ull);
  const std::size_t n = static_cast<std::size_t>(B) * T;
  a.H = lref::random_vec(rng, n, 0.0, 4.0);
  a.ref = lref::random_vec(rng, n, -0.5, 0.5);
  for (std::size_t i = 0; i < n; ++i) a.ref[i] += a.c.lp[i];
  a.hm = lref::random_bits(rng, n, 0.75);
  return a;
}

actor_objective_options actor_opts(int mode, loss_normalizer n = {}) {
  actor_objective_options o;
  o.clip_low = 0.2;
  o.clip_high = 0.28;
  o.dual_clip = 3.0;
  o.entropy_coef = 0.05;
  o.kl_coef = 0.2;
  o.kl.estimator = kl_estimator::k3;
  o.aggregation = lt::mode_of(mode);
  o.normalizer = n;
  return o;
}

actor_objective_result run_actor(const cpu_backend& be, const actor_case& a, const lref::vec& lp, const lref::vec& H,
                                 std::vector<double>* gl, std::vector<double>* gh, const actor_objective_options& o) {
  const int B = a.c.B, T = a.c.T;
  actor_objective_inputs<double> in{cv(lp, B, T), cv(a.c.olp, B, T), cv(a.c.A, B, T), mk(a.c.m, B, T),
                                    mk(a.c.am, B, T), cv(H, B, T), mk(a.hm, B, T), cv(a.ref, B, T)};
  return actor_objective(be, in,
                         actor_objective_outputs<double>{gl ? mv(*gl, B, T) : token_view<double>{},
                                                         gh ? mv(*gh, B, T) : token_view<double>{}},
                         o);
}

}  // namespace

TEST_CASE("actor_objective = surrogate + entropy bonus + KL, against the references", "[actor]") {
  cpu_backend be(1);
  for (int rep = 0; rep < 4; ++rep) {
    const actor_case a = make_actor(300 + rep, 3 + rep, 7 + 2 * rep);
    const int B = a.c.B, T = a.c.T;
    for (int mode = 0; mode < lt::kModes; ++mode) {
      const auto o = actor_opts(mode);
      std::vector<double> gl(a.c.lp.size(), 5.0), gh(a.c.lp.size(), 5.0);
      const auto r = run_actor(be, a, a.c.lp, a.H, &gl, &gh, o);
      const lref::norm n = lref::local_norm(a.c.m, B, T);
      const auto pg = lref::policy(a.c.lp, a.c.olp, a.c.A, a.c.m, a.c.am, B, T, {0.2, 0.28, 3.0, 20.0}, mode, n);
      const auto en = lref::entropy(a.H, a.c.m, a.hm, B, T, 0.05, mode, n);
      lref::vec klv(a.H.size(), 0.0), klg(a.H.size(), 0.0);
      for (std::size_t i = 0; i < klv.size(); ++i) {
        const auto k = lref::kl_token(a.c.lp[i], a.ref[i], 3, false, true);
        klv[i] = k.first;
        klg[i] = k.second;
      }
      const double kl = lref::aggregate(klv, a.c.m, B, T, mode, n);
      const auto w = lref::aggregate_grad(a.c.m, B, T, mode, n);
      INFO("rep " << rep << " mode " << mode);
      CHECK(lt::close(r.policy.loss, pg.loss, 1e-12, 1e-14));
      CHECK(lt::close(r.entropy.loss, en.loss, 1e-12, 1e-14));
      CHECK(lt::close(r.entropy.entropy, en.agg, 1e-12, 1e-14));
      CHECK(lt::close(r.kl.kl, kl, 1e-12, 1e-14));
      CHECK(lt::close(r.kl.loss, 0.2 * kl, 1e-12, 1e-14));
      CHECK(lt::close(r.total, pg.loss + en.loss + 0.2 * kl, 1e-12, 1e-14));
      for (std::size_t i = 0; i < gl.size(); ++i) {
        CHECK(lt::close(gl[i], pg.grad[i] + 0.2 * w[i] * klg[i], 1e-12, 1e-15));
        CHECK(lt::close(gh[i], en.grad[i], 1e-12, 1e-15));
        if (!a.c.m[i]) CHECK((gl[i] == 0.0 && gh[i] == 0.0));
        if (!a.hm[i]) CHECK(gh[i] == 0.0);
      }
      CHECK(r.policy.metrics.clipped_tokens() == pg.clipped);
      CHECK(r.policy.metrics.dual_clipped_tokens == pg.dual);
      // Same numbers as the three separate calls.
      std::vector<double> g1(gl.size()), g2(gl.size()), g3(gl.size());
      policy_loss_options po;
      po.clip_low = 0.2;
      po.clip_high = 0.28;
      po.dual_clip = 3.0;
      po.aggregation = o.aggregation;
      const auto p1 = run_pg<double>(be, a.c, a.c.lp, &g1, po);
      entropy_bonus_options eo;
      eo.beta = 0.05;
      eo.aggregation = o.aggregation;
      const auto e1 = entropy_bonus(be, cv(a.H, B, T), mk(a.c.m, B, T), mk(a.hm, B, T), mv(g2, B, T), eo);
      kl_loss_options ko;
      ko.coef = 0.2;
      ko.aggregation = o.aggregation;
      const auto k1 = kl_loss(be, cv(a.c.lp, B, T), cv(a.ref, B, T), mk(a.c.m, B, T), mv(g3, B, T), ko);
      CHECK(lt::close(r.total, p1.loss + e1.loss + k1.loss, 1e-12, 1e-14));
      CHECK(r.policy.metrics.clipped_high_tokens == p1.metrics.clipped_high_tokens);
      CHECK(r.entropy.metrics.filtered_tokens == e1.metrics.filtered_tokens);
      for (std::size_t i = 0; i < gl.size(); ++i) {
        CHECK(lt::close(gl[i], g1[i] + g3[i], 1e-13, 1e-16));
        CHECK(gh[i] == g2[i]);
      }
    }
  }
}

TEST_CASE("actor_objective gradients match central finite differences", "[actor][fd]") {
  cpu_backend be(1);
  const actor_case a = make_actor(77, 3, 5);
  for (int mode = 0; mode < lt::kModes; ++mode) {
    for (bool st : {false, true}) {
      auto o = actor_opts(mode);
      o.kl.straight_through = st;
      o.kl.estimator = st ? kl_estimator::k2 : kl_estimator::k3;  // straight-through k2 == k2
      std::vector<double> gl(a.c.lp.size()), gh(a.c.lp.size());
      run_actor(be, a, a.c.lp, a.H, &gl, &gh, o);
      const double h = 1e-6;
      for (std::size_t i = 0; i < a.c.lp.size(); ++i) {
        auto lp = a.c.lp;
        lp[i] += h;
        const double up = run_actor(be, a, lp, a.H, nullptr, nullptr, o).total;
        lp[i] -= 2 * h;
        const double dn = run_actor(be, a, lp, a.H, nullptr, nullptr, o).total;
        INFO("mode " << mode << " i " << i);
        CHECK(std::fabs((up - dn) / (2 * h) - gl[i]) <= 1e-7 * std::max(1.0, std::fabs(gl[i])));
        auto H = a.H;
        H[i] += h;
        const double hu = run_actor(be, a, a.c.lp, H, nullptr, nullptr, o).total;
        H[i] -= 2 * h;
        const double hd = run_actor(be, a, a.c.lp, H, nullptr, nullptr, o).total;
        CHECK(std::fabs((hu - hd) / (2 * h) - gh[i]) <= 1e-7 * std::max(1.0, std::fabs(gh[i])));
      }
    }
  }
}

TEST_CASE("micro-batch accumulation equals the full batch (policy_loss, actor_objective), every mode",
          "[policy_loss][actor][microbatch]") {
  cpu_backend be(1);
  const actor_case a = make_actor(55, 11, 13);
  const int B = a.c.B, T = a.c.T;
  const lref::norm gn = lref::local_norm(a.c.m, B, T);
  for (int mode = 0; mode < lt::kModes; ++mode) {
    const auto full_o = actor_opts(mode, lt::to_norm(gn));
    std::vector<double> gl(a.c.lp.size()), gh(a.c.lp.size());
    const auto full = run_actor(be, a, a.c.lp, a.H, &gl, &gh, full_o);
    // Local fallback on the full batch is the same thing.
    const auto local = run_actor(be, a, a.c.lp, a.H, nullptr, nullptr, actor_opts(mode));
    CHECK(local.total == full.total);
    std::vector<double> gp(a.c.lp.size());
    const auto full_pg = run_pg<double>(be, a.c, a.c.lp, &gp, pg_opts(mode, 3.0, lt::to_norm(gn)));
    for (int nmb = 1; nmb <= 4; ++nmb) {
      const auto sp = lt::split_points(B, nmb);
      // Global normaliser from summed local counts.
      loss_counts cnt;
      for (int j = 0; j < nmb; ++j) {
        const auto mj = lt::rows_of(a.c.m, T, sp[j], sp[j + 1]);
        cnt += count_loss_tokens(be, mk(mj, sp[j + 1] - sp[j], T));
      }
      const loss_normalizer g = cnt.normalizer();
      CHECK(g.tokens == gn.N);
      CHECK(g.sequences == gn.Bg);
      double tot = 0, pg_tot = 0;
      policy_loss_metrics pm;
      std::vector<double> agl, agh, agp;
      for (int j = 0; j < nmb; ++j) {
        const int r0 = sp[j], r1 = sp[j + 1], b = r1 - r0;
        actor_case s;
        s.c = {b, T, lt::rows_of(a.c.lp, T, r0, r1), lt::rows_of(a.c.olp, T, r0, r1), lt::rows_of(a.c.A, T, r0, r1),
               lt::rows_of(a.c.m, T, r0, r1), lt::rows_of(a.c.am, T, r0, r1)};
        s.H = lt::rows_of(a.H, T, r0, r1);
        s.ref = lt::rows_of(a.ref, T, r0, r1);
        s.hm = lt::rows_of(a.hm, T, r0, r1);
        std::vector<double> l1(s.H.size()), l2(s.H.size()), l3(s.H.size());
        tot += run_actor(be, s, s.c.lp, s.H, &l1, &l2, actor_opts(mode, g)).total;
        const auto pr = run_pg<double>(be, s.c, s.c.lp, &l3, pg_opts(mode, 3.0, g));
        pg_tot += pr.loss;
        pm += pr.metrics;
        agl.insert(agl.end(), l1.begin(), l1.end());
        agh.insert(agh.end(), l2.begin(), l2.end());
        agp.insert(agp.end(), l3.begin(), l3.end());
      }
      INFO("mode " << mode << " micro-batches " << nmb);
      CHECK(lt::close(tot, full.total, 1e-13, 1e-15));
      CHECK(lt::close(pg_tot, full_pg.loss, 1e-13, 1e-15));
      CHECK(lt::bit_equal(agl, gl));  // same weight per token: identical gradients
      CHECK(lt::bit_equal(agh, gh));
      CHECK(lt::bit_equal(agp, gp));
      CHECK(pm.clipped_tokens() == full_pg.metrics.clipped_tokens());
      CHECK(pm.valid_tokens == full_pg.metrics.valid_tokens);
      CHECK(pm.clip_fraction() == Approx(full_pg.metrics.clip_fraction()));
    }
  }
}

TEST_CASE("actor_objective: validation and optional parts", "[actor][errors]") {
  cpu_backend be(1);
  const actor_case a = make_actor(8, 3, 4);
  std::vector<double> gl(12, 3.0), gh(12, 3.0);
  const std::vector<double> s1 = gl;
  actor_objective_inputs<double> in{cv(a.c.lp, 3, 4), cv(a.c.olp, 3, 4), cv(a.c.A, 3, 4), mk(a.c.m, 3, 4),
                                    mk(a.c.am, 3, 4), {}, mk(a.hm, 3, 4), {}};
  const actor_objective_outputs<double> out{mv(gl, 3, 4), mv(gh, 3, 4)};
  actor_objective_options o;
  o.entropy_coef = 0.1;  // entropy missing
  CHECK_THROWS_AS(actor_objective(be, in, out, o), asyppo::error);
  o = {};
  o.kl_coef = 0.1;  // ref_logp missing
  CHECK_THROWS_AS(actor_objective(be, in, out, o), asyppo::error);
  o = {};
  o.entropy_coef = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_AS(actor_objective(be, in, out, o), asyppo::error);
  o = {};
  o.dual_clip = 0.9;
  CHECK_THROWS_AS(actor_objective(be, in, out, o), asyppo::error);
  o = {};
  in.entropy = cv(a.H, 3, 3);
  CHECK_THROWS_AS(actor_objective(be, in, out, o), asyppo::error);
  CHECK(lt::bit_equal(gl, s1));
  CHECK(lt::bit_equal(gh, s1));
  // Without entropy and KL the objective is the surrogate alone.
  in.entropy = {};
  const auto r = actor_objective(be, in, out, o);
  std::vector<double> gp(12);
  const auto p = run_pg<double>(be, a.c, a.c.lp, &gp, policy_loss_options{});
  CHECK(r.total == p.loss);
  CHECK(lt::bit_equal(gl, gp));
  CHECK(r.kl.metrics.valid_tokens == 0);
}
