// Module identities through the official Azure IoT SDKs, against a real
// berth: azure-iothub Registry module CRUD and module twins, and
// azure-iot-device ModuleClient.fromConnectionString over MQTT, Amqp and
// AmqpWs (telemetry
// with the module stamp, twin, desired patch, a method invoked with
// azure-iothub Client.invokeDeviceMethod(deviceId, moduleId, …)); a deleted
// module's connection string is refused.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { startBerth } from '../lib/berth.mjs';
import { deviceEvents } from '../lib/monitor.mjs';
import { startSdkWorker } from '../lib/sdk.mjs';

// Own loopback address: $BERTH_COMPAT_MODULES_IP, or a free random one (lib/berth.mjs).
const IP = process.env.BERTH_COMPAT_MODULES_IP;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

describe('IoT Hub SDKs: module identities', { timeout: 150000 }, () => {
  let berth;
  let sdk;
  let hubCs;
  const handles = [];

  before(async () => {
    berth = await startBerth(IP);
    hubCs = berth.info.hubConnectionString;
    sdk = await startSdkWorker(berth.caFile);
  });

  after(async () => {
    if (sdk) {
      for (const h of handles) await sdk.device.close(h).catch(() => {});
      await sdk.close();
    }
    if (berth) await berth.stop();
  });

  const waitEvent = async (h, kind, pred = () => true, timeoutMs = 10000) => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const e = (await sdk.device.events(h, kind)).find(pred);
      if (e) return e;
      if (Date.now() > deadline) throw new Error(`${kind}: nothing within ${timeoutMs} ms: ${JSON.stringify(await sdk.device.events(h))}`);
      await sleep(100);
    }
  };

  test('Registry module CRUD and module twin', async () => {
    const deviceId = 'mod-crud';
    await sdk.registry(hubCs, 'create', { deviceId });
    const added = await sdk.registry(hubCs, 'addModule', { deviceId, moduleId: 'm1' });
    assert.equal(added.body.moduleId, 'm1');
    assert.equal(added.body.deviceId, deviceId);
    assert.ok(added.body.authentication.symmetricKey.primaryKey, 'generated key');
    assert.ok(added.body.etag && added.body.generationId);

    const got = await sdk.registry(hubCs, 'getModule', deviceId, 'm1');
    assert.equal(got.body.etag, added.body.etag);
    await sdk.registry(hubCs, 'addModule', { deviceId, moduleId: 'm2' });
    const list = await sdk.registry(hubCs, 'getModulesOnDevice', deviceId);
    assert.deepEqual(list.body.map((m) => m.moduleId), ['m1', 'm2']);

    const upd = await sdk.registry(hubCs, 'updateModule', { ...got.body, managedBy: 'ops' }, true);
    assert.equal(upd.body.managedBy, 'ops');
    assert.equal(upd.body.authentication.symmetricKey.primaryKey, added.body.authentication.symmetricKey.primaryKey);

    const twin = await sdk.registry(hubCs, 'getModuleTwin', deviceId, 'm1');
    assert.equal(twin.body.moduleId, 'm1');
    const patched = await sdk.registry(hubCs, 'updateModuleTwin', deviceId, 'm1', { tags: { role: 'filter' }, properties: { desired: { rate: 2 } } }, twin.body.etag);
    assert.equal(patched.body.tags.role, 'filter');
    assert.equal(patched.body.properties.desired.rate, 2);

    await sdk.registry(hubCs, 'removeModule', deviceId, 'm2');
    await assert.rejects(sdk.registry(hubCs, 'getModule', deviceId, 'm2'), (e) => e.status === 404 || /ModuleNotFound|404/.test(e.message));
    // Deleting the device deletes its modules.
    await sdk.registry(hubCs, 'delete', deviceId);
    await sdk.registry(hubCs, 'create', { deviceId });
    assert.deepEqual((await sdk.registry(hubCs, 'getModulesOnDevice', deviceId)).body, []);
  });

  for (const [transport, name] of [['mqtt', 'MQTT'], ['amqp', 'Amqp'], ['amqpws', 'AmqpWs']]) {
    test(`ModuleClient over ${name}: telemetry, twin, desired patch, method; a deleted module is refused`, async () => {
      const deviceId = `mod-live-${transport}`;
      await sdk.registry(hubCs, 'create', { deviceId });
      const { body } = await sdk.registry(hubCs, 'addModule', { deviceId, moduleId: 'filter' });
      const cs = `HostName=${berth.info.hubHostName};DeviceId=${deviceId};ModuleId=filter;SharedAccessKey=${body.authentication.symmetricKey.primaryKey}`;
      const h = await sdk.device.open(transport, cs, { module: true });
      handles.push(h);

      await sdk.device.sendEvent(h, JSON.stringify({ t: 1 }), [['k', 'v']]);
      const [ev] = await deviceEvents(berth, deviceId, 1);
      assert.equal(ev.annotations['iothub-connection-device-id'], deviceId);
      assert.equal(ev.annotations['iothub-connection-module-id'], 'filter');

      const twin = await sdk.device.getTwin(h);
      assert.equal(twin.desired.$version, 1);
      await sdk.device.updateReported(h, { fw: '1.2' });
      const st = await sdk.registry(hubCs, 'getModuleTwin', deviceId, 'filter');
      assert.equal(st.body.properties.reported.fw, '1.2');
      const dt = await sdk.registry(hubCs, 'getTwin', deviceId);
      assert.equal(dt.body.properties.reported.fw, undefined, 'the module reported to its device twin');

      await sdk.device.watchDesired(h);
      await sdk.registry(hubCs, 'updateModuleTwin', deviceId, 'filter', { properties: { desired: { rate: 7 } } }, '*');
      const d = await waitEvent(h, 'desired', (e) => e.patch.rate === 7);
      assert.equal(d.patch.$version, 2);

      await sdk.device.onMethod(h, 'reset', 'echo');
      const r = await sdk.invokeModuleMethod(hubCs, deviceId, 'filter', { methodName: 'reset', payload: { n: 1 }, responseTimeoutInSeconds: 10 });
      assert.equal(r.result.status, 200);
      assert.deepEqual(r.result.payload, { ok: true, echo: { n: 1 } });

      await sdk.device.close(h);
      await sdk.registry(hubCs, 'removeModule', deviceId, 'filter');
      await assert.rejects(sdk.device.open(transport, cs, { module: true }));
    });
  }
});
