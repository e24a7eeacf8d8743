// The stage: one tile per camera or screen, laid out to fill the space
// (stage-layout.js), with the active speaker outlined and a speaker view.
// DOM only: it renders the model's state (call-model.js) and reports the
// user's intents (`pin`) and, through tile-watch.js, the size and visibility
// each remote tile is shown at (`tileShown`, `tileGone`, `pageHidden`: the
// controller picks each tile's simulcast layer from them).
//
// Tile markup (tests rely on it): `.tile[data-key]` with a <video>, a
// `.muted-cam` note, a `.hand` badge and a `.label` holding `.name` and two
// `.pill`s (connection, media/E2EE state). `.tile.active-speaker` is the
// active speaker, `.tile.main` the large tile of the speaker view,
// `.tile.speaking` a participant whose own voice detector hears speech.

import { stageOrder } from './call-model.js';
import { gridFor, speakerFor, GAP } from './stage-layout.js';
import { icon } from './icons.js';
import { TileWatcher } from './tile-watch.js';

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v;
    else if (k.startsWith('data-') || k.startsWith('aria-') || k === 'role') node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

export class StageView {
  /**
   * @param {object} o
   * @param {HTMLElement} o.grid the stage element (#grid)
   * @param {{tileShown: Function, tileGone: Function, pageHidden: Function, pin: Function}} o.intents
   */
  constructor({ grid, intents }) {
    this.grid = grid;
    this.intents = intents;
    this.tiles = new Map(); // key -> {root, video, nameTag, conn, e2ee, hand, camOff, pin, media}
    this.state = null;
    this.watcher = new TileWatcher({
      report: (key, geom) => intents.tileShown?.(key, geom),
      pageHidden: (hidden) => intents.pageHidden?.(hidden),
    });
    this.resize = typeof ResizeObserver === 'function' ? new ResizeObserver(() => this.layout()) : null;
    this.resize?.observe(grid);
  }

  /** Renders the parts of `state` in `changed` (a Set from the model). */
  render(state, changed) {
    this.state = state;
    if (changed.has('tiles') || changed.has('stage')) this.syncTiles(state);
    if (changed.has('tiles') || changed.has('stage') || changed.has('people')) this.decorate(state);
    // Tiles come and go with a 'stage' change too; a 'tiles' change alone (a pill's text) does
    // not move anything, and laying out reads the stage's size (a forced layout).
    if (changed.has('stage')) this.layout();
  }

  syncTiles(state) {
    for (const [key, t] of this.tiles) {
      if (state.tiles.has(key)) continue;
      t.root.remove();
      this.tiles.delete(key);
      this.watcher.unwatch(key);
      this.intents.tileGone?.(key);
    }
    for (const [key, tile] of state.tiles) {
      let t = this.tiles.get(key);
      if (!t) t = this.mount(tile);
      if (tile.media !== t.media) {
        // A track arrived in the tile's stream: (re)start playback.
        t.media = tile.media;
        t.video.play().catch(() => {});
      }
      // Only what differs is written: every write invalidates style for the whole stage.
      if (t.name !== tile.name) {
        t.name = tile.name;
        t.nameTag.textContent = tile.name;
        t.root.setAttribute('aria-label', tile.name);
        t.pin.setAttribute('aria-label', `Show ${tile.name} large`);
      }
      if (t.camOff.hidden !== Boolean(tile.camOn)) t.camOff.hidden = Boolean(tile.camOn);
      for (const [pill, value] of [[t.conn, tile.conn], [t.e2ee, tile.e2ee]]) {
        if (!value) continue;
        if (pill.textContent !== value[0]) pill.textContent = value[0];
        const cls = `pill ${value[1]}`;
        if (pill.className !== cls) pill.className = cls;
      }
    }
  }

  mount(tile) {
    const { key } = tile;
    const video = el('video', { autoplay: true, playsInline: true, muted: tile.local });
    if (tile.kind === 'screenshare') video.classList.add('screen');
    const nameTag = el('span', { class: 'name' }, tile.name);
    const conn = el('span', { class: 'pill' });
    const e2ee = el('span', { class: 'pill' });
    const speaking = el('span', { class: 'speaking-icon', title: 'Speaking' }, icon('speaking'));
    const hand = el('span', { class: 'hand', hidden: true, title: 'Hand raised' }, 'raised hand');
    const camOff = el('div', { class: 'muted-cam', hidden: true }, 'camera off');
    const pin = el('button', { type: 'button', class: 'pin', 'aria-pressed': 'false', title: 'Show large (speaker view)' }, icon('pin'));
    pin.addEventListener('click', () => {
      const pinned = this.state?.layout === 'speaker' && this.state?.pinned === key;
      this.intents.pin?.(pinned ? null : key);
    });
    const root = el('div', { class: 'tile', 'data-key': key, role: 'group', 'aria-label': tile.name },
      video, camOff, hand, pin, el('div', { class: 'label' }, speaking, nameTag, conn, e2ee));
    if (tile.local) root.classList.add('local');
    if (tile.kind === 'screenshare') root.classList.add('screen');
    this.grid.append(root);
    video.srcObject = tile.stream ?? null;
    const t = { root, video, nameTag, conn, e2ee, hand, camOff, pin, media: tile.media, name: tile.name };
    this.tiles.set(key, t);
    if (tile.media) video.play().catch(() => {});
    if (!tile.local) this.watcher.watch(key, video);
    return t;
  }

  /** Hand, speaking, active speaker and pin state of every tile. */
  decorate(state) {
    const me = state.me;
    for (const [key, t] of this.tiles) {
      const tile = state.tiles.get(key);
      if (!tile) continue;
      const id = tile.local ? me : tile.participantId;
      const p = id !== null && id !== undefined ? state.participants.get(id) : null;
      const camera = tile.kind !== 'screenshare';
      const handHidden = !(camera && p?.hand);
      if (t.hand.hidden !== handHidden) t.hand.hidden = handHidden;
      const speaking = camera && (tile.local ? state.selfSpeaking : Boolean(p?.speaking));
      if (t.root.classList.contains('speaking') !== speaking) t.root.classList.toggle('speaking', speaking);
      const active = camera && !tile.local && state.activeSpeaker !== null && tile.participantId === state.activeSpeaker;
      if (t.root.classList.contains('active-speaker') !== active) {
        t.root.classList.toggle('active-speaker', active);
        if (active) t.root.dataset.activeSpeaker = 'true';
        else delete t.root.dataset.activeSpeaker;
      }
      const pressed = String(state.layout === 'speaker' && state.pinned === key);
      if (t.pin.getAttribute('aria-pressed') !== pressed) t.pin.setAttribute('aria-pressed', pressed);
    }
  }

  /** Sizes the tiles for the stage's current size and the layout. */
  layout() {
    const state = this.state;
    if (!state) return;
    const { order, main } = stageOrder(state);
    const keys = order.filter((k) => this.tiles.has(k));
    const box = this.grid.getBoundingClientRect();
    const cs = getComputedStyle(this.grid);
    const width = box.width - parseFloat(cs.borderLeftWidth || 0) - parseFloat(cs.borderRightWidth || 0);
    const height = box.height - parseFloat(cs.borderTopWidth || 0) - parseFloat(cs.borderBottomWidth || 0);
    const speaker = state.layout === 'speaker' && main !== null && keys.length > 1;
    this.grid.classList.toggle('speaker-view', speaker);
    this.grid.dataset.layout = speaker ? 'speaker' : 'grid';
    keys.forEach((k, i) => {
      const t = this.tiles.get(k);
      t.root.style.order = String(k === main && speaker ? -1 : i);
      t.root.classList.toggle('main', speaker && k === main);
    });
    const px = (v) => `${Math.max(0, v)}px`;
    const set = (name, value) => {
      if (this.grid.style.getPropertyValue(name) !== value) this.grid.style.setProperty(name, value);
    };
    if (speaker) {
      const s = speakerFor(keys.length, width, height, { gap: GAP });
      set('--main-w', px(s.main.width));
      set('--strip-w', px(s.strip.width));
      // The large tile takes a row of its own; the strip is centred under it.
      set('--main-margin', px(Math.floor((width - s.main.width) / 2)));
      set('--pad-x', '0px');
      this.grid.dataset.cols = '';
      this.grid.dataset.rows = '';
    } else {
      const g = gridFor(keys.length, width, height, { gap: GAP });
      set('--tile-w', px(g.tileWidth));
      // Narrows the rows to exactly `cols` tiles, so the flex rows wrap where the grid says.
      const row = g.cols * g.tileWidth + (g.cols - 1) * GAP;
      set('--pad-x', px(Math.floor((width - row) / 2)));
      this.grid.dataset.cols = String(g.cols);
      this.grid.dataset.rows = String(g.rows);
    }
  }
}
