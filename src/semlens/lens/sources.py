"""What a Lens names outside itself (its probe data, foundation model, model and SAE files), resolved under
the trust model (``semlens.store.trust``): the user's own choice first, the recorded spec only where it is
inert or the Lens is trusted, and each checked against the fingerprint recorded at build time."""

from __future__ import annotations

from dataclasses import replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

from torch import nn

from .._util.errors import SemlensError, asked, warn_caller
from .._util.specs import IN_MEMORY, split_spec
from ..store.trust import LensAccess, UntrustedSpecError, check_spec

if TYPE_CHECKING:
    from ..data import ImageData
    from ..foundation import FoundationModel
    from ..model.loading import LoadedModel
    from ..model.units import LayerSpec


class LensSources:
    """Loads, on first use, what one Lens's manifest names (``Lens.sources``): its probe data, foundation models, model
    and SAE files, each only as the Lens's trust allows."""

    def __init__(self, manifest: dict[str, Any], access: LensAccess, trusted: bool) -> None:
        self.manifest, self.access, self.trusted = manifest, access, trusted
        self._held_model: LoadedModel | None = None  # a bare module given, as loaded once (its fingerprint re-hashed only where it changed)

    @cached_property
    def probe_data(self) -> ImageData:
        """The probe data: what the user named, else (trusted Lenses only) the spec recorded at build time;
        checked against the recorded fingerprint, so that a changed folder shows no wrong images."""
        from ..data import load_data

        recorded = self.manifest["identity"]["data"]
        spec = self.access.data_spec() or check_spec(recorded["spec"], "probe data", self.trusted, asked("data=FOLDER", "--probe-data FOLDER"))
        data = load_data(spec)
        found = data.fingerprint()
        if found != recorded["fingerprint"]:
            raise SemlensError(
                f"the probe data {data.spec} ({len(data)} samples) is not what this Lens was built from (fingerprint {found}, "
                f"recorded {recorded['fingerprint']}): its concept examples would show the wrong images. "
                f"Give the data the Lens was built from ({asked('data=...', '--probe-data')})"
            )
        return data

    def foundation_in_memory(self) -> str | None:
        """Where the Lens's foundation model was passed in memory and not given again, which it was (its id); else
        None. Asked without loading anything: a face says up front that search by text or image needs it."""
        recorded = self.manifest["foundation"]
        return recorded["id"] if self.access.foundation is None and split_spec(recorded["spec"])[0] == IN_MEMORY else None

    def space_foundation(self, space: str | None) -> FoundationModel:
        """The foundation model of an embedding space (None: the default one, which the user may name instead),
        from its recorded spec where that is inert or the Lens trusted; its id checked against the record."""
        from ..foundation import shared_foundation_model

        recorded = self.manifest["foundation"] if space is None else self.manifest["spaces"][space]
        if space is None:
            spec = self.access.foundation or check_spec(recorded["spec"], "foundation model", self.trusted, asked("foundation=SPEC", "--foundation SPEC"))
        else:
            spec = next((model for model in self.access.extra_foundations if model.id == recorded["id"]), None) or self._space_spec(space, recorded)
        model = shared_foundation_model(spec)
        if model.id != recorded["id"]:
            raise SemlensError(
                f"foundation model {f'{spec} now loads as {model.id}' if isinstance(spec, str) else model.id}, which is not the one this Lens "
                f"was embedded with ({recorded['id']}): another model, or changed weights, whose probes would not match the stored "
                f"embeddings; give that one ({asked('foundation=...', '--foundation')})"
            )
        return model

    def _space_spec(self, space: str, recorded: dict[str, Any]) -> str:
        """The spec of an extra space's foundation model, where it may be followed; one a build was given as an object
        is asked for again (none of ``extra_foundations`` has its weights)."""
        if split_spec(recorded["spec"])[0] == IN_MEMORY:
            raise SemlensError(
                f"space {space} was embedded by a foundation model passed in memory ({recorded['id']}), which this Lens "
                "cannot load again: pass the same model yourself (Lens.open(LENS, extra_foundations=[MODEL]))"
            )
        return check_spec(recorded["spec"], f"space {space}'s foundation model", self.trusted, "it is recorded by the Lens")

    def model(self) -> LoadedModel:
        """The model under study: the one the user named (``model=``, ``--model``), else (trusted Lenses only)
        reloaded from its recorded spec; checked against the recorded weights either way."""
        from ..model.loading import load_model

        from ..model.preprocess import Preprocessing

        recorded, given = self.manifest["identity"]["model"], self.access.model
        built = Preprocessing(**self.manifest["identity"]["preprocessing"])
        if isinstance(given, nn.Module):  # a bare module (a notebook's): with the preprocessing the Lens was built with
            self._held_model = self._held_model or load_model(given, built)
            given = self._held_model
        model = self.checked(load_model(given or check_spec(recorded["spec"], "model", self.trusted, asked("model=SPEC", "--model SPEC"))))
        if model.preprocessing.described() != built.described():  # a py: factory's bare module takes ImageNet's
            warn_caller(
                f"model {model.spec}: its preprocessing ({model.preprocessing.described()}) is not the one this Lens was built "
                f"with ({built.described()}); the Lens's is used, as its answers read the model as it was built"
            )
            model = replace(model, preprocessing=built)
        return model

    def checked(self, model: LoadedModel) -> LoadedModel:
        """``model`` (as ``model()`` gave it), refused where its weights are not those the Lens was built from, now: a
        model object held since may have been trained on in place."""
        recorded = self.manifest["identity"]["model"]
        if model.fingerprint != recorded["fingerprint"]:
            corrected = model.spec.startswith("corrected:") and not recorded["spec"].startswith("corrected:")
            raise SemlensError(
                f"model {recorded['spec']} now has weights {model.fingerprint}, but this Lens was built from "
                f"{recorded['fingerprint']}; tests of its findings would test another model"
                + ("; a corrected model is one: build a Lens of it (semlens run --model SPEC), or apply the correction "
                   "to this Lens's model with test-artifact --correction FILE" if corrected else
                   "; build a Lens of the model as it is now, or give back the weights it was built from (a model run in train mode "
                   "changes its batch-norm statistics at every pass)")
            )  # fmt: skip
        return model

    def layer_specs(self, layers: list[str]) -> dict[str, LayerSpec]:
        """How the model is read as the units of each of ``layers``: the recorded spec, through its SAE where it
        has one (``sae_files``), for the passes that read the model's units again."""
        from ..model.units import LayerSpec

        files = self.sae_files(layers)
        return {layer: LayerSpec(**{**self.manifest["layers"][layer]["spec"], "sae": files.get(layer)}) for layer in layers}

    def sae_files(self, layers: list[str]) -> dict[str, str]:
        """The SAE (file or SAELens directory) of each of ``layers`` read through one (for relevance and pruning
        in SAE space): only for a trusted Lens (a path it names), and only while every file it reads is the one
        the Lens was built with."""
        from .._util.errors import LayerError
        from ..model.sae import sae_fingerprint

        files = {}
        for layer in layers:
            spec = self.manifest["layers"][layer]["spec"]
            if not spec.get("sae"):
                continue
            path = spec["sae"]
            if not self.trusted:
                raise UntrustedSpecError(
                    f"layer {layer} of this Lens is read through the SAE file {path!r}; a Lens received from someone "
                    f"else never makes semlens read files it names. If you trust it, pass {asked('trust=True', '--trust')}"
                )
            recorded = next(entry["sae"] for entry in self.manifest["identity"]["layers"] if entry["name"] == layer)
            try:
                unchanged = sae_fingerprint(path) == recorded
            except LayerError:
                unchanged = False
            if not unchanged:
                raise SemlensError(f"the SAE {path} of layer {layer} is missing or not the one this Lens was built with")
            files[layer] = path
        return files


def data_described(manifest: dict[str, Any]) -> str:
    """The probe data as ``info`` and the report name it: its spec and samples, with those that could not be read."""
    data, failed = manifest["identity"]["data"], manifest["stages"].get("collect", {}).get("failed", 0)
    unread = f", {failed} of them could not be read (skipped; listed in failures.json)" if failed else ""
    return f"{data['spec']} ({data['samples']} samples{unread})"
