// The call's controller: drives the room link (room-link.js), the SFU link
// (sfu-link.js) and the E2EE link (e2ee-link.js), and turns what they report
// into actions on the model (call-model.js). No DOM: the views render the
// model and call the intent methods below (toggleMic, toggleCam,
// toggleScreen, toggleHand, setLocked, setLayout, pin, hostAction,
// createInvite, revokeInvite, leave) and report what they show (tileShown,
// tileGone, pageHidden).
//
// `window.satsuma.call` is this object: tests read `me`, `room`, `name`,
// `participants`, `link`, `sfu` and `e2ee` from it.

import { RoomLink } from './room-link.js';
import { SfuLink } from './sfu-link.js';
import { E2eeLink } from './e2ee-link.js';
import { timeline } from './join-timeline.js';
import { LayerChoice } from './layer-choice.js';
import { attachDynacast } from './dynacast.js';
import { CodecChoice, receiveCapabilities, receiveFilter } from './codec-choice.js';
import { TileStatus } from './tile-status.js';
import { endpoints, fetchToken, jwtClaims, replyError } from './access.js';
import { isRecorded, tileKey } from './call-model.js';
import { MoveOverlap } from './media-move.js';
import { ERROR_CODE } from './wire.js';

// After a key change: how long to wait before asking again for a keyframe that did not come.
const KEYFRAME_RETRY_MS = 350;
const STATS_INTERVAL_MS = 1000;
// How often the SFU is asked who speaks (ms), and how long the active speaker stays
// outlined after the SFU stopped naming it (ms): speech has pauses, and the SFU names
// nobody during one; the outline should not blink with them.
const SPEAKER_POLL_MS = 500;
const SPEAKER_HOLD_MS = 3000;
// During a move (make-before-break): how often both links' statistics are looked at (ms).
const MOVE_POLL_MS = 150;
// A tile keeps showing its current track until a new one for it has media, at most this long (ms).
const SWAP_TIMEOUT_MS = 5000;

/**
 * The E2EE link a call will use, started in the lobby: its worker instantiates
 * the WebAssembly and loads the identity key while the preview opens, so at
 * `welcome` it only has to start the MLS member. Pass it to `new Call`.
 */
export function prepareE2ee(flags) {
  const e2ee = new E2eeLink({ decrypt: flags.decrypt, mls: flags.mls, legacy: flags.legacy });
  e2ee.prepare();
  return e2ee;
}

export class Call {
  /**
   * @param {object} o
   * @param {import('./call-model.js').CallModel} o.model
   * @param {string} o.room
   * @param {string} o.name
   * @param {string} o.codec
   * @param {import('./local-media.js').LocalMedia} o.local
   * @param {object} o.flags
   * @param {() => Promise<string>} [o.getToken]
   * @param {E2eeLink} [o.e2ee] the lobby's E2EE link (its worker already loaded the WebAssembly)
   * @param {Promise} [o.localReady] resolves once the lobby's camera and microphone are open
   */
  constructor({ model, room, name, codec, local, flags, getToken, e2ee, localReady }) {
    this.model = model;
    this.room = room;
    // Resolves once the lobby's camera and microphone are open (or known missing): the
    // room and MLS steps of a join do not wait for it, pushing local tracks does.
    this.localReady = (localReady ?? Promise.resolve()).catch(() => {});
    this.name = name;
    this.codec = codec;
    this.local = local;
    this.flags = flags;
    this.pulled = new Map(); // trackName -> {mid, participantId, kind}
    this.pushed = new Map(); // kind -> trackName
    this.sfu = null;
    // During a move: the link being left, with its pulls and pushes (see moveMedia).
    this.leaving = null;
    // Tile track slots (`key/kind`) waiting for a new track's first media (onRemoteTrack).
    this.swaps = new Map();
    this.mediaEpoch = 0;
    this.e2ee = e2ee ?? new E2eeLink({ decrypt: flags.decrypt, mls: flags.mls, legacy: flags.legacy, displayName: name });
    this.e2ee.displayName = name;
    const fetchJoinToken = getToken ?? (() => fetchToken(room, name));
    this.link = new RoomLink({
      url: endpoints.ws(room),
      room,
      // Only hosts named by their token (host grant) may make invites (the server checks it too).
      getToken: async () => {
        const token = await fetchJoinToken();
        const perms = jwtClaims(token)?.perms;
        this.dispatch({ type: 'can-invite', canInvite: Array.isArray(perms) && perms.includes('host') });
        return token;
      },
    });
    this.problems = [];
    // Which simulcast layer each remote tile asks for (layer-choice.js), and each tile's status.
    this.layers = new LayerChoice({ apply: (key, rid) => this.askLayer(key, rid) });
    this.tileStatus = new TileStatus();
    // Simulcast layers nobody takes go off at the source (dynacast.js).
    this.dynacast = attachDynacast(this);
    // A video codec every participant decodes (codec-choice.js).
    this.codecs = new CodecChoice(this);
    this.wire();
  }

  dispatch(action) {
    return this.model.dispatch(action);
  }

  get state() {
    return this.model.state;
  }

  /** This page's participant id (null before `welcome`). */
  get me() {
    return this.model.state.me;
  }

  /** id -> {id, name, host, hand, speaking, tracks} */
  get participants() {
    return this.model.state.participants;
  }

  banner(text, level = 'warn') {
    this.dispatch({ type: 'banner', text, level });
  }

  updateTile(key, fields) {
    this.dispatch({ type: 'tile/update', key, ...fields });
  }

  wire() {
    const { link, e2ee } = this;
    link.addEventListener('welcome', (ev) => this.onWelcome(ev.detail));
    link.addEventListener('resumed', (ev) => {
      this.banner(null);
      this.setIce(ev.detail);
      this.syncPulls();
    });
    link.addEventListener('entry', (ev) => {
      if (ev.detail.type === 'execute' && timeline.has('mlsWelcome')) timeline.mark('execute');
      this.applyEntry(ev.detail);
      e2ee.entry(ev.detail);
    });
    link.addEventListener('mls', (ev) => e2ee.mls(ev.detail));
    link.addEventListener('direct', (ev) => {
      const msg = ev.detail;
      if (msg.type === 'move') this.moveMedia(msg);
      if (msg.type === 'error') this.note(`coordinator refused ${msg.refused ?? 'a message'}: ${msg.message}`);
      if (msg.type === 'error' && msg.refused === 'chat') this.dispatch({ type: 'chat/error', error: `Not sent: ${msg.message}` });
      if (msg.type === 'error' && msg.refused === 'record') {
        this.dispatch({
          type: 'recording/error',
          error: `Recording: ${msg.message}`,
          unavailable: msg.code === ERROR_CODE.RECORDING_UNAVAILABLE,
        });
      }
      e2ee.direct(msg);
    });
    link.addEventListener('problem', (ev) => this.note(ev.detail));
    link.addEventListener('reset', () => this.resetParticipant());
    link.addEventListener('state', (ev) => this.onLinkState(ev.detail));
    e2ee.addEventListener('send-binary', (ev) => link.sendBinary(ev.detail));
    e2ee.addEventListener('send-json', (ev) => link.send(ev.detail));
    e2ee.addEventListener('status', (ev) => {
      // A page that cannot encrypt never shows a plain "member" state.
      this.dispatch({ type: 'safety', status: e2ee.sendState().level === 'bad' ? { ...ev.detail, phase: 'failed' } : ev.detail });
    });
    e2ee.addEventListener('gate', () => this.applySendGate());
    e2ee.addEventListener('send-key-changed', () => this.sendKeyframes());
    e2ee.addEventListener('problem', (ev) => this.note(ev.detail));
    e2ee.addEventListener('chat', (ev) => this.dispatch({ type: 'chat/event', event: ev.detail }));
    e2ee.addEventListener('rejoin', () => {
      // The room announced our own departure: come back as a new participant.
      this.note('The server dropped us from the room: joining again');
      link.dropConnection();
    });
    e2ee.addEventListener('stalled', (ev) => {
      if (ev.detail.stalled) this.banner('Encryption worker is not responding: sending is paused until it recovers.', 'bad');
      else this.banner(null);
    });
  }

  async start() {
    this.dispatch({ type: 'screen', screen: 'call' });
    const stream = new MediaStream();
    this.dispatch({ type: 'tile/add', key: 'local', name: `${this.name} (you)`, local: true, kind: 'video', stream });
    this.updateTile('local', { camOn: false, conn: ['you', 'ok'] });
    this.statsTimer = setInterval(() => this.refreshStats(), STATS_INTERVAL_MS);
    this.speakerTimer = setInterval(() => this.refreshSpeaker(), SPEAKER_POLL_MS);
    this.localReady.then(() => {
      if (this.ended) return;
      if (this.local.video) stream.addTrack(this.local.video);
      this.dispatch({
        type: 'controls',
        mic: { available: Boolean(this.local.audio), on: Boolean(this.local.audio?.enabled) },
        cam: { available: Boolean(this.local.video), on: Boolean(this.local.video?.enabled) },
      });
      this.updateTile('local', { camOn: Boolean(this.local.video) });
      if (this.local.problem) this.banner(this.local.problem, 'warn');
      this.local.watchVoice((speaking) => {
        this.dispatch({ type: 'self-speaking', speaking });
        this.link.send({ type: 'speaking', speaking });
      });
    });
    await this.link.start();
  }

  onLinkState({ state, attempt, why, reason }) {
    if (state === 'open') this.dispatch({ type: 'link', text: 'connected', level: 'ok' });
    else if (state === 'reconnecting') {
      this.dispatch({ type: 'link', text: `reconnecting (${attempt})`, level: 'warn' });
      this.banner(`Connection to the server lost${why ? ` (${why})` : ''}: reconnecting…`, 'warn');
    } else if (state === 'closed') {
      this.end(why, reason);
    } else this.dispatch({ type: 'link', text: state, level: 'warn' });
  }

  onWelcome(welcome) {
    timeline.mark('welcome');
    this.dispatch({
      type: 'welcome', me: welcome.participant_id,
      participants: welcome.snapshot?.participants ?? [], locked: welcome.snapshot?.locked ?? false,
    });
    for (const p of this.participants.values()) if (p.id !== this.me) this.addTile(p);
    this.refreshTiles();
    this.banner(this.local.problem ?? null, 'warn');
    this.e2ee.start(this.me);
    this.e2ee.welcome(welcome);
    this.setIce(welcome);
    this.startMedia();
    this.watchFirstFrame();
  }

  /**
   * The join timeline's last steps (join-timeline.js): the first remote video
   * packet and the first decoded remote video frame, read from the peer
   * connection's stats every 25 ms until the frame is seen (at most 30 s).
   */
  watchFirstFrame() {
    if (this.firstFrameTimer || timeline.has('firstDecoded')) return;
    const started = performance.now();
    let busy = false;
    this.firstFrameTimer = setInterval(async () => {
      if (busy) return;
      if (timeline.has('firstDecoded') || this.ended || performance.now() - started > 30000) {
        clearInterval(this.firstFrameTimer);
        return;
      }
      const pc = this.sfu?.pc;
      if (!pc || !timeline.has('dtls')) return; // no media before DTLS: no stats to read
      busy = true;
      try {
        const report = await pc.getStats();
        report.forEach((r) => {
          if (r.type !== 'inbound-rtp' || r.kind !== 'video') return;
          if (r.packetsReceived > 0) timeline.mark('firstPacket');
          if (r.framesDecoded > 0) timeline.mark('firstDecoded');
        });
      } catch {
        // The connection was replaced: the next tick reads the new one.
      } finally {
        busy = false;
      }
    }, 25);
  }

  /**
   * The STUN/TURN servers of `welcome`/`resumed`, with this participant's own
   * short-lived TURN credentials. Before they expire fresh ones come from
   * `POST /sfu/ice-servers`; the media link takes them for its next ICE
   * gathering (an ICE restart).
   */
  setIce({ ice_servers: servers, ice_expires_at: expiresAt } = {}) {
    if (!Array.isArray(servers)) return;
    this.iceServers = servers;
    this.sfu?.setIceServers(servers);
    clearTimeout(this.iceTimer);
    if (typeof expiresAt !== 'number' || this.ended) return;
    // At 80% of the time left (at least 30 s from now, so a skewed clock cannot spin).
    const left = expiresAt * 1000 - Date.now();
    this.iceTimer = setTimeout(() => this.refreshIce(), Math.max(30_000, left * 0.8));
  }

  async refreshIce() {
    try {
      const res = await fetch(`${endpoints.sfu}/ice-servers`, {
        method: 'POST',
        headers: { Authorization: `Bearer ${this.link.resumeToken}` },
      });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      const json = await res.json();
      this.setIce({ ice_servers: json.iceServers, ice_expires_at: json.expiresAt });
    } catch (err) {
      this.note(`cannot refresh the TURN credentials: ${err.message}`);
      clearTimeout(this.iceTimer);
      if (!this.ended) this.iceTimer = setTimeout(() => this.refreshIce(), 30_000);
    }
  }

  /** The camera tile of remote participant `p` (the view mounts it and reports its size: tileShown). */
  addTile(p) {
    const key = String(p.id);
    if (this.state.tiles.has(key)) return;
    this.dispatch({ type: 'tile/add', key, participantId: p.id, kind: 'video', name: p.name, stream: new MediaStream() });
    this.updateTile(key, { conn: ['joining', 'warn'], e2ee: ['no media yet', 'warn'], camOn: false });
  }

  /** Forgets remote tile `key` (its participant left, or this page starts over). */
  dropTile(key) {
    this.dispatch({ type: 'tile/remove', key });
    this.layers.unobserve(key);
    this.tileStatus.forget(key);
  }

  /**
   * Report of the view (tile-watch.js): remote tile `key` is shown at `geom`
   * (`{width, height, visible, aspect, dpr}`); its size and visibility choose its layer.
   */
  tileShown(key, geom) {
    if (key.startsWith('local')) return;
    this.layers.measure(key, geom);
  }

  /** Report of the view: tile `key` is no longer shown. */
  tileGone(key) {
    this.layers.unobserve(key);
  }

  /** Report of the view: the page is hidden (every remote tile pauses) or shown again. */
  pageHidden(hidden) {
    this.layers.setPageHidden(hidden);
  }

  applyEntry(e) {
    this.dispatch({ type: 'entry', entry: e });
    switch (e.type) {
      case 'joined': {
        const p = this.participants.get(e.id);
        if (p && p.id !== this.me) this.addTile(p);
        break;
      }
      case 'left':
        for (const key of [String(e.id), `${e.id}:screen`]) this.dropTile(key);
        this.syncPulls();
        break;
      case 'published':
      case 'unpublished':
        this.syncPulls();
        break;
      case 'muted':
        if (e.id === this.me) {
          this.setEnabled(e.kind === 'screenshare' ? 'screenshare' : e.kind, false);
          const by = this.participants.get(e.by)?.name ?? 'a host';
          this.note(`${by} muted your ${e.kind === 'audio' ? 'microphone' : e.kind}`);
        }
        break;
      default:
        break;
    }
    if (['joined', 'left', 'hand', 'speaking', 'host', 'track_enabled', 'published', 'unpublished'].includes(e.type)) this.refreshTiles();
  }

  /** The camera-off state of every camera tile, from the participants' published tracks. */
  refreshTiles() {
    for (const p of this.participants.values()) {
      const mine = p.id === this.me;
      const camTrack = [...p.tracks.values()].find((t) => t.kind === 'video');
      this.updateTile(mine ? 'local' : String(p.id), {
        camOn: mine ? Boolean(this.local.video?.enabled) : Boolean(camTrack?.enabled),
      });
    }
  }

  // ---- media ---------------------------------------------------------------

  /**
   * A new session on the SFU, with every local track pushed and every remote track pulled.
   * `keep`: a move (make-before-break); the current link, with its pushes and pulls, was
   * handed to `this.leaving` and stays up; otherwise the current link is closed first.
   */
  async startMedia({ keep = false } = {}) {
    const epoch = ++this.mediaEpoch;
    if (!keep) {
      this.finishMove();
      this.sfu?.close();
      for (const name of this.pushed.values()) this.e2ee.detach(name);
    }
    this.pulled = new Map();
    this.layers.reset();
    this.pushed = new Map();
    const sfu = new SfuLink({
      base: endpoints.sfu,
      auth: () => this.link.resumeToken,
      iceServers: this.iceServers ?? [],
      encodedInsertableStreams: this.e2ee.insertableStreams,
      onTransceiver: (direction, transceiver, info) => this.e2ee.attach(direction, transceiver, {
        kind: info.kind === 'audio' ? 'audio' : 'video',
        trackId: info.trackName ?? `mid-${transceiver.mid}`,
        sender: info.participantId,
        codec: info.kind === 'audio' ? 'audio/opus' : `video/${info.codec ?? this.codec}`,
      }),
    });
    this.sfu = sfu;
    // Only the link in use speaks for the page: one being left after a move (make-before-break)
    // may fail or restart ICE (its node is going) without a word.
    const current = (fn) => (ev) => { if (sfu === this.sfu) fn(ev); };
    sfu.addEventListener('track', current((ev) => this.onRemoteTrack(ev.detail)));
    // Network trouble is handled by the link first (ICE restarts on the same session, the
    // E2EE state untouched); `failed` means that did not work: a new session is needed.
    sfu.addEventListener('failed', current(() => this.mediaFailed('media connection failed')));
    sfu.addEventListener('ice-restart', current((ev) => this.updateTile('local', { conn: [`media reconnecting (${ev.detail.attempt})`, 'warn'] })));
    sfu.addEventListener('problem', current((ev) => this.note(ev.detail)));
    sfu.addEventListener('pull-error', current((ev) => this.note(`cannot receive ${ev.detail.trackName}: ${ev.detail.error}`)));
    sfu.addEventListener('state', current((ev) => this.updateTile('local', { conn: [`media ${ev.detail}`, ev.detail === 'connected' ? 'ok' : 'warn'] })));
    try {
      // The session request and the push's offer run at once: the push waits for the
      // session only to send its request (SfuLink.pushMany).
      const started = sfu.start();
      started.catch(() => {}); // awaited below; a failure must not surface unhandled first
      await this.localReady;
      if (epoch !== this.mediaEpoch) return;
      // Every local track in one negotiation, then the pulls. (Pushing first puts this
      // page's own audio on the first m-line, the BUNDLE tag. A receive-only page's tag is
      // a pulled track; SfuLink never rejects the tag when a track closes, it turns it
      // inactive, so the connection survives its publisher leaving: receive-only.test.mjs.)
      const pushing = this.pushLocalMany([
        ['audio', this.local.audio], ['video', this.local.video], ['screenshare', this.local.screen],
      ], started, { withPulls: true });
      pushing.catch(() => {}); // awaited below, after the session (whose failure comes first)
      await started;
      if (epoch !== this.mediaEpoch) return;
      this.mediaSessions = (this.mediaSessions ?? 0) + 1;
      await pushing;
      if (epoch !== this.mediaEpoch) return;
      await this.syncPulls();
    } catch (err) {
      if (epoch === this.mediaEpoch) this.mediaFailed(err.message);
    }
  }

  async pushLocal(kind, track, sessionId) {
    await this.pushLocalMany([[kind, track]], sessionId);
  }

  /**
   * Pushes `[kind, track]` pairs (null tracks skipped) in one negotiation and announces them.
   * `session`: the SFU session id, or the promise of it (the offer is made meanwhile).
   * `withPulls`: the same negotiation also pulls every track not pulled yet (a join: one
   * offer/answer for everything instead of a push and then a pull).
   */
  async pushLocalMany(pairs, session, { withPulls = false } = {}) {
    const list = pairs.filter(([, track]) => track);
    if (!list.length || this.flags.receiveOnly) return;
    // (A test's receive-codec filter applies to the SFU's offers only: pull on their own then.)
    const wanted = withPulls && !receiveFilter() ? this.newPulls() : [];
    let names;
    try {
      let mids;
      ({ names, mids } = await this.sfu.pushAndPull(list.map(([kind, track]) => ({
        track, info: { kind, codec: this.codec, participantId: this.me, simulcast: this.flags.simulcast },
      })), wanted));
      this.pulledWith(wanted, mids);
      // A refused pull's receiver had its transform from the start.
      wanted.forEach((w, i) => { if (!mids[i]) this.e2ee.detach(w.trackName); });
    } catch (err) {
      for (const w of wanted) {
        this.pulled.delete(w.trackName);
        this.e2ee.detach(w.trackName);
      }
      throw err;
    }
    const sessionId = await session;
    list.forEach(([kind], i) => this.pushed.set(kind, names[i]));
    this.applySendGate();
    list.forEach(([kind, track], i) => {
      this.link.send({ type: 'publish', session_id: sessionId, track_name: names[i], kind, enabled: track.enabled });
    });
  }

  /**
   * The send gate (fail closed): every pushed track is on its sender only while
   * the E2EE link says it is encrypted (transform confirmed, sending key held,
   * worker alive, no fault); otherwise every sender gets `replaceTrack(null)`.
   * Runs on every `gate` event of the E2EE link and after every push.
   */
  applySendGate() {
    const state = this.e2ee.sendState();
    // The link in use, and during a move the one being left, which sends until it goes.
    const links = [[this.sfu, this.pushed], [this.leaving?.sfu, this.leaving?.pushed]];
    for (const [sfu, pushed] of links) {
      if (!sfu) continue;
      if (state.level !== 'ok') sfu.stopSending();
      for (const trackName of pushed.values()) {
        sfu.setSending(trackName, this.e2ee.canSend(trackName)).catch((err) => {
          if (sfu === this.sfu) this.note(`sending ${trackName}: ${err.message}`);
        });
      }
    }
    this.publishSendState(state);
  }

  /**
   * After an epoch change every video this page sends must restart with a
   * keyframe under the new key: whoever holds only the new key (a joiner) can
   * decode nothing before it. The encoder cannot be asked from here in
   * Chromium (no `generateKeyFrame`), so the SFU asks it, as if a viewer had.
   */
  async sendKeyframes() {
    const names = [...this.pushed].filter(([kind]) => kind !== 'audio').map(([, name]) => name);
    const sfu = this.sfu;
    if (!names.length || !sfu) return;
    try {
      const before = await sfu.keyframesEncoded(names);
      await sfu.requestKeyframes(names);
      // Chromium's encoder ignores a keyframe request that comes less than 300 ms after it
      // sent a keyframe (a joiner's new leg usually asked for one just before the key
      // changed): if none was encoded since, ask once more when that window is over.
      await new Promise((resolve) => setTimeout(resolve, KEYFRAME_RETRY_MS));
      if (sfu !== this.sfu || this.ended) return;
      if (await sfu.keyframesEncoded(names) <= before) await sfu.requestKeyframes(names);
    } catch (err) {
      this.note(`keyframe after a key change: ${err.message}`);
    }
  }

  /** The persistent E2EE state (the view shows it red with the reason while this page cannot encrypt). */
  publishSendState(state) {
    const bad = state.level === 'bad';
    this.dispatch({ type: 'send', state: { level: state.level, reason: state.reason ?? '', advice: state.advice ?? '', fatal: Boolean(state.fatal) } });
    if (bad) this.dispatch({ type: 'safety', status: { ...this.e2ee.status, phase: 'failed' } });
    else if (this.shownBad) this.dispatch({ type: 'safety', status: this.e2ee.status });
    this.shownBad = bad;
    if (this.flags.receiveOnly) return;
    const pill = {
      ok: ['E2EE · sending encrypted', 'ok'],
      wait: ['not sending yet: waiting for keys', 'warn'],
      off: ['not sending (observer)', 'warn'],
      bad: ['NOT SENDING: cannot encrypt', 'bad'],
    }[state.level];
    this.updateTile('local', { e2ee: pill });
  }

  /**
   * The coordinator's `move` (issue 15): the SFU node of this page's session is draining or
   * down. Make-before-break: the page makes a new session (the proxy places it on a live
   * node), pushes its tracks there and announces them under new names, and pulls everything
   * again, while the old link keeps sending and receiving; tiles switch to a new track once
   * it has media (onRemoteTrack). Once the new link delivers (media-move.js: every track
   * still arriving on the old link arrived on the new one, and the new pushes have sent for
   * a moment, so the others could pull them), or after a timeout, the old names are
   * withdrawn, the old link is closed and its session deleted so a draining node can exit.
   * The E2EE state is not touched: no rejoin, same epoch and safety number. Orders for
   * sessions this page no longer uses (the coordinator repeats them until the old session
   * is gone) change nothing. `window.satsuma.call.moves` lists the moves made, each with
   * `at` (told), `done` (new session ready), `closed` (old link gone) and `why` (tests read it).
   */
  moveMedia({ sessions = [], reason = '' } = {}) {
    const old = this.sfu;
    if (!old?.sessionId || !sessions.includes(old.sessionId)) return;
    this.finishMove(); // a move still overlapping (its new node drains too) ends now
    const move = { from: old.sessionId, reason, at: Date.now(), to: null, done: null, closed: null, why: null };
    this.moves = [...(this.moves ?? []), move].slice(-20);
    console.info(`satsuma: moving media off SFU session ${old.sessionId} (${reason})`);
    const leaving = { sfu: old, pulled: this.pulled, pushed: this.pushed, move, auth: this.link.resumeToken };
    this.leaving = leaving;
    const baseline = old.stats().catch(() => ({ tracks: {} }));
    this.startMedia({ keep: true }).finally(() => {
      move.to = this.sfu?.sessionId ?? null;
      move.done = Date.now();
    });
    this.watchMove(leaving, baseline);
  }

  /** Looks at both links until the old one may go (MoveOverlap), then ends the move. */
  async watchMove(leaving, baseline) {
    const overlap = new MoveOverlap({ now: performance.now(), oldPulls: leaving.pulled, oldTracks: (await baseline).tracks });
    while (this.leaving === leaving) {
      await new Promise((resolve) => setTimeout(resolve, MOVE_POLL_MS));
      if (this.leaving !== leaving) return;
      const sfu = this.sfu;
      const [before, now] = await Promise.all([
        leaving.sfu.stats().catch(() => ({ tracks: {} })),
        sfu?.sessionId ? sfu.stats().catch(() => ({ tracks: {} })) : { tracks: {} },
      ]);
      const pushedMids = [...(sfu?.pushes.values() ?? [])].map((p) => p.transceiver.mid).filter(Boolean);
      // Nothing pushed yet while this page has tracks to send: not sending yet.
      const expecting = this.flags.receiveOnly ? 0 : [this.local.audio, this.local.video, this.local.screen].filter(Boolean).length;
      const mids = pushedMids.length >= expecting ? pushedMids : [...pushedMids, null];
      if (overlap.observe({ now: performance.now(), oldTracks: before.tracks, newPulls: this.pulled, newTracks: now.tracks, pushedMids: mids })) {
        leaving.move.why = overlap.reason;
        this.finishMove();
      }
    }
  }

  /**
   * Ends the move under way, if any: withdraws the old link's names, forgets their
   * transforms, closes the old link and deletes its session. (Its pulls' transforms share
   * their track names with the new link's and are not forgotten: the worker holds the
   * new ones under those names.)
   */
  finishMove() {
    const leaving = this.leaving;
    if (!leaving) return;
    this.leaving = null;
    for (const name of leaving.pushed.values()) {
      this.link.send({ type: 'unpublish', track_name: name });
      this.e2ee.detach(name);
    }
    const receivers = leaving.sfu.pc.getTransceivers();
    leaving.sfu.close();
    this.e2ee.retire([...leaving.pulled.keys()], receivers);
    leaving.move.closed = Date.now();
    leaving.move.why ??= 'ended';
    fetch(`${endpoints.sfu}/sessions/${encodeURIComponent(leaving.move.from)}`, {
      method: 'DELETE', headers: { Authorization: `Bearer ${leaving.auth}` },
    }).catch(() => {}); // the node may be gone (down): the coordinator releases it anyway
  }

  mediaFailed(why) {
    this.note(`Media: ${why}; reconnecting`);
    for (const [, trackName] of this.pushed) this.link.send({ type: 'unpublish', track_name: trackName });
    for (const p of this.participants.values()) {
      if (p.id !== this.me) this.updateTile(String(p.id), { conn: ['reconnecting', 'warn'] });
    }
    this.detachRemote();
    const delay = Math.min(10000, 1000 * 2 ** Math.min(this.mediaRetries = (this.mediaRetries ?? 0) + 1, 4));
    clearTimeout(this.mediaTimer);
    this.mediaTimer = setTimeout(() => {
      if (this.link.state === 'open') this.startMedia();
      else this.mediaFailed('waiting for the server');
    }, delay);
  }

  detachRemote() {
    for (const [trackName] of this.pulled) this.e2ee.detach(trackName);
    this.pulled.clear();
    for (const [key, t] of this.state.tiles) {
      if (key === 'local' || !t.stream) continue;
      for (const tr of t.stream.getTracks()) t.stream.removeTrack(tr);
    }
  }

  /**
   * The tracks other participants publish that are not pulled yet, each registered in
   * `this.pulled` (without a mid) so no other pull asks for it meanwhile.
   */
  newPulls() {
    const wanted = [];
    for (const p of this.participants.values()) {
      if (p.id === this.me) continue;
      for (const t of p.tracks.values()) {
        if (this.pulled.has(t.track_name)) continue;
        this.pulled.set(t.track_name, { mid: null, participantId: p.id, kind: t.kind });
        // Video starts on the layer its tile wants (null: the SFU's best until the tile is laid out).
        const preferredRid = t.kind === 'audio' ? null : this.layers.wanted(tileKey(p.id, t.kind));
        wanted.push({ sessionId: t.session_id, trackName: t.track_name, preferredRid, info: { participantId: p.id, kind: t.kind } });
      }
    }
    return wanted;
  }

  /** Records the mids the SFU gave the pulls `wanted` (a null mid: refused, retried on the next change). */
  pulledWith(wanted, mids) {
    wanted.forEach((w, i) => {
      const entry = this.pulled.get(w.trackName);
      if (!entry) return;
      if (mids[i]) {
        entry.mid = mids[i];
        if (entry.kind !== 'audio') this.layers.pulledWith(tileKey(entry.participantId, entry.kind), w.preferredRid);
      } else this.pulled.delete(w.trackName);
    });
  }

  /** Pulls every track other participants publish that is not pulled yet; drops pulls of gone tracks. */
  async syncPulls() {
    const sfu = this.sfu;
    if (!sfu?.sessionId) return;
    const wanted = this.newPulls();
    const live = new Set();
    for (const p of this.participants.values()) {
      if (p.id === this.me) continue;
      for (const t of p.tracks.values()) live.add(t.track_name);
    }
    const gone = [...this.pulled].filter(([name]) => !live.has(name));
    for (const [name] of gone) {
      this.pulled.delete(name);
      this.e2ee.detach(name);
    }
    try {
      const goneMids = gone.map(([, v]) => v.mid).filter(Boolean);
      if (goneMids.length) await sfu.unpull(goneMids);
      if (wanted.length) {
        const mids = await sfu.pull(wanted);
        if (sfu === this.sfu) this.pulledWith(wanted, mids); // (not after a move began meanwhile)
      }
    } catch (err) {
      for (const w of wanted) this.pulled.delete(w.trackName);
      if (sfu === this.sfu) this.note(`receiving: ${err.message}`);
    }
  }

  /**
   * Asks the SFU for layer `rid` of the video shown in tile `key`; resolves
   * false while that video is not pulled yet (the pull then carries the choice).
   */
  async askLayer(key, rid) {
    const pull = [...this.pulled.values()].find((v) => v.mid && v.kind !== 'audio' && tileKey(v.participantId, v.kind) === key);
    if (!pull || !this.sfu) return false;
    const accepted = await this.sfu.setPreferredRids([{ mid: pull.mid, rid }]);
    return accepted.includes(pull.mid);
  }

  onRemoteTrack({ track, info }) {
    if (info.participantId === undefined) return;
    const p = this.participants.get(info.participantId);
    const key = tileKey(info.participantId, info.kind);
    if (!this.state.tiles.has(key)) {
      this.dispatch({
        type: 'tile/add', key, participantId: info.participantId, kind: info.kind === 'screenshare' ? 'screenshare' : 'video',
        name: info.kind === 'screenshare' ? `${p?.name ?? '?'} (screen)` : p?.name ?? '?', stream: new MediaStream(),
      });
    }
    const { stream } = this.state.tiles.get(key);
    const put = () => {
      for (const old of stream.getTracks()) if (old.kind === track.kind) stream.removeTrack(old);
      stream.addTrack(track);
      this.dispatch({ type: 'tile/media', key });
    };
    track.addEventListener('ended', () => stream.removeTrack(track));
    // A tile showing media keeps it until the new track has some (a remote track is muted
    // until its first packet): a move's new link replaces the old one without a gap.
    const slot = `${key}/${track.kind}`;
    const showing = stream.getTracks().some((t) => t.kind === track.kind && t.readyState === 'live' && !t.muted);
    if (!showing || !track.muted) {
      this.swaps.delete(slot);
      put();
      return;
    }
    this.swaps.set(slot, track);
    const swap = () => {
      clearTimeout(timer);
      track.removeEventListener('unmute', swap);
      if (this.swaps.get(slot) !== track) return; // a newer track took the slot
      this.swaps.delete(slot);
      if (track.readyState === 'live' && this.state.tiles.get(key)?.stream === stream) put();
    };
    const timer = setTimeout(swap, SWAP_TIMEOUT_MS);
    track.addEventListener('unmute', swap);
  }

  // ---- intents (from the views) --------------------------------------------

  toggleMic() {
    this.setEnabled('audio', !(this.local.audio?.enabled));
  }

  toggleCam() {
    this.setEnabled('video', !(this.local.video?.enabled));
  }

  /** Sends a chat message (end-to-end encrypted, docs/chat.md); shown once the room logs it. */
  async sendChat(text) {
    if (this.link.state !== 'open') {
      // The link drops what is sent while it is down: say so instead of losing it silently.
      this.dispatch({ type: 'chat/error', error: 'Not sent: not connected to the server; try again when reconnected.' });
      return false;
    }
    try {
      await this.e2ee.sendChat(text);
      this.dispatch({ type: 'chat/error', error: null });
      return true;
    } catch (err) {
      this.dispatch({ type: 'chat/error', error: `Not sent: ${err.message}` });
      return false;
    }
  }

  /** Opens or closes the chat panel (opening marks everything read). */
  setChatOpen(open) {
    this.dispatch({ type: 'chat/open', open });
  }

  toggleHand() {
    this.link.send({ type: 'hand', raised: !this.participants.get(this.me)?.hand });
  }

  /** Host: starts recording, or stops it (also one still starting). The coordinator decides. */
  toggleRecording() {
    const r = this.model.state.recording;
    const action = isRecorded(this.model.state) || r.pending === 'start' ? 'stop' : 'start';
    if (!this.link.send({ type: 'record', action })) {
      this.dispatch({ type: 'recording/error', error: 'Recording: not connected to the server; try again when reconnected.' });
      return;
    }
    this.dispatch({ type: 'recording/request', action });
  }

  setLocked(locked) {
    this.link.send({ type: 'lock', locked: Boolean(locked) });
  }

  /** The stage's layout: 'grid' or 'speaker'. */
  setLayout(layout) {
    this.dispatch({ type: 'layout', layout });
  }

  /** Shows tile `key` large in the speaker view (null: follow the active speaker). */
  pin(key) {
    this.dispatch({ type: 'pin', key });
    if (key !== null) this.setLayout('speaker');
  }

  setEnabled(kind, enabled) {
    const track = kind === 'audio' ? this.local.audio : kind === 'video' ? this.local.video : this.local.screen;
    if (!track) return;
    track.enabled = enabled;
    const name = this.pushed.get(kind);
    if (name) this.link.send({ type: 'set_track', track_name: name, enabled });
    if (kind === 'audio') this.dispatch({ type: 'controls', mic: { on: enabled } });
    if (kind === 'video') {
      this.dispatch({ type: 'controls', cam: { on: enabled } });
      this.updateTile('local', { camOn: enabled });
    }
  }

  async toggleScreen() {
    if (this.local.screen) {
      const name = this.pushed.get('screenshare');
      this.local.stopScreen();
      this.dispatch({ type: 'tile/remove', key: 'local:screen' });
      if (name) {
        this.pushed.delete('screenshare');
        this.e2ee.detach(name);
        this.link.send({ type: 'unpublish', track_name: name });
        await this.sfu?.unpush(name).catch(() => {});
      }
      this.dispatch({ type: 'controls', screen: { on: false } });
      return;
    }
    const track = await this.local.startScreen();
    if (!track) {
      this.note(this.local.problem);
      return;
    }
    this.dispatch({ type: 'controls', screen: { on: true } });
    const stream = new MediaStream([track]);
    this.dispatch({ type: 'tile/add', key: 'local:screen', name: 'Your screen', local: true, kind: 'screenshare', stream, camOn: true });
    this.dispatch({ type: 'tile/media', key: 'local:screen' });
    track.addEventListener('ended', () => { if (this.local.screen === track) this.toggleScreen(); });
    try {
      await this.pushLocal('screenshare', track, this.sfu.sessionId);
    } catch (err) {
      this.note(`screen share: ${err.message}`);
    }
  }

  hostAction(action, target) {
    if (action === 'mute') this.link.send({ type: 'mute', target, kind: 'audio' });
    if (action === 'remove') this.link.send({ type: 'remove', target });
  }

  /**
   * Host only: a signed invite to this room (POST /api/v1/invites with this
   * participant's credential). Returns `{invite_id, invite, expires_at, link}`;
   * the link carries the invite in the fragment (`#invite=…`).
   */
  async createInvite({ role = 'participant', ttlS = 24 * 3600 } = {}) {
    const res = await fetch(endpoints.invites, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${this.link.resumeToken}` },
      body: JSON.stringify({ role, ttl_s: ttlS }),
    });
    if (!res.ok) throw await replyError(res, 'invite');
    const json = await res.json();
    return { ...json, link: `${location.origin}${location.pathname}#invite=${json.invite}` };
  }

  /** Host only: revokes invite `id` of this room. */
  async revokeInvite(id) {
    const res = await fetch(`${endpoints.invites}/${encodeURIComponent(id)}`, {
      method: 'DELETE',
      headers: { Authorization: `Bearer ${this.link.resumeToken}` },
    });
    if (!res.ok) throw await replyError(res, 'revoke');
  }

  /** Test drills (only with --test-hooks; app.js exposes them as window.satsuma.drill). */
  drill(what, arg) {
    switch (what) {
      case 'dropSocket': return this.link.dropConnection();
      case 'failMedia': return this.sfu?.pc.close() ?? null;
      case 'restartIce': return this.sfu?.restartIce() ?? null;
      default: return this.e2ee.drill(what, arg);
    }
  }

  /** Resume impossible: we come back as a new participant. */
  resetParticipant() {
    this.note('Session expired on the server: joining again');
    this.mediaEpoch += 1;
    this.finishMove();
    this.sfu?.close();
    this.sfu = null;
    this.detachRemote();
    for (const key of [...this.state.tiles.keys()]) {
      if (key.startsWith('local')) continue;
      this.layers.unobserve(key);
      this.tileStatus.forget(key);
    }
    this.dispatch({ type: 'reset' });
  }

  leave() {
    this.link.leave();
  }

  end(why, detail = '') {
    // Test hook (only with --test-hooks): a removed participant that keeps its
    // media connection and its keys, to prove that removal cuts it off on the
    // server side (its SFU sessions are deleted) rather than by its good will.
    const keepKeys = this.flags.testKeepKeys && why === 'removed';
    if (!keepKeys) {
      clearInterval(this.statsTimer);
      clearInterval(this.speakerTimer);
      clearTimeout(this.mediaTimer);
      clearTimeout(this.iceTimer);
      this.mediaEpoch += 1;
      this.finishMove();
      this.sfu?.close();
      this.e2ee.stop();
    }
    this.local.stop();
    this.layers.close();
    this.dispatch({ type: 'tiles/clear' });
    this.dispatch({ type: 'ended', why, detail });
    this.ended = true;
  }

  note(message) {
    if (!message) return;
    console.warn(`satsuma: ${message}`);
    this.problems.push({ at: Date.now(), message });
    if (this.problems.length > 50) this.problems.shift();
    this.banner(message, 'warn');
    clearTimeout(this.noteTimer);
    this.noteTimer = setTimeout(() => this.banner(null), 6000);
  }

  // ---- status --------------------------------------------------------------

  /** Everything the page knows about media per remote track (UI badges and tests). */
  async snapshotStats() {
    const rtp = this.sfu ? await this.sfu.stats().catch(() => ({ tracks: {} })) : { tracks: {} };
    const remote = [];
    for (const [trackName, pull] of this.pulled) {
      const s = (pull.mid && rtp.tracks[pull.mid]) || {};
      const w = this.e2ee.trackStats.get(trackName) ?? {};
      remote.push({
        participantId: pull.participantId, name: this.participants.get(pull.participantId)?.name, kind: pull.kind, trackName, mid: pull.mid,
        packetsReceived: s.packetsReceived ?? 0, framesReceived: s.framesReceived ?? 0, framesDecoded: s.framesDecoded ?? 0,
        framesDropped: s.framesDropped ?? 0, keyFramesDecoded: s.keyFramesDecoded ?? 0, pliCount: s.pliCount ?? 0,
        totalSamplesReceived: s.totalSamplesReceived ?? 0, audioLevel: s.audioLevel ?? 0, codec: s.codec ?? null,
        decrypted: w.decrypted ?? 0, dropped: w.dropped ?? 0, duplicates: w.duplicates ?? 0, protocolFrames: w.protocolFrames ?? 0,
        workerFrames: w.frames ?? 0, lastDrop: w.lastDrop ?? null, lastBytes: w.lastBytes ?? null, epoch: w.epoch ?? null,
        held: w.held ?? 0, late: w.late ?? 0,
        frameWidth: s.frameWidth ?? 0, frameHeight: s.frameHeight ?? 0,
        ...(pull.kind === 'audio' ? {} : {
          layer: this.layers.state(tileKey(pull.participantId, pull.kind)),
          tile: this.tileStatus.state(tileKey(pull.participantId, pull.kind)),
          negotiatedCodecs: pull.mid ? this.sfu?.receiveCodecs(pull.mid) ?? null : null,
        }),
      });
    }
    // During a move, the link being left still delivers (make-before-break): its pulls
    // follow, marked `leaving`.
    const leaving = this.leaving;
    if (leaving) {
      const old = await leaving.sfu.stats().catch(() => ({ tracks: {} }));
      for (const [trackName, pull] of leaving.pulled) {
        const s = (pull.mid && old.tracks[pull.mid]) || {};
        remote.push({
          participantId: pull.participantId, name: this.participants.get(pull.participantId)?.name, kind: pull.kind, trackName, mid: pull.mid,
          leaving: true, packetsReceived: s.packetsReceived ?? 0, framesReceived: s.framesReceived ?? 0, framesDecoded: s.framesDecoded ?? 0,
          framesDropped: s.framesDropped ?? 0, keyFramesDecoded: s.keyFramesDecoded ?? 0, frameWidth: s.frameWidth ?? 0, frameHeight: s.frameHeight ?? 0,
        });
      }
    }
    const outbound = Object.values(rtp.tracks).filter((t) => t.type === 'outbound-rtp');
    const gate = this.e2ee.sendState();
    return {
      me: this.me, room: this.room, link: this.link.state, media: this.sfu?.connectionState ?? 'none',
      // The SFU session in use, how many this page created, and the ICE restarts on this one.
      sfuSession: this.sfu?.sessionId ?? null, mediaSessions: this.mediaSessions ?? 0,
      iceRestarts: this.sfu ? { ...this.sfu.restarts, last: this.sfu.restarts.last && { ...this.sfu.restarts.last } } : null,
      send: {
        level: gate.level, reason: gate.reason, advice: gate.advice ?? '', epoch: this.e2ee.sendEpoch,
        senders: this.sfu?.sending() ?? [], log: this.e2ee.gateLog,
      },
      e2ee: this.e2ee.status, encrypt: this.e2ee.encryptStats ?? null, transform: this.e2ee.mode,
      workerStalled: this.e2ee.stalled, remote, outbound, pair: rtp.pair ?? null, problems: this.problems.map((p) => p.message),
      participants: [...this.participants.values()].map((p) => ({ id: p.id, name: p.name, host: p.host, hand: p.hand })),
    };
  }

  /**
   * The active speaker: the SFU names, per subscriber, the pulled audio track
   * that speaks now (from the RTP audio-level header extension, which E2EE
   * leaves readable). Asked every SPEAKER_POLL_MS while this page pulls audio.
   */
  async refreshSpeaker() {
    const sfu = this.sfu;
    if (this.ended || !sfu?.sessionId || this.speakerBusy) return;
    // Nobody to hear: nothing to ask.
    if (![...this.pulled.values()].some((p) => p.kind === 'audio' && p.mid)) {
      if (this.state.activeSpeaker !== null) this.dispatch({ type: 'active-speaker', id: null });
      return;
    }
    this.speakerBusy = true;
    try {
      const state = await sfu.sessionState();
      if (sfu !== this.sfu || !state) return;
      const name = state.activeSpeaker?.trackName;
      const pull = name ? this.pulled.get(name) : null;
      const now = performance.now();
      if (pull) {
        this.speakerSeen = now;
        this.dispatch({ type: 'active-speaker', id: pull.participantId });
      } else if (!(now - (this.speakerSeen ?? -Infinity) < SPEAKER_HOLD_MS)) {
        this.dispatch({ type: 'active-speaker', id: null });
      }
    } catch {
      // The session is being replaced: the next tick asks the new one.
    } finally {
      this.speakerBusy = false;
    }
  }

  async refreshStats() {
    if (this.ended) return;
    const snap = await this.snapshotStats();
    this.lastSnapshot = snap;
    const member = this.e2ee.status?.phase === 'member';
    const caps = receiveCapabilities();
    for (const p of this.participants.values()) {
      if (p.id === this.me) continue;
      const rs = snap.remote.filter((r) => r.participantId === p.id);
      const camTrack = [...p.tracks.values()].find((t) => t.kind === 'video');
      for (const kind of ['video', 'screenshare']) {
        const key = tileKey(p.id, kind);
        if (!this.state.tiles.has(key)) continue;
        const video = rs.find((r) => r.kind === kind) ?? null;
        const { conn, media } = this.tileStatus.update(key, {
          video, audio: kind === 'video' ? rs.find((r) => r.kind === 'audio') ?? null : null,
          flags: this.flags, member, mediaState: snap.media,
          paused: this.layers.paused(key),
          camOn: kind === 'video' ? (camTrack ? camTrack.enabled !== false : undefined) : undefined,
          codec: video ? this.codecs.support(p.id, video, caps) : null,
        });
        this.updateTile(key, { conn, e2ee: media });
      }
    }
  }
}
