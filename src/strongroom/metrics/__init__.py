"""Prometheus metrics of every Strongroom process (node, agent, KMS gateway): the names
(:mod:`.names`), the listener that serves them (:mod:`.server`) and the one-line hooks the
processes call (:mod:`.node`, :mod:`.agent`, :mod:`.kms`, :mod:`.store`, :mod:`.audit`).
docs/metrics.md is the table of every name.

This package sits low: it imports nothing of Strongroom above ``pki``/``constants``/``errors``,
so that the store and the audit log can count what they do.
"""
