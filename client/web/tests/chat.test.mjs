// End-to-end encrypted chat (issue 17, docs/chat.md). Three pages form the MLS group
// and exchange chat messages; a keyless observer page (`keyless=1`: in the room, never
// in the group) watches. Asserted:
// - every page shows every message, in the same order (the room's log order, by seq),
//   with the sender's name from its verified credential;
// - no plaintext crosses the coordinator: every WebSocket frame every page sent or
//   received (captured with CDP Network.webSocketFrameSent/Received from before the
//   page's first request) is free of the plaintext marker, while the observer received
//   every chat frame (binary kind 3);
// - messages render as text: markup creates no element, only http(s) URLs become links,
//   with rel="noopener noreferrer";
// - a closed panel counts unread messages; opening it clears the count;
// - a late joiner says it shows messages from its join on, and shows only those.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { browserSuite, sameSafetyNumber, waitFor } from './harness.mjs';

const MARKER = 'PLAINTEXT-MARKER-c4t';
const KIND_APPLICATION = 3;

/**
 * Opens a page in its own context with a CDP session recording its WebSocket frames
 * (attached before the page loads, so no frame is missed), and joins `room`.
 */
async function joinRecorded(browser, base, { room, name, params = {} }) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 720 } });
  const page = await context.newPage();
  page.label = name;
  page.consoleLines = [];
  page.on('console', (m) => page.consoleLines.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => page.consoleLines.push(`pageerror: ${e.message}`));
  page.wsFrames = [];
  const cdp = await context.newCDPSession(page);
  await cdp.send('Network.enable');
  const record = (dir) => (ev) => {
    const r = ev.response;
    // opcode 1: text as is; opcode 2: binary, base64.
    const bytes = r.opcode === 2 ? Buffer.from(r.payloadData, 'base64') : Buffer.from(r.payloadData, 'utf8');
    page.wsFrames.push({ dir, opcode: r.opcode, bytes });
  };
  cdp.on('Network.webSocketFrameSent', record('sent'));
  cdp.on('Network.webSocketFrameReceived', record('received'));
  const q = new URLSearchParams({ room, name, autojoin: '1', send: '0', ...params });
  await page.goto(`${base}/?${q}`, { waitUntil: 'domcontentloaded' });
  // As harness.mjs joinPage: modules that failed to load (a network change, files re-stamped
  // by a concurrent build) leave the page at its loading note; a user reloads, so do we, once.
  const started = await page.waitForFunction(() => Boolean(window.satsuma), null, { timeout: 10000 }).then(() => true, () => false);
  if (!started) {
    console.log(`# ${name}: the app did not start; reloading once. Console:\n${page.consoleLines.slice(-10).join('\n')}`);
    await page.reload({ waitUntil: 'domcontentloaded' });
  }
  try {
    await page.waitForFunction(() => typeof window.satsuma?.call?.me === 'number', null, { timeout: 30000 });
  } catch (err) {
    console.log(`# ${name}: no welcome within 30 s. Console:\n${page.consoleLines.slice(-30).join('\n')}`);
    throw err;
  }
  page.participantId = await page.evaluate(() => window.satsuma.call.me);
  return page;
}

/** The chat log as a page shows it. */
function shownChat(page) {
  return page.evaluate(() => [...document.querySelectorAll('#chat-log li')].map((li) => ({
    seq: Number(li.dataset.seq),
    from: Number(li.dataset.from),
    name: li.querySelector('.chat-name')?.textContent,
    text: li.querySelector('.chat-text')?.textContent,
    elements: [...li.querySelectorAll('.chat-text *')].map((e) => e.tagName),
    links: [...li.querySelectorAll('.chat-text a')].map((a) => ({ href: a.getAttribute('href'), rel: a.rel, target: a.target, text: a.textContent })),
  })));
}

async function waitForChat(page, n) {
  return waitFor(`${page.label} to show ${n} chat messages`, async () => {
    const shown = await shownChat(page);
    return shown.length >= n ? shown : null;
  }, { timeout: 20000 });
}

async function openChat(page) {
  await page.click('#toggle-chat');
  await page.waitForSelector('#chat:not([hidden])');
}

async function type(page, text) {
  await page.fill('#chat-input', text);
  await page.click('#chat-send');
  await page.waitForFunction(() => document.getElementById('chat-input').value === '', null, { timeout: 10000 });
}

describe('end-to-end encrypted chat', { timeout: 120000 }, () => {
  const room = `chat-${Date.now()}`;
  const pages = {};
  const suite = browserSuite({ pages });
  const check = suite.check;

  it('three pages show the same messages in the same order; the coordinator carries no plaintext', check(async () => {
    const { browser } = suite;
    const { base } = suite.servers;
    pages.ann = await joinRecorded(browser, base, { room, name: 'Ann' });
    pages.ben = await joinRecorded(browser, base, { room, name: 'Ben' });
    pages.cy = await joinRecorded(browser, base, { room, name: 'Cy' });
    pages.observer = await joinRecorded(browser, base, { room, name: 'Observer', params: { keyless: '1' } });
    const members = [pages.ann, pages.ben, pages.cy];
    await sameSafetyNumber(members, { timeout: 60000 });
    await openChat(pages.ann);
    await openChat(pages.ben);
    // Cy's panel stays closed: its unread count grows.

    // Sent at once from three pages: the coordinator's order decides.
    await Promise.all([
      type(pages.ann, `${MARKER} from Ann, see https://example.com/a?b=1.`),
      type(pages.ben, `${MARKER} <img src=x onerror="window.pwned=1"><b>bold</b> javascript:alert(1)`),
      pages.cy.evaluate((t) => window.satsuma.call.sendChat(t), `${MARKER} from Cy`),
    ]);
    await type(pages.ann, `${MARKER} second from Ann`);
    const views = await Promise.all(members.map((p) => waitForChat(p, 4)));
    const order = views[0].map((m) => `${m.seq}:${m.from}:${m.text}`);
    for (const [i, v] of views.entries()) {
      assert.deepEqual(v.map((m) => `${m.seq}:${m.from}:${m.text}`), order, `${members[i].label} shows another order`);
      assert.equal(v.length, 4, `${members[i].label}: ${JSON.stringify(v)}`);
    }
    assert.ok(views[0].every((m, i) => i === 0 || m.seq > views[0][i - 1].seq), 'seq order');
    // Names from the verified credentials; one's own marked.
    const byFrom = new Map(members.map((p) => [p.participantId, p.label]));
    for (const [i, v] of views.entries()) {
      for (const m of v) {
        const want = m.from === members[i].participantId ? `${byFrom.get(m.from)} (you)` : byFrom.get(m.from);
        assert.equal(m.name, want, `${members[i].label} names ${m.from}`);
      }
    }
    // Text only: the markup is text, no element but the one http(s) link.
    const ben = views[0].find((m) => m.from === pages.ben.participantId);
    assert.match(ben.text, /<img src=x onerror="window.pwned=1"><b>bold<\/b> javascript:alert\(1\)/);
    assert.deepEqual(ben.elements, []);
    const ann = views[0].find((m) => m.text.includes('https://example.com'));
    assert.deepEqual(ann.links, [{ href: 'https://example.com/a?b=1', rel: 'noopener noreferrer', target: '_blank', text: 'https://example.com/a?b=1' }]);
    for (const p of members) assert.equal(await p.evaluate(() => window.pwned ?? null), null);

    // Unread: Cy's closed panel counts the others' 3 messages; opening clears it.
    assert.equal(await pages.cy.textContent('#chat-unread'), '3');
    assert.equal(await pages.cy.getAttribute('#toggle-chat', 'aria-label'), 'Chat, 3 unread');
    assert.equal(await pages.cy.getAttribute('#toggle-chat svg.icon', 'data-icon'), 'chat', 'the Chat control has its icon');
    assert.equal(await pages.cy.getAttribute('#toggle-chat', 'aria-pressed'), 'false');
    await openChat(pages.cy);
    assert.equal(await pages.cy.isHidden('#chat-unread'), true);
    assert.equal(await pages.cy.getAttribute('#toggle-chat', 'aria-pressed'), 'true');

    // A late joiner: told that it sees messages from its join on, and it does.
    pages.dee = await joinRecorded(browser, base, { room, name: 'Dee' });
    await sameSafetyNumber([...members, pages.dee], { timeout: 60000 });
    await openChat(pages.dee);
    assert.match(await pages.dee.textContent('#chat-note'), /You see messages sent after you joined/);
    await type(pages.ben, `${MARKER} welcome Dee`);
    const dee = await waitForChat(pages.dee, 1);
    assert.deepEqual(dee.map((m) => m.text), [`${MARKER} welcome Dee`]);
    for (const p of members) await waitForChat(p, 5);
    const after = await shownChat(pages.ann);
    assert.equal(after[4].seq, dee[0].seq);

    // The coordinator's traffic, as every page saw it: chat frames only as ciphertext.
    const marker = Buffer.from(MARKER);
    const all = Object.values(pages);
    let frames = 0;
    for (const p of all) {
      for (const f of p.wsFrames) {
        frames += 1;
        assert.equal(f.bytes.includes(marker), false, `${p.label} ${f.dir} a frame with plaintext: ${f.bytes.toString('utf8').slice(0, 200)}`);
      }
    }
    const chatFrames = (p, dir) => p.wsFrames.filter((f) => f.dir === dir && f.opcode === 2
      && (dir === 'sent' ? f.bytes[0] === KIND_APPLICATION : f.bytes[8] === KIND_APPLICATION));
    // The keyless observer received all 5 chat messages (ciphertext) and decrypted none.
    const seen = chatFrames(pages.observer, 'received').map((f) => Number(f.bytes.readBigUInt64BE(0)));
    assert.deepEqual(seen, after.map((m) => m.seq));
    assert.equal(await pages.observer.evaluate(() => document.querySelectorAll('#chat-log li').length), 0);
    assert.equal(chatFrames(pages.ann, 'sent').length, 2);
    console.log(`# chat: ${frames} WebSocket frames checked, none with plaintext; observer got ${seen.length} chat frames`);
  }));
});
