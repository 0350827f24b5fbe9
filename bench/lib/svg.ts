import type { ShapeCell } from './summary.js';

/**
 * The shape chart: rows/s while streaming (y; process start-up excluded) against rows per
 * transaction (x, log scale), one colour per payload size; outboxd with the discarding sink solid,
 * pg_recvlogical dashed. Plain SVG, no dependencies.
 */
export function shapeSvg(cells: readonly ShapeCell[], subtitle: string): string {
  const W = 760;
  const H = 440;
  const m = { left: 78, right: 190, top: 48, bottom: 56 };
  const pw = W - m.left - m.right;
  const ph = H - m.top - m.bottom;
  const txns = [...new Set(cells.map((c) => c.rowsPerTxn))].sort((a, b) => a - b);
  const payloads = [...new Set(cells.map((c) => c.payloadBytes))].sort((a, b) => a - b);
  const values = cells
    .flatMap((c) => [c.streamRowsPerSec['outboxd-discard'], c.streamRowsPerSec.pg_recvlogical])
    .filter((v): v is number => v !== undefined && Number.isFinite(v));
  const yMax = niceCeil(Math.max(1, ...values) * 1.08);
  const lx = (t: number): number => {
    const lo = Math.log10(txns[0] ?? 1);
    const hi = Math.log10(txns[txns.length - 1] ?? 10);
    return m.left + (hi === lo ? pw / 2 : ((Math.log10(t) - lo) / (hi - lo)) * pw);
  };
  const ly = (v: number): number => m.top + ph - (v / yMax) * ph;
  const colors = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e'];
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="Helvetica, Arial, sans-serif" font-size="12">`,
    '<title>outboxd throughput by payload size and rows per transaction</title>',
    `<rect width="${W}" height="${H}" fill="#fff"/>`,
    `<text x="${m.left}" y="22" font-size="15" font-weight="bold">Throughput by payload size and rows per transaction</text>`,
    `<text x="${m.left}" y="38" fill="#555">${esc(subtitle)}</text>`,
  );
  // Grid and y axis.
  const ticks = 5;
  for (let i = 0; i <= ticks; i++) {
    const v = (yMax / ticks) * i;
    const y = ly(v);
    out.push(
      `<line x1="${m.left}" y1="${y.toFixed(1)}" x2="${m.left + pw}" y2="${y.toFixed(1)}" stroke="#e5e5e5"/>`,
      `<text x="${m.left - 8}" y="${(y + 4).toFixed(1)}" text-anchor="end">${fmtK(v)}</text>`,
    );
  }
  for (const t of txns) {
    const x = lx(t);
    out.push(
      `<line x1="${x.toFixed(1)}" y1="${m.top}" x2="${x.toFixed(1)}" y2="${m.top + ph}" stroke="#f0f0f0"/>`,
      `<text x="${x.toFixed(1)}" y="${m.top + ph + 18}" text-anchor="middle">${t}</text>`,
    );
  }
  out.push(
    `<line x1="${m.left}" y1="${m.top + ph}" x2="${m.left + pw}" y2="${m.top + ph}" stroke="#333"/>`,
    `<line x1="${m.left}" y1="${m.top}" x2="${m.left}" y2="${m.top + ph}" stroke="#333"/>`,
    `<text x="${m.left + pw / 2}" y="${H - 14}" text-anchor="middle">rows per transaction (log scale)</text>`,
    `<text transform="translate(18 ${m.top + ph / 2}) rotate(-90)" text-anchor="middle">rows/s while streaming</text>`,
  );
  payloads.forEach((p, i) => {
    const color = colors[i % colors.length] as string;
    for (const [consumer, dash] of [
      ['outboxd-discard', ''],
      ['pg_recvlogical', ' stroke-dasharray="6 4"'],
    ] as const) {
      const pts = txns
        .map((t) => {
          const v = cells.find((c) => c.payloadBytes === p && c.rowsPerTxn === t)?.streamRowsPerSec[consumer];
          return v !== undefined && Number.isFinite(v) ? [lx(t), ly(v)] : null;
        })
        .filter((x): x is number[] => x !== null);
      if (pts.length === 0) continue;
      out.push(
        `<polyline fill="none" stroke="${color}" stroke-width="2"${dash} points="${pts.map(([x, y]) => `${x?.toFixed(1)},${y?.toFixed(1)}`).join(' ')}"/>`,
      );
      for (const [x, y] of pts) {
        out.push(
          consumer === 'outboxd-discard'
            ? `<circle cx="${x?.toFixed(1)}" cy="${y?.toFixed(1)}" r="3.5" fill="${color}"/>`
            : `<rect x="${((x ?? 0) - 3).toFixed(1)}" y="${((y ?? 0) - 3).toFixed(1)}" width="6" height="6" fill="#fff" stroke="${color}"/>`,
        );
      }
    }
  });
  // Legend.
  const lxl = m.left + pw + 20;
  let yy = m.top + 8;
  out.push(`<text x="${lxl}" y="${yy}" font-weight="bold">payload</text>`);
  payloads.forEach((p, i) => {
    yy += 20;
    const color = colors[i % colors.length] as string;
    out.push(
      `<line x1="${lxl}" y1="${yy - 4}" x2="${lxl + 24}" y2="${yy - 4}" stroke="${color}" stroke-width="3"/>`,
      `<text x="${lxl + 32}" y="${yy}">${p >= 1024 ? `${p / 1024} KiB` : `${p} B`}</text>`,
    );
  });
  yy += 30;
  out.push(
    `<text x="${lxl}" y="${yy}" font-weight="bold">consumer</text>`,
    `<line x1="${lxl}" y1="${yy + 16}" x2="${lxl + 24}" y2="${yy + 16}" stroke="#333" stroke-width="2"/>`,
    `<circle cx="${lxl + 12}" cy="${yy + 16}" r="3.5" fill="#333"/>`,
    `<text x="${lxl + 32}" y="${yy + 20}">outboxd, discarding sink</text>`,
    `<line x1="${lxl}" y1="${yy + 36}" x2="${lxl + 24}" y2="${yy + 36}" stroke="#333" stroke-width="2" stroke-dasharray="6 4"/>`,
    `<rect x="${lxl + 9}" y="${yy + 33}" width="6" height="6" fill="#fff" stroke="#333"/>`,
    `<text x="${lxl + 32}" y="${yy + 40}">pg_recvlogical → /dev/null</text>`,
    '</svg>',
  );
  return `${out.join('\n')}\n`;
}

function niceCeil(v: number): number {
  const p = 10 ** Math.floor(Math.log10(v));
  for (const s of [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (s * p >= v) return s * p;
  return 10 * p;
}

function fmtK(v: number): string {
  return v >= 1000 ? `${Math.round(v / 1000)}k` : String(Math.round(v));
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}
