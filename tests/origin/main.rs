//! `tower_lb::http::Origin` over a real hyper-util client, against loopback backends speaking
//! HTTP/1.1 and HTTP/2 with prior knowledge: what reaches the backend, and which `Host` it sees.

#[path = "../support/backend.rs"]
mod backend;

use backend::{header, Backend, Behaviour, Protocol};
use bytes::Bytes;
use http::{header::HOST, HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use tower::ServiceExt;
use tower_lb::http::{HostHeader, Origin};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client(protocol: Protocol) -> HttpClient {
    let mut builder = Client::builder(TokioExecutor::new());
    if protocol == Protocol::H2c {
        builder.http2_only(true);
    }
    builder.build_http()
}

async fn body(response: Response<Incoming>) -> Bytes {
    response.into_body().collect().await.unwrap().to_bytes()
}

/// A request as a caller builds it, aimed at some other host: only the path and query may
/// reach the backend.
fn post() -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::POST)
        .uri("http://public.example/a/b?c=d&e=%20f")
        .header("x-test", "kept")
        .body(Full::new(Bytes::from_static(b"the payload")))
        .unwrap()
}

async fn request_reaches_the_backend_intact(protocol: Protocol) {
    let backend = Backend::spawn("b1", protocol, Behaviour::Echo).await;
    let origin = Origin::try_new(client(protocol), &backend.url()).unwrap();
    assert_eq!(origin.authority().as_str(), backend.authority());

    let response = origin.oneshot(post()).await.unwrap();
    assert_eq!(header(&response, "x-backend"), "b1");
    assert_eq!(header(&response, "x-method"), "POST");
    assert_eq!(header(&response, "x-test"), "kept");
    let uri = header(&response, "x-uri");
    match protocol {
        // HTTP/1.1 sends the origin form.
        Protocol::Http1 => {
            assert_eq!(uri, "/a/b?c=d&e=%20f");
            assert_eq!(header(&response, "x-version"), "HTTP/1.1");
        }
        // HTTP/2 sends scheme and authority as pseudo-headers: the backend's.
        Protocol::H2c => {
            assert_eq!(
                uri,
                format!("http://{}/a/b?c=d&e=%20f", backend.authority())
            );
            assert_eq!(header(&response, "x-version"), "HTTP/2.0");
        }
    }
    assert_eq!(body(response).await, "the payload");
}

#[tokio::test]
async fn http1_backend_gets_path_query_method_headers_and_body() {
    request_reaches_the_backend_intact(Protocol::Http1).await;
}

#[tokio::test]
async fn h2c_backend_gets_path_query_method_headers_and_body() {
    request_reaches_the_backend_intact(Protocol::H2c).await;
}

/// The `Host` the backend sees for a request with `host` set by the caller (or none), through
/// an origin with `choice`.
async fn host_seen(protocol: Protocol, choice: HostHeader, host: Option<&str>) -> String {
    let backend = Backend::spawn("b1", protocol, Behaviour::Echo).await;
    let origin = Origin::try_new(client(protocol), &backend.url())
        .unwrap()
        .host(choice);
    let mut request = Request::get("/path").body(Full::default()).unwrap();
    if let Some(host) = host {
        request
            .headers_mut()
            .insert(HOST, HeaderValue::from_str(host).unwrap());
    }
    let response = origin.oneshot(request).await.unwrap();
    header(&response, "x-host")
}

#[tokio::test]
async fn http1_host_is_the_callers_by_default_and_the_backends_without_one() {
    let keep = HostHeader::Keep;
    let seen = host_seen(Protocol::Http1, keep.clone(), Some("public.example")).await;
    assert_eq!(seen, "public.example");
    // Without one, the client derives it from the backend's authority.
    let seen = host_seen(Protocol::Http1, keep, None).await;
    assert!(seen.starts_with("127.0.0.1:"), "{seen}");
}

#[tokio::test]
async fn http1_host_backend_and_fixed_replace_the_callers() {
    let seen = host_seen(Protocol::Http1, HostHeader::Backend, Some("public.example")).await;
    assert!(seen.starts_with("127.0.0.1:"), "{seen}");
    let fixed = HostHeader::Fixed(HeaderValue::from_static("api.internal"));
    let seen = host_seen(Protocol::Http1, fixed, Some("public.example")).await;
    assert_eq!(seen, "api.internal");
}

#[tokio::test]
async fn h2c_host_header_is_sent_as_chosen_beside_the_backends_authority() {
    // HTTP/2 names the backend in `:authority`; a `Host` header goes as a header, when there is
    // one.
    let seen = host_seen(Protocol::H2c, HostHeader::Keep, Some("public.example")).await;
    assert_eq!(seen, "public.example");
    let seen = host_seen(Protocol::H2c, HostHeader::Keep, None).await;
    assert_eq!(seen, "-");
    let seen = host_seen(Protocol::H2c, HostHeader::Backend, Some("public.example")).await;
    assert!(seen.starts_with("127.0.0.1:"), "{seen}");
    let fixed = HostHeader::Fixed(HeaderValue::from_static("api.internal"));
    let seen = host_seen(Protocol::H2c, fixed, None).await;
    assert_eq!(seen, "api.internal");
}

#[cfg(feature = "hyper-util")]
mod origins {
    use tower::Layer;
    use tower_lb::{http::origins, strategy::RoundRobin, BalanceLayer};

    use super::*;

    async fn one_client_serves_every_backend(protocol: Protocol) {
        let mut backends = Vec::new();
        for name in ["b1", "b2", "b3"] {
            backends.push(Backend::spawn(name, protocol, Behaviour::Echo).await);
        }
        let urls: Vec<String> = backends.iter().map(Backend::url).collect();
        let set = origins(&client(protocol), &urls).unwrap();
        let keys: Vec<String> = backends.iter().map(Backend::authority).collect();
        assert_eq!(set.keys(), keys);

        let balance = BalanceLayer::new(RoundRobin::new()).layer(set);
        for round in 0..3 {
            for expected in ["b1", "b2", "b3"] {
                let response = balance.clone().oneshot(post()).await.unwrap();
                assert_eq!(header(&response, "x-backend"), expected, "round {round}");
                assert_eq!(body(response).await, "the payload");
            }
        }
        for backend in &backends {
            assert_eq!(backend.requests(), 3);
        }
    }

    #[tokio::test]
    async fn http1_origins_of_one_client_take_their_turns() {
        one_client_serves_every_backend(Protocol::Http1).await;
    }

    #[tokio::test]
    async fn h2c_origins_of_one_client_take_their_turns() {
        one_client_serves_every_backend(Protocol::H2c).await;
    }

    #[test]
    fn bad_and_repeated_backend_urls_are_typed_errors() {
        let client = client(Protocol::Http1);
        for (urls, bad, message) in [
            (
                &["http://127.0.0.1:1", "127.0.0.1:2"][..],
                "127.0.0.1:2",
                "no scheme",
            ),
            (
                &["http://127.0.0.1:1/v1"],
                "http://127.0.0.1:1/v1",
                "a path or query",
            ),
            (&["tcp://127.0.0.1:1"], "tcp://127.0.0.1:1", "http or https"),
            (
                &["http://127.0.0.1:1", "https://127.0.0.1:1/"],
                "https://127.0.0.1:1/",
                "the same host and port",
            ),
        ] {
            let error = origins(&client, urls).unwrap_err();
            assert_eq!(error.url(), bad);
            assert!(error.to_string().contains(message), "{error}");
        }
    }
}
