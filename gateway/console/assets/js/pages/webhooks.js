// The webhooks page (`#/webhooks`): the session's subscriptions (an operator's: all) with
// their delivery health; create one (URL, event filter, optional sites and carriers), showing
// its secret once; disable/enable, delete, rotate the secret (shown once), ping; each
// subscription's dead letters and their replay. Operators also see every outbound target
// (carriers' tracking endpoints, notification providers) with its health, dead letters and
// replay. Health is refetched on live events (debounced) and with the refresh button; what is
// being typed and a secret on screen survive a refetch.

import { kit } from './orders.js';

const LETTERS = 100;

/** `ok`, `lagging` or `failing` from a target's health (and whether it is enabled). */
function condition(health, enabled) {
  if (enabled === false) return 'disabled';
  if (!health) return 'ok';
  if ((health.pending > 0 && health.oldest_pending_ms > 60000) || health.dead_lettered > 0) return 'failing';
  if (health.last_error && (!health.last_delivered_at || health.last_error_at > health.last_delivered_at)) return 'lagging';
  return 'ok';
}
const ICON = { ok: '✓', lagging: '⚠', failing: '✕', disabled: '⏸' };
const list = (s) => s.split(',').map((x) => x.trim()).filter(Boolean);

export async function render(view, ctx) {
  const k = kit(ctx);
  const { t, h } = k;
  const operator = ctx.session && ctx.session.scope === 'operator';
  const secretBox = h('div', { class: 'ops-secret-box', 'aria-live': 'polite' });
  const note = h('div', { class: 'ops-note', 'aria-live': 'polite' });
  const subs = h('div', { class: 'ops-cards', 'data-test': 'webhooks' });
  const targets = h('div', { class: 'ops-table-wrap' });
  const open = new Set();

  const say = (text, ok) => {
    note.replaceChildren(k.message(text, ok ? 'ok' : 'error', 'webhook-result'));
    if (ctx.toast) ctx.toast(text, ok ? 'ok' : 'error');
  };
  const showSecret = (v) => {
    if (!v || !v.secret) return;
    const code = h('code', { 'data-test': 'webhook-secret', 'data-webhook': v.id }, v.secret);
    secretBox.replaceChildren(h(
      'div',
      { class: 'ops-msg ops-msg-ok ops-secret', role: 'status' },
      h('strong', {}, t('webhooks.secret_once', { id: v.id })), ' ', code, ' ',
      h('button', { type: 'button', onclick: () => secretBox.replaceChildren() }, t('webhooks.hide')),
    ));
  };
  const call = async (method, path, body, done) => {
    try {
      const r = await ctx.api(method, path, body);
      if (done) done(r);
      return r;
    } catch (e) {
      say(k.errText(e), false);
      return undefined;
    } finally {
      await load();
    }
  };

  // create
  const url = k.input('url', '', { type: 'url', 'data-test': 'webhook-url', placeholder: 'https://…' });
  const events = k.input('events', '*', { 'data-test': 'webhook-events' });
  const sites = k.input('sites', '', { 'data-test': 'webhook-sites' });
  const carriers = k.input('carriers', '', { 'data-test': 'webhook-carriers' });
  const description = k.input('description', '', { 'data-test': 'webhook-description' });
  const create = h(
    'form',
    {
      class: 'ops-filters ops-create',
      'data-test': 'webhook-create',
      onsubmit: async (ev) => {
        ev.preventDefault();
        const body = {
          url: url.value.trim(), events: list(events.value), sites: list(sites.value),
          carriers: list(carriers.value), description: description.value.trim(),
        };
        await call('POST', '/v1/webhooks', body, (v) => {
          showSecret(v);
          say(t('webhooks.created', { id: v.id }), true);
          url.value = '';
          description.value = '';
        });
      },
    },
    k.field(t('webhooks.url'), url),
    k.field(t('webhooks.events'), events),
    k.field(t('webhooks.sites'), sites),
    k.field(t('webhooks.carriers'), carriers),
    k.field(t('webhooks.description'), description),
    h('div', { class: 'ops-buttons' }, h('button', { type: 'submit', 'data-test': 'webhook-create-submit' }, t('webhooks.create'))),
  );

  const healthList = (hl) => h(
    'dl',
    { class: 'ops-health' },
    [
      ['pending', hl.pending], ['in_flight', hl.in_flight],
      ['oldest', hl.oldest_pending_ms === null || hl.oldest_pending_ms === undefined ? null : `${Math.round(hl.oldest_pending_ms / 1000)} s`],
      ['delivered', hl.delivered], ['failed', hl.failed_attempts], ['dead', hl.dead_lettered],
      ['last_delivered', hl.last_delivered_at ? k.time(hl.last_delivered_at) : null],
      ['last_error', hl.last_error ? `${hl.last_error} (${k.time(hl.last_error_at)})` : null],
    ].filter(([, v]) => v !== null && v !== undefined).map(([key, v]) => h('div', {}, h('dt', {}, t(`webhooks.health.${key}`)), h('dd', { 'data-health': key }, String(v)))),
  );
  const badge = (c) => h('span', { class: `ops-badge ops-wh-${c}`, 'data-condition': c }, `${ICON[c]} ${t(`webhooks.condition.${c}`)}`);

  /** A target's dead letters with replay (all, or one). */
  const deadLetters = async (base) => {
    let page;
    try {
      page = await ctx.api('GET', `${base}/dead-letters?limit=${LETTERS}`);
    } catch (e) {
      return k.message(k.errText(e), 'error');
    }
    const letters = page.dead_letters || [];
    if (letters.length === 0) return h('p', { class: 'ops-hint', 'data-test': 'dead-letters-empty' }, t('webhooks.no_dead_letters'));
    const replay = (seqs) => call('POST', `${base}/dead-letters/replay`, seqs ? { seqs } : {}, (r) => say(t('webhooks.replayed', { n: r.replayed }), true));
    return h(
      'div',
      { class: 'ops-letters' },
      h('button', { type: 'button', 'data-test': 'dead-letters-replay-all', onclick: () => replay(null) }, t('webhooks.replay_all', { n: letters.length })),
      h('table', { class: 'ops-table' },
        h('thead', {}, h('tr', {}, ['seq', 'kind', 'event', 'dead_at', 'reason', 'attempts', ''].map((c) => h('th', { scope: 'col' }, c ? t(`webhooks.letter.${c}`) : '')))),
        h('tbody', {}, letters.map((d) => h(
          'tr',
          { 'data-test': 'dead-letter', 'data-seq': String(d.entry.seq), 'data-event': d.entry.event_id },
          h('td', {}, String(d.entry.seq)), h('td', {}, d.entry.kind), h('td', {}, d.entry.event_id),
          h('td', {}, k.time(d.dead_at)), h('td', {}, d.reason || d.entry.last_error || ''), h('td', {}, String(d.entry.attempts)),
          h('td', {}, h('button', { type: 'button', 'data-test': 'dead-letter-replay', onclick: () => replay([d.entry.seq]) }, t('webhooks.replay'))),
        )))),
    );
  };

  const card = async (w) => {
    const base = `/v1/webhooks/${encodeURIComponent(w.id)}`;
    const c = condition(w.health, w.enabled);
    const confirmBar = h('span', { class: 'ops-confirm' });
    const letters = h('div', { class: 'ops-letters-wrap' });
    if (open.has(w.id)) letters.replaceChildren(await deadLetters(base));
    const toggleLetters = async () => {
      if (open.has(w.id)) {
        open.delete(w.id);
        letters.replaceChildren();
      } else {
        open.add(w.id);
        letters.replaceChildren(await deadLetters(base));
      }
    };
    return h(
      'article',
      { class: `ops-card ops-wh ops-wh-card-${c}`, 'data-test': 'webhook-row', 'data-webhook': w.id, 'data-enabled': w.enabled ? 'true' : 'false', 'data-condition': c },
      h('header', {}, h('h3', {}, w.description || w.url), badge(c)),
      h('p', { class: 'ops-sub' }, `${w.id} · ${w.url}`),
      h('p', { class: 'ops-sub' }, `${t('webhooks.events')}: ${(w.events || []).join(', ')}`,
        (w.sites || []).length ? ` · ${t('webhooks.sites')}: ${w.sites.join(', ')}` : '',
        (w.carriers || []).length ? ` · ${t('webhooks.carriers')}: ${w.carriers.join(', ')}` : '',
        operator ? ` · ${t('webhooks.owner')}: ${w.owner}` : ''),
      w.disabled_reason ? h('p', { class: 'ops-msg ops-msg-error' }, w.disabled_reason) : '',
      w.previous_secret_expires ? h('p', { class: 'ops-sub' }, t('webhooks.old_secret_until', { at: k.time(w.previous_secret_expires) })) : '',
      healthList(w.health || {}),
      h(
        'div',
        { class: 'ops-actions' },
        h('button', {
          type: 'button', 'data-test': w.enabled ? 'webhook-disable' : 'webhook-enable',
          onclick: () => call('PATCH', base, { enabled: !w.enabled }, () => say(t(w.enabled ? 'webhooks.disabled_ok' : 'webhooks.enabled_ok', { id: w.id }), true)),
        }, t(w.enabled ? 'webhooks.disable' : 'webhooks.enable')),
        h('button', {
          type: 'button', 'data-test': 'webhook-ping',
          onclick: () => call('POST', `${base}/ping`, {}, (r) => say(t('webhooks.pinged', { event: r.event_id }), true)),
        }, t('webhooks.ping')),
        h('button', {
          type: 'button', 'data-test': 'webhook-rotate',
          onclick: () => call('POST', `${base}/rotate-secret`, {}, (v) => { showSecret(v); say(t('webhooks.rotated', { id: w.id }), true); }),
        }, t('webhooks.rotate')),
        h('button', { type: 'button', 'data-test': 'webhook-dead-letters', onclick: toggleLetters }, t('webhooks.dead_letters', { n: (w.health && w.health.dead_lettered) || 0 })),
        h('button', {
          type: 'button', class: 'ops-danger', 'data-test': 'webhook-delete',
          onclick: () => confirmBar.replaceChildren(
            t('webhooks.confirm_delete'), ' ',
            h('button', { type: 'button', class: 'ops-danger', 'data-test': 'webhook-delete-confirm', onclick: () => call('DELETE', base, undefined, () => say(t('webhooks.deleted', { id: w.id }), true)) }, t('webhooks.yes')),
            h('button', { type: 'button', onclick: () => confirmBar.replaceChildren() }, t('webhooks.no')),
          ),
        }, t('webhooks.delete')),
        confirmBar,
      ),
      letters,
    );
  };

  const targetRow = async (x) => {
    const base = `/v1/outbound/targets/${encodeURIComponent(x.target)}`;
    const key = `target:${x.target}`;
    const c = condition(x.health, true);
    const letters = h('div', {});
    if (open.has(key)) letters.replaceChildren(await deadLetters(base));
    const toggle = async () => {
      if (open.has(key)) {
        open.delete(key);
        letters.replaceChildren();
      } else {
        open.add(key);
        letters.replaceChildren(await deadLetters(base));
      }
    };
    return h(
      'article',
      { class: `ops-card ops-wh ops-wh-card-${c}`, 'data-test': 'target-row', 'data-target': x.target, 'data-condition': c },
      h('header', {}, h('h3', {}, x.target), badge(c)),
      healthList(x.health || {}),
      h('div', { class: 'ops-actions' }, h('button', { type: 'button', 'data-test': 'target-dead-letters', onclick: toggle }, t('webhooks.dead_letters', { n: (x.health && x.health.dead_lettered) || 0 }))),
      letters,
    );
  };

  // one load at a time; a load asked for meanwhile runs once after it
  let loading = false;
  let again = false;
  const load = async () => {
    if (loading) {
      again = true;
      return;
    }
    loading = true;
    try {
      const r = await ctx.api('GET', '/v1/webhooks');
      const ws = r.webhooks || [];
      subs.replaceChildren(...(ws.length === 0
        ? [h('p', { class: 'ops-hint', 'data-test': 'webhooks-empty' }, t('webhooks.empty'))]
        : await Promise.all(ws.map(card))));
      if (operator) {
        const tr = await ctx.api('GET', '/v1/outbound/targets');
        const others = (tr.targets || []).filter((x) => !x.target.startsWith('WH-'));
        targets.replaceChildren(...(others.length === 0
          ? [h('p', { class: 'ops-hint' }, t('webhooks.no_targets'))]
          : await Promise.all(others.map(targetRow))));
      }
    } catch (e) {
      say(k.errText(e), false);
    } finally {
      loading = false;
    }
    if (again) {
      again = false;
      await load();
    }
  };

  view.append(
    h('h1', {}, t('webhooks.title')),
    secretBox,
    note,
    h('section', { class: 'ops-section' }, h('h2', {}, t('webhooks.new')), create),
    h('section', { class: 'ops-section' },
      h('h2', {}, t('webhooks.subscriptions'), ' ', h('button', { type: 'button', 'data-test': 'webhooks-refresh', onclick: () => load() }, t('webhooks.refresh'))),
      subs),
    operator ? h('section', { class: 'ops-section' }, h('h2', {}, t('webhooks.targets')), targets) : '',
  );
  await load();
  const refetch = k.debounce(load, 2000);
  ctx.onLive(() => refetch());
}
