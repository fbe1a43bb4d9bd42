// Search: units of all (or chosen) layers ranked by alignment with a text, or by similarity to an image.
"use strict";

(async () => {
  const { el, fill, api, run, nav, currentLens, params, fmt, unitCells, options } = Semlens;
  await nav("search");
  const lens = await run("loading…", currentLens);
  if (!lens) return;
  const form = document.getElementById("form"), q = document.getElementById("q"), file = document.getElementById("image");
  const top = document.getElementById("top"), results = document.getElementById("results");
  const boxes = lens.layers.map((layer) => el("input", { type: "checkbox", value: layer.name, checked: true }));
  fill(document.getElementById("layers"), "layers: ", ...lens.layers.map((layer, i) => el("label", { class: "check" }, boxes[i], Semlens.layerTitle(layer))));
  q.value = params.get("q") || "";
  const space = document.getElementById("space");  // the embedding space to search in (the Lens's own first)
  options(space, lens.spaces.map((name, i) => [name, i ? name : `${name} (default)`]), params.get("space") || lens.spaces[0]);

  function query() {
    const chosen = boxes.filter((box) => box.checked).map((box) => box.value);
    const layers = chosen.length === boxes.length ? [] : chosen;
    const chosenSpace = space.value && space.value !== lens.spaces[0] ? [["space", space.value]] : [];
    return new URLSearchParams([["top", top.value], ...chosenSpace, ...layers.map((layer) => ["layer", layer])]);
  }

  function show(hits, what) {
    fill(results, el("caption", {}, `units ranked by ${what}`),
      el("tr", {}, ["#", "unit", "label", "examples", "layer", "score"].map((name) => el("th", {}, name))),
      hits.map((hit, i) => el("tr", { class: "hit" }, el("td", {}, i + 1), ...unitCells(hit), el("td", {}, hit.layer), el("td", { class: "num" }, fmt(hit.score, 4)))));
    results.dataset.ready = "true";
  }

  async function search() {
    delete results.dataset.ready;
    if (q.value.trim()) {
      history.replaceState(null, "", `?lens=${lens.id}&q=${encodeURIComponent(q.value)}&space=${encodeURIComponent(space.value)}`);
      const parameters = query();
      parameters.set("q", q.value);
      const hits = await run("searching…", () => api(`/api/lenses/${lens.id}/search?${parameters}`));
      if (hits) show(hits, `alignment with “${q.value}”`);
    } else if (file.files.length) {
      const body = new FormData();
      body.append("image", file.files[0]);
      const hits = await run("searching…", () => api(`/api/lenses/${lens.id}/search/image?${query()}`, { method: "POST", body }));
      if (hits) show(hits, `similarity to ${file.files[0].name}`);
    } else {
      Semlens.status("type a text or choose an image", true);
    }
  }

  form.addEventListener("submit", (event) => { event.preventDefault(); search(); });
  file.addEventListener("change", () => { q.value = ""; search(); });
  if (q.value) search();
})();
