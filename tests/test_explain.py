"""Issue 4: Jacobian/adjoint dumps, pictures, kernels and IR, ahead-of-time export."""
import json
import shutil
import struct
import subprocess
import zlib
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import sympy as sp

import symgrad.compiler as C
from symgrad.compiler import Graph
from symgrad.compiler.explain import jacobian_report, render, to_dot
from symgrad.runtime.cli import main

DOC002 = "u3 = u1 + u2; u4 = u2*u3"


def doc002():
    g = Graph()
    u1, u2 = g.input("u1"), g.input("u2")
    u3 = u1 + u2
    return g, u2 * u3


def test_report_of_002_has_J_and_P_with_values():
    g, u4 = doc002()
    report = jacobian_report(g, u4, at={"u1": 2.0, "u2": 3.0})
    j = {(e.source.name, e.target.name): (str(e.jacobian), float(e.value)) for e in report.edges}
    assert j == {("u1", "u3"): ("1", 1.0), ("u2", "u3"): ("1", 1.0),
                 ("u2", "u4"): ("u3", 5.0), ("u3", "u4"): ("u2", 3.0)}
    assert [float(r.value) for r in report.adjoints] == [1.0, 3.0, 8.0, 3.0]


def test_latex_parses_back_to_the_same_expressions():
    from sympy.parsing.latex import parse_latex_lark
    g, u4 = doc002()
    lines = jacobian_report(g, u4).latex().split(" \\\\\n")
    parsed = {}
    for line in lines:
        lhs, rhs = line.split(" = ")
        if rhs != r"\text{seed}":
            parsed[lhs] = parse_latex_lark(rhs)
    assert lines[-4:] == [r"P_{4} = \text{seed}", r"P_{3} = P_{4} \cdot u_{2}",
                          r"P_{2} = P_{4} \cdot u_{3} + P_{3}", r"P_{1} = P_{3}"]
    u = {k: sp.Symbol(f"u_{{{k}}}") for k in (1, 2, 3)}
    assert parsed["u_{3}"] == u[1] + u[2] and parsed["u_{4}"] == u[2] * u[3]
    assert parsed[r"J_{2 \to 4}"] == u[3]
    assert parsed[r"J_{3 \to 4}"] == u[2]
    p = {k: sp.Symbol(f"P_{{{k}}}") for k in (3, 4)}
    assert sp.simplify(parsed["P_{2}"] - (p[4] * u[3] + p[3])) == 0


def test_one_notation_and_a_legend_with_forward_values():
    # document 002's table: u3 = 5, u4 = 15, edges J_{3→4} as the adjoint rows write them
    g, u4 = doc002()
    text = jacobian_report(g, u4, at={"u1": 2.0, "u2": 3.0}).text()
    assert "  u3 = u1 + u2 = 5\n" in text and "  u4 = u2·u3 = 15\n" in text
    assert "  J_{3→4} = u2 = 3\n" in text and "J_{u3" not in text
    assert "  P2 = P4·J_{2→4} + P3·J_{2→3} = P4·(u3) + P3 = 8" in text
    # numbers as written: x**2 is "x^2" and "2·x", never 2.0*x**1.0 or 4.00000000000000
    h = Graph()
    x = h.input("x")
    report = jacobian_report(h, (x**2 * 4.0 + 0.1 * x).named("y"), at={"x": 1.5})
    text = report.text()
    assert "x^2" in text and "2·x" in text and "0.1" in text
    assert "**" not in text and "2.0" not in text and "0000" not in text


def test_tensor_edges_are_diagonal_with_dense_matrices():
    g = Graph()
    x, y = g.input("x", (3,)), g.input("y", (3,))
    z = x * y
    report = jacobian_report(g, z, at={"x": [0.0, 2.0, 8.0], "y": [5.0, 1.0, 7.0]})
    edge = next(e for e in report.edges if e.source.name == "x")
    assert edge.symbolic() == "diag(y)"
    np.testing.assert_array_equal(edge.dense, np.diag([5.0, 1.0, 7.0]))
    assert "diag(y)" in report.text() and "[[5. 0. 0.]" in report.text()


def test_structured_edges_name_their_operands_and_match_the_numeric_jacobian():
    g = Graph()
    a, b = g.input("a", (2, 3)), g.input("b", (3, 2))
    c = (a @ b).named("c")
    A, B = np.arange(6.0).reshape(2, 3), np.arange(6.0).reshape(3, 2) - 2
    report = jacobian_report(g, c, at={"a": A, "b": B})
    edges = {e.source.name: e for e in report.edges}
    assert str(edges["a"].jacobian) == "P ↦ P @ bᵀ"
    assert str(edges["b"].jacobian) == "P ↦ aᵀ @ P"
    text = report.text()
    assert "c = a @ b" in text and "P_a = P_c·J_{a→c} = P_c @ bᵀ" in text
    f = g.compile([c], [a, b])
    np.testing.assert_allclose(edges["a"].dense, f.jacobian(A, B)[0].reshape(4, 6))


def test_matrix_vector_product_reads_as_written_without_internal_reshapes():
    g = Graph()
    W, x = g.input("W", (3, 2)), g.input("x", (2,))
    y = (W @ x).named("y")
    Wv, xv = np.arange(6.0).reshape(3, 2), np.array([0.5, -1.0])
    report = jacobian_report(g, y, at={"W": Wv, "x": xv})
    assert [r.node.name for r in report.nodes] == ["W", "x", "y"]
    assert "reshape" not in report.text() + report.latex()
    edges = {e.source.name: e for e in report.edges}
    assert [str(edges["x"].jacobian), str(edges["W"].jacobian)] == \
        ["P ↦ Wᵀ @ P", "P ↦ outer(P, x)"]
    f = g.compile([y], [W, x])
    jw, jx = f.jacobian(Wv, xv)
    np.testing.assert_allclose(edges["x"].dense, jx.reshape(3, 2))
    np.testing.assert_allclose(edges["W"].dense, jw.reshape(3, 6))
    rows = {r.name: r.value for r in report.adjoints}
    np.testing.assert_allclose(rows["P_x"], Wv.T @ np.ones(3))
    np.testing.assert_allclose(rows["P_W"], np.outer(np.ones(3), xv))


def test_large_tensors_are_summarised_unless_full():
    g = Graph()
    x = g.input("x", (64, 64))
    y = (x * x).sum().named("y")
    X = np.linspace(-1, 1, 64 * 64).reshape(64, 64)
    short = jacobian_report(g, y, at={"x": X}).text()
    assert "[64×64: -1, -0.9995, -0.999, … ; min -1, max 1, ‖·‖ " in short
    assert max(map(len, short.splitlines())) < 200 and len(short) < 3000
    full = jacobian_report(g, y, at={"x": X}, full=True).text()
    assert len(full) > 64 * 64 * 4 and "-9.9951e-01" in full


def test_long_adjoint_rows_are_shortened_unless_full():
    g = Graph()
    x = g.input("x")
    y = sum((x * float(k + 2) for k in range(40)), g.const(0.0)).named("y")
    short = jacobian_report(g, y).text()
    row = next(line for line in short.splitlines() if line.startswith("  P_x ="))
    assert "… (" in row and "more)" in row and len(row) < 300
    full = jacobian_report(g, y, full=True).text()
    assert full.count("P_x =") == 1 and "…" not in full.split("P_x =")[1]


def _katex():
    """A KaTeX to check LaTeX with (installed from npm once per machine), or None."""
    import os
    import pathlib
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        return None
    home = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache"))
    prefix = home / "symgrad-tests" / "katex"
    if not (prefix / "node_modules" / "katex").exists():
        done = subprocess.run([npm, "install", "--silent", "--no-audit", "--no-fund",
                               "--prefix", str(prefix), "katex@0.16"], capture_output=True,
                              timeout=300)
        if done.returncode != 0:
            return None
    return node, prefix / "node_modules" / "katex"


KATEX_CHECK = r"""
const katex = require(process.argv[1]);
const formulas = JSON.parse(require("fs").readFileSync(0, "utf8"));
const errors = [];
for (const f of formulas) {
  try { katex.renderToString(f, {throwOnError: true, strict: "error", displayMode: true}); }
  catch (e) { errors.push(f + "\n    " + e.message); }
}
console.log(JSON.stringify(errors));
"""


def _operator_table_reports():
    """One report per operator of the table (elementwise and structured), all formats."""
    from symgrad.compiler import ops
    reports = []
    for name, entry in ops.ELEMENTWISE.items():
        g = Graph()
        x, y, c = g.input("x", (3,)), g.input("y_1", (3,)), g.input("gamma", (3,))
        params = ((2, 3),) if name == "broadcast" else ()
        out = g.apply(name, *[x, y, c][:entry.arity], params=params)
        reports.append(jacobian_report(g, out.sum().named("L")))
    g = Graph()
    W, v, M = g.input("W", (3, 2)), g.input("v", (2,)), g.input("M", (2, 3, 4))
    z = (W @ v).sum() + (v @ W.T).sum() + (v @ v) + M.transpose((2, 0, 1)).sum(axes=(0, 1)) \
        .sum() + M.reshape(6, 4).sum(axes=0, keepdims=True).sum() + (W.T @ W).mean() \
        + M.max(axis=1).sum() + W.min()
    import numpy as np
    from symgrad.compiler import concatenate, cumsum, pad, prod
    z = z + (W[1:, ::-1] * W[0, None]).sum() + g.embed(v, (4,), (slice(1, 3),)).sum() \
        + concatenate([W, W[:1]], 0).sum() + pad(v, (1, 2), constant_values=0.5).sum() \
        + W[np.array([0, 2, 2])].sum() + g.scatter_add(v, np.array([1, 1]), (3,)).sum() \
        + prod(W, axis=0).sum() + cumsum(M, 1).sum() \
        + C.scan(lambda c, x: (C.sin(c) * x, c.sum()), v, W)[1].sum()
    used = {g.nx.nodes[i]["op"] for i in g.nx}
    assert set(ops.STRUCTURED) <= used, set(ops.STRUCTURED) - used
    reports.append(jacobian_report(g, z.named("z")))
    return reports


def test_latex_of_every_operator_renders_with_katex():
    found = _katex()
    if found is None:
        pytest.skip("KaTeX needs node and npm (both on this project's CI machines)")
    node, katex = found
    formulas = []
    for report in _operator_table_reports():
        formulas += report.latex().split(" \\\\\n")
        formulas.append(report._repr_latex_().strip("$"))
    assert len(formulas) > 200
    done = subprocess.run([node, "-e", KATEX_CHECK, str(katex)], input=json.dumps(formulas),
                          capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(done.stdout) == []


def test_katex_check_catches_invalid_latex():
    found = _katex()
    if found is None:
        pytest.skip("KaTeX needs node and npm")
    node, katex = found
    bad = [r"\text{P_a = broadcast(P_out)}", r"\left(x"]
    done = subprocess.run([node, "-e", KATEX_CHECK, str(katex)], input=json.dumps(bad),
                          capture_output=True, text=True, timeout=120, check=True)
    assert len(json.loads(done.stdout)) == 2


def test_cli_formats(capsys):
    assert main(["jacobian", DOC002, "--at", "u1=2,u2=3", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [a["value"] for a in data["adjoints"]] == [1, 3, 8, 3]
    assert [(n["node"], n["definition"], n["value"]) for n in data["nodes"]] == \
        [("u1", "input", 2), ("u2", "input", 3), ("u3", "u1 + u2", 5), ("u4", "u2·u3", 15)]
    assert sp.sympify(eval(next(e for e in data["edges"] if e["edge"] == ["u2", "u4"])["srepr"],
                           vars(sp))) == sp.Symbol("u3", real=True)
    assert main(["jacobian", "z = x*y", "--shape", "x=3", "--shape", "y=3",
                 "--at", "x=[0,2,8],y=[5,1,7]"]) == 0
    out = capsys.readouterr().out
    assert "J_{x→z} = diag(y) = [5., 1., 7.]" in out and "[0. 0. 7.]]" in out
    assert "z = x·y   [shape (3,)] = [ 0., 2., 56.]" in out
    big = ",".join("0.5" for _ in range(100))
    assert main(["jacobian", "z = sin(x).sum()", "--shape", "x=100", "--at", f"x=[{big}]"]) == 0
    short = capsys.readouterr().out
    assert "[100: 0.4794, 0.4794, 0.4794, …" in short
    assert main(["jacobian", "z = sin(x).sum()", "--shape", "x=100", "--at", f"x=[{big}]",
                 "--full"]) == 0
    assert len(capsys.readouterr().out) > len(short) + 1000


def test_dot_of_002_forward_and_reverse():
    g, u4 = doc002()
    forward = to_dot(g, [u4], at={"u1": 2.0, "u2": 3.0})
    assert forward.count("->") == 4 and "u4 = mul\\n= 15" in forward
    reverse = to_dot(g, [u4], at={"u1": 2.0, "u2": 3.0}, reverse=True)
    assert 'label="J_{2→4} = u3"' in reverse and "P2\\n= 8" in reverse


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is installed by .ci/run")
def test_svg_of_002_is_valid_with_every_node(tmp_path):
    out = tmp_path / "graph.svg"
    assert main(["graph", DOC002, "--at", "u1=2,u2=3", "--out", str(out)]) == 0
    root = ET.parse(out).getroot()
    assert root.tag.endswith("svg")
    titles = {t.text for t in root.iter("{http://www.w3.org/2000/svg}title")}
    assert {"n1", "n2", "n3", "n4"} <= titles
    g, u4 = doc002()
    assert render(to_dot(g, [u4]), "png")[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_graphviz_says_how_to_install(monkeypatch):
    from symgrad.compiler import explain
    monkeypatch.setattr(explain.shutil, "which", lambda name: None)
    with pytest.raises(explain.GraphvizMissing, match="apt-get install graphviz"):
        render("digraph {}", "svg")


def test_compile_emits_sympy_llvm_and_asm(capsys):
    assert main(["compile", "z = sin(x)*y", "--wrt", "x,y", "--emit", "sympy"]) == 0
    assert "cos(x1)" in capsys.readouterr().out
    assert main(["compile", "z = sin(x)*y", "--wrt", "x,y", "--emit", "llvm"]) == 0
    assert "@\"sin\"" in capsys.readouterr().out
    assert main(["compile", "z = sin(x)*y", "--wrt", "x,y", "--emit", "llvm-opt"]) == 0
    assert "define" in capsys.readouterr().out
    assert main(["compile", "z = sin(x)*y", "--wrt", "x,y", "--emit", "asm"]) == 0
    assert "ret" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="needs a C compiler")
def test_exported_library_is_called_from_c(tmp_path):
    lib = tmp_path / "libz.so"
    assert main(["compile", "z = sin(x)*y", "--shape", "x=3", "--shape", "y=3", "--wrt", "x,y",
                 "--emit", "shared", "-o", str(lib), "--name", "zfn"]) == 0
    (tmp_path / "main.c").write_text(r'''
#include <stdio.h>
#include "libz.h"
int main(void) {
    double x[3] = {0.1, 0.5, 2.0}, y[3] = {5, 1, 7}, seed[3] = {1, 0.5, 0.25};
    double z[3], gx[3], gy[3];
    void *table[] = {x, y, seed, z, gx, gy};
    if (zfn_vjp(table) != 0) return 1;
    for (int i = 0; i < 3; i++) printf("%.17g %.17g %.17g\n", z[i], gx[i], gy[i]);
    return 0;
}''')
    cc = shutil.which("cc") or shutil.which("gcc")
    exe = tmp_path / "main"
    subprocess.run([cc, str(tmp_path / "main.c"), str(lib), f"-Wl,-rpath,{tmp_path}",
                    "-o", str(exe)], check=True)
    rows = np.array([[float(v) for v in line.split()]
                     for line in subprocess.run([str(exe)], capture_output=True, text=True,
                                                check=True).stdout.splitlines()])
    g = Graph()
    x, y = g.input("x", (3,)), g.input("y", (3,))
    from symgrad.compiler import sin
    f = g.compile([sin(x) * y], [x, y])
    z, (gx, gy) = f.vjp([0.1, 0.5, 2.0], [5.0, 1.0, 7.0], seed=[1, 0.5, 0.25])
    np.testing.assert_allclose(rows, np.stack([z, gx, gy], axis=1), rtol=1e-15)


def test_a_5000_node_report_with_values_is_right_and_leaves_the_graph_alone():
    # (its time is measured by hand: 1.1 s here, 29 s when each edge was evaluated alone)
    from symgrad.compiler import Graph, sin, tanh
    from symgrad.compiler.explain import jacobian_report
    g = Graph()
    x, y = g.input("x"), g.input("y")
    e = x
    for k in range(1430):
        e = sin(e) * y + (e if k % 2 else tanh(e))
    size = len(g)
    assert size >= 5000
    report = jacobian_report(g, e, at={"x": 0.3, "y": 0.5})
    assert len(g) == size
    _, (dx, dy) = g.compile([e], [x, y]).vjp(0.3, 0.5)
    by_name = {row.name: row.value for row in report.adjoints}
    # the report evaluates with numpy, whose sin and tanh round differently from libmvec's
    np.testing.assert_allclose([by_name["P_x"], by_name["P_y"]], [dx, dy], rtol=1e-12,
                               atol=1e-300)


def test_cli_full_and_hessian_assemble_the_matrices(capsys, tmp_path):
    assert main(["jacobian", DOC002, "--at", "u1=2,u2=3", "--full"]) == 0
    out = capsys.readouterr().out
    # document 002: ∂u4/∂(u1, u2) = [u2, u1 + 2·u2] = [3, 8]
    assert "Jacobian ∂u4/∂x, columns (u1, u2):" in out
    assert "[u₂  u₁ + 2⋅u₂]" in out and "[[3. 8.]]" in out
    assert main(["jacobian", "f = x*x*y + sin(y)", "--at", "x=1,y=2", "--hessian"]) == 0
    out = capsys.readouterr().out
    assert "⎡2⋅y    2⋅x  ⎤" in out and "⎣2⋅x  -sin(y)⎦" in out
    assert "[[ 4.        2.      ]" in out and "[ 2.       -0.909297]]" in out
    # a tensor output: values and the banded pattern, drawn as a PNG of 12×10 cells
    png = tmp_path / "pattern.png"
    assert main(["jacobian", "d = u[2:] - 2*u[1:-1] + u[:-2]", "--shape", "u=12", "--full",
                 "--out", str(png)]) == 0
    out = capsys.readouterr().out
    assert "sparsity: 30 of 120 entries can be nonzero" in out
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (12 * 16, 10 * 16)     # 16 pixels a cell
    pixels = np.frombuffer(zlib.decompress(data[data.index(b"IDAT") + 4:-16]), np.uint8)
    rows = pixels.reshape(height, width + 1)[:, 1:]
    assert rows[0, 0] == 0 and rows[0, 3 * 16] == 255 and rows[9 * 16, 11 * 16] == 0


@pytest.mark.parametrize("argv, message", [
    (["f = x*y", "--out", "p.svg", "--hessian"], "the sparsity pattern is drawn as a .png"),
    (["f = x*y", "--out", "p.png"], "give one of them"),
    (["f = x*y", "--out", "/nonexistent-dir/p.png", "--hessian"], "no such directory"),
    (["z = x*y", "--shape", "x=3", "--hessian"], "the Hessian is of one scalar output"),
    (["a = x*y", "--of", "a,q,r"], "q, r are not names in the expressions (x, y, a)"),
    (["a = x*y", "--of", ","], "give a name, or several: y1,y2"),
])
def test_cli_hessian_and_pattern_errors_are_one_line(capsys, argv, message):
    assert main(["jacobian", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


SEVERAL = "y1 = sin(x1)*x2; y2 = x1*x2**2 + exp(x3); y3 = x3*x1"


def test_the_jacobian_of_several_outputs_stacks_their_rows():
    """``assembled`` of three outputs: one row each, every input a column (y3 does not
    read x2: a structural zero), against torch.func.jacrev and central differences."""
    from symgrad.compiler.explain import assembled
    from symgrad.runtime.cli import parse_program
    from tests.oracle import torch
    g, names, _ = parse_program(SEVERAL, {})
    point = {"x1": 0.5, "x2": 2.0, "x3": -1.0}
    m = assembled(g, [names["y1"], names["y2"], names["y3"]], at=point)
    assert m.inputs == ["x1", "x2", "x3"]
    assert m.pattern.tolist() == [[True, True, False], [True, True, True], [True, False, True]]
    x1, x2, x3 = sp.symbols("x1 x2 x3", real=True)
    assert sp.simplify(m.symbolic - sp.Matrix([[x2 * sp.cos(x1), sp.sin(x1), 0],
                                               [x2 ** 2, 2 * x1 * x2, sp.exp(x3)],
                                               [x3, 0, x1]])) == sp.zeros(3, 3)
    t = torch()

    def rhs(v):
        return t.stack([t.sin(v[0]) * v[1], v[0] * v[1] ** 2 + t.exp(v[2]), v[2] * v[0]])
    at = t.tensor([0.5, 2.0, -1.0], dtype=t.float64)
    np.testing.assert_allclose(m.value, t.func.jacrev(rhs)(at).numpy(), rtol=1e-14)
    step, base = 1e-6, np.array([0.5, 2.0, -1.0])
    central = np.stack([(rhs(t.tensor(base + step * e)).numpy()
                         - rhs(t.tensor(base - step * e)).numpy()) / (2 * step)
                        for e in np.eye(3)], axis=1)
    np.testing.assert_allclose(m.value, central, rtol=1e-8, atol=1e-9)


def test_cli_of_several_outputs_reports_each_and_assembles_them(capsys):
    assert main(["jacobian", SEVERAL, "--of", "y1,y2,y3", "--full", "--hessian",
                 "--at", "x1=0.5,x2=2,x3=-1"]) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("━━━")] == \
        ["━━━ y1 ━━━", "━━━ y2 ━━━", "━━━ y3 ━━━"]
    assert "Jacobian ∂(y1, y2, y3)/∂x, columns (x1, x2, x3):" in out
    assert "sparsity: 7 of 9 entries can be nonzero" in out
    assert "[[ 1.755165  0.479426  0.      ]" in out and "[-1.        0.        0.5     ]]" in out
    # a Hessian per output: y2 = x1·x2² + exp(x3) at (0.5, 2, -1)
    assert "Hessian ∂²y2/∂x², columns (x1, x2, x3):" in out
    assert "[[0.       4.       0.      ]" in out and "[4.       1.       0.      ]" in out
    assert main(["jacobian", SEVERAL, "--of", "y1,y3", "--format", "json",
                 "--at", "x1=0.5,x2=2,x3=-1"]) == 0
    reports = json.loads(capsys.readouterr().out)
    assert list(reports) == ["y1", "y3"]
    assert {row["P"]: row["value"] for row in reports["y3"]["adjoints"]}["P_x1"] == -1.0
