// Reads berth's telemetry back the way a user does: `berth hub
// monitor-events` (az iot hub monitor-events' output, one JSON object a
// line) against the berth of lib/berth.mjs, always with --from-start, so a
// message is found whenever it was written, and --properties all.
//
// An event: {event: {origin, module, interface, component,
//   properties: {system: {message_id, correlation_id, content_type, …},
//                application: {…}},
//   annotations: {iothub-connection-device-id, iothub-enqueuedtime (Unix ms), …},
//   payload}}

import { spawn } from 'node:child_process';

import { berthBin } from './berth.mjs';

/**
 * Runs `berth hub monitor-events --from-start --properties all ARGS` for the
 * berth started by startBerth and resolves with {events, code, stderr} when
 * it exits (--count reached, or --timeout without a message). Killed, and
 * rejected, after killAfterMs.
 */
export function monitorEvents(berth, args, killAfterMs = 30000) {
  const argv = ['hub', 'monitor-events', '--data-dir', berth.dataDir, '--from-start', '--properties', 'all', ...args];
  return new Promise((resolve, reject) => {
    const child = spawn(berthBin(), argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (d) => { out += d; });
    child.stderr.setEncoding('utf8').on('data', (d) => { err += d; });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`berth ${argv.join(' ')} still running after ${killAfterMs} ms; stdout ${out}; stderr ${err}`));
    }, killAfterMs);
    child.once('error', (e) => { clearTimeout(timer); reject(e); });
    child.once('close', (code) => {
      clearTimeout(timer);
      const events = [];
      for (const line of out.split('\n')) {
        if (!line.trim()) continue;
        let v;
        try { v = JSON.parse(line); } catch {
          return reject(new Error(`berth hub monitor-events printed a line that is not JSON: ${line}\nstderr: ${err}`));
        }
        if (v && v.event) events.push(v.event);
      }
      resolve({ events, code, stderr: err });
    });
  });
}

/**
 * The events of deviceId: waits for `count` of them (up to timeoutSec), or,
 * without count, reads until the stream has been quiet for 1 s. Rejects when
 * the monitor fails or finds fewer than count.
 */
export async function deviceEvents(berth, deviceId, count, timeoutSec = 10) {
  const args = ['--device-id', deviceId];
  args.push(...(count ? ['--count', String(count), '--timeout', `${timeoutSec}s`] : ['--timeout', '1s']));
  const { events, code, stderr } = await monitorEvents(berth, args, (timeoutSec + 20) * 1000);
  if (code !== 0) throw new Error(`berth hub monitor-events ${args.join(' ')} exited ${code}: ${stderr}`);
  if (count && events.length < count) {
    throw new Error(`berth hub monitor-events ${args.join(' ')} found ${events.length} event(s), want ${count}: ${JSON.stringify(events)}\n${stderr}`);
  }
  return events;
}

/** Every event in the stream (read until it has been quiet for 1 s). */
export async function allEvents(berth) {
  const { events, code, stderr } = await monitorEvents(berth, ['--timeout', '1s']);
  if (code !== 0) throw new Error(`berth hub monitor-events exited ${code}: ${stderr}`);
  return events;
}
