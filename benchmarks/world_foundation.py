"""Zero-shot quality of the ``world`` foundation model on held-out images of the concept world.

Loads (training on first use, then from the cache) the world's image-text model and embeds
``--images`` images of the ``test`` split of its training world (the config's concepts, every
artefact at a fixed rate, no planted correlation; ``--planted``: the config's own world), whole and
as one random square crop each (the training crop distribution, from another seed). Ground truth is what each view shows: every concept on a
whole image; on a crop, the concepts its masks show well (``visible_concepts``, the training rule).
Texts are the bare concept names through a semlens template set, as semlens's labels and audits
embed them, with the null prompt subtracted where it matters (per-image rankings):

- shape, colour, pattern, background: accuracy of the best-aligned concept name of the family, over
  the views that show the family (the null shifts every name of a view alike, so argmax ignores it),
  and the share of those views whose true concept aligns above the null (a > 0: what labels and audits
  need, since they threshold the null-subtracted alignment);
- artefacts: presence AUC of each artefact's name over all views, plain and minus the null;
- paraphrases never used in training (``HELD_OUT``): presence AUC of the paraphrase for its concept.

    python benchmarks/world_foundation.py [--config default] [--steps N] [--images 1000] [--templates label] [--planted]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from semlens.analysis.alignment import cosine
from semlens.lens.probes import ProbeEncoder
from semlens.world.captions import HELD_OUT, random_box, visible_concepts
from semlens.world.foundation import load_world_foundation, resolve_steps, training_world, weights_path
from semlens.world.render import render

FAMILIES = ("shape", "color", "pattern", "background")


def auc(labels: list[bool], scores: torch.Tensor) -> str:
    return f"{roc_auc_score(labels, scores.numpy()):.3f}" if 0 < sum(labels) < len(labels) else "  -  "


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="world config (default: the default world)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: SEMLENS_WORLD_STEPS or 400)")
    parser.add_argument("--images", type=int, default=1000, help="test-split images (each also gives one crop)")
    parser.add_argument("--templates", default="label", help="semlens template set for the texts")
    parser.add_argument("--seed", type=int, default=12345, help="seed of the evaluation crops")
    parser.add_argument("--planted", action="store_true", help="evaluate on the config's world, correlations included")
    args = parser.parse_args()

    steps = resolve_steps(args.steps)
    start = time.perf_counter()
    model = load_world_foundation(args.config, steps=steps)
    print(f"foundation {model.id}: {steps} steps, loaded in {time.perf_counter() - start:.1f} s ({weights_path(model.config, steps)})")

    world = model.config if args.planted else training_world(model.config)
    samples = [render(world, index, "test") for index in range(args.images)]
    rng = np.random.default_rng(args.seed)
    boxes = [random_box(sample, rng) for sample in samples]
    views = {
        "full": (model.encode_images([s.image for s in samples]), [set(visible_concepts(s)) for s in samples]),
        "crops": (
            model.encode_images([s.image.crop(box) for s, box in zip(samples, boxes)]),
            [set(visible_concepts(s, box)) for s, box in zip(samples, boxes)],
        ),
    }
    probes = ProbeEncoder(model)
    null = probes.null(args.templates)

    print(f"\nzero-shot accuracy ({args.images} test images; n = views showing the family)")
    print(f"{'family':<12}{'full':>8}{'a>0':>6}{'n':>6}{'crops':>8}{'a>0':>6}{'n':>6}")
    for family in FAMILIES:
        names = list(model.config.concepts[family])
        texts = probes.concepts(names, args.templates)
        row = f"{family:<12}"
        for embeddings, truth in views.values():
            shown = [i for i, concepts in enumerate(truth) if concepts & set(names)]
            aligned = cosine(embeddings[shown], texts) - cosine(embeddings[shown], null[None])
            correct = [names[int(g)] in truth[i] for i, g in zip(shown, aligned.argmax(dim=1))]
            above = [bool(aligned[row_, names.index(c)] > 0) for row_, i in enumerate(shown) for c in truth[i] & set(names)]
            row += f"{np.mean(correct):>8.3f}{np.mean(above):>6.2f}{len(shown):>6d}" if shown else f"{'-':>8}{'-':>6}{0:>6d}"
        print(row)

    def presence_rows(queries: list[tuple[str, str]]) -> None:
        print(f"{'query':<22}{'concept':<11}{'full':>7}{'-null':>7}{'pos':>5}{'crops':>7}{'-null':>7}{'pos':>5}")
        for query, concept in queries:
            probe = probes.concepts([query], args.templates)
            row = f"{query:<22}{concept:<11}"
            for embeddings, truth in views.values():
                labels = [concept in concepts for concepts in truth]
                plain = cosine(embeddings, probe)[:, 0]
                row += f"{auc(labels, plain):>7}{auc(labels, plain - cosine(embeddings, null[None])[:, 0]):>7}{sum(labels):>5d}"
            print(row)

    print("\nartefact presence AUC (pos = views showing it)")
    presence_rows([(name, name) for name in model.config.concepts["artifact"]])
    print("\nunseen paraphrases: presence AUC of the paraphrase for its concept")
    presence_rows([(phrase, concept) for concept, phrase in HELD_OUT.items() if concept in model.config.concept_names()])


if __name__ == "__main__":
    main()
