"""The Lens directory (store, manifest, fingerprints), its probes and search index, and ``Lens``:
loading plus short delegations to the analyses.
"""
