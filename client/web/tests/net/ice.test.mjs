// Calls on hostile networks (issue 12), in real Chromium inside network
// namespaces this file creates (netns.mjs): one `satsuma` and one coturn for
// the file, on a service address of the host; each test makes its own
// namespace with its own nftables rules and its own Chromium in it, and
// removes them.
//
// - ICE-TCP: the namespace drops all outbound UDP; its page joins a 3-person
//   call, decodes everyone and is decoded; its selected candidate pair is TCP.
// - TURN over TCP, TLS and UDP: the namespace reaches only the web port and
//   one coturn port; the page's selected pair has a relay local candidate of
//   that transport; it decodes everyone and is decoded; a keyless observer
//   behind the same TURN-only firewall sees only DAVE frames.
// - ICE restart: the page's namespace is cut off for 3 s and restored; media
//   decodes again within 3 s of the restore, on the same RTCPeerConnection
//   and SFU session (the SFU API still answers for it, with the same tracks),
//   with new ICE credentials (a restart happened) and no MLS rejoin (same
//   participant, epoch, safety number).

import { describe, it, before } from 'node:test';
import assert from 'node:assert/strict';
import {
  assertDecodes, joinPage, remoteTrack, safetyNumber, sameSafetyNumber, stats, waitFor,
} from '../harness.mjs';
import { netSuite, netSupport, selectedPair, serverFlags } from './netns.mjs';

const support = netSupport();
if (!support.ok) console.log(`# net: SKIPPED: ${support.reason}`);

const fmtCand = (c) => (c ? `${c.candidateType}/${c.protocol}${c.relayProtocol ? ` via ${c.relayProtocol}` : ''}${c.tcpType ? ` ${c.tcpType}` : ''} ${c.address}:${c.port}` : 'none');
const fmtPair = (p) => (p ? `${fmtCand(p.local)} -> ${fmtCand(p.remote)} (${p.pair.state})` : 'none');

/** Every page of `viewers` decodes every other page of `all`. */
async function everyoneDecodes(viewers, all) {
  for (const viewer of viewers) {
    for (const other of all) {
      if (other !== viewer && !other.observer) await assertDecodes(viewer, other.participantId);
    }
  }
}

/** Waits until the page's selected pair satisfies `ok` (ICE may switch pairs early on). */
async function settledPair(page, what, ok) {
  let last = null;
  try {
    return await waitFor(`${page.label}: selected pair ${what}`, async () => {
      last = await selectedPair(page);
      return last && last.pair.state === 'succeeded' && ok(last) ? last : null;
    }, { timeout: 10000 });
  } catch (err) {
    err.message += `\nlast selected pair: ${fmtPair(last)}`;
    throw err;
  }
}

describe('calls on hostile networks (Chromium in network namespaces)', { timeout: 900000, skip: support.ok ? false : support.reason }, () => {
  const pages = {};
  const env = netSuite({ coturn: true, serverArgs: (turn) => serverFlags(turn), pages });
  const { check } = env;

  it('ICE-TCP: a page whose namespace drops all outbound UDP joins a 3-person call, decodes everyone, and its selected pair is TCP', check(async () => {
    const ns = env.namespace('tcp');
    try {
      ns.dropUdp();
      const nsBrowser = await env.nsBrowser(ns);
      const room = `icetcp-${Date.now()}`;
      pages.alice = await joinPage(env.browser, env.servers.base, { room, name: 'Alice' });
      pages.bob = await joinPage(env.browser, env.servers.base, { room, name: 'Bob' });
      pages.carol = await joinPage(nsBrowser, env.servers.serviceBase, { room, name: 'Carol-noUDP' });
      const trio = [pages.alice, pages.bob, pages.carol];
      await sameSafetyNumber(trio);
      await everyoneDecodes(trio, trio);
      const carol = await settledPair(pages.carol, 'is TCP, not relayed', (p) => p.local.protocol === 'tcp' && p.local.candidateType !== 'relay');
      const alice = await selectedPair(pages.alice);
      console.log(`# net ice-tcp: Carol (UDP dropped) ${fmtPair(carol)}; Alice (host) ${fmtPair(alice)}`);
      // Chromium's active TCP candidate shows as host or prflx; the SFU's side is its passive candidate.
      assert.equal(carol.remote.protocol, 'tcp', fmtPair(carol));
      assert.equal(carol.remote.tcpType, 'passive', fmtPair(carol));
      assert.equal(carol.remote.address, env.serviceIp, fmtPair(carol));
      assert.ok(carol.pair.bytesReceived > 10000, `media flows over the TCP pair: ${JSON.stringify(carol.pair)}`);
      // The control: a page without the firewall stays on UDP (ICE-TCP ranks below UDP).
      assert.equal(alice.local.protocol, 'udp', fmtPair(alice));
      const s = await stats(pages.carol);
      for (const other of [pages.alice, pages.bob]) {
        const v = s.remote.find((r) => r.participantId === other.participantId && r.kind === 'video');
        assert.ok(v && v.decrypted > 0 && v.framesDecoded > 0, `Carol decrypts ${other.label}: ${JSON.stringify(v)}`);
      }
      assert.equal(env.servers.panicked().length, 0, env.servers.panicked().join('\n'));
    } finally {
      await env.closePages(['alice', 'bob', 'carol']);
      await ns.destroy();
    }
  }));

  describe('TURN: a page that reaches only coturn joins through a relay', () => {
    const room = `turn-${Date.now()}`;
    before(async () => {
      pages.tAlice = await joinPage(env.browser, env.servers.base, { room, name: 'Alice' });
      pages.tBob = await joinPage(env.browser, env.servers.base, { room, name: 'Bob' });
    });

    const variants = [
      { transport: 'tcp', allow: (t, web) => ({ tcp: [web, t.port] }), observer: true },
      { transport: 'tls', allow: (t, web) => ({ tcp: [web, t.tlsPort] }) },
      { transport: 'udp', allow: (t, web) => ({ tcp: [web], udp: [t.port] }) },
    ];
    for (const v of variants) {
      it(`TURN/${v.transport.toUpperCase()}: relay candidate in the selected pair, decodes everyone${v.observer ? '; a keyless observer sees only DAVE frames' : ''}`, check(async () => {
        const ns = env.namespace(`turn${v.transport}`);
        const mine = [`carol-${v.transport}`, `observer-${v.transport}`];
        try {
          ns.onlyTo(env.serviceIp, v.allow(env.turn, env.servers.webPort));
          const nsBrowser = await env.nsBrowser(ns);
          const carol = await joinPage(nsBrowser, env.servers.serviceBase, { room, name: `Carol-turn${v.transport}` });
          pages[mine[0]] = carol;
          const all = [pages.tAlice, pages.tBob, carol];
          await sameSafetyNumber(all);
          await everyoneDecodes(all, all);
          const pair = await settledPair(carol, `is a relay over ${v.transport}`, (p) => p.local.candidateType === 'relay' && p.local.relayProtocol === v.transport);
          console.log(`# net turn/${v.transport}: Carol ${fmtPair(pair)}`);
          assert.equal(pair.remote.address, env.serviceIp, fmtPair(pair));
          assert.ok(pair.pair.bytesReceived > 10000, `media flows over the relay: ${JSON.stringify(pair.pair)}`);
          // The page used the short-lived TURN credentials the coordinator handed it (REST API
          // username `expiry:...`, at most 24 h ahead), and coturn allocated with them.
          const servers = await carol.evaluate(() => window.satsuma.call.sfu.pc.getConfiguration().iceServers);
          const cred = servers.find((s) => [s.urls].flat().some((u) => /^turns?:/.test(u)));
          assert.ok(cred?.username && cred.credential, `TURN credentials in the page's iceServers: ${JSON.stringify(servers)}`);
          const expiry = Number(cred.username.split(':')[0]);
          const ttl = expiry - Date.now() / 1000;
          assert.ok(ttl > 0 && ttl <= 86400, `TURN credential lifetime ${ttl} s (TTL <= 24 h)`);
          const allocated = env.turn.logs.some((l) => l.includes(`user <${cred.username}>: incoming packet ALLOCATE processed, success`));
          assert.ok(allocated, `coturn allocated a relay for ${cred.username}`);
          if (v.observer) {
            const observer = await joinPage(nsBrowser, env.servers.serviceBase, { room, name: 'Observer', params: { keyless: '1', send: '0' } });
            observer.observer = true;
            pages[mine[1]] = observer;
            const oPair = await settledPair(observer, 'is a relay', (p) => p.local.candidateType === 'relay');
            console.log(`# net turn/${v.transport}: keyless observer ${fmtPair(oPair)}`);
            for (const from of [carol, pages.tAlice]) {
              const t = await waitFor(`the observer to receive 40 encrypted frames from ${from.label}`, async () => {
                const r = await remoteTrack(observer, from.participantId, 'video');
                return r && r.framesReceived > 40 && r.protocolFrames > 40 ? r : null;
              }, { timeout: 45000 });
              // As in call.test.mjs: an encrypted VP8 keyframe may decode as noise now and then; nothing more.
              assert.ok(t.framesDecoded <= Math.max(3, t.framesReceived * 0.1), `the observer decoded ciphertext of ${from.label}: ${JSON.stringify(t)}`);
              assert.deepEqual(t.lastBytes, [0xfa, 0xfa], 'frames end in the DAVE magic');
              assert.ok(t.protocolFrames >= t.workerFrames * 0.9, `only DAVE protocol frames: ${JSON.stringify(t)}`);
            }
            assert.equal(await safetyNumber(observer), null, 'the observer holds no keys');
          }
          assert.equal(env.servers.panicked().length, 0, env.servers.panicked().join('\n'));
        } finally {
          await env.closePages(mine);
          await ns.destroy();
        }
      }));
    }

    it('the host pages close', async () => {
      await env.closePages(['tAlice', 'tBob']);
    });
  });

  it('ICE restart: a path blocked for 3 s decodes again within 3 s of restoring, on the same SFU session, with no MLS rejoin', check(async () => {
    const ns = env.namespace('restart');
    try {
      const nsBrowser = await env.nsBrowser(ns);
      const room = `restart-${Date.now()}`;
      pages.rAlice = await joinPage(env.browser, env.servers.base, { room, name: 'Alice' });
      pages.rCarol = await joinPage(nsBrowser, env.servers.serviceBase, { room, name: 'Carol-roaming' });
      const alice = pages.rAlice;
      const carol = pages.rCarol;
      const number = await sameSafetyNumber([alice, carol]);
      await assertDecodes(carol, alice.participantId);
      await assertDecodes(alice, carol.participantId);

      const identity = (page) => page.evaluate(() => {
        const call = window.satsuma.call;
        const sdp = call.sfu.pc.localDescription?.sdp ?? '';
        return {
          me: call.me, sessionId: call.sfu.sessionId, samePc: window.__netPc === call.sfu.pc,
          ufrag: sdp.match(/a=ice-ufrag:(\S+)/)?.[1] ?? null, epoch: call.e2ee.status?.epoch ?? null,
          resets: call.e2ee.status?.resets ?? null, members: (call.e2ee.status?.members ?? []).map((m) => m.id).sort(),
          mediaEpoch: call.mediaEpoch,
        };
      });
      await carol.evaluate(() => {
        const pc = window.satsuma.call.sfu.pc;
        window.__netPc = pc;
        const t0 = performance.now();
        window.__netStates = [];
        pc.addEventListener('iceconnectionstatechange', () => window.__netStates.push(`${Math.round(performance.now() - t0)}ms ${pc.iceConnectionState}`));
      });
      const sfuSession = async (id) => {
        const res = await fetch(`http://${env.servers.sfuApi}/v1/apps/satsuma/sessions/${id}`, { headers: { Authorization: `Bearer ${env.servers.appSecret}` } });
        return { status: res.status, body: await res.json().catch(() => null) };
      };
      const before = { carol: await identity(carol), alice: await identity(alice) };
      const sessionBefore = await sfuSession(before.carol.sessionId);
      assert.equal(sessionBefore.status, 200, JSON.stringify(sessionBefore));

      const blockedAt = Date.now();
      ns.block();
      await new Promise((r) => setTimeout(r, 3000)); // the outage itself, not an assertion
      const frozen = {
        carol: (await remoteTrack(carol, alice.participantId, 'video')).framesDecoded,
        alice: (await remoteTrack(alice, carol.participantId, 'video')).framesDecoded,
      };
      ns.unblock();
      const restoredAt = Date.now();
      const back = {};
      await waitFor('media to decode again in both directions after the restore', async () => {
        if (!back.carol) {
          const t = await remoteTrack(carol, alice.participantId, 'video');
          if (t && t.framesDecoded > frozen.carol + 2) back.carol = Date.now() - restoredAt;
        }
        if (!back.alice) {
          const t = await remoteTrack(alice, carol.participantId, 'video');
          if (t && t.framesDecoded > frozen.alice + 2) back.alice = Date.now() - restoredAt;
        }
        return back.carol && back.alice;
      }, { timeout: 20000, interval: 100 });
      const states = await carol.evaluate(() => window.__netStates);
      const afterIds = { carol: await identity(carol), alice: await identity(alice) };
      const sessionAfter = await sfuSession(afterIds.carol.sessionId);
      console.log(`# net ice-restart: blocked 3.0 s (${restoredAt - blockedAt} ms); decoding again ${back.carol} ms (Carol <- Alice) and ${back.alice} ms (Alice <- Carol) after the restore; Carol's ICE states: ${states.join(', ')}; ufrag ${before.carol.ufrag} -> ${afterIds.carol.ufrag}; session ${before.carol.sessionId} -> ${afterIds.carol.sessionId}`);
      assert.ok(states.some((s) => /disconnected|failed/.test(s)), `the block really cut the path off: ${states.join(', ')}`);
      assert.ok(Math.max(back.carol, back.alice) <= 3000, `media back ${JSON.stringify(back)} ms after the restore (goal: within 3 s)`);
      assert.equal(afterIds.carol.sessionId, before.carol.sessionId, 'the same SFU session');
      assert.ok(afterIds.carol.samePc, 'the same RTCPeerConnection (not a new media session)');
      assert.equal(afterIds.carol.mediaEpoch, before.carol.mediaEpoch, 'the page did not start its media over');
      assert.notEqual(afterIds.carol.ufrag, before.carol.ufrag, 'new ICE credentials: an ICE restart happened');
      assert.equal(sessionAfter.status, 200, JSON.stringify(sessionAfter));
      assert.deepEqual(sessionAfter.body?.tracks?.map((t) => t.trackName).sort(), sessionBefore.body?.tracks?.map((t) => t.trackName).sort(), 'the SFU session keeps its tracks');
      for (const who of ['carol', 'alice']) {
        assert.equal(afterIds[who].me, before[who].me, `${who}: the same participant (no rejoin)`);
        assert.equal(afterIds[who].epoch, before[who].epoch, `${who}: the same MLS epoch (no commit, no rejoin)`);
        assert.deepEqual(afterIds[who].members, before[who].members, `${who}: the same MLS members`);
        assert.equal(afterIds[who].resets, before[who].resets, `${who}: no E2EE reset`);
      }
      assert.equal(await sameSafetyNumber([alice, carol]), number, 'the same safety number');
      assert.equal(env.servers.panicked().length, 0, env.servers.panicked().join('\n'));
    } finally {
      await env.closePages(['rAlice', 'rCarol']);
      await ns.destroy();
    }
  }));
});
