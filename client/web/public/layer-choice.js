// Simulcast layers: what this page publishes, and which layer each remote
// video tile asks the SFU for.
//
// Publishing. The camera goes out as three encodings of one track, `q`, `h`
// and `f` (quarter, half and full resolution: the rids the SFU ranks, see
// sfu/src/layer.rs). Chromium allocates layers by capture size (see
// layerCount): a 640x480 capture goes out as two layers, a 320x240 one as a
// single plain layer. A rid names a width class, whatever the capture: `q` is
// about 320 px wide, `h` 640, `f` 1280 (a 640x480 capture sends `q` and `h`),
// so that a tile can ask by the width it shows. A screen share goes out as `h` and `f`, with the track's
// `contentHint` set to `detail` (text and edges stay sharp; the encoder lowers
// the frame rate first).
//
// Choosing. Each remote video tile asks for the smallest layer that still
// covers its rendered size: `q` up to 320 device pixels of source width, `h` up
// to 640, else `f` (`PUT tracks/update` with `simulcast.preferredRid`: no SDP).
// The size comes from the view (tile-watch.js: a ResizeObserver on the tile's
// <video>); with `object-fit: cover` a tile shows its video cropped to the
// tile's shape, so the width the source needs is max(width, height x aspect).
// Changes wait DEBOUNCE_MS, so a window being dragged sends one request, not
// one per frame. This module has no DOM: the controller owns the choice, the
// view only reports what it shows.
//
// Pausing. A tile that is off-screen (IntersectionObserver) or on a hidden page
// (`document.visibilityState`), as tile-watch.js reports, asks for the lowest
// layer, `q`, and says `paused`. The SFU's API has no "pause" for a pulled track; of what it has,
// the lowest layer is the cheapest correct choice:
//   - closing the pull and pulling again on return costs two SDP negotiations
//     per scroll or tab switch, a new m-line and E2EE transform each time, and
//     a black tile until the next keyframe (the SFU throttles keyframe requests
//     to one a second), while its saving over `q` is ~150 kbit/s per tile;
//   - the receiver cannot be switched off without a negotiation either
//     (`direction` changes need an offer/answer), and a disabled remote
//     MediaStreamTrack is still received and decoded by Chromium;
//   - with `q` the decoder stays warm: on return the tile shows the small
//     layer at once and the SFU moves it up on the next keyframe of the layer
//     it asks for. And when no tile anywhere wants `h`/`f` of a publisher, the
//     SFU/coordinator can turn those encodings off at the source (dynacast).
// A track without simulcast (one layer) keeps flowing when paused.

/** Debounce of layer requests after a resize or visibility change (ms). */
export const DEBOUNCE_MS = 300;

/** The layers, lowest first: rid and the largest source width (device px) it serves. */
export const LAYERS = [
  { rid: 'q', upTo: 320 },
  { rid: 'h', upTo: 640 },
  { rid: 'f', upTo: Infinity },
];

/** The rid a paused tile asks for. */
export const PAUSED_RID = 'q';

/**
 * How many simulcast layers Chromium sends for a capture of `pixels`
 * (width x height): its table (libwebrtc simulcast.cc) allows 3 from 960x540,
 * 2 from 480x270, else 1. It drops layers beyond that count from the top, so
 * asking 640x480 for q/h/f at 4/2/1 would send only 160x120 and 320x240, and
 * 320x240 only 80x60 (measured): the encodings must match the capture.
 */
export function layerCount(pixels) {
  if (pixels >= 960 * 540) return 3;
  if (pixels >= 480 * 270) return 2;
  return 1;
}

/**
 * The `sendEncodings` for a video track of `kind` ('video': camera,
 * 'screenshare') captured at `width` x `height` (unknown: as for 1280x720):
 * the top layer is always the full capture size. One layer (no rid, no
 * simulcast) when `simulcast` is false or the capture is too small for two.
 * The rids are fixed at the first negotiation: a later device change to a
 * camera of another size keeps them (Chromium then sends what it can).
 */
export function sendEncodings(kind, { simulcast = true, width = 1280, height = 720 } = {}) {
  const screen = kind === 'screenshare';
  const single = [{ maxBitrate: screen ? 1_500_000 : 1_000_000 }];
  const count = simulcast ? Math.min(screen ? 2 : 3, layerCount((width || 1280) * (height || 720))) : 1;
  if (count === 1) return single;
  if (screen) {
    return [
      { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 400_000 },
      { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
    ];
  }
  if (count === 2) {
    // A 640x480-class capture: its layers are about as wide as q and h of a 1280x720
    // one, and named so (a tile asks by width: see ridForSize).
    return [
      { rid: 'q', scaleResolutionDownBy: 2, maxBitrate: 150_000 },
      { rid: 'h', scaleResolutionDownBy: 1, maxBitrate: 500_000 },
    ];
  }
  return [
    { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
    { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000 },
    { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
  ];
}

/**
 * Whether video in `codec` is sent as simulcast. VP8 and H.264 are. VP9 is not:
 * Chromium sends only the first of several VP9 encodings without per-encoding
 * scalability modes (measured: one 320x180 stream), and the SFU forwards VP9
 * whole (no VP9 PictureID rewrite); AV1 likewise.
 */
export function simulcastCodec(codec = 'VP8') {
  return !/^(VP9|AV1)$/i.test(codec ?? 'VP8');
}

/** The content hint of a published track of `kind` ('' : leave the browser's default). */
export function contentHint(kind) {
  return kind === 'screenshare' ? 'detail' : '';
}

/**
 * The rid for a tile rendering `width` x `height` CSS pixels of a source of
 * aspect `aspect` (width / height) with `object-fit: cover`, at `dpr`.
 */
export function ridForSize(width, height, { aspect = 16 / 9, dpr = 1 } = {}) {
  const a = Number.isFinite(aspect) && aspect > 0 ? aspect : 16 / 9;
  const needed = Math.max(width, height * a) * (dpr > 0 ? dpr : 1);
  return LAYERS.find((l) => needed <= l.upTo).rid;
}

/**
 * Decides and asks which layer each remote video tile gets. No DOM: the view
 * reports each tile's rendered size and visibility (`measure`, from
 * tile-watch.js) and whether the page is hidden (`setPageHidden`).
 * `apply(key, rid)` sends the request for tile `key` and resolves true once
 * sent, false when the tile has no pulled video yet (then `retry(key)` sends it
 * later).
 */
export class LayerChoice {
  /**
   * @param {object} opts
   * @param {(key: string, rid: string) => Promise<boolean>} opts.apply
   * @param {number} [opts.debounceMs]
   */
  constructor({ apply, debounceMs = DEBOUNCE_MS }) {
    this.apply = apply;
    this.debounceMs = debounceMs;
    this.tiles = new Map(); // key -> {width, height, visible, aspect, dpr, sent, sending}
    this.pageHidden = false;
    this.timer = null;
    this.closed = false;
  }

  /**
   * Tile `key` is shown at `geom`: `{width, height}` (CSS px), `visible` (in
   * view), `aspect` (its video's width / height, 0 while unknown), `dpr`. A
   * tile not seen before starts being watched.
   */
  measure(key, geom = {}) {
    if (this.closed) return;
    let t = this.tiles.get(key);
    if (!t) {
      t = { width: 0, height: 0, visible: true, aspect: 0, dpr: 1, sent: null, sending: false };
      this.tiles.set(key, t);
    }
    for (const k of ['width', 'height', 'aspect', 'dpr']) if (Number.isFinite(geom[k])) t[k] = geom[k];
    if (typeof geom.visible === 'boolean') t.visible = geom.visible;
    this.#schedule();
  }

  /** The page is hidden (every tile pauses) or shown again. */
  setPageHidden(hidden) {
    this.pageHidden = Boolean(hidden);
    this.#schedule();
  }

  unobserve(key) {
    this.tiles.delete(key);
  }

  /** Whether tile `key` is paused (off-screen or the page hidden). */
  paused(key) {
    const t = this.tiles.get(key);
    return Boolean(t) && (this.pageHidden || !t.visible);
  }

  /** The rid tile `key` wants now (null for an unknown tile or one not laid out yet). */
  wanted(key) {
    const t = this.tiles.get(key);
    if (!t) return null;
    if (this.paused(key)) return PAUSED_RID;
    if (!(t.width > 0 && t.height > 0)) return null;
    return ridForSize(t.width, t.height, { aspect: t.aspect > 0 ? t.aspect : 16 / 9, dpr: t.dpr });
  }

  /** What tile `key` asked for last (null if nothing yet), and whether it is paused. */
  state(key) {
    const t = this.tiles.get(key);
    return t ? { rid: t.sent, wanted: this.wanted(key), paused: this.paused(key) } : null;
  }

  /**
   * Records that tile `key`'s video was pulled asking for `rid` (the initial
   * preference went with the pull request).
   */
  pulledWith(key, rid) {
    const t = this.tiles.get(key);
    if (t) t.sent = rid ?? null;
    this.#schedule();
  }

  /** Forgets what was sent (a new SFU session: every pull starts over). */
  reset() {
    for (const t of this.tiles.values()) t.sent = null;
  }

  /** Sends tile `key`'s choice again if it differs from what went out (its video was just pulled). */
  retry(key) {
    if (this.tiles.has(key)) this.#schedule();
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    this.tiles.clear();
  }

  #schedule() {
    if (this.closed || this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.flush();
    }, this.debounceMs);
  }

  /** Sends every tile's changed choice now (normally after the debounce). */
  async flush() {
    for (const [key, t] of this.tiles) {
      const rid = this.wanted(key);
      if (!rid || rid === t.sent || t.sending) continue;
      t.sending = true;
      let sent = false;
      try {
        sent = await this.apply(key, rid);
        if (sent) t.sent = rid;
      } catch {
        // Not sent: the next change (or retry) tries again.
      } finally {
        t.sending = false;
      }
      // Changed meanwhile: go again after the debounce. (Nothing to send to yet: the
      // pull calls retry().)
      if (sent && this.tiles.get(key) === t && this.wanted(key) !== t.sent) this.#schedule();
    }
  }
}
