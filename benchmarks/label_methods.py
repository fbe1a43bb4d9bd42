"""Labelling methods scored against the concept world's truth, for ``ground_truth.py --label-methods``:
one Lens labelled by each method in turn (in this process only), each labelling scored by the same truth.

``clip-dissect-examples`` is clip-dissect with the other prior the method admits: every valid unit's stored
example set (offline in every Lens) instead of sets of random probe images embedded whole (``Lens.label``'s).
"""

from __future__ import annotations

import time
from pathlib import Path
from statistics import mean
from typing import Any

from rich.console import Console
from rich.table import Table

from semlens.analysis.alignment import alignment
from semlens.analysis.label import rank_concepts
from semlens.analysis.labelling_methods import clip_dissect_scores
from semlens.analysis.vocabulary import Vocabulary
from semlens.lens.label_prior import example_prior_sets
from semlens.lens.lens import Lens
from semlens.world.demo import ground_truth_labels
from semlens.world.render import WorldConfig
from semlens.world.vocabulary import world_vocabulary

EXAMPLE_PRIOR = "clip-dissect-examples"  # clip-dissect, its prior from the units' example sets (benchmark only)
METHOD_KEYS = {"top1": "top1", "top3": "top3", "phi": "faithfulness_phi", "phi_true_units": "faithfulness_phi_true_units", "top1_response": "top1_response", "cosy_auc": "cosy_auc", "labelled_units": "labelled_units"}  # fmt: skip


def label_with_example_prior(lens: Lens, vocabulary: Vocabulary) -> None:
    """Label the Lens (in this process) by clip-dissect with the example sets' prior."""
    concepts, null, prior = lens.embedding.probes.concepts(vocabulary.concepts, "label"), lens.embedding.probes.null("label"), example_prior_sets(lens)
    results = {}
    for layer in lens.layers:
        scores = clip_dissect_scores(lens.arrays.example_embeddings(layer), concepts, prior)
        theta = lens.arrays.theta(layer)
        results[layer] = rank_concepts(scores, alignment(theta, concepts, null), valid=lens.arrays.valid(layer), method=EXAMPLE_PRIOR)
    lens.labels.replace(vocabulary, results, 0.025, "label", save=False)


def method_scores(lens: Lens, config: WorldConfig, out: Path, methods: list[str]) -> dict[str, dict[str, Any]]:
    """Per labelling method its label scores against the truth (labels kept in this process only)."""
    vocabulary, scored = world_vocabulary(config), {}
    for method in methods:
        start = time.perf_counter()
        if method == EXAMPLE_PRIOR:
            label_with_example_prior(lens, vocabulary)
        else:
            lens.label(vocabulary, method=method, save=False)
        seconds = time.perf_counter() - start
        scores, _ = ground_truth_labels(lens, config, out)
        scored[method] = {**{key: scores[source] for key, source in METHOD_KEYS.items()}, "seconds": round(seconds, 2)}
    return scored



def print_methods(records: list[dict[str, Any]], console: Console) -> None:
    """One row per labelling method: mean and worst of top-1, top-3 and phi (over labelled units, and over
    units with a true concept) over the runs (top-1 and top-3 over the runs with units whose concept
    dissection knows), and the other label scores' means."""
    table = Table(title="labelling methods on the same Lenses (mean / worst over runs)")
    for column in ("method", "runs", "top-1", "top-3", "phi", "phi (true units)", "top-1 resp.", "CoSy AUC", "labelled units", "seconds"):
        table.add_column(column)
    for method in dict.fromkeys(name for record in records for name in record["label_methods"]):
        chosen = [(record, record["label_methods"][method]) for record in records if method in record["label_methods"]]
        cells = []
        for key in ("top1", "top3", "phi", "phi_true_units"):
            values = [m.get(key) for r, m in chosen if m.get(key) is not None and m[key] == m[key] and (r["units_with_truth"] or key == "phi")]
            cells.append(f"{mean(values):.2f} / {min(values):.2f}" if values else "-")
        for key in ("top1_response", "cosy_auc", "labelled_units", "seconds"):
            values = [m[key] for _, m in chosen if m[key] is not None]
            cells.append(f"{mean(values):.2f}" if values else "-")
        table.add_row(method, str(len(chosen)), *cells)
    console.print(table)
