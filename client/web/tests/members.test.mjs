// The MLS member list (issue 10): next to the safety number every page lists
// who holds the current epoch's keys, each with the fingerprint of its
// long-term identity key (kept in IndexedDB per browser profile). Asserted:
// - every page lists every member with name and fingerprint and marks itself;
//   the fingerprint a page shows for a member is the one that member shows for
//   itself;
// - names are shown as text (a name with markup creates no element);
// - the same browser profile (same BrowserContext) rejoining as a new
//   participant shows the same fingerprint, on its own page and on the others';
//   another profile has another one.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  browserSuite, joinPage, sameSafetyNumber, stats, waitFor,
} from './harness.mjs';

const FINGERPRINT = /^[0-9A-F]{4}( [0-9A-F]{4}){3}$/;

/** The member list as a page renders it: [{id, name, fingerprint, you, markup}]. */
async function shownMembers(page) {
  return page.evaluate(() => [...document.querySelectorAll('#mls-members li')].map((li) => ({
    id: Number(li.dataset.id),
    name: li.querySelector('.member-name')?.textContent,
    fingerprint: li.querySelector('.fingerprint')?.textContent,
    you: Boolean(li.querySelector('.member-you')),
    markup: li.querySelectorAll('i, b, img, script').length,
  })));
}

/** Waits until `page` lists exactly `ids`; returns the list. */
async function waitForMembers(page, ids) {
  const want = [...ids].sort((x, y) => x - y).join(',');
  return waitFor(`${page.label} to list members ${want}`, async () => {
    const shown = await shownMembers(page);
    return shown.map((m) => m.id).sort((x, y) => x - y).join(',') === want ? shown : null;
  }, { timeout: 60000 });
}

/** Opens a page in an existing browser context (the same profile) and joins. */
async function joinInContext(context, base, { room, name }) {
  const page = await context.newPage();
  page.consoleLines = [];
  page.on('console', (m) => page.consoleLines.push(`${m.type()}: ${m.text()}`));
  const q = new URLSearchParams({ room, name, autojoin: '1', video: '320x240' });
  await page.goto(`${base}/?${q}`, { waitUntil: 'domcontentloaded' });
  await page.waitForFunction(() => typeof window.satsuma?.call?.me === 'number', null, { timeout: 30000 });
  page.participantId = await page.evaluate(() => window.satsuma.call.me);
  page.label = `${name} (rejoined)`;
  return page;
}

describe('MLS member list with fingerprints', { timeout: 300000 }, () => {
  const room = `members-${Date.now()}`;
  const pages = {};
  const suite = browserSuite({ pages });

  it('lists every member with its fingerprint; a rejoining profile keeps its fingerprint', async () => {
    try {
      pages.alice = await joinPage(suite.browser, suite.servers.base, { room, name: 'Alice' });
      pages.bob = await joinPage(suite.browser, suite.servers.base, { room, name: 'Bob <i>B</i>' });
      const { alice, bob } = pages;
      await sameSafetyNumber([alice, bob]);
      const ids = [alice.participantId, bob.participantId];
      const onAlice = await waitForMembers(alice, ids);
      const onBob = await waitForMembers(bob, ids);
      for (const [viewer, list] of [[alice, onAlice], [bob, onBob]]) {
        for (const m of list) {
          assert.match(m.fingerprint, FINGERPRINT, JSON.stringify(m));
          assert.equal(m.you, m.id === viewer.participantId, `${viewer.label} marks only itself: ${JSON.stringify(m)}`);
          assert.equal(m.markup, 0, 'a name is text, never markup');
        }
      }
      const byId = (list, id) => list.find((m) => m.id === id);
      assert.equal(byId(onAlice, bob.participantId).name, 'Bob <i>B</i>');
      assert.equal(byId(onBob, alice.participantId).name, 'Alice');
      // What Alice shows for Bob is what Bob shows for himself, and vice versa.
      const bobPrint = byId(onBob, bob.participantId).fingerprint;
      const alicePrint = byId(onAlice, alice.participantId).fingerprint;
      assert.equal(byId(onAlice, bob.participantId).fingerprint, bobPrint);
      assert.equal(byId(onBob, alice.participantId).fingerprint, alicePrint);
      assert.notEqual(alicePrint, bobPrint);
      // The worker status agrees with the page.
      const status = (await stats(alice)).e2ee;
      assert.deepEqual(status.members.map((m) => m.fingerprint).sort(), [alicePrint, bobPrint].sort());

      // Bob leaves and comes back from the same browser profile: a new
      // participant, the same fingerprint.
      const context = bob.context();
      await bob.evaluate(() => window.satsuma.call.leave());
      await bob.close();
      await waitForMembers(alice, [alice.participantId]);
      pages.bob2 = await joinInContext(context, suite.servers.base, { room, name: 'Bob <i>B</i>' });
      const bob2 = pages.bob2;
      assert.notEqual(bob2.participantId, bob.participantId, 'a new participant');
      const again = await waitForMembers(alice, [alice.participantId, bob2.participantId]);
      assert.equal(byId(again, bob2.participantId).fingerprint, bobPrint, 'same profile, same fingerprint');
      const own = await waitForMembers(bob2, [alice.participantId, bob2.participantId]);
      assert.equal(byId(own, bob2.participantId).fingerprint, bobPrint);
      assert.equal(byId(own, bob2.participantId).you, true);

      // Another profile, another fingerprint.
      pages.carol = await joinPage(suite.browser, suite.servers.base, { room, name: 'Carol' });
      const three = await waitForMembers(alice, [alice.participantId, bob2.participantId, pages.carol.participantId]);
      const carolPrint = byId(three, pages.carol.participantId).fingerprint;
      assert.match(carolPrint, FINGERPRINT);
      assert.ok(![alicePrint, bobPrint].includes(carolPrint), 'a new profile has its own fingerprint');
      assert.equal(suite.servers.panicked().length, 0, suite.servers.panicked().join('\n'));
    } catch (err) {
      suite.failed = true;
      throw err;
    }
  });
});
