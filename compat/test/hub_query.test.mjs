// The IoT Hub query language through the official azure-iothub
// Registry.createQuery and Query.next (POST /devices/query with
// x-ms-max-item-count and x-ms-continuation), and the same queries
// through `berth hub query`.
//
// Six devices: tags set with Registry.updateTwin, reported properties sent
// by two of them over MQTT with azure-iot-device.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { berthCli, berthCliRaw, startBerth } from '../lib/berth.mjs';
import { startSdkWorker } from '../lib/sdk.mjs';

const IP = process.env.BERTH_COMPAT_QUERY_IP;

describe('IoT Hub query language: Registry.createQuery and berth hub query', { timeout: 120000 }, () => {
  let berth;
  let sdk;
  let hubCs;
  const handles = [];
  const ids = ['q-0', 'q-1', 'q-2', 'q-3', 'q-4', 'q-5'];
  const plants = ['plant-1', 'plant-3', 'plant-3', 'plant-2', 'plant-3', 'plant-1'];

  before(async () => {
    berth = await startBerth(IP);
    hubCs = berth.info.hubConnectionString;
    sdk = await startSdkWorker(berth.caFile);
    for (const [i, deviceId] of ids.entries()) {
      const { body } = await sdk.registry(hubCs, 'create', { deviceId, status: i === 5 ? 'disabled' : 'enabled' });
      await sdk.registry(hubCs, 'updateTwin', deviceId, { tags: { location: plants[i], floor: i } }, '*');
      if (i === 1 || i === 2) {
        const cs = `HostName=${berth.info.hubHostName};DeviceId=${deviceId};SharedAccessKey=${body.authentication.symmetricKey.primaryKey}`;
        const h = await sdk.device.open('mqtt', cs);
        handles.push(h);
        await sdk.device.getTwin(h);
        await sdk.device.updateReported(h, { fw: i === 1 ? '1.9' : '2.3', battery: 40 * i });
      }
    }
  });

  after(async () => {
    if (sdk) {
      for (const h of handles) await sdk.device.close(h).catch(() => {});
      await sdk.close();
    }
    if (berth) await berth.stop();
  });

  const query = async (sql, pageSize) => {
    const pages = await sdk.hubQuery(hubCs, sql, pageSize);
    return { pages, items: pages.flatMap((p) => p.items) };
  };
  const idsOf = (items) => items.map((t) => t.deviceId).sort();

  test('SELECT * answers twins; tags, reported properties, IN, NOT, IS_DEFINED, STARTSWITH', async () => {
    const { pages, items } = await query("SELECT * FROM devices WHERE tags.location = 'plant-3'");
    assert.equal(pages.length, 1);
    assert.equal(pages[0].itemType, 'twin');
    assert.equal(pages[0].hasMoreResults, false);
    assert.deepEqual(idsOf(items), ['q-1', 'q-2', 'q-4']);
    const t = items.find((x) => x.deviceId === 'q-1');
    assert.equal(t.tags.location, 'plant-3');
    assert.equal(t.properties.reported.fw, '1.9');
    assert.ok(t.etag, 'a twin etag');

    const cases = [
      ["SELECT * FROM devices WHERE tags.location = 'plant-3' AND properties.reported.fw < '2.0'", ['q-1']],
      ['SELECT * FROM devices WHERE properties.reported.battery >= 40', ['q-1', 'q-2']],
      ["SELECT * FROM devices WHERE tags.location IN ['plant-1', 'plant-2']", ['q-0', 'q-3', 'q-5']],
      ["SELECT * FROM devices WHERE tags.location NIN ['plant-1', 'plant-2']", ['q-1', 'q-2', 'q-4']],
      ["SELECT * FROM devices WHERE NOT (status = 'enabled')", ['q-5']],
      ['SELECT * FROM devices WHERE IS_DEFINED(properties.reported.fw)', ['q-1', 'q-2']],
      ['SELECT * FROM devices WHERE NOT IS_DEFINED(properties.reported.fw) AND tags.floor > 3', ['q-4', 'q-5']],
      ["SELECT * FROM devices WHERE STARTSWITH(deviceId, 'q-') AND tags.floor % 2 = 1", ['q-1', 'q-3', 'q-5']],
      ["SELECT * FROM devices WHERE connectionState = 'Connected'", ['q-1', 'q-2']],
      // Azure's type rules: a number never equals a string.
      ["SELECT * FROM devices WHERE tags.floor = '1'", []],
    ];
    for (const [sql, want] of cases) {
      assert.deepEqual(idsOf((await query(sql)).items), want, sql);
    }
  });

  test('projections, aliases and COUNT with GROUP BY answer raw items', async () => {
    const p = await query("SELECT deviceId, tags.location AS plant, properties.reported.fw FROM devices WHERE tags.floor <= 2");
    assert.equal(p.pages[0].itemType, 'raw');
    assert.deepEqual(p.items.sort((a, b) => a.deviceId.localeCompare(b.deviceId)), [
      { deviceId: 'q-0', plant: 'plant-1' },
      { deviceId: 'q-1', plant: 'plant-3', fw: '1.9' },
      { deviceId: 'q-2', plant: 'plant-3', fw: '2.3' },
    ]);
    const g = await query('SELECT tags.location AS location, COUNT() AS n FROM devices GROUP BY tags.location');
    assert.deepEqual(g.items.sort((a, b) => a.location.localeCompare(b.location)), [
      { location: 'plant-1', n: 2 },
      { location: 'plant-2', n: 1 },
      { location: 'plant-3', n: 3 },
    ]);
    assert.deepEqual((await query('SELECT COUNT() AS total FROM devices')).items, [{ total: 6 }]);
  });

  test('devices.modules: module twins, with tags, desired properties, paging and COUNT', async () => {
    // Three modules on q-0 and q-3; one twin written, the others never read.
    for (const deviceId of ['q-3', 'q-0']) {
      for (const moduleId of ['m2', 'm1', '$edgeAgent']) {
        await sdk.registry(hubCs, 'addModule', { deviceId, moduleId });
      }
    }
    const mt = await sdk.registry(hubCs, 'getModuleTwin', 'q-3', 'm1');
    await sdk.registry(hubCs, 'updateModuleTwin', 'q-3', 'm1', { tags: { role: 'filter' }, properties: { desired: { rate: 2 } } }, mt.body.etag);

    const all = await query('SELECT * FROM devices.modules', 2);
    assert.deepEqual(all.pages.map((p) => p.items.map((t) => `${t.deviceId}/${t.moduleId}`)), [
      ['q-0/$edgeAgent', 'q-0/m1'], ['q-0/m2', 'q-3/$edgeAgent'], ['q-3/m1', 'q-3/m2'],
    ]);
    assert.deepEqual(all.pages.map((p) => p.hasMoreResults), [true, true, false]);
    assert.equal(all.pages[0].itemType, 'twin');
    for (const t of all.items) {
      assert.ok(t.etag, `${t.moduleId}: a twin etag`);
      assert.equal(t.status, 'enabled');
      assert.equal(t.connectionState, 'Disconnected');
      assert.equal(t.authenticationType, 'sas');
      assert.equal(typeof t.properties.desired.$version, 'number');
      assert.ok(t.properties.reported.$metadata, 'reported $metadata');
    }
    const filter = all.items.find((t) => t.deviceId === 'q-3' && t.moduleId === 'm1');
    assert.deepEqual(filter.tags, { role: 'filter' });
    assert.equal(filter.properties.desired.rate, 2);
    const got = await sdk.registry(hubCs, 'getModuleTwin', 'q-3', 'm1');
    assert.equal(filter.etag, got.body.etag);
    assert.equal(filter.version, got.body.version);

    const sel = await query("SELECT deviceId, moduleId FROM devices.modules WHERE devices.modules.tags.role = 'filter' OR (moduleId = '$edgeAgent' AND deviceId = 'q-0')");
    assert.equal(sel.pages[0].itemType, 'raw');
    assert.deepEqual(sel.items, [{ deviceId: 'q-0', moduleId: '$edgeAgent' }, { deviceId: 'q-3', moduleId: 'm1' }]);
    const counted = await query('SELECT deviceId, COUNT() AS n FROM devices.modules GROUP BY deviceId');
    assert.deepEqual(counted.items.sort((a, b) => a.deviceId.localeCompare(b.deviceId)), [{ deviceId: 'q-0', n: 3 }, { deviceId: 'q-3', n: 3 }]);
    assert.deepEqual((await query("SELECT * FROM devices.modules WHERE properties.desired.rate = 2")).items.map((t) => t.moduleId), ['m1']);
  });

  test('paging by 2 over 6 devices: query.next() with the continuation token', async () => {
    const { pages } = await query('SELECT * FROM devices', 2);
    assert.equal(pages.length, 3, JSON.stringify(pages.map((p) => p.items.length)));
    assert.deepEqual(pages.map((p) => p.items.map((t) => t.deviceId)), [['q-0', 'q-1'], ['q-2', 'q-3'], ['q-4', 'q-5']]);
    assert.deepEqual(pages.map((p) => p.hasMoreResults), [true, true, false]);
    assert.ok(pages[0].continuationToken && pages[1].continuationToken);
    assert.equal(pages[2].continuationToken, null);
    const top = await query('SELECT TOP 3 * FROM devices', 2);
    assert.deepEqual(top.pages.map((p) => p.items.length), [2, 1]);
  });

  test('a malformed query is answered 400 with the position', async () => {
    await assert.rejects(query('SELECT * FROM devices WHERE tags.location = '), (err) => {
      assert.equal(err.status, 400, String(err));
      assert.match(String(err.message) + JSON.stringify(err.body ?? ''), /position 45/);
      return true;
    });
    const r = await sdk.hubRest(hubCs, 'POST', '/devices/query?api-version=2021-04-12',
      { 'x-ms-continuation': 'not-a-token', 'Content-Type': 'application/json' }, { query: 'SELECT * FROM devices' });
    assert.equal(r.status, 400, r.text);
    assert.equal(r.headers['iothub-errorcode'], 'ArgumentInvalid');
  });

  test('berth hub query: the same queries through the CLI', async () => {
    const twins = await berthCli(berth, ['hub', 'query', '-q', "SELECT * FROM devices WHERE tags.location = 'plant-3'"]);
    assert.deepEqual(idsOf(twins), ['q-1', 'q-2', 'q-4']);
    const paged = await berthCli(berth, ['hub', 'query', '-q', 'SELECT deviceId FROM devices', '--page-size', '2']);
    assert.deepEqual(paged, ids.map((deviceId) => ({ deviceId })));
    const top = await berthCli(berth, ['hub', 'query', '-q', 'SELECT deviceId FROM devices', '--top', '3', '--page-size', '2']);
    assert.equal(top.length, 3);
    const grouped = await berthCli(berth, ['hub', 'query', '-q', 'SELECT status, COUNT() AS n FROM devices GROUP BY status']);
    assert.deepEqual(grouped, [{ n: 1, status: 'disabled' }, { n: 5, status: 'enabled' }]);
    const bad = await berthCliRaw(berth, ['hub', 'query', '-q', 'SELECT * FROM devices WHERE']);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /position 28/);
  });
});
