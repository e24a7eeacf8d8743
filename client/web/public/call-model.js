// The call's state and its reducer: what the page shows, as plain data.
//
// No DOM, no network, no media calls. The controller (call-controller.js)
// turns what the room link, the SFU link and the E2EE link report into
// actions and dispatches them here; the views (call-view.js,
// controls-view.js, stage-view.js) render the state on every `change` and
// send the user's intents back to the controller. A tile's MediaStream is the
// one media object the state carries: the controller fills it, a view shows
// it in a <video>.
//
// `reduce(state, action)` applies one action in place and returns the set of
// parts that changed ("people", "tiles", "stage", "controls", "banner",
// "link", "safety", "send", "screen", "host"), so a view re-renders only
// those.

/** The tile key of participant `id`'s track of `kind` (camera and audio share one). */
export function tileKey(id, kind) {
  return kind === 'screenshare' ? `${id}:screen` : String(id);
}

/** Layouts of the stage. */
export const LAYOUTS = ['grid', 'speaker'];

/**
 * A fresh state for a call in `room` as `name`. `recordingAvailable`: whether the server
 * said it can record (client-config.json; false: a host's Record shows as unavailable from
 * the start; null: unknown until the server refuses a `record`).
 */
export function initialState({ room = '', name = '', receiveOnly = false, recordingAvailable = null } = {}) {
  return {
    screen: 'lobby', // lobby | call | left
    room,
    name,
    me: null,
    // id -> {id, name, host, hand, speaking, tracks: Map(trackName -> track info)}
    participants: new Map(),
    locked: false,
    // The host grant of this page's join token (it may make invites).
    canInvite: false,
    // key -> {key, participantId (null: this page), kind, local, name, stream, conn, e2ee,
    // camOn (false: the "camera off" note covers the video), media (tracks added so far)}
    tiles: new Map(),
    // The participant the SFU names as the active speaker among this page's pulls, held
    // briefly through pauses (null: nobody speaks); outlined on the stage.
    activeSpeaker: null,
    // The last active speaker, kept through silence: the large tile of the speaker view.
    lastSpeaker: null,
    // Whether this page's own microphone hears speech (its local voice detector).
    selfSpeaking: false,
    layout: 'grid',
    // The tile shown large in the speaker view (null: the active speaker, else the first remote).
    pinned: null,
    controls: {
      mic: { available: true, on: true },
      cam: { available: true, on: true },
      screen: { on: false },
      hand: false,
      receiveOnly,
    },
    banner: null, // {text, level}
    link: null, // {text, level}
    safety: null, // the E2EE worker's status (with phase 'failed' while sending is impossible)
    send: null, // the send gate: {level, reason, advice, fatal}
    ended: null, // {why, detail}
    // End-to-end encrypted chat (docs/chat.md): messages in the room's log order, as the
    // E2EE worker decrypted them ({seq, from, name, fingerprint, text, mine}); entries it
    // could not decrypt (sent before this page joined the group) are only counted.
    chat: { messages: [], dropped: 0, unread: 0, open: false, error: null },
    // Host-controlled recording (docs/recording.md): whether a host's start or stop is under
    // way ('start' | 'stop' | null, until a recorder joins or leaves), the coordinator's last
    // refusal of this page's `record` (text), and whether it cannot record at all (its
    // client-config.json said so, or it refused a `record` with `recording_unavailable`).
    // Whether the room is being recorded is in the participants (`recorder`).
    recording: { pending: null, error: null, unavailable: recordingAvailable === false },
  };
}

/** Whether a recorder is in the room. */
export function isRecorded(state) {
  return [...state.participants.values()].some((p) => p.recorder);
}

/** Messages a page keeps (the oldest go first). */
export const CHAT_KEEP = 500;

function participantOf(p) {
  return {
    id: p.id,
    name: p.name,
    host: Boolean(p.host),
    // A recorder (its token grants `recorder`): every page shows "Recording by <name>".
    recorder: Boolean(p.recorder),
    hand: Boolean(p.hand_raised ?? p.hand),
    speaking: Boolean(p.speaking),
    tracks: new Map((p.tracks ?? []).map((t) => [t.track_name, t])),
  };
}

function removeTile(state, key, changed) {
  if (state.tiles.delete(key)) changed.add('tiles').add('stage');
  if (state.pinned === key) state.pinned = null;
}

/** Applies one room log entry (coordinator `entry`). */
function applyEntry(state, e, changed) {
  const p = state.participants.get(e.id);
  switch (e.type) {
    case 'joined':
      if (!p) state.participants.set(e.id, participantOf({ id: e.id, name: e.name, host: e.host, recorder: e.recorder }));
      changed.add('people');
      break;
    case 'left':
      state.participants.delete(e.id);
      if (state.activeSpeaker === e.id) state.activeSpeaker = null;
      if (state.lastSpeaker === e.id) state.lastSpeaker = null;
      changed.add('people').add('stage');
      break;
    case 'published':
      p?.tracks.set(e.track.track_name, e.track);
      changed.add('people');
      break;
    case 'unpublished':
      p?.tracks.delete(e.track_name);
      changed.add('people');
      break;
    case 'track_enabled': {
      const t = p?.tracks.get(e.track_name);
      if (t) t.enabled = e.enabled;
      changed.add('people');
      break;
    }
    case 'hand':
      if (p) p.hand = e.raised;
      changed.add('people').add('controls');
      break;
    case 'speaking':
      if (!p || p.speaking === e.speaking) break;
      p.speaking = e.speaking;
      changed.add('people');
      break;
    case 'host':
      if (p) p.host = true;
      changed.add('people').add('host');
      break;
    case 'locked':
      state.locked = Boolean(e.locked);
      changed.add('host');
      break;
    default:
      break;
  }
}

/**
 * Applies `action` to `state` (in place). Returns the set of changed parts.
 * Unknown actions change nothing.
 */
export function reduce(state, action) {
  const changed = new Set();
  const a = action ?? {};
  switch (a.type) {
    case 'screen':
      state.screen = a.screen;
      changed.add('screen');
      break;
    case 'welcome':
      state.me = a.me;
      state.participants.clear();
      for (const p of a.participants ?? []) state.participants.set(p.id, participantOf(p));
      state.locked = Boolean(a.locked);
      changed.add('people').add('host').add('controls').add('stage');
      break;
    case 'entry':
      applyEntry(state, a.entry, changed);
      break;
    case 'reset':
      // Resume impossible: this page comes back as a new participant.
      for (const key of [...state.tiles.keys()]) if (!key.startsWith('local')) removeTile(state, key, changed);
      state.participants.clear();
      state.me = null;
      state.activeSpeaker = null;
      state.lastSpeaker = null;
      changed.add('people').add('stage');
      break;
    case 'tile/add':
      if (!state.tiles.has(a.key)) {
        state.tiles.set(a.key, {
          key: a.key, participantId: a.participantId ?? null, kind: a.kind ?? 'video', local: Boolean(a.local),
          name: a.name ?? '', stream: a.stream ?? null, conn: null, e2ee: null, camOn: a.camOn ?? true, media: 0,
        });
        changed.add('tiles').add('stage');
      }
      break;
    case 'tile/remove':
      removeTile(state, a.key, changed);
      break;
    case 'tile/update': {
      const t = state.tiles.get(a.key);
      if (!t) break;
      // The stats refresh re-sends every tile's pills each second: only a real change is one
      // (each 'tiles' change costs the view a pass over every tile).
      for (const k of ['name', 'conn', 'e2ee', 'camOn']) {
        if (a[k] === undefined || sameValue(t[k], a[k])) continue;
        t[k] = a[k];
        changed.add('tiles');
      }
      break;
    }
    case 'tile/media': {
      // A track was added to the tile's stream (the view starts playback).
      const t = state.tiles.get(a.key);
      if (t) {
        t.media += 1;
        changed.add('tiles');
      }
      break;
    }
    case 'tiles/clear':
      for (const key of [...state.tiles.keys()]) removeTile(state, key, changed);
      break;
    case 'active-speaker':
      if (state.activeSpeaker !== (a.id ?? null)) {
        state.activeSpeaker = a.id ?? null;
        changed.add('stage');
      }
      if (state.activeSpeaker !== null && state.lastSpeaker !== state.activeSpeaker) {
        state.lastSpeaker = state.activeSpeaker;
        changed.add('stage');
      }
      break;
    case 'self-speaking':
      if (state.selfSpeaking !== Boolean(a.speaking)) {
        state.selfSpeaking = Boolean(a.speaking);
        changed.add('stage');
      }
      break;
    case 'layout':
      if (LAYOUTS.includes(a.layout) && state.layout !== a.layout) {
        state.layout = a.layout;
        changed.add('stage').add('controls');
      }
      break;
    case 'pin':
      state.pinned = a.key !== null && state.tiles.has(a.key) ? a.key : null;
      changed.add('stage');
      break;
    case 'controls': {
      const c = state.controls;
      for (const k of ['mic', 'cam']) if (a[k]) c[k] = { ...c[k], ...a[k] };
      if (a.screen) c.screen = { ...c.screen, ...a.screen };
      changed.add('controls');
      break;
    }
    case 'can-invite':
      state.canInvite = Boolean(a.canInvite);
      changed.add('host');
      break;
    case 'banner':
      state.banner = a.text ? { text: a.text, level: a.level ?? 'warn' } : null;
      changed.add('banner');
      break;
    case 'link':
      state.link = a.text ? { text: a.text, level: a.level ?? 'warn' } : null;
      changed.add('link');
      break;
    case 'safety':
      state.safety = a.status ?? null;
      changed.add('safety');
      break;
    case 'send':
      state.send = a.state ?? null;
      changed.add('send');
      break;
    case 'chat/event': {
      const e = a.event ?? {};
      if (e.type === 'message') {
        state.chat.messages.push({
          seq: e.seq, from: e.from, name: String(e.name ?? ''), fingerprint: String(e.fingerprint ?? ''),
          text: String(e.text ?? ''), mine: Boolean(e.mine),
        });
        if (state.chat.messages.length > CHAT_KEEP) state.chat.messages.shift();
        if (!state.chat.open && !e.mine) state.chat.unread += 1;
      } else if (e.type === 'dropped') state.chat.dropped += 1;
      changed.add('chat');
      break;
    }
    case 'chat/open':
      state.chat.open = Boolean(a.open);
      if (state.chat.open) state.chat.unread = 0;
      changed.add('chat');
      break;
    case 'chat/error':
      state.chat.error = a.error ?? null;
      changed.add('chat');
      break;
    case 'recording/request':
      // A stop with no recorder in the room (one still starting) has nothing to wait for.
      state.recording.pending = a.action === 'stop' && !isRecorded(state) ? null : a.action;
      state.recording.error = null;
      changed.add('controls').add('recording');
      break;
    case 'recording/error':
      state.recording.pending = null;
      state.recording.error = a.error ?? null;
      if (a.unavailable) state.recording.unavailable = true;
      changed.add('controls').add('recording');
      break;
    case 'ended':
      state.ended = { why: a.why, detail: a.detail ?? '' };
      state.screen = 'left';
      state.banner = null;
      changed.add('screen').add('banner');
      break;
    default:
      break;
  }
  // A start is done once a recorder is in the room, a stop once none is.
  const r = state.recording;
  if (r?.pending && changed.has('people') && (r.pending === 'start') === isRecorded(state)) {
    r.pending = null;
    changed.add('controls').add('recording');
  }
  return changed;
}

/** Who is on the stage and who is large: derived from the state (no DOM). */
export function stageOrder(state) {
  const keys = [...state.tiles.keys()];
  // Remote tiles first in join order, this page's own last (people look at the others).
  const remote = keys.filter((k) => !state.tiles.get(k).local);
  const local = keys.filter((k) => state.tiles.get(k).local);
  const all = [...remote, ...local];
  let main = null;
  if (state.layout === 'speaker') {
    const speaker = state.lastSpeaker !== null ? String(state.lastSpeaker) : null;
    // A shared screen wins over a face; a pinned tile wins over both.
    const screen = remote.find((k) => state.tiles.get(k).kind === 'screenshare') ?? null;
    main = (state.pinned && state.tiles.has(state.pinned) ? state.pinned : null)
      ?? screen ?? (speaker && state.tiles.has(speaker) ? speaker : null) ?? remote[0] ?? all[0] ?? null;
  }
  return { order: all, main };
}

/**
 * The state and a `change` event per dispatch (`detail: {action, changed}`).
 * Views subscribe; only the controller dispatches (and the views' own layout
 * intents go through the controller too).
 */
/** Equality for tile fields: scalars, or the `[text, level]` pill pairs. */
function sameValue(a, b) {
  if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((v, i) => v === b[i]);
  return a === b;
}

export class CallModel extends EventTarget {
  constructor(init) {
    super();
    this.state = initialState(init);
  }

  dispatch(action) {
    const changed = reduce(this.state, action);
    if (changed.size) this.dispatchEvent(new CustomEvent('change', { detail: { action, changed } }));
    return changed;
  }
}
