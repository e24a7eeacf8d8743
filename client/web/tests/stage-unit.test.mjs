// Unit tests (Node, no browser) of the stage's pure parts: the layout
// arithmetic (stage-layout.js), the model's reducer and stage order
// (call-model.js), and the control faces (controls-view.js).

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { gridFor, speakerFor, ASPECT, GAP } from '../public/stage-layout.js';
import { CallModel, initialState, reduce, stageOrder, tileKey } from '../public/call-model.js';
import { controlFaces } from '../public/controls-view.js';
import { TileStatus } from '../public/tile-status.js';
import { TileWatcher } from '../public/tile-watch.js';

describe('stage layout', () => {
  const W = 936;
  const H = 615; // the stage of a 1280x720 page

  it('one full size, two side by side, three and four in 2x2, then 3 columns', () => {
    const shapes = [1, 2, 3, 4, 5, 6, 7, 9].map((n) => {
      const g = gridFor(n, W, H);
      return `${n}:${g.cols}x${g.rows}`;
    });
    assert.deepEqual(shapes, ['1:1x1', '2:2x1', '3:2x2', '4:2x2', '5:3x2', '6:3x2', '7:3x3', '9:3x3']);
  });

  it('tiles are 16:9, fit the stage, and fill it in one dimension', () => {
    for (const [w, h] of [[936, 615], [1600, 700], [500, 900], [1200, 1200]]) {
      for (let n = 1; n <= 12; n += 1) {
        const g = gridFor(n, w, h);
        assert.ok(Math.abs(g.tileWidth / g.tileHeight - ASPECT) < 1e-9);
        const usedW = g.cols * g.tileWidth + (g.cols - 1) * GAP;
        const usedH = g.rows * g.tileHeight + (g.rows - 1) * GAP;
        assert.ok(usedW <= w && usedH <= h + 1e-9, `${n} on ${w}x${h}: ${usedW}x${usedH}`);
        assert.ok(w - usedW <= g.cols || h - usedH <= g.rows, `${n} on ${w}x${h} leaves room in both dimensions`);
        assert.ok(g.cols * g.rows >= n);
      }
    }
  });

  it('no larger tile exists among the allowed grids (landscape: rows ≤ columns)', () => {
    for (let n = 1; n <= 12; n += 1) {
      const g = gridFor(n, W, H);
      for (let cols = 1; cols <= n; cols += 1) {
        const rows = Math.ceil(n / cols);
        if (rows > cols) continue;
        const w = Math.floor(Math.min((W - GAP * (cols - 1)) / cols, ((H - GAP * (rows - 1)) / rows) * ASPECT));
        assert.ok(w <= g.tileWidth, `${n}: ${cols}x${rows} would give ${w} > ${g.tileWidth}`);
      }
    }
  });

  it('a portrait stage may stack two', () => {
    assert.deepEqual([gridFor(2, 400, 800).cols, gridFor(2, 400, 800).rows], [1, 2]);
  });

  it('speaker view: one large tile, the rest in a strip under it', () => {
    const s = speakerFor(4, W, H);
    assert.equal(s.strip.count, 3);
    assert.ok(s.main.width > 3 * s.strip.width);
    assert.ok(s.main.height + GAP + s.strip.height <= H + 1e-9);
    assert.ok(3 * s.strip.width + 2 * GAP <= W);
    assert.deepEqual(speakerFor(1, W, H).strip.count, 0);
    // Many tiles: the strip tiles shrink to fit one row.
    const many = speakerFor(13, W, H);
    assert.ok(12 * many.strip.width + 11 * GAP <= W);
  });

  it('degenerate sizes give empty layouts, never NaN', () => {
    for (const g of [gridFor(0, W, H), gridFor(3, 0, H), gridFor(3, W, 0)]) assert.deepEqual(g, { cols: 0, rows: 0, tileWidth: 0, tileHeight: 0 });
    assert.equal(speakerFor(3, 0, 0).main.width, 0);
  });
});

describe('call model', () => {
  const welcome = (state) => reduce(state, {
    type: 'welcome', me: 1, locked: true,
    participants: [
      { id: 1, name: 'me', host: true, tracks: [] },
      { id: 2, name: 'Ben', hand_raised: true, tracks: [{ track_name: 't2', kind: 'video', enabled: true }] },
    ],
  });

  it('welcome and log entries', () => {
    const s = initialState({ room: 'r', name: 'me' });
    const changed = welcome(s);
    assert.ok(changed.has('people') && changed.has('host'));
    assert.equal(s.participants.get(2).hand, true);
    assert.equal(s.locked, true);
    reduce(s, { type: 'entry', entry: { type: 'joined', id: 3, name: 'Cat' } });
    reduce(s, { type: 'entry', entry: { type: 'published', id: 3, track: { track_name: 't3', kind: 'audio' } } });
    reduce(s, { type: 'entry', entry: { type: 'hand', id: 2, raised: false } });
    reduce(s, { type: 'entry', entry: { type: 'track_enabled', id: 2, track_name: 't2', enabled: false } });
    reduce(s, { type: 'entry', entry: { type: 'locked', locked: false } });
    assert.deepEqual([...s.participants.keys()], [1, 2, 3]);
    assert.equal(s.participants.get(3).tracks.get('t3').kind, 'audio');
    assert.equal(s.participants.get(2).hand, false);
    assert.equal(s.participants.get(2).tracks.get('t2').enabled, false);
    assert.equal(s.locked, false);
    reduce(s, { type: 'entry', entry: { type: 'left', id: 3 } });
    assert.deepEqual([...s.participants.keys()], [1, 2]);
    assert.equal(reduce(s, { type: 'no-such-action' }).size, 0);
  });

  it('the active speaker is outlined while named; the speaker view keeps the last one', () => {
    const s = initialState();
    welcome(s);
    for (const key of ['local', '2', tileKey(2, 'screenshare')]) {
      reduce(s, { type: 'tile/add', key, local: key === 'local', participantId: key === 'local' ? null : 2, kind: key.endsWith(':screen') ? 'screenshare' : 'video' });
    }
    reduce(s, { type: 'tile/add', key: '3', participantId: 3 });
    assert.equal(s.tiles.get('2:screen').camOn, true, 'a new tile shows its video unless told the camera is off');
    assert.deepEqual(stageOrder(s), { order: ['2', '2:screen', '3', 'local'], main: null });
    reduce(s, { type: 'layout', layout: 'speaker' });
    // A shared screen is the large tile unless someone pins another.
    assert.equal(stageOrder(s).main, '2:screen');
    reduce(s, { type: 'tile/remove', key: '2:screen' });
    assert.equal(stageOrder(s).main, '2');
    assert.ok(reduce(s, { type: 'active-speaker', id: 3 }).has('stage'));
    assert.equal(stageOrder(s).main, '3');
    reduce(s, { type: 'active-speaker', id: null });
    assert.equal(s.activeSpeaker, null);
    assert.equal(stageOrder(s).main, '3', 'silence keeps the last speaker large');
    reduce(s, { type: 'pin', key: '2' });
    assert.equal(stageOrder(s).main, '2');
    reduce(s, { type: 'pin', key: 'nope' });
    assert.equal(s.pinned, null);
    reduce(s, { type: 'entry', entry: { type: 'left', id: 3 } });
    assert.equal(s.lastSpeaker, null);
    assert.equal(reduce(s, { type: 'layout', layout: 'bogus' }).size, 0);
  });

  it('dispatch emits change with the changed parts', () => {
    const m = new CallModel({ room: 'r', name: 'n' });
    const seen = [];
    m.addEventListener('change', (ev) => seen.push([...ev.detail.changed].sort().join(',')));
    m.dispatch({ type: 'banner', text: 'hi' });
    m.dispatch({ type: 'active-speaker', id: null }); // no change: no event
    m.dispatch({ type: 'ended', why: 'left' });
    assert.deepEqual(seen, ['banner', 'banner,screen']);
    assert.equal(m.state.screen, 'left');
  });
});

describe('control faces', () => {
  const state = () => {
    const s = initialState();
    reduce(s, { type: 'welcome', me: 1, participants: [{ id: 1, name: 'me', tracks: [] }] });
    return s;
  };

  it('each toggle has an icon of its state, a label of its action and a pressed state', () => {
    const s = state();
    let f = controlFaces(s);
    assert.deepEqual([f['toggle-mic'].icon, f['toggle-mic'].label, f['toggle-mic'].pressed], ['mic', 'Mute', false]);
    assert.deepEqual([f['toggle-cam'].icon, f['toggle-cam'].label, f['toggle-cam'].pressed], ['cam', 'Stop video', false]);
    assert.deepEqual([f['toggle-screen'].label, f['toggle-screen'].pressed], ['Share screen', false]);
    assert.deepEqual([f['toggle-hand'].label, f['toggle-hand'].pressed], ['Raise hand', false]);
    assert.deepEqual([f['toggle-layout'].label, f['toggle-layout'].pressed], ['Speaker view', false]);
    reduce(s, { type: 'controls', mic: { on: false }, cam: { on: false }, screen: { on: true } });
    reduce(s, { type: 'entry', entry: { type: 'hand', id: 1, raised: true } });
    reduce(s, { type: 'layout', layout: 'speaker' });
    f = controlFaces(s);
    assert.deepEqual([f['toggle-mic'].icon, f['toggle-mic'].label, f['toggle-mic'].pressed, f['toggle-mic'].state], ['mic-off', 'Unmute', true, 'muted']);
    assert.deepEqual([f['toggle-cam'].icon, f['toggle-cam'].label, f['toggle-cam'].pressed], ['cam-off', 'Start video', true]);
    assert.deepEqual([f['toggle-screen'].label, f['toggle-screen'].pressed], ['Stop sharing', true]);
    assert.deepEqual([f['toggle-hand'].label, f['toggle-hand'].pressed], ['Lower hand', true]);
    assert.deepEqual([f['toggle-layout'].label, f['toggle-layout'].pressed], ['Grid view', true]);
    for (const face of Object.values(f)) assert.ok(face.aria.includes(face.label), `accessible name "${face.aria}" contains the label "${face.label}"`);
  });

  it('a missing device is a disabled button that says so', () => {
    const s = state();
    reduce(s, { type: 'controls', mic: { available: false } });
    const f = controlFaces(s);
    assert.deepEqual([f['toggle-mic'].label, f['toggle-mic'].disabled], ['No microphone', true]);
  });
});

describe('tile status recovers', () => {
  const track = (o) => ({ mid: '1', packetsReceived: 0, framesDecoded: 0, workerFrames: 0, decrypted: 0, dropped: 0, ...o });
  const input = (video) => ({ video, audio: null, flags: { decrypt: true, mls: true }, member: true, mediaState: 'connected', paused: false, camOn: true, codec: { supported: true } });

  it('no key, then decoding again: green, and a later key wait starts from zero', () => {
    const ts = new TileStatus();
    let v = track({ packetsReceived: 10, workerFrames: 10, dropped: 10, lastDrop: 'no-key' });
    ts.update('k', input(v), 0);
    v = track({ packetsReceived: 20, workerFrames: 20, dropped: 20, lastDrop: 'no-key' });
    assert.equal(ts.update('k', input(v), 6000).state, 'no key');
    v = track({ packetsReceived: 30, workerFrames: 30, dropped: 20, decrypted: 10, framesDecoded: 8, lastDrop: 'no-key' });
    const r = ts.update('k', input(v), 7000);
    assert.equal(r.state, 'decoding');
    assert.equal(r.media[1], 'ok');
    v = track({ packetsReceived: 40, workerFrames: 40, dropped: 30, decrypted: 10, framesDecoded: 8, lastDrop: 'no-key' });
    assert.equal(ts.update('k', input(v), 8000).state, 'waiting for key', 'not "no key" at once');
  });

  it('paused, then shown again: decoding', () => {
    const ts = new TileStatus();
    const v1 = track({ packetsReceived: 10, framesDecoded: 5, decrypted: 5, workerFrames: 5 });
    assert.equal(ts.update('k', { ...input(v1), paused: true }, 0).state, 'paused');
    const v2 = track({ packetsReceived: 20, framesDecoded: 10, decrypted: 10, workerFrames: 10 });
    assert.equal(ts.update('k', input(v2), 1000).state, 'decoding');
  });
});

describe('tile watcher (the view side of the layer choice)', () => {
  it('reports size, visibility, source aspect and page visibility; nothing after unwatch', () => {
    const observers = {};
    class FakeObserver {
      constructor(cb) { this.cb = cb; this.targets = new Set(); }
      observe(t) { this.targets.add(t); }
      unobserve(t) { this.targets.delete(t); }
      disconnect() { this.targets.clear(); }
    }
    const saved = [globalThis.ResizeObserver, globalThis.IntersectionObserver];
    globalThis.ResizeObserver = class extends FakeObserver { constructor(cb) { super(cb); observers.resize = this; } };
    globalThis.IntersectionObserver = class extends FakeObserver { constructor(cb) { super(cb); observers.intersect = this; } };
    try {
      const listeners = {};
      const doc = { visibilityState: 'visible', addEventListener: (t, f) => { listeners[t] = f; }, removeEventListener: (t) => { delete listeners[t]; } };
      const reports = [];
      const hidden = [];
      const w = new TileWatcher({ report: (k, g) => reports.push([k, g]), pageHidden: (h) => hidden.push(h), doc });
      const videoListeners = {};
      const video = {
        videoWidth: 640, videoHeight: 480, getBoundingClientRect: () => ({ width: 464, height: 261 }),
        addEventListener: (t, f) => { videoListeners[t] = f; }, removeEventListener: (t) => { delete videoListeners[t]; },
      };
      w.watch('7', video);
      assert.deepEqual(reports.at(-1), ['7', { width: 464, height: 261, visible: true, aspect: 4 / 3, dpr: 1 }]);
      observers.resize.cb([{ target: video, contentRect: { width: 861, height: 484 } }]);
      assert.deepEqual(reports.at(-1)[1], { width: 861, height: 484, aspect: 4 / 3, dpr: 1 });
      observers.intersect.cb([{ target: video, isIntersecting: false }]);
      assert.equal(reports.at(-1)[1].visible, false);
      video.videoWidth = 1280;
      video.videoHeight = 720;
      videoListeners.resize();
      assert.equal(reports.at(-1)[1].aspect, 16 / 9);
      doc.visibilityState = 'hidden';
      listeners.visibilitychange();
      assert.deepEqual(hidden, [true]);
      const n = reports.length;
      w.unwatch('7');
      observers.resize.cb([{ target: video, contentRect: { width: 1, height: 1 } }]);
      assert.equal(reports.length, n, 'an unwatched video reports nothing');
      assert.equal(observers.resize.targets.size, 0);
      w.close();
      assert.equal(listeners.visibilitychange, undefined);
    } finally {
      [globalThis.ResizeObserver, globalThis.IntersectionObserver] = saved;
    }
  });
});
