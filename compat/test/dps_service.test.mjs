// The DPS service API through the official azure-iot-provisioning-service
// SDK, created from the connection string berth writes to client.json.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { startBerth } from '../lib/berth.mjs';
import { deriveDeviceKey, randomKey, startSdkWorker } from '../lib/sdk.mjs';

// Own loopback address: $BERTH_COMPAT_SERVICE_IP, or a free random one (lib/berth.mjs).
const IP = process.env.BERTH_COMPAT_SERVICE_IP;

function assertKey(k, what) {
  assert.equal(typeof k, 'string', `${what} is a string`);
  assert.ok(Buffer.from(k, 'base64').length >= 16, `${what} is base64 of >= 16 bytes: ${k}`);
}

async function rejectsWithStatus(promise, status, sdkName) {
  await assert.rejects(promise, (err) => {
    assert.equal(err.status, status, String(err));
    if (sdkName) assert.equal(err.sdkName, sdkName, String(err));
    return true;
  });
}

describe('DPS service SDK', { timeout: 150000 }, () => {
  let berth;
  let sdk;
  let info;
  let cs;

  before(async () => {
    berth = await startBerth(IP);
    info = berth.info;
    cs = info.serviceConnectionString;
    sdk = await startSdkWorker(berth.caFile);
  });

  after(async () => {
    if (sdk) await sdk.close();
    if (berth) await berth.stop();
  });

  test('client.json connection string names the public host', () => {
    assert.match(cs, /^HostName=[^;]+;SharedAccessKeyName=[^;]+;SharedAccessKey=[^;]+$/);
    assert.equal(/HostName=([^;]+)/.exec(cs)[1], info.globalEndpoint);
  });

  test('without berth\'s CA the SDK refuses the server certificate', async () => {
    const plain = await startSdkWorker(null);
    try {
      await assert.rejects(plain.service(cs, 'getIndividualEnrollment', 'nobody'), (err) => {
        assert.match(String(err.code), /SELF_SIGNED|UNABLE_TO_VERIFY|UNABLE_TO_GET_ISSUER|CERT/, String(err));
        return true;
      });
    } finally {
      await plain.close();
    }
  });

  test('a wrong service key is refused with 401', async () => {
    const bad = cs.replace(/SharedAccessKey=[^;]+/, `SharedAccessKey=${randomKey()}`);
    await rejectsWithStatus(sdk.service(bad, 'getIndividualEnrollment', 'nobody'), 401, 'UnauthorizedError');
  });

  test('individual enrollment: create (keys generated), read, update with etag, stale etag 412, delete', async () => {
    const id = 'svc-ind-1';
    const created = await sdk.service(cs, 'createOrUpdateIndividualEnrollment', { registrationId: id, attestation: { type: 'symmetricKey' } });
    assert.equal(created.status, 200);
    assert.equal(created.body.registrationId, id);
    assert.equal(created.body.attestation.type, 'symmetricKey');
    assertKey(created.body.attestation.symmetricKey.primaryKey, 'primaryKey');
    assertKey(created.body.attestation.symmetricKey.secondaryKey, 'secondaryKey');
    assert.notEqual(created.body.attestation.symmetricKey.primaryKey, created.body.attestation.symmetricKey.secondaryKey);
    assert.ok(created.body.etag, 'etag on create');
    assert.equal(created.body.provisioningStatus, 'enabled');

    const read = await sdk.service(cs, 'getIndividualEnrollment', id);
    assert.equal(read.status, 200);
    assert.equal(read.body.registrationId, id);
    assert.equal(read.body.etag, created.body.etag);

    // The SDK's documented pattern: read, change, write back (the etag in the
    // object becomes If-Match).
    const changed = { ...read.body, initialTwin: { tags: { floor: '3' }, properties: { desired: { interval: 30 } } } };
    const updated = await sdk.service(cs, 'createOrUpdateIndividualEnrollment', changed);
    assert.equal(updated.status, 200);
    assert.ok(updated.body.etag);
    assert.notEqual(updated.body.etag, read.body.etag, 'etag changes on update');
    assert.equal(updated.body.initialTwin?.tags?.floor, '3');

    const reread = await sdk.service(cs, 'getIndividualEnrollment', id);
    assert.equal(reread.body.etag, updated.body.etag);
    assert.equal(reread.body.initialTwin?.tags?.floor, '3');

    // Keys survive the update (revealed by the attestation mechanism call).
    const att = await sdk.service(cs, 'getIndividualEnrollmentAttestationMechanism', id);
    assert.equal(att.body.type, 'symmetricKey');
    assert.equal(att.body.symmetricKey.primaryKey, created.body.attestation.symmetricKey.primaryKey);
    assert.equal(att.body.symmetricKey.secondaryKey, created.body.attestation.symmetricKey.secondaryKey);

    // A write with the etag of the first read is stale now.
    const stale = { ...read.body, provisioningStatus: 'disabled' };
    await rejectsWithStatus(sdk.service(cs, 'createOrUpdateIndividualEnrollment', stale), 412, 'InvalidEtagError');
    await rejectsWithStatus(sdk.service(cs, 'deleteIndividualEnrollment', id, read.body.etag), 412, 'InvalidEtagError');

    await sdk.service(cs, 'deleteIndividualEnrollment', id, updated.body.etag);
    await rejectsWithStatus(sdk.service(cs, 'getIndividualEnrollment', id), 404);
  });

  test('individual enrollment with given keys keeps them', async () => {
    const primaryKey = randomKey();
    const secondaryKey = randomKey();
    const r = await sdk.service(cs, 'createOrUpdateIndividualEnrollment', {
      registrationId: 'svc-ind-2', deviceId: 'svc-ind-2-device',
      attestation: { type: 'symmetricKey', symmetricKey: { primaryKey, secondaryKey } },
    });
    assert.equal(r.body.attestation.symmetricKey.primaryKey, primaryKey);
    assert.equal(r.body.attestation.symmetricKey.secondaryKey, secondaryKey);
    assert.equal(r.body.deviceId, 'svc-ind-2-device');
    await sdk.service(cs, 'deleteIndividualEnrollment', 'svc-ind-2');
  });

  test('enrollment group: create (keys generated), read, update with etag, stale etag 412, delete', async () => {
    const id = 'svc-grp-1';
    const created = await sdk.service(cs, 'createOrUpdateEnrollmentGroup', { enrollmentGroupId: id, attestation: { type: 'symmetricKey' } });
    assert.equal(created.status, 200);
    assert.equal(created.body.enrollmentGroupId, id);
    assertKey(created.body.attestation.symmetricKey.primaryKey, 'group primaryKey');
    assertKey(created.body.attestation.symmetricKey.secondaryKey, 'group secondaryKey');
    assert.ok(created.body.etag);

    const read = await sdk.service(cs, 'getEnrollmentGroup', id);
    assert.equal(read.body.enrollmentGroupId, id);
    assert.equal(read.body.etag, created.body.etag);

    const updated = await sdk.service(cs, 'createOrUpdateEnrollmentGroup', { ...read.body, initialTwin: { tags: { line: 'b' }, properties: { desired: {} } } });
    assert.equal(updated.status, 200);
    assert.notEqual(updated.body.etag, read.body.etag);
    assert.equal(updated.body.initialTwin?.tags?.line, 'b');

    const att = await sdk.service(cs, 'getEnrollmentGroupAttestationMechanism', id);
    assert.equal(att.body.symmetricKey.primaryKey, created.body.attestation.symmetricKey.primaryKey);

    await rejectsWithStatus(sdk.service(cs, 'createOrUpdateEnrollmentGroup', { ...read.body, provisioningStatus: 'disabled' }), 412, 'InvalidEtagError');
    await rejectsWithStatus(sdk.service(cs, 'deleteEnrollmentGroup', id, read.body.etag), 412, 'InvalidEtagError');

    await sdk.service(cs, 'deleteEnrollmentGroup', id, updated.body.etag);
    await rejectsWithStatus(sdk.service(cs, 'getEnrollmentGroup', id), 404);
  });

  // The Node SDK posts bulk operations to /enrollments/ (trailing slash).
  test('bulk enrollment operation: create two, an existing one reports an error, delete', async () => {
    const ok = await sdk.serviceCallback(cs, 'runBulkEnrollmentOperation', {
      mode: 'create',
      enrollments: [
        { registrationId: 'svc-bulk-1', attestation: { type: 'symmetricKey' } },
        { registrationId: 'svc-bulk-2', attestation: { type: 'symmetricKey' } },
      ],
    });
    assert.equal(ok.status, 200);
    assert.equal(ok.body.isSuccessful, true, JSON.stringify(ok.body));
    const read = await sdk.service(cs, 'getIndividualEnrollment', 'svc-bulk-2');
    assert.equal(read.body.registrationId, 'svc-bulk-2');

    // Creating an existing one again is an error for that item.
    const again = await sdk.serviceCallback(cs, 'runBulkEnrollmentOperation', {
      mode: 'create',
      enrollments: [{ registrationId: 'svc-bulk-1', attestation: { type: 'symmetricKey' } }],
    });
    assert.equal(again.body.isSuccessful, false, JSON.stringify(again.body));
    assert.equal(again.body.errors?.[0]?.registrationId, 'svc-bulk-1', JSON.stringify(again.body));

    const del = await sdk.serviceCallback(cs, 'runBulkEnrollmentOperation', {
      mode: 'delete',
      enrollments: [{ registrationId: 'svc-bulk-1' }, { registrationId: 'svc-bulk-2' }],
    });
    assert.equal(del.body.isSuccessful, true, JSON.stringify(del.body));
    await rejectsWithStatus(sdk.service(cs, 'getIndividualEnrollment', 'svc-bulk-1'), 404);
  });

  test('individual enrollment query pages through 12 enrollments, 5 per page', async () => {
    const ids = Array.from({ length: 12 }, (_, i) => `svc-q-${String(i).padStart(2, '0')}`);
    for (const id of ids) {
      await sdk.service(cs, 'createOrUpdateIndividualEnrollment', { registrationId: id, attestation: { type: 'symmetricKey' } });
    }
    const pages = await sdk.query(cs, 'individual', { query: 'SELECT * FROM enrollments' }, 5);
    const seen = pages.flatMap((p) => p.items.map((e) => e.registrationId));
    for (const id of ids) assert.ok(seen.includes(id), `${id} in the query results ${JSON.stringify(seen)}`);
    assert.equal(new Set(seen).size, seen.length, `no enrollment twice: ${JSON.stringify(seen)}`);
    assert.equal(pages.length, Math.ceil(seen.length / 5), `pages: ${pages.map((p) => p.items.length)}`);
    pages.forEach((p, i) => {
      assert.equal(p.status, 200);
      assert.ok(p.items.length <= 5, `page ${i} has ${p.items.length} items`);
      assert.equal(p.headers['x-ms-item-type'], 'Enrollment', `page ${i} x-ms-item-type`);
      if (i < pages.length - 1) {
        assert.equal(p.items.length, 5, `full page ${i}`);
        assert.ok(p.headers['x-ms-continuation'], `page ${i} has x-ms-continuation`);
      } else {
        assert.equal(p.headers['x-ms-continuation'], undefined, 'no x-ms-continuation on the last page');
      }
    });
    for (const id of ids) await sdk.service(cs, 'deleteIndividualEnrollment', id);
  });

  test('enrollment group query, 1 per page', async () => {
    const ids = ['svc-qg-a', 'svc-qg-b', 'svc-qg-c'];
    for (const id of ids) await sdk.service(cs, 'createOrUpdateEnrollmentGroup', { enrollmentGroupId: id, attestation: { type: 'symmetricKey' } });
    const pages = await sdk.query(cs, 'group', { query: 'SELECT * FROM enrollmentGroups' }, 1);
    const seen = pages.flatMap((p) => p.items.map((e) => e.enrollmentGroupId));
    for (const id of ids) assert.ok(seen.includes(id), `${id} in ${JSON.stringify(seen)}`);
    assert.equal(pages.length, seen.length);
    for (const p of pages) assert.equal(p.headers['x-ms-item-type'], 'EnrollmentGroup');
    for (const id of ids) await sdk.service(cs, 'deleteEnrollmentGroup', id);
  });

  test('registration record: get and delete after a device registered', async () => {
    const id = 'svc-reg-1';
    const created = await sdk.service(cs, 'createOrUpdateIndividualEnrollment', { registrationId: id, attestation: { type: 'symmetricKey' } });
    await rejectsWithStatus(sdk.service(cs, 'getDeviceRegistrationState', id), 404);

    const { result } = await sdk.register('mqtt', info.globalEndpoint, info.idScope, id, created.body.attestation.symmetricKey.primaryKey);
    assert.equal(result.assignedHub, info.hubHostName);

    const rec = await sdk.service(cs, 'getDeviceRegistrationState', id);
    assert.equal(rec.status, 200);
    assert.equal(rec.body.registrationId, id);
    assert.equal(rec.body.status, 'assigned');
    assert.equal(rec.body.assignedHub, info.hubHostName);
    assert.equal(rec.body.deviceId, id);
    assert.ok(rec.body.etag, 'registration record etag');
    assert.ok(rec.body.createdDateTimeUtc, 'createdDateTimeUtc');

    // The enrollment shows its registration state too.
    const enr = await sdk.service(cs, 'getIndividualEnrollment', id);
    assert.equal(enr.body.registrationState?.status, 'assigned');

    await rejectsWithStatus(sdk.service(cs, 'deleteDeviceRegistrationState', id, '"not-the-etag"'), 412);
    await sdk.service(cs, 'deleteDeviceRegistrationState', id, rec.body.etag);
    await rejectsWithStatus(sdk.service(cs, 'getDeviceRegistrationState', id), 404);
    await sdk.service(cs, 'deleteIndividualEnrollment', id);
  });

  // Microsoft's own e2e suite writes static enrollments without iotHubs;
  // with one linked hub they are assigned to it (issue 19, item 4).
  test('static allocation without iotHubs: accepted, assigned to the linked hub', async () => {
    const id = 'svc-static-1';
    const created = await sdk.service(cs, 'createOrUpdateIndividualEnrollment', {
      registrationId: id, attestation: { type: 'symmetricKey' }, allocationPolicy: 'static',
    });
    assert.equal(created.status, 200);
    assert.equal(created.body.allocationPolicy, 'static');
    const { result } = await sdk.register('mqtt', info.globalEndpoint, info.idScope, id, created.body.attestation.symmetricKey.primaryKey);
    assert.equal(result.status, 'assigned', JSON.stringify(result));
    assert.equal(result.assignedHub, info.hubHostName);

    const group = await sdk.service(cs, 'createOrUpdateEnrollmentGroup', {
      enrollmentGroupId: 'svc-static-grp', attestation: { type: 'symmetricKey' }, allocationPolicy: 'static',
    });
    assert.equal(group.status, 200);
    const member = 'svc-static-member';
    const key = deriveDeviceKey(group.body.attestation.symmetricKey.primaryKey, member);
    const { result: r2 } = await sdk.register('mqtt', info.globalEndpoint, info.idScope, member, key);
    assert.equal(r2.status, 'assigned', JSON.stringify(r2));
    assert.equal(r2.assignedHub, info.hubHostName);

    await sdk.service(cs, 'deleteIndividualEnrollment', id);
    await sdk.service(cs, 'deleteEnrollmentGroup', 'svc-static-grp');
  });

  test('registration records of an enrollment group (query)', async () => {
    const g = await sdk.service(cs, 'createOrUpdateEnrollmentGroup', { enrollmentGroupId: 'svc-reg-grp', attestation: { type: 'symmetricKey' } });
    const regId = 'svc-reg-grp-dev-1';
    await sdk.register('http', info.globalEndpoint, info.idScope, regId, deriveDeviceKey(g.body.attestation.symmetricKey.primaryKey, regId));
    const rec = await sdk.service(cs, 'getDeviceRegistrationState', regId);
    assert.equal(rec.body.status, 'assigned');
    assert.equal(rec.body.deviceId, regId);

    const pages = await sdk.query(cs, 'registrations', { query: 'SELECT * FROM enrollments' }, 5, 'svc-reg-grp');
    const seen = pages.flatMap((p) => p.items.map((r) => r.registrationId));
    assert.deepEqual(seen, [regId]);
    assert.equal(pages[0].headers['x-ms-item-type'], 'DeviceRegistration');
    await sdk.service(cs, 'deleteDeviceRegistrationState', regId);
    await sdk.service(cs, 'deleteEnrollmentGroup', 'svc-reg-grp');
  });
});
