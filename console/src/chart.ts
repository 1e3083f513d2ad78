// Hand-drawn SVG charts: bars over time and a share list. Sized by viewBox so they scale to any width.
import { h, svg } from "./dom";

function axis(root: SVGElement, max: number, fmt: (v: number) => string, padL: number, padT: number, plotH: number, W: number): void {
  let last = "";
  for (const frac of [0, 0.5, 1]) {
    const y = padT + plotH * (1 - frac);
    root.append(svg("line", { x1: padL, x2: W - 8, y1: y, y2: y, class: "grid" }));
    const text = fmt(max * frac);
    // Small integer ranges would repeat a rounded label (0, 1, 1): show each value once.
    if (text !== last) root.append(svg("text", { x: padL - 6, y: y + 4, "text-anchor": "end", class: "axis" }, text));
    last = text;
  }
}

export interface Bar { label: string; value: number; title: string }

export function barChart(bars: Bar[], caption: string, fmt: (v: number) => string): HTMLElement {
  const W = 640, H = 220, padL = 56, padB = 28, padT = 10;
  const max = Math.max(1, ...bars.map((b) => b.value));
  const plotW = W - padL - 8, plotH = H - padB - padT;
  const step = bars.length ? plotW / bars.length : plotW;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": caption });
  axis(root, max, fmt, padL, padT, plotH, W);
  const every = Math.ceil(bars.length / 10);
  bars.forEach((b, i) => {
    const bh = (b.value / max) * plotH;
    const x = padL + i * step + step * 0.15;
    const rect = svg("rect", { x, y: padT + plotH - bh, width: Math.max(1, step * 0.7), height: Math.max(0, bh), class: "bar", rx: 2 });
    rect.append(svg("title", {}, b.title));
    root.append(rect);
    if (i % every === 0) root.append(svg("text", { x: x + step * 0.35, y: H - 8, "text-anchor": "middle", class: "axis" }, b.label));
  });
  if (!bars.length) root.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "axis" }, "No traffic in this period"));
  return h("figure", { class: "chart-fig" }, root, h("figcaption", {}, caption));
}

/** Shares as horizontal bars with labels: readable at phone width where a pie would not be. */
export function shareChart(items: { label: string; value: number; text: string }[], caption: string): HTMLElement {
  const total = items.reduce((s, i) => s + i.value, 0) || 1;
  return h("figure", { class: "share-fig" },
    h("ul", { class: "shares" }, items.map((i) => {
      const pct = (i.value / total) * 100;
      return h("li", {}, h("div", { class: "row between" }, h("span", {}, i.label), h("span", { class: "muted" }, `${i.text} · ${pct.toFixed(0)}%`)),
        h("div", { class: "share-track", "aria-hidden": "true" }, h("div", { class: "share-fill", style: `width:${pct.toFixed(1)}%` })));
    })),
    items.length ? null : h("p", { class: "muted" }, "No traffic yet."),
    h("figcaption", {}, caption));
}

/** Two stacked values per bucket (input vs output tokens). */
export function pairChart(points: { label: string; a: number; b: number }[], caption: string, names: [string, string], fmt: (v: number) => string): HTMLElement {
  const W = 640, H = 220, padL = 56, padB = 28, padT = 10;
  const max = Math.max(1, ...points.map((p) => p.a + p.b));
  const plotW = W - padL - 8, plotH = H - padB - padT;
  const step = points.length ? plotW / points.length : plotW;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": caption });
  axis(root, max, fmt, padL, padT, plotH, W);
  const every = Math.ceil(points.length / 10);
  points.forEach((p, i) => {
    const x = padL + i * step + step * 0.15;
    const ha = (p.a / max) * plotH, hb = (p.b / max) * plotH;
    const ra = svg("rect", { x, y: padT + plotH - ha, width: Math.max(1, step * 0.7), height: ha, class: "bar a" });
    ra.append(svg("title", {}, `${p.label}: ${fmt(p.a)} ${names[0]}`));
    const rb = svg("rect", { x, y: padT + plotH - ha - hb, width: Math.max(1, step * 0.7), height: hb, class: "bar b" });
    rb.append(svg("title", {}, `${p.label}: ${fmt(p.b)} ${names[1]}`));
    root.append(ra, rb);
    if (i % every === 0) root.append(svg("text", { x: x + step * 0.35, y: H - 8, "text-anchor": "middle", class: "axis" }, p.label));
  });
  return h("figure", { class: "chart-fig" }, root,
    h("figcaption", {}, caption, " ", h("span", { class: "legend a" }, names[0]), " ", h("span", { class: "legend b" }, names[1])));
}
