"""Loops compiled once (``scan``, ``fori_loop``): values, VJPs, JVPs and second order
against the same loop unrolled in the graph, against PyTorch (float64, the loop run
eagerly) and against central finite differences."""
import numpy as np
import pytest

import symgrad.compiler as C
from symgrad.compiler import Graph, GraphError, ShapeError, fori_loop, scan
from tests.oracle import compile_anew, fd_vjp, torch

K = 6
XS = np.cos(np.arange(K * 4.0)).reshape(K, 4)
IDX = np.array([3, 1, 0, 2])


def _step(lib):
    """One step of a small recurrent model, written for symgrad (lib=C) or torch."""
    def step(carry, x):
        c, s = carry
        n = lib["tanh"](lib["W"] @ c + lib["b"] * x) + 0.1 * c[IDX]
        return (n, s + (n * n).sum()), {"a": n.sum(), "b": n * 2.0}
    return step


def _loss(carry, ya, yb, sin):
    return (carry[0] * carry[0]).sum() + carry[1] + (ya * ya).sum() + (yb * sin(yb)).sum()


def _graph(form, reverse=False, checkpoint=None, dtype=np.float64):
    g = Graph(dtype)
    h, W, b = g.input("h", (4,)), g.input("W", (4, 4)), g.input("b", (4,))
    step = _step({"tanh": C.tanh, "W": W, "b": b})
    xs = XS.astype(dtype)
    if form == "unrolled":
        carry, ys = (h, 0.0), {}
        for t in (reversed(range(K)) if reverse else range(K)):
            carry, ys[t] = step(carry, xs[t])
        ya = C.stack([ys[t]["a"] for t in range(K)])
        yb = C.stack([ys[t]["b"] for t in range(K)])
    else:
        carry, y = scan(step, (h, 0.0), xs, reverse=reverse, checkpoint=checkpoint)
        ya, yb = y["a"], y["b"]
    return g, _loss(carry, ya, yb, C.sin), [h, W, b]


def _torch_loss(h, W, b, reverse=False):
    t = torch()
    step = _step({"tanh": t.tanh, "W": W, "b": b})
    carry, ys = (h, t.tensor(0.0, dtype=t.float64)), {}
    for k in (reversed(range(K)) if reverse else range(K)):
        carry, ys[k] = step(carry, t.tensor(XS[k]))
    ya = t.stack([ys[k]["a"] for k in range(K)])
    yb = t.stack([ys[k]["b"] for k in range(K)])
    return _loss(carry, ya, yb, t.sin)


def _args(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=4), rng.normal(size=(4, 4)) * 0.5, rng.normal(size=4)]


FORMS = [dict(), dict(reverse=True), dict(checkpoint=4), dict(checkpoint=2, reverse=True),
         dict(checkpoint=3)]


@pytest.mark.parametrize("options", FORMS, ids=lambda o: ",".join(f"{k}={v}" for k, v in
                                                                    o.items()) or "plain")
def test_scan_matches_the_unrolled_graph_and_torch(options):
    args = _args()
    g, loss, wrt = _graph("scan", **options)
    f = g.compile([loss], wrt=wrt)
    g2, loss2, wrt2 = _graph("unrolled", reverse=options.get("reverse", False))
    f2 = g2.compile([loss2], wrt=wrt2)
    value, grads = f.vjp(*args, seed=1.0)
    value2, grads2 = f2.vjp(*args, seed=1.0)
    np.testing.assert_allclose(value, value2, rtol=1e-14)
    for a, b in zip(grads, grads2):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    # torch, the loop run eagerly: value, gradient and a Hessian–vector product
    t = torch()
    ts = [t.tensor(a, requires_grad=True) for a in args]
    out = _torch_loss(*ts, reverse=options.get("reverse", False))
    t_grads = t.autograd.grad(out, ts, create_graph=True)
    np.testing.assert_allclose(value, out.item(), rtol=1e-13)
    for a, b in zip(grads, t_grads):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-11, atol=1e-13)
    u = [np.ones(4), np.full((4, 4), 0.5), -np.ones(4)]
    inner = sum((gr * t.tensor(w)).sum() for gr, w in zip(t_grads, u))
    t_hvp = t.autograd.grad(inner, ts)
    _, hvp = f.hvp(*args, tangent=u)
    for a, b in zip(hvp, t_hvp):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-10, atol=1e-12)
    # forward mode: J·u of the loss by a loop over the body's JVP
    _, jvp = f.jvp(*args, tangent=u)
    np.testing.assert_allclose(jvp, sum(np.sum(a * w) for a, w in zip(grads, u)), rtol=1e-11)


def test_scan_gradients_match_finite_differences():
    args = _args(1)
    g, loss, wrt = _graph("scan", checkpoint=4)
    f = g.compile([loss], wrt=wrt)
    _, grads = f.vjp(*args, seed=1.0)
    for a, b in zip(grads, fd_vjp(f, args, 1.0)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_the_hessian_through_a_scan_matches_torch():
    args = _args(2)
    g, loss, wrt = _graph("scan")
    H = g.compile([loss], wrt=wrt).hessian(*args)
    t = torch()
    flat = [t.tensor(a) for a in args]
    t_H = t.func.hessian(lambda h, W, b: _torch_loss(h, W, b), argnums=(0, 1, 2))(*flat)
    for row, t_row in zip(H, t_H):
        for block, t_block in zip(row, t_row):
            np.testing.assert_allclose(block, t_block.numpy(), rtol=1e-10, atol=1e-12)


def test_the_vjp_of_a_scan_differentiates_again_in_the_graph():
    """g.grad of a scan is a reverse scan; its own gradient is a third loop."""
    g = Graph()
    h = g.input("h", (3,))
    final, _ = scan(lambda c, x: (C.sin(c) * x, None), h, np.linspace(0.5, 1.5, 15)
                    .reshape(5, 3))
    (grad,) = g.grad([(final * final).sum()], [h])
    (second,) = g.grad([(grad * grad).sum()], [h])
    f = g.compile([second], wrt=[])
    h0 = np.array([0.3, -0.2, 0.9])
    t = torch()
    th = t.tensor(h0, requires_grad=True)
    c = th
    for row in np.linspace(0.5, 1.5, 15).reshape(5, 3):
        c = t.sin(c) * t.tensor(row)
    (tg,) = t.autograd.grad((c * c).sum(), th, create_graph=True)
    (t2,) = t.autograd.grad((tg * tg).sum(), th)
    np.testing.assert_allclose(f(h0), t2.numpy(), rtol=1e-11)


def test_fori_loop_and_a_captured_weight():
    g = Graph()
    x, w = g.input("x", (3,)), g.input("w")
    out = fori_loop(0, 20, lambda i, c: c + 0.05 * C.tanh(w * c + 0.1 * i), x)
    f = g.compile([out.sum()], wrt=[x, w])
    x0, w0 = np.array([0.1, -0.4, 1.2]), 0.7
    value, grads = f.vjp(x0, w0, seed=1.0)
    t = torch()
    tx = t.tensor(x0, requires_grad=True)
    tw = t.tensor(w0, dtype=t.float64, requires_grad=True)
    c = tx
    for i in range(20):
        c = c + 0.05 * t.tanh(tw * c + 0.1 * i)
    t_grads = t.autograd.grad(c.sum(), (tx, tw))
    np.testing.assert_allclose(value, c.sum().item(), rtol=1e-13)
    for a, b in zip(grads, t_grads):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-12)
    np.testing.assert_allclose(value, g.evaluate(out.sum(), {"x": x0, "w": w0}), rtol=1e-13)
    assert fori_loop(3, 3, lambda i, c: c * 2.0, x) is x      # no step: the value as given


def test_nested_scans_read_the_outer_graph_through_both_bodies():
    g = Graph()
    x, a = g.input("x", (2,)), g.input("a", (2,))

    def outer(c, _):
        inner, _ = scan(lambda d, __: (C.sin(d * a) + c, None), c, length=3)
        return inner * 0.5, inner.sum()
    final, ys = scan(outer, x, length=4)
    f = g.compile([final.sum() + ys.sum()], wrt=[x, a])
    x0, a0 = np.array([0.2, -0.7]), np.array([1.1, 0.4])
    value, grads = f.vjp(x0, a0, seed=1.0)
    t = torch()
    tx, ta = t.tensor(x0, requires_grad=True), t.tensor(a0, requires_grad=True)
    c, total = tx, 0.0
    for _ in range(4):
        d = c
        for _ in range(3):
            d = t.sin(d * ta) + c
        c, total = d * 0.5, total + d.sum()
    out = c.sum() + total
    np.testing.assert_allclose(value, out.item(), rtol=1e-14)
    for mine, theirs in zip(grads, t.autograd.grad(out, (tx, ta))):
        np.testing.assert_allclose(mine, theirs.numpy(), rtol=1e-12)


def test_integer_xs_index_inside_the_body_and_are_checked():
    g = Graph()
    table = g.input("table", (5, 2))
    labels = g.input("labels", (4,), dtype=np.int64)
    final, picked = scan(lambda c, i: (c + table[i], table[i].sum()), g.const(0.0) * table[0],
                         labels)
    f = g.compile([final.sum() + picked.sum()], wrt=[table])
    tab, lab = np.arange(10.0).reshape(5, 2), np.array([4, 0, -1, 2])
    value, (d_table,) = f.vjp(tab, lab, seed=1.0)
    assert value == pytest.approx(2 * tab[lab].sum())
    np.testing.assert_array_equal(d_table, 2 * np.bincount(lab % 5, minlength=5)[:, None]
                                  * np.ones((1, 2)))
    with pytest.raises(IndexError, match="out of bounds"):
        f(tab, np.array([0, 5, 1, 1]))


def test_float32_scan_and_length_zero():
    g = Graph(np.float32)
    x = g.input("x", (3,))
    final, ys = scan(lambda c, _: (c * np.float32(0.5) + 1.0, c), x, length=4)
    f = g.compile([final, ys])
    out, stacked = f(np.ones(3, np.float32))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [1.9375] * 3)
    np.testing.assert_allclose(stacked[:, 0], [1.0, 1.5, 1.75, 1.875])
    same, empty = scan(lambda c, _: (c * 2.0, c), x, length=0)
    assert same is x and empty.shape == (0, 3)


def test_ys_and_carries_given_twice_and_passed_through():
    g = Graph()
    x = g.input("x", (2,))
    (a, b), ys = scan(lambda c, _: ((c[1], c[0] * 2.0), (c[0], c[0])), (x, x + 1.0), length=3)
    out = g.compile([a, b, ys[0], ys[1]])(np.array([1.0, 2.0]))
    ref = g.evaluate([a, b, ys[0], ys[1]], {"x": np.array([1.0, 2.0])})
    for mine, theirs in zip(out, ref):
        np.testing.assert_array_equal(mine, theirs)
    np.testing.assert_array_equal(out[0], [4.0, 6.0])


def test_compile_does_not_grow_with_the_trip_count():
    """The body is compiled once: the module for 10 steps and for 10⁶ is the same code but
    for the trip count."""
    def ir(length):
        g = Graph()
        h = g.input("h", (8,))
        final, _ = scan(lambda c, _: (C.sin(c) * 1.0001 + 0.1 * c * c, None), h,
                        length=length)
        return g.compile([final.sum()], wrt=[h]).source.build("vjp").llvm_ir
    short, long = ir(10), ir(10**6)
    assert abs(len(short.splitlines()) - len(long.splitlines())) <= 2


def test_bad_scans_raise_clear_errors():
    g = Graph()
    x = g.input("x", (3,))
    with pytest.raises(ShapeError, match="keeps its shape"):
        scan(lambda c, _: (c.sum(), None), x, length=2)
    with pytest.raises(GraphError, match="same structure"):
        scan(lambda c, _: ((c, c), None), x, length=2)
    with pytest.raises(GraphError, match="must return \\(carry, y\\)"):
        scan(lambda c, _: c, x, length=2)
    with pytest.raises(GraphError, match="xs or length"):
        scan(lambda c, _: (c, None), x)
    with pytest.raises(ShapeError, match="disagree"):
        scan(lambda c, x_: (c + x_, None), x, np.ones((3, 3)), length=4)
    with pytest.raises(ValueError, match="checkpoint"):
        scan(lambda c, _: (c, None), x, length=4, checkpoint=0)
    with pytest.raises(TypeError, match="Python int"):
        fori_loop(0, 2.5, lambda i, c: c, x)
    with pytest.raises(GraphError, match="reads no graph expression"):
        scan(lambda c, _: (c * 2.0, None), 1.0, length=2)
    other = Graph().input("y")
    with pytest.raises(GraphError, match="not inside"):
        scan(lambda c, _: (c * other, None), x, length=2)


def test_strided_operands_are_copied_for_the_body():
    g = Graph()
    table = g.input("table", (5, 2))
    labels = g.input("labels", (4,), dtype=np.int64)
    x = g.input("x", (3, 4))
    final, picked = scan(lambda c, ix: (c + table[ix[0]] * ix[1].sum(), c.sum()),
                         g.const(0.0) * table[0], (labels, x.T))
    f = g.compile([final.sum() + picked.sum()], wrt=[table, x])
    tab, lab = np.arange(10.0).reshape(5, 2), np.array([4, 0, -1, 2])
    x0 = np.arange(12.0).reshape(3, 4)
    value, (d_table, d_x) = f.vjp(tab, lab, x0, seed=1.0)
    t = torch()
    tt, tx = t.tensor(tab, requires_grad=True), t.tensor(x0, requires_grad=True)
    c, total = t.zeros(2, dtype=t.float64), 0.0
    for k in range(4):
        total = total + c.sum()
        c = c + tt[int(lab[k])] * tx.T[k].sum()
    out = c.sum() + total
    np.testing.assert_allclose(value, out.item(), rtol=1e-14)
    for mine, theirs in zip((d_table, d_x), t.autograd.grad(out, (tt, tx))):
        np.testing.assert_allclose(mine, theirs.numpy(), rtol=1e-13)
    # an index array is not sliced in the graph (its bound is checked on the input)
    with pytest.raises(TypeError, match="index arrays index"):
        labels[::2]


@pytest.mark.parametrize("length,reverse", [(7, False), (8, False), (7, True), (1, False)])
def test_a_forward_pass_keeps_two_rows_when_only_the_final_carry_is_read(length, reverse):
    from symgrad.compiler.schedule import Loop
    g = Graph()
    h, w = g.input("h", (5,)), g.input("w")
    xs = np.linspace(-1.0, 1.0, 5 * length).reshape(length, 5)
    final, _ = scan(lambda c, x: (C.sin(c) * w + x, None), h, xs, reverse=reverse)
    f = g.compile([final * 2.0])
    h0 = np.linspace(0.1, 0.5, 5)
    np.testing.assert_allclose(f(h0, 0.9), g.evaluate(final * 2.0, {"h": h0, "w": 0.9}),
                               rtol=1e-14)
    steps = [s for s in _steps(f) if isinstance(s, Loop)]
    assert [s.ring for s in steps] == [True] and steps[0].out.shape == (2, 5)
    # with the gradient, the forward loop keeps every row (the reverse pass reads them,
    # but for one step);
    # the reverse loop, whose ys (the adjoint of the constant xs) nobody reads, keeps two
    fg = g.compile([final.sum()], wrt=[h])
    assert [s.ring for s in _steps(fg, "vjp") if isinstance(s, Loop)] == [length == 1, True]
    np.testing.assert_allclose(fg.vjp(h0, 0.9, seed=1.0)[1][0],
                               g.compile([final.sum()], wrt=[h, w]).vjp(h0, 0.9)[1][0],
                               rtol=1e-15)


def _steps(f, kind="forward"):
    from symgrad.compiler.schedule import schedule
    entry = f.source.entries[kind]
    return schedule(f.source.work, entry.inputs, entry.outputs).steps


def test_one_element_steps_are_written_in_their_caller(monkeypatch):
    """A kernel of one element and a few members, or a buffer assembled from single
    elements (a scan's carry of scalars, its adjoint's starting zeros), is written in the
    function that runs it: a function of its own cost LLVM's quick code generator ~45 µs
    whatever its size.  Fewer functions, the same bits, the values of the unrolled loop."""
    from symgrad.compiler import lower
    compile_anew(monkeypatch)

    def step(x, u):
        return x[0] + 0.1 * x[1], x[1] + 0.1 * (u - x[1] * x[1]) / x[2], x[2] - 0.01 * u * u

    def compiled():
        g = Graph()
        U = g.input("U", (6,))
        x = (g.const(0.0), g.const(0.5), g.const(1.0))
        x, _ = scan(lambda x, u: (fori_loop(0, 3, lambda j, x: step(x, u), x), None), x, U)
        f = g.compile([(U * U).sum(), C.stack([x[0], x[1]])], wrt=[U])
        return f, f.source.build("vjp").llvm_ir.count("define internal")
    u = np.linspace(0.1, 0.6, 6)
    seeds = (1.0, np.array([1.0, -2.0]))
    inline, inline_functions = compiled()
    monkeypatch.setattr(lower, "_inlined", lambda step: False)
    called, called_functions = compiled()
    assert inline_functions < called_functions - 5
    ((value, pair), grad), ((value2, pair2), grad2) = (f.vjp(u, seed=seeds) for f in (inline,
                                                                                     called))
    assert np.r_[value, pair, grad[0]].tobytes() == np.r_[value2, pair2, grad2[0]].tobytes()
    x = (0.0, 0.5, 1.0)
    for uk in u:
        for _ in range(3):
            x = step(x, uk)
    np.testing.assert_allclose(pair, x[:2], rtol=1e-14)
    assert value == pytest.approx(float((u * u).sum()), rel=1e-14)
