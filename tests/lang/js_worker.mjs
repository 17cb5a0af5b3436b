// A writer or reader in JavaScript, through one of four bindings (argv[2]):
//   better-sqlite3   Node, better-sqlite3 (its own SQLite; URIs compiled off)
//   bun-sqlite       Bun, bun:sqlite (its own SQLite; opens without the URI flag)
//   bun-drizzle      Bun, drizzle-orm over bun:sqlite, transactions as drizzle runs them
//   node-sqlite      Node >= 22.5, node:sqlite (its own SQLite; `allowExtension: true`)
// With the job's VFS `netfs`, the sqlite-netfs package's load() makes the extension SQLite's
// default VFS and the database is opened by its plain path; with `unix` (the native control)
// nothing is loaded. The logs are the Rust workers' (tests/common/worker.rs).
import { appendFileSync, existsSync } from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const binding = process.argv[2];
const job = Object.fromEntries(
  process.env.SQLITE_NETFS_TEST_JOB.split('\n').filter(Boolean).map((line) => {
    const at = line.indexOf('=');
    return [line.slice(0, at), line.slice(at + 1)];
  }),
);
const workerId = Number(job.worker_id);
const transactions = Number(job.transactions);
const timeoutMs = Number(job.busy_timeout_ms);
const log = (line) => appendFileSync(job.out, `${line}\n`);
const sleep = (ms) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);

function payloadSize(seq) {
  const [kind, n] = job.payload.split(':');
  if (kind === 'fixed') return Number(n);
  if (kind === 'growing') return 50 + ((seq * 97) % Math.max(Number(n), 1));
  throw new Error(`unknown payload ${job.payload}`);
}

// What the worker needs of a binding: open, and three operations.
function open() {
  const netfs = job.vfs === 'netfs';
  if (!netfs && job.vfs !== 'unix') throw new Error(`unknown vfs ${job.vfs}`);
  if (binding === 'better-sqlite3') {
    const Database = require('better-sqlite3');
    if (netfs) require('sqlite-netfs').load(new Database(':memory:'));
    const db = new Database(job.db, { timeout: timeoutMs });
    return plain(db, (sql) => db.prepare(sql).get(), () => db.inTransaction);
  }
  if (binding === 'node-sqlite') {
    const { DatabaseSync } = require('node:sqlite');
    if (netfs) require('sqlite-netfs').load(new DatabaseSync(':memory:', { allowExtension: true }));
    const db = new DatabaseSync(job.db, { timeout: timeoutMs });
    return plain(db, (sql) => db.prepare(sql).get(), () => db.isTransaction);
  }
  const { Database } = require('bun:sqlite');
  if (netfs) require('sqlite-netfs').load(new Database(':memory:'));
  const db = new Database(job.db);
  db.exec(`PRAGMA busy_timeout = ${timeoutMs}`);
  if (binding === 'bun-sqlite') return plain(db, (sql) => db.query(sql).get(), () => db.inTransaction);
  if (binding === 'bun-drizzle') return drizzled(db);
  throw new Error(`unknown binding ${binding}`);
}

function plain(db, get, inTransaction) {
  return {
    pragma: (sql) => get(sql),
    write(seq) {
      db.exec('BEGIN IMMEDIATE');
      try {
        db.exec('UPDATE counter SET v = v + 1 WHERE id = 1');
        db.prepare('INSERT INTO rows(worker, seq, payload) VALUES (?, ?, randomblob(?))')
          .run(workerId, seq, payloadSize(seq));
        db.exec('COMMIT');
      } catch (e) {
        if (inTransaction()) db.exec('ROLLBACK');
        throw e;
      }
    },
    read() {
      db.exec('BEGIN');
      try {
        const { v } = get('SELECT v FROM counter WHERE id = 1');
        const { n } = get('SELECT count(*) AS n FROM rows');
        return [v, n];
      } finally {
        if (inTransaction()) db.exec('COMMIT');
      }
    },
  };
}

// The harness's two tables as drizzle schema, written the way an ORM-based store writes:
// a transaction that bumps a parent row and inserts a child row.
function drizzled(client) {
  const { drizzle } = require('drizzle-orm/bun-sqlite');
  const { sqliteTable, integer, blob } = require('drizzle-orm/sqlite-core');
  const { eq, sql, count } = require('drizzle-orm');
  const counter = sqliteTable('counter', {
    id: integer('id').primaryKey(),
    v: integer('v').notNull(),
  });
  const rows = sqliteTable('rows', {
    id: integer('id').primaryKey(),
    worker: integer('worker'),
    seq: integer('seq'),
    payload: blob('payload'),
  });
  const db = drizzle(client);
  return {
    pragma: (text) => db.get(sql.raw(text)),
    write(seq) {
      db.transaction((tx) => {
        tx.update(counter).set({ v: sql`${counter.v} + 1` }).where(eq(counter.id, 1)).run();
        tx.insert(rows)
          .values({ worker: workerId, seq, payload: sql`randomblob(${payloadSize(seq)})` })
          .run();
      }, { behavior: 'immediate' });
    },
    read() {
      return db.transaction((tx) => {
        const [{ v }] = tx.select({ v: counter.v }).from(counter).where(eq(counter.id, 1)).all();
        const [{ n }] = tx.select({ n: count() }).from(rows).all();
        return [v, n];
      }, { behavior: 'deferred' });
    },
  };
}

// better-sqlite3 and bun:sqlite name the extended result code (`SQLITE_IOERR_...`);
// node:sqlite gives its number (`errcode`) and SQLite's message (`errstr`).
const kind = (e) => String(e.errcode !== undefined ? `SQLITE_${e.errcode}(${e.errstr})` : e.code ?? e.name ?? e.message)
  .replace(/[ ,=]/g, '_');
const isBusy = (e) => (e.errcode !== undefined ? [5, 6].includes(e.errcode & 0xff)
  : /^SQLITE_(BUSY|LOCKED)/.test(String(e.code ?? '')));
const summary = (counts) => [...counts].sort().map(([k, v]) => `${k}=${v}`).join(',');
const tally = (counts, k) => counts.set(k, (counts.get(k) ?? 0) + 1);

// The open connection with the job's journal mode asked, or null after logging the error.
function connect() {
  try {
    const db = open();
    if (job.journal_mode) db.pragma(`PRAGMA journal_mode=${job.journal_mode}`);
    return db;
  } catch (e) {
    log(`# open-error ${kind(e)}`);
    return null;
  }
}

function writer() {
  const db = connect();
  if (!db) return;
  const errors = new Map();
  let busy = 0, seq = 0, failures = 0;
  while (seq < transactions && failures < 50) {
    try {
      db.write(seq);
    } catch (e) {
      if (isBusy(e)) busy += 1;
      else {
        tally(errors, kind(e));
        failures += 1;
        sleep(20);
      }
      continue;
    }
    log(`${seq}`);
    seq += 1;
    failures = 0;
  }
  log(`# done busy=${busy} errors=${summary(errors)}`);
}

function reader() {
  const db = connect();
  if (!db) return;
  const errors = new Map();
  let checks = 0, torn = 0, busy = 0;
  const started = Date.now();
  while (!existsSync(job.stop_file) && Date.now() - started < 600_000) {
    try {
      const [v, n] = db.read();
      checks += 1;
      if (v !== n) torn += 1;
    } catch (e) {
      if (isBusy(e)) busy += 1;
      else tally(errors, kind(e));
    }
    sleep(2);
  }
  log(`# reader checks=${checks} torn=${torn} busy=${busy} errors=${summary(errors)}`);
}

({ writer, reader })[job.role]();
