"""Mechanism layer: one module per family, each registering its mechanisms (see base.py)."""
