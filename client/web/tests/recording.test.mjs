// A recorder joins a two-page call as a visible member (satsuma-record with a token that
// grants `recorder`; with a token that does not, it refuses to record): both pages show "● Recording by <name>" and list it among those who
// hold the keys; its WebM files decode with ffprobe/ffmpeg and last as long as the
// recording, within 1 s; and every video frame in them is one a page sent.
//
// The frame check: each page runs the test drill `frameDigests`, under which its E2EE
// worker reports the SHA-256 of every video frame it encrypts (the encoded frame before
// encryption, every simulcast layer). ffmpeg's framehash muxer hashes every packet of the
// recorded file without decoding it (`-c copy`). Every recorded frame's hash must be one
// the publishing page reported: byte-identical frames, so a recorder that wrote sealed
// bytes, a corrupted or truncated frame, or the other page's frames would fail it. (The
// recorder only ever pulls one simulcast layer at a time, so not every sent frame is
// recorded; the check is that the recording holds nothing that was not sent, and enough of
// it. Not checked: that no frame equals one of the other page's. Both pages encode the same
// fake-camera pattern, so identical encoded frames are possible in principle.)

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import {
  artifacts, binDir, browserSuite, joinPage, sameSafetyNumber, startAllInOne, waitFor,
} from './harness.mjs';

const TOKEN_SECRET = 'recording-test-token-secret-4f1c9a7e2b6d8035';
const RECORD_SECONDS = 8;

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

/** Starts satsuma-record; resolves with {code, manifest, log} when it exits. */
function startRecorder({ base, room, token, out, logs, name = 'Recorder Bot' }) {
  const child = spawn(path.join(binDir, 'satsuma-record'), [
    '--coordinator', base, '--room', room, '--name', name, '--out', out,
    '--duration', String(RECORD_SECONDS),
  ], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, SATSUMA_RECORD_TOKEN: token, RUST_LOG: 'info' } });
  let stdout = '';
  child.stdout.on('data', (c) => { stdout += c.toString(); });
  child.stderr.on('data', (c) => logs.push(...c.toString().split('\n').filter(Boolean).map((l) => `[recorder] ${l}`)));
  const done = new Promise((resolve) => child.on('exit', (code) => resolve({ code, stdout })));
  return { child, done };
}

describe('recording by a visible member', { timeout: 120000 }, () => {
  const room = `recording-${Date.now()}`;
  const pages = {};
  const suite = browserSuite({ pages, start: () => startAllInOne({ tokenSecret: TOKEN_SECRET }) });
  const { check } = suite;

  it('shows the badge on every page, writes WebM that decodes, lasts as long, and holds the frames sent', check(async () => {
    const { browser } = suite;
    const { base, logs } = suite.servers;
    const t0 = Date.now();
    const at = (what) => console.log(`${((Date.now() - t0) / 1000).toFixed(1)} s: ${what}`);
    pages.alice = await joinPage(browser, base, { room, name: 'Alice' });
    pages.bob = await joinPage(browser, base, { room, name: 'Bob' });
    const { alice, bob } = pages;

    await sameSafetyNumber([alice, bob]);
    for (const p of [alice, bob]) await p.evaluate(() => window.satsuma.call.drill('frameDigests', true));
    assert.equal(await badge(alice), null, 'no badge before a recorder joins');
    at('pages in one group');

    // A token without the `recorder` grant: satsuma-record refuses to record unannounced.
    const plain = JSON.parse(run(path.join(binDir, 'satsuma'), [
      'token', 'create', '--room', room, '--identity', 'sneaky-1', '--name', 'Sneaky', '--no-publish',
      '--ttl', '10m', '--json', '--token-secret', TOKEN_SECRET,
    ]));
    const refusedOut = path.join(artifacts, `recording-refused-${process.pid}`);
    const refused = startRecorder({ base, room, token: plain.token, out: refusedOut, logs, name: 'Sneaky' });
    let refusedTimer;
    const refusal = await Promise.race([
      refused.done,
      new Promise((_, reject) => { refusedTimer = setTimeout(() => reject(new Error('satsuma-record without the grant did not stop')), 40000); }),
    ]).finally(() => clearTimeout(refusedTimer));
    assert.notEqual(refusal.code, 0, 'satsuma-record refuses a token without recorder');
    assert.ok(logs.some((l) => l.startsWith('[recorder]') && /does not mark this participant as a recorder/.test(l)),
      logs.filter((l) => l.startsWith('[recorder]')).slice(-5).join('\n'));
    assert.equal(await badge(alice), null, 'a participant without the grant gets no badge');
    rmSync(refusedOut, { recursive: true, force: true });
    at('unmarked recorder refused');

    const minted = JSON.parse(run(path.join(binDir, 'satsuma'), [
      'token', 'create', '--room', room, '--identity', 'recorder-1', '--name', 'Recorder Bot', '--recorder',
      '--no-publish', '--ttl', '10m', '--json', '--token-secret', TOKEN_SECRET,
    ]));
    const out = path.join(artifacts, `recording-${process.pid}`);
    rmSync(out, { recursive: true, force: true });
    mkdirSync(out, { recursive: true });
    const recorder = startRecorder({ base, room, token: minted.token, out, logs });
    let code;
    let stdout;
    let withRecorder = null;
    try {
      // Every page shows who records, and lists the recorder among the MLS members.
      for (const p of [alice, bob]) {
        await waitFor(`${p.label} shows the recording badge`, async () => (await badge(p)) === '● Recording by Recorder Bot', { timeout: 30000 });
        await waitFor(`${p.label} lists the recorder as a key holder`,
          () => p.evaluate(() => document.getElementById('mls-members')?.textContent.includes('Recorder Bot')), { timeout: 30000 });
      }
      // The safety number of the epoch that holds the recorder (the pages agree on it).
      await waitFor('the pages agree on a safety number with the recorder in the group', async () => {
        const [a, b] = await Promise.all([alice, bob].map((p) => p.evaluate(() => window.satsuma.safetyNumber())));
        withRecorder = a && a === b ? a : null;
        return withRecorder !== null;
      }, { timeout: 30000 });
      at('badge and key holder shown on both pages');
      const people = await alice.evaluate(() => document.getElementById('people')?.textContent ?? '');
      assert.match(people, /Recorder Bot.*· recording/);
      let timer;
      ({ code, stdout } = await Promise.race([
        recorder.done,
        new Promise((_, reject) => { timer = setTimeout(() => reject(new Error('satsuma-record did not finish within 60 s')), 60000); }),
      ]).finally(() => clearTimeout(timer)));
    } finally {
      if (recorder.child.exitCode === null) recorder.child.kill('SIGTERM');
    }
    at('recorder done');
    assert.equal(code, 0, `satsuma-record exit code\n${logs.filter((l) => l.startsWith('[recorder]')).slice(-20).join('\n')}`);
    const manifest = JSON.parse(readFileSync(path.join(out, 'manifest.json'), 'utf8'));
    assert.deepEqual(JSON.parse(stdout.trim().split('\n').pop()), manifest, 'stdout carries the manifest');
    assert.equal(manifest.ended_because, 'duration reached');
    const seconds = (manifest.ended_at_ms - manifest.started_at_ms) / 1000;
    console.log(`recorded ${seconds.toFixed(2)} s: ${manifest.tracks.map((t) => `${t.participant_name}/${t.kind}: ${t.frames} frames (${t.keyframes} key, ${t.decrypt_failures} undecryptable, ${t.lost_frames} lost, first at ${t.first_frame_ms} ms)`).join('; ')}`);
    assert.ok(Math.abs(seconds - RECORD_SECONDS) < 1, `recording time ${seconds} s`);
    assert.ok(manifest.safety_numbers.length >= 1, 'the manifest names the safety numbers seen');
    assert.ok(manifest.safety_numbers.some((s) => s.safety_number === withRecorder),
      `the recorder saw the pages' safety number ${withRecorder}: ${JSON.stringify(manifest.safety_numbers)}`);
    const names = manifest.participants.map((p) => p.name).sort();
    assert.deepEqual(names, ['Alice', 'Bob', 'Recorder Bot']);
    assert.ok(manifest.participants.find((p) => p.name === 'Recorder Bot').recorder);

    // One audio and one video file per page, each decodable and as long as the recording.
    for (const who of [alice, bob]) {
      for (const kind of ['audio', 'video']) {
        const t = manifest.tracks.find((x) => x.participant_id === who.participantId && x.kind === kind);
        assert.ok(t?.file, `${who.label}'s ${kind} was recorded: ${JSON.stringify(t)}`);
        const file = path.join(out, t.file);
        const probe = JSON.parse(run('ffprobe', ['-v', 'error', '-count_frames', '-show_entries',
          'format=duration,format_name:stream=codec_name,nb_read_frames,width,height', '-of', 'json', file]));
        const stream = probe.streams[0];
        assert.equal(stream.codec_name, kind === 'audio' ? 'opus' : 'vp8', JSON.stringify(probe));
        const duration = Number(probe.format.duration);
        assert.ok(Math.abs(duration - seconds) <= 1, `${t.file}: ffprobe duration ${duration} s, recording ${seconds} s`);
        const decoded = Number(stream.nb_read_frames);
        console.log(`${t.file}: ${stream.codec_name}, ffprobe duration ${duration.toFixed(3)} s (recording ${seconds.toFixed(3)} s), ${decoded} frames decoded`);
        const least = kind === 'audio' ? 40 * (seconds - 2) : 5 * (seconds - 2);
        assert.ok(decoded >= least, `${t.file}: ${decoded} frames decoded (want >= ${least})`);
        // A full decode without errors.
        const errors = run('ffmpeg', ['-v', 'error', '-i', file, '-f', 'null', '-']);
        assert.equal(errors.trim(), '', `${t.file} decodes without errors`);
        if (kind === 'video') {
          // Every recorded frame, hashed as stored, is a frame this page sent.
          const lines = run('ffmpeg', ['-v', 'error', '-i', file, '-map', '0:v', '-c', 'copy', '-f', 'framehash', '-hash', 'sha256', '-']);
          const recorded = lines.split('\n').filter((l) => l && !l.startsWith('#'))
            .map((l) => l.split(',').pop().trim().replace(/^SHA256=/i, '').toLowerCase());
          const sent = new Set((await who.evaluate(() => window.satsuma.call.e2ee.frameDigests ?? [])).map((d) => d.digest));
          const matched = recorded.filter((h) => sent.has(h)).length;
          console.log(`${who.label}: ${recorded.length} recorded video frames, ${matched} match one of the ${sent.size} frames the page sent`);
          assert.ok(recorded.length >= least, `${recorded.length} recorded video frames`);
          assert.equal(matched, recorded.length, `every recorded frame of ${who.label} is one it sent`);
        }
      }
    }

    at('files checked');
    // Leaving ends it for everyone to see: the badge goes away.
    for (const p of [alice, bob]) {
      await waitFor(`${p.label} hides the badge after the recorder left`, async () => (await badge(p)) === null, { timeout: 15000 });
    }
    rmSync(out, { recursive: true, force: true });
    at('badge gone');
  }));
});
