"""distinct graphs — memory and compile time over thousands of distinct graphs in one
process (issue #6: memory stays bounded; #17: memory follows the live functions).

Each system compiles the value and gradient of sum(sin(x)·c) for x of shape (4,), with a
new constant c every time (so nothing is reused), calls it once, checks the value and
drops it, or keeps one function in 100 alive.  Every system and pattern runs in a fresh
process; resident memory (RSS) and memory mappings are read every 1,000 graphs.
python benchmarks/distinct_graphs.py [N]  (default 10,000)
"""
import ast
import json
import os
import subprocess
import sys
import tempfile
import time

from common import RESULTS, machine

COMMON = r"""
import gc, sys, time
import numpy as np
def rss_mb():
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith("VmRSS")) / 1024
def maps():
    with open("/proc/self/maps") as fh:
        return sum(1 for _ in fh)
N, KEEP = int(sys.argv[1]), int(sys.argv[2])
points, kept = [], []
start = time.perf_counter()
for k in range(N + 1):
    c = k + 0.5
    value, compiled = run(c)
    if KEEP and k % KEEP == 0:
        kept.append(compiled)
    assert abs(value - 4 * np.sin(1.0) * c) < 1e-9 * c, (k, value)
    if k % 1000 == 0 or k in (500, N):
        gc.collect()
        points.append((k, rss_mb(), maps(), time.perf_counter() - start))
print(points)
"""

SYSTEMS = {
    "symgrad": r"""
from symgrad.compiler import Graph, sin
def run(c):
    g = Graph()
    x = g.input("x", (4,))
    f = g.compile([(sin(x) * c).sum()], [x])
    return f.vjp(np.ones(4))[0], f
""",
    "jax.jit": r"""
import jax, jax.numpy as jnp
jax.config.update("jax_enable_x64", True)
def run(c):
    f = jax.jit(jax.value_and_grad(lambda x: (jnp.sin(x) * c).sum()))
    return float(f(np.ones(4))[0]), f
""",
}


def main(n=10_000):
    rows = []
    print(f"\ndistinct graphs: {n:,} distinct small graphs compiled, called once and "
          "dropped, one process each")
    print(f"  {'system':<10}{'kept':>9}{'RSS at 500':>12}{'at end':>10}{'per graph':>12}"
          f"{'mappings':>10}{'per graph':>10}{'ms/graph':>10}")
    for (system, setup), keep in [(item, keep) for keep in (0, 100)
                                  for item in SYSTEMS.items()]:
        if system == "jax.jit":
            try:
                __import__("jax")
            except ImportError:
                print("  (skipping jax: not installed; pip install -e '.[bench]')")
                continue
        with tempfile.TemporaryDirectory() as cache_dir:   # a disk cache, as in use
            env = dict(os.environ, SYMGRAD_CACHE_DIR=cache_dir, SYMGRAD_CACHE="1")
            out = subprocess.run([sys.executable, "-c", setup + COMMON, str(n), str(keep)],
                                 check=True,
                                 capture_output=True, text=True, env=env).stdout
        points = ast.literal_eval(out.strip().splitlines()[-1])
        at500 = next(p for p in points if p[0] == 500)
        last = points[-1]
        per_graph_kb = (last[1] - at500[1]) * 1024 / (last[0] - at500[0])
        ms = (last[3] - at500[3]) * 1e3 / (last[0] - at500[0])
        maps_per_graph = (last[2] - at500[2]) / (last[0] - at500[0])
        rows.append(dict(system=system, kept=f"1 in {keep}" if keep else "none",
                         points=points, per_graph_kb=per_graph_kb,
                         maps_per_graph=maps_per_graph, ms_per_graph=ms))
        print(f"  {system:<10}{rows[-1]['kept']:>9}{at500[1]:>9.1f} MB{last[1]:>7.1f} MB"
              f"{per_graph_kb:>9.2f} KB{last[2]:>10}{maps_per_graph:>10.3f}{ms:>10.2f}")
    for kept in ("none", "1 in 100"):
        pair = [r for r in rows if r["kept"] == kept]
        if len(pair) == 2:
            print(f"  symgrad / jax.jit, kept {kept}: memory per graph "
                  f"{pair[0]['per_graph_kb'] / pair[1]['per_graph_kb']:.3f}, "
                  f"compile time {pair[0]['ms_per_graph'] / pair[1]['ms_per_graph']:.3f}")
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "distinct_graphs.json"), "w") as fh:
        json.dump({"workload": f"distinct graphs ({n})", "date": time.strftime("%Y-%m-%d %H:%M"),
                   "machine": machine(), "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
