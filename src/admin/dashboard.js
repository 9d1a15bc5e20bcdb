// The admin dashboard: asks for the token, keeps it in this tab's sessionStorage, and
// sends it with every request to the page's own routes. Data is written into the page
// as text, never as HTML.
'use strict';

(() => {
  const TOKEN_KEY = 'tower-bouncer-admin-token';
  const REFRESH_MS = 2000;
  const CHART_SECONDS = 600;
  const CHART = { width: 640, height: 180, left: 8, right: 8, top: 12, bottom: 22 };
  let timer = null;

  const $ = (id) => document.getElementById(id);

  class HttpError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // A request to one of the page's routes, with the token; the answer's JSON.
  async function api(path, options = {}) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = Object.assign(token ? { Authorization: 'Bearer ' + token } : {}, options.headers || {});
    const response = await fetch(path, Object.assign({}, options, { headers, cache: 'no-store' }));
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (response.status === 401) {
      signOut('The token was refused.');
    }
    if (!response.ok) {
      throw new HttpError(response.status, body && body.error ? body.error : response.status + ' ' + response.statusText);
    }
    return body;
  }

  // As api, but null where the page was built without the layer (404).
  async function optional(path) {
    try {
      return await api(path);
    } catch (error) {
      if (error.status === 404) return null;
      throw error;
    }
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    if (timer !== null) clearInterval(timer);
    timer = null;
    $('dashboard').hidden = true;
    $('sign-out').hidden = true;
    $('login').hidden = false;
    $('token-error').textContent = message || '';
    $('token').focus();
  }

  async function signIn() {
    $('login').hidden = true;
    $('dashboard').hidden = false;
    $('sign-out').hidden = false;
    $('token-error').textContent = '';
    if (timer === null) timer = setInterval(refresh, REFRESH_MS);
    await refresh();
  }

  async function refresh() {
    try {
      const [stats, history, bans, peers] = await Promise.all(
        [api('stats'), api('stats/history'), optional('bans'), api('peers')]);
      showFigures(stats);
      drawChart(history);
      showBans(bans);
      showPeers(peers);
      $('status').textContent = 'Updated ' + new Date().toLocaleTimeString();
    } catch (error) {
      if (error.status !== 401) $('status').textContent = 'Not updated: ' + error.message;
    }
  }

  function number(value) {
    return value === null || value === undefined ? '-' : value.toLocaleString();
  }

  function seconds(value) {
    if (value === null || value === undefined) return '-';
    const s = Math.round(value);
    if (s < 120) return s + ' s';
    if (s < 7200) return Math.round(s / 60) + ' min';
    return (s / 3600).toFixed(1) + ' h';
  }

  function showFigures(stats) {
    const totals = stats.totals;
    $('fig-live').textContent = number(totals.live);
    $('fig-refused').textContent = number(totals.refused);
    $('fig-evicted').textContent = number(totals.evicted);
    $('fig-banned').textContent = number(totals.banned);
    $('fig-pressure').textContent = totals.pressure === null ? '-' : Math.round(totals.pressure * 100) + ' %';
    $('layers').textContent = JSON.stringify(stats, null, 2);
  }

  function svg(name, attributes, text) {
    const element = document.createElementNS('http://www.w3.org/2000/svg', name);
    for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
    if (text !== undefined) element.textContent = text;
    return element;
  }

  // Two lines over the last ten minutes, each scaled to its own highest point: live
  // connections, and refusals per second.
  function drawChart(history) {
    const chart = $('chart');
    chart.replaceChildren();
    const { width, height, left, right, top, bottom } = CHART;
    const plotWidth = width - left - right;
    const plotHeight = height - top - bottom;
    const x = (age) => left + plotWidth * (1 - Math.min(age, CHART_SECONDS) / CHART_SECONDS);
    for (let minutes = 0; minutes <= 10; minutes += 2) {
      const at = x(minutes * 60);
      chart.append(svg('line', { class: 'grid', x1: at, x2: at, y1: top, y2: top + plotHeight }));
      chart.append(svg('text', { class: 'axis', x: at, y: height - 6, 'text-anchor': minutes === 0 ? 'end' : (minutes === 10 ? 'start' : 'middle') },
        minutes === 0 ? 'now' : '-' + minutes + ' min'));
    }
    chart.append(svg('line', { class: 'grid', x1: left, x2: left + plotWidth, y1: top + plotHeight, y2: top + plotHeight }));
    const samples = history.samples;
    const interval = history.interval_seconds || 1;
    const series = [
      { name: 'live', value: (s) => s.live, label: $('max-live'), unit: '' },
      { name: 'refused', value: (s) => s.refused / interval, label: $('max-refused'), unit: '/s' },
    ];
    for (const line of series) {
      const values = samples.map(line.value);
      const known = values.filter((v) => v !== null && v !== undefined);
      const highest = Math.max(1, ...known);
      line.label.textContent = known.length ? '(up to ' + Math.round(Math.max(0, ...known)).toLocaleString() + line.unit + ')' : '(not measured)';
      const points = samples
        .map((s, i) => [s.age_seconds, values[i]])
        .filter(([age, v]) => v !== null && v !== undefined && age <= CHART_SECONDS)
        .map(([age, v]) => x(age).toFixed(1) + ',' + (top + plotHeight * (1 - v / highest)).toFixed(1));
      if (points.length) chart.append(svg('polyline', { class: line.name, points: points.join(' ') }));
    }
  }

  function cell(row, text) {
    const td = document.createElement('td');
    td.textContent = text;
    row.append(td);
    return td;
  }

  function showBans(bans) {
    const body = $('bans').tBodies[0];
    body.replaceChildren();
    if (bans === null) {
      $('bans-more').textContent = 'The page was built without the login layers: no bans to show.';
      return;
    }
    for (const ban of bans.bans) {
      const row = document.createElement('tr');
      row.dataset.target = ban.target;
      cell(row, ban.target);
      cell(row, seconds(ban.remaining_seconds));
      cell(row, number(ban.offences));
      cell(row, ban.reason || '');
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'unban';
      button.textContent = 'Unban';
      button.dataset.target = ban.target;
      button.addEventListener('click', () => unban(ban.target));
      cell(row, '').append(button);
      body.append(row);
    }
    $('bans-more').textContent = bans.total > bans.bans.length
      ? 'Showing ' + bans.bans.length + ' of ' + bans.total + ' bans.'
      : (bans.total === 0 ? 'Nobody is banned.' : '');
  }

  async function unban(target) {
    $('ban-error').textContent = '';
    try {
      await api('bans/' + encodeURIComponent(target), { method: 'DELETE' });
    } catch (error) {
      $('ban-error').textContent = 'Not unbanned: ' + error.message;
    }
    await refresh();
  }

  async function ban(event) {
    event.preventDefault();
    $('ban-error').textContent = '';
    const body = {
      target: $('ban-target').value.trim(),
      seconds: Number($('ban-seconds').value),
    };
    const reason = $('ban-reason').value.trim();
    if (reason) body.reason = reason;
    try {
      const banned = await api('bans', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
      // A network banned but for the exempt networks within it.
      if (banned && banned.note) $('ban-error').textContent = 'Banned, but ' + banned.note + '.';
      $('ban-target').value = '';
      $('ban-reason').value = '';
    } catch (error) {
      $('ban-error').textContent = 'Not banned: ' + error.message;
    }
    await refresh();
  }

  function fillPeers(id, peers, columns) {
    const table = $(id);
    table.hidden = peers === null;
    const body = table.tBodies[0];
    body.replaceChildren();
    for (const peer of peers || []) {
      const row = document.createElement('tr');
      row.dataset.peer = peer.peer;
      cell(row, peer.peer);
      for (const column of columns) cell(row, column(peer));
      body.append(row);
    }
  }

  function showPeers(peers) {
    fillPeers('by-connections', peers.by_connections, [(p) => number(p.connections)]);
    fillPeers('by-offences', peers.by_offences, [(p) => Math.round(p.toward_ban * 100) + ' %', (p) => number(p.bans)]);
    fillPeers('by-bans', peers.by_bans, [(p) => number(p.bans), (p) => seconds(p.banned_seconds)]);
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('token-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const token = $('token').value.trim();
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      $('token').value = '';
      signIn();
    });
    $('sign-out').addEventListener('click', () => signOut(''));
    $('ban-form').addEventListener('submit', ban);
    if (sessionStorage.getItem(TOKEN_KEY)) {
      signIn();
      return;
    }
    // A page served without a token (on loopback) needs none.
    fetch('stats', { cache: 'no-store' }).then((response) => {
      if (response.ok) signIn();
    }, () => {});
  });
})();
