/*
** A host that reports an older SQLite to the extension: it calls the extension's entry point
** the way SQLite's loader does, with a routines table whose `libversion_number` answers
** 3.39.4 (the version number is all the extension has to judge its host by), and prints the
** result code and the error message the loader would hand back.
** Usage: old_host libsqlite_netfs.so
*/
#include <dlfcn.h>
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>

/* The system SQLite's allocator, named before sqlite3ext.h turns the names into table calls. */
static void *host_malloc(int n){ return sqlite3_malloc(n); }
static void host_free(void *p){ sqlite3_free(p); }

#include <sqlite3ext.h>

static int old_version(void){ return 3039004; }

int main(int argc, char **argv){
  static sqlite3_api_routines api;
  char *zErr = 0;
  void *lib;
  int (*init)(sqlite3*, char**, const sqlite3_api_routines*);
  int rc;
  if( argc!=2 ){ fprintf(stderr, "usage: old_host EXTENSION\n"); return 2; }
  lib = dlopen(argv[1], RTLD_NOW);
  if( lib==0 ){ fprintf(stderr, "old_host: %s\n", dlerror()); return 2; }
  init = (int(*)(sqlite3*, char**, const sqlite3_api_routines*))dlsym(lib, "sqlite3_sqlitenetfs_init");
  if( init==0 ){ fprintf(stderr, "old_host: %s\n", dlerror()); return 2; }
  memset(&api, 0, sizeof(api));
  api.libversion_number = old_version;
  api.malloc = host_malloc;
  api.free = host_free;
  rc = init(0, &zErr, &api);
  printf("rc=%d message=%s\n", rc, zErr ? zErr : "(none)");
  host_free(zErr);
  return 0;
}
