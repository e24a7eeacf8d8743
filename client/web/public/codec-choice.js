// A video codec everyone in the call decodes.
//
// Reporting. Right after `welcome` the page tells the coordinator which video
// codecs its browser decodes (`codecs {video: [...]}`: the media codecs of
// RTCRtpReceiver.getCapabilities('video'), lowercase, without `video/`, e.g.
// `["vp8", "h264", "vp9", "av1"]`). The coordinator logs it as a `codecs`
// entry and keeps it in the snapshot, so every member knows what every other
// one decodes (coordinator/PROTOCOL.md).
//
// Choosing. A publisher sends the codec the user picked (`codec=` or the
// lobby's select; VP8 by default) as long as every participant that reported
// decodes it; otherwise the first of FALLBACK (VP8, H.264, VP9) that every one decodes and this
// browser sends (VP8 is mandatory in WebRTC, so in practice VP8). A
// participant that has not reported yet counts as decoding everything: its
// report comes a moment after its `joined`, and the publisher switches then.
// When that participant leaves, the publisher goes back to its pick.
//
// Switching without a negotiation. A pushed video track offers the picked
// codec first and the fallbacks after it (sfu-link.js `preferCodec`), so the
// SFU's answer accepts all of them; a switch sets `encodings[i].codec` on the
// sender (RTCRtpSender.setParameters, SfuLink.setSendCodec, which puts it back
// after every negotiation: Chromium clears it then). The SFU forwards each packet with the
// payload type the subscriber negotiated for its codec, and the E2EE
// transform reads each frame's codec from its metadata.
//
// Test hook: `test_rxcodecs=vp8` (comma list; with --test-hooks only) makes
// the page report and negotiate only those codecs for receiving, as a browser
// without H.264 decoding would.

import { testParam } from './client-config.js';
import { codecSupport } from './tile-status.js';

/**
 * Codecs to fall back to, best first, after the user's pick: the ones the web
 * client can pick and the browser suite runs end to end through the E2EE
 * transform (codecs.test.mjs). Not AV1: a page that reported only AV1 made a
 * single-layer publisher switch to it, and its subscriber decrypted nothing
 * (measured, "no key"); AV1 through E2EE is not supported yet.
 */
export const FALLBACK = Object.freeze(['VP8', 'H264', 'VP9']);

/** Codecs that can be sent as simulcast (layer-choice.js `simulcastCodec`). */
const SIMULCAST = new Set(['VP8', 'H264']);

/** Most codec names reported (the coordinator's limit). */
export const MAX_CODECS = 16;

const NOT_MEDIA = /^(rtx|red|ulpfec|flexfec-03)$/i;

/** `video/H264` -> `h264`; null for what is not a media codec name. */
export function codecName(mime) {
  const m = /^video\/([A-Za-z0-9-]{1,16})$/.exec(String(mime ?? ''));
  if (!m || NOT_MEDIA.test(m[1])) return null;
  return m[1].toLowerCase();
}

/** The distinct media codec names of a capabilities codec list, at most MAX_CODECS. */
export function codecNames(codecs) {
  const out = [];
  for (const c of codecs ?? []) {
    const n = codecName(c?.mimeType);
    if (n && !out.includes(n)) out.push(n);
  }
  return out.slice(0, MAX_CODECS);
}

/**
 * The test hook's receive codec filter: a set of names (`test_rxcodecs=vp8,vp9`),
 * or null (no filter, or the server runs without test hooks).
 */
export function receiveFilter(value = testParam('test_rxcodecs')) {
  if (value === null || value === undefined) return null;
  const names = String(value).toLowerCase().split(',').map((s) => s.trim()).filter((s) => /^[a-z0-9-]{1,16}$/.test(s));
  return new Set(names);
}

/**
 * The codecs (capability objects) this page receives with: all of
 * RTCRtpReceiver.getCapabilities('video'), or only those the test hook allows
 * (then with their rtx/red/ulpfec helpers).
 */
export function receiveCapabilities(filter = receiveFilter()) {
  const caps = globalThis.RTCRtpReceiver?.getCapabilities?.('video')?.codecs ?? null;
  if (!caps || !filter) return caps;
  return caps.filter((c) => {
    const name = /^video\/(.+)$/i.exec(c.mimeType)?.[1] ?? '';
    return NOT_MEDIA.test(name) || filter.has(name.toLowerCase());
  });
}

/** What this page reports in `codecs`. */
export function reportedCodecs() {
  return codecNames(receiveCapabilities());
}

/**
 * The codec to send: `preferred` (VP8, VP9, H264, AV1) if every list in
 * `peers` (arrays of lowercase names; null/undefined: not reported, counts as
 * all) has it, else the first of FALLBACK that all have and `sendable` (names
 * this browser sends) allows; `simulcast`: only codecs that can be sent as
 * simulcast. Nothing fits: `preferred`.
 */
export function chooseCodec(preferred, peers, { sendable = null, simulcast = false } = {}) {
  const pick = String(preferred ?? 'VP8').toUpperCase();
  const lists = [...peers].filter(Array.isArray);
  const candidates = [pick, ...FALLBACK.filter((c) => c !== pick)];
  for (const c of candidates) {
    if (simulcast && c !== pick && !SIMULCAST.has(c)) continue;
    if (sendable && !sendable.includes(c.toLowerCase())) continue;
    if (lists.every((l) => l.includes(c.toLowerCase()))) return c;
  }
  return pick;
}

/**
 * The codec list for a pushed video transceiver's `setCodecPreferences`:
 * `codec` first (H.264: packetization mode 1 first), then the fallbacks, then
 * rtx/red/ulpfec. `caps` is RTCRtpSender.getCapabilities('video').codecs.
 */
export function sendPreferences(caps, codec) {
  const pick = String(codec ?? 'VP8').toUpperCase();
  const order = [pick, ...FALLBACK.filter((c) => c !== pick)];
  const out = [];
  for (const name of order) {
    const chosen = caps.filter((c) => c.mimeType.toLowerCase() === `video/${name}`.toLowerCase());
    if (name === 'H264') {
      // Packetization mode 1 first: what every browser decodes.
      chosen.sort((a, b) => Number(/packetization-mode=1/.test(b.sdpFmtpLine ?? '')) - Number(/packetization-mode=1/.test(a.sdpFmtpLine ?? '')));
    }
    out.push(...chosen);
  }
  const extras = caps.filter((c) => /\/(rtx|red|ulpfec)$/i.test(c.mimeType));
  return out.length ? [...out, ...extras] : [];
}

/**
 * The entry of `negotiated` (a sender's getParameters().codecs) to send
 * `codec` with: H.264 packetization mode 1 first. Null if not negotiated.
 */
export function negotiatedCodec(negotiated, codec) {
  const want = `video/${codec}`.toLowerCase();
  const matches = (negotiated ?? []).filter((c) => c.mimeType.toLowerCase() === want);
  return matches.find((c) => /packetization-mode=1/.test(c.sdpFmtpLine ?? '')) ?? matches[0] ?? null;
}

/**
 * Codec choice for a call controller: reports this page's codecs at `welcome`,
 * follows the others' (`codecs`, `left`, the snapshot) and switches the
 * codec of this page's pushed video tracks when the best shared one changes.
 * `call` needs `link` (RoomLink), `sfu` (SfuLink), `codec` (the pick), `me`
 * and `note`.
 */
export class CodecChoice {
  constructor(call) {
    this.call = call;
    this.peers = new Map(); // participant id -> codec names (reported)
    this.sending = new Map(); // participant id -> the codec its video goes out in (reported)
    this.mine = reportedCodecs();
    this.lastReport = null;
    this.current = new Map(); // trackName -> codec applied
    this.switches = 0;
    this.chain = Promise.resolve();
    const link = call.link;
    link.addEventListener('welcome', (ev) => {
      this.peers.clear();
      this.sending.clear();
      for (const p of ev.detail?.snapshot?.participants ?? []) this.#learn(p.id, p.codecs, p.sending);
      this.lastReport = null;
      this.#report();
      this.update();
    });
    link.addEventListener('resumed', () => this.#report());
    link.addEventListener('entry', (ev) => {
      const e = ev.detail;
      if (e.type === 'codecs') this.#learn(e.id, e.video, e.sending);
      else if (e.type === 'left') {
        this.peers.delete(e.id);
        this.sending.delete(e.id);
      }
      else if (!(e.type === 'published' && e.id === this.call.me)) return;
      // A new track of ours starts with the pick: set it too.
      this.update();
    });
  }

  #learn(id, video, sending) {
    if (!Array.isArray(video)) return;
    this.peers.set(id, video.filter((n) => typeof n === 'string').slice(0, MAX_CODECS));
    if (typeof sending === 'string' && /^[a-z0-9-]{1,16}$/.test(sending)) this.sending.set(id, sending);
    else this.sending.delete(id);
  }

  /** Tells the room what this page decodes and which codec its camera goes out in (when it changed). */
  #report() {
    const cam = [...(this.call.sfu?.pushes ?? [])].find(([, p]) => p.info?.kind === 'video');
    const codec = cam ? this.current.get(cam[0]) ?? cam[1].codec : null;
    const msg = { type: 'codecs', video: this.mine, ...(codec ? { sending: String(codec).toLowerCase() } : {}) };
    const text = JSON.stringify(msg);
    if (text === this.lastReport) return;
    if (this.call.link.send(msg) !== false) this.lastReport = text;
  }

  /**
   * Whether this page decodes participant `id`'s video `video` (a stats entry:
   * codec, negotiatedCodecs): from the RTP it received when there is some
   * (tile-status.js codecSupport), else from the codec `id` says it sends.
   * `{supported: true|false|null, name}`.
   */
  support(id, video, caps = receiveCapabilities()) {
    const base = codecSupport(video?.codec ?? null, video?.negotiatedCodecs ?? null, caps);
    if (base.supported !== null) return base;
    const sending = this.sending.get(id);
    if (sending && !this.mine.includes(sending)) return { supported: false, name: sending.toUpperCase() };
    return base;
  }

  /** The codec this page's video goes out in now (`simulcast`: for a multi-layer sender). */
  wanted({ simulcast = false } = {}) {
    const others = [...this.peers].filter(([id]) => id !== this.call.me).map(([, v]) => v);
    const sendable = codecNames(globalThis.RTCRtpSender?.getCapabilities?.('video')?.codecs);
    return chooseCodec(this.call.codec, others, { sendable: sendable.length ? sendable : null, simulcast });
  }

  /** Sets every pushed video track's codec to the one wanted now (in order, one at a time). */
  update() {
    this.chain = this.chain.then(() => this.#apply()).catch((err) => this.call.note?.(`video codec: ${err.message}`));
    return this.chain;
  }

  async #apply() {
    const sfu = this.call.sfu;
    if (!sfu?.pushes) return;
    for (const [trackName, push] of sfu.pushes) {
      if (push.track?.kind !== 'video') continue;
      const encodings = push.transceiver.sender.getParameters().encodings ?? [];
      const codec = this.wanted({ simulcast: encodings.length > 1 });
      if (push.codec === codec && this.current.get(trackName) === codec) continue;
      const before = this.current.get(trackName) ?? push.codec;
      if (!(await sfu.setSendCodec(trackName, codec))) continue;
      this.current.set(trackName, codec);
      if (before && before !== codec) this.switches += 1;
    }
    this.#report();
  }

  /** For tests: `{peers: {id: [...]}, current: {trackName: codec}, switches}`. */
  state() {
    return {
      peers: Object.fromEntries(this.peers),
      sending: Object.fromEntries(this.sending),
      current: Object.fromEntries(this.current),
      switches: this.switches,
      reported: reportedCodecs(),
    };
  }
}
