// Training: TrainJobs (active and finished) with state, queue position, progress and ETA; a job's page with its
// live logs per step and rank, metric plots, checkpoints, restarts, steps, conditions and events.
import * as api from "./api.js";
import {LineChart} from "./charts.js";
import {LogView, pageShell, Poller} from "./common.js";
import {
  ageOf, badge, clock, conditionsTable, duration, emptyState, epoch, eventsTable, facts, h, nameCell, num,
  progressBar, replace, section, table,
} from "./dom.js";

const KIND = "trainjobs";
const FINISHED = ["Complete", "Failed"];
const REPORT_EVERY_MS = 3000;

export function stateOf(job) {
  if (job.metadata?.deletionTimestamp) return "Deleting";
  return job.status?.shipyard?.state || "Created";
}

function priorityOf(job) {
  const value = parseInt(job.metadata?.annotations?.["trainer.shipyard.io/priority"] ?? "0", 10);
  return Number.isNaN(value) ? 0 : value;
}

/** Queue positions (1 = next) of the queued jobs: by priority (higher first), then by the time they queued. */
export function queuePositions(jobs) {
  const queued = jobs.filter((job) => stateOf(job) === "Queued" && !job.spec?.suspend);
  queued.sort((a, b) => priorityOf(b) - priorityOf(a)
    || (a.status?.shipyard?.queuedAt ?? 0) - (b.status?.shipyard?.queuedAt ?? 0));
  return Object.fromEntries(queued.map((job, index) =>
    [`${job.metadata.namespace}/${job.metadata.name}`, job.status?.shipyard?.queuePosition ?? index + 1]));
}

function eta(job) {
  const seconds = job.status?.trainerStatus?.estimatedRemainingSeconds;
  if (FINISHED.includes(stateOf(job))) return "—";
  return typeof seconds === "number" ? `~${duration(seconds)}` : "—";
}

function nodesOf(job) {
  const resolved = job.status?.shipyard?.resolved || {};
  const nodes = resolved.num_nodes ?? job.spec?.trainer?.numNodes ?? 1;
  const procs = resolved.nproc_per_node ?? job.spec?.trainer?.numProcPerNode;
  return procs && procs !== "auto" ? `${nodes} × ${procs}` : String(nodes);
}

/** Seconds the job ran (start to completion, or to now while it runs). */
function ranFor(job) {
  const own = job.status?.shipyard || {};
  const start = own.startTime ?? own.activeSince;
  if (!start) return null;
  const end = own.completionTime ?? (FINISHED.includes(stateOf(job)) ? null : Date.now() / 1000);
  return end ? end - start : null;
}

export function list(outlet) {
  const {body, setError} = pageShell(outlet, "TrainJobs",
    "Kubeflow Trainer jobs: queued, running and finished ones (the history stays until you delete a job).");
  const columns = [{label: "Name"}, {label: "State"}, {label: "Runtime", class: "opt"}, {label: "Nodes", class: "opt"},
    {label: "Queue", class: "num"}, {label: "Progress"}, {label: "ETA", class: "opt"}, {label: "Ran", class: "opt"},
    {label: "Age", class: "opt"}];
  const poller = new Poller(async (signal) => {
    const jobs = await api.list(KIND, {signal});
    setError(null);
    if (!jobs.length) {
      replace(body, emptyState("TrainJobs", "shipyard apply -f mnist-ddp.yaml", "docs/training.md",
        "shipyard train train.py"),
        "empty");
      return;
    }
    const positions = queuePositions(jobs);
    const row = (job) => {
      const key = `${job.metadata.namespace}/${job.metadata.name}`;
      return h("tr", {testid: "job-row", "data-name": job.metadata.name, "data-namespace": job.metadata.namespace},
        nameCell("training", job), h("td", {}, badge(stateOf(job), "job-state")),
        h("td", {class: "opt"}, job.spec?.runtimeRef?.name || ""), h("td", {class: "opt"}, nodesOf(job)),
        h("td", {class: "num"}, positions[key] ? `#${positions[key]}` : "—"),
        h("td", {}, progressBar(job.status?.trainerStatus?.progressPercentage ?? (stateOf(job) === "Complete" ? 100 : null),
          `${job.metadata.name} progress`)),
        h("td", {class: "opt"}, eta(job)), h("td", {class: "opt"}, ranFor(job) === null ? "—" : duration(ranFor(job))),
        h("td", {class: "opt"}, ageOf(job)));
    };
    const newest = (a, b) => (epoch(b.metadata.creationTimestamp) ?? 0) - (epoch(a.metadata.creationTimestamp) ?? 0);
    const active = jobs.filter((job) => !FINISHED.includes(stateOf(job))).sort(newest);
    const done = jobs.filter((job) => FINISHED.includes(stateOf(job)))
      .sort((a, b) => (b.status?.shipyard?.completionTime ?? 0) - (a.status?.shipyard?.completionTime ?? 0));
    replace(body, [
      h("h2", {class: "table-title"}, `Active (${active.length})`),
      active.length ? table(columns, active.map(row), {class: "list"}) : h("p", {class: "muted"}, "No job is queued or running."),
      h("h2", {class: "table-title"}, `Finished (${done.length})`),
      done.length ? table(columns, done.map(row), {class: "list"}) : h("p", {class: "muted"}, "No finished job yet."),
    ], JSON.stringify([jobs.map((job) => [job.metadata, job.status]), Math.floor(Date.now() / 5000)]));
  }, setError);
  poller.run();
  return {
    refresh: () => poller.run(),
    onTick: (tick) => (tick.changed || []).includes("TrainJob") && poller.run(),
    unmount: () => poller.stop(),
  };
}

/** A log line's rank, when the line says (torchrun's "[rank1]:" or "[default1]:" prefixes). */
export function rankOf(line) {
  const match = /^\s*\[(?:rank|default)(\d+)\]/.exec(line);
  return match ? match[1] : null;
}

export function detail(outlet, {namespace, name}) {
  const base = api.path(KIND, namespace, name);
  const {body, header, setError} = pageShell(outlet, name, null, [["Training", "#/training"], [name]]);
  const stateBadge = h("span", {});
  const bar = h("div", {class: "header-progress"});
  header.append(h("div", {class: "summary-line"}, "State ", stateBadge, h("span", {class: "sep"}), bar));
  const overview = h("div", {});
  const metricsNow = h("div", {});
  const charts = h("div", {class: "charts"});
  const chartsNote = h("p", {class: "muted small"});
  const checkpoints = h("div", {});
  const steps = h("div", {});
  const conditions = h("div", {});
  const events = h("div", {});
  const logs = new LogView("job-logs", null);
  const stepSelect = h("select", {id: "log-step", testid: "log-step", onchange: () => followLogs()},
    h("option", {value: ""}, "all steps"));
  const rankSelect = h("select", {id: "log-rank", testid: "log-rank", onchange: () => filterRank()},
    h("option", {value: ""}, "all ranks"));
  const rankLabel = h("label", {for: "log-rank", class: "field-inline"}, "Rank ", rankSelect);
  rankLabel.hidden = true;
  const logTools = h("div", {class: "toolbar"}, h("label", {for: "log-step", class: "field-inline"}, "Step ", stepSelect),
    rankLabel, h("span", {class: "muted small"}, "Followed live while this page is open."));
  body.append(h("div", {class: "columns"}, section("Overview", overview),
    section("Metrics", metricsNow, chartsNote, charts)), section("Logs", logTools, logs.element),
  section("Checkpoints", checkpoints), section("Steps", steps), section("Conditions", conditions),
  section("Events", events));

  let described = null;
  let report = null;
  let reportAt = 0;
  const metricCharts = new Map();
  const ranks = new Set();

  function render() {
    const status = described.status || {};
    const own = status.shipyard || {};
    const trainer = status.trainerStatus || {};
    const resolved = own.resolved || {};
    const state = stateOf(described);
    replace(stateBadge, badge(state, "job-state"), state);
    replace(bar, [progressBar(trainer.progressPercentage ?? (state === "Complete" ? 100 : null), "progress"),
      h("span", {class: "muted"}, ` ETA ${eta(described)}`)], JSON.stringify([trainer, state]));
    const position = report?.queuePosition ?? (state === "Queued" ? own.queuePosition : null);
    const restarts = report?.restarts ?? own.restarts ?? 0;
    replace(overview, facts([
      ["State", own.reason && own.message ? `${state} (${own.reason}: ${own.message})` : state],
      position ? ["Queue position", `#${position}`] : null,
      ["Runtime", `${described.spec?.runtimeRef?.name || ""} (${resolved.framework || "—"})`],
      ["Nodes", `${resolved.num_nodes ?? described.spec?.trainer?.numNodes ?? "—"} × ${resolved.nproc_per_node ?? "—"} process(es)`],
      ["Attempt", `${own.attempt ?? 0} (restarts: ${restarts} of ${resolved.max_restarts ?? 0})`],
      ["Started", own.startTime ? clock(own.startTime) : "—"],
      ["Completed", own.completionTime ? clock(own.completionTime) : "—"],
      ["Ran for", ranFor(described) === null ? "—" : duration(ranFor(described))],
      ["Workspace", resolved.workdir ? h("code", {}, resolved.workdir) : "—"],
      ["Logs", h("code", {}, `shipyard logs trainjob ${name}${namespace !== "default" ? ` -n ${namespace}` : ""} -f`)],
    ]), JSON.stringify([own, resolved, state, position, restarts, Math.floor(Date.now() / 5000)]));
    const latest = trainer.metrics || [];
    const shown = (value) => (value !== "" && !Number.isNaN(Number(value)) ? num(Number(value), 4) : value);
    replace(metricsNow, latest.length ? facts(latest.map((m) => [m.name, shown(m.value)]))
      : h("p", {class: "muted"}, "No metric reported yet (training code calls shipyard.train.report(metrics=...))."),
    JSON.stringify(latest));
    const stepNames = [...new Set([...(report?.steps || []), ...(status.jobsStatus || []).map((s) => s.name)])];
    const have = [...stepSelect.options].map((o) => o.value);
    for (const step of stepNames) if (!have.includes(step)) stepSelect.append(h("option", {value: step}, step));
    const codes = own.exitCodes || {};
    replace(steps, (status.jobsStatus || []).length ? table([{label: "Step"}, {label: "Active", class: "num"},
      {label: "Succeeded", class: "num"}, {label: "Failed", class: "num"}, {label: "Exit code", class: "num"}],
    status.jobsStatus.map((s) => h("tr", {}, h("td", {}, s.name), h("td", {class: "num"}, String(s.active ?? 0)),
      h("td", {class: "num"}, String(s.succeeded ?? 0)), h("td", {class: "num"}, String(s.failed ?? 0)),
      h("td", {class: "num"}, codes[s.name] ?? ""))))
      : h("p", {class: "muted"}, "No step yet (the job waits in the queue)."), JSON.stringify([status.jobsStatus, codes]));
    replace(conditions, conditionsTable(status.conditions), JSON.stringify(status.conditions || []));
    replace(events, eventsTable(described.events), JSON.stringify(described.events || []));
    renderReport();
  }

  function renderReport() {
    if (!report) {
      chartsNote.textContent = "No report history from this control plane.";
      replace(checkpoints, h("p", {class: "muted"}, "No data."), "none");
      return;
    }
    const points = report.points || [];
    const names = [...new Set(points.flatMap((p) => Object.keys(p.metrics || {})))].sort((a, b) =>
      (a === "loss" ? -1 : b === "loss" ? 1 : a.localeCompare(b)));
    chartsNote.textContent = names.length ? `${points.length} reports; x is the training step.`
      : "No metric reported yet.";
    for (const metric of names) {
      if (!metricCharts.has(metric)) {
        const chart = new LineChart({testid: "metric-chart", title: metric, x: "step", limit: 100000,
          series: [{key: "value", label: metric}], min: Infinity, attrs: {"data-metric": metric}});
        metricCharts.set(metric, chart);
        charts.append(chart.element);
      }
      metricCharts.get(metric).set(points.filter((p) => typeof p.metrics?.[metric] === "number")
        .map((p, index) => ({step: typeof p.step === "number" ? p.step : index, value: p.metrics[metric]})));
    }
    const saved = report.checkpoints || [];
    replace(checkpoints, saved.length ? table([{label: "Step", class: "num"}, {label: "Saved"}, {label: "Path", class: "wide"}],
      [...saved].reverse().map((c) => h("tr", {}, h("td", {class: "num"}, num(c.step)), h("td", {}, clock(c.time)),
        h("td", {class: "wide"}, h("code", {}, c.path)))))
      : h("p", {class: "muted"}, "No checkpoint saved (training code calls shipyard.train.save_checkpoint)."),
    JSON.stringify(saved));
  }

  async function loadReport(signal) {
    reportAt = Date.now();
    try {
      report = await api.maybe(`/apis/ui/trainjobs/${encodeURIComponent(namespace)}/${encodeURIComponent(name)}/report`,
        {signal});
    } catch (error) {
      if (error.name === "AbortError") throw error;
      report = null;
    }
  }

  const poller = new Poller(async (signal) => {
    const [answer] = await Promise.all([api.get(`${base}/describe`, {signal}), loadReport(signal)]);
    described = answer;
    setError(null);
    render();
  }, (error) => setError(error?.status === 404 ? `TrainJob ${namespace}/${name} does not exist (any more).` : error));

  function filterRank() {
    const rank = rankSelect.value;
    logs.setFilter(rank ? (line) => rankOf(line) === rank : null);
  }

  function followLogs() {
    logs.clear();
    const step = stepSelect.value || undefined;
    logs.follow(async (cursor, signal) => {
      const answer = await api.post(`${base}/logs`, cursor ? {step, cursor, wait_s: 10} : {step, tail: 1000}, {signal});
      let added = false;
      for (const line of (answer.text || "").split("\n")) {
        const rank = rankOf(line);
        if (rank !== null && !ranks.has(rank)) {
          ranks.add(rank);
          added = true;
        }
      }
      if (added) {
        const chosen = rankSelect.value;
        rankSelect.replaceChildren(h("option", {value: ""}, "all ranks"),
          ...[...ranks].sort((a, b) => a - b).map((rank) => h("option", {value: rank, selected: rank === chosen}, `rank ${rank}`)));
        rankLabel.hidden = false;
      }
      return answer;
    }, 0);
    filterRank();
  }

  poller.run();
  followLogs();
  const timer = setInterval(() => {
    if (described && !FINISHED.includes(stateOf(described)) && Date.now() - reportAt >= REPORT_EVERY_MS) poller.run();
  }, 1000);
  return {
    refresh: () => poller.run(),
    onTick: (tick) => (tick.changed || []).includes("TrainJob") && poller.run(),
    unmount() {
      clearInterval(timer);
      poller.stop();
      logs.stop();
    },
  };
}
