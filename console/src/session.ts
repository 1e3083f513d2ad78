// Who is logged in, as the keys service says (/api/auth/me). Kept in memory only: the session itself lives in
// the HttpOnly cookie.
import { Account, get } from "./api";

export const session: { account: Account | null; checked: boolean } = { account: null, checked: false };

export async function refreshSession(): Promise<Account | null> {
  try {
    const me = await get<{ account: Account }>("/api/auth/me", { quiet401: true });
    session.account = me.account;
  } catch {
    session.account = null;
  }
  session.checked = true;
  return session.account;
}

/** What the onboarding page shows once, right after sign-up (the default key's secret is never shown again). */
export const onboarding: { apiKey: string | null } = { apiKey: null };

/**
 * Secrets of keys created in this tab (sign-up's default key, keys made on the keys page), so the playground can
 * offer them. Memory only: gone on reload, never written to storage; the server cannot show them again.
 */
export const tabSecrets: { label: string; prefix: string; secret: string }[] = [];

export function rememberSecret(label: string, secret: string): void {
  if (!tabSecrets.some((s) => s.secret === secret)) tabSecrets.unshift({ label, prefix: secret.slice(0, 10), secret });
}
