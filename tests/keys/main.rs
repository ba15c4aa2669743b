//! Request key extractors: query decoding as Go's `r.URL.Query().Get`, headers, paths, client IPs,
//! closures and defaults.

use std::{
    borrow::Cow,
    fmt::Debug,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use http::{header::HeaderName, HeaderValue, Request};
use proptest::{prelude::*, test_runner::FileFailurePersistence};
use tower_lb::key::{self, RequestKey};

fn get(uri: &str) -> Request<()> {
    Request::builder().uri(uri).body(()).unwrap()
}

/// The key `extractor` takes from `request`, owned so that it outlives both.
fn key_of<E: RequestKey<Request<()>>>(extractor: &E, request: &Request<()>) -> Option<Vec<u8>> {
    extractor.key(request).map(Cow::into_owned)
}

/// The key of query parameter `name` in a request for `uri`.
fn query_key(uri: &str, name: &str) -> Option<Vec<u8>> {
    key_of(&key::query(name), &get(uri))
}

fn bytes(s: &str) -> Option<Vec<u8>> {
    Some(s.as_bytes().to_vec())
}

fn with_addr(addr: SocketAddr) -> Request<()> {
    Request::builder().extension(addr).body(()).unwrap()
}

/// Go's `QueryUnescape`, transcribed: validate every escape, then decode.
fn go_query_unescape(s: &str) -> Result<Vec<u8>, ()> {
    let s = s.as_bytes();
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            if i + 2 >= s.len() || !s[i + 1].is_ascii_hexdigit() || !s[i + 2].is_ascii_hexdigit() {
                return Err(());
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'%' => {
                let hex = std::str::from_utf8(&s[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Go's `url.ParseQuery` followed by `Values.Get`, transcribed statement by statement, as the
/// reference for the property tests: it allocates freely and decodes every pair.
fn go_query_get(raw_query: &str, name: &str) -> Option<Vec<u8>> {
    let mut values: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut query = raw_query;
    while !query.is_empty() {
        let key;
        (key, query) = query.split_once('&').unwrap_or((query, ""));
        if key.contains(';') || key.is_empty() {
            continue;
        }
        let (key, value) = key.split_once('=').unwrap_or((key, ""));
        let Ok(key) = go_query_unescape(key) else {
            continue;
        };
        let Ok(value) = go_query_unescape(value) else {
            continue;
        };
        values.push((key, value));
    }
    values
        .into_iter()
        .find(|(key, _)| key == name.as_bytes())
        .map(|(_, value)| value)
}

// ----- query -----

#[test]
fn query_value_is_percent_decoded_like_go() {
    assert_eq!(query_key("/img?key=a+b", "key"), bytes("a b"));
    assert_eq!(query_key("/img?key=a%20b", "key"), bytes("a b"));
    assert_eq!(query_key("/img?key=%2B%2b", "key"), bytes("++"));
    assert_eq!(query_key("/img?key=%7e%7E", "key"), bytes("~~"));
    assert_eq!(query_key("/img?key=%26%3D%3B", "key"), bytes("&=;"));
}

#[test]
fn query_first_occurrence_wins() {
    assert_eq!(query_key("/?key=1&key=2&key=3", "key"), bytes("1"));
    assert_eq!(query_key("/?other=0&key=1&key=2", "key"), bytes("1"));
    assert_eq!(query_key("/?key&key=2", "key"), bytes(""));
}

#[test]
fn query_pair_with_malformed_escape_is_skipped_for_a_later_valid_occurrence() {
    for bad in ["%", "%4", "%zz", "%g0", "a%", "%%41", "ok%2"] {
        let uri = format!("/?key={bad}&key=valid");
        assert_eq!(query_key(&uri, "key"), bytes("valid"), "{uri}");
        let uri = format!("/?key={bad}");
        assert_eq!(query_key(&uri, "key"), None, "{uri}");
    }
    // A malformed escape in the name skips the pair too.
    assert_eq!(query_key("/?key%zz=1&key=2", "key"), bytes("2"));
    assert_eq!(query_key("/?k%65y%=1&key=2", "key"), bytes("2"));
}

#[test]
fn query_pairs_containing_semicolons_are_skipped() {
    assert_eq!(query_key("/?key=1;x=2&key=3", "key"), bytes("3"));
    assert_eq!(query_key("/?x=1;key=2", "key"), None);
    assert_eq!(query_key("/?x=1;key=2", "x"), None);
    assert_eq!(query_key("/?key;=1&key=2", "key"), bytes("2"));
    // An escaped semicolon is data, not a separator.
    assert_eq!(query_key("/?key=%3B", "key"), bytes(";"));
}

#[test]
fn query_missing_parameter_is_none_and_empty_value_is_empty() {
    assert_eq!(query_key("/img", "key"), None);
    assert_eq!(query_key("/img?", "key"), None);
    assert_eq!(query_key("/img?other=1", "key"), None);
    assert_eq!(query_key("/img?keys=1&ke=2&Key=3", "key"), None);
    assert_eq!(query_key("/img?key=", "key"), bytes(""));
    assert_eq!(query_key("/img?key", "key"), bytes(""));
    assert_eq!(query_key("/img?a=1&key&b=2", "key"), bytes(""));
}

#[test]
fn query_name_is_compared_with_the_decoded_parameter_name() {
    assert_eq!(query_key("/?k%65y=1", "key"), bytes("1"));
    assert_eq!(query_key("/?my+key=1", "my key"), bytes("1"));
    assert_eq!(query_key("/?my%20key=1", "my key"), bytes("1"));
    assert_eq!(query_key("/?my+key=1", "my+key"), None);
    assert_eq!(query_key("/?a%3Db=1", "a=b"), bytes("1"));
    assert_eq!(query_key("/?=v", ""), bytes("v"));
}

#[test]
fn query_value_splits_at_the_first_equals_sign() {
    assert_eq!(query_key("/?key=a=b=c", "key"), bytes("a=b=c"));
    assert_eq!(query_key("/?key==", "key"), bytes("="));
}

#[test]
fn query_value_borrows_from_the_request_unless_it_needs_decoding() {
    let request = get("/img?key=plain-value_1.~");
    let extractor = key::query("key");
    assert!(matches!(
        extractor.key(&request),
        Some(Cow::Borrowed(b"plain-value_1.~"))
    ));

    for uri in ["/img?key=a+b", "/img?key=a%20b"] {
        let request = get(uri);
        match extractor.key(&request) {
            Some(Cow::Owned(key)) => assert_eq!(key, b"a b"),
            other => panic!("expected an owned decoded key for {uri}, got {other:?}"),
        }
    }
}

#[test]
fn query_decoded_bytes_need_not_be_utf8() {
    assert_eq!(
        query_key("/?key=%ff%80%00", "key"),
        Some(vec![0xff, 0x80, 0x00])
    );
    assert_eq!(query_key("/?%ff=x", "\u{ff}"), None);
}

#[test]
fn query_decoding_matches_gos_documented_behaviour() {
    // (query, name, Go's r.URL.Query().Get(name), with None where the parameter is absent).
    // Cases from Go's net/url tests for ParseQuery and QueryUnescape.
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("a=1", "a", Some("1")),
        ("a=1&b=2", "b", Some("2")),
        ("a=1&a=2&a=banana", "a", Some("1")),
        ("ascii=%3Ckey%3A+0x90%3E", "ascii", Some("<key: 0x90>")),
        ("a=1;b=2", "a", None),
        ("a=1;b=2", "b", None),
        ("a;b=1", "a", None),
        ("a=%3B", "a", Some(";")),
        ("a%3Bb=1", "a;b", Some("1")),
        ("a=1&a=2;a=banana", "a", Some("1")),
        ("a;b&c=1", "c", Some("1")),
        ("a=1&b=2;a=3&c=4", "a", Some("1")),
        ("a=1&b=2;a=3&c=4", "c", Some("4")),
        ("a=1&b=2;c=3", "a", Some("1")),
        ("a=1&b=2;c=3", "c", None),
        (";", "", None),
        ("a=1;", "a", None),
        ("a=1&;", "a", Some("1")),
        (";a=1&b=2", "a", None),
        (";a=1&b=2", "b", Some("2")),
        ("a=1&b=2;", "a", Some("1")),
        ("a=1&b=2;", "b", None),
        // QueryUnescape.
        ("q=abc", "q", Some("abc")),
        ("q=1%41", "q", Some("1A")),
        ("q=1%41%42%43", "q", Some("1ABC")),
        ("q=%4a", "q", Some("J")),
        ("q=%6F", "q", Some("o")),
        ("q=%", "q", None),
        ("q=%a", "q", None),
        ("q=%1", "q", None),
        ("q=123%45%6", "q", None),
        ("q=%zzzzz", "q", None),
        ("q=a+b", "q", Some("a b")),
        ("q=a%20b", "q", Some("a b")),
        // Empty pairs and values.
        ("&&&", "", None),
        ("&&q=1&&", "q", Some("1")),
        ("q", "q", Some("")),
        ("q=", "q", Some("")),
        ("=", "", Some("")),
        ("=1", "", Some("1")),
    ];
    for &(query, name, expected) in cases {
        let uri = format!("/?{query}");
        assert_eq!(
            query_key(&uri, name),
            expected.and_then(bytes),
            "query {query:?}, name {name:?}"
        );
        assert_eq!(
            go_query_get(query, name),
            expected.and_then(bytes),
            "the reference disagrees on query {query:?}, name {name:?}"
        );
    }
}

#[test]
fn query_handles_fuzz_like_inputs_without_panicking() {
    let long_pairs = "&".repeat(30_000) + "key=last";
    let long_escapes = "%".repeat(30_000);
    let long_value = format!("key={}", "%4".repeat(20_000));
    let inputs = [
        "%",
        "%4",
        "%zz",
        "&&&",
        ";",
        "=",
        "==&==",
        "+",
        "%%%",
        "key=%",
        "key%",
        "k%e=1",
        "key=%4",
        long_pairs.as_str(),
        long_escapes.as_str(),
        long_value.as_str(),
    ];
    for query in inputs {
        let uri = format!("/?{query}");
        for name in ["key", "", "%", " ", "k"] {
            assert_eq!(
                query_key(&uri, name),
                go_query_get(query, name),
                "query {query:?}, name {name:?}"
            );
        }
    }
    assert_eq!(query_key(&format!("/?{long_pairs}"), "key"), bytes("last"));
}

#[test]
fn longest_query_value_http_accepts_is_returned_exactly() {
    // http::Uri accepts at most 65,534 bytes, so this is the longest query key a request can have.
    let prefix = "/?key=";
    let value: String = (0..65_534 - prefix.len())
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    assert_eq!(query_key(&format!("{prefix}{value}"), "key"), bytes(&value));

    let escaped = "%41".repeat((65_534 - prefix.len()) / 3);
    let decoded = "A".repeat(escaped.len() / 3);
    assert_eq!(
        query_key(&format!("{prefix}{escaped}"), "key"),
        bytes(&decoded)
    );
}

#[test]
fn one_mib_query_never_reaches_the_extractor_because_http_rejects_the_uri() {
    let uri = format!("/?key={}", "a".repeat(1 << 20));
    assert!(Request::builder().uri(uri).body(()).is_err());
}

// ----- or -----

#[test]
fn or_uses_the_default_when_the_key_is_missing() {
    let extractor = key::query("key").or("default_key");
    for uri in ["/img", "/img?", "/img?other=1", "/img?key=%zz"] {
        assert_eq!(key_of(&extractor, &get(uri)), bytes("default_key"), "{uri}");
    }
}

#[test]
fn or_uses_the_default_when_the_key_is_empty() {
    let extractor = key::query("key").or("default_key");
    for uri in ["/img?key=", "/img?key", "/img?key=&key=second"] {
        assert_eq!(key_of(&extractor, &get(uri)), bytes("default_key"), "{uri}");
    }
}

#[test]
fn or_keeps_a_present_key_and_borrows_the_default() {
    // Any AsRef<[u8]> is a default: a String from configuration, say.
    let configured = String::from("default_key");
    let extractor = key::query("key").or(configured);
    assert_eq!(key_of(&extractor, &get("/img?key=cat")), bytes("cat"));
    assert_eq!(extractor.default_key(), b"default_key");
    assert_eq!(extractor.get_ref().name(), "key");

    let request = get("/img");
    assert!(matches!(
        extractor.key(&request),
        Some(Cow::Borrowed(b"default_key"))
    ));
}

#[test]
fn or_works_on_every_extractor_and_on_closures() {
    let request = get("/");
    let header = key::header(HeaderName::from_static("x-user")).or("h");
    let path = key::path().or("p");
    let ip = key::client_ip().or("i");
    let ip_with = key::client_ip_with(|addr: &SocketAddr| addr.ip()).or("w");
    let closure = (|_: &Request<()>| None::<Vec<u8>>).or("c");
    // The trait method, for an extractor of any request type.
    let via_trait = RequestKey::<Request<()>>::or(key::query("key"), "t");

    assert_eq!(key_of(&header, &request), bytes("h"));
    assert_eq!(key_of(&path, &request), bytes("/"));
    assert_eq!(key_of(&ip, &request), bytes("i"));
    assert_eq!(key_of(&ip_with, &request), bytes("w"));
    assert_eq!(key_of(&closure, &request), bytes("c"));
    assert_eq!(key_of(&via_trait, &request), bytes("t"));
}

#[test]
fn or_debug_shows_the_default_as_text() {
    let extractor = key::query("key").or("default_key");
    assert_eq!(
        format!("{extractor:?}"),
        r#"Or { inner: Query { name: "key" }, default: "default_key" }"#
    );
}

// ----- header -----

#[test]
fn header_key_is_the_first_value() {
    let request = Request::builder()
        .header("x-user-id", "first")
        .header("x-user-id", "second")
        .body(())
        .unwrap();
    let extractor = key::header(HeaderName::from_static("x-user-id"));
    assert!(matches!(
        extractor.key(&request),
        Some(Cow::Borrowed(b"first"))
    ));
    assert_eq!(extractor.name(), "x-user-id");
}

#[test]
fn header_missing_is_none_and_empty_is_empty() {
    let extractor = key::header(HeaderName::from_static("x-user-id"));
    assert_eq!(key_of(&extractor, &get("/")), None);

    let request = Request::builder().header("x-user-id", "").body(()).unwrap();
    assert_eq!(key_of(&extractor, &request), bytes(""));
}

#[test]
fn header_key_keeps_non_utf8_bytes() {
    let request = Request::builder()
        .header("x-opaque", HeaderValue::from_bytes(&[0xff, 0x80]).unwrap())
        .body(())
        .unwrap();
    let extractor = key::header(HeaderName::from_static("x-opaque"));
    assert_eq!(key_of(&extractor, &request), Some(vec![0xff, 0x80]));
}

#[test]
fn one_mib_header_key_is_returned_exactly() {
    let value: Vec<u8> = (0..1 << 20).map(|i| b'!' + (i % 94) as u8).collect();
    let request = Request::builder()
        .header("x-big", HeaderValue::from_bytes(&value).unwrap())
        .body(())
        .unwrap();
    let extractor = key::header(HeaderName::from_static("x-big"));
    let key = extractor.key(&request).unwrap();
    assert!(matches!(key, Cow::Borrowed(_)));
    assert_eq!(key.len(), 1 << 20);
    assert!(*key == value[..]);
}

// ----- path -----

#[test]
fn path_key_is_the_path_as_sent_without_the_query() {
    let request = get("/images/a%20b.png?size=2");
    assert!(matches!(
        key::path().key(&request),
        Some(Cow::Borrowed(b"/images/a%20b.png"))
    ));
    assert_eq!(key_of(&key::path(), &get("/")), bytes("/"));
    assert_eq!(
        key_of(&key::path(), &get("http://example.com/x?y")),
        bytes("/x")
    );
    // The authority form of CONNECT has no path: the key is empty, and `or` gives the default.
    let connect = Request::builder()
        .method("CONNECT")
        .uri("example.com:443")
        .body(())
        .unwrap();
    assert_eq!(key_of(&key::path(), &connect), bytes(""));
    assert_eq!(key_of(&key::path().or("tunnel"), &connect), bytes("tunnel"));
}

// ----- client IP -----

#[test]
fn client_ip_key_is_the_ipv4_octets_without_the_port() {
    let a = with_addr(SocketAddr::from(([192, 0, 2, 1], 40000)));
    let b = with_addr(SocketAddr::from(([192, 0, 2, 1], 40001)));
    assert_eq!(key_of(&key::client_ip(), &a), Some(vec![192, 0, 2, 1]));
    assert_eq!(key_of(&key::client_ip(), &b), key_of(&key::client_ip(), &a));
}

#[test]
fn client_ip_key_is_the_ipv6_octets() {
    let ip: Ipv6Addr = "2001:db8::17".parse().unwrap();
    let request = with_addr(SocketAddr::from((ip, 443)));
    assert_eq!(
        key_of(&key::client_ip(), &request),
        Some(ip.octets().to_vec())
    );
}

#[test]
fn client_ip_of_ipv4_mapped_ipv6_has_the_same_key_as_plain_ipv4() {
    let v4 = Ipv4Addr::new(198, 51, 100, 23);
    let mapped: Ipv6Addr = "::ffff:198.51.100.23".parse().unwrap();
    assert_eq!(mapped, v4.to_ipv6_mapped());

    let plain = key_of(&key::client_ip(), &with_addr(SocketAddr::from((v4, 1))));
    let dual = key_of(&key::client_ip(), &with_addr(SocketAddr::from((mapped, 2))));
    assert_eq!(plain, Some(vec![198, 51, 100, 23]));
    assert_eq!(dual, plain);

    // An IPv4-compatible address (::a.b.c.d, deprecated) is not mapped: it stays 16 octets.
    let compatible = v4.to_ipv6_compatible();
    let key = key_of(
        &key::client_ip(),
        &with_addr(SocketAddr::from((compatible, 3))),
    );
    assert_eq!(key.map(|key| key.len()), Some(16));
}

#[test]
fn client_ip_without_a_socket_addr_extension_is_none() {
    assert_eq!(key_of(&key::client_ip(), &get("/")), None);
}

#[test]
fn client_ip_with_reads_a_custom_extension_type() {
    #[derive(Clone)]
    struct ConnectInfo<T>(T);

    let extractor = key::client_ip_with(|info: &ConnectInfo<SocketAddr>| info.0.ip());

    let v4 = Request::builder()
        .extension(ConnectInfo(SocketAddr::from(([10, 1, 2, 3], 8080))))
        .body(())
        .unwrap();
    assert_eq!(key_of(&extractor, &v4), Some(vec![10, 1, 2, 3]));

    let mapped_ip = IpAddr::V6(Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped());
    let mapped = Request::builder()
        .extension(ConnectInfo(SocketAddr::new(mapped_ip, 9090)))
        .body(())
        .unwrap();
    assert_eq!(key_of(&extractor, &mapped), Some(vec![10, 1, 2, 3]));

    // A bare SocketAddr is a different extension type.
    let bare = with_addr(SocketAddr::from(([10, 1, 2, 3], 8080)));
    assert_eq!(key_of(&extractor, &bare), None);

    assert!(format!("{extractor:?}").contains("ConnectInfo"));
}

// ----- closures -----

#[test]
fn closure_extractor_copies_the_key_it_returns() {
    let tenant = |request: &Request<()>| request.uri().path().split('/').nth(1).map(str::to_owned);
    let request = get("/acme/orders");
    assert!(matches!(tenant.key(&request), Some(Cow::Owned(key)) if key == b"acme"));

    let none = |_: &Request<()>| None::<&'static str>;
    assert_eq!(none.key(&request), None);

    // Any request type, with any AsRef<[u8]> key.
    let by_len = |request: &String| Some([request.len() as u8]);
    assert_eq!(by_len.key(&"abc".to_owned()).as_deref(), Some(&[3][..]));
}

// ----- extractor types -----

#[test]
fn extractors_are_send_sync_clone_debug_and_static() {
    fn assert_extractor<E: RequestKey<Request<()>> + Clone + Debug + Send + Sync + 'static>(_: &E) {
    }
    // A type that is neither Send nor Sync.
    struct NotSync(std::rc::Rc<()>);
    fn assert_send_sync<T: Send + Sync>() {}

    assert_extractor(&key::query("key"));
    assert_extractor(&key::header(HeaderName::from_static("x")));
    assert_extractor(&key::path());
    assert_extractor(&key::client_ip());
    assert_extractor(&key::query("key").or("d"));
    assert_send_sync::<key::ClientIpWith<SocketAddr, fn(&SocketAddr) -> IpAddr>>();
    // PhantomData<fn() -> T> does not carry T's auto traits.
    assert_send_sync::<key::ClientIpWith<NotSync, fn(&SocketAddr) -> IpAddr>>();
    let _ = NotSync(std::rc::Rc::new(())).0;

    // Debug output names the extractor and its parameter.
    assert_eq!(
        format!("{:?}", key::query("key")),
        r#"Query { name: "key" }"#
    );
    assert!(format!("{:?}", key::header(HeaderName::from_static("x-id"))).contains("x-id"));
}

// ----- properties -----

proptest! {
    // Failing cases are saved beside this file (tests/keys/main.proptest-regressions), not in a
    // folder shared with the other test targets, which are all named main.rs too.
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_ascii_query_never_panics(query in "[\\x00-\\x7f]{0,300}", name in "[a-z%+;= ]{0,3}") {
        // As sent, when http accepts it.
        if let Ok(request) = Request::builder().uri(format!("/?{query}")).body(()) {
            let _ = key_of(&key::query(&name), &request);
            let _ = key_of(&key::query(&name).or("d"), &request);
        }
        // With the bytes http rejects escaped, so that every input reaches the extractor.
        let escaped = escape_bytes_http_rejects(&query);
        let request = get(&format!("/?{escaped}"));
        prop_assert_eq!(key_of(&key::query(&name), &request), go_query_get(&escaped, &name));
    }

    // Bytes that http accepts unescaped in a query, escapes (some malformed) and separators.
    #[test]
    fn query_key_matches_gos_parse_query(
        query in "([!$-;=?-~]|%[0-9a-fA-Fz]{0,2}|[&=;+]){0,60}",
        extra_name in "[a-z%+ ]{0,3}",
    ) {
        let uri = format!("/?{query}");
        let request = get(&uri);
        // The names of the query's own pairs, decoded where that works, and one more.
        let mut names: Vec<String> = query
            .split('&')
            .filter_map(|pair| pair.split('=').next())
            .filter_map(|name| go_query_unescape(name).ok())
            .filter_map(|name| String::from_utf8(name).ok())
            .collect();
        names.push(extra_name);
        for name in &names {
            prop_assert_eq!(
                key_of(&key::query(name), &request),
                go_query_get(&query, name),
                "query {:?}, name {:?}", query, name
            );
        }
    }

    #[test]
    fn unreserved_query_value_is_the_raw_value(
        before in "([a-z]{1,3}=[a-z0-9]{0,3}&){0,3}",
        value in "[A-Za-z0-9._~-]{0,64}",
        after in "(&[a-z]{1,3}=[a-z0-9]{0,3}){0,3}",
    ) {
        let before = before.replace("key=", "kez=");
        let request = get(&format!("/?{before}key={value}{after}"));
        let extractor = key::query("key");
        let key = extractor.key(&request);
        prop_assert!(matches!(key, Some(Cow::Borrowed(_))));
        prop_assert_eq!(key.as_deref(), Some(value.as_bytes()));
    }
}

/// `query` with every byte that http::Uri rejects in a query (and `#`, which starts a fragment)
/// percent-escaped.
fn escape_bytes_http_rejects(query: &str) -> String {
    query
        .bytes()
        .map(|b| match b {
            b'!' | b'$'..=b';' | b'=' | b'?'..=b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
