//! Run with
//!
//! ```not_rust
//! cargo run --release --example fleet
//! ```
//!
//! A fleet of 10,000 clients talking to 1,000 backends in three zones of unequal sizes, every
//! client a real `tower_lb::Balance` over in-process backends that count their requests and the
//! clients that call them. It prints, for subsets of 16 (deterministic, random, and the subsets
//! Finagle's deterministic aperture and the SRE book's deterministic subsetting would choose), the
//! connections and requests per backend and what moves when backends leave or join and clients
//! restart; for zone-aware routing, every backend's load and the share of requests kept in their
//! zone; for priority tiers, what the backups take while tier 0 is healthy and once half of it is
//! ejected. `--reduced` runs the smaller fleet the tests assert on (1,000 clients, 100 backends).
//! See `sim.rs` for the details.

mod sim;

fn main() {
    let reduced = std::env::args().any(|arg| arg == "--reduced");
    let scale = if reduced {
        sim::Scale::REDUCED
    } else {
        sim::Scale::FULL
    };
    print!("{}", sim::run(&scale));
}
