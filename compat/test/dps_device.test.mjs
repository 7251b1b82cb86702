// Device provisioning through the official Azure IoT Node SDKs:
// ProvisioningDeviceClient + SymmetricKeySecurityClient over MQTT
// (azure-iot-provisioning-device-mqtt) and HTTPS
// (azure-iot-provisioning-device-http), against a real berth.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { startBerth } from '../lib/berth.mjs';
import { deriveDeviceKey, randomKey, startSdkWorker } from '../lib/sdk.mjs';

// Own loopback address: $BERTH_COMPAT_DEVICE_IP, or a free random one (lib/berth.mjs).
const IP = process.env.BERTH_COMPAT_DEVICE_IP;

describe('DPS device SDK (symmetric key)', { timeout: 150000 }, () => {
  let berth;
  let sdk;
  let info;
  const individual = {}; // registrationId -> primary key
  let groupKey;

  before(async () => {
    berth = await startBerth(IP);
    info = berth.info;
    sdk = await startSdkWorker(berth.caFile);
    const cs = info.serviceConnectionString;
    // Enrollments are made with the service SDK; no keys given, so berth generates them.
    for (const [id, deviceId] of [['sdk-mqtt-ind-1', undefined], ['sdk-http-ind-1', 'sdk-http-custom-device-id']]) {
      const enrollment = { registrationId: id, attestation: { type: 'symmetricKey' } };
      if (deviceId) enrollment.deviceId = deviceId;
      const r = await sdk.service(cs, 'createOrUpdateIndividualEnrollment', enrollment);
      individual[id] = r.body.attestation.symmetricKey.primaryKey;
      assert.ok(individual[id], `generated primary key for ${id}`);
    }
    const g = await sdk.service(cs, 'createOrUpdateEnrollmentGroup', {
      enrollmentGroupId: 'sdk-group-1', attestation: { type: 'symmetricKey' },
    });
    groupKey = g.body.attestation.symmetricKey.primaryKey;
    assert.ok(groupKey, 'generated group primary key');
  });

  after(async () => {
    if (sdk) await sdk.close();
    if (berth) await berth.stop();
  });

  test('derived key matches the vector in Microsoft docs (how-to-legacy-device-symm-key)', () => {
    assert.equal(
      deriveDeviceKey('8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==',
        'sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6'),
      'Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc=');
  });

  test('MQTT, individual enrollment: assigned to the hub, deviceId = registrationId', async (t) => {
    const { result, ms } = await sdk.register('mqtt', info.globalEndpoint, info.idScope, 'sdk-mqtt-ind-1', individual['sdk-mqtt-ind-1']);
    assert.equal(result.assignedHub, info.hubHostName);
    assert.equal(result.deviceId, 'sdk-mqtt-ind-1');
    assert.equal(result.registrationId, 'sdk-mqtt-ind-1');
    assert.equal(result.status, 'assigned');
    t.diagnostic(`registered in ${ms} ms`);
  });

  test('HTTPS, individual enrollment with a deviceId: assigned, deviceId from the enrollment', async () => {
    const { result } = await sdk.register('http', info.globalEndpoint, info.idScope, 'sdk-http-ind-1', individual['sdk-http-ind-1']);
    assert.equal(result.assignedHub, info.hubHostName);
    assert.equal(result.deviceId, 'sdk-http-custom-device-id');
    assert.equal(result.registrationId, 'sdk-http-ind-1');
    assert.equal(result.status, 'assigned');
  });

  test('MQTT, enrollment group with a derived key and a provisioning payload: assigned, deviceId = registrationId', async () => {
    const regId = 'sdk-mqtt-grp-dev-1';
    const { result } = await sdk.register('mqtt', info.globalEndpoint, info.idScope, regId, deriveDeviceKey(groupKey, regId),
      { modelId: 'dtmi:com:example:Thermostat;1' });
    assert.equal(result.assignedHub, info.hubHostName);
    assert.equal(result.deviceId, regId);
    assert.equal(result.status, 'assigned');
    assert.equal(result.symmetricKey?.enrollmentGroupId, 'sdk-group-1');
  });

  test('HTTPS, enrollment group with a derived key: assigned, deviceId = registrationId', async () => {
    const regId = 'sdk-http-grp-dev-1';
    const { result } = await sdk.register('http', info.globalEndpoint, info.idScope, regId, deriveDeviceKey(groupKey, regId));
    assert.equal(result.assignedHub, info.hubHostName);
    assert.equal(result.deviceId, regId);
    assert.equal(result.status, 'assigned');
    assert.equal(result.symmetricKey?.enrollmentGroupId, 'sdk-group-1');
  });

  test('six group devices register at once (3 MQTT, 3 HTTPS), each gets its own device', async () => {
    const ids = Array.from({ length: 6 }, (_, i) => `sdk-burst-${i}`);
    const results = await Promise.all(ids.map((id, i) =>
      sdk.register(i % 2 ? 'http' : 'mqtt', info.globalEndpoint, info.idScope, id, deriveDeviceKey(groupKey, id))));
    results.forEach(({ result }, i) => {
      assert.equal(result.registrationId, ids[i]);
      assert.equal(result.deviceId, ids[i]);
      assert.equal(result.assignedHub, info.hubHostName);
      assert.equal(result.status, 'assigned');
    });
  });

  test('registering again (MQTT) keeps the same hub and device', async () => {
    const { result } = await sdk.register('mqtt', info.globalEndpoint, info.idScope, 'sdk-mqtt-ind-1', individual['sdk-mqtt-ind-1']);
    assert.equal(result.assignedHub, info.hubHostName);
    assert.equal(result.deviceId, 'sdk-mqtt-ind-1');
  });

  for (const transport of ['mqtt', 'http']) {
    test(`${transport === 'http' ? 'HTTPS' : 'MQTT'}, disabled enrollment: the SDK ends with status disabled`, async () => {
      const id = `sdk-${transport}-disabled`;
      const r = await sdk.service(info.serviceConnectionString, 'createOrUpdateIndividualEnrollment',
        { registrationId: id, provisioningStatus: 'disabled', attestation: { type: 'symmetricKey' } });
      assert.equal(r.body.provisioningStatus, 'disabled');
      await assert.rejects(
        sdk.register(transport, info.globalEndpoint, info.idScope, id, r.body.attestation.symmetricKey.primaryKey),
        (err) => {
          // polling_state_machine: a status other than assigning/assigned/failed
          // ends register() with SyntaxError('status is <status>').
          assert.equal(err.sdkName, 'SyntaxError', String(err));
          assert.equal(err.body?.status, 'disabled', String(err));
          assert.ok(err.body?.operationId, `operationId in ${JSON.stringify(err.body)}`);
          assert.equal(err.body?.registrationState?.status, 'disabled', String(err));
          return true;
        });
    });
  }

  for (const transport of ['mqtt', 'http']) {
    test(`${transport === 'http' ? 'HTTPS' : 'MQTT'}, wrong key: the SDK fails with UnauthorizedError, status 401`, async () => {
      await assert.rejects(
        sdk.register(transport, info.globalEndpoint, info.idScope, 'sdk-mqtt-ind-1', randomKey()),
        (err) => {
          assert.equal(err.sdkName, 'UnauthorizedError', String(err));
          assert.equal(err.status, 401, String(err));
          // The SDK keeps the service's error body (MQTT: err.result, HTTP: err.responseBody).
          assert.equal(typeof err.body, 'object', `error body is JSON: ${String(err)}`);
          assert.equal(Math.floor(err.body.errorCode / 1000), 401, `errorCode ${err.body.errorCode}`);
          return true;
        });
    });
  }

  test('wrong key for a group device (derived from another key) fails with 401 over MQTT', async () => {
    const regId = 'sdk-mqtt-grp-dev-2';
    await assert.rejects(
      sdk.register('mqtt', info.globalEndpoint, info.idScope, regId, deriveDeviceKey(randomKey(), regId)),
      (err) => { assert.equal(err.status, 401, String(err)); assert.equal(err.sdkName, 'UnauthorizedError'); return true; });
  });
});
