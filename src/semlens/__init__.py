"""semlens: turn a model's components into a searchable, auditable map of what they encode.

Build a Lens (one pass over probe data, then the foundation model over the concept examples)::

    from semlens import BuildConfig, build_lens

    lens = build_lens(BuildConfig(model="zoo:efficientnet-lite0", layers=["_conv_head", "_fc"],
                                  data="folder:./images", foundation="conse"), out="my.lens")
    lens.arrays.theta("_fc")                         # [units, d] semantic embeddings
    lens.examples.concept_examples("_fc/281")          # top samples of a unit, with crop boxes
"""

__version__ = "0.1.0"

from ._util.torchvision_compat import patch_torchvision_ops

patch_torchvision_ops()  # before anything imports transformers (which imports torchvision)

from ._util.errors import SemlensError
from .analysis.audit import AlignmentRule, Audit, AuditedUnit
from .analysis.compare import Comparison
from .analysis.explain import Explanation
from .analysis.label import Labels
from .analysis.measures import Measures
from .analysis.overview import OverviewMap
from .analysis.spaces import SpaceComparison
from .analysis.vocabulary import Vocabulary
from .data import ImageData, list_datasets, load_data
from .foundation import FoundationModel, list_foundation_models, load_foundation_model
from .interventions.effects import Artifact, ConceptImages
from .lens.audits import RelevantUnit, RelevantUnits
from .lens.clusters import ConceptCluster, UnitClusters
from .lens.correction import Correction, load_correction
from .lens.examples import ConceptExample
from .lens.export import ExportResult
from .lens.labels import Labelling
from .lens.lens import Lens
from .lens.search import SearchHit, SearchResults
from .model.loading import LoadedModel, list_models, load_model
from .model.preprocess import Preprocessing
from .model.units import LayerSpec, list_layers
from .pipeline.builder import BuildConfig, BuildSummary, build_lens
from .pipeline.spaces import add_space
from .relevance.graph import AttributionGraph
from .report import notebook as _notebook  # noqa: F401  (results draw themselves in a notebook: _repr_html_)
from .world import specs as _world_specs  # noqa: F401  (the concept world's spec forms: world:, zoo:world-cnn, ...)

__all__ = [
    # build a Lens
    "BuildConfig",
    "BuildSummary",
    "build_lens",
    "add_space",
    "Lens",
    # what it is built from
    "FoundationModel",
    "ImageData",
    "LayerSpec",
    "LoadedModel",
    "Preprocessing",
    "Vocabulary",
    # what an audit's concept test pastes in, and where
    "Artifact",
    "ConceptImages",
    # the answers (each has to_dict())
    "AlignmentRule",
    "AttributionGraph",
    "Audit",
    "AuditedUnit",
    "Comparison",
    "ConceptCluster",
    "ConceptExample",
    "Correction",
    "Explanation",
    "ExportResult",
    "Labelling",
    "Labels",
    "Measures",
    "OverviewMap",
    "RelevantUnit",
    "RelevantUnits",
    "SearchHit",
    "SearchResults",
    "SpaceComparison",
    "UnitClusters",
    # registries and loaders
    "SemlensError",
    "list_datasets",
    "list_foundation_models",
    "list_layers",
    "list_models",
    "load_correction",
    "load_data",
    "load_foundation_model",
    "load_model",
]
