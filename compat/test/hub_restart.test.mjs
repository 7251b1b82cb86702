// What a device finds after berth restarts on the same data directory
// (lib/berth.mjs restartBerth: SIGTERM, then `berth serve` again): its
// twin (desired and reported properties, their versions) and a
// cloud-to-device message queued before the restart, through the official
// SDKs (azure-iot-device + azure-iot-device-mqtt, azure-iothub).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { restartBerth, startBerth } from '../lib/berth.mjs';
import { startSdkWorker } from '../lib/sdk.mjs';

const IP = process.env.BERTH_COMPAT_RESTART_IP;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

describe('IoT Hub SDKs: twins and queued C2D messages survive a restart of berth', { timeout: 120000 }, () => {
  let berth;
  let sdk;

  before(async () => {
    berth = await startBerth(IP);
  });

  after(async () => {
    if (sdk) await sdk.close();
    if (berth) await berth.stop();
  });

  test('desired and reported properties and a queued message are there after the restart', async (t) => {
    const deviceId = 'restart-dev';
    sdk = await startSdkWorker(berth.caFile);
    let hubCs = berth.info.hubConnectionString;
    const { body: device } = await sdk.registry(hubCs, 'create', { deviceId });
    const cs = `HostName=${berth.info.hubHostName};DeviceId=${deviceId};SharedAccessKey=${device.authentication.symmetricKey.primaryKey}`;

    // Before: reported from the device, desired from the service, one message queued.
    const h = await sdk.device.open('mqtt', cs);
    await sdk.device.getTwin(h);
    await sdk.device.updateReported(h, { firmware: '2.0.0' });
    await sdk.device.close(h);
    const tw = (await sdk.registry(hubCs, 'getTwin', deviceId)).body;
    const upd = (await sdk.registry(hubCs, 'updateTwin', deviceId, { properties: { desired: { interval: 30, profile: { name: 'night' } } } }, tw.etag)).body;
    const dVersion = upd.properties.desired.$version;
    const rVersion = upd.properties.reported.$version;
    const sent = await sdk.hubRest(hubCs, 'POST', `/devices/${deviceId}/messages/deviceBound?api-version=2021-04-12`,
      { 'Content-Type': 'text/plain', 'iothub-messageid': 'before-restart', 'iothub-app-kept': 'yes' }, 'queued before the restart');
    assert.equal(sent.status, 200, sent.text);
    await sdk.close();
    sdk = null;

    const started = Date.now();
    berth = await restartBerth(berth);
    t.diagnostic(`restart took ${Date.now() - started} ms`);
    // client.json is written anew; the CA and the hub's keys are the data directory's.
    hubCs = berth.info.hubConnectionString;
    sdk = await startSdkWorker(berth.caFile);

    const s = (await sdk.registry(hubCs, 'getTwin', deviceId)).body;
    assert.equal(s.properties.desired.interval, 30, JSON.stringify(s.properties));
    assert.deepEqual(s.properties.desired.profile, { name: 'night' });
    assert.equal(s.properties.desired.$version, dVersion);
    assert.equal(s.properties.reported.firmware, '2.0.0');
    assert.equal(s.properties.reported.$version, rVersion);
    assert.equal((await sdk.registry(hubCs, 'get', deviceId)).body.cloudToDeviceMessageCount, 1);

    // The device, with the connection string it had before.
    const h2 = await sdk.device.open('mqtt', cs);
    const t2 = await sdk.device.getTwin(h2);
    assert.equal(t2.desired.interval, 30);
    assert.equal(t2.desired.$version, dVersion);
    assert.equal(t2.reported.firmware, '2.0.0');
    await sdk.device.listenC2D(h2);
    const deadline = Date.now() + 10000;
    let msgs = [];
    while (Date.now() < deadline) {
      msgs = await sdk.device.events(h2, 'message');
      if (msgs.length) break;
      await sleep(100);
    }
    assert.equal(msgs.length, 1, `the queued message after the restart: ${JSON.stringify(await sdk.device.events(h2))}`);
    assert.equal(msgs[0].message.messageId, 'before-restart');
    assert.equal(msgs[0].message.data, 'queued before the restart');
    assert.equal(msgs[0].message.properties.kept, 'yes');
    await sdk.device.settle(h2, msgs[0].message.ref, 'complete');
    await sdk.device.close(h2);
  });
});
