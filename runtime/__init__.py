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

Where the runtime offers a PyTorch name it has PyTorch's semantics (in-place means in
place, ``==`` is elementwise, PyTorch's dtype promotion, PyTorch's random streams);
anything else raises an error naming the feature.
"""
from symgrad.compiler import ops as _ops

from . import autograd, nn, optim, utils
from .autograd import compile_count
from .creation import (BoolTensor, DoubleTensor, FloatTensor, IntTensor, LongTensor, Variable,
                       arange, bernoulli, empty, empty_like, eye, from_numpy, full, full_like,
                       linspace, logspace, normal, ones, ones_like, rand, rand_like, randint,
                       randn, randn_like, randperm, zeros, zeros_like)
from .device import (accelerator, backends, cuda, device, get_default_device,  # noqa: F401
                     set_default_device)
from .dtypes import (bool_ as bool, float16, float32, float64, int8, int16,  # noqa: F401
                     int32, int64, is_floating_point, promote_types, result_type, uint8)
from .random import (Generator, get_rng_state, initial_seed, manual_seed, seed,  # noqa: F401
                     set_rng_state)
from .serialization import load, save
from .trace import TraceError, compile  # noqa: F401  (torch.compile; shadows the builtin)
from .tensor import (Size, Tensor, as_tensor, bmm, cat, dot, enable_grad, is_grad_enabled,
                     matmul, mv, no_grad, outer, set_grad_enabled, stack, tensor, where)

float = float32
double = float64
half = float16
long = int64
int = int32
short = int16
inference_mode = no_grad
__version__ = "2.13.0+symgrad"


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
(sum, mean, norm, reshape, pow, clamp, clip, unsqueeze, squeeze, flip, cumsum, prod, gather,
 amax, amin, max, min, argmax, argmin, var, std, softmax, log_softmax, logsumexp, flatten,
 transpose, permute, t, add, sub, mul, div, neg, eq, ne, lt, le, gt, ge, equal, allclose,
 isnan, isinf, isfinite, any, all, masked_fill, clone, detach, logical_not, numel,
 mm) = map(_fn, (
     "sum", "mean", "norm", "reshape", "pow", "clamp", "clip", "unsqueeze", "squeeze", "flip",
     "cumsum", "prod", "gather", "amax", "amin", "max", "min", "argmax", "argmin", "var",
     "std", "softmax", "log_softmax", "logsumexp", "flatten", "transpose", "permute", "t",
     "add", "sub", "mul", "div", "neg", "eq", "ne", "lt", "le", "gt", "ge", "equal",
     "allclose", "isnan", "isinf", "isfinite", "any", "all", "masked_fill", "clone",
     "detach", "logical_not", "numel", "mm"))
concatenate = concat = cat
maximum, minimum = _fn("maximum"), _fn("minimum")
abs = _fn("abs")


def is_tensor(obj) -> bool:
    return isinstance(obj, Tensor)
