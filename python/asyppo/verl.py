"""asyppo.verl: drop-in replacements for verl's numerical functions, computed by asyppo.

Switch by changing an import, e.g.

    from asyppo.verl import compute_gae_advantage_return, compute_policy_loss_vanilla, agg_loss

Names, argument names and orders, defaults and return values follow verl's
``verl/trainer/ppo/core_algos.py`` and ``verl/utils/torch_functional.py`` as documented in
/work/shared/docs/peer-semantics.md sections 2.2-2.9 (verl-project/verl @ 1dda039b, Aug 2026),
including verl's quirks (they are listed per function). No verl code is used; the behaviour is
re-implemented from that description. Where the description leaves a detail open, the docstring
says which choice was made ("Assumption").

Inputs: torch tensors (CPU) or NumPy arrays; outputs are of the same kind (tensors in, tensors out,
in the dtype of the main input). Masks may be bool, integer or float; any nonzero entry counts as a
valid token (verl's masks are 0/1). When a loss input is a tensor with requires_grad, the returned
loss is differentiable: a torch.autograd.Function whose forward calls the library, which returns the
loss and its exact analytic gradient, and whose backward scales that gradient by grad_output. So
``loss.backward()`` works unchanged. Numbers and gradients equal verl's up to float rounding (the
library accumulates in double).

NaN/Inf inputs are not rejected here (verl propagates them); shape errors raise ValueError.
"""

import numpy as np

from . import _native

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

__all__ = [
    "compute_gae_advantage_return",
    "compute_grpo_outcome_advantage",
    "compute_rloo_outcome_advantage",
    "compute_reinforce_plus_plus_outcome_advantage",
    "compute_reinforce_plus_plus_baseline_outcome_advantage",
    "compute_policy_loss_vanilla",
    "get_policy_loss_fn",
    "compute_value_loss",
    "kl_penalty",
    "agg_loss",
    "masked_whiten",
    "masked_mean",
    "masked_var",
    "entropy_from_logits",
]


# ---- conversion helpers ------------------------------------------------------------------------

def _is_t(x):
    return torch is not None and isinstance(x, torch.Tensor)


def _np(x):
    """Zero-copy NumPy view of a CPU tensor (float16/bfloat16 computed in float32), or np.asarray."""
    if _is_t(x):
        if x.device.type != "cpu":
            raise ValueError("asyppo.verl: only CPU tensors are supported, got " + str(x.device))
        t = x.detach()
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.float()
        return t.numpy()
    return np.asarray(x)


def _mask8(x):
    """A mask as uint8 0/1 for the native layer: zero-copy for bool/uint8/int8 inputs, else one
    `!= 0` pass (float and int64 masks), done once per call and shared by every native call and the
    count check (each native call would otherwise convert a float mask again)."""
    a = _np(x)
    if a.dtype.itemsize == 1 and a.dtype.kind in "bui":
        return a.view(np.uint8) if a.dtype != np.uint8 else a
    return np.not_equal(a, 0).view(np.uint8)


def _like(arr, ref):
    """arr (NumPy) as the kind of ref: a tensor of ref's dtype when ref is a tensor."""
    if _is_t(ref):
        t = torch.from_numpy(np.ascontiguousarray(arr) if not isinstance(arr, np.ndarray) else arr)
        return t if t.dtype == ref.dtype else t.to(ref.dtype)
    return arr


def _scalar_like(value, ref):
    if _is_t(ref):
        dt = ref.dtype if ref.is_floating_point() else torch.float32
        return torch.tensor(value, dtype=dt)
    return np.float64(value)


def _needs_grad(*xs):
    return torch is not None and torch.is_grad_enabled() and any(_is_t(x) and x.requires_grad for x in xs)


def _get(config, name, default=None):
    """config.name for dicts, OmegaConf configs and dataclass/attribute configs; default if absent."""
    if config is None:
        return default
    if isinstance(config, dict):
        return config.get(name, default)
    try:
        v = getattr(config, name)
    except (AttributeError, KeyError):
        getter = getattr(config, "get", None)
        if callable(getter):
            try:
                return getter(name, default)
            except Exception:  # pragma: no cover
                return default
        return default
    return default if v is None else v


def _group_ids(index):
    """verl's `index` (prompt uids: str/object array, list, int array or tensor) -> int64 ids."""
    if _is_t(index):
        index = index.detach().cpu().numpy()
    arr = np.asarray(index)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if arr.dtype.kind in "iub":
        return arr.astype(np.int64, copy=False)
    try:
        _, inv = np.unique(arr, return_inverse=True)
        return inv.astype(np.int64)
    except TypeError:  # mixed, unorderable uids
        ids = {}
        return np.fromiter((ids.setdefault(u, len(ids)) for u in arr.tolist()), dtype=np.int64, count=arr.size)


def _verl_mask_count_check(m):
    """verl's masked_var(unbiased=True) raises for 0 or 1 valid tokens; so does every caller."""
    n = int(np.count_nonzero(m))
    if n == 0:
        raise ValueError("At least one element in the mask has to be 1.")
    if n == 1:
        raise ValueError("The sum of the mask is one, which can cause a division by zero.")
    return n


# ---- autograd ----------------------------------------------------------------------------------

if torch is not None:

    class _NativeLoss(torch.autograd.Function):
        """forward(ctx, compute, *inputs): compute() calls the library and returns (loss, grads), one
        gradient (NumPy, or None) per input; backward returns grad_output * saved gradient."""

        @staticmethod
        def forward(ctx, compute, *inputs):
            loss, grads = compute()
            saved = []
            for x, g in zip(inputs, grads):
                saved.append(None if g is None else _like(g, x))
            ctx.grads = saved
            ref = inputs[0]
            return torch.tensor(loss, dtype=ref.dtype if ref.is_floating_point() else torch.float32)

        @staticmethod
        def backward(ctx, grad_output):
            out = [None]
            unit = grad_output.numel() == 1 and float(grad_output) == 1.0  # loss.backward(): no multiply
            grads, ctx.grads = ctx.grads, None  # drop ctx's reference: autograd may then adopt the
            for g in grads:                     # tensor as .grad instead of copying it (4 MB at 256 x 4096)
                out.append(None if g is None else (g if unit else g * grad_output.to(g.dtype)))
            del grads
            return tuple(out)

    class _TokenwiseFn(torch.autograd.Function):
        """Per-token output y(x1, x2) with saved local derivatives dy/dx1, dy/dx2 (either may be None)."""

        @staticmethod
        def forward(ctx, compute, x1, x2):
            y, d1, d2 = compute()
            ctx.d = (None if d1 is None else _like(d1, x1), None if d2 is None else _like(d2, x2))
            return _like(y, x1)

        @staticmethod
        def backward(ctx, g):
            d1, d2 = ctx.d
            return (None, None if d1 is None else g * d1, None if d2 is None else g * d2)

    class _EntropyFn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, logits):
            z3 = _logits3(_np(logits))
            _, h = _native.logits_logp_entropy(z3, check_finite=False)
            ctx.z3 = z3
            ctx.shape = tuple(logits.shape)
            ctx.dtype = logits.dtype
            return torch.from_numpy(h.reshape(ctx.shape[:-1])).to(logits.dtype)

        @staticmethod
        def backward(ctx, g):
            z3 = ctx.z3
            g3 = _np(g.to(torch.float64 if z3.dtype == np.float64 else torch.float32)).reshape(z3.shape[:2])
            gz = _native.logits_logp_entropy_backward(z3, grad_entropy=g3, check_finite=False)
            return torch.from_numpy(gz.reshape(ctx.shape)).to(ctx.dtype)


def _loss_output(loss, grads, inputs, ref):
    """The loss as a scalar of ref's kind; differentiable through the saved gradients when needed."""
    if _needs_grad(*inputs):
        return _NativeLoss.apply(lambda: (loss, grads), *inputs)
    return _scalar_like(loss, ref)


# ---- global batch information (agg_loss) ----------------------------------------------------------

def _normalizer(loss_agg_mode, dp_size, batch_num_tokens, global_batch_size, loss_scale_factor):
    dp = 1 if dp_size is None else int(dp_size)
    if dp > 1:
        need_tokens = loss_agg_mode == "token-mean"
        need_seqs = loss_agg_mode.startswith("seq-mean")
        if (need_tokens and batch_num_tokens is None) or (need_seqs and global_batch_size is None):
            raise ValueError(
                "agg_loss: dp_size = %d > 1 needs the global batch information (batch_num_tokens / "
                "global_batch_size); local counts are only valid for a single rank" % dp
            )

    def f(x):
        if x is None:
            return -1.0
        return float(x.item() if hasattr(x, "item") else x)

    return {"tokens": f(batch_num_tokens), "sequences": f(global_batch_size), "norm_length": f(loss_scale_factor)}, dp


def _batch_info(config, global_batch_info=None, **kwargs):
    """dp_size, batch_num_tokens, global_batch_size, loss_scale_factor from kwargs, a
    global_batch_info dict/object, or config.global_batch_info / config.loss_scale_factor."""
    info = {}
    src = global_batch_info if global_batch_info is not None else _get(config, "global_batch_info", None)
    for key in ("dp_size", "batch_num_tokens", "global_batch_size", "loss_scale_factor"):
        v = kwargs.get(key)
        if v is None and src is not None:
            v = _get(src, key, None)
        if v is None and key == "loss_scale_factor":
            v = _get(config, "loss_scale_factor", None)
        info[key] = v
    return info


# ---- torch_functional ------------------------------------------------------------------------------

def masked_mean(values, mask, axis=None):
    """verl masked_mean: sum(where(mask, values * mask, 0), axis) / (sum(mask, axis) + 1e-8).
    Entries outside the mask never reach the sum (NaN there is harmless)."""
    if _is_t(values) or _is_t(mask):
        v = values if _is_t(values) else torch.as_tensor(values)
        m = mask if _is_t(mask) else torch.as_tensor(mask)
        mb = m.bool()
        s = torch.where(mb, v * m, torch.zeros_like(v)).sum() if axis is None else torch.where(
            mb, v * m, torch.zeros_like(v)).sum(axis)
        n = m.sum() if axis is None else m.sum(axis)
        return s / (n + 1e-8)
    v = np.asarray(values)
    m = np.asarray(mask)
    s = np.where(m != 0, v * m, 0).sum(axis=axis)
    return s / (m.sum(axis=axis) + 1e-8)


def masked_var(values, mask, unbiased=True):
    """verl masked_var: masked_mean((x - masked_mean(x))^2); unbiased multiplies by N/(N-1) and
    raises ValueError for N = 0 or N = 1 (verl's behaviour)."""
    mean = masked_mean(values, mask)
    centered = values - mean
    var = masked_mean(centered * centered, mask)
    if unbiased:
        n = float(mask.sum()) if not _is_t(mask) else float(mask.sum().item())
        if n == 0:
            raise ValueError("At least one element in the mask has to be 1.")
        if n == 1:
            raise ValueError("The sum of the mask is one, which can cause a division by zero.")
        var = var * (n / (n - 1))
    return var


def masked_whiten(values, mask, shift_mean=True):
    """verl masked_whiten: (x - mu) * rsqrt(var + 1e-8) at EVERY position (not re-masked: padding gets
    (x_pad - mu)/sigma), var unbiased; shift_mean=False adds mu back. ValueError for N <= 1 (verl).
    Computed by the library (two-pass moments in double); a tensor that requires grad goes through
    the same formula in torch so that autograd sees it."""
    if _needs_grad(values):
        mean = masked_mean(values, mask)
        var = masked_var(values, mask)
        w = (values - mean) * torch.rsqrt(var + 1e-8)
        return w if shift_mean else w + mean
    x = _np(values)
    m = _mask8(mask)
    _verl_mask_count_check(m)
    if x.ndim == 2:
        x2, m2 = x, m
    else:
        x2 = x.reshape(1, -1) if x.ndim < 2 else x.reshape(-1, x.shape[-1])
        m2 = np.broadcast_to(m, x.shape).reshape(x2.shape)
    out = _native.masked_whiten(x2, m2, shift_mean=bool(shift_mean), unbiased=True, eps=1e-8, padding="raw",
                                check_finite=False)
    return _like(out.reshape(x.shape), values)


def entropy_from_logits(logits):
    """verl entropy_from_logits: logsumexp(z) - sum softmax(z) z over the last dimension, for logits of
    any leading shape. Differentiable (library backward: dH/dz = -p (log p + H))."""
    if _needs_grad(logits):
        return _EntropyFn.apply(logits)
    z = _np(logits)
    _, h = _native.logits_logp_entropy(_logits3(z), check_finite=False)
    return _like(h.reshape(z.shape[:-1]), logits)


def _logits3(z):
    if z.ndim == 3:
        return z
    if z.ndim == 2:
        return z[None]
    return z.reshape(1, -1, z.shape[-1])


# ---- advantage estimators -------------------------------------------------------------------------

def compute_gae_advantage_return(token_level_rewards, values, response_mask, gamma, lam):
    """verl compute_gae_advantage_return -> (advantages, returns).

    Skip semantics: masked (padding / observation) tokens are transparent; one gamma per transition
    between valid tokens; a reward on a masked token is dropped. Raw padding as in verl: a masked
    position holds the advantage carried from the next valid token (0 after the last one).
    returns = raw advantages + values (values as given; verl's critic zeroes them at padding).
    advantages = verl masked_whiten(raw, response_mask): unbiased var, rsqrt(var + 1e-8), applied at
    every position and not re-masked, so trailing padding is (0 - mu)/sigma != 0 (verl's quirk).
    ValueError when the mask has fewer than 2 valid tokens (verl's masked_var raises)."""
    r = _np(token_level_rewards)
    v = _np(values)
    m = _mask8(response_mask)
    _verl_mask_count_check(m)
    adv, ret = _native.gae(v, r, m, gamma=float(gamma), lambda_actor=float(lam), lambda_critic=float(lam),
                           semantics="skip", padding="raw", check_finite=False)
    _native.masked_whiten(adv, m, shift_mean=True, unbiased=True, eps=1e-8, padding="raw", check_finite=False,
                          out=adv)
    return _like(adv, token_level_rewards), _like(ret, token_level_rewards)


def compute_grpo_outcome_advantage(token_level_rewards, response_mask, index, epsilon=1e-6,
                                   norm_adv_by_std_in_grpo=True, config=None):
    """verl compute_grpo_outcome_advantage -> (scores, scores) (verl returns the advantages twice).

    s_b = sum_t token_level_rewards[b, t] (every position); per group of equal `index`:
    A_b = (s_b - mean_g) / (std_g + epsilon), std unbiased (torch.std), or s_b - mean_g when
    norm_adv_by_std_in_grpo is False. A singleton group gets mean 0 and std 1 (verl), so
    A_b = s_b / (1 + epsilon), not 0. Output A_b * response_mask[b, t].
    `config` is accepted for signature compatibility (verl reads nothing else from it here)."""
    r = _np(token_level_rewards)
    m = _mask8(response_mask)
    scores = _native.sequence_scores(r)
    adv, _ = _native.grpo(scores, _group_ids(index), m, norm_by_std=bool(norm_adv_by_std_in_grpo),
                          eps=float(epsilon), unbiased=True, singleton="verl", check_finite=False)
    out = _like(adv, token_level_rewards)
    return out, out


def compute_rloo_outcome_advantage(token_level_rewards, response_mask, index, epsilon=1e-6, config=None):
    """verl compute_rloo_outcome_advantage (the loop estimator) -> (scores, scores).

    A_b = s_b * n/(n-1) - mean_g * n/(n-1) for groups of n > 1; a singleton keeps A_b = s_b (verl's loop;
    verl's rloo_vectorized gives 0 there: use asyppo.rloo(..., singleton="zero") for that)."""
    r = _np(token_level_rewards)
    m = _mask8(response_mask)
    scores = _native.sequence_scores(r)
    adv, _ = _native.rloo(scores, _group_ids(index), m, singleton="verl", check_finite=False)
    out = _like(adv, token_level_rewards)
    return out, out


def compute_reinforce_plus_plus_baseline_outcome_advantage(token_level_rewards, response_mask, index,
                                                           epsilon=1e-6, config=None):
    """verl compute_reinforce_plus_plus_baseline_outcome_advantage -> (scores, scores).

    A_b = s_b - mean_g (singleton: mean 0), tiled over tokens, * mask, verl masked_whiten over the
    batch, * mask. ValueError for fewer than 2 valid tokens (verl's masked_var)."""
    r = _np(token_level_rewards)
    m = _mask8(response_mask)
    _verl_mask_count_check(m)
    scores = _native.sequence_scores(r)
    adv, _ = _native.reinforce_pp_baseline(scores, _group_ids(index), m, singleton="verl", shift_mean=True,
                                           unbiased=True, eps=1e-8, padding="zero", check_finite=False)
    out = _like(adv, token_level_rewards)
    return out, out


def compute_reinforce_plus_plus_outcome_advantage(token_level_rewards, response_mask, config=None, **kwargs):
    """verl compute_reinforce_plus_plus_outcome_advantage -> (advantages, returns).

    G_t = r_t + gamma G_next over the valid tokens (masked tokens carried through and set to 0 in
    the returns); advantages = masked_whiten(G, mask) * mask. gamma = config.gamma (default 1.0);
    Assumption: an explicit gamma= keyword (older verl signature) takes precedence; rewards on masked
    tokens are ignored (verl places the score on the last valid token)."""
    gamma = kwargs.get("gamma")
    if gamma is None:
        gamma = _get(config, "gamma", 1.0)
    r = _np(token_level_rewards)
    m = _mask8(response_mask)
    _verl_mask_count_check(m)
    zeros = np.broadcast_to(np.zeros((), dtype=r.dtype if r.dtype.kind == "f" else np.float64), r.shape)
    ret, _ = _native.gae(zeros, r, m, gamma=float(gamma), lambda_actor=1.0, lambda_critic=1.0,
                         semantics="skip", padding="zero", check_finite=False)
    adv = _native.masked_whiten(ret, m, shift_mean=True, unbiased=True, eps=1e-8, padding="zero",
                                check_finite=False)
    return _like(adv, token_level_rewards), _like(ret, token_level_rewards)


# ---- losses ---------------------------------------------------------------------------------------

def agg_loss(loss_mat, loss_mask, loss_agg_mode, dp_size=1, batch_num_tokens=None, global_batch_size=None,
             loss_scale_factor=None):
    """verl agg_loss (Aug 2026), S_i = sum_t m l, n_i = sum_t m:
      token-mean              sum_i S_i / N_global * dp_size
      token-sum               sum_i S_i * dp_size
      seq-mean-token-sum      sum_{n_i>0} S_i / B_global * dp_size
      seq-mean-token-sum-norm sum_{n_i>0} S_i / B_global / loss_scale_factor * dp_size
                              (loss_scale_factor default: the padded length T)
      seq-mean-token-mean     sum_{n_i>0} S_i / n_i / B_global * dp_size
    N_global = batch_num_tokens, B_global = global_batch_size; None = this call's local counts
    (valid tokens; non-empty rows), which raises when dp_size > 1 (verl).
    Assumption: keyword names dp_size, batch_num_tokens, global_batch_size, loss_scale_factor.
    A call with no valid token returns 0. Differentiable with respect to loss_mat."""
    norm, dp = _normalizer(loss_agg_mode, dp_size, batch_num_tokens, global_batch_size, loss_scale_factor)
    lm = _np(loss_mat)
    m = _np(loss_mask)
    need = _needs_grad(loss_mat)
    val, w, _ = _native.aggregate_loss(lm, m, loss_agg_mode, norm, check_finite=False, compute_grad=need)
    if dp != 1:
        val *= dp
        if need:
            w *= dp
    if need:
        return _NativeLoss.apply(lambda: (val, [w]), loss_mat)
    return _scalar_like(val, loss_mat)


def compute_policy_loss_vanilla(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean",
                                config=None, rollout_is_weights=None):
    """verl compute_policy_loss_vanilla -> (pg_loss, pg_metrics).

    rho = exp(clamp(log_prob - old_log_prob, -20, 20)); l = max(-A rho, -A clip(rho, 1 - clip_low,
    1 + clip_high)); where A < 0: l = min(l, -clip_ratio_c A) (dual clip, always on in verl); optional
    l *= rollout_is_weights; pg_loss = agg_loss(l, response_mask, loss_agg_mode, global batch info).
    config fields read: clip_ratio (0.2), clip_ratio_low / clip_ratio_high (None -> clip_ratio),
    clip_ratio_c (3.0, must be > 1), global_batch_info (dict or object with dp_size,
    batch_num_tokens, global_batch_size; absent or {} = local counts as verl), loss_scale_factor.
    pg_metrics (Assumption: the current verl returns a dict of floats with these keys):
      "actor/pg_clipfrac"        masked mean of 1[l2 > l1]
      "actor/ppo_kl"             masked mean of old_log_prob - log_prob (the library's is unclamped;
                                 verl's uses the +-20-clamped log-ratio: equal unless |delta| > 20)
      "actor/pg_clipfrac_lower"  masked mean of 1[max(l1, l2) > -c A] 1[A < 0]
    Metrics use this call's mask (0 when it is empty). The loss is differentiable with respect to
    log_prob (old_log_prob and advantages are treated as constants, as in verl's training loop).
    rollout_is_weights (>= 0, detached) multiply the per-token loss; they are applied to A, which is
    exact for non-negative weights; the metrics are those of the unweighted loss, as in verl."""
    clip_ratio = _get(config, "clip_ratio", 0.2)
    if clip_ratio is None:
        clip_ratio = 0.2
    clip_low = _get(config, "clip_ratio_low", None)
    clip_high = _get(config, "clip_ratio_high", None)
    clip_low = clip_ratio if clip_low is None else clip_low
    clip_high = clip_ratio if clip_high is None else clip_high
    clip_c = _get(config, "clip_ratio_c", 3.0)
    clip_c = 3.0 if clip_c is None else float(clip_c)
    if not clip_c > 1.0:
        raise ValueError("The lower bound of the clip_ratio_c for dual-clip PPO should be greater than 1.0, "
                         "but get the value: %s." % clip_c)
    info = _batch_info(config)
    norm, dp = _normalizer(loss_agg_mode, info["dp_size"], info["batch_num_tokens"], info["global_batch_size"],
                           info["loss_scale_factor"])
    lp = _np(log_prob)
    olp = _np(old_log_prob)
    adv = _np(advantages)
    m = _mask8(response_mask)
    need = _needs_grad(log_prob)
    kw = dict(clip_low=float(clip_low), clip_high=float(clip_high), dual_clip=clip_c, log_ratio_clamp=20.0,
              aggregation=loss_agg_mode, normalizer=norm, check_finite=False)
    loss, grad, met = _native.policy_loss(lp, olp, adv, m, compute_grad=need, **kw)
    if rollout_is_weights is not None:
        w = _np(rollout_is_weights)
        loss, grad, _ = _native.policy_loss(lp, olp, adv * w, m, compute_grad=need, **kw)
    if dp != 1:
        loss *= dp
        if need:
            grad *= dp

    def z(x):
        return 0.0 if x != x else float(x)

    metrics = {
        "actor/pg_clipfrac": z(met["clip_fraction"]),
        "actor/ppo_kl": z(met["approx_kl"]),
        "actor/pg_clipfrac_lower": z(met["dual_clip_fraction"]),
    }
    if need:
        return _NativeLoss.apply(lambda: (loss, [grad]), log_prob), metrics
    return _scalar_like(loss, log_prob), metrics


_POLICY_LOSSES = {"vanilla": compute_policy_loss_vanilla}


def get_policy_loss_fn(name):
    """verl get_policy_loss_fn: only 'vanilla' is covered here; other names raise ValueError."""
    if name not in _POLICY_LOSSES:
        raise ValueError("Unsupported loss mode: %s. Supported modes (asyppo.verl): %s" % (name, list(_POLICY_LOSSES)))
    return _POLICY_LOSSES[name]


def compute_value_loss(vpreds, returns, values, response_mask, cliprange_value, loss_agg_mode="token-mean",
                       global_batch_info=None, **batch_info):
    """verl compute_value_loss -> (vf_loss, vf_clipfrac).

    Vc = clamp(vpreds, values - c, values + c); l = max((vpreds - R)^2, (Vc - R)^2);
    vf_loss = 0.5 * agg_loss(l, response_mask, loss_agg_mode, global batch info);
    vf_clipfrac = masked mean of 1[(Vc - R)^2 > (vpreds - R)^2].
    Assumption (verl PR #6957): the global batch information arrives as global_batch_info (dict or
    object) or as agg_loss's keywords (dp_size, batch_num_tokens, global_batch_size,
    loss_scale_factor); absent = local counts. cliprange_value must be > 0 (0 would clamp to the old
    values in verl; the library reads c <= 0 as "no clipping" and this layer rejects it).
    Differentiable with respect to vpreds."""
    c = float(cliprange_value)
    if not c > 0:
        raise ValueError("asyppo.verl.compute_value_loss: cliprange_value must be > 0, got %s" % c)
    info = _batch_info(None, global_batch_info, **batch_info)
    norm, dp = _normalizer(loss_agg_mode, info["dp_size"], info["batch_num_tokens"], info["global_batch_size"],
                           info["loss_scale_factor"])
    need = _needs_grad(vpreds)
    loss, grad, crit = _native.value_loss(_np(vpreds), _np(returns), _mask8(response_mask), _np(values), clip=c,
                                          half=True, aggregation=loss_agg_mode, normalizers=[norm],
                                          check_finite=False, compute_grad=need, explained_variance=False)
    cf = crit[0]["clip_fraction"]
    cf = 0.0 if cf != cf else cf
    if dp != 1:
        loss *= dp
        if need:
            grad *= dp
    if need:
        return _NativeLoss.apply(lambda: (loss, [grad]), vpreds), _scalar_like(cf, vpreds)
    return _scalar_like(loss, vpreds), _scalar_like(cf, vpreds)


_KL_NAMES = {"kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3"}


def kl_penalty(logprob, ref_logprob, kl_penalty):
    """verl kl_penalty -> per-token KL estimate [B, T] (no mask; every position), delta = logprob - ref:
      "kl"/"k1": delta   "abs": |delta|   "mse"/"k2": 0.5 delta^2
      "low_var_kl"/"k3": exp(-delta) - 1 + delta with -delta clamped to [-20, 20] and the result to
      [-10, 10] (gradient 0 where a clamp is active)
      a "+" suffix ("k1+", "k3+", ...): the base estimator's value with k2's gradient (straight-through)
      "full": NotImplementedError (as verl).
    Differentiable with respect to logprob and ref_logprob (d/dref = -d/dlogprob)."""
    name = kl_penalty
    base = name[:-1] if name.endswith("+") else name
    if base == "full":
        raise NotImplementedError("kl_penalty 'full' is not implemented (as in verl)")
    if base not in _KL_NAMES:
        raise NotImplementedError("kl_penalty: unknown estimator %r" % name)
    lp = _np(logprob)
    rp = _np(ref_logprob)
    shape = lp.shape
    lp2, rp2 = (lp, rp) if lp.ndim == 2 else (lp.reshape(1, -1), rp.reshape(1, -1))
    val = _native.kl_values(lp2, rp2, None, estimator=name, clamp=True).reshape(shape)
    if _needs_grad(logprob, ref_logprob):
        _, d, _ = _native.kl_loss(lp2, rp2, None, estimator=name, coef=1.0, clamp=True, aggregation="token-sum",
                                  check_finite=False, compute_grad=True)
        d = d.reshape(shape)
        d1 = d if _is_t(logprob) and logprob.requires_grad else None
        d2 = -d if _is_t(ref_logprob) and ref_logprob.requires_grad else None
        x1 = logprob if _is_t(logprob) else torch.as_tensor(lp)
        x2 = ref_logprob if _is_t(ref_logprob) else torch.as_tensor(rp)
        return _TokenwiseFn.apply(lambda: (val, d1, d2), x1, x2)
    return _like(val, logprob)
