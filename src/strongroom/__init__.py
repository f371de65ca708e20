"""Strongroom: a self-hosted, clustered software HSM."""

__version__ = "0.1.0"
