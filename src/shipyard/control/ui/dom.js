// DOM helpers and formatting shared by the pages: h() builds elements, the rest turns API values into text.

/** h("a", {href: "#/x", class: "link"}, "text", child...) -> an element; null/false children are skipped. */
export function h(tag, attrs, ...children) {
  const ns = tag.startsWith("svg:") ? "http://www.w3.org/2000/svg" : null;
  const el = ns ? document.createElementNS(ns, tag.slice(4)) : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "testid") el.setAttribute("data-testid", value);
    else if (key === "text") el.textContent = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** An SVG element: svg("rect", {...}). */
export function svg(tag, attrs, ...children) {
  return h(`svg:${tag}`, attrs, ...children);
}

/**
 * Replace a container's children, keeping keyboard focus: the focused element's data-key (if any) is looked up
 * again in the new content and focused. Skips the work when the content's signature did not change.
 */
export function replace(container, children, signature) {
  if (signature !== undefined && container.dataset.signature === signature) return false;
  const active = document.activeElement;
  const key = active && container.contains(active) ? active.getAttribute("data-key") : null;
  container.replaceChildren();
  append(container, Array.isArray(children) ? children : [children]);
  if (signature !== undefined) container.dataset.signature = signature;
  if (key) {
    const again = container.querySelector(`[data-key="${CSS.escape(key)}"]`);
    if (again) again.focus();
  }
  return true;
}

/** A table: columns [{label, class}], rows of cells (a cell: text or element, or {cell, class}). */
export function table(columns, rows, attrs = {}) {
  return h("div", {class: "table-wrap"},
    h("table", attrs,
      h("thead", {}, h("tr", {}, columns.map((column) => h("th", {scope: "col", class: column.class}, column.label)))),
      h("tbody", {}, rows)));
}

/** The empty state of a list page: what is missing and the command that creates the first one. */
export function emptyState(what, command, doc, alternative) {
  return h("div", {class: "empty", testid: "empty-state"},
    h("p", {class: "empty-title"}, `No ${what} yet.`),
    h("p", {}, "Create one with ", h("code", {}, command),
      alternative ? [" (or ", h("code", {}, alternative), ")"] : null, doc ? ` — see ${doc}` : ""));
}

/** A notice: "error" or "info". */
export function notice(text, kind = "info") {
  return h("p", {class: `notice notice-${kind}`, role: kind === "error" ? "alert" : "status"}, text);
}

export function section(title, ...children) {
  return h("section", {class: "card"}, h("h2", {}, title), ...children);
}

/** "True" | "False" | "Unknown" | "Deleting": a resource's Ready condition. */
export function readyOf(resource) {
  if (resource?.metadata?.deletionTimestamp) return "Deleting";
  const ready = (resource?.status?.conditions || []).find((condition) => condition.type === "Ready");
  return ready?.status || "Unknown";
}

export function badge(text, testid) {
  const tone = {True: "ok", Ready: "ok", Complete: "ok", Bound: "ok", Running: "run", Executing: "run",
    Initializing: "run", Restarting: "warn", Queued: "wait", Pending: "wait", Created: "wait", NotBound: "wait",
    Suspended: "wait", Unknown: "wait", False: "bad", Failed: "bad", Deleting: "warn"}[text] || "wait";
  return h("span", {class: `badge badge-${tone}`, testid}, text);
}

/** kubectl's short ages: 45s, 12m, 5h, 3d. */
export function since(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "";
  const s = Math.max(0, Math.floor(seconds));
  if (s < 120) return `${s}s`;
  if (s < 3 * 3600) return `${Math.floor(s / 60)}m`;
  if (s < 48 * 3600) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

export function epoch(stamp) {
  if (typeof stamp === "number") return stamp;
  const ms = Date.parse(stamp || "");
  return Number.isNaN(ms) ? null : ms / 1000;
}

export function ageOf(resource) {
  const created = epoch(resource?.metadata?.creationTimestamp);
  return created === null ? "" : since(Date.now() / 1000 - created);
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

export function clock(seconds) {
  if (!seconds) return "—";
  return new Date(seconds * 1000).toLocaleString();
}

/** A number in at most 3 significant figures (12.3, 0.0123, 1,234). */
export function num(value, digits = 3) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  if (typeof value !== "number") return String(value);
  if (Math.abs(value) >= 1000) return Math.round(value).toLocaleString("en-US");
  if (value === 0) return "0";
  return String(Number(value.toPrecision(digits)));
}

export function percent(fraction) {
  return fraction === null || fraction === undefined ? "—" : `${num(100 * fraction)}%`;
}

export function bytes(value) {
  if (value === null || value === undefined || value === "") return "—";
  if (typeof value !== "number") return String(value);
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let size = value;
  let unit = 0;
  while (size >= 1024 && unit < units.length - 1) { size /= 1024; unit += 1; }
  return `${num(size)} ${units[unit]}`;
}

/** "ns/name" for a resource, the key the live ticks use. */
export function keyOf(resource) {
  return `${resource.metadata.namespace}/${resource.metadata.name}`;
}

/** Calls update(row, key, resource) for each table row marked data-testid=testid (rows carry
 *  data-namespace and data-name), with its resource from items (undefined when it is gone). */
export function eachRow(container, testid, items, update) {
  const byKey = Object.fromEntries(items.map((item) => [keyOf(item), item]));
  for (const row of container.querySelectorAll(`[data-testid=${testid}]`)) {
    const key = `${row.dataset.namespace}/${row.dataset.name}`;
    update(row, key, byKey[key]);
  }
}

export function link(href, text, attrs = {}) {
  return h("a", {href, "data-key": href, ...attrs}, text);
}

/** The "Name / namespace" first cell of a list row. */
export function nameCell(route, resource) {
  const {namespace, name} = resource.metadata;
  return h("td", {class: "name"}, link(`#/${route}/${encodeURIComponent(namespace)}/${encodeURIComponent(name)}`, name),
    namespace !== "default" ? h("span", {class: "muted ns"}, ` ${namespace}`) : null);
}

/** Conditions as a table (type, status, reason, message, since). */
export function conditionsTable(conditions) {
  if (!conditions || !conditions.length) return h("p", {class: "muted"}, "No conditions yet.");
  return table([{label: "Type"}, {label: "Status"}, {label: "Reason"}, {label: "Message", class: "wide"},
    {label: "Since", class: "opt"}], conditions.map((c) => h("tr", {},
    h("td", {}, c.type), h("td", {}, badge(c.status || "Unknown")), h("td", {}, c.reason || ""),
    h("td", {class: "wide"}, c.message || ""),
    h("td", {class: "opt"}, c.lastTransitionTime ? since(Date.now() / 1000 - epoch(c.lastTransitionTime)) : ""))));
}

/** Events, newest first, as a table with data-testid="events". */
export function eventsTable(events) {
  if (!events || !events.length) return h("p", {class: "muted", testid: "events"}, "No events.");
  const rows = [...events].sort((a, b) => b.time - a.time).slice(0, 50).map((e) => h("tr", {},
    h("td", {class: "opt"}, h("span", {class: `badge badge-${e.type === "Warning" ? "warn" : "ok"}`}, e.type)),
    h("td", {}, e.reason), h("td", {}, since(Date.now() / 1000 - e.time)),
    h("td", {class: "wide"}, e.message)));
  return h("div", {class: "table-wrap"}, h("table", {testid: "events"},
    h("thead", {}, h("tr", {}, [["Type", "opt"], ["Reason"], ["Age"], ["Message"]].map(([label, cls]) =>
      h("th", {scope: "col", class: cls}, label)))),
    h("tbody", {}, rows)));
}

/** A key/value summary list. */
export function facts(pairs) {
  return h("dl", {class: "facts"}, pairs.filter(Boolean).map(([key, value]) =>
    [h("dt", {}, key), h("dd", {}, value === null || value === undefined || value === "" ? "—" : value)]));
}

/** A progress bar (0..100 or null). */
export function progressBar(value, label) {
  const known = typeof value === "number";
  return h("div", {class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
    "aria-valuenow": known ? value : null, "aria-label": label || "progress"},
  h("div", {class: "progress-fill", style: `width: ${known ? Math.max(0, Math.min(100, value)) : 0}%`}),
  h("span", {class: "progress-text"}, known ? `${value}%` : "—"));
}
