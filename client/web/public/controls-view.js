// The call's control bar: microphone, camera, screen share, hand, the stage
// layout, and leave. DOM only: each button shows the model's state and calls
// an intent of the controller.
//
// Every toggle shows its state three ways, so none can be read as the
// other: an icon of the current state (a struck-through microphone while
// muted), a label naming the action the button takes ("Unmute"), and a
// pressed state (`aria-pressed="true"` and a filled button) while the
// non-default state holds: muted, video stopped, sharing, hand raised,
// speaker view. `data-state` carries the same as a word for tests.

import { setIcon } from './icons.js';
import { isRecorded } from './call-model.js';

const $ = (id) => document.getElementById(id);

/**
 * What each button shows for a state: `{icon, label, aria, pressed, state, title}`.
 * Exported for the unit tests: pure, no DOM.
 */
export function controlFaces(state) {
  const c = state.controls;
  const me = state.me !== null ? state.participants.get(state.me) : null;
  const hand = Boolean(me?.hand);
  const micOff = !c.mic.on;
  const camOff = !c.cam.on;
  const speaker = state.layout === 'speaker';
  return {
    'toggle-record': recordFace(state, Boolean(me?.host)),
    'toggle-mic': !c.mic.available || c.receiveOnly
      ? { icon: 'mic-off', label: c.receiveOnly ? 'Not sending' : 'No microphone', aria: c.receiveOnly ? 'Not sending: microphone' : 'No microphone', pressed: true, state: 'none', disabled: true }
      : {
        icon: micOff ? 'mic-off' : 'mic', label: micOff ? 'Unmute' : 'Mute', aria: micOff ? 'Unmute microphone' : 'Mute microphone',
        pressed: micOff, state: micOff ? 'muted' : 'on', title: micOff ? 'Your microphone is muted' : 'Your microphone is on',
      },
    'toggle-cam': !c.cam.available || c.receiveOnly
      ? { icon: 'cam-off', label: c.receiveOnly ? 'Not sending' : 'No camera', aria: c.receiveOnly ? 'Not sending: camera' : 'No camera', pressed: true, state: 'none', disabled: true }
      : {
        icon: camOff ? 'cam-off' : 'cam', label: camOff ? 'Start video' : 'Stop video', aria: camOff ? 'Start video' : 'Stop video',
        pressed: camOff, state: camOff ? 'off' : 'on', title: camOff ? 'Your camera is off' : 'Your camera is on',
      },
    'toggle-screen': {
      icon: c.screen.on ? 'screen-off' : 'screen', label: c.screen.on ? 'Stop sharing' : 'Share screen',
      aria: c.screen.on ? 'Stop sharing screen' : 'Share screen', pressed: c.screen.on, state: c.screen.on ? 'sharing' : 'off',
      title: c.screen.on ? 'You are sharing your screen' : 'Your screen is not shared', disabled: c.receiveOnly,
    },
    'toggle-hand': {
      icon: 'hand', label: hand ? 'Lower hand' : 'Raise hand', aria: hand ? 'Lower hand' : 'Raise hand',
      pressed: hand, state: hand ? 'raised' : 'down', title: hand ? 'Your hand is raised' : 'Your hand is down',
    },
    'toggle-layout': {
      icon: speaker ? 'grid' : 'speaker', label: speaker ? 'Grid view' : 'Speaker view', aria: speaker ? 'Grid view' : 'Speaker view',
      pressed: speaker, state: speaker ? 'speaker' : 'grid', title: speaker ? 'Speaker view: one person large' : 'Grid view: everyone the same size',
    },
  };
}

/**
 * The host's Record button (docs/recording.md): hidden for everyone else (the coordinator
 * refuses their `record` anyway), disabled when the server cannot record.
 */
function recordFace(state, host) {
  const r = state.recording ?? { pending: null, unavailable: false };
  const recorded = isRecorded(state);
  if (!host) return { icon: 'record', label: 'Record', aria: 'Record (hosts only)', pressed: recorded, state: recorded ? 'recording' : 'off', hidden: true, disabled: true };
  if (r.unavailable && !recorded) {
    return { icon: 'record', label: 'Record', aria: 'Record: not set up on this server', pressed: false, state: 'unavailable', disabled: true, title: 'This server is not set up to record calls' };
  }
  if (r.pending === 'stop') {
    return { icon: 'record-stop', label: 'Stopping…', aria: 'Stopping… the recording', pressed: true, state: 'stopping', disabled: true, title: 'The recorder is finishing its files' };
  }
  if (r.pending === 'start' && !recorded) {
    return { icon: 'record-stop', label: 'Starting…', aria: 'Starting… the recording (press to cancel)', pressed: true, state: 'starting', title: 'The recorder is joining the call; press to cancel' };
  }
  return recorded
    ? { icon: 'record-stop', label: 'Stop recording', aria: 'Stop recording', pressed: true, state: 'recording', title: 'This call is being recorded: press to stop' }
    : { icon: 'record', label: 'Record', aria: 'Record this call', pressed: false, state: 'off', title: 'Record this call: a recorder joins as a visible member and stores the media on the server' };
}

/** Makes the Record button if the page has none (index.html is stamped by the build). */
function recordButton() {
  if ($('toggle-record')) return;
  const anchor = $('toggle-layout') ?? $('leave');
  if (!anchor) return;
  const b = document.createElement('button');
  b.id = 'toggle-record';
  b.type = 'button';
  b.className = 'control';
  b.hidden = true;
  b.setAttribute('aria-pressed', 'false');
  const label = document.createElement('span');
  label.className = 'label';
  label.textContent = 'Record';
  b.append(label);
  anchor.before(b);
}

export class ControlsView {
  /** @param {{intents: {toggleMic, toggleCam, toggleScreen, toggleHand, setLayout, leave}}} o */
  constructor({ intents }) {
    this.intents = intents;
    this.state = null;
    recordButton();
    const on = (id, fn) => $(id)?.addEventListener('click', fn);
    on('toggle-record', () => intents.toggleRecording?.());
    on('toggle-mic', () => intents.toggleMic());
    on('toggle-cam', () => intents.toggleCam());
    on('toggle-screen', () => intents.toggleScreen());
    on('toggle-hand', () => intents.toggleHand());
    on('toggle-layout', () => intents.setLayout(this.state?.layout === 'speaker' ? 'grid' : 'speaker'));
    on('leave', () => intents.leave());
    if ($('leave')) setIcon($('leave'), 'leave');
  }

  render(state, changed) {
    this.state = state;
    if (!changed.has('controls') && !changed.has('people') && !changed.has('recording')) return;
    for (const [id, face] of Object.entries(controlFaces(state))) {
      const b = $(id);
      if (!b) continue;
      setIcon(b, face.icon);
      const label = b.querySelector('.label');
      if (label) label.textContent = face.label;
      else b.textContent = face.label;
      b.setAttribute('aria-label', face.aria);
      b.setAttribute('aria-pressed', String(face.pressed));
      b.dataset.state = face.state;
      b.title = face.title ?? face.label;
      b.disabled = Boolean(face.disabled);
      if ('hidden' in face || b.id === 'toggle-record') b.hidden = Boolean(face.hidden);
    }
  }
}
