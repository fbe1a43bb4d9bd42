// API: the endpoints of the explorer's OpenAPI schema, listed offline (no CDN-hosted docs viewer).
"use strict";

(async () => {
  const { el, fill, api, run, nav } = Semlens;
  await nav("api");
  const schema = await run("loading…", () => api("/api/openapi.json"));
  if (!schema) return;
  const rows = Object.entries(schema.paths).flatMap(([path, methods]) => Object.entries(methods).map(([method, operation]) =>
    el("tr", {}, el("td", {}, el("code", {}, method.toUpperCase())), el("td", {}, el("code", {}, path)),
      el("td", {}, operation.summary || "", el("br"), el("span", { class: "muted" },
        (operation.parameters || []).map((p) => `${p.name}${p.required ? "" : "?"}`).join(", "))))));
  fill(document.getElementById("endpoints"), el("tr", {}, el("th", {}, "method"), el("th", {}, "path"), el("th", {}, "what")), rows);
})();
