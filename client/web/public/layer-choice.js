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
// The size comes from a ResizeObserver on the tile's <video>; with
// `object-fit: cover` a 4:3 tile shows a 16:9 video cropped, so the width the
// source needs is max(width, height x aspect). Changes wait DEBOUNCE_MS, so a
// window being dragged sends one request, not one per frame.
//
// Pausing. A tile that is off-screen (IntersectionObserver) or on a hidden page
// (`document.visibilityState`) asks for the lowest layer, `q`, and says
// `paused`. The SFU's API has no "pause" for a pulled track; of what it has,
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
 * Watches remote video tiles and asks for layers. `apply(key, rid)` sends the
 * request for tile `key` and resolves true once sent, false when the tile has no
 * pulled video yet (then `retry(key)` sends it later).
 */
export class LayerChoice {
  /**
   * @param {object} opts
   * @param {(key: string, rid: string) => Promise<boolean>} opts.apply
   * @param {number} [opts.debounceMs]
   * @param {Document} [opts.doc]
   */
  constructor({ apply, debounceMs = DEBOUNCE_MS, doc = globalThis.document }) {
    this.apply = apply;
    this.debounceMs = debounceMs;
    this.doc = doc;
    this.tiles = new Map(); // key -> {video, width, height, visible, sent, sending, switches}
    this.timer = null;
    this.closed = false;
    this.resize = typeof ResizeObserver === 'function' ? new ResizeObserver((entries) => {
      for (const e of entries) {
        const t = this.#byVideo(e.target);
        if (!t) continue;
        t.width = e.contentRect.width;
        t.height = e.contentRect.height;
      }
      this.#schedule();
    }) : null;
    this.intersect = typeof IntersectionObserver === 'function' ? new IntersectionObserver((entries) => {
      for (const e of entries) {
        const t = this.#byVideo(e.target);
        if (t) t.visible = e.isIntersecting;
      }
      this.#schedule();
    }) : null;
    this.onVisibility = () => this.#schedule();
    this.doc?.addEventListener?.('visibilitychange', this.onVisibility);
  }

  /** Starts watching the <video> of remote tile `key`. */
  observe(key, video) {
    const old = this.tiles.get(key);
    if (old?.video === video) return;
    if (old) this.unobserve(key);
    const rect = video.getBoundingClientRect?.() ?? { width: 0, height: 0 };
    this.tiles.set(key, { video, width: rect.width, height: rect.height, visible: true, sent: null, sending: false });
    this.resize?.observe(video);
    this.intersect?.observe(video);
    this.#schedule();
  }

  unobserve(key) {
    const t = this.tiles.get(key);
    if (!t) return;
    this.resize?.unobserve(t.video);
    this.intersect?.unobserve(t.video);
    this.tiles.delete(key);
  }

  /** Whether tile `key` is paused (off-screen or the page hidden). */
  paused(key) {
    const t = this.tiles.get(key);
    return Boolean(t) && (this.doc?.visibilityState === 'hidden' || !t.visible);
  }

  /** The rid tile `key` wants now (null for an unknown tile or one not laid out yet). */
  wanted(key) {
    const t = this.tiles.get(key);
    if (!t) return null;
    if (this.paused(key)) return PAUSED_RID;
    if (!(t.width > 0 && t.height > 0)) return null;
    const v = t.video;
    const aspect = v.videoWidth > 0 && v.videoHeight > 0 ? v.videoWidth / v.videoHeight : 16 / 9;
    return ridForSize(t.width, t.height, { aspect, dpr: globalThis.devicePixelRatio ?? 1 });
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
    this.resize?.disconnect();
    this.intersect?.disconnect();
    this.doc?.removeEventListener?.('visibilitychange', this.onVisibility);
    this.tiles.clear();
  }

  #byVideo(video) {
    for (const t of this.tiles.values()) if (t.video === video) return t;
    return null;
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
