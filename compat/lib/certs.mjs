// X.509 certificates for the tests, made with the openssl command line
// (OpenSSL 3) in a temporary directory: ECDSA P-256 keys, a root CA, an
// intermediate CA, device (leaf) certificates whose subject CN is the
// registration ID, self-signed device certificates, and a certificate whose
// validity ended in the past (`openssl ca -startdate/-enddate`, since
// `openssl x509 -req` only takes -days).

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

function openssl(args, cwd) {
  try {
    return execFileSync('openssl', args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] }).toString('utf8');
  } catch (e) {
    throw new Error(`openssl ${args.join(' ')} failed: ${e.stderr?.toString() ?? e.message}`);
  }
}

const CA_EXT = 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\n';
const LEAF_EXT = 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\n';

/**
 * A directory of certificates. Each certificate is {name, cn, certFile,
 * keyFile, cert, key} (PEM text); `chain` (PEM: the certificate followed by
 * its issuers up to, not including, the root) is what a device sends.
 */
export function certWorkshop() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-compat-x509-'));
  let serial = 0x1000;

  const newKey = (name) => {
    const keyFile = path.join(dir, `${name}.key`);
    openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', keyFile]);
    return keyFile;
  };
  const read = (name, cn, certFile, keyFile, issuer) => {
    const cert = fs.readFileSync(certFile, 'utf8');
    const key = fs.readFileSync(keyFile, 'utf8');
    // The chain a device sends: itself and its issuers, without the root.
    const chain = issuer && issuer.issuer ? cert + issuer.chain : cert;
    return { name, cn, certFile, keyFile, cert, key, chain, issuer };
  };
  const extFile = (name, text) => {
    const f = path.join(dir, `${name}.ext`);
    fs.writeFileSync(f, text);
    return f;
  };

  /** A self-signed root CA. */
  const root = (name, cn = `${name} root`) => {
    const keyFile = newKey(name);
    const certFile = path.join(dir, `${name}.pem`);
    openssl(['req', '-x509', '-new', '-key', keyFile, '-subj', `/CN=${cn}`, '-days', '30', '-sha256',
      '-set_serial', String(++serial), '-addext', 'basicConstraints=critical,CA:TRUE',
      '-addext', 'keyUsage=critical,keyCertSign,cRLSign,digitalSignature', '-out', certFile]);
    return read(name, cn, certFile, keyFile, null);
  };

  const signed = (name, cn, issuer, ext) => {
    const keyFile = newKey(name);
    const csr = path.join(dir, `${name}.csr`);
    const certFile = path.join(dir, `${name}.pem`);
    openssl(['req', '-new', '-key', keyFile, '-subj', `/CN=${cn}`, '-out', csr]);
    openssl(['x509', '-req', '-in', csr, '-CA', issuer.certFile, '-CAkey', issuer.keyFile, '-set_serial', String(++serial),
      '-days', '30', '-sha256', '-extfile', extFile(name, ext), '-out', certFile]);
    return read(name, cn, certFile, keyFile, issuer);
  };

  /** An intermediate CA signed by issuer. */
  const intermediate = (name, issuer, cn = `${name} intermediate`) => signed(name, cn, issuer, CA_EXT);

  /** A device certificate (subject CN = cn, normally the registration ID) signed by issuer. */
  const leaf = (name, cn, issuer) => signed(name, cn, issuer, LEAF_EXT);

  /** A self-signed device certificate (individual enrollments, hub selfSigned identities). */
  const selfSigned = (name, cn) => {
    const keyFile = newKey(name);
    const certFile = path.join(dir, `${name}.pem`);
    openssl(['req', '-x509', '-new', '-key', keyFile, '-subj', `/CN=${cn}`, '-days', '30', '-sha256',
      '-set_serial', String(++serial), '-addext', 'basicConstraints=critical,CA:FALSE',
      '-addext', 'extendedKeyUsage=clientAuth', '-out', certFile]);
    return read(name, cn, certFile, keyFile, null);
  };

  /**
   * A device certificate signed by issuer whose validity ended in the past
   * (2020-01-01 to 2020-01-02), made with `openssl ca`, which takes explicit
   * -startdate/-enddate.
   */
  const expiredLeaf = (name, cn, issuer) => {
    const keyFile = newKey(name);
    const csr = path.join(dir, `${name}.csr`);
    const certFile = path.join(dir, `${name}.pem`);
    openssl(['req', '-new', '-key', keyFile, '-subj', `/CN=${cn}`, '-out', csr]);
    const caDir = path.join(dir, `${name}-ca`);
    fs.mkdirSync(caDir);
    fs.writeFileSync(path.join(caDir, 'index.txt'), '');
    fs.writeFileSync(path.join(caDir, 'serial'), `${(++serial).toString(16).padStart(4, '0')}\n`);
    const conf = path.join(caDir, 'ca.cnf');
    fs.writeFileSync(conf, [
      '[ca]', 'default_ca = the_ca',
      '[the_ca]', `dir = ${caDir}`, 'database = $dir/index.txt', 'serial = $dir/serial', 'new_certs_dir = $dir',
      `certificate = ${issuer.certFile}`, `private_key = ${issuer.keyFile}`, 'default_md = sha256',
      'policy = any', 'unique_subject = no', 'copy_extensions = none', 'x509_extensions = leaf_ext',
      '[any]', 'commonName = supplied',
      '[leaf_ext]', ...LEAF_EXT.trim().split('\n'),
      '',
    ].join('\n'));
    openssl(['ca', '-batch', '-config', conf, '-in', csr, '-out', certFile, '-notext',
      '-startdate', '20200101000000Z', '-enddate', '20200102000000Z']);
    return read(name, cn, certFile, keyFile, issuer);
  };

  /** SHA-1 and SHA-256 thumbprints (upper-case hex of the DER), as Azure prints them. */
  const thumbprints = (c) => {
    const f = (alg) => openssl(['x509', '-in', c.certFile, '-noout', '-fingerprint', `-${alg}`]).trim().split('=')[1].replace(/:/g, '');
    return { sha1: f('sha1'), sha256: f('sha256') };
  };

  const cleanup = () => { if (!process.env.BERTH_KEEP_DATA) fs.rmSync(dir, { recursive: true, force: true }); };

  return { dir, root, intermediate, leaf, selfSigned, expiredLeaf, thumbprints, cleanup };
}
