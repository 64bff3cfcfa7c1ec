// The README's usage example, compiled by the build: one AsyPPO update step on a tiny batch.
// It is method-spec's worked example (K = 2 critics, B = 2 responses, T = 4 tokens).
#include <asyppo/asyppo.hpp>

#include <cstdint>
#include <cstdio>

int main() {
  constexpr int K = 2, B = 2, T = 4;
  // Old values of the two critics, row-major [K,B,T].
  const float values[K * B * T] = {0.2f, 0.4f, 0.5f, 0.7f, 0.1f, 0.3f, 0.2f, 0.0f,   // critic 0
                                   0.4f, 0.4f, 0.9f, 0.5f, 0.1f, 0.5f, 0.3f, 0.0f};  // critic 1
  // Outcome reward on the last valid token: response 0 is correct, response 1 is not.
  const float rewards[B * T] = {0, 0, 0, 1, 0, 0, 0, 0};
  const std::uint8_t mask[B * T] = {1, 1, 1, 1, 1, 1, 1, 0};  // response 1 has 3 tokens
  const std::int64_t group_ids[B] = {7, 7};                   // both answer prompt 7
  const asyppo::cpu_backend cpu{};

  // 1. The advantage step: GAE on the critics' mean, the two masks, the critics' shards.
  float adv[B * T], ret[B * T], shard[K * B];
  std::uint8_t adv_mask[B * T], ent_mask[B * T];
  asyppo::advantage_config cfg;  // K = 2, k = h = 0.2, gamma = 1, skip masks, no whitening
  cfg.lambda_actor = 0.95;       // lambda_critic stays 1
  const asyppo::advantage_summary s = asyppo::advantage_step(
      cpu,
      asyppo::advantage_inputs<float>{.values = {values, K, B, T}, .rewards = {rewards, B, T},
                                      .mask = {mask, B, T}, .group_ids = {group_ids, B}},
      asyppo::advantage_outputs<float>{.advantages = {adv, B, T}, .returns = {ret, B, T},
                                       .adv_mask = {adv_mask, B, T}, .entropy_mask = {ent_mask, B, T},
                                       .shard_weights = {shard, K, B}},
      cfg);
  for (int i = 0; i < B * T; ++i)
    std::printf("b=%d t=%d  A=%+.6f  R=%.3f  I^A=%d  I^H=%d\n", i / T, i % T, adv[i], ret[i], adv_mask[i],
                ent_mask[i]);
  std::printf("shards w[k][b] = %g %g / %g %g\n", shard[0], shard[1], shard[2], shard[3]);
  std::printf("valid %lld, I^A zeroes %lld, I^H drops %lld\n", static_cast<long long>(s.valid_tokens),
              static_cast<long long>(s.adv_masked), static_cast<long long>(s.entropy_masked));

  // 2. The actor update: clipped surrogate with I^A + entropy bonus with I^H, and its gradients.
  // (Your model provides logp and the entropy of each token; here: made-up numbers.)
  const float old_logp[B * T] = {-1.0f, -0.5f, -2.0f, -0.1f, -0.7f, -1.2f, -0.3f, 0.0f};
  const float logp[B * T] = {-0.6f, -0.5f, -2.5f, -0.1f, -0.4f, -1.6f, -0.3f, 0.0f};
  const float entropy[B * T] = {1.1f, 0.4f, 2.0f, 0.2f, 0.9f, 1.5f, 0.3f, 0.0f};
  float grad_logp[B * T], grad_entropy[B * T];
  asyppo::actor_objective_options actor;  // seq-mean-token-mean, eps 0.2 / 0.2
  actor.clip_high = 0.28;                 // clip-higher, as the public AsyPPO code
  actor.entropy_coef = 1e-3;
  const auto a = asyppo::actor_objective(
      cpu,
      asyppo::actor_objective_inputs<float>{.logp = {logp, B, T}, .old_logp = {old_logp, B, T},
                                            .advantages = {adv, B, T}, .mask = {mask, B, T},
                                            .adv_mask = {adv_mask, B, T}, .entropy = {entropy, B, T},
                                            .entropy_mask = {ent_mask, B, T}},
      asyppo::actor_objective_outputs<float>{.grad_logp = {grad_logp, B, T}, .grad_entropy = {grad_entropy, B, T}},
      actor);
  std::printf("actor loss %.6f (surrogate %.6f, entropy %.6f), clip fraction %.3f\n", a.total, a.policy.loss,
              a.entropy.loss, a.policy.metrics.clip_fraction());
  std::printf("dL/dlogp[0,:] = %+.4f %+.4f %+.4f %+.4f\n", grad_logp[0], grad_logp[1], grad_logp[2], grad_logp[3]);

  // 3. The critics' update: critic k regresses on the returns over its own shard only.
  const float new_values[K * B * T] = {0.3f, 0.5f, 0.6f, 0.8f, 0.1f, 0.2f, 0.2f, 0.0f,
                                       0.5f, 0.4f, 0.8f, 0.6f, 0.0f, 0.4f, 0.2f, 0.0f};
  float grad_values[K * B * T];
  const auto v = asyppo::value_loss(
      cpu,
      asyppo::value_loss_inputs<float>{.values = {new_values, K, B, T}, .old_values = {values, K, B, T},
                                       .returns = {ret, B, T}, .mask = {mask, B, T},
                                       .shard_weights = {shard, K, B}},
      asyppo::critic_view<float>{grad_values, K, B, T});
  for (int k = 0; k < K; ++k)
    std::printf("critic %d: loss %.6f on %lld tokens, clip fraction %.3f\n", k, v.critics[k].loss,
                static_cast<long long>(v.critics[k].tokens), v.critics[k].clip_fraction);
  return 0;
}
