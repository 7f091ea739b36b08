//! The data directory holds the relay's secrets (the generated secret key, the admin password
//! hash, the embedded store with sealed upstream secrets, key hashes and usage), so what the relay
//! creates there is for its own user only, whatever the umask:
//!
//! - a directory it creates (data directory, store directory, spool, the upgrade socket's
//!   directory) is 0700;
//! - a file it writes (`relay.redb`, `activations.json`, `secret.key`, `admin.json`, spool files)
//!   is 0600, and an existing one that other users may read (written by an older version) loses
//!   its group and other permissions when the relay opens it.
//!
//! An existing directory keeps its mode: it may be shared, mounted, or set by the operator or by
//! systemd (`StateDirectoryMode=`); the start logs a warning when other users can enter it.
//! Nothing here ever adds a permission.

use std::fs::{File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Creates `dir` and its missing parents with mode 0700. An existing directory is left as it is.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    // The umask only removes bits; make the owner's exactly rwx even under an odd umask.
    std::fs::set_permissions(dir, Permissions::from_mode(0o700))
}

/// Logs a warning when users other than the owner may enter or list `dir`.
pub fn warn_if_shared(dir: &Path) {
    if let Ok(m) = std::fs::metadata(dir)
        && m.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %dir.display(),
            mode = format!("{:o}", m.permissions().mode() & 0o7777),
            "this directory holds the relay's secrets and store, and other users may enter it; `chmod 700` it (the relay's files in it are 0600 regardless)"
        );
    }
}

/// Opens `path` for writing, created with mode 0600 (truncated when `truncate`); an existing
/// file loses its group and other permissions.
pub fn open_file(path: &Path, truncate: bool) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(!truncate)
        .write(true)
        .create(true)
        .truncate(truncate)
        .mode(0o600)
        .open(path)?;
    restrict(&f)?;
    Ok(f)
}

/// Removes the group and other permissions of an open file.
pub fn restrict(f: &File) -> io::Result<()> {
    let mode = f.metadata()?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        f.set_permissions(Permissions::from_mode(mode & !0o077))?;
    }
    Ok(())
}

/// Removes the group and other permissions of `path` when it exists.
pub fn restrict_path(path: &Path) -> io::Result<()> {
    let mode = match std::fs::metadata(path) {
        Ok(m) => m.permissions().mode() & 0o7777,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, Permissions::from_mode(mode & !0o077))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` whole or not at all: into a temporary file (mode 0600) beside it,
/// synced, then renamed over `path`. A reader never sees a half-written file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let written = (|| {
        let mut f = open_file(&tmp, true)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    // The rename is durable once the directory is.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn new_directories_and_files_are_private_existing_ones_never_loosened() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        create_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&tmp.path().join("a")), 0o700);

        let shared = tmp.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, Permissions::from_mode(0o750)).unwrap();
        create_dir(&shared).unwrap();
        assert_eq!(mode(&shared), 0o750, "an existing directory keeps its mode");

        let f = dir.join("f");
        drop(open_file(&f, true).unwrap());
        assert_eq!(mode(&f), 0o600);
        std::fs::set_permissions(&f, Permissions::from_mode(0o644)).unwrap();
        restrict_path(&f).unwrap();
        assert_eq!(mode(&f), 0o600);
        std::fs::set_permissions(&f, Permissions::from_mode(0o400)).unwrap();
        restrict_path(&f).unwrap();
        assert_eq!(mode(&f), 0o400, "never loosened");
        restrict_path(&dir.join("absent")).unwrap();

        let out = dir.join("out.json");
        write_atomically(&out, b"one").unwrap();
        write_atomically(&out, b"two").unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"two");
        assert_eq!(mode(&out), 0o600);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2, "no temporary file left");
    }
}
