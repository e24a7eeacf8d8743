// Issue 15: draining an SFU node during a browser call. Two satsuma-sfu nodes joined by the
// QUIC relay; the coordinator lists sfu-b first with a capacity of one session, so Alice's
// session starts the room there and Bob's overflows to sfu-a. Then `satsuma-sfu drain` on
// sfu-b: the node refuses new sessions and reports "draining" on /healthz, the coordinator
// tells Alice to move, her page makes a new session (placed on sfu-a), pushes and announces
// its tracks, pulls Bob again and deletes the old session; Bob pulls Alice's new tracks.
// Checked: both pages keep decoding each other with the longest freeze (no new decoded video
// frame, sampled from the page's own stats every 100 ms) at most 2 s; no MLS rejoin (same
// participant ids, epoch and safety number, no reset); sfu-b exits 0 once empty.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import dgram from 'node:dgram';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import {
  assertDecodes, binDir, browserSuite, joinPage, sameSafetyNumber, startProcess, stats, waitFor, webDir,
} from './harness.mjs';

const APP_SECRET = 'drain-test-secret';
// sfu-b first: the room starts there.
const NODES = ['sfu-b', 'sfu-a'];
const CAPACITY = { 'sfu-b': 1, 'sfu-a': 4 };
const FREEZE_BAR_MS = 2000;

async function freeUdpPort() {
  return new Promise((resolve, reject) => {
    const s = dgram.createSocket('udp4');
    s.on('error', reject);
    s.bind(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Sum of the samples of metric `name` at `http://addr/metrics`. */
async function metric(addr, name) {
  const text = await (await fetch(`http://${addr}/metrics`)).text();
  return text.split('\n')
    .filter((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`))
    .reduce((sum, l) => sum + Number(l.split(' ').pop()), 0);
}

async function startCluster() {
  const logs = [];
  const children = [];
  const dir = mkdtempSync(path.join(os.tmpdir(), 'satsuma-drain-'));
  const sfuBin = path.join(binDir, 'satsuma-sfu');
  execFileSync(sfuBin, ['cluster-ca', '--out', dir, '--cluster', 'test'], { stdio: 'ignore' });
  for (const name of NODES) {
    execFileSync(sfuBin, ['node-cert', '--name', name, '--out', dir, '--ca', path.join(dir, 'ca.pem'),
      '--ca-key', path.join(dir, 'ca-key.pem')], { stdio: 'ignore' });
  }
  const relayPorts = [await freeUdpPort(), await freeUdpPort()];
  const sfus = [];
  const exits = [];
  try {
    for (const [i, name] of NODES.entries()) {
      const peer = NODES[1 - i];
      const sfu = await startProcess(name, sfuBin, [
        '--app', `satsuma:${APP_SECRET}`, '--http-bind', '127.0.0.1:0', '--udp-bind', '127.0.0.1:0', '--log', 'info',
        '--node-name', name, '--drain-timeout', '20', '--relay-bind', `127.0.0.1:${relayPorts[i]}`,
        '--relay-cert', path.join(dir, `${name}.pem`), '--relay-key', path.join(dir, `${name}-key.pem`),
        '--relay-ca', path.join(dir, 'ca.pem'), '--relay-peer', `${peer}=127.0.0.1:${relayPorts[1 - i]}`,
      ], /satsuma-sfu listening http=(\S+) udp=(\S+)/, logs);
      children.push(sfu.child);
      sfus.push(sfu.match[1]);
      exits.push(new Promise((resolve) => {
        if (sfu.child.exitCode !== null) resolve(sfu.child.exitCode);
        else sfu.child.on('exit', (code, signal) => resolve(code ?? signal));
      }));
    }
    const coord = await startProcess('coordinator', path.join(binDir, 'satsuma-coordinator'), [
      '--dev', '--listen', '127.0.0.1:0', '--web-dir', webDir(), '--test-hooks=true', '--log', 'info',
      ...NODES.flatMap((name, i) => ['--sfu-node', `http://${sfus[i]};capacity=${CAPACITY[name]};name=${name}`]),
      '--sfu-app-id', 'satsuma', '--sfu-app-secret', APP_SECRET, '--sfu-health-interval-ms', '1000',
    ], /satsuma-coordinator listening http=(\S+)/, logs);
    children.push(coord.child);
    return {
      base: `http://${coord.match[1]}`,
      sfus,
      exits,
      sfuBin,
      logs,
      panicked: () => logs.filter((l) => /panicked/.test(l)),
      async stop() {
        for (const c of children) {
          if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
        }
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    for (const c of children) c.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
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
  const suite = browserSuite({ start: startCluster, pages, logLines: 120 });
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
    const move = await waitFor('Alice to move', async () => {
      const moves = await pages.alice.evaluate(() => window.satsuma.call.moves ?? []);
      return moves.find((m) => m.from === aliceSession && m.done) ?? null;
    }, { timeout: 20000 });
    const code = await Promise.race([exits[0], new Promise((r) => setTimeout(() => r('still running'), 25000))]);
    const exitedAfter = Date.now() - drainedAt;
    assert.equal(code, 0, `sfu-b exit: ${code}`);
    assert.notEqual(move.to, aliceSession);
    // A few seconds of call on sfu-a, then the freezes.
    await assertDecodes(pages.alice, pages.bob.participantId);
    await assertDecodes(pages.bob, pages.alice.participantId);
    await new Promise((r) => setTimeout(r, 3000));
    const seen = { alice: await freezes(pages.alice), bob: await freezes(pages.bob) };
    console.log(`# move: told ${move.at - drainedAt} ms after the drain, new session ready ${move.done - move.at} ms later; sfu-b exited ${exitedAfter} ms after the drain`);
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
