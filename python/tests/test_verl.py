"""asyppo.verl against a NumPy transcription of verl's documented behaviour (peer-semantics.md 2.2-2.9)
and, with torch, gradients against autograd through a plain PyTorch implementation written here."""
import math

import numpy as np
import pytest

from asyppo import verl as V

torch = pytest.importorskip("torch")

MODES = ["token-mean", "token-sum", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
KLS = ["kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3"]


def doc_case():
    """The GAE case of peer-semantics 4.3: padding, a multi-turn hole, a full row."""
    m = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 1, 1], [1, 1, 1, 1, 1, 1]], np.float32)
    r = np.zeros((3, 6), np.float32)
    r[0, 2], r[1, 5], r[2, 5] = 1.0, -1.0, 0.5
    v = (np.random.default_rng(0).normal(size=(3, 6)) * m).astype(np.float32)
    return r, v, m


def rand_case(B=8, T=12, seed=1, dtype=np.float64):
    rng = np.random.default_rng(seed)
    L = rng.integers(1, T + 1, size=B)
    m = (np.arange(T)[None] < L[:, None]).astype(dtype)
    m[2, :] = 0  # an empty row
    m[3, 2:4] = 0  # a hole
    m[0, :] = 1
    return rng, m


# ---- NumPy transcription of verl ---------------------------------------------------------------------

def np_masked_mean(x, m, axis=None):
    return np.where(m != 0, x * m, 0).sum(axis=axis) / (m.sum(axis=axis) + 1e-8)


def np_masked_whiten(x, m, shift_mean=True):
    mu = np_masked_mean(x, m)
    var = np_masked_mean((x - mu) ** 2, m)
    n = m.sum()
    var = var * n / (n - 1)
    w = (x - mu) / np.sqrt(var + 1e-8)
    return w if shift_mean else w + mu


def np_verl_gae(r, v, m, gamma, lam):
    B, T = r.shape
    nv = np.zeros(B)
    last = np.zeros(B)
    adv = np.zeros((B, T))
    for t in reversed(range(T)):
        delta = r[:, t] + gamma * nv - v[:, t]
        cand = delta + gamma * lam * last
        nv = m[:, t] * v[:, t] + (1 - m[:, t]) * nv
        last = m[:, t] * cand + (1 - m[:, t]) * last
        adv[:, t] = last
    ret = adv + v
    return np_masked_whiten(adv, m), ret


def np_group(scores, index, kind, eps=1e-6, norm=True):
    out = np.zeros(len(scores))
    for u in set(index):
        idx = [i for i, x in enumerate(index) if x == u]
        s = scores[idx]
        n = len(idx)
        if kind == "grpo":
            mu, sd = (0.0, 1.0) if n == 1 else (s.mean(), s.std(ddof=1))
            out[idx] = (s - mu) / (sd + eps) if norm else s - mu
        elif kind == "rloo":
            out[idx] = s if n == 1 else s * n / (n - 1) - s.mean() * n / (n - 1)
        else:
            out[idx] = s - (0.0 if n == 1 else s.mean())
    return out


def np_agg(l, m, mode, dp=1, ntok=None, bsz=None, lsf=None):
    S = (l * m).sum(1)
    n = m.sum(1)
    N = m.sum() if ntok is None else ntok
    Bg = (n > 0).sum() if bsz is None else bsz
    if mode == "token-mean":
        return S.sum() / N * dp
    if mode == "token-sum":
        return S.sum() * dp
    if mode == "seq-mean-token-sum":
        return S[n > 0].sum() / Bg * dp
    if mode == "seq-mean-token-sum-norm":
        return S[n > 0].sum() / Bg / (m.shape[1] if lsf is None else lsf) * dp
    return (S[n > 0] / (n[n > 0] + 1e-8)).sum() / Bg * dp


# ---- plain PyTorch implementations (for autograd) -----------------------------------------------------

def t_agg(l, m, mode, dp=1, ntok=None, bsz=None, lsf=None):
    S = (l * m).sum(1)
    n = m.sum(1)
    N = m.sum() if ntok is None else ntok
    Bg = (n > 0).sum() if bsz is None else bsz
    if mode == "token-mean":
        return S.sum() / N * dp
    if mode == "token-sum":
        return S.sum() * dp
    keep = n > 0
    if mode == "seq-mean-token-sum":
        return S[keep].sum() / Bg * dp
    if mode == "seq-mean-token-sum-norm":
        return S[keep].sum() / Bg / (m.shape[1] if lsf is None else lsf) * dp
    return (S[keep] / (n[keep] + 1e-8)).sum() / Bg * dp


def t_policy(old, lp, A, m, mode, cl=0.2, ch=0.2, c=3.0, w=None, **agg):
    nak = torch.clamp(lp - old, -20.0, 20.0)
    ratio = torch.exp(nak)
    l1 = -A * ratio
    l2 = -A * torch.clamp(ratio, 1 - cl, 1 + ch)
    cl1 = torch.maximum(l1, l2)
    l3 = -A * c
    cl2 = torch.min(l3, cl1)
    l = torch.where(A < 0, cl2, cl1)
    if w is not None:
        l = l * w
    mb = m.bool()
    clipfrac = ((l2 > l1).float() * m).sum() / (m.sum() + 1e-8)
    lower = ((cl1 > l3) & (A < 0)).float().mul(m).sum() / (m.sum() + 1e-8)
    kl = torch.where(mb, -nak * m, torch.zeros_like(nak)).sum() / (m.sum() + 1e-8)
    return t_agg(l, m, mode, **agg), clipfrac, kl, lower


def t_kl(lp, ref, name):
    st = name.endswith("+")
    base = name[:-1] if st else name
    d = lp - ref
    if base in ("kl", "k1"):
        k = d
    elif base == "abs":
        k = d.abs()
    elif base in ("mse", "k2"):
        k = 0.5 * d * d
    else:
        x = torch.clamp(ref - lp, -20, 20)
        k = torch.clamp(torch.exp(x) - x - 1, -10, 10)
    if st:
        k2 = 0.5 * d * d
        k = k.detach() + (k2 - k2.detach())
    return k


# ---- advantage estimators --------------------------------------------------------------------------

def test_gae_doc_case_padding_and_holes():
    r, v, m = doc_case()
    adv, ret = V.compute_gae_advantage_return(torch.from_numpy(r), torch.from_numpy(v), torch.from_numpy(m), 1.0, 0.95)
    ea, er = np_verl_gae(r.astype(np.float64), v.astype(np.float64), m.astype(np.float64), 1.0, 0.95)
    assert isinstance(adv, torch.Tensor) and adv.dtype == torch.float32
    np.testing.assert_allclose(adv.numpy(), ea, atol=2e-6)
    np.testing.assert_allclose(ret.numpy(), er, atol=2e-6)
    a = adv.numpy()
    assert np.all(np.abs(a[0, 3:]) > 1e-3)  # trailing padding is (0 - mu)/sigma, nonzero (verl quirk)
    assert a[1, 2] == pytest.approx(a[1, 4]) and a[1, 3] == pytest.approx(a[1, 4])  # holes carry the next token


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.99, 0.95), (0.5, 0.0)])
def test_gae_random(gamma, lam):
    rng, m = rand_case()
    r = rng.normal(size=m.shape) * m
    v = rng.normal(size=m.shape) * m
    adv, ret = V.compute_gae_advantage_return(r, v, m, gamma, lam)
    ea, er = np_verl_gae(r, v, m, gamma, lam)
    np.testing.assert_allclose(adv, ea, atol=1e-10)
    np.testing.assert_allclose(ret, er, atol=1e-10)


def test_gae_raises_like_verl_on_tiny_masks():
    r = np.zeros((1, 4))
    m = np.array([[1.0, 0, 0, 0]])
    with pytest.raises(ValueError, match="sum of the mask is one"):
        V.compute_gae_advantage_return(r, r, m, 1.0, 1.0)
    with pytest.raises(ValueError, match="At least one element"):
        V.compute_gae_advantage_return(r, r, 0 * m, 1.0, 1.0)


@pytest.mark.parametrize("norm", [True, False])
def test_grpo_rloo_rfpp_baseline(norm):
    rng, m = rand_case(B=7)
    r = np.zeros(m.shape)
    for b in range(7):
        r[b, max(0, int(m[b].sum()) - 1)] = rng.integers(0, 3)
    index = np.array(["a", "a", "b", "a", "c", "c", "d"], dtype=object)  # b, d: singletons
    scores = r.sum(-1)
    a1, a2 = V.compute_grpo_outcome_advantage(torch.from_numpy(r), torch.from_numpy(m), index,
                                              norm_adv_by_std_in_grpo=norm)
    assert a1 is a2
    exp = np_group(scores, list(index), "grpo", norm=norm)[:, None] * m
    np.testing.assert_allclose(a1.numpy(), exp, atol=1e-12)
    assert a1.numpy()[2].sum() == 0  # row 2 is empty
    s, _ = V.compute_rloo_outcome_advantage(r, m, index)
    np.testing.assert_allclose(s, np_group(scores, list(index), "rloo")[:, None] * m, atol=1e-12)
    s, _ = V.compute_reinforce_plus_plus_baseline_outcome_advantage(r, m, index)
    base = np_group(scores, list(index), "base")[:, None] * m
    np.testing.assert_allclose(s, np_masked_whiten(base, m) * m, atol=1e-10)


def test_reinforce_pp():
    rng, m = rand_case()
    r = rng.normal(size=m.shape) * m
    adv, ret = V.compute_reinforce_plus_plus_outcome_advantage(r, m, config={"gamma": 0.9})
    B, T = r.shape
    G = np.zeros((B, T))
    run = np.zeros(B)
    for t in reversed(range(T)):
        run = np.where(m[:, t] != 0, r[:, t] + 0.9 * run, run)
        G[:, t] = run * m[:, t]
    np.testing.assert_allclose(ret, G, atol=1e-12)
    np.testing.assert_allclose(adv, np_masked_whiten(G, m) * m, atol=1e-10)


def test_whiten_mean_var_entropy():
    rng, m = rand_case()
    x = rng.normal(size=m.shape)
    x_nan = np.where(m != 0, x, np.nan)
    assert V.masked_mean(x_nan, m) == pytest.approx(np_masked_mean(x, m))
    np.testing.assert_allclose(V.masked_mean(x, m, axis=-1), np_masked_mean(x, m, axis=-1))
    assert V.masked_var(x, m) == pytest.approx(np_masked_mean((x - np_masked_mean(x, m)) ** 2, m) * m.sum() /
                                               (m.sum() - 1))
    np.testing.assert_allclose(V.masked_whiten(x, m), np_masked_whiten(x, m), atol=1e-10)
    np.testing.assert_allclose(V.masked_whiten(torch.from_numpy(x), torch.from_numpy(m), shift_mean=False).numpy(),
                               np_masked_whiten(x, m, False), atol=1e-10)
    z = torch.randn(3, 5, 11, dtype=torch.float64, requires_grad=True)
    h = V.entropy_from_logits(z)
    zz = z.detach().clone().requires_grad_(True)
    p = torch.softmax(zz, -1)
    href = torch.logsumexp(zz, -1) - (p * zz).sum(-1)
    torch.testing.assert_close(h.detach(), href.detach())
    g = torch.randn(3, 5, dtype=torch.float64)
    (h * g).sum().backward()
    (href * g).sum().backward()
    torch.testing.assert_close(z.grad, zz.grad)
    torch.testing.assert_close(V.entropy_from_logits(z.detach()[0]), href.detach()[0])


# ---- losses ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_agg_loss_every_mode(mode):
    rng, m = rand_case()
    l = rng.normal(size=m.shape)
    assert V.agg_loss(l, m, mode) == pytest.approx(np_agg(l, m, mode), rel=1e-7)
    kw = dict(dp_size=4, batch_num_tokens=200, global_batch_size=20, loss_scale_factor=16)
    assert V.agg_loss(l, m, mode, **kw) == pytest.approx(np_agg(l, m, mode, 4, 200, 20, 16), rel=1e-7)
    lt = torch.from_numpy(l).requires_grad_(True)
    lt2 = lt.detach().clone().requires_grad_(True)
    out = V.agg_loss(lt, torch.from_numpy(m), mode, **kw)
    ref = t_agg(lt2, torch.from_numpy(m), mode, 4, 200, 20, 16)
    out.backward()
    ref.backward()
    torch.testing.assert_close(out.detach(), ref.detach())
    torch.testing.assert_close(lt.grad, lt2.grad)
    with pytest.raises(ValueError):
        V.agg_loss(l, m, mode, dp_size=2) if mode != "token-sum" else (_ for _ in ()).throw(ValueError())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_policy_loss_vanilla_vs_torch(mode, dtype):
    rng, m = rand_case()
    # rtol 1e-7: verl divides by (n_i + 1e-8) in seq-mean-token-mean, the library by n_i
    tol = dict(atol=1e-12, rtol=1e-7) if dtype == torch.float64 else dict(atol=2e-6, rtol=2e-5)
    lp = torch.tensor(rng.normal(size=m.shape) * 0.5 - 1, dtype=dtype)
    old = lp + torch.tensor(rng.normal(size=m.shape) * 1.0, dtype=dtype)
    A = torch.tensor(rng.normal(size=m.shape) * 2, dtype=dtype)  # large |A| < 0 exercises the dual clip
    mt = torch.tensor(m, dtype=dtype)
    cfg = {"clip_ratio": 0.2, "clip_ratio_low": 0.2, "clip_ratio_high": 0.28, "clip_ratio_c": 3.0}
    x1 = lp.clone().requires_grad_(True)
    x2 = lp.clone().requires_grad_(True)
    loss, met = V.get_policy_loss_fn("vanilla")(old, x1, A, mt, loss_agg_mode=mode, config=cfg)
    ref, cf, kl, lower = t_policy(old, x2, A, mt, mode, 0.2, 0.28, 3.0)
    assert isinstance(met, dict)
    assert met["actor/pg_clipfrac"] == pytest.approx(cf.item(), abs=1e-7)
    assert met["actor/ppo_kl"] == pytest.approx(kl.item(), abs=1e-6)
    assert met["actor/pg_clipfrac_lower"] == pytest.approx(lower.item(), abs=1e-7)
    assert lower.item() > 0 and cf.item() > 0
    loss.backward()
    ref.backward()
    torch.testing.assert_close(loss.detach(), ref.detach(), **tol)
    torch.testing.assert_close(x1.grad, x2.grad, **tol)


def test_policy_loss_global_info_and_is_weights():
    rng, m = rand_case()
    lp = torch.tensor(rng.normal(size=m.shape))
    old = lp + torch.tensor(rng.normal(size=m.shape) * 0.4)
    A = torch.tensor(rng.normal(size=m.shape))
    mt = torch.tensor(m)
    w = torch.tensor(rng.random(m.shape) * 2)
    info = {"dp_size": 2, "batch_num_tokens": 150, "global_batch_size": 16}

    class Cfg:  # attribute-style config (verl dataclass / OmegaConf)
        clip_ratio = 0.2
        clip_ratio_low = None
        clip_ratio_high = None
        clip_ratio_c = 3.0
        global_batch_info = info

    for mode in ("token-mean", "seq-mean-token-mean"):
        x1 = lp.clone().requires_grad_(True)
        x2 = lp.clone().requires_grad_(True)
        loss, _ = V.compute_policy_loss_vanilla(old, x1, A, mt, mode, Cfg(), rollout_is_weights=w)
        ref = t_policy(old, x2, A, mt, mode, w=w, dp=2, ntok=150, bsz=16)[0]
        loss.backward()
        ref.backward()
        torch.testing.assert_close(loss.detach(), ref.detach())
        torch.testing.assert_close(x1.grad, x2.grad)
    # no global info: local counts (verl with global_batch_info = {})
    l_local, _ = V.compute_policy_loss_vanilla(old, lp, A, mt, "token-mean", {"global_batch_info": {}})
    torch.testing.assert_close(l_local, t_policy(old, lp, A, mt, "token-mean")[0])
    with pytest.raises(ValueError):
        V.compute_policy_loss_vanilla(old, lp, A, mt, "token-mean", {"clip_ratio_c": 1.0})
    with pytest.raises(ValueError):
        V.get_policy_loss_fn("gspo")


@pytest.mark.parametrize("mode", MODES)
def test_value_loss_vs_torch(mode):
    rng, m = rand_case()
    R = torch.tensor(rng.normal(size=m.shape))
    vold = torch.tensor(rng.normal(size=m.shape))
    vp = vold + torch.tensor(rng.normal(size=m.shape) * 0.8)
    mt = torch.tensor(m)
    x1 = vp.clone().requires_grad_(True)
    x2 = vp.clone().requires_grad_(True)
    loss, cf = V.compute_value_loss(x1, R, vold, mt, 0.5, loss_agg_mode=mode)
    vc = torch.clamp(x2, vold - 0.5, vold + 0.5)
    u1, u2 = (x2 - R) ** 2, (vc - R) ** 2
    ref = 0.5 * t_agg(torch.max(u1, u2), mt, mode)
    ref_cf = ((u2 > u1).double() * mt).sum() / (mt.sum() + 1e-8)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(loss.detach(), ref.detach())
    torch.testing.assert_close(x1.grad, x2.grad)
    assert cf.item() == pytest.approx(ref_cf.item(), abs=1e-7) and 0 < cf.item() < 1


@pytest.mark.parametrize("name", KLS + [k + "+" for k in KLS])
def test_kl_penalty_every_type(name):
    rng = np.random.default_rng(5)
    lp = torch.tensor(rng.normal(size=(4, 9)) * 3)
    ref = lp + torch.tensor(rng.normal(size=(4, 9)) * 6)  # some |delta| large: clamps active
    ref[0, 0] = lp[0, 0]  # delta = 0 (abs gradient 0)
    a1, b1 = lp.clone().requires_grad_(True), ref.clone().requires_grad_(True)
    a2, b2 = lp.clone().requires_grad_(True), ref.clone().requires_grad_(True)
    k = V.kl_penalty(a1, b1, name)
    kr = t_kl(a2, b2, name)
    torch.testing.assert_close(k.detach(), kr.detach())
    g = torch.tensor(rng.normal(size=(4, 9)))
    (k * g).sum().backward()
    (kr * g).sum().backward()
    torch.testing.assert_close(a1.grad, a2.grad)
    torch.testing.assert_close(b1.grad, b2.grad)
    np.testing.assert_allclose(V.kl_penalty(lp.numpy(), ref.numpy(), name), kr.detach().numpy(), atol=1e-12)


def test_kl_full_not_implemented():
    x = torch.zeros(2, 3)
    with pytest.raises(NotImplementedError):
        V.kl_penalty(x, x, "full")


def test_bad_input_raises_value_error():
    r, v, m = doc_case()
    with pytest.raises(ValueError, match="extent"):
        V.compute_gae_advantage_return(r, v[:, :5], m, 1.0, 1.0)
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        V.agg_loss(r, m, "mean")
    with pytest.raises(ValueError):
        V.compute_policy_loss_vanilla(r, r, r[:2], m)
