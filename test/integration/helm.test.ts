/**
 * The Helm chart (helm/outboxd): `helm lint` and `helm template` with each values file under
 * helm/outboxd/ci/, the rendered manifests parsed and checked, the rendered outboxd.yaml run
 * through the real `outboxd validate`, and values.schema.json / template guards that reject bad
 * values; `shards: N` (StatefulSets whose pod ordinal is the shard index, a ServiceMonitor per
 * shard, one PodDisruptionBudget). Needs the helm binary that scripts/install-helm.sh builds (CI
 * runs it in .ci/run).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parse, parseAllDocuments } from 'yaml';
import { interpolate } from '../../src/config/interpolate.js';
import { parseConfig } from '../../src/config/load.js';
import { defaultOf } from '../../src/config/schema.js';
import { MAIN, ROOT, helmBinary } from './support.js';

const CHART = join(ROOT, 'helm/outboxd');
const CI_VALUES = join(CHART, 'ci');
/** The pod-index label that gives a sharded pod its shard needs Kubernetes 1.28; helm renders for 1.20 unless told. */
const KUBE_1_28 = ['--kube-version', '1.28.0'];
/** The labels that select every relay pod of release `rel`. */
const SELECTOR = { 'app.kubernetes.io/name': 'outboxd', 'app.kubernetes.io/instance': 'rel' };

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

interface PodTemplate {
  metadata: { annotations: Record<string, string>; labels: Record<string, string> };
  spec: PodSpec;
}

interface DeploymentSpec {
  replicas: number;
  strategy: { type: string; rollingUpdate?: { maxSurge: number | string; maxUnavailable: number | string } };
  selector: { matchLabels: Record<string, string> };
  template: PodTemplate;
}

interface StatefulSetSpec {
  replicas: number;
  podManagementPolicy: string;
  serviceName: string;
  updateStrategy: { type: string };
  selector: { matchLabels: Record<string, string> };
  template: PodTemplate;
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
  /** What runs the relays: the Deployment, or with shards > 1 the StatefulSets. */
  get workloads(): Array<{ kind: string; name: string; spec: DeploymentSpec | StatefulSetSpec }> {
    return this.objects
      .filter((o) => o.kind === 'Deployment' || o.kind === 'StatefulSet')
      .map((o) => ({ kind: o.kind, name: o.metadata.name, spec: o.spec as unknown as DeploymentSpec | StatefulSetSpec }));
  }
  get statefulSets(): Array<{ name: string; spec: StatefulSetSpec }> {
    return this.all('StatefulSet').map((o) => ({ name: o.metadata.name, spec: o.spec as unknown as StatefulSetSpec }));
  }
  named(kind: string, name: string): K8sObject {
    const found = this.all(kind).filter((o) => o.metadata.name === name);
    expect(found, `${kind} ${name}`).toHaveLength(1);
    return found[0] as K8sObject;
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

/** Runs the real CLI's `validate` on a rendered config, with placeholder credentials (and `env`). */
function outboxdValidate(configText: string, env: NodeJS.ProcessEnv = {}): Result {
  if (!existsSync(MAIN)) throw new Error(`${MAIN} is missing: run npm run build first`);
  const file = join(tmp, `rendered-${Math.random().toString(36).slice(2)}.yaml`);
  writeFileSync(file, configText);
  const r = spawnSync(process.execPath, [MAIN, 'validate', '-c', file], {
    encoding: 'utf8',
    env: {
      OUTBOXD_SHARD_INDEX: '0',
      ...env,
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

  it('has the five ci values files', () => {
    expect(valuesFiles).toEqual([
      'default-values.yaml',
      'monitoring-values.yaml',
      'resources-values.yaml',
      'shards-values.yaml',
      'standby-values.yaml',
    ]);
  });

  describe.each(valuesFiles)('with ci/%s', (file) => {
    const values = ciValues(file);
    const shards = Number(at(values, 'shards') ?? 1);
    // Shards need the StatefulSet pod-index label (Kubernetes 1.28+); this helm renders for 1.20 unless told.
    const args = ['-f', join(CI_VALUES, file), ...(shards > 1 ? KUBE_1_28 : [])];

    it('passes helm lint --strict', () => {
      const r = helm(['lint', '--strict', CHART, ...args]);
      expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    });

    it('renders hardened relays with probes on the http port and the config mounted', () => {
      const out = template(args);
      for (const o of out.objects) expect(o.metadata.namespace, `${o.kind} namespace`).toBe('relays');
      const workloads = out.workloads;
      expect(workloads.map((w) => w.kind)).toEqual(shards > 1 ? workloads.map(() => 'StatefulSet') : ['Deployment']);
      const svc = out.named('Service', 'rel-outboxd').spec as Obj;

      for (const w of workloads) {
        const d = w.spec;
        const pod = d.template.spec;
        expect(pod.containers).toHaveLength(1);
        const c = pod.containers[0] as Container;

        // Selector matches the pod template.
        for (const [k, v] of Object.entries(d.selector.matchLabels)) expect(d.template.metadata.labels[k], w.name).toBe(v);

        // Image and args agree with the Dockerfile's CMD; the port with outboxd's default.
        const cmd = JSON.parse(/^CMD\s+(\[.*\])\s*$/m.exec(dockerfile)?.[1] ?? '[]') as string[];
        expect(c.args).toEqual(cmd);
        expect(c.ports).toEqual([{ name: 'http', containerPort: defaultOf('http.port'), protocol: 'TCP' }]);
        expect(c.image).toMatch(/^[^:@]+(:[\w.-]+|@sha256:[0-9a-f]{64})$/);

        // Probes. With shards and standbys, ready means live (a StatefulSet update waits for ready pods).
        expect(c.livenessProbe.httpGet).toEqual({ path: '/livez', port: 'http' });
        const standby = at(values, 'standby', 'enabled') === true;
        expect(c.readinessProbe.httpGet).toEqual({ path: shards > 1 && standby ? '/livez' : '/readyz', port: 'http' });
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
        expect(d.template.metadata.annotations['checksum/config']).toMatch(/^[0-9a-f]{64}$/);

        // Shutdown: Kubernetes waits longer than outboxd drains.
        const config = parse(out.configText) as Obj;
        const grace = String(at(config, 'shutdown', 'grace') ?? defaultOf('shutdown.grace'));
        const graceS = /^(\d+)s$/.exec(grace)
          ? Number.parseInt(grace, 10)
          : /^(\d+)m$/.exec(grace)
            ? Number.parseInt(grace, 10) * 60
            : Number.NaN;
        expect(pod.terminationGracePeriodSeconds).toBeGreaterThan(graceS);

        // The Service for /metrics routes to every relay pod.
        for (const [k, v] of Object.entries(svc.selector as Record<string, string>)) expect(d.template.metadata.labels[k]).toBe(v);
      }

      // Service for /metrics, not-ready pods included.
      expect(svc.type).toBe('ClusterIP');
      expect(svc.publishNotReadyAddresses).toBe(true);
      expect(svc.ports).toEqual([{ name: 'http', port: defaultOf('http.port'), targetPort: 'http', protocol: 'TCP' }]);
      expect(svc.selector).toEqual(SELECTOR);
      if (shards === 1) expect(out.deployment.selector.matchLabels).toEqual(SELECTOR);

      // Optional objects only when enabled: a ServiceMonitor per shard, one PodDisruptionBudget.
      expect(out.all('ServiceMonitor')).toHaveLength(at(values, 'serviceMonitor', 'enabled') === true ? shards : 0);
      expect(out.all('PodDisruptionBudget')).toHaveLength(at(values, 'podDisruptionBudget', 'enabled') === true ? 1 : 0);
      expect((workloads[0] as (typeof workloads)[0]).name).toBe('rel-outboxd');
    });

    it('renders a config that parses, carries the values and that `outboxd validate` accepts', () => {
      const out = template(args);
      const config = parse(out.configText) as Obj;
      expect(at(config, 'http', 'port')).toBe(defaultOf('http.port'));
      const given = at(values, 'config', 'postgres', 'url');
      expect(at(config, 'postgres', 'url')).toBe(given ?? '${OUTBOXD_PG_URL:?set OUTBOXD_PG_URL, e.g. as a key of existingSecret}');
      expect(at(config, 'sink', 'type')).toBe(at(values, 'config', 'sink', 'type') ?? 'stdout');
      expect(at(config, 'postgres', 'shard', 'count')).toBe(shards > 1 ? shards : undefined);
      for (let index = 0; index < shards; index++) {
        const r = outboxdValidate(out.configText, { OUTBOXD_SHARD_INDEX: String(index) });
        expect(r.code, `outboxd validate: ${r.stderr}`).toBe(0);
        expect(r.stdout).toMatch(/^ok: /);
      }
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

describe('helm chart helm/outboxd: shards', () => {
  const sharded = (...args: string[]) => template([...KUBE_1_28, '--set', 'shards=3', ...args]);
  type Env = NonNullable<Container['env']>;
  const shardEnv = (c: Container) => (c.env ?? []).find((e) => e.name === 'OUTBOXD_SHARD_INDEX');

  it('shards: 1 (the default) renders the unsharded chart: one Deployment, no shard anywhere', () => {
    for (const file of [undefined, ...valuesFiles.filter((f) => f !== 'shards-values.yaml')]) {
      const args = file ? ['-f', join(CI_VALUES, file)] : [];
      const plain = helm(['template', 'rel', CHART, '--namespace', 'relays', ...args]);
      const one = helm(['template', 'rel', CHART, '--namespace', 'relays', ...args, '--set', 'shards=1']);
      expect(plain.code, plain.stderr).toBe(0);
      expect(one.stdout, `${file ?? 'defaults'} with shards=1`).toBe(plain.stdout);
      const out = template(args);
      expect(out.all('StatefulSet')).toEqual([]);
      expect(out.all('Service').map((s) => s.metadata.name)).toEqual(['rel-outboxd']);
      expect(shardEnv(out.container)).toBeUndefined();
      expect(at(parse(out.configText), 'postgres', 'shard')).toBeUndefined();
      expect(out.container.readinessProbe.httpGet.path).toBe('/readyz');
    }
  });

  it('shards: 3 renders one StatefulSet of 3 pods whose ordinal is the shard index, and no Deployment', () => {
    const out = sharded();
    expect(out.all('Deployment')).toEqual([]);
    const sets = out.statefulSets;
    expect(sets.map((s) => s.name)).toEqual(['rel-outboxd']);
    const set = (sets[0] as (typeof sets)[0]).spec;
    expect(set.replicas).toBe(3);
    // Shards are independent: a halted or slow shard holds up no other's start or replacement.
    expect(set.podManagementPolicy).toBe('Parallel');
    expect(set.updateStrategy).toEqual({ type: 'RollingUpdate' });
    expect(set.serviceName).toBe(out.named('Service', 'rel-outboxd').metadata.name);
    expect(set.selector.matchLabels).toEqual({ ...SELECTOR, 'outboxd/replica': '0' });
    for (const [k, v] of Object.entries(set.selector.matchLabels)) expect(set.template.metadata.labels[k]).toBe(v);

    // The ordinal reaches the container as OUTBOXD_SHARD_INDEX, from the pod-index label.
    const pod = set.template.spec;
    const c = pod.containers[0] as Container;
    const env = c.env as Env;
    expect(env[0]).toEqual({
      name: 'OUTBOXD_SHARD_INDEX',
      valueFrom: { fieldRef: { fieldPath: "metadata.labels['apps.kubernetes.io/pod-index']" } },
    });
    // Without standbys the leader is the only instance: ready means streaming, as unsharded.
    expect(c.readinessProbe.httpGet.path).toBe('/readyz');
    expect(pod.affinity).toBeUndefined();
    expect(set.template.metadata.annotations['checksum/config']).toMatch(/^[0-9a-f]{64}$/);
    expect(template([]).checksum).not.toBe(set.template.metadata.annotations['checksum/config']);
  });

  it('the config carries postgres.shard: index from the pod, count = shards; outboxd reads pod i as shard i', () => {
    const out = sharded();
    const config = parse(out.configText) as Obj;
    expect(at(config, 'postgres', 'shard')).toEqual({ count: 3, index: '${OUTBOXD_SHARD_INDEX:?the pod-index label, Kubernetes 1.28+}' });
    // Everything else is the unsharded config: slot and publication stay the base names the relay derives from.
    const plain = parse(template([]).configText) as Obj;
    expect({ ...config, postgres: { ...(config.postgres as Obj), shard: undefined } }).toEqual({
      ...plain,
      postgres: { ...(plain.postgres as Obj), shard: undefined },
    });
    // outboxd's own ${VAR} expansion: pod 2's env gives shard 2 ("2" is an integer to outboxd's loader).
    for (const index of [0, 1, 2]) {
      const expanded = interpolate(config, { OUTBOXD_SHARD_INDEX: String(index), OUTBOXD_PG_URL: 'postgres://u@h/db' }) as Obj;
      expect(at(expanded, 'postgres', 'shard')).toEqual({ count: 3, index: String(index) });
    }
    // Without the label (Kubernetes before 1.28) the variable is empty and outboxd stops, saying why.
    expect(() => interpolate(at(config, 'postgres', 'shard'), { OUTBOXD_SHARD_INDEX: '' }, 'postgres.shard')).toThrow(
      /OUTBOXD_SHARD_INDEX is not set: the pod-index label, Kubernetes 1\.28\+/,
    );
  });

  it('`outboxd validate` accepts the sharded config for every pod', () => {
    const out = sharded('-f', join(CI_VALUES, 'shards-values.yaml'));
    for (const index of [0, 1, 2]) {
      const r = outboxdValidate(out.configText, { OUTBOXD_SHARD_INDEX: String(index) });
      expect(r.code, `shard ${index}: ${r.stderr}`).toBe(0);
    }
  });

  it('standby: each shard gets its standbys, StatefulSets with the same ordinals and the same config', () => {
    const out = sharded('--set', 'standby.enabled=true', '--set', 'standby.replicas=3');
    const sets = out.statefulSets;
    expect(sets.map((s) => s.name)).toEqual(['rel-outboxd', 'rel-outboxd-standby', 'rel-outboxd-standby-2']);
    const first = (sets[0] as (typeof sets)[0]).spec;
    sets.forEach(({ name, spec }, k) => {
      expect(spec.replicas, name).toBe(3);
      expect(spec.podManagementPolicy).toBe('Parallel');
      // The sets' selectors do not overlap: each owns its pods.
      expect(spec.selector.matchLabels).toEqual({ ...SELECTOR, 'outboxd/replica': String(k) });
      // Pod i of every set runs the same container with the same config and index i: the same
      // slot, so the same leader lock; one leads shard i, the others wait on it.
      const { labels, annotations } = spec.template.metadata;
      expect(labels['outboxd/replica']).toBe(String(k));
      expect(annotations).toEqual(first.template.metadata.annotations);
      expect(spec.template.spec).toEqual(first.template.spec);
      const c = spec.template.spec.containers[0] as Container;
      expect(shardEnv(c)?.valueFrom).toEqual({ fieldRef: { fieldPath: "metadata.labels['apps.kubernetes.io/pod-index']" } });
      // A standby never passes /readyz and a StatefulSet update waits for ready pods: ready means live.
      expect(c.readinessProbe.httpGet.path).toBe('/livez');
    });
    // Soft anti-affinity spreads every relay pod over nodes, a shard's leader and standbys included.
    expect(
      at(
        first.template.spec.affinity,
        'podAntiAffinity',
        'preferredDuringSchedulingIgnoredDuringExecution',
        '0',
        'podAffinityTerm',
        'labelSelector',
      ),
    ).toEqual({ matchLabels: SELECTOR });
    expect(out.all('ConfigMap')).toHaveLength(1);
  });

  it('one PodDisruptionBudget over every shard pod, a Service and a ServiceMonitor per shard', () => {
    const out = template(['-f', join(CI_VALUES, 'shards-values.yaml'), ...KUBE_1_28]);
    const sets = out.statefulSets;
    expect(sets.map((s) => s.name)).toEqual(['rel-outboxd', 'rel-outboxd-standby']);
    // What a pod of set k with ordinal i carries (the StatefulSet controller adds the pod-index label).
    const podLabels = (k: number, i: number) => ({
      ...(sets[k] as (typeof sets)[0]).spec.template.metadata.labels,
      'apps.kubernetes.io/pod-index': String(i),
    });
    const selects = (selector: Record<string, string>, labels: Record<string, string>) =>
      Object.entries(selector).every(([key, v]) => labels[key] === v);

    const pdb = out.one('PodDisruptionBudget');
    expect(pdb.spec).toEqual({ maxUnavailable: 1, selector: { matchLabels: SELECTOR } });
    for (const k of [0, 1]) for (const i of [0, 1, 2]) expect(selects(SELECTOR, podLabels(k, i))).toBe(true);

    // The release's Service (the StatefulSets' serviceName) has every pod; shard i's Service has
    // shard i's pods, every instance of it, and no other shard's.
    expect(out.all('Service').map((s) => s.metadata.name)).toEqual([
      'rel-outboxd',
      'rel-outboxd-shard-0',
      'rel-outboxd-shard-1',
      'rel-outboxd-shard-2',
    ]);
    for (const i of [0, 1, 2]) {
      const svc = out.named('Service', `rel-outboxd-shard-${i}`);
      const spec = svc.spec as { selector: Record<string, string>; publishNotReadyAddresses: boolean; ports: unknown };
      expect(spec.publishNotReadyAddresses).toBe(true);
      expect(spec.ports).toEqual([{ name: 'http', port: defaultOf('http.port'), targetPort: 'http', protocol: 'TCP' }]);
      for (const k of [0, 1])
        for (const j of [0, 1, 2])
          expect(selects(spec.selector, podLabels(k, j)), `shard ${i}'s Service, pod ${j} of set ${k}`).toBe(i === j);

      // Its ServiceMonitor selects that Service alone, so Prometheus names the job after it.
      const sm = out.named('ServiceMonitor', `rel-outboxd-shard-${i}`);
      expect(sm.metadata.labels?.release).toBe('kube-prometheus-stack');
      const smSelector = at(sm.spec, 'selector', 'matchLabels') as Record<string, string>;
      for (const other of out.all('Service'))
        expect(selects(smSelector, other.metadata.labels ?? {}), other.metadata.name).toBe(other === svc);
      // The job is the Service's name; the relay's own shard="<i>" label is kept, not renamed to
      // exported_shard by a target label of the same name or dropped.
      expect(at(sm.spec, 'jobLabel')).toBeUndefined();
      expect(at(sm.spec, 'targetLabels')).toBeUndefined();
      expect(at(sm.spec, 'podTargetLabels')).toBeUndefined();
      expect(at(sm.spec, 'endpoints')).toEqual([{ port: 'http', path: '/metrics', interval: '30s', scrapeTimeout: '10s' }]);
    }
    expect(out.all('ServiceMonitor')).toHaveLength(3);
  });

  it("the alerts and the dashboard in deploy/ go by job, which is one shard's with the chart's ServiceMonitors, and by shard", () => {
    interface Rule {
      alert?: string;
      expr: string;
      annotations?: { summary?: string };
    }
    const rules = (
      parse(readFileSync(join(ROOT, 'deploy/prometheus/outboxd-alerts.yaml'), 'utf8')) as { groups: Array<{ rules: Rule[] }> }
    ).groups.flatMap((g) => g.rules);
    const lag = rules.find((r) => r.alert === 'OutboxdLagHigh');
    expect(lag?.expr).toMatch(/by \(job, shard\)/);
    for (const r of rules) {
      // Every aggregation keeps job, so one shard's lag, stuck slot or poison fires on its own and
      // no healthy shard hides it; absent() over every outboxd target is the one exception. They
      // keep shard too, for Prometheus setups that scrape every shard as one job (a PodMonitor),
      // except the outbox table's age, which every shard reads alike.
      const aggregations = [...r.expr.matchAll(/\b(sum|max|min|avg|count)\s*(by\s*\(([^)]*)\))?\s*\(/g)];
      for (const m of aggregations) {
        const by = m[3]?.split(',').map((l) => l.trim()) ?? [];
        expect(by, `${r.alert}: ${m[0]}`).toContain('job');
        if (r.alert !== 'OutboxdOutboxNotPruned') expect(by, `${r.alert}: ${m[0]}`).toContain('shard');
      }
      if (r.alert !== 'OutboxdAbsent') expect(r.annotations?.summary, `${r.alert} names the job`).toContain('{{ $labels.job }}');
    }
    const dashboard = JSON.parse(readFileSync(join(ROOT, 'deploy/grafana/outboxd-dashboard.json'), 'utf8')) as {
      templating: { list: Array<{ name: string; multi?: boolean; query: unknown }> };
    };
    // One job at a time: with the chart's ServiceMonitors the dashboard shows one shard; with one
    // job for every shard, the shard variable picks them.
    expect(dashboard.templating.list.find((v) => v.name === 'job')).toMatchObject({ multi: false });
    expect(dashboard.templating.list.find((v) => v.name === 'shard')).toMatchObject({ multi: true });
    expect(
      sharded('--set', 'serviceMonitor.enabled=true')
        .all('ServiceMonitor')
        .map((s) => s.metadata.name),
    ).toEqual(['rel-outboxd-shard-0', 'rel-outboxd-shard-1', 'rel-outboxd-shard-2']);
  });

  it('refuses what would break a sharded release', () => {
    // The pod-index label: Kubernetes 1.28 or later.
    expect(rejected(['--set', 'shards=3', '--kube-version', '1.27.9'])).toMatch(/shards: 3 needs Kubernetes 1\.28 or later.*v1\.27\.9/);
    // One transactional id for every shard: they would fence each other.
    const kafka = [
      '--set',
      'config.sink.type=kafka',
      '--set',
      'config.sink.kafka.brokers[0]=b:9092',
      '--set',
      'config.sink.kafka.delivery=exactly-once',
    ];
    // A set transactional id is fine: each shard's relay gives it the shard (orders_1_of_3).
    const perShard = sharded(...kafka, '--set', 'config.sink.kafka.transactionalId=orders');
    const shardCfg = parseConfig(perShard.configText, { OUTBOXD_SHARD_INDEX: '1', OUTBOXD_PG_URL: 'postgres://u@h/db' });
    expect(shardCfg.sink.type === 'kafka' && shardCfg.sink.kafka.transactionalId).toBe('orders_1_of_3');
    // The chart sets postgres.shard itself (once the config schema knows the key, values can carry it).
    expect(rejected([...KUBE_1_28, '--set', 'shards=3', '--skip-schema-validation', '--set', 'config.postgres.shard.index=1'])).toMatch(
      /config\.postgres\.shard is set, and shards is 3/,
    );
    // StatefulSets have no Recreate; RollingUpdate (with a partition) and OnDelete pass through.
    expect(rejected([...KUBE_1_28, '--set', 'shards=3', '--set', 'updateStrategy.type=Recreate'])).toMatch(/RollingUpdate or OnDelete/);
    expect(sharded('--set', 'updateStrategy.type=OnDelete').statefulSets[0]?.spec.updateStrategy).toEqual({ type: 'OnDelete' });
    expect(sharded('--set', 'updateStrategy.rollingUpdate.partition=1').statefulSets[0]?.spec.updateStrategy).toEqual({
      rollingUpdate: { partition: 1 },
    });
    // The guards of an unsharded release hold too.
    expect(rejected([...KUBE_1_28, '--set', 'shards=3', '--set', 'terminationGracePeriodSeconds=30'])).toMatch(
      /terminationGracePeriodSeconds \(30\)/,
    );
    expect(rejected([...KUBE_1_28, '--set', 'shards=3', '--set', 'secretEnv.PGPASSWORD=password'])).toMatch(/set existingSecret/);
    // values.schema.json: an integer from 1 to 64.
    expect(rejected(['--set', 'shards=0'])).toMatch(/shards.*minimum/);
    expect(rejected(['--set', 'shards=65'])).toMatch(/shards.*maximum/);
    expect(rejected(['--set-string', 'shards=3'])).toMatch(/shards.*want integer/);
    expect(rejected(['--set', 'shards=1.5'])).toMatch(/shards/);
  });

  it('names stay short enough for pods and their controller-revision-hash label', () => {
    const long = 'x'.repeat(60);
    const out = template([
      ...KUBE_1_28,
      '--set',
      'shards=3',
      '--set',
      'standby.enabled=true',
      '--set',
      'standby.replicas=5',
      '--set',
      'serviceMonitor.enabled=true',
      '--set',
      `fullnameOverride=${long}`,
    ]);
    const names = out.statefulSets.map((s) => s.name);
    expect(new Set(names).size).toBe(5);
    // <set>-<ordinal> (pod names) and <set>-<10-char hash> (revision label values) stay within 63.
    for (const n of names) expect(n.length + 11, n).toBeLessThanOrEqual(63);
    for (const s of out.all('Service')) expect(s.metadata.name.length).toBeLessThanOrEqual(63);
  });
});
