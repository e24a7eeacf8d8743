// Recording a call whose pages publish VP9 and H.264 (recording.test.mjs covers the default,
// VP8). Alice picks VP9 (`codec=VP9`), Bob H.264. satsuma-record (for a few seconds) writes
// Alice's video as a VP9 WebM that ffprobe/ffmpeg decode, as long as the recording within
// 1 s, and every frame in it is one Alice's E2EE worker encrypted (test drill
// `frameDigests`: the SHA-256 of each encoded frame before encryption; ffmpeg's framehash of
// each stored packet). Bob's H.264 video cannot go into WebM: the manifest names the track
// with its codec and why it has no file, and the recorder's log says so.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import {
  artifacts, binDir, browserSuite, joinPage, remoteTrack, sameSafetyNumber, startAllInOne, waitFor,
} from './harness.mjs';

const TOKEN_SECRET = 'recording-codecs-test-secret-0b7d2e91c4a65f38';
const RECORD_SECONDS = 6;

function run(bin, args) {
  return execFileSync(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 << 20 }).toString();
}

describe('recording VP9 and naming H.264 as not recordable', { timeout: 120000 }, () => {
  const room = `recording-codecs-${Date.now()}`;
  const pages = {};
  const suite = browserSuite({ pages, start: () => startAllInOne({ tokenSecret: TOKEN_SECRET }) });
  const { check } = suite;

  it('writes VP9 that decodes and holds the frames sent; H.264 is in the manifest without a file', check(async () => {
    const { browser } = suite;
    const { base, logs } = suite.servers;
    pages.alice = await joinPage(browser, base, { room, name: 'Alice', params: { codec: 'VP9' } });
    pages.bob = await joinPage(browser, base, { room, name: 'Bob', params: { codec: 'H264' } });
    const { alice, bob } = pages;
    await sameSafetyNumber([alice, bob]);
    await alice.evaluate(() => window.satsuma.call.drill('frameDigests', true));
    // What each page sends, as the other receives it.
    const sent = {};
    for (const [who, other] of [[alice, bob], [bob, alice]]) {
      const t = await waitFor(`${other.label} to receive ${who.label}'s video codec`, async () => {
        const r = await remoteTrack(other, who.participantId, 'video');
        return r?.codec && r.decrypted > 0 ? r : null;
      }, { timeout: 30000 });
      sent[who.label] = t.codec;
    }
    assert.equal(sent[alice.label], 'video/VP9', 'Alice publishes VP9');

    const minted = JSON.parse(run(path.join(binDir, 'satsuma'), [
      'token', 'create', '--room', room, '--identity', 'recorder-codecs', '--name', 'Codec Recorder', '--recorder',
      '--no-publish', '--ttl', '10m', '--json', '--token-secret', TOKEN_SECRET,
    ]));
    const out = path.join(artifacts, `recording-codecs-${process.pid}`);
    rmSync(out, { recursive: true, force: true });
    mkdirSync(out, { recursive: true });
    const child = spawn(path.join(binDir, 'satsuma-record'), [
      '--coordinator', base, '--room', room, '--name', 'Codec Recorder', '--out', out,
      '--duration', String(RECORD_SECONDS),
    ], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, SATSUMA_RECORD_TOKEN: minted.token, RUST_LOG: 'info' } });
    let stdout = '';
    child.stdout.on('data', (c) => { stdout += c.toString(); });
    child.stderr.on('data', (c) => logs.push(...c.toString().split('\n').filter(Boolean).map((l) => `[recorder] ${l}`)));
    let timer;
    const code = await Promise.race([
      new Promise((resolve) => child.on('exit', resolve)),
      new Promise((_, reject) => { timer = setTimeout(() => reject(new Error('satsuma-record did not finish within 60 s')), 60000); }),
    ]).finally(() => {
      clearTimeout(timer);
      if (child.exitCode === null) child.kill('SIGTERM');
    });
    const recorderLog = logs.filter((l) => l.startsWith('[recorder]'));
    assert.equal(code, 0, `satsuma-record exit code\n${recorderLog.slice(-20).join('\n')}`);
    const manifest = JSON.parse(readFileSync(path.join(out, 'manifest.json'), 'utf8'));
    assert.deepEqual(JSON.parse(stdout.trim().split('\n').pop()), manifest);
    const seconds = (manifest.ended_at_ms - manifest.started_at_ms) / 1000;
    console.log(`recorded ${seconds.toFixed(2)} s: ${manifest.tracks.map((t) => `${t.participant_name}/${t.kind} ${t.codec}: ${t.frames} frames (${t.keyframes} key, ${t.decrypt_failures} undecryptable, ${t.lost_frames} lost${t.not_recorded ? `; not recorded: ${t.not_recorded}` : ''})`).join('; ')}`);

    // Alice's VP9.
    const v = manifest.tracks.find((t) => t.participant_id === alice.participantId && t.kind === 'video');
    assert.equal(v?.codec, 'VP9', JSON.stringify(v));
    assert.ok(v.file?.endsWith('-vp9.webm'), JSON.stringify(v));
    const file = path.join(out, v.file);
    const probe = JSON.parse(run('ffprobe', ['-v', 'error', '-count_frames', '-show_entries',
      'format=duration:stream=codec_name,nb_read_frames,width,height', '-of', 'json', file]));
    const stream = probe.streams[0];
    assert.equal(stream.codec_name, 'vp9', JSON.stringify(probe));
    const duration = Number(probe.format.duration);
    const decoded = Number(stream.nb_read_frames);
    console.log(`${v.file}: ${stream.codec_name} ${stream.width}x${stream.height}, ffprobe duration ${duration.toFixed(3)} s (recording ${seconds.toFixed(3)} s), ${decoded} frames decoded`);
    assert.ok(Math.abs(duration - seconds) <= 1, `ffprobe duration ${duration} s, recording ${seconds} s`);
    const least = 5 * (seconds - 2);
    assert.ok(decoded >= least, `${decoded} frames decoded (want >= ${least})`);
    const errors = run('ffmpeg', ['-v', 'error', '-i', file, '-f', 'null', '-']);
    assert.equal(errors.trim(), '', 'decodes without errors');
    const lines = run('ffmpeg', ['-v', 'error', '-i', file, '-map', '0:v', '-c', 'copy', '-f', 'framehash', '-hash', 'sha256', '-']);
    const recorded = lines.split('\n').filter((l) => l && !l.startsWith('#'))
      .map((l) => l.split(',').pop().trim().replace(/^SHA256=/i, '').toLowerCase());
    const digests = new Set((await alice.evaluate(() => window.satsuma.call.e2ee.frameDigests ?? [])).map((d) => d.digest));
    const matched = recorded.filter((h) => digests.has(h)).length;
    console.log(`Alice: ${recorded.length} recorded VP9 frames, ${matched} match one of the ${digests.size} frames the page sent`);
    assert.ok(recorded.length >= least, `${recorded.length} recorded video frames`);
    assert.equal(matched, recorded.length, 'every recorded VP9 frame is one Alice sent');

    // Bob's H.264: named, not recorded, and said so in the log.
    const h = manifest.tracks.find((t) => t.participant_id === bob.participantId && t.kind === 'video');
    if (sent[bob.label] === 'video/H264') {
      assert.equal(h?.codec, 'H264', JSON.stringify(h));
      assert.equal(h.file, null, JSON.stringify(h));
      assert.match(h.not_recorded ?? '', /WebM cannot carry H\.264/);
      assert.ok(recorderLog.some((l) => /WebM cannot carry H\.264/.test(l)), recorderLog.slice(-20).join('\n'));
    } else {
      console.log(`Bob sends ${sent[bob.label]} (this Chromium does not send H.264): the H.264 check is skipped`);
    }
    // Both pages' audio is Opus, recorded.
    for (const who of [alice, bob]) {
      const a = manifest.tracks.find((t) => t.participant_id === who.participantId && t.kind === 'audio');
      assert.equal(a?.codec, 'Opus', JSON.stringify(a));
      assert.ok(a.file && a.frames > 0, JSON.stringify(a));
    }
    rmSync(out, { recursive: true, force: true });
  }));
});
