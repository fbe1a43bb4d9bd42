// Map: the UMAP overview of one layer (or all); hover previews a unit, click opens it.
"use strict";

(async () => {
  const { el, api, run, nav, currentLens, options, plot, preview, unitHref, params } = Semlens;
  await nav("map");
  const lens = await run("loading…", currentLens);
  if (!lens) return;
  const select = document.getElementById("layer");
  options(select, [["", "all layers"], ...lens.layers.map((layer) => [layer.name, `${Semlens.layerTitle(layer)}: ${layer.units} units`])], params.get("layer") || "");
  select.addEventListener("change", () => { location.search = `?lens=${lens.id}&layer=${encodeURIComponent(select.value)}`; });

  const query = select.value ? `?layer=${encodeURIComponent(select.value)}` : "";
  const map = await run("computing the map (UMAP; the first one takes a while)…", () => api(`/api/lenses/${lens.id}/map${query}`));
  if (!map) return;
  const node = document.getElementById("map");
  const labels = new Map(map.units.map((unit, i) => [unit, map.labels[i]]));
  await plot(node, map.figure);
  const aside = document.getElementById("preview");
  node.on("plotly_hover", (event) => { const unit = event.points[0].customdata; preview(aside, lens.id, unit, labels.get(unit)); });
  node.on("plotly_click", (event) => { location.href = unitHref(lens.id, event.points[0].customdata); });
  node.dataset.ready = "true";
  aside.append(el("p", { class: "muted" }, `${map.units.length} units, ${map.cluster_names.length} clusters`));
})();
