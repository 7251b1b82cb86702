// Device-to-cloud telemetry through the official Azure IoT Hub device SDK
// (azure-iot-device Client with azure-iot-device-mqtt or
// azure-iot-device-http), against a real berth: a device is provisioned with
// the DPS device SDK (enrollment group, derived key), connects to the hub DPS
// assigned with the connection string an application builds from the
// registration result, sends telemetry, and the test reads the messages back
// as a user does, with `berth hub monitor-events` (lib/monitor.mjs), which
// tails berth's telemetry stream (NATS JetStream).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { startBerth } from '../lib/berth.mjs';
import { deriveDeviceKey, randomKey, startSdkWorker } from '../lib/sdk.mjs';
import { allEvents, deviceEvents } from '../lib/monitor.mjs';

// Own loopback address: $BERTH_COMPAT_HUB_IP, or a free random one (lib/berth.mjs).
const IP = process.env.BERTH_COMPAT_HUB_IP;
// One hub call (open + sends + close) must settle within this.
const HUB_CALL_MS = 20000;

const transports = [
  ['mqtt', 'MQTT'],
  ['http', 'HTTPS'],
];

// What an application builds from the DPS registration result
// (docs/spec/iothub-protocol.md#connection-strings).
const deviceConnectionString = (hub, deviceId, key) => `HostName=${hub};DeviceId=${deviceId};SharedAccessKey=${key}`;

describe('IoT Hub device SDK: telemetry (symmetric key, provisioned by DPS)', { timeout: 150000 }, () => {
  let berth;
  let sdk;
  let info;
  let groupKey;
  const provisioned = new Map(); // registration ID -> promise of {deviceId, hub, key}

  before(async () => {
    berth = await startBerth(IP);
    info = berth.info;
    for (const k of ['hubConnectionString', 'natsUrl', 'streamName', 'streamSubjectPrefix']) {
      assert.ok(info[k], `client.json has ${k}`);
    }
    sdk = await startSdkWorker(berth.caFile);
    const g = await sdk.service(info.serviceConnectionString, 'createOrUpdateEnrollmentGroup', {
      enrollmentGroupId: 'hub-sdk-group', attestation: { type: 'symmetricKey' },
    });
    groupKey = g.body.attestation.symmetricKey.primaryKey;
    assert.ok(groupKey, 'generated group primary key');
  });

  after(async () => {
    if (sdk) await sdk.close();
    if (berth) await berth.stop();
  });

  // Provisions a group member with the DPS device SDK over `transport` and
  // returns what the device needs for the hub (once per transport and label).
  const provision = (transport, label = 'dev') => {
    const regId = `hub-sdk-${transport}-${label}`;
    if (!provisioned.has(regId)) {
      provisioned.set(regId, (async () => {
        const key = deriveDeviceKey(groupKey, regId);
        const { result } = await sdk.register(transport, info.globalEndpoint, info.idScope, regId, key);
        assert.equal(result.status, 'assigned');
        assert.equal(result.assignedHub, info.hubHostName);
        assert.equal(result.deviceId, regId);
        return { deviceId: result.deviceId, hub: result.assignedHub, key };
      })());
    }
    return provisioned.get(regId);
  };

  // The checks every telemetry event of a provisioned device must pass: the
  // hub's stamps, which monitor-events prints as annotations (az's shape).
  const assertStamped = (ev, deviceId, sentAt) => {
    assert.equal(ev.origin, deviceId, 'origin');
    const anno = ev.annotations ?? {};
    assert.equal(anno['iothub-connection-device-id'], deviceId);
    assert.equal(typeof anno['iothub-enqueuedtime'], 'number', `iothub-enqueuedtime as Unix ms: ${anno['iothub-enqueuedtime']}`);
    assert.ok(Math.abs(anno['iothub-enqueuedtime'] - sentAt) < 60000, `iothub-enqueuedtime ${anno['iothub-enqueuedtime']} near ${sentAt}`);
    assert.equal(anno['iothub-message-source'], 'Telemetry');
    assert.ok(anno['iothub-connection-auth-generation-id'], 'iothub-connection-auth-generation-id');
    const auth = JSON.parse(anno['iothub-connection-auth-method'] ?? 'null');
    assert.equal(auth?.scope, 'device', `auth method ${anno['iothub-connection-auth-method']}`);
    assert.equal(auth?.type, 'sas', `auth method ${anno['iothub-connection-auth-method']}`);
  };

  for (const [transport, name] of transports) {
    test(`${name}: Client.fromConnectionString + sendEvent; body and properties arrive intact in the stream`, async (t) => {
      const dev = await provision(transport);
      const cs = deviceConnectionString(dev.hub, dev.deviceId, dev.key);
      const run = `${transport}-${Date.now()}`;
      const messages = [{
        data: JSON.stringify({ temperature: 21.5, humidity: 40, run }),
        messageId: `m-${run}-1`,
        correlationId: `c-${run}`,
        contentType: 'application/json',
        contentEncoding: 'utf-8',
        properties: [['unit', 'celsius']],
      }];
      if (transport === 'mqtt') {
        // Names keep their case on MQTT; the SDK percent-encodes names and
        // values on the topic (encodeURIComponent), berth must decode them.
        messages.push({
          data: 'plain text, second message',
          messageId: `m-${run}-2`,
          properties: [['temperatureAlert', 'true'], ['a/b', '50% °C & more=1'], ['unit', 'celsius']],
        });
      }
      const sentAt = Date.now();
      const timing = await sdk.hubSend(transport, cs, messages, 'single', HUB_CALL_MS);
      t.diagnostic(`open ${timing.openMs} ms, ${messages.length} sendEvent ${timing.sendMs} ms`);

      // berth acknowledges only what is durable in the stream, so the
      // messages are there when sendEvent resolves.
      const got = await deviceEvents(berth, dev.deviceId, messages.length);
      assert.equal(got.length, messages.length, JSON.stringify(got));
      const [m1] = got;
      assertStamped(m1, dev.deviceId, sentAt);
      // content type application/json: monitor-events prints the body as JSON.
      assert.deepEqual(m1.payload, { temperature: 21.5, humidity: 40, run });
      // az's AMQP names: message-id → message_id, …
      assert.deepEqual(m1.properties.system, {
        content_encoding: 'utf-8',
        content_type: 'application/json',
        correlation_id: messages[0].correlationId,
        message_id: messages[0].messageId,
      });
      assert.deepEqual(m1.properties.application, { unit: 'celsius' });

      if (transport === 'mqtt') {
        const m2 = got[1];
        assertStamped(m2, dev.deviceId, sentAt);
        assert.equal(m2.payload, 'plain text, second message', 'a body that is not JSON is printed as text');
        assert.deepEqual(m2.properties.system, { message_id: messages[1].messageId }, 'messages in the order sent');
        assert.deepEqual(m2.properties.application, { temperatureAlert: 'true', 'a/b': '50% °C & more=1', unit: 'celsius' });
        assert.deepEqual(Object.keys(m2.properties.application), ['temperatureAlert', 'a/b', 'unit'], 'application properties in the device order');
      }
    });
  }

  test('HTTPS: sendEventBatch; each message of the batch arrives with its body and properties, in order', async (t) => {
    const dev = await provision('http', 'batch');
    const cs = deviceConnectionString(dev.hub, dev.deviceId, dev.key);
    const messages = [1, 2, 3].map((i) => ({
      data: JSON.stringify({ seq: i, temperature: 20 + i }),
      // The Node SDK's batch body carries the application properties only
      // (azure-iot-device-http Http.sendEventBatch: {"body": base64, "properties": {"iothub-app-k": v}}).
      properties: [['unit', 'celsius'], ['batchIndex', String(i)]],
    }));
    const sentAt = Date.now();
    const timing = await sdk.hubSend('http', cs, messages, 'batch', HUB_CALL_MS);
    t.diagnostic(`sendEventBatch of ${messages.length} in ${timing.sendMs} ms`);
    const got = await deviceEvents(berth, dev.deviceId, messages.length);
    assert.equal(got.length, 3, JSON.stringify(got));
    got.forEach((m, i) => {
      assertStamped(m, dev.deviceId, sentAt);
      // No content type: monitor-events prints a body that parses as JSON as JSON.
      assert.deepEqual(m.payload, JSON.parse(messages[i].data), `body of batch message ${i}`);
      // Batch JSON keeps the property names' case (batchIndex).
      assert.deepEqual(m.properties.application, { unit: 'celsius', batchIndex: String(i + 1) }, `properties of batch message ${i}`);
    });
  });

  for (const [transport, name] of transports) {
    test(`${name}: a client with the wrong key is refused (UnauthorizedError) and nothing reaches the stream`, async () => {
      const dev = await provision(transport, 'wrongkey');
      const cs = deviceConnectionString(dev.hub, dev.deviceId, randomKey());
      const total = (await allEvents(berth)).length;
      await assert.rejects(
        sdk.hubSend(transport, cs, [{ data: '{"t":99}', messageId: 'must-not-arrive', properties: [['unit', 'celsius']] }], 'single', HUB_CALL_MS),
        (err) => {
          if (transport === 'http') {
            // HTTP: open() makes no request; the POST of sendEvent gets 401.
            assert.equal(err.stage, 'send', String(err));
            assert.equal(err.sdkName, 'UnauthorizedError', String(err));
            assert.equal(err.status, 401, String(err));
            assert.equal(err.headers?.['iothub-errorcode'], 'IotHubUnauthorizedAccess', String(err));
          } else {
            // MQTT: CONNACK 5 → mqtt.js "Connection refused: Not authorized";
            // azure-iot-device-mqtt wraps a failure of the first connection
            // as Error("Failure on first connection (Not authorized): …")
            // (SRS_NODE_DEVICE_MQTT_41_006) and translateError of
            // azure-iot-mqtt-base turns that into UnauthorizedError.
            assert.equal(err.stage, 'open', String(err));
            assert.equal(err.sdkName, 'UnauthorizedError', String(err));
            assert.match(err.message, /Not authorized/i, String(err));
          }
          return true;
        });
      assert.deepEqual(await deviceEvents(berth, dev.deviceId), [], 'no message of the device in the stream');
      assert.equal((await allEvents(berth)).length, total, 'stream message count unchanged');
    });
  }

  for (const [transport, name] of transports) {
    test(`${name}: a device the hub does not know is refused like a wrong key`, async () => {
      const deviceId = `hub-sdk-${transport}-never-provisioned`;
      const total = (await allEvents(berth)).length;
      await assert.rejects(
        sdk.hubSend(transport, deviceConnectionString(info.hubHostName, deviceId, randomKey()), [{ data: 'x' }], 'single', HUB_CALL_MS),
        (err) => {
          assert.equal(err.stage, transport === 'http' ? 'send' : 'open', String(err));
          if (transport === 'http') {
            assert.equal(err.status, 401, String(err));
            assert.equal(err.sdkName, 'UnauthorizedError', String(err));
          } else {
            assert.equal(err.sdkName, 'UnauthorizedError', String(err));
            assert.match(err.message, /Not authorized/i, String(err));
          }
          return true;
        });
      assert.deepEqual(await deviceEvents(berth, deviceId), [], 'no message of the device in the stream');
      assert.equal((await allEvents(berth)).length, total, 'stream message count unchanged');
    });
  }
});
