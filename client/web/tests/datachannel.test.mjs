// Cloudflare-compatible data channels through the coordinator's /sfu proxy, as an app built
// on Cloudflare Realtime's `datachannels/new` uses them: Ann's page opens an SFU session of
// its own (an RTCPeerConnection with a placeholder channel, so the SDP has m=application),
// publishes "chat" (`location: local`) and opens it with `negotiated: true` and the id the
// SFU returned; Ben's page subscribes to it (`location: remote`, Ann's session) the same
// way. Every message Ann sends reaches Ben, in order (text and binary); an oversize one does
// not; the proxy refuses a subscription to a session outside the room; closing Ann's channel
// closes Ben's.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { browserSuite, joinPage, waitFor } from './harness.mjs';

/** In the page: a data-only SFU session of this participant, through the proxy. */
async function openDataSession(page) {
  return page.evaluate(async () => {
    const token = window.satsuma.call.link.resumeToken;
    const api = async (method, path, body) => {
      const r = await fetch(`/sfu${path}`, {
        method,
        headers: { Authorization: `Bearer ${token}` },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      const json = await r.json().catch(() => null);
      return { status: r.status, json };
    };
    const pc = new RTCPeerConnection();
    pc.createDataChannel('placeholder');
    await pc.setLocalDescription(await pc.createOffer());
    const created = await api('POST', '/sessions/new', { sessionDescription: { type: 'offer', sdp: pc.localDescription.sdp } });
    if (created.status !== 201) throw new Error(`sessions/new: ${created.status} ${JSON.stringify(created.json)}`);
    await pc.setRemoteDescription(created.json.sessionDescription);
    const received = [];
    window.dataTest = { pc, api, sessionId: created.json.sessionId, received, channel: null, closed: false };
    return created.json.sessionId;
  });
}

/** In the page: `datachannels/new` with `entry`, then the negotiated channel; its state. */
async function openChannel(page, entry) {
  return page.evaluate(async (entry) => {
    const t = window.dataTest;
    const r = await t.api('POST', `/sessions/${t.sessionId}/datachannels/new`, { dataChannels: [entry] });
    if (r.status !== 200 || r.json.dataChannels[0].errorCode) throw new Error(`datachannels/new: ${r.status} ${JSON.stringify(r.json)}`);
    const id = r.json.dataChannels[0].id;
    const ch = t.pc.createDataChannel(entry.dataChannelName, { negotiated: true, id });
    ch.binaryType = 'arraybuffer';
    ch.onmessage = (e) => t.received.push(typeof e.data === 'string' ? e.data : { binary: [...new Uint8Array(e.data)] });
    ch.onclose = () => { t.closed = true; };
    t.channel = ch;
    await new Promise((resolve, reject) => {
      if (ch.readyState === 'open') resolve();
      ch.onopen = () => resolve();
      setTimeout(() => reject(new Error(`channel ${id} did not open in 20 s (pc ${t.pc.connectionState})`)), 20000);
    });
    return { id, readyState: ch.readyState };
  }, entry);
}

describe('data channels (Cloudflare datachannels/new) through the proxy', { timeout: 120000 }, () => {
  const room = `dc-${Date.now()}`;
  const pages = {};
  const suite = browserSuite({ pages });
  const { check } = suite;

  it('a published channel reaches a subscriber in order; oversize messages are dropped; close ends it', check(async () => {
    pages.a = await joinPage(suite.browser, suite.servers.base, { room, name: 'Ann' });
    pages.b = await joinPage(suite.browser, suite.servers.base, { room, name: 'Ben' });
    const { a, b } = pages;
    const annSession = await openDataSession(a);
    await openDataSession(b);

    const pub = await openChannel(a, { location: 'local', dataChannelName: 'chat' });
    assert.equal(pub.id % 2, 1, 'the SFU hands out odd stream ids');
    const sub = await openChannel(b, { location: 'remote', sessionId: annSession, dataChannelName: 'chat' });
    assert.equal(sub.readyState, 'open');

    // The proxy only lets Ben subscribe to sessions of members of his room.
    const refused = await b.evaluate(async () => {
      const t = window.dataTest;
      return t.api('POST', `/sessions/${t.sessionId}/datachannels/new`, {
        dataChannels: [{ location: 'remote', sessionId: '00000000000000000000000000000000', dataChannelName: 'chat' }],
      });
    });
    assert.equal(refused.status, 403, JSON.stringify(refused.json));
    // And the SFU answers a per-channel error for a name Ann does not publish.
    const missing = await b.evaluate(async (sid) => {
      const t = window.dataTest;
      return t.api('POST', `/sessions/${t.sessionId}/datachannels/new`, {
        dataChannels: [{ location: 'remote', sessionId: sid, dataChannelName: 'nosuch' }],
      });
    }, annSession);
    assert.equal(missing.status, 200);
    assert.equal(missing.json.dataChannels[0].errorCode, 'not_found');

    // 30 text messages, one binary, one over the SFU's 16 KiB limit, then a marker.
    const N = 30;
    await a.evaluate((N) => {
      const ch = window.dataTest.channel;
      for (let i = 0; i < N; i++) ch.send(`message ${i}`);
      ch.send(new Uint8Array([0, 1, 2, 253, 254, 255]));
      ch.send('x'.repeat(20000));
      ch.send('done');
    }, N);
    await waitFor('Ben to receive the marker', async () => b.evaluate(() => window.dataTest.received.includes('done')), { timeout: 20000 });
    const received = await b.evaluate(() => window.dataTest.received);
    const want = [...Array.from({ length: N }, (_, i) => `message ${i}`), { binary: [0, 1, 2, 253, 254, 255] }, 'done'];
    assert.deepEqual(received, want, 'every message, in order, without the oversize one');

    // GET lists the channels as active.
    const listed = await b.evaluate(async () => {
      const t = window.dataTest;
      return (await t.api('GET', `/sessions/${t.sessionId}`)).json;
    });
    assert.deepEqual(listed.dataChannels.map((c) => [c.location, c.dataChannelName, c.sessionId, c.id, c.status]),
      [['remote', 'chat', annSession, sub.id, 'active']]);

    // Ann closes her channel: the SFU closes Ben's.
    const closed = await a.evaluate(async (id) => {
      const t = window.dataTest;
      return t.api('PUT', `/sessions/${t.sessionId}/datachannels/close`, { dataChannels: [{ id }] });
    }, pub.id);
    assert.equal(closed.status, 200, JSON.stringify(closed.json));
    assert.equal(closed.json.dataChannels[0].id, pub.id);
    await waitFor('Ben\'s channel to close', async () => b.evaluate(() => window.dataTest.closed), { timeout: 15000 });
  }));
});
