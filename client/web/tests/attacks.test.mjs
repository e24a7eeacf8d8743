// Attacks on the group from inside the room: a participant that was never added to
// the MLS group sends `ready` and 100 garbage commits. The coordinator refuses
// every one of them (only members drive the group) and closes the attacker with
// 4002; the two members keep their epoch and safety number and keep decoding each
// other without a single undecryptable frame.
//
// The attacker is a raw WebSocket opened from inside a Chromium page (Node has no
// global WebSocket), speaking the coordinator protocol directly.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  browserSuite, assertDecodes, joinPage, remoteTrack, sameSafetyNumber, stats,
} from './harness.mjs';

/** Frames dropped and decoded on `page` from each of `senders` (video and audio summed). */
async function counters(page, senders) {
  const s = await stats(page);
  const out = { dropped: 0, decrypted: 0, framesDecoded: 0, epoch: s?.e2ee?.epoch ?? null };
  for (const r of s?.remote ?? []) {
    if (!senders.includes(r.participantId)) continue;
    out.dropped += r.dropped ?? 0;
    out.decrypted += r.decrypted ?? 0;
    if (r.kind === 'video') out.framesDecoded += r.framesDecoded ?? 0;
  }
  return out;
}

/**
 * Runs in the attacker's page: joins `room` with a dev token, sends `ready` for the
 * group's epoch and `count` garbage commits, and reports every reply and the close.
 */
async function attack({ room, count }) {
  const tokenRes = await fetch('/token', { method: 'POST', body: JSON.stringify({ room, name: 'Mallory' }) });
  const { token } = await tokenRes.json();
  const ws = new WebSocket(`ws://${location.host}/ws/${room}`);
  ws.binaryType = 'arraybuffer';
  const replies = [];
  let welcome = null;
  const closed = new Promise((resolve) => {
    ws.onclose = (ev) => resolve({ code: ev.code, reason: ev.reason });
  });
  const welcomed = new Promise((resolve, reject) => {
    ws.onerror = () => reject(new Error('websocket error'));
    ws.onmessage = (ev) => {
      if (typeof ev.data !== 'string') return;
      const msg = JSON.parse(ev.data);
      if (msg.type === 'welcome') {
        welcome = msg;
        resolve();
      } else if (msg.type === 'error' || msg.type === 'commit_rejected') {
        replies.push(msg);
      }
    };
  });
  ws.onopen = () => ws.send(JSON.stringify({ type: 'hello', v: 1, token }));
  await welcomed;
  const group = welcome.snapshot.group;
  ws.send(JSON.stringify({ type: 'ready', epoch: group.epoch, group_id: group.group_id }));
  const gid = Uint8Array.from(group.group_id.match(/../g).map((h) => parseInt(h, 16)));
  const be64 = (n) => {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, BigInt(n));
    return b;
  };
  for (let i = 0; i < count; i++) {
    // Half look like real PublicMessage commits for the current epoch (header of the
    // right group and epoch, then junk), half are random bytes.
    const body = crypto.getRandomValues(new Uint8Array(40 + (i % 50)));
    let commit;
    if (i % 2 === 0) {
      commit = new Uint8Array([0, 1, 0, 1, gid.length, ...gid, ...be64(group.epoch), 1, 0, 0, 0, 0, 0, 3, ...body]);
    } else {
      commit = body;
    }
    const frame = new Uint8Array(5 + commit.length);
    frame[0] = 2;
    new DataView(frame.buffer).setUint32(1, commit.length);
    frame.set(commit, 5);
    ws.send(frame);
  }
  const close = await Promise.race([
    closed,
    new Promise((resolve) => setTimeout(() => resolve({ code: null, reason: 'no close within 10 s' }), 10000)),
  ]);
  return { participantId: welcome.participant_id, epoch: group.epoch, replies, close };
}

describe('attacks from inside the room', { timeout: 300000 }, () => {
  const room = `attacks-${Date.now()}`;
  const pages = {};
  const suite = browserSuite({ pages });

  it('ready and 100 garbage commits from a non-member: refused, closed 4002, the call carries on', async () => {
    try {
      pages.alice = await joinPage(suite.browser, suite.servers.base, { room, name: 'Alice' });
      pages.bob = await joinPage(suite.browser, suite.servers.base, { room, name: 'Bob' });
      const both = [pages.alice, pages.bob];
      const number = await sameSafetyNumber(both);
      await assertDecodes(pages.alice, pages.bob.participantId);
      await assertDecodes(pages.bob, pages.alice.participantId);
      // Let the first second of the call settle, then take the baseline.
      await new Promise((r) => setTimeout(r, 1000));
      const senders = [pages.alice.participantId, pages.bob.participantId];
      const before = new Map();
      for (const p of both) before.set(p, await counters(p, senders));
      const epoch = before.get(pages.alice).epoch;
      assert.equal(before.get(pages.bob).epoch, epoch);

      // Mallory: a third participant, never added to the group.
      const context = await suite.browser.newContext();
      pages.mallory = await context.newPage();
      pages.mallory.label = 'Mallory';
      await pages.mallory.goto(`${suite.servers.base}/healthz`);
      const result = await pages.mallory.evaluate(attack, { room, count: 100 });
      console.log(`# attacker: close ${JSON.stringify(result.close)}, replies ${result.replies.length}`);
      assert.equal(result.epoch, epoch, 'the attacker saw the group at the members\' epoch');
      const errors = result.replies.filter((m) => m.type === 'error');
      const rejected = result.replies.filter((m) => m.type === 'commit_rejected');
      assert.deepEqual(errors.map((e) => [e.code, e.refused]), [['not_member', 'ready']]);
      assert.equal(rejected.length, 99, JSON.stringify(result.replies.slice(0, 5)));
      assert.ok(rejected.every((r) => r.reason === 'not_member' && r.current_epoch === epoch), JSON.stringify(rejected[0]));
      assert.equal(result.close.code, 4002, JSON.stringify(result.close));

      // The members: same epoch, same safety number, still decoding, nothing dropped.
      await new Promise((r) => setTimeout(r, 3000));
      for (const p of both) {
        const other = p === pages.alice ? pages.bob : pages.alice;
        const now = await counters(p, senders);
        const was = before.get(p);
        console.log(`# ${p.label}: epoch ${now.epoch}, dropped since baseline ${now.dropped - was.dropped}, decrypted +${now.decrypted - was.decrypted}, video frames decoded +${now.framesDecoded - was.framesDecoded}`);
        assert.equal(now.epoch, epoch, `${p.label} changed epoch`);
        assert.equal(now.dropped - was.dropped, 0, `${p.label} dropped frames as undecryptable`);
        assert.ok(now.decrypted > was.decrypted + 20, `${p.label} stopped decrypting: ${JSON.stringify({ was, now })}`);
        assert.ok(now.framesDecoded > was.framesDecoded + 10, `${p.label} stopped decoding video`);
        const t = await remoteTrack(p, other.participantId, 'video');
        assert.ok(t && t.framesDecoded > 0, `${p.label} has no video of ${other.label}`);
      }
      assert.equal(await sameSafetyNumber(both), number, 'the safety number did not change');
      assert.equal(suite.servers.panicked().length, 0, suite.servers.panicked().join('\n'));
    } catch (err) {
      suite.failed = true;
      throw err;
    }
  });
});
