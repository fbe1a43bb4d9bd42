"""Ground truth in the concept world: what each unit really detects, from the exact concept masks.

Network-Dissection style: a unit's activation map, up-sampled to the image, is thresholded at its
top quantile over the probe set; its IoU with each concept's mask, summed over the set, names the
concept it detects (when the best IoU passes a threshold). Label faithfulness (phi) uses the world's
concept images: a unit's mean activation on each concept alone, min-max normalised over concepts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..model.units import LayerSpec, UnitReader, hooks, resolve_module
from .render import WorldConfig, WorldData, concept_image

QUANTILE = 0.995
IOU_THRESHOLD = 0.04
CONCEPT_IMAGES = 8


@dataclass
class UnitTruth:
    """Per unit of a layer: the concept with the highest IoU, that IoU, and the IoU with every concept."""

    concepts: list[str]
    best: list[str | None]  # None when the best IoU is under the threshold
    best_iou: torch.Tensor  # [U]
    iou: torch.Tensor  # [U, C]


def _layer_maps(model: torch.nn.Module, layer: str, pixels: torch.Tensor) -> torch.Tensor:
    """The layer's activation maps ``[N, U, h, w]`` (full resolution, no pooling)."""
    captured = {}
    handle = resolve_module(model, layer).register_forward_hook(lambda m, i, o: captured.setdefault("maps", o))
    with hooks([handle]), torch.no_grad():
        model(pixels)
    maps = captured["maps"]
    if maps.dim() != 4:
        raise ValueError(f"ground truth by dissection needs a spatial layer; {layer} outputs {tuple(maps.shape)}")
    return maps.float()


def dissect_layer(model: torch.nn.Module, preprocessing, layer: str, data: WorldData, batch_size: int = 100) -> UnitTruth:
    """IoU of every unit's thresholded, up-sampled map with every concept's mask over ``data``."""
    concepts = data.config.concept_names()
    size = data.config.size
    batches = [range(start, min(start + batch_size, len(data))) for start in range(0, len(data), batch_size)]

    def batch_of(indices: range):
        rendered = [data.sample(index) for index in indices]
        pixels = torch.stack([preprocessing(sample.image) for sample in rendered])
        masks = torch.zeros(len(rendered), len(concepts), size * size)
        for row, sample in enumerate(rendered):
            for name, mask in sample.masks.items():
                masks[row, concepts.index(name)] = torch.from_numpy(mask.reshape(-1)).float()
        return pixels, masks

    maps = torch.cat([_layer_maps(model, layer, batch_of(indices)[0]) for indices in batches])
    thresholds = torch.quantile(maps.transpose(0, 1).flatten(1), QUANTILE, dim=1)  # per unit
    intersection = torch.zeros(maps.shape[1], len(concepts))
    unit_area = torch.zeros(maps.shape[1], 1)
    concept_area = torch.zeros(1, len(concepts))
    for indices in batches:
        _, masks = batch_of(indices)
        up = F.interpolate(maps[indices.start : indices.stop], size=(size, size), mode="bilinear", align_corners=False)
        fired = (up > thresholds.view(1, -1, 1, 1)).flatten(2).float()  # [B, U, HW]
        intersection += torch.einsum("bup,bcp->uc", fired, masks)
        unit_area += fired.sum(dim=(0, 2)).unsqueeze(1)
        concept_area += masks.sum(dim=(0, 2)).unsqueeze(0)
    iou = intersection / (unit_area + concept_area - intersection).clamp_min(1)
    best_iou, best = iou.max(dim=1)
    names = [concepts[index] if value >= IOU_THRESHOLD else None for index, value in zip(best.tolist(), best_iou.tolist())]
    return UnitTruth(concepts, names, best_iou, iou)


def concept_responses(model: torch.nn.Module, preprocessing, spec: LayerSpec, config: WorldConfig) -> torch.Tensor:
    """Mean pooled activation ``[U, C]`` of each unit on each concept's concept images."""
    reader = UnitReader(spec)
    concepts = config.concept_names()
    responses = []
    for concept in concepts:
        pixels = torch.stack([preprocessing(concept_image(config, concept, index).image) for index in range(CONCEPT_IMAGES)])
        captured = {}
        handle = resolve_module(model, spec.name).register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
        with hooks([handle]), torch.no_grad():
            model(pixels)
        responses.append(reader(captured["out"])[0].mean(dim=0))
    return torch.stack(responses, dim=1)


def faithfulness(responses: torch.Tensor, assigned: list[int | None]) -> float:
    """Mean over labelled units of phi(i, k) = (a_i(k) - min_t a_i(t)) / (max_t a_i(t) - min_t a_i(t))."""
    low, high = responses.min(dim=1).values, responses.max(dim=1).values
    phi = (responses - low[:, None]) / (high - low).clamp_min(1e-12)[:, None]
    values = [float(phi[unit, concept]) for unit, concept in enumerate(assigned) if concept is not None]
    return sum(values) / len(values) if values else float("nan")
