"""Forward mode (J·u), Hessian–vector products, dense Jacobians and Hessians, against
torch.func in float64."""
import numpy as np
import pytest

import symgrad.compiler as C
from symgrad.compiler import Graph
from tests.compiler.test_ops import ROWS, _rng, _values, ids
from tests.oracle import torch


def _torch(values):
    return tuple(torch().tensor(v) for v in values)


@pytest.mark.parametrize("row", ROWS, ids=ids)
def test_jvp_of_every_operator_matches_torch_func(row):
    rng = _rng(row)
    g = Graph()
    xs = [g.input(f"x{k}", s) for k, s in enumerate(row.shapes)]
    f = g.compile(row.build(*xs), wrt=xs)
    values = _values(row.shapes, row.domain, rng)
    tangents = [rng.standard_normal(s) for s in row.shapes]
    value, tangent_out = f.jvp(*values, tangent=tangents)
    t_value, t_tangent = torch().func.jvp(row.tbuild, _torch(values), _torch(tangents))
    np.testing.assert_allclose(value, t_value.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(tangent_out, t_tangent.numpy(), rtol=1e-10, atol=1e-12)
    # J·u is the transpose of vᵀJ: vᵀ(J·u) = (vᵀJ)·u for any v
    seed = rng.standard_normal(np.shape(value))
    _, grads = f.vjp(*values, seed=seed)
    np.testing.assert_allclose(np.sum(seed * tangent_out),
                               sum(np.sum(gr * u) for gr, u in zip(grads, tangents)),
                               rtol=1e-10, atol=1e-12)


def _model(x, W):
    return C.sin(W @ x.reshape(3, 1)).sum() * C.amax(x) + C.prod(x) + C.logsumexp(x * 3.0)


def _torch_model(x, W):
    return (W @ x.reshape(3, 1)).sin().sum() * x.amax() + x.prod() + (x * 3.0).logsumexp(0)


def test_hvp_and_hessian_match_torch_func():
    g = Graph()
    x, W = g.input("x", (3,)), g.input("W", (2, 3))
    f = g.compile(_model(x, W), wrt=[x, W])
    xv, Wv = np.array([0.3, -0.5, 0.9]), np.arange(6.0).reshape(2, 3) / 5
    u = [np.array([1.0, 2.0, -1.0]), np.full((2, 3), 0.1)]
    grads, hu = f.hvp(xv, Wv, tangent=u)
    fn = torch().func
    _, t_hu = fn.jvp(fn.grad(_torch_model, argnums=(0, 1)), _torch((xv, Wv)), _torch(u))
    t_grads = fn.grad(_torch_model, argnums=(0, 1))(*_torch((xv, Wv)))
    for mine, theirs in zip([*grads, *hu], [*t_grads, *t_hu]):
        np.testing.assert_allclose(mine, theirs.numpy(), rtol=1e-12, atol=1e-14)
    H = f.hessian(xv, Wv)
    t_H = fn.hessian(_torch_model, argnums=(0, 1))(*_torch((xv, Wv)))
    for i in range(2):
        for j in range(2):
            np.testing.assert_allclose(H[i][j], t_H[i][j].numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(H[0][1], np.moveaxis(H[1][0], 2, 0), rtol=1e-12)   # symmetric


@pytest.mark.parametrize("n", [2, 6])
def test_jacobians_of_several_outputs_choose_the_cheaper_mode(n):
    g = Graph()
    a = g.input("a", (n,))
    f = g.compile([C.exp(a).sum(), C.cumsum(a * a, 0)[:2].reshape(1, 2)], wrt=[a])
    av = np.linspace(-0.4, 0.7, n)
    J = f.jacobian(av)
    t_J = torch().func.jacrev(lambda t: (t.exp().sum(), (t * t).cumsum(0)[:2].reshape(1, 2)))(
        torch().tensor(av))
    for (mine,), theirs in zip(J, t_J):
        assert mine.shape == tuple(theirs.shape) and mine.flags.c_contiguous
        np.testing.assert_allclose(mine, theirs.numpy(), rtol=1e-13, atol=1e-15)
    # the outputs have 3 elements: forward mode (n sweeps) for n = 2, reverse (3) for n = 6
    assert ("jvp" in f._artifacts) == (n < 3)


def test_graph_jvp_nodes_differentiate_again():
    g = Graph()
    x, u = g.input("x", (3,)), g.input("u", (3,))
    y = (C.tanh(x) * x).sum()
    ju = g.jvp(y, [x], [u])                        # ∇y·u as a node
    f = g.compile(ju, wrt=[x])                     # its gradient is H·u
    xv, uv = np.array([0.2, -1.0, 0.5]), np.array([1.0, 0.5, -2.0])
    _, (hu,) = f.vjp(xv, uv)
    t_hu = torch().func.hessian(lambda t: (t.tanh() * t).sum())(torch().tensor(xv)) @ \
        torch().tensor(uv)
    np.testing.assert_allclose(hu, t_hu.numpy(), rtol=1e-13)


def test_forward_mode_errors_name_the_fix():
    g = Graph()
    x = g.input("x", (3,))
    f = g.compile([x * 2.0, x.sum()], wrt=[x])
    with pytest.raises(ValueError, match=r"pass tangent= one array per wrt node \(x\)"):
        f.jvp(np.ones(3))
    with pytest.raises(ValueError, match=r"tangent for x: expected shape \(3,\)"):
        f.jvp(np.ones(3), tangent=np.ones(2))
    with pytest.raises(TypeError, match="hvp\\(\\) and hessian\\(\\) take a function with one "
                                        "scalar output"):
        f.hessian(np.ones(3))
    with pytest.raises(TypeError, match="compiled without wrt"):
        g.compile(x.sum()).jvp(np.ones(3), tangent=np.ones(3))
    with pytest.raises(C.GraphError, match="the tangent for x has shape"):
        g.jvp(x.sum(), [x], [g.input("u", (2,))])
