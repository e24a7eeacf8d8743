// The WebSocket link to the coordinator (protocol: coordinator/PROTOCOL.md).
//
// Joins with a token, keeps the room log in `seq` order, answers the
// heartbeat, and after a network loss resumes from the last processed `seq`
// with exponential backoff. Entries are handed to the app exactly once and in
// order: JSON entries as `{seq, type, ...}`, MLS entries as
// `{seq, kind, from, payload}`. Direct replies (`error`, `commit_rejected`,
// ...) are handed over as they come.

import { testParam } from './client-config.js';
import { timeline } from './join-timeline.js';
import { CLOSE, DIRECT_TYPES as DIRECT, MLS_HEADER_LEN, PROTOCOL_VERSION } from './wire.js';

/**
 * Test hook `?test_visible_only_to=<participant id>` (only when the server runs with
 * --test-hooks): the coordinator announces this participant to that one participant
 * only, as a hostile coordinator would a ghost (PROTOCOL.md, "Test hooks").
 */
function visibleOnlyTo() {
  const value = testParam('test_visible_only_to');
  if (value === null) return null;
  if (!/^[0-9]{1,15}$/.test(value)) {
    console.warn(`satsuma: ignoring test_visible_only_to=${value}: not a participant id`);
    return null;
  }
  return Number(value);
}

// Close codes after which resuming is pointless (wire.js, generated from satsuma-wire).
const FINAL_CLOSES = new Map([
  [CLOSE.NORMAL, 'left'],
  [CLOSE.BAD_HELLO, 'bad-hello'],
  [CLOSE.UNSUPPORTED_VERSION, 'unsupported-version'],
  [CLOSE.UNAUTHORIZED, 'unauthorized'],
  [CLOSE.REMOVED, 'removed'],
  [CLOSE.REPLACED, 'replaced'],
  [CLOSE.ROOM_LOCKED, 'room-locked'],
  [CLOSE.ROOM_FULL, 'room-full'],
]);
// Replies to this connection; everything else with a `seq` is a log entry.
const DIRECT_TYPES = new Set(DIRECT);

/** Decodes a server → client binary frame: `u64 seq ‖ u8 kind ‖ u64 from ‖ payload`. */
export function decodeMlsFrame(buffer) {
  if (!(buffer instanceof ArrayBuffer) || buffer.byteLength < MLS_HEADER_LEN) return null;
  const view = new DataView(buffer);
  const seq = Number(view.getBigUint64(0));
  const from = Number(view.getBigUint64(9));
  if (!Number.isSafeInteger(seq) || !Number.isSafeInteger(from)) return null;
  return { seq, kind: view.getUint8(8), from, payload: new Uint8Array(buffer, MLS_HEADER_LEN), raw: buffer };
}

export class RoomLink extends EventTarget {
  /**
   * @param {object} opts
   * @param {string} opts.url WebSocket URL of the coordinator.
   * @param {() => Promise<string>} opts.getToken fetches a fresh join token.
   * @param {string} opts.room room name.
   */
  constructor({ url, getToken, room }) {
    super();
    this.url = url;
    this.getToken = getToken;
    this.room = room;
    this.ws = null;
    this.participantId = null;
    this.resumeToken = null;
    this.lastSeq = 0;
    this.limits = { heartbeat_interval_ms: 5000 };
    this.state = 'idle'; // idle | connecting | open | reconnecting | closed
    this.attempt = 0;
    this.heartbeat = null;
    this.retryTimer = null;
    this.closedFor = null;
  }

  /** Opens the link (fresh join). */
  async start() {
    await this.#connect(false);
  }

  /** Leaves the room and closes for good. */
  leave() {
    this.#send({ type: 'leave' });
    this.#finish('left');
  }

  /** Sends a JSON control message; returns false while disconnected. */
  send(message) {
    return this.#send(message);
  }

  /** Sends a binary MLS frame (`kind ‖ payload`, built by the E2EE worker). */
  sendBinary(bytes) {
    if (this.ws?.readyState !== WebSocket.OPEN || this.state !== 'open') return false;
    this.ws.send(bytes);
    return true;
  }

  /** Simulates a network loss (tests and the "bad input" drills). */
  dropConnection() {
    if (this.ws) this.ws.close(4999, 'simulated network loss');
  }

  #send(message) {
    if (this.ws?.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(message));
    return true;
  }

  #setState(state, detail = {}) {
    this.state = state;
    this.dispatchEvent(new CustomEvent('state', { detail: { state, ...detail } }));
  }

  async #connect(resume) {
    clearTimeout(this.retryTimer);
    this.#setState(resume ? 'reconnecting' : 'connecting', { attempt: this.attempt });
    let hello;
    if (resume) {
      hello = {
        type: 'hello', v: PROTOCOL_VERSION,
        resume: { room: this.room, participant_id: this.participantId, resume_token: this.resumeToken, last_seq: this.lastSeq },
      };
    } else {
      let token;
      try {
        token = await this.getToken();
      } catch (err) {
        this.#retry(`token: ${err.message}`);
        return;
      }
      timeline.mark('token');
      hello = { type: 'hello', v: PROTOCOL_VERSION, token };
      const only = visibleOnlyTo();
      if (only !== null) hello.test_visible_only_to = only;
    }
    const ws = new WebSocket(this.url);
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    ws.onopen = () => {
      ws.send(JSON.stringify(hello));
      timeline.mark('helloSent');
    };
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      if (typeof ev.data === 'string') this.#onText(ev.data);
      else this.#onBinary(ev.data);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.#onClose(ev.code, ev.reason);
    };
    ws.onerror = () => {};
  }

  #onText(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      this.dispatchEvent(new CustomEvent('problem', { detail: 'coordinator sent malformed JSON' }));
      return;
    }
    if (typeof msg !== 'object' || msg === null || typeof msg.type !== 'string') return;
    if (typeof msg.seq === 'number' && !DIRECT_TYPES.has(msg.type)) {
      this.#deliver(msg.seq, () => this.dispatchEvent(new CustomEvent('entry', { detail: msg })));
      return;
    }
    switch (msg.type) {
      case 'welcome':
        this.participantId = msg.participant_id;
        this.resumeToken = msg.resume_token;
        this.lastSeq = msg.seq;
        this.limits = msg.limits ?? this.limits;
        this.#opened();
        this.dispatchEvent(new CustomEvent('welcome', { detail: msg }));
        break;
      case 'resumed':
        this.limits = msg.limits ?? this.limits;
        this.#opened();
        this.dispatchEvent(new CustomEvent('resumed', { detail: msg }));
        break;
      case 'pong':
        break;
      default:
        this.dispatchEvent(new CustomEvent('direct', { detail: msg }));
    }
  }

  #onBinary(buffer) {
    const frame = decodeMlsFrame(buffer);
    if (!frame) {
      this.dispatchEvent(new CustomEvent('problem', { detail: 'coordinator sent a short binary frame' }));
      return;
    }
    this.#deliver(frame.seq, () => this.dispatchEvent(new CustomEvent('mls', { detail: frame })));
  }

  #deliver(seq, emit) {
    if (seq <= this.lastSeq) return; // replayed after resume
    this.lastSeq = seq;
    emit();
  }

  #opened() {
    this.attempt = 0;
    this.#setState('open');
    clearInterval(this.heartbeat);
    const every = Math.max(1000, Math.min(this.limits.heartbeat_interval_ms ?? 5000, 10000));
    this.heartbeat = setInterval(() => this.#send({ type: 'ping', t: Date.now() }), every);
  }

  #onClose(code, reason) {
    clearInterval(this.heartbeat);
    if (this.state === 'closed') return;
    if (FINAL_CLOSES.has(code)) {
      this.#finish(FINAL_CLOSES.get(code), reason);
      return;
    }
    if (this.participantId !== null && (code === CLOSE.RESUME_FAILED || code === CLOSE.PRESENCE_TIMEOUT)) {
      // The old participant is gone: join again as a new one.
      this.participantId = null;
      this.resumeToken = null;
      this.lastSeq = 0;
      this.dispatchEvent(new CustomEvent('reset', { detail: { code, reason } }));
    }
    this.#retry(`closed ${code}${reason ? ` (${reason})` : ''}`);
  }

  #retry(why) {
    this.attempt += 1;
    const delay = Math.min(8000, 250 * 2 ** Math.min(this.attempt, 5)) * (0.75 + Math.random() / 2);
    this.#setState('reconnecting', { attempt: this.attempt, why, delay });
    this.retryTimer = setTimeout(() => this.#connect(this.participantId !== null), delay);
  }

  #finish(why, reason = '') {
    clearInterval(this.heartbeat);
    clearTimeout(this.retryTimer);
    this.#setState('closed', { why, reason });
    const ws = this.ws;
    this.ws = null;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000);
  }
}
