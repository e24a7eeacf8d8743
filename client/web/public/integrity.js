// Integrity of what the page loads by itself: the E2EE worker, its
// WebAssembly glue module and the .wasm.
//
// index.html carries an import map whose "integrity" section gives the SHA-256
// of every .js and .wasm file (written at build time by
// scripts/web-manifest.sh). The browser checks every module the page imports
// against it and refuses one that does not match. A worker started from a URL
// cannot be checked that way (`new Worker` has no integrity option, and import
// maps do not reach workers), so the page fetches the worker's script and its
// glue module with `fetch(url, {integrity})` — the browser refuses bytes that
// do not match — and starts the worker from blob: URLs of exactly those bytes.
// The worker fetches the .wasm with the same kind of check (the page passes
// it the URL and the hash). So the one hash of index.html pins every file the
// page runs.
//
// Without an import map (a web directory that scripts/build-web.sh did not
// stamp) nothing can be checked: the worker loads from its URL, with a console
// warning.
//
// Bundled (what scripts/build-web.sh makes the page load when esbuild is
// there): the page's modules are one file, app.bundle.js, and the worker with
// its glue another, e2ee-worker.bundle.js; the bundler defines SATSUMA_BUNDLE in
// the page's bundle, so this module then fetches (and checks) that one worker
// file. The same checks, one file fewer.
//
// This module finishes loading only after the worker's files were fetched
// (top-level await), so the worker can be started synchronously.

import { fetchRetrying } from './fetch-retry.js';

// `typeof` of an undeclared name is 'undefined' (no error) in the unbundled modules.
const BUNDLED = typeof SATSUMA_BUNDLE !== 'undefined' && SATSUMA_BUNDLE === true;
const WORKER = BUNDLED ? './e2ee-worker.bundle.js' : './e2ee-worker.js';
const GLUE = './pkg/satsuma_wasm.js';
const WASM = './pkg/satsuma_wasm_bg.wasm';
const FETCH_TIMEOUT_MS = 20000;

/** The import map's integrity entries, by absolute URL. */
function importMapIntegrity() {
  const map = new Map();
  for (const el of document.querySelectorAll('script[type="importmap"]')) {
    try {
      const json = JSON.parse(el.textContent);
      for (const [key, value] of Object.entries(json?.integrity ?? {})) {
        if (typeof value === 'string') map.set(new URL(key, document.baseURI).href, value);
      }
    } catch {
      // The browser itself reports a broken import map.
    }
  }
  return map;
}

const hashes = importMapIntegrity();

/** The SRI hash (`sha256-...`) index.html gives for `url`, or null. */
export function integrityOf(url) {
  return hashes.get(new URL(url, document.baseURI).href) ?? null;
}

async function fetchChecked(rel) {
  const url = new URL(rel, import.meta.url).href;
  const integrity = hashes.get(url);
  if (!integrity) throw new Error(`index.html has no integrity hash for ${rel}`);
  // The default cache mode, so the HTML's preload of this file is used (the server sends
  // `Cache-Control: no-cache`: a cached copy is revalidated, and a stale one fails the check).
  const res = await fetchRetrying(url, { integrity, signal: AbortSignal.timeout(FETCH_TIMEOUT_MS) });
  if (!res.ok) throw new Error(`${rel}: HTTP ${res.status}`);
  return res.text();
}

/**
 * The E2EE module, fetched (and checked) and compiled by the page as soon as
 * this module runs, in parallel with the rest of the page's files: the worker
 * finds a compiled `WebAssembly.Module` waiting and only instantiates it,
 * instead of fetching and compiling once it runs (the compile of ~3 MB took
 * 100-300 ms on the critical path of a join). Resolves to the Module, or null
 * (the worker then fetches the module itself and reports the error if that
 * fails too). Taken once.
 */
let wasmBytes = null;
function startWasmFetch() {
  const url = new URL(WASM, import.meta.url).href;
  const integrity = hashes.get(url);
  if (!integrity && hashes.size > 0) return;
  // `fetch` with `integrity` hands over the body only once it matched the hash.
  wasmBytes = fetchRetrying(url, { integrity: integrity ?? undefined, signal: AbortSignal.timeout(FETCH_TIMEOUT_MS) })
    .then((res) => (res.ok ? res.arrayBuffer() : null))
    .then((bytes) => (bytes ? WebAssembly.compile(bytes) : null))
    .catch(() => null);
}
startWasmFetch();

/** The prefetched, compiled E2EE module (a promise of a WebAssembly.Module or null) for the first worker; null after that. */
export function takeWasmBytes() {
  const bytes = wasmBytes;
  wasmBytes = null;
  return bytes;
}

async function prepareWorker() {
  const wasmUrl = new URL(WASM, import.meta.url).href;
  if (hashes.size === 0) {
    console.warn('satsuma: index.html carries no integrity hashes (run scripts/build-web.sh): the E2EE worker and its WebAssembly are loaded unchecked');
    return { url: new URL(WORKER, import.meta.url).href, wasm: { url: wasmUrl, integrity: null }, checked: false };
  }
  try {
    const wasmIntegrity = hashes.get(wasmUrl);
    if (!wasmIntegrity) throw new Error(`index.html has no integrity hash for ${WASM} (run scripts/build-web.sh)`);
    if (BUNDLED) {
      // The glue is inside the worker's bundle: nothing to point anywhere.
      const worker = await fetchChecked(WORKER);
      const url = URL.createObjectURL(new Blob([worker], { type: 'text/javascript' }));
      return { url, wasm: { url: wasmUrl, integrity: wasmIntegrity }, checked: true };
    }
    const [worker, glue] = await Promise.all([fetchChecked(WORKER), fetchChecked(GLUE)]);
    // The worker imports its glue by a relative specifier, which means nothing inside a blob:
    // worker: point it at the checked glue's blob URL instead.
    const specifier = `'${GLUE}'`;
    if (worker.split(specifier).length !== 2) throw new Error(`${WORKER} must import ${GLUE} exactly once`);
    const glueUrl = URL.createObjectURL(new Blob([glue], { type: 'text/javascript' }));
    const source = worker.replace(specifier, JSON.stringify(glueUrl));
    const url = URL.createObjectURL(new Blob([source], { type: 'text/javascript' }));
    return { url, wasm: { url: wasmUrl, integrity: wasmIntegrity }, checked: true };
  } catch (err) {
    console.error(`satsuma: the E2EE worker's files failed their integrity check: ${err.message}`);
    return { error: `The encryption worker's files did not load or do not match this page's integrity hashes (${err.message}).` };
  }
}

/**
 * How to start the E2EE worker: `{url, wasm: {url, integrity}, checked}` (post
 * `wasm` to it in `init`), or `{error}` when its files failed their check.
 */
export const e2eeWorker = await prepareWorker();
