// Chat panel logic without a browser: which text becomes a link (chat-panel.js linkify)
// and the model's chat state (unread count, order, drops).

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { chatFace, linkify } from '../public/chat-panel.js';
import { CHAT_KEEP, initialState, reduce } from '../public/call-model.js';

describe('chat: links', () => {
  it('only http(s) URLs become links; everything else stays text', () => {
    assert.deepEqual(linkify('see https://example.com/a?b=1. ok'), [
      { text: 'see ' }, { text: 'https://example.com/a?b=1', href: 'https://example.com/a?b=1' }, { text: '. ok' },
    ]);
    for (const t of ['javascript:alert(1)', 'data:text/html,<b>x</b>', 'ftp://example.com/x', 'file:///etc/passwd',
      '<a href="javascript:x">y</a>', 'http://', 'www.example.com']) {
      assert.ok(linkify(t).every((p) => !p.href), t);
      assert.equal(linkify(t).map((p) => p.text).join(''), t);
    }
    // Quotes and angle brackets end a URL: no attribute can be smuggled in.
    const parts = linkify('x https://a.example/"onmouseover="alert(1) <http://b.example/>');
    assert.deepEqual(parts.filter((p) => p.href).map((p) => p.href), ['https://a.example/', 'http://b.example/']);
    assert.equal(parts.map((p) => p.text).join(''), 'x https://a.example/"onmouseover="alert(1) <http://b.example/>');
    assert.deepEqual(linkify(''), []);
  });
});

describe('chat: model', () => {
  const msg = (seq, from, mine = false) => ({ type: 'message', seq, from, name: `P${from}`, fingerprint: 'F', text: `m${seq}`, mine });

  it('counts unread messages from others while closed, in arrival (log) order', () => {
    const s = initialState();
    assert.ok(reduce(s, { type: 'chat/event', event: msg(3, 2) }).has('chat'));
    reduce(s, { type: 'chat/event', event: msg(4, 1, true) });
    reduce(s, { type: 'chat/event', event: { type: 'dropped', seq: 5, from: 2, reason: 'x' } });
    reduce(s, { type: 'chat/event', event: msg(6, 3) });
    assert.equal(s.chat.unread, 2);
    assert.equal(s.chat.dropped, 1);
    assert.deepEqual(s.chat.messages.map((m) => m.seq), [3, 4, 6]);
    reduce(s, { type: 'chat/open', open: true });
    assert.equal(s.chat.unread, 0);
    reduce(s, { type: 'chat/event', event: msg(7, 2) });
    assert.equal(s.chat.unread, 0);
    reduce(s, { type: 'chat/open', open: false });
    reduce(s, { type: 'chat/event', event: msg(8, 2) });
    assert.equal(s.chat.unread, 1);
  });

  it('keeps the last CHAT_KEEP messages', () => {
    const s = initialState();
    for (let i = 1; i <= CHAT_KEEP + 3; i++) reduce(s, { type: 'chat/event', event: msg(i, 2) });
    assert.equal(s.chat.messages.length, CHAT_KEEP);
    assert.equal(s.chat.messages[0].seq, 4);
  });
});

describe('chat control', () => {
  it('has an icon, an action label and a pressed state like the other controls', () => {
    let f = chatFace({ open: false, unread: 0 });
    assert.deepEqual([f.icon, f.label, f.pressed, f.state, f.unread], ['chat', 'Chat', false, 'closed', null]);
    assert.ok(f.aria.includes(f.label) && f.title);
    f = chatFace({ open: true, unread: 0 });
    assert.deepEqual([f.icon, f.label, f.pressed, f.state, f.aria], ['chat', 'Hide chat', true, 'open', 'Hide chat']);
    f = chatFace({ open: false, unread: 3 });
    assert.deepEqual([f.unread, f.aria], ['3', 'Chat, 3 unread']);
    assert.equal(chatFace({ open: false, unread: 150 }).unread, '99+');
  });
});
