// Services: the InferenceService list, and a service's page (charts, rollout buttons, revisions, events, logs).
import * as api from "./api.js";
import {LineChart} from "./charts.js";
import {confirmDialog} from "./dialog.js";
import {
  ageOf, badge, conditionsTable, eachRow, emptyState, eventsTable, facts, h, keyOf, nameCell, notice, num, percent,
  readyOf, replace, section, since, table,
} from "./dom.js";
import {LogView, pageShell, Poller} from "./common.js";

const KIND = "inferenceservices";

/** The predictor's traffic with a share, latest first: "a 20% · b 80%" ("—" when none). */
export function trafficSplit(resource) {
  const traffic = resource?.status?.components?.predictor?.traffic || [];
  const parts = traffic.filter((entry) => (entry.percent || 0) > 0).map((entry) => `${entry.revisionName} ${entry.percent}%`);
  return parts.length ? parts.join(" · ") : "—";
}

/** The split as nodes: each "revision N%" kept on one line; the text is trafficSplit()'s. */
function splitNodes(resource) {
  const parts = trafficSplit(resource).split(" · ");
  return parts.flatMap((part, index) => [index ? " " : null,
    h("span", {class: "nowrap"}, index < parts.length - 1 ? `${part} ·` : part)]);
}

/** Ready/desired replicas summed over the service's revisions (status.shipyard.autoscaling), or the live tick's. */
function replicasText(resource, live) {
  if (live && typeof live.replicas === "number") {
    return `${live.ready_replicas ?? live.replicas}/${live.replicas}`;
  }
  const scaling = Object.values(resource?.status?.shipyard?.autoscaling || {});
  if (!scaling.length) return "—";
  const ready = scaling.reduce((sum, a) => sum + (a.actual || 0), 0);
  const desired = scaling.reduce((sum, a) => sum + (a.desired || 0), 0);
  return `${ready}/${desired}`;
}

export function list(outlet) {
  const {body, setError} = pageShell(outlet, "InferenceServices",
    "Every service with its readiness, URL, revisions and traffic split. Live numbers come from the gateway.");
  let items = null;
  let live = {};

  function render() {
    if (!items) return;
    if (!items.length) {
      replace(body, emptyState("InferenceServices", "shipyard apply -f sklearn-iris.yaml", "docs/deployments.md"), "empty");
      return;
    }
    const rows = items.map((item) => {
      const predictor = item.status?.components?.predictor || {};
      const ready = readyOf(item);
      return h("tr", {testid: "service-row", "data-name": item.metadata.name, "data-namespace": item.metadata.namespace,
        "data-key": `row:${keyOf(item)}`},
      nameCell("services", item),
      h("td", {}, badge(ready, "service-ready")),
      h("td", {class: "opt url"}, item.status?.url || "—"),
      h("td", {class: "opt"}, predictor.latestCreatedRevision || "—"),
      h("td", {class: "opt"}, rollbackTarget(predictor) || "—"),
      h("td", {class: "split-cell"}, h("span", {testid: "traffic-split"}, splitNodes(item))),
      h("td", {class: "num", "data-live": "replicas"}, replicasText(item, live[keyOf(item)])),
      h("td", {class: "num opt", "data-live": "rps"}, "—"),
      h("td", {class: "opt"}, ageOf(item)));
    });
    // the table is rebuilt only when the services change; the live numbers are updated in place (updateLive)
    replace(body, table([{label: "Name"}, {label: "Ready"}, {label: "URL", class: "opt"},
      {label: "Latest revision", class: "opt"}, {label: "Previous", class: "opt"}, {label: "Traffic"},
      {label: "Replicas", class: "num"}, {label: "Req/s", class: "num opt"}, {label: "Age", class: "opt"}], rows,
    {class: "list"}), JSON.stringify([items.map((i) => [i.metadata, i.status]), Math.floor(Date.now() / 30000)]));
    updateLive();
  }

  function updateLive() {
    if (!items) return;
    eachRow(body, "service-row", items, (row, key, service) => {
      const numbers = live[key];
      const replicas = row.querySelector("[data-live=replicas]");
      const rps = row.querySelector("[data-live=rps]");
      if (replicas && service) replicas.textContent = replicasText(service, numbers);
      if (rps) rps.textContent = numbers ? num(numbers.rps) : "—";
    });
  }

  const poller = new Poller(async (signal) => {
    items = await api.list(KIND, {signal});
    setError(null);
    render();
  }, setError);
  poller.run();

  return {
    refresh: () => poller.run(),
    onTick(tick) {
      live = tick.services || {};
      if ((tick.changed || []).includes("InferenceService")) poller.run();
      else updateLive();
    },
    unmount: () => poller.stop(),
  };
}

export function detail(outlet, {namespace, name}) {
  const base = api.path(KIND, namespace, name);
  const {body, setError, header} = pageShell(outlet, name, null, [["Services", "#/services"], [name]]);
  const key = `${namespace}/${name}`;
  let described = null;

  const readyBadge = h("span", {});
  const split = h("span", {testid: "traffic-split", class: "split"}, "—");
  const url = h("span", {class: "url"});
  const result = h("p", {class: "action-result", role: "status", testid: "action-result", "aria-live": "polite"});
  const promote = h("button", {type: "button", class: "button", testid: "promote-button",
    onclick: () => act("promote")}, "Promote");
  const rollback = h("button", {type: "button", class: "button", testid: "rollback-button",
    onclick: () => act("rollback")}, "Roll back");
  const pin = h("button", {type: "button", class: "button", testid: "pin-button", onclick: () => act("pin")}, "Pin…");
  header.append(h("div", {class: "summary"},
    h("div", {class: "summary-line"}, "Ready ", readyBadge, h("span", {class: "sep"}), "Traffic ", split),
    h("div", {class: "summary-line muted"}, url)),
  h("div", {class: "actions"}, promote, rollback, pin), result);

  const charts = {
    rps: new LineChart({testid: "chart-rps", title: "Requests/s", series: [{key: "rps", label: "req/s"}]}),
    latency: new LineChart({testid: "chart-latency", title: "Latency (ms)",
      series: [{key: "p50_ms", label: "p50"}, {key: "p99_ms", label: "p99"}]}),
    errors: new LineChart({testid: "chart-errors", title: "Error rate", series: [{key: "error_rate", label: "errors"}],
      format: percent}),
    replicas: new LineChart({testid: "chart-replicas", title: "Replicas",
      series: [{key: "replicas", label: "replicas"}, {key: "ready_replicas", label: "ready"}]}),
    batch: new LineChart({testid: "chart-batch", title: "Average batch size", series: [{key: "batch_size", label: "batch"}]}),
  };
  const chartNote = h("p", {class: "muted small"});
  const chartsCard = section("Live metrics (last 15 minutes)", chartNote,
    h("div", {class: "charts"}, Object.values(charts).map((chart) => chart.element)));
  const revisions = h("div", {});
  const conditions = h("div", {});
  const replicas = h("div", {});
  const events = h("div", {});
  const logs = new LogView("log-lines", "Recent logs of the replicas running now");
  body.append(chartsCard, section("Revisions", revisions), section("Conditions", conditions),
    section("Replicas", replicas), section("Events", events), section("Logs", logs.element));

  function render() {
    const resource = described;
    replace(readyBadge, badge(readyOf(resource), "service-ready"), readyOf(resource));
    replace(split, splitNodes(resource), trafficSplit(resource));
    url.textContent = [resource.status?.url, resource.status?.address?.url && `gateway ${resource.status.address.url}`]
      .filter(Boolean).join(" · ") || "no URL yet";
    const status = resource.status || {};
    const traffic = {};
    for (const part of Object.values(status.components || {})) {
      for (const entry of part.traffic || []) traffic[entry.revisionName] = entry;
    }
    const all = described.replicas || [];
    replace(revisions, (described.revisions || []).length ? table([{label: "Revision"}, {label: "Generation", class: "opt"},
      {label: "Traffic", class: "num"}, {label: "Tag"}, {label: "Ready", class: "num"}, {label: "Created", class: "opt"}],
    [...described.revisions].reverse().map((revision) => {
      const entry = traffic[revision.name];
      const mine = all.filter((replica) => replica.revision === revision.name);
      return h("tr", {"data-revision": revision.name}, h("td", {}, revision.name),
        h("td", {class: "opt"}, String(revision.generation)),
        h("td", {class: "num"}, entry ? `${entry.percent ?? 0}%` : ""), h("td", {}, entry?.tag || ""),
        h("td", {class: "num"}, `${mine.filter((r) => r.state === "ready").length}/${mine.length}`),
        h("td", {class: "opt"}, `${since(Date.now() / 1000 - revision.created)} ago`));
    })) : h("p", {class: "muted"}, "No revision yet."), JSON.stringify([described.revisions, traffic, all]));
    replace(conditions, conditionsTable(status.conditions), JSON.stringify(status.conditions || []));
    replace(replicas, all.length ? table([{label: "Revision"}, {label: "#", class: "num"}, {label: "State"},
      {label: "Restarts", class: "num"}, {label: "PID", class: "opt num"}, {label: "Last exit", class: "opt wide"}],
    all.map((r) => h("tr", {}, h("td", {}, r.revision), h("td", {class: "num"}, String(r.index)),
      h("td", {}, badge(r.state === "ready" ? "Ready" : r.state)), h("td", {class: "num"}, String(r.restarts)),
      h("td", {class: "opt num"}, r.pid ? String(r.pid) : ""), h("td", {class: "opt wide"}, r.last_exit || ""))))
      : h("p", {class: "muted"}, "No replica running (scaled to zero, or not started yet)."), JSON.stringify(all));
    replace(events, eventsTable(described.events), JSON.stringify(described.events || []));
  }

  async function act(action) {
    if (!described) return;
    const predictor = described.status?.components?.predictor || {};
    const latest = predictor.latestReadyRevision || predictor.latestCreatedRevision;
    const previous = rollbackTarget(predictor);
    let dialog;
    if (action === "promote") {
      dialog = {title: `Promote ${name}?`, confirmLabel: "Promote", body: [h("p", {},
        `All traffic goes to the latest ready revision${latest ? ` (${latest})` : ""}. `,
        "The same as ", h("code", {}, `shipyard rollout promote ${name}`), ".")]};
    } else if (action === "rollback") {
      dialog = {title: `Roll back ${name}?`, confirmLabel: "Roll back", danger: true, body: [h("p", {},
        `All traffic goes back to ${previous ? previous : "the previous rolled-out revision"}, and stays `,
        "pinned there until you promote or apply the service again. The same as ",
        h("code", {}, `shipyard rollout rollback ${name}`), ".")]};
    } else {
      const names = (described.revisions || []).map((r) => r.name).filter((n) => !/-(transformer|explainer)-/.test(n))
        .reverse();
      dialog = {title: `Pin ${name} to a revision`, confirmLabel: "Pin", body: [
        h("label", {class: "field"}, "Revision ",
          h("select", {name: "revision", testid: "pin-revision", required: true},
            names.map((n) => h("option", {value: n, selected: n === (previous || names[0])}, n)))),
        h("p", {class: "muted"}, "All traffic goes to this revision until you promote or apply the service again.")]};
    }
    const form = await confirmDialog(dialog);
    if (!form) return;
    const request = {action};
    if (action === "pin") request.revision = form.get("revision");
    result.className = "action-result";
    result.textContent = `${action}…`;
    try {
      const answer = await api.post(`${base}/rollout`, request);
      result.textContent = answer.message || `${action}: done`;
    } catch (error) {
      result.className = "action-result notice-error";
      result.textContent = `${action} failed: ${error.message}`;
    }
    poller.run();
  }

  const poller = new Poller(async (signal) => {
    described = await api.get(`${base}/describe`, {signal});
    setError(null);
    render();
  }, (error) => setError(error?.status === 404 ? `InferenceService ${key} does not exist (any more).` : error));

  async function loadHistory() {
    let history;
    try {
      history = await api.maybe(`/apis/ui/metrics/${KIND}/${encodeURIComponent(namespace)}/${encodeURIComponent(name)}`);
    } catch {
      history = null;
    }
    if (!history) {
      chartNote.textContent = "No metrics history from this control plane; charts fill in from live updates.";
      return;
    }
    chartNote.textContent = "";
    for (const chart of Object.values(charts)) chart.set(history.points || []);
  }

  poller.run();
  loadHistory();
  logs.follow(async (cursor, signal) => api.post(`${base}/logs`,
    cursor ? {cursor, wait_s: 0} : {tail: 200}, {signal}), 2000);

  return {
    refresh: () => poller.run(),
    onTick(tick) {
      const numbers = (tick.services || {})[key];
      if (numbers) {
        const point = {time: tick.time, ...numbers};
        for (const chart of Object.values(charts)) chart.push(point);
      }
      if ((tick.changed || []).includes("InferenceService")) poller.run();
    },
    unmount() {
      poller.stop();
      logs.stop();
    },
  };
}


/** Where a rollback goes, as the API decides (controllers/rollout.py): during a canary (or after a pin) the
 * rolled-out revision, otherwise the one rolled out before it. */
function rollbackTarget(predictor) {
  const latest = predictor.latestReadyRevision;
  const rolledOut = predictor.latestRolledoutRevision;
  if (latest && rolledOut && latest !== rolledOut) return rolledOut;
  return predictor.previousRolledoutRevision;
}
