// The order page (`#/orders/{id}`): the order's details; its timeline (every transition of
// `history` with its cause and actor, and, for operators and site managers, the door, access,
// override and command records of its compartment from the audit export); the notices sent to
// the recipient (never their codes); and the actions its state allows (resend the code, extend,
// cancel, request a return, out for delivery, remote unlock with a mandatory reason), each
// showing its result or the API's message. Another carrier's order (or an unknown one) is
// "not found or not yours", as the API answers. Refetched on live events of the order.

import { kit } from './orders.js';
import { readNdjson } from './audit.js';

const FINAL = ['picked_up', 'returned', 'cancelled'];

/** The actions, and in which states the API allows them (parcels/machine.rs). */
const ACTIONS = [
  { id: 'resend', path: 'resend-code', when: (o) => (o.kind === 'return' ? o.state === 'reserved' : o.state === 'ready') },
  { id: 'extend', path: 'extend', hours: true, when: (o) => o.state === 'ready' || o.state === 'expired' },
  { id: 'out_for_delivery', path: 'out-for-delivery', when: (o) => o.state === 'created' },
  { id: 'unlock', path: 'unlock', reason: true, when: (o) => o.compartment !== null && o.compartment !== undefined && ['reserved', 'deposited', 'ready', 'expired', 'return_requested'].includes(o.state) },
  { id: 'return', path: 'return', confirm: true, when: (o) => ['deposited', 'ready', 'expired'].includes(o.state) },
  { id: 'cancel', path: 'cancel', confirm: true, when: (o) => ['created', 'reserved', 'deposited', 'ready'].includes(o.state) },
];

/** The order's notices (`GET /v1/orders/{id}/notifications`, one read by the per-order index). */
async function findNotices(ctx, o) {
  const p = await ctx.api('GET', `/v1/orders/${encodeURIComponent(o.id)}/notifications`);
  return p.notifications || [];
}

/** Door, access, override and command records of the order's compartment while it was the
 * order's (operators and site managers: a carrier's export holds no cabinet events). */
async function cabinetEvents(ctx, o) {
  if (!o.cabinet || !ctx.session || ctx.session.scope === 'carrier') return [];
  const q = new URLSearchParams({
    format: 'ndjson',
    cabinet: o.cabinet,
    from: String(Math.max(0, o.created_at - 1000)),
    kinds: 'door,access,override,command',
  });
  if (FINAL.includes(o.state)) q.set('to', String(o.updated_at + 60 * 1000));
  const out = [];
  await readNdjson(`/v1/audit/export?${q}`, {
    max: 500,
    scan: 50000,
    keep: (r) => {
      const mine = r.order === o.id || (o.compartment !== null && r.compartment === o.compartment && r.order === null);
      if (mine) out.push(r);
      return mine;
    },
  });
  return out;
}

export async function render(view, ctx) {
  const k = kit(ctx);
  const { t, h } = k;
  const id = ctx.params && ctx.params.id;
  const result = h('div', { class: 'ops-result', 'aria-live': 'polite' });
  const body = h('div', { class: 'ops-order' });
  view.append(
    h('p', { class: 'ops-back' }, h('a', { href: '#/orders' }, `← ${t('order.back')}`)),
    h('h1', {}, t('order.title', { id })),
    result,
    body,
  );

  const show = (action, text, ok) => {
    result.replaceChildren(h('p', {
      class: `ops-msg ops-msg-${ok ? 'ok' : 'error'}`, role: ok ? 'status' : 'alert',
      'data-test': 'order-action-result', 'data-action': action, 'data-result': ok ? 'ok' : 'error',
    }, text));
    if (ctx.toast) ctx.toast(text, ok ? 'ok' : 'error');
  };

  let order = null;
  const run = async (a, input) => {
    const path = `/v1/orders/${encodeURIComponent(id)}/${a.path}`;
    const label = t(`order.action.${a.id}`);
    try {
      if (a.reason) {
        const reason = await ctx.confirmReason(t('order.unlock_title', { id }));
        if (reason === null || reason === undefined) return;
        const r = await ctx.api('POST', path, { reason, wait_ms: 5000 });
        const c = r.command || {};
        show(a.id, c.outcome
          ? t('order.unlock_outcome', { command: c.id, outcome: k.tt(`order.outcome.${c.outcome}`, c.outcome) })
          : t('order.unlock_queued', { command: c.id }), !c.outcome || c.outcome === 'opened' || c.outcome === 'already_open');
      } else if (a.hours) {
        const hours = parseInt(input.value, 10);
        await ctx.api('POST', path, { hours });
        show(a.id, t('order.done', { action: label }), true);
      } else {
        await ctx.api('POST', path, {});
        show(a.id, t('order.done', { action: label }), true);
      }
    } catch (e) {
      show(a.id, t('order.failed', { action: label, message: k.errText(e) }), false);
    }
    await load();
  };

  const actions = (o) => {
    const allowed = ACTIONS.filter((a) => a.when(o));
    if (allowed.length === 0) return h('p', { class: 'ops-hint' }, t('order.no_actions'));
    const confirmBar = h('div', { class: 'ops-confirm' });
    const buttons = allowed.map((a) => {
      const label = t(`order.action.${a.id}`);
      if (a.hours) {
        const hours = h('input', { type: 'number', name: 'hours', 'data-test': 'order-extend-hours', 'aria-label': t('order.hours') });
        hours.min = '1';
        hours.max = '720';
        hours.value = '24';
        return h('span', { class: 'ops-inline' }, hours, h('button', {
          type: 'button', 'data-test': `order-action-${a.id}`, onclick: () => run(a, hours),
        }, label));
      }
      const click = a.confirm
        ? () => confirmBar.replaceChildren(
          h('span', {}, t('order.confirm', { action: label })),
          h('button', { type: 'button', class: 'ops-danger', 'data-test': 'order-confirm', onclick: () => { confirmBar.replaceChildren(); run(a); } }, t('order.yes')),
          h('button', { type: 'button', onclick: () => confirmBar.replaceChildren() }, t('order.no')),
        )
        : () => run(a);
      return h('button', { type: 'button', class: a.confirm ? 'ops-danger' : '', 'data-test': `order-action-${a.id}`, onclick: click }, label);
    });
    return h('div', { class: 'ops-actions', 'data-test': 'order-actions' }, buttons, confirmBar);
  };

  const details = (o) => {
    const row = (key, value) => [h('dt', {}, t(`order.field.${key}`)), h('dd', { 'data-field': key }, value === null || value === undefined || value === '' ? '—' : value)];
    const r = o.recipient || {};
    const pu = o.pending_unlock;
    return h(
      'dl',
      { class: 'ops-details', 'data-test': 'order-details', 'data-state': o.state },
      row('state', k.stateBadge(o.state)),
      row('exception', o.exception ? `⚠ ${k.exceptionText(o.exception)}` : null),
      row('kind', k.tt(`order.kind.${o.kind}`, o.kind)),
      row('tracking', o.tracking),
      row('reference', o.reference),
      row('carrier', o.carrier),
      row('site', k.siteLink(o.site)),
      row('cabinet', ctx.session && ctx.session.scope !== 'carrier' ? k.cabinetLink(o.cabinet) : o.cabinet),
      row('compartment', o.compartment),
      row('size', o.size),
      row('recipient', [r.name, r.phone, r.email].filter(Boolean).join(', ')),
      row('channel', r.channel),
      row('created', `${k.time(o.created_at)} (${o.created_by})`),
      row('updated', k.time(o.updated_at)),
      row('reserved_until', o.reserved_until ? k.time(o.reserved_until) : null),
      row('pickup_deadline', o.pickup_deadline ? k.time(o.pickup_deadline) : null),
      row('pending_unlock', pu ? `${pu.command} (${pu.purpose}, ${pu.actor}: ${pu.reason})` : null),
    );
  };

  const timeline = (o, doors) => {
    const entries = (o.history || []).map((e) => ({ at: e.at, e }))
      .concat(doors.map((r) => ({ at: r.at, r })))
      .sort((a, b) => a.at - b.at);
    const item = (x) => {
      if (x.e) {
        const e = x.e;
        const what = e.from !== e.to
          ? [k.stateBadge(e.from), ' → ', k.stateBadge(e.to)]
          : [k.stateBadge(e.to), e.detail ? ` ${e.detail}` : ''];
        return h(
          'li',
          { class: 'ops-tl-entry ops-tl-transition', 'data-test': 'timeline-entry', 'data-kind': 'transition', 'data-from': e.from, 'data-to': e.to, 'data-cause': e.cause, 'data-actor': e.actor },
          h('time', {}, k.time(e.at)),
          h('span', { class: 'ops-tl-what' }, what),
          h('span', { class: 'ops-tl-why' }, t('order.caused', { cause: k.tt(`order.cause.${e.cause}`, e.cause), actor: e.actor })),
          e.compartment !== null && e.compartment !== undefined ? h('span', { class: 'ops-tl-where' }, t('order.in_compartment', { cabinet: e.cabinet || o.cabinet || '', compartment: e.compartment })) : '',
          e.exception ? h('span', { class: 'ops-badge ops-exception' }, `⚠ ${k.exceptionText(e.exception)}`) : '',
          e.from !== e.to && e.detail ? h('span', { class: 'ops-tl-detail' }, e.detail) : '',
        );
      }
      const r = x.r;
      return h(
        'li',
        { class: `ops-tl-entry ops-tl-${r.kind}`, 'data-test': 'timeline-entry', 'data-kind': r.kind, 'data-cause': r.cause || '', 'data-actor': r.actor || '' },
        h('time', {}, k.time(r.at)),
        h('span', { class: 'ops-tl-what' }, `${r.kind === 'door_opened' ? '🚪 ' : ''}${k.tt(`order.event.${r.kind}`, r.kind)}`),
        h('span', { class: 'ops-tl-why' }, t('order.caused', { cause: k.tt(`order.cause.${r.cause}`, r.cause || '—'), actor: r.actor || '—' })),
        r.reason ? h('span', { class: 'ops-tl-detail' }, `“${r.reason}”`) : '',
        r.detail ? h('span', { class: 'ops-tl-detail' }, r.detail) : '',
      );
    };
    return h('ol', { class: 'ops-timeline', 'data-test': 'timeline' }, entries.map(item));
  };

  const notices = (list) => (list.length === 0
    ? h('p', { class: 'ops-hint', 'data-test': 'notices-empty' }, t('order.no_notices'))
    : h('ul', { class: 'ops-notices' }, list.map((n) => h(
      'li',
      { 'data-test': 'notice', 'data-kind': n.kind },
      h('time', {}, k.time(n.created_at)), ' ',
      h('strong', {}, k.tt(`order.notice.${n.kind}`, n.kind)), ' ',
      t('order.notice_via', { channel: (n.recipient && n.recipient.channel) || '—' }),
      n.expires_local ? ` · ${t('order.code_expires', { at: n.expires_local })}` : '',
    ))));

  const load = async () => {
    let o;
    try {
      o = await ctx.api('GET', `/v1/orders/${encodeURIComponent(id)}`);
    } catch (e) {
      if (e && (e.status === 404 || e.status === 403)) {
        body.replaceChildren(h('p', { class: 'ops-msg ops-msg-error', role: 'alert', 'data-test': 'order-not-found' }, t('order.not_found')));
      } else {
        body.replaceChildren(k.message(k.errText(e), 'error', 'order-error'));
      }
      return;
    }
    order = o;
    let doors = [];
    let doorNote = '';
    try {
      doors = await cabinetEvents(ctx, o);
    } catch (e) {
      doorNote = k.message(t('order.no_door_events', { message: k.errText(e) }), 'info');
    }
    let sent = [];
    let noticeNote = '';
    try {
      sent = await findNotices(ctx, o);
    } catch (e) {
      noticeNote = k.message(k.errText(e), 'error');
    }
    body.replaceChildren(
      details(o),
      h('section', { class: 'ops-section' }, h('h2', {}, t('order.actions')), actions(o)),
      h('section', { class: 'ops-section' }, h('h2', {}, t('order.timeline')), doorNote, timeline(o, doors)),
      h('section', { class: 'ops-section' }, h('h2', {}, t('order.notices')), noticeNote, notices(sent)),
    );
  };
  await load();
  const refetch = k.debounce(load, 500);
  ctx.onLive((ev) => {
    if (ev.stream === 'resync' || ev.order === id) refetch();
    else if (order && order.cabinet && ev.cabinet === order.cabinet && (ev.stream === 'door' || ev.stream === 'result' || ev.stream === 'access')) refetch();
  });
}
