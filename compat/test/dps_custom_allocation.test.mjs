// Custom allocation (issue #5) with the official SDKs: a Node http server on
// the test's own loopback address plays the Azure Function of a custom
// allocation policy. berth POSTs Azure's AllocationRequest to it
// (docs/spec/dps-protocol.md#webhook-request) and assigns the device to the
// hub it answers, with the initial twin it answers; the payload it answers
// reaches the device as registrationState.payload
// (docs/spec/dps-protocol.md#webhook-response, #device-payload). Enrollments
// are written with azure-iot-provisioning-service, devices register with
// azure-iot-provisioning-device-mqtt/-http, the twin is read with
// azure-iothub on the second hub. A webhook that is down, fails, names a hub
// the enrollment is not linked to or answers garbage fails the registration
// (errorCode 400207 / 400208 in the registration record); so does one that
// answers after berth's webhook timeout (10 s, dps.DefaultWebhookTimeout).

import assert from 'node:assert/strict';
import { once } from 'node:events';
import http from 'node:http';
import { after, before, describe, test } from 'node:test';

import { addHub, startBerth } from '../lib/berth.mjs';
import { deriveDeviceKey, randomKey, startSdkWorker } from '../lib/sdk.mjs';

const IP = process.env.BERTH_COMPAT_WEBHOOK_IP;
const API_VERSION = '2021-10-01';

describe('DPS custom allocation webhook with the official SDKs', { timeout: 120000, concurrency: true }, () => {
  let berth;
  let sdk;
  let info;
  let cs;
  let hubA;
  let hubB;
  let server;
  let base; // http://IP:PORT
  // What the webhook answers, by registration ID: (request) => {status, body (object or string), delayMs}.
  const answers = new Map();
  // Every request the webhook got: {method, url, headers, text, json}.
  const requests = [];

  before(async () => {
    berth = await startBerth(IP);
    info = berth.info;
    cs = info.serviceConnectionString;
    hubA = { name: info.hubHostName, connectionString: info.hubConnectionString };
    hubB = await addHub(berth);
    server = http.createServer((req, res) => {
      const chunks = [];
      req.on('data', (c) => chunks.push(c));
      req.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json;
        try { json = JSON.parse(text); } catch { json = undefined; }
        const r = { method: req.method, url: req.url, headers: { ...req.headers }, text, json };
        requests.push(r);
        const answer = answers.get(json?.deviceRuntimeContext?.registrationId);
        const { status, body, delayMs = 0 } = answer ? answer(r) : { status: 404, body: { error: 'no answer for this device' } };
        const out = typeof body === 'string' ? body : JSON.stringify(body);
        setTimeout(() => {
          if (res.destroyed) return;
          res.writeHead(status, { 'Content-Type': 'application/json' });
          res.end(out);
        }, delayMs);
      });
    });
    server.listen(0, berth.ip);
    await once(server, 'listening');
    base = `http://${berth.ip}:${server.address().port}`;
    sdk = await startSdkWorker(berth.caFile);
  });

  after(async () => {
    if (sdk) await sdk.close();
    if (server) { server.closeAllConnections(); server.close(); }
    if (berth) await berth.stop();
  });

  const requestsOf = (regId) => requests.filter((r) => r.json?.deviceRuntimeContext?.registrationId === regId);

  const customEnrollment = (registrationId, webhookUrl, iotHubs, extra = {}) => sdk.service(cs, 'createOrUpdateIndividualEnrollment', {
    registrationId,
    attestation: { type: 'symmetricKey', symmetricKey: { primaryKey: randomKey(), secondaryKey: randomKey() } },
    allocationPolicy: 'custom',
    customAllocationDefinition: { webhookUrl, apiVersion: API_VERSION },
    iotHubs,
    ...extra,
  });

  test('individual enrollment: the webhook gets the AllocationRequest and picks hub B, the twin and the payload', async (t) => {
    const regId = 'wh-ind-1';
    const twinFromWebhook = { tags: { allocatedBy: 'webhook', fleet: 'blue' }, properties: { desired: { color: 'blue', interval: 42 } } };
    const payloadFromWebhook = { hello: 'device', config: { n: 1, list: [1, 2] } };
    answers.set(regId, () => ({ status: 200, body: { iotHubHostName: hubB.name, initialTwin: twinFromWebhook, payload: payloadFromWebhook } }));
    const { body: enr } = await customEnrollment(regId, `${base}/api/allocate?code=s3cret`, [hubA.name, hubB.name], {
      initialTwin: { tags: { fromEnrollment: true }, properties: { desired: { interval: 1 } } },
    });
    assert.equal(enr.allocationPolicy, 'custom');
    assert.deepEqual(enr.customAllocationDefinition, { webhookUrl: `${base}/api/allocate?code=s3cret`, apiVersion: API_VERSION });
    const key = enr.attestation.symmetricKey.primaryKey;

    const devicePayload = { modelId: 'dtmi:berth:compat;1', site: 'lab' };
    const { result } = await sdk.register('mqtt', info.globalEndpoint, info.idScope, regId, key, devicePayload);
    assert.equal(result.status, 'assigned', JSON.stringify(result));
    assert.equal(result.assignedHub, hubB.name, JSON.stringify(result));
    assert.equal(result.deviceId, regId);
    assert.deepEqual(result.payload, payloadFromWebhook, 'the webhook payload reaches the device');

    // The request: Azure's AllocationRequest.
    const [req] = requestsOf(regId);
    assert.ok(req, 'the webhook was called');
    assert.equal(req.method, 'POST');
    assert.equal(req.url, '/api/allocate?code=s3cret', 'the webhook URL with its query (Azure Functions key)');
    assert.match(req.headers['content-type'] ?? '', /^application\/json/);
    const body = req.json;
    assert.ok(body, `JSON body: ${req.text}`);
    assert.equal(body.individualEnrollment?.registrationId, regId, req.text);
    assert.equal(body.enrollmentGroup, undefined);
    assert.deepEqual(body.individualEnrollment.attestation, { type: 'symmetricKey' }, 'attestation type only');
    assert.ok(!req.text.includes(key), 'no key in the request');
    assert.equal(body.individualEnrollment.allocationPolicy, 'custom');
    assert.equal(body.deviceRuntimeContext.registrationId, regId);
    assert.deepEqual(body.deviceRuntimeContext.symmetricKey, {});
    assert.deepEqual(body.deviceRuntimeContext.payload, devicePayload, 'the device payload');
    assert.equal(body.deviceRuntimeContext.currentIotHubHostName, undefined, 'first registration: no current hub');
    assert.equal(body.deviceRuntimeContext.currentDeviceId, undefined, 'first registration: no current device');
    assert.deepEqual([...body.linkedHubs].sort(), [hubA.name, hubB.name].sort());

    // The twin on hub B is the webhook's initial twin (it overrides the enrollment's).
    const { body: twin } = await sdk.registry(hubB.connectionString, 'getTwin', regId);
    assert.equal(twin.tags?.allocatedBy, 'webhook', JSON.stringify(twin));
    assert.equal(twin.tags?.fleet, 'blue');
    assert.equal(twin.properties.desired.color, 'blue');
    assert.equal(twin.properties.desired.interval, 42);
    assert.equal(twin.tags?.fromEnrollment, undefined, 'the webhook twin replaces the enrollment twin');

    // The registration record says the same.
    const { body: state } = await sdk.service(cs, 'getDeviceRegistrationState', regId);
    assert.equal(state.status, 'assigned');
    assert.equal(state.assignedHub, hubB.name);

    // Registering again (HTTPS): the webhook learns the current hub and device.
    const { result: again } = await sdk.register('http', info.globalEndpoint, info.idScope, regId, key);
    assert.equal(again.assignedHub, hubB.name);
    assert.deepEqual(again.payload, payloadFromWebhook);
    const second = requestsOf(regId)[1];
    assert.ok(second, 'the webhook was called again');
    assert.equal(second.json.deviceRuntimeContext.currentIotHubHostName, hubB.name, second.text);
    assert.equal(second.json.deviceRuntimeContext.currentDeviceId, regId, second.text);
    assert.equal(second.json.deviceRuntimeContext.payload, undefined, 'no payload when the device sends none');
    t.diagnostic(`AllocationRequest: ${req.text}`);
  });

  test('enrollment group over HTTPS: enrollmentGroup in the request, hub A answered', async () => {
    const groupId = 'wh-group';
    const regId = 'wh-group-dev-1';
    answers.set(regId, ({ json }) => ({
      status: 200,
      body: { iotHubHostName: hubA.name, initialTwin: { tags: { group: json.enrollmentGroup?.enrollmentGroupId } }, payload: { ok: true } },
    }));
    const { body: g } = await sdk.service(cs, 'createOrUpdateEnrollmentGroup', {
      enrollmentGroupId: groupId,
      attestation: { type: 'symmetricKey' },
      allocationPolicy: 'custom',
      customAllocationDefinition: { webhookUrl: `${base}/group`, apiVersion: API_VERSION },
      iotHubs: [hubA.name, hubB.name],
    });
    const key = deriveDeviceKey(g.attestation.symmetricKey.primaryKey, regId);
    const { result } = await sdk.register('http', info.globalEndpoint, info.idScope, regId, key);
    assert.equal(result.status, 'assigned', JSON.stringify(result));
    assert.equal(result.assignedHub, hubA.name);
    assert.deepEqual(result.payload, { ok: true });
    const [req] = requestsOf(regId);
    assert.equal(req.json.enrollmentGroup?.enrollmentGroupId, groupId, req.text);
    assert.equal(req.json.individualEnrollment, undefined);
    assert.deepEqual(req.json.enrollmentGroup.attestation, { type: 'symmetricKey' }, 'attestation type only');
    assert.ok(!req.text.includes(g.attestation.symmetricKey.primaryKey), 'no group key in the request');
    const { body: twin } = await sdk.registry(hubA.connectionString, 'getTwin', regId);
    assert.equal(twin.tags?.group, groupId);
  });

  // A registration the webhook makes fail: the device SDK ends with
  // DeviceRegistrationFailedError (status failed), and the registration
  // record carries the error code.
  const expectFailed = async (regId, key, errorCode, messagePattern) => {
    await assert.rejects(sdk.register('mqtt', info.globalEndpoint, info.idScope, regId, key), (err) => {
      assert.equal(err.sdkName, 'DeviceRegistrationFailedError', String(err));
      assert.equal(err.body?.status, 'failed', String(err));
      assert.equal(err.body?.registrationState?.errorCode, errorCode, String(err));
      if (messagePattern) assert.match(err.body.registrationState.errorMessage ?? '', messagePattern, String(err));
      assert.ok(!err.body.registrationState.assignedHub, String(err));
      return true;
    });
    // The registration record (provisioning service SDK) says the same.
    const { body: state } = await sdk.service(cs, 'getDeviceRegistrationState', regId);
    assert.equal(state.status, 'failed', JSON.stringify(state));
    assert.equal(state.errorCode, errorCode, JSON.stringify(state));
    if (messagePattern) assert.match(state.errorMessage ?? '', messagePattern, JSON.stringify(state));
    assert.ok(!state.assignedHub, `no hub assigned: ${JSON.stringify(state)}`);
  };

  test('webhook down (closed port): registration failed, 400207', async () => {
    const closed = http.createServer();
    closed.listen(0, berth.ip);
    await once(closed, 'listening');
    const url = `http://${berth.ip}:${closed.address().port}/api/allocate`;
    await new Promise((r) => closed.close(r));
    const regId = 'wh-down';
    const { body: enr } = await customEnrollment(regId, url, [hubA.name, hubB.name]);
    await expectFailed(regId, enr.attestation.symmetricKey.primaryKey, 400207);
  });

  test('webhook answering 500: registration failed, 400207 "Custom allocation failed with status code: 500"', async () => {
    const regId = 'wh-500';
    answers.set(regId, () => ({ status: 500, body: { error: 'boom' } }));
    const { body: enr } = await customEnrollment(regId, `${base}/api/allocate`, [hubA.name, hubB.name]);
    await expectFailed(regId, enr.attestation.symmetricKey.primaryKey, 400207, /^Custom allocation failed with status code: 500$/);
  });

  test('webhook answering too late (after berth\'s 10 s webhook timeout): registration failed, 400207', async () => {
    const regId = 'wh-slow';
    answers.set(regId, () => ({ status: 200, body: { iotHubHostName: hubA.name }, delayMs: 13000 }));
    const { body: enr } = await customEnrollment(regId, `${base}/api/allocate`, [hubA.name, hubB.name]);
    await expectFailed(regId, enr.attestation.symmetricKey.primaryKey, 400207);
  });

  test('webhook answering a hub the enrollment is not linked to: registration failed, 400208', async () => {
    const regId = 'wh-unlinked';
    // Hub B exists, but the enrollment links hub A only.
    answers.set(regId, () => ({ status: 200, body: { iotHubHostName: hubB.name } }));
    const { body: enr } = await customEnrollment(regId, `${base}/api/allocate`, [hubA.name]);
    await expectFailed(regId, enr.attestation.symmetricKey.primaryKey, 400208);
    await assert.rejects(sdk.registry(hubB.connectionString, 'getTwin', regId), (err) => err.status === 404, 'no device on hub B');
  });

  test('webhook answering an unknown hub: registration failed, 400208', async () => {
    const regId = 'wh-unknown-hub';
    answers.set(regId, () => ({ status: 200, body: { iotHubHostName: 'no-such-hub.azure-devices.net' } }));
    const { body: enr } = await customEnrollment(regId, `${base}/api/allocate`, [hubA.name, hubB.name]);
    await expectFailed(regId, enr.attestation.symmetricKey.primaryKey, 400208);
  });

  test('webhook answering something that is not an AllocationResponse: registration failed, 400208', async () => {
    const regId = 'wh-garbage';
    answers.set(regId, () => ({ status: 200, body: 'this is not json' }));
    const { body: enr } = await customEnrollment(regId, `${base}/api/allocate`, [hubA.name, hubB.name]);
    await expectFailed(regId, enr.attestation.symmetricKey.primaryKey, 400208);
  });
});
