// Network-namespace support for the hostile-network browser tests
// (client/web/tests/net/*.test.mjs, run by scripts/test-network.sh).
//
// Everything stays on this machine: each test creates its own namespace
// (`ip netns add sat-<pid>-<tag>`) joined to the host by a veth pair with
// addresses from 10.213.0.0/16 (a /24 picked among the ones no interface uses),
// puts nftables rules in it, and runs Chromium inside it through a wrapper
// script (`ip netns exec <ns> chromium "$@"`: Playwright's pipe fds are
// inherited). The servers (the all-in-one `satsuma` and coturn) listen on a
// "service address" (another 10.213.x.1) on a dummy interface (or a veth pair
// when the kernel has no dummy driver) that lives as long as the test file: a
// page in any namespace reaches it through its default route to the host end
// of its veth, and pages of the host's own Chromium reach it as a local address.
//
// Cleanup: every namespace, interface, process and temporary directory is
// registered and removed in the suite's `after`, on process exit and on
// SIGINT/SIGTERM; leftovers of dead runs (names carrying a pid that no longer
// exists) are swept before a run starts.

import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import dgram from 'node:dgram';
import os from 'node:os';
import path from 'node:path';
import { after, before } from 'node:test';
import { chromium } from 'playwright-core';
import { CHROMIUM_ARGS, artifacts, binDir, dumpConsole, launchBrowser, leave, startProcess, webDir } from '../harness.mjs';

const PID = process.pid;
const PREFIX = `sat-${PID}-`;
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';

function sh(cmd, args, { input, allowFail = false } = {}) {
  try {
    return execFileSync(cmd, args, { input, stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] }).toString();
  } catch (err) {
    if (allowFail) return null;
    const stderr = err.stderr?.toString().trim();
    throw new Error(`${cmd} ${args.join(' ')} failed: ${stderr || err.message}`);
  }
}

function which(cmd) {
  return sh('sh', ['-c', `command -v ${cmd}`], { allowFail: true })?.trim() || null;
}

// ---- cleanup registry ------------------------------------------------------

const cleanups = new Map(); // key -> synchronous cleanup
let exitHooked = false;

function register(key, fn) {
  cleanups.set(key, fn);
  if (!exitHooked) {
    exitHooked = true;
    process.on('exit', cleanupAll);
    for (const sig of ['SIGINT', 'SIGTERM']) {
      process.once(sig, () => {
        cleanupAll();
        process.exit(128 + (sig === 'SIGINT' ? 2 : 15));
      });
    }
  }
}

function unregister(key) {
  const fn = cleanups.get(key);
  cleanups.delete(key);
  if (fn) {
    try { fn(); } catch { /* best effort */ }
  }
}

/** Removes everything this process created (reverse order of creation). */
export function cleanupAll() {
  for (const key of [...cleanups.keys()].reverse()) unregister(key);
}

/** Deletes namespaces and interfaces of earlier runs whose process is gone. */
function sweepStale() {
  const alive = (pid) => {
    try { process.kill(pid, 0); return true; } catch (err) { return err.code === 'EPERM'; }
  };
  for (const line of (sh('ip', ['netns', 'list'], { allowFail: true }) ?? '').split('\n')) {
    const m = line.match(/^(sat-(\d+)-\S+)/);
    if (m && Number(m[2]) !== PID && !alive(Number(m[2]))) sh('ip', ['netns', 'del', m[1]], { allowFail: true });
  }
  for (const line of (sh('ip', ['-o', 'link', 'show'], { allowFail: true }) ?? '').split('\n')) {
    const m = line.match(/^\d+:\s+(sat(\d+)[a-z]\d*)[@:]/);
    if (m && Number(m[2]) !== PID && !alive(Number(m[2]))) sh('ip', ['link', 'del', m[1]], { allowFail: true });
  }
}

// ---- support check ---------------------------------------------------------

let supportCache = null;

/**
 * Whether this machine lets the tests build namespaces: `{ok, reason}`. Needs
 * root, `ip`, `nft`, `turnserver`, `openssl`, `unshare -n`, `ip netns add`,
 * a veth pair and an nftables table inside a namespace.
 */
export function netSupport() {
  if (supportCache) return supportCache;
  const no = (reason) => (supportCache = { ok: false, reason });
  if (process.getuid?.() !== 0) return no('not root: ip netns needs CAP_SYS_ADMIN and CAP_NET_ADMIN');
  for (const tool of ['ip', 'nft', 'turnserver', 'openssl', 'unshare']) {
    if (!which(tool)) return no(`${tool} is not installed (scripts/test-network.sh installs it)`);
  }
  if (sh('unshare', ['-n', 'true'], { allowFail: true }) === null) return no('the kernel refuses `unshare -n` (no network namespaces)');
  sweepStale();
  const probe = `${PREFIX}probe`;
  try {
    sh('ip', ['netns', 'add', probe]);
  } catch (err) {
    return no(`ip netns add refused: ${err.message}`);
  }
  try {
    sh('ip', ['netns', 'exec', probe, 'ip', 'link', 'add', 'p0', 'type', 'veth', 'peer', 'name', 'p1']);
    sh('ip', ['netns', 'exec', probe, 'nft', 'add', 'table', 'inet', 'probe']);
  } catch (err) {
    return no(`veth or nftables inside a namespace refused: ${err.message}`);
  } finally {
    sh('ip', ['netns', 'del', probe], { allowFail: true });
  }
  return (supportCache = { ok: true, reason: null });
}

/**
 * Whether `Netns.shape()` can work here: `tc` is installed and the kernel has
 * the tbf qdisc and nftables' `numgen` (tried on a veth pair in a throwaway
 * namespace). `{ok, reason}`.
 */
export function shapeSupport() {
  const base = netSupport();
  if (!base.ok) return base;
  if (!which('tc')) return { ok: false, reason: 'tc is not installed (iproute2)' };
  const probe = `${PREFIX}shprobe`;
  try {
    sh('ip', ['netns', 'add', probe]);
    sh('ip', ['netns', 'exec', probe, 'ip', 'link', 'add', 'p0', 'type', 'veth', 'peer', 'name', 'p1']);
    sh('ip', ['netns', 'exec', probe, 'tc', 'qdisc', 'add', 'dev', 'p0', 'root', 'tbf', 'rate', '300kbit', 'burst', '5kb', 'latency', '150ms']);
    sh('ip', ['netns', 'exec', probe, 'nft', '-f', '-'], { input: `table inet probe {
      chain in { type filter hook input priority 0; policy accept; meta l4proto udp numgen random mod 100 < 3 drop; }
    }` });
    return { ok: true, reason: null };
  } catch (err) {
    return { ok: false, reason: `tbf or nftables numgen refused: ${err.message}` };
  } finally {
    sh('ip', ['netns', 'del', probe], { allowFail: true });
  }
}

// ---- addresses ---------------------------------------------------------------

const usedOctets = new Set();

/** A third octet X such that no interface has an address in 10.213.X.0/24. */
function pickSubnet() {
  const inUse = new Set();
  for (const m of (sh('ip', ['-4', '-o', 'addr', 'show']) ?? '').matchAll(/inet 10\.213\.(\d+)\./g)) inUse.add(Number(m[1]));
  const start = (PID % 200) + 1;
  for (let i = 0; i < 250; i++) {
    const x = ((start + i - 1) % 250) + 1;
    if (!inUse.has(x) && !usedOctets.has(x)) {
      usedOctets.add(x);
      return x;
    }
  }
  throw new Error('no free 10.213.X.0/24 subnet');
}

/**
 * The service address: 10.213.X.1/32 on a dummy interface `sat<pid>s` (or a
 * veth pair when there is no dummy driver). Returns `{ip, remove()}`.
 */
export function createServiceAddress() {
  const x = pickSubnet();
  const ip = `10.213.${x}.1`;
  const dev = `sat${PID}s`;
  const key = `link:${dev}`;
  register(key, () => sh('ip', ['link', 'del', dev], { allowFail: true }));
  if (sh('ip', ['link', 'add', dev, 'type', 'dummy'], { allowFail: true }) === null) {
    sh('ip', ['link', 'add', dev, 'type', 'veth', 'peer', 'name', `sat${PID}t`]);
    sh('ip', ['link', 'set', `sat${PID}t`, 'up']);
  }
  sh('ip', ['addr', 'add', `${ip}/32`, 'dev', dev]);
  sh('ip', ['link', 'set', dev, 'up']);
  return { ip, dev, remove: () => unregister(key) };
}

// ---- namespaces --------------------------------------------------------------

let nsCount = 0;

/**
 * A namespace `sat-<pid>-<tag>` with a veth pair to the host: host end
 * 10.213.X.1/24, namespace end 10.213.X.2/24, `lo` up, default route via the
 * host end, and an nftables table `inet sat` with empty `out` and `in` filter
 * chains (policy accept).
 */
export class Netns {
  constructor(tag) {
    const n = ++nsCount;
    this.name = `${PREFIX}${tag}`;
    this.hostIf = `sat${PID}h${n}`;
    this.nsIf = `sat${PID}n${n}`;
    const x = pickSubnet();
    this.hostIp = `10.213.${x}.1`;
    this.ip = `10.213.${x}.2`;
    this.key = `netns:${this.name}`;
    this.browsers = [];
    this.tmp = null;
    register(this.key, () => this.#destroySync());
    sh('ip', ['netns', 'add', this.name]);
    sh('ip', ['link', 'add', this.hostIf, 'type', 'veth', 'peer', 'name', this.nsIf]);
    sh('ip', ['link', 'set', this.nsIf, 'netns', this.name]);
    sh('ip', ['addr', 'add', `${this.hostIp}/24`, 'dev', this.hostIf]);
    sh('ip', ['link', 'set', this.hostIf, 'up']);
    this.exec('ip', ['link', 'set', 'lo', 'up']);
    this.exec('ip', ['addr', 'add', `${this.ip}/24`, 'dev', this.nsIf]);
    this.exec('ip', ['link', 'set', this.nsIf, 'up']);
    this.exec('ip', ['route', 'add', 'default', 'via', this.hostIp]);
    this.nft(`table inet sat {
      chain out { type filter hook output priority 0; policy accept; }
      chain in { type filter hook input priority 0; policy accept; }
    }`);
  }

  /** Runs a command inside the namespace; returns its stdout. */
  exec(cmd, args, opts) {
    return sh('ip', ['netns', 'exec', this.name, cmd, ...args], opts);
  }

  /** Loads an nftables script inside the namespace. */
  nft(script) {
    this.exec('nft', ['-f', '-'], { input: script });
  }

  /**
   * Drops every outbound UDP datagram (except on `lo`). With `noTurn` (coturn's
   * `{ip, port, tlsPort}`), TCP to coturn is dropped too, so that ICE can only
   * use the SFU's TCP candidates: with TURN reachable over TCP, Chromium may
   * (legitimately) pick a TURN/TCP or TURN/TLS relay instead of ICE-TCP.
   */
  dropUdp({ noTurn = null } = {}) {
    const rules = ['add rule inet sat out oif "lo" accept', 'add rule inet sat out meta l4proto udp drop'];
    if (noTurn) rules.push(`add rule inet sat out ip daddr ${noTurn.ip} tcp dport { ${noTurn.port}, ${noTurn.tlsPort} } drop`);
    this.nft(rules.join('\n'));
  }

  /**
   * Outbound traffic is dropped except on `lo` and to `ip` on the given TCP and
   * UDP ports (the web server and coturn's ports).
   */
  onlyTo(ip, { tcp = [], udp = [] }) {
    const rules = ['add rule inet sat out oif "lo" accept'];
    if (tcp.length) rules.push(`add rule inet sat out ip daddr ${ip} tcp dport { ${tcp.join(', ')} } accept`);
    if (udp.length) rules.push(`add rule inet sat out ip daddr ${ip} udp dport { ${udp.join(', ')} } accept`);
    rules.push('add rule inet sat out drop');
    this.nft(rules.join('\n'));
  }

  /**
   * Cuts the namespace off: every packet in and out (except `lo`) is dropped,
   * but for TCP to and from `keepTcp` ports if given.
   */
  block({ keepTcp = [] } = {}) {
    const rules = [];
    if (keepTcp.length) {
      rules.push(`add rule inet sat out tcp dport { ${keepTcp.join(', ')} } accept`);
      rules.push(`add rule inet sat in tcp sport { ${keepTcp.join(', ')} } accept`);
    }
    rules.push('add rule inet sat out oif != "lo" drop', 'add rule inet sat in iif != "lo" drop');
    this.nft(rules.join('\n'));
  }

  /**
   * Shapes what the page in the namespace receives: a `tc` token bucket (tbf)
   * at `rateKbit` on the host end of the veth (the namespace's downlink; its
   * uplink is left alone), queueing at most `latencyMs`, and `lossPercent` of
   * the inbound UDP datagrams dropped at random by an nftables `numgen random`
   * rule in the namespace (the kernel has no netem). `unshape()` lifts both.
   */
  shape({ rateKbit, lossPercent = 0, burstKb = 5, latencyMs = 150 }) {
    sh('tc', ['qdisc', 'replace', 'dev', this.hostIf, 'root', 'tbf', 'rate', `${rateKbit}kbit`, 'burst', `${burstKb}kb`, 'latency', `${latencyMs}ms`]);
    if (lossPercent > 0) {
      this.nft(`add chain inet sat shaped { type filter hook input priority -10; policy accept; }
add rule inet sat shaped iif != "lo" meta l4proto udp numgen random mod 100 < ${lossPercent} drop`);
    }
  }

  /** Lifts `shape()`: the tbf qdisc and the random-drop chain. */
  unshape() {
    sh('tc', ['qdisc', 'del', 'dev', this.hostIf, 'root'], { allowFail: true });
    this.exec('nft', ['delete', 'chain', 'inet', 'sat', 'shaped'], { allowFail: true });
  }

  /** What `tc` says about the downlink's qdisc (for reports). */
  qdisc() {
    return sh('tc', ['-s', 'qdisc', 'show', 'dev', this.hostIf], { allowFail: true })?.trim() ?? '';
  }

  /** Removes every rule (`nft flush chain`). */
  unblock() {
    this.nft('flush chain inet sat out\nflush chain inet sat in');
  }

  /** The namespace's rules as nft lists them (for failure messages). */
  rules() {
    return this.exec('nft', ['list', 'table', 'inet', 'sat'], { allowFail: true }) ?? '';
  }

  /**
   * Launches headless Chromium inside the namespace: the harness's flags, plus
   * `--unsafely-treat-insecure-origin-as-secure` for `secureOrigins` (pages
   * loaded from http://10.213.X.1:port are not a secure context otherwise),
   * plus `extraArgs`.
   */
  async launchBrowser({ secureOrigins = [], extraArgs = [] } = {}) {
    this.tmp ??= mkdtempSync(path.join(os.tmpdir(), `${this.name}-`));
    const wrapper = path.join(this.tmp, 'chromium-in-netns');
    writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec '${this.name}' '${CHROMIUM}' "$@"\n`);
    chmodSync(wrapper, 0o755);
    const args = [...CHROMIUM_ARGS, ...extraArgs];
    if (secureOrigins.length) args.push(`--unsafely-treat-insecure-origin-as-secure=${secureOrigins.join(',')}`);
    const browser = await chromium.launch({ executablePath: wrapper, args, headless: true });
    this.browsers.push(browser);
    return browser;
  }

  /** Closes its browsers, deletes the namespace (and so its veth pair). */
  async destroy() {
    for (const b of this.browsers) await b.close().catch(() => {});
    this.browsers = [];
    unregister(this.key);
  }

  #destroySync() {
    // Chromium processes inside are killed by Playwright on close or by its own exit handler.
    sh('ip', ['netns', 'del', this.name], { allowFail: true });
    sh('ip', ['link', 'del', this.hostIf], { allowFail: true });
    if (this.tmp) rmSync(this.tmp, { recursive: true, force: true });
  }
}

// ---- ports -------------------------------------------------------------------

/** A port free for TCP and UDP on `ip` (and, if `pair`, port+1 as well). */
export async function freePort(ip, { pair = false } = {}) {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = await new Promise((resolve, reject) => {
      const s = net.createServer();
      s.on('error', reject);
      s.listen(0, ip, () => {
        const p = s.address().port;
        s.close(() => resolve(p));
      });
    });
    const ports = pair ? [port, port + 1] : [port];
    let ok = port < 65000;
    for (const p of ports) {
      if (!ok) break;
      ok = (await canBind('tcp', ip, p)) && (await canBind('udp', ip, p));
    }
    if (ok) return port;
  }
  throw new Error(`no free port on ${ip}`);
}

function canBind(proto, ip, port) {
  return new Promise((resolve) => {
    if (proto === 'tcp') {
      const s = net.createServer();
      s.once('error', () => resolve(false));
      s.listen(port, ip, () => s.close(() => resolve(true)));
    } else {
      const s = dgram.createSocket('udp4');
      s.once('error', () => { s.close(); resolve(false); });
      s.bind(port, ip, () => s.close(() => resolve(true)));
    }
  });
}

function waitTcp(ip, port, timeout = 15000) {
  const end = Date.now() + timeout;
  return new Promise((resolve, reject) => {
    const attempt = () => {
      const s = net.connect(port, ip);
      s.once('connect', () => { s.destroy(); resolve(); });
      s.once('error', () => {
        s.destroy();
        if (Date.now() > end) reject(new Error(`nothing listens on ${ip}:${port}`));
        else setTimeout(attempt, 100);
      });
    };
    attempt();
  });
}

// ---- coturn ------------------------------------------------------------------

/**
 * Runs coturn (`turnserver -n`, config on the command line) on `ip`: TURN over
 * UDP and TCP on `port`, TLS on `tlsPort` with a self-signed certificate for
 * `ip` made here with openssl, the TURN REST API shared secret, relay ports
 * from a small range on `ip`. Returns `{ip, port, tlsPort, secret, realm, logs,
 * cert, spki, chromiumArgs, urls: {udp, tcp, tls}, stop()}`; `chromiumArgs` make
 * Chromium accept the certificate (its key only).
 */
export async function startCoturn({ ip, secret = `turn-${PID}-${Date.now()}`, realm = 'satsuma.test', allowLoopbackPeers = false }) {
  const dir = mkdtempSync(path.join(os.tmpdir(), `sat-${PID}-coturn-`));
  register(`dir:${dir}`, () => rmSync(dir, { recursive: true, force: true }));
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  sh('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2',
    '-subj', `/CN=${ip}`, '-addext', `subjectAltName=IP:${ip}`, '-keyout', key, '-out', cert]);
  // Chromium verifies a TURNS server's certificate (a self-signed one fails with 701 "Failed to
  // establish connection"); the tests trust exactly this key with
  // --ignore-certificate-errors-spki-list (the base64 SHA-256 of its SubjectPublicKeyInfo).
  const spki = execFileSync('sh', ['-c', `openssl x509 -pubkey -noout -in '${cert}' | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64`]).toString().trim();
  const port = await freePort(ip, { pair: true });
  const tlsPort = await freePort(ip, { pair: true });
  const relayMin = await freePort(ip);
  const args = [
    '-n', '-v', '--no-cli', '--log-file=stdout', '--simple-log',
    `--listening-ip=${ip}`, `--relay-ip=${ip}`,
    `--listening-port=${port}`, `--tls-listening-port=${tlsPort}`,
    `--min-port=${relayMin}`, `--max-port=${Math.min(relayMin + 40, 65535)}`,
    '--use-auth-secret', `--static-auth-secret=${secret}`, `--realm=${realm}`,
    `--cert=${cert}`, `--pkey=${key}`, '--no-dtls', '--fingerprint',
    `--pidfile=${path.join(dir, 'turnserver.pid')}`, `--userdb=${path.join(dir, 'turndb')}`,
    '--no-software-attribute',
  ];
  if (allowLoopbackPeers) args.push('--allow-loopback-peers');
  const logs = [];
  const child = spawn('turnserver', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const key2 = `proc:coturn:${child.pid}`;
  register(key2, () => { if (child.exitCode === null) child.kill('SIGKILL'); });
  for (const s of [child.stdout, child.stderr]) s.on('data', (c) => logs.push(...c.toString().split('\n').filter(Boolean).map((l) => `[coturn] ${l}`)));
  const exited = new Promise((_, reject) => child.once('exit', (code) => reject(new Error(`coturn exited with ${code}:\n${logs.slice(-20).join('\n')}`))));
  exited.catch(() => {});
  await Promise.race([Promise.all([waitTcp(ip, port), waitTcp(ip, tlsPort)]), exited]);
  return {
    ip, port, tlsPort, secret, realm, logs, cert, spki,
    chromiumArgs: [`--ignore-certificate-errors-spki-list=${spki}`],
    urls: {
      udp: `turn:${ip}:${port}?transport=udp`,
      tcp: `turn:${ip}:${port}?transport=tcp`,
      tls: `turns:${ip}:${tlsPort}?transport=tcp`,
    },
    stop() { unregister(key2); },
  };
}

// ---- servers -----------------------------------------------------------------

/**
 * Starts the all-in-one `satsuma` for the network tests: web on 0.0.0.0:<port>
 * (host pages use http://127.0.0.1:<port>, namespaced pages
 * http://<serviceIp>:<port>, an origin the stack allows because it announces
 * that address), media (UDP and ICE-TCP) on `serviceIp`, dev mode and test
 * hooks on. `args` and `env` add flags (the TURN settings). Returns `{base,
 * serviceBase, webPort, listening, sfuApi, appSecret, media, logs, panicked(),
 * stop()}`; the SFU API (app `satsuma`, bearer `appSecret`) answers on `sfuApi`.
 */
export async function startNetServers({ serviceIp, args = [], env = {} }) {
  const logs = [];
  const webPort = await freePort('0.0.0.0');
  const appSecret = randomBytes(32).toString("hex");
  const all = await startProcess('satsuma', path.join(binDir, 'satsuma'), [
    '--listen', `0.0.0.0:${webPort}`, '--sfu-api', '127.0.0.1:0', '--media', `${serviceIp}:0`, '--detect-lan=false',
    // SATSUMA_NET_LOG (a log filter, e.g. `warn,satsuma_sfu::layer=debug`) for investigating; the
    // servers' whole log is then written to ARTIFACTS/net-satsuma-<pid>.log.
    '--web-dir', webDir(), '--log', process.env.SATSUMA_NET_LOG ?? 'warn', '--test-hooks=true', '--dev=true', ...args,
  ], /satsuma listening web=(\S+) sfu=(\S+) media=(\S+)[^\n]*/, logs, { SATSUMA_APP_ID: 'satsuma', SATSUMA_APP_SECRET: appSecret, ...env });
  const key = `proc:satsuma:${all.child.pid}`;
  register(key, () => { if (all.child.exitCode === null) all.child.kill('SIGTERM'); });
  return {
    base: `http://127.0.0.1:${webPort}`,
    serviceBase: `http://${serviceIp}:${webPort}`,
    webPort,
    listening: all.match[0],
    sfuApi: all.match[2],
    appSecret,
    media: all.match[3],
    logs,
    panicked: () => logs.filter((l) => /panicked/.test(l)),
    async stop() { unregister(key); },
  };
}

// ---- page helpers --------------------------------------------------------------

/**
 * The selected ICE candidate pair of the page's media connection, from
 * `getStats()` (the transport's selectedCandidatePairId): `{pair: {state,
 * bytesReceived, bytesSent}, local: {candidateType, protocol, relayProtocol,
 * tcpType, address, port, url}, remote: {...}}`, or null before one is selected.
 */
export async function selectedPair(page) {
  return page.evaluate(async () => {
    const pc = window.satsuma?.call?.sfu?.pc;
    if (!pc) return null;
    const report = await pc.getStats();
    let pairId = null;
    report.forEach((s) => { if (s.type === 'transport' && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId; });
    const pair = pairId ? report.get(pairId) : null;
    if (!pair) return null;
    const cand = (id) => {
      const c = report.get(id);
      return c ? {
        candidateType: c.candidateType, protocol: c.protocol, relayProtocol: c.relayProtocol ?? null,
        tcpType: c.tcpType ?? null, address: c.address ?? c.ip, port: c.port, url: c.url ?? null,
      } : null;
    };
    return {
      pair: { state: pair.state, nominated: pair.nominated, bytesReceived: pair.bytesReceived, bytesSent: pair.bytesSent },
      local: cand(pair.localCandidateId), remote: cand(pair.remoteCandidateId),
    };
  });
}

/**
 * The skeleton of a network test file: before the tests, the service address,
 * coturn (if `coturn`), the servers (`serverArgs(coturn)` adds flags) and the
 * host's own Chromium; after them (also on failure), the consoles of `pages`
 * and the last server and coturn log lines if a test failed, then everything is
 * removed. `env.namespace(tag)` makes a namespace that is removed at the end of
 * the file at the latest.
 */
export function netSuite({ coturn = false, serverArgs = () => [], serverEnv = () => ({}), pages = {}, logLines = 60 } = {}) {
  const env = {
    serviceIp: null, turn: null, servers: null, browser: null, failed: false, namespaces: [],
    check: (fn) => async (...a) => {
      try {
        return await fn(...a);
      } catch (err) {
        env.failed = true;
        throw err;
      }
    },
    namespace(tag) {
      const ns = new Netns(tag);
      env.namespaces.push(ns);
      return ns;
    },
    /** Chromium inside `ns`, loading pages from the service address, trusting coturn's certificate. */
    nsBrowser(ns) {
      return ns.launchBrowser({ secureOrigins: [env.servers.serviceBase], extraArgs: env.turn?.chromiumArgs ?? [] });
    },
    closed: [],
    /** Leaves and closes `pages[name]` for each name, keeping its console for the failure report. */
    async closePages(names) {
      for (const n of names) {
        const page = pages[n];
        delete pages[n];
        if (!page || page.isClosed()) continue;
        env.closed.push(page);
        page.keptConsole = page.consoleLines;
        await leave(page).catch(() => {});
      }
    },
  };
  let service = null;
  before(async () => {
    service = createServiceAddress();
    env.serviceIp = service.ip;
    if (coturn) env.turn = await startCoturn({ ip: service.ip });
    env.servers = await startNetServers({ serviceIp: service.ip, args: serverArgs(env.turn), env: serverEnv(env.turn) });
    console.log(`# net: service address ${service.ip}; ${env.servers.listening}${env.turn ? `; coturn udp/tcp ${env.turn.port} tls ${env.turn.tlsPort}` : ''}`);
    env.browser = await launchBrowser();
  });
  after(async () => {
    if (env.failed) {
      dumpConsole(Object.values(pages));
      for (const p of env.closed) {
        console.log(`--- console of ${p.label} (closed)`);
        for (const l of (p.keptConsole ?? []).slice(-40)) console.log(l);
      }
      console.log(env.servers?.logs.slice(-logLines).join('\n'));
      if (env.turn) console.log(env.turn.logs.slice(-logLines).join('\n'));
      for (const ns of env.namespaces) console.log(`--- nft rules of ${ns.name}\n${ns.rules()}`);
    }
    await env.browser?.close();
    if (process.env.SATSUMA_NET_LOG && env.servers) {
      mkdirSync(artifacts, { recursive: true });
      writeFileSync(path.join(artifacts, `net-satsuma-${PID}.log`), env.servers.logs.join('\n'));
    }
    if (env.turn) {
      mkdirSync(artifacts, { recursive: true });
      writeFileSync(path.join(artifacts, `net-coturn-${PID}.log`), env.turn.logs.join('\n'));
    }
    for (const ns of env.namespaces) await ns.destroy();
    await env.servers?.stop();
    env.turn?.stop();
    service?.remove();
    cleanupAll();
  });
  return env;
}

/**
 * The `satsuma` flags that turn on the issue-12 transports for the tests:
 * ICE-TCP on the service address, and coturn's URLs and shared secret (when
 * `turn` is given) so that the coordinator hands each participant TURN
 * credentials.
 */
export function serverFlags(turn) {
  const flags = [];
  if (turn) {
    for (const url of Object.values(turn.urls)) flags.push('--turn-url', url);
    flags.push('--turn-secret', turn.secret);
  }
  return flags;
}
