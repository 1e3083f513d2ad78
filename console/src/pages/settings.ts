import { get, post } from "../api";
import { clear, copyButton, h, notice } from "../dom";
import { form, table } from "../forms";
import { when } from "../format";
import { session } from "../session";

interface Delivery { id: number; channel: string; kind: string; status: string; attempts: number; created_at: string; last_error?: string | null }

export async function settingsPage(root: HTMLElement): Promise<void> {
  const secretOut = h("div", {});
  const hookNote = notice();
  let deliveries: Delivery[] = [];
  try { deliveries = await get<Delivery[]>("/api/notifications/deliveries?limit=20"); } catch { deliveries = []; }
  clear(root, h("h1", {}, "Settings"),
    h("section", { class: "card" }, h("h2", {}, "Account"), h("p", {}, `Signed in as ${session.account?.email} (${session.account?.role}), group ${session.account?.group}.`)),
    h("section", { class: "card" }, h("h2", {}, "Change password"), form([
      { name: "current_password", label: "Current password", kind: "password", required: true },
      { name: "new_password", label: "New password", kind: "password", required: true, hint: "At least 10 characters. Other sessions are logged out." },
    ], "Change password", async (v) => {
      await post("/api/auth/password", { current_password: v.current_password, new_password: v.new_password });
      return "Password changed.";
    }, "grid2")),
    h("section", { class: "card" }, h("h2", {}, "Webhook"),
      h("p", { class: "muted" }, "Set the webhook URL and which alerts go there on the wallet page."),
      h("div", { class: "row" },
        h("button", { type: "button", class: "secondary", onclick: async () => {
          try {
            const out = await post<{ webhook_secret: string }>("/api/notifications/webhook/secret");
            clear(secretOut, h("p", { class: "notice warn" }, "Your new signing secret, shown once:"),
              h("div", { class: "row" }, h("code", { class: "secret" }, out.webhook_secret), copyButton(() => out.webhook_secret)));
          } catch (err) { hookNote.fail((err as Error).message); }
        } }, "New signing secret"),
        h("button", { type: "button", class: "secondary", onclick: async () => {
          try { await post("/api/notifications/webhook/test"); hookNote.ok("Test delivery queued."); } catch (err) { hookNote.fail((err as Error).message); }
        } }, "Send a test delivery")),
      secretOut, hookNote,
      h("h3", {}, "Recent deliveries"),
      table(["When", "Channel", "Kind", "Status", "Attempts"], deliveries.map((d) => [when(d.created_at), d.channel, d.kind, d.status, String(d.attempts)]), "No deliveries yet.")));
}
