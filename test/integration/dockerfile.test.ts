/**
 * The container image without a Docker engine: this test parses the repository's Dockerfile and
 * .dockerignore (it keeps no copy of their steps) and replays them on the local filesystem.
 *
 * - Each stage gets an empty temp directory as its root filesystem; a container path `/x` is
 *   `<stage root>/x`. WORKDIR, ENV, COPY (from the build context, or `--from` an earlier stage)
 *   and `npm …` RUN steps are replayed there; npm is the local one, `npm ci` gets
 *   `--prefer-offline` so the local npm cache serves it.
 * - The build context is the repository filtered by .dockerignore (Docker's matching rules:
 *   last match wins, `!` re-includes, a pattern also matches a path's parent directories).
 * - RUN steps that install OS packages (apt-get) cannot run here: they are skipped, but the
 *   test checks that they install tini. Any other kind of RUN step fails the test until this
 *   file learns about it.
 * - The result is started exactly as ENTRYPOINT + CMD say: `/usr/bin/tini --` is checked and
 *   dropped (no tini here; node gets the signal directly), `node` becomes process.execPath, and
 *   every absolute path argument is rewritten into the runtime stage's root. The config is
 *   "mounted" by writing it to `<runtime root>` + the path CMD names (/etc/outboxd/outboxd.yaml).
 *   The process runs with the image's ENV and WORKDIR and a bare environment, like a container.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, posix } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { defaultOf } from '../../src/config/schema.js';
import { RUNTIME_FLAGS } from '../../src/runtime.js';
import { getFreePort } from '../harness/ports.js';
import { ROOT, TestDb, until } from './support.js';
import { pgUrl } from '../harness/services.js';

// ---------------------------------------------------------------------------------------------
// Dockerfile parsing

interface Instruction {
  line: number;
  /** Upper-case keyword: FROM, RUN, COPY, … */
  cmd: string;
  /** Leading `--name=value` flags (`--from=build`, `--mount=…`). */
  flags: Map<string, string>;
  /** The rest, after the flags, as written. */
  rest: string;
  /** The exec (JSON array) form, when used. */
  json: string[] | undefined;
}

interface Stage {
  base: string;
  name: string | undefined;
  instructions: Instruction[];
}

interface Dockerfile {
  /** ARGs declared before the first FROM, with their defaults. */
  globalArgs: Map<string, string>;
  stages: Stage[];
}

/** Splits a Dockerfile into instructions: continuation lines joined, comments dropped. */
function parseInstructions(text: string): Instruction[] {
  const lines = text.split('\n');
  const out: Instruction[] = [];
  let directivesAllowed = true;
  for (let i = 0; i < lines.length; i++) {
    const first = lines[i] as string;
    const directive = /^#\s*([a-z]+)\s*=\s*(.*)$/i.exec(first);
    if (directivesAllowed && directive) {
      if (directive[1]?.toLowerCase() === 'escape' && directive[2]?.trim() !== '\\') {
        throw new Error('Dockerfile: only the default escape character is supported by this test');
      }
      continue;
    }
    directivesAllowed = false;
    if (/^\s*(#|$)/.test(first)) continue;
    const start = i + 1;
    let logical = first.replace(/\s+$/, '');
    while (logical.endsWith('\\')) {
      logical = logical.slice(0, -1);
      i++;
      // Comment lines inside a continuation are removed by the Docker parser.
      while (i < lines.length && /^\s*#/.test(lines[i] as string)) i++;
      if (i >= lines.length) break;
      logical += ` ${(lines[i] as string).trim()}`;
      logical = logical.replace(/\s+$/, '');
    }
    const m = /^\s*(\S+)\s*(.*)$/.exec(logical);
    if (!m) continue;
    let rest = m[2] ?? '';
    const flags = new Map<string, string>();
    for (;;) {
      const f = /^--([a-z-]+)(?:=(\S*))?\s*/.exec(rest);
      if (!f) break;
      flags.set(f[1] as string, f[2] ?? '');
      rest = rest.slice(f[0].length);
    }
    let json: string[] | undefined;
    if (rest.startsWith('[')) {
      try {
        const parsed: unknown = JSON.parse(rest);
        if (Array.isArray(parsed) && parsed.every((x) => typeof x === 'string')) json = parsed;
      } catch {
        json = undefined; // not JSON: Docker falls back to the shell form
      }
    }
    out.push({ line: start, cmd: (m[1] as string).toUpperCase(), flags, rest, json });
  }
  return out;
}

function parseDockerfile(text: string): Dockerfile {
  const globalArgs = new Map<string, string>();
  const stages: Stage[] = [];
  for (const ins of parseInstructions(text)) {
    if (ins.cmd === 'FROM') {
      const m = /^(\S+)(?:\s+AS\s+(\S+))?\s*$/i.exec(ins.rest);
      if (!m) throw new Error(`Dockerfile:${ins.line}: cannot parse FROM ${ins.rest}`);
      stages.push({ base: substitute(m[1] as string, globalArgs), name: m[2]?.toLowerCase(), instructions: [] });
    } else if (stages.length === 0) {
      if (ins.cmd !== 'ARG') throw new Error(`Dockerfile:${ins.line}: ${ins.cmd} before the first FROM`);
      const [k, v] = splitArg(ins.rest);
      globalArgs.set(k, v ?? '');
    } else {
      (stages.at(-1) as Stage).instructions.push(ins);
    }
  }
  return { globalArgs, stages };
}

function splitArg(text: string): [string, string | undefined] {
  const eq = text.indexOf('=');
  return eq < 0 ? [text.trim(), undefined] : [text.slice(0, eq).trim(), unquote(text.slice(eq + 1).trim())];
}

function unquote(s: string): string {
  return /^"(.*)"$/.test(s) || /^'(.*)'$/.test(s) ? s.slice(1, -1) : s;
}

/** `$VAR`, `${VAR}` and `${VAR:-default}`, as Docker expands them in FROM/COPY/WORKDIR/ENV/LABEL/USER. */
function substitute(text: string, vars: ReadonlyMap<string, string>): string {
  return text.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)/g, (_m, braced, dflt, bare) => {
    const name = (braced ?? bare) as string;
    const v = vars.get(name);
    return v !== undefined && v !== '' ? v : ((dflt as string | undefined) ?? '');
  });
}

/** `K=V K2="v 2"` (or the legacy `K V`), as ENV and LABEL write them. */
function parsePairs(text: string): Array<[string, string]> {
  const pairs: Array<[string, string]> = [];
  if (!/^[^\s=]+=/.test(text)) {
    const m = /^(\S+)\s+(.*)$/.exec(text);
    if (m) pairs.push([m[1] as string, m[2] as string]);
    return pairs;
  }
  const re = /([^\s=]+)=("(?:[^"\\]|\\.)*"|'[^']*'|\S*)/g;
  for (const m of text.matchAll(re)) pairs.push([m[1] as string, unquote(m[2] as string).replace(/\\"/g, '"')]);
  return pairs;
}

// ---------------------------------------------------------------------------------------------
// .dockerignore (moby/patternmatcher semantics)

interface IgnorePattern {
  text: string;
  exclusion: boolean;
  re: RegExp;
}

function compileIgnorePattern(pattern: string): RegExp {
  let re = '^';
  for (let i = 0; i < pattern.length; i++) {
    const ch = pattern[i] as string;
    if (ch === '*') {
      if (pattern[i + 1] === '*') {
        i++;
        if (pattern[i + 1] === '/') i++;
        re += i + 1 >= pattern.length ? '.*' : '(.*/)?';
      } else re += '[^/]*';
    } else if (ch === '?') re += '[^/]';
    else if (ch === '\\') {
      i++;
      re += `\\${pattern[i] ?? '\\'}`;
    } else if ('.+()|{}$^'.includes(ch)) re += `\\${ch}`;
    else re += ch;
  }
  return new RegExp(`${re}$`);
}

function parseDockerignore(text: string): IgnorePattern[] {
  const patterns: IgnorePattern[] = [];
  for (const raw of text.split('\n')) {
    let p = raw.trim();
    if (p === '' || p.startsWith('#')) continue;
    const exclusion = p.startsWith('!');
    if (exclusion) p = p.slice(1).trim();
    p = posix.normalize(p).replace(/^\/+/, '').replace(/\/+$/, '');
    if (p === '' || p === '.') continue;
    patterns.push({ text: p, exclusion, re: compileIgnorePattern(p) });
  }
  return patterns;
}

/** True when `path` (relative, `/`-separated) is left out of the build context. */
function ignored(path: string, patterns: readonly IgnorePattern[]): boolean {
  const parents = path.split('/').slice(0, -1);
  let matched = false;
  for (const p of patterns) {
    if (p.exclusion !== matched) continue; // only an exclusion can flip a match back, and vice versa
    let match = p.re.test(path);
    for (let i = 1; !match && i <= parents.length; i++) match = p.re.test(parents.slice(0, i).join('/'));
    if (match) matched = !p.exclusion;
  }
  return matched;
}

/** Could an `!` pattern re-include something below the excluded directory `dir`? */
function mayReinclude(dir: string, patterns: readonly IgnorePattern[]): boolean {
  const segs = dir.split('/');
  return patterns.some((p) => {
    if (!p.exclusion) return false;
    if (p.text.includes('**')) return true;
    const ps = p.text.split('/');
    return ps.length > segs.length && segs.every((s, i) => compileIgnorePattern(ps[i] as string).test(s));
  });
}

/** The build context: every file Docker would send, relative and `/`-separated. */
function buildContext(root: string, patterns: readonly IgnorePattern[]): Set<string> {
  const files = new Set<string>();
  const walk = (rel: string): void => {
    for (const entry of readdirSync(join(root, rel), { withFileTypes: true })) {
      const path = rel ? `${rel}/${entry.name}` : entry.name;
      const excluded = ignored(path, patterns);
      if (entry.isDirectory()) {
        if (!excluded || mayReinclude(path, patterns)) walk(path);
      } else if (!excluded) files.add(path);
    }
  };
  walk('');
  return files;
}

// ---------------------------------------------------------------------------------------------
// Replaying a stage

/** Stage roots made by this file, removed after all tests. */
const roots: string[] = [];

interface Replayed {
  stage: Stage;
  root: string;
  workdir: string;
  env: Map<string, string>;
  args: Map<string, string>;
  user: string | undefined;
  entrypoint: string[] | undefined;
  cmd: string[] | undefined;
  expose: string[];
  labels: Map<string, string>;
  /** RUN steps skipped because they install OS packages. */
  osPackageSteps: string[];
  /** RUN steps replayed, with their wall time. */
  ran: Array<{ command: string; ms: number }>;
}

const OS_PACKAGE_STEP = /^(apt-get|apt|dpkg|apk)\b|^rm -rf \/var\/lib\/apt\/lists\/\*$/;
const NPM_STEP = /^npm (ci|run [\w:-]+|prune)\b/;

/** The environment a replayed RUN step sees: local node/npm and npm cache, the stage's ENV. */
function buildEnv(stageEnv: ReadonlyMap<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {
    PATH: `${dirname(process.execPath)}:/usr/local/bin:/usr/bin:/bin`,
    HOME: process.env.HOME,
    npm_config_update_notifier: 'false',
  };
  // The machine's way to the registry: proxies and the CAs that sign for them.
  for (const k of ['TMPDIR', 'npm_config_cache', 'npm_config_registry', 'HTTP_PROXY', 'HTTPS_PROXY', 'NO_PROXY', 'NODE_EXTRA_CA_CERTS']) {
    for (const name of [k, k.toLowerCase()]) if (process.env[name] !== undefined) env[name] = process.env[name];
  }
  for (const [k, v] of stageEnv) env[k] = v;
  return env;
}

function exec(file: string, args: string[], cwd: string, env: NodeJS.ProcessEnv): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (d: Buffer) => {
      output += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      output += d.toString();
    });
    child.once('error', reject);
    child.once('exit', (code) => resolve({ code, output }));
  });
}

/** Copies context files under `src` (a file or a directory, relative) to `dest` (absolute, in a stage root). */
function copyFromContext(context: ReadonlySet<string>, src: string, dest: string, intoDir: boolean): number {
  if (context.has(src)) {
    const target = intoDir ? join(dest, posix.basename(src)) : dest;
    mkdirSync(dirname(target), { recursive: true });
    cpSync(join(ROOT, src), target);
    return 1;
  }
  let n = 0;
  for (const f of context) {
    if (!f.startsWith(`${src}/`)) continue;
    const target = join(dest, f.slice(src.length + 1));
    mkdirSync(dirname(target), { recursive: true });
    cpSync(join(ROOT, f), target);
    n++;
  }
  return n;
}

async function replayStage(
  stage: Stage,
  df: Dockerfile,
  done: ReadonlyMap<string, Replayed>,
  context: ReadonlySet<string>,
): Promise<Replayed> {
  const root = mkdtempSync(join(tmpdir(), `outboxd-image-${stage.name ?? 'stage'}-`));
  roots.push(root);
  const r: Replayed = {
    stage,
    root,
    workdir: '/',
    env: new Map(),
    args: new Map(df.globalArgs),
    user: undefined,
    entrypoint: undefined,
    cmd: undefined,
    expose: [],
    labels: new Map(),
    osPackageSteps: [],
    ran: [],
  };
  const inRoot = (p: string) => join(root, posix.resolve(r.workdir, p));
  const vars = () => new Map([...r.args, ...r.env]);
  for (const ins of stage.instructions) {
    const where = `Dockerfile:${ins.line}`;
    switch (ins.cmd) {
      case 'ARG': {
        const [k, v] = splitArg(ins.rest);
        r.args.set(k, v ?? df.globalArgs.get(k) ?? '');
        break;
      }
      case 'ENV':
        for (const [k, v] of parsePairs(ins.rest)) r.env.set(k, substitute(v, vars()));
        break;
      case 'LABEL':
        for (const [k, v] of parsePairs(ins.rest)) r.labels.set(k, substitute(v, vars()));
        break;
      case 'WORKDIR':
        r.workdir = posix.resolve(r.workdir, substitute(ins.rest.trim(), vars()));
        mkdirSync(join(root, r.workdir), { recursive: true });
        break;
      case 'COPY': {
        const parts = ins.json ?? ins.rest.trim().split(/\s+/);
        const [dest, ...srcs] = parts.map((p) => substitute(p, vars())).reverse() as [string, ...string[]];
        srcs.reverse();
        const intoDir = dest.endsWith('/') || srcs.length > 1 || dest === '.';
        const destAbs = inRoot(dest);
        const from = ins.flags.get('from');
        if (from !== undefined) {
          const source = done.get(from.toLowerCase());
          if (!source) throw new Error(`${where}: COPY --from=${from}: no such earlier stage`);
          for (const src of srcs) {
            const abs = join(source.root, posix.resolve(source.workdir, src));
            if (!existsSync(abs)) throw new Error(`${where}: COPY --from=${from} ${src}: not found in that stage`);
            const target = statSync(abs).isFile() && intoDir ? join(destAbs, posix.basename(src)) : destAbs;
            mkdirSync(dirname(target), { recursive: true });
            cpSync(abs, target, { recursive: true });
          }
        } else {
          for (const src of srcs) {
            const clean = posix
              .normalize(src)
              .replace(/^\.?\/+/, '')
              .replace(/\/+$/, '');
            const re = compileIgnorePattern(clean);
            const depth = clean.split('/').length;
            // A wildcard source matches context entries (files, or directories by prefix) at its depth.
            const matches = new Set<string>();
            for (const f of context) {
              const head = f.split('/').slice(0, depth).join('/');
              if (re.test(head)) matches.add(head);
            }
            if (matches.size === 0) throw new Error(`${where}: COPY ${src}: not in the build context (see .dockerignore)`);
            const many = intoDir || matches.size > 1 || /[*?[]/.test(clean);
            for (const m of matches) copyFromContext(context, m, destAbs, many && context.has(m));
          }
        }
        break;
      }
      case 'RUN': {
        const command = ins.json ? ins.json.join(' ') : ins.rest.trim();
        const steps = command.split(/\s*&&\s*/);
        if (steps.every((s) => OS_PACKAGE_STEP.test(s))) {
          r.osPackageSteps.push(command);
          break;
        }
        if (!steps.every((s) => NPM_STEP.test(s))) {
          throw new Error(`${where}: RUN ${command}: neither an OS package install nor an npm step; teach dockerfile.test.ts about it`);
        }
        const local = steps.map((s) => s.replace(/^npm ci\b/, 'npm ci --prefer-offline')).join(' && ');
        const t0 = performance.now();
        const res = await exec('sh', ['-c', local], join(root, r.workdir), buildEnv(r.env));
        if (res.code !== 0) throw new Error(`${where}: RUN ${command} failed (exit ${res.code}):\n${res.output.slice(-3000)}`);
        r.ran.push({ command, ms: Math.round(performance.now() - t0) });
        break;
      }
      case 'USER':
        r.user = substitute(ins.rest.trim(), vars());
        break;
      case 'EXPOSE':
        r.expose.push(...ins.rest.trim().split(/\s+/));
        break;
      case 'ENTRYPOINT':
        if (!ins.json) throw new Error(`${where}: ENTRYPOINT must use the exec (JSON) form, or signals never reach outboxd`);
        r.entrypoint = ins.json;
        r.cmd = undefined; // Docker resets CMD when ENTRYPOINT is set
        break;
      case 'CMD':
        if (!ins.json) throw new Error(`${where}: CMD must use the exec (JSON) form`);
        r.cmd = ins.json;
        break;
      case 'HEALTHCHECK':
      case 'STOPSIGNAL':
        break;
      default:
        throw new Error(`${where}: ${ins.cmd} is not replayed by dockerfile.test.ts; teach it or avoid the instruction`);
    }
  }
  return r;
}

/** Replays every stage in order (each one can COPY --from the earlier ones). */
async function replayAll(df: Dockerfile, context: ReadonlySet<string>): Promise<Replayed[]> {
  const done = new Map<string, Replayed>();
  const all: Replayed[] = [];
  for (const [i, stage] of df.stages.entries()) {
    const r = await replayStage(stage, df, done, context);
    done.set(stage.name ?? String(i), r);
    done.set(String(i), r);
    all.push(r);
  }
  return all;
}

// ---------------------------------------------------------------------------------------------
// The tests

const dockerfile = parseDockerfile(readFileSync(join(ROOT, 'Dockerfile'), 'utf8'));
const ignore = parseDockerignore(readFileSync(join(ROOT, '.dockerignore'), 'utf8'));
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
  version: string;
  bin: Record<string, string>;
  engines: { node: string };
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
};
const runtimeStage = dockerfile.stages.at(-1) as Stage;
const final = (cmd: string) => runtimeStage.instructions.filter((i) => i.cmd === cmd);

const children: ChildProcess[] = [];
afterAll(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  for (const r of roots) rmSync(r, { recursive: true, force: true });
});

describe('Dockerfile', () => {
  it('is multi-stage on a Node LTS slim base, with OCI labels, NODE_ENV and the metrics port', () => {
    expect(dockerfile.stages.length).toBeGreaterThanOrEqual(2);
    for (const s of dockerfile.stages) {
      const m = /^node:(\d+)(?:\.[\d.]+)?-(bookworm|trixie)-slim(@sha256:[0-9a-f]{64})?$/.exec(s.base);
      expect(m, `FROM ${s.base}: want node:<LTS>-<debian>-slim`).not.toBeNull();
      const major = Number(m?.[1]);
      expect(major % 2, 'an even (LTS) Node major').toBe(0);
      expect(major, 'package.json engines.node').toBeGreaterThanOrEqual(Number(/\d+/.exec(pkg.engines.node)?.[0]));
    }
    const labels = new Map<string, string>();
    for (const ins of final('LABEL')) for (const [k, v] of parsePairs(ins.rest)) labels.set(k, v);
    for (const k of ['title', 'description', 'source', 'licenses', 'version']) {
      expect(labels.get(`org.opencontainers.image.${k}`), `label org.opencontainers.image.${k}`).toBeTruthy();
    }
    expect(labels.get('org.opencontainers.image.licenses')).toBe('Apache-2.0');
    expect(labels.get('org.opencontainers.image.version')).toMatch(/^\$\{?VERSION\}?$/);
    expect(
      final('ARG').some((a) => splitArg(a.rest)[0] === 'VERSION'),
      'ARG VERSION in the runtime stage',
    ).toBe(true);
    expect(final('ENV').flatMap((e) => parsePairs(e.rest))).toContainEqual(['NODE_ENV', 'production']);
    expect(final('EXPOSE').flatMap((e) => e.rest.trim().split(/\s+/))).toContain(String(defaultOf('http.port')));
  });

  it('runs as a numeric non-root user, under tini, starting node on dist/main.js (not npm)', () => {
    const users = final('USER');
    expect(users.length, 'a USER in the runtime stage').toBeGreaterThan(0);
    const user = (users.at(-1) as Instruction).rest.trim();
    expect(user).toMatch(/^\d+(:\d+)?$/);
    for (const id of user.split(':')) expect(Number(id)).toBeGreaterThan(0);
    // The user must be set after the last RUN, so the image's own steps ran as root and the app can't modify them.
    const lastRun = Math.max(...final('RUN').map((r) => r.line));
    expect((users.at(-1) as Instruction).line).toBeGreaterThan(lastRun);

    const osSteps = final('RUN').filter((r) => r.rest.split(/\s*&&\s*/).every((s) => OS_PACKAGE_STEP.test(s.trim())));
    expect(
      osSteps.some((r) => /\binstall\b.*\btini\b/.test(r.rest)),
      'an apt-get install of tini',
    ).toBe(true);

    const entrypoint = final('ENTRYPOINT').at(-1)?.json;
    const cmd = final('CMD').at(-1)?.json;
    expect(entrypoint).toBeDefined();
    expect(cmd).toBeDefined();
    expect(entrypoint?.[0]).toBe('/usr/bin/tini');
    const dashes = entrypoint?.indexOf('--') ?? -1;
    expect(dashes, 'tini -- …').toBeGreaterThan(0);
    const program = entrypoint?.slice(dashes + 1) ?? [];
    expect(program[0]).toBe('node');
    // The program, with no node flags: outboxd brings its own (src/runtime.ts), one place for them.
    expect(program.slice(1)).toEqual(['/app/dist/main.js']);
    expect(pkg.bin.outboxd).toBe('dist/main.js');
    expect([...(entrypoint ?? []), ...(cmd ?? [])].some((a) => /\bnpm\b|\bnpx\b/.test(a))).toBe(false);
    expect(cmd?.slice(0, 2)).toEqual(['run', '-c']);
    expect(cmd?.[2]).toBe('/etc/outboxd/outboxd.yaml');
  });

  it('.dockerignore keeps the build context to what the build copies', () => {
    const context = buildContext(ROOT, ignore);
    const tops = new Set([...context].map((f) => f.split('/')[0]));
    for (const banned of ['node_modules', 'dist', '.git', 'test', 'helm', '.ci', 'coverage', 'config', 'docs']) {
      expect(tops.has(banned), `${banned}/ must not be in the build context`).toBe(false);
    }
    expect([...context].filter((f) => /(^|\/)\.env/.test(f))).toEqual([]);
    expect(context).toContain('package.json');
    expect(context).toContain('package-lock.json');
    expect(context).toContain('src/main.ts');
    // Matching rules themselves (last match wins, `!` re-includes, parents match).
    const rules = parseDockerignore('*\n!src\nsrc/**/*.md\n!keep/**\n**/.DS_Store\n');
    expect(ignored('src/a/b.ts', rules)).toBe(false);
    expect(ignored('src/a/README.md', rules)).toBe(true);
    expect(ignored('node_modules/x/index.js', rules)).toBe(true);
    expect(ignored('keep/deep/file', rules)).toBe(false);
    expect(ignored('src/.DS_Store', rules)).toBe(true);
  });

  it('builds and runs outboxd from the replayed image: ready on /readyz, relays a row to stdout, SIGTERM exits 0', async () => {
    const t0 = performance.now();
    const context = buildContext(ROOT, ignore);
    const stages = await replayAll(dockerfile, context);
    const image = stages.at(-1) as Replayed;
    const build = stages[0] as Replayed;
    const timings = stages.flatMap((s) => s.ran.map((r) => `${s.stage.name ?? '?'}: ${r.command} ${(r.ms / 1000).toFixed(1)}s`));

    // The build stage ran npm ci and the build; the runtime stage installed production deps only.
    expect(build.ran.map((r) => r.command).join('\n')).toMatch(/npm ci/);
    expect(build.ran.map((r) => r.command).join('\n')).toMatch(/npm run build/);
    expect(image.osPackageSteps.join('\n')).toMatch(/tini/);
    const app = join(image.root, image.workdir);
    expect(image.workdir).toBe('/app');
    expect(readdirSync(app).sort()).toEqual(['dist', 'node_modules', 'package-lock.json', 'package.json']);
    expect(existsSync(join(app, 'dist/main.js'))).toBe(true);
    for (const dep of Object.keys(pkg.dependencies)) expect(existsSync(join(app, 'node_modules', dep)), `dependency ${dep}`).toBe(true);
    // A dev dependency that a production dependency also needs (the lock file does not mark it
    // dev-only: @types/node, through aws-msk-iam-sasl-signer-js) belongs in the image.
    const lock = JSON.parse(readFileSync(join(ROOT, 'package-lock.json'), 'utf8')) as { packages: Record<string, { dev?: boolean }> };
    for (const dev of Object.keys(pkg.devDependencies).filter((d) => lock.packages[`node_modules/${d}`]?.dev === true))
      expect(existsSync(join(app, 'node_modules', dev)), `dev dependency ${dev}`).toBe(false);
    // Nothing of the image lives outside /app, except the config mounted below.
    expect(readdirSync(image.root)).toEqual(['app']);

    // ENTRYPOINT + CMD, as the container runs them.
    const entrypoint = image.entrypoint as string[];
    const cmd = image.cmd as string[];
    const program = entrypoint.slice(entrypoint.indexOf('--') + 1);
    const toHost = (arg: string) => (arg.startsWith('/') ? join(image.root, arg) : arg);
    const argv = (extra: string[]) => [...program.slice(1), ...extra].map(toHost);
    const containerEnv = (more: Record<string, string>): NodeJS.ProcessEnv => ({
      PATH: '/usr/local/bin:/usr/bin:/bin',
      HOME: '/',
      ...Object.fromEntries(image.env),
      ...more,
    });

    const version = await exec(process.execPath, argv(['--version']), join(image.root, image.workdir), containerEnv({}));
    expect(version.output.trim()).toBe(pkg.version);

    const db = await new TestDb(await pgUrl(15)).create();
    try {
      const port = await getFreePort();
      const configPath = cmd[cmd.indexOf('-c') + 1] as string;
      mkdirSync(dirname(toHost(configPath)), { recursive: true });
      writeFileSync(
        toHost(configPath),
        `postgres:
  url: \${OUTBOXD_PG_URL}
  slot: ${db.slot}
  statusInterval: 1s
  heartbeat:
    interval: 2s
  lagPollInterval: 1s
outbox:
  tables:
    - name: public.outbox
sink:
  type: stdout
http:
  host: 127.0.0.1
  port: ${port}
shutdown:
  grace: 10s
`,
      );
      const child = spawn(process.execPath, argv(cmd), {
        cwd: join(image.root, image.workdir),
        env: containerEnv({ OUTBOXD_PG_URL: db.url }),
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      children.push(child);
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => {
        stdout += d.toString();
      });
      child.stderr.on('data', (d: Buffer) => {
        stderr += d.toString();
      });
      const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
      const get = async (path: string) => {
        const res = await fetch(`http://127.0.0.1:${port}${path}`).catch(() => undefined);
        return res ? { status: res.status, body: await res.text() } : { status: 0, body: '' };
      };
      await until(
        `/readyz of the replayed image (stderr: ${stderr.slice(-500)})`,
        async () => {
          if (child.exitCode !== null) throw new Error(`outboxd exited with ${child.exitCode}: ${stderr.slice(-2000)}`);
          return (await get('/readyz')).status === 200;
        },
        60_000,
      );
      expect((await get('/livez')).status).toBe(200);
      expect((await get('/metrics')).body).toContain('outboxd_');
      // Started without node flags, it runs with outboxd's own (src/runtime.ts), in the same pid.
      const cmdline = readFileSync(`/proc/${child.pid}/cmdline`, 'utf8').split('\0');
      for (const flag of RUNTIME_FLAGS) expect(cmdline, 'the node flags outboxd brings').toContain(flag);
      expect(readFileSync(`/proc/${child.pid}/environ`, 'utf8').split('\0')).toContain('MALLOC_ARENA_MAX=2');

      const { rows } = await db.client.query<{ id: string }>(
        `INSERT INTO public.outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', 'o-1', 'Created', '{"n":1}') RETURNING id::text`,
      );
      const id = rows[0]?.id as string;
      await until('the row on stdout', async () => stdout.includes(id), 30_000);

      child.kill('SIGTERM');
      const code = await exited;
      expect(code, `exit code after SIGTERM (stderr: ${stderr.slice(-1000)})`).toBe(0);
      const logs = stderr
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as { level?: string });
      expect(logs.length).toBeGreaterThan(0);
      expect(logs.filter((l) => l.level === 'error' || l.level === 'fatal')).toEqual([]);
    } finally {
      await db.drop();
    }
    process.stdout.write(`[dockerfile] replay + run in ${((performance.now() - t0) / 1000).toFixed(1)} s (${timings.join('; ')})\n`);
  });
});
