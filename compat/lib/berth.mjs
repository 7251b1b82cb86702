// Starts and stops a real berth binary for one test file.
//
// Every berth gets its own loopback address (127.0.0.0/8 is all loopback on
// Linux) because the Azure SDKs hard-code the ports: MQTT 8883, HTTPS 443.
// The process runs `berth serve` on a fresh temporary data directory, and the
// test reads what a user would read: DATA_DIR/client.json and the CA file it
// names.

import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const compatDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** The berth binary: $BERTH_BIN (relative to the current directory) or ../bin/berth from compat/. */
export function berthBin() {
  const bin = process.env.BERTH_BIN
    ? path.resolve(process.cwd(), process.env.BERTH_BIN)
    : path.resolve(compatDir, '..', 'bin', 'berth');
  if (!fs.existsSync(bin)) {
    throw new Error(`berth binary not found at ${bin} (build it with \`make build\` or set BERTH_BIN)`);
  }
  return bin;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function portOpen(host, port) {
  return new Promise((resolve) => {
    const s = net.connect({ host, port });
    const done = (ok) => { s.destroy(); resolve(ok); };
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
    s.setTimeout(1000, () => done(false));
  });
}

function splitHostPort(addr) {
  const i = addr.lastIndexOf(':');
  return { host: addr.slice(0, i).replace(/^\[|\]$/g, ''), port: Number(addr.slice(i + 1)) };
}

/**
 * A loopback address nobody listens on at 443 or 8883: random in
 * 127.64.0.0/10, so that test files, the raw-flow scripts and other people's
 * runs on the same machine never share one.
 */
export async function freeLoopbackAddress() {
  for (let i = 0; i < 20; i++) {
    const b = crypto.randomBytes(3);
    const ip = `127.${64 + (b[0] % 64)}.${1 + (b[1] % 254)}.${1 + (b[2] % 254)}`;
    if (!(await portOpen(ip, 443)) && !(await portOpen(ip, 8883))) return ip;
  }
  throw new Error('found no free loopback address in 20 tries');
}

/**
 * Starts `berth serve` on ip:8883 and ip:443 and waits until client.json
 * exists and both ports accept connections.
 *
 * @param {string} [ip]   a loopback address of its own (default: a free random one)
 * @param {string[]} [extraArgs] more `berth serve` flags
 * @param {{dataDir?: string}} [options] dataDir: serve an existing data
 *   directory (restartBerth) instead of a fresh temporary one
 * @returns {Promise<{ip, dataDir, info, caFile, stop, logText}>} stop({keepData: true})
 *   leaves the data directory for a restart
 */
export async function startBerth(ip, extraArgs = [], options = {}) {
  const bin = berthBin();
  if (!ip) ip = await freeLoopbackAddress();
  for (const port of [443, 8883]) {
    if (await portOpen(ip, port)) {
      throw new Error(`${ip}:${port} is already taken (a berth left running?); each berth needs its address for itself`);
    }
  }
  const dataDir = options.dataDir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'berth-compat-'));
  // `berth serve` writes client.json at every start; an old one would be
  // read before the new one is there (its NATS URL changes).
  fs.rmSync(path.join(dataDir, 'client.json'), { force: true });
  const logFile = path.join(dataDir, 'berth.log');
  const log = fs.openSync(logFile, 'a');
  const args = ['serve', '--data-dir', dataDir, '--host', ip,
    '--mqtt-addr', `${ip}:8883`, '--https-addr', `${ip}:443`, '--amqp-addr', `${ip}:5671`,
    // The operator listener's default, 127.0.0.1:8443, would be shared by
    // every berth a run starts; each takes its own address's.
    '--admin-addr', `${ip}:8443`, ...extraArgs];
  const child = spawn(bin, args, { stdio: ['ignore', log, log] });
  fs.closeSync(log);
  let exited = null;
  child.once('exit', (code, signal) => { exited = { code, signal }; });
  const logText = () => { try { return fs.readFileSync(logFile, 'utf8'); } catch { return ''; } };

  // signal: SIGTERM (an operator's stop) or SIGKILL (a crash).
  const stop = async ({ keepData = false, signal = 'SIGTERM' } = {}) => {
    if (exited === null) {
      child.kill(signal);
      const t = setTimeout(() => child.kill('SIGKILL'), 10000);
      await once(child, 'exit').catch(() => {});
      clearTimeout(t);
    }
    if (!keepData && !process.env.BERTH_KEEP_DATA) {
      fs.rmSync(dataDir, { recursive: true, force: true });
    }
  };

  const clientJson = path.join(dataDir, 'client.json');
  const deadline = Date.now() + 30000;
  let info = null;
  while (Date.now() < deadline) {
    if (exited) {
      const text = logText();
      await stop();
      throw new Error(`berth exited (${JSON.stringify(exited)}) before it was ready: ${bin} ${args.join(' ')}\n${text}`);
    }
    if (!info && fs.existsSync(clientJson)) {
      try { info = JSON.parse(fs.readFileSync(clientJson, 'utf8')); } catch { info = null; }
    }
    if (info) {
      const mqtt = splitHostPort(info.mqttAddress);
      const https = splitHostPort(info.httpsAddress);
      if (await portOpen(https.host, https.port) && await portOpen(mqtt.host, mqtt.port)) break;
    }
    await sleep(100);
  }
  if (!info) {
    const text = logText();
    await stop();
    throw new Error(`berth wrote no client.json in 30 s: ${bin} ${args.join(' ')}\n${text}`);
  }
  for (const k of ['idScope', 'globalEndpoint', 'hubHostName', 'mqttAddress', 'httpsAddress', 'caFile', 'serviceConnectionString']) {
    if (!info[k]) {
      const text = logText();
      await stop();
      throw new Error(`client.json has no ${k}: ${JSON.stringify(info)}\n${text}`);
    }
  }
  const caFile = path.isAbsolute(info.caFile) ? info.caFile : path.join(dataDir, info.caFile);
  // Forwarders of addHub: closed with the berth.
  const forwarders = [];
  const stopBerth = stop;
  const stopAll = async (opts) => {
    await Promise.all(forwarders.splice(0).map((f) => f.close()));
    await stopBerth(opts);
  };
  return { ip, dataDir, info, caFile, stop: stopAll, logText, forwarders };
}

/**
 * Stops a berth of startBerth with SIGTERM (or options.signal, SIGKILL for a
 * crash) and starts `berth serve` again
 * on the same address and data directory, as an operator restarts it.
 * Resolves with the new berth (same shape as startBerth's).
 */
export async function restartBerth(berth, extraArgs = [], { signal = 'SIGTERM' } = {}) {
  await berth.stop({ keepData: true, signal });
  return startBerth(berth.ip, extraArgs, { dataDir: berth.dataDir });
}

/**
 * Runs the berth CLI against the berth of startBerth (--data-dir: its
 * client.json, CA and service connection string) and resolves with
 * {code, stdout, stderr, json} (json: stdout parsed, when it is JSON). Never
 * rejects for a non-zero exit; see berthCli.
 */
export function berthCliRaw(berth, args, timeoutMs = 30000) {
  const argv = [...args, '--data-dir', berth.dataDir];
  return new Promise((resolve, reject) => {
    const child = spawn(berthBin(), argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d) => { stdout += d; });
    child.stderr.setEncoding('utf8').on('data', (d) => { stderr += d; });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`berth ${argv.join(' ')} still running after ${timeoutMs} ms; stdout ${stdout}; stderr ${stderr}`));
    }, timeoutMs);
    child.once('error', (e) => { clearTimeout(timer); reject(e); });
    child.once('close', (code) => {
      clearTimeout(timer);
      let json;
      try { json = JSON.parse(stdout); } catch { json = undefined; }
      resolve({ code, stdout, stderr, json });
    });
  });
}

/** berthCliRaw that rejects unless the command exits 0; resolves with its JSON output (or text). */
export async function berthCli(berth, args, timeoutMs) {
  const r = await berthCliRaw(berth, args, timeoutMs);
  if (r.code !== 0) throw new Error(`berth ${args.join(' ')} exited ${r.code}: ${r.stderr}${r.stdout}`);
  return r.json !== undefined ? r.json : r.stdout;
}

/**
 * A plain TCP forwarder from ip:port to target: what DNS or a NAT in front
 * of berth does for a second hub name. Bytes pass untouched (TLS, SNI,
 * client certificates end to end).
 */
async function forward(ip, port, target) {
  const sockets = new Set();
  const server = net.createServer((down) => {
    const up = net.connect(target);
    for (const s of [down, up]) { sockets.add(s); s.once('close', () => sockets.delete(s)); }
    down.pipe(up);
    up.pipe(down);
    down.on('error', () => up.destroy());
    up.on('error', () => down.destroy());
  });
  server.listen(port, ip);
  await once(server, 'listening');
  return {
    close: () => new Promise((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    }),
  };
}

/**
 * Creates a second (third, …) IoT hub on a berth of startBerth: `berth hub
 * create --name IP [flags]` with a free loopback address of its own as the
 * host name. berth listens on its first address only, so the test forwards
 * IP:443 and IP:8883 to it (as DNS pointing the hub's name at berth would);
 * the server certificate names every hub.
 *
 * @param {{allocationWeight?: number, applyAllocationPolicy?: boolean, region?: string}} [opts]
 * @returns {Promise<{name, connectionString, hub}>} hub: what `berth hub create` printed
 */
export async function addHub(berth, opts = {}) {
  const name = await freeLoopbackAddress();
  for (const port of [443, 8883]) {
    berth.forwarders.push(await forward(name, port, { host: berth.ip, port }));
  }
  const args = ['hub', 'create', '--name', name];
  if (opts.allocationWeight !== undefined) args.push('--allocation-weight', String(opts.allocationWeight));
  if (opts.applyAllocationPolicy !== undefined) args.push(`--apply-allocation-policy=${opts.applyAllocationPolicy}`);
  if (opts.region !== undefined) args.push('--region', opts.region);
  const hub = await berthCli(berth, args);
  if (!hub || !hub.connectionString) throw new Error(`berth hub create printed no connectionString: ${JSON.stringify(hub)}`);
  return { name, connectionString: hub.connectionString, hub };
}
