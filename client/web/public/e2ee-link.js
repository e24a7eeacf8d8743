// The main thread's side of end-to-end encryption. All MLS state and all
// frame crypto live in the E2EE worker (e2ee-worker.js, WebAssembly from
// client/wasm); this module only starts it, feeds it the coordinator's log,
// forwards what it wants sent, and hangs its transforms on every RTP sender
// and receiver. No key ever reaches this thread.
//
// Transforms: `RTCRtpScriptTransform` where the browser has it, otherwise the
// older `createEncodedStreams()` with the streams transferred to the worker.

const WATCHDOG_INTERVAL_MS = 1000;
const STALLED_AFTER_MS = 4000;
const RESTART_AFTER_MS = 20000;

export function scriptTransformSupported() {
  return typeof window.RTCRtpScriptTransform === 'function';
}

export class E2eeLink extends EventTarget {
  /**
   * @param {object} opts
   * @param {boolean} opts.decrypt decrypt inbound frames (false: negative control, frames pass through undecrypted)
   * @param {boolean} opts.mls join the MLS group (false: keyless observer)
   * @param {boolean} opts.legacy use createEncodedStreams even where RTCRtpScriptTransform exists
   */
  constructor({ decrypt = true, mls = true, legacy = false } = {}) {
    super();
    this.decrypt = decrypt;
    this.joinGroup = mls;
    this.legacy = legacy || !scriptTransformSupported();
    this.worker = null;
    this.attached = []; // {endpoint, options}
    this.pingId = 0;
    this.lastPong = 0;
    this.watchdog = null;
    this.stalled = false;
    this.status = { phase: 'starting' };
    this.trackStats = new Map();
    this.participantId = null;
  }

  get mode() {
    return this.legacy ? 'createEncodedStreams' : 'RTCRtpScriptTransform';
  }

  /** Starts (or restarts) the worker for participant `participantId`. */
  start(participantId) {
    this.participantId = participantId;
    this.attached = [];
    this.booted = false;
    this.#spawn();
    clearInterval(this.watchdog);
    this.lastPong = performance.now();
    this.watchdog = setInterval(() => this.#checkWorker(), WATCHDOG_INTERVAL_MS);
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
    const raw = frame.raw.slice(0);
    this.#post({ type: 'mls', seq: frame.seq, raw }, [raw]);
  }

  /** A direct reply of the coordinator (`commit_rejected`, `error`). */
  direct(msg) {
    this.#post({ type: 'direct', msg });
  }

  /** Test and drill hooks: `garbage` (send garbage frames), `stall` (block the worker for `ms`). */
  drill(name, value) {
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

  /** Forgets transforms of transceivers that are gone. */
  detach(trackId) {
    this.attached = this.attached.filter((a) => a.options.trackId !== trackId);
    this.#post({ type: 'forget', trackId });
  }

  stop() {
    clearInterval(this.watchdog);
    this.worker?.terminate();
    this.worker = null;
  }

  #attachOne(endpoint, options) {
    if (!this.worker) return;
    if (this.legacy) {
      try {
        const { readable, writable } = endpoint.createEncodedStreams();
        this.worker.postMessage({ type: 'stream', readable, writable, options }, [readable, writable]);
      } catch (err) {
        this.#problem(`cannot attach encryption (${options.operation}): ${err.message}`);
      }
    } else {
      endpoint.transform = new RTCRtpScriptTransform(this.worker, options);
    }
  }

  #spawn() {
    this.worker?.terminate();
    const worker = new Worker(new URL('./e2ee-worker.js', import.meta.url), { type: 'module', name: 'satsuma-e2ee' });
    this.worker = worker;
    worker.onmessage = (ev) => this.#onMessage(ev.data);
    worker.onerror = (ev) => this.#problem(`E2EE worker error: ${ev.message ?? 'unknown'}`);
    worker.postMessage({ type: 'init', participantId: this.participantId, decrypt: this.decrypt, mls: this.joinGroup });
  }

  #post(message, transfer = []) {
    this.worker?.postMessage(message, transfer);
  }

  #checkWorker() {
    const now = performance.now();
    if (!this.booted) {
      // Still loading the WebAssembly module: not a stall.
      this.lastPong = now;
      this.#post({ type: 'ping', id: ++this.pingId });
      return;
    }
    const silent = now - this.lastPong;
    if (silent > STALLED_AFTER_MS && !this.stalled) {
      this.stalled = true;
      this.dispatchEvent(new CustomEvent('stalled', { detail: { stalled: true, ms: silent } }));
    }
    if (silent > RESTART_AFTER_MS && !this.legacy) {
      // The worker is wedged: start a fresh one. It rejoins the MLS group with a
      // new KeyPackage; transforms are re-created on the new worker.
      this.#problem('E2EE worker restarted after not responding');
      this.booted = false;
      this.#spawn();
      if (this.lastWelcome) this.#post({ type: 'welcome', welcome: this.lastWelcome, rejoin: true });
      for (const a of this.attached) this.#attachOne(a.endpoint, a.options);
      this.lastPong = now;
    }
    this.#post({ type: 'ping', id: ++this.pingId });
  }

  #problem(message) {
    this.dispatchEvent(new CustomEvent('problem', { detail: message }));
  }

  #onMessage(msg) {
    switch (msg?.type) {
      case 'pong':
        this.lastPong = performance.now();
        if (this.stalled) {
          this.stalled = false;
          this.dispatchEvent(new CustomEvent('stalled', { detail: { stalled: false } }));
        }
        break;
      case 'send-binary':
        this.dispatchEvent(new CustomEvent('send-binary', { detail: msg.bytes }));
        break;
      case 'send-json':
        this.dispatchEvent(new CustomEvent('send-json', { detail: msg.message }));
        break;
      case 'status':
        this.booted = true;
        this.status = msg.status;
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
      case 'rejoin':
        this.dispatchEvent(new CustomEvent('rejoin'));
        break;
      default:
        break;
    }
  }
}
