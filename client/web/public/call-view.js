// The call's page around the stage: which screen shows (lobby, call, left),
// the banner and link status, the safety number with the MLS member list and
// its alarm, the persistent E2EE alert, the people list with host actions,
// and the host's room lock and invites. DOM only: it renders the model's
// state (call-model.js) and calls the controller's intents; the stage itself
// is stage-view.js, the control bar controls-view.js.

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

/** Why the call ended, in words. */
function leftReason({ why, detail }) {
  const reasons = {
    left: 'You left the call.', removed: 'A host removed you from the call.', 'room-locked': 'The room is locked.',
    'room-full': 'The room is full.', unauthorized: `The server refused the join token${detail ? ` (${detail})` : ''}: ask for a new link.`, replaced: 'You joined from another tab.',
  };
  return reasons[why] ?? `The call ended (${why}).`;
}

export class CallView {
  /**
   * @param {object} o
   * @param {{hostAction: Function, setLocked: Function, createInvite: Function, revokeInvite: Function}} [o.intents]
   */
  constructor({ intents = {} } = {}) {
    this.intents = intents;
    this.lastInvite = null;
  }

  /** Connects the host controls to the intents (once the call exists). */
  bind(intents) {
    this.intents = intents;
    const lock = $('lock-room');
    if (lock) lock.onchange = (ev) => this.intents.setLocked(ev.target.checked);
    if ($('make-invite')) $('make-invite').onclick = () => this.makeInvite();
    if ($('revoke-invite')) $('revoke-invite').onclick = () => this.revokeInvite();
    if ($('e2ee-alert-reload')) $('e2ee-alert-reload').onclick = () => location.reload();
  }

  /** Renders the parts of `state` in `changed` (a Set from the model). */
  render(state, changed) {
    if (changed.has('screen')) {
      this.show(state.screen);
      $('room-title').textContent = state.screen === 'call' ? state.room : $('room-title').textContent;
      if (state.ended) $('left-reason').textContent = leftReason(state.ended);
    }
    if (changed.has('banner')) this.banner(state.banner?.text ?? null, state.banner?.level);
    if (changed.has('link')) this.linkStatus(state.link?.text ?? '', state.link?.level ?? 'warn');
    if (changed.has('safety')) this.safety(state.safety);
    if (changed.has('send') && state.send) this.sendState(state.send);
    if (changed.has('people') || changed.has('host')) this.renderPeople(state);
    if (changed.has('recording')) this.recordingNote(state.recording?.error ?? null);
    if (changed.has('host')) {
      $('lock-room').checked = state.locked;
      $('invite-controls').hidden = !state.canInvite;
    }
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

  /** The persistent E2EE state: red with the reason and what to do while this page cannot encrypt. */
  sendState(state) {
    const alert = $('e2ee-alert');
    if (!alert) return;
    const bad = state.level === 'bad';
    alert.hidden = !bad;
    alert.dataset.level = state.level;
    $('e2ee-alert-reason').textContent = bad ? state.reason : '';
    $('e2ee-alert-advice').textContent = bad ? state.advice : '';
    $('e2ee-alert-reload').hidden = !(bad && state.fatal);
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

  renderPeople(state) {
    const people = [...state.participants.values()].map((p) => ({ ...p, me: p.id === state.me }));
    this.people(people, { meIsHost: Boolean(state.participants.get(state.me)?.host) });
    this.recording(people.filter((p) => p.recorder));
  }

  /**
   * The recording badge in the top bar: "● Recording by <names>" while any
   * participant in the room is a recorder (the coordinator marks it from its
   * join token; it is an MLS member, so it also shows under "Who holds the
   * keys"). Made here, not in index.html, and filled with text only.
   */
  recording(recorders) {
    let badge = $('recording-badge');
    if (!badge) {
      badge = el('span', { id: 'recording-badge', class: 'pill recording-badge', hidden: true });
      badge.setAttribute('role', 'status');
      $('room-title')?.after(badge);
    }
    const names = recorders.map((p) => (typeof p.name === 'string' && p.name ? p.name : `participant ${p.id}`));
    badge.hidden = names.length === 0;
    badge.textContent = names.length ? `● Recording by ${names.join(', ')}` : '';
    badge.title = names.length
      ? `${names.join(', ')} ${names.length === 1 ? 'is' : 'are'} recording this call: a recorder holds the call's keys and stores what it decrypts`
      : '';
  }

  /**
   * Why the coordinator refused this host's Record or Stop (or why the recorder it
   * started did not join), next to the badge until the next request. Text only.
   */
  recordingNote(error) {
    let note = $('recording-note');
    if (!note) {
      note = el('span', { id: 'recording-note', class: 'pill warn', hidden: true });
      note.setAttribute('role', 'alert');
      ($('recording-badge') ?? $('room-title'))?.after(note);
    }
    note.hidden = !error;
    note.textContent = error ?? '';
  }

  /** Renders the people list. `people`: [{id, name, host, hand, speaking, me}]. */
  people(people, { meIsHost }) {
    const list = $('people');
    list.replaceChildren(...people.map((p) => {
      const bits = [p.name];
      if (p.me) bits.push('(you)');
      if (p.host) bits.push('· host');
      if (p.recorder) bits.push('· recording');
      if (p.hand) bits.push('raised hand');
      const li = el('li', { 'data-id': String(p.id) }, el('span', { class: 'who' }, bits.join(' ')));
      if (meIsHost && !p.me) {
        li.append(
          el('button', { type: 'button', onclick: () => this.intents.hostAction('mute', p.id), title: `Mute ${p.name}` }, 'Mute'),
          el('button', { type: 'button', onclick: () => this.intents.hostAction('remove', p.id), title: `Remove ${p.name}` }, 'Remove'),
        );
      }
      return li;
    }));
    $('host-controls').hidden = !meIsHost;
  }

  async makeInvite() {
    try {
      this.lastInvite = await this.intents.createInvite({ role: $('invite-role').value });
      $('invite-link').value = this.lastInvite.link;
      $('invite-link').hidden = false;
      $('revoke-invite').hidden = false;
      $('invite-note').textContent = `Invite link made (valid until ${new Date(this.lastInvite.expires_at * 1000).toLocaleString()}).`;
      try {
        await navigator.clipboard.writeText(this.lastInvite.link);
        $('invite-note').textContent += ' Copied.';
      } catch { /* no clipboard permission: the link is shown to copy by hand */ }
    } catch (err) {
      $('invite-note').textContent = `Could not make an invite: ${err.message}`;
    }
  }

  async revokeInvite() {
    if (!this.lastInvite) return;
    try {
      await this.intents.revokeInvite(this.lastInvite.invite_id);
      $('invite-note').textContent = 'Invite revoked: the link no longer works.';
      $('invite-link').hidden = true;
      $('revoke-invite').hidden = true;
      this.lastInvite = null;
    } catch (err) {
      $('invite-note').textContent = `Could not revoke: ${err.message}`;
    }
  }
}
