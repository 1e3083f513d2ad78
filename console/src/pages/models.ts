import { get } from "../api";
import { clear, field, h, input, select } from "../dom";
import { num, perMillion, usd } from "../format";
import type { PublicModel } from "./playground";

interface Model extends PublicModel { list_price: { input: number; output: number; cached_input: number } | null; image_price_micros: number }

export async function modelsPage(root: HTMLElement): Promise<void> {
  const data = await get<{ models: Model[]; discount_ppm: number }>("/api/models");
  const providers = [...new Set(data.models.map((m) => m.provider))].sort();
  const search = input({ type: "search", placeholder: "Search models" });
  const provider = select([["", "All providers"], ...providers.map((p) => [p, p] as [string, string])]);
  const body = h("tbody", {});
  const draw = (): void => {
    const q = search.value.trim().toLowerCase();
    const rows = data.models.filter((m) => (!q || m.name.toLowerCase().includes(q)) && (!provider.value || m.provider === provider.value));
    clear(body, rows.map((m) => h("tr", { class: m.available ? "" : "unavailable" },
      h("td", { "data-label": "Model" }, h("strong", {}, m.name), m.available ? "" : h("span", { class: "muted" }, " (not served right now)")),
      h("td", { "data-label": "Provider" }, m.provider),
      h("td", { "data-label": "Kind" }, m.kind),
      h("td", { "data-label": "Context", class: "num" }, num(m.context_window)),
      m.kind === "image"
        ? h("td", { "data-label": "Price", class: "num", colspan: 3 }, `${usd(m.image_price_micros)} per image`)
        : [h("td", { "data-label": "Input / 1M", class: "num" }, perMillion(m.price.input),
          m.list_price && m.list_price.input > m.price.input ? h("s", { class: "muted" }, ` ${perMillion(m.list_price.input)}`) : ""),
        h("td", { "data-label": "Cached input / 1M", class: "num" }, perMillion(m.price.cached_input)),
        h("td", { "data-label": "Output / 1M", class: "num" }, perMillion(m.price.output))])));
    if (!rows.length) body.append(h("tr", {}, h("td", { colspan: 7, class: "empty" }, "No model matches.")));
  };
  search.addEventListener("input", draw);
  provider.addEventListener("change", draw);
  clear(root, h("h1", {}, "Models & pricing"),
    h("p", { class: "lead" }, "Prices in US dollars per million tokens. You pay only for what you use, from a prepaid wallet."),
    data.discount_ppm ? h("p", { class: "notice ok" }, `A ${(data.discount_ppm / 10_000).toFixed(0)}% platform discount is included in these prices.`) : null,
    h("div", { class: "filters row" }, field("Search", "q", search), field("Provider", "provider", provider)),
    h("div", { class: "table-wrap" }, h("table", { class: "table responsive" },
      h("thead", {}, h("tr", {}, ["Model", "Provider", "Kind", "Context", "Input / 1M", "Cached input / 1M", "Output / 1M"].map((t) => h("th", { scope: "col" }, t)))),
      body)));
  draw();
}
