import { ApiError, clearErrors, del, get, patch, post, showErrors } from "../api";
import { button, clear, confirmDialog, copyButton, field, h, input, notice } from "../dom";
import { num, parseUsd, usd, when } from "../format";
import { rememberSecret } from "../session";

export interface Key {
  id: string;
  prefix: string;
  label: string;
  group: string;
  status: string;
  quota_micros: number;
  quota_used_micros: number;
  quota_left_micros: number | null;
  models: string[];
  ip_allow: string[];
  expires_at: string | null;
  rpm_limit: number;
  tpm_limit: number;
  concurrency_limit: number;
  last_used_at: string | null;
  created_at: string;
}

export async function listKeys(): Promise<Key[]> {
  const page = await get<{ items: Key[]; total: number }>("/api/keys/?limit=200");
  return page.items;
}

function list(text: string): string[] {
  return text.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean);
}

/** The create and edit form share fields; `key` fills them for an edit. */
function keyForm(key: Key | null): { form: HTMLFormElement; body(): Record<string, unknown> } {
  const f = {
    label: input({ value: key?.label ?? "", required: true, maxlength: 100 }),
    group: input({ value: key?.group ?? "", placeholder: "your account's group" }),
    quota: input({ value: key && key.quota_micros ? (key.quota_micros / 1e6).toString() : "", inputmode: "decimal", placeholder: "no limit" }),
    models: input({ value: key?.models.join(", ") ?? "", placeholder: "every model" }),
    ip: input({ value: key?.ip_allow.join(", ") ?? "", placeholder: "any address" }),
    expires: input({ type: "date", value: key?.expires_at ? key.expires_at.slice(0, 10) : "" }),
    rpm: input({ type: "number", min: 0, value: key ? key.rpm_limit : "", placeholder: "default" }),
    tpm: input({ type: "number", min: 0, value: key ? key.tpm_limit : "", placeholder: "default" }),
    conc: input({ type: "number", min: 1, value: key ? key.concurrency_limit : "", placeholder: "default" }),
  };
  const form = h("form", { class: "key-form grid2", novalidate: true },
    field("Label", "label", f.label),
    field("Group", "group", f.group),
    field("Quota (USD)", "quota_micros", f.quota, "Most this key may spend; empty = no limit (the wallet still bounds it)."),
    field("Models allowed", "models", f.models, "Comma-separated; empty = every model."),
    field("IP allow-list", "ip_allow", f.ip, "Addresses or CIDR ranges; empty = any."),
    field("Expires on", "expires_at", f.expires),
    field("Requests per minute", "rpm_limit", f.rpm, "0 = no limit."),
    field("Tokens per minute", "tpm_limit", f.tpm, "0 = no limit."),
    field("Concurrent requests", "concurrency_limit", f.conc),
  ) as HTMLFormElement;
  const body = (): Record<string, unknown> => {
    const out: Record<string, unknown> = { label: f.label.value.trim() };
    if (f.group.value.trim()) out.group = f.group.value.trim();
    if (f.quota.value.trim()) {
      const q = parseUsd(f.quota.value);
      if (q === null) throw new ApiError(400, "validation_error", "quota is not an amount", { quota_micros: "Enter an amount in dollars, like 5 or 2.50." });
      out.quota_micros = q;
    } else if (key) out.quota_micros = 0;
    out.models = list(f.models.value);
    out.ip_allow = list(f.ip.value);
    if (f.expires.value) out.expires_at = new Date(`${f.expires.value}T23:59:59`).toISOString();
    else if (key) out.expires_at = null;
    for (const [name, el] of [["rpm_limit", f.rpm], ["tpm_limit", f.tpm], ["concurrency_limit", f.conc]] as const) {
      if (el.value !== "") out[name] = Number(el.value);
    }
    return out;
  };
  return { form, body };
}

function statusBadge(status: string): HTMLElement {
  return h("span", { class: `badge ${status}` }, status);
}

export async function keysPage(root: HTMLElement): Promise<void> {
  const note = notice();
  const tableHolder = h("div", { class: "table-wrap" });
  const secretHolder = h("div", {});
  const createBtn = button("Create key", () => openCreate(), "primary");
  clear(root, h("div", { class: "page-head" }, h("h1", {}, "API keys"), createBtn), secretHolder, note, tableHolder);

  async function refresh(): Promise<void> {
    const keys = await listKeys();
    const rows = keys.map((k) => h("tr", { "data-key-id": k.id },
      h("td", { "data-label": "Label" }, h("strong", {}, k.label)),
      h("td", { "data-label": "Key" }, h("code", {}, `${k.prefix}…`)),
      h("td", { "data-label": "Status" }, statusBadge(k.status)),
      h("td", { "data-label": "Group" }, k.group),
      h("td", { "data-label": "Quota used / left" }, k.quota_micros ? `${usd(k.quota_used_micros)} / ${usd(k.quota_left_micros)}` : `${usd(k.quota_used_micros)} / no limit`),
      h("td", { "data-label": "Last used" }, when(k.last_used_at)),
      h("td", { "data-label": "Expires" }, k.expires_at ? when(k.expires_at) : "never"),
      h("td", { class: "actions" },
        button("Edit", () => openEdit(k), "secondary small"),
        k.status === "active"
          ? button("Disable", () => act(k, "disable"), "secondary small", { "aria-label": `Disable ${k.label}` })
          : button("Enable", () => act(k, "enable"), "secondary small", { "aria-label": `Enable ${k.label}` }),
        button("Delete", () => remove(k), "danger small", { "aria-label": `Delete ${k.label}` }))));
    clear(tableHolder, keys.length
      ? h("table", { class: "table responsive" },
        h("thead", {}, h("tr", {}, ["Label", "Key", "Status", "Group", "Quota used / left", "Last used", "Expires", ""].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, rows))
      : h("p", { class: "empty" }, "No keys yet. Create one to call the API."),
    h("p", { class: "muted" }, `${num(keys.length)} key${keys.length === 1 ? "" : "s"}`));
  }

  async function act(k: Key, what: "enable" | "disable"): Promise<void> {
    note.reset();
    try {
      await post(`/api/keys/${k.id}/${what}`);
      await refresh();
      note.ok(`Key "${k.label}" ${what}d.`);
    } catch (err) { note.fail((err as Error).message); }
  }

  async function remove(k: Key): Promise<void> {
    if (!(await confirmDialog(`Delete the key "${k.label}" (${k.prefix}…)? Clients using it stop working at once. This cannot be undone.`, "Delete key"))) return;
    try {
      await del(`/api/keys/${k.id}`);
      await refresh();
      note.ok(`Key "${k.label}" deleted.`);
    } catch (err) { note.fail((err as Error).message); }
  }

  function dialog(title: string, form: HTMLFormElement, submitLabel: string, onSubmit: () => Promise<void>): void {
    const formNote = notice();
    const dlg = h("dialog", { class: "modal", "aria-label": title }) as HTMLDialogElement;
    const submit = h("button", { type: "submit", class: "primary" }, submitLabel);
    form.append(formNote, h("div", { class: "row end span2" }, button("Cancel", () => { dlg.close(); dlg.remove(); }, "secondary"), submit));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      clearErrors(form);
      submit.disabled = true;
      try {
        await onSubmit();
        dlg.close();
        dlg.remove();
      } catch (err) {
        showErrors(form, err, formNote);
      } finally { submit.disabled = false; }
    });
    dlg.append(h("h2", {}, title), form);
    dlg.addEventListener("close", () => dlg.remove());
    document.body.append(dlg);
    dlg.showModal();
  }

  function openCreate(): void {
    const { form, body } = keyForm(null);
    dialog("Create an API key", form, "Create", async () => {
      const out = await post<{ key: Key; secret: string }>("/api/keys/", body());
      rememberSecret(out.key.label, out.secret);
      showSecret(out.key, out.secret);
      await refresh();
    });
  }

  function openEdit(k: Key): void {
    const { form, body } = keyForm(k);
    dialog(`Edit "${k.label}"`, form, "Save", async () => {
      await patch(`/api/keys/${k.id}`, body());
      await refresh();
      note.ok(`Key "${k.label}" saved.`);
    });
  }

  function showSecret(k: Key, secret: string): void {
    clear(secretHolder, h("section", { class: "card secret-card", role: "region", "aria-label": "New key" },
      h("h2", {}, `Your new key "${k.label}"`),
      h("p", { class: "notice warn" }, "Copy it now: this is the only time it is shown. We store only a fingerprint, so it cannot be shown again."),
      h("div", { class: "row" }, h("code", { class: "secret", "data-testid": "new-secret" }, secret), copyButton(() => secret)),
      button("I have saved it", () => clear(secretHolder), "secondary")));
  }

  await refresh();
}
