// DPS over AMQP, AMQP over WebSockets and MQTT over WebSockets with the
// official SDKs: ProvisioningDeviceClient with azure-iot-provisioning-device-amqp
// (Amqp, AmqpWs) and azure-iot-provisioning-device-mqtt (MqttWs), symmetric
// keys (SASL PLAIN {scope}/registrations/{reg} + the SAS token) and X.509
// (the TLS client certificate), against a real berth
// (docs/amqp-wire.md, "DPS"). Then the provisioned device sends telemetry
// over AMQP with the key or certificate it was provisioned with.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { berthCli, startBerth } from '../lib/berth.mjs';
import { certWorkshop } from '../lib/certs.mjs';
import { deviceEvents } from '../lib/monitor.mjs';
import { deriveDeviceKey, randomKey, startSdkWorker } from '../lib/sdk.mjs';

const IP = process.env.BERTH_COMPAT_DPS_AMQP_IP;
// A refusal must come well before the SDK's own register timeout; not
// tighter: every test of the file runs at once in one worker on a busy
// machine.
const REFUSAL_MS = 30000;
const CA_NAME = 'amqp-root';
const CA_GROUP = 'amqp-x509-group';

const transports = [
  ['amqp', 'Amqp'],
  ['amqpws', 'AmqpWs'],
  ['mqttws', 'MqttWs'],
];

describe('DPS device SDK over Amqp, AmqpWs and MqttWs', { timeout: 180000, concurrency: true }, () => {
  let berth;
  let sdk;
  let info;
  let cs;
  let groupKey;
  let certs;
  let root;
  let otherRoot;
  let caReady;

  before(async () => {
    certs = certWorkshop();
    root = certs.root('amqp-root');
    otherRoot = certs.root('amqp-other-root');
    berth = await startBerth(IP);
    info = berth.info;
    cs = info.serviceConnectionString;
    sdk = await startSdkWorker(berth.caFile);
    const g = await sdk.service(cs, 'createOrUpdateEnrollmentGroup', {
      enrollmentGroupId: 'amqp-group', attestation: { type: 'symmetricKey' },
    });
    groupKey = g.body.attestation.symmetricKey.primaryKey;
    caReady = (async () => {
      await berthCli(berth, ['dps', 'certificate', 'create', '--name', CA_NAME, '--path', root.certFile, '--key', root.keyFile, '--verify']);
      await sdk.service(cs, 'createOrUpdateEnrollmentGroup', {
        enrollmentGroupId: CA_GROUP, attestation: { type: 'x509', x509: { caReferences: { primary: CA_NAME } } },
      });
    })();
    caReady.catch(() => {}); // reported by the tests that wait for it
  });

  after(async () => {
    if (sdk) await sdk.close();
    if (berth) await berth.stop();
    if (certs) certs.cleanup();
  });

  const individual = async (regId, extra = {}) => {
    const r = await sdk.service(cs, 'createOrUpdateIndividualEnrollment',
      { registrationId: regId, attestation: { type: 'symmetricKey' }, ...extra });
    return r.body.attestation.symmetricKey.primaryKey;
  };

  const assertAssigned = (result, regId, deviceId = regId) => {
    assert.equal(result.status, 'assigned', JSON.stringify(result));
    assert.equal(result.registrationId, regId);
    assert.equal(result.deviceId, deviceId);
    assert.equal(result.assignedHub, info.hubHostName);
  };

  for (const [transport, name] of transports) {
    test(`${name}: individual enrollment with a deviceId → assigned; the device sends telemetry over Amqp with its key`, async (t) => {
      const regId = `amqp-ind-${transport}`;
      const key = await individual(regId, { deviceId: `${regId}-dev` });
      const { result, ms } = await sdk.register(transport, info.globalEndpoint, info.idScope, regId, key);
      t.diagnostic(`registered in ${ms} ms`);
      assertAssigned(result, regId, `${regId}-dev`);
      const run = `${transport}-${Date.now()}`;
      await sdk.hubSend('amqp', `HostName=${result.assignedHub};DeviceId=${result.deviceId};SharedAccessKey=${key}`,
        [{ data: JSON.stringify({ run }), messageId: `m-${run}`, properties: [['via', 'amqp']] }]);
      const [ev] = await deviceEvents(berth, result.deviceId, 1);
      assert.deepEqual(ev.payload, { run });
      assert.deepEqual(ev.properties.application, { via: 'amqp' });
    });

    test(`${name}: enrollment group, derived key and a provisioning payload → assigned by the group`, async () => {
      const regId = `amqp-grp-${transport}`;
      const { result } = await sdk.register(transport, info.globalEndpoint, info.idScope, regId, deriveDeviceKey(groupKey, regId),
        { modelId: 'dtmi:com:example:Thermostat;1' });
      assertAssigned(result, regId);
      assert.equal(result.symmetricKey?.enrollmentGroupId, 'amqp-group', JSON.stringify(result));
    });

    test(`${name}: disabled enrollment → the SDK ends with status disabled`, async () => {
      const regId = `amqp-disabled-${transport}`;
      const key = await individual(regId, { provisioningStatus: 'disabled' });
      await assert.rejects(sdk.register(transport, info.globalEndpoint, info.idScope, regId, key), (err) => {
        assert.equal(err.sdkName, 'SyntaxError', String(err));
        assert.equal(err.body?.status, 'disabled', String(err));
        return true;
      });
    });

    test(`${name}: a wrong key is refused at once`, async () => {
      const regId = `amqp-wrongkey-${transport}`;
      await individual(regId);
      const t0 = Date.now();
      await assert.rejects(sdk.call('register', transport, info.globalEndpoint, info.idScope, regId, randomKey()), (err) => {
        if (transport === 'mqttws') {
          assert.equal(err.sdkName, 'UnauthorizedError', String(err));
          assert.equal(err.status, 401, String(err));
        } else {
          // Refused in the SASL exchange (sasl-outcome auth). rhea reports
          // it as a transport error that azure-iot-amqp-base does not pass
          // on, so the link attach that follows fails with NotConnectedError
          // — one of the two classes Microsoft's own e2e suite expects for
          // a wrong key over AMQP.
          assert.equal(err.sdkName, 'NotConnectedError', String(err));
        }
        return true;
      });
      assert.ok(Date.now() - t0 < REFUSAL_MS, `refused after ${Date.now() - t0} ms`);
      await assert.rejects(sdk.registry(info.hubConnectionString, 'get', regId), (err) => err.status === 404, 'no device in the hub');
    });

    test(`${name}: X.509, individual enrollment with a self-signed certificate → assigned`, async () => {
      const regId = `amqp-x509-ind-${transport}`;
      const c = certs.selfSigned(regId, regId);
      await sdk.service(cs, 'createOrUpdateIndividualEnrollment', {
        registrationId: regId,
        attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: c.cert } } } },
      });
      const { result } = await sdk.registerX509(transport, info.globalEndpoint, info.idScope, regId, c.chain, c.key);
      assertAssigned(result, regId);
      assert.ok(result.x509, `registrationState.x509: ${JSON.stringify(result)}`);
    });
  }

  test('Amqp: X.509 device of a CA enrollment group → assigned; it then sends telemetry over Amqp with x509=true', async () => {
    await caReady;
    const regId = 'amqp-x509-ca-dev';
    const c = certs.leaf(regId, regId, root);
    const { result } = await sdk.registerX509('amqp', info.globalEndpoint, info.idScope, regId, c.chain, c.key);
    assertAssigned(result, regId);
    assert.equal(result.x509?.enrollmentGroupId, CA_GROUP, JSON.stringify(result));
    await sdk.hubSend('amqp', `HostName=${result.assignedHub};DeviceId=${regId};x509=true`, [{ data: '{"x509":true}' }],
      'single', undefined, { x509: { cert: c.chain, key: c.key } });
    const [ev] = await deviceEvents(berth, regId, 1);
    assert.deepEqual(ev.payload, { x509: true });
    assert.notEqual(JSON.parse(ev.annotations['iothub-connection-auth-method']).type, 'sas');
  });

  for (const transport of ['amqp', 'amqpws']) {
    test(`${transport === 'amqp' ? 'Amqp' : 'AmqpWs'}: X.509 certificate of a CA berth does not know → refused at once, no device`, async () => {
      const regId = `amqp-x509-unknown-${transport}`;
      const c = certs.leaf(regId, regId, otherRoot);
      const t0 = Date.now();
      await assert.rejects(sdk.call('registerX509', transport, info.globalEndpoint, info.idScope, regId, c.chain, c.key), (err) => {
        // The register request rejected with amqp:unauthorized-access;
        // the SDK hands on rhea's error as it is.
        assert.equal(err.condition, 'amqp:unauthorized-access', String(err));
        assert.match(err.description ?? '', /^401002:/, String(err));
        return true;
      });
      assert.ok(Date.now() - t0 < REFUSAL_MS, `refused after ${Date.now() - t0} ms`);
      await assert.rejects(sdk.registry(info.hubConnectionString, 'get', regId), (err) => err.status === 404, 'no device in the hub');
    });
  }
});
