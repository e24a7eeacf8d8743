// The selectable video codecs: VP9 and H.264 calls (VP8 is the default the
// other files use) decode end to end through the E2EE transform and the SFU.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { assertDecodes, browserSuite, joinPage, remoteTrack, waitFor } from './harness.mjs';

describe('selectable codecs', { timeout: 300000 }, () => {
  const suite = browserSuite();

  for (const codec of ['VP9', 'H264']) {
    it(`${codec} decodes after encryption`, async () => {
      const room = `codec-${codec}-${Date.now()}`;
      const a = await joinPage(suite.browser, suite.servers.base, { room, name: `${codec}-A`, params: { codec } });
      const b = await joinPage(suite.browser, suite.servers.base, { room, name: `${codec}-B`, params: { codec } });
      try {
        await assertDecodes(b, a.participantId);
        // The worker reports its counters once a second: wait for them.
        const t = await waitFor('the worker to report decrypted frames', async () => {
          const r = await remoteTrack(b, a.participantId, 'video');
          return r && r.decrypted > 0 && r.protocolFrames > 0 ? r : null;
        }, { timeout: 10000 });
        assert.equal(t.codec, `video/${codec}`);
      } finally {
        await a.context().close();
        await b.context().close();
      }
    });
  }
});
