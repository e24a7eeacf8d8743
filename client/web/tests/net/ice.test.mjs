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
// - ICE restart: the page's namespace is cut off (every packet, signaling
//   included) for 3 s, then for 9 s, and restored; each time media decodes
//   again within 3 s of the restore, on the same RTCPeerConnection and SFU
//   session (the SFU API still answers for it, with the same tracks), with
//   new ICE credentials and a restart the page counted, and no MLS rejoin
//   (same participant, epoch, members, safety number). The 9 s case is there
//   because Chromium reports `disconnected` only about 7 s into an outage of
//   this kind (measured), so the client's "2 s disconnected" trigger cannot
//   fire during a 3 s one.

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

  it('ICE-TCP: a page whose namespace drops all outbound UDP (and TCP to coturn) joins a 3-person call, decodes everyone, and its selected pair is TCP', check(async () => {
    const ns = env.namespace('tcp');
    try {
      ns.dropUdp({ noTurn: env.turn });
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

  describe('ICE restart: a page whose path is cut off and restored', () => {
    const room = `restart-${Date.now()}`;
    const r = { ns: null, number: null };
    before(async () => {
      r.ns = env.namespace('restart');
      const nsBrowser = await env.nsBrowser(r.ns);
      pages.rAlice = await joinPage(env.browser, env.servers.base, { room, name: 'Alice' });
      pages.rCarol = await joinPage(nsBrowser, env.servers.serviceBase, { room, name: 'Carol-roaming' });
      r.number = await sameSafetyNumber([pages.rAlice, pages.rCarol]);
      await assertDecodes(pages.rCarol, pages.rAlice.participantId);
      await assertDecodes(pages.rAlice, pages.rCarol.participantId);
    });

    /** Who the page is to the SFU, the coordinator and MLS, and its ICE credentials. */
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
    const sfuSession = async (id) => {
      const res = await fetch(`http://${env.servers.sfuApi}/v1/apps/satsuma/sessions/${id}`, { headers: { Authorization: `Bearer ${env.servers.appSecret}` } });
      return { status: res.status, body: await res.json().catch(() => null) };
    };

    /**
     * Cuts Carol's namespace off for `ms` (every packet in and out, signaling included), restores
     * it, and checks: media decodes again in both directions within 3 s of the restore, through an
     * ICE restart (new ICE credentials, the page counted a successful restart) on the same
     * RTCPeerConnection and SFU session (the SFU API answers for it with the same tracks), with no
     * MLS rejoin (same participants, epoch, members, safety number, no E2EE reset).
     */
    async function outage(ms) {
      const alice = pages.rAlice;
      const carol = pages.rCarol;
      await carol.evaluate(() => {
        const pc = window.satsuma.call.sfu.pc;
        window.__netPc = pc;
        window.__netStates = [];
        window.__netT0 = performance.now();
        if (!window.__netWatching) {
          window.__netWatching = true;
          pc.addEventListener('iceconnectionstatechange', () => window.__netStates.push(`${Math.round(performance.now() - window.__netT0)}ms ${pc.iceConnectionState}`));
        }
      });
      const before = { carol: await identity(carol), alice: await identity(alice), stats: await stats(carol) };
      const sessionBefore = await sfuSession(before.carol.sessionId);
      assert.equal(sessionBefore.status, 200, JSON.stringify(sessionBefore));

      const blockedAt = Date.now();
      r.ns.block();
      await new Promise((res) => setTimeout(res, ms)); // the outage itself, not an assertion
      const frozen = {
        carol: (await remoteTrack(carol, alice.participantId, 'video')).framesDecoded,
        alice: (await remoteTrack(alice, carol.participantId, 'video')).framesDecoded,
      };
      r.ns.unblock();
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
      // Where the time after the restore goes: keyframes asked for (PLI) and decoded.
      const kf = async (page, from) => {
        const t = await remoteTrack(page, from.participantId, 'video');
        return `${t?.pliCount ?? '?'} PLI, ${t?.keyFramesDecoded ?? '?'} keyframes`;
      };
      const keyframes = `Carol <- Alice ${await kf(carol, alice)}, Alice <- Carol ${await kf(alice, carol)} (call totals)`;
      const after = { carol: await identity(carol), alice: await identity(alice), stats: await stats(carol) };
      const sessionAfter = await sfuSession(after.carol.sessionId);
      const restarts = (x) => x.stats.iceRestarts ?? {};
      console.log(`# net ice-restart ${ms / 1000} s outage: blocked ${restoredAt - blockedAt} ms; decoding again ${back.carol} ms (Carol <- Alice) and ${back.alice} ms (Alice <- Carol) after the restore; Carol's ICE states since the block: ${states.join(', ') || 'none (stayed connected)'}; ufrag ${before.carol.ufrag} -> ${after.carol.ufrag}; restarts succeeded ${restarts(before).succeeded ?? '?'} -> ${restarts(after).succeeded ?? '?'} (${JSON.stringify(restarts(after).last ?? null)}); session ${before.carol.sessionId} -> ${after.carol.sessionId}; ${keyframes}`);
      assert.ok(Math.max(back.carol, back.alice) <= 3000, `media back ${JSON.stringify(back)} ms after the restore (goal: within 3 s)`);
      assert.equal(after.carol.sessionId, before.carol.sessionId, 'the same SFU session');
      assert.ok(after.carol.samePc, 'the same RTCPeerConnection (not a new media session)');
      assert.equal(after.carol.mediaEpoch, before.carol.mediaEpoch, 'the page did not start its media over');
      assert.equal(after.stats.sfuSession, before.carol.sessionId, `the page reports SFU session ${after.stats.sfuSession}`);
      assert.equal(after.stats.mediaSessions, before.stats.mediaSessions, 'no new media session');
      assert.equal(sessionAfter.status, 200, JSON.stringify(sessionAfter));
      assert.deepEqual(sessionAfter.body?.tracks?.map((t) => t.trackName).sort(), sessionBefore.body?.tracks?.map((t) => t.trackName).sort(), 'the SFU session keeps its tracks');
      for (const who of ['carol', 'alice']) {
        assert.equal(after[who].me, before[who].me, `${who}: the same participant (no rejoin)`);
        assert.equal(after[who].epoch, before[who].epoch, `${who}: the same MLS epoch (no commit, no rejoin)`);
        assert.deepEqual(after[who].members, before[who].members, `${who}: the same MLS members`);
        assert.equal(after[who].resets, before[who].resets, `${who}: no E2EE reset`);
      }
      assert.equal(await sameSafetyNumber([alice, carol]), r.number, 'the same safety number');
      // Last, so that the checks above still report when only this fails: it was an ICE restart.
      assert.notEqual(after.carol.ufrag, before.carol.ufrag, `new ICE credentials, i.e. an ICE restart (ICE states: ${states.join(', ') || 'none'})`);
      assert.ok((restarts(after).succeeded ?? 0) > (restarts(before).succeeded ?? 0), `the page counted a successful ICE restart: ${JSON.stringify(restarts(after))}`);
      assert.equal(env.servers.panicked().length, 0, env.servers.panicked().join('\n'));
    }

    it('a path blocked for 3 s (the issue\'s case): media decodes again within 3 s of restoring, via an ICE restart on the same SFU session, no MLS rejoin', check(() => outage(3000)));

    it('a path blocked for 9 s (Chromium itself reports the outage): the same', check(() => outage(9000)));

    it('the pages close', async () => {
      await env.closePages(['rAlice', 'rCarol']);
      await r.ns?.destroy();
    });
  });
});
