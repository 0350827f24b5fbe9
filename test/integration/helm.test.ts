/**
 * The Helm chart (helm/outboxd): `helm lint` and `helm template` with each values file under
 * helm/outboxd/ci/, the rendered manifests parsed and checked, the rendered outboxd.yaml run
 * through the real `outboxd validate`, and values.schema.json / template guards that reject bad
 * values. Needs the helm binary that scripts/install-helm.sh builds (CI runs it in .ci/run).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parse, parseAllDocuments } from 'yaml';
import { defaultOf } from '../../src/config/schema.js';
import { MAIN, ROOT, helmBinary } from './support.js';

const CHART = join(ROOT, 'helm/outboxd');
const CI_VALUES = join(CHART, 'ci');

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

function helm(args: string[]): Result {
  const r = spawnSync(helmBinary(), args, {
    encoding: 'utf8',
    cwd: ROOT,
    // No kube context is needed or wanted; keep helm's own dirs out of the user's home.
    env: { PATH: process.env.PATH, HOME: tmp, HELM_CACHE_HOME: join(tmp, 'cache'), HELM_CONFIG_HOME: join(tmp, 'config') },
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

type Obj = Record<string, unknown>;

interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  spec?: Obj;
  data?: Record<string, string>;
}

interface Probe {
  httpGet: { path: string; port: string | number };
  periodSeconds?: number;
  failureThreshold?: number;
}

interface Container {
  name: string;
  image: string;
  imagePullPolicy: string;
  args: string[];
  ports: Array<{ name: string; containerPort: number }>;
  env?: Array<{ name: string; value?: string; valueFrom?: { secretKeyRef?: { name: string; key: string } } }>;
  envFrom?: Array<{ secretRef?: { name: string } }>;
  livenessProbe: Probe;
  readinessProbe: Probe;
  startupProbe: Probe;
  resources?: Obj;
  securityContext: {
    runAsNonRoot?: boolean;
    runAsUser?: number;
    readOnlyRootFilesystem?: boolean;
    allowPrivilegeEscalation?: boolean;
    capabilities?: { drop?: string[] };
    seccompProfile?: { type: string };
  };
  volumeMounts: Array<{ name: string; mountPath: string; readOnly?: boolean }>;
}

interface PodSpec {
  serviceAccountName: string;
  automountServiceAccountToken: boolean;
  enableServiceLinks: boolean;
  securityContext: { runAsNonRoot?: boolean; runAsUser?: number; seccompProfile?: { type: string } };
  terminationGracePeriodSeconds: number;
  containers: Container[];
  volumes: Array<{ name: string; configMap?: { name: string }; emptyDir?: Obj; secret?: Obj }>;
  imagePullSecrets?: Array<{ name: string }>;
  nodeSelector?: Record<string, string>;
  tolerations?: Obj[];
  affinity?: Obj;
  priorityClassName?: string;
}

interface DeploymentSpec {
  replicas: number;
  strategy: { type: string; rollingUpdate?: { maxSurge: number | string; maxUnavailable: number | string } };
  selector: { matchLabels: Record<string, string> };
  template: { metadata: { annotations: Record<string, string>; labels: Record<string, string> }; spec: PodSpec };
}

class Rendered {
  constructor(readonly objects: K8sObject[]) {}
  all(kind: string): K8sObject[] {
    return this.objects.filter((o) => o.kind === kind);
  }
  one(kind: string): K8sObject {
    const found = this.all(kind);
    expect(
      found.map((o) => o.kind),
      `exactly one ${kind}`,
    ).toEqual([kind]);
    return found[0] as K8sObject;
  }
  get deployment(): DeploymentSpec {
    return this.one('Deployment').spec as unknown as DeploymentSpec;
  }
  get container(): Container {
    const c = this.deployment.template.spec.containers;
    expect(c).toHaveLength(1);
    return c[0] as Container;
  }
  get checksum(): string {
    return this.deployment.template.metadata.annotations['checksum/config'] as string;
  }
  /** The outboxd.yaml in the ConfigMap, as text. */
  get configText(): string {
    const text = this.one('ConfigMap').data?.['outboxd.yaml'];
    expect(text, 'ConfigMap data outboxd.yaml').toBeTypeOf('string');
    return text as string;
  }
}

function template(args: string[]): Rendered {
  const r = helm(['template', 'rel', CHART, '--namespace', 'relays', ...args]);
  if (r.code !== 0) throw new Error(`helm template ${args.join(' ')} failed (exit ${r.code}):\n${r.stderr}`);
  const objects = parseAllDocuments(r.stdout)
    .map((d) => {
      expect(d.errors, 'rendered YAML parses').toEqual([]);
      return d.toJS() as K8sObject | null;
    })
    .filter((o): o is K8sObject => o !== null);
  return new Rendered(objects);
}

/** helm template that must fail; returns its stderr. */
function rejected(args: string[]): string {
  const r = helm(['template', 'rel', CHART, ...args]);
  expect(r.code, `helm template ${args.join(' ')} should fail; stdout:\n${r.stdout.slice(0, 500)}`).not.toBe(0);
  return r.stderr;
}

const tmp = mkdtempSync(join(tmpdir(), 'outboxd-helm-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
const dockerfile = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');
const valuesFiles = readdirSync(CI_VALUES)
  .filter((f) => f.endsWith('-values.yaml'))
  .sort();

/** The values a ci file sets (helm merges them over values.yaml). */
function ciValues(file: string): Obj {
  return (parse(readFileSync(join(CI_VALUES, file), 'utf8')) as Obj | null) ?? {};
}

const at = (o: unknown, ...path: string[]): unknown =>
  path.reduce<unknown>((v, k) => (v !== null && typeof v === 'object' ? (v as Obj)[k] : undefined), o);

/** Runs the real CLI's `validate` on a rendered config, with placeholder credentials. */
function outboxdValidate(configText: string): Result {
  if (!existsSync(MAIN)) throw new Error(`${MAIN} is missing: run npm run build first`);
  const file = join(tmp, `rendered-${Math.random().toString(36).slice(2)}.yaml`);
  writeFileSync(file, configText);
  const r = spawnSync(process.execPath, [MAIN, 'validate', '-c', file], {
    encoding: 'utf8',
    env: {
      PATH: process.env.PATH,
      OUTBOXD_PG_URL: 'postgres://outboxd:secret@db:5432/app',
      PGPASSWORD: 'secret',
      KAFKA_PASSWORD: 'secret',
      KAFKA_BROKERS: 'b1:9093,b2:9093',
      RABBITMQ_HOST: 'rabbit.internal',
      RABBITMQ_PASSWORD: 'secret',
      LOG_LEVEL: 'debug',
    },
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Every example config (config/*.yaml, docs/examples/**), and the chart values files among them. */
function examples(): Array<{ file: string; values: boolean }> {
  const walk = (dir: string): string[] =>
    readdirSync(join(ROOT, dir), { withFileTypes: true }).flatMap((e) =>
      e.isDirectory() ? walk(`${dir}/${e.name}`) : /\.ya?ml$/.test(e.name) ? [`${dir}/${e.name}`] : [],
    );
  return [...walk('config'), ...walk('docs/examples')].sort().map((file) => ({ file, values: file.startsWith('docs/examples/helm/') }));
}

/** A values file that puts a config, as written (text, comments and all), under the chart's `config:`. */
function configValues(configText: string): string {
  const file = join(tmp, `values-${Math.random().toString(36).slice(2)}.yaml`);
  writeFileSync(file, `config:\n${configText.replace(/^(?=.)/gm, '  ')}`);
  return file;
}

/** Secret and TLS files exist only in a pod: the rendered config's paths to them point at a stand-in. */
function withStandInFiles(configText: string): string {
  const standIn = join(tmp, 'stand-in-secret');
  writeFileSync(standIn, 'not-a-real-secret\n');
  return configText.replace(/\/(?:run\/secrets|etc\/outboxd[\w-]*\/tls)\/[\w.-]+/g, standIn);
}

describe('every example config, put into the chart as the examples write it', () => {
  const rendered: string[] = [];
  afterAll(() => {
    // Helm reads values as YAML 1.1: config/kafka.yaml's bare `mode: off` arrives as false.
    expect(rendered.some((t) => /^\s+mode: false$/m.test(t))).toBe(true);
  });

  it.each(examples())('$file renders into a config that `outboxd validate` accepts', ({ file, values }) => {
    const out = template(['-f', values ? join(ROOT, file) : configValues(readFileSync(join(ROOT, file), 'utf8'))]);
    rendered.push(out.configText);
    const r = outboxdValidate(withStandInFiles(out.configText));
    expect(r.code, `outboxd validate of ${file} through the chart: ${r.stderr}`).toBe(0);
    expect(r.stdout).toMatch(/^ok: /);
  });
});

describe('helm chart helm/outboxd', () => {
  it('finds helm v3 (built by scripts/install-helm.sh)', () => {
    const r = helm(['version', '--short']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^v3\./);
  });

  it('Chart.yaml: apiVersion v2, appVersion = package.json version', () => {
    const chart = parse(readFileSync(join(CHART, 'Chart.yaml'), 'utf8')) as { apiVersion: string; name: string; appVersion: string };
    expect(chart.apiVersion).toBe('v2');
    expect(chart.name).toBe('outboxd');
    expect(chart.appVersion).toBe(pkg.version);
    const values = parse(readFileSync(join(CHART, 'values.yaml'), 'utf8')) as { http: { port: number }; service: { port: number } };
    expect(values.http.port).toBe(defaultOf('http.port'));
    expect(values.service.port).toBe(defaultOf('http.port'));
  });

  it('has the four ci values files', () => {
    expect(valuesFiles).toEqual(['default-values.yaml', 'monitoring-values.yaml', 'resources-values.yaml', 'standby-values.yaml']);
  });

  describe.each(valuesFiles)('with ci/%s', (file) => {
    const values = ciValues(file);
    const args = ['-f', join(CI_VALUES, file)];

    it('passes helm lint --strict', () => {
      const r = helm(['lint', '--strict', CHART, ...args]);
      expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    });

    it('renders a hardened Deployment with probes on the http port and the config mounted', () => {
      const out = template(args);
      const d = out.deployment;
      const pod = d.template.spec;
      const c = out.container;
      const name = out.one('Deployment').metadata.name;
      for (const o of out.objects) expect(o.metadata.namespace, `${o.kind} namespace`).toBe('relays');

      // Selector matches the pod template.
      for (const [k, v] of Object.entries(d.selector.matchLabels)) expect(d.template.metadata.labels[k]).toBe(v);

      // Image and args agree with the Dockerfile's CMD; the port with outboxd's default.
      const cmd = JSON.parse(/^CMD\s+(\[.*\])\s*$/m.exec(dockerfile)?.[1] ?? '[]') as string[];
      expect(c.args).toEqual(cmd);
      expect(c.ports).toEqual([{ name: 'http', containerPort: defaultOf('http.port'), protocol: 'TCP' }]);
      expect(c.image).toMatch(/^[^:@]+(:[\w.-]+|@sha256:[0-9a-f]{64})$/);

      // Probes.
      expect(c.livenessProbe.httpGet).toEqual({ path: '/livez', port: 'http' });
      expect(c.readinessProbe.httpGet).toEqual({ path: '/readyz', port: 'http' });
      expect(c.startupProbe.httpGet).toEqual({ path: '/livez', port: 'http' });

      // Security: the Dockerfile's numeric USER, non-root, read-only root, nothing to escalate.
      const uid = Number(/^USER\s+(\d+)/m.exec(dockerfile)?.[1]);
      expect(uid).toBeGreaterThan(0);
      expect(pod.securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: uid, seccompProfile: { type: 'RuntimeDefault' } });
      expect(c.securityContext).toMatchObject({
        runAsNonRoot: true,
        runAsUser: uid,
        readOnlyRootFilesystem: true,
        allowPrivilegeEscalation: false,
        capabilities: { drop: ['ALL'] },
        seccompProfile: { type: 'RuntimeDefault' },
      });
      expect(pod.automountServiceAccountToken).toBe(false);
      expect(pod.enableServiceLinks).toBe(false);
      expect(pod.serviceAccountName).toBe(out.one('ServiceAccount').metadata.name);

      // Config: the ConfigMap mounted read-only where CMD reads it; checksum annotation of it.
      const mount = c.volumeMounts.find((m) => m.mountPath === '/etc/outboxd');
      expect(mount?.readOnly).toBe(true);
      expect(pod.volumes.find((v) => v.name === mount?.name)?.configMap?.name).toBe(out.one('ConfigMap').metadata.name);
      expect(c.volumeMounts.find((m) => m.mountPath === '/tmp')).toBeDefined();
      expect(out.checksum).toMatch(/^[0-9a-f]{64}$/);

      // Shutdown: Kubernetes waits longer than outboxd drains.
      const config = parse(out.configText) as Obj;
      const grace = String(at(config, 'shutdown', 'grace') ?? defaultOf('shutdown.grace'));
      const graceS = /^(\d+)s$/.exec(grace)
        ? Number.parseInt(grace, 10)
        : /^(\d+)m$/.exec(grace)
          ? Number.parseInt(grace, 10) * 60
          : Number.NaN;
      expect(pod.terminationGracePeriodSeconds).toBeGreaterThan(graceS);

      // Service for /metrics, not-ready pods included.
      const svc = out.one('Service').spec as Obj;
      expect(svc.type).toBe('ClusterIP');
      expect(svc.publishNotReadyAddresses).toBe(true);
      expect(svc.ports).toEqual([{ name: 'http', port: defaultOf('http.port'), targetPort: 'http', protocol: 'TCP' }]);
      expect(svc.selector).toEqual(d.selector.matchLabels);

      // Optional objects only when enabled.
      expect(out.all('ServiceMonitor')).toHaveLength(at(values, 'serviceMonitor', 'enabled') === true ? 1 : 0);
      expect(out.all('PodDisruptionBudget')).toHaveLength(at(values, 'podDisruptionBudget', 'enabled') === true ? 1 : 0);
      expect(name).toBe('rel-outboxd');
    });

    it('renders a config that parses, carries the values and that `outboxd validate` accepts', () => {
      const out = template(args);
      const config = parse(out.configText) as Obj;
      expect(at(config, 'http', 'port')).toBe(defaultOf('http.port'));
      const given = at(values, 'config', 'postgres', 'url');
      expect(at(config, 'postgres', 'url')).toBe(given ?? '${OUTBOXD_PG_URL:?set OUTBOXD_PG_URL, e.g. as a key of existingSecret}');
      expect(at(config, 'sink', 'type')).toBe(at(values, 'config', 'sink', 'type') ?? 'stdout');
      const r = outboxdValidate(out.configText);
      expect(r.code, `outboxd validate: ${r.stderr}`).toBe(0);
      expect(r.stdout).toMatch(/^ok: /);
    });
  });

  it('defaults: one replica, Recreate, no secret, image tag = appVersion', () => {
    const out = template([]);
    expect(out.deployment.replicas).toBe(1);
    expect(out.deployment.strategy).toEqual({ type: 'Recreate' });
    expect(out.container.image).toBe(`ghcr.io/outboxd/outboxd:${pkg.version}`);
    expect(out.container.envFrom).toBeUndefined();
    expect(out.deployment.template.spec.terminationGracePeriodSeconds).toBe(45);
    expect(out.deployment.template.spec.affinity).toBeUndefined();
    expect(out.container.resources).toEqual({ requests: { cpu: '100m', memory: '128Mi' }, limits: { memory: '512Mi' } });
  });

  it('standby: two replicas, a RollingUpdate that never waits for a standby to be ready, spread over nodes', () => {
    const out = template(['-f', join(CI_VALUES, 'standby-values.yaml')]);
    expect(out.deployment.replicas).toBe(2);
    expect(out.deployment.strategy).toEqual({ type: 'RollingUpdate', rollingUpdate: { maxSurge: 1, maxUnavailable: '100%' } });
    expect(at(out.deployment.template.spec.affinity, 'podAntiAffinity', 'preferredDuringSchedulingIgnoredDuringExecution')).toHaveLength(1);
    expect(out.container.envFrom).toEqual([{ secretRef: { name: 'outboxd-db' } }]);
    expect(at(parse(out.configText), 'postgres', 'slot')).toBe('orders');
    // An explicit strategy wins.
    const custom = template(['-f', join(CI_VALUES, 'standby-values.yaml'), '--set', 'updateStrategy.type=Recreate']);
    expect(custom.deployment.strategy).toEqual({ type: 'Recreate' });
  });

  it('monitoring: ServiceMonitor and PDB when enabled, credentials from existingSecret', () => {
    const out = template(['-f', join(CI_VALUES, 'monitoring-values.yaml')]);
    const sm = out.one('ServiceMonitor');
    expect(sm.apiVersion).toBe('monitoring.coreos.com/v1');
    expect(sm.metadata.labels?.release).toBe('kube-prometheus-stack');
    expect(at(sm.spec, 'selector', 'matchLabels')).toEqual(out.deployment.selector.matchLabels);
    expect(at(sm.spec, 'endpoints')).toEqual([{ port: 'http', path: '/metrics', interval: '15s', scrapeTimeout: '10s' }]);
    // The ServiceMonitor selects the Service by labels.
    const svcLabels = out.one('Service').metadata.labels ?? {};
    for (const [k, v] of Object.entries(at(sm.spec, 'selector', 'matchLabels') as Record<string, string>)) expect(svcLabels[k]).toBe(v);
    const pdb = out.one('PodDisruptionBudget');
    expect(pdb.apiVersion).toBe('policy/v1');
    expect(pdb.spec).toEqual({ maxUnavailable: 1, selector: { matchLabels: out.deployment.selector.matchLabels } });
    expect(out.container.envFrom).toEqual([{ secretRef: { name: 'outboxd-credentials' } }]);
    expect(out.container.env).toEqual([
      { name: 'KAFKA_PASSWORD', valueFrom: { secretKeyRef: { name: 'outboxd-credentials', key: 'kafka-password' } } },
      { name: 'LOG_LEVEL', value: 'debug' },
    ]);
    expect(out.container.volumeMounts).toContainEqual({ name: 'kafka-tls', mountPath: '/etc/outboxd-tls', readOnly: true });
    // The config keeps ${VAR} references for outboxd to expand; no secret value in the manifests.
    expect(out.configText).toContain('${KAFKA_PASSWORD}');
    expect(at(parse(out.configText), 'sink', 'kafka', 'brokers')).toEqual(['kafka-0.kafka:9092', 'kafka-1.kafka:9092']);
  });

  it('resources: sizing, placement, annotations, labels and pull secrets are passed through', () => {
    const out = template(['-f', join(CI_VALUES, 'resources-values.yaml')]);
    const pod = out.deployment.template.spec;
    expect(out.container.resources).toEqual({ requests: { cpu: '250m', memory: '256Mi' }, limits: { cpu: '1', memory: '1Gi' } });
    expect(pod.nodeSelector).toEqual({ 'kubernetes.io/arch': 'amd64', workload: 'relays' });
    expect(pod.tolerations).toEqual([{ key: 'dedicated', operator: 'Equal', value: 'relays', effect: 'NoSchedule' }]);
    expect(at(pod.affinity, 'nodeAffinity', 'requiredDuringSchedulingIgnoredDuringExecution', 'nodeSelectorTerms')).toHaveLength(1);
    expect(pod.imagePullSecrets).toEqual([{ name: 'registry-credentials' }]);
    expect(pod.priorityClassName).toBe('relay-critical');
    expect(pod.terminationGracePeriodSeconds).toBe(90);
    expect(out.container.image).toBe('registry.example.com/platform/outboxd:0.1.0-rc.1');
    expect(out.container.imagePullPolicy).toBe('Always');
    const meta = out.deployment.template.metadata;
    expect(meta.annotations['example.com/team']).toBe('payments');
    expect(meta.annotations['checksum/config']).toMatch(/^[0-9a-f]{64}$/);
    expect(meta.labels.team).toBe('payments');
    // A digest pins the image.
    const digest = `sha256:${'a'.repeat(64)}`;
    expect(template(['--set', `image.digest=${digest}`]).container.image).toBe(`ghcr.io/outboxd/outboxd@${digest}`);
  });

  it('the checksum/config annotation follows the config and nothing else', () => {
    const base = template([]).checksum;
    expect(template([]).checksum).toBe(base);
    expect(template(['--set', 'podAnnotations.x=y']).checksum).toBe(base);
    expect(template(['--set', 'config.log.level=debug']).checksum).not.toBe(base);
    expect(template(['--set', 'config.postgres.slot=other']).checksum).not.toBe(base);
    expect(template(['--set', 'http.port=9300', '--set', 'service.port=9300']).checksum).not.toBe(base);
  });

  it('http.port sets the port everywhere, config.http.port included', () => {
    const out = template(['--set', 'http.port=9300']);
    expect(out.container.ports[0]?.containerPort).toBe(9300);
    expect(at(parse(out.configText), 'http', 'port')).toBe(9300);
    expect(out.container.readinessProbe.httpGet.port).toBe('http');
    expect((out.one('Service').spec as { ports: Array<{ targetPort: string }> }).ports[0]?.targetPort).toBe('http');
  });

  it('values.schema.json rejects mistyped and unknown values', () => {
    const cases: Array<[string[], RegExp]> = [
      [['--set-string', 'standby.replicas=2'], /standby\/replicas.*want integer/],
      [['--set', 'standby.replicas=two'], /standby\/replicas/],
      [['--set-string', 'http.port=9187'], /http\/port/],
      [['--set', 'image.pullPolicy=Sometimes'], /pullPolicy/],
      [['--set', 'podDisruptionBudget.maxUnavailable=lots'], /maxUnavailable/],
      [['--set', 'replicaCount=2'], /replicaCount/],
      [['--set', 'config=null'], /config/],
    ];
    for (const [args, message] of cases) expect(rejected(args), args.join(' ')).toMatch(message);
    const lint = helm(['lint', CHART, '--set-string', 'standby.replicas=2']);
    expect(lint.code).not.toBe(0);
    expect(`${lint.stdout}${lint.stderr}`).toMatch(/standby\/replicas/);
  });

  it('values.schema.json refuses a config value outboxd would refuse, at helm template and helm lint', () => {
    const cases: Array<[string[], RegExp]> = [
      [['--set', 'config.outbox.onPoison=false'], /config\/outbox\/onPoison/],
      [['-f', configValues('outbox:\n  prune:\n    mode: on\n')], /config\/outbox\/prune\/mode/],
      [['-f', configValues('postgres:\n  heartbeat:\n    prefix: yes\n')], /config\/postgres\/heartbeat\/prefix/],
      [['--set', 'config.postgres.slott=x'], /config\/postgres.*slott/],
      [['--set', 'config.pipeline.linger=5'], /config\/pipeline\/linger/],
      [['--set', 'config.sink.type=kafkaa'], /config\/sink\/type/],
    ];
    for (const [args, message] of cases) expect(rejected(args), args.join(' ')).toMatch(message);
    const lint = helm(['lint', CHART, '--set', 'config.outbox.onPoison=false']);
    expect(lint.code).not.toBe(0);
    expect(`${lint.stdout}${lint.stderr}`).toMatch(/config\/outbox\/onPoison/);
    // What outboxd takes: a bare off where the enum has off, a duration of 0.
    template(['-f', configValues('outbox:\n  prune:\n    mode: off\nsink:\n  cloudevents:\n    mode: off\n')]);
    template(['--set', 'config.pipeline.linger=0']);
  });

  it('refuses values that would break the pod at runtime', () => {
    expect(rejected(['--set', 'config.http.port=9000'])).toMatch(/config\.http\.port \(9000\) differs from http\.port \(9187\)/);
    expect(rejected(['--set', 'config.http.host=127.0.0.1'])).toMatch(/loopback/);
    expect(rejected(['--set', 'terminationGracePeriodSeconds=30'])).toMatch(/terminationGracePeriodSeconds \(30\) must be at least/);
    expect(rejected(['--set', 'config.shutdown.grace=2m'])).toMatch(/config\.shutdown\.grace \(120s\)/);
    expect(rejected(['--set', 'secretEnv.PGPASSWORD=password'])).toMatch(/set existingSecret/);
    // Equal values, a longer grace with a longer termination period, and a ${VAR} grace are fine.
    template(['--set', 'config.http.port=9187']);
    template(['--set', 'config.shutdown.grace=2m', '--set', 'terminationGracePeriodSeconds=130']);
    template(['--set', 'config.shutdown.grace=${GRACE:-30s}']);
  });
});
