"""Corrections of a class's reliance on an artefact (projection or fine-tuning), measured before and after."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, UploadFile
from pydantic import Field

from ..._util.errors import SemlensError
from ...interventions.correction import ACCURACY_TOLERANCE
from ...lens.correction import Correction
from ..common import MAX_TEXT, ExplorerDep, LensKey, decode_image
from ..schemas import derived

router = APIRouter()

CorrectionOut = derived(
    Correction,
    "CorrectionOut",
    doc="``Correction.to_dict()``: the artefact test (clean, artefact, change) before and after the correction.",
    keys={"class_name": "class"},
    drop=("model", "fix", "spec"),  # the fingerprint and spec of the model it was made for, the fix's tensors: not shown
    samples=(int, Field(description="Test images: half of each class's probe images, drawn at random (the other half learn the correction).")),
    artifact_effect=(list[float | None], Field(description="Class probability with minus without the artefact, before and after.")),
    clean_accuracy=(list[float | None], Field(description="Accuracy on the clean test images, before and after.")),
    ok=(bool, Field(description="False when the correction failed: it cost more clean accuracy than the tolerance.")),
    failed=(str | None, Field(description="Why the correction failed (null when ok).")),
)


def _numbers(text: str, count: int, name: str, high: int) -> tuple[int, ...]:
    values = tuple(int(value) for value in text.split(","))
    if len(values) != count or not all(0 <= value <= high for value in values):
        raise SemlensError(f"{name} takes {count} integers from 0 to {high}, comma-separated; got {text!r}")
    return values


@router.post(
    "/api/lenses/{lens}/correct", response_model=CorrectionOut, summary="Correct a class's reliance on an artefact"
)
def correct(
    explorer: ExplorerDep,
    lens: LensKey,
    class_name: Annotated[str, Form(alias="class", min_length=1, max_length=MAX_TEXT, description="Class name or index.")],
    method: Annotated[Literal["project", "finetune"], Form(description="project (P-ClArC) or finetune (the last modules).")] = "project",
    layer: Annotated[str | None, Form(max_length=MAX_TEXT, description="project: the layer (default: chosen by measurement).")] = None,
    estimator: Annotated[Literal["mean", "logistic"], Form(description="project: the concept direction.")] = "mean",
    last: Annotated[int, Form(ge=1, le=8, description="finetune: the last parameterised modules to train.")] = 1,
    epochs: Annotated[int, Form(ge=1, le=10, description="finetune: passes over the images.")] = 3,
    tolerance: Annotated[float, Form(ge=0, le=1, description="The clean accuracy the correction may cost before it fails.")] = ACCURACY_TOLERANCE,
    tint: Annotated[str | None, Form(pattern=r"^\d{1,3},\d{1,3},\d{1,3}$", description="The artefact as a tint R,G,B.")] = None,
    at: Annotated[str, Form(pattern=r"^\d{1,5},\d{1,5}$", description="Top-left X,Y of an artefact image.")] = "0,0",
    artifact: Annotated[UploadFile | None, File(description="The artefact as an image (PNG with alpha as its mask).")] = None,
) -> dict[str, Any]:
    """Learn the correction on half of each class's probe images (drawn at random, seeded) and run the artefact
    test on the other half (class probability with and without the artefact, share predicted as the class,
    clean accuracy), before and after; ``ok`` is false, with the reason in ``failed``, when it cost more clean
    accuracy than ``tolerance``. Needs the model on this machine; to save the correction use ``semlens correct --out``."""
    from ...interventions.correction import Tuning
    from ...interventions.effects import Artifact

    if (tint is None) == (artifact is None):
        raise SemlensError("give the artefact: exactly one of an image (artifact) or a tint R,G,B")
    served = explorer.get(lens)
    if artifact is not None:
        chosen = Artifact(image=decode_image(artifact.file.read(), "RGBA"), position=_numbers(at, 2, "at", 99_999))
    else:
        chosen = Artifact(tint=_numbers(tint, 3, "tint", 255))
    tuning = Tuning(last=last, epochs=epochs)
    return served.lens.correct(class_name, chosen, method, layer=layer, estimator=estimator, tuning=tuning, progress=False, tolerance=tolerance).to_dict()
