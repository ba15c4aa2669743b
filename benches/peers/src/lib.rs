//! Benches only: see `benches/selection.rs`.
