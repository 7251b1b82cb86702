// C2D delivery feedback through the official service SDK: azure-iothub
// Client.send over Amqp and AmqpWs with ack 'full' or 'negative', the
// device (azure-iot-device over MQTT, or HTTPS to reject) settling it, and
// the Client's feedback receiver getting the records; an unknown device is
// refused with DeviceNotFoundError.

import assert from 'node:assert/strict';
import { fork } from 'node:child_process';
import crypto from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';

import { startBerth } from '../lib/berth.mjs';
import { startSdkWorker } from '../lib/sdk.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const workerPath = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'lib', 'service_amqp_worker.cjs');

// A forked azure-iothub Client of one transport.
function startService(caFile) {
  const env = { ...process.env, NODE_EXTRA_CA_CERTS: caFile };
  delete env.NODE_OPTIONS;
  delete env.NODE_TLS_REJECT_UNAUTHORIZED;
  const child = fork(workerPath, [], { env, stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv: [] });
  const pending = new Map();
  child.on('message', (m) => {
    const p = pending.get(m.id);
    if (!p) return;
    pending.delete(m.id);
    if (m.ok) p.resolve(m.value); else p.reject(Object.assign(new Error(`${m.error.name}: ${m.error.message}`), m.error));
  });
  const call = (op, ...args) => new Promise((resolve, reject) => {
    const id = crypto.randomUUID();
    const timer = setTimeout(() => { pending.delete(id); reject(new Error(`${op} did not settle in 30 s`)); }, 30000);
    pending.set(id, { resolve: (v) => { clearTimeout(timer); resolve(v); }, reject: (e) => { clearTimeout(timer); reject(e); } });
    child.send({ id, op, args });
  });
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    await call('close').catch(() => {});
    child.disconnect();
  };
  return { call, stop };
}

describe('IoT Hub service SDK: C2D delivery feedback over AMQP', { timeout: 150000 }, () => {
  let berth;
  let sdk;
  let hubCs;
  const services = [];
  const handles = [];

  before(async () => {
    berth = await startBerth();
    hubCs = berth.info.hubConnectionString;
    sdk = await startSdkWorker(berth.caFile);
  });

  after(async () => {
    for (const s of services) await s.stop().catch(() => {});
    if (sdk) {
      for (const h of handles) await sdk.device.close(h).catch(() => {});
      await sdk.close();
    }
    if (berth) await berth.stop();
  });

  const createDevice = async (deviceId) => {
    const { body } = await sdk.registry(hubCs, 'create', { deviceId });
    return `HostName=${berth.info.hubHostName};DeviceId=${deviceId};SharedAccessKey=${body.authentication.symmetricKey.primaryKey}`;
  };

  const waitFor = async (what, f, timeoutMs = 30000) => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = await f();
      if (v) return v;
      if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
      await sleep(200);
    }
  };

  for (const transport of ['amqp', 'amqpws']) {
    test(`${transport}: send with ack full, complete over MQTT, reject over HTTPS, unknown device`, async () => {
      const svc = startService(berth.caFile);
      services.push(svc);
      await svc.call('open', hubCs, transport);
      const dev = `fb-${transport}`;
      const cs = await createDevice(dev);

      const ok = `ok-${transport}`;
      const no = `no-${transport}`;
      await svc.call('send', dev, { data: 'hello', messageId: ok, ack: 'full' });
      await assert.rejects(svc.call('send', 'nobody-here', { data: 'x', messageId: 'lost', ack: 'full' }), (e) => {
        assert.match(e.name, /DeviceNotFoundError/, e.message);
        return true;
      });

      // Over MQTT the PUBACK completes the message (the SDK sends it on receipt).
      const mqtt = await sdk.device.open('mqtt', cs);
      handles.push(mqtt);
      await sdk.device.listenC2D(mqtt);
      const first = await waitFor('the first message over MQTT', async () =>
        (await sdk.device.events(mqtt, 'message')).find((e) => e.message.messageId === ok));
      await sdk.device.settle(mqtt, first.message.ref, 'complete');
      await sdk.device.close(mqtt);
      // MQTT cannot reject: the second message is rejected over HTTPS.
      await svc.call('send', dev, { data: 'bye', messageId: no, ack: 'negative' });
      const http = await sdk.device.open('http', cs, { receiveInterval: 1 });
      handles.push(http);
      await sdk.device.listenC2D(http);
      const again = await waitFor('the second message over HTTPS', async () =>
        (await sdk.device.events(http, 'message')).find((e) => e.message.messageId === no));
      await sdk.device.settle(http, again.message.ref, 'reject');

      const fb = await waitFor('both feedback records', async () => {
        const got = await svc.call('feedback');
        return got.records.filter((r) => r.deviceId === dev).length >= 2 ? got : null;
      }, 60000);
      const mine = fb.records.filter((r) => r.deviceId === dev);
      const byId = Object.fromEntries(mine.map((r) => [r.originalMessageId, r]));
      assert.equal(byId[ok]?.statusCode, 'Success', JSON.stringify(mine));
      assert.equal(byId[no]?.statusCode, 'Rejected', JSON.stringify(mine));
      for (const r of mine) {
        assert.ok(r.deviceGenerationId && r.enqueuedTimeUtc && r.description, JSON.stringify(r));
      }
      assert.ok(fb.messages.every((m) => m.contentType === 'application/vnd.microsoft.iothub.feedback.json'), JSON.stringify(fb.messages));
      // Feedback is the hub's, not the client's: the next test's receiver
      // must be the only one.
      await svc.stop();
    });
  }
});
