// The join timeline (issue "Fast join"): a joiner's page records when it
// reached each step of a join (client/web/public/join-timeline.js), from its
// navigation start to the first decrypted and decoded remote video frame. This
// test prints that timeline for two joins: into a room with one member, and
// into the same room right after a third page closed without leaving (it is
// still "present" in its resume window). It checks that every step is recorded
// and that the steps that depend on each other come in order, and that the
// joiner's frame really was decrypted.
//
// The figures printed here come from a debug build on a machine running the
// whole suite; the benchmark (scripts/bench-join.sh, release build) is where the
// join time is measured against its goal.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { browserSuite, joinPage, leave, waitFor } from './harness.mjs';
import { JOIN_STEPS } from '../public/join-timeline.js';

const STEPS = JOIN_STEPS;

// [earlier, later]: a step that cannot happen before another one.
const ORDER = [
  ['pageLoad', 'join'], ['pageLoad', 'lobbyReady'], ['join', 'token'], ['token', 'helloSent'],
  ['helloSent', 'welcome'], ['welcome', 'keyPackageSent'], ['workerReady', 'keyPackageSent'],
  ['keyPackageSent', 'mlsWelcome'], ['mlsWelcome', 'mlsMember'], ['mlsWelcome', 'execute'],
  ['welcome', 'sfuSession'], ['sfuSession', 'ice'], ['ice', 'dtls'], ['ice', 'firstPacket'],
  ['ice', 'firstKeyframe'], ['mlsMember', 'firstDecrypted', 50], ['firstPacket', 'firstDecoded'],
  ['firstKeyframe', 'firstDecoded'], ['firstDecrypted', 'firstDecoded'],
];
// (firstPacket and firstDecoded are read from stats every 25 ms; the other steps are events.
// The third element is a tolerance in ms for a pair stamped on two threads: firstDecrypted
// carries the E2EE worker's own time, mlsMember the time the worker's 'member' status reached
// the page, so with a fast join the first frame can show as decrypted a few ms "before".)

/** Joins `room` as `name` in a fresh context and returns the page and its timeline once it decoded a frame. */
async function timedJoin(suite, room, name) {
  const context = await suite.browser.newContext({ viewport: { width: 1280, height: 720 } });
  const page = await context.newPage();
  page.label = name;
  page.consoleLines = [];
  page.on('console', (m) => page.consoleLines.push(`${m.type()}: ${m.text()}`));
  const q = new URLSearchParams({ room, name, autojoin: '1', video: '320x240' });
  await page.goto(`${suite.servers.base}/?${q}`, { waitUntil: 'commit' });
  const marks = await waitFor(`${name}: a decoded remote video frame`, () => page.evaluate(() => {
    const t = window.satsuma?.timeline?.();
    return t && t.firstDecoded !== undefined ? t : null;
  }), { timeout: 45000, interval: 50 });
  await waitFor(`${name}: the decoded track's frames were decrypted`, () => page.evaluate(async () => {
    const s = await window.satsuma.stats();
    return s?.remote.some((x) => x.kind === 'video' && x.decrypted > 0 && x.framesDecoded > 0);
  }), { timeout: 15000 });
  return { page, marks };
}

function check(label, marks) {
  console.log(`# join-timeline | ${label} | ${STEPS.map((k) => `${k} ${marks[k] ?? '-'}`).join(', ')} (ms since navigation start)`);
  for (const step of STEPS) assert.equal(typeof marks[step], 'number', `${label}: step ${step} not recorded: ${JSON.stringify(marks)}`);
  for (const [a, b, slack = 0] of ORDER) assert.ok(marks[a] <= marks[b] + slack, `${label}: ${a} (${marks[a]} ms) after ${b} (${marks[b]} ms)`);
}

describe('join timeline', { timeout: 300000 }, () => {
  const room = `timeline-${Date.now()}`;
  const pages = {};
  const suite = browserSuite({ pages });

  it('a joiner records every step of its join, in order', suite.check(async () => {
    pages.host = await joinPage(suite.browser, suite.servers.base, { room, name: 'Host' });
    await waitFor('the host to be sending video', () => pages.host.evaluate(() => window.satsuma.call.sfu?.sending().some((s) => s.kind === 'video' && s.sending)), { timeout: 30000 });
    const { page, marks } = await timedJoin(suite, room, 'Joiner');
    pages.joiner = page;
    check('one member', marks);
  }));

  it('right after a member closed its page, a join records every step too', suite.check(async () => {
    pages.gone = await joinPage(suite.browser, suite.servers.base, { room, name: 'Gone' });
    await waitFor('Gone to be an MLS member', () => pages.gone.evaluate(() => window.satsuma.call.e2ee.status?.phase === 'member'), { timeout: 30000 });
    // No leave (network off first, so the page's pagehide leave cannot go out): Gone stays
    // present in its resume window.
    await pages.gone.context().setOffline(true);
    await pages.gone.context().close();
    delete pages.gone;
    const { page, marks } = await timedJoin(suite, room, 'Late');
    pages.late = page;
    check('after a departure', marks);
    for (const p of [pages.late, pages.joiner, pages.host]) await leave(p);
  }));
});
