// A declarative form for the admin pages: labelled fields, API errors next to each, one submit handler.
import { clearErrors, showErrors } from "./api";
import { field, h, input, notice, select } from "./dom";

export type Spec =
  | { name: string; label: string; kind?: "text" | "number" | "email" | "password" | "url"; value?: string | number; hint?: string; required?: boolean }
  | { name: string; label: string; kind: "select"; options: (string | [string, string])[]; value?: string; hint?: string }
  | { name: string; label: string; kind: "check"; value?: boolean; hint?: string };

export type Values = Record<string, string | boolean>;

export function form(specs: Spec[], submitLabel: string, onSubmit: (v: Values) => Promise<string | void>, cls = "grid3"): HTMLFormElement {
  const note = notice();
  const els = new Map<string, HTMLInputElement | HTMLSelectElement>();
  const fields = specs.map((s) => {
    if (s.kind === "select") {
      const el = select(s.options, { value: s.value ?? "" });
      els.set(s.name, el);
      return field(s.label, s.name, el, s.hint);
    }
    if (s.kind === "check") {
      const el = h("input", { type: "checkbox", checked: s.value ?? false });
      els.set(s.name, el);
      return field(s.label, s.name, el, s.hint);
    }
    const el = input({ type: s.kind ?? "text", value: s.value ?? "", required: s.required ?? false });
    if (s.kind === "number") el.step = "any";
    els.set(s.name, el);
    return field(s.label, s.name, el, s.hint);
  });
  const submit = h("button", { type: "submit", class: "primary" }, submitLabel);
  const f = h("form", { class: "admin-form", novalidate: true }, h("div", { class: cls }, fields), note, submit) as HTMLFormElement;
  f.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearErrors(f);
    note.reset();
    const v: Values = {};
    for (const [name, el] of els) v[name] = el instanceof HTMLInputElement && el.type === "checkbox" ? el.checked : el.value.trim();
    submit.disabled = true;
    try {
      const msg = await onSubmit(v);
      if (msg) note.ok(msg);
    } catch (err) {
      showErrors(f, err, note);
    } finally {
      submit.disabled = false;
    }
  });
  return f;
}

export function list(text: string | boolean): string[] {
  return String(text).split(/[\s,]+/).map((s) => s.trim()).filter(Boolean);
}

export function table(headers: string[], rows: (Node | string)[][], empty = "Nothing here yet."): HTMLElement {
  return h("div", { class: "table-wrap" }, h("table", { class: "table responsive" },
    h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, rows.length ? rows.map((r) => h("tr", {}, r.map((c, i) => h("td", { "data-label": headers[i] ?? "" }, c))))
      : h("tr", {}, h("td", { colspan: headers.length, class: "empty" }, empty)))));
}
