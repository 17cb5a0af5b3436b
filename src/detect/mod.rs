//! Is a database path on a local or a network filesystem?
//!
//! This module owns that decision. [`classify`] (Linux) and [`classify_macos`] are pure
//! functions over small tables, so every rule is unit-tested without a real NFS server;
//! [`probe`] gathers their inputs (`statfs`, `/proc/self/mountinfo`) for a path.
//!
//! Rule for unknowns: a filesystem we cannot identify, including any FUSE filesystem not in the
//! tables, is [`FsClass::Unknown`], and callers treat `Unknown` like `Network`. Wrongly using
//! network mode costs speed; wrongly using local mode corrupts databases. For the same reason,
//! when the statfs magic and the mountinfo type disagree, a network verdict from either wins.
//!
//! May use `crate::sys` (statfs) and std; nothing else in the crate.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

pub mod mode;

/// Where a filesystem keeps its data, as far as locking and caching are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FsClass {
    /// Only this host's kernel reaches the data: POSIX locks and the page cache are coherent.
    Local,
    /// Other hosts (or a VM host) reach the data through their own caches and lock tables.
    Network,
    /// Could not tell; callers handle it like `Network`.
    Unknown,
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    /// Device number (major, minor), as `st_dev` of files on this mount usually reports it.
    pub dev: (u32, u32),
    pub fstype: String,
    pub source: String,
    /// The path inside the source filesystem that is mounted here: for a bind mount of a
    /// single file, that file.
    pub root: PathBuf,
    /// The mount's own options, then the filesystem's (`rw,relatime,vers=3,nolock,...`), as
    /// one comma-separated list.
    pub options: String,
}

/// Parse /proc/self/mountinfo (proc(5)):
/// `id parent major:minor root mount_point options [optional fields...] - fstype source super_options`.
///
/// Octal escapes the kernel uses for space, tab, newline and backslash (`\040` `\011` `\012`
/// `\134`) are decoded in the mount point and the source. Malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_mountinfo_line).collect()
}

fn parse_mountinfo_line(line: &str) -> Option<MountEntry> {
    // The kernel separates fields by single spaces and escapes spaces inside them, so splitting
    // on ' ' keeps an empty field (such as an empty source) in its place.
    let mut fields = line.split(' ');
    let _mount_id: u32 = fields.next()?.parse().ok()?;
    let _parent_id: u32 = fields.next()?.parse().ok()?;
    let dev = parse_dev(fields.next()?)?;
    let root = fields.next()?;
    let mount_point = fields.next()?;
    let mount_options = fields.next()?;
    // Zero or more optional fields ("shared:1", "master:3", ...) end at a lone "-".
    fields.find(|field| *field == "-")?;
    let fstype = fields.next()?;
    let source = fields.next()?;
    let super_options = fields.next().unwrap_or("");
    if !mount_point.starts_with('/') || fstype.is_empty() {
        return None;
    }
    Some(MountEntry {
        mount_point: PathBuf::from(OsString::from_vec(unescape_octal(mount_point))),
        dev,
        fstype: fstype.to_owned(),
        source: String::from_utf8_lossy(&unescape_octal(source)).into_owned(),
        root: PathBuf::from(OsString::from_vec(unescape_octal(root))),
        options: format!("{mount_options},{super_options}"),
    })
}

fn parse_dev(field: &str) -> Option<(u32, u32)> {
    let (major, minor) = field.split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Decode `\ooo` (exactly three octal digits) into the byte it names; other bytes pass through.
fn unescape_octal(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'\\')
            .then(|| bytes.get(i + 1..i + 4))
            .flatten()
            .and_then(octal_byte);
        match escaped {
            Some(byte) => {
                decoded.push(byte);
                i += 4;
            }
            None => {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
    }
    decoded
}

fn octal_byte(digits: &[u8]) -> Option<u8> {
    let value = digits.iter().try_fold(0u16, |value, &digit| {
        matches!(digit, b'0'..=b'7').then(|| value * 8 + u16::from(digit - b'0'))
    })?;
    u8::try_from(value).ok()
}

/// The mount holding `path`: prefer the LAST entry whose dev equals `dev` (btrfs subvolumes can
/// make st_dev differ from mountinfo, so then fall back to the LAST entry with the longest
/// mount_point that is a path-component prefix of `path`).
///
/// Later lines of mountinfo are mounted on top of earlier ones, hence "last". `path` should be
/// absolute and free of symlinks for the prefix fallback to be meaningful.
pub fn find_mount<'a>(
    entries: &'a [MountEntry],
    path: &Path,
    dev: Option<(u32, u32)>,
) -> Option<&'a MountEntry> {
    dev.and_then(|dev| entries.iter().rev().find(|entry| entry.dev == dev))
        .or_else(|| {
            entries
                .iter()
                // Path::starts_with compares whole components: "/a/bc" does not start with "/a/b".
                .filter(|entry| path.starts_with(&entry.mount_point))
                // max_by_key returns the last of equal maxima: the mount on top.
                .max_by_key(|entry| entry.mount_point.components().count())
        })
}

/// One row of a classification table.
struct Rule {
    /// The filesystem's name, also the first word of the reason.
    name: &'static str,
    class: FsClass,
    why: &'static str,
}

const fn network(name: &'static str, why: &'static str) -> Rule {
    Rule {
        name,
        class: FsClass::Network,
        why,
    }
}

const fn local(name: &'static str, why: &'static str) -> Rule {
    Rule {
        name,
        class: FsClass::Local,
        why,
    }
}

// Reasons shared by many rows, so that similar filesystems are explained alike.
const REMOTE_SERVER: &str =
    "network filesystem; client caches and locks are not coherent across hosts";
const CLUSTER: &str = "cluster filesystem; other nodes write to it through their own caches";
const VM_HOST_SHARE: &str = "folder shared from a VM host, which caches and locks it separately";
const REMOTE_FUSE: &str = "FUSE client for remote storage; no cross-host locking";
const LOCAL_DISK: &str = "local disk";
const IN_MEMORY: &str = "in memory on this host";
const LOCAL_LAYERS: &str = "layers of local directories on this host";
const LOCAL_FUSE: &str = "FUSE filesystem over local storage";

/// Linux statfs `f_type` of every FUSE filesystem: it says FUSE, not where the data is.
const FUSE_MAGIC: u64 = 0x6573_5546;

/// Linux statfs `f_type` magic numbers (linux/magic.h and the out-of-tree filesystems' sources).
const MAGIC_RULES: &[(u64, Rule)] = &[
    (0x6969, network("nfs", REMOTE_SERVER)),
    (0x517B, network("smbfs", REMOTE_SERVER)),
    (0xFF53_4D42, network("cifs", REMOTE_SERVER)),
    (0xFE53_4D42, network("smb2", REMOTE_SERVER)),
    (0x564C, network("ncpfs", REMOTE_SERVER)),
    (0x5346_414F, network("afs", REMOTE_SERVER)),
    (0x6B41_4653, network("kafs", REMOTE_SERVER)),
    (0x7375_7245, network("coda", REMOTE_SERVER)),
    (0x0102_1997, network("9p", VM_HOST_SHARE)),
    (0x786F_4256, network("vboxsf", VM_HOST_SHARE)),
    (0x00C3_6400, network("ceph", CLUSTER)),
    (0x0BD0_0BD0, network("lustre", CLUSTER)),
    (0x4750_4653, network("gpfs", CLUSTER)),
    (0x0116_1970, network("gfs2", CLUSTER)),
    (0x7461_636F, network("ocfs2", CLUSTER)),
    (0x1983_0326, network("beegfs", CLUSTER)),
    (0x2003_0528, network("orangefs", CLUSTER)),
    (0xEF53, local("ext2/ext3/ext4", LOCAL_DISK)),
    (0x5846_5342, local("xfs", LOCAL_DISK)),
    (0x9123_683E, local("btrfs", LOCAL_DISK)),
    (0x2FC1_2FC1, local("zfs", LOCAL_DISK)),
    (0xF2F5_2010, local("f2fs", LOCAL_DISK)),
    (0xCA45_1A4E, local("bcachefs", LOCAL_DISK)),
    (0x3153_464A, local("jfs", LOCAL_DISK)),
    (0x5265_4973, local("reiserfs", LOCAL_DISK)),
    (0x3434, local("nilfs2", LOCAL_DISK)),
    (0x4D44, local("vfat/msdos", LOCAL_DISK)),
    (0x2011_BAB0, local("exfat", LOCAL_DISK)),
    (0x7366_746E, local("ntfs3", LOCAL_DISK)),
    (0x5346_544E, local("ntfs", LOCAL_DISK)),
    (0x4244, local("hfs", LOCAL_DISK)),
    (0x482B, local("hfsplus", LOCAL_DISK)),
    (0x7371_7368, local("squashfs", LOCAL_DISK)),
    (0xE0F5_E1E2, local("erofs", LOCAL_DISK)),
    (0x9660, local("iso9660", LOCAL_DISK)),
    (0x1501_3346, local("udf", LOCAL_DISK)),
    (0x0102_1994, local("tmpfs", IN_MEMORY)),
    (0x8584_58F6, local("ramfs", IN_MEMORY)),
    (0x794C_7630, local("overlay", LOCAL_LAYERS)),
];

/// Whether a file server keeps this filesystem's byte-range locks: the kernel NFS and SMB
/// clients send them there, and the server holds a dead client's locks until its own lease
/// ends (90 s on Linux nfsd). Mirrored there, SQLite's lock bytes would hold every other host
/// for that long after a crash, beyond the shim's lease (measured on kernel NFSv4.1: 31 s
/// with a 5 s lease and ganesha's 20 s one).
pub fn server_keeps_byte_range_locks(fs_type: &str) -> bool {
    matches!(fs_type, "nfs" | "nfs4" | "cifs" | "smb3" | "smb2" | "smbfs")
}

/// Linux filesystem types as /proc/self/mountinfo names them.
const FSTYPE_RULES: &[Rule] = &[
    network("nfs", REMOTE_SERVER),
    network("nfs4", REMOTE_SERVER),
    network("cifs", REMOTE_SERVER),
    network("smb3", REMOTE_SERVER),
    network("smbfs", REMOTE_SERVER),
    network("ncpfs", REMOTE_SERVER),
    network("afs", REMOTE_SERVER),
    network("coda", REMOTE_SERVER),
    network("9p", VM_HOST_SHARE),
    // WSL1's view of Windows drives; Windows caches and locks them on its own.
    network("drvfs", VM_HOST_SHARE),
    network("virtiofs", VM_HOST_SHARE),
    network("vboxsf", VM_HOST_SHARE),
    network("vmhgfs", VM_HOST_SHARE),
    network("prl_fs", VM_HOST_SHARE),
    network("ceph", CLUSTER),
    network("lustre", CLUSTER),
    network("gpfs", CLUSTER),
    network("beegfs", CLUSTER),
    network("glusterfs", CLUSTER),
    network("gfs2", CLUSTER),
    network("ocfs2", CLUSTER),
    network("orangefs", CLUSTER),
    network("davfs", REMOTE_FUSE),
    network("fuse.sshfs", REMOTE_FUSE),
    network("fuse.sftpfs", REMOTE_FUSE),
    network("fuse.curlftpfs", REMOTE_FUSE),
    network("fuse.rclone", REMOTE_FUSE),
    network("fuse.s3fs", REMOTE_FUSE),
    network("fuse.gcsfuse", REMOTE_FUSE),
    network("fuse.goofys", REMOTE_FUSE),
    network("fuse.blobfuse", REMOTE_FUSE),
    network("fuse.blobfuse2", REMOTE_FUSE),
    network("fuse.smbnetfs", REMOTE_FUSE),
    network("fuse.davfs", REMOTE_FUSE),
    network("fuse.davfs2", REMOTE_FUSE),
    network("fuse.juicefs", REMOTE_FUSE),
    network("fuse.cvmfs", REMOTE_FUSE),
    // GNOME's gvfs exposes sftp/smb/dav locations as well as local ones: assume remote.
    network("fuse.gvfsd-fuse", REMOTE_FUSE),
    network("fuse.glusterfs", CLUSTER),
    network("fuse.ceph-fuse", CLUSTER),
    network("fuse.ceph", CLUSTER),
    network("fuse.seaweedfs", CLUSTER),
    network("fuse.moosefs", CLUSTER),
    network("fuse.mfs", CLUSTER),
    network("fuse.lizardfs", CLUSTER),
    // Docker Desktop's host folders (grpcfuse, osxfs) and VMware's shared folders.
    network("fuse.grpcfuse", VM_HOST_SHARE),
    network("fuse.osxfs", VM_HOST_SHARE),
    network("fuse.vmhgfs-fuse", VM_HOST_SHARE),
    local("ext2", LOCAL_DISK),
    local("ext3", LOCAL_DISK),
    local("ext4", LOCAL_DISK),
    local("xfs", LOCAL_DISK),
    local("btrfs", LOCAL_DISK),
    local("zfs", LOCAL_DISK),
    local("f2fs", LOCAL_DISK),
    local("bcachefs", LOCAL_DISK),
    local("jfs", LOCAL_DISK),
    local("reiserfs", LOCAL_DISK),
    local("nilfs2", LOCAL_DISK),
    local("vfat", LOCAL_DISK),
    local("msdos", LOCAL_DISK),
    local("exfat", LOCAL_DISK),
    local("ntfs", LOCAL_DISK),
    local("ntfs3", LOCAL_DISK),
    local("hfs", LOCAL_DISK),
    local("hfsplus", LOCAL_DISK),
    local("apfs", LOCAL_DISK),
    local("squashfs", LOCAL_DISK),
    local("erofs", LOCAL_DISK),
    local("iso9660", LOCAL_DISK),
    local("udf", LOCAL_DISK),
    local("tmpfs", IN_MEMORY),
    local("ramfs", IN_MEMORY),
    local("devtmpfs", IN_MEMORY),
    local("overlay", LOCAL_LAYERS),
    local("fuse.fuse-overlayfs", LOCAL_LAYERS),
    // fuseblk is what FUSE drivers of a local block device (ntfs-3g, exfat-fuse) mount as.
    local("fuseblk", LOCAL_FUSE),
    local("fuse.ntfs-3g", LOCAL_FUSE),
    local("fuse.exfat", LOCAL_FUSE),
    local("fuse.squashfuse", LOCAL_FUSE),
    local("fuse.lxcfs", LOCAL_FUSE),
    // The xdg document portal re-exports files of this host to sandboxed apps.
    local("fuse.portal", LOCAL_FUSE),
];

/// The classification table. `magic` is Linux statfs f_type (0 if unknown/not Linux), `fstype`
/// the mountinfo fstype (e.g. "ext4", "fuse.sshfs", "virtiofs"; "" if unknown). Returns the
/// class and a short reason such as "nfs: network filesystem; ...".
///
/// The fstype is the finer key (every FUSE filesystem has the same magic; the fstype says which
/// one), so a known fstype decides, except that a network verdict from either key wins: a
/// conflict means the mountinfo entry was probably the wrong one, and network is the safe side.
pub fn classify(magic: u64, fstype: &str) -> (FsClass, String) {
    let by_fstype = FSTYPE_RULES.iter().find(|rule| rule.name == fstype);
    let by_magic = MAGIC_RULES
        .iter()
        .find(|(rule_magic, _)| *rule_magic == magic)
        .map(|(_, rule)| rule);
    let network_verdict = [by_fstype, by_magic]
        .into_iter()
        .flatten()
        .find(|rule| rule.class == FsClass::Network);
    if let Some(rule) = network_verdict.or(by_fstype).or(by_magic) {
        return (rule.class, format!("{}: {}", rule.name, rule.why));
    }
    if magic == FUSE_MAGIC || fstype == "fuse" || fstype.starts_with("fuse.") {
        let name = if fstype.is_empty() { "fuse" } else { fstype };
        return (
            FsClass::Unknown,
            format!("unknown FUSE filesystem {name}: treated as network (safe side)"),
        );
    }
    let what = if fstype.is_empty() {
        format!("with magic {magic:#010x}")
    } else {
        format!("{fstype} (magic {magic:#010x})")
    };
    (
        FsClass::Unknown,
        format!("unknown filesystem {what}: treated as network (safe side)"),
    )
}

/// A readable name for a Linux statfs magic number, when mountinfo gave none.
#[cfg(any(target_os = "linux", test))]
fn magic_name(magic: u64) -> String {
    MAGIC_RULES
        .iter()
        .find(|(rule_magic, _)| *rule_magic == magic)
        .map(|(_, rule)| rule.name)
        .or((magic == FUSE_MAGIC).then_some("fuse"))
        .map_or_else(|| format!("unknown ({magic:#010x})"), str::to_owned)
}

/// macOS `f_fstypename` values of network filesystems, local or not as the kernel may claim.
#[cfg(any(target_os = "macos", test))]
const MACOS_NETWORK_TYPES: &[&str] = &[
    "nfs", "smbfs", "afpfs", "webdav", "cifs", "ftp", "9p", "virtiofs",
];

/// macOS `f_fstypename` values of filesystems on local devices.
#[cfg(any(target_os = "macos", test))]
const MACOS_LOCAL_TYPES: &[&str] = &[
    "apfs", "hfs", "msdos", "exfat", "ntfs", "udf", "cd9660", "devfs",
];

/// macOS: f_fstypename and MNT_LOCAL.
#[cfg(any(target_os = "macos", test))]
///
/// Known network types are network whatever the flag says. FUSE (macFUSE, osxfuse) sets
/// MNT_LOCAL as its user-space server chooses, so a set flag proves nothing there (`Unknown`),
/// while a cleared one is believed. Anything else follows MNT_LOCAL.
pub fn classify_macos(type_name: &str, local_flag: bool) -> (FsClass, String) {
    let is_fuse = ["fuse", "osxfuse", "macfuse"]
        .iter()
        .any(|prefix| type_name.starts_with(prefix));
    let (class, why) = if MACOS_NETWORK_TYPES.contains(&type_name) {
        (FsClass::Network, REMOTE_SERVER)
    } else if is_fuse && local_flag {
        (
            FsClass::Unknown,
            "FUSE filesystem whose storage cannot be told: treated as network (safe side)",
        )
    } else if is_fuse || !local_flag {
        (
            FsClass::Network,
            "the kernel does not mark it local (MNT_LOCAL unset)",
        )
    } else if MACOS_LOCAL_TYPES.contains(&type_name) {
        (FsClass::Local, LOCAL_DISK)
    } else {
        (FsClass::Local, "the kernel marks it local (MNT_LOCAL)")
    };
    (class, format!("{type_name}: {why}"))
}

/// What the probe found for a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsInfo {
    /// Filesystem type name: mountinfo fstype or macOS f_fstypename, else derived from the magic.
    pub fs_type: String,
    pub class: FsClass,
    pub reason: String,
    pub read_only: bool,
    /// The path actually examined: the given path (made absolute) if it exists, else its
    /// nearest existing ancestor.
    pub probed_path: PathBuf,
}

/// Probe the filesystem of `path`. The path may not exist yet (a database about to be created):
/// then its nearest existing ancestor directory is probed, and recorded in `probed_path`.
///
/// Linux: the statfs magic plus the /proc/self/mountinfo fstype, which is what tells sshfs from
/// a local FUSE filesystem. macOS: f_fstypename and MNT_LOCAL. Elsewhere: `ErrorKind::Unsupported`.
pub fn probe(path: &Path) -> io::Result<FsInfo> {
    identify(nearest_existing(path)?)
}

/// `path` made absolute if it exists, else its nearest existing ancestor.
fn nearest_existing(path: &Path) -> io::Result<PathBuf> {
    let absolute = std::path::absolute(path)?;
    let mut candidate = absolute.as_path();
    loop {
        match fs::metadata(candidate) {
            Ok(_) => return Ok(candidate.to_path_buf()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                candidate = candidate.parent().ok_or(err)?;
            }
            // Permission denied, or an ancestor that is a file: the database cannot be made here.
            Err(err) => return Err(err),
        }
    }
}

#[cfg(target_os = "linux")]
fn identify(probed_path: PathBuf) -> io::Result<FsInfo> {
    use std::os::unix::fs::MetadataExt;

    let stat = crate::sys::statfs(&probed_path)?;
    let raw_dev = fs::metadata(&probed_path)?.dev();
    let dev = (libc::major(raw_dev), libc::minor(raw_dev));
    // Without mountinfo (no /proc in a sandbox) the magic alone still decides.
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let entries = parse_mountinfo(&mountinfo);
    // Mount points in mountinfo are symlink-free, so compare against the resolved path.
    let resolved = fs::canonicalize(&probed_path).unwrap_or_else(|_| probed_path.clone());
    let fstype =
        find_mount(&entries, &resolved, Some(dev)).map_or("", |entry| entry.fstype.as_str());
    let (class, reason) = classify(stat.magic, fstype);
    let fs_type = if fstype.is_empty() {
        magic_name(stat.magic)
    } else {
        fstype.to_owned()
    };
    Ok(FsInfo {
        fs_type,
        class,
        reason,
        read_only: stat.read_only,
        probed_path,
    })
}

#[cfg(target_os = "macos")]
fn identify(probed_path: PathBuf) -> io::Result<FsInfo> {
    let stat = crate::sys::statfs(&probed_path)?;
    // macOS statfs always reports the flag; if it did not, "not local" is the safe guess.
    let (class, reason) = classify_macos(&stat.type_name, stat.local_flag.unwrap_or(false));
    Ok(FsInfo {
        fs_type: stat.type_name,
        class,
        reason,
        read_only: stat.read_only,
        probed_path,
    })
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn identify(_probed_path: PathBuf) -> io::Result<FsInfo> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "filesystem detection is implemented for Linux and macOS only",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_MAGIC: u64 = 0;
    const EXT4_MAGIC: u64 = 0xEF53;
    const NFS_MAGIC: u64 = 0x6969;

    #[test]
    fn classify_table() {
        use FsClass::{Local, Network, Unknown};
        let cases: &[(u64, &str, FsClass)] = &[
            // Network by magic alone (mountinfo unavailable).
            (NFS_MAGIC, "", Network),
            (0x517B, "", Network),
            (0xFF53_4D42, "", Network),
            (0xFE53_4D42, "", Network),
            (0x0102_1997, "", Network),
            (0x00C3_6400, "", Network),
            (0x5346_414F, "", Network),
            (0x6B41_4653, "", Network),
            (0x7375_7245, "", Network),
            (0x0BD0_0BD0, "", Network),
            (0x4750_4653, "", Network),
            (0x0116_1970, "", Network),
            (0x7461_636F, "", Network),
            (0x1983_0326, "", Network),
            (0x786F_4256, "", Network),
            (0x564C, "", Network),
            // Network by kernel fstype.
            (NO_MAGIC, "nfs", Network),
            (NO_MAGIC, "nfs4", Network),
            (NO_MAGIC, "cifs", Network),
            (NO_MAGIC, "smb3", Network),
            (NO_MAGIC, "smbfs", Network),
            (NO_MAGIC, "9p", Network),
            (NO_MAGIC, "drvfs", Network),
            (NO_MAGIC, "virtiofs", Network),
            (NO_MAGIC, "afs", Network),
            (NO_MAGIC, "ceph", Network),
            (NO_MAGIC, "lustre", Network),
            (NO_MAGIC, "gpfs", Network),
            (NO_MAGIC, "beegfs", Network),
            (NO_MAGIC, "glusterfs", Network),
            (NO_MAGIC, "gfs2", Network),
            (NO_MAGIC, "ocfs2", Network),
            (NO_MAGIC, "vboxsf", Network),
            // Network FUSE clients, with the FUSE magic as the kernel reports it.
            (FUSE_MAGIC, "fuse.sshfs", Network),
            (FUSE_MAGIC, "fuse.grpcfuse", Network),
            (FUSE_MAGIC, "fuse.rclone", Network),
            (FUSE_MAGIC, "fuse.s3fs", Network),
            (FUSE_MAGIC, "fuse.gcsfuse", Network),
            (FUSE_MAGIC, "fuse.smbnetfs", Network),
            (FUSE_MAGIC, "fuse.glusterfs", Network),
            (FUSE_MAGIC, "fuse.ceph-fuse", Network),
            (FUSE_MAGIC, "fuse.ceph", Network),
            (FUSE_MAGIC, "fuse.juicefs", Network),
            (FUSE_MAGIC, "fuse.davfs", Network),
            (FUSE_MAGIC, "fuse.davfs2", Network),
            (FUSE_MAGIC, "fuse.goofys", Network),
            (FUSE_MAGIC, "fuse.blobfuse", Network),
            (FUSE_MAGIC, "fuse.blobfuse2", Network),
            (FUSE_MAGIC, "fuse.vmhgfs-fuse", Network),
            (FUSE_MAGIC, "fuse.osxfs", Network),
            (FUSE_MAGIC, "fuse.seaweedfs", Network),
            (FUSE_MAGIC, "fuse.moosefs", Network),
            (FUSE_MAGIC, "fuse.mfs", Network),
            (FUSE_MAGIC, "fuse.lizardfs", Network),
            (FUSE_MAGIC, "fuse.sftpfs", Network),
            (FUSE_MAGIC, "fuse.gvfsd-fuse", Network),
            // virtiofs reports the FUSE magic too; its fstype decides.
            (FUSE_MAGIC, "virtiofs", Network),
            // Local FUSE filesystems: a known fstype wins over the ambiguous magic.
            (FUSE_MAGIC, "fuseblk", Local),
            (FUSE_MAGIC, "fuse.fuse-overlayfs", Local),
            (FUSE_MAGIC, "fuse.squashfuse", Local),
            (FUSE_MAGIC, "fuse.ntfs-3g", Local),
            (FUSE_MAGIC, "fuse.exfat", Local),
            (FUSE_MAGIC, "fuse.lxcfs", Local),
            (FUSE_MAGIC, "fuse.portal", Local),
            // Local kernel filesystems by fstype.
            (NO_MAGIC, "ext2", Local),
            (NO_MAGIC, "ext3", Local),
            (EXT4_MAGIC, "ext4", Local),
            (NO_MAGIC, "xfs", Local),
            (NO_MAGIC, "btrfs", Local),
            (NO_MAGIC, "tmpfs", Local),
            (NO_MAGIC, "ramfs", Local),
            (NO_MAGIC, "overlay", Local),
            (NO_MAGIC, "zfs", Local),
            (NO_MAGIC, "f2fs", Local),
            (NO_MAGIC, "bcachefs", Local),
            (NO_MAGIC, "jfs", Local),
            (NO_MAGIC, "reiserfs", Local),
            (NO_MAGIC, "vfat", Local),
            (NO_MAGIC, "msdos", Local),
            (NO_MAGIC, "exfat", Local),
            (NO_MAGIC, "ntfs", Local),
            (NO_MAGIC, "ntfs3", Local),
            (NO_MAGIC, "hfs", Local),
            (NO_MAGIC, "hfsplus", Local),
            (NO_MAGIC, "apfs", Local),
            (NO_MAGIC, "squashfs", Local),
            (NO_MAGIC, "erofs", Local),
            (NO_MAGIC, "iso9660", Local),
            (NO_MAGIC, "udf", Local),
            (NO_MAGIC, "nilfs2", Local),
            (NO_MAGIC, "devtmpfs", Local),
            // Local kernel filesystems by magic alone.
            (EXT4_MAGIC, "", Local),
            (0x5846_5342, "", Local),
            (0x9123_683E, "", Local),
            (0x0102_1994, "", Local),
            (0x794C_7630, "", Local),
            (0x2FC1_2FC1, "", Local),
            (0xF2F5_2010, "", Local),
            (0xCA45_1A4E, "", Local),
            (0x8584_58F6, "", Local),
            (0x7371_7368, "", Local),
            (0xE0F5_E1E2, "", Local),
            (0x4D44, "", Local),
            (0x2011_BAB0, "", Local),
            (0x7366_746E, "", Local),
            (0x5346_544E, "", Local),
            // A local magic with an fstype we have no row for is still that local driver.
            (EXT4_MAGIC, "ext4dev", Local),
            // Unknown: FUSE with no or an unlisted fstype, plain "fuse", or nothing known.
            (FUSE_MAGIC, "", Unknown),
            (FUSE_MAGIC, "fuse.foo", Unknown),
            (FUSE_MAGIC, "fuse", Unknown),
            (NO_MAGIC, "fuse.bindfs", Unknown),
            (NO_MAGIC, "", Unknown),
            (0x1234_5678, "", Unknown),
            (0x1234_5678, "weirdfs", Unknown),
            // Conflicts: a network verdict from either key wins.
            (NFS_MAGIC, "ext4", Network),
            (EXT4_MAGIC, "nfs4", Network),
            (NFS_MAGIC, "fuse.foo", Network),
        ];
        for &(magic, fstype, expected) in cases {
            let (class, reason) = classify(magic, fstype);
            assert_eq!(
                class, expected,
                "classify({magic:#x}, {fstype:?}): {reason}"
            );
            assert!(
                !reason.is_empty(),
                "classify({magic:#x}, {fstype:?}) gave no reason"
            );
        }
    }

    #[test]
    fn classify_reasons_name_the_filesystem() {
        let reason = |magic, fstype| classify(magic, fstype).1;
        assert!(reason(FUSE_MAGIC, "fuse.sshfs").starts_with("fuse.sshfs: "));
        assert!(reason(NFS_MAGIC, "").starts_with("nfs: "));
        assert_eq!(reason(EXT4_MAGIC, "ext4"), "ext4: local disk");
        assert_eq!(
            reason(FUSE_MAGIC, "fuse.foo"),
            "unknown FUSE filesystem fuse.foo: treated as network (safe side)"
        );
        assert_eq!(
            reason(FUSE_MAGIC, ""),
            "unknown FUSE filesystem fuse: treated as network (safe side)"
        );
        assert!(reason(0x1234_5678, "").contains("0x12345678"));
        // In a conflict the reason explains the network verdict, not the local one.
        assert!(reason(NFS_MAGIC, "ext4").starts_with("nfs: "));
    }

    #[test]
    fn tables_have_no_duplicate_keys() {
        // A duplicate row would be silently shadowed by the first one.
        for (i, rule) in FSTYPE_RULES.iter().enumerate() {
            assert!(
                FSTYPE_RULES[..i]
                    .iter()
                    .all(|earlier| earlier.name != rule.name),
                "fstype {} listed twice",
                rule.name
            );
        }
        for (i, (magic, _)) in MAGIC_RULES.iter().enumerate() {
            assert!(
                MAGIC_RULES[..i].iter().all(|(earlier, _)| earlier != magic),
                "magic {magic:#x} listed twice"
            );
            assert_ne!(*magic, FUSE_MAGIC, "the FUSE magic must stay ambiguous");
        }
    }

    #[test]
    fn magic_names() {
        assert_eq!(magic_name(NFS_MAGIC), "nfs");
        assert_eq!(magic_name(FUSE_MAGIC), "fuse");
        assert_eq!(magic_name(0x0102_1994), "tmpfs");
        assert_eq!(magic_name(0xABCD), "unknown (0x0000abcd)");
    }

    #[test]
    fn classify_macos_cases() {
        use FsClass::{Local, Network, Unknown};
        let cases: &[(&str, bool, FsClass)] = &[
            ("nfs", false, Network),
            ("smbfs", false, Network),
            ("afpfs", false, Network),
            ("webdav", false, Network),
            ("cifs", false, Network),
            ("ftp", false, Network),
            // A network type is network even if the kernel calls it local.
            ("nfs", true, Network),
            ("macfuse", true, Unknown),
            ("osxfuse", true, Unknown),
            ("fusefs", true, Unknown),
            ("macfuse", false, Network),
            ("apfs", true, Local),
            ("hfs", true, Local),
            ("msdos", true, Local),
            ("exfat", true, Local),
            ("ntfs", true, Local),
            // A local type on a mount the kernel says is not local (e.g. an iSCSI-like export).
            ("apfs", false, Network),
            ("somefs", false, Network),
            ("somefs", true, Local),
        ];
        for &(type_name, local_flag, expected) in cases {
            let (class, reason) = classify_macos(type_name, local_flag);
            assert_eq!(
                class, expected,
                "classify_macos({type_name:?}, {local_flag}): {reason}"
            );
            assert!(
                reason.starts_with(type_name),
                "reason {reason:?} does not name {type_name}"
            );
        }
    }

    const MOUNTINFO: &str = "\
22 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw,errors=remount-ro
30 22 0:26 / /tmp rw,nosuid,nodev shared:5 master:3 - tmpfs tmpfs rw,size=8g
52 30 0:48 / /tmp/x\\040y/m1 rw,nosuid,nodev,relatime shared:1 - fuse.sshfs root@127.0.0.1:/tmp/export rw,user_id=0,group_id=0
61 22 0:50 / /mnt/nfs rw,relatime - nfs4 server:/export\\040dir rw,vers=4.2
62 22 0:51 / /mnt/odd\\011tab\\012nl\\134bs rw - tmpfs none rw

garbage line
63 22 8:3 / /mnt/nosep rw shared:1 ext4 /dev/sda3 rw
64 22 8-3 / /mnt/baddev rw - ext4 /dev/sda3 rw
65 22 8:3 / /mnt/nofstype rw -
x 22 8:3 / /mnt/badid rw - ext4 /dev/sda3 rw
66 22 8:3 / relative rw - ext4 /dev/sda3 rw
";

    #[test]
    fn parse_mountinfo_realistic_lines() {
        let entries = parse_mountinfo(MOUNTINFO);
        let mount_points: Vec<&Path> = entries.iter().map(|e| e.mount_point.as_path()).collect();
        assert_eq!(
            mount_points,
            [
                Path::new("/"),
                Path::new("/tmp"),
                Path::new("/tmp/x y/m1"),
                Path::new("/mnt/nfs"),
                Path::new("/mnt/odd\ttab\nnl\\bs"),
            ],
            "malformed lines must be skipped and escapes decoded"
        );
        assert_eq!(
            entries[2],
            MountEntry {
                mount_point: PathBuf::from("/tmp/x y/m1"),
                dev: (0, 48),
                fstype: "fuse.sshfs".into(),
                source: "root@127.0.0.1:/tmp/export".into(),
                root: PathBuf::from("/"),
                options: "rw,nosuid,nodev,relatime,rw,user_id=0,group_id=0".into(),
            }
        );
        // Two optional fields before the separator.
        assert_eq!(entries[1].fstype, "tmpfs");
        assert_eq!(entries[1].dev, (0, 26));
        // No optional fields at all; the source is unescaped too.
        assert_eq!(entries[3].fstype, "nfs4");
        assert_eq!(entries[3].source, "server:/export dir");
        assert_eq!(entries[0].dev, (8, 2));
    }

    #[test]
    fn unescape_leaves_incomplete_escapes_alone() {
        assert_eq!(unescape_octal(r"a\040b"), b"a b");
        assert_eq!(unescape_octal(r"a\04"), br"a\04");
        assert_eq!(unescape_octal(r"a\089"), br"a\089");
        // \777 is not a byte.
        assert_eq!(unescape_octal(r"\777"), br"\777");
        assert_eq!(unescape_octal(r"\\134"), br"\\");
    }

    fn entry(mount_point: &str, dev: (u32, u32), fstype: &str) -> MountEntry {
        MountEntry {
            mount_point: PathBuf::from(mount_point),
            dev,
            fstype: fstype.into(),
            source: "src".into(),
            root: PathBuf::from("/"),
            options: "rw".into(),
        }
    }

    #[test]
    fn find_mount_prefers_device_match() {
        let entries = [
            entry("/", (8, 1), "ext4"),
            entry("/data", (0, 40), "nfs4"),
            entry("/data/sub", (8, 5), "xfs"),
        ];
        // The device decides even where a longer prefix would say otherwise.
        let found = find_mount(&entries, Path::new("/data/sub/db"), Some((0, 40)));
        assert_eq!(found.map(|e| e.fstype.as_str()), Some("nfs4"));
    }

    #[test]
    fn find_mount_falls_back_to_longest_component_prefix() {
        let entries = [
            entry("/", (8, 1), "ext4"),
            entry("/a/b", (0, 40), "nfs4"),
            entry("/a", (8, 2), "xfs"),
        ];
        let fstype_of =
            |path: &str, dev| find_mount(&entries, Path::new(path), dev).map(|e| e.fstype.as_str());
        // btrfs subvolume: st_dev matches no line.
        assert_eq!(fstype_of("/a/b/db", Some((0, 99))), Some("nfs4"));
        assert_eq!(fstype_of("/a/b", None), Some("nfs4"));
        // "/a/bc" is not inside "/a/b".
        assert_eq!(fstype_of("/a/bc/db", None), Some("xfs"));
        assert_eq!(fstype_of("/other", None), Some("ext4"));
        assert_eq!(find_mount(&entries[1..], Path::new("/other"), None), None);
    }

    #[test]
    fn find_mount_stacked_mounts_last_wins() {
        let entries = [
            entry("/", (8, 1), "ext4"),
            entry("/mnt", (0, 40), "nfs4"),
            entry("/mnt", (0, 41), "tmpfs"),
            entry("/srv", (0, 42), "xfs"),
            entry("/srv2", (0, 42), "xfs-bind"),
        ];
        assert_eq!(
            find_mount(&entries, Path::new("/mnt/db"), None).map(|e| e.fstype.as_str()),
            Some("tmpfs")
        );
        assert_eq!(
            find_mount(&entries, Path::new("/srv/db"), Some((0, 42))).map(|e| e.fstype.as_str()),
            Some("xfs-bind")
        );
    }

    /// A fresh name under the temp directory that nothing else uses.
    fn unused_temp_name(tag: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        std::env::temp_dir().join(format!(
            "sqlite-netfs-detect-{tag}-{}-{nanos}",
            std::process::id()
        ))
    }

    #[cfg(any(target_os = "linux", target_os = "macos"))]
    #[test]
    fn probe_root() {
        let info = probe(Path::new("/")).expect("probe /");
        assert_eq!(info.probed_path, Path::new("/"));
        assert!(!info.fs_type.is_empty());
        assert!(!info.reason.is_empty());
    }

    #[cfg(any(target_os = "linux", target_os = "macos"))]
    #[test]
    fn probe_missing_file_probes_existing_ancestor() {
        let temp = std::env::temp_dir();
        let missing = unused_temp_name("missing").join("nested").join("new.db");
        let info = probe(&missing).expect("probe a database about to be created");
        assert_eq!(info.probed_path, temp);
        let direct = probe(&temp).expect("probe the temp dir");
        assert_eq!(info.class, direct.class);
        assert_eq!(info.fs_type, direct.fs_type);
    }

    #[cfg(any(target_os = "linux", target_os = "macos"))]
    #[test]
    fn probe_relative_missing_path_uses_current_dir() {
        let info = probe(Path::new("no-such-dir-for-detect-test/new.db")).expect("probe");
        assert_eq!(info.probed_path, std::env::current_dir().expect("cwd"));
    }

    #[cfg(any(target_os = "linux", target_os = "macos"))]
    #[test]
    fn probe_under_a_regular_file_fails() {
        let file = unused_temp_name("file");
        fs::write(&file, b"").expect("create temp file");
        let result = probe(&file.join("new.db"));
        fs::remove_file(&file).expect("remove temp file");
        assert!(
            result.is_err(),
            "a path below a regular file cannot hold a database: {result:?}"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn probe_reads_fstype_from_mountinfo() {
        // procfs is not in the tables, so "proc" can only have come from mountinfo.
        let info = probe(Path::new("/proc/self")).expect("probe /proc/self");
        assert_eq!(info.fs_type, "proc");
        assert_eq!(info.class, FsClass::Unknown);
    }

    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    #[test]
    fn probe_is_unsupported_elsewhere() {
        let err = probe(Path::new("/")).expect_err("no probe on this platform");
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
    }
}
