// The media link: one RTCPeerConnection to the SFU that pushes this
// participant's tracks and pulls everyone else's. The SFU speaks the
// Cloudflare-Realtime-compatible sessions/tracks API; the page reaches it only
// through the coordinator's proxy, which ties the SFU session to this
// participant (Authorization: Bearer <resume token>).
//
// Every negotiation goes through one queue: the API is offer/answer based and
// two overlapping negotiations on one connection would glare. A join pushes its
// tracks and pulls everyone's in one offer (pushAndPull: receiving m-lines bound
// to remote tracks by mid); later pulls answer the SFU's offer (pull).
//
// ICE restarts: when the connection has been `disconnected` (or `failed`) for
// RESTART_AFTER_MS — by Chromium's ICE state, or because media that was flowing
// stopped and nothing at all has arrived for that long (Chromium reports
// `disconnected` only seconds later) — the link restarts ICE on the same SFU session (new ICE
// credentials through `PUT sessions/{id}/renegotiate` with an offer, in the same
// queue), and retries a few times with backoff. DTLS, SRTP, the tracks and the
// E2EE transforms stay as they are: the coordinator and MLS never hear of it.
// Only when that fails, or the SFU says the session is gone, does the link
// report `failed` (the app then starts a new session).
//
// Fail closed: a pushed track's sender is created without a track. The track
// goes on (`setSending(name, true)`) only when the E2EE send gate allows it
// (e2ee-link.js: transform attached and confirmed, sending key held), and comes
// off again (`replaceTrack(null)`) the moment it does not.

/** How long the connection may be `disconnected`/`failed` before ICE restarts. */
export const RESTART_AFTER_MS = 2000;
/** ICE restart attempts before giving up on the session. */
export const RESTART_ATTEMPTS = 4;
/** How long one restart attempt may take to connect. */
import { timeline } from './join-timeline.js';
import { contentHint, sendEncodings, simulcastCodec } from './layer-choice.js';
import { negotiatedCodec, receiveCapabilities, receiveFilter, sendPreferences } from './codec-choice.js';
import { API_ERROR_CODE } from './wire.js';

const RESTART_CONNECT_MS = 6000;
/** How long the renegotiate request of a restart may take. */
const RESTART_REQUEST_MS = 5000;
/** How often a pending restart request is sent again because the path came back. */
const RESTART_RESENDS = 2;
/** How often the link looks at what it received (the silence detector). */
const LIVENESS_POLL_MS = 500;

export class SfuLink extends EventTarget {
  /**
   * @param {object} opts
   * @param {string} opts.base proxy URL prefix (e.g. `/sfu`) standing for `/v1/apps/{appId}`.
   * @param {() => string} opts.auth returns the current bearer token.
   * @param {(direction: 'send'|'recv', transceiver: RTCRtpTransceiver, info: object) => void} opts.onTransceiver
   *   called as soon as a transceiver exists, before negotiation (E2EE transforms go on here).
   * @param {boolean} [opts.encodedInsertableStreams] create the connection for `createEncodedStreams()` transforms.
   * @param {RTCIceServer[]} [opts.iceServers] STUN/TURN servers with this participant's TURN
   *   credentials (the coordinator's `welcome.ice_servers`); none: host candidates only.
   */
  constructor({ base, auth, onTransceiver, encodedInsertableStreams = false, iceServers = [] }) {
    super();
    this.base = base.replace(/\/$/, '');
    this.auth = auth;
    this.onTransceiver = onTransceiver;
    this.sessionId = null;
    this.sessionReady = null; // start()'s promise
    this.queue = Promise.resolve();
    this.pulls = new Map(); // mid -> info
    this.pushes = new Map(); // trackName -> {transceiver, info, track, sending}
    this.attachedEarly = new WeakSet(); // receiving transceivers of pushAndPull (transform on at creation)
    this.closed = false;
    // ICE restarts of this connection (tests read these through window.satsuma.stats()).
    this.restarts = { attempted: 0, succeeded: 0, failed: 0, restarting: false, last: null };
    this.restartTimer = null;
    this.restarting = null; // the running restartIce() promise
    this.iceCredentialsUnsettled = false; // a restart offer went out and its answer was not applied
    this.everConnected = false;
    this.liveness = null; // {activity, at, rtp, rtpAt}: see #checkLiveness
    this.livenessTimer = null;
    const config = { bundlePolicy: 'max-bundle', iceServers };
    // Chromium's legacy transform API: without this, createEncodedStreams() throws.
    if (encodedInsertableStreams) config.encodedInsertableStreams = true;
    this.pc = new RTCPeerConnection(config);
    this.pc.addEventListener('track', (ev) => this.#onTrack(ev));
    this.pc.addEventListener('connectionstatechange', () => this.#onConnectionState());
    this.pc.addEventListener('iceconnectionstatechange', () => {
      if (['connected', 'completed'].includes(this.pc.iceConnectionState)) timeline.mark('ice');
      this.#watchIce();
    });
  }

  get connectionState() {
    return this.pc.connectionState;
  }

  /**
   * Creates the SFU session. A push may start before it resolves: its offer is made while
   * the session is being created, and only its request waits for the session (`sessionReady`).
   */
  start() {
    this.sessionReady = (async () => {
      const res = await this.#api('POST', '/sessions/new');
      if (!res.sessionId) throw new Error('SFU returned no sessionId');
      this.sessionId = res.sessionId;
      timeline.mark('sfuSession');
      return this.sessionId;
    })();
    return this.sessionReady;
  }

  /**
   * Pushes a local track; returns its SFU track name. The sender starts
   * without the track: `setSending(trackName, true)` puts it on.
   * @param {MediaStreamTrack} track
   * @param {{kind: 'audio'|'video'|'screenshare', codec?: string}} info
   */
  async push(track, info) {
    const [name] = await this.pushMany([{ track, info }]);
    return name;
  }

  /**
   * Pushes several local tracks in one negotiation (one offer, one request);
   * returns their SFU track names in order. Senders start without their track.
   * @param {{track: MediaStreamTrack, info: {kind: 'audio'|'video'|'screenshare', codec?: string}}[]} list
   */
  pushMany(list) {
    return this.pushAndPull(list, []).then((r) => r.names);
  }

  /**
   * Pushes local tracks and pulls remote tracks in ONE negotiation: this page's offer
   * carries the pushed tracks' m-lines and, after them, a receiving m-line for each pulled
   * track (the SFU binds a remote track named with the mid of a receiving transceiver of
   * the offer). A join thus needs one offer/answer instead of a push and then a pull
   * answering the SFU's offer (two more requests and three SDP steps on the main thread).
   * Resolves `{names, mids}`: the pushed tracks' names, and the mid of each pulled track
   * (null: refused, `pull-error` sent). `wanted` as for `pull`; empty: a plain push.
   */
  pushAndPull(list, wanted) {
    return this.#serial(async () => {
      if (list.length === 0) return { names: [], mids: [] };
      const added = list.map(({ track, info }) => {
        // By kind, not by track: nothing can be sent before the gate opens.
        // Video: simulcast layers (layer-choice.js: camera q/h/f, screen h/f).
        const size = track.kind === 'video' ? track.getSettings?.() ?? {} : {};
        const transceiver = this.pc.addTransceiver(track.kind, {
          direction: 'sendonly',
          sendEncodings: track.kind === 'video'
            ? sendEncodings(info.kind, { simulcast: info.simulcast !== false && simulcastCodec(info.codec), width: size.width, height: size.height })
            : undefined,
        });
        const hint = track.kind === 'video' ? contentHint(info.kind) : '';
        if (hint && 'contentHint' in track) track.contentHint = hint;
        if (track.kind === 'video') preferCodec(transceiver, info.codec ?? 'VP8');
        const trackName = `${info.kind}-${crypto.randomUUID()}`;
        this.onTransceiver('send', transceiver, { ...info, trackName });
        return { track, info, transceiver, trackName };
      });
      // Receiving m-lines after the pushed ones (this page's audio stays the BUNDLE tag). An
      // offerer's receiver is ready to receive once its offer is set, so the E2EE transform
      // goes on now, not in the answer's `track` event.
      const receiving = wanted.map((w) => {
        const transceiver = this.pc.addTransceiver(w.info.kind === 'audio' ? 'audio' : 'video', { direction: 'recvonly' });
        this.onTransceiver('recv', transceiver, { ...w.info, trackName: w.trackName, sessionId: w.sessionId });
        this.attachedEarly.add(transceiver);
        return { w, transceiver };
      });
      await this.pc.setLocalDescription(await this.pc.createOffer());
      // The offer was made while the session was being created (start()).
      if (!this.sessionId) await this.sessionReady;
      const res = await this.#api('POST', `/sessions/${this.sessionId}/tracks/new`, {
        sessionDescription: { type: 'offer', sdp: this.pc.localDescription.sdp },
        tracks: [
          ...added.map((a) => ({ location: 'local', mid: a.transceiver.mid, trackName: a.trackName })),
          ...receiving.map(({ w, transceiver }) => ({
            location: 'remote', mid: transceiver.mid, sessionId: w.sessionId, trackName: w.trackName,
            ...(w.preferredRid ? { simulcast: { preferredRid: w.preferredRid } } : {}),
          })),
        ],
      });
      for (const a of added) {
        const entry = (res.tracks ?? []).find((t) => t.trackName === a.trackName && !t.sessionId);
        if (!entry || entry.errorCode) throw new Error(`push refused: ${entry?.errorDescription ?? entry?.errorCode ?? 'no track in reply'}`);
      }
      // Known before the answer is applied: its `track` events (E2EE transforms) need them.
      const mids = receiving.map(({ w, transceiver }) => {
        const entry = (res.tracks ?? []).find((t) => t.mid === transceiver.mid && t.sessionId);
        if (!entry || entry.errorCode) {
          this.dispatchEvent(new CustomEvent('pull-error', { detail: { ...w, error: entry?.errorDescription ?? entry?.errorCode ?? 'no track in reply' } }));
          return null;
        }
        this.pulls.set(transceiver.mid, { ...w.info, trackName: w.trackName, sessionId: w.sessionId, mid: transceiver.mid });
        return transceiver.mid;
      });
      // Simulcast needs ~1.3 Mbit/s of uplink estimate before Chromium turns the f layer on;
      // from its default start (300 kbit/s) that takes it 20-40 s. Start higher.
      const answer = added.some((a) => a.track.kind === 'video')
        ? { type: res.sessionDescription.type, sdp: withStartBitrate(res.sessionDescription.sdp, START_BITRATE_KBPS) }
        : res.sessionDescription;
      await this.pc.setRemoteDescription(answer);
      for (const a of added) {
        // Video goes out in the codec picked (the SFU's answer may list another first).
        const codec = a.track.kind === 'video' ? (a.info.codec ?? 'VP8') : null;
        this.pushes.set(a.trackName, { transceiver: a.transceiver, info: a.info, track: a.track, sending: false, codec });
      }
      await this.#keepCodecs();
      // A refused pull's m-line carries nothing; it is closed like any other.
      const refused = receiving.filter((r, i) => !mids[i] && r.transceiver.mid);
      if (refused.length) await this.#closeMids(refused.map((r) => r.transceiver.mid), refused.map((r) => r.transceiver));
      return { names: added.map((a) => a.trackName), mids };
    });
  }

  /**
   * Puts the pushed track on its sender (`on`) or takes it off. Only the E2EE
   * send gate calls this with `on`. Changes of one sender run in order, each
   * after the previous `replaceTrack` settled, so the last call wins.
   */
  setSending(trackName, on) {
    const p = this.pushes.get(trackName);
    if (!p) return Promise.resolve();
    p.sending = Boolean(on);
    return this.#applySending(p);
  }

  /** Takes the track off every sender of the connection (the gate closed). */
  stopSending() {
    const done = [];
    for (const p of this.pushes.values()) {
      p.sending = false;
      done.push(this.#applySending(p));
    }
    // Belt and braces: any other sender that carries a track (none should).
    const known = new Set([...this.pushes.values()].map((p) => p.transceiver.sender));
    if (this.pc.signalingState !== 'closed') {
      for (const sender of this.pc.getSenders()) {
        if (sender.track && !known.has(sender)) done.push(sender.replaceTrack(null).catch(() => {}));
      }
    }
    return Promise.all(done);
  }

  #applySending(p) {
    p.chain = (p.chain ?? Promise.resolve()).then(async () => {
      if (this.closed) return;
      const want = p.sending ? p.track : null;
      if (p.transceiver.sender.track !== want) await p.transceiver.sender.replaceTrack(want);
    });
    const run = p.chain;
    p.chain = run.catch(() => {});
    return run;
  }

  /** `[{trackName, kind, sending}]`: which pushed tracks are on their sender now. */
  sending() {
    return [...this.pushes].map(([trackName, p]) => ({ trackName, kind: p.info.kind, sending: Boolean(p.transceiver.sender.track) }));
  }

  /** Swaps the media of a pushed track (device change) without renegotiating. */
  async replace(trackName, track) {
    const p = this.pushes.get(trackName);
    if (!p) return;
    p.track = track;
    await this.#applySending(p);
  }

  /**
   * Asks the SFU to request a keyframe from this page's own encoder for the
   * pushed tracks `trackNames` (a Satsuma extension of the API). Not queued
   * behind negotiations: it changes no SDP.
   */
  async requestKeyframes(trackNames) {
    if (!this.sessionId || this.closed) return;
    const res = await this.#api('POST', `/sessions/${this.sessionId}/tracks/keyframe`, {
      tracks: trackNames.map((trackName) => ({ trackName })),
    });
    const refused = (res.tracks ?? []).filter((t) => t.errorCode && ![API_ERROR_CODE.RATE_LIMITED, API_ERROR_CODE.NOT_CONNECTED].includes(t.errorCode));
    if (refused.length) throw new Error(refused.map((t) => `${t.trackName}: ${t.errorDescription ?? t.errorCode}`).join('; '));
  }

  /**
   * The SFU's state of this session (`GET sessions/{id}`): its tracks and
   * `activeSpeaker` (`{sessionId, trackName}` of the pulled audio track that
   * speaks now, absent when nobody does). Null before the session exists.
   */
  async sessionState() {
    if (!this.sessionId || this.closed) return null;
    return this.#api('GET', `/sessions/${this.sessionId}`, undefined, { timeoutMs: 5000 });
  }

  /** Keyframes encoded so far by the senders of the pushed tracks `trackNames` (all layers). */
  async keyframesEncoded(trackNames) {
    let total = 0;
    for (const name of trackNames) {
      const p = this.pushes.get(name);
      if (!p) continue;
      const report = await p.transceiver.sender.getStats();
      report.forEach((r) => {
        if (r.type === 'outbound-rtp') total += r.keyFramesEncoded ?? 0;
      });
    }
    return total;
  }

  /**
   * Sends pushed video track `trackName` in `codec` (VP8, H264, VP9, AV1: one
   * of the codecs its m-line negotiated) from now on, without a negotiation
   * (`encodings[i].codec`). Resolves false if that codec was not negotiated.
   */
  async setSendCodec(trackName, codec) {
    const p = this.pushes.get(trackName);
    if (!p || p.track?.kind !== 'video') return false;
    p.codec = codec;
    return this.#keepCodec(p);
  }

  /** The codec each pushed video track is meant to go out in: `{trackName: codec}`. */
  sendCodecs() {
    return Object.fromEntries([...this.pushes].filter(([, p]) => p.codec).map(([name, p]) => [name, p.codec]));
  }

  /**
   * Puts every pushed video track back on its codec: a negotiation clears a
   * sender's `encodings[i].codec` (Chromium), and the SFU's answer lists its own
   * preference first.
   */
  async #keepCodecs() {
    for (const p of this.pushes.values()) {
      if (p.codec) await this.#keepCodec(p).catch((err) => this.dispatchEvent(new CustomEvent('problem', { detail: `video codec: ${err.message}` })));
    }
  }

  async #keepCodec(p) {
    const sender = p.transceiver.sender;
    const params = sender.getParameters();
    const entry = negotiatedCodec(params.codecs, p.codec);
    const encodings = params.encodings ?? [];
    if (!entry || !encodings.length) return false;
    const same = (c) => c && c.mimeType === entry.mimeType && (c.sdpFmtpLine ?? '') === (entry.sdpFmtpLine ?? '');
    if (encodings.every((e) => same(e.codec))) return true;
    for (const e of encodings) e.codec = entry;
    await sender.setParameters(params);
    return true;
  }

  /** Stops pushing a track. */
  unpush(trackName) {
    return this.#serial(async () => {
      const p = this.pushes.get(trackName);
      if (!p) return;
      this.pushes.delete(trackName);
      await this.#closeMids([p.transceiver.mid], [p.transceiver]);
    });
  }

  /**
   * Pulls remote tracks; resolves with their mids. `info` is passed back in
   * the `track` event and to `onTransceiver` (who and what the track is).
   * @param {{sessionId: string, trackName: string, info: object}[]} wanted
   */
  pull(wanted) {
    return this.#serial(async () => {
      if (wanted.length === 0) return [];
      const res = await this.#api('POST', `/sessions/${this.sessionId}/tracks/new`, {
        tracks: wanted.map((w) => ({
          location: 'remote', sessionId: w.sessionId, trackName: w.trackName,
          ...(w.preferredRid ? { simulcast: { preferredRid: w.preferredRid } } : {}),
        })),
      });
      const mids = [];
      for (const [i, entry] of (res.tracks ?? []).entries()) {
        const want = wanted.find((w) => w.trackName === entry.trackName) ?? wanted[i];
        if (entry.errorCode || !entry.mid) {
          this.dispatchEvent(new CustomEvent('pull-error', { detail: { ...want, error: entry.errorDescription ?? entry.errorCode } }));
          mids.push(null);
          continue;
        }
        this.pulls.set(entry.mid, { ...want.info, trackName: want.trackName, sessionId: want.sessionId, mid: entry.mid });
        mids.push(entry.mid);
      }
      if (res.requiresImmediateRenegotiation && res.sessionDescription) {
        await this.pc.setRemoteDescription(res.sessionDescription);
        limitReceiveCodecs(this.pc, mids);
        await this.pc.setLocalDescription(await this.pc.createAnswer());
        await this.#keepCodecs();
        const reneg = await this.#api('PUT', `/sessions/${this.sessionId}/renegotiate`, {
          sessionDescription: { type: 'answer', sdp: this.pc.localDescription.sdp },
        });
        if (reneg?.errorCode) throw new Error(`renegotiate: ${reneg.errorDescription ?? reneg.errorCode}`);
      }
      return mids;
    });
  }

  /**
   * Asks the SFU for simulcast layers of pulled tracks: `[{mid, rid}]`
   * (`PUT tracks/update` with `simulcast.preferredRid`, the highest layer
   * wanted). Not queued behind negotiations: updates change no SDP. Resolves
   * with the mids the SFU accepted; throws when the request failed.
   */
  async setPreferredRids(list) {
    if (!this.sessionId || this.closed) return [];
    const tracks = list.map(({ mid, rid }) => ({ mid, rid, pull: this.pulls.get(mid) })).filter((t) => t.pull);
    if (tracks.length === 0) return [];
    const res = await this.#api('PUT', `/sessions/${this.sessionId}/tracks/update`, {
      tracks: tracks.map(({ mid, rid, pull }) => ({
        location: 'remote', mid, sessionId: pull.sessionId, trackName: pull.trackName, simulcast: { preferredRid: rid },
      })),
    });
    const results = res.tracks ?? [];
    return tracks.filter((t, i) => results[i] && !results[i].errorCode).map((t) => t.mid);
  }

  /**
   * The codecs (mimeTypes) the m-line `mid` negotiated for receiving; null
   * before its negotiation completed. An empty list: nothing this browser
   * decodes was offered.
   */
  receiveCodecs(mid) {
    const t = this.pc.getTransceivers().find((x) => x.mid === mid);
    if (!t || !t.currentDirection || t.currentDirection === 'stopped') return null;
    try {
      return t.receiver.getParameters().codecs.map((c) => c.mimeType);
    } catch {
      return null;
    }
  }

  /** Stops pulling the tracks with these mids. */
  unpull(mids) {
    return this.#serial(async () => {
      const live = mids.filter((m) => this.pulls.has(m));
      if (live.length === 0) return;
      for (const m of live) this.pulls.delete(m);
      const transceivers = this.pc.getTransceivers().filter((t) => live.includes(t.mid));
      await this.#closeMids(live, transceivers);
    });
  }

  /** Per-mid RTP statistics: `{mid: {kind, direction, framesDecoded, ...}}`. */
  async stats() {
    const report = await this.pc.getStats();
    const out = {};
    let pair = null;
    report.forEach((s) => {
      if (s.type === 'inbound-rtp' || s.type === 'outbound-rtp') {
        // A simulcast sender has one outbound-rtp per layer (rid) on one mid.
        out[s.rid ? `${s.mid}:${s.rid}` : s.mid ?? s.id] = {
          type: s.type, kind: s.kind, mid: s.mid, rid: s.rid ?? null,
          frameWidth: s.frameWidth ?? 0, frameHeight: s.frameHeight ?? 0,
          qualityLimitationReason: s.qualityLimitationReason ?? null, fps: s.framesPerSecond ?? null,
          packetsReceived: s.packetsReceived ?? 0, bytesReceived: s.bytesReceived ?? 0,
          framesReceived: s.framesReceived ?? 0, framesDecoded: s.framesDecoded ?? 0,
          framesDropped: s.framesDropped ?? 0, keyFramesDecoded: s.keyFramesDecoded ?? 0,
          totalSamplesReceived: s.totalSamplesReceived ?? 0, audioLevel: s.audioLevel ?? 0,
          packetsSent: s.packetsSent ?? 0, bytesSent: s.bytesSent ?? 0, framesEncoded: s.framesEncoded ?? 0,
          pliCount: s.pliCount ?? 0, codecId: s.codecId,
        };
      } else if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') {
        pair = { rtt: s.currentRoundTripTime, availableOutgoingBitrate: s.availableOutgoingBitrate ?? null };
      }
    });
    report.forEach((s) => {
      if (s.type === 'codec') {
        for (const v of Object.values(out)) if (v.codecId === s.id) v.codec = s.mimeType;
      }
    });
    return { tracks: out, pair };
  }

  /**
   * Replaces the STUN/TURN servers (fresh TURN credentials before the old ones
   * expire). The browser uses them from its next ICE gathering: an ICE restart.
   */
  setIceServers(iceServers) {
    if (this.closed) return;
    try {
      this.pc.setConfiguration({ ...this.pc.getConfiguration(), iceServers });
    } catch (err) {
      this.dispatchEvent(new CustomEvent('problem', { detail: `cannot update the ICE servers: ${err.message}` }));
    }
  }

  close() {
    this.closed = true;
    clearTimeout(this.restartTimer);
    clearInterval(this.livenessTimer);
    this.pc.close();
  }

  /**
   * Restarts ICE on the same SFU session until it connects: up to
   * RESTART_ATTEMPTS attempts with backoff. Dispatches `ice-restart`
   * (`{attempt}`) per attempt and `ice-restarted` on success; on failure, or
   * when the SFU no longer knows the session, `failed`. Runs once at a time.
   */
  restartIce() {
    if (this.closed || this.restarts.restarting) return this.restarting;
    clearTimeout(this.restartTimer);
    this.restartTimer = null;
    this.restarts.restarting = true;
    this.restarting = this.#restartLoop().finally(() => {
      this.restarts.restarting = false;
      // Still (or again) down after a success: the watch starts over.
      this.#watchIce();
    });
    return this.restarting;
  }

  async #restartLoop() {
    const trigger = this.restarts.trigger ?? 'requested';
    this.restarts.trigger = null;
    for (let attempt = 1; attempt <= RESTART_ATTEMPTS; attempt++) {
      if (this.closed) return false;
      if (attempt > 1) await sleep(Math.min(4000, 500 * 2 ** (attempt - 2)));
      if (this.closed) return false;
      this.restarts.attempted += 1;
      this.restarts.last = { at: Date.now(), attempt, trigger, outcome: 'pending' };
      this.dispatchEvent(new CustomEvent('ice-restart', { detail: { attempt } }));
      try {
        await this.#serial(() => this.#renegotiateIce(), { resync: false });
      } catch (err) {
        this.restarts.last.outcome = `error: ${err.message}`;
        if (err.sessionGone) break;
        continue;
      }
      if (await this.#connectedWithin(RESTART_CONNECT_MS)) {
        this.restarts.succeeded += 1;
        this.restarts.last.outcome = 'connected';
        this.dispatchEvent(new CustomEvent('ice-restarted', { detail: { attempt } }));
        return true;
      }
      this.restarts.last.outcome = `not connected (${this.pc.connectionState})`;
    }
    if (this.closed) return false;
    // The connection may have come back by itself meanwhile.
    if (await this.#connectedWithin(1500)) {
      this.restarts.succeeded += 1;
      if (this.restarts.last) this.restarts.last.outcome = 'connected';
      return true;
    }
    this.restarts.failed += 1;
    this.dispatchEvent(new CustomEvent('failed'));
    return false;
  }

  /** One restart negotiation: an offer with new ICE credentials, the SFU's answer. */
  async #renegotiateIce() {
    if (this.pc.signalingState !== 'stable') await this.pc.setLocalDescription({ type: 'rollback' });
    this.pc.restartIce();
    await this.pc.setLocalDescription(await this.pc.createOffer({ iceRestart: true }));
    let res;
    // Unsettled until the SFU's answer is applied: the SFU may take the offer even when its
    // answer never arrives here.
    this.iceCredentialsUnsettled = true;
    try {
      res = await this.#renegotiateRequest(this.pc.localDescription.sdp);
      if (res.sessionDescription?.type !== 'answer') throw new Error('renegotiate: no answer to the restart offer');
    } catch (err) {
      if (this.pc.signalingState === 'have-local-offer') await this.pc.setLocalDescription({ type: 'rollback' }).catch(() => {});
      throw err;
    }
    await this.pc.setRemoteDescription(res.sessionDescription);
    this.iceCredentialsUnsettled = false;
    await this.#keepCodecs();
  }

  /**
   * Sends the restart offer. A restart usually starts while the path is still
   * down, so the request sits in TCP retransmission backoff (next try up to
   * seconds after the path is back). When something arrives on the media
   * connection again while the request is pending, the path is back: the
   * request is abandoned and sent again on a fresh connection at once (at most
   * RESTART_RESENDS times). The SFU answers a repeated offer with the same new
   * credentials, so a copy that got through before is harmless.
   */
  async #renegotiateRequest(sdp) {
    const body = { sessionDescription: { type: 'offer', sdp } };
    const path = `/sessions/${this.sessionId}/renegotiate`;
    const deadline = performance.now() + RESTART_REQUEST_MS;
    for (let sent = 0; ; sent++) {
      const abort = new AbortController();
      const left = Math.max(0, deadline - performance.now());
      const timer = setTimeout(() => abort.abort(new Error(`renegotiate: no answer within ${RESTART_REQUEST_MS} ms`)), left);
      let watching = sent < RESTART_RESENDS;
      const request = this.#api('PUT', path, body, { signal: abort.signal });
      const pathBack = watching ? this.#activityAfter(await this.#activity(), () => watching) : null;
      try {
        const winner = await Promise.race([
          request.then((r) => ({ r })),
          ...(pathBack ? [pathBack.then((back) => ({ back }))] : []),
        ]);
        if (winner.r) return winner.r;
        if (!winner.back) return await request;
        this.restarts.resent = (this.restarts.resent ?? 0) + 1;
        abort.abort(new Error('renegotiate: resent, the path is back'));
        request.catch(() => {});
      } finally {
        watching = false;
        clearTimeout(timer);
      }
      if (performance.now() >= deadline) throw new Error(`renegotiate: no answer within ${RESTART_REQUEST_MS} ms`);
    }
  }

  /**
   * Resolves true when something arrives on the connection after `start`
   * (polled every 100 ms), false once `keepWatching()` says to stop.
   */
  async #activityAfter(start, keepWatching) {
    while (keepWatching() && !this.closed) {
      await sleep(100);
      if (!keepWatching()) return false;
      const now = await this.#activity();
      if (start && now && now.activity > start.activity) return true;
    }
    return false;
  }

  /**
   * Resolves true once the connection is `connected` and something arrived on it
   * after the restart's answer was applied (a state that never left `connected`
   * proves nothing); false after `ms`, or when it `failed`.
   */
  async #connectedWithin(ms) {
    const end = performance.now() + ms;
    const start = await this.#activity();
    while (!this.closed && performance.now() < end) {
      const state = this.pc.connectionState;
      if (state === 'failed' || state === 'closed') return false;
      if (state === 'connected') {
        const now = await this.#activity();
        if (start && now && now.activity > start.activity) return true;
      }
      await sleep(100);
    }
    return false;
  }

  /**
   * What arrived on the connection so far: `activity` (transport bytes plus STUN
   * requests and responses on every candidate pair) and `rtp` (media packets).
   */
  async #activity() {
    const report = await this.pc.getStats().catch(() => null);
    if (!report) return null;
    let activity = 0;
    let rtp = 0;
    report.forEach((s) => {
      if (s.type === 'transport') activity += s.bytesReceived ?? 0;
      else if (s.type === 'candidate-pair') activity += (s.responsesReceived ?? 0) + (s.requestsReceived ?? 0);
      else if (s.type === 'inbound-rtp') rtp += s.packetsReceived ?? 0;
    });
    return { activity, rtp };
  }

  /**
   * The silence detector: media was arriving, and then nothing at all (no media,
   * no RTCP, no STUN) for RESTART_AFTER_MS: the path is gone even if Chromium
   * still says `connected`. A page that received no media just before the
   * silence (alone, or everyone muted) is not restarted by it.
   */
  async #checkLiveness() {
    if (this.closed || !this.everConnected || this.restarts.restarting || this.polling) return;
    this.polling = true;
    try {
      const seen = await this.#activity();
      if (!seen || this.closed || this.restarts.restarting) return;
      const now = performance.now();
      const l = this.liveness;
      if (!l) {
        this.liveness = { ...seen, at: now, rtpAt: seen.rtp > 0 ? now : null };
        return;
      }
      if (seen.rtp > l.rtp) l.rtpAt = now;
      if (seen.activity > l.activity) l.at = now;
      l.rtp = seen.rtp;
      l.activity = seen.activity;
      const flowing = l.rtpAt !== null && l.at - l.rtpAt < 1000;
      if (flowing && now - l.at >= RESTART_AFTER_MS) {
        this.restarts.trigger = 'silence';
        this.restartIce();
      }
    } finally {
      this.polling = false;
    }
  }

  /** Starts the restart timer while the connection is down, stops it when it is back. */
  #watchIce() {
    if (this.closed || this.restarts.restarting || !this.everConnected) return;
    const state = this.pc.connectionState;
    const ice = this.pc.iceConnectionState;
    const down = state === 'disconnected' || state === 'failed' || ice === 'disconnected' || ice === 'failed';
    if (!down) {
      clearTimeout(this.restartTimer);
      this.restartTimer = null;
      return;
    }
    if (this.restartTimer || !this.sessionId) return;
    this.restartTimer = setTimeout(() => {
      this.restartTimer = null;
      this.restarts.trigger = `ice ${this.pc.iceConnectionState}`;
      this.restartIce();
    }, RESTART_AFTER_MS);
  }

  /**
   * Ends the m-lines `mids`: a stopped transceiver's m-line is rejected (port
   * 0). The BUNDLE tag (the first m-line of the group, whose transport every
   * other m-line shares) is never rejected: Chromium would move the tag and
   * give the next m-line a new ICE and DTLS transport the SFU does not know, and
   * the connection would fail (a receive-only page's tag is a pulled track, gone
   * when its publisher leaves). That m-line turns `inactive` instead and stays,
   * carrying nothing, for the life of the connection (as mediasoup-client does).
   */
  async #closeMids(mids, transceivers) {
    const tag = bundleTag(this.pc);
    for (const t of transceivers) {
      if (t.mid !== null && t.mid === tag) {
        t.direction = 'inactive';
        await t.sender.replaceTrack(null).catch(() => {});
        continue;
      }
      try { t.stop(); } catch { /* already stopped */ }
    }
    try {
      await this.pc.setLocalDescription(await this.pc.createOffer());
      const res = await this.#api('PUT', `/sessions/${this.sessionId}/tracks/close`, {
        tracks: mids.map((mid) => ({ mid })),
        sessionDescription: { type: 'offer', sdp: this.pc.localDescription.sdp },
        force: false,
      });
      if (res.sessionDescription) await this.pc.setRemoteDescription(res.sessionDescription);
      await this.#keepCodecs();
    } catch (err) {
      // The SFU collects tracks without media anyway; keep the connection usable.
      if (this.pc.signalingState === 'have-local-offer') {
        await this.pc.setLocalDescription({ type: 'rollback' }).catch(() => {});
      }
      this.dispatchEvent(new CustomEvent('problem', { detail: `closing tracks: ${err.message}` }));
    }
  }

  #onTrack(ev) {
    const mid = ev.transceiver.mid;
    const info = this.pulls.get(mid) ?? { mid };
    // Chromium answers here, so attaching the receiver transform in `track` works
    // (see docs: attach as early as the transceiver exists). A pull of this page's own
    // offer (pushAndPull) has it already.
    if (!this.attachedEarly.has(ev.transceiver)) this.onTransceiver('recv', ev.transceiver, info);
    this.dispatchEvent(new CustomEvent('track', { detail: { track: ev.track, transceiver: ev.transceiver, info } }));
  }

  #onConnectionState() {
    const state = this.pc.connectionState;
    if (state === 'connected') timeline.mark('dtls');
    this.dispatchEvent(new CustomEvent('state', { detail: state }));
    if (state === 'connected' && !this.everConnected) {
      this.everConnected = true;
      this.livenessTimer = setInterval(() => this.#checkLiveness(), LIVENESS_POLL_MS);
    }
    // A connection that worked and failed is restarted (ICE restart) first: `failed`
    // goes out only when that does not bring it back (see restartIce). One that never
    // connected gets a new session at once, as before.
    if (state === 'failed' && !this.everConnected) this.dispatchEvent(new CustomEvent('failed'));
    else this.#watchIce();
  }

  #serial(fn, { resync = true } = {}) {
    // After a restart offer whose answer never came, the SFU may hold the offer's new ICE
    // credentials while this side rolled back to the old ones: an answer to the SFU's next
    // offer would then carry credentials the SFU reads as an ICE restart in an answer (and
    // refuses, leaving the m-lines out of step). Such a negotiation first settles the
    // credentials with one more restart offer; if that fails too, it fails.
    const step = resync
      ? async () => {
        if (this.iceCredentialsUnsettled) await this.#renegotiateIce();
        return fn();
      }
      : fn;
    const run = this.queue.then(step, step);
    this.queue = run.catch(() => {});
    return run;
  }

  async #api(method, path, body, { timeoutMs, signal } = {}) {
    if (this.closed) throw new Error('media link closed');
    const res = await fetch(`${this.base}${path}`, {
      method,
      headers: { Authorization: `Bearer ${this.auth()}`, 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: signal ?? (timeoutMs ? AbortSignal.timeout(timeoutMs) : undefined),
    });
    let json = {};
    const text = await res.text();
    if (text) {
      try { json = JSON.parse(text); } catch { json = { errorDescription: text.slice(0, 200) }; }
    }
    if (!res.ok) {
      const err = new Error(`${method} ${path}: HTTP ${res.status} ${json.errorCode ?? ''} ${json.errorDescription ?? ''}`.trim());
      // The session no longer exists (the SFU collected it: 404) or the proxy no longer
      // ties it to this participant (403): restarting ICE on it cannot help.
      err.sessionGone = res.status === 404 || res.status === 403;
      throw err;
    }
    return json;
  }
}

/** Where the uplink estimate of a page that sends video starts (kbit/s; Chromium's default is 300). */
export const START_BITRATE_KBPS = 1000;

/**
 * Adds `x-google-start-bitrate` (Chromium's start of its send-side bandwidth
 * estimate, read from the remote description's codec parameters) to every
 * video codec of `sdp` but rtx/red/ulpfec.
 */
export function withStartBitrate(sdp, kbps) {
  const lines = sdp.split('\r\n');
  const out = [];
  let video = false;
  let section = 0; // index in `out` of the current m= line
  let codecs = [];
  const flush = () => {
    for (const pt of codecs) {
      const inSection = (prefix) => {
        for (let i = out.length - 1; i >= section; i--) if (out[i].startsWith(prefix)) return i;
        return -1;
      };
      const i = inSection(`a=fmtp:${pt} `);
      if (i >= 0) {
        if (!out[i].includes('x-google-start-bitrate')) out[i] += `;x-google-start-bitrate=${kbps}`;
      } else {
        const at = inSection(`a=rtpmap:${pt} `);
        if (at >= 0) out.splice(at + 1, 0, `a=fmtp:${pt} x-google-start-bitrate=${kbps}`);
      }
    }
    codecs = [];
  };
  for (const line of lines) {
    if (line.startsWith('m=')) {
      if (video) flush();
      video = line.startsWith('m=video');
      section = out.length;
    }
    const m = video && /^a=rtpmap:(\d+) ([^/]+)\//.exec(line);
    if (m && !/^(rtx|red|ulpfec|flexfec-03)$/i.test(m[2])) codecs.push(m[1]);
    out.push(line);
  }
  if (video) flush();
  return out.join('\r\n');
}

/**
 * The mid of the BUNDLE tag of `pc`: the first mid of the BUNDLE group of its
 * current local description, else its first m-line that is not stopped.
 */
export function bundleTag(pc) {
  const group = /^a=group:BUNDLE[ \t]+(\S+)/m.exec(pc.localDescription?.sdp ?? '');
  if (group) return group[1];
  return pc.getTransceivers().find((t) => t.mid !== null && !t.stopped && t.currentDirection !== 'stopped')?.mid ?? null;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Puts `codec` (VP8, VP9, H264) first and the fallback codecs after it, keeping
 * rtx/red/ulpfec (codec-choice.js `sendPreferences`): the SFU's answer accepts
 * them all, so the page can switch to a codec everyone decodes without a
 * negotiation (CodecChoice sets `encodings[i].codec`).
 */
export function preferCodec(transceiver, codec) {
  const caps = RTCRtpSender.getCapabilities?.('video');
  if (!caps || !transceiver.setCodecPreferences) return;
  const list = sendPreferences(caps.codecs, codec);
  if (list.length === 0) return;
  transceiver.setCodecPreferences(list);
}

/**
 * Test hook `test_rxcodecs` (codec-choice.js): the pulled video m-lines `mids`
 * answer with only the codecs the hook allows, as a browser without the
 * others would. Without the hook nothing changes.
 */
function limitReceiveCodecs(pc, mids) {
  const filter = receiveFilter();
  if (!filter) return;
  const caps = receiveCapabilities(filter);
  for (const t of pc.getTransceivers()) {
    if (!mids.includes(t.mid) || t.receiver.track?.kind !== 'video' || !t.setCodecPreferences) continue;
    try {
      t.setCodecPreferences(caps);
    } catch (err) {
      console.warn(`satsuma: test_rxcodecs: ${err.message}`);
    }
  }
}
