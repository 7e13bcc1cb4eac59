"""Shared benchmark helpers: agreement checks, medians, ratio tables, JSON results.

Every workload times every system in the same run (absolute times drift on shared
machines; ratios measured side by side do not), after checking that all systems
compute the same numbers (float64: 1e-9 relative)."""
from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # single thread unless said
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false "
                                   "intra_op_parallelism_threads=1")
# Compile times are measured cold: code from an earlier run's disk cache would make a
# "first" time a cache hit.  The cache is measured on its own (cache_second_process.py).
os.environ["SYMGRAD_CACHE"] = "0"

import numpy as np

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def peer(name):
    """Import a peer system, or None (with a note) when it is not installed."""
    try:
        return __import__(name)
    except ImportError:
        print(f"  (skipping {name}: not installed; pip install -e '.[bench]')")
        return None


def settle():
    """Wait for symgrad's background work (optimised second tiers) to finish: before a
    steady-state timing, and before a cold compile, which would otherwise share LLVM with
    an earlier program's optimisation."""
    try:
        from symgrad.compiler import wait_optimized
    except ImportError:
        return
    wait_optimized()


def cold():
    """Before every system's cold compile: symgrad's background work finished (``settle``)
    and one full pass of Python's cyclic collector, as pyperf runs one before each
    benchmark.  A full pass falls due after enough objects have survived, whichever code
    made them: without this, one that the earlier sizes or peers made due (0.14-0.16 s at
    W2's N=60, with ~300,000 objects alive) lands in whichever timing comes next.  Passes
    that the timed work's own allocations bring on still count."""
    settle()
    gc.collect()


def median_time(fn, min_runs=5, min_seconds=0.3, max_runs=100_000, settled=True):
    """Median seconds per call; small calls are batched so the clock resolves them.
    ``settled``: first wait for symgrad's optimised second tiers (the steady state)."""
    if settled:
        settle()
    fn()
    if settled:         # (an entry built on this first call gets its second tier now)
        settle()
    start = time.perf_counter()
    fn()
    once = time.perf_counter() - start
    batch = max(1, int(1e-3 / max(once, 1e-9)))
    samples, spent = [], 0.0
    while (len(samples) < min_runs or spent < min_seconds) and len(samples) * batch < max_runs:
        start = time.perf_counter()
        for _ in range(batch):
            fn()
        took = time.perf_counter() - start
        samples.append(took / batch)
        spent += took
    return statistics.median(samples)


def agree(name, reference, other, rtol=1e-9, atol=0.0):
    """Every result within ``rtol`` of symgrad's, relative to that result's magnitude
    (an entry near zero from cancellation is compared at the array's scale)."""
    ref = [np.asarray(r, dtype=np.float64) for r in reference]
    oth = [np.asarray(o, dtype=np.float64) for o in other]
    for a, b in zip(ref, oth):
        scale = float(np.max(np.abs(a))) if a.size else 0.0
        np.testing.assert_allclose(b, a, rtol=rtol, atol=max(atol, rtol * scale),
                                   err_msg=f"{name} disagrees with symgrad")


def report(workload, rows, baseline="symgrad", notes=""):
    """Print a table (seconds, ratio symgrad/peer) and write results/<workload>.json."""
    base = {r["case"]: r["seconds"] for r in rows if r["system"] == baseline}
    print(f"\n{workload}")
    print(f"  {'case':<22}{'system':<22}{'median':>12}{'symgrad / it':>14}")
    for r in rows:
        ratio = base.get(r["case"], float("nan")) / r["seconds"] if r["seconds"] else 0
        r["symgrad_ratio"] = ratio
        print(f"  {r['case']:<22}{r['system']:<22}{_fmt(r['seconds']):>12}{ratio:>14.3f}")
    if notes:
        print("  " + notes)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"{workload.split()[0].rstrip(':').lower()}.json"), "w") as fh:
        json.dump({"workload": workload, "date": time.strftime("%Y-%m-%d %H:%M"),
                   "machine": machine(), "rows": rows, "notes": notes}, fh, indent=2)


def _fmt(seconds):
    if seconds >= 1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.3f} µs"


def machine():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": sys.version.split()[0],
            "platform": platform.platform()}
