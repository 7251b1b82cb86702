// Event Hubs consumer operations for lib/sdk_worker.cjs: the official
// @azure/event-hubs EventHubConsumerClient used as a backend uses it against
// IoT Hub's built-in endpoint, and the Azure sample's conversion of a hub
// connection string into an Event Hubs one through amqp:link:redirect.

'use strict';

const crypto = require('node:crypto');

let eh;
const sdk = () => (eh ??= require('@azure/event-hubs'));

// An event as plain JSON for the IPC channel.
function plain(e) {
  const sys = {};
  for (const [k, v] of Object.entries(e.systemProperties ?? {})) sys[k] = v instanceof Date ? v.getTime() : v;
  return {
    body: Buffer.isBuffer(e.body) ? { buffer: e.body.toString('base64') } : e.body,
    sequenceNumber: e.sequenceNumber,
    offset: e.offset,
    enqueuedTimeUtc: e.enqueuedTimeUtc?.getTime(),
    partitionKey: e.partitionKey ?? null,
    properties: e.properties ?? {},
    systemProperties: sys,
    messageId: e.messageId,
    correlationId: e.correlationId,
    contentType: e.contentType,
  };
}

function position(p) {
  if (!p || p === 'earliest') return sdk().earliestEventPosition;
  if (p === 'latest') return sdk().latestEventPosition;
  if (p.enqueuedOn !== undefined) return { enqueuedOn: new Date(p.enqueuedOn) };
  return p; // {sequenceNumber, isInclusive} or {offset, isInclusive}
}

const ops = {
  /** getEventHubProperties and getPartitionProperties of every partition. */
  async ehProperties(connectionString) {
    const c = new (sdk().EventHubConsumerClient)('$Default', connectionString);
    try {
      const props = await c.getEventHubProperties();
      const partitions = [];
      for (const id of props.partitionIds) {
        const p = await c.getPartitionProperties(id);
        partitions.push({ ...p, lastEnqueuedOnUtc: p.lastEnqueuedOnUtc?.getTime?.() ?? null });
      }
      return { ...props, createdOn: props.createdOn?.getTime?.() ?? null, partitions };
    } finally {
      await c.close();
    }
  },

  /**
   * subscribe (all partitions, or one) from a position until `count`
   * events arrived or `quietMs` passed without one; the events in arrival
   * order. onStarted: the subscription is live (for 'latest' positions)
   * once the first processEvents call came, which subscribe makes even
   * when empty (maxWaitTimeInSeconds).
   */
  async ehReceive(connectionString, { partitionId, start, count, quietMs = 8000, consumerGroup = '$Default', track = false }) {
    const c = new (sdk().EventHubConsumerClient)(consumerGroup, connectionString);
    const events = [];
    const errors = [];
    // With track, the partition context's lastEnqueuedEventProperties as
    // each batch of events found it.
    const lastEnqueued = [];
    try {
      await new Promise((resolve) => {
        let timer = setTimeout(resolve, quietMs);
        const handlers = {
          processEvents: async (batch, context) => {
            for (const e of batch) events.push(plain(e));
            if (track && batch.length) {
              const l = context.lastEnqueuedEventProperties ?? {};
              lastEnqueued.push({
                sequenceNumber: l.sequenceNumber,
                offset: l.offset,
                enqueuedOn: l.enqueuedOn instanceof Date ? l.enqueuedOn.getTime() : l.enqueuedOn,
                retrievedOn: l.retrievedOn instanceof Date ? l.retrievedOn.getTime() : l.retrievedOn,
                lastEventSequenceNumber: batch[batch.length - 1].sequenceNumber,
              });
            }
            if (batch.length) {
              clearTimeout(timer);
              timer = setTimeout(resolve, quietMs);
            }
            if (events.length >= count) {
              clearTimeout(timer);
              resolve();
            }
          },
          processError: async (err) => { errors.push(String(err && (err.code || err.message))); },
        };
        const opts = { startPosition: position(start), maxBatchSize: 50, maxWaitTimeInSeconds: 1, trackLastEnqueuedEventProperties: track };
        if (partitionId !== undefined) c.subscribe(partitionId, handlers, opts);
        else c.subscribe(handlers, opts);
      });
    } finally {
      await c.close();
    }
    return { events, errors, lastEnqueued };
  },

  /**
   * The Azure sample "read device-to-cloud messages with the IoT hub
   * connection string" (azure-samples/azure-iot-samples-node,
   * iot-hub/Quickstarts/read-d2c-messages): SASL PLAIN with a hub policy
   * token on the hub's messages/events, expect amqp:link:redirect, build
   * the Event Hubs connection string from its info.
   */
  async ehFromHub(hubConnectionString) {
    const rhea = require('rhea-promise');
    const parts = Object.fromEntries(hubConnectionString.split(';').map((kv) => {
      const i = kv.indexOf('=');
      return [kv.slice(0, i), kv.slice(i + 1)];
    }));
    const { HostName, SharedAccessKeyName, SharedAccessKey } = parts;
    const [iotHubName] = HostName.split('.');
    const resource = encodeURIComponent(`${HostName}/messages/events`);
    const se = Math.ceil(Date.now() / 1000 + 300);
    const sig = crypto.createHmac('sha256', Buffer.from(SharedAccessKey, 'base64')).update(`${resource}\n${se}`).digest('base64');
    const token = `SharedAccessSignature sr=${resource}&sig=${encodeURIComponent(sig)}&se=${se}&skn=${SharedAccessKeyName}`;
    const connection = new rhea.Connection({
      transport: 'tls', host: HostName, hostname: HostName, port: 5671, reconnect: false,
      username: `${SharedAccessKeyName}@sas.root.${iotHubName}`, password: token,
    });
    await connection.open();
    try {
      // The sample waits for receiver_error after the attach; the detach may
      // also reject the attach itself or have come with it already.
      const error = await connection.createReceiver({ source: { address: `amqps://${HostName}/messages/events/$management` } })
        .then((receiver) => receiver.error ?? new Promise((resolve) => {
          receiver.on(rhea.ReceiverEvents.receiverError, (ctx) => resolve(ctx.receiver && ctx.receiver.error));
          setTimeout(() => resolve(receiver.error ?? null), 10000);
        }), (err) => err);
      if (!error || error.condition !== 'amqp:link:redirect') {
        throw new Error(`no redirect: ${JSON.stringify(error ?? null)}`);
      }
      const hostname = error.info && error.info.hostname;
      const m = error.info && error.info.address && error.info.address.match(/5671\/(.*)\/\$management/i);
      if (!hostname || !m) throw new Error(`redirect without hostname or address: ${JSON.stringify(error.info)}`);
      return `Endpoint=sb://${hostname}/;EntityPath=${m[1]};SharedAccessKeyName=${SharedAccessKeyName};SharedAccessKey=${SharedAccessKey}`;
    } finally {
      await connection.close().catch(() => {});
    }
  },
};

module.exports = ops;
