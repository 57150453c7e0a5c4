"""Dimension labels: CONFIG (fixed by the model config), REQUEST (set by the batch)
or MIXED (both, e.g. a flattened [T*heads] view)."""
from __future__ import annotations

import enum
from dataclasses import dataclass

import sympy

from dooly.symbolic.symbols import SymKind, config_field, kind_of


class Label(str, enum.Enum):
    CONFIG = "CONFIG"
    REQUEST = "REQUEST"
    MIXED = "MIXED"


@dataclass(frozen=True)
class DimLabel:
    """One dim of one tensor. `value_or_expr` is an int for CONFIG dims and the
    canonical request expression (config values substituted) otherwise."""

    value_or_expr: int | str
    label: Label
    config_fields: tuple[str, ...] = ()

    def __post_init__(self):
        if not isinstance(self.label, Label):
            raise ValueError(f"label: expected a Label, got {self.label!r}")
        if self.label is Label.CONFIG and not isinstance(self.value_or_expr, int):
            raise ValueError(f"value_or_expr: a CONFIG dim is an int, got {self.value_or_expr!r}")
        if self.label is not Label.CONFIG and not isinstance(self.value_or_expr, str):
            raise ValueError(f"value_or_expr: a {self.label.value} dim is an expression string")

    def to_json(self) -> dict:
        return {"value_or_expr": self.value_or_expr, "label": self.label.value,
                "config_fields": list(self.config_fields)}


def canonical(expr: sympy.Expr) -> str:
    """Deterministic text of a request expression; symbol names are already canonical."""
    return sympy.sstr(sympy.expand(expr), order="lex")


def label_dim(expr: sympy.Expr | int, hints: dict[sympy.Symbol, int] | None = None,
              fields_of_constant: tuple[str, ...] = ()) -> DimLabel:
    """Label one dim. `hints` gives each config symbol's value in this model;
    `fields_of_constant` names the config fields a plain integer came from, when a
    second (perturbed) capture told us."""
    # an int or SymPy expression from a live capture (label_pass), never text from a
    # file: stored dims are parsed by symbols.parse_request_expr
    expr = sympy.sympify(expr)
    hints = hints or {}
    syms = expr.free_symbols
    cfg = {s for s in syms if kind_of(s) is SymKind.CONFIG}
    req = syms - cfg
    fields = tuple(sorted(config_field(s) for s in cfg)) or tuple(fields_of_constant)
    concrete = expr.subs({s: hints[s] for s in cfg if s in hints})
    if not req:
        if concrete.free_symbols:
            raise ValueError(f"hints: no value for config symbols {sorted(map(str, concrete.free_symbols))}")
        return DimLabel(int(concrete), Label.CONFIG, fields)
    if not cfg and not fields_of_constant:
        return DimLabel(canonical(expr), Label.REQUEST)
    # A product with a config factor (e.g. T*num_heads) is MIXED; the stored expr
    # keeps the config value so two models with the same value share the key.
    return DimLabel(canonical(concrete), Label.MIXED, fields)
