"""The ``symgrad`` command line.

    symgrad examples                 run every example of the documents
    symgrad examples list            list them
    symgrad examples run 002         run one
    symgrad jacobian "u3 = u1 + u2; u4 = u2*u3" --at u1=2,u2=3
"""
from __future__ import annotations

import argparse
import importlib
import json
import runpy
import sys

import numpy as np
import sympy as sp

from symgrad.examples import EXAMPLES


class UsageError(Exception):
    """A command-line argument that cannot be used; printed as one line, exit 2."""


def _examples(args) -> int:
    action = args.action or "all"
    if action == "list":
        for key, (module, title) in EXAMPLES.items():
            print(f"{key}  {title}  (symgrad.examples.{module})")
        return 0
    if action == "run":
        if not args.name:
            raise UsageError(f"examples run needs a name: one of {', '.join(EXAMPLES)}")
        keys = [k for k in EXAMPLES if k == args.name or EXAMPLES[k][0] == args.name]
        if not keys:
            raise UsageError(f"no example {args.name!r}; try: symgrad examples list")
    elif action == "all":
        keys = list(EXAMPLES)
    else:
        raise UsageError(f"unknown action {action!r}: use list, run NAME or all")
    for key in keys:
        module, title = EXAMPLES[key]
        print(f"━━━ {key} — {title} ━━━")
        sys.stdout.flush()
        runpy.run_module(f"symgrad.examples.{module}", run_name="__main__")
        print()
    return 0


def parse_program(text: str, shapes: dict):
    """``"u3 = u1 + u2; u4 = u2*u3"`` → (graph, {name: Expr}, last assigned name).

    Free names become inputs (scalars unless ``--shape name=3,2``)."""
    from symgrad.compiler import Graph
    from symgrad.compiler.sympy_import import build
    statements = [s.strip() for s in text.replace("\n", ";").split(";") if s.strip()]
    if not statements:
        raise UsageError("no expressions given: write e.g. \"u3 = u1 + u2; u4 = u2*u3\"")
    g, env, names, last = Graph(), {}, {}, None
    for k, stmt in enumerate(statements):
        target, sep, rhs = stmt.partition("=")
        target = target.strip() if sep else f"out{k}"
        rhs = rhs if sep else stmt
        if not target.isidentifier():
            raise UsageError(f"statement {k + 1} ({stmt!r}): {target!r} is not a name")
        try:
            expr = sp.sympify(rhs, locals={n: sp.Symbol(n) for n in names} | {
                "sigmoid": sp.Function("sigmoid")})
        except (sp.SympifyError, SyntaxError, TypeError) as err:
            reason = str(err).strip().splitlines()[-1]
            raise UsageError(f"statement {k + 1} ({stmt!r}): cannot parse {rhs.strip()!r}: "
                             f"{reason}") from None
        for s in sorted(expr.free_symbols, key=str):
            if s not in env:
                shape = shapes.get(s.name, ())
                env[s] = names[s.name] = g.input(s.name, shape)
        if expr.has(sp.Function("sigmoid")):
            expr = expr.replace(sp.Function("sigmoid"), lambda a: 1 / (1 + sp.exp(-a)))
        node = build([expr], env, g)[0]
        env[sp.Symbol(target)] = names[target] = node
        last = target
    return g, names, last


def _parse_at(text: str) -> dict:
    values = {}
    for part in _split_top(text or ""):
        name, sep, value = part.partition("=")
        if not sep:
            raise UsageError(f"--at {part!r}: write name=value, e.g. --at u1=2,u2=3")
        try:
            values[name.strip()] = np.array(json.loads(value.strip()), dtype=float)
        except ValueError:
            raise UsageError(f"--at {part!r}: {value!r} is not a number or [list]") from None
    return values


def _split_top(text):
    """Split on commas outside brackets: ``x=[1,2],y=3`` → [``x=[1,2]``, ``y=3``]."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [p for p in parts + [cur] if p.strip()]


def _parse_shapes(items) -> dict:
    shapes = {}
    for item in items or []:
        name, sep, dims = item.partition("=")
        try:
            shapes[name.strip()] = tuple(int(d) for d in dims.split(",") if d.strip())
        except ValueError:
            raise UsageError(f"--shape {item!r}: write name=3 or name=3,2") from None
        if not sep:
            raise UsageError(f"--shape {item!r}: write name=3 or name=3,2")
    return shapes


def _jacobian(args) -> int:
    g, names, last = parse_program(args.expressions, _parse_shapes(args.shape))
    out = names[args.of] if args.of else names[last]
    at = _parse_at(args.at)
    unknown = set(at) - {i.name for i in g.inputs}
    if unknown:
        raise UsageError(f"--at names {', '.join(sorted(unknown))}, which are not inputs "
                         f"({', '.join(i.name for i in g.inputs)})")
    missing = {i.name for i in g.inputs} - set(at)
    values = at if at and not missing else None
    if at and missing:
        raise UsageError(f"--at is missing {', '.join(sorted(missing))}")
    # a tensor output is seeded with ones (document 000's v = [1, 1, 1])
    rows = g.adjoints(of=out, at=values, seed=None if out.shape == () else 1.0)
    label = {e.id: n for n, e in names.items()}
    edges = []
    for row in rows:
        for consumer, j in row.terms:
            entry = {"edge": [_name(row.node, label), _name(consumer, label)], "J": str(j)}
            if values is not None and not hasattr(j, "text"):
                entry["value"] = np.asarray(
                    g.evaluate(g.local_jacobian_expr(row.node, consumer), values)).tolist()
            edges.append(entry)
    if args.format == "json":
        print(json.dumps({"edges": edges, "adjoints": [
            {"node": _name(r.node, label), "P": r.symbolic(), "expanded": r.expanded(),
             **({"value": np.asarray(r.value).tolist()} if r.value is not None else {})}
            for r in rows]}, indent=2, ensure_ascii=False))
        return 0
    if args.format == "latex":
        for e in edges:
            print(f"J_{{{e['edge'][0]} \\to {e['edge'][1]}}} = {sp.latex(sp.sympify(e['J']))}"
                  if not e["J"].startswith("P_") else f"% {e['edge']}: {e['J']}")
        return 0
    print("Local Jacobians J_{j→i} = ∂u_i/∂u_j:")
    for e in edges:
        value = f" = {_fmt(e['value'])}" if "value" in e else ""
        print(f"  J_{{{e['edge'][0]}→{e['edge'][1]}}} = {e['J']}{value}")
    print("Adjoints P_i = Σ_j P_j·J_{i→j}, in reverse topological order:")
    for r in rows:
        print(f"  {r}")
    return 0


def _name(e, label):
    return label.get(e.id, e.name)


def _fmt(v):
    a = np.asarray(v)
    return f"{a.item():g}" if a.ndim == 0 else np.array2string(a, precision=4)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="symgrad", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="symgrad: readable derivatives, compiled with LLVM.",
        epilog="examples:\n  symgrad examples\n  symgrad examples run 002\n"
               "  symgrad jacobian \"u3 = u1 + u2; u4 = u2*u3\" --at u1=2,u2=3")
    sub = p.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("examples", help="run the documents' examples (list, run NAME, all)")
    ex.add_argument("action", nargs="?", choices=["list", "run", "all"])
    ex.add_argument("name", nargs="?", help="example number (000–004) or module name")
    ex.set_defaults(run=_examples)
    jac = sub.add_parser(
        "jacobian", help="dump local Jacobians J and adjoints P of expressions",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  symgrad jacobian \"u3 = u1 + u2; u4 = u2*u3\" --at u1=2,u2=3\n"
               "  symgrad jacobian \"z = x*y\" --shape x=3 --shape y=3 "
               "--at \"x=[0,2,8],y=[5,1,7]\"")
    jac.add_argument("expressions", help='assignments in SymPy syntax, separated by ";"')
    jac.add_argument("--at", help="input values: name=value,… (a [list] for a tensor)")
    jac.add_argument("--shape", action="append", help="declare a tensor input: name=3,2")
    jac.add_argument("--of", help="the output to differentiate (default: the last assigned)")
    jac.add_argument("--format", choices=["text", "latex", "json"], default="text")
    jac.set_defaults(run=_jacobian)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except UsageError as err:
        print(f"symgrad {args.command}: {err}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, KeyError) as err:
        print(f"symgrad {args.command}: {type(err).__name__}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
