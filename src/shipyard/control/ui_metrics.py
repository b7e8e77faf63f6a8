"""The dashboard's live numbers: one sample a second, kept 15 minutes, pushed to the open pages.

``UiMetrics`` runs in the control plane's process, on its event loop. Every second it samples

- each InferenceService: requests answered since the last sample (requests/s), their p50 and p99
  latency and the share that failed, from the gateway's ``Observer`` (the revisions of the
  service's entry table, summed: its transformer's when it has one, else its predictor's; mirrored
  requests are not counted), the predictor's replicas (all but draining ones) and the ready ones
  from the replicas controller, and the average batch size, from the ``shipyard_batch_size``
  histogram of the ready predictor replicas' own ``/metrics`` (scraped every 5 s: rows per model
  execution over the last 5 s; null when nothing ran);
- each Dataset: the hit ratio of the last minute (0..1, null when nothing was read) and the
  cached percentage (0..100), from the Dataset controller's latest cache statistics;
- which kinds changed since the last sample (a resource created, changed, marked for deletion or
  removed, a new event; an InferenceService's replicas and routes too), from the store.

Each sample is appended to a ring buffer per service and dataset (900 points) and, as one
``tick`` server-sent event, to the queue of every subscriber (``GET /apis/ui/events``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import deque
from typing import Any, Callable

from shipyard.control.components import PREDICTOR, split_key
from shipyard.control.gateway.observe import percentile

log = logging.getLogger("shipyard.control")

#: Seconds between two samples, and how many seconds of samples are kept.
INTERVAL_S = 1.0
HISTORY_S = 900
#: Seconds between two scrapes of the replicas' /metrics (batch sizes).
SCRAPE_S = 5.0
SCRAPE_TIMEOUT_S = 2.0
#: A revision that left a service's table still counts for this long (answers finishing after a rollout).
REVISION_GRACE_S = 60.0
#: Ticks a subscriber may fall behind before the oldest are dropped.
SUBSCRIBER_BACKLOG = 30
KEY = tuple[str, str]

_BATCH_LINE = re.compile(rb"^shipyard_batch_size_(sum|count)(?:\{[^}]*\})?\s+(\S+)", re.MULTILINE)


def _percent(text: Any) -> float | None:
    """``"12.5%"`` -> 12.5 (None for anything else)."""
    if not isinstance(text, str) or not text.endswith("%"):
        return None
    try:
        return float(text[:-1])
    except ValueError:
        return None


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def parse_batch_sizes(text: bytes) -> tuple[float, float]:
    """(sum, count) of ``shipyard_batch_size`` over every model in a Prometheus exposition."""
    total = count = 0.0
    for kind, value in _BATCH_LINE.findall(text):
        try:
            number = float(value)
        except ValueError:
            continue
        if kind == b"sum":
            total += number
        else:
            count += number
    return total, count


class UiMetrics:
    """Samples once a second (``run``); ``service_points``/``dataset_points`` are the histories and
    ``subscribe()`` a queue of encoded ``tick`` events.

    ``gateway`` has ``observer`` (``since``, ``clock``) and ``router`` (``tables``, ``entry``);
    ``replicas`` has ``items`` (replicas with ``namespace``, ``isvc``, ``revision``, ``state``, ``handle``);
    ``datasets`` has ``tracked`` (``{(namespace, name): obj with cache_states}``). Each may be None.
    ``fetch(url) -> bytes`` (async) reads a replica's ``/metrics``; by default over HTTP.
    """

    def __init__(self, store: Any, gateway: Any = None, replicas: Any = None, datasets: Any = None, *,
                 interval_s: float = INTERVAL_S, history_s: float = HISTORY_S, scrape_s: float = SCRAPE_S,
                 clock: Callable[[], float] = time.time,
                 fetch: Callable[[str], Any] | None = None) -> None:
        self.store = store
        self.gateway = gateway
        self.replicas = replicas
        self.datasets = datasets
        self.interval_s = interval_s
        self.scrape_s = scrape_s
        self.clock = clock
        self.size = max(1, int(round(history_s / interval_s)))
        self.fetch = fetch
        self.services: dict[KEY, deque[dict[str, Any]]] = {}
        self.dataset_history: dict[KEY, deque[dict[str, Any]]] = {}
        #: The last tick's data (None before the first sample).
        self.latest: dict[str, Any] | None = None
        self._subscribers: set[asyncio.Queue[bytes]] = set()
        self._marks: dict[str, tuple[Any, ...]] | None = None
        self._event_id: int | None = None
        self._service_keys: list[KEY] | None = None
        self._dataset_keys: list[KEY] | None = None
        self._last_seen: float | None = None  # the observer's clock at the last sample
        self._revisions: dict[KEY, dict[str, float]] = {}
        self._batch: dict[KEY, tuple[float | None, float]] = {}  # (average, wall time of the scrape)
        self._scraped: dict[str, tuple[float, float]] = {}  # replica URL -> (sum, count) last read
        self._client: Any = None

    # -- the loop ----------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Sample every ``interval_s`` and scrape every ``scrape_s`` until ``stop`` is set."""
        loop = asyncio.get_running_loop()
        scraping = loop.create_task(self._scrape_loop(stop))
        next_at = loop.time()
        try:
            while not stop.is_set():
                try:
                    self.sample()
                except Exception:  # a store hiccup must not end live updates
                    log.exception("sampling the dashboard's metrics failed")
                next_at = max(next_at + self.interval_s, loop.time() + self.interval_s / 10)
                try:
                    await asyncio.wait_for(stop.wait(), max(0.0, next_at - loop.time()))
                except asyncio.TimeoutError:
                    pass
        finally:
            scraping.cancel()
            await asyncio.gather(scraping, return_exceptions=True)
            if self._client is not None:
                await self._client.aclose()
                self._client = None

    async def _scrape_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.scrape()
            except Exception:
                log.exception("reading the replicas' batch sizes failed")
            try:
                await asyncio.wait_for(stop.wait(), self.scrape_s)
            except asyncio.TimeoutError:
                pass

    # -- subscribers -------------------------------------------------------------------------------
    def subscribe(self) -> asyncio.Queue[bytes]:
        """A queue that gets every tick's JSON from now on (``unsubscribe`` it when done)."""
        queue: asyncio.Queue[bytes] = asyncio.Queue(SUBSCRIBER_BACKLOG)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[bytes]) -> None:
        self._subscribers.discard(queue)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def _publish(self, data: bytes) -> None:
        for queue in list(self._subscribers):
            if queue.full():  # a slow page loses its oldest tick, not the newest
                queue.get_nowait()
            queue.put_nowait(data)

    # -- one sample --------------------------------------------------------------------------------
    def sample(self) -> dict[str, Any]:
        """Take one sample: append it to the histories, send it to the subscribers, return the tick."""
        now = round(self.clock(), 3)
        changed = self._changed()
        if self._service_keys is None or "InferenceService" in changed:
            self._service_keys = [(r.namespace, r.name) for r in self.store.list("InferenceService")]
            _prune(self.services, self._service_keys)
            _prune(self._revisions, self._service_keys)
            _prune(self._batch, self._service_keys)
        if self._dataset_keys is None or "Dataset" in changed:
            self._dataset_keys = [(r.namespace, r.name) for r in self.store.list("Dataset")]
            _prune(self.dataset_history, self._dataset_keys)
        services = self._sample_services(now)
        datasets = {key: self._sample_dataset(key) for key in self._dataset_keys}
        for key, numbers in services.items():
            self.services.setdefault(key, deque(maxlen=self.size)).append({"time": now, **numbers})
        for key, numbers in datasets.items():
            self.dataset_history.setdefault(key, deque(maxlen=self.size)).append({"time": now, **numbers})
        tick = {"time": now, "changed": sorted(changed),
                "services": {f"{ns}/{name}": numbers for (ns, name), numbers in services.items()},
                "datasets": {f"{ns}/{name}": numbers for (ns, name), numbers in datasets.items()}}
        self.latest = tick
        if self._subscribers:
            self._publish(json.dumps(tick, separators=(",", ":")).encode())
        return tick

    def _changed(self) -> set[str]:
        marks = self.store.change_marks()
        last_event, event_kinds = self.store.event_kinds_since(self._event_id)
        previous, self._marks, self._event_id = self._marks, marks, last_event
        if previous is None:
            return set()
        changed = {kind for kind in previous.keys() | marks.keys() if previous.get(kind) != marks.get(kind)}
        return changed | event_kinds

    def _sample_services(self, now: float) -> dict[KEY, dict[str, Any]]:
        observer = getattr(self.gateway, "observer", None)
        router = getattr(self.gateway, "router", None)
        seen = observer.clock() if observer is not None else 0.0
        last = self._last_seen if self._last_seen is not None else seen - self.interval_s
        elapsed = max(seen - last, 1e-6)
        self._last_seen = seen
        replicas = list(getattr(self.replicas, "items", {}).values()) if self.replicas is not None else []
        result = {}
        for key in self._service_keys or []:
            answers: list[tuple[float, bool, float]] = []
            if observer is not None and router is not None:
                revisions = self._revisions.setdefault(key, {})
                table = router.tables.get(key)
                if table is not None:
                    for backend in router.entry(table).backends:
                        revisions[backend.key] = seen
                for revision, at in list(revisions.items()):
                    if at < seen - REVISION_GRACE_S:
                        del revisions[revision]
                        continue
                    answers += [answer for answer in observer.since(revision, last) if answer[0] > last]
            latencies = sorted(ms for _, _, ms in answers)
            errors = sum(1 for _, ok, _ in answers if not ok)
            mine = [r for r in replicas if r.namespace == key[0] and r.isvc == key[1] and r.state != "draining"]
            average, scraped_at = self._batch.get(key, (None, 0.0))
            result[key] = {
                "rps": round(len(answers) / elapsed, 3),
                "p50_ms": _round(percentile(latencies, 0.50)) if latencies else None,
                "p99_ms": _round(percentile(latencies, 0.99)) if latencies else None,
                "error_rate": round(errors / len(answers), 4) if answers else 0.0,
                "replicas": len(mine),
                "ready_replicas": sum(1 for r in mine if r.state == "ready"),
                "batch_size": _round(average) if now - scraped_at <= 2.5 * self.scrape_s else None,
            }
        return result

    def _sample_dataset(self, key: KEY) -> dict[str, Any]:
        tracked = getattr(self.datasets, "tracked", {}).get(key) if self.datasets is not None else None
        states = getattr(tracked, "cache_states", None) or {}
        hit = _percent(states.get("cacheHitRatioWindow"))
        return {"hit_ratio": None if hit is None else round(hit / 100.0, 4),
                "cached_percent": _percent(states.get("cachedPercentage"))}

    # -- batch sizes -------------------------------------------------------------------------------
    async def scrape(self) -> None:
        """Read the ready predictor replicas' batch-size histograms; average rows per execution since
        the last scrape, per service."""
        targets: dict[KEY, list[str]] = {}
        for replica in list(getattr(self.replicas, "items", {}).values()) if self.replicas is not None else []:
            handle = getattr(replica, "handle", None)
            url = getattr(handle, "http_url", None)
            service, component = split_key(replica.isvc)
            if replica.state == "ready" and url and component == PREDICTOR:
                targets.setdefault((replica.namespace, service), []).append(url)
        urls = [url for found in targets.values() for url in found]
        texts = await asyncio.gather(*(self._read(url) for url in urls), return_exceptions=True)
        read = {url: text for url, text in zip(urls, texts) if isinstance(text, bytes)}
        now = self.clock()
        for key, found in targets.items():
            total = count = 0.0
            for url in found:
                if url not in read:
                    continue
                current = parse_batch_sizes(read[url])
                before = self._scraped.get(url)
                self._scraped[url] = current
                if before is None:
                    continue  # the first read is the baseline
                if current[1] < before[1]:  # the replica restarted: its counters began again
                    before = (0.0, 0.0)
                total += current[0] - before[0]
                count += current[1] - before[1]
            self._batch[key] = (total / count if count > 0 else None, now)
        for url in set(self._scraped) - set(urls):
            del self._scraped[url]

    async def _read(self, url: str) -> bytes:
        if self.fetch is not None:
            return await self.fetch(url)
        if self._client is None:
            import httpx

            self._client = httpx.AsyncClient(timeout=SCRAPE_TIMEOUT_S, trust_env=False)
        response = await self._client.get(f"{url.rstrip('/')}/metrics")
        response.raise_for_status()
        return response.content

    # -- history -----------------------------------------------------------------------------------
    def service_points(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return list(self.services.get((namespace, name), ()))

    def dataset_points(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return list(self.dataset_history.get((namespace, name), ()))


def _prune(table: dict[KEY, Any], keep: list[KEY]) -> None:
    for key in set(table) - set(keep):
        del table[key]
