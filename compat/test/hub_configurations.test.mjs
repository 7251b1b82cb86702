// Automatic device configurations through the official azure-iothub
// Registry (addConfiguration, getConfiguration, getConfigurations,
// updateConfiguration, removeConfiguration,
// applyConfigurationContentOnDevice), and what they do to device twins: the
// content reaches a matching MQTT device as a desired patch, a device that
// matches later gets it too, on a path two configurations set the highest
// priority wins, and a device that stops matching loses it
// (docs/configurations.md).

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { after, before, describe, test } from 'node:test';

import { startBerth } from '../lib/berth.mjs';
import { startSdkWorker } from '../lib/sdk.mjs';

const IP = process.env.BERTH_COMPAT_CONFIG_IP;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// eventually polls fn until it returns a truthy value; configurations are
// applied in the background, as on IoT Hub. The deadline only bounds a
// failure, it is not a timing assertion.
async function eventually(what, fn) {
  const deadline = Date.now() + 20000;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`never: ${what}`);
    await sleep(200);
  }
}

describe('IoT Hub automatic device configurations', { timeout: 180000, concurrency: false }, () => {
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

  const twin = async (id) => (await sdk.registry(hubCs, 'getTwin', id)).body;
  const config = async (id) => (await sdk.registry(hubCs, 'getConfiguration', id)).body;

  test('add, get, list, update under its etag and forced, remove', async () => {
    const id = `cfg-crud-${crypto.randomUUID()}`;
    const content = { deviceContent: { 'properties.desired.settings': { rate: 5 } } };
    const add = await sdk.registry(hubCs, 'addConfiguration',
      { id, content, targetCondition: "tags.site='nowhere'", priority: 3, labels: { team: 'ops' }, metrics: { queries: { slow: "SELECT deviceId FROM devices WHERE properties.reported.rate < 5" } } });
    assert.equal(add.status, 200);
    assert.equal(add.body.id, id);
    assert.equal(add.body.schemaVersion, '1.0', 'the SDK fills it in');
    assert.ok(add.body.etag, 'an etag');
    assert.ok(Date.parse(add.body.createdTimeUtc) > 0, add.body.createdTimeUtc);

    const got = await config(id);
    assert.deepEqual(got.content, content, 'the content as written');
    assert.deepEqual(got.labels, { team: 'ops' });
    assert.equal(got.priority, 3);
    assert.equal(got.systemMetrics.queries.targetedCount, "SELECT deviceId FROM devices WHERE tags.site='nowhere'");
    assert.deepEqual(got.systemMetrics.results, { targetedCount: 0, appliedCount: 0 });
    assert.deepEqual(got.metrics.results, { slow: 0 });

    const list = (await sdk.registry(hubCs, 'getConfigurations')).body;
    assert.ok(list.some((c) => c.id === id), 'listed');

    await assert.rejects(sdk.registry(hubCs, 'addConfiguration', { id, content, targetCondition: '', priority: 1 }), (err) => {
      assert.equal(err.status, 409, String(err));
      assert.equal(err.headers['iothub-errorcode'], 'ConfigurationAlreadyExists');
      return true;
    });

    // Update under the etag read; then a stale etag fails; forced works.
    const upd = await sdk.registry(hubCs, 'updateConfiguration', { ...got, priority: 7 });
    assert.equal(upd.body.priority, 7);
    assert.notEqual(upd.body.etag, got.etag);
    assert.equal(upd.body.createdTimeUtc, got.createdTimeUtc, 'created time kept');
    await assert.rejects(sdk.registry(hubCs, 'updateConfiguration', { ...got, priority: 8 }), (err) => {
      assert.equal(err.status, 412, String(err));
      return true;
    });
    const forced = await sdk.registry(hubCs, 'updateConfiguration', { id, content, targetCondition: "tags.site='x'", priority: 9 }, true);
    assert.equal(forced.body.priority, 9);
    assert.equal(forced.body.targetCondition, "tags.site='x'");
    // The content cannot change.
    await assert.rejects(sdk.registry(hubCs, 'updateConfiguration',
      { id, content: { deviceContent: { 'properties.desired.other': 1 } }, priority: 9 }, true), (err) => {
      assert.equal(err.status, 400, String(err));
      return true;
    });

    await sdk.registry(hubCs, 'removeConfiguration', id);
    await assert.rejects(sdk.registry(hubCs, 'getConfiguration', id), (err) => {
      assert.equal(err.status, 404, String(err));
      assert.equal(err.headers['iothub-errorcode'], 'ConfigurationNotFound');
      return true;
    });
  });

  test('a target condition that does not parse, or content outside properties.desired, is refused', async () => {
    await assert.rejects(sdk.registry(hubCs, 'addConfiguration',
      { id: `cfg-bad-${crypto.randomUUID()}`, content: { deviceContent: { 'properties.desired.a': 1 } }, targetCondition: "tags.x = = 'y'", priority: 1 }),
    (err) => {
      assert.equal(err.status, 400, String(err));
      return true;
    });
    await assert.rejects(sdk.registry(hubCs, 'addConfiguration',
      { id: `cfg-bad-${crypto.randomUUID()}`, content: { deviceContent: { 'properties.reported.a': 1 } }, targetCondition: '', priority: 1 }),
    (err) => {
      assert.equal(err.status, 400, String(err));
      return true;
    });
  });

  test('content reaches matching devices, later matches too; highest priority wins; a device that stops matching loses it', async () => {
    const site = `site-${crypto.randomUUID().slice(0, 8)}`;
    const mk = async (name) => {
      const { body } = await sdk.registry(hubCs, 'create', { deviceId: `${name}-${crypto.randomUUID()}` });
      return body;
    };
    const a = await mk('cfg-a');
    const b = await mk('cfg-b');
    await sdk.registry(hubCs, 'updateTwin', a.deviceId, { tags: { site } }, '*');

    // A's device is online over MQTT and hears desired patches.
    const cs = `HostName=${berth.info.hubHostName};DeviceId=${a.deviceId};SharedAccessKey=${a.authentication.symmetricKey.primaryKey}`;
    const h = await sdk.device.open('mqtt', cs);
    handles.push(h);
    await sdk.device.getTwin(h);
    await sdk.device.watchDesired(h);

    const low = `cfg-low-${crypto.randomUUID()}`;
    await sdk.registry(hubCs, 'addConfiguration', {
      id: low, priority: 1, targetCondition: `tags.site='${site}'`,
      content: { deviceContent: { 'properties.desired.firmware': { version: '1.0' }, 'properties.desired.mode': 'eco' } },
    });

    const ta = await eventually('A gets the content', async () => {
      const t = await twin(a.deviceId);
      return t.properties.desired.firmware?.version === '1.0' && t;
    });
    assert.equal(ta.properties.desired.mode, 'eco');
    assert.deepEqual(ta.configurations, { [low]: { status: 'Applied' } });
    const ev = await eventually('the MQTT device hears it', async () =>
      (await sdk.device.events(h, 'desired')).find((e) => e.patch.firmware?.version === '1.0'));
    assert.equal(ev.patch.mode, 'eco');
    assert.equal((await twin(b.deviceId)).properties.desired.firmware, undefined, 'B does not match');

    const m = await eventually('metrics count A', async () => {
      const c = await config(low);
      return c.systemMetrics.results.appliedCount === 1 && c;
    });
    assert.equal(m.systemMetrics.results.targetedCount, 1);

    // B matches later, after a tag change.
    await sdk.registry(hubCs, 'updateTwin', b.deviceId, { tags: { site } }, '*');
    await eventually('B gets the content after its tag change', async () =>
      (await twin(b.deviceId)).properties.desired.firmware?.version === '1.0');

    // A higher priority configuration on A only: both apply, and on the
    // path both set the higher priority wins.
    const high = `cfg-high-${crypto.randomUUID()}`;
    await sdk.registry(hubCs, 'addConfiguration', {
      id: high, priority: 10, targetCondition: `deviceId='${a.deviceId}'`,
      content: { deviceContent: { 'properties.desired.firmware': { version: '2.0' } } },
    });
    const t2 = await eventually('high applies to A', async () => {
      const t = await twin(a.deviceId);
      return t.properties.desired.firmware?.version === '2.0' && t;
    });
    assert.equal(t2.properties.desired.mode, 'eco', "low's other path stays");
    assert.deepEqual(t2.configurations, { [high]: { status: 'Applied' }, [low]: { status: 'Applied' } });
    assert.equal((await twin(b.deviceId)).properties.desired.firmware.version, '1.0', 'B keeps low');

    // Removing high gives the path back to low.
    await sdk.registry(hubCs, 'removeConfiguration', high);
    const t3 = await eventually('low applies to A again', async () => {
      const t = await twin(a.deviceId);
      return t.properties.desired.firmware?.version === '1.0' && t.properties.desired.mode === 'eco' && t;
    });
    assert.deepEqual(t3.configurations, { [low]: { status: 'Applied' } });

    // A stops matching: low's paths go, and the device hears null.
    await sdk.registry(hubCs, 'updateTwin', a.deviceId, { tags: { site: null } }, '*');
    const t4 = await eventually('A loses the content', async () => {
      const t = await twin(a.deviceId);
      return t.properties.desired.firmware === undefined && t;
    });
    assert.equal(t4.properties.desired.mode, undefined);
    assert.equal(t4.configurations, undefined, 'no configuration targets A');
    await eventually('the MQTT device hears the removal', async () =>
      (await sdk.device.events(h, 'desired')).find((e) => e.patch.firmware === null && e.patch.mode === null));

    await sdk.registry(hubCs, 'removeConfiguration', low);
    await eventually('B loses the content when low is removed', async () =>
      (await twin(b.deviceId)).properties.desired.firmware === undefined);
  });

  test('applyConfigurationContentOnDevice writes the device content into its twin at once', async () => {
    const { body } = await sdk.registry(hubCs, 'create', { deviceId: `cfg-apply-${crypto.randomUUID()}`, capabilities: { iotEdge: true } });
    const res = await sdk.registry(hubCs, 'applyConfigurationContentOnDevice', body.deviceId,
      { deviceContent: { 'properties.desired': { level: 3, nested: { on: true } } } });
    assert.ok(res.status >= 200 && res.status < 300, String(res.status));
    const t = await twin(body.deviceId);
    assert.equal(t.properties.desired.level, 3);
    assert.deepEqual(t.properties.desired.nested, { on: true });
    await assert.rejects(sdk.registry(hubCs, 'applyConfigurationContentOnDevice', `ghost-${crypto.randomUUID()}`,
      { deviceContent: { 'properties.desired': { level: 1 } } }), (err) => {
      assert.equal(err.status, 404, String(err));
      return true;
    });
  });

  test('a module configuration (moduleContent, FROM devices.modules) reaches the module twins it selects', async () => {
    const { body: dev } = await sdk.registry(hubCs, 'create', { deviceId: `cfg-mod-${crypto.randomUUID()}` });
    await sdk.registry(hubCs, 'addModule', { deviceId: dev.deviceId, moduleId: 'sensor' });
    await sdk.registry(hubCs, 'addModule', { deviceId: dev.deviceId, moduleId: 'other' });
    const id = `cfg-mod-${crypto.randomUUID()}`;
    await assert.rejects(sdk.registry(hubCs, 'addConfiguration',
      { id, content: { moduleContent: { 'properties.desired.rate': 5 } }, targetCondition: "tags.x='y'", priority: 1 }),
    (err) => {
      assert.equal(err.status, 400, `a device condition for module content: ${err}`);
      return true;
    });
    await sdk.registry(hubCs, 'addConfiguration', {
      id, priority: 1, content: { moduleContent: { 'properties.desired.rate': 5 } },
      targetCondition: `FROM devices.modules WHERE deviceId = '${dev.deviceId}' AND moduleId = 'sensor'`,
    });
    const mt = await eventually('the sensor module gets the content', async () => {
      const { body } = await sdk.registry(hubCs, 'getModuleTwin', dev.deviceId, 'sensor');
      return body.properties.desired.rate === 5 ? body : null;
    });
    assert.equal(mt.configurations?.[id]?.status, 'Applied', JSON.stringify(mt.configurations));
    const other = (await sdk.registry(hubCs, 'getModuleTwin', dev.deviceId, 'other')).body;
    assert.equal(other.properties.desired.rate, undefined, 'a module the condition does not select');
    assert.equal((await twin(dev.deviceId)).properties.desired.rate, undefined, 'the device twin is not a module twin');
    const got = await config(id);
    assert.deepEqual(got.systemMetrics.results, { targetedCount: 1, appliedCount: 1 });
    await sdk.registry(hubCs, 'removeConfiguration', id);
    await eventually('the content goes with the configuration', async () => {
      const { body } = await sdk.registry(hubCs, 'getModuleTwin', dev.deviceId, 'sensor');
      return body.properties.desired.rate === undefined;
    });
  });

  test('the 101st configuration of a hub is refused: 413 ConfigurationCountLimitExceeded', async () => {
    const have = (await sdk.registry(hubCs, 'getConfigurations')).body.length;
    const ids = [];
    for (let i = have; i < 100; i++) {
      const id = `cfg-n-${i}-${crypto.randomUUID().slice(0, 8)}`;
      await sdk.registry(hubCs, 'addConfiguration', { id, content: { deviceContent: { 'properties.desired.n': i } }, targetCondition: '', priority: 0 });
      ids.push(id);
    }
    await assert.rejects(sdk.registry(hubCs, 'addConfiguration',
      { id: `cfg-n-more-${crypto.randomUUID().slice(0, 8)}`, content: { deviceContent: { 'properties.desired.n': 1 } }, targetCondition: '', priority: 0 }),
    (err) => {
      assert.equal(err.status, 413, String(err));
      assert.equal(err.headers['iothub-errorcode'], 'ConfigurationCountLimitExceeded');
      return true;
    });
    for (const id of ids) await sdk.registry(hubCs, 'removeConfiguration', id);
  });
});
