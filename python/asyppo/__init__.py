"""asyppo: the numerical core of RL for LLMs around AsyPPO, from Python.

The native API mirrors the C++ library (include/asyppo/core/*.hpp; docs/algorithm.md):

    advantage_step, gae, ensemble_stats, grpo, rloo, reinforce_pp, reinforce_pp_baseline,
    sequence_scores, masked_whiten, uncertainty_masks, shard_weights, policy_loss, value_loss,
    kl_values, kl_loss, entropy_bonus, logits_logp_entropy, logits_logp_entropy_backward,
    aggregate_loss, count_loss_tokens, set_num_threads, get_num_threads

Arrays: NumPy float32 or float64 (the dtype of a function's first float argument decides the
computation dtype and the outputs' dtype), C-contiguous or strided (read in place, zero-copy);
masks bool/uint8 (any other dtype is compared with 0). Losses return (loss, gradient, metrics);
the gradient is the exact derivative of the aggregated loss with respect to the per-token input.
torch CPU tensors are accepted wherever arrays are (read zero-copy through .detach().numpy();
float16/bfloat16 are computed in float32) and, when any argument is a tensor, every returned array
is a tensor (torch.from_numpy, no copy). The native API computes values and gradients but does not
hook into autograd; asyppo.verl does (torch.autograd.Function).

Errors: bad input raises ValueError with the library's message (e.g. "asyppo::gae: rewards:
extent 1 is 4, expected 5"); nothing is written to caller-provided outputs then.

asyppo.verl holds drop-in replacements for verl's core_algos / torch_functional functions.
"""

import functools as _functools

from . import _native

try:  # torch is optional
    import torch as _torch
except ImportError:  # pragma: no cover
    _torch = None

__version__ = _native.__version__

set_num_threads = _native.set_num_threads
get_num_threads = _native.get_num_threads


def _is_tensor(x):
    return _torch is not None and isinstance(x, _torch.Tensor)


def _tensor_to_numpy(t):
    if t.device.type != "cpu":
        raise ValueError("asyppo: only CPU tensors are supported, got a tensor on " + str(t.device))
    t = t.detach()
    if t.dtype in (_torch.float16, _torch.bfloat16):
        t = t.float()
    return t.numpy()


def _from_numpy_tree(obj):
    import numpy as np

    if isinstance(obj, np.ndarray):
        return _torch.from_numpy(obj)
    if isinstance(obj, tuple):
        return tuple(_from_numpy_tree(o) for o in obj)
    if isinstance(obj, list):
        return [_from_numpy_tree(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _from_numpy_tree(v) for k, v in obj.items()}
    return obj


def _wrap(fn):
    """Accepts torch tensors for any argument; returns tensors when any argument was one."""

    @_functools.wraps(fn)
    def call(*args, **kwargs):
        if _torch is None:
            return fn(*args, **kwargs)
        any_tensor = False
        conv_args = []
        for a in args:
            if _is_tensor(a):
                any_tensor = True
                a = _tensor_to_numpy(a)
            conv_args.append(a)
        conv_kwargs = {}
        for k, v in kwargs.items():
            if _is_tensor(v):
                any_tensor = True
                v = _tensor_to_numpy(v)
            conv_kwargs[k] = v
        res = fn(*conv_args, **conv_kwargs)
        return _from_numpy_tree(res) if any_tensor else res

    call.__doc__ = fn.__doc__
    call.__name__ = getattr(fn, "__name__", "asyppo_function")
    return call


_NATIVE_FUNCTIONS = (
    "advantage_step",
    "gae",
    "ensemble_stats",
    "grpo",
    "rloo",
    "reinforce_pp",
    "reinforce_pp_baseline",
    "sequence_scores",
    "masked_whiten",
    "uncertainty_masks",
    "shard_weights",
    "policy_loss",
    "value_loss",
    "kl_values",
    "kl_loss",
    "entropy_bonus",
    "logits_logp_entropy",
    "logits_logp_entropy_backward",
    "aggregate_loss",
    "count_loss_tokens",
    "critic_heads_forward",
    "critic_heads_backward",
)

for _name in _NATIVE_FUNCTIONS:
    globals()[_name] = _wrap(getattr(_native, _name))
del _name

__all__ = list(_NATIVE_FUNCTIONS) + ["set_num_threads", "get_num_threads", "verl"]


def __getattr__(name):  # lazy `asyppo.verl`
    if name == "verl":
        import importlib

        return importlib.import_module(".verl", __name__)
    raise AttributeError(name)
