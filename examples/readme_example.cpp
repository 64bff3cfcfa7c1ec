// The README's usage example: one AsyPPO advantage step on a tiny hand-built batch
// (K = 2 critics, B = 2 responses to one prompt, T = 4 positions). Kept identical to the
// snippet in README.md, so the build checks that the snippet compiles and runs.
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

  float adv[B * T], ret[B * T], shard[K * B];
  std::uint8_t adv_mask[B * T], ent_mask[B * T];

  asyppo::advantage_config cfg;  // K = 2, k = h = 0.2, gamma = 1, skip masks, no whitening
  cfg.lambda_actor = 0.95;       // lambda_critic stays 1
  const asyppo::advantage_summary s = asyppo::advantage_step(
      asyppo::cpu_backend{},
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
  std::printf("valid %lld, I^A zeroes %lld, I^H drops %lld, explained variance %.3f %.3f\n",
              static_cast<long long>(s.valid_tokens), static_cast<long long>(s.adv_masked),
              static_cast<long long>(s.entropy_masked), s.explained_variance[0], s.explained_variance[1]);
  return 0;
}
