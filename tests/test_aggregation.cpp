// Tests of core/aggregation.hpp: every mode against the plain formulas, the per-token weights
// (the gradient of Agg), local counts, the global normaliser and micro-batch accumulation, the
// documented pitfalls, and validation.
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

TEST_CASE("loss_aggregation names round-trip (verl spelling)", "[aggregation]") {
  for (int i = 0; i < lt::kModes; ++i) CHECK(parse_loss_aggregation(to_string(lt::mode_of(i))) == lt::mode_of(i));
  CHECK(std::string(to_string(loss_aggregation::seq_mean_token_sum_norm)) == "seq-mean-token-sum-norm");
  CHECK_THROWS_AS(parse_loss_aggregation("seq-mean"), asyppo::error);
}

TEMPLATE_TEST_CASE("aggregate_loss matches the formulas of every mode; weights are dAgg/dl", "[aggregation]", float,
                   double) {
  using T = TestType;
  cpu_backend be(1);
  std::mt19937_64 rng(2024);
  for (int rep = 0; rep < 20; ++rep) {
    const int B = 1 + static_cast<int>(rng() % 10), Tn = 1 + static_cast<int>(rng() % 20);
    const auto m = lref::random_mask(rng, B, Tn);
    const auto l = lref::random_vec(rng, static_cast<std::size_t>(B) * Tn, -3, 5);
    const auto lT = lt::cast<T>(l);
    const auto lr = lt::rounded<T>(l);
    for (int mode = 0; mode < lt::kModes; ++mode) {
      for (int explicit_norm = 0; explicit_norm < 2; ++explicit_norm) {
        lref::norm n = lref::local_norm(m, B, Tn);
        loss_normalizer norm{};
        if (explicit_norm) {  // a bigger "global" batch
          n = {n.N + 17, n.Bg + 3, 2.0 * Tn + 1};
          norm = lt::to_norm(n);
        }
        std::vector<T> w(l.size(), T(-9));
        const auto r = aggregate_loss(be, cv(lT, B, Tn), mk(m, B, Tn), lt::mode_of(mode), norm, mv(w, B, Tn));
        const auto g = lref::aggregate_grad(m, B, Tn, mode, n);
        INFO("rep " << rep << " mode " << mode << " explicit " << explicit_norm);
        CHECK(lt::close(r.loss, lref::aggregate(lr, m, B, Tn, mode, n), 1e-13, 1e-13));
        CHECK(r.normalizer.tokens == n.N);
        CHECK(r.normalizer.sequences == n.Bg);
        CHECK(r.normalizer.norm_length == n.Ln);
        for (std::size_t i = 0; i < w.size(); ++i) {
          CHECK(lt::close(static_cast<double>(w[i]), g[i], lt::grad_rtol<T>()));
          if (!m[i]) CHECK(w[i] == T(0));
        }
      }
    }
  }
}

TEST_CASE("count_loss_tokens counts valid tokens, non-empty and all rows; counts add up", "[aggregation]") {
  cpu_backend be(1);
  const lref::bytes m = {1, 1, 0, 0,   // row 0: 2 tokens
                         0, 0, 0, 0,   // row 1: empty
                         0, 1, 0, 1};  // row 2: 2 tokens (holes)
  const auto c = count_loss_tokens(be, mk(m, 3, 4));
  CHECK(c.tokens == 4);
  CHECK(c.sequences == 2);
  CHECK(c.rows == 3);
  CHECK(c.length == 4);
  CHECK(c.normalizer().sequences == 2);
  CHECK(c.normalizer(true).sequences == 3);  // verl's B_global counts fully-masked rows
  auto a = count_loss_tokens(be, mk(lt::rows_of(m, 4, 0, 1), 1, 4));
  a += count_loss_tokens(be, mk(lt::rows_of(m, 4, 1, 3), 2, 4));
  CHECK(a.tokens == c.tokens);
  CHECK(a.sequences == c.sequences);
  CHECK(a.rows == c.rows);
  // seq-mean-token-mean with the verl constant divides by 3, the local fallback by 2.
  const std::vector<double> l = {1, 3, 0, 0, 5, 5, 5, 5, 0, 2, 0, 4};
  CHECK(aggregate_loss(be, cv(l, 3, 4), mk(m, 3, 4), loss_aggregation::seq_mean_token_mean).loss == Approx((2.0 + 3.0) / 2));
  CHECK(aggregate_loss(be, cv(l, 3, 4), mk(m, 3, 4), loss_aggregation::seq_mean_token_mean, c.normalizer(true)).loss ==
        Approx((2.0 + 3.0) / 3));
  CHECK(aggregate_loss(be, cv(l, 3, 4), mk(m, 3, 4), loss_aggregation::token_mean).loss == Approx(10.0 / 4));
  CHECK(aggregate_loss(be, cv(l, 3, 4), mk(m, 3, 4), loss_aggregation::token_sum).loss == Approx(10.0));
  CHECK(aggregate_loss(be, cv(l, 3, 4), mk(m, 3, 4), loss_aggregation::seq_mean_token_sum).loss == Approx(10.0 / 2));
  CHECK(aggregate_loss(be, cv(l, 3, 4), mk(m, 3, 4), loss_aggregation::seq_mean_token_sum_norm).loss ==
        Approx(10.0 / (2 * 4)));
  CHECK(resolve_loss_normalizer(be, mk(m, 3, 4), loss_aggregation::token_mean).tokens == 4);
}

TEST_CASE("micro-batch accumulation with the global normaliser equals the full batch, every mode",
          "[aggregation][microbatch]") {
  cpu_backend be(1);
  std::mt19937_64 rng(99);
  for (int rep = 0; rep < 5; ++rep) {
    const int B = 4 + static_cast<int>(rng() % 9), Tn = 3 + static_cast<int>(rng() % 12);
    const auto m = lref::random_mask(rng, B, Tn);
    const auto l = lref::random_vec(rng, static_cast<std::size_t>(B) * Tn, -2, 2);
    for (int mode = 0; mode < lt::kModes; ++mode) {
      std::vector<double> wf(l.size());
      const auto full = aggregate_loss(be, cv(l, B, Tn), mk(m, B, Tn), lt::mode_of(mode), {}, mv(wf, B, Tn));
      for (int nmb = 1; nmb <= 4; ++nmb) {
        const auto sp = lt::split_points(B, nmb);
        loss_counts cnt;
        for (int j = 0; j < nmb; ++j)
          cnt += count_loss_tokens(be, mk(lt::rows_of(m, Tn, sp[j], sp[j + 1]), sp[j + 1] - sp[j], Tn));
        double sum = 0, local_sum = 0;
        std::vector<double> w;
        for (int j = 0; j < nmb; ++j) {
          const int b = sp[j + 1] - sp[j];
          const auto mj = lt::rows_of(m, Tn, sp[j], sp[j + 1]);
          const auto lj = lt::rows_of(l, Tn, sp[j], sp[j + 1]);
          std::vector<double> wj(lj.size());
          sum += aggregate_loss(be, cv(lj, b, Tn), mk(mj, b, Tn), lt::mode_of(mode), cnt.normalizer(), mv(wj, b, Tn)).loss;
          local_sum += aggregate_loss(be, cv(lj, b, Tn), mk(mj, b, Tn), lt::mode_of(mode)).loss / nmb;
          w.insert(w.end(), wj.begin(), wj.end());
        }
        INFO("rep " << rep << " mode " << mode << " nmb " << nmb);
        CHECK(lt::close(sum, full.loss, 1e-13, 1e-14));
        CHECK(lt::bit_equal(w, wf));
        (void)local_sum;
      }
    }
  }
}

TEST_CASE("the pitfalls: a mean of micro-batch means is not the batch mean", "[aggregation][microbatch]") {
  cpu_backend be(1);
  // Row 0 has 4 tokens of loss 1, row 1 has 1 token of loss 3.
  const lref::bytes m = {1, 1, 1, 1, 1, 0, 0, 0};
  const std::vector<double> l = {1, 1, 1, 1, 3, 0, 0, 0};
  const double full = aggregate_loss(be, cv(l, 2, 4), mk(m, 2, 4), loss_aggregation::token_mean).loss;
  CHECK(full == Approx(7.0 / 5));
  const double a = aggregate_loss(be, cv(lt::rows_of(l, 4, 0, 1), 1, 4), mk(lt::rows_of(m, 4, 0, 1), 1, 4),
                                  loss_aggregation::token_mean).loss;
  const double b = aggregate_loss(be, cv(lt::rows_of(l, 4, 1, 2), 1, 4), mk(lt::rows_of(m, 4, 1, 2), 1, 4),
                                  loss_aggregation::token_mean).loss;
  CHECK((a + b) / 2 == Approx(2.0));  // mean of means: wrong
  loss_normalizer g{5, 2, 4};
  const double ga = aggregate_loss(be, cv(lt::rows_of(l, 4, 0, 1), 1, 4), mk(lt::rows_of(m, 4, 0, 1), 1, 4),
                                   loss_aggregation::token_mean, g).loss;
  const double gb = aggregate_loss(be, cv(lt::rows_of(l, 4, 1, 2), 1, 4), mk(lt::rows_of(m, 4, 1, 2), 1, 4),
                                   loss_aggregation::token_mean, g).loss;
  CHECK(ga + gb == Approx(full));  // global normaliser, summed: right
}

TEST_CASE("aggregate_loss: validation leaves outputs untouched; empty inputs are fine", "[aggregation][errors]") {
  cpu_backend be(1);
  const lref::bytes m = {1, 1, 0, 1, 0, 0};
  const std::vector<double> l = {1, 2, 3, 4, 5, 6};
  const std::vector<double> sentinel(6, 42.0);
  auto expect_throw = [&](loss_aggregation mode, loss_normalizer n, int B = 2, int T = 3) {
    std::vector<double> w = sentinel;
    CHECK_THROWS_AS(aggregate_loss(be, cv(l, 2, 3), mk(m, B, T), mode, n, mv(w, 2, 3)), asyppo::error);
    CHECK(lt::bit_equal(w, sentinel));
  };
  expect_throw(loss_aggregation::token_mean, {2, -1, -1});  // 3 local tokens
  expect_throw(loss_aggregation::seq_mean_token_mean, {-1, 1, -1});  // 2 local sequences
  expect_throw(loss_aggregation::seq_mean_token_sum_norm, {-1, -1, 0});
  expect_throw(loss_aggregation::token_mean, {std::numeric_limits<double>::quiet_NaN(), -1, -1});
  expect_throw(loss_aggregation::token_sum, {-1, std::numeric_limits<double>::infinity(), -1});
  expect_throw(static_cast<loss_aggregation>(17), {});
  expect_throw(loss_aggregation::token_mean, {}, 3, 2);  // mask shape
  {
    std::vector<double> w = sentinel;
    CHECK_THROWS_AS(aggregate_loss(be, cv(l, 2, 3), mask_view{}, loss_aggregation::token_mean, {}, mv(w, 2, 3)),
                    asyppo::error);
    auto bad = l;
    bad[1] = std::numeric_limits<double>::quiet_NaN();
    CHECK_THROWS_AS(aggregate_loss(be, cv(bad, 2, 3), mk(m, 2, 3), loss_aggregation::token_mean, {}, mv(w, 2, 3)),
                    asyppo::error);
    bad[1] = 2;
    bad[2] = std::numeric_limits<double>::quiet_NaN();  // masked: ignored
    CHECK(aggregate_loss(be, cv(bad, 2, 3), mk(m, 2, 3), loss_aggregation::token_mean).loss == Approx(7.0 / 3));
    CHECK(lt::bit_equal(w, sentinel));
  }
  // Unused fields are not checked against the counts (token_sum ignores tokens).
  CHECK(aggregate_loss(be, cv(l, 2, 3), mk(m, 2, 3), loss_aggregation::token_sum, {1, 0, 0}).loss == Approx(7.0));
  // A fully masked call: weights 0, loss 0, explicit zero counts allowed.
  const lref::bytes z(6, 0);
  for (int mode = 0; mode < lt::kModes; ++mode) {
    std::vector<double> w = sentinel;
    const auto r = aggregate_loss(be, cv(l, 2, 3), mk(z, 2, 3), lt::mode_of(mode), {0, 0, 3}, mv(w, 2, 3));
    CHECK(r.loss == 0.0);
    for (double x : w) CHECK(x == 0.0);
    CHECK(aggregate_loss(be, cv(l, 2, 3), mk(z, 2, 3), lt::mode_of(mode)).loss == 0.0);
  }
  // B = 0 and T = 0.
  CHECK(aggregate_loss(be, token_view<const double>(nullptr, 0, 5), mask_view(nullptr, 0, 5),
                       loss_aggregation::token_mean).loss == 0.0);
  CHECK(aggregate_loss(be, token_view<const double>(nullptr, 3, 0), mask_view(nullptr, 3, 0),
                       loss_aggregation::seq_mean_token_mean).loss == 0.0);
  CHECK(count_loss_tokens(be, mask_view(nullptr, 3, 0)).rows == 3);
}

TEST_CASE("aggregate_loss is bit-identical for 1 and 2 threads", "[aggregation][determinism]") {
  cpu_backend be1(1), be2(2);
  std::mt19937_64 rng(5);
  const int B = 64, Tn = 600;
  const auto m = lref::random_mask(rng, B, Tn);
  const auto l = lref::random_vec(rng, static_cast<std::size_t>(B) * Tn, -1, 1);
  for (int mode = 0; mode < lt::kModes; ++mode) {
    std::vector<double> w1(l.size()), w2(l.size());
    const auto r1 = aggregate_loss(be1, cv(l, B, Tn), mk(m, B, Tn), lt::mode_of(mode), {}, mv(w1, B, Tn));
    const auto r2 = aggregate_loss(be2, cv(l, B, Tn), mk(m, B, Tn), lt::mode_of(mode), {}, mv(w2, B, Tn));
    CHECK(std::memcmp(&r1.loss, &r2.loss, sizeof(double)) == 0);
    CHECK(lt::bit_equal(w1, w2));
  }
}
