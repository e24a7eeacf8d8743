// The quick start: the all-in-one `satsuma` binary (what scripts/run.sh starts)
// serves the web app, and two headless Chromium pages at its URL hold an E2EE
// call: each decodes the other's video and hears its audio, both show one
// safety number, and the frames went through the E2EE transform.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  assertDecodes, assertHears, dumpConsole, joinPage, launchBrowser, sameSafetyNumber, screenshot,
  startAllInOne, stats,
} from './harness.mjs';

describe('quick start: an E2EE call through the all-in-one satsuma binary', { timeout: 300000 }, () => {
  let server;
  let browser;
  const pages = [];
  let failed = false;

  before(async () => {
    server = await startAllInOne();
    browser = await launchBrowser();
  });

  after(async () => {
    if (failed) {
      dumpConsole(pages);
      console.log(server?.logs.slice(-60).join('\n'));
    }
    await browser?.close();
    await server?.stop();
  });

  it('two pages at the printed URL decode each other with one safety number', async () => {
    try {
      const room = `quick-${Date.now()}`;
      const ann = await joinPage(browser, server.base, { room, name: 'Ann' });
      pages.push(ann);
      const ben = await joinPage(browser, server.base, { room, name: 'Ben' });
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
      assert.equal(server.panicked().length, 0, server.panicked().join('\n'));
      await screenshot(ann, 'quickstart-two');
    } catch (err) {
      failed = true;
      throw err;
    }
  });
});
