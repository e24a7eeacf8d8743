// The stage's geometry: how many columns and rows, and how large each tile
// is, for `n` tiles on a stage of `width` x `height` CSS pixels. Pure
// arithmetic (no DOM): stage-view.js applies it, the unit tests check it.
//
// Grid view. Every tile keeps 16:9. Of all column counts, the one whose tiles
// are largest wins (the tile width is limited by the stage's width over the
// columns or by its height over the rows, whichever is tighter). On a
// landscape stage a layout never has more rows than columns, so two people
// sit side by side and three or four in 2x2, as on every call app; on a
// portrait stage (a phone held upright) they may stack.
//
// Speaker view. One tile large, the others in a strip under it: the strip
// takes about a fifth of the height (at least MIN_STRIP px), its tiles as wide
// as fits in one row; the large tile takes the rest.

export const ASPECT = 16 / 9;
export const GAP = 8;
export const MIN_STRIP = 72;
export const STRIP_SHARE = 0.2;

/**
 * The best grid for `n` tiles: `{cols, rows, tileWidth, tileHeight}` (whole
 * pixels, tileWidth floored so that `cols` tiles and their gaps fit).
 */
export function gridFor(n, width, height, { gap = GAP, aspect = ASPECT } = {}) {
  if (!(n > 0) || !(width > 0) || !(height > 0)) return { cols: 0, rows: 0, tileWidth: 0, tileHeight: 0 };
  const landscape = width >= height;
  let best = null;
  for (let cols = 1; cols <= n; cols += 1) {
    const rows = Math.ceil(n / cols);
    // A column count that leaves a whole column empty is the same grid as one fewer.
    if (cols > 1 && Math.ceil(n / (cols - 1)) === rows) continue;
    if (landscape && rows > cols) continue;
    const w = Math.min((width - gap * (cols - 1)) / cols, ((height - gap * (rows - 1)) / rows) * aspect);
    if (w <= 0) continue;
    if (!best || w > best.w) best = { cols, rows, w };
  }
  if (!best) best = { cols: n, rows: 1, w: Math.max(0, (width - gap * (n - 1)) / n) };
  const tileWidth = Math.floor(best.w);
  return { cols: best.cols, rows: best.rows, tileWidth, tileHeight: tileWidth / aspect };
}

/**
 * The speaker view for `n` tiles (one large, `n - 1` in the strip):
 * `{main: {width, height}, strip: {width, height, count}}`.
 */
export function speakerFor(n, width, height, { gap = GAP, aspect = ASPECT } = {}) {
  if (!(n > 0) || !(width > 0) || !(height > 0)) return { main: { width: 0, height: 0 }, strip: { width: 0, height: 0, count: 0 } };
  const k = n - 1;
  if (k === 0) {
    const g = gridFor(1, width, height, { gap, aspect });
    return { main: { width: g.tileWidth, height: g.tileHeight }, strip: { width: 0, height: 0, count: 0 } };
  }
  const stripHeight = Math.max(MIN_STRIP, height * STRIP_SHARE);
  const stripWidth = Math.max(0, Math.floor(Math.min(stripHeight * aspect, (width - gap * (k - 1)) / k)));
  const mainWidth = Math.max(0, Math.floor(Math.min(width, (height - stripWidth / aspect - gap) * aspect)));
  return {
    main: { width: mainWidth, height: mainWidth / aspect },
    strip: { width: stripWidth, height: stripWidth / aspect, count: k },
  };
}
