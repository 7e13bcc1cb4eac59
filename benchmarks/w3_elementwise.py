"""W3 — L = Σ σ(x·y)·sin(x) + exp(−y²), value and gradient w.r.t. x and y, float64.

Also the peak memory of symgrad's call, against inputs + outputs."""
import sys
import tracemalloc

import numpy as np

from common import agree, median_time, peer, report
from symgrad.compiler import Graph, exp, sigmoid, sin


def main(sizes=(10**6, 10**7)):
    rows = []
    for n in sizes:
        case = f"n={n:.0e}"
        rng = np.random.default_rng(0)
        X, Y = rng.standard_normal(n), rng.standard_normal(n)
        g = Graph()
        x, y = g.input("x", (n,)), g.input("y", (n,))
        f = g.compile([(sigmoid(x * y) * sin(x) + exp(-y * y)).sum()], [x, y])
        L, (gx, gy) = f.vjp(X, Y)
        ref = [L, gx, gy]
        rows.append(dict(case=case, system="symgrad", seconds=median_time(lambda: f.vjp(X, Y))))
        tracemalloc.start()
        f.vjp(X, Y)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        io = X.nbytes + Y.nbytes + gx.nbytes + gy.nbytes
        print(f"  {case}: symgrad peak memory during the call {peak / 1e6:.1f} MB "
              f"beyond inputs ({(X.nbytes + Y.nbytes) / 1e6:.0f} MB); outputs "
              f"{(gx.nbytes + gy.nbytes) / 1e6:.0f} MB → total "
              f"{(peak + X.nbytes + Y.nbytes) / io:.3f}× "
              "inputs+outputs")

        def numpy_ref():
            s = 1 / (1 + np.exp(-X * Y))
            sx, e = np.sin(X), np.exp(-Y * Y)
            ds = s * (1 - s)
            return (s * sx + e).sum(), ds * Y * sx + s * np.cos(X), ds * X * sx - 2 * Y * e
        agree("numpy", ref, numpy_ref())
        rows.append(dict(case=case, system="numpy", seconds=median_time(numpy_ref, min_runs=3)))

        numba = peer("numba")
        if numba:
            @numba.njit(fastmath=False)
            def fused(X, Y):
                gx, gy = np.empty_like(X), np.empty_like(Y)
                total = 0.0
                for i in range(X.shape[0]):
                    x, y = X[i], Y[i]
                    s = 1 / (1 + np.exp(-x * y))
                    sx, e = np.sin(x), np.exp(-y * y)
                    ds = s * (1 - s)
                    total += s * sx + e
                    gx[i] = ds * y * sx + s * np.cos(x)
                    gy[i] = ds * x * sx - 2 * y * e
                return total, gx, gy
            agree("numba", ref, fused(X, Y))
            rows.append(dict(case=case, system="numba fused loop",
                             seconds=median_time(lambda: fused(X, Y), min_runs=3)))

        jax = peer("jax")
        if jax:
            jax.config.update("jax_enable_x64", True)
            import jax.numpy as jnp
            vg = jax.jit(jax.value_and_grad(
                lambda x, y: jnp.sum(jax.nn.sigmoid(x * y) * jnp.sin(x) + jnp.exp(-y * y)),
                argnums=(0, 1)))
            jX, jY = jnp.asarray(X), jnp.asarray(Y)

            def j():
                v, (a, b) = vg(jX, jY)
                return float(v), np.asarray(a), np.asarray(b)
            agree("jax", ref, j())
            rows.append(dict(case=case, system="jax.jit", seconds=median_time(j, min_runs=3)))

        torch = peer("torch")
        if torch:
            torch.set_num_threads(1)
            tX, tY = torch.tensor(X, requires_grad=True), torch.tensor(Y, requires_grad=True)

            def t():
                L = (torch.sigmoid(tX * tY) * torch.sin(tX) + torch.exp(-tY * tY)).sum()
                a, b = torch.autograd.grad(L, [tX, tY])
                return L.item(), a.numpy(), b.numpy()
            agree("torch", ref, t())
            rows.append(dict(case=case, system="torch eager", seconds=median_time(t, min_runs=3)))
    report("W3 elementwise value + gradient", rows,
           notes="target: symgrad ≤ 0.15× jax.jit; peak memory ≤ inputs + outputs + 10%")


if __name__ == "__main__":
    main(tuple(int(float(a)) for a in sys.argv[1:]) or (10**6, 10**7))
