// Parent side of lib/sdk_worker.cjs: forks the worker with berth's CA in
// NODE_EXTRA_CA_CERTS and turns its answers into promises.

import { fork } from 'node:child_process';
import crypto from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const CALL_TIMEOUT_MS = Number(process.env.BERTH_COMPAT_CALL_TIMEOUT_MS || 45000);
// One step of a hub device session (open, getTwin, update, settle, …).
const DEVICE_CALL_MS = 20000;
const workerPath = path.join(path.dirname(fileURLToPath(import.meta.url)), 'sdk_worker.cjs');

/** An error the SDK raised in the worker, with what the worker could read off it. */
export class SdkError extends Error {
  constructor(e) {
    super(`${e.name}: ${e.message ?? e.description}${e.status ? ` (status ${e.status})` : ''}${e.code ? ` (code ${e.code})` : ''}${e.body !== undefined ? ` body ${JSON.stringify(e.body)}` : ''}`);
    this.sdkName = e.name;
    this.status = e.status;
    this.code = e.code;
    this.body = e.body;
    this.topic = e.topic;
    this.headers = e.headers;
    this.stage = e.stage;
    this.condition = e.condition;
    this.description = e.description;
    this.sdkStack = e.stack;
  }
}

/**
 * Starts a worker. caFile: the PEM to trust (NODE_EXTRA_CA_CERTS); null to
 * trust nothing but Node's bundled roots.
 */
export async function startSdkWorker(caFile) {
  const env = { ...process.env };
  delete env.NODE_TLS_REJECT_UNAUTHORIZED; // certificate checks stay on
  delete env.NODE_EXTRA_CA_CERTS;
  delete env.NODE_OPTIONS; // the test runner's own options are not the app's
  if (caFile) env.NODE_EXTRA_CA_CERTS = caFile;
  const child = fork(workerPath, [], { env, stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv: [] });
  const pending = new Map();
  let exitInfo = null;
  child.on('message', (m) => {
    if (!m || m.ready) return;
    const p = pending.get(m.id);
    if (!p) return;
    pending.delete(m.id);
    if (m.ok) p.resolve(m.value);
    else p.reject(new SdkError(m.error));
  });
  child.on('exit', (code, signal) => {
    exitInfo = { code, signal };
    for (const p of pending.values()) p.reject(new Error(`SDK worker exited (${code ?? signal})`));
    pending.clear();
  });
  await new Promise((resolve, reject) => {
    child.once('message', (m) => (m && m.ready ? resolve() : reject(new Error('worker did not start'))));
    child.once('exit', () => reject(new Error('SDK worker exited at start')));
  });

  // Every SDK call gets CALL_TIMEOUT_MS: an SDK promise that never settles
  // fails its test instead of hanging the suite.
  const callWithin = (timeoutMs, op, ...args) => new Promise((resolve, reject) => {
    if (exitInfo) return reject(new Error(`SDK worker exited (${JSON.stringify(exitInfo)})`));
    const id = crypto.randomUUID();
    const timer = setTimeout(() => {
      pending.delete(id);
      const what = JSON.stringify(args.slice(0, 2)).replace(/SharedAccessKey=[^;"]*/g, 'SharedAccessKey=…');
      reject(new Error(`SDK call ${op} ${what} did not settle in ${timeoutMs} ms`));
    }, timeoutMs);
    pending.set(id, {
      resolve: (v) => { clearTimeout(timer); resolve(v); },
      reject: (e) => { clearTimeout(timer); reject(e); },
    });
    child.send({ id, op, args });
  });
  const call = (op, ...args) => callWithin(CALL_TIMEOUT_MS, op, ...args);
  const dev = (op, ...args) => callWithin(Math.min(CALL_TIMEOUT_MS, DEVICE_CALL_MS), op, ...args);

  return {
    call,
    /** A ProvisioningServiceClient method on the client made by fromConnectionString(connectionString). */
    service: (connectionString, method, ...args) => call('service', connectionString, method, ...args),
    /** The same through the SDK's callback form. */
    serviceCallback: (connectionString, method, ...args) => call('serviceCallback', connectionString, method, ...args),
    query: (connectionString, kind, spec, pageSize, groupId) => call('query', connectionString, kind, spec, pageSize, groupId),
    register: (transport, host, idScope, registrationId, key, payload) => call('register', transport, host, idScope, registrationId, key, payload),
    /** ProvisioningDeviceClient + azure-iot-security-x509 X509Security(registrationId, {cert, key}); cert: PEM, leaf first, then its chain. */
    registerX509: (transport, host, idScope, registrationId, cert, key, payload) =>
      call('registerX509', transport, host, idScope, registrationId, cert, key, payload),
    /**
     * azure-iot-device Client.fromConnectionString(connectionString, Mqtt|Http):
     * open(), sendEvent for each message (mode 'single') or one
     * sendEventBatch (mode 'batch'), close(). Messages: {data, messageId,
     * correlationId, userId, contentType, contentEncoding, properties: [[k, v]]}.
     * Settles within timeoutMs (default: the worker's call timeout).
     * options.x509 {cert, key}: an `x509=true` connection string and
     * client.setOptions({cert, key}).
     */
    hubSend: (transport, connectionString, messages, mode = 'single', timeoutMs = CALL_TIMEOUT_MS, options = {}) =>
      callWithin(timeoutMs, 'hubSend', transport, connectionString, messages, mode, options),
    // IoT Hub device sessions (lib/sdk_worker.cjs): a live azure-iot-device
    // Client the test drives step by step; see the worker for each op. Each
    // step settles within DEVICE_CALL_MS (a hub that never answers a twin
    // request makes the SDK wait for ever).
    device: {
      open: (transport, connectionString, options) => dev('deviceOpen', transport, connectionString, options),
      close: (handle) => dev('deviceClose', handle),
      renewSas: (handle, ttl) => dev('deviceRenewSas', handle, ttl),
      listenC2D: (handle) => dev('deviceListenC2D', handle),
      settle: (handle, ref, how) => dev('deviceSettle', handle, ref, how),
      getTwin: (handle) => dev('deviceGetTwin', handle),
      watchDesired: (handle) => dev('deviceWatchDesired', handle),
      updateReported: (handle, patch) => dev('deviceUpdateReported', handle, patch),
      onMethod: (handle, name, behaviour) => dev('deviceOnMethod', handle, name, behaviour),
      sendEvent: (handle, data, properties) => dev('deviceSendEvent', handle, data, properties),
      events: (handle, kind) => dev('deviceEvents', handle, kind),
    },
    /** A Registry method of azure-iothub Registry.fromConnectionString(connectionString): {body, status, headers}. */
    registry: (connectionString, method, ...args) => call('registry', connectionString, method, ...args),
    /** azure-iothub Registry.createQuery(sql, pageSize) and query.next() until hasMoreResults is false: [{items, continuationToken, hasMoreResults, itemType}]. */
    hubQuery: (connectionString, sql, pageSize, maxPages) => call('hubQuery', connectionString, sql, pageSize, maxPages),
    /** A JobClient method of azure-iothub JobClient.fromConnectionString(cs), promise form: {body: jobStatus, status}. */
    jobClient: (connectionString, method, ...args) => call('jobClient', connectionString, method, ...args),
    /** azure-iothub JobClient.createQuery(jobType, jobStatus, pageSize) paged to its end: [{items, hasMoreResults}]. */
    jobQuery: (connectionString, jobType, jobStatus, pageSize) => call('jobQuery', connectionString, jobType, jobStatus, pageSize),
    /** azure-iothub Client.fromConnectionString(cs).invokeDeviceMethod(deviceId, params): {result, status, ms}. */
    invokeDeviceMethod: (connectionString, deviceId, params, timeoutMs = CALL_TIMEOUT_MS) =>
      callWithin(timeoutMs, 'invokeDeviceMethod', connectionString, deviceId, params),
    /** azure-iothub Client.send(deviceId, message) over 'amqp' or 'amqpws' (spec as hubSend's messages, plus ack). */
    serviceSend: (transport, connectionString, deviceId, spec, timeoutMs = CALL_TIMEOUT_MS) =>
      callWithin(timeoutMs, 'serviceSend', transport, connectionString, deviceId, spec),
    /** azure-iothub Client.fromConnectionString(cs).invokeDeviceMethod(deviceId, moduleId, params): {result, status}. */
    invokeModuleMethod: (connectionString, deviceId, moduleId, params) => call('invokeModuleMethod', connectionString, deviceId, moduleId, params),
    /** A plain HTTPS request to the hub with a service SAS token: {status, headers, text, json}. */
    hubRest: (connectionString, method, path, headers, body) => call('hubRest', connectionString, method, path, headers, body),
    close: async () => {
      if (exitInfo) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.disconnect();
      const t = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
    },
  };
}

/** Azure's group-derived device key: base64(HMAC-SHA256(base64decode(groupKey), registrationId)). */
export function deriveDeviceKey(groupKey, registrationId) {
  return crypto.createHmac('sha256', Buffer.from(groupKey, 'base64')).update(registrationId, 'utf8').digest('base64');
}

/** A random symmetric key the size DPS generates (64 bytes, base64). */
export function randomKey() {
  return crypto.randomBytes(64).toString('base64');
}
