// Spaces: a Lens's embedding spaces (one foundation model each) and how far two of them agree.
"use strict";

(async () => {
  const { el, fill, api, run, nav, currentLens, params, options, fmt } = Semlens;
  await nav("spaces");
  const lens = await run("loading…", currentLens);
  if (!lens) return;
  const spaces = await run("loading…", () => api(`/api/lenses/${lens.id}/spaces`));
  if (!spaces) return;
  fill(document.getElementById("spaces"),
    el("tr", {}, ["space", "foundation model", "dim", "complete"].map((name) => el("th", {}, name))),
    spaces.map((space) => el("tr", {}, el("td", {}, space.default ? `${space.name} (default)` : space.name),
      el("td", {}, space.foundation_id), el("td", { class: "num" }, space.dim), el("td", {}, space.complete ? "yes" : "no"))));
  const a = document.getElementById("a"), b = document.getElementById("b"), q = document.getElementById("q"), top = document.getElementById("top");
  const names = lens.spaces.map((name) => [name, name]);
  options(a, names, params.get("a") || lens.spaces[0]);
  options(b, names, params.get("b") || lens.spaces[lens.spaces.length > 1 ? 1 : 0]);

  async function compare() {
    const query = new URLSearchParams([["a", a.value], ["b", b.value], ["top", top.value]]);
    q.value.split(",").map((text) => text.trim()).filter(Boolean).forEach((text) => query.append("q", text));
    history.replaceState(null, "", `?lens=${lens.id}&a=${encodeURIComponent(a.value)}&b=${encodeURIComponent(b.value)}`);
    const table = document.getElementById("agreement");
    delete table.dataset.ready;
    const result = await run("comparing…", () => api(`/api/lenses/${lens.id}/spaces/compare?${query}`));
    if (!result) return;
    const rows = [["layout", "linear CKA of theta", result.structure.cka],
      ["layout", `correlation of unit-unit similarities (${result.structure.sampled} units)`, result.structure.similarity_correlation]];
    if (result.labels) rows.push(["labels", "same best concept", result.labels.top1], ["labels", `top-${result.labels.top} overlap`, result.labels.top_overlap]);
    if (result.search) rows.push(["search", `top-${result.search.top} overlap (mean of ${result.search.queries.length} queries)`, result.search.top_overlap],
      ["search", "Spearman of scores over units", result.search.spearman]);
    fill(table, el("caption", {}, `${result.a} vs ${result.b} on ${result.units} units (1 = full agreement)`),
      el("tr", {}, ["what", "measure", "agreement"].map((name) => el("th", {}, name))),
      rows.map(([what, measure, value]) => el("tr", {}, el("td", {}, what), el("td", {}, measure), el("td", { class: "num" }, fmt(value, 3)))),
      result.notes.map((note) => el("tr", {}, el("td", { colspan: 3, class: "muted" }, note))));
    const perQuery = result.search ? [...result.search.per_query].sort((x, y) => x.spearman - y.spearman).slice(0, 50) : [];
    fill(document.getElementById("queries"), perQuery.length ? el("caption", {}, "queries the spaces rank least alike") : null,
      perQuery.length ? el("tr", {}, ["query", "top overlap", "Spearman"].map((name) => el("th", {}, name))) : null,
      perQuery.map((row) => el("tr", {}, el("td", {}, row.query), el("td", { class: "num" }, fmt(row.top_overlap, 3)), el("td", { class: "num" }, fmt(row.spearman, 3)))));
    table.dataset.ready = "true";
  }

  document.getElementById("form").addEventListener("submit", (event) => { event.preventDefault(); compare(); });
  compare();
})();
