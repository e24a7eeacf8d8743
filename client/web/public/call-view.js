// Rendering of the call: video tiles, the people list with host actions, the
// safety number and the status pills. Pure DOM updates from plain state
// objects; no state of its own beyond the elements it created.

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v;
    else if (k.startsWith('data-')) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

/** Formats 30 digits as 6 groups of 5. */
export function formatSafetyNumber(digits) {
  if (typeof digits !== 'string' || !/^\d{30}$/.test(digits)) return null;
  return digits.match(/\d{5}/g).join(' ');
}

export class CallView {
  constructor({ onHostAction }) {
    this.tiles = new Map(); // key -> {root, video, label, ...}
    this.onHostAction = onHostAction;
  }

  /** Shows one of the three screens: lobby, call, left. */
  show(screen) {
    for (const id of ['lobby', 'call', 'left']) $(id).hidden = id !== screen;
  }

  banner(text, level = 'warn') {
    const b = $('banner');
    b.hidden = !text;
    b.textContent = text ?? '';
    b.className = `banner ${level}`;
  }

  linkStatus(text, level) {
    const s = $('link-status');
    s.hidden = !text;
    s.textContent = text;
    s.className = `pill ${level}`;
  }

  /** Creates or returns the tile `key` (`<participant id>` or `<id>:screen`). */
  tile(key, { name, local = false }) {
    let t = this.tiles.get(key);
    if (t) return t;
    const video = el('video', { autoplay: true, playsInline: true, muted: local });
    const nameTag = el('span', { class: 'name' }, name);
    const conn = el('span', { class: 'pill' });
    const e2ee = el('span', { class: 'pill' });
    const hand = el('span', { class: 'hand', hidden: true, title: 'Hand raised' }, 'raised hand');
    const camOff = el('div', { class: 'muted-cam', hidden: true }, 'camera off');
    const root = el('div', { class: 'tile', 'data-key': key }, video, camOff, hand, el('div', { class: 'label' }, nameTag, conn, e2ee));
    $('grid').append(root);
    t = { root, video, nameTag, conn, e2ee, hand, camOff, stream: new MediaStream() };
    video.srcObject = t.stream;
    this.tiles.set(key, t);
    return t;
  }

  removeTile(key) {
    const t = this.tiles.get(key);
    if (!t) return;
    t.root.remove();
    this.tiles.delete(key);
  }

  /** Updates a tile's labels: `{name, speaking, hand, camOn, conn: [text, level], e2ee: [text, level]}`. */
  updateTile(key, s) {
    const t = this.tiles.get(key);
    if (!t) return;
    if (s.name !== undefined) t.nameTag.textContent = s.name;
    if (s.speaking !== undefined) t.root.classList.toggle('speaking', s.speaking);
    if (s.hand !== undefined) t.hand.hidden = !s.hand;
    if (s.camOn !== undefined) t.camOff.hidden = s.camOn;
    if (s.conn) {
      t.conn.textContent = s.conn[0];
      t.conn.className = `pill ${s.conn[1]}`;
    }
    if (s.e2ee) {
      t.e2ee.textContent = s.e2ee[0];
      t.e2ee.className = `pill ${s.e2ee[1]}`;
    }
  }

  /**
   * The safety number, the MLS member list (who holds this epoch's keys, with
   * each member's fingerprint) and the alarm, from the worker's status (C7).
   */
  safety(status) {
    const formatted = formatSafetyNumber(status?.safety_number);
    $('safety-number').textContent = formatted ?? (status?.alarm ? 'none: encryption stopped' : 'waiting for encryption…');
    $('safety-number').dataset.digits = formatted ? status.safety_number : '';
    this.members(Array.isArray(status?.members) ? status.members : [], { stopped: Boolean(status?.alarm) });
    this.alarm(status?.alarm ?? null);
    const parts = [];
    if (status?.phase) parts.push(`E2EE: ${status.phase}`);
    if (status?.epoch !== null && status?.epoch !== undefined) parts.push(`epoch ${status.epoch}`);
    if (status?.members) parts.push(`${status.members.length} in group`);
    if (status?.committer) parts.push('you commit');
    if (status?.decrypt === false) parts.push('decryption OFF (test)');
    $('e2ee-summary').textContent = parts.join(' · ');
  }

  /**
   * The members of the current epoch as their verified credentials name them:
   * `[{id, name, fingerprint, me}]`. Names come from other people: text only.
   */
  members(members, { stopped = false } = {}) {
    const list = $('mls-members');
    if (!list) return;
    list.replaceChildren(...members.map((m) => {
      const name = el('span', { class: 'member-name' }, typeof m.name === 'string' && m.name ? m.name : '(no name)');
      const li = el('li', { 'data-id': String(m.id), 'data-fingerprint': String(m.fingerprint ?? '') }, name);
      if (m.me) li.append(el('span', { class: 'member-you' }, 'you'));
      li.append(el('code', { class: 'fingerprint', title: 'Fingerprint of this person\'s identity key' }, String(m.fingerprint ?? '')));
      return li;
    }));
    $('mls-members-empty').hidden = members.length > 0;
    $('mls-members-empty').textContent = stopped ? 'nobody: encryption stopped' : 'nobody yet';
  }

  /**
   * The persistent alarm: this page refused an epoch whose members include
   * participants it never saw join. `alarm`: null or `{reason, unknown: [{id, name, fingerprint}]}`.
   */
  alarm(alarm) {
    const box = $('mls-alarm');
    if (!box) return;
    const unknown = Array.isArray(alarm?.unknown) ? alarm.unknown : [];
    box.hidden = !alarm;
    $('mls-alarm-who').replaceChildren(...unknown.map((m) => el('li', { 'data-id': String(m.id) },
      el('strong', {}, typeof m.name === 'string' && m.name ? m.name : '(no name)'),
      ` (participant ${m.id}, fingerprint `, el('code', { class: 'fingerprint' }, String(m.fingerprint ?? '?')), ')')));
  }

  /** Renders the people list. `people`: [{id, name, host, hand, speaking, me}]. */
  people(people, { meIsHost }) {
    const list = $('people');
    list.replaceChildren(...people.map((p) => {
      const bits = [p.name];
      if (p.me) bits.push('(you)');
      if (p.host) bits.push('· host');
      if (p.hand) bits.push('raised hand');
      const li = el('li', { 'data-id': String(p.id) }, el('span', { class: 'who' }, bits.join(' ')));
      if (meIsHost && !p.me) {
        li.append(
          el('button', { type: 'button', onclick: () => this.onHostAction('mute', p.id), title: `Mute ${p.name}` }, 'Mute'),
          el('button', { type: 'button', onclick: () => this.onHostAction('remove', p.id), title: `Remove ${p.name}` }, 'Remove'),
        );
      }
      return li;
    }));
    $('host-controls').hidden = !meIsHost;
  }
}
