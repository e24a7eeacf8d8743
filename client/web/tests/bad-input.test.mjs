// Bad input: a denied camera, a peer sending garbage frames, a stalled E2EE
// worker, a lost coordinator connection. The page must say what happened,
// recover where it can, and one broken participant must not break the others.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  browserSuite, assertDecodes, joinPage, remoteTrack, sameSafetyNumber, screenshot,
  stats, waitFor,
} from './harness.mjs';

// Runs before the page's scripts: every camera/microphone request is refused
// as if the user had clicked "Block".
const DENY_MEDIA = () => {
  const refuse = () => Promise.reject(new DOMException('Permission denied', 'NotAllowedError'));
  navigator.mediaDevices.getUserMedia = refuse;
};

describe('bad input', { timeout: 600000 }, () => {
  const room = `bad-${Date.now()}`;
  const pages = {};
  const suite = browserSuite({ pages });
  const { check } = suite;

  it('a denied camera and microphone: the page says so and still receives the call', check(async () => {
    pages.a = await joinPage(suite.browser, suite.servers.base, { room, name: 'Ann' });
    pages.b = await joinPage(suite.browser, suite.servers.base, { room, name: 'Ben' });
    pages.denied = await joinPage(suite.browser, suite.servers.base, { room, name: 'Denied', initScript: DENY_MEDIA });
    const banner = await pages.denied.textContent('#banner');
    assert.match(banner, /permission was denied/);
    await sameSafetyNumber([pages.a, pages.b, pages.denied]);
    await assertDecodes(pages.denied, pages.a.participantId);
    await assertDecodes(pages.a, pages.b.participantId);
    assert.equal((await stats(pages.denied)).outbound.length, 0, 'nothing to send');
    await screenshot(pages.denied, 'denied-camera');
  }));

  it('a peer sending garbage frames: others drop them, keep decoding everyone else, and recover', check(async () => {
    const { a, b, denied } = pages;
    await a.evaluate(() => window.satsuma.drill.garbage(true));
    await waitFor('Ben to drop Ann\'s garbage frames', async () => {
      const t = await remoteTrack(b, a.participantId, 'video');
      return t && t.dropped > 20 ? t : null;
    });
    await waitFor('Ann\'s tile on Ben to say it cannot decrypt', async () => /cannot decrypt/.test(await b.textContent(`[data-key="${a.participantId}"]`)));
    await assertDecodes(denied, b.participantId); // unaffected
    await screenshot(b, 'garbage-from-peer');
    await a.evaluate(() => window.satsuma.drill.garbage(false));
    await assertDecodes(b, a.participantId);
  }));

  it('a stalled E2EE worker: the page shows it and recovers when it responds again', check(async () => {
    const { a, b } = pages;
    await b.evaluate(() => window.satsuma.drill.stallWorker(7000));
    await waitFor('the stall banner', async () => /not responding/.test(await b.textContent('#banner')), { timeout: 10000 });
    await waitFor('the stall banner to clear', async () => !/not responding/.test(await b.textContent('#banner')), { timeout: 15000 });
    await assertDecodes(b, a.participantId);
    await assertDecodes(a, b.participantId);
  }));

  it('a lost coordinator connection: the page reconnects, resumes and keeps its keys', check(async () => {
    const { a, b, denied } = pages;
    const before = await stats(b);
    await b.evaluate(() => window.satsuma.drill.dropSocket());
    await waitFor('Ben to notice the loss', async () => (await stats(b)).link !== 'open' || /reconnecting/i.test(await b.textContent('#link-status')), { timeout: 5000, interval: 50 });
    await waitFor('Ben to reconnect', async () => (await stats(b)).link === 'open', { timeout: 15000 });
    const after = await stats(b);
    assert.equal(after.me, before.me, 'resumed as the same participant');
    await sameSafetyNumber([a, b, denied]);
    await assertDecodes(b, a.participantId);
    await assertDecodes(a, b.participantId);
  }));
});
