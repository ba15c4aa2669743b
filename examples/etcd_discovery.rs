//! Run with
//!
//! ```not_rust
//! # etcd on 127.0.0.1:2379 (Debian: `apt-get install etcd-server`, which also installs a
//! # service; or run it by hand in a scratch directory):
//! etcd --data-dir /tmp/etcd-demo &
//! cargo run --example etcd_discovery --features etcd
//! ```
//!
//! Set `ETCD_ENDPOINTS` (comma-separated, e.g. `http://127.0.0.1:2379`) to use another etcd.
//!
//! Service discovery through etcd, in the naming format Go and Java gRPC clients read. The
//! example starts three HTTP backends as child processes (this same program, run as
//! `etcd_discovery backend <name>`); each serves on a loopback port picked by the system and
//! registers itself under the prefix `tower-lb-demo` with a 2 s lease that it keeps alive. The
//! client follows the prefix into a round-robin balancer and prints where 30 requests went:
//!
//! 1. with the three backends;
//! 2. after one backend is killed (SIGKILL): it cannot deregister, so its key stays until its
//!    lease expires, and the client drops it then (the time it took is printed);
//! 3. after a fourth backend joins.
//!
//! Then the backends are told to stop: each deletes its key, and the set empties at once.

use std::{
    collections::BTreeMap,
    io::Read,
    process::{Child, Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client as HttpClient, rt::TokioExecutor};
use tower::{service_fn, Layer, ServiceExt};
use tower_lb::{
    etcd::{
        etcd_client::{Client, DeleteOptions},
        EtcdDiscover, EtcdRegistration,
    },
    strategy::RoundRobin,
    BalanceLayer, BoxError, Endpoints,
};

const PREFIX: &str = "tower-lb-demo";
const TTL: Duration = Duration::from_secs(2);

fn etcd_endpoints() -> Vec<String> {
    std::env::var("ETCD_ENDPOINTS")
        .unwrap_or_else(|_| "http://127.0.0.1:2379".to_owned())
        .split(',')
        .map(str::to_owned)
        .collect()
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("backend") => backend(args.get(2).cloned().unwrap_or_default()).await,
        _ => client().await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            let mut source = error.source();
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            eprintln!(
                "is etcd running? See how to start it at the top of examples/etcd_discovery.rs"
            );
            ExitCode::FAILURE
        }
    }
}

/// A backend: serves its name over HTTP and registers itself until its standard input closes.
async fn backend(name: String) -> Result<(), BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let app = axum::Router::new().route(
        "/",
        axum::routing::get({
            let name = name.clone();
            move || async move { name }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let registration = EtcdRegistration::builder(PREFIX, &addr)
        .id(&name)
        .endpoints(etcd_endpoints())
        .ttl(TTL)
        .register()
        .await?;

    // The parent closes our standard input to stop us gracefully.
    let (closed, stdin_closed) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        let _ = closed.send(());
    });
    let _ = stdin_closed.await;
    registration.deregister().await?;
    Ok(())
}

/// A backend process, killed if still running when dropped.
struct Backend {
    name: String,
    process: Child,
}

impl Backend {
    fn start(name: &str) -> Result<Self, BoxError> {
        let process = Command::new(std::env::current_exe()?)
            .args(["backend", name])
            .stdin(Stdio::piped())
            .spawn()?;
        Ok(Self {
            name: name.to_owned(),
            process,
        })
    }

    /// A crash: SIGKILL, no chance to deregister.
    fn kill(mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }

    /// A graceful stop: closing its standard input makes it deregister and exit.
    fn stop(mut self) {
        drop(self.process.stdin.take());
        let _ = self.process.wait();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

async fn client() -> Result<(), BoxError> {
    // Start from an empty prefix: keys of an earlier run may still wait for their leases.
    let mut etcd = Client::connect(etcd_endpoints(), None).await?;
    etcd.delete(PREFIX, Some(DeleteOptions::new().with_prefix()))
        .await?;

    // Each endpoint is an HTTP client bound to one backend's address.
    let http = HttpClient::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let connect = move |addr: &str| {
        let http = http.clone();
        let uri = format!("http://{addr}/");
        service_fn(move |()| {
            let http = http.clone();
            let uri = uri.clone();
            async move {
                let response = http.get(uri.parse()?).await?;
                let body = response.into_body().collect().await?.to_bytes();
                Ok::<_, BoxError>(String::from_utf8_lossy(&body).into_owned())
            }
        })
    };
    let discover = EtcdDiscover::prefix(PREFIX)
        .endpoints(etcd_endpoints())
        .build(connect)?;
    let endpoints = Endpoints::new();
    tokio::spawn(endpoints.follow(discover));
    let balance = BalanceLayer::new(RoundRobin::new()).layer(endpoints.clone());

    let mut backends = Vec::new();
    for name in ["backend-1", "backend-2", "backend-3"] {
        backends.push(Backend::start(name)?);
    }
    wait_for(&endpoints, 3).await?;
    println!(
        "three backends registered under `{PREFIX}/`: {:?}",
        sorted(&endpoints)
    );
    print_distribution(&balance).await?;

    let killed = backends.remove(1);
    let name = killed.name.clone();
    killed.kill();
    let started = Instant::now();
    println!("\nkilled {name}; its key stays until its {TTL:?} lease expires");
    wait_for(&endpoints, 2).await?;
    println!("{name} left the set after {:?}", started.elapsed());
    print_distribution(&balance).await?;

    backends.push(Backend::start("backend-4")?);
    wait_for(&endpoints, 3).await?;
    println!("\nbackend-4 joined: {:?}", sorted(&endpoints));
    print_distribution(&balance).await?;

    for backend in backends {
        backend.stop();
    }
    wait_for(&endpoints, 0).await?;
    println!("\nthe backends deregistered on their way out; the set is empty");
    Ok(())
}

/// Sends 30 requests and prints how many each backend answered.
async fn print_distribution<B>(balance: &B) -> Result<(), BoxError>
where
    B: tower::Service<(), Response = String, Error = BoxError> + Clone,
{
    let mut counts = BTreeMap::new();
    for _ in 0..30 {
        let name = balance.clone().oneshot(()).await?;
        *counts.entry(name).or_insert(0) += 1;
    }
    println!("30 requests, round robin:");
    for (name, count) in counts {
        println!("  {name}: {count}");
    }
    Ok(())
}

fn sorted<S>(endpoints: &Endpoints<String, S>) -> Vec<String>
where
    S: Clone + Send + Sync + 'static,
{
    let mut keys = endpoints.keys();
    keys.sort();
    keys
}

/// Waits until the set has `count` endpoints, for at most 10 s.
async fn wait_for<S>(endpoints: &Endpoints<String, S>, count: usize) -> Result<(), BoxError>
where
    S: Clone + Send + Sync + 'static,
{
    let deadline = Instant::now() + TTL + Duration::from_secs(8);
    while endpoints.len() != count {
        if Instant::now() > deadline {
            return Err(format!("the set did not reach {count} endpoints in time").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}
