// X.509 attestation (issue #5) with the official SDKs: devices provision with
// azure-iot-security-x509 X509Security(registrationId, {cert, key}) and
// ProvisioningDeviceClient over azure-iot-provisioning-device-mqtt and -http
// (the certificate is the TLS client certificate;
// docs/spec/dps-protocol.md#x509-attestation), then connect to the hub with
// azure-iot-device and an `x509=true` connection string plus
// client.setOptions({cert, key})
// (docs/spec/iothub-protocol.md#x509-device-authentication) and send
// telemetry, read back with `berth hub monitor-events`.
//
// Certificates are made with openssl (lib/certs.mjs, ECDSA P-256): a root
// CA uploaded with `berth dps certificate create --verify` (proof of
// possession done by the CLI with the CA key), an intermediate CA signed by
// it, device certificates whose CN is the registration ID, self-signed
// device certificates, and, as negatives, a certificate of a CA berth does
// not know, one whose CN is not the registration ID and an expired one.
// Enrollments are written with azure-iot-provisioning-service.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { berthCli, startBerth } from '../lib/berth.mjs';
import { certWorkshop } from '../lib/certs.mjs';
import { deviceEvents } from '../lib/monitor.mjs';
import { startSdkWorker } from '../lib/sdk.mjs';

const IP = process.env.BERTH_COMPAT_X509_IP;
const HUB_CALL_MS = 20000;
const CA_NAME = 'compat-root';
const ROOT_GROUP = 'x509-root-group';
const INTERMEDIATE_GROUP = 'x509-intermediate-group';

const transports = [['mqtt', 'MQTT'], ['http', 'HTTPS']];

describe('X.509 attestation with the official SDKs: DPS over MQTT and HTTPS, then the hub', { timeout: 150000, concurrency: true }, () => {
  let berth;
  let sdk;
  let info;
  let cs;
  let certs;
  let root;
  let intermediate;
  let otherRoot;
  let caReady;

  before(async () => {
    certs = certWorkshop();
    root = certs.root('root');
    intermediate = certs.intermediate('intermediate', root);
    otherRoot = certs.root('other-root');
    berth = await startBerth(IP);
    info = berth.info;
    cs = info.serviceConnectionString;
    sdk = await startSdkWorker(berth.caFile);

    // The root CA uploaded and verified, and the groups that use it: the CA
    // tests wait for this, the individual-enrollment tests do not.
    caReady = setUpCA();
    caReady.catch(() => {}); // reported by the tests that wait for it
  });

  const setUpCA = async () => {
    // Proof of possession done by the CLI with the CA key.
    const uploaded = await berthCli(berth, ['dps', 'certificate', 'create', '--name', CA_NAME, '--path', root.certFile, '--key', root.keyFile, '--verify']);
    const verified = uploaded?.properties?.isVerified ?? uploaded?.isVerified;
    assert.notEqual(verified, false, `the CA is verified: ${JSON.stringify(uploaded)}`);
    // Groups: one referencing the verified root, one with the intermediate as
    // its signing certificate (it chains to the verified root).
    await sdk.service(cs, 'createOrUpdateEnrollmentGroup', {
      enrollmentGroupId: ROOT_GROUP,
      attestation: { type: 'x509', x509: { caReferences: { primary: CA_NAME } } },
    });
    await sdk.service(cs, 'createOrUpdateEnrollmentGroup', {
      enrollmentGroupId: INTERMEDIATE_GROUP,
      attestation: { type: 'x509', x509: { signingCertificates: { primary: { certificate: intermediate.cert } } } },
    });
  };

  after(async () => {
    if (sdk) await sdk.close();
    if (berth) await berth.stop();
    if (certs) certs.cleanup();
  });

  const register = (transport, regId, c) => sdk.registerX509(transport, info.globalEndpoint, info.idScope, regId, c.chain, c.key);

  const assertAssigned = (result, regId, groupId) => {
    assert.equal(result.status, 'assigned', JSON.stringify(result));
    assert.equal(result.registrationId, regId);
    assert.equal(result.deviceId, regId, 'the device ID is the registration ID (the certificate CN)');
    assert.equal(result.assignedHub, info.hubHostName);
    if (groupId) assert.equal(result.x509?.enrollmentGroupId, groupId, `registrationState.x509.enrollmentGroupId: ${JSON.stringify(result)}`);
  };

  // The device's identity in the hub (azure-iothub Registry.get).
  const assertIdentity = async (deviceId, type, c) => {
    const { body: dev } = await sdk.registry(info.hubConnectionString, 'get', deviceId);
    assert.equal(dev.authentication?.type, type, `authentication of ${deviceId}: ${JSON.stringify(dev.authentication)}`);
    if (type === 'selfSigned') {
      const tp = certs.thumbprints(c);
      const primary = String(dev.authentication.x509Thumbprint?.primaryThumbprint ?? '').toUpperCase();
      assert.ok([tp.sha1, tp.sha256].includes(primary), `primaryThumbprint ${primary} is the certificate's (${tp.sha1} / ${tp.sha256})`);
    }
  };

  // Telemetry from the device with its certificate: `x509=true` connection
  // string, setOptions({cert, key}), MQTT; read back from the stream.
  const sendTelemetry = async (t, deviceId, c) => {
    const run = `${deviceId}-${Date.now()}`;
    const timing = await sdk.hubSend('mqtt', `HostName=${info.hubHostName};DeviceId=${deviceId};x509=true`, [{
      data: JSON.stringify({ run, auth: 'x509' }), messageId: `m-${run}`, contentType: 'application/json', contentEncoding: 'utf-8',
      properties: [['kind', 'x509']],
    }], 'single', HUB_CALL_MS, { x509: { cert: c.chain, key: c.key } });
    t.diagnostic(`hub open ${timing.openMs} ms, send ${timing.sendMs} ms`);
    const [ev] = await deviceEvents(berth, deviceId, 1);
    assert.equal(ev.origin, deviceId);
    assert.deepEqual(ev.payload, { run, auth: 'x509' });
    assert.equal(ev.properties.system.message_id, `m-${run}`);
    assert.deepEqual(ev.properties.application, { kind: 'x509' });
    assert.equal(ev.annotations['iothub-connection-device-id'], deviceId);
    const auth = JSON.parse(ev.annotations['iothub-connection-auth-method'] ?? 'null');
    t.diagnostic(`iothub-connection-auth-method ${ev.annotations['iothub-connection-auth-method']}`);
    assert.equal(auth?.scope, 'device');
    assert.notEqual(auth?.type, 'sas', 'the device authenticated with its certificate');
  };

  for (const [transport, name] of transports) {
    test(`${name}: individual enrollment, self-signed device certificate → assigned${transport === 'mqtt' ? '; telemetry with x509=true' : ''}`, async (t) => {
      const regId = `x509-ind-${transport}`;
      const c = certs.selfSigned(regId, regId);
      await sdk.service(cs, 'createOrUpdateIndividualEnrollment', {
        registrationId: regId,
        attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: c.cert } } } },
      });
      const { result } = await register(transport, regId, c);
      assertAssigned(result, regId);
      await assertIdentity(regId, 'selfSigned', c);
      if (transport === 'mqtt') await sendTelemetry(t, regId, c);
    });

    test(`${name}: CA enrollment group, device certificate signed by the verified root → assigned`, async () => {
      await caReady;
      const regId = `x509-root-dev-${transport}`;
      const c = certs.leaf(regId, regId, root);
      const { result } = await register(transport, regId, c);
      assertAssigned(result, regId, ROOT_GROUP);
      await assertIdentity(regId, 'certificateAuthority', c);
    });

    test(`${name}: device certificate signed by an intermediate, chain sent → assigned by the intermediate's group${transport === 'mqtt' ? '; telemetry' : ''}`, async (t) => {
      await caReady;
      const regId = `x509-int-dev-${transport}`;
      const c = certs.leaf(regId, regId, intermediate);
      assert.equal(c.chain.match(/BEGIN CERTIFICATE/g).length, 2, 'leaf + intermediate');
      const { result } = await register(transport, regId, c);
      // Precedence (docs/spec/dps-protocol.md#x509-attestation): groups from
      // the first intermediate up to the root.
      assertAssigned(result, regId, INTERMEDIATE_GROUP);
      await assertIdentity(regId, 'certificateAuthority', c);
      if (transport === 'mqtt') await sendTelemetry(t, regId, c);
    });
  }

  // A group's signing certificate as base64 of the PEM file's content (what
  // Microsoft's Node e2e suite uploads) and as base64 of DER (a .cer file):
  // Azure accepts both besides PEM, and so does berth (issue 19, item 5).
  for (const [form, encode] of [
    ['base64 of PEM', (pem) => Buffer.from(pem).toString('base64')],
    ['base64 of DER', (pem) => pem.replace(/-----(BEGIN|END) CERTIFICATE-----|\s/g, '')],
  ]) {
    test(`MQTT: an enrollment group whose signing certificate is given as ${form} → assigned`, async () => {
      await caReady;
      const slug = form.replace(/\W+/g, '-');
      const ca = certs.intermediate(`inter-${slug}`, root);
      const groupId = `x509-group-${slug}`;
      const { body: group } = await sdk.service(cs, 'createOrUpdateEnrollmentGroup', {
        enrollmentGroupId: groupId,
        attestation: { type: 'x509', x509: { signingCertificates: { primary: { certificate: encode(ca.cert) } } } },
      });
      assert.match(group.attestation.x509.signingCertificates.primary.info?.subjectName ?? '', /inter-/, JSON.stringify(group.attestation));
      const regId = `x509-dev-${slug}`;
      const c = certs.leaf(regId, regId, ca);
      const { result } = await register('mqtt', regId, c);
      assertAssigned(result, regId, groupId);
    });
  }

  // Every refused certificate: the SDK ends with UnauthorizedError, 401
  // (docs/spec/dps-protocol.md#x509-attestation: 401002).
  const expectUnauthorized = async (t, transport, regId, c) => {
    await assert.rejects(register(transport, regId, c), (err) => {
      t.diagnostic(String(err));
      assert.equal(err.status, 401, String(err));
      assert.equal(err.sdkName, 'UnauthorizedError', String(err));
      assert.equal(err.body?.errorCode, 401002, String(err));
      return true;
    });
    // No device was made in the hub.
    await assert.rejects(sdk.registry(info.hubConnectionString, 'get', regId), (err) => err.status === 404, `no device ${regId} in the hub`);
  };

  for (const [transport, name] of transports) {
    test(`${name}: a device certificate of a CA berth does not know → 401`, async (t) => {
      await caReady; // groups exist, but none for this CA
      const regId = `x509-other-ca-${transport}`;
      await expectUnauthorized(t, transport, regId, certs.leaf(regId, regId, otherRoot));
    });

    test(`${name}: a device certificate whose CN is not the registration ID → 401`, async (t) => {
      await caReady; // refused although the root is verified and has a group
      const regId = `x509-cn-mismatch-${transport}`;
      await expectUnauthorized(t, transport, regId, certs.leaf(`${regId}-cert`, `someone-else-${transport}`, root));
    });

    test(`${name}: an expired device certificate of the verified root → 401`, async (t) => {
      await caReady;
      const regId = `x509-expired-${transport}`;
      await expectUnauthorized(t, transport, regId, certs.expiredLeaf(regId, regId, root));
    });
  }

  test('MQTT: an individual enrollment refuses another self-signed certificate with the same CN → 401', async (t) => {
    const regId = 'x509-ind-wrong-cert';
    const enrolled = certs.selfSigned(`${regId}-enrolled`, regId);
    await sdk.service(cs, 'createOrUpdateIndividualEnrollment', {
      registrationId: regId,
      attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: enrolled.cert } } } },
    });
    await expectUnauthorized(t, 'mqtt', regId, certs.selfSigned(`${regId}-other`, regId));
  });

  test('hub (MQTT): a provisioned X.509 device is refused with a certificate that is not its own', async () => {
    await caReady;
    const regId = 'x509-hub-wrong-cert';
    const own = certs.selfSigned(regId, regId);
    await sdk.service(cs, 'createOrUpdateIndividualEnrollment', {
      registrationId: regId,
      attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: own.cert } } } },
    });
    const caDev = 'x509-hub-ca-dev';
    const [a, b] = await Promise.all([register('mqtt', regId, own), register('mqtt', caDev, certs.leaf(caDev, caDev, root))]);
    assertAssigned(a.result, regId);
    assertAssigned(b.result, caDev, ROOT_GROUP);

    const send = (deviceId, c) => sdk.hubSend('mqtt', `HostName=${info.hubHostName};DeviceId=${deviceId};x509=true`,
      [{ data: 'must not arrive' }], 'single', HUB_CALL_MS, { x509: { cert: c.chain, key: c.key } });
    const refused = (err) => {
      assert.equal(err.stage, 'open', String(err));
      assert.equal(err.sdkName, 'UnauthorizedError', String(err));
      return true;
    };
    // selfSigned identity: another self-signed certificate with the same CN.
    await assert.rejects(send(regId, certs.selfSigned(`${regId}-other`, regId)), refused);
    // certificateAuthority identity: the right CN from a CA the hub does not trust.
    await assert.rejects(send(caDev, certs.leaf(`${caDev}-other`, caDev, otherRoot)), refused);
    // certificateAuthority identity: a certificate of the trusted root for another device.
    await assert.rejects(send(caDev, certs.leaf(`${caDev}-cn`, 'x509-someone-else', root)), refused);
    assert.deepEqual(await deviceEvents(berth, regId), [], 'nothing reached the stream');
    assert.deepEqual(await deviceEvents(berth, caDev), [], 'nothing reached the stream');
  });
});
