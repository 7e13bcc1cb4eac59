"""Peak memory of a compile, per graph node (#17's figure; target ≤ 2 KB per node).

The scalar chain ``h = sin(h)·1.0001 + 0.1·h·h`` (5 nodes a step: n/5 steps) is built,
then compiled with its gradient and called once; what is measured is the peak resident
memory of that compile and call above the memory after building, per node of the
user's graph.  The target is stated at 10⁵ nodes (≤ 200 MB); the first compile in a
process also sets LLVM up (~30 MB), which weighs on the per-node figure of small graphs.
Each measurement runs in a process of its own (the kernel's high-water
mark is per process, reset before the compile).  jax.jit of the same chain, traced
and compiled with ``value_and_grad``, is measured the same way beside it."""
import json
import os
import subprocess
import sys

_CHILD = r"""
import json, os, sys, time
n, system = int(sys.argv[1]), sys.argv[2]

def status(key):
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith(key)) * 1024

if system == "symgrad":
    from symgrad.compiler import Graph, sin
    g = Graph(); x = g.input("x"); h = x
    for _ in range(n // 5):
        h = sin(h) * 1.0001 + 0.1 * h * h
    nodes = len(g)
    run = lambda: g.compile([h], [x]).vjp(0.3)
else:
    import jax
    jax.config.update("jax_enable_x64", True)
    def chain(x):
        h = x
        for _ in range(n // 5):
            h = jax.numpy.sin(h) * 1.0001 + 0.1 * h * h
        return h
    nodes = n // 5 * 5     # the same operations
    run = lambda: jax.jit(jax.value_and_grad(chain))(0.3)
with open("/proc/self/clear_refs", "w") as fh:      # reset the high-water mark
    fh.write("5")
base = status("VmRSS")
start = time.perf_counter()
run()
seconds = time.perf_counter() - start
print(json.dumps({"peak": status("VmHWM") - base, "seconds": seconds, "nodes": nodes}))
"""


def measure(n, system):
    env = dict(os.environ, SYMGRAD_CACHE="0")          # cold: the disk cache off
    done = subprocess.run([sys.executable, "-c", _CHILD, str(n), system], env=env,
                          capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        print(f"  ({system} at n={n} failed: {done.stderr.strip().splitlines()[-1:]})")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(sizes=(10_000, 50_000, 100_000), jax_max=10_000):
    print("compile memory: scalar chain, compile + gradient + one call, peak RSS over "
          "the built graph")
    print(f"  {'nodes':>8} {'system':<10}{'peak MB':>9}{'KB per node':>13}{'seconds':>10}"
          f"{'symgrad / it':>14}")
    for n in sizes:
        ours = measure(n, "symgrad")
        print(f"  {ours['nodes']:>8} {'symgrad':<10}{ours['peak'] / 2**20:>9.1f}"
              f"{ours['peak'] / ours['nodes'] / 1024:>13.2f}{ours['seconds']:>10.2f}{1.0:>14.2f}")
        try:
            import jax  # noqa: F401
        except ImportError:
            continue
        if n <= jax_max:
            theirs = measure(n, "jax")
            if theirs:
                print(f"  {theirs['nodes']:>8} {'jax.jit':<10}{theirs['peak'] / 2**20:>9.1f}"
                      f"{theirs['peak'] / theirs['nodes'] / 1024:>13.2f}"
                      f"{theirs['seconds']:>10.2f}{ours['peak'] / theirs['peak']:>14.2f}")
    print("  target (#17): ≤ 2 KB per node, ≤ 200 MB at 10⁵ nodes")


if __name__ == "__main__":
    main(tuple(int(a) for a in sys.argv[1:]) or (10_000, 50_000, 100_000))
