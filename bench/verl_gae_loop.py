#!/usr/bin/env python3
"""The GAE loop as verl runs it, in plain PyTorch on the CPU: the "for scale" number of docs/benchmarks.md.

Written from the description in docs/peer-semantics.md, section 2.2 (not copied from verl):
loop over t = T-1 .. 0 with a carried (next value, last advantage) pair initialised to 0; at each
step one batched [B] op computes delta = r_t + gamma * nextvalue - V_t and the candidate
advantage delta + gamma * lambda * lastgaelam; where the mask is 1 the carry takes (V_t, candidate),
where it is 0 the carry is kept. The output at t is the carried advantage; returns = A + V.
(verl then whitens A over the batch; that step is not timed here, only the loop.)

Input: B x T float32, with one critic (verl has one; the K-critic mean would be one extra op before the
loop). Mask: long-tailed response lengths, like bench/bench_advantage.cpp. Prints the median of 5 runs.

Usage: /usr/bin/python3 bench/verl_gae_loop.py [--B 256] [--T 4096] [--runs 5] [--threads N]
"""
import argparse
import statistics
import time

import torch


def gae_loop(values, rewards, mask, gamma=1.0, lam=1.0):
    """values, rewards, mask: [B, T] float32 (mask 0/1), on any device. Returns (advantages, returns)."""
    with torch.no_grad():
        B, T = values.shape
        nextvalues = torch.zeros(B, dtype=values.dtype, device=values.device)
        lastgaelam = torch.zeros(B, dtype=values.dtype, device=values.device)
        out = []
        for t in reversed(range(T)):
            delta = rewards[:, t] + gamma * nextvalues - values[:, t]
            candidate = delta + gamma * lam * lastgaelam
            m = mask[:, t]
            nextvalues = values[:, t] * m + (1 - m) * nextvalues
            lastgaelam = candidate * m + (1 - m) * lastgaelam
            out.append(lastgaelam)
        advantages = torch.stack(out[::-1], dim=1)
        returns = advantages + values
        return advantages, returns


def make_inputs(B, T, seed=1):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.exp(torch.randn(B, generator=g) * 0.9 + torch.log(torch.tensor(0.2 * T))).ceil().clamp(8, T).long()
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
    values = (torch.rand(B, T, generator=g) * mask).float()
    rewards = torch.zeros(B, T)
    rewards[torch.arange(B), lengths - 1] = (torch.rand(B, generator=g) < 0.5).float()
    return values, rewards, mask


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--B", type=int, default=256)
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    values, rewards, mask = make_inputs(a.B, a.T)
    gae_loop(values, rewards, mask)  # warm-up
    times = []
    for _ in range(a.runs):
        t0 = time.perf_counter()
        adv, ret = gae_loop(values, rewards, mask)
        times.append((time.perf_counter() - t0) * 1e3)
    print(f"verl-style GAE loop, torch {torch.__version__} CPU, {torch.get_num_threads()} thread(s), "
          f"B {a.B} x T {a.T} float32: median {statistics.median(times):.1f} ms over {a.runs} runs "
          f"(min {min(times):.1f}, max {max(times):.1f})")


if __name__ == "__main__":
    main()
