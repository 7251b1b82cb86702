// Paging through many enrollments (issue #5) with the official DPS service
// SDK: 2,500 individual enrollments written with runBulkEnrollmentOperation
// (10 a call, the service's limit, a bounded number of calls at a time),
// then createIndividualEnrollmentQuery({query: 'SELECT * FROM
// enrollments'}, 100) paged through with the SDK's Query object (the worker
// follows x-ms-continuation as Query.next does): every enrollment exactly
// once, full pages, and no continuation after the last page.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { startBerth } from '../lib/berth.mjs';
import { startSdkWorker } from '../lib/sdk.mjs';

const IP = process.env.BERTH_COMPAT_PAGING_IP;
const TOTAL = 2500;
const PER_CALL = 10;
const CONCURRENT_CALLS = 8;
const PAGE_SIZE = 100;

describe('DPS service SDK: 2,500 enrollments in bulk, paged queries', { timeout: 120000 }, () => {
  let berth;
  let sdk;
  let cs;

  before(async () => {
    berth = await startBerth(IP);
    cs = berth.info.serviceConnectionString;
    sdk = await startSdkWorker(berth.caFile);
  });

  after(async () => {
    if (sdk) await sdk.close();
    if (berth) await berth.stop();
  });

  test(`${TOTAL} individual enrollments by runBulkEnrollmentOperation, then every page of ${PAGE_SIZE}`, async (t) => {
    const ids = Array.from({ length: TOTAL }, (_, i) => `page-${String(i).padStart(5, '0')}`);
    const batches = [];
    for (let i = 0; i < ids.length; i += PER_CALL) batches.push(ids.slice(i, i + PER_CALL));

    let started = Date.now();
    let next = 0;
    const failures = [];
    const runner = async () => {
      while (next < batches.length) {
        const batch = batches[next++];
        // The callback form: the promise form of runBulkEnrollmentOperation
        // never settles in azure-iot-provisioning-service 1.11.2 (lib/sdk_worker.cjs).
        const r = await sdk.serviceCallback(cs, 'runBulkEnrollmentOperation', {
          mode: 'create',
          enrollments: batch.map((registrationId) => ({ registrationId, attestation: { type: 'symmetricKey' } })),
        });
        if (r.status !== 200 || !r.body?.isSuccessful) failures.push({ batch: batch[0], status: r.status, body: r.body });
      }
    };
    await Promise.all(Array.from({ length: CONCURRENT_CALLS }, runner));
    const createMs = Date.now() - started;
    assert.deepEqual(failures, [], 'every bulk call succeeded');
    t.diagnostic(`${batches.length} bulk calls (${CONCURRENT_CALLS} at a time): ${createMs} ms`);

    started = Date.now();
    const pages = await sdk.query(cs, 'individual', { query: 'SELECT * FROM enrollments' }, PAGE_SIZE);
    const queryMs = Date.now() - started;
    t.diagnostic(`${pages.length} pages: ${queryMs} ms`);

    assert.equal(pages.length, TOTAL / PAGE_SIZE, `${TOTAL / PAGE_SIZE} pages of ${PAGE_SIZE}`);
    const seen = new Set();
    const dupes = [];
    pages.forEach((p, i) => {
      assert.equal(p.status, 200);
      assert.equal(p.headers['x-ms-item-type'], 'Enrollment', `page ${i} x-ms-item-type`);
      assert.equal(p.items.length, PAGE_SIZE, `page ${i} is full`);
      const last = i === pages.length - 1;
      if (last) {
        assert.equal(p.headers['x-ms-continuation'], undefined, 'no continuation after the last page');
        assert.equal(p.hasMoreResults, false);
      } else {
        assert.ok(p.headers['x-ms-continuation'], `page ${i} has a continuation`);
        assert.equal(p.hasMoreResults, true);
      }
      for (const e of p.items) {
        if (seen.has(e.registrationId)) dupes.push(e.registrationId);
        seen.add(e.registrationId);
        assert.equal(e.attestation?.type, 'symmetricKey');
      }
    });
    assert.deepEqual(dupes, [], 'no enrollment twice');
    assert.equal(seen.size, TOTAL, 'every enrollment once');
    for (const id of ids) assert.ok(seen.has(id), `${id} in the query`);
  });
});
