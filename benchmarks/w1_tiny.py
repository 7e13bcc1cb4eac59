"""W1 — value + VJP of the documents' tiny graphs, per Python call.

u4 = u2·(u1 + u2) at (2, 3); z = x·y on 3-vectors with seed [1, 1, 1]."""
import numpy as np

from common import agree, median_time, peer, report
from symgrad.compiler import Graph


def main():
    rows = []
    g = Graph()
    u1, u2 = g.input("u1"), g.input("u2")
    f = g.compile([u2 * (u1 + u2)], [u1, u2])
    ref1 = f.vjp(2.0, 3.0, seed=1.0)
    g2 = Graph()
    x, y = g2.input("x", (3,)), g2.input("y", (3,))
    fz = g2.compile([x * y], [x, y])
    xs, ys, seed = np.array([0.0, 2.0, 8.0]), np.array([5.0, 1.0, 7.0]), np.ones(3)
    ref2 = fz.vjp(xs, ys, seed=seed)
    flat1 = [ref1[0], *ref1[1]]
    flat2 = [ref2[0], *ref2[1]]
    rows.append(dict(case="scalar u4", system="symgrad",
                     seconds=median_time(lambda: f.vjp(2.0, 3.0, seed=1.0))))
    rows.append(dict(case="vector z=x*y", system="symgrad",
                     seconds=median_time(lambda: fz.vjp(xs, ys, seed=seed))))

    torch = peer("torch")
    if torch:
        torch.set_num_threads(1)

        def t1():
            a = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
            b = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
            out = b * (a + b)
            ga, gb = torch.autograd.grad(out, [a, b])
            return out.item(), ga.item(), gb.item()

        tx, ty, ts = (torch.tensor(v) for v in (xs, ys, seed))

        def t2():
            a, b = tx.clone().requires_grad_(), ty.clone().requires_grad_()
            out = a * b
            ga, gb = torch.autograd.grad(out, [a, b], ts)
            return out.detach().numpy(), ga.numpy(), gb.numpy()
        agree("torch", flat1, t1())
        agree("torch", flat2, t2())
        rows.append(dict(case="scalar u4", system="torch eager", seconds=median_time(t1)))
        rows.append(dict(case="vector z=x*y", system="torch eager", seconds=median_time(t2)))

    jax = peer("jax")
    if jax:
        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        @jax.jit
        def j1(a, b, v):
            out, pull = jax.vjp(lambda a, b: b * (a + b), a, b)
            return (out, *pull(v))

        @jax.jit
        def j2(a, b, v):
            out, pull = jax.vjp(lambda a, b: a * b, a, b)
            return (out, *pull(v))
        agree("jax", flat1, j1(2.0, 3.0, 1.0))
        jx, jy, js = jnp.asarray(xs), jnp.asarray(ys), jnp.asarray(seed)
        agree("jax", flat2, j2(jx, jy, js))
        rows.append(dict(case="scalar u4", system="jax.jit",
                         seconds=median_time(lambda: [np.asarray(v) for v in j1(2.0, 3.0, 1.0)])))
        rows.append(dict(case="vector z=x*y", system="jax.jit",
                         seconds=median_time(lambda: [np.asarray(v) for v in j2(xs, ys, seed)])))

    ca = peer("casadi")
    if ca:
        a, b, v = ca.SX.sym("a"), ca.SX.sym("b"), ca.SX.sym("v")
        out = b * (a + b)
        c1 = ca.Function("c1", [a, b, v], [out, *ca.gradient(out * v, ca.vertcat(a, b)).nz])
        A, Bv, V = ca.SX.sym("x", 3), ca.SX.sym("y", 3), ca.SX.sym("v", 3)
        z = A * Bv
        c2 = ca.Function("c2", [A, Bv, V], [z, ca.jtimes(z, A, V, True), ca.jtimes(z, Bv, V, True)])
        agree("casadi", flat1, [float(r) for r in c1(2.0, 3.0, 1.0)])
        agree("casadi", flat2, [np.asarray(r).ravel() for r in c2(xs, ys, seed)])
        rows.append(dict(case="scalar u4", system="casadi SX", seconds=median_time(
            lambda: [float(r) for r in c1(2.0, 3.0, 1.0)])))
        rows.append(dict(case="vector z=x*y", system="casadi SX", seconds=median_time(
            lambda: [np.asarray(r) for r in c2(xs, ys, seed)])))

    se = peer("symengine")
    if se:
        a, b, v = se.symbols("a b v")
        out = b * (a + b)
        l1 = se.Lambdify([a, b, v], [out, v * out.diff(a), v * out.diff(b)], backend="llvm")
        X = se.symbols("x0:3")
        Y = se.symbols("y0:3")
        V = se.symbols("v0:3")
        zs = [X[i] * Y[i] for i in range(3)]
        l2 = se.Lambdify([*X, *Y, *V], zs + [V[i] * zs[i].diff(X[i]) for i in range(3)]
                         + [V[i] * zs[i].diff(Y[i]) for i in range(3)], backend="llvm")
        agree("symengine", flat1, l1(2.0, 3.0, 1.0))
        r2 = l2(*xs, *ys, *seed)
        agree("symengine", flat2, [r2[:3], r2[3:6], r2[6:]])
        rows.append(dict(case="scalar u4", system="symengine LLVM",
                         seconds=median_time(lambda: l1(2.0, 3.0, 1.0))))
        rows.append(dict(case="vector z=x*y", system="symengine LLVM",
                         seconds=median_time(lambda: l2(*xs, *ys, *seed))))
    report("W1 tiny graphs: value + VJP per call", rows,
           notes="target: symgrad ≤ 1 µs per call")


if __name__ == "__main__":
    main()
