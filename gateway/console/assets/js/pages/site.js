// The site page (#/sites/{id}): the site's cabinets from /v1/fleet/sites/{id} with presence,
// occupancy, alerts, exceptions and battery, each linking to its cabinet; live (debounced).

import { totals, alertBadges, occupancyBar } from "./fleet.js";

export async function render(view, ctx) {
  const { h, t, api, replace, fmtNum, fmtAgo, fmtTime } = ctx;
  const id = ctx.params.id;
  const head = h("div", { class: "page-head" });
  const info = h("div", { class: "kv" });
  const tbody = h("tbody", { "data-test": "cabinets-body" });
  view.append(
    h("div", { class: "crumbs" }, h("a", { href: "#/fleet", "data-test": "back-fleet" }, "‹ ", t("site.back"))),
    head,
    info,
    h("h2", null, t("site.cabinets")),
    h("div", { class: "table-wrap" },
      h("table", { "data-test": "site-cabinets" },
        h("thead", null, h("tr", null,
          h("th", null, t("site.col_cabinet")),
          h("th", null, t("site.col_status")),
          h("th", null, t("site.col_last_seen")),
          h("th", null, t("site.col_occupancy")),
          h("th", null, t("site.col_alerts")),
          h("th", { class: "num" }, t("site.col_exceptions")),
          h("th", { class: "num" }, t("site.col_battery")))),
        tbody)));

  function row(c) {
    const occ = totals(c.compartments);
    return h("tr", { "data-test": "cabinet-row", "data-cabinet": c.id, "data-online": String(!!c.online) },
      h("td", null, h("a", { href: `#/cabinets/${encodeURIComponent(c.id)}`, class: "mono", "data-test": "cabinet-link" }, c.id)),
      h("td", null, c.online
        ? h("span", { class: "badge badge-ok", "data-test": "cabinet-status" }, "● ", t("common.online"))
        : h("span", { class: "badge badge-bad", "data-test": "cabinet-status" }, "○ ", t("common.offline"))),
      h("td", { title: c.last_seen ? fmtTime(c.last_seen) : "" }, c.last_seen ? fmtAgo(c.last_seen) : "–"),
      h("td", null, occupancyBar(h, occ), `${fmtNum(occ.occupied)} / ${fmtNum(occ.total)}`,
        occ.reserved ? h("span", { class: "muted" }, ` (+${fmtNum(occ.reserved)} ${t("fleet.reserved")})`) : null),
      h("td", null, alertBadges(ctx, c.alerts)),
      h("td", { class: "num" }, fmtNum(c.exceptions || 0)),
      h("td", { class: "num" }, c.battery_pct === null || c.battery_pct === undefined ? "–" : `${fmtNum(c.battery_pct)} %`));
  }

  let loading = 0;
  async function load() {
    const mine = ++loading;
    const r = await api("GET", `/v1/fleet/sites/${encodeURIComponent(id)}`);
    if (mine !== loading || !ctx.current()) return;
    const site = r.site || { id };
    replace(head, h("h1", { "data-test": "site-title" }, t("site.title", { name: site.name || site.id })),
      h("span", { class: "muted" }, t("common.updated", { time: fmtTime(Date.now()) })));
    replace(info,
      h("span", { class: "mono" }, site.id),
      site.time_zone ? h("span", null, t("site.time_zone", { tz: site.time_zone })) : null,
      site.address ? h("span", null, site.address) : null);
    const cabs = r.cabinets || [];
    replace(tbody, cabs.length ? cabs.map(row) : h("tr", null, h("td", { colspan: "7", class: "muted" }, t("site.no_cabinets"))));
  }
  const reload = () => load().catch((e) => {
    if (ctx.current()) ctx.toast(e.message, "error");
  });
  const later = ctx.debounce(reload, 1000);
  ctx.onLive((ev) => {
    if (ev.stream === "resync" || !ev.site || ev.site === id) later();
  });
  await load();
}
