// End-to-end: an E2EE call in headless Chromium through the real SFU and
// coordinator. One server pair and one browser for the whole file; each
// participant is its own browser context. The scenarios build on each other
// (the same room), in order.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync } from 'node:fs';
import path from 'node:path';
import {
  browserSuite, assertDecodes, assertHears, joinPage, leave, remoteTrack, repoRoot,
  safetyNumber, sameSafetyNumber, screenshot, stats, waitFor,
} from './harness.mjs';

describe('E2EE call in the browser', { timeout: 600000 }, () => {
  const room = `call-${Date.now()}`;
  const pages = {};
  const state = {};
  const suite = browserSuite({ pages });
  const { check } = suite;

  it('three participants see and hear each other and show one safety number', check(async () => {
    pages.alice = await joinPage(suite.browser, suite.servers.base, { room, name: 'Alice' });
    pages.bob = await joinPage(suite.browser, suite.servers.base, { room, name: 'Bob' });
    pages.carol = await joinPage(suite.browser, suite.servers.base, { room, name: 'Carol' });
    const trio = [pages.alice, pages.bob, pages.carol];
    const number = await sameSafetyNumber(trio);
    assert.match(number, /^\d{30}$/);
    for (const viewer of trio) {
      for (const other of trio) {
        if (other === viewer) continue;
        await assertDecodes(viewer, other.participantId);
        await assertHears(viewer, other.participantId);
      }
    }
    // Media really went through the E2EE transform on both ends.
    const s = await stats(pages.alice);
    const video = s.remote.find((r) => r.participantId === pages.bob.participantId && r.kind === 'video');
    assert.ok(video.decrypted > 0 && video.protocolFrames > 0, JSON.stringify(video));
    assert.equal(s.transform, 'RTCRtpScriptTransform');
    assert.equal(suite.servers.panicked().length, 0, suite.servers.panicked().join('\n'));
    state.number3 = number;
    const shot = await screenshot(pages.alice, 'call-three');
    if (process.env.UPDATE_SCREENSHOT === '1') copyFileSync(shot, path.join(repoRoot, 'docs/screenshot-call.png'));
  }));

  it('a fourth joins and leaves: the safety number changes in step for everyone', check(async () => {
    pages.dave = await joinPage(suite.browser, suite.servers.base, { room, name: 'Dave' });
    const four = [pages.alice, pages.bob, pages.carol, pages.dave];
    const number4 = await sameSafetyNumber(four, { not: state.number3 });
    await assertDecodes(pages.dave, pages.alice.participantId);
    await assertDecodes(pages.alice, pages.dave.participantId);
    await leave(pages.dave);
    delete pages.dave;
    const number3b = await sameSafetyNumber([pages.alice, pages.bob, pages.carol], { not: number4 });
    assert.notEqual(number3b, state.number3, 'a new epoch, not the old one');
    state.number3 = number3b;
    await assertDecodes(pages.bob, pages.carol.participantId);
  }));

  it('the committer (oldest member) leaves and a newcomer still gets in and decodes', check(async () => {
    await leave(pages.alice);
    delete pages.alice;
    pages.erin = await joinPage(suite.browser, suite.servers.base, { room, name: 'Erin' });
    const trio = [pages.bob, pages.carol, pages.erin];
    await sameSafetyNumber(trio, { not: state.number3 });
    await assertDecodes(pages.erin, pages.bob.participantId);
    await assertDecodes(pages.erin, pages.carol.participantId);
    await assertDecodes(pages.bob, pages.erin.participantId);
    // Fewer pages for the next scenario: two cores decode only so much.
    await leave(pages.erin);
    delete pages.erin;
  }));

  it('without decryption frames arrive but (almost) none decode; a keyless observer sees the FA FA trailer', check(async () => {
    pages.nodecrypt = await joinPage(suite.browser, suite.servers.base, { room, name: 'NoDecrypt', params: { decrypt: '0' } });
    pages.observer = await joinPage(suite.browser, suite.servers.base, { room, name: 'Observer', params: { keyless: '1', send: '0' } });
    const from = pages.bob.participantId;
    for (const page of [pages.nodecrypt, pages.observer]) {
      const t = await waitFor(`${page.label} to receive 40 encrypted frames from Bob`, async () => {
        const r = await remoteTrack(page, from, 'video');
        return r && r.framesReceived > 40 && r.protocolFrames > 40 ? r : null;
      }, { timeout: 45000 });
      // The VP8 keyframe header stays clear (the packetizer needs it), so libvpx
      // may turn an encrypted keyframe into a frame of noise now and then; an
      // encrypted delta frame never decodes. A keyed receiver decodes nearly all.
      assert.ok(t.framesDecoded <= Math.max(3, t.framesReceived * 0.1), `${page.label} decoded ciphertext: ${JSON.stringify(t)}`);
      assert.deepEqual(t.lastBytes, [0xfa, 0xfa], 'frames end in the DAVE magic');
      assert.ok(t.protocolFrames >= t.workerFrames * 0.9, `frames are DAVE protocol frames: ${JSON.stringify(t)}`);
    }
    // Meanwhile a keyed member still decodes the same stream.
    await assertDecodes(pages.carol, from);
    assert.equal(await safetyNumber(pages.observer), null, 'the observer holds no keys');
    await screenshot(pages.observer, 'keyless-observer');
  }));
});
