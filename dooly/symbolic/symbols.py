"""The one place that knows symbol kinds. Request symbols are what a batch sets;
config symbols stand for a config field. All are integer and positive, so SymPy
can simplify `FloorDiv`, `Mod` and products the way shapes need."""
from __future__ import annotations

import ast
import enum
import functools
import operator

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


# Bounds on a stored expression: real dims are a symbol times a small constant ("T",
# "2*B", "T*9"), so anything far beyond these is refused before SymPy computes it
# (a stored `2**2**40` or a 10,000-digit integer would otherwise hang or exhaust memory).
MAX_EXPR_CHARS = 256
MAX_EXPR_DEPTH = 32
MAX_EXPR_INT = 2**63 - 1      # any integer in the expression, given or computed
MAX_EXPR_DEGREE = 16          # total degree in the request symbols


def _floordiv(a: sympy.Expr, b: sympy.Expr) -> sympy.Expr:
    if b == 0:
        raise ValueError("division by zero")
    return sympy.floor(a / b)


def _power(a: sympy.Expr, b: sympy.Expr) -> sympy.Expr:
    # the result's size is bounded before it is computed: 2**2**40 never runs
    top = 64 if a.is_Integer else MAX_EXPR_DEGREE
    if not (b.is_Integer and 0 <= int(b) <= top):
        raise ValueError(f"exponent {str(b)[:20]} is not an integer in [0, {top}]")
    if a.is_Integer and abs(int(a)) > 1 and int(b) * (abs(int(a)).bit_length() - 1) > 63:
        raise ValueError(f"integer above {MAX_EXPR_INT}")
    return a**b


_BINOPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.FloorDiv: _floordiv,
    ast.Pow: _power,
}


def _bounded(expr: sympy.Expr) -> sympy.Expr:
    """`expr` when every number in it is finite and within MAX_EXPR_INT."""
    for n in expr.atoms(sympy.Number):
        if not n.is_finite or not (n.is_Integer or n.is_Rational):
            raise ValueError(f"not a finite rational number: {str(n)[:20]}")
        if max(abs(int(n.p)), abs(int(n.q))) > MAX_EXPR_INT:
            raise ValueError(f"integer above {MAX_EXPR_INT}")
    return expr


def parse_request_expr(text: str) -> sympy.Expr:
    """Parse a stored request expression ("T", "2*T", "B + 1") from a plan or DB file.
    A small AST walk, not `sympify`: stored files are data and are never evaluated.
    Bounded (length, nesting, integer size, exponent and degree): anything outside the
    bounds, or any other syntax, is a ValueError, never a long computation."""
    if not isinstance(text, str):
        raise ValueError(f"request expression: expected text, got {type(text).__name__}")
    shown = repr(text[:40]) + ("..." if len(text) > 40 else "")
    if len(text) > MAX_EXPR_CHARS:
        raise ValueError(f"request expression {shown}: longer than {MAX_EXPR_CHARS} characters")

    def walk(node: ast.AST, depth: int) -> tuple[sympy.Expr, int]:
        """(expression, upper bound on its degree in the request symbols)"""
        if depth > MAX_EXPR_DEPTH:
            raise ValueError(f"nested deeper than {MAX_EXPR_DEPTH}")
        if isinstance(node, ast.Constant) and type(node.value) is int:
            if abs(node.value) > MAX_EXPR_INT:
                raise ValueError(f"integer above {MAX_EXPR_INT}")
            return sympy.Integer(node.value), 0
        if isinstance(node, ast.Name) and node.id in REQUEST_SYMBOLS:
            return REQUEST_SYMBOLS[node.id], 1
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            e, d = walk(node.operand, depth + 1)
            return (-e if isinstance(node.op, ast.USub) else e), d
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            (a, da), (b, db) = walk(node.left, depth + 1), walk(node.right, depth + 1)
            kind = type(node.op)
            degree = (da + db if kind is ast.Mult else da * int(b) if kind is ast.Pow and b.is_Integer
                      else max(da, db))
            if degree > MAX_EXPR_DEGREE:
                raise ValueError(f"degree above {MAX_EXPR_DEGREE}")
            return _bounded(_BINOPS[kind](a, b)), degree
        raise ValueError(f"unsupported element {ast.dump(node)[:40]}")

    try:
        tree = ast.parse(text, mode="eval")
        expr, _ = walk(tree.body, 0)
    except ValueError as err:
        raise ValueError(f"request expression {shown}: {err}") from None
    except (SyntaxError, RecursionError, MemoryError, OverflowError, TypeError) as err:
        raise ValueError(f"request expression {shown}: not an expression "
                         f"({type(err).__name__})") from None
    return expr


_INT_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
            ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow}


@functools.lru_cache(maxsize=4096)
def _checked_tree(text: str) -> ast.AST:
    parse_request_expr(text)   # inside the bounds, or a ValueError
    return ast.parse(text, mode="eval").body


def _int_value(node: ast.AST, values: dict) -> int:
    # integer arithmetic on the checked tree: a cost estimate or a grid evaluates the same
    # few stored dims at thousands of points, where SymPy's subs would take seconds
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return values[node.id]
    if isinstance(node, ast.UnaryOp):
        v = _int_value(node.operand, values)
        return -v if isinstance(node.op, ast.USub) else v
    return _INT_OPS[type(node.op)](_int_value(node.left, values), _int_value(node.right, values))


def evaluate(text_or_int: "str | int", **values: int) -> int:
    """Value of a stored dim at a request point, e.g. evaluate("2*T", T=16) == 32."""
    if isinstance(text_or_int, int) and not isinstance(text_or_int, bool):
        return text_or_int
    tree = _checked_tree(text_or_int)
    try:
        return int(_int_value(tree, {k: int(v) for k, v in values.items() if k in REQUEST_SYMBOLS}))
    except KeyError:
        missing = sorted(n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id not in values)
        raise ValueError(f"request expression {text_or_int!r}: no value for {missing}") from None
    except ZeroDivisionError:
        raise ValueError(f"request expression {text_or_int!r}: division by zero at {values}") from None
