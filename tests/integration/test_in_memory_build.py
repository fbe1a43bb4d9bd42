"""A Lens built in a notebook from objects (an nn.Module, a list of PIL images, a FoundationModel): it answers,
records what identifies them (weights, image content, class names), asks for them again by name where it needs
them, and a build resumed with other objects is refused, never fed a stale cache."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image
import pytest
import torch
from tiny_foundation import SAVERS
from tiny_models import TINY_PREPROCESSING, Normalising, TinyCNN, colour_images, tiny_cnn

from semlens import BuildConfig, Lens, LoadedModel, Preprocessing, SemlensError, build_lens, load_data, load_foundation_model, load_model
from semlens._util.errors import SemlensWarning, StaleLensError

LAYERS = ["features.3"]


@pytest.fixture(scope="module")
def foundation(tiny_clip_dir):
    return load_foundation_model(f"hf:{tiny_clip_dir}")


@pytest.fixture(scope="module")
def images():
    return [image for image, _ in colour_images(12)]


@pytest.fixture(scope="module")
def built(tmp_path_factory, foundation, images) -> tuple[Lens, Path]:
    out = tmp_path_factory.mktemp("memory") / "mem.lens"
    net = TinyCNN()
    lens = build_lens(model=net, preprocessing=TINY_PREPROCESSING, layers=LAYERS, data=images, foundation=foundation, k=3, out=out, progress=False, workers=0)
    return lens, out


def test_a_lens_from_objects_records_them_and_answers(built, images) -> None:
    lens, _ = built
    identity = lens.manifest["identity"]
    assert identity["model"] == {"spec": "memory:TinyCNN", "fingerprint": load_model(TinyCNN(), TINY_PREPROCESSING).fingerprint}
    assert identity["data"]["spec"] == "memory:list" and identity["data"]["samples"] == len(images)
    assert identity["preprocessing"]["input_size"] == 32
    assert lens.manifest["foundation"]["spec"] == "memory:HFFoundationModel"
    hits = lens.search("red", top=2)
    assert len(hits) == 2 and hits[0].examples
    example = lens.examples.concept_examples(hits[0].unit)[0]
    assert lens.sources.probe_data.load(example.sample).tobytes() == images[example.sample].tobytes()  # the Lens holds the images
    lens.label()
    assert lens.labels.of(LAYERS[0]) is not None  # labelled in the Lens's own folder, by the foundation model it holds


def test_a_held_model_trained_on_after_the_build_is_refused_not_used(built) -> None:
    lens, _ = built
    head = lens.sources.model().module.get_submodule("head")  # the user's own module's (the model is read through a view of it)
    assert lens.explain(0).to_dict() == lens.explain(0).to_dict()  # LRP's passes leave the weights as they were
    trained_from = head.bias.detach().clone()
    with torch.no_grad():
        head.bias.add_(1.0)  # the notebook's next cell trains on
    try:
        with pytest.raises(SemlensError, match=r"now has weights .* but this Lens was built from .*build a Lens of the model as it is now"):
            lens.explain(0)
    finally:
        with torch.no_grad():
            head.bias.copy_(trained_from)
    assert lens.explain(0).prediction
    head.bias.data = trained_from * 2  # storage swapped without an in-place op: seen too
    try:
        with pytest.raises(SemlensError, match=r"now has weights"):
            lens.explain(0)
    finally:
        head.bias.data = trained_from
    assert lens.explain(0).prediction


def test_opened_again_it_asks_for_the_objects_by_name_and_takes_them(built, foundation, tmp_path, monkeypatch) -> None:
    _, out = built
    again = Lens.open(out)
    with pytest.raises(SemlensError, match=r"model passed in memory \(TinyCNN\).*model=MODEL"):
        again.sources.model()
    with pytest.raises(SemlensError, match=r"foundation model passed in memory.*foundation=MODEL"):
        again.search("red")
    with pytest.raises(SemlensError, match=r"data passed in memory \(list\)"):
        again.sources.probe_data
    with monkeypatch.context() as stranger:  # another user's machine: the recorded memory: spec is refused the same way
        stranger.setenv("SEMLENS_CACHE", str(tmp_path / "stranger-cache"))
        untrusted = Lens.open(out)
        assert not untrusted.trusted
        with pytest.raises(SemlensError, match="model passed in memory"):
            untrusted.sources.model()
    given = Lens.open(out, model=LoadedModel(TinyCNN().eval(), "mine", TINY_PREPROCESSING), foundation=foundation)
    assert given.sources.model().fingerprint == given.manifest["identity"]["model"]["fingerprint"]
    assert len(given.search("red", top=2)) == 2
    with pytest.raises(SemlensError, match="now has weights"):
        Lens.open(out, model=TinyCNN(seed=1)).sources.model()


def test_opened_again_it_takes_the_bare_module_and_the_images_back(built, foundation, images) -> None:
    """The objects a notebook holds, given to Lens.open as they were given to build_lens: the module gets the
    preprocessing the Lens was built with (no warning, no ImageNet default), the list of images is the probe data."""
    lens, out = built
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = Lens.open(out, model=TinyCNN().eval(), data=images, foundation=foundation)  # in training mode: said (below)
        model = again.sources.model()
    shown = lambda preprocessing: (preprocessing.input_size, preprocessing.resize, list(preprocessing.mean), list(preprocessing.std))  # noqa: E731
    assert shown(model.preprocessing) == shown(TINY_PREPROCESSING) and model.fingerprint == lens.manifest["identity"]["model"]["fingerprint"]
    assert again.sources.probe_data.fingerprint() == lens.sources.probe_data.fingerprint()
    example = again.examples.concept_examples(again.search("red", top=1)[0].unit)[0]
    assert again.examples.image(example) is not None  # drawn from the images given back
    with pytest.raises(SemlensError, match="not what this Lens was built from"):
        Lens.open(out, data=images[::-1]).sources.probe_data


def test_a_model_spec_given_back_reads_the_model_with_the_lens_s_preprocessing(built, foundation, images) -> None:
    """A ``py:`` factory returning the bare module takes ImageNet's preprocessing; given back to a Lens built with
    another, the Lens's is used and said (its image search failed inside the location test: maps of 224 px views
    against the Lens's 32 px ones)."""
    lens, out = built
    with pytest.warns(UserWarning, match=r"py:tiny_models:tiny_cnn_module: its preprocessing \(resize 256, centre crop 224.*the Lens's is used"):
        model = Lens.open(out, model="py:tiny_models:tiny_cnn_module", data=images, foundation=foundation).sources.model()
    assert model.preprocessing.described() == TINY_PREPROCESSING.described()


def test_the_same_build_lens_call_reuses_the_lens_with_its_objects(built, foundation, images) -> None:
    lens, out = built
    again = build_lens(model=TinyCNN(), preprocessing=TINY_PREPROCESSING, layers=LAYERS, data=images, foundation=foundation, k=3, out=out, progress=False, workers=0)
    assert again.manifest["build_id"] == lens.manifest["build_id"] and again.sources.probe_data.fingerprint() == lens.sources.probe_data.fingerprint()


def test_a_build_resumed_with_another_model_images_or_foundation_model_is_refused(built, foundation, images, tmp_path) -> None:
    _, out = built
    settings = dict(preprocessing=TINY_PREPROCESSING, layers=LAYERS, k=3, out=out, progress=False, workers=0)
    with pytest.raises(StaleLensError, match="model"):
        build_lens(model=TinyCNN(seed=1), data=images, foundation=foundation, **settings)
    changed = list(images)
    changed[4] = changed[4].rotate(90)  # same size, same count: only the pixels tell
    with pytest.raises(StaleLensError, match="data"):
        build_lens(model=TinyCNN(), data=changed, foundation=foundation, **settings)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        SAVERS["clip"](tmp_path / "other-clip")  # the same class, other weights
    with pytest.raises(StaleLensError, match="foundation_id"):
        build_lens(model=TinyCNN(), data=images, foundation=load_foundation_model(f"hf:{tmp_path / 'other-clip'}"), **settings)


def test_data_objects_are_identified_by_content_and_carry_class_names(tmp_path, images) -> None:
    pairs = colour_images(6)
    data = load_data(pairs, classes=["red", "green", "blue"])
    assert data.classes == ["red", "green", "blue"] and data.label(4) == 1 and data.spec == "memory:list"
    paths = []
    for index, (image, _) in enumerate(pairs):
        paths.append(tmp_path / f"{index}.png")
        image.save(paths[-1])
    files = load_data(paths)
    assert files.load(2).tobytes() == pairs[2][0].tobytes() and files.describe(2) == "2.png"
    (tmp_path / "cat").mkdir()
    (tmp_path / "2.png").rename(tmp_path / "cat" / "2.png")
    assert load_data([paths[0], tmp_path / "cat" / "2.png"]).describe(1) == "cat/2.png"  # below the folder they share
    assert load_data(images).fingerprint() != load_data(images[:-1] + [images[0]]).fingerprint()

    class Augmented(torch.utils.data.Dataset):  # a training set's random flips: another view at every read
        def __len__(self) -> int:
            return 4

        def __getitem__(self, index: int) -> torch.Tensor:
            return torch.rand(3, 8, 8)

    with pytest.raises(SemlensError, match=r"sample 0 of memory:Augmented is another image each time it is read \(a random transform"):
        load_data(Augmented()).fingerprint()


def test_an_image_folder_dataset_is_read_from_its_files_without_its_transform(tmp_path, colour_folder) -> None:
    """A notebook's ``ImageFolder(root, transform=weights.transforms())`` yields normalised tensors, which semlens
    refused sample by sample ("give images before normalisation"): its files are read instead, its transform left out."""

    class ImageFolderLike(torch.utils.data.Dataset):  # torchvision's ImageFolder, as semlens sees it
        def __init__(self, root: Path, transform=None) -> None:
            self.classes = sorted(path.name for path in root.iterdir() if path.is_dir())
            self.samples = [(str(file), label) for label, name in enumerate(self.classes) for file in sorted((root / name).iterdir())]
            self.transform = transform

        def __len__(self) -> int:
            return len(self.samples)

        def __getitem__(self, index: int):
            return torch.full((3, 8, 8), -2.0), self.samples[index][1]  # normalised: outside [0, 1]

    with pytest.warns(SemlensWarning, match=r"data ImageFolderLike: semlens reads its \d+ image files itself and leaves out its transform="):
        data = load_data(ImageFolderLike(colour_folder, transform=lambda image: image))
    plain = load_data(colour_folder)
    assert data.spec == "memory:ImageFolderLike" and data.classes == plain.classes and len(data) == len(plain)
    assert data.load(3).tobytes() == plain.load(3).tobytes() and data.label(3) == plain.label(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no transform: nothing left out, nothing said
        assert load_data(ImageFolderLike(colour_folder)).fingerprint() == data.fingerprint()


def test_a_folder_as_typed_and_concept_images_as_lists_are_read_as_build_lens_reads_data(tmp_path) -> None:
    """``load_data("./images")`` and ``load_data(Path)`` read the folder (own-data.md says so; it refused a bare
    folder), and ``ConceptImages`` takes its control and shown images in every form ``build_lens`` takes data (a
    list of paths was accepted, then failed inside the concept test with an AttributeError)."""
    from semlens import ConceptImages

    for index, (image, _) in enumerate(colour_images(4)):
        image.save(tmp_path / f"{index}.png")
    assert load_data(str(tmp_path)).spec == f"folder:{tmp_path}" == load_data(tmp_path).spec and len(load_data(tmp_path)) == 4
    paths = sorted(tmp_path.glob("*.png"))
    concept = ConceptImages(paths[:2], shown=[Image.open(path) for path in paths[2:]])
    assert concept.control.spec == "memory:list" and concept.control.describe(1) == "1.png" and len(concept.shown) == 2
    assert concept.views(tiny_cnn())[1][0].size == (32, 32)
    with pytest.raises(SemlensError, match="missing does not exist or is not a directory"):
        ConceptImages(str(tmp_path / "missing"), shown=paths)


def test_a_model_in_training_mode_is_read_in_eval_mode_and_said_so() -> None:
    """A notebook's model fresh from training (dropout on, batch norm by batch statistics) is read in eval mode and
    left so; the warning says it, so that the next training cell does not train it in eval mode unknowingly."""
    model = TinyCNN()
    with pytest.warns(UserWarning, match=r"model TinyCNN was in training mode: semlens reads it in eval mode and leaves it so \(model.train\(\)") as said:
        load_model(model, TINY_PREPROCESSING)
    assert not model.training and said[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model(model, TINY_PREPROCESSING)  # in eval mode: nothing to say


def test_a_module_without_class_names_takes_its_labelled_data_s_names_where_it_has_as_many_outputs(tmp_path, foundation) -> None:
    """A notebook's model has no class names; with (image, label) pairs and classes=, its outputs are the data's
    classes by index (as class relevance maps the labels), so a class can be audited by name, and the build says
    so (the data's order may not be the model's). Where the counts differ, nothing names them."""
    pairs, names = colour_images(12), ["red", "green", "blue"]
    settings = {"preprocessing": TINY_PREPROCESSING, "layers": LAYERS, "data": pairs, "classes": names, "foundation": foundation, "k": 3, "progress": False, "workers": 0}
    with pytest.warns(UserWarning, match=r"the model names no classes: its 3 outputs take the data's class names in the data's order \(0 red, 1 green, 2 blue\)"):
        lens = build_lens(model=TinyCNN(), out=tmp_path / "named.lens", **settings)  # said: the order may not be the model's
    assert lens.classes == names and Lens.open(tmp_path / "named.lens").classes == names
    assert lens.audit("green", spurious=["stripes"]).valid == ["green"]
    with pytest.warns(UserWarning, match=r"class relevance of predicted classes .*3 data classes, 4 model outputs"):  # and says so
        assert build_lens(model=TinyCNN(classes=4), out=tmp_path / "four.lens", **settings).classes is None


def test_an_audit_without_class_relevance_says_why_not_that_the_class_is_unknown(tmp_path, foundation) -> None:
    pairs, names = colour_images(6), ["red", "green", "blue"]
    settings = {"preprocessing": TINY_PREPROCESSING, "layers": LAYERS, "data": pairs, "classes": names, "foundation": foundation, "k": 3, "progress": False, "workers": 0}
    lens = build_lens(model=TinyCNN(), out=tmp_path / "off.lens", class_relevance=False, **settings)
    with pytest.raises(SemlensError, match=r"built with class relevance off; build it again with it on") as raised:
        lens.audit("green", spurious=["stripes"])
    assert "unknown class" not in str(raised.value) and "rebuild" not in str(raised.value)


class DictOutput(TinyCNN):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"features": x.mean(), "logits": super().forward(x)}


class TupleOutput(TinyCNN):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.mean(dim=(1, 2, 3)), super().forward(x)  # the logits are the first [batch, classes] tensor


class OutputObject(TinyCNN):
    """As a transformers classifier: an output object with ``.logits`` and class names in ``config.id2label``."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(id2label={0: "red", 1: "green", 2: "blue"})

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=super().forward(x))


@pytest.mark.parametrize("net", [DictOutput(), TupleOutput(), OutputObject()], ids=["dict", "tuple", "object"])
def test_a_model_returning_its_logits_among_other_things_is_read_through_them_with_relevance(tmp_path, foundation, net) -> None:
    """The same Lens as the plain model's (same layer names, relevance crops, class relevance), from a view of the
    same object; the user's object keeps its own forward."""
    pairs, names = colour_images(12), ["red", "green", "blue"]
    settings = {"preprocessing": TINY_PREPROCESSING, "layers": LAYERS, "data": pairs, "classes": names, "foundation": foundation, "k": 3, "progress": False, "workers": 0}
    plain = build_lens(model=TinyCNN(), out=tmp_path / "plain.lens", **settings)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lens = build_lens(model=net, out=tmp_path / "net.lens", **settings)
    assert not [str(warning.message) for warning in caught if "instead of" in str(warning.message) or "class relevance" in str(warning.message)]
    assert lens.classes == names and lens.audit("green", spurious=["stripes"]).valid == ["green"]
    for layer in plain.layers:
        assert lens.manifest["layers"][layer]["crop"]["mode"] == "relevance"
        assert torch.equal(lens.arrays.samples(layer), plain.arrays.samples(layer))
        torch.testing.assert_close(lens.arrays.class_relevance(layer)["mean_share"], plain.arrays.class_relevance(layer)["mean_share"], equal_nan=True)
    assert not isinstance(net(torch.zeros(1, 3, 32, 32)), torch.Tensor)


class GatedDictOutput(torch.nn.Module):
    """A residual sum and a gate in the model's own forward, which LRP's torch.fx rewrite must reach through the view."""

    def __init__(self, as_dict: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.as_dict = as_dict
        self.stem, self.conv = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        h = torch.relu(self.stem(x))
        h = torch.relu(h + self.conv(h))
        h = h * torch.sigmoid(self.conv(h))
        logits = self.head(h.mean(dim=(2, 3)))
        return {"logits": logits} if self.as_dict else logits


def test_the_view_is_traced_copied_and_saved_as_the_model_is() -> None:
    import copy
    import io

    from semlens.relevance.lrp import RelevanceModel

    plain, view = load_model(GatedDictOutput(False), TINY_PREPROCESSING).module, load_model(GatedDictOutput(), TINY_PREPROCESSING).module
    example = torch.rand(2, 3, 32, 32)
    assert RelevanceModel(view, example).check().supported and RelevanceModel(plain, example).check().supported
    assert isinstance(copy.deepcopy(view)(example), torch.Tensor) and isinstance(copy.copy(view)(example), torch.Tensor)
    buffer = io.BytesIO()
    torch.save(view, buffer)  # as the user's own class
    buffer.seek(0)
    assert type(torch.load(buffer, weights_only=False)) is GatedDictOutput


def test_a_model_semlens_cannot_feed_is_refused_at_load_with_what_to_change() -> None:
    class Grey(TinyCNN):
        def __init__(self) -> None:
            super().__init__()
            self.features[0] = torch.nn.Conv2d(1, 8, 3, padding=1)

    class NoLogits(TinyCNN):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"pooled": super().forward(x)[:, 0]}

    class TwoMatrices(TinyCNN):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.pool(self.features(x)).flatten(1), super().forward(x)

    with pytest.raises(SemlensError, match=r"fails on the float32 RGB batch \[1, 3, 32, 32\].*1 channels.*averages them"):
        load_model(Grey(), TINY_PREPROCESSING)
    with pytest.raises(SemlensError, match=r"its weights are float64: pass model.float\(\)"):
        load_model(TinyCNN().double(), TINY_PREPROCESSING)
    with pytest.raises(SemlensError, match=r"returns dict \(keys pooled\), with no logits"):
        load_model(NoLogits(), TINY_PREPROCESSING)
    with pytest.raises(SemlensError, match=r"2 \[batch, n\] tensors \(\[0\] \(1, 6\), \[1\] \(1, 3\)\)"):
        load_model(TwoMatrices(), TINY_PREPROCESSING)
    small = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.Flatten(), torch.nn.Linear(4 * 15 * 15, 3))  # 32 px only
    with pytest.raises(SemlensError, match=r"give the input size it takes with preprocessing="):
        load_model(small, Preprocessing())


def test_a_model_object_scoring_1000_classes_takes_imagenet_s_names_unless_given_its_own() -> None:
    with pytest.warns(UserWarning, match=r"scores 1000 classes and names none: they are taken as ImageNet's, in its order") as said:
        imagenet_sized = load_model(TinyCNN(classes=1000), TINY_PREPROCESSING)
    assert said[0].filename == __file__  # shown at the user's line, not inside semlens
    with pytest.warns(UserWarning, match=r"scores 1000 classes") as said:
        BuildConfig(model=TinyCNN(classes=1000), preprocessing=TINY_PREPROCESSING, layers=LAYERS, data=colour_images(3), foundation="conse")
    assert said[0].filename == __file__  # also where a build's config loads the model (it pointed into config.py)
    assert imagenet_sized.classes[281] == "tabby"  # so an audit of "tabby", "tabby cat" or n02123045 finds its output
    from semlens.model.loading import class_mapping

    picture = Image.new("RGB", (32, 32))
    numbered = class_mapping(imagenet_sized, load_data([(picture, 0)], classes=[str(i) for i in range(1000)]))
    assert numbered.labels == dict(enumerate(range(1000))) and numbered.names[7] == "7"  # assumed names give way to the data's, by index
    wnids = class_mapping(imagenet_sized, load_data([(picture, 0)], classes=["n02123045", "n13385216"]))
    assert wnids.labels == {0: 281} and "not among the model's: n13385216" in wnids.targets  # where the data names ImageNet's classes
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_model(TinyCNN(classes=1000).eval(), TINY_PREPROCESSING, classes=[f"c{i}" for i in range(1000)]).classes[281] == "c281"
    assert load_model(tiny_cnn(), classes=["r", "g", "b"]).classes == ["r", "g", "b"]  # a LoadedModel renamed
    with pytest.raises(SemlensError, match=r"classes= names 2 classes, but the model scores 3: give one name per output"):
        load_model(TinyCNN(), TINY_PREPROCESSING, classes=["r", "g"])
    with pytest.raises(SemlensError, match=r"classes= goes with a model object \(an nn.Module or a LoadedModel\)"):
        load_model("py:tiny_models:tiny_cnn", classes=["r", "g", "b"])


def test_a_compiled_model_is_read_as_the_module_it_compiles() -> None:
    plain = TinyCNN()
    compiled = load_model(torch.compile(plain), TINY_PREPROCESSING)  # compiles nothing until called
    assert compiled.fingerprint == load_model(plain, TINY_PREPROCESSING).fingerprint
    assert "features.3" in dict(compiled.module.named_modules()) and not any("_orig_mod" in name for name, _ in compiled.module.named_modules())


def test_what_a_build_did_instead_of_what_was_asked_is_a_warning_in_a_notebook(tmp_path, foundation, images) -> None:
    with pytest.warns(UserWarning, match=r"k = 12 instead of 30: the data has only 12 samples"):
        build_lens(model=TinyCNN(), preprocessing=TINY_PREPROCESSING, layers=LAYERS, data=images, foundation=foundation, out=tmp_path / "k.lens", progress=False, workers=0)


def test_labels_without_class_names_are_the_model_s_outputs_by_index(tmp_path, foundation) -> None:
    """(image, label) pairs without classes=: the labels are class indices, so the class relevance uses them (not
    the predictions); an audit of a class the data does not show names the classes it does."""
    pairs = [(image, 1) for image, _ in colour_images(12)]  # every image labelled class 1
    settings = {"preprocessing": TINY_PREPROCESSING, "layers": LAYERS, "data": pairs, "foundation": foundation, "k": 3, "progress": False, "workers": 0}
    with pytest.warns(UserWarning, match="takes each label as the index of the model's output"):
        lens = build_lens(model=TinyCNN(), out=tmp_path / "indices.lens", **settings)
    assert lens.manifest["relevance"]["targets"] == "labels (by index: the data names no classes)"
    assert lens.arrays.class_relevance(LAYERS[0])["count"].tolist() == [0, 12, 0]
    with pytest.raises(SemlensError, match=r"choose one of the 1 classes it holds \(1\)"):
        lens.audit(0, valid=["red"], spurious=["stripes"])


class Rows:
    """Rows as a Hugging Face ``datasets.Dataset`` gives them (indexable, neither a list nor a torch Dataset), with
    its label column's class names."""

    features = {"label": SimpleNamespace(names=["red", "green", "blue"])}

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.rows[index]


def test_data_as_dataset_rows_one_batch_array_and_layers_as_modules(tmp_path, foundation) -> None:
    pairs = colour_images(12)
    rows = Rows([{"image": image, "label": label} for image, label in pairs])
    assert BuildConfig(model="py:tiny_models:tiny_cnn", layers=LAYERS, data=rows).data.classes == ["red", "green", "blue"]
    rows = load_data(rows)
    assert rows.classes == ["red", "green", "blue"] and [rows.label(index) for index in range(3)] == [0, 1, 2]
    assert rows.load(0).size == pairs[0][0].size
    batch = np.stack([np.asarray(image) for image, _ in pairs])
    assert len(load_data(batch)) == 12 and len(load_data(torch.from_numpy(batch).permute(0, 3, 1, 2))) == 12
    with pytest.raises(SemlensError, match=r"a batch of images .*got shape \(40, 40, 3\)"):
        load_data(batch[0])
    net = TinyCNN()
    config = BuildConfig(model=net, preprocessing=TINY_PREPROCESSING, layers=[net.features[3], "head"], data=batch, foundation=foundation)
    assert config.layers == ["features.3", "head"]
    with pytest.raises(SemlensError, match="not a submodule of the model"):
        BuildConfig(model=net, preprocessing=TINY_PREPROCESSING, layers=[TinyCNN().head], data=batch)


def test_explain_and_image_search_take_arrays_and_tensors(built) -> None:
    lens, _ = built
    image = np.array(colour_images(1)[0][0])
    assert lens.explain(image, top=1).class_name == lens.explain(torch.from_numpy(image).permute(2, 0, 1), top=1).class_name
    assert len(lens.search(images=[image], top=2)) == 2
    with pytest.raises(SemlensError, match="an image probe: expected a 3xHxW"):
        lens.search(images=[torch.zeros(5, 5)])
    with pytest.raises(SemlensError, match="an empty text ranks nothing"):
        lens.search("  ")


def test_preprocessing_from_a_torchvision_transform_or_imagenet_said_in_a_warning() -> None:
    from semlens.model.preprocess import preprocessing_of

    transforms = pytest.importorskip("torchvision.transforms")
    compose = transforms.Compose([transforms.Resize(36), transforms.CenterCrop(32), transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.25] * 3)])
    assert preprocessing_of(compose) == Preprocessing(32, 36, (0.5,) * 3, (0.25,) * 3)
    assert load_model(TinyCNN(), compose).preprocessing.input_size == 32
    with pytest.raises(SemlensError, match="RandomCrop"):
        preprocessing_of(transforms.Compose([transforms.RandomCrop(32), transforms.ToTensor()]))
    with pytest.warns(UserWarning, match=r"Resize\(\(32, 32\)\) squashes an image to that shape"):  # semlens crops the centre
        assert preprocessing_of(transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor()])).input_size == 32
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_model(TinyCNN().eval())
    assert model.preprocessing == Preprocessing() and len(caught) == 1 and "preprocessing=" in str(caught[0].message)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"model": "py:tiny_models:tiny_cnn", "preprocessing": TINY_PREPROCESSING}, "preprocessing= goes with a model object"),
        ({"data": "folder:.", "classes": ["a"]}, "classes= goes with data passed as a list"),
        ({"foundation": TinyCNN()}, r"foundation=a TinyCNN is not a foundation model semlens can use: .*open_clip model as \(model, preprocess, tokenizer\)"),
        ({"shard": "0/2"}, "give them as spec strings, not objects"),
        ({"k": TinyCNN()}, r"k=a TinyCNN should be an integer"),
    ],
)
def test_objects_in_the_wrong_place_are_refused_in_one_line(settings, message, images) -> None:
    values = {"model": TinyCNN(), "preprocessing": TINY_PREPROCESSING, "layers": LAYERS, "data": images, **settings}
    with pytest.raises(SemlensError, match=message) as caught:
        BuildConfig(**values)
    assert "\n" not in str(caught.value)  # never the module's repr


def test_build_lens_needs_an_out_and_known_settings(images) -> None:
    with pytest.raises(SemlensError, match="out="):
        build_lens(model=TinyCNN(), layers=LAYERS, data=images)
    with pytest.raises(SemlensError, match="unknown settings modle"):
        build_lens(modle=TinyCNN(), layers=LAYERS, data=images, out="x.lens")


class ReusedReLU(torch.nn.Module):
    """torchvision's ResNet blocks' habit: one ReLU module called after each convolution of the block."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.Conv2d(6, 4, 3, padding=1)
        self.relu = torch.nn.ReLU()
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu(self.conv2(self.relu(self.conv1(x)))).mean(dim=(2, 3)))


def test_a_layer_the_model_calls_twice_is_refused_naming_its_block(tmp_path, foundation, images) -> None:
    """A reused ReLU crashed the responses stage: the build read its first call, the intervention reader both, and
    switching a unit off would zero it in every call. Such a layer is refused at the first batch, naming what to read
    instead, and `semlens layers` marks it."""
    from semlens.model.units import list_layers

    with pytest.raises(SemlensError, match=r"layer 'relu' runs more than once in a forward pass .* read the module that calls it"):
        build_lens(model=ReusedReLU(), preprocessing=TINY_PREPROCESSING, layers=["relu"], data=images, foundation=foundation,
                   k=3, out=tmp_path / "reused.lens", progress=False, workers=0)  # fmt: skip
    shapes = {info.name: (info.shape, info.units) for info in list_layers(ReusedReLU(), torch.rand(1, 3, 16, 16))}
    assert shapes["relu"][0].endswith("(runs more than once a forward: not readable)") and shapes["relu"][1] is None


def test_an_overlay_search_on_a_lens_opened_without_its_model_says_how_it_ranked(built, foundation) -> None:
    """An image with transparent parts (a concept to paste) is ranked by the model's response where the model loads;
    a Lens built from an object and opened by path has none, and the search says it ranked by name and alignment."""
    _, out = built
    overlay = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    overlay.paste((255, 255, 0, 255), (4, 4, 12, 12))
    with pytest.warns(UserWarning, match="ranked by name and alignment, not by the model's response"):
        hits = Lens.open(out, foundation=foundation).search(images=[overlay], top=3)
    assert hits.rank == "named"
    # nor can its audit test a concept semlens draws on its drawings: by alignment alone, and said so
    with pytest.warns(UserWarning, match="no concept test: testing 'frame' on the frames semlens draws needs the model under study"):
        audit = Lens.open(out, foundation=foundation).audit(0, valid=["red"], spurious=["frame"])
    assert audit.reliance is None and not audit.share_tested


def test_labels_from_a_list_of_concept_names(built) -> None:
    lens, _ = built
    labelling = lens.label(vocabulary=["red", "green", "blue"], save=False)
    assert labelling.vocabulary.concepts == ("red", "green", "blue")


def test_a_network_wrapped_with_its_normalisation_gets_relevance_crops_and_a_second_one_is_warned(tmp_path, foundation, images) -> None:
    mean, std = TINY_PREPROCESSING.mean, TINY_PREPROCESSING.std
    wrapped = torch.nn.Sequential(Normalising(mean, std), TinyCNN())
    bare = Preprocessing(TINY_PREPROCESSING.input_size, TINY_PREPROCESSING.resize, (0.0,) * 3, (1.0,) * 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lens = build_lens(model=wrapped, preprocessing=bare, layers=["1.features.3"], data=images, foundation=foundation, k=3,
                          out=tmp_path / "wrapped.lens", progress=False, workers=0)
    assert lens.manifest["layers"]["1.features.3"]["crop"]["mode"] == "relevance" and lens.manifest["stages"]["relevance"]["complete"]
    assert not [str(warning.message) for warning in caught if "normalis" in str(warning.message)]
    with pytest.warns(UserWarning, match=r"normalises its input itself \(its first module, '0'\) and its preprocessing does too"):
        build_lens(model=wrapped, preprocessing=TINY_PREPROCESSING, layers=["1.features.3"], data=images, foundation=foundation, k=3,
                   out=tmp_path / "twice.lens", progress=False, workers=0, class_relevance=False)


def test_a_drawn_test_views_the_probe_images_once_where_the_model_resizes_before_it_crops(tmp_path, foundation) -> None:
    """A drawn test pastes its drawing and its control into the model's views of probe images, viewed once: a view
    viewed again is zoomed a second time where the model resizes to more than it crops (36 then 32 px here)."""
    from semlens.lens.audits import _drawn_test

    labelled = colour_images(12)
    data = load_data(labelled, classes=["red", "green", "blue"])
    lens = build_lens(model=TinyCNN().eval(), preprocessing=TINY_PREPROCESSING, layers=LAYERS, data=data, foundation=foundation, k=3, out=tmp_path / "l.lens", progress=False, workers=0)
    model = lens.sources.model()
    assert model.preprocessing.resize != model.preprocessing.input_size
    drawn = _drawn_test(lens, 0, "frame", LAYERS[0])
    without, with_frame = drawn.concept.views(model)
    others = {model.preprocessing.view(image).tobytes() for image, label in labelled if label != 0}
    assert len(without) == len(others) and all(view.tobytes() in others for view in without)
    assert all(view.size == without[0].size for view in with_frame)
    assert drawn.control and all(placement.overlay(*without[0].size).size == without[0].size for placement in drawn.control)


def test_a_report_of_a_lens_whose_images_are_out_of_reach_names_their_sources(built, foundation, tiny_clip_dir, tmp_path) -> None:
    """A Lens built from images in memory, opened by path, cannot read its examples' images again: its report (Python
    and command line) is written all the same, naming each example's source in place of its picture, and says why."""
    from typer.testing import CliRunner

    from semlens.cli import app
    from semlens.report.html import write_report

    _, out = built
    page = write_report(Lens.open(out, foundation=foundation), tmp_path / "report.html").read_text()
    assert "<td>example images</td><td>not shown (their sources are named instead): this Lens was built from the data passed in memory" in page
    assert "data:image/jpeg" not in page and "sample 0" in page
    shown = CliRunner().invoke(app, ["report", str(out), "--foundation", f"hf:{tiny_clip_dir}", "--out", str(tmp_path / "cli.html")])
    assert shown.exit_code == 0, shown.output
    assert (tmp_path / "cli.html").exists() and "the report names its concept examples' sources, without their images" in " ".join(shown.output.split())



def test_a_model_without_class_names_on_unlabelled_data_is_said_at_the_build_and_asked_by_index(tmp_path, foundation, images) -> None:
    """A notebook's bare module on unlabelled images: its classes are its output indices. The build says so (an audit
    by name failed later, saying only that the model has no class names), and the audit by name says how to name them."""
    with pytest.warns(SemlensWarning, match=r"the model names no classes and the data has no labels: its classes are its output indices \(0 to 2\)"):
        lens = build_lens(model=TinyCNN().eval(), preprocessing=TINY_PREPROCESSING, layers=LAYERS, data=images, foundation=foundation, k=3, out=tmp_path / "l.lens", progress=False, workers=0)
    with pytest.raises(SemlensError, match=r"this model has no class names: give its output index, or name its outputs \(load_model\(module, classes=\[...\]\)"):
        lens.audit("star", spurious=["stripes"])


def test_an_audit_whose_shares_rest_on_few_images_of_the_class_says_so_in_every_face(tmp_path, foundation) -> None:
    """The shares of a class seen on 4 probe images (of 12) are an average over those 4: the audit counts them and says
    so (the JSON, the notebook's table, the report's summary), as it says a small null gives rough z-scores."""
    from semlens.analysis.audit import MIN_CLASS_IMAGES

    data = load_data(colour_images(12), classes=["red", "green", "blue"])
    lens = build_lens(model=TinyCNN().eval(), preprocessing=TINY_PREPROCESSING, layers=LAYERS, data=data, foundation=foundation, k=3, out=tmp_path / "l.lens", progress=False, workers=0)
    audit = lens.audit("red", spurious=["stripes"], draw=False)
    assert audit.class_images == 4 < MIN_CLASS_IMAGES
    said = "the shares rest on 4 probe images of the class (under 10)"
    assert audit.few_class_images.startswith(said) and audit.to_dict()["class_images"] == 4 and audit.to_dict()["few_class_images"].startswith(said)
    assert said in audit._repr_html_()


def test_the_explorer_says_up_front_what_a_lens_built_from_objects_cannot_do_without_them(built, monkeypatch) -> None:
    """Served by path, a Lens built from objects has neither its images nor its foundation model: `semlens serve` says
    both when it starts (every search answered 400 before, with only the images said)."""
    import uvicorn
    from typer.testing import CliRunner

    from semlens.cli import app

    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)
    _, out = built
    shown = " ".join(CliRunner().invoke(app, ["serve", str(out), "--port", "8124"]).output.split())
    assert "is served without its example images" in shown
    assert "was embedded by a foundation model passed in memory" in shown and "its search by text or image, labels and comparisons need it" in shown
