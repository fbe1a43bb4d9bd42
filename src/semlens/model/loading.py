"""Models under study, selected by spec strings, with the preprocessing they expect.

=========================================  ===============================================================
``zoo:efficientnet-lite0``                 bundled ImageNet EfficientNet-Lite0 (also lite1, lite2; the concept
                                           world adds its classifiers: ``semlens.world.specs``)
``py:package.module:factory[:SIZE]``       your callable returning an ``nn.Module`` or a LoadedModel
``torchvision:NAME[:WEIGHTS]``             torchvision model; WEIGHTS an enum name (default DEFAULT),
                                           ``none`` or a state-dict file (extra ``semlens[torchvision]``)
``timm:NAME[:pretrained|none|PATH]``       timm model (extra ``semlens[timm]``)
``hf:NAME_OR_PATH``                        transformers image classifier: a hub id or a ``save_pretrained``
                                           folder, safetensors weights only
``corrected:FILE[:MODEL_SPEC]``            a model with a correction (``semlens correct --out FILE``) in it; the
                                           model FILE records, or MODEL_SPEC (registered by ``lens.correction``)
=========================================  ===============================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
from torch import nn

from .._util.errors import SpecError, warn_caller
from .._util.fingerprint import hash_module_weights
from .._util.hub import offline_unless_reachable
from .._util.imports import call_factory, import_object, import_optional
from .._util.seeded import seeded_weights
from .._util.specs import SpecForm, SpecRegistry, described, in_memory_spec, register_in_memory
from .imagenet import imagenet_classes, model_class_index
from .logits import configured_classes, example_batch, returning_logits
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, preprocessing_of
from .zoo import VARIANTS as LITE_VARIANTS
from .zoo import efficientnet_lite


@dataclass
class LoadedModel:
    """A model in eval mode, its input preprocessing, and class names when it is a classifier."""

    module: nn.Module
    spec: str
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    classes: list[str] | None = None
    classes_assumed: bool = False  # ImageNet's, taken for a model object that scores 1000 classes and names none

    @property
    def fingerprint(self) -> str:
        """Hash of the weights as they are now: a Lens records it to detect a changed model. Hashed again only where a
        weight changed in place, or was replaced, since (a notebook that trains the model on after building its Lens)."""
        state = self._weights_state()
        if self.__dict__.get("_hashed_state") == state:
            return self.__dict__["_fingerprint"]
        fingerprint = hash_module_weights(self.module)
        if self._weights_state() == state:  # kept only where nothing changed the weights while they were hashed
            self.__dict__["_fingerprint"], self.__dict__["_hashed_state"] = fingerprint, state
        return fingerprint

    def _weights_state(self) -> tuple[tuple[str, int, int, int], ...]:
        """Each weight's name, identity, storage and in-place version counter: changes where a weight is changed in
        place, replaced, or given other storage (``.data = ...``)."""
        return tuple(
            (name, id(tensor), tensor.data_ptr(), tensor._version) for name, tensor in self.module.state_dict(keep_vars=True).items()
        )

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """Zeros of the model's input shape ``[batch, 3, size, size]``, to trace or check it."""
        size = self.preprocessing.input_size
        return torch.zeros(batch, 3, size, size)


MODELS: SpecRegistry[LoadedModel] = SpecRegistry("model")


#: the ready models of ``zoo:NAME[:REST]`` by NAME, each a loader of REST; the concept world adds its
#: classifiers (``semlens.world.specs``)
ZOO_MODELS: dict[str, Callable[[str], LoadedModel]] = {}
#: what a model spec's WEIGHTS part ends with when it names a file (a file that exists is one whatever its name)
WEIGHT_FILE_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


def _lite_loader(name: str) -> Callable[[str], LoadedModel]:
    def load(rest: str) -> LoadedModel:
        module, preprocessing = efficientnet_lite(name)
        return LoadedModel(module, f"zoo:{name}" + (f":{rest}" if rest else ""), preprocessing, imagenet_classes())

    return load


ZOO_MODELS.update({name: _lite_loader(name) for name in LITE_VARIANTS})


@MODELS.register("zoo", "zoo:NAME[:WORLD_CONFIG]", "ready models by name: EfficientNet-Lite0/1/2 (ImageNet), the concept world's classifiers")
def _zoo(rest: str) -> LoadedModel:
    name, _, more = rest.partition(":")
    if name not in ZOO_MODELS:
        raise SpecError(f"unknown zoo model {name!r}; available: {', '.join(ZOO_MODELS)}")
    return ZOO_MODELS[name](more)


@MODELS.register(
    "py", "py:package.module:factory[:SIZE]", "your nn.Module or LoadedModel, or a callable returning one (ImageNet preprocessing for a module); SIZE: input side (resize 256/224 of it)"
)
def _python(rest: str) -> LoadedModel:
    target, size = _python_input_size(rest)
    found = import_object(target, "model")
    made = found if isinstance(found, (nn.Module, LoadedModel)) else call_factory(found, target, "model")  # a module itself, or its factory
    if isinstance(made, nn.Module):
        if size is not None:
            preprocessing = sized(Preprocessing(), size)
        elif (configured := configured_preprocessing(made)) is not None:
            preprocessing, source = configured
            warn_caller(f"model py:{rest}: {source} preprocessing ({preprocessing.described()}); give the input side after the factory (py:{rest}:SIZE) if it takes another")
        else:
            preprocessing = Preprocessing()
        return module_as_loaded(made, f"py:{rest}", preprocessing)
    if not isinstance(made, LoadedModel):
        raise SpecError(f"py:{rest} returned {type(made).__name__}, not an nn.Module or semlens.LoadedModel")
    return made if size is None else replace(made, spec=f"py:{rest}", preprocessing=sized(made.preprocessing, size))


def sized(preprocessing: Preprocessing, size: int) -> Preprocessing:
    """``preprocessing`` for an input side of ``size`` (resized to 256/224 of it first, as ImageNet's)."""
    return replace(preprocessing, input_size=size, resize=round(size * 256 / 224))


def _python_input_size(rest: str) -> tuple[str, int | None]:
    """``package.module:factory[:SIZE]`` split into the import path and the input side (None: the default)."""
    target, separator, size = rest.rpartition(":")
    if not separator or ":" not in target:
        return rest, None
    if not size.isdecimal() or int(size) < 1:
        raise SpecError(f"py:{rest}: the input size after the factory must be a positive integer (e.g. py:pkg.models:net:128)")
    return target, int(size)


@MODELS.register("torchvision", "torchvision:NAME[:WEIGHTS]", "torchvision model; WEIGHTS DEFAULT, an enum name, none or a file")
def _torchvision(rest: str) -> LoadedModel:
    name, _, weights = rest.partition(":")
    tv_models = import_optional("torchvision.models", "torchvision", f"torchvision:{rest}")
    if name not in tv_models.list_models():
        raise SpecError(f"torchvision has no model {name!r}; see torchvision.models.list_models()")
    weights = weights or "DEFAULT"
    if weights.lower() == "none" or _names_a_file(weights):
        with seeded_weights():
            module = tv_models.get_model(name, weights=None)
        preprocessing, classes = Preprocessing(), None
        if weights.lower() != "none":
            _load_state_file(module, weights, "DEFAULT, none, a weights enum name or an existing file")
    else:
        try:
            enum = tv_models.get_model_weights(name)[weights] if weights != "DEFAULT" else tv_models.get_model_weights(name).DEFAULT
        except KeyError:
            valid = ", ".join(member.name for member in tv_models.get_model_weights(name))
            raise SpecError(f"torchvision model {name} has no weights {weights!r}; valid: DEFAULT, none, a file, {valid}") from None
        module = _downloading(lambda: tv_models.get_model(name, weights=enum), f"torchvision:{rest}", f"torchvision:{name}:none", hub=False)
        preprocessing = preprocessing_of(enum.transforms())
        classes = list(enum.meta.get("categories") or []) or None
    loaded = LoadedModel(module.eval(), f"torchvision:{rest}", preprocessing, classes)
    if classes is None and model_outputs(loaded) == 1000:  # an ImageNet architecture, as timm's are named
        loaded.classes, loaded.classes_assumed = imagenet_classes(), True
    return loaded


@MODELS.register("timm", "timm:NAME[:pretrained|none|PATH]", "timm model (default pretrained)")
def _timm(rest: str) -> LoadedModel:
    name, _, weights = rest.partition(":")
    timm = import_optional("timm", "timm", f"timm:{rest}")
    if not timm.is_model(name):
        raise SpecError(f"timm has no model {name!r}; see timm.list_models('*pattern*')")
    weights = weights or "pretrained"
    with seeded_weights():
        module = _downloading(lambda: timm.create_model(name, pretrained=weights == "pretrained"), f"timm:{rest}", f"timm:{name}:none", weights == "pretrained")
    if weights not in ("pretrained", "none"):
        _load_state_file(module, weights, "pretrained, none or an existing file")
    preprocessing = timm_preprocessing(import_optional("timm.data", "timm", f"timm:{rest}").resolve_data_config({}, model=module))
    classes = imagenet_classes() if getattr(module, "num_classes", None) == 1000 else None
    return LoadedModel(module.eval(), f"timm:{rest}", preprocessing, classes)


def timm_preprocessing(config: dict[str, Any]) -> Preprocessing:
    """The views a timm model's data config (``pretrained_cfg``) asks for: its input side, its crop share, its mean and std."""
    size = int(config["input_size"][-1])
    return Preprocessing(
        input_size=size,
        resize=int(round(size / config.get("crop_pct", 0.875))),
        mean=tuple(config.get("mean", IMAGENET_MEAN)),
        std=tuple(config.get("std", IMAGENET_STD)),
    )


def configured_preprocessing(module: nn.Module) -> tuple[Preprocessing, str] | None:
    """The preprocessing a model object's own config names, and where it comes from; None where it names none.
    A timm model's ``pretrained_cfg`` (a ViT at mean 0.5, a ResNet at 288 px), without importing timm: a patch
    model made for another side (``img_size=64``: its config still says 224) is viewed at the side its patch
    embedding takes. A transformers model's ``config.image_size`` (a ViT made for 64 px refuses 224): that side,
    resized to it, at ImageNet's mean and std (its image processor, which holds them, is not part of the model)."""
    config = getattr(module, "pretrained_cfg", None)
    if isinstance(config, dict) and len(config.get("input_size") or ()) == 3:
        made_for = getattr(getattr(module, "patch_embed", None), "img_size", None)
        if isinstance(made_for, tuple) and len(made_for) == 2 and made_for[0] == made_for[1] and isinstance(made_for[0], int):
            config = {**config, "input_size": (3, *made_for)}
        try:
            return timm_preprocessing(config), "its pretrained_cfg's"
        except (TypeError, ValueError):  # a config of another shape: ImageNet's, said
            return None
    side = getattr(getattr(module, "config", None), "image_size", None)
    if isinstance(side, (list, tuple)) and len(side) == 2 and side[0] == side[1]:
        side = side[0]
    if isinstance(side, int) and not isinstance(side, bool) and side > 0:
        return Preprocessing(input_size=side, resize=side), f"its config's image_size {side} with ImageNet's mean and std"
    return None


class ClassifierLogits(nn.Module):
    """A transformers image classifier as semlens reads a model: pixels in, logits out (its own forward
    returns an output object). Its layers are named under ``classifier.``."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.classifier(pixel_values=pixels).logits


@MODELS.register("hf", "hf:NAME_OR_PATH", "transformers image classifier: a hub id or a save_pretrained folder (safetensors weights only)")
def _transformers(rest: str) -> LoadedModel:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from .._util.hub import hub_source, load_pretrained, silence_transformers_progress

    silence_transformers_progress()
    source = hub_source(rest)
    # safetensors only: a pickled checkpoint from someone else could run code when loaded
    classifier = load_pretrained(AutoModelForImageClassification.from_pretrained, source, rest, "its weights", dtype=torch.float32, use_safetensors=True)
    processor = load_pretrained(AutoImageProcessor.from_pretrained, source, rest, "its image processor")
    labels = classifier.config.id2label
    classes = [str(labels[index]) for index in range(len(labels))] if labels else None
    return LoadedModel(ClassifierLogits(classifier).eval(), f"hf:{rest}", _processor_preprocessing(processor), classes)


def _processor_preprocessing(processor: object) -> Preprocessing:
    """A transformers image processor's resize, crop and normalisation as semlens's: the crop (or, without one,
    the size it resizes to) is the input side; the shorter side is resized to its ``shortest_edge`` (or to the
    input side: a processor that resizes to a fixed height and width without a crop squashes the image, where
    semlens crops its centre)."""

    def side(sizes: object) -> int | None:
        if isinstance(sizes, dict):
            return sizes.get("height") or sizes.get("shortest_edge")
        return getattr(sizes, "height", None) or getattr(sizes, "shortest_edge", None)

    resize = side(getattr(processor, "size", None)) or 224
    crop = side(getattr(processor, "crop_size", None)) if getattr(processor, "do_center_crop", False) else None
    return Preprocessing(
        input_size=int(crop or resize),
        resize=int(max(resize, crop or 0)),
        mean=tuple(getattr(processor, "image_mean", None) or IMAGENET_MEAN),
        std=tuple(getattr(processor, "image_std", None) or IMAGENET_STD),
    )


def _downloading(build: Callable[[], nn.Module], spec: str, random: str, hub: bool = True) -> nn.Module:
    """``build()``, which may fetch published weights (from the Hugging Face hub where ``hub``: see
    ``offline_unless_reachable``): without the network that fails deep in a download library, so the error says
    what the spec needs and what works offline."""
    try:
        with offline_unless_reachable(hub):
            return build()
    except OSError as error:  # urllib's URLError and the hub's missing-entry errors are OSErrors
        raise SpecError(
            f"cannot fetch the weights of {spec} ({type(error).__name__}: {str(error)[:200]}): published weights need the "
            f"network on first use; offline, give a weights file after the name, or `none` for random weights ({random})"
        ) from error


def _names_a_file(weights: str) -> bool:
    """Whether a model spec's WEIGHTS part is meant as a file: it is one, or it is written like a path."""
    return Path(weights).is_file() or "/" in weights or weights.endswith(WEIGHT_FILE_SUFFIXES)


def _load_state_file(module: nn.Module, path: str, valid: str) -> None:
    """Load weights from a safetensors file or a tensors-only torch file (never unpickles objects); ``valid``
    says what the spec's WEIGHTS part may be, for the error when ``path`` is no such file."""
    if not Path(path).is_file():
        raise SpecError(f"weights file {path!r} not found; WEIGHTS is {valid}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for non-tensor pickles, safetensors its own
        raise SpecError(f"cannot load weights from {path} safely (tensors only): {error}") from error
    try:
        module.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    except (RuntimeError, TypeError) as error:
        raise SpecError(f"the weights in {path} do not fit the model: {str(error)[:500]}") from None


register_in_memory(MODELS, "Lens.open(LENS, model=MODEL), or --model SPEC on the command line")  # listed after the loadable forms


#: how a model's outputs get their class names, in a message
NAME_OUTPUTS = "load_model(module, classes=[...]) passed as model=, or a py: factory returning LoadedModel(..., classes)"


class ClassMapping(NamedTuple):
    """How a data set's labels name the model's classes (``class_mapping``)."""

    labels: dict[int, int] | None  # data label -> model output index; None: every sample takes its predicted class
    targets: str  # where the target classes come from, as the Lens's manifest says it
    warning: str | None = None  # where that is not what a user would expect: said when a build ends (``fallbacks``)
    names: list[str] | None = None  # the names the model's outputs take from the data (mapped by index: its own are none)


def class_mapping(model: LoadedModel, data) -> ClassMapping:
    """Data label -> model output index when the data's class names are the model's (case-insensitive; an
    ImageNet WordNet id such as a folder ``n01440764/`` names its ImageNet class: ``model_class_index``),
    or by index when the model has no names but as many outputs, or the data's labels have no names; a label
    without a model class (a folder the model has no class of, a label past its outputs) is left out of the
    mapping (its samples take their predicted class); None where no label has one (use predicted classes)."""
    if data.classes is None:
        if len(data) == 0 or data.label(0) is None:
            unnamed = None if model.classes is not None else (
                f"the model names no classes and the data has no labels: its classes are its output indices (0 to {model_outputs(model) - 1}), "
                f"and an audit or explanation takes a class by index; name its outputs ({NAME_OUTPUTS}) to ask by name"
            )  # fmt: skip
            return ClassMapping(None, "predicted classes (the data has no labels)", unnamed)
        return ClassMapping(
            dict(enumerate(range(model_outputs(model)))), "labels (by index: the data names no classes)",
            "class relevance takes each label as the index of the model's output (the data names no classes): give classes= if they are not",
        )  # fmt: skip
    found = None if model.classes is None else {label: model_class_index(name, model.classes) for label, name in enumerate(data.classes)}
    if found is None or (model.classes_assumed and None in found.values()):  # names of its own, or only assumed ones
        outputs = model_outputs(model)
        if outputs == len(data.classes):
            shown = ", ".join(f"{index} {name}" for index, name in enumerate(data.classes[:4])) + (", ..." if outputs > 4 else "")
            return ClassMapping(
                dict(enumerate(range(outputs))), "labels (by index: the model has no class names)",
                f"the model names no classes: its {outputs} outputs take the data's class names in the data's order ({shown}); "
                f"name its outputs ({NAME_OUTPUTS}) if they are in another order", names=list(data.classes),
            )  # fmt: skip
        if found is None:
            return unmatched(None, f"predicted classes ({len(data.classes)} data classes, {outputs} model outputs)")
    mapping = {label: index for label, index in found.items() if index is not None}
    missing = [data.classes[label] for label, index in found.items() if index is None]
    listed = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    if not mapping:
        return unmatched(None, f"predicted classes (data classes not among the model's: {listed})")
    if missing:  # the others' samples take their predicted classes
        return unmatched(mapping, f"labels of {len(mapping)} of {len(found)} data classes (not among the model's: {listed})")
    return ClassMapping(mapping, "labels")


def unmatched(labels: dict[int, int] | None, targets: str) -> ClassMapping:
    """A mapping where some samples' labels name no class of the model, said as a fallback of the build."""
    return ClassMapping(labels, targets, f"class relevance of predicted classes where the data's labels name no class of the model: {targets}")


def model_outputs(model: LoadedModel) -> int:
    """How many classes the model scores (its logits' width on one example)."""
    with torch.no_grad():
        return model.module(example_batch(model.module, model.preprocessing.input_size)).shape[1]


def load_model(model: str | nn.Module | LoadedModel, preprocessing: Preprocessing | Any = None, classes: list[str] | None = None) -> LoadedModel:
    """The model a spec names (see the module docstring for the forms), or a model object: a LoadedModel as it
    is, an ``nn.Module`` (put in eval mode) with ``preprocessing``, a :class:`Preprocessing` or a torchvision-style
    transform (``preprocessing_of``), or ImageNet's, said in a warning. An object whose spec semlens cannot load
    again is recorded as ``memory:CLASS`` (a Lens then asks for the object: ``register_in_memory``). ``classes``:
    the names of a model object's outputs, in order (else its config's, or ImageNet's for 1000 outputs)."""
    if preprocessing is not None and not isinstance(model, nn.Module):
        raise SpecError(f"preprocessing= goes with a model object (an nn.Module); {described(model)} brings its own")
    if classes is not None and isinstance(model, str):
        raise SpecError(f"classes= goes with a model object (an nn.Module or a LoadedModel); {described(model)} names its own")
    if isinstance(model, nn.Module):
        if type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod  # torch.compile's wrapper: the module it compiles is the model (its layer names, weights, hooks)
        if preprocessing is None:
            preprocessing, source = configured_preprocessing(model) or (None, "ImageNet's")
            warn_caller(
                f"model {type(model).__name__}: no preprocessing given, so {source} ({(preprocessing or Preprocessing()).described()}); "
                "pass preprocessing= (a semlens.Preprocessing or a torchvision transform) if it expects other",
            )
        loaded = module_as_loaded(model, in_memory_spec(model), preprocessing_of(preprocessing or Preprocessing()), classes is None)
    elif isinstance(model, LoadedModel):
        loaded = model if MODELS.knows(model.spec) else replace(model, spec=in_memory_spec(model.module))
    else:
        return MODELS.resolve(model)
    return loaded if classes is None else named_outputs(loaded, classes)


def named_outputs(model: LoadedModel, classes: list[str]) -> LoadedModel:
    """``model`` with its outputs named ``classes``, refused where they are not as many as its outputs."""
    names, outputs = [str(name) for name in classes], model_outputs(model)
    if len(names) != outputs:
        raise SpecError(f"classes= names {len(names)} classes, but the model scores {outputs}: give one name per output, in order")
    return replace(model, classes=names, classes_assumed=False)


def module_as_loaded(module: nn.Module, spec: str, preprocessing: Preprocessing, guess_classes: bool = True) -> LoadedModel:
    """A model object in eval mode, read through its logits (``returning_logits``: a dict, tuple or transformers
    output object gives its logits), with the class names its config carries; without any, where it scores 1000
    classes (``guess_classes``), ImageNet's, as torchvision's and timm's ImageNet architectures are named, said in a warning.
    A module in training mode is put in eval mode (dropout off, batch norm by its running statistics), said too: the
    user's object stays so after the build."""
    if module.training:
        warn_caller(
            f"model {type(module).__name__} was in training mode: semlens reads it in eval mode and leaves it so "
            "(model.train() to train it further)"
        )
    module.eval()
    loaded = LoadedModel(returning_logits(module, preprocessing.input_size), spec, preprocessing, configured_classes(module))
    if loaded.classes is None and guess_classes and model_outputs(loaded) == len(imagenet_classes()):
        warn_caller(
            f"model {type(module).__name__} scores 1000 classes and names none: they are taken as ImageNet's, in its order "
            "(tabby = 281); give classes= (load_model(model, preprocessing, classes=[...])) if they are not",
        )
        loaded.classes, loaded.classes_assumed = imagenet_classes(), True
    return loaded


def list_models() -> list[SpecForm[LoadedModel]]:
    """The model spec forms ``load_model`` takes (``zoo:``, ``py:``, ``torchvision:``, ...), with their help texts."""
    return MODELS.forms()
