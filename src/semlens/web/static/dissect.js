// Dissect: units per concept category per layer; a click on a bar lists its units.
"use strict";

(async () => {
  const { el, fill, api, run, nav, currentLens, plot, unitCells, options, params } = Semlens;
  await nav("dissect");
  const lens = await run("loading…", currentLens);
  if (!lens) return;
  const chosen = (extra) => {  // the page again with the space and method chosen (labels of each are their own)
    const query = new URLSearchParams({ lens: lens.id });
    for (const key of ["space", "method"]) if (extra[key] || params.get(key)) query.set(key, extra[key] || params.get(key));
    location.search = `?${query}`;
  };
  const space = document.getElementById("space");
  options(space, lens.spaces.map((name, i) => [name, i ? name : `${name} (default)`]), params.get("space") || lens.spaces[0]);
  space.addEventListener("change", () => chosen({ space: space.value }));
  const asked = new URLSearchParams();
  for (const key of ["space", "method"]) if (params.get(key)) asked.set(key, params.get(key));
  const result = await run("labelling and counting…", () => api(`/api/lenses/${lens.id}/dissect?${asked}`));
  if (!result) return;
  const select = document.getElementById("method");
  options(select, result.methods.map((method) => [method, method]), result.method);
  select.addEventListener("change", () => chosen({ method: select.value }));
  const chart = document.getElementById("chart");
  await plot(chart, result.figure);
  chart.dataset.ready = "true";
  chart.on("plotly_click", async (event) => {
    const layer = event.points[0].x, category = event.points[0].data.name;
    const query = new URLSearchParams({ layer, category, method: result.method, ...(params.get("space") ? { space: params.get("space") } : {}) });
    const found = await run("listing…", () => api(`/api/lenses/${lens.id}/dissect/units?${query}`));
    if (!found) return;
    document.getElementById("listTitle").textContent = `${category} in ${layer}: ${found.units.length} units`;
    fill(document.getElementById("units"), found.units.map((ref) => el("tr", {}, ...unitCells(ref))));
  });
})();
