// The console shell: session check, login and logout, the navigation bar, the global search,
// the language switch, the hash router, the one EventSource('/v1/live') that every page shares,
// toasts and the reason modal. Pages are modules in ./pages/ with `render(view, ctx)`.

import { h, clear, replace, debounce } from "./lib/dom.js";
import { api, apiUrl, ApiError, setCsrf, setUnauthorizedHandler } from "./lib/api.js";
import { t, setLang, preferredLang, currentLang, LANGS, fmtTime, fmtAgo, fmtNum } from "./lib/i18n.js";

const ROUTES = [
  [/^\/fleet$/, "fleet"],
  [/^\/sites\/([^/]+)$/, "site"],
  [/^\/cabinets\/([^/]+)$/, "cabinet"],
  [/^\/orders$/, "orders"],
  [/^\/orders\/([^/]+)$/, "order"],
  [/^\/alerts$/, "alerts"],
  [/^\/audit$/, "audit"],
  [/^\/webhooks$/, "webhooks"],
  [/^\/login$/, "login"],
];
const NAV = ["fleet", "orders", "alerts", "audit", "webhooks"];
const DEFAULT_HASH = "#/fleet";

const state = {
  session: null,
  live: null, // the EventSource
  liveState: "off",
  liveWasDown: false,
  listeners: new Set(), // live listeners of the page shown
  nav: 0, // navigation counter: a stale render's listeners are dropped
  afterLogin: DEFAULT_HASH,
};

const root = document.getElementById("app");
const els = {};

// ---------- routing ----------

function parseHash() {
  const raw = decodeURIComponent(location.hash.replace(/^#/, "")) || "";
  const [path, qs] = raw.split("?", 2);
  for (const [re, page] of ROUTES) {
    const m = re.exec(path || "");
    if (m) return { page, params: m[1] !== undefined ? { id: m[1] } : {}, query: new URLSearchParams(qs || "") };
  }
  return null;
}

function navigate(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

async function route() {
  const r = parseHash();
  if (!r) {
    navigate(state.session ? DEFAULT_HASH : "#/login");
    return;
  }
  if (!state.session && r.page !== "login") {
    state.afterLogin = location.hash;
    navigate("#/login");
    return;
  }
  if (state.session && r.page === "login") {
    navigate(DEFAULT_HASH);
    return;
  }
  await show(r);
}

async function show(r) {
  const nav = ++state.nav;
  state.listeners = new Set();
  renderChrome(r.page);
  const view = h("main", { id: "view", class: `view page-${r.page}`, "data-test": `page-${r.page}`, "data-page": r.page });
  const old = document.getElementById("view");
  if (old) old.replaceWith(view);
  else els.body.appendChild(view);
  const listeners = state.listeners;
  const ctx = {
    api,
    apiUrl,
    ApiError,
    t,
    h,
    clear,
    replace,
    fmtTime,
    fmtAgo,
    fmtNum,
    debounce,
    session: state.session,
    params: r.params,
    query: r.query,
    navigate,
    onLive: (fn) => {
      if (nav === state.nav) listeners.add(fn);
    },
    toast,
    confirmReason,
    errorBox,
    login,
    current: () => nav === state.nav,
  };
  try {
    const mod = await import(`./pages/${r.page}.js`);
    if (nav !== state.nav) return;
    await mod.render(view, ctx);
  } catch (e) {
    if (nav !== state.nav) return;
    if (e instanceof ApiError && e.status === 401) return; // the login page is on its way
    console.error(e);
    replace(view, errorBox(e));
  }
}

/** A box telling what went wrong; 403/404 read "not found or not allowed". */
function errorBox(e) {
  if (e instanceof ApiError && e.hidden) {
    return h("div", { class: "notice notice-error", role: "alert", "data-test": "not-found" },
      h("h2", null, t("common.not_found_title")),
      h("p", null, t("common.not_found")));
  }
  const msg = e instanceof ApiError ? `${e.message} (${e.status || t("common.network")})` : String(e && e.message || e);
  return h("div", { class: "notice notice-error", role: "alert", "data-test": "error" },
    h("h2", null, t("common.error_title")), h("p", null, msg));
}

// ---------- the shell ----------

function buildShell() {
  clear(root);
  els.header = h("header", { class: "topbar", "data-test": "topbar" });
  els.body = h("div", { class: "body" });
  els.toasts = h("div", { class: "toasts", "aria-live": "polite", "data-test": "toasts" });
  append(root, els.header, els.body, els.toasts);
}

function append(parent, ...kids) {
  for (const k of kids) parent.appendChild(k);
}

function renderChrome(page) {
  const hdr = els.header;
  clear(hdr);
  const brand = h("a", { class: "brand", href: state.session ? DEFAULT_HASH : "#/login" }, h("span", { class: "brand-mark", "aria-hidden": "true" }, "▦"), " ", t("common.app"));
  if (!state.session) {
    hdr.appendChild(h("div", { class: "topbar-row" }, brand));
    return;
  }
  const s = state.session;
  const navList = h("ul", { class: "nav-list" },
    NAV.map((p) =>
      h("li", null, h("a", {
        href: `#/${p}`,
        class: ["nav-link", navActive(page, p) && "active"],
        "aria-current": navActive(page, p) ? "page" : null,
        "data-test": `nav-${p}`,
      }, t(`nav.${p}`)))));
  const who = h("span", { class: "whoami", "data-test": "whoami", "data-scope": s.scope },
    h("span", { class: "who-name" }, s.name),
    " ",
    h("span", { class: `badge badge-scope scope-${s.scope}` }, scopeText(s)));
  const logout = h("button", { type: "button", class: "btn btn-quiet", "data-test": "logout", onclick: logoutClicked }, t("nav.logout"));
  const account = h("div", { class: "account" }, who, langPicker("lang"), logout);
  const nav = h("nav", { class: "nav", id: "nav", "data-test": "nav", "aria-label": t("nav.label") }, navList, account);
  const toggle = h("button", {
    type: "button",
    class: "nav-toggle",
    "aria-controls": "nav",
    "aria-expanded": "false",
    "data-test": "nav-toggle",
    onclick: () => {
      const open = !hdr.classList.contains("nav-open");
      hdr.classList.toggle("nav-open", open);
      toggle.setAttribute("aria-expanded", String(open));
    },
  }, h("span", { "aria-hidden": "true" }, "☰"), h("span", { class: "sr-only" }, t("nav.menu")));
  nav.addEventListener("click", (e) => {
    if (e.target instanceof HTMLAnchorElement) hdr.classList.remove("nav-open");
  });
  hdr.appendChild(h("div", { class: "topbar-row" }, toggle, brand, searchBox(), liveIndicator()));
  hdr.appendChild(nav);
}

function navActive(page, p) {
  return page === p || (p === "fleet" && (page === "site" || page === "cabinet")) || (p === "orders" && page === "order");
}

function scopeText(s) {
  const scope = t(`nav.scope_${s.scope}`);
  if (s.scope === "carrier" && s.carrier) return `${scope}: ${s.carrier}`;
  if (s.scope === "site_manager" && s.sites && s.sites.length) return `${scope}: ${s.sites.join(", ")}`;
  return scope;
}

function langPicker(test) {
  const sel = h("select", {
    class: "lang",
    "aria-label": t("common.language"),
    "data-test": test,
    onchange: async () => {
      await setLang(sel.value, true);
      buildShell();
      route();
    },
  }, LANGS.map((l) => h("option", { value: l, selected: l === currentLang() }, t(`common.lang_${l}`))));
  return sel;
}

// ---------- live updates ----------

function liveIndicator() {
  els.live = h("span", { class: "live", role: "status", "data-test": "live", "data-state": state.liveState });
  paintLive();
  return els.live;
}

function paintLive() {
  if (!els.live) return;
  els.live.setAttribute("data-state", state.liveState);
  replace(els.live,
    h("span", { class: "live-dot", "aria-hidden": "true" }),
    " ",
    t(state.liveState === "live" ? "common.live" : state.liveState === "off" ? "common.live_off" : "common.reconnecting"));
}

function setLive(s) {
  state.liveState = s;
  paintLive();
}

function dispatchLive(ev) {
  for (const fn of [...state.listeners]) {
    try {
      fn(ev);
    } catch (e) {
      console.error(e);
    }
  }
}

function startLive() {
  stopLive();
  let es;
  try {
    es = new EventSource("/v1/live", { withCredentials: true });
  } catch {
    setLive("reconnecting");
    return;
  }
  state.live = es;
  setLive("reconnecting");
  es.onopen = () => {
    setLive("live");
    if (state.liveWasDown) dispatchLive({ stream: "resync" });
    state.liveWasDown = false;
  };
  es.onerror = () => {
    if (state.live !== es) return;
    setLive("reconnecting");
    state.liveWasDown = true;
    if (es.readyState === EventSource.CLOSED) {
      // the server refused (a 401 ends an EventSource): check the session, retry if it lives
      state.live = null;
      checkSession().then((ok) => {
        if (ok && state.session && !state.live) setTimeout(() => state.session && !state.live && startLive(), 2000);
      });
    }
  };
  es.addEventListener("change", (m) => {
    let data;
    try {
      data = JSON.parse(m.data);
    } catch {
      return;
    }
    dispatchLive(data);
  });
  es.addEventListener("resync", () => dispatchLive({ stream: "resync" }));
}

function stopLive() {
  if (state.live) state.live.close();
  state.live = null;
  state.liveWasDown = false;
  setLive("off");
}

// ---------- search ----------

function searchBox() {
  const input = h("input", {
    type: "search",
    class: "search-input",
    placeholder: t("common.search_placeholder"),
    "aria-label": t("common.search"),
    autocomplete: "off",
    "data-test": "search-input",
  });
  const results = h("div", { class: "search-results", "data-test": "search-results", hidden: true });
  let seq = 0;
  const run = debounce(async () => {
    const q = input.value.trim();
    const mine = ++seq;
    if (q.length < 2) {
      results.hidden = true;
      clear(results);
      return;
    }
    try {
      const r = await api("GET", apiUrl("/v1/search", { q }));
      if (mine !== seq) return;
      showResults(results, r || {}, () => {
        input.value = "";
        results.hidden = true;
      });
    } catch (e) {
      if (mine !== seq) return;
      replace(results, h("p", { class: "muted" }, e instanceof ApiError ? e.message : String(e)));
      results.hidden = false;
    }
  }, 300);
  input.addEventListener("input", run);
  input.addEventListener("keydown", (e) => {
    if (e.key === "Escape") {
      results.hidden = true;
    } else if (e.key === "Enter") {
      e.preventDefault();
      const first = results.querySelector("a");
      if (first) first.click();
    }
  });
  document.addEventListener("click", (e) => {
    if (!form.contains(e.target)) results.hidden = true;
  });
  const form = h("form", { class: "search", role: "search", onsubmit: (e) => e.preventDefault() }, input, results);
  return form;
}

function showResults(box, r, done) {
  clear(box);
  const item = (href, kind, label, sub) =>
    h("li", null, h("a", { href, "data-test": "search-result", "data-kind": kind, onclick: done },
      h("span", { class: "badge" }, t(`common.kind_${kind}`)), " ", label, sub ? h("span", { class: "muted" }, ` ${sub}`) : null));
  const items = [
    ...(r.sites || []).map((s) => item(`#/sites/${encodeURIComponent(s.id)}`, "site", s.name || s.id, s.id)),
    ...(r.cabinets || []).map((c) => item(`#/cabinets/${encodeURIComponent(c.id)}`, "cabinet", c.id, c.site || "")),
    ...(r.orders || []).map((o) => item(`#/orders/${encodeURIComponent(o.id)}`, "order", o.tracking || o.id, o.state || "")),
  ];
  box.appendChild(items.length ? h("ul", { class: "search-list" }, items) : h("p", { class: "muted", "data-test": "search-empty" }, t("common.no_results")));
  box.hidden = false;
}

// ---------- toasts and the reason modal ----------

/** A short message at the corner of the screen; `kind`: ok | error. */
function toast(text, kind = "ok") {
  const el = h("div", { class: `toast toast-${kind}`, role: kind === "error" ? "alert" : "status", "data-test": "toast", "data-kind": kind },
    h("span", { class: "toast-icon", "aria-hidden": "true" }, kind === "error" ? "⚠" : "✓"), " ", text);
  els.toasts.appendChild(el);
  setTimeout(() => el.remove(), kind === "error" ? 8000 : 4000);
}

/** A modal asking for a mandatory reason (3 to 500 characters); resolves the text, or null. */
function confirmReason(title) {
  return new Promise((resolve) => {
    const input = h("textarea", { class: "reason-input", rows: "3", maxlength: "500", required: true, "data-test": "reason-input", id: "reason-input" });
    const ok = h("button", { type: "submit", class: "btn btn-primary", disabled: true, "data-test": "reason-ok" }, t("common.confirm"));
    const cancel = h("button", { type: "button", class: "btn", "data-test": "reason-cancel" }, t("common.cancel"));
    const form = h("form", { method: "dialog", class: "modal-form" },
      h("h2", null, title),
      h("label", { for: "reason-input" }, t("common.reason_label")),
      input,
      h("p", { class: "muted" }, t("common.reason_hint")),
      h("div", { class: "modal-actions" }, cancel, ok));
    const dlg = h("dialog", { class: "modal", "data-test": "reason-modal" }, form);
    let result = null;
    input.addEventListener("input", () => {
      ok.disabled = input.value.trim().length < 3;
    });
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      if (input.value.trim().length < 3) return;
      result = input.value.trim();
      dlg.close();
    });
    cancel.addEventListener("click", () => dlg.close());
    dlg.addEventListener("close", () => {
      dlg.remove();
      resolve(result);
    });
    document.body.appendChild(dlg);
    dlg.showModal();
    input.focus();
  });
}

// ---------- session ----------

async function checkSession() {
  try {
    const s = await api("GET", "/console/session");
    if (!state.session) {
      state.session = s;
      setCsrf(s.csrf);
    }
    return true;
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      endSession();
      navigate("#/login");
    }
    return false;
  }
}

/** Logs in with an API token (the login page calls this); throws ApiError. */
async function login(token) {
  const s = await api("POST", "/console/session", { token });
  state.session = s;
  setCsrf(s.csrf);
  startLive();
  const next = state.afterLogin && state.afterLogin !== "#/login" ? state.afterLogin : DEFAULT_HASH;
  state.afterLogin = DEFAULT_HASH;
  navigate(next);
}

function endSession() {
  state.session = null;
  setCsrf(null);
  stopLive();
  state.listeners = new Set();
  const view = document.getElementById("view");
  if (view) clear(view);
}

async function logoutClicked() {
  try {
    await api("DELETE", "/console/session");
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) {
      toast(e.message, "error");
      return;
    }
  }
  endSession();
  state.afterLogin = DEFAULT_HASH;
  // replace the history entry, so "back" does not come back to a page with data
  location.replace("#/login");
}

async function main() {
  await setLang(preferredLang(), false).catch(() => setLang("en", false));
  buildShell();
  setUnauthorizedHandler(() => {
    if (!state.session) return;
    endSession();
    state.afterLogin = location.hash || DEFAULT_HASH;
    navigate("#/login");
  });
  try {
    const s = await api("GET", "/console/session");
    state.session = s;
    setCsrf(s.csrf);
    startLive();
  } catch {
    state.session = null;
  }
  window.addEventListener("hashchange", route);
  route();
}

main();
