import { Account, ApiError, clearErrors, post, showErrors } from "../api";
import { clear, copyButton, field, h, input, notice } from "../dom";
import { navigate } from "../router";
import { onboarding, rememberSecret, session } from "../session";
import { snippets } from "../snippets";

function authForm(title: string, intro: string | null, fields: HTMLElement[], submitLabel: string,
                  onSubmit: (form: HTMLFormElement, note: ReturnType<typeof notice>) => Promise<void>,
                  footer: HTMLElement[] = []): HTMLElement {
  const note = notice();
  const submit = h("button", { type: "submit", class: "primary" }, submitLabel);
  const form = h("form", { class: "card auth", novalidate: true }, h("h1", {}, title),
    intro ? h("p", { class: "muted" }, intro) : null, ...fields, note, submit, ...footer) as HTMLFormElement;
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    note.reset();
    submit.disabled = true;
    try {
      await onSubmit(form, note);
    } catch (err) {
      showErrors(form, err, note);
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

function val(form: HTMLFormElement, name: string): string {
  return (form.elements.namedItem(name) as HTMLInputElement).value;
}

function safeNext(next: string | null): string {
  // Only paths on this site: never bounce a person to another origin after logging in.
  return next && next.startsWith("/") && !next.startsWith("//") ? next : "/dashboard";
}

export function loginPage(root: HTMLElement, params: URLSearchParams): void {
  const expired = params.get("expired") === "1";
  const reset = params.get("reset") === "1";
  const form = authForm("Log in", null, [
    field("E-mail", "email", input({ type: "email", autocomplete: "username", required: true })),
    field("Password", "password", input({ type: "password", autocomplete: "current-password", required: true })),
  ], "Log in", async (f) => {
    const out = await post<{ account: Account }>("/api/auth/login", { email: val(f, "email"), password: val(f, "password") },
      { quiet401: true });
    session.account = out.account;
    navigate(safeNext(params.get("next")), true);
  }, [h("p", { class: "links" }, h("a", { href: "/forgot" }, "Forgot your password?"), " · ",
    h("a", { href: `/signup${params.get("next") ? `?next=${encodeURIComponent(params.get("next")!)}` : ""}` }, "Create an account"))]);
  if (expired) form.insertBefore(h("p", { class: "notice warn", role: "status" }, "Your session has ended. Log in again to continue where you were."), form.children[1]);
  if (reset) form.insertBefore(h("p", { class: "notice ok", role: "status" }, "Your password is changed. Log in with the new one."), form.children[1]);
  clear(root, h("div", { class: "center" }, form));
}

export function signupPage(root: HTMLElement): void {
  const form = authForm("Create your account", "You get an API key right away; add credit to your wallet to start calling models.", [
    field("E-mail", "email", input({ type: "email", autocomplete: "email", required: true })),
    field("Password", "password", input({ type: "password", autocomplete: "new-password", required: true, minlength: 10 }),
      "At least 10 characters."),
  ], "Sign up", async (f) => {
    const out = await post<{ account: Account; api_key: string; key_id: string }>(
      "/api/auth/register", { email: val(f, "email"), password: val(f, "password") });
    session.account = out.account;
    onboarding.apiKey = out.api_key;
    rememberSecret("default", out.api_key);
    navigate("/onboarding", true);
  }, [h("p", { class: "links" }, "Already have an account? ", h("a", { href: "/login" }, "Log in"))]);
  clear(root, h("div", { class: "center" }, form));
}

export function forgotPage(root: HTMLElement): void {
  const form = authForm("Forgot your password?", "We e-mail you a link to set a new one.", [
    field("E-mail", "email", input({ type: "email", autocomplete: "email", required: true })),
  ], "Send the link", async (f, note) => {
    const out = await post<{ status: string }>("/api/auth/reset-request", { email: val(f, "email") });
    note.ok(out.status.charAt(0).toUpperCase() + out.status.slice(1) + ".");
  }, [h("p", { class: "links" }, h("a", { href: "/login" }, "Back to log in"))]);
  clear(root, h("div", { class: "center" }, form));
}

export function resetPage(root: HTMLElement, params: URLSearchParams): void {
  const token = params.get("token") ?? "";
  if (!token) {
    clear(root, h("div", { class: "center" }, h("div", { class: "card auth" }, h("h1", {}, "Reset password"),
      h("p", {}, "This page needs the link from the reset e-mail. "), h("a", { href: "/forgot" }, "Ask for a new link"))));
    return;
  }
  const form = authForm("Choose a new password", null, [
    field("New password", "password", input({ type: "password", autocomplete: "new-password", required: true, minlength: 10 }),
      "At least 10 characters. Every session of your account is logged out."),
  ], "Set the password", async (f) => {
    try {
      await post("/api/auth/reset-confirm", { token, password: val(f, "password") });
    } catch (err) {
      if (err instanceof ApiError && err.fields.token) throw new ApiError(err.status, err.code, `${err.fields.token} Ask for a new link.`);
      throw err;
    }
    session.account = null;
    navigate("/login?reset=1", true);
  });
  clear(root, h("div", { class: "center" }, form));
}

export function onboardingPage(root: HTMLElement): void {
  const base = `${location.origin}/v1`;
  const key = onboarding.apiKey;
  const shown = key ?? "YOUR_API_KEY";
  const code = snippets({ baseUrl: base, apiKey: shown, model: "gpt-4o-mini", messages: [{ role: "user", content: "Hello!" }], params: {} , stream: false});
  const tabs = Object.entries(code);
  const pre = h("pre", { class: "code", tabindex: "0" }, h("code", {}, tabs[0][1]));
  let current = tabs[0][0];
  const tabBar = h("div", { class: "tabs", role: "tablist" }, tabs.map(([name, text]) => h("button", {
    type: "button", role: "tab", "aria-selected": name === current ? "true" : "false",
    onclick: (ev: MouseEvent) => {
      current = name;
      pre.firstElementChild!.textContent = text;
      for (const b of tabBar.querySelectorAll("button")) b.setAttribute("aria-selected", String(b === ev.currentTarget));
    },
  }, name)));
  clear(root,
    h("h1", {}, "Welcome to Faregate"),
    h("p", { class: "lead" }, "Everything you need for your first request is on this page."),
    h("section", { class: "card" },
      h("h2", {}, "1. Base URL"),
      h("p", {}, "Point any OpenAI, Anthropic or Gemini SDK at this address:"),
      h("div", { class: "row" }, h("code", { class: "pill", "data-testid": "base-url" }, base), copyButton(() => base))),
    h("section", { class: "card" },
      h("h2", {}, "2. Your default API key"),
      key
        ? [h("p", { class: "notice warn" }, "Copy this key now. It is shown only once: we keep only a fingerprint of it."),
          h("div", { class: "row" }, h("code", { class: "secret", "data-testid": "new-secret" }, key), copyButton(() => key))]
        : h("p", {}, "Your default key was shown when you signed up. You can create another on the ", h("a", { href: "/keys" }, "API keys"), " page.")),
    h("section", { class: "card" },
      h("h2", {}, "3. A first request"),
      h("p", {}, "Add credit in your ", h("a", { href: "/wallet" }, "wallet"), " first, then run:"),
      tabBar, pre, h("div", { class: "row" }, copyButton(() => code[current as keyof typeof code], "Copy snippet"))),
    h("p", {}, h("a", { href: "/wallet", class: "btn primary" }, "Add credit"), " ", h("a", { href: "/playground", class: "btn" }, "Try the playground"), " ",
      h("a", { href: "/dashboard", class: "btn" }, "Go to the dashboard")),
  );
}
