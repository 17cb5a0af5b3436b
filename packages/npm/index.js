'use strict';
// sqlite-netfs for JavaScript: keeps SQLite databases correct on network filesystems.
//   const netfs = require('sqlite-netfs');
//   netfs.load(db);   // better-sqlite3, bun:sqlite or node:sqlite (allowExtension: true)
// Loading registers the `netfs` VFS and makes it SQLite's default for the process (unless
// SQLITE_NETFS_DEFAULT_VFS=0), so later opens by plain path go through it; databases on local
// disks keep SQLite's own VFS.
const fs = require('fs');
const path = require('path');

function getLoadablePath() {
  const file = path.join(__dirname, 'libsqlite_netfs.so');
  if (!fs.existsSync(file)) {
    throw new Error(`${file} is missing: build it with packages/build.sh before installing sqlite-netfs`);
  }
  return file;
}

function load(db) {
  if (!db || typeof db.loadExtension !== 'function') {
    throw new TypeError('sqlite-netfs: load(db) needs a database with loadExtension() (better-sqlite3, bun:sqlite, or node:sqlite opened with allowExtension: true)');
  }
  db.loadExtension(getLoadablePath());
}

module.exports = { getLoadablePath, load };
