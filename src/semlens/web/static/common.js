// semlens explorer: helpers shared by every page (navigation, API calls, unit links, thumbnails).
// Pages build their DOM with el(): text from the server is never parsed as HTML.
"use strict";

const Semlens = (() => {
  const params = new URLSearchParams(location.search);
  const PAGES = [
    ["map", "/", "Map"], ["search", "search.html", "Search"], ["dissect", "dissect.html", "Dissect"],
    ["audit", "audit.html", "Audit"], ["graph", "graph.html", "Graph"], ["compare", "compare.html", "Compare"],
    ["explain", "explain.html", "Explain"],
    ["correct", "correct.html", "Correct"],
    ["spaces", "spaces.html", "Spaces"],
    ["api", "api.html", "API"],
  ];

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "class") node.className = value;
      else node.setAttribute(key, value === true ? "" : value);
    }
    return fill(node, ...children);
  }

  // Replaces a node's children; arrays are flattened, null/undefined/false skipped, the rest added as text.
  function fill(node, ...children) {
    node.replaceChildren();
    for (const child of children.flat(Infinity)) {
      if (child !== null && child !== undefined && child !== false) node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  // headers: an object to copy the response's headers into, where the caller reads them (e.g. what ranked a search)
  async function api(path, options, headers) {
    const response = await fetch(path, options);
    if (headers) response.headers.forEach((value, name) => { headers[name] = value; });
    const json = (response.headers.get("content-type") || "").includes("json") ? await response.json() : null;
    if (!response.ok) {
      const detail = json && json.detail;
      throw new Error(typeof detail === "string" ? detail : Array.isArray(detail) ? detail.map(fieldProblem).join("; ")
        : detail ? JSON.stringify(detail) : `${response.status} ${response.statusText}`);
    }
    return json;
  }

  // one of the request's fields refused by its schema (FastAPI's 422 detail), as a sentence: "spurious: give at least 1 item"
  function fieldProblem(problem) {
    const field = (problem.loc || []).filter((part) => part !== "body" && part !== "query").join(".");
    const said = problem.type === "too_short" || problem.type === "missing" ? "give it (it is empty)" : problem.msg;
    return field ? `${field}: ${said}` : String(problem.msg || JSON.stringify(problem));
  }

  function status(message, isError = false) {
    const node = document.getElementById("status");
    node.textContent = message || "";
    node.classList.toggle("error", isError);
  }

  // Runs an async step with a status line; errors are shown on the page, not thrown at the console.
  async function run(message, step) {
    status(message);
    try {
      const result = await step();
      status("");
      return result;
    } catch (error) {
      status(error.message, true);
      return null;
    }
  }

  let lensList = null;
  async function lenses() {
    lensList = lensList || (await api("/api/lenses"));
    return lensList;
  }

  const lensKey = params.get("lens") || "0";
  async function currentLens() {
    const all = await lenses();
    const found = all.find((lens) => String(lens.id) === lensKey || lens.name === lensKey);
    if (!found) throw new Error(`no Lens ${lensKey}; served: ${all.map((lens) => `${lens.id} (${lens.name})`).join(", ")}`);
    return found;
  }

  function pageHref(page, extra = {}) {
    const [, path] = PAGES.find(([name]) => name === page);
    const query = new URLSearchParams({ lens: lensKey, ...extra });
    return `${path}?${query}`;
  }

  function unitHref(lens, unit) {
    return `unit.html?${new URLSearchParams({ lens: String(lens), unit })}`;
  }

  function unitLink(lens, unit, text) {
    return el("a", { href: unitHref(lens, unit), class: "unit-link" }, text || unit);
  }

  function thumbs(urls, title = "") {
    return el("span", { class: "thumbs" }, urls.map((url) => el("img", { src: url, alt: title, width: 56, height: 56 })));
  }

  // An example's picture, or where the probe data is out of reach (no URL: LensInfo.images says why) its source as text.
  function picture(url, alt, source) {
    return url ? el("img", { src: url, alt, title: source || "" }) : el("span", { class: "muted source" }, source || alt);
  }

  // A UnitRef as table cells: link, label, thumbnails.
  // A layer's name, with its SAE (architecture, d_sae, k) when its units are SAE features.
  function layerTitle(layer) {
    const sae = layer.sae;
    return sae ? `${layer.name} (${sae.architecture} SAE, d_sae ${sae.d_sae}${sae.k ? `, k ${sae.k}` : ""})` : layer.name;
  }

  function unitCells(ref) {
    const examples = ref.thumbnails.length ? thumbs(ref.thumbnails, ref.unit) : el("span", { class: "muted" }, "(no images)");
    return [el("td", {}, unitLink(ref.lens, ref.unit)), el("td", {}, ref.label || el("i", { class: "muted" }, "no concept")), el("td", {}, examples)];
  }

  function fmt(value, digits = 3) {
    return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
  }

  function splitUnit(unit) {
    const cut = unit.lastIndexOf("/");
    return [unit.slice(0, cut), unit.slice(cut + 1)];
  }

  function unitApi(lens, unit) {
    const [layer, name] = splitUnit(unit);
    return `/api/lenses/${encodeURIComponent(lens)}/layers/${encodeURIComponent(layer)}/units/${encodeURIComponent(name)}`;
  }

  // Hover preview: a unit's name, label and first concept examples in an aside (examples fetched once).
  const previews = new Map();
  async function preview(aside, lens, unit, label) {
    aside.replaceChildren(el("h3", {}, unitLink(lens, unit)), el("p", {}, label || el("i", { class: "muted" }, "no concept")));
    const key = `${lens}|${unit}`;
    if (!previews.has(key)) previews.set(key, api(`${unitApi(lens, unit)}/examples`).catch(() => []));
    const examples = await previews.get(key);
    if (aside.querySelector("h3 a").textContent !== unit) return; // the pointer moved on
    aside.append(el("div", {}, examples.slice(0, 9).map((example) => picture(example.thumbnail, unit, example.source))));
  }

  function plot(node, figure, layout = {}) {
    return Plotly.newPlot(node, figure.data, { ...figure.layout, autosize: true, ...layout }, { displaylogo: false, responsive: true });
  }

  function options(select, values, chosen) {
    select.replaceChildren(...values.map(([value, text, disabled]) => el("option", { value, disabled, selected: String(value) === String(chosen) }, text)));
  }

  // A Lens's classes for a select, as [value, text, disabled]: those its class-relevance data holds images of first, then the
  // others (a 1000-class model's list would start at class 0, which the data may not show); and the one to choose by default.
  function classOptions(lens) {
    const seen = new Set(lens.seen_classes || []);
    const option = (i) => [lens.classes[i], `${i}: ${classTitle(lens, lens.classes[i])}`];
    const indices = lens.classes.map((_, i) => i);
    const first = indices.filter((i) => seen.has(i)).map(option), rest = indices.filter((i) => !seen.has(i)).map(option);
    const values = first.length && rest.length ? [...first, ["", "── classes without probe images ──", true], ...rest] : [...first, ...rest];
    return { values, chosen: params.get("class") || (first[0] || rest[0] || [""])[0] };
  }

  // A class as pages show it: an ImageNet WordNet id with its name (the server's class_titles), any other name as it is.
  function classTitle(lens, name) {
    const index = (lens.classes || []).indexOf(name);
    return index >= 0 && lens.class_titles ? lens.class_titles[index] : String(name);
  }

  async function nav(active) {
    const links = PAGES.map(([name, , title]) => el("a", { href: pageHref(name), class: name === active ? "active" : null }, title));
    const select = el("select", { "aria-label": "Lens", onchange: () => { location.search = `?lens=${select.value}`; } });
    document.getElementById("nav").replaceChildren(el("span", { class: "brand" }, "semlens explorer"), ...links, select);
    try {
      const current = await currentLens();
      options(select, (await lenses()).map((lens) => [lens.id, `${lens.id}: ${lens.name}${lens.damaged ? " (damaged)" : ""}`]), current.id);
      if (current.images) {  // for the whole visit: a status line is cleared by the next step that reports
        document.getElementById("nav").after(el("p", { id: "images-note", class: "banner" }, `example images cannot be shown (their sources are listed instead): ${current.images}`));
      }
    } catch (error) {
      status(error.message, true);
    }
  }

  function download(name, value) {
    const blob = new Blob([JSON.stringify(value, null, 1)], { type: "application/json" });
    const link = el("a", { href: URL.createObjectURL(blob), download: name });
    document.body.append(link);
    link.click();
    link.remove();
  }

  // An example image that does not load (a received Lens served without its probe data): say why, once a page.
  let imageProblemSaid = false;
  document.addEventListener("error", (event) => {
    const image = event.target;
    if (imageProblemSaid || !(image instanceof HTMLImageElement) || !image.src.includes("/api/")) return;
    imageProblemSaid = true;
    api(image.src).catch((error) => status(`example images cannot be shown: ${error.message}`, true));
  }, true);

  return { params, el, fill, api, status, run, lenses, currentLens, pageHref, unitHref, unitLink, thumbs, picture, unitCells, layerTitle, fmt, splitUnit, unitApi, preview, plot, options, classOptions, classTitle, nav, download };
})();
