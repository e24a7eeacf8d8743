// A group you can verify (issue 10): a hostile coordinator shows a ghost
// participant to the committer only. The coordinator runs with --test-hooks
// (the harness default) and the ghost's page asks for
// `test_visible_only_to=<committer>`: its `joined`, its KeyPackage and all its
// other entries reach only the committer, and the other pages' snapshots omit
// it; the commit that adds it reaches everybody.
//
// Asserted: the committer A adds the ghost G (A saw it join); the honest page B,
// which never saw G join, refuses that epoch, shows the red alarm naming G (name
// and fingerprint, as G's own page shows them) and decrypts no frame of G's
// epoch: while A sends under the new epoch's key, B's decrypted counters stand
// still and the last epoch B decrypted stays below it. A shows no alarm.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  browserSuite, assertDecodes, joinPage, remoteTrack, sameSafetyNumber, screenshot, startServers, stats, waitFor,
} from './harness.mjs';

const FINGERPRINT = /^[0-9A-F]{4}( [0-9A-F]{4}){3}$/;

describe('a ghost visible only to the committer', { timeout: 300000 }, () => {
  const room = `ghost-${Date.now()}`;
  const pages = {};
  const suite = browserSuite({ start: () => startServers({ testHooks: true }), pages });

  it('the honest member refuses the epoch, names the ghost and decrypts nothing of it', async () => {
    try {
      pages.a = await joinPage(suite.browser, suite.servers.base, { room, name: 'Alice' });
      pages.b = await joinPage(suite.browser, suite.servers.base, { room, name: 'Bob' });
      const { a, b } = pages;
      await sameSafetyNumber([a, b]);
      await assertDecodes(b, a.participantId);
      const before = (await stats(a)).e2ee.epoch;

      pages.g = await joinPage(suite.browser, suite.servers.base, {
        room, name: 'Ghost', params: { test_visible_only_to: String(a.participantId) },
      });
      const g = pages.g;
      // A (who saw G join) adds it; G's own page is in the group.
      const gStatus = await waitFor('the ghost to be in the group', async () => {
        const s = (await stats(g))?.e2ee;
        return s?.phase === 'member' && s.members?.length === 3 ? s : null;
      }, { timeout: 60000 });
      const ghostEpoch = gStatus.epoch;
      assert.ok(ghostEpoch > before, `the ghost's epoch ${ghostEpoch} follows ${before}`);
      const ghostSelf = gStatus.members.find((m) => m.me);
      assert.equal(ghostSelf.id, g.participantId);
      assert.match(ghostSelf.fingerprint, FINGERPRINT);

      // B refuses that epoch and names the ghost.
      const bStatus = await waitFor('B to refuse the epoch', async () => {
        const s = (await stats(b))?.e2ee;
        return s?.phase === 'refused' ? s : null;
      }, { timeout: 30000 });
      assert.equal(bStatus.epoch, null, 'B dropped the group');
      assert.equal(bStatus.safety_number, null);
      assert.deepEqual(bStatus.members, []);
      assert.deepEqual(bStatus.alarm.unknown, [{ id: g.participantId, name: 'Ghost', fingerprint: ghostSelf.fingerprint }]);
      assert.ok(!(await stats(b)).participants.some((p) => p.id === g.participantId), 'B never saw the ghost');
      // The alarm is on B's screen, persistent, naming the ghost by name and fingerprint.
      const alarm = await b.evaluate(() => {
        const box = document.getElementById('mls-alarm');
        return { hidden: box.hidden, text: box.textContent, items: box.querySelectorAll('#mls-alarm-who li').length };
      });
      assert.equal(alarm.hidden, false);
      assert.equal(alarm.items, 1);
      assert.match(alarm.text, /Ghost/);
      assert.ok(alarm.text.includes(ghostSelf.fingerprint), alarm.text);
      assert.equal(await b.evaluate(() => window.satsuma.safetyNumber()), null);

      // A sees the ghost and raises no alarm.
      const aStatus = (await stats(a)).e2ee;
      assert.equal(aStatus.alarm, null);
      assert.ok(aStatus.members.some((m) => m.id === g.participantId && m.fingerprint === ghostSelf.fingerprint));
      assert.equal(await a.evaluate(() => document.getElementById('mls-alarm').hidden), true);

      // B decrypts nothing of the ghost's epoch. A switches to it (the
      // coordinator executes it without B's ready); B's worker keeps receiving
      // A's frames and drops them all.
      await waitFor("A to send under the ghost's epoch", async () => (await stats(a)).e2ee.send_epoch >= ghostEpoch, { timeout: 30000 });
      const video0 = await remoteTrack(b, a.participantId, 'video');
      const audio0 = await remoteTrack(b, a.participantId, 'audio');
      // At least two more of B's one-second worker reports, with A's frames arriving.
      const video1 = await waitFor("B's worker to receive more of A's frames", async () => {
        const t = await remoteTrack(b, a.participantId, 'video');
        return t && t.workerFrames > video0.workerFrames + 20 ? t : null;
      }, { timeout: 30000 });
      const encrypted0 = (await stats(a)).encrypt.encrypted;
      const video2 = await waitFor("B's worker to receive even more of A's frames", async () => {
        const t = await remoteTrack(b, a.participantId, 'video');
        return t && t.workerFrames > video1.workerFrames + 20 ? t : null;
      }, { timeout: 30000 });
      const audio2 = await remoteTrack(b, a.participantId, 'audio');
      assert.ok((await stats(a)).encrypt.encrypted > encrypted0, 'A kept encrypting');
      console.log(`# B: video decrypted ${video0.decrypted} -> ${video2.decrypted} while receiving ${video2.workerFrames - video0.workerFrames} frames; audio ${audio0?.decrypted} -> ${audio2?.decrypted}; last drop ${video2.lastDrop}`);
      assert.equal(video2.decrypted, video1.decrypted, 'B decrypted video frames after refusing');
      assert.equal(audio2?.decrypted ?? 0, audio0?.decrypted ?? 0, 'B decrypted audio frames after refusing');
      assert.ok(video2.epoch === null || video2.epoch < ghostEpoch, `B's last decrypted epoch ${video2.epoch} is the ghost's ${ghostEpoch}`);
      assert.equal(video2.lastDrop, 'no-key');
      // And B sends nothing any more.
      const gate = await b.evaluate(() => window.satsuma.call.e2ee.sendState().level);
      assert.notEqual(gate, 'ok');
      await screenshot(b, 'ghost-alarm');
      assert.equal(suite.servers.panicked().length, 0, suite.servers.panicked().join('\n'));
    } catch (err) {
      suite.failed = true;
      throw err;
    }
  });
});
