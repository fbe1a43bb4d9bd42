"""Small shared helpers: errors, progress bars, caches, devices, fingerprints, spec registries.

Nothing here knows about models, Lenses or analyses; every other package may import it.
"""
