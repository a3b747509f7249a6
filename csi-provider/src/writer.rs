//! Writes a volume's files the way kubelet writes Secret volumes, so a reader never sees a mix
//! of old and new files: the payload goes into a new hidden folder `..<timestamp>.<random>`, a
//! symlink `..data_tmp` to it is renamed over `..data` (one atomic step), and each top-level name
//! is a symlink through `..data`. Stale names and the old folder are removed afterwards. Nothing
//! is written when the payload is unchanged.
//!
//! Ownership: with a group (the pod's fsGroup) every folder and file gets that group and a mode
//! that lets the group read; without one, files keep their requested mode.

use std::{
    collections::BTreeSet,
    fs,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _, symlink},
    path::{Path, PathBuf},
};

use rand::Rng as _;

use crate::{
    error::{Error, Result},
    render::File,
};

pub const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

/// How files and folders are owned and which modes folders get.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ownership {
    /// The pod's fsGroup.
    pub group: Option<u32>,
}

impl Ownership {
    fn file_mode(self, mode: u32) -> u32 {
        match self.group {
            // The group must read what the pod's user may read.
            Some(_) => (mode & 0o777) | 0o040,
            None => mode & 0o777,
        }
    }

    pub fn dir_mode(self) -> u32 {
        match self.group {
            Some(_) => 0o750,
            None => 0o755,
        }
    }

    pub fn apply(self, path: &Path) -> Result<()> {
        if let Some(group) = self.group {
            std::os::unix::fs::lchown(path, None, Some(group))
                .map_err(|e| io_error(&format!("setting the group of {}", path.display()), e))?;
        }
        Ok(())
    }
}

fn io_error(what: &str, error: std::io::Error) -> Error {
    Error::internal(format!("{what}: {error}"))
}

/// Whether `dir` already holds exactly these files with these modes.
fn unchanged(dir: &Path, files: &[File], ownership: Ownership) -> bool {
    let Ok(current) = fs::read_link(dir.join(DATA)) else { return false };
    let current = dir.join(current);
    for file in files {
        let path = current.join(&file.path);
        let Ok(meta) = fs::symlink_metadata(&path) else { return false };
        if !meta.is_file() || meta.permissions().mode() & 0o777 != ownership.file_mode(file.mode) {
            return false;
        }
        if fs::read(&path).ok().as_deref() != Some(file.contents.expose()) {
            return false;
        }
    }
    // No file was removed from the payload.
    count_files(&current) == Some(files.len())
}

fn count_files(dir: &Path) -> Option<usize> {
    let mut count = 0;
    for entry in fs::read_dir(dir).ok()? {
        let entry = entry.ok()?;
        let kind = entry.file_type().ok()?;
        if kind.is_dir() {
            count += count_files(&entry.path())?;
        } else {
            count += 1;
        }
    }
    Some(count)
}

/// Writes `files` into `dir` atomically; returns whether anything changed.
pub fn write(dir: &Path, files: &[File], ownership: Ownership) -> Result<bool> {
    if unchanged(dir, files, ownership) {
        return Ok(false);
    }
    let old = fs::read_link(dir.join(DATA)).ok();
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let name = format!("..{stamp}.{:08x}", rand::rng().random::<u32>());
    let payload = dir.join(&name);
    if let Err(e) = write_payload(&payload, files, ownership) {
        let _ = fs::remove_dir_all(&payload);
        return Err(e);
    }
    let tmp = dir.join(DATA_TMP);
    let _ = fs::remove_file(&tmp);
    symlink(&name, &tmp).map_err(|e| io_error("linking the new payload", e))?;
    ownership.apply(&tmp)?;
    // The atomic step: readers see the old folder or the new one, never a mix.
    fs::rename(&tmp, dir.join(DATA)).map_err(|e| io_error("swapping ..data", e))?;
    let top: BTreeSet<&str> = files.iter().map(|f| f.path.split('/').next().unwrap_or_default()).collect();
    for name in &top {
        let link = dir.join(name);
        let target = PathBuf::from(DATA).join(name);
        if fs::read_link(&link).ok().as_deref() != Some(target.as_path()) {
            let _ = fs::remove_file(&link);
            symlink(&target, &link).map_err(|e| io_error(&format!("linking {name}"), e))?;
            ownership.apply(&link)?;
        }
    }
    // Names no longer in the payload, and the old payload folder.
    for entry in fs::read_dir(dir).map_err(|e| io_error("listing the volume", e))?.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("..") || top.contains(name.as_ref()) {
            continue;
        }
        if entry.file_type().is_ok_and(|t| t.is_symlink()) {
            let _ = fs::remove_file(entry.path());
        }
    }
    if let Some(old) = old.filter(|o| o.as_os_str() != name.as_str()) {
        let _ = fs::remove_dir_all(dir.join(old));
    }
    Ok(true)
}

fn write_payload(payload: &Path, files: &[File], ownership: Ownership) -> Result<()> {
    let dir_mode = ownership.dir_mode();
    fs::create_dir(payload).map_err(|e| io_error("creating the payload folder", e))?;
    fs::set_permissions(payload, fs::Permissions::from_mode(dir_mode)).map_err(|e| io_error("payload mode", e))?;
    ownership.apply(payload)?;
    for file in files {
        let path = payload.join(&file.path);
        // Folders of nested names.
        let mut parent = payload.to_path_buf();
        for element in Path::new(&file.path).parent().into_iter().flat_map(Path::components) {
            parent.push(element);
            if !parent.exists() {
                fs::create_dir(&parent).map_err(|e| io_error("creating a folder", e))?;
                fs::set_permissions(&parent, fs::Permissions::from_mode(dir_mode))
                    .map_err(|e| io_error("folder mode", e))?;
                ownership.apply(&parent)?;
            }
        }
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_error(&format!("creating {}", file.path), e))?;
        out.write_all(file.contents.expose()).map_err(|e| io_error(&format!("writing {}", file.path), e))?;
        drop(out);
        ownership.apply(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(ownership.file_mode(file.mode)))
            .map_err(|e| io_error(&format!("setting the mode of {}", file.path), e))?;
    }
    Ok(())
}

/// Removes what [`write`] made in `dir` (the payload folders and links), leaving `dir` itself.
pub fn clear(dir: &Path) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error("listing the volume", e)),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let result = match entry.file_type() {
            Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
            _ => fs::remove_file(&path),
        };
        result.map_err(|e| io_error(&format!("removing {}", path.display()), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use vaultsync_backend::SecretBytes;

    use super::*;

    fn file(path: &str, value: &str, mode: u32) -> File {
        File { path: path.into(), mode, contents: SecretBytes::new(value.as_bytes().to_vec()) }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vaultsync-writer-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn writes_swaps_and_cleans_up() {
        let dir = temp_dir("swap");
        let first = [file("a", "one", 0o644), file("nested/b", "two", 0o600)];
        assert!(write(&dir, &first, Ownership::default()).unwrap());
        assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "one");
        assert_eq!(fs::read_to_string(dir.join("nested/b")).unwrap(), "two");
        let mode = fs::metadata(dir.join("nested/b")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!write(&dir, &first, Ownership::default()).unwrap(), "unchanged: nothing written");
        let old = fs::read_link(dir.join(DATA)).unwrap();
        let second = [file("a", "uno", 0o644)];
        assert!(write(&dir, &second, Ownership::default()).unwrap());
        assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "uno");
        assert!(!dir.join("nested").exists(), "a name no longer in the payload is removed");
        assert!(!dir.join(old).exists(), "the old payload folder is removed");
        let names: Vec<String> =
            fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names.len(), 3, "..data, one payload folder and a: {names:?}");
        clear(&dir).unwrap();
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_group_can_read() {
        let dir = temp_dir("group");
        let group = nix::unistd::getgid().as_raw();
        write(&dir, &[file("k", "v", 0o600)], Ownership { group: Some(group) }).unwrap();
        let meta = fs::metadata(dir.join("k")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o640);
        assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), group);
        fs::remove_dir_all(&dir).unwrap();
    }
}
