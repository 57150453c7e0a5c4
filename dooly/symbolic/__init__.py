"""SymPy side of Dooly: symbol kinds and dimension labels."""
