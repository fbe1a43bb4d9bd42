"""Figures and the static HTML report."""
