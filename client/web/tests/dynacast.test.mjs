// Dynacast end to end: a layer nobody takes is turned off at the publisher.
// Two pages capture 1280x720 (so Chromium sends q/h/f). B's tile of A is made
// small, so B asks A's q only; the coordinator (which sees every pull and
// layer ask through its SFU proxy) tells A, and A turns its h and f
// encodings off: their outbound-rtp bytes stop within 3 s. B's tile is made
// large again: it asks f, A turns h and f back on, and B decodes f (1280 wide).
// Prints each layer's bytes/s before and after, the time to ~0 and the time
// to resume.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { browserSuite, joinPage, sameSafetyNumber, startServers, stats, waitFor } from './harness.mjs';

/** Below this a layer counts as off (bytes/s; an active layer at 10 fps sends ≥ 5 kB/s). */
const OFF_BPS = 500;
/** How soon after the ask an untaken layer must be off (ms, the bar). */
const OFF_WITHIN_MS = 3000;
const LARGE = 680; // px: a 4:3 tile of 680 x 510 shows 907 px of a 16:9 source: f
const SMALL = 200; // px: 200 x 150 shows 267 px: q

/** Sets the width of `page`'s tile of participant `id` (its own tile hidden). */
async function tileWidth(page, id, width) {
  await page.evaluate(({ key, width }) => {
    const grid = document.getElementById('grid');
    grid.style.display = 'flex';
    grid.style.alignItems = 'flex-start';
    for (const tile of grid.querySelectorAll('.tile')) {
      if (tile.dataset.key === 'local') tile.style.display = 'none';
      if (tile.dataset.key === key) {
        tile.style.width = `${width}px`;
        tile.style.flex = '0 0 auto';
      }
    }
  }, { key: String(id), width });
}

/**
 * `{rid: bytesSent}` of `page`'s camera layers, with the time read (the media
 * connection's own outbound-rtp stats: lighter than the page's whole stats).
 */
async function sent(page) {
  const rid = await page.evaluate(async () => {
    const out = {};
    const report = await window.satsuma.call?.sfu?.pc.getStats();
    report?.forEach((s) => {
      if (s.type === 'outbound-rtp' && s.kind === 'video' && s.rid) out[s.rid] = (out[s.rid] ?? 0) + (s.bytesSent ?? 0);
    });
    return out;
  });
  return { at: Date.now(), rid };
}

/** Bytes/s per rid between two `sent` samples. */
function rates(a, b) {
  const secs = Math.max(0.001, (b.at - a.at) / 1000);
  return Object.fromEntries(Object.keys(b.rid).map((r) => [r, Math.round(((b.rid[r] ?? 0) - (a.rid[r] ?? 0)) / secs)]));
}

/** B's video of A: {frameWidth, framesDecoded, asks}. */
async function video(page, from) {
  const s = await stats(page);
  const v = (s?.remote ?? []).find((r) => r.kind === 'video' && r.participantId === from);
  return v ? { frameWidth: v.frameWidth, framesDecoded: v.framesDecoded, asks: v.layer?.rid, tile: v.tile } : null;
}

/**
 * Samples `page`'s layer rates every `interval` ms until `done(rates)` holds; returns
 * the ms from `since` to the first sample window that satisfied it, and the rates.
 */
async function until(what, page, since, done, { timeout = 15000, interval = 250 } = {}) {
  let prev = await sent(page);
  let last = null;
  while (Date.now() - since < timeout) {
    await new Promise((r) => setTimeout(r, interval));
    const now = await sent(page);
    last = rates(prev, now);
    if (done(last)) return { ms: now.at - since, rates: last };
    prev = now;
  }
  throw new Error(`${what}: not within ${timeout} ms; last rates ${JSON.stringify(last)}`);
}

describe('dynacast: layers nobody takes go off at the publisher', { timeout: 180000 }, () => {
  const pages = {};
  // The SFU's defaults: bandwidth estimation on (issue 13). Passed 4 of 4 runs with it on at
  // load 15-24 on the 2-core machine (2026-12-07): h and f off 1.6-2.2 s after the ask, B back
  // at 1280 wide 3.4-5.4 s after its tile grew. SIMULCAST_BWE=0 runs it with estimation off
  // (`--bwe-initial-kbps 0`), to tell the estimate from the rest when it fails.
  const sfuArgs = process.env.SIMULCAST_BWE === '0' ? ['--bwe-initial-kbps', '0'] : [];
  const suite = browserSuite({ pages, start: () => startServers({ sfuArgs }) });

  it('h and f stop within 3 s when the only subscriber asks q, and come back when it asks f', suite.check(async () => {
    const room = `dynacast-${Date.now()}`;
    const params = { video: '1280x720', fps: '10' };
    pages.a = await joinPage(suite.browser, suite.servers.base, { room, name: 'A', params });
    pages.b = await joinPage(suite.browser, suite.servers.base, { room, name: 'B', params });
    const { a, b } = pages;
    await sameSafetyNumber([a, b]);
    await tileWidth(b, a.participantId, LARGE);

    // A sends three layers and B decodes f.
    let seen = null;
    await waitFor('A to send q/h/f and B to decode f', async () => {
      const r = await until('three layers', a, Date.now(), () => true, { interval: 1000 });
      const v = await video(b, a.participantId);
      seen = { rates: r.rates, b: v };
      return ['q', 'h', 'f'].every((rid) => r.rates[rid] > 2000) && v?.frameWidth === 1280 ? r : null;
    }, { timeout: 60000, interval: 0 }).catch((err) => {
      err.message += `\nlast seen: ${JSON.stringify(seen)}`;
      throw err;
    });
    const before = (await until('rates before', a, Date.now(), () => true, { interval: 2000 })).rates;
    console.log(`# before: A sends ${JSON.stringify(before)} bytes/s`);

    // B's tile of A small: B asks q, nobody takes A's h and f.
    const shrunk = Date.now();
    await tileWidth(b, a.participantId, SMALL);
    const off = await until('A turns h and f off', a, shrunk, (r) => r.h < OFF_BPS && r.f < OFF_BPS && r.q > 2000, { timeout: 15000 });
    const asks = await video(b, a.participantId);
    const layersState = await a.evaluate(() => window.satsuma.call?.dynacast?.state() ?? null);
    const appliedAt = Math.max(...Object.values(layersState ?? {}).map((t) => t.at ?? 0)) - shrunk;
    console.log(`# off: h and f below ${OFF_BPS} B/s ${off.ms} ms after B's tile shrank (B asks ${asks?.asks}; A applied the change after ${appliedAt} ms); `
      + `rates ${JSON.stringify(off.rates)}; A's dynacast ${JSON.stringify(layersState)}`);
    assert.equal(asks?.asks, 'q', 'B asks q for its small tile');
    assert.ok(off.ms <= OFF_WITHIN_MS, `h and f off after ${off.ms} ms (at most ${OFF_WITHIN_MS})`);
    // They stay off while nobody takes them, and B keeps decoding q.
    const held = await until('held', a, Date.now(), () => true, { interval: 2000 });
    const bq = await video(b, a.participantId);
    console.log(`# held: ${JSON.stringify(held.rates)}; B decodes ${bq?.frameWidth} wide`);
    assert.ok(held.rates.h < OFF_BPS && held.rates.f < OFF_BPS, `h and f stay off: ${JSON.stringify(held.rates)}`);
    assert.ok(held.rates.q > 2000, `q keeps flowing: ${JSON.stringify(held.rates)}`);

    // B's tile large again: B asks f, A turns h and f on, B decodes f.
    const grown = Date.now();
    await tileWidth(b, a.participantId, LARGE);
    const on = await until('A turns f back on', a, grown, (r) => r.f > 2000 && r.h > 2000, { timeout: 15000 });
    const decoded0 = (await video(b, a.participantId))?.framesDecoded ?? 0;
    const atF = await waitFor('B to decode f again', async () => {
      const v = await video(b, a.participantId);
      return v?.frameWidth === 1280 && v.framesDecoded > decoded0 ? v : null;
    }, { timeout: 20000 });
    const decodedAt = Date.now() - grown;
    console.log(`# resume: f and h flowing ${on.ms} ms after B's tile grew (rates ${JSON.stringify(on.rates)}); B decodes 1280 wide after ${decodedAt} ms (tile ${atF.tile}, asks ${atF.asks})`);
    assert.equal(atF.asks, 'f');
  }));
});
