// The E2EE worker: holds all MLS state and does all frame crypto, in
// WebAssembly built from client/wasm (satsuma-wasm over satsuma-e2ee).
//
// - MLS: the room's log (JSON entries and binary MLS entries, in `seq` order)
//   goes into `GroupMember`; what it wants sent (KeyPackages, commits,
//   `ready`) goes back to the main thread for the coordinator. Keys never
//   leave WebAssembly: the same object encrypts and decrypts the frames.
// - Frames: every RTP sender's frames are encrypted, every receiver's frames
//   decrypted; a frame that cannot be handled is dropped, never passed on.
//   After a key change video senders generate a keyframe and receivers ask
//   for one (throttled by `InboundTrack`).
// - A keyless observer (`mls: false`) or a participant with decryption
//   disabled passes inbound frames on untouched and only counts how many
//   carry the DAVE trailer (`... FA FA`): the negative control of the tests.
// - Identity: the browser profile's long-term identity key (a 32-byte Ed25519
//   seed) lives in IndexedDB (`satsuma-identity`), created with
//   crypto.getRandomValues on first use; with the display name it is bound into
//   every MLS credential, so this profile shows the same fingerprint whenever it
//   joins (client/e2ee/src/identity.rs). The seed never leaves this worker and
//   WebAssembly.
// - Moves (make-before-break): a page moving to another SFU session pulls the same
//   tracks again on a new connection while the old one still delivers, so the same
//   sender's frames arrive twice, and the sender key's anti-replay window lets only the
//   first copy of a frame decrypt. A receiving transform registered under a track id
//   that already has a live one is its successor: it drops frames undecrypted (the old
//   one goes on) until a copy of a keyframe (audio: any frame) decrypts on it; from then
//   on it decrypts and the old one drops everything undecrypted. A successor whose
//   keyframe was a replay (the old copy came first) asks for another; once the old
//   transform has ended (`retire` from the page, or its stream closed) the successor
//   takes over at once.

import * as wasm from './pkg/satsuma_wasm.js';

const TICK_MS = 200;
const STATS_MS = 1000;

let ready = false;
let config = { participantId: null, decrypt: true, mls: true, displayName: '' };
let member = null;
let identitySeed = null; // Uint8Array(32) from IndexedDB
let mlsFailed = null; // why the MLS member could not start
let loaded = false;
const backlog = [];
const tracks = new Map(); // trackId -> {options, inbound?, transformer?, frames, bytes, predecessor?}
// A successor waiting for a keyframe asks for one at most this often (ms).
const SUCCESSOR_KEYFRAME_MS = 500;
const drills = { garbage: false, relayLag: 0, frameDigests: false };
let lastStatus = '';
let lastSendEpoch = null; // what the page was last told (`send-key`)
let encryptBroken = false;

function post(message, transfer) {
  self.postMessage(message, transfer ?? []);
}

// Join timeline steps seen here (join-timeline.js), each posted once, in the
// page's clock terms (`timeOrigin + now()`: the page subtracts its own origin).
const marked = new Set();
function mark(step) {
  if (marked.has(step)) return;
  marked.add(step);
  post({ type: 'mark', step, at: performance.timeOrigin + performance.now() });
}

function problem(message) {
  post({ type: 'problem', message });
}

async function boot(init) {
  config = { ...config, ...init };
  try {
    // The page passes the .wasm's URL and its SHA-256 from index.html (integrity.js): the
    // browser refuses bytes that do not match. (This worker runs from a blob: URL, so
    // import.meta.url cannot locate it.)
    const wasmUrl = config.wasm?.url ?? new URL('./pkg/satsuma_wasm_bg.wasm', import.meta.url);
    const integrity = config.wasm?.integrity;
    // The page usually fetched (and checked) and compiled the module already: it follows `init`.
    const compiled = init.wasmBytesFollow ? await wasmBytesFromPage : null;
    await wasm.default({ module_or_path: compiled ?? fetch(wasmUrl, integrity ? { integrity } : {}) });
  } catch (err) {
    // Fail closed: without the module nothing can be encrypted, so nothing may be sent.
    problem(`cannot load the E2EE module: ${err.message}`);
    post({ type: 'fault', reason: `The encryption module could not be loaded (${err.message ?? err}).` });
    return;
  }
  loaded = true;
  mark('wasmReady');
  if (config.mls) {
    identitySeed = await loadIdentitySeed();
    // A worker started in the lobby has no participant id yet: its member starts
    // with the `member` message, once the coordinator assigned one.
    if (config.participantId !== null && config.participantId !== undefined) startMember();
  }
  mark('workerReady');
  ready = true;
  for (const m of backlog.splice(0)) handle(m);
  setInterval(tick, TICK_MS);
  setInterval(reportStats, STATS_MS);
  publishStatus();
}

function startMember() {
  if (typeof wasm.GroupMember !== 'function') {
    problem('this build has no MLS group support (GroupMember missing)');
    return;
  }
  try {
    member?.free();
    member = null;
    member = new wasm.GroupMember(config.participantId, identitySeed, String(config.displayName ?? ''));
    mlsFailed = null;
  } catch (err) {
    mlsFailed = `MLS start failed: ${err.message ?? err}`;
    problem(mlsFailed);
  }
}

const IDENTITY_DB = 'satsuma-identity';
const IDENTITY_STORE = 'keys';
const IDENTITY_KEY = 'identity-seed-v1';

/**
 * This browser profile's identity seed: read from IndexedDB, or created and
 * stored in the same read-write transaction (two tabs starting at once agree on
 * one seed). Without IndexedDB (some private modes) an ephemeral seed is used
 * and the page is told its fingerprint will change on every join.
 */
async function loadIdentitySeed() {
  try {
    return await new Promise((resolve, reject) => {
      const open = indexedDB.open(IDENTITY_DB, 1);
      open.onupgradeneeded = () => open.result.createObjectStore(IDENTITY_STORE);
      open.onerror = () => reject(open.error);
      open.onblocked = () => reject(new Error('IndexedDB is blocked'));
      open.onsuccess = () => {
        const db = open.result;
        let seed = null;
        const tx = db.transaction(IDENTITY_STORE, 'readwrite');
        const store = tx.objectStore(IDENTITY_STORE);
        const get = store.get(IDENTITY_KEY);
        get.onsuccess = () => {
          const stored = get.result;
          if (stored instanceof Uint8Array && stored.byteLength === 32) {
            seed = stored;
          } else {
            seed = crypto.getRandomValues(new Uint8Array(32));
            store.put(seed, IDENTITY_KEY);
          }
        };
        tx.oncomplete = () => {
          db.close();
          resolve(seed);
        };
        tx.onerror = () => {
          db.close();
          reject(tx.error);
        };
        tx.onabort = () => {
          db.close();
          reject(tx.error ?? new Error('IndexedDB transaction aborted'));
        };
      };
    });
  } catch (err) {
    problem(`Your identity key cannot be stored in this browser (${err?.message ?? err}): your fingerprint will change every time you join.`);
    return crypto.getRandomValues(new Uint8Array(32));
  }
}

let gotWasmBytes;
const wasmBytesFromPage = new Promise((resolve) => { gotWasmBytes = resolve; });

self.onmessage = (ev) => {
  const msg = ev.data;
  if (msg?.type === 'wasm-bytes') {
    gotWasmBytes(msg.module instanceof WebAssembly.Module ? msg.module : null);
    return;
  }
  if (msg?.type === 'init') {
    boot(msg);
    return;
  }
  if (msg?.type === 'ping') {
    post({ type: 'pong', id: msg.id });
    return;
  }
  if (msg?.type === 'stream') {
    // Legacy createEncodedStreams path: streams are usable before the module loads.
    runTransform(msg.readable, msg.writable, msg.options, null);
    return;
  }
  if (!ready) {
    backlog.push(msg);
    return;
  }
  if (RELAY_TYPES.has(msg?.type) && (drills.relayLag > 0 || lagged.length)) {
    lag(msg);
    return;
  }
  handle(msg);
};

// The `relayLag` drill (test hooks only): this page processes the room's
// messages `relayLag` ms late, in order, like a page on an overloaded machine.
// Its `ready` then comes after the coordinator's execute timeout, so the others
// switch keys before this page has installed them.
const RELAY_TYPES = new Set(['welcome', 'entry', 'mls', 'direct']);
const lagged = [];

function lag(msg) {
  lagged.push({ msg, due: performance.now() + drills.relayLag });
  if (lagged.length === 1) setTimeout(flushLagged, drills.relayLag);
}

function flushLagged() {
  const now = performance.now();
  while (lagged.length && lagged[0].due <= now) handle(lagged.shift().msg);
  if (lagged.length) setTimeout(flushLagged, Math.max(0, lagged[0].due - now));
}

// RTCRtpScriptTransform path.
self.onrtctransform = (event) => {
  const t = event.transformer;
  runTransform(t.readable, t.writable, t.options, t);
};

function handle(msg) {
  try {
    switch (msg.type) {
      case 'member':
        // The lobby's worker learns who it is: the MLS member starts now.
        config.participantId = msg.participantId;
        if (typeof msg.displayName === 'string') config.displayName = msg.displayName;
        if (config.mls && loaded) startMember();
        break;
      case 'welcome':
        if (msg.rejoin && config.mls) startMember();
        member?.on_welcome(JSON.stringify(msg.welcome), performance.now());
        break;
      case 'entry':
        member?.on_event(JSON.stringify(msg.entry), performance.now());
        break;
      case 'mls':
        member?.on_mls(new Uint8Array(msg.raw), performance.now());
        break;
      case 'direct':
        member?.on_direct(JSON.stringify(msg.msg), performance.now());
        break;
      case 'chat-send': {
        // End-to-end encrypted chat (docs/chat.md): the ciphertext goes out as a binary frame.
        const error = member ? member.send_chat(String(msg.text ?? '')) : 'not in the encryption group yet';
        if (error !== undefined) post({ type: 'chat-error', id: msg.id, error });
        else post({ type: 'chat-sent', id: msg.id });
        break;
      }
      case 'forget': {
        const t = tracks.get(msg.trackId);
        if (t?.predecessor) t.predecessor.ended = true;
        tracks.delete(msg.trackId);
        break;
      }
      case 'retire':
        // The page closed the connection a move left: successors take over now.
        for (const id of msg.trackIds ?? []) {
          const t = tracks.get(id);
          if (t?.predecessor) t.predecessor.ended = true;
        }
        break;
      case 'drill':
        if (msg.name === 'garbage') drills.garbage = Boolean(msg.value);
        if (msg.name === 'frameDigests') drills.frameDigests = Boolean(msg.value);
        if (msg.name === 'relayLag') drills.relayLag = Math.max(0, Math.min(10000, Number(msg.value) || 0));
        if (msg.name === 'stall') {
          const end = Date.now() + Number(msg.value ?? 0);
          while (Date.now() < end) { /* deliberately blocked */ }
        }
        break;
      default:
        break;
    }
  } catch (err) {
    problem(`E2EE: ${msg.type}: ${err.message ?? err}`);
  }
  pump();
}

function tick() {
  if (!member) return;
  try {
    member.tick(performance.now());
    pollHeld();
  } catch (err) {
    problem(`E2EE tick: ${err.message ?? err}`);
  }
  pump();
}

// Drains what the MLS member wants done.
function pump() {
  if (!member) return;
  for (;;) {
    const bytes = member.poll_binary();
    if (bytes === undefined) break;
    post({ type: 'send-binary', bytes }, [bytes.buffer]);
  }
  for (;;) {
    const json = member.poll_json();
    if (json === undefined) break;
    post({ type: 'send-json', message: JSON.parse(json) });
  }
  if (member.take_send_key_changed()) {
    // Our sender key changed: start every video stream with a keyframe.
    for (const t of tracks.values()) {
      if (t.options.operation === 'encrypt' && t.options.kind !== 'audio' && t.transformer?.generateKeyFrame) {
        t.transformer.generateKeyFrame().catch(() => {});
      }
    }
  }
  if (member.take_receive_keys_changed()) {
    // Other members' keys changed: inbound video asks for keyframes (throttled per track).
    for (const t of tracks.values()) {
      t.inbound?.want_keyframe();
      t.predecessor?.inbound?.want_keyframe();
    }
    pollHeld(); // frames held for these keys go out now
  }
  if (member.take_rejoin()) post({ type: 'rejoin' });
  for (;;) {
    const chat = member.poll_chat();
    if (chat === undefined) break;
    post({ type: 'chat', event: JSON.parse(chat) });
  }
  publishStatus();
  reportSendKey();
}

// The send gate (e2ee-link.js): tells the page whether this worker holds a
// sending key, i.e. whether frames handed to an encrypting transform leave
// encrypted. Until it does, the page puts no track on any sender.
function reportSendKey() {
  let epoch = null;
  if (member && loaded && !encryptBroken) {
    try {
      const e = JSON.parse(member.status_json()).send_epoch;
      epoch = typeof e === 'number' ? e : null;
    } catch {
      epoch = null;
    }
  }
  if (epoch !== lastSendEpoch) {
    lastSendEpoch = epoch;
    post({ type: 'send-key', epoch });
  }
}

function publishStatus() {
  const status = member
    ? JSON.parse(member.status_json())
    : {
      phase: config.mls ? (mlsFailed ? 'failed' : 'starting') : 'observer',
      epoch: null, safety_number: null, members: [], alarm: null, last_error: mlsFailed,
    };
  status.decrypt = config.decrypt;
  const text = JSON.stringify(status);
  if (text !== lastStatus) {
    lastStatus = text;
    post({ type: 'status', status });
  }
}

function reportStats() {
  const list = [];
  for (const [trackId, t] of tracks) {
    const entry = { trackId, operation: t.options.operation, kind: t.options.kind, sender: t.options.sender ?? null, frames: t.frames, bytes: t.bytes, lastBytes: t.lastBytes };
    if (t.inbound) {
      entry.decrypted = t.inbound.decrypted();
      entry.dropped = t.inbound.dropped();
      entry.duplicates = t.inbound.duplicates();
      entry.protocolFrames = t.inbound.protocol_frames();
      entry.lastDrop = t.inbound.last_drop() ?? null;
      entry.epoch = t.inbound.epoch() ?? null;
      entry.held = t.inbound.held();
      entry.standbyDrops = t.standbyDrops;
      entry.late = t.inbound.late();
    }
    list.push(entry);
  }
  post({
    type: 'track-stats',
    tracks: list,
    encrypt: member ? { encrypted: member.encrypted(), failed: member.encrypt_failed() } : null,
  });
}

function defaultMime(kind) {
  return kind === 'audio' ? 'audio/opus' : 'video/VP8';
}

function runTransform(readable, writable, options, transformer) {
  const t = {
    options, transformer, inbound: null, frames: 0, bytes: 0, lastBytes: null, encryptErrors: 0,
    controller: null, nextId: 0, waiting: new Map(),
    predecessor: null, retired: false, ended: false, standbyDrops: 0, askedKeyframe: -Infinity,
  };
  const encrypt = options.operation === 'encrypt';
  const prev = tracks.get(options.trackId);
  if (!encrypt && prev && prev.options.operation === 'decrypt' && !prev.ended && !prev.retired) {
    // A move's new connection pulls this track again: a successor (see the top).
    t.predecessor = prev.predecessor && !prev.predecessor.ended ? prev.predecessor : prev;
    if (t.predecessor !== prev) prev.retired = true; // a successor that never took over
  }
  tracks.set(options.trackId, t);
  const stream = new TransformStream({
    transform(frame, controller) {
      if (!loaded) { // module not loaded yet: drop (not counted: nothing looked at it)
        t.framesBeforeLoad = (t.framesBeforeLoad ?? 0) + 1;
        return;
      }
      if (encrypt) {
        encryptFrame(t, frame, controller);
        return;
      }
      if (t.retired) return; // a successor decrypts this track now
      if (t.predecessor && !t.predecessor.ended && options.kind !== 'audio' && frame.type !== 'key') {
        t.standbyDrops += 1; // the predecessor still delivers: wait for a keyframe
        return;
      }
      if (t.predecessor?.ended && !t.predecessor.retired) {
        // The old connection is gone before a keyframe decrypted here: take over, and ask.
        takeOver(t);
        if (options.kind !== 'audio') askKeyframe(t, performance.now());
      }
      t.frames += 1;
      if (options.kind !== 'audio' && frame.type === 'key') mark('firstKeyframe');
      const data = new Uint8Array(frame.data);
      t.bytes += data.byteLength;
      if (!t.inbound) {
        try {
          t.inbound = new wasm.InboundTrack(options.sender ?? -1, options.kind !== 'audio');
        } catch {
          t.inbound = new wasm.InboundTrack(0, options.kind !== 'audio');
        }
      }
      t.lastBytes = Array.from(data.subarray(Math.max(0, data.byteLength - 2)));
      if (!config.decrypt || !member) {
        takeOver(t); // nothing is decrypted: no copy can be refused as a replay
        t.inbound.inspect(data);
        controller.enqueue(frame); // undecrypted: the decoder must fail on it
        return;
      }
      // Through the track's holdback: a frame under a key this page has not
      // installed yet (the sender executed an epoch before this page processed
      // its commit) waits for the key instead of being dropped. Frames leave
      // in order, decrypted or dropped; nothing undecrypted is passed on.
      const now = performance.now();
      t.controller = controller;
      t.nextId = (t.nextId + 1) >>> 0;
      t.waiting.set(t.nextId, frame);
      member.receive(t.inbound, t.nextId, data, now);
      releaseFrames(t);
      if (t.inbound.take_keyframe_request(now) && transformer?.sendKeyFrameRequest) {
        transformer.sendKeyFrameRequest().catch(() => {});
      }
    },
  });
  readable.pipeThrough(stream).pipeTo(writable).then(() => { t.ended = true; }, (err) => {
    t.ended = true;
    if (tracks.get(options.trackId) !== t) return; // forgotten: the transceiver is gone
    problem(`transform ${options.operation} ${options.kind} ended: ${err.message ?? err}`);
    post({ type: 'transform-ended', trackId: options.trackId, operation: options.operation });
  });
  // The send gate waits for this: the worker now holds this sender's frames.
  post({ type: 'transform', trackId: options.trackId, operation: options.operation });
}

// Passes on, in order, the frames of `t` whose verdict is due: decrypted ones
// with their plaintext, dropped ones not at all.
/** Successor `t` takes over from its predecessor, which drops everything from now on. */
function takeOver(t) {
  if (!t.predecessor) return;
  t.predecessor.retired = true;
  t.predecessor = null;
}

function askKeyframe(t, now) {
  if (now - t.askedKeyframe < SUCCESSOR_KEYFRAME_MS || !t.transformer?.sendKeyFrameRequest) return;
  t.askedKeyframe = now;
  t.transformer.sendKeyFrameRequest().catch(() => {});
}

function releaseFrames(t) {
  let id;
  while ((id = t.inbound.next_release()) !== undefined) {
    const frame = t.waiting.get(id);
    t.waiting.delete(id);
    const out = t.inbound.take_data();
    if (frame === undefined) continue;
    if (out === undefined) {
      // A successor's keyframe that did not decrypt here (the old copy came first): ask again.
      if (t.predecessor && t.options.kind !== 'audio') askKeyframe(t, performance.now());
      continue;
    }
    takeOver(t); // a successor's first decrypted frame: it delivers from here
    frame.data = out.buffer;
    if (t.options.kind !== 'audio') mark('firstDecrypted');
    try {
      t.controller.enqueue(frame);
    } catch {
      // The stream has ended (the transceiver is gone): nothing to pass on to.
    }
  }
}

// Held frames wait for keys the tick may just have installed, or time out.
function pollHeld() {
  if (!member || !config.decrypt) return;
  const now = performance.now();
  for (const current of tracks.values()) {
    for (const t of [current, current.predecessor]) {
      if (!t?.inbound || !t.controller || t.waiting.size === 0) continue;
      member.poll_held(t.inbound, now);
      releaseFrames(t);
    }
  }
}

// One outbound frame: encrypted, or dropped. Never passed on as it came in:
// every path that does not hold ciphertext returns without enqueueing.
function encryptFrame(t, frame, controller) {
  t.frames += 1;
  const data = new Uint8Array(frame.data);
  t.bytes += data.byteLength;
  if (!member || encryptBroken) return; // no group (keyless, failed start): nothing to encrypt with
  if (drills.garbage) {
    const junk = new Uint8Array(Math.max(16, data.byteLength));
    crypto.getRandomValues(junk);
    junk.set(data.subarray(0, 10)); // keep the codec header so it is forwarded
    frame.data = junk.buffer;
    controller.enqueue(frame);
    return;
  }
  let out;
  try {
    const mime = frame.getMetadata?.().mimeType || t.options.codec || defaultMime(t.options.kind);
    out = member.encrypt(mime, data);
  } catch (err) {
    // A trap in WebAssembly leaves the module unusable: nothing is encrypted again.
    t.encryptErrors += 1;
    if (!encryptBroken) {
      encryptBroken = true;
      reportSendKey();
      post({ type: 'fault', reason: `encrypting a frame failed: ${err?.message ?? err}`, broken: true });
    }
    return;
  }
  if (!(out instanceof Uint8Array) || out.byteLength === 0) return; // no key yet: drop, never send in the clear
  frame.data = out.buffer;
  controller.enqueue(frame);
  if (drills.frameDigests && t.options.kind !== 'audio') postFrameDigest(t, data);
}

// Test drill `frameDigests` (recording.test.mjs): the SHA-256 of every video frame this
// page sent, before encryption, so a test can check that a recording holds exactly what
// was sent. At most MAX_FRAME_DIGESTS are reported.
const MAX_FRAME_DIGESTS = 20000;
let frameDigestsPosted = 0;
function postFrameDigest(t, data) {
  if (frameDigestsPosted >= MAX_FRAME_DIGESTS) return;
  frameDigestsPosted += 1;
  crypto.subtle.digest('SHA-256', data).then((d) => {
    const hex = [...new Uint8Array(d)].map((b) => b.toString(16).padStart(2, '0')).join('');
    post({ type: 'frame-digest', trackId: t.options.trackId ?? null, size: data.byteLength, digest: hex });
  }, () => {});
}
