import { describe, expect, it } from 'vitest';
import { expectDocumentsExactly, exportedStringUnion, tableUnder } from './docs-sources.js';

/**
 * The poison reasons are declared once, as the `PoisonReason` union in src/errors.ts. The
 * runbook's table under "## Poison messages" is what an operator reads when
 * outboxd_poison_messages_total{reason} rises: it must name every reason, and no other.
 */
describe('docs/runbook.md poison reasons', () => {
  const declared = exportedStringUnion('src/errors.ts', 'PoisonReason');
  const rows = tableUnder('docs/runbook.md', '## Poison messages');
  const documented = rows.map((r) => /^`([a-z_]+)`$/.exec(r[0] ?? '')?.[1] ?? `(not one reason: ${r[0]})`);

  it('reads the PoisonReason union from src/errors.ts', () => {
    expect(declared).toContain('oversized');
    expect(declared.length).toBeGreaterThan(10);
  });

  it('explains exactly the reasons PoisonReason declares, each once', () => {
    expectDocumentsExactly(documented, declared);
  });

  it('gives every reason a cause', () => {
    for (const row of rows) expect(row[1]?.length, `cause of ${row[0]}`).toBeGreaterThan(10);
  });
});
