// The cabinet page (#/cabinets/{id}): the picture of its compartments (size, free/reserved/
// occupied, door, out of service) from /v1/cabinets/{id}/compartments and the doors of
// /v1/cabinets/{id}, updated live; recent events, active alerts, commands and their outcomes;
// per compartment the admin override "Open" with a mandatory reason. What the caller's scope
// may not read is left out of the page with a note, never an error.

const EVENT_PAGE = 1000;
const EVENT_PAGES_MAX = 20; // a refresh reads at most this many pages of new events
const EVENTS_SHOWN = 25;

export async function render(view, ctx) {
  const { h, t, api, apiUrl, replace, fmtNum, fmtTime, fmtAgo } = ctx;
  const id = ctx.params.id;
  const enc = encodeURIComponent(id);
  const s = ctx.session || {};
  const canOverride = s.scope === "operator" || s.scope === "site_manager";
  const canEvents = canOverride;

  const head = h("div", { class: "page-head" }, h("h1", { "data-test": "cabinet-title" }, t("cabinet.title", { id })));
  const info = h("div", { class: "kv", "data-test": "cabinet-info" });
  const grid = h("div", { class: "cab-grid", "data-test": "compartments" });
  const alertsBox = h("div", { "data-test": "cabinet-alerts" });
  const commandsBox = h("div", { "data-test": "cabinet-commands" });
  const eventsBox = h("div", { "data-test": "cabinet-events" });
  const crumbs = h("div", { class: "crumbs" }, h("a", { href: "#/fleet" }, "‹ ", t("nav.fleet")));
  const outcomes = new Map(); // compartment -> last override's command record (this page's)
  let events = []; // newest last
  let eventsAfter = 0;
  let eventsLoaded = false;

  view.append(
    crumbs,
    head,
    info,
    h("h2", null, t("cabinet.compartments")),
    legend(ctx),
    grid,
    h("div", { class: "grid-2" },
      h("section", null, h("h2", null, t("cabinet.alerts")), alertsBox),
      h("section", null, h("h2", null, t("cabinet.commands")), commandsBox)),
    h("section", null, h("h2", null, t("cabinet.events")), eventsBox));

  // ---- the compartments ----
  function tile(c, door) {
    const n = c.id;
    const status = c.status || "free";
    const doorState = door === true ? "open" : door === false ? "closed" : "unknown";
    const out = outcomes.get(n);
    return h("div", {
      class: ["comp", `comp-size-${c.size}`],
      "data-test": `compartment-${n}`,
      "data-state": status,
      "data-door": doorState,
      "data-size": c.size,
    },
    h("div", { class: "comp-head" },
      h("span", { class: "comp-num" }, String(n)),
      h("span", { class: "comp-size" }, t(`common.size_${c.size}`))),
    h("div", { class: "comp-state" }, stateIcon(status), " ", t(`cabinet.${status}`)),
    h("div", { class: "comp-door", "data-test": `door-${n}` }, doorState === "open" ? "▲ " : "", t(`cabinet.door_${doorState}`)),
    c.partition ? h("div", { class: "comp-order" }, h("span", { class: "badge" }, c.partition)) : null,
    c.order ? h("div", { class: "comp-order" }, t("cabinet.order"), " ",
      h("a", { href: `#/orders/${encodeURIComponent(c.order)}`, class: "mono", "data-test": `order-link-${n}` }, c.order)) : null,
    out ? h("div", { class: "comp-order", "data-test": `outcome-${n}`, "data-outcome": out.outcome || out.state },
      outcomeText(ctx, out)) : null,
    canOverride ? h("button", {
      type: "button",
      class: "btn btn-small",
      "data-test": `open-${n}`,
      onclick: () => openCompartment(n),
    }, t("cabinet.open")) : null);
  }

  async function loadPicture() {
    const [list, cab] = await Promise.all([
      api("GET", `/v1/cabinets/${enc}/compartments`),
      api("GET", `/v1/cabinets/${enc}`).catch((e) => {
        if (e.hidden) return null; // carriers do not see the cabinet's state: doors unknown
        throw e;
      }),
    ]);
    if (!ctx.current()) return;
    const doors = new Map();
    for (const c of (cab && cab.compartments) || []) doors.set(c.id, c.open);
    const comps = (list && list.compartments) || [];
    replace(grid, comps.map((c) => tile(c, doors.get(c.id))));
    const parts = [];
    if (cab) {
      parts.push(cab.online
        ? h("span", { class: "badge badge-ok", "data-test": "cabinet-online", "data-online": "true" }, "● ", t("common.online"))
        : h("span", { class: "badge badge-bad", "data-test": "cabinet-online", "data-online": "false" }, "○ ", t("common.offline")));
      if (cab.last_seen) parts.push(h("span", { title: fmtTime(cab.last_seen) }, t("cabinet.last_seen", { ago: fmtAgo(cab.last_seen) })));
      if (cab.power) parts.push(h("span", null, t("cabinet.battery", { pct: cab.power.soc_pct })));
      if (cab.firmware) parts.push(h("span", { class: "muted mono" }, `${cab.hardware || ""} ${cab.firmware}`));
    }
    const site = (list && list.site) || (cab && cab.site);
    if (site) {
      parts.push(h("a", { href: `#/sites/${encodeURIComponent(site)}` }, t("cabinet.site", { site })));
      replace(crumbs, h("a", { href: `#/sites/${encodeURIComponent(site)}` }, "‹ ", site));
    }
    replace(info, parts);
  }

  // ---- alerts, commands, events ----
  async function loadAlerts() {
    try {
      const r = await api("GET", apiUrl("/v1/alerts", { cabinet: id, state: "active" }));
      if (!ctx.current()) return;
      const list = (r && r.alerts) || [];
      replace(alertsBox, list.length
        ? h("ul", { class: "sizes" }, list.map((a) =>
          h("li", { "data-test": "alert-row", "data-alert": a.id },
            h("span", { class: `badge sev-${a.severity}` }, t(`common.severity_${a.severity}`)), " ",
            h("a", { href: "#/alerts" }, a.kind), a.subject ? ` · ${a.subject}` : "", " · ",
            h("span", { class: "muted", title: fmtTime(a.raised_at) }, fmtAgo(a.raised_at)),
            a.detail ? h("div", { class: "muted" }, a.detail) : null)))
        : h("p", { class: "muted" }, t("cabinet.no_alerts")));
    } catch (e) {
      if (ctx.current()) replace(alertsBox, partError(ctx, e));
    }
  }

  async function loadCommands() {
    if (!canOverride) {
      replace(commandsBox, h("p", { class: "muted" }, t("cabinet.not_allowed_part")));
      return;
    }
    try {
      const r = await api("GET", apiUrl(`/v1/cabinets/${enc}/commands`, { limit: 20 }));
      if (!ctx.current()) return;
      const list = (r && r.commands) || [];
      replace(commandsBox, list.length
        ? h("div", { class: "table-wrap" }, h("table", null,
          h("thead", null, h("tr", null,
            h("th", null, t("cabinet.col_time")), h("th", null, t("cabinet.col_action")),
            h("th", null, t("cabinet.col_state")), h("th", null, t("cabinet.col_outcome")), h("th", null, t("cabinet.col_by")))),
          h("tbody", null, list.map((c) =>
            h("tr", { "data-test": "command-row", "data-command": c.id, "data-state": c.state, "data-outcome": c.outcome || "" },
              h("td", { title: fmtTime(c.issued_at) }, fmtAgo(c.issued_at)),
              h("td", null, actionText(c.action)),
              h("td", null, commandBadge(ctx, c)),
              h("td", null, c.outcome || "–", c.detail ? h("div", { class: "muted" }, c.detail) : null),
              h("td", { class: "mono" }, c.created_by || "–"))))))
        : h("p", { class: "muted" }, t("cabinet.no_commands")));
    } catch (e) {
      if (ctx.current()) replace(commandsBox, partError(ctx, e));
    }
  }

  // The log is oldest first, paged by audit position (`after`). The newest page is found by
  // searching the position at which a page of EVENTS_SHOWN is still full (pages only shrink as
  // `after` grows): about 2·log2(positions) small reads, however long the cabinet's history.
  const eventsPage = async (after, limit) =>
    (await api("GET", apiUrl(`/v1/cabinets/${enc}/events`, { after, limit }))) || {};
  async function newestEvents() {
    const n = EVENTS_SHOWN;
    const full = async (after) => ((await eventsPage(after, n)).events || []).length === n;
    if (!(await full(0))) return eventsPage(0, n);
    let lo = 0; // a full page after lo
    let hi = 1;
    while (hi < 2 ** 53 && (await full(hi))) {
      lo = hi;
      hi *= 2;
    }
    while (hi - lo > 1) {
      const mid = Math.floor((lo + hi) / 2);
      if (await full(mid)) lo = mid;
      else hi = mid;
    }
    return eventsPage(lo, n);
  }

  async function loadEvents() {
    if (!canEvents) {
      replace(eventsBox, h("p", { class: "muted" }, t("cabinet.not_allowed_part")));
      return;
    }
    try {
      if (!eventsLoaded) {
        const r = await newestEvents();
        events = r.events || [];
        eventsAfter = r.next_after || 0;
      } else {
        // then follow the log from where it was read
        for (let i = 0; i < EVENT_PAGES_MAX; i++) {
          const r = await eventsPage(eventsAfter, EVENT_PAGE);
          const got = r.events || [];
          events = events.concat(got).slice(-EVENTS_SHOWN);
          if (r.next_after) eventsAfter = r.next_after;
          if (got.length < EVENT_PAGE) break;
        }
      }
      eventsLoaded = true;
      if (!ctx.current()) return;
      const shown = events.slice().reverse();
      replace(eventsBox, shown.length
        ? h("div", { class: "table-wrap" }, h("table", null,
          h("thead", null, h("tr", null,
            h("th", null, t("cabinet.col_time")), h("th", null, t("cabinet.col_kind")), h("th", null, t("cabinet.col_detail")))),
          h("tbody", null, shown.map((e) =>
            h("tr", { "data-test": "event-row", "data-kind": e.kind || "error" },
              h("td", { title: e.ts ? fmtTime(e.ts) : "" }, e.ts ? fmtTime(e.ts) : "–"),
              h("td", null, e.kind || "?"),
              h("td", { class: "mono" }, eventText(e)))))))
        : h("p", { class: "muted" }, t("cabinet.no_events")));
    } catch (e) {
      if (ctx.current()) replace(eventsBox, partError(ctx, e));
    }
  }

  // one read of the log at a time: a refresh waits for the one before it
  let eventsTurn = Promise.resolve();
  function loadEventsInTurn() {
    eventsTurn = eventsTurn.then(loadEvents, loadEvents);
  }

  // ---- the admin override ----
  async function openCompartment(n) {
    const reason = await ctx.confirmReason(t("cabinet.open_title", { n }));
    if (reason === null) return;
    try {
      const rec = await api("POST", `/v1/cabinets/${enc}/compartments/${n}/open`, { reason, wait_ms: 5000 });
      outcomes.set(n, rec || { state: "sent" });
      if (rec && rec.outcome) ctx.toast(t("cabinet.open_done", { n, outcome: rec.outcome }), rec.outcome === "opened" || rec.outcome === "already_open" ? "ok" : "error");
      else ctx.toast(t("cabinet.open_sent", { n }), "ok");
    } catch (e) {
      ctx.toast(e.hidden ? t("common.not_found") : e.message, "error");
    }
    refresh();
  }

  async function refreshOutcomes() {
    // a command still waiting for its outcome: read it again (the live `result` event says when)
    for (const [n, rec] of outcomes) {
      if (rec.id && !rec.outcome) {
        try {
          outcomes.set(n, await api("GET", `/v1/commands/${encodeURIComponent(rec.id)}`));
        } catch {
          /* shown as it was */
        }
      }
    }
  }

  async function refresh() {
    try {
      await refreshOutcomes();
      await loadPicture();
    } catch (e) {
      if (ctx.current()) ctx.toast(e.hidden ? t("common.not_found") : e.message, "error");
    }
    loadAlerts();
    loadCommands();
    if (eventsLoaded) loadEventsInTurn();
  }

  const later = ctx.debounce(refresh, 500);
  ctx.onLive((ev) => {
    if (ev.stream === "resync" || ev.cabinet === id) later();
  });

  await loadPicture(); // a 403/404 here is the page's "not found or not allowed"
  loadAlerts();
  loadCommands();
  loadEventsInTurn();
}

function legend(ctx) {
  const { h, t } = ctx;
  return h("div", { class: "legend", "aria-label": t("cabinet.legend") },
    ["free", "reserved", "occupied", "out_of_service"].map((s) =>
      h("span", { class: "legend-item", "data-state": s }, stateIcon(s), " ", t(`cabinet.${s}`))));
}

function stateIcon(status) {
  return { free: "○", reserved: "◐", occupied: "●", out_of_service: "✕" }[status] || "?";
}

function actionText(a) {
  if (!a) return "–";
  if (a.type === "unlock") return `unlock ${a.compartment}`;
  return a.type || JSON.stringify(a);
}

function commandBadge(ctx, c) {
  const { h } = ctx;
  const cls = c.state === "done"
    ? (c.outcome === "opened" || c.outcome === "already_open" || c.outcome === "done" ? "badge-ok" : "badge-bad")
    : c.state === "unconfirmed" ? "badge-warn" : "badge-info";
  return h("span", { class: `badge ${cls}` }, c.state);
}

function outcomeText(ctx, rec) {
  const { t } = ctx;
  return rec.outcome ? `${t("cabinet.col_outcome")}: ${rec.outcome}` : `${t("cabinet.col_state")}: ${rec.state || "sent"}`;
}

function eventText(e) {
  if (e.error) return e.error;
  const d = e.data || {};
  switch (e.kind) {
    case "door":
      return `#${d.compartment} ${d.open ? "open" : "closed"}${d.cause ? ` (${typeof d.cause === "string" ? d.cause : JSON.stringify(d.cause)})` : ""}${d.parcel === true ? " · parcel" : d.parcel === false ? " · empty" : ""}`;
    case "alarm":
      return `${d.alarm} ${d.active ? "active" : "cleared"}${d.compartment ? ` #${d.compartment}` : ""}${d.detail ? ` · ${d.detail}` : ""}`;
    case "scan":
      return `${d.source}`;
    default: {
      const s = JSON.stringify(d);
      return s.length > 160 ? `${s.slice(0, 160)}…` : s;
    }
  }
}

function partError(ctx, e) {
  const { h, t } = ctx;
  return h("p", { class: "muted" }, e.hidden ? t("cabinet.not_allowed_part") : e.message);
}
