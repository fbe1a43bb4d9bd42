// Unit: concept examples by activation and by relevance (where they fire, and the best one's full image, shown from the start) and their concept clusters, labels, measures, classes, similar units everywhere.
"use strict";
const HEATMAPS_SHOWN = 6;

(async () => {
  const { el, fill, api, run, nav, params, fmt, unitApi, unitCells, pageHref, thumbs, picture } = Semlens;
  await nav("");
  const unit = params.get("unit") || "";
  const lensKey = params.get("lens") || "0";
  const data = await run("loading…", () => api(unitApi(lensKey, unit)));
  if (!data) return;
  document.title = `semlens · ${data.unit}`;
  fill(document.getElementById("title"), el("code", {}, data.unit), " ", el("span", { class: "muted" }, `in ${data.lens_name}`));
  const sae = data.sae
    ? el("p", { class: "muted", id: "sae" }, `feature ${data.index % data.sae.d_sae} of a ${data.sae.architecture} sparse autoencoder on ${data.layer} `
        + `(d_sae ${data.sae.d_sae}${data.sae.k ? `, k ${data.sae.k}` : ""}, ${data.sae.format} format)`)
    : null;

  const full = el("div", { id: "full" });
  function showFull(example) {
    if (!example.image) { fill(full, el("h3", {}, `example ${example.rank}: ${example.source}`), el("p", { class: "muted" }, "its image cannot be shown: the probe data is out of reach")); return; }
    const image = el("img", { src: example.image, alt: `full image of example ${example.rank}` });
    const box = el("div", { class: "box" });
    image.addEventListener("load", () => {
      const [x0, y0, x1, y1] = example.box, w = image.naturalWidth, h = image.naturalHeight;
      Object.assign(box.style, { left: `${(100 * x0) / w}%`, top: `${(100 * y0) / h}%`, width: `${(100 * (x1 - x0)) / w}%`, height: `${(100 * (y1 - y0)) / h}%` });
    });
    const heat = example.heatmap ? el("div", { class: "full" }, el("img", { src: example.heatmap, alt: `heatmap of example ${example.rank}` })) : null;
    fill(full, el("h3", {}, `example ${example.rank}: ${example.source}`), el("div", { class: "pair" }, el("div", { class: "full" }, image, box), heat),
      el("p", { class: "muted" }, `score ${fmt(example.score)}, crop box ${example.box.join(", ")} (red) in the model's input view`
        + (heat ? "; right: the heatmap the crop was cut from (red: where the unit's evidence lies; yellow: the box)" : "")));
  }
  const gallery = (id, list, what) => el("div", { class: "examples", id }, list.map((example) =>
    el("figure", { onclick: () => showFull(example), title: "click for the full image" },
      picture(example.thumbnail, `${what} ${example.rank}`, example.source),
      el("figcaption", {}, `#${example.rank} · ${fmt(example.score, 2)} · ${example.source.split("/").pop()}`))));
  const examples = gallery("examples", data.examples, "example");
  // Where it fires, without a click: the heatmaps the first examples' crops were cut from, over their views.
  const withHeat = data.examples.filter((example) => example.heatmap).slice(0, HEATMAPS_SHOWN);
  const heatmaps = withHeat.length
    ? [el("h2", {}, "Where it fires"),
        el("p", { class: "muted" }, "the heatmaps of its first concept examples over the model's input views (red: where the unit's evidence lies; yellow: the crop box)"),
        el("div", { class: "examples", id: "heatmaps" }, withHeat.map((example) =>
          el("figure", { onclick: () => showFull(example), title: "click for the full image" },
            el("img", { src: example.heatmap, alt: `heatmap of example ${example.rank}` }), el("figcaption", {}, `#${example.rank}`))))]
    : null;
  // Its top samples by relevance for the model's output (scores: relevance shares), where the Lens has them.
  const byRelevance = data.relevance_examples
    ? [el("h2", {}, "Concept examples by relevance"),
        el("p", { class: "muted" }, "its top samples by relevance for the model's output on the sample's class (scores: relevance shares)"),
        gallery("relevance-examples", data.relevance_examples, "relevance example")]
    : null;

  // Concept clusters: the examples grouped by the concept they show (one group for a monosemantic unit).
  const clusters = el("div", { id: "clusters" }, el("p", { class: "muted" }, "grouping…"));
  api(`${unitApi(lensKey, unit)}/clusters`).then((found) => fill(clusters,
    el("p", { class: "muted" }, `${found.clusters.length > 1 ? `two concepts (polysemanticity ${fmt(found.polysemanticity)})` : "one concept"}`
      + ` · split p ${found.split_p === null ? "–" : found.split_p.toPrecision(2)} (two concepts where p is below 0.01, each has 2 or more examples and their means differ by 0.05 or more)`),
    found.clusters.map((cluster, i) => el("div", { class: "cluster" },
      el("h4", {}, `cluster ${i + 1} · ${cluster.size} examples · `, cluster.concept
        ? el("span", {}, cluster.label ? el("b", {}, cluster.concept) : cluster.concept, ` (alignment ${fmt(cluster.alignment, 4)})`)
        : el("i", { class: "muted" }, "unnamed")),
      el("div", { class: "examples" }, cluster.examples.map((example) =>
        el("figure", { onclick: () => showFull(example), title: "click for the full image" },
          picture(example.thumbnail, `example ${example.rank}`, example.source), el("figcaption", {}, `#${example.rank}`))))))),
  (error) => fill(clusters, el("p", { class: "muted" }, `no clusters: ${error.message}`)));

  const candidates = el("table", {}, el("tr", {}, el("th", {}, "concept"), el("th", { class: "num" }, "alignment"), el("th", { class: "num" }, "confidence (z)")),
    data.candidates.map((c, i) => el("tr", {}, el("td", {}, i === 0 && data.label ? el("b", {}, c.concept) : c.concept), el("td", { class: "num" }, fmt(c.alignment, 4)), el("td", { class: "num" }, c.confidence == null ? "" : fmt(c.confidence, 2)))));
  const measures = el("table", {}, [["clarity", data.clarity], ["polysemanticity", data.polysemanticity], ["redundancy", data.redundancy], ["typical pair in its layer", data.typical]].map(([name, value]) =>
    el("tr", {}, el("td", {}, name), el("td", { class: "num" }, fmt(value)))));
  // An SAE feature's layer also has the SAE error term's share of each class's relevance.
  const errorTerm = data.classes.some((c) => c.sae_error !== null);
  const classes = data.classes.length
    ? el("table", { id: "classes" }, el("tr", {}, el("th", {}, "class"), el("th", { class: "num" }, "max share"), el("th", { class: "num" }, "mean share"),
        errorTerm ? el("th", { class: "num", title: "the layer's share carried by the SAE error term (mean)" }, "SAE error term") : null, el("th", {}, "")),
        data.classes.map((c) => el("tr", {}, el("td", {}, c.title), el("td", { class: "num" }, fmt(c.max_share)), el("td", { class: "num" }, fmt(c.mean_share)),
          errorTerm ? el("td", { class: "num" }, fmt(c.sae_error)) : null,
          el("td", {}, el("a", { href: pageHref("audit", { class: c.class }) }, "audit"), " · ", el("a", { href: pageHref("graph", { class: c.class }) }, "graph")))))
    : el("p", { class: "muted" }, "no class relevance in this Lens");
  const similar = data.similar.map((group) => [
    el("h3", {}, `in ${group.lens_name}`),
    group.note ? el("p", { class: "muted" }, group.note)
      : el("table", {}, group.hits.map((hit) => el("tr", {}, ...unitCells(hit), el("td", { class: "num" }, fmt(hit.score))))),
  ]);

  fill(document.getElementById("unit"), sae,
    el("p", {}, "label: ", data.label ? el("span", {}, el("b", { id: "label" }, data.label), data.label_confidence == null ? "" : ` (confidence z ${fmt(data.label_confidence, 1)})`)
        : el("i", { id: "label", class: "muted" }, "no concept (none sets this unit apart from its layer)"),
      data.inactive ? el("span", { class: "muted" }, " · inactive: its examples are arbitrary") : null,
      data.tied ? el("span", { class: "muted" }, " · tied: its examples are another unit's, so it is left out of labels, maps and search by alignment (an audit judges it by them)") : null),
    el("h2", {}, "Concept examples"), examples, heatmaps, byRelevance, full,
    el("h2", {}, "Concept clusters"), clusters,
    el("div", { class: "grid2" }, el("div", {}, el("h2", {}, "Label and runner-ups"), candidates,
      el("p", { class: "muted" }, "in the labelling method's order (by default also how the unit's activation follows each concept over the Lens's crops, so not by alignment alone)"), el("h2", {}, "Measures"), measures),
      el("div", {}, el("h2", {}, "Most relevant for"), classes)),
    el("h2", {}, "Most similar units"), similar,
  );
  if (data.examples.length) showFull(data.examples[0]);  // the best example's full view, its box and heatmap, from the start
  document.getElementById("unit").dataset.ready = "true";
})();
