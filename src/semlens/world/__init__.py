"""The concept world: rendered images with known concepts, their ground truth, the world's
classifier and foundation model, and the offline demo that checks semlens against that truth.
"""

from . import specs  # noqa: F401  (registers the world's spec forms)
