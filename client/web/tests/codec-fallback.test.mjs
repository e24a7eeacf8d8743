// A codec everyone decodes (codec-choice.js): A and B pick H.264 and send it.
// C joins with a browser that decodes no H.264 (`test_rxcodecs=vp8`: it
// reports only VP8 and its pulled m-lines negotiate only VP8, so the SFU
// cannot forward H.264 to it). A and B switch to VP8, and C decodes both of
// them; none of C's tiles ever says "cannot decrypt". When C leaves, A and B go
// back to H.264. Prints every page's decode counts and codecs.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { browserSuite, joinPage, leave, remoteTrack, sameSafetyNumber, waitFor } from './harness.mjs';

/** `page`'s video of `from`: {codec, framesDecoded, tile}. */
async function video(page, from) {
  const t = await remoteTrack(page, from, 'video');
  return t ? { codec: t.codec, framesDecoded: t.framesDecoded, tile: t.tile, negotiated: t.negotiatedCodecs } : null;
}

/** Waits until `page` decodes `from` in `codec` with framesDecoded growing; returns the counts. */
async function decodesIn(page, from, codec, { timeout = 30000 } = {}) {
  let last = null;
  const first = await waitFor(`${page.label} to decode ${from} in ${codec}`, async () => {
    last = await video(page, from);
    return last?.codec === `video/${codec}` && last.framesDecoded > 0 ? last : null;
  }, { timeout }).catch((err) => {
    err.message += `\nlast: ${JSON.stringify(last)}`;
    throw err;
  });
  return waitFor(`${page.label}: ${from}'s ${codec} frames to keep coming`, async () => {
    const v = await video(page, from);
    return v?.codec === `video/${codec}` && v.framesDecoded > first.framesDecoded + 10 ? v : null;
  }, { timeout: 20000 });
}

describe('a codec everyone decodes', { timeout: 300000 }, () => {
  const pages = {};
  const suite = browserSuite({ pages });

  it('an H.264 call switches to VP8 for a participant without H.264, and back when it leaves', suite.check(async () => {
    const room = `codec-fallback-${Date.now()}`;
    const params = { codec: 'H264', video: '320x240' };
    pages.a = await joinPage(suite.browser, suite.servers.base, { room, name: 'A', params });
    pages.b = await joinPage(suite.browser, suite.servers.base, { room, name: 'B', params });
    const { a, b } = pages;
    await sameSafetyNumber([a, b]);
    const ab = await decodesIn(b, a.participantId, 'H264');
    const ba = await decodesIn(a, b.participantId, 'H264');
    console.log(`# H.264 call: B decodes A ${ab.framesDecoded} frames, A decodes B ${ba.framesDecoded} (${ab.codec})`);

    // C: no H.264 decoding.
    pages.c = await joinPage(suite.browser, suite.servers.base, { room, name: 'C', params: { ...params, test_rxcodecs: 'vp8' } });
    const { c } = pages;
    const reported = await c.evaluate(() => window.satsuma.call.codecs.state().reported);
    assert.deepEqual(reported, ['vp8'], 'C reports only VP8');
    const bad = [];
    const watch = setInterval(async () => {
      for (const from of [a.participantId, b.participantId]) {
        const v = await video(c, from).catch(() => null);
        if (v?.tile && /decrypt/.test(v.tile)) bad.push({ from, ...v });
      }
    }, 500);
    try {
      await sameSafetyNumber([a, b, c]);
      const ca = await decodesIn(c, a.participantId, 'VP8', { timeout: 45000 });
      const cb = await decodesIn(c, b.participantId, 'VP8', { timeout: 45000 });
      // A and B see each other in VP8 now too (one codec per sender).
      const ab2 = await decodesIn(b, a.participantId, 'VP8');
      // C's own video (H.264, its pick: A and B decode it).
      const ac = await decodesIn(a, c.participantId, 'H264');
      const state = await a.evaluate(() => window.satsuma.call.codecs.state());
      console.log(`# with C (VP8 only): C decodes A ${ca.framesDecoded} and B ${cb.framesDecoded} frames (${ca.codec}, negotiated ${JSON.stringify(ca.negotiated)}); `
        + `B decodes A ${ab2.framesDecoded} (${ab2.codec}); A decodes C ${ac.framesDecoded} (${ac.codec}); A's codec choice ${JSON.stringify(state)}`);
      assert.ok(ca.tile === 'decoding' || ca.framesDecoded > 0);
    } finally {
      clearInterval(watch);
    }
    assert.deepEqual(bad, [], 'C never shows "cannot decrypt"');

    // C leaves: A and B go back to H.264.
    await leave(c);
    delete pages.c;
    const ab3 = await decodesIn(b, a.participantId, 'H264');
    const ba3 = await decodesIn(a, b.participantId, 'H264');
    const switches = await a.evaluate(() => window.satsuma.call.codecs.state().switches);
    console.log(`# C left: B decodes A ${ab3.framesDecoded} frames (${ab3.codec}), A decodes B ${ba3.framesDecoded}; A switched codec ${switches} times`);
    assert.equal(switches, 2, 'A switched to VP8 and back');
  }));

  it('a participant that decodes none of what a publisher can send sees "unsupported codec", not "cannot decrypt"', suite.check(async () => {
    // A sends VP8 (it falls back only to H.264 or VP9); D decodes AV1 only, so nothing
    // fits and A keeps VP8.
    const room = `codec-none-${Date.now()}`;
    pages.a = await joinPage(suite.browser, suite.servers.base, { room, name: 'A', params: { video: '320x240' } });
    pages.d = await joinPage(suite.browser, suite.servers.base, { room, name: 'D', params: { test_rxcodecs: 'av1' } });
    const { a, d } = pages;
    await sameSafetyNumber([a, d]);
    const seen = [];
    let last = null;
    const v = await waitFor('D to say "unsupported codec" for A', async () => {
      const t = await video(d, a.participantId);
      last = t;
      if (t?.tile) seen.push(t.tile);
      return t?.tile === 'unsupported codec' ? t : null;
    }, { timeout: 30000 }).catch(async (err) => {
      const state = await d.evaluate(() => window.satsuma.call.codecs.state()).catch(() => null);
      err.message += `\nlast: ${JSON.stringify(last)}; states seen ${[...new Set(seen)]}; D's codec choice ${JSON.stringify(state)}`;
      throw err;
    });
    const label = await d.evaluate((key) => document.querySelector(`[data-key="${key}"]`)?.textContent ?? '', String(a.participantId));
    console.log(`# D (AV1 only) on A's VP8: tile ${v.tile}, negotiated ${JSON.stringify(v.negotiated)}, decoded ${v.framesDecoded}; states seen ${[...new Set(seen)].join(', ')}`);
    assert.ok(!seen.some((s) => /decrypt/.test(s)), `never "cannot decrypt": ${seen}`);
    assert.match(label, /unsupported codec: VP8/);
    await leave(d);
    delete pages.d;
  }));
});
