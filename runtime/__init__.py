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
from . import autograd, nn, optim
from .autograd import compile_count
from .tensor import (Size, Tensor, Variable, arange, as_tensor, enable_grad, float32, float64,
                     full, int64, is_grad_enabled, manual_seed, matmul, maximum, minimum,
                     no_grad, ones, ones_like, rand, randn, tensor, zeros, zeros_like)

float = float32
double = float64


def _fn(name):
    def fn(x, *args, **kwargs):
        return getattr(as_tensor(x), name)(*args, **kwargs)
    fn.__name__ = name
    return fn


exp, log, sin, cos, tan, tanh, sqrt, sigmoid, relu, abs = map(
    _fn, ("exp", "log", "sin", "cos", "tan", "tanh", "sqrt", "sigmoid", "relu", "abs"))
sum, mean, norm, reshape, pow = map(_fn, ("sum", "mean", "norm", "reshape", "pow"))
mm = matmul
