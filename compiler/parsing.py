"""The expression language: text → graph nodes, parsed and never evaluated as Python.

    u3 = u1 + u2; u4 = u2*u3
    loss = sum((W @ x - y)**2) / 3
    z = relu(x).sum(0) + maximum(x, y).T

A program is statements separated by ``;`` or newlines, each ``name = expression``
or a bare expression.  Text goes through Python's ``ast`` parser and then through an
allow-list: numbers, names, ``+ - * / ** @``, unary ``-``/``+``, calls of the
operator table's functions, of ``sum mean reshape transpose matmul`` and of the graph
API's composites (``softmax(x, axis=0)``, ``concatenate([a, b], 1)``: arguments bound by
the function's signature, literals where it takes an axis or a shape), the methods
``.sum() .mean() .reshape() .transpose()``, ``.T`` and literal indexing.  Every name
resolves to an earlier assignment, an input or ``pi``; a free name becomes an input.
Anything else — attributes, strings, lambdas, comprehensions, keywords a function does
not take — is a :class:`ParseError` naming the statement and column.
Nothing in the text is ever executed: the walk below builds graph nodes only.
"""
from __future__ import annotations

import ast
import inspect
import math
import numbers
import sys
import threading
from dataclasses import dataclass, field

import numpy as np

from . import functions
from .errors import GraphError
from .graph import Expr, Graph

MAX_TEXT = 1_000_000          # characters in one program
MAX_NODES = 200_000           # syntax-tree nodes in one statement
CONSTANTS = {"pi": math.pi}
STRUCTURED = ("sum", "mean", "reshape", "transpose", "matmul")
METHODS = ("sum", "mean", "reshape", "transpose")
COMPARE = {ast.Lt: "lt", ast.LtE: "le", ast.Gt: "gt", ast.GtE: "ge", ast.Eq: "eq",
           ast.NotEq: "ne"}
BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**",
          ast.MatMult: "@"}


class ParseError(GraphError):
    """Text that is not a program of the expression language; one line, with where."""


@dataclass
class Program:
    """What ``parse`` built: the graph, every name (inputs and assignments), and the
    names assigned, in order (``outputs[-1]`` is the last)."""
    graph: Graph
    names: dict = field(default_factory=dict)
    outputs: list = field(default_factory=list)

    @property
    def inputs(self) -> list:
        return self.graph.inputs

    def __getitem__(self, name) -> Expr:
        return self.names[name]


def functions_available() -> list:
    """The names a program may call: the operator table's functions and the structured ones."""
    return sorted(set(functions.PUBLIC) | set(STRUCTURED) | set(COMPOSITES))


# composite functions of the graph API a program may call too; their arguments are bound
# by their Python signatures: the parameters in VALUES are expressions (or numbers), ``xs``
# a list of them, every other one a literal (axis, keepdims, shape, ddof, …)
COMPOSITES = ("clamp", "clip", "logsumexp", "softmax", "log_softmax", "var", "std", "amax", "amin",
              "prod", "cumsum", "norm", "flip", "squeeze", "expand_dims", "broadcast_to",
              "concatenate", "stack", "pad", "dot")
VALUES = {"x", "a", "b", "min", "max", "constant_values"}


def _callable(name: str) -> bool:
    return name in STRUCTURED or name in functions.PUBLIC or name in COMPOSITES


def parse(text: str, shapes: dict | None = None, dtype=np.float64,
          graph: Graph | None = None) -> Program:
    """Build a graph from ``text``; ``shapes`` maps an input name to its shape (default:
    scalar).  Raises :class:`ParseError` for anything outside the language."""
    if not isinstance(text, str):
        raise TypeError(f"parse takes a str, got {type(text).__name__}")
    if len(text) > MAX_TEXT:
        raise ParseError(f"the program is {len(text):,} characters long; at most {MAX_TEXT:,}")
    shapes = dict(shapes or {})
    program = Program(graph if graph is not None else Graph(dtype))
    statements = [s for s in text.replace("\n", ";").split(";") if s.strip()]
    if not statements:
        raise ParseError('no expressions given: write e.g. "u3 = u1 + u2; u4 = u2*u3"')
    for k, statement in enumerate(statements, 1):
        _Statement(program, shapes, k, statement).run()
    return program


_deep = threading.Lock()


def _parse_deep(source: str):
    """``ast.parse`` for long flat programs: building the tree of a 3,000-term sum
    recurses once per term, past Python's recursion limit.  Parsed in a thread with
    a large stack and the limit raised for the moment (the text's length bounds the
    depth); short text is parsed directly."""
    if len(source) < 2000:
        return ast.parse(source, mode="exec")
    result = {}

    def work():
        try:
            result["tree"] = ast.parse(source, mode="exec")
        except BaseException as err:        # handed to the caller's thread
            result["error"] = err
    with _deep:
        old_limit, old_stack = sys.getrecursionlimit(), threading.stack_size()
        try:
            sys.setrecursionlimit(max(old_limit, 4 * len(source)))
            threading.stack_size(min(1 << 30, 64 * 1024 * 1024 + 512 * len(source)))
            worker = threading.Thread(target=work, name="symgrad-parse")
            worker.start()
            worker.join()
        finally:
            threading.stack_size(old_stack)
            sys.setrecursionlimit(old_limit)
    if "error" in result:
        raise result["error"]
    return result["tree"]


class _Statement:
    def __init__(self, program: Program, shapes: dict, number: int, text: str):
        self.program, self.shapes, self.number, self.text = program, shapes, number, text

    def error(self, node, message) -> ParseError:
        where = f", column {node.col_offset + 1}" if getattr(node, "col_offset", None) \
            is not None else ""
        return ParseError(f"statement {self.number} ({self.shown()}){where}: {message}")

    def shown(self) -> str:
        text = self.text.strip()
        return repr(text if len(text) <= 60 else text[:57] + "...")

    def run(self):
        source = self.text.strip()
        try:
            tree = _parse_deep(source)
        except SyntaxError as err:
            column = f", column {err.offset}" if err.offset else ""
            raise ParseError(f"statement {self.number} ({self.shown()}){column}: cannot parse: "
                             f"{err.msg}") from None
        except (ValueError, RecursionError, MemoryError) as err:   # null bytes, depth
            raise ParseError(f"statement {self.number}: cannot parse: "
                             f"{type(err).__name__}") from None
        if len(tree.body) != 1:
            raise ParseError(f"statement {self.number} ({self.shown()}): one statement expected")
        stmt = tree.body[0]
        count = 0
        for _ in ast.walk(stmt):
            count += 1
            if count > MAX_NODES:
                raise ParseError(f"statement {self.number}: more than {MAX_NODES:,} terms")
        if isinstance(stmt, ast.Assign):
            if len(stmt.targets) != 1 or not isinstance(stmt.targets[0], ast.Name):
                raise self.error(stmt, "assign to one name: name = expression")
            target = stmt.targets[0].id
            self.check_new_name(stmt.targets[0], target)
            value = stmt.value
        elif isinstance(stmt, ast.Expr):
            target, value = f"out{self.number}", stmt.value
        else:
            raise self.error(stmt, f"{type(stmt).__name__} statements are not part of the "
                                   "expression language; write name = expression")
        result = self.evaluate(value)
        if target in self.program.names:      # x = x + 1: the right side made input x
            raise self.error(stmt, f"{target} is an input of this statement: assign to a "
                                   "new name")
        if not isinstance(result, Expr):
            raise self.error(value, f"{target} = {result!r} is a constant: an output must "
                                    "depend on an input")
        if result.op not in ("input", "const") and "name" not in result._attrs:
            result.named(target)
        self.program.names[target] = result
        self.program.outputs.append(target)

    def check_new_name(self, node, name):
        self.check_name(node, name)
        names = self.program.names
        if name in names:
            kind = "an input" if names[name].op == "input" and names[name].name == name \
                else "already assigned"
            raise self.error(node, f"{name} is {kind}: assign to a new name")
        if name in CONSTANTS or _callable(name):
            raise self.error(node, f"{name} is a built-in name: assign to another")

    def check_name(self, node, name):
        if name.startswith("_"):
            raise self.error(node, f"names may not start with '_': {name!r}")

    # ---- the walk: iterative, so a 3,000-term sum is no deeper than a short one --------
    def evaluate(self, root):
        done: dict = {}
        stack = [(root, None)]
        while stack:
            node, children = stack.pop()
            if children is None:
                children = self.operands(node)
                stack.append((node, children))
                stack.extend((c, None) for c in reversed(children))
                continue
            done[id(node)] = self.build(node, [done[id(c)] for c in children])
        return done[id(root)]

    def operands(self, node) -> list:
        """The sub-expressions ``node`` needs as values; a structured function's axis,
        shape or permutation arguments are static (read by ``static``)."""
        if isinstance(node, ast.BinOp):
            return [node.left, node.right]
        if isinstance(node, ast.UnaryOp):
            return [node.operand]
        if isinstance(node, ast.Call):
            self.check_call(node)
            if isinstance(node.func, ast.Attribute):       # x.sum(0): x only
                return [node.func.value]
            if node.func.id in COMPOSITES:
                return [v for _, kind, arg in self.bind(node) if kind != "static"
                        for v in (arg if kind == "values" else [arg])]
            return node.args[:1] if node.func.id in METHODS else node.args
        if isinstance(node, ast.Attribute):
            return [node.value]
        if isinstance(node, ast.Compare):
            return [node.left, *node.comparators]
        if isinstance(node, ast.Subscript):
            return [node.value]
        return []

    def callee(self, call) -> str:
        return call.func.attr if isinstance(call.func, ast.Attribute) else call.func.id

    def check_call(self, call):
        func = call.func
        if isinstance(func, ast.Name):
            if not _callable(func.id):
                raise self.error(func, f"{func.id}() is not a symgrad function; available: "
                                       + ", ".join(functions_available()))
        elif isinstance(func, ast.Attribute):
            if func.attr not in METHODS:
                raise self.error(func, f".{func.attr}() is not allowed; methods: "
                                       + ", ".join(f".{m}()" for m in METHODS))
        else:
            raise self.error(call, "only named functions can be called")
        for a in call.args:
            if isinstance(a, ast.Starred):
                raise self.error(a, "*arguments are not part of the expression language")
        name = self.callee(call)
        allowed = {"axis", "axes", "keepdims"} if name in ("sum", "mean") else \
            set(inspect.signature(getattr(functions, name)).parameters) \
            if name in COMPOSITES else set()
        for kw in call.keywords:
            if kw.arg not in allowed:
                what = "**arguments" if kw.arg is None else f"keyword {kw.arg}="
                raise self.error(kw, f"{what} is not accepted by {self.callee(call)}()")

    def build(self, node, values):
        if isinstance(node, ast.Constant):
            return self.literal(node)
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, ast.BinOp):
            return self.binary(node, *values)
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.USub):
                return -values[0]
            if isinstance(node.op, ast.UAdd):
                return values[0]
            raise self.error(node, f"operator {type(node.op).__name__} is not supported; "
                                   "use + - * / ** @")
        if isinstance(node, ast.Call):
            return self.call(node, values)
        if isinstance(node, ast.Attribute):
            if node.attr != "T":
                raise self.error(node, f"attribute .{node.attr} is not allowed (only .T and "
                                       "the methods " + ", ".join(METHODS) + ")")
            return self.tensor(node.value, values[0]).T
        if isinstance(node, ast.Subscript):
            x = self.tensor(node.value, values[0])
            parts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            index = tuple(self.index_part(p) for p in parts)
            try:
                return x[index]
            except (IndexError, GraphError) as err:
                raise self.error(node, str(err)) from None
        if isinstance(node, ast.Compare):
            return self.compare(node, values)
        if isinstance(node, ast.BoolOp):
            raise self.error(node, "and/or are not elementwise: write logical_and(a, b), "
                                   "logical_or(a, b)")
        raise self.error(node, f"{type(node).__name__} is not part of the expression "
                               "language (numbers, names, + - * / ** @, function calls)")

    def literal(self, node):
        v = node.value
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise self.error(node, f"{v!r} is not a number; text and other literals are not "
                                   "part of the expression language")
        try:
            return float(v)
        except OverflowError:
            raise self.error(node, "number too large for a float") from None

    def name(self, node):
        name = node.id
        self.check_name(node, name)
        if name in self.program.names:
            return self.program.names[name]
        if name in CONSTANTS:
            return CONSTANTS[name]
        if _callable(name):
            raise self.error(node, f"{name} is a function: call it, e.g. {name}(x)")
        shape = self.shapes.get(name, ())
        try:
            x = self.program.graph.input(name, shape)
        except GraphError as err:
            raise self.error(node, str(err)) from None
        self.program.names[name] = x
        return x

    def compare(self, node, values):
        """``a < b`` is the 0/1 mask lt(a, b); ``a < b <= c`` both masks, and-ed."""
        masks = []
        for k, op in enumerate(node.ops):
            name = COMPARE.get(type(op))
            if name is None:
                raise self.error(node, f"comparison {type(op).__name__} is not supported; "
                                       "use < <= > >= == !=")
            a, b = values[k], values[k + 1]
            if not any(isinstance(x, Expr) for x in (a, b)):
                raise self.error(node, "a comparison needs an input or expression on one side")
            masks.append(self.program.graph.apply(name, a, b))
        out = masks[0]
        for m in masks[1:]:
            out = self.program.graph.apply("logical_and", out, m)
        return out

    def binary(self, node, a, b):
        op = BINARY.get(type(node.op))
        if op is None:
            raise self.error(node, f"operator {type(node.op).__name__} is not supported; "
                                   "use + - * / ** @")
        if not isinstance(a, Expr) and not isinstance(b, Expr):
            # constant arithmetic in float64, as IEEE says (1/0 is inf, not an exception)
            if op == "@":
                raise self.error(node, "@ needs tensors, not numbers")
            x, y = np.float64(a), np.float64(b)
            with np.errstate(all="ignore"):
                return float({"+": np.add, "-": np.subtract, "*": np.multiply,
                              "/": np.divide, "**": np.power}[op](x, y))
        if op == "@":
            return self.tensor(node.left, a) @ self.tensor(node.right, b)
        return {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b,
                "/": lambda: a / b, "**": lambda: a ** b}[op]()

    def tensor(self, node, value) -> Expr:
        if not isinstance(value, Expr):
            raise self.error(node, f"{value!r} is a number here; this needs an expression")
        return value

    def call(self, node, values):
        name = self.callee(node)
        if isinstance(node.func, ast.Attribute):
            x = self.tensor(node.func.value, values[0])
            static = [self.static(a) for a in node.args]
            return self.structured(node, name, x, static, node.keywords)
        if name in METHODS:
            if not node.args:
                raise self.error(node, f"{name}() needs an argument")
            x = self.tensor(node.args[0], values[0])
            static = [self.static(a) for a in node.args[1:]]
            return self.structured(node, name, x, static, node.keywords)
        if name in COMPOSITES:
            return self.composite(node, name, values)
        if name == "matmul":
            if len(values) != 2:
                raise self.error(node, "matmul(a, b) takes two arguments")
            return self.tensor(node.args[0], values[0]) @ self.tensor(node.args[1], values[1])
        if not any(isinstance(v, Expr) for v in values):
            raise self.error(node, f"{name}() of numbers only: it needs an expression")
        try:
            return getattr(functions, name)(*values)
        except (GraphError, TypeError) as err:
            raise self.error(node, str(err)) from None

    def bind(self, call) -> list:
        """(parameter, "value" | "values" | "static", its syntax) for each argument of a
        composite's call, bound by the function's signature."""
        name = call.func.id
        try:
            bound = inspect.signature(getattr(functions, name)).bind(
                *call.args, **{kw.arg: kw.value for kw in call.keywords})
        except TypeError as err:
            raise self.error(call, f"{name}(): {err}") from None
        parts = []
        for param, arg in bound.arguments.items():
            if param == "xs":
                if not isinstance(arg, (ast.List, ast.Tuple)) or not arg.elts:
                    raise self.error(arg, f"{name}() takes a list of expressions, "
                                          f"e.g. {name}([a, b], axis=0)")
                parts.append((param, "values", arg.elts))
            else:
                parts.append((param, "value" if param in VALUES else "static", arg))
        return parts

    def composite(self, node, name, values):
        values, kwargs = list(values), {}
        for param, kind, arg in self.bind(node):
            if kind == "static":
                kwargs[param] = self.static(arg)
            elif kind == "values":
                kwargs[param] = [self.tensor(a, values.pop(0)) for a in arg]
            else:
                kwargs[param] = values.pop(0)
        if not any(isinstance(v, Expr) for v in (kwargs.get("x"), kwargs.get("a"),
                                                 kwargs.get("b"), *kwargs.get("xs", []))):
            raise self.error(node, f"{name}() of numbers only: it needs an expression")
        try:
            return getattr(functions, name)(**kwargs)
        except (GraphError, TypeError, ValueError, IndexError) as err:
            raise self.error(node, f"{name}: {err}") from None

    def structured(self, node, name, x, static, keywords):
        options = {kw.arg: self.static(kw.value) for kw in keywords}
        try:
            if name in ("sum", "mean"):
                if len(static) > 2:
                    raise self.error(node, f"{name}(x, axis, keepdims) takes at most 3 arguments")
                axes = static[0] if static else options.pop("axis", options.pop("axes", None))
                keepdims = static[1] if len(static) > 1 else options.pop("keepdims", False)
                return getattr(x, name)(axes, bool(keepdims))
            if name == "reshape":
                shape = static[0] if len(static) == 1 else tuple(static)
                return x.reshape(shape)
            perm = static[0] if len(static) == 1 else (tuple(static) if static else None)
            return x.transpose(perm)
        except GraphError as err:
            raise self.error(node, str(err)) from None
        except (TypeError, ValueError) as err:
            raise self.error(node, f"{name}: {err}") from None

    def index_part(self, node):
        """One item of ``x[...]``: a literal int, slice, None, ``...`` or list of ints."""
        if isinstance(node, ast.Constant) and node.value is Ellipsis:
            return Ellipsis
        if isinstance(node, ast.Slice):
            return slice(*(None if b is None else self.static(b)
                           for b in (node.lower, node.upper, node.step)))
        value = self.static(node)
        if isinstance(value, tuple):
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise self.error(node, "an index list holds ints")
            return np.array(value, dtype=np.int64)
        if isinstance(value, bool):
            raise self.error(node, "True/False is not an index")
        return value

    def static(self, node):
        """A literal argument (axis, shape, keepdims): an int, a bool, None or a tuple."""
        if isinstance(node, ast.Constant) and (node.value is None or
                                               isinstance(node.value, (bool, int))):
            if isinstance(node.value, int) and abs(node.value) >= 2**62:
                raise self.error(node, "integer argument out of range")
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            inner = self.static(node.operand)
            if isinstance(inner, int) and not isinstance(inner, bool):
                return -inner
        if isinstance(node, (ast.Tuple, ast.List)) and len(node.elts) <= 64:
            return tuple(self.static(e) for e in node.elts)
        raise self.error(node, "this argument must be a literal: an int, a tuple of ints, "
                               "True/False or None")
