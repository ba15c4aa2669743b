//! Spreads requests over three in-process backends with round robin and with smooth weighted
//! round robin, changes the set at runtime, and prints where every request went.
//!
//! Run with
//!
//! ```not_rust
//! cargo run --example quickstart
//! ```

use std::{convert::Infallible, time::Duration};

use tower::{service_fn, util::BoxCloneSyncService, ServiceBuilder, ServiceExt};
use tower_lb::{
    strategy::{RoundRobin, WeightedRoundRobin},
    BalanceLayer, BoxError, Endpoints,
};

type Backend = BoxCloneSyncService<String, String, Infallible>;

/// A stand-in for a connection to one backend instance: it answers with its name.
fn backend(name: &'static str) -> Backend {
    BoxCloneSyncService::new(service_fn(move |path: String| async move {
        Ok::<_, Infallible>(format!("{path} handled by: {name}"))
    }))
}

async fn send<S>(client: &S, count: usize) -> Result<Vec<String>, BoxError>
where
    S: tower::Service<String, Response = String, Error = BoxError> + Clone,
{
    let mut answers = Vec::with_capacity(count);
    for i in 0..count {
        // Clone per request, as a web framework's router does: the rotation is shared.
        answers.push(client.clone().oneshot(format!("/image/{i}")).await?);
    }
    Ok(answers)
}

fn print(title: &str, answers: &[String]) {
    println!("{title}");
    for answer in answers {
        println!("  {answer}");
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let endpoints = Endpoints::from_iter([
        ("127.0.0.1:8081", backend("server1")),
        ("127.0.0.1:8082", backend("server2")),
        ("127.0.0.1:8083", backend("server3")),
    ]);
    let round_robin = ServiceBuilder::new()
        .timeout(Duration::from_secs(2))
        .layer(BalanceLayer::new(RoundRobin::new()))
        .service(endpoints.clone());
    print("round robin:", &send(&round_robin, 6).await?);

    // The same set at runtime: server2 leaves, server4 joins.
    endpoints.remove("127.0.0.1:8082");
    endpoints.insert("127.0.0.1:8084", backend("server4"));
    print(
        "round robin after removing server2 and adding server4:",
        &send(&round_robin, 6).await?,
    );

    let weighted = ServiceBuilder::new()
        .timeout(Duration::from_secs(2))
        .layer(BalanceLayer::new(WeightedRoundRobin::new()))
        .service(Endpoints::try_from_weighted([
            ("127.0.0.1:8081", backend("server1"), 1),
            ("127.0.0.1:8082", backend("server2"), 2),
            ("127.0.0.1:8083", backend("server3"), 3),
        ])?);
    print(
        "smooth weighted round robin, weights 1, 2, 3:",
        &send(&weighted, 6).await?,
    );
    Ok(())
}
