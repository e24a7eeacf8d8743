// Simulcast end to end: three pages capture 1280x720 (Chromium allocates
// simulcast layers by capture size: from 320x240 it sends one layer), publish
// q/h/f, and each asks the SFU for the layer that fits each remote tile
// (layer-choice.js). Each page shows one remote tile large and one small:
//   - every publisher sends three layers (outbound-rtp per rid, bytes growing);
//   - every large tile decodes the f layer (frameWidth 1280: in >= 90 % of the
//     samples in which its publisher sent f), with at most two layer switches
//     per subscriber per minute over a 60 s window (frameWidth changes, sampled
//     every ~500 ms, on both of its tiles);
//   - every small tile gets q or h;
//   - a tile moved off-screen is paused: it asks for q and says so, and goes
//     back to f when it is back in view.
// Three 1280x720 pages are heavy on two cores: capture runs at 10 fps (layers
// depend on the size, not the rate), and the test prints the CPU time of
// Chromium and of the servers over the measured window.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { browserSuite, joinPage, sameSafetyNumber, startServers, stats, waitFor } from './harness.mjs';

/** Length of the measured window (ms): long enough to count switches per minute. */
const WINDOW_MS = Number(process.env.SIMULCAST_WINDOW_MS ?? 60000);
/** Allowed layer switches per subscriber per minute. */
const SWITCHES_PER_MIN = 2;
const LARGE = 680; // px: a 4:3 tile of 680 x 510 shows 907 px of a 16:9 source: f
const SMALL = 200; // px: 200 x 150 shows 267 px: q

/**
 * Lays the page's tiles out in one row, all in view: the `large` tile 680 px
 * wide, the other remote one 200 px (the page's own tile hidden).
 */
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

/** The video entries of `page`'s remote tiles: {participantId: {frameWidth, layer, tile, framesDecoded}}. */
async function videos(page) {
  const s = await stats(page);
  const out = {};
  for (const r of s?.remote ?? []) if (r.kind === 'video') out[r.participantId] = r;
  return out;
}

/** Outbound video layers of `page`: {rid: {bytesSent, frameWidth, qualityLimitationReason}}. */
async function layers(page) {
  const s = await stats(page);
  const out = {};
  for (const t of s?.outbound ?? []) if (t.kind === 'video' && t.rid) out[t.rid] = t;
  return out;
}

/** CPU seconds (user + system) of this process's descendants, split Chromium / servers / other. */
function cpuTree() {
  const procs = new Map();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const close = stat.lastIndexOf(')');
      const comm = stat.slice(stat.indexOf('(') + 1, close);
      const f = stat.slice(close + 2).split(' ');
      procs.set(Number(name), { comm, ppid: Number(f[1]), ticks: Number(f[11]) + Number(f[12]) });
    } catch { /* gone */ }
  }
  const mine = (pid) => {
    for (let p = procs.get(pid), n = 0; p && n < 64; p = procs.get(p.ppid), n++) if (p.ppid === process.pid) return true;
    return false;
  };
  const out = { chromium: 0, servers: 0, other: 0 };
  for (const [pid, p] of procs) {
    if (!mine(pid)) continue;
    const group = /chrom/i.test(p.comm) ? 'chromium' : /satsuma/.test(p.comm) ? 'servers' : 'other';
    out[group] += p.ticks / 100;
  }
  return out;
}

describe('simulcast: three layers out, the layer each tile needs in', { timeout: 300000 }, () => {
  const room = `simulcast-${Date.now()}`;
  const pages = {};
  // The SFU's default configuration: bandwidth estimation on (as in production), so the large
  // tiles' f layer also depends on the estimate climbing on a clean link (issue 13). Passed 4 of
  // 4 runs at load 3-7 on the 2-core machine (2026-12-06), after the SFU took str0m's latest
  // estimate instead of its 3-s average and padding sessions got their pacer timeouts. Before,
  // it passed at load 8-15 and failed at 20-30 (2-4 switches). SIMULCAST_BWE=0 runs it with
  // estimation off (`--bwe-initial-kbps 0`), to tell the estimate from the rest when it fails.
  const sfuArgs = process.env.SIMULCAST_BWE === '0' ? ['--bwe-initial-kbps', '0'] : [];
  const suite = browserSuite({ pages, start: () => startServers({ sfuArgs }) });
  const { check } = suite;

  it('publishers send q/h/f; large tiles decode f with at most 2 switches/min; small tiles get q or h', check(async () => {
    const params = { video: '1280x720', fps: '10' };
    pages.a = await joinPage(suite.browser, suite.servers.base, { room, name: 'A', params });
    pages.b = await joinPage(suite.browser, suite.servers.base, { room, name: 'B', params });
    pages.c = await joinPage(suite.browser, suite.servers.base, { room, name: 'C', params });
    const trio = [pages.a, pages.b, pages.c];
    await sameSafetyNumber(trio);
    // Each page: the next participant's tile large, the one after small.
    const plan = trio.map((page, i) => ({ page, large: trio[(i + 1) % 3].participantId, small: trio[(i + 2) % 3].participantId }));
    for (const { page, large } of plan) await layout(page, large);

    // Publishers: three layers with bytes flowing (each grew between two samples ~1 s apart).
    for (const page of trio) {
      let prev = null;
      let seen = null;
      await waitFor(`${page.label} to send three layers`, async () => {
        const l = await layers(page);
        const growing = prev && ['q', 'h', 'f'].every((r) => l[r] && prev[r] && l[r].bytesSent > prev[r].bytesSent + 2000);
        seen = l;
        prev = l;
        return growing ? l : null;
      }, { timeout: 45000, interval: 1000 }).catch((err) => {
        err.message += `\nlast outbound: ${JSON.stringify(seen)}`;
        throw err;
      });
    }

    // Every large tile reaches f, every small one q or h.
    const started = Date.now();
    const brief = (v) => (v ? { frameWidth: v.frameWidth, framesDecoded: v.framesDecoded, asks: v.layer?.rid, tile: v.tile } : null);
    for (const { page, large, small } of plan) {
      let seen = null;
      await waitFor(`${page.label}: large tile decodes f (1280 wide), small tile q/h`, async () => {
        const v = await videos(page);
        seen = { large: brief(v[large]), small: brief(v[small]) };
        return v[large]?.frameWidth === 1280 && v[small]?.frameWidth > 0 && v[small].frameWidth <= 640 ? v : null;
      }, { timeout: 45000, interval: 500 }).catch((err) => {
        err.message += `\nlast seen: ${JSON.stringify(seen)}`;
        throw err;
      });
    }
    console.log(`# all large tiles at f after ${((Date.now() - started) / 1000).toFixed(1)} s more`);

    // The measured window: frameWidth of every tile every 500 ms.
    const cpu0 = cpuTree();
    const t0 = Date.now();
    const last = plan.map(() => ({}));
    const switches = plan.map(() => 0);
    const widths = plan.map(() => ({ large: new Set(), small: new Set() }));
    const samples = plan.map(() => ({ n: 0, largeAtF: 0, smallMax: 0 }));
    const decoded0 = await Promise.all(plan.map(({ page }) => videos(page)));
    // Whether each publisher's f layer flowed since the previous sample (a publisher whose
    // uplink estimate dips turns f off: its subscribers cannot have f then).
    let sent = await Promise.all(trio.map((p) => layers(p)));
    const fOff = Object.fromEntries(trio.map((p) => [p.participantId, 0]));
    while (Date.now() - t0 < WINDOW_MS) {
      const [all, now] = await Promise.all([
        Promise.all(plan.map(({ page }) => videos(page))),
        Promise.all(trio.map((p) => layers(p))),
      ]);
      const fOn = Object.fromEntries(trio.map((p, k) => [p.participantId, (now[k].f?.bytesSent ?? 0) > (sent[k].f?.bytesSent ?? 0)]));
      sent = now;
      for (const [id, on] of Object.entries(fOn)) if (!on) fOff[id] += 1;
      all.forEach((v, i) => {
        for (const [which, id] of [['large', plan[i].large], ['small', plan[i].small]]) {
          const w = v[id]?.frameWidth ?? 0;
          widths[i][which].add(w);
          if (which === 'large') {
            if (fOn[id]) samples[i].n += 1;
            if (fOn[id] && w === 1280) samples[i].largeAtF += 1;
          } else samples[i].smallMax = Math.max(samples[i].smallMax, w);
          if (last[i][which] !== undefined && w !== last[i][which]) switches[i] += 1;
          last[i][which] = w;
        }
      });
      await new Promise((r) => setTimeout(r, 500));
    }
    const elapsed = (Date.now() - t0) / 1000;
    const cpu1 = cpuTree();
    const end = await Promise.all(plan.map(({ page }) => videos(page)));
    const out = await Promise.all(trio.map((p) => layers(p)));
    console.log(`# window ${elapsed.toFixed(1)} s; CPU s/s: chromium ${((cpu1.chromium - cpu0.chromium) / elapsed).toFixed(2)}, `
      + `servers ${((cpu1.servers - cpu0.servers) / elapsed).toFixed(2)}, other ${((cpu1.other - cpu0.other) / elapsed).toFixed(2)}`);
    plan.forEach(({ page, large, small }, i) => {
      const fps = (id) => ((end[i][id].framesDecoded - decoded0[i][id].framesDecoded) / elapsed).toFixed(1);
      console.log(`# ${page.label}: switches ${switches[i]}; large ${[...widths[i].large]} (${(100 * samples[i].largeAtF / samples[i].n).toFixed(0)} % at 1280, ${fps(large)} fps, asks ${end[i][large].layer?.rid}), `
        + `small ${[...widths[i].small]} (${fps(small)} fps, asks ${end[i][small].layer?.rid})`);
    });
    trio.forEach((p, i) => console.log(`# ${p.label} sends ${Object.entries(out[i]).map(([r, t]) => `${r} ${t.frameWidth}x${t.frameHeight} ${t.qualityLimitationReason}`).join(', ')}; `
      + `its f layer was off in ${fOff[p.participantId]} samples`));

    const allowed = Math.floor((SWITCHES_PER_MIN * elapsed) / 60);
    plan.forEach(({ page, large, small }, i) => {
      assert.ok(switches[i] <= allowed, `${page.label}: ${switches[i]} layer switches in ${elapsed.toFixed(0)} s (at most ${allowed})`);
      // "Decodes the f layer": at f in at least 90 % of the samples in which its publisher sent
      // f (the switches when a publisher's f goes off and on again count against the allowance).
      assert.ok(samples[i].n >= 20, `${page.label}: its publisher sent f in only ${samples[i].n} samples`);
      assert.ok(samples[i].largeAtF >= samples[i].n * 0.9, `${page.label}: large tile at 1280 in ${samples[i].largeAtF} of ${samples[i].n} samples with f sent`);
      assert.ok(end[i][large].framesDecoded > decoded0[i][large].framesDecoded + elapsed * 5, `${page.label}: large tile kept decoding`);
      assert.ok(samples[i].smallMax > 0 && samples[i].smallMax <= 640, `${page.label}: small tile on q or h (widest ${samples[i].smallMax})`);
      assert.equal(end[i][large].layer?.rid, 'f');
      assert.ok(['q', 'h'].includes(end[i][small].layer?.rid), `small tile asks ${end[i][small].layer?.rid}`);
      assert.equal(end[i][large].tile, 'decoding');
    });
  }));

  it('a tile moved out of view is paused (asks for q) and comes back to f', check(async () => {
    const { a, b } = pages;
    const id = b.participantId; // A's large tile
    await a.evaluate((key) => {
      const tile = document.querySelector(`[data-key="${key}"]`);
      tile.style.position = 'fixed';
      tile.style.left = '-5000px';
    }, String(id));
    await waitFor('A to pause B\'s tile at q', async () => {
      const v = (await videos(a))[id];
      return v?.layer?.paused && v.layer.rid === 'q' && v.tile === 'paused' && v.frameWidth === 320 ? v : null;
    }, { timeout: 15000 });
    await a.evaluate((key) => {
      const tile = document.querySelector(`[data-key="${key}"]`);
      tile.style.position = '';
      tile.style.left = '';
    }, String(id));
    await waitFor('A to bring B\'s tile back to f', async () => {
      const v = (await videos(a))[id];
      return !v?.layer?.paused && v.layer.rid === 'f' && v.frameWidth === 1280 && v.tile === 'decoding' ? v : null;
    }, { timeout: 20000 });
  }));
});
