//! Request keys: the bytes a keyed strategy hashes to route a request.
//!
//! Keyed strategies (crc32 `Hash`, `ConsistentHash`) send every request with the same key to the
//! same endpoint. A [`RequestKey`] takes that key from the request. This module has ready-made
//! extractors for [`http::Request`]s, with any body type; any closure `Fn(&Req) -> Option<T>`
//! with `T: AsRef<[u8]>` is an extractor too, for other request types or keys of your own.
//!
//! | extractor | key | borrowed from the request | `None` when |
//! |---|---|---|---|
//! | [`query(name)`](query) | the first value of query parameter `name`, decoded as Go's `r.URL.Query().Get(name)` does | unless the value contains `%` or `+` | no query string, or no valid pair named `name` |
//! | [`header(name)`](header) | the bytes of the first value of header `name` | always | the header is missing |
//! | [`path()`](path) | the URI path as sent, not percent-decoded | always | never |
//! | [`client_ip()`](client_ip) | the client's IP address from a [`SocketAddr`] extension: 4 octets for IPv4 (and IPv4-mapped IPv6), 16 for IPv6 | never: a 4- or 16-byte copy | the extension is missing |
//! | [`client_ip_with(f)`](client_ip_with) | the same, from the IP that `f` reads from an extension of your type `T` | never: a 4- or 16-byte copy | no `T` extension |
//! | a closure | the bytes it returns | never: a copy | the closure returns `None` |
//! | [`extractor.or(default)`](RequestKey::or) | the extractor's key, or `default` when it is missing or empty | as the extractor does | never |
//!
//! A strategy given a key extractor without a default fails requests that have no key with
//! [`MissingKey`](crate::error::MissingKey); add a default with [`or`](RequestKey::or) to route
//! them to the default key's endpoint instead, as the Go handler
//! `if key == "" { key = "default_key" }` does.
//!
//! # Examples
//!
//! ```
//! use std::borrow::Cow;
//! use std::net::SocketAddr;
//!
//! use http::{header::HeaderName, Request};
//! use tower_lb::key::{self, RequestKey};
//!
//! let request = Request::builder()
//!     .uri("/img?key=a%20b&size=large")
//!     .header("x-user-id", "42")
//!     .extension(SocketAddr::from(([192, 0, 2, 7], 51234)))
//!     .body(())
//!     .unwrap();
//!
//! // Query values are percent-decoded; undecoded values borrow from the request.
//! assert_eq!(key::query("key").key(&request).as_deref(), Some(&b"a b"[..]));
//! assert!(matches!(key::query("size").key(&request), Some(Cow::Borrowed(b"large"))));
//! assert_eq!(key::query("user").key(&request), None);
//!
//! let user_id = key::header(HeaderName::from_static("x-user-id"));
//! assert_eq!(user_id.key(&request).as_deref(), Some(&b"42"[..]));
//! assert_eq!(key::path().key(&request).as_deref(), Some(&b"/img"[..]));
//! assert_eq!(key::client_ip().key(&request).as_deref(), Some(&[192, 0, 2, 7][..]));
//!
//! // A default for requests without the parameter, or with an empty one.
//! let with_default = key::query("user").or("default_key");
//! assert_eq!(with_default.key(&request).as_deref(), Some(&b"default_key"[..]));
//!
//! // Closures are extractors too.
//! let method = |request: &Request<()>| Some(request.method().as_str().to_owned());
//! assert_eq!(method.key(&request).as_deref(), Some(&b"GET"[..]));
//! ```
//!
//! # Differences from Go's `r.URL.Query().Get`
//!
//! [`query`] follows Go's `url.ParseQuery` (Go 1.17 and later) pair by pair. What remains
//! different comes from the request, not the decoding:
//!
//! - **Missing and empty are told apart.** Go returns `""` for both; [`query`] returns `None` for a
//!   missing parameter and an empty key for `?key=` or `?key`. [`or`](RequestKey::or) treats both
//!   alike, as the Go handler does.
//! - **Fragments.** [`http::Uri`] drops a `#fragment`, where Go's server keeps it in `RawQuery`:
//!   for `?key=a#b` Go's key is `a#b` and ours is `a`. Clients do not send fragments.
//! - **What reaches the extractor.** [`http::Uri`] accepts request targets of at most 65,534 bytes
//!   and rejects some bytes in the query that Go's server accepts unescaped (`"`, `<`, `>`);
//!   such requests are refused before they reach a balancer.
//! - **No parameter cap.** Go 1.24.12, 1.25.6 and later stop at 10,000 parameters (GODEBUG
//!   `urlmaxqueryparams`), and `Query()` then returns no values at all. [`query`] has no cap: it
//!   scans the query once, allocating only to decode the value it returns, and the URI length
//!   limit bounds that scan.

use std::{
    borrow::Cow,
    fmt,
    marker::PhantomData,
    net::{IpAddr, SocketAddr},
};

use http::{HeaderName, Request};

/// Extracts the routing key of a request.
///
/// Implemented by the extractors of this module for [`http::Request`], by [`Or`], and by every
/// closure `Fn(&Req) -> Option<T>` where `T: AsRef<[u8]>`.
///
/// Closures copy their key into a new buffer, because the bytes they return cannot borrow from the
/// request. The ready-made extractors borrow from the request instead, and allocate only to
/// percent-decode a query value or to hold the few octets of an IP address.
///
/// # Examples
///
/// ```
/// use http::Request;
/// use tower_lb::key::RequestKey;
///
/// // The first path segment, for a request type of your own or one this module does not cover.
/// let tenant = |request: &Request<()>| {
///     request.uri().path().split('/').nth(1).map(str::to_owned)
/// };
///
/// let request = Request::builder().uri("/acme/orders").body(()).unwrap();
/// assert_eq!(tenant.key(&request).as_deref(), Some(&b"acme"[..]));
/// ```
pub trait RequestKey<Req> {
    /// The key's bytes, or `None` when the request carries no key.
    fn key<'a>(&'a self, request: &'a Req) -> Option<Cow<'a, [u8]>>;

    /// Uses `default` when the request has no key or an empty one (as the Go handler
    /// `if key == "" { key = "default_key" }` does).
    ///
    /// The extractors of this module also have `or` as an inherent method, so
    /// `key::query("key").or("default_key")` needs no type annotations.
    ///
    /// # Examples
    ///
    /// ```
    /// use http::Request;
    /// use tower_lb::key::RequestKey;
    ///
    /// let user = |request: &Request<()>| request.headers().get("x-user").map(|v| v.as_bytes().to_vec());
    /// let user = user.or("anonymous");
    ///
    /// let request = Request::builder().header("x-user", "").body(()).unwrap();
    /// assert_eq!(user.key(&request).as_deref(), Some(&b"anonymous"[..]));
    /// ```
    fn or<D: AsRef<[u8]>>(self, default: D) -> Or<Self>
    where
        Self: Sized,
    {
        Or::new(self, default.as_ref())
    }
}

impl<Req, F, T> RequestKey<Req> for F
where
    F: Fn(&Req) -> Option<T>,
    T: AsRef<[u8]>,
{
    /// Calls the closure and copies the bytes it returns.
    fn key<'a>(&'a self, request: &'a Req) -> Option<Cow<'a, [u8]>> {
        self(request).map(|key| Cow::Owned(key.as_ref().to_vec()))
    }
}

/// Defines the inherent `or`, which spares callers the type annotation that the trait method
/// needs: an extractor implements `RequestKey<Request<B>>` for every body type `B`.
macro_rules! inherent_or {
    () => {
        /// Uses `default` when the request has no key or an empty one; see [`RequestKey::or`].
        pub fn or<D: AsRef<[u8]>>(self, default: D) -> Or<Self> {
            Or::new(self, default.as_ref())
        }
    };
}

/// A key extractor with a default key, made by [`RequestKey::or`].
///
/// Returns the inner extractor's key when it is present and not empty, and the default otherwise,
/// so it never returns `None`. The default is borrowed from the `Or`, never copied per request.
///
/// # Examples
///
/// ```
/// use http::Request;
/// use tower_lb::key::{self, RequestKey};
///
/// let key = key::query("key").or("default_key");
/// assert_eq!(key.default_key(), b"default_key");
///
/// for uri in ["/img", "/img?key=", "/img?key"] {
///     let request = Request::builder().uri(uri).body(()).unwrap();
///     assert_eq!(key.key(&request).as_deref(), Some(&b"default_key"[..]));
/// }
///
/// let request = Request::builder().uri("/img?key=cat").body(()).unwrap();
/// assert_eq!(key.key(&request).as_deref(), Some(&b"cat"[..]));
/// ```
#[derive(Clone)]
pub struct Or<E> {
    inner: E,
    default: Box<[u8]>,
}

impl<E> Or<E> {
    fn new(inner: E, default: &[u8]) -> Self {
        Self {
            inner,
            default: default.into(),
        }
    }

    /// The key used when the request has none.
    pub fn default_key(&self) -> &[u8] {
        &self.default
    }

    /// The inner extractor.
    pub fn get_ref(&self) -> &E {
        &self.inner
    }
}

impl<Req, E> RequestKey<Req> for Or<E>
where
    E: RequestKey<Req>,
{
    fn key<'a>(&'a self, request: &'a Req) -> Option<Cow<'a, [u8]>> {
        match self.inner.key(request) {
            Some(key) if !key.is_empty() => Some(key),
            _ => Some(Cow::Borrowed(&self.default)),
        }
    }
}

impl<E: fmt::Debug> fmt::Debug for Or<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Or")
            .field("inner", &self.inner)
            .field("default", &BytesDebug(&self.default))
            .finish()
    }
}

/// Shows bytes as a string when they are UTF-8, as a byte list otherwise.
struct BytesDebug<'a>(&'a [u8]);

impl fmt::Debug for BytesDebug<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(self.0) {
            Ok(s) => fmt::Debug::fmt(s, f),
            Err(_) => fmt::Debug::fmt(self.0, f),
        }
    }
}

/// Keys requests by a query parameter; made by [`query`].
#[derive(Clone, Debug)]
pub struct Query {
    name: Box<str>,
}

/// Keys requests by the first value of the query parameter `name`, decoded as Go's
/// `r.URL.Query().Get(name)` decodes it.
///
/// The query string is split into pairs at `&`. A pair that contains `;` is skipped, as Go 1.17
/// and later skip it. Each pair is split at its first `=` (a pair without `=` has an empty value),
/// and both halves are unescaped by Go's `QueryUnescape` rules: `+` is a space and `%XX` is the
/// byte with hex value `XX`, in either case. A pair with a malformed escape (a `%` not followed by
/// two hex digits) in its name or value is skipped, and the search goes on to the next pair. The
/// first remaining pair whose decoded name is `name` gives the key. Decoded bytes need not be
/// UTF-8.
///
/// The key borrows from the request unless the value contains `%` or `+`; such values are decoded
/// into a new buffer. The key is `None` when the URI has no query string or no such parameter, and
/// empty when the parameter is present without a value (`?key=` or `?key`);
/// [`or`](Query::or) gives both a default. See the [module docs](self) for the remaining
/// differences from Go.
///
/// # Examples
///
/// ```
/// use http::Request;
/// use tower_lb::key::{self, RequestKey};
///
/// let key = key::query("key");
/// let key_of = |uri: &str| {
///     let request = Request::builder().uri(uri).body(()).unwrap();
///     key.key(&request).map(|key| key.into_owned())
/// };
///
/// assert_eq!(key_of("/img?key=a+b%21"), Some(b"a b!".to_vec()));
/// assert_eq!(key_of("/img?key=first&key=second"), Some(b"first".to_vec()));
/// assert_eq!(key_of("/img?key=%zz&key=valid"), Some(b"valid".to_vec()));
/// assert_eq!(key_of("/img?k%65y=decoded-name"), Some(b"decoded-name".to_vec()));
/// assert_eq!(key_of("/img?key="), Some(Vec::new()));
/// assert_eq!(key_of("/img?other=1"), None);
/// assert_eq!(key_of("/img"), None);
/// ```
pub fn query(name: &str) -> Query {
    Query { name: name.into() }
}

impl Query {
    /// The name of the query parameter.
    pub fn name(&self) -> &str {
        &self.name
    }

    inherent_or!();
}

impl<B> RequestKey<Request<B>> for Query {
    fn key<'a>(&'a self, request: &'a Request<B>) -> Option<Cow<'a, [u8]>> {
        query_value(request.uri().query()?.as_bytes(), self.name.as_bytes())
    }
}

/// The first value of `name` in `query`, following Go's `parseQuery` and `Values.Get`.
fn query_value<'q>(query: &'q [u8], name: &[u8]) -> Option<Cow<'q, [u8]>> {
    query
        .split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty() && !pair.contains(&b';'))
        .filter_map(|pair| {
            let (key, value) = match pair.iter().position(|&b| b == b'=') {
                Some(eq) => (&pair[..eq], &pair[eq + 1..]),
                None => (pair, &[][..]),
            };
            if unescapes_to(key, name) {
                unescape(value)
            } else {
                None
            }
        })
        .next()
}

/// Whether `raw` is well formed and unescapes to exactly `expected`, without allocating.
fn unescapes_to(raw: &[u8], expected: &[u8]) -> bool {
    let mut expected = expected.iter();
    let mut at = 0;
    while at < raw.len() {
        let Some((byte, len)) = unescape_one(raw, at) else {
            return false;
        };
        if expected.next() != Some(&byte) {
            return false;
        }
        at += len;
    }
    expected.next().is_none()
}

/// `raw` unescaped by Go's `QueryUnescape` rules, borrowed when there is nothing to unescape;
/// `None` when an escape is malformed.
fn unescape(raw: &[u8]) -> Option<Cow<'_, [u8]>> {
    if !raw.iter().any(|&b| b == b'%' || b == b'+') {
        return Some(Cow::Borrowed(raw));
    }
    let mut decoded = Vec::with_capacity(raw.len());
    let mut at = 0;
    while at < raw.len() {
        let (byte, len) = unescape_one(raw, at)?;
        decoded.push(byte);
        at += len;
    }
    Some(Cow::Owned(decoded))
}

/// The byte that starts at `raw[at]` once unescaped, and how many bytes of `raw` it used; `None`
/// for a `%` not followed by two hex digits.
fn unescape_one(raw: &[u8], at: usize) -> Option<(u8, usize)> {
    match raw[at] {
        b'%' => {
            let high = hex_value(*raw.get(at + 1)?)?;
            let low = hex_value(*raw.get(at + 2)?)?;
            Some((high << 4 | low, 3))
        }
        b'+' => Some((b' ', 1)),
        byte => Some((byte, 1)),
    }
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// Keys requests by a header; made by [`header`].
#[derive(Clone, Debug)]
pub struct Header {
    name: HeaderName,
}

/// Keys requests by the bytes of the first value of header `name`.
///
/// The key borrows from the request, as sent: it is not trimmed or decoded, and need not be
/// UTF-8. It is `None` when the header is missing and empty when its value is.
///
/// # Examples
///
/// ```
/// use http::{header::HeaderName, Request};
/// use tower_lb::key::{self, RequestKey};
///
/// let key = key::header(HeaderName::from_static("x-session"));
///
/// let request = Request::builder()
///     .header("x-session", "s1")
///     .header("x-session", "s2")
///     .body(())
///     .unwrap();
/// assert_eq!(key.key(&request).as_deref(), Some(&b"s1"[..]));
///
/// let request = Request::builder().body(()).unwrap();
/// assert_eq!(key.key(&request), None);
/// ```
pub fn header(name: HeaderName) -> Header {
    Header { name }
}

impl Header {
    /// The name of the header.
    pub fn name(&self) -> &HeaderName {
        &self.name
    }

    inherent_or!();
}

impl<B> RequestKey<Request<B>> for Header {
    fn key<'a>(&'a self, request: &'a Request<B>) -> Option<Cow<'a, [u8]>> {
        let value = request.headers().get(&self.name)?;
        Some(Cow::Borrowed(value.as_bytes()))
    }
}

/// Keys requests by their path; made by [`path`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Path {
    _priv: (),
}

/// Keys requests by the path of the request URI, as sent.
///
/// The path is not percent-decoded: `/a%20b` and `/a b` are different keys, as with Go's
/// `r.URL.EscapedPath()` (Go's `r.URL.Path` is decoded). The query is not part of the key. The key
/// borrows from the request and is never `None`; it is empty only for URIs without a path, such as
/// the authority form of `CONNECT`.
///
/// # Examples
///
/// ```
/// use http::Request;
/// use tower_lb::key::{self, RequestKey};
///
/// let request = Request::builder().uri("/images/a%20b.png?size=2").body(()).unwrap();
/// assert_eq!(key::path().key(&request).as_deref(), Some(&b"/images/a%20b.png"[..]));
/// ```
pub fn path() -> Path {
    Path { _priv: () }
}

impl Path {
    inherent_or!();
}

impl<B> RequestKey<Request<B>> for Path {
    fn key<'a>(&'a self, request: &'a Request<B>) -> Option<Cow<'a, [u8]>> {
        Some(Cow::Borrowed(request.uri().path().as_bytes()))
    }
}

/// Keys requests by the client's IP address; made by [`client_ip`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ClientIp {
    _priv: (),
}

/// Keys requests by the client's IP address, read from a [`SocketAddr`] request extension.
///
/// The key is the address's octets: 4 for IPv4 and 16 for IPv6. An IPv4-mapped IPv6 address
/// (`::ffff:a.b.c.d`) gives the 4 octets of `a.b.c.d`, so a client reaching a dual-stack listener
/// maps to the same endpoint as over IPv4. The port is not part of the key: it changes with every
/// connection, and would scatter one client's requests over the endpoints.
///
/// The key is `None` when the request has no `SocketAddr` extension; the server or a middleware
/// must insert it. For a framework's own extension type, such as axum's `ConnectInfo`, use
/// [`client_ip_with`].
///
/// The octets are copied into a small buffer for each request: `std` has no stable way to borrow
/// an IP address's octets, and `unsafe` is not used.
///
/// # Examples
///
/// ```
/// use std::net::{Ipv4Addr, SocketAddr};
///
/// use http::Request;
/// use tower_lb::key::{self, RequestKey};
///
/// let v4 = SocketAddr::from((Ipv4Addr::new(203, 0, 113, 9), 40001));
/// let mapped = SocketAddr::from((Ipv4Addr::new(203, 0, 113, 9).to_ipv6_mapped(), 40002));
///
/// let key_of = |addr: SocketAddr| {
///     let request = Request::builder().extension(addr).body(()).unwrap();
///     key::client_ip().key(&request).map(|key| key.into_owned())
/// };
/// assert_eq!(key_of(v4), Some(vec![203, 0, 113, 9]));
/// assert_eq!(key_of(mapped), key_of(v4));
/// ```
pub fn client_ip() -> ClientIp {
    ClientIp { _priv: () }
}

impl ClientIp {
    inherent_or!();
}

impl<B> RequestKey<Request<B>> for ClientIp {
    fn key<'a>(&'a self, request: &'a Request<B>) -> Option<Cow<'a, [u8]>> {
        let addr = request.extensions().get::<SocketAddr>()?;
        Some(ip_key(addr.ip()))
    }
}

/// Keys requests by a client IP address read from an extension of type `T`; made by
/// [`client_ip_with`].
pub struct ClientIpWith<T, F> {
    ip: F,
    // `fn() -> T` keeps the extractor `Send` and `Sync` whatever `T` is: it holds no `T`.
    _extension: PhantomData<fn() -> T>,
}

/// Keys requests by the client IP address that `f` reads from a request extension of type `T`.
///
/// Use it with a framework's connection info type. With axum's `ConnectInfo`:
///
/// ```text
/// key::client_ip_with(|c: &ConnectInfo<SocketAddr>| c.0.ip())
/// ```
///
/// The key is the one [`client_ip`] makes from the address `f` returns: its octets, with
/// IPv4-mapped IPv6 addresses as IPv4, and no port. It is `None` when the request has no `T`
/// extension.
///
/// # Examples
///
/// ```
/// use std::net::{IpAddr, Ipv6Addr};
///
/// use http::Request;
/// use tower_lb::key::{self, RequestKey};
///
/// // A connection info type of your own, inserted by the server for each connection.
/// #[derive(Clone)]
/// struct Peer {
///     ip: IpAddr,
/// }
///
/// let key = key::client_ip_with(|peer: &Peer| peer.ip);
///
/// let request = Request::builder()
///     .extension(Peer { ip: Ipv6Addr::LOCALHOST.into() })
///     .body(())
///     .unwrap();
/// assert_eq!(key.key(&request).as_deref(), Some(&Ipv6Addr::LOCALHOST.octets()[..]));
/// ```
pub fn client_ip_with<T, F>(f: F) -> ClientIpWith<T, F>
where
    T: Send + Sync + 'static,
    F: Fn(&T) -> IpAddr,
{
    ClientIpWith {
        ip: f,
        _extension: PhantomData,
    }
}

impl<T, F> ClientIpWith<T, F> {
    inherent_or!();
}

impl<T, F: Clone> Clone for ClientIpWith<T, F> {
    fn clone(&self) -> Self {
        Self {
            ip: self.ip.clone(),
            _extension: PhantomData,
        }
    }
}

impl<T, F> fmt::Debug for ClientIpWith<T, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIpWith")
            .field("extension", &std::any::type_name::<T>())
            .finish_non_exhaustive()
    }
}

impl<B, T, F> RequestKey<Request<B>> for ClientIpWith<T, F>
where
    T: Send + Sync + 'static,
    F: Fn(&T) -> IpAddr,
{
    fn key<'a>(&'a self, request: &'a Request<B>) -> Option<Cow<'a, [u8]>> {
        let extension = request.extensions().get::<T>()?;
        Some(ip_key((self.ip)(extension)))
    }
}

/// The octets of `ip`, with IPv4-mapped IPv6 addresses as IPv4.
fn ip_key(ip: IpAddr) -> Cow<'static, [u8]> {
    let v4 = match ip {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4,
            None => return Cow::Owned(v6.octets().to_vec()),
        },
    };
    Cow::Owned(v4.octets().to_vec())
}
