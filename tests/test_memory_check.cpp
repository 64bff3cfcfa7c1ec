// The memory-space hook (detail::check_memory, backend/patterns.hpp "Optional: check_memory"):
// every public entry point hands each view it reads or writes to the backend's check_memory before
// any backend work, so a backend that cannot use some memory (the CUDA backend and a host pointer)
// rejects the call with asyppo::error naming the argument, and no output changes.
//
// checking_backend is the CPU backend plus a check_memory that records every (name, pointer) it is
// shown and rejects one chosen pointer. For each entry point: one run records the views checked
// (they must be exactly the non-empty views passed, by name and address), then each of them is
// rejected in turn: the call must throw from that entry point naming that argument, with every
// output byte unchanged.
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "asyppo/asyppo.hpp"

using namespace asyppo;

namespace {

struct checking_backend : cpu_backend {
  checking_backend() : cpu_backend(1) {}
  mutable std::vector<std::pair<std::string, const void*>> seen;
  const void* reject = nullptr;
  void check_memory(const char* where, const char* name, const void* p) const {
    seen.emplace_back(name, p);
    if (p == reject) detail::fail(where, name, "is not memory this backend can use (test)");
  }
};

// Byte snapshot of every output buffer.
struct outputs {
  std::vector<std::pair<const void*, std::size_t>> bufs;
  template <class T>
  void add(std::vector<T>& v) {
    bufs.emplace_back(v.data(), v.size() * sizeof(T));
  }
  std::vector<unsigned char> snapshot() const {
    std::vector<unsigned char> s;
    for (auto [p, n] : bufs) {
      const auto* c = static_cast<const unsigned char*>(p);
      s.insert(s.end(), c, c + n);
    }
    return s;
  }
};

// expected: argument name -> the pointer passed for it.
void check_entry(const std::string& where, const std::map<std::string, const void*>& expected, const outputs& out,
                 const std::function<void(const checking_backend&)>& run) {
  INFO(where);
  checking_backend be;
  run(be);
  std::map<std::string, const void*> seen;
  for (const auto& [name, p] : be.seen) {
    INFO(name);
    REQUIRE(seen.count(name) == 0);  // each argument checked once
    seen[name] = p;
  }
  REQUIRE(seen == expected);
  for (const auto& [name, p] : expected) {
    INFO("rejecting " << name);
    checking_backend b2;
    b2.reject = p;
    const auto before = out.snapshot();
    bool thrown = false;
    try {
      run(b2);
    } catch (const asyppo::error& e) {
      thrown = true;
      CHECK(e.where() == where);
      CHECK(e.argument() == name);
    }
    REQUIRE(thrown);
    REQUIRE(out.snapshot() == before);
  }
}

struct batch {
  index_t K = 2, B = 8, Tn = 12;
  std::vector<double> V, V_old, r, lp, olp, ref, A, H, R, loss;
  std::vector<std::uint8_t> m, am, hm;
  std::vector<std::int64_t> ids;
  batch() {
    std::mt19937_64 rng(3);
    std::uniform_real_distribution<double> u(-1, 1);
    const auto n = static_cast<std::size_t>(B * Tn);
    for (std::size_t i = 0; i < static_cast<std::size_t>(K) * n; ++i) V.push_back(u(rng)), V_old.push_back(u(rng));
    for (std::size_t i = 0; i < n; ++i) {
      r.push_back(u(rng));
      olp.push_back(-1 + 0.3 * u(rng));
      lp.push_back(olp.back() + 0.2 * u(rng));
      ref.push_back(olp.back() + 0.1 * u(rng));
      A.push_back(u(rng));
      H.push_back(1 + u(rng));
      R.push_back(u(rng));
      loss.push_back(u(rng));
      m.push_back(static_cast<std::uint8_t>(i % static_cast<std::size_t>(Tn) < 9));
      am.push_back(static_cast<std::uint8_t>(i % 5 != 0));
      hm.push_back(static_cast<std::uint8_t>(i % 7 != 0));
    }
    for (index_t b = 0; b < B; ++b) ids.push_back(b / 4);
  }
  critic_view<const double> values() const { return {V.data(), K, B, Tn}; }
  critic_view<const double> old_values() const { return {V_old.data(), K, B, Tn}; }
  token_view<const double> tok(const std::vector<double>& x) const { return {x.data(), B, Tn}; }
  mask_view msk(const std::vector<std::uint8_t>& x) const { return {x.data(), B, Tn}; }
  seq_view<const std::int64_t> group_ids() const { return {ids.data(), B}; }
};

}  // namespace

TEST_CASE("memory check: advantage-side entry points check every view before any work", "[memory]") {
  batch d;
  const index_t K = d.K, B = d.B, Tn = d.Tn, BT = B * Tn;
  std::vector<double> o1(static_cast<std::size_t>(BT)), o2(o1), o3(o1), o4(o1), seq(static_cast<std::size_t>(B));
  std::vector<double> kw(static_cast<std::size_t>(K * B));
  std::vector<std::uint8_t> m1(static_cast<std::size_t>(BT)), m2(m1);
  std::vector<std::int64_t> crit(static_cast<std::size_t>(B));
  std::vector<double> scores(static_cast<std::size_t>(B));
  for (index_t b = 0; b < B; ++b) scores[static_cast<std::size_t>(b)] = static_cast<double>(b % 3);
  auto out_tok = [&](std::vector<double>& v) { return token_view<double>(v.data(), B, Tn); };

  {
    outputs out;
    out.add(o1), out.add(o2), out.add(o3), out.add(o4);
    check_entry("asyppo::ensemble_stats",
                {{"values", d.V.data()}, {"mask", d.m.data()}, {"out.mean", o1.data()}, {"out.std", o2.data()},
                 {"out.min", o3.data()}, {"out.max", o4.data()}},
                out, [&](const checking_backend& be) {
                  ensemble_stats(be, d.values(), d.msk(d.m), ensemble_outputs<double>{out_tok(o1), out_tok(o2), out_tok(o3), out_tok(o4)});
                });
  }
  {
    outputs out;
    out.add(o1), out.add(o2), out.add(o3);
    check_entry("asyppo::gae",
                {{"values", d.V.data()}, {"rewards", d.r.data()}, {"mask", d.m.data()}, {"out.advantages", o1.data()},
                 {"out.returns", o2.data()}, {"out.std", o3.data()}},
                out, [&](const checking_backend& be) {
                  gae(be, d.values(), d.tok(d.r), d.msk(d.m), gae_options{}, gae_outputs<double>{out_tok(o1), out_tok(o2), out_tok(o3)});
                });
  }
  {
    outputs out;
    out.add(o1);
    check_entry("asyppo::masked_whiten", {{"x", d.A.data()}, {"mask", d.m.data()}, {"out", o1.data()}}, out,
                [&](const checking_backend& be) { masked_whiten(be, d.tok(d.A), d.msk(d.m), out_tok(o1)); });
    check_entry("asyppo::compute_masked_moments", {{"x", d.A.data()}, {"mask", d.m.data()}}, out,
                [&](const checking_backend& be) { compute_masked_moments(be, d.tok(d.A), d.msk(d.m), true); });
    masked_moments mo{};
    out.bufs.emplace_back(&mo, sizeof mo);
    check_entry("asyppo::masked_whiten_to", {{"x", d.A.data()}, {"mask", d.m.data()}, {"out", o1.data()}, {"moments", &mo}},
                out, [&](const checking_backend& be) { masked_whiten_to(be, d.tok(d.A), d.msk(d.m), out_tok(o1), &mo); });
    check_entry("asyppo::masked_moments_to", {{"x", d.A.data()}, {"mask", d.m.data()}, {"result", &mo}}, out,
                [&](const checking_backend& be) { masked_moments_to(be, d.tok(d.A), d.msk(d.m), true, &mo); });
  }
  {
    outputs out;
    out.add(m1), out.add(m2);
    check_entry("asyppo::uncertainty_masks",
                {{"sigma", d.H.data()}, {"mask", d.m.data()}, {"adv_mask", m1.data()}, {"entropy_mask", m2.data()}}, out,
                [&](const checking_backend& be) {
                  uncertainty_masks(be, d.tok(d.H), d.msk(d.m), mask_out(m1.data(), B, Tn), mask_out(m2.data(), B, Tn));
                });
    mask_counts mc{};
    out.bufs.emplace_back(&mc, sizeof mc);
    check_entry("asyppo::uncertainty_masks_to",
                {{"sigma", d.H.data()}, {"mask", d.m.data()}, {"adv_mask", m1.data()}, {"entropy_mask", m2.data()},
                 {"counts", &mc}},
                out, [&](const checking_backend& be) {
                  uncertainty_masks_to(be, d.tok(d.H), d.msk(d.m), mask_out(m1.data(), B, Tn), mask_out(m2.data(), B, Tn),
                                       &mc);
                });
  }
  {
    outputs out;
    out.add(kw), out.add(crit);
    check_entry("asyppo::shard_weights", {{"group_ids", d.ids.data()}, {"weights", kw.data()}, {"critic_of", crit.data()}},
                out, [&](const checking_backend& be) {
                  shard_weights(be, d.group_ids(), K, view<double, 2>(kw.data(), K, B), shard_mode::contiguous,
                                seq_view<std::int64_t>(crit.data(), B));
                });
  }
  {
    outputs out;
    out.add(o1), out.add(seq);
    const std::map<std::string, const void*> want{{"scores", scores.data()}, {"group_ids", d.ids.data()}, {"mask", d.m.data()},
                                                  {"out.advantages", o1.data()}, {"out.sequence", seq.data()}};
    const outcome_outputs<double> oo{out_tok(o1), seq_view<double>(seq.data(), B)};
    const seq_view<const double> sv(scores.data(), B);
    check_entry("asyppo::grpo_advantages", want, out,
                [&](const checking_backend& be) { grpo_advantages(be, sv, d.group_ids(), d.msk(d.m), oo); });
    check_entry("asyppo::rloo_advantages", want, out,
                [&](const checking_backend& be) { rloo_advantages(be, sv, d.group_ids(), d.msk(d.m), oo); });
    check_entry("asyppo::reinforce_pp_baseline_advantages", want, out, [&](const checking_backend& be) {
      reinforce_pp_baseline_advantages(be, sv, d.group_ids(), d.msk(d.m), oo);
    });
    check_entry("asyppo::reinforce_pp_advantages", {{"rewards", d.r.data()}, {"mask", d.m.data()}, {"advantages", o1.data()}},
                out, [&](const checking_backend& be) { reinforce_pp_advantages(be, d.tok(d.r), d.msk(d.m), out_tok(o1)); });
    check_entry("asyppo::sequence_scores", {{"rewards", d.r.data()}, {"scores", seq.data()}}, out,
                [&](const checking_backend& be) { sequence_scores(be, d.tok(d.r), seq_view<double>(seq.data(), B)); });
  }
  {
    outputs out;
    out.add(o1), out.add(o2), out.add(m1), out.add(m2), out.add(kw), out.add(o3);
    check_entry("asyppo::advantage_step",
                {{"values", d.V.data()}, {"rewards", d.r.data()}, {"mask", d.m.data()}, {"group_ids", d.ids.data()},
                 {"out.advantages", o1.data()}, {"out.returns", o2.data()}, {"out.adv_mask", m1.data()},
                 {"out.entropy_mask", m2.data()}, {"out.shard_weights", kw.data()}, {"out.std", o3.data()}},
                out, [&](const checking_backend& be) {
                  advantage_step(be, advantage_inputs<double>{d.values(), d.tok(d.r), d.msk(d.m), d.group_ids()},
                                 advantage_outputs<double>{out_tok(o1), out_tok(o2), mask_out(m1.data(), B, Tn),
                                                           mask_out(m2.data(), B, Tn), view<double, 2>(kw.data(), K, B), out_tok(o3)});
                });
    advantage_step_result res{};
    std::vector<double> ev(static_cast<std::size_t>(K));
    out.bufs.emplace_back(&res, sizeof res);
    out.add(ev);
    check_entry("asyppo::advantage_step_to",
                {{"values", d.V.data()}, {"rewards", d.r.data()}, {"mask", d.m.data()}, {"group_ids", d.ids.data()},
                 {"out.advantages", o1.data()}, {"out.returns", o2.data()}, {"out.adv_mask", m1.data()},
                 {"out.entropy_mask", m2.data()}, {"out.shard_weights", kw.data()}, {"out.std", o3.data()},
                 {"result", &res}, {"explained_variance", ev.data()}},
                out, [&](const checking_backend& be) {
                  advantage_step_to(be, advantage_inputs<double>{d.values(), d.tok(d.r), d.msk(d.m), d.group_ids()},
                                    advantage_outputs<double>{out_tok(o1), out_tok(o2), mask_out(m1.data(), B, Tn),
                                                              mask_out(m2.data(), B, Tn), view<double, 2>(kw.data(), K, B),
                                                              out_tok(o3)},
                                    &res, ev.data());
                });
  }
}

TEST_CASE("memory check: loss entry points check every view before any work", "[memory]") {
  batch d;
  const index_t K = d.K, B = d.B, Tn = d.Tn, BT = B * Tn, Vn = 5;
  std::vector<double> g1(static_cast<std::size_t>(BT)), g2(g1), gk(static_cast<std::size_t>(K * BT));
  std::vector<double> shards(static_cast<std::size_t>(K * B));
  for (index_t b = 0; b < B; ++b) shards[static_cast<std::size_t>((b % 2) * B + b)] = 1.0;
  auto out_tok = [&](std::vector<double>& v) { return token_view<double>(v.data(), B, Tn); };
  {
    outputs out;
    out.add(g1);
    check_entry("asyppo::policy_loss",
                {{"logp", d.lp.data()}, {"old_logp", d.olp.data()}, {"advantages", d.A.data()}, {"mask", d.m.data()},
                 {"adv_mask", d.am.data()}, {"grad_logp", g1.data()}},
                out, [&](const checking_backend& be) {
                  policy_loss(be, policy_loss_inputs<double>{d.tok(d.lp), d.tok(d.olp), d.tok(d.A), d.msk(d.m), d.msk(d.am)},
                              out_tok(g1));
                });
    check_entry("asyppo::entropy_bonus",
                {{"entropy", d.H.data()}, {"mask", d.m.data()}, {"entropy_mask", d.hm.data()}, {"grad_entropy", g1.data()}},
                out, [&](const checking_backend& be) { entropy_bonus(be, d.tok(d.H), d.msk(d.m), d.msk(d.hm), out_tok(g1)); });
    check_entry("asyppo::kl_values", {{"logp", d.lp.data()}, {"ref_logp", d.ref.data()}, {"mask", d.m.data()}, {"out", g1.data()}},
                out, [&](const checking_backend& be) { kl_values(be, d.tok(d.lp), d.tok(d.ref), d.msk(d.m), out_tok(g1)); });
    check_entry("asyppo::kl_loss", {{"logp", d.lp.data()}, {"ref_logp", d.ref.data()}, {"mask", d.m.data()}, {"grad_logp", g1.data()}},
                out, [&](const checking_backend& be) { kl_loss(be, d.tok(d.lp), d.tok(d.ref), d.msk(d.m), out_tok(g1)); });
    check_entry("asyppo::aggregate_loss", {{"loss", d.loss.data()}, {"mask", d.m.data()}, {"weights", g1.data()}}, out,
                [&](const checking_backend& be) {
                  aggregate_loss(be, d.tok(d.loss), d.msk(d.m), loss_aggregation::token_mean, loss_normalizer{}, out_tok(g1));
                });
  }
  {
    // The device-result variants of the same losses: one more view each, the result.
    policy_loss_result pr{};
    entropy_bonus_result er{};
    kl_loss_result kr{};
    aggregation_result ar{};
    outputs out;
    out.add(g1);
    for (auto [p, n] : {std::pair<const void*, std::size_t>{&pr, sizeof pr}, {&er, sizeof er}, {&kr, sizeof kr},
                        {&ar, sizeof ar}})
      out.bufs.emplace_back(p, n);
    const loss_normalizer norm{1000, -1, -1};  // token-mean: the tokens are given
    policy_loss_options po;
    po.aggregation = loss_aggregation::token_mean;
    po.normalizer = norm;
    check_entry("asyppo::policy_loss_to",
                {{"logp", d.lp.data()}, {"old_logp", d.olp.data()}, {"advantages", d.A.data()}, {"mask", d.m.data()},
                 {"adv_mask", d.am.data()}, {"grad_logp", g1.data()}, {"result", &pr}},
                out, [&](const checking_backend& be) {
                  policy_loss_to(be, policy_loss_inputs<double>{d.tok(d.lp), d.tok(d.olp), d.tok(d.A), d.msk(d.m), d.msk(d.am)},
                                 out_tok(g1), &pr, po);
                });
    entropy_bonus_options eo;
    eo.aggregation = loss_aggregation::token_mean;
    eo.normalizer = norm;
    check_entry("asyppo::entropy_bonus_to",
                {{"entropy", d.H.data()}, {"mask", d.m.data()}, {"entropy_mask", d.hm.data()}, {"grad_entropy", g1.data()},
                 {"result", &er}},
                out, [&](const checking_backend& be) {
                  entropy_bonus_to(be, d.tok(d.H), d.msk(d.m), d.msk(d.hm), out_tok(g1), &er, eo);
                });
    kl_loss_options ko;
    ko.aggregation = loss_aggregation::token_mean;
    ko.normalizer = norm;
    check_entry("asyppo::kl_loss_to",
                {{"logp", d.lp.data()}, {"ref_logp", d.ref.data()}, {"mask", d.m.data()}, {"grad_logp", g1.data()},
                 {"result", &kr}},
                out, [&](const checking_backend& be) { kl_loss_to(be, d.tok(d.lp), d.tok(d.ref), d.msk(d.m), out_tok(g1), &kr, ko); });
    check_entry("asyppo::aggregate_loss_to",
                {{"loss", d.loss.data()}, {"mask", d.m.data()}, {"weights", g1.data()}, {"result", &ar}}, out,
                [&](const checking_backend& be) {
                  aggregate_loss_to(be, d.tok(d.loss), d.msk(d.m), loss_aggregation::token_mean, norm, out_tok(g1), &ar);
                });
  }
  {
    outputs out;
    out.add(gk);
    check_entry("asyppo::value_loss",
                {{"values", d.V.data()}, {"old_values", d.V_old.data()}, {"returns", d.R.data()}, {"mask", d.m.data()},
                 {"shard_weights", shards.data()}, {"grad_values", gk.data()}},
                out, [&](const checking_backend& be) {
                  value_loss(be,
                             value_loss_inputs<double>{d.values(), d.old_values(), d.tok(d.R), {}, d.msk(d.m),
                                                       view<const double, 2>(shards.data(), K, B)},
                             critic_view<double>(gk.data(), K, B, Tn));
                });
    std::vector<critic_loss_metrics> met(static_cast<std::size_t>(K));
    out.bufs.emplace_back(met.data(), met.size() * sizeof(critic_loss_metrics));
    value_loss_options vo;
    vo.normalizers = {loss_normalizer{100, 8, 12}, loss_normalizer{100, 8, 12}};
    check_entry("asyppo::value_loss_to",
                {{"values", d.V.data()}, {"old_values", d.V_old.data()}, {"returns", d.R.data()}, {"mask", d.m.data()},
                 {"shard_weights", shards.data()}, {"grad_values", gk.data()}, {"metrics", met.data()}},
                out, [&](const checking_backend& be) {
                  value_loss_to(be,
                                value_loss_inputs<double>{d.values(), d.old_values(), d.tok(d.R), {}, d.msk(d.m),
                                                          view<const double, 2>(shards.data(), K, B)},
                                critic_view<double>(gk.data(), K, B, Tn), met.data(), vo);
                });
  }
  {
    outputs out;
    out.add(g1), out.add(g2);
    actor_objective_options o;
    o.entropy_coef = 0.01;
    o.kl_coef = 0.05;
    check_entry("asyppo::actor_objective",
                {{"logp", d.lp.data()}, {"old_logp", d.olp.data()}, {"advantages", d.A.data()}, {"mask", d.m.data()},
                 {"adv_mask", d.am.data()}, {"entropy", d.H.data()}, {"entropy_mask", d.hm.data()}, {"ref_logp", d.ref.data()},
                 {"grad_logp", g1.data()}, {"grad_entropy", g2.data()}},
                out, [&](const checking_backend& be) {
                  actor_objective(be,
                                  actor_objective_inputs<double>{d.tok(d.lp), d.tok(d.olp), d.tok(d.A), d.msk(d.m), d.msk(d.am),
                                                                 d.tok(d.H), d.msk(d.hm), d.tok(d.ref)},
                                  actor_objective_outputs<double>{out_tok(g1), out_tok(g2)}, o);
                });
  }
  {
    outputs out;
    std::vector<double> g3(g1.size(), 0.0);
    actor_objective_result res{};
    out.add(g1), out.add(g3);
    out.bufs.emplace_back(&res, sizeof res);
    actor_objective_options o;
    o.aggregation = loss_aggregation::token_mean;
    o.normalizer.tokens = 1000;
    check_entry("asyppo::actor_objective_to",
                {{"logp", d.lp.data()}, {"old_logp", d.olp.data()}, {"advantages", d.A.data()}, {"mask", d.m.data()},
                 {"grad_logp", g1.data()}, {"grad_entropy", g3.data()}, {"result", &res}},
                out, [&](const checking_backend& be) {
                  actor_objective_to(be, actor_objective_inputs<double>{d.tok(d.lp), d.tok(d.olp), d.tok(d.A), d.msk(d.m)},
                                     actor_objective_outputs<double>{out_tok(g1), out_tok(g3)}, &res, o);
                });
  }
  {
    // The critic heads: hidden [K,N,D] with N = B*T tokens and D = 3.
    const index_t N = B * Tn, D = 3;
    std::vector<double> h(static_cast<std::size_t>(K * N * D), 0.5), w(static_cast<std::size_t>(K * D), 0.25), c(2, 0.1),
        v(static_cast<std::size_t>(K * N)), dw(w.size()), dc(c.size()), dh(h.size());
    outputs out;
    out.add(v), out.add(dw), out.add(dc), out.add(dh);
    check_entry("asyppo::critic_heads_forward",
                {{"hidden", h.data()}, {"weight", w.data()}, {"bias", c.data()}, {"values", v.data()}}, out,
                [&](const checking_backend& be) {
                  critic_heads_forward(be, view<const double, 3>(h.data(), K, N, D), view<const double, 2>(w.data(), K, D),
                                       seq_view<const double>(c.data(), K), view<double, 2>(v.data(), K, N));
                });
    check_entry("asyppo::critic_heads_backward",
                {{"hidden", h.data()}, {"weight", w.data()}, {"grad_values", d.V.data()}, {"grads.weight", dw.data()},
                 {"grads.bias", dc.data()}, {"grads.hidden", dh.data()}},
                out, [&](const checking_backend& be) {
                  critic_heads_backward(be, view<const double, 3>(h.data(), K, N, D), view<const double, 2>(w.data(), K, D),
                                        view<const double, 2>(d.V.data(), K, N),
                                        critic_head_gradients<double>{{dw.data(), K, D}, {dc.data(), K}, {dh.data(), K, N, D}});
                });
  }
  {
    std::vector<double> z(static_cast<std::size_t>(BT * Vn)), gz(z.size());
    for (std::size_t i = 0; i < z.size(); ++i) z[i] = std::sin(static_cast<double>(i));
    std::vector<std::int64_t> tok(static_cast<std::size_t>(BT));
    for (std::size_t i = 0; i < tok.size(); ++i) tok[i] = static_cast<std::int64_t>(i % static_cast<std::size_t>(Vn));
    const view<const double, 3> zv(z.data(), B, Tn, Vn);
    const view<const std::int64_t, 2> ids(tok.data(), B, Tn);
    outputs out;
    out.add(g1), out.add(g2), out.add(gz);
    check_entry("asyppo::logits_logp_entropy",
                {{"logits", z.data()}, {"token_ids", tok.data()}, {"mask", d.m.data()}, {"logp", g1.data()}, {"entropy", g2.data()}},
                out, [&](const checking_backend& be) {
                  logits_logp_entropy(be, zv, ids, out_tok(g1), out_tok(g2), logits_options{}, d.msk(d.m));
                });
    check_entry("asyppo::logits_logp_entropy_backward",
                {{"logits", z.data()}, {"token_ids", tok.data()}, {"mask", d.m.data()}, {"grad_logp", d.A.data()},
                 {"grad_entropy", d.H.data()}, {"grad_logits", gz.data()}},
                out, [&](const checking_backend& be) {
                  logits_logp_entropy_backward(be, zv, ids, d.tok(d.A), d.tok(d.H), view<double, 3>(gz.data(), B, Tn, Vn),
                                               logits_options{}, d.msk(d.m));
                });
  }
}
