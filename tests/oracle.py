"""The test oracles: PyTorch float64 (test-only) and central finite differences; and
:func:`compile_anew`, for comparing two ways of compiling one graph.

PyTorch is imported only through :func:`torch`: a test that needs it is skipped alone
when it is missing, and every other test still runs.
"""
import numpy as np
import pytest


def torch():
    """The torch module, or skip the calling test (torch is a test extra)."""
    return pytest.importorskip("torch")


def torch_vjp(fn, values, seed):
    """Value and vᵀJ of ``fn`` by PyTorch in float64."""
    torch_ = torch()
    ts = [torch_.tensor(np.asarray(v, dtype=np.float64), requires_grad=True) for v in values]
    out = fn(*ts)
    grads = torch_.autograd.grad(out, ts, torch_.tensor(seed, dtype=torch_.float64),
                                 allow_unused=True)
    return out.detach().numpy(), [np.zeros(np.shape(v)) if g is None else g.numpy()
                                  for g, v in zip(grads, values)]


def torch_hvp(fn, values, seed, direction):
    """∂/∂x ⟨(vᵀJ)(x), w⟩: a second-order product, by PyTorch double backward."""
    torch_ = torch()
    ts = [torch_.tensor(np.asarray(v, dtype=np.float64), requires_grad=True) for v in values]
    out = fn(*ts)
    grads = torch_.autograd.grad(out, ts, torch_.tensor(seed, dtype=torch_.float64),
                                 create_graph=True)
    inner = sum((g * torch_.tensor(w)).sum() for g, w in zip(grads, direction))
    if not inner.requires_grad:  # a linear operator: the second derivative is zero
        return [np.zeros(np.shape(v)) for v in values]
    second = torch_.autograd.grad(inner, ts, allow_unused=True)
    return [np.zeros(np.shape(v)) if g is None else g.numpy(force=True)
            for g, v in zip(second, values)]


def fd_vjp(f, values, seed, eps=1e-6):
    """vᵀJ by central differences of the scalar ⟨f(x), v⟩."""
    grads = []
    for k, v in enumerate(values):
        v = np.array(v, dtype=np.float64)
        g = np.zeros_like(v)
        for idx in np.ndindex(v.shape):
            hi, lo = [list(values) for _ in range(2)]
            vh, vl = v.copy(), v.copy()
            vh[idx] += eps
            vl[idx] -= eps
            hi[k], lo[k] = vh, vl
            up, down = np.sum(np.asarray(f(*hi)) * seed), np.sum(np.asarray(f(*lo)) * seed)
            g[idx] = (up - down) / (2 * eps)
        grads.append(g)
    return grads


class _LazyTorch:
    """``torch`` for module-level use (tables of lambdas): imported on first attribute
    access, which skips the test making it when torch is missing."""

    def __getattr__(self, name):
        return getattr(torch(), name)


lazy_torch = _LazyTorch()


def compile_anew(patch):
    """From here on every compile compiles (``patch``: pytest's monkeypatch or one of its
    contexts): the same graph would otherwise be served from memory or the disk cache."""
    from symgrad.compiler.backend import jit
    patch.setattr(jit.JIT, "lookup", lambda *args, **kwargs: None)
    patch.setattr(jit.JIT, "_known", lambda self, key: None)
