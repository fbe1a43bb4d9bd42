"""The concept world's spec forms: ``world:`` data, ``world`` foundation models and its ``zoo:`` classifiers,
registered here with the registries of the packages below, which know nothing of the world."""

from __future__ import annotations

from typing import Callable

import torch

from ..data import DATASETS, ImageData
from ..foundation import FOUNDATION_MODELS, FoundationModel
from ..model.loading import ZOO_MODELS, LoadedModel

WORLD_MODELS = ("world-cnn", "world-cnn-clean", "world-resnet", "world-resnet-clean")


@DATASETS.register("world", "world:[CONFIG][:COUNT][:SPLIT]", "the rendered concept world (default config, 2000 probe images)")
def _world_data(rest: str) -> ImageData:
    from .render import parse_world_spec

    return parse_world_spec(rest)


@FOUNDATION_MODELS.register("world", "world[:CONFIG]", "the concept world's image-text model (trained once, cached)")
def _world_foundation(rest: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> FoundationModel:
    from .foundation import load_world_foundation
    from .vocabulary import world_vocabulary

    model = load_world_foundation(rest or None, device=device, dtype=dtype)
    model.vocabulary = world_vocabulary(model.config)  # its captions' words: the built-in ones labelled rings "mane", "guitar"
    return model


def _world_classifier(name: str) -> Callable[[str], LoadedModel]:
    """The loader of ``zoo:NAME[:WORLD_CONFIG]``: the world's classifier, trained once and cached."""

    def load(world: str) -> LoadedModel:
        from .classifier import architecture_of, world_model
        from .render import WorldConfig

        config = WorldConfig.load(world or None)
        module, preprocessing = world_model(config, architecture_of(name), clean=name.endswith("-clean"))
        return LoadedModel(module, f"zoo:{name}" + (f":{world}" if world else ""), preprocessing, list(config.classes))

    return load


ZOO_MODELS.update({name: _world_classifier(name) for name in WORLD_MODELS})
