// A page that proves what it runs (issue 10, contract C6):
// - Without --test-hooks the server says so (GET /client-config.json) and the
//   page ignores its test parameters: a page opened with keyless=1&decrypt=0
//   joins the group, decrypts and shows the same safety number as the others;
//   window.satsuma.drill does not exist.
// - With --test-hooks (the harness default) the same parameters work.
// - Every response carries the strict Content-Security-Policy, and a whole
//   E2EE call (WebSocket, /sfu, worker, WebAssembly) runs under it without a
//   single CSP violation.
// - Integrity: a module whose bytes differ from the hash in index.html is not
//   run (the page stays at its boot note), and a tampered E2EE worker script
//   is never started (red state, nothing sent). Bundled (scripts/build-web.sh),
//   the module is the page's bundle and the worker script the worker's bundle.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  browserSuite, assertDecodes, joinPage, sameSafetyNumber, startServers, stats, waitFor,
} from './harness.mjs';

const cspViolations = (page) => page.consoleLines.filter((l) => /Content Security Policy/i.test(l));

async function headersOf(url) {
  const res = await fetch(url);
  await res.arrayBuffer();
  return res.headers;
}

describe('test hooks off: test parameters are ignored, CSP holds a call', { timeout: 300000 }, () => {
  const pages = [];
  const suite = browserSuite({ start: () => startServers({ testHooks: false }), pages });
  const { check } = suite;

  it('serves test_hooks false and the security headers on the page', check(async () => {
    const config = await (await fetch(`${suite.servers.base}/client-config.json`)).json();
    assert.deepEqual(config, { test_hooks: false, dev: true, recording: false });
    for (const path of ['/', '/app.js', '/client-config.json']) {
      const h = await headersOf(`${suite.servers.base}${path}`);
      const csp = h.get('content-security-policy') ?? '';
      assert.match(csp, /script-src 'self' 'wasm-unsafe-eval'/, `${path}: ${csp}`);
      assert.match(csp, /default-src 'self'/, `${path}: ${csp}`);
      assert.match(csp, /frame-ancestors 'none'/, `${path}: ${csp}`);
      assert.match(csp, /object-src 'none'/, `${path}: ${csp}`);
      assert.ok(!/unsafe-inline|'unsafe-eval'/.test(csp), `${path}: ${csp}`);
      assert.equal(h.get('x-content-type-options'), 'nosniff', path);
      assert.equal(h.get('referrer-policy'), 'no-referrer', path);
      assert.equal(h.get('x-frame-options'), 'DENY', path);
    }
    console.log(`# CSP: ${(await headersOf(`${suite.servers.base}/`)).get('content-security-policy')}`);
  }));

  it('keyless=1, decrypt=0 and test_* are ignored; drill is absent; the call runs under the CSP', check(async () => {
    const room = `hooks-off-${Date.now()}`;
    const ann = await joinPage(suite.browser, suite.servers.base, { room, name: 'Ann' });
    pages.push(ann);
    const eve = await joinPage(suite.browser, suite.servers.base, {
      room, name: 'Eve', params: { keyless: '1', decrypt: '0', test_visible_only_to: String(ann.participantId), test_keep_keys: '1' },
    });
    pages.push(eve);

    const seen = await eve.evaluate(() => ({
      flags: window.satsuma.flags, testHooks: window.satsuma.testHooks, drill: typeof window.satsuma.drill,
    }));
    assert.equal(seen.testHooks, false);
    assert.equal(seen.drill, 'undefined', 'window.satsuma.drill must not exist without --test-hooks');
    assert.equal(seen.flags.mls, true, 'keyless=1 must be ignored');
    assert.equal(seen.flags.decrypt, true, 'decrypt=0 must be ignored');
    assert.equal(seen.flags.testVisibleOnlyTo, null);
    assert.equal(seen.flags.testKeepKeys, false);
    assert.ok(eve.consoleLines.some((l) => /ignoring test parameter\(s\)/.test(l) && /\bdecrypt\b/.test(l) && /\bkeyless\b/.test(l)),
      `no warning about ignored test parameters in ${JSON.stringify(eve.consoleLines)}`);

    // Eve is a full member: one safety number, and she decrypts Ann's media (and Ann hers).
    const number = await sameSafetyNumber([ann, eve]);
    assert.match(number, /^\d{30}$/);
    await assertDecodes(eve, ann.participantId);
    await assertDecodes(ann, eve.participantId);
    // The worker reports its counters about once a second: its count may trail the decoder's.
    await waitFor('Eve\'s worker to count decrypted frames of Ann', async () => {
      const v = (await stats(eve)).remote.find((r) => r.participantId === ann.participantId && r.kind === 'video');
      return v && v.decrypted > 0 ? v : null;
    }, { timeout: 10000 });

    // The drill behind window.satsuma.drill is refused further down too: asking Eve's E2EE
    // link for garbage frames changes nothing, Ann keeps decoding her.
    await eve.evaluate(() => window.satsuma.call.e2ee.drill('garbage', true));
    const before = (await stats(ann)).remote.find((r) => r.participantId === eve.participantId && r.kind === 'video');
    await waitFor('Ann to keep decrypting Eve after the refused garbage drill', async () => {
      const t = (await stats(ann)).remote.find((r) => r.participantId === eve.participantId && r.kind === 'video');
      return t && t.decrypted > before.decrypted + 30 && t.framesDecoded > before.framesDecoded + 30 ? t : null;
    });
    const after = (await stats(ann)).remote.find((r) => r.participantId === eve.participantId && r.kind === 'video');
    // (Garbage frames would all be dropped: dozens a second.)
    assert.ok(after.dropped - before.dropped < 5, `frames dropped after the refused drill: ${JSON.stringify({ before, after })}`);

    // The whole call (WebSocket, /sfu, blob worker, WebAssembly) ran without a CSP violation.
    for (const p of pages) assert.deepEqual(cspViolations(p), [], `${p.label}: CSP violations`);
    assert.equal(suite.servers.panicked().length, 0, suite.servers.panicked().join('\n'));
  }));
});

describe('test hooks on: the same parameters work', { timeout: 120000 }, () => {
  const pages = [];
  const suite = browserSuite();

  it('keyless=1 and decrypt=0 are honoured and drill exists', async () => {
    assert.deepEqual(await (await fetch(`${suite.servers.base}/client-config.json`)).json(), { test_hooks: true, dev: true, recording: false });
    const page = await joinPage(suite.browser, suite.servers.base, { room: `hooks-on-${Date.now()}`, name: 'Obs', params: { keyless: '1', decrypt: '0', send: '0' } });
    pages.push(page);
    const seen = await page.evaluate(() => ({
      flags: window.satsuma.flags, testHooks: window.satsuma.testHooks, drill: Object.keys(window.satsuma.drill ?? {}),
    }));
    assert.equal(seen.testHooks, true);
    assert.equal(seen.flags.mls, false);
    assert.equal(seen.flags.decrypt, false);
    assert.ok(seen.drill.includes('garbage') && seen.drill.includes('stallWorker'), JSON.stringify(seen.drill));
    assert.deepEqual(cspViolations(page), []);
  });
});

describe('integrity: files that do not match index.html are not run', { timeout: 120000 }, () => {
  const suite = browserSuite();

  /**
   * The files the served page runs: bundled (scripts/build-web.sh made app.bundle.js and
   * e2ee-worker.bundle.js from these modules), a module is the page's bundle and the worker
   * its bundle; unbundled, one module of the graph (call-view.js) and e2ee-worker.js.
   */
  async function servedFiles() {
    const html = await (await fetch(`${suite.servers.base}/`)).text();
    const entry = html.match(/<script type="module" src="([^"]+)"/)?.[1];
    assert.ok(entry, 'index.html has an entry module');
    return entry === 'app.bundle.js'
      ? { module: 'app.bundle.js', worker: 'e2ee-worker.bundle.js' }
      : { module: 'call-view.js', worker: 'e2ee-worker.js' };
  }

  /** Opens the page with `file`'s response body altered by one appended statement. */
  async function openTampered(file, { join = false } = {}) {
    const context = await suite.browser.newContext();
    await context.route(`**/${file}`, async (route) => {
      const res = await route.fetch();
      const body = `${await res.text()}\n;globalThis.tampered = true;\n`;
      await route.fulfill({ response: res, body });
    });
    const page = await context.newPage();
    page.consoleLines = [];
    page.on('console', (m) => page.consoleLines.push(`${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => page.consoleLines.push(`pageerror: ${e.message}`));
    const q = new URLSearchParams({ room: `tamper-${Date.now()}`, name: 'T', video: '320x240', ...(join ? { autojoin: '1' } : {}) });
    await page.goto(`${suite.servers.base}/?${q}`, { waitUntil: 'load' });
    return page;
  }

  it('a changed module is refused: the app never starts', async () => {
    const { module } = await servedFiles();
    console.log(`# integrity: tampering with ${module}`);
    const page = await openTampered(module);
    try {
      await waitFor('an integrity error in the console', () => page.consoleLines.some((l) => /integrity/i.test(l) && l.includes(module)), { timeout: 15000 });
      const state = await page.evaluate(() => ({
        app: typeof window.satsuma, tampered: globalThis.tampered === true,
        note: document.getElementById('boot-note')?.isConnected === true && !document.getElementById('boot-note').hidden,
      }));
      assert.deepEqual(state, { app: 'undefined', tampered: false, note: true });
    } finally {
      await page.context().close();
    }
  });

  it('a changed E2EE worker script is never started: red state, nothing sent', async () => {
    const { worker } = await servedFiles();
    console.log(`# integrity: tampering with ${worker}`);
    const page = await openTampered(worker, { join: true });
    try {
      const s = await waitFor('the send gate to report the integrity failure', async () => {
        const st = await page.evaluate(() => window.satsuma?.stats?.());
        return st?.send?.level === 'bad' && /integrity/.test(st.send.reason) ? st : null;
      }, { timeout: 30000 });
      assert.equal(await page.evaluate(() => globalThis.tampered === true), false);
      assert.ok(await page.locator('#e2ee-alert').isVisible(), 'the red E2EE state is shown');
      const sent = (s.outbound ?? []).reduce((n, t) => n + (t.packetsSent ?? 0), 0);
      assert.equal(sent, 0, JSON.stringify(s.outbound));
      assert.deepEqual(s.send.senders.filter((x) => x.sending), [], JSON.stringify(s.send.senders));
    } finally {
      await page.context().close();
    }
  });
});
