//! Fuzzes the strategies' table builders (the consistent-hash ring, the Maglev table, the hash
//! order, the weighted round-robin schedule, the weighted draw) through the public API: arbitrary
//! endpoint keys (distinct keys may share their key bytes), weights (0 included), strategy
//! options (invalid ones included) and membership changes, then request keys routed through
//! `Balance` and looked up with `KeyMap::endpoint_for_key`.
//!
//! Checked: nothing panics; invalid input gives its typed error (`InvalidWeight` exactly for
//! weight 0, `InvalidConfig` exactly for options out of their documented range, a Maglev table
//! smaller than the set fails requests with `InvalidConfig`); every request goes to a member, the
//! one `endpoint_for_key` names for keyed strategies; `Hash` matches crc32 mod the total weight
//! over the endpoints in key-byte order; bounded loads never exceed `ceil(c × mean)`; an inserted
//! endpoint takes keys only to itself and a removed one moves only its own keys (consistent
//! hash); round robin visits every endpoint once per round and weighted round robin gives each its
//! exact share of a period.
//!
//! Ring sizes are kept small (weights below 16 and few points per weight for `ConsistentHash`)
//! so that runs stay fast; the ring's scale-down past 2²² points is covered by its unit tests.
#![no_main]

use std::{
    borrow::Cow,
    collections::HashMap,
    convert::Infallible,
    future::{ready, Future, Ready},
    pin::pin,
    task::{Context, Poll, Waker},
};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tower_lb::{
    error::{InvalidConfig, NoEndpoints},
    strategy::{
        ConsistentHash, Hash, Maglev, PowerOfTwoChoices, Random, RoundRobin, Strategy,
        WeightedRoundRobin,
    },
    Balance, BoxError, EndpointKey, Endpoints,
};
use tower_service::Service;

/// The most endpoints a set starts with.
const MAX_ENDPOINTS: usize = 48;
/// The most membership changes per input.
const MAX_CHANGES: usize = 8;
/// The most request keys per input.
const MAX_KEYS: usize = 32;
/// The most ring points `ConsistentHash` builds here.
const RING_BUDGET: u32 = 1 << 16;
/// The largest weight `ConsistentHash` sees here (others see any `u32`).
const RING_MAX_WEIGHT: u32 = 16;

/// An endpoint key whose identity (`id` and bytes) is more than its key bytes, so two endpoints
/// can share the bytes that the hash-based strategies place them by.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq, Hash)]
struct Id {
    id: u8,
    bytes: Vec<u8>,
}

impl EndpointKey for Id {
    fn key_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
}

#[derive(Arbitrary, Clone, Copy, Debug)]
enum Weight {
    Small(u8),
    Any(u32),
}

#[derive(Arbitrary, Debug)]
enum Config {
    RoundRobin,
    WeightedRoundRobin,
    Random(u64),
    PowerOfTwoChoices(u64),
    Hash,
    ConsistentHash { points: u32, bound: Option<f64> },
    Maglev { size: u64 },
}

#[derive(Arbitrary, Debug)]
enum Change {
    Insert(Id, Weight),
    /// Removes the member at this index (modulo the set's size).
    Remove(u8),
    /// Removes a key that may not be in the set.
    RemoveKey(Id),
    SetWeight(u8, Weight),
}

#[derive(Arbitrary, Debug)]
struct Input {
    endpoints: Vec<(Id, Weight)>,
    config: Config,
    keys: Vec<Vec<u8>>,
    changes: Vec<Change>,
}

/// An endpoint that is always ready and answers its own key.
#[derive(Clone, Debug)]
struct Endpoint(Id);

impl Service<Vec<u8>> for Endpoint {
    type Response = Id;
    type Error = Infallible;
    type Future = Ready<Result<Id, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: Vec<u8>) -> Self::Future {
        ready(Ok(self.0.clone()))
    }
}

type Set = Endpoints<Id, Endpoint>;
type KeyFn = fn(&Vec<u8>) -> Option<Vec<u8>>;

/// The request is its own key.
#[allow(clippy::ptr_arg)] // the request type is `Vec<u8>`
fn request_key(request: &Vec<u8>) -> Option<Vec<u8>> {
    Some(request.clone())
}

/// What the strategy under test is, for the checks that depend on it.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    RoundRobin,
    Weighted,
    Drawn,
    Hash,
    Ring { bound: Option<f64> },
    Maglev { size: usize },
}

impl Kind {
    fn keyed(self) -> bool {
        matches!(self, Kind::Hash | Kind::Ring { .. } | Kind::Maglev { .. })
    }
}

fuzz_target!(|input: Input| {
    let mut input = input;
    input.endpoints.truncate(MAX_ENDPOINTS);
    input.changes.truncate(MAX_CHANGES);
    input.keys.truncate(MAX_KEYS);
    match input.config {
        Config::RoundRobin => run(RoundRobin::new(), Kind::RoundRobin, &input, None),
        Config::WeightedRoundRobin => run(WeightedRoundRobin::new(), Kind::Weighted, &input, None),
        Config::Random(seed) => run(Random::seeded(seed), Kind::Drawn, &input, None),
        Config::PowerOfTwoChoices(seed) => {
            run(PowerOfTwoChoices::seeded(seed), Kind::Drawn, &input, None)
        }
        Config::Hash => run(Hash::new(request_key as KeyFn), Kind::Hash, &input, None),
        Config::ConsistentHash { points, bound } => {
            let strategy = ConsistentHash::new(request_key as KeyFn);
            // The most points per weight that keep the largest set this input can reach, at the
            // largest weight, within the budget.
            let most = (MAX_ENDPOINTS + MAX_CHANGES) as u32 * RING_MAX_WEIGHT;
            let budget = (RING_BUDGET / most).max(1);
            let points = match strategy.clone().points_per_weight(points) {
                Ok(_) => {
                    assert!((1..=65_536).contains(&points), "{points} points accepted");
                    points.min(budget)
                }
                Err(error) => {
                    assert!(!(1..=65_536).contains(&points), "{points} points refused");
                    check_config_error(&error, "points per weight");
                    budget
                }
            };
            let strategy = strategy.points_per_weight(points).unwrap();
            let (strategy, bound) = match bound {
                None => (strategy, None),
                Some(factor) => match strategy.clone().bounded_load(factor) {
                    Ok(bounded) => {
                        assert!(
                            factor.is_finite() && factor > 1.0,
                            "factor {factor} accepted"
                        );
                        (bounded, Some(factor))
                    }
                    Err(error) => {
                        assert!(
                            !(factor.is_finite() && factor > 1.0),
                            "factor {factor} refused"
                        );
                        check_config_error(&error, "load factor");
                        (strategy, None)
                    }
                },
            };
            run(
                strategy,
                Kind::Ring { bound },
                &input,
                Some(RING_MAX_WEIGHT),
            )
        }
        Config::Maglev { size } => {
            let strategy = Maglev::new(request_key as KeyFn);
            let valid = usize::try_from(size)
                .is_ok_and(|s| (2..=1 << 24).contains(&s) && is_prime(s as u64));
            let (strategy, size) = match strategy.clone().table_size(size as usize) {
                // Large tables are valid but slow to fill; the validation is what is fuzzed there.
                Ok(sized) if size <= 65_537 => {
                    assert!(valid, "table size {size} accepted");
                    (sized, size as usize)
                }
                Ok(_) => {
                    assert!(valid, "table size {size} accepted");
                    (strategy.table_size(251).unwrap(), 251)
                }
                Err(error) => {
                    assert!(!valid, "table size {size} refused");
                    check_config_error(&error, "table size");
                    (strategy.table_size(251).unwrap(), 251)
                }
            };
            run(strategy, Kind::Maglev { size }, &input, None)
        }
    }
});

fn check_config_error(error: &InvalidConfig, option: &str) {
    assert_eq!(error.option(), option);
    assert!(error.to_string().starts_with("invalid "), "{error}");
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// The weight an input gives, reduced for the ring (keeping 0, the invalid weight, as it is).
fn weight(weight: Weight, cap: Option<u32>) -> u32 {
    let w = match weight {
        Weight::Small(w) => u32::from(w),
        Weight::Any(w) => w,
    };
    match cap {
        Some(cap) if w > 0 => (w - 1) % cap + 1,
        _ => w,
    }
}

fn run<St>(strategy: St, kind: Kind, input: &Input, cap: Option<u32>)
where
    St: Strategy<Id> + Clone,
    Balance<St, Id, Endpoint>: Service<Vec<u8>, Response = Id, Error = BoxError>,
{
    let weighted: Vec<(Id, Endpoint, u32)> = input
        .endpoints
        .iter()
        .map(|(id, w)| (id.clone(), Endpoint(id.clone()), weight(*w, cap)))
        .collect();
    let set: Set = match Endpoints::try_from_weighted(weighted.iter().cloned()) {
        Ok(set) => {
            assert!(weighted.iter().all(|e| e.2 > 0));
            set
        }
        Err(error) => {
            assert_eq!(error.weight(), 0);
            assert!(weighted.iter().any(|e| e.2 == 0));
            let fixed = weighted.into_iter().map(|(k, s, w)| (k, s, w.max(1)));
            Endpoints::try_from_weighted(fixed).unwrap()
        }
    };
    let balance = Balance::new(strategy, set.clone());
    check(&balance, &set, kind, &input.keys, true);

    for change in &input.changes {
        let keys = set.keys();
        let before = owners(&balance, &input.keys);
        let mut moved_to = None;
        let mut removed = None;
        match change {
            Change::Insert(id, w) => {
                let w = weight(*w, cap);
                let is_new = !keys.contains(id);
                match set.insert_weighted(id.clone(), Endpoint(id.clone()), w) {
                    Ok(new) => {
                        assert!(w > 0);
                        assert_eq!(new, is_new);
                        if is_new {
                            moved_to = Some(id.clone());
                        }
                    }
                    Err(error) => assert_eq!((w, error.weight()), (0, 0)),
                }
            }
            Change::Remove(index) if !keys.is_empty() => {
                let id = &keys[usize::from(*index) % keys.len()];
                assert!(set.remove(id));
                assert!(!set.contains(id));
                removed = Some(id.clone());
            }
            Change::Remove(_) => {}
            Change::RemoveKey(id) => {
                assert_eq!(set.remove(id), keys.contains(id));
                removed = Some(id.clone());
            }
            Change::SetWeight(index, w) if !keys.is_empty() => {
                let id = &keys[usize::from(*index) % keys.len()];
                let w = weight(*w, cap);
                match set.set_weight(id, w) {
                    Ok(found) => {
                        assert!(w > 0 && found);
                        assert_eq!(set.weight(id), Some(w));
                    }
                    Err(error) => assert_eq!((w, error.weight()), (0, 0)),
                }
            }
            Change::SetWeight(..) => {}
        }
        check(&balance, &set, kind, &input.keys, false);

        // Consistent hashing moves only the keys it must.
        if matches!(kind, Kind::Ring { .. }) && !before.is_empty() {
            let after = owners(&balance, &input.keys);
            for ((key, old), new) in input.keys.iter().zip(&before).zip(&after) {
                if let Some(new_id) = &moved_to {
                    assert!(new == old || new.as_ref() == Some(new_id), "{key:?} moved");
                }
                if let Some(gone) = &removed {
                    if old.as_ref() != Some(gone) {
                        assert_eq!(new, old, "{key:?} moved on the removal of another");
                    }
                }
            }
        }
    }
}

/// The owner of every key, by `endpoint_for_key`; empty for keyless strategies and empty sets.
fn owners<St>(balance: &Balance<St, Id, Endpoint>, keys: &[Vec<u8>]) -> Vec<Option<Id>>
where
    St: Strategy<Id>,
{
    let map = balance.key_map();
    if map.is_empty() {
        return Vec::new();
    }
    keys.iter()
        .map(|k| map.endpoint_for_key(k).cloned())
        .collect()
}

fn check<St>(
    balance: &Balance<St, Id, Endpoint>,
    set: &Set,
    kind: Kind,
    keys: &[Vec<u8>],
    fresh: bool,
) where
    St: Strategy<Id> + Clone,
    Balance<St, Id, Endpoint>: Service<Vec<u8>, Response = Id, Error = BoxError>,
{
    let members = set.keys();
    let weights: Vec<u32> = members.iter().map(|k| set.weight(k).unwrap()).collect();
    assert!(weights.iter().all(|&w| w >= 1));
    let stats = balance.stats();
    assert_eq!(stats.len(), members.len());
    assert!(stats.iter().zip(&members).all(|(s, k)| &s.key == k));

    let map = balance.key_map();
    assert_eq!(map.len(), members.len());
    let table_too_small = matches!(kind, Kind::Maglev { size } if members.len() > size);

    if kind.keyed() {
        for key in keys {
            let owner = map.endpoint_for_key(key);
            if members.is_empty() || table_too_small {
                assert_eq!(owner, None);
            } else {
                let owner = owner.expect("a keyed strategy maps every key");
                assert!(members.contains(owner), "{owner:?} is not a member");
                if kind == Kind::Hash {
                    assert_eq!(owner, &hash_owner(&members, &weights, key), "{key:?}");
                }
            }
            let routed = send(balance, key.clone());
            match (owner, routed) {
                (Some(owner), Ok(id)) => assert_eq!(&id, owner, "{key:?} routed elsewhere"),
                (None, Err(error)) if members.is_empty() => assert!(error.is::<NoEndpoints>()),
                (None, Err(error)) if table_too_small => assert!(error.is::<InvalidConfig>()),
                (owner, routed) => panic!("{key:?}: owner {owner:?}, routed {routed:?}"),
            }
        }
        if let Kind::Ring {
            bound: Some(factor),
        } = kind
        {
            check_bound(balance, set, &members, keys, factor);
        }
    } else {
        assert_eq!(
            map.endpoint_for_key(b"k"),
            None,
            "keyless strategies map no key"
        );
        if members.is_empty() {
            let error = send(balance, Vec::new()).unwrap_err();
            assert!(error.is::<NoEndpoints>(), "{error}");
            return;
        }
        let n = members.len();
        match kind {
            // A fresh balancer starts at the first endpoint; later ones go on from the cursor.
            Kind::RoundRobin => {
                let round: Vec<Id> = (0..n).map(|_| send(balance, Vec::new()).unwrap()).collect();
                if fresh {
                    assert_eq!(round, members);
                } else {
                    let mut sorted = round.clone();
                    sorted.sort_by(|a, b| (a.id, &a.bytes).cmp(&(b.id, &b.bytes)));
                    sorted.dedup();
                    assert_eq!(sorted.len(), n, "a round visits every endpoint once");
                }
            }
            Kind::Weighted if fresh => {
                let divisor = weights.iter().fold(0u64, |g, &w| gcd(g, u64::from(w)));
                let period: u64 = weights.iter().map(|&w| u64::from(w) / divisor).sum();
                if period <= 4096 {
                    let mut counts: HashMap<Id, u64> = HashMap::new();
                    for _ in 0..period {
                        *counts
                            .entry(send(balance, Vec::new()).unwrap())
                            .or_default() += 1;
                    }
                    for (k, &w) in members.iter().zip(&weights) {
                        assert_eq!(counts.get(k).copied().unwrap_or(0), u64::from(w) / divisor);
                    }
                }
            }
            _ => {
                for _ in 0..n.min(16) {
                    let id = send(balance, Vec::new()).unwrap();
                    assert!(members.contains(&id));
                }
            }
        }
    }
    for k in &members {
        assert_eq!(
            set.in_flight(k),
            Some(0),
            "completed requests leave no count"
        );
    }
}

/// Routes one request through a clone of the balancer, as a caller does.
fn send<St>(balance: &Balance<St, Id, Endpoint>, request: Vec<u8>) -> Result<Id, BoxError>
where
    St: Strategy<Id>,
    Balance<St, Id, Endpoint>: Service<Vec<u8>, Response = Id, Error = BoxError>,
{
    let mut cx = Context::from_waker(Waker::noop());
    let mut svc = balance.clone();
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        other => panic!("an always-ready set made the balancer {other:?}"),
    }
    let response = pin!(svc.call(request));
    match response.poll(&mut cx) {
        Poll::Ready(result) => result,
        Poll::Pending => panic!("a ready endpoint's response is pending"),
    }
}

/// Requests in flight at once (called, not yet polled) never push an endpoint over
/// `ceil(factor × mean)`, and release their counts when dropped.
fn check_bound<St>(
    balance: &Balance<St, Id, Endpoint>,
    set: &Set,
    members: &[Id],
    keys: &[Vec<u8>],
    factor: f64,
) where
    St: Strategy<Id>,
    Balance<St, Id, Endpoint>: Service<Vec<u8>, Response = Id, Error = BoxError>,
{
    if members.is_empty() {
        return;
    }
    let n = members.len() as f64;
    let mut cx = Context::from_waker(Waker::noop());
    let mut held = Vec::new();
    for (m, key) in keys.iter().chain(keys).enumerate() {
        let mut svc = balance.clone();
        assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
        held.push(svc.call(key.clone()));
        let cap = (factor * ((m + 1) as f64 / n)).ceil().max(1.0) as usize;
        for k in members {
            let in_flight = set.in_flight(k).unwrap();
            assert!(
                in_flight <= cap,
                "{k:?}: {in_flight} in flight > {cap} at m = {}",
                m + 1
            );
        }
    }
    let total: usize = members.iter().map(|k| set.in_flight(k).unwrap()).sum();
    assert_eq!(total, held.len());
    drop(held);
    for k in members {
        assert_eq!(set.in_flight(k), Some(0));
    }
}

/// `Hash`'s documented mapping: crc32 (IEEE) of the key, modulo the total weight, over the
/// endpoints in key-byte order (set order between equal key bytes), each spanning its weight.
fn hash_owner(members: &[Id], weights: &[u32], key: &[u8]) -> Id {
    let mut order: Vec<usize> = (0..members.len()).collect();
    order.sort_by(|&a, &b| members[a].bytes.cmp(&members[b].bytes).then(a.cmp(&b)));
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let slot = u64::from(crc32fast::hash(key)) % total;
    let mut end = 0;
    for i in order {
        end += u64::from(weights[i]);
        if slot < end {
            return members[i].clone();
        }
    }
    unreachable!("the slot is below the total weight")
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}
