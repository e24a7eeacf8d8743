// ICE restart of a page's media link (issue 12), forced through the test drill
// (window.satsuma.drill.restartIce: what the page does by itself after 2 s of a
// disconnected connection): the restart offer goes through the coordinator's
// proxy to `PUT sessions/{id}/renegotiate`, the SFU answers with new ICE
// credentials, and media decodes again both ways on the same SFU session, with
// the same MLS group state (same safety number and sending epoch, no new
// session, no rejoin). The SFU drops its old candidate pair on a restart, so
// media that keeps decoding afterwards went through the restarted ICE.
// (Blocking a page's network path is tested with network namespaces.)

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { browserSuite, assertDecodes, assertHears, joinPage, safetyNumber, sameSafetyNumber, stats, waitFor } from './harness.mjs';

/** The ICE ufrags of the page's current local and remote descriptions. */
function ufrags(page) {
  return page.evaluate(() => {
    const pc = window.satsuma.call.sfu.pc;
    const of = (d) => d?.sdp.match(/^a=ice-ufrag:(\S+)/m)?.[1] ?? null;
    return { local: of(pc.localDescription), remote: of(pc.remoteDescription) };
  });
}

describe('ICE restart in the browser', { timeout: 300000 }, () => {
  const room = `ice-restart-${Date.now()}`;
  const pages = {};
  const suite = browserSuite({ pages });
  const { check } = suite;

  it('a restart keeps the SFU session and the E2EE state, and media decodes again both ways', check(async () => {
    pages.ann = await joinPage(suite.browser, suite.servers.base, { room, name: 'Ann' });
    pages.ben = await joinPage(suite.browser, suite.servers.base, { room, name: 'Ben' });
    const { ann, ben } = pages;
    const number = await sameSafetyNumber([ann, ben]);
    await assertDecodes(ann, ben.participantId);
    await assertDecodes(ben, ann.participantId);

    const before = await stats(ann);
    assert.ok(before.sfuSession, JSON.stringify(before));
    assert.equal(before.mediaSessions, 1);
    assert.deepEqual(
      { attempted: before.iceRestarts.attempted, succeeded: before.iceRestarts.succeeded },
      { attempted: 0, succeeded: 0 },
    );
    const ice = await ufrags(ann);
    assert.ok(ice.local && ice.remote, JSON.stringify(ice));

    const ok = await ann.evaluate(() => window.satsuma.drill.restartIce());
    assert.equal(ok, true, JSON.stringify((await stats(ann)).iceRestarts));

    const after = await stats(ann);
    assert.equal(after.sfuSession, before.sfuSession, 'the same SFU session');
    assert.equal(after.mediaSessions, 1, 'no new SFU session');
    assert.equal(after.iceRestarts.attempted, 1, JSON.stringify(after.iceRestarts));
    assert.equal(after.iceRestarts.succeeded, 1, JSON.stringify(after.iceRestarts));
    const ice2 = await ufrags(ann);
    assert.notEqual(ice2.local, ice.local, 'the page offered new ICE credentials');
    assert.notEqual(ice2.remote, ice.remote, 'the SFU answered with new ICE credentials');

    // Media after the restart: the counts keep increasing on both sides.
    await assertDecodes(ann, ben.participantId, { timeout: 10000 });
    await assertDecodes(ben, ann.participantId, { timeout: 10000 });
    await assertHears(ben, ann.participantId, { timeout: 10000 });
    await waitFor('Ann to be connected with the same session', async () => {
      const s = await stats(ann);
      return s.media === 'connected' && s.sfuSession === before.sfuSession ? s : null;
    }, { timeout: 5000 });

    // No MLS rejoin: same member id, same group state, same sending epoch.
    const end = await stats(ann);
    assert.equal(end.me, before.me);
    assert.equal(end.send.epoch, before.send.epoch, 'same sending epoch');
    assert.equal(await safetyNumber(ann), number);
    assert.equal(await safetyNumber(ben), number);
    assert.equal(suite.servers.panicked().length, 0, suite.servers.panicked().join('\n'));
  }));

  // A restart offer that reaches the SFU but whose answer is lost: the SFU now holds the
  // offer's new credentials, the page rolled back to its old ones. A negotiation queued behind
  // the failed attempt (here a pull, as when someone joins) must not answer the SFU's offer
  // with the old credentials (the SFU refuses that as an ICE restart in an answer, and the
  // m-lines fall out of step): the page settles the credentials with a new restart offer first.
  it('a restart whose answer is lost does not break the next negotiation', check(async () => {
    const { ann, ben } = pages;
    const before = await stats(ann);
    let lost = 0;
    await ann.route('**/sessions/*/renegotiate', async (route) => {
      const body = route.request().postDataJSON?.() ?? null;
      if (lost > 0 || body?.sessionDescription?.type !== 'offer') return route.continue();
      lost += 1;
      // The SFU takes the restart offer...
      await route.fetch();
      // ...and a pull is queued behind the attempt before its failure is known, as a join
      // would queue one (here of Ann's own audio: a track her page does not pull yet; no
      // participant in its info, so no tile shows it).
      await ann.evaluate(() => {
        const sfu = window.satsuma.call.sfu;
        const [trackName] = [...sfu.pushes.entries()].find(([, p]) => p.info.kind === 'audio');
        window.pullAfterLostAnswer = sfu.pull([{ sessionId: sfu.sessionId, trackName, info: { kind: 'audio' } }])
          .then((mids) => ({ mids }), (err) => ({ error: err.message }));
      });
      // ...but its answer never arrives.
      await route.abort('failed');
    });
    const restarted = ann.evaluate(() => window.satsuma.drill.restartIce());
    const pulled = await waitFor('the queued pull to finish', () => ann.evaluate(() => window.pullAfterLostAnswer ?? null), { timeout: 20000 })
      .then(() => ann.evaluate(() => window.pullAfterLostAnswer));
    assert.equal(lost, 1, 'one restart answer was lost');
    assert.equal(pulled.error, undefined, `the pull after the lost answer: ${JSON.stringify(pulled)}`);
    assert.equal(pulled.mids.length, 1);
    assert.ok(pulled.mids[0], JSON.stringify(pulled));
    assert.equal(await restarted, true, JSON.stringify((await stats(ann)).iceRestarts));
    await ann.unroute('**/sessions/*/renegotiate');
    const ice = await ufrags(ann);
    const sdp = await ann.evaluate(() => window.satsuma.call.sfu.pc.remoteDescription.sdp);
    assert.ok(ice.local && ice.remote && sdp.includes(`a=mid:${pulled.mids[0]}`), 'the new leg is in the negotiated description');
    // Media still flows both ways on the same session.
    await assertDecodes(ann, ben.participantId, { timeout: 10000 });
    await assertDecodes(ben, ann.participantId, { timeout: 10000 });
    const after = await stats(ann);
    assert.equal(after.sfuSession, before.sfuSession, 'the same SFU session');
    assert.equal(after.mediaSessions, 1, 'no new SFU session');
    assert.equal(suite.servers.panicked().length, 0, suite.servers.panicked().join('\n'));
  }));
});
