"""``zoo:world-cnn``: the model under study in the concept world, trained on the CPU, cached.

A small CNN learns the world's classification task from rendered training images, planted shortcuts
included, so that semlens has something real to find. Training is seeded and cached by a hash of the
world config and the training settings: trained once (well under a minute on 2 cores), then loaded.
``zoo:world-cnn-clean`` is the same model trained on the world without its artefact correlations.
``zoo:world-resnet`` (and ``-clean``) is a residual network trained the same way: a second architecture,
whose layers no threshold of semlens or of its quality benchmark was chosen on.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .._util.cache import trained_path
from .._util.fingerprint import hash_json
from .._util.progress import progress_bar
from ..model.preprocess import Preprocessing
from ..store.files import atomic_write
from .render import WorldConfig, concept_family, render, world_preprocessing

TRAINING = {"images": 4000, "epochs": 4, "batch_size": 64, "learning_rate": 3e-3, "version": 1}


class WorldCNN(nn.Module):
    """Four conv-BN-ReLU stages (16, 32, 64, 64 channels), global average pool, linear classifier."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = [3, 16, 32, 64, 64]
        for stage, (inputs, outputs) in enumerate(zip(channels, channels[1:])):
            layers += [nn.Conv2d(inputs, outputs, 3, padding=1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU()]
            if stage < 3:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with batch norms, the first strided, added to the input (through a strided 1x1
    projection where the shape changes), then a ReLU: ResNet's basic block."""

    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(outputs, outputs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        shape_changes = stride != 1 or inputs != outputs
        self.skip = nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs)) if shape_changes else nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu2(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))) + self.skip(x))


class WorldResNet(nn.Module):
    """A stem convolution (16 channels) and three residual stages that halve the map (24, 48, 64 channels):
    strided convolutions and skip connections where the world CNN has max pools and a plain stack."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        channels = [16, 24, 48, 64]
        self.stages = nn.Sequential(*(ResidualBlock(inputs, outputs, 2) for inputs, outputs in zip(channels, channels[1:])))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.stages(self.stem(x))).flatten(1))


#: the world's models by architecture: the module and the two layers the demo and the quality benchmark study
#: (at 64 px, a 16 x 16 and an 8 x 8 map: the world CNN's third and fourth stages after their ReLU, the
#: ResNet's second and third residual stages)
ARCHITECTURES: dict[str, tuple[type[nn.Module], tuple[str, str]]] = {
    "cnn": (WorldCNN, ("features.10", "features.14")),
    "resnet": (WorldResNet, ("stages.1", "stages.2")),
}


def architecture_of(name: str) -> str:
    """The architecture of a world model's zoo name (``world-cnn``, ``world-resnet-clean``, ...)."""
    return name.removeprefix("world-").removesuffix("-clean")


def without_artifact_correlations(config: WorldConfig) -> WorldConfig:
    """The same world with no artefact planted on any class (the clean comparison model's world)."""
    kept = tuple(c for c in config.correlations if concept_family(c.concept) != "artifact")
    return replace(config, correlations=kept, source=f"{config.source} without artefact correlations")


def train_world_model(config: WorldConfig, progress: bool = True, model: nn.Module | None = None) -> nn.Module:
    """Train on the world's ``train`` split, seeded by the config (deterministic on one machine): the
    world's CNN, or ``model`` (another architecture) with the same data and schedule."""
    torch.manual_seed(config.seed)
    preprocessing = world_preprocessing(config)
    count = TRAINING["images"]
    with progress_bar("render training images", count, progress) as advance:
        pixels, labels = [], []
        for index in range(count):
            sample = render(config, index, "train")
            pixels.append(preprocessing(sample.image))
            labels.append(sample.label)
            advance(1)
    pixels, labels = torch.stack(pixels), torch.tensor(labels)
    model = WorldCNN(len(config.classes)) if model is None else model
    optimiser = torch.optim.Adam(model.parameters(), lr=TRAINING["learning_rate"])
    generator = torch.Generator().manual_seed(config.seed)
    batches = -(-count // TRAINING["batch_size"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, TRAINING["learning_rate"], total_steps=TRAINING["epochs"] * batches)
    model.train()
    with progress_bar(f"train {type(model).__name__}", TRAINING["epochs"] * batches, progress) as advance:
        for _ in range(TRAINING["epochs"]):
            for batch in torch.randperm(count, generator=generator).split(TRAINING["batch_size"]):
                optimiser.zero_grad()
                nn.functional.cross_entropy(model(pixels[batch]), labels[batch]).backward()
                optimiser.step()
                schedule.step()
                advance(1)
    return model.eval()


def weights_path(world: WorldConfig, architecture: str = "cnn") -> Path:
    """The weights that this world, architecture and these training settings give (bundled, cached, or yet to
    train); the CNN's key names no architecture, so that its bundled weights keep their name."""
    named = {} if architecture == "cnn" else {"architecture": architecture}
    key = hash_json({"world": world.fingerprint(), "training": TRAINING, "torch": torch.__version__.split("+")[0], **named})
    return trained_path("world-cnn" if architecture == "cnn" else f"world-{architecture}", key)


def world_model(config: WorldConfig, architecture: str = "cnn", clean: bool = False, progress: bool = True) -> tuple[nn.Module, Preprocessing]:
    """The trained model of ``architecture`` (``ARCHITECTURES``; bundled or cached when it exists, else trained
    now) and its preprocessing."""
    world = without_artifact_correlations(config) if clean else config
    path, architecture_class = weights_path(world, architecture), ARCHITECTURES[architecture][0]
    if path.is_file():
        model = architecture_class(len(world.classes))
        model.load_state_dict(load_file(str(path)))
        return model.eval(), world_preprocessing(world)
    torch.manual_seed(world.seed)  # the initial weights are the world's (rendering draws nothing from torch)
    model = train_world_model(world, progress, architecture_class(len(world.classes)))
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    atomic_write(path, lambda temporary: save_file(state, str(temporary)))
    return model, world_preprocessing(world)
