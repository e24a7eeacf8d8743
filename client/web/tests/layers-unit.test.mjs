// Unit tests (no browser) of the web client's pure modules for simulcast:
// layer-choice.js (which layer a tile asks for, the encodings published) and
// tile-status.js (a tile's status from the current stats window).

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { LayerChoice, PAUSED_RID, ridForSize, sendEncodings, simulcastCodec } from '../public/layer-choice.js';
import { NO_KEY_AFTER_MS, TileStatus, codecSupport, tileStatus, windowOf } from '../public/tile-status.js';

describe('layer choice', () => {
  it('picks q up to 320 px of source width, h up to 640, else f', () => {
    // 16:9 tiles (no cropping): the width decides.
    assert.equal(ridForSize(320, 180), 'q');
    assert.equal(ridForSize(321, 180), 'h');
    assert.equal(ridForSize(640, 360), 'h');
    assert.equal(ridForSize(641, 360), 'f');
    assert.equal(ridForSize(1280, 720), 'f');
    // A 4:3 tile crops a 16:9 source (object-fit: cover): 300 px wide x 225 high needs 400 px.
    assert.equal(ridForSize(300, 225), 'h');
    // Device pixels count.
    assert.equal(ridForSize(300, 168, { dpr: 2 }), 'h');
    assert.equal(ridForSize(0, 0), 'q');
  });

  it('publishes q/h/f for the camera (lowest first) and h/f for a screen', () => {
    const cam = sendEncodings('video');
    assert.deepEqual(cam.map((e) => e.rid), ['q', 'h', 'f']);
    assert.deepEqual(cam.map((e) => e.scaleResolutionDownBy), [4, 2, 1]);
    assert.ok(cam[0].maxBitrate < cam[1].maxBitrate && cam[1].maxBitrate < cam[2].maxBitrate);
    assert.deepEqual(sendEncodings('screenshare').map((e) => e.rid), ['h', 'f']);
    assert.equal(sendEncodings('video', { simulcast: false }).length, 1);
    assert.equal(sendEncodings('video', { simulcast: false })[0].rid, undefined);
  });

  it('asks only for the layers Chromium sends for the capture size, the top one at full size', () => {
    const rids = (w, h, kind = 'video') => sendEncodings(kind, { width: w, height: h }).map((e) => `${e.rid}/${e.scaleResolutionDownBy}`);
    assert.deepEqual(rids(1280, 720), ['q/4', 'h/2', 'f/1']);
    assert.deepEqual(rids(960, 540), ['q/4', 'h/2', 'f/1']);
    assert.deepEqual(rids(640, 480), ['q/2', 'h/1']);
    assert.deepEqual(rids(480, 270), ['q/2', 'h/1']);
    assert.deepEqual(rids(320, 240), ['undefined/undefined']);
    assert.deepEqual(rids(1920, 1080, 'screenshare'), ['h/2', 'f/1']);
    assert.deepEqual(rids(320, 240, 'screenshare'), ['undefined/undefined']);
    assert.deepEqual(['VP8', 'H264', 'VP9', 'AV1', undefined].map(simulcastCodec), [true, true, false, false, true]);
  });

  it('debounces, sends only changes, pauses hidden tiles and retries once the video is pulled', async () => {
    const calls = [];
    let pulled = false;
    const choice = new LayerChoice({
      debounceMs: 20,
      apply: async (key, rid) => {
        calls.push([key, rid, pulled]);
        return pulled;
      },
    });
    // The view reports the tile's size (tile-watch.js); the choice has no DOM.
    choice.measure('7', { width: 1200, height: 675, visible: true, aspect: 16 / 9 });
    assert.equal(choice.wanted('7'), 'f');
    await sleep(60);
    assert.deepEqual(calls, [['7', 'f', false]], 'tried once, not pulled yet: no busy retry');
    await sleep(60);
    assert.equal(calls.length, 1);
    pulled = true;
    choice.pulledWith('7', 'f'); // the pull carried 'f'
    await sleep(60);
    assert.equal(calls.length, 1, 'nothing new to send');
    // Many resizes within the debounce: one request with the last size.
    for (const w of [900, 700, 500, 300]) choice.measure('7', { width: w, height: (w * 9) / 16 });
    await sleep(60);
    assert.deepEqual(calls.slice(1), [['7', 'q', true]]);
    // Hidden page: paused, lowest layer (already q: nothing sent); visible and large again: f.
    choice.setPageHidden(true);
    choice.measure('7', { width: 1200, height: 675 });
    assert.equal(choice.paused('7'), true);
    assert.equal(choice.wanted('7'), PAUSED_RID);
    await sleep(60);
    assert.equal(calls.length, 2);
    choice.setPageHidden(false);
    choice.measure('7', { visible: false }); // scrolled off-screen
    assert.equal(choice.wanted('7'), 'q');
    choice.measure('7', { visible: true });
    await sleep(60);
    assert.deepEqual(calls.at(-1), ['7', 'f', true]);
    assert.deepEqual(choice.state('7'), { rid: 'f', wanted: 'f', paused: false });
    // A 4:3 source in a 16:9 tile needs no more than the tile's width; a tall tile of a
    // 16:9 source needs height x aspect.
    choice.measure('8', { width: 600, height: 337.5, aspect: 4 / 3 });
    assert.equal(choice.wanted('8'), 'h');
    choice.measure('8', { width: 300, height: 400, aspect: 16 / 9 });
    assert.equal(choice.wanted('8'), 'f');
    choice.close();
  });
});

describe('tile status', () => {
  const base = { flags: { decrypt: true, mls: true }, member: true, paused: false, camOn: true, codec: { supported: true } };
  const track = (o) => ({ mid: '1', packetsReceived: 0, framesDecoded: 0, workerFrames: 0, decrypted: 0, dropped: 0, lastDrop: null, held: 0, epoch: 3, ...o });

  it('counts the window, and from zero after a counter reset', () => {
    assert.deepEqual(windowOf({ framesDecoded: 10 }, { framesDecoded: 25 }).decoded, 15);
    assert.deepEqual(windowOf({ framesDecoded: 10 }, { framesDecoded: 4 }).decoded, 4);
  });

  it('a drop long ago does not keep a decoding tile red', () => {
    const prev = track({ framesDecoded: 100, decrypted: 100, workerFrames: 120, dropped: 20, lastDrop: 'auth-failed' });
    const cur = track({ framesDecoded: 130, decrypted: 130, workerFrames: 150, dropped: 20, lastDrop: 'auth-failed' });
    const s = tileStatus({ ...base, video: cur, videoPrev: prev });
    assert.equal(s.state, 'decoding');
    assert.deepEqual(s.media, ['decoding · E2EE · epoch 3', 'ok']);
    assert.deepEqual(s.conn, ['live', 'ok']);
  });

  it('drops in this window with no decoding: cannot decrypt with the reason', () => {
    const prev = track({ framesDecoded: 100, decrypted: 100, workerFrames: 100 });
    const cur = track({ framesDecoded: 100, decrypted: 100, workerFrames: 130, dropped: 30, lastDrop: 'auth-failed' });
    const s = tileStatus({ ...base, video: cur, videoPrev: prev });
    assert.deepEqual(s.media, ['cannot decrypt: auth-failed', 'bad']);
  });

  it('no key: waiting first, "no key" once it lasts while a member', () => {
    const status = new TileStatus();
    let n = 0;
    const frame = () => {
      n += 30;
      return track({ workerFrames: n, dropped: n, lastDrop: 'no-key', packetsReceived: n * 3 });
    };
    assert.equal(status.update('1', { ...base, video: frame() }, 0).state, 'waiting for key');
    assert.equal(status.update('1', { ...base, video: frame() }, 1000).state, 'waiting for key');
    assert.equal(status.update('1', { ...base, video: frame() }, NO_KEY_AFTER_MS + 1).state, 'no key');
    // Not a member yet: still only waiting.
    const joining = new TileStatus();
    joining.update('1', { ...base, member: false, video: frame() }, 0);
    assert.equal(joining.update('1', { ...base, member: false, video: frame() }, NO_KEY_AFTER_MS * 3).state, 'waiting for key');
  });

  it('paused, camera off, unsupported codec, waiting for keyframe, no media', () => {
    const v = track({ packetsReceived: 50, workerFrames: 10, decrypted: 10 });
    assert.equal(tileStatus({ ...base, video: v, paused: true }).state, 'paused');
    assert.equal(tileStatus({ ...base, video: track({}), camOn: false }).state, 'camera off');
    assert.equal(tileStatus({ ...base, video: v, codec: { supported: false, name: 'H264' } }).media[0], 'unsupported codec: H264');
    assert.equal(tileStatus({ ...base, video: v }).state, 'waiting for keyframe');
    assert.equal(tileStatus({ ...base, video: v, videoPrev: v }).state, 'no media');
    assert.equal(tileStatus({ ...base, flags: { decrypt: false, mls: true }, video: v }).state, 'not decrypting');
  });

  it('codec support from the stats codec or the negotiated m-line', () => {
    const caps = [{ mimeType: 'video/VP8' }, { mimeType: 'video/rtx' }];
    assert.deepEqual(codecSupport('video/VP8', null, caps), { supported: true, name: 'VP8' });
    assert.deepEqual(codecSupport('video/H264', null, caps), { supported: false, name: 'H264' });
    assert.equal(codecSupport(null, ['video/rtx'], caps).supported, false);
    assert.equal(codecSupport(null, ['video/VP8', 'video/rtx'], caps).supported, null);
    assert.equal(codecSupport(null, null, caps).supported, null);
  });
});

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

describe('uplink start bitrate', () => {
  it('adds x-google-start-bitrate to every video codec of every video section, not to rtx or audio', async () => {
    const { withStartBitrate } = await import('../public/sfu-link.js');
    const video = (mid) => [`m=video 9 UDP/TLS/RTP/SAVPF 96 97 98`, `a=mid:${mid}`, 'a=rtpmap:96 VP8/90000', 'a=rtpmap:97 rtx/90000', 'a=fmtp:97 apt=96',
      'a=rtpmap:98 H264/90000', 'a=fmtp:98 packetization-mode=1'];
    const sdp = ['v=0', 'm=audio 9 UDP/TLS/RTP/SAVPF 111', 'a=rtpmap:111 opus/48000/2', 'a=fmtp:111 minptime=10', ...video('1'), ...video('2'), ''].join('\r\n');
    const out = withStartBitrate(sdp, 1000).split('\r\n');
    assert.equal(out.filter((l) => l === 'a=fmtp:96 x-google-start-bitrate=1000').length, 2);
    assert.equal(out.filter((l) => l === 'a=fmtp:98 packetization-mode=1;x-google-start-bitrate=1000').length, 2);
    assert.ok(out.includes('a=fmtp:111 minptime=10') && out.includes('a=fmtp:97 apt=96'));
    // Each fmtp right after its rtpmap, in its own section.
    assert.equal(out[out.indexOf('a=mid:2') + 2], 'a=fmtp:96 x-google-start-bitrate=1000');
    assert.equal(withStartBitrate(withStartBitrate(sdp, 1000), 1000), withStartBitrate(sdp, 1000), 'idempotent');
  });
});
