// The fleet page (#/fleet): totals from /v1/fleet/summary and one server-side page of sites
// from /v1/fleet/sites (filter `q`, pages by `after`). Never fetches all cabinets, so it stays
// quick at 10,000; refetches (debounced, at least a second apart) on live events.

const SIZES = ["S", "M", "L", "XL"];
const PAGE = 50;

export async function render(view, ctx) {
  const { h, t, api, apiUrl, replace, fmtNum, fmtTime } = ctx;
  let q = ctx.query.get("q") || "";
  let after = ""; // the cursor of the page shown ("" = first page)
  const back = []; // cursors of the pages before it
  let nextAfter = null;

  const updated = h("span", { class: "muted", "data-test": "fleet-updated" });
  const summary = h("section", { class: "summary", "data-test": "fleet-summary", "aria-label": t("fleet.title") });
  const filter = h("input", {
    type: "search",
    value: q,
    placeholder: t("fleet.filter_placeholder"),
    "aria-label": t("common.filter"),
    "data-test": "fleet-filter",
  });
  const tbody = h("tbody", { "data-test": "sites-body" });
  const prev = h("button", { type: "button", class: "btn", "data-test": "fleet-prev", disabled: true }, "‹ ", t("common.previous"));
  const next = h("button", { type: "button", class: "btn", "data-test": "fleet-next", disabled: true }, t("common.next"), " ›");

  view.append(
    h("div", { class: "page-head" }, h("h1", null, t("fleet.title")), updated),
    summary,
    h("h2", null, t("fleet.sites")),
    h("div", { class: "toolbar" }, filter),
    h("div", { class: "table-wrap" },
      h("table", { "data-test": "sites-table" },
        h("thead", null, h("tr", null,
          h("th", null, t("fleet.col_site")),
          h("th", { class: "num" }, t("fleet.col_cabinets")),
          h("th", null, t("fleet.col_online")),
          h("th", { class: "num" }, t("fleet.col_occupancy")),
          h("th", null, t("fleet.col_alerts")),
          h("th", { class: "num" }, t("fleet.col_exceptions")))),
        tbody)),
    h("div", { class: "pager" }, prev, next));

  const tile = (label, value, test, cls) =>
    h("div", { class: ["tile", cls], "data-test": test },
      h("div", { class: "tile-label" }, label),
      h("div", { class: "tile-value", "data-test": `${test}-value` }, value === null || value === undefined ? "–" : fmtNum(value)));

  function paintSummary(s) {
    const comps = s.compartments || {};
    const sizes = SIZES.filter((z) => comps[z] && comps[z].total > 0).map((z) => {
      const c = comps[z];
      return h("li", { "data-test": `occupancy-${z}` },
        occupancyBar(h, c),
        t("fleet.size_line", { size: z, occupied: c.occupied || 0, reserved: c.reserved || 0, free: c.free || 0, total: c.total || 0 }),
        c.out_of_service ? ` · ${fmtNum(c.out_of_service)} ${t("fleet.out_of_service")}` : "");
    });
    const alerts = s.alerts || {};
    replace(summary, h("div", { class: "tiles" },
      tile(t("fleet.sites"), s.sites, "fleet-sites"),
      tile(t("fleet.cabinets"), s.cabinets, "fleet-cabinets"),
      tile(t("fleet.online"), s.online, "fleet-online", "tile-ok"),
      tile(t("fleet.offline"), s.offline, "fleet-offline", s.offline ? "tile-bad" : null),
      h("div", { class: "tile", "data-test": "fleet-alerts" },
        h("div", { class: "tile-label" }, t("fleet.alerts")),
        h("div", null, ["critical", "warning", "info"].map((sev) =>
          h("span", { class: `badge sev-${sev}`, "data-test": `alerts-${sev}` }, `${fmtNum(alerts[sev] || 0)} ${t(`common.severity_${sev}`)}`)))),
      tile(t("fleet.exceptions"), s.exceptions, "fleet-exceptions", s.exceptions ? "tile-warn" : null),
      s.outbox_pending === null || s.outbox_pending === undefined ? null : tile(t("fleet.outbox"), s.outbox_pending, "fleet-outbox", s.outbox_pending ? "tile-warn" : null),
      h("div", { class: "tile tile-wide", "data-test": "fleet-occupancy" },
        h("div", { class: "tile-label" }, t("fleet.occupancy")),
        h("ul", { class: "sizes" }, sizes.length ? sizes : h("li", { class: "muted" }, t("common.none"))))));
  }

  function paintSites(page) {
    const sites = page.sites || [];
    nextAfter = page.next_after || null;
    replace(tbody, sites.length ? sites.map((s) => siteRow(ctx, s)) : h("tr", null, h("td", { colspan: "6", class: "muted", "data-test": "no-sites" }, t("fleet.no_sites"))));
    prev.disabled = back.length === 0;
    next.disabled = !nextAfter;
  }

  let loading = 0;
  async function load() {
    const mine = ++loading;
    const [s, page] = await Promise.all([
      api("GET", "/v1/fleet/summary"),
      api("GET", apiUrl("/v1/fleet/sites", { q, after, limit: PAGE })),
    ]);
    if (mine !== loading || !ctx.current()) return;
    paintSummary(s || {});
    paintSites(page || {});
    updated.textContent = t("common.updated", { time: fmtTime(Date.now()) });
  }
  const reload = () => load().catch((e) => {
    if (ctx.current()) ctx.toast(e.message, "error");
  });

  filter.addEventListener("input", ctx.debounce(() => {
    q = filter.value.trim();
    after = "";
    back.length = 0;
    reload();
  }, 300));
  next.addEventListener("click", () => {
    if (!nextAfter) return;
    back.push(after);
    after = nextAfter;
    reload();
  });
  prev.addEventListener("click", () => {
    if (!back.length) return;
    after = back.pop();
    reload();
  });
  ctx.onLive(ctx.debounce(reload, 1000));

  await load();
}

/** A stacked bar of a size's counts (occupied, reserved, out of service; the rest is free). */
export function occupancyBar(h, c) {
  const total = c.total || 0;
  const pct = (n) => (total ? `${(100 * (n || 0)) / total}%` : "0%");
  const seg = (cls, n) => {
    const el = h("span", { class: cls });
    el.style.width = pct(n);
    return el;
  };
  return h("div", { class: "bar", "aria-hidden": "true" },
    seg("bar-occupied", c.occupied), seg("bar-reserved", c.reserved), seg("bar-oos", c.out_of_service));
}

/** Sums the per-size counts: {total, free, reserved, occupied, out_of_service}. */
export function totals(compartments) {
  const sum = { total: 0, free: 0, reserved: 0, occupied: 0, out_of_service: 0 };
  for (const c of Object.values(compartments || {})) {
    for (const k of Object.keys(sum)) sum[k] += c[k] || 0;
  }
  return sum;
}

/** Badges of active alerts by severity ("none" when there are none). */
export function alertBadges(ctx, alerts) {
  const { h, t, fmtNum } = ctx;
  const a = alerts || {};
  const sev = ["critical", "warning", "info"].filter((s) => a[s]);
  if (!sev.length) return h("span", { class: "muted" }, t("common.none"));
  return sev.map((s) => h("span", { class: `badge sev-${s}` }, `${fmtNum(a[s])} ${t(`common.severity_${s}`)}`));
}

function siteRow(ctx, s) {
  const { h, t, fmtNum } = ctx;
  const occ = totals(s.compartments);
  return h("tr", { "data-test": "site-row", "data-site": s.id },
    h("td", null, h("a", { href: `#/sites/${encodeURIComponent(s.id)}`, "data-test": "site-link" }, s.name || s.id),
      s.name && s.name !== s.id ? h("div", { class: "muted mono" }, s.id) : null),
    h("td", { class: "num" }, fmtNum(s.cabinets || 0)),
    h("td", null,
      h("span", { class: "badge badge-ok", "data-test": "site-online" }, `${fmtNum(s.online || 0)} ${t("common.online")}`), " ",
      s.offline ? h("span", { class: "badge badge-bad", "data-test": "site-offline" }, `${fmtNum(s.offline)} ${t("common.offline")}`) : null),
    h("td", { class: "num" }, `${fmtNum(occ.occupied)} / ${fmtNum(occ.total)}`),
    h("td", null, alertBadges(ctx, s.alerts)),
    h("td", { class: "num" }, fmtNum(s.exceptions || 0)));
}
