// Takes docs/screenshot-call.png: a real 3-person call (servers from
// target/debug, Chromium with fake devices), seen by the first participant at
// 1280x800, with one person speaking (the others muted) and the stage in grid
// view. Run: node bench/screenshot-call.mjs [out.png]
// (SATSUMA_BIN_DIR as for the browser tests.)

import path from 'node:path';
import { joinPage, launchBrowser, repoRoot, startServers, waitFor } from '../tests/harness.mjs';

const out = process.argv[2] ?? path.join(repoRoot, 'docs/screenshot-call.png');
const servers = await startServers();
const browser = await launchBrowser();
try {
  const room = 'design-review';
  const ann = await joinPage(browser, servers.base, { room, name: 'Ann', params: { video: '1280x720' } });
  const ben = await joinPage(browser, servers.base, { room, name: 'Ben', params: { video: '1280x720' } });
  const cat = await joinPage(browser, servers.base, { room, name: 'Cat', params: { video: '1280x720' } });
  await ann.setViewportSize({ width: 1280, height: 800 });
  // Ben speaks; Ann and Cat are muted.
  for (const p of [ann, cat]) await p.click('#toggle-mic');
  await waitFor('Ann to outline Ben', () => ann.evaluate((key) => document.querySelector(`[data-key="${key}"]`)?.classList.contains('active-speaker'), String(ben.participantId)), { timeout: 30000 });
  await waitFor('Ann to decode both', async () => {
    const s = await ann.evaluate(() => window.satsuma.stats());
    return s.remote.filter((r) => r.kind === 'video' && r.tile === 'decoding').length === 2;
  }, { timeout: 30000 });
  // Cat spoke (the fake microphone beeps) before muting: wait until only Ben shows speaking.
  await waitFor('Ann to show only Ben speaking', () => ann.evaluate((key) => {
    const speaking = [...document.querySelectorAll('.tile.speaking')].map((t) => t.dataset.key);
    return speaking.length === 1 && speaking[0] === key;
  }, String(ben.participantId)), { timeout: 30000 });
  await ann.mouse.move(0, 0);
  await ann.screenshot({ path: out });
  console.log(`wrote ${out}`);
} finally {
  await browser.close();
  await servers.stop();
}
