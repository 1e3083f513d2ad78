import { get, qs } from "../api";
import { barChart, pairChart, shareChart } from "../chart";
import { clear, field, h, select } from "../dom";
import { day, num, timeZone, usd } from "../format";
import { listKeys } from "./keys";

interface Totals { requests: number; errors: number; prompt_tokens: number; completion_tokens: number; cost_micros: number }
interface Summary { balance_micros: number | null; today: Totals; week: Totals; month: Totals; by_model: (Totals & { model: string })[] }
interface Point extends Totals { bucket: string; group: string }
interface Series { points: Point[]; granularity: string }

const SPANS: Record<string, { granularity: string; days: number; label: string }> = {
  daily: { granularity: "day", days: 30, label: "Daily, last 30 days" },
  weekly: { granularity: "week", days: 7 * 12, label: "Weekly, last 12 weeks" },
  monthly: { granularity: "month", days: 365, label: "Monthly, last 12 months" },
};

function bucketLabel(iso: string, granularity: string): string {
  return granularity === "month" ? new Date(iso).toLocaleDateString(undefined, { month: "short", year: "2-digit" }) : day(iso);
}

/** The API leaves out buckets without traffic; the charts show every bucket of the period, empty ones as zero. */
function fillBuckets(points: Point[], granularity: string, days: number): Point[] {
  const byLabel = new Map<string, Point>();
  for (const p of points) {
    const key = bucketLabel(p.bucket, granularity);
    const had = byLabel.get(key);
    byLabel.set(key, had ? { ...had, requests: had.requests + p.requests, errors: had.errors + p.errors,
      prompt_tokens: had.prompt_tokens + p.prompt_tokens, completion_tokens: had.completion_tokens + p.completion_tokens,
      cost_micros: had.cost_micros + p.cost_micros } : p);
  }
  const starts: Date[] = [];
  const now = new Date();
  const today = new Date(now.getFullYear(), now.getMonth(), now.getDate());
  if (granularity === "day") for (let i = days - 1; i >= 0; i--) starts.push(new Date(today.getFullYear(), today.getMonth(), today.getDate() - i));
  if (granularity === "week") {
    const monday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - ((today.getDay() + 6) % 7));
    for (let i = Math.round(days / 7) - 1; i >= 0; i--) starts.push(new Date(monday.getFullYear(), monday.getMonth(), monday.getDate() - 7 * i));
  }
  if (granularity === "month") for (let i = 11; i >= 0; i--) starts.push(new Date(today.getFullYear(), today.getMonth() - i, 1));
  const zero = { group: "", requests: 0, errors: 0, prompt_tokens: 0, completion_tokens: 0, cost_micros: 0 };
  const filled = starts.map((d) => byLabel.get(bucketLabel(d.toISOString(), granularity)) ?? { ...zero, bucket: d.toISOString() });
  // A bucket the calendar above did not foresee (another week start, say) still shows, in time order.
  const shown = new Set(filled.map((p) => bucketLabel(p.bucket, granularity)));
  const extra = [...byLabel.entries()].filter(([k]) => !shown.has(k)).map(([, p]) => p);
  return [...filled, ...extra].sort((a, b) => Date.parse(a.bucket) - Date.parse(b.bucket));
}

function stat(label: string, value: string, sub = ""): HTMLElement {
  return h("div", { class: "stat" }, h("span", { class: "label" }, label), h("strong", {}, value), sub ? h("span", { class: "muted" }, sub) : null);
}

export async function dashboardPage(root: HTMLElement, params: URLSearchParams): Promise<void> {
  const tz = timeZone();
  const keys = await listKeys();
  const keyFilter = select([["", "All keys"], ...keys.map((k) => [k.id, `${k.label} (${k.prefix}…)`] as [string, string])], { value: params.get("key") ?? "" });
  const spanPick = select([["daily", "Daily"], ["weekly", "Weekly"], ["monthly", "Monthly"]], { value: params.get("span") ?? "daily" });
  const stats = h("div", { class: "stats" });
  const charts = h("div", { class: "grid" });
  clear(root, h("div", { class: "page-head" }, h("h1", {}, "Dashboard"),
    h("div", { class: "filters row" }, field("Key", "key", keyFilter), field("Trend", "span", spanPick))), stats, charts);

  async function load(): Promise<void> {
    const keyId = keyFilter.value;
    const span = SPANS[spanPick.value] ?? SPANS.daily;
    const u = new URL(location.href);
    u.searchParams.set("span", spanPick.value);
    if (keyId) u.searchParams.set("key", keyId); else u.searchParams.delete("key");
    history.replaceState(null, "", u.pathname + u.search);
    const from = new Date(Date.now() - span.days * 86400_000).toISOString().slice(0, 10);
    // Every query on the page takes the key: with one picked, every number is that key's (the balance excepted:
    // a key has no wallet of its own).
    const key_id = keyId || null;
    const [summary, series] = await Promise.all([
      get<Summary>(`/api/usage/summary${qs({ tz, key_id })}`),
      get<Series>(`/api/usage/series${qs({ tz, granularity: span.granularity, from, key_id })}`),
    ]);
    const points = fillBuckets(series.points, span.granularity, span.days);
    const whose = keyId ? `, key "${keys.find((k) => k.id === keyId)?.label ?? keyId}"` : "";
    clear(stats,
      stat("Balance", usd(summary.balance_micros), keyId ? "whole account" : ""),
      stat(`Requests today${whose}`, num(summary.today.requests), `${usd(summary.today.cost_micros)} spent`),
      stat("This week", num(summary.week.requests), `${usd(summary.week.cost_micros)} spent`),
      stat("This month", num(summary.month.requests), `${usd(summary.month.cost_micros)} spent`),
      stat("Tokens in / out (month)", `${num(summary.month.prompt_tokens)} / ${num(summary.month.completion_tokens)}`));
    const label = (iso: string) => bucketLabel(iso, span.granularity);
    clear(charts,
      h("section", { class: "card wide" }, h("h2", {}, "Spending"), barChart(points.map((p) => ({ label: label(p.bucket), value: p.cost_micros, title: `${label(p.bucket)}: ${usd(p.cost_micros)}, ${num(p.requests)} requests` })),
        `${span.label}${keyId ? ", this key" : ""}`, (v) => usd(Math.round(v)))),
      h("section", { class: "card" }, h("h2", {}, "Requests"), barChart(points.map((p) => ({ label: label(p.bucket), value: p.requests, title: `${label(p.bucket)}: ${num(p.requests)} requests, ${num(p.errors)} errors` })),
        span.label, (v) => num(Math.round(v)))),
      h("section", { class: "card" }, h("h2", {}, "Input vs output tokens"), pairChart(points.map((p) => ({ label: label(p.bucket), a: p.prompt_tokens, b: p.completion_tokens })),
        span.label, ["input", "output"], (v) => num(Math.round(v)))),
      h("section", { class: "card" }, h("h2", {}, "Models this month"), shareChart(summary.by_model.map((m) => ({ label: m.model, value: m.cost_micros || m.requests, text: `${num(m.requests)} req, ${usd(m.cost_micros)}` })),
        `Share of spending by model${keyId ? ", this key" : ""}`)),
    );
  }
  keyFilter.addEventListener("change", () => void load());
  spanPick.addEventListener("change", () => void load());
  await load();
}
