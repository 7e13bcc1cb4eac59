"""Shared oracles: PyTorch float64 (test-only) and central finite differences."""
import os
import tempfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def pytest_configure(config):
    # the tests get a compile cache of their own, never the user's
    os.environ.setdefault("SYMGRAD_CACHE_DIR", tempfile.mkdtemp(prefix="symgrad-test-cache-"))


def torch_vjp(fn, values, seed):
    """Value and vᵀJ of ``fn`` by PyTorch in float64."""
    ts = [torch.tensor(np.asarray(v, dtype=np.float64), requires_grad=True) for v in values]
    out = fn(*ts)
    grads = torch.autograd.grad(out, ts, torch.tensor(seed, dtype=torch.float64),
                                allow_unused=True)
    return out.detach().numpy(), [np.zeros(np.shape(v)) if g is None else g.numpy()
                                  for g, v in zip(grads, values)]


def torch_hvp(fn, values, seed, direction):
    """∂/∂x ⟨(vᵀJ)(x), w⟩: a second-order product, by PyTorch double backward."""
    ts = [torch.tensor(np.asarray(v, dtype=np.float64), requires_grad=True) for v in values]
    out = fn(*ts)
    grads = torch.autograd.grad(out, ts, torch.tensor(seed, dtype=torch.float64),
                                create_graph=True)
    inner = sum((g * torch.tensor(w)).sum() for g, w in zip(grads, direction))
    if not inner.requires_grad:  # a linear operator: the second derivative is zero
        return [np.zeros(np.shape(v)) for v in values]
    second = torch.autograd.grad(inner, ts, allow_unused=True)
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
            g[idx] = (np.sum(np.asarray(f(*hi)) * seed) - np.sum(np.asarray(f(*lo)) * seed)) / (2 * eps)
        grads.append(g)
    return grads
