"""Shared test set-up: offline hub, torchvision made importable next to the CPU torch, and fixtures
for end-to-end builds (a folder of small images, a tiny random CLIP on disk)."""

import os
import sys
import tempfile
from pathlib import Path

SUPPORT = Path(__file__).parent / "support"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# Caches (probe embeddings, trained world models) go to a fresh folder, never the user's.
os.environ["SEMLENS_CACHE"] = tempfile.mkdtemp(prefix="semlens-test-cache-")
# The expected answers are the CPU's (float32, bit for bit). With a GPU visible, device="auto" takes CUDA,
# bfloat16 autocast and half-precision embedding, and on an H100 25 tests failed, builds compared with
# float32 references among them (docs/development.md, Tests). SEMLENS_TEST_CUDA=1 lets the tests see the GPU.
if os.environ.get("SEMLENS_TEST_CUDA") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
# CLI subprocesses started by the tests need the same torchvision fix: pass it on via PYTHONPATH.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SUPPORT), os.environ.get("PYTHONPATH")]))
sys.path.insert(0, str(SUPPORT))
import pytest  # noqa: E402
import sitecustomize  # noqa: E402,F401  (the torchvision fix; harmless without torchvision)
from tiny_foundation import SAVERS  # noqa: E402
from tiny_models import colour_images  # noqa: E402


def write_colour_folder(root: Path, count: int = 30) -> Path:
    """``count`` colour images as PNGs in one subfolder per colour (labels from folder names)."""
    names = ["red", "green", "blue"]
    for index, (image, label) in enumerate(colour_images(count)):
        folder = root / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{index:03d}.png")
    return root


@pytest.fixture(scope="session")
def colour_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_colour_folder(tmp_path_factory.mktemp("colours"))


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's tiny CLIP, with the same random weights in every run (seeded; the global generator is
    left as it was): unseeded, a test on its text embeddings could pass or fail by the draw."""
    import torch

    directory = tmp_path_factory.mktemp("tiny-clip")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        SAVERS["clip"](directory)
    return directory


@pytest.fixture(scope="session")
def explorer_lenses(tmp_path_factory: pytest.TempPathFactory, colour_folder: Path, tiny_clip_dir: Path) -> list[Path]:
    """Two tiny Lenses with class relevance for the explorer's tests: ``tiny.lens`` (three plain layers,
    labelled) and ``other.lens`` (a signed head, left unlabelled so the explorer labels it itself)."""
    from semlens import BuildConfig, build_lens

    root = tmp_path_factory.mktemp("explorer")
    paths = []
    for name, layers in (("tiny", ["features.0", "features.3", "head"]), ("other", ["features.3", "head:signed=true"])):
        config = BuildConfig(
            model="py:tiny_models:tiny_cnn", layers=layers, data=f"folder:{colour_folder}", foundation=f"hf:{tiny_clip_dir}", k=5, workers=0
        )
        lens = build_lens(config, root / f"{name}.lens", progress=False)
        if name == "tiny":
            lens.label()
        paths.append(lens.path)
    return paths


@pytest.fixture(scope="session")
def example_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working directory of the README's and the docs pages' Python examples, with the tour's Lens
    (``tour.lens``) built by the README's first example: the pages that use it do not each build it again
    (a build into a complete Lens of the same inputs skips every stage)."""
    from doc_examples import python_examples, run_examples

    workdir = tmp_path_factory.mktemp("examples")
    previous = os.getcwd()
    os.chdir(workdir)
    try:
        run_examples(python_examples(Path(__file__).parents[1] / "README.md")[:1], workdir)
    finally:
        os.chdir(previous)
    return workdir
