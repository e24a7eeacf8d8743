// The quick start: the all-in-one `satsuma` binary (what scripts/run.sh starts)
// serves the web app, and two headless Chromium pages at its URL hold an E2EE
// call: each decodes the other's video and hears its audio, both show one
// safety number, and the frames went through the E2EE transform.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  browserSuite, assertDecodes, assertHears, joinPage, sameSafetyNumber, screenshot,
  startAllInOne, stats,
} from './harness.mjs';

describe('quick start: an E2EE call through the all-in-one satsuma binary', { timeout: 300000 }, () => {
  const pages = [];
  const suite = browserSuite({ start: () => startAllInOne(), pages });

  it('two pages at the printed URL decode each other with one safety number', async () => {
    try {
      const room = `quick-${Date.now()}`;
      const ann = await joinPage(suite.browser, suite.servers.base, { room, name: 'Ann' });
      pages.push(ann);
      const ben = await joinPage(suite.browser, suite.servers.base, { room, name: 'Ben' });
      pages.push(ben);
      const number = await sameSafetyNumber([ann, ben]);
      assert.match(number, /^\d{30}$/);
      await assertDecodes(ann, ben.participantId);
      await assertDecodes(ben, ann.participantId);
      await assertHears(ann, ben.participantId);
      await assertHears(ben, ann.participantId);
      const s = await stats(ann);
      const video = s.remote.find((r) => r.participantId === ben.participantId && r.kind === 'video');
      assert.ok(video && video.decrypted > 0 && video.protocolFrames > 0, JSON.stringify(video));
      assert.equal(suite.servers.panicked().length, 0, suite.servers.panicked().join('\n'));
      await screenshot(ann, 'quickstart-two');
    } catch (err) {
      suite.failed = true;
      throw err;
    }
  });
});
