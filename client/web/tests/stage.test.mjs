// The stage (issue 13, "a stage that uses the screen"): tiles fill the stage at
// 16:9, the active speaker is outlined, a speaker view shows one tile large,
// and the controls show their state (icon, action label, aria-pressed).
// Asserted on real pages in one room, growing from 1 to 4 participants:
// - 1 participant: one tile that fills the stage in one dimension;
// - 2: side by side (one row), filling the stage's width;
// - 3 and 4: 2x2;
// - every tile 16:9 within 2 %, and the tiles cover a good share of the stage;
// - speaker view (the layout button): one tile large (the active speaker),
//   the others in a strip under it, the large one asking for f and the strip
//   for q (tile size drives the layer); back to the grid (h at 464 px);
// - with every microphone but one muted (through the mute button, whose label,
//   icon and aria-pressed change), the SFU's active speaker is the one that
//   sends sound, and its tile is outlined on the other pages; the outline
//   moves when another page speaks instead;
// - camera, hand and screen-share buttons toggle their pressed state and
//   label (the hand by keyboard); a shared screen is the large tile of the
//   speaker view.
// Chromium's fake microphone beeps continuously; a muted track sends silence.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { browserSuite, joinPage, screenshot, waitFor } from './harness.mjs';

const ASPECT = 16 / 9;

/** The stage and its visible tiles, as the page lays them out (CSS px). */
async function geometry(page) {
  return page.evaluate(() => {
    const grid = document.getElementById('grid');
    const r = grid.getBoundingClientRect();
    const tiles = [...grid.querySelectorAll('.tile')].map((t) => {
      const b = t.getBoundingClientRect();
      return {
        key: t.dataset.key, x: b.x, y: b.y, w: b.width, h: b.height,
        main: t.classList.contains('main'), active: t.classList.contains('active-speaker'),
      };
    }).filter((t) => t.w > 0 && t.h > 0);
    return { stage: { x: r.x, y: r.y, w: r.width, h: r.height }, layout: grid.dataset.layout, tiles };
  });
}

/** Rows of tiles: groups of equal top (±2 px), top to bottom. */
function rows(tiles) {
  const out = [];
  for (const t of [...tiles].sort((a, b) => a.y - b.y || a.x - b.x)) {
    const row = out.find((r) => Math.abs(r[0].y - t.y) <= 2);
    if (row) row.push(t);
    else out.push([t]);
  }
  return out.map((r) => r.sort((a, b) => a.x - b.x));
}

function assert169(t) {
  const ratio = t.w / t.h;
  assert.ok(Math.abs(ratio / ASPECT - 1) <= 0.02, `tile ${t.key} is ${t.w.toFixed(1)}x${t.h.toFixed(1)} (ratio ${ratio.toFixed(3)}), not 16:9 ±2 %`);
}

function assertInside(g) {
  for (const t of g.tiles) {
    assert.ok(t.x >= g.stage.x - 1 && t.y >= g.stage.y - 1 && t.x + t.w <= g.stage.x + g.stage.w + 1 && t.y + t.h <= g.stage.y + g.stage.h + 1,
      `tile ${t.key} ${JSON.stringify(t)} is not inside the stage ${JSON.stringify(g.stage)}`);
  }
}

/**
 * Waits for `page` to show `n` tiles laid out as `shape` (row lengths, top to
 * bottom) and checks 16:9, containment, that the layout fills the stage in one
 * dimension (within 3 %) and that the tiles cover at least `cover` of it.
 */
async function assertGrid(page, n, shape, { cover }) {
  const g = await waitFor(`${page.label} to lay out ${n} tiles as ${shape.join('+')}`, async () => {
    const g = await geometry(page);
    if (g.layout !== 'grid' || g.tiles.length !== n) return null;
    const r = rows(g.tiles);
    return JSON.stringify(r.map((x) => x.length)) === JSON.stringify(shape) ? g : null;
  }, { timeout: 20000 });
  for (const t of g.tiles) assert169(t);
  assertInside(g);
  const widths = g.tiles.map((t) => t.w);
  assert.ok(Math.max(...widths) - Math.min(...widths) <= 1, `tiles of one size in the grid: ${widths}`);
  const r = rows(g.tiles);
  const cols = Math.max(...shape);
  const usedW = cols * g.tiles[0].w + (cols - 1) * 8;
  const usedH = r.length * g.tiles[0].h + (r.length - 1) * 8;
  const fillW = usedW / g.stage.w;
  const fillH = usedH / g.stage.h;
  assert.ok(fillW >= 0.97 || fillH >= 0.97, `the grid fills neither the width (${(fillW * 100).toFixed(1)} %) nor the height (${(fillH * 100).toFixed(1)} %) of the stage`);
  const covered = g.tiles.reduce((a, t) => a + t.w * t.h, 0) / (g.stage.w * g.stage.h);
  assert.ok(covered >= cover, `tiles cover ${(covered * 100).toFixed(1)} % of the stage, want ≥ ${cover * 100} %`);
  // Rows are centred.
  for (const row of r) {
    const left = row[0].x - g.stage.x;
    const right = g.stage.x + g.stage.w - (row[row.length - 1].x + row[row.length - 1].w);
    assert.ok(Math.abs(left - right) <= 2, `row not centred: ${left.toFixed(1)} px left, ${right.toFixed(1)} px right`);
  }
  console.log(`# stage | ${page.label}: ${n} tiles as ${shape.join('+')} of ${g.tiles[0].w.toFixed(0)}x${g.tiles[0].h.toFixed(0)} on ${g.stage.w.toFixed(0)}x${g.stage.h.toFixed(0)}, cover ${(covered * 100).toFixed(0)} %`);
  return g;
}

/** A control button's face: {pressed, state, label, aria, icon, disabled}. */
async function control(page, id) {
  return page.evaluate((id) => {
    const b = document.getElementById(id);
    return {
      pressed: b.getAttribute('aria-pressed'), state: b.dataset.state, label: b.querySelector('.label')?.textContent,
      aria: b.getAttribute('aria-label'), icon: b.querySelector('svg.icon')?.dataset.icon ?? null, disabled: b.disabled,
    };
  }, id);
}

async function waitControl(page, id, want) {
  return waitFor(`${page.label}: #${id} to show ${JSON.stringify(want)}`, async () => {
    const c = await control(page, id);
    return Object.entries(want).every(([k, v]) => c[k] === v) ? c : null;
  }, { timeout: 10000, interval: 100 });
}

/** The key of the tile `page` outlines as the active speaker (null: none), once stable. */
// 15 s: the SFU's dominant-speaker choice (sfu/src/speaker.rs) hands over within 1.5 s of the
// new speaker starting; the page asks every 500 ms. (With the old instant-flag choice, Chromium's
// beeping fake microphone made this 10-30 s.) The handover time is printed.
async function waitActive(page, key, timeout = 15000) {
  let seen = null;
  try {
    return await waitFor(`${page.label} to outline tile ${key} as the active speaker`, async () => {
      const g = await geometry(page);
      const active = g.tiles.filter((t) => t.active).map((t) => t.key);
      seen = active;
      return active.length === 1 && active[0] === key ? active : null;
    }, { timeout, interval: 200 });
  } catch (err) {
    // What the page outlined and what the SFU says about this page's session (its pulled audio
    // tracks' levels and its active speaker), so that a failure says which side was wrong.
    const sfu = await page.evaluate(async () => {
      const st = await window.satsuma.call.sfu?.sessionState();
      return st ? { activeSpeaker: st.activeSpeaker ?? null, tracks: (st.tracks ?? []).map((t) => ({ trackName: t.trackName, location: t.location, audioLevel: t.audioLevel, speaking: t.speaking })) } : null;
    }).catch((e) => `unavailable: ${e.message}`);
    err.message += `\n  outlined: ${JSON.stringify(seen)}\n  SFU session: ${JSON.stringify(sfu)}`;
    throw err;
  }
}

describe('the stage: layout, speaker view, active speaker, controls', { timeout: 240000 }, () => {
  const room = `stage-${Date.now()}`;
  const pages = {};
  const suite = browserSuite({ pages });

  it('lays out 1, 2, 3 and 4 participants, shows the speaker view and outlines who speaks', suite.check(async () => {
    const { base } = suite.servers;
    pages.a = await joinPage(suite.browser, base, { room, name: 'Ann' });
    const a = pages.a;
    // Alone: one tile, as large as the stage allows.
    await assertGrid(a, 1, [1], { cover: 0.6 });
    // The controls' initial faces.
    assert.deepEqual(await waitControl(a, 'toggle-mic', { pressed: 'false', state: 'on', label: 'Mute', icon: 'mic' }),
      { pressed: 'false', state: 'on', label: 'Mute', aria: 'Mute microphone', icon: 'mic', disabled: false });
    await waitControl(a, 'toggle-cam', { pressed: 'false', state: 'on', label: 'Stop video', icon: 'cam' });
    await waitControl(a, 'toggle-layout', { pressed: 'false', state: 'grid', label: 'Speaker view' });

    pages.b = await joinPage(suite.browser, base, { room, name: 'Ben' });
    const b = pages.b;
    // Two: side by side.
    await assertGrid(a, 2, [2], { cover: 0.35 });
    await assertGrid(b, 2, [2], { cover: 0.35 });

    pages.c = await joinPage(suite.browser, base, { room, name: 'Cat' });
    const c = pages.c;
    // Three: 2x2 with the last row centred.
    await assertGrid(a, 3, [2, 1], { cover: 0.5 });

    // Four (a receive-only page keeps the machine's load down): a full 2x2.
    pages.d = await joinPage(suite.browser, base, { room, name: 'Dan', params: { send: '0' } });
    await assertGrid(a, 4, [2, 2], { cover: 0.7 });
    await waitControl(pages.d, 'toggle-mic', { disabled: true, state: 'none' });
    await pages.d.evaluate(() => window.satsuma.call.leave());
    await pages.d.context().close();
    delete pages.d;
    await assertGrid(a, 3, [2, 1], { cover: 0.5 });

    // Only Ben sends sound: Ann and Cat mute with their buttons.
    for (const p of [a, c]) {
      await p.click('#toggle-mic');
      await waitControl(p, 'toggle-mic', { pressed: 'true', state: 'muted', label: 'Unmute', aria: 'Unmute microphone', icon: 'mic-off' });
      assert.equal(await p.evaluate(() => window.satsuma.local.audio.enabled), false, 'the mute button mutes the track');
    }
    const keyOf = (p) => String(p.participantId);
    await waitActive(a, keyOf(b));
    await waitActive(c, keyOf(b));

    // Speaker view: Ben (the active speaker) large, the others in a strip under him.
    await a.click('#toggle-layout');
    await waitControl(a, 'toggle-layout', { pressed: 'true', state: 'speaker', label: 'Grid view', icon: 'grid' });
    const sv = await waitFor('Ann\'s speaker view', async () => {
      const g = await geometry(a);
      return g.layout === 'speaker' && g.tiles.some((t) => t.main) ? g : null;
    });
    const main = sv.tiles.find((t) => t.main);
    const strip = sv.tiles.filter((t) => !t.main);
    assert.equal(main.key, keyOf(b), 'the active speaker is the large tile');
    assert.equal(strip.length, 2);
    for (const t of sv.tiles) assert169(t);
    assertInside(sv);
    for (const t of strip) {
      assert.ok(t.y >= main.y + main.h - 1, `strip tile ${t.key} is under the large one`);
      assert.ok(main.w >= 3 * t.w, `the large tile (${main.w} px) is much larger than a strip tile (${t.w} px)`);
    }
    assert.ok(main.h + strip[0].h + 8 >= sv.stage.h * 0.97 || main.w >= sv.stage.w * 0.97, 'the speaker view fills the stage');
    // Tile size drives the layer each tile asks for: the large one f, the strip q.
    const wants = await waitFor('Ann\'s tiles to want f (large) and q (strip)', async () => {
      const st = await a.evaluate(() => window.satsuma.stats());
      const w = Object.fromEntries(st.remote.filter((r) => r.kind === 'video').map((r) => [String(r.participantId), r.layer?.wanted]));
      return w[keyOf(b)] === 'f' && w[keyOf(c)] === 'q' ? w : null;
    }, { timeout: 10000 });
    assert.deepEqual(wants, { [keyOf(b)]: 'f', [keyOf(c)]: 'q' });
    console.log(`# stage | speaker view: main ${main.w.toFixed(0)}x${main.h.toFixed(0)}, strip ${strip[0].w.toFixed(0)}x${strip[0].h.toFixed(0)} on ${sv.stage.w.toFixed(0)}x${sv.stage.h.toFixed(0)}`);

    // Now Cat speaks and Ben is muted: the outline (and the large tile) move to Cat.
    await c.click('#toggle-mic');
    await waitControl(c, 'toggle-mic', { pressed: 'false', state: 'on', label: 'Mute' });
    await b.click('#toggle-mic');
    await waitControl(b, 'toggle-mic', { pressed: 'true', state: 'muted' });
    const handover = Date.now();
    await waitActive(a, keyOf(c));
    console.log(`# stage | active speaker handed over to Cat in ${Date.now() - handover} ms (Ben muted, Cat unmuted)`);
    await waitActive(b, keyOf(c));
    await waitFor('Ann\'s large tile to follow the speaker to Cat', async () => {
      const g = await geometry(a);
      return g.tiles.find((t) => t.main)?.key === keyOf(c);
    }, { timeout: 10000 });

    if (process.env.STAGE_SCREENSHOT) await screenshot(a, 'stage-speaker');
    await a.click('#toggle-layout');
    await waitControl(a, 'toggle-layout', { pressed: 'false', state: 'grid', label: 'Speaker view', icon: 'speaker' });
    await assertGrid(a, 3, [2, 1], { cover: 0.5 });
    await waitFor('Ann\'s grid tiles (464 px) to want h', async () => {
      const st = await a.evaluate(() => window.satsuma.stats());
      return st.remote.filter((r) => r.kind === 'video').every((r) => r.layer?.wanted === 'h');
    }, { timeout: 10000 });

    // Camera: stop and start again; the own tile says "camera off" meanwhile.
    await a.click('#toggle-cam');
    await waitControl(a, 'toggle-cam', { pressed: 'true', state: 'off', label: 'Start video', icon: 'cam-off' });
    assert.equal(await a.evaluate(() => document.querySelector('[data-key="local"] .muted-cam').hidden), false);
    await a.click('#toggle-cam');
    await waitControl(a, 'toggle-cam', { pressed: 'false', state: 'on', label: 'Stop video', icon: 'cam' });
    // Hand: pressed once the room confirms it; keyboard works too (Enter on the focused button).
    await a.focus('#toggle-hand');
    await a.keyboard.press('Enter');
    await waitControl(a, 'toggle-hand', { pressed: 'true', state: 'raised', label: 'Lower hand' });
    await waitFor('Ben to see Ann\'s hand', () => b.evaluate((key) => !document.querySelector(`[data-key="${key}"] .hand`).hidden, keyOf(a)), { timeout: 10000 });
    await a.click('#toggle-hand');
    await waitControl(a, 'toggle-hand', { pressed: 'false', state: 'down', label: 'Raise hand' });
    // Screen share: pressed while sharing; Ann's own screen tile joins her stage, Ben gets it
    // as a tile of its own, and Ben's speaker view shows the screen large.
    await a.click('#toggle-screen');
    await waitControl(a, 'toggle-screen', { pressed: 'true', state: 'sharing', label: 'Stop sharing', icon: 'screen-off' });
    await assertGrid(a, 4, [2, 2], { cover: 0.7 });
    const screenKey = `${keyOf(a)}:screen`;
    await waitFor('Ben to get Ann\'s screen tile', () => b.evaluate((k) => Boolean(document.querySelector(`[data-key="${k}"]`)), screenKey), { timeout: 20000 });
    assert.equal(await b.evaluate((k) => document.querySelector(`[data-key="${k}"] .muted-cam`).hidden, screenKey), true, 'a screen tile never says "camera off"');
    await waitFor('Ben\'s screen tile to say "decoding"', async () => {
      const st = await b.evaluate(() => window.satsuma.stats());
      const r = st.remote.find((x) => x.kind === 'screenshare');
      const pill = await b.evaluate((k) => document.querySelector(`[data-key="${k}"] .label .pill:last-child`)?.textContent ?? '', screenKey);
      return r?.tile === 'decoding' && r.framesDecoded > 0 && pill.startsWith('decoding');
    }, { timeout: 20000 });
    await b.click('#toggle-layout');
    await waitFor('Ben\'s speaker view to show the screen large', async () => {
      const g = await geometry(b);
      return g.layout === 'speaker' && g.tiles.find((t) => t.main)?.key === screenKey;
    }, { timeout: 10000 });
    if (process.env.STAGE_SCREENSHOT) await screenshot(b, 'stage-screen');
    await a.click('#toggle-screen');
    await waitControl(a, 'toggle-screen', { pressed: 'false', state: 'off', label: 'Share screen', icon: 'screen' });
    await assertGrid(a, 3, [2, 1], { cover: 0.5 });
    if (process.env.STAGE_SCREENSHOT) await screenshot(a, 'stage-grid');
  }));
});
