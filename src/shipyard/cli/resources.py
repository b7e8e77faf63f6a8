"""``shipyard apply|get|describe|delete|logs``: kubectl's verbs against the local control plane."""

from __future__ import annotations

import calendar
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Optional

import typer
import yaml

from shipyard.cli.errors import fail
from shipyard.control.resources import DEFAULT_NAMESPACE, DocumentError, UnknownKind, kind_of

if TYPE_CHECKING:  # the client (httpx, jsonschema) loads when a command runs, not with every shipyard command
    from shipyard.control.client import ControlClient

KIND_HELP = ("Resource kind: inferenceservice (isvc), inferencegraph (ig), trainjob (tj), trainingruntime, "
             "clustertrainingruntime, "
             "dataset, cacheruntime, dataload (load), datamigrate (migrate), dataprocess, dataclean "
             "or batchjob (bj) (plural names work too).")
DATA_OPERATION_KINDS = ("DataLoad", "DataMigrate", "DataProcess", "DataClean")
NAMESPACE_OPTION = typer.Option(DEFAULT_NAMESPACE, "--namespace", "-n", help="Namespace.")


@contextmanager
def api_errors() -> Iterator[None]:
    """Turn the client's errors into one clear line and exit code 1."""
    from shipyard.control.client import ControlError, PlaneNotRunning

    try:
        yield
    except (PlaneNotRunning, ControlError, UnknownKind, TimeoutError, ValueError) as exc:
        fail(str(exc))


def connect(start: bool = False) -> ControlClient:
    """A client for the running plane; with ``start``, run ``shipyard up --detach`` first if none runs."""
    from shipyard.control.client import ControlClient, PlaneNotRunning

    try:
        return ControlClient()
    except PlaneNotRunning:
        if not start:
            raise
    result = subprocess.run([sys.executable, "-m", "shipyard", "up", "--detach"], capture_output=True, text=True)
    if result.returncode != 0:
        fail(f"could not start the control plane (shipyard up --detach): {result.stderr.strip() or result.stdout}")
    return ControlClient()


def resource_name(kind: str, api_version: str) -> str:
    """``inferenceservice.serving.kserve.io`` as kubectl prints it."""
    return f"{kind.lower()}.{api_version.split('/')[0]}"


def apply(
    filenames: list[str] = typer.Option(..., "--filename", "-f", help="YAML or JSON file with one or more "
                                        "documents (--- separated); repeat for several files; - reads stdin.",
                                        show_default=False),
    namespace: Optional[str] = typer.Option(None, "--namespace", "-n", help="Namespace for documents that name "
                                            "none (default: default).", show_default=False),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and show what would change; change nothing."),
    start: bool = typer.Option(False, "--start", help="Start the control plane first if it is not running."),
) -> None:
    """Create or update resources from YAML files (kubectl apply -f).

    Every document is validated first; if any is invalid, nothing is applied.

    Relative storageUri paths are taken relative to the file's folder.

    [b]Examples[/b]

      shipyard apply -f sklearn-iris.yaml
      cat isvc.yaml | shipyard apply -f -
    """
    from shipyard.control.client import ControlError, read_documents, with_namespace

    documents, origins = [], []
    for filename in filenames:
        try:
            found = read_documents(filename)
        except (OSError, DocumentError) as exc:
            fail(f"-f {filename}: {exc}")
        documents += found
        origins += [f"{'stdin' if filename == '-' else filename} document {index + 1}" for index in range(len(found))]
    if not documents:
        fail(f"no documents in {', '.join(filenames)}")
    with api_errors():
        if namespace is not None:
            documents = [with_namespace(document, namespace) for document in documents]
        client = connect(start)
        try:
            results = client.apply(documents, dry_run=dry_run)
        except ControlError as exc:
            if not exc.errors:
                raise
            lines = [f"  {origins[error['document']]}{_document_name(documents[error['document']])}: "
                     f"{error['path']}: {error['message']}" if error["path"] else
                     f"  {origins[error['document']]}: {error['message']}" for error in exc.errors]
            fail(exc.message + "\n" + "\n".join(lines))
    for result in results:
        for warning in result["warnings"]:
            typer.echo(f"Warning: {warning}", err=True)
        suffix = " (dry run)" if dry_run else ""
        typer.echo(f"{resource_name(result['kind'], result['apiVersion'])}/{result['name']} {result['action']}{suffix}")


def _document_name(document: Any) -> str:
    name = ((document.get("metadata") or {}) if isinstance(document, dict) else {}).get("name")
    return f" ({name})" if isinstance(name, str) else ""


def get(
    kind: str = typer.Argument(..., help=KIND_HELP, show_default=False),
    name: Optional[str] = typer.Argument(None, help="One resource's name (default: all).", show_default=False),
    namespace: str = NAMESPACE_OPTION,
    all_namespaces: bool = typer.Option(False, "--all-namespaces", "-A", help="List every namespace."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="json, yaml or wide (more columns).",
                                         show_default=False),
) -> None:
    """List resources, or show one, as [b]kubectl get[/b] does.

    [b]Examples[/b]

      shipyard get isvc
      shipyard get isvc sklearn-iris -o yaml
    """
    if output not in (None, "json", "yaml", "wide"):
        fail(f"--output '{output}' is not one of: json, yaml, wide")
    with api_errors():
        found = connect().get(kind_of(kind).kind, name, None if all_namespaces else namespace)
    items = found if isinstance(found, list) else [found]
    if output in ("json", "yaml"):
        shown = found if name else {"apiVersion": "v1", "kind": "List", "items": items}
        typer.echo(json.dumps(shown, indent=2) if output == "json" else
                   yaml.safe_dump(shown, sort_keys=False, default_flow_style=False).rstrip())
        return
    if not items:
        where = "any namespace" if all_namespaces else f"namespace '{namespace}'"
        typer.echo(f"No resources found in {where}.", err=True)
        return
    kind_name = kind_of(kind).kind
    if kind_name == "TrainJob":
        typer.echo(trainjob_table(items, namespaces=all_namespaces))
    elif kind_name in ("TrainingRuntime", "ClusterTrainingRuntime"):
        typer.echo(runtime_table(items, namespaces=all_namespaces and kind_name == "TrainingRuntime"))
    elif kind_name == "Dataset":
        typer.echo(dataset_table(items, wide=output == "wide", namespaces=all_namespaces))
    elif kind_name == "CacheRuntime":
        typer.echo(cacheruntime_table(items, namespaces=all_namespaces))
    elif kind_name in DATA_OPERATION_KINDS:
        typer.echo(operation_table(items, wide=output == "wide", namespaces=all_namespaces))
    elif kind_name == "InferenceGraph":
        typer.echo(graph_table(items, namespaces=all_namespaces))
    elif kind_name == "BatchJob":
        typer.echo(batchjob_table(items, wide=output == "wide", namespaces=all_namespaces))
    else:
        typer.echo(isvc_table(items, wide=output == "wide", namespaces=all_namespaces))


def graph_table(items: list[dict[str, Any]], namespaces: bool = False) -> str:
    """``get inferencegraph``'s columns (KServe's printer columns): NAME URL READY AGE."""
    headers = (["NAMESPACE"] if namespaces else []) + ["NAME", "URL", "READY", "AGE"]
    rows = []
    for item in items:
        status = item.get("status") or {}
        ready = next((c.get("status", "") for c in status.get("conditions") or [] if c.get("type") == "Ready"), "")
        row = [item["metadata"]["name"], status.get("url", ""), ready, age(item["metadata"])]
        rows.append(([item["metadata"]["namespace"]] if namespaces else []) + row)
    return table(headers, rows)


def describe_graph(described: dict[str, Any]) -> str:
    """An InferenceGraph: URL, timeouts, each node's steps, the bandit arms, conditions and events."""
    metadata, spec, status = described["metadata"], described.get("spec") or {}, described.get("status") or {}
    name = metadata["name"]
    lines = [*_header(described),
             f"Generation:   {metadata.get('generation')} (observed: {status.get('observedGeneration', '-')})",
             f"URL:          {status.get('url') or '<none>'}",
             f"Endpoints:    POST /v1/models/{name}:predict, /v2/models/{name}/infer (gateway; gRPC ModelInfer "
             f"'{name}'); feedback: POST /v2/models/{name}/feedback"]
    client = (spec.get("routerTimeouts") or {}).get("serviceClient")
    lines.append(f"Timeouts:     graph {_seconds(spec.get('timeout'))}, each step {_seconds(client)}")
    lines.append("Nodes:")
    rows = []
    for node_name, node in (spec.get("nodes") or {}).items():
        first = len(rows)
        for index, step in enumerate(node.get("steps") or []):
            target = (f"service {step['serviceName']}" if step.get("serviceName") else
                      f"node {step['nodeName']}" if step.get("nodeName") else f"url {step.get('serviceUrl', '')}")
            extra = [f"{key}={step[key]}" for key in ("weight", "condition", "retries") if key in step]
            extra += [f"timeout={step['timeout']}s"] if "timeout" in step else []
            extra += [f"inputMap={','.join(f'{k}->{v}' for k, v in step['inputMap'].items())}"] \
                if isinstance(step.get("inputMap"), dict) and step["inputMap"] else []
            rows.append([node_name if index == 0 else "", node.get("routerType", "") if index == 0 else "",
                         str(step.get("name", index)), target, step.get("data", "$request"),
                         step.get("dependency", "Soft"), " ".join(extra)])
        if not node.get("steps"):
            rows.append([node_name, node.get("routerType", ""), "<no steps>", "", "", "", ""])
        if node.get("routerType") == "Bandit" and len(rows) > first:
            policy = (node.get("bandit") or {}).get("policy", "thompson")
            rows[first][-1] = f"policy={policy} {rows[first][-1]}".strip()
    lines.append(_indented(table(["NODE", "ROUTER", "STEP", "TARGET", "DATA", "DEPENDENCY", "OPTIONS"], rows), 2))
    bandits = (status.get("shipyard") or {}).get("bandits") or {}
    if bandits:
        lines.append("Bandit arms:")
        lines.append(_indented(table(["NODE", "ARM", "PULLS", "MEAN REWARD", "REWARDS"], [
            [node, arm, str(stats.get("pulls", 0)), _number(stats.get("meanReward")), str(stats.get("rewards", 0))]
            for node, arms in bandits.items() for arm, stats in arms.items()]), 2))
    lines.append(_conditions_text(status.get("conditions") or []))
    lines.append(_events_text(described.get("events") or []))
    return "\n".join(lines)


def batchjob_table(items: list[dict[str, Any]], wide: bool = False, namespaces: bool = False) -> str:
    """``get batchjob``'s columns: NAME PHASE ROWS ERRORS ROWS/S AGE (wide: MODEL, OUTPUT, DURATION)."""
    headers = ["NAME", "PHASE", "ROWS", "ERRORS", "ROWS/S"]
    if wide:
        headers += ["MODEL", "OUTPUT", "DURATION"]
    headers = (["NAMESPACE"] if namespaces else []) + headers + ["AGE"]
    rows = []
    for item in items:
        spec, status = item.get("spec") or {}, item.get("status") or {}
        phase = "Deleting" if item["metadata"].get("deletionTimestamp") else status.get("phase") or "Pending"
        row = [item["metadata"]["name"], phase, _rows(status), _text(status.get("errors", 0)),
               _rate(status.get("rowsPerSecond"))]
        if wide:
            row += [str(spec.get("model", "")), str(status.get("output") or spec.get("output", "")),
                    _batch_duration(status)]
        rows.append(([item["metadata"]["namespace"]] if namespaces else []) + row + [age(item["metadata"])])
    return table(headers, rows)


def _rows(status: dict[str, Any]) -> str:
    """``done/total`` (``done`` while the total is not known yet)."""
    done, total = status.get("rowsDone") or 0, status.get("rowsTotal")
    return f"{done}/{total}" if total is not None else str(done)


def _rate(value: Any) -> str:
    return f"{value:,.0f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "—"


def _batch_duration(status: dict[str, Any]) -> str:
    seconds = status.get("seconds")
    if isinstance(seconds, (int, float)):
        return f"{seconds:.1f}s"
    start = status.get("startTime")
    if start and status.get("phase") == "Running":
        return f"{_since(calendar.timegm(time.strptime(start, '%Y-%m-%dT%H:%M:%SZ')))} so far"
    return ""


def describe_batchjob(described: dict[str, Any]) -> str:
    """A BatchJob: model, input, output, phase, progress, timings, errors file, conditions and events."""
    spec, status = described.get("spec") or {}, described.get("status") or {}
    metadata = described["metadata"]
    done, total = status.get("rowsDone") or 0, status.get("rowsTotal")
    share = f" ({100 * done / total:.1f}%)" if total else ""
    chunks = (f", chunk {status.get('chunksDone', 0)}/{status['chunksTotal']}" if status.get("chunksTotal")
              else "")
    options = {key: value for key, value in spec.items() if key not in ("model", "input", "output")}
    phase = ("Deleting (stopping, then removed)" if metadata.get("deletionTimestamp")
             else status.get("phase") or "Pending")
    lines = [
        *_header(described),
        f"Model:        {spec.get('model', '')}",
        f"Input:        {spec.get('input', '')}",
        f"Output:       {status.get('output') or spec.get('output', '')}",
        "Options:      " + (", ".join(f"{key}={_flow(value)}" for key, value in options.items()) or "<defaults>"),
        f"Phase:        {phase}" + (f" ({status['message']})" if status.get("message") else ""),
        f"Rows:         {_rows(status)}{share}{chunks}",
        f"Errors:       {status.get('errors', 0)}" + (f" (rows in {status['errorsFile']})"
                                                      if status.get("errorsFile") and status.get("errors") else ""),
        f"Rows/s:       {_rate(status.get('rowsPerSecond'))}",
        f"Started:      {status.get('startTime') or '-'}",
        f"Completed:    {status.get('completionTime') or '-'}" + (f" ({_batch_duration(status)})"
                                                                   if status.get("seconds") is not None else ""),
        f"Runs:         {status.get('runs', 0)}" + (f" (resumed {status['resumedChunks']} finished chunk(s))"
                                                    if status.get("resumedChunks") else ""),
        f"Log:          shipyard logs batchjob {metadata['name']}"
        + (f" -n {metadata['namespace']}" if metadata["namespace"] != "default" else ""),
    ]
    lines.append(_conditions_text(status.get("conditions") or []))
    lines.append(_events_text(described.get("events") or []))
    return "\n".join(lines)


def _flow(value: Any) -> str:
    """A spec value in YAML's flow style: ``[id, ts]``, ``{predict: label}``."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...").strip() \
        if isinstance(value, (list, dict)) else str(value)


def _seconds(value: Any) -> str:
    return f"{value}s" if isinstance(value, (int, float)) and not isinstance(value, bool) else "none"


def trainjob_table(items: list[dict[str, Any]], namespaces: bool = False) -> str:
    """``get trainjob``'s columns: NAME STATE RUNTIME NODES AGE."""
    headers = (["NAMESPACE"] if namespaces else []) + ["NAME", "STATE", "RUNTIME", "NODES", "AGE"]
    rows = []
    for item in items:
        spec, own = item.get("spec") or {}, (item.get("status") or {}).get("shipyard") or {}
        state = "Deleting" if item["metadata"].get("deletionTimestamp") else own.get("state", "Created")
        nodes = (own.get("resolved") or {}).get("num_nodes") or (spec.get("trainer") or {}).get("numNodes") or ""
        row = [item["metadata"]["name"], state, str((spec.get("runtimeRef") or {}).get("name", "")), str(nodes),
               age(item["metadata"])]
        rows.append(([item["metadata"]["namespace"]] if namespaces else []) + row)
    return table(headers, rows)


def runtime_table(items: list[dict[str, Any]], namespaces: bool = False) -> str:
    """``get clustertrainingruntime``'s columns: NAME FRAMEWORK NODES AGE (built-ins have no age)."""
    headers = (["NAMESPACE"] if namespaces else []) + ["NAME", "FRAMEWORK", "NODES", "AGE"]
    rows = []
    for item in items:
        metadata = item["metadata"]
        policy = (item.get("spec") or {}).get("mlPolicy") or {}
        framework = (metadata.get("labels") or {}).get("trainer.kubeflow.org/framework", "")
        row = [metadata["name"], framework, str(policy.get("numNodes", "")), age(metadata) or "built-in"]
        rows.append(([metadata.get("namespace", "")] if namespaces else []) + row)
    return table(headers, rows)


def dataset_table(items: list[dict[str, Any]], wide: bool = False, namespaces: bool = False) -> str:
    """Fluid's columns: NAME UFS TOTAL SIZE CACHED CACHE CAPACITY CACHED PERCENTAGE PHASE AGE
    (wide: FILES and HIT RATIO, "—" while nothing was read)."""
    headers = ["NAME", "UFS TOTAL SIZE", "CACHED", "CACHE CAPACITY", "CACHED PERCENTAGE", "PHASE"]
    if wide:
        headers += ["FILES", "HIT RATIO"]
    headers = (["NAMESPACE"] if namespaces else []) + headers + ["AGE"]
    rows = []
    for item in items:
        status = item.get("status") or {}
        states = status.get("cacheStates") or {}
        phase = "Deleting" if item["metadata"].get("deletionTimestamp") else status.get("phase", "")
        row = [item["metadata"]["name"], status.get("ufsTotal", ""), _text(states.get("cached")),
               _text(states.get("cacheCapacity")), _text(states.get("cachedPercentage")), phase]
        if wide:
            row += [_text(status.get("fileNum")), states.get("cacheHitRatio") or "—"]
        rows.append(([item["metadata"]["namespace"]] if namespaces else []) + row + [age(item["metadata"])])
    return table(headers, rows)


def cacheruntime_table(items: list[dict[str, Any]], namespaces: bool = False) -> str:
    """NAME LEVELS AGE: each tier as MEDIUM QUOTA (the runtime binds to the Dataset of its name)."""
    headers = (["NAMESPACE"] if namespaces else []) + ["NAME", "LEVELS", "AGE"]
    rows = []
    for item in items:
        spec = item.get("spec") or {}
        store = ((spec.get("worker") or {}).get("tieredStore") or (spec.get("client") or {}).get("tieredStore")
                 or {})
        levels = []
        for level in store.get("levels") or []:
            if "processMemory" in level:
                levels.append(f"MEM {level['processMemory'].get('quota', '')}")
            elif "emptyDir" in level:
                medium = "MEM" if (level["emptyDir"] or {}).get("medium") == "Memory" else "SSD"
                levels.append(f"{medium} {level['emptyDir'].get('quota', '')}")
            elif "hostPath" in level:
                levels.append("SSD " + "+".join(str(q) for q in (level["hostPath"] or {}).get("quotas") or []))
        row = [item["metadata"]["name"], ", ".join(levels) or "default (SSD 10Gi)", age(item["metadata"])]
        rows.append(([item["metadata"]["namespace"]] if namespaces else []) + row)
    return table(headers, rows)


def operation_table(items: list[dict[str, Any]], wide: bool = False, namespaces: bool = False) -> str:
    """Fluid's operation columns: NAME DATASET PHASE AGE DURATION (wide: POLICY, RUNS, LAST SCHEDULE)."""
    headers = ["NAME", "DATASET", "PHASE", "AGE", "DURATION"]
    if wide:
        headers += ["POLICY", "RUNS", "LAST SCHEDULE"]
    headers = (["NAMESPACE"] if namespaces else []) + headers
    rows = []
    for item in items:
        status = item.get("status") or {}
        phase = "Deleting" if item["metadata"].get("deletionTimestamp") else status.get("phase", "")
        row = [item["metadata"]["name"], _operation_dataset(item), phase, age(item["metadata"]),
               status.get("duration", "")]
        if wide:
            row += [(item.get("spec") or {}).get("policy") or "Once",
                    _text((status.get("shipyard") or {}).get("runs", 0)), status.get("lastScheduleTime", "")]
        rows.append(([item["metadata"]["namespace"]] if namespaces else []) + row)
    return table(headers, rows)


def _operation_dataset(item: dict[str, Any]) -> str:
    """The dataset an operation works on (a DataMigrate: its dataset side, ``a -> b`` when both are)."""
    spec = item.get("spec") or {}
    if item.get("kind") == "DataMigrate":
        sides = [((spec.get(side) or {}).get("dataset") or {}).get("name") for side in ("from", "to")]
        return " -> ".join(name for name in sides if name)
    return str((spec.get("dataset") or {}).get("name", ""))


def isvc_table(items: list[dict[str, Any]], wide: bool = False, namespaces: bool = False) -> str:
    """``kubectl get isvc``'s columns: NAME URL READY PREV LATEST AGE (wide: the revisions and traffic)."""
    headers = ["NAME", "URL", "READY", "PREV", "LATEST"]
    if wide:
        headers += ["PREVROLLEDOUTREVISION", "LATESTREADYREVISION", "TRAFFIC"]
    headers = (["NAMESPACE"] if namespaces else []) + headers + ["AGE"]
    rows = []
    for item in items:
        status = item.get("status") or {}
        predictor = (status.get("components") or {}).get("predictor") or {}
        traffic = predictor.get("traffic") or []
        prev = next((entry for entry in traffic if entry.get("tag") == "prev"), {})
        latest = next((entry for entry in traffic if entry.get("latestRevision")), {})
        ready = next((entry.get("status") for entry in status.get("conditions") or [] if entry.get("type") == "Ready"),
                     "")
        if item["metadata"].get("deletionTimestamp"):
            ready = "Deleting"
        row = [item["metadata"]["name"], status.get("url", ""), ready, _text(prev.get("percent")),
               _text(latest.get("percent"))]
        if wide:
            row += [prev.get("revisionName", ""), latest.get("revisionName", ""),
                    " ".join(f"{entry.get('revisionName')}={entry.get('percent', 0)}%" for entry in traffic)]
        row = ([item["metadata"]["namespace"]] if namespaces else []) + row + [age(item["metadata"])]
        rows.append(row)
    return table(headers, rows)


def describe(
    kind: str = typer.Argument(..., help=KIND_HELP, show_default=False),
    name: str = typer.Argument(..., help="The resource's name.", show_default=False),
    namespace: str = NAMESPACE_OPTION,
) -> None:
    """Show a resource in full (kubectl describe).

    Spec, status and conditions, revisions with their traffic, replicas and recent events.
    """
    with api_errors():
        described = connect().describe(kind_of(kind).kind, name, namespace)
    if described["kind"] == "TrainJob":
        typer.echo(describe_trainjob(described))
    elif described["kind"] == "Dataset":
        typer.echo(describe_dataset(described))
    elif described["kind"] in DATA_OPERATION_KINDS:
        typer.echo(describe_operation(described))
    elif described["kind"] == "InferenceGraph":
        typer.echo(describe_graph(described))
    elif described["kind"] == "BatchJob":
        typer.echo(describe_batchjob(described))
    elif described["kind"] != "InferenceService":
        typer.echo(yaml.safe_dump({k: v for k, v in described.items() if k != "events"}, sort_keys=False).rstrip())
        typer.echo(_events_text(described.get("events") or []))
    else:
        typer.echo(describe_text(described))


def describe_trainjob(described: dict[str, Any]) -> str:
    """``kubectl describe trainjob``-like text: state, progress, metrics, steps, conditions and events."""
    status = described.get("status") or {}
    spec, own = described.get("spec") or {}, status.get("shipyard") or {}
    trainer = status.get("trainerStatus") or {}
    resolved = own.get("resolved") or {}
    progress = trainer.get("progressPercentage")
    eta = trainer.get("estimatedRemainingSeconds")
    lines = [
        *_header(described),
        f"Runtime:      {(spec.get('runtimeRef') or {}).get('name', '')} ({resolved.get('framework') or '-'})",
        f"State:        {own.get('state', 'Created')}" + (f" ({own.get('reason')}: {own.get('message')})"
                                                          if own.get("reason") and own.get("message") else ""),
        f"Nodes:        {resolved.get('num_nodes', '-')} x {resolved.get('nproc_per_node', '-')} process(es)",
        f"Attempt:      {own.get('attempt', 0)} (restarts: {own.get('restarts', 0)} of "
        f"{resolved.get('max_restarts', 0)})",
        f"Workspace:    {resolved.get('workdir') or '-'}",
        "Progress:     " + (f"{progress}%" if progress is not None else "-")
        + (f", about {eta}s left" if eta is not None else "")
        + (f" (updated {trainer['lastUpdatedTime']})" if trainer.get("lastUpdatedTime") else ""),
    ]
    metrics = trainer.get("metrics") or []
    lines.append("Metrics:" + ("" if metrics else "      <none>"))
    if metrics:
        lines.append(_indented(table(["NAME", "VALUE"], [[m.get("name", ""), m.get("value", "")] for m in metrics]), 2))
    steps = status.get("jobsStatus") or []
    lines.append("Steps:" + ("" if steps else "        <none>"))
    if steps:
        lines.append(_indented(table(["STEP", "ACTIVE", "SUCCEEDED", "FAILED", "EXIT CODE"], [
            [s["name"], str(s.get("active", 0)), str(s.get("succeeded", 0)), str(s.get("failed", 0)),
             _text((own.get("exitCodes") or {}).get(s["name"]))] for s in steps]), 2))
    lines.append(_conditions_text(status.get("conditions") or []))
    lines.append(_events_text(described.get("events") or []))
    return "\n".join(lines)


def describe_dataset(described: dict[str, Any]) -> str:
    """A Dataset: phase, mounts, source totals, cache states, the operations holding it, conditions, events."""
    status = described.get("status") or {}
    states = status.get("cacheStates") or {}
    own = status.get("shipyard") or {}
    lines = [*_header(described), f"Phase:        {status.get('phase') or 'NotBound'}"]
    runtimes = status.get("runtimes") or []
    lines.append("Runtime:      " + (f"CacheRuntime {runtimes[0]['name']}" if runtimes else
                                     "default cache (no CacheRuntime of this name)"))
    lines.append(f"Cache folder: {own.get('root') or '-'}")
    mounts = (described.get("spec") or {}).get("mounts") or []
    lines.append("Mounts:" + ("" if mounts else "       <none>"))
    if mounts:
        lines.append(_indented(table(["NAME", "MOUNT POINT", "PATH", "READ ONLY"], [
            [m.get("name") or m.get("mountPoint", "").rstrip("/").rsplit("/", 1)[-1], m.get("mountPoint", ""),
             m.get("path") or f"/{m.get('name') or ''}", "yes" if m.get("readOnly") else "no"] for m in mounts]), 2))
    lines.append(f"UFS Total:    {status.get('ufsTotal') or '-'} ({status.get('fileNum') or '-'} files; listed "
                 f"{own.get('lastMetadataSync') or 'not yet'})")
    lines.append("Cache States:" + ("" if states else " <none yet>"))
    if states:
        lines.append(_indented(table(["KEY", "VALUE"], [[key, "—" if value is None else str(value)]
                                                        for key, value in states.items()]), 2))
    refs = status.get("operationRef") or {}
    lines.append("Operations:   " + (", ".join(f"{kind} {name}" for kind, name in refs.items()) if refs else "<none>"))
    lines.append(_conditions_text(status.get("conditions") or []))
    lines.append(_events_text(described.get("events") or []))
    return "\n".join(lines)


def describe_operation(described: dict[str, Any]) -> str:
    """A data operation: dataset, policy, phase, timings, what the last run did, conditions and events."""
    spec, status = described.get("spec") or {}, described.get("status") or {}
    own = status.get("shipyard") or {}
    policy = spec.get("policy") or "Once"
    waiting = (status.get("waitingFor") or {}).get("operationComplete")
    run_after = spec.get("runAfter") or {}
    lines = [
        *_header(described),
        f"Dataset:      {_operation_dataset(described) or '-'}",
        f"Policy:       {policy}" + (f" (schedule {spec.get('schedule')!r}, next run "
                                     f"{own.get('nextScheduleTime') or '-'})" if policy == "Cron" else ""),
        f"Run After:    {run_after.get('kind')} {run_after.get('name')}" + (" (waiting for it)" if waiting else "")
        if run_after else "Run After:    <none>",
        f"Phase:        {status.get('phase') or 'Pending'}",
        f"Duration:     {status.get('duration') or '-'}",
        f"Last Run:     {status.get('lastScheduleTime') or '-'} (last success: "
        f"{status.get('lastSuccessfulTime') or '-'})",
        f"Runs:         {own.get('runs', 0)}" + (f" (last: {own['trigger']})" if own.get("trigger") else ""),
    ]
    if own.get("runs"):
        lines.append(f"Last Result:  {own.get('files', 0)} files, {_size(own.get('bytes', 0))}, "
                     f"{own.get('throughputMBps', 0)} MB/s" + (" (skipped: up to date)" if own.get("skipped") and
                                                              described["kind"] == "DataProcess" else ""))
    if own.get("memoKey"):
        lines.append(f"Memo Key:     {own['memoKey'][:16]}")
    if own.get("watchError"):
        lines.append(f"Watching:     failing: {own['watchError']}")
    lines.append(f"Log:          shipyard logs {described['kind'].lower()} {described['metadata']['name']}"
                 + (f" -n {described['metadata']['namespace']}" if described["metadata"]["namespace"] != "default"
                    else ""))
    lines.append(_conditions_text(status.get("conditions") or []))
    lines.append(_events_text(described.get("events") or []))
    return "\n".join(lines)


def _size(value: Any) -> str:
    from shipyard.quantity import format_bytes

    return format_bytes(value) if isinstance(value, (int, float)) else str(value)


def _header(described: dict[str, Any]) -> list[str]:
    """The lines every ``describe`` starts with: identity, labels, annotations, kind, age."""
    metadata = described["metadata"]
    return [
        f"Name:         {metadata['name']}",
        f"Namespace:    {metadata['namespace']}",
        f"Labels:       {_pairs(metadata.get('labels'))}",
        f"Annotations:  {_pairs(metadata.get('annotations'))}",
        f"API Version:  {described['apiVersion']}",
        f"Kind:         {described['kind']}",
        f"Created:      {metadata.get('creationTimestamp', '')} ({age(metadata)} ago)",
    ]


def _conditions_text(conditions: list[dict[str, Any]]) -> str:
    if not conditions:
        return "Conditions:   <none>"
    return "Conditions:\n" + _indented(table(["TYPE", "STATUS", "REASON", "MESSAGE", "LAST TRANSITION"], [
        [c.get("type", ""), c.get("status", ""), c.get("reason", ""), c.get("message", ""),
         c.get("lastTransitionTime", "")] for c in conditions]), 2)


def _events_text(events: list[dict[str, Any]]) -> str:
    if not events:
        return "Events:       <none>"
    return "Events:\n" + _indented(table(["TYPE", "REASON", "AGE", "MESSAGE"], [
        [e["type"], e["reason"], _since(e["time"]), e["message"]] for e in events]), 2)


def describe_text(described: dict[str, Any]) -> str:
    """``kubectl describe``-like text of the API's describe answer."""
    metadata, status = described["metadata"], described.get("status") or {}
    predictor = (status.get("components") or {}).get("predictor") or {}
    lines = [
        *_header(described),
        f"Generation:   {metadata.get('generation')} (observed: {status.get('observedGeneration', '-')})",
    ]
    if metadata.get("deletionTimestamp"):
        lines.append("Deleting:     yes (the controller stops its replicas, then removes it)")
    lines += [f"URL:          {status.get('url') or '<none>'}",
              f"Address:      {(status.get('address') or {}).get('url') or '<none>'}",
              "Spec:", _indented(yaml.safe_dump(described.get("spec") or {}, sort_keys=False).rstrip(), 2)]
    lines.append(_conditions_text(status.get("conditions") or []))
    lines.append("Revisions:" + ("" if described.get("revisions") else "    <none>"))
    if described.get("revisions"):
        traffic = {entry.get("revisionName"): entry for part in (status.get("components") or {}).values()
                   for entry in part.get("traffic") or []}  # the predictor's, transformer's and explainer's
        replicas = described.get("replicas") or []
        rows = []
        for revision in described["revisions"]:
            entry = traffic.get(revision["name"], {})
            mine = [replica for replica in replicas if replica["revision"] == revision["name"]]
            ready = sum(replica["state"] == "ready" for replica in mine)
            rows.append([revision["name"], str(revision["generation"]), f"{entry['percent']}%" if entry else "",
                         entry.get("tag", ""), f"{ready}/{len(mine)}", f"{_since(revision['created'])} ago"])
        lines.append(_indented(table(["NAME", "GENERATION", "TRAFFIC", "TAG", "READY", "CREATED"], rows), 2))
        rolled = [f"latest created: {predictor.get('latestCreatedRevision') or '-'}",
                  f"latest ready: {predictor.get('latestReadyRevision') or '-'}",
                  f"rolled out: {predictor.get('latestRolledoutRevision') or '-'}",
                  f"previous: {predictor.get('previousRolledoutRevision') or '-'}"]
        lines.append("  " + ", ".join(rolled))
    replicas = described.get("replicas") or []
    lines.append("Replicas:" + ("" if replicas else "     <none>"))
    if replicas:
        lines.append(_indented(table(["REVISION", "#", "PID", "STATE", "RESTARTS", "URL", "LAST EXIT"], [
            [r["revision"], str(r["index"]), str(r.get("pid") or ""), r["state"], str(r["restarts"]),
             r.get("http_url") or "", r.get("last_exit") or ""] for r in replicas]), 2))
    scaling = ((described.get("status") or {}).get("shipyard") or {}).get("autoscaling") or {}
    if scaling:
        lines.append("Autoscaling:")
        lines.append(_indented(table(
            ["REVISION", "DESIRED", "READY", "PENDING", "METRIC", "VALUE", "TARGET", "PANIC", "COLD START"],
            [[revision, str(a.get("desired", "")), str(a.get("actual", "")), str(a.get("pending") or 0),
              str(a.get("metric", "")), _number(a.get("value")), f"{_number(a.get('target'))} {a.get('targetUnit', '')}",
              "yes" if a.get("panic") else "no", _cold_start(a.get("coldStartSeconds"))]
             for revision, a in sorted(scaling.items())]), 2))
    events = described.get("events") or []
    lines.append("Events:" + ("" if events else "       <none>"))
    if events:
        lines.append(_indented(table(["TYPE", "REASON", "AGE", "MESSAGE"], [
            [e["type"], e["reason"], _since(e["time"]), e["message"]] for e in events]), 2))
    return "\n".join(lines)


def delete(
    kind: str = typer.Argument(..., help=KIND_HELP, show_default=False),
    name: str = typer.Argument(..., help="The resource's name.", show_default=False),
    namespace: str = NAMESPACE_OPTION,
    wait: bool = typer.Option(False, "--wait", help="Return only once its replicas are stopped and it is gone."),
    timeout: float = typer.Option(60.0, "--timeout", help="With --wait: seconds to wait at most."),
) -> None:
    """Delete a resource; its replicas drain and stop first."""
    with api_errors():
        kind_info = kind_of(kind)
        connect().delete(kind_info.kind, name, namespace, wait=wait, timeout=timeout)
    what = f'{resource_name(kind_info.kind, kind_info.api_versions[0])} "{name}"'
    if kind_info.kind == "InferenceService":
        background = "replicas stop in the background"
    elif kind_info.kind == "Dataset":
        background = "its cache is removed once the operations running on it end"
    elif kind_info.kind in DATA_OPERATION_KINDS:
        background = "removed once its current run, if any, ends"
    elif kind_info.kind == "InferenceGraph":
        background = "the gateway stops serving it; its bandit state is removed"
    elif kind_info.kind == "BatchJob":
        background = "a running job stops after its chunks in flight; its partial work is discarded"
    else:
        background = "processes stop in the background"
    typer.echo(f"{what} deleted" if wait else f"{what} deleting ({background})")


def logs(
    kind: str = typer.Argument(..., help=KIND_HELP, show_default=False),
    name: str = typer.Argument(..., help="The InferenceService's, TrainJob's, data operation's or BatchJob's name.",
                               show_default=False),
    namespace: str = NAMESPACE_OPTION,
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines (Ctrl+C stops)."),
    revision: Optional[str] = typer.Option(None, "--revision", help="InferenceService: a revision's name, latest "
                                           "or prev (default: the revisions running now).", show_default=False),
    step: Optional[str] = typer.Option(None, "--step", help="TrainJob: one step, e.g. node-0, node-1, "
                                       "dataset-initializer, model-initializer (default: every step).",
                                       show_default=False),
    tail: int = typer.Option(200, "--tail", min=0, help="Lines to show from the end of each log."),
) -> None:
    """Print an InferenceService's replica logs, a TrainJob's step logs, a data operation's or a BatchJob's log
    (-f to follow).

    Each line is prefixed with its replica or step when there are several.

    [b]Examples[/b]

      shipyard logs isvc sklearn-iris -f
      shipyard logs trainjob mnist --step node-0 -f
      shipyard logs dataload warm-imagenet
      shipyard logs batchjob score-customers -f
    """
    with api_errors():
        kind_info = kind_of(kind)
        if kind_info.kind in (*DATA_OPERATION_KINDS, "BatchJob") or kind_info.kind in ("Dataset", "CacheRuntime"):
            if kind_info.kind in ("Dataset", "CacheRuntime"):
                raise ValueError(f"a {kind_info.kind} has no log; its operations do: shipyard logs dataload NAME")
            if revision is not None or step is not None:
                raise ValueError(f"--revision and --step are not for a {kind_info.kind}: it has one log")
        elif kind_info.kind == "TrainJob":
            if revision is not None:
                raise ValueError("--revision is for InferenceServices; a TrainJob's logs are chosen with --step")
            revision = step
        elif step is not None:
            raise ValueError(f"--step is for TrainJobs; {kind_info.kind} logs are chosen with --revision")
        client = connect()
        if not follow:
            typer.echo(client.logs(name, namespace, revision, tail, kind_info.kind), nl=False)
            return
        try:
            for text in client.follow_logs(name, namespace, revision, tail, kind_info.kind):
                sys.stdout.write(text)
                sys.stdout.flush()
        except KeyboardInterrupt:
            return


# -- text helpers -------------------------------------------------------------------------------------
def _number(value: Any) -> str:
    return "—" if value is None else f"{value:g}" if isinstance(value, (int, float)) else str(value)


def _cold_start(seconds: Any) -> str:
    if not isinstance(seconds, dict) or not seconds.get("count"):
        return "—"
    return f"{seconds.get('last', 0):.2f}s (p50 {seconds.get('p50', 0):.2f}s, {seconds['count']} runs)"


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns aligned with three spaces between them, as kubectl prints."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = ["   ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in [headers, *rows]]
    return "\n".join(lines)


def age(metadata: dict[str, Any]) -> str:
    stamp = metadata.get("creationTimestamp")
    if not stamp:
        return ""
    return _since(calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")))


def _since(when: float) -> str:
    """kubectl's short ages: 45s, 12m, 5h, 3d."""
    seconds = max(0, int(time.time() - when))
    for limit, unit, size in ((120, "s", 1), (3 * 3600, "m", 60), (48 * 3600, "h", 3600)):
        if seconds < limit:
            return f"{seconds // size}{unit}"
    return f"{seconds // 86400}d"


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _pairs(mapping: dict[str, str] | None) -> str:
    if not mapping:
        return "<none>"
    return "\n              ".join(f"{key}={value}" for key, value in mapping.items())


def _indented(text: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line for line in text.splitlines())
