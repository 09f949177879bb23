// The orders page (`#/orders?status=&site=&carrier=&cabinet=&tracking=&exception=&after=`):
// a filtered, server-side paged list of the orders the session's scope may see, refetched
// (debounced) on live parcel events. The filters live in the hash, so a filtered list is a link.
//
// It also exports the small helpers the other operations pages share (`kit`): element
// building that skips empty children, times from ms, state and severity badges, API error text
// and a debounce.

const STATES = [
  'created', 'reserved', 'deposited', 'ready', 'picked_up',
  'expired', 'return_requested', 'returned', 'cancelled',
];
const STATE_ICON = {
  created: '○', reserved: '◔', deposited: '◑', ready: '●', picked_up: '✓',
  expired: '⌛', return_requested: '↩', returned: '↩', cancelled: '✕',
};
const PAGE = 50;

/** The helpers every operations page uses, bound to the page's `ctx`. */
export function kit(ctx) {
  const t = ctx.t;
  const h = (tag, attrs, ...kids) => ctx.h(
    tag,
    attrs || {},
    ...kids.flat(Infinity).filter((k) => k !== null && k !== undefined && k !== false),
  );
  /** `t(key)`, or `fallback` when the key has no message. */
  const tt = (key, fallback, vars) => {
    const s = t(key, vars);
    return s === key || s === undefined || s === null || s === '' ? fallback : s;
  };
  const time = (ms) => (ms === null || ms === undefined ? '—' : ctx.fmtTime(new Date(ms).toISOString()));
  const ago = (ms) => {
    if (ms === null || ms === undefined || !ctx.fmtAgo) return '';
    return ctx.fmtAgo(new Date(ms).toISOString());
  };
  const stateBadge = (s) => h(
    'span',
    { class: `ops-badge ops-state ops-state-${s}`, 'data-state': s },
    `${STATE_ICON[s] || '•'} ${tt(`orders.state.${s}`, s)}`,
  );
  const exceptionText = (x) => (x ? tt(`orders.exception.${x}`, x) : '');
  const errText = (e) => {
    if (!e) return '';
    return e.message || e.error || String(e);
  };
  const debounce = (fn, ms) => {
    if (ctx.debounce) return ctx.debounce(fn, ms);
    let timer = null;
    return (...args) => {
      clearTimeout(timer);
      timer = setTimeout(() => fn(...args), ms);
    };
  };
  /** `#/path?query` with the non-empty entries of `params`. */
  const link = (path, params) => {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {})) {
      if (v !== null && v !== undefined && v !== '' && v !== false) q.set(k, String(v));
    }
    const s = q.toString();
    return s ? `#${path}?${s}` : `#${path}`;
  };
  /** `/v1/...?query` with the non-empty entries of `params`. */
  const url = (path, params) => link(path, params).slice(1);
  const field = (label, input) => h('label', { class: 'ops-field' }, h('span', {}, label), input);
  const input = (name, value, attrs) => {
    const el = h('input', { name, type: 'text', ...(attrs || {}) });
    el.value = value || '';
    return el;
  };
  const select = (name, options, value) => {
    const el = h('select', { name }, options.map(([v, label]) => h('option', { value: v }, label)));
    el.value = value || '';
    return el;
  };
  const cabinetLink = (id) => (id ? h('a', { href: `#/cabinets/${encodeURIComponent(id)}` }, id) : '—');
  const siteLink = (id) => (id ? h('a', { href: `#/sites/${encodeURIComponent(id)}` }, id) : '—');
  const message = (text, kind, test) => h('p', { class: `ops-msg ops-msg-${kind || 'info'}`, role: kind === 'error' ? 'alert' : 'status', 'data-test': test || 'ops-message' }, text);
  return {
    t, tt, h, time, ago, stateBadge, exceptionText, errText, debounce, link, url, field,
    input, select, cabinetLink, siteLink, message,
  };
}

export { STATES };

export async function render(view, ctx) {
  const k = kit(ctx);
  const { t, h } = k;
  const q = ctx.query || new URLSearchParams();
  const scope = ctx.session && ctx.session.scope;
  const get = (name) => q.get(name) || '';

  const status = k.select('status', [['', t('orders.any_state')], ...STATES.map((s) => [s, k.tt(`orders.state.${s}`, s)])], get('status'));
  status.setAttribute('data-test', 'orders-filter-status');
  const sites = (ctx.session && ctx.session.sites) || [];
  const site = scope === 'site_manager' && sites.length > 0
    ? k.select('site', [['', t('orders.any_site')], ...sites.map((s) => [s, s])], get('site'))
    : k.input('site', get('site'));
  const carrier = scope === 'operator' ? k.input('carrier', get('carrier')) : null;
  const cabinet = k.input('cabinet', get('cabinet'));
  const tracking = k.input('tracking', get('tracking'), { 'data-test': 'orders-filter-tracking' });
  const exception = h('input', { type: 'checkbox', name: 'exception', 'data-test': 'orders-filter-exception' });
  exception.checked = get('exception') === 'true';

  const apply = (ev) => {
    ev.preventDefault();
    ctx.navigate(k.link('/orders', {
      status: status.value,
      site: site.value.trim(),
      carrier: carrier ? carrier.value.trim() : '',
      cabinet: cabinet.value.trim(),
      tracking: tracking.value.trim(),
      exception: exception.checked ? 'true' : '',
    }));
  };
  const form = h(
    'form',
    { class: 'ops-filters', 'data-test': 'orders-filters', onsubmit: apply },
    k.field(t('orders.status'), status),
    k.field(t('orders.site'), site),
    carrier && k.field(t('orders.carrier'), carrier),
    k.field(t('orders.cabinet'), cabinet),
    k.field(t('orders.tracking'), tracking),
    h('label', { class: 'ops-check' }, exception, h('span', {}, t('orders.exceptions_only'))),
    h('div', { class: 'ops-buttons' },
      h('button', { type: 'submit', 'data-test': 'orders-apply' }, t('orders.apply')),
      h('a', { href: '#/orders', class: 'ops-link-button' }, t('orders.reset'))),
  );

  const note = h('div', { class: 'ops-note', 'aria-live': 'polite' });
  const list = h('div', { class: 'ops-table-wrap' });
  const pager = h('nav', { class: 'ops-pager', 'aria-label': t('orders.paging') });
  view.append(h('h1', {}, t('orders.title')), form, note, list, pager);

  const filters = {
    status: get('status'), site: get('site'), carrier: get('carrier'), cabinet: get('cabinet'),
    tracking: get('tracking'), exception: get('exception') === 'true' ? 'true' : '',
  };
  const after = get('after');
  const limit = Math.min(Math.max(parseInt(get('limit'), 10) || PAGE, 1), 500);

  const load = async () => {
    let page;
    try {
      page = await ctx.api('GET', k.url('/v1/orders', { ...filters, after, limit }));
    } catch (e) {
      note.replaceChildren(k.message(k.errText(e), 'error', 'orders-error'));
      return;
    }
    const orders = page.orders || [];
    note.replaceChildren(orders.length === 0 ? k.message(t('orders.empty'), 'info', 'orders-empty') : '');
    const head = h('tr', {}, ['id', 'tracking', 'carrier', 'where', 'state', 'exception', 'created', 'updated']
      .map((c) => h('th', { scope: 'col' }, t(`orders.col.${c}`))));
    const rows = orders.map((o) => {
      const open = () => ctx.navigate(`#/orders/${encodeURIComponent(o.id)}`);
      const where = [o.site, o.cabinet, o.compartment].filter((x) => x !== null && x !== undefined).join(' / ');
      return h(
        'tr',
        {
          'data-test': 'order-row', 'data-order': o.id, 'data-state': o.state, 'data-carrier': o.carrier,
          class: `ops-row ${o.exception ? 'ops-row-exception' : ''}`, onclick: open,
        },
        h('td', {}, h('a', { href: `#/orders/${encodeURIComponent(o.id)}` }, o.id)),
        h('td', {}, o.tracking),
        h('td', {}, o.carrier),
        h('td', {}, where),
        h('td', {}, k.stateBadge(o.state)),
        h('td', {}, o.exception ? h('span', { class: 'ops-badge ops-exception', 'data-exception': o.exception }, `⚠ ${k.exceptionText(o.exception)}`) : ''),
        h('td', {}, k.time(o.created_at)),
        h('td', {}, k.time(o.updated_at)),
      );
    });
    list.replaceChildren(h('table', { class: 'ops-table', 'data-test': 'orders-table' }, h('thead', {}, head), h('tbody', {}, rows)));
    pager.replaceChildren(
      after ? h('a', { href: k.link('/orders', filters), 'data-test': 'orders-first' }, t('orders.first_page')) : '',
      orders.length === limit && page.next_after
        ? h('a', { href: k.link('/orders', { ...filters, after: page.next_after }), 'data-test': 'orders-next' }, t('orders.next_page'))
        : '',
    );
  };
  await load();
  const refetch = k.debounce(load, 500);
  ctx.onLive((ev) => {
    if (ev.stream === 'parcel' || ev.stream === 'resync') refetch();
  });
}
