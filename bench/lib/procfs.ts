import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';

/** Linux /proc readers: CPU time, peak RSS, host CPU, and which process listens on a port. */

let clockTicks: number | undefined;
function ticksPerSecond(): number {
  if (clockTicks === undefined) {
    try {
      clockTicks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clockTicks = 100;
    }
  }
  return clockTicks;
}

/** A /proc `stat` file (a process's or a thread's): its name and utime + stime in ticks; null when it is gone. */
function readStat(path: string): { comm: string; ticks: number } | null {
  let stat: string;
  try {
    stat = readFileSync(path, 'utf8');
  } catch {
    return null;
  }
  // "pid (comm) state ppid ..."; after the last ')' field 3 is f[0], so utime (14) is f[11].
  const close = stat.lastIndexOf(')');
  const f = stat.slice(close + 2).split(' ');
  return { comm: stat.slice(stat.indexOf('(') + 1, close), ticks: Number(f[11]) + Number(f[12]) };
}

/** The entries of a /proc directory, or none when it is gone. */
function entries(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/** utime + stime of a process (all its threads), in seconds; null when it is gone. */
export function cpuSeconds(pid: number): number | null {
  const stat = readStat(`/proc/${pid}/stat`);
  return stat === null ? null : stat.ticks / ticksPerSecond();
}

/** Resident set size now and its peak (VmHWM), in MiB; null when the process is gone. */
export function memory(pid: number): { rssMiB: number; peakMiB: number } | null {
  let status: string;
  try {
    status = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return null;
  }
  const kb = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? Number.NaN);
  return { rssMiB: kb('VmRSS') / 1024, peakMiB: kb('VmHWM') / 1024 };
}

/** Bytes a process has written through write(2) and its kin, sockets included (/proc/PID/io wchar); null when gone. */
export function bytesWritten(pid: number): number | null {
  try {
    const m = /^wchar:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/io`, 'utf8'));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

/** Busy and total CPU time of the whole host since boot, in seconds (from /proc/stat). */
export function hostCpu(): { busy: number; total: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '';
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal guest guest_nice; guest is inside user.
  const idle = (v[3] ?? 0) + (v[4] ?? 0);
  const total = v.slice(0, 8).reduce((a, b) => a + b, 0);
  const t = ticksPerSecond();
  return { busy: (total - idle) / t, total: total / t };
}

/** CPU seconds summed over a set of processes (missing ones count 0). */
export function cpuOf(pids: readonly number[]): number {
  let sum = 0;
  for (const p of pids) sum += cpuSeconds(p) ?? 0;
  return sum;
}

/**
 * CPU seconds of a JVM's JIT compiler threads ("C1 CompilerThread0", "C2 CompilerThread1", …,
 * their names cut to 15 characters in /proc), summed over `pids`: the work of a JVM compiling its
 * hot paths, which a broker just started does for minutes and a warm one no longer does.
 */
export function jitOf(pids: readonly number[]): number {
  let ticks = 0;
  for (const pid of pids) {
    for (const t of entries(`/proc/${pid}/task`)) {
      const stat = readStat(`/proc/${pid}/task/${t}/stat`);
      if (stat !== null && /^C\d CompilerThre/.test(stat.comm)) ticks += stat.ticks;
    }
  }
  return ticks / ticksPerSecond();
}

/**
 * The processes behind a TCP listener on this host: the socket's inode from /proc/net/tcp(6),
 * then the process holding that inode, plus its descendants (a JVM or beam are single
 * processes, but a script wrapper may lead them). Empty when the service is elsewhere.
 */
export function listenerPids(port: number): number[] {
  const inodes = new Set<string>();
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text = '';
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 10) continue;
      if (f[1]?.split(':')[1] === hexPort && f[3] === '0A') inodes.add(f[9] as string);
    }
  }
  if (inodes.size === 0) return [];
  const owners = new Set<number>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    for (const fd of entries(`/proc/${entry}/fd`)) {
      let target = '';
      try {
        target = readlinkSync(`/proc/${entry}/fd/${fd}`);
      } catch {
        continue;
      }
      const m = /^socket:\[(\d+)\]$/.exec(target);
      if (m && inodes.has(m[1] as string)) {
        owners.add(Number(entry));
        break;
      }
    }
  }
  return [...owners];
}
