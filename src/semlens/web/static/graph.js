// Graph: the attribution graph of a class as a Sankey diagram, with the units of every concept group.
"use strict";

(async () => {
  const { el, fill, api, run, nav, currentLens, params, options, classOptions, plot, unitLink, fmt } = Semlens;
  await nav("graph");
  const lens = await run("loading…", currentLens);
  if (!lens) return;
  if (!lens.class_relevance) {
    Semlens.status("this Lens has no class relevance: rebuild it with class relevance on to draw attribution graphs", true);
    return;
  }
  const classSelect = document.getElementById("class");
  const classes = classOptions(lens);
  options(classSelect, classes.values, classes.chosen);
  const boxes = lens.layers.map((layer) => el("input", { type: "checkbox", value: layer.name, checked: true }));
  fill(document.getElementById("layers"), "layers: ", ...lens.layers.map((layer, i) => el("label", { class: "check" }, boxes[i], Semlens.layerTitle(layer))));

  async function draw() {
    const query = new URLSearchParams([["class", classSelect.value], ...boxes.filter((box) => box.checked).map((box) => ["layer", box.value])]);
    const graph = await run("computing relevance…", () => api(`/api/lenses/${lens.id}/graph?${query}`));
    if (!graph) return;
    const node = document.getElementById("graph");
    await plot(node, graph.figure);
    fill(document.getElementById("nodes"), 
      el("tr", {}, ["layer", "concept", "relevance", "units"].map((name) => el("th", {}, name))),
      graph.nodes.map((n) => el("tr", {}, el("td", {}, n.layer), el("td", {}, n.label), el("td", { class: "num" }, fmt(n.relevance)),
        el("td", {}, n.units.map((unit, i) => [i ? ", " : "", unitLink(lens.id, unit)])))));
    node.dataset.ready = "true";
  }

  document.getElementById("form").addEventListener("submit", (event) => { event.preventDefault(); draw(); });
  if (params.get("class")) draw();
})();
