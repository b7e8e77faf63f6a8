// Data: Datasets with their cache (capacity, cached percentage, hit ratio) and the data operations with their
// phase; a dataset's page with its cache over time, mounts, operations, conditions and events.
import * as api from "./api.js";
import {LineChart, sparkline} from "./charts.js";
import {pageShell, Poller} from "./common.js";
import {
  ageOf, badge, conditionsTable, eachRow, emptyState, eventsTable, facts, h, keyOf, nameCell, num, percent, replace,
  section, table,
} from "./dom.js";

const OPERATION_KINDS = [["dataloads", "DataLoad"], ["datamigrates", "DataMigrate"], ["dataprocesses", "DataProcess"],
  ["datacleans", "DataClean"]];
const DATA_KINDS = ["Dataset", "CacheRuntime", ...OPERATION_KINDS.map(([, kind]) => kind)];

function phaseOf(item, fallback) {
  return item.metadata?.deletionTimestamp ? "Deleting" : item.status?.phase || fallback;
}

/** The dataset an operation works on (a DataMigrate: "a -> b" when both sides are datasets). */
export function operationDataset(item) {
  const spec = item.spec || {};
  if (item.kind === "DataMigrate") {
    return ["from", "to"].map((side) => spec[side]?.dataset?.name).filter(Boolean).join(" -> ");
  }
  return spec.dataset?.name || "";
}

function hitRatioText(item, live) {
  if (live && live.hit_ratio !== undefined) return live.hit_ratio === null ? "—" : percent(live.hit_ratio);
  return item.status?.cacheStates?.cacheHitRatio || "—";
}

async function listOperations(signal) {
  const lists = await Promise.all(OPERATION_KINDS.map(([plural]) => api.list(plural, {signal})));
  return lists.flat();
}

function operationsTable(operations, withDataset = true) {
  const rows = operations.map((op) => {
    const own = op.status?.shipyard || {};
    return h("tr", {testid: "operation-row", "data-name": op.metadata.name, "data-kind": op.kind,
      "data-namespace": op.metadata.namespace},
    h("td", {}, op.kind), h("td", {class: "name"}, op.metadata.name,
      op.metadata.namespace !== "default" ? h("span", {class: "muted ns"}, ` ${op.metadata.namespace}`) : null),
    withDataset ? h("td", {}, operationDataset(op) ? h("a", {href: `#/data/${encodeURIComponent(op.metadata.namespace)}/${
      encodeURIComponent(operationDataset(op).split(" -> ")[0])}`}, operationDataset(op)) : "—") : null,
    h("td", {}, badge(phaseOf(op, "Pending"))), h("td", {class: "opt"}, op.spec?.policy || "Once"),
    h("td", {class: "num opt"}, num(own.runs ?? 0)), h("td", {class: "opt"}, op.status?.duration || "—"),
    h("td", {class: "opt"}, own.runs ? `${num(own.files ?? 0)} files, ${own.throughputMBps ?? 0} MB/s` : "—"),
    h("td", {class: "opt"}, ageOf(op)));
  });
  return table([{label: "Kind"}, {label: "Name"}, withDataset ? {label: "Dataset"} : null, {label: "Phase"},
    {label: "Policy", class: "opt"}, {label: "Runs", class: "num opt"}, {label: "Duration", class: "opt"},
    {label: "Last run", class: "opt"}, {label: "Age", class: "opt"}].filter(Boolean), rows, {class: "list"});
}

export function list(outlet) {
  const {body, setError} = pageShell(outlet, "Datasets",
    "Fluid Datasets with Shipyard's local cache, and the data operations that warm, copy, transform and clean them.");
  let datasets = null;
  let operations = [];
  let live = {};
  const history = new Map();  // "ns/name" -> hit ratio points (loaded once, then one per tick)

  async function loadHistories(signal) {
    await Promise.all(datasets.filter((item) => !history.has(keyOf(item))).map(async (item) => {
      history.set(keyOf(item), []);
      try {
        const answer = await api.maybe(`/apis/ui/metrics/datasets/${encodeURIComponent(item.metadata.namespace)}/${
          encodeURIComponent(item.metadata.name)}`, {signal});
        history.set(keyOf(item), (answer?.points || []).slice(-900));
      } catch (error) {
        if (error.name === "AbortError") throw error;
      }
    }));
  }

  function render() {
    if (!datasets) return;
    if (!datasets.length && !operations.length) {
      replace(body, emptyState("Datasets", "shipyard apply -f dataset.yaml", "docs/datasets.md"), "empty");
      return;
    }
    const rows = datasets.map((item) => {
      const states = item.status?.cacheStates || {};
      return h("tr", {testid: "dataset-row", "data-name": item.metadata.name, "data-namespace": item.metadata.namespace},
        nameCell("data", item), h("td", {}, badge(phaseOf(item, "NotBound"))),
        h("td", {class: "opt num"}, item.status?.ufsTotal || "—"), h("td", {class: "num"}, states.cached ?? "—"),
        h("td", {class: "num"}, states.cacheCapacity ?? "—"), h("td", {class: "num"}, states.cachedPercentage ?? "—"),
        h("td", {class: "num", "data-live": "hit"}, hitRatioText(item, live[keyOf(item)])),
        h("td", {class: "opt", "data-live": "spark"}), h("td", {class: "opt"}, ageOf(item)));
    });
    replace(body, [
      h("h2", {class: "table-title"}, `Datasets (${datasets.length})`),
      datasets.length ? table([{label: "Name"}, {label: "Phase"}, {label: "UFS total", class: "opt num"},
        {label: "Cached", class: "num"}, {label: "Capacity", class: "num"}, {label: "Cached %", class: "num"},
        {label: "Hit ratio", class: "num"}, {label: "Hit ratio, 15 min", class: "opt"}, {label: "Age", class: "opt"}], rows,
      {class: "list"})
        : h("p", {class: "muted"}, "No Dataset: create one with ", h("code", {}, "shipyard apply -f dataset.yaml"), "."),
      h("h2", {class: "table-title"}, `Data operations (${operations.length})`),
      operations.length ? operationsTable(operations)
        : h("p", {class: "muted"}, "No data operation: warm a cache with ", h("code", {}, "shipyard apply -f dataload.yaml"), "."),
    ], JSON.stringify([datasets.map((d) => [d.metadata, d.status]), operations.map((o) => [o.metadata, o.status]),
      Math.floor(Date.now() / 30000)]));
    updateLive();
  }

  /** The hit ratio and its sparkline, updated in place every tick (the table is rebuilt only on changes). */
  function updateLive() {
    if (!datasets) return;
    eachRow(body, "dataset-row", datasets, (row, key, dataset) => {
      const hit = row.querySelector("[data-live=hit]");
      const spark = row.querySelector("[data-live=spark]");
      if (hit && dataset) hit.textContent = hitRatioText(dataset, live[key]);
      if (spark) spark.replaceChildren(sparkline(history.get(key) || [], "hit_ratio", {max: 1, label: "hit ratio"}));
    });
  }

  const poller = new Poller(async (signal) => {
    [datasets, operations] = await Promise.all([api.list("datasets", {signal}), listOperations(signal)]);
    setError(null);
    await loadHistories(signal);
    render();
  }, setError);
  poller.run();
  return {
    refresh: () => poller.run(),
    onTick(tick) {
      live = tick.datasets || {};
      for (const [key, numbers] of Object.entries(live)) {
        const points = history.get(key);
        if (points) {
          points.push({time: tick.time, ...numbers});
          if (points.length > 900) points.shift();
        }
      }
      if ((tick.changed || []).some((kind) => DATA_KINDS.includes(kind))) poller.run();
      else updateLive();
    },
    unmount: () => poller.stop(),
  };
}

export function detail(outlet, {namespace, name}) {
  const base = api.path("datasets", namespace, name);
  const key = `${namespace}/${name}`;
  const {body, header, setError} = pageShell(outlet, name, null, [["Data", "#/data"], [name]]);
  const phase = h("span", {});
  header.append(h("div", {class: "summary-line"}, "Phase ", phase));
  const charts = {
    hit: new LineChart({testid: "chart-hit-ratio", title: "Cache hit ratio", series: [{key: "hit_ratio", label: "hit ratio"}],
      format: percent}),
    cached: new LineChart({testid: "chart-cached", title: "Cached percentage",
      series: [{key: "cached_percent", label: "cached"}], format: (v) => `${num(v)}%`}),
  };
  const chartNote = h("p", {class: "muted small"});
  const overview = h("div", {});
  const states = h("div", {});
  const mounts = h("div", {});
  const ops = h("div", {});
  const conditions = h("div", {});
  const events = h("div", {});
  body.append(section("Cache", overview, states), section("Over time (last 15 minutes)", chartNote,
    h("div", {class: "charts"}, charts.hit.element, charts.cached.element)), section("Mounts", mounts),
  section("Operations on this dataset", ops), section("Conditions", conditions), section("Events", events));
  let described = null;
  let operations = [];

  function render() {
    const status = described.status || {};
    const own = status.shipyard || {};
    const cache = status.cacheStates || {};
    replace(phase, badge(phaseOf(described, "NotBound")), phaseOf(described, "NotBound"));
    replace(overview, facts([
      ["Runtime", (status.runtimes || []).length ? `CacheRuntime ${status.runtimes[0].name}`
        : "default cache (no CacheRuntime of this name)"],
      ["Cache folder", own.root ? h("code", {}, own.root) : "—"],
      ["UFS total", `${status.ufsTotal || "—"} (${status.fileNum ?? "—"} files)`],
      ["Read it", h("code", {}, `dataset://${name}/...`)],
    ]), JSON.stringify([status.runtimes, own.root, status.ufsTotal, status.fileNum]));
    replace(states, Object.keys(cache).length ? table([{label: "Cache state"}, {label: "Value", class: "num"}],
      Object.entries(cache).map(([k, v]) => h("tr", {}, h("td", {}, k), h("td", {class: "num"}, v ?? "—"))))
      : h("p", {class: "muted"}, "No cache state yet."), JSON.stringify(cache));
    const mountList = described.spec?.mounts || [];
    replace(mounts, mountList.length ? table([{label: "Name"}, {label: "Mount point", class: "wide"}, {label: "Path"},
      {label: "Read only"}], mountList.map((m) => h("tr", {}, h("td", {}, m.name || ""),
      h("td", {class: "wide"}, h("code", {}, m.mountPoint || "")), h("td", {}, m.path || `/${m.name || ""}`),
      h("td", {}, m.readOnly ? "yes" : "no")))) : h("p", {class: "muted"}, "No mount."), JSON.stringify(mountList));
    const mine = operations.filter((op) => op.metadata.namespace === namespace
      && operationDataset(op).split(" -> ").includes(name));
    replace(ops, mine.length ? operationsTable(mine, false) : h("p", {class: "muted"}, "No operation on this dataset: ",
      h("code", {}, "shipyard apply -f dataload.yaml"), " warms its cache."),
    JSON.stringify(mine.map((o) => [o.metadata, o.status])));
    replace(conditions, conditionsTable(status.conditions), JSON.stringify(status.conditions || []));
    replace(events, eventsTable(described.events), JSON.stringify(described.events || []));
  }

  const poller = new Poller(async (signal) => {
    [described, operations] = await Promise.all([api.get(`${base}/describe`, {signal}), listOperations(signal)]);
    setError(null);
    render();
  }, (error) => setError(error?.status === 404 ? `Dataset ${key} does not exist (any more).` : error));

  async function loadHistory() {
    let history = null;
    try {
      history = await api.maybe(`/apis/ui/metrics/datasets/${encodeURIComponent(namespace)}/${encodeURIComponent(name)}`);
    } catch {
      history = null;
    }
    chartNote.textContent = history ? "The hit ratio is by bytes read through the cache (— while nothing was read)."
      : "No metrics history from this control plane; charts fill in from live updates.";
    if (history) for (const chart of Object.values(charts)) chart.set(history.points || []);
  }

  poller.run();
  loadHistory();
  return {
    refresh: () => poller.run(),
    onTick(tick) {
      const numbers = (tick.datasets || {})[key];
      if (numbers) for (const chart of Object.values(charts)) chart.push({time: tick.time, ...numbers});
      if ((tick.changed || []).some((kind) => DATA_KINDS.includes(kind))) poller.run();
    },
    unmount: () => poller.stop(),
  };
}
