// Organisations (services/keys/orgs_api.py): the list and create form, one org's page (members, invitations,
// audit log, wallet), and the /orgs/join?token= page an invitation link opens.
import { del, get, patch, post, showErrors } from "../api";
import { button, clear, copyButton, field, h, input, notice, select } from "../dom";
import { form, table } from "../forms";
import { parseUsd, usd, when } from "../format";
import { navigate } from "../router";
import { session } from "../session";

interface Org { id: string; name: string; time_zone: string; default_allowance_micros: number; status: string; created_at: string; my_role: string }
interface Member { user_id: string; email: string; role: string; allowance_micros: number; allowance_used_micros: number; joined_at: string }
interface Invitation { id: string; email: string; role: string; allowance_micros: number | null; status: string; expires_at: string; created_at: string }
interface Audit { id: number; actor_id: string; action: string; subject_id: string; detail: Record<string, unknown>; at: string }
interface Wallet { balance_micros: number; spendable_micros: number }

const ROLES = ["owner", "admin", "member", "viewer"];
const INVITED_ROLES = ["member", "admin", "viewer"];

function allowance(micros: number | null): string {
  return micros === null ? "org default" : micros === 0 ? "none" : usd(micros);
}

export async function orgsPage(root: HTMLElement): Promise<void> {
  const orgs = await get<Org[]>("/api/orgs");
  const create = form([
    { name: "name", label: "Name", required: true },
    { name: "default_allowance_micros", label: "Default monthly allowance (USD)", value: "0", hint: "For new members; 0 means none." },
  ], "Create organisation", async (v) => {
    const micros = parseUsd(String(v.default_allowance_micros || "0"));
    if (micros === null) throw { fields: { default_allowance_micros: "Enter an amount in dollars, like 20 or 12.50." }, message: "" };
    const org = await post<Org>("/api/orgs", { name: v.name, default_allowance_micros: micros });
    navigate(`/orgs/${encodeURIComponent(org.id)}`);
  }, "grid2");
  clear(root, h("h1", {}, "Organisations"),
    h("div", { class: "grid" },
      h("section", { class: "card wide" }, h("h2", {}, "Yours"),
        table(["Name", "Your role", "Created"], orgs.map((o) => [
          h("a", { href: `/orgs/${encodeURIComponent(o.id)}` }, o.name), o.my_role, when(o.created_at)]),
        "You belong to no organisation yet.")),
      h("section", { class: "card" }, h("h2", {}, "New organisation"),
        h("p", { class: "muted" }, "It has its own wallet; you become its owner."), create)));
}

export async function orgPage(root: HTMLElement, _params: URLSearchParams, path: string): Promise<void> {
  const orgId = decodeURIComponent(path.slice("/orgs/".length));
  const base = `/api/orgs/${encodeURIComponent(orgId)}`;
  const org = await get<Org>(base);
  const manager = org.my_role === "owner" || org.my_role === "admin";
  const walletCard = h("section", { class: "card", "aria-label": "Wallet" });
  const membersCard = h("section", { class: "card wide" });
  const inviteCard = h("section", { class: "card" });
  const invitesCard = h("section", { class: "card wide" });
  const auditCard = h("section", { class: "card wide" });
  // Audit entries name people by account id; shown by e-mail where they are (still) members.
  const emails = new Map<string, string>();
  clear(root, h("p", {}, h("a", { href: "/orgs" }, "← Organisations")), h("h1", {}, org.name),
    h("p", { class: "muted" }, `Your role: ${org.my_role} · time zone ${org.time_zone}`),
    h("div", { class: "grid" }, walletCard, manager ? inviteCard : null, membersCard, manager ? invitesCard : null,
      manager ? auditCard : null));

  async function loadWallet(): Promise<void> {
    const usage = h("a", { href: `/api/usage/logs.csv?account_id=${encodeURIComponent(org.id)}`, download: "", class: "btn secondary" },
      "Download usage (CSV)");
    try {
      const w = await get<Wallet>(`/v1/billing/wallet?account_id=${encodeURIComponent(org.id)}`);
      clear(walletCard, h("h2", {}, "Wallet"), h("p", { class: "big", "data-testid": "org-balance" }, usd(w.balance_micros)),
        h("dl", { class: "facts" }, h("dt", {}, "Spendable now"), h("dd", {}, usd(w.spendable_micros))), usage);
    } catch (err) {
      clear(walletCard, h("h2", {}, "Wallet"), h("p", { class: "muted" }, (err as Error).message), usage);
    }
  }

  async function loadMembers(): Promise<void> {
    const members = await get<Member[]>(`${base}/members`);
    for (const m of members) emails.set(m.user_id, m.email);
    const note = notice();
    const rows = members.map((m) => {
      const self = m.user_id === session.account?.id;
      const cells: (Node | string)[] = [m.email, m.role, usd(m.allowance_used_micros), allowance(m.allowance_micros)];
      const actions = h("div", { class: "row" });
      if (manager) {
        actions.append(button("Edit", () => editMember(m), "secondary", { "aria-label": `Edit ${m.email}` }));
      }
      if (manager || self) {
        actions.append(button(self ? "Leave" : "Remove", async () => {
          try {
            await del(`${base}/members/${encodeURIComponent(m.user_id)}`);
            if (self) { navigate("/orgs"); return; }
            await Promise.all([loadMembers(), loadAudit()]);
          } catch (err) { note.fail((err as Error).message); }
        }, "danger", { "aria-label": `${self ? "Leave" : "Remove"} ${m.email}` }));
      }
      cells.push(actions);
      return cells;
    });
    clear(membersCard, h("h2", {}, "Members"), note,
      h("div", { "data-testid": "members" }, table(["E-mail", "Role", "Used this month", "Monthly allowance", ""], rows)));
  }

  function editMember(m: Member): void {
    const role = select(ROLES, { value: m.role });
    const amount = input({ inputmode: "decimal", value: m.allowance_micros ? String(m.allowance_micros / 1e6) : "0", autocomplete: "off" });
    const note = notice();
    const dlg = h("dialog", { class: "confirm", "aria-label": `Edit ${m.email}` }) as HTMLDialogElement;
    const f = h("form", { novalidate: true }, h("h2", {}, m.email),
      field("Role", "role", role), field("Monthly allowance (USD)", "allowance_micros", amount, "0 means no allowance."), note,
      h("div", { class: "row end" }, button("Cancel", () => { dlg.close(); dlg.remove(); }, "secondary"),
        h("button", { type: "submit", class: "primary" }, "Save"))) as HTMLFormElement;
    f.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const micros = parseUsd(amount.value);
      if (micros === null) {
        showErrors(f, { fields: { allowance_micros: "Enter an amount in dollars, like 20 or 12.50." }, message: "" } as never, note);
        return;
      }
      try {
        await patch(`${base}/members/${encodeURIComponent(m.user_id)}`, { role: role.value, allowance_micros: micros });
        dlg.close();
        dlg.remove();
        await Promise.all([loadMembers(), loadAudit()]);
      } catch (err) { showErrors(f, err, note); }
    });
    dlg.append(f);
    dlg.addEventListener("cancel", () => dlg.remove());
    document.body.append(dlg);
    dlg.showModal();
  }

  function renderInvite(): void {
    const linkArea = h("div", { "data-testid": "invite-link" });
    const f = form([
      { name: "email", label: "E-mail (leave empty for a link)", kind: "email" },
      { name: "role", label: "Role", kind: "select", options: INVITED_ROLES, value: "member" },
      { name: "allowance", label: "Monthly allowance (USD, empty for the org default)" },
    ], "Invite", async (v) => {
      let micros: number | null = null;
      if (v.allowance) {
        micros = parseUsd(String(v.allowance));
        if (micros === null) throw { fields: { allowance: "Enter an amount in dollars, like 20 or 12.50." }, message: "" };
      }
      const out = await post<{ invitation: Invitation; url: string }>(`${base}/invitations`,
        { email: v.email || null, role: v.role, allowance_micros: micros });
      clear(linkArea);
      if (!v.email) {
        const box = input({ readonly: true, value: out.url, "aria-label": "Invitation link" });
        linkArea.append(h("p", {}, "Share this link; it is shown only now and works once."), h("div", { class: "row" }, box, copyButton(() => out.url)));
      }
      await Promise.all([loadInvitations(), loadAudit()]);
      return v.email ? `Invitation e-mailed to ${v.email}.` : "Invitation link created.";
    }, "grid1");
    clear(inviteCard, h("h2", {}, "Invite someone"), f, linkArea);
  }

  async function loadInvitations(): Promise<void> {
    const invs = (await get<Invitation[]>(`${base}/invitations`)).filter((i) => i.status === "pending");
    const note = notice();
    clear(invitesCard, h("h2", {}, "Pending invitations"), note, table(["To", "Role", "Allowance", "Expires", ""],
      invs.map((i) => [i.email || "anyone with the link", i.role, allowance(i.allowance_micros), when(i.expires_at),
        button("Revoke", async () => {
          try {
            await del(`${base}/invitations/${encodeURIComponent(i.id)}`);
            await Promise.all([loadInvitations(), loadAudit()]);
          } catch (err) { note.fail((err as Error).message); }
        }, "danger", { "aria-label": `Revoke invitation ${i.email || i.id}` })]), "No pending invitations."));
  }

  async function loadAudit(): Promise<void> {
    if (!manager) return;
    const rows = await get<Audit[]>(`${base}/audit?limit=100`);
    // Amounts in the detail are micro-USD: the allowance changes' old/new and any *_micros field.
    const detail = (a: Audit): string => Object.entries(a.detail).map(([k, v]) => {
      const money = typeof v === "number" && (k.endsWith("micros") || (a.action.includes("allowance") && (k === "old" || k === "new")));
      return `${k}: ${money ? usd(v as number) : String(v)}`;
    }).join(", ");
    clear(auditCard, h("h2", {}, "Audit log"), h("div", { "data-testid": "audit" },
      table(["When", "By", "Action", "Subject", "Detail"], rows.map((a) => [when(a.at), emails.get(a.actor_id) ?? a.actor_id,
        a.action, emails.get(a.subject_id) ?? a.subject_id, detail(a)]),
        "Nothing recorded yet.")));
  }

  if (manager) renderInvite();
  await Promise.all([loadWallet(), loadMembers().then(loadAudit), manager ? loadInvitations() : null]);
}

export async function joinPage(root: HTMLElement, params: URLSearchParams): Promise<void> {
  const token = params.get("token") ?? "";
  const note = notice();
  if (!token) {
    clear(root, h("h1", {}, "Join an organisation"), h("p", {}, "This link has no invitation token. Ask for a new link."));
    return;
  }
  const answer = async (accept: boolean): Promise<void> => {
    try {
      if (accept) {
        await post("/api/orgs/invitations/accept", { token });
        navigate("/orgs");
      } else {
        await post("/api/orgs/invitations/decline", { token });
        clear(root, h("h1", {}, "Invitation declined"), h("p", {}, h("a", { href: "/dashboard" }, "Go to the dashboard")));
      }
    } catch (err) { note.fail((err as Error).message); }
  };
  clear(root, h("h1", {}, "Join an organisation"),
    h("section", { class: "card" },
      h("p", {}, `You were invited to join an organisation as ${session.account?.email ?? "you"}. Its wallet pays for the keys you create in it, within your allowance.`),
      note,
      h("div", { class: "row" }, button("Accept", () => void answer(true), "primary"), button("Decline", () => void answer(false), "secondary"))));
}
