#!/usr/bin/env python3
"""asyppo against PyTorch implementations of verl's functions, in one process, on one device.

    python3 bench/gpu/bench_vs_torch.py --lib build/gpu/libasyppo_bench_cuda.so            # on a GPU
    /usr/bin/python3 bench/gpu/bench_vs_torch.py --device cpu --lib build/gpu/libasyppo_bench_cpu.so \\
        --B 64 --T 512 --repeat 2                                                            # dry run

asyppo is called through ctypes (bench/gpu/capi.hpp) on the very tensors PyTorch allocated, on PyTorch's
current CUDA stream. The PyTorch side is written here from the description of verl's functions in
docs/peer-semantics.md (not copied from verl):

  advantage step  the ensemble mean and population std of K critics, verl's GAE loop over t (one batched
                  [B] step per token position, gamma = lambda = 1), the AsyPPO masks from one stable sort
                  of the valid tokens' std (the bottom floor(k N) tokens masked out of the advantages, the
                  top floor(h N) out of the entropy bonus; k = h = 0.2), advantages times the mask;
                  asyppo: advantage_step (statistics off), and advantage_step_to (the selection's
                  digits chosen on the device, the summary left there: no wait for the stream), also
                  captured once in a CUDA graph and replayed (on a GPU), and both calls again with their
                  temporaries from a memory pool that keeps its memory (on a GPU); advantage_step_to also on
                  bfloat16 values and rewards (what a bf16 critic hands over; computed in float, checked
                  against the float call on the widened values).
  actor loss      verl's vanilla clipped surrogate (clip 0.2, log-ratio clamp 20, token-mean over the
                  response mask, AsyPPO's advantage mask on the per-token loss), forward and backward
                  through autograd to d loss / d logp; asyppo: actor_objective (token-mean, the same
                  masks), which returns that gradient, and actor_objective_to (the loss left in device
                  memory: no wait for the stream; also as a CUDA graph replay on a GPU, and both calls
                  with a memory pool, as the advantage step).
  critic heads    (information) V = H W + c for K trunks and its backward, torch.einsum with autograd;
                  asyppo: critic_heads_forward / _backward (cuBLAS on a GPU).

Each case also checks that both sides computed the same thing (the maximum difference, and the fraction of
mask entries that agree). Bandwidth: the minimum bytes each call must move (inputs read once, outputs written
once), against the device-to-device copy bandwidth measured here (torch copy_ of 1 GiB, counting bytes read
and written). Results are printed as a markdown table and, with --json, written to a file.
"""
import argparse
import ctypes
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from verl_gae_loop import gae_loop as torch_gae  # noqa: E402  (verl's loop, on any device)

F32 = ctypes.POINTER(ctypes.c_float)


def load(lib_path):
    lib = ctypes.CDLL(lib_path)
    p, i64, i32, f64p = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.POINTER(ctypes.c_double)
    lib.asyppo_bench_backend.restype = ctypes.c_char_p
    lib.asyppo_bench_last_error.restype = ctypes.c_char_p
    lib.asyppo_bench_advantage_step_f32.argtypes = [p, i64, i64, i64, p, p, p, p, p, p, p, p, i32, f64p]
    lib.asyppo_bench_advantage_step_to_f32.argtypes = [p, i64, i64, i64, p, p, p, p, p, p, p, p, i32, p]
    lib.asyppo_bench_advantage_step_to_bf16.argtypes = [p, i64, i64, i64, p, p, p, p, p, p, p, p, i32, p]
    lib.asyppo_bench_actor_objective_f32.argtypes = [p, i64, i64, p, p, p, p, p, p, i32, i32, f64p]
    lib.asyppo_bench_actor_objective_to_f32.argtypes = [p, i64, i64, p, p, p, p, p, p, ctypes.c_double, p]
    lib.asyppo_bench_critic_heads_f32.argtypes = [p, i64, i64, i64, p, p, p, p, p, p, p, p]
    if hasattr(lib, "asyppo_bench_set_memory_pool"):  # the CUDA library (not an older build's)
        lib.asyppo_bench_set_memory_pool.argtypes = [i32]
        lib.asyppo_bench_set_memory_pool.restype = i32
    for f in ("asyppo_bench_advantage_step_f32", "asyppo_bench_advantage_step_to_f32",
              "asyppo_bench_advantage_step_to_bf16", "asyppo_bench_actor_objective_f32",
              "asyppo_bench_actor_objective_to_f32", "asyppo_bench_critic_heads_f32"):
        getattr(lib, f).restype = i32
    return lib


def check(lib, rc):
    if rc != 0:
        raise RuntimeError("asyppo: " + lib.asyppo_bench_last_error().decode())


def ptr(t):
    return ctypes.c_void_p(t.data_ptr()) if t is not None else None


class Timer:
    """Best wall time of `repeat` calls after one warm-up, with the device synchronised around each."""

    def __init__(self, device):
        self.device = device

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def best_ms(self, fn, repeat):
        fn()
        self.sync()
        best = math.inf
        for _ in range(repeat):
            self.sync()
            t0 = time.perf_counter()
            fn()
            self.sync()
            best = min(best, (time.perf_counter() - t0) * 1e3)
        return best


# ---- inputs --------------------------------------------------------------------------------------------

def graph_replay_ms(call, timer, repeat):
    """call(stream) captured once in a CUDA graph (torch.cuda.graph, on its capture stream) and timed by
    replaying it: what a trainer capturing the step pays per step. Returns (ms, None), or (None, the
    error) when the capture fails (a call that waits for the device cannot be captured)."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the default stream, as torch.cuda.graph asks
            call(ctypes.c_void_p(side.cuda_stream))
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            call(ctypes.c_void_p(torch.cuda.current_stream().cuda_stream))
        return timer.best_ms(g.replay, repeat), None
    except Exception as e:  # noqa: BLE001  (reported in the checks)
        return None, repr(e)


TO_PROFILE = []  # (label, call) of asyppo's calls, for --profile


def kernel_profile(label, fn, timer, top=14):
    """The kernels one call launches, with their device times (torch.profiler: CUPTI sees every kernel of
    the process, ours launched through ctypes too)."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    timer.sync()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        timer.sync()
    rows = []
    for e in prof.key_averages():
        us = getattr(e, "device_time_total", None)
        if us is None:
            us = getattr(e, "cuda_time_total", 0.0)
        if us > 0:
            rows.append((us, e.count, e.key))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    lines = [f"## {label}: {sum(r[1] for r in rows)} kernel/memcpy launches, {total / 1e3:.3f} ms of device time"]
    for us, n, key in rows[:top]:
        lines.append(f"  {us / 1e3:8.3f} ms {n:4d}x  {key[:150]}")
    return "\n".join(lines)


def make_rollout(B, T, K, device, seed=1):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.exp(torch.randn(B, generator=g) * 0.9 + math.log(0.2 * T)).ceil().clamp(8, T).long()
    mask = torch.arange(T)[None, :] < lengths[:, None]
    values = torch.rand(K, B, T, generator=g) * mask
    rewards = torch.zeros(B, T)
    rewards[torch.arange(B), lengths - 1] = (torch.rand(B, generator=g) < 0.5).float()
    group_ids = torch.arange(B) // 8
    logp = -torch.rand(B, T, generator=g) * 2
    old_logp = logp + 0.05 * torch.randn(B, T, generator=g)
    adv = torch.randn(B, T, generator=g) * mask
    to = lambda x: x.to(device).contiguous()
    return dict(values=to(values), rewards=to(rewards), mask_u8=to(mask.to(torch.uint8)), mask_f=to(mask.float()),
                group_ids=to(group_ids), logp=to(logp), old_logp=to(old_logp), adv=to(adv))


# ---- PyTorch implementations of verl's functions (+ AsyPPO's masks) ----------------------------------------

def torch_advantage_step(values, rewards, mask_f, k=0.2, h=0.2):
    vbar = values.mean(0)
    sigma = values.std(0, unbiased=False)
    adv, ret = torch_gae(vbar, rewards, mask_f)
    valid = mask_f.bool().flatten()
    idx = valid.nonzero().squeeze(1)
    order = torch.sort(sigma.flatten()[idx], stable=True).indices
    N = idx.numel()
    nk, nh = int(math.floor(k * N)), int(math.floor(h * N))
    adv_mask = valid.clone()
    adv_mask[idx[order[:nk]]] = False
    ent_mask = valid.clone()
    if nh > 0:
        ent_mask[idx[order[N - nh:]]] = False
    adv_mask = adv_mask.view_as(mask_f)
    ent_mask = ent_mask.view_as(mask_f)
    return adv * adv_mask * mask_f, ret * mask_f, adv_mask, ent_mask


def torch_actor_loss(logp, old_logp, adv, mask_f, adv_mask_f, clip=0.2):
    logp = logp.detach().requires_grad_(True)
    log_ratio = torch.clamp(logp - old_logp, -20.0, 20.0)
    ratio = torch.exp(log_ratio)
    pg1 = -adv * ratio
    pg2 = -adv * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    per_token = torch.maximum(pg1, pg2) * adv_mask_f
    loss = (per_token * mask_f).sum() / mask_f.sum().clamp(min=1.0)
    loss.backward()
    return loss.detach(), logp.grad


def torch_heads(h, w, c, g):
    h = h.detach().requires_grad_(True)
    w = w.detach().requires_grad_(True)
    c = c.detach().requires_grad_(True)
    v = torch.einsum("knd,kd->kn", h, w) + c[:, None]
    (v * g).sum().backward()
    return v.detach(), w.grad, c.grad, h.grad


# ---- the cases -------------------------------------------------------------------------------------------

def copy_bandwidth(device, timer, repeat):
    n = (1 << 28) if device.type == "cuda" else (1 << 24)  # 1 GiB of float32 on a GPU, 64 MiB on a CPU
    a = torch.ones(n, device=device)
    b = torch.empty_like(a)
    ms = timer.best_ms(lambda: b.copy_(a), repeat)
    return 2 * a.numel() * 4 / (ms * 1e-3)


def advantage_case(lib, stream, d, K, B, T, timer, repeat, torch_repeat):
    dev = d["values"].device
    adv = torch.empty(B, T, device=dev)
    ret = torch.empty(B, T, device=dev)
    am = torch.empty(B, T, dtype=torch.uint8, device=dev)
    em = torch.empty(B, T, dtype=torch.uint8, device=dev)
    summary = (ctypes.c_double * 4)()

    def run():
        check(lib, lib.asyppo_bench_advantage_step_f32(stream, K, B, T, ptr(d["values"]), ptr(d["rewards"]),
                                                        ptr(d["mask_u8"]), ptr(d["group_ids"]), ptr(adv), ptr(ret),
                                                        ptr(am), ptr(em), 0, summary))

    ours = timer.best_ms(run, repeat)
    theirs = timer.best_ms(lambda: torch_advantage_step(d["values"], d["rewards"], d["mask_f"]), torch_repeat)
    t_adv, t_ret, t_am, t_em = torch_advantage_step(d["values"], d["rewards"], d["mask_f"])
    valid = d["mask_f"].bool()
    agree = lambda x, y: float(((x.bool() == y.bool()) | ~valid).float().mean())
    both = valid & am.bool() & t_am
    checks = {
        "max |adv diff| where both masks keep the token": float((adv - t_adv)[both].abs().max()) if both.any() else 0.0,
        "max |return diff|": float(((ret - t_ret) * d["mask_f"]).abs().max()),
        "adv mask agreement": agree(am, t_am),
        "entropy mask agreement": agree(em, t_em),
    }
    # The device-result variant (advantage_step_to: digits of the selection chosen on the device, the
    # summary left there, no finiteness check): what a CUDA-graph step would call. Same outputs expected.
    summary_to = torch.zeros(4, dtype=torch.float64, device=dev)
    adv2, ret2, am2, em2 = (torch.empty_like(adv), torch.empty_like(ret), torch.empty_like(am), torch.empty_like(em))

    def run_to(st=stream):
        check(lib, lib.asyppo_bench_advantage_step_to_f32(st, K, B, T, ptr(d["values"]), ptr(d["rewards"]),
                                                           ptr(d["mask_u8"]), ptr(d["group_ids"]), ptr(adv2), ptr(ret2),
                                                           ptr(am2), ptr(em2), 0, ptr(summary_to)))

    def same_as_eager():
        return bool(torch.equal(adv2, adv) and torch.equal(ret2, ret) and torch.equal(am2, am) and torch.equal(em2, em)
                    and all(x == y or (math.isnan(x) and math.isnan(y))
                            for x, y in zip(summary_to.tolist(), list(summary))))

    ours_to = timer.best_ms(run_to, repeat)
    TO_PROFILE.append(("advantage step (eager, summary to the host)", run))
    TO_PROFILE.append(("advantage step (device result)", run_to))
    checks["device-result variant: same advantages, masks and summary"] = same_as_eager()
    graph_ms = None
    if dev.type == "cuda":
        for t in (adv2, ret2, am2, em2, summary_to):
            t.zero_()
        graph_ms, err = graph_replay_ms(run_to, timer, repeat)
        checks["CUDA graph replay: same advantages, masks and summary"] = same_as_eager() if err is None else err
    bytes_min = B * T * (4 * K + 4 + 1 + 4 + 4 + 1 + 1)  # V, r, m in; A, R, I^A, I^H out
    return ours, ours_to, graph_ms, theirs, bytes_min, checks


def advantage_bf16_case(lib, stream, d, K, B, T, timer, repeat):
    """advantage_step_to on bfloat16 values and rewards; the float call on the widened values must give the
    same bits."""
    v16, r16 = d["values"].to(torch.bfloat16), d["rewards"].to(torch.bfloat16)
    wide = dict(values=v16.float(), rewards=r16.float())
    dev = v16.device
    outs = [(torch.empty(B, T, device=dev), torch.empty(B, T, device=dev),
             torch.empty(B, T, dtype=torch.uint8, device=dev), torch.empty(B, T, dtype=torch.uint8, device=dev),
             torch.zeros(4, dtype=torch.float64, device=dev)) for _ in range(2)]

    def call(fn, v, r, o, st=stream):
        check(lib, fn(st, K, B, T, ptr(v), ptr(r), ptr(d["mask_u8"]), ptr(d["group_ids"]), *(ptr(x) for x in o[:4]), 0,
                      ptr(o[4])))

    ours = timer.best_ms(lambda: call(lib.asyppo_bench_advantage_step_to_bf16, v16, r16, outs[0]), repeat)
    TO_PROFILE.append(("advantage step (device result, bfloat16)",
                       lambda: call(lib.asyppo_bench_advantage_step_to_bf16, v16, r16, outs[0])))
    call(lib.asyppo_bench_advantage_step_to_f32, wide["values"], wide["rewards"], outs[1])
    timer.sync()
    same = all(torch.equal(x, y) or (x.dtype == torch.float64 and torch.equal(x.isnan(), y.isnan()) and
                                     torch.equal(x.nan_to_num(), y.nan_to_num())) for x, y in zip(*outs))
    bytes_min = B * T * (2 * K + 2 + 1 + 4 + 4 + 1 + 1)  # V, r (bf16), m in; A, R, I^A, I^H out
    return ours, bytes_min, {"the float call's bits on the widened values": same}


def actor_case(lib, stream, d, B, T, timer, repeat):
    dev = d["logp"].device
    grad = torch.empty(B, T, device=dev)
    loss = ctypes.c_double()
    am = (d["adv"].abs() > 0.3).to(torch.uint8) * d["mask_u8"]  # an advantage mask of the right density

    def run():
        check(lib, lib.asyppo_bench_actor_objective_f32(stream, B, T, ptr(d["logp"]), ptr(d["old_logp"]), ptr(d["adv"]),
                                                         ptr(d["mask_u8"]), ptr(am), ptr(grad), 1, 0, ctypes.byref(loss)))

    ours = timer.best_ms(run, repeat)
    amf = am.float()
    theirs = timer.best_ms(lambda: torch_actor_loss(d["logp"], d["old_logp"], d["adv"], d["mask_f"], amf), repeat)
    t_loss, t_grad = torch_actor_loss(d["logp"], d["old_logp"], d["adv"], d["mask_f"], amf)
    scale = float(t_grad.abs().max()) or 1.0
    checks = {
        "loss (asyppo, torch)": [loss.value, float(t_loss)],
        "max |grad diff| / max |grad|": float((grad - t_grad).abs().max()) / scale,
    }
    # The device-result variant (actor_objective_to: explicit token count, no finiteness check, the loss
    # left on the device): what a CUDA-graph step would call.
    total = torch.zeros(1, dtype=torch.float64, device=dev)
    tokens = float(d["mask_f"].sum())

    def run_to(st=stream):
        check(lib, lib.asyppo_bench_actor_objective_to_f32(st, B, T, ptr(d["logp"]), ptr(d["old_logp"]),
                                                            ptr(d["adv"]), ptr(d["mask_u8"]), ptr(am), ptr(grad), tokens,
                                                            ptr(total)))

    ours_to = timer.best_ms(run_to, repeat)
    TO_PROFILE.append(("actor loss + gradient (eager)", run))
    TO_PROFILE.append(("actor loss + gradient (device result)", run_to))
    checks["device-result loss"] = float(total[0])
    graph_ms = None
    if dev.type == "cuda":
        total.zero_()
        graph_ms, err = graph_replay_ms(run_to, timer, repeat)
        checks["CUDA graph replay loss"] = float(total[0]) if err is None else err
    bytes_min = B * T * (4 * 3 + 1 + 1 + 4)  # logp, old_logp, A, m, I^A in; dL/dlogp out
    return ours, ours_to, graph_ms, theirs, bytes_min, checks


def heads_case(lib, stream, K, N, D, device, timer, repeat):
    g = torch.Generator().manual_seed(5)
    h = torch.randn(K, N, D, generator=g).to(device)
    w = (torch.randn(K, D, generator=g) / math.sqrt(D)).to(device)
    c = torch.randn(K, generator=g).to(device)
    gv = torch.randn(K, N, generator=g).to(device)
    v, dw, dc, dh = (torch.empty(K, N, device=device), torch.empty(K, D, device=device), torch.empty(K, device=device),
                     torch.empty(K, N, D, device=device))

    def run():
        check(lib, lib.asyppo_bench_critic_heads_f32(stream, K, N, D, ptr(h), ptr(w), ptr(c), ptr(v), ptr(gv), ptr(dw),
                                                      ptr(dc), ptr(dh)))

    ours = timer.best_ms(run, repeat)
    theirs = timer.best_ms(lambda: torch_heads(h, w, c, gv), repeat)
    tv, tdw, tdc, tdh = torch_heads(h, w, c, gv)
    rel = lambda x, y: float((x - y).abs().max()) / max(float(y.abs().max()), 1e-30)
    checks = {"values rel diff": rel(v, tv), "dW rel diff": rel(dw, tdw), "dc rel diff": rel(dc, tdc),
              "dH rel diff": rel(dh, tdh)}
    bytes_min = 4 * (2 * K * N * D + K * N) + 4 * (K * N * D + K * N)  # H read twice (forward, dW), dH written
    return ours, theirs, bytes_min, checks


def ncu_calls(lib, stream, d, K, B, T):
    """--ncu: one advantage_step and one actor_objective call inside cudaProfilerStart/Stop, after one
    warm-up each, and nothing else (no PyTorch reference): for `ncu --profile-from-start off`."""
    dev = d["values"].device
    adv, ret = torch.empty(B, T, device=dev), torch.empty(B, T, device=dev)
    am, em = (torch.empty(B, T, dtype=torch.uint8, device=dev) for _ in range(2))
    grad = torch.empty(B, T, device=dev)
    summary, loss = (ctypes.c_double * 4)(), ctypes.c_double()
    amask = (d["adv"].abs() > 0.3).to(torch.uint8) * d["mask_u8"]

    def step():
        check(lib, lib.asyppo_bench_advantage_step_f32(stream, K, B, T, ptr(d["values"]), ptr(d["rewards"]),
                                                        ptr(d["mask_u8"]), ptr(d["group_ids"]), ptr(adv), ptr(ret),
                                                        ptr(am), ptr(em), 0, summary))

    def actor():
        check(lib, lib.asyppo_bench_actor_objective_f32(stream, B, T, ptr(d["logp"]), ptr(d["old_logp"]), ptr(d["adv"]),
                                                         ptr(d["mask_u8"]), ptr(amask), ptr(grad), 1, 0, ctypes.byref(loss)))

    step(), actor()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    step(), actor()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True, help="libasyppo_bench_{cuda,cpu}.so (bench/gpu/capi_*.c*)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--B", type=int, default=1024)
    ap.add_argument("--T", type=int, default=8192)
    ap.add_argument("--K", type=int, default=2)
    ap.add_argument("--heads", default="16384x4096", help="N x D of the critic-heads case ('' to skip)")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--torch-gae-repeat", type=int, default=2, help="the Python GAE loop is slow: fewer runs")
    ap.add_argument("--json", default="")
    ap.add_argument("--profile", default="", help="write the kernels of each asyppo call here (CUDA only)")
    ap.add_argument("--ncu", action="store_true", help="only one advantage step and one actor call, for ncu")
    a = ap.parse_args()

    device = torch.device(a.device)
    lib = load(a.lib)
    backend = lib.asyppo_bench_backend().decode()
    stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream) if device.type == "cuda" else ctypes.c_void_p(0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    timer = Timer(device)
    torch.manual_seed(0)

    if a.ncu:
        ncu_calls(lib, stream, make_rollout(a.B, a.T, a.K, device), a.K, a.B, a.T)
        return
    copy_bps = copy_bandwidth(device, timer, a.repeat)
    d = make_rollout(a.B, a.T, a.K, device)
    rows = []
    failed = []

    def attempt(label, fn, *args):
        """One case; a failure is reported and the other cases still run."""
        try:
            return fn(*args)
        except Exception:  # noqa: BLE001
            import traceback
            failed.append(label)
            print(f"{label}: FAILED\n{traceback.format_exc()}", file=sys.stderr)
            return None

    def add_calls(label, ours, ours_to, graph_ms, theirs, nbytes, ck):
        """The eager call, its device-result variant and (on a GPU) that variant's graph replay."""
        rows.append((label, ours, theirs, nbytes, ck))
        rows.append((f"{label} (device result)", ours_to, theirs, nbytes, {}))
        if graph_ms is not None:
            rows.append((f"{label} (device result, CUDA graph replay)", graph_ms, theirs, nbytes, {}))

    theirs_adv = math.nan
    r = attempt("advantage step", advantage_case, lib, stream, d, a.K, a.B, a.T, timer, a.repeat, a.torch_gae_repeat)
    if r:
        theirs_adv = r[3]
        add_calls("advantage step", *r)
    r = attempt("advantage step, bfloat16", advantage_bf16_case, lib, stream, d, a.K, a.B, a.T, timer, a.repeat)
    if r:
        ours16, nbytes16, ck16 = r
        rows.append(("advantage step (device result, bfloat16 values and rewards)", ours16, theirs_adv, nbytes16, ck16))
    r = attempt("actor loss", actor_case, lib, stream, d, a.B, a.T, timer, a.repeat)
    if r:
        add_calls("actor loss + gradient", *r)
    # The same calls with their temporaries from a pool that keeps its memory (asyppo::cuda_memory_pool):
    # the device's default pool, which the calls above use, hands its free memory back at every
    # synchronisation (the timer synchronises around each call), so each call maps its temporaries anew.
    if device.type == "cuda" and hasattr(lib, "asyppo_bench_set_memory_pool"):
        base = {label: (theirs, nbytes) for label, _, theirs, nbytes, _ in rows}
        lib.asyppo_bench_set_memory_pool(1)
        for label, fn in [c for c in TO_PROFILE if "bfloat16" not in c[0]]:
            case = "advantage step" if label.startswith("advantage step") else "actor loss + gradient"
            if case in base:
                ms = attempt(f"{label}, memory pool", timer.best_ms, fn, a.repeat)
                if ms is not None:
                    rows.append((f"{label}, memory pool", ms, *base[case], {}))
        lib.asyppo_bench_set_memory_pool(0)
    if a.heads:
        N, D = (int(x) for x in a.heads.split("x"))
        r = attempt("critic heads", heads_case, lib, stream, a.K, N, D, device, timer, a.repeat)
        if r:
            ours, theirs, nbytes, ck = r
            rows.append((f"critic heads fwd+bwd ({N}x{D})", ours, theirs, nbytes, ck))

    print(f"device: {name}; asyppo backend: {backend}; torch {torch.__version__}; B x T = {a.B} x {a.T}, K = {a.K}, "
          f"float32")
    print(f"device copy bandwidth (torch copy_, read + write): {copy_bps / 1e9:.1f} GB/s")
    print()
    print("| case | asyppo ms | GB/s | % of copy | torch (verl) ms | speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    out = {"device": name, "backend": backend, "torch": torch.__version__, "B": a.B, "T": a.T, "K": a.K,
           "copy_bytes_per_s": copy_bps, "cases": [], "failed": failed}
    for label, ours, theirs, nbytes, ck in rows:
        bps = nbytes / (ours * 1e-3)
        print(f"| {label} | {ours:.3f} | {bps / 1e9:.1f} | {100 * bps / copy_bps:.0f}% | {theirs:.3f} | "
              f"{theirs / ours:.1f}x |")
        out["cases"].append({"case": label, "asyppo_ms": ours, "torch_ms": theirs, "min_bytes": nbytes,
                             "bytes_per_s": bps, "fraction_of_copy": bps / copy_bps, "speedup": theirs / ours,
                             "checks": ck})
    print()
    for label, *_, ck in rows:
        if ck:
            print(f"{label}: " + "; ".join(f"{k} = {v}" for k, v in ck.items()))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    if a.profile and device.type == "cuda":
        with open(a.profile, "w") as f:
            for label, fn in TO_PROFILE:
                try:
                    text = kernel_profile(label, fn, timer)
                except Exception as e:  # noqa: BLE001  (the profile is information only)
                    text = f"## {label}: profile failed: {e!r}"
                print(text)
                f.write(text + "\n")
    if failed:
        print("failed cases: " + ", ".join(failed))
        sys.exit(1)


if __name__ == "__main__":
    main()
