"""LLVM IR written as text, through the part of ``llvmlite.ir``'s builder API lowering uses.

``llvmlite.ir`` builds an object per instruction and formats each when the module is
printed: ~10 µs a line, most of a loop program's lowering (W9's rocket: 12.9 ms for its
gradient's 1,772 lines).  Here each instruction is its line of text as it is built, the
same text llvmlite prints (so patterns read from it, ``add_vector_variants`` and the
fast-math check see what they always saw), at ~1-2 µs.  Types and constants stay
``llvmlite.ir``'s (cheap, and printed as llvmlite prints them); functions, blocks,
values and the builder are these small classes.
"""
from __future__ import annotations

from contextlib import contextmanager

from llvmlite import ir

# comparison operators' names; icmp prefixes s/u for order, fcmp o/u for NaN
_CMP = {"==": "eq", "!=": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge"}


def _flags(flags) -> str:
    return "".join(" " + f for f in flags) if flags else ""


class Value:
    """A value: its type and how it is referred to (``%"name"``)."""
    __slots__ = ("type", "ref")

    def __init__(self, type, ref: str):
        self.type, self.ref = type, ref

    def get_reference(self) -> str:
        return self.ref


class Argument(Value):
    """A function's parameter; ``name`` may be set until the body refers to it (the name
    is then taken in the function: no value or block gets it)."""
    __slots__ = ("_name", "attributes", "_names")

    def __init__(self, type, name: str, names: set):
        super().__init__(type, "")
        self.attributes, self._names = [], names
        self.name = name

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, name: str) -> None:
        self._names.add(name)
        self._name, self.ref = name, f'%"{name}"'

    def add_attribute(self, attribute: str) -> None:
        self.attributes.append(attribute)


class Phi(Value):
    """``phi``: its incoming values are added after it is placed, so it is written last."""
    __slots__ = ("incoming",)

    def __init__(self, type, ref: str):
        super().__init__(type, ref)
        self.incoming = []

    def add_incoming(self, value, block) -> None:
        self.incoming.append((value, block))

    def __str__(self):
        arms = ", ".join(f"[{_ref(v)}, %\"{b.name}\"]" for v, b in self.incoming)
        return f"{self.ref} = phi {self.type} {arms}"


class Branch:
    """A conditional branch, which may carry loop metadata (``set_metadata``)."""
    __slots__ = ("text", "metadata")

    def __init__(self, text: str):
        self.text, self.metadata = text, ""

    def set_metadata(self, kind: str, node: str) -> None:
        self.metadata = f", !{kind} {node}"

    def __str__(self):
        return self.text + self.metadata


def _ref(value) -> str:
    return value.get_reference()


class Block:
    __slots__ = ("name", "function", "lines", "terminated")

    def __init__(self, function, name: str):
        self.name, self.function, self.lines, self.terminated = name, function, [], False


class Function:
    """A function of ``module``: a declaration until it has blocks."""

    def __init__(self, module: Module, function_type: ir.FunctionType, name: str):
        self.module, self.function_type, self.name = module, function_type, name
        self._names = set()
        self.args = [Argument(t, f".{k + 1}", self._names)
                     for k, t in enumerate(function_type.args)]
        self.attributes = set()
        self.linkage = ""
        self.blocks = []
        self._count = len(self.args)
        module.add(self)

    def get_reference(self) -> str:
        return f'@"{self.name}"'

    @property
    def type(self):
        return self.function_type

    def local(self, name: str = "") -> str:
        """A name for a new value or block, unique in this function (as llvmlite names
        them: unnamed values ``.N``, a name taken twice ``name.N``)."""
        names = self._names
        if name and name not in names:
            names.add(name)
            return name
        while True:
            self._count += 1
            made = f"{name}.{self._count}"
            if made not in names:
                names.add(made)
                return made

    def append_basic_block(self, name: str = "") -> Block:
        block = Block(self, self.local(name))
        self.blocks.append(block)
        return block

    def _head(self, keyword: str) -> str:
        params = ", ".join(f"{a.type}{''.join(' ' + x for x in a.attributes)} {a.ref}"
                           for a in self.args)
        linkage = f"{self.linkage} " if self.linkage else ""
        attributes = "".join(" " + a for a in sorted(self.attributes))
        return f'{keyword} {linkage}{self.function_type.return_type} @"{self.name}"' \
               f"({params}){attributes}"

    def __str__(self):
        if not self.blocks:
            types = ", ".join(str(t) for t in self.function_type.args)
            return f'declare {self.function_type.return_type} @"{self.name}"({types})\n'
        out = [self._head("define"), "{"]
        for block in self.blocks:
            out.append(f"{block.name}:")
            out.extend(f"  {line}" for line in block.lines)
        out.append("}")
        return "\n".join(out) + "\n"


class Module:
    def __init__(self, name: str = ""):
        self.name = name
        self.globals = {}
        self._metadata = []

    def add(self, function: Function) -> None:
        if function.name in self.globals:
            raise ValueError(f"{function.name} is defined twice in {self.name}")
        self.globals[function.name] = function

    def declare(self, name: str, function_type: ir.FunctionType) -> Function:
        """The function ``name`` (declared here if it is not yet)."""
        return self.globals.get(name) or Function(self, function_type, name)

    def loop_id(self, hints: tuple) -> str:
        """A loop's metadata node, naming itself first, with (name, number) hints."""
        own = len(self._metadata)
        nodes = [f"!{own + 1 + k}" for k in range(len(hints))]
        self._metadata.append(f"!{own} = distinct !{{!{own}, {', '.join(nodes)}}}")
        for key, v in hints:
            ty = "i1" if isinstance(v, bool) else "i32"
            self._metadata.append(f'!{len(self._metadata)} = !{{!"{key}", {ty} {int(v)}}}')
        return f"!{own}"

    def release(self) -> None:
        """Let go of the functions once the text is taken: a function and its module, and
        a block and its function, refer to each other, and a compile pauses the cyclic
        collector (a 62,500-node chain's 326 written functions, 12.6 MB of IR text, stayed
        until the compile ended)."""
        for function in self.globals.values():
            function.blocks = []
        self.globals.clear()

    def __str__(self):
        return (f'; ModuleID = "{self.name}"\ntarget triple = "unknown-unknown-unknown"\n'
                'target datalayout = ""\n\n' + "\n".join(str(g) for g in self.globals.values())
                + "".join("\n" + m for m in self._metadata) + "\n")


class Builder:
    """Appends instructions, as text, at the end of a block (or, in ``goto_entry_block``,
    before the entry block's terminator)."""

    def __init__(self, block: Block):
        self.block, self._before = block, None

    @property
    def module(self) -> Module:
        return self.block.function.module

    def append_basic_block(self, name: str = "") -> Block:
        return self.block.function.append_basic_block(name)

    def position_at_end(self, block: Block) -> None:
        self.block, self._before = block, None

    @contextmanager
    def goto_entry_block(self):
        saved = self.block, self._before
        entry = self.block.function.blocks[0]
        self.block = entry
        self._before = len(entry.lines) - 1 if entry.terminated else None
        try:
            yield
        finally:
            self.block, self._before = saved

    def _put(self, line) -> None:
        if self._before is None:
            self.block.lines.append(line)
        else:
            self.block.lines.insert(self._before, line)
            self._before += 1

    def _value(self, type, text: str, name: str = "") -> Value:
        value = Value(type, f'%"{self.block.function.local(name)}"')
        self._put(f"{value.ref} = {text}")
        return value

    def _end(self, line) -> None:
        self._put(line)
        self.block.terminated = True

    # ---- arithmetic ------------------------------------------------------------------
    def _binary(self, op, a, b, name, flags=()):
        return self._value(a.type, f"{op}{_flags(flags)} {a.type} {_ref(a)}, {_ref(b)}", name)

    def add(self, a, b, name=""): return self._binary("add", a, b, name)
    def sub(self, a, b, name=""): return self._binary("sub", a, b, name)
    def mul(self, a, b, name=""): return self._binary("mul", a, b, name)
    def urem(self, a, b, name=""): return self._binary("urem", a, b, name)
    def and_(self, a, b, name=""): return self._binary("and", a, b, name)
    def or_(self, a, b, name=""): return self._binary("or", a, b, name)
    def fadd(self, a, b, name="", flags=()): return self._binary("fadd", a, b, name, flags)
    def fsub(self, a, b, name="", flags=()): return self._binary("fsub", a, b, name, flags)
    def fmul(self, a, b, name="", flags=()): return self._binary("fmul", a, b, name, flags)
    def fdiv(self, a, b, name="", flags=()): return self._binary("fdiv", a, b, name, flags)

    def not_(self, a, name=""):
        return self._value(a.type, f"xor {a.type} {_ref(a)}, -1", name)

    def fneg(self, a, name="", flags=()):
        return self._value(a.type, f"fneg{_flags(flags)} {a.type} {_ref(a)}", name)

    def _compare(self, kind, cond, a, b, name, flags=()):
        return self._value(_I1, f"{kind}{_flags(flags)} {cond} {a.type} {_ref(a)}, "
                                f"{_ref(b)}", name)

    def icmp_signed(self, op, a, b, name=""):
        return self._compare("icmp", _CMP[op] if op in ("==", "!=") else "s" + _CMP[op],
                             a, b, name)

    def icmp_unsigned(self, op, a, b, name=""):
        return self._compare("icmp", _CMP[op] if op in ("==", "!=") else "u" + _CMP[op],
                             a, b, name)

    def fcmp_ordered(self, op, a, b, name="", flags=()):
        return self._compare("fcmp", "o" + _CMP[op], a, b, name, flags)

    def fcmp_unordered(self, op, a, b, name="", flags=()):
        return self._compare("fcmp", "u" + _CMP[op], a, b, name, flags)

    def select(self, cond, a, b, name="", flags=()):
        return self._value(a.type, f"select{_flags(flags)} i1 {_ref(cond)}, {a.type} "
                                   f"{_ref(a)}, {b.type} {_ref(b)}", name)

    def phi(self, type, name="") -> Phi:
        value = Phi(type, f'%"{self.block.function.local(name)}"')
        self._put(value)
        return value

    # ---- conversions -----------------------------------------------------------------
    def _cast(self, op, a, type, name):
        return self._value(type, f"{op} {a.type} {_ref(a)} to {type}", name)

    def fpext(self, a, type, name=""): return self._cast("fpext", a, type, name)
    def fptrunc(self, a, type, name=""): return self._cast("fptrunc", a, type, name)
    def uitofp(self, a, type, name=""): return self._cast("uitofp", a, type, name)

    # ---- memory ----------------------------------------------------------------------
    def gep(self, pointer, indices, source_etype, name="", inbounds=False):
        at = "".join(f", {i.type} {_ref(i)}" for i in indices)
        keyword = "getelementptr inbounds" if inbounds else "getelementptr"
        return self._value(_PTR, f"{keyword} {source_etype}, ptr {_ref(pointer)}{at}", name)

    def load(self, pointer, typ, name=""):
        return self._value(typ, f"load {typ}, ptr {_ref(pointer)}", name)

    def store(self, value, pointer) -> None:
        self._put(f"store {value.type} {_ref(value)}, ptr {_ref(pointer)}")

    def alloca(self, type, size=None, name=""):
        count = f", i32 {size}" if size is not None else ""
        return self._value(_PTR, f"alloca {type}{count}", name)

    # ---- calls and control -------------------------------------------------------------
    def call(self, fn, args, name="", fastmath=()):
        ret = fn.function_type.return_type
        text = f"call{_flags(fastmath)} {ret} {fn.get_reference()}(" + \
            ", ".join(f"{a.type} {_ref(a)}" for a in args) + ")"
        if isinstance(ret, ir.VoidType):
            self._put(text)
            return None
        return self._value(ret, text, name)

    def branch(self, target: Block) -> None:
        self._end(f'br label %"{target.name}"')

    def cbranch(self, cond, yes: Block, no: Block) -> Branch:
        line = Branch(f'br i1 {_ref(cond)}, label %"{yes.name}", label %"{no.name}"')
        self._end(line)
        return line

    def ret(self, value) -> None:
        self._end(f"ret {value.type} {_ref(value)}")

    def ret_void(self) -> None:
        self._end("ret void")

    def insert_text(self, text: str) -> None:
        """Instructions written elsewhere (member patterns), placed here as they are."""
        self._put(text)


_I1, _PTR = ir.IntType(1), ir.PointerType()
