// The audit page (`#/audit?from=&to=&site=&cabinet=&order=&kinds=`): a period and optional
// filters; the first records of `GET /v1/audit/export?format=ndjson` in a table (read as a
// stream, stopped after a page), and links that download the whole period as CSV or NDJSON
// (plain links: the session cookie goes with them). The export has no order parameter, so an
// order filter narrows the table only (the downloads hold the period's records).
//
// It also exports `readNdjson`, the stream reader the order page uses for door events.

import { kit } from './orders.js';

const KINDS = ['door', 'access', 'order', 'override', 'alert', 'command', 'admin'];
const SHOW = 200;
const DAY_MS = 24 * 60 * 60 * 1000;

/**
 * Reads an NDJSON response line by line with the session cookie; calls `keep(record)` for each
 * and stops (cancelling the download) once `max` records were kept or `scan` lines read.
 * Resolves `{kept, read, more}`; throws `{status, error, message}` for an error answer.
 */
export async function readNdjson(url, { max, scan, keep }) {
  const res = await fetch(url, { credentials: 'same-origin', headers: { Accept: 'application/x-ndjson' } });
  if (!res.ok) {
    let body = {};
    try {
      body = await res.json();
    } catch (_) {
      body = {};
    }
    throw { status: res.status, error: body.error || String(res.status), message: body.message || res.statusText };
  }
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  let kept = 0;
  let read = 0;
  const take = (line) => {
    if (!line.trim()) return;
    read += 1;
    let rec;
    try {
      rec = JSON.parse(line);
    } catch (_) {
      return;
    }
    if (keep(rec)) kept += 1;
  };
  for (;;) {
    if (kept >= max || read >= scan) {
      await reader.cancel();
      return { kept, read, more: true };
    }
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let nl = buf.indexOf('\n');
    while (nl >= 0 && kept < max && read < scan) {
      take(buf.slice(0, nl));
      buf = buf.slice(nl + 1);
      nl = buf.indexOf('\n');
    }
  }
  if (kept < max && read < scan) take(buf);
  return { kept, read, more: false };
}

/** `yyyy-MM-ddTHH:mm` in local time, for a `datetime-local` input. */
function localInput(ms) {
  const d = new Date(ms);
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
}

/** A query time (RFC 3339 or ms) as ms; `null` when it does not parse. */
function parseTime(s) {
  if (!s) return null;
  if (/^\d+$/.test(s)) return Number(s);
  const ms = Date.parse(s);
  return Number.isNaN(ms) ? null : ms;
}

export async function render(view, ctx) {
  const k = kit(ctx);
  const { t, h } = k;
  const q = ctx.query || new URLSearchParams();
  const get = (name) => q.get(name) || '';
  const now = Date.now();
  const to = parseTime(get('to')) ?? now;
  const from = parseTime(get('from')) ?? to - DAY_MS;
  const kinds = get('kinds') ? get('kinds').split(',').filter((x) => KINDS.includes(x)) : [];

  const fromIn = h('input', { type: 'datetime-local', name: 'from', 'data-test': 'audit-from' });
  fromIn.value = localInput(from);
  const toIn = h('input', { type: 'datetime-local', name: 'to', 'data-test': 'audit-to' });
  toIn.value = localInput(to);
  const site = k.input('site', get('site'), { 'data-test': 'audit-site' });
  const cabinet = k.input('cabinet', get('cabinet'), { 'data-test': 'audit-cabinet' });
  const order = k.input('order', get('order'), { 'data-test': 'audit-order' });
  const boxes = KINDS.map((kind) => {
    const b = h('input', { type: 'checkbox', name: 'kinds', value: kind, 'data-test': `audit-kind-${kind}` });
    b.checked = kinds.includes(kind);
    return h('label', { class: 'ops-check' }, b, h('span', {}, k.tt(`audit.kind.${kind}`, kind)));
  });
  const apply = (ev) => {
    ev.preventDefault();
    const iso = (v) => (v ? new Date(v).toISOString() : '');
    const picked = boxes.map((l) => l.querySelector('input')).filter((b) => b.checked).map((b) => b.value);
    ctx.navigate(k.link('/audit', {
      from: iso(fromIn.value), to: iso(toIn.value), site: site.value.trim(),
      cabinet: cabinet.value.trim(), order: order.value.trim(), kinds: picked.join(','),
    }));
  };
  const form = h(
    'form',
    { class: 'ops-filters', 'data-test': 'audit-filters', onsubmit: apply },
    k.field(t('audit.from'), fromIn),
    k.field(t('audit.to'), toIn),
    k.field(t('audit.site'), site),
    k.field(t('audit.cabinet'), cabinet),
    k.field(t('audit.order'), order),
    h('fieldset', { class: 'ops-kinds' }, h('legend', {}, t('audit.kinds')), boxes),
    h('div', { class: 'ops-buttons' }, h('button', { type: 'submit', 'data-test': 'audit-apply' }, t('audit.search'))),
  );

  const params = {
    from: new Date(from).toISOString(), to: new Date(to).toISOString(),
    site: get('site'), cabinet: get('cabinet'), kinds: kinds.join(','),
  };
  const exportUrl = (format) => k.url('/v1/audit/export', { ...params, format });
  const downloads = h(
    'p',
    { class: 'ops-downloads' },
    h('a', { href: exportUrl('csv'), download: 'audit.csv', class: 'ops-link-button', 'data-test': 'audit-export-csv' }, t('audit.export_csv')),
    ' ',
    h('a', { href: exportUrl('ndjson'), download: 'audit.ndjson', class: 'ops-link-button', 'data-test': 'audit-export-ndjson' }, t('audit.export_ndjson')),
    get('order') ? h('span', { class: 'ops-hint' }, ` ${t('audit.order_table_only')}`) : '',
  );
  const note = h('div', { class: 'ops-note', 'aria-live': 'polite' }, t('audit.loading'));
  const table = h('div', { class: 'ops-table-wrap' });
  view.append(h('h1', {}, t('audit.title')), form, downloads, note, table);

  const wantOrder = get('order');
  const cols = ['at', 'kind', 'site', 'cabinet', 'compartment', 'order', 'tracking', 'carrier', 'actor', 'cause', 'reason', 'detail'];
  const rows = [];
  const cell = (r, c) => {
    const v = r[c];
    if (v === null || v === undefined || v === '') return h('td', {}, '');
    if (c === 'at') return h('td', {}, k.time(v));
    if (c === 'order') return h('td', {}, h('a', { href: `#/orders/${encodeURIComponent(v)}` }, v));
    if (c === 'cabinet' && ctx.session && ctx.session.scope !== 'carrier') return h('td', {}, k.cabinetLink(v));
    return h('td', {}, String(v));
  };
  try {
    const res = await readNdjson(exportUrl('ndjson'), {
      max: SHOW,
      scan: wantOrder ? 100000 : SHOW,
      keep: (r) => {
        if (wantOrder && r.order !== wantOrder) return false;
        rows.push(h('tr', { 'data-test': 'audit-row', 'data-kind': r.kind, 'data-order': r.order || '' }, cols.map((c) => cell(r, c))));
        return true;
      },
    });
    note.replaceChildren(k.message(
      rows.length === 0 ? t('audit.empty') : t(res.more ? 'audit.first_n' : 'audit.all_n', { n: rows.length }),
      'info',
      'audit-count',
    ));
  } catch (e) {
    note.replaceChildren(k.message(k.errText(e), 'error', 'audit-error'));
    return;
  }
  table.replaceChildren(h(
    'table',
    { class: 'ops-table ops-table-audit', 'data-test': 'audit-table' },
    h('thead', {}, h('tr', {}, cols.map((c) => h('th', { scope: 'col' }, t(`audit.col.${c}`))))),
    h('tbody', {}, rows),
  ));
}
