// Issue 15: two Chromium pages on different SFU nodes hold an E2EE call. Two satsuma-sfu nodes
// joined by the QUIC relay (certificates from `satsuma-sfu cluster-ca` / `node-cert`), each with
// a capacity of one session in the coordinator's configuration: the coordinator places Alice
// on sfu-a and Bob, the room's node being full, on sfu-b. Each pulls the other's tracks from
// its own node, which gets them over the relay. Both decode each other's video and hear each
// other's audio, with one safety number; each node holds one session and sent media over the
// relay.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  assertDecodes, assertHears, browserSuite, joinPage, remoteTrack, sameSafetyNumber, waitFor,
} from './harness.mjs';
import { metric, startCluster } from './cluster-harness.mjs';

const APP_SECRET = 'cluster-test-secret';
const NODES = ['sfu-a', 'sfu-b'];

/** Both nodes with a capacity of one session. */
function startNodes() {
  return startCluster({ nodes: NODES, capacity: { 'sfu-a': 1, 'sfu-b': 1 }, appSecret: APP_SECRET });
}

describe('an E2EE call over two SFU nodes', { timeout: 300000 }, () => {
  const room = `cluster-${Date.now()}`;
  const pages = {};
  const suite = browserSuite({ start: startNodes, pages });
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
