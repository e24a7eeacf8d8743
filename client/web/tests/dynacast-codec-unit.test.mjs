// Unit tests (Node, no browser) of the pure parts of dynacast.js and
// codec-choice.js: which encodings stay on for a `layers` message, which
// `layers` messages are taken, which codec a publisher sends, and how the
// codec lists are built and reported.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';

// codec-choice.js reads the server's client config (test hooks) at load: no server here.
globalThis.location ??= { search: '', href: 'http://localhost/' };
const realFetch = globalThis.fetch;
globalThis.fetch = async () => ({ ok: false, status: 404, json: async () => ({}) });
const { Dynacast, activeFlags, validLayers } = await import('../public/dynacast.js');
const { CodecChoice, FALLBACK, chooseCodec, codecName, codecNames, negotiatedCodec, receiveFilter, sendPreferences } = await import('../public/codec-choice.js');
globalThis.fetch = realFetch;

const qhf = [{ rid: 'q' }, { rid: 'h' }, { rid: 'f' }];

describe('dynacast at the publisher', () => {
  it('keeps the layers up to max_rid and always the lowest', () => {
    assert.deepEqual(activeFlags(qhf, 'f'), [true, true, true]);
    assert.deepEqual(activeFlags(qhf, 'h'), [true, true, false]);
    assert.deepEqual(activeFlags(qhf, 'q'), [true, false, false]);
    assert.deepEqual(activeFlags(qhf, null), [true, false, false]);
    // A screen share (h/f): its lowest layer is h.
    assert.deepEqual(activeFlags([{ rid: 'h' }, { rid: 'f' }], 'q'), [true, false]);
    assert.deepEqual(activeFlags([{ rid: 'h' }, { rid: 'f' }], null), [true, false]);
    assert.deepEqual(activeFlags([{ rid: 'h' }, { rid: 'f' }], 'f'), [true, true]);
    // One layer (no simulcast) never goes off; nor does a sender without rids.
    assert.deepEqual(activeFlags([{}], null), [true]);
    assert.deepEqual(activeFlags([{ rid: 'q' }, {}], null), [true, true]);
    // An unknown rid ranks at the top.
    assert.deepEqual(activeFlags([{ rid: 'q' }, { rid: 'x' }], 'h'), [true, false]);
  });

  it('takes only well-formed layers messages for its current session', async () => {
    const ok = { type: 'layers', session_id: 's1', track_name: 'cam', max_rid: 'q' };
    assert.ok(validLayers(ok));
    assert.ok(validLayers({ ...ok, max_rid: null }));
    for (const bad of [
      { ...ok, max_rid: 'x' }, { ...ok, max_rid: undefined }, { ...ok, max_rid: 1 }, { ...ok, max_rid: '__proto__' },
      { ...ok, track_name: '' }, { ...ok, track_name: 'x'.repeat(300) }, { ...ok, session_id: 5 }, { ...ok, type: 'error' }, null,
    ]) assert.ok(!validLayers(bad), JSON.stringify(bad));

    const params = { encodings: qhf.map((e) => ({ ...e, active: true })) };
    const set = [];
    const sender = { getParameters: () => structuredClone(params), setParameters: async (p) => { set.push(p.encodings.map((e) => e.active)); params.encodings = p.encodings; } };
    const keyframes = [];
    const link = { sessionId: 's1', pushes: new Map([['cam', { transceiver: { sender } }]]) };
    const d = new Dynacast({ link: () => link, keyframe: async (n) => { keyframes.push(n); } });
    assert.ok(d.apply(ok));
    assert.ok(!d.apply({ ...ok, session_id: 'old' }), 'another session\'s track');
    assert.ok(!d.apply({ ...ok, max_rid: 'z' }));
    await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(set, [[true, false, false]]);
    assert.deepEqual(keyframes, [], 'turning off asks no keyframe');
    d.apply({ ...ok, max_rid: 'q' });
    await new Promise((r) => setTimeout(r, 10));
    assert.equal(set.length, 1, 'no change, no setParameters');
    d.apply({ ...ok, max_rid: 'f' });
    await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(set[1], [true, true, true]);
    assert.deepEqual(keyframes, ['cam'], 'a layer back on asks a keyframe');
    assert.deepEqual(d.state().cam.active, { q: true, h: true, f: true });
    assert.equal(d.ignored, 2);
  });
});

describe('a codec everyone decodes', () => {
  it('keeps the pick while everyone decodes it, else the first fallback all decode', () => {
    const all = ['vp8', 'vp9', 'h264', 'av1'];
    assert.equal(chooseCodec('H264', [all, all]), 'H264');
    assert.equal(chooseCodec('H264', [all, ['vp8']]), 'VP8');
    assert.equal(chooseCodec('H264', [all, null, undefined]), 'H264', 'not reported yet: decodes all');
    assert.equal(chooseCodec('VP9', [['vp8', 'h264']]), 'VP8');
    assert.equal(chooseCodec('VP9', [['h264']]), 'H264');
    assert.equal(chooseCodec('VP8', [['h264']], { sendable: ['vp8', 'h264'] }), 'H264');
    assert.equal(chooseCodec('H264', [['vp9']], { simulcast: true }), 'H264', 'simulcast: no VP9 fallback; nothing fits keeps the pick');
    assert.equal(chooseCodec('H264', [['vp9']]), 'VP9');
    assert.equal(chooseCodec('H264', [[]]), 'H264', 'nothing fits: the pick');
    assert.equal(chooseCodec('H264', []), 'H264');
    assert.deepEqual(FALLBACK, ['VP8', 'H264', 'VP9']);
    assert.equal(chooseCodec('VP8', [['av1']]), 'VP8', 'no AV1 fallback');
  });

  it('reports plain names of media codecs only, bounded', () => {
    assert.equal(codecName('video/H264'), 'h264');
    assert.equal(codecName('video/rtx'), null);
    assert.equal(codecName('video/flexfec-03'), null);
    assert.equal(codecName('audio/opus'), null);
    assert.equal(codecName('video/' + 'x'.repeat(17)), null);
    const caps = ['video/VP8', 'video/rtx', 'video/H264', 'video/H264', 'video/VP9', 'video/red', 'video/ulpfec', 'video/AV1'].map((mimeType) => ({ mimeType }));
    assert.deepEqual(codecNames(caps), ['vp8', 'h264', 'vp9', 'av1']);
    assert.equal(codecNames(Array.from({ length: 40 }, (_, i) => ({ mimeType: `video/c${i}` }))).length, 16);
    assert.deepEqual([...receiveFilter('VP8, h264,bad name,')], ['vp8', 'h264']);
    assert.equal(receiveFilter(null), null);
  });

  it('a peer\'s announced send codec this page lacks is "unsupported" until RTP says otherwise', () => {
    const link = new EventTarget();
    const sent = [];
    link.send = (m) => { sent.push(m); return true; };
    const c = new CodecChoice({ link, me: 1, codec: 'VP8', sfu: null });
    c.mine = ['vp8'];
    link.dispatchEvent(new CustomEvent('welcome', { detail: { snapshot: { participants: [{ id: 2, codecs: ['vp8', 'h264'], sending: 'h264' }] } } }));
    assert.equal(sent.length, 1);
    assert.equal(sent[0].type, 'codecs');
    const caps = [{ mimeType: 'video/VP8' }];
    const noRtp = { codec: null, negotiatedCodecs: ['video/VP8', 'video/rtx'] };
    assert.deepEqual(c.support(2, noRtp, caps), { supported: false, name: 'H264' });
    assert.deepEqual(c.support(2, { ...noRtp, codec: 'video/VP8' }, caps), { supported: true, name: 'VP8' }, 'RTP decides');
    assert.deepEqual(c.support(3, noRtp, caps), { supported: null, name: null }, 'unknown sender');
    link.dispatchEvent(new CustomEvent('entry', { detail: { type: 'codecs', id: 2, video: ['vp8'], sending: 'vp8' } }));
    assert.deepEqual(c.support(2, noRtp, caps), { supported: null, name: null });
    link.dispatchEvent(new CustomEvent('entry', { detail: { type: 'codecs', id: 2, video: ['vp8'], sending: 'BAD name' } }));
    assert.equal(c.state().sending[2], undefined, 'a malformed name is ignored');
  });

  it('offers the pick first, then the fallbacks, H.264 packetization mode 1 first', () => {
    const caps = [
      { mimeType: 'video/VP8' }, { mimeType: 'video/rtx' },
      { mimeType: 'video/H264', sdpFmtpLine: 'packetization-mode=0' }, { mimeType: 'video/H264', sdpFmtpLine: 'packetization-mode=1' },
      { mimeType: 'video/VP9' }, { mimeType: 'video/red' },
    ];
    const order = sendPreferences(caps, 'H264').map((c) => `${c.mimeType}${c.sdpFmtpLine ? ` ${c.sdpFmtpLine}` : ''}`);
    assert.deepEqual(order, ['video/H264 packetization-mode=1', 'video/H264 packetization-mode=0', 'video/VP8', 'video/VP9', 'video/rtx', 'video/red']);
    assert.equal(negotiatedCodec(caps, 'H264').sdpFmtpLine, 'packetization-mode=1');
    assert.equal(negotiatedCodec(caps, 'AV1'), null);
  });
});
