// Satsuma web client: lobby, call, and the glue between the coordinator link
// (room-link.js), the SFU link (sfu-link.js), the E2EE worker (e2ee-link.js)
// and the view (call-view.js).
//
// Plain ES modules served as-is by the coordinator: no bundler, no CDN, no
// request to any other origin. The only build step is the WebAssembly E2EE
// core (scripts/build-web.sh writes ./pkg/).
//
// Joining needs a join token. The URL fragment may carry one (`#token=…`, from
// `satsuma token create` or your app's POST /api/v1/tokens) or a host's invite
// (`#invite=…`, redeemed for a token at POST /api/v1/invites/redeem); the page
// reads it and removes it from the address bar at once. Fragments never reach
// the server, so neither ends up in its logs. Only a server in dev mode (--dev)
// hands tokens to anyone (POST /token); otherwise the lobby explains how to get
// an invite.
//
// URL parameters: room, name, codec (VP8|VP9|H264), autojoin=1, video=WxH, fps=N, send=0
// (receive only), transform=legacy (use createEncodedStreams), simulcast=0 (send
// one video layer). Test hooks,
// honoured only when the server runs with --test-hooks (client-config.js):
// decrypt=0 (receive without decrypting), keyless=1 (never join the MLS
// group), test_* parameters, window.satsuma.drill.

import { devTokens, testHooks, testParam } from './client-config.js';
import { RoomLink } from './room-link.js';
import { SfuLink } from './sfu-link.js';
import { E2eeLink } from './e2ee-link.js';
import { CallView } from './call-view.js';
import { LocalMedia } from './local-media.js';
import { timeline } from './join-timeline.js';
import { LayerChoice } from './layer-choice.js';
import { TileStatus, codecSupport } from './tile-status.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
// After a key change: how long to wait before asking again for a keyframe that did not come.
const KEYFRAME_RETRY_MS = 350;
const STATS_INTERVAL_MS = 1000;

/** Where the coordinator serves things (same origin as this page). */
export const endpoints = {
  ws: (room) => `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws/${encodeURIComponent(room)}`,
  token: '/token',
  redeem: '/api/v1/invites/redeem',
  invites: '/api/v1/invites',
  sfu: '/sfu',
};

/**
 * What the URL fragment carries: `{token}` (`#token=…`), `{invite}`
 * (`#invite=…`), or `{room}` (any other `#room-name`). A token or invite is
 * removed from the address bar (history.replaceState) as soon as it is read,
 * so it is not left in the history, bookmarks or a copied URL.
 */
export function takeFragment() {
  const hash = location.hash.slice(1);
  if (!hash) return {};
  const fields = new URLSearchParams(hash);
  const token = fields.get('token');
  const invite = fields.get('invite');
  if (token === null && invite === null) return { room: decodeURIComponent(hash) };
  history.replaceState(history.state, '', `${location.pathname}${location.search}`);
  return token !== null ? { token } : { invite };
}

/** The claims of a JWT (not verified: only the server can; used to show the room and name). */
export function jwtClaims(jwt) {
  try {
    const part = jwt.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const text = new TextDecoder().decode(Uint8Array.from(atob(part.padEnd(Math.ceil(part.length / 4) * 4, '=')), (c) => c.charCodeAt(0)));
    const claims = JSON.parse(text);
    return claims && typeof claims === 'object' ? claims : null;
  } catch {
    return null;
  }
}

/** Error text of a JSON error reply (`{error, message}`). */
async function replyError(res, what) {
  let detail = `HTTP ${res.status}`;
  try {
    const json = await res.json();
    if (typeof json?.message === 'string') detail = json.message;
  } catch { /* not JSON */ }
  return new Error(`${what}: ${detail}`);
}

/** Redeems an invite for a join token: `{token, room}`. */
async function redeemInvite(invite, name) {
  const res = await fetch(endpoints.redeem, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ invite, name }),
  });
  if (!res.ok) throw await replyError(res, 'invite');
  const json = await res.json();
  if (typeof json.token !== 'string') throw new Error('invite: no token in reply');
  return json;
}

/** Asks the coordinator (dev mode) for a join token. */
async function fetchToken(room, name) {
  const res = await fetch(endpoints.token, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ room, name }),
  });
  if (!res.ok) throw new Error(`token: HTTP ${res.status}`);
  const json = await res.json();
  if (typeof json.token !== 'string') throw new Error('token: no token in reply');
  return json.token;
}

class Call {
  constructor({ room, name, codec, local, view, flags, getToken, e2ee, localReady }) {
    this.room = room;
    // Resolves once the lobby's camera and microphone are open (or known missing): the
    // room and MLS steps of a join do not wait for it, pushing local tracks does.
    this.localReady = (localReady ?? Promise.resolve()).catch(() => {});
    this.name = name;
    this.codec = codec;
    this.local = local;
    this.view = view;
    this.flags = flags;
    this.me = null;
    this.participants = new Map(); // id -> {id, name, host, hand, speaking, tracks: Map(trackName -> info)}
    this.pulled = new Map(); // trackName -> {mid, participantId, kind}
    this.pushed = new Map(); // kind -> trackName
    this.sfu = null;
    this.mediaEpoch = 0;
    // The lobby's E2EE link (its worker already loaded the WebAssembly), or a new one.
    this.e2ee = e2ee ?? new E2eeLink({ decrypt: flags.decrypt, mls: flags.mls, legacy: flags.legacy, displayName: name });
    this.e2ee.displayName = name;
    this.link = new RoomLink({ url: endpoints.ws(room), getToken: getToken ?? (() => fetchToken(room, name)), room });
    this.problems = [];
    // Which simulcast layer each remote tile asks for (layer-choice.js), and each tile's status.
    this.layers = new LayerChoice({ apply: (key, rid) => this.askLayer(key, rid) });
    this.tileStatus = new TileStatus();
    this.wire();
  }

  wire() {
    const { link, e2ee, view } = this;
    link.addEventListener('welcome', (ev) => this.onWelcome(ev.detail));
    link.addEventListener('resumed', (ev) => {
      view.banner(null);
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
      if (msg.type === 'error') this.note(`coordinator refused ${msg.refused ?? 'a message'}: ${msg.message}`);
      e2ee.direct(msg);
    });
    link.addEventListener('problem', (ev) => this.note(ev.detail));
    link.addEventListener('reset', () => this.resetParticipant());
    link.addEventListener('state', (ev) => this.onLinkState(ev.detail));
    e2ee.addEventListener('send-binary', (ev) => link.sendBinary(ev.detail));
    e2ee.addEventListener('send-json', (ev) => link.send(ev.detail));
    e2ee.addEventListener('status', (ev) => {
      // A page that cannot encrypt never shows a plain "member" state.
      view.safety(e2ee.sendState().level === 'bad' ? { ...ev.detail, phase: 'failed' } : ev.detail);
      this.renderPeople();
    });
    e2ee.addEventListener('gate', () => this.applySendGate());
    e2ee.addEventListener('send-key-changed', () => this.sendKeyframes());
    e2ee.addEventListener('problem', (ev) => this.note(ev.detail));
    e2ee.addEventListener('rejoin', () => {
      // The room announced our own departure: come back as a new participant.
      this.note('The server dropped us from the room: joining again');
      link.dropConnection();
    });
    e2ee.addEventListener('stalled', (ev) => {
      if (ev.detail.stalled) view.banner('Encryption worker is not responding: sending is paused until it recovers.', 'bad');
      else view.banner(null);
    });
  }

  async start() {
    this.view.show('call');
    $('room-title').textContent = this.room;
    const me = this.view.tile('local', { name: `${this.name} (you)`, local: true });
    this.view.updateTile('local', { camOn: false, conn: ['you', 'ok'] });
    this.statsTimer = setInterval(() => this.refreshStats(), STATS_INTERVAL_MS);
    this.localReady.then(() => {
      if (this.ended) return;
      if (this.local.video) me.stream.addTrack(this.local.video);
      this.view.updateTile('local', { camOn: Boolean(this.local.video) });
      if (this.local.problem) this.view.banner(this.local.problem, 'warn');
      this.local.watchVoice((speaking) => this.link.send({ type: 'speaking', speaking }));
    });
    await this.link.start();
  }

  onLinkState({ state, attempt, why, reason }) {
    if (state === 'open') this.view.linkStatus('connected', 'ok');
    else if (state === 'reconnecting') {
      this.view.linkStatus(`reconnecting (${attempt})`, 'warn');
      this.view.banner(`Connection to the server lost${why ? ` (${why})` : ''}: reconnecting…`, 'warn');
    } else if (state === 'closed') {
      this.end(why, reason);
    } else this.view.linkStatus(state, 'warn');
  }

  onWelcome(welcome) {
    timeline.mark('welcome');
    this.me = welcome.participant_id;
    this.participants.clear();
    for (const p of welcome.snapshot?.participants ?? []) this.addParticipant(p);
    this.lockState = welcome.snapshot?.locked ?? false;
    $('lock-room').checked = this.lockState;
    this.view.banner(this.local.problem ?? null, 'warn');
    this.e2ee.start(this.me);
    this.e2ee.welcome(welcome);
    this.renderPeople();
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

  addParticipant(p) {
    const tracks = new Map((p.tracks ?? []).map((t) => [t.track_name, t]));
    this.participants.set(p.id, {
      id: p.id, name: p.name, host: Boolean(p.host), hand: Boolean(p.hand_raised), speaking: Boolean(p.speaking), tracks,
    });
    if (p.id !== this.me) {
      const tile = this.view.tile(String(p.id), { name: p.name });
      this.view.updateTile(String(p.id), { conn: ['joining', 'warn'], e2ee: ['no media yet', 'warn'], camOn: false });
      this.layers.observe(String(p.id), tile.video);
    }
  }

  applyEntry(e) {
    const p = this.participants.get(e.id);
    switch (e.type) {
      case 'joined':
        if (!this.participants.has(e.id)) this.addParticipant({ id: e.id, name: e.name, host: e.host });
        break;
      case 'left':
        this.participants.delete(e.id);
        for (const key of [String(e.id), `${e.id}:screen`]) {
          this.view.removeTile(key);
          this.layers.unobserve(key);
          this.tileStatus.forget(key);
        }
        this.syncPulls();
        break;
      case 'published':
        p?.tracks.set(e.track.track_name, e.track);
        this.syncPulls();
        break;
      case 'unpublished':
        p?.tracks.delete(e.track_name);
        this.syncPulls();
        break;
      case 'track_enabled': {
        const t = p?.tracks.get(e.track_name);
        if (t) t.enabled = e.enabled;
        break;
      }
      case 'muted':
        if (e.id === this.me) {
          this.setEnabled(e.kind === 'screenshare' ? 'screenshare' : e.kind, false);
          const by = this.participants.get(e.by)?.name ?? 'a host';
          this.note(`${by} muted your ${e.kind === 'audio' ? 'microphone' : e.kind}`);
        }
        break;
      case 'hand':
        if (p) p.hand = e.raised;
        break;
      case 'speaking':
        if (p) p.speaking = e.speaking;
        break;
      case 'host':
        if (p) p.host = true;
        break;
      case 'locked':
        $('lock-room').checked = e.locked;
        break;
      default:
        break;
    }
    if (['joined', 'left', 'hand', 'speaking', 'host', 'track_enabled', 'published', 'unpublished'].includes(e.type)) this.renderPeople();
  }

  renderPeople() {
    const people = [...this.participants.values()].map((p) => ({ ...p, me: p.id === this.me }));
    const meIsHost = Boolean(this.participants.get(this.me)?.host);
    this.view.people(people, { meIsHost });
    for (const p of people) {
      const key = p.me ? 'local' : String(p.id);
      const camTrack = [...p.tracks.values()].find((t) => t.kind === 'video');
      this.view.updateTile(key, {
        speaking: p.speaking, hand: p.hand,
        camOn: p.me ? Boolean(this.local.video?.enabled) : Boolean(camTrack?.enabled),
      });
    }
    const meP = this.participants.get(this.me);
    $('toggle-hand').setAttribute('aria-pressed', String(Boolean(meP?.hand)));
    $('toggle-hand').textContent = meP?.hand ? 'Lower hand' : 'Raise hand';
  }

  // ---- media ---------------------------------------------------------------

  async startMedia() {
    const epoch = ++this.mediaEpoch;
    this.sfu?.close();
    this.pulled.clear();
    this.layers.reset();
    for (const name of this.pushed.values()) this.e2ee.detach(name);
    this.pushed.clear();
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
    sfu.addEventListener('track', (ev) => this.onRemoteTrack(ev.detail));
    // Network trouble is handled by the link first (ICE restarts on the same session, the
    // E2EE state untouched); `failed` means that did not work: a new session is needed.
    sfu.addEventListener('failed', () => this.mediaFailed('media connection failed'));
    sfu.addEventListener('ice-restart', (ev) => this.view.updateTile('local', { conn: [`media reconnecting (${ev.detail.attempt})`, 'warn'] }));
    sfu.addEventListener('problem', (ev) => this.note(ev.detail));
    sfu.addEventListener('pull-error', (ev) => this.note(`cannot receive ${ev.detail.trackName}: ${ev.detail.error}`));
    sfu.addEventListener('state', (ev) => this.view.updateTile('local', { conn: [`media ${ev.detail}`, ev.detail === 'connected' ? 'ok' : 'warn'] }));
    try {
      const sessionId = await sfu.start();
      if (epoch !== this.mediaEpoch) return;
      this.mediaSessions = (this.mediaSessions ?? 0) + 1;
      await this.localReady;
      if (epoch !== this.mediaEpoch) return;
      // Every local track in one negotiation, then the pulls. (Pushing first keeps this
      // page's own audio on the first m-line, the BUNDLE tag, for the session's life: a
      // pulled track there would close it when its publisher leaves.)
      await this.pushLocalMany([
        ['audio', this.local.audio], ['video', this.local.video], ['screenshare', this.local.screen],
      ], sessionId);
      if (epoch !== this.mediaEpoch) return;
      await this.syncPulls();
    } catch (err) {
      if (epoch === this.mediaEpoch) this.mediaFailed(err.message);
    }
  }

  async pushLocal(kind, track, sessionId) {
    await this.pushLocalMany([[kind, track]], sessionId);
  }

  /** Pushes `[kind, track]` pairs (null tracks skipped) in one negotiation and announces them. */
  async pushLocalMany(pairs, sessionId) {
    const list = pairs.filter(([, track]) => track);
    if (!list.length || this.flags.receiveOnly) return;
    const names = await this.sfu.pushMany(list.map(([kind, track]) => ({
      track, info: { kind, codec: this.codec, participantId: this.me, simulcast: this.flags.simulcast },
    })));
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
    const sfu = this.sfu;
    if (sfu) {
      if (state.level !== 'ok') sfu.stopSending();
      for (const trackName of this.pushed.values()) {
        sfu.setSending(trackName, this.e2ee.canSend(trackName)).catch((err) => this.note(`sending ${trackName}: ${err.message}`));
      }
    }
    this.renderSendState(state);
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

  /** The persistent E2EE state: red with the reason and what to do while this page cannot encrypt. */
  renderSendState(state) {
    const alert = $('e2ee-alert');
    const bad = state.level === 'bad';
    if (alert) {
      alert.hidden = !bad;
      alert.dataset.level = state.level;
      $('e2ee-alert-reason').textContent = bad ? state.reason : '';
      $('e2ee-alert-advice').textContent = bad ? state.advice : '';
      $('e2ee-alert-reload').hidden = !(bad && state.fatal);
      $('e2ee-alert-reload').onclick = () => location.reload();
    }
    if (bad) this.view.safety({ ...this.e2ee.status, phase: 'failed' });
    else if (this.shownBad) this.view.safety(this.e2ee.status);
    this.shownBad = bad;
    if (this.flags.receiveOnly) return;
    const pill = {
      ok: ['E2EE · sending encrypted', 'ok'],
      wait: ['not sending yet: waiting for keys', 'warn'],
      off: ['not sending (observer)', 'warn'],
      bad: ['NOT SENDING: cannot encrypt', 'bad'],
    }[state.level];
    this.view.updateTile('local', { e2ee: pill });
  }

  mediaFailed(why) {
    this.note(`Media: ${why}; reconnecting`);
    for (const [kind, trackName] of this.pushed) this.link.send({ type: 'unpublish', track_name: trackName });
    for (const p of this.participants.values()) {
      if (p.id !== this.me) this.view.updateTile(String(p.id), { conn: ['reconnecting', 'warn'] });
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
    for (const [key, t] of this.view.tiles) {
      if (key === 'local') continue;
      for (const tr of t.stream.getTracks()) t.stream.removeTrack(tr);
    }
  }

  /** Pulls every track other participants publish that is not pulled yet; drops pulls of gone tracks. */
  async syncPulls() {
    const sfu = this.sfu;
    if (!sfu?.sessionId) return;
    const wanted = [];
    const live = new Set();
    for (const p of this.participants.values()) {
      if (p.id === this.me) continue;
      for (const t of p.tracks.values()) {
        live.add(t.track_name);
        if (this.pulled.has(t.track_name)) continue;
        this.pulled.set(t.track_name, { mid: null, participantId: p.id, kind: t.kind });
        // Video starts on the layer its tile wants (null: the SFU's best until the tile is laid out).
        const preferredRid = t.kind === 'audio' ? null : this.layers.wanted(tileKey(p.id, t.kind));
        wanted.push({ sessionId: t.session_id, trackName: t.track_name, preferredRid, info: { participantId: p.id, kind: t.kind } });
      }
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
        wanted.forEach((w, i) => {
          const entry = this.pulled.get(w.trackName);
          if (!entry) return;
          if (mids[i]) {
            entry.mid = mids[i];
            if (entry.kind !== 'audio') this.layers.pulledWith(tileKey(entry.participantId, entry.kind), w.preferredRid);
          } else this.pulled.delete(w.trackName); // retried on the next change
        });
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
    const tile = this.view.tile(key, { name: info.kind === 'screenshare' ? `${p?.name ?? '?'} (screen)` : p?.name ?? '?' });
    if (track.kind === 'video') this.layers.observe(key, tile.video);
    for (const old of tile.stream.getTracks()) if (old.kind === track.kind) tile.stream.removeTrack(old);
    tile.stream.addTrack(track);
    tile.video.play().catch(() => {});
    track.addEventListener('ended', () => tile.stream.removeTrack(track));
  }

  // ---- controls ------------------------------------------------------------

  setEnabled(kind, enabled) {
    const track = kind === 'audio' ? this.local.audio : kind === 'video' ? this.local.video : this.local.screen;
    if (!track) return;
    track.enabled = enabled;
    const name = this.pushed.get(kind);
    if (name) this.link.send({ type: 'set_track', track_name: name, enabled });
    const button = kind === 'audio' ? $('toggle-mic') : kind === 'video' ? $('toggle-cam') : null;
    if (button) {
      button.setAttribute('aria-pressed', String(enabled));
      button.textContent = `${kind === 'audio' ? 'Mic' : 'Camera'} ${enabled ? 'on' : 'off'}`;
    }
    if (kind === 'video') this.view.updateTile('local', { camOn: enabled });
  }

  async toggleScreen() {
    if (this.local.screen) {
      const name = this.pushed.get('screenshare');
      this.local.stopScreen();
      this.view.removeTile('local:screen');
      if (name) {
        this.pushed.delete('screenshare');
        this.e2ee.detach(name);
        this.link.send({ type: 'unpublish', track_name: name });
        await this.sfu?.unpush(name).catch(() => {});
      }
      $('toggle-screen').setAttribute('aria-pressed', 'false');
      return;
    }
    const track = await this.local.startScreen();
    if (!track) {
      this.note(this.local.problem);
      return;
    }
    $('toggle-screen').setAttribute('aria-pressed', 'true');
    const tile = this.view.tile('local:screen', { name: 'Your screen', local: true });
    tile.stream.addTrack(track);
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

  /** Resume impossible: we come back as a new participant. */
  resetParticipant() {
    this.note('Session expired on the server: joining again');
    this.mediaEpoch += 1;
    this.sfu?.close();
    this.sfu = null;
    this.detachRemote();
    for (const key of [...this.view.tiles.keys()]) {
      if (key.startsWith('local')) continue;
      this.view.removeTile(key);
      this.layers.unobserve(key);
      this.tileStatus.forget(key);
    }
    this.participants.clear();
    this.me = null;
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
      clearTimeout(this.mediaTimer);
      clearTimeout(this.iceTimer);
      this.mediaEpoch += 1;
      this.sfu?.close();
      this.e2ee.stop();
    }
    this.local.stop();
    this.layers.close();
    for (const key of [...this.view.tiles.keys()]) this.view.removeTile(key);
    const reasons = {
      left: 'You left the call.', removed: 'A host removed you from the call.', 'room-locked': 'The room is locked.',
      'room-full': 'The room is full.', unauthorized: `The server refused the join token${detail ? ` (${detail})` : ''}: ask for a new link.`, replaced: 'You joined from another tab.',
    };
    $('left-reason').textContent = reasons[why] ?? `The call ended (${why}).`;
    this.view.show('left');
    this.view.banner(null);
    this.ended = true;
  }

  note(message) {
    if (!message) return;
    console.warn(`satsuma: ${message}`);
    this.problems.push({ at: Date.now(), message });
    if (this.problems.length > 50) this.problems.shift();
    this.view.banner(message, 'warn');
    clearTimeout(this.noteTimer);
    this.noteTimer = setTimeout(() => this.view.banner(null), 6000);
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

  async refreshStats() {
    if (this.ended) return;
    const snap = await this.snapshotStats();
    this.lastSnapshot = snap;
    const member = this.e2ee.status?.phase === 'member';
    const caps = globalThis.RTCRtpReceiver?.getCapabilities?.('video')?.codecs ?? null;
    for (const p of this.participants.values()) {
      if (p.id === this.me) continue;
      const rs = snap.remote.filter((r) => r.participantId === p.id);
      const camTrack = [...p.tracks.values()].find((t) => t.kind === 'video');
      for (const kind of ['video', 'screenshare']) {
        const key = tileKey(p.id, kind);
        if (!this.view.tiles.has(key)) continue;
        const video = rs.find((r) => r.kind === kind) ?? null;
        const { conn, media } = this.tileStatus.update(key, {
          video, audio: kind === 'video' ? rs.find((r) => r.kind === 'audio') ?? null : null,
          flags: this.flags, member, mediaState: snap.media,
          paused: this.layers.paused(key),
          camOn: kind === 'video' ? (camTrack ? camTrack.enabled !== false : undefined) : undefined,
          codec: video ? codecSupport(video.codec, video.negotiatedCodecs, caps) : null,
        });
        this.view.updateTile(key, { conn, e2ee: media });
      }
    }
  }
}

/** The tile of participant `id`'s track of `kind` (camera and audio share one). */
function tileKey(id, kind) {
  return kind === 'screenshare' ? `${id}:screen` : String(id);
}

// ---- lobby -------------------------------------------------------------------

async function lobby() {
  timeline.mark('pageLoad');
  $('boot-note')?.remove(); // the modules loaded and matched their integrity hashes
  const view = new CallView({ onHostAction: (a, t) => window.satsuma.call?.hostAction(a, t) });
  const local = new LocalMedia();
  // Test hooks (testParam): null unless the server runs with --test-hooks.
  const flags = {
    decrypt: testParam('decrypt') !== '0',
    mls: testParam('keyless') !== '1',
    testVisibleOnlyTo: testParam('test_visible_only_to'),
    testKeepKeys: testParam('test_keep_keys') === '1',
    legacy: params.get('transform') === 'legacy',
    receiveOnly: params.get('send') === '0',
    simulcast: params.get('simulcast') !== '0',
  };
  // The E2EE worker loads its WebAssembly and the identity key while the lobby shows
  // the preview: at `welcome` it only has to start the MLS member.
  const e2ee = new E2eeLink({ decrypt: flags.decrypt, mls: flags.mls, legacy: flags.legacy });
  e2ee.prepare();
  window.satsuma = {
    call: null, local, flags, testHooks,
    timeline: () => timeline.snapshot(),
    stats: () => window.satsuma.call?.snapshotStats() ?? null,
    safetyNumber: () => $('safety-number').dataset.digits || null,
  };
  if (testHooks) {
    window.satsuma.drill = {
      dropSocket: () => window.satsuma.call?.link.dropConnection(),
      stallWorker: (ms) => window.satsuma.call?.e2ee.drill('stall', ms),
      garbage: (on) => window.satsuma.call?.e2ee.drill('garbage', on),
      relayLag: (ms) => window.satsuma.call?.e2ee.drill('relayLag', ms),
      failMedia: () => window.satsuma.call?.sfu?.pc.close() ?? null,
      // Restarts ICE on the current SFU session now; resolves true once connected again.
      restartIce: () => window.satsuma.call?.sfu?.restartIce() ?? null,
    };
  }
  // A token or invite in the fragment decides the room (and the token the name).
  const fragment = takeFragment();
  const access = { token: fragment.token ?? null, invite: fragment.invite ?? null, redeemed: null };
  const granted = jwtClaims(access.token ?? access.invite ?? '');
  $('name').value = params.get('name') ?? localStorage.getItem('satsuma.name') ?? '';
  $('room').value = params.get('room') ?? fragment.room ?? 'lobby';
  if (granted && typeof granted.room === 'string') {
    $('room').value = granted.room;
    $('room').readOnly = true;
    if (access.token && typeof granted.name === 'string' && granted.name && !params.get('name')) $('name').value = granted.name;
  }
  window.satsuma.access = { token: Boolean(access.token), invite: Boolean(access.invite), dev: devTokens };
  const canJoin = Boolean(access.token || access.invite || devTokens);
  $('lobby-access').hidden = canJoin;
  $('join').disabled = !canJoin;
  if (access.token) $('lobby-via').textContent = 'You are joining with the link you were given.';
  else if (access.invite) $('lobby-via').textContent = 'You were invited: join with the name you choose.';
  $('lobby-via').hidden = !(access.token || access.invite);
  /** The join token: from the link, from the invite (redeemed once), or (dev mode) from POST /token. */
  const tokenFor = (room, name) => async () => {
    if (access.token) return access.token;
    if (access.invite) {
      const fresh = access.redeemed && (jwtClaims(access.redeemed)?.exp ?? 0) * 1000 > Date.now() + 10000;
      if (!fresh) access.redeemed = (await redeemInvite(access.invite, name)).token;
      return access.redeemed;
    }
    if (devTokens) return fetchToken(room, name);
    throw new Error('no join token: ask the host for an invite link');
  };
  const codec = params.get('codec');
  if (codec && ['VP8', 'VP9', 'H264'].includes(codec)) $('codec-select').value = codec;

  const preview = async () => {
    const [width, height] = (params.get('video') ?? '640x480').split('x').map(Number);
    await local.open({
      cameraId: $('camera-select').value || undefined, micId: $('mic-select').value || undefined,
      width: width || 640, height: height || 480, frameRate: Number(params.get('fps')) || undefined,
    });
    $('preview').srcObject = local.video ? new MediaStream([local.video]) : null;
    $('preview-note').hidden = !local.problem;
    $('preview-note').textContent = local.problem ?? '';
  };
  const fillDevices = async () => {
    const { cameras, mics } = await local.devices();
    for (const [select, list] of [[$('camera-select'), cameras], [$('mic-select'), mics]]) {
      const current = select.value;
      select.replaceChildren(...list.map((d) => Object.assign(document.createElement('option'), { value: d.id, textContent: d.label })));
      if (list.some((d) => d.id === current)) select.value = current;
    }
  };
  // The preview opens while the page goes on: an automatic join does not wait for the
  // camera (the call pushes local tracks once it is open).
  const previewReady = preview().finally(() => timeline.mark('lobbyReady'));
  const devicesReady = previewReady.then(fillDevices).catch(() => {});
  $('camera-select').onchange = preview;
  $('mic-select').onchange = preview;

  const join = async () => {
    timeline.mark('join');
    const name = $('name').value.trim() || 'Guest';
    const room = $('room').value.trim();
    // Redeem an invite before leaving the lobby, so a revoked or expired one says so here.
    if (access.invite && !access.redeemed) access.redeemed = (await redeemInvite(access.invite, name)).token;
    localStorage.setItem('satsuma.name', name);
    $('preview').srcObject = null;
    // Only hosts named by their token (host grant) may make invites (the server checks it too).
    const fetchJoinToken = tokenFor(room, name);
    const getToken = async () => {
      const token = await fetchJoinToken();
      const perms = jwtClaims(token)?.perms;
      $('invite-controls').hidden = !(Array.isArray(perms) && perms.includes('host'));
      return token;
    };
    const call = new Call({ room, name, codec: $('codec-select').value, local, view, flags, getToken, e2ee, localReady: previewReady });
    window.satsuma.call = call;
    $('toggle-mic').onclick = () => call.setEnabled('audio', !(local.audio?.enabled));
    $('toggle-cam').onclick = () => call.setEnabled('video', !(local.video?.enabled));
    $('toggle-screen').onclick = () => call.toggleScreen();
    $('toggle-hand').onclick = () => call.link.send({ type: 'hand', raised: !call.participants.get(call.me)?.hand });
    $('leave').onclick = () => call.leave();
    // A page that closes (tab closed, navigated away, reloaded) leaves the room at once, so
    // the room's next MLS change does not wait for it through its resume window. (A crash or
    // a lost network still takes the presence timeout; the coordinator does not wait for a
    // member whose connection is gone before `execute`.)
    window.addEventListener('pagehide', () => {
      if (!call.ended) call.leave();
    });
    $('lock-room').onchange = (ev) => call.link.send({ type: 'lock', locked: ev.target.checked });
    let lastInvite = null;
    $('make-invite').onclick = async () => {
      try {
        lastInvite = await call.createInvite({ role: $('invite-role').value });
        $('invite-link').value = lastInvite.link;
        $('invite-link').hidden = false;
        $('revoke-invite').hidden = false;
        $('invite-note').textContent = `Invite link made (valid until ${new Date(lastInvite.expires_at * 1000).toLocaleString()}).`;
        try {
          await navigator.clipboard.writeText(lastInvite.link);
          $('invite-note').textContent += ' Copied.';
        } catch { /* no clipboard permission: the link is shown to copy by hand */ }
      } catch (err) {
        $('invite-note').textContent = `Could not make an invite: ${err.message}`;
      }
    };
    $('revoke-invite').onclick = async () => {
      if (!lastInvite) return;
      try {
        await call.revokeInvite(lastInvite.invite_id);
        $('invite-note').textContent = 'Invite revoked: the link no longer works.';
        $('invite-link').hidden = true;
        $('revoke-invite').hidden = true;
        lastInvite = null;
      } catch (err) {
        $('invite-note').textContent = `Could not revoke: ${err.message}`;
      }
    };
    previewReady.catch(() => {}).then(() => {
      if (!local.audio) $('toggle-mic').disabled = true;
      if (!local.video) $('toggle-cam').disabled = true;
    });
    await call.start();
  };
  $('lobby-form').onsubmit = (ev) => {
    ev.preventDefault();
    if (!canJoin) return;
    join().catch((err) => view.banner(`Could not join: ${err.message}`, 'bad'));
  };
  $('rejoin').onclick = () => location.reload();
  if (params.get('autojoin') === '1' && canJoin) join().catch((err) => view.banner(`Could not join: ${err.message}`, 'bad'));
  await devicesReady;
  window.satsuma.lobbyReady = true;
}

lobby();
