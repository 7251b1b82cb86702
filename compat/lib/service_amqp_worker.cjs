// A forked worker holding one azure-iothub Client (Amqp or AmqpWs) for the
// feedback tests: Client.send with an ack, and a feedback receiver that
// collects every record it is given and completes each feedback message.
// Runs with berth's CA in NODE_EXTRA_CA_CERTS, like lib/sdk_worker.cjs.
'use strict';

const { Client, AmqpWs } = require('azure-iothub');
const { Message } = require('azure-iot-common');

let client = null;
const records = [];
const feedbackMessages = [];

function serializeError(err) {
  return { name: err && err.name, message: err && err.message, amqpCondition: err && err.amqpError && err.amqpError.condition };
}

const ops = {
  async open(connectionString, transportName) {
    client = transportName === 'amqpws' ? Client.fromConnectionString(connectionString, AmqpWs) : Client.fromConnectionString(connectionString);
    await client.open();
    const receiver = await new Promise((resolve, reject) => client.getFeedbackReceiver((err, r) => (err ? reject(err) : resolve(r))));
    receiver.on('message', (msg) => {
      const text = msg.data.toString('utf8');
      feedbackMessages.push({ contentType: msg.contentType, userId: msg.userId ? String(msg.userId) : undefined });
      for (const r of JSON.parse(text)) records.push(r);
      receiver.complete(msg, () => {});
    });
    receiver.on('errorReceived', () => {});
    return null;
  },
  async send(deviceId, m) {
    const msg = new Message(m.data);
    msg.messageId = m.messageId;
    if (m.ack) msg.ack = m.ack;
    const r = await client.send(deviceId, msg);
    return { type: r && r.constructor && r.constructor.name };
  },
  async feedback() {
    return { records, messages: feedbackMessages };
  },
  async close() {
    if (client) await client.close();
    client = null;
    return null;
  },
};

process.on('message', async (msg) => {
  try {
    const value = await ops[msg.op](...msg.args);
    process.send({ id: msg.id, ok: true, value });
  } catch (err) {
    process.send({ id: msg.id, ok: false, error: serializeError(err) });
  }
});
process.on('disconnect', () => process.exit(0));
