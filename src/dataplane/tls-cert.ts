// The receiver's throwaway TLS identity and the sender's pin of it.
// Generated with the system `openssl` (execFile, argument array): Debian ships it, it makes an
// EC P-256 key in milliseconds, and it needs no extra npm dependency (`selfsigned` would pull in
// node-forge and take about a second for an RSA key).
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { X509Certificate } from 'node:crypto';
import { isIP } from 'node:net';
import type { ConnectionOptions, PeerCertificate } from 'node:tls';

const run = promisify(execFile);

export async function generateSelfSignedCert(host: string): Promise<{ keyPem: string; certPem: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-cert-'));
  try {
    const san = isIP(host) ? `IP:${host}` : `DNS:${host}`;
    await run('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'),
      '-days', '7', '-subj', '/CN=ferry-receiver', '-addext', `subjectAltName=${san}`,
    ]);
    return { keyPem: await readFile(join(dir, 'key.pem'), 'utf8'), certPem: await readFile(join(dir, 'cert.pem'), 'utf8') };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * TLS options that trust exactly one certificate: the receiver's, handed over by the workflow.
 * The host name is not checked (the address came with the pin); the fingerprint is.
 */
export function pinnedTlsOptions(certPem: string): ConnectionOptions {
  const pinned = new X509Certificate(certPem).fingerprint256;
  return {
    ca: certPem,
    checkServerIdentity: (_host: string, cert: PeerCertificate) =>
      cert.fingerprint256 === pinned ? undefined : new Error(`receiver certificate ${cert.fingerprint256} is not the pinned ${pinned}`),
  };
}
