// bench/gpu/capi.hpp: a C interface to the advantage step, the actor objective (each also as its
// device-result variant) and the critic heads,
// for benchmark and comparison scripts that call asyppo through ctypes on buffers they own
// (PyTorch tensors: data_ptr()), on the CPU (capi_cpu.cpp) or on a GPU (capi_cuda.cu, on the caller's
// CUDA stream). Not a public API: a test harness (float32, contiguous row-major buffers; the
// advantage step's device-result variant also with bfloat16 values and rewards, `_bf16`).
//
// Every function returns 0, or 1 with the message in asyppo_bench_last_error(). The backend of one
// library is fixed at build time; asyppo_bench_backend() names it.
#pragma once

#include <cstdint>
#include <cstring>
#include <exception>
#include <string>

#include "asyppo/core/actor_objective.hpp"
#include "asyppo/core/advantage_step.hpp"
#include "asyppo/core/critic_heads.hpp"

namespace asyppo_bench_capi {

inline std::string& last_error() {
  static thread_local std::string e;
  return e;
}

template <class F>
int guarded(F&& f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    last_error() = e.what();
    return 1;
  }
}

/// The views and config of both advantage-step entry points (defaults of the paper: k = h = 0.2,
/// gamma = lambda = 1, batch scope; the summary's statistics off unless asked for).
/// In: the element type of values and rewards (float or asyppo::bfloat16); the outputs are float.
template <class In = float>
struct step_call {
  asyppo::advantage_inputs<In> in;
  asyppo::advantage_outputs<float> out;
  asyppo::advantage_config cfg;
};
template <class In = float>
step_call<In> step_call_of(std::int64_t K, std::int64_t B, std::int64_t T, const In* values, const In* rewards,
                           const std::uint8_t* mask, const std::int64_t* group_ids, float* advantages, float* returns,
                           std::uint8_t* adv_mask, std::uint8_t* entropy_mask, int statistics) {
  using namespace asyppo;
  step_call<In> c{advantage_inputs<In>{critic_view<const In>(values, K, B, T), token_view<const In>(rewards, B, T),
                                       mask_view(mask, B, T), seq_view<const std::int64_t>(group_ids, B)},
              advantage_outputs<float>{token_view<float>(advantages, B, T), token_view<float>(returns, B, T),
                                       mask_out(adv_mask, B, T), mask_out(entropy_mask, B, T)},
              advantage_config{}};
  c.cfg.critics = K;
  c.cfg.statistics = statistics != 0;
  return c;
}

/// The advantage step. summary_out (host, 4 doubles): the advantage-mask and entropy-filter fractions
/// and thresholds.
template <class Backend>
int advantage_step(const Backend& be, std::int64_t K, std::int64_t B, std::int64_t T, const float* values,
                   const float* rewards, const std::uint8_t* mask, const std::int64_t* group_ids, float* advantages,
                   float* returns, std::uint8_t* adv_mask, std::uint8_t* entropy_mask, int statistics,
                   double* summary_out) {
  return guarded([&] {
    const step_call<> c = step_call_of(K, B, T, values, rewards, mask, group_ids, advantages, returns, adv_mask,
                                       entropy_mask, statistics);
    const asyppo::advantage_summary s = asyppo::advantage_step(be, c.in, c.out, c.cfg);
    if (summary_out) {
      summary_out[0] = s.adv_mask_fraction;
      summary_out[1] = s.entropy_filter_fraction;
      summary_out[2] = s.adv_threshold;
      summary_out[3] = s.entropy_threshold;
    }
  });
}

/// The same through advantage_step_to (no finiteness check): nothing waits for the stream; the four
/// summary values are copied (stream-ordered) to summary_out, which lives where the buffers live
/// (device memory on a GPU). In: float or asyppo::bfloat16 values and rewards.
template <class Backend, class In>
int advantage_step_to(const Backend& be, std::int64_t K, std::int64_t B, std::int64_t T, const In* values,
                      const In* rewards, const std::uint8_t* mask, const std::int64_t* group_ids, float* advantages,
                      float* returns, std::uint8_t* adv_mask, std::uint8_t* entropy_mask, int statistics,
                      double* summary_out) {
  return guarded([&] {
    using asyppo::index_t;
    step_call<In> c = step_call_of<In>(K, B, T, values, rewards, mask, group_ids, advantages, returns, adv_mask,
                                       entropy_mask, statistics);
    c.cfg.check_finite = false;
    auto result = be.template allocate<asyppo::advantage_step_result>(1);
    asyppo::advantage_step_to(be, c.in, c.out, result.data(), nullptr, c.cfg);
    if (!summary_out) return;
    // adv_mask_fraction, entropy_filter_fraction, adv_threshold, entropy_threshold: adjacent doubles.
    const double* first = &result.data()->adv_mask_fraction;
    if constexpr (requires { be.copy(first, index_t(4), summary_out); }) be.copy(first, 4, summary_out);
    else std::memcpy(summary_out, first, 4 * sizeof(double));
  });
}

/// The actor objective's surrogate part with its gradient (clip 0.2, verl's token-mean aggregation
/// when token_mean, else seq-mean-token-mean); loss_out (host): the loss.
template <class Backend>
int actor_objective(const Backend& be, std::int64_t B, std::int64_t T, const float* logp, const float* old_logp,
                    const float* advantages, const std::uint8_t* mask, const std::uint8_t* adv_mask, float* grad_logp,
                    int token_mean, int check_finite, double* loss_out) {
  return guarded([&] {
    using namespace asyppo;
    actor_objective_options opt;
    opt.aggregation = token_mean ? loss_aggregation::token_mean : loss_aggregation::seq_mean_token_mean;
    opt.check_finite = check_finite != 0;
    actor_objective_inputs<float> in{token_view<const float>(logp, B, T), token_view<const float>(old_logp, B, T),
                                     token_view<const float>(advantages, B, T), mask_view(mask, B, T),
                                     adv_mask ? mask_view(adv_mask, B, T) : mask_view{}};
    const auto r = asyppo::actor_objective(be, in, actor_objective_outputs<float>{token_view<float>(grad_logp, B, T)}, opt);
    if (loss_out) *loss_out = r.total;
  });
}

/// The same through actor_objective_to (token-mean over `tokens` valid tokens, no finiteness check):
/// nothing waits for the stream; the total is copied (stream-ordered) to total_out, which lives where
/// the buffers live (device memory on a GPU).
template <class Backend>
int actor_objective_to(const Backend& be, std::int64_t B, std::int64_t T, const float* logp, const float* old_logp,
                       const float* advantages, const std::uint8_t* mask, const std::uint8_t* adv_mask, float* grad_logp,
                       double tokens, double* total_out) {
  return guarded([&] {
    using namespace asyppo;
    actor_objective_options opt;
    opt.aggregation = loss_aggregation::token_mean;
    opt.normalizer.tokens = tokens;
    opt.check_finite = false;
    actor_objective_inputs<float> in{token_view<const float>(logp, B, T), token_view<const float>(old_logp, B, T),
                                     token_view<const float>(advantages, B, T), mask_view(mask, B, T),
                                     adv_mask ? mask_view(adv_mask, B, T) : mask_view{}};
    auto result = be.template allocate<actor_objective_result>(1);
    asyppo::actor_objective_to(be, in, actor_objective_outputs<float>{token_view<float>(grad_logp, B, T)}, result.data(),
                               opt);
    const double* total = &result.data()->total;
    if constexpr (requires { be.copy(total, index_t(1), total_out); }) be.copy(total, 1, total_out);
    else *total_out = *total;
  });
}

/// The critic heads, a trunk per critic: values [K,N] from hidden [K,N,D], weight [K,D], bias [K];
/// then the gradients from grad_values [K,N] (each output may be null).
template <class Backend>
int critic_heads(const Backend& be, std::int64_t K, std::int64_t N, std::int64_t D, const float* hidden,
                 const float* weight, const float* bias, float* values, const float* grad_values, float* grad_weight,
                 float* grad_bias, float* grad_hidden) {
  return guarded([&] {
    using namespace asyppo;
    const view<const float, 3> h(hidden, K, N, D);
    const view<const float, 2> w(weight, K, D);
    if (values) critic_heads_forward(be, h, w, bias ? seq_view<const float>(bias, K) : seq_view<const float>{},
                                     view<float, 2>(values, K, N));
    if (grad_values)
      critic_heads_backward(be, h, w, view<const float, 2>(grad_values, K, N),
                            critic_head_gradients<float>{grad_weight ? view<float, 2>(grad_weight, K, D) : view<float, 2>{},
                                                         grad_bias ? seq_view<float>(grad_bias, K) : seq_view<float>{},
                                                         grad_hidden ? view<float, 3>(grad_hidden, K, N, D) : view<float, 3>{}});
  });
}

}  // namespace asyppo_bench_capi

// The exported functions, given make_backend(stream) -> a backend.
#define ASYPPO_BENCH_CAPI_EXPORTS(BACKEND_NAME, MAKE_BACKEND)                                                        \
  extern "C" {                                                                                                        \
  const char* asyppo_bench_backend() { return BACKEND_NAME; }                                                         \
  const char* asyppo_bench_last_error() { return asyppo_bench_capi::last_error().c_str(); }                          \
  int asyppo_bench_advantage_step_f32(void* stream, std::int64_t K, std::int64_t B, std::int64_t T,                  \
                                      const float* values, const float* rewards, const std::uint8_t* mask,           \
                                      const std::int64_t* group_ids, float* advantages, float* returns,              \
                                      std::uint8_t* adv_mask, std::uint8_t* entropy_mask, int statistics,            \
                                      double* summary_out) {                                                         \
    return asyppo_bench_capi::advantage_step(MAKE_BACKEND(stream), K, B, T, values, rewards, mask, group_ids,       \
                                             advantages, returns, adv_mask, entropy_mask, statistics, summary_out); \
  }                                                                                                                   \
  int asyppo_bench_advantage_step_to_f32(void* stream, std::int64_t K, std::int64_t B, std::int64_t T,               \
                                         const float* values, const float* rewards, const std::uint8_t* mask,        \
                                         const std::int64_t* group_ids, float* advantages, float* returns,           \
                                         std::uint8_t* adv_mask, std::uint8_t* entropy_mask, int statistics,         \
                                         double* summary_out) {                                                      \
    return asyppo_bench_capi::advantage_step_to(MAKE_BACKEND(stream), K, B, T, values, rewards, mask, group_ids,    \
                                                advantages, returns, adv_mask, entropy_mask, statistics,             \
                                                summary_out);                                                        \
  }                                                                                                                   \
  int asyppo_bench_advantage_step_to_bf16(void* stream, std::int64_t K, std::int64_t B, std::int64_t T,              \
                                          const void* values, const void* rewards, const std::uint8_t* mask,         \
                                          const std::int64_t* group_ids, float* advantages, float* returns,          \
                                          std::uint8_t* adv_mask, std::uint8_t* entropy_mask, int statistics,        \
                                          double* summary_out) {                                                     \
    return asyppo_bench_capi::advantage_step_to(MAKE_BACKEND(stream), K, B, T,                                       \
                                                static_cast<const asyppo::bfloat16*>(values),                        \
                                                static_cast<const asyppo::bfloat16*>(rewards), mask, group_ids,      \
                                                advantages, returns, adv_mask, entropy_mask, statistics,             \
                                                summary_out);                                                        \
  }                                                                                                                   \
  int asyppo_bench_actor_objective_f32(void* stream, std::int64_t B, std::int64_t T, const float* logp,              \
                                       const float* old_logp, const float* advantages, const std::uint8_t* mask,     \
                                       const std::uint8_t* adv_mask, float* grad_logp, int token_mean,               \
                                       int check_finite, double* loss_out) {                                         \
    return asyppo_bench_capi::actor_objective(MAKE_BACKEND(stream), B, T, logp, old_logp, advantages, mask,         \
                                              adv_mask, grad_logp, token_mean, check_finite, loss_out);             \
  }                                                                                                                   \
  int asyppo_bench_actor_objective_to_f32(void* stream, std::int64_t B, std::int64_t T, const float* logp,           \
                                          const float* old_logp, const float* advantages, const std::uint8_t* mask,  \
                                          const std::uint8_t* adv_mask, float* grad_logp, double tokens,             \
                                          double* total_out) {                                                       \
    return asyppo_bench_capi::actor_objective_to(MAKE_BACKEND(stream), B, T, logp, old_logp, advantages, mask,      \
                                                 adv_mask, grad_logp, tokens, total_out);                            \
  }                                                                                                                   \
  int asyppo_bench_critic_heads_f32(void* stream, std::int64_t K, std::int64_t N, std::int64_t D,                    \
                                    const float* hidden, const float* weight, const float* bias, float* values,      \
                                    const float* grad_values, float* grad_weight, float* grad_bias,                  \
                                    float* grad_hidden) {                                                            \
    return asyppo_bench_capi::critic_heads(MAKE_BACKEND(stream), K, N, D, hidden, weight, bias, values,             \
                                           grad_values, grad_weight, grad_bias, grad_hidden);                       \
  }                                                                                                                   \
  }
