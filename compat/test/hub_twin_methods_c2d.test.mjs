// Device twins, direct methods and cloud-to-device messages through the
// official Azure IoT SDKs, against a real berth: the device side is
// azure-iot-device with azure-iot-device-mqtt or azure-iot-device-http, the
// service side azure-iothub (Registry for identities and twins, Client for
// direct methods). The official service SDKs send C2D messages over AMQP
// only, so messages are sent with berth's HTTPS extension (POST
// /devices/{id}/messages/deviceBound,
// docs/spec/iothub-protocol.md#sending-cloud-to-device) by a plain HTTPS
// request with a service SAS token made by azure-iot-common's
// SharedAccessSignature from client.json's hubConnectionString, and with the
// CLI (`berth hub c2d send`).
//
// Every test has devices of its own, so the tests of this file run
// concurrently against one berth.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { after, before, describe, test } from 'node:test';

import { berthBin, startBerth } from '../lib/berth.mjs';
import { startSdkWorker } from '../lib/sdk.mjs';

const IP = process.env.BERTH_COMPAT_TWIN_IP;
const API = 'api-version=2021-04-12';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

describe('IoT Hub SDKs: twins, direct methods, cloud-to-device messages', { timeout: 150000, concurrency: true }, () => {
  let berth;
  let sdk;
  let hubCs; // iothubowner connection string from client.json
  const handles = [];

  before(async () => {
    berth = await startBerth(IP);
    hubCs = berth.info.hubConnectionString;
    assert.ok(hubCs, 'client.json has hubConnectionString');
    sdk = await startSdkWorker(berth.caFile);
  });

  after(async () => {
    if (sdk) {
      for (const h of handles) await sdk.device.close(h).catch(() => {});
      await sdk.close();
    }
    if (berth) await berth.stop();
  });

  // A device identity made with azure-iothub Registry.create (keys generated
  // by the hub) and the connection string an application would use.
  const createDevice = async (deviceId) => {
    const { body } = await sdk.registry(hubCs, 'create', { deviceId });
    assert.equal(body.deviceId, deviceId);
    const key = body.authentication?.symmetricKey?.primaryKey;
    assert.ok(key, `generated primary key: ${JSON.stringify(body.authentication)}`);
    return { deviceId, cs: `HostName=${berth.info.hubHostName};DeviceId=${deviceId};SharedAccessKey=${key}` };
  };

  const openDevice = async (transport, dev, options) => {
    const h = await sdk.device.open(transport, dev.cs, options);
    handles.push(h);
    return h;
  };

  // The first event of a device session of `kind` that satisfies pred,
  // polled until timeoutMs.
  const waitEvent = async (h, kind, pred = () => true, timeoutMs = 10000, what = kind) => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const evs = await sdk.device.events(h, kind);
      const e = evs.find(pred);
      if (e) return e;
      if (Date.now() > deadline) {
        const all = await sdk.device.events(h);
        throw new Error(`${what}: nothing within ${timeoutMs} ms; events: ${JSON.stringify(all).slice(0, 3000)}`);
      }
      await sleep(100);
    }
  };

  const c2dCount = async (deviceId) => (await sdk.registry(hubCs, 'get', deviceId)).body.cloudToDeviceMessageCount;

  // Polls registry.get until cloudToDeviceMessageCount is want (the hub
  // settles an MQTT message on the device's PUBACK, which the device sends
  // after its handler ran, so the count lags the handler a little).
  const waitC2DCount = async (deviceId, want, timeoutMs = 5000) => {
    const deadline = Date.now() + timeoutMs;
    let n;
    for (;;) {
      n = await c2dCount(deviceId);
      if (n === want || Date.now() > deadline) break;
      await sleep(100);
    }
    assert.equal(n, want, `cloudToDeviceMessageCount of ${deviceId}`);
  };

  const c2dPath = (deviceId) => `/devices/${encodeURIComponent(deviceId)}/messages/deviceBound?${API}`;

  // berth's C2D send extension, raw form: body as is, properties as headers.
  const sendRaw = (deviceId, data, headers = {}) =>
    sdk.hubRest(hubCs, 'POST', c2dPath(deviceId), { 'Content-Type': 'text/plain', ...headers }, data);

  // The JSON form: one object, properties keep their names' case.
  const sendJson = (deviceId, data, properties = {}) =>
    sdk.hubRest(hubCs, 'POST', c2dPath(deviceId), { 'Content-Type': 'application/vnd.microsoft.iothub.json' },
      { body: Buffer.from(data).toString('base64'), base64Encoded: true, properties });

  const assertSent = (res, what) => {
    assert.equal(res.status, 200, `${what}: ${res.status} ${res.text}`);
    assert.match(res.headers['content-type'] ?? '', /application\/json/, `${what}: content type`);
    return res.json;
  };

  // ---- twins ----

  test('MQTT twin: getTwin, reported update seen by Registry.getTwin, desired update notifies the device with its $version, stale etag → 412', async () => {
    const dev = await createDevice('twin-mqtt');
    const h = await openDevice('mqtt', dev);

    const t0 = await sdk.device.getTwin(h);
    assert.equal(typeof t0.desired.$version, 'number', `desired $version: ${JSON.stringify(t0)}`);
    assert.equal(typeof t0.reported.$version, 'number', `reported $version: ${JSON.stringify(t0)}`);
    const d0 = t0.desired.$version;
    const r0 = t0.reported.$version;

    const reported = { firmware: '1.2.3', battery: { level: 55, charging: false } };
    await sdk.device.updateReported(h, reported);

    const s1 = (await sdk.registry(hubCs, 'getTwin', dev.deviceId)).body;
    assert.equal(s1.deviceId, dev.deviceId);
    assert.ok(s1.etag, 'twin etag');
    assert.equal(s1.properties.reported.firmware, '1.2.3', JSON.stringify(s1.properties.reported));
    assert.deepEqual(s1.properties.reported.battery, reported.battery);
    assert.equal(s1.properties.reported.$version, r0 + 1, 'reported $version after one patch');
    assert.equal(s1.properties.desired.$version, d0, 'desired $version unchanged by a reported patch');

    await sdk.device.watchDesired(h);
    // Adding the listener fires it once with what the device already has.
    const initial = await waitEvent(h, 'desired', (e) => e.patch.$version === d0, 5000, 'the initial desired event');
    assert.equal(initial.patch.$version, d0);

    const desired = { telemetryInterval: 5, mode: { name: 'eco', level: 2 } };
    const u1 = await sdk.registry(hubCs, 'updateTwin', dev.deviceId, { properties: { desired } }, s1.etag);
    assert.equal(u1.status, 200);
    assert.equal(u1.body.properties.desired.telemetryInterval, 5, JSON.stringify(u1.body.properties));
    assert.deepEqual(u1.body.properties.desired.mode, desired.mode);
    assert.equal(u1.body.properties.desired.$version, d0 + 1);
    assert.ok(u1.body.etag && u1.body.etag !== s1.etag, `etag changes: ${s1.etag} → ${u1.body.etag}`);
    assert.equal(u1.body.properties.reported.firmware, '1.2.3', 'the twin PATCH answer has the reported properties');

    // The notification is the patch plus $version
    // (docs/spec/iothub-protocol.md#twin-documents).
    const n1 = await waitEvent(h, 'desired', (e) => e.patch.$version === d0 + 1, 10000, `desired event with $version ${d0 + 1}`);
    assert.deepEqual(n1.patch, { ...desired, $version: d0 + 1 });

    // Stale etag: the SDK's InvalidEtagError (rest_api_client translateError, 412).
    await assert.rejects(
      sdk.registry(hubCs, 'updateTwin', dev.deviceId, { properties: { desired: { telemetryInterval: 99 } } }, s1.etag),
      (err) => {
        assert.equal(err.sdkName, 'InvalidEtagError', String(err));
        assert.equal(err.status, 412, String(err));
        return true;
      });

    // "*" (updateTwin quotes it): a null deletes a desired property.
    const u2 = await sdk.registry(hubCs, 'updateTwin', dev.deviceId, { properties: { desired: { mode: null } } }, '*');
    assert.equal(u2.body.properties.desired.$version, d0 + 2, 'the refused update did not count');
    assert.equal(u2.body.properties.desired.mode, undefined, 'mode deleted');
    assert.equal(u2.body.properties.desired.telemetryInterval, 5, 'telemetryInterval kept (not 99)');
    const n2 = await waitEvent(h, 'desired', (e) => e.patch.$version === d0 + 2, 10000, `desired event with $version ${d0 + 2}`);
    assert.deepEqual(n2.patch, { mode: null, $version: d0 + 2 });
    const stale = (await sdk.device.events(h, 'desired')).filter((e) => e.patch.telemetryInterval === 99);
    assert.deepEqual(stale, [], 'no notification for the refused update');

    // Tags are the service's: they change the twin's etag, not the device's view.
    const u3 = await sdk.registry(hubCs, 'updateTwin', dev.deviceId, { tags: { site: 'lab' } }, u2.body.etag);
    assert.deepEqual(u3.body.tags, { site: 'lab' });
    assert.equal(u3.body.properties.desired.$version, d0 + 2, 'a tags patch leaves desired alone');

    // A reported null deletes the property.
    await sdk.device.updateReported(h, { battery: null });

    // A new GET sees the merged document.
    const t2 = await sdk.device.getTwin(h);
    assert.equal(t2.desired.$version, d0 + 2);
    assert.equal(t2.desired.telemetryInterval, 5);
    assert.equal(t2.desired.mode, undefined);
    assert.equal(t2.reported.firmware, '1.2.3');
    assert.equal(t2.reported.battery, undefined, 'reported battery deleted by null');
    assert.equal(t2.reported.$version, r0 + 2);
    assert.equal(t2.tags, undefined, 'no tags in the device\'s twin');
    assert.equal((await sdk.device.events(h, 'desired')).filter((e) => e.patch.$version > d0 + 2).length, 0,
      'no desired notification for a tags patch');
  });

  test('MQTT twin: a reported patch too deep (11 nested objects) or too large (> 32 KB) fails the update callback; the twin is unchanged', async () => {
    const dev = await createDevice('twin-limits');
    const h = await openDevice('mqtt', dev);
    const t0 = await sdk.device.getTwin(h);
    const r0 = t0.reported.$version;

    const nested = (levels) => {
      let o = { leaf: 1 };
      for (let i = levels; i >= 2; i--) o = { [`l${i}`]: o };
      return { l1: o }; // `levels` nested objects below the reported root
    };
    // Ten levels are the documented maximum (depth 10).
    await sdk.device.updateReported(h, { ok: nested(9) });

    await assert.rejects(sdk.device.updateReported(h, { deep: nested(10) }), (err) => {
      // MqttTwinClient: an answer whose body has errorCode → new Error(body.message).
      assert.ok(err.message, String(err));
      return true;
    }, '11 nested objects');

    // 9 properties of 4,000 characters: 36 KB as IoT Hub counts (key + value lengths).
    const big = {};
    for (let i = 0; i < 9; i++) big[`p${i}`] = 'x'.repeat(4000);
    await assert.rejects(sdk.device.updateReported(h, big), (err) => {
      assert.ok(err.message, String(err));
      return true;
    }, '> 32 KB');

    const s = (await sdk.registry(hubCs, 'getTwin', dev.deviceId)).body;
    assert.equal(s.properties.reported.$version, r0 + 1, 'only the valid patch counted');
    assert.equal(s.properties.reported.deep, undefined);
    assert.equal(s.properties.reported.p0, undefined);
    assert.ok(s.properties.reported.ok, 'the 10-deep patch is there');

    // The connection is still usable.
    await sdk.device.updateReported(h, { after: true });
    assert.equal((await sdk.registry(hubCs, 'getTwin', dev.deviceId)).body.properties.reported.after, true);
  });

  // ---- direct methods ----

  test('direct method: Client.invokeDeviceMethod → the device\'s onDeviceMethod handler → {status, payload}', async () => {
    const dev = await createDevice('method-echo');
    const h = await openDevice('mqtt', dev);
    await sdk.device.onMethod(h, 'reboot', 'echo');
    const payload = { delayS: 3, reason: 'compat', nested: { a: [1, 2] } };
    const res = await sdk.invokeDeviceMethod(hubCs, dev.deviceId, { methodName: 'reboot', payload, responseTimeoutInSeconds: 10 });
    assert.equal(res.status, 200);
    assert.deepEqual(res.result, { status: 200, payload: { ok: true, echo: payload } });
    const [req] = await sdk.device.events(h, 'method');
    assert.equal(req.methodName, 'reboot');
    assert.deepEqual(req.payload, payload);

    // The device's own failure status is a result, not an error (HTTP 200).
    await sdk.device.onMethod(h, 'selfTest', 'fail');
    const failed = await sdk.invokeDeviceMethod(hubCs, dev.deviceId, { methodName: 'selfTest', responseTimeoutInSeconds: 10 });
    assert.equal(failed.status, 200);
    assert.deepEqual(failed.result, { status: 500, payload: { error: 'failed on purpose' } });
    const sreq = (await sdk.device.events(h, 'method')).find((e) => e.methodName === 'selfTest');
    assert.equal(sreq.payload, null, 'no payload → null (DeviceMethod sends payload: null)');
  });

  // The Node SDK renews a token by reconnecting with CleanSession 0 and does
  // not subscribe again (mqtt.js resubscribes only clean sessions): it
  // relies on the hub keeping the session, as IoT Hub does. Before berth
  // kept persistent sessions, CONNACK said Session Present 0 and after the
  // renewal the method answered 404 DeviceNotOnline and the reported PATCH
  // was never answered.
  test('MQTT: after client.updateSharedAccessSignature the session keeps its subscriptions: methods and reported PATCHes are answered', async () => {
    const dev = await createDevice('sas-renew');
    const h = await openDevice('mqtt', dev, { sasTtl: 3600 });
    await sdk.device.getTwin(h);
    await sdk.device.onMethod(h, 'reboot', 'echo');
    const before = await sdk.invokeDeviceMethod(hubCs, dev.deviceId, { methodName: 'reboot', payload: { n: 1 }, responseTimeoutInSeconds: 10 });
    assert.deepEqual(before.result, { status: 200, payload: { ok: true, echo: { n: 1 } } });

    await sleep(1100); // a token with another se
    await sdk.device.renewSas(h, 3600);

    const after = await sdk.invokeDeviceMethod(hubCs, dev.deviceId, { methodName: 'reboot', payload: { n: 2 }, responseTimeoutInSeconds: 10, connectTimeoutInSeconds: 5 });
    assert.deepEqual(after.result, { status: 200, payload: { ok: true, echo: { n: 2 } } });
    await sdk.device.updateReported(h, { renewed: true });
    assert.equal((await sdk.registry(hubCs, 'getTwin', dev.deviceId)).body.properties.reported.renewed, true);
    assert.deepEqual(await sdk.device.events(h, 'error'), [], 'no client error');
  });

  test('direct method: connectTimeoutInSeconds waits for a device that connects and subscribes meanwhile', async () => {
    const dev = await createDevice('method-late');
    const started = Date.now();
    const pending = sdk.invokeDeviceMethod(hubCs, dev.deviceId, { methodName: 'reboot', payload: { late: true }, responseTimeoutInSeconds: 10, connectTimeoutInSeconds: 15 });
    await sleep(1000);
    const h = await openDevice('mqtt', dev);
    await sdk.device.onMethod(h, 'reboot', 'echo');
    const res = await pending;
    assert.deepEqual(res.result, { status: 200, payload: { ok: true, echo: { late: true } } });
    assert.ok(Date.now() - started >= 1000, 'answered only after the device came');
  });

  test('direct method: a device that is not connected → 404 DeviceNotOnline; an unknown device → DeviceNotFoundError', async () => {
    const dev = await createDevice('method-offline');
    await assert.rejects(
      sdk.invokeDeviceMethod(hubCs, dev.deviceId, { methodName: 'reboot', payload: {}, responseTimeoutInSeconds: 10 }),
      (err) => {
        // azure-iothub rest_api_client translateError: 404 with a code other
        // than DeviceNotFound / IotHubNotFound → Error('Not found').
        assert.equal(err.status, 404, String(err));
        assert.equal(err.headers?.['iothub-errorcode'], 'DeviceNotOnline', String(err));
        assert.match(err.body?.Message ?? '', /^ErrorCode:DeviceNotOnline;/, String(err));
        return true;
      });
    await assert.rejects(
      sdk.invokeDeviceMethod(hubCs, 'method-no-such-device', { methodName: 'reboot', payload: {}, responseTimeoutInSeconds: 10 }),
      (err) => {
        assert.equal(err.sdkName, 'DeviceNotFoundError', String(err));
        assert.equal(err.status, 404, String(err));
        return true;
      });
  });

  test('direct method: a device that never answers → 504 GatewayTimeoutError after responseTimeoutInSeconds (5)', async () => {
    const dev = await createDevice('method-silent');
    const h = await openDevice('mqtt', dev);
    await sdk.device.onMethod(h, 'reboot', 'silent');
    const started = Date.now();
    await assert.rejects(
      sdk.invokeDeviceMethod(hubCs, dev.deviceId, { methodName: 'reboot', payload: { x: 1 }, responseTimeoutInSeconds: 5 }),
      (err) => {
        assert.equal(err.sdkName, 'GatewayTimeoutError', String(err));
        assert.equal(err.status, 504, String(err));
        return true;
      });
    const ms = Date.now() - started;
    assert.ok(ms >= 4500 && ms < 15000, `answered after ${ms} ms`);
    assert.equal((await sdk.device.events(h, 'method')).length, 1, 'the device got the request');
  });

  // ---- cloud-to-device ----

  test('C2D over MQTT: a queued message (JSON form) and a live one (raw form) reach client.on(\'message\') with their properties; complete empties the queue', async () => {
    const dev = await createDevice('c2d-mqtt');
    const sent = assertSent(await sendJson(dev.deviceId, 'hello over mqtt', { 'iothub-messageid': 'c2d-mqtt-1', 'iothub-correlationid': 'corr-1', 'iothub-app-Name': 'v' }), 'JSON send');
    assert.equal(sent.messageId, 'c2d-mqtt-1', JSON.stringify(sent));
    assert.equal(await c2dCount(dev.deviceId), 1, 'queued for an offline device');

    const h = await openDevice('mqtt', dev);
    await sdk.device.listenC2D(h);
    const { message: m1 } = await waitEvent(h, 'message', () => true, 10000, 'the queued message');
    assert.equal(m1.data, 'hello over mqtt');
    assert.equal(m1.messageId, 'c2d-mqtt-1');
    assert.equal(m1.correlationId, 'corr-1');
    assert.equal(m1.properties.Name, 'v', `msg.properties.getValue('Name'): ${JSON.stringify(m1.properties)}`);
    assert.equal(m1.to, `/devices/${dev.deviceId}/messages/deviceBound`);
    await sdk.device.settle(h, m1.ref, 'complete');
    await waitC2DCount(dev.deviceId, 0);

    // Sent while the device is connected: delivered at once. Header names
    // arrive lower-cased (see frontend/rest cloudHeaderProperties).
    assertSent(await sendRaw(dev.deviceId, '{"live":"50% & more"}', {
      'iothub-messageid': 'c2d-mqtt-2', 'iothub-contenttype': 'application/json', 'iothub-contentencoding': 'utf-8',
      'iothub-app-unit': 'celsius', 'iothub-app-path': '/a/b?c=d&e',
    }), 'raw send');
    const { message: m2 } = await waitEvent(h, 'message', (e) => e.message.messageId === 'c2d-mqtt-2', 10000, 'the live message');
    assert.equal(m2.data, '{"live":"50% & more"}');
    assert.equal(m2.contentType, 'application/json', '$.ct');
    assert.equal(m2.contentEncoding, 'utf-8', '$.ce');
    assert.ok(!Number.isNaN(Date.parse(m2.expiryTimeUtc)), `$.exp is a time: ${m2.expiryTimeUtc}`);
    assert.equal(m2.properties.unit, 'celsius', JSON.stringify(m2.properties));
    assert.equal(m2.properties.path, '/a/b?c=d&e', 'a value with / ? & = survives the topic');
    await sdk.device.settle(h, m2.ref, 'complete');
    await waitC2DCount(dev.deviceId, 0);
    assert.equal((await sdk.device.events(h, 'message')).length, 2, 'each message delivered once');
  });

  test('C2D over HTTPS: receive + complete, reject, and abandon (redelivered with a higher delivery count)', async () => {
    const dev = await createDevice('c2d-http');
    for (const [i, data] of [[1, 'first'], [2, 'second']]) {
      assertSent(await sendRaw(dev.deviceId, data, { 'iothub-messageid': `c2d-http-${i}`, 'iothub-app-seq': String(i) }), `send ${i}`);
    }
    // Poll every second (azure-iot-device-http's receivePolicy.interval, in seconds).
    const h = await openDevice('http', dev, { receiveInterval: 1 });
    await sdk.device.listenC2D(h);
    const { message: a } = await waitEvent(h, 'message', (e) => e.message.messageId === 'c2d-http-1', 10000, 'message 1');
    const { message: b } = await waitEvent(h, 'message', (e) => e.message.messageId === 'c2d-http-2', 10000, 'message 2');
    assert.equal(a.data, 'first');
    assert.equal(b.data, 'second');
    // azure-iot-http-base toMessage keeps iothub-app-* headers under their full (lower-case) name.
    assert.equal(a.properties['iothub-app-seq'], '1', JSON.stringify(a.properties));
    assert.ok(a.lockToken, 'lock token from the ETag');
    assert.equal(a.to, `/devices/${dev.deviceId}/messages/deviceBound`);
    assert.equal(a.deliveryCount, 1, 'iothub-deliverycount of the first delivery');

    await sdk.device.settle(h, a.ref, 'abandon');
    await sdk.device.settle(h, b.ref, 'reject');
    const { message: a2 } = await waitEvent(h, 'message', (e) => e.message.messageId === 'c2d-http-1' && e.message.ref !== a.ref, 10000, 'message 1 again after abandon');
    assert.equal(a2.data, 'first');
    assert.notEqual(a2.lockToken, a.lockToken, 'a new lock token');
    assert.equal(a2.deliveryCount, 2, 'iothub-deliverycount after abandon');
    await sdk.device.settle(h, a2.ref, 'complete');
    await waitC2DCount(dev.deviceId, 0);

    // Settling again with a used lock token: the SDK's DeviceMessageLockLost (412).
    await assert.rejects(sdk.device.settle(h, a2.ref, 'complete'), (err) => {
      assert.equal(err.status, 412, String(err));
      return true;
    });
    await sleep(1500); // a poll or two: the rejected message does not come back
    const again = (await sdk.device.events(h, 'message')).filter((e) => e.message.messageId === 'c2d-http-2');
    assert.equal(again.length, 1, 'a rejected message is not redelivered');
  });

  test('C2D send extension: the answer carries the message ID, times, and a sequence number a JavaScript client can read exactly', async () => {
    const dev = await createDevice('c2d-answer');
    const before = Date.now();
    const r1 = await sendRaw(dev.deviceId, 'one', { 'iothub-messageid': 'ans-1' });
    const r2 = await sendRaw(dev.deviceId, 'two');
    const a1 = assertSent(r1, 'send 1');
    const a2 = assertSent(r2, 'send 2');
    assert.equal(a1.messageId, 'ans-1');
    assert.ok(a2.messageId, 'the hub assigns a message ID when none is given');
    const enq = Date.parse(a1.enqueuedTimeUtc);
    assert.ok(Math.abs(enq - before) < 60000, `enqueuedTimeUtc ${a1.enqueuedTimeUtc}`);
    assert.ok(Math.abs(Date.parse(a1.expiryTimeUtc) - enq - 3600000) < 1000, `default TTL 1 h: ${a1.expiryTimeUtc}`);
    // JSON.parse turns integers beyond 2^53 - 1 into nearby doubles, so
    // the sequence numbers must stay below that (IoT Hub numbers each
    // device queue from 1, docs/spec/iothub-protocol.md#cloud-to-device-queue).
    const seqs = [r1, r2].map((r) => /"sequenceNumber"\s*:\s*(-?\d+)/.exec(r.text)?.[1]);
    for (const s of seqs) {
      assert.ok(s !== undefined, 'sequenceNumber in the answer');
      assert.ok(BigInt(s) <= BigInt(Number.MAX_SAFE_INTEGER), `sequenceNumber ${s} is beyond JavaScript's exact integers (2^53 - 1)`);
    }
    assert.ok(BigInt(seqs[1]) > BigInt(seqs[0]), 'sequence numbers increase');
    await sdk.hubRest(hubCs, 'DELETE', `/devices/${dev.deviceId}/commands?${API}`);
  });

  test('C2D: the 51st queued message is refused with 403 DeviceMaximumQueueDepthExceeded; DELETE /devices/{id}/commands purges', async () => {
    const dev = await createDevice('c2d-queue-full');
    for (let i = 1; i <= 50; i += 10) {
      const batch = [];
      for (let j = i; j < i + 10; j++) batch.push(sendRaw(dev.deviceId, `m${j}`, { 'iothub-messageid': `q-${j}` }));
      for (const res of await Promise.all(batch)) assertSent(res, 'one of the first 50');
    }
    const res = await sendRaw(dev.deviceId, 'm51', { 'iothub-messageid': 'q-51' });
    assert.equal(res.status, 403, `${res.status} ${res.text}`);
    assert.equal(res.headers['iothub-errorcode'], 'DeviceMaximumQueueDepthExceeded');
    assert.match(res.json?.Message ?? '', /^ErrorCode:DeviceMaximumQueueDepthExceeded;/, res.text);
    assert.equal(await c2dCount(dev.deviceId), 50);

    const purge = await sdk.hubRest(hubCs, 'DELETE', `/devices/${dev.deviceId}/commands?${API}`);
    assert.equal(purge.status, 200, purge.text);
    assert.equal(purge.json.totalMessagesPurged, 50, purge.text);
    assert.equal(purge.json.deviceId, dev.deviceId);
    assert.equal(await c2dCount(dev.deviceId), 0);
  });

  test('C2D: a message over 64 KB is refused with 413 MessageTooLarge, and the error names the 64 KB limit', async () => {
    const dev = await createDevice('c2d-too-large');
    assertSent(await sendRaw(dev.deviceId, 'x'.repeat(60 * 1024)), '60 KB');
    const res = await sendRaw(dev.deviceId, 'x'.repeat(64 * 1024 + 1));
    assert.equal(res.status, 413, `${res.status} ${res.text}`);
    assert.equal(res.headers['iothub-errorcode'], 'MessageTooLarge');
    assert.equal(await c2dCount(dev.deviceId), 1, 'only the 60 KB message is queued');
    // The C2D limit is 64 KB
    // (docs/spec/iothub-protocol.md#cloud-to-device-queue); a message that
    // names another limit misleads the sender.
    assert.doesNotMatch(res.json?.Message ?? '', /256 KB/, res.text);
  });

  test('C2D: a message that expired in the queue is never delivered', async () => {
    const dev = await createDevice('c2d-expired');
    const expiry = new Date(Date.now() + 1500);
    assertSent(await sendRaw(dev.deviceId, 'too late', { 'iothub-messageid': 'c2d-exp-1', 'iothub-expiry': expiry.toISOString() }), 'expiring send');
    assertSent(await sendRaw(dev.deviceId, 'in time', { 'iothub-messageid': 'c2d-exp-2' }), 'send');
    await sleep(Math.max(0, expiry.getTime() - Date.now()) + 500);

    const h = await openDevice('mqtt', dev);
    await sdk.device.listenC2D(h);
    await waitEvent(h, 'message', (e) => e.message.messageId === 'c2d-exp-2', 10000, 'the live message');
    await sleep(500);
    const ids = (await sdk.device.events(h, 'message')).map((e) => e.message.messageId);
    assert.deepEqual(ids, ['c2d-exp-2'], 'the expired message was not delivered (it was older, so it would have come first)');
    await waitC2DCount(dev.deviceId, 0);
  });

  test('C2D sent with the CLI (berth hub c2d send -d ID --data TEXT --props "a=1;b=2") reaches the device', async () => {
    const dev = await createDevice('c2d-cli');
    const h = await openDevice('mqtt', dev);
    await sdk.device.listenC2D(h);
    const argv = ['hub', 'c2d', 'send', '--data-dir', berth.dataDir, '-d', dev.deviceId, '--data', 'from the cli', '--props', 'a=1;b=2'];
    const { code, out, err } = await new Promise((resolve, reject) => {
      const child = spawn(berthBin(), argv, { stdio: ['ignore', 'pipe', 'pipe'] });
      let o = '';
      let e = '';
      child.stdout.on('data', (d) => { o += d; });
      child.stderr.on('data', (d) => { e += d; });
      const t = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`berth ${argv.join(' ')} still running after 20 s`)); }, 20000);
      child.once('error', reject);
      child.once('close', (c) => { clearTimeout(t); resolve({ code: c, out: o, err: e }); });
    });
    assert.equal(code, 0, `berth ${argv.join(' ')} exited ${code}: ${out} ${err}`);
    const { message } = await waitEvent(h, 'message', () => true, 10000, 'the CLI message');
    assert.equal(message.data, 'from the cli');
    assert.equal(message.properties.a, '1', JSON.stringify(message.properties));
    assert.equal(message.properties.b, '2', JSON.stringify(message.properties));
    await waitC2DCount(dev.deviceId, 0);
  });
});
