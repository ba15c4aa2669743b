//! Request keys: what keyed strategies hash to route a request. (Being written.)

use std::borrow::Cow;

/// Extracts the routing key of a request.
pub trait RequestKey<Req> {
    /// The key's bytes, or `None` when the request carries no key.
    fn key<'a>(&'a self, request: &'a Req) -> Option<Cow<'a, [u8]>>;
}
