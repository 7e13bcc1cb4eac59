"""torch.nn.functional: activations and losses, written with recorded tensor operations
(each one an operator-table entry), so their gradients come from the compiled backward.

Formulas follow PyTorch's kernels where the choice shows in values: BCE clamps its logs
at −100, BCE-with-logits uses ``(1 − t)·x + max(−x, 0) + log1p(e^{−|x|})``, softplus
returns ``x`` above its threshold, leaky_relu's slope at 0 is the negative slope.
"""
from __future__ import annotations

import math

import numpy as np

from symgrad.compiler import functions

from .. import tensor as T
from ..creation import bernoulli, full_like
from ..tensor import Tensor, as_tensor, where


# ---- activations ---------------------------------------------------------------------------
def relu(input, inplace=False):
    return input.relu_() if inplace else input.relu()


def relu6(input, inplace=False):
    return hardtanh(input, 0.0, 6.0)


def hardtanh(input, min_val=-1.0, max_val=1.0, inplace=False):
    out = input.clamp(min_val, max_val)
    return input.copy_(out) if inplace else out


def _select(x, cond_op, threshold, then, otherwise, name, tag):
    """``where(x <op> threshold, then(x), otherwise(x))`` recorded as one node whose
    condition is computed inside the compiled graph (no mask constant, no recompile).
    ``then``/``otherwise`` take numpy arrays and graph expressions alike; ``tag`` names
    them in the node's key."""
    with np.errstate(all="ignore"):
        value = np.where(getattr(np, cond_op)(x._data, threshold), then(x._data),
                         otherwise(x._data)).astype(x.dtype)
    op = {"greater": "gt", "less_equal": "le"}[cond_op]

    def build(g, a):
        return g.apply("where", g.apply(op, a, threshold), then(a), otherwise(a))
    return T._composite(name, (name, cond_op, threshold, tag), build, [x], value, saves=(0,))


def _same(a):
    return a


def _graph(a) -> bool:
    return hasattr(a, "graph")


def _expm1(a):
    return a.apply("expm1") if _graph(a) else np.expm1(a)


def _softplus(a):
    return a.apply("softplus") if _graph(a) else np.logaddexp(0, a)


def leaky_relu(input, negative_slope=0.01, inplace=False):
    slope = float(negative_slope)
    out = _select(input, "greater", 0.0, _same, lambda a: a * slope, "LeakyReluBackward0",
                  slope)
    return input.copy_(out) if inplace else out


def elu(input, alpha=1.0, inplace=False):
    alpha = float(alpha)
    out = _select(input, "greater", 0.0, _same, lambda a: _expm1(a) * alpha, "EluBackward0",
                  alpha)
    return input.copy_(out) if inplace else out


def gelu(input, approximate="none"):
    if approximate == "tanh":
        inner = math.sqrt(2 / math.pi) * (input + 0.044715 * input ** 3)
        return 0.5 * input * (1 + inner.tanh())
    return input * 0.5 * (1 + (input * (1 / math.sqrt(2))).erf())


def silu(input, inplace=False):
    return input * input.sigmoid()


def softplus(input, beta=1.0, threshold=20.0):
    """log(1 + e^{βx})/β, and x itself where βx > threshold (as PyTorch)."""
    beta, threshold = float(beta), float(threshold)
    z = input if beta == 1.0 else input * beta
    return _select(z, "greater", threshold, lambda a: a / beta,
                   lambda a: _softplus(a) / beta, "SoftplusBackward0", beta)


def sigmoid(input):
    return input.sigmoid()


def tanh(input):
    return input.tanh()


def softmax(input, dim=None, dtype=None):
    input = input if dtype is None else input.to(dtype)
    return input.softmax(_dim(input, dim))


def log_softmax(input, dim=None, dtype=None):
    input = input if dtype is None else input.to(dtype)
    return input.log_softmax(_dim(input, dim))


def _dim(input, dim):
    if dim is None:       # PyTorch's legacy choice, with its warning's advice taken
        return 0 if input.ndim in (0, 1, 3) else 1
    return dim


def dropout(input, p=0.5, training=True, inplace=False):
    """Zeroes elements with probability ``p`` and scales the rest by 1/(1−p).  The mask
    is drawn here (its stream is not PyTorch's, whose CPU kernel draws through MKL)."""
    if not 0 <= p <= 1:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0:
        return input
    if p == 1:
        return input * 0.0
    keep = bernoulli(full_like(input, 1 - p))
    out = input * (keep * (1 / (1 - p)))
    return input.copy_(out) if inplace else out


def linear(input, weight, bias=None):
    input = as_tensor(input)
    out = input @ weight.t() if weight.ndim == 2 else input @ weight
    if bias is None:
        return out
    out = out + bias
    if out.grad_fn is not None and input.ndim == 2:
        out.grad_fn.name = "AddmmBackward0"     # as PyTorch names the fused x·Wᵀ + b
    return out


def embedding(input, weight, padding_idx=None, max_norm=None):
    if max_norm is not None:
        raise NotImplementedError("embedding(max_norm=) is not supported")
    out = weight[input]
    if out.grad_fn is not None:
        out.grad_fn.name = "EmbeddingBackward0"
    return out


def one_hot(tensor, num_classes=-1):
    labels = T._index_array(tensor)
    if labels.dtype.kind not in "iu":
        raise RuntimeError("one_hot is only applicable to index tensor of type LongTensor")
    n = int(labels.max()) + 1 if num_classes == -1 else num_classes
    if labels.size and (labels.min() < 0 or labels.max() >= n):
        raise RuntimeError("Class values must be smaller than num_classes.")
    return Tensor._make((labels[..., None] == np.arange(n)).astype(np.int64))


def normalize(input, p=2.0, dim=1, eps=1e-12):
    norm = input.norm(p, dim, keepdim=True) if p != 1 else input.abs().sum(dim, keepdim=True)
    return input / norm.clamp(min=eps)


def pad(input, pad, mode="constant", value=0.0):
    if mode != "constant":
        raise NotImplementedError(f"pad(mode={mode!r}) is not supported; use 'constant'")
    widths = [(0, 0)] * input.ndim
    for k in range(len(pad) // 2):
        widths[input.ndim - 1 - k] = (pad[2 * k], pad[2 * k + 1])
    value = float(value)
    data = np.pad(input._data, widths, constant_values=value)
    widths = tuple(widths)
    return T._composite("ConstantPadNdBackward0", ("pad", widths, value),
                        lambda g, a: functions.pad(a, widths, constant_values=value), [input],
                        data)


# ---- losses ----------------------------------------------------------------------------------
def _reduce(loss, reduction):
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"{reduction} is not a valid value for reduction: use 'mean', 'sum' or "
                     "'none'")


def _named(out, name):
    """Give a composed loss PyTorch's grad_fn name for the fused operation."""
    if out.grad_fn is not None:
        out.grad_fn.name = name
    return out


def _same_shape(name, input, target):
    if tuple(input.shape) != tuple(target.shape):
        raise ValueError(f"{name}: Using a target size ({tuple(target.shape)}) that is "
                         f"different to the input size ({tuple(input.shape)}) is not "
                         "supported: broadcasting would silently change the loss")


def mse_loss(input, target, size_average=None, reduce=None, reduction="mean", weight=None):
    input, target = as_tensor(input), as_tensor(target)
    _same_shape("mse_loss", input, target)
    diff = input - target
    return _named(_reduce(diff * diff, reduction), "MseLossBackward0")


def l1_loss(input, target, size_average=None, reduce=None, reduction="mean"):
    input, target = as_tensor(input), as_tensor(target)
    _same_shape("l1_loss", input, target)
    return _reduce((input - target).abs(), reduction)


def smooth_l1_loss(input, target, size_average=None, reduce=None, reduction="mean",
                   beta=1.0):
    input, target = as_tensor(input), as_tensor(target)
    _same_shape("smooth_l1_loss", input, target)
    if beta == 0:
        return l1_loss(input, target, reduction=reduction)
    d = (input - target).abs()
    quad = d * d * (0.5 / beta)
    return _named(_reduce(where(d < beta, quad, d - 0.5 * beta), reduction),
                  "SmoothL1LossBackward0")


def huber_loss(input, target, reduction="mean", delta=1.0):
    input, target = as_tensor(input), as_tensor(target)
    _same_shape("huber_loss", input, target)
    d = (input - target).abs()
    return _named(_reduce(where(d < delta, 0.5 * d * d, delta * (d - 0.5 * delta)),
                          reduction), "HuberLossBackward0")


def _from_labels(fn, target, weight) -> list:
    """The arrays ``fn(labels, class weights)`` computes in Python, as tensors; a compiled
    step recomputes them from each call's labels before its native call (``Trace.derive``)."""
    sources = [target] + ([as_tensor(weight)] if weight is not None else [])
    made = [Tensor._make(a) for a in fn(T._index_array(target),
                                        *(t._data for t in sources[1:]))]
    if T._mode.trace is not None:
        T._mode.trace.derive(sources, fn, made)
    return made


def nll_loss(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
             reduction="mean"):
    """−input[n, target[n]] (times the class weight), averaged over the weights used."""
    labels = T._index_array(target)
    if labels.dtype.kind not in "iu":
        raise RuntimeError(f"expected scalar type Long but found {labels.dtype}")
    if input.ndim == 1:
        input = input.unsqueeze(0)
    if input.ndim > 2:     # (N, C, d…): classes along dim 1
        perm = (0,) + tuple(range(2, input.ndim)) + (1,)
        input = input.permute(perm).reshape(-1, input.shape[1])
    n_classes, dtype = input.shape[1], input.dtype

    def parts(labels, weight=None):
        """The rows' class indices, their weights and the total weight: data, not part
        of the compiled code (a compiled step recomputes them before each call)."""
        labels = labels.reshape(-1)
        keep = labels != ignore_index
        safe = np.where(keep, labels, 0)
        if safe.size and (safe.min() < 0 or safe.max() >= n_classes):
            raise IndexError(f"Target {int(safe[(safe < 0) | (safe >= n_classes)][0])} is "
                             f"out of bounds for {n_classes} classes")
        w = np.ones(n_classes) if weight is None else weight
        per = (w[safe] * keep).astype(dtype)
        return safe.reshape(-1, 1), per, np.asarray(per.sum(), dtype=dtype)
    safe, per, total = _from_labels(parts, target, weight)
    picked = input.gather(1, safe).squeeze(1)
    loss = -picked * per
    if reduction == "mean":
        loss = loss.sum() / total
    elif reduction == "none" and target.ndim > 1:
        loss = loss.reshape(*target.shape)
    else:
        loss = _reduce(loss, reduction)
    return _named(loss, "NllLossBackward0")


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100,
                  reduce=None, reduction="mean", label_smoothing=0.0):
    """log_softmax over the classes (dim 1), then nll_loss; or, with a float target of
    the input's shape, −Σ target·log_softmax (class probabilities)."""
    input = as_tensor(input)
    dim = 0 if input.ndim == 1 else 1
    logp = input.log_softmax(dim)
    target = as_tensor(target)
    if target.dtype.kind == "f":
        _same_shape("cross_entropy", input, target)
        if weight is not None:
            logp = logp * _class_shape(as_tensor(weight), input.ndim)
        if label_smoothing:
            target = target * (1 - label_smoothing) + label_smoothing / input.shape[dim]
        return _reduce(-(target * logp).sum(dim), reduction) if reduction != "mean" else \
            -(target * logp).sum(dim).sum() / (math.prod(input.shape) / input.shape[dim])
    loss = nll_loss(logp, target, weight, ignore_index=ignore_index, reduction=reduction)
    if not label_smoothing:
        return loss
    # PyTorch: (1 − ε)·nll + ε/C · (−Σ_c w_c log p_c), over the kept rows
    smooth = -(logp if weight is None else logp * _class_shape(as_tensor(weight), input.ndim)
               ).sum(dim)
    dtype = input.dtype

    def kept(labels, weight=None):
        """Which rows count, and their total weight (data: recomputed per compiled call)."""
        keep = labels != ignore_index
        total = keep.sum() if weight is None else (weight[np.where(keep, labels, 0)]
                                                   * keep).sum()
        return keep.astype(dtype), np.asarray(float(total), dtype=dtype)
    keep, total = _from_labels(kept, target, weight)
    smooth = smooth * keep
    smooth = smooth.sum() / total if reduction == "mean" else _reduce(smooth, reduction)
    return loss * (1 - label_smoothing) + smooth * (label_smoothing / input.shape[dim])


def _class_shape(weight, ndim):
    return weight.reshape(-1, *([1] * (ndim - 2))) if ndim > 2 else weight


def binary_cross_entropy(input, target, weight=None, size_average=None, reduce=None,
                         reduction="mean"):
    input, target = as_tensor(input), as_tensor(target)
    _same_shape("binary_cross_entropy", input, target)
    if input._data.size and (input._data.min() < 0 or input._data.max() > 1):
        raise RuntimeError("all elements of input should be between 0 and 1")
    log_p = input.log().clamp(min=-100)
    log_q = (1 - input).log().clamp(min=-100)
    loss = -(target * log_p + (1 - target) * log_q)
    if weight is not None:
        loss = loss * weight
    return _named(_reduce(loss, reduction), "BinaryCrossEntropyBackward0")


def binary_cross_entropy_with_logits(input, target, weight=None, size_average=None,
                                     reduce=None, reduction="mean", pos_weight=None):
    input, target = as_tensor(input), as_tensor(target)
    _same_shape("binary_cross_entropy_with_logits", input, target)
    tail = (-input).relu() + (-input.abs()).exp().log1p()
    if pos_weight is not None:
        loss = (1 - target) * input + (1 + (pos_weight - 1) * target) * tail
    else:
        loss = (1 - target) * input + tail
    if weight is not None:
        loss = loss * weight
    return _named(_reduce(loss, reduction), "BinaryCrossEntropyWithLogitsBackward0")


def kl_div(input, target, size_average=None, reduce=None, reduction="mean", log_target=False):
    target = as_tensor(target)
    if log_target:
        loss = target.exp() * (target - input)
    else:
        t = target._data
        safe = Tensor._make(np.where(t > 0, t, 1).astype(t.dtype))
        loss = target * (safe.log() - input)
    if reduction == "batchmean":
        return loss.sum() / input.shape[0]
    return _reduce(loss, reduction)
