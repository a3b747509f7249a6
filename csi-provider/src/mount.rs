//! The volume's medium: a tmpfs mounted at the target (secrets never touch the node's disk), or,
//! where the plugin may not mount, a plain folder (configurable, with a warning).

use std::{
    fs,
    path::{Path, PathBuf},
};

use nix::mount::{MntFlags, MsFlags};

use crate::{
    error::{Error, Result},
    writer::Ownership,
};

/// Where volume files live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Medium {
    /// A tmpfs at each target; a failed mount fails the publish.
    Tmpfs,
    /// A tmpfs, or a plain folder (with a warning) when mounting is not allowed.
    TmpfsOrDirectory,
    /// Always a plain folder (the files are then on the node's disk).
    Directory,
}

/// Room for the 1 MiB payload twice (old and new during a swap) and the folders.
const TMPFS_SIZE: &str = "4m";

/// Mounts a tmpfs at `target` (which must exist): no devices, no set-uid, no executables.
pub fn mount_tmpfs(target: &Path, ownership: Ownership) -> std::result::Result<(), nix::errno::Errno> {
    let mut options = format!("mode={:o},size={TMPFS_SIZE}", ownership.dir_mode());
    if let Some(group) = ownership.group {
        options.push_str(&format!(",gid={group}"));
    }
    nix::mount::mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(options.as_str()),
    )
}

/// Unmounts `target` if something is mounted there.
pub fn unmount(target: &Path) -> Result<()> {
    if !is_mount_point(target)? {
        return Ok(());
    }
    match nix::mount::umount2(target, MntFlags::empty()) {
        Ok(()) => Ok(()),
        // Still in use (a reader has a file open): detach now, the kernel frees it when unused.
        Err(nix::errno::Errno::EBUSY) => nix::mount::umount2(target, MntFlags::MNT_DETACH)
            .map_err(|e| Error::internal(format!("unmounting {}: {e}", target.display()))),
        Err(e) => Err(Error::internal(format!("unmounting {}: {e}", target.display()))),
    }
}

/// Whether `path` is a mount point, from this process's mount table.
pub fn is_mount_point(path: &Path) -> Result<bool> {
    let canonical = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    Ok(mount_points()?.iter().any(|p| p == path || *p == canonical))
}

/// Every mount point of this process's mount namespace.
pub fn mount_points() -> Result<Vec<PathBuf>> {
    let table = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::internal(format!("reading the mount table: {e}")))?;
    Ok(table.lines().filter_map(|line| line.split(' ').nth(4)).map(|p| PathBuf::from(unescape(p))).collect())
}

/// The mount table escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let code = rest.get(at + 1..at + 4).and_then(|d| u8::from_str_radix(d, 8).ok());
        match code {
            Some(byte) => {
                out.push(byte as char);
                rest = &rest[at + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn mount_table_escapes() {
        assert_eq!(super::unescape(r"/var/lib/a\040b"), "/var/lib/a b");
        assert_eq!(super::unescape(r"/x\134y"), r"/x\y");
        assert_eq!(super::unescape("/plain"), "/plain");
    }

    #[test]
    fn the_root_is_a_mount_point() {
        assert!(super::is_mount_point(std::path::Path::new("/")).unwrap());
    }
}
