"""One walk over the operator table: value, VJP with a random seed and a second-order
product of every entry, against PyTorch float64 and central finite differences (JAX's
grad_test_spec / tinygrad's helper_test_op habit).  Elementwise rows are made from the
table itself, so a new entry is tested without writing a row."""
import math
import operator

import numpy as np
import pytest
import sympy as sp

import symgrad.compiler as C
from symgrad.compiler import ELEMENTWISE, STRUCTURED, Graph, ops
from tests.oracle import fd_vjp, torch, torch_hvp, torch_vjp

ARITHMETIC = {"add": operator.add, "sub": operator.sub, "mul": operator.mul,
              "div": operator.truediv, "neg": operator.neg, "pow": operator.pow}
BINARY_SHAPES, UNARY_SHAPES = [(3, 4), (4,)], [(2, 3)]


class Row:
    """One case: ``op`` is the table entry it covers; builders for symgrad and torch."""

    def __init__(self, name, op, build, tbuild, shapes, domain="real", second_order=True,
                 finite_differences=True):
        self.name, self.op, self.build, self.tbuild = name, op, build, tbuild
        self.shapes, self.domain, self.second_order = shapes, domain, second_order
        self.finite_differences = finite_differences     # False: stop_gradient hides a slope


def _elementwise_row(entry):
    build = ARITHMETIC.get(entry.name) or getattr(C, entry.name)

    def tbuild(*args, name=entry.torch):
        if entry.name in ARITHMETIC:
            return ARITHMETIC[entry.name](*args)
        return getattr(torch(), name)(*args)
    shapes = BINARY_SHAPES if entry.arity == 2 else UNARY_SHAPES
    return Row(entry.name, entry.name, build, tbuild, shapes, entry.domain)


ELEMENTWISE_ROWS = [_elementwise_row(e) for e in ELEMENTWISE.values() if e.public and e.torch]
STRUCTURED_ROWS = [
    Row("pow_const", "pow", lambda a: a ** 3, lambda a: a ** 3, [(3, 2)]),
    Row("sum_all", "sum", lambda a: a.sum(), lambda a: a.sum(), [(3, 4)]),
    Row("sum_axis", "sum", lambda a: a.sum(1), lambda a: a.sum(1), [(3, 4, 2)],
        second_order=False),
    Row("sum_keep", "sum", lambda a: a.sum((0, 2), keepdims=True),
        lambda a: a.sum((0, 2), keepdim=True), [(3, 4, 2)], second_order=False),
    Row("mean", "sum", lambda a: a.mean(0), lambda a: a.mean(0), [(3, 4)]),
    Row("reshape", "reshape", lambda a: a.reshape(4, 3) * 2, lambda a: a.reshape(4, 3) * 2,
        [(3, 4)]),
    Row("transpose", "transpose", lambda a: a.T * a.T, lambda a: a.T * a.T, [(3, 4)]),
    Row("transpose_reshape", "transpose", lambda a: a.T.reshape(-1),
        lambda a: a.T.reshape(-1), [(3, 4)], second_order=False),
    Row("broadcast", "broadcast", lambda a: a.broadcast_to((3, 4)) * 1.5,
        lambda a: a.broadcast_to((3, 4)) * 1.5, [(4,)]),
    Row("copy", "copy", lambda a: a.T.reshape(12) * a.T.reshape(12),
        lambda a: a.T.reshape(12) * a.T.reshape(12), [(3, 4)]),
    Row("softplus", "softplus", lambda a: C.softplus(a * 8),
        lambda a: torch().nn.functional.softplus(a * 8), [(4, 5)]),
    # comparisons are 0/1 masks: here they gate a smooth function, so values and slopes show
    *[Row(name, name, lambda a, b, name=name: getattr(C, name)(a, b) * a,
          lambda a, b, op=op: op(a, b).double() * a, BINARY_SHAPES, second_order=False)
      for name, op in (("lt", operator.lt), ("le", operator.le), ("gt", operator.gt),
                       ("ge", operator.ge), ("eq", operator.eq), ("ne", operator.ne))],
    Row("eq_ties", "eq", lambda a, b: C.eq(C.round(a), C.round(b)) * (a + b),
        lambda a, b: (a.round() == b.round()).double() * (a + b), BINARY_SHAPES),
    Row("logical_and", "logical_and", lambda a, b: C.logical_and(a > 0, b < 0) * a * b,
        lambda a, b: torch().logical_and(a > 0, b < 0).double() * a * b, BINARY_SHAPES),
    Row("logical_or", "logical_or", lambda a, b: C.logical_or(a > 0, b < 0) * a * b,
        lambda a, b: torch().logical_or(a > 0, b < 0).double() * a * b, BINARY_SHAPES),
    Row("logical_not", "logical_not", lambda a: C.logical_not(a > 0) * C.sin(a),
        lambda a: torch().logical_not(a > 0).double() * a.sin(), [(3, 4)]),
    Row("where", "where", lambda c, a, b: C.where(c > 0, C.sin(a) * a, b * b) + c * c,
        lambda c, a, b: torch().where(c > 0, a.sin() * a, b * b) + c * c,
        [(3, 1), (4,), (3, 4)]),
    Row("clamp_min", "clamp_min", lambda a, b: C.clamp_min(a, b) * a,
        lambda a, b: torch().clamp_min(a, b) * a, BINARY_SHAPES, second_order=False),
    Row("clamp_max", "clamp_max", lambda a, b: C.clamp_max(a, b) * a,
        lambda a, b: torch().clamp_max(a, b) * a, BINARY_SHAPES, second_order=False),
    Row("clamp", "clamp_min", lambda a: a.clamp(-0.5, 0.5) ** 3,
        lambda a: a.clamp(-0.5, 0.5) ** 3, [(4, 5)]),
    Row("stop_gradient", "stop_gradient", lambda a: C.stop_gradient(a * a) * a,
        lambda a: (a * a).detach() * a, [(5,)], finite_differences=False),
    Row("amax", "amax", lambda a: a.max(1) * 2, lambda a: a.amax(1) * 2, [(3, 4)]),
    Row("amin", "amin", lambda a: a.min((0, 2), keepdims=True) * a,
        lambda a: a.amin((0, 2), keepdim=True) * a, [(3, 4, 2)]),
    Row("amax_all", "amax", lambda a: C.amax(C.sin(a)) ** 2, lambda a: a.sin().amax() ** 2,
        [(2, 3)]),
    Row("logsumexp", "amax", lambda a: C.logsumexp(a * 30.0, axis=1),
        lambda a: torch().logsumexp(a * 30.0, 1), [(3, 4)]),
    Row("softmax", "amax", lambda a, w: C.softmax(a * 5.0, axis=0) * w,
        lambda a, w: torch().softmax(a * 5.0, 0) * w, [(3, 4), (3, 4)]),
    Row("log_softmax", "amax", lambda a: C.log_softmax(a) * a,
        lambda a: torch().log_softmax(a, -1) * a, [(3, 4)]),
    Row("var_std", "sum", lambda a: C.var(a, axis=0, ddof=1) + C.std(a, axis=1),
        lambda a: a.var(0) + a.std(1, unbiased=False), [(4, 4)]),
    Row("heaviside", "heaviside", lambda a: C.heaviside(a, 0.5) * a,
        lambda a: (a > 0).double() * a, [(7,)]),
    # the masks derivatives are made of: their values away from ties, zeros and NaN
    Row("step", "step", lambda a: a.apply("step") * a, lambda a: (a > 0).double() * a, [(7,)]),
    Row("tie", "tie", lambda a, b: a.apply("tie", b) * a, lambda a, b: (a > b).double() * a,
        BINARY_SHAPES, second_order=False),
    Row("xmul", "xmul", lambda a, b: a.apply("xmul", b), lambda a, b: a * b, BINARY_SHAPES),
    Row("pow_log", "pow_log", lambda a, b: a.apply("pow_log", b) * b, lambda a, b: a.log() * b,
        BINARY_SHAPES, domain="positive"),
    Row("matmul", "matmul", lambda a, b: a @ b, lambda a, b: a @ b, [(3, 4), (4, 2)]),
    Row("matmul_vec", "matmul", lambda a, b: a @ b, lambda a, b: a @ b, [(3, 4), (4,)],
        second_order=False),
    Row("matmul_T", "matmul", lambda a, b: a @ b.T, lambda a, b: a @ b.T, [(3, 4), (2, 4)],
        second_order=False),
]
IU, JU = np.triu_indices(4, 1)          # pairs of rows, for index-array rows
LABELS = np.array([2, 0, 3])


def _t(a):
    return torch().tensor(a)


def _tscatter(a, idx, shape):
    out = torch().zeros(shape, dtype=a.dtype)
    return out.index_put((_t(idx),), a, accumulate=True)


INDEXING_ROWS = [
    Row("slice_shift", "index", lambda a: a[1:] * a[:-1] ** 2,
        lambda a: a[1:] * a[:-1] ** 2, [(6,)]),
    Row("slice_2d", "index", lambda a: a[::2, 1:3] * a[1, None, :2] + a[1:4:2, -1:],
        lambda a: a[::2, 1:3] * a[1, None, :2] + a[1:4:2, -1:], [(4, 5)]),
    Row("flip", "index", lambda a: C.flip(a, 0) * a + a[::-1, ::-2].sum(),
        lambda a: a.flip(0) * a + a.flip((0, 1))[:, ::2].sum(), [(3, 4)]),
    Row("slice_transposed", "index", lambda a: a.T[1:, 0] ** 3, lambda a: a.T[1:, 0] ** 3,
        [(3, 4)]),
    # a contiguous block reshapes as a view; a strided one is copied first
    Row("slice_reshape", "index", lambda a: a[1:3].reshape(-1)[:3] * a[:, 1:3].reshape(-1)[3:],
        lambda a: a[1:3].reshape(-1)[:3] * a[:, 1:3].reshape(-1)[3:], [(3, 4)]),
    Row("empty_slice", "index", lambda a: a[2:2].sum() + a[1:].sum() * a[0],
        lambda a: a[2:2].sum() + a[1:].sum() * a[0], [(4,)]),
    Row("squeeze_expand", "index", lambda a: C.squeeze(C.expand_dims(a, (0, 2)) * 2) * a,
        lambda a: (a.unsqueeze(0).unsqueeze(2) * 2).squeeze() * a, [(3, 4)]),
    Row("embed", "embed", lambda a: a.graph.embed(a * a, (5, 4), (slice(1, 4),)),
        lambda a: torch().nn.functional.pad(a * a, (0, 0, 1, 1)), [(3, 4)]),
    Row("concatenate", "concatenate", lambda a, b: C.concatenate([a, b * b, a[:1]], 0) ** 2,
        lambda a, b: torch().cat([a, b * b, a[:1]], 0) ** 2, [(3, 4), (2, 4)]),
    Row("stack", "concatenate", lambda a, b: C.stack([a, b], 1) * C.stack([b, a], 1),
        lambda a, b: torch().stack([a, b], 1) * torch().stack([b, a], 1), [(3, 4), (3, 4)]),
    Row("pad", "pad", lambda a: C.pad(a * a, ((1, 0), (2, 1)), constant_values=0.5) ** 2,
        lambda a: torch().nn.functional.pad(a * a, (2, 1, 1, 0), value=0.5) ** 2, [(3, 4)]),
    Row("gather_pairs", "gather", lambda a: ((a[IU] - a[JU]) ** 2).sum(1) ** -1.0,
        lambda a: ((a[IU] - a[JU]) ** 2).sum(1) ** -1.0, [(4, 3)]),
    Row("gather_labels", "gather", lambda a: C.log_softmax(a)[np.arange(3), LABELS] * 2,
        lambda a: a.log_softmax(-1)[np.arange(3), LABELS] * 2, [(3, 4)]),
    Row("gather_mixed", "gather", lambda a: a[:, [0, 2, 2], 1] * a[[1, 0], 1:, [3, 3]].sum(),
        lambda a: a[:, [0, 2, 2], 1] * a[[1, 0], 1:, [3, 3]].sum(), [(2, 3, 4)]),
    Row("take_along_axis", "gather",
        lambda a: C.take_along_axis(a, np.array([[0, 0], [2, 1], [3, 3]]), 1) ** 2,
        lambda a: torch().take_along_dim(a, _t(np.array([[0, 0], [2, 1], [3, 3]])), 1) ** 2,
        [(3, 4)]),
    Row("take", "gather", lambda a: C.take(a, [0, -1, 5, 5]) * C.take(a, [1, 1], axis=1).sum(),
        lambda a: a.reshape(-1)[[0, -1, 5, 5]] * a[:, [1, 1]].sum(), [(3, 4)]),
    Row("scatter_add", "scatter_add",
        lambda a: a.graph.scatter_add(a * a, np.array([0, 2, 0]), (4, 2)),
        lambda a: _tscatter(a * a, np.array([0, 2, 0]), (4, 2)), [(3, 2)]),
    Row("prod", "prod", lambda a: a.prod(1) * a.prod(), lambda a: a.prod(1) * a.prod(),
        [(3, 4)]),
    Row("cumsum", "cumsum", lambda a: C.cumsum(a * a, 1) * C.cumsum(a).reshape(3, 4),
        lambda a: (a * a).cumsum(1) * a.reshape(-1).cumsum(0).reshape(3, 4), [(3, 4)]),
    Row("scan", "loop", lambda a, b: _scan_row(a, b, C.sin, C.scan),
        lambda a, b: _scan_row(a, b, torch().sin, _torch_scan), [(3,), (4, 3)]),
    Row("norm", "norm_root", lambda a: C.norm(a, axis=1) ** 3 * C.norm(a),
        lambda a: torch().linalg.vector_norm(a, dim=1) ** 3 * torch().linalg.vector_norm(a),
        [(3, 4)]),
    Row("matmul_batched", "matmul", lambda a, b: (a @ b) ** 2, lambda a, b: (a @ b) ** 2,
        [(2, 3, 4), (4, 5)]),
    Row("matmul_batched_vec", "matmul", lambda a, b: a @ b, lambda a, b: a @ b,
        [(4,), (2, 4, 3)]),
    Row("einsum", "sum", lambda a, b: C.einsum("bij,bkj->bik", a, b) ** 2,
        lambda a, b: torch().einsum("bij,bkj->bik", a, b) ** 2, [(2, 3, 4), (2, 5, 4)]),
    Row("einsum_trace_free", "sum", lambda a, b: C.einsum("i,j", a, b) * C.einsum("i,i", a, a),
        lambda a, b: torch().einsum("i,j", a, b) * torch().einsum("i,i", a, a), [(3,), (4,)]),
]
ROWS = ELEMENTWISE_ROWS + STRUCTURED_ROWS + INDEXING_ROWS
ids = [r.name for r in ROWS]


def _values(shapes, domain, rng, dtype=np.float64):
    out = []
    for s in shapes:
        v = rng.standard_normal(s)
        if domain == "positive":
            v = np.abs(v) + 0.5
        elif domain == "small":
            v = v * 0.4
        elif domain == "unit":        # inside (-1, 1): asin, acos, atanh
            v = np.tanh(v) * 0.9
        elif domain == "above1":      # acosh
            v = np.abs(v) + 1.2
        out.append(v.astype(dtype))
    return out


def _rng(row):   # the same data in every process (not hash(): it changes per process)
    return np.random.default_rng([ord(c) for c in row.name])


def _compile(build, shapes, dtype=np.float64):
    g = Graph(dtype)
    xs = [g.input(f"x{k}", s) for k, s in enumerate(shapes)]
    out = build(*xs)
    return g, xs, out, g.compile([out], xs)


@pytest.mark.parametrize("row", ROWS, ids=ids)
def test_value_and_vjp_match_torch_and_finite_differences(row):
    rng = _rng(row)
    g, xs, out, f = _compile(row.build, row.shapes)
    values = _values(row.shapes, row.domain, rng)
    seed = rng.standard_normal(out.shape)
    value, grads = f.vjp(*values, seed=seed)
    t_value, t_grads = torch_vjp(row.tbuild, values, seed)
    np.testing.assert_allclose(value, t_value, rtol=1e-10, atol=1e-12)
    f.artifact("forward")       # the forward entry (a first call is the VJP entry's)
    np.testing.assert_allclose(f(*values), t_value, rtol=1e-10, atol=1e-12)
    for mine, theirs in zip(grads, t_grads):
        np.testing.assert_allclose(mine, theirs, rtol=1e-10, atol=1e-12)
    for mine, fd in zip(grads, fd_vjp(lambda *v: f(*v), values, seed)
                        if row.finite_differences else []):
        np.testing.assert_allclose(mine, fd, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("row", [r for r in ROWS if r.second_order],
                         ids=[r.name for r in ROWS if r.second_order])
def test_second_order_product_matches_torch(row):
    """Differentiate the reverse graph again: ∂/∂x ⟨vᵀJ, w⟩."""
    rng = _rng(row)
    g = Graph()
    xs = [g.input(f"x{k}", s) for k, s in enumerate(row.shapes)]
    out = row.build(*xs)
    seed, ws = g.input("v", out.shape), [g.input(f"w{k}", s) for k, s in enumerate(row.shapes)]
    grads = g.grad([out], xs, [seed])
    inner = sum(((gr * w).sum() for gr, w in zip(grads, ws)), start=g.const(0.0))
    f = g.compile([inner], xs, inputs=[*xs, seed, *ws])   # all of them, even if flat
    values = _values(row.shapes, row.domain, rng)
    v, dirs = rng.standard_normal(out.shape), [rng.standard_normal(s) for s in row.shapes]
    _, second = f.vjp(*values, v, *dirs)
    for mine, theirs in zip(second, torch_hvp(row.tbuild, values, v, dirs)):
        np.testing.assert_allclose(mine, theirs, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("row", ROWS, ids=ids)
def test_float32_within_1e_5(row):
    rng = _rng(row)
    g, xs, out, f = _compile(row.build, row.shapes, np.float32)
    values = _values(row.shapes, row.domain, rng, np.float32)
    seed = rng.standard_normal(out.shape).astype(np.float32)
    value, grads = f.vjp(*values, seed=seed)
    # a scalar output comes back as a Python float; anything else keeps float32
    assert isinstance(value, float) if out.shape == () else value.dtype == np.float32
    t_value, t_grads = torch_vjp(row.tbuild, values, seed)
    np.testing.assert_allclose(value, t_value, rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(grads, t_grads):
        assert mine.dtype == np.float32
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-5)


# entries the rows cannot reach (their inputs are float and all differentiated): tested
# where they are made
def _scan_row(a, b, sin, scan):
    """A scan of 4 steps: the carry through sin, the step's slice and a read value."""
    final, ys = scan(lambda c, x: (sin(c) * x + 0.5 * c * b[0], c * x), a, b)
    return ys * final


def _torch_scan(f, carry, xs):
    ys = []
    for x in xs:
        carry, y = f(carry, x)
        ys.append(y)
    return carry, torch().stack(ys)


ELSEWHERE = {"as_mask": "test_indexing.py::test_bool_inputs_are_masks_read_as_zero_or_one"}


def test_every_operator_has_a_row():
    covered = {r.op for r in ROWS} | set(ELSEWHERE)
    assert set(ELEMENTWISE) - covered == set()
    assert set(STRUCTURED) - covered == set()


@pytest.fixture
def cube_sinh():
    """A throw-away operator, declared in one line and removed afterwards."""
    A = ops.A
    entry = ops.elementwise("cube_sinh", A**3 * sp.sinh(A), lambda a: a**3 * np.sinh(a))
    yield entry
    ops.unregister("cube_sinh")


def test_one_table_entry_gives_function_method_value_vjp_and_second_order(cube_sinh):
    import symgrad.runtime as rt
    assert cube_sinh.grad_fn == "CubeSinhBackward0" and cube_sinh.libm is None
    fn = C.cube_sinh                         # the graph function follows from the entry
    row = Row("cube_sinh", "cube_sinh", fn, lambda a: a**3 * torch().sinh(a), [(5,)])
    test_value_and_vjp_match_torch_and_finite_differences(row)
    test_second_order_product_matches_torch(row)
    test_float32_within_1e_5(row)
    x = rt.tensor([0.5, -1.0], dtype=rt.float64, requires_grad=True)
    y = rt.cube_sinh(x)                      # and so do the runtime's function and method
    assert y.grad_fn.name == "CubeSinhBackward0"
    y.sum().backward()
    a = np.array([0.5, -1.0])
    np.testing.assert_allclose(x.grad.numpy(), 3 * a**2 * np.sinh(a) + a**3 * np.cosh(a))


def test_an_unregistered_operator_is_gone_everywhere():
    import symgrad.runtime as rt
    ops.elementwise("gone_op", ops.A * 2, lambda a: a * 2)
    assert hasattr(rt.Tensor, "gone_op") and hasattr(C, "gone_op")
    ops.unregister("gone_op")
    assert not hasattr(rt.Tensor, "gone_op") and not hasattr(C, "gone_op")
    assert not hasattr(rt, "gone_op")


def test_an_incomplete_operator_fails_when_declared_not_at_its_first_gradient():
    with pytest.raises(C.GraphError, match="incomplete.*besselj"):
        ops.elementwise("bessel0", sp.besselj(0, ops.A), np.sin)
    assert "bessel0" not in ELEMENTWISE


def test_from_sympy_imports_operators_declared_in_the_table():
    x = sp.Symbol("x")
    g, out = Graph.from_sympy(sp.sinh(x) * sp.cosh(x), [x])
    f = g.compile([out], g.inputs)
    value, (grad,) = f.vjp(0.7, seed=1.0)
    assert value == pytest.approx(np.sinh(0.7) * np.cosh(0.7), rel=1e-15)
    assert grad == pytest.approx(np.cosh(1.4), rel=1e-14)


def test_from_sympy_never_evaluates_text():
    with pytest.raises(C.GraphError, match="text is never evaluated"):
        Graph.from_sympy(["__import__('os').system('echo PWNED')"], [])


# ---- derivative conventions at special values: PyTorch's, value for value ------------------
NAN = float("nan")
SPECIAL_POINTS = [
    ("pow", [(0.0, 0.0), (0.0, 2.0), (0.0, -1.0), (0.0, 0.5), (2.0, 0.0), (-2.0, 2.0)]),
    ("relu", [(NAN,), (0.0,), (-0.0,), (1.0,), (-1.0,)]),
    ("abs", [(NAN,), (0.0,), (-2.0,)]),
    ("maximum", [(NAN, 1.0), (1.0, NAN), (1.0, 1.0), (2.0, 1.0), (math.inf, math.inf)]),
    ("minimum", [(NAN, 1.0), (1.0, 1.0), (2.0, 1.0), (-math.inf, -math.inf)]),
    ("sign", [(NAN,), (0.0,), (-3.0,)]),
    ("sqrt", [(0.0,), (-1.0,)]),
    ("div", [(0.0, 0.0), (1.0, 0.0), (1e-220, 1e-160)]),
    ("asin", [(1.0,), (-1.0,), (2.0,), (-0.0,)]),
    ("acos", [(1.0,), (-1.0,), (2.0,)]),
    ("atan", [(math.inf,), (-math.inf,), (NAN,)]),
    ("atan2", [(0.0, 0.0), (0.0, -0.0), (-0.0, -1.0), (1.0, math.inf), (math.inf, math.inf)]),
    ("asinh", [(math.inf,), (-0.0,), (1e300,)]),
    ("acosh", [(1.0,), (0.5,), (math.inf,)]),
    ("atanh", [(1.0,), (-1.0,), (2.0,)]),
    ("erf", [(math.inf,), (-math.inf,), (30.0,), (1e-300,)]),
    ("erfc", [(math.inf,), (30.0,), (-30.0,)]),
    ("log1p", [(-1.0,), (1e-20,), (-2.0,), (math.inf,)]),
    ("expm1", [(1e-20,), (-math.inf,), (800.0,)]),
    ("log2", [(0.0,), (8.0,), (-1.0,)]),
    ("log10", [(0.0,), (1000.0,), (-1.0,)]),
    ("hypot", [(0.0, 0.0), (1e300, 1e300), (1e-300, 1e-300), (math.inf, NAN), (3.0, -4.0)]),
    ("square", [(math.inf,), (1e200,), (-0.0,)]),
    ("reciprocal", [(0.0,), (-0.0,), (math.inf,), (1e-310,)]),
    ("floor", [(-0.5,), (2.5,), (-0.0,), (math.inf,)]),
    ("ceil", [(-0.5,), (2.5,), (-0.0,)]),
    ("round", [(0.5,), (1.5,), (2.5,), (-0.5,), (-2.5,), (4503599627370497.0,)]),
]


@pytest.mark.parametrize("name, points", SPECIAL_POINTS, ids=[n for n, _ in SPECIAL_POINTS])
def test_values_and_slopes_at_special_points_are_pytorchs(name, points):
    from tests.oracle import torch
    T = torch()
    entry = ELEMENTWISE[name]
    g = Graph()
    xs = [g.input(f"a{k}") for k in range(entry.arity)]
    f = g.compile([g.apply(name, *xs)], xs)
    for point in points:
        value, grads = f.vjp(*point)
        ts = [T.tensor(v, dtype=T.float64, requires_grad=True) for v in point]
        out = getattr(T, entry.torch)(*ts)
        out.backward()
        want = [out.item()] + [t.grad.item() for t in ts]
        got = [value, *grads]
        # the same infinities, NaNs and zeros; finite values to the last bit or two (PyTorch
        # divides the seed by x·ln 10 where symgrad multiplies it by (1/ln 10)/x)
        np.testing.assert_allclose(got, want, rtol=3e-16, atol=0, err_msg=f"{name}{point}")


def test_clamp_and_where_at_bounds_ties_and_nan_are_pytorchs():
    from tests.oracle import torch
    T = torch()
    g = Graph()
    x, lo, c = g.input("x"), g.input("lo"), g.input("c")
    f = g.compile([C.clamp_min(x, lo) + C.where(c, x * 3.0, lo) + x.clamp(max=1.0)], [x, lo, c])
    for point in [(1.0, 1.0, 0.0), (0.5, 1.0, 1.0), (NAN, 1.0, 1.0), (1.0, NAN, NAN),
                  (2.0, 1.0, -0.0), (-math.inf, 0.0, math.inf)]:
        value, grads = f.vjp(*point)
        tx, tlo, tc = (T.tensor(v, dtype=T.float64, requires_grad=True) for v in point)
        out = T.clamp_min(tx, tlo) + T.where(tc != 0, tx * 3.0, tlo) + tx.clamp(max=1.0)
        out.backward()
        want = [out.item(), tx.grad.item(), tlo.grad.item(), 0.0]
        np.testing.assert_array_equal([value, *grads], want, err_msg=str(point))


def test_from_sympy_imports_piecewise_relations_and_logic():
    x, y = sp.symbols("x y", real=True)
    expr = sp.Piecewise((x**2, (x < 1) & (y >= 0)), (sp.sin(x), sp.Ne(x, 2)), (y, True)) \
        + sp.Piecewise((1, x > y), (0, True))
    g, out = Graph.from_sympy(expr, [x, y])
    f = g.compile([out], g.inputs)
    fn = sp.lambdify((x, y), expr)
    dfn = [sp.lambdify((x, y), sp.diff(expr, s)) for s in (x, y)]
    for point in [(0.5, 1.0), (0.5, -1.0), (2.0, 0.0), (3.0, 1.0), (1.5, 3.0)]:
        value, grads = f.vjp(*point)
        assert value == pytest.approx(float(fn(*point)), rel=1e-15)
        assert list(grads) == pytest.approx([float(d(*point)) for d in dfn], rel=1e-15)
    # without a True piece it is NaN where no condition holds, as lambdify has it
    g, out = Graph.from_sympy(sp.Piecewise((x, x > 0)), [x])
    assert math.isnan(g.compile([out], g.inputs)(-1.0))


def test_comparisons_build_masks_in_the_graph_and_the_cli_language():
    g = Graph()
    x = g.input("x", (4,))
    f = g.compile([((x > 0) * x + (x <= -1) * 2.0 + abs(x)).sum()], [x])
    value, (grad,) = f.vjp([-2.0, -0.5, 0.0, 3.0])
    assert value == 3 + 2 + (2 + 0.5 + 0 + 3) and list(grad) == [-1, -1, 0, 2]
    prog = C.parse("z = where(x < y, x, y) + (0 < x <= 2) + clamp(x, 0, 1)")
    h = prog.graph.compile([prog["z"]], prog.inputs)
    assert h(1.5, 2.0) == 1.5 + 1 + 1 and h(3.0, 2.0) == 2 + 0 + 1


def test_max_ties_split_and_logsumexp_is_stable_where_the_naive_form_overflows():
    from tests.oracle import torch
    T = torch()
    g = Graph()
    x = g.input("x", (2, 4))
    f = g.compile([C.amax(x, axis=1).sum() + C.logsumexp(x * 400.0).sum() * 1e-3], [x])
    X = np.array([[1.0, 3.0, 3.0, -2.0], [5.0, 5.0, 5.0, 5.0]])
    value, (grad,) = f.vjp(X)
    t = T.tensor(X, requires_grad=True)
    out = t.amax(1).sum() + T.logsumexp(t * 400.0, (0, 1)) * 1e-3
    out.backward()
    assert value == pytest.approx(out.item(), rel=1e-15) and np.isfinite(value)
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-12)
    assert grad[0, 1] == grad[0, 2] and grad[1, 0] == grad[1, 3]     # shared evenly
    # infinite logits: PyTorch's shift by 0 where the maximum is ±inf
    h = Graph()
    y = h.input("y", (3,))
    fh = h.compile([C.logsumexp(y), C.softmax(y).sum()], [y])
    for point in ([-math.inf, -math.inf, 0.0], [math.inf, 1.0, 2.0], [-math.inf] * 3):
        got = fh(point)
        want = [T.logsumexp(T.tensor(point), 0).item(), T.softmax(T.tensor(point), 0).sum()]
        np.testing.assert_array_equal(got, want, err_msg=str(point))
    with pytest.raises(C.ShapeError, match="empty axis"):
        C.amax(h.input("e", (0, 3)), axis=0)


def test_softplus_is_pytorchs_on_both_sides_of_its_threshold():
    from tests.oracle import torch
    T = torch()
    g = Graph()
    x = g.input("x")
    f = g.compile([C.softplus(x)], [x])
    for point in (-800.0, -20.0, 0.0, 19.99, 20.0, 20.01, 800.0, math.inf, NAN):
        value, (grad,) = f.vjp(point)
        t = T.tensor(point, dtype=T.float64, requires_grad=True)
        out = T.nn.functional.softplus(t)
        out.backward()
        np.testing.assert_array_equal(value, out.item(), err_msg=str(point))
        # σ(a) where PyTorch's slope is exactly 1 above the threshold
        np.testing.assert_allclose(grad, t.grad.item(), rtol=3e-9, err_msg=str(point))
