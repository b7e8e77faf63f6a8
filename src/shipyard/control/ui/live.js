// Live updates: EventSource("/apis/ui/events") -> tick events; the indicator says live or offline.
// Offline (no stream, an error, or no tick for 5 s) the app polls the open page instead.

const STALE_MS = 5000;
const RETRY_MS = 3000;

export class Live {
  /** onTick(data) for every tick; onState("live"|"offline") when the state changes. */
  constructor(url, onTick, onState) {
    this.url = url;
    this.onTick = onTick;
    this.onState = onState;
    this.state = null;
    this.source = null;
    this.lastTick = 0;
    this.retry = null;
    this.setState("offline");
    this.watchdog = setInterval(() => {
      if (this.state === "live" && Date.now() - this.lastTick > STALE_MS) this.setState("offline");
    }, 1000);
  }

  start() {
    if (typeof EventSource === "undefined") return;
    clearTimeout(this.retry);
    this.source?.close();
    const source = new EventSource(this.url, {withCredentials: true});
    this.source = source;
    source.addEventListener("tick", (event) => {
      let data;
      try {
        data = JSON.parse(event.data);
      } catch {
        return;
      }
      this.lastTick = Date.now();
      this.setState("live");
      this.onTick(data);
    });
    source.addEventListener("error", () => {
      this.setState("offline");
      if (source.readyState === EventSource.CLOSED) {  // refused (401, 404...): the browser gave up; try again
        this.retry = setTimeout(() => this.start(), RETRY_MS);
      }
    });
  }

  stop() {
    clearTimeout(this.retry);
    this.source?.close();
    this.source = null;
    this.setState("offline");
  }

  setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.onState(state);
  }
}
