// The hub's Event Hubs-compatible endpoint with the official Event Hubs SDK
// (@azure/event-hubs EventHubConsumerClient), as a backend reads IoT Hub's
// built-in endpoint: devices send with azure-iot-device over MQTT, HTTPS and
// AMQP; the consumer reads entity and partition properties and subscribes
// from the earliest event, a sequence number, an enqueued time and the
// latest; and it is built from the hub connection string through the
// amqp:link:redirect, as the Azure sample does (lib/eventhubs_ops.cjs).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { berthCli, startBerth } from '../lib/berth.mjs';
import { startSdkWorker } from '../lib/sdk.mjs';

// Own loopback address: $BERTH_COMPAT_EVENTHUBS_IP, or a free random one (lib/berth.mjs).
const IP = process.env.BERTH_COMPAT_EVENTHUBS_IP;

describe('Event Hubs-compatible endpoint: @azure/event-hubs consumer', { timeout: 180000 }, () => {
  let berth;
  let sdk;
  let hubCs;
  let ehCs;
  const devices = {};
  const sent = {}; // transport -> message spec

  before(async () => {
    berth = await startBerth(IP);
    hubCs = berth.info.hubConnectionString;
    sdk = await startSdkWorker(berth.caFile);
    ehCs = (await berthCli(berth, ['hub', 'connection-string', 'show', '--eventhub'])).connectionString;
    assert.match(ehCs, /^Endpoint=sb:\/\/[^/]+\/;SharedAccessKeyName=iothubowner;SharedAccessKey=[^;]+;EntityPath=[^;]+$/);
    for (const transport of ['mqtt', 'http', 'amqp']) {
      const deviceId = `eh-${transport}`;
      const { body } = await sdk.registry(hubCs, 'create', { deviceId });
      const key = body.authentication.symmetricKey.primaryKey;
      devices[transport] = { deviceId, cs: `HostName=${berth.info.hubHostName};DeviceId=${deviceId};SharedAccessKey=${key}` };
      sent[transport] = {
        data: JSON.stringify({ transport, t: 21.5 }),
        messageId: `mid-${transport}`,
        correlationId: `cid-${transport}`,
        contentType: 'application/json',
        contentEncoding: 'utf-8',
        properties: [['run', 'eventhubs'], ['via', transport]],
      };
      await sdk.hubSend(transport, devices[transport].cs, [sent[transport]]);
    }
  });

  after(async () => {
    if (sdk) await sdk.close();
    if (berth) await berth.stop();
  });

  // A body as text: Node gives a data body that is not JSON as a Buffer
  // (base64 over the worker's IPC), a JSON one parsed.
  const text = (e) => (e.body && e.body.buffer !== undefined ? Buffer.from(e.body.buffer, 'base64').toString('utf8') : e.body);
  const byDevice = (events, deviceId) => events.filter((e) => e.systemProperties['iothub-connection-device-id'] === deviceId);

  test('getEventHubProperties and getPartitionProperties', async () => {
    const props = await sdk.call('ehProperties', ehCs);
    assert.equal(props.name, ehCs.match(/EntityPath=(.*)$/)[1]);
    assert.deepEqual(props.partitionIds, ['0', '1', '2', '3']);
    const total = props.partitions.filter((p) => !p.isEmpty).length;
    assert.ok(total >= 1 && total <= 3, `partitions with events: ${total}`);
    for (const p of props.partitions) {
      if (p.isEmpty) continue;
      assert.ok(p.lastEnqueuedSequenceNumber >= p.beginningSequenceNumber, JSON.stringify(p));
      assert.equal(p.lastEnqueuedOffset, String(p.lastEnqueuedSequenceNumber));
      assert.ok(p.lastEnqueuedOnUtc > Date.now() - 120000, 'last enqueued time');
    }
  });

  test('subscribe from the earliest event: every transport, with properties and annotations', async () => {
    const { events, errors } = await sdk.call('ehReceive', ehCs, { start: 'earliest', count: 3 });
    assert.deepEqual(errors, []);
    for (const transport of ['mqtt', 'http', 'amqp']) {
      const [e] = byDevice(events, devices[transport].deviceId);
      assert.ok(e, `an event from ${transport}: ${JSON.stringify(events)}`);
      assert.deepEqual(e.body, { transport, t: 21.5 }, 'JSON body, parsed by the SDK');
      assert.equal(e.messageId, `mid-${transport}`);
      assert.equal(e.correlationId, `cid-${transport}`);
      assert.equal(e.contentType, 'application/json');
      assert.equal(e.properties.run, 'eventhubs');
      assert.equal(e.properties.via, transport);
      const sys = e.systemProperties;
      assert.equal(sys['iothub-message-source'], 'Telemetry');
      assert.match(sys['iothub-connection-auth-method'], /"type":"sas"/);
      assert.ok(sys['iothub-connection-auth-generation-id'], 'generation id');
      assert.equal(typeof sys['iothub-enqueuedtime'], 'number', 'iothub-enqueuedtime is a timestamp');
      assert.ok(e.sequenceNumber >= 1, 'sequence number');
      assert.equal(e.offset, String(e.sequenceNumber));
      assert.ok(Math.abs(e.enqueuedTimeUtc - sys['iothub-enqueuedtime']) < 5000, 'enqueued times agree');
    }
  });

  test('subscribe from a sequence number, an enqueued time and the latest event', async () => {
    const dev = devices.http;
    await sdk.hubSend('http', dev.cs, [{ data: 'second', properties: [['n', '2']] }]);
    const all = byDevice((await sdk.call('ehReceive', ehCs, { start: 'earliest', count: 4 })).events, dev.deviceId);
    assert.equal(all.length, 2, JSON.stringify(all));
    const [first, second] = all;
    const partitionId = (await sdk.call('ehProperties', ehCs)).partitions
      .find((p) => p.lastEnqueuedSequenceNumber === second.sequenceNumber).partitionId;

    const fromSeq = await sdk.call('ehReceive', ehCs, { partitionId, start: { sequenceNumber: first.sequenceNumber, isInclusive: false }, count: 1, quietMs: 3000 });
    assert.deepEqual(fromSeq.events.map(text), ['second']);
    const inclusive = await sdk.call('ehReceive', ehCs, { partitionId, start: { sequenceNumber: first.sequenceNumber, isInclusive: true }, count: 2, quietMs: 3000 });
    assert.equal(inclusive.events[0].sequenceNumber, first.sequenceNumber);
    const fromTime = await sdk.call('ehReceive', ehCs, { partitionId, start: { enqueuedOn: second.enqueuedTimeUtc - 1 }, count: 1, quietMs: 3000 });
    assert.deepEqual(fromTime.events.map(text), ['second']);

    // Latest: nothing old; an event sent meanwhile arrives.
    const latest = sdk.call('ehReceive', ehCs, { partitionId, start: 'latest', count: 1, quietMs: 15000 });
    await new Promise((r) => setTimeout(r, 3000));
    await sdk.hubSend('http', dev.cs, [{ data: 'third' }]);
    const got = await latest;
    assert.deepEqual(got.events.map(text), ['third']);
    assert.ok(got.events[0].sequenceNumber > second.sequenceNumber);
  });

  test('built from the hub connection string through the redirect (the Azure sample)', async () => {
    const cs = await sdk.call('ehFromHub', hubCs);
    assert.match(cs, /^Endpoint=sb:\/\/[^/]+\/;EntityPath=[^;]+;SharedAccessKeyName=iothubowner;SharedAccessKey=/);
    const { events } = await sdk.call('ehReceive', cs, { start: 'earliest', count: 3 });
    assert.ok(byDevice(events, devices.mqtt.deviceId).length === 1, 'reads the telemetry');
  });

  test('a consumer group must exist; berth hub consumer-group create makes one', async () => {
    const unknown = await sdk.call('ehReceive', ehCs, { start: 'earliest', count: 1, quietMs: 3000, consumerGroup: 'nope' });
    assert.equal(unknown.events.length, 0);
    assert.ok(unknown.errors.length > 0, 'the SDK reports the refusal');
    await berthCli(berth, ['hub', 'consumer-group', 'create', 'analytics']);
    const list = await berthCli(berth, ['hub', 'consumer-group', 'list']);
    assert.deepEqual(list.map((g) => g.name), ['$Default', 'analytics']);
    const { events, errors } = await sdk.call('ehReceive', ehCs, { start: 'earliest', count: 3, consumerGroup: 'analytics' });
    assert.deepEqual(errors, []);
    assert.ok(events.length >= 3);
  });

  test('trackLastEnqueuedEventProperties: the partition\'s last event with each batch', async () => {
    const dev = devices.amqp;
    await sdk.hubSend('amqp', dev.cs, [{ data: 'tracked-1' }, { data: 'tracked-2' }]);
    const partitions = (await sdk.call('ehProperties', ehCs)).partitions;
    const mine = byDevice((await sdk.call('ehReceive', ehCs, { start: 'earliest', count: 10, quietMs: 3000 })).events, dev.deviceId);
    const last = mine[mine.length - 1];
    const partition = partitions.find((p) => p.lastEnqueuedSequenceNumber === last.sequenceNumber);
    assert.ok(partition, `the partition whose last event is ${last.sequenceNumber}`);
    const since = Date.now() - 60000;
    const got = await sdk.call('ehReceive', ehCs, { partitionId: partition.partitionId, start: 'earliest', count: mine.length, quietMs: 3000, track: true });
    assert.deepEqual(got.errors, []);
    assert.ok(got.lastEnqueued.length >= 1, 'lastEnqueuedEventProperties with the events');
    for (const l of got.lastEnqueued) {
      // Read from the start: even the first batch knows the partition's end.
      assert.equal(l.sequenceNumber, partition.lastEnqueuedSequenceNumber, JSON.stringify(l));
      assert.equal(l.offset, partition.lastEnqueuedOffset);
      assert.equal(l.enqueuedOn, partition.lastEnqueuedOnUtc);
      assert.ok(l.retrievedOn >= since && l.retrievedOn <= Date.now(), `retrievedOn ${l.retrievedOn}`);
    }
    // Without the option the SDK leaves it empty.
    const plainRun = await sdk.call('ehReceive', ehCs, { partitionId: partition.partitionId, start: 'earliest', count: mine.length, quietMs: 3000 });
    assert.deepEqual(plainRun.lastEnqueued, []);
  });
});
