"""The public API: the verbs, the Lens, the configs and every result type, and no build internals."""

import dataclasses
import importlib
import inspect
import pkgutil

import semlens


def test_every_result_type_is_exported_and_serialises() -> None:
    results = ["SearchHit", "SearchResults", "Labelling", "Audit", "RelevantUnit", "AttributionGraph", "Explanation",
               "Comparison", "Measures", "OverviewMap", "UnitClusters", "SpaceComparison", "Correction", "ExportResult"]  # fmt: skip
    for name in results:
        assert name in semlens.__all__, name
        assert callable(getattr(getattr(semlens, name), "to_dict", None)), name


def test_no_build_internals_in_the_public_api() -> None:
    assert not {"Collector", "TopK", "collect_topk"} & set(semlens.__all__)
    assert all(hasattr(semlens, name) for name in semlens.__all__)


#: the most public members (methods, properties, class attributes; not a dataclass's fields) a class of semlens may
#: have: past it, a class is doing several jobs and its questions belong in functions or objects of their own
MAX_MEMBERS = 25


def public_members(cls: type) -> list[str]:
    """The public names semlens itself defines on ``cls`` and its semlens bases (not a torch module's or a pydantic
    model's), less the fields of a plain record (dataclass, pydantic model)."""
    fields = {field.name for field in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    fields |= set(getattr(cls, "model_fields", {}))
    own = {name for base in cls.__mro__ if base.__module__.startswith("semlens") for name in vars(base)}
    return sorted(name for name in own if not name.startswith("_") and name not in fields)


def test_no_class_has_more_than_25_public_members() -> None:
    found = {}
    for info in pkgutil.walk_packages(semlens.__path__, "semlens."):
        if info.name.endswith("__main__"):
            continue  # runs the command line
        module = importlib.import_module(info.name)
        for cls in vars(module).values():
            if inspect.isclass(cls) and cls.__module__ == module.__name__:
                found[f"{cls.__module__}.{cls.__qualname__}"] = len(public_members(cls))
    over = {name: count for name, count in found.items() if count > MAX_MEMBERS}
    assert not over, f"classes with more than {MAX_MEMBERS} public members (split them into functions or objects): {over}"
