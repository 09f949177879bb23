// Messages in the user's language: assets/i18n/{lang}.json (nested sections), English as the
// fallback; times and numbers formatted by Intl in that language.

export const LANGS = ["en", "de"];
const KEY = "lk.lang";
let lang = "en";
let messages = {};
let fallback = {};

/** The language chosen (localStorage `lk.lang`), else the browser's, else English. */
export function preferredLang() {
  let stored = null;
  try {
    stored = localStorage.getItem(KEY);
  } catch {
    /* storage may be off */
  }
  if (stored && LANGS.includes(stored)) return stored;
  for (const l of navigator.languages || [navigator.language || "en"]) {
    const base = String(l).toLowerCase().split("-")[0];
    if (LANGS.includes(base)) return base;
  }
  return "en";
}

async function load(l) {
  const r = await fetch(`assets/i18n/${l}.json`, { cache: "no-cache" });
  if (!r.ok) throw new Error(`messages ${l}: HTTP ${r.status}`);
  return r.json();
}

/** Loads the messages of `l` (and English as the fallback); remembers the choice if `remember`. */
export async function setLang(l, remember) {
  if (!LANGS.includes(l)) l = "en";
  if (!Object.keys(fallback).length) fallback = await load("en");
  messages = l === "en" ? fallback : await load(l);
  lang = l;
  document.documentElement.lang = l;
  if (remember) {
    try {
      localStorage.setItem(KEY, l);
    } catch {
      /* storage may be off */
    }
  }
}

export function currentLang() {
  return lang;
}

function lookup(obj, key) {
  let v = obj;
  for (const part of key.split(".")) {
    if (v === null || typeof v !== "object" || !(part in v)) return undefined;
    v = v[part];
  }
  return typeof v === "string" ? v : undefined;
}

/** t("fleet.title", {n: 3}): the message with `{name}` placeholders filled; the key if unknown. */
export function t(key, vars) {
  const msg = lookup(messages, key) ?? lookup(fallback, key) ?? key;
  if (!vars) return msg;
  return msg.replace(/\{(\w+)\}/g, (m, name) => {
    if (!(name in vars)) return m;
    const v = vars[name];
    return typeof v === "number" ? fmtNum(v) : String(v);
  });
}

/** A number in the user's language. */
export function fmtNum(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  return new Intl.NumberFormat(lang).format(n);
}

function toDate(v) {
  if (v === null || v === undefined || v === "" || v === 0) return null;
  const d = typeof v === "number" ? new Date(v) : new Date(String(v));
  return Number.isNaN(d.getTime()) ? null : d;
}

/** A time (RFC 3339 text or epoch milliseconds) as date and time in the user's language. */
export function fmtTime(v) {
  const d = toDate(v);
  if (!d) return "–";
  return new Intl.DateTimeFormat(lang, { dateStyle: "medium", timeStyle: "medium" }).format(d);
}

/** How long ago (RFC 3339 text or epoch milliseconds): "3 minutes ago". */
export function fmtAgo(v) {
  const d = toDate(v);
  if (!d) return "–";
  const s = Math.round((d.getTime() - Date.now()) / 1000);
  const rtf = new Intl.RelativeTimeFormat(lang, { numeric: "auto" });
  const abs = Math.abs(s);
  if (abs < 60) return rtf.format(s, "second");
  if (abs < 3600) return rtf.format(Math.round(s / 60), "minute");
  if (abs < 86400) return rtf.format(Math.round(s / 3600), "hour");
  return rtf.format(Math.round(s / 86400), "day");
}
