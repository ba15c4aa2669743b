use std::{borrow::Cow, cmp::Ordering, fmt};

use super::{
    internal::{Access, Build},
    ring::fnv1a64,
};
use crate::{endpoints::Member, error::InvalidConfig, rng::fmix64, rng::GAMMA, EndpointKey};

/// The largest client count of a deterministic subset: the assignment takes one bit per client.
const MAX_CLIENTS: usize = 1 << 24;

/// Balances over a subset of the endpoint set, with any keyless strategy: each client talks to
/// `size` endpoints instead of all of them, and endpoints outside its subset are never called
/// (so never connected to).
///
/// With 10,000 clients and 1,000 backends, balancing over everything means 10 million
/// connections; subsets of 16 mean 160,000, 160 per backend. The price is that each client's
/// load lands on its subset only, so subsets must be chosen so that every backend is in as many
/// of them as every other, and a membership change must move as few clients as it can.
///
/// The strategy inside (`St`, such as [`RoundRobin`](super::RoundRobin) or
/// [`PowerOfTwoChoices`](super::PowerOfTwoChoices)) balances over the subset as it would over a
/// whole set: ejected or unready endpoints are passed over, slow start and panic mode apply within
/// the subset. [`Balance::stats`](crate::Balance::stats) lists the subset's endpoints only.
///
/// # Deterministic subsets
///
/// [`Subset::deterministic`] takes the client's identity: its index among `count` clients of the
/// same service, such as a StatefulSet ordinal or a task number, and every client computes its
/// subset from the membership alone, without talking to the others:
///
/// 1. the endpoints are placed on a ring in the order of a hash of their
///    [key bytes](EndpointKey), so every client sees the same ring whatever its insertion order;
/// 2. the clients' indices are dealt out among the endpoints as the Maglev paper fills its lookup
///    table: endpoints take turns (in the order of another hash of their key), each claiming the
///    next client index of its own permutation that no one has claimed yet, until every client has
///    one. Every endpoint so "starts" `count / N` clients, give or take one;
/// 3. a client's subset is the arc of `size` consecutive endpoints of the ring that begins at the
///    endpoint that claimed its index.
///
/// An endpoint is then in the subsets of the clients started by it and by the `size - 1`
/// endpoints before it on the ring: `size × count / N` clients, within `size` of each other (and
/// exactly equal when `N` divides `count`). Requests follow: with round robin inside, every
/// client spreads its requests evenly over its subset, and every backend gets the same share.
///
/// When an endpoint leaves, the clients whose arcs held it take the next endpoint of the ring
/// instead, and the few clients it started (and a few whose claim the reshuffled turns move) start
/// elsewhere; the other subsets do not change. When one joins, it enters the arcs of the clients
/// started just before it, and starts a few clients of its own. A client that restarts with the
/// same identity gets the same subset.
///
/// Measured by the fleet simulation (`examples/fleet`, tower-lb's balancers over in-process
/// backends; 10,000 clients, 1,000 backends, subsets of 16): every backend is in exactly 160
/// subsets and takes exactly its share of requests; one backend leaving changes the subsets of
/// 219 clients, of which the 160 that held it must change (they open one new connection each;
/// the others were dealt anew and open 16: 1,264 new connections in all); 10 backends leaving
/// change 1,752 subsets, 10 joining 1,867; a client restarting keeps its subset.
///
/// ## Why not deterministic aperture or deterministic subsetting as published
///
/// Finagle's deterministic aperture places the backends evenly on a ring by their rank and gives
/// client `i` of `count` the arc `[i / count, i / count + width)`; Google's deterministic
/// subsetting (the SRE book) deals clients into rounds, each a shuffle of the backend list cut
/// into subsets. Both balance connections about as well as this does (the aperture exactly, with
/// up to `size + 1` backends per client; subsetting within a few percent), but neither follows a
/// membership change locally: when one backend of 1,000 leaves, the ranks of all the others shift
/// (aperture) or every round's shuffle changes (subsetting), and 5,832 (aperture) or all 10,000
/// (subsetting) of the 10,000 clients get a new subset, in the same simulation. The arcs here are
/// the aperture's, and the balanced deal is subsetting's, made stable by dealing clients to
/// endpoints rather than cutting a shuffled list.
///
/// Changing `count` deals every client anew: give clients the size of their deployment, not the
/// number of clients alive at the moment.
///
/// # Random subsets
///
/// [`Subset::random`] needs no identity: the subset is the `size` endpoints that score highest
/// for the client's seed (rendezvous hashing). Membership changes move the fewest possible
/// clients (158 when one backend of 1,000 leaves, in the simulation above, each opening one
/// connection), but how many clients pick a backend is left to chance: there, the busiest backend
/// is in 22% more subsets than the mean and the idlest in 24% fewer. Use it when clients cannot
/// know their index; give each client a stable seed (a hash of its host name) so that a restart
/// keeps its subset.
///
/// # Examples
///
/// ```
/// use tower::{service_fn, Layer, ServiceExt};
/// use tower_lb::{strategy::{RoundRobin, Subset}, BalanceLayer, Endpoints};
///
/// # tokio_test::block_on(async {
/// let backend = |i: usize| service_fn(move |_req: ()| async move {
///     Ok::<_, std::convert::Infallible>(i)
/// });
/// let set = Endpoints::from_iter((0..100).map(|i| (format!("10.0.0.{i}:80"), backend(i))));
///
/// // Client 7 of 40, talking to 4 of the 100 backends.
/// let strategy = Subset::deterministic(RoundRobin::new(), 4, 7, 40).unwrap();
/// let balance = BalanceLayer::new(strategy).layer(set.clone());
///
/// let mut called = std::collections::BTreeSet::new();
/// for _ in 0..40 {
///     called.insert(balance.clone().oneshot(()).await.unwrap());
/// }
/// assert_eq!(called.len(), 4);
/// assert_eq!(balance.stats().len(), 4);
///
/// // A backend outside the subset leaving changes nothing for this client.
/// let outside = (0..100).find(|i| !called.contains(i)).unwrap();
/// set.remove(&format!("10.0.0.{outside}:80"));
/// let stats = balance.stats();
/// assert_eq!(stats.len(), 4);
///
/// // Every client of the 40 computes its own subset; each backend is in 40 × 4 / 100 of them,
/// // give or take 4.
/// assert!(Subset::deterministic(RoundRobin::new(), 4, 40, 40).is_err());
/// # });
/// ```
#[derive(Clone)]
pub struct Subset<St> {
    inner: St,
    size: usize,
    pick: Pick,
    salt: u64,
}

/// How a client chooses its subset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pick {
    /// Client `index` of `count`: a balanced arc.
    Deterministic { index: u32, count: u32 },
    /// The endpoints that score highest for `seed`.
    Random { seed: u64 },
}

impl<St> Subset<St> {
    /// Client `index` of `count` clients of the same service balances with `inner` over an arc of
    /// `size` endpoints, dealt so that every endpoint is in as many clients' subsets as every other
    /// (see the [type docs](Subset)).
    ///
    /// # Errors
    ///
    /// [`InvalidConfig`] if `size` is 0, `count` is 0 or above 2<sup>24</sup>, or `index` is not
    /// below `count`.
    pub fn deterministic(
        inner: St,
        size: usize,
        index: usize,
        count: usize,
    ) -> Result<Self, InvalidConfig> {
        check_size(size)?;
        if !(1..=MAX_CLIENTS).contains(&count) {
            return Err(InvalidConfig::new(
                "client count",
                "between 1 and 16777216",
                count,
            ));
        }
        if index >= count {
            return Err(InvalidConfig::new(
                "client index",
                "below the client count",
                format_args!("{index} (count {count})"),
            ));
        }
        Ok(Self {
            inner,
            size,
            pick: Pick::Deterministic {
                index: index as u32,
                count: count as u32,
            },
            salt: 0,
        })
    }

    /// Balances with `inner` over the `size` endpoints that score highest for `seed`, without
    /// knowing the other clients: membership changes move the fewest clients, but endpoints are
    /// in unequal numbers of subsets (see the [type docs](Subset)).
    ///
    /// # Errors
    ///
    /// [`InvalidConfig`] if `size` is 0.
    pub fn random(inner: St, size: usize, seed: u64) -> Result<Self, InvalidConfig> {
        check_size(size)?;
        Ok(Self {
            inner,
            size,
            pick: Pick::Random { seed },
            salt: 0,
        })
    }

    /// Places the endpoints on a ring of their own for this client service: two services whose
    /// clients have the same indices then get unrelated subsets of a backend service they share,
    /// so that one backend failing does not hit client `i` of both. All the clients of one service
    /// must use the same salt (0 unless set). Finagle calls it the peer offset.
    pub fn salt(mut self, salt: u64) -> Self {
        self.salt = salt;
        self
    }

    /// The number of endpoints in a subset.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The strategy that balances over the subset.
    pub fn inner(&self) -> &St {
        &self.inner
    }
}

fn check_size(size: usize) -> Result<(), InvalidConfig> {
    if size == 0 {
        return Err(InvalidConfig::new("subset size", "at least 1", 0));
    }
    Ok(())
}

impl<St: fmt::Debug> fmt::Debug for Subset<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Subset");
        s.field("size", &self.size);
        match self.pick {
            Pick::Deterministic { index, count } => {
                s.field("index", &index).field("count", &count);
            }
            Pick::Random { seed } => {
                s.field("seed", &seed);
            }
        }
        s.field("salt", &self.salt)
            .field("inner", &self.inner)
            .finish()
    }
}

/// One endpoint of the ring: its hash, its key bytes for ties, its index in the set.
struct Point<'a> {
    hash: u64,
    key: Cow<'a, [u8]>,
    index: u32,
}

/// The ring order: by hash, then by key bytes, then by set order.
fn ring_order(a: &Point<'_>, b: &Point<'_>) -> Ordering {
    a.hash
        .cmp(&b.hash)
        .then_with(|| a.key.cmp(&b.key))
        .then_with(|| a.index.cmp(&b.index))
}

/// Seeds of the hashes derived from an endpoint's ring hash.
const TURN: u64 = 0x5bd1_e995_7d3c_8a21;
const OFFSET: u64 = 0x94d0_49bb_1331_11eb;
const SKIP: u64 = 0xbf58_476d_1ce4_e5b9;

impl<St> Subset<St> {
    /// Narrows `order` (indices into `members`) to this client's subset, in set order.
    fn select<K: EndpointKey, S>(&self, members: &[Member<K, S>], order: &mut Vec<u32>) {
        if order.len() <= self.size {
            return;
        }
        let salt = fmix64(self.salt ^ GAMMA);
        let mut ring: Vec<Point<'_>> = order
            .iter()
            .map(|&index| {
                let key = members[index as usize].key.key_bytes();
                Point {
                    hash: fmix64(fnv1a64(&key) ^ salt),
                    key,
                    index,
                }
            })
            .collect();
        let chosen: Vec<u32> = match self.pick {
            Pick::Random { seed } => {
                let seed = fmix64(seed.wrapping_mul(GAMMA) ^ salt);
                let score = |p: &Point<'_>| fmix64(p.hash ^ seed);
                ring.select_nth_unstable_by(self.size - 1, |a, b| {
                    score(a).cmp(&score(b)).then_with(|| ring_order(a, b))
                });
                ring[..self.size].iter().map(|p| p.index).collect()
            }
            Pick::Deterministic { index, count } => {
                ring.sort_unstable_by(ring_order);
                let start = dealt(&ring, index, count);
                (0..self.size)
                    .map(|step| ring[(start + step) % ring.len()].index)
                    .collect()
            }
        };
        order.clear();
        order.extend(chosen);
        order.sort_unstable();
    }
}

/// The ring position of the endpoint that claims client `index` of `count` when the endpoints of
/// `ring` deal the clients out among themselves, Maglev style: in turns (ordered by a hash of each
/// endpoint), each claims the next unclaimed client of its own permutation of `0..count`.
fn dealt(ring: &[Point<'_>], index: u32, count: u32) -> usize {
    // Each endpoint's permutation: offset, offset + skip, offset + 2 × skip, … (mod count), with
    // skip coprime with count so that it visits every client.
    struct Dealer {
        turn: u64,
        position: usize,
        next: u32,
        skip: u32,
    }
    let mut dealers: Vec<Dealer> = ring
        .iter()
        .enumerate()
        .map(|(position, point)| {
            let wide = u64::from(count);
            let skip = if count <= 2 {
                1
            } else {
                let mut skip = fmix64(point.hash ^ SKIP) % (wide - 1) + 1;
                while gcd(skip, wide) != 1 {
                    skip = skip % (wide - 1) + 1;
                }
                skip as u32
            };
            Dealer {
                turn: fmix64(point.hash ^ TURN),
                position,
                next: (fmix64(point.hash ^ OFFSET) % wide) as u32,
                skip,
            }
        })
        .collect();
    dealers.sort_unstable_by_key(|d| (d.turn, d.position));
    let mut claimed = vec![0u64; (count as usize).div_ceil(64)];
    let is_claimed =
        |claimed: &[u64], client: u32| claimed[client as usize / 64] & (1 << (client % 64)) != 0;
    loop {
        for dealer in &mut dealers {
            // Its next unclaimed client: its permutation visits every one, and one is left, since
            // the deal stops when the target is claimed.
            let mut client = dealer.next;
            while is_claimed(&claimed, client) {
                client = step(client, dealer.skip, count);
            }
            if client == index {
                return dealer.position;
            }
            claimed[client as usize / 64] |= 1 << (client % 64);
            dealer.next = step(client, dealer.skip, count);
        }
    }
}

/// `client + skip` modulo `count`, both below `count`.
#[inline]
fn step(client: u32, skip: u32, count: u32) -> u32 {
    let next = u64::from(client) + u64::from(skip);
    if next >= u64::from(count) {
        (next - u64::from(count)) as u32
    } else {
        next as u32
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl<K, St> Build<K> for Subset<St>
where
    K: EndpointKey,
    St: Build<K>,
{
    type Table = St::Table;

    fn build<S>(&self, members: &[Member<K, S>]) -> St::Table {
        self.inner.build(members)
    }

    fn arrange<S>(&self, members: &[Member<K, S>], order: &mut Vec<u32>) {
        self.select(members, order);
        self.inner.arrange(members, order);
    }

    #[inline]
    fn settled(&self, steps: usize, access: Access) {
        self.inner.settled(steps, access);
    }

    super::inner_build_methods!();
}

super::inner_start!(Subset);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::RoundRobin;

    fn members(n: usize) -> Vec<Member<String, ()>> {
        (0..n)
            .map(|i| Member::new(format!("10.1.{}.{}:80", i / 256, i % 256), (), 1))
            .collect()
    }

    fn subsets(members: &[Member<String, ()>], size: usize, count: usize) -> Vec<Vec<String>> {
        (0..count)
            .map(|index| {
                let subset = Subset::deterministic(RoundRobin::new(), size, index, count).unwrap();
                let mut order: Vec<u32> = (0..members.len() as u32).collect();
                Build::<String>::arrange(&subset, members, &mut order);
                order
                    .iter()
                    .map(|&i| members[i as usize].key.clone())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn every_endpoint_is_in_the_same_number_of_subsets_when_n_divides_the_clients() {
        let set = members(50);
        let all = subsets(&set, 8, 200);
        let mut counts = std::collections::HashMap::<&str, usize>::new();
        for subset in &all {
            assert_eq!(subset.len(), 8);
            for key in subset {
                *counts.entry(key).or_default() += 1;
            }
        }
        assert_eq!(counts.len(), 50);
        assert!(counts.values().all(|&c| c == 200 * 8 / 50), "{counts:?}");
    }

    #[test]
    fn subsets_do_not_depend_on_insertion_order() {
        let set = members(40);
        let mut reversed = members(40);
        reversed.reverse();
        let sorted = |mut v: Vec<Vec<String>>| {
            v.iter_mut().for_each(|s| s.sort());
            v
        };
        assert_eq!(
            sorted(subsets(&set, 5, 30)),
            sorted(subsets(&reversed, 5, 30))
        );
    }

    #[test]
    fn small_sets_are_kept_whole_and_counts_are_checked() {
        let set = members(3);
        assert!(subsets(&set, 5, 4).iter().all(|s| s.len() == 3));
        assert_eq!(
            Subset::deterministic((), 0, 0, 1).unwrap_err().option(),
            "subset size"
        );
        assert_eq!(
            Subset::deterministic((), 1, 0, 0).unwrap_err().option(),
            "client count"
        );
        assert_eq!(
            Subset::deterministic((), 1, 3, 3).unwrap_err().option(),
            "client index"
        );
        assert!(Subset::deterministic((), 1, 0, 1 << 24).is_ok());
        assert!(Subset::random((), 0, 1).is_err());
    }

    #[test]
    fn the_deal_gives_every_client_an_endpoint_for_any_count() {
        let set = members(7);
        for count in [1, 2, 3, 4, 6, 7, 9, 64, 65, 100] {
            for index in 0..count {
                let subset = Subset::deterministic(RoundRobin::new(), 2, index, count).unwrap();
                let mut order: Vec<u32> = (0..7).collect();
                Build::<String>::arrange(&subset, &set, &mut order);
                assert_eq!(order.len(), 2, "count {count} index {index}");
            }
        }
    }
}
