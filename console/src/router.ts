// A small history-API router: paths map to page functions; links with a same-origin path are intercepted.

export type Page = (root: HTMLElement, params: URLSearchParams, path: string) => void | Promise<void>;

export interface Route {
  path: string; // exact path, or a prefix ending in "/*"
  title: string;
  page: Page;
  access: "public" | "guest" | "user" | "admin";
}

let routes: Route[] = [];
let renderFn: (route: Route | null, params: URLSearchParams, path: string) => void = () => {};

export function setRoutes(r: Route[], render: typeof renderFn): void {
  routes = r;
  renderFn = render;
}

export function match(path: string): Route | null {
  return routes.find((r) => r.path === path)
    ?? routes.find((r) => r.path.endsWith("/*") && path.startsWith(r.path.slice(0, -1)))
    ?? null;
}

export function navigate(to: string, replace = false): void {
  if (replace) history.replaceState(null, "", to);
  else history.pushState(null, "", to);
  dispatch();
}

export function dispatch(): void {
  const url = new URL(location.href);
  renderFn(match(url.pathname), url.searchParams, url.pathname);
}

export function startRouter(): void {
  window.addEventListener("popstate", dispatch);
  document.addEventListener("click", (ev) => {
    const a = (ev.target as Element | null)?.closest?.("a");
    if (!a || ev.defaultPrevented || ev.button !== 0 || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.altKey) return;
    const href = a.getAttribute("href") ?? "";
    if (!href.startsWith("/") || href.startsWith("//") || a.hasAttribute("download") || a.target) return;
    if (href.startsWith("/api/") || href.startsWith("/v1/")) return;
    ev.preventDefault();
    navigate(href);
  });
  dispatch();
}

/** The current page and query, to come back to after logging in again. */
export function here(): string {
  return location.pathname + location.search;
}
