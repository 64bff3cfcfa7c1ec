"""asyppo.openrlhf against a NumPy transcription of OpenRLHF's documented behaviour (peer-semantics.md
2.2-2.9) and, with torch, gradients against autograd through a plain PyTorch implementation written here."""
import numpy as np
import pytest

from asyppo import openrlhf as O

torch = pytest.importorskip("torch")


def doc_case():
    """The GAE case of peer-semantics 4.3: padding, a multi-turn hole, a full row."""
    m = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 1, 1], [1, 1, 1, 1, 1, 1]], np.float32)
    r = np.zeros((3, 6), np.float32)
    r[0, 2], r[1, 5], r[2, 5] = 1.0, -1.0, 0.5
    v = np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32)  # nonzero at masked positions too
    return r, v, m


def rand_case(B=8, T=12, seed=1, dtype=np.float64):
    rng = np.random.default_rng(seed)
    L = rng.integers(1, T + 1, size=B)
    m = (np.arange(T)[None] < L[:, None]).astype(dtype)
    m[2, :] = 0  # an empty row
    m[3, 2:4] = 0  # a hole
    m[0, :] = 1
    return rng, m


# ---- NumPy transcription of OpenRLHF ---------------------------------------------------------------

def np_gae(v, r, m, gamma, lambd):
    """V <- V m, r <- r m, textbook loop over every position; returns = A + V (masked)."""
    v = v * m
    r = r * m
    B, T = r.shape
    adv = np.zeros((B, T))
    last = np.zeros(B)
    for t in reversed(range(T)):
        nv = v[:, t + 1] if t + 1 < T else 0.0
        delta = r[:, t] + gamma * nv - v[:, t]
        last = delta + gamma * lambd * last
        adv[:, t] = last
    return adv, adv + v


def np_returns(r, m, gamma):
    r = r * m
    B, T = r.shape
    out = np.zeros((B, T))
    run = np.zeros(B)
    for t in reversed(range(T)):
        run = r[:, t] + gamma * run
        out[:, t] = run
    return out


def np_group(s, n, est):
    g = s.reshape(-1, n)
    if est == "rloo":
        out = g - (g.sum(1, keepdims=True) - g) / (n - 1)
    elif est in ("reinforce_baseline", "dr_grpo"):
        out = g - g.mean(1, keepdims=True)
    else:
        out = (g - g.mean(1, keepdims=True)) / (g.std(1, ddof=1, keepdims=True) + 1e-9)
    return out.reshape(s.shape)


def np_whiten(x, m, std_norm=True):
    n = m.sum()
    mu = (x * m).sum() / n
    if not std_norm:
        return x - mu
    var = ((x - mu) ** 2 * m).sum() / n
    return (x - mu) / np.sqrt(max(var, 1e-8))


def np_kl(lp, ref, est):
    d = lp.astype(np.float32) - ref.astype(np.float32)
    if est == "k1":
        k = d
    elif est == "k2":
        k = d * d / np.float32(2)
    else:
        with np.errstate(over="ignore"):
            k = np.exp(-d) - 1 - (-d)
    return np.clip(k, -10, 10).astype(np.float32)


def np_agg(l, m, token_level=True, dp=1, ntok=None, bsz=None):
    S = (l * m).sum(1)
    n = m.sum(1)
    if token_level:
        return S.sum() / m.sum() if ntok is None else S.sum() / ntok * dp
    seq = S / (n + 1e-8)
    keep = n > 0
    return seq[keep].mean() if bsz is None else seq[keep].sum() / bsz * dp


# ---- plain PyTorch implementations (for autograd) -----------------------------------------------------

def t_agg(l, m, token_level=True, dp=1, ntok=None, bsz=None):
    if token_level:
        s = (l * m).sum()
        return s / m.sum() if ntok is None else s / ntok * dp
    n = m.sum(-1)
    seq = (l * m).sum(-1) / (n + 1e-8)
    keep = (n > 0).to(l.dtype)
    return (seq * keep).sum() / keep.sum() if bsz is None else (seq * keep).sum() / bsz * dp


def t_policy(lp, old, A, m, lo=0.2, hi=0.2, c=None, token_level=True, w=None, **agg):
    raw = lp - old
    ratio = torch.clamp(raw, -20.0, 20.0).exp()
    s1 = ratio * A
    s2 = ratio.clamp(1 - lo, 1 + hi) * A
    if c is None:
        l = -torch.min(s1, s2)
    else:
        c1 = torch.min(s1, s2)
        l = -torch.where(A < 0, torch.max(c1, c * A), c1)
    if w is not None:
        l = l * w
    loss = t_agg(l, m, token_level, **agg)
    clip_ratio = ((s2 < s1).float() * m).sum() / m.sum()
    ppo_kl = (-raw.detach() * m).sum() / m.sum()
    return loss, clip_ratio, ppo_kl


def t_value(v, vold, R, m, c=None, token_level=True, **agg):
    if c is None:
        l = (v - R) ** 2
    else:
        vc = vold + (v - vold).clamp(-c, c)
        l = torch.max((vc - R) ** 2, (v - R) ** 2)
    return 0.5 * t_agg(l, m, token_level, **agg)


def t_kl(lp, ref, est):
    d = lp.float() - ref.float()
    if est == "k1":
        k = d
    elif est == "k2":
        k = d ** 2 / 2.0
    else:
        k = (-d).exp() - 1 - (-d)
    return k.clamp(min=-10, max=10)


# ---- advantages and returns -------------------------------------------------------------------------

def test_gae_doc_case_no_skipping():
    r, v, m = doc_case()
    adv, ret = O.get_advantages_and_returns(torch.from_numpy(v), torch.from_numpy(r), torch.from_numpy(m).bool(),
                                            1.0, 0.95)
    ea, er = np_gae(v.astype(np.float64), r.astype(np.float64), m.astype(np.float64), 1.0, 0.95)
    assert isinstance(adv, torch.Tensor) and adv.dtype == torch.float32 and ret.dtype == torch.float32
    np.testing.assert_allclose(adv.numpy(), ea, atol=2e-6)
    np.testing.assert_allclose(ret.numpy(), er, atol=2e-6)
    a, R = adv.numpy(), ret.numpy()
    # the observation block of row 1 is two real steps with value 0: the bootstrap across it is 0 ...
    assert a[1, 1] == pytest.approx(0.0 + 1.0 * 0.0 - v[1, 1] + 0.95 * a[1, 2], abs=1e-6)
    # ... and the credit decays by (gamma lambda) per masked step
    assert a[1, 3] == pytest.approx(v[1, 4] + 0.95 * a[1, 4], abs=1e-6)
    assert a[1, 2] == pytest.approx(0.95 * a[1, 3], abs=1e-6)
    np.testing.assert_allclose(R[0, 3:], a[0, 3:])  # returns at masked tokens = A (values masked to 0)
    np.testing.assert_array_equal(a[0, 3:], 0)  # trailing padding: nothing to carry


@pytest.mark.parametrize("gamma,lambd", [(1.0, 1.0), (0.99, 0.95), (0.5, 0.0)])
def test_gae_random(gamma, lambd):
    rng, m = rand_case()
    r = rng.normal(size=m.shape)
    v = rng.normal(size=m.shape)
    adv, ret = O.get_advantages_and_returns(v, r, m, gamma, lambd)
    ea, er = np_gae(v, r, m, gamma, lambd)
    assert isinstance(adv, np.ndarray)
    np.testing.assert_allclose(adv, ea, atol=1e-12)
    np.testing.assert_allclose(ret, er, atol=1e-12)


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_cumulative_returns(gamma):
    rng, m = rand_case()
    r = rng.normal(size=m.shape)
    ret = O.get_cumulative_returns(torch.from_numpy(r), torch.from_numpy(m), gamma)
    np.testing.assert_allclose(ret.numpy(), np_returns(r, m, gamma), atol=1e-12)
    assert ret.dtype == torch.float64


@pytest.mark.parametrize("est", ["rloo", "reinforce_baseline", "dr_grpo", "group_norm"])
def test_group_baselines(est):
    rng = np.random.default_rng(3)
    n = 4
    s = rng.integers(0, 3, size=12).astype(np.float32)
    s[4:8] = 1.0  # a zero-variance group
    out = O.apply_group_baseline(torch.from_numpy(s), n, est)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (12,)
    np.testing.assert_allclose(out.numpy(), np_group(s.astype(np.float64), n, est), atol=1e-5, rtol=1e-6)
    np.testing.assert_array_equal(out.numpy()[4:8], 0)
    out2 = O.apply_group_baseline(s.astype(np.float64).reshape(12, 1), n, est)
    np.testing.assert_allclose(out2, np_group(s.astype(np.float64), n, est).reshape(12, 1), atol=1e-12)


def test_group_pipeline_end_to_end():
    """Shaped score on the last action token, gamma forced to 1: every valid token gets the score."""
    rng, m = rand_case(B=8)
    s = rng.normal(size=8)
    shaped = O.apply_group_baseline(s, 4, "group_norm")
    r = np.zeros(m.shape)
    for b in range(8):
        if m[b].any():
            r[b, np.nonzero(m[b])[0][-1]] = shaped[b]
    adv = O.get_cumulative_returns(r, m, 1.0)
    for b in range(8):
        last = np.nonzero(m[b])[0][-1] if m[b].any() else -1
        np.testing.assert_allclose(adv[b, :last + 1], shaped[b] if last >= 0 else 0.0, atol=1e-12)
        np.testing.assert_array_equal(adv[b, last + 1:], 0)


def test_group_errors_and_passthrough():
    s = np.arange(6.0)
    assert O.apply_group_baseline(s, 3, "gae") is s and O.apply_group_baseline(s, 3, "reinforce") is s
    with pytest.raises(ValueError, match="groups"):
        O.apply_group_baseline(s, 4, "rloo")
    with pytest.raises(ValueError, match=">= 2"):
        O.apply_group_baseline(s, 1, "group_norm")
    np.testing.assert_array_equal(O.apply_group_baseline(s, 1, "dr_grpo"), 0)
    with pytest.raises(ValueError, match="unknown"):
        O.apply_group_baseline(s, 3, "grpo")


@pytest.mark.parametrize("std_norm", [True, False])
def test_whiten_global_biased_floor(std_norm):
    rng, m = rand_case()
    x = rng.normal(size=m.shape) * 3 + 1
    w = O.whiten_advantages(torch.from_numpy(x), torch.from_numpy(m).bool(), std_norm=std_norm)
    np.testing.assert_allclose(w.numpy(), np_whiten(x, m, std_norm), atol=1e-12)
    assert abs(w.numpy()[2, 0]) > 1e-3  # not re-masked: padding is (x_pad - mu) rstd
    # a list of experiences of different lengths: statistics over all of them
    xs = [rng.normal(size=(3, 5)), rng.normal(size=(2, 9))]
    ms = [rng.random((3, 5)) < 0.7, rng.random((2, 9)) < 0.7]
    out = O.whiten_advantages(xs, ms, std_norm=std_norm)
    flat_x = np.concatenate([a.ravel() for a in xs])
    flat_m = np.concatenate([a.ravel() for a in ms]).astype(np.float64)
    exp = np_whiten(flat_x, flat_m, std_norm)
    np.testing.assert_allclose(np.concatenate([a.ravel() for a in out]), exp, atol=1e-12)
    assert [a.shape for a in out] == [(3, 5), (2, 9)]


def test_whiten_variance_floor_and_empty():
    x = np.array([[2.0, 2.0, 5.0]])
    m = np.array([[1, 1, 0]])
    # var 0 -> rsqrt(1e-8) = 1e4: valid tokens 0, padding (5 - 2) * 1e4
    np.testing.assert_allclose(O.whiten_advantages(x, m), [[0.0, 0.0, 3e4]], rtol=1e-12)
    with pytest.raises(ValueError, match="no valid token"):
        O.whiten_advantages(x, 0 * m)


# ---- KL ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("est", ["k1", "k2", "k3"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_approx_kl(est, dtype):
    rng = np.random.default_rng(5)
    lp = torch.tensor(rng.normal(size=(4, 9)) * 3).to(dtype)
    ref = lp + torch.tensor(rng.normal(size=(4, 9)) * 8).to(dtype)  # some |delta| large: clamps active
    a1, b1 = lp.clone().requires_grad_(True), ref.clone().requires_grad_(True)
    a2, b2 = lp.clone().requires_grad_(True), ref.clone().requires_grad_(True)
    k = O.compute_approx_kl(a1, b1, kl_estimator=est)
    kr = t_kl(a2, b2, est)
    assert k.dtype == torch.float32
    torch.testing.assert_close(k.detach(), kr.detach(), atol=1e-5, rtol=1e-5)
    assert (k.detach().abs() == 10).any()  # the +-10 clamp is exercised
    g = torch.tensor(rng.normal(size=(4, 9)), dtype=torch.float32)
    (k * g).sum().backward()
    (kr * g).sum().backward()
    assert a1.grad.dtype == dtype
    tol = dict(atol=1e-5, rtol=1e-5) if dtype != torch.bfloat16 else dict(atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(a1.grad, a2.grad, **tol)
    torch.testing.assert_close(b1.grad, b2.grad, **tol)
    np.testing.assert_allclose(O.compute_approx_kl(lp.float().numpy(), ref.float().numpy(), est),
                               np_kl(lp.float().numpy(), ref.float().numpy(), est), atol=1e-5, rtol=1e-6)


def test_approx_kl_mask_and_errors():
    rng = np.random.default_rng(6)
    lp = torch.tensor(rng.normal(size=(3, 4)), dtype=torch.float32)
    ref = torch.tensor(rng.normal(size=(3, 4)), dtype=torch.float32)
    m = torch.tensor(rng.random((3, 4)) < 0.5)
    k = O.compute_approx_kl(lp, ref, kl_estimator="k3", action_mask=m)
    torch.testing.assert_close(k, t_kl(lp, ref, "k3") * m)
    torch.testing.assert_close(O.compute_approx_kl(lp, ref, m), (lp - ref) * m)  # older positional mask
    torch.testing.assert_close(O.compute_approx_kl(lp, ref), lp - ref)  # default k1
    with pytest.raises(ValueError):
        O.compute_approx_kl(lp, ref, kl_estimator="low_var_kl")


# ---- losses ------------------------------------------------------------------------------------------

def test_masked_mean():
    rng, m = rand_case()
    x = rng.normal(size=m.shape)
    assert O.masked_mean(x, m) == pytest.approx((x * m).sum() / m.sum())
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(O.masked_mean(x, m, dim=-1), (x * m).sum(-1) / m.sum(-1))
    t = O.masked_mean(torch.from_numpy(x), torch.from_numpy(m), dim=1)
    assert torch.isnan(t[2])  # empty row: 0/0, as OpenRLHF
    assert O.masked_mean(torch.from_numpy(x), None).item() == pytest.approx(x.mean())


@pytest.mark.parametrize("token_level", [True, False])
def test_aggregate_loss(token_level):
    rng, m = rand_case()
    l = rng.normal(size=m.shape)
    assert O.aggregate_loss(l, m, token_level) == pytest.approx(np_agg(l, m, token_level), rel=1e-7)
    kw = dict(dp_size=4, batch_num_tokens=200, global_batch_size=20)
    exp = np_agg(l, m, token_level, 4, 200, 20)
    assert O.aggregate_loss(l, m, token_level, **kw) == pytest.approx(exp, rel=1e-7)
    # local fallback ignores dp_size
    assert O.aggregate_loss(l, m, token_level, dp_size=4) == pytest.approx(np_agg(l, m, token_level), rel=1e-7)
    lt = torch.from_numpy(l).requires_grad_(True)
    lt2 = lt.detach().clone().requires_grad_(True)
    out = O.aggregate_loss(lt, torch.from_numpy(m).bool(), token_level, dp_size=4,
                           batch_num_tokens=torch.tensor(200.0), global_batch_size=20)
    ref = t_agg(lt2, torch.from_numpy(m), token_level, 4, 200, 20)
    (3 * out).backward()
    (3 * ref).backward()
    torch.testing.assert_close(out.detach(), ref.detach())
    torch.testing.assert_close(lt.grad, lt2.grad)


@pytest.mark.parametrize("token_level", [True, False])
@pytest.mark.parametrize("dual_clip", [None, 3.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_policy_loss_vs_torch(token_level, dual_clip, dtype):
    rng, m = rand_case()
    tol = dict(atol=1e-12, rtol=1e-7) if dtype == torch.float64 else dict(atol=2e-6, rtol=2e-5)
    lp = torch.tensor(rng.normal(size=m.shape) * 0.5 - 1, dtype=dtype)
    old = lp + torch.tensor(rng.normal(size=m.shape) * 1.0, dtype=dtype)
    old[1, 0] = lp[1, 0] + 25.0  # log-ratio clamp at -20
    A = torch.tensor(rng.normal(size=m.shape) * 2, dtype=dtype)  # large |A| < 0 exercises the dual clip
    mt = torch.tensor(m, dtype=dtype)
    fn = O.PolicyLoss(clip_eps_low=0.2, clip_eps_high=0.28, dual_clip=dual_clip, token_level_loss=token_level)
    assert isinstance(fn, torch.nn.Module)
    for agg in ({}, dict(dp_size=2, batch_num_tokens=150, global_batch_size=16)):
        x1 = lp.clone().requires_grad_(True)
        x2 = lp.clone().requires_grad_(True)
        loss, cr, kl, vkl = fn(x1, old, A, mt.bool(), **agg)
        ref, rcr, rkl = t_policy(x2, old, A, mt, 0.2, 0.28, dual_clip, token_level,
                                 dp=agg.get("dp_size", 1), ntok=agg.get("batch_num_tokens"),
                                 bsz=agg.get("global_batch_size"))
        assert vkl is None
        assert cr.item() == pytest.approx(rcr.item(), abs=1e-7) and 0 < cr.item() < 1
        assert kl.item() == pytest.approx(rkl.item(), rel=1e-6)
        loss.backward()
        ref.backward()
        assert loss.dtype == dtype
        torch.testing.assert_close(loss.detach(), ref.detach(), **tol)
        torch.testing.assert_close(x1.grad, x2.grad, **tol)
    # dual clip changes the loss on this data
    l_no = O.PolicyLoss(0.2, 0.28)(lp, old, A, mt)[0]
    l_dc = O.PolicyLoss(0.2, 0.28, dual_clip=3.0)(lp, old, A, mt)[0]
    assert (l_no != l_dc).item()


@pytest.mark.parametrize("kind", ["tis", "icepop"])
def test_policy_loss_vllm_is_correction(kind):
    rng, m = rand_case()
    lp = torch.tensor(rng.normal(size=m.shape) * 0.3 - 1)
    old = lp + torch.tensor(rng.normal(size=m.shape) * 0.3)
    roll = old + torch.tensor(rng.normal(size=m.shape) * 0.8)
    A = torch.tensor(rng.normal(size=m.shape))
    mt = torch.tensor(m)
    fn = O.PolicyLoss(enable_vllm_is_correction=True, vllm_is_truncated_threshold=[0.5, 2.0],
                      vllm_is_correction_type=kind)
    e = torch.exp(old - roll)
    w = e.clamp(0.5, 2.0) if kind == "tis" else e * ((e >= 0.5) & (e <= 2.0))
    x1 = lp.clone().requires_grad_(True)
    x2 = lp.clone().requires_grad_(True)
    loss, cr, kl, vkl = fn(x1, old, A, mt, rollout_log_probs=roll)
    ref, rcr, _ = t_policy(x2, old, A, mt, w=w)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(loss.detach(), ref.detach())
    torch.testing.assert_close(x1.grad, x2.grad)
    assert cr.item() == pytest.approx(rcr.item(), abs=1e-7)  # clip_ratio is float32, as OpenRLHF
    assert vkl.item() == pytest.approx((((roll - old) * mt).sum() / mt.sum()).item(), rel=1e-12)


def test_policy_loss_options_and_numpy():
    with pytest.raises(ValueError):
        O.PolicyLoss(dual_clip=1.0)
    with pytest.raises(NotImplementedError):
        O.PolicyLoss(policy_loss_type="gspo")
    with pytest.raises(NotImplementedError):
        O.PolicyLoss(enable_vllm_is_correction=True, vllm_is_truncated_threshold=[0.5, 2], vllm_is_correction_type="seq-mask-tis")
    rng, m = rand_case()
    lp, old, A = (rng.normal(size=m.shape) for _ in range(3))
    loss, cr, kl, _ = O.PolicyLoss()(lp, old, A, m)
    ref, rcr, rkl = t_policy(*(torch.from_numpy(x) for x in (lp, old, A, m)))
    assert isinstance(loss, np.floating) and loss == pytest.approx(ref.item(), rel=1e-12)
    assert cr == pytest.approx(rcr.item()) and kl == pytest.approx(rkl.item())
    # no valid token: loss 0 (OpenRLHF: NaN), metrics NaN (0/0, as OpenRLHF)
    loss, cr, kl, _ = O.PolicyLoss()(lp, old, A, 0 * m)
    assert loss == 0 and np.isnan(cr) and np.isnan(kl)
    assert O.aggregate_loss(lp, 0 * m) == 0 and O.ValueLoss(0.5)(lp, old, A, 0 * m) == 0


@pytest.mark.parametrize("token_level", [True, False])
@pytest.mark.parametrize("clip", [None, 0.5])
def test_value_loss_vs_torch(token_level, clip):
    rng, m = rand_case()
    R = torch.tensor(rng.normal(size=m.shape))
    vold = torch.tensor(rng.normal(size=m.shape))
    vp = vold + torch.tensor(rng.normal(size=m.shape) * 0.8)
    mt = torch.tensor(m)
    fn = O.ValueLoss(clip_eps=clip, token_level_loss=token_level)
    for agg in ({}, dict(dp_size=2, batch_num_tokens=150, global_batch_size=16)):
        x1 = vp.clone().requires_grad_(True)
        x2 = vp.clone().requires_grad_(True)
        loss = fn(x1, vold, R, mt, **agg)
        ref = t_value(x2, vold, R, mt, clip, token_level, dp=agg.get("dp_size", 1),
                      ntok=agg.get("batch_num_tokens"), bsz=agg.get("global_batch_size"))
        loss.backward()
        ref.backward()
        torch.testing.assert_close(loss.detach(), ref.detach())
        torch.testing.assert_close(x1.grad, x2.grad)
    assert O.ValueLoss(value_clip=0.5).clip_eps == 0.5
    with pytest.raises(ValueError):
        O.ValueLoss(clip_eps=0.0)


def test_bad_input_raises_value_error():
    r, v, m = doc_case()
    with pytest.raises(ValueError, match="extent"):
        O.get_advantages_and_returns(v[:, :5], r, m, 1.0, 1.0)
    with pytest.raises(ValueError):
        O.PolicyLoss()(r, r, r[:2], m)
    with pytest.raises(ValueError):
        O.compute_approx_kl(r, r[:2])
