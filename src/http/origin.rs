use std::{
    error::Error,
    fmt,
    task::{Context, Poll},
};

use ::http::{
    header::{HeaderValue, HOST},
    uri::{Authority, InvalidUri, Parts, PathAndQuery, Scheme},
    Request, Uri,
};
use tower_service::Service;

/// Which `Host` header an [`Origin`] sends.
///
/// HTTP/1.1 clients derive `Host` from the request's URI when the request has none (hyper-util's
/// client does), and HTTP/2 clients send the URI's authority as `:authority`, so a request built
/// without a `Host` header reaches the backend with the backend's own authority whichever is
/// picked; the choice matters for requests that carry one, such as those a gateway forwards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum HostHeader {
    /// Sends the caller's `Host` header unchanged, and none if it has none (the HTTP client then
    /// sends the backend's authority). A backend serving several virtual hosts sees the name the
    /// client asked for. Over HTTP/2 the caller's `Host` travels as a header beside the backend's
    /// `:authority`. The default.
    #[default]
    Keep,
    /// Sets `Host` to the backend's authority (`127.0.0.1:8081`), replacing the caller's: what
    /// nginx's `proxy_pass` does unless told otherwise.
    Backend,
    /// Sets `Host` to this value on every request, replacing the caller's.
    Fixed(HeaderValue),
}

/// An endpoint bound to one backend: it sends every request to that backend's scheme and
/// authority, whatever the request's URI says, keeping its path and query, method, headers,
/// extensions and body.
///
/// HTTP clients such as hyper-util's route each request by its URI, and the connection pool
/// behind one client serves every authority; an `Origin` over a clone of one shared client is
/// therefore one endpoint of a set (see [`origins`](super::origins) with the `hyper-util`
/// feature). A request whose URI has no path (`http://host`) is sent for `/`.
///
/// `Host` is kept as the caller set it by default; see [`HostHeader`]. The HTTP version of the
/// request is left alone: a gateway that receives HTTP/2 requests and forwards them over
/// HTTP/1.1 sets `Version::HTTP_11` on them first.
///
/// # Examples
///
/// ```
/// use std::convert::Infallible;
/// use http::{header::HOST, Request, Response};
/// use tower::{service_fn, ServiceExt};
/// use tower_lb::http::{HostHeader, Origin};
///
/// # tokio_test::block_on(async {
/// // A stand-in for an HTTP client, answering with the URI and `Host` it was asked for.
/// let client = service_fn(|request: Request<()>| async move {
///     let host = request.headers().get(HOST).map(|v| v.to_str().unwrap().to_owned());
///     Ok::<_, Infallible>(Response::new(format!("{} {:?}", request.uri(), host)))
/// });
/// let origin = Origin::try_new(client, "http://10.0.0.7:8080")?.host(HostHeader::Backend);
///
/// let request = Request::get("/users/42?full=1").header(HOST, "api.example").body(())?;
/// let response = origin.oneshot(request).await?;
/// assert_eq!(response.body(), r#"http://10.0.0.7:8080/users/42?full=1 Some("10.0.0.7:8080")"#);
/// # Ok::<(), tower_lb::BoxError>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct Origin<S> {
    inner: S,
    scheme: Scheme,
    authority: Authority,
    host: HostHeader,
    /// The backend's authority as a header value, for [`HostHeader::Backend`].
    authority_value: HeaderValue,
}

impl<S> Origin<S> {
    /// Binds `inner` to the backend at `scheme://authority`.
    pub fn new(inner: S, scheme: Scheme, authority: Authority) -> Self {
        // An authority is made of characters a header value accepts.
        let authority_value = HeaderValue::from_str(authority.as_str())
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        Self {
            inner,
            scheme,
            authority,
            host: HostHeader::Keep,
            authority_value,
        }
    }

    /// Binds `inner` to the backend of `url`: `http://` or `https://`, a host and maybe a port,
    /// nothing after them but an optional `/`.
    ///
    /// # Errors
    ///
    /// [`InvalidOrigin`] if `url` is not such a URL.
    pub fn try_new(inner: S, url: &str) -> Result<Self, InvalidOrigin> {
        let (scheme, authority) = parse(url)?;
        Ok(Self::new(inner, scheme, authority))
    }

    /// Sets which `Host` header is sent; see [`HostHeader`]. Default: [`HostHeader::Keep`].
    pub fn host(mut self, host: HostHeader) -> Self {
        self.host = host;
        self
    }

    /// The backend's scheme.
    pub fn scheme(&self) -> &Scheme {
        &self.scheme
    }

    /// The backend's authority: host and port.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The URI of `uri`'s path and query on this backend.
    fn rebase(&self, uri: &Uri) -> Uri {
        let path = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut parts = Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(path);
        // A scheme, an authority and a path always make a URI.
        Uri::from_parts(parts).expect("scheme, authority and path make a URI")
    }
}

impl<S, B> Service<Request<B>> for Origin<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        *request.uri_mut() = self.rebase(request.uri());
        match &self.host {
            HostHeader::Keep => {}
            HostHeader::Backend => {
                request
                    .headers_mut()
                    .insert(HOST, self.authority_value.clone());
            }
            HostHeader::Fixed(value) => {
                request.headers_mut().insert(HOST, value.clone());
            }
        }
        self.inner.call(request)
    }
}

/// The scheme and authority of a backend URL.
pub(super) fn parse(url: &str) -> Result<(Scheme, Authority), InvalidOrigin> {
    let invalid = |reason| InvalidOrigin {
        url: url.to_owned(),
        reason,
    };
    let uri: Uri = url.parse().map_err(|e| invalid(Reason::Parse(e)))?;
    let parts = uri.into_parts();
    let scheme = parts.scheme.ok_or_else(|| invalid(Reason::NoScheme))?;
    if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
        return Err(invalid(Reason::Scheme));
    }
    let authority = parts
        .authority
        .ok_or_else(|| invalid(Reason::NoAuthority))?;
    if authority.as_str().contains('@') {
        return Err(invalid(Reason::UserInfo));
    }
    if authority.host().is_empty() {
        return Err(invalid(Reason::NoAuthority));
    }
    if let Some(path) = &parts.path_and_query {
        if !matches!(path.as_str(), "" | "/") {
            return Err(invalid(Reason::Path));
        }
    }
    Ok((scheme, authority))
}

/// A backend URL that does not name one backend.
///
/// Returned by [`Origin::try_new`] and [`origins`](super::origins).
#[derive(Debug)]
pub struct InvalidOrigin {
    url: String,
    reason: Reason,
}

#[derive(Debug)]
pub(super) enum Reason {
    Parse(InvalidUri),
    NoScheme,
    Scheme,
    NoAuthority,
    UserInfo,
    Path,
    Duplicate,
}

impl InvalidOrigin {
    /// A URL naming a backend already in the list.
    #[cfg_attr(not(feature = "hyper-util"), allow(dead_code))]
    pub(super) fn duplicate(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            reason: Reason::Duplicate,
        }
    }

    /// The rejected URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl fmt::Display for InvalidOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reason = match &self.reason {
            Reason::Parse(_) => "not a URL",
            Reason::NoScheme => "no scheme: it must start with http:// or https://",
            Reason::Scheme => "the scheme must be http or https",
            Reason::NoAuthority => "no host",
            Reason::UserInfo => "user information is not supported",
            Reason::Path => {
                "a path or query: a backend URL names a host and port only, requests keep theirs"
            }
            Reason::Duplicate => "the same host and port as an earlier URL",
        };
        write!(f, "invalid backend URL `{}`: {reason}", self.url)
    }
}

impl Error for InvalidOrigin {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match &self.reason {
            Reason::Parse(error) => Some(error),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_urls_name_a_scheme_and_an_authority_only() {
        for (url, authority) in [
            ("http://127.0.0.1:8081", "127.0.0.1:8081"),
            ("https://backend.internal/", "backend.internal"),
            ("http://[::1]:9000", "[::1]:9000"),
        ] {
            assert_eq!(parse(url).unwrap().1.as_str(), authority, "{url}");
        }
        for (url, message) in [
            ("127.0.0.1:8081", "no scheme"),
            ("/path", "no scheme"),
            ("ftp://127.0.0.1", "the scheme must be http or https"),
            ("http://user:pw@127.0.0.1", "user information"),
            ("http://127.0.0.1/api", "a path or query"),
            ("http://127.0.0.1/?a=1", "a path or query"),
            ("http://a b", "not a URL"),
            ("", "not a URL"),
        ] {
            let error = parse(url).unwrap_err();
            assert!(error.to_string().contains(message), "{url}: {error}");
            assert_eq!(error.url(), url);
        }
        assert!(parse("http://a b").unwrap_err().source().is_some());
    }

    #[test]
    fn requests_keep_their_path_and_query_on_the_backend() {
        let origin = Origin::try_new((), "http://10.0.0.1:81").unwrap();
        for (uri, rebased) in [
            ("/a/b?c=d&e", "http://10.0.0.1:81/a/b?c=d&e"),
            ("https://public.example/x?y", "http://10.0.0.1:81/x?y"),
            ("http://public.example", "http://10.0.0.1:81/"),
        ] {
            let uri: Uri = uri.parse().unwrap();
            assert_eq!(origin.rebase(&uri), rebased);
        }
    }
}
