import "./style.css";
import { post, setSessionExpiredHandler } from "./api";
import { button, clear, h } from "./dom";
import { here, navigate, Route, setRoutes, startRouter } from "./router";
import { refreshSession, session } from "./session";
import { forgotPage, loginPage, onboardingPage, resetPage, signupPage } from "./pages/auth";
import { keysPage } from "./pages/keys";
import { walletPage } from "./pages/wallet";
import { dashboardPage } from "./pages/dashboard";
import { logsPage } from "./pages/logs";
import { playgroundPage } from "./pages/playground";
import { modelsPage } from "./pages/models";
import { adminPage } from "./pages/admin";
import { settingsPage } from "./pages/settings";
import { joinPage, orgPage, orgsPage } from "./pages/orgs";

const routes: Route[] = [
  { path: "/", title: "Dashboard", page: dashboardPage, access: "user" },
  { path: "/dashboard", title: "Dashboard", page: dashboardPage, access: "user" },
  { path: "/login", title: "Log in", page: loginPage, access: "guest" },
  { path: "/signup", title: "Sign up", page: signupPage, access: "guest" },
  { path: "/forgot", title: "Forgot password", page: forgotPage, access: "public" },
  { path: "/reset-password", title: "Reset password", page: resetPage, access: "public" },
  { path: "/onboarding", title: "Welcome", page: onboardingPage, access: "user" },
  { path: "/keys", title: "API keys", page: keysPage, access: "user" },
  { path: "/wallet", title: "Wallet", page: walletPage, access: "user" },
  { path: "/logs", title: "Usage logs", page: logsPage, access: "user" },
  { path: "/playground", title: "Playground", page: playgroundPage, access: "user" },
  { path: "/models", title: "Models & pricing", page: modelsPage, access: "public" },
  { path: "/settings", title: "Settings", page: settingsPage, access: "user" },
  { path: "/orgs", title: "Organisations", page: orgsPage, access: "user" },
  { path: "/orgs/join", title: "Join an organisation", page: joinPage, access: "user" },
  { path: "/orgs/*", title: "Organisation", page: orgPage, access: "user" },
  { path: "/admin", title: "Admin", page: adminPage, access: "admin" },
  { path: "/admin/*", title: "Admin", page: adminPage, access: "admin" },
];

const NAV: [string, string, "user" | "admin" | "public"][] = [
  ["/dashboard", "Dashboard", "user"],
  ["/keys", "API keys", "user"],
  ["/wallet", "Wallet", "user"],
  ["/logs", "Logs", "user"],
  ["/playground", "Playground", "user"],
  ["/orgs", "Organisations", "user"],
  ["/models", "Models & pricing", "public"],
  ["/admin", "Admin", "admin"],
];

const app = document.getElementById("app")!;

function header(path: string): HTMLElement {
  const acct = session.account;
  const links = NAV.filter(([, , need]) => need === "public" || (acct && (need === "user" || acct.role === "admin")));
  const nav = h("nav", { class: "nav", id: "main-nav", "aria-label": "Main" },
    h("ul", {}, links.map(([href, label]) => {
      const current = path === href || (href !== "/" && path.startsWith(href + "/")) || (href === "/dashboard" && path === "/");
      return h("li", {}, h("a", { href, "aria-current": current ? "page" : false }, label));
    })));
  const toggle = h("button", {
    type: "button", class: "nav-toggle", "aria-controls": "main-nav", "aria-expanded": "false",
    onclick: () => {
      const open = nav.classList.toggle("open");
      toggle.setAttribute("aria-expanded", String(open));
    },
  }, "Menu");
  const user = acct
    ? h("div", { class: "account-menu" },
      h("a", { href: "/settings", class: "who", title: "Settings" }, acct.email),
      button("Log out", async () => {
        try { await post("/api/auth/logout"); } catch { /* the session may be gone already */ }
        session.account = null;
        navigate("/login");
      }, "link"))
    : h("div", { class: "account-menu" }, h("a", { href: "/login" }, "Log in"), h("a", { href: "/signup", class: "btn" }, "Sign up"));
  return h("header", { class: "top" },
    h("a", { href: acct ? "/dashboard" : "/models", class: "brand" }, h("span", { class: "logo", "aria-hidden": "true" }, "F"), "Faregate"),
    toggle, nav, user);
}

let renderSeq = 0;

async function render(route: Route | null, params: URLSearchParams, path: string): Promise<void> {
  const seq = ++renderSeq;
  if (!session.checked) await refreshSession();
  if (seq !== renderSeq) return;
  if (!route) {
    route = { path, title: "Not found", access: "public", page: (root) => clear(root, h("h1", {}, "Page not found"), h("p", {}, h("a", { href: "/" }, "Go to the dashboard"))) };
  }
  const acct = session.account;
  if ((route.access === "user" || route.access === "admin") && !acct) {
    navigate(`/login?next=${encodeURIComponent(path + location.search)}`, true);
    return;
  }
  if (route.access === "guest" && acct) {
    navigate(params.get("next") || "/dashboard", true);
    return;
  }
  document.title = `${route.title} · Faregate`;
  const main = h("main", { id: "main", class: `page page-${route.path.replace(/[^a-z]/g, "") || "home"}` });
  clear(app, h("a", { href: "#main", class: "skip" }, "Skip to content"), header(path), main);
  if (route.access === "admin" && acct?.role !== "admin") {
    clear(main, h("h1", {}, "Admins only"), h("p", {}, "This page is for operators."));
    return;
  }
  try {
    await route.page(main, params, path);
  } catch (exc) {
    main.append(h("p", { class: "notice err", role: "alert" }, String((exc as Error).message ?? exc)));
  }
}

setSessionExpiredHandler(() => {
  if (!session.account) return;
  session.account = null;
  const back = here();
  navigate(`/login?expired=1&next=${encodeURIComponent(back)}`, true);
});

setRoutes(routes, (route, params, path) => void render(route, params, path));
startRouter();
