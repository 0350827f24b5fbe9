/**
 * The tool versions pinned in scripts/versions.json (the one place they are written), found by
 * walking up from this file, so the same code works from test/ and from the bench's compiled copy.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';

export interface Pins {
  node: string;
  kafka: string;
  helm: string;
  postgres: Record<string, string>;
}

function find(): string {
  for (let dir = import.meta.dirname; ; dir = dirname(dir)) {
    const file = join(dir, 'scripts', 'versions.json');
    if (existsSync(file)) return file;
    if (dirname(dir) === dir) throw new Error(`scripts/versions.json not found above ${import.meta.dirname}`);
  }
}

export const PINS_FILE = find();
export const REPO_ROOT = dirname(dirname(PINS_FILE));
export const pins = JSON.parse(readFileSync(PINS_FILE, 'utf8')) as Pins;
