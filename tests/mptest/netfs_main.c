/*
** SQLite's multi-process tester (mptest.c, from the sqlite3 source package; fetched by
** .ci/install-testbed-deps, never committed) with sqlite-netfs loaded: this main() loads
** the extension named by SQLITE_NETFS_EXTENSION, which makes `netfs` the default VFS, and
** then runs mptest's own main (compiled as mptest_main). mptest starts its clients by
** re-running this program, so every client loads the extension too.
*/
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>

int mptest_main(int argc, char **argv);

int main(int argc, char **argv){
  const char *zExt = getenv("SQLITE_NETFS_EXTENSION");
  sqlite3 *db = 0;
  char *zErr = 0;
  int rc;
  if( zExt==0 || zExt[0]==0 ){
    fprintf(stderr, "mptest-netfs: set SQLITE_NETFS_EXTENSION to libsqlite_netfs.so\n");
    return 2;
  }
  rc = sqlite3_open(":memory:", &db);
  if( rc==SQLITE_OK ) rc = sqlite3_enable_load_extension(db, 1);
  if( rc==SQLITE_OK ) rc = sqlite3_load_extension(db, zExt, 0, &zErr);
  if( rc!=SQLITE_OK ){
    fprintf(stderr, "mptest-netfs: cannot load %s: %s\n", zExt,
            zErr ? zErr : sqlite3_errmsg(db));
    sqlite3_free(zErr);
    sqlite3_close(db);
    return 2;
  }
  sqlite3_close(db);
  return mptest_main(argc, argv);
}
