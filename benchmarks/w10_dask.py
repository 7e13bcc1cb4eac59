"""W10 — a compiled value + gradient over 10⁷ elements with Dask: one process, then a
LocalCluster of 1 and 2 worker processes (throughput in elements per second).

Each element: y = Σ tanh(W·x + b), x a 4-vector; the gradient for the shared W and b is
summed over the batch by Dask's tree reduction (``f.map_blocks(..., seed=1.0)``)."""
import time

import numpy as np

from common import peer, report
from symgrad.compiler import Graph, tanh, vmap

ROWS, CHUNK = 10_000_000, 500_000


def main():
    dask = peer("dask")
    distributed = peer("distributed")
    if not (dask and distributed):
        return
    import dask.array as da
    g = Graph()
    x, W, b = g.input("x", (4,)), g.input("W", (3, 4)), g.input("b", (3,))
    f = g.compile([tanh(W @ x + b).sum()], [W, b])
    W0, B0 = np.arange(12.0).reshape(3, 4) / 10 - 0.5, np.array([0.1, -0.2, 0.3])
    Xn = da.random.default_rng(0).standard_normal((ROWS, 4), chunks=(CHUNK, 4)).compute(
        scheduler="synchronous")
    batched = vmap(f, (0, None, None))

    def one_process():       # the same chunks, one after another in this process
        total_W = np.zeros((3, 4))
        for k in range(0, ROWS, CHUNK):
            _, (gW, _) = batched.vjp(Xn[k:k + CHUNK], W0, B0, seed=1.0)
            total_W += gW.sum(0)
        return total_W
    ref_W = one_process()
    start = time.perf_counter()
    one_process()
    rows = [dict(case="1e7 elements", system="one process, chunks",
                 seconds=time.perf_counter() - start)]
    for workers in (1, 2):
        with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                      dashboard_address=None) as cluster, \
                distributed.Client(cluster) as client:
            Xw = da.random.default_rng(0).standard_normal((ROWS, 4), chunks=(CHUNK, 4))
            Xw = client.persist(Xw)
            yw, (gWw, gbw) = f.map_blocks(Xw, W0, B0, in_axes=(0, None, None), seed=1.0)
            client.compute([gWw, gbw], sync=True)            # warm: each worker compiles
            start = time.perf_counter()
            got = client.compute([gWw, gbw], sync=True)
            took = time.perf_counter() - start
            np.testing.assert_allclose(got[0], ref_W, rtol=1e-9)
            rows.append(dict(case="1e7 elements", system=f"dask, {workers} worker(s)",
                             seconds=took))
    for r in rows:
        print(f"  {r['system']:<22} {ROWS / r['seconds'] / 1e6:8.1f} M elements/s")
    report("W10 Dask (value + gradient, summed over the batch)", rows,
           baseline="dask, 1 worker(s)",
           notes="throughput = 1e7 / median; the data lives on the workers (persisted)")


if __name__ == "__main__":
    main()
