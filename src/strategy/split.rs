//! The table of the strategies that split requests between groups of endpoints ([`Tiers`],
//! [`ZoneAware`]): one table of the inner strategy per group, and each group's share of requests,
//! recomputed as the endpoints' eligibility changes.
//!
//! A request's group is chosen once, where its walk starts: the fractional part of
//! `(start + phase) × φ`, the phase random per table (a Weyl sequence over a cursor's consecutive
//! turns, so that every run of requests is split with the least discrepancy; a uniform draw for
//! random starts), against the groups' cumulative shares. The walk's position carries the group in its low 8 bits and the group's own position
//! above them. A group whose strategy counts turns (round robin, weighted round robin) gets
//! consecutive turns of its own, from a random start, so that it rotates exactly over its
//! endpoints, and spends the turns its walks pass over as a rotation over the whole set does. The walk meets the group's
//! endpoints in the inner strategy's order, then the other groups', so an unavailable group's
//! requests fall through to the next.
//!
//! The shares follow the endpoints' eligibility (not ejected by outlier detection, not found down
//! by probes) without a scan per request: the table keeps each endpoint's eligibility as it last
//! computed the shares, and checks every candidate a walk meets against it. A difference (an
//! endpoint ejected, returned, found down or up again) recomputes the shares, once, in whichever
//! request saw it; so does the first walk after an active health check takes an endpoint out or
//! lets it back, every 4,096th walk, which catches changes among endpoints that receive no
//! requests, and a change of the rule's own inputs (a zone-aware client's view of the client
//! fleet).
//!
//! [`Tiers`]: super::Tiers
//! [`ZoneAware`]: super::ZoneAware

use std::sync::{
    atomic::{fence, AtomicBool, AtomicU64, Ordering},
    Mutex,
};

use super::internal::Table;
use crate::{
    ejection::Health,
    endpoints::Member,
    error::InvalidConfig,
    rng::{Access, Cursor, Rng},
};

/// Shares are fixed-point fractions of this.
const ONE: u64 = 1 << 32;
/// Walk starts whose low bits are all zero recompute the shares.
const REFRESH_MASK: u64 = (1 << 12) - 1;
/// The golden ratio as a 64-bit fraction: `start × PHI` spreads consecutive starts evenly.
const PHI: u64 = 0x9e37_79b9_7f4a_7c15;
/// The bits of a walk's position that hold its group.
const GROUP_BITS: u32 = 8;
/// The most groups a position can name.
const MAX_GROUPS: usize = 1 << GROUP_BITS;

/// How a strategy splits requests between its groups. Public only to appear in the bounds of a
/// strategy's table; it cannot be reached from outside the crate.
pub trait Rule: Send + Sync + 'static {
    /// Each group's share of requests (summing to 1) into `shares`, from the weight of its
    /// eligible endpoints and of all its endpoints (never 0).
    fn shares(&self, eligible: &[u64], total: &[u64], shares: &mut [f64]);

    /// Changes when the rule's own inputs change, so that the tables recompute their shares.
    fn version(&self) -> u64 {
        0
    }
}

/// One group: a contiguous range of the snapshot's endpoints and the inner strategy's table over
/// it.
#[derive(Debug)]
struct Group<T> {
    start: usize,
    len: usize,
    span: usize,
    total: u64,
    table: T,
}

/// What only the request that recomputes the shares touches.
#[derive(Debug)]
struct Scratch {
    eligible: Box<[u64]>,
    totals: Box<[u64]>,
    shares: Box<[f64]>,
}

/// A table split into groups. Public only to name it as a strategy's table; it cannot be reached
/// from outside the crate.
#[derive(Debug)]
pub struct Split<T, R> {
    groups: Box<[Group<T>]>,
    /// The order in which a walk meets the groups after its own.
    fallback: Box<[usize]>,
    span: usize,
    rule: R,
    /// The groups' cumulative shares (fixed point, out of [`ONE`]), behind a sequence lock: odd
    /// while they are rewritten.
    sequence: AtomicU64,
    bounds: Box<[AtomicU64]>,
    /// Each endpoint's eligibility when the shares were computed, one bit each.
    seen: Box<[AtomicU64]>,
    /// Set until the shares are computed with the balancer's outlier detection.
    stale: AtomicBool,
    /// The rule's version the shares were computed with.
    version: AtomicU64,
    /// Held by the request recomputing the shares.
    scratch: Mutex<Scratch>,
    /// Each group's turns, for inner strategies that count turns.
    turns: Box<[Cursor]>,
    /// Set when there are more groups than a position can name.
    error: Option<InvalidConfig>,
    /// Where this table's sequence of group choices starts: random, so that clients whose
    /// cursors count alike do not round their splits alike.
    phase: u64,
}

impl<T: Table, R: Rule> Split<T, R> {
    /// Splits `members`, whose groups are contiguous runs of endpoints that `same` puts together,
    /// into groups with a table each built by `build`; `fallback`, given the number of groups,
    /// orders the groups a walk falls through to, and `rule` sets their shares.
    pub(crate) fn new<K, S>(
        members: &[Member<K, S>],
        same: impl Fn(&Member<K, S>, &Member<K, S>) -> bool,
        mut build: impl FnMut(&[Member<K, S>]) -> T,
        fallback: impl FnOnce(usize) -> Vec<usize>,
        rule: R,
    ) -> Self {
        let mut groups = Vec::new();
        let mut start = 0;
        while start < members.len() {
            let first = &members[start];
            let len = members[start..]
                .iter()
                .position(|m| !same(first, m))
                .unwrap_or(members.len() - start);
            let range = &members[start..start + len];
            let table = build(range);
            groups.push(Group {
                start,
                len,
                span: table.span(len),
                total: range.iter().map(|m| u64::from(m.weight)).sum(),
                table,
            });
            start += len;
        }
        let fallback = fallback(groups.len()).into_boxed_slice();
        let count = groups.len();
        let split = Self {
            span: groups.iter().map(|g| g.span).sum(),
            fallback,
            rule,
            sequence: AtomicU64::new(0),
            bounds: (0..count).map(|_| AtomicU64::new(ONE)).collect(),
            seen: (0..members.len().div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            stale: AtomicBool::new(true),
            version: AtomicU64::new(0),
            scratch: Mutex::new(Scratch {
                eligible: vec![0; count].into_boxed_slice(),
                totals: groups.iter().map(|g| g.total).collect(),
                shares: vec![0.0; count].into_boxed_slice(),
            }),
            // Each group's rotation starts at a random endpoint, so that clients (re)built at the
            // same moment do not all start on the same one.
            turns: groups
                .iter()
                .map(|g| Cursor::starting_at((Rng::per_thread().next() % g.len as u64) as usize))
                .collect(),
            phase: Rng::per_thread().next(),
            error: (count > MAX_GROUPS)
                .then(|| InvalidConfig::new("number of groups", "at most 256", count)),
            groups: groups.into_boxed_slice(),
        };
        // Without the balancer's outlier detection, which the first walk brings.
        split.refresh(members, None);
        split.stale.store(true, Ordering::Relaxed);
        split
    }

    /// The group a walk from `position` starts in.
    #[inline]
    fn choose(&self, position: u64) -> usize {
        if self.groups.len() <= 1 {
            return 0;
        }
        let point = position.wrapping_add(self.phase).wrapping_mul(PHI) >> 32;
        loop {
            let before = self.sequence.load(Ordering::Acquire);
            if before & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let last = self.bounds.len() - 1;
            let group = (0..last)
                .find(|&g| point < self.bounds[g].load(Ordering::Relaxed))
                .unwrap_or(last);
            fence(Ordering::Acquire);
            if self.sequence.load(Ordering::Relaxed) == before {
                return group;
            }
        }
    }

    /// The group met at `step` of a walk that starts in group `first`, and the step within it.
    #[inline]
    fn locate(&self, first: usize, step: usize) -> (usize, usize) {
        let span = self.groups[first].span;
        if step < span {
            return (first, step);
        }
        let mut step = step - span;
        for &g in self.fallback.iter().filter(|&&g| g != first) {
            let span = self.groups[g].span;
            if step < span {
                return (g, step);
            }
            step -= span;
        }
        (first, step % span.max(1))
    }

    /// Checks a candidate against the eligibility the shares were computed with, and recomputes
    /// them if it changed (or if they are due).
    #[inline]
    fn observe<K, S>(&self, members: &[Member<K, S>], health: Option<&Health>, index: usize) {
        let eligible = members[index].state.is_eligible(health);
        let seen = self.seen[index / 64].load(Ordering::Relaxed) & (1 << (index % 64)) != 0;
        let due = self.stale.load(Ordering::Relaxed)
            || self.rule.version() != self.version.load(Ordering::Relaxed);
        if eligible != seen || due {
            self.recompute(members, health);
        }
    }

    /// Recomputes the shares, unless another request is doing it.
    #[cold]
    #[inline(never)]
    fn recompute<K, S>(&self, members: &[Member<K, S>], health: Option<&Health>) {
        if self.refresh(members, health) {
            self.stale.store(false, Ordering::Relaxed);
        }
    }

    /// Recomputes every endpoint's eligibility and the groups' shares; `false` if another request
    /// holds the scratch space (and so is doing it).
    fn refresh<K, S>(&self, members: &[Member<K, S>], health: Option<&Health>) -> bool {
        let Ok(mut scratch) = self.scratch.try_lock() else {
            return false;
        };
        let Scratch {
            eligible,
            totals,
            shares,
        } = &mut *scratch;
        let version = self.rule.version();
        for (g, group) in self.groups.iter().enumerate() {
            eligible[g] = 0;
            let range = group.start..group.start + group.len;
            for (i, member) in range.clone().zip(&members[range]) {
                let ok = member.state.is_eligible(health);
                let bit = 1 << (i % 64);
                let word = &self.seen[i / 64];
                if ok {
                    word.fetch_or(bit, Ordering::Relaxed);
                    eligible[g] += u64::from(member.weight);
                } else {
                    word.fetch_and(!bit, Ordering::Relaxed);
                }
            }
        }
        if self.groups.is_empty() {
            return true;
        }
        self.rule.shares(eligible, totals, shares);
        self.sequence.fetch_add(1, Ordering::AcqRel);
        let mut sum = 0.0;
        for (g, share) in shares.iter().enumerate() {
            sum += share.max(0.0);
            let bound = ((sum * ONE as f64).round() as u64).min(ONE);
            self.bounds[g].store(bound, Ordering::Relaxed);
        }
        // The last group takes whatever rounding left.
        if let Some(last) = self.bounds.last() {
            last.store(ONE, Ordering::Relaxed);
        }
        self.sequence.fetch_add(1, Ordering::Release);
        self.version.store(version, Ordering::Relaxed);
        true
    }
}

impl<T: Table, R: Rule> Table for Split<T, R> {
    /// Chooses the walk's group, and its position in the group: a turn of the group's own for
    /// inner strategies that count turns, `value` otherwise. Called once per walk.
    #[inline]
    fn position(&self, value: u64) -> u64 {
        if value & REFRESH_MASK == 0 {
            self.stale.store(true, Ordering::Relaxed);
        }
        let g = self.choose(value);
        let Some(group) = self.groups.get(g) else {
            return 0;
        };
        let local = if group.table.turns() {
            self.turns[g].next(Access::Shared) as u64
        } else {
            value
        };
        group.table.position(local) << GROUP_BITS | g as u64
    }

    fn span(&self, _endpoints: usize) -> usize {
        self.span
    }

    #[inline]
    fn candidate<K, S>(
        &self,
        members: &[Member<K, S>],
        health: Option<&Health>,
        position: u64,
        step: usize,
    ) -> usize {
        // A fallback group's inner table may be given a position meant for another group's: any
        // group index is brought in range.
        let first = (position & (MAX_GROUPS as u64 - 1)) as usize % self.groups.len();
        let inner = position >> GROUP_BITS;
        let (g, step_in_group) = self.locate(first, step);
        let group = &self.groups[g];
        if g == first && step_in_group > 0 && group.table.turns() {
            // The turn passed over is spent, so that the endpoint after an unavailable one does
            // not also take its share.
            self.turns[g].skip(1, Access::Shared);
        }
        let range = &members[group.start..group.start + group.len];
        let index = group.start + group.table.candidate(range, health, inner, step_in_group);
        self.observe(members, health, index);
        index
    }

    fn ramps(&self) -> bool {
        self.groups.first().is_none_or(|g| g.table.ramps())
    }

    fn eligibility_changed(&self) {
        self.stale.store(true, Ordering::Relaxed);
        self.groups
            .iter()
            .for_each(|g| g.table.eligibility_changed());
    }

    fn turns(&self) -> bool {
        self.groups.first().is_some_and(|g| g.table.turns())
    }

    fn error(&self) -> Option<&InvalidConfig> {
        self.error
            .as_ref()
            .or_else(|| self.groups.iter().find_map(|g| g.table.error()))
    }
}

/// Checks a ratio setting: finite and within `range`.
pub(crate) fn check_ratio(
    option: &'static str,
    requirement: &'static str,
    value: f64,
    valid: impl Fn(f64) -> bool,
) -> Result<f64, InvalidConfig> {
    if value.is_finite() && valid(value) {
        Ok(value)
    } else {
        Err(InvalidConfig::new(option, requirement, value))
    }
}

/// Stable-sorts `order` (indices into `members`) by `compare`, then lets `inner` arrange each run
/// of endpoints that compare equal within itself.
pub(crate) fn arrange_groups<K, S>(
    members: &[Member<K, S>],
    order: &mut Vec<u32>,
    compare: impl Fn(&Member<K, S>, &Member<K, S>) -> std::cmp::Ordering,
    mut inner: impl FnMut(&[Member<K, S>], &mut Vec<u32>),
) {
    let member = |i: u32| &members[i as usize];
    order.sort_by(|&a, &b| compare(member(a), member(b)));
    let mut arranged = Vec::with_capacity(order.len());
    let mut start = 0;
    while start < order.len() {
        let first = member(order[start]);
        let len = order[start..]
            .iter()
            .position(|&i| compare(first, member(i)).is_ne())
            .unwrap_or(order.len() - start);
        let mut run = order[start..start + len].to_vec();
        inner(members, &mut run);
        arranged.extend(run);
        start += len;
    }
    *order = arranged;
}
