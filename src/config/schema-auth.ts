import { Type as T } from '@sinclair/typebox';
import {
  bool,
  duration,
  enumOf,
  maybeSection,
  oneOf,
  optSecret,
  optStr,
  required,
  secretFile,
  section,
  withDefault,
} from './schema-kit.js';

/** The TLS and SASL sections of the config declaration (schema.ts). */

export const tlsFiles = (what: string) =>
  T.Optional(
    T.Union(
      [
        T.Boolean(),
        section(
          {
            caFile: optStr('PEM file: the CA that signed the server certificate.'),
            certFile: optStr('PEM file: the client certificate (mutual TLS).'),
            keyFile: secretFile('PEM file: the client private key (mutual TLS).'),
            keyPassphrase: optSecret('The passphrase of an encrypted keyFile.'),
            keyPassphraseFile: secretFile('The passphrase of an encrypted keyFile, read from this file.'),
            rejectUnauthorized: bool(true, "Verify the server's certificate."),
            servername: optStr('The TLS SNI name, when it differs from the host.'),
          },
          '',
          { 'x-exclusive': [['keyPassphrase', 'keyPassphraseFile']] },
        ),
      ],
      { description: `TLS for ${what}: true (Node's CA bundle) or the files; false, "false" or "" for none.`, 'x-kind': 'tls' },
    ),
  );

/** The SASL mechanisms of sink.kafka.sasl. */
export const SASL_MECHANISMS = ['plain', 'scram-sha-256', 'scram-sha-512', 'oauthbearer', 'aws-msk-iam'] as const;

export const kafkaSasl = maybeSection(
  {
    mechanism: enumOf(
      SASL_MECHANISMS,
      'The SASL mechanism: plain and scram-* take username and a password; oauthbearer takes sasl.oauthbearer; aws-msk-iam takes sasl.awsMskIam.',
    ),
    username: optStr('plain, scram-*: the SASL user name.'),
    password: optSecret('plain, scram-*: the SASL password.'),
    passwordFile: secretFile('plain, scram-*: the SASL password, read from this file.'),
    oauthbearer: maybeSection(
      {
        tokenEndpoint: required('The OAuth 2.0 token endpoint (https://) of the client credentials grant.', { 'x-secret': 'url' }),
        allowPlainHttp: bool(
          false,
          'Allow an http:// tokenEndpoint. The client secret and the tokens then cross the network in clear text: only for a test endpoint on loopback.',
        ),
        tls: maybeSection(
          {
            caFile: optStr("PEM file: the CAs that may sign the token endpoint's certificate, in place of Node's CA bundle."),
          },
          'TLS to an https:// tokenEndpoint.',
        ),
        clientId: required('The OAuth client id.'),
        clientSecret: optSecret('The OAuth client secret.'),
        clientSecretFile: secretFile('The OAuth client secret, read from this file.'),
        clientAuth: oneOf(
          ['basic', 'post'],
          'basic',
          'How the client authenticates to the token endpoint: basic (HTTP Basic, client_secret_basic) or post (client_id and client_secret in the form body).',
        ),
        scope: optStr('The scope to request (space-separated); none when absent.'),
        extensions: withDefault(
          T.Array(
            section({
              name: required('A SASL extension name (letters only; not auth).'),
              value: required('Its value.'),
            }),
            {
              default: [],
              description: 'SASL/OAUTHBEARER extensions sent with the token (RFC 7628), e.g. logicalCluster and identityPoolId.',
            },
          ),
        ),
        timeout: duration('10s', 'How long one token request may take.', { min: 100, max: 300_000 }),
      },
      'oauthbearer: OIDC client credentials; the token is cached and fetched again before it expires.',
      { 'x-exclusive': [['clientSecret', 'clientSecretFile']], 'x-one-of': [['clientSecret', 'clientSecretFile']] },
    ),
    awsMskIam: maybeSection(
      {
        region: required('The AWS region of the MSK cluster (eu-west-1).'),
        profile: optStr('An AWS profile to take credentials from; default: the AWS SDK default credential chain.'),
        roleArn: optStr('An IAM role to assume for the credentials.'),
        roleSessionName: optStr('The session name when assuming roleArn (default MSKSASLDefaultSession).'),
      },
      'aws-msk-iam: AWS MSK IAM over SASL/OAUTHBEARER, signed by aws-msk-iam-sasl-signer-js.',
      { 'x-exclusive': [['profile', 'roleArn']] },
    ),
  },
  'SASL authentication.',
  { 'x-exclusive': [['password', 'passwordFile']] },
);
