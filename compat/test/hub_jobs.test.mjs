// IoT Hub jobs through the official azure-iothub JobClient, unmodified
// (PUT/GET /jobs/v2/{id}, POST /jobs/v2/{id}/cancel, GET /jobs/v2/query):
// a twin-update job and a method job over query conditions, answered by
// devices connected with azure-iot-device over MQTT; a future job
// cancelled; job queries; devices.jobs through Registry.createQuery; and a
// method job in flight when berth is killed, finished after the restart
// without calling the device twice.

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { berthCli, restartBerth, startBerth } from '../lib/berth.mjs';
import { startSdkWorker } from '../lib/sdk.mjs';

const IP = process.env.BERTH_COMPAT_JOBS_IP;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

describe('IoT Hub jobs: azure-iothub JobClient', { timeout: 180000 }, () => {
  let berth;
  let sdk;
  let hubCs;
  const handles = {};
  const keys = {};
  const ids = ['job-0', 'job-1', 'job-2', 'job-3'];
  const groups = ['a', 'a', 'b', 'b'];

  const deviceCs = (id) => `HostName=${berth.info.hubHostName};DeviceId=${id};SharedAccessKey=${keys[id]}`;

  before(async () => {
    berth = await startBerth(IP);
    hubCs = berth.info.hubConnectionString;
    sdk = await startSdkWorker(berth.caFile);
    for (const [i, deviceId] of ids.entries()) {
      const { body } = await sdk.registry(hubCs, 'create', { deviceId });
      keys[deviceId] = body.authentication.symmetricKey.primaryKey;
      await sdk.registry(hubCs, 'updateTwin', deviceId, { tags: { group: groups[i] } }, '*');
    }
    // job-0 watches its desired properties; job-2 and job-3 answer methods.
    handles['job-0'] = await sdk.device.open('mqtt', deviceCs('job-0'));
    await sdk.device.getTwin(handles['job-0']);
    await sdk.device.watchDesired(handles['job-0']);
    for (const id of ['job-2', 'job-3']) {
      handles[id] = await sdk.device.open('mqtt', deviceCs(id));
      await sdk.device.onMethod(handles[id], 'reboot', 'echo');
    }
  });

  after(async () => {
    if (sdk) {
      for (const h of Object.values(handles)) await sdk.device.close(h).catch(() => {});
      await sdk.close();
    }
    if (berth) await berth.stop();
  });

  // getJob until the job is in one of statuses (the wait is generous: the
  // machine may be busy; only the state reached is asserted).
  const waitJob = async (jobId, statuses) => {
    const seen = [];
    const deadline = Date.now() + 60000;
    for (;;) {
      const { body } = await sdk.jobClient(hubCs, 'getJob', jobId);
      if (seen.at(-1) !== body.status) seen.push(body.status);
      if (statuses.includes(body.status)) return { job: body, seen };
      if (Date.now() > deadline) throw new Error(`job ${jobId} stayed ${body.status}: ${JSON.stringify(body)}`);
      await sleep(200);
    }
  };

  test('scheduleTwinUpdate: queued, then completed; the twins and a connected device get the patch', async () => {
    const jobId = crypto.randomUUID();
    const patch = { etag: '*', tags: { updated: true }, properties: { desired: { fw: '2.0' }, reported: {} } };
    const created = await sdk.jobClient(hubCs, 'scheduleTwinUpdate', jobId, "tags.group = 'a'", patch, new Date().toISOString(), 120);
    assert.equal(created.status, 200);
    assert.equal(created.body.jobId, jobId);
    assert.equal(created.body.status, 'queued');
    assert.equal(created.body.type, 'scheduleUpdateTwin');
    assert.equal(created.body.queryCondition, "tags.group = 'a'");
    const { job } = await waitJob(jobId, ['completed', 'failed', 'cancelled']);
    assert.equal(job.status, 'completed');
    assert.deepEqual(job.deviceJobStatistics, { deviceCount: 2, failedCount: 0, succeededCount: 2, runningCount: 0, pendingCount: 0 });
    assert.ok(job.endTime, 'a completed job has an end time');
    for (const [i, id] of ids.entries()) {
      const tw = (await sdk.registry(hubCs, 'getTwin', id)).body;
      assert.equal(tw.tags.updated === true, groups[i] === 'a', `${id}: ${JSON.stringify(tw.tags)}`);
      assert.equal(tw.properties.desired.fw === '2.0', groups[i] === 'a', `${id}: ${JSON.stringify(tw.properties.desired)}`);
    }
    let desired = [];
    for (const deadline = Date.now() + 10000; Date.now() < deadline && !desired.length; await sleep(100)) {
      desired = await sdk.device.events(handles['job-0'], 'desired');
    }
    assert.ok(desired.some((e) => e.patch.fw === '2.0'), `job-0 heard the desired patch: ${JSON.stringify(desired)}`);
  });

  test('scheduleDeviceMethod: both connected devices answer; outcomes in devices.jobs', async () => {
    const jobId = crypto.randomUUID();
    const params = { methodName: 'reboot', payload: { delay: 5 }, responseTimeoutInSeconds: 30 };
    const created = await sdk.jobClient(hubCs, 'scheduleDeviceMethod', jobId, "deviceId IN ['job-2', 'job-3']", params, new Date().toISOString(), 120);
    assert.equal(created.body.status, 'queued');
    assert.equal(created.body.type, 'scheduleDeviceMethod');
    assert.equal(created.body.cloudToDeviceMethod.methodName, 'reboot');
    const { job, seen } = await waitJob(jobId, ['completed', 'failed', 'cancelled']);
    assert.equal(job.status, 'completed', JSON.stringify(seen));
    assert.equal(job.deviceJobStatistics.deviceCount, 2);
    assert.equal(job.deviceJobStatistics.succeededCount, 2);
    for (const id of ['job-2', 'job-3']) {
      const calls = await sdk.device.events(handles[id], 'method');
      assert.equal(calls.length, 1, `${id} was called once`);
      assert.deepEqual(calls[0].payload, { delay: 5 });
    }
    const pages = await sdk.hubQuery(hubCs, `SELECT * FROM devices.jobs WHERE devices.jobs.jobId = '${jobId}'`);
    const items = pages.flatMap((p) => p.items).sort((a, b) => a.deviceId.localeCompare(b.deviceId));
    assert.deepEqual(items.map((d) => d.deviceId), ['job-2', 'job-3']);
    for (const d of items) {
      assert.equal(d.jobType, 'scheduleDeviceMethod');
      assert.equal(d.status, 'completed');
      assert.equal(d.outcome.deviceMethodResponse.status, 200);
      assert.deepEqual(d.outcome.deviceMethodResponse.payload, { ok: true, echo: { delay: 5 } });
    }
    const count = await sdk.hubQuery(hubCs, "SELECT COUNT() AS n FROM devices.jobs WHERE status = 'completed'");
    assert.equal(count[0].items[0].n, 4, 'the two twin-update and the two method device jobs');
  });

  test('a job an hour ahead is queued, then scheduled; cancelJob cancels it and nothing runs', async () => {
    const jobId = crypto.randomUUID();
    const start = new Date(Date.now() + 3600 * 1000);
    const created = await sdk.jobClient(hubCs, 'scheduleTwinUpdate', jobId, "deviceId = 'job-1'", { etag: '*', tags: { later: true } }, start.toISOString(), 120);
    assert.equal(created.body.status, 'queued');
    assert.equal(new Date(created.body.startTime).getTime(), start.getTime());
    await waitJob(jobId, ['scheduled']);
    const cancelled = await sdk.jobClient(hubCs, 'cancelJob', jobId);
    assert.equal(cancelled.status, 200);
    assert.equal(cancelled.body.status, 'cancelled');
    assert.equal((await sdk.jobClient(hubCs, 'getJob', jobId)).body.status, 'cancelled');
    assert.equal((await sdk.registry(hubCs, 'getTwin', 'job-1')).body.tags.later, undefined);
    // An unknown job is 404 JobNotFound.
    await assert.rejects(sdk.jobClient(hubCs, 'getJob', 'no-such-job'), (e) => e.status === 404 && /JobNotFound/.test(e.message));
  });

  test('createQuery: by type and status, and paging by one', async () => {
    const methods = (await sdk.jobQuery(hubCs, 'scheduleDeviceMethod', 'completed')).flatMap((p) => p.items);
    assert.equal(methods.length, 1);
    assert.equal(methods[0].type, 'scheduleDeviceMethod');
    const cancelled = (await sdk.jobQuery(hubCs, null, 'cancelled')).flatMap((p) => p.items);
    assert.equal(cancelled.length, 1);
    const pages = await sdk.jobQuery(hubCs, null, null, 1);
    assert.equal(pages.length, 3, JSON.stringify(pages.map((p) => p.items.map((j) => j.jobId))));
    assert.deepEqual(pages.map((p) => p.hasMoreResults), [true, true, false]);
    assert.equal(new Set(pages.flatMap((p) => p.items.map((j) => j.jobId))).size, 3);
  });

  test('berth hub job: create, show, list, cancel', async () => {
    const made = await berthCli(berth, ['hub', 'job', 'create', '--job-id', 'cli-job', '--job-type', 'scheduleUpdateTwin',
      '--query-condition', "deviceId = 'job-3'", '--twin-patch', '{"tags":{"cli":1}}', '--start-time', new Date(Date.now() + 3600e3).toISOString()]);
    assert.equal(made.jobId, 'cli-job');
    assert.equal(made.status, 'queued');
    assert.equal((await berthCli(berth, ['hub', 'job', 'show', '--job-id', 'cli-job'])).jobId, 'cli-job');
    const listed = await berthCli(berth, ['hub', 'job', 'list', '--job-type', 'scheduleUpdateTwin']);
    assert.ok(listed.some((j) => j.jobId === 'cli-job'));
    assert.equal((await berthCli(berth, ['hub', 'job', 'cancel', '--job-id', 'cli-job'])).status, 'cancelled');
  });

  test('import and export: Registry.exportDevicesToBlob, importDevicesFromBlob, getJob, listJobs over file:// containers', async () => {
    const blobs = path.join(berth.dataDir, 'blobs');
    const waitIE = async (jobId) => {
      for (const deadline = Date.now() + 60000; ; await sleep(200)) {
        const { body } = await sdk.registry(hubCs, 'getJob', jobId);
        if (!['enqueued', 'running'].includes(body.status)) return body;
        if (Date.now() > deadline) throw new Error(`job ${jobId} stayed ${body.status}`);
      }
    };
    const out = `file://${blobs}/export-1`;
    const { body: created } = await sdk.registry(hubCs, 'exportDevicesToBlob', out, false);
    assert.equal(created.type, 'export');
    assert.equal(created.status, 'enqueued');
    const done = await waitIE(created.jobId);
    assert.equal(done.status, 'completed', JSON.stringify(done));
    const lines = fs.readFileSync(path.join(blobs, 'export-1', 'devices.txt'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    for (const id of ids) {
      const d = lines.find((l) => l.id === id);
      assert.ok(d, `${id} exported`);
      assert.equal(d.authentication.symmetricKey.primaryKey, keys[id]);
    }
    assert.equal(lines.find((l) => l.id === 'job-0').tags.group, 'a');

    // Import: one new device with tags, one update, one line that fails.
    const inDir = path.join(blobs, 'import-1');
    fs.mkdirSync(inDir, { recursive: true });
    fs.writeFileSync(path.join(inDir, 'devices.txt'), [
      { id: 'imported-1', importMode: 'create', status: 'enabled', tags: { origin: 'blob' } },
      { id: 'job-3', importMode: 'updateTwin', tags: { imported: true } },
      { id: 'job-2', importMode: 'create' },
    ].map((l) => JSON.stringify(l)).join('\n') + '\n');
    const { body: imp } = await sdk.registry(hubCs, 'importDevicesFromBlob', `file://${inDir}`, out);
    assert.equal(imp.type, 'import');
    assert.equal((await waitIE(imp.jobId)).status, 'completed');
    const { body: dev } = await sdk.registry(hubCs, 'get', 'imported-1');
    assert.ok(dev.authentication.symmetricKey.primaryKey, 'keys made for the imported device');
    assert.equal((await sdk.registry(hubCs, 'getTwin', 'imported-1')).body.tags.origin, 'blob');
    assert.equal((await sdk.registry(hubCs, 'getTwin', 'job-3')).body.tags.imported, true);
    const errors = fs.readFileSync(path.join(blobs, 'export-1', 'importErrors.log'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    assert.deepEqual(errors.map((e) => [e.deviceId, e.errorCode]), [['job-2', 'DeviceAlreadyExists']]);
    const { body: all } = await sdk.registry(hubCs, 'listJobs');
    assert.deepEqual(all.map((j) => j.jobId).sort(), [created.jobId, imp.jobId].sort());
    // A container outside the data directory's blobs/ is refused.
    await assert.rejects(sdk.registry(hubCs, 'exportDevicesToBlob', 'file:///tmp', false), (e) => e.status === 400);
  });

  test('a method job in flight when berth is killed finishes after the restart, without calling the device twice', async () => {
    const id = 'job-1';
    handles[id] = await sdk.device.open('mqtt', deviceCs(id));
    await sdk.device.onMethod(handles[id], 'slow', 'silent');
    const jobId = crypto.randomUUID();
    await sdk.jobClient(hubCs, 'scheduleDeviceMethod', jobId, `deviceId = '${id}'`,
      { methodName: 'slow', payload: null, responseTimeoutInSeconds: 120 }, new Date().toISOString(), 600);
    let calls = [];
    for (const deadline = Date.now() + 30000; Date.now() < deadline && !calls.length; await sleep(100)) {
      calls = await sdk.device.events(handles[id], 'method');
    }
    assert.equal(calls.length, 1, 'the device got the call');
    assert.equal((await sdk.jobClient(hubCs, 'getJob', jobId)).body.status, 'running');

    berth = await restartBerth(berth, [], { signal: 'SIGKILL' });
    hubCs = berth.info.hubConnectionString;
    const { job } = await waitJob(jobId, ['completed', 'failed', 'cancelled']);
    assert.equal(job.status, 'completed');
    assert.equal(job.deviceJobStatistics.failedCount, 1, JSON.stringify(job));
    const pages = await sdk.hubQuery(hubCs, `SELECT * FROM devices.jobs WHERE jobId = '${jobId}'`);
    const d = pages[0].items[0];
    assert.equal(d.status, 'failed');
    assert.equal(d.error.code, 'JobRunInterrupted');
    await sleep(1000);
    assert.equal((await sdk.device.events(handles[id], 'method')).length, 1, 'never called again');
  });
});
