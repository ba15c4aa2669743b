//! What a failed request's error says about where it failed: in the balancer (no endpoint, no
//! key, a bad configuration), before it reached an endpoint (a refused connection), or in the
//! exchange with the endpoint. The retry policy and the status mappings read it.

use std::{error::Error, io};

use crate::error::{AllEjected, InvalidConfig, MissingKey, NoEndpoints, NotReady, Unavailable};

/// Where a request failed, as far as its error tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The endpoint set was empty ([`NoEndpoints`]).
    Empty,
    /// No endpoint was ready or eligible ([`Unavailable`]); the request was sent nowhere.
    Unavailable,
    /// Every endpoint was ejected and the balancer was told to fail rather than route over them
    /// ([`AllEjected`], the source of an [`Unavailable`]).
    AllEjected,
    /// A keyed strategy found no key in the request ([`MissingKey`]).
    MissingKey,
    /// The balancer's configuration cannot route the request ([`InvalidConfig`]).
    Config,
    /// The balancer was called without being ready ([`NotReady`]): a bug in the caller.
    NotReady,
    /// A timeout above the balancer fired (tower's `Elapsed`, tonic's `TimeoutExpired`).
    Elapsed,
    /// The endpoint could not be connected to: the request never left the client.
    Connect {
        /// The connection attempt timed out.
        timed_out: bool,
    },
    /// Any other error: the endpoint, or its connection, failed the exchange. The request may
    /// have reached the backend.
    Exchange {
        /// An I/O timeout is among its causes.
        timed_out: bool,
    },
}

/// Where the request that failed with `error` failed: the first cause in its source chain that
/// tells.
pub(crate) fn failure(error: &(dyn Error + 'static)) -> Failure {
    let timed_out = || {
        chain(error).any(|e| {
            e.downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::TimedOut)
        })
    };
    for cause in chain(error) {
        if cause.is::<NoEndpoints>() {
            return Failure::Empty;
        }
        if let Some(unavailable) = cause.downcast_ref::<Unavailable>() {
            let all_ejected = unavailable.source().is_some_and(|s| s.is::<AllEjected>());
            return if all_ejected {
                Failure::AllEjected
            } else {
                Failure::Unavailable
            };
        }
        if cause.is::<AllEjected>() {
            return Failure::AllEjected;
        }
        if cause.is::<MissingKey>() {
            return Failure::MissingKey;
        }
        if cause.is::<InvalidConfig>() {
            return Failure::Config;
        }
        if cause.is::<NotReady>() {
            return Failure::NotReady;
        }
        if cause.is::<tower::timeout::error::Elapsed>() {
            return Failure::Elapsed;
        }
        #[cfg(feature = "tonic")]
        if cause.is::<tonic::TimeoutExpired>() {
            return Failure::Elapsed;
        }
        if let Some(failure) = connect_failure(cause, timed_out) {
            return failure;
        }
    }
    Failure::Exchange {
        timed_out: timed_out(),
    }
}

/// A failure to connect, if `cause` is one: a client's connect error (whether the connection
/// timed out is told by `timed_out`, which reads the whole chain), or a refused connection.
// Without a client feature, only the refused connection is told, which needs no `timed_out`.
#[cfg_attr(
    not(any(feature = "hyper-util", feature = "tonic")),
    allow(unused_variables)
)]
fn connect_failure(cause: &(dyn Error + 'static), timed_out: impl Fn() -> bool) -> Option<Failure> {
    #[cfg(feature = "hyper-util")]
    if cause
        .downcast_ref::<hyper_util::client::legacy::Error>()
        .is_some_and(|e| e.is_connect())
    {
        return Some(Failure::Connect {
            timed_out: timed_out(),
        });
    }
    #[cfg(feature = "tonic")]
    if cause.is::<tonic::ConnectError>() {
        return Some(Failure::Connect {
            timed_out: timed_out(),
        });
    }
    let refused = cause
        .downcast_ref::<io::Error>()
        .is_some_and(|io| io.kind() == io::ErrorKind::ConnectionRefused);
    refused.then_some(Failure::Connect { timed_out: false })
}

/// `error` and its sources, outermost first.
pub(crate) fn chain<'a>(
    error: &'a (dyn Error + 'static),
) -> impl Iterator<Item = &'a (dyn Error + 'static)> + Clone {
    fn source<'a>(error: &&'a (dyn Error + 'static)) -> Option<&'a (dyn Error + 'static)> {
        (*error).source()
    }
    std::iter::successors(Some(error), source)
}

#[cfg(test)]
mod tests {
    use std::fmt;

    use super::*;
    use crate::BoxError;

    #[derive(Debug)]
    struct Wrapped(BoxError);

    impl fmt::Display for Wrapped {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapped")
        }
    }

    impl Error for Wrapped {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.0)
        }
    }

    fn of(error: impl Into<BoxError>) -> Failure {
        failure(&*error.into())
    }

    #[test]
    fn the_first_telling_cause_wins() {
        assert_eq!(of(NoEndpoints::new()), Failure::Empty);
        assert_eq!(of(Wrapped(NoEndpoints::new().into())), Failure::Empty);
        assert_eq!(of(Unavailable::new(3, None)), Failure::Unavailable);
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        // The readiness error behind `Unavailable` does not make it a connection failure.
        assert_eq!(
            of(Unavailable::new(3, Some(refused.into()))),
            Failure::Unavailable
        );
        assert_eq!(
            of(Unavailable::new(3, Some(AllEjected::new(3).into()))),
            Failure::AllEjected
        );
        assert_eq!(of(MissingKey::new()), Failure::MissingKey);
        assert_eq!(of(InvalidConfig::new("x", "y", 1)), Failure::Config);
        assert_eq!(of(NotReady::new()), Failure::NotReady);
        assert_eq!(of(tower::timeout::error::Elapsed::new()), Failure::Elapsed);
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(
            of(Wrapped(refused.into())),
            Failure::Connect { timed_out: false }
        );
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(of(reset), Failure::Exchange { timed_out: false });
        let timed_out = io::Error::from(io::ErrorKind::TimedOut);
        assert_eq!(
            of(Wrapped(timed_out.into())),
            Failure::Exchange { timed_out: true }
        );
        assert_eq!(of("anything"), Failure::Exchange { timed_out: false });
    }
}
