#![allow(dead_code)]
pub mod acceptance;
pub mod faults;
pub mod process;
pub mod scratch;
pub mod stress;
pub mod testbed;
pub mod vm;
pub mod vm_faults;
pub mod worker;

use std::path::Path;

/// The files beside database `db`, by suffix (`-journal`, `-netfs-table`, ...), sorted.
pub fn siblings(db: &Path) -> Vec<String> {
    let name = db.file_name().unwrap().to_string_lossy().into_owned();
    let mut v: Vec<String> = std::fs::read_dir(db.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&name) && n != &name)
        .map(|n| n[name.len()..].to_owned())
        .collect();
    v.sort();
    v
}
