// The chat panel: end-to-end encrypted messages of the room (docs/chat.md).
//
// A view like the others: it renders the model's `chat` part and sends the user's
// intents (send, open/close) to the controller; it never touches the links. Its DOM is
// built here (a "Chat" control with the unread count, and a section in the side panel),
// so the page's HTML needs no change.
//
// Safety: every message is untrusted text from another participant. Nothing is ever
// parsed as HTML: names and text go in through `textContent`, and only http(s) URLs
// become links, each an <a> with rel="noopener noreferrer" opening in a new tab (its
// href set from a URL the URL parser accepted, never from markup). The sender's name is
// the one bound into its verified MLS credential (the worker checked it), not what the
// coordinator says.

import { setIcon } from './icons.js';
import { MAX_CHAT_TEXT_BYTES } from './wire.js';

const URL_PATTERN = /https?:\/\/[^\s<>"'`]+/gi;
// Trailing punctuation that usually ends a sentence rather than a URL.
const TRAILING = /[.,;:!?)\]}]+$/;

/**
 * Splits `text` into text and link parts: `[{text}, {text, href}]`. Only http: and https:
 * URLs the URL parser accepts become links.
 */
export function linkify(text) {
  const parts = [];
  let last = 0;
  for (const m of String(text).matchAll(URL_PATTERN)) {
    let raw = m[0];
    const trail = raw.match(TRAILING);
    if (trail) raw = raw.slice(0, raw.length - trail[0].length);
    let href = null;
    try {
      const u = new URL(raw);
      if (u.protocol === 'http:' || u.protocol === 'https:') href = u.href;
    } catch {
      href = null;
    }
    if (!href || !raw) continue;
    if (m.index > last) parts.push({ text: text.slice(last, m.index) });
    parts.push({ text: raw, href });
    last = m.index + raw.length;
  }
  if (last < text.length) parts.push({ text: text.slice(last) });
  return parts;
}

/**
 * What the Chat control shows for the model's `chat` part, as the other controls do
 * (controls-view.js): an icon, a label naming the action, a pressed state while the panel
 * is open, `data-state`, and the unread count in its accessible name. Pure, no DOM.
 */
export function chatFace(chat) {
  const open = Boolean(chat.open);
  const label = open ? 'Hide chat' : 'Chat';
  return {
    icon: 'chat',
    label,
    aria: chat.unread ? `Chat, ${chat.unread} unread` : label,
    pressed: open,
    state: open ? 'open' : 'closed',
    title: open ? 'The chat is open: press to hide it' : 'End-to-end encrypted chat with everyone in the call',
    unread: chat.unread === 0 ? null : (chat.unread > 99 ? '99+' : String(chat.unread)),
  };
}

/** A message as DOM (text nodes and safe links only). */
export function messageNode(doc, m) {
  const li = doc.createElement('li');
  li.className = m.mine ? 'chat-msg mine' : 'chat-msg';
  li.dataset.seq = String(m.seq);
  li.dataset.from = String(m.from);
  const who = doc.createElement('strong');
  who.className = 'chat-name';
  who.textContent = m.mine ? `${m.name || 'You'} (you)` : (m.name || `participant ${m.from}`);
  if (m.fingerprint) who.title = `fingerprint ${m.fingerprint}`;
  const body = doc.createElement('span');
  body.className = 'chat-text';
  for (const part of linkify(m.text)) {
    if (part.href) {
      const a = doc.createElement('a');
      a.href = part.href;
      a.target = '_blank';
      a.rel = 'noopener noreferrer';
      a.textContent = part.text;
      body.append(a);
    } else {
      body.append(doc.createTextNode(part.text));
    }
  }
  li.append(who, doc.createTextNode(' '), body);
  return li;
}

export class ChatPanel {
  /**
   * @param {object} opts
   * @param {object} opts.intents the controller (`sendChat(text)`, `setChatOpen(open)`)
   * @param {Document} [opts.doc]
   */
  constructor({ intents, doc = document }) {
    this.intents = intents;
    this.doc = doc;
    this.shown = 0; // messages rendered so far
    this.firstSeq = null;
    const el = (tag, props = {}) => Object.assign(doc.createElement(tag), props);

    this.toggle = el('button', { id: 'toggle-chat', type: 'button', className: 'control' });
    this.toggle.setAttribute('aria-pressed', 'false');
    this.toggle.setAttribute('aria-controls', 'chat');
    this.toggleLabel = el('span', { className: 'label', textContent: 'Chat' });
    this.badge = el('span', { id: 'chat-unread', className: 'chat-unread', hidden: true });
    this.toggle.append(this.toggleLabel, this.badge);
    this.showFace(chatFace({ open: false, unread: 0 }));
    this.toggle.onclick = () => this.intents.setChatOpen(this.toggle.getAttribute('aria-pressed') !== 'true');
    const controls = doc.querySelector('.controls');
    const leave = doc.getElementById('leave');
    if (controls) controls.insertBefore(this.toggle, leave && leave.parentNode === controls ? leave : null);

    this.section = el('section', { id: 'chat', className: 'chat', hidden: true });
    this.section.setAttribute('aria-labelledby', 'chat-title');
    const title = el('h2', { id: 'chat-title', textContent: 'Chat' });
    const note = el('p', {
      id: 'chat-note', className: 'note',
      textContent: 'End-to-end encrypted: the servers relay it but cannot read it. '
        + 'You see messages sent after you joined.',
    });
    this.log = el('ol', { id: 'chat-log', className: 'chat-log' });
    this.log.setAttribute('aria-live', 'polite');
    this.dropped = el('p', { id: 'chat-dropped', className: 'note', hidden: true });
    this.form = el('form', { id: 'chat-form', className: 'chat-form' });
    this.input = el('textarea', { id: 'chat-input', rows: 2, maxLength: MAX_CHAT_TEXT_BYTES, placeholder: 'Message everyone' });
    this.input.setAttribute('aria-label', 'Chat message');
    this.send = el('button', { id: 'chat-send', type: 'submit', textContent: 'Send' });
    this.error = el('p', { id: 'chat-error', className: 'note bad', hidden: true });
    this.error.setAttribute('role', 'status');
    this.form.append(this.input, this.send);
    this.form.onsubmit = (ev) => {
      ev.preventDefault();
      this.submit();
    };
    this.input.onkeydown = (ev) => {
      if (ev.key === 'Enter' && !ev.shiftKey) {
        ev.preventDefault();
        this.submit();
      }
    };
    this.section.append(title, note, this.log, this.dropped, this.form, this.error);
    const side = doc.querySelector('#call .side');
    side?.prepend(this.section);
  }

  async submit() {
    const text = this.input.value;
    if (!text.trim()) return;
    if (new TextEncoder().encode(text).length > MAX_CHAT_TEXT_BYTES) {
      this.showError(`Not sent: at most ${MAX_CHAT_TEXT_BYTES} bytes.`);
      return;
    }
    const sent = await this.intents.sendChat(text);
    if (sent) this.input.value = '';
  }

  /** Shows `face` (chatFace) on the Chat control. */
  showFace(face) {
    setIcon(this.toggle, face.icon);
    this.toggleLabel.textContent = face.label;
    this.toggle.setAttribute('aria-pressed', String(face.pressed));
    this.toggle.setAttribute('aria-label', face.aria);
    this.toggle.dataset.state = face.state;
    this.toggle.title = face.title;
    this.badge.hidden = face.unread === null;
    this.badge.textContent = face.unread ?? '';
  }

  showError(text) {
    this.error.hidden = !text;
    this.error.textContent = text ?? '';
  }

  render(state, changed) {
    if (!changed.has('chat')) return;
    const chat = state.chat;
    this.section.hidden = !chat.open;
    this.showFace(chatFace(chat));
    // The model keeps the last CHAT_KEEP messages: render what is new, drop what left.
    const msgs = chat.messages;
    const first = msgs[0]?.seq ?? null;
    if (first !== this.firstSeq) {
      while (this.log.firstChild && Number(this.log.firstChild.dataset.seq) < (first ?? Infinity)) {
        this.log.firstChild.remove();
        this.shown -= 1;
      }
      this.firstSeq = first;
    }
    const atBottom = this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight < 40;
    for (const m of msgs.slice(Math.max(0, this.shown))) this.log.append(messageNode(this.doc, m));
    this.shown = msgs.length;
    if (atBottom) this.log.scrollTop = this.log.scrollHeight;
    this.dropped.hidden = chat.dropped === 0;
    this.dropped.textContent = `${chat.dropped} earlier message(s) could not be decrypted on this page (sent before you joined the encryption group).`;
    this.showError(chat.error);
  }
}
