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
const { Mqtt, MqttWs } = require('azure-iot-provisioning-device-mqtt');
const { Http } = require('azure-iot-provisioning-device-http');
const { SymmetricKeySecurityClient } = require('azure-iot-security-symmetric-key');
const { X509Security } = require('azure-iot-security-x509');
const {
  Client: DeviceClient, ModuleClient, Message, SharedAccessKeyAuthenticationProvider, SharedAccessSignature: DeviceSas,
} = require('azure-iot-device');
const { Mqtt: HubMqtt, MqttWs: HubMqttWs } = require('azure-iot-device-mqtt');
const { Http: HubHttp } = require('azure-iot-device-http');
// azure-iot-provisioning-device-amqp and azure-iot-device-amqp are loaded
// by the workers that use them only.
let provAmqpSdk;
const provAmqp = () => (provAmqpSdk ??= require('azure-iot-provisioning-device-amqp'));

// The provisioning transport of a transport name: 'mqtt' (default),
// 'mqttws', 'http', 'amqp' or 'amqpws'.
function provisioningTransport(name) {
  switch (name) {
    case 'http': return new Http();
    case 'mqttws': return new MqttWs();
    case 'amqp': return new (provAmqp().Amqp)();
    case 'amqpws': return new (provAmqp().AmqpWs)();
    default: return new Mqtt();
  }
}

let amqpSdk;
const amqpDevice = () => (amqpSdk ??= require('azure-iot-device-amqp'));

// The device transport class of a transport name: 'mqtt' (default),
// 'mqttws', 'amqp', 'amqpws' or 'http'.
function hubTransport(name) {
  switch (name) {
    case 'http': return HubHttp;
    case 'mqttws': return HubMqttWs;
    case 'amqp': return amqpDevice().Amqp;
    case 'amqpws': return amqpDevice().AmqpWs;
    default: return HubMqtt;
  }
}
// azure-iothub (with @azure/identity and ms-rest-js) takes a while to load
// on a busy machine: only the workers that use it pay for it.
let iothubSdk;
const iothub = () => (iothubSdk ??= require('azure-iothub'));
const { ConnectionString, SharedAccessSignature } = require('azure-iot-common');
const diagnosticsChannel = require('node:diagnostics_channel');
const https = require('node:https');

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
    // rhea's errors (a refused SASL exchange, an attach or a request
    // refused): the AMQP condition.
    condition: err.condition || (err.amqpError && err.amqpError.condition),
    description: err.description,
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

// ---- IoT Hub: device sessions, service clients, berth's REST extension ----

// A JSON copy of an SDK object without its private members (a service Twin
// holds its Registry in _registry).
function plain(v) {
  return v === undefined ? null : JSON.parse(JSON.stringify(v, (k, val) => (k.startsWith('_') ? undefined : val)));
}

const hubRegistries = new Map();
function hubRegistry(connectionString) {
  let r = hubRegistries.get(connectionString);
  if (!r) {
    r = iothub().Registry.fromConnectionString(connectionString);
    hubRegistries.set(connectionString, r);
  }
  return r;
}

const hubJobClients = new Map();
function hubJobClient(connectionString) {
  let c = hubJobClients.get(connectionString);
  if (!c) {
    c = iothub().JobClient.fromConnectionString(connectionString);
    hubJobClients.set(connectionString, c);
  }
  return c;
}

const hubServiceClients = new Map();
function hubServiceClient(connectionString) {
  let c = hubServiceClients.get(connectionString);
  if (!c) {
    c = iothub().Client.fromConnectionString(connectionString);
    hubServiceClients.set(connectionString, c);
  }
  return c;
}

// The azure-iot-device-http Message carries no delivery count (azure-iot-http-base
// toMessage reads only the message ID, to, expiry, correlation ID,
// iothub-app-* and the ETag). To see it the worker watches the responses
// Node's HTTP client receives (diagnostics_channel, read-only) and keeps the
// headers of each C2D receive by lock token.
const c2dResponseHeaders = new Map(); // lock token -> response headers
diagnosticsChannel.subscribe('http.client.response.finish', ({ request, response }) => {
  if (request.method !== 'GET' || !/\/messages\/devicebound(\?|$)/i.test(request.path) || response.statusCode !== 200) return;
  const etag = response.headers.etag;
  if (typeof etag === 'string') c2dResponseHeaders.set(etag.slice(1, -1), { ...response.headers });
});

// Live device clients of this worker, by handle. Each keeps what arrived
// (C2D messages, desired-property events, method requests, errors) for the
// test to read with deviceEvents.
const sessions = new Map();
let nextSession = 0;
function session(handle) {
  const s = sessions.get(handle);
  if (!s) throw new Error(`no device session ${handle}`);
  return s;
}

const dataText = (d) => (Buffer.isBuffer(d) ? d.toString('utf8') : d === undefined || d === null ? null : String(d));

function describeMessage(msg, ref) {
  const props = {};
  for (const p of msg.properties.propertyList) props[p.key] = p.value;
  const raw = msg.lockToken ? c2dResponseHeaders.get(msg.lockToken) : undefined;
  return {
    ref,
    data: dataText(msg.getData()),
    messageId: msg.messageId,
    correlationId: msg.correlationId,
    contentType: msg.contentType,
    contentEncoding: msg.contentEncoding,
    to: msg.to,
    expiryTimeUtc: msg.expiryTimeUtc,
    lockToken: msg.lockToken,
    ack: msg.ack,
    properties: props,
    // HTTPS only (see c2dResponseHeaders)
    deliveryCount: raw && raw['iothub-deliverycount'] !== undefined ? Number(raw['iothub-deliverycount']) : undefined,
  };
}

function onceCallback(fn) {
  return new Promise((resolve, reject) => fn((err, ...rest) => (err ? reject(err) : resolve(rest[0]))));
}

// deviceSas is a device SAS signed with the key of a device connection
// string, valid for ttl seconds from now (a second apart from the last one,
// so a renewal is a different token).
const deviceSas = (connectionString, ttl) => {
  const cs = ConnectionString.parse(connectionString);
  return DeviceSas.create(cs.HostName, cs.DeviceId, cs.SharedAccessKey, Math.floor(Date.now() / 1000) + ttl).toString();
};

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

  // ProvisioningDeviceClient + SymmetricKeySecurityClient over MQTT, HTTP or
  // AMQP (provisioningTransport); returns the registrationState the SDK
  // hands the application. payload: optional data for setProvisioningPayload.
  async register(transportName, provisioningHost, idScope, registrationId, symmetricKey, payload) {
    const transport = provisioningTransport(transportName);
    const security = new SymmetricKeySecurityClient(registrationId, symmetricKey);
    const client = ProvisioningDeviceClient.create(provisioningHost, idScope, transport, security);
    if (payload !== undefined) client.setProvisioningPayload(payload);
    const started = Date.now();
    const result = await client.register();
    return { result, ms: Date.now() - started };
  },

  // ProvisioningDeviceClient + X509Security(registrationId, {cert, key}) over
  // MQTT or HTTP, as the SDK's register_x509 sample does: the transport
  // presents cert (PEM; the leaf followed by its chain for a group device)
  // as the TLS client certificate. Returns the registrationState.
  async registerX509(transportName, provisioningHost, idScope, registrationId, cert, key, payload) {
    const transport = provisioningTransport(transportName);
    const security = new X509Security(registrationId, { cert, key });
    const client = ProvisioningDeviceClient.create(provisioningHost, idScope, transport, security);
    if (payload !== undefined && payload !== null) client.setProvisioningPayload(payload);
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
  // options.x509 {cert, key}: an `x509=true` connection string, and the
  // certificate given with client.setOptions({cert, key}) before open(), as
  // the SDK's simple_sample_device_x509 does.
  async hubSend(transportName, connectionString, messages, mode, options) {
    const client = DeviceClient.fromConnectionString(connectionString, hubTransport(transportName));
    const timing = {};
    client.on('error', () => {}); // reported through the promises below
    try {
      let t = Date.now();
      try {
        if (options && options.x509) await client.setOptions({ cert: options.x509.cert, key: options.x509.key });
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

  // ---- IoT Hub device sessions ----

  // A device client made as Client.fromConnectionString(connectionString,
  // Mqtt|Http) makes it (SharedAccessKeyAuthenticationProvider + the
  // transport; the worker keeps the transport to wait for SUBACKs, see
  // deviceOnMethod and deviceWatchDesired), opened. options.receiveInterval:
  // the HTTPS C2D poll period in seconds (setOptions({http: {receivePolicy:
  // {interval}}}), azure-iot-device-http Http.setOptions / enableC2D).
  // options.x509 {cert, key}: an `x509=true` connection string; the client
  // is made by Client.fromConnectionString (X509AuthenticationProvider) and
  // given the certificate with setOptions({cert, key}).
  // options.sasTtl (seconds): the client is made as an application that
  // manages its own tokens makes it, Client.fromSharedAccessSignature with
  // a device SAS signed from the connection string's key for that long
  // (deviceRenewSas then renews it).
  async deviceOpen(transportName, connectionString, options) {
    options = options || {}; // undefined arrives as null over IPC
    let client;
    let transport;
    if (options.module) {
      // options.module: a module connection string (ModuleId=…), opened as
      // the SDK samples do, ModuleClient.fromConnectionString(cs, Mqtt).
      client = ModuleClient.fromConnectionString(connectionString, hubTransport(transportName));
      transport = client._transport;
    } else if (options.sasTtl) {
      client = DeviceClient.fromSharedAccessSignature(deviceSas(connectionString, options.sasTtl), hubTransport(transportName));
      transport = client._transport;
    } else if (options.x509) {
      client = DeviceClient.fromConnectionString(connectionString, hubTransport(transportName));
      transport = client._transport;
      await client.setOptions({ cert: options.x509.cert, key: options.x509.key });
    } else {
      const auth = SharedAccessKeyAuthenticationProvider.fromConnectionString(connectionString);
      transport = new (hubTransport(transportName))(auth);
      client = new DeviceClient(transport);
    }
    const handle = `d${++nextSession}`;
    const s = { client, transport, events: [], messages: new Map(), nextRef: 0, twin: null, transportName, connectionString };
    client.on('error', (err) => s.events.push({ kind: 'error', error: serializeError(err) }));
    if (options.receiveInterval !== undefined) {
      await client.setOptions({ http: { receivePolicy: { interval: options.receiveInterval } } });
    }
    await client.open();
    sessions.set(handle, s);
    return handle;
  },

  async deviceClose(handle) {
    const s = sessions.get(handle);
    if (!s) return null;
    sessions.delete(handle);
    await s.client.close().catch(() => {});
    return null;
  },

  // client.updateSharedAccessSignature with a fresh device SAS valid for
  // ttl seconds, as an application renews its token before it expires
  // (over MQTT the SDK reconnects, CleanSession 0, and does not subscribe
  // again). Returns the SDK's result.
  async deviceRenewSas(handle, ttl) {
    const s = session(handle);
    const r = await onceCallback((cb) => s.client.updateSharedAccessSignature(deviceSas(s.connectionString, ttl), cb));
    return plain(r);
  },

  // client.on('message'): every C2D message is kept (for deviceSettle) and
  // reported as a 'message' event.
  async deviceListenC2D(handle) {
    const s = session(handle);
    s.client.on('message', (msg) => {
      const ref = ++s.nextRef;
      s.messages.set(ref, msg);
      s.events.push({ kind: 'message', at: Date.now(), message: describeMessage(msg, ref) });
    });
    return null;
  },

  // client.complete / reject / abandon of a message received earlier.
  async deviceSettle(handle, ref, how) {
    const s = session(handle);
    const msg = s.messages.get(ref);
    if (!msg) throw new Error(`no message ${ref}`);
    if (!['complete', 'reject', 'abandon'].includes(how)) throw new Error(`bad settle ${how}`);
    const r = await s.client[how](msg);
    return r ? { type: r.constructor && r.constructor.name } : null;
  },

  // client.getTwin(); returns twin.properties (desired and reported).
  async deviceGetTwin(handle) {
    const s = session(handle);
    s.twin = await s.client.getTwin();
    s.twin.on('error', (err) => s.events.push({ kind: 'twinError', error: serializeError(err) }));
    return plain({ desired: s.twin.properties.desired, reported: s.twin.properties.reported });
  },

  // twin.on('properties.desired', …): each call of the listener is a
  // 'desired' event. The twin subscribes to the desired topic on its own
  // when the listener is added, without telling when the SUBACK came; so the
  // worker first subscribes through the transport (Mqtt
  // enableTwinDesiredPropertiesUpdates, which the twin's later call finds
  // done) and returns only once the hub acknowledged it.
  async deviceWatchDesired(handle) {
    const s = session(handle);
    if (!s.twin) throw new Error('deviceGetTwin first');
    await onceCallback((cb) => s.transport.enableTwinDesiredPropertiesUpdates(cb));
    s.twin.on('properties.desired', (patch) => s.events.push({ kind: 'desired', at: Date.now(), patch: plain(patch) }));
    return null;
  },

  // twin.properties.reported.update(patch, callback).
  async deviceUpdateReported(handle, patch) {
    const s = session(handle);
    if (!s.twin) throw new Error('deviceGetTwin first');
    await onceCallback((cb) => s.twin.properties.reported.update(patch, cb));
    return plain(s.twin.properties.reported);
  },

  // client.onDeviceMethod(name, handler). behaviour 'echo': the SDK sample's
  // answer, res.send(200, {ok: true, echo: req.payload}); 'fail':
  // res.send(500, {error: 'failed on purpose'}); 'silent': never answers. Each request is a 'method' event. As with desired properties,
  // the worker subscribes through the transport first (Mqtt.enableMethods,
  // SUBACK) so that the hub knows the device listens when this returns.
  async deviceOnMethod(handle, methodName, behaviour) {
    const s = session(handle);
    if (typeof s.transport.enableMethods === 'function' && s.transportName !== 'http') {
      await onceCallback((cb) => s.transport.enableMethods(cb));
    }
    // A ModuleClient's is onMethod.
    const on = (s.client.onDeviceMethod || s.client.onMethod).bind(s.client);
    on(methodName, (req, res) => {
      s.events.push({ kind: 'method', at: Date.now(), methodName: req.methodName, requestId: req.requestId, payload: plain(req.payload) });
      if (behaviour === 'silent') return;
      const [status, body] = behaviour === 'fail' ? [500, { error: 'failed on purpose' }] : [200, { ok: true, echo: req.payload }];
      res.send(status, body, (err) => {
        if (err) s.events.push({ kind: 'methodResponseError', error: serializeError(err) });
      });
    });
    return null;
  },

  // client.sendEvent(new Message(data)) with application properties
  // [[k, v]]; returns the SDK's result type.
  async deviceSendEvent(handle, data, properties) {
    const s = session(handle);
    const m = new Message(data);
    for (const [k, v] of properties || []) m.properties.add(k, v);
    const r = await s.client.sendEvent(m);
    return r ? { type: r.constructor && r.constructor.name } : null;
  },

  // Everything the session has seen so far (optionally of one kind).
  async deviceEvents(handle, kind) {
    const s = session(handle);
    return kind ? s.events.filter((e) => e.kind === kind) : s.events;
  },

  // ---- IoT Hub service SDK (azure-iothub) ----

  // Any Registry method of Registry.fromConnectionString(connectionString),
  // promise form: {body: responseBody, status, headers}.
  async registry(connectionString, method, ...args) {
    const r = hubRegistry(connectionString);
    if (typeof r[method] !== 'function') throw new Error(`Registry has no method ${method}`);
    const res = await r[method](...args);
    // Most Registry methods resolve {responseBody, httpResponse}; the job
    // ones (exportDevicesToBlob, importDevicesFromBlob, getJob, cancelJob)
    // resolve the body alone.
    if (!res || typeof res !== 'object' || !('responseBody' in res)) return { body: plain(res) };
    return { body: plain(res.responseBody), status: res.httpResponse && res.httpResponse.statusCode, headers: pickHeaders(res.httpResponse) };
  },

  // Registry.createQuery(sql, pageSize), then query.next(continuationToken)
  // while hasMoreResults (at most maxPages). The token is passed: in promise
  // form next() with no argument sends none (it only falls back to its own
  // token in callback form). Each page's items, the continuation
  // token the SDK kept from x-ms-continuation, hasMoreResults and the
  // x-ms-item-type header.
  async hubQuery(connectionString, sql, pageSize, maxPages) {
    const q = hubRegistry(connectionString).createQuery(sql, pageSize ?? undefined);
    const pages = [];
    while (q.hasMoreResults && pages.length < (maxPages || 100)) {
      const res = await q.next(q.continuationToken);
      pages.push({
        items: plain(res.result),
        continuationToken: q.continuationToken === undefined ? null : q.continuationToken,
        hasMoreResults: q.hasMoreResults,
        itemType: res.message && res.message.headers['x-ms-item-type'],
      });
    }
    return pages;
  },

  // JobClient.fromConnectionString(connectionString)[method](...args),
  // promise form: {body: jobStatus, status}. For scheduleTwinUpdate and
  // scheduleDeviceMethod the fourth argument (the start time) travels as
  // an ISO string and is handed to the SDK as the Date it takes.
  async jobClient(connectionString, method, ...args) {
    const c = hubJobClient(connectionString);
    if (typeof c[method] !== 'function') throw new Error(`JobClient has no method ${method}`);
    if ((method === 'scheduleTwinUpdate' || method === 'scheduleDeviceMethod') && typeof args[3] === 'string') {
      args[3] = new Date(args[3]);
    }
    const res = await c[method](...args);
    return { body: plain(res.jobStatus), status: res.response && res.response.statusCode };
  },

  // JobClient.createQuery(jobType, jobStatus, pageSize), then
  // query.next(continuationToken) while hasMoreResults: each page's items
  // and hasMoreResults.
  async jobQuery(connectionString, jobType, jobStatus, pageSize) {
    const q = hubJobClient(connectionString).createQuery(jobType ?? undefined, jobStatus ?? undefined, pageSize ?? undefined);
    const pages = [];
    while (q.hasMoreResults && pages.length < 100) {
      const res = await q.next(q.continuationToken);
      pages.push({ items: plain(res.result), hasMoreResults: q.hasMoreResults });
    }
    return pages;
  },

  // Client.fromConnectionString(connectionString).invokeDeviceMethod(deviceId, params).
  async invokeDeviceMethod(connectionString, deviceId, params) {
    const started = Date.now();
    const res = await hubServiceClient(connectionString).invokeDeviceMethod(deviceId, params);
    return { result: plain(res.result), status: res.message && res.message.statusCode, ms: Date.now() - started };
  },

  // azure-iothub Client.fromConnectionString(connectionString, Amqp|AmqpWs)
  // .send(deviceId, message): open, send one message (spec as for hubSend,
  // plus ack: the iothub-ack feedback request), close. Returns the SDK's
  // result type name; an error carries the SDK's error class in name.
  // spec.repeat: send that many copies on the one client (the error of
  // the first that fails carries its index in `sent`).
  async serviceSend(transportName, connectionString, deviceId, spec) {
    const sdk = iothub();
    const client = sdk.Client.fromConnectionString(connectionString, transportName === 'amqpws' ? sdk.AmqpWs : sdk.Amqp);
    try {
      await client.open();
      let r;
      for (let i = 0; i < (spec.repeat || 1); i++) {
        const m = toMessage(spec);
        if (spec.ack) m.ack = spec.ack;
        if (spec.expiryTimeUtc) m.expiryTimeUtc = spec.expiryTimeUtc;
        try {
          r = await client.send(deviceId, m);
        } catch (err) {
          err.sent = i;
          throw err;
        }
      }
      return { type: r && r.constructor && r.constructor.name };
    } finally {
      await client.close().catch(() => {});
    }
  },

  // Client.fromConnectionString(connectionString).invokeDeviceMethod(deviceId, moduleId, params).
  async invokeModuleMethod(connectionString, deviceId, moduleId, params) {
    const res = await hubServiceClient(connectionString).invokeDeviceMethod(deviceId, moduleId, params);
    return { result: plain(res.result), status: res.message && res.message.statusCode };
  },

  // A service SAS token for the policy of a hub connection string, made with
  // azure-iot-common's SharedAccessSignature as the service SDK makes its
  // own (sr = host name, skn = policy).
  async serviceToken(connectionString, ttlSeconds = 3600) {
    const cn = ConnectionString.parse(connectionString, ['HostName', 'SharedAccessKeyName', 'SharedAccessKey']);
    const expiry = Math.floor(Date.now() / 1000) + ttlSeconds;
    return SharedAccessSignature.create(cn.HostName, cn.SharedAccessKeyName, cn.SharedAccessKey, expiry).toString();
  },

  // One plain HTTPS request to the hub named in connectionString with a
  // service token (berth's C2D send extension, DELETE /devices/{id}/commands,
  // which azure-iothub has no call for). body: a string or an object (JSON).
  async hubRest(connectionString, method, path, headers, body) {
    const cn = ConnectionString.parse(connectionString, ['HostName', 'SharedAccessKeyName', 'SharedAccessKey']);
    const token = await ops.serviceToken(connectionString);
    const payload = body === undefined || body === null ? undefined : Buffer.from(typeof body === 'string' ? body : JSON.stringify(body));
    const h = { Authorization: token, ...(headers || {}) };
    if (payload) h['Content-Length'] = payload.length;
    return new Promise((resolve, reject) => {
      const req = https.request({ host: cn.HostName, port: 443, method, path, headers: h }, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let json;
          try { json = JSON.parse(text); } catch { json = undefined; }
          resolve({ status: res.statusCode, headers: { ...res.headers }, text, json });
        });
      });
      req.on('error', reject);
      req.setTimeout(20000, () => req.destroy(new Error(`${method} ${path}: no answer in 20 s`)));
      req.end(payload);
    });
  },
};

// Event Hubs consumer ops (lib/eventhubs_ops.cjs).
Object.assign(ops, require('./eventhubs_ops.cjs'));

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
