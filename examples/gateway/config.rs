//! The gateway's settings: strategies, key sources, backends, timeouts and ejection, checked
//! before anything starts, with typed errors.

use std::{error::Error, fmt, net::SocketAddr, str::FromStr, time::Duration};

use http::{header::HeaderName, uri::Authority};
use tower_lb::{
    error::{InvalidConfig, InvalidWeight},
    health::OutlierDetection,
    http::Origin,
};

/// The largest request body the gateway accepts by default (nginx's `client_max_body_size` is
/// 1 MiB; images are larger).
pub const MAX_BODY_BYTES: usize = 8 << 20;

/// The key used by the hash strategies for a request without one.
pub const DEFAULT_KEY: &str = "default_key";

/// The first ejection of a failing backend; doubled for every further ejection in a row.
pub const EJECT_FIRST: Duration = Duration::from_millis(250);
/// The longest ejection: an ejected backend is tried again at least this often.
pub const EJECT_MAX: Duration = Duration::from_secs(8);

/// How the gateway picks a backend for a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StrategyKind {
    /// [`RoundRobin`]: each backend in turn.
    #[default]
    RoundRobin,
    /// [`WeightedRoundRobin`]: each backend its weight's share, interleaved.
    Weighted,
    /// [`Hash`]: crc32 of the request key mod N.
    Hash,
    /// [`ConsistentHash`]: a ketama ring keyed by the request key.
    Consistent,
    /// [`Maglev`]: Maglev's lookup table keyed by the request key.
    Maglev,
    /// [`PowerOfTwoChoices`]: the less loaded of two random backends.
    P2c,
    /// [`Random`]: a weighted random backend.
    Random,
}

impl StrategyKind {
    /// Every strategy, in the order `--help` lists them.
    pub const ALL: [Self; 7] = [
        Self::RoundRobin,
        Self::Weighted,
        Self::Hash,
        Self::Consistent,
        Self::Maglev,
        Self::P2c,
        Self::Random,
    ];

    /// Whether the strategy routes by a request key.
    pub fn is_keyed(self) -> bool {
        matches!(self, Self::Hash | Self::Consistent | Self::Maglev)
    }

    /// Whether the strategy uses endpoint weights.
    pub fn uses_weights(self) -> bool {
        !matches!(self, Self::RoundRobin | Self::P2c)
    }
}

impl FromStr for StrategyKind {
    type Err = ConfigError;

    fn from_str(name: &str) -> Result<Self, ConfigError> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.to_string() == name)
            .ok_or_else(|| ConfigError::UnknownStrategy(name.to_owned()))
    }
}

impl fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::RoundRobin => "round-robin",
            Self::Weighted => "weighted",
            Self::Hash => "hash",
            Self::Consistent => "consistent",
            Self::Maglev => "maglev",
            Self::P2c => "p2c",
            Self::Random => "random",
        })
    }
}

/// Which balancer the gateway runs: tower-lb, or tower's own for comparison.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Balancer {
    /// tower-lb's [`BalanceLayer`] with the configured strategy and outlier detection.
    #[default]
    TowerLb,
    /// `tower::balance::p2c::Balance` over pending-request load, behind `tower::buffer::Buffer`
    /// (the way a tower user shares it between connections): the end-to-end benchmark's peer.
    /// No strategy, weights or outlier detection; everything else is the same.
    TowerP2c,
}

impl FromStr for Balancer {
    type Err = ConfigError;

    fn from_str(name: &str) -> Result<Self, ConfigError> {
        match name {
            "tower-lb" => Ok(Self::TowerLb),
            "tower-p2c" => Ok(Self::TowerP2c),
            other => Err(ConfigError::UnknownBalancer(other.to_owned())),
        }
    }
}

/// Where the hash strategies find a request's key: `query:NAME` or `header:NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// The first value of a query parameter.
    Query(String),
    /// The first value of a header.
    Header(HeaderName),
}

impl Default for KeySource {
    fn default() -> Self {
        Self::Query("key".to_owned())
    }
}

impl FromStr for KeySource {
    type Err = ConfigError;

    fn from_str(spec: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::BadKey(spec.to_owned());
        match spec.split_once(':') {
            Some(("query", name)) if !name.is_empty() => Ok(Self::Query(name.to_owned())),
            Some(("header", name)) => HeaderName::from_str(name)
                .map(Self::Header)
                .map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Query(name) => write!(f, "query:{name}"),
            Self::Header(name) => write!(f, "header:{name}"),
        }
    }
}

/// A backend the gateway forwards to: its endpoint key and its address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The endpoint's key in the set: what the hash strategies hash, and what [`UPSTREAM_HEADER`]
    /// shows.
    pub key: String,
    /// The backend's `host:port`.
    pub authority: Authority,
}

impl Target {
    /// A backend at `addr`, keyed by `key`.
    pub fn new(key: impl Into<String>, addr: SocketAddr) -> Self {
        let authority =
            Authority::from_str(&addr.to_string()).expect("a socket address is a valid authority");
        Self {
            key: key.into(),
            authority,
        }
    }

    /// A backend given as `http://host:port` (a trailing `/` is allowed), keyed by its
    /// `host:port` as nginx keys `server host:port;`, so that gateways configured with the same
    /// URLs hash keys alike. tower-lb's [`Origin`] checks the URL.
    pub fn from_url(url: &str) -> Result<Self, ConfigError> {
        let origin =
            Origin::try_new((), url).map_err(|e| ConfigError::BadBackend(e.to_string()))?;
        if origin.scheme() != &http::uri::Scheme::HTTP {
            return Err(ConfigError::BadBackend(format!(
                "{url}: only http:// backends are supported"
            )));
        }
        let authority = origin.authority().clone();
        Ok(Self {
            key: authority.to_string(),
            authority,
        })
    }

    /// The backend's base URL, `http://host:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.authority)
    }
}

/// The gateway's settings, apart from its backends and its server's limits.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// How backends are picked.
    pub strategy: StrategyKind,
    /// tower-lb, or tower's p2c behind a buffer for comparison.
    pub balancer: Balancer,
    /// One weight (at least 1) per backend, in order; `None` gives every backend weight 1.
    pub weights: Option<Vec<u32>>,
    /// Where the keyed strategies find the request key; requests without one use [`DEFAULT_KEY`].
    pub key: KeySource,
    /// The time limit for a response head, retries included.
    pub timeout: Duration,
    /// How many times a failed request may be sent again (see the [module docs](self)).
    pub retries: usize,
    /// Failures in a row after which a backend is ejected (at least 1).
    pub eject_after: u32,
    /// The largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// The longest wait for the next piece of a body, in either direction: a client that stalls
    /// its request body, or a backend that stalls its response body, is cut off after it.
    pub body_timeout: Duration,
    /// Speak HTTP/2 to the backends (h2c, prior knowledge) instead of HTTP/1.1.
    pub backend_http2: bool,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            strategy: StrategyKind::RoundRobin,
            balancer: Balancer::TowerLb,
            weights: None,
            key: KeySource::default(),
            timeout: Duration::from_millis(2000),
            retries: 2,
            eject_after: 1,
            max_body_bytes: MAX_BODY_BYTES,
            body_timeout: Duration::from_secs(60),
            backend_http2: false,
        }
    }
}

impl GatewayConfig {
    /// Checks the settings against the number of backends, before anything is started.
    pub fn check(&self, backends: usize) -> Result<(), ConfigError> {
        if backends == 0 {
            return Err(ConfigError::NoBackends);
        }
        if let Some(weights) = &self.weights {
            if !self.strategy.uses_weights() || self.balancer == Balancer::TowerP2c {
                return Err(ConfigError::WeightsUnused(self.strategy));
            }
            if weights.len() != backends {
                return Err(ConfigError::WeightCount {
                    weights: weights.len(),
                    backends,
                });
            }
            if let Some(position) = weights.iter().position(|&w| w == 0) {
                return Err(ConfigError::ZeroWeight {
                    backend: position + 1,
                });
            }
        }
        if self.timeout.is_zero() || self.body_timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout);
        }
        self.outlier_detection()
            .map_err(ConfigError::OutlierDetection)?;
        Ok(())
    }

    /// The balancer's passive health settings: ejection after [`eject_after`](Self::eject_after)
    /// failures in a row, for [`EJECT_FIRST`] doubling up to [`EJECT_MAX`], any share of the
    /// backends at once (a refused connection is cheap to detect, but each costs a retry), and
    /// panic mode when all are ejected.
    pub fn outlier_detection(&self) -> Result<OutlierDetection, InvalidConfig> {
        OutlierDetection::builder()
            .consecutive_failures(self.eject_after)
            .base_ejection_time(EJECT_FIRST)
            .max_ejection_time(EJECT_MAX)
            .max_ejected_share(1.0)
            .build()
    }
}

/// A configuration the gateway cannot run with.
#[derive(Debug)]
pub enum ConfigError {
    /// No backend to forward to.
    NoBackends,
    /// Two backends with the same endpoint key.
    DuplicateBackend(String),
    /// A `--backend` URL that is not `http://host:port`, and why.
    BadBackend(String),
    /// A strategy name that is not one of [`StrategyKind::ALL`].
    UnknownStrategy(String),
    /// A balancer that is not `tower-lb` or `tower-p2c`.
    UnknownBalancer(String),
    /// A key source that is not `query:NAME` or `header:NAME`.
    BadKey(String),
    /// Weights given to a strategy that ignores them.
    WeightsUnused(StrategyKind),
    /// Not one weight per backend.
    WeightCount {
        /// Weights given.
        weights: usize,
        /// Backends configured.
        backends: usize,
    },
    /// A weight of 0, for the `backend`-th backend (from 1).
    ZeroWeight {
        /// The backend's position, from 1.
        backend: usize,
    },
    /// A weight the endpoint set rejected.
    Weight(InvalidWeight),
    /// A zero timeout, which would fail every request.
    ZeroTimeout,
    /// Passive health settings the balancer rejected, such as ejection after 0 failures.
    OutlierDetection(InvalidConfig),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoBackends => f.write_str("no backends to balance"),
            Self::DuplicateBackend(key) => write!(f, "backend {key} is given twice"),
            Self::BadBackend(why) => f.write_str(why),
            Self::UnknownStrategy(name) => {
                let names: Vec<String> = StrategyKind::ALL.iter().map(|s| s.to_string()).collect();
                write!(f, "unknown strategy {name:?}: expected one of {}", names.join(", "))
            }
            Self::UnknownBalancer(name) => {
                write!(f, "unknown balancer {name:?}: expected tower-lb or tower-p2c")
            }
            Self::BadKey(spec) => write!(
                f,
                "bad key source {spec:?}: expected query:NAME or header:NAME"
            ),
            Self::WeightsUnused(strategy) => write!(
                f,
                "weights have no effect with the {strategy} strategy or tower's balancer"
            ),
            Self::WeightCount { weights, backends } => write!(
                f,
                "{weights} weights for {backends} backends: give one weight per backend"
            ),
            Self::ZeroWeight { backend } => write!(
                f,
                "backend {backend} has weight 0: weights must be at least 1 (remove a backend instead)"
            ),
            Self::Weight(error) => error.fmt(f),
            Self::ZeroTimeout => f.write_str("timeouts must be at least 1 ms"),
            Self::OutlierDetection(error) => error.fmt(f),
        }
    }
}

impl Error for ConfigError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::Weight(error) => Some(error),
            Self::OutlierDetection(error) => Some(error),
            _ => None,
        }
    }
}
