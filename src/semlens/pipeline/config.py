"""What a build is made from (``BuildConfig``, also the schema of ``semlens run --config``) and what it
reports when it is done (``BuildSummary``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from types import UnionType
from typing import Any, get_args, get_origin, get_type_hints

from torch import nn
from torch.utils.data import Dataset

from .._util.devices import RELEVANCE_MEMORY_GIB, check_precision
from .._util.errors import SemlensError, asked
from .._util.specs import IN_MEMORY, described, folder_or_spec, split_spec
from .._util.tomlfiles import read_toml
from ..data import ImageData, load_data
from ..foundation import FoundationModel, foundation_name, foundation_object, foundation_spec, space_name_of
from ..model.loading import LoadedModel, load_model
from ..model.preprocess import Preprocessing
from ..relevance.choices import CRP_FOCUS, LRP_RULE_NAMES
from ..store.slots import crop_rules
from .crops import CROP_GRID, CROP_MODES, CROP_QUANTILE, CROP_VIEWS, DEFAULT_CROP_RULE
from .parallel import Shard

MAX_RELEVANCE_BATCH = 256
HELD_MODELS = (tuple, nn.Module)  # a foundation model as a library gives it (a module alone: refused, saying what to add)


@dataclass
class BuildConfig:
    """Everything a Lens is built from; also the schema of ``semlens run --config FILE.toml``.

    ``model``, ``data`` and ``foundation`` (and each of ``extra_foundations``) are spec strings, or (in a notebook)
    the objects themselves: an ``nn.Module`` (with ``preprocessing``) or a LoadedModel; a list or dataset of images,
    image paths or ``(image, label)`` pairs (with ``classes``) or an ImageData; a FoundationModel, an open_clip
    ``(model, preprocess, tokenizer)`` or a transformers ``(model, processor)``. Objects are held converted
    (``load_model``, ``load_data``, ``foundation_object``) and recorded as ``memory:CLASS`` with their fingerprints:
    a Lens built from them asks for them again where it needs them."""

    # Each field's metadata is its `semlens run` option (cli/_options.py makes the options from it): "help", and
    # "flags" where they are not --field-name; "rest": the field that takes the option's further values; "cli":
    # False for a setting of config files and Python alone.
    model: str | nn.Module | LoadedModel = field(metadata={"flags": ("--model", "-m"), "help": "Model spec, e.g. zoo:efficientnet-lite0, py:pkg.mod:factory."})
    layers: list[str] = field(metadata={"flags": ("--layer", "-l"), "help": "Layer NAME[:key=value,...]; repeat for several."})
    data: str | ImageData | Sequence | Dataset = field(metadata={"flags": ("--data", "-d"), "help": "The probe images: a folder (subfolder names are labels), or a data spec, e.g. py:pkg.mod:factory."})
    foundation: str | FoundationModel | tuple = field(default="conse", metadata={
        "flags": ("--foundation", "-f"), "rest": "extra_foundations",
        "help": "Foundation model spec (default conse); repeat to embed into more spaces (the first is the default).",
    })  # fmt: skip
    extra_foundations: list[str | FoundationModel | tuple] = field(default_factory=list)  # each embeds the same crops into a space of its own
    k: int = field(default=30, metadata={"flags": ("-k", "--k"), "help": "Concept examples per unit (default 30)."})
    pool: str = field(default="mean", metadata={"help": "Spatial/token pooling: mean (default) or max."})
    crop: str = field(default="auto", metadata={
        "help": "Crop mode: auto (default: relevance wherever LRP supports the model, else activation), relevance, activation or none. "
                "Relevance crops take one backward pass per unit and example, the longest stage of a build on a CPU; activation crops none."
    })  # fmt: skip
    crop_threshold: float = field(default=0.01, metadata={
        "help": "Share of a heatmap's peak that a crop keeps (default 0.01, the paper's 1 % rule); 0 < t < 1."
    })  # fmt: skip
    crop_rule: str | None = field(default=None, metadata={  # None: DEFAULT_CROP_RULE, or peak alone for the masked view (one box per example)
        "help": "How a box is cut from a heatmap: peak (everything above --crop-threshold of the peak), share, quantile, or active "
        "(share of the unit's activation map: where it fires); or several joined by + (one box each). Default peak+active: labels, "
        "audits and measures read the peak boxes, search the active boxes; peak alone embeds 2 to 4 times fewer crops."
    })  # fmt: skip
    crop_share: float = field(default=0.8, metadata={
        "help": "With --crop-rule share: the smallest square holding this share of the heatmap's positive mass (default 0.8)."
    })  # fmt: skip
    crop_quantile: float = field(default=CROP_QUANTILE, metadata={
        "help": "With --crop-rule quantile: the box around cells above this quantile of the unit's values over its k maps (default 0.95)."
    })  # fmt: skip
    crop_view: str = field(default="box", metadata={
        "help": "What is embedded: box (default: the crop's pixels) or masked (the crop faded to its mean colour where the unit's heatmap is low)."
    })  # fmt: skip
    crop_grid: int = field(default=CROP_GRID, metadata={  # nearly equal crops are embedded once
        "help": "Crop boxes snap outward to a grid of this many cells a side (nearly equal crops embedded once); 0 (default): to the pixel."
    })  # fmt: skip
    lrp_rule: str = field(default="zplus", metadata={  # the convolutions' LRP rule for crops, class relevance, explanations and graphs
        "help": "The convolutions' LRP rule: zplus (default: z+, the signed rule where inputs carry both signs) or gamma (generalised, 0.25)."
    })  # fmt: skip
    crp_focus: str = field(default="unit", metadata={  # relevance crops start from the unit's whole map, or from its highest position ("peak")
        "help": "Where a relevance crop's CRP heatmap starts: unit (default: the unit's whole map, the paper's) or peak (its highest position alone)."
    })  # fmt: skip
    heatmaps_from: str | None = field(default=None, metadata={  # a Lens whose CRP heatmaps to reuse where computed from the same inputs
        "help": "A Lens of the same model, layers and data whose CRP heatmaps to reuse (e.g. to compare crop rules and views)."
    })  # fmt: skip
    class_relevance: bool = field(default=True, metadata={"help": "Compute per-class LRP relevance of every unit (default on)."})
    relevance_data: str | None = field(default=None, metadata={"help": "Labelled images for class relevance: a folder or a data spec (default: --data)."})
    relevance_examples: bool = field(default=False, metadata={  # zennit-crp's reference sampling
        "help": "Also keep each unit's top-k samples by relevance for the model's output, cropped and embedded: a second theta (default off)."
    })  # fmt: skip
    relevance_batch_size: int | None = field(default=None, metadata={"cli": False})  # None: sized by input pixels (relevance_batch)
    relevance_memory_gib: float = field(default=RELEVANCE_MEMORY_GIB, metadata={
        "help": f"GPU memory the relevance passes may hold at their peak, model included, in GiB (default {RELEVANCE_MEMORY_GIB:g}): passes are sized to it from the first one's."
    })  # fmt: skip
    max_map_side: int = field(default=32, metadata={"cli": False})
    batch_size: int = field(default=32, metadata={"help": "Model batch size (default 32)."})
    embed_batch_size: int = field(default=64, metadata={"help": "Foundation model batch size (default 64)."})
    embed_precision: str = field(default="auto", metadata={
        "help": "Foundation model dtype: auto (default: float32 on CPU; on CUDA float16 for CNN towers, bfloat16 for towers with "
        "transformer blocks), float32, bfloat16, float16."
    })  # fmt: skip
    embed_channels_last: bool = field(default=True, metadata={  # convolutional towers only (FoundationModel.speed_up)
        "help": "Channels-last convolutional foundation towers (default on; same numbers up to rounding)."
    })  # fmt: skip
    embed_compile: bool = field(default=False, metadata={
        "help": "torch.compile the foundation model's image tower (default off; falls back, with a warning, if compiling fails)."
    })  # fmt: skip
    device: str = field(default="auto", metadata={"help": "auto (default), cpu, cuda or cuda:N."})
    precision: str = field(default="auto", metadata={
        "help": "Model forward pass while collecting: auto (default: bfloat16 autocast on CUDA, float32 on CPU), float32, bfloat16, float16."
    })  # fmt: skip
    workers: int | None = field(default=None, metadata={"help": "Data loader worker processes (default: cores - 1, at most 4; at most 8 on a GPU)."})
    checkpoint_seconds: float = field(default=30.0, metadata={"help": "Seconds between resume checkpoints (default 30)."})
    shard: str | None = field(default=None, metadata={
        "help": "i/n: collect only shard i of n of the data into a partial Lens (job arrays); combine with `semlens merge`."
    })  # fmt: skip
    preprocessing: Preprocessing | Callable | None = field(default=None, metadata={"cli": False})  # a model object's (a torchvision transform too); None: ImageNet's
    classes: list[str] | None = field(default=None, metadata={"cli": False})  # the class names of data passed as a list or dataset (its labels index them)

    def __post_init__(self) -> None:
        if not self.layers:
            raise SemlensError("no layers given; name at least one (see `semlens layers MODEL`)")
        if isinstance(self.model, (nn.Module, LoadedModel)) or self.preprocessing is not None:
            self.model, self.preprocessing = load_model(self.model, self.preprocessing), None  # a spec with preprocessing= fails there
        if isinstance(self.layers, list) and any(isinstance(layer, nn.Module) for layer in self.layers):
            self.layers = module_names(self.model, self.layers)
        if indexable(self.data) or self.classes is not None:
            self.data, self.classes = load_data(self.data, self.classes), None  # likewise a spec with classes=
        elif isinstance(self.data, str) and self.data.strip():
            self.data = folder_or_spec(self.data)  # a folder as typed: folder:PATH
        if isinstance(self.relevance_data, str) and self.relevance_data.strip():
            self.relevance_data = folder_or_spec(self.relevance_data)
        if isinstance(self.foundation, HELD_MODELS):  # an open_clip or transformers model as the user holds it
            self.foundation = foundation_object(self.foundation)
        if isinstance(self.extra_foundations, list):
            self.extra_foundations = [foundation_object(spec, "extra_foundations") if isinstance(spec, HELD_MODELS) else spec for spec in self.extra_foundations]
        check_field_types(self)
        if self.crop not in CROP_MODES:
            raise SemlensError(f"crop={self.crop!r} is not one of {', '.join(CROP_MODES)}")
        if self.lrp_rule not in LRP_RULE_NAMES:
            raise SemlensError(f"lrp_rule={self.lrp_rule!r} is not one of {', '.join(LRP_RULE_NAMES)}")
        if self.crp_focus not in CRP_FOCUS:
            raise SemlensError(f"crp_focus={self.crp_focus!r} is not one of {', '.join(CRP_FOCUS)}")
        if self.crop_rule is None:
            self.crop_rule = "peak" if self.crop_view == "masked" else DEFAULT_CROP_RULE
        rules = crop_rules(self.crop_rule)
        if self.crop_view not in CROP_VIEWS:
            raise SemlensError(f"crop_view={self.crop_view!r} is not one of {', '.join(CROP_VIEWS)}")
        if self.crop_view == "masked" and len(rules) > 1:
            raise SemlensError(f"crop_view=masked fades one box per example; give one crop rule, not {self.crop_rule!r}")
        if not 0 < self.crop_quantile < 1:
            raise SemlensError(f"crop_quantile={self.crop_quantile} must lie between 0 and 1 (a quantile of a unit's map values, e.g. {CROP_QUANTILE})")
        if not 0 < self.crop_share <= 1:
            raise SemlensError(f"crop_share={self.crop_share} must lie in (0, 1] (a share of the heatmap's positive mass, e.g. 0.8)")
        if not 0 < self.crop_threshold < 1:
            raise SemlensError(f"crop_threshold={self.crop_threshold} must lie between 0 and 1 (a share of the heatmap's peak, e.g. 0.01)")
        if self.crop_grid < 0:
            raise SemlensError(f"crop_grid={self.crop_grid} must be 0 (boxes to the pixel) or a number of cells a side (e.g. 16)")
        if self.k < 1 or self.batch_size < 1 or self.embed_batch_size < 1:
            raise SemlensError("k, batch_size and embed_batch_size must be positive integers")
        if not self.relevance_memory_gib > 0:
            raise SemlensError(f"relevance_memory_gib={self.relevance_memory_gib} must be a positive number of GiB (e.g. {RELEVANCE_MEMORY_GIB:g})")
        if self.relevance_batch_size is not None and self.relevance_batch_size < 1:
            raise SemlensError(f"relevance_batch_size={self.relevance_batch_size} must be a positive integer (or left out: sized by input pixels)")
        if self.relevance_examples and not self.class_relevance:
            raise SemlensError("relevance_examples needs class_relevance: the relevance pass is where they are collected")
        if self.relevance_examples and self.relevance_data not in (None, self.data):
            raise SemlensError(
                f"relevance_examples are samples of the probe data, but relevance_data={self.relevance_data!r} is other data; "
                "leave relevance_data out (the probe data) to collect them"
            )
        check_extra_foundations(self.foundation, self.extra_foundations)
        check_precision(self.precision)
        check_precision(self.embed_precision, "embed_precision")
        if self.shard is not None:
            Shard.parse(self.shard)
            recorded = self.recorded()
            if any(split_spec(str(spec))[0] == IN_MEMORY for spec in (recorded.model, recorded.data, recorded.foundation, *recorded.extra_foundations)):
                raise SemlensError(
                    "shard= builds a part for `semlens merge`, which loads the model, data and foundation model from their "
                    "specs; give them as spec strings, not objects"
                )

    def recorded(self) -> BuildConfig:
        """This config as a Lens records it: each object given in memory replaced by its spec (``memory:CLASS``
        where semlens cannot load it again)."""
        if all(isinstance(value, str) for value in (self.model, self.data, self.foundation, *self.extra_foundations)):
            return self
        model, data = (value if isinstance(value, str) else value.spec for value in (self.model, self.data))  # LoadedModel, ImageData
        extra = [foundation_spec(foundation) for foundation in self.extra_foundations]
        return replace(self, model=model, data=data, foundation=foundation_spec(self.foundation), extra_foundations=extra)

    def relevance_batch(self, input_size: int, pixels: int) -> int:
        """Pairs (crop stage) or images (class relevance) per backward pass: ``relevance_batch_size``, or
        as many inputs of side ``input_size`` as hold ``pixels`` (the device's ``relevance_pixels``; between
        1 and MAX_RELEVANCE_BATCH): small inputs get more pairs per pass, memory stays what the device allows."""
        if self.relevance_batch_size is not None:
            return self.relevance_batch_size
        return max(1, min(MAX_RELEVANCE_BATCH, pixels // (input_size * input_size)))

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> BuildConfig:
        """Read a TOML file whose keys are this class's fields; ``overrides`` (not None) win."""
        values = read_toml(path, "config")
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls.from_settings(values, f"config {path}: unknown keys")

    @classmethod
    def from_settings(cls, values: dict[str, Any], unknown_keys: str = "unknown settings") -> BuildConfig:
        """The config of ``values``, a name not among this class's fields refused with the valid ones."""
        known = {item.name for item in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise SemlensError(f"{unknown_keys} {', '.join(sorted(unknown))}; valid: {', '.join(sorted(known))}")
        missing = [item.name for item in fields(cls) if item.name not in values and item.default is MISSING and item.default_factory is MISSING]
        if missing:
            raise SemlensError(f"{' and '.join(missing)} not given: a Lens is built from a model, its layers and data (e.g. model=net, layers=['layer4'], data=images)")
        return cls(**values)


def indexable(data: Any) -> bool:
    """Data given as an object to read by index (a list, a torch or Hugging Face dataset, an array), not a spec."""
    return not isinstance(data, (str, bytes)) and (isinstance(data, ImageData) or (hasattr(data, "__len__") and hasattr(data, "__getitem__")))


def module_names(model: Any, layers: list[Any]) -> list[Any]:
    """Layers given as the model's own submodules, by their names in it (``layers=[net.layer4]``)."""
    if not isinstance(model, LoadedModel):
        raise SemlensError("layers given as modules go with a model object (model=net); with a model spec, name them (see `semlens layers MODEL`)")
    names = {id(module): name for name, module in model.module.named_modules() if name}
    unknown = [type(layer).__name__ for layer in layers if isinstance(layer, nn.Module) and id(layer) not in names]
    if unknown:
        raise SemlensError(f"layers: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not a submodule of the model; give submodules of it, or their names")
    return [names[id(layer)] if isinstance(layer, nn.Module) else layer for layer in layers]


def check_field_types(config: Any) -> None:
    """Each field of a dataclass ``config`` holds a value of its annotated type (a config file can hold any):
    ``k = "3"`` or ``layers = "head"`` is refused by name, not met later as a TypeError or as layers h, e, a, d."""
    hints = get_type_hints(type(config))
    for item in fields(config):
        value, expected = getattr(config, item.name), hints[item.name]
        if not _is_of(value, expected):
            raise SemlensError(f"{item.name}={described(value)} should be {_kind(expected)}")


def _is_of(value: Any, expected: Any) -> bool:
    if isinstance(expected, UnionType):
        return any(_is_of(value, option) for option in get_args(expected))
    if expected is type(None):
        return value is None
    if get_origin(expected) is list:
        (item,) = get_args(expected)
        return isinstance(value, list) and all(_is_of(element, item) for element in value)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _kind(expected: Any) -> str:
    if isinstance(expected, UnionType):
        return " or ".join("left out" if option is type(None) else _kind(option) for option in get_args(expected))
    if get_origin(expected) is list:
        return f"a list of {_kind(get_args(expected)[0]).removeprefix('a ').removeprefix('an ')}s"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(expected, expected.__name__)


def check_extra_foundations(foundation: str | FoundationModel, extra: list[str | FoundationModel]) -> None:
    """Each extra foundation model once, none the default one, each with a space name of its own."""
    from ..store.spaces import check_space_name, space_name

    given = [foundation_name(model) for model in [foundation, *extra]]
    names = [space_name(foundation_spec(foundation)), *(space_name_of(model) for model in extra)]  # the default's as the Lens names it
    for position, model in enumerate(extra, start=1):
        check_space_name(names[position])
        if given[position] in given[:position] or names[position] in names[:position]:
            raise SemlensError(
                f"extra foundation model {given[position]!r} is given twice or makes the same space name ({names[position]!r}) as another; "
                "give each foundation model once, or add one under a name of its own with `semlens embed LENS --foundation SPEC --name NAME`"
            )


@dataclass
class LayerSummary:
    name: str
    units: int
    inactive_units: int
    tied_units: int
    output: str
    pool: str = "mean"  # how a unit's map became its score


@dataclass
class BuildSummary:
    """What ``build_lens`` did, for the CLI's closing table and ``--json``."""

    path: str
    samples: int
    failed: int
    layers: list[LayerSummary] = field(default_factory=list)
    example_slots: int = 0
    distinct_crops: int = 0
    stages: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    parts: dict[str, dict[str, float]] = field(default_factory=dict)  # per stage that records them, where its seconds went
    fallbacks: list[str] = field(default_factory=list)  # what was done instead of what was asked, and why
    k: int = 0  # concept examples per unit
    reused: list[str] = field(default_factory=list)  # stages complete before this run (their seconds are an earlier run's)

    @property
    def mostly_unread(self) -> bool:
        """Whether most samples could not be read: the Lens shows the rest only (a dataset of normalised tensors)."""
        return 2 * self.failed > self.samples

    def failure_warning(self) -> str | None:
        """The samples that could not be read, said with the first one's reason (a notebook sees no failures.json;
        a dataset of normalised tensors fails at every sample), or None where every one was read."""
        if not self.failed:
            return None
        listed = Path(self.path) / "failures.json"
        failures = json.loads(listed.read_text(encoding="utf-8")) if listed.is_file() else []
        first = f" (the first: {failures[0]['error']})" if failures else ""
        most = f"; the Lens shows the rest only, so fix the data and build again with {asked('overwrite=True', '--overwrite')}" if self.mostly_unread else ""
        return f"{self.failed} of {self.samples} samples could not be read and were skipped{first}; all are listed in {self.path}/failures.json{most}"

    def unit_warnings(self) -> list[str]:
        """The layers' inactive and tied units, said as a warning each (with what would give tied units examples
        of their own where k is a large share of the samples)."""
        found = []
        for layer in self.layers:
            if layer.inactive_units:
                found.append(
                    f"layer {layer.name}: {layer.inactive_units} of {layer.units} units never fired or were constant on this data (their "
                    f"top-k scores are all equal{'' if layer.output == 'vector' else ' or none is positive'}); their concept examples are arbitrary and marked inactive"
                    + (f"; scores are {layer.pool}-pooled maps, so a layer read before its activation (a convolution before its ReLU) "
                       f"can score no sample above zero where it fires in places: read the activation after it, or "
                       f"{asked('pool=' + repr('max'), '--pool max')}" if layer.pool == "mean" and layer.output != "vector" else "")
                )
            if layer.tied_units:
                crowded = self.k * 4 > self.samples - self.failed
                advice = f" (k = {self.k} of {self.samples - self.failed} samples: a smaller k or more probe images give them examples of their own)" if crowded else ""
                found.append(
                    f"layer {layer.name}: {layer.tied_units} of {layer.units} units have the same concept examples as another unit (marked "
                    f"tied); they show that unit's label, and are left out of the map, measures and search by alignment (audits, "
                    f"graphs and explanations take them with their own relevance, search by the model's response by their own "
                    f"response){advice}"
                )
        return found

    def to_dict(self) -> dict[str, Any]:
        """The summary as plain JSON values (``semlens run --json`` prints it)."""
        return asdict(self)
