"""symgrad.runtime: PyTorch-style tensors whose backward runs as compiled reverse graphs.

>>> import symgrad.runtime as torch
>>> x = torch.ones(2, 2, requires_grad=True)
>>> out = ((x + 2) * (x + 2) * 3).mean()
>>> out
tensor(27., grad_fn=<MeanBackward0>)
>>> out.backward()
>>> x.grad
tensor([[4.5000, 4.5000],
        [4.5000, 4.5000]])
"""
from symgrad.compiler import ops as _ops

from . import autograd, nn, optim
from .autograd import compile_count
from .tensor import (Size, Tensor, Variable, arange, as_tensor, cat, enable_grad, float32,
                     float64, full, int64, is_grad_enabled, manual_seed, matmul, no_grad, ones,
                     ones_like, rand, randn, stack, tensor, where, zeros, zeros_like)

float = float32
double = float64


def _fn(name):
    """``symgrad.runtime.<name>(x, …)``: the Tensor method of that name, as PyTorch has."""
    def fn(x, *args, **kwargs):
        return getattr(as_tensor(x), name)(*args, **kwargs)
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = getattr(Tensor, name).__doc__
    return fn


def _function(entry):
    # every operator-table entry PyTorch has: torch.sin, torch.maximum, …
    if entry.torch and entry.torch not in ("add", "sub", "mul", "div", "neg") \
            and entry.torch not in globals():
        globals()[entry.torch] = _fn(entry.torch)


def _forget(entry):
    if entry.torch and getattr(globals().get(entry.torch), "__module__", "") == __name__:
        del globals()[entry.torch]


_ops.on_register(_function, _forget)
sum, mean, norm, reshape, pow = map(_fn, ("sum", "mean", "norm", "reshape", "pow"))
clamp, clip, unsqueeze, squeeze, flip, cumsum, prod, gather, amax, amin = map(
    _fn, ("clamp", "clip", "unsqueeze", "squeeze", "flip", "cumsum", "prod", "gather", "amax",
          "amin"))
concatenate = cat
mm = matmul
