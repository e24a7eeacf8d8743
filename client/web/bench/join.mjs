// Join benchmark (issue "Fast join"; run by scripts/bench-join.sh, not in CI):
// the time from `page.goto` of a joiner to its first remote video frame that
// was decrypted and decoded, over JOINS joins in each of three rooms:
//   - fresh:  the host alone, one joiner (who leaves cleanly after each trial);
//   - four:   four people in the room, one joiner;
//   - churn:  four people in the room, and before each join a fifth one joined
//             and then lost its page without leaving (network off, then closed:
//             like a crash), CHURN_GAP_MS (default 1500, always < 5 s) before
//             the joiner's `page.goto`.
// The total is the joiner page's own `firstDecoded` (ms since its navigation
// started); the page's join timeline (join-timeline.js) gives every step. The
// worker's decrypted count for that track is checked to be > 0 afterwards.
//
// Output: one line per room, `# join | <room> | n=N | p50 … | p95 … | steps p50 …`,
// and a JSON file of every sample in ARTIFACTS (bench-join-<time>.json).
//
// Environment: SATSUMA_BIN_DIR (the `satsuma` all-in-one binary; the script
// uses the release build), JOINS (default 20), ROOMS (comma list, default
// fresh,four,churn), CHURN_GAP_MS, PAGE_PARAMS (extra URL parameters for every page),
// MEMBER_PARAMS (extra URL parameters for the room's members only, e.g. `fps=5`).
// Each sample also carries the joiner's page start from navigation timing (`nav`:
// HTML received, DOM interactive, modules run, last script and the .wasm fetched,
// number of requests), summed up on the room's line as "page start p50".

import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { artifacts, joinPage, launchBrowser, leave, startAllInOne, waitFor } from '../tests/harness.mjs';
import { JOIN_STEPS } from '../public/join-timeline.js';

const JOINS = Math.max(1, Number(process.env.JOINS ?? 20));
const ROOMS = (process.env.ROOMS ?? 'fresh,four,churn').split(',').map((s) => s.trim()).filter(Boolean);
const CHURN_GAP_MS = Math.min(4900, Number(process.env.CHURN_GAP_MS ?? 1500));
// Extra URL parameters for every page, e.g. PAGE_PARAMS='simulcast=0'.
const PAGE_PARAMS = Object.fromEntries(new URLSearchParams(process.env.PAGE_PARAMS ?? ''));
// Extra URL parameters for the room's members only (not the joiner), e.g. MEMBER_PARAMS='fps=5':
// lighter member pages, to tell the cost of the join from that of the pages sharing the machine.
const MEMBER_PARAMS = { ...PAGE_PARAMS, ...Object.fromEntries(new URLSearchParams(process.env.MEMBER_PARAMS ?? '')) };
const STEPS = JOIN_STEPS;
// The room's members stand in for people on machines of their own, but here they share two
// cores with the joiner: five Chromium pages of a call (~0.4 core each, measured) saturate the
// machine, and the joiner's own timeline then measures that contention (its page load alone took
// 2.5-3.7 s in the 4-person room). So the members run in a browser of their own at this CPU nice
// level (default 10: they still get a core whenever the joiner does not need it, e.g. for the
// commit that adds the joiner). MEMBER_NICE=0 shares the CPU evenly.
const MEMBER_NICE = Number(process.env.MEMBER_NICE ?? 10);

function percentile(sorted, p) {
  return sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)];
}

/** The joiner: a fresh context, `goto` with autojoin, until its timeline has `firstDecoded`. */
async function timedJoin(browser, base, room, label) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 720 } });
  const page = await context.newPage();
  page.label = label;
  page.consoleLines = [];
  page.on('console', (m) => page.consoleLines.push(`${m.type()}: ${m.text()}`));
  const q = new URLSearchParams({ room, name: label, autojoin: '1', video: '320x240', ...PAGE_PARAMS });
  await page.goto(`${base}/?${q}`, { waitUntil: 'commit' });
  const marks = await waitFor(`${label}: a decoded remote video frame`, () => page.evaluate(() => {
    const t = window.satsuma?.timeline?.();
    return t && t.firstDecoded !== undefined ? t : null;
  }), { timeout: 30000, interval: 50 });
  // The decoded frames passed the E2EE worker (its counters arrive about once a second).
  await waitFor(`${label}: the worker's decrypted count`, () => page.evaluate(async () => {
    const s = await window.satsuma.stats();
    return s?.remote.some((x) => x.kind === 'video' && x.decrypted > 0 && x.framesDecoded > 0);
  }), { timeout: 10000 });
  // Where the page start went (navigation timing, ms since navigation start): the HTML, the
  // parsed document, the modules run (DOMContentLoaded), and the last script/.wasm fetched.
  const nav = await page.evaluate(() => {
    const n = performance.getEntriesByType('navigation')[0];
    const res = performance.getEntriesByType('resource');
    const end = (re) => Math.round(Math.max(0, ...res.filter((e) => re.test(e.name)).map((e) => e.responseEnd)));
    return {
      html: Math.round(n.responseEnd),
      interactive: Math.round(n.domInteractive),
      modulesRun: Math.round(n.domContentLoadedEventEnd),
      lastScript: end(/\.js(\?|$)/),
      wasmFetched: end(/\.wasm(\?|$)/),
      requests: res.length,
    };
  });
  return { page, marks: { ...marks, nav } };
}

async function aloneExcept(pages, n) {
  await waitFor(`the room to have ${n} participants`, async () => {
    for (const p of pages) {
      if (await p.evaluate(() => window.satsuma.call.participants.size) !== n) return false;
    }
    return true;
  }, { timeout: 30000, interval: 100 });
}

async function sending(page) {
  await waitFor(`${page.label} to be sending video`, () => page.evaluate(() => window.satsuma.call.sfu?.sending().some((s) => s.kind === 'video' && s.sending)), { timeout: 30000 });
}

/** Pids of this process's children whose command line names Chromium. */
function chromiumChildren() {
  const out = new Set();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const st = readFileSync(`/proc/${d}/stat`, 'utf8');
      const ppid = Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === process.pid && /chrom/.test(readFileSync(`/proc/${d}/cmdline`, 'utf8'))) out.add(Number(d));
    } catch {
      // The process ended meanwhile.
    }
  }
  return out;
}

/** Every descendant of `root` (and `root`). */
function treeOf(root) {
  const parent = new Map();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const st = readFileSync(`/proc/${d}/stat`, 'utf8');
      parent.set(Number(d), Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[1]));
    } catch {
      // The process ended meanwhile.
    }
  }
  const out = new Set([root]);
  for (let grew = true; grew;) {
    grew = false;
    for (const [p, pp] of parent) if (!out.has(p) && out.has(pp)) { out.add(p); grew = true; }
  }
  return [...out];
}

/**
 * A second browser for the members, its processes (and those it starts later, one per page)
 * kept at MEMBER_NICE. Returns `{browser, stop}`.
 */
async function memberBrowser() {
  if (MEMBER_NICE === 0) return { browser: null, stop() {} };
  const before = chromiumChildren();
  const browser = await launchBrowser();
  const roots = [...chromiumChildren()].filter((p) => !before.has(p));
  // Nice is per thread on Linux, and Chromium sets some of its threads' priorities itself
  // (its audio threads run at -8; a renderer is re-prioritized when it is shown): every thread
  // of every member process is put back to MEMBER_NICE four times a second.
  const renice = () => {
    for (const root of roots) {
      for (const pid of treeOf(root)) {
        let tids = [];
        try {
          tids = readdirSync(`/proc/${pid}/task`);
        } catch {
          continue; // gone
        }
        for (const tid of tids) {
          try {
            if (os.getPriority(Number(tid)) < MEMBER_NICE) os.setPriority(Number(tid), MEMBER_NICE);
          } catch {
            // The thread ended meanwhile.
          }
        }
      }
    }
  };
  renice();
  const timer = setInterval(renice, 250);
  console.log(`# join: members in their own browser (pid ${roots.join(',')}), every thread at nice ${MEMBER_NICE}`);
  return { browser, stop: async () => { clearInterval(timer); await browser.close().catch(() => {}); } };
}

async function runRoom(kind, browser, base, memberBrowserOrMain = browser) {
  const room = `bench-${kind}-${Date.now()}`;
  const members = [];
  const size = kind === 'fresh' ? 1 : 4;
  for (let i = 0; i < size; i++) {
    const p = await joinPage(memberBrowserOrMain, base, { room, name: `m${i}`, params: MEMBER_PARAMS });
    members.push(p);
    await sending(p);
  }
  await aloneExcept(members, size);
  const samples = [];
  for (let i = 0; i < JOINS; i++) {
    if (kind === 'churn') {
      // A fifth member joins, then its page closes without a leave: it stays
      // "present" (resume window) while the joiner arrives.
      const churner = await joinPage(memberBrowserOrMain, base, { room, name: `churner${i}`, params: MEMBER_PARAMS });
      await waitFor('the churner to be an MLS member', () => churner.evaluate(() => window.satsuma.call.e2ee.status?.phase === 'member'), { timeout: 30000, interval: 100 });
      await waitFor('every member to see the churner', async () => {
        for (const p of members) {
          if (!await p.evaluate((id) => window.satsuma.call.participants.has(id), churner.participantId)) return false;
        }
        return true;
      }, { timeout: 30000, interval: 100 });
      // A departure without `leave` (a crash, a lost network): offline first, so the page's
      // `pagehide` leave cannot reach the server.
      await churner.context().setOffline(true);
      await churner.context().close();
      await new Promise((r) => setTimeout(r, CHURN_GAP_MS));
    }
    const { page, marks } = await timedJoin(browser, base, room, `${kind}${i}`);
    samples.push(marks);
    console.log(`# join sample | ${kind} | ${i} | firstDecoded ${marks.firstDecoded} ms | ${JSON.stringify(marks)}`);
    await leave(page);
    // The next join starts once the room is back to its size (the joiner left cleanly;
    // in the churn room the closed page may still be present: it is not waited for).
    if (kind !== 'churn') await aloneExcept(members, size);
    else await new Promise((r) => setTimeout(r, 500));
  }
  for (const p of members) await leave(p);
  return samples;
}

function summarize(kind, samples) {
  const totals = samples.map((m) => m.firstDecoded).sort((a, b) => a - b);
  const steps = STEPS.map((k) => {
    const vs = samples.map((m) => m[k]).filter((x) => x !== undefined).sort((a, b) => a - b);
    return `${k} ${vs.length ? percentile(vs, 50) : '-'}`;
  }).join(', ');
  const navKeys = ['html', 'interactive', 'modulesRun', 'lastScript', 'wasmFetched', 'requests'];
  const nav = navKeys.map((k) => {
    const vs = samples.map((m) => m.nav?.[k]).filter((x) => x !== undefined).sort((a, b) => a - b);
    return `${k} ${vs.length ? percentile(vs, 50) : '-'}`;
  }).join(', ');
  const row = { room: kind, n: totals.length, p50: percentile(totals, 50), p95: percentile(totals, 95), steps, nav, all: totals };
  console.log(`# join | ${kind} | n=${row.n} | p50 ${row.p50} ms | p95 ${row.p95} ms | goal p95 <= 1000 ms: ${row.p95 <= 1000 ? 'met' : 'MISSED'} | steps p50 (ms since navigation): ${steps} | page start p50: ${nav}`);
  return row;
}

const servers = await startAllInOne();
const browser = await launchBrowser();
const members = ROOMS.some((k) => k !== 'fresh') ? await memberBrowser() : { browser: null, stop() {} };
const out = { at: new Date().toISOString(), joins: JOINS, churnGapMs: CHURN_GAP_MS, memberNice: MEMBER_NICE, rooms: {} };
try {
  for (const kind of ROOMS) {
    // The fresh room's one member (the host) shares the CPU evenly, as before.
    const samples = await runRoom(kind, browser, servers.base, kind === 'fresh' ? browser : members.browser ?? browser);
    out.rooms[kind] = { summary: summarize(kind, samples), samples };
  }
} finally {
  await members.stop();
  await browser.close().catch(() => {});
  await servers.stop();
}
mkdirSync(artifacts, { recursive: true });
const file = path.join(artifacts, `bench-join-${out.at.replace(/[:.]/g, '-')}.json`);
writeFileSync(file, JSON.stringify(out, null, 2));
console.log(`# join: samples in ${file}`);
