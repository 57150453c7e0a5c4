"""Dooly: configuration-agnostic, redundancy-aware profiling for LLM inference simulation."""
__version__ = "0.1.0"
