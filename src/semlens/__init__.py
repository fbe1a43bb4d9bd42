"""semlens: turn a model's components into a searchable, auditable map of what they encode.

Build a Lens (one pass over probe data, then the foundation model over the concept examples)::

    from semlens import BuildConfig, build_lens

    lens = build_lens(BuildConfig(model="zoo:efficientnet-lite0", layers=["_conv_head", "_fc"],
                                  data="folder:./images", foundation="conse"), out="my.lens")
    lens.theta("_fc")                         # [units, d] semantic embeddings
    lens.concept_examples("_fc/281")          # top samples of a unit, with crop boxes
"""

__version__ = "0.1.0"

from ._util.torchvision_compat import patch_torchvision_ops

patch_torchvision_ops()  # before anything imports transformers (which imports torchvision)

from ._util.errors import SemlensError
from .build.builder import BuildConfig, BuildSummary, build_lens
from .build.collect import Collector, TopK, collect_topk
from .build.spaces import add_space
from .data import ImageData, list_datasets, load_data
from .foundation import FoundationModel, list_foundation_models, load_foundation_model
from .lens.correction import Correction, load_correction
from .lens.examples import ConceptExample
from .lens.lens import Lens
from .model.loading import LoadedModel, list_models, load_model
from .model.preprocess import Preprocessing
from .model.units import LayerSpec, list_layers

__all__ = [
    "BuildConfig",
    "BuildSummary",
    "Collector",
    "ConceptExample",
    "Correction",
    "FoundationModel",
    "ImageData",
    "LayerSpec",
    "Lens",
    "LoadedModel",
    "Preprocessing",
    "SemlensError",
    "TopK",
    "add_space",
    "build_lens",
    "collect_topk",
    "list_datasets",
    "list_foundation_models",
    "list_layers",
    "list_models",
    "load_correction",
    "load_data",
    "load_foundation_model",
    "load_model",
]
