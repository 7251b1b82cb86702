// Reprovisioning (issue #5) with the official SDKs: a symmetric-key
// enrollment group on hub A, a device provisioned by the DPS device SDK
// (azure-iot-provisioning-device-mqtt) that reports a property through the
// IoT Hub device SDK (azure-iot-device), the group moved to hub B with the
// DPS service SDK (the group's iotHubs updated with its etag), and the
// device registering again. Each reprovision policy decides what the
// device finds: its twin moved (deviceDataMigrated), the enrollment's
// initial twin (deviceDataReset), or no move at all (never). Moved back to
// hub A the device is reprovisionedToInitialAssignment. A device that moves
// is gone from the hub it left (Registry.get 404, connection refused); under
// never it stays on hub A.
//
// Hub B is a second hub of the same berth (`berth hub create`, lib/berth.mjs
// addHub), reached through a loopback address of its own.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { addHub, startBerth } from '../lib/berth.mjs';
import { deriveDeviceKey, startSdkWorker } from '../lib/sdk.mjs';

const IP = process.env.BERTH_COMPAT_REPROVISION_IP;

const INITIAL_TWIN = { tags: { origin: 'enrollment' }, properties: { desired: { interval: 5 } } };

// reprovisionPolicy objects of the service SDK
// (docs/spec/dps-protocol.md#enrollment-documents, #reprovisioning)
const policies = [
  ['reprovisionandmigratedata', { updateHubAssignment: true, migrateDeviceData: true }],
  ['reprovisionandresetdata', { updateHubAssignment: true, migrateDeviceData: false }],
  ['never', { updateHubAssignment: false, migrateDeviceData: false }],
];

describe('DPS reprovisioning with the official SDKs (two hubs)', { timeout: 120000, concurrency: true }, () => {
  let berth;
  let sdk;
  let info;
  let cs;
  let hubA;
  let hubB;

  before(async () => {
    berth = await startBerth(IP);
    info = berth.info;
    cs = info.serviceConnectionString;
    hubA = { name: info.hubHostName, connectionString: info.hubConnectionString };
    hubB = await addHub(berth);
    sdk = await startSdkWorker(berth.caFile);
  });

  after(async () => {
    if (sdk) await sdk.close();
    if (berth) await berth.stop();
  });

  // Reads the group and writes it back with other iotHubs (the SDK's
  // read-modify-write: the etag of the read becomes If-Match).
  const moveGroup = async (groupId, hubs) => {
    const { body: g } = await sdk.service(cs, 'getEnrollmentGroup', groupId);
    const { body: updated } = await sdk.service(cs, 'createOrUpdateEnrollmentGroup', { ...g, iotHubs: hubs });
    assert.deepEqual(updated.iotHubs, hubs, `group ${groupId} iotHubs after the update`);
    return updated;
  };

  const twinOn = async (hub, deviceId) => (await sdk.registry(hub.connectionString, 'getTwin', deviceId)).body;

  // The device SDK opens a session on the hub with the device's key.
  const connects = async (hub, deviceId, key) => {
    const h = await sdk.device.open('mqtt', `HostName=${hub.name};DeviceId=${deviceId};SharedAccessKey=${key}`);
    await sdk.device.close(h);
  };

  // The hub no longer knows the device: Registry.get and getTwin answer
  // 404, and the device's own key is refused.
  const goneFrom = async (hub, deviceId, key) => {
    for (const method of ['get', 'getTwin']) {
      await assert.rejects(sdk.registry(hub.connectionString, method, deviceId), (err) => {
        assert.equal(err.status, 404, `${method} on ${hub.name}: ${err}`);
        return true;
      }, `${method}: the device is still on ${hub.name}`);
    }
    await assert.rejects(connects(hub, deviceId, key), (err) => {
      assert.match(String(err.message ?? err), /unauthori|not authori|refused|connack|denied/i, String(err.message ?? err));
      return true;
    }, `the device still connects to ${hub.name}`);
  };

  for (const [name, reprovisionPolicy] of policies) {
    test(`${name}: the device registers again after its group moved from hub A to hub B`, async (t) => {
      const groupId = `rp-${name}`;
      const regId = `rp-dev-${name}`;
      const { body: group } = await sdk.service(cs, 'createOrUpdateEnrollmentGroup', {
        enrollmentGroupId: groupId,
        attestation: { type: 'symmetricKey' },
        allocationPolicy: 'hashed',
        iotHubs: [hubA.name],
        reprovisionPolicy,
        initialTwin: INITIAL_TWIN,
      });
      assert.deepEqual(group.reprovisionPolicy, reprovisionPolicy, 'reprovisionPolicy as written');
      const key = deriveDeviceKey(group.attestation.symmetricKey.primaryKey, regId);

      // 1. First registration: hub A, initial assignment.
      const { result: r1 } = await sdk.register('mqtt', info.globalEndpoint, info.idScope, regId, key);
      assert.equal(r1.status, 'assigned', JSON.stringify(r1));
      assert.equal(r1.assignedHub, hubA.name);
      assert.equal(r1.substatus, 'initialAssignment', JSON.stringify(r1));
      const deviceId = r1.deviceId;

      // 2. The device reports a property on hub A; the service tags it and
      //    sets a desired property there.
      const h = await sdk.device.open('mqtt', `HostName=${hubA.name};DeviceId=${deviceId};SharedAccessKey=${key}`);
      try {
        const twin = await sdk.device.getTwin(h);
        assert.equal(twin.desired.interval, 5, `initial twin desired on hub A: ${JSON.stringify(twin)}`);
        await sdk.device.updateReported(h, { firmware: `1.0-${name}` });
      } finally {
        await sdk.device.close(h);
      }
      const onA = await twinOn(hubA, deviceId);
      await sdk.registry(hubA.connectionString, 'updateTwin', deviceId, { tags: { site: 'A' }, properties: { desired: { setOnA: true } } }, onA.etag);
      const before = await twinOn(hubA, deviceId);
      assert.equal(before.properties.reported.firmware, `1.0-${name}`);
      assert.equal(before.tags.site, 'A');
      assert.equal(before.tags.origin, 'enrollment');

      // 3. The group moves to hub B; the device registers again.
      await moveGroup(groupId, [hubB.name]);
      const { result: r2 } = await sdk.register('mqtt', info.globalEndpoint, info.idScope, regId, key);
      t.diagnostic(`after the move: ${r2.assignedHub} ${r2.substatus}`);
      assert.equal(r2.status, 'assigned', JSON.stringify(r2));
      assert.equal(r2.deviceId, deviceId);

      if (name === 'never') {
        assert.equal(r2.assignedHub, hubA.name, `never: the device stays on hub A: ${JSON.stringify(r2)}`);
        const stays = await twinOn(hubA, deviceId);
        assert.equal(stays.properties.reported.firmware, `1.0-${name}`, 'twin on hub A untouched');
        assert.equal(stays.tags.site, 'A');
        const { body: dev } = await sdk.registry(hubA.connectionString, 'get', deviceId);
        assert.equal(dev.status, 'enabled', `never: the identity stays on hub A: ${JSON.stringify(dev)}`);
        await connects(hubA, deviceId, key);
        await assert.rejects(sdk.registry(hubB.connectionString, 'getTwin', deviceId), (err) => {
          assert.equal(err.status, 404, String(err));
          return true;
        }, 'never: no device on hub B');
        return;
      }

      assert.equal(r2.assignedHub, hubB.name, JSON.stringify(r2));
      // The device left hub A: Azure removes it there (identity and twin),
      // and its key no longer opens a session on A.
      await goneFrom(hubA, deviceId, key);
      const onB = await twinOn(hubB, deviceId);
      if (name === 'reprovisionandmigratedata') {
        assert.equal(r2.substatus, 'deviceDataMigrated', JSON.stringify(r2));
        assert.equal(onB.properties.reported.firmware, `1.0-${name}`, `reported property migrated: ${JSON.stringify(onB)}`);
        assert.equal(onB.tags.site, 'A', `tags migrated: ${JSON.stringify(onB.tags)}`);
        assert.equal(onB.properties.desired.setOnA, true, `desired migrated: ${JSON.stringify(onB.properties.desired)}`);
        // The device reaches hub B with the key it had and finds its twin.
        const hb = await sdk.device.open('mqtt', `HostName=${hubB.name};DeviceId=${deviceId};SharedAccessKey=${key}`);
        try {
          const tw = await sdk.device.getTwin(hb);
          assert.equal(tw.reported.firmware, `1.0-${name}`);
          assert.equal(tw.desired.setOnA, true);
        } finally {
          await sdk.device.close(hb);
        }
      } else {
        assert.equal(r2.substatus, 'deviceDataReset', JSON.stringify(r2));
        assert.equal(onB.properties.reported.firmware, undefined, `reset: no reported property: ${JSON.stringify(onB.properties.reported)}`);
        assert.equal(onB.tags?.site, undefined, `reset: no tag of hub A: ${JSON.stringify(onB.tags)}`);
        assert.equal(onB.tags?.origin, 'enrollment', `reset: the initial twin's tags: ${JSON.stringify(onB.tags)}`);
        assert.equal(onB.properties.desired.interval, 5, `reset: the initial twin's desired: ${JSON.stringify(onB.properties.desired)}`);
        assert.equal(onB.properties.desired.setOnA, undefined, `reset: no desired of hub A: ${JSON.stringify(onB.properties.desired)}`);
      }

      // 4. Back to hub A: reprovisionedToInitialAssignment.
      await moveGroup(groupId, [hubA.name]);
      const { result: r3 } = await sdk.register('mqtt', info.globalEndpoint, info.idScope, regId, key);
      assert.equal(r3.status, 'assigned', JSON.stringify(r3));
      assert.equal(r3.assignedHub, hubA.name, JSON.stringify(r3));
      assert.equal(r3.substatus, 'reprovisionedToInitialAssignment', JSON.stringify(r3));
      await goneFrom(hubB, deviceId, key);
      await connects(hubA, deviceId, key);
      const back = await twinOn(hubA, deviceId);
      if (name === 'reprovisionandmigratedata') {
        assert.equal(back.properties.reported.firmware, `1.0-${name}`, `migrated back: ${JSON.stringify(back.properties)}`);
      } else {
        assert.equal(back.tags?.origin, 'enrollment', `reset back: initial twin: ${JSON.stringify(back.tags)}`);
        assert.equal(back.tags?.site, undefined, `reset back: initial twin only: ${JSON.stringify(back.tags)}`);
      }
    });
  }
});
