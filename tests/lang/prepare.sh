#!/usr/bin/env bash
# Builds the extension and the packages from this repository and installs them where the
# language tests (tests/lang_extension.rs) use them; run by those tests, idempotent:
#   - target/lang/venv: a venv of Debian's /usr/bin/python3 (its sqlite3 module can load
#     extensions; SQLite 3.40.1) with the Python package installed;
#   - tests/lang/node_modules: better-sqlite3 12 (13 needs Node 22), bun, drizzle-orm and the
#     npm package, from the npm registry and packages/npm;
#   - target/lang/node22: Node 22 from the npm registry's `node` package, for node:sqlite
#     (Node >= 22.5), apart from tests/lang so that better-sqlite3 is built for the machine's Node.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash packages/build.sh
[ -x target/lang/node22/node_modules/.bin/node ] ||
    npm install --prefix target/lang/node22 --no-audit --no-fund --no-package-lock --loglevel=error node@22
venv=target/lang/venv
[ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv "$venv"
"$venv/bin/pip" install -q --no-deps --force-reinstall ./packages/python
cd tests/lang
# Copied, not linked, so the test runs what an install gives; refreshed with every build.
rm -rf node_modules/sqlite-netfs
npm install --no-audit --no-fund --no-package-lock --install-links --loglevel=error
