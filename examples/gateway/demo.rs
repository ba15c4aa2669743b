//! The built-in demo load: "images" posted to the gateway over loopback HTTP, counted by the
//! backend that served them; and the table of the balancer's statistics shown after it.

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use axum::http::{Method, Request, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tokio::sync::mpsc;
use tower_lb::EndpointStats;

use crate::{app::UPSTREAM_HEADER, config::Target};

/// The demo load.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    /// Requests to send.
    pub requests: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Size of each "image".
    pub body_bytes: usize,
    /// Request `i` carries the key `user-{i % distinct_keys}`, in the `key` query parameter and
    /// in the `x-key` header, so that the hash strategies have keys to spread.
    pub distinct_keys: usize,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            requests: 600,
            concurrency: 16,
            body_bytes: 16 * 1024,
            distinct_keys: 50,
        }
    }
}

/// Where the demo's requests went.
#[derive(Clone, Debug)]
pub struct Report {
    /// One row per backend, in the configured order (then any other endpoint that answered).
    pub rows: Vec<Row>,
    /// Failed requests by what the client saw: a status (`503 Service Unavailable`) or a
    /// transport error.
    pub failures: BTreeMap<String, usize>,
    /// From the first request sent to the last answer.
    pub elapsed: Duration,
}

/// Requests served by one backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// Its endpoint key.
    pub backend: String,
    /// Its address.
    pub address: String,
    /// Requests it answered with 200.
    pub requests: usize,
}

impl Report {
    /// Requests sent.
    pub fn total(&self) -> usize {
        self.succeeded() + self.failed()
    }

    /// Requests answered with 200.
    pub fn succeeded(&self) -> usize {
        self.rows.iter().map(|row| row.requests).sum()
    }

    /// Requests that failed.
    pub fn failed(&self) -> usize {
        self.failures.values().sum()
    }

    /// The share of all requests a row served, from 0 to 1.
    pub fn share(&self, row: &Row) -> f64 {
        row.requests as f64 / self.total().max(1) as f64
    }

    /// Requests per second over the whole run.
    pub fn requests_per_second(&self) -> f64 {
        self.total() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Sends the demo load to the gateway at `gateway`, calling `progress(done, total)` after every
/// answer, and counts the answers by the backend named in their [`UPSTREAM_HEADER`].
pub async fn demo(
    gateway: SocketAddr,
    targets: &[Target],
    config: &DemoConfig,
    mut progress: impl FnMut(usize, usize),
) -> Report {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    // One "image", shared by every request: cloning `Bytes` copies nothing.
    let image: Bytes = (0..config.body_bytes)
        .map(|i| (i.wrapping_mul(31) % 251) as u8)
        .collect();
    let next = Arc::new(AtomicUsize::new(0));
    let (outcomes, mut answers) = mpsc::unbounded_channel();

    let started = Instant::now();
    let workers = config.concurrency.clamp(1, config.requests.max(1));
    for _ in 0..workers {
        let (client, image, next, outcomes) = (
            client.clone(),
            image.clone(),
            Arc::clone(&next),
            outcomes.clone(),
        );
        let (requests, keys) = (config.requests, config.distinct_keys.max(1));
        tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    break;
                }
                let key = format!("user-{}", i % keys);
                let request = Request::builder()
                    .method(Method::POST)
                    .uri(format!("http://{gateway}/resize?key={key}"))
                    .header("x-key", &key)
                    .body(Full::new(image.clone()))
                    .expect("a valid request");
                if outcomes.send(send(&client, request).await).is_err() {
                    break;
                }
            }
        });
    }
    // The workers hold the only senders left: the loop below ends when they are all done.
    drop(outcomes);

    let mut served = BTreeMap::<String, usize>::new();
    let mut failures = BTreeMap::new();
    let mut done = 0;
    while let Some(outcome) = answers.recv().await {
        match outcome {
            Ok(backend) => *served.entry(backend).or_default() += 1,
            Err(failure) => *failures.entry(failure).or_default() += 1,
        }
        done += 1;
        progress(done, config.requests);
    }
    let elapsed = started.elapsed();

    let mut rows: Vec<Row> = targets
        .iter()
        .map(|target| Row {
            backend: target.key.clone(),
            address: target.authority.to_string(),
            requests: served.remove(&target.key).unwrap_or(0),
        })
        .collect();
    rows.extend(served.into_iter().map(|(backend, requests)| Row {
        backend,
        address: "?".to_owned(),
        requests,
    }));
    Report {
        rows,
        failures,
        elapsed,
    }
}

/// Sends one request and reads the whole answer; `Ok(backend)` for a 200.
async fn send(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<String, String> {
    let response = client
        .request(request)
        .await
        .map_err(|error| format!("transport error: {error}"))?;
    let status = response.status();
    let backend = response
        .headers()
        .get(UPSTREAM_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_owned();
    // Reading the body to its end returns the connection to the pool.
    response
        .into_body()
        .collect()
        .await
        .map_err(|error| format!("transport error: {error}"))?;
    if status == StatusCode::OK {
        Ok(backend)
    } else {
        Err(status.to_string())
    }
}

/// Width of a 100% bar, in characters.
const BAR_WIDTH: usize = 40;

/// The table: backend, address, requests, share and a bar of the share, then the totals.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name_width = self
            .rows
            .iter()
            .map(|row| row.backend.len())
            .chain([7])
            .max()
            .unwrap_or(7);
        let address_width = self
            .rows
            .iter()
            .map(|row| row.address.len())
            .chain([7])
            .max()
            .unwrap_or(7);
        writeln!(
            f,
            "{:<name_width$}  {:<address_width$}  {:>8}  {:>6}",
            "backend", "address", "requests", "share"
        )?;
        for row in &self.rows {
            let share = self.share(row);
            writeln!(
                f,
                "{:<name_width$}  {:<address_width$}  {:>8}  {:>5.1}%  {}",
                row.backend,
                row.address,
                row.requests,
                share * 100.0,
                bar(share)
            )?;
        }
        for (failure, count) in &self.failures {
            let share = *count as f64 / self.total().max(1) as f64;
            writeln!(
                f,
                "{:<width$}  {:>8}  {:>5.1}%  {failure}",
                "failed",
                count,
                share * 100.0,
                width = name_width + 2 + address_width,
            )?;
        }
        writeln!(
            f,
            "{:<width$}  {:>8}  {:>5.1}%",
            "total",
            self.total(),
            if self.total() == 0 { 0.0 } else { 100.0 },
            width = name_width + 2 + address_width,
        )?;
        write!(
            f,
            "{} requests in {:.2} s: {:.0} requests/s, {} failed",
            self.total(),
            self.elapsed.as_secs_f64(),
            self.requests_per_second(),
            self.failed()
        )
    }
}

/// A bar of `share` × [`BAR_WIDTH`] characters, in eighths of a character.
fn bar(share: f64) -> String {
    const EIGHTHS: [&str; 8] = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"];
    let eighths = (share.clamp(0.0, 1.0) * (BAR_WIDTH * 8) as f64).round() as usize;
    "█".repeat(eighths / 8) + EIGHTHS[eighths % 8]
}

/// The balancer's per-endpoint statistics ([`crate::app::Stats::snapshot`]) as a table: key,
/// weight, picks, requests in flight, failures, and how much longer the endpoint stays ejected
/// (`-` when it is not).
///
/// Picks count attempts, retries included, so they can exceed the requests served. The gateway's
/// strategies do not balance on load, so tower-lb does not count their requests in flight: that
/// column stays 0.
#[derive(Clone, Copy, Debug)]
pub struct StatsTable<'a>(pub &'a [EndpointStats<String>]);

impl fmt::Display for StatsTable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key_width = self
            .0
            .iter()
            .map(|stats| stats.key.len())
            .chain([7])
            .max()
            .unwrap_or(7);
        write!(
            f,
            "{:<key_width$}  {:>6}  {:>8}  {:>9}  {:>8}  ejected",
            "backend", "weight", "picks", "in flight", "failures"
        )?;
        for stats in self.0 {
            let ejected = match stats.ejected_for {
                Some(left) if left >= Duration::from_secs(1) => {
                    format!("{:.2} s more", left.as_secs_f64())
                }
                Some(left) => format!("{} ms more", left.as_millis().max(1)),
                None => "-".to_owned(),
            };
            write!(
                f,
                "\n{:<key_width$}  {:>6}  {:>8}  {:>9}  {:>8}  {ejected}",
                stats.key, stats.weight, stats.picks, stats.in_flight, stats.failures
            )?;
        }
        Ok(())
    }
}
