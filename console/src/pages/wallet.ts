import { clearErrors, get, post, put, qs, showErrors } from "../api";
import { button, clear, field, h, input, notice } from "../dom";
import { parseUsd, usd, when } from "../format";

interface Wallet { balance_micros: number; spendable_micros: number; plan_credit_micros: number; low_threshold_micros: number }
interface Options { presets: { amount_micros: number }[]; min_micros: number; max_micros: number; bonus_tiers: { min_micros: number; percent: number }[]; provider: string }
interface Payment { payment_id: string; status: string; purpose: string; amount_micros: number; bonus_micros: number; checkout_url: string; provider: string }
interface Plan { plan_id: string; name: string; price_micros: number; credit_micros: number; validity_days: number; models: string[] }
interface Held { grant_id: string; name: string; credit_micros: number; remaining_micros: number; expires_at: string; status: string }
interface LedgerRow { seq: number; kind: string; amount_micros: number; balance_after: number; model: string | null; reason: string | null; reference: string | null; bonus_micros: number | null; occurred_at: string }
interface Prefs { email: string | null; email_alerts: string[]; webhook_url: string | null; webhook_alerts: string[]; webhook_secret_set: boolean; available_alerts: string[] }

/** The bonus billing adds to a payment: the highest tier whose minimum it reaches (services/billing/ledger.py). */
export function bonusFor(paid: number, tiers: { min_micros: number; percent: number }[]): { micros: number; percent: number } {
  let pct = 0;
  for (const t of [...tiers].sort((a, b) => a.min_micros - b.min_micros)) if (paid >= t.min_micros) pct = t.percent;
  return { micros: Math.floor((paid * pct) / 100), percent: pct };
}

function submitting(form: HTMLFormElement, note: ReturnType<typeof notice>, fn: () => Promise<void>): void {
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    note.reset();
    const btn = form.querySelector<HTMLButtonElement>("button[type=submit]");
    if (btn) btn.disabled = true;
    try { await fn(); } catch (err) { showErrors(form, err, note); } finally { if (btn) btn.disabled = false; }
  });
}

export async function walletPage(root: HTMLElement): Promise<void> {
  const balanceCard = h("section", { class: "card balance-card", "aria-label": "Balance" });
  const topup = h("section", { class: "card" });
  const plans = h("section", { class: "card" });
  const redeem = h("section", { class: "card" });
  const ledger = h("section", { class: "card wide" });
  const alerts = h("section", { class: "card" });
  clear(root, h("h1", {}, "Wallet"), h("div", { class: "grid" }, balanceCard, topup, plans, redeem, alerts, ledger));

  async function loadBalance(): Promise<Wallet> {
    const w = await get<Wallet>("/v1/billing/wallet");
    clear(balanceCard, h("h2", {}, "Balance"),
      h("p", { class: "big", "data-testid": "balance" }, usd(w.balance_micros)),
      h("dl", { class: "facts" },
        h("dt", {}, "Spendable now"), h("dd", {}, usd(w.spendable_micros)),
        h("dt", {}, "Plan credit"), h("dd", {}, usd(w.plan_credit_micros)),
        h("dt", {}, "Low-balance alert below"), h("dd", {}, usd(w.low_threshold_micros))));
    return w;
  }

  // --- top-up: presets or an amount, the bonus shown before paying ---
  const opts = await get<Options>("/v1/billing/topup-options");
  const amount = input({ inputmode: "decimal", placeholder: `${usd(opts.min_micros)} – ${usd(opts.max_micros)}`, autocomplete: "off" });
  const preview = h("p", { class: "bonus-preview", "aria-live": "polite", "data-testid": "bonus-preview" });
  const updatePreview = (): void => {
    const paid = parseUsd(amount.value);
    if (paid === null || paid === 0) { preview.textContent = ""; return; }
    const b = bonusFor(paid, opts.bonus_tiers);
    preview.textContent = b.micros
      ? `You pay ${usd(paid)} and get ${usd(paid + b.micros)}: a ${b.percent}% bonus of ${usd(b.micros)}.`
      : `You pay ${usd(paid)} and get ${usd(paid)}.`;
  };
  amount.addEventListener("input", updatePreview);
  const presets = h("div", { class: "presets", role: "group", "aria-label": "Preset amounts" }, opts.presets.map((p) => {
    const b = bonusFor(p.amount_micros, opts.bonus_tiers);
    return button(usd(p.amount_micros, 0) + (b.percent ? ` +${b.percent}%` : ""), () => {
      amount.value = String(p.amount_micros / 1e6);
      updatePreview();
    }, "preset", { "data-amount": p.amount_micros });
  }));
  const payArea = h("div", {});
  const topNote = notice();
  const topForm = h("form", { novalidate: true }, presets, field("Amount (USD)", "amount_micros", amount), preview,
    topNote, h("button", { type: "submit", class: "primary" }, "Continue to payment"), payArea) as HTMLFormElement;
  submitting(topForm, topNote, async () => {
    const paid = parseUsd(amount.value);
    if (paid === null) {
      showErrors(topForm, { fields: { amount_micros: "Enter an amount in dollars, like 20 or 12.50." }, message: "" } as never, topNote);
      return;
    }
    const pay = await post<Payment>("/v1/billing/topups", { amount_micros: paid });
    renderPayment(pay);
  });
  function renderPayment(pay: Payment): void {
    const payNote = notice();
    const sandbox = pay.provider === "sandbox";
    clear(payArea, h("div", { class: "payment", "data-testid": "payment" },
      h("p", {}, `Payment of ${usd(pay.amount_micros)}`, pay.bonus_micros ? ` (+${usd(pay.bonus_micros)} bonus)` : "", ` — ${pay.status}.`),
      sandbox
        ? [h("p", { class: "muted" }, "Demo payment provider: no money moves."),
          button("Pay now (sandbox)", async () => {
            try {
              const done = await post<Payment>(`/v1/billing/sandbox/payments/${pay.payment_id}/pay`);
              if (done.purpose === "plan") {
                await walletPage(root);  // the held plans and the balance both changed
                return;
              }
              payNote.ok(`Paid. ${usd(done.amount_micros + done.bonus_micros)} added to your wallet.`);
              await Promise.all([loadBalance(), loadLedger(true)]);
            } catch (err) { payNote.fail((err as Error).message); }
          }, "primary")]
        : h("a", { href: pay.checkout_url, class: "btn primary", rel: "noopener" }, "Pay with the payment provider"),
      payNote));
  }
  clear(topup, h("h2", {}, "Add credit"),
    opts.bonus_tiers.length ? h("p", { class: "muted" }, "Bonus: ", opts.bonus_tiers.map((t) => `${t.percent}% from ${usd(t.min_micros, 0)}`).join(", "), ".") : null,
    topForm);

  // --- plans ---
  const planNote = notice();
  const [available, held] = await Promise.all([get<Plan[]>("/v1/billing/plans"), get<Held[]>("/v1/billing/plans/held")]);
  clear(plans, h("h2", {}, "Plans"),
    available.length
      ? h("ul", { class: "plain" }, available.map((p) => h("li", { class: "plan" },
        h("div", {}, h("strong", {}, p.name), h("p", { class: "muted" },
          `${usd(p.credit_micros)} of credit for ${usd(p.price_micros)}, valid ${p.validity_days} days`,
          p.models.length ? ` (models: ${p.models.join(", ")})` : "")),
        button("Buy with balance", async () => {
          try {
            await post(`/v1/billing/plans/${encodeURIComponent(p.plan_id)}/buy`, { pay_with: "balance", idempotency_key: crypto.randomUUID() });
            planNote.ok(`Bought "${p.name}".`);
            await Promise.all([loadBalance(), loadLedger(true)]);
          } catch (err) { planNote.fail((err as Error).message); }
        }, "secondary"),
        button("Pay for it", async () => {
          try {
            renderPayment(await post<Payment>(`/v1/billing/plans/${encodeURIComponent(p.plan_id)}/buy`, { pay_with: "payment" }));
            topup.scrollIntoView({ behavior: "smooth", block: "start" });
          } catch (err) { planNote.fail((err as Error).message); }
        }, "secondary"))))
      : h("p", { class: "muted" }, "No plans on offer."),
    held.length ? [h("h3", {}, "Your plans"), h("ul", { class: "plain" }, held.map((g) => h("li", {},
      `${g.name}: ${usd(g.remaining_micros)} of ${usd(g.credit_micros)} left, until ${when(g.expires_at)} (${g.status})`)))] : null,
    planNote);

  // --- redeem ---
  const codeNote = notice();
  const code = input({ autocomplete: "off", required: true });
  const codeForm = h("form", { novalidate: true }, field("Code", "code", code), codeNote,
    h("button", { type: "submit", class: "primary" }, "Redeem")) as HTMLFormElement;
  submitting(codeForm, codeNote, async () => {
    const out = await post<{ balance_micros: number }>("/v1/billing/redeem", { code: code.value.trim() });
    codeNote.ok(`Redeemed. Your balance is now ${usd(out.balance_micros)}.`);
    code.value = "";
    await Promise.all([loadBalance(), loadLedger(true)]);
  });
  clear(redeem, h("h2", {}, "Redeem a code"), codeForm);

  // --- alerts: threshold + notification preferences ---
  const w = await loadBalance();
  const thr = input({ inputmode: "decimal", value: String(w.low_threshold_micros / 1e6) });
  const alertNote = notice();
  let prefs: Prefs | null = null;
  try { prefs = await get<Prefs>("/api/notifications/preferences"); } catch { prefs = null; }
  const email = input({ type: "email", value: prefs?.email ?? "", placeholder: "your account's e-mail" });
  const webhook = input({ type: "url", value: prefs?.webhook_url ?? "", placeholder: "https://…" });
  const boxes = (selected: string[], name: string) => h("fieldset", { class: "checks" }, h("legend", {}, name === "email_alerts" ? "E-mail me about" : "Send to the webhook"),
    (prefs?.available_alerts ?? []).map((a) => h("label", {}, h("input", { type: "checkbox", name, value: a, checked: selected.includes(a) }), " ", a.replace(/_/g, " "))),
    h("p", { class: "field-error", "data-error-for": name }));
  const alertForm = h("form", { novalidate: true },
    field("Warn me when the balance falls below (USD)", "threshold_micros", thr),
    prefs ? [field("Alert e-mail", "email", email), boxes(prefs.email_alerts, "email_alerts"),
      field("Webhook URL", "webhook_url", webhook, prefs.webhook_secret_set ? "Signed with your webhook secret." : ""),
      boxes(prefs.webhook_alerts, "webhook_alerts")] : h("p", { class: "muted" }, "Notification preferences are unavailable right now."),
    alertNote, h("button", { type: "submit", class: "primary" }, "Save alerts")) as HTMLFormElement;
  submitting(alertForm, alertNote, async () => {
    const t = parseUsd(thr.value);
    if (t === null) {
      showErrors(alertForm, { fields: { threshold_micros: "Enter an amount in dollars." }, message: "" } as never, alertNote);
      return;
    }
    await put("/v1/billing/threshold", { threshold_micros: t });
    if (prefs) {
      const checked = (name: string) => [...alertForm.querySelectorAll<HTMLInputElement>(`input[name=${name}]:checked`)].map((i) => i.value);
      prefs = await put<Prefs>("/api/notifications/preferences", {
        email: email.value.trim() || null, email_alerts: checked("email_alerts"),
        webhook_url: webhook.value.trim() || null, webhook_alerts: checked("webhook_alerts"),
      });
    }
    alertNote.ok("Alert settings saved.");
    await loadBalance();
  });
  clear(alerts, h("h2", {}, "Low balance & notifications"), alertForm);

  // --- ledger ---
  let before: number | null = null;
  const body = h("tbody", {});
  const more = button("Older entries", () => loadLedger(false), "secondary");
  let generation = 0;
  async function loadLedger(reset: boolean): Promise<void> {
    // A reload may start while an earlier one is in flight: only the newest one writes rows.
    const mine = reset ? ++generation : generation;
    const page = await get<{ items: LedgerRow[]; next_before_seq: number | null }>(
      `/v1/billing/ledger${qs({ limit: 25, before_seq: reset ? null : before })}`);
    if (mine !== generation) return;
    if (reset) body.replaceChildren();
    for (const r of page.items) {
      body.append(h("tr", {},
        h("td", { "data-label": "When" }, when(r.occurred_at)),
        h("td", { "data-label": "Kind" }, r.kind),
        h("td", { "data-label": "Detail" }, r.model || r.reason || r.reference || ""),
        h("td", { "data-label": "Amount", class: r.amount_micros < 0 ? "neg num" : "pos num" }, usd(r.amount_micros)),
        h("td", { "data-label": "Balance after", class: "num" }, usd(r.balance_after))));
    }
    before = page.next_before_seq;
    more.hidden = before === null;
    if (!body.children.length) body.append(h("tr", {}, h("td", { colspan: 5, class: "empty" }, "No entries yet.")));
  }
  clear(ledger, h("h2", {}, "History"), h("div", { class: "table-wrap" }, h("table", { class: "table responsive" },
    h("thead", {}, h("tr", {}, ["When", "Kind", "Detail", "Amount", "Balance after"].map((t) => h("th", { scope: "col" }, t)))), body)), more);
  await loadLedger(true);
}
