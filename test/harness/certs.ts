/**
 * A throwaway PKI for TLS tests, made with the `openssl` CLI in a directory of the caller's: a CA,
 * a server certificate for 127.0.0.1 and localhost, and a client certificate whose key can be
 * encrypted with a passphrase (PKCS#8, AES-256-CBC). RSA, since Erlang (RabbitMQ) and Java
 * (Kafka's PEM keystores) both take it without fuss.
 */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface TestPki {
  dir: string;
  caFile: string;
  serverCertFile: string;
  /** PKCS#8, unencrypted. */
  serverKeyFile: string;
  /** The server key and certificate in one file: a Kafka PEM keystore. */
  serverKeystoreFile: string;
  clientCertFile: string;
  /** Encrypted with `clientKeyPassphrase` when one was given, else plain. */
  clientKeyFile: string;
  clientKeyPassphrase: string | undefined;
}

function openssl(dir: string, ...args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'], timeout: 60_000 });
}

/** Makes the PKI in `dir`; the client certificate's subject is CN=`clientCn`. */
export function makePki(dir: string, opts: { clientCn: string; clientKeyPassphrase?: string }): TestPki {
  const days = '2';
  openssl(
    dir,
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-keyout',
    'ca.key',
    '-out',
    'ca.pem',
    '-days',
    days,
    '-subj',
    '/CN=outboxd test CA',
  );
  const leaf = (name: string, subject: string, ext: string) => {
    writeFileSync(join(dir, `${name}.ext`), `${ext}\n`);
    openssl(dir, 'req', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.rsa.key`, '-out', `${name}.csr`, '-subj', subject);
    openssl(dir, 'pkcs8', '-topk8', '-nocrypt', '-in', `${name}.rsa.key`, '-out', `${name}.key`);
    openssl(
      dir,
      'x509',
      '-req',
      '-in',
      `${name}.csr`,
      '-CA',
      'ca.pem',
      '-CAkey',
      'ca.key',
      '-CAcreateserial',
      '-out',
      `${name}.pem`,
      '-days',
      days,
      '-extfile',
      `${name}.ext`,
    );
  };
  leaf('server', '/CN=localhost', 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth');
  leaf('client', `/CN=${opts.clientCn}`, 'extendedKeyUsage=clientAuth');
  let clientKeyFile = join(dir, 'client.key');
  if (opts.clientKeyPassphrase !== undefined) {
    openssl(
      dir,
      'pkcs8',
      '-topk8',
      '-v2',
      'aes-256-cbc',
      '-in',
      'client.key',
      '-out',
      'client.enc.key',
      '-passout',
      `pass:${opts.clientKeyPassphrase}`,
    );
    clientKeyFile = join(dir, 'client.enc.key');
  }
  execFileSync('sh', ['-c', 'cat server.key server.pem > server.keystore.pem'], { cwd: dir });
  return {
    dir,
    caFile: join(dir, 'ca.pem'),
    serverCertFile: join(dir, 'server.pem'),
    serverKeyFile: join(dir, 'server.key'),
    serverKeystoreFile: join(dir, 'server.keystore.pem'),
    clientCertFile: join(dir, 'client.pem'),
    clientKeyFile,
    clientKeyPassphrase: opts.clientKeyPassphrase,
  };
}
