// Shared access policy rights on the DPS service API (issue #5) with the
// official service SDK: a policy made with `berth policy create --rights
// EnrollmentRead` reads enrollments and groups (get, query) but cannot write
// them (createOrUpdate, delete, bulk: 401), while the owner policy of
// client.json can.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { berthCli, startBerth } from '../lib/berth.mjs';
import { startSdkWorker } from '../lib/sdk.mjs';

const IP = process.env.BERTH_COMPAT_RIGHTS_IP;

async function rejects401(promise) {
  await assert.rejects(promise, (err) => {
    assert.equal(err.status, 401, String(err));
    assert.equal(err.sdkName, 'UnauthorizedError', String(err));
    return true;
  });
}

describe('DPS policy rights with the official service SDK', { timeout: 60000 }, () => {
  let berth;
  let sdk;
  let owner;
  let reader;

  before(async () => {
    berth = await startBerth(IP);
    owner = berth.info.serviceConnectionString;
    sdk = await startSdkWorker(berth.caFile);
    const policy = await berthCli(berth, ['policy', 'create', '--name', 'enrollment-reader', '--rights', 'EnrollmentRead']);
    assert.deepEqual(policy.rights, ['EnrollmentRead'], JSON.stringify(policy));
    reader = policy.primaryConnectionString;
    assert.match(reader, /^HostName=[^;]+;SharedAccessKeyName=enrollment-reader;SharedAccessKey=[^;]+$/);
    await sdk.service(owner, 'createOrUpdateIndividualEnrollment', { registrationId: 'rights-ind-1', attestation: { type: 'symmetricKey' } });
    await sdk.service(owner, 'createOrUpdateEnrollmentGroup', { enrollmentGroupId: 'rights-group-1', attestation: { type: 'symmetricKey' } });
  });

  after(async () => {
    if (sdk) await sdk.close();
    if (berth) await berth.stop();
  });

  test('EnrollmentRead: get and query enrollments and groups', async () => {
    const { body: e } = await sdk.service(reader, 'getIndividualEnrollment', 'rights-ind-1');
    assert.equal(e.registrationId, 'rights-ind-1');
    const { body: g } = await sdk.service(reader, 'getEnrollmentGroup', 'rights-group-1');
    assert.equal(g.enrollmentGroupId, 'rights-group-1');
    const pages = await sdk.query(reader, 'individual', { query: 'SELECT * FROM enrollments' }, 10);
    assert.deepEqual(pages.flatMap((p) => p.items.map((i) => i.registrationId)), ['rights-ind-1']);
    const groups = await sdk.query(reader, 'group', { query: 'SELECT * FROM enrollmentGroups' }, 10);
    assert.deepEqual(groups.flatMap((p) => p.items.map((i) => i.enrollmentGroupId)), ['rights-group-1']);
  });

  test('EnrollmentRead: createOrUpdateIndividualEnrollment, a group write, delete and bulk fail with 401; nothing changes', async () => {
    await rejects401(sdk.service(reader, 'createOrUpdateIndividualEnrollment', { registrationId: 'rights-ind-2', attestation: { type: 'symmetricKey' } }));
    const { body: e } = await sdk.service(owner, 'getIndividualEnrollment', 'rights-ind-1');
    await rejects401(sdk.service(reader, 'createOrUpdateIndividualEnrollment', { ...e, provisioningStatus: 'disabled' }));
    await rejects401(sdk.service(reader, 'createOrUpdateEnrollmentGroup', { enrollmentGroupId: 'rights-group-2', attestation: { type: 'symmetricKey' } }));
    await rejects401(sdk.service(reader, 'deleteIndividualEnrollment', 'rights-ind-1'));
    await rejects401(sdk.serviceCallback(reader, 'runBulkEnrollmentOperation', {
      mode: 'create', enrollments: [{ registrationId: 'rights-bulk-1', attestation: { type: 'symmetricKey' } }],
    }));

    await assert.rejects(sdk.service(owner, 'getIndividualEnrollment', 'rights-ind-2'), (err) => err.status === 404);
    await assert.rejects(sdk.service(owner, 'getIndividualEnrollment', 'rights-bulk-1'), (err) => err.status === 404);
    await assert.rejects(sdk.service(owner, 'getEnrollmentGroup', 'rights-group-2'), (err) => err.status === 404);
    const { body: still } = await sdk.service(owner, 'getIndividualEnrollment', 'rights-ind-1');
    assert.equal(still.provisioningStatus, 'enabled');
    assert.equal(still.etag, e.etag, 'the enrollment is unchanged');
  });

  test('the owner policy of client.json still writes', async () => {
    const { body } = await sdk.service(owner, 'createOrUpdateIndividualEnrollment', { registrationId: 'rights-ind-3', attestation: { type: 'symmetricKey' } });
    assert.equal(body.registrationId, 'rights-ind-3');
  });
});
