use hyper_util::client::legacy::Client;

use super::origin::{parse, InvalidOrigin, Origin};
use crate::Endpoints;

/// An endpoint set over one shared hyper-util client: one [`Origin`] per backend URL, each a clone
/// of `client`, keyed by the backend's authority (`"127.0.0.1:8081"`, `"backend.internal"`).
///
/// The client's connection pool is per authority, so one client serves every backend and a
/// clone costs a few reference counts; its settings (timeouts, HTTP/2, pool size) apply to all of
/// them. The keys are the authorities as the URLs spell them, which is what the hash strategies
/// place (as nginx places `server 127.0.0.1:8081;`). Later changes go through the returned
/// handle, as for any set: `set.insert(key, Origin::try_new(client.clone(), url)?)`.
///
/// # Errors
///
/// [`InvalidOrigin`] for the first URL that is not `http://` or `https://` with a host, an
/// optional port and nothing after them but an optional `/`, or that names the same host and port
/// as an earlier one.
///
/// # Examples
///
/// ```
/// use hyper_util::{client::legacy::Client, rt::TokioExecutor};
/// use tower_lb::http::origins;
///
/// let client = Client::builder(TokioExecutor::new()).build_http::<String>();
/// let set = origins(&client, ["http://127.0.0.1:8081", "http://127.0.0.1:8082"])?;
/// assert_eq!(set.keys(), ["127.0.0.1:8081", "127.0.0.1:8082"]);
///
/// let error = origins(&client, ["http://127.0.0.1:8081/api"]).unwrap_err();
/// assert_eq!(error.url(), "http://127.0.0.1:8081/api");
/// # Ok::<(), tower_lb::http::InvalidOrigin>(())
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "hyper-util")))]
pub fn origins<C, B, I>(
    client: &Client<C, B>,
    urls: I,
) -> Result<Endpoints<String, Origin<Client<C, B>>>, InvalidOrigin>
where
    C: Clone + Send + Sync + 'static,
    B: Send + 'static,
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    let mut list: Vec<(String, Origin<Client<C, B>>)> = Vec::new();
    for url in urls {
        let url = url.as_ref();
        let (scheme, authority) = parse(url)?;
        let key = authority.as_str().to_owned();
        if list.iter().any(|(k, _)| k.eq_ignore_ascii_case(&key)) {
            return Err(InvalidOrigin::duplicate(url));
        }
        list.push((key, Origin::new(client.clone(), scheme, authority)));
    }
    Ok(Endpoints::from_iter(list))
}
