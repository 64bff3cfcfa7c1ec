"""asyppo.openrlhf: drop-in replacements for OpenRLHF's numerical functions, computed by asyppo.

Switch by changing an import, e.g.

    from asyppo.openrlhf import PolicyLoss, ValueLoss, compute_approx_kl, get_advantages_and_returns

Behaviour follows OpenRLHF (OpenRLHF/OpenRLHF @ 3c3be623, Aug 2026) as documented in
/work/shared/docs/peer-semantics.md sections 2.1-2.9 (GAE 2.2, group estimators 2.3, PPO loss 2.4,
value loss 2.5, whitening 2.6, KL 2.7, aggregation 2.9), including OpenRLHF's quirks (listed per
function). No OpenRLHF code is used; the behaviour is re-implemented from that description. Where the
description leaves a name, signature or detail open, the docstring says which choice was made
("Assumption"). Names follow ``openrlhf/models/loss.py`` (PolicyLoss, ValueLoss, aggregate_loss),
``openrlhf/models/utils.py`` (compute_approx_kl, masked_mean) and the experience maker's methods
(get_advantages_and_returns, get_cumulative_returns); the group-baseline and whitening steps, which
OpenRLHF does inline in the experience maker, get names of their own here (apply_group_baseline,
whiten_advantages).

Inputs: torch tensors (CPU) or NumPy arrays; outputs are of the same kind. Masks may be bool, integer
or float; any nonzero entry counts as a valid token (OpenRLHF's action masks are bool / 0-1; a
fractional mask would weight the loss in OpenRLHF but counts as 1 here). Losses are differentiable
with respect to the per-token input that OpenRLHF trains (log_probs, values; compute_approx_kl and
aggregate_loss with respect to their inputs), through the same torch.autograd.Function as asyppo.verl:
the library returns the loss and its exact analytic gradient; backward scales it by grad_output.
Numbers and gradients equal OpenRLHF's up to float rounding (the library accumulates in double).

Differences from OpenRLHF, all at degenerate inputs: a loss over no valid token is 0 (OpenRLHF: NaN
from 0/0); whitening over no valid token raises ValueError (OpenRLHF: NaN everywhere); group estimators
that divide by n - 1 raise ValueError for n_samples_per_prompt = 1 (OpenRLHF: NaN). NaN/Inf inputs are
otherwise propagated; shape errors raise ValueError.
"""

import numpy as np

from . import _native
from .verl import _is_t, _needs_grad, _np, _scalar_like

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

if torch is not None:
    from .verl import _NativeLoss, _TokenwiseFn

__all__ = [
    "get_advantages_and_returns",
    "get_cumulative_returns",
    "apply_group_baseline",
    "whiten_advantages",
    "compute_approx_kl",
    "masked_mean",
    "aggregate_loss",
    "PolicyLoss",
    "ValueLoss",
]


# ---- helpers -------------------------------------------------------------------------------------

def _out(arr, *refs):
    """arr as a tensor when any ref is a tensor, in the promoted floating dtype of the tensor refs."""
    ts = [r for r in refs if _is_t(r)]
    if not ts:
        return arr
    dt = None
    for t in ts:
        if t.is_floating_point():
            dt = t.dtype if dt is None else torch.promote_types(dt, t.dtype)
    out = torch.from_numpy(np.ascontiguousarray(arr))
    return out if dt is None or out.dtype == dt else out.to(dt)


def _mask_or_ones(mask, shape):
    return np.ones(shape, dtype=bool) if mask is None else _np(mask)


def _num(x):
    return float(x.item() if hasattr(x, "item") else x)


def _aggregation(token_level_loss, dp_size, batch_num_tokens, global_batch_size):
    """(library mode, normaliser, scale) for OpenRLHF's aggregate_loss. The global count of the mode
    in use, when given, is the denominator and the result is multiplied by dp_size; when it is None the
    local masked mean is returned without the dp_size factor (OpenRLHF's fallback)."""
    if token_level_loss:
        glob = batch_num_tokens
        mode, norm = "token-mean", {"tokens": -1.0 if glob is None else _num(glob)}
    else:
        glob = global_batch_size
        mode, norm = "seq-mean-token-mean", {"sequences": -1.0 if glob is None else _num(glob)}
    scale = 1.0 if glob is None else float(dp_size)
    return mode, norm, scale


# ---- advantages and returns ------------------------------------------------------------------------

def get_advantages_and_returns(values, rewards, action_mask, gamma, lambd):
    """OpenRLHF get_advantages_and_returns -> (advantages, returns) (the experience maker's method,
    here a function of the same arguments).

    Step semantics (no skipping): V <- V m, r <- r m, then the textbook loop over EVERY position
      delta_t = r_t + gamma V_{t+1} - V_t  (V_T = 0),  A_t = delta_t + gamma lambd A_{t+1},
    so a masked observation token is a real step with value 0 and reward 0: the bootstrap across a
    tool block is 0 and the credit decays by (gamma lambd)^gap. returns = A + V m (the masked values).
    Masked positions keep what the loop writes there (not zeroed), as OpenRLHF. Not whitened (see
    whiten_advantages). action_mask None = every position valid.
    Output dtype: the promoted dtype of values and rewards; no gradient (OpenRLHF runs under no_grad)."""
    r = _np(rewards)
    v = _np(values)
    m = _mask_or_ones(action_mask, r.shape)
    adv, ret = _native.gae(v, r, m, gamma=float(gamma), lambda_actor=float(lambd), lambda_critic=float(lambd),
                           semantics="step", padding="raw", check_finite=False)
    return _out(adv, values, rewards), _out(ret, values, rewards)


def get_cumulative_returns(rewards, action_mask, gamma):
    """OpenRLHF get_cumulative_returns -> returns [B, T].

    G_t = m_t r_t + gamma G_{t+1} at every position (rewards masked first, no skipping; G_T = 0);
    masked positions keep the carried value. For the group estimators (rloo, reinforce_baseline,
    dr_grpo, group_norm) OpenRLHF forces gamma = 1 before calling this; pass gamma = 1.0 then.
    Assumption: returns a single tensor (the advantages of REINFORCE-style estimators are these
    returns). action_mask None = every position valid."""
    r = _np(rewards)
    m = _mask_or_ones(action_mask, r.shape)
    zeros = np.broadcast_to(np.zeros((), dtype=r.dtype if r.dtype.kind == "f" else np.float64), r.shape)
    ret, _ = _native.gae(zeros, r, m, gamma=float(gamma), lambda_actor=1.0, lambda_critic=1.0,
                         semantics="step", padding="raw", check_finite=False)
    return _out(ret, rewards)


_GROUP_ESTIMATORS = ("rloo", "reinforce_baseline", "dr_grpo", "group_norm")
_PASSTHROUGH_ESTIMATORS = ("gae", "reinforce")


def apply_group_baseline(rewards, n_samples_per_prompt, advantage_estimator):
    """OpenRLHF's group shaping of the scalar rewards (inline in its experience maker) -> shaped rewards.

    rewards: one score per sample, consecutive runs of n = n_samples_per_prompt samples belonging to
    one prompt (OpenRLHF reshapes to (prompts, n): the batch must be in that order and divisible by n).
    Per group g of n samples with scores s:
      rloo                          s - (sum_g s - s) / (n - 1)
      reinforce_baseline, dr_grpo   s - mean_g
      group_norm                    (s - mean_g) / (std_g + 1e-9), std unbiased (torch.std)
      gae, reinforce                unchanged (no group baseline)
    Output: same shape and kind as rewards. Next in OpenRLHF: the shaped score goes to the last action
    token, -kl_coef kl is added per token, and get_cumulative_returns(..., gamma=1.0) gives the
    advantages (whitened afterwards only for reinforce_baseline; see whiten_advantages).
    Assumption: the function name and signature (OpenRLHF has no function for this step). rloo and
    group_norm raise ValueError for n = 1 (OpenRLHF divides 0 by 0 there); the other two give 0."""
    est = advantage_estimator
    if est in _PASSTHROUGH_ESTIMATORS:
        return rewards
    if est not in _GROUP_ESTIMATORS:
        raise ValueError("apply_group_baseline: unknown advantage_estimator %r (expected one of %s)"
                         % (est, list(_GROUP_ESTIMATORS + _PASSTHROUGH_ESTIMATORS)))
    n = int(n_samples_per_prompt)
    s = _np(rewards)
    shape = s.shape
    s = s.reshape(-1)
    if n < 1 or s.size % n != 0:
        raise ValueError("apply_group_baseline: %d rewards do not split into groups of n_samples_per_prompt = %d"
                         % (s.size, n))
    if n == 1 and est in ("rloo", "group_norm"):
        raise ValueError("apply_group_baseline: %s needs n_samples_per_prompt >= 2 (OpenRLHF divides 0 by 0)" % est)
    if s.dtype.kind != "f":
        s = s.astype(np.float32)
    ids = np.arange(s.size, dtype=np.int64) // n
    ones = np.ones((s.size, 1), dtype=bool)
    if est == "rloo":
        _, out = _native.rloo(s, ids, ones, singleton="zero", check_finite=False)
    elif est == "group_norm":
        _, out = _native.grpo(s, ids, ones, norm_by_std=True, eps=1e-9, unbiased=True, singleton="zero",
                              check_finite=False)
    else:
        _, out = _native.grpo(s, ids, ones, norm_by_std=False, singleton="zero", check_finite=False)
    return _out(out.reshape(shape), rewards)


def whiten_advantages(advantages, action_mask, std_norm=True):
    """OpenRLHF's global advantage whitening (inline in its experience maker) -> whitened advantages.

    Over ALL valid tokens of the step (advantages may be one [B, T] tensor or a list of per-experience
    tensors, of any lengths; the statistics span all of them):
      mu = sum m x / N;  var = sum m (x - mu)^2 / N  (biased);  rstd = rsqrt(max(var, 1e-8))
      out = (x - mu) rstd at EVERY position, not re-masked (padding gets (x_pad - mu) rstd).
    std_norm=False (OpenRLHF's no_advantage_std_norm): out = x - mu.
    OpenRLHF applies it to gae, reinforce and reinforce_baseline advantages only.
    Assumption: the function name and signature (OpenRLHF has no function for this step); a list in
    gives a list out. ValueError when no token is valid (OpenRLHF: NaN everywhere)."""
    is_list = isinstance(advantages, (list, tuple))
    xs = list(advantages) if is_list else [advantages]
    ms = list(action_mask) if is_list else [action_mask]
    if len(xs) != len(ms):
        raise ValueError("whiten_advantages: %d advantage tensors but %d masks" % (len(xs), len(ms)))
    xa = [_np(x) for x in xs]
    ma = [_mask_or_ones(m, x.shape) for m, x in zip(ms, xa)]
    for x, m in zip(xa, ma):
        if x.shape != m.shape:
            raise ValueError("whiten_advantages: advantages of shape %s with a mask of shape %s"
                             % (x.shape, m.shape))
    dt = np.result_type(*[x.dtype for x in xa]) if xa else np.float32
    if dt.kind != "f":
        dt = np.float32
    flat = np.concatenate([x.reshape(-1).astype(dt, copy=False) for x in xa]).reshape(1, -1)
    mflat = np.concatenate([(m != 0).reshape(-1) for m in ma]).reshape(1, -1)
    if not mflat.any():
        raise ValueError("whiten_advantages: the action mask has no valid token (OpenRLHF would give NaN)")
    if std_norm:
        out = _native.masked_whiten(flat, mflat, shift_mean=True, unbiased=False, eps=1e-8, eps_mode="floor",
                                    padding="raw", check_finite=False)
    else:
        mu = np.sum(flat[mflat], dtype=np.float64) / np.count_nonzero(mflat)
        out = flat - flat.dtype.type(mu)
    res, pos = [], 0
    for x, ref in zip(xa, xs):
        res.append(_out(out[0, pos:pos + x.size].reshape(x.shape), ref))
        pos += x.size
    return res if is_list else res[0]


# ---- KL -----------------------------------------------------------------------------------------------

_KL_ESTIMATORS = ("k1", "k2", "k3")


def compute_approx_kl(log_probs, log_probs_base, kl_estimator="k1", action_mask=None):
    """OpenRLHF compute_approx_kl -> per-token KL estimate (float32), delta = log_probs - log_probs_base
    computed in fp32 (inputs cast to float32 first, as OpenRLHF's .float()):
      k1: delta     k2: delta^2 / 2     k3: exp(-delta) - 1 + delta
    and EVERY estimator clamped to [-10, 10] (gradient 0 where the clamp is active, boundaries pass, as
    torch.clamp). k3 has no input clamp in OpenRLHF; the library's +-20 input clamp gives the same
    values and gradients (any |delta| > 20 puts k3 above 10 either way).
    Differentiable with respect to log_probs and log_probs_base (d/dbase = -d/dlog_probs); gradients
    flow back through the fp32 cast to the inputs' dtype.
    Assumption: the current signature has no mask; action_mask (keyword, or the third positional
    argument when it is not a string, as in older OpenRLHF) multiplies the result. Unknown estimators
    raise ValueError."""
    if kl_estimator is not None and not isinstance(kl_estimator, str):
        action_mask, kl_estimator = kl_estimator, "k1"
    if kl_estimator not in _KL_ESTIMATORS:
        raise ValueError("compute_approx_kl: unknown kl_estimator %r (OpenRLHF: k1, k2, k3)" % (kl_estimator,))
    lp = _np32(log_probs)
    rp = _np32(log_probs_base)
    if lp.shape != rp.shape:
        raise ValueError("compute_approx_kl: log_probs of shape %s and log_probs_base of shape %s"
                         % (lp.shape, rp.shape))
    shape = lp.shape
    lp2, rp2 = (lp, rp) if lp.ndim == 2 else (lp.reshape(1, -1), rp.reshape(1, -1))
    raw = _native.kl_values(lp2, rp2, None, estimator=kl_estimator, clamp=True).reshape(shape)
    val = np.clip(raw, np.float32(-10.0), np.float32(10.0))
    m = None
    if action_mask is not None:
        m = (_np(action_mask) != 0).astype(np.float32)
        val = val * m
    if _needs_grad(log_probs, log_probs_base):
        _, d, _ = _native.kl_loss(lp2, rp2, None, estimator=kl_estimator, coef=1.0, clamp=True,
                                  aggregation="token-sum", check_finite=False, compute_grad=True)
        d = d.reshape(shape) * ((raw >= -10.0) & (raw <= 10.0))
        if m is not None:
            d = d * m
        d1 = d if _is_t(log_probs) and log_probs.requires_grad else None
        d2 = -d if _is_t(log_probs_base) and log_probs_base.requires_grad else None
        x1 = log_probs.float() if _is_t(log_probs) else torch.from_numpy(lp)
        x2 = log_probs_base.float() if _is_t(log_probs_base) else torch.from_numpy(rp)
        return _TokenwiseFn.apply(lambda: (val, d1, d2), x1, x2)
    if _is_t(log_probs) or _is_t(log_probs_base):
        return torch.from_numpy(np.ascontiguousarray(val))
    return val


def _np32(x):
    if _is_t(x):
        if x.device.type != "cpu":
            raise ValueError("asyppo.openrlhf: only CPU tensors are supported, got " + str(x.device))
        return x.detach().float().numpy()
    return np.asarray(x, dtype=np.float32)


# ---- loss aggregation ---------------------------------------------------------------------------------

def masked_mean(tensor, mask, dim=None):
    """OpenRLHF masked_mean: sum(tensor * mask, dim) / sum(mask, dim), no epsilon (an empty mask gives
    NaN, as OpenRLHF); mask None = plain mean. Plain torch / NumPy (differentiable by autograd)."""
    if mask is None:
        return tensor.mean() if dim is None else tensor.mean(dim)
    if _is_t(tensor) or _is_t(mask):
        x = tensor if _is_t(tensor) else torch.as_tensor(tensor)
        m = mask if _is_t(mask) else torch.as_tensor(mask)
        if dim is None:
            return (x * m).sum() / m.sum()
        return (x * m).sum(dim) / m.sum(dim)
    x = np.asarray(tensor)
    m = np.asarray(mask)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (x * m).sum(axis=dim) / m.sum(axis=dim)


def aggregate_loss(loss, loss_mask, token_level_loss=True, dp_size=1, batch_num_tokens=None,
                   global_batch_size=None):
    """OpenRLHF aggregate_loss, S_i = sum_t m l, n_i = sum_t m:
      token_level_loss=True   sum_i S_i / batch_num_tokens * dp_size
      token_level_loss=False  sum_{n_i > 0} S_i / (n_i + 1e-8) / global_batch_size * dp_size
    batch_num_tokens / global_batch_size are the totals of the optimizer-step window (all micro-batches
    and DP ranks) / gradient-accumulation steps (OpenRLHF #1249); the dp_size factor cancels the DP
    gradient averaging. None = this call's local masked mean (valid tokens; non-empty rows), WITHOUT the
    dp_size factor (OpenRLHF's fallback). A call with no valid token returns 0 (OpenRLHF: NaN in the
    local fallback). Differentiable with respect to loss. The library divides by n_i, not n_i + 1e-8
    (relative difference below 1e-8)."""
    mode, norm, scale = _aggregation(token_level_loss, dp_size, batch_num_tokens, global_batch_size)
    lm = _np(loss)
    m = _mask_or_ones(loss_mask, lm.shape)
    lm2, m2 = (lm, m) if lm.ndim == 2 else (lm.reshape(1, -1), np.broadcast_to(m, lm.shape).reshape(1, -1))
    need = _needs_grad(loss)
    val, w, _ = _native.aggregate_loss(lm2, m2, mode, norm, check_finite=False, compute_grad=need)
    if scale != 1.0:
        val *= scale
        if need:
            w *= scale
    if need:
        w = w.reshape(lm.shape)
        return _NativeLoss.apply(lambda: (val, [w]), loss)
    return _scalar_like(val, loss)


# ---- losses ---------------------------------------------------------------------------------------------

_Module = torch.nn.Module if torch is not None else object


class PolicyLoss(_Module):
    """OpenRLHF PolicyLoss (PPO clip), a callable module:

        loss, clip_ratio, ppo_kl, vllm_kl = PolicyLoss(...)(log_probs, old_log_probs, advantages,
                                                            action_mask, rollout_log_probs=None,
                                                            dp_size=1, batch_num_tokens=None,
                                                            global_batch_size=None)

    rho = exp(clamp(log_probs - old_log_probs, -20, 20)); surr1 = rho A;
    surr2 = clip(rho, 1 - clip_eps_low, 1 + clip_eps_high) A; l = -min(surr1, surr2);
    dual_clip = c (None = off; must be > 1): where A < 0, l = -max(min(surr1, surr2), c A) = min(l, -c A);
    loss = aggregate_loss(l, action_mask, token_level_loss, dp_size, batch_num_tokens, global_batch_size).
    clip_ratio = masked mean of 1[surr2 < surr1]; ppo_kl = masked mean of old_log_probs - log_probs
    (unclamped); both detached, local mask, no epsilon (NaN for an empty mask, as OpenRLHF).
    vLLM importance-sampling correction (enable_vllm_is_correction, policy_loss_type "ppo"), with
    w = exp(old_log_probs - rollout_log_probs) (detached) and [lo, hi] = vllm_is_truncated_threshold:
      "tis"     l *= clamp(w, lo, hi)
      "icepop"  l *= w 1[lo <= w <= hi]
    and vllm_kl = masked mean of rollout_log_probs - old_log_probs (None without the correction).
    The loss is differentiable with respect to log_probs (old_log_probs, advantages constant).
    Assumptions: constructor and forward signatures and the 4-tuple return as in the current
    OpenRLHF loss.py. Not covered (NotImplementedError): policy_loss_type "gspo" and the
    "seq-mask-tis" correction (its token weights are described ambiguously: clamped or not).
    action_mask None = every token valid. IS weights (>= 0) are applied to A, which is exact for
    non-negative weights; clip_ratio is that of the unweighted loss, as OpenRLHF."""

    def __init__(self, clip_eps_low=0.2, clip_eps_high=0.2, dual_clip=None, token_level_loss=True,
                 policy_loss_type="ppo", enable_vllm_is_correction=False, vllm_is_truncated_threshold=None,
                 vllm_is_correction_type="tis"):
        super().__init__()
        self.clip_eps_low = clip_eps_low
        self.clip_eps_high = clip_eps_high
        self.dual_clip = dual_clip
        self.token_level_loss = token_level_loss
        self.policy_loss_type = policy_loss_type
        self.enable_vllm_is_correction = enable_vllm_is_correction
        self.vllm_is_truncated_threshold = vllm_is_truncated_threshold
        self.vllm_is_correction_type = vllm_is_correction_type
        if policy_loss_type == "gspo":
            raise NotImplementedError("asyppo.openrlhf.PolicyLoss: policy_loss_type 'gspo' is not covered")
        if policy_loss_type != "ppo":
            raise ValueError("Invalid policy loss type: %s" % policy_loss_type)
        if dual_clip is not None and not float(dual_clip) > 1.0:
            raise ValueError("dual_clip must be > 1.0, got %s" % dual_clip)
        if vllm_is_correction_type not in ("tis", "icepop", "seq-mask-tis"):
            raise ValueError("Invalid vllm_is_correction_type: %s, must be one of tis/icepop/seq-mask-tis"
                             % vllm_is_correction_type)
        if enable_vllm_is_correction and vllm_is_correction_type == "seq-mask-tis":
            raise NotImplementedError("asyppo.openrlhf.PolicyLoss: the 'seq-mask-tis' correction is not covered")

    def forward(self, log_probs, old_log_probs, advantages, action_mask=None, rollout_log_probs=None, dp_size=1,
                batch_num_tokens=None, global_batch_size=None):
        mode, norm, scale = _aggregation(self.token_level_loss, dp_size, batch_num_tokens, global_batch_size)
        lp = _np(log_probs)
        olp = _np(old_log_probs)
        adv = _np(advantages)
        m = _mask_or_ones(action_mask, lp.shape)
        need = _needs_grad(log_probs)
        kw = dict(clip_low=float(self.clip_eps_low), clip_high=float(self.clip_eps_high),
                  dual_clip=0.0 if self.dual_clip is None else float(self.dual_clip), log_ratio_clamp=20.0,
                  aggregation=mode, normalizer=norm, check_finite=False)
        vllm_kl = None
        if self.enable_vllm_is_correction:
            if rollout_log_probs is None:
                raise ValueError("PolicyLoss: enable_vllm_is_correction needs rollout_log_probs")
            lo, hi = self.vllm_is_truncated_threshold
            rlp = _np(rollout_log_probs)
            w = np.exp(olp.astype(np.float64) - rlp)
            if self.vllm_is_correction_type == "tis":
                w = np.clip(w, lo, hi)
            else:  # icepop
                w = w * ((w >= lo) & (w <= hi))
            _, _, met = _native.policy_loss(lp, olp, adv, m, compute_grad=False, **kw)
            loss, grad, _ = _native.policy_loss(lp, olp, (adv * w).astype(adv.dtype, copy=False), m,
                                                compute_grad=need, **kw)
            mb = m != 0
            with np.errstate(invalid="ignore", divide="ignore"):
                kl = np.sum((rlp.astype(np.float64) - olp)[mb]) / np.count_nonzero(mb)
            vllm_kl = _scalar_like(kl, log_probs)
        else:
            loss, grad, met = _native.policy_loss(lp, olp, adv, m, compute_grad=need, **kw)
        if scale != 1.0:
            loss *= scale
            if need:
                grad *= scale
        clip_ratio = torch.tensor(met["clip_fraction"], dtype=torch.float32) if _is_t(log_probs) else \
            np.float64(met["clip_fraction"])
        ppo_kl = _scalar_like(met["approx_kl"], log_probs)
        if need:
            return _NativeLoss.apply(lambda: (loss, [grad]), log_probs), clip_ratio, ppo_kl, vllm_kl
        return _scalar_like(loss, log_probs), clip_ratio, ppo_kl, vllm_kl

    if torch is None:  # pragma: no cover
        __call__ = forward


class ValueLoss(_Module):
    """OpenRLHF ValueLoss, a callable module:

        loss = ValueLoss(clip_eps=None, token_level_loss=True)(values, old_values, returns, action_mask,
                                                                dp_size=1, batch_num_tokens=None,
                                                                global_batch_size=None)

    clip_eps = c (OpenRLHF's --value_clip, 0.5 in its CLI; None = unclipped):
      Vc = old_values + clamp(values - old_values, -c, c); l = max((Vc - R)^2, (values - R)^2);
    c None: l = (values - R)^2; loss = 0.5 * aggregate_loss(l, action_mask, token_level_loss, dp_size,
    batch_num_tokens, global_batch_size) (the actor's normaliser). Differentiable with respect to
    values (gradient 0 on tokens where the clipped branch is larger, as torch.max).
    Assumptions: the constructor keyword is clip_eps (value_clip= is accepted as an alias); clip_eps
    must be > 0 (OpenRLHF with 0 would clamp to the old values; the library reads 0 as no clipping)."""

    def __init__(self, clip_eps=None, token_level_loss=True, value_clip=None):
        super().__init__()
        if clip_eps is None:
            clip_eps = value_clip
        if clip_eps is not None and not float(clip_eps) > 0:
            raise ValueError("asyppo.openrlhf.ValueLoss: clip_eps must be > 0 or None, got %s" % clip_eps)
        self.clip_eps = clip_eps
        self.token_level_loss = token_level_loss

    def forward(self, values, old_values, returns, action_mask=None, dp_size=1, batch_num_tokens=None,
                global_batch_size=None):
        mode, norm, scale = _aggregation(self.token_level_loss, dp_size, batch_num_tokens, global_batch_size)
        v = _np(values)
        m = _mask_or_ones(action_mask, v.shape)
        clip = self.clip_eps is not None
        need = _needs_grad(values)
        loss, grad, _ = _native.value_loss(v, _np(returns), m, _np(old_values) if clip else None,
                                           clip=float(self.clip_eps) if clip else 0.0, half=True,
                                           aggregation=mode, normalizers=[norm], check_finite=False,
                                           compute_grad=need, explained_variance=False)
        if scale != 1.0:
            loss *= scale
            if need:
                grad *= scale
        if need:
            return _NativeLoss.apply(lambda: (loss, [grad]), values)
        return _scalar_like(loss, values)

    if torch is None:  # pragma: no cover
        __call__ = forward
