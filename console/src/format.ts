// Money is integer micro-USD everywhere in the APIs; these only render it (and parse what a person types).

export function usd(micros: number | null | undefined, digits = 2): string {
  if (micros === null || micros === undefined) return "—";
  const neg = micros < 0;
  const abs = Math.abs(Math.trunc(micros));
  const whole = Math.floor(abs / 1_000_000);
  // Exact: every non-zero micro-dollar digit is shown, and at least `digits` decimals (none when digits is 0).
  let frac = String(abs % 1_000_000).padStart(6, "0").replace(/0+$/, "");
  if (frac.length < digits) frac = frac.padEnd(digits, "0");
  return `${neg ? "-" : ""}$${whole.toLocaleString("en-US")}${frac ? `.${frac}` : ""}`;
}

/** "12.50" -> 12500000; null when it is not a non-negative amount with at most 6 decimals. */
export function parseUsd(text: string): number | null {
  const m = /^\s*\$?(\d{1,9})(?:\.(\d{0,6}))?\s*$/.exec(text);
  if (!m) return null;
  return Number(m[1]) * 1_000_000 + Number((m[2] || "").padEnd(6, "0"));
}

/** Price per million tokens, as the catalog states it. */
export function perMillion(micros: number): string {
  return usd(micros, 2);
}

export function num(n: number | null | undefined): string {
  return n === null || n === undefined ? "—" : n.toLocaleString("en-US");
}

export function when(iso: string | null | undefined): string {
  if (!iso) return "—";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

export function day(iso: string): string {
  return new Date(iso).toLocaleDateString(undefined, { month: "short", day: "numeric" });
}

export function timeZone(): string {
  try {
    return Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  } catch {
    return "UTC";
  }
}
