// Tests of core/entropy.hpp (entropy bonus with the AsyPPO filter, logits helper) and core/kl.hpp
// (estimators, clamps, straight-through, loss and gradient) against plain references and central
// finite differences.
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

// ---- entropy bonus ----------------------------------------------------------------------------

TEMPLATE_TEST_CASE("entropy_bonus matches the reference, every mode", "[entropy]", float, double) {
  using T = TestType;
  cpu_backend be(1);
  std::mt19937_64 rng(17);
  for (int rep = 0; rep < 10; ++rep) {
    const int B = 1 + static_cast<int>(rng() % 8), Tn = 1 + static_cast<int>(rng() % 15);
    const std::size_t n = static_cast<std::size_t>(B) * Tn;
    const auto m = lref::random_mask(rng, B, Tn);
    const auto hm = lref::random_bits(rng, n, 0.7);
    const auto H = lref::random_vec(rng, n, 0.0, 5.0);
    const auto HT = lt::cast<T>(H);
    const auto Hr = lt::rounded<T>(H);
    for (int mode = 0; mode < lt::kModes; ++mode) {
      entropy_bonus_options o;
      o.beta = 0.03;
      o.aggregation = lt::mode_of(mode);
      std::vector<T> g(n, T(-5));
      const auto r = entropy_bonus(be, cv(HT, B, Tn), mk(m, B, Tn), mk(hm, B, Tn), mv(g, B, Tn), o);
      const auto ref = lref::entropy(Hr, m, hm, B, Tn, 0.03, mode, lref::local_norm(m, B, Tn));
      INFO("rep " << rep << " mode " << mode);
      CHECK(lt::close(r.loss, ref.loss, 1e-12, 1e-14));
      CHECK(lt::close(r.entropy, ref.agg, 1e-12, 1e-14));
      CHECK(lt::close(r.filtered_entropy, ref.filtered_agg, 1e-12, 1e-14));
      for (std::size_t i = 0; i < n; ++i) {
        CHECK(lt::close(static_cast<double>(g[i]), ref.grad[i], lt::grad_rtol<T>()));
        if (!m[i] || !hm[i]) CHECK(g[i] == T(0));
      }
      long valid = 0, filt = 0;
      for (std::size_t i = 0; i < n; ++i) valid += m[i] != 0, filt += (m[i] && !hm[i]);
      CHECK(r.metrics.valid_tokens == valid);
      CHECK(r.metrics.filtered_tokens == filt);
    }
  }
}

TEST_CASE("the entropy filter really changes the loss (AsyPPO code bug D6 not copied)", "[entropy]") {
  cpu_backend be(1);
  // Two tokens; the filtered one has high entropy.
  const std::vector<double> H = {1.0, 4.0, 2.0, 0.5};
  const lref::bytes m = {1, 1, 1, 1}, hm = {1, 0, 1, 1};
  entropy_bonus_options o;
  o.beta = 0.1;
  o.aggregation = loss_aggregation::token_mean;
  const auto filtered = entropy_bonus(be, cv(H, 1, 4), mk(m, 1, 4), mk(hm, 1, 4), token_view<double>{}, o);
  const auto plain = entropy_bonus(be, cv(H, 1, 4), mk(m, 1, 4), mask_view{}, token_view<double>{}, o);
  CHECK(plain.loss == Approx(-0.1 * 7.5 / 4));
  CHECK(filtered.loss == Approx(-0.1 * 3.5 / 4));  // the filtered token keeps its place in N = 4
  CHECK(filtered.loss != plain.loss);
  CHECK(filtered.entropy == plain.entropy);  // the unfiltered metric is the same
  CHECK(filtered.metrics.filtered_fraction() == 0.25);
  // The same through actor_objective.
  const std::vector<double> lp(4, -1.0), A(4, 0.0);
  actor_objective_inputs<double> in{cv(lp, 1, 4), cv(lp, 1, 4), cv(A, 1, 4), mk(m, 1, 4), {}, cv(H, 1, 4), mk(hm, 1, 4), {}};
  actor_objective_options ao;
  ao.entropy_coef = 0.1;
  ao.aggregation = loss_aggregation::token_mean;
  const auto a = actor_objective(be, in, {}, ao);
  CHECK(a.total == Approx(filtered.loss));
  in.entropy_mask = {};
  CHECK(actor_objective(be, in, {}, ao).total == Approx(plain.loss));
}

TEST_CASE("entropy_bonus: finite differences, zero entropy, micro-batches, validation", "[entropy]") {
  cpu_backend be(1);
  std::mt19937_64 rng(4);
  const int B = 6, Tn = 7;
  const std::size_t n = B * Tn;
  const auto m = lref::random_mask(rng, B, Tn);
  const auto hm = lref::random_bits(rng, n, 0.7);
  auto H = lref::random_vec(rng, n, 0.0, 3.0);
  for (int mode = 0; mode < lt::kModes; ++mode) {
    entropy_bonus_options o;
    o.beta = 0.2;
    o.aggregation = lt::mode_of(mode);
    std::vector<double> g(n);
    entropy_bonus(be, cv(H, B, Tn), mk(m, B, Tn), mk(hm, B, Tn), mv(g, B, Tn), o);
    for (std::size_t i = 0; i < n; ++i) {
      auto Hp = H;
      Hp[i] += 1e-6;
      const double up = entropy_bonus(be, cv(Hp, B, Tn), mk(m, B, Tn), mk(hm, B, Tn), token_view<double>{}, o).loss;
      Hp[i] -= 2e-6;
      const double dn = entropy_bonus(be, cv(Hp, B, Tn), mk(m, B, Tn), mk(hm, B, Tn), token_view<double>{}, o).loss;
      CHECK(std::fabs((up - dn) / 2e-6 - g[i]) <= 1e-8);
    }
    // Micro-batches with the global normaliser.
    const auto full = entropy_bonus(be, cv(H, B, Tn), mk(m, B, Tn), mk(hm, B, Tn), token_view<double>{}, o);
    for (int nmb = 1; nmb <= 4; ++nmb) {
      const auto sp = lt::split_points(B, nmb);
      loss_counts c;
      for (int j = 0; j < nmb; ++j)
        c += count_loss_tokens(be, mk(lt::rows_of(m, Tn, sp[j], sp[j + 1]), sp[j + 1] - sp[j], Tn));
      auto og = o;
      og.normalizer = c.normalizer();
      double s = 0;
      std::vector<double> ga;
      for (int j = 0; j < nmb; ++j) {
        const int b = sp[j + 1] - sp[j];
        const auto Hj = lt::rows_of(H, Tn, sp[j], sp[j + 1]);
        const auto mj = lt::rows_of(m, Tn, sp[j], sp[j + 1]);
        const auto hj = lt::rows_of(hm, Tn, sp[j], sp[j + 1]);
        std::vector<double> gj(Hj.size());
        s += entropy_bonus(be, cv(Hj, b, Tn), mk(mj, b, Tn), mk(hj, b, Tn), mv(gj, b, Tn), og).loss;
        ga.insert(ga.end(), gj.begin(), gj.end());
      }
      CHECK(lt::close(s, full.loss, 1e-13, 1e-15));
      CHECK(lt::bit_equal(ga, g));
    }
  }
  // Entropy 0 everywhere: loss 0, finite.
  const std::vector<double> Z(n, 0.0);
  const auto z = entropy_bonus(be, cv(Z, B, Tn), mk(m, B, Tn), mk(hm, B, Tn), token_view<double>{},
                               entropy_bonus_options{1.0, loss_aggregation::seq_mean_token_mean, {}, true});
  CHECK(z.loss == 0.0);
  CHECK(z.entropy == 0.0);
  // Validation.
  std::vector<double> g(n, 8.0);
  const auto sentinel = g;
  entropy_bonus_options bad;
  bad.beta = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_AS(entropy_bonus(be, cv(H, B, Tn), mk(m, B, Tn), mk(hm, B, Tn), mv(g, B, Tn), bad), asyppo::error);
  bad.beta = std::numeric_limits<double>::infinity();
  CHECK_THROWS_AS(entropy_bonus(be, cv(H, B, Tn), mk(m, B, Tn), mk(hm, B, Tn), mv(g, B, Tn), bad), asyppo::error);
  CHECK_THROWS_AS(entropy_bonus(be, cv(H, B, Tn), mk(m, B, Tn), mk(hm, Tn, B), mv(g, B, Tn)), asyppo::error);
  CHECK_THROWS_AS(entropy_bonus(be, cv(H, B, Tn), mk(m, B, Tn), mk(hm, B, Tn), mv(g, Tn, B)), asyppo::error);
  auto Hn = H;
  for (std::size_t i = 0; i < n; ++i)
    if (m[i]) {
      Hn[i] = std::numeric_limits<double>::quiet_NaN();
      break;
    }
  CHECK_THROWS_AS(entropy_bonus(be, cv(Hn, B, Tn), mk(m, B, Tn), mk(hm, B, Tn), mv(g, B, Tn)), asyppo::error);
  CHECK(lt::bit_equal(g, sentinel));
}

// ---- logits helper ----------------------------------------------------------------------------

TEMPLATE_TEST_CASE("logits_logp_entropy matches a plain softmax; backward matches finite differences", "[entropy][logits]",
                   float, double) {
  using T = TestType;
  cpu_backend be(1);
  std::mt19937_64 rng(31);
  for (double temp : {1.0, 0.7, 2.0}) {
    const int B = 3, Tn = 4, V = 6;
    const auto z = lref::random_vec(rng, static_cast<std::size_t>(B) * Tn * V, -4, 4);
    const auto zT = lt::cast<T>(z);
    const auto zr = lt::rounded<T>(z);
    std::vector<std::int64_t> y(B * Tn);
    for (auto& v : y) v = static_cast<std::int64_t>(rng() % V);
    lref::bytes m(B * Tn, 1);
    m[5] = 0;
    y[5] = -100;  // ignore-index style id on a masked position: not read
    std::vector<T> lp(B * Tn, T(9)), H(B * Tn, T(9));
    logits_options o;
    o.temperature = temp;
    const view<const T, 3> zv(zT.data(), B, Tn, V);
    const view<const std::int64_t, 2> yv(y.data(), B, Tn);
    logits_logp_entropy(be, zv, yv, mv(lp, B, Tn), mv(H, B, Tn), o, mk(m, B, Tn));
    lref::vec p;
    for (int i = 0; i < B * Tn; ++i) {
      if (!m[i]) {
        CHECK(lp[i] == T(0));
        CHECK(H[i] == T(0));
        continue;
      }
      double rl, rh;
      lref::logits_ref(zr.data() + i * V, V, y[i], temp, rl, rh, p);
      CHECK(lt::close(static_cast<double>(lp[i]), rl, sizeof(T) == 4 ? 1e-6 : 1e-13, 1e-13));
      CHECK(lt::close(static_cast<double>(H[i]), rh, sizeof(T) == 4 ? 1e-6 : 1e-13, 1e-13));
    }
    if constexpr (sizeof(T) == 8) {
      // Backward: L = sum gl * logp + gh * H, FD through the forward.
      const auto gl = lref::random_vec(rng, B * Tn, -1, 1), gh = lref::random_vec(rng, B * Tn, -1, 1);
      std::vector<double> gz(z.size(), 3.0);
      logits_logp_entropy_backward(be, zv, yv, cv(gl, B, Tn), cv(gh, B, Tn), view<double, 3>(gz.data(), B, Tn, V), o,
                                   mk(m, B, Tn));
      auto L = [&](const std::vector<double>& zz) {
        std::vector<double> a(B * Tn), b(B * Tn);
        logits_logp_entropy(be, view<const double, 3>(zz.data(), B, Tn, V), yv, mv(a, B, Tn), mv(b, B, Tn), o,
                            mk(m, B, Tn));
        double s = 0;
        for (int i = 0; i < B * Tn; ++i) s += gl[i] * a[i] + gh[i] * b[i];
        return s;
      };
      for (std::size_t j = 0; j < z.size(); ++j) {
        auto zz = z;
        zz[j] += 1e-6;
        const double up = L(zz);
        zz[j] -= 2e-6;
        const double dn = L(zz);
        CHECK(std::fabs((up - dn) / 2e-6 - gz[j]) <= 1e-7);
        if (!m[j / V]) CHECK(gz[j] == 0.0);
      }
    }
  }
}

TEST_CASE("logits helper: extreme logits stay finite; one-hot has zero entropy; validation", "[entropy][logits]") {
  cpu_backend be(1);
  const std::vector<double> z = {0, -1000, -1000, 1e4, 1e4 - 1, -1e4};
  const std::vector<std::int64_t> y = {0, 2};
  std::vector<double> lp(2), H(2);
  logits_logp_entropy(be, view<const double, 3>(z.data(), 1, 2, 3), view<const std::int64_t, 2>(y.data(), 1, 2),
                      mv(lp, 1, 2), mv(H, 1, 2));
  CHECK(lp[0] == 0.0);
  CHECK(H[0] == 0.0);
  CHECK(std::isfinite(lp[1]));
  CHECK(lp[1] < -1e4);
  CHECK(std::isfinite(H[1]));
  std::vector<double> gz(6);
  const std::vector<double> one = {1.0, 1.0};
  logits_logp_entropy_backward(be, view<const double, 3>(z.data(), 1, 2, 3), view<const std::int64_t, 2>(y.data(), 1, 2),
                               cv(one, 1, 2), cv(one, 1, 2), view<double, 3>(gz.data(), 1, 2, 3));
  for (double g : gz) CHECK(std::isfinite(g));
  // Validation: id out of range, bad temperature, NaN logits, shape mismatch; outputs untouched.
  std::vector<double> s(2, 5.0);
  const std::vector<std::int64_t> bad = {0, 3};
  CHECK_THROWS_AS(logits_logp_entropy(be, view<const double, 3>(z.data(), 1, 2, 3),
                                      view<const std::int64_t, 2>(bad.data(), 1, 2), mv(s, 1, 2), token_view<double>{}),
                  asyppo::error);
  logits_options o;
  o.temperature = 0;
  CHECK_THROWS_AS(logits_logp_entropy(be, view<const double, 3>(z.data(), 1, 2, 3),
                                      view<const std::int64_t, 2>(y.data(), 1, 2), mv(s, 1, 2), token_view<double>{}, o),
                  asyppo::error);
  auto zn = z;
  zn[4] = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_AS(logits_logp_entropy(be, view<const double, 3>(zn.data(), 1, 2, 3),
                                      view<const std::int64_t, 2>(y.data(), 1, 2), mv(s, 1, 2), token_view<double>{}),
                  asyppo::error);
  CHECK_THROWS_AS(logits_logp_entropy(be, view<const double, 3>(z.data(), 1, 2, 3),
                                      view<const std::int64_t, 2>(y.data(), 2, 1), mv(s, 1, 2), token_view<double>{}),
                  asyppo::error);
  CHECK(lt::bit_equal(s, std::vector<double>(2, 5.0)));
}

// ---- KL -----------------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("kl_values and kl_loss match the reference for every estimator and variant", "[kl]", float, double) {
  using T = TestType;
  cpu_backend be(1);
  std::mt19937_64 rng(8);
  const int B = 5, Tn = 9;
  const std::size_t n = B * Tn;
  const auto m = lref::random_mask(rng, B, Tn);
  const auto lp = lref::random_vec(rng, n, -6, 0);
  auto ref = lref::random_vec(rng, n, -6, 0);
  ref[0] = lp[0] + 30;  // k3 clamps (input and output)
  ref[1] = lp[1] - 25;
  ref[2] = lp[2] + 3;   // output clamp only
  const auto lpT = lt::cast<T>(lp), refT = lt::cast<T>(ref);
  const auto lpr = lt::rounded<T>(lp), refr = lt::rounded<T>(ref);
  const kl_estimator ests[4] = {kl_estimator::k1, kl_estimator::abs, kl_estimator::k2, kl_estimator::k3};
  for (int e = 0; e < 4; ++e) {
    for (bool st : {false, true}) {
      for (bool clamp : {true, false}) {
        kl_options ko{ests[e], st, clamp};
        std::vector<T> vals(n, T(4));
        kl_values(be, cv(lpT, B, Tn), cv(refT, B, Tn), mk(m, B, Tn), mv(vals, B, Tn), ko);
        lref::vec rv(n, 0.0), rg(n, 0.0);
        for (std::size_t i = 0; i < n; ++i) {
          const auto k = lref::kl_token(lpr[i], refr[i], e, st, clamp);
          if (m[i]) rv[i] = k.first, rg[i] = k.second;
        }
        for (std::size_t i = 0; i < n; ++i) CHECK(lt::close(static_cast<double>(vals[i]), rv[i], lt::grad_rtol<T>(), 1e-30));
        for (int mode = 0; mode < lt::kModes; ++mode) {
          kl_loss_options lo;
          lo.kl = ko;
          lo.coef = 0.3;
          lo.aggregation = lt::mode_of(mode);
          std::vector<T> g(n, T(4));
          const auto r = kl_loss(be, cv(lpT, B, Tn), cv(refT, B, Tn), mk(m, B, Tn), mv(g, B, Tn), lo);
          const auto nn = lref::local_norm(m, B, Tn);
          const auto w = lref::aggregate_grad(m, B, Tn, mode, nn);
          INFO("est " << e << " st " << st << " clamp " << clamp << " mode " << mode);
          CHECK(lt::close(r.kl, lref::aggregate(rv, m, B, Tn, mode, nn), 1e-12, 1e-12));
          CHECK(lt::close(r.loss, 0.3 * r.kl, 1e-15));
          for (std::size_t i = 0; i < n; ++i) {
            CHECK(lt::close(static_cast<double>(g[i]), 0.3 * w[i] * rg[i], lt::grad_rtol<T>(), 1e-30));
            if (!m[i]) CHECK(g[i] == T(0));
          }
        }
      }
    }
  }
}

TEST_CASE("kl: hand values, clamps, straight-through, finite differences", "[kl]") {
  cpu_backend be(1);
  auto tok = [&](double delta, kl_options o) {
    const double lp = delta, ref = 0.0;
    const std::uint8_t m = 1;
    kl_loss_options lo;
    lo.kl = o;
    lo.aggregation = loss_aggregation::token_sum;
    double g = 0;
    const auto r = kl_loss(be, token_view<const double>(&lp, 1, 1), token_view<const double>(&ref, 1, 1),
                           mask_view(&m, 1, 1), token_view<double>(&g, 1, 1), lo);
    return std::pair<double, double>(r.loss, g);
  };
  const kl_options k1{kl_estimator::k1, false, true}, ab{kl_estimator::abs, false, true},
      k2{kl_estimator::k2, false, true}, k3{kl_estimator::k3, false, true};
  CHECK(tok(0.5, k1) == std::pair<double, double>(0.5, 1.0));
  CHECK(tok(-0.5, ab) == std::pair<double, double>(0.5, -1.0));
  CHECK(tok(0.0, ab).second == 0.0);
  CHECK(tok(0.5, k2) == std::pair<double, double>(0.125, 0.5));
  CHECK(tok(0.5, k3).first == Approx(std::exp(-0.5) - 1 + 0.5));
  CHECK(tok(0.5, k3).second == Approx(1 - std::exp(-0.5)));
  // Clamps: output clamp at 10 (delta = -3: e^3 - 4 > 10), input clamp (|delta| > 20).
  CHECK(tok(-3.0, k3) == std::pair<double, double>(10.0, 0.0));
  CHECK(tok(-2.5, k3).first == Approx(std::exp(2.5) - 3.5));
  CHECK(tok(-2.5, k3).second == Approx(1 - std::exp(2.5)));
  CHECK(tok(-50.0, k3) == std::pair<double, double>(10.0, 0.0));
  CHECK(tok(50.0, k3) == std::pair<double, double>(10.0, 0.0));
  const kl_options k3n{kl_estimator::k3, false, false};
  CHECK(tok(-50.0, k3n).first == Approx(std::exp(50.0) - 51));
  CHECK(std::isfinite(tok(-50.0, k3n).second));
  // Straight-through: value of the estimator, gradient delta.
  const kl_options k3p{kl_estimator::k3, true, true}, k1p{kl_estimator::k1, true, true};
  CHECK(tok(-3.0, k3p) == std::pair<double, double>(10.0, -3.0));
  CHECK(tok(0.7, k1p) == std::pair<double, double>(0.7, 0.7));
  // Names.
  CHECK(parse_kl_estimator("low_var_kl").estimator == kl_estimator::k3);
  CHECK(parse_kl_estimator("k3+").straight_through);
  CHECK(parse_kl_estimator("mse").estimator == kl_estimator::k2);
  CHECK(parse_kl_estimator("kl").estimator == kl_estimator::k1);
  CHECK(parse_kl_estimator("abs+").estimator == kl_estimator::abs);
  CHECK_THROWS_AS(parse_kl_estimator("full"), asyppo::error);
  // FD for the non-straight-through estimators (random deltas, away from kinks and clamps).
  std::mt19937_64 rng(12);
  const int B = 3, Tn = 5;
  const auto m = lref::random_mask(rng, B, Tn, false);
  const auto lp = lref::random_vec(rng, B * Tn, -3, -1), ref = lref::random_vec(rng, B * Tn, -3, -1);
  for (auto est : {kl_estimator::k1, kl_estimator::abs, kl_estimator::k2, kl_estimator::k3}) {
    for (int mode = 0; mode < lt::kModes; ++mode) {
      kl_loss_options lo;
      lo.kl.estimator = est;
      lo.coef = 0.7;
      lo.aggregation = lt::mode_of(mode);
      std::vector<double> g(B * Tn);
      kl_loss(be, cv(lp, B, Tn), cv(ref, B, Tn), mk(m, B, Tn), mv(g, B, Tn), lo);
      for (int i = 0; i < B * Tn; ++i) {
        auto x = lp;
        x[i] += 1e-6;
        const double up = kl_loss(be, cv(x, B, Tn), cv(ref, B, Tn), mk(m, B, Tn), token_view<double>{}, lo).loss;
        x[i] -= 2e-6;
        const double dn = kl_loss(be, cv(x, B, Tn), cv(ref, B, Tn), mk(m, B, Tn), token_view<double>{}, lo).loss;
        CHECK(std::fabs((up - dn) / 2e-6 - g[i]) <= 1e-7 * std::max(1.0, std::fabs(g[i])));
      }
    }
  }
}

TEST_CASE("kl_loss: micro-batches, validation, threads", "[kl]") {
  cpu_backend be(1), be2(2);
  std::mt19937_64 rng(19);
  const int B = 9, Tn = 11;
  const auto m = lref::random_mask(rng, B, Tn);
  const auto lp = lref::random_vec(rng, B * Tn, -3, 0), ref = lref::random_vec(rng, B * Tn, -3, 0);
  for (int mode = 0; mode < lt::kModes; ++mode) {
    kl_loss_options lo;
    lo.coef = 0.5;
    lo.aggregation = lt::mode_of(mode);
    std::vector<double> g(B * Tn);
    const auto full = kl_loss(be, cv(lp, B, Tn), cv(ref, B, Tn), mk(m, B, Tn), mv(g, B, Tn), lo);
    for (int nmb = 1; nmb <= 4; ++nmb) {
      const auto sp = lt::split_points(B, nmb);
      loss_counts c;
      for (int j = 0; j < nmb; ++j)
        c += count_loss_tokens(be, mk(lt::rows_of(m, Tn, sp[j], sp[j + 1]), sp[j + 1] - sp[j], Tn));
      auto og = lo;
      og.normalizer = c.normalizer();
      double s = 0;
      kl_metrics km;
      std::vector<double> ga;
      for (int j = 0; j < nmb; ++j) {
        const int b = sp[j + 1] - sp[j];
        const auto lj = lt::rows_of(lp, Tn, sp[j], sp[j + 1]), rj = lt::rows_of(ref, Tn, sp[j], sp[j + 1]);
        const auto mj = lt::rows_of(m, Tn, sp[j], sp[j + 1]);
        std::vector<double> gj(lj.size());
        const auto r = kl_loss(be, cv(lj, b, Tn), cv(rj, b, Tn), mk(mj, b, Tn), mv(gj, b, Tn), og);
        s += r.loss;
        km += r.metrics;
        ga.insert(ga.end(), gj.begin(), gj.end());
      }
      CHECK(lt::close(s, full.loss, 1e-13, 1e-15));
      CHECK(lt::bit_equal(ga, g));
      CHECK(km.valid_tokens == full.metrics.valid_tokens);
      CHECK(km.mean() == Approx(full.metrics.mean()));
    }
  }
  // Validation.
  std::vector<double> g(B * Tn, 6.0);
  const auto sentinel = g;
  kl_loss_options bad;
  bad.coef = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_AS(kl_loss(be, cv(lp, B, Tn), cv(ref, B, Tn), mk(m, B, Tn), mv(g, B, Tn), bad), asyppo::error);
  CHECK_THROWS_AS(kl_loss(be, cv(lp, B, Tn), cv(ref, Tn, B), mk(m, B, Tn), mv(g, B, Tn)), asyppo::error);
  bad = {};
  bad.kl.estimator = static_cast<kl_estimator>(9);
  CHECK_THROWS_AS(kl_loss(be, cv(lp, B, Tn), cv(ref, B, Tn), mk(m, B, Tn), mv(g, B, Tn), bad), asyppo::error);
  CHECK_THROWS_AS(kl_values(be, cv(lp, B, Tn), cv(ref, B, Tn), mk(m, B, Tn), mv(g, Tn, B)), asyppo::error);
  CHECK(lt::bit_equal(g, sentinel));
  // Threads: bit-identical.
  const int BB = 40, TT = 500;
  const auto m2 = lref::random_mask(rng, BB, TT);
  const auto a = lref::random_vec(rng, BB * TT, -3, 0), r2 = lref::random_vec(rng, BB * TT, -3, 0);
  std::vector<double> g1(BB * TT), g2(BB * TT);
  const auto x1 = kl_loss(be, cv(a, BB, TT), cv(r2, BB, TT), mk(m2, BB, TT), mv(g1, BB, TT));
  const auto x2 = kl_loss(be2, cv(a, BB, TT), cv(r2, BB, TT), mk(m2, BB, TT), mv(g2, BB, TT));
  CHECK(std::memcmp(&x1.loss, &x2.loss, sizeof(double)) == 0);
  CHECK(lt::bit_equal(g1, g2));
  const auto hm = lref::random_bits(rng, BB * TT, 0.8);
  const auto e1 = entropy_bonus(be, cv(a, BB, TT), mk(m2, BB, TT), mk(hm, BB, TT), mv(g1, BB, TT),
                                entropy_bonus_options{0.01, loss_aggregation::token_mean, {}, false});
  const auto e2 = entropy_bonus(be2, cv(a, BB, TT), mk(m2, BB, TT), mk(hm, BB, TT), mv(g2, BB, TT),
                                entropy_bonus_options{0.01, loss_aggregation::token_mean, {}, false});
  CHECK(std::memcmp(&e1.loss, &e2.loss, sizeof(double)) == 0);
  CHECK(lt::bit_equal(g1, g2));
}
