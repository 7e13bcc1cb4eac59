"""The ``symgrad`` command line.

    symgrad examples                 run every example of the documents
    symgrad examples list            list them
    symgrad examples run 002         run one
    symgrad jacobian "u3 = u1 + u2; u4 = u2*u3" --at u1=2,u2=3
    symgrad graph "u3 = u1 + u2; u4 = u2*u3" --at u1=2,u2=3 --out graph.svg
    symgrad compile "z = x*y" --shape x=3 --shape y=3 --wrt x,y --emit shared -o libz.so
"""
from __future__ import annotations

import argparse
import json
import os
import runpy
import sys

import numpy as np

from symgrad.examples import EXAMPLES, PROBLEMS


class UsageError(Exception):
    """A command-line argument that cannot be used; printed as one line, exit 2."""


def _examples(args) -> int:
    action = args.action or "all"
    known = {**EXAMPLES, **PROBLEMS}
    if action == "list":
        for key, (module, title) in known.items():
            print(f"{key}  {title}  (symgrad.examples.{module})")
        return 0
    if action == "run":
        if not args.name:
            raise UsageError(f"examples run needs a name: one of {', '.join(known)}")
        keys = [k for k in known if k == args.name or known[k][0] == args.name]
        if not keys:
            raise UsageError(f"no example {args.name!r}; try: symgrad examples list")
    elif action == "all":
        keys = list(EXAMPLES)
    else:
        raise UsageError(f"unknown action {action!r}: use list, run NAME or all")
    for key in keys:
        module, title = known[key]
        print(f"━━━ {key} — {title} ━━━")
        sys.stdout.flush()
        runpy.run_module(f"symgrad.examples.{module}", run_name="__main__")
        print()
    return 0


def parse_program(text: str, shapes: dict):
    """``"u3 = u1 + u2; u4 = u2*u3"`` → (graph, {name: Expr}, last assigned name).

    Parsed by the expression language (``symgrad.compiler.parse``), never evaluated.
    Free names become inputs (scalars unless ``--shape name=3,2``)."""
    from symgrad.compiler import ParseError, parse
    try:
        program = parse(text, shapes)
    except ParseError as err:
        raise UsageError(str(err)) from None
    unused = sorted(set(shapes) - {i.name for i in program.inputs})
    if unused:
        raise UsageError(f"--shape {', '.join(unused)}: not an input of the expressions "
                         f"(inputs: {', '.join(i.name for i in program.inputs) or 'none'})")
    return program.graph, program.names, program.outputs[-1]


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


def _graph_and_values(args):
    g, names, last = parse_program(args.expressions, _parse_shapes(args.shape))
    wanted = [w.strip() for w in (args.of or last).split(",") if w.strip()]
    unknown = [w for w in wanted if w not in names]
    if not wanted:
        raise UsageError(f"--of {args.of!r}: give a name, or several: y1,y2")
    if unknown:
        raise UsageError(f"--of {args.of!r}: {', '.join(unknown)} "
                         f"{'is not a name' if len(unknown) == 1 else 'are not names'} "
                         f"in the expressions ({', '.join(names)})")
    out = [names[w] for w in dict.fromkeys(wanted)]     # (a name given twice counts once)
    at = _parse_at(getattr(args, "at", None))
    inputs = {i.name for i in g.inputs}
    if set(at) - inputs:
        raise UsageError(f"--at names {', '.join(sorted(set(at) - inputs))}, which are not "
                         f"inputs ({', '.join(sorted(inputs))})")
    if at and inputs - set(at):
        raise UsageError(f"--at is missing {', '.join(sorted(inputs - set(at)))}")
    labels = {e.id: n for n, e in names.items()}
    return g, names, out, (at or None), labels


def _jacobian(args) -> int:
    from symgrad.compiler.explain import assembled, jacobian_report, pattern_png
    if args.out and not args.out.lower().endswith(".png"):
        raise UsageError(f"--out {args.out!r}: the sparsity pattern is drawn as a .png")
    if args.out and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        raise UsageError(f"--out {args.out!r}: no such directory")
    if args.out and not (args.full or args.hessian):
        raise UsageError("--out draws the pattern of --full's Jacobian or of --hessian; "
                         "give one of them")
    g, names, outs, at, labels = _graph_and_values(args)
    # the adjoint pass is one output's: a report each (JSON: one object, by output)
    reports = {labels[o.id]: jacobian_report(g, o, at=at, names=labels, full=args.full)
               for o in outs}
    if args.format == "json" and len(outs) > 1:
        print(json.dumps({k: r.as_dict() for k, r in reports.items()}, indent=2,
                         ensure_ascii=False))
    else:
        for label, report in reports.items():
            if len(outs) > 1:
                print(f"━━━ {label} ━━━")
            print({"json": report.json, "latex": report.latex,
                   "text": report.text}[args.format]())
    matrices = ([assembled(g, outs, at, names=labels)] if args.full else []) + \
        ([assembled(g, out, at, hessian=True, names=labels) for out in outs]
         if args.hessian else [])
    for m in matrices:
        print(m.text(full=args.full))
    if args.out:
        pattern_png(matrices[-1].pattern, args.out)
        print(f"wrote {args.out} (the pattern of the {matrices[-1].title})")
    return 0


def _graph(args) -> int:
    from symgrad.compiler.explain import render, to_dot
    g, names, outs, at, labels = _graph_and_values(args)
    fmt = args.out.rsplit(".", 1)[-1].lower() if args.out and "." in args.out else "dot"
    if fmt not in ("dot", "svg", "png"):
        raise UsageError(f"--out {args.out!r}: the file must end in .dot, .svg or .png")
    data = render(to_dot(g, outs, at=at, reverse=args.reverse, names=labels), fmt)
    if args.out:
        with open(args.out, "wb") as fh:
            fh.write(data)
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(data.decode())
    return 0


def _compile(args) -> int:
    g, names, outs, at, labels = _graph_and_values(args)
    wrt = [w.strip() for w in (args.wrt or "").split(",") if w.strip()]
    unknown = [w for w in wrt if w not in names]
    if unknown:
        raise UsageError(f"--wrt {', '.join(unknown)}: not names in the expressions")
    f = g.compile(outs, [names[w] for w in wrt])
    if args.emit == "sympy":
        for kind in f.kinds:
            print(f"; {kind}")
            for k, kernel in enumerate(f.kernels(kind)):
                print(f"kernel {k}:")
                print("  " + str(kernel).replace("\n", "\n  "))
        return 0
    if args.emit in ("llvm", "llvm-opt", "asm"):
        from symgrad.compiler.backend import jit
        text = {"llvm": lambda: f.llvm_ir, "llvm-opt": lambda: f.optimized_ir,
                "asm": lambda: "\n".join(jit.emit_assembly(f.artifact(k).llvm_ir)
                                          for k in f.kinds)}[args.emit]()
        if args.o:
            with open(args.o, "w") as fh:
                fh.write(text)
            print(f"wrote {args.o}")
        else:
            print(text)
        return 0
    if not args.o:
        raise UsageError(f"--emit {args.emit} writes a file: give -o libname.so (or .o)")
    for path in f.export(args.o, name=args.name, kind=args.emit, overwrite=args.force):
        print(f"wrote {path}")
    return 0


def _fmt(v):
    a = np.asarray(v)
    return f"{a.item():g}" if a.ndim == 0 else np.array2string(a, precision=4)


def _subcommand(sub, name, run, help, examples):
    """A subcommand reading expressions (see _common), with example lines in its --help."""
    p = sub.add_parser(name, help=help, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n" + "".join(f"  symgrad {name} {e}\n"
                                                       for e in examples))
    _common(p)
    p.set_defaults(run=run)
    return p


def _common(p):
    p.add_argument("expressions", help='assignments separated by ";": name = expression, '
                   'with + - * / ** @, the operator table\'s functions, sum/mean/.T')
    p.add_argument("--at", help="input values: name=value,… (a [list] for a tensor)")
    p.add_argument("--shape", action="append", help="declare a tensor input: name=3,2")
    p.add_argument("--of", help="the output, or several: y1,y2 (default: the last assigned "
                   "name)")


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
    jac = _subcommand(sub, "jacobian", _jacobian,
                      "dump local Jacobians J and adjoints P of expressions",
                      ['"u3 = u1 + u2; u4 = u2*u3" --at u1=2,u2=3',
                       '"z = x*y" --shape x=3 --shape y=3 --at "x=[0,2,8],y=[5,1,7]"',
                       '"f = x*x*y + sin(y)" --at x=1,y=2 --hessian',
                       '"a = x*y; b = sin(x) + z" --of a,b --full --at x=1,y=2,z=3',
                       '"d = u[2:] - 2*u[1:-1] + u[:-2]" --shape u=12 --full --out pattern.png'])
    jac.add_argument("--format", choices=["text", "latex", "json"], default="text")
    jac.add_argument("--full", action="store_true",
                     help="print large tensors, long adjoint rows and dense Jacobians whole, "
                          "then the assembled Jacobian of the outputs (--of, stacked) by "
                          "every input (symbolic for scalars, at --at, and its sparsity)")
    jac.add_argument("--hessian", action="store_true",
                     help="print the Hessian of each scalar output (symbolic for scalars, "
                          "at --at, and its sparsity)")
    jac.add_argument("--out", help="with --full or --hessian: draw the sparsity pattern "
                                   "(the last output's Hessian's when given) into this .png")
    gr = _subcommand(sub, "graph", _graph,
                     "draw the forward or reverse graph (DOT, or SVG/PNG with Graphviz)",
                     ['"u3 = u1 + u2; u4 = u2*u3" --at u1=2,u2=3 --out graph.svg',
                      '"u3 = u1 + u2; u4 = u2*u3" --reverse'])
    gr.add_argument("--out", help="file to write: .dot, .svg or .png (default: DOT to stdout)")
    gr.add_argument("--reverse", action="store_true", help="draw adjoints P and J on edges")
    co = _subcommand(sub, "compile", _compile,
                     "show the simplified kernels, LLVM IR or assembly; export a library",
                     ['"z = sin(x)*y" --wrt x,y --emit sympy',
                      '"z = sin(x)*y" --wrt x,y --emit llvm-opt',
                      '"z = x*y" --shape x=3 --shape y=3 --wrt x,y --emit shared -o libz.so '
                      '--name z'])
    co.add_argument("--wrt", help="inputs to differentiate with respect to: x,y")
    co.add_argument("--emit", choices=["sympy", "llvm", "llvm-opt", "asm", "obj", "shared"],
                    default="sympy")
    co.add_argument("-o", help="output file (required for obj and shared)")
    co.add_argument("--name", default="symgrad_fn", help="C name prefix of exported entries")
    co.add_argument("--force", action="store_true",
                    help="replace an existing header beside -o (never replaced otherwise)")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except UsageError as err:
        print(f"symgrad {args.command}: {err}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, KeyError, RuntimeError) as err:
        print(f"symgrad {args.command}: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    except OSError as err:     # a file that cannot be written: missing folder, disk full
        print(f"symgrad {args.command}: {err}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"symgrad {args.command}: out of memory (are the --shape / --at tensors "
              "that large?)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
