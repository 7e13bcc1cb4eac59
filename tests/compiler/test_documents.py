"""The documents' graphs through Graph.compile (values from shared/EXAMPLES.md)."""
import numpy as np
import pytest
import sympy as sp
from tests.oracle import lazy_torch as torch

from symgrad.compiler import Graph, GraphError, sigmoid


def doc002():
    g = Graph()
    u1, u2 = g.input("u1"), g.input("u2")
    u3 = u1 + u2
    u4 = u2 * u3
    return g, u1, u2, u3, u4


def test_002_scalar_graph_values_and_adjoints():
    g, u1, u2, u3, u4 = doc002()
    assert (u3.id, u4.id) == (3, 4)
    f = g.compile(outputs=[u4], wrt=[u1, u2])
    assert f(u1=2.0, u2=3.0) == 15.0
    assert f.vjp(2.0, 3.0, seed=1.0) == (15.0, (3.0, 8.0))
    rows = g.adjoints(of=u4, at={"u1": 2.0, "u2": 3.0})
    assert [r.name for r in rows] == ["P4", "P3", "P2", "P1"]
    assert [float(r.value) for r in rows] == [1.0, 3.0, 8.0, 3.0]
    assert rows[2].symbolic() == "P4·J_{2→4} + P3·J_{2→3}"


def test_002_local_jacobians_are_symbolic():
    g, u1, u2, u3, u4 = doc002()
    s = {n: sp.Symbol(n, real=True) for n in ("u2", "u3")}
    assert g.local_jacobian(u1, u3) == 1
    assert g.local_jacobian(u2, u3) == 1
    assert g.local_jacobian(u2, u4) == s["u3"]
    assert g.local_jacobian(u3, u4) == s["u2"]
    with pytest.raises(GraphError, match="not an operand"):
        g.local_jacobian(u1, u4)


def test_000_seed_gives_vT_J():
    g = Graph()
    x, y = g.input("x", (3,)), g.input("y", (3,))
    f = g.compile([x * y], [x, y])
    z, (dx, dy) = f.vjp([0.0, 2.0, 8.0], [5.0, 1.0, 7.0], seed=[1.0, 1.0, 1.0])
    np.testing.assert_array_equal(dx, [5.0, 1.0, 7.0])
    np.testing.assert_array_equal(dy, [0.0, 2.0, 8.0])
    v = np.array([0.1, 1.0, 1e-4])
    _, (dx, dy) = f.vjp([0.0, 2.0, 8.0], [5.0, 1.0, 7.0], seed=v)
    np.testing.assert_allclose(dx, v * [5.0, 1.0, 7.0])   # vᵀ·diag(y)


def test_004_matmul_with_seeds():
    g = Graph()
    a, b = g.input("a", (2, 2)), g.input("b", (2, 2))
    f = g.compile([a @ b], [a, b])
    A, B = [[0.0, 0.0], [2.0, 2.0]], [[1.0, 2.0], [1.0, 2.0]]
    _, (da, db) = f.vjp(A, B, seed=np.ones((2, 2)))
    np.testing.assert_array_equal(da, [[3, 3], [3, 3]])
    np.testing.assert_array_equal(db, [[2, 2], [2, 2]])
    _, (da, db) = f.vjp(A, B, seed=[[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(da, [[5, 5], [11, 11]])
    np.testing.assert_array_equal(db, [[6, 8], [6, 8]])


def test_004_sum_of_difference():
    g = Graph()
    a, b = g.input("a", (2, 2)), g.input("b", (2, 2))
    f = g.compile([(a - b).sum()], [a, b])
    _, (da, db) = f.vjp(np.ones((2, 2)), np.ones((2, 2)))
    np.testing.assert_array_equal(da, np.ones((2, 2)))
    np.testing.assert_array_equal(db, -np.ones((2, 2)))


@pytest.mark.parametrize("batch", [None, 5])
def test_002_two_layer_network_matches_torch(batch):
    n0, n1, n2 = 4, 6, 3
    rng = np.random.default_rng(2)
    g = Graph()
    W1, b1 = g.input("W1", (n1, n0)), g.input("b1", (n1,))
    x = g.input("x", (n0,) if batch is None else (batch, n0))
    W2, b2 = g.input("W2", (n2, n1)), g.input("b2", (n2,))
    target = g.input("y_target", (n2,) if batch is None else (batch, n2))
    z1 = x @ W1.T + b1
    a1 = sigmoid(z1)
    y = sigmoid(a1 @ W2.T + b2)
    E = 0.5 * ((y - target) ** 2).sum()
    f = g.compile([E], [W1, b1, W2, b2])
    vals = [rng.standard_normal(i.shape) for i in (W1, b1, x, W2, b2, target)]
    value, grads = f.vjp(*vals)
    t = [torch.tensor(v, requires_grad=True) for v in vals]
    ty = torch.sigmoid(torch.sigmoid(t[2] @ t[0].T + t[1]) @ t[3].T + t[4])
    tE = 0.5 * ((ty - t[5]) ** 2).sum()
    tE.backward()
    assert value == pytest.approx(tE.item(), rel=1e-12)
    for mine, k in zip(grads, (0, 1, 3, 4)):
        np.testing.assert_allclose(mine, t[k].grad.numpy(), rtol=1e-10, atol=1e-13)
