/** One line of `validate --connect`: what was checked, whether it holds, and how to fix it. */
export interface Check {
  name: string;
  status: 'ok' | 'warn' | 'fail';
  detail: string;
}

/** Records one check's outcome; each group of checks (validate-*.ts) is handed this. */
export type AddCheck = (name: string, status: Check['status'], detail: string) => void;
