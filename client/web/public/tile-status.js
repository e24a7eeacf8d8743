// The status of a remote participant's tile, from the current stats window
// (the change since the previous snapshot, about a second), never from the
// last thing that ever went wrong: a healthy participant shows green again as
// soon as its frames decode, whatever was dropped a minute ago.
//
// Two pills per tile:
//   conn  the media path: live (frames decoded in this window), receiving
//         (packets, nothing decoded), waiting for media, no tracks
//   media what the video is doing, one of (`state`):
//     decoding          frames decoded in this window (with the E2EE epoch)
//     paused            this page paused it (tile off-screen or page hidden)
//     camera off        the publisher turned its camera off
//     unsupported codec the track's codec is not one this browser decodes
//     waiting for key   frames arrive but wait for, or were dropped for want
//                       of, a key this page should get soon (it is joining, or
//                       the sender just moved to a new epoch)
//     no key            the same for longer than NO_KEY_AFTER_MS while this
//                       page is a member: the sender uses a key we do not hold
//     cannot decrypt    frames dropped in this window for another reason
//                       (authentication failed, replay...)
//     waiting for keyframe  frames decrypt but none decoded yet
//     no media          nothing arrived in this window
//     not decrypting    a test page that does not decrypt
//
// Pure: no DOM, no peer connection. app.js feeds it snapshots and renders the
// result with the view.

/** How long "waiting for key" lasts (while a member) before it is called "no key" (ms). */
export const NO_KEY_AFTER_MS = 5000;

/** Drop codes (client/wasm/src/inbound.rs drop_code) that mean "no key for that frame". */
const KEY_DROPS = new Set(['no-key', 'key-expired', 'generation-expired', 'generation-out-of-range']);

const num = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : 0);

/**
 * The counters' change from `prev` to `cur` (remote track entries of
 * `window.satsuma.stats()`); a counter that went down (a new pull) counts
 * from zero.
 */
export function windowOf(prev, cur) {
  const d = (k) => {
    const c = num(cur?.[k]);
    const p = num(prev?.[k]);
    return c >= p ? c - p : c;
  };
  return {
    packets: d('packetsReceived'), decoded: d('framesDecoded'), frames: d('workerFrames'),
    decrypted: d('decrypted'), dropped: d('dropped'), samples: d('totalSamplesReceived'),
  };
}

/**
 * The status of one tile from one window. `s`: {video, videoPrev, audio,
 * audioPrev (track entries or null), flags: {decrypt, mls}, member (this page
 * holds the group's keys), paused, camOn, codec: {supported, name}, keyWaitMs
 * (how long the tile has been waiting for a key)}.
 * Returns `{state, conn: [text, level], media: [text, level]}`.
 */
export function tileStatus(s) {
  const { video, audio } = s;
  const vw = windowOf(s.videoPrev, video);
  const aw = windowOf(s.audioPrev, audio);
  let conn;
  if (!video && !audio) conn = ['no tracks', 'warn'];
  else if (vw.decoded > 0) conn = ['live', 'ok'];
  else if (vw.packets > 0 || aw.packets > 0) conn = ['receiving', 'warn'];
  else conn = [s.mediaState === 'connected' || !s.mediaState ? 'waiting for media' : `media ${s.mediaState}`, 'warn'];

  const epoch = [video, audio].find((t) => t && t.epoch !== null && t.epoch !== undefined)?.epoch;
  const ep = epoch !== undefined ? ` · epoch ${epoch}` : '';
  const st = (state, text, level) => ({ state, conn, media: [text, level] });

  if (s.flags && (!s.flags.decrypt || !s.flags.mls)) return st('not decrypting', 'not decrypting', 'bad');
  if (!video) {
    if (audio && aw.decrypted > 0) return st('audio only', `audio only · E2EE${ep}`, 'ok');
    return st('no media', audio ? 'no media' : 'no tracks', 'warn');
  }
  if (s.codec && s.codec.supported === false) {
    return st('unsupported codec', `unsupported codec${s.codec.name ? `: ${s.codec.name}` : ''}`, 'bad');
  }
  if (s.paused) return st('paused', 'paused', 'idle');
  if (s.camOn === false && vw.decoded === 0) return st('camera off', 'camera off', 'idle');
  if (vw.decoded > 0) return st('decoding', `decoding · E2EE${ep}`, 'ok');
  const keyDrop = vw.dropped > 0 && KEY_DROPS.has(video.lastDrop);
  const held = num(video.held) > 0 && vw.decrypted === 0;
  if (keyDrop || held || (!s.member && vw.frames > 0)) {
    if (s.member && num(s.keyWaitMs) >= NO_KEY_AFTER_MS) return st('no key', 'no key', 'bad');
    return st('waiting for key', 'waiting for key', 'warn');
  }
  if (vw.dropped > 0 && vw.decrypted === 0) return st('cannot decrypt', `cannot decrypt: ${video.lastDrop ?? 'dropped'}`, 'bad');
  if (vw.decrypted > 0) return st('waiting for keyframe', 'waiting for keyframe', 'warn');
  if (!s.member) return st('waiting for key', 'waiting for key', 'warn');
  return st('no media', 'no video', 'warn');
}

/**
 * Keeps the previous window per tile and how long each has waited for a key.
 * `update(key, input, now)` returns `tileStatus` of the window since the last
 * call for `key`.
 */
export class TileStatus {
  constructor() {
    this.tiles = new Map(); // key -> {video, audio, keyWaitSince, state}
  }

  update(key, input, now = performance.now()) {
    const last = this.tiles.get(key) ?? { video: null, audio: null, keyWaitSince: null, state: null };
    const sameVideo = last.video && input.video && last.video.mid === input.video.mid;
    const sameAudio = last.audio && input.audio && last.audio.mid === input.audio.mid;
    const keyWaitMs = last.keyWaitSince === null ? 0 : now - last.keyWaitSince;
    const result = tileStatus({
      ...input,
      videoPrev: sameVideo ? last.video : null,
      audioPrev: sameAudio ? last.audio : null,
      keyWaitMs,
    });
    const waiting = result.state === 'waiting for key' || result.state === 'no key';
    this.tiles.set(key, {
      video: input.video ?? null,
      audio: input.audio ?? null,
      keyWaitSince: waiting ? (last.keyWaitSince ?? now) : null,
      state: result.state,
    });
    return result;
  }

  /** The last state of tile `key` (null before its first window). */
  state(key) {
    return this.tiles.get(key)?.state ?? null;
  }

  forget(key) {
    this.tiles.delete(key);
  }
}

/**
 * Whether this browser decodes a pulled video track: `mime` is its codec from
 * the stats (null before RTP arrived), `negotiated` the codecs its m-line
 * negotiated (null before negotiation), `caps` RTCRtpReceiver.getCapabilities
 * ('video').codecs (null if unknown). Returns `{supported, name}`;
 * `supported` is null when it cannot be told yet.
 */
export function codecSupport(mime, negotiated, caps) {
  const media = (list) => (list ?? []).filter((m) => !/\/(rtx|red|ulpfec|flexfec-03)$/i.test(m));
  if (mime) {
    if (!caps) return { supported: null, name: mime };
    const ok = caps.some((c) => c.mimeType.toLowerCase() === String(mime).toLowerCase());
    return { supported: ok, name: mime.replace(/^video\//i, '') };
  }
  if (Array.isArray(negotiated) && media(negotiated).length === 0) return { supported: false, name: null };
  return { supported: null, name: null };
}
