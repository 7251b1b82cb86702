// DPS and hub throttles (berth serve --throttle) met by the official Node
// SDKs: a DPS registration storm gets 429 with retry-after (the MQTT
// transport retries by itself, the HTTPS one hands the 429 to the
// application, which retries; over AMQP the request is rejected as
// throttled and the SDK retries by itself), and telemetry over the D2C rate closes the
// device's MQTT connection, which the device SDK reopens to resend. The
// back-off a firmware team wants to see against Azure's quotas before it
// meets them.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import https from 'node:https';
import { after, before, describe, test } from 'node:test';

import { freeLoopbackAddress, startBerth } from '../lib/berth.mjs';
import { deriveDeviceKey, startSdkWorker } from '../lib/sdk.mjs';
import { deviceEvents } from '../lib/monitor.mjs';

// Own loopback address: $BERTH_COMPAT_THROTTLE_IP, or a free random one.
const IP = process.env.BERTH_COMPAT_THROTTLE_IP;

// GET https://{ip}:8443/metrics, trusting berth's CA.
function metrics(ip, caFile) {
  return new Promise((resolve, reject) => {
    https.get({ host: ip, port: 8443, path: '/metrics', ca: fs.readFileSync(caFile) }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { text += c; });
      res.on('end', () => resolve(text));
    }).on('error', reject);
  });
}

describe('DPS throttled as Azure (Node provisioning SDK)', { timeout: 150000 }, () => {
  let berth;
  let sdk;
  let info;
  let groupKey;

  before(async () => {
    const ip = IP ?? await freeLoopbackAddress();
    // Azure's S1 table, with the registration rate lowered to 2 per 4 s so
    // that a storm of six is throttled; retry-after on 202s of 1 s keeps
    // the throttle's own wait (2 s for one token) visible.
    berth = await startBerth(ip, ['--throttle', 'azure-s1', '--throttle-limit', 'dps-register=2/4s',
      '--throttle-limit', 'd2c=2/4s', '--retry-after', '1', '--admin-addr', `${ip}:8443`]);
    info = berth.info;
    sdk = await startSdkWorker(berth.caFile);
    const g = await sdk.service(info.serviceConnectionString, 'createOrUpdateEnrollmentGroup', {
      enrollmentGroupId: 'throttle-group', attestation: { type: 'symmetricKey' },
    });
    groupKey = g.body.attestation.symmetricKey.primaryKey;
  });

  after(async () => {
    if (sdk) await sdk.close();
    if (berth) await berth.stop();
  });

  // The counter of refused registrations in berth's /metrics.
  const refusedSoFar = async () => {
    const text = await metrics(berth.ip, berth.caFile);
    const line = text.split('\n').find((l) => l.startsWith('berth_throttled_requests_total{hub="",operation="dps-register"}'));
    return line ? Number(line.split(' ').pop()) : 0;
  };

  test('MQTT: a storm of four registrations gets 429 + retry-after; the SDK waits, retries and all are assigned', async (t) => {
    const before = await refusedSoFar();
    const ids = Array.from({ length: 4 }, (_, i) => `storm-mqtt-${i}`);
    const started = Date.now();
    const results = await Promise.all(ids.map((id) =>
      sdk.register('mqtt', info.globalEndpoint, info.idScope, id, deriveDeviceKey(groupKey, id))));
    results.forEach(({ result }, i) => {
      assert.equal(result.status, 'assigned');
      assert.equal(result.registrationId, ids[i]);
      assert.equal(result.assignedHub, info.hubHostName);
    });
    // At most two pass at once: the other two were refused at least once.
    const refused = (await refusedSoFar()) - before;
    assert.ok(refused >= 2, `throttled ${refused} times, want at least 2`);
    t.diagnostic(`4 devices assigned in ${Date.now() - started} ms after ${refused} answers of 429`);
  });

  test('HTTPS: the SDK hands the 429 to the application (ThrottlingError, retry-after, 429001); retrying after it succeeds', async (t) => {
    // azure-iot-provisioning-device-http's own ">= 429: retry" branch is
    // never reached: azure-iot-http-base turns every status >= 300 into an
    // error first (docs/spec/dps-protocol.md#errors). So over HTTPS the
    // application is the one that backs off, as a firmware would.
    const ids = Array.from({ length: 4 }, (_, i) => `storm-http-${i}`);
    let throttled = 0;
    const registerWithBackOff = async (id) => {
      for (let attempt = 0; attempt < 10; attempt++) {
        try {
          return await sdk.register('http', info.globalEndpoint, info.idScope, id, deriveDeviceKey(groupKey, id));
        } catch (err) {
          if (err.sdkName !== 'ThrottlingError') throw err;
          throttled++;
          assert.equal(err.status, 429, String(err));
          assert.equal(err.body?.errorCode, 429001, String(err));
          const retryAfter = Number(err.headers?.['retry-after']);
          assert.ok(Number.isInteger(retryAfter) && retryAfter >= 1, `retry-after ${err.headers?.['retry-after']}`);
          await new Promise((r) => setTimeout(r, retryAfter * 1000));
        }
      }
      throw new Error(`${id}: still throttled after 10 attempts`);
    };
    const results = await Promise.all(ids.map(registerWithBackOff));
    results.forEach(({ result }, i) => {
      assert.equal(result.status, 'assigned');
      assert.equal(result.registrationId, ids[i]);
    });
    assert.ok(throttled >= 2, `the SDK reported ${throttled} throttled registrations, want at least 2`);
    t.diagnostic(`4 devices assigned after ${throttled} ThrottlingErrors`);
  });

  test('AMQP: a storm of four registrations gets requests rejected as throttled with retry-after; the SDK waits, retries and all are assigned', async (t) => {
    // docs/amqp-wire.md, "DPS": a throttled register is rejected with
    // com.microsoft:device-container-throttled and info retry-after, which
    // azure-iot-provisioning-device-amqp retries on its own.
    const before = await refusedSoFar();
    const ids = Array.from({ length: 4 }, (_, i) => `storm-amqp-${i}`);
    const started = Date.now();
    const results = await Promise.all(ids.map((id) =>
      sdk.register('amqp', info.globalEndpoint, info.idScope, id, deriveDeviceKey(groupKey, id))));
    results.forEach(({ result }, i) => {
      assert.equal(result.status, 'assigned');
      assert.equal(result.registrationId, ids[i]);
    });
    const refused = (await refusedSoFar()) - before;
    assert.ok(refused >= 2, `throttled ${refused} times, want at least 2`);
    t.diagnostic(`4 devices assigned over AMQP in ${Date.now() - started} ms after ${refused} throttled requests`);
  });

  test('hub, MQTT: telemetry over the D2C rate closes the connection; the device SDK reconnects, resends, and every message arrives', async (t) => {
    const deviceId = 'd2c-node-1';
    const r = await sdk.registry(info.hubConnectionString, 'create', { deviceId });
    const key = r.body.authentication.symmetricKey.primaryKey;
    const cs = `HostName=${info.hubHostName};DeviceId=${deviceId};SharedAccessKey=${key}`;
    const messages = Array.from({ length: 5 }, (_, i) => ({ data: `m-${i}`, messageId: `m-${i}` }));
    const timing = await sdk.hubSend('mqtt', cs, messages, 'single', 60000);
    t.diagnostic(`5 sendEvent (2 per 4 s allowed) in ${timing.sendMs} ms`);
    const got = await deviceEvents(berth, deviceId, 5);
    const ids = new Set(got.map((e) => e.properties?.system?.message_id));
    assert.deepEqual([...ids].sort(), messages.map((m) => m.messageId), JSON.stringify(got));
    const text = await metrics(berth.ip, berth.caFile);
    assert.ok(text.split('\n').some((l) => l.startsWith('berth_throttled_requests_total{hub="' + info.hubHostName.toLowerCase() + '",operation="d2c"}')),
      'throttled D2C sends counted');
  });
});
