// Graphs: the InferenceGraph list, and a graph's page: its nodes and steps drawn in SVG, per-step traffic and
// errors, bandit arms, conditions and events.
import * as api from "./api.js";
import {pageShell, Poller} from "./common.js";
import {
  ageOf, badge, conditionsTable, emptyState, eventsTable, facts, h, nameCell, num, readyOf, replace, section, svg, table,
} from "./dom.js";

const KIND = "inferencegraphs";
const STATS_EVERY_MS = 2000;

export function list(outlet) {
  const {body, setError} = pageShell(outlet, "InferenceGraphs",
    "Graphs run in the gateway: chains, switches, ensembles, splitters and bandits over InferenceServices.");
  const poller = new Poller(async (signal) => {
    const items = await api.list(KIND, {signal});
    setError(null);
    if (!items.length) {
      replace(body, emptyState("InferenceGraphs", "shipyard apply -f graph.yaml", "docs/graphs.md"), "empty");
      return;
    }
    const rows = items.map((item) => {
      const nodes = item.spec?.nodes || {};
      const routers = [...new Set(Object.values(nodes).map((node) => node.routerType))].join(", ");
      const steps = Object.values(nodes).reduce((sum, node) => sum + (node.steps || []).length, 0);
      return h("tr", {testid: "graph-row", "data-name": item.metadata.name, "data-namespace": item.metadata.namespace},
        nameCell("graphs", item), h("td", {}, badge(readyOf(item))), h("td", {class: "opt url"}, item.status?.url || "—"),
        h("td", {}, `${Object.keys(nodes).length} node${Object.keys(nodes).length === 1 ? "" : "s"}, ${steps} steps`),
        h("td", {class: "opt"}, routers), h("td", {class: "opt"}, ageOf(item)));
    });
    replace(body, table([{label: "Name"}, {label: "Ready"}, {label: "URL", class: "opt"}, {label: "Shape"},
      {label: "Routers", class: "opt"}, {label: "Age", class: "opt"}], rows, {class: "list"}),
    JSON.stringify(items.map((i) => [i.metadata, i.spec, i.status])));
  }, setError);
  poller.run();
  return {
    refresh: () => poller.run(),
    onTick: (tick) => (tick.changed || []).includes("InferenceGraph") && poller.run(),
    unmount: () => poller.stop(),
  };
}

/** Nodes in drawing order (root first, then breadth first along nodeName steps, then the rest) with depths. */
export function layoutOrder(nodes) {
  const depth = {};
  const order = [];
  const queue = nodes.root ? ["root"] : [];
  if (nodes.root) depth.root = 0;
  while (queue.length) {
    const name = queue.shift();
    order.push(name);
    for (const step of nodes[name]?.steps || []) {
      if (step.nodeName && nodes[step.nodeName] && !(step.nodeName in depth)) {
        depth[step.nodeName] = depth[name] + 1;
        queue.push(step.nodeName);
      }
    }
  }
  for (const name of Object.keys(nodes)) {
    if (!(name in depth)) {
      depth[name] = 0;
      order.push(name);
    }
  }
  return {order, depth};
}

function stepName(step, index) {
  return step.name ?? String(index);
}

function target(step) {
  if (step.serviceName) return `service ${step.serviceName}`;
  if (step.nodeName) return `node ${step.nodeName}`;
  return `url ${step.serviceUrl || ""}`;
}

function stepNote(node, step) {
  if (node.routerType === "Splitter" && step.weight !== undefined) return `weight ${step.weight}%`;
  if (step.condition) return `if ${step.condition}`;
  if (node.routerType === "Sequence" && step.data === "$response") return "gets the previous response";
  return step.dependency === "Hard" ? "Hard dependency" : "";
}

const BOX_W = 300;
const HEAD = 30;
const ROW = 46;
const GAP_X = 90;
const GAP_Y = 28;
const LEFT = 70;

function clip(text, max) {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/** The graph's <svg data-testid="graph-canvas">: a box per node with a row per step, arrows to sub-nodes. */
export function drawGraph(nodes, stats, bandits) {
  const {order, depth} = layoutOrder(nodes);
  const columns = {};
  const boxes = {};
  for (const name of order) {
    const column = depth[name];
    const y = columns[column] ?? 16;
    const height = HEAD + Math.max(1, (nodes[name].steps || []).length) * ROW + 8;
    boxes[name] = {x: LEFT + column * (BOX_W + GAP_X), y, height};
    columns[column] = y + height + GAP_Y;
  }
  const width = LEFT + (Math.max(0, ...Object.values(depth)) + 1) * (BOX_W + GAP_X) - GAP_X + 20;
  const height = Math.max(120, ...Object.values(columns)) + 4;
  const parts = [svg("defs", {}, svg("marker", {id: "arrow", viewBox: "0 0 10 10", refX: "9", refY: "5",
    markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse"}, svg("path", {d: "M0 0L10 5L0 10z", class: "arrow-head"})))];
  if (boxes.root) {
    const y = boxes.root.y + HEAD / 2;
    parts.push(svg("text", {x: 4, y: y - 8, class: "graph-label"}, "request"),
      svg("path", {d: `M4 ${y}H${LEFT - 4}`, class: "edge", "marker-end": "url(#arrow)"}));
  }
  const edges = [];
  for (const name of order) {
    const node = nodes[name];
    const box = boxes[name];
    const steps = node.steps || [];
    const group = svg("g", {class: "graph-node", "data-node": name, transform: `translate(${box.x} ${box.y})`},
      svg("rect", {width: BOX_W, height: box.height, rx: 8, class: `node-box${name === "root" ? " node-root" : ""}`}),
      svg("text", {x: 12, y: 20, class: "node-title"}, clip(name, 22)),
      svg("text", {x: BOX_W - 12, y: 20, class: "node-router", "text-anchor": "end"}, node.routerType || ""));
    if (!steps.length) group.append(svg("text", {x: 12, y: HEAD + 26, class: "muted-svg"}, "no steps"));
    steps.forEach((step, index) => {
      const key = `${name}/${stepName(step, index)}`;
      const counts = stats[key] || {};
      const arm = bandits?.[name]?.[stepName(step, index)];
      const y = HEAD + index * ROW;
      const failing = (counts.errors || 0) > 0;
      const numbers = [`${num(counts.requests ?? 0)} req`, `${num(counts.errors ?? 0)} err`];
      if (arm) numbers.push(`${num(arm.pulls ?? 0)} pulls`, `reward ${num(arm.meanReward ?? null)}`);
      const note = stepNote(node, step);
      group.append(svg("g", {class: `graph-step${failing ? " step-failing" : ""}`, "data-step": key,
        transform: `translate(8 ${y})`},
      svg("rect", {width: BOX_W - 16, height: ROW - 6, rx: 5, class: "step-box"}),
      svg("text", {x: 8, y: 16, class: "step-title"},
        clip(`${node.routerType === "Sequence" ? `${index + 1}. ` : ""}${stepName(step, index)} → ${target(step)}`, 40)),
      svg("text", {x: 8, y: 33, class: "step-numbers"}, clip(numbers.join(" · ") + (note ? ` · ${note}` : ""), 46))));
      if (step.nodeName && boxes[step.nodeName]) edges.push([box.x + BOX_W - 8, box.y + y + ROW / 2 - 3, step.nodeName]);
    });
    parts.push(group);
  }
  for (const [x, y, to] of edges) {
    const end = boxes[to];
    const tx = end.x;
    const ty = end.y + HEAD / 2;
    const bend = Math.max(30, (tx - x) / 2);
    parts.push(svg("path", {d: `M${x} ${y}C${x + bend} ${y} ${tx - bend} ${ty} ${tx - 2} ${ty}`, class: "edge",
      "marker-end": "url(#arrow)"}));
  }
  return svg("svg", {"data-testid": "graph-canvas", class: "graph-canvas", viewBox: `0 0 ${width} ${height}`,
    width, height, role: "img", "aria-label": `The graph's ${order.length} nodes and their steps; the table below lists them`},
  ...parts);
}

export function detail(outlet, {namespace, name}) {
  const base = api.path(KIND, namespace, name);
  const {body, header, setError} = pageShell(outlet, name, null, [["Graphs", "#/graphs"], [name]]);
  const readyBadge = h("span", {});
  const summary = h("div", {});
  header.append(h("div", {class: "summary-line"}, "Ready ", readyBadge));
  const canvas = h("div", {class: "graph-scroll"});
  const stepsTable = h("div", {});
  const arms = h("div", {});
  const conditions = h("div", {});
  const events = h("div", {});
  const statsNote = h("p", {class: "muted small"});
  const armsSection = section("Bandit arms", arms);
  armsSection.hidden = true;
  body.append(section("Overview", summary), section("Nodes and steps", statsNote, canvas, stepsTable), armsSection,
    section("Conditions", conditions), section("Events", events));
  let described = null;
  let stats = {};
  let statsAt = 0;

  function render() {
    if (!described) return;
    const spec = described.spec || {};
    const status = described.status || {};
    const nodes = spec.nodes || {};
    const bandits = status.shipyard?.bandits || {};
    replace(readyBadge, badge(readyOf(described)), readyOf(described));
    replace(summary, facts([
      ["URL", status.url],
      ["Call it", h("code", {}, `POST /v1/models/${name}:predict`)],
      ["Timeouts", `graph ${spec.timeout ? `${spec.timeout}s` : "none"}, each step ${
        spec.routerTimeouts?.serviceClient ? `${spec.routerTimeouts.serviceClient}s` : "none"}`],
      ["Generation", `${described.metadata.generation} (observed ${status.observedGeneration ?? "—"})`],
    ]), JSON.stringify([status.url, spec.timeout, spec.routerTimeouts, described.metadata.generation, status.observedGeneration]));
    replace(canvas, drawGraph(nodes, stats, bandits), JSON.stringify([nodes, stats, bandits]));
    const { order } = layoutOrder(nodes);
    const rows = order.flatMap((nodeName) => (nodes[nodeName].steps || []).map((step, index) => {
      const counts = stats[`${nodeName}/${stepName(step, index)}`] || {};
      return h("tr", {"data-step": `${nodeName}/${stepName(step, index)}`}, h("td", {}, nodeName),
        h("td", {class: "opt"}, nodes[nodeName].routerType), h("td", {}, stepName(step, index)),
        h("td", {}, target(step)), h("td", {class: "opt"}, stepNote(nodes[nodeName], step)),
        h("td", {class: "num"}, num(counts.requests ?? 0)),
        h("td", {class: `num${counts.errors ? " bad" : ""}`}, num(counts.errors ?? 0)));
    }));
    replace(stepsTable, table([{label: "Node"}, {label: "Router", class: "opt"}, {label: "Step"}, {label: "Target"},
      {label: "Options", class: "opt"}, {label: "Requests", class: "num"}, {label: "Errors", class: "num"}], rows),
    JSON.stringify([nodes, stats]));
    const banditNodes = order.filter((nodeName) => nodes[nodeName].routerType === "Bandit");
    armsSection.hidden = !banditNodes.length;
    const armRows = banditNodes.flatMap((nodeName) => (nodes[nodeName].steps || []).map((step, index) => {
      const arm = bandits[nodeName]?.[stepName(step, index)] || {};
      return h("tr", {"data-arm": `${nodeName}/${stepName(step, index)}`}, h("td", {}, nodeName),
        h("td", {}, stepName(step, index)), h("td", {class: "num"}, num(arm.pulls ?? 0)),
        h("td", {class: "num"}, num(arm.meanReward ?? null)), h("td", {class: "num opt"}, num(arm.rewards ?? 0)));
    }));
    replace(arms, banditNodes.length ? [h("p", {class: "muted small"}, "Rewards are posted to ",
      h("code", {}, `/v1/models/${name}:feedback`), " with the answer's x-request-id."),
    table([{label: "Node"}, {label: "Arm"}, {label: "Pulls", class: "num"}, {label: "Mean reward", class: "num"},
      {label: "Rewards", class: "num opt"}], armRows, {testid: "bandit-arms"})] : [], JSON.stringify([banditNodes, bandits]));
    replace(conditions, conditionsTable(status.conditions), JSON.stringify(status.conditions || []));
    replace(events, eventsTable(described.events), JSON.stringify(described.events || []));
  }

  const poller = new Poller(async (signal) => {
    described = await api.get(`${base}/describe`, {signal});
    setError(null);
    await loadStats(signal);
    render();
  }, (error) => setError(error?.status === 404 ? `InferenceGraph ${namespace}/${name} does not exist (any more).` : error));

  async function loadStats(signal) {
    statsAt = Date.now();
    let answer = null;
    try {
      answer = await api.maybe(`/apis/ui/graphs/${encodeURIComponent(namespace)}/${encodeURIComponent(name)}/stats`,
        {signal});
    } catch (error) {
      if (error.name === "AbortError") throw error;
    }
    stats = answer?.steps || {};
    statsNote.textContent = answer ? "Requests and errors per step since the control plane started."
      : "No per-step counters from this control plane.";
  }

  poller.run();
  return {
    refresh: () => poller.run(),
    onTick(tick) {
      if ((tick.changed || []).includes("InferenceGraph") || Date.now() - statsAt >= STATS_EVERY_MS) poller.run();
    },
    unmount: () => poller.stop(),
  };
}
