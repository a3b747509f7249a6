//! Captures what a component under test logs (through `tracing`, in process) so a test can prove
//! that no secret value or token reaches the logs.

use std::{
    io::Write,
    sync::{Arc, Mutex, OnceLock},
};

static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().map_err(|_| std::io::Error::other("log buffer poisoned"))?.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the capturing subscriber (once per test binary) at debug level.
pub fn capture() {
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug,hyper=info,h2=info,rustls=info,tower=info")
            .with_writer(move || LogWriter(writer.clone()))
            .try_init();
        buffer
    });
}

/// Everything logged so far in this test binary.
pub fn text() -> String {
    let logs = LOGS.get().expect("logs captured: call capture() first").lock().expect("log lock");
    String::from_utf8_lossy(&logs).into_owned()
}

/// Fails if any of `values` (of 4 bytes or more) appears in the captured logs.
pub fn assert_free_of(values: &[&str]) {
    let text = text();
    assert!(!text.is_empty(), "nothing was logged: the scan would prove nothing");
    for value in values.iter().filter(|v| v.len() >= 4) {
        assert!(!text.contains(value), "a secret value or token appears in the logs ({} bytes scanned)", text.len());
    }
}
