// The device SDK over AMQP, AMQP over WebSockets and MQTT over WebSockets
// (azure-iot-device-amqp Amqp and AmqpWs, azure-iot-device-mqtt MqttWs),
// and the service SDK's C2D send (azure-iothub Client.send over Amqp and
// AmqpWs), against a real berth: telemetry with properties read back from
// the stream, C2D complete/abandon/reject, twins, direct methods, and
// refusals (wrong key, disabled device) that come at once, never as a
// timeout. Every test has devices of its own; the tests run concurrently
// against one berth.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { restartBerth, startBerth } from '../lib/berth.mjs';
import { randomKey, startSdkWorker } from '../lib/sdk.mjs';
import { deviceEvents } from '../lib/monitor.mjs';

const IP = process.env.BERTH_COMPAT_AMQP_IP;
// A refusal must come well before the SDK's own timeouts (put-token: 120 s,
// which is what a hub that never answers would cost). Not tighter: with
// every test of the file running at once in one SDK worker on a busy
// machine, opening a connection alone has taken over 15 s.
const REFUSAL_MS = 40000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// How open() fails for a refused credential: UnauthorizedError on every
// transport. MQTT: CONNACK 5. AMQP: the put-token answer 401, which
// azure-iot-amqp-base turns into an UnauthorizedError — recognised as one
// by azure-iot-device-amqp only when both resolve the same azure-iot-common
// (one hoisted copy, as a plain install of the device packages gives and as
// package.json pins it); with two copies the SDK reports a plain
// Error("AMQP Transport: Could not authorize with putToken"), against IoT
// Hub as against berth (docs/amqp-wire.md, "Errors").
const refused = () => (err) => {
  assert.equal(err.stage, 'open', String(err));
  assert.equal(err.sdkName, 'UnauthorizedError', String(err));
  return true;
};

const transports = [
  ['amqp', 'Amqp'],
  ['amqpws', 'AmqpWs'],
  ['mqttws', 'MqttWs'],
];

describe('IoT Hub SDKs over AMQP and WebSockets', { timeout: 240000, concurrency: true }, () => {
  let berth;
  let sdk;
  let hubCs;
  const handles = [];

  before(async () => {
    berth = await startBerth(IP);
    hubCs = berth.info.hubConnectionString;
    assert.ok(berth.info.amqpAddress, 'client.json has amqpAddress');
    sdk = await startSdkWorker(berth.caFile);
  });

  after(async () => {
    if (sdk) {
      for (const h of handles) await sdk.device.close(h).catch(() => {});
      await sdk.close();
    }
    if (berth) await berth.stop();
  });

  const createDevice = async (deviceId) => {
    const { body } = await sdk.registry(hubCs, 'create', { deviceId });
    const key = body.authentication?.symmetricKey?.primaryKey;
    assert.ok(key, `generated primary key: ${JSON.stringify(body.authentication)}`);
    return { deviceId, key, cs: `HostName=${berth.info.hubHostName};DeviceId=${deviceId};SharedAccessKey=${key}` };
  };

  const openDevice = async (transport, dev, options) => {
    const h = await sdk.device.open(transport, dev.cs, options);
    handles.push(h);
    return h;
  };

  const waitEvent = async (h, kind, pred = () => true, timeoutMs = 10000, what = kind) => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const e = (await sdk.device.events(h, kind)).find(pred);
      if (e) return e;
      if (Date.now() > deadline) {
        const all = await sdk.device.events(h);
        throw new Error(`${what}: nothing within ${timeoutMs} ms; events: ${JSON.stringify(all).slice(0, 3000)}`);
      }
      await sleep(100);
    }
  };

  const c2dCount = async (deviceId) => (await sdk.registry(hubCs, 'get', deviceId)).body.cloudToDeviceMessageCount;
  const waitC2DCount = async (deviceId, want) => {
    const deadline = Date.now() + 10000;
    for (;;) {
      const n = await c2dCount(deviceId);
      if (n === want) return;
      if (Date.now() > deadline) throw new Error(`C2D queue of ${deviceId}: ${n}, want ${want}`);
      await sleep(100);
    }
  };

  for (const [transport, name] of transports) {
    test(`${name}: sendEvent; body, system and application properties arrive in the stream`, async () => {
      const dev = await createDevice(`amqp-tel-${transport}`);
      const run = `${transport}-${Date.now()}`;
      const msg = {
        data: JSON.stringify({ temperature: 21.5, run }),
        messageId: `m-${run}`,
        correlationId: `c-${run}`,
        contentType: 'application/json',
        contentEncoding: 'utf-8',
        properties: [['unit', 'celsius'], ['alert', 'true']],
      };
      await sdk.hubSend(transport, dev.cs, [msg]);
      const [ev] = await deviceEvents(berth, dev.deviceId, 1);
      assert.equal(ev.origin, dev.deviceId);
      assert.deepEqual(ev.payload, { temperature: 21.5, run });
      assert.deepEqual(ev.properties.system, {
        content_encoding: 'utf-8', content_type: 'application/json', correlation_id: msg.correlationId, message_id: msg.messageId,
      });
      assert.deepEqual(ev.properties.application, { unit: 'celsius', alert: 'true' });
      const anno = ev.annotations ?? {};
      assert.equal(anno['iothub-connection-device-id'], dev.deviceId);
      assert.equal(anno['iothub-message-source'], 'Telemetry');
      assert.equal(JSON.parse(anno['iothub-connection-auth-method']).type, 'sas');
    });

    test(`${name}: C2D sent with azure-iothub Client.send (Amqp): complete, abandon (redelivered), reject (MqttWs: complete)`, async () => {
      const dev = await createDevice(`amqp-c2d-${transport}`);
      for (const tag of ['complete', 'abandon', 'reject']) {
        await sdk.serviceSend('amqp', hubCs, dev.deviceId, {
          data: JSON.stringify({ tag }), messageId: `c2d-${tag}`, correlationId: `cid-${tag}`,
          contentType: 'application/json', contentEncoding: 'utf-8', properties: [['probe', tag]], ack: 'full',
        });
      }
      assert.equal(await c2dCount(dev.deviceId), 3, 'queued for an offline device');
      const h = await openDevice(transport, dev);
      await sdk.device.listenC2D(h);
      const byId = (id) => (e) => e.message.messageId === id;
      const { message: c } = await waitEvent(h, 'message', byId('c2d-complete'), 10000, 'c2d-complete');
      assert.equal(c.data, '{"tag":"complete"}');
      assert.equal(c.correlationId, 'cid-complete');
      assert.equal(c.properties.probe, 'complete', JSON.stringify(c.properties));
      if (transport !== 'mqttws') assert.equal(c.ack, 'full', 'iothub-ack reaches the device');
      await sdk.device.settle(h, c.ref, 'complete');
      if (transport === 'mqttws') {
        // MQTT has only complete (PUBACK); the SDK refuses abandon and reject.
        for (const id of ['c2d-abandon', 'c2d-reject']) {
          const { message } = await waitEvent(h, 'message', byId(id), 10000, id);
          await sdk.device.settle(h, message.ref, 'complete');
        }
        await waitC2DCount(dev.deviceId, 0);
        return;
      }
      const { message: a } = await waitEvent(h, 'message', byId('c2d-abandon'), 10000, 'c2d-abandon');
      await sdk.device.settle(h, a.ref, 'abandon');
      const { message: a2 } = await waitEvent(h, 'message', (e) => e.message.messageId === 'c2d-abandon' && e.message.ref !== a.ref, 10000, 'c2d-abandon again');
      await sdk.device.settle(h, a2.ref, 'complete');
      const { message: r } = await waitEvent(h, 'message', byId('c2d-reject'), 10000, 'c2d-reject');
      await sdk.device.settle(h, r.ref, 'reject');
      await waitC2DCount(dev.deviceId, 0);
      await sleep(500);
      assert.equal((await sdk.device.events(h, 'message')).filter(byId('c2d-reject')).length, 1, 'a rejected message is not redelivered');
    });

    test(`${name}: twin GET, reported update, desired notification`, async () => {
      const dev = await createDevice(`amqp-twin-${transport}`);
      const h = await openDevice(transport, dev);
      const t0 = await sdk.device.getTwin(h);
      assert.equal(typeof t0.desired.$version, 'number', JSON.stringify(t0));
      const r0 = t0.reported.$version;
      await sdk.device.updateReported(h, { firmware: '2.0', battery: { level: 7 } });
      const s1 = (await sdk.registry(hubCs, 'getTwin', dev.deviceId)).body;
      assert.equal(s1.properties.reported.firmware, '2.0');
      assert.equal(s1.properties.reported.$version, r0 + 1);
      await sdk.device.watchDesired(h);
      const d0 = t0.desired.$version;
      await sdk.registry(hubCs, 'updateTwin', dev.deviceId, { properties: { desired: { interval: 9 } } }, '*');
      const n = await waitEvent(h, 'desired', (e) => e.patch.$version === d0 + 1, 10000, 'desired notification');
      assert.equal(n.patch.interval, 9);
      const t1 = await sdk.device.getTwin(h);
      assert.equal(t1.desired.interval, 9);
      assert.equal(t1.reported.firmware, '2.0');
    });

    test(`${name}: direct method → onDeviceMethod → {status, payload}`, async () => {
      const dev = await createDevice(`amqp-method-${transport}`);
      const h = await openDevice(transport, dev);
      await sdk.device.onMethod(h, 'reboot', 'echo');
      const payload = { delay: 3, nested: { a: [1, 2] } };
      const res = await sdk.invokeDeviceMethod(hubCs, dev.deviceId, { methodName: 'reboot', payload, responseTimeoutInSeconds: 10 });
      assert.equal(res.status, 200);
      assert.deepEqual(res.result, { status: 200, payload: { ok: true, echo: payload } });
      await sdk.device.onMethod(h, 'selfTest', 'fail');
      const failed = await sdk.invokeDeviceMethod(hubCs, dev.deviceId, { methodName: 'selfTest', responseTimeoutInSeconds: 10 });
      assert.deepEqual(failed.result, { status: 500, payload: { error: 'failed on purpose' } });
    });

    test(`${name}: a wrong key is refused at once`, async () => {
      const dev = await createDevice(`amqp-wrongkey-${transport}`);
      const cs = `HostName=${berth.info.hubHostName};DeviceId=${dev.deviceId};SharedAccessKey=${randomKey()}`;
      const t0 = Date.now();
      await assert.rejects(sdk.hubSend(transport, cs, [{ data: 'x' }], 'single', REFUSAL_MS), refused(transport));
      assert.ok(Date.now() - t0 < REFUSAL_MS, 'refused before the timeout');
      assert.deepEqual(await deviceEvents(berth, dev.deviceId), []);
    });

    test(`${name}: a disabled device is refused at once`, async () => {
      const dev = await createDevice(`amqp-disabled-${transport}`);
      const { body } = await sdk.registry(hubCs, 'get', dev.deviceId);
      await sdk.registry(hubCs, 'update', { ...body, status: 'disabled' });
      await assert.rejects(sdk.hubSend(transport, dev.cs, [{ data: 'x' }], 'single', REFUSAL_MS), refused(transport));
    });
  }

  test('Client.send over AmqpWs queues; an unknown device → DeviceNotFoundError', async () => {
    const dev = await createDevice('amqp-svc-ws');
    await sdk.serviceSend('amqpws', hubCs, dev.deviceId, { data: 'over websockets', messageId: 'svc-ws-1' });
    assert.equal(await c2dCount(dev.deviceId), 1);
    await assert.rejects(sdk.serviceSend('amqp', hubCs, 'amqp-nobody', { data: 'x' }), (err) => {
      assert.equal(err.sdkName, 'DeviceNotFoundError', String(err));
      return true;
    });
  });

  test('Client.send: the 51st queued message → DeviceMaximumQueueDepthExceededError', async () => {
    const dev = await createDevice('amqp-svc-full');
    // One client, 51 sends: the 51st is refused.
    await assert.rejects(sdk.serviceSend('amqp', hubCs, dev.deviceId, { data: 'm', repeat: 51 }), (err) => {
      assert.equal(err.sdkName, 'DeviceMaximumQueueDepthExceededError', String(err));
      return true;
    });
    assert.equal(await c2dCount(dev.deviceId), 50);
  });
});

describe('AMQP: queued C2D survives berth being killed', { timeout: 120000 }, () => {
  test('Client.send (Amqp), berth killed and restarted, the device receives it over Amqp', async () => {
    let berth = await startBerth(IP);
    const sdk = await startSdkWorker(berth.caFile);
    try {
      const hubCs = berth.info.hubConnectionString;
      const { body } = await sdk.registry(hubCs, 'create', { deviceId: 'amqp-restart' });
      const cs = `HostName=${berth.info.hubHostName};DeviceId=amqp-restart;SharedAccessKey=${body.authentication.symmetricKey.primaryKey}`;
      await sdk.serviceSend('amqp', hubCs, 'amqp-restart', { data: 'survives', messageId: 'keep-1' });
      berth = await restartBerth(berth, [], { signal: 'SIGKILL' });
      const h = await sdk.device.open('amqp', cs);
      await sdk.device.listenC2D(h);
      const deadline = Date.now() + 10000;
      let got;
      while (!(got = (await sdk.device.events(h, 'message')).find((e) => e.message.messageId === 'keep-1'))) {
        if (Date.now() > deadline) throw new Error('queued message not delivered after the restart');
        await sleep(100);
      }
      assert.equal(got.message.data, 'survives');
      await sdk.device.settle(h, got.message.ref, 'complete');
      await sdk.device.close(h);
    } finally {
      await sdk.close();
      await berth.stop();
    }
  });
});
