"""Can a Lens tell where its foundation model is blind to the vocabulary? With ``conse`` on the concept world, labels
are near chance yet shown with confidence. For each Lens of the world CNN (labelled with the world's vocabulary), three
candidate checks against the world's truth (``world.demo.ground_truth_labels``; OUT/truth.json as the demo writes it):

- control words that name nothing visible: the labels shown and right, kept where the label's confidence beats the
  unit's best control word's (``unit``) or the layer's 50th / 75th / 90th percentile of that (``q50`` ...);
- the mean pairwise cosine of the Lens's distinct crops per layer (how alike the foundation model sees them);
- the correlation, over the distinct crops, of their alignments with pairs of the world's words;
- with ``conse``: each colour word's nearest ImageNet class name in its sentence space (what its images can reach).

Usage: ``python benchmarks/blind_labels.py OUT LENS...`` (e.g. the demo's world.lens and small_data_k.py's Lens built
with ``--foundation conse --sizes 1200 --ks 20``); seconds a Lens on 2 CPU cores."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from semlens import Lens
from semlens.analysis.alignment import alignment
from semlens.analysis.label import MIN_NULL_UNITS, label_confidence
from semlens.world.demo import ground_truth_labels
from semlens.world.render import WorldConfig

CONTROL = ["idea", "reason", "history", "theory", "opinion", "purpose", "freedom", "knowledge", "tuesday", "justice",
           "grammar", "debt", "loyalty", "patience", "rumour", "policy", "memory", "luck", "truth", "habit"]  # fmt: skip
PAIRS = [("red", "green"), ("red", "blue"), ("circle", "square"), ("stripes", "dots"), ("star", "watermark")]
BARS = {"unit": None, "q50": 0.5, "q75": 0.75, "q90": 0.9}


def control_bars(lens: Lens, truth: dict[str, str]) -> dict[str, int]:
    counts = {"shown": 0, "shown_right": 0, **{f"{bar}_{what}": 0 for bar in BARS for what in ("kept", "right")}}
    probes, vocabulary = lens.embedding.probes, lens.labels.vocabulary.concepts
    control, null = probes.concepts(CONTROL, "label"), probes.null("label")
    for layer in lens.layers:
        theta, valid = lens.examples.theta(layer), lens.examples.valid(layer)
        aligned = alignment(theta, control, null)
        best = label_confidence(aligned, aligned[valid] if int(valid.sum()) >= MIN_NULL_UNITS else aligned).max(dim=1).values
        labels = lens.labels.of(layer)
        for unit in range(theta.shape[0]):
            true = truth.get(f"{layer}/{unit}")
            if true is None or not bool(labels.labelled[unit]):
                continue
            right, confidence = vocabulary[int(labels.concepts[unit, 0])] == true, float(labels.confidence[unit, 0])
            counts["shown"] += 1
            counts["shown_right"] += right
            for bar, quantile in BARS.items():
                kept = confidence > float(best[unit] if quantile is None else best[valid].quantile(quantile))
                counts[f"{bar}_kept"] += kept
                counts[f"{bar}_right"] += kept and right
    return counts


def distinct_crops(lens: Lens, layers: list[str]) -> torch.Tensor:
    found = [lens.examples.embeddings(layer)[lens.examples.valid(layer)].flatten(0, 1).float() for layer in layers]
    return torch.unique(torch.nn.functional.normalize(torch.cat(found), dim=-1), dim=0)


def crop_spread(lens: Lens) -> dict[str, float]:
    spread = {}
    for layer in lens.layers:
        crops = distinct_crops(lens, [layer])
        cosines, count = crops @ crops.T, crops.shape[0]
        spread[layer] = round(float((cosines.sum() - cosines.diag().sum()) / (count * (count - 1))), 3)
    return spread


def pair_correlations(lens: Lens) -> dict[str, float]:
    words = sorted({word for pair in PAIRS for word in pair})
    probes = lens.embedding.probes
    aligned = alignment(distinct_crops(lens, lens.layers), probes.concepts(words, "label"), probes.null("label"))
    aligned = aligned - aligned.mean(dim=0)
    aligned = aligned / aligned.norm(dim=0)
    return {f"{a}/{b}": round(float(aligned[:, words.index(a)] @ aligned[:, words.index(b)]), 2) for a, b in PAIRS}


def nearest_classes(words: list[str]) -> dict[str, tuple[str, float]]:
    from semlens.foundation.conse import ConSE
    from semlens.model.imagenet import imagenet_classes

    conse, names = ConSE("cpu"), imagenet_classes()
    best = (conse._embed_texts(words).float() @ conse.class_embeddings.T).max(dim=1)
    return {word: (names[index], round(value, 3)) for word, value, index in zip(words, best.values.tolist(), best.indices.tolist())}


def main(out: Path, paths: list[str]) -> None:
    config = WorldConfig.load(None)
    for path in paths:
        lens = Lens.open(path)
        _, truth = ground_truth_labels(lens, config, out)
        print(path, lens.embedding.foundation_id)
        print("  control words:", control_bars(lens, truth))
        print("  crop spread:", crop_spread(lens))
        print("  pair correlations:", pair_correlations(lens), flush=True)
        if lens.embedding.foundation_id.startswith("conse:"):
            print("  nearest ImageNet class:", nearest_classes(["red", "green", "blue", "yellow", "purple", "gray"]))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
