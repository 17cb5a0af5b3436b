#!/usr/bin/env bash
# Builds the loadable extension (target/release/libsqlite_netfs.so) and copies it into the
# npm and Python packages, which are then installed from their folders:
#   npm install ./packages/npm        pip install ./packages/python
# Needs libsqlite3-dev (the sqlite3ext.h the bindings are generated from) and libclang-dev.
set -euo pipefail
cd "$(dirname "$0")/.."
"${CARGO:-cargo}" build --release -p sqlite-netfs-ext
for dir in packages/npm packages/python/sqlite_netfs; do
    cp target/release/libsqlite_netfs.so "$dir/"
done
echo "packages/build.sh: target/release/libsqlite_netfs.so copied into packages/npm and packages/python"
