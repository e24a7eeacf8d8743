// Test harness for the browser suite: starts satsuma-sfu and
// satsuma-coordinator on 127.0.0.1 ephemeral ports, launches Debian's
// headless Chromium through playwright-core, and opens participant pages.
//
// Environment: SATSUMA_BIN_DIR (where the two binaries are; default
// target/debug), CHROMIUM (default /usr/bin/chromium), ARTIFACTS (default
// artifacts/ at the repository root).

import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, renameSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before } from 'node:test';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, '../../..');
export const artifacts = process.env.ARTIFACTS ?? path.join(repoRoot, 'artifacts');
export const binDir = process.env.SATSUMA_BIN_DIR ?? path.join(repoRoot, 'target/debug');
const APP_SECRET = 'browser-test-secret';

/**
 * The web directory the servers serve. The checkout's client/web/public is
 * stamped first (scripts/web-manifest.sh: integrity hashes into index.html,
 * manifest.json), so a JavaScript edit made after the last build-web.sh does
 * not make every page refuse its modules. A directory given by SATSUMA_WEB_DIR
 * is served as it is.
 */
export function webDir() {
  if (process.env.SATSUMA_WEB_DIR) return process.env.SATSUMA_WEB_DIR;
  const dir = path.join(repoRoot, 'client/web/public');
  execFileSync('bash', [path.join(repoRoot, 'scripts/web-manifest.sh'), dir], { stdio: ['ignore', 'ignore', 'inherit'] });
  return dir;
}

/**
 * The fake microphone's sound: a WAV file (48 kHz mono, 16 bit, 2.24 s, looped by Chromium) of
 * speech-like bursts: low-passed noise in 200 ms syllables with 80 ms gaps and a 560 ms pause,
 * at about -20 dBFS. Chromium's own fake microphone beeps for 20 ms every 500 ms, and its noise
 * suppression learns that periodic beep as noise: measured at the SFU, a page's beeps sank from
 * -11/-25/-35 dBov to -12/-35/-48 dBov after it had been muted a while, under the active-speaker
 * detector's speech threshold, so a test that unmuted a page could wait forever for it to become
 * the speaker (seen in CI). Deterministic content, written once per machine.
 */
function fakeSpeechWav() {
  const file = path.join(os.tmpdir(), 'satsuma-fake-speech-v2.wav');
  if (existsSync(file)) return file;
  const rate = 48000;
  const n = Math.round(rate * 2.24);
  const pcm = Buffer.alloc(n * 2);
  let seed = 0x5a75;
  let lp = 0;
  for (let i = 0; i < n; i++) {
    const ms = (i * 1000) / rate;
    // Six syllables of 200 ms, 80 ms apart, then a pause; 10 ms ramps.
    const inSyllable = ms < 1680 && (ms % 280) < 200;
    const edge = Math.min(ms % 280, 200 - (ms % 280));
    const env = inSyllable ? Math.min(1, edge / 10) : 0;
    seed = (seed * 1103515245 + 12345) >>> 0;
    const white = ((seed >>> 8) / 0x800000) - 1;
    lp += 0.25 * (white - lp);
    const v = Math.max(-1, Math.min(1, 0.46 * env * lp));
    pcm.writeInt16LE(Math.round(v * 32767), i * 2);
  }
  const header = Buffer.alloc(44);
  header.write('RIFF', 0);
  header.writeUInt32LE(36 + pcm.length, 4);
  header.write('WAVE', 8);
  header.write('fmt ', 12);
  header.writeUInt32LE(16, 16);
  header.writeUInt16LE(1, 20);
  header.writeUInt16LE(1, 22);
  header.writeUInt32LE(rate, 24);
  header.writeUInt32LE(rate * 2, 28);
  header.writeUInt16LE(2, 32);
  header.writeUInt16LE(16, 34);
  header.write('data', 36);
  header.writeUInt32LE(pcm.length, 40);
  const part = `${file}.${process.pid}.part`;
  writeFileSync(part, Buffer.concat([header, pcm]));
  renameSync(part, file);
  return file;
}

// Flags measured in docs (browser-testing): fake devices, auto-accepted
// permission prompts, loopback ICE candidates (a runner may only have `lo`).
export const CHROMIUM_ARGS = [
  '--use-fake-device-for-media-stream',
  `--use-file-for-fake-audio-capture=${fakeSpeechWav()}`,
  '--use-fake-ui-for-media-stream',
  '--allow-loopback-in-peer-connection',
  '--no-sandbox',
  '--disable-background-networking',
  '--disable-gpu',
  '--autoplay-policy=no-user-gesture-required',
  '--disable-renderer-backgrounding',
  '--disable-background-timer-throttling',
  '--disable-backgrounding-occluded-windows',
  '--auto-select-desktop-capture-source=Entire screen',
];

/** Starts a process and resolves once a stdout line matches `ready`. */
export function startProcess(name, bin, args, ready, logs, env = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_BACKTRACE: '1', ...env } });
    let out = '';
    const timer = setTimeout(() => reject(new Error(`${name} did not start in 20 s:\n${out}`)), 20000);
    const onData = (chunk) => {
      const text = chunk.toString();
      out += text;
      logs.push(...text.split('\n').filter(Boolean).map((l) => `[${name}] ${l}`));
      const m = out.match(ready);
      if (m) {
        clearTimeout(timer);
        resolve({ child, match: m });
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', (c) => logs.push(...c.toString().split('\n').filter(Boolean).map((l) => `[${name}] ${l}`)));
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited with ${code}:\n${out}`));
    });
    child.on('error', reject);
  });
}

/**
 * Starts SFU + coordinator; returns `{base, stop(), logs, panicked()}`. The
 * coordinator runs with `--test-hooks` (the page's test parameters and drills
 * work) unless `testHooks: false`; `sfuArgs` adds flags to the SFU's command line.
 */
export async function startServers({ testHooks = true, sfuArgs = [] } = {}) {
  const logs = [];
  const sfu = await startProcess('sfu', path.join(binDir, 'satsuma-sfu'), [
    '--app', `satsuma:${APP_SECRET}`, '--http-bind', '127.0.0.1:0', '--udp-bind', '127.0.0.1:0', '--log', 'warn',
    ...sfuArgs,
    // Extra SFU flags for experiments (e.g. SATSUMA_SFU_ARGS='--bwe-initial-kbps 0').
    ...(process.env.SATSUMA_SFU_ARGS ?? '').split(/\s+/).filter(Boolean),
  ], /satsuma-sfu listening http=(\S+) udp=(\S+)/, logs);
  const sfuHttp = sfu.match[1];
  let coord;
  try {
    coord = await startProcess('coordinator', path.join(binDir, 'satsuma-coordinator'), [
      '--dev', '--listen', '127.0.0.1:0', '--web-dir', webDir(),
      '--sfu-node', `http://${sfuHttp}`, '--sfu-app-id', 'satsuma', '--sfu-app-secret', APP_SECRET, '--log', 'warn',
      `--test-hooks=${testHooks}`,
    ], /satsuma-coordinator listening http=(\S+)/, logs);
  } catch (err) {
    sfu.child.kill('SIGTERM');
    throw err;
  }
  const base = `http://${coord.match[1]}`;
  return {
    base,
    logs,
    panicked: () => logs.filter((l) => /panicked/.test(l)),
    async stop() {
      for (const c of [coord.child, sfu.child]) {
        if (c.exitCode === null) c.kill('SIGTERM');
      }
    },
  };
}

/**
 * Starts the all-in-one `satsuma` binary (coordinator + SFU + web client in one
 * process, the quick start's server) on ephemeral loopback ports; returns the
 * same shape as `startServers`. With `--test-hooks` unless `testHooks: false`,
 * and in dev mode (`--dev`: open POST /token, as scripts/run.sh) unless
 * `dev: false`; then give `tokenSecret` (passed as SATSUMA_TOKEN_SECRET) and
 * mint tokens with `mintToken`.
 */
export async function startAllInOne({ testHooks = true, dev = true, tokenSecret = null, env: extraEnv = {}, log = 'warn' } = {}) {
  const logs = [];
  const env = { ...(tokenSecret ? { SATSUMA_TOKEN_SECRET: tokenSecret } : {}), ...extraEnv };
  const all = await startProcess('satsuma', path.join(binDir, 'satsuma'), [
    '--listen', '127.0.0.1:0', '--sfu-api', '127.0.0.1:0', '--media', '127.0.0.1:0', '--detect-lan=false',
    '--web-dir', webDir(), '--log', log,
    `--test-hooks=${testHooks}`, `--dev=${dev}`,
  ], /satsuma listening web=(\S+) sfu=(\S+) media=(\S+)/, logs, env);
  return {
    base: `http://${all.match[1]}`,
    logs,
    panicked: () => logs.filter((l) => /panicked/.test(l)),
    async stop() {
      if (all.child.exitCode === null) all.child.kill('SIGTERM');
    },
  };
}

/**
 * Mints a join token with `satsuma token create` (the CLI of the all-in-one
 * binary, signing with `tokenSecret`); returns `{token, expires_at, url}`.
 */
export function mintToken({ tokenSecret, room, identity, name, host = false, ttl = '1h', publicUrl }) {
  const args = ['token', 'create', '--room', room, '--identity', identity, '--ttl', ttl, '--json'];
  if (name) args.push('--name', name);
  if (host) args.push('--host');
  if (publicUrl) args.push('--public-url', publicUrl);
  const env = { ...process.env, SATSUMA_TOKEN_SECRET: tokenSecret };
  delete env.SATSUMA_CONFIG;
  const out = execFileSync(path.join(binDir, 'satsuma'), args, {
    env,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  return JSON.parse(out.toString());
}

export async function launchBrowser() {
  return chromium.launch({ executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium', args: CHROMIUM_ARGS, headless: true });
}

/**
 * Opens a participant page (its own browser context, so its own camera and
 * storage) and joins `room`. `params` adds URL parameters (decrypt, keyless...);
 * `initScript` runs before the page's scripts (used to deny the camera);
 * `prepare(context)` runs before the page loads (e.g. `context.route`).
 */
export async function joinPage(browser, base, { room, name, params = {}, initScript, prepare } = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 720 } });
  if (prepare) await prepare(context);
  const page = await context.newPage();
  page.consoleLines = [];
  page.on('console', (m) => page.consoleLines.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => page.consoleLines.push(`pageerror: ${e.message}`));
  if (initScript) await page.addInitScript(initScript);
  // Small video keeps a call of five pages affordable on two cores.
  const q = new URLSearchParams({ room, name, autojoin: '1', video: '320x240', ...params });
  await page.goto(`${base}/?${q}`, { waitUntil: 'domcontentloaded' });
  // A Chromium that sees its network change (the network suite creates namespaces and veth
  // pairs while other pages load) fails the requests in flight with ERR_NETWORK_CHANGED; if
  // that hits the page's modules, the app never starts and the page stays at its loading
  // note, as it would for a user, who reloads. So does the harness, once, and says so.
  const started = await page.waitForFunction(() => Boolean(window.satsuma), null, { timeout: 10000 }).then(() => true, () => false);
  if (!started) {
    console.log(`# joinPage ${name}: the app did not start (${page.consoleLines.filter((l) => /ERR_NETWORK_CHANGED/.test(l)).length} requests failed with ERR_NETWORK_CHANGED): reloading once`);
    await page.reload({ waitUntil: 'domcontentloaded' });
  }
  try {
    await page.waitForFunction(() => window.satsuma?.call?.me !== null && window.satsuma?.call?.me !== undefined, null, { timeout: 30000 });
  } catch (err) {
    // Say where the join stopped: the page's state and console.
    const state = await page.evaluate(() => ({
      lobbyReady: window.satsuma?.lobbyReady ?? null,
      link: window.satsuma?.call?.link?.state ?? null,
      timeline: window.satsuma?.timeline?.() ?? null,
      banner: document.getElementById('banner')?.textContent ?? null,
    })).catch((e) => `unreadable: ${e.message}`);
    console.log(`# joinPage ${name}: no welcome within 30 s; state ${JSON.stringify(state)}; console:\n${page.consoleLines.slice(-30).join('\n')}`);
    throw err;
  }
  page.participantId = await page.evaluate(() => window.satsuma.call.me);
  page.label = name;
  return page;
}

export async function stats(page) {
  return page.evaluate(() => window.satsuma.stats());
}

export async function safetyNumber(page) {
  return page.evaluate(() => window.satsuma.safetyNumber());
}

/** Polls `fn` until it returns a truthy value; throws with `what` after `timeout` ms. */
export async function waitFor(what, fn, { timeout = 20000, interval = 250 } = {}) {
  const start = Date.now();
  const end = start + timeout;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) {
        if (Date.now() - start > 8000) console.log(`# slow: ${what} took ${((Date.now() - start) / 1000).toFixed(1)} s`);
        return last;
      }
    } catch (err) {
      last = err;
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}; last: ${last instanceof Error ? last.stack : JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, interval));
  }
}

/** The page's remote track entries of participant `from` and `kind`. */
export async function remoteTrack(page, from, kind) {
  const s = await stats(page);
  return s?.remote.find((r) => r.participantId === from && r.kind === kind) ?? null;
}

/** Waits until `page` decodes `from`'s video and the count keeps increasing. */
export async function assertDecodes(page, from, { timeout = 45000 } = {}) {
  const first = await waitFor(`${page.label} to decode video of ${from}`, async () => {
    const t = await remoteTrack(page, from, 'video');
    return t && t.framesDecoded > 0 ? t : null;
  }, { timeout });
  await waitFor(`${page.label}: framesDecoded of ${from} to keep increasing`, async () => {
    const t = await remoteTrack(page, from, 'video');
    return t && t.framesDecoded > first.framesDecoded + 5 ? t : null;
  }, { timeout: 20000 });
}

/** Waits until `page` receives `from`'s audio samples and the count keeps increasing. */
export async function assertHears(page, from, { timeout = 45000 } = {}) {
  const first = await waitFor(`${page.label} to receive audio of ${from}`, async () => {
    const t = await remoteTrack(page, from, 'audio');
    return t && t.totalSamplesReceived > 0 && t.decrypted > 0 ? t : null;
  }, { timeout });
  await waitFor(`${page.label}: audio of ${from} to keep flowing`, async () => {
    const t = await remoteTrack(page, from, 'audio');
    return t && t.decrypted > first.decrypted + 10 && t.totalSamplesReceived > first.totalSamplesReceived ? t : null;
  }, { timeout: 20000 });
}

/** Waits until every page shows the same 30-digit safety number (different from `not`, if given). */
export async function sameSafetyNumber(pages, { not = null, timeout = 60000 } = {}) {
  let seen = [];
  try {
    return await waitFor(`one safety number on ${pages.map((p) => p.label).join(', ')}${not ? ` other than ${not}` : ''}`, async () => {
      seen = await Promise.all(pages.map(async (p) => ({ who: p.label, number: await safetyNumber(p), e2ee: (await stats(p))?.e2ee })));
      const first = seen[0].number;
      if (!first || !/^\d{30}$/.test(first) || first === not) return null;
      return seen.every((n) => n.number === first) ? first : null;
    }, { timeout });
  } catch (err) {
    err.message += `\nlast seen: ${JSON.stringify(seen)}`;
    throw err;
  }
}

export async function screenshot(page, name) {
  mkdirSync(artifacts, { recursive: true });
  const file = path.join(artifacts, `${name}.png`);
  await page.screenshot({ path: file });
  return file;
}

/** Leaves the call and closes the page's context. */
export async function leave(page) {
  await page.evaluate(() => window.satsuma.call?.leave()).catch(() => {});
  await page.context().close();
}

/** Dumps page console lines (for failures). */
export function dumpConsole(pages) {
  for (const p of pages) {
    if (!p?.consoleLines || p.isClosed()) continue;
    console.log(`--- console of ${p.label}`);
    for (const l of p.consoleLines.slice(-40)) console.log(l);
  }
}

/**
 * The skeleton every browser test file shares; call it at the top of a `describe`. Before the
 * tests it starts the servers (`start`, default `startServers()`) and Chromium; after them, if
 * a test wrapped in `suite.check` failed (or set `suite.failed`), it prints the consoles of
 * `pages` (an array or an object of pages) and the servers' last `logLines` log lines, then
 * closes Chromium and stops the servers. `suite.servers` and `suite.browser` are set once the
 * `before` hook has run.
 */
export function browserSuite({ start = () => startServers(), pages = [], logLines = 60 } = {}) {
  const suite = {
    servers: null,
    browser: null,
    failed: false,
    /** Wraps a test body so that its failure prints the diagnostics in `after`. */
    check: (fn) => async (...args) => {
      try {
        return await fn(...args);
      } catch (err) {
        suite.failed = true;
        throw err;
      }
    },
  };
  before(async () => {
    suite.servers = await start();
    suite.browser = await launchBrowser();
  });
  after(async () => {
    if (suite.failed) {
      dumpConsole(Array.isArray(pages) ? pages : Object.values(pages));
      console.log(suite.servers?.logs.slice(-logLines).join('\n'));
    }
    await suite.browser?.close();
    await suite.servers?.stop();
  });
  return suite;
}
