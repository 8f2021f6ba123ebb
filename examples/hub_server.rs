//! The test suite's hub protocol server, standalone: prints its URL and serves until killed.
//! Used by `bench/bench.sh push` to measure a real push's memory over loopback.
//!
//!     cargo run --release --example hub_server [PART_SIZE_MIB]

#[path = "../tests/it/hub_server.rs"]
mod hub_server;

use std::io::Write;

fn main() {
    let part_mib: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(16);
    let server = hub_server::HubServer::with_config(hub_server::Config {
        multipart_threshold: part_mib << 20,
        chunk_size: part_mib << 20,
        ..Default::default()
    });
    println!("{}", server.url);
    let _ = std::io::stdout().flush();
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
