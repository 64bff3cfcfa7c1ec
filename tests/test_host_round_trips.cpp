// Host round trips (docs/architecture.md, "The CUDA backend"): on a device backend every reduce, collect
// and copy_to_host waits for the stream, and an entry point that makes none can be captured in a CUDA
// graph. round_trip_backend (the CPU backend posing as a device backend: host_memory = false) counts
// them and runs the algorithms' device paths (temporaries through allocate, results through
// copy_to_host) in CI. Checked here: (1) the device paths give the CPU backend's results, through the
// same conformance bodies as the Thrust and tiled backends; (2) the entry points documented as free of
// round trips make none (and the counter does count: the same calls with their checks on make some).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <type_traits>
#include <vector>

#include "asyppo/asyppo.hpp"
#include "backend_conformance.hpp"
#include "round_trip_backend.hpp"

using namespace asyppo;
using asyppo_test::round_trip_backend;

namespace {
const auto make_round_trip = [](std::uint64_t seed) { return round_trip_backend(1 + static_cast<int>(seed % 2)); };

std::vector<double> random_vec(std::mt19937_64& rng, std::size_t n) {
  std::uniform_real_distribution<double> u(-1, 1);
  std::vector<double> v(n);
  for (auto& x : v) x = u(rng);
  return v;
}
}  // namespace

static_assert(!detail::host_memory_backend<round_trip_backend>, "posing as a device backend");

TEMPLATE_TEST_CASE("device paths on the CPU: advantage_step against the CPU backend", "[round_trips][conformance]", float,
                   double) {
  asyppo_conformance::conformance_advantage_step<TestType>(make_round_trip);
}

TEMPLATE_TEST_CASE("device paths on the CPU: baselines, whitening and returns against the CPU backend",
                   "[round_trips][conformance]", float, double) {
  asyppo_conformance::conformance_baselines<TestType>(make_round_trip);
}

TEMPLATE_TEST_CASE("device paths on the CPU: losses against the CPU backend", "[round_trips][conformance]", float,
                   double) {
  asyppo_conformance::conformance_losses<TestType>(make_round_trip);
}

TEMPLATE_TEST_CASE("device paths on the CPU: critic heads against the CPU backend", "[round_trips][conformance]", float,
                   double) {
  asyppo_conformance::conformance_critic_heads<TestType>(make_round_trip);
}

TEST_CASE("entry points without host round trips (CUDA-graph capturable) make none", "[round_trips]") {
  const int K = 2, B = 5, Tn = 40, N = B * Tn, D = 12;
  std::mt19937_64 rng(3);
  const auto V = random_vec(rng, static_cast<std::size_t>(K) * N), r = random_vec(rng, N);
  const auto h = random_vec(rng, static_cast<std::size_t>(K) * N * D), w = random_vec(rng, static_cast<std::size_t>(K) * D),
             c = random_vec(rng, K), g = random_vec(rng, static_cast<std::size_t>(K) * N);
  std::vector<std::uint8_t> m(static_cast<std::size_t>(N));
  for (int i = 0; i < N; ++i) m[static_cast<std::size_t>(i)] = (i % Tn) < 30 - 4 * (i / Tn) ? 1 : 0;
  const critic_view<const double> values(V.data(), K, B, Tn);
  const token_view<const double> rewards(r.data(), B, Tn);
  const mask_view mask(m.data(), B, Tn);
  std::vector<double> a(static_cast<std::size_t>(N)), ret(a.size()), sd(a.size()), mean(a.size());
  std::vector<double> v(static_cast<std::size_t>(K) * N), dw(w.size()), dc(c.size()), dh(h.size());
  const view<const double, 3> hv(h.data(), K, N, D);
  const view<const double, 2> wv(w.data(), K, D), gv(g.data(), K, N);

  for (bool checks : {false, true}) {
    CAPTURE(checks);
    const round_trip_backend be(2);
    auto trips = [&](auto&& call) {
      be.reset();
      call();
      return be.round_trips();
    };
    gae_options go;
    go.check_finite = checks;
    go.adaptive_lambda_alpha = 0.05;  // the per-row lengths stay on the device too
    const int t_gae = trips([&] {
      gae(be, values, rewards, mask, go, gae_outputs<double>{{a.data(), B, Tn}, {ret.data(), B, Tn}, {sd.data(), B, Tn}});
    });
    const int t_ens = trips([&] {
      ensemble_stats(be, values, mask, ensemble_outputs<double>{{mean.data(), B, Tn}, {sd.data(), B, Tn}},
                     std_kind::population, checks);
    });
    critic_heads_options ho;
    ho.check_finite = checks;
    const int t_fwd = trips([&] {
      critic_heads_forward(be, hv, wv, seq_view<const double>(c.data(), K), view<double, 2>(v.data(), K, N), ho);
    });
    const int t_bwd = trips([&] {
      critic_heads_backward(be, hv, wv, gv,
                            critic_head_gradients<double>{{dw.data(), K, D}, {dc.data(), K}, {dh.data(), K, N, D}}, ho);
    });
    std::vector<std::uint8_t> am(m.size()), em(m.size());
    std::vector<mask_counts> mc(1);
    std::vector<advantage_step_result> res(1);
    std::vector<double> ev(static_cast<std::size_t>(K)), shards(static_cast<std::size_t>(K) * B);
    const std::vector<std::int64_t> ids = {0, 0, 1, 1, 2};
    int t_masks = 0, t_step = 0, t_eager = 0;
    for (auto scope : {mask_scope::batch, mask_scope::sequence}) {
      mask_options mo;
      mo.check_finite = checks;
      mo.scope = scope;
      t_masks += trips([&] {
        uncertainty_masks_to(be, token_view<const double>(r.data(), B, Tn), mask, mask_out(am.data(), B, Tn),
                             mask_out(em.data(), B, Tn), mc.data(), mo);
      });
      advantage_config ac;
      ac.check_finite = checks;
      ac.scope = scope;
      ac.whiten_advantages = true;
      t_step += trips([&] {
        advantage_step_to(be, advantage_inputs<double>{values, rewards, mask, seq_view<const std::int64_t>(ids.data(), B)},
                          advantage_outputs<double>{{a.data(), B, Tn}, {ret.data(), B, Tn}, {am.data(), B, Tn},
                                                    {em.data(), B, Tn}, {shards.data(), K, B}},
                          res.data(), ev.data(), ac);
      });
      // advantage_step on a device takes the same resident path, then reads the summary (one wait)
      // and, with statistics, the explained variances (one more).
      for (bool stats : {false, true}) {
        ac.statistics = stats;
        t_eager += trips([&] {
          advantage_step(be, advantage_inputs<double>{values, rewards, mask, seq_view<const std::int64_t>(ids.data(), B)},
                         advantage_outputs<double>{{a.data(), B, Tn}, {ret.data(), B, Tn}, {am.data(), B, Tn},
                                                   {em.data(), B, Tn}, {shards.data(), K, B}},
                         ac);
        });
      }
    }
    const int t_shards = trips([&] {  // one process: the layout's sort and scan, no group counts on the host
      shard_weights(be, seq_view<const std::int64_t>(ids.data(), B), K, view<double, 2>(shards.data(), K, B));
    });
    CHECK(t_shards == 0);
    if (checks) {  // each finiteness check is one reduce (or one copy of the row tallies)
      CHECK(t_gae == 1);
      CHECK(t_ens == 1);
      CHECK(t_fwd == 2);
      CHECK(t_bwd == 2);
      CHECK(t_masks == 2);
      CHECK(t_step == 2);
      CHECK(t_eager == 2 * ((1 + 1) + (1 + 2)));  // two scopes x (statistics off: check + summary, on: + EV)
    } else {
      CHECK(t_gae == 0);
      CHECK(t_ens == 0);
      CHECK(t_fwd == 0);
      CHECK(t_bwd == 0);
      CHECK(t_masks == 0);
      CHECK(t_step == 0);
      CHECK(t_eager == 2 * (1 + 2));  // the summary (+ EV)
    }
  }
}

namespace {
/// A 7 x 90 batch of the actor's inputs (row lengths 80 down to 26; I^A and I^H with holes) for the
/// device-result tests of the losses.
template <class T>
struct actor_batch {
  static constexpr int B = 7, Tn = 90, N = B * Tn;
  std::vector<T> lp, olp, adv, H, ref;
  std::vector<std::uint8_t> m, am, em;
  explicit actor_batch(std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    auto vec = [&](double scale) {
      std::vector<T> v(static_cast<std::size_t>(N));
      for (auto& x : v) x = static_cast<T>(scale * std::uniform_real_distribution<double>(-1, 1)(rng));
      return v;
    };
    lp = vec(1), olp = vec(1), adv = vec(2), H = vec(3), ref = vec(1);
    m.resize(static_cast<std::size_t>(N)), am.resize(m.size()), em.resize(m.size());
    for (int i = 0; i < N; ++i) {
      // Rows of 80, 71, ... valid tokens, and row 4 none (its weight is never read).
      m[static_cast<std::size_t>(i)] = i / Tn != 4 && (i % Tn) < 80 - 9 * (i / Tn) ? 1 : 0;
      am[static_cast<std::size_t>(i)] = i % 5 != 0;
      em[static_cast<std::size_t>(i)] = i % 7 != 0;
    }
  }
  token_view<const T> tok(const std::vector<T>& v) const { return {v.data(), B, Tn}; }
  mask_view msk(const std::vector<std::uint8_t>& v) const { return {v.data(), B, Tn}; }
};
}  // namespace

TEMPLATE_TEST_CASE("actor_objective_to: the device-result variant without host round trips", "[round_trips][losses]",
                   float, double) {
  using T = TestType;
  const actor_batch<T> d(8);
  constexpr int B = actor_batch<T>::B, Tn = actor_batch<T>::Tn, N = B * Tn;
  const actor_objective_inputs<T> in{d.tok(d.lp), d.tok(d.olp), d.tok(d.adv), d.msk(d.m),
                                     d.msk(d.am), d.tok(d.H),   d.msk(d.em),  d.tok(d.ref)};
  for (auto mode : {loss_aggregation::token_mean, loss_aggregation::token_sum, loss_aggregation::seq_mean_token_mean,
                    loss_aggregation::seq_mean_token_sum, loss_aggregation::seq_mean_token_sum_norm}) {
    CAPTURE(static_cast<int>(mode));
    actor_objective_options opt;
    opt.aggregation = mode;
    opt.entropy_coef = 0.01;
    opt.kl_coef = 0.05;
    opt.dual_clip = 3;
    opt.normalizer = loss_normalizer{1000, 12, 128};  // the whole mini-batch's counts (this call is a part)
    std::vector<T> gl(static_cast<std::size_t>(N)), ge(gl.size()), gl2(gl.size(), T(9)), ge2(gl.size(), T(9));
    const auto want = actor_objective(cpu_backend(1), in, actor_objective_outputs<T>{{gl.data(), B, Tn}, {ge.data(), B, Tn}}, opt);
    for (bool checks : {false, true}) {
      opt.check_finite = checks;
      const round_trip_backend be(2);
      actor_objective_result got;
      actor_objective_to(be, in, actor_objective_outputs<T>{{gl2.data(), B, Tn}, {ge2.data(), B, Tn}}, &got, opt);
      CHECK(be.round_trips() == (checks ? 1 : 0));
      // The same reduction on the same backend pattern: the same bits.
      CHECK(got.total == want.total);
      CHECK(got.policy.loss == want.policy.loss);
      CHECK(got.entropy.loss == want.entropy.loss);
      CHECK(got.kl.loss == want.kl.loss);
      CHECK(got.policy.metrics.clipped_tokens() == want.policy.metrics.clipped_tokens());
      CHECK(got.policy.metrics.adv_masked_tokens == want.policy.metrics.adv_masked_tokens);
      CHECK(got.entropy.metrics.filtered_tokens == want.entropy.metrics.filtered_tokens);
      CHECK(got.normalizer.tokens == 1000);
      CHECK(gl2 == gl);
      CHECK(ge2 == ge);
    }
  }
  // The normaliser's fields must be given, and a null result is rejected; nothing is written.
  std::vector<T> gl(static_cast<std::size_t>(N), T(9));
  actor_objective_result res;
  res.total = 42;
  actor_objective_options opt;  // seq-mean-token-mean with local counts: not possible without the host
  CHECK_THROWS_WITH(actor_objective_to(round_trip_backend(), in, actor_objective_outputs<T>{{gl.data(), B, Tn}}, &res, opt),
                    Catch::Contains("sequences must be given"));
  opt.aggregation = loss_aggregation::token_mean;
  CHECK_THROWS_WITH(actor_objective_to(round_trip_backend(), in, actor_objective_outputs<T>{{gl.data(), B, Tn}}, &res, opt),
                    Catch::Contains("tokens must be given"));
  opt.normalizer.tokens = 500;
  CHECK_THROWS_WITH(actor_objective_to(round_trip_backend(), in, actor_objective_outputs<T>{{gl.data(), B, Tn}}, nullptr, opt),
                    Catch::Contains("result"));
  CHECK(res.total == 42);
  CHECK(gl == std::vector<T>(static_cast<std::size_t>(N), T(9)));
}

// policy_loss_to, entropy_bonus_to, kl_loss_to and aggregate_loss_to: the host call's gradients and result,
// bit for bit, on the device-posing backend (one round trip with the finiteness check, none without) and on
// the CPU backend (its host path); errors before anything is written.
namespace {
std::vector<double> loss_fields(const policy_loss_result& r) {
  const auto& m = r.metrics;
  return {r.loss, static_cast<double>(m.valid_tokens), static_cast<double>(m.adv_masked_tokens),
          static_cast<double>(m.clipped_high_tokens), static_cast<double>(m.clipped_low_tokens),
          static_cast<double>(m.dual_clipped_tokens), m.approx_kl_sum, r.normalizer.tokens, r.normalizer.sequences,
          r.normalizer.norm_length};
}
std::vector<double> loss_fields(const entropy_bonus_result& r) {
  return {r.loss, r.entropy, r.filtered_entropy, static_cast<double>(r.metrics.valid_tokens),
          static_cast<double>(r.metrics.filtered_tokens), r.metrics.entropy_sum, r.normalizer.tokens,
          r.normalizer.sequences, r.normalizer.norm_length};
}
std::vector<double> loss_fields(const kl_loss_result& r) {
  return {r.loss, r.kl, static_cast<double>(r.metrics.valid_tokens), r.metrics.kl_sum, r.normalizer.tokens,
          r.normalizer.sequences, r.normalizer.norm_length};
}
std::vector<double> loss_fields(const aggregation_result& r) {
  return {r.loss, r.normalizer.tokens, r.normalizer.sequences, r.normalizer.norm_length};
}
}  // namespace

TEMPLATE_TEST_CASE("policy_loss_to, entropy_bonus_to, kl_loss_to, aggregate_loss_to: the host calls' bits without "
                   "host round trips",
                   "[round_trips][losses]", float, double) {
  using T = TestType;
  const actor_batch<T> d(18);
  constexpr int B = actor_batch<T>::B, Tn = actor_batch<T>::Tn, N = B * Tn;
  const token_view<const T> vlp = d.tok(d.lp), volp = d.tok(d.olp), vadv = d.tok(d.adv), vH = d.tok(d.H),
                            vref = d.tok(d.ref);
  const mask_view mask = d.msk(d.m), adv_mask = d.msk(d.am), ent_mask = d.msk(d.em);
  const policy_loss_inputs<T> pin{vlp, volp, vadv, mask, adv_mask};
  // Each call's host result and gradient, then its device-result variant on `be` into res / g.
  const auto both = [&](auto&& host, auto&& to) {
    std::vector<T> want_g(static_cast<std::size_t>(N), T(7));
    const auto want = host(token_view<T>(want_g.data(), B, Tn));
    for (bool checks : {false, true})
      for (bool device : {true, false}) {
        CAPTURE(checks, device);
        std::vector<T> g(static_cast<std::size_t>(N), T(9));
        std::decay_t<decltype(want)> res{};
        int trips = 0;
        if (device) {
          const round_trip_backend be(2);
          to(be, token_view<T>(g.data(), B, Tn), &res, checks);
          trips = be.round_trips();
        } else {
          to(cpu_backend(2), token_view<T>(g.data(), B, Tn), &res, checks);
        }
        if (device) CHECK(trips == (checks ? 1 : 0));
        CHECK(loss_fields(res) == loss_fields(want));
        CHECK(g == want_g);
      }
  };
  for (auto mode : {loss_aggregation::token_mean, loss_aggregation::token_sum, loss_aggregation::seq_mean_token_mean,
                    loss_aggregation::seq_mean_token_sum, loss_aggregation::seq_mean_token_sum_norm}) {
    CAPTURE(static_cast<int>(mode));
    const loss_normalizer norm{1000, 12, 128};  // the whole mini-batch's counts (this call is a part)
    policy_loss_options po;
    po.aggregation = mode;
    po.dual_clip = 3;
    po.normalizer = norm;
    both([&](token_view<T> g) { return policy_loss(cpu_backend(1), pin, g, po); },
         [&](const auto& be, token_view<T> g, policy_loss_result* r, bool checks) {
           policy_loss_options o = po;
           o.check_finite = checks;
           policy_loss_to(be, pin, g, r, o);
         });
    entropy_bonus_options eo;
    eo.aggregation = mode;
    eo.beta = 0.01;
    eo.normalizer = norm;
    both([&](token_view<T> g) { return entropy_bonus(cpu_backend(1), vH, mask, ent_mask, g, eo); },
         [&](const auto& be, token_view<T> g, entropy_bonus_result* r, bool checks) {
           entropy_bonus_options o = eo;
           o.check_finite = checks;
           entropy_bonus_to(be, vH, mask, ent_mask, g, r, o);
         });
    kl_loss_options ko;
    ko.aggregation = mode;
    ko.coef = 0.05;
    ko.normalizer = norm;
    both([&](token_view<T> g) { return kl_loss(cpu_backend(1), vlp, vref, mask, g, ko); },
         [&](const auto& be, token_view<T> g, kl_loss_result* r, bool checks) {
           kl_loss_options o = ko;
           o.check_finite = checks;
           kl_loss_to(be, vlp, vref, mask, g, r, o);
         });
    both([&](token_view<T> g) { return aggregate_loss(cpu_backend(1), vadv, mask, mode, norm, g); },
         [&](const auto& be, token_view<T> g, aggregation_result* r, bool checks) {
           aggregate_loss_to(be, vadv, mask, mode, norm, g, r, checks);
         });
  }
  // The normaliser's fields must be given, and a null result is rejected; nothing is written.
  std::vector<T> g(static_cast<std::size_t>(N), T(9));
  const token_view<T> gv(g.data(), B, Tn);
  policy_loss_result pr;
  pr.loss = 42;
  entropy_bonus_result er;
  er.loss = 42;
  kl_loss_result kr;
  kr.loss = 42;
  aggregation_result ar;
  ar.loss = 42;
  const round_trip_backend be(1);
  CHECK_THROWS_WITH(policy_loss_to(be, pin, gv, &pr), Catch::Contains("policy_loss_to") && Catch::Contains("sequences must be given"));
  CHECK_THROWS_WITH(entropy_bonus_to(be, vH, mask, ent_mask, gv, &er), Catch::Contains("sequences must be given"));
  kl_loss_options ko;
  ko.aggregation = loss_aggregation::token_mean;
  CHECK_THROWS_WITH(kl_loss_to(be, vlp, vref, mask, gv, &kr, ko), Catch::Contains("tokens must be given"));
  CHECK_THROWS_WITH(aggregate_loss_to(be, vadv, mask, loss_aggregation::seq_mean_token_sum_norm,
                                      loss_normalizer{100, 7, -1}, gv, &ar),
                    Catch::Contains("norm_length must be given"));
  ko.normalizer.tokens = 500;
  CHECK_THROWS_WITH(kl_loss_to(be, vlp, vref, mask, gv, nullptr, ko), Catch::Contains("result") && Catch::Contains("null"));
  std::vector<T> bad = d.lp;
  bad[3] = std::numeric_limits<T>::quiet_NaN();  // a valid token (row 0 holds 80)
  policy_loss_options po;
  po.aggregation = loss_aggregation::token_mean;
  po.normalizer.tokens = 500;
  CHECK_THROWS_WITH(policy_loss_to(be, policy_loss_inputs<T>{{bad.data(), B, Tn}, volp, vadv, mask}, gv, &pr, po),
                    Catch::Contains("NaN or Inf"));
  CHECK(pr.loss == 42);
  CHECK(er.loss == 42);
  CHECK(kr.loss == 42);
  CHECK(ar.loss == 42);
  CHECK(g == std::vector<T>(static_cast<std::size_t>(N), T(9)));
}

TEMPLATE_TEST_CASE("masked_whiten_to: the device-result variant without host round trips", "[round_trips][whiten]",
                   float, double) {
  // The same output bits and moments as masked_whiten, for every option; with check_finite off no
  // round trip, so gae + masked_whiten_to (verl's compute_gae_advantage_return) never waits.
  using T = TestType;
  const int B = 9, Tn = 70, N = B * Tn;
  std::mt19937_64 rng(21);
  std::vector<T> x(static_cast<std::size_t>(N));
  for (auto& e : x) e = static_cast<T>(std::uniform_real_distribution<double>(-3, 5)(rng));
  std::vector<std::uint8_t> m(x.size()), none(x.size(), 0), same_m(x.size(), 0);
  for (int i = 0; i < N; ++i) m[static_cast<std::size_t>(i)] = (i % Tn) < 60 - 6 * (i / Tn) && i % 11 != 0;
  std::vector<T> same(x.size(), T(0.35));  // identical values: mean exactly 0.35, variance exactly 0
  for (int i = 0; i < 3; ++i) same_m[static_cast<std::size_t>(i)] = 1;
  struct data_case {
    const std::vector<T>* x;
    const std::vector<std::uint8_t>* m;
  };
  for (const data_case dc : {data_case{&x, &m}, data_case{&x, &none}, data_case{&same, &same_m}})
    for (bool shift : {true, false})
      for (auto pad : {padding_mode::zero, padding_mode::raw})
        for (auto eps : {eps_mode::add, eps_mode::floor}) {
          whiten_options o;
          o.shift_mean = shift;
          o.padding = pad;
          o.eps_placement = eps;
          o.eps = eps == eps_mode::floor ? 0.5 : 1e-8;
          const token_view<const T> xv(dc.x->data(), B, Tn);
          const mask_view mv(dc.m->data(), B, Tn);
          std::vector<T> want(x.size(), T(7)), got(x.size(), T(8));
          const masked_moments mw = masked_whiten(cpu_backend(1), xv, mv, token_view<T>(want.data(), B, Tn), o);
          for (bool checks : {false, true}) {
            o.check_finite = checks;
            const round_trip_backend be(2);
            masked_moments mg;
            masked_whiten_to(be, xv, mv, token_view<T>(got.data(), B, Tn), &mg, o);
            CHECK(be.round_trips() == (checks ? 1 : 0));
            CHECK(got == want);
            CHECK(mg.count == mw.count);
            CHECK(mg.mean == mw.mean);
            CHECK(mg.var == mw.var);
          }
          // The moments alone: compute_masked_moments' bits, no round trip.
          for (bool unbiased : {true, false}) {
            const round_trip_backend be(2);
            masked_moments mm;
            masked_moments_to(be, xv, mv, unbiased, &mm);
            CHECK(be.round_trips() == 0);
            const masked_moments mc = compute_masked_moments(cpu_backend(1), xv, mv, unbiased);
            CHECK(std::memcmp(&mm, &mc, sizeof mm) == 0);
          }
        }
  // The pipeline: GAE, then whitening in place, with no round trip.
  const int K = 2;
  std::vector<T> V(static_cast<std::size_t>(K) * N), r(x.size()), adv(x.size()), ret(x.size());
  for (auto& e : V) e = static_cast<T>(std::uniform_real_distribution<double>(0, 1)(rng));
  for (auto& e : r) e = static_cast<T>(std::uniform_real_distribution<double>(0, 1)(rng));
  const round_trip_backend be(2);
  gae_options go;
  go.check_finite = false;
  whiten_options wo;
  wo.check_finite = false;
  gae(be, critic_view<const T>(V.data(), K, B, Tn), token_view<const T>(r.data(), B, Tn), mask_view(m.data(), B, Tn), go,
      gae_outputs<T>{{adv.data(), B, Tn}, {ret.data(), B, Tn}});
  masked_whiten_to(be, token_view<const T>(adv.data(), B, Tn), mask_view(m.data(), B, Tn), token_view<T>(adv.data(), B, Tn),
                   nullptr, wo);
  CHECK(be.round_trips() == 0);
}

TEMPLATE_TEST_CASE("value_loss_to: the device-result variant without host round trips", "[round_trips][losses]", float,
                   double) {
  // Each critic's metrics equal value_loss's (sequences: -1, not counted), the gradients are identical,
  // and with check_finite off nothing comes back to the host.
  using T = TestType;
  const int K = 2, B = 8, Tn = 50, N = B * Tn;
  std::mt19937_64 rng(31);
  auto vec = [&](std::size_t n) {
    std::vector<T> v(n);
    for (auto& x : v) x = static_cast<T>(std::uniform_real_distribution<double>(-1, 1)(rng));
    return v;
  };
  const auto V = vec(static_cast<std::size_t>(K) * N), Vo = vec(V.size()), R = vec(static_cast<std::size_t>(N));
  std::vector<std::uint8_t> m(static_cast<std::size_t>(N));
  for (int i = 0; i < N; ++i)  // row 2 has no valid token
    m[static_cast<std::size_t>(i)] = i / Tn != 2 && (i % Tn) < 45 - 5 * (i / Tn) ? 1 : 0;
  std::vector<T> shard(static_cast<std::size_t>(K) * B);
  for (int k = 0; k < K; ++k)
    for (int b = 0; b < B; ++b) shard[static_cast<std::size_t>(k * B + b)] = T((b + k) % 2 == 0 ? 1 : 0);
  value_loss_inputs<T> in;
  in.values = critic_view<const T>(V.data(), K, B, Tn);
  in.old_values = critic_view<const T>(Vo.data(), K, B, Tn);
  in.returns = token_view<const T>(R.data(), B, Tn);
  in.mask = mask_view(m.data(), B, Tn);
  in.shard_weights = view<const T, 2>(shard.data(), K, B);
  for (auto mode : {loss_aggregation::token_mean, loss_aggregation::seq_mean_token_mean,
                    loss_aggregation::seq_mean_token_sum_norm}) {
    for (bool ev : {true, false}) {
      CAPTURE(static_cast<int>(mode), ev);
      value_loss_options o;
      o.aggregation = mode;
      o.explained_variance = ev;
      o.normalizers = {loss_normalizer{300, 6, 64}, loss_normalizer{250, 5, 64}};
      std::vector<T> g(V.size()), g2(V.size(), T(9));
      const auto want = value_loss(cpu_backend(1), in, critic_view<T>(g.data(), K, B, Tn), o);
      for (bool checks : {false, true}) {
        o.check_finite = checks;
        const round_trip_backend be(2);
        std::vector<critic_loss_metrics> got(K);
        value_loss_to(be, in, critic_view<T>(g2.data(), K, B, Tn), got.data(), o);
        CHECK(be.round_trips() == (checks ? 1 : 0));
        CHECK(g2 == g);
        for (int k = 0; k < K; ++k) {
          const auto& a = got[static_cast<std::size_t>(k)];
          const auto& b = want.critics[static_cast<std::size_t>(k)];
          CHECK(a.loss == b.loss);
          CHECK(a.tokens == b.tokens);
          CHECK(a.sequences == -1);
          CHECK(a.clipped_tokens == b.clipped_tokens);
          CHECK(a.squared_error_sum == b.squared_error_sum);
          CHECK((a.explained_variance == b.explained_variance || (std::isnan(a.explained_variance) && std::isnan(b.explained_variance))));
          CHECK(a.normalizer.tokens == b.normalizer.tokens);
        }
      }
    }
  }
  // K explicit normalisers are required; nothing is written otherwise.
  std::vector<T> g(V.size(), T(9));
  std::vector<critic_loss_metrics> got(K);
  value_loss_options o;
  CHECK_THROWS_WITH(value_loss_to(round_trip_backend(), in, critic_view<T>(g.data(), K, B, Tn), got.data(), o),
                    Catch::Contains("must hold K = 2 explicit normalisers"));
  o.normalizers = {loss_normalizer{}, loss_normalizer{}};
  CHECK_THROWS_WITH(value_loss_to(round_trip_backend(), in, critic_view<T>(g.data(), K, B, Tn), got.data(), o),
                    Catch::Contains("sequences must be given"));
  CHECK(g == std::vector<T>(V.size(), T(9)));
}

TEST_CASE("a critic update without host round trips: heads forward, value_loss_to, heads backward", "[round_trips]") {
  const int K = 2, B = 6, Tn = 30, N = B * Tn, D = 10;
  std::mt19937_64 rng(41);
  const auto h = random_vec(rng, static_cast<std::size_t>(K) * N * D), w = random_vec(rng, static_cast<std::size_t>(K) * D),
             R = random_vec(rng, N);
  std::vector<std::uint8_t> m(static_cast<std::size_t>(N));
  for (int i = 0; i < N; ++i) m[static_cast<std::size_t>(i)] = (i % Tn) < 25 - 3 * (i / Tn) ? 1 : 0;
  std::vector<double> v(static_cast<std::size_t>(K) * N), g(v.size()), dw(w.size()), dh(h.size());
  std::vector<critic_loss_metrics> met(K);
  const round_trip_backend be(2);
  const view<const double, 3> hv(h.data(), K, N, D);
  const view<const double, 2> wv(w.data(), K, D);
  critic_heads_options ho;
  ho.check_finite = false;
  critic_heads_forward(be, hv, wv, {}, view<double, 2>(v.data(), K, N), ho);
  value_loss_inputs<double> in;
  in.values = critic_view<const double>(v.data(), K, B, Tn);  // the heads' [K,N] values, same memory
  in.returns = token_view<const double>(R.data(), B, Tn);
  in.mask = mask_view(m.data(), B, Tn);
  value_loss_options vo;
  vo.clip = 0;
  vo.check_finite = false;
  vo.aggregation = loss_aggregation::token_mean;
  vo.normalizers = {loss_normalizer{500, -1, -1}, loss_normalizer{500, -1, -1}};
  value_loss_to(be, in, critic_view<double>(g.data(), K, B, Tn), met.data(), vo);
  critic_heads_backward(be, hv, wv, view<const double, 2>(g.data(), K, N),
                        critic_head_gradients<double>{{dw.data(), K, D}, {}, {dh.data(), K, N, D}}, ho);
  CHECK(be.round_trips() == 0);
  // The same update with the host-returning calls on the CPU backend gives the same bits.
  std::vector<double> v2(v.size()), g2(v.size()), dw2(w.size()), dh2(h.size());
  const cpu_backend cpu(1);
  critic_heads_forward(cpu, hv, wv, {}, view<double, 2>(v2.data(), K, N));
  in.values = critic_view<const double>(v2.data(), K, B, Tn);
  vo.check_finite = true;
  const auto r = value_loss(cpu, in, critic_view<double>(g2.data(), K, B, Tn), vo);
  critic_heads_backward(cpu, hv, wv, view<const double, 2>(g2.data(), K, N),
                        critic_head_gradients<double>{{dw2.data(), K, D}, {}, {dh2.data(), K, N, D}});
  CHECK(v == v2);
  CHECK(g == g2);
  CHECK(dw == dw2);
  CHECK(dh == dh2);
  CHECK(met[0].loss == r.critics[0].loss);
  CHECK(met[1].loss == r.critics[1].loss);
}

TEST_CASE("the whole AsyPPO step without host round trips: heads, advantage_step_to, both losses, heads backward",
          "[round_trips]") {
  // What the GPU suite captures in a CUDA graph (tests/gpu, "cuda graph"): with the normalisers given
  // (the caller's counts), nothing in the step waits for the device, shard weights included. The same
  // step through the host-returning calls on the CPU backend gives the same bits.
  const int K = 2, B = 8, Tn = 40, N = B * Tn, D = 12;
  std::mt19937_64 rng(43);
  const auto h = random_vec(rng, static_cast<std::size_t>(K) * N * D), w = random_vec(rng, static_cast<std::size_t>(K) * D),
             r = random_vec(rng, N), lp = random_vec(rng, N), olp = random_vec(rng, N), ent = random_vec(rng, N);
  std::vector<std::uint8_t> m(static_cast<std::size_t>(N));
  for (int i = 0; i < N; ++i) m[static_cast<std::size_t>(i)] = (i % Tn) < 36 - 4 * (i / Tn) ? 1 : 0;
  const std::vector<std::int64_t> ids = {3, 3, 3, 3, 9, 9, 9, 9};
  double tokens = 0;
  for (auto x : m) tokens += x;
  const view<const double, 3> hv(h.data(), K, N, D);
  const view<const double, 2> wv(w.data(), K, D);
  const mask_view mv(m.data(), B, Tn);
  auto tv = [&](const std::vector<double>& x) { return token_view<const double>(x.data(), B, Tn); };

  struct outputs {
    std::vector<double> V, adv, ret, gl, gv, dw, shard;
    std::vector<std::uint8_t> am, em;
    double actor_total = 0;
    std::vector<double> critic_loss;
  };
  auto blank = [&] {
    return outputs{std::vector<double>(static_cast<std::size_t>(K) * N), std::vector<double>(N), std::vector<double>(N),
                   std::vector<double>(N), std::vector<double>(static_cast<std::size_t>(K) * N), std::vector<double>(w.size()),
                   std::vector<double>(static_cast<std::size_t>(K) * B), std::vector<std::uint8_t>(N),
                   std::vector<std::uint8_t>(N), 0, {}};
  };
  advantage_config cfg;
  cfg.lambda_actor = 0.95;
  actor_objective_options ao;
  ao.aggregation = loss_aggregation::token_mean;
  ao.normalizer.tokens = tokens;
  ao.entropy_coef = 0.01;
  value_loss_options vo;
  vo.aggregation = loss_aggregation::token_mean;
  vo.normalizers.assign(K, loss_normalizer{tokens, -1, -1});
  auto actor_in = [&](outputs& o) {
    return actor_objective_inputs<double>{tv(lp), tv(olp), tv(o.adv), mv, mask_view(o.am.data(), B, Tn), tv(ent),
                                          mask_view(o.em.data(), B, Tn), {}};
  };
  auto critic_in = [&](outputs& o) {
    const critic_view<const double> values(o.V.data(), K, B, Tn);
    return value_loss_inputs<double>{values, values, tv(o.ret), {}, mv, view<const double, 2>(o.shard.data(), K, B)};
  };
  auto step_out = [&](outputs& o) {
    return advantage_outputs<double>{{o.adv.data(), B, Tn}, {o.ret.data(), B, Tn}, {o.am.data(), B, Tn},
                                     {o.em.data(), B, Tn}, {o.shard.data(), K, B}};
  };
  auto step_in = [&](outputs& o) {
    return advantage_inputs<double>{critic_view<const double>(o.V.data(), K, B, Tn), tv(r), mv,
                                    seq_view<const std::int64_t>(ids.data(), B)};
  };

  outputs dev = blank();
  {
    const round_trip_backend be(2);
    critic_heads_options ho;
    ho.check_finite = false;
    cfg.check_finite = ao.check_finite = vo.check_finite = false;
    std::vector<advantage_step_result> summary(1);
    std::vector<actor_objective_result> actor(1);
    std::vector<critic_loss_metrics> critic(K);
    critic_heads_forward(be, hv, wv, {}, view<double, 2>(dev.V.data(), K, N), ho);
    advantage_step_to(be, step_in(dev), step_out(dev), summary.data(), nullptr, cfg);
    actor_objective_to(be, actor_in(dev), actor_objective_outputs<double>{{dev.gl.data(), B, Tn}}, actor.data(), ao);
    value_loss_to(be, critic_in(dev), critic_view<double>(dev.gv.data(), K, B, Tn), critic.data(), vo);
    critic_heads_backward(be, hv, wv, view<const double, 2>(dev.gv.data(), K, N),
                          critic_head_gradients<double>{{dev.dw.data(), K, D}}, ho);
    CHECK(be.round_trips() == 0);
    dev.actor_total = actor[0].total;
    for (const auto& c : critic) dev.critic_loss.push_back(c.loss);
    CHECK(summary[0].valid_tokens == static_cast<std::int64_t>(tokens));
  }
  outputs host = blank();
  {
    const cpu_backend be(1);
    cfg.check_finite = ao.check_finite = vo.check_finite = true;
    critic_heads_forward(be, hv, wv, {}, view<double, 2>(host.V.data(), K, N));
    advantage_step(be, step_in(host), step_out(host), cfg);
    host.actor_total = actor_objective(be, actor_in(host), actor_objective_outputs<double>{{host.gl.data(), B, Tn}}, ao).total;
    const auto vl = value_loss(be, critic_in(host), critic_view<double>(host.gv.data(), K, B, Tn), vo);
    for (const auto& c : vl.critics) host.critic_loss.push_back(c.loss);
    critic_heads_backward(be, hv, wv, view<const double, 2>(host.gv.data(), K, N),
                          critic_head_gradients<double>{{host.dw.data(), K, D}});
  }
  CHECK(dev.V == host.V);
  CHECK(dev.adv == host.adv);
  CHECK(dev.ret == host.ret);
  CHECK(dev.am == host.am);
  CHECK(dev.em == host.em);
  CHECK(dev.gl == host.gl);
  CHECK(dev.gv == host.gv);
  CHECK(dev.dw == host.dw);
  CHECK(dev.shard == host.shard);
  CHECK(dev.actor_total == host.actor_total);
  CHECK(dev.critic_loss == host.critic_loss);
}

TEMPLATE_TEST_CASE("device paths on the CPU: 16-bit inputs give the float inputs' bits", "[round_trips][half]", bfloat16, float16) {
  asyppo_conformance::conformance_half_inputs<TestType>(make_round_trip);
}
