"""The layers: backend ← compiler ← runtime, imports one way only (docs/architecture.md)."""
import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):       # at the top or inside a function: both count
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield ("." * node.level) + (node.module or "")


def test_no_compiler_module_imports_the_runtime():
    for path in (ROOT / "compiler").rglob("*.py"):
        for name in _imports(path):
            assert "runtime" not in name, f"{path.relative_to(ROOT)} imports {name}"


def test_the_backend_imports_only_llvmlite_numpy_and_the_standard_library():
    allowed = {"llvmlite", "numpy", "__future__"} | set(sys.stdlib_module_names)
    for path in (ROOT / "compiler" / "backend").rglob("*.py"):
        for name in _imports(path):
            if name.startswith(".") and not name.startswith(".."):
                continue                      # its own modules
            assert name.split(".")[0] in allowed, f"{path.relative_to(ROOT)} imports {name}"


def _fresh(code):
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_compiling_a_graph_loads_no_runtime_module():
    out = _fresh("import sys, symgrad.compiler as c; g=c.Graph(); x=g.input('x'); "
                 "f=c.Graph.compile(g, outputs=[c.sin(x)], wrt=[x]); print(f.vjp(0.0)); "
                 "print([m for m in sys.modules if m.startswith('symgrad.runtime')])")
    assert out.splitlines() == ["(0.0, (1.0,))", "[]"]


def test_every_public_backend_function_works_in_a_fresh_process():
    ir = 'define double @f(double %x) {\\n  %y = fmul double %x, %x\\n  ret double %y\\n}'
    out = _fresh("from symgrad.compiler.backend import jit\n"
                 f"ir = '{ir}'\n"
                 "print('mulsd' in jit.emit_assembly(ir) or 'vmulsd' in jit.emit_assembly(ir))\n"
                 "print('fmul' in jit.optimized(ir))\n"
                 "print(len(jit.emit_object(ir)) > 0, jit.target_machine() is not None)\n"
                 "import ctypes\n"
                 "loaded = jit.load(ir, ['f'])\n"
                 "f = ctypes.CFUNCTYPE(ctypes.c_double, ctypes.c_double)(loaded.addresses['f'])\n"
                 "print(f(3.0))")
    assert out.splitlines() == ["True", "True", "True True", "9.0"]


def test_tests_that_do_not_need_torch_run_without_it(tmp_path):
    env = {**__import__("os").environ, "SYMGRAD_TEST_WITHOUT_TORCH": "1",
           "SYMGRAD_CACHE_DIR": str(tmp_path)}        # a cold cache, as in a fresh run
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/compiler/test_graph.py", "tests/compiler/test_ops.py"],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    last = done.stdout.strip().splitlines()[-1]
    assert done.returncode == 0, done.stdout[-2000:]
    assert " passed" in last and " skipped" in last, last
    # the graph tests need no torch at all; the table's torch comparisons skip alone
    assert int(last.split(" passed")[0].split()[-1]) >= 15
