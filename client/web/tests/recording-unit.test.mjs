// The host's Record button as the model drives it (no browser): hidden for non-hosts,
// Starting… until a recorder joins, Stop recording while one is in the room, back to Record
// when it leaves, a refusal shown and cleared, disabled when the server cannot record (from
// the start when its client-config.json says so).

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { initialState, isRecorded, reduce } from '../public/call-model.js';
import { controlFaces } from '../public/controls-view.js';

function call({ host, recordingAvailable }) {
  const s = initialState({ recordingAvailable });
  reduce(s, { type: 'welcome', me: 1, participants: [{ id: 1, name: 'me', host, tracks: [] }] });
  return s;
}

const face = (s) => controlFaces(s)['toggle-record'];

describe('record button', () => {
  it('is hidden for a non-host', () => {
    const f = face(call({ host: false }));
    assert.equal(f.hidden, true);
    assert.equal(f.disabled, true);
  });

  it('goes Record → Starting… → Stop recording → Stopping… → Record', () => {
    const s = call({ host: true });
    let f = face(s);
    assert.deepEqual([f.label, f.pressed, f.state, Boolean(f.hidden), Boolean(f.disabled)], ['Record', false, 'off', false, false]);
    reduce(s, { type: 'recording/request', action: 'start' });
    f = face(s);
    assert.deepEqual([f.label, f.pressed, f.state, Boolean(f.disabled)], ['Starting…', true, 'starting', false]);
    let changed = reduce(s, { type: 'entry', entry: { type: 'joined', id: 2, name: 'Recorder', host: false, recorder: true } });
    assert.ok(changed.has('controls'));
    assert.equal(s.recording.pending, null);
    assert.ok(isRecorded(s));
    f = face(s);
    assert.deepEqual([f.label, f.pressed, f.state, f.icon], ['Stop recording', true, 'recording', 'record-stop']);
    reduce(s, { type: 'recording/request', action: 'stop' });
    f = face(s);
    assert.deepEqual([f.label, f.state, f.disabled], ['Stopping…', 'stopping', true]);
    changed = reduce(s, { type: 'entry', entry: { type: 'left', id: 2, reason: 'left' } });
    assert.ok(changed.has('controls'));
    f = face(s);
    assert.deepEqual([f.label, f.pressed, f.state], ['Record', false, 'off']);
    for (const x of Object.values(controlFaces(s))) assert.ok(x.aria.includes(x.label), `${x.aria} / ${x.label}`);
  });

  it('a stop while starting has nothing to wait for; a refusal is kept until the next request', () => {
    const s = call({ host: true });
    reduce(s, { type: 'recording/request', action: 'start' });
    reduce(s, { type: 'recording/request', action: 'stop' });
    assert.equal(s.recording.pending, null);
    assert.equal(face(s).label, 'Record');
    reduce(s, { type: 'recording/error', error: 'Recording: the recorder did not join: exit status: 1' });
    assert.match(s.recording.error, /did not join/);
    reduce(s, { type: 'recording/request', action: 'start' });
    assert.equal(s.recording.error, null);
  });

  it('is disabled once the server said it cannot record', () => {
    const s = call({ host: true });
    reduce(s, { type: 'recording/request', action: 'start' });
    reduce(s, { type: 'recording/error', error: 'Recording: not set up', unavailable: true });
    const f = face(s);
    assert.deepEqual([f.state, f.disabled, Boolean(f.hidden)], ['unavailable', true, false]);
  });

  it('is disabled from the start, with the reason, when the server says it has no recorder', () => {
    const f = face(call({ host: true, recordingAvailable: false }));
    assert.deepEqual([f.label, f.state, f.disabled, Boolean(f.hidden)], ['Record', 'unavailable', true, false]);
    assert.match(f.title, /not set up to record/);
    assert.match(f.aria, /not set up/);
    // A server that has one, or did not say (older server, config not fetched): offered.
    for (const recordingAvailable of [true, null, undefined]) {
      const g = face(call({ host: true, recordingAvailable }));
      assert.deepEqual([g.state, Boolean(g.disabled)], ['off', false], `recordingAvailable ${recordingAvailable}`);
    }
    // Still hidden for a non-host.
    assert.equal(face(call({ host: false, recordingAvailable: false })).hidden, true);
  });
});
