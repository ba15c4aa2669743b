//! Fuzzes the request key extractors of `tower_lb::key` with requests built from arbitrary bytes
//! (request target, query string, header name and values, client address, default key).
//!
//! No extractor may panic, and each must give what its documentation says, checked against a
//! plain reference written here: the query parameter as Go's `url.ParseQuery` and `Values.Get`
//! decode it (borrowed from the request unless the value holds `%` or `+`), the first header
//! value's bytes, the undecoded path, the client address's octets (IPv4-mapped IPv6 as IPv4), and
//! `or`'s default for a missing or empty key.
#![no_main]

use std::{
    borrow::Cow,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use arbitrary::Arbitrary;
use http::{
    header::{HeaderName, HeaderValue},
    Request, Uri,
};
use libfuzzer_sys::fuzz_target;
use tower_lb::key::{self, RequestKey};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    /// The request target; with `query`, a fixed path and this query string instead.
    target: &'a [u8],
    query: Option<&'a [u8]>,
    /// The query parameter looked up.
    name: &'a str,
    header_name: &'a [u8],
    header_values: Vec<&'a [u8]>,
    client: Option<Client>,
    default: &'a [u8],
}

#[derive(Arbitrary, Debug)]
enum Client {
    V4([u8; 4], u16),
    V6([u8; 16], u16),
    /// An IPv4-mapped IPv6 address, as a dual-stack listener reports IPv4 clients.
    Mapped([u8; 4], u16),
}

impl Client {
    fn addr(&self) -> SocketAddr {
        match *self {
            Client::V4(ip, port) => SocketAddr::from((Ipv4Addr::from(ip), port)),
            Client::V6(ip, port) => SocketAddr::from((Ipv6Addr::from(ip), port)),
            Client::Mapped(ip, port) => {
                SocketAddr::from((Ipv4Addr::from(ip).to_ipv6_mapped(), port))
            }
        }
    }
}

/// A connection info type of the application's own, for `client_ip_with`.
#[derive(Clone)]
struct Peer(IpAddr);

fuzz_target!(|input: Input<'_>| {
    let Some(uri) = uri(&input) else {
        return;
    };
    let header_name = HeaderName::from_bytes(input.header_name)
        .unwrap_or_else(|_| HeaderName::from_static("x-key"));
    let mut builder = Request::builder().uri(uri);
    for value in &input.header_values {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            builder = builder.header(header_name.clone(), value);
        }
    }
    if let Some(client) = &input.client {
        builder = builder
            .extension(client.addr())
            .extension(Peer(client.addr().ip()));
    }
    let Ok(request) = builder.body(()) else {
        return;
    };
    let default = input.default;

    // Query parameter.
    let query = key::query(input.name);
    let expected = reference_query(request.uri().query(), input.name.as_bytes());
    let got = query.key(&request);
    assert_eq!(
        got.as_deref(),
        expected.as_ref().map(|(_, decoded)| decoded.as_slice()),
        "query {:?} in {:?}",
        input.name,
        request.uri()
    );
    if let (Some(got), Some((raw, _))) = (&got, &expected) {
        let plain = !raw.contains(&b'%') && !raw.contains(&b'+');
        assert_eq!(
            matches!(got, Cow::Borrowed(_)),
            plain,
            "a value borrows from the request exactly when it has nothing to decode"
        );
    }
    let with_default = query.or(default);
    assert_eq!(
        with_default.key(&request).as_deref(),
        Some(or_default(expected.map(|(_, decoded)| decoded), default).as_slice())
    );
    assert_eq!(with_default.default_key(), default);
    let _ = format!("{with_default:?}");

    // Header.
    let header = key::header(header_name.clone());
    let first = request
        .headers()
        .get(&header_name)
        .map(HeaderValue::as_bytes);
    assert_eq!(header.key(&request).as_deref(), first);
    assert_eq!(
        header.or(default).key(&request).as_deref(),
        Some(or_default(first.map(<[u8]>::to_vec), default).as_slice())
    );

    // Path.
    let path_key = key::path();
    let path = path_key.key(&request);
    assert_eq!(path.as_deref(), Some(request.uri().path().as_bytes()));
    assert!(matches!(path, Some(Cow::Borrowed(_))));

    // Client address.
    let expected_ip = input.client.as_ref().map(|c| octets(c.addr().ip()));
    assert_eq!(
        key::client_ip().key(&request).map(Cow::into_owned),
        expected_ip
    );
    let with = key::client_ip_with(|peer: &Peer| peer.0);
    assert_eq!(with.key(&request).map(Cow::into_owned), expected_ip);

    // A closure, through the trait's `or`.
    let closure = (|r: &Request<()>| r.uri().query().map(str::to_owned)).or(default);
    let raw_query = request.uri().query().map(|q| q.as_bytes().to_vec());
    assert_eq!(
        closure.key(&request).as_deref(),
        Some(or_default(raw_query, default).as_slice())
    );
});

/// The request URI: the target as given, or with every byte outside a conservative set
/// percent-encoded when `http` refuses it as is. `%`, `+`, `&`, `;` and `=` are always kept raw,
/// so malformed escapes and odd pairs still reach the extractors.
fn uri(input: &Input<'_>) -> Option<Uri> {
    let target: Vec<u8> = match input.query {
        Some(query) => [b"/p?".as_slice(), query].concat(),
        None => input.target.to_vec(),
    };
    if let Ok(uri) = Uri::try_from(target.as_slice()) {
        return Some(uri);
    }
    let mut escaped = Vec::with_capacity(target.len() * 3);
    for &b in &target {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b) {
            escaped.push(b);
        } else {
            escaped.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    Uri::try_from(escaped.as_slice()).ok()
}

/// Go's `url.ParseQuery(query).Get(name)` (Go 1.17 and later), with the value's raw bytes: pairs
/// split at `&`, empty pairs and pairs with `;` skipped, name and value split at the first `=` and
/// unescaped, pairs with a malformed escape skipped; the first pair named `name` wins.
fn reference_query(query: Option<&str>, name: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    for pair in query?.as_bytes().split(|&b| b == b'&') {
        if pair.is_empty() || pair.contains(&b';') {
            continue;
        }
        let (raw_name, raw_value) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &[][..]),
        };
        let (Some(decoded_name), Some(value)) = (go_unescape(raw_name), go_unescape(raw_value))
        else {
            continue;
        };
        if decoded_name == name {
            return Some((raw_value.to_vec(), value));
        }
    }
    None
}

/// Go's `QueryUnescape`: `+` is a space, `%XX` the byte with hex value `XX`; `None` for a `%` not
/// followed by two hex digits.
fn go_unescape(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'%' => {
                let digits = raw.get(i + 1..i + 3)?;
                if !digits.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                let text = std::str::from_utf8(digits).ok()?;
                out.push(u8::from_str_radix(text, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

fn or_default(key: Option<Vec<u8>>, default: &[u8]) -> Vec<u8> {
    match key {
        Some(key) if !key.is_empty() => key,
        _ => default.to_vec(),
    }
}

/// The address's octets: 4 for IPv4 and for IPv6 of the form `::ffff:a.b.c.d`, else 16.
fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            if o[..10].iter().all(|&b| b == 0) && o[10..12] == [0xff, 0xff] {
                o[12..].to_vec()
            } else {
                o.to_vec()
            }
        }
    }
}
