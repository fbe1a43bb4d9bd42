// Compare: S_{A->B} and S_{B->A} per layer pair, matched units side by side, shared and unique concepts.
"use strict";

(async () => {
  const { el, fill, api, run, nav, lenses, params, options, unitCells, fmt } = Semlens;
  await nav("compare");
  const all = await run("loading…", lenses);
  if (!all) return;
  const a = document.getElementById("a"), b = document.getElementById("b");
  const choices = all.map((lens) => [lens.id, `${lens.id}: ${lens.name}`]);
  options(a, choices, params.get("a") || params.get("lens") || 0);
  options(b, choices, params.get("b") || (all.length > 1 ? (Number(a.value) + 1) % all.length : 0));

  function heatmap(node, title, matrix, result) {
    Plotly.newPlot(node, [{ type: "heatmap", z: matrix, x: result.layers_b, y: result.layers_a, zmin: 0, zmax: 1, colorscale: "Viridis",
      text: matrix.map((row) => row.map((value) => (value === null ? "no valid units" : fmt(value)))), texttemplate: "%{text}", hovertemplate: "A %{y} · B %{x}: %{z:.3f}<extra></extra>" }],
      { title: { text: title }, xaxis: { title: { text: "layer of B" }, type: "category" }, yaxis: { title: { text: "layer of A" }, type: "category" }, margin: { l: 110 } },
      { displaylogo: false, responsive: true });
  }

  async function compare() {
    history.replaceState(null, "", `?lens=${a.value}&a=${a.value}&b=${b.value}`);
    const result = await run("comparing…", () => api(`/api/compare?a=${a.value}&b=${b.value}`));
    if (!result) return;
    const nameA = all[result.a].name, nameB = all[result.b].name;
    heatmap(document.getElementById("ab"), `S(A→B): ${nameA} in ${nameB}`, result.s_a_to_b, result);
    heatmap(document.getElementById("ba"), `S(B→A): ${nameB} in ${nameA}`, result.s_b_to_a, result);
    const typical = result.typical.flat().filter((value) => value !== null);
    fill(document.getElementById("typical"), typical.length
      ? `typical pair (any unit of A with any unit of B): ${fmt(Math.min(...typical))} to ${fmt(Math.max(...typical))} over the layer pairs; S near it says the matches are no closer than any pair (a foundation model that puts every crop near one direction)`
      : "");
    const list = (title, concepts) => el("p", {}, el("b", {}, `${title} (${concepts.length}): `), concepts.join(", ") || "none");
    fill(document.getElementById("concepts"), el("h2", {}, "Concepts (labels)"),
      list("shared", result.shared_concepts), list(`only in A (${nameA})`, result.only_a), list(`only in B (${nameB})`, result.only_b));
    fill(document.getElementById("matches"), 
      el("tr", {}, el("th", { colspan: 3 }, `A: ${nameA}`), el("th", { class: "num" }, "cosine"), el("th", { colspan: 3 }, `B: ${nameB}`)),
      result.matches.map((m) => el("tr", {}, ...unitCells(m.unit), el("td", { class: "num" }, fmt(m.similarity)), ...unitCells(m.match))));
    document.getElementById("matches").dataset.ready = "true";
  }

  document.getElementById("form").addEventListener("submit", (event) => { event.preventDefault(); compare(); });
  compare();
})();
