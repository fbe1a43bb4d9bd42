// Correct: pick a class and an artefact, run a projection or fine-tuning, see the artefact test before and after.
"use strict";

(async () => {
  const { el, fill, api, run, nav, currentLens, params, options, classOptions, classTitle, fmt, download } = Semlens;
  await nav("correct");
  const lens = await run("loading…", currentLens);
  if (!lens) return;
  if (!lens.classes.length) {
    Semlens.status("this Lens's model has no classes to correct", true);
    return;
  }
  const field = (id) => document.getElementById(id);
  const classes = classOptions(lens);
  options(field("class"), classes.values, classes.chosen);
  for (const layer of lens.layers) field("layer").append(el("option", { value: layer.name }, layer.name));
  let result = null;

  async function correct() {
    const body = new FormData();
    body.append("class", field("class").value);
    body.append("method", field("method").value);
    if (field("artifact").files.length) {
      body.append("artifact", field("artifact").files[0]);
      body.append("at", field("at").value || "0,0");
    } else if (field("tint").value) {
      body.append("tint", field("tint").value);
    } else {
      Semlens.status("choose an artefact image or type a tint R,G,B", true);
      return;
    }
    if (field("layer").value) body.append("layer", field("layer").value);
    body.append("last", field("last").value);
    body.append("epochs", field("epochs").value);
    body.append("tolerance", field("tolerance").value);
    const answer = await run("correcting… (this trains or projects on the probe data)", () => api(`/api/lenses/${lens.id}/correct`, { method: "POST", body }));
    if (!answer) return;
    result = answer;
    field("export").disabled = false;
    const settings = Object.entries(answer.settings).filter(([key]) => key !== "layer_trials").map(([key, value]) => `${key} ${JSON.stringify(value)}`);
    fill(field("summary"),
      el("span", {}, `artefact effect on ${classTitle(lens, answer.class)}: ${fmt(answer.artifact_effect[0])} → ${fmt(answer.artifact_effect[1])}`),
      el("span", {}, `clean accuracy ${fmt(answer.clean_accuracy[0])} → ${fmt(answer.clean_accuracy[1])}`),
      el("span", {}, `${answer.samples} test images, learnt in ${answer.seconds} s`),
      el("span", {}, settings.join(", ")));
    const rows = [];
    for (const part of ["clean", "artifact", "change"]) {
      for (const key of Object.keys(answer.before[part])) {
        rows.push(el("tr", {}, el("td", {}, `${part} ${key}`), el("td", { class: "num" }, fmt(answer.before[part][key])), el("td", { class: "num" }, fmt(answer.after[part][key]))));
      }
    }
    fill(field("measures"), el("tr", {}, ["measure", "before", "after"].map((name) => el("th", {}, name))), rows);
    field("measures").dataset.ready = "true";
    if (!answer.ok) Semlens.status(`correction FAILED: ${answer.failed} (the figures are shown, the correction is not kept)`, true);
  }

  field("form").addEventListener("submit", (event) => { event.preventDefault(); correct(); });
  field("export").addEventListener("click", () => download(`correction-${result.class}.json`, { lens: lens.name, ...result }));
})();
