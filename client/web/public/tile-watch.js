// The view side of the layer choice: watches each remote tile's <video> for
// its rendered size (ResizeObserver), whether it is in view
// (IntersectionObserver) and the size of its source (the video's `resize`
// event), and the page for being hidden (`visibilitychange`), and reports
// them; the controller's LayerChoice (layer-choice.js, no DOM) decides which
// simulcast layer each tile asks for.

export class TileWatcher {
  /**
   * @param {object} o
   * @param {(key: string, geom: {width, height, visible, aspect, dpr}) => void} o.report
   * @param {(hidden: boolean) => void} o.pageHidden
   * @param {Document} [o.doc]
   */
  constructor({ report, pageHidden, doc = globalThis.document }) {
    this.report = report;
    this.doc = doc;
    this.videos = new Map(); // key -> {video, onResize}
    this.resize = typeof ResizeObserver === 'function' ? new ResizeObserver((entries) => {
      for (const e of entries) {
        const key = this.#keyOf(e.target);
        if (key !== null) this.#send(key, { width: e.contentRect.width, height: e.contentRect.height });
      }
    }) : null;
    this.intersect = typeof IntersectionObserver === 'function' ? new IntersectionObserver((entries) => {
      for (const e of entries) {
        const key = this.#keyOf(e.target);
        if (key !== null) this.#send(key, { visible: e.isIntersecting });
      }
    }) : null;
    this.onVisibility = () => pageHidden(this.doc?.visibilityState === 'hidden');
    this.doc?.addEventListener?.('visibilitychange', this.onVisibility);
    if (this.doc?.visibilityState === 'hidden') pageHidden(true);
  }

  /** Starts watching tile `key` shown in `video`; reports its size at once. */
  watch(key, video) {
    const old = this.videos.get(key);
    if (old?.video === video) return;
    if (old) this.unwatch(key);
    const onResize = () => this.#send(key, {});
    video.addEventListener?.('resize', onResize);
    this.videos.set(key, { video, onResize });
    const rect = video.getBoundingClientRect?.() ?? { width: 0, height: 0 };
    this.#send(key, { width: rect.width, height: rect.height, visible: true });
    this.resize?.observe(video);
    this.intersect?.observe(video);
  }

  unwatch(key) {
    const w = this.videos.get(key);
    if (!w) return;
    this.resize?.unobserve(w.video);
    this.intersect?.unobserve(w.video);
    w.video.removeEventListener?.('resize', w.onResize);
    this.videos.delete(key);
  }

  close() {
    this.resize?.disconnect();
    this.intersect?.disconnect();
    for (const key of [...this.videos.keys()]) this.unwatch(key);
    this.doc?.removeEventListener?.('visibilitychange', this.onVisibility);
  }

  #keyOf(video) {
    for (const [key, w] of this.videos) if (w.video === video) return key;
    return null;
  }

  #send(key, geom) {
    const v = this.videos.get(key)?.video;
    const aspect = v && v.videoWidth > 0 && v.videoHeight > 0 ? v.videoWidth / v.videoHeight : 0;
    this.report(key, { ...geom, aspect, dpr: globalThis.devicePixelRatio ?? 1 });
  }
}
