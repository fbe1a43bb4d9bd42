"""The Lens directory (store, manifest, fingerprints, trust), its probes and search index, and ``Lens``:
loading (lens.py) plus one module per topic of questions (arrays, examples, search, labels, measures, audits).
"""
