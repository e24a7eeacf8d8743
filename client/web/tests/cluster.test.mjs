// Issue 15: two Chromium pages on different SFU nodes hold an E2EE call. Two satsuma-sfu nodes
// joined by the QUIC relay (certificates from `satsuma-sfu cluster-ca` / `node-cert`), each with
// a capacity of one session in the coordinator's configuration: the coordinator places Alice
// on sfu-a and Bob, the room's node being full, on sfu-b. Each pulls the other's tracks from
// its own node, which gets them over the relay. Both decode each other's video and hear each
// other's audio, with one safety number; each node holds one session and sent media over the
// relay.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import dgram from 'node:dgram';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  assertDecodes, assertHears, binDir, browserSuite, joinPage, remoteTrack, sameSafetyNumber, startProcess, waitFor, webDir,
} from './harness.mjs';

const APP_SECRET = 'cluster-test-secret';
const NODES = ['sfu-a', 'sfu-b'];

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

/** Sum of the samples of metric `name` (with `labels` in the series) at `http://addr/metrics`. */
async function metric(addr, name, labels = []) {
  const text = await (await fetch(`http://${addr}/metrics`)).text();
  return text.split('\n')
    .filter((l) => (l.startsWith(`${name} `) || l.startsWith(`${name}{`)) && labels.every((x) => l.includes(x)))
    .reduce((sum, l) => sum + Number(l.split(' ').pop()), 0);
}

async function startCluster() {
  const logs = [];
  const children = [];
  const dir = mkdtempSync(path.join(os.tmpdir(), 'satsuma-cluster-'));
  const sfuBin = path.join(binDir, 'satsuma-sfu');
  execFileSync(sfuBin, ['cluster-ca', '--out', dir, '--cluster', 'test'], { stdio: 'ignore' });
  for (const name of NODES) {
    execFileSync(sfuBin, ['node-cert', '--name', name, '--out', dir, '--ca', path.join(dir, 'ca.pem'),
      '--ca-key', path.join(dir, 'ca-key.pem')], { stdio: 'ignore' });
  }
  const relayPorts = [await freeUdpPort(), await freeUdpPort()];
  const sfus = [];
  try {
    for (const [i, name] of NODES.entries()) {
      const peer = NODES[1 - i];
      const sfu = await startProcess(name, sfuBin, [
        '--app', `satsuma:${APP_SECRET}`, '--http-bind', '127.0.0.1:0', '--udp-bind', '127.0.0.1:0', '--log', 'warn',
        '--node-name', name, '--relay-bind', `127.0.0.1:${relayPorts[i]}`,
        '--relay-cert', path.join(dir, `${name}.pem`), '--relay-key', path.join(dir, `${name}-key.pem`),
        '--relay-ca', path.join(dir, 'ca.pem'), '--relay-peer', `${peer}=127.0.0.1:${relayPorts[1 - i]}`,
      ], /satsuma-sfu listening http=(\S+) udp=(\S+)/, logs);
      children.push(sfu.child);
      sfus.push(sfu.match[1]);
    }
    const coord = await startProcess('coordinator', path.join(binDir, 'satsuma-coordinator'), [
      '--dev', '--listen', '127.0.0.1:0', '--web-dir', webDir(), '--test-hooks=true', '--log', 'warn',
      ...NODES.flatMap((name, i) => ['--sfu-node', `http://${sfus[i]};capacity=1;name=${name}`]),
      '--sfu-app-id', 'satsuma', '--sfu-app-secret', APP_SECRET,
    ], /satsuma-coordinator listening http=(\S+)/, logs);
    children.push(coord.child);
    return {
      base: `http://${coord.match[1]}`,
      sfus,
      logs,
      panicked: () => logs.filter((l) => /panicked/.test(l)),
      async stop() {
        for (const c of children) {
          if (c.exitCode === null) c.kill('SIGTERM');
        }
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    for (const c of children) c.kill('SIGTERM');
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}

describe('an E2EE call over two SFU nodes', { timeout: 300000 }, () => {
  const room = `cluster-${Date.now()}`;
  const pages = {};
  const suite = browserSuite({ start: startCluster, pages });
  const { check } = suite;

  it('two pages on different nodes decode and hear each other through the relay', check(async () => {
    pages.alice = await joinPage(suite.browser, suite.servers.base, { room, name: 'Alice' });
    pages.bob = await joinPage(suite.browser, suite.servers.base, { room, name: 'Bob' });
    const number = await sameSafetyNumber([pages.alice, pages.bob]);
    assert.match(number, /^\d{30}$/);
    await assertDecodes(pages.alice, pages.bob.participantId);
    await assertDecodes(pages.bob, pages.alice.participantId);
    await assertHears(pages.alice, pages.bob.participantId);
    await assertHears(pages.bob, pages.alice.participantId);
    // The frames went through the E2EE transform on both ends.
    for (const [viewer, from] of [[pages.alice, pages.bob], [pages.bob, pages.alice]]) {
      const video = await remoteTrack(viewer, from.participantId, 'video');
      assert.ok(video.decrypted > 0 && video.protocolFrames > 0, JSON.stringify(video));
    }
    // One session on each node (capacity 1 each), and each node sent media over the relay.
    const [a, b] = suite.servers.sfus;
    assert.equal(await metric(a, 'satsuma_sfu_sessions'), 1, 'sessions on sfu-a');
    assert.equal(await metric(b, 'satsuma_sfu_sessions'), 1, 'sessions on sfu-b');
    // The nodes add link counts to their metrics periodically: wait for them.
    for (const [addr, peer] of [[a, 'sfu-b'], [b, 'sfu-a']]) {
      let out = 0;
      await waitFor(`relay packets to ${peer} > 100`, async () => {
        out = await metric(addr, 'satsuma_sfu_relay_packets_total', [`peer="${peer}"`, 'direction="out"']);
        return out > 100;
      }, { timeout: 15000 }).catch(() => {});
      assert.ok(out > 100, `relay packets to ${peer}: ${out}`);
    }
    assert.equal(suite.servers.panicked().length, 0, suite.servers.panicked().join('\n'));
  }));
});
