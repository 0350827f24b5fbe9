import { describe, expect, it } from 'vitest';
import { classifyAmqpError } from '../../src/sink/rabbitmq/errors.js';

/** The shapes amqplib gives its errors, as it builds them (lib/connection.js, lib/channel.js). */
function sys(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}
function reply(code: number, text: string): Error {
  return Object.assign(new Error(`Channel closed by server: ${code} with message "${text}"`), { code });
}
const handshake = (code: number, name: string, text: string) =>
  new Error(`Handshake terminated by server: ${code} (${name}) with message "${text}"`);

describe('classifyAmqpError', () => {
  it('retries socket failures, whatever digits the address holds', () => {
    for (const port of [40312, 34035, 44033, 5672]) {
      const e = classifyAmqpError(sys('ECONNREFUSED', `connect ECONNREFUSED 127.0.0.1:${port}`), 'connecting to RabbitMQ');
      expect(e.retriable).toBe(true);
      expect(e.reason).toBe('ECONNREFUSED');
    }
    expect(classifyAmqpError(sys('ECONNRESET', 'read ECONNRESET'), 'x').retriable).toBe(true);
    expect(classifyAmqpError(new Error('Socket closed abruptly during opening handshake'), 'x').retriable).toBe(true);
  });

  it('stops on refused credentials', () => {
    const refused = classifyAmqpError(
      handshake(403, 'ACCESS-REFUSED', 'ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN.'),
      'connecting to RabbitMQ',
    );
    expect(refused.retriable).toBe(false);
    expect(refused.message).toMatch(/^connecting to RabbitMQ: .*\(check the credentials and vhost permissions\)$/);
  });

  it('retries a vhost the broker will not open, naming it, and a connection it forced closed', () => {
    // What amqplib reports for any refused Connection.Open (its reply text is dropped).
    const vhost = classifyAmqpError(
      new Error('Expected ConnectionOpenOk; got <ConnectionClose channel:0>'),
      'connecting to RabbitMQ',
      'orders',
    );
    expect(vhost).toMatchObject({ reason: 'vhost_refused', retriable: true });
    expect(vhost.message).toBe(
      'connecting to RabbitMQ: RabbitMQ refused to open vhost "orders": it does not exist, the user has no access to it, or it is down',
    );
    expect(classifyAmqpError(handshake(541, 'INTERNAL-ERROR', "vhost '/' is down"), 'x').retriable).toBe(true);
    expect(
      classifyAmqpError(reply(320, "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"), 'x').retriable,
    ).toBe(true);
  });

  it('stops on channel closes that retrying cannot mend, retries nacks', () => {
    expect(classifyAmqpError(reply(404, "NOT_FOUND - no exchange 'x' in vhost '/'"), 'x').retriable).toBe(false);
    expect(classifyAmqpError(reply(406, 'PRECONDITION_FAILED - inequivalent arg'), 'x').retriable).toBe(false);
    expect(classifyAmqpError(new Error('message nacked'), 'x')).toMatchObject({ reason: 'nack', retriable: true });
  });
});
