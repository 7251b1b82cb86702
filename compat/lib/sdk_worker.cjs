// SDK worker: a plain Node.js process that uses the official Azure IoT SDKs
// exactly as an application would, driven over an IPC channel by a test file.
//
// Why a separate process: none of the DPS SDKs has a public way to pass a CA
// (the provisioning transports' setTransportOptions only takes
// pollingInterval, and ProvisioningServiceClient.fromConnectionString takes
// nothing but the string), so the worker trusts berth's development CA the
// way a user of these SDKs must: NODE_EXTRA_CA_CERTS, which Node.js reads only
// at process start. The test process itself does not get it.
//
// Protocol: the parent sends {id, op, args}; the worker answers
// {id, ok: true, value} or {id, ok: false, error}.

'use strict';

const { ProvisioningServiceClient } = require('azure-iot-provisioning-service');
const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
const { Mqtt } = require('azure-iot-provisioning-device-mqtt');
const { Http } = require('azure-iot-provisioning-device-http');
const { SymmetricKeySecurityClient } = require('azure-iot-security-symmetric-key');
const { Client: DeviceClient, Message } = require('azure-iot-device');
const { Mqtt: HubMqtt } = require('azure-iot-device-mqtt');
const { Http: HubHttp } = require('azure-iot-device-http');

const serviceClients = new Map();

function serviceClient(connectionString) {
  let c = serviceClients.get(connectionString);
  if (!c) {
    c = ProvisioningServiceClient.fromConnectionString(connectionString);
    serviceClients.set(connectionString, c);
  }
  return c;
}

function pickHeaders(res) {
  if (!res || !res.headers) return {};
  const h = {};
  for (const k of ['etag', 'content-type', 'x-ms-continuation', 'x-ms-item-type', 'x-ms-max-item-count', 'retry-after', 'location', 'iothub-errorcode']) {
    if (res.headers[k] !== undefined) h[k] = res.headers[k];
  }
  return h;
}

function serializeError(err) {
  if (!err || typeof err !== 'object') return { name: 'Error', message: String(err) };
  let status;
  const res = err.response || err.httpResponse;
  if (res && typeof res.statusCode === 'number') status = res.statusCode;
  const topic = err.transportObject && err.transportObject.topic;
  if (status === undefined && typeof topic === 'string') {
    const m = /^\$dps\/registrations\/res\/(\d+)\//.exec(topic);
    if (m) status = Number(m[1]);
  }
  let body = err.result !== undefined ? err.result : err.responseBody;
  if (typeof body === 'string') {
    try { body = JSON.parse(body); } catch { /* keep the text */ }
  }
  return {
    name: (err.constructor && err.constructor.name) || err.name,
    message: err.message,
    code: err.code,
    status,
    topic,
    headers: pickHeaders(res),
    body,
    stage: err.stage,
    stack: err.stack,
  };
}

// A device Message from a plain description: {data, messageId, correlationId,
// userId, contentType, contentEncoding, properties: [[key, value], ...]}.
function toMessage(spec) {
  const m = new Message(spec.data);
  for (const k of ['messageId', 'correlationId', 'userId', 'contentType', 'contentEncoding']) {
    if (spec[k] !== undefined) m[k] = spec[k];
  }
  for (const [k, v] of spec.properties || []) m.properties.add(k, v);
  return m;
}

const ops = {
  // Any ProvisioningServiceClient method, called with its own arguments.
  async service(connectionString, method, ...args) {
    const c = serviceClient(connectionString);
    if (typeof c[method] !== 'function') throw new Error(`ProvisioningServiceClient has no method ${method}`);
    const r = await c[method](...args);
    if (r && typeof r === 'object' && 'responseBody' in r) {
      return { body: r.responseBody, status: r.httpResponse && r.httpResponse.statusCode, headers: pickHeaders(r.httpResponse) };
    }
    return { body: r };
  },

  // The same with the SDK's callback form. runBulkEnrollmentOperation needs
  // it: in azure-iot-provisioning-service 1.11.2 its promise form never
  // settles (the inner callback is only called `if (callback)`).
  async serviceCallback(connectionString, method, ...args) {
    const c = serviceClient(connectionString);
    if (typeof c[method] !== 'function') throw new Error(`ProvisioningServiceClient has no method ${method}`);
    return new Promise((resolve, reject) => {
      c[method](...args, (err, body, httpResponse) => {
        if (err) reject(err);
        else resolve({ body, status: httpResponse && httpResponse.statusCode, headers: pickHeaders(httpResponse) });
      });
    });
  },

  // Pages through a query the way the SDK's Query object does, and reports
  // each page: its items and the paging headers.
  // kind: 'individual', 'group', or 'registrations' (of enrollment group groupId).
  async query(connectionString, kind, querySpecification, pageSize, groupId) {
    const c = serviceClient(connectionString);
    let q;
    if (kind === 'group') q = c.createEnrollmentGroupQuery(querySpecification, pageSize);
    else if (kind === 'registrations') q = c.createEnrollmentGroupDeviceRegistrationStateQuery(querySpecification, groupId, pageSize);
    else q = c.createIndividualEnrollmentQuery(querySpecification, pageSize);
    const pages = [];
    while (q.hasMoreResults) {
      if (pages.length > 100) throw new Error('query did not end after 100 pages');
      // The callback form, as the SDK's samples use it: next(callback) carries
      // on from q.continuationToken. (The promise form next() with no
      // argument restarts from the first page, so it would need
      // next(q.continuationToken).)
      const { result, response } = await new Promise((resolve, reject) => {
        q.next((err, res, httpResponse) => (err ? reject(err) : resolve({ result: res, response: httpResponse })));
      });
      pages.push({ items: result, status: response.statusCode, headers: pickHeaders(response), hasMoreResults: q.hasMoreResults });
    }
    return pages;
  },

  // ProvisioningDeviceClient + SymmetricKeySecurityClient over MQTT or HTTP;
  // returns the registrationState the SDK hands the application.
  // payload: optional data for setProvisioningPayload.
  async register(transportName, provisioningHost, idScope, registrationId, symmetricKey, payload) {
    const transport = transportName === 'http' ? new Http() : new Mqtt();
    const security = new SymmetricKeySecurityClient(registrationId, symmetricKey);
    const client = ProvisioningDeviceClient.create(provisioningHost, idScope, transport, security);
    if (payload !== undefined) client.setProvisioningPayload(payload);
    const started = Date.now();
    const result = await client.register();
    return { result, ms: Date.now() - started };
  },

  // The IoT Hub device client (azure-iot-device Client) over MQTT
  // (azure-iot-device-mqtt) or HTTPS (azure-iot-device-http), made the way
  // the SDK samples make it: Client.fromConnectionString(connectionString,
  // Transport). open(), then each message with sendEvent (mode 'single') or
  // all at once with sendEventBatch (mode 'batch'), then close(). An error
  // carries the step that failed in `stage` ('open' or 'send').
  async hubSend(transportName, connectionString, messages, mode) {
    const client = DeviceClient.fromConnectionString(connectionString, transportName === 'http' ? HubHttp : HubMqtt);
    const timing = {};
    client.on('error', () => {}); // reported through the promises below
    try {
      let t = Date.now();
      try {
        await client.open();
      } catch (err) {
        err.stage = 'open';
        throw err;
      }
      timing.openMs = Date.now() - t;
      t = Date.now();
      try {
        if (mode === 'batch') await client.sendEventBatch(messages.map(toMessage));
        else for (const spec of messages) await client.sendEvent(toMessage(spec));
      } catch (err) {
        err.stage = 'send';
        throw err;
      }
      timing.sendMs = Date.now() - t;
    } finally {
      await client.close().catch(() => {});
    }
    return timing;
  },
};

process.on('message', async (msg) => {
  const { id, op, args } = msg;
  try {
    if (!ops[op]) throw new Error(`unknown op ${op}`);
    const value = await ops[op](...(args || []));
    process.send({ id, ok: true, value: JSON.parse(JSON.stringify(value === undefined ? null : value)) });
  } catch (err) {
    process.send({ id, ok: false, error: serializeError(err) });
  }
});

process.on('disconnect', () => process.exit(0));
process.send({ ready: true });
