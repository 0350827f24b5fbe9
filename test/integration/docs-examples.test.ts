/**
 * Every example in the docs is a file that a test loads or renders, and the docs stay true to
 * the code:
 * - each ```yaml block in README.md and docs/ is a copy of a file it names on its first line;
 *   outboxd configs compile with the real parseConfig, Helm values render with `helm template`
 *   (and the rendered outboxd.yaml compiles), other YAML parses;
 * - the `helm install|upgrade` commands in the docs render, and the repository files that shell
 *   examples mount or pass exist;
 * - the Grafana dashboard and the Prometheus alert rules in deploy/ use only metrics (and label
 *   names) that src/observability/metrics.ts registers, and link to runbook sections that exist;
 * - docs/metrics.md documents every registered metric and names no other;
 * - every relative link in README.md, CHANGELOG.md and docs/ points to a file, and every anchor
 *   to a heading.
 * Needs no services; `helm` comes from scripts/install-helm.sh, as for helm.test.ts.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Scalar, isScalar, parse, parseAllDocuments, parseDocument, visit } from 'yaml';
import { parseConfig } from '../../src/config/load.js';
import type { Config } from '../../src/config/config.js';
import { ExitCode } from '../../src/errors.js';
import { createMetrics } from '../../src/observability/metrics.js';
import { helmBinary } from './support.js';
import { ConfigSchema } from '../../src/config/schema.js';

const ROOT = resolve(import.meta.dirname, '../..');
const CHART = join(ROOT, 'helm/outboxd');
const RUNBOOK = 'docs/runbook.md';
const DASHBOARD = 'deploy/grafana/outboxd-dashboard.json';
const ALERTS = 'deploy/prometheus/outboxd-alerts.yaml';

const tmp = mkdtempSync(join(tmpdir(), 'outboxd-docs-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** Stands in for every secret or TLS file an example names (they exist only in a deployment). */
const SECRET_FILE = join(tmp, 'secret');
writeFileSync(SECRET_FILE, 'not-a-real-secret\n');

/** The environment the examples' `${VAR}` references expect. An unknown one fails, naming it. */
const ENV: NodeJS.ProcessEnv = {
  OUTBOXD_PG_URL: 'postgres://outboxd@db.internal:5432/app?sslmode=verify-full',
  PGPASSWORD: 'pg-secret',
  PGHOST: 'db.internal',
  PGPORT: '5432',
  PGDATABASE: 'app',
  KAFKA_BROKERS: 'b1:9093,b2:9093,b3:9093',
  KAFKA_PASSWORD: 'kafka-secret',
  RABBITMQ_HOST: 'rabbit.internal',
  RABBITMQ_PASSWORD: 'rabbit-secret',
  LOG_LEVEL: 'info',
  OUTBOXD_SHARD_INDEX: '1',
};

const read = (rel: string): string => readFileSync(join(ROOT, rel), 'utf8');

// ---------------------------------------------------------------------------------------------
// Markdown: the files, their fenced blocks, headings and links.

function markdownFiles(): string[] {
  const walk = (dir: string): string[] =>
    readdirSync(join(ROOT, dir), { withFileTypes: true }).flatMap((e) =>
      e.isDirectory() ? walk(`${dir}/${e.name}`) : e.name.endsWith('.md') ? [`${dir}/${e.name}`] : [],
    );
  return ['README.md', 'CHANGELOG.md', ...walk('docs')];
}

interface Block {
  file: string;
  line: number;
  lang: string;
  /** The block's text, with the fence's indentation removed. */
  text: string;
}

interface Markdown {
  file: string;
  blocks: Block[];
  /** Lines outside fenced blocks, with their 1-based line numbers. */
  prose: Array<{ line: number; text: string }>;
}

function parseMarkdown(file: string): Markdown {
  const lines = read(file).split('\n');
  const blocks: Block[] = [];
  const prose: Markdown['prose'] = [];
  for (let i = 0; i < lines.length; i++) {
    const open = /^(\s*)(`{3,}|~{3,})\s*([\w-]*)\s*$/.exec(lines[i] as string);
    if (!open) {
      prose.push({ line: i + 1, text: lines[i] as string });
      continue;
    }
    const [, indent = '', fence = '', lang = ''] = open;
    const body: string[] = [];
    let j = i + 1;
    while (j < lines.length && !new RegExp(`^\\s*${fence[0] === '`' ? '`' : '~'}{${fence.length},}\\s*$`).test(lines[j] as string)) {
      const l = lines[j] as string;
      body.push(l.startsWith(indent) ? l.slice(indent.length) : l.trimStart());
      j++;
    }
    if (j >= lines.length) throw new Error(`${file}:${i + 1}: unclosed code fence`);
    blocks.push({ file, line: i + 1, lang, text: `${body.join('\n')}\n` });
    i = j;
  }
  return { file, blocks, prose };
}

/** GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, -1 for repeats. */
function headingSlugs(md: Markdown): Set<string> {
  const seen = new Map<string, number>();
  const slugs = new Set<string>();
  for (const { text } of md.prose) {
    const h = /^#{1,6}\s+(.+?)\s*#*\s*$/.exec(text);
    if (!h) continue;
    const base = (h[1] as string)
      .replace(/\[([^\]]*)\]\([^)]*\)/g, '$1')
      .replace(/<[^>]+>/g, '')
      .toLowerCase()
      .replace(/[^\p{L}\p{N}\s_-]/gu, '')
      .trim()
      .replace(/\s/g, '-');
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    slugs.add(n === 0 ? base : `${base}-${n}`);
  }
  return slugs;
}

/** Explicit `<a id="…">` / `<a name="…">` anchors. */
function htmlAnchors(md: Markdown): Set<string> {
  const out = new Set<string>();
  for (const { text } of md.prose) for (const m of text.matchAll(/<a\s+(?:id|name)="([^"]+)"/g)) out.add(m[1] as string);
  return out;
}

function links(md: Markdown): Array<{ line: number; target: string }> {
  const out: Array<{ line: number; target: string }> = [];
  for (const { line, text } of md.prose) {
    const noCode = text.replace(/`[^`]*`/g, '');
    for (const m of noCode.matchAll(/!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)/g)) out.push({ line, target: m[1] as string });
  }
  return out;
}

const docs = markdownFiles().map(parseMarkdown);
const byFile = new Map(docs.map((d) => [d.file, d]));
const runbookSlugs = headingSlugs(byFile.get(RUNBOOK) as Markdown);

/** Every `docs/runbook.md#anchor` a text refers to (alerts, dashboard links, log lines, prose). */
function runbookAnchors(text: string): string[] {
  return [...text.matchAll(/docs\/runbook\.md#([A-Za-z0-9_-]+)/g)].map((m) => m[1] as string);
}

/** Splits a shell command line into words, honouring single and double quotes. */
function shellWords(line: string): string[] {
  const words: string[] = [];
  for (const m of line.matchAll(/(?:[^\s"']+|"(?:[^"\\]|\\.)*"|'[^']*')+/g)) {
    words.push(m[0].replace(/"((?:[^"\\]|\\.)*)"|'([^']*)'/g, (_, d: string | undefined, q: string | undefined) => d ?? q ?? ''));
  }
  return words;
}

// ---------------------------------------------------------------------------------------------
// Examples: what kind of YAML a file is, and how it is checked.

const CONFIG_KEYS = new Set(Object.keys(ConfigSchema.properties));
const HELM_KEYS = new Set(Object.keys(parse(readFileSync(join(CHART, 'values.yaml'), 'utf8')) as object));

type Kind = 'config' | 'helm-values' | 'prometheus-rules' | 'other';

function kindOf(doc: unknown): Kind {
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) return 'other';
  const keys = Object.keys(doc);
  if (keys.length > 0 && keys.every((k) => CONFIG_KEYS.has(k))) return 'config';
  if (keys.length > 0 && keys.every((k) => HELM_KEYS.has(k))) return 'helm-values';
  if (keys.includes('groups')) return 'prometheus-rules';
  return 'other';
}

/** Compiles an outboxd config with the real loader; secret and TLS files point at a stand-in. */
function compileConfig(text: string, env: NodeJS.ProcessEnv = ENV): Config {
  const doc = parseDocument(text);
  expect(doc.errors.map((e) => e.message)).toEqual([]);
  visit(doc, {
    Pair(_, pair) {
      if (isScalar(pair.key) && /File$/.test(String(pair.key.value)) && isScalar(pair.value)) pair.value = new Scalar(SECRET_FILE);
    },
  });
  return parseConfig(doc.toString().replace(/\$\{file:[^}]*\}/g, `\${file:${SECRET_FILE}}`), env);
}

interface K8sObject {
  kind: string;
  data?: Record<string, string>;
}

/** `helm template` with the given arguments; returns the rendered objects. */
function helmTemplate(args: string[]): K8sObject[] {
  const r = spawnSync(helmBinary(), ['template', ...args], {
    cwd: ROOT,
    encoding: 'utf8',
    env: { PATH: process.env.PATH, HOME: tmp, HELM_CACHE_HOME: join(tmp, 'cache'), HELM_CONFIG_HOME: join(tmp, 'config') },
  });
  expect(r.status, `helm template ${args.join(' ')}:\n${r.stderr}`).toBe(0);
  return parseAllDocuments(r.stdout)
    .map((d) => {
      expect(d.errors, 'rendered YAML parses').toEqual([]);
      return d.toJS() as K8sObject | null;
    })
    .filter((o): o is K8sObject => o !== null);
}

/** Renders the chart and compiles the outboxd.yaml it puts in the ConfigMap. */
function renderAndCompile(args: string[]): Config {
  const objects = helmTemplate(args);
  expect(objects.map((o) => o.kind)).toContain('Deployment');
  const text = objects.find((o) => o.kind === 'ConfigMap')?.data?.['outboxd.yaml'];
  expect(text, 'ConfigMap data outboxd.yaml').toBeTypeOf('string');
  return compileConfig(text as string);
}

/** Checks one example file by its kind. */
function checkExampleFile(rel: string): Kind {
  const text = read(rel);
  const doc = parseDocument(text);
  expect(
    doc.errors.map((e) => e.message),
    `${rel} parses`,
  ).toEqual([]);
  const kind = kindOf(doc.toJS());
  if (kind === 'config') compileConfig(text);
  if (kind === 'helm-values') renderAndCompile(['docs-example', CHART, '--namespace', 'relays', '-f', join(ROOT, rel)]);
  if (kind === 'prometheus-rules') checkRules(doc.toJS() as RuleFile, rel);
  return kind;
}

// ---------------------------------------------------------------------------------------------
// Metrics: what the registry exports, and what a PromQL expression uses.

interface MetricInfo {
  type: string;
  labels: Set<string>;
}

const registered = new Map<string, MetricInfo>();
/** Series names PromQL may use: every metric, plus _bucket/_sum/_count of histograms. */
const series = new Map<string, MetricInfo>();

beforeAll(async () => {
  const metrics = createMetrics();
  const json = await metrics.registry.getMetricsAsJSON();
  const labelNames = new Map(
    metrics.registry.getMetricsAsArray().map((m) => [m.name, (m as unknown as { labelNames?: readonly string[] }).labelNames ?? []]),
  );
  for (const m of json) {
    const info = { type: String(m.type), labels: new Set(labelNames.get(m.name) ?? []) };
    registered.set(m.name, info);
    series.set(m.name, info);
    if (info.type === 'histogram') {
      series.set(`${m.name}_bucket`, { type: 'counter', labels: new Set([...info.labels, 'le']) });
      series.set(`${m.name}_sum`, { type: 'counter', labels: info.labels });
      series.set(`${m.name}_count`, { type: 'counter', labels: info.labels });
    }
  }
});

/**
 * Labels any series may carry besides its own: the target labels Prometheus adds, and the
 * `shard` that a relay with postgres.shard puts on every series it exports (checked below).
 */
const SERIES_LABELS = new Set(['job', 'instance', 'shard']);

/** Problems with the metric names and label matchers of one PromQL expression. */
function promqlProblems(expr: string): string[] {
  const problems: string[] = [];
  const names = [...expr.matchAll(/\boutboxd_[a-z0-9_]+/g)].map((m) => m[0]);
  for (const n of names) if (!series.has(n)) problems.push(`unknown metric ${n}`);
  for (const m of expr.matchAll(/\b(outboxd_[a-z0-9_]+)\s*\{([^}]*)\}/g)) {
    const info = series.get(m[1] as string);
    if (!info) continue;
    for (const l of (m[2] as string).matchAll(/([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)/g)) {
      const label = l[1] as string;
      if (!info.labels.has(label) && !SERIES_LABELS.has(label)) problems.push(`${m[1]} has no label ${label}`);
    }
  }
  let depth = 0;
  for (const c of expr.replace(/"(?:[^"\\]|\\.)*"/g, '""')) {
    if ('({['.includes(c)) depth++;
    if (')}]'.includes(c)) depth--;
    if (depth < 0) break;
  }
  if (depth !== 0) problems.push('unbalanced brackets');
  return problems;
}

// ---------------------------------------------------------------------------------------------
// Alert rules.

interface Rule {
  alert?: string;
  record?: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
type RuleFile = { groups: Array<{ name: string; rules: Rule[] }> };

function checkRules(file: RuleFile, where: string): Rule[] {
  expect(Array.isArray(file.groups), `${where}: groups is a list`).toBe(true);
  const rules = file.groups.flatMap((g) => {
    expect(g.name, `${where}: every group has a name`).toBeTruthy();
    expect(Array.isArray(g.rules), `${where}: group ${g.name} has rules`).toBe(true);
    return g.rules;
  });
  for (const r of rules) {
    const name = r.alert ?? r.record ?? '?';
    expect(typeof r.expr, `${where}: ${name} has an expr`).toBe('string');
    expect(promqlProblems(r.expr), `${where}: ${name}`).toEqual([]);
    if (r.for !== undefined) expect(r.for, `${where}: ${name} for`).toMatch(/^\d+[smhd]$/);
  }
  return rules;
}

// =============================================================================================

describe('fenced examples in README.md and docs/', () => {
  const yamlBlocks = docs.flatMap((d) => d.blocks.filter((b) => b.lang === 'yaml' || b.lang === 'yml'));
  const shellBlocks = docs.flatMap((d) => d.blocks.filter((b) => ['sh', 'bash', 'shell', 'console'].includes(b.lang)));

  it('has YAML examples to check', () => {
    expect(yamlBlocks.length).toBeGreaterThan(5);
  });

  for (const block of yamlBlocks) {
    it(`${block.file}:${block.line} is a copy of the file it names, and that file is valid`, () => {
      const named = /^#\s+((?:[\w.-]+\/)*[\w.-]+\.ya?ml)\b/.exec(block.text.split('\n')[0] as string)?.[1];
      expect(named, 'the first line is a comment naming the example file, e.g. "# docs/examples/x.yaml: …"').toBeDefined();
      const rel = named as string;
      expect(existsSync(join(ROOT, rel)), `${rel} exists`).toBe(true);
      // The file may start with the yaml-language-server modeline, which the docs leave out.
      expect(block.text.trimEnd()).toBe(
        read(rel)
          .replace(/^# yaml-language-server: .*\n/, '')
          .trimEnd(),
      );
      expect(checkExampleFile(rel)).not.toBe('other');
    });
  }

  it('every file in docs/examples/ is valid and shown or linked by the docs', () => {
    const walk = (dir: string): string[] =>
      readdirSync(join(ROOT, dir), { withFileTypes: true }).flatMap((e) =>
        e.isDirectory() ? walk(`${dir}/${e.name}`) : /\.ya?ml$/.test(e.name) ? [`${dir}/${e.name}`] : [],
      );
    const files = walk('docs/examples');
    expect(files.length).toBeGreaterThan(0);
    const allDocs = docs.map((d) => read(d.file)).join('\n');
    for (const rel of files) {
      expect(['config', 'helm-values'], `${rel} is an outboxd config or Helm values`).toContain(checkExampleFile(rel));
      expect(allDocs.includes(rel) || allDocs.includes(rel.replace(/^docs\//, '')), `${rel} is referenced from the docs`).toBe(true);
    }
  });

  it('docs/examples/tls-from-env.yaml turns Kafka TLS on and off from KAFKA_TLS', () => {
    const text = read('docs/examples/tls-from-env.yaml');
    const kafka = (cfg: Config) => (cfg.sink.type === 'kafka' ? cfg.sink.kafka : null);
    expect(kafka(compileConfig(text, { ...ENV, KAFKA_TLS: 'true' }))?.ssl).toBeDefined();
    expect(kafka(compileConfig(text, { ...ENV, KAFKA_TLS: 'false' }))?.ssl).toBeUndefined();
    expect(kafka(compileConfig(text, ENV))?.ssl).toBeUndefined();
  });

  it('every ```json block parses', () => {
    for (const b of docs.flatMap((d) => d.blocks.filter((x) => x.lang === 'json'))) {
      expect(() => JSON.parse(b.text), `${b.file}:${b.line}`).not.toThrow();
    }
  });

  /** Shell commands, with backslash continuations joined and comments dropped. */
  const commands = shellBlocks.flatMap((b) =>
    b.text
      .replace(/\\\n\s*/g, ' ')
      .split('\n')
      .map((l) => l.replace(/\s+#\s.*$/, '').trim())
      .filter((l) => l !== '' && !l.startsWith('#'))
      .map((l) => ({ where: `${b.file}:${b.line}`, line: l })),
  );

  it('the helm install/upgrade commands in the docs render, and their config compiles', () => {
    const helmCommands = commands.filter((c) => /^helm\s+(install|upgrade|template)\b/.test(c.line));
    expect(helmCommands.length, 'the README shows helm install').toBeGreaterThan(0);
    for (const { where, line } of helmCommands) {
      const words = shellWords(line).slice(2);
      const positional: string[] = [];
      const args: string[] = [];
      for (let i = 0; i < words.length; i++) {
        const w = words[i] as string;
        if (['-f', '--values', '--set', '--set-string', '-n', '--namespace'].includes(w)) {
          const v = words[++i] as string;
          args.push(w, w === '-f' || w === '--values' ? join(ROOT, v) : v);
          if (w === '-f' || w === '--values') expect(existsSync(join(ROOT, v)), `${where}: ${v} exists`).toBe(true);
        } else if (!w.startsWith('-')) positional.push(w);
      }
      const [release, chart] = positional;
      expect(chart, `${where}: the chart is helm/outboxd`).toBe('helm/outboxd');
      renderAndCompile([release as string, CHART, ...args]);
    }
  });

  it('the repository files that shell examples mount or pass exist', () => {
    let checked = 0;
    for (const { where, line } of commands) {
      for (const m of line.matchAll(/(?:^|[\s"'=:])(?:\$PWD\/)?((?:config|docs|deploy|helm|scripts)\/[\w./-]*[\w])/g)) {
        const rel = m[1] as string;
        expect(existsSync(join(ROOT, rel)), `${where}: ${rel} exists`).toBe(true);
        checked++;
      }
      // A config mounted into the container compiles.
      for (const m of line.matchAll(/\$PWD\/([\w./-]+\.ya?ml):\/etc\/outboxd\/outboxd\.yaml/g)) compileConfig(read(m[1] as string));
    }
    expect(checked).toBeGreaterThan(0);
  });
});

describe('README.md', () => {
  const readme = byFile.get('README.md') as Markdown;

  it('starts no line with npm, npx, bash, ./, make or node except the two Quick start commands', () => {
    const flagged = read('README.md')
      .split('\n')
      .filter((l) => /^\s*(npm|npx|bash|\.\/|make|node)/.test(l));
    expect(flagged).toEqual(['npm ci && npm run demo', 'npm ci && npm test']);
  });

  it('documents every exit code', () => {
    for (const code of Object.values(ExitCode)) {
      expect(
        readme.prose.some((p) => p.text.startsWith(`| ${code} |`)),
        `exit code ${code}`,
      ).toBe(true);
    }
  });

  it('has the sections an operator needs', () => {
    const slugs = headingSlugs(readme);
    for (const s of ['command-line', 'running-the-container', 'installing-with-helm', 'exit-codes', 'postgres-setup-least-privilege']) {
      expect(slugs, s).toContain(s);
    }
    const text = read('README.md');
    expect(text).toContain('/etc/outboxd/outboxd.yaml');
    expect(text).toContain('-p 9187:9187');
    expect(text).toContain('ALTER PUBLICATION outboxd OWNER TO outboxd');
  });
});

describe('links', () => {
  for (const md of docs) {
    it(`every relative link in ${md.file} resolves`, () => {
      for (const { line, target } of links(md)) {
        if (/^[a-z][a-z0-9+.-]*:/i.test(target)) continue;
        const [path = '', anchor] = target.split('#');
        const file = path === '' ? md.file : relative(ROOT, resolve(ROOT, dirname(md.file), decodeURIComponent(path)));
        expect(file.startsWith('..'), `${md.file}:${line}: ${target} stays in the repository`).toBe(false);
        expect(existsSync(join(ROOT, file)), `${md.file}:${line}: ${target} exists`).toBe(true);
        if (anchor === undefined) continue;
        expect(
          file.endsWith('.md') && statSync(join(ROOT, file)).isFile(),
          `${md.file}:${line}: ${target} anchors into a Markdown file`,
        ).toBe(true);
        const targetMd = byFile.get(file) ?? parseMarkdown(file);
        const anchors = file === RUNBOOK ? runbookSlugs : new Set([...headingSlugs(targetMd), ...htmlAnchors(targetMd)]);
        expect([...anchors], `${md.file}:${line}: #${anchor} is a heading of ${file}`).toContain(anchor);
      }
    });
  }

  it('every docs/runbook.md#anchor named in docs, deploy/ and src/ is a runbook heading', () => {
    const srcFiles = (dir: string): string[] =>
      readdirSync(join(ROOT, dir), { withFileTypes: true }).flatMap((e) =>
        e.isDirectory() ? srcFiles(`${dir}/${e.name}`) : e.name.endsWith('.ts') ? [`${dir}/${e.name}`] : [],
      );
    const sources = [...docs.map((d) => d.file), DASHBOARD, ALERTS, ...srcFiles('src')];
    let seen = 0;
    for (const f of sources) {
      for (const anchor of runbookAnchors(read(f))) {
        expect([...runbookSlugs], `${f}: docs/runbook.md#${anchor}`).toContain(anchor);
        seen++;
      }
    }
    expect(seen).toBeGreaterThan(10);
  });
});

describe('metric names in the docs', () => {
  /** `outboxd_…` tokens of a text; a token ending in `_` is a name prefix. */
  const tokens = (text: string) => [...new Set([...text.matchAll(/\boutboxd_[a-z0-9_]+/g)].map((m) => m[0]))];
  const known = (t: string) => series.has(t) || (t.endsWith('_') && [...registered.keys()].some((n) => n.startsWith(t)));

  it('a relay with postgres.shard puts shard="<index>" on every series it exports, an unsharded one on none', async () => {
    const samples = (text: string) => text.split('\n').filter((l) => l !== '' && !l.startsWith('#'));
    const sharded = samples(await createMetrics(undefined, { shard: 2 }).registry.metrics());
    expect(sharded.length).toBeGreaterThan(40);
    expect(sharded.filter((l) => !/[{,]shard="2"[,}]/.test(l))).toEqual([]);
    expect(samples(await createMetrics().registry.metrics()).filter((l) => /[{,]shard=/.test(l))).toEqual([]);
  });

  it('docs/metrics.md documents every registered metric in a table', () => {
    const documented = new Set(
      (byFile.get('docs/metrics.md') as Markdown).prose.flatMap((p) => {
        const m = /^\|\s*`(outboxd_[a-z0-9_]+)`\s*\|/.exec(p.text);
        return m ? [m[1] as string] : [];
      }),
    );
    expect(registered.size).toBeGreaterThan(40);
    expect(
      [...registered.keys()].filter((n) => !documented.has(n)),
      'registered but not documented',
    ).toEqual([]);
    expect(
      [...documented].filter((n) => !registered.has(n)),
      'documented but not registered',
    ).toEqual([]);
  });

  // CHANGELOG.md names retired metrics on purpose; docs/benchmarks.md belongs to the benchmarks.
  for (const md of docs.filter((d) => !['CHANGELOG.md', 'docs/benchmarks.md'].includes(d.file))) {
    it(`every metric named in ${md.file} exists`, () => {
      expect(tokens(read(md.file)).filter((t) => !known(t))).toEqual([]);
    });
  }

  it('every PromQL expression in the docs uses existing metrics and labels', () => {
    for (const md of docs.filter((d) => d.file !== 'CHANGELOG.md')) {
      for (const { line, text } of md.prose) {
        for (const code of text.matchAll(/`([^`]*\boutboxd_[^`]*[({][^`]*)`/g)) {
          expect(promqlProblems(code[1] as string), `${md.file}:${line}: ${code[1]}`).toEqual([]);
        }
      }
    }
  });
});

describe(`Grafana dashboard ${DASHBOARD}`, () => {
  interface Target {
    expr?: string;
    legendFormat?: string;
  }
  interface Panel {
    id: number;
    type: string;
    title: string;
    datasource?: { type: string; uid: string };
    gridPos?: { h: number; w: number; x: number; y: number };
    targets?: Target[];
    panels?: Panel[];
    links?: Array<{ url: string }>;
  }
  interface Variable {
    type: string;
    name: string;
    query: unknown;
    definition?: string;
    multi?: boolean;
    includeAll?: boolean;
    allValue?: string;
  }
  const dashboard = JSON.parse(read(DASHBOARD)) as {
    title: string;
    uid: string;
    panels: Panel[];
    templating: { list: Variable[] };
    links?: Array<{ url: string }>;
  };
  const panels = dashboard.panels.flatMap((p) => [p, ...(p.panels ?? [])]);
  const exprs = panels.flatMap((p) => (p.targets ?? []).map((t) => ({ panel: p.title, expr: t.expr ?? '', legend: t.legendFormat ?? '' })));

  it('has a datasource variable and job, shard and instance variables', () => {
    const vars = new Map(dashboard.templating.list.map((v) => [v.name, v]));
    expect(vars.get('datasource')).toMatchObject({ type: 'datasource', query: 'prometheus' });
    expect(vars.get('job')?.type).toBe('query');
    expect(vars.get('instance')?.type).toBe('query');
    // Any set of shards, or All: `.*` also matches the series of an unsharded relay, which have no
    // shard label (an empty value), so the dashboard works for it unchanged.
    expect(vars.get('shard')).toMatchObject({ type: 'query', multi: true, includeAll: true, allValue: '.*' });
    expect(vars.get('shard')?.definition).toMatch(/^label_values\(outboxd_build_info\{job=~"\$job"\}, shard\)$/);
    expect(vars.get('instance')?.definition).toContain('shard=~"$shard"');
    for (const p of panels.filter((x) => x.type !== 'row')) {
      expect(p.datasource, p.title).toEqual({ type: 'prometheus', uid: '${datasource}' });
      expect(p.gridPos, p.title).toBeDefined();
    }
    const ids = panels.map((p) => p.id);
    expect(new Set(ids).size, 'panel ids are unique').toBe(ids.length);
  });

  it('queries only registered metrics and labels, each filtered by $job, $shard and $instance', () => {
    expect(exprs.length).toBeGreaterThan(20);
    for (const { panel, expr } of exprs) {
      expect(promqlProblems(expr), `${panel}: ${expr}`).toEqual([]);
      for (const m of expr.matchAll(/\b(outboxd_[a-z0-9_]+)(\{[^}]*\})?/g)) {
        expect(m[2] ?? '', `${panel}: ${m[1]} is filtered by the job, shard and instance variables`).toMatch(
          /job=~"\$job", shard=~"\$shard", instance=~"\$instance"/,
        );
      }
    }
  });

  it('shows lag, progress, poison and throughput per shard, the shard in the legend', () => {
    const perShard = [
      'outboxd_replication_lag_bytes',
      'outboxd_slot_retained_wal_bytes',
      'outboxd_confirmed_lsn',
      'outboxd_poison_messages_total',
      'outboxd_messages_received_total',
      'outboxd_messages_published_total',
      'outboxd_leader',
      'outboxd_reshard_retired',
    ];
    let checked = 0;
    for (const { panel, expr, legend } of exprs.filter((e) => perShard.some((n) => e.expr.includes(n)))) {
      // Aggregations keep the shard; label_replace turns shard="2" into " (shard 2)" for the
      // legend, and leaves an unsharded relay's series (no shard label) as they are.
      for (const m of expr.matchAll(/\b(sum|max|min|avg|count)\s*(?:by\s*\(([^)]*)\))?\s*\(/g)) {
        expect(m[2]?.split(',').map((l) => l.trim()) ?? [], `${panel}: ${m[0]}`).toContain('shard');
      }
      expect(expr, panel).toMatch(/^label_replace\(.*, "shard", " \(shard \$1\)", "shard", "\(\.\+\)"\)( \* 60)?$/);
      expect(legend, panel).toContain('{{shard}}');
      checked++;
    }
    expect(checked).toBeGreaterThan(10);
  });

  it('shows throughput, lag, retained WAL, latency, errors, in-flight, leader, state, poison, broker blocked and heartbeats', () => {
    const used = new Set(exprs.flatMap(({ expr }) => [...expr.matchAll(/\boutboxd_[a-z0-9_]+/g)].map((m) => m[0])));
    for (const name of [
      'outboxd_messages_received_total',
      'outboxd_messages_published_total',
      'outboxd_replication_lag_bytes',
      'outboxd_slot_retained_wal_bytes',
      'outboxd_commit_to_ack_seconds_bucket',
      'outboxd_publish_errors_total',
      'outboxd_inflight_messages',
      'outboxd_inflight_bytes',
      'outboxd_leader',
      'outboxd_state',
      'outboxd_poison_messages_total',
      'outboxd_dead_lettered_total',
      'outboxd_broker_blocked',
      'outboxd_heartbeats_received_total',
      'outboxd_reshard_retired',
    ]) {
      expect([...used], name).toContain(name);
    }
    expect(exprs.some(({ expr }) => /histogram_quantile\(0\.99,.*outboxd_commit_to_ack_seconds_bucket/.test(expr))).toBe(true);
    expect(exprs.some(({ expr }) => /histogram_quantile\(0\.5,.*outboxd_commit_to_ack_seconds_bucket/.test(expr))).toBe(true);
  });
});

describe(`Prometheus alert rules ${ALERTS}`, () => {
  const file = parse(read(ALERTS)) as RuleFile;

  it('is a rule file whose expressions use registered metrics and labels', () => {
    expect(kindOf(file)).toBe('prometheus-rules');
    const rules = checkRules(file, ALERTS);
    expect(rules.length).toBeGreaterThan(5);
  });

  it('every alert has a severity, a summary, a description and a runbook_url to a runbook heading', () => {
    const alerts = file.groups.flatMap((g) => g.rules).filter((r) => r.alert);
    const names = alerts.map((a) => a.alert);
    expect(new Set(names).size, 'alert names are unique').toBe(names.length);
    for (const a of alerts) {
      expect(a.labels?.severity, `${a.alert} severity`).toMatch(/^(critical|warning|info)$/);
      expect(a.annotations?.summary, `${a.alert} summary`).toBeTruthy();
      expect(a.annotations?.description, `${a.alert} description`).toBeTruthy();
      const anchors = runbookAnchors(a.annotations?.runbook_url ?? '');
      expect(anchors, `${a.alert} runbook_url points into docs/runbook.md`).toHaveLength(1);
      expect([...runbookSlugs], `${a.alert} runbook_url`).toContain(anchors[0]);
    }
  });

  it('covers WAL growth, readiness, poison halts, heartbeats, publish errors, wal_status, leadership and progress', () => {
    const byName = new Map(file.groups.flatMap((g) => g.rules).map((r) => [r.alert, r.expr]));
    const expect_ = (alert: string, pattern: RegExp) => expect(byName.get(alert), alert).toMatch(pattern);
    expect_('OutboxdRetainedWalHigh', /outboxd_slot_retained_wal_bytes/);
    expect_('OutboxdRetainedWalGrowing', /deriv\(outboxd_slot_retained_wal_bytes/);
    expect_('OutboxdNotReady', /outboxd_state\{state="streaming"\}[\s\S]*outboxd_connection_up[\s\S]*\bup\{/);
    expect_('OutboxdHalted', /outboxd_state\{state="halted"\} == 1/);
    expect_('OutboxdNoHeartbeat', /outboxd_leader[\s\S]*rate\(outboxd_heartbeats_received_total\[5m\]\)\) == 0/);
    expect_('OutboxdPublishErrors', /outboxd_publish_errors_total/);
    expect_('OutboxdSlotWalAtRisk', /outboxd_slot_wal_status\{status=~"unreserved\|lost"\}/);
    expect_('OutboxdNoLeader', /outboxd_leader/);
    expect_('OutboxdNoProgress', /outboxd_stuck == 1|outboxd_stuck\) == 1/);
    expect_('OutboxdReshardUnfinished', /outboxd_reshard_retired\) == 1/);
    expect_('OutboxdShardDown', /max_over_time\(outboxd_build_info\{shard!=""\}\[1d\]\)\)\s+unless on \(job, shard\)/);
  });

  it('names the shard in every summary that names a job, and renders nothing for an unsharded relay', () => {
    for (const r of file.groups.flatMap((g) => g.rules).filter((x) => x.alert)) {
      const summary = r.annotations?.summary ?? '';
      if (r.alert === 'OutboxdAbsent' || r.alert === 'OutboxdOutboxNotPruned') continue;
      // `with` renders its body only when the label is set: "outboxd orders shard 2: …" or
      // "outboxd orders: …"; a bare {{ $labels.shard }} would leave "shard :" behind.
      expect(summary, r.alert).toMatch(/\{\{ with \$labels\.shard \}\}[^{]*\{\{ \. \}\}[^{]*\{\{ end \}\}/);
      expect(summary.replace(/\{\{ with \$labels\.shard \}\}.*?\{\{ end \}\}/g, ''), r.alert).not.toMatch(/\bshard\b/);
    }
  });

  it('docs/metrics.md lists exactly these alerts', () => {
    const inFile = new Set(file.groups.flatMap((g) => g.rules).flatMap((r) => (r.alert ? [r.alert] : [])));
    const inDocs = new Set([...read('docs/metrics.md').matchAll(/`(Outboxd[A-Za-z]+)`/g)].map((m) => m[1] as string));
    expect([...inDocs].sort()).toEqual([...inFile].sort());
  });
});
