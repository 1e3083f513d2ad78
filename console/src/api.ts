// Calls the services' browser APIs on this origin. The session cookie is HttpOnly (scripts never see it); writes
// echo the readable `csrf` cookie in X-CSRF-Token (double submit). A 401 on a page that needs a login sends the
// person to /login and back to where they were afterwards.

export class ApiError extends Error {
  constructor(
    public status: number,
    public code: string,
    message: string,
    public fields: Record<string, string> = {},
  ) {
    super(message);
  }
}

export interface Account {
  id: string;
  email: string;
  role: string;
  status: string;
  group: string;
  created_at: string;
}

let onExpired: (() => void) | null = null;

/** Called when an authenticated call answers 401: the session ended (expired, logged out elsewhere). */
export function setSessionExpiredHandler(fn: () => void): void {
  onExpired = fn;
}

export function csrfToken(): string {
  const m = document.cookie.split(";").map((c) => c.trim()).find((c) => c.startsWith("csrf="));
  return m ? decodeURIComponent(m.slice(5)) : "";
}

function parseError(status: number, body: unknown, fallback: string): ApiError {
  // Keys/billing/usage/notifier: {"error": {"code", "message", "fields"?}}; Litestar's own: {"detail", "extra"}.
  if (body && typeof body === "object") {
    const b = body as Record<string, unknown>;
    const e = b.error;
    if (e && typeof e === "object") {
      const err = e as Record<string, unknown>;
      return new ApiError(status, String(err.code ?? err.type ?? "error"), String(err.message ?? fallback),
        (err.fields as Record<string, string>) ?? (err.param ? { [String(err.param)]: String(err.message) } : {}));
    }
    if (typeof e === "string") return new ApiError(status, "error", e);
    if (b.detail) {
      const fields: Record<string, string> = {};
      if (Array.isArray(b.extra)) {
        for (const x of b.extra as Record<string, unknown>[]) if (x.key) fields[String(x.key)] = String(x.message);
      }
      return new ApiError(status, "error", String(b.detail), fields);
    }
  }
  return new ApiError(status, "error", fallback);
}

export interface CallOptions {
  /** Do not treat a 401 as an expired session (the login form itself, the first /me probe). */
  quiet401?: boolean;
  signal?: AbortSignal;
}

export async function call<T = unknown>(method: string, url: string, body?: unknown, opts: CallOptions = {}): Promise<T> {
  const headers: Record<string, string> = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && method !== "HEAD") headers["X-CSRF-Token"] = csrfToken();
  let resp: Response;
  try {
    resp = await fetch(url, {
      method, headers, credentials: "same-origin", signal: opts.signal,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (exc) {
    if ((exc as Error).name === "AbortError") throw exc;
    throw new ApiError(0, "network", "The server could not be reached. Check your connection and try again.");
  }
  const text = await resp.text();
  let data: unknown = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = text; }
  }
  if (!resp.ok) {
    const err = parseError(resp.status, data, `${resp.status} ${resp.statusText}`);
    if (resp.status === 401 && !opts.quiet401 && onExpired) onExpired();
    throw err;
  }
  return data as T;
}

export const get = <T = unknown>(url: string, opts?: CallOptions) => call<T>("GET", url, undefined, opts);
export const post = <T = unknown>(url: string, body: unknown = {}, opts?: CallOptions) => call<T>("POST", url, body, opts);
export const put = <T = unknown>(url: string, body: unknown, opts?: CallOptions) => call<T>("PUT", url, body, opts);
export const patch = <T = unknown>(url: string, body: unknown, opts?: CallOptions) => call<T>("PATCH", url, body, opts);
export const del = <T = unknown>(url: string, opts?: CallOptions) => call<T>("DELETE", url, undefined, opts);

export function qs(params: Record<string, string | number | boolean | null | undefined>): string {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") p.set(k, String(v));
  const s = p.toString();
  return s ? `?${s}` : "";
}

/**
 * Show an API error next to the form fields it names (elements with data-error-for="<field>"), the rest in the
 * form's notice. Field names may arrive dotted ("price.input"); the last matching element wins.
 */
export function showErrors(form: HTMLElement, err: unknown, notice?: { fail(msg: string): void }): void {
  for (const el of form.querySelectorAll<HTMLElement>("[data-error-for]")) el.textContent = "";
  for (const el of form.querySelectorAll<HTMLElement>("[aria-invalid]")) el.removeAttribute("aria-invalid");
  const e = err instanceof ApiError ? err : new ApiError(0, "error", String((err as Error)?.message ?? err));
  let placed = false;
  for (const [name, msg] of Object.entries(e.fields)) {
    const slot = form.querySelector<HTMLElement>(`[data-error-for="${CSS.escape(name)}"]`)
      ?? form.querySelector<HTMLElement>(`[data-error-for="${CSS.escape(name.split(".")[0])}"]`);
    if (slot) {
      slot.textContent = msg;
      form.querySelector(`[name="${CSS.escape(name.split(".")[0])}"]`)?.setAttribute("aria-invalid", "true");
      placed = true;
    }
  }
  if (notice && (!placed || Object.keys(e.fields).length === 0)) notice.fail(e.message);
  else if (notice && placed) notice.fail("Please correct the highlighted fields.");
}

export function clearErrors(form: HTMLElement): void {
  for (const el of form.querySelectorAll<HTMLElement>("[data-error-for]")) el.textContent = "";
  for (const el of form.querySelectorAll<HTMLElement>("[aria-invalid]")) el.removeAttribute("aria-invalid");
}
