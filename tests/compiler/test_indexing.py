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
    # the code is the same for 40 and 60 particles up to sizes: no per-pair instructions
    # (both sum their 780 and 1,770 pairs in 32 lanes, with a remainder)
    lines = [len(h.compile(e, wrt=[x]).llvm_ir.splitlines()) for h, x, e in (energy(40),
                                                                             energy(60))]
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


def test_elements_read_one_by_one_get_one_joined_embed_as_their_adjoint():
    """x[0], x[1], … read one by one (a scalar program over a vector input): their
    adjoints are one embed of all the pieces, not a sum of one-hot tensors (quadratic in
    the length), with torch's values — a -0.0 adjoint stays -0.0, and an element read
    twice, or rows beside whole-tensor uses, add up."""
    g = Graph()
    x = g.input("x", (6,))
    m = g.input("m", (4, 3))
    xs = [x[k] for k in range(6)]
    y = xs[0] * xs[1] + C.sin(xs[2]) * xs[5] + xs[3] * -0.0 + xs[1] ** 3 + x[1:2][0] * 2.0
    y = y + (m[0] * m[2]).sum() + (m[1] ** 2).sum() + (m * x[4]).sum()
    f = g.compile(y, wrt=[x, m])
    joined = [a for a in f.artifact("vjp").graph.nx.nodes.values() if a["op"] == "embed"]
    assert sorted(len(a["args"]) for a in joined if len(a["args"]) > 1) == [3, 6]
    xv, mv = np.linspace(-1.0, 2.0, 6), np.arange(12.0).reshape(4, 3) / 7
    t, tm = torch().tensor(xv, requires_grad=True), torch().tensor(mv, requires_grad=True)
    ty = t[0] * t[1] + t[2].sin() * t[5] + t[3] * -0.0 + t[1] ** 3 + t[1:2][0] * 2.0
    ty = ty + (tm[0] * tm[2]).sum() + (tm[1] ** 2).sum() + (tm * t[4]).sum()
    ty.backward()
    value, (gx, gm) = f.vjp(xv, mv)
    np.testing.assert_allclose(value, ty.item(), rtol=1e-14)
    np.testing.assert_allclose(gx, t.grad.numpy(), rtol=1e-14)
    np.testing.assert_allclose(gm, tm.grad.numpy(), rtol=1e-14)
    np.testing.assert_array_equal(np.signbit(gx), np.signbit(t.grad.numpy()))


def test_the_joined_embed_has_a_tangent_and_an_adjoint_hessians_through_element_reads():
    """Forward over reverse through the joined embed (its tangent is the embed of the
    pieces' tangents) and reverse over reverse (its adjoint, one index per piece)."""
    g = Graph()
    x = g.input("x", (4,))
    y = x[0] * x[1] - x[-1] * x[0] + C.sin(x[2]) * x[1]
    f = g.compile(y, wrt=[x])
    (gx,) = g.grad(y, [x])
    second = g.compile([(gx * gx).sum()], wrt=[x])
    xv = np.array([0.3, -1.2, 0.7, 2.0])
    tf = torch().func

    def ty(t):
        return t[0] * t[1] - t[-1] * t[0] + t[2].sin() * t[1]
    np.testing.assert_allclose(f.hessian(xv), tf.hessian(ty)(torch().tensor(xv)).numpy(),
                               rtol=1e-14, atol=1e-15)
    expect = tf.grad(lambda t: (tf.grad(ty)(t) ** 2).sum())(torch().tensor(xv)).numpy()
    np.testing.assert_allclose(second.vjp(xv)[1][0], expect, rtol=1e-14, atol=1e-15)


def test_joining_element_adjoints_changes_no_bit_of_the_gradient(monkeypatch):
    """Only embeds that follow each other in the sum are joined, so each gradient element
    is added up in the order of the plain sum of one-hot tensors: the same bits."""
    from symgrad.compiler import autodiff

    def gradient():
        g = Graph()
        w, x = g.input("w", (4,)), g.input("x", (4,))
        y = (w * x).sum() * w[0] + w[1] * w[2] * x[0] + (w * w).sum() * w[3] + \
            w[2] * x[1] + w[0] * w[3] + C.sin(w).sum() * w[1]
        return g.compile(y, wrt=[w])
    joined = gradient()
    monkeypatch.setattr(autodiff, "_joined_embeds", lambda g, terms: terms)
    plain = gradient()
    rng = np.random.default_rng(3)
    for _ in range(300):
        wv, xv = rng.standard_normal(4) * 10.0 ** rng.integers(-3, 4), rng.standard_normal(4)
        assert joined.vjp(wv, xv)[1][0].tobytes() == plain.vjp(wv, xv)[1][0].tobytes()


GATHERS = {
    # name: (shape of x, symgrad expression, the same in torch)
    "pairs": ((6, 3), lambda x, i, j: C.sqrt(((x[i] - x[j]) ** 2).sum(1)),
              lambda x, i, j: ((x[i] - x[j]) ** 2).sum(1).sqrt()),
    "negative and repeated": ((5,), lambda x, i, j: C.sin(x[j]) * x[i],
                              lambda x, i, j: x[j].sin() * x[i]),
    "two index arrays": ((4, 6), lambda x, i, j: C.exp(x[i % 4, j]) + x[i % 4, j] ** 2,
                         lambda x, i, j: x[i % 4, j].exp() + x[i % 4, j] ** 2),
    # its adjoint sums over the broadcast axis first, and a reduction's result is
    # scattered by a step of its own
    "broadcast index": ((5, 2), lambda x, i, j: x[i[:, None]] * x[j[None, :3]],
                        lambda x, i, j: x[i[:, None]] * x[j[None, :3]]),
    "reduced at once": ((7,), lambda x, i, j: x[i].sum() * x[j],
                        lambda x, i, j: x[i].sum() * x[j]),
    "scattered value used twice": ((4,), lambda x, i, j: C.tanh(x[i]) * C.tanh(x[i]) + x[j],
                                   lambda x, i, j: x[i].tanh() * x[i].tanh() + x[j]),
}


@pytest.mark.parametrize("name", GATHERS)
def test_gathers_and_their_scatters_run_inside_the_kernels_that_use_them(name):
    """A gather read by kernels is loaded through its index arrays in their loops, and a
    scatter_add of a kernel's value (the adjoint) is added in that kernel's loop: no
    Gather step and no copies, with the values and gradients of torch."""
    shape, build, reference = GATHERS[name]
    rng = np.random.default_rng(5)
    i = np.array([0, -1, 2, 2, 1, -3])
    j = np.array([1, 0, -2, 3, 3, 0])
    g = Graph()
    x = g.input("x", shape)
    out = build(x, i, j)
    seed = rng.standard_normal(out.shape)
    f = g.compile(out, wrt=[x])
    xv = rng.standard_normal(shape)
    value, (grad,) = f.vjp(xv, seed=seed)
    t = torch().tensor(xv, requires_grad=True)
    tout = reference(t, torch().tensor(i), torch().tensor(j))
    tout.backward(torch().tensor(seed))
    np.testing.assert_allclose(value, tout.detach().numpy(), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-12, atol=1e-13)
    from symgrad.compiler.schedule import Gather, schedule
    plan = f.plan
    for kind in ("forward", "vjp") if name != "broadcast index" else ("forward",):
        entry = plan.entries[kind]
        prog = schedule(plan.work, entry.inputs, entry.outputs)
        # what is left scatters an input (the seed) directly: no value goes through a
        # buffer only to be gathered or scattered
        left = [s for s in prog.steps if isinstance(s, Gather)]
        assert all(prog.buffers[s.src.buffer].kind == "input" and s.scatter
                   for s in left), (kind, left)
    assert not [s for s in schedule(plan.work, plan.entries["forward"].inputs,
                                    plan.entries["forward"].outputs).steps
                if isinstance(s, Gather)]


def test_an_output_gather_and_a_scatter_of_an_input_keep_their_own_steps():
    g = Graph()
    x = g.input("x", (4,))
    i = g.input("i", (3,), dtype=np.int64)
    f = g.compile([x[i], g.scatter_add(x[:3] * 1.0, i, (6,))])
    out, added = f(np.arange(4.0), np.array([3, -1, 3]))
    np.testing.assert_array_equal(out, [3.0, 3.0, 3.0])
    np.testing.assert_array_equal(added, [0.0, 0.0, 0.0, 2.0, 0.0, 1.0])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_bool_inputs_are_masks_read_as_zero_or_one(dtype):
    g = Graph(dtype)
    x = g.input("x", (2, 3))
    m = g.input("m", (3,), dtype=bool)
    assert m.dtype == np.bool_ and m.shape == (3,)
    out = (C.where(m, C.sin(x), x * x) + m * x - (m[::-1] * 2.0)).sum()
    f = g.compile(out, wrt=[x])
    xv = np.array([[0.3, -1.2, 2.0], [1.5, 0.1, -0.7]])
    mv = np.array([True, False, True])
    t = torch().tensor(xv, requires_grad=True)
    tm = torch().tensor(mv)
    ref = (torch().where(tm, t.sin(), t * t) + tm * t - tm.flip(0) * 2.0).sum()
    ref.backward()
    value, (grad,) = f.vjp(xv, mv)
    rtol = 1e-14 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(value, ref.item(), rtol=rtol)
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=rtol)
    assert grad.dtype == dtype
    assert f(xv, ~mv) != f(xv, mv)                 # a new mask is an argument, not code
    # any nonzero byte is true, as numpy reads a bool array's memory
    odd = np.frombuffer(bytes([2, 0, 255]), dtype=np.bool_)
    assert f(xv, odd) == f(xv, mv)
    with pytest.raises(TypeError, match="a bool input takes bools, got dtype float64"):
        f(xv, np.ones(3))
    with pytest.raises(TypeError, match="a bool input takes bools, got dtype int64"):
        f(xv, [1, 0, 1])
    with pytest.raises(ValueError, match=r"m: expected shape \(3,\)"):
        f(xv, np.ones(2, dtype=bool))
    with pytest.raises(C.GraphError, match="cannot differentiate with respect to m"):
        g.compile(out, wrt=[m])
    with pytest.raises(IndexError, match="m cannot index"):
        g.take(x, m)


def test_export_refuses_index_inputs_and_takes_bool_masks(tmp_path):
    g = Graph()
    x = g.input("x", (5,))
    i = g.input("i", (3,), dtype=np.int64)
    with pytest.raises(ValueError, match=r"export does not take index inputs \(i\)"):
        g.compile(x[i].sum()).export(str(tmp_path / "f.so"))
    m = g.input("m", (5,), dtype=bool)
    f = g.compile(C.where(m, x, -x).sum())
    f.export(str(tmp_path / "f.so"), kind="obj")
    assert "uint8_t m[5]" in (tmp_path / "f.h").read_text()
