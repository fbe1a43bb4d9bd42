// Search: units of all (or chosen) layers ranked by a text or an image: the units the text names first (the default), by alignment and response, or alignment alone.
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
  // Whose theta to rank: the units' activation examples', or their relevance examples' (Lenses built with them).
  const examples = document.getElementById("examples");
  options(examples, [["activation", "by activation"], ["relevance", "by relevance"]], lens.relevance_examples ? params.get("examples") || "activation" : "activation");
  examples.disabled = !lens.relevance_examples;
  // How to rank: by default ("", Lens.search's default) the units whose best concept is the text first, then by
  // alignment and the units' response to the probe over the Lens's crops ("named"), and an image with transparent
  // parts by the model's response; or by alignment and response alone; by alignment alone (Eq. 4); or, for an
  // image, by how much pasting it into the probe images raises each unit in the model itself ("model").
  const rank = document.getElementById("rank");
  const rankings = [["", "default (named first for a text; the model's response for an image with transparent parts, or a watermark, frame, logo, ruler or colour cast semlens draws)"], ["named", "named first, then alignment and response"], ["both", "alignment and response"], ["alignment", "alignment alone"], ["model", "the model's response (images)"]];
  options(rank, rankings, rankings.some(([value]) => value === params.get("rank")) ? params.get("rank") : "");
  fill(document.getElementById("examples-note"), lens.relevance_examples
    ? "examples: each unit's theta from its top samples by activation, or by relevance for the model's output (default space only)"
    : "this Lens has no relevance examples (rebuild with --relevance-examples): units are searched by their activation examples");

  function query() {
    const chosen = boxes.filter((box) => box.checked).map((box) => box.value);
    const layers = chosen.length === boxes.length ? [] : chosen;
    const chosenSpace = space.value && space.value !== lens.spaces[0] ? [["space", space.value]] : [];
    const chosenExamples = examples.value === "relevance" ? [["examples", "relevance"]] : [];
    const chosenRank = rank.value ? [["rank", rank.value]] : [];
    return new URLSearchParams([["top", top.value], ...chosenSpace, ...chosenExamples, ...chosenRank, ...layers.map((layer) => ["layer", layer])]);
  }

  function show(hits, what, note) {
    fill(results, el("caption", {}, `units ranked by ${what}`, note ? el("div", { class: "muted note" }, `note: ${note}`) : null),
      el("tr", {}, ["#", "unit", "label", "examples", "layer", "score", "response"].map((name) => el("th", { title: name === "score" ? "alignment with the probe; by the model's response, its activation AUC" : "" }, name))),
      hits.map((hit, i) => el("tr", { class: "hit" }, el("td", {}, i + 1), ...unitCells(hit), el("td", {}, hit.layer),
        el("td", { class: "num alignment" }, fmt(hit.score, 4)), el("td", { class: "num response" }, hit.response === null ? "–" : fmt(hit.response, 3)))));
    results.dataset.ready = "true";
  }

  async function search() {
    delete results.dataset.ready;
    if (q.value.trim()) {
      history.replaceState(null, "", `?lens=${lens.id}&q=${encodeURIComponent(q.value)}&space=${encodeURIComponent(space.value)}&examples=${examples.value}&rank=${rank.value}`);
      const parameters = query();
      parameters.set("q", q.value);
      const headers = {};
      const hits = await run("searching…", () => api(`/api/lenses/${lens.id}/search?${parameters}`, undefined, headers));
      const shown = headers["x-semlens-concept"];  // a concept the Lens was shown (an audit's pasted artefact) or semlens drew: ranked by the model
      const by = { "": "name, then alignment with and response to", named: "name, then alignment with and response to", both: "alignment with and response to", alignment: "alignment with" }[rank.value];
      if (hits) show(hits, shown
        ? `${decodeURIComponent(headers["x-semlens-ranking"]).replace(/^by /, "")} (${examples.value} examples)`
        : `${by} “${q.value}” (${examples.value} examples)`, headers["x-semlens-note"] && decodeURIComponent(headers["x-semlens-note"]));
    } else if (file.files.length) {
      const body = new FormData();
      body.append("image", file.files[0]);
      const hits = await run("searching…", () => api(`/api/lenses/${lens.id}/search/image?${query()}`, { method: "POST", body }));
      const by = { "": "the default ranking (the model's response where the image has transparent parts) of", both: "similarity and response to", model: "the model's response to" }[rank.value] || "similarity to";
      if (hits) show(hits, `${by} ${file.files[0].name} (${examples.value} examples)`);
    } else {
      Semlens.status("type a text or choose an image", true);
    }
  }

  form.addEventListener("submit", (event) => { event.preventDefault(); search(); });
  file.addEventListener("change", () => { q.value = ""; search(); });
  if (q.value) search();
})();
