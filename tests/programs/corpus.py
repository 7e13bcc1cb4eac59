"""Run PyTorch programs unchanged on symgrad.runtime and on PyTorch, and compare.

    python -m tests.programs.corpus DIR [NAME ...]

Each ``DIR/*.py`` is a PyTorch program as published (``import torch``, ``import
torch.nn as nn``, ``from torch.utils.data import …``).  It runs twice, each in a child
process: as written, on PyTorch, and with only its imports swapped to
``symgrad.runtime`` (``import symgrad.runtime as torch`` and the like).  Both runs start
from the same seeds (``torch.manual_seed(0)``, ``random.seed(0)``, ``np.random.seed(0)``);
symgrad draws PyTorch's random streams, so random initialisations agree.

A program agrees when both runs succeed and print the same text with the same numbers,
each within ``rtol`` of PyTorch's (see ``compare``): float64 programs 1e-10; float32
programs 1e-3.  Why 1e-3 for float32: each step rounds at 6e-8, PyTorch's kernels fuse
multiply-adds, sum in their own order and use vectorised log/sin/cos that differ from
numpy's in the last bit; hundreds of training steps carry those differences into the
printed losses, and a loss that has converged to 1e-5 of its start is itself mostly
rounding (the measured worst case in the hand-run campaign is 7.5e-4).
Programs that define ``test_*`` functions (a test file) have them called.

The published programs themselves are not kept in this repository (third-party code
stays out of it): ``SOURCES.md`` lists where each one of the hand-run campaign lives,
and ``own/`` holds programs written for this project in the same style, which CI runs.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

_SWAPS = [
    (r"^(\s*)import torch\.nn\.functional as (\w+)",
     r"\1import symgrad.runtime.nn.functional as \2"),
    (r"^(\s*)import torch\.([\w.]+) as (\w+)", r"\1import symgrad.runtime.\2 as \3"),
    (r"^(\s*)import torch\s*$", r"\1import symgrad.runtime as torch"),
    (r"^(\s*)from torch\.([\w.]+) import ", r"\1from symgrad.runtime.\2 import "),
    (r"^(\s*)from torch import ", r"\1from symgrad.runtime import "),
]

_RUNNER = r"""
import io, json, random, sys, types
import numpy as np
name, path, module = sys.argv[1], sys.argv[2], sys.argv[3]
def _stub(attr):
    if attr.startswith("__"):
        raise AttributeError(attr)
    return lambda *a, **k: None
plt = types.ModuleType("matplotlib.pyplot")
plt.__getattr__ = _stub
mpl = types.ModuleType("matplotlib"); mpl.pyplot = plt
sys.modules.update({"matplotlib": mpl, "matplotlib.pyplot": plt})
torch = __import__(module, fromlist=["_"])
d2l = types.ModuleType("d2l"); d2l.torch = types.ModuleType("d2l.torch")
def _alias(attr):
    if attr.startswith("__"):
        raise AttributeError(attr)
    return getattr(torch, attr)
d2l.torch.__getattr__ = _alias
sys.modules.update({"d2l": d2l, "d2l.torch": d2l.torch})
torch.manual_seed(0); random.seed(0); np.random.seed(0)
if module == "torch" and len(sys.argv) > 4:
    torch.set_num_threads(int(sys.argv[4]))
source = open(path).read()
scope = {"__name__": "__main__", "__file__": path}
exec(compile(source, name, "exec"), scope)
for key, fn in list(scope.items()):
    if key.startswith("test_") and callable(fn):
        fn()
        print(key, "passed")
# the program's tensors at the end, and their gradients, so that programs which print
# little are compared too
for key, value in sorted(scope.items()):
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        flat = value.detach().reshape(-1)[:64].tolist()
        grad = value.grad.reshape(-1)[:64].tolist() if value.grad is not None else None
        print("[end]", key, tuple(value.shape), flat, "grad", grad)
"""


def swap_imports(source: str) -> str:
    """The program with its PyTorch imports pointed at symgrad.runtime (nothing else)."""
    for pattern, repl in _SWAPS:
        source = re.sub(pattern, repl, source, flags=re.M)
    return source


def run(path: Path, on: str, timeout=600, threads=None) -> dict:
    """Run one program on "torch" or "symgrad" in a child process and a scratch folder
    (PyTorch with ``threads`` intra-op threads when given)."""
    source = path.read_text()
    if on == "symgrad":
        source = swap_imports(source)
    with tempfile.TemporaryDirectory() as work:
        program = Path(work) / path.name
        program.write_text(source)
        env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=os.pathsep.join(
            [str(path.parent / "lib"), os.environ.get("PYTHONPATH", "")]))
        module = "symgrad.runtime" if on == "symgrad" else "torch"
        try:
            extra = [str(threads)] if threads else []
            done = subprocess.run([sys.executable, "-c", _RUNNER, path.name, str(program),
                                   module, *extra], cwd=work, env=env, capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"ok": False, "out": "", "error": f"timed out after {timeout} s"}
    error = done.stderr.strip().splitlines()[-1] if done.returncode else ""
    return {"ok": done.returncode == 0, "out": done.stdout, "error": error}


_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?|nan|inf")


_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")


def _numbers(line):
    return [float(v) for v in _NUMBER.findall(_ADDRESS.sub("<address>", line))]


def _text(line):
    return _NUMBER.sub("#", _ADDRESS.sub("<address>", line))


def compare(expected: str, again: str, got: str, rtol: float) -> str | None:
    """None when ``got`` agrees with PyTorch's output ``expected``, else the first
    difference.  ``again`` is PyTorch's output from a second run with another thread
    count: lines whose text differs between the two (addresses, ids) are not compared,
    and a number may differ from PyTorch's by ``rtol`` of the largest number on its line
    plus 4× what PyTorch's own two runs differ by (its float32 sums depend on how its
    kernels split the work, which matters once training reaches rounding noise).
    ``rtol`` is relative to each number, with a floor of 1e-3 of the largest number on
    its line (a loss printed beside its step number)."""
    a_lines, r_lines, b_lines = (t.splitlines() for t in (expected, again, got))
    if len(a_lines) != len(b_lines):
        return f"{len(b_lines)} lines printed, PyTorch printed {len(a_lines)}"
    if len(r_lines) != len(a_lines):
        r_lines = a_lines
    # a program that prints its results is judged on them; its final tensors (the
    # "[end]" lines) count only for notebook-style programs that print little
    judged_by_prints = sum(1 for line in a_lines
                           if _numbers(line) and not line.startswith("[end]")) >= 3
    for k, (a, r, b) in enumerate(zip(a_lines, r_lines, b_lines)):
        if _text(a) != _text(r):
            continue
        na, nr, nb = _numbers(a), _numbers(r), _numbers(b)
        if _text(a) != _text(b) or len(na) != len(nb):
            return f"line {k + 1}: {b!r} vs PyTorch's {a!r}"
        if a.startswith("[end]") and judged_by_prints:
            continue
        scale = max([abs(v) for v in na if math.isfinite(v)] + [1e-30])
        for x, x2, y in zip(na, nr, nb):
            if x == y or (math.isnan(x) and math.isnan(y)):
                continue
            noise = abs(x - x2) if math.isfinite(x2) else 0.0
            if not (math.isfinite(x) and math.isfinite(y)) or \
                    abs(x - y) > rtol * max(abs(x), 1e-3 * scale) + 4 * noise:
                return f"line {k + 1}: {y} vs PyTorch's {x} ({b!r} vs {a!r})"
    return None


def tolerance(source: str) -> float:
    return 1e-10 if re.search(r"float64|double|DoubleTensor", source) else 1e-3


def check(path: Path) -> tuple[bool, str]:
    """(agrees, what happened) for one program.  A program that raises on PyTorch
    agrees when symgrad raises the same exception after the same output."""
    reference, again = run(path, "torch"), run(path, "torch", threads=1)
    mine = run(path, "symgrad")
    if not reference["ok"]:
        kind = reference["error"].split(":")[0]
        if not mine["ok"] and mine["error"].split(":")[0] == kind and compare(
                reference["out"], again["out"], mine["out"], 1e-4) is None:
            return True, f"raises {kind} as PyTorch does"
        return False, f"PyTorch raises {reference['error']}; symgrad: " \
            f"{mine['error'] or 'no error'}"
    if not mine["ok"]:
        return False, f"stops on symgrad: {mine['error']}"
    diff = compare(reference["out"], again["out"], mine["out"], tolerance(path.read_text()))
    return diff is None, diff or "agrees"


def main(argv):
    folder = Path(argv[0])
    names = set(argv[1:])
    results = {}
    for path in sorted(folder.glob("*.py")):
        if names and path.stem not in names:
            continue
        ok, what = check(path)
        results[path.name] = {"agrees": ok, "detail": what}
        print(f"{'AGREES ' if ok else 'DIFFERS'} {path.name}: {what}", flush=True)
    agree = sum(r["agrees"] for r in results.values())
    print(f"\n{agree} of {len(results)} programs agree with PyTorch")
    (folder / "results.json").write_text(json.dumps(results, indent=1))
    return 0 if agree == len(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
