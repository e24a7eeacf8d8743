// The main thread's side of end-to-end encryption. All MLS state and all
// frame crypto live in the E2EE worker (e2ee-worker.js, WebAssembly from
// client/wasm); this module only starts it, feeds it the coordinator's log,
// forwards what it wants sent, and hangs its transforms on every RTP sender
// and receiver. No key ever reaches this thread.
//
// Transforms: `RTCRtpScriptTransform` where the browser has it, otherwise the
// older `createEncodedStreams()` with the streams transferred to the worker
// (the peer connection must then be created with `encodedInsertableStreams`).
//
// The send gate (fail closed): a sender may carry a track only while
//   - its transform is attached and the worker confirmed it holds the
//     sender's frame stream (`transform` message),
//   - the worker confirmed it holds a sending key (`send-key` message),
//   - the worker answers pings (a ping unanswered for STALLED_AFTER_MS stops
//     sending), and no fault is known: no transform API, an attach that threw,
//     the WASM module not loading, a worker error or crash.
// `sendState()` says which; `canSend(trackId)` decides per sender; a `gate`
// event fires whenever the answer may have changed. The app applies it to the
// senders (`replaceTrack`), and the worker drops any frame it cannot encrypt.

import { testHooks } from './client-config.js';
import { e2eeWorker, takeWasmBytes } from './integrity.js';
import { timeline } from './join-timeline.js';
import { KIND } from './wire.js';

const PING_MS = 100;
// An unanswered ping this old stops sending. A stalled worker cannot leak
// plaintext (frames wait in the transform or are dropped, and a terminated
// worker's transform passes nothing on: Chromium stops the sender's frames at
// once), so this is the second line of defence, tuned not to pause sending
// while the worker merely processes a large MLS commit on a slow device.
const STALLED_AFTER_MS = 2000;
const DEAD_AFTER_MS = 20000; // no answer for this long: the worker is gone for good
const BOOT_TIMEOUT_MS = 30000;

export function scriptTransformSupported() {
  return typeof window.RTCRtpScriptTransform === 'function';
}

export function encodedStreamsSupported() {
  return typeof window.RTCRtpSender === 'function' && typeof window.RTCRtpSender.prototype.createEncodedStreams === 'function';
}

const RELOAD = 'Nothing from your camera, microphone or screen is being sent. Reload the page to try again.';

/** Whether a relay Commit payload (`u32 BE commit_len ‖ commit ‖ welcome`) carries a Welcome. */
function carriesWelcome(payload) {
  if (!(payload instanceof Uint8Array) || payload.byteLength < 4) return false;
  const len = new DataView(payload.buffer, payload.byteOffset, 4).getUint32(0);
  return payload.byteLength > 4 + len;
}

export class E2eeLink extends EventTarget {
  /**
   * @param {object} opts
   * @param {boolean} opts.decrypt decrypt inbound frames (false: negative control, frames pass through undecrypted)
   * @param {boolean} opts.mls join the MLS group (false: keyless observer)
   * @param {boolean} opts.legacy use createEncodedStreams even where RTCRtpScriptTransform exists
   * @param {string} opts.displayName the name bound into this participant's MLS credential
   */
  constructor({ decrypt = true, mls = true, legacy = false, displayName = '' } = {}) {
    super();
    this.decrypt = decrypt;
    this.displayName = displayName;
    this.joinGroup = mls;
    this.legacy = legacy || !scriptTransformSupported();
    this.worker = null;
    this.attached = []; // {endpoint, options}
    this.pingId = 0;
    this.unanswered = null; // {id, at} of the oldest ping without a pong
    this.watchdog = null;
    this.stalled = false;
    this.status = { phase: 'starting' };
    this.trackStats = new Map();
    this.participantId = null;
    this.sendEpoch = null; // the worker's sending epoch (null: no sending key)
    this.confirmed = new Set(); // trackIds whose sender transform the current worker holds
    this.fault = null; // {reason, advice, fatal}
    this.gateLog = []; // {at, level, reason}: every change of sendState() (tests, diagnostics)
  }

  /** 'RTCRtpScriptTransform' | 'createEncodedStreams' | 'none' (this browser cannot encrypt). */
  get mode() {
    if (!this.legacy) return 'RTCRtpScriptTransform';
    return encodedStreamsSupported() ? 'createEncodedStreams' : 'none';
  }

  /** The peer connection needs `encodedInsertableStreams: true` (legacy transforms). */
  get insertableStreams() {
    return this.legacy;
  }

  /**
   * Starts the worker before the participant id is known (the lobby): it fetches,
   * compiles and instantiates the WebAssembly and loads the identity key while
   * the user is still looking at the preview, so `start` only has to name the
   * member. Does nothing if a worker exists already.
   */
  prepare() {
    if (this.worker || this.prepared || this.mode === 'none') return;
    this.#spawn();
    this.prepared = this.worker !== null;
    clearInterval(this.watchdog);
    this.watchdog = setInterval(() => this.#checkWorker(), PING_MS);
  }

  /**
   * Starts the member for participant `participantId`: in the worker `prepare`
   * started if it has not served a participant yet, otherwise (a rejoin: a new
   * participant needs a new MLS leaf) in a new worker.
   */
  start(participantId) {
    this.participantId = participantId;
    this.attached = [];
    const fresh = this.prepared && this.worker !== null && !this.fault;
    this.prepared = false;
    this.fault = null; // a new participant: every cause is detected again
    if (fresh) {
      this.#post({ type: 'member', participantId, displayName: this.displayName });
      this.#changed();
    } else {
      this.#spawn();
    }
    clearInterval(this.watchdog);
    this.watchdog = setInterval(() => this.#checkWorker(), PING_MS);
    if (this.mode === 'none') {
      this.#fail('This browser cannot encrypt media: it has neither RTCRtpScriptTransform nor createEncodedStreams.',
        'Nothing from your camera, microphone or screen is being sent. Use a current Chrome, Edge, Firefox (117 or later) or Safari (15.4 or later).', true);
    }
  }

  /** The room snapshot from `welcome` (entries up to `seq` are in it). */
  welcome(welcome) {
    this.lastWelcome = welcome;
    this.#post({ type: 'welcome', welcome });
  }

  /** A JSON log entry. */
  entry(entry) {
    this.#post({ type: 'entry', entry });
  }

  /** A binary MLS log entry `{seq, kind, from, payload, raw}`; the worker gets the raw frame. */
  mls(frame) {
    if (frame.kind === KIND.COMMIT && timeline.has('keyPackageSent') && !timeline.has('mlsWelcome') && carriesWelcome(frame.payload)) {
      timeline.mark('mlsWelcome');
    }
    const raw = frame.raw.slice(0);
    this.#post({ type: 'mls', seq: frame.seq, raw }, [raw]);
  }

  /** A direct reply of the coordinator (`commit_rejected`, `error`). */
  direct(msg) {
    this.#post({ type: 'direct', msg });
  }

  /**
   * Sends a chat message, end-to-end encrypted in the worker (docs/chat.md). Resolves when
   * the worker queued its ciphertext; rejects with why it could not (not in the group yet,
   * too long). The message shows up as a `chat` event when the room logs it.
   */
  sendChat(text) {
    if (!this.worker) return Promise.reject(new Error('encryption is not running'));
    this.chatId = (this.chatId ?? 0) + 1;
    const id = this.chatId;
    this.chatWaiting ??= new Map();
    return new Promise((resolve, reject) => {
      this.chatWaiting.set(id, { resolve, reject });
      this.#post({ type: 'chat-send', id, text: String(text) });
    });
  }

  /**
   * Test and drill hooks: `garbage` (send garbage frames), `stall` (block the worker for `ms`),
   * `relayLag` (process the room's messages `ms` late).
   */
  drill(name, value) {
    if (!testHooks) return; // only on a server started with --test-hooks (client-config.js)
    this.#post({ type: 'drill', name, value });
  }

  /**
   * Hangs the E2EE transform on a sender (`direction` 'send') or a receiver ('recv').
   * @param {object} options {kind: 'audio'|'video', trackId, sender?: participant id, codec?}
   */
  attach(direction, transceiver, options) {
    const endpoint = direction === 'send' ? transceiver.sender : transceiver.receiver;
    const full = { ...options, operation: direction === 'send' ? 'encrypt' : 'decrypt' };
    this.attached.push({ endpoint, options: full });
    this.#attachOne(endpoint, full);
  }

  /**
   * A move's old connection is closed: the receiving transforms it had under `trackIds`
   * are gone, and their successors on the new connection take over now (e2ee-worker.js).
   * Its entries in `attached` go too (the new connection's, under the same ids, stay).
   */
  retire(trackIds, transceivers) {
    const gone = new Set(transceivers.map((t) => t.receiver));
    this.attached = this.attached.filter((a) => !gone.has(a.endpoint));
    this.#post({ type: 'retire', trackIds });
  }

  /** Forgets transforms of transceivers that are gone. */
  detach(trackId) {
    this.attached = this.attached.filter((a) => a.options.trackId !== trackId);
    this.confirmed.delete(trackId);
    this.#post({ type: 'forget', trackId });
  }

  stop() {
    clearInterval(this.watchdog);
    this.worker?.terminate();
    this.worker = null;
    this.sendEpoch = null;
    this.confirmed.clear();
    this.#changed();
  }

  /**
   * Whether this page may send media now: `{level, reason, advice}` with level
   * 'ok' (encrypting), 'wait' (no sending key yet), 'off' (keyless observer:
   * never sends) or 'bad' (cannot encrypt: the persistent red state).
   */
  sendState() {
    if (this.fault) return { level: 'bad', reason: this.fault.reason, advice: this.fault.advice, fatal: this.fault.fatal };
    if (this.stalled) {
      return {
        level: 'bad',
        reason: 'The encryption worker is not responding.',
        advice: 'Sending is paused until it responds again. If this does not clear within a few seconds, reload the page.',
        fatal: false,
      };
    }
    if (!this.joinGroup) return { level: 'off', reason: 'Keyless observer: not in the group, never sends.', advice: '' };
    if (!this.worker || this.sendEpoch === null) {
      return { level: 'wait', reason: 'Waiting for encryption keys: nothing is sent until this page can encrypt.', advice: '' };
    }
    return { level: 'ok', reason: `Encrypting (epoch ${this.sendEpoch})`, advice: '' };
  }

  /** Whether the sender of track `trackId` may carry its track now. */
  canSend(trackId) {
    return this.sendState().level === 'ok' && this.confirmed.has(trackId);
  }

  #attachOne(endpoint, options) {
    if (!this.worker) return;
    const encrypt = options.operation === 'encrypt';
    try {
      if (this.legacy) {
        if (typeof endpoint.createEncodedStreams !== 'function') throw new Error('createEncodedStreams is not available');
        const { readable, writable } = endpoint.createEncodedStreams();
        this.worker.postMessage({ type: 'stream', readable, writable, options }, [readable, writable]);
      } else {
        endpoint.transform = new RTCRtpScriptTransform(this.worker, options);
      }
    } catch (err) {
      const what = `${options.kind} ${encrypt ? 'sender' : 'receiver'}`;
      if (encrypt) {
        // This sender can never carry a track: nothing of it may leave the page.
        this.#fail(`Encryption could not be attached to your ${options.kind} (${this.mode}: ${err?.message ?? err}).`,
          `${RELOAD} If this persists, use a current browser.`, true);
      } else {
        this.#problem(`cannot attach decryption to a ${what}: ${err?.message ?? err}`);
      }
    }
  }

  #spawn() {
    this.worker?.terminate();
    this.booted = false;
    this.startedAt = performance.now();
    this.stalled = false;
    this.unanswered = null;
    this.sendEpoch = null;
    this.confirmed.clear();
    if (e2eeWorker.error) {
      // Its files failed their integrity check (integrity.js): never run them.
      this.worker?.terminate();
      this.worker = null;
      this.#fail(e2eeWorker.error, RELOAD, true);
      return;
    }
    // From blob: URLs of the integrity-checked worker script and glue (integrity.js).
    const worker = new Worker(e2eeWorker.url, { type: 'module', name: 'satsuma-e2ee' });
    this.worker = worker;
    worker.onmessage = (ev) => {
      if (this.worker === worker) this.#onMessage(ev.data);
    };
    worker.onerror = (ev) => {
      if (this.worker === worker) this.#workerFailed(`E2EE worker error: ${ev?.message || 'the worker script did not load or crashed'}`);
    };
    worker.onmessageerror = () => {
      if (this.worker === worker) this.#problem('E2EE worker: a message could not be decoded');
    };
    worker.postMessage({
      type: 'init', participantId: this.participantId, decrypt: this.decrypt, mls: this.joinGroup, wasm: e2eeWorker.wasm,
      displayName: this.displayName, wasmBytesFollow: true,
    });
    // The module the page fetched (integrity-checked like the worker's own fetch would be)
    // and compiled while loading; null: the worker fetches and compiles it itself.
    const compiled = takeWasmBytes() ?? Promise.resolve(null);
    compiled.then((module) => {
      if (this.worker !== worker) return;
      worker.postMessage({ type: 'wasm-bytes', module: module ?? null });
    });
    this.#changed();
  }

  #post(message, transfer = []) {
    this.worker?.postMessage(message, transfer);
  }

  #checkWorker() {
    if (!this.worker) return;
    const now = performance.now();
    if (!this.booted && !this.fault && now - this.startedAt > BOOT_TIMEOUT_MS) {
      this.#fail(`The encryption module did not start within ${BOOT_TIMEOUT_MS / 1000} s.`, RELOAD, false);
    }
    const gap = now - (this.lastTick ?? now);
    this.lastTick = now;
    // This thread itself did not run for a while (machine asleep, frozen tab):
    // the ping's age says nothing about the worker; measure afresh.
    if (gap > 1500 && this.unanswered) this.unanswered.at = now;
    if (this.unanswered) {
      // Still loading the WebAssembly module: not a stall (nothing is sent before it holds a key).
      if (!this.booted) return;
      const silent = now - this.unanswered.at;
      if (silent > STALLED_AFTER_MS && !this.stalled) {
        this.stalled = true;
        this.dispatchEvent(new CustomEvent('stalled', { detail: { stalled: true, ms: silent } }));
        this.#changed();
      }
      if (silent > DEAD_AFTER_MS) this.#workerFailed(`the encryption worker has not responded for ${Math.round(silent / 1000)} s`);
      return; // one ping in flight at a time: throttled timers do not look like a stall
    }
    this.unanswered = { id: ++this.pingId, at: now };
    this.#post({ type: 'ping', id: this.pingId });
  }

  /**
   * The worker errored, crashed or hung for good: nothing is sent again on this
   * page. (A new worker would need a new MLS leaf, i.e. a new participant, and
   * legacy streams cannot be created twice on one sender: the user reloads.)
   */
  #workerFailed(why) {
    this.sendEpoch = null;
    this.confirmed.clear();
    this.worker?.terminate();
    this.worker = null;
    clearInterval(this.watchdog);
    this.stalled = false;
    this.#fail(`Encryption stopped: ${why}.`, `${RELOAD} You rejoin the call as a new participant.`, true);
  }

  #fail(reason, advice, fatal) {
    if (this.fault?.fatal) {
      // The first fatal fault stays (it names the cause); later ones are consequences.
      if (this.fault.reason !== reason) this.#problem(reason);
      return;
    }
    this.fault = { reason, advice, fatal };
    this.#problem(reason);
    this.#changed();
  }

  #changed() {
    const s = this.sendState();
    const last = this.gateLog[this.gateLog.length - 1];
    if (!last || last.level !== s.level || last.reason !== s.reason) {
      this.gateLog.push({ at: Date.now(), level: s.level, reason: s.reason });
      if (this.gateLog.length > 50) this.gateLog.shift();
    }
    this.dispatchEvent(new CustomEvent('gate', { detail: s }));
  }

  #problem(message) {
    this.dispatchEvent(new CustomEvent('problem', { detail: message }));
  }

  #onMessage(msg) {
    switch (msg?.type) {
      case 'pong':
        if (this.unanswered && msg.id >= this.unanswered.id) this.unanswered = null;
        if (this.stalled) {
          this.stalled = false;
          this.dispatchEvent(new CustomEvent('stalled', { detail: { stalled: false } }));
          this.#changed();
        }
        break;
      case 'transform':
        // The worker holds this sender's frame stream: its frames go through encryption.
        if (msg.operation === 'encrypt' && this.attached.some((a) => a.options.trackId === msg.trackId)) {
          this.confirmed.add(msg.trackId);
          this.#changed();
        }
        break;
      case 'transform-ended':
        // That sender's frames no longer pass through encryption: its track comes off.
        if (this.confirmed.delete(msg.trackId)) this.#changed();
        break;
      case 'send-key': {
        const before = this.sendEpoch;
        this.sendEpoch = msg.epoch ?? null;
        // A new sending key (an epoch change): receivers that only hold the new key, a
        // joiner above all, need a keyframe under it. (A first key needs none: the sender
        // starts with a keyframe when its track goes on.)
        if (before !== null && this.sendEpoch !== null && before !== this.sendEpoch) {
          this.dispatchEvent(new CustomEvent('send-key-changed', { detail: { epoch: this.sendEpoch } }));
        }
        if (this.sendEpoch !== null && this.fault && !this.fault.fatal) this.fault = null;
        this.#changed();
        break;
      }
      case 'fault':
        // The worker cannot encrypt at all (module missing, crypto broken).
        this.sendEpoch = null;
        if (msg.broken) this.#workerFailed(msg.reason);
        else this.#fail(msg.reason, RELOAD, true);
        break;
      case 'send-binary':
        if (msg.bytes?.[0] === KIND.KEY_PACKAGE) timeline.mark('keyPackageSent');
        this.dispatchEvent(new CustomEvent('send-binary', { detail: msg.bytes }));
        break;
      case 'send-json':
        this.dispatchEvent(new CustomEvent('send-json', { detail: msg.message }));
        break;
      case 'status':
        if (!this.booted) this.unanswered = null; // pings sent while it was loading do not count
        this.booted = true;
        this.status = msg.status;
        if (msg.status?.phase === 'member') timeline.mark('mlsMember');
        this.dispatchEvent(new CustomEvent('status', { detail: msg.status }));
        break;
      case 'track-stats':
        this.trackStats = new Map(msg.tracks.map((t) => [t.trackId, t]));
        this.encryptStats = msg.encrypt;
        this.dispatchEvent(new CustomEvent('track-stats', { detail: msg }));
        break;
      case 'problem':
        this.#problem(msg.message);
        break;
      case 'mark':
        timeline.markAbsolute(msg.step, msg.at);
        break;
      case 'rejoin':
        this.dispatchEvent(new CustomEvent('rejoin'));
        break;
      case 'chat':
        // {type: 'message', seq, from, name, fingerprint, text, mine, epoch} | {type: 'dropped', ...}
        this.dispatchEvent(new CustomEvent('chat', { detail: msg.event }));
        break;
      case 'chat-sent':
      case 'chat-error': {
        const waiting = this.chatWaiting?.get(msg.id);
        this.chatWaiting?.delete(msg.id);
        if (msg.type === 'chat-sent') waiting?.resolve();
        else waiting?.reject(new Error(msg.error));
        break;
      }
      case 'frame-digest':
        // Test drill `frameDigests`: what this page sent, for recording.test.mjs.
        (this.frameDigests ??= []).push({ digest: msg.digest, size: msg.size, trackId: msg.trackId });
        break;
      default:
        break;
    }
  }
}
