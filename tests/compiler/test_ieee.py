"""Compiled code computes what IEEE arithmetic gives for the graph's operations.

A differential test against numpy evaluating the same operations, on expressions
built to tempt algebraic rewrites, in float64 and float32; the reported cases as
regressions; forward and VJP entries bit-identical; fast_math as the opt-in."""
import math
import re
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from symgrad.compiler import Graph, exp, functions, log, pipeline, sin, sqrt, wait_optimized
from symgrad.compiler.backend import jit
from symgrad.compiler.ops import ELEMENTWISE
from tests.fuzz.recipes import SymgradOps, recipes, replay
from tests.oracle import compile_anew

# Each case: a function of (x, y) written once over a namespace F (numpy or symgrad's
# graph functions); only + − × ÷ and libm calls, in the order written.
TEMPTING = {
    "cancellation": lambda F, x, y: (x + 1e8) - 1e8,
    "two_sum": lambda F, x, y: (x - ((x + y) - ((x + y) - x))) + (y - ((x + y) - x)),
    "fast_two_sum": lambda F, x, y: y - ((x + y) - x),
    "x_over_x": lambda F, x, y: x / x,
    "x_minus_x": lambda F, x, y: x - x,
    "zero_times": lambda F, x, y: 0.0 * x + y,
    "plus_zero": lambda F, x, y: 1.0 / (x + 0.0),
    "zero_minus": lambda F, x, y: 1.0 / (0.0 - x),
    "log_exp": lambda F, x, y: F.log(F.exp(x)),
    "exp_log": lambda F, x, y: F.exp(F.log(x)),
    "sqrt_square": lambda F, x, y: F.sqrt(x) * F.sqrt(x),
    "square_sqrt": lambda F, x, y: F.sqrt(x * x),
    "overflow": lambda F, x, y: (x * 1e300) * 1e300 / 1e300,
    "underflow": lambda F, x, y: (x * 1e-300) * 1e-300 * 1e300,
    "distribute": lambda F, x, y: x * y + x * (1.0 - y),
    "associate": lambda F, x, y: (x + y) + 1.0 - y,
    "reciprocal": lambda F, x, y: x * (1.0 / y),
    "quotient": lambda F, x, y: x / y,
    "double_negation": lambda F, x, y: -(-x) - y,
    "sigmoid_like": lambda F, x, y: 1.0 / (1.0 + F.exp(-x)) - 1.0 / (1.0 + F.exp(-y)),
    "diff_of_squares": lambda F, x, y: x * x - y * y - (x - y) * (x + y),
}
ARITHMETIC_ONLY = {k for k in TEMPTING if k not in
                   ("log_exp", "exp_log", "sqrt_square", "square_sqrt", "sigmoid_like")}

SPECIAL = [0.0, -0.0, 1.0, -1.0, 1e-17, 1e-9, 1e8, 1e308, -1e308, 5e-324, 1e-310, 1e200,
           1000.0, -745.5, math.inf, -math.inf, math.nan, 3.0, 0.1, 1.0 + 2**-52]


def _points(dtype):
    xs, ys = np.meshgrid(np.array(SPECIAL), np.array(SPECIAL))
    with np.errstate(all="ignore"):
        return xs.ravel().astype(dtype), ys.ravel().astype(dtype)


def _ulps(a, b):
    """Distance in units in the last place, with nan = nan and signed zeros distinct."""
    a, b = np.asarray(a), np.asarray(b)
    same = (a == b) & (np.signbit(a) == np.signbit(b)) | (np.isnan(a) & np.isnan(b))
    inty = np.int64 if a.dtype == np.float64 else np.int32
    ia, ib = a.view(inty).astype(np.int64), b.view(inty).astype(np.int64)
    # map the sign-magnitude bit patterns to a monotone integer line
    magnitude = np.int64(np.iinfo(inty).max)
    ia = np.where(ia < 0, -(ia & magnitude), ia)
    ib = np.where(ib < 0, -(ib & magnitude), ib)
    finite = np.isfinite(a) & np.isfinite(b)
    distance = np.where(finite, np.maximum(np.abs(ia - ib), 1), np.iinfo(np.int64).max)
    return np.where(same, 0, distance)     # −0 against +0 is a difference of 1


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", sorted(TEMPTING))
def test_compiled_code_matches_ieee_evaluation(name, dtype):
    xs, ys = _points(dtype)
    build = TEMPTING[name]
    with np.errstate(all="ignore"):
        expected = np.asarray(build(np, xs, ys), dtype=dtype)
    g = Graph(dtype)
    x, y = g.input("x", xs.shape), g.input("y", ys.shape)
    f = g.compile([build(functions, x, y)], inputs=[x, y])
    got = f(xs, ys)
    # + − × ÷ are correctly rounded: bit for bit, nan and the sign of zero included.
    # libm and numpy's own exp/log may differ in the last bit (which exp(log(x))
    # amplifies): there, the same special values and a relative tolerance
    if name in ARITHMETIC_ONLY:
        bad = _ulps(got, expected) > 0
    else:
        rtol = 1e-11 if dtype == np.float64 else 1e-5
        finite = np.isfinite(got) & np.isfinite(expected)
        with np.errstate(all="ignore"):
            close = np.abs(got - expected) <= rtol * np.abs(expected)
        bad = np.where(finite, ~close, _ulps(got, expected) > 0)
    assert not bad.any(), (f"{name}: at x={xs[bad][:4]}, y={ys[bad][:4]} got {got[bad][:4]}, "
                           f"numpy {expected[bad][:4]}")


def test_reported_cases():
    g = Graph()
    a, b = g.input("a"), g.input("b")
    s = a + b
    bb = s - a
    assert g.compile([(a - (s - bb)) + (b - bb)])(1.0, 1e-17) == 1e-17     # TwoSum error
    x = g.input("x")
    assert g.compile([(x + 1e8) - 1e8])(1e-9) == 0.0
    assert g.compile([log(exp(x))])(1000.0) == math.inf
    f = g.compile([x * 0 + 1])                      # folding keeps the user's signature
    assert f(5.0) == 1.0 and [n for n, _, _ in f.inputs] == ["x"]
    assert math.isnan(f(math.inf))


def test_forward_and_vjp_agree_after_what_used_to_be_simplified():
    g = Graph()
    x = g.input("x")
    for expr, at in ((sqrt(x) ** 2, -4.0), (exp(log(x)), -1.0)):
        f = g.compile([expr], [x])
        f.artifact("forward")       # (else a first call is the VJP entry's: see below)
        assert math.isnan(f(at)) and math.isnan(f.vjp(at)[0])


def test_division_in_the_vjp_is_a_division():
    # a/b as a·(1/b) overflows where the quotient does not; −a/b² underflows
    g = Graph()
    a, b = g.input("a"), g.input("b")
    f = g.compile([a / b], [a, b])
    f.artifact("forward")           # (else a first call is the VJP entry's)
    value, _ = f.vjp(1e-20, 1e-310)
    assert value == f(1e-20, 1e-310) == 1e-20 / 1e-310
    assert f.vjp(0.0, 5e-324)[0] == 0.0
    _, (da, db) = f.vjp(1e-220, 1e-160)
    assert da == pytest.approx(1e160) and db == pytest.approx(-1e100)   # torch: −1e100
    g32 = Graph(np.float32)
    a, b = g32.input("a"), g32.input("b")
    f = g32.compile([a / b], [a, b])
    _, (_, db) = f.vjp(np.float32(1e-30), np.float32(1e-22))
    assert db == pytest.approx(np.float32(-1e-30) / np.float32(1e-22) / np.float32(1e-22),
                               rel=1e-6)


@pytest.mark.parametrize("make", [
    lambda g, x: x / 0.0, lambda g, x: x / (x - x), lambda g, x: 1 / (x * 0.0),
    lambda g, x: log(g.const(0.0)) + x, lambda g, x: log(g.const(-1.0)) + x,
    lambda g, x: sqrt(g.const(-4.0)) + x, lambda g, x: (-2.0) ** x,
])
def test_valid_ieee_programs_compile(make):
    g = Graph()
    x = g.input("x")
    expr = make(g, x)
    f = g.compile([expr], [x])
    with np.errstate(all="ignore"):
        expected = g.evaluate([expr], {"x": 2.0})[0]
    np.testing.assert_equal(f(2.0), expected)
    np.testing.assert_equal(f.vjp(2.0)[0], expected)


def test_fast_math_is_the_opt_in_for_algebra():
    g = Graph()
    x = g.input("x")
    f = g.compile([(x + 1e8) - 1e8], fast_math=True)
    assert f(1e-9) == 1e-9            # sympy's x + c − c → x: documented as such
    assert g.compile([(x + 1e8) - 1e8])(1e-9) == 0.0


FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=list(HealthCheck))


def _libm_operators():
    """(name, arity) of every table operator that lowers to one libm call (pow too)."""
    return sorted({(e.name, e.arity) for e in ELEMENTWISE.values() if e.libm}) + [("pow", 2)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name, arity", _libm_operators())
def test_a_libm_call_gives_the_same_bits_at_every_width(name, arity, dtype):
    """The vectoriser picks a width per loop (a remainder runs scalar); glibc's scalar
    function and its SIMD variants differ in the last bit, so all must run one of them."""
    rng = np.random.default_rng(7)
    n = 37                           # vector iterations and a scalar remainder
    domain = {"acosh": (1.0, 9.0), "acos": (-1.0, 1.0), "asin": (-1.0, 1.0),
              "atanh": (-0.99, 0.99), "erfinv": (-0.99, 0.99)}.get(name, (0.1, 3.0))
    values = [rng.uniform(*domain, n).astype(dtype) for _ in range(arity)]
    op = (lambda a, b: a ** b) if name == "pow" else getattr(functions, name)
    g = Graph(dtype)
    xs = [g.input(f"x{k}", (n,)) for k in range(arity)]
    whole = g.compile([op(*xs)])(*values)
    g = Graph(dtype)
    xs = [g.input(f"x{k}") for k in range(arity)]
    one = g.compile([op(*xs)])
    single = np.array([one(*(v[i] for v in values)) for i in range(n)], dtype)
    assert whole.tobytes() == single.tobytes(), np.flatnonzero(whole != single)


@pytest.mark.parametrize("n", [1, 5, 37, 100, 1001])
def test_a_loop_calling_libm_runs_its_last_elements_as_one_masked_vector(n):
    """A loop of sin's last, partial vector iteration is masked loads, vector calls and
    masked stores (no element on its own: each scalar call costs a whole vector call),
    and every element has the bits of sin called on it alone — the masked-off lanes'
    operands (zeros) change nothing.  (LLVM unrolls loops of a few elements instead,
    and vectorises the copies as far as they fill vectors.)"""
    if not jit.vector_variants("sin", 1, False):
        pytest.skip("no libmvec on this host: sin is a scalar call everywhere")
    g = Graph()
    x = g.input("x", (n,))
    y = sin(sin(x) * 1.5 + x)
    f = g.compile([y])
    wait_optimized()
    optimized = jit.optimized(f.artifact("forward").llvm_ir)
    if n > 32:
        assert "@llvm.masked.load" in optimized
        assert not re.search(r"call double @__symgrad_sin\(", optimized), \
            "an element of the loop called sin on its own"
    values = np.linspace(-3.0, 3.0, n)
    one = Graph()
    x1 = one.input("x")
    alone = one.compile([sin(sin(x1) * 1.5 + x1)])
    expected = np.array([alone(v) for v in values])
    assert f(values).tobytes() == expected.tobytes()


def _through_sympy(patched):
    """Lower every kernel's members through SymPy, and compile again what the process
    has compiled already (the same graph would be served from memory or disk)."""
    patched.setattr(pipeline, "_operations", lambda graphs: None)
    compile_anew(patched)


# Powers with a constant exponent lower specially (x**2 → x·x, x**0.5 → sqrt, x**-1 → 1/x)
POWERS = (2.0, 3.0, 0.5, -0.5, -1.0, -2.0, 2.5, 0.0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_kernels_written_from_member_patterns_give_sympys_bits(dtype, monkeypatch):
    """Kernels' members are written from one pattern per operator (lower.py's member
    patterns) — straight-line scalar code and loop bodies alike — and through SymPy when
    a program is SymPy-evaluated: every operator of the table, the constant powers, and
    reciprocal powers inside products (y·z⁻¹ is two roundings, not y/z) give the same
    bits all three ways (scalar, vector, vector through SymPy), special values included."""
    ops = sorted((e.name, e.arity) for e in ELEMENTWISE.values() if e.name != "broadcast")

    def program(g, x, y, z):
        outs = [g.apply(name, *(x, y, z)[:arity]) for name, arity in ops]
        # comparisons give booleans: as 0/1 values, so every store is a float one
        outs = [o if o.dtype == dtype else g.apply("where", o, 1.0, 0.0) for o in outs]
        outs += [x ** p for p in POWERS] + [y * x ** -3.0, y * z ** -1.0, (x * y) ** 2.0]
        return outs
    rng = np.random.default_rng(3)
    xs, ys = (np.concatenate([v, rng.standard_normal(200).astype(dtype)])
              for v in _points(dtype))
    zs = ys[::-1].copy()
    g = Graph(dtype)
    vectors = [g.input(n, (len(xs),)) for n in "xyz"]
    written = g.compile(program(g, *vectors), vectors)
    assert re.search(r"%m\d+\.\d+ = ", written.llvm_ir)     # the loop body from patterns
    whole = written(xs, ys, zs)
    with monkeypatch.context() as patched:                    # every member through SymPy
        _through_sympy(patched)
        g = Graph(dtype)
        vectors = [g.input(n, (len(xs),)) for n in "xyz"]
        through_sympy = g.compile(program(g, *vectors), vectors)
        assert not re.search(r"%m\d+\.\d+ = ", through_sympy.llvm_ir)
        through_sympy = through_sympy(xs, ys, zs)
    assert [np.asarray(w).tobytes() for w in whole] == \
        [np.asarray(t).tobytes() for t in through_sympy]
    g = Graph(dtype)
    scalars = [g.input(n) for n in "xyz"]
    one = g.compile(program(g, *scalars), scalars)
    # the scalar program was written from patterns (members named %m<id>.<k>), whole
    steps = re.findall(r'define internal void @"\w+_forward\.step\d+"(.*?)\n\}', one.llvm_ir, re.S)
    assert steps and all(re.search(r"%m\d+\.\d+ = ", body) and '%".' not in body
                         for body in steps)
    single = [one(*point) for point in zip(xs, ys, zs)]
    names = [name for name, _ in ops] + [f"x**{p}" for p in POWERS] + ["y/x³", "y/z", "(xy)²"]
    for k, name in enumerate(names):
        column = np.array([s[k] for s in single], dtype)
        assert column.tobytes() == np.asarray(whole[k], dtype).tobytes(), \
            (name, np.flatnonzero(column.view(np.uint8) != np.asarray(whole[k]).view(np.uint8)))
    # y·z⁻¹ is a product of a reciprocal, as the graph says (y/z rounds once)
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(np.array([s[names.index("y/z")] for s in single], dtype),
                                      ys * (dtype(1) / zs))


def test_loop_kernels_written_from_patterns_give_sympys_bits(monkeypatch):
    """What loop kernels do besides members — broadcast and strided loads, reductions
    (sum, max, prod) over axes, a gather and its scatter-add, a padded (masked) load,
    float32 loads widened to float64, constant operands — gives the same bits
    with members from patterns and through SymPy, for values and gradients."""
    def program():
        g = Graph()
        a, b = g.input("a", (6, 5)), g.input("b", (5,))
        i = g.input("i", (4,), dtype=np.int64)
        s = g.input("s", (5,), dtype=np.float32)
        c = g.const(np.linspace(-1.0, 1.0, 5))
        t = (functions.tanh(a * b) + exp(-a) / (1.0 + b * b) - c) ** 2.0
        outs = [t.sum(axis=0), functions.amax(a * c, axis=1), (a.T[1:4] * 0.5 + 1.0).prod(),
                (a[i] * b).sum(), functions.pad(sin(b), ((2, 1),)) * 3.0,
                functions.sqrt(abs(a) + 1.0) * s]
        total = sum((o ** 2.0).sum() for o in outs)
        return g.compile(outs + [total], [a, b])
    rng = np.random.default_rng(5)
    args = (rng.standard_normal((6, 5)), rng.standard_normal(5), np.array([0, 5, 2, 5]),
            rng.standard_normal(5).astype(np.float32))

    def run(f):
        f.artifact("forward")       # (else a first call is the VJP entry's)
        return [np.asarray(r).tobytes() for r in [*f(*args), *f.vjp(*args, seed=(
            np.ones(5), np.ones(6), 1.0, 1.0, np.ones(8), np.ones((6, 5)), 1.0))[1]]]
    written = program()
    assert re.search(r"%m\d+\.\d+ = ", written.artifact("vjp").llvm_ir)
    with monkeypatch.context() as patched:
        _through_sympy(patched)
        through_sympy = run(program())
    assert run(written) == through_sympy


def test_both_tiers_of_loop_programs_give_the_same_bits(monkeypatch):
    """A module of jit.TIER_LINES lines or more runs first from a quick compile (no IR
    optimisation, the fast code generator) and then from the optimised one: every operator
    of the table in vector loops (both dtypes), and the loop-kernel features above —
    values and gradients — give the same bits from both tiers.  NaNs aside: a NaN's sign
    and payload depend on which operand of a commuted a·b or a + b is the NaN (x86 keeps
    the first's), and the optimiser may commute them."""
    from symgrad.compiler.backend.stats import stats
    wait_optimized(120)                     # other tests' second tiers: none waiting
    monkeypatch.setattr(jit, "TIER_LINES", 1)             # every module: two tiers
    monkeypatch.setattr(jit, "MAX_PENDING", 100)
    compile_anew(monkeypatch)
    ops = sorted((e.name, e.arity) for e in ELEMENTWISE.values() if e.name != "broadcast")
    rng = np.random.default_rng(11)

    def programs():
        runs = []
        for dtype in (np.float64, np.float32):
            xs, ys = (np.concatenate([v, rng.standard_normal(200).astype(dtype)])
                      for v in _points(dtype))
            zs = ys[::-1].copy()
            g = Graph(dtype)
            x, y, z = [g.input(n, (len(xs),)) for n in "xyz"]
            outs = [g.apply(name, *(x, y, z)[:arity]) for name, arity in ops]
            outs = [o if o.dtype == dtype else g.apply("where", o, 1.0, 0.0) for o in outs]
            outs += [x ** p for p in POWERS]
            f = g.compile(outs + [sum((o * o).sum() for o in outs)], wrt=[x, y, z])
            f.artifact("forward")   # (else a first call is the VJP entry's)
            seed = (*[np.ones(len(xs))] * len(outs), 1.0)
            runs.append((f, lambda f=f, a=(xs, ys, zs), s=seed: [*f(*a), *f.vjp(*a, seed=s)[1]]))
        a, b = rng.standard_normal((6, 5)), rng.standard_normal(5)
        g = Graph()
        av, bv = g.input("a", (6, 5)), g.input("b", (5,))
        t = (functions.tanh(av * bv) + exp(-av) / (1.0 + bv * bv)) ** 2.0
        f = g.compile([t.sum(axis=0), functions.amax(av, axis=1),
                       (av.T[1:4] * 0.5 + 1.0).prod()], [av, bv])
        f.artifact("forward")
        seed = (np.ones(5), np.ones(6), 1.0)
        runs.append((f, lambda f=f: [*f(a, b), *f.vjp(a, b, seed=seed)[1]]))
        return runs

    def bits(results):
        return [np.where(np.isnan(r), np.nan, r).tobytes() for r in map(np.asarray, results)]
    upgrades = stats.upgrades
    with jit.get()._waited_for():   # no second tier starts before the first is recorded
        runs = programs()
        first = [bits(run()) for _, run in runs]
        quick = [(f.artifact("forward").address, f.artifact("vjp").address) for f, _ in runs]
    assert wait_optimized(120)              # everything compiled so far
    assert all(f.wait_optimized(0) for f, _ in runs)
    assert stats.upgrades >= upgrades + 2 * len(runs)           # forward and vjp each
    assert all(f.artifact("forward").address != q[0] and f.artifact("vjp").address != q[1]
               for (f, _), q in zip(runs, quick))
    assert [bits(run()) for _, run in runs] == first
    # with as many programs waiting as jit.MAX_PENDING, the next compiles one tier only
    monkeypatch.setattr(jit, "MAX_PENDING", 0)
    assert all(f.artifact("forward").upgrade is None for f, _ in programs())


def test_pow_forward_and_vjp_entries_agree_on_a_broadcast_exponent():
    """The reported case: (|x0| + 0.5) ** tanh(x1), x0 a 3-vector and x1 a scalar, gave
    values 1 ulp apart in the forward and VJP entries on about half of all inputs."""
    g = Graph()
    x0, x1 = g.input("x0", (3,)), g.input("x1")
    f = g.compile([(functions.abs(x0) + 0.5) ** functions.tanh(x1)], [x0, x1])
    f.artifact("forward")           # (else a first call is the VJP entry's)
    rng = np.random.default_rng(1)
    for _ in range(200):
        a, b = rng.standard_normal(3), rng.standard_normal()
        value, _ = f.vjp(a, b, seed=np.ones(3))
        assert f(a, b).tobytes() == value.tobytes()



def test_sums_in_the_forward_and_vjp_entries_return_identical_bits():
    """A sum's order follows the loop vectoriser's width and interleaving, which LLVM
    chose from the rest of the loop's body: the forward entry's loop and the VJP entry's
    (which keeps values for the reverse pass) gave sums 1 ulp apart in half of these
    graphs.  Long enough for vectors, with a remainder."""
    rng = np.random.default_rng(0)
    steps = [lambda e, x, y: sin(e) * y, lambda e, x, y: e * e + x,
             lambda e, x, y: exp(-e * e) + y, lambda e, x, y: functions.tanh(e) * x,
             lambda e, x, y: e / (1.0 + y * y)]
    for _ in range(16):
        g = Graph()
        x, y = g.input("x", (1003,)), g.input("y", (1003,))
        e = x
        for k in rng.integers(0, len(steps), rng.integers(1, 30)):
            e = steps[k](e, x, y)
        f = g.compile([e.sum(), (e * x).sum(axis=0)], [x, y])
        f.artifact("forward")       # (else a first call is the VJP entry's)
        a, b = rng.standard_normal(1003), rng.standard_normal(1003)
        values, _ = f.vjp(a, b, seed=(1.0, 1.0))
        assert [np.asarray(v).tobytes() for v in f(a, b)] == \
            [np.asarray(v).tobytes() for v in values]


@pytest.mark.parametrize("n, lanes", [(1003, 32), (100, 16), (20, 1)])
def test_a_sum_adds_in_the_documented_order(n, lanes):
    """docs/errors.md: element j·lanes + l adds to lane l, then the lanes add in a tree."""
    x = np.random.default_rng(n).standard_normal(n) * 10.0 ** (np.arange(n) % 7)
    g = Graph()
    xi = g.input("x", (n,))
    got = g.compile([xi.sum(), (xi * xi).sum()])(x)
    for total, values in zip(got, (x, x * x)):
        parts = [0.0] * lanes
        for i, v in enumerate(values):
            parts[i % lanes] += v
        while len(parts) > 1:
            parts = [parts[q] + parts[q + 1] for q in range(0, len(parts), 2)]
        assert np.float64(total).tobytes() == np.float64(parts[0]).tobytes()

@FUZZ
@given(recipe=recipes(loops=True), dtype=st.sampled_from([np.float64, np.float32]),
       data_seed=st.integers(0, 2**32 - 1))
def test_forward_and_vjp_entries_return_identical_bits(recipe, dtype, data_seed):
    rng = np.random.default_rng(data_seed)
    g = Graph(dtype)
    xs = [g.input(f"x{k}", s) for k, s in enumerate(recipe[0])]
    outs = replay(recipe, xs, SymgradOps())
    f = g.compile(outs, xs)
    values = [rng.standard_normal(s).astype(dtype) for s in recipe[0]]
    seeds = [np.ones(o.shape, dtype) for o in outs]
    first = f(*values)              # (answered by the VJP entry, if light: see test below)
    forward = f(*values)
    assert "forward" in f._artifacts
    through_vjp, _ = f.vjp(*values, seed=seeds)
    first, forward, through_vjp = ((v if isinstance(v, tuple) else (v,))
                                   for v in (first, forward, through_vjp))
    for a, b, c in zip(forward, through_vjp, first):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes() == np.asarray(c).tobytes()
    # the fast path and the careful (keyword) path run the same code
    careful = f(**{f"x{k}": v for k, v in enumerate(values)})
    careful = careful if isinstance(careful, tuple) else (careful,)
    for a, b in zip(forward, careful):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_many_scalar_gradients_come_back_as_on_the_careful_path():
    """The fast path returns a run of scalar gradients as one slice of its result."""
    g = Graph()
    xs = [g.input(f"q{k}") for k in range(40)]
    e = xs[0]
    for x in xs[1:]:
        e = sin(e) * 1.5 + x * x
    f = g.compile([e, xs[3] * 2.0], xs)
    q = list(np.linspace(-1.0, 1.0, 40))
    fast = f.vjp(*q, seed=(1.0, 0.5))
    careful = f.vjp(**{f"q{k}": v for k, v in enumerate(q)}, seed=(1.0, 0.5))
    assert fast == careful and type(fast[1]) is tuple and len(fast[1]) == 40
    assert fast[1][3] == careful[1][3] and fast[0][1] == q[3] * 2.0

class _Sub(np.ndarray):
    pass


def _outcome(call):
    try:
        out = call()
    except Exception as err:               # the same error: class and message
        return ("error", type(err), str(err))
    values, grads = out if isinstance(out, tuple) and len(out) == 2 else (out, ())
    flat = [np.asarray(v) for v in (values if isinstance(values, tuple) else (values,))]
    flat += [np.asarray(g) for g in grads]
    return ("value", [(a.shape, a.dtype.str, a.tobytes()) for a in flat])


ARGUMENTS = [
    ((2.0, np.ones(3)), dict(seed=(1.0, np.ones(3)))),
    ((2.0, np.ones(3).view(_Sub)), dict(seed=(1.0, np.ones(3)))),
    ((2.0, np.ones(3, np.float32)), dict(seed=(1.0, np.ones(3)))),
    ((2.0, [1.0, 2.0, 3.0]), dict(seed=(1.0, np.ones(3)))),
    ((2.0, np.ones(4)), dict(seed=(1.0, np.ones(3)))),
    ((2.0,), dict(seed=(1.0, np.ones(3), np.ones(3)))),
    ((2.0, np.ones(3), 1.0), dict(seed=(1.0, np.ones(3)))),
    ((2.0, np.ones(3)), dict(seed=(1.0,))),
    ((2.0, np.ones(3)), dict(seed=None)),
    ((True, np.ones(3)), dict(seed=(1.0, np.ones(3)))),
    ((np.float64(2.0), np.ones(6)[::2]), dict(seed=(np.float64(1.0), np.ones(3)))),
    ((2.0, np.ones(3)), dict(seed=(1.0, np.ones(3)), y=np.ones(3))),
]


@pytest.mark.parametrize("args, kwargs", ARGUMENTS)
def test_fast_and_careful_paths_agree_on_every_argument(args, kwargs):
    g = Graph()
    x, y = g.input("x"), g.input("y", (3,))
    f = g.compile([(x * y).sum(), sin(y) * x], [x, y])
    assert f.vjp.__name__ == "vjp" and f.vjp != f._vjp      # the specialised fast path
    fast = _outcome(lambda: f.vjp(*args, **kwargs))
    careful = _outcome(lambda: f._vjp(*args, **kwargs))
    assert fast == careful


@pytest.mark.parametrize("args, kwargs", [
    ((2.0, np.ones(3)), {}), ((2.0, np.ones(3).view(_Sub)), {}), ((2.0, [1.0, 2.0, 3.0]), {}),
    ((2.0, np.ones(4)), {}), ((2.0,), {}), ((2.0, np.ones(3), 1.0), {}),
    ((True, np.ones(3)), {}), ((2.0,), dict(y=np.ones(3))), ((), dict(z=1.0)),
    ((np.float64(2.0), np.ones(6)[::2]), {}), ((2.0, np.ones(3, np.float32)), {}),
])
def test_a_first_call_answers_from_the_vjp_entry_as_the_forward_entry_would(args, kwargs):
    """A function compiled with its reverse pass answers its first call from the VJP
    entry (no forward compile for one call): the same values, bit for bit, and the
    same errors as the forward entry gives; the next call compiles the forward entry."""
    cold = 1.0 + time.time() % 1e-3             # (not from the cache: compiled here)

    def compiled():
        g = Graph()
        x, y = g.input("x"), g.input("y", (3,))
        return g.compile([(x * y).sum() * cold, sin(y) * x], [x, y])
    first, loaded = compiled(), compiled()
    for _ in range(2):                      # (its first call; the second is the forward's)
        loaded(1.0, np.zeros(3))
    assert "forward" in loaded._artifacts
    assert _outcome(lambda: first(*args, **kwargs)) == _outcome(lambda: loaded(*args, **kwargs))
    assert "forward" not in first._artifacts
    first(1.0, np.zeros(3))
    assert "forward" in first._artifacts


def test_a_heavy_first_call_compiles_the_forward_entry():
    """Where a call makes more than FIRST_CALL_WORK element operations, the reverse pass
    (and gradient arrays nobody asked for) would cost more than the forward compile."""
    from symgrad.compiler.backend.function import FIRST_CALL_WORK
    cold = 1.0 + time.time() % 1e-3
    n = 400_000
    g = Graph()
    x = g.input("x", (n,))
    f = g.compile([(sin(x) * x * cold).sum()], [x])
    assert f.artifact("vjp").work > FIRST_CALL_WORK
    xs = np.linspace(-1.0, 1.0, n)
    value = f(xs)
    assert "forward" in f._artifacts
    assert value == pytest.approx(float((np.sin(xs) * xs * cold).sum()), rel=1e-12)


@pytest.mark.parametrize("args, kwargs", [
    ((2.0,), dict(seed=(3.0, 1.0, 1.0))),      # seeds standing in for the missing y
    ((2.0, 3.0, 1.0), dict(seed=(1.0,))),      # an input standing in for a seed
    ((2.0, 3.0), dict(seed=(1.0, 1.0))),
    ((2.0, 3.0), dict(seed=[1.0, 1.0])),
])
def test_fast_and_careful_paths_agree_on_counts(args, kwargs):
    g = Graph()
    x, y = g.input("x"), g.input("y")
    f = g.compile([x * y, x + y], [x, y])
    assert _outcome(lambda: f.vjp(*args, **kwargs)) == _outcome(lambda: f._vjp(*args, **kwargs))
