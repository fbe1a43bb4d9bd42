// Dissect: units per concept category per layer; a click on a bar lists its units.
"use strict";

(async () => {
  const { el, fill, api, run, nav, currentLens, plot, unitCells } = Semlens;
  await nav("dissect");
  const lens = await run("loading…", currentLens);
  if (!lens) return;
  const result = await run("counting…", () => api(`/api/lenses/${lens.id}/dissect`));
  if (!result) return;
  const chart = document.getElementById("chart");
  await plot(chart, result.figure);
  chart.dataset.ready = "true";
  chart.on("plotly_click", async (event) => {
    const layer = event.points[0].x, category = event.points[0].data.name;
    const query = new URLSearchParams({ layer, category });
    const found = await run("listing…", () => api(`/api/lenses/${lens.id}/dissect/units?${query}`));
    if (!found) return;
    document.getElementById("listTitle").textContent = `${category} in ${layer}: ${found.units.length} units`;
    fill(document.getElementById("units"), found.units.map((ref) => el("tr", {}, ...unitCells(ref))));
  });
})();
