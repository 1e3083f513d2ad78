import { get } from "../api";
import { button, clear, copyText, field, h, input, notice, select } from "../dom";
import { perMillion } from "../format";
import { tabSecrets } from "../session";
import { snippets } from "../snippets";

export interface PublicModel {
  name: string; provider: string; kind: string; context_window: number; max_output: number;
  price: { input: number; output: number; cached_input: number }; available: boolean;
}

interface Msg { role: string; content: string }

/** Read an OpenAI-style SSE stream, calling onDelta with each piece of text as it arrives. */
export async function readStream(resp: Response, onDelta: (text: string) => void): Promise<{ usage: Record<string, number> | null }> {
  const reader = resp.body!.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  let usage: Record<string, number> | null = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let cut: number;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const event = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return { usage };
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message ?? "the stream ended with an error");
        const text = chunk.choices?.[0]?.delta?.content;
        if (text) onDelta(text);
        if (chunk.usage) usage = chunk.usage;
      }
    }
  }
  return { usage };
}

export async function playgroundPage(root: HTMLElement): Promise<void> {
  const models = (await get<{ models: PublicModel[] }>("/api/models")).models.filter((m) => m.kind === "chat");
  const names = models.map((m) => m.name);
  const preferred = names.includes("gpt-4o-mini") ? "gpt-4o-mini" : names[0] ?? "";

  const keySelect = select([["", tabSecrets.length ? "Choose a key…" : "Paste a key below"],
    ...tabSecrets.map((s) => [s.secret, `${s.label} (${s.prefix}…)`] as [string, string])], { value: tabSecrets[0]?.secret ?? "" });
  const keyPaste = input({ type: "password", autocomplete: "off", placeholder: "sk-…", spellcheck: "false" });
  const apiKey = () => keyPaste.value.trim() || keySelect.value;

  const pickers = h("div", { class: "model-pickers" });
  const addPicker = (value: string) => {
    const sel = select(names, { value, "aria-label": "Model" });
    const row = h("div", { class: "row picker" }, sel,
      button("Remove", () => { if (pickers.children.length > 1) { row.remove(); layout(); } }, "link small", { "aria-label": "Remove this model" }));
    pickers.append(row);
  };
  addPicker(preferred);
  const chosen = () => [...pickers.querySelectorAll("select")].map((s) => s.value);

  const temperature = input({ type: "number", min: 0, max: 2, step: 0.1, value: 0.7 });
  const maxTokens = input({ type: "number", min: 1, max: 32000, step: 1, value: 256 });
  const topP = input({ type: "number", min: 0, max: 1, step: 0.05, value: 1 });
  const system = h("textarea", { rows: 2, placeholder: "Optional instructions for the model" });
  const prompt = h("textarea", { rows: 3, required: true, placeholder: "Ask something…" });
  const note = notice();
  const columns = h("div", { class: "compare" });
  const history = new Map<string, Msg[]>();
  let inflight: AbortController | null = null;

  const params = (): Record<string, number> => {
    const p: Record<string, number> = {};
    if (temperature.value !== "") p.temperature = Number(temperature.value);
    if (maxTokens.value !== "") p.max_tokens = Number(maxTokens.value);
    if (topP.value !== "" && Number(topP.value) !== 1) p.top_p = Number(topP.value);
    return p;
  };
  const messagesFor = (model: string, text: string): Msg[] => [
    ...(system.value.trim() ? [{ role: "system", content: system.value.trim() }] : []),
    ...(history.get(model) ?? []),
    ...(text ? [{ role: "user", content: text }] : []),
  ];

  function column(model: string): HTMLElement {
    let col = columns.querySelector<HTMLElement>(`[data-model="${CSS.escape(model)}"]`);
    if (!col) {
      col = h("section", { class: "column card", "data-model": model, "aria-label": `Replies from ${model}` },
        h("h2", {}, model), h("div", { class: "transcript", "aria-live": "polite" }));
      columns.append(col);
    }
    return col;
  }
  function layout(): void {
    const want = new Set(chosen());
    for (const c of [...columns.children] as HTMLElement[]) if (!want.has(c.dataset.model!)) c.remove();
    for (const m of want) column(m);
  }

  async function ask(model: string, text: string, signal: AbortSignal): Promise<void> {
    const transcript = column(model).querySelector(".transcript")!;
    transcript.append(h("div", { class: "msg user" }, h("span", { class: "who" }, "You"), h("p", {}, text)));
    const out = h("p", { class: "streaming" });
    const meta = h("p", { class: "meta" });
    const bubble = h("div", { class: "msg assistant", "data-testid": "reply" }, h("span", { class: "who" }, model), out, meta);
    transcript.append(bubble);
    const started = performance.now();
    let first = 0;
    try {
      const resp = await fetch("/v1/chat/completions", {
        method: "POST",
        headers: { "Content-Type": "application/json", Authorization: `Bearer ${apiKey()}` },
        body: JSON.stringify({ model, messages: messagesFor(model, text), ...params(), stream: true, stream_options: { include_usage: true } }),
        signal,
      });
      if (!resp.ok) {
        let message = `${resp.status} ${resp.statusText}`;
        try { const j = await resp.json(); message = j.error?.message ?? j.detail ?? message; } catch { /* not JSON */ }
        throw new Error(`The gateway refused the request (${resp.status}): ${message}`);
      }
      const { usage } = await readStream(resp, (delta) => {
        if (!first) first = performance.now();
        out.textContent += delta;
      });
      out.classList.remove("streaming");
      history.set(model, [...(history.get(model) ?? []), { role: "user", content: text }, { role: "assistant", content: out.textContent ?? "" }]);
      meta.textContent = `${Math.round(first - started)} ms to first token · ${Math.round(performance.now() - started)} ms total`
        + (usage ? ` · ${usage.prompt_tokens} in / ${usage.completion_tokens} out tokens` : "");
    } catch (err) {
      out.classList.remove("streaming");
      if ((err as Error).name === "AbortError") {
        meta.textContent = "Stopped.";
        return;
      }
      bubble.classList.add("error");
      bubble.setAttribute("role", "alert");
      out.textContent = (err as Error).message;
    }
  }

  const form = h("form", { class: "card playground-form", novalidate: true },
    h("div", { class: "grid2" },
      field("API key", "key", keySelect, "Keys you created in this tab. Secrets are never shown again after creation."),
      field("…or paste a key", "key_paste", keyPaste)),
    h("div", { class: "field" }, h("span", { class: "label" }, "Models (add more to compare side by side)"), pickers,
      button("Add a model to compare", () => { addPicker(names.find((n) => !chosen().includes(n)) ?? preferred); layout(); }, "secondary small")),
    h("details", {}, h("summary", {}, "Parameters"),
      h("div", { class: "grid3" }, field("Temperature", "temperature", temperature), field("Max tokens", "max_tokens", maxTokens), field("Top p", "top_p", topP)),
      field("System prompt", "system", system)),
    field("Message", "prompt", prompt),
    note,
    h("div", { class: "row" },
      h("button", { type: "submit", class: "primary" }, "Send"),
      button("Stop", () => inflight?.abort(), "secondary", { hidden: true, "data-role": "stop" }),
      button("Copy as code", () => showCode(), "secondary"),
      button("Clear chat", () => { history.clear(); columns.replaceChildren(); layout(); }, "link"))) as HTMLFormElement;
  pickers.addEventListener("change", layout);
  prompt.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) form.requestSubmit();
  });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    note.reset();
    const text = prompt.value.trim();
    if (!apiKey()) { note.fail("Choose or paste an API key first."); return; }
    if (!text) { note.fail("Write a message first."); return; }
    layout();
    prompt.value = "";
    const send = form.querySelector<HTMLButtonElement>("button[type=submit]")!;
    const stop = form.querySelector<HTMLButtonElement>("[data-role=stop]")!;
    inflight = new AbortController();
    send.disabled = true;
    stop.hidden = false;
    try { await Promise.all(chosen().map((m) => ask(m, text, inflight!.signal))); } finally {
      send.disabled = false;
      stop.hidden = true;
      inflight = null;
    }
  });

  const codeBox = h("div", {});
  function showCode(): void {
    const model = chosen()[0];
    const text = prompt.value.trim() || "Hello!";
    const code = snippets({ baseUrl: `${location.origin}/v1`, apiKey: "$FAREGATE_API_KEY", model,
      messages: messagesFor(model, text), params: params(), stream: true });
    clear(codeBox, h("section", { class: "card" }, h("h2", {}, "This request as code"),
      h("p", { class: "muted" }, "Set FAREGATE_API_KEY to your key (the snippet does not include it)."),
      Object.entries(code).map(([lang, src]) => h("div", { class: "snippet" },
        h("div", { class: "row between" }, h("h3", {}, lang), button(`Copy ${lang}`, () => void copyText(src), "secondary small")),
        h("pre", { class: "code", tabindex: "0" }, h("code", {}, src))))));
  }

  const info = models.find((m) => m.name === preferred);
  clear(root, h("h1", {}, "Playground"),
    info ? h("p", { class: "muted" }, `Prices per million tokens for ${info.name}: ${perMillion(info.price.input)} in, ${perMillion(info.price.output)} out. Requests here are billed like any other.`) : null,
    form, columns, codeBox);
  layout();
}
