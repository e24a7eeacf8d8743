// Browser smoke test driver. Serves smoke.html on http://127.0.0.1:<ephemeral> and proxies /v1/* and
// /metrics to the SFU given in SFU_URL (so the page's API calls are same-origin), launches Debian's
// Chromium headless through playwright-core, runs the page's runSmoke() once per case and prints one JSON
// line per case. Exit status: 0 all cases passed, 1 a case failed, 2 a dependency is missing.
//
// Environment: SFU_URL (e.g. http://127.0.0.1:7880), APP_ID, APP_SECRET, optional CHROMIUM (binary path),
// SMOKE_CASES (comma list of: two-pcs, same-pc, vp9, h264, av1; default all), WATCH_MS (default 15000).
// two-pcs and same-pc use VP8; the codec cases push that codec from one RTCPeerConnection to another.
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const sfuUrl = process.env.SFU_URL;
const appId = process.env.APP_ID;
const secret = process.env.APP_SECRET;
const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';
const cases = (process.env.SMOKE_CASES || 'two-pcs,same-pc,vp9,h264,av1').split(',').filter(Boolean);
const codecOf = { 'two-pcs': 'VP8', 'same-pc': 'VP8', vp9: 'VP9', h264: 'H264', av1: 'AV1' };
const watchMs = Number(process.env.WATCH_MS || 15000);

function fail(code, message, extra = {}) {
  console.log(JSON.stringify({ event: 'error', message, ...extra }));
  process.exit(code);
}

if (!sfuUrl || !appId || !secret) fail(2, 'SFU_URL, APP_ID and APP_SECRET must be set');
if (!fs.existsSync(chromiumPath)) {
  fail(2, `Chromium not found at ${chromiumPath}: run sfu/tests/browser/setup.sh (apt-get install chromium)`);
}
let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch (e) {
  fail(2, `playwright-core is not installed: run sfu/tests/browser/setup.sh (${e.message})`);
}

const page = fs.readFileSync(path.join(here, 'smoke.html'));
const upstream = new URL(sfuUrl);

const server = http.createServer((req, res) => {
  if (req.url === '/' || req.url === '/smoke.html') {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(page);
    return;
  }
  if (req.url === '/favicon.ico') {
    res.writeHead(204);
    res.end();
    return;
  }
  if (req.url.startsWith('/v1/') || req.url === '/metrics') {
    const proxied = http.request(
      {
        host: upstream.hostname,
        port: upstream.port,
        method: req.method,
        path: req.url,
        headers: { ...req.headers, host: upstream.host },
      },
      (up) => {
        res.writeHead(up.statusCode, up.headers);
        up.pipe(res);
      },
    );
    proxied.on('error', (e) => {
      res.writeHead(502, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ errorCode: 'proxy', errorDescription: e.message }));
    });
    req.pipe(proxied);
    return;
  }
  res.writeHead(404);
  res.end();
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const origin = `http://127.0.0.1:${server.address().port}`;

const browser = await chromium.launch({
  executablePath: chromiumPath,
  headless: true,
  args: [
    '--use-fake-device-for-media-stream',
    '--use-fake-ui-for-media-stream',
    '--allow-loopback-in-peer-connection',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-default-apps',
    '--disable-sync',
    '--no-first-run',
    '--mute-audio',
  ],
});

let allOk = true;
try {
  for (const name of cases) {
    const context = await browser.newContext();
    const tab = await context.newPage();
    const consoleLines = [];
    tab.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
    tab.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`));
    const started = Date.now();
    let result;
    try {
      await tab.goto(`${origin}/smoke.html`);
      result = await tab.evaluate(
        (opts) => window.runSmoke(opts),
        { appId, secret, samePc: name === 'same-pc', watchMs, codec: codecOf[name] || 'VP8' },
      );
    } catch (e) {
      const pageLog = await tab.evaluate(() => (window.logLines || []).slice()).catch(() => []);
      result = { ok: false, error: e.message, log: pageLog };
    }
    result.case = name;
    result.ms = Date.now() - started;
    result.console = consoleLines.slice(-50);
    if (result.ok) {
      // Keep the line short on success.
      delete result.pushAnswer;
      delete result.pullOffer;
      delete result.pullAnswer;
      result.samples = result.samples.slice(-3);
    }
    allOk = allOk && result.ok;
    console.log(JSON.stringify({ event: 'case', ...result }));
    await context.close();
  }
} finally {
  await browser.close();
  server.close();
}
process.exit(allOk ? 0 : 1);
