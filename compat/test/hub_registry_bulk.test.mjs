// The registry beyond one device at a time, through the official
// azure-iothub Registry: bulk operations (addDevices, updateDevices,
// removeDevices → POST /devices), the nested-edge scopes of create/get/
// update, and a twin whose desired properties are nulled as a whole
// (twin.update({properties: {desired: null}})) heard by an MQTT device.
//
// Every test has devices of its own, so the tests of this file run
// concurrently against one berth.

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { after, before, describe, test } from 'node:test';

import { startBerth } from '../lib/berth.mjs';
import { startSdkWorker } from '../lib/sdk.mjs';

const IP = process.env.BERTH_COMPAT_REGISTRY_IP;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const key = () => crypto.randomBytes(32).toString('base64');

describe('IoT Hub registry: bulk operations, edge scopes, nulled desired properties', { timeout: 120000, concurrency: true }, () => {
  let berth;
  let sdk;
  let hubCs;
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

  const get = async (id) => (await sdk.registry(hubCs, 'get', id)).body;
  const assertGone = async (id) =>
    assert.rejects(sdk.registry(hubCs, 'get', id), (err) => {
      assert.equal(err.sdkName, 'DeviceNotFoundError', String(err));
      return true;
    });

  test('addDevices, updateDevices (forced), removeDevices (forced): all succeed', async () => {
    const ids = [0, 1, 2].map((i) => `bulk-${i}-${crypto.randomUUID()}`);
    const keys = ids.map(() => ({ primaryKey: key(), secondaryKey: key() }));
    const add = await sdk.registry(hubCs, 'addDevices',
      ids.map((deviceId, i) => ({ deviceId, status: 'disabled', authentication: { symmetricKey: keys[i] } })));
    assert.equal(add.status, 200);
    assert.deepEqual(add.body, { isSuccessful: true, errors: [], warnings: [] });
    for (const [i, id] of ids.entries()) {
      const d = await get(id);
      assert.equal(d.status, 'disabled');
      assert.equal(d.authentication.symmetricKey.primaryKey, keys[i].primaryKey, 'the keys given');
    }

    // Only status given: the SDK sends empty keys, which keep the stored ones.
    const upd = await sdk.registry(hubCs, 'updateDevices', ids.map((deviceId) => ({ deviceId, status: 'enabled' })), true);
    assert.equal(upd.status, 200);
    assert.equal(upd.body.isSuccessful, true, JSON.stringify(upd.body));
    for (const [i, id] of ids.entries()) {
      const d = await get(id);
      assert.equal(d.status, 'enabled');
      assert.equal(d.authentication.symmetricKey.primaryKey, keys[i].primaryKey, 'keys kept by the update');
    }

    const rm = await sdk.registry(hubCs, 'removeDevices', ids.map((deviceId) => ({ deviceId })), true);
    assert.equal(rm.status, 200);
    assert.equal(rm.body.isSuccessful, true, JSON.stringify(rm.body));
    for (const id of ids) await assertGone(id);
  });

  test('updateDevices and removeDevices under etags: a stale etag fails its device only', async () => {
    const ids = [0, 1].map((i) => `bulk-etag-${i}-${crypto.randomUUID()}`);
    await sdk.registry(hubCs, 'addDevices', ids.map((deviceId) => ({ deviceId })));
    const [d0, d1] = await Promise.all(ids.map(get));
    // d0 changes behind the caller's back: its etag goes stale.
    await sdk.registry(hubCs, 'update', { deviceId: d0.deviceId, status: 'disabled' });

    // Devices as read with Registry.get, etag included (forceUpdate false:
    // UpdateIfMatchETag). IoT Hub answers a partial failure with 400 and
    // the result, which the SDK turns into an error carrying the body.
    await assert.rejects(
      sdk.registry(hubCs, 'updateDevices', [{ ...d0, status: 'enabled' }, { ...d1, status: 'disabled' }], false),
      (err) => {
        assert.equal(err.status, 400, String(err));
        assert.equal(err.body.isSuccessful, false, JSON.stringify(err.body));
        assert.equal(err.body.errors.length, 1, JSON.stringify(err.body));
        assert.equal(err.body.errors[0].deviceId, d0.deviceId);
        assert.equal(err.body.errors[0].errorCode, 'PreconditionFailed');
        assert.ok(err.body.errors[0].errorStatus, 'errorStatus says why');
        return true;
      });
    assert.equal((await get(d0.deviceId)).status, 'disabled', 'the stale update was not applied');
    const d1now = await get(d1.deviceId);
    assert.equal(d1now.status, 'disabled', 'the other device was updated');

    // removeDevices(forceRemove false): d1 under its old etag fails, d0
    // under its current one goes.
    const d0now = await get(d0.deviceId);
    await assert.rejects(
      sdk.registry(hubCs, 'removeDevices', [d0now, d1], false),
      (err) => {
        assert.equal(err.status, 400, String(err));
        assert.deepEqual(err.body.errors.map((e) => [e.deviceId, e.errorCode]), [[d1.deviceId, 'PreconditionFailed']]);
        return true;
      });
    await assertGone(d0.deviceId);
    const rm = await sdk.registry(hubCs, 'removeDevices', [d1now], false);
    assert.equal(rm.body.isSuccessful, true, JSON.stringify(rm.body));
    await assertGone(d1.deviceId);
  });

  test('addDevices with one existing device: the others are created, the failure is reported', async () => {
    const existing = `bulk-exists-${crypto.randomUUID()}`;
    const fresh = [0, 1].map((i) => `bulk-new-${i}-${crypto.randomUUID()}`);
    await sdk.registry(hubCs, 'create', { deviceId: existing });
    await assert.rejects(
      sdk.registry(hubCs, 'addDevices', [{ deviceId: fresh[0] }, { deviceId: existing }, { deviceId: fresh[1] }]),
      (err) => {
        assert.equal(err.status, 400, String(err));
        assert.equal(err.headers['iothub-errorcode'], 'BulkRegistryOperationFailure');
        assert.deepEqual(err.body.errors.map((e) => [e.deviceId, e.errorCode]), [[existing, 'DeviceAlreadyExists']]);
        assert.deepEqual(err.body.warnings, []);
        return true;
      });
    for (const id of fresh) assert.equal((await get(id)).deviceId, id, `${id} created beside the failure`);
    // Removing a device that is not there fails that device only.
    await assert.rejects(
      sdk.registry(hubCs, 'removeDevices', [{ deviceId: fresh[0] }, { deviceId: `ghost-${crypto.randomUUID()}` }, { deviceId: fresh[1] }], true),
      (err) => {
        assert.deepEqual(err.body.errors.map((e) => e.errorCode), ['DeviceNotFound']);
        return true;
      });
    for (const id of fresh) await assertGone(id);
  });

  test('one device named twice, or more than 100: refused whole', async () => {
    const id = `bulk-twice-${crypto.randomUUID()}`;
    await assert.rejects(sdk.registry(hubCs, 'addDevices', [{ deviceId: id }, { deviceId: id }]), (err) => {
      assert.equal(err.status, 400, String(err));
      assert.equal(err.headers['iothub-errorcode'], 'DeviceDefinedMultipleTimes');
      return true;
    });
    await assertGone(id);
    // The SDK itself refuses an empty or over-100 list; a raw request
    // shows what the hub answers.
    const many = Array.from({ length: 101 }, (_, i) => ({ id: `bulk-many-${i}`, importMode: 'create' }));
    const res = await sdk.hubRest(hubCs, 'POST', '/devices?api-version=2021-04-12', { 'Content-Type': 'application/json' }, many);
    assert.equal(res.status, 413, res.text);
    assert.equal(res.headers['iothub-errorcode'], 'TooManyDevices');
    await assertGone('bulk-many-0');
  });

  test('edge scopes: an edge device gets one, a child takes it, a made-up scope is refused', async () => {
    const edge = (await sdk.registry(hubCs, 'create', { deviceId: `edge-${crypto.randomUUID()}`, capabilities: { iotEdge: true } })).body;
    assert.equal(edge.capabilities.iotEdge, true);
    assert.equal(edge.deviceScope, `ms-azure-iot-edge://${edge.deviceId}-${edge.generationId}`);
    assert.deepEqual(edge.parentScopes, []);

    const child = (await sdk.registry(hubCs, 'create', { deviceId: `leaf-${crypto.randomUUID()}`, deviceScope: edge.deviceScope })).body;
    assert.equal(child.deviceScope, edge.deviceScope);
    assert.deepEqual(child.parentScopes, [edge.deviceScope]);
    const got = await get(child.deviceId);
    assert.equal(got.deviceScope, edge.deviceScope);
    assert.deepEqual(got.parentScopes, [edge.deviceScope]);

    const plain = await get((await sdk.registry(hubCs, 'create', { deviceId: `plain-${crypto.randomUUID()}` })).body.deviceId);
    assert.equal(plain.deviceScope, null);
    assert.deepEqual(plain.parentScopes, []);

    await assert.rejects(sdk.registry(hubCs, 'update', { ...got, deviceScope: crypto.randomUUID() }), (err) => {
      assert.equal(err.status, 400, String(err));
      return true;
    });
    assert.equal((await get(child.deviceId)).deviceScope, edge.deviceScope, 'the refused update changed nothing');

    // Nested edge: a second edge device below the first.
    const lower = (await sdk.registry(hubCs, 'create',
      { deviceId: `edge2-${crypto.randomUUID()}`, capabilities: { iotEdge: true }, parentScopes: [edge.deviceScope] })).body;
    assert.deepEqual(lower.parentScopes, [edge.deviceScope]);
    assert.notEqual(lower.deviceScope, edge.deviceScope);

    // Registry.getTwin shows the scope as well.
    const tw = (await sdk.registry(hubCs, 'getTwin', child.deviceId)).body;
    assert.equal(tw.deviceScope, edge.deviceScope);

    for (const d of [edge, child, plain, lower]) await sdk.registry(hubCs, 'delete', d.deviceId);
  });

  test('MQTT device: desired nulled as a whole by twin.update reaches the device, which ends with none', async () => {
    const { body } = await sdk.registry(hubCs, 'create', { deviceId: `null-${crypto.randomUUID()}` });
    const cs = `HostName=${berth.info.hubHostName};DeviceId=${body.deviceId};SharedAccessKey=${body.authentication.symmetricKey.primaryKey}`;
    const h = await sdk.device.open('mqtt', cs);
    handles.push(h);
    const t0 = await sdk.device.getTwin(h);
    const d0 = t0.desired.$version;
    await sdk.device.watchDesired(h);

    const waitDesired = async (v) => {
      const deadline = Date.now() + 10000;
      for (;;) {
        const e = (await sdk.device.events(h, 'desired')).find((x) => x.patch.$version === v);
        if (e) return e.patch;
        if (Date.now() > deadline) throw new Error(`no desired event with $version ${v}`);
        await sleep(100);
      }
    };
    const u1 = await sdk.registry(hubCs, 'updateTwin', body.deviceId, { properties: { desired: { foo: 1, bar: { baz: 2 } } } }, '*');
    assert.equal(u1.body.properties.desired.$version, d0 + 1);
    await waitDesired(d0 + 1);

    const u2 = await sdk.registry(hubCs, 'updateTwin', body.deviceId, { properties: { desired: null } }, '*');
    assert.equal(u2.status, 200);
    assert.equal(u2.body.properties.desired.$version, d0 + 2, 'a nulled section is a desired change');
    assert.deepEqual(Object.keys(u2.body.properties.desired).filter((k) => !k.startsWith('$')), [], JSON.stringify(u2.body.properties.desired));
    assert.deepEqual(await waitDesired(d0 + 2), { foo: null, bar: null, $version: d0 + 2 });

    const t2 = await sdk.device.getTwin(h);
    assert.deepEqual(t2.desired, { $version: d0 + 2 }, 'the device twin after the clearing');

    // Tags nulled as a whole: the twin's tags go, the device hears nothing.
    await sdk.registry(hubCs, 'updateTwin', body.deviceId, { tags: { site: 'lab' } }, '*');
    const u3 = await sdk.registry(hubCs, 'updateTwin', body.deviceId, { tags: null }, '*');
    assert.deepEqual(u3.body.tags, {});
    assert.equal(u3.body.properties.desired.$version, d0 + 2);
  });
});
