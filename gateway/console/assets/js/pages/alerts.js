// The alerts page (`#/alerts?state=active|cleared|all&severity=&site=&cabinet=&before=`):
// alerts newest first with severity as text and colour, a link to the cabinet, and acknowledge
// with a note (`POST /v1/alerts/{id}/ack`). Refetched (debounced) on live alert events.
// Carriers get the API's 403, shown as "not for this login".

import { kit } from './orders.js';

const SEVERITY_ICON = { critical: '⛔', warning: '⚠', info: 'ℹ' };
const PAGE = 50;

export async function render(view, ctx) {
  const k = kit(ctx);
  const { t, h } = k;
  const q = ctx.query || new URLSearchParams();
  const get = (name) => q.get(name) || '';
  const filters = {
    state: ['active', 'cleared', 'all'].includes(get('state')) ? get('state') : 'active',
    severity: get('severity'), site: get('site'), cabinet: get('cabinet'),
  };
  const before = get('before');

  const tabs = h('nav', { class: 'ops-tabs', 'aria-label': t('alerts.which') }, ['active', 'cleared', 'all'].map((s) => h(
    'a',
    {
      href: k.link('/alerts', { ...filters, state: s }),
      class: s === filters.state ? 'ops-tab ops-tab-current' : 'ops-tab',
      'aria-current': s === filters.state ? 'page' : 'false',
      'data-test': `alerts-tab-${s}`,
    },
    t(`alerts.tab.${s}`),
  )));
  const severity = k.select('severity', [['', t('alerts.any_severity')], ...['critical', 'warning', 'info'].map((s) => [s, t(`alerts.severity.${s}`)])], filters.severity);
  const site = k.input('site', filters.site);
  const cabinet = k.input('cabinet', filters.cabinet);
  const form = h(
    'form',
    {
      class: 'ops-filters',
      onsubmit: (ev) => {
        ev.preventDefault();
        ctx.navigate(k.link('/alerts', { state: filters.state, severity: severity.value, site: site.value.trim(), cabinet: cabinet.value.trim() }));
      },
    },
    k.field(t('alerts.severity_label'), severity),
    k.field(t('alerts.site'), site),
    k.field(t('alerts.cabinet'), cabinet),
    h('div', { class: 'ops-buttons' }, h('button', { type: 'submit' }, t('alerts.apply'))),
  );
  const note = h('div', { class: 'ops-note', 'aria-live': 'polite' });
  const list = h('div', { class: 'ops-table-wrap' });
  const pager = h('nav', { class: 'ops-pager' });
  view.append(h('h1', {}, t('alerts.title')), tabs, form, note, list, pager);

  // notes being typed survive a live refetch
  const drafts = new Map();

  const ack = async (a, noteIn, button) => {
    button.disabled = true;
    try {
      await ctx.api('POST', `/v1/alerts/${encodeURIComponent(a.id)}/ack`, { note: noteIn.value.trim() || null });
      drafts.delete(a.id);
      if (ctx.toast) ctx.toast(t('alerts.acked_toast', { kind: k.tt(`alerts.kind.${a.kind}`, a.kind), cabinet: a.cabinet }), 'ok');
    } catch (e) {
      note.replaceChildren(k.message(t('alerts.ack_failed', { message: k.errText(e) }), 'error', 'alerts-error'));
      button.disabled = false;
    }
    await load();
  };

  const row = (a) => {
    const acked = Boolean(a.acked_by);
    let ackCell;
    if (acked) {
      ackCell = h('span', { class: 'ops-acked', 'data-test': 'alert-acked' }, `✓ ${t('alerts.acked_by', { who: a.acked_by, at: k.time(a.acked_at) })}`, a.ack_note ? ` — “${a.ack_note}”` : '');
    } else {
      const noteIn = h('input', { type: 'text', name: 'note', 'data-test': 'alert-note', placeholder: t('alerts.note'), 'aria-label': t('alerts.note') });
      noteIn.value = drafts.get(a.id) || '';
      noteIn.addEventListener('input', () => drafts.set(a.id, noteIn.value));
      const button = h('button', { type: 'button', 'data-test': 'alert-ack' }, t('alerts.ack'));
      button.addEventListener('click', () => ack(a, noteIn, button));
      ackCell = h('span', { class: 'ops-inline' }, noteIn, button);
    }
    return h(
      'tr',
      {
        'data-test': 'alert-row', 'data-alert': a.id, 'data-state': a.state, 'data-kind': a.kind,
        'data-severity': a.severity, 'data-acked': acked ? 'true' : 'false', 'data-cabinet': a.cabinet,
        class: `ops-row ops-sev-row-${a.severity}`,
      },
      h('td', {}, h('span', { class: `ops-badge ops-sev ops-sev-${a.severity}` }, `${SEVERITY_ICON[a.severity] || '•'} ${t(`alerts.severity.${a.severity}`)}`)),
      h('td', {}, k.tt(`alerts.kind.${a.kind}`, a.kind), a.subject ? h('div', { class: 'ops-sub' }, a.subject) : ''),
      h('td', {}, h('a', { href: `#/cabinets/${encodeURIComponent(a.cabinet)}`, 'data-test': 'alert-cabinet' }, a.cabinet), a.site ? h('div', { class: 'ops-sub' }, a.site) : ''),
      h('td', {}, a.detail || ''),
      h('td', {}, k.time(a.raised_at), h('div', { class: 'ops-sub' }, k.ago(a.raised_at))),
      h('td', {}, a.state === 'active'
        ? h('span', { class: 'ops-badge ops-alert-active' }, `● ${t('alerts.state.active')}`)
        : h('span', { class: 'ops-badge ops-alert-cleared' }, `○ ${t('alerts.state.cleared')}`, h('div', { class: 'ops-sub' }, `${k.time(a.cleared_at)} ${a.clear_reason || ''}`))),
      h('td', {}, ackCell),
    );
  };

  const load = async () => {
    let page;
    try {
      page = await ctx.api('GET', k.url('/v1/alerts', { ...filters, before, limit: PAGE }));
    } catch (e) {
      const text = e && e.status === 403 ? t('alerts.forbidden') : k.errText(e);
      note.replaceChildren(k.message(text, 'error', 'alerts-error'));
      list.replaceChildren();
      return;
    }
    const alerts = page.alerts || [];
    note.replaceChildren(alerts.length === 0 ? k.message(t('alerts.empty'), 'info', 'alerts-empty') : '');
    list.replaceChildren(alerts.length === 0 ? '' : h(
      'table',
      { class: 'ops-table', 'data-test': 'alerts-table' },
      h('thead', {}, h('tr', {}, ['severity', 'kind', 'cabinet', 'detail', 'raised', 'state', 'ack'].map((c) => h('th', { scope: 'col' }, t(`alerts.col.${c}`))))),
      h('tbody', {}, alerts.map(row)),
    ));
    pager.replaceChildren(
      before ? h('a', { href: k.link('/alerts', filters) }, t('alerts.newest')) : '',
      page.next_before ? h('a', { href: k.link('/alerts', { ...filters, before: page.next_before }), 'data-test': 'alerts-older' }, t('alerts.older')) : '',
    );
  };
  await load();
  const refetch = k.debounce(load, 500);
  ctx.onLive((ev) => {
    if (ev.stream === 'alert' || ev.stream === 'resync') refetch();
  });
}
