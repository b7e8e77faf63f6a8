// Hash routes: #/AREA and #/AREA/NAMESPACE/NAME. The router mounts one page at a time and unmounts the last.

export const AREAS = ["services", "graphs", "training", "data"];

/** {area, namespace, name} of a hash; unknown areas -> {area: null}. */
export function parse(hash) {
  const parts = (hash || "").replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  if (!parts.length) return {area: "services"};
  const [area, namespace, name] = parts;
  if (!AREAS.includes(area) || parts.length === 2 || parts.length > 3) return {area: null, hash};
  return {area, namespace, name};
}

export class Router {
  /** pages: {area: {list(ctx), detail(ctx)}}; each returns {refresh(), onTick(tick), unmount()}. */
  constructor(outlet, pages, onRoute) {
    this.outlet = outlet;
    this.pages = pages;
    this.onRoute = onRoute;
    this.current = null;
    window.addEventListener("hashchange", () => this.go(true));
  }

  /** Mount the page of the current hash; after a navigation (moved), focus moves to the page's heading. */
  go(moved = false) {
    const route = parse(window.location.hash);
    if (this.current) {
      try {
        this.current.unmount?.();
      } catch (error) {
        console.error(error);
      }
    }
    this.outlet.replaceChildren();
    this.onRoute(route);
    const page = route.area ? this.pages[route.area] : null;
    if (!page) {
      this.current = null;
      const back = document.createElement("a");
      back.href = "#/services";
      back.textContent = "Go to the services";
      const text = document.createElement("p");
      text.className = "notice notice-error";
      text.textContent = `There is no page at ${route.hash}. `;
      text.append(back);
      this.outlet.append(text);
      return;
    }
    this.current = route.name ? page.detail(this.outlet, route) : page.list(this.outlet, route);
    const heading = this.outlet.querySelector("h1");
    if (moved && heading) {
      heading.setAttribute("tabindex", "-1");
      heading.focus({preventScroll: true});
    }
    window.scrollTo(0, 0);
  }

  tick(data) {
    this.current?.onTick?.(data);
  }

  refresh() {
    this.current?.refresh?.();
  }
}
