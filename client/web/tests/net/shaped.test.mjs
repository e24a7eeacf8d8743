// A shaped subscriber (issue 13, "Video that adapts"): a 3-person call of
// Chromium pages capturing 1280x720 (q/h/f simulcast, 10 fps as in
// simulcast.test.mjs), against the all-in-one `satsuma` with bandwidth
// estimation on (its default). Pages A and B run in the host's Chromium; page
// C runs in a network namespace (netns.mjs) whose downlink is shaped with a
// `tc` tbf at 300 kbit/s plus 3 % random loss of its inbound UDP from an
// nftables `numgen random` drop rule (Netns.shape). Each page shows one remote
// tile large (f) and one small (q), as in simulcast.test.mjs.
//
// Every page samples its remote videos in the page (framesDecoded and
// frameWidth, every 100 ms on C, 200 ms on A and B). Once every large tile
// decodes f, C's downlink is shaped for SHAPED_MS, then the shaping is lifted:
//   - C's large tile drops to q (320 wide) within 3 s of the shaping and keeps
//     decoding: its longest freeze from the shaping to the end is <= 1 s;
//   - it climbs back to f (1280) within 15 s after the shaping is lifted;
//   - on every page, framesDecoded never stalls for more than 1 s within the
//     5 s after a layer switch of a tile (C's small tile, which the SFU pauses
//     while the link is shaped, is judged up to the shaping only);
//   - A and B are unaffected: their large tiles stay on f (>= 90 % of the
//     samples) and never freeze for more than 1 s.
// C still publishes (its uplink is not shaped), but the feedback its encoder's
// own estimator needs (transport-wide feedback, RTCP from the SFU) crosses the
// shaped, lossy downlink: B, whose large tile is C, may see C's f come and go.
// A freeze is the time the counter was seen not to move: from the first
// sample showing a count to the last sample showing the same count (a lower
// bound of the gap between two decoded frames, within one sampling interval).
// The test prints every figure (`# shaped | ...`).

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { artifacts, joinPage, sameSafetyNumber, stats, waitFor } from '../harness.mjs';
import { netSuite, shapeSupport } from './netns.mjs';

// In the network suite's default run again from session 14 (2026-12-07): with the fixes of that
// session (a replaced RTX cache starts a new resend ratio, vendored str0m change 6; video RTX
// caches of 2 s; a layer change asks for its keyframe at once; urgent switches fit 0.75 of the
// estimate) it passed 15 of 16 quiet runs, C's longest freeze 0.40-1.00 s, to q 0.9-1.6 s, back to
// f 6.3-13.4 s after the lift; the one failure was A's view of C, counted then while C's own f came
// and went (now counted only while C has sent f steadily for 4 s, see publishingSteadily). Its
// freeze bar was close then (a 0.996 s freeze in one of those runs). Session 16 removed the
// padding a troubled session sent without asking (it kept the tbf queue full mid-shaping) and
// made urgent switches pause legs in the same selection: 30 of 31 quiet runs, C's longest
// freeze 0.30-1.00 s (median ~0.5 s; the failure 1,002 ms at the onset), back to f 2.8-14.2 s.
// benches/README.md, "A shaped browser subscriber". SATSUMA_SHAPED=0 leaves it out; it is
// skipped (with the reason) if the machine cannot shape: no `tc`, no tbf qdisc or no nftables
// `numgen` (netns.mjs, shapeSupport).
// SHAPED_TRACE=1 prints the shaped page's counters every 500 ms and writes the tbf's counters every
// 100 ms to ARTIFACTS/shaped-qdisc-<pid>.log; SATSUMA_NET_LOG=<filter> (e.g.
// `warn,satsuma_sfu::layer=trace,satsuma_sfu::forward=trace`) writes the server's log to
// ARTIFACTS/net-satsuma-<pid>.log.
const ENABLED = process.env.SATSUMA_SHAPED !== '0';
const support = ENABLED ? shapeSupport() : { ok: false, reason: 'left out with SATSUMA_SHAPED=0' };
if (!support.ok) console.log(`# net: SKIPPED: ${support.reason}`);

const RATE_KBIT = 300;
const LOSS_PERCENT = 3;
/** How long the downlink stays shaped (ms). */
const SHAPED_MS = Number(process.env.SHAPED_MS ?? 20000);
/** Bars from the issue. */
const TO_Q_MS = 3000;
const BACK_TO_F_MS = 15000;
const MAX_FREEZE_MS = 1000;
/** How long after a switch a stall is looked for (ms). */
const AFTER_SWITCH_MS = 5000;
const WIDTH = { q: 320, h: 640, f: 1280 };
const LARGE = 680; // px: asks f (see simulcast.test.mjs)
const SMALL = 200; // px: asks q

/** One remote tile large, the other small, the page's own hidden (as in simulcast.test.mjs). */
async function layout(page, large) {
  await page.evaluate(({ large, LARGE, SMALL }) => {
    const grid = document.getElementById('grid');
    grid.style.display = 'flex';
    grid.style.alignItems = 'flex-start';
    for (const tile of grid.querySelectorAll('.tile')) {
      if (tile.dataset.key === 'local') tile.style.display = 'none';
      tile.style.width = `${tile.dataset.key === String(large) ? LARGE : SMALL}px`;
      tile.style.flex = '0 0 auto';
    }
  }, { large, LARGE, SMALL });
}

async function videos(page) {
  const s = await stats(page);
  const out = {};
  for (const r of s?.remote ?? []) if (r.kind === 'video') out[r.participantId] = r;
  return out;
}

/**
 * Starts sampling in the page every `intervalMs`: `{t, v: {participantId:
 * [framesDecoded, frameWidth]}}` rows in `window.__shaped` (Date.now() times:
 * the pages and this process share the clock).
 */
async function startSampler(page, intervalMs, deep = false) {
  await page.evaluate(({ intervalMs, deep }) => {
    const rows = [];
    window.__shaped = rows;
    let busy = false;
    window.__shapedTimer = setInterval(async () => {
      if (busy) return;
      busy = true;
      try {
        const s = await window.satsuma.stats();
        // SHAPED_TRACE: the receiver's own view of loss and repair, per mid (inbound-rtp).
        const byMid = new Map();
        let audioBytes = 0;
        const codecs = new Map();
        const audioCodecs = new Set();
        if (deep) {
          const pc = window.satsuma.call?.sfu?.pc;
          const report = [...(await pc?.getStats())?.values() ?? []];
          for (const x of report) if (x.type === 'codec') codecs.set(x.id, x.mimeType);
          for (const x of report) {
            if (x.type === 'inbound-rtp' && x.kind === 'video') byMid.set(x.mid, x);
            if (x.type === 'inbound-rtp' && x.kind === 'audio') {
              audioBytes += (x.bytesReceived ?? 0) + (x.headerBytesReceived ?? 0);
              audioCodecs.add(codecs.get(x.codecId) ?? '-');
            }
          }
        }
        const v = {};
        for (const r of s?.remote ?? []) {
          if (r.kind === 'video') {
            v[r.participantId] = [r.framesDecoded, r.frameWidth, r.packetsReceived, r.framesReceived, r.keyFramesDecoded, r.pliCount, r.decrypted, r.dropped];
            const x = byMid.get(r.mid);
            if (x) {
              v[r.participantId].push(x.packetsLost ?? 0, x.nackCount ?? 0, x.freezeCount ?? 0,
                Math.round((x.totalFreezesDuration ?? 0) * 1000), x.firCount ?? 0,
                Math.round(1000 * (x.jitterBufferDelay ?? 0) / Math.max(1, x.jitterBufferEmittedCount ?? 1)), x.retransmittedPacketsReceived ?? 0,
                (x.bytesReceived ?? 0) + (x.headerBytesReceived ?? 0), audioBytes, codecs.get(x.codecId) ?? '-', [...audioCodecs].join('+'));
            }
          }
        }
        // What this page publishes: frames encoded per rid (is its f layer being sent?).
        const o = {};
        for (const x of s?.outbound ?? []) if (x.kind === 'video' && x.rid) o[x.rid] = x.framesEncoded;
        rows.push({ t: Date.now(), v, o });
      } catch { /* a sample lost */ } finally {
        busy = false;
      }
    }, intervalMs);
  }, { intervalMs, deep });
}

async function stopSampler(page) {
  return page.evaluate(() => {
    clearInterval(window.__shapedTimer);
    return window.__shaped;
  });
}

/** The samples of one remote tile: [{t, n (framesDecoded), w (frameWidth)}] from `from` on. */
function series(rows, id, from = 0) {
  return rows.filter((r) => r.t >= from && r.v[id]).map((r) => ({ t: r.t, n: r.v[id][0], w: r.v[id][1] }));
}

/** Longest time the decoded-frame count was seen not to move in `s` within [from, to]. */
function longestFreeze(s, from = -Infinity, to = Infinity) {
  let longest = { ms: 0, at: null };
  let start = null;
  for (const x of s) {
    if (x.t < from || x.t > to) continue;
    if (start === null || x.n !== start.n) {
      start = x;
      continue;
    }
    if (x.t - start.t > longest.ms) longest = { ms: x.t - start.t, at: start.t };
  }
  return longest;
}

/** Width changes of `s`: [{t, from, to}] (a zero width, before the first frame, is skipped). */
function switches(s) {
  const out = [];
  let last = null;
  for (const x of s) {
    if (!x.w) continue;
    if (last !== null && x.w !== last) out.push({ t: x.t, from: last, to: x.w });
    last = x.w;
  }
  return out;
}

/** The first sample at or after `from` whose width is `w`. */
function firstAt(s, from, w) {
  return s.find((x) => x.t >= from && x.w === w) ?? null;
}

/**
 * Whether the page of `rows` encoded frames on its `rid` layer without a pause for the `ms` before
 * `t`: its counter moved within every second of that window. A layer that stopped and came back is taken
 * again by the SFU only once it has flowed for a measuring window and the estimate left room for
 * it for the up-hold (sfu/src/layer.rs: METER_WINDOW 0.5 s, UP_HOLD 2.5 s), then on its keyframe.
 */
function publishingSteadily(rows, rid, t, ms = 4000) {
  let start = null;
  let lastMove = null;
  let prev = null;
  for (const r of rows) {
    if (r.o?.[rid] === undefined || r.t < t - ms - 1000) continue;
    if (r.t > t) break;
    if (prev === null) {
      start = r.t;
      lastMove = r.t;
    } else if (r.o[rid] > prev) {
      if (r.t >= t - ms && r.t - lastMove > 1000) return false;
      lastMove = r.t;
    } else if (r.t >= t - ms && r.t - lastMove > 1000) {
      return false;
    }
    prev = r.o[rid];
  }
  return start !== null && start <= t - ms && t - lastMove <= 1000;
}

/** The longest gap between samples (the sampler's own stalls, for the report). */
function samplerGap(rows) {
  let g = 0;
  for (let i = 1; i < rows.length; i++) g = Math.max(g, rows[i].t - rows[i - 1].t);
  return g;
}

describe('a shaped subscriber adapts (tbf 300 kbit/s + 3 % loss)', { timeout: 300000, skip: support.ok ? false : support.reason }, () => {
  const pages = {};
  const env = netSuite({ pages });
  const { check } = env;
  const room = `shaped-${Date.now()}`;

  it('drops to q within 3 s, freezes <= 1 s, climbs back to f within 15 s of the lift; the others stay on f', check(async () => {
    const ns = env.namespace('shaped');
    const nsBrowser = await env.nsBrowser(ns);
    const params = { video: '1280x720', fps: '10' };
    pages.a = await joinPage(env.browser, env.servers.base, { room, name: 'A', params });
    pages.b = await joinPage(env.browser, env.servers.base, { room, name: 'B', params });
    pages.c = await joinPage(nsBrowser, env.servers.serviceBase, { room, name: 'C-shaped', params });
    const trio = [pages.a, pages.b, pages.c];
    await sameSafetyNumber(trio);
    const plan = trio.map((page, i) => ({ page, large: trio[(i + 1) % 3].participantId, small: trio[(i + 2) % 3].participantId }));
    for (const { page, large } of plan) await layout(page, large);
    const shaped = plan[2];

    // Every large tile decodes f, every small one q or h.
    for (const { page, large, small } of plan) {
      let seen = null;
      await waitFor(`${page.label}: large tile at f, small at q/h`, async () => {
        const v = await videos(page);
        seen = { large: v[large]?.frameWidth, small: v[small]?.frameWidth };
        return v[large]?.frameWidth === WIDTH.f && v[small]?.frameWidth > 0 && v[small].frameWidth <= WIDTH.h ? v : null;
      }, { timeout: 60000, interval: 500 }).catch((err) => {
        err.message += `\nlast seen: ${JSON.stringify(seen)}`;
        throw err;
      });
    }

    for (const { page } of plan) await startSampler(page, page === shaped.page ? 100 : 200, page === shaped.page && process.env.SHAPED_TRACE === '1');
    await new Promise((r) => setTimeout(r, 4000)); // a baseline before the shaping
    const tShape = Date.now();
    console.log(`# shaped | shaping at ${new Date(tShape).toISOString()}`);
    ns.shape({ rateKbit: RATE_KBIT, lossPercent: LOSS_PERCENT });
    // SHAPED_TRACE: the tbf's counters every 100 ms (ms since the epoch, then `tc -s`'s
    // "Sent ... backlog ..." lines) in ARTIFACTS/shaped-qdisc-<pid>.log.
    const qdiscLog = process.env.SHAPED_TRACE === '1'
      ? spawn('sh', ['-c', `while :; do date +%s%3N; tc -s qdisc show dev ${ns.hostIf} | grep -E 'Sent|backlog'; sleep 0.1; done > ${path.join(artifacts, `shaped-qdisc-${process.pid}.log`)}`], { stdio: 'ignore' })
      : null;
    // C's large tile at q: awaited (polled), the figure comes from the in-page samples.
    await waitFor('C: large tile at q under the shaping', async () => (await videos(shaped.page))[shaped.large]?.frameWidth === WIDTH.q, { timeout: 15000, interval: 200 })
      .catch(() => {}); // judged below from the samples
    const rest = SHAPED_MS - (Date.now() - tShape);
    if (rest > 0) await new Promise((r) => setTimeout(r, rest));
    const qdisc = ns.qdisc();
    const tLift = Date.now();
    ns.unshape();
    qdiscLog?.kill();
    console.log(`# shaped | lifted at ${new Date(tLift).toISOString()}`);
    await waitFor('C: large tile back at f after the lift', async () => (await videos(shaped.page))[shaped.large]?.frameWidth === WIDTH.f, { timeout: 25000, interval: 250 })
      .catch(() => {}); // judged below from the samples
    await new Promise((r) => setTimeout(r, 3000)); // decoding after the climb
    const rows = await Promise.all(plan.map(({ page }) => stopSampler(page)));
    const tEnd = Date.now();

    // C, its large tile.
    const c = series(rows[2], shaped.large);
    const toQ = firstAt(c, tShape, WIDTH.q);
    const backF = firstAt(c, tLift, WIDTH.f);
    const freezeC = longestFreeze(c, tShape, tEnd);
    const freezeCSmall = longestFreeze(series(rows[2], shaped.small), tShape, tEnd);
    const decodedShaped = (() => {
      const during = c.filter((x) => x.t >= tShape && x.t <= tLift);
      return during.length ? during[during.length - 1].n - during[0].n : 0;
    })();
    console.log(`# shaped | C (tbf ${RATE_KBIT} kbit/s + ${LOSS_PERCENT} % loss for ${((tLift - tShape) / 1000).toFixed(1)} s): `
      + `to q ${toQ ? `${toQ.t - tShape} ms` : 'never'}; back to f ${backF ? `${backF.t - tLift} ms after the lift` : 'never'}; `
      + `longest freeze ${freezeC.ms} ms (large), ${freezeCSmall.ms} ms (small); ${decodedShaped} frames decoded while shaped `
      + `(${(decodedShaped / ((tLift - tShape) / 1000)).toFixed(1)} fps); switches ${JSON.stringify(switches(c).map((s) => [s.t - tShape, s.to]))} (ms from the shaping); `
      + `sampler gap ${samplerGap(rows[2])} ms`);
    if (process.env.SHAPED_TRACE === '1') {
      // C's large tile, every ~500 ms: [ms from the shaping, framesDecoded, width, packets, framesReceived, keyFramesDecoded, PLIs, decrypted, dropped,
      // then from inbound-rtp: packetsLost, nackCount, freezeCount, totalFreezesDuration ms, firCount, jitter buffer delay ms per frame, retransmitted packets,
      // this video's bytes (payload and headers), all audio's bytes, this video's codec, the audio codecs].
      let lastT = -Infinity;
      for (const r of rows[2]) {
        if (r.t - lastT < 450 || !r.v[shaped.large]) continue;
        lastT = r.t;
        console.log(`# shaped trace | ${r.t - tShape} ${r.v[shaped.large].join(' ')}`);
      }
    }
    console.log(`# shaped | C downlink qdisc before the lift: ${qdisc.replace(/\s+/g, ' ')}`);

    // Stalls after any switch, on every page and tile; A and B unaffected.
    const afterSwitch = [];
    const others = [];
    plan.forEach(({ page, large, small }, i) => {
      for (const [which, id] of [['large', large], ['small', small]]) {
        const s = series(rows[i], id);
        // The shaped page's small tile is paused by the SFU while the link is shaped (nothing
        // fits beside the large tile's q and the audio; its freeze is reported above, not a
        // bar): a switch of it before the lift is judged only up to the shaping.
        const pausedByDesign = page === shaped.page && which === 'small';
        for (const sw of switches(s)) {
          let end = Math.min(sw.t + AFTER_SWITCH_MS, tEnd);
          if (pausedByDesign && sw.t < tLift) end = Math.min(end, tShape);
          if (end <= sw.t) continue;
          const f = longestFreeze(s, sw.t, end);
          afterSwitch.push({ page: page.label, which, at: sw.t - tShape, to: sw.to, freeze: f.ms });
        }
        if (i < 2 && which === 'large') {
          // Samples while the publisher of this tile had sent its f layer steadily for 4 s: the
          // large tile of A or B may be C, whose encoder stops and restarts f (its own estimate
          // rests on feedback that crosses C's shaped downlink); what the SFU forwards can be no
          // better than what is published, and a layer that comes back is taken after the hold.
          const pub = rows[plan.findIndex((p) => p.page.participantId === id)];
          const all = s.filter((x) => x.t >= tShape);
          const w = pub ? all.filter((x) => publishingSteadily(pub, 'f', x.t)) : all;
          const atF = w.filter((x) => x.w === WIDTH.f).length;
          others.push({
            page: page.label, samples: w.length, atF, pct: w.length ? (100 * atF) / w.length : 0,
            allSamples: all.length, allAtF: all.filter((x) => x.w === WIDTH.f).length,
            freeze: longestFreeze(s, tShape, tEnd).ms, switches: switches(w).length, gap: samplerGap(rows[i]),
          });
        }
      }
    });
    console.log(`# shaped | after switches (ms from the shaping, longest freeze in the next ${AFTER_SWITCH_MS / 1000} s): ${JSON.stringify(afterSwitch)}`);
    for (const o of others) {
      console.log(`# shaped | ${o.page} large tile: at f in ${o.pct.toFixed(0)} % of ${o.samples} samples while its publisher sent f steadily `
        + `(${o.allAtF} of all ${o.allSamples}), ${o.switches} switches, longest freeze ${o.freeze} ms (sampler gap ${o.gap} ms)`);
    }

    assert.ok(toQ && toQ.t - tShape <= TO_Q_MS, `C reached q ${toQ ? `${toQ.t - tShape} ms` : 'never'} after the shaping (at most ${TO_Q_MS})`);
    assert.ok(decodedShaped >= ((tLift - tShape) / 1000) * 3, `C kept decoding while shaped: ${decodedShaped} frames`);
    assert.ok(freezeC.ms <= MAX_FREEZE_MS, `C's large tile froze for ${freezeC.ms} ms (at ${freezeC.at - tShape} ms from the shaping)`);
    assert.ok(backF && backF.t - tLift <= BACK_TO_F_MS, `C back at f ${backF ? `${backF.t - tLift} ms` : 'never'} after the lift (at most ${BACK_TO_F_MS})`);
    for (const s of afterSwitch) {
      assert.ok(s.freeze <= MAX_FREEZE_MS, `${s.page} ${s.which} tile stalled ${s.freeze} ms after its switch to ${s.to} at ${s.at} ms`);
    }
    for (const o of others) {
      assert.ok(o.samples >= 20 && o.atF >= o.samples * 0.9, `${o.page}: large tile at f in ${o.atF} of ${o.samples} samples`);
      assert.ok(o.freeze <= MAX_FREEZE_MS, `${o.page}: large tile froze for ${o.freeze} ms`);
    }
  }));
});
