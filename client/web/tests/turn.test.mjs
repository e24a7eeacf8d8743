// TURN credentials in the browser: with TURN configured (`satsuma --turn-url … --turn-secret …`)
// the page's RTCPeerConnection carries the coordinator's ICE servers with this participant's own
// TURN credentials (username `<expiry>:p<id>-…`, credential base64(HMAC-SHA1(secret, username)),
// checked here with Node's crypto), refreshes them before they expire, and a call still connects
// directly when the TURN server is unreachable (relaying itself is the network-namespace tests').

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import path from 'node:path';
import {
  assertDecodes, binDir, browserSuite, joinPage, startProcess, waitFor, webDir,
} from './harness.mjs';

const SECRET = 'browser-test-coturn-secret';
const TTL = 40; // seconds: the page refreshes at 80 % of the time left, at least 30 s on
// Nothing listens on port 9 (discard): every TURN allocation fails at once.
const URLS = ['stun:127.0.0.1:9', 'turn:127.0.0.1:9?transport=udp', 'turn:127.0.0.1:9?transport=tcp'];

async function startWithTurn() {
  const logs = [];
  const all = await startProcess('satsuma', path.join(binDir, 'satsuma'), [
    '--listen', '127.0.0.1:0', '--sfu-api', '127.0.0.1:0', '--media', '127.0.0.1:0', '--detect-lan=false',
    '--web-dir', webDir(), '--log', 'warn', '--test-hooks=true', '--dev=true',
    ...URLS.flatMap((u) => ['--turn-url', u]), '--turn-ttl-secs', String(TTL),
  ], /satsuma listening web=(\S+) sfu=(\S+) media=(\S+)/, logs, { SATSUMA_TURN_SECRET: SECRET });
  return {
    base: `http://${all.match[1]}`,
    logs,
    async stop() {
      if (all.child.exitCode === null) all.child.kill('SIGTERM');
    },
  };
}

/** The ICE servers the page's media connection uses now. */
function iceServers(page) {
  return page.evaluate(() => window.satsuma.call.sfu.pc.getConfiguration().iceServers
    .map((s) => ({ urls: [].concat(s.urls), username: s.username ?? null, credential: s.credential ?? null })));
}

/** Checks the page's TURN entry against the shared secret; returns its username. */
function checkTurn(servers, participantId) {
  assert.equal(servers.length, 2, JSON.stringify(servers));
  assert.deepEqual(servers[0].urls, [URLS[0]]);
  const turn = servers[1];
  assert.deepEqual(turn.urls, URLS.slice(1));
  const match = /^(\d+):p(\d+)-[0-9a-f]+$/.exec(turn.username ?? '');
  assert.ok(match, `username ${turn.username}`);
  assert.equal(Number(match[2]), participantId);
  const expiry = Number(match[1]);
  const now = Math.floor(Date.now() / 1000);
  assert.ok(expiry > now && expiry <= now + TTL, `expiry ${expiry}, now ${now}`);
  const expected = createHmac('sha1', SECRET).update(turn.username).digest('base64');
  assert.equal(turn.credential, expected, 'the credential is HMAC-SHA1(secret, username)');
  return turn.username;
}

describe('TURN credentials in the browser', { timeout: 300000 }, () => {
  const room = `turn-${Date.now()}`;
  const pages = {};
  const suite = browserSuite({ pages, start: startWithTurn });
  const { check } = suite;

  it('the media connection gets the participant\'s TURN credentials and still connects directly', check(async () => {
    pages.alice = await joinPage(suite.browser, suite.servers.base, { room, name: 'Alice' });
    pages.bob = await joinPage(suite.browser, suite.servers.base, { room, name: 'Bob' });
    await assertDecodes(pages.alice, pages.bob.participantId);
    await assertDecodes(pages.bob, pages.alice.participantId);
    const alice = checkTurn(await iceServers(pages.alice), pages.alice.participantId);
    const bob = checkTurn(await iceServers(pages.bob), pages.bob.participantId);
    assert.notEqual(alice, bob);
    pages.alice.firstUsername = alice;
  }));

  it('fresh credentials replace them before they expire', check(async () => {
    const first = pages.alice.firstUsername;
    const fresh = await waitFor('refreshed TURN credentials', async () => {
      const servers = await iceServers(pages.alice);
      return servers[1]?.username !== first ? servers : null;
    }, { timeout: TTL * 1000, interval: 1000 });
    const username = checkTurn(fresh, pages.alice.participantId);
    assert.ok(Number(username.split(':')[0]) > Number(first.split(':')[0]), `${username} after ${first}`);
    // The call is unaffected.
    await assertDecodes(pages.bob, pages.alice.participantId);
  }));
});
