//! Run with
//!
//! ```not_rust
//! cargo run --example http_client
//! ```
//!
//! A microservice calling another service's three instances through tower-lb: the setup most
//! users want. An axum app serves `GET /greeting?user=NAME`; its handler asks the `users`
//! service for the user's profile through one hyper-util client, `tower_lb::http::origins`, a
//! consistent-hash balancer on the `user` query parameter with outlier detection, tower-lb's
//! retry policy and a timeout. The example prints which instance served each user, stops one
//! instance and shows that only its users moved (each to one other instance), then prints the
//! balancer's statistics.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use axum::{extract::Query, extract::State, http::StatusCode, routing::get, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tokio::{net::TcpListener, sync::oneshot};
use tower::{util::BoxCloneSyncService, Layer, ServiceBuilder, ServiceExt};
use tower_lb::{
    health::OutlierDetection, http::origins, key, retry, strategy::ConsistentHash, BalanceLayer,
    BoxError,
};

const USERS: [&str; 6] = ["alice", "bob", "carol", "dave", "erin", "frank"];

/// The upstream client as the handler sees it: a request in, a response or an error out.
type Users = BoxCloneSyncService<
    http::Request<Empty<Bytes>>,
    http::Response<hyper::body::Incoming>,
    BoxError,
>;

type Stop = (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
);

/// An instance of the `users` service, named `name`: its URL, and a handle that stops it.
async fn users_instance(name: &'static str) -> Result<(String, Stop), BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let app = Router::new().route("/profile", get(move || async move { name }));
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(async move {
        let shutdown = async { drop(stopped.await) };
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    });
    Ok((url, (stop, served)))
}

/// The handler: the user's profile from whichever instance the balancer picks for them.
async fn greeting(
    State(users): State<Users>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<String, (StatusCode, String)> {
    let user = query.get("user").cloned().unwrap_or_default();
    let request = http::Request::get(format!("/profile?user={user}"))
        .body(Empty::new())
        .expect("a valid request");
    let failed = |error: BoxError| (tower_lb::http::status_code(&*error), error.to_string());
    let response = users.oneshot(request).await.map_err(failed)?;
    let instance = response
        .into_body()
        .collect()
        .await
        .map_err(|e| failed(e.into()))?;
    Ok(format!(
        "hello {user}, from {}",
        String::from_utf8_lossy(&instance.to_bytes())
    ))
}

/// Asks the app for every user's greeting; returns the instance that served each.
async fn round(app: SocketAddr) -> Result<BTreeMap<&'static str, String>, BoxError> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut served = BTreeMap::new();
    for user in USERS {
        let uri = format!("http://{app}/greeting?user={user}");
        let response = client.get(uri.parse()?).await?;
        let status = response.status();
        let text = String::from_utf8(response.into_body().collect().await?.to_bytes().to_vec())?;
        // "hello alice, from users-2", or the status and the error.
        let instance = text.rsplit("from ").next().filter(|_| status.is_success());
        served.insert(
            user,
            instance.map_or(format!("{status}: {text}"), str::to_owned),
        );
    }
    Ok(served)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut urls = Vec::new();
    let mut stops = Vec::new();
    for name in ["users-1", "users-2", "users-3"] {
        let (url, stop) = users_instance(name).await?;
        println!("{name} listening on {url}");
        urls.push(url);
        stops.push(stop);
    }

    // One client, one connection pool per instance; the set is keyed by host:port.
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let balance = BalanceLayer::new(ConsistentHash::new(key::query("user")))
        .outlier_detection(OutlierDetection::new())
        .skip_tried_endpoints()
        .layer(origins(&client, &urls)?);
    let users: Users = BoxCloneSyncService::new(
        ServiceBuilder::new()
            .timeout(Duration::from_secs(2))
            .layer(retry::RetryLayer::new(retry::Policy::new()))
            .service(balance.clone()),
    );
    let app = Router::new()
        .route("/greeting", get(greeting))
        .with_state(users);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!("app listening on http://{addr}\n");

    let before = round(addr).await?;
    for (user, instance) in &before {
        println!("{user:<6} served by {instance}");
    }

    // users-2 goes away: its users' retries go to their next instance on the ring.
    let (stop, served) = stops.remove(1);
    let _ = stop.send(());
    served.await??;
    println!("\nusers-2 stopped:");
    let after = round(addr).await?;
    for (user, instance) in &after {
        let moved = if before[user] == *instance {
            ""
        } else {
            "  (moved)"
        };
        println!("{user:<6} served by {instance}{moved}");
    }

    println!("\nbalancer statistics:");
    for stats in balance.stats() {
        let ejected = stats
            .ejected_for
            .map_or("-".to_owned(), |left| format!("{left:?} more"));
        println!(
            "{:<16} picks {:>3}  failures {}  ejected {ejected}",
            stats.key, stats.picks, stats.failures
        );
    }
    Ok(())
}
