// Issue 15: draining an SFU node during a browser call. Two satsuma-sfu nodes joined by the
// QUIC relay; the coordinator lists sfu-b first with a capacity of one session, so Alice's
// session starts the room there and Bob's overflows to sfu-a. Then `satsuma-sfu drain` on
// sfu-b: the node refuses new sessions and reports "draining" on /healthz, the coordinator
// tells Alice to move, her page makes a new session (placed on sfu-a), pushes and announces
// its tracks and pulls Bob again while the old session still carries her media
// (make-before-break); Bob pulls Alice's new tracks. Once the new session delivers (Bob's
// video decoded on it, her new tracks sent for a moment), the page withdraws the old tracks,
// closes the old connection and deletes the old session.
// Checked: the old connection was closed because the new one delivered (not by the timeout),
// after the new session was ready; both pages keep decoding each other with the longest
// freeze (no new decoded video frame, from either connection, sampled from the page's own
// stats every 100 ms) at most 2 s (break-before-make measured 0.30-0.84 s here,
// make-before-break about 0.13 s, the sampling step); no MLS rejoin (same participant ids,
// epoch and safety number, no reset); sfu-b exits 0 once empty.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import {
  assertDecodes, browserSuite, joinPage, sameSafetyNumber, stats, waitFor,
} from './harness.mjs';
import { metric, startCluster } from './cluster-harness.mjs';

const APP_SECRET = 'drain-test-secret';
// sfu-b first: the room starts there.
const NODES = ['sfu-b', 'sfu-a'];
const CAPACITY = { 'sfu-b': 1, 'sfu-a': 4 };
const FREEZE_BAR_MS = 2000;

/** sfu-b and sfu-a with a 20 s drain deadline, health checks every second. */
function startNodes() {
  return startCluster({
    nodes: NODES, capacity: CAPACITY, appSecret: APP_SECRET, log: 'info', tmpPrefix: 'satsuma-drain-',
    sfuArgs: ['--drain-timeout', '20'], coordArgs: ['--sfu-health-interval-ms', '1000'],
  });
}

/**
 * Starts the page's freeze watch: every 100 ms, the frames it decoded of each remote
 * participant's video (all its tracks, whatever their names; a count that starts over on a
 * new connection counts as progress once it is above 0), and the longest time without a new
 * frame.
 */
async function watchFreezes(page) {
  await page.evaluate(() => {
    const f = { last: {}, total: {}, longest: {}, samples: 0 };
    window.freezeWatch = f;
    let busy = false;
    f.timer = setInterval(async () => {
      if (busy) return;
      busy = true;
      try {
        const s = await window.satsuma.stats();
        const now = performance.now();
        const by = {};
        for (const r of s?.remote ?? []) {
          if (r.kind === 'video') by[r.participantId] = (by[r.participantId] ?? 0) + r.framesDecoded;
        }
        for (const [pid, total] of Object.entries(by)) {
          if (f.last[pid] === undefined) {
            if (total > 0) { f.last[pid] = now; f.total[pid] = total; f.longest[pid] = 0; }
            continue;
          }
          if (total > 0 && total !== f.total[pid]) {
            f.longest[pid] = Math.max(f.longest[pid], now - f.last[pid]);
            f.last[pid] = now;
          }
          f.total[pid] = total;
        }
        f.samples += 1;
      } finally {
        busy = false;
      }
    }, 100);
  });
}

/** The longest freeze so far per remote participant (ms; the time since the last frame counts). */
async function freezes(page) {
  return page.evaluate(() => {
    const f = window.freezeWatch;
    const now = performance.now();
    return {
      samples: f.samples,
      longest: Object.fromEntries(Object.keys(f.last).map((pid) => [pid, Math.round(Math.max(f.longest[pid], now - f.last[pid]))])),
    };
  });
}

async function mls(page) {
  const s = await stats(page);
  return { me: s.me, epoch: s.e2ee?.epoch ?? null, safety: s.e2ee?.safety_number ?? s.e2ee?.safetyNumber ?? null, resets: s.e2ee?.resets ?? 0, phase: s.e2ee?.phase };
}

describe('draining an SFU node during a call', { timeout: 300000 }, () => {
  const room = `drain-${Date.now()}`;
  const pages = {};
  const suite = browserSuite({ start: startNodes, pages, logLines: 120 });
  const { check } = suite;

  it('the page on the draining node moves; both keep decoding; the node exits 0', check(async () => {
    const { base, sfus, exits, sfuBin } = suite.servers;
    const [b, a] = sfus;
    pages.alice = await joinPage(suite.browser, base, { room, name: 'Alice' });
    await waitFor('Alice on sfu-b', async () => await metric(b, 'satsuma_sfu_sessions') === 1);
    pages.bob = await joinPage(suite.browser, base, { room, name: 'Bob' });
    const number = await sameSafetyNumber([pages.alice, pages.bob]);
    await assertDecodes(pages.alice, pages.bob.participantId);
    await assertDecodes(pages.bob, pages.alice.participantId);
    assert.equal(await metric(b, 'satsuma_sfu_sessions'), 1, 'Alice on sfu-b');
    assert.equal(await metric(a, 'satsuma_sfu_sessions'), 1, 'Bob on sfu-a');
    const before = { alice: await mls(pages.alice), bob: await mls(pages.bob) };
    const aliceSession = (await stats(pages.alice)).sfuSession;

    await watchFreezes(pages.alice);
    await watchFreezes(pages.bob);
    await new Promise((r) => setTimeout(r, 2000));
    const drainedAt = Date.now();
    const out = await promisify(execFile)(sfuBin, ['drain', '--url', `http://${b}`, '--app', `satsuma:${APP_SECRET}`]);
    console.log(`# ${out.stdout.trim()}`);

    // Alice moves to sfu-a; sfu-b exits 0 once her old session is deleted.
    const move = await waitFor('Alice to move and close the old connection', async () => {
      const moves = await pages.alice.evaluate(() => window.satsuma.call.moves ?? []);
      return moves.find((m) => m.from === aliceSession && m.done && m.closed) ?? null;
    }, { timeout: 20000 });
    assert.equal(move.why, 'delivered', `the old connection went because the new one delivered: ${JSON.stringify(move)}`);
    assert.ok(move.closed >= move.done, `closed after the new session was ready: ${JSON.stringify(move)}`);
    const code = await Promise.race([exits[0], new Promise((r) => setTimeout(() => r('still running'), 25000))]);
    const exitedAfter = Date.now() - drainedAt;
    assert.equal(code, 0, `sfu-b exit: ${code}`);
    assert.notEqual(move.to, aliceSession);
    // A few seconds of call on sfu-a, then the freezes.
    await assertDecodes(pages.alice, pages.bob.participantId);
    await assertDecodes(pages.bob, pages.alice.participantId);
    await new Promise((r) => setTimeout(r, 3000));
    const seen = { alice: await freezes(pages.alice), bob: await freezes(pages.bob) };
    console.log(`# move: told ${move.at - drainedAt} ms after the drain, new session ready ${move.done - move.at} ms later, old connection closed ${move.closed - move.at} ms after the order (${move.why}); sfu-b exited ${exitedAfter} ms after the drain`);
    console.log(`# longest freeze (ms): Alice sees Bob ${seen.alice.longest[pages.bob.participantId]}, Bob sees Alice ${seen.bob.longest[pages.alice.participantId]} (samples ${seen.alice.samples}/${seen.bob.samples})`);
    for (const [who, from] of [['alice', pages.bob], ['bob', pages.alice]]) {
      const longest = seen[who].longest[from.participantId];
      assert.ok(longest !== undefined && longest <= FREEZE_BAR_MS, `${who}: longest freeze ${longest} ms`);
    }
    assert.equal(await metric(a, 'satsuma_sfu_sessions'), 2, 'both on sfu-a');
    // No MLS rejoin.
    const after = { alice: await mls(pages.alice), bob: await mls(pages.bob) };
    assert.deepEqual(after, before);
    assert.equal(await sameSafetyNumber([pages.alice, pages.bob]), number);
    const moved = await metric(base.replace('http://', ''), 'satsuma_coord_sfu_moves_total');
    assert.equal(moved, 1, 'sessions moved');
    assert.equal(suite.servers.panicked().length, 0, suite.servers.panicked().join('\n'));
  }));
});
