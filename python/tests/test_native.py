"""The native API (asyppo.*) against NumPy references written here."""
import math

import numpy as np
import pytest

import asyppo

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

RNG = np.random.default_rng(1234)


def make_batch(B=6, T=9, K=2, dtype=np.float64, holes=True, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, T + 1, size=B)
    lengths[0] = T
    mask = np.arange(T)[None, :] < lengths[:, None]
    if holes:  # multi-turn observation blocks inside responses
        for b in range(B):
            if lengths[b] >= 5:
                mask[b, 1:3] = False
    values = rng.normal(size=(K, B, T)).astype(dtype)
    rewards = np.zeros((B, T), dtype)
    for b in range(B):
        valid = np.flatnonzero(mask[b])
        rewards[b, valid[-1]] = rng.integers(0, 2)
    rewards += (0.1 * rng.normal(size=(B, T))).astype(dtype) * mask
    return values, rewards, mask


# ---- references -----------------------------------------------------------------------------------

def ref_gae(values, rewards, mask, gamma, lam_a, lam_c):
    """Skip semantics on the ensemble mean; zero padding."""
    V = values.mean(axis=0).astype(np.float64)
    B, T = rewards.shape
    A = np.zeros((B, T))
    R = np.zeros((B, T))
    for b in range(B):
        nv, aa, ac = 0.0, 0.0, 0.0
        for t in reversed(range(T)):
            if not mask[b, t]:
                continue
            d = rewards[b, t] + gamma * nv - V[b, t]
            aa = d + gamma * lam_a * aa
            ac = d + gamma * lam_c * ac
            nv = V[b, t]
            A[b, t] = aa
            R[b, t] = ac + V[b, t]
    return A, R


def ref_gae_step(values, rewards, mask, gamma, lam):
    V = values.mean(axis=0) * mask
    r = rewards * mask
    B, T = r.shape
    A = np.zeros((B, T))
    for b in range(B):
        last = 0.0
        for t in reversed(range(T)):
            nv = V[b, t + 1] if t + 1 < T else 0.0
            d = r[b, t] + gamma * nv - V[b, t]
            last = d + gamma * lam * last
            A[b, t] = last
    return A * mask


def ref_whiten(x, mask, shift_mean=True, eps=1e-8, unbiased=True):
    v = x[mask != 0].astype(np.float64)
    mu = v.mean()
    var = v.var(ddof=1 if unbiased else 0)
    y = (x - mu) / math.sqrt(var + eps)
    if not shift_mean:
        y = y + mu
    return np.where(mask != 0, y, 0.0)


def ref_grpo(scores, ids, mask, eps=1e-6, norm=True):
    A = np.zeros(len(scores))
    for g in np.unique(ids):
        idx = np.flatnonzero(ids == g)
        s = scores[idx].astype(np.float64)
        if len(idx) == 1:
            mu, sd = 0.0, 1.0
        else:
            mu, sd = s.mean(), s.std(ddof=1)
        A[idx] = (s - mu) / (sd + eps) if norm else s - mu
    return A[:, None] * mask, A


def ref_masks(sigma, mask, k, h):
    """Order valid tokens by (sigma, flat index); adv mask: first floor(kN) -> 0; entropy: last floor(hN) -> 0."""
    B, T = sigma.shape
    flat = np.flatnonzero(mask.reshape(-1))
    s = sigma.reshape(-1)[flat]
    order = flat[np.lexsort((flat, s))]
    N = len(flat)
    nk, nh = int(math.floor(k * N)), int(math.floor(h * N))
    am = mask.reshape(-1).astype(bool).copy()
    em = am.copy()
    am[order[:nk]] = False
    if nh:
        em[order[N - nh:]] = False
    return am.reshape(B, T), em.reshape(B, T)


def row_weights(mask, mode, norm_len=None):
    L = mask.sum(axis=1).astype(np.float64)
    N = L.sum()
    Bg = (L > 0).sum()
    T = mask.shape[1] if norm_len is None else norm_len
    if mode == "token-mean":
        w = np.full_like(L, 1.0 / N)
    elif mode == "token-sum":
        w = np.ones_like(L)
    elif mode == "seq-mean-token-mean":
        w = np.where(L > 0, 1.0 / (Bg * np.maximum(L, 1)), 0.0)
    elif mode == "seq-mean-token-sum":
        w = np.full_like(L, 1.0 / Bg)
    else:
        w = np.full_like(L, 1.0 / (Bg * T))
    return w[:, None] * mask


def ref_policy(logp, old, A, mask, cl=0.2, ch=0.2, c=0.0, mode="seq-mean-token-mean", adv_mask=None):
    d = np.clip(logp - old, -20, 20)
    rho = np.exp(d)
    l1 = -A * rho
    l2 = -A * np.clip(rho, 1 - cl, 1 + ch)
    l = np.maximum(l1, l2)
    g = np.where(l2 > l1, 0.0, -A * rho)
    if c > 0:
        l3 = -c * A
        dual = (A < 0) & (l > l3)
        l = np.where(dual, l3, l)
        g = np.where(dual, 0.0, g)
    if adv_mask is not None:
        l = l * adv_mask
        g = g * adv_mask
    W = row_weights(mask, mode)
    return (W * l).sum(), W * g, ((l2 > l1) & (A != 0) & mask).sum() / mask.sum()


# ---- tests ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-11), (np.float32, 2e-5)])
def test_gae_matches_loop(dtype, tol):
    values, rewards, mask = make_batch(dtype=dtype)
    A, R = asyppo.gae(values, rewards, mask, gamma=0.99, lambda_actor=0.95, lambda_critic=1.0)
    Ar, Rr = ref_gae(values, rewards, mask, 0.99, 0.95, 1.0)
    assert A.dtype == dtype and R.dtype == dtype
    np.testing.assert_allclose(A, Ar, atol=tol, rtol=tol)
    np.testing.assert_allclose(R, Rr, atol=tol, rtol=tol)
    assert np.all(A[~mask] == 0) and np.all(R[~mask] == 0)


def test_gae_step_semantics_and_single_critic():
    values, rewards, mask = make_batch(K=1)
    A, _ = asyppo.gae(values[0], rewards, mask, gamma=0.9, lambda_actor=0.8, semantics="step")
    np.testing.assert_allclose(A, ref_gae_step(values, rewards, mask, 0.9, 0.8), atol=1e-12)


def test_strided_inputs_zero_copy_equal_contiguous():
    values, rewards, mask = make_batch()
    big = np.zeros((2, values.shape[1], 2 * values.shape[2]))
    big[:, :, ::2] = values
    strided = big[:, :, ::2]  # element stride 2
    rT = np.ascontiguousarray(rewards.T).T  # column-major
    mU8 = mask.astype(np.uint8)
    A1, R1 = asyppo.gae(values, rewards, mask)
    A2, R2 = asyppo.gae(strided, rT, mU8)
    np.testing.assert_array_equal(A1, A2)
    np.testing.assert_array_equal(R1, R2)
    # negative strides are accepted (copied)
    A3, _ = asyppo.gae(values[:, ::-1][:, ::-1], rewards[::-1][::-1], mask.astype(np.float32))
    np.testing.assert_array_equal(A1, A3)


def test_byte_stride_not_multiple_of_itemsize_rejected():
    buf = np.zeros(200, np.uint8)
    x = np.ndarray(shape=(2, 3), dtype=np.float32, buffer=buf, strides=(18, 6))
    with pytest.raises(ValueError, match="not a multiple of the itemsize"):
        asyppo.masked_whiten(x, np.ones((2, 3), bool))


def test_errors_are_value_errors_and_outputs_untouched():
    values, rewards, mask = make_batch()
    outA = np.full(rewards.shape, 7.0)
    outR = np.full(rewards.shape, 7.0)
    with pytest.raises(ValueError, match=r"asyppo::gae: gamma"):
        asyppo.gae(values, rewards, mask, gamma=1.5, out_advantages=outA, out_returns=outR)
    bad = rewards.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        asyppo.gae(values, bad, mask, out_advantages=outA, out_returns=outR)
    with pytest.raises(ValueError, match="extent"):
        asyppo.gae(values[:, :, :-1], rewards, mask, out_advantages=outA, out_returns=outR)
    assert np.all(outA == 7.0) and np.all(outR == 7.0)
    out = np.full(rewards.shape, 3.0)
    with pytest.raises(ValueError):
        asyppo.masked_whiten(rewards, mask, eps=-1.0, out=out)
    assert np.all(out == 3.0)
    g = np.full(rewards.shape, 5.0)
    with pytest.raises(ValueError, match="dual_clip"):
        asyppo.policy_loss(rewards, rewards, rewards, mask, dual_clip=0.5, grad_out=g)
    assert np.all(g == 5.0)
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        asyppo.aggregate_loss(rewards, mask, "mean")
    with pytest.raises(ValueError):
        asyppo.gae(values, rewards, mask, out_advantages=np.zeros(rewards.shape, np.float32))
    # out= arrays are written in place when the call succeeds
    A, _ = asyppo.gae(values, rewards, mask, out_advantages=outA, out_returns=outR)
    assert A is outA


def test_ensemble_stats():
    values, _, mask = make_batch(K=3)
    d = asyppo.ensemble_stats(values, mask, unbiased=True)
    np.testing.assert_allclose(d["mean"], values.mean(0) * mask, atol=1e-12)
    np.testing.assert_allclose(d["std"], values.std(0, ddof=1) * mask, atol=1e-12)
    np.testing.assert_allclose(d["min"], values.min(0) * mask)
    np.testing.assert_allclose(d["max"], values.max(0) * mask)


def test_grpo_rloo_with_singletons():
    _, rewards, mask = make_batch(B=7)
    scores = np.array([1.0, 0.0, 1.0, 0.5, 2.0, 2.0, 0.3])
    ids = np.array([3, 3, 3, 9, 5, 5, 3])  # group 9 is a singleton, group 5 has zero std
    A, S = asyppo.grpo(scores, ids, mask)
    Ar, Sr = ref_grpo(scores, ids, mask)
    np.testing.assert_allclose(A, Ar, atol=1e-12)
    np.testing.assert_allclose(S, Sr, atol=1e-12)
    assert S[3] == pytest.approx(0.5 / (1 + 1e-6))
    A, _ = asyppo.grpo(scores, ids, mask, norm_by_std=False)
    np.testing.assert_allclose(A, ref_grpo(scores, ids, mask, norm=False)[0], atol=1e-12)
    A, S = asyppo.rloo(scores, ids, mask)
    for b in range(7):
        idx = np.flatnonzero(ids == ids[b])
        n = len(idx)
        exp = scores[b] if n == 1 else scores[b] - (scores[idx].sum() - scores[b]) / (n - 1)
        assert S[b] == pytest.approx(exp)
    _, S0 = asyppo.rloo(scores, ids, mask, singleton="zero")
    assert S0[3] == 0


def test_masked_whiten_and_reinforce():
    _, rewards, mask = make_batch()
    x = RNG.normal(size=rewards.shape)
    np.testing.assert_allclose(asyppo.masked_whiten(x, mask), ref_whiten(x, mask), atol=1e-12)
    np.testing.assert_allclose(asyppo.masked_whiten(x, mask, shift_mean=False), ref_whiten(x, mask, False),
                               atol=1e-12)
    raw = asyppo.masked_whiten(x, mask, padding="raw")
    mu = x[mask].mean()
    sd = math.sqrt(x[mask].var(ddof=1) + 1e-8)
    np.testing.assert_allclose(raw, (x - mu) / sd, atol=1e-12)
    # REINFORCE++: discounted returns over valid tokens, then whitening
    G, _ = ref_gae(np.zeros((1,) + rewards.shape), rewards, mask, 0.9, 1.0, 1.0)
    np.testing.assert_allclose(asyppo.reinforce_pp(rewards, mask, gamma=0.9), ref_whiten(G, mask), atol=1e-12)
    scores = rewards.sum(1)
    ids = np.arange(len(scores)) // 2
    A, S = asyppo.reinforce_pp_baseline(scores, ids, mask)
    base = np.array([scores[b] - scores[ids == ids[b]].mean() for b in range(len(scores))])
    np.testing.assert_allclose(S, base, atol=1e-12)
    np.testing.assert_allclose(A, ref_whiten(base[:, None] * mask, mask), atol=1e-12)
    np.testing.assert_allclose(asyppo.sequence_scores(rewards), scores, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("scope", ["batch", "sequence"])
def test_uncertainty_masks_with_ties(dtype, scope):
    _, _, mask = make_batch(B=8, T=13)
    sigma = (np.round(RNG.random(mask.shape) * 4) / 4).astype(dtype)  # many ties
    am, em, counts = asyppo.uncertainty_masks(sigma, mask, 0.3, 0.25, scope=scope)
    assert am.dtype == bool and em.dtype == bool
    if scope == "batch":
        ram, rem = ref_masks(sigma, mask, 0.3, 0.25)
        assert counts["valid"] == mask.sum()
    else:
        ram = np.zeros_like(mask)
        rem = np.zeros_like(mask)
        for b in range(mask.shape[0]):
            ram[b:b + 1], rem[b:b + 1] = ref_masks(sigma[b:b + 1], mask[b:b + 1], 0.3, 0.25)
    np.testing.assert_array_equal(am, ram)
    np.testing.assert_array_equal(em, rem)
    assert not np.any(~am & ~em & mask)  # disjoint


def test_advantage_step_consistent_with_parts():
    values, rewards, mask = make_batch(B=8, T=11, K=2)
    ids = np.arange(8) // 4
    arrays, summary = asyppo.advantage_step(values, rewards, mask, ids, lambda_actor=0.95)
    A, R = ref_gae(values, rewards, mask, 1.0, 0.95, 1.0)
    sigma = values.std(axis=0) * mask
    am, em = ref_masks(sigma, mask, 0.2, 0.2)
    np.testing.assert_allclose(arrays["std"], sigma, atol=1e-12)
    np.testing.assert_array_equal(arrays["adv_mask"], am)
    np.testing.assert_array_equal(arrays["entropy_mask"], em)
    np.testing.assert_allclose(arrays["advantages"], A * am, atol=1e-12)
    np.testing.assert_allclose(arrays["returns"], R, atol=1e-12)
    w, critic = asyppo.shard_weights(ids, 2, dtype="float64")
    np.testing.assert_array_equal(arrays["shard_weights"], w)
    np.testing.assert_array_equal(critic, [0, 0, 1, 1, 0, 0, 1, 1])
    assert summary["valid_tokens"] == mask.sum()
    assert summary["adv_masked"] == int(0.2 * mask.sum())
    assert len(summary["explained_variance"]) == 2


@pytest.mark.parametrize("mode", ["token-mean", "token-sum", "seq-mean-token-mean", "seq-mean-token-sum",
                                  "seq-mean-token-sum-norm"])
def test_policy_loss_and_grad(mode):
    _, _, mask = make_batch(B=7, T=10)
    logp = RNG.normal(size=mask.shape) * 0.3 - 1
    old = logp + RNG.normal(size=mask.shape) * 0.3
    A = RNG.normal(size=mask.shape)
    adv_mask = RNG.random(mask.shape) > 0.2
    loss, g, met = asyppo.policy_loss(logp, old, A, mask, adv_mask=adv_mask, clip_low=0.2, clip_high=0.28,
                                      dual_clip=3.0, aggregation=mode)
    lr, gr, _ = ref_policy(logp, old, A, mask, 0.2, 0.28, 3.0, mode, adv_mask)
    assert loss == pytest.approx(lr, rel=1e-12, abs=1e-14)
    np.testing.assert_allclose(g, gr, atol=1e-14)
    assert met["valid_tokens"] == mask.sum()
    assert met["approx_kl"] == pytest.approx((old - logp)[mask].mean())


def test_global_normalizer_makes_microbatches_add_up():
    _, _, mask = make_batch(B=8, T=10)
    logp = RNG.normal(size=mask.shape)
    old = logp + 0.1 * RNG.normal(size=mask.shape)
    A = RNG.normal(size=mask.shape)
    full, gfull, _ = asyppo.policy_loss(logp, old, A, mask, aggregation="token-mean")
    c = asyppo.count_loss_tokens(mask)
    norm = {"tokens": c["tokens"], "sequences": c["sequences"]}
    parts = [asyppo.policy_loss(logp[s], old[s], A[s], mask[s], aggregation="token-mean", normalizer=norm)
             for s in (slice(0, 3), slice(3, 8))]
    assert sum(p[0] for p in parts) == pytest.approx(full)
    np.testing.assert_allclose(np.concatenate([p[1] for p in parts]), gfull, atol=1e-15)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_aggregate_value_kl_entropy(mode):
    values, rewards, mask = make_batch(B=6, T=8, K=2)
    l = RNG.normal(size=mask.shape)
    val, w, _ = asyppo.aggregate_loss(l, mask, mode)
    W = row_weights(mask, mode)
    assert val == pytest.approx((W * l).sum())
    np.testing.assert_allclose(w, W)
    # value loss of K = 2 critics, each on its own shard
    old = values + 0.3 * RNG.normal(size=values.shape)
    ret = RNG.normal(size=mask.shape)
    shards = np.array([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]], dtype=np.float64)
    loss, g, crit = asyppo.value_loss(values, ret, mask, old, shard_weights=shards, clip=0.2, aggregation=mode)
    total = 0.0
    for k in range(2):
        mk = mask & (shards[k][:, None] != 0)
        Wk = row_weights(mk, mode, norm_len=mask.shape[1])
        vc = old[k] + np.clip(values[k] - old[k], -0.2, 0.2)
        u, c2 = (values[k] - ret) ** 2, (vc - ret) ** 2
        total += (Wk * 0.5 * np.maximum(u, c2)).sum()
        np.testing.assert_allclose(g[k], Wk * 0.5 * np.where(c2 > u, 0, 2 * (values[k] - ret)), atol=1e-14)
        assert crit[k]["clip_fraction"] == pytest.approx((c2 > u)[mk].mean())
    assert loss == pytest.approx(total)
    # explained_variance=False: the same loss and gradient, EV left NaN
    loss2, g2, crit2 = asyppo.value_loss(values, ret, mask, old, shard_weights=shards, clip=0.2, aggregation=mode,
                                         explained_variance=False)
    assert loss2 == loss
    np.testing.assert_array_equal(g2, g)
    for k in range(2):
        assert np.isfinite(crit[k]["explained_variance"]) and np.isnan(crit2[k]["explained_variance"])
        assert crit2[k]["clip_fraction"] == crit[k]["clip_fraction"]
    # KL k3 with clamps
    lp = RNG.normal(size=mask.shape)
    rp = lp + RNG.normal(size=mask.shape)
    d = lp - rp
    x = np.clip(-d, -20, 20)
    raw = np.exp(x) - x - 1
    k3 = np.clip(raw, -10, 10)
    dk3 = np.where((np.abs(d) > 20) | (np.abs(raw) > 10), 0.0, 1 - np.exp(x))
    np.testing.assert_allclose(asyppo.kl_values(lp, rp, mask), k3 * mask, atol=1e-14)
    kl, gk, _ = asyppo.kl_loss(lp, rp, mask, estimator="k3", coef=0.5, aggregation=mode)
    assert kl == pytest.approx(0.5 * (W * k3).sum())
    np.testing.assert_allclose(gk, 0.5 * W * dk3, atol=1e-14)
    # entropy bonus with the filter
    H = RNG.random(mask.shape)
    em = RNG.random(mask.shape) > 0.3
    eb, ge, m = asyppo.entropy_bonus(H, mask, em, beta=0.01, aggregation=mode)
    assert eb == pytest.approx(-0.01 * (W * H * em).sum())
    np.testing.assert_allclose(ge, -0.01 * W * em, atol=1e-15)
    assert m["entropy"] == pytest.approx((W * H).sum())


def test_logits_logp_entropy_and_backward():
    B, T, V = 3, 4, 7
    z = RNG.normal(size=(B, T, V)) * 2
    ids = RNG.integers(0, V, size=(B, T))
    lp, H = asyppo.logits_logp_entropy(z, ids, temperature=0.7)
    zs = z / 0.7
    lse = np.log(np.exp(zs - zs.max(-1, keepdims=True)).sum(-1)) + zs.max(-1)
    p = np.exp(zs - lse[..., None])
    np.testing.assert_allclose(lp, np.take_along_axis(zs, ids[..., None], -1)[..., 0] - lse, atol=1e-12)
    np.testing.assert_allclose(H, -(p * np.log(p)).sum(-1), atol=1e-12)
    gl = RNG.normal(size=(B, T))
    gh = RNG.normal(size=(B, T))
    gz = asyppo.logits_logp_entropy_backward(z, ids, gl, gh, temperature=0.7)
    onehot = np.eye(V)[ids]
    ref = (gl[..., None] * (onehot - p) - gh[..., None] * p * (np.log(p) + H[..., None])) / 0.7
    np.testing.assert_allclose(gz, ref, atol=1e-12)


@pytest.mark.skipif(torch is None, reason="torch not installed")
def test_torch_tensors_in_and_out():
    values, rewards, mask = make_batch(dtype=np.float32)
    tv, tr, tm = torch.from_numpy(values), torch.from_numpy(rewards), torch.from_numpy(mask)
    A, R = asyppo.gae(tv, tr.t().contiguous().t(), tm)  # a strided (transposed) tensor
    assert isinstance(A, torch.Tensor) and A.dtype == torch.float32
    An, _ = asyppo.gae(values, rewards, mask)
    np.testing.assert_array_equal(A.numpy(), An)
    arrays, summary = asyppo.advantage_step(tv, tr, tm, torch.arange(values.shape[1]) // 2)
    assert isinstance(arrays["adv_mask"], torch.Tensor) and arrays["adv_mask"].dtype == torch.bool
    loss, g, met = asyppo.policy_loss(tr, tr.requires_grad_(False) * 0.5, tr, tm)
    assert isinstance(g, torch.Tensor) and isinstance(loss, float)


# ---- critic value heads (H1-H4) -------------------------------------------------------------------

@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_critic_heads_against_numpy_and_torch_autograd(shared, dtype):
    rng = np.random.default_rng(7)
    K, N, D = 2, 37, 11
    hidden = rng.normal(size=(N, D) if shared else (K, N, D)).astype(dtype)
    weight = rng.normal(size=(K, D)).astype(dtype)
    bias = rng.normal(size=K).astype(dtype)
    grad = rng.normal(size=(K, N)).astype(dtype)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    H = np.broadcast_to(hidden, (K, N, D)).astype(np.float64)
    v = asyppo.critic_heads_forward(hidden, weight, bias)
    assert v.shape == (K, N) and v.dtype == dtype
    np.testing.assert_allclose(v, np.einsum("knd,kd->kn", H, weight.astype(np.float64)) + bias[:, None], rtol=tol, atol=tol)
    g = asyppo.critic_heads_backward(hidden, weight, grad)
    assert g["hidden"].shape == hidden.shape
    if torch is None:
        pytest.skip("torch not available")
    th = torch.tensor(hidden.astype(np.float64), requires_grad=True)
    tw = torch.tensor(weight.astype(np.float64), requires_grad=True)
    tb = torch.tensor(bias.astype(np.float64), requires_grad=True)
    hk = th.unsqueeze(0).expand(K, N, D) if shared else th
    tv = torch.einsum("knd,kd->kn", hk, tw) + tb[:, None]
    (tv * torch.tensor(grad.astype(np.float64))).sum().backward()
    np.testing.assert_allclose(g["weight"], tw.grad.numpy(), rtol=tol, atol=tol * 10)
    np.testing.assert_allclose(g["bias"], tb.grad.numpy(), rtol=tol, atol=tol * 10)
    np.testing.assert_allclose(g["hidden"], th.grad.numpy(), rtol=tol, atol=tol * 10)
    assert asyppo.critic_heads_backward(hidden, weight, grad, hidden_grad=False)["hidden"] is None


def test_critic_heads_reject_bad_input():
    w = np.ones((2, 3))
    with pytest.raises(ValueError, match="hidden"):
        asyppo.critic_heads_forward(np.ones((2, 4, 5)), w)  # D = 5, weight has D = 3
    with pytest.raises(ValueError, match="weight"):
        asyppo.critic_heads_forward(np.ones((2, 4, 3)), np.array([[1.0, np.nan, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="grad_values"):
        asyppo.critic_heads_backward(np.ones((2, 4, 3)), w, np.ones((2, 5)))


def test_critic_heads_read_float16_hidden_states_in_place():
    rng = np.random.default_rng(8)
    K, N, D = 2, 29, 13
    hidden16 = rng.normal(size=(K, N, D)).astype(np.float16)
    weight = rng.normal(size=(K, D)).astype(np.float32)
    grad = rng.normal(size=(K, N)).astype(np.float32)
    wide = hidden16.astype(np.float32)  # exact
    np.testing.assert_array_equal(asyppo.critic_heads_forward(hidden16, weight),
                                  asyppo.critic_heads_forward(wide, weight))
    g16, g32 = asyppo.critic_heads_backward(hidden16, weight, grad), asyppo.critic_heads_backward(wide, weight, grad)
    for key in ("weight", "bias", "hidden"):
        np.testing.assert_array_equal(g16[key], g32[key])
    assert g16["hidden"].dtype == np.float32
