// Time to first decrypted frame (issue 12), measured in the page: from the
// `join` click to the first `framesDecoded > 0` of a remote video whose frames
// passed the E2EE worker (its `decrypted` count is checked afterwards), over
// three paths:
//   - UDP: the host's own Chromium (loopback);
//   - ICE-TCP: Chromium in a namespace that drops all outbound UDP;
//   - TURN/TCP: Chromium in a namespace that reaches only the web port and
//     coturn's TCP port.
// A sender page stays in the room; each trial is a fresh browser context that
// loads the lobby (camera preview open), clicks Join, and leaves once it has
// decoded. Besides the total it records when each step was first seen (polled
// every 15 ms): token (the WebSocket exists), welcome, MLS member (Welcome
// processed), SFU session, ICE connected, DTLS (connectionState connected),
// first video RTP packet, first decoded frame.
//
// Prints one table line per path: `# time-to-first-frame | <path> | n=N |
// p50 … ms | p95 … ms | steps p50 …` (TFF_TRIALS trials per path, default 7;
// percentiles are nearest-rank). The goal (issue 12) is p95 ≤ 1 s over UDP and
// ≤ 2 s via TURN/TCP; the test fails only past 3× that (TFF_MAX_FACTOR), a
// bound a 2-core machine busy with other work stays under.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { joinPage, leave, waitFor } from '../harness.mjs';
import { netSuite, netSupport, selectedPair, serverFlags } from './netns.mjs';

const support = netSupport();
if (!support.ok) console.log(`# net: SKIPPED: ${support.reason}`);

const TRIALS = Math.max(1, Number(process.env.TFF_TRIALS ?? 7));
const MAX_FACTOR = Number(process.env.TFF_MAX_FACTOR ?? 3);
const STEPS = ['token', 'welcome', 'mls', 'sfuSession', 'ice', 'dtls', 'firstPacket', 'firstFrame'];

function percentile(sorted, p) {
  return sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)];
}

/** Runs in the trial page: clicks Join and times the steps until the first decoded remote video frame. */
async function timeJoin({ timeout }) {
  const marks = {};
  const t0 = performance.now();
  const mark = (k) => { if (marks[k] === undefined) marks[k] = Math.round(performance.now() - t0); };
  document.getElementById('join').click();
  return new Promise((resolve) => {
    const tick = async () => {
      try {
        const call = window.satsuma.call;
        if (call) {
          if (call.link.ws) mark('token');
          if (call.me !== null && call.me !== undefined) mark('welcome');
          if (call.e2ee.status?.phase === 'member') mark('mls');
          const sfu = call.sfu;
          if (sfu?.sessionId) mark('sfuSession');
          if (sfu?.pc) {
            if (['connected', 'completed'].includes(sfu.pc.iceConnectionState)) mark('ice');
            if (sfu.pc.connectionState === 'connected') mark('dtls');
          }
          if (marks.ice !== undefined) {
            const s = await call.snapshotStats();
            const v = s.remote.find((r) => r.kind === 'video' && r.participantId !== call.me && r.packetsReceived > 0);
            if (v) mark('firstPacket');
            const d = s.remote.find((r) => r.kind === 'video' && r.framesDecoded > 0);
            if (d) {
              mark('firstFrame');
              resolve({ marks, participantId: d.participantId });
              return;
            }
          }
        }
      } catch (err) {
        marks.error = String(err);
      }
      if (performance.now() - t0 > timeout) {
        resolve({ marks, timeout: true });
        return;
      }
      setTimeout(tick, 15);
    };
    tick();
  });
}

describe('time to first decrypted frame', { timeout: 900000, skip: support.ok ? false : support.reason }, () => {
  const pages = {};
  const env = netSuite({ coturn: true, serverArgs: (turn) => serverFlags(turn), pages });
  const { check } = env;
  const room = `tff-${Date.now()}`;
  const results = [];

  /** One trial: a fresh context in `browser` loads the lobby from `base`, joins, and is timed. */
  async function trial(browser, base, label, expectPair) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 720 } });
    const page = await context.newPage();
    page.label = label;
    page.consoleLines = [];
    page.on('console', (m) => page.consoleLines.push(`${m.type()}: ${m.text()}`));
    pages.trial = page;
    try {
      const q = new URLSearchParams({ room, name: label, video: '320x240' });
      await page.goto(`${base}/?${q}`, { waitUntil: 'domcontentloaded' });
      // This suite makes namespaces and veth pairs while pages load; a Chromium that sees the
      // network change fails the requests in flight with ERR_NETWORK_CHANGED and the app never
      // starts (as a user would see it, who reloads). So does the trial, at most twice, and says
      // so. The time is measured from the join click, after the lobby is ready.
      for (let reloads = 0; ; reloads++) {
        const ready = await page.waitForFunction(() => window.satsuma?.lobbyReady === true, null, { timeout: 15000 })
          .then(() => true, () => false);
        if (ready) break;
        const changed = page.consoleLines.filter((l) => /ERR_NETWORK_CHANGED/.test(l)).length;
        assert.ok(reloads < 2 && changed > 0, `${label}: the lobby was not ready within 15 s (${reloads} reloads; ${changed} requests failed with ERR_NETWORK_CHANGED)`);
        console.log(`# ${label}: the app did not start (${changed} requests failed with ERR_NETWORK_CHANGED): reloading`);
        page.consoleLines.length = 0;
        await page.reload({ waitUntil: 'domcontentloaded' });
      }
      const r = await page.evaluate(timeJoin, { timeout: 30000 });
      assert.ok(!r.timeout, `${label}: no decoded remote frame within 30 s; steps seen: ${JSON.stringify(r.marks)}`);
      // The decoded frames passed the E2EE worker (its counters arrive about once a second).
      await waitFor(`${label}: the worker's decrypted count for the first decoded track`, () => page.evaluate(async (from) => {
        const s = await window.satsuma.stats();
        const v = s.remote.find((x) => x.kind === 'video' && x.participantId === from);
        return v && v.decrypted > 0 && v.framesDecoded > 0 ? v : null;
      }, r.participantId), { timeout: 10000 });
      const pair = await selectedPair(page);
      assert.ok(pair && expectPair(pair), `${label}: unexpected selected pair ${JSON.stringify(pair)}`);
      return r.marks;
    } finally {
      delete pages.trial;
      env.closed.push(page);
      page.keptConsole = page.consoleLines;
      await leave(page).catch(() => {});
      // The next trial starts once the sender saw this one leave (one MLS change at a time).
      await waitFor('the sender to be alone again', () => pages.sender.evaluate(() => window.satsuma.call.participants.size === 1), { timeout: 20000 });
    }
  }

  function report(path, samples, goalMs) {
    const totals = samples.map((m) => m.firstFrame).sort((a, b) => a - b);
    const steps = STEPS.map((k) => {
      const vs = samples.map((m) => m[k]).filter((x) => x !== undefined).sort((a, b) => a - b);
      return `${k} ${vs.length ? percentile(vs, 50) : '-'}`;
    }).join(', ');
    const row = { path, n: totals.length, p50: percentile(totals, 50), p95: percentile(totals, 95), goalMs, steps, all: totals };
    results.push(row);
    console.log(`# time-to-first-frame | ${path} | n=${row.n} | p50 ${row.p50} ms | p95 ${row.p95} ms | goal p95 <= ${goalMs ?? '-'} ms: ${goalMs ? (row.p95 <= goalMs ? 'met' : 'MISSED') : 'n/a'} | steps p50 (ms since join): ${steps} | all: ${totals.join(' ')}`);
    return row;
  }

  async function measure(path, browser, base, expectPair, goalMs) {
    pages.sender ??= await joinPage(env.browser, env.servers.base, { room, name: 'Sender' });
    await waitFor('the sender to be sending', () => pages.sender.evaluate(() => window.satsuma.call.sfu?.sending().some((s) => s.kind === 'video' && s.sending)), { timeout: 30000 });
    const samples = [];
    for (let i = 0; i < TRIALS; i++) samples.push(await trial(browser, base, `${path.replace(/\W+/g, '')}-${i}`, expectPair));
    const row = report(path, samples, goalMs);
    if (goalMs) assert.ok(row.p95 <= goalMs * MAX_FACTOR, `${path}: p95 ${row.p95} ms is more than ${MAX_FACTOR}x the goal of ${goalMs} ms`);
  }

  it(`UDP (loopback): ${TRIALS} joins`, check(async () => {
    await measure('UDP (loopback)', env.browser, env.servers.base, (p) => p.local.protocol === 'udp' && p.local.candidateType !== 'relay', 1000);
  }));

  it(`ICE-TCP (outbound UDP and TCP to coturn dropped): ${TRIALS} joins`, check(async () => {
    const ns = env.namespace('tfftcp');
    try {
      ns.dropUdp({ noTurn: env.turn });
      const browser = await env.nsBrowser(ns);
      await measure('ICE-TCP', browser, env.servers.serviceBase, (p) => p.local.protocol === 'tcp' && p.local.candidateType !== 'relay', null);
    } finally {
      await ns.destroy();
    }
  }));

  it(`TURN/TCP (only coturn reachable): ${TRIALS} joins`, check(async () => {
    const ns = env.namespace('tffturn');
    try {
      ns.onlyTo(env.serviceIp, { tcp: [env.servers.webPort, env.turn.port] });
      const browser = await env.nsBrowser(ns);
      await measure('TURN/TCP', browser, env.servers.serviceBase, (p) => p.local.candidateType === 'relay' && p.local.relayProtocol === 'tcp', 2000);
    } finally {
      await ns.destroy();
    }
  }));

  it('summary', () => {
    console.log('# time-to-first-frame summary (join click -> first decrypted remote video frame decoded):');
    console.log('# | path | trials | p50 | p95 |');
    for (const r of results) console.log(`# | ${r.path} | ${r.n} | ${r.p50} ms | ${r.p95} ms |`);
    assert.equal(results.length, 3, 'all three paths measured');
  });
});
