// Dynacast at the publisher: simulcast encodings nobody takes are turned off
// at the source (`RTCRtpSender.setParameters`, `encodings[i].active`), so they
// cost no uplink and no encoder time.
//
// The coordinator knows every pull and every layer ask of the room (its SFU
// proxy sees them) and tells the publisher, per published video track, the
// highest layer some subscriber can take: a direct `layers` message
// `{session_id, track_name, max_rid}` (coordinator/PROTOCOL.md). This page then
// keeps the encodings at or below `max_rid` on (the SFU's bandwidth estimate
// may give a subscriber that asks `f` the `h` or `q` layer, so those must flow
// too) and turns the ones above it off. `max_rid: null` means nobody pulls the
// track: only the lowest encoding stays on, so that a joiner's first frame
// does not wait for an encoder to start. The coordinator debounces: a rise
// comes at once, a fall only after the lower demand held for a second.
//
// When an encoding comes back on, the page asks the SFU for a keyframe of the
// track (the subscriber that wants the layer waits for one before it switches).

/** Layer ranks by rid, lowest first (as the SFU and the coordinator rank them). */
export const RANK = Object.freeze({ q: 0, h: 1, f: 2 });

/** Whether a `layers` message is well formed (it comes from the network). */
export function validLayers(msg) {
  return Boolean(msg) && msg.type === 'layers'
    && typeof msg.session_id === 'string' && msg.session_id.length > 0 && msg.session_id.length <= 256
    && typeof msg.track_name === 'string' && msg.track_name.length > 0 && msg.track_name.length <= 256
    && (msg.max_rid === null || Object.hasOwn(RANK, msg.max_rid));
}

/**
 * Which of `encodings` (`[{rid, active}]`, in the sender's order) stay on for
 * `maxRid` (`'q'|'h'|'f'`, or null: nobody pulls). An encoding with an unknown
 * rid counts as the top layer. A single encoding (no simulcast) always stays
 * on; so does the lowest one.
 */
export function activeFlags(encodings, maxRid) {
  if (encodings.length <= 1 || encodings.some((e) => !e.rid)) return encodings.map(() => true);
  const rank = (rid) => (Object.hasOwn(RANK, rid) ? RANK[rid] : RANK.f);
  const limit = maxRid === null || maxRid === undefined ? -1 : rank(maxRid);
  const lowest = Math.min(...encodings.map((e) => rank(e.rid)));
  return encodings.map((e) => rank(e.rid) <= limit || rank(e.rid) === lowest);
}

export class Dynacast {
  /**
   * @param {object} opts
   * @param {() => {sessionId: string|null, pushes: Map}|null} opts.link the current media link (SfuLink)
   * @param {(trackName: string) => Promise<void>} [opts.keyframe] asks for a keyframe of a pushed track
   * @param {(text: string) => void} [opts.note]
   */
  constructor({ link, keyframe = async () => {}, note = () => {} }) {
    this.link = link;
    this.keyframe = keyframe;
    this.note = note;
    this.wanted = new Map(); // trackName -> {sessionId, maxRid}
    this.chains = new Map(); // trackName -> Promise (one setParameters at a time per sender)
    this.applied = new Map(); // trackName -> {maxRid, active: {rid: bool}, at}
    this.changes = 0;
    this.ignored = 0;
  }

  /** Applies a `layers` message from the coordinator; returns whether it was taken. */
  apply(msg) {
    if (!validLayers(msg)) {
      this.ignored += 1;
      return false;
    }
    const link = this.link();
    if (!link || link.sessionId !== msg.session_id) {
      // Another (older) media session's track: nothing of this page sends it any more.
      this.ignored += 1;
      return false;
    }
    this.wanted.set(msg.track_name, { sessionId: msg.session_id, maxRid: msg.max_rid });
    this.#run(msg.track_name);
    return true;
  }

  /** Forgets every track (a new media session: its tracks start with every layer on). */
  reset() {
    this.wanted.clear();
    this.applied.clear();
  }

  /** What was applied per track, for stats: `{trackName: {maxRid, active: {rid: bool}, at: Date.now() of the change}}`. */
  state() {
    return Object.fromEntries([...this.applied].map(([name, a]) => [name, { maxRid: a.maxRid, active: { ...a.active }, at: a.at }]));
  }

  #run(trackName) {
    const prev = this.chains.get(trackName) ?? Promise.resolve();
    const next = prev.then(() => this.#set(trackName)).catch((err) => this.note(`layers of ${trackName}: ${err.message}`));
    this.chains.set(trackName, next);
    return next;
  }

  async #set(trackName) {
    const want = this.wanted.get(trackName);
    const link = this.link();
    const push = link?.pushes?.get(trackName);
    if (!want || !push || link.sessionId !== want.sessionId) return;
    const sender = push.transceiver.sender;
    const params = sender.getParameters();
    const encodings = params.encodings ?? [];
    const flags = activeFlags(encodings, want.maxRid);
    let turnedOn = false;
    let changed = false;
    encodings.forEach((e, i) => {
      const on = flags[i];
      if ((e.active !== false) !== on) {
        changed = true;
        if (on) turnedOn = true;
        e.active = on;
      }
    });
    if (changed) {
      await sender.setParameters(params);
      this.changes += 1;
    }
    this.applied.set(trackName, {
      maxRid: want.maxRid,
      active: Object.fromEntries(encodings.map((e, i) => [e.rid ?? String(i), flags[i]])),
      at: Date.now(),
    });
    // A layer that comes back starts with a keyframe the subscriber can switch on.
    if (turnedOn) await this.keyframe(trackName).catch(() => {});
  }
}

/**
 * Dynacast for a call controller: applies the coordinator's `layers` messages
 * (`call.link` 'direct' events) to the senders of `call.sfu`, asking the SFU
 * for a keyframe when a layer comes back. Returns the Dynacast
 * (`window.satsuma.call.dynacast.state()` in tests).
 */
export function attachDynacast(call) {
  const d = new Dynacast({
    link: () => call.sfu,
    keyframe: (name) => call.sfu?.requestKeyframes([name]) ?? Promise.resolve(),
    note: (text) => call.note?.(text),
  });
  call.link.addEventListener('direct', (ev) => {
    if (ev.detail?.type === 'layers') d.apply(ev.detail);
  });
  return d;
}
