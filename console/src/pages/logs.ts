import { get, qs, showErrors } from "../api";
import { button, clear, field, h, input, notice, select } from "../dom";
import { num, timeZone, usd, when } from "../format";
import { listKeys } from "./keys";

interface LogItem {
  time: string; request_id: string; key_id: string; model: string; endpoint: string; stream: boolean; status: number;
  error_code: string; prompt_tokens: number; completion_tokens: number; cached_tokens: number; cost_micros: number;
  charged: boolean; latency_ms: number; ttft_ms: number;
}

export async function logsPage(root: HTMLElement, params: URLSearchParams): Promise<void> {
  const tz = timeZone();
  const keys = await listKeys();
  const keyName = new Map(keys.map((k) => [k.id, k.label]));
  const f = {
    from: input({ type: "date", value: params.get("from") ?? "" }),
    to: input({ type: "date", value: params.get("to") ?? "" }),
    key: select([["", "All keys"], ...keys.map((k) => [k.id, `${k.label} (${k.prefix}…)`] as [string, string])], { value: params.get("key_id") ?? "" }),
    model: input({ value: params.get("model") ?? "", placeholder: "any model", list: "log-models" }),
    status: select([["", "Any status"], ["ok", "Succeeded"], ["error", "Failed"]], { value: params.get("status") ?? "" }),
  };
  const note = notice();
  // Suggestions for the model filter; the filter still takes any name (a model since removed from the catalog).
  const modelList = h("datalist", { id: "log-models" });
  get<{ models: { name: string }[] }>("/api/models").then((m) => modelList.replaceChildren(...m.models.map((x) => h("option", { value: x.name }))),
    () => undefined);
  const body = h("tbody", {});
  const csv = h("a", { class: "btn secondary", download: "", "data-testid": "csv-link" }, "Export CSV");
  const prev = button("Newer", () => { cursors.pop(); void load(cursors[cursors.length - 1] ?? null); }, "secondary");
  const next = button("Older", () => { if (nextCursor) { cursors.push(nextCursor); void load(nextCursor); } }, "secondary");
  const pageInfo = h("span", { class: "muted" });
  let nextCursor: string | null = null;
  const cursors: string[] = [];

  const filter = () => ({
    tz,
    // Dates are days in the viewer's zone; `to` is exclusive in the API, so the chosen day is included.
    from: f.from.value || null,
    to: f.to.value ? new Date(new Date(`${f.to.value}T00:00:00Z`).getTime() + 86400_000).toISOString().slice(0, 10) : null,
    key_id: f.key.value || null,
    model: f.model.value.trim() || null,
    status: f.status.value || null,
  });

  const form = h("form", { class: "filters card", novalidate: true },
    h("div", { class: "grid5" }, field("From", "from", f.from), field("To", "to", f.to), field("Key", "key_id", f.key),
      field("Model", "model", f.model), field("Status", "status", f.status)),
    h("div", { class: "row" }, h("button", { type: "submit", class: "primary" }, "Apply"), csv), note) as HTMLFormElement;
  form.addEventListener("submit", (ev) => { ev.preventDefault(); cursors.length = 0; void load(null); });

  async function load(cursor: string | null): Promise<void> {
    note.reset();
    const q = filter();
    const shown = new URL(location.href);
    shown.search = qs({ from: f.from.value, to: f.to.value, key_id: q.key_id, model: q.model, status: q.status });
    history.replaceState(null, "", shown.pathname + shown.search);
    csv.setAttribute("href", `/api/usage/logs.csv${qs(q)}`);
    try {
      const page = await get<{ items: LogItem[]; next_cursor: string | null }>(`/api/usage/logs${qs({ ...q, limit: 50, cursor })}`);
      nextCursor = page.next_cursor;
      clear(body, page.items.length ? page.items.map((r) => h("tr", { "data-request-id": r.request_id, class: r.status >= 400 ? "failed" : "" },
        h("td", { "data-label": "Time" }, when(r.time)),
        h("td", { "data-label": "Key" }, keyName.get(r.key_id) ?? r.key_id.slice(0, 8)),
        h("td", { "data-label": "Model" }, r.model),
        h("td", { "data-label": "Status" }, h("span", { class: `badge ${r.status >= 400 ? "disabled" : "active"}` }, r.error_code ? `${r.status} ${r.error_code}` : String(r.status))),
        h("td", { "data-label": "Tokens in / out", class: "num" }, `${num(r.prompt_tokens)} / ${num(r.completion_tokens)}`),
        h("td", { "data-label": "Cost", class: "num" }, usd(r.cost_micros), r.charged ? "" : h("span", { class: "muted", title: "not debited yet" }, " *")),
        h("td", { "data-label": "Latency", class: "num" }, `${num(r.latency_ms)} ms`, r.stream ? h("span", { class: "muted" }, ` (first token ${num(r.ttft_ms)} ms)`) : ""),
        h("td", { "data-label": "Request id" }, h("code", { class: "small" }, r.request_id))))
        : h("tr", {}, h("td", { colspan: 8, class: "empty" }, "No requests match these filters.")));
      prev.disabled = cursors.length === 0;
      next.disabled = !nextCursor;
      pageInfo.textContent = `Page ${cursors.length + 1}`;
    } catch (err) {
      showErrors(form, err, note);
    }
  }

  clear(root, h("h1", {}, "Usage logs"), form, modelList,
    h("div", { class: "table-wrap" }, h("table", { class: "table responsive logs" },
      h("thead", {}, h("tr", {}, ["Time", "Key", "Model", "Status", "Tokens in / out", "Cost", "Latency", "Request id"].map((t) => h("th", { scope: "col" }, t)))),
      body)),
    h("div", { class: "row pager" }, prev, pageInfo, next),
    h("p", { class: "muted" }, "Only metadata is kept: prompts and replies are never stored."));
  await load(null);
}
