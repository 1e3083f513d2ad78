// A tiny element builder: h("button", {class: "primary", onclick: fn}, "Save"). No framework needed.

type Child = Node | string | number | null | undefined | false | Child[];
type Attrs = Record<string, unknown>;

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K, attrs: Attrs = {}, ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") {
      el.addEventListener(k.slice(2), v as EventListener);
    } else if (k === "class") {
      el.className = String(v);
    } else if (k === "value" && "value" in el) {
      (el as unknown as { value: string }).value = String(v);
    } else if (k === "checked" && el instanceof HTMLInputElement) {
      el.checked = Boolean(v);
    } else {
      el.setAttribute(k, v === true ? "" : String(v));
    }
  }
  append(el, children);
  return el;
}

export function append(el: Element, children: Child[]): void {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

export function svg(tag: string, attrs: Record<string, string | number> = {}, ...children: (Node | string)[]): SVGElement {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  for (const c of children) el.append(c);
  return el;
}

export function clear(el: Element, ...children: Child[]): void {
  el.replaceChildren();
  append(el, children);
}

let seq = 0;
export function uid(stem: string): string {
  seq += 1;
  return `${stem}-${seq}`;
}

/** A labelled form field; the error slot below it shows the API's message for that field. */
export function field(label: string, name: string, input: HTMLElement, hint = ""): HTMLElement {
  const id = uid(name);
  input.id = id;
  input.setAttribute("name", name);
  const err = h("p", { class: "field-error", id: `${id}-error`, "data-error-for": name, role: "alert" });
  input.setAttribute("aria-describedby", `${id}-error`);
  return h("div", { class: "field" },
    h("label", { for: id }, label),
    input,
    hint ? h("p", { class: "hint" }, hint) : null,
    err);
}

export function input(attrs: Attrs = {}): HTMLInputElement {
  return h("input", { type: "text", ...attrs });
}

export function select(options: (string | [string, string])[], attrs: Attrs = {}): HTMLSelectElement {
  const el = h("select", attrs);
  for (const o of options) {
    const [value, label] = Array.isArray(o) ? o : [o, o];
    el.append(h("option", { value }, label));
  }
  if (attrs.value !== undefined) el.value = String(attrs.value);
  return el;
}

export function button(label: string, onclick: (ev: MouseEvent) => void, cls = "", attrs: Attrs = {}): HTMLButtonElement {
  return h("button", { type: "button", class: cls, onclick, ...attrs }, label);
}

/** Copy text to the clipboard; falls back to selecting a hidden textarea where the API is unavailable. */
export async function copyText(text: string): Promise<boolean> {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const ta = h("textarea", { class: "offscreen" }) as HTMLTextAreaElement;
    ta.value = text;
    document.body.append(ta);
    ta.select();
    const ok = document.execCommand("copy");
    ta.remove();
    return ok;
  }
}

export function copyButton(text: () => string, label = "Copy"): HTMLButtonElement {
  const b = button(label, async () => {
    const ok = await copyText(text());
    b.textContent = ok ? "Copied" : "Copy failed";
    setTimeout(() => (b.textContent = label), 1500);
  }, "secondary");
  return b;
}

/** A small status line for a section: ok / error messages that screen readers announce. */
export function notice(): HTMLElement & { ok(msg: string): void; fail(msg: string): void; reset(): void } {
  const el = h("p", { class: "notice", role: "status", "aria-live": "polite" }) as unknown as HTMLElement & {
    ok(msg: string): void; fail(msg: string): void; reset(): void;
  };
  el.ok = (m) => { el.className = "notice ok"; el.textContent = m; };
  el.fail = (m) => { el.className = "notice err"; el.textContent = m; };
  el.reset = () => { el.className = "notice"; el.textContent = ""; };
  return el;
}

export function confirmDialog(message: string, confirmLabel = "Confirm"): Promise<boolean> {
  return new Promise((resolve) => {
    const dlg = h("dialog", { class: "confirm", "aria-label": "Confirm" }) as HTMLDialogElement;
    const done = (v: boolean) => { dlg.close(); dlg.remove(); resolve(v); };
    dlg.append(
      h("p", {}, message),
      h("div", { class: "row end" },
        button("Cancel", () => done(false), "secondary"),
        button(confirmLabel, () => done(true), "danger")),
    );
    dlg.addEventListener("cancel", () => done(false));
    document.body.append(dlg);
    dlg.showModal();
  });
}
