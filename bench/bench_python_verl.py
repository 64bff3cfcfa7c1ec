#!/usr/bin/env python3
"""asyppo.verl against an equivalent plain PyTorch implementation, same process, CPU, B x T = 256 x 4096.

    PYTHONPATH=build/release/python /usr/bin/python3 bench/bench_python_verl.py [--threads N] [--repeat R]

Cases (float32, response masks with padding and multi-turn holes):
  gae          compute_gae_advantage_return (skip-mask GAE + verl whitening) vs a torch loop over T
  grpo         compute_grpo_outcome_advantage (groups of 8) vs vectorised torch (index_add group stats)
  policy_loss  compute_policy_loss_vanilla forward + backward vs torch autograd (token-mean, dual clip)
  value_loss   compute_value_loss forward + backward vs torch autograd (token-mean)
Prints the best-of-R wall time of each and the speed-up. torch and asyppo use the same thread count.
"""
import argparse
import time

import numpy as np
import torch

import asyppo
from asyppo import verl as V


def best(fn, repeat):
    fn()  # warm-up
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts) * 1e3


def torch_gae(r, v, m, gamma, lam):
    B, T = r.shape
    nv = torch.zeros(B)
    last = torch.zeros(B)
    adv = torch.zeros(B, T)
    for t in reversed(range(T)):
        delta = r[:, t] + gamma * nv - v[:, t]
        cand = delta + gamma * lam * last
        nv = m[:, t] * v[:, t] + (1 - m[:, t]) * nv
        last = m[:, t] * cand + (1 - m[:, t]) * last
        adv[:, t] = last
    ret = adv + v
    n = m.sum()
    mu = (adv * m).sum() / (n + 1e-8)
    var = (((adv - mu) ** 2) * m).sum() / (n + 1e-8) * n / (n - 1)
    return (adv - mu) * torch.rsqrt(var + 1e-8), ret


def torch_grpo(r, m, ids, ngroups, eps=1e-6):
    s = r.sum(-1)
    cnt = torch.zeros(ngroups).index_add_(0, ids, torch.ones_like(s))
    mean = torch.zeros(ngroups).index_add_(0, ids, s) / cnt
    d = s - mean[ids]
    var = torch.zeros(ngroups).index_add_(0, ids, d * d) / (cnt - 1).clamp(min=1)
    single = cnt[ids] == 1
    a = torch.where(single, s, d) / (torch.where(single, torch.ones_like(s), var[ids].sqrt()) + eps)
    return a[:, None] * m


def torch_policy(old, lp, A, m, cl=0.2, ch=0.2, c=3.0):
    ratio = torch.exp(torch.clamp(lp - old, -20.0, 20.0))
    l1 = -A * ratio
    l2 = -A * torch.clamp(ratio, 1 - cl, 1 + ch)
    c1 = torch.maximum(l1, l2)
    l = torch.where(A < 0, torch.min(-A * c, c1), c1)
    return (l * m).sum() / m.sum()


def torch_value(vp, R, vold, m, c=0.5):
    vc = torch.clamp(vp, vold - c, vold + c)
    return 0.5 * (torch.max((vp - R) ** 2, (vc - R) ** 2) * m).sum() / m.sum()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("-B", type=int, default=256)
    ap.add_argument("-T", type=int, default=4096)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    asyppo.set_num_threads(a.threads)
    B, T = a.B, a.T
    g = torch.Generator().manual_seed(0)
    L = torch.randint(T // 8, T + 1, (B,), generator=g)
    m = (torch.arange(T)[None] < L[:, None]).float()
    m[::4, 100:164] = 0  # multi-turn holes
    r = torch.zeros(B, T)
    r[torch.arange(B), (L - 1)] = torch.randint(0, 2, (B,), generator=g).float()
    v = torch.randn(B, T, generator=g) * m
    ids = torch.arange(B) // 8
    index = np.array(["uid%d" % i for i in ids.tolist()], dtype=object)
    lp = torch.randn(B, T, generator=g) * 0.3 - 1
    old = lp + torch.randn(B, T, generator=g) * 0.3
    A = torch.randn(B, T, generator=g)
    R = torch.randn(B, T, generator=g)
    vold = torch.randn(B, T, generator=g)

    # correctness check (same numbers)
    ours = V.compute_gae_advantage_return(r, v, m, 1.0, 0.95)[0]
    ref = torch_gae(r, v, m, 1.0, 0.95)[0]
    assert torch.allclose(ours, ref, atol=5e-3), (ours - ref).abs().max()
    assert torch.allclose(V.compute_grpo_outcome_advantage(r, m, index)[0], torch_grpo(r, m, ids, B // 8), atol=1e-5)

    def ours_pl():
        x = lp.clone().requires_grad_(True)
        V.compute_policy_loss_vanilla(old, x, A, m, "token-mean")[0].backward()

    def ref_pl():
        x = lp.clone().requires_grad_(True)
        torch_policy(old, x, A, m).backward()

    def ours_vl():
        x = v.clone().requires_grad_(True)
        V.compute_value_loss(x, R, vold, m, 0.5)[0].backward()

    def ref_vl():
        x = v.clone().requires_grad_(True)
        torch_value(x, R, vold, m).backward()

    cases = [
        ("gae (+ whitening)", lambda: V.compute_gae_advantage_return(r, v, m, 1.0, 0.95),
         lambda: torch_gae(r, v, m, 1.0, 0.95), max(1, a.repeat // 2)),
        ("grpo", lambda: V.compute_grpo_outcome_advantage(r, m, index), lambda: torch_grpo(r, m, ids, B // 8),
         a.repeat),
        ("policy loss fwd+bwd", ours_pl, ref_pl, a.repeat),
        ("value loss fwd+bwd", ours_vl, ref_vl, a.repeat),
    ]
    print("B x T = %d x %d, float32, threads = %d (torch %s, asyppo %s)" % (B, T, a.threads, torch.__version__,
                                                                          asyppo.__version__))
    print("%-22s %12s %12s %9s" % ("case", "asyppo ms", "torch ms", "speed-up"))
    for name, f_ours, f_ref, rep in cases:
        to = best(f_ours, rep)
        tr = best(f_ref, rep)
        print("%-22s %12.2f %12.2f %8.1fx" % (name, to, tr, tr / to))


if __name__ == "__main__":
    main()
