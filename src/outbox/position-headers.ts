/**
 * Header names for the source position. Stable: consumers may trace or dedupe on them. A module
 * of their own so that what needs only the names (the dead-letter forms, which the Kafka worker
 * threads load) does not load the mapper and, through it, the config schema: about 20 MiB per
 * worker thread.
 */
export const LSN_HEADER = 'outboxd.lsn';
export const XID_HEADER = 'outboxd.xid';
/** The header that marks a replayed message (src/replay/replay.ts), with the run's id as its value. */
export const REPLAY_HEADER = 'outboxd-replay';
