"""What the compiler derived, for people: Jacobian/adjoint reports and graph pictures.

``jacobian_report(g, of, at)`` lists the nodes ``u_i = f_i(…)`` (with their values when
``at`` is given), every edge's local Jacobian ``J_{j→i}`` (symbolic, numeric, and as a
dense matrix for small tensors) and every adjoint equation ``P_i = Σ_j P_j·J_{i→j}`` in
reverse topological order, as document 002 lays them out; it prints as text, LaTeX or JSON
and renders itself in Jupyter.  ``to_dot`` draws the forward or the reverse graph.

One notation throughout (:class:`Notation`): a node is ``u7`` or the user's name, an edge's
Jacobian ``J_{7→h}``, an adjoint ``P7`` or ``P_h``, the same in text and in LaTeX.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from . import ops
from .autodiff import (LinearMap, Notation, adjoint_table, display_number, format_value,
                       local_jacobian, relevant_nodes, show)
from .graph import Expr, Graph, ancestors

SUMMARY_LIMIT = 12    # a tensor with more entries prints as a summary (shape, entries, norm)
DENSE_LIMIT = 8       # dense Jacobians are printed up to this many rows and columns…
FULL_DENSE_LIMIT = 64  # …and up to this many with full=True
TERMS_LIMIT = 6       # an adjoint with more terms prints its first and last ones


@dataclass
class Node:
    """One forward node ``u_i = f_i(…)``, as the legend lists it."""
    node: Expr
    text: str                        # its definition: "u1 + u2", "W @ x", "input"
    value: object = None


@dataclass
class Edge:
    source: Expr
    target: Expr
    jacobian: object                 # sympy expression (diagonal entry) or LinearMap
    structure: str                   # "scalar" | "diagonal" | "broadcast" | "linear"
    paths: list = field(default_factory=list)   # the graph's nodes from source to
                                     # target: one node, or a 1-D matmul with its reshapes
    operands: tuple = ()             # a structured J's operands, as the user wrote them
    value: object = None             # numbers of the symbolic entry, when values are given
    dense: object = None             # the full matrix ∂target/∂source, for small shapes

    def symbolic(self) -> str:
        if isinstance(self.jacobian, LinearMap):
            return str(self.jacobian)
        if self.structure == "diagonal":
            return f"diag({show(self.jacobian)})"
        if self.structure == "broadcast":
            return f"diag({show(self.jacobian)}) ∘ broadcast"
        return show(self.jacobian)


@dataclass
class Row:
    """One adjoint equation ``P_i = Σ_j P_j·J_{i→j}``."""
    node: Expr
    name: str                        # "P3", "P_h"
    edges: list = field(default_factory=list)    # the edges leaving node i
    value: object = None


@dataclass
class Report:
    nodes: list = field(default_factory=list)
    edges: list = field(default_factory=list)
    adjoints: list = field(default_factory=list)
    notation: Notation = None
    full: bool = False               # print every entry, every term, every dense matrix
    shown: dict = field(default_factory=dict)    # 1-D matmuls shown as written (W @ x)
    loops: list = field(default_factory=list)    # (loop node, the report of its body)

    def name(self, e: Expr) -> str:
        return self.notation.label(e)

    # ---- text -------------------------------------------------------------------------
    def text(self) -> str:
        n = self.notation
        lines = ["Nodes u_i = f_i(…):"]
        for row in self.nodes:
            line = f"  {n.label(row.node)} = {row.text}"
            if row.node.shape != ():
                line += f"   [shape {row.node.shape}]"
            if row.value is not None:
                line += f" = {_fmt(row.value, self.full)}"
            lines.append(line)
        lines.append("Local Jacobians J_{j→i} = ∂u_i/∂u_j:")
        for e in self.edges:
            line = f"  {n.J(e.source, e.target)} = {e.symbolic()}"
            if e.value is not None and not e.jacobian.is_number:   # "1 = 1" says nothing
                line += f" = {_fmt(e.value, self.full)}"
            lines.append(line)
            if e.dense is not None:
                rows = np.array2string(np.asarray(e.dense), precision=4,
                                       threshold=sys.maxsize, max_line_width=200).splitlines()
                lines += ["      " + r for r in rows]
        lines.append("Adjoints P_i = Σ_j P_j·J_{i→j}, in reverse topological order:")
        for row in self.adjoints:
            text = f"  {row.name} = "
            if not row.edges:
                text += "seed"
            else:
                terms = self._terms(row)
                text += " + ".join(f"{n.P(e.target)}·{n.J(e.source, e.target)}"
                                   if e is not None else "…" for e in terms)
                text += " = " + " + ".join(_term_text(n, e) if e is not None else
                                           f"… ({len(row.edges) - len(terms) + 1} more)"
                                           for e in terms)
            if row.value is not None:
                text += f" = {_fmt(row.value, self.full)}"
            lines.append(text)
        for node, body in self.loops:
            lines += self._loop_text(node, body)
        return "\n".join(lines)

    def _loop_text(self, node, body) -> list:
        b = node.params[0]
        nc = len(b.carry)
        carry = ", ".join(body.notation.label(Expr(b.graph, i)) for i in b.carry)
        out = ", ".join(body.notation.label(Expr(b.graph, i)) for i in b.carry_out)
        head = [f"Loop {self.name(node)}: its body, once; run {b.length} times"
                f"{' backwards' if b.reverse else ''}, the carry ({carry}) entering each "
                f"step is ({out}) of the step before.",
                f"  Its reverse pass runs the other way: the carry leaving a step is "
                f"seeded with its row of P_{self.name(node)} plus the P of the carry "
                f"entering the next step{'' if nc else ' (no carry)'}."]
        return head + ["  " + line for line in body.text().splitlines()]

    __str__ = text

    def _terms(self, row) -> list:
        """The row's edges, or its first and last ones with None for the rest between."""
        if self.full or len(row.edges) <= TERMS_LIMIT:
            return row.edges
        return row.edges[:TERMS_LIMIT - 2] + [None, row.edges[-1]]

    # ---- LaTeX --------------------------------------------------------------------------
    def latex(self) -> str:
        """One ``align``-ready line per node definition, J and P, in LaTeX."""
        n = self.notation
        lines = [f"{n.node(row.node, True)} = {_definition(n, row.node, self.shown, True)}"
                 for row in self.nodes if row.node.op != "input"]
        for e in self.edges:
            if isinstance(e.jacobian, LinearMap):
                names = [n.node(a, True) for a in e.operands]
                rhs = rf"\left(P \mapsto {e.jacobian.apply('P', names, tex=True)}\right)"
            else:
                rhs = sp.latex(e.jacobian, mul_symbol="dot")
                if e.structure in ("diagonal", "broadcast"):
                    rhs = rf"\operatorname{{diag}}\left({rhs}\right)"
            lines.append(f"{n.J(e.source, e.target, True)} = {rhs}")
        for row in self.adjoints:
            if not row.edges:
                rhs = r"\text{seed}"
            else:
                terms = self._terms(row)
                rhs = " + ".join(_term_tex(n, e) if e is not None else r"\dots" for e in terms)
            lines.append(f"{n.P(row.node, True)} = {rhs}")
        return " \\\\\n".join(lines)

    def _repr_latex_(self):
        lines = self.latex().split("\n")
        return "$$\\begin{aligned}" + "\n".join(line.replace(" = ", " &= ", 1)
                                                 for line in lines) + "\\end{aligned}$$"

    # ---- JSON ---------------------------------------------------------------------------
    def as_dict(self) -> dict:
        n = self.notation
        return {
            "nodes": [{"node": n.label(r.node), "definition": r.text,
                       "shape": list(r.node.shape),
                       **({"value": np.asarray(r.value).tolist()} if r.value is not None
                          else {})} for r in self.nodes],
            "edges": [{"edge": [n.label(e.source), n.label(e.target)],
                       "J": e.symbolic(), "structure": e.structure,
                       "srepr": None if isinstance(e.jacobian, LinearMap) else sp.srepr(e.jacobian),
                       **({"value": np.asarray(e.value).tolist()} if e.value is not None else {}),
                       **({"dense": np.asarray(e.dense).tolist()} if e.dense is not None else {})}
                      for e in self.edges],
            "adjoints": [{"node": n.label(r.node), "P": r.name,
                          "expanded": " + ".join(_term_text(n, e) for e in r.edges) or "seed",
                          **({"value": np.asarray(r.value).tolist()} if r.value is not None
                             else {})} for r in self.adjoints],
        }

    def json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, ensure_ascii=False)


def _term_text(n: Notation, e: Edge) -> str:
    if isinstance(e.jacobian, LinearMap):
        return e.jacobian.apply(n.P(e.target))
    j = e.jacobian
    return n.P(e.target) if j == 1 else f"{n.P(e.target)}·({show(j)})"


def _term_tex(n: Notation, e: Edge) -> str:
    if isinstance(e.jacobian, LinearMap):
        return e.jacobian.apply(n.P(e.target, True), [n.node(a, True) for a in e.operands],
                                tex=True)
    return sp.latex(sp.Symbol(n.P(e.target, True)) * e.jacobian, mul_symbol="dot")


def _fmt(v, full: bool = False) -> str:
    """A value on one line: whole when small (or ``full``), else shape, first entries,
    range and norm."""
    a = np.asarray(v)
    if full or a.size <= SUMMARY_LIMIT:
        return format_value(a, whole=True)
    flat = a.ravel()
    head = ", ".join(f"{x:.4g}" for x in flat[:3])
    with np.errstate(all="ignore"):
        return (f"[{'×'.join(map(str, a.shape))}: {head}, … ; min {np.min(a):.4g}, "
                f"max {np.max(a):.4g}, ‖·‖ {np.linalg.norm(flat):.4g}]")


def _structure(source: Expr, target: Expr) -> str:
    if target.op in ops.STRUCTURED:
        return "linear"
    if target.shape == ():
        return "scalar"
    return "diagonal" if source.shape == target.shape else "broadcast"


# ---- 1-D matmul: the reshapes it made are not the user's -------------------------------
def _implicit(g: Graph, e: Expr) -> bool:
    return bool(g.nx.nodes[e.id].get("implicit"))


def _collapsed_matmuls(g: Graph, live: set) -> tuple[dict, set]:
    """Each 1-D matmul written ``W @ x``: {its result node: (matmul, the user's operands)},
    and the nodes the report leaves out (the matmul and the reshapes around it)."""
    shown, hidden = {}, set()
    for i in live:
        e = Expr(g, i)
        if e.op == "reshape" and _implicit(g, e) and e.args[0].op == "matmul":
            m = e.args[0]
            operands = [a.args[0] if a.op == "reshape" and _implicit(g, a) and
                        a.args[0].ndim == 1 else a for a in m.args]
            a, b = operands
            if a.shape[:-1] + b.shape[1:] != e.shape:
                continue           # a reshape folded into another: show the graph as it is
            shown[i] = (m, operands)
            hidden.add(m.id)
    for r in list(shown.values()):
        for a in r[0].args:
            consumers = [c for c in g.nx.succ[a.id] if c in live]
            if a.op == "reshape" and _implicit(g, a) and all(c in hidden for c in consumers):
                hidden.add(a.id)
    return shown, hidden


def _edges_from(g: Graph, n: Notation, node: Expr, live: set, shown: dict,
                hidden: set) -> list:
    """The edges leaving ``node`` as the report shows them (through hidden nodes)."""
    edges, seen = [], {}
    for c in sorted({j for _, j in g.nx.out_edges(node.id) if j in live}, reverse=True):
        consumer = Expr(g, c)
        paths = [(consumer,)]
        if c in hidden:       # a reshape before, or the matmul itself: on to the result
            matmuls = [Expr(g, m) for m in g.nx.succ[c] if m in hidden] \
                if consumer.op == "reshape" else [consumer]
            paths = [((consumer,) if consumer.op == "reshape" else ()) + (m, Expr(g, r))
                     for m in matmuls for r in g.nx.succ[m.id] if r in shown]
        for path in paths:
            target = path[-1]
            if target.id in seen:                  # x @ x: both slots are one edge
                seen[target.id].paths.append(path)
                continue
            if target.id in shown:
                m, operands = shown[target.id]
                slots = tuple(s for s, a in enumerate(operands) if a.id == node.id) or \
                    tuple(s for s, a in enumerate(m.args) if a.id == path[0].id)
                j = LinearMap("matmul", slots, tuple(n.node(a) for a in operands), (),
                              tuple(a.shape for a in operands))
                edge = Edge(node, target, j, "linear", [path], tuple(operands))
            else:
                j = local_jacobian(g, node, target, n.symbol)
                edge = Edge(node, target, j, _structure(node, target), [path],
                            target.args if isinstance(j, LinearMap) else ())
            seen[target.id] = edge
            edges.append(edge)
    return edges


_ARITHMETIC = {"add", "sub", "mul", "div", "pow", "neg"}   # written as formulas: u1 + u2


def _definition(n: Notation, e: Expr, shown: dict, tex: bool) -> str:
    """What node ``e`` is, in terms of its operands: ``u1 + u2``, ``W @ x``."""
    if e.op == "input":
        return "input"
    if e.id in shown:
        m, operands = shown[e.id]
        return ops.STRUCTURED["matmul"].show([n.node(a, tex) for a in operands], (),
                                              [a.shape for a in operands], tex)
    if e.op in ops.STRUCTURED:
        return ops.STRUCTURED[e.op].show([n.node(a, tex) for a in e.args], e.params,
                                         [a.shape for a in e.args], tex)
    if e.op == "broadcast":
        return ops.written_call("broadcast", [n.node(e.args[0], tex), str(e.shape)], tex)
    if e.op == "copy":
        return n.node(e.args[0], tex)
    entry = ops.ELEMENTWISE[e.op]
    if e.op not in _ARITHMETIC and entry.public and not (tex and entry.sympy):
        return ops.written_call(e.op, [n.node(a, tex) for a in e.args], tex)     # relu(u5), abs(x)
    env = {s: (display_number(a.params[0]) if a.op == "const" else n.symbol(a))
           for s, a in zip(ops.OPERANDS, e.args)}
    expr = ops.readable(entry.formula.xreplace(env))
    return sp.latex(expr, mul_symbol="dot") if tex else show(expr)


def _dense(paths: list, source: Expr, entry, values, limit: int) -> np.ndarray | None:
    """∂target/∂source as a (target.size × source.size) matrix, for small shapes."""
    target = paths[0][-1]
    n_out, n_in = target.size, source.size
    if n_out > limit or n_in > limit or n_out * n_in == 1:
        return None
    if len(paths[0]) == 1 and target.op in ops.ELEMENTWISE:
        index = np.broadcast_to(np.arange(n_in).reshape(source.shape), target.shape).ravel()
        dense = np.zeros((n_out, n_in))
        np.add.at(dense, (np.arange(n_out), index),
                  np.broadcast_to(np.asarray(entry, float), target.shape).ravel())
        return dense
    # structured operators are linear (or bilinear) in each operand: the columns are the
    # paths applied to the basis vectors e_k, the other operands held at their values
    columns = []
    for k in range(n_in):
        basis = np.zeros(n_in)
        basis[k] = 1
        columns.append(sum(np.ravel(_along(path, source, basis.reshape(source.shape), values))
                           for path in paths))
    return np.array(columns).T


def _value_of(e: Expr, values) -> np.ndarray:
    """A node's value for the dense Jacobian: computed ones, or a constant's own (index
    arrays stay integers)."""
    value = values[e.id] if e.id in values else ops.evaluate(e.op, [], e.params, e.shape,
                                                             e.dtype)
    return np.asarray(value) if e.dtype.kind == "i" else np.asarray(value, float)


def _along(path, source, v, values):
    before = source
    for step in path:      # linear, or bilinear (x @ x: one term per slot x fills)
        at = [_value_of(a, values) for a in step.args]
        v, before = sum(ops.evaluate(step.op, at[:s] + [v] + at[s + 1:], step.params,
                                     step.shape, np.float64)
                        for s, a in enumerate(step.args) if a.id == before.id), step
    return v


def jacobian_report(g: Graph, of, at=None, seed=None, names=None, full=False) -> Report:
    """The nodes, every ``J`` on the edges feeding ``of`` and every adjoint ``P``,
    optionally at values (``at``).  Large tensors print summarised unless ``full``."""
    outputs = list(of) if isinstance(of, (list, tuple)) else [of]
    if seed is None and len(outputs) == 1 and of.shape != ():
        seed = 1.0   # a tensor output is seeded with ones, as document 000's v = [1, 1, 1]
    n = Notation(names)
    live = relevant_nodes(g, outputs, g.inputs) | {o.id for o in outputs}
    live = {i for i in live if Expr(g, i).op != "const"}
    shown, hidden = _collapsed_matmuls(g, live)
    report = Report(notation=n, full=full, shown=shown)
    for i in sorted(live - hidden):
        e = Expr(g, i)
        report.nodes.append(Node(e, _definition(n, e, shown, False)))
    for i in sorted(live - hidden, reverse=True):
        e = Expr(g, i)
        row = Row(e, n.P(e), _edges_from(g, n, e, live, shown, hidden))
        report.adjoints.append(row)
        report.edges += row.edges
    if at is not None:
        if len(outputs) > 1:
            raise ValueError("values (at=) are given for the report of one output")
        _add_values(g, report, of, at, seed, live)
    for row in report.nodes:         # a loop's body, once, with its own J and P
        if row.node.op == "loop":
            body = row.node.params[0]
            report.loops.append((row.node, jacobian_report(
                body.graph, [Expr(body.graph, i) for i in body.outputs], full=full)))
    return report


def _add_values(g: Graph, report: Report, of: Expr, at, seed, live: set) -> None:
    """Every node's value, every elementwise J and every adjoint, in one evaluation pass on
    a copy of the graph (the user's graph stays as it was; a pass per edge was quadratic)."""
    work = g.copy()
    ids = sorted(live)
    elementwise = [e for e in report.edges if not isinstance(e.jacobian, LinearMap)]
    jexprs = [work.local_jacobian_expr(Expr(work, e.source.id), Expr(work, e.target.id))
              for e in elementwise]
    rows = [Expr(work, r.node.id) for r in report.adjoints]
    adjoints = work.grad([Expr(work, of.id)], rows, seed)
    computed = work.evaluate([Expr(work, i) for i in ids] + jexprs + adjoints, at)
    values = dict(zip(ids, computed))
    for edge, value in zip(elementwise, computed[len(ids):]):
        edge.value = value
    for row, value in zip(report.adjoints, computed[len(ids) + len(jexprs):]):
        row.value = value
    for row in report.nodes:
        row.value = values[row.node.id]
    limit = FULL_DENSE_LIMIT if report.full else DENSE_LIMIT
    for edge in report.edges:
        if edge.target.shape != () or edge.source.shape != ():
            edge.dense = _dense(edge.paths, edge.source, edge.value, values, limit)


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
    notation = Notation(names)
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
        label = _label(e, names) if not reverse else notation.P(e)
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
                j = local_jacobian(g, a, e, notation.symbol)
                text = str(j) if isinstance(j, LinearMap) else show(j)
                label = f"{notation.J(a, e)} = {text}"
                lines.append(f'  n{i} -> n{a.id} [label="{_escape(label)}"];')
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


# ---- the operator table, for people ---------------------------------------------------------
def operator_table() -> str:
    """Every operator with its forward rule and derivative rule(s), from the table itself."""
    lines = ["elementwise (a, b, c: operands; out: the result; J is the diagonal entry)"]
    for e in ops.ELEMENTWISE.values():
        if not e.public:
            continue
        partials = ", ".join(f"∂/∂{s} = {show(ops.readable(p))}"
                             for s, p in zip("abc", e.partials))
        where = ", ".join(x for x in (f"torch.{e.torch}" if e.torch else "",
                                      f"C {e.libm}" if e.libm else "") if x)
        lines.append(f"  {e.name:<11} {show(e.formula):<22} {partials}"
                     + (f"   [{where}]" if where else ""))
    lines.append("structured (P: the result's adjoint; the rule gives each operand's)")
    # an application to show each by: one per kind, but views and the newer kinds, whose
    # parameters differ by operator
    spec = ops.basic_index((3, 2), (slice(1, None),))
    examples = {"reduction": (((3, 2),), ((0, 1), False)), "contraction": (((3, 2), (2, 4)), ()),
                "reshape": (((3, 2),), ((6,),)), "transpose": (((3, 2),), ((1, 0),)),
                "index": (((3, 2),), (spec,)), "embed": (((2, 2),), ((3, 2), spec)),
                "concatenate": (((3, 2), (1, 2)), (0,)), "pad": (((3, 2),), (((1, 0), (0, 2)),
                                                                              0.0)),
                "gather": (((3, 2), (4,)), ()), "scatter_add": (((4, 2), (4,)), ((3, 2),)),
                "cumsum": (((3, 2),), (1,)), "loop": _example_loop()}
    for name, s in ops.STRUCTURED.items():
        shapes, params = examples.get(name) or examples[s.kind]
        names = list("ai" if s.kind == "gather" else "ab")[:len(shapes)]
        rules = ", ".join(f"P_{x} = {s.rule(k, 'P', names, params, shapes, False)}"
                          for k, x in enumerate(names) if not (s.kind == "gather" and k))
        lines.append(f"  {name:<11} {s.show(names, params, shapes, False):<22} {rules}")
    return "\n".join(lines)


def _example_loop():
    """(operand shapes, params) of a small scan: c ↦ sin(c)·x over 5 slices x."""
    from .loops import scan
    g = Graph()
    scan(lambda c, x: (c.apply("sin") * x, None), g.input("c", (2,)), g.input("xs", (5, 2)))
    loop = next(Expr(g, i) for i in g.nx if g.nx.nodes[i]["op"] == "loop")
    return [a.shape for a in loop.args], loop.params


# ---- assembled Jacobians and Hessians ------------------------------------------------------
def closed_form(g: Graph, node: Expr, cache=None):
    """A scalar node as one sympy formula of the inputs (the table's formulas substituted
    along the graph), or None when a tensor lies on the way."""
    cache = {} if cache is None else cache
    for i in sorted(ancestors(g, [node.id])):
        a = g.nx.nodes[i]
        op = a["op"]
        if a["shape"] != () or any(cache.get(k) is None for k in a["args"]):
            cache[i] = None
        elif op == "input":
            cache[i] = g.symbol(i)
        elif op == "const":
            cache[i] = sp.nsimplify(a["params"][0]) if float(a["params"][0]).is_integer() \
                else sp.Float(a["params"][0])
        elif op in ops.ELEMENTWISE:
            formula = ops.ELEMENTWISE[op].formula
            cache[i] = formula.xreplace(dict(zip(ops.OPERANDS, [cache[k] for k in a["args"]])))
        elif len(a["args"]) == 1 and ops.kind_of(op) == "view":   # a scalar reshaped
            cache[i] = cache[a["args"][0]]
        else:
            cache[i] = None
    return cache[node.id]


@dataclass
class Assembled:
    """The Jacobian (or Hessian) of one output by every input, assembled: symbolic entries
    (scalar graphs), values at a point, and the sparsity pattern the graph gives."""
    title: str
    inputs: list                     # names, in column order
    symbolic: object = None          # sympy Matrix, or None for tensor graphs
    value: object = None             # numpy array (rows: output elements; columns: inputs)
    pattern: object = None           # bool array of the same shape

    def text(self, full=False) -> str:
        lines = [f"{self.title}, columns ({', '.join(self.inputs)}):"]
        if self.symbolic is not None:
            lines += ["  " + r for r in sp.pretty(self.symbolic, use_unicode=True).splitlines()]
        nnz, size = int(self.pattern.sum()), self.pattern.size
        lines.append(f"  sparsity: {nnz} of {size} entries can be nonzero")
        if self.value is not None:
            limit = sys.maxsize if full else 400
            lines.append("  at the given values:")
            lines += ["    " + r for r in np.array2string(     # (+ 0.0: no "-0." shown)
                self.value + 0.0, precision=6, threshold=limit, max_line_width=200).splitlines()]
        return "\n".join(lines)


def assembled(g: Graph, of, at=None, hessian=False, names=None) -> Assembled:
    """∂of/∂inputs — ``of`` one output or several, their elements stacked as rows in
    order — or, with ``hessian``, ∂²of/∂inputs² of one scalar ``of``; every float input
    the outputs read is a column block, flattened in order."""
    outputs = list(of) if isinstance(of, (list, tuple)) else [of]
    labels = [(names or {}).get(o.id, o.name) for o in outputs]
    label = labels[0] if len(labels) == 1 else f"({', '.join(labels)})"
    used = ancestors(g, [o.id for o in outputs])
    inputs = [i for i in g.inputs if i.id in used and i.dtype.kind == "f"]
    if not inputs:
        raise ValueError(f"{label} reads no float input: nothing to differentiate")
    if hessian and (len(outputs) > 1 or outputs[0].shape != ()):
        raise ValueError(f"the Hessian is of one scalar output; {label} "
                         + ("are several" if len(outputs) > 1 else
                            f"has shape {outputs[0].shape}"))
    f = g.compile(outputs, wrt=inputs)
    args = [np.asarray(at[i.name], dtype=i.dtype) for i in f.plan.inputs] if at else \
        [np.zeros(i.shape, i.dtype) for i in f.plan.inputs]
    kind = "hessian" if hessian else "jacobian"
    rows, cols, shape, _ = f.plan.sparsity(kind, args)
    pattern = np.zeros(shape, bool)
    pattern[rows, cols] = True
    value = None
    if at:
        if hessian:
            H = f.hessian(*args)
            blocks, row_slots = ([[H]] if len(inputs) == 1 else H), inputs
        else:
            J = f.jacobian(*args)
            blocks, row_slots = ([J] if len(outputs) == 1 else J), outputs
        value = np.block([[np.asarray(b).reshape(r.size, i.size) for b, i in
                           zip(row, inputs)] for row, r in zip(blocks, row_slots)])
    symbolic = None
    if all(o.shape == () for o in outputs) and all(i.shape == () for i in inputs):
        work = g.copy()              # the gradient nodes stay out of the user's graph
        cache, wrt = {}, [Expr(work, i.id) for i in inputs]
        if hessian:
            entries = [work.grad([gr], wrt)
                       for gr in work.grad([Expr(work, outputs[0].id)], wrt)]
        else:
            entries = [work.grad([Expr(work, o.id)], wrt) for o in outputs]
        symbolic = sp.Matrix([[ops.readable(closed_form(work, e, cache)) for e in row]
                              for row in entries])
        if any(e is None for e in symbolic):
            symbolic = None
    what = f"Hessian ∂²{label}/∂x²" if hessian else f"Jacobian ∂{label}/∂x"
    return Assembled(what, [i.name for i in inputs], symbolic, value, pattern)


def pattern_png(pattern: np.ndarray, path: str, cell: int = 0) -> None:
    """The sparsity pattern as a PNG: a black pixel block per entry that can be nonzero
    (no dependency: the format is a zlib stream of rows, written here)."""
    import struct
    import zlib
    m, n = pattern.shape
    cell = cell or max(1, min(16, 512 // max(m, n, 1)))
    image = np.where(np.repeat(np.repeat(pattern, cell, 0), cell, 1), 0, 255).astype(np.uint8)
    raw = b"".join(b"\x00" + row.tobytes() for row in image)     # filter 0 per row

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + \
            struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", image.shape[1], image.shape[0], 8, 0, 0, 0, 0)
    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) +
                 chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
