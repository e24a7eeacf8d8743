// When a make-before-break move may close the old SFU link (media-move.js), from the two
// links' statistics: not before every track still arriving on the old link arrived on the
// new one and the new pushes have sent for MOVE_GRACE_MS; at the latest after
// MOVE_MAX_OVERLAP_MS.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { MOVE_GRACE_MS, MOVE_MAX_OVERLAP_MS, MoveOverlap } from '../public/media-move.js';

const pulls = (entries) => new Map(entries.map(([name, kind, mid]) => [name, { kind, mid }]));
const inbound = (kind, n) => (kind === 'audio'
  ? { type: 'inbound-rtp', kind, packetsReceived: n, framesDecoded: 0 }
  : { type: 'inbound-rtp', kind, packetsReceived: n * 10, framesDecoded: n });
const outbound = (mid, packetsSent) => ({ type: 'outbound-rtp', mid, packetsSent });

// The old link pulls Bob's audio (mid 2) and video (mid 3); the new one pulls them as 5 and 6
// and pushes this page's audio and video as 0 and 1.
const oldPulls = pulls([['bob-audio', 'audio', '2'], ['bob-video', 'video', '3']]);
const newPulls = pulls([['bob-audio', 'audio', '5'], ['bob-video', 'video', '6']]);
const oldAt = (n) => ({ 2: inbound('audio', 50 * n), 3: inbound('video', 20 * n) });

describe('make-before-break move', () => {
  it('keeps the old link until the new one receives what the old still delivered and has sent for the grace time', () => {
    const o = new MoveOverlap({ now: 0, oldPulls, oldTracks: oldAt(10) });
    const look = (now, newTracks) => o.observe({ now, oldTracks: oldAt(10 + now / 1000), newPulls, newTracks, pushedMids: ['0', '1'] });
    // Nothing on the new link yet.
    assert.equal(look(150, {}), false);
    // Sending, but Bob's video has not been decoded on the new link.
    const sending = { '0': outbound('0', 5), '1:h': outbound('1', 3), 5: inbound('audio', 4), 6: inbound('video', 0) };
    assert.equal(look(300, sending), false);
    // Everything arrives; still within the grace time since sending began (300 ms).
    const all = { ...sending, 6: inbound('video', 2) };
    assert.equal(look(600, all), false);
    assert.equal(look(300 + MOVE_GRACE_MS - 1, all), false);
    assert.equal(look(300 + MOVE_GRACE_MS, all), true);
    assert.equal(o.reason, 'delivered');
  });

  it('waits for every pushed track, and starts the grace time over when one stops', () => {
    const o = new MoveOverlap({ now: 0, oldPulls: new Map(), oldTracks: {} });
    const look = (now, tracks) => o.observe({ now, oldTracks: {}, newPulls: new Map(), newTracks: tracks, pushedMids: ['0', '1'] });
    assert.equal(look(100, { 0: outbound('0', 5) }), false); // video not sending yet
    const both = { 0: outbound('0', 9), 1: outbound('1', 9) };
    assert.equal(look(200, both), false);
    assert.equal(look(200 + MOVE_GRACE_MS - 1, { 0: outbound('0', 9) }), false); // video gone again
    assert.equal(look(200 + MOVE_GRACE_MS, both), false); // the grace time restarts here
    assert.equal(look(200 + 2 * MOVE_GRACE_MS, both), true);
  });

  it('does not wait for tracks that no longer arrive on the old link (a node that is down, a camera off)', () => {
    // The old link's counters do not move: nothing to wait for on the receiving side.
    const o = new MoveOverlap({ now: 0, oldPulls, oldTracks: oldAt(10) });
    const tracks = { 0: outbound('0', 1), 1: outbound('1', 1) };
    assert.equal(o.observe({ now: 100, oldTracks: oldAt(10), newPulls: new Map(), newTracks: tracks, pushedMids: ['0', '1'] }), false);
    assert.equal(o.observe({ now: 100 + MOVE_GRACE_MS, oldTracks: oldAt(10), newPulls: new Map(), newTracks: tracks, pushedMids: ['0', '1'] }), true);
  });

  it('a receive-only page closes the old link as soon as the new one receives', () => {
    const o = new MoveOverlap({ now: 0, oldPulls, oldTracks: oldAt(1) });
    const args = (now, newTracks) => ({ now, oldTracks: oldAt(2), newPulls, newTracks, pushedMids: [] });
    assert.equal(o.observe(args(100, { 5: inbound('audio', 1) })), false); // video not decoded yet
    assert.equal(o.observe(args(200, { 5: inbound('audio', 1), 6: inbound('video', 1) })), true);
  });

  it('gives up waiting after the longest overlap', () => {
    const o = new MoveOverlap({ now: 1000, oldPulls, oldTracks: oldAt(1) });
    const args = (now) => ({ now, oldTracks: oldAt(now / 1000), newPulls, newTracks: {}, pushedMids: ['0'] });
    assert.equal(o.observe(args(1000 + MOVE_MAX_OVERLAP_MS - 1)), false);
    assert.equal(o.observe(args(1000 + MOVE_MAX_OVERLAP_MS)), true);
    assert.equal(o.reason, 'timeout');
  });
});
