"""Symbolic: SymPy symbol kinds (one prefix table), dim labels CONFIG / REQUEST / MIXED,
the safe parser for stored request expressions, and the perturbed-config field matcher.
May import: sympy only (and the standard library)."""
