"""Analyses over a Lens: pure functions over arrays (torch), no I/O.

probes (templates, null embedding, alignment), search, label and dissect, interpretability
measures, compare, overview map.
"""
