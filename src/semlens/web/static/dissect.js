// Dissect: units per concept category per layer; a click on a bar lists its units.
"use strict";

(async () => {
  const { el, fill, api, run, nav, currentLens, plot, unitCells, params, options } = Semlens;
  await nav("dissect");
  const lens = await run("loading…", currentLens);
  if (!lens) return;
  const asked = params.get("method");
  const methodQuery = asked ? `?method=${encodeURIComponent(asked)}` : "";
  const result = await run("labelling and counting…", () => api(`/api/lenses/${lens.id}/dissect${methodQuery}`));
  if (!result) return;
  const select = document.getElementById("method");
  options(select, result.methods.map((method) => [method, method]), result.method);
  select.addEventListener("change", () => { location.search = `?lens=${lens.id}&method=${encodeURIComponent(select.value)}`; });
  const chart = document.getElementById("chart");
  await plot(chart, result.figure);
  chart.dataset.ready = "true";
  chart.on("plotly_click", async (event) => {
    const layer = event.points[0].x, category = event.points[0].data.name;
    const query = new URLSearchParams({ layer, category, method: result.method });
    const found = await run("listing…", () => api(`/api/lenses/${lens.id}/dissect/units?${query}`));
    if (!found) return;
    document.getElementById("listTitle").textContent = `${category} in ${layer}: ${found.units.length} units`;
    fill(document.getElementById("units"), found.units.map((ref) => el("tr", {}, ...unitCells(ref))));
  });
})();
