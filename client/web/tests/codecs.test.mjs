// The selectable video codecs: VP9 and H.264 calls (VP8 is the default the
// other files use) decode end to end through the E2EE transform and the SFU.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { assertDecodes, joinPage, launchBrowser, remoteTrack, startServers } from './harness.mjs';

describe('selectable codecs', { timeout: 300000 }, () => {
  let servers;
  let browser;

  before(async () => {
    servers = await startServers();
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await servers?.stop();
  });

  for (const codec of ['VP9', 'H264']) {
    it(`${codec} decodes after encryption`, async () => {
      const room = `codec-${codec}-${Date.now()}`;
      const a = await joinPage(browser, servers.base, { room, name: `${codec}-A`, params: { codec } });
      const b = await joinPage(browser, servers.base, { room, name: `${codec}-B`, params: { codec } });
      try {
        await assertDecodes(b, a.participantId);
        const t = await remoteTrack(b, a.participantId, 'video');
        assert.equal(t.codec, `video/${codec}`);
        assert.ok(t.decrypted > 0 && t.protocolFrames > 0, JSON.stringify(t));
      } finally {
        await a.context().close();
        await b.context().close();
      }
    });
  }
});
