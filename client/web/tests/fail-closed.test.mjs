// Fail closed: a page that cannot encrypt sends no media at all, and says so.
//
// A keyless observer (`keyless=1`: never joins the MLS group, pulls every
// track and only inspects frames) is in the room with a normal sender (the
// positive control: the observer must keep receiving its encrypted frames,
// or "received nothing" would prove nothing). Then, one at a time, a sender
// that cannot encrypt joins and pushes its camera and microphone: the
// observer pulls its tracks and must get 0 RTP packets and 0 frames from it,
// its own outbound RTP counters must stay at 0, and its page must show the
// persistent red E2EE state. Causes: no RTCRtpScriptTransform and no
// createEncodedStreams; no RTCRtpScriptTransform and a createEncodedStreams
// that throws; the `.wasm` module answered 404. Then a working sender's E2EE
// worker is terminated mid-call: its outgoing media must stop within 1 s.
// Last, the legacy createEncodedStreams path holds an E2EE call between two
// pages while a keyless observer sees only DAVE frames (`FA FA` trailer).
// Measured figures are printed (`# fail-closed: ...`).

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  browserSuite, assertDecodes, assertHears, joinPage, remoteTrack, sameSafetyNumber,
  screenshot, stats, waitFor,
} from './harness.mjs';

const NO_TRANSFORM_APIS = () => {
  delete window.RTCRtpScriptTransform;
  delete window.RTCRtpSender.prototype.createEncodedStreams;
  delete window.RTCRtpReceiver.prototype.createEncodedStreams;
};
const THROWING_ENCODED_STREAMS = () => {
  delete window.RTCRtpScriptTransform;
  const refuse = function createEncodedStreams() { throw new DOMException('refused by the test', 'InvalidStateError'); };
  window.RTCRtpSender.prototype.createEncodedStreams = refuse;
  window.RTCRtpReceiver.prototype.createEncodedStreams = refuse;
};
const NO_SCRIPT_TRANSFORM = () => {
  delete window.RTCRtpScriptTransform;
};

function log(line) {
  console.log(`# fail-closed: ${line}`);
}

/** Sum of an outbound/inbound counter per kind from the page's own RTCPeerConnection. */
async function rtpTotals(page) {
  const s = await stats(page);
  const out = { audio: 0, video: 0 };
  for (const t of s.outbound) out[t.kind] = (out[t.kind] ?? 0) + t.packetsSent;
  return out;
}

/** The red E2EE state as the user sees it: `{visible, text}`. */
async function alertState(page) {
  return page.evaluate(() => {
    const el = document.getElementById('e2ee-alert');
    return { visible: Boolean(el && !el.hidden && el.offsetHeight > 0), text: el?.innerText.replace(/\s+/g, ' ').trim() ?? '' };
  });
}

describe('fail closed: no media without encryption', { timeout: 900000 }, () => {
  const room = `failclosed-${Date.now()}`;
  const pages = {};
  const suite = browserSuite({ pages });
  const { check } = suite;

  /** The observer and the control sender of the room (joined once). */
  async function observerAndControl() {
    if (!pages.observer) {
      pages.control = await joinPage(suite.browser, suite.servers.base, { room, name: 'Control' });
      pages.observer = await joinPage(suite.browser, suite.servers.base, { room, name: 'Observer', params: { keyless: '1', send: '0' } });
      await waitFor('the observer to receive the control sender\'s encrypted video', async () => {
        const r = await remoteTrack(pages.observer, pages.control.participantId, 'video');
        return r && r.protocolFrames > 20 ? r : null;
      }, { timeout: 45000 });
    }
    return { observer: pages.observer, control: pages.control };
  }

  /**
   * `page` pushed its tracks, the observer pulled them, and while the
   * observer kept receiving the control sender's frames for `windowFrames`
   * more frames, nothing of `page` arrived and `page` sent no RTP packet.
   */
  async function assertSendsNothing(page, label, { windowFrames = 150 } = {}) {
    const { observer, control } = await observerAndControl();
    const from = page.participantId;
    // The sender's tracks exist at the SFU and the observer pulled both.
    const pulled = await waitFor(`the observer to pull ${label}'s audio and video`, async () => {
      const s = await stats(observer);
      const mine = s.remote.filter((r) => r.participantId === from && r.mid);
      return mine.length >= 2 ? mine : null;
    }, { timeout: 30000 });
    const senderStats = await stats(page);
    assert.deepEqual(senderStats.send.senders.map((x) => x.kind).sort(), ['audio', 'video'], `${label} pushed its camera and microphone`);
    const start = await remoteTrack(observer, control.participantId, 'video');
    const end = await waitFor(`the observer to receive ${windowFrames} more control frames`, async () => {
      const r = await remoteTrack(observer, control.participantId, 'video');
      return r && r.workerFrames >= start.workerFrames + windowFrames ? r : null;
    }, { timeout: 60000 });
    const s = await stats(observer);
    const mine = s.remote.filter((r) => r.participantId === from);
    const figures = mine.map((r) => `${r.kind}: ${r.packetsReceived} packets, ${r.framesReceived} frames, ${r.workerFrames} worker frames`).join('; ');
    const sent = await rtpTotals(page);
    const sender = await stats(page);
    log(`${label}: observer got from it ${figures} (pulled ${pulled.length} tracks) while receiving ${end.workerFrames - start.workerFrames} control frames; `
      + `its packetsSent audio=${sent.audio} video=${sent.video}; transform=${sender.transform}; send=${sender.send.level}: ${sender.send.reason}`);
    for (const r of mine) {
      assert.equal(r.packetsReceived, 0, `observer got RTP from ${label}: ${JSON.stringify(r)}`);
      assert.equal(r.framesReceived, 0, `observer got frames from ${label}: ${JSON.stringify(r)}`);
      assert.equal(r.workerFrames, 0, `observer's worker saw frames from ${label}: ${JSON.stringify(r)}`);
    }
    assert.equal(sent.audio + sent.video, 0, `${label} sent RTP packets: ${JSON.stringify(sender.outbound)}`);
    assert.ok(sender.send.senders.every((x) => !x.sending), `no sender of ${label} carries a track: ${JSON.stringify(sender.send.senders)}`);
    return sender;
  }

  /** The page shows the persistent red state with a reason matching `reason`, and keeps showing it. */
  async function assertRed(page, label, reason) {
    const first = await waitFor(`${label} to show the red E2EE state`, async () => {
      const a = await alertState(page);
      return a.visible ? a : null;
    }, { timeout: 15000 });
    assert.match(first.text, reason);
    assert.match(first.text, /Not sending/);
    const s = await stats(page);
    assert.equal(s.send.level, 'bad');
    assert.match(await page.textContent('#e2ee-summary'), /failed/, 'the E2EE summary does not claim a working state');
    assert.match(await page.textContent('[data-key="local"]'), /NOT SENDING/);
    // Not a banner that times out: still there after the 6 s a note lasts.
    await new Promise((r) => setTimeout(r, 7000));
    const later = await alertState(page);
    assert.ok(later.visible, `${label}: the red state went away: ${JSON.stringify(later)}`);
    log(`${label}: red state "${later.text}"`);
  }

  async function close(key) {
    await pages[key]?.context().close().catch(() => {});
    delete pages[key];
  }

  it('no RTCRtpScriptTransform and no createEncodedStreams: nothing is sent, the page is red', check(async () => {
    await observerAndControl();
    pages.bare = await joinPage(suite.browser, suite.servers.base, { room, name: 'NoTransformApi', initScript: NO_TRANSFORM_APIS });
    // Both at once: the red state's 7 s persistence check runs during the observer's window.
    const [s] = await Promise.all([
      assertSendsNothing(pages.bare, 'no transform API'),
      assertRed(pages.bare, 'no transform API', /neither RTCRtpScriptTransform nor createEncodedStreams/),
    ]);
    assert.equal(s.transform, 'none');
    await screenshot(pages.bare, 'fail-closed-no-transform');
    await close('bare');
  }));

  it('no RTCRtpScriptTransform and createEncodedStreams throwing: nothing is sent, the page is red', check(async () => {
    pages.throwing = await joinPage(suite.browser, suite.servers.base, { room, name: 'ThrowingStreams', initScript: THROWING_ENCODED_STREAMS });
    const [s] = await Promise.all([
      assertSendsNothing(pages.throwing, 'createEncodedStreams throwing'),
      assertRed(pages.throwing, 'createEncodedStreams throwing', /could not be attached.*refused by the test/),
    ]);
    assert.equal(s.transform, 'createEncodedStreams');
    await close('throwing');
  }));

  it('the .wasm module answered 404: nothing is sent, the page is red', check(async () => {
    let refused = 0;
    pages.nowasm = await joinPage(suite.browser, suite.servers.base, {
      room,
      name: 'NoWasm',
      prepare: (context) => context.route((url) => url.pathname.endsWith('.wasm'), (route) => {
        refused += 1;
        return route.fulfill({ status: 404, contentType: 'text/plain', body: 'not found (test)' });
      }),
    });
    const [s] = await Promise.all([
      assertSendsNothing(pages.nowasm, '.wasm 404'),
      assertRed(pages.nowasm, '.wasm 404', /encryption module could not be loaded/),
    ]);
    assert.ok(refused >= 1, 'the .wasm request was answered 404');
    assert.equal(s.transform, 'RTCRtpScriptTransform');
    await screenshot(pages.nowasm, 'fail-closed-no-wasm');
    await close('nowasm');
  }));

  it('the E2EE worker terminated mid-call: the sender\'s outgoing media stops within 1 s', check(async () => {
    const { observer, control } = await observerAndControl();
    pages.victim = await joinPage(suite.browser, suite.servers.base, { room, name: 'Victim' });
    const victim = pages.victim;
    const from = victim.participantId;
    await assertDecodes(control, from);
    await assertHears(control, from);
    for (const kind of ['audio', 'video']) {
      await waitFor(`the observer to receive ${kind} of Victim`, async () => {
        const r = await remoteTrack(observer, from, kind);
        return r && r.protocolFrames > 20 ? r : null;
      }, { timeout: 30000 });
    }
    // The E2EE worker by its name (its URL may be a blob: URL).
    const worker = await waitFor('Victim\'s E2EE worker', async () => {
      for (const w of victim.workers()) {
        if (await w.evaluate(() => self.name).catch(() => null) === 'satsuma-e2ee') return w;
      }
      return null;
    });
    // Sample the sender's own outbound RTP counters every 50 ms in the page.
    await victim.evaluate(() => {
      window.failClosedSamples = [];
      window.failClosedSampler = setInterval(async () => {
        const report = await window.satsuma.call.sfu.pc.getStats();
        const sample = { at: Date.now(), audio: 0, video: 0 };
        report.forEach((s) => {
          if (s.type === 'outbound-rtp') sample[s.kind] += s.packetsSent - (s.retransmittedPacketsSent ?? 0);
        });
        window.failClosedSamples.push(sample);
      }, 50);
    });
    await new Promise((r) => setTimeout(r, 500));
    const beforeKill = await remoteTrack(observer, from, 'video');
    const killedAt = Date.now();
    // Terminate it from inside, the way a crash would: no message to the page.
    worker.evaluate(() => self.close()).catch(() => {});
    await new Promise((r) => setTimeout(r, 1000));
    const observerAt1s = { video: await remoteTrack(observer, from, 'video'), audio: await remoteTrack(observer, from, 'audio') };
    await new Promise((r) => setTimeout(r, 2500));
    const observerAt3s = { video: await remoteTrack(observer, from, 'video'), audio: await remoteTrack(observer, from, 'audio') };
    const samples = await victim.evaluate(() => {
      clearInterval(window.failClosedSampler);
      return window.failClosedSamples;
    });
    const s = await stats(victim);
    const stops = {};
    for (const kind of ['audio', 'video']) {
      let lastIncrease = null;
      for (let i = 1; i < samples.length; i += 1) {
        if (samples[i][kind] > samples[i - 1][kind]) lastIncrease = samples[i].at;
      }
      const before = samples.filter((x) => x.at < killedAt);
      assert.ok(before.length >= 5 && before[before.length - 1][kind] > before[0][kind], `Victim was sending ${kind} before the kill: ${JSON.stringify(before.slice(-3))}`);
      stops[kind] = lastIncrease - killedAt;
    }
    const closed = s.send.log.find((e) => e.at >= killedAt && e.level === 'bad');
    const gateMs = closed ? closed.at - killedAt : null;
    const seenAfter1s = {
      video: observerAt3s.video.packetsReceived - observerAt1s.video.packetsReceived,
      audio: observerAt3s.audio.packetsReceived - observerAt1s.audio.packetsReceived,
    };
    log(`worker terminated: last outbound RTP packet after ${stops.audio} ms (audio), ${stops.video} ms (video); `
      + `send gate closed after ${gateMs} ms (${closed?.reason}); observer packets from it between 1 s and 3.5 s after: audio=${seenAfter1s.audio} video=${seenAfter1s.video}; `
      + `observer video frames all DAVE: ${observerAt3s.video.protocolFrames}/${observerAt3s.video.workerFrames} (before kill ${beforeKill.protocolFrames}/${beforeKill.workerFrames})`);
    assert.ok(stops.audio <= 1000, `audio kept going ${stops.audio} ms after the worker died`);
    assert.ok(stops.video <= 1000, `video kept going ${stops.video} ms after the worker died`);
    // The media stopped by itself (above); the page's gate closes and the red state
    // shows once the watchdog gives the worker up (STALLED_AFTER_MS + one ping).
    assert.ok(gateMs !== null && gateMs <= 3000, `send gate closed after ${gateMs} ms: ${JSON.stringify(s.send.log)}`);
    assert.equal(seenAfter1s.video, 0, 'the observer still got video packets more than 1 s after the worker died');
    assert.equal(seenAfter1s.audio, 0, 'the observer still got audio packets more than 1 s after the worker died');
    assert.equal(observerAt3s.video.protocolFrames, observerAt3s.video.workerFrames, 'every frame the observer got is a DAVE frame');
    assert.equal(observerAt3s.audio.protocolFrames, observerAt3s.audio.workerFrames, 'every audio frame the observer got is a DAVE frame');
    assert.ok(s.send.senders.every((x) => !x.sending), `a sender still carries a track: ${JSON.stringify(s.send.senders)}`);
    await assertRed(victim, 'worker terminated', /not responding/);
    // A worker silent for 20 s is given up for good: the state stays red, now
    // with a button to reload and rejoin, and nothing was sent meanwhile.
    const dead = await waitFor('Victim to give its worker up', async () => {
      const x = await stats(victim);
      return /has not responded/.test(x.send.reason) ? x : null;
    }, { timeout: 30000 });
    assert.ok(await victim.isVisible('#e2ee-alert-reload'), 'a reload button is offered');
    assert.ok(dead.send.senders.every((x) => !x.sending));
    const observerAtEnd = { video: await remoteTrack(observer, from, 'video'), audio: await remoteTrack(observer, from, 'audio') };
    for (const kind of ['audio', 'video']) {
      assert.equal(observerAtEnd[kind].packetsReceived, observerAt1s[kind].packetsReceived, `the observer got ${kind} after the worker died`);
    }
    log(`worker terminated: given up after ${dead.send.log.find((e) => /has not responded/.test(e.reason)).at - killedAt} ms; `
      + `observer packets from it after the first second: 0 over ${Date.now() - killedAt - 1000} ms`);
    await screenshot(victim, 'fail-closed-worker-dead');
    await close('victim');
  }));

  it('the legacy createEncodedStreams path holds an E2EE call; a keyless observer sees only DAVE frames', check(async () => {
    await close('control');
    await close('observer');
    const legacyRoom = `${room}-legacy`;
    pages.legacyParam = await joinPage(suite.browser, suite.servers.base, { room: legacyRoom, name: 'LegacyParam', params: { transform: 'legacy' } });
    pages.legacyOnly = await joinPage(suite.browser, suite.servers.base, { room: legacyRoom, name: 'LegacyOnly', initScript: NO_SCRIPT_TRANSFORM });
    pages.legacyObserver = await joinPage(suite.browser, suite.servers.base, { room: legacyRoom, name: 'LegacyObserver', params: { keyless: '1', send: '0' } });
    const pair = [pages.legacyParam, pages.legacyOnly];
    for (const p of pair) assert.equal((await stats(p)).transform, 'createEncodedStreams', `${p.label} uses the legacy path`);
    const number = await sameSafetyNumber(pair);
    for (const [viewer, other] of [[pair[0], pair[1]], [pair[1], pair[0]]]) {
      await assertDecodes(viewer, other.participantId);
      await assertHears(viewer, other.participantId);
      const t = await waitFor(`${viewer.label} to report decrypted frames of ${other.label}`, async () => {
        const r = await remoteTrack(viewer, other.participantId, 'video');
        return r && r.decrypted > 20 ? r : null;
      }, { timeout: 15000 });
      log(`legacy: ${viewer.label} decrypted ${t.decrypted} and decoded ${t.framesDecoded} video frames of ${other.label} (dropped ${t.dropped})`);
    }
    for (const p of pair) {
      const s = await stats(p);
      assert.equal(s.send.level, 'ok', `${p.label} sends encrypted`);
      assert.ok(s.encrypt.encrypted > 0, `${p.label} encrypted frames: ${JSON.stringify(s.encrypt)}`);
    }
    for (const sender of pair) {
      for (const kind of ['video', 'audio']) {
        const r = await waitFor(`the observer to receive 40 ${kind} frames of ${sender.label}`, async () => {
          const x = await remoteTrack(pages.legacyObserver, sender.participantId, kind);
          return x && x.workerFrames > 40 ? x : null;
        }, { timeout: 45000 });
        log(`legacy: observer got ${r.workerFrames} ${kind} frames of ${sender.label}, ${r.protocolFrames} DAVE frames, last bytes ${JSON.stringify(r.lastBytes)}, decoded ${r.framesDecoded}`);
        assert.equal(r.protocolFrames, r.workerFrames, `only DAVE frames from ${sender.label}: ${JSON.stringify(r)}`);
        assert.deepEqual(r.lastBytes, [0xfa, 0xfa]);
        if (kind === 'video') assert.ok(r.framesDecoded <= Math.max(3, r.framesReceived * 0.1), `the observer decoded ciphertext: ${JSON.stringify(r)}`);
      }
    }
    assert.match(number, /^\d{30}$/);
    await screenshot(pages.legacyParam, 'legacy-transform-call');
  }));
});
