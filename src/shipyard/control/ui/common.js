// Page building blocks: the page shell, a non-overlapping poller, and a log view that follows a log cursor.
import {AuthError} from "./api.js";
import {h, notice} from "./dom.js";

/** The page's header (breadcrumbs, title, description), an error line and a body; returns {header, body, setError}. */
export function pageShell(outlet, title, description, crumbs) {
  const header = h("header", {class: "page-header"},
    crumbs ? h("nav", {class: "crumbs", "aria-label": "Breadcrumb"},
      h("ol", {}, crumbs.map(([label, href], index) => h("li", {},
        href ? h("a", {href}, label) : h("span", {"aria-current": index === crumbs.length - 1 ? "page" : null}, label)))))
      : null,
    h("h1", {}, title),
    description ? h("p", {class: "muted"}, description) : null);
  const errors = h("div", {class: "errors"});
  const body = h("div", {class: "page-body"});
  outlet.append(header, errors, body);
  document.title = `${title} · Shipyard`;
  return {
    header,
    body,
    setError(error) {
      if (!error || error instanceof AuthError) {
        errors.replaceChildren();
        return;
      }
      errors.replaceChildren(notice(typeof error === "string" ? error : error.message, "error"));
    },
  };
}

/** Runs an async load(signal); a run asked for while one is in flight runs once after it. */
export class Poller {
  constructor(load, onError) {
    this.load = load;
    this.onError = onError;
    this.busy = false;
    this.again = false;
    this.controller = new AbortController();
    this.stopped = false;
  }

  async run() {
    if (this.stopped) return;
    if (this.busy) {
      this.again = true;
      return;
    }
    this.busy = true;
    try {
      await this.load(this.controller.signal);
    } catch (error) {
      if (error.name !== "AbortError" && !this.stopped) this.onError?.(error);
    } finally {
      this.busy = false;
    }
    if (this.again && !this.stopped) {
      this.again = false;
      this.run();
    }
  }

  stop() {
    this.stopped = true;
    this.controller.abort();
  }
}

const MAX_LINES = 5000;

/** A <pre> of log lines (data-testid) that a follow loop appends to, scrolled to the end while at the end. */
export class LogView {
  constructor(testid, caption) {
    this.pre = h("pre", {class: "log", testid, tabindex: "0", "aria-label": caption || "log"});
    this.status = h("p", {class: "muted small log-status", role: "status"});
    this.element = h("div", {class: "log-view"}, caption ? h("p", {class: "muted small"}, caption) : null, this.pre,
      this.status);
    this.lines = [];
    this.partial = "";
    this.filter = null;
    this.controller = null;
  }

  /** follow(fetch(cursor, signal) -> {text, cursor}, pauseMs): the first call has no cursor. */
  follow(fetch, pauseMs) {
    this.stop();
    const controller = new AbortController();
    this.controller = controller;
    const loop = async () => {
      let cursor = null;
      while (!controller.signal.aborted) {
        try {
          const answer = await fetch(cursor, controller.signal);
          if (controller.signal.aborted) return;
          cursor = answer.cursor ?? cursor;
          this.add(answer.text || "");
          if (!this.lines.length && !this.partial) this.status.textContent = "No log lines yet.";
          else this.status.textContent = "";
          if (pauseMs) await sleep(pauseMs, controller.signal);
        } catch (error) {
          if (error.name === "AbortError" || controller.signal.aborted) return;
          if (error instanceof AuthError) return;
          this.status.textContent = `Logs: ${error.message} (retrying)`;
          await sleep(3000, controller.signal).catch(() => {});
        }
      }
    };
    loop().catch(() => {});
  }

  stop() {
    this.controller?.abort();
    this.controller = null;
  }

  clear() {
    this.lines = [];
    this.partial = "";
    this.pre.textContent = "";
    this.status.textContent = "";
  }

  setFilter(filter) {
    this.filter = filter;
    const shown = this.lines.filter((line) => !filter || filter(line));
    this.pre.textContent = shown.length ? `${shown.join("\n")}\n` : "";
    this.pre.scrollTop = this.pre.scrollHeight;
  }

  add(text) {
    if (!text) return;
    const parts = (this.partial + text).split("\n");
    this.partial = parts.pop();
    if (!parts.length) return;
    const atEnd = this.pre.scrollHeight - this.pre.scrollTop - this.pre.clientHeight < 40;
    this.lines.push(...parts);
    const shown = parts.filter((line) => !this.filter || this.filter(line));
    if (this.lines.length > MAX_LINES) {
      this.lines.splice(0, this.lines.length - MAX_LINES);
      this.setFilter(this.filter);
    } else if (shown.length) {
      this.pre.append(document.createTextNode(`${shown.join("\n")}\n`));
    }
    if (atEnd) this.pre.scrollTop = this.pre.scrollHeight;
  }
}

export function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(new DOMException("aborted", "AbortError"));
    }, {once: true});
  });
}
