// The dashboard's entry point: the router, the live stream, the navigation and the token form.
import {onAuthError} from "./api.js";
import {h} from "./dom.js";
import * as data from "./data.js";
import * as graphs from "./graphs.js";
import {Live} from "./live.js";
import {Router} from "./router.js";
import * as services from "./services.js";
import * as training from "./training.js";

const POLL_OFFLINE_MS = 3000;

const outlet = document.getElementById("main");
const indicator = document.querySelector("[data-testid=live-indicator]");
const indicatorText = indicator.querySelector(".live-text");
let locked = false;

const router = new Router(outlet, {services, graphs, training, data}, (route) => {
  for (const nav of document.querySelectorAll("[data-nav]")) {
    if (nav.dataset.nav === route.area) nav.setAttribute("aria-current", "page");
    else nav.removeAttribute("aria-current");
  }
});

const live = new Live("/apis/ui/events", (tick) => router.tick(tick), (state) => {
  indicator.dataset.state = state;
  indicatorText.textContent = state === "live" ? "Live" : "Offline";
  indicator.title = state === "live" ? "Live updates from the control plane (every second)"
    : "No live updates: the page refreshes every few seconds";
});

onAuthError(() => showTokenForm());

function showTokenForm() {
  if (locked) return;
  locked = true;
  live.stop();
  const input = h("input", {id: "token", name: "token", type: "password", autocomplete: "current-password",
    required: true, spellcheck: "false"});
  const form = h("form", {class: "card token-form", testid: "token-form", onsubmit: (event) => {
    event.preventDefault();
    const token = input.value.trim();
    if (!token) return;
    window.location.assign(`/?token=${encodeURIComponent(token)}${window.location.hash || ""}`);
  }},
  h("h1", {}, "A token is required"),
  h("p", {}, "This control plane requires a token for its dashboard and API. ",
    h("code", {}, "shipyard up --host ..."), " printed it when it started, and it is in ",
    h("code", {}, "$SHIPYARD_HOME/plane.json"), " (unless it was chosen with ", h("code", {}, "--token"), " or ",
    h("code", {}, "$SHIPYARD_TOKEN"), ")."),
  new URLSearchParams(window.location.search).has("invalid_token")
    ? h("p", {class: "notice notice-error", role: "alert"}, "That token was not accepted; check it and try again.") : null,
  h("label", {for: "token", class: "field"}, "Token"), input,
  h("div", {class: "dialog-buttons"}, h("button", {type: "submit", class: "button button-primary"}, "Open the dashboard")));
  outlet.replaceChildren(form);
  input.focus();
}

window.addEventListener("hashchange", () => {
  if (locked) showTokenFormAgain();
});

function showTokenFormAgain() {
  locked = false;
  showTokenForm();
}

setInterval(() => {
  if (!locked && live.state !== "live" && !document.hidden) router.refresh();
}, POLL_OFFLINE_MS);

document.querySelector(".skip").addEventListener("click", (event) => {  // not a route: just move the focus
  event.preventDefault();
  outlet.focus();
});

if (!window.location.hash) history.replaceState(null, "", "#/services");
router.go();
live.start();
