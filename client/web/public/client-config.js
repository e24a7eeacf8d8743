// What this server allows the web client: `GET client-config.json` (served by
// the coordinator, not a file) → `{"test_hooks": bool, "dev": bool,
// "recording": bool}`. `dev`: the server hands join tokens to anyone (POST
// /token, only with --dev); otherwise the page needs a token or an invite in
// its URL fragment. `recording`: the server has a recorder, so a host's Record
// can work (false: hosts see a disabled Record that says why; absent, from an
// older server or when the fetch failed: unknown, Record is offered and the
// server's first refusal disables it).
//
// Test hooks are URL parameters and page hooks that weaken or bend the client
// for the test suites: `decrypt=0` (receive without decrypting), `keyless=1`
// (never join the MLS group), `test_*` parameters (e.g. `test_visible_only_to`,
// `test_keep_keys`) and `window.satsuma.drill`. A link with them must not work
// on a real deployment, so they are honoured only when the server runs with
// `--test-hooks`; otherwise they are ignored with a console warning.
// `transform=legacy`, `send=0`, `codec`, `video`, `room`, `name`, `autojoin`
// are ordinary options and not gated.
//
// This module finishes loading only after the config was fetched (top-level
// await), so importers can read it synchronously. If it cannot be fetched,
// test hooks are off.

import { fetchRetrying } from './fetch-retry.js';

const FETCH_TIMEOUT_MS = 5000;

async function load() {
  try {
    // The default cache mode, so the HTML's preload of this file is used (the server
    // sends `Cache-Control: no-store` for it).
    const res = await fetchRetrying(new URL('./client-config.json', import.meta.url), {
      signal: AbortSignal.timeout(FETCH_TIMEOUT_MS),
    });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const json = await res.json();
    const recording = typeof json?.recording === 'boolean' ? json.recording : null;
    return { testHooks: json?.test_hooks === true, devTokens: json?.dev === true, recording };
  } catch (err) {
    console.warn(`satsuma: cannot read client-config.json (${err.message}); test hooks and dev tokens are off`);
    return { testHooks: false, devTokens: false, recording: null };
  }
}

/** The server's client configuration: `{testHooks, devTokens, recording}`. */
export const clientConfig = Object.freeze(await load());

/** Whether this server runs with `--test-hooks`. */
export const testHooks = clientConfig.testHooks;

/** Whether this server hands out dev tokens (`--dev`: POST /token). */
export const devTokens = clientConfig.devTokens;

/** Whether this server can record (true / false; null: it did not say). */
export const recordingAvailable = clientConfig.recording;

// (No `location` outside a page: Node's unit tests import modules that import this one.)
const params = new URLSearchParams(globalThis.location?.search ?? '');

/** Whether URL parameter `name` is a test hook (gated on `--test-hooks`). */
export function isTestParam(name) {
  return name === 'decrypt' || name === 'keyless' || name.startsWith('test_');
}

const ignored = [...new Set(params.keys())].filter(isTestParam);
if (!testHooks && ignored.length) {
  console.warn(`satsuma: ignoring test parameter(s) ${ignored.join(', ')}: this server does not run with test hooks`);
}

/**
 * A test-only URL parameter: its value when the server runs with
 * `--test-hooks`, else `null` (as if it were absent).
 */
export function testParam(name) {
  if (!isTestParam(name)) throw new Error(`${name} is not a test parameter`);
  return testHooks ? params.get(name) : null;
}
