"""What the compiler derived, for people: Jacobian/adjoint reports and graph pictures.

``jacobian_report(g, of, at)`` lists every edge's local Jacobian ``J_{j→i}``
(symbolic, numeric, and as a dense matrix for small tensors) and every adjoint
equation ``P_i = Σ_j P_j·J_{i→j}`` in reverse topological order, as document
002 lays them out; it prints as text, LaTeX or JSON and renders itself in
Jupyter.  ``to_dot`` draws the forward or the reverse graph.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from . import ops
from .autodiff import LinearMap, adjoint_table
from .graph import Expr, Graph, ancestors

DENSE_LIMIT = 64      # largest output or operand size whose dense Jacobian is shown


@dataclass
class Edge:
    source: Expr
    target: Expr
    jacobian: object                 # sympy expression (diagonal entry) or LinearMap
    structure: str                   # "scalar" | "diagonal" | "broadcast" | "linear"
    value: object = None             # numbers of the symbolic entry, when values are given
    dense: object = None             # the full matrix ∂target/∂source, for small shapes

    def symbolic(self) -> str:
        if self.structure == "diagonal":
            return f"diag({self.jacobian})"
        if self.structure == "broadcast":
            return f"diag({self.jacobian}) ∘ broadcast"
        return str(self.jacobian)


@dataclass
class Report:
    edges: list = field(default_factory=list)
    adjoints: list = field(default_factory=list)
    names: dict = field(default_factory=dict)

    def name(self, e: Expr) -> str:
        return self.names.get(e.id, e.name)

    # ---- formats ------------------------------------------------------------------
    def text(self) -> str:
        lines = ["Local Jacobians J_{j→i} = ∂u_i/∂u_j:"]
        for e in self.edges:
            line = f"  J_{{{self.name(e.source)}→{self.name(e.target)}}} = {e.symbolic()}"
            if e.value is not None:
                line += f" = {_fmt(e.value)}"
            lines.append(line)
            if e.dense is not None:
                rows = np.array2string(np.asarray(e.dense), precision=4).splitlines()
                lines += ["      " + r for r in rows]
        lines.append("Adjoints P_i = Σ_j P_j·J_{i→j}, in reverse topological order:")
        lines += [f"  {row}" for row in self.adjoints]
        return "\n".join(lines)

    __str__ = text

    def latex(self) -> str:
        """One ``align``-ready line per J and per P, in sympy's LaTeX."""
        lines = []
        for e in self.edges:
            lhs = rf"J_{{{_tex_name(self.name(e.source))} \to {_tex_name(self.name(e.target))}}}"
            if isinstance(e.jacobian, LinearMap):
                rhs = r"\text{" + e.jacobian.text.replace("·", r"\cdot ") + "}"
            else:
                rhs = sp.latex(e.jacobian, mul_symbol="dot")
                if e.structure in ("diagonal", "broadcast"):
                    rhs = rf"\operatorname{{diag}}\left({rhs}\right)"
            lines.append(f"{lhs} = {rhs}")
        for row in self.adjoints:
            rhs = sp.latex(_adjoint_expr(row), mul_symbol="dot")
            lines.append(f"{_tex_adjoint(row.name)} = {rhs}")
        return " \\\\\n".join(lines)

    def _repr_latex_(self):
        return "$$\\begin{aligned}" + self.latex().replace(" = ", " &= ") + "\\end{aligned}$$"

    def as_dict(self) -> dict:
        return {
            "edges": [{"edge": [self.name(e.source), self.name(e.target)],
                       "J": e.symbolic(), "structure": e.structure,
                       "srepr": None if isinstance(e.jacobian, LinearMap) else sp.srepr(e.jacobian),
                       **({"value": np.asarray(e.value).tolist()} if e.value is not None else {}),
                       **({"dense": np.asarray(e.dense).tolist()} if e.dense is not None else {})}
                      for e in self.edges],
            "adjoints": [{"node": self.name(r.node), "P": r.symbolic(), "expanded": r.expanded(),
                          **({"value": np.asarray(r.value).tolist()} if r.value is not None
                             else {})} for r in self.adjoints],
        }

    def json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, ensure_ascii=False)


def _fmt(v):
    a = np.asarray(v)
    return f"{a.item():g}" if a.ndim == 0 else np.array2string(a, precision=4)


def _tex_name(name: str) -> str:
    if name.startswith("u") and name[1:].isdigit():
        return f"u_{{{name[1:]}}}"
    return sp.latex(sp.Symbol(name))


def _tex_adjoint(name: str) -> str:
    return f"P_{{{name[1:]}}}" if name[1:].isdigit() else sp.latex(sp.Symbol(name))


def _adjoint_expr(row):
    """The adjoint equation's right side as sympy (P symbols times J)."""
    if not row.terms:
        return sp.Symbol("v")
    total = sp.S.Zero
    for consumer, j in row.terms:
        p = sp.Symbol(f"P_{{{consumer.name[1:]}}}" if consumer.name[1:].isdigit()
                      else f"P_{consumer.name}")
        total += p * (sp.Symbol(r"\mathcal{L}") if isinstance(j, LinearMap) else j)
    return total


def _structure(source: Expr, target: Expr) -> str:
    if target.op in ops.STRUCTURED:
        return "linear"
    if target.shape == ():
        return "scalar"
    return "diagonal" if source.shape == target.shape else "broadcast"


def _dense(g: Graph, source: Expr, target: Expr, entry, values) -> np.ndarray | None:
    """∂target/∂source as a (target.size × source.size) matrix, for small shapes."""
    n_out, n_in = target.size, source.size
    if n_out > DENSE_LIMIT or n_in > DENSE_LIMIT or n_out * n_in == 1:
        return None
    if target.op in ops.ELEMENTWISE:
        index = np.broadcast_to(np.arange(n_in).reshape(source.shape), target.shape).ravel()
        dense = np.zeros((n_out, n_in))
        np.add.at(dense, (np.arange(n_out), index),
                  np.broadcast_to(np.asarray(entry, float), target.shape).ravel())
        return dense
    # a structured operator is linear in each operand: its columns are op(e_k)
    args = [np.asarray(values[a.id], float) for a in target.args]
    slot = [a.id for a in target.args].index(source.id)
    columns = []
    for k in range(n_in):
        basis = np.zeros(n_in)
        basis[k] = 1
        trial = list(args)
        trial[slot] = basis.reshape(source.shape)
        columns.append(np.ravel(ops.evaluate(target.op, trial, target.params, target.shape,
                                             np.float64)))
    return np.array(columns).T


def jacobian_report(g: Graph, of, at=None, seed=None, names=None) -> Report:
    """Every ``J`` on the edges feeding ``of`` and every adjoint ``P``, optionally at values."""
    if seed is None and of.shape != ():
        seed = 1.0   # a tensor output is seeded with ones, as document 000's v = [1, 1, 1]
    rows = adjoint_table(g, of, None, at, seed)
    report = Report(adjoints=rows, names=dict(names or {}))
    for row in rows:
        for consumer, j in row.terms:
            report.edges.append(Edge(row.node, consumer, j, _structure(row.node, consumer)))
    if at is not None:
        # the nodes' values and every elementwise J (made a node of a copy: the user's graph
        # stays as it was) in one evaluation pass; a pass per edge was quadratic
        work = g.copy()
        ids = sorted(r.node.id for r in rows)
        elementwise = [e for e in report.edges if not isinstance(e.jacobian, LinearMap)]
        jexprs = [work.local_jacobian_expr(Expr(work, e.source.id), Expr(work, e.target.id))
                  for e in elementwise]
        computed = work.evaluate([Expr(work, i) for i in ids] + jexprs, at)
        values = dict(zip(ids, computed))
        for edge, value in zip(elementwise, computed[len(ids):]):
            edge.value = value
        for edge in report.edges:
            edge.dense = _dense(g, edge.source, edge.target, edge.value, values) \
                if edge.target.shape != () or edge.source.shape != () else None
    return report


# ---- pictures -----------------------------------------------------------------------------
def _label(e: Expr, names) -> str:
    name = names.get(e.id, e.name)
    if e.op == "input":
        return name
    if e.op == "const":
        return f"{e.params[0]:g}"
    return f"{name} = {e.op}"


def to_dot(g: Graph, outputs, at=None, reverse=False, names=None) -> str:
    """Graphviz DOT of the forward graph (u_i, operator, value) or of the reverse graph
    (adjoints P_i, with J_{i→j} on the edges, arrows from consumer back to operand)."""
    names = dict(names or {})
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    need = ancestors(g, [o.id for o in outputs])
    values = {}
    if at is not None:
        ids = sorted(need)
        values = dict(zip(ids, g.evaluate([Expr(g, i) for i in ids], at)))
    adjoint_values = {}
    if reverse and at is not None:
        for row in adjoint_table(g, outputs[0], None, at,
                                 None if outputs[0].shape == () else 1.0):
            adjoint_values[row.node.id] = row.value
    lines = ["digraph symgrad {", '  rankdir=LR;', '  node [shape=box, fontname="Helvetica"];']
    for i in sorted(need):
        e = Expr(g, i)
        if reverse and e.op == "const":
            continue
        label = _label(e, names) if not reverse else \
            "P" + (e.name[1:] if e.name[1:].isdigit() else "_" + names.get(i, e.name))
        if reverse and i in adjoint_values:
            label += f"\\n= {_fmt(adjoint_values[i])}"
        elif not reverse and i in values:
            label += f"\\n= {_fmt(values[i])}"
        shape = "ellipse" if e.op in ("input", "const") else "box"
        lines.append(f'  n{i} [label="{_escape(label)}", shape={shape}];')
    for i in sorted(need):
        e = Expr(g, i)
        for a in dict.fromkeys(e.args):
            if reverse:
                if a.op == "const":
                    continue
                from .autodiff import local_jacobian
                j = local_jacobian(g, a, e)
                lines.append(f'  n{i} -> n{a.id} [label="{_escape("J = " + str(j))}"];')
            else:
                lines.append(f"  n{a.id} -> n{i};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _escape(text: str) -> str:
    return text.replace("\\n", "\0").replace("\\", "\\\\").replace('"', '\\"') \
        .replace("\0", "\\n").replace("\n", "\\n")


class GraphvizMissing(RuntimeError):
    """Graphviz's ``dot`` program is needed for SVG and PNG pictures."""


def render(dot_source: str, fmt: str) -> bytes:
    """DOT → ``svg`` or ``png`` bytes through Graphviz's ``dot`` program."""
    if fmt == "dot":
        return dot_source.encode()
    if fmt not in ("svg", "png"):
        raise ValueError(f"picture format must be dot, svg or png, got {fmt!r}")
    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizMissing(
            "Graphviz's dot program is not installed, so only DOT output is available: "
            "install it (Debian/Ubuntu: apt-get install graphviz; macOS: brew install "
            "graphviz) or write --out graph.dot")
    done = subprocess.run([exe, f"-T{fmt}"], input=dot_source.encode(), capture_output=True,
                          timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"dot failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout
