"""The one place that knows symbol kinds. Request symbols are what a batch sets;
config symbols stand for a config field. All are integer and positive, so SymPy
can simplify `FloorDiv`, `Mod` and products the way shapes need."""
from __future__ import annotations

import ast
import enum

import sympy


class SymKind(enum.Enum):
    TOKENS = "tokens"          # T: tokens scheduled in the step (flattened)
    SEQS = "seqs"              # B: sequences in the step
    QUERY = "query"            # Q: per-sequence query length (attention)
    CONTEXT = "context"        # C: per-sequence context length (attention)
    CONFIG = "config"          # a model-config field


# Prefix table (as PyTorch's symbol.py): the name of a request symbol is its prefix.
PREFIX = {
    SymKind.TOKENS: "T",
    SymKind.SEQS: "B",
    SymKind.QUERY: "Q",
    SymKind.CONTEXT: "C",
    SymKind.CONFIG: "cfg_",
}
REQUEST_KINDS = (SymKind.TOKENS, SymKind.SEQS, SymKind.QUERY, SymKind.CONTEXT)


def make_symbol(kind: SymKind, field: str | None = None) -> sympy.Symbol:
    if kind is SymKind.CONFIG:
        if not field:
            raise ValueError("field: a config symbol needs its config field name")
        return sympy.Symbol(PREFIX[kind] + field, integer=True, positive=True)
    return sympy.Symbol(PREFIX[kind], integer=True, positive=True)


T = make_symbol(SymKind.TOKENS)
B = make_symbol(SymKind.SEQS)
Q = make_symbol(SymKind.QUERY)
C = make_symbol(SymKind.CONTEXT)
REQUEST_SYMBOLS = {s.name: s for s in (T, B, Q, C)}


def kind_of(sym: sympy.Symbol) -> SymKind:
    name = sym.name
    if name.startswith(PREFIX[SymKind.CONFIG]):
        return SymKind.CONFIG
    for kind in REQUEST_KINDS:
        if name == PREFIX[kind]:
            return kind
    raise ValueError(f"symbol: {name!r} has no known kind prefix")


def config_field(sym: sympy.Symbol) -> str:
    if kind_of(sym) is not SymKind.CONFIG:
        raise ValueError(f"symbol: {sym.name!r} is not a config symbol")
    return sym.name[len(PREFIX[SymKind.CONFIG]):]


def is_request(sym: sympy.Symbol) -> bool:
    return kind_of(sym) is not SymKind.CONFIG


_BINOPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.FloorDiv: lambda a, b: sympy.floor(a / b),
    ast.Pow: lambda a, b: a**b,
}


def parse_request_expr(text: str) -> sympy.Expr:
    """Parse a stored request expression ("T", "2*T", "B + 1") from a plan or DB file.
    A small AST walk, not `sympify`: stored files are data and are never evaluated."""
    def walk(node: ast.AST) -> sympy.Expr:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return sympy.Integer(node.value)
        if isinstance(node, ast.Name) and node.id in REQUEST_SYMBOLS:
            return REQUEST_SYMBOLS[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        raise ValueError(f"request expression {text!r}: unsupported element {ast.dump(node)[:40]}")

    return walk(ast.parse(str(text), mode="eval"))


def evaluate(text_or_int: "str | int", **values: int) -> int:
    """Value of a stored dim at a request point, e.g. evaluate("2*T", T=16) == 32."""
    if isinstance(text_or_int, int):
        return text_or_int
    expr = parse_request_expr(text_or_int)
    return int(expr.subs({REQUEST_SYMBOLS[k]: v for k, v in values.items()}))
