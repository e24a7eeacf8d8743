// Gapless epoch transitions, measured: two pages stay in the call while two
// others join and leave three times each (four pages at most). Every join and
// every leave is an MLS epoch change; receivers install the new keys at the
// commit and senders switch only on `execute`, so a page that was already in
// the call must never drop a frame as undecryptable. The test asserts that
// from the E2EE worker's own counters and prints them per step.
//
// Receivers hold a frame no key opens yet for up to 3 s and retry it when
// they install a key (client/e2ee/src/frame/holdback.rs): a loaded receiver
// that processes a commit after the sender executed the epoch (the coordinator
// executes after its 2 s ready timeout) decrypts those frames late instead of
// dropping them. Bob is made such a receiver (the `relayLag` drill: it
// processes the room's messages 2.5 s late); the test asserts that it decrypted
// frames late and dropped none. The summary line prints both per stable page.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  browserSuite, assertDecodes, joinPage, leave, sameSafetyNumber, stats,
} from './harness.mjs';

/**
 * Drop counters of `page`, accumulated over samples: remote tracks of pages
 * that left disappear from the stats, so each track keeps the highest count
 * ever seen (`page.trackDrops`).
 */
async function drops(page) {
  const s = await stats(page);
  page.trackDrops ??= new Map();
  for (const r of s?.remote ?? []) {
    const key = `${r.participantId}/${r.kind}/${r.trackName ?? r.trackId ?? ''}`;
    const prev = page.trackDrops.get(key) ?? { dropped: 0, decrypted: 0, late: 0, reasons: {} };
    const reasons = { ...prev.reasons };
    if ((r.dropped ?? 0) > prev.dropped && r.lastDrop) reasons[r.lastDrop] = (reasons[r.lastDrop] ?? 0) + (r.dropped - prev.dropped);
    page.trackDrops.set(key, { dropped: Math.max(prev.dropped, r.dropped ?? 0), decrypted: Math.max(prev.decrypted, r.decrypted ?? 0), late: Math.max(prev.late, r.late ?? 0), reasons });
  }
  const out = { total: 0, decrypted: 0, late: 0, bySender: {}, reasons: {} };
  for (const [key, t] of page.trackDrops) {
    out.total += t.dropped;
    out.decrypted += t.decrypted;
    out.late += t.late;
    const sender = key.split('/')[0];
    out.bySender[sender] = (out.bySender[sender] ?? 0) + t.dropped;
    for (const [why, n] of Object.entries(t.reasons)) out.reasons[why] = (out.reasons[why] ?? 0) + n;
  }
  return out;
}

describe('gapless epoch transitions under churn', { timeout: 900000 }, () => {
  const room = `churn-${Date.now()}`;
  const pages = [];
  const suite = browserSuite({ pages, logLines: 80 });

  it('pages already in the call drop 0 frames across every epoch change', async () => {
    try {
      const alice = await joinPage(suite.browser, suite.servers.base, { room, name: 'Alice' });
      const bob = await joinPage(suite.browser, suite.servers.base, { room, name: 'Bob' });
      pages.push(alice, bob);
      const stable = [alice, bob];
      let number = await sameSafetyNumber(stable);
      await assertDecodes(alice, bob.participantId);
      await assertDecodes(bob, alice.participantId);
      // Bob plays a page on an overloaded machine: it processes the room's
      // messages 2.5 s late (drill, test hooks only), after the coordinator's
      // 2 s execute timeout, so Alice and the joiners switch keys before Bob
      // has installed them. Bob must hold those frames, not drop them.
      await bob.evaluate(() => window.satsuma.drill.relayLag(2500));
      // The baseline: whatever was dropped while the call was being set up.
      const base = new Map();
      for (const p of stable) base.set(p, await drops(p));
      const rows = [];
      let changes = 0;
      const record = async (step) => {
        const row = { step, epochChanges: changes };
        for (const p of stable) {
          const d = await drops(p);
          row[p.label] = { dropped: d.total - base.get(p).total, decrypted: d.decrypted, late: d.late, bySender: d.bySender, reasons: d.reasons };
        }
        rows.push(row);
        console.log(`# churn ${JSON.stringify(row)}`);
        return row;
      };

      for (let round = 1; round <= 3; round += 1) {
        const carol = await joinPage(suite.browser, suite.servers.base, { room, name: `Carol${round}` });
        pages.push(carol);
        number = await sameSafetyNumber([...stable, carol], { not: number });
        changes += 1;
        const dave = await joinPage(suite.browser, suite.servers.base, { room, name: `Dave${round}` });
        pages.push(dave);
        number = await sameSafetyNumber([...stable, carol, dave], { not: number });
        changes += 1;
        // Everyone decodes the newcomers and the newcomers decode the stable pair.
        await assertDecodes(alice, dave.participantId);
        await assertDecodes(dave, bob.participantId);
        await record(`round ${round}: 4 pages`);
        await record(`round ${round}: before Carol${round} leaves`);
        await leave(carol);
        number = await sameSafetyNumber([...stable, dave], { not: number });
        changes += 1;
        await record(`round ${round}: before Dave${round} leaves`);
        await leave(dave);
        number = await sameSafetyNumber(stable, { not: number });
        changes += 1;
        // The stable pair keeps decoding each other after the last change.
        await assertDecodes(alice, bob.participantId);
        await assertDecodes(bob, alice.participantId);
        await record(`round ${round}: back to 2`);
      }

      const last = rows[rows.length - 1];
      console.log(`# churn summary: ${changes} epoch changes; dropped as undecryptable: ${stable.map((p) => `${p.label}=${last[p.label].dropped}`).join(', ')}; decrypted late (held for their key): ${stable.map((p) => `${p.label}=${last[p.label].late}`).join(', ')}`);
      assert.equal(changes, 12);
      for (const p of stable) {
        assert.ok(last[p.label].decrypted > 0, `${p.label} decrypted frames`);
        assert.equal(last[p.label].dropped, 0, `${p.label} dropped frames across epoch changes: ${JSON.stringify(rows)}`);
      }
      // The lagging page really did receive frames before their key, and held them.
      assert.ok(last.Bob.late > 0, `Bob (2.5 s behind) decrypted no frame late: ${JSON.stringify(rows)}`);
      assert.equal(suite.servers.panicked().length, 0, suite.servers.panicked().join('\n'));
    } catch (err) {
      suite.failed = true;
      throw err;
    }
  });
});
