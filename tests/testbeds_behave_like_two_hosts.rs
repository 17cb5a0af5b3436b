//! Smoke tests of the two-host network-filesystem testbeds themselves (tests/common/testbed/):
//! they must show the two-client behaviours that the lock protocol relies on.

mod common;
use common::testbed::*;

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};

fn create_excl(p: &std::path::Path) -> std::io::Result<fs::File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(p)
}

fn check_two_host_semantics(tb: &TwoHostTestbed) {
    let kind = tb.kind();
    let (a, b) = (tb.mount_a(), tb.mount_b());
    assert_ne!(a, b, "{kind}: the two mounts must be distinct paths");

    // 1. O_CREAT|O_EXCL is atomic across the two "hosts".
    let name = "excl-probe";
    let fa = create_excl(&a.join(name))
        .unwrap_or_else(|e| panic!("{kind}: O_EXCL create via mount A failed: {e}"));
    drop(fa);
    match create_excl(&b.join(name)) {
        Ok(_) => panic!("{kind}: O_EXCL create via mount B succeeded although A created the file"),
        Err(e) => assert_eq!(
            e.kind(),
            ErrorKind::AlreadyExists,
            "{kind}: O_EXCL create via mount B: expected AlreadyExists, got {e}"
        ),
    }
    assert!(
        tb.server_dir().join(name).exists(),
        "{kind}: file not on the server"
    );

    // 2. Bytes written + fsynced via A are read by a fresh open via B.
    let data: Vec<u8> = (0..10_000u32)
        .map(|i| (i.wrapping_mul(31) % 251) as u8)
        .collect();
    {
        let mut f = create_excl(&a.join("data"))
            .unwrap_or_else(|e| panic!("{kind}: create data via A: {e}"));
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
    }
    let got = fs::read(b.join("data")).unwrap_or_else(|e| panic!("{kind}: read via B: {e}"));
    assert_eq!(got.len(), data.len(), "{kind}: size seen via B");
    assert!(
        got == data,
        "{kind}: bytes read via B differ from those written via A"
    );

    // 3. B has now cached the old bytes; A rewrites them in place (same size) + fsync; a fresh
    //    open via B must read the new bytes (close-to-open consistency).
    let new: Vec<u8> = data.iter().map(|x| x ^ 0xA5).collect();
    {
        let mut f = OpenOptions::new().write(true).open(a.join("data")).unwrap();
        f.write_all(&new).unwrap();
        f.sync_all().unwrap();
    }
    let got = fs::read(b.join("data")).unwrap_or_else(|e| panic!("{kind}: re-read via B: {e}"));
    assert!(
        got == new,
        "{kind}: a fresh open via B did not see A's fsynced rewrite"
    );
    assert!(
        fs::read(tb.server_dir().join("data")).unwrap() == new,
        "{kind}: server copy differs from what A wrote"
    );

    remove_retrying(&a.join(name)).unwrap_or_else(|e| panic!("{kind}: unlink via A: {e}"));
    remove_retrying(&a.join("data")).unwrap_or_else(|e| panic!("{kind}: unlink data via A: {e}"));
    assert!(
        !tb.server_dir().join("data").exists(),
        "{kind}: unlink via A not on the server"
    );
}

/// smbnetfs occasionally answers EBUSY to an unlink right after the file was closed (seen in
/// about 2% of tries; a retry 1 ms later succeeded): retry for a bounded time.
fn remove_retrying(p: &std::path::Path) -> std::io::Result<()> {
    let start = std::time::Instant::now();
    loop {
        match fs::remove_file(p) {
            Err(e) if e.raw_os_error() == Some(16) && start.elapsed().as_secs() < 10 => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

#[test]
fn sshfs_testbed_two_host_semantics() {
    let Some(tb) = testbed_or_skip(TwoHostTestbed::sshfs()) else {
        return;
    };
    assert_eq!(tb.kind(), "sshfs");
    check_two_host_semantics(&tb);
}

#[test]
fn smb_testbed_two_host_semantics() {
    let Some(tb) = testbed_or_skip(TwoHostTestbed::smb()) else {
        return;
    };
    assert_eq!(tb.kind(), "smb");
    check_two_host_semantics(&tb);
}
