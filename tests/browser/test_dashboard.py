"""The web dashboard in a real browser (Debian's chromium, headless, driven by Playwright) against a real
``shipyard up`` with real replicas: the empty state, a service turning Ready, its requests/s chart moving
under traffic, a canary promoted from the page (the split changes in the page, the API and `shipyard get`),
a running TrainJob's logs arriving live, a graph drawn with its bandit arms, the datasets page, and the token
form when the plane listens beyond loopback. Each page's screenshot is saved to docs/screenshots/.

One plane serves the module (the tests run in order: the empty state first); the token test starts its own.
Skips, saying why, when playwright or the chromium binary ($SHIPYARD_CHROMIUM, default /usr/bin/chromium)
is missing: `make install` brings both (apt package ``chromium``, the ``playwright`` wheel)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from planeproc import PlaneProcess, isvc, kill_replicas, wait_for

pytestmark = pytest.mark.integration

CHROMIUM = os.environ.get("SHIPYARD_CHROMIUM", "/usr/bin/chromium")
if not Path(CHROMIUM).is_file():
    pytest.skip(f"no chromium at {CHROMIUM}: install the Debian package `chromium` (make install does)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright")
expect = sync_api.expect

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
NAME = "iris"
V1, V2 = f"{NAME}-predictor-00001", f"{NAME}-predictor-00002"

#: The predictor: V1 adds 1, V2 adds 2 (ADD from the environment), so each revision is a real model.py.
PREDICTOR = """
import os
import numpy as np

ADD = float(os.environ.get("ADD", "1"))

class Model:
    def predict(self, inputs):
        return {"output-0": np.asarray(next(iter(inputs.values())), dtype=np.float64) + ADD}
"""

#: A small training job: prints a line every 0.3 s and reports a falling loss; stops early when asked.
TRAIN = """
import time
from shipyard import train

STEPS = 120
for step in range(STEPS):
    print(f"training line {step}", flush=True)
    train.report({"loss": 1.0 / (step + 1), "accuracy": step / STEPS}, step=step, progress=100 * (step + 1) / STEPS)
    if train.stop_requested():
        break
    time.sleep(0.3)
print("done", flush=True)
"""


# -- fixtures --------------------------------------------------------------------------------------------
class Site:
    """The module's plane and the folders its services are made from."""

    def __init__(self, plane: PlaneProcess, root: Path) -> None:
        self.plane, self.root = plane, root

    def model(self, name: str) -> Path:
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.py").write_text(textwrap.dedent(PREDICTOR))
        return folder


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("dashboard")
    plane = PlaneProcess(root / "home").wait_up()
    try:
        yield Site(plane, root)
    finally:
        plane.stop()
        kill_replicas(str(root))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport=DESKTOP)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    opened.on("console", lambda message: message.type == "error" and errors.append(f"console: {message.text}"))
    try:
        yield opened
    finally:
        context.close()
    assert not errors, f"errors on the page: {errors}"


def shoot(page: Any, name: str) -> None:
    """Save the current viewport as docs/screenshots/NAME.png (fonts loaded, no caret, no animations)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("document.fonts.ready")
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), animations="disabled", caret="hide")


def hook(page: Any, testid: str) -> Any:
    return page.get_by_test_id(testid)


def row(page: Any, testid: str, name: str) -> Any:
    return page.locator(f'[data-testid="{testid}"][data-name="{name}"]')


def number(locator: Any, attribute: str) -> float:
    value = locator.get_attribute(attribute)
    return float(value) if value not in (None, "") else float("nan")


class Traffic:
    """Requests from a thread to the gateway: at most ``limit`` of them, for at most ``seconds``, or until stopped."""

    def __init__(self, url: str, body: dict[str, Any], limit: int = 3000, seconds: float = 30) -> None:
        self.url, self.body, self.limit, self.seconds = url, body, limit, seconds
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + self.seconds
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set() and len(self.statuses) < self.limit and time.monotonic() < deadline:
                try:
                    self.statuses.append(client.post(self.url, json=self.body).status_code)
                except httpx.HTTPError:
                    self.statuses.append(0)
                time.sleep(0.01)

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join(60)
        return self.statuses


def traffic_of(plane: PlaneProcess, name: str = NAME) -> dict[str, int]:
    described = plane.describe(name) or {}
    entries = ((described.get("status") or {}).get("components") or {}).get("predictor", {}).get("traffic", [])
    return {entry["revisionName"]: entry["percent"] for entry in entries if entry.get("percent")}


def shipyard(plane: PlaneProcess, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "shipyard", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SHIPYARD_HOME": str(plane.home)})
    assert done.returncode == 0, done.stderr
    return done.stdout


def predict(plane: PlaneProcess, name: str = NAME) -> str:
    return f"{plane.gateway}/v1/models/{name}:predict"


# -- the tests, in order: the empty install first ----------------------------------------------------------
def test_an_empty_install_shows_the_empty_state_with_the_command(site: Site, page: Any) -> None:
    page.goto(site.plane.api + "/")
    empty = hook(page, "empty-state")
    expect(empty).to_be_visible(timeout=15_000)
    expect(empty).to_contain_text("shipyard apply")
    expect(hook(page, "live-indicator")).to_have_attribute("data-state", "live", timeout=10_000)
    for link in ("nav-services", "nav-graphs", "nav-training", "nav-data"):
        expect(hook(page, link)).to_be_visible()
    shoot(page, "empty")
    # every list page says which command creates its first object
    for link, route in (("nav-graphs", "#/graphs"), ("nav-training", "#/training"), ("nav-data", "#/data")):
        hook(page, link).click()
        expect(page).to_have_url(re.compile(re.escape(route) + "$"))
        expect(hook(page, "empty-state")).to_contain_text("shipyard", timeout=10_000)


def test_an_applied_service_turns_ready_in_the_page(site: Site, page: Any) -> None:
    page.goto(site.plane.api + "/#/services")
    expect(hook(page, "empty-state")).to_be_visible(timeout=15_000)
    site.plane.apply(isvc(NAME, site.model("v1"), "custom"))
    service = row(page, "service-row", NAME)
    expect(service).to_be_visible(timeout=15_000)  # live: no reload
    expect(service.get_by_test_id("service-ready")).to_have_text("True", timeout=90_000)
    expect(service.get_by_test_id("traffic-split")).to_have_text(f"{V1} 100%", timeout=15_000)
    assert (site.plane.condition(NAME) or {}).get("status") == "True"


def test_traffic_moves_the_requests_per_second_chart(site: Site, page: Any) -> None:
    site.plane.wait_ready(NAME)
    page.goto(site.plane.api + "/#/services")
    row(page, "service-row", NAME).get_by_role("link", name=NAME).click()
    expect(page).to_have_url(re.compile(f"#/services/default/{NAME}$"))
    expect(hook(page, "service-ready")).to_have_text("True", timeout=15_000)
    rps = hook(page, "chart-rps")
    expect(rps).to_have_attribute("data-points", re.compile(r"\d+"), timeout=15_000)
    before = number(rps, "data-points")

    load = Traffic(predict(site.plane), {"instances": [[1.0, 2.0]]})
    try:
        page.wait_for_function(
            """([before]) => {
                const svg = document.querySelector('[data-testid="chart-rps"]');
                return Number(svg.dataset.points) > before && Number(svg.dataset.last) > 0;
            }""", arg=[before], timeout=30_000)
        moved = number(rps, "data-points")
        # a few more seconds of traffic, for the screenshot's sake: the line keeps moving, one point a second
        page.wait_for_function(
            """([moved]) => {
                const svg = document.querySelector('[data-testid="chart-rps"]');
                return Number(svg.dataset.points) >= moved + 4 && Number(svg.dataset.last) > 0;
            }""", arg=[moved], timeout=30_000)
        # the latency chart moves with it
        page.wait_for_function(
            "() => Number(document.querySelector('[data-testid=\"chart-latency\"]').dataset.last) > 0",
            timeout=15_000)
        shoot(page, "service")
    finally:
        statuses = load.stop()
    assert statuses and set(statuses) == {200}, statuses[:20]
    for chart in ("chart-errors", "chart-replicas", "chart-batch"):
        expect(hook(page, chart)).to_have_attribute("data-points", re.compile(r"[1-9]\d*"))
    assert number(hook(page, "chart-replicas"), "data-last") >= 1
    expect(hook(page, "log-lines")).not_to_be_empty(timeout=15_000)


def test_promote_from_the_page_changes_the_split_there_in_the_api_and_in_shipyard_get(
        site: Site, page: Any, browser: Any) -> None:
    site.plane.apply(isvc(NAME, site.model("v2"), "custom", canaryTrafficPercent=20,
                          model={"env": [{"name": "ADD", "value": "2"}]}))
    wait_for(lambda: traffic_of(site.plane) == {V2: 20, V1: 80}, 90, f"the 20% canary\n{site.plane.output[-3000:]}")
    canary = f"{V2} 20% · {V1} 80%"

    page.goto(site.plane.api + "/#/services")
    expect(row(page, "service-row", NAME).get_by_test_id("traffic-split")).to_have_text(canary, timeout=15_000)
    shoot(page, "services")
    phone = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    try:
        small = phone.new_page()
        small.goto(site.plane.api + "/#/services")
        expect(row(small, "service-row", NAME).get_by_test_id("traffic-split")).to_have_text(canary, timeout=15_000)
        shoot(small, "services-mobile")
    finally:
        phone.close()

    page.goto(site.plane.api + f"/#/services/default/{NAME}")
    split = hook(page, "traffic-split")
    expect(split).to_have_text(canary, timeout=15_000)
    # Escape closes the confirmation without doing anything
    hook(page, "promote-button").click()
    dialog = hook(page, "confirm-dialog")
    expect(dialog).to_be_visible()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    time.sleep(0.5)  # nothing may happen: give a wrongly sent request the time to land
    assert traffic_of(site.plane) == {V2: 20, V1: 80}

    hook(page, "promote-button").click()
    expect(dialog).to_be_visible()
    with page.expect_request(lambda request: request.method == "POST" and request.url.endswith(
            f"/apis/inferenceservices/default/{NAME}/rollout")) as sent:
        hook(page, "confirm-button").click()
    request = sent.value
    assert (request.post_data_json or {}).get("action") == "promote", request.post_data
    assert request.headers.get("x-shipyard-request") == "1"  # the CSRF header on every mutation
    expect(dialog).to_be_hidden()

    expect(split).to_have_text(f"{V2} 100%", timeout=60_000)
    assert traffic_of(site.plane) == {V2: 100}
    table = shipyard(site.plane, "get", "isvc", "-o", "wide")
    line = next(line for line in table.splitlines() if line.startswith(NAME + " "))
    assert f"{V2}=100%" in line, table
    expect(hook(page, "action-result")).to_contain_text(f"promoting {V2}")  # the API's answer, shown
    expect(hook(page, "events")).to_be_visible()


def test_a_running_jobs_page_shows_new_log_lines_arriving(site: Site, page: Any) -> None:
    script = site.root / "train.py"
    script.write_text(textwrap.dedent(TRAIN))
    site.plane.apply({
        "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "metadata": {"name": "tiny"},
        "spec": {"runtimeRef": {"name": "python"}, "trainer": {
            "command": ["python", str(script)], "numNodes": 1, "resourcesPerNode": {"requests": {"cpu": "1"}}}}})
    page.goto(site.plane.api + "/#/training")
    job = row(page, "job-row", "tiny")
    expect(job).to_be_visible(timeout=15_000)
    expect(job.get_by_test_id("job-state")).to_have_text("Running", timeout=60_000)

    job.get_by_role("link", name="tiny").click()
    expect(page).to_have_url(re.compile(r"#/training/default/tiny$"))
    page.evaluate("window.stillTheSamePage = true")
    logs = hook(page, "job-logs")
    expect(logs).to_contain_text("training line", timeout=30_000)

    def last_line() -> int:
        seen = [int(n) for n in re.findall(r"training line (\d+)", logs.text_content() or "")]
        return max(seen) if seen else -1

    first = last_line()
    # new lines arrive while the page stays open (no reload): at least three more
    expect(logs).to_contain_text(f"training line {first + 3}", timeout=20_000)
    assert page.evaluate("window.stillTheSamePage") is True  # appended in place: the page was not reloaded
    loss = page.locator('[data-testid="metric-chart"][data-metric="loss"]')
    expect(loss).to_have_attribute("data-points", re.compile(r"[1-9]\d*"), timeout=15_000)
    expect(page.locator('[data-testid="metric-chart"][data-metric="accuracy"]')).to_be_visible()
    shoot(page, "job")

    hook(page, "nav-training").click()  # the list shows its progress by now
    expect(job.get_by_test_id("job-state")).to_have_text("Running", timeout=15_000)
    expect(job).to_contain_text("%", timeout=15_000)
    shoot(page, "training")
    assert httpx.delete(f"{site.plane.api}/apis/trainjobs/default/tiny", timeout=10).status_code == 202


def test_the_graph_page_draws_its_nodes_steps_and_bandit_arms(site: Site, page: Any) -> None:
    site.plane.wait_ready(NAME)
    site.plane.apply({
        "apiVersion": "serving.kserve.io/v1alpha1", "kind": "InferenceGraph", "metadata": {"name": "pipeline"},
        "spec": {"nodes": {
            "root": {"routerType": "Sequence", "steps": [
                {"name": "prepare", "serviceName": NAME},
                {"name": "choose", "nodeName": "arms", "data": "$response"}]},
            "arms": {"routerType": "Bandit", "bandit": {"policy": "thompson", "seed": 7}, "steps": [
                {"name": "left", "serviceName": NAME}, {"name": "right", "serviceName": NAME}]}}}})

    def served() -> bool:
        return httpx.post(predict(site.plane, "pipeline"), json={"instances": [[1.0]]}, timeout=30).status_code == 200

    wait_for(served, 60, f"the graph to serve\n{site.plane.output[-3000:]}")
    with httpx.Client(timeout=30) as client:
        for _ in range(20):
            answer = client.post(predict(site.plane, "pipeline"), json={"instances": [[1.0]]})
            assert answer.status_code == 200, answer.text
            client.post(f"{site.plane.gateway}/v1/models/pipeline:feedback",
                        json={"request_id": answer.headers["x-request-id"], "reward": 1.0})

    page.goto(site.plane.api + "/#/graphs")
    link = page.get_by_role("link", name="pipeline")
    expect(link).to_be_visible(timeout=15_000)
    shoot(page, "graphs")
    link.click()
    expect(page).to_have_url(re.compile(r"#/graphs/default/pipeline$"))
    canvas = hook(page, "graph-canvas")
    expect(canvas.locator("g.graph-node")).to_have_count(2, timeout=15_000)
    assert canvas.locator("g.graph-node").first.get_attribute("data-node") == "root"  # root first
    for step in ("root/prepare", "root/choose", "arms/left", "arms/right"):
        expect(canvas.locator(f'g.graph-step[data-step="{step}"]')).to_have_count(1)
    arms = hook(page, "bandit-arms")
    expect(arms).to_contain_text("left", timeout=15_000)
    expect(arms).to_contain_text("right")
    shoot(page, "graph")


def test_the_data_page_lists_datasets_and_operations(site: Site, page: Any) -> None:
    source = site.root / "corpus"
    source.mkdir()
    for index in range(4):
        (source / f"part-{index}.bin").write_bytes(os.urandom(50_000))
    site.plane.apply(
        {"apiVersion": "data.fluid.io/v1alpha1", "kind": "Dataset", "metadata": {"name": "corpus"},
         "spec": {"mounts": [{"mountPoint": str(source), "name": "corpus"}]}},
        {"apiVersion": "data.fluid.io/v1alpha1", "kind": "CacheRuntime", "metadata": {"name": "corpus"},
         "spec": {"runtimeClassName": "shipyard",
                  "worker": {"tieredStore": {"levels": [{"emptyDir": {"quota": "16Mi"}}]}}}},
        {"apiVersion": "data.fluid.io/v1alpha1", "kind": "DataLoad", "metadata": {"name": "corpus-warm"},
         "spec": {"dataset": {"name": "corpus"}}})
    page.goto(site.plane.api + "/#/data")
    dataset = row(page, "dataset-row", "corpus")
    expect(dataset).to_be_visible(timeout=15_000)
    expect(dataset).to_contain_text("100", timeout=60_000)  # 100.0% cached once the DataLoad ran
    operation = page.locator('[data-testid="operation-row"][data-name="corpus-warm"]')
    expect(operation).to_contain_text("Complete", timeout=30_000)
    shoot(page, "data")


def test_beyond_loopback_the_page_asks_for_the_token_and_works_with_it(tmp_path: Path, browser: Any) -> None:
    token = "s3cret-token-for-the-browser-test"
    plane = PlaneProcess(tmp_path / "home", "--host", "0.0.0.0", "--token", token).wait_up()
    try:
        port = httpx.URL(plane.api).port
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/apis/inferenceservices", timeout=10).status_code == 401
        context = browser.new_context(viewport=DESKTOP)
        try:
            page = context.new_page()
            page.goto(base + "/#/training")
            form = hook(page, "token-form")
            expect(form).to_be_visible(timeout=15_000)
            expect(hook(page, "empty-state")).to_have_count(0)
            form.locator('input[name="token"]').fill("not-the-token")
            form.locator('input[name="token"]').press("Enter")
            expect(hook(page, "token-form")).to_contain_text("not accepted", timeout=15_000)  # a wrong one is refused
            hook(page, "token-form").locator('input[name="token"]').fill(token)
            hook(page, "token-form").locator('input[name="token"]').press("Enter")
            expect(hook(page, "empty-state")).to_be_visible(timeout=15_000)
            expect(hook(page, "token-form")).to_have_count(0)
            expect(page).to_have_url(re.compile(r"#/training$"))
            assert "token=" not in page.url  # redirected: the token does not stay in the address bar
            expect(hook(page, "live-indicator")).to_have_attribute("data-state", "live", timeout=10_000)
            cookies = {cookie["name"]: cookie for cookie in context.cookies()}
            assert cookies["shipyard_token"]["httpOnly"] and cookies["shipyard_token"]["sameSite"] == "Strict"
        finally:
            context.close()
    finally:
        plane.stop()
