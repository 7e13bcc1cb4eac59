"""Indexing, array constants, index inputs and numpy interop, beyond the table walk of
test_ops: numpy's semantics (shapes, promotion, bounds) and clear errors."""
import numpy as np
import pytest

import symgrad.compiler as C
from symgrad.compiler import Graph, ShapeError
from tests.oracle import torch

BASIC = [np.s_[1:-1], np.s_[::-1], np.s_[-3::-2], np.s_[1], np.s_[-1, 2:], np.s_[None, :, 1],
         np.s_[..., 0], np.s_[:, None, ::3], np.s_[2:2], np.s_[1:2, 0:1], np.s_[..., None],
         np.s_[0, ..., 1]]


@pytest.mark.parametrize("index", BASIC, ids=[str(i) for i in BASIC])
def test_basic_indices_are_views_with_numpy_values_and_embed_adjoints(index):
    g = Graph()
    x = g.input("x", (4, 5))
    y = x[index]
    assert y.op in ("index", "input")            # a view: no copy node
    xv = np.arange(20.0).reshape(4, 5) / 3
    assert y.shape == xv[index].shape
    seed = np.random.default_rng(0).standard_normal(y.shape)
    f = g.compile(y * 1.0, wrt=[x])
    value, (grad,) = f.vjp(xv, seed=seed)
    np.testing.assert_array_equal(value, xv[index])
    expect = np.zeros_like(xv)
    expect[index] = seed
    np.testing.assert_array_equal(grad, expect)


def test_reshape_of_a_view_copies_only_when_not_contiguous():
    g = Graph()
    x = g.input("x", (3, 4, 2))
    xv = np.arange(24.0).reshape(3, 4, 2)
    for index, contiguous in ((np.s_[1:3], True), (np.s_[1, 1:3], True), (np.s_[:, 1:3], False),
                              (np.s_[0, :, 1], False), (np.s_[::-1], False)):
        y = x[index].reshape(-1, 1)
        assert (y.args[0].op == "copy") is not contiguous, index
        np.testing.assert_array_equal(g.compile(y)(xv), xv[index].reshape(-1, 1))


def test_index_errors_name_what_is_wrong():
    g = Graph()
    x = g.input("x", (3, 4))
    with pytest.raises(IndexError, match="out of bounds for axis 1 with size 4"):
        x[0, 4]
    with pytest.raises(IndexError, match="too many indices"):
        x[0, 1, 2]
    with pytest.raises(IndexError, match="step cannot be zero"):
        x[::0]
    with pytest.raises(IndexError, match="index 3 is out of bounds for axis 0 with size 3"):
        x[[0, 3]]
    with pytest.raises(IndexError, match="integer"):
        x[np.array([0.5])]
    with pytest.raises(IndexError, match="run time; use where"):
        x[x > 0]
    with pytest.raises(ShapeError, match="differ off that axis"):
        C.concatenate([x, x.T], 0)
    with pytest.raises(ShapeError, match="non-negative"):
        C.pad(x, -1)


def test_index_inputs_are_checked_at_every_call():
    g = Graph()
    x, i = g.input("x", (5,)), g.input("i", (3,), dtype=np.int64)
    f = g.compile((x[i] ** 2).sum(), wrt=[x])
    xv = np.arange(5.0)
    value, (grad,) = f.vjp(xv, np.array([0, -1, 0]))
    assert value == 0 + 16 + 0
    np.testing.assert_array_equal(grad, [0, 0, 0, 0, 8])      # repeats add: 2·0 + 2·0
    with pytest.raises(IndexError, match="i: index 5 is out of bounds for an axis of size 5"):
        f(xv, [0, 5, 1])
    with pytest.raises(IndexError, match="index -6"):
        f(xv, [0, -6, 1])
    with pytest.raises(TypeError, match="takes integers"):
        f(xv, [0.0, 1.0, 2.0])
    with pytest.raises(TypeError, match="no part in arithmetic"):
        i * 2.0


def test_array_constants_follow_numpy_promotion_and_are_not_in_the_code():
    g = Graph(np.float32)
    x = g.input("x", (3,))
    assert (x * np.array([1.0, 2.0, 3.0], np.float32)).dtype == np.float32
    assert (x * np.array([1.0, 2.0, 3.0])).dtype == np.float64           # numpy's rule
    assert (x * np.array([1, 2, 3])).dtype == np.float64
    assert (x * np.array([True, False, True])).dtype == np.float32
    g = Graph()
    x = g.input("x", (3,))
    f1 = g.compile((x * np.array([1.0, 2.0, 3.0])).sum())
    f2 = g.compile((x * np.array([4.0, 5.0, 6.0])).sum())
    assert f1([1, 1, 1]) == 6 and f2([1, 1, 1]) == 15
    # values are data passed at the call, not code: one program serves both
    assert "0x4010" not in f2.llvm_ir and f1.llvm_ir.count("\n") == f2.llvm_ir.count("\n")
    with pytest.raises(Exception, match="array constants"):
        f1.export("/tmp/never.so")


def test_numpy_ufuncs_and_reductions_build_nodes():
    g = Graph()
    x = g.input("x", (2, 3))
    y = np.sum(np.sin(x) * np.arange(3.0) + np.hypot(x, 1.0), axis=1) + np.mean(abs(x))
    xv = np.linspace(-1, 1, 6).reshape(2, 3)
    expect = np.sum(np.sin(xv) * np.arange(3.0) + np.hypot(xv, 1.0), axis=1) + np.mean(abs(xv))
    np.testing.assert_allclose(g.compile(y)(xv), expect, rtol=1e-15)
    assert (x.shape, x.ndim, x.size, x.dtype) == ((2, 3), 2, 6, np.float64)
    with pytest.raises(TypeError, match="np.cbrt is not supported"):
        np.cbrt(x)
    with pytest.raises(TypeError, match="dtype= and out="):
        x.sum(dtype=np.float32)


def test_lennard_jones_with_index_arrays_matches_torch_and_its_code_is_pair_free():
    rng = np.random.default_rng(2)

    def energy(n):
        g = Graph()
        X = g.input("X", (n, 3))
        iu, ju = np.triu_indices(n, 1)
        d = X[iu] - X[ju]
        r2 = (d * d).sum(1)
        return g, X, (4 * (r2 ** -6 - r2 ** -3)).sum()
    g, X, E = energy(12)
    f = g.compile(E, wrt=[X])
    Xv = rng.standard_normal((12, 3)) * 2
    value, (grad,) = f.vjp(Xv)
    t = torch().tensor(Xv, requires_grad=True)
    iu, ju = np.triu_indices(12, 1)
    dt = t[iu] - t[ju]
    r2 = (dt * dt).sum(1)
    Et = (4 * (r2 ** -6 - r2 ** -3)).sum()
    Et.backward()
    np.testing.assert_allclose(value, Et.item(), rtol=1e-13)
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-11, atol=1e-13)
    # the code is the same for 12 and 40 particles up to sizes: no per-pair instructions
    big = energy(40)
    lines = [len(h.compile(e, wrt=[x]).llvm_ir.splitlines()) for h, x, e in (energy(12), big)]
    assert lines[0] == lines[1]


def test_the_adjoint_of_slices_is_read_inside_the_loop_not_assembled():
    g = Graph()
    x = g.input("x", (7,))
    f = g.compile((C.sin(x[1:]) * x[:-1] + x[::-1][1:] ** 2).sum(), wrt=[x])
    steps = f.artifact("vjp").llvm_ir.count("define internal")
    assert steps == len(f.kernels("vjp"))          # every step a fused kernel: no copies
    xv = np.linspace(-1.0, 2.0, 7)
    t = torch().tensor(xv, requires_grad=True)
    (t[1:].sin() * t[:-1] + t.flip(0)[1:] ** 2).sum().backward()
    np.testing.assert_allclose(f.vjp(xv)[1][0], t.grad.numpy(), rtol=1e-14, atol=1e-15)
