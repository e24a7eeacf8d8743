// Several satsuma-sfu nodes joined by the QUIC relay, and a coordinator that places sessions on
// them: the setup of the browser tests that span SFU nodes (cluster.test.mjs, drain.test.mjs).
// Certificates come from the real `satsuma-sfu cluster-ca` / `node-cert` subcommands.

import { execFileSync } from 'node:child_process';
import dgram from 'node:dgram';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { binDir, startProcess, webDir } from './harness.mjs';

/** A UDP port on 127.0.0.1 that was free a moment ago (for a node's relay). */
export async function freeUdpPort() {
  return new Promise((resolve, reject) => {
    const s = dgram.createSocket('udp4');
    s.on('error', reject);
    s.bind(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Sum of the samples of metric `name` (with every one of `labels` in the series) at `http://addr/metrics`. */
export async function metric(addr, name, labels = []) {
  const text = await (await fetch(`http://${addr}/metrics`)).text();
  return text.split('\n')
    .filter((l) => (l.startsWith(`${name} `) || l.startsWith(`${name}{`)) && labels.every((x) => l.includes(x)))
    .reduce((sum, l) => sum + Number(l.split(' ').pop()), 0);
}

/**
 * Starts one satsuma-sfu per name of `nodes` (in that order; each has every other as relay
 * peer) and a coordinator listing them in the same order with `capacity[name]` sessions each.
 * `sfuArgs` / `coordArgs` add flags; `log` is both processes' log level.
 * Returns `{base, sfus, exits, sfuBin, logs, panicked(), stop()}`: `sfus[i]` is node i's HTTP
 * address, `exits[i]` resolves with its exit code (or signal) once it exits.
 */
export async function startCluster({
  nodes, capacity, appSecret, log = 'warn', sfuArgs = [], coordArgs = [], tmpPrefix = 'satsuma-cluster-',
}) {
  const logs = [];
  const children = [];
  const dir = mkdtempSync(path.join(os.tmpdir(), tmpPrefix));
  const killAll = () => {
    for (const c of children) {
      if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    }
    rmSync(dir, { recursive: true, force: true });
  };
  const sfuBin = path.join(binDir, 'satsuma-sfu');
  execFileSync(sfuBin, ['cluster-ca', '--out', dir, '--cluster', 'test'], { stdio: 'ignore' });
  for (const name of nodes) {
    execFileSync(sfuBin, ['node-cert', '--name', name, '--out', dir, '--ca', path.join(dir, 'ca.pem'),
      '--ca-key', path.join(dir, 'ca-key.pem')], { stdio: 'ignore' });
  }
  const relayPorts = [];
  for (let i = 0; i < nodes.length; i += 1) relayPorts.push(await freeUdpPort());
  const sfus = [];
  const exits = [];
  try {
    for (const [i, name] of nodes.entries()) {
      const peers = nodes.flatMap((peer, j) => (j === i ? [] : ['--relay-peer', `${peer}=127.0.0.1:${relayPorts[j]}`]));
      const sfu = await startProcess(name, sfuBin, [
        '--app', `satsuma:${appSecret}`, '--http-bind', '127.0.0.1:0', '--udp-bind', '127.0.0.1:0', '--log', log,
        '--node-name', name, '--relay-bind', `127.0.0.1:${relayPorts[i]}`,
        '--relay-cert', path.join(dir, `${name}.pem`), '--relay-key', path.join(dir, `${name}-key.pem`),
        '--relay-ca', path.join(dir, 'ca.pem'), ...peers, ...sfuArgs,
      ], /satsuma-sfu listening http=(\S+) udp=(\S+)/, logs);
      children.push(sfu.child);
      sfus.push(sfu.match[1]);
      exits.push(new Promise((resolve) => {
        if (sfu.child.exitCode !== null) resolve(sfu.child.exitCode);
        else sfu.child.on('exit', (code, signal) => resolve(code ?? signal));
      }));
    }
    const coord = await startProcess('coordinator', path.join(binDir, 'satsuma-coordinator'), [
      '--dev', '--listen', '127.0.0.1:0', '--web-dir', webDir(), '--test-hooks=true', '--log', log,
      ...nodes.flatMap((name, i) => ['--sfu-node', `http://${sfus[i]};capacity=${capacity[name]};name=${name}`]),
      '--sfu-app-id', 'satsuma', '--sfu-app-secret', appSecret, ...coordArgs,
    ], /satsuma-coordinator listening http=(\S+)/, logs);
    children.push(coord.child);
    return {
      base: `http://${coord.match[1]}`,
      sfus,
      exits,
      sfuBin,
      logs,
      panicked: () => logs.filter((l) => /panicked/.test(l)),
      async stop() {
        killAll();
      },
    };
  } catch (err) {
    killAll();
    throw err;
  }
}
