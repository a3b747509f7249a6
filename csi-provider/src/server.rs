//! gRPC on unix sockets: a stale socket is replaced only if it is a socket (anything else at the
//! path is an error, never deleted), the socket is owner-only, and it is removed on shutdown.

use std::{
    os::unix::fs::{FileTypeExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use tokio::net::UnixListener;

/// The socket path of an endpoint: `unix:///path`, `unix:/path` or a bare path.
pub fn socket_path(endpoint: &str) -> anyhow::Result<PathBuf> {
    let path = endpoint.strip_prefix("unix://").or_else(|| endpoint.strip_prefix("unix:")).unwrap_or(endpoint);
    if !path.starts_with('/') {
        bail!("endpoint {endpoint:?} is not an absolute unix socket path");
    }
    Ok(PathBuf::from(path))
}

/// Binds a unix socket at `path`, owner-only; a stale socket there is removed first.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).with_context(|| format!("removing the stale socket {}", path.display()))?;
        }
        Ok(_) => bail!("{} exists and is not a socket; not removing it", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", path.display())),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    Ok(listener)
}

/// A gRPC channel to a unix socket (kubelet's side: tests, the benchmark, the demo).
pub async fn connect(path: &Path) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}

/// Removes the socket at `path` if it is one.
pub fn remove_socket(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(socket_path("unix:///run/csi.sock").unwrap(), PathBuf::from("/run/csi.sock"));
        assert_eq!(socket_path("unix:/run/csi.sock").unwrap(), PathBuf::from("/run/csi.sock"));
        assert_eq!(socket_path("/run/csi.sock").unwrap(), PathBuf::from("/run/csi.sock"));
        assert!(socket_path("relative.sock").is_err());
    }

    #[tokio::test]
    async fn only_a_stale_socket_is_replaced() {
        let dir = std::env::temp_dir().join(format!("vaultsync-sock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let first = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "owner-only");
        drop(first);
        let _second = bind(&path).expect("a stale socket is replaced");
        let file = dir.join("not-a-socket");
        std::fs::write(&file, "keep me").unwrap();
        let error = bind(&file).unwrap_err();
        assert!(error.to_string().contains("not a socket"), "{error}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
