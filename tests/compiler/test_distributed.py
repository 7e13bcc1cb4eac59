"""Compiled functions in other processes: pickling, Dask arrays, a local cluster."""
import pickle
import threading

import numpy as np
import pytest

from symgrad.compiler import Graph, scan, sin, tanh, vmap

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")


def model():
    """One element: y = Σ tanh(W·x + b), x a 4-vector; W and b shared by every element."""
    g = Graph()
    x, W, b = g.input("x", (4,)), g.input("W", (3, 4)), g.input("b", (3,))
    y = tanh(W @ x + b).sum()
    return g.compile([y], [W, b, x])


W0 = np.arange(12.0).reshape(3, 4) / 10 - 0.5
B0 = np.array([0.1, -0.2, 0.3])


def oracle(X):
    """The same value and gradients by hand, in numpy: y = Σ tanh(z), z = W·x + b."""
    t = np.tanh(X @ W0.T + B0)
    d = 1 - t * t
    return t.sum(1), d.T @ X, d.sum(0), d @ W0


_RECEIVE = """
import pickle, sys, warnings
import numpy as np
from symgrad.compiler.backend.stats import stats
warnings.simplefilter("always")
with open(sys.argv[1], "rb") as fh:
    f = pickle.load(fh)
value, (grad,) = f.vjp(np.array([0.5, -1.0, 2.0]), 0.7)
print(stats.shipped_hits, stats.compiles, repr(float(value)), repr(float(grad)))
"""


def _receive(tmp_path, blob, cache_dir):
    import os
    import subprocess
    import sys
    path = tmp_path / "f.pickle"
    path.write_bytes(blob)
    env = dict(os.environ, SYMGRAD_CACHE_DIR=str(cache_dir))
    done = subprocess.run([sys.executable, "-c", _RECEIVE, str(path)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    hits, compiles, value, grad = done.stdout.split()
    return int(hits), int(compiles), float(value), float(grad), done.stderr


def test_a_pickle_carries_checked_object_code(tmp_path):
    # the receiving process (an empty cache of its own) runs the sender's object code
    # without compiling; damaged code, or code for another build, is compiled there
    g = Graph()
    x, w = g.input("x", (3,)), g.input("w")
    f = g.compile([(tanh(x * w) * 1.25).sum()], [w])
    value, (grad,) = f.vjp(np.array([0.5, -1.0, 2.0]), 0.7)
    blob = pickle.dumps(f)
    hits, compiles, v, d, _ = _receive(tmp_path, blob, tmp_path / "cache1")
    assert (hits, compiles) == (1, 0) and v == value and d == grad
    damaged = bytearray(blob)
    at = blob.rfind(b"\x7fELF") + 200                # a byte inside the object code
    damaged[at] ^= 0xFF
    hits, compiles, v, d, err = _receive(tmp_path, bytes(damaged), tmp_path / "cache2")
    assert (hits, compiles) == (0, 1) and v == value and d == grad
    assert "checksum" in err


def test_pickled_function_gives_the_same_numbers_and_is_built_once_per_process():
    g = Graph()
    x, w = g.input("x", (5,)), g.input("w")
    c, _ = scan(lambda c, xi: (c * w + sin(xi), c), g.const(0.0), x)
    f = g.compile([c, (x * w).sum()], [w])
    copy = pickle.loads(pickle.dumps(f))
    again = pickle.loads(pickle.dumps(f))
    assert copy is again                       # one rebuild per token and process
    assert copy.__dask_tokenize__() == f.__dask_tokenize__()
    args = (np.linspace(0, 1, 5), 0.7)
    assert f.vjp(*args, seed=[1.0, 2.0]) == copy.vjp(*args, seed=[1.0, 2.0])
    assert pickle.loads(pickle.dumps(vmap(f, (0, None))))(np.ones((2, 5)), 0.5)[0].shape == (2,)


def test_calls_from_many_threads_at_once():
    f = model()
    X = np.random.default_rng(0).standard_normal((64, 4))
    want = [f.vjp(x, W0, B0, seed=1.0) for x in X]
    got, errors = [None] * len(X), []

    def work(k):
        try:
            for j in range(k, len(X), 8):
                got[j] = f.vjp(X[j], W0, B0, seed=1.0)
        except Exception as err:        # pragma: no cover - reported below
            errors.append(err)
    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for (v1, g1), (v2, g2) in zip(want, got):
        assert v1 == v2 and all(np.array_equal(a, b) for a, b in zip(g1, g2))


def test_map_blocks_value_and_gradients_over_chunks():
    f = model()
    X = da.random.default_rng(1).standard_normal((1000, 4), chunks=(128, 4))
    y, (gW, gb, gx) = f.map_blocks(X, W0, B0, in_axes=(0, None, None), seed=1.0)
    assert gW.shape == (3, 4) and gx.shape == (1000, 4)
    y, gW, gb, gx = dask.compute(y, gW, gb, gx, scheduler="synchronous")
    want = oracle(X.compute())
    for a, b in zip((y, gW, gb, gx), want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    values = f.map_blocks(X, W0, B0, in_axes=(0, None, None)).compute()
    np.testing.assert_allclose(values, want[0], rtol=1e-12)


def test_map_blocks_per_element_seeds_and_errors():
    f = model()
    X = da.random.default_rng(2).standard_normal((100, 4), chunks=(30, 4))
    seeds = da.from_array(np.linspace(-1, 1, 100), chunks=10)      # rechunked to X's rows
    _, (gW, _, gx) = f.map_blocks(X, W0, B0, in_axes=(0, None, None), seed=seeds)
    Xn, s = X.compute(), np.linspace(-1, 1, 100)
    d = (1 - np.tanh(Xn @ W0.T + B0) ** 2) * s[:, None]
    np.testing.assert_allclose(gW.compute(), d.T @ Xn, rtol=1e-12)
    np.testing.assert_allclose(gx.compute(), d @ W0, rtol=1e-12)
    with pytest.raises(ValueError, match="in_axes"):
        f.map_blocks(X, W0, B0, in_axes=(1, None, None))
    with pytest.raises(TypeError, match="Dask arrays"):
        f.map_blocks(Xn, W0, B0, in_axes=(0, None, None))
    with pytest.raises(ValueError, match="seed of"):
        f.map_blocks(X, W0, B0, in_axes=(0, None, None), seed=np.ones(2))
    with pytest.raises(TypeError, match="3 inputs"):
        f.map_blocks(X, W0, in_axes=0)


def test_gradient_over_data_larger_than_a_workers_memory_on_a_local_cluster():
    """Two worker processes of 800 MB each (a worker with symgrad, LLVM and numpy loaded
    starts near 250 MB; Dask pauses one at 80% of its limit), 1 GB of data made chunk by
    chunk on them; the summed gradient equals the single-process one."""
    distributed = pytest.importorskip("distributed")
    f = model()
    rows, chunk = 32_000_000, 500_000                 # 32e6 x 4 float64 = 1.02 GB
    X = da.random.default_rng(3).standard_normal((rows, 4), chunks=(chunk, 4))
    y, (gW, gb, _) = f.map_blocks(X, W0, B0, in_axes=(0, None, None), seed=1.0)
    total = y.sum()
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  memory_limit="800MB", dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        futures = client.compute([total, gW, gb])
        distributed.wait(futures, timeout=600)       # a stuck cluster fails, never hangs
        got = client.gather(futures)
    # the single-process result, and the numpy oracle, chunk by chunk
    one = dask.compute(total, gW, gb, scheduler="synchronous")
    parts = [oracle(block) for block in
             (X[k:k + chunk].compute(scheduler="synchronous") for k in range(0, rows, chunk))]
    want = (sum(p[0].sum() for p in parts), sum(p[1] for p in parts), sum(p[2] for p in parts))
    for a, b, c in zip(got, one, want):
        np.testing.assert_allclose(a, b, rtol=1e-12)
        np.testing.assert_allclose(a, c, rtol=1e-9)
