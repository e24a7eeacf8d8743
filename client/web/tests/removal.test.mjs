// Removal takes effect at once: a host removes a participant whose page keeps
// its media connection and its keys (test hook `test_keep_keys`, only with
// --test-hooks). The coordinator deletes the removed participant's SFU
// sessions, so it must decrypt no frame more than 1 s after the removal,
// while the others carry on in a new epoch.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  browserSuite, assertDecodes, joinPage, sameSafetyNumber, stats, waitFor,
} from './harness.mjs';

/** Frames decrypted and RTP packets received by `page`, over all remote tracks. */
async function totals(page) {
  const s = await stats(page);
  const remote = s?.remote ?? [];
  return {
    decrypted: remote.reduce((n, r) => n + (r.decrypted ?? 0), 0),
    packets: remote.reduce((n, r) => n + (r.packetsReceived ?? 0), 0),
  };
}

describe('host removal', { timeout: 300000 }, () => {
  const room = `removal-${Date.now()}`;
  const pages = [];
  const suite = browserSuite({ pages });

  it('a removed participant that keeps its keys decrypts nothing 1 s after the removal', async () => {
    try {
      const alice = await joinPage(suite.browser, suite.servers.base, { room, name: 'Alice' });
      const bob = await joinPage(suite.browser, suite.servers.base, { room, name: 'Bob' });
      const mallory = await joinPage(suite.browser, suite.servers.base, { room, name: 'Mallory', params: { test_keep_keys: '1' } });
      pages.push(alice, bob, mallory);
      const before3 = await sameSafetyNumber([alice, bob, mallory]);
      await assertDecodes(mallory, alice.participantId);
      await assertDecodes(mallory, bob.participantId);

      const removedAt = Date.now();
      await alice.evaluate((id) => window.satsuma.call.hostAction('remove', id), mallory.participantId);
      // Sample the removed page's decrypted-frame counter every 100 ms for 4 s.
      const samples = [];
      while (Date.now() - removedAt < 4000) {
        samples.push({ at: Date.now() - removedAt, ...(await totals(mallory)) });
        await new Promise((r) => setTimeout(r, 100));
      }
      const atOne = samples.filter((s) => s.at >= 1000)[0];
      const last = samples[samples.length - 1];
      let lastIncrease = 0;
      for (let i = 1; i < samples.length; i += 1) {
        if (samples[i].decrypted > samples[i - 1].decrypted) lastIncrease = samples[i].at;
      }
      console.log(`# removal: the removed page decrypted its last frame about ${lastIncrease} ms after the removal; `
        + `decrypted at 1 s: ${atOne.decrypted}, at ${last.at} ms: ${last.decrypted}`);
      assert.equal(last.decrypted, atOne.decrypted, `the removed page kept decrypting after 1 s: ${JSON.stringify(samples)}`);
      // Not merely the senders' switch to the next epoch: the media itself stops
      // (the SFU sessions are gone), so no packet arrives after 1 s either.
      console.log(`# removal: RTP packets received at 1 s: ${atOne.packets}, at ${last.at} ms: ${last.packets}`);
      assert.equal(last.packets, atOne.packets, `the removed page kept receiving RTP after 1 s: ${JSON.stringify(samples)}`);
      assert.ok(await mallory.evaluate(() => !document.getElementById('left')?.hidden), 'the removed page shows the left screen');
      assert.match(await mallory.evaluate(() => document.getElementById('left-reason').textContent), /removed/);

      // The others go on in a new epoch and keep decoding each other.
      await sameSafetyNumber([alice, bob], { not: before3 });
      await assertDecodes(alice, bob.participantId);
      await assertDecodes(bob, alice.participantId);
      const lostAfter = await waitFor('the removed page to still hold its worker stats', async () => (await stats(mallory)) ?? null);
      assert.ok(lostAfter.remote.length > 0, 'the removed page kept its receivers (the hook works)');
      assert.equal(suite.servers.panicked().length, 0, suite.servers.panicked().join('\n'));
    } catch (err) {
      suite.failed = true;
      throw err;
    }
  });
});
