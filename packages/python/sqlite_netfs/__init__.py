"""sqlite-netfs for Python's sqlite3 module: keeps SQLite databases correct on network
filesystems (NFS, SMB, sshfs, ...).

    import sqlite3, sqlite_netfs
    sqlite_netfs.load(sqlite3.connect(":memory:"))   # once, at start
    db = sqlite3.connect(path)                        # any database, as before

Loading registers the `netfs` VFS and makes it SQLite's default for the whole process
(set SQLITE_NETFS_DEFAULT_VFS=0 first to keep `unix` the default and select it per database
with `sqlite3.connect("file:PATH?vfs=netfs", uri=True)`). Databases on local disks keep
SQLite's own VFS. Needs a Python whose sqlite3 module allows extensions (SQLite >= 3.40.1).
"""

import os

__all__ = ["loadable_path", "load"]


def loadable_path():
    """The path of the loadable extension, for `conn.load_extension()` or SQLite's `.load`."""
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "libsqlite_netfs.so")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} is missing: this copy of sqlite-netfs was installed without its "
            "extension (build it with packages/build.sh before installing)"
        )
    return path


def load(conn):
    """Loads the extension through `conn` (any sqlite3 connection, `:memory:` will do)."""
    if not hasattr(conn, "enable_load_extension"):
        raise RuntimeError(
            "this Python's sqlite3 module was built without extension loading "
            "(enable_load_extension is missing); use a Python built with it, such as "
            "Debian's /usr/bin/python3"
        )
    conn.enable_load_extension(True)
    try:
        conn.load_extension(loadable_path())
    finally:
        conn.enable_load_extension(False)
