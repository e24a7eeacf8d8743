// A receive-only page (`send=0`, a viewer) keeps watching while publishers come
// and go. Such a page pushes nothing, so the first m-line of its connection (the
// BUNDLE tag, the m-line whose transport the others share) is a pulled track.
// The viewer pulls Alice first, so its first m-line carries Alice's track; when
// Alice leaves, that track is closed. The viewer must go on decoding Bob on the
// same connection (never leaving `connected`, no ICE restart, no new SFU
// session), and decode Carol, who joins afterwards.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  browserSuite, assertDecodes, joinPage, leave, remoteTrack, sameSafetyNumber, stats, waitFor,
} from './harness.mjs';

/** Records the viewer's connection states (installed in the page, so no change is missed). */
function watchConnection(page) {
  return page.evaluate(() => {
    const pc = window.satsuma.call.sfu.pc;
    window.connectionLog = [`${pc.connectionState}/${pc.iceConnectionState}`];
    const note = () => window.connectionLog.push(`${pc.connectionState}/${pc.iceConnectionState}`);
    pc.addEventListener('connectionstatechange', note);
    pc.addEventListener('iceconnectionstatechange', note);
  });
}

/** The mids of the viewer's m-lines in SDP order, and the BUNDLE group of its local description. */
function mLines(page) {
  return page.evaluate(() => {
    const pc = window.satsuma.call.sfu.pc;
    const sdp = pc.localDescription?.sdp ?? '';
    return {
      mids: [...sdp.matchAll(/^a=mid:(\S+)/gm)].map((m) => m[1]),
      bundle: /^a=group:BUNDLE (.*)$/m.exec(sdp)?.[1].trim() ?? null,
    };
  });
}

describe('a receive-only page while publishers come and go', { timeout: 180000 }, () => {
  const room = `receive-only-${Date.now()}`;
  const pages = {};
  const suite = browserSuite({ pages });
  const { check } = suite;

  it('keeps decoding the others on the same connection when the publisher of its first m-line leaves', check(async () => {
    const { browser } = suite;
    const { base } = suite.servers;
    pages.alice = await joinPage(browser, base, { room, name: 'Alice' });
    pages.bob = await joinPage(browser, base, { room, name: 'Bob' });
    await sameSafetyNumber([pages.alice, pages.bob]);
    pages.viewer = await joinPage(browser, base, { room, name: 'Viewer', params: { send: '0' } });
    const { viewer, alice, bob } = pages;
    await assertDecodes(viewer, bob.participantId);
    await assertDecodes(viewer, alice.participantId);

    // The first m-line (the BUNDLE tag) is one of Alice's tracks.
    const before = await stats(viewer);
    assert.equal(before.send.senders.length, 0, 'the viewer pushes nothing');
    const aliceMids = before.remote.filter((r) => r.participantId === alice.participantId).map((r) => r.mid);
    const lines = await mLines(viewer);
    assert.ok(aliceMids.includes(lines.mids[0]), `first m-line ${lines.mids[0]} is Alice's (${aliceMids}); m-lines ${JSON.stringify(lines)}`);
    await watchConnection(viewer);
    const session = before.sfuSession;

    await leave(alice);
    delete pages.alice;
    await sameSafetyNumber([bob, viewer]);
    // Alice's pulls are closed (unpulled) and Bob still decodes, past that renegotiation.
    await waitFor('the viewer to drop Alice\'s tracks', async () => {
      const s = await stats(viewer);
      return !s.remote.some((r) => r.participantId === alice.participantId);
    });
    await waitFor('the viewer\'s negotiation of the close to settle', () => viewer.evaluate(() => window.satsuma.call.sfu.pc.signalingState === 'stable'));
    const afterLeave = await mLines(viewer);
    const first = await viewer.evaluate((mid) => window.satsuma.call.sfu.pc.getTransceivers().find((t) => t.mid === mid)?.currentDirection ?? null, lines.mids[0]);
    console.log(`# receive-only: m-lines before ${JSON.stringify(lines)}, after Alice left ${JSON.stringify(afterLeave)}; first m-line now ${first}`);
    assert.ok(['inactive', 'stopped', null].includes(first), `the first m-line was closed (it is ${first})`);
    await assertDecodes(viewer, bob.participantId, { timeout: 15000 });

    // A publisher joining afterwards is pulled and decoded too.
    pages.carol = await joinPage(browser, base, { room, name: 'Carol' });
    await assertDecodes(viewer, pages.carol.participantId);
    await assertDecodes(viewer, bob.participantId, { timeout: 15000 });
    // (The worker reports its counts about once a second: the video may decode before the
    // first report, so the count is waited for.)
    const carolVideo = await waitFor('the worker to count Carol\'s decrypted frames', async () => {
      const t = await remoteTrack(viewer, pages.carol.participantId, 'video');
      return t?.decrypted > 0 ? t : null;
    }, { timeout: 10000 }).catch(() => remoteTrack(viewer, pages.carol.participantId, 'video'));
    assert.ok(carolVideo.decrypted > 0, `Carol's video went through the E2EE transform: ${JSON.stringify(carolVideo)}`);

    // All on one connection that never went down.
    const after = await stats(viewer);
    const log = await viewer.evaluate(() => window.connectionLog);
    console.log(`# receive-only: viewer connection states ${JSON.stringify(log)}; ICE restarts ${JSON.stringify(after.iceRestarts)}; problems ${JSON.stringify(after.problems)}`);
    assert.equal(after.media, 'connected');
    assert.ok(log.every((s) => /^connected\/(connected|completed)$/.test(s)), `the viewer's connection left connected: ${JSON.stringify(log)}`);
    assert.equal(after.sfuSession, session, 'the same SFU session');
    assert.equal(after.mediaSessions, before.mediaSessions, 'no new SFU session');
    assert.equal(after.iceRestarts.attempted, before.iceRestarts.attempted, `no ICE restart: ${JSON.stringify(after.iceRestarts)}`);
    assert.deepEqual(after.problems.filter((p) => /closing tracks|receiving|Media/.test(p)), [], 'no media problem');
    assert.equal(suite.servers.panicked().length, 0, suite.servers.panicked().join('\n'));
  }));
});
