"""Random graphs from the operator table, replayable on symgrad and on PyTorch.

A *recipe* is a list of steps over a pool of values (the inputs first); every
step appends one value.  Operands are kept inside each operator's domain by
construction (log of |x| + 0.5, division by |y| + 0.5, …), so both systems
compute finite numbers and the comparison is meaningful.
"""
from __future__ import annotations

import hypothesis.strategies as st
import numpy as np

BASE = (2, 3)
SHAPES = [(), (3,), (2, 1), (1, 3), (2, 3)]
UNARY = ["neg", "exp_small", "log_safe", "sqrt_safe", "sin", "cos", "tan_small", "tanh",
         "sigmoid", "relu", "abs", "square"]
BINARY = ["add", "sub", "mul", "div_safe", "pow_safe", "maximum", "minimum"]


def _broadcasts(a, b) -> bool:
    try:
        np.broadcast_shapes(a, b)
        return True
    except ValueError:
        return False


@st.composite
def recipes(draw, max_steps=8, loops=False):
    """``loops``: draw scans too (3 steps of a carry reading another value)."""
    n_inputs = draw(st.integers(1, 3))
    shapes = [draw(st.sampled_from(SHAPES)) for _ in range(n_inputs)]
    pool = list(shapes)
    steps = []
    for _ in range(draw(st.integers(1, max_steps))):
        kind = draw(st.sampled_from(["unary", "binary", "binary", "sum", "view", "matmul",
                                     "slice", "where", "cat", "amax", "gather", "cumsum",
                                     "rows"]
                                    + ["loop"] * loops))
        i = draw(st.integers(0, len(pool) - 1))
        shape = pool[i]
        if kind == "unary":
            steps.append(("unary", draw(st.sampled_from(UNARY)), i))
        elif kind == "binary":
            fits = [k for k in range(len(pool)) if _broadcasts(pool[k], shape)]
            j = draw(st.sampled_from(fits))   # may be i itself: x ∘ x
            steps.append(("binary", draw(st.sampled_from(BINARY)), i, j))
            shape = tuple(np.broadcast_shapes(pool[i], pool[j]))
        elif kind in ("sum", "amax"):
            if not shape:
                continue
            axes = tuple(sorted(draw(st.sets(st.integers(0, len(shape) - 1), min_size=1))))
            keep = draw(st.booleans())
            steps.append((kind, i, axes, keep))
            shape = tuple(1 if a in axes else n for a, n in enumerate(shape)) if keep else \
                tuple(n for a, n in enumerate(shape) if a not in axes)
        elif kind == "view":
            if len(shape) != 2:
                continue
            if draw(st.booleans()):
                steps.append(("T", i))
                shape = shape[::-1]
            else:
                steps.append(("flatten", i))
                shape = (shape[0] * shape[1],)
        elif kind == "slice":       # positive steps: PyTorch has no others
            cuts = [c for c, ok in (("tail", shape and shape[0] > 1),
                                    ("head", shape and shape[0] > 1),
                                    ("col", len(shape) == 2 and shape[1] > 1),
                                    ("step", shape and shape[-1] > 2))
                    if ok]
            if not cuts:
                continue
            cut = draw(st.sampled_from(cuts))
            steps.append(("slice", i, cut))
            shape = {"tail": lambda: (shape[0] - 1,) + shape[1:],
                     "head": lambda: (shape[0] - 1,) + shape[1:],
                     "col": lambda: shape[:1],
                     "step": lambda: shape[:-1] + ((shape[-1] + 1) // 2,)}[cut]()
        elif kind == "where":         # where(x > 0, x, y): the adjoint picks a branch
            fits = [k for k in range(len(pool)) if _broadcasts(pool[k], shape)]
            j = draw(st.sampled_from(fits))
            steps.append(("where", i, j))
            shape = tuple(np.broadcast_shapes(pool[i], pool[j]))
        elif kind == "cat":           # concatenate([x, sin(x)], 0)
            if not shape:
                continue
            steps.append(("cat", i))
            shape = (2 * shape[0],) + shape[1:]
        elif kind == "gather":        # x[[0, -1, 0]]: a repeated index adds in the adjoint
            if not shape:
                continue
            steps.append(("gather", i))
            shape = (3,) + shape[1:]
        elif kind == "rows":          # x[0]·x[1] − x[-1]: rows read one by one (their
            if not shape or shape[0] < 2:   # adjoints are joined into one embed)
                continue
            steps.append(("rows", i))
            shape = shape[1:]
        elif kind == "cumsum":
            if not shape:
                continue
            axis = draw(st.integers(0, len(shape) - 1))
            steps.append(("cumsum", i, axis))
        elif kind == "loop":          # 3 steps of a carry, reading another value each step
            fits = [k for k in range(len(pool)) if _broadcasts(pool[k], shape)
                    and np.broadcast_shapes(pool[k], shape) == shape]
            steps.append(("loop", i, draw(st.sampled_from(fits)), draw(st.sampled_from(UNARY))))
        else:  # x @ xᵀ always fits
            if len(shape) != 2:
                continue
            steps.append(("matmul_T", i))
            shape = (shape[0], shape[0])
        pool.append(shape)
    outputs = sorted({len(pool) - 1, draw(st.integers(n_inputs, len(pool) - 1))}) \
        if len(pool) > n_inputs else [len(pool) - 1]
    return shapes, steps, outputs


def replay(recipe, inputs, F):
    """Run ``recipe`` on ``inputs`` with backend ``F`` (see SymgradOps / TorchOps)."""
    shapes, steps, outputs = recipe
    pool = list(inputs)
    for step in steps:
        kind = step[0]
        if kind == "unary":
            pool.append(getattr(F, step[1])(pool[step[2]]))
        elif kind == "binary":
            pool.append(getattr(F, step[1])(pool[step[2]], pool[step[3]]))
        elif kind == "sum":
            pool.append(F.sum(pool[step[1]], step[2], step[3]))
        elif kind == "T":
            pool.append(F.T(pool[step[1]]))
        elif kind == "flatten":
            pool.append(F.reshape(pool[step[1]], (-1,)))
        elif kind == "slice":
            x = pool[step[1]]
            pool.append({"tail": lambda: x[1:], "head": lambda: x[:-1], "col": lambda: x[:, 1],
                         "step": lambda: x[..., ::2]}[step[2]]())
        elif kind == "where":
            pool.append(F.where_positive(pool[step[1]], pool[step[2]]))
        elif kind == "cat":
            x = pool[step[1]]
            pool.append(F.cat([x, F.sin(x)], 0))
        elif kind == "amax":
            pool.append(F.amax(pool[step[1]], step[2], step[3]))
        elif kind == "gather":
            pool.append(pool[step[1]][[0, -1, 0]])
        elif kind == "rows":
            x = pool[step[1]]
            pool.append(x[0] * x[1] - x[-1])
        elif kind == "cumsum":
            pool.append(F.cumsum(pool[step[1]], step[2]))
        elif kind == "loop":
            pool.append(F.loop(pool[step[1]], pool[step[2]], step[3]))
        else:
            x = pool[step[1]]
            pool.append(F.matmul(x, F.T(x)))
    return [pool[k] for k in outputs]


class _Common:
    """Domain-safe compositions, written once over a backend's primitives; anything
    else is looked up on the backend module."""

    def __init__(self, backend):
        self.backend = backend

    def __getattr__(self, name):
        return getattr(self.__dict__["backend"], name)

    def neg(self, x): return -x
    def square(self, x): return x * x
    def add(self, x, y): return x + y
    def sub(self, x, y): return x - y
    def mul(self, x, y): return x * y
    def div_safe(self, x, y): return x / (self.abs(y) + 0.5)
    def pow_safe(self, x, y): return (self.abs(x) + 0.5) ** self.tanh(y)
    def exp_small(self, x): return self.exp(self.tanh(x))
    def log_safe(self, x): return self.log(self.abs(x) + 0.5)
    def sqrt_safe(self, x): return self.sqrt(self.abs(x) + 0.1)
    def tan_small(self, x): return self.tan(self.tanh(x))
    def T(self, x): return x.T
    def reshape(self, x, shape): return x.reshape(shape)
    def matmul(self, x, y): return x @ y
    def sum(self, x, axes, keep): return x.sum(axes, keepdim=keep)
    def amax(self, x, axes, keep): return x.amax(axes, keepdim=keep)
    def where_positive(self, x, y): return self.where(x > 0, x, y)
    def cumsum(self, x, axis): return x.cumsum(axis)


    def loop_step(self, c, y, name):
        n = getattr(self, name)(c) * 0.5 + y * 0.25
        return n, n * c

    def loop(self, x, y, name):
        """The final carry plus the sum of the steps' ys; written as a Python loop here
        (torch, the runtime) and as a scan for the compiler."""
        total = None
        for _ in range(3):
            x, out = self.loop_step(x, y, name)
            total = out if total is None else total + out
        return x + total


class SymgradOps(_Common):
    def __init__(self):
        from symgrad.compiler import functions
        super().__init__(functions)

    def loop(self, x, y, name):
        from symgrad.compiler import scan
        final, ys = scan(lambda c, _: self.loop_step(c, y, name), x, length=3)
        return final + ys.sum(0)

    def sum(self, x, axes, keep): return x.sum(axes, keepdims=keep)
    def amax(self, x, axes, keep): return x.max(axes, keepdims=keep)
    def cat(self, xs, axis): return self.concatenate(xs, axis)


class TorchOps(_Common):
    def __init__(self):
        from tests.oracle import torch
        super().__init__(torch())


class RuntimeOps(_Common):
    """symgrad.runtime tensors (the PyTorch-style API) driven by the same recipes."""

    def __init__(self):
        import symgrad.runtime as rt
        super().__init__(rt)

    def abs(self, x): return x.abs()
