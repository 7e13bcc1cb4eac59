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


def test_the_hessian_of_products_of_elements_has_constant_tangents_embedded():
    """(x[0]·x[1] − x[-1])·0.7: the tangent of an element's adjoint is a constant (0.7
    times the other element's tangent folds to one), which the hvp embeds into zeros —
    a constant read by a step that reads buffers (found by the fuzzer's Hessians)."""
    g = Graph()
    x = g.input("x", (3,))
    f = g.compile([(x[0] * x[1] - x[-1]) * 0.7], wrt=[x])
    xv = np.array([0.3, -0.2, 0.5])
    t_H = torch().func.hessian(lambda t: (t[0] * t[1] - t[-1]) * 0.7)(torch().tensor(xv))
    np.testing.assert_array_equal(f.hessian(xv), t_H.numpy())
    np.testing.assert_array_equal(f.hessian(xv, sparse=True).toarray(), t_H.numpy())


@pytest.mark.parametrize("n", [2, 4, 8])
def test_jacobians_of_several_outputs_choose_the_cheaper_mode(n):
    g = Graph()
    a = g.input("a", (n,))
    f = g.compile([C.exp(a).sum(), C.cumsum(a * a, 0)[:2].reshape(1, 2),
                   C.stack([a.sum(), (a * a).sum(), C.sin(a).sum()])], wrt=[a])
    av = np.linspace(-0.4, 0.7, n)
    t_J = torch().func.jacrev(lambda t: (
        t.exp().sum(), (t * t).cumsum(0)[:2].reshape(1, 2),
        torch().stack([t.sum(), (t * t).sum(), t.sin().sum()])))(torch().tensor(av))
    sweeps = []

    real = f._run           # (on the instance: each sweep runs one entry)
    f._run = lambda kind, arrays: sweeps.append(kind) or real(kind, arrays)

    def check(J):
        for (mine,), theirs in zip(J, t_J):
            assert mine.shape == tuple(theirs.shape) and mine.flags.c_contiguous
            np.testing.assert_allclose(mine, theirs.numpy(), rtol=1e-13, atol=1e-15)
    # the outputs have 6 elements: forward mode (n sweeps) for n = 2; reverse (6 sweeps on
    # the reverse entry compiled already) for n = 4 (its 4 sweeps in forward mode are not
    # worth that mode's compile) and n = 8
    check(f.jacobian(av))
    assert sweeps == (["jvp"] * 2 if n == 2 else ["vjp"] * 6)
    assert ("jvp" in f._artifacts) == (n == 2)
    # asked for again, fewer sweeps decide: n = 4 compiles forward mode and takes it
    for _ in range(2):
        sweeps.clear()
        check(f.jacobian(av))
        assert sweeps == (["jvp"] * n if n < 6 else ["vjp"] * 6)
    assert ("jvp" in f._artifacts) == (n < 6)


def test_dense_jacobians_and_hessians_asked_again_run_their_sweeps_in_batches(monkeypatch):
    """A solver's repeated dense Jacobian (and Hessian) runs its sweeps through the entry's
    batch form, chunks of SWEEP_CHUNK in one native call each: the same bits as the first
    call's one-by-one sweeps, and torch.func's values."""
    from symgrad.compiler.backend import function as native
    monkeypatch.setattr(native, "SWEEP_CHUNK", 7)       # several chunks and a partial one
    g = Graph()
    y = g.input("y", (20,))
    # 11 output elements, 20 wrt elements: reverse mode (11 sweeps) both times
    f = g.compile([(C.tanh(y) * 2.0 - C.concatenate([y[1:], y[:1]]) * 0.5)[:10],
                   (C.exp(-y * y) * y).sum()], wrt=[y])
    yv = np.linspace(-1.0, 1.0, 20)
    first = f.jacobian(yv)
    assert not any(k.startswith("batch:") for k in f._artifacts)
    again = f.jacobian(yv)
    assert "batch:vjp" in f._artifacts
    for (a,), (b,) in zip(first, again):
        np.testing.assert_array_equal(a, b)
    t = torch()
    t_J = t.func.jacrev(lambda v: ((t.tanh(v) * 2.0 - t.roll(v, -1) * 0.5)[:10],
                                   (t.exp(-v * v) * v).sum()))(t.tensor(yv))
    for (mine,), theirs in zip(again, t_J):
        np.testing.assert_allclose(mine, theirs.numpy(), rtol=1e-13, atol=1e-15)
    h = g.compile([(C.exp(-y * y) * y).sum() + (y[1:] * y[:-1]).sum()], wrt=[y])
    H1, H2 = h.hessian(yv), h.hessian(yv)
    assert "batch:hvp" in h._artifacts
    np.testing.assert_array_equal(H1, H2)
    t_H = t.func.hessian(lambda v: (t.exp(-v * v) * v).sum() + (v[1:] * v[:-1]).sum())(
        t.tensor(yv))
    np.testing.assert_allclose(H2, t_H.numpy(), rtol=1e-12, atol=1e-14)


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


def test_forward_mode_multiplies_partials_into_a_coefficient_before_the_tangent():
    """The chain step h' = sin(h)·1.0001 + 0.1·h·h: its tangent is (cos h·1.0001 +
    (0.1·h + 0.1·h))·ḣ, five nodes a step with the cosine (term by term: eight), reusing
    the primal's 0.1·h; and J·u as torch.func.jvp gives it."""
    steps = 6
    g = Graph()
    h0, u = g.input("h", (4,)), g.input("u", (4,))
    h = h0
    for _ in range(steps):
        h = C.sin(h) * 1.0001 + 0.1 * h * h
    before = len(g.attrs)
    (tangent,) = g.jvp([h], [h0], [u])
    assert len(g.attrs) - before == 5 * steps
    f = g.compile([h, tangent], wrt=[h0])
    hv, uv = np.linspace(-0.9, 1.3, 4), np.array([1.0, -2.0, 0.5, 3.0])
    _, t_tangent = torch().func.jvp(
        lambda x: _chain_torch(x, steps), _torch((hv,)), _torch((uv,)))
    np.testing.assert_allclose(f(hv, uv)[1], t_tangent.numpy(), rtol=1e-13)


def _chain_torch(h, steps):
    for _ in range(steps):
        h = h.sin() * 1.0001 + 0.1 * h * h
    return h


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_forward_mode_coefficients_meet_broadcasts_fan_out_and_two_sources(dtype):
    """Tangents of two sources (x and a scalar w broadcast against it), a value read by
    three operators, a structured operator in between: J·u as torch.func.jvp gives it,
    in the graph's dtype."""
    g = Graph()
    x, w = g.input("x", (6,), dtype), g.input("w", (), dtype)
    a = C.sin(x) * w
    b = a * a + C.exp(-a) * x / (1.0 + w * w)
    y = C.tanh(b.cumsum()) * b
    f = g.compile(y, wrt=[x, w], mode="jvp")
    xv, wv = np.linspace(-1.0, 1.0, 6, dtype=dtype), np.array(0.7, dtype)
    tx, tw = (np.arange(6.0) / 3).astype(dtype), np.array(-0.4, dtype)
    value, tangent = f.jvp(xv, wv, tangent=(tx, tw))
    assert value.dtype == tangent.dtype == dtype

    def model(x, w):
        a = x.sin() * w
        b = a * a + (-a).exp() * x / (1 + w * w)
        return b.cumsum(0).tanh() * b
    _, t_tangent = torch().func.jvp(model, _torch((xv.astype(float), wv.astype(float))),
                                    _torch((tx.astype(float), tw.astype(float))))
    tolerance = 1e-13 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(tangent, t_tangent.numpy(), rtol=tolerance, atol=tolerance)


def _keyed():
    g = Graph()
    x, y = g.input("x", (3,)), g.input("y", ())
    outputs = {"wave": C.sin(x) * y, "energy": (x * x).sum() * C.exp(y)}
    return g, x, y, outputs


def _torch_keyed(p):
    x, y = p["x"], p["y"]
    return {"wave": x.sin() * y, "energy": (x * x).sum() * y.exp()}


def test_dict_outputs_and_wrt_key_every_result_as_jax_pytrees():
    """Outputs and wrt given as dicts: values, vᵀJ, J·u, Jacobians (output, then wrt),
    Hessians, vmap and a pickled copy keyed alike, against torch.func on the same dicts."""
    import pickle
    g, x, y, outputs = _keyed()
    f = g.compile(outputs, wrt={"x": x, "y": y})
    xv, yv = np.array([0.3, -0.7, 1.1]), 0.4
    tp = {"x": torch().tensor(xv), "y": torch().tensor(np.array(yv))}
    fn = torch().func
    value = f(xv, yv)
    assert list(value) == ["wave", "energy"]
    seed = {"wave": np.array([1.0, -2.0, 0.5]), "energy": 3.0}
    t_value, pull = fn.vjp(_torch_keyed, tp)
    (t_grads,) = pull({k: torch().tensor(np.asarray(v)) for k, v in seed.items()})
    _, grads = f.vjp(xv, yv, seed=seed)
    tangent = {"x": np.array([1.0, 0.0, -1.0]), "y": 2.0}
    _, t_tangent = fn.jvp(_torch_keyed, (tp,), ({k: torch().tensor(np.asarray(v))
                                                 for k, v in tangent.items()},))
    _, tangents = f.jvp(xv, yv, tangent=tangent)
    J, t_J = f.jacobian(xv, yv), fn.jacrev(_torch_keyed)(tp)
    sparse = f.jacobian(xv, yv, sparse=True)
    for out in outputs:
        np.testing.assert_allclose(value[out], t_value[out].numpy(), rtol=1e-13)
        np.testing.assert_allclose(tangents[out], t_tangent[out].numpy(), rtol=1e-13)
        for w in ("x", "y"):
            np.testing.assert_allclose(J[out][w], t_J[out][w].numpy(), rtol=1e-13)
            np.testing.assert_allclose(sparse[out][w].toarray().reshape(np.shape(J[out][w])),
                                       J[out][w], rtol=1e-13)
    for w in ("x", "y"):
        np.testing.assert_allclose(grads[w], t_grads[w].numpy(), rtol=1e-13)
    batch = np.stack([xv, 2 * xv])
    per_element = C.vmap(f, in_axes=(0, None)).jacobian(batch, yv)
    np.testing.assert_allclose(per_element["wave"]["x"][1], f.jacobian(2 * xv, yv)["wave"]["x"],
                               rtol=1e-13)
    copy = pickle.loads(pickle.dumps(f))
    assert copy(xv, yv)["energy"] == value["energy"]
    with pytest.raises(TypeError, match=r"seed dict needs the keys \['wave', 'energy'\]"):
        f.vjp(xv, yv, seed={"wave": np.ones(3)})


def test_a_dict_wrt_keys_hessians_and_hvps():
    g, x, y, outputs = _keyed()
    f = g.compile(outputs["energy"], wrt={"x": x, "y": y})
    xv, yv = np.array([0.3, -0.7, 1.1]), 0.4
    tp = {"x": torch().tensor(xv), "y": torch().tensor(np.array(yv))}
    H = f.hessian(xv, yv)
    t_H = torch().func.hessian(lambda p: _torch_keyed(p)["energy"])(tp)
    for a in ("x", "y"):
        for b in ("x", "y"):
            np.testing.assert_allclose(H[a][b], t_H[a][b].numpy(), rtol=1e-13)
    grads, hu = f.hvp(xv, yv, tangent={"x": np.ones(3), "y": 0.0})
    np.testing.assert_allclose(hu["y"], H["y"]["x"].sum(), rtol=1e-13)
    assert set(grads) == {"x", "y"}
    with pytest.raises(C.GraphError, match="wrt is an empty dict"):
        g.compile(outputs, wrt={})
    with pytest.raises(ValueError, match=r"of its shape \(or a dict with the keys \['x', 'y'\]\)"):
        f.hvp(xv, yv)


def test_graph_grad_and_jvp_take_and_give_dicts():
    """g.grad and g.jvp with dicts: the same nodes as with lists, keyed alike."""
    g, x, y, outputs = _keyed()
    seeds = {"energy": 2.0, "wave": g.input("v", (3,))}
    keyed = g.grad(outputs, {"x": x, "y": y}, seeds)
    listed = g.grad([outputs["wave"], outputs["energy"]], [x, y], [seeds["wave"], 2.0])
    assert [keyed["x"].id, keyed["y"].id] == [e.id for e in listed]
    u = {"y": g.input("uy", ()), "x": g.input("ux", (3,))}
    forward = g.jvp(outputs, {"x": x, "y": y}, u)
    assert [forward[k].id for k in ("wave", "energy")] == \
        [e.id for e in g.jvp([outputs["wave"], outputs["energy"]], [x, y], [u["x"], u["y"]])]
    with pytest.raises(C.GraphError, match=r"tangents as a dict needs the keys \['x', 'y'\]"):
        g.jvp(outputs, {"x": x, "y": y}, {"x": u["x"]})


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


# ---- sparsity ----------------------------------------------------------------------------
def _nan_equal(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15, equal_nan=True)


@pytest.mark.parametrize("row", ROWS, ids=ids)
def test_sparse_jacobian_of_every_operator_equals_the_dense_one(row):
    """The pattern read off the table holds every nonzero, and the compressed sweeps
    (one per colour) give the dense Jacobian's values."""
    rng = _rng(row)
    g = Graph()
    xs = [g.input(f"x{k}", s) for k, s in enumerate(row.shapes)]
    f = g.compile(row.build(*xs), wrt=xs)
    values = _values(row.shapes, row.domain, rng)
    dense = np.concatenate([np.asarray(b).reshape(int(np.prod(f.outputs[0][1])), -1)
                            for b in f.jacobian(*values)], axis=1)
    pattern = f.jacobian_sparsity(*values).toarray()
    assert not np.any((dense != 0) & ~pattern), "a nonzero outside the pattern"
    sparse = np.concatenate([b.toarray() for b in f.jacobian(*values, sparse=True)], axis=1)
    _nan_equal(sparse, np.where(pattern, dense, 0.0))


def _heat(n):
    """A discretised 1-D heat equation's right-hand side with a cubic source: banded."""
    g = Graph()
    u = g.input("u", (n,))
    p = C.pad(u, ((1, 1),))
    return g, u, (p[:-2] - 2.0 * p[1:-1] + p[2:]) * float((n + 1) ** 2) - u ** 3


def test_a_banded_jacobian_takes_three_sweeps_and_matches_torch():
    g, u, rhs = _heat(200)
    f = g.compile(rhs, wrt=[u])
    uv = np.sin(np.linspace(0, 3, 200))
    pattern = f.jacobian_sparsity()
    assert pattern.nnz == 3 * 200 - 2
    (J,) = f.jacobian(uv, sparse=True)
    t = torch()

    def t_rhs(v):
        p = t.nn.functional.pad(v, (1, 1))
        return (p[:-2] - 2.0 * p[1:-1] + p[2:]) * float(201 ** 2) - v ** 3
    t_J = t.func.jacfwd(t_rhs)(t.tensor(uv)).numpy()
    np.testing.assert_allclose(J.toarray(), t_J, rtol=1e-13, atol=1e-9)
    # three colours, so three J·u sweeps: the forward entry was added, no reverse sweep ran
    (_, _, _, (direction, colour)), = f._patterns.values()
    assert direction == "forward" and colour.max() == 2


def test_sparse_hessian_matches_torch_and_the_dense_one():
    g, u, rhs = _heat(30)
    f = g.compile((rhs * rhs).sum() + C.amax(u) * u[0], wrt=[u])
    uv = np.cos(np.linspace(0, 2, 30))
    H = f.hessian(uv, sparse=True)
    t = torch()

    def t_f(v):
        p = t.nn.functional.pad(v, (1, 1))
        r = (p[:-2] - 2.0 * p[1:-1] + p[2:]) * float(31 ** 2) - v ** 3
        return (r * r).sum() + v.amax() * v[0]
    np.testing.assert_allclose(H.toarray(), t.func.hessian(t_f)(t.tensor(uv)).numpy(),
                               rtol=1e-12, atol=1e-6)
    _nan_equal(H.toarray(), f.hessian(uv))
    pattern = f.hessian_sparsity().toarray()
    # the five bands of (rhs·rhs), and the row and column of u[0]·amax(u)
    assert pattern[5, 7] and not pattern[5, 8] and pattern[0].all() and pattern[:, 0].all()


def test_sparsity_follows_index_inputs_and_several_outputs():
    g = Graph()
    A, v = g.input("A", (3, 4)), g.input("v", (4,))
    i = g.input("i", (2,), dtype=np.int64)
    y = C.concatenate([A @ v, v[i] * A.sum(0)[i], C.cumsum(v, 0)], 0)
    f = g.compile([y, (A * A).max()], wrt=[A, v])
    Av, vv = np.arange(12.0).reshape(3, 4) / 7, np.linspace(1, 2, 4)
    for iv in (np.array([0, 3]), np.array([-1, 1])):
        P = f.jacobian_sparsity(Av, vv, iv).toarray()
        cols = np.arange(4)[iv]
        assert set(np.flatnonzero(P[3, 12:])) == {cols[0]}            # ∂y[3]/∂v
        assert set(np.flatnonzero(P[3, :12])) == {cols[0], cols[0] + 4, cols[0] + 8}
        Js, Jd = f.jacobian(Av, vv, iv, sparse=True), f.jacobian(Av, vv, iv)
        for o in range(2):
            for w in range(2):
                _nan_equal(Js[o][w].toarray(), Jd[o][w].reshape(Js[o][w].shape))


def test_sparse_and_dense_errors_name_the_fix():
    g = Graph()
    x = g.input("x", (20000,))
    f = g.compile(C.sin(x), wrt=[x])
    with pytest.raises(ValueError, match="pass sparse=True"):
        f.jacobian(np.zeros(20000))
    (J,) = f.jacobian(np.zeros(20000), sparse=True)          # diagonal: one sweep
    np.testing.assert_array_equal(J.diagonal(), np.ones(20000))
    assert J.nnz == 20000
    with pytest.raises(TypeError, match="needs wrt"):
        g.compile(C.sin(x)).jacobian_sparsity()
    h = Graph()
    k = h.input("k", (2,), dtype=np.int64)
    z = h.input("z", (3,))
    with pytest.raises(TypeError, match="missing input"):
        h.compile(z[k], wrt=[z]).jacobian_sparsity()


def test_mode_jvp_compiles_forward_mode_only():
    g = Graph()
    x, y = g.input("x", (4,)), g.input("y")
    out = [C.sin(x) * y, (x * x).sum()]
    f = g.compile(out, wrt=[x, y], mode="jvp")
    assert f.kinds == ["forward", "jvp"] and not f.seeds
    xv, u = np.linspace(-1, 1, 4), [np.arange(4.0), 0.5]
    value, tangent = f.jvp(xv, 2.0, tangent=u)
    reverse = g.compile(out, wrt=[x, y])
    r_value, r_tangent = reverse.jvp(xv, 2.0, tangent=u)
    for a, b in zip([*value, *tangent], [*r_value, *r_tangent]):
        np.testing.assert_array_equal(a, b)
    # the fast path (positional) and the careful one (by name) agree bit for bit
    k_value, k_tangent = f.jvp(x=xv, y=2.0, tangent=u)
    for a, b in zip([*tangent], [*k_tangent]):
        np.testing.assert_array_equal(a, b)
    # the Jacobian sweeps columns: there is no reverse pass to sweep rows
    (jx, jy), (sx, sy) = f.jacobian(xv, 2.0)
    np.testing.assert_allclose(jx, np.diag(np.cos(xv) * 2.0), rtol=1e-15)
    np.testing.assert_allclose(sx, 2 * xv, rtol=1e-15)
    (sparse_x, _), _ = f.jacobian(xv, 2.0, sparse=True)
    np.testing.assert_allclose(sparse_x.toarray(), jx, rtol=1e-15)
    with pytest.raises(TypeError, match="compiled with mode='jvp'"):
        f.vjp(xv, 2.0, seed=[np.ones(4), 1.0])
    with pytest.raises(TypeError, match="mode='jvp' \\(no reverse pass\\)"):
        g.compile((x * x).sum(), wrt=[x], mode="jvp").hessian(xv)
    with pytest.raises(ValueError, match="mode must be 'reverse'"):
        g.compile(out, wrt=[x], mode="forward")


def test_jvp_fast_path_never_takes_inputs_from_the_tangents():
    g = Graph()
    x, y = g.input("x"), g.input("y")
    f = g.compile([x * y, x + y], wrt=[x, y], mode="jvp")
    assert f.jvp(2.0, 3.0, tangent=[1.0, 0.0]) == ((6.0, 5.0), (3.0, 1.0))
    with pytest.raises(TypeError, match="missing input"):     # not y = 1.0 from the tangents
        f.jvp(2.0, tangent=[1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="one array per wrt node"):
        f.jvp(2.0, 3.0, tangent=[1.0])


# ---- vmap ----------------------------------------------------------------------------------
@pytest.mark.parametrize("row", ROWS, ids=ids)
def test_vmap_of_every_operator_matches_torch_func(row):
    """A batch of 3 in one native call: the values torch.func.vmap gives, and value, vᵀJ
    and J·u as three separate calls give them (to the last bits: the batch loop may call
    the scalar libm where the single call's loop took its SIMD variant)."""
    rng = _rng(row)
    g = Graph()
    xs = [g.input(f"x{k}", s) for k, s in enumerate(row.shapes)]
    f = g.compile(row.build(*xs), wrt=xs)
    elements = [_values(row.shapes, row.domain, rng) for _ in range(3)]
    batch = [np.stack([e[k] for e in elements]) for k in range(len(row.shapes))]
    mine = C.vmap(f)(*batch)
    theirs = torch().func.vmap(row.tbuild)(*_torch(batch))
    np.testing.assert_allclose(mine, theirs.numpy(), rtol=1e-12, atol=1e-14)
    seeds = rng.standard_normal((3,) + np.shape(mine)[1:])
    tangents = [rng.standard_normal((3,) + tuple(s)) for s in row.shapes]
    values, grads = C.vmap(f).vjp(*batch, seed=seeds)
    _, jus = C.vmap(f).jvp(*batch, tangent=tangents)
    for b, e in enumerate(elements):
        value, grad = f.vjp(*e, seed=seeds[b])
        _, ju = f.jvp(*e, tangent=[t[b] for t in tangents])
        close = dict(rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(values[b], value, **close)
        np.testing.assert_allclose(jus[b], ju, **close)
        for mine_g, one in zip(grads, grad):
            np.testing.assert_allclose(mine_g[b], one, **close)


def test_vmap_axes_shared_inputs_and_seeds():
    g = Graph()
    W, x = g.input("W", (3, 4)), g.input("x", (4,))
    i = g.input("i", (2,), dtype=np.int64)
    f = g.compile([C.tanh(W @ x)[i].sum(), W @ x], wrt=[W, x])
    rng = np.random.default_rng(5)
    Ws, xs, iv = rng.standard_normal((5, 3, 4)), rng.standard_normal((4, 5)), np.array([0, -1])
    batched = C.vmap(f, in_axes=(0, 1, None))
    # the scalar output's seed is shared (default 1), the vector output's one per element
    seeds = rng.standard_normal((5, 3))
    (s, y), (gW, gx) = batched.vjp(Ws, xs, iv, seed=[None, seeds])
    for b in range(5):
        (s1, y1), (gW1, gx1) = f.vjp(Ws[b], xs[:, b], iv, seed=[1.0, seeds[b]])
        assert s[b] == s1 and np.array_equal(y[b], y1)
        assert np.array_equal(gW[b], gW1) and np.array_equal(gx[b], gx1)
    t = torch()
    t_y = t.func.vmap(lambda w, v: w @ v, in_dims=(0, 1))(t.tensor(Ws), t.tensor(xs))
    np.testing.assert_allclose(y, t_y.numpy(), rtol=1e-14)
    columns = C.vmap(g.compile(W @ x), in_axes=(None, 1), out_axes=1)(Ws[0], xs)
    np.testing.assert_allclose(columns, Ws[0] @ xs, rtol=1e-14)
    assert C.vmap(g.compile(W @ x))(np.zeros((0, 3, 4)), np.zeros((0, 4))).shape == (0, 3)


def test_vmap_jacobians_hessians_and_hvps_are_per_element():
    """vmap(f).jacobian / .hessian / .hvp against torch.func.vmap of jacrev, hessian and
    jvp∘grad, with a shared input (in_axes None) and out_axes; and bit for bit f's own
    per element.  Forward mode (2 outputs of 3 elements, 3 + 6 wrt elements) and reverse
    mode (one scalar, 5 + 10 wrt elements)."""
    t = torch()
    fn = t.func
    rng = np.random.default_rng(9)
    g = Graph()
    x, W, s = g.input("x", (3,)), g.input("W", (2, 3)), g.input("s")
    f = g.compile([C.sin(W @ x) * s, (x * x).sum() * s], wrt=[x, W])
    X, Wv, S = rng.standard_normal((4, 3)), rng.standard_normal((2, 3)), rng.standard_normal(4)
    J = C.vmap(f, in_axes=(0, None, 0)).jacobian(X, Wv, S)
    t_J = fn.vmap(fn.jacrev(lambda x, W, s: (t.sin(W @ x) * s, (x * x).sum() * s),
                            argnums=(0, 1)), in_dims=(0, None, 0))(*_torch((X, Wv, S)))
    for row, t_row in zip(J, t_J):
        for mine, theirs in zip(row, t_row):
            np.testing.assert_allclose(mine, theirs.numpy(), rtol=1e-13, atol=1e-15)
    for b in range(4):
        for row, one in zip(J, f.jacobian(X[b], Wv, S[b])):
            assert all(np.array_equal(m[b], o) for m, o in zip(row, one))

    def loss(x, W):
        return (t.tanh(W @ x) ** 2).sum() + (x ** 3).sum()
    g = Graph()
    x, W = g.input("x", (5,)), g.input("W", (2, 5))
    f = g.compile([(C.tanh(W @ x) ** 2).sum() + (x ** 3).sum()], wrt=[x, W])
    X, Ws = rng.standard_normal((3, 5)), rng.standard_normal((3, 2, 5))
    batched = C.vmap(f, out_axes=1)
    J = batched.jacobian(X, Ws)
    t_J = fn.vmap(fn.jacrev(loss, argnums=(0, 1)))(*_torch((X, Ws)))
    assert [j.shape for j in J] == [(5, 3), (2, 3, 5)]      # the batch axis at out_axes=1
    for mine, theirs in zip(J, t_J):
        np.testing.assert_allclose(np.moveaxis(mine, 1, 0), theirs.numpy(), rtol=1e-13)
    H = C.vmap(f).hessian(X, Ws)
    t_H = fn.vmap(fn.hessian(loss, argnums=(0, 1)))(*_torch((X, Ws)))
    for row, t_row in zip(H, t_H):
        for mine, theirs in zip(row, t_row):
            np.testing.assert_allclose(mine, theirs.numpy(), rtol=1e-12, atol=1e-14)
    for b in range(3):
        for row, one in zip(H, f.hessian(X[b], Ws[b])):
            assert all(np.array_equal(m[b], o) for m, o in zip(row, one))
    U, UW = rng.standard_normal((3, 5)), rng.standard_normal((2, 5))     # UW shared
    grads, hu = C.vmap(f).hvp(X, Ws, tangent=(U, UW))
    t_grads, t_hu = fn.vmap(lambda x, W, u, uw: fn.jvp(fn.grad(loss, argnums=(0, 1)), (x, W),
                                                       (u, uw)), in_dims=(0, 0, 0, None))(
        *_torch((X, Ws, U, UW)))
    for mine, theirs in zip([*grads, *hu], [*t_grads, *t_hu]):
        np.testing.assert_allclose(mine, theirs.numpy(), rtol=1e-12, atol=1e-14)


def test_vmap_runs_in_threads_and_names_bad_arguments():
    import threading
    g = Graph()
    u1, u2 = g.input("u1"), g.input("u2")
    f = C.vmap(g.compile(u2 * (u1 + u2), wrt=[u1, u2]))      # document 002
    a, b = np.linspace(0, 1, 100_000), np.linspace(2, 3, 100_000)
    out = {}
    threads = [threading.Thread(target=lambda k=k: out.update({k: f.vjp(a + k, b)}))
               for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for k in range(4):
        value, (p1, p2) = out[k]
        np.testing.assert_array_equal(value, b * ((a + k) + b))
        np.testing.assert_array_equal(p1, b)
        np.testing.assert_array_equal(p2, (a + k + b) + b)
    with pytest.raises(ValueError, match="batch sizes differ: u1 has 3 elements along its "
                                         "batch axis, u2 2"):
        f(np.ones(3), np.ones(2))
    with pytest.raises(ValueError, match="u1: batch axis 1 is out of range"):
        C.vmap(f.f, in_axes=1)(np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="at least one batched input"):
        C.vmap(f.f, in_axes=None)
    with pytest.raises(TypeError, match="in_axes: an int, None, or one of them per input"):
        C.vmap(f.f, in_axes=(0,))
    with pytest.raises(ValueError, match=r"seed for u2·\(u1\+u2\)|seed for .*: expected shape"):
        f.vjp(np.ones(3), np.ones(3), seed=np.ones(2))
    with pytest.raises(TypeError, match="seed for .*: expected a real number"):
        f.vjp(np.ones(3), np.ones(3), seed="abc")
    with pytest.raises(ValueError, match="out_axes=1 is out of range"):
        C.vmap(f.f, out_axes=1)(np.ones(3), np.ones(3))
    with pytest.raises(TypeError, match="vmap takes a compiled function"):
        C.vmap(lambda x: x)
