"""Commands that test what a Lens found: audit, graph, test-artifact, prune."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .._util.errors import SemlensError, on_the_command_line
from ..analysis.audit import DRAWN_CAVEAT, UNCONFIRMED_BY_DRAWINGS, advice_asked
from ..lens.audits import drawn_spurious, pruning_effect
from ..model.imagenet import shown_class
from ._app import (
    AsJson,
    Foundation,
    Model,
    ProbeData,
    Space,
    Trust,
    app,
    console,
    emit_json,
    friendly,
    labelled_to_show,
    open_lens,
    parent_made,
    say,
    table,
    user_data,
)

# the audit's concept test, in `semlens audit` and in the audits of `semlens report`
TestData = Annotated[Optional[str], typer.Option(help="Concept test: images without the spurious concept (folder or data spec), of the class and others (then a unit the class's images raise more than the concept does is not confirmed; classes by label, else by prediction).")]
SpuriousData = Annotated[Optional[str], typer.Option(help="Concept test: images that show the spurious concept (folder or data spec), instead of --artifact.")]
ConceptArtifact = Annotated[Optional[Path], typer.Option("--artifact", help="Concept test: the spurious concept as an artefact image (RGBA) inserted into --test-data.")]
ConceptMask = Annotated[Optional[Path], typer.Option("--mask", help="Mask image (white = artefact) instead of the artefact's alpha.")]
ConceptAt = Annotated[str, typer.Option("--at", help="Top-left X,Y of the artefact in the model's input view; several placements X,Y;X,Y;... are given to the test images in turn.")]
ConceptTint = Annotated[Optional[str], typer.Option("--tint", help="Concept test: a tint R,G,B (0.7 p + 0.3 c) as the spurious concept.")]
TestAll = Annotated[bool, typer.Option("--test-all", help="Concept test: test every relevant unit, not only the flagged ones (finds the units the reliance runs through where no example aligns with the concept).")]
NoDraw = Annotated[bool, typer.Option("--no-draw", help="Without --test-data: do not test a --spurious concept semlens draws (watermark, frame, logo, ruler, colour cast) on its drawings pasted into probe images.")]

AUDIT_KEYS = {"class", "valid", "spurious", "valid_images", "spurious_images", "cut", "z", "margin", "by_label", "by_location", "by_rise", "locate_share", "locate_enough"}


@app.command()
@friendly
def audit(
    lens: Path = typer.Argument(..., help="Lens directory (built with class relevance)."),
    class_name: Optional[str] = typer.Option(None, "--class", "-c", help="Class name or index to audit."),
    valid: Optional[list[str]] = typer.Option(None, "--valid", help="A valid concept for the class (repeatable; default: the class's own name)."),
    spurious: Optional[list[str]] = typer.Option(None, "--spurious", help="A spurious concept, the one you suspect (repeatable; an audit needs one, or --spurious-image)."),
    valid_image: Optional[list[Path]] = typer.Option(None, help="Image probe of a valid concept (repeatable)."),
    spurious_image: Optional[list[Path]] = typer.Option(None, help="Image probe of a spurious concept (repeatable)."),
    config: Optional[Path] = typer.Option(None, help="TOML with class, valid, spurious, valid_images, spurious_images, cut, z, margin, by_label, by_location, by_rise, locate_share, locate_enough."),
    cut: Optional[float] = typer.Option(None, help="Relevance share above which a unit counts as relevant (default 0.028, in a layer of more than 64 channels 0.028 x 64 / channels)."),
    z: Optional[float] = typer.Option(None, help="Robust z (against the unit's layer) above which a unit is aligned with a concept (default 3)."),
    margin: Optional[float] = typer.Option(None, help="z by which spurious must beat valid (or valid spurious) for a one-sided verdict (default 1)."),
    alignment_only: bool = typer.Option(False, "--alignment-only", help="Judge by the alignment alone, not also by each unit's best concept by its crop responses nor by whether the concept test finds the concept raising it and where it fires."),
    layer: Optional[list[str]] = typer.Option(None, "--layer", "-l", help="Only these layers (default: all but the logits)."),
    all_classes: bool = typer.Option(False, "--all", help="Audit every class (valid concept: its own name) and rank by spurious-or-both share."),
    test_data: TestData = None,
    spurious_data: SpuriousData = None,
    artifact: ConceptArtifact = None,
    mask: ConceptMask = None,
    at: ConceptAt = "0,0",
    tint: ConceptTint = None,
    test_all: TestAll = False,
    no_draw: NoDraw = False,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML page with the scatter plot (one class).", callback=parent_made),
    trust: Trust = False,
    model: Model = None,
    foundation: Foundation = None,
    probe_data: ProbeData = None,
    space: Space = None,
    as_json: AsJson = False,
) -> None:
    """Audit a class: are the units it relies on aligned with valid or with spurious concepts (each alignment
    judged against its layer's null)? With --test-data and --artifact/--tint/--spurious-data, also test the
    flagged units on images and measure the class's reliance on the concept (needs the model); without them, a
    --spurious concept semlens draws (a watermark, a frame, a logo, a ruler, a colour cast) is tested on its drawings
    pasted into probe images of other classes (--no-draw: not)."""
    from ..analysis.audit import LOCATE_ENOUGH, LOCATE_SHARE, MARGIN, Z_CUT, AlignmentRule

    opened = open_lens(lens, trust, probe_data, foundation, model, space)
    settings = _audit_settings(config) if config else {}
    valid = valid or settings.get("valid", [])
    spurious = spurious or settings.get("spurious", [])
    valid_image = valid_image or settings.get("valid_images", [])
    spurious_image = spurious_image or settings.get("spurious_images", [])
    cut = cut if cut is not None else settings.get("cut")
    rule = AlignmentRule(
        z if z is not None else settings.get("z", Z_CUT),
        margin if margin is not None else settings.get("margin", MARGIN),
        not alignment_only and settings.get("by_label", True),
        not alignment_only and settings.get("by_location", True),
        not alignment_only and settings.get("by_rise", True),
        settings.get("locate_share", LOCATE_SHARE),
        settings.get("locate_enough", LOCATE_ENOUGH),
    )
    if all_classes:
        if not (spurious or spurious_image):
            raise SemlensError("--all audits every class against the spurious concepts you suspect: give --spurious (or --spurious-image)")
        given = {"--class": class_name, "--valid": valid or valid_image, "--out": out, "--layer": layer, "--test-data": test_data,
                 "--spurious-data": spurious_data, "--artifact": artifact, "--tint": tint, "--test-all": test_all}  # fmt: skip
        unused = [flag for flag, value in given.items() if value]
        if unused:
            raise SemlensError(
                f"--all audits each class by alignment, with its own name as the valid concept; it takes no {', '.join(unused)}: "
                "audit one class with --class for those"
            )
        audits = opened.audit_classes(spurious, cut, spurious_image, rule)
        if as_json:
            emit_json([result.to_dict() for result in audits])
            return
        kinds = ("valid", "spurious", "both", "unexpected", "spurious_or_both")
        rows = [(shown_class(a.class_name), len(a.units), *(round(a.shares[v], 3) for v in kinds)) for a in audits]
        console.print(table("classes ranked by spurious-or-both share", ("class", "relevant units", *(kind.replace("_", " ") for kind in kinds)), rows))
        return
    class_name = class_name or settings.get("class")
    if class_name is None:
        raise SemlensError("give --class (or `class` in --config), or --all")
    concept = concept_test(test_data, spurious_data, artifact, mask, at, tint, test_all, drawable(spurious, spurious_image, no_draw))
    result = opened.audit(class_name, valid, spurious, valid_image, spurious_image, cut, layer or None, rule=rule, concept=concept, test_all=test_all, draw=not no_draw)
    page = None
    if out is not None:
        from ..report.html import write_audit_html

        page = str(write_audit_html(opened, result, out))
    if as_json:
        emit_json({**result.to_dict(), "html": page})
        return
    say(
        f"aligned: z > {rule.z:g} ({result.rule.to_dict()['null']}); one-sided verdicts need a margin of {rule.margin:g}; "
        f"z_spur counts only where the unit looks (tight shift, in robust spreads, at least -{rule.margin:g})"
        + (f"; {result.by_label_text}" if result.judged_by_label else "")
    )
    if not (valid or valid_image):
        say(f"valid concept: {', '.join(result.valid)} (the class's name; --valid gives others)")
    say("relevance by verdict: " + ", ".join(f"{v} {share:.1%}" for v, share in result.shares.items()))
    if result.reliance is None:
        say(
            f"spurious share, untested: {result.spurious_share:.1%} (alignment alone also flags units of classes that do not rely "
            "on the concept; --test-data with --artifact/--tint or --spurious-data tests each finding)"
        )
    else:
        r = result.reliance
        if r.get("drawn"):
            say(f"concept test: {r['drawn']}; {DRAWN_CAVEAT} (--no-draw: none; --test-data with --artifact or --spurious-data: your own images)")
        say(
            f"reliance of {result.class_name} on the concept: probability {r['without']:.3f} without, {r['with']:.3f} with "
            f"({r['effect']:+.3f}; log-odds {r['log_odds']:+.2f}: {'relies' if r['relies'] else 'does not rely'}); "
            f"flagged units confirmed: {', '.join(result.confirmed) or 'none'}; "
            f"unconfirmed: {', '.join(result.unconfirmed) or 'none'}"
        )
        if result.rule.by_rise:
            from ..interventions.effects import CONFIRM_AUC

            say(f"flagged, but not raised by the concept (activation AUC below {CONFIRM_AUC:g}; verdict from its valid alignment): {', '.join(result.not_raised) or 'none'}")
        if result.judged_by_location:
            from ..interventions.effects import LOCATE_IOU

            say(
                f"flagged, but firing away from the pasted concept (IoU of its top activations with it below {result.rule.locate_share:.2f} "
                f"of the best in its layer, capped at {result.rule.locate_enough:g}, or below {LOCATE_IOU:g}; verdict from its valid alignment): "
                f"{', '.join(result.unlocated) or 'none'}"
            )
            say(
                "named valid by their crop responses and aligned with the concept, firing where it is pasted and raised by it "
                f"(both): {', '.join(result.both_by_location) or 'none'}"
            )
        own = result.reliance.get("class_images_with_concept")
        if own:
            say(
                f"note: {own} of the {result.reliance['samples'][1]} --spurious-data images are labelled {result.class_name}: the class's own "
                "content raises its probability there too, so the reliance reads high; give images of other classes that show the concept"
            )
        carried = " and the units it runs through" if test_all else ""
        if result.share_tested:
            say(f"spurious share, as tested: {result.spurious_share:.1%} of the relevance (the confirmed findings'{carried})")
        else:
            say(f"spurious share, by alignment: {result.spurious_share:.1%} ({UNCONFIRMED_BY_DRAWINGS})")
        if any(u.test is not None and u.test["class_rise"] is None for u in result.units):
            from ..interventions.effects import CLASS_RISE_IMAGES

            held = (
                f"the probe data holds fewer than {CLASS_RISE_IMAGES} images of the class"  # a drawn test measures it on the class's top samples
                if r.get("drawn")
                else f"--test-data holds fewer than {CLASS_RISE_IMAGES} images of the class or of other classes, by {r['classes_from']}"
            )
            say(f"class rise not measured ({held}): a unit of the class that the concept only nudges can be confirmed too")
        if test_all:
            say(f"not flagged, but the reliance runs through them (the concept test alone): {', '.join(result.carriers) or 'none'}")
        elif (advice := advice_asked(result)) is not None:
            say(on_the_command_line(advice))
        if r["relies"]:
            say(f"detect the concept (raised by it more than by the class, where it is; flagged or not): {', '.join(result.detectors) or 'none'}")
    if result.few_class_images:
        say(result.few_class_images)
    if result.small_nulls:
        say("rough z-scores: the null of " + ", ".join(f"{layer} has {n} units" for layer, n in result.small_nulls.items()))
    if result.left_out:
        say(f"relevant units left out (inactive: never fired or constant on the probe data): {', '.join(result.left_out)}")
    if result.sae_error:
        shares = ", ".join(f"{layer} {share:.1%}" for layer, share in result.sae_error.items())
        say(f"SAE error term (mean share of the class's relevance): {shares}")
    rows = [
        (u.unit, u.verdict, u.responses_label or "-", round(u.relevance, 3), round(u.z_valid, 2), round(u.z_spur, 2), "-" if u.tight_shift is None else round(u.tight_shift, 2),
         round(u.a_valid, 3), round(u.a_spur, 3), _test_cell(u.test), ", ".join(u.examples))
        for u in result.units
    ]  # fmt: skip
    columns = ("unit", "verdict", "by its responses", "relevance", "z_valid", "z_spur", "tight shift", "a_valid", "a_spur", "concept test", "examples")
    narrow_first = ("a_valid", "a_spur", "tight shift", "examples", "z_valid", "by its responses")  # what a narrow terminal leaves out first
    console.print(table(f"audit of {shown_class(result.class_name)}", columns, rows, narrow_first))
    if page:
        say(f"scatter plot: {page}")


def concept_test(
    test_data: Optional[str], spurious_data: Optional[str], artifact: Optional[Path], mask: Optional[Path], at: str, tint: Optional[str], test_all: bool,
    drawn: bool = False,
):  # fmt: skip
    """The concept test's images the options above ask for (None: no test, or the drawings of a concept semlens draws
    where ``drawn``), checked."""
    from ..interventions.drawn import SYNONYMS

    concept = _concept_images(test_data, spurious_data, _artifact(artifact, mask, at, tint, placements=True))
    if test_all and concept is None and not drawn:
        raise SemlensError(
            "--test-all runs the concept test: give --test-data and one of --artifact/--tint or --spurious-data, or one --spurious "
            f"concept semlens draws ({', '.join(SYNONYMS)})"
        )
    return concept


def drawable(spurious: list[str], spurious_images: list, no_draw: bool) -> bool:
    """Whether an audit without concept images tests its spurious concept on semlens's drawings (``Lens.audit``'s
    ``draw``, ``audits.drawn_spurious``)."""
    return not no_draw and drawn_spurious(spurious, spurious_images)


def _concept_images(test_data: Optional[str], spurious_data: Optional[str], artifact):
    """The concept test's images, or None when none was asked for; a clear error for half a request."""
    from ..interventions.effects import ConceptImages

    if test_data is None and spurious_data is None and artifact is None:
        return None
    if test_data is None or (spurious_data is None) == (artifact is None):
        raise SemlensError(
            "a concept test needs --test-data (images without the concept) and exactly one of --artifact/--tint "
            "(inserted into them) or --spurious-data (images that show the concept)"
        )
    return ConceptImages(user_data(test_data), artifact, None if spurious_data is None else user_data(spurious_data))


def _test_cell(test: dict | None) -> str:
    from ..report.sections import location_words

    if test is None:
        return ""
    rises = f"rise {test['concept_rise']:+.2f}" + ("" if test["class_rise"] is None else f" / class {test['class_rise']:+.2f}")
    located = "" if test["located_iou"] is None else f", at the concept {location_words(test)}"
    if not test.get("zeroed", True):  # measured, not switched off (--test-all switches every unit off)
        return f"{'detects' if test['detects'] else 'measured'}, not switched off (AUC {test['activation_auc']:.2f}, {rises}{located})"
    verdict = "confirmed" if test["confirmed"] else "unconfirmed"
    return f"{verdict} (AUC {test['activation_auc']:.2f}, {rises}{located}, drop {test['drop_with']:.3f} with / {test['drop_without']:.3f} without, removes {test['reliance_removed']:+.2f})"


def _audit_settings(path: Path) -> dict:
    from .._util.tomlfiles import read_toml

    settings = read_toml(path, "audit config")
    if set(settings) - AUDIT_KEYS:
        raise SemlensError(f"audit config {path}: unknown keys {', '.join(sorted(set(settings) - AUDIT_KEYS))}; valid: {', '.join(sorted(AUDIT_KEYS))}")
    return settings


@app.command()
@friendly
def graph(
    lens: Path = typer.Argument(..., help="Lens directory (built with class relevance)."),
    class_name: str = typer.Option(..., "--class", "-c", help="Class name or index."),
    layer: Optional[list[str]] = typer.Option(None, "--layer", "-l", help="Two or more layers, lowest first (default: all)."),
    cut: Optional[float] = typer.Option(None, help="Relevance share above which a unit enters the graph (default 0.01)."),
    out: Path = typer.Option(Path("graph.html"), "--out", "-o", help="Interactive HTML (Sankey) to write.", callback=parent_made),
    trust: Trust = False,
    model: Model = None,
    probe_data: ProbeData = None,
    foundation: Foundation = None,
    as_json: AsJson = False,
) -> None:
    """Attribution graph of a class: concept groups per layer and the CRP relevance flowing between them
    (labels the Lens with the default vocabulary first when it has no labels)."""
    from ..report.figures import graph_figure

    opened = labelled_to_show(open_lens(lens, trust, probe_data, foundation, model))  # unlabelled: attribution_graph says why
    result = opened.attribution_graph(class_name, layer or None, cut)
    graph_figure(result).write_html(str(out), include_plotlyjs=True, full_html=True)
    if as_json:
        emit_json({**result.to_dict(), "html": str(out)})
        return
    rows = [(node.layer, node.label, round(node.relevance, 3), len(node.units)) for node in result.nodes]
    console.print(table(f"attribution graph of {shown_class(result.class_name)}", ("layer", "concept", "relevance", "units"), rows))
    rows = [(edge["source"], edge["target"], round(edge["weight"], 3)) for edge in result.edges]
    console.print(table("edges (relevance flowing down)", ("from", "to", "weight"), rows))
    for name, share in result.left_out.items():
        if share > 0:  # inactive units: their examples are arbitrary, so they are not nodes
            say(f"layer {name}: {share:.0%} of the class's relevance there sits in inactive units, left out of the graph")
    say(f"graph: {out}")


def _artifact(artifact: Optional[Path], mask: Optional[Path], at: str, tint: Optional[str], placements: bool = False):
    """The artefact the options give; with ``placements`` (the audit's concept test) ``--at X,Y;X,Y;...`` gives a
    tuple of its placements, which the test images get in turn."""
    from dataclasses import replace

    from ..interventions.effects import Artifact

    if artifact is None and tint is None:
        return None
    try:
        positions = [tuple(int(value) for value in place.split(",")) for place in at.split(";")]
        colour = None if tint is None else tuple(int(value) for value in tint.split(","))
    except ValueError:
        positions = []
    if not positions or any(len(position) != 2 for position in positions) or (colour is not None and len(colour) != 3):
        raise SemlensError(f"--at takes X,Y (the audit: X,Y;X,Y;... for several placements) and --tint R,G,B integers; got --at {at!r} --tint {tint!r}")
    if len(positions) > 1 and not placements:
        raise SemlensError(f"--at takes one X,Y here; several placements ({at!r}) are for the audit's concept test")
    made = Artifact.from_files(artifact, mask, positions[0], colour)
    return made if len(positions) == 1 else tuple(replace(made, position=position) for position in positions)


ArtifactImage = typer.Option(None, help="Artefact image (RGBA: its alpha is the mask).")
ArtifactMask = typer.Option(None, help="Mask image (white = artefact) instead of the alpha channel.")
ArtifactAt = typer.Option("0,0", help="Top-left X,Y of the artefact in the model's input view.")
ArtifactTint = typer.Option(None, help="Instead of an image: tint every pixel towards R,G,B (0.7 p + 0.3 c).")


@app.command("test-artifact")
@friendly
def test_artifact(
    lens: Path = typer.Argument(..., help="Lens directory (its model is reloaded and checked)."),
    class_name: str = typer.Option(..., "--class", "-c", help="Class whose probability the artefact may raise."),
    data: str = typer.Option(..., "--data", "-d", help="Clean images (folder or data spec), ideally of other classes."),
    artifact: Optional[Path] = ArtifactImage,
    mask: Optional[Path] = ArtifactMask,
    at: str = ArtifactAt,
    tint: Optional[str] = ArtifactTint,
    spurious_only: Optional[str] = typer.Option(None, help="Data spec of images with only the spurious features: report the AUC."),
    real: Optional[str] = typer.Option(None, help="Data spec of real class images, for the AUC."),
    correction: Optional[Path] = typer.Option(None, help="Test the model with this correction applied (from `semlens correct --out`)."),
    trust: Trust = False,
    model: Model = None,
    as_json: AsJson = False,
) -> None:
    """Insert an artefact into clean images and measure the class probability and accuracy change (and the AUC)."""
    from contextlib import nullcontext

    from ..interventions.effects import artifact_effect, separation_auc
    from ..lens.correction import load_correction

    opened = open_lens(lens, trust, model=model)
    loaded, index = opened.sources.model(), opened.units.class_index(class_name)
    result: dict = {"class": class_name, "class_index": index, "correction": None if correction is None else str(correction)}
    chosen = _artifact(artifact, mask, at, tint)
    with nullcontext() if correction is None else load_correction(correction).applied(loaded):
        if chosen is not None:
            result["insertion"] = artifact_effect(loaded, user_data(data), index, chosen)
        if spurious_only is not None:
            result["separation_auc"] = separation_auc(loaded, index, user_data(real or data), user_data(spurious_only))
    if len(result) == 3:
        raise SemlensError("give an --artifact or --tint to insert, and/or --spurious-only images for the AUC")
    if as_json:
        emit_json(result)
        return
    insertion = result.get("insertion")
    if insertion:
        rows = [(key, *(None if insertion[part][key] is None else round(insertion[part][key], 4) for part in ("clean", "artifact", "change"))) for key in insertion["clean"]]
        console.print(table(f"artefact insertion on {insertion['samples']} images (class {class_name})", ("measure", "clean", "artefact", "change"), rows))
    if "separation_auc" in result:
        say(f"separation AUC of the {class_name} logit, real vs spurious-only images: {result['separation_auc']:.3f}")


@app.command()
@friendly
def prune(
    lens: Path = typer.Argument(..., help="Lens directory (its model is reloaded and checked)."),
    unit: list[str] = typer.Option(..., "--unit", "-u", help="Unit to switch off, layer/index (repeatable)."),
    data: str = typer.Option(..., "--data", "-d", help="Labelled test data (folder or data spec)."),
    class_name: Optional[str] = typer.Option(None, "--class", "-c", help="Class whose probability to report."),
    artifact: Optional[Path] = ArtifactImage,
    mask: Optional[Path] = ArtifactMask,
    at: str = ArtifactAt,
    tint: Optional[str] = ArtifactTint,
    trust: Trust = False,
    model: Model = None,
    as_json: AsJson = False,
) -> None:
    """Switch units off and compare accuracy (clean and with the artefact) before and after."""

    opened = open_lens(lens, trust, model=model)
    result = pruning_effect(opened, unit, user_data(data), class_name, _artifact(artifact, mask, at, tint))
    if as_json:
        emit_json(result)
        return
    rows = []
    for name in ("clean", "artifact"):
        if name in result:
            for key in result[name]["before"]:
                before, after = result[name]["before"][key], result[name]["after"][key]
                rows.append((name, key, None if before is None else round(before, 4), None if after is None else round(after, 4)))
    console.print(table(f"pruning {', '.join(unit)} ({result['samples']} images)", ("images", "measure", "before", "after"), rows))
