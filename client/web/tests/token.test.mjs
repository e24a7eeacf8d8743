// Tokens for real deployments (issue 11), in the browser, against the
// all-in-one `satsuma` started WITHOUT --dev (a configured token secret, no
// POST /token):
// - the lobby without a token explains how to get an invite and cannot join;
// - pages opened with `#token=…` (minted by `satsuma token create`) join, the
//   token leaves the address bar at once, and the two reach one E2EE call
//   (same safety number, each decodes the other's video);
// - the host makes an invite link in the call UI; a third page opened with
//   `#invite=…` joins with the name it chose; once the host revokes the
//   invite, the same link is refused in the lobby.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  browserSuite, assertDecodes, mintToken, sameSafetyNumber, screenshot, startAllInOne, waitFor,
} from './harness.mjs';

const TOKEN_SECRET = randomBytes(32).toString('hex');

/** Opens `url` in a fresh browser context (own profile); returns the page. */
async function open(browser, url, label) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 720 } });
  const page = await context.newPage();
  page.consoleLines = [];
  page.label = label;
  page.on('console', (m) => page.consoleLines.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => page.consoleLines.push(`pageerror: ${e.message}`));
  await page.goto(url, { waitUntil: 'domcontentloaded' });
  return page;
}

/** Waits until `page` joined the call; records its participant id. */
async function joined(page) {
  await page.waitForFunction(() => typeof window.satsuma?.call?.me === 'number', null, { timeout: 45000 });
  page.participantId = await page.evaluate(() => window.satsuma.call.me);
  return page;
}

describe('join with #token= and #invite= on a server without --dev', { timeout: 400000 }, () => {
  const pages = [];
  const room = `token-${Date.now()}`;
  const suite = browserSuite({ start: () => startAllInOne({ dev: false, tokenSecret: TOKEN_SECRET, testHooks: false }), pages });
  const { check } = suite;

  it('has no dev tokens, and the lobby without a token explains how to get an invite', check(async () => {
    const config = await (await fetch(`${suite.servers.base}/client-config.json`)).json();
    assert.equal(config.dev, false);
    const res = await fetch(`${suite.servers.base}/token`, { method: 'POST', body: JSON.stringify({ room }) });
    assert.equal(res.status, 404);

    const page = await open(suite.browser, `${suite.servers.base}/?room=${room}&name=Nobody&autojoin=1&video=320x240`, 'no-token');
    pages.push(page);
    await page.waitForSelector('#lobby-access', { state: 'visible', timeout: 30000 });
    const text = await page.textContent('#lobby-access');
    assert.match(text, /invit/i);
    assert.match(text, /satsuma token create/);
    assert.equal(await page.isDisabled('#join'), true);
    assert.deepEqual(await page.evaluate(() => window.satsuma.access), { token: false, invite: false, dev: false });
    // autojoin=1 did not start a call, and the form cannot be submitted.
    await page.waitForFunction(() => window.satsuma?.lobbyReady === true, null, { timeout: 30000 });
    await page.evaluate(() => document.getElementById('lobby-form').requestSubmit());
    assert.equal(await page.evaluate(() => window.satsuma.call), null);
    assert.equal(await page.isVisible('#lobby'), true);
    await screenshot(page, 'token-lobby-without-invite');
    await page.context().close();
  }));

  it('two pages with #token= from `satsuma token create` reach one E2EE call', check(async () => {
    const ann = mintToken({ tokenSecret: TOKEN_SECRET, room, identity: 'ann@example.org', name: 'Ann', host: true, publicUrl: suite.servers.base });
    const bob = mintToken({ tokenSecret: TOKEN_SECRET, room, identity: 'bob@example.org', name: 'Bob' });
    assert.equal(ann.url, `${suite.servers.base}/#token=${ann.token}`);
    // The page takes room and name from the token (no room or name parameter).
    const a = await open(suite.browser, `${suite.servers.base}/?autojoin=1&video=320x240#token=${ann.token}`, 'Ann');
    pages.push(a);
    await joined(a);
    const b = await open(suite.browser, `${suite.servers.base}/?autojoin=1&video=320x240#token=${bob.token}`, 'Bob');
    pages.push(b);
    await joined(b);
    for (const p of [a, b]) {
      assert.ok(!p.url().includes('token='), `${p.label}: token left in the address bar: ${p.url()}`);
      assert.equal(await p.evaluate(() => window.satsuma.call.room), room);
      assert.deepEqual(await p.evaluate(() => window.satsuma.access), { token: true, invite: false, dev: false });
    }
    assert.equal(await a.evaluate(() => window.satsuma.call.name), 'Ann');
    const number = await sameSafetyNumber([a, b]);
    assert.match(number, /^\d{30}$/);
    await assertDecodes(a, b.participantId);
    await assertDecodes(b, a.participantId);
    // Ann's token has the host grant: she sees the host controls.
    await a.waitForSelector('#make-invite', { state: 'visible', timeout: 20000 });
    assert.equal(await b.isVisible('#make-invite'), false);
  }));

  it('a host makes an invite link; it admits until the host revokes it', check(async () => {
    const [a, b] = pages.slice(-2);
    await a.click('#make-invite');
    const link = await waitFor('the invite link', async () => (await a.inputValue('#invite-link').catch(() => '')) || null);
    assert.ok(link.startsWith(`${suite.servers.base}/#invite=`), link);
    const c = await open(suite.browser, link.replace('/#invite=', '/?autojoin=1&name=Carol&video=320x240#invite='), 'Carol');
    pages.push(c);
    await joined(c);
    assert.ok(!c.url().includes('invite='), `invite left in the address bar: ${c.url()}`);
    assert.equal(await c.evaluate(() => window.satsuma.call.room), room);
    await sameSafetyNumber([a, b, c]);
    await assertDecodes(c, a.participantId);

    await screenshot(a, 'token-host-invite');
    await a.click('#revoke-invite');
    await waitFor('the revocation', async () => /revoked/.test(await a.textContent('#invite-note')));
    const d = await open(suite.browser, link.replace('/#invite=', '/?autojoin=1&name=Dave&video=320x240#invite='), 'Dave');
    pages.push(d);
    let seen = null;
    try {
      await waitFor('Dave to be refused', async () => {
        seen = await d.evaluate(() => ({
          banner: document.getElementById('banner').textContent,
          call: window.satsuma?.call?.me ?? null,
          ready: window.satsuma?.lobbyReady ?? false,
          access: window.satsuma?.access ?? null,
        }));
        return /revoked/.test(seen.banner) ? seen : null;
      }, { timeout: 30000 });
    } catch (err) {
      err.message += `\nDave: ${JSON.stringify(seen)}; Ann's note: ${await a.textContent('#invite-note')}`;
      throw err;
    }
    assert.equal(await d.evaluate(() => window.satsuma.call), null);
  }));
});
