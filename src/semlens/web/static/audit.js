// Audit: pick a class, edit its valid and spurious concepts, see the scatter, the verdicts and the shares.
"use strict";

(async () => {
  const { el, fill, api, run, nav, currentLens, params, options, classOptions, plot, preview, unitHref, unitCells, fmt, download } = Semlens;
  await nav("audit");
  const lens = await run("loading…", currentLens);
  if (!lens) return;
  if (!lens.class_relevance) {
    Semlens.status("this Lens has no class relevance: rebuild it with class relevance on to audit its classes", true);
    return;
  }
  const classSelect = document.getElementById("class"), valid = document.getElementById("valid"), spurious = document.getElementById("spurious");
  const cut = document.getElementById("cut"), exportButton = document.getElementById("export");
  const classes = classOptions(lens);
  options(classSelect, classes.values, classes.chosen);
  const lines = (text) => text.split("\n").map((line) => line.trim()).filter(Boolean);
  valid.value = params.getAll("valid").join("\n") || classSelect.value;
  spurious.value = params.getAll("spurious").join("\n");
  classSelect.addEventListener("change", () => { valid.value = classSelect.value; });
  let audit = null;

  async function runAudit() {
    const request = { class: classSelect.value, valid: lines(valid.value), spurious: lines(spurious.value) };
    if (cut.value) request.cut = Number(cut.value);
    const result = await run("auditing…", () => api(`/api/lenses/${lens.id}/audit`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(request),
    }));
    if (!result) return;
    audit = result;
    exportButton.disabled = false;
    fill(document.getElementById("shares"), "relevance by verdict: ",
      Object.entries(result.shares).map(([verdict, share]) => el("span", { class: `verdict-${verdict}` }, `${verdict} ${(100 * share).toFixed(1)}%`)),
      el("span", {}, `${result.units.length} units above ${cutText(result)} relevance`),
      el("span", {}, `aligned: z > ${result.rule.z} against the unit's layer; one-sided verdicts need a margin of ${result.rule.margin}`),
      result.named_among && result.units.some((unit) => unit.responses_label) ? el("span", {}, `a unit whose best concept by its crop responses (ranked among the audit's concepts and ${result.named_among}) is an audited concept and sets it apart from its layer takes its verdict from it`) : null,
      result.reliance ? el("span", { class: "reliance" }, relianceText(result)) : null,
      result.few_class_images ? el("span", {}, result.few_class_images) : null,
      result.left_out.length ? el("span", {}, `left out (inactive: never fired or constant on the probe data): ${result.left_out.join(", ")}`) : null,
      Object.entries(result.sae_error).map(([layer, share]) => el("span", { class: "sae-error" }, `SAE error term (${layer}) ${(100 * share).toFixed(1)}%`)));
    const scatter = document.getElementById("scatter"), aside = document.getElementById("preview");
    await plot(scatter, result.figure);
    const labels = new Map(result.units.map((unit) => [unit.unit, unit.label]));
    scatter.on("plotly_hover", (event) => { const unit = event.points[0].text; preview(aside, lens.id, unit, labels.get(unit)); });
    scatter.on("plotly_click", (event) => { location.href = unitHref(lens.id, event.points[0].text); });
    fill(document.getElementById("verdicts"), 
      el("tr", {}, ["unit", "label", "examples", "verdict", "by its responses", "relevance", "z_valid", "z_spur", "tight shift", "a_valid", "a_spur"].map((name) => el("th", {}, name))),
      result.units.map((unit) => el("tr", {}, ...unitCells(unit), el("td", { class: `verdict-${unit.verdict}` }, unit.verdict),
        el("td", {}, unit.responses_label ?? "-"),
        ...["relevance", "z_valid", "z_spur", "tight_shift", "a_valid", "a_spur"].map((key) => el("td", { class: "num" }, fmt(unit[key]))))));
    scatter.dataset.ready = "true";
  }

  document.getElementById("form").addEventListener("submit", (event) => { event.preventDefault(); runAudit(); });
  exportButton.addEventListener("click", () => {
    const { figure, ...exported } = audit;
    download(`audit-${exported.class}.json`, { lens: lens.name, ...exported });
  });
  if (spurious.value) runAudit();
})();

// The relevance cut the audit kept units by: one share, or each layer's where they differ (wider layers, lower cuts).
function cutText(result) {
  const cuts = Object.entries(result.cuts || {});
  const distinct = new Set(cuts.map(([, value]) => value));
  if (distinct.size <= 1) return `${(100 * (cuts.length ? cuts[0][1] : result.cut)).toFixed(1)}%`;
  return cuts.map(([layer, value]) => `${(100 * value).toFixed(2)}% (${layer})`).join(", ");
}

// The concept test's answer, where one ran (semlens's drawings of a spurious concept it draws): what was pasted,
// whether the class relies on it, and the units the test found detect it.
function relianceText(result) {
  const r = result.reliance;
  const drawn = r.drawn ? `concept test: ${r.drawn} (a drawing that looks like the class's own objects or pattern can raise it without the concept itself); ` : "concept test: ";
  const relies = `${result.class} ${r.relies ? "relies" : "does not rely"} on it (probability ${r.without.toFixed(3)} without, ${r.with.toFixed(3)} with; log-odds ${r.log_odds >= 0 ? "+" : ""}${r.log_odds.toFixed(2)})`;
  const detectors = r.relies ? `; units that detect it: ${result.detectors.join(", ") || "none"}` : "";
  return drawn + relies + detectors;
}
