// A host starts and stops recording from the page; the coordinator enforces host-only.
//
// The all-in-one server runs with a recordings directory (SATSUMA_COORD_RECORDINGS_DIR; it
// finds the satsuma-record next to itself). Alice joins first (host), Bob second. Bob's page
// has no Record button, and a `record` he sends anyway (through the page's room link) is
// refused with an error his page shows; nothing starts. Alice presses Record: the coordinator
// starts a recorder that joins as a visible member, both pages show the badge; a second
// start is refused (one recorder per room). After a few seconds she presses Stop: the badge
// goes away on both pages, and the recording's directory holds one Opus and one VP8 WebM per
// page that ffprobe/ffmpeg decode, lasting as long as the recording, and its manifest.
//
// A server without a recorder says so in its client-config.json: its host sees Record
// disabled from the start, with the reason, and pressing it sends nothing.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import {
  artifacts, browserSuite, joinPage, sameSafetyNumber, startAllInOne, waitFor,
} from './harness.mjs';

const RECORD_SECONDS = 6;
const dir = path.join(artifacts, `recording-control-${process.pid}`);

function run(bin, args) {
  return execFileSync(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 << 20 }).toString();
}

/** The badge's text on `page` if it is shown, else null. */
function badge(page) {
  return page.evaluate(() => {
    const b = document.getElementById('recording-badge');
    return b && !b.hidden && b.getClientRects().length ? b.textContent : null;
  });
}

/** The Record button as the page shows it. */
function recordButton(page) {
  return page.evaluate(() => {
    const b = document.getElementById('toggle-record');
    if (!b) return null;
    return {
      visible: !b.hidden && b.getClientRects().length > 0,
      label: b.querySelector('.label')?.textContent ?? b.textContent,
      pressed: b.getAttribute('aria-pressed'),
      state: b.dataset.state,
      disabled: b.disabled,
      title: b.title,
      aria: b.getAttribute('aria-label'),
    };
  });
}

/** The recording error note's text if shown, else null. */
function note(page) {
  return page.evaluate(() => {
    const n = document.getElementById('recording-note');
    return n && !n.hidden ? n.textContent : null;
  });
}

describe('a host starts and stops recording from the page', { timeout: 120000 }, () => {
  const room = `record-control-${Date.now()}`;
  const pages = {};
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const suite = browserSuite({
    pages,
    start: () => startAllInOne({
      env: { SATSUMA_COORD_RECORDINGS_DIR: dir },
      log: 'warn,satsuma_coordinator::recording=info,satsuma_coordinator::recorder=info',
    }),
  });
  const { check } = suite;

  it('refuses a non-host, records between Record and Stop, and the files decode', check(async () => {
    const { browser } = suite;
    const { base, logs } = suite.servers;
    const t0 = Date.now();
    const at = (what) => console.log(`${((Date.now() - t0) / 1000).toFixed(1)} s: ${what}`);
    pages.alice = await joinPage(browser, base, { room, name: 'Alice' });
    pages.bob = await joinPage(browser, base, { room, name: 'Bob' });
    const { alice, bob } = pages;
    await sameSafetyNumber([alice, bob]);
    at('pages in one group');

    // Only the host has the control.
    await waitFor('Alice (host) shows Record', async () => {
      const b = await recordButton(alice);
      return b?.visible && b.label === 'Record' && b.pressed === 'false' && !b.disabled;
    });
    assert.equal((await recordButton(bob))?.visible, false, 'a non-host has no Record button');

    // A non-host's request is refused, shown on his page, and starts nothing.
    await bob.evaluate(() => window.satsuma.call.link.send({ type: 'record', action: 'start' }));
    await waitFor('Bob sees the refusal', async () => /only a host/.test((await note(bob)) ?? ''));
    await new Promise((r) => setTimeout(r, 2000));
    assert.equal(await badge(alice), null, 'no recorder after a non-host asked');
    assert.deepEqual(readdirSync(dir), [], 'no recording directory after a non-host asked');
    assert.ok(!logs.some((l) => /a host started recording/.test(l)), 'the coordinator started nothing');
    at('non-host refused');

    // The host records.
    await alice.click('#toggle-record');
    for (const p of [alice, bob]) {
      await waitFor(`${p.label} shows the recording badge`, async () => (await badge(p)) === '● Recording by Recorder', { timeout: 40000 });
    }
    const started = Date.now();
    await waitFor('Alice shows Stop recording', async () => {
      const b = await recordButton(alice);
      return b.label === 'Stop recording' && b.pressed === 'true' && b.state === 'recording';
    });
    assert.equal(await note(alice), null, 'no error on the host page');
    at('recording');

    // One recorder per room: a second start is refused.
    await alice.evaluate(() => window.satsuma.call.link.send({ type: 'record', action: 'start' }));
    await waitFor('Alice sees the one-per-room refusal', async () => /already being recorded/.test((await note(alice)) ?? ''));
    const runs = readdirSync(dir);
    assert.equal(runs.length, 1, `one recording directory: ${runs}`);

    const wait = RECORD_SECONDS * 1000 - (Date.now() - started);
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    await alice.click('#toggle-record');
    for (const p of [alice, bob]) {
      await waitFor(`${p.label} hides the badge after Stop`, async () => (await badge(p)) === null, { timeout: 20000 });
    }
    await waitFor('Alice shows Record again', async () => (await recordButton(alice)).label === 'Record', { timeout: 20000 });
    at('stopped');

    const out = path.join(dir, runs[0]);
    assert.ok(runs[0].startsWith(`${room}-`), runs[0]);
    await waitFor('the recorder wrote its manifest', () => existsSync(path.join(out, 'manifest.json')), { timeout: 30000 });
    const manifest = JSON.parse(readFileSync(path.join(out, 'manifest.json'), 'utf8'));
    assert.match(manifest.ended_because, /stopped|left the room/);
    const seconds = (manifest.ended_at_ms - manifest.started_at_ms) / 1000;
    console.log(`recorded ${seconds.toFixed(2)} s (${manifest.ended_because}): ${manifest.tracks.map((t) => `${t.participant_name}/${t.kind}: ${t.frames} frames`).join('; ')}`);
    assert.ok(seconds >= RECORD_SECONDS - 3, `recording time ${seconds} s`);
    const names = manifest.participants.map((p) => p.name).sort();
    assert.deepEqual(names, ['Alice', 'Bob', 'Recorder']);

    for (const who of [alice, bob]) {
      for (const kind of ['audio', 'video']) {
        const t = manifest.tracks.find((x) => x.participant_id === who.participantId && x.kind === kind);
        assert.ok(t?.file, `${who.label}'s ${kind} was recorded: ${JSON.stringify(t)}`);
        const file = path.join(out, t.file);
        const probe = JSON.parse(run('ffprobe', ['-v', 'error', '-count_frames', '-show_entries',
          'format=duration:stream=codec_name,nb_read_frames', '-of', 'json', file]));
        const stream = probe.streams[0];
        assert.equal(stream.codec_name, kind === 'audio' ? 'opus' : 'vp8', JSON.stringify(probe));
        const duration = Number(probe.format.duration);
        assert.ok(Math.abs(duration - seconds) <= 1, `${t.file}: ffprobe duration ${duration} s, recording ${seconds} s`);
        const decoded = Number(stream.nb_read_frames);
        console.log(`${t.file}: ${stream.codec_name}, ${duration.toFixed(3)} s, ${decoded} frames decoded`);
        const least = kind === 'audio' ? 40 * (seconds - 2) : 5 * (seconds - 2);
        assert.ok(decoded >= least, `${t.file}: ${decoded} frames decoded (want >= ${least})`);
        assert.equal(run('ffmpeg', ['-v', 'error', '-i', file, '-f', 'null', '-']).trim(), '', `${t.file} decodes without errors`);
      }
    }
    at('files checked');
    rmSync(dir, { recursive: true, force: true });
  }));
});

describe('a host on a server without a recorder is not offered Record', { timeout: 60000 }, () => {
  const room = `record-none-${Date.now()}`;
  const pages = {};
  const suite = browserSuite({ pages, start: () => startAllInOne() });
  const { check } = suite;

  it('shows Record disabled with the reason from the start, and a press sends nothing', check(async () => {
    const { browser } = suite;
    const { base, logs } = suite.servers;
    const config = await (await fetch(`${base}/client-config.json`)).json();
    assert.equal(config.recording, false, JSON.stringify(config));
    pages.alice = await joinPage(browser, base, { room, name: 'Alice' });
    const { alice } = pages;
    // Joined as host (the page knows it), before any `record` was sent or refused.
    await waitFor('Alice is the host', () => alice.evaluate(() => {
      const s = window.satsuma.call.model.state;
      return s.participants.get(s.me)?.host === true;
    }));
    const b = await recordButton(alice);
    assert.equal(b?.visible, true, `the host sees the control: ${JSON.stringify(b)}`);
    assert.equal(b.disabled, true, `Record is disabled: ${JSON.stringify(b)}`);
    assert.equal(b.state, 'unavailable');
    assert.match(b.title, /not set up to record/);
    assert.match(b.aria, /not set up on this server/);
    // Count what the room link sends, then press: a disabled button sends no `record`.
    await alice.evaluate(() => {
      const link = window.satsuma.call.link;
      const send = link.send.bind(link);
      window.sentTypes = [];
      link.send = (m) => { window.sentTypes.push(m?.type); return send(m); };
    });
    await alice.click('#toggle-record', { force: true });
    await new Promise((r) => setTimeout(r, 1000));
    assert.deepEqual(await alice.evaluate(() => window.sentTypes.filter((t) => t === 'record')), []);
    assert.equal(await note(alice), null, 'no refusal to show');
    assert.ok(!logs.some((l) => /recording_unavailable/.test(l)), 'the server saw no record request');
  }));
});
