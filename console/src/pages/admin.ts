import { ApiError, del, get, patch, post, put, qs } from "../api";
import { button, clear, confirmDialog, copyButton, h, input, notice } from "../dom";
import { form, list, table, Values } from "../forms";
import { parseUsd, perMillion, usd, when } from "../format";
import { Account } from "../api";

interface Channel { id: string; name: string; provider: string; base_url: string; api_keys: string[]; models: string[]; priority: number; weight: number; groups: string[]; status: string; cost_ratio_ppm: number }
interface ModelDef { name: string; provider: string; kind: string; context_window: number; max_output: number; price: { input: number; output: number; cached_input: number }; list_price: { input: number; output: number; cached_input: number } | null; fallbacks: string[]; image_price_micros: number }
interface Group { name: string; ratio_ppm: number; models: string[]; selectable?: boolean }
interface Catalog { version: number; discount_ppm: number; channels: Channel[]; models: ModelDef[]; groups: Group[] }
interface ChannelHealth { channel_id: string; state: string; since_ms: number; reason: string; open_until_ms: number; window_ok: number; window_errors: number }
interface ChannelTest { ok: boolean; status: number; latency_ms: number; error: string }
interface Plan { plan_id: string; name: string; price_micros: number; credit_micros: number; validity_days: number; models: string[]; active: boolean }

const SECTIONS: [string, string][] = [["users", "Users"], ["channels", "Channels"], ["models", "Models & prices"], ["groups", "Groups"],
  ["plans", "Plans"], ["codes", "Redemption codes"], ["bonus", "Bonus tiers"]];

function money(v: string | boolean, name: string): number {
  const m = parseUsd(String(v));
  if (m === null) throw new ApiError(400, "validation_error", `${name} is not an amount`, { [name]: "Enter an amount in dollars, like 5 or 0.25." });
  return m;
}

function intOf(v: string | boolean, name: string): number {
  const n = Number(v);
  if (!Number.isInteger(n)) throw new ApiError(400, "validation_error", `${name} must be a whole number`, { [name]: "Enter a whole number." });
  return n;
}

export async function adminPage(root: HTMLElement, _params: URLSearchParams, path: string): Promise<void> {
  const section = path.split("/")[2] || "users";
  const body = h("div", { class: "admin-body" });
  clear(root, h("h1", {}, "Admin"),
    h("nav", { class: "subnav", "aria-label": "Admin sections" }, h("ul", {}, SECTIONS.map(([id, label]) =>
      h("li", {}, h("a", { href: `/admin/${id}`, "aria-current": id === section ? "page" : false }, label))))),
    body);
  const render = { users, channels, models, groups, plans, codes, bonus }[section as "users"] ?? users;
  await render(body);
}

async function users(root: HTMLElement): Promise<void> {
  const q = input({ type: "search", placeholder: "e-mail or account id", "aria-label": "Search users" });
  const note = notice();
  const results = h("div", {});
  const adjustHolder = h("div", {});
  async function load(): Promise<void> {
    const page = await get<{ items: Account[]; total: number }>(`/api/admin/users${qs({ q: q.value.trim(), limit: 100 })}`);
    clear(results, table(["E-mail", "Role", "Status", "Group", "Created", ""], page.items.map((a) => [
      a.email, a.role, h("span", { class: `badge ${a.status}` }, a.status), a.group, when(a.created_at),
      h("div", { class: "actions" },
        button(a.status === "active" ? "Disable" : "Enable", async () => {
          try {
            await patch(`/api/admin/users/${a.id}`, { status: a.status === "active" ? "disabled" : "active" });
            note.ok(`${a.email} ${a.status === "active" ? "disabled" : "enabled"}.`);
            await load();
          } catch (err) { note.fail((err as Error).message); }
        }, "secondary small"),
        button("Adjust wallet", () => adjust(a), "secondary small")),
    ]), "No account matches."), h("p", { class: "muted" }, `${page.total} account(s)`));
  }
  function adjust(a: Account): void {
    clear(adjustHolder, h("section", { class: "card" }, h("h2", {}, `Adjust the wallet of ${a.email}`),
      form([
        { name: "amount_micros", label: "Amount (USD, negative to debit)", hint: "e.g. 5 or -2.50" },
        { name: "reason", label: "Reason (kept in the ledger)", required: true },
      ], "Adjust", async (v) => {
        const raw = String(v.amount_micros);
        const neg = raw.startsWith("-");
        const amount = money(neg ? raw.slice(1) : raw, "amount_micros") * (neg ? -1 : 1);
        if (!String(v.reason)) throw new ApiError(400, "validation_error", "reason required", { reason: "Say why: it is kept in the ledger." });
        const out = await post<{ balance_micros?: number }>(`/v1/admin/billing/wallets/${a.id}/adjust`, { amount_micros: amount, reason: v.reason, idempotency_key: crypto.randomUUID() });
        return `Done. Balance now ${usd(out.balance_micros ?? null)}.`;
      }, "grid2")));
    adjustHolder.scrollIntoView({ block: "start" });
    adjustHolder.querySelector<HTMLInputElement>("input")?.focus();
  }
  q.addEventListener("input", () => void load());
  clear(root, h("div", { class: "row" }, q), note, adjustHolder, results);
  await load();
}

async function channels(root: HTMLElement): Promise<void> {
  const cat = await get<Catalog>("/api/admin/catalog");
  // The breaker lives in the gateway; the page stays usable (without the rotation column) if it is down.
  const health = new Map<string, ChannelHealth>();
  let healthError = "";
  try {
    for (const row of (await get<{ channels: ChannelHealth[] }>("/api/admin/channels/health")).channels) health.set(row.channel_id, row);
  } catch (err) { healthError = (err as Error).message; }
  const rotation = (c: Channel): HTMLElement => {
    const row = health.get(c.id);
    if (!row) return h("span", { class: "muted small" }, healthError ? "gateway unreachable" : "unknown");
    const since = row.since_ms ? ` since ${when(new Date(row.since_ms).toISOString())}` : "";
    const label = row.state === "closed" ? (c.status === "enabled" ? "in rotation" : "breaker closed") : row.state === "open" ? "out of rotation" : "probing";
    return h("span", { class: "channel-health", "data-state": row.state },
      h("span", { class: `badge ${row.state === "closed" ? "active" : "disabled"}` }, label),
      row.state !== "closed" ? h("span", { class: "small" }, since, row.reason ? ` — ${row.reason}` : "") : "");
  };
  const tester = (c: Channel): HTMLElement => {
    const result = h("span", { class: "small channel-test-result", role: "status" });
    return h("span", {}, button("Test", async () => {
      result.textContent = "testing…";
      try {
        const t = await post<ChannelTest>(`/api/admin/channels/${encodeURIComponent(c.id)}/test`);
        result.textContent = t.ok ? `OK: ${t.status} in ${t.latency_ms} ms` : `Failed: ${t.error}${t.status ? ` (status ${t.status})` : ""} after ${t.latency_ms} ms`;
      } catch (err) { result.textContent = `Failed: ${(err as Error).message}`; }
    }, "secondary small"), " ", result);
  };
  const note = notice();
  if (healthError) note.fail(`Channel health unavailable: ${healthError}`);
  const editor = h("div", {});
  const channelForm = (c: Channel | null) => form([
    { name: "id", label: "Id", value: c?.id ?? "", hint: c ? "Fixed" : "Empty: one is made up" },
    { name: "name", label: "Name", value: c?.name ?? "", required: true },
    { name: "provider", label: "Provider", kind: "select", options: ["openai", "anthropic", "gemini"], value: c?.provider ?? "openai" },
    { name: "base_url", label: "Base URL", kind: "url", value: c?.base_url ?? "", required: true },
    { name: "api_keys", label: c ? "Add upstream keys" : "Upstream keys", hint: "Comma-separated; stored encrypted, never shown again" },
    { name: "models", label: "Models served", value: c?.models.join(", ") ?? "" },
    { name: "groups", label: "Groups (empty: all)", value: c?.groups.join(", ") ?? "" },
    { name: "priority", label: "Priority", kind: "number", value: c?.priority ?? 0 },
    { name: "weight", label: "Weight", kind: "number", value: c?.weight ?? 1 },
  ], c ? "Save channel" : "Add channel", async (v: Values) => {
    const body: Record<string, unknown> = { name: v.name, provider: v.provider, base_url: v.base_url, models: list(v.models), groups: list(v.groups),
      priority: intOf(v.priority, "priority"), weight: intOf(v.weight, "weight") };
    if (c) {
      if (list(v.api_keys).length) body.add_api_keys = list(v.api_keys);
      await patch(`/api/admin/channels/${encodeURIComponent(c.id)}`, body);
    } else {
      if (v.id) body.id = v.id;
      body.api_keys = list(v.api_keys);
      await post("/api/admin/channels", body);
    }
    await channels(root);
    return "Saved.";
  });
  clear(root, note,
    h("p", { class: "muted" }, "A channel is out of rotation when disabled here, or when the gateway's circuit breaker has opened it after upstream errors (Rotation column). Test sends one tiny request (max_tokens 1) through the channel; it is not billed and does not move the breaker."),
    table(["Channel", "Provider", "Base URL", "Models", "Priority / weight", "Upstream keys", "Status", "Rotation", "Test", ""], cat.channels.map((c) => [
      h("span", {}, h("strong", {}, c.name), h("br", {}), h("code", { class: "small" }, c.id)), c.provider, h("code", { class: "small" }, c.base_url),
      `${c.models.length} model(s)`, `${c.priority} / ${c.weight}`, c.api_keys.join(", ") || "none",
      h("span", { class: `badge ${c.status === "enabled" ? "active" : "disabled"}` }, c.status),
      rotation(c), tester(c),
      h("div", { class: "actions" },
        button("Edit", () => clear(editor, h("section", { class: "card" }, h("h2", {}, `Edit ${c.name}`), channelForm(c))), "secondary small"),
        button(c.status === "enabled" ? "Disable" : "Enable", async () => {
          try { await patch(`/api/admin/channels/${encodeURIComponent(c.id)}`, { status: c.status === "enabled" ? "disabled" : "enabled" }); await channels(root); }
          catch (err) { note.fail((err as Error).message); }
        }, "secondary small"),
        button("Delete", async () => {
          if (!(await confirmDialog(`Delete the channel "${c.name}"?`, "Delete"))) return;
          try { await del(`/api/admin/channels/${encodeURIComponent(c.id)}`); await channels(root); } catch (err) { note.fail((err as Error).message); }
        }, "danger small")),
    ])),
    editor,
    h("section", { class: "card" }, h("h2", {}, "Add a channel"), channelForm(null)));
}

async function models(root: HTMLElement): Promise<void> {
  const cat = await get<Catalog>("/api/admin/catalog");
  const editor = h("div", {});
  const note = notice();
  const modelForm = (m: ModelDef | null) => form([
    { name: "name", label: "Name", value: m?.name ?? "", required: true },
    { name: "provider", label: "Provider", value: m?.provider ?? "" },
    { name: "kind", label: "Kind", kind: "select", options: ["chat", "embedding", "image"], value: m?.kind ?? "chat" },
    { name: "context_window", label: "Context window", kind: "number", value: m?.context_window ?? 128000 },
    { name: "max_output", label: "Max output", kind: "number", value: m?.max_output ?? 8192 },
    { name: "input", label: "Input price / 1M (USD)", value: m ? m.price.input / 1e6 : "" },
    { name: "cached_input", label: "Cached input / 1M (USD)", value: m ? m.price.cached_input / 1e6 : "" },
    { name: "output", label: "Output price / 1M (USD)", value: m ? m.price.output / 1e6 : "" },
    { name: "fallbacks", label: "Fallbacks", value: m?.fallbacks.join(", ") ?? "" },
  ], m ? "Save model" : "Add model", async (v) => {
    const price = { input: money(v.input, "input"), output: money(v.output, "output"), cached_input: v.cached_input ? money(v.cached_input, "cached_input") : 0 };
    await put("/api/admin/models", { name: v.name, provider: v.provider, kind: v.kind, context_window: intOf(v.context_window, "context_window"),
      max_output: intOf(v.max_output, "max_output"), price, list_price: m?.list_price ?? null, fallbacks: list(v.fallbacks), image_price_micros: m?.image_price_micros ?? 0 });
    await models(root);
    return "Saved.";
  });
  clear(root, note, table(["Model", "Provider", "Kind", "Input / 1M", "Output / 1M", "List input / output", ""], cat.models.map((m) => [
    h("strong", {}, m.name), m.provider, m.kind, perMillion(m.price.input), perMillion(m.price.output),
    m.list_price ? `${perMillion(m.list_price.input)} / ${perMillion(m.list_price.output)}` : "—",
    h("div", { class: "actions" },
      button("Edit", () => clear(editor, h("section", { class: "card" }, h("h2", {}, `Edit ${m.name}`), modelForm(m))), "secondary small"),
      button("Delete", async () => {
        if (!(await confirmDialog(`Delete the model "${m.name}"?`, "Delete"))) return;
        try { await del(`/api/admin/models/${encodeURIComponent(m.name)}`); await models(root); } catch (err) { note.fail((err as Error).message); }
      }, "danger small")),
  ])), editor, h("section", { class: "card" }, h("h2", {}, "Add a model"), modelForm(null)));
}

async function groups(root: HTMLElement): Promise<void> {
  const cat = await get<Catalog>("/api/admin/catalog");
  const note = notice();
  clear(root, note, table(["Group", "Price multiplier", "Models", ""], cat.groups.map((g) => [
    h("strong", {}, g.name), `×${(g.ratio_ppm / 1e6).toFixed(3)}`, g.models.join(", ") || "all",
    button("Delete", async () => {
      if (!(await confirmDialog(`Delete the group "${g.name}"?`, "Delete"))) return;
      try { await del(`/api/admin/groups/${encodeURIComponent(g.name)}`); await groups(root); } catch (err) { note.fail((err as Error).message); }
    }, "danger small"),
  ])), h("section", { class: "card" }, h("h2", {}, "Add or change a group"), form([
    { name: "name", label: "Name", required: true },
    { name: "ratio", label: "Price multiplier", kind: "number", value: 1, hint: "1 = list price; 0.9 = 10% off" },
    { name: "models", label: "Models (empty: all)" },
    { name: "selectable", label: "Users may choose it for their keys", kind: "check" },
  ], "Save group", async (v) => {
    await put("/api/admin/groups", { name: v.name, ratio_ppm: Math.round(Number(v.ratio) * 1e6), models: list(v.models), selectable: v.selectable });
    await groups(root);
    return "Saved.";
  })));
}

async function plans(root: HTMLElement): Promise<void> {
  const all = await get<Plan[]>("/v1/admin/billing/plans");
  clear(root, table(["Plan", "Price", "Credit", "Valid", "Models", "Active"], all.map((p) => [
    h("span", {}, h("strong", {}, p.name), " ", h("code", { class: "small" }, p.plan_id)), usd(p.price_micros), usd(p.credit_micros),
    `${p.validity_days} days`, p.models.join(", ") || "all", p.active ? "yes" : "no",
  ])), h("section", { class: "card" }, h("h2", {}, "Add or change a plan"), form([
    { name: "plan_id", label: "Plan id", required: true },
    { name: "name", label: "Name", required: true },
    { name: "price", label: "Price (USD)" },
    { name: "credit", label: "Credit (USD)" },
    { name: "validity_days", label: "Valid for (days)", kind: "number", value: 30 },
    { name: "models", label: "Models (empty: all)" },
    { name: "active", label: "On offer", kind: "check", value: true },
  ], "Save plan", async (v) => {
    await put(`/v1/admin/billing/plans/${encodeURIComponent(String(v.plan_id))}`, { name: v.name, price_micros: money(v.price, "price"),
      credit_micros: money(v.credit, "credit"), validity_days: intOf(v.validity_days, "validity_days"), models: list(v.models), active: v.active });
    await plans(root);
    return "Saved.";
  })));
}

async function codes(root: HTMLElement): Promise<void> {
  const out = h("div", {});
  clear(root, h("section", { class: "card" }, h("h2", {}, "Generate redemption codes"),
    h("p", { class: "muted" }, "Codes are shown once, here: only their fingerprints are kept."),
    form([
      { name: "count", label: "How many", kind: "number", value: 10 },
      { name: "amount", label: "Credit each (USD)" },
      { name: "valid_days", label: "Valid for (days)", kind: "number", value: 30 },
    ], "Generate", async (v) => {
      const res = await post<{ codes: string[]; expires_at: string; amount_micros: number }>("/v1/admin/billing/codes", {
        count: intOf(v.count, "count"), amount_micros: money(v.amount, "amount_micros"), valid_days: intOf(v.valid_days, "valid_days") });
      clear(out, h("section", { class: "card" }, h("h3", {}, `${res.codes.length} codes of ${usd(res.amount_micros)}, valid until ${when(res.expires_at)}`),
        h("pre", { class: "code" }, res.codes.join("\n")), copyButton(() => res.codes.join("\n"), "Copy all")));
      return "Generated.";
    })), out);
}

async function bonus(root: HTMLElement): Promise<void> {
  const tiers = (await get<{ tiers: { min_micros: number; percent: number }[] }>("/v1/admin/billing/bonus-tiers")).tiers;
  clear(root, h("section", { class: "card" }, h("h2", {}, "Top-up bonus tiers"),
    h("p", { class: "muted" }, "One tier per line: minimum payment in USD and bonus percent, e.g. “50 5”. The highest tier reached applies."),
    form([{ name: "tiers", label: "Tiers", value: tiers.map((t) => `${t.min_micros / 1e6} ${t.percent}`).join(", "), hint: "Comma-separated pairs: 50 5, 100 10" }],
      "Save tiers", async (v) => {
        const pairs = String(v.tiers).split(/[,\n]/).map((s) => s.trim()).filter(Boolean).map((s) => {
          const [min, pct] = s.split(/\s+/);
          return { min_micros: money(min ?? "", "tiers"), percent: intOf(pct ?? "", "tiers") };
        });
        await put("/v1/admin/billing/bonus-tiers", { tiers: pairs });
        return "Saved.";
      }, "grid1")));
}
