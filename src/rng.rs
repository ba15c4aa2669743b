//! Shared cursors, the random source of the random strategies, and the bit mixing they use.

use std::{
    cell::Cell,
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
};

/// How a balancer may move its strategy's cursors.
///
/// A balancer that holds the only handle on its shared state is the only one that can move them:
/// it does so with a plain load and store, a few nanoseconds less than the atomic add that
/// clones moving one cursor at the same time need. Public only to be named in the internal
/// traits; it cannot be reached from outside the crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No other handle exists, and the moves of every handle dropped before happen before this
    /// balancer's (see `Balance::access`).
    Sole,
    /// Other handles may move the cursors at the same time.
    Shared,
}

/// A cursor on its own cache line, so that requests bumping it do not slow down readers of the
/// data beside it.
#[repr(align(64))]
#[derive(Debug, Default)]
pub(crate) struct Cursor(AtomicUsize);

impl Cursor {
    /// A cursor whose first position is `start`.
    pub(crate) fn starting_at(start: usize) -> Self {
        Self(AtomicUsize::new(start))
    }

    /// Returns the current position and moves to the next.
    #[inline]
    pub(crate) fn next(&self, access: Access) -> usize {
        self.add(1, access)
    }

    /// Moves `steps` positions further: the turns a request passed over are spent, so that the
    /// requests after it do not land on the endpoint that took them.
    #[inline]
    pub(crate) fn skip(&self, steps: usize, access: Access) {
        self.add(steps, access);
    }

    /// Moves `steps` positions further and returns the position before.
    #[inline]
    fn add(&self, steps: usize, access: Access) -> usize {
        match access {
            Access::Sole => {
                let position = self.0.load(Ordering::Relaxed);
                self.0
                    .store(position.wrapping_add(steps), Ordering::Relaxed);
                position
            }
            Access::Shared => self.0.fetch_add(steps, Ordering::Relaxed),
        }
    }
}

/// The splitmix64 increment: the fractional part of the golden ratio.
pub(crate) const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// A fast random source for the random strategies, without locks or SipHash.
///
/// Unseeded, each thread draws from its own generator (splitmix64 over a thread-local counter,
/// itself seeded from the OS's per-thread hashing keys), so picks on different threads never touch
/// a shared cache line. Seeded, every clone of the balancer draws from one splitmix64 sequence over
/// a shared atomic counter, so a single-threaded test replays the same picks.
#[derive(Debug)]
pub(crate) enum Rng {
    PerThread,
    Seeded(SharedCounter),
}

/// The counter of a seeded generator, on its own cache line.
#[repr(align(64))]
#[derive(Debug)]
pub(crate) struct SharedCounter(AtomicU64);

thread_local! {
    static THREAD_RNG: Cell<u64> = Cell::new({
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(0x5eed);
        hasher.finish()
    });
}

impl Rng {
    pub(crate) fn seeded(seed: u64) -> Self {
        Self::Seeded(SharedCounter(AtomicU64::new(seed)))
    }

    pub(crate) fn per_thread() -> Self {
        Self::PerThread
    }

    /// 64 random bits.
    #[inline]
    pub(crate) fn next(&self) -> u64 {
        let state = match self {
            Self::PerThread => THREAD_RNG.with(|state| {
                let next = state.get().wrapping_add(GAMMA);
                state.set(next);
                next
            }),
            Self::Seeded(counter) => counter
                .0
                .fetch_add(GAMMA, Ordering::Relaxed)
                .wrapping_add(GAMMA),
        };
        fmix64(state)
    }
}

/// A uniform index below `n` from 64 random bits (Lemire's multiply-shift; `n` at least 1).
#[inline]
pub(crate) fn below(bits: u64, n: usize) -> usize {
    ((u128::from(bits) * n as u128) >> 64) as usize
}

/// The `step`-th further draw of a walk whose first draw was `bits`: independent enough of the
/// first and of each other for choosing among endpoints, and the same for the same inputs.
#[inline]
pub(crate) fn redraw(bits: u64, step: usize) -> u64 {
    fmix64(bits ^ (step as u64).wrapping_mul(GAMMA))
}

/// murmur3's 64-bit finalizer: a bijection whose every output bit depends on every input bit.
#[inline]
pub(crate) fn fmix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_generators_replay_and_redraws_differ() {
        let (a, b) = (Rng::seeded(7), Rng::seeded(7));
        let first: Vec<u64> = (0..4).map(|_| a.next()).collect();
        let second: Vec<u64> = (0..4).map(|_| b.next()).collect();
        assert_eq!(first, second);
        let redraws: std::collections::HashSet<u64> =
            (0..64).map(|step| redraw(first[0], step)).collect();
        assert_eq!(redraws.len(), 64);
    }

    #[test]
    fn below_stays_below() {
        for bits in [0, 1, u64::MAX / 2, u64::MAX] {
            for n in [1, 2, 3, 1000] {
                assert!(below(bits, n) < n);
            }
        }
        assert_eq!(below(u64::MAX, 10), 9);
    }
}
