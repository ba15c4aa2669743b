//! Where an endpoint runs: its zone and its priority tier, for the strategies that route by place.

use std::{fmt, sync::Arc};

/// Where an endpoint runs: the zone it is in (if known) and its priority tier.
///
/// [`ZoneAware`](crate::strategy::ZoneAware) keeps requests in the client's own zone as far as
/// the zones' capacities allow; [`Tiers`](crate::strategy::Tiers) sends everything to tier 0 while
/// it is healthy and spills to tier 1, 2, … as it is not. An endpoint without a locality is in no
/// zone and in tier 0; the other strategies ignore localities.
///
/// A locality is set when an endpoint is inserted ([`Endpoints::insert_located`]), changed with
/// [`Endpoints::set_locality`], or carried by discovery ([`Update::InsertLocated`] and
/// [`Update::SetLocality`]); replacing an endpoint's service or weight keeps its locality. Zones are
/// names compared byte for byte (`"us-east-1a"`, a Kubernetes `topology.kubernetes.io/zone` label);
/// clones share the name.
///
/// [`Endpoints::insert_located`]: crate::Endpoints::insert_located
/// [`Endpoints::set_locality`]: crate::Endpoints::set_locality
/// [`Update::InsertLocated`]: crate::discover::Update::InsertLocated
/// [`Update::SetLocality`]: crate::discover::Update::SetLocality
///
/// # Examples
///
/// ```
/// use tower_lb::{Endpoints, Locality};
///
/// let set = Endpoints::new();
/// set.insert_located("10.0.1.7:80", (), Locality::new().with_zone("eu-west-1a"));
/// // nginx's `backup` server: tier 1, used only as tier 0 runs short.
/// set.insert_located("10.0.9.1:80", (), Locality::backup().with_zone("eu-west-1b"));
///
/// let backup = set.locality("10.0.9.1:80").unwrap();
/// assert_eq!((backup.zone(), backup.tier()), (Some("eu-west-1b"), 1));
/// assert_eq!(set.locality("10.0.1.7:80").unwrap().tier(), 0);
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Locality {
    zone: Option<Arc<str>>,
    tier: u8,
}

impl Locality {
    /// No zone, tier 0: where an endpoint inserted without a locality is.
    pub fn new() -> Self {
        Self::default()
    }

    /// Tier 1, no zone: a backup endpoint in nginx's sense, which takes requests only as tier 0
    /// runs short of healthy endpoints.
    pub fn backup() -> Self {
        Self::new().with_tier(1)
    }

    /// This locality in zone `zone`.
    pub fn with_zone(mut self, zone: impl Into<Arc<str>>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// This locality in priority tier `tier`: 0 is the first used, 1 takes what 0 cannot, and so
    /// on.
    pub fn with_tier(mut self, tier: u8) -> Self {
        self.tier = tier;
        self
    }

    /// The zone, if known.
    pub fn zone(&self) -> Option<&str> {
        self.zone.as_deref()
    }

    /// The priority tier: 0 first.
    pub fn tier(&self) -> u8 {
        self.tier
    }
}

impl fmt::Debug for Locality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Locality")
            .field("zone", &self.zone())
            .field("tier", &self.tier)
            .finish()
    }
}
