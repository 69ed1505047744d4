"""Deterministic, model-free evaluation of the default model (prompt adherence)."""
