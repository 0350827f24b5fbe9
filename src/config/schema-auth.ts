import { type TBoolean, type TUnion, Type as T } from '@sinclair/typebox';
import { oauthEndpoint, oauthExtensions, SASL_MECHANISMS, saslOf, tlsOf } from './auth.js';
import {
  bool,
  type Compiles,
  duration,
  enumOf,
  maybe,
  maybeSection,
  oneOf,
  optSecret,
  optStr,
  required,
  ruled,
  secretFile,
  section,
  textFile,
  type Walked,
  withDefault,
} from './schema-kit.js';

/** The TLS and SASL sections of the config declaration (schema.ts). */

const tlsSection = () =>
  section(
    {
      caFile: textFile('PEM file: the CA that signed the server certificate.'),
      certFile: textFile('PEM file: the client certificate (mutual TLS).'),
      keyFile: secretFile('PEM file: the client private key (mutual TLS).'),
      keyPassphrase: optSecret('The passphrase of an encrypted keyFile.'),
      keyPassphraseFile: secretFile('The passphrase of an encrypted keyFile, read from this file.'),
      rejectUnauthorized: bool(true, "Verify the server's certificate."),
      servername: optStr('The TLS SNI name, when it differs from the host.'),
    },
    '',
    { 'x-exclusive': [['keyPassphrase', 'keyPassphraseFile']] },
  );
type TlsFiles = Walked<ReturnType<typeof tlsSection>['properties']>;

/** TLS: `true` (Node's CA bundle) or the files, compiled by tlsOf (auth.ts); absent or false: none. */
export const tlsFiles = (what: string) =>
  T.Optional(
    T.Union([T.Boolean(), tlsSection()], {
      description: `TLS for ${what}: true (Node's CA bundle) or the files; false, "false" or "" for none.`,
      'x-kind': 'tls',
      'x-compile': (t: true | TlsFiles, written: unknown, at: string) => tlsOf(at, t, written),
    }) as TUnion<[TBoolean, ReturnType<typeof tlsSection>]> & Compiles<ReturnType<typeof tlsOf>>,
  );

export const kafkaSasl = maybe(
  ruled(
    {
      mechanism: enumOf(
        SASL_MECHANISMS,
        'The SASL mechanism: plain and scram-* take username and a password; oauthbearer takes sasl.oauthbearer; aws-msk-iam takes sasl.awsMskIam.',
      ),
      username: optStr('plain, scram-*: the SASL user name.'),
      password: optSecret('plain, scram-*: the SASL password.'),
      passwordFile: secretFile('plain, scram-*: the SASL password, read from this file.'),
      oauthbearer: maybe(
        ruled(
          {
            tokenEndpoint: required('The OAuth 2.0 token endpoint (https://) of the client credentials grant.', { 'x-secret': 'url' }),
            allowPlainHttp: bool(
              false,
              'Allow an http:// tokenEndpoint. The client secret and the tokens then cross the network in clear text: only for a test endpoint on loopback.',
            ),
            tls: maybeSection(
              {
                caFile: textFile("PEM file: the CAs that may sign the token endpoint's certificate, in place of Node's CA bundle."),
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
          ({ tokenEndpoint, allowPlainHttp, tls, clientSecret, extensions, ...o }, _, at) => ({
            tokenEndpoint: oauthEndpoint(at, tokenEndpoint, allowPlainHttp, tls !== undefined),
            ...o,
            /** Required with its file (x-one-of): one of them is there. */
            clientSecret: clientSecret as string,
            extensions: oauthExtensions(at, extensions),
            /** PEM: the CAs that may sign the endpoint's certificate, in place of Node's bundle. */
            ca: tls?.ca,
          }),
          'oauthbearer: OIDC client credentials; the token is cached and fetched again before it expires.',
          { 'x-exclusive': [['clientSecret', 'clientSecretFile']], 'x-one-of': [['clientSecret', 'clientSecretFile']] },
        ),
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
    (s, written, at) => saslOf(at, s, written),
    'SASL authentication.',
    { 'x-exclusive': [['password', 'passwordFile']] },
  ),
);
