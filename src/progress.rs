//! Progress reporting seam: the library reports, binaries decide how to show it (indicatif on
//! stderr) — so the library never writes to the terminal itself.

/// Receives progress from long operations. All methods have no-op defaults.
pub trait Reporter: Send + Sync {
    /// A new phase begins, e.g. "merge" with the number of bytes it will process.
    fn start(&self, _label: &str, _total_bytes: u64) {}
    /// `bytes` more bytes of the current phase are done.
    fn advance(&self, _bytes: u64) {}
    /// The current phase is over.
    fn finish(&self) {}
    /// A human-readable log line (the binaries print it on stderr unless --quiet).
    fn message(&self, _msg: &str) {}
    /// A new phase counted in steps (e.g. training), not bytes.
    fn start_steps(&self, label: &str, total_steps: u64) {
        self.start(label, total_steps)
    }
    /// A short live status of the current phase (e.g. the current reward), shown beside the bar.
    fn status(&self, _msg: &str) {}
}

/// Reports nothing.
pub struct Silent;
impl Reporter for Silent {}
