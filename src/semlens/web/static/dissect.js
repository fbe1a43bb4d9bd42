// Dissect: units per concept category per layer; a click on a bar lists its units.
"use strict";

(async () => {
  const { el, fill, api, run, nav, currentLens, plot, unitCells, options, params } = Semlens;
  await nav("dissect");
  const lens = await run("loading…", currentLens);
  if (!lens) return;
  const space = document.getElementById("space");  // labels of another embedding space: the page again with ?space=
  options(space, lens.spaces.map((name, i) => [name, i ? name : `${name} (default)`]), params.get("space") || lens.spaces[0]);
  space.addEventListener("change", () => { location.search = `?lens=${lens.id}&space=${encodeURIComponent(space.value)}`; });
  const inSpace = new URLSearchParams(params.get("space") ? { space: params.get("space") } : {});
  const result = await run("counting…", () => api(`/api/lenses/${lens.id}/dissect?${inSpace}`));
  if (!result) return;
  const chart = document.getElementById("chart");
  await plot(chart, result.figure);
  chart.dataset.ready = "true";
  chart.on("plotly_click", async (event) => {
    const layer = event.points[0].x, category = event.points[0].data.name;
    const query = new URLSearchParams({ layer, category, ...Object.fromEntries(inSpace) });
    const found = await run("listing…", () => api(`/api/lenses/${lens.id}/dissect/units?${query}`));
    if (!found) return;
    document.getElementById("listTitle").textContent = `${category} in ${layer}: ${found.units.length} units`;
    fill(document.getElementById("units"), found.units.map((ref) => el("tr", {}, ...unitCells(ref))));
  });
})();
