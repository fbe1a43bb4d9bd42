"""The public API: the verbs, the Lens, the configs and every result type, and no build internals."""

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
