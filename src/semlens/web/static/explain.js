// Explain: the model's prediction on one image (uploaded, or a probe sample) and, per layer, the concepts
// behind the explained class: units grouped by label with their shares, heatmaps and concept examples.
"use strict";

(async () => {
  const { el, fill, api, run, nav, currentLens, params, options, classOptions, classTitle, unitLink, thumbs, fmt } = Semlens;
  await nav("explain");
  const lens = await run("loading…", currentLens);
  if (!lens) return;
  const file = document.getElementById("image"), sample = document.getElementById("sample"), top = document.getElementById("top");
  const classSelect = document.getElementById("class"), result = document.getElementById("result");
  options(classSelect, [["", "the predicted class"], ...classOptions(lens).values], params.get("class") || "");
  const boxes = lens.layers.map((layer) => el("input", { type: "checkbox", value: layer.name, checked: true }));
  fill(document.getElementById("layers"), "layers: ", ...lens.layers.map((layer, i) => el("label", { class: "check" }, boxes[i], layer.name)));
  sample.value = params.get("sample") || "";

  function query() {
    const chosen = boxes.filter((box) => box.checked).map((box) => box.value);
    const layers = chosen.length === boxes.length ? [] : chosen;
    const pairs = [["top", top.value], ...layers.map((layer) => ["layer", layer])];
    if (classSelect.value) pairs.push(["class", classSelect.value]);
    return new URLSearchParams(pairs);
  }

  function unitRow(unit) {
    return el("tr", {},
      el("td", {}, el("img", { src: unit.overlay, alt: `relevance through ${unit.unit}`, width: 96, height: 96, class: "overlay" })),
      el("td", {}, unitLink(lens.id, unit.unit)), el("td", { class: "num" }, fmt(unit.share)),
      el("td", {}, thumbs(unit.examples.map((example) => example.thumbnail).filter(Boolean), unit.unit)));
  }

  function show(explained) {
    const odds = explained.prediction.map((entry) => `${classTitle(lens, entry.class)} ${fmt(entry.probability)}`).join(" · ");
    fill(result,
      el("div", { class: "explain-head" }, el("img", { src: explained.view, alt: explained.image, width: 192, height: 192, class: "overlay" }),
        el("div", {}, el("p", {}, explained.image), el("p", {}, `prediction: ${odds}`),
          el("p", {}, `explaining class `, el("b", {}, classTitle(lens, explained.class)), explained.predicted ? " (predicted)" : " (given)"))),
      explained.layers.map((layer) => [
        el("h2", {}, layer.layer),
        el("p", { class: "muted" }, `relevance ${fmt(layer.relevance, 4)} · left out (inactive units) ${fmt(layer.left_out)}`,
          layer.sae_error === null ? null : el("span", { class: "sae-error" }, ` · SAE error term ${fmt(layer.sae_error)}`)),
        layer.groups.length ? el("table", {},
          el("tr", {}, ["concept", "share", "where", "unit", "unit share", "concept examples"].map((name) => el("th", {}, name))),
          layer.groups.map((group) => group.units.map((unit, i) => {
            const row = unitRow(unit);
            if (i === 0) row.prepend(el("td", { rowspan: group.units.length }, group.label || el("i", { class: "muted" }, "no concept")),
              el("td", { rowspan: group.units.length, class: "num" }, fmt(group.share)));
            return row;
          }))) : el("p", {}, el("i", { class: "muted" }, layer.left_out ? "here the class's relevance lies on inactive units" : "no unit of this layer carried relevance for the class")),
        // Units with negative shares spoke against the class; their overlays show where.
        layer.against.length ? [el("h3", {}, `against ${classTitle(lens, explained.class)}`),
          el("table", { class: "against" }, el("tr", {}, ["concept", "where", "unit", "share", "concept examples"].map((name) => el("th", {}, name))),
            layer.against.map((unit) => { const row = unitRow(unit); row.prepend(el("td", {}, unit.label || el("i", { class: "muted" }, "no concept"))); return row; }))] : null,
      ]));
    result.dataset.ready = "true";
  }

  async function explain() {
    delete result.dataset.ready;
    let explained;
    if (file.files.length) {
      const body = new FormData();
      body.append("image", file.files[0]);
      explained = await run("explaining…", () => api(`/api/lenses/${lens.id}/explain?${query()}`, { method: "POST", body }));
    } else if (sample.value !== "") {
      history.replaceState(null, "", `?lens=${lens.id}&sample=${encodeURIComponent(sample.value)}`);
      const parameters = query();
      parameters.set("sample", sample.value);
      explained = await run("explaining…", () => api(`/api/lenses/${lens.id}/explain?${parameters}`));
    } else {
      Semlens.status("choose an image or give a probe sample's index", true);
      return;
    }
    if (explained) show(explained);
  }

  document.getElementById("form").addEventListener("submit", (event) => { event.preventDefault(); explain(); });
  file.addEventListener("change", () => { sample.value = ""; explain(); });
  if (sample.value !== "") explain();
})();
