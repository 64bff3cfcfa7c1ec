#!/usr/bin/env python3
"""verl's vanilla PPO policy loss, forward + backward, in plain PyTorch on the CPU: the "for scale"
number of the Losses section of docs/benchmarks.md (issue 3).

Written from the description in docs/peer-semantics.md, section 2.4 (not copied from verl):
  ratio = exp(clamp(logp - old_logp, -20, 20))
  l1 = -A ratio,  l2 = -A clip(ratio, 1 - eps_low, 1 + eps_high),  clip1 = max(l1, l2)
  dual clip where A < 0:  l = min(clip1, -c A)  (c = clip_ratio_c = 3), else l = clip1
  loss = token-mean of l over the response mask (sum(l m) / sum(m))
  metrics (masked means over the micro-batch mask): pg_clipfrac = 1[l2 > l1],
  pg_clipfrac_lower = 1[clip1 > -c A] 1[A < 0], ppo_kl = old_logp - logp.
Timed: the forward (loss and the three metrics, as Python floats) plus loss.backward() into
logp.grad, float32, B 256 x T 4096 by default. Inputs like bench/bench_losses.cpp: long-tailed response
lengths (median 0.2 T), log-probs with a small policy drift, eps_low 0.2, eps_high 0.28. No rollout
importance weights. Prints the median of 5 runs (after one warm-up).

Usage: /usr/bin/python3 bench/verl_policy_loss.py [--B 256] [--T 4096] [--runs 5] [--threads N]
"""
import argparse
import statistics
import time

import torch


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum()


def vanilla_policy_loss(logp, old_logp, advantages, mask, eps_low=0.2, eps_high=0.28, clip_ratio_c=3.0):
    """All [B, T] float32; mask 0/1 float. Returns (pg_loss tensor, pg_clipfrac, ppo_kl, pg_clipfrac_lower)."""
    negative_approx_kl = logp - old_logp
    negative_approx_kl = torch.clamp(negative_approx_kl, min=-20.0, max=20.0)
    ratio = torch.exp(negative_approx_kl)
    ppo_kl = masked_mean(old_logp - logp.detach(), mask)

    pg_losses1 = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    clip_pg_losses1 = torch.maximum(pg_losses1, pg_losses2)
    pg_clipfrac = masked_mean(torch.gt(pg_losses2, pg_losses1).float(), mask)

    pg_losses3 = -advantages * clip_ratio_c
    clip_pg_losses2 = torch.min(pg_losses3, clip_pg_losses1)
    pg_clipfrac_lower = masked_mean(torch.gt(clip_pg_losses1, pg_losses3) * (advantages < 0).float(), mask)

    pg_losses = torch.where(advantages < 0, clip_pg_losses2, clip_pg_losses1)
    pg_loss = masked_mean(pg_losses, mask)  # token-mean
    return pg_loss, pg_clipfrac, ppo_kl, pg_clipfrac_lower


def make_inputs(B, T, seed=1):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.exp(torch.randn(B, generator=g) * 0.9 + torch.log(torch.tensor(0.2 * T))).ceil().clamp(8, T).long()
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
    logp = (-(torch.randn(B, T, generator=g).abs() * 1.5) - 0.01) * mask
    old_logp = (logp - 0.15 * torch.randn(B, T, generator=g)) * mask
    advantages = (torch.randn(B, 1, generator=g) + 0.3 * torch.randn(B, T, generator=g)) * mask
    return logp, old_logp, advantages, mask


def step(logp0, old_logp, advantages, mask):
    logp = logp0.detach().requires_grad_(True)
    loss, clipfrac, kl, clipfrac_lower = vanilla_policy_loss(logp, old_logp, advantages, mask)
    loss.backward()
    return loss.item(), clipfrac.item(), kl.item(), clipfrac_lower.item(), logp.grad


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--B", type=int, default=256)
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    logp, old_logp, advantages, mask = make_inputs(a.B, a.T)
    step(logp, old_logp, advantages, mask)  # warm-up
    times = []
    for _ in range(a.runs):
        t0 = time.perf_counter()
        loss, clipfrac, kl, lower, grad = step(logp, old_logp, advantages, mask)
        times.append((time.perf_counter() - t0) * 1e3)
    print(f"verl vanilla PPO policy loss fwd+bwd, torch {torch.__version__} CPU, {torch.get_num_threads()} thread(s), "
          f"B {a.B} x T {a.T} float32 ({int(mask.sum().item())} valid tokens): median {statistics.median(times):.1f} ms "
          f"over {a.runs} runs (min {min(times):.1f}, max {max(times):.1f}); loss {loss:.6g}, pg_clipfrac {clipfrac:.4f}, "
          f"pg_clipfrac_lower {lower:.5f}, ppo_kl {kl:.5f}")


if __name__ == "__main__":
    main()
