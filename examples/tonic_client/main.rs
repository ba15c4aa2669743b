//! Run with
//!
//! ```not_rust
//! cargo run --example tonic_client --features tonic
//! ```
//!
//! A gRPC client that balances its calls over three tonic servers, each a tonic `Channel` in a
//! `tower_lb::Endpoints` set. The example starts the servers on 127.0.0.1 (ports picked by the
//! system), then prints which server answered each call:
//!
//! - with `RoundRobin`, calls rotate over the three servers;
//! - with `ConsistentHash` on the `x-key` metadata, every call with the same key reaches the same
//!   server;
//! - a call slower than the client's timeout fails with `DEADLINE_EXCEEDED`;
//! - once one server is stopped, the calls for its keys fail to connect, are retried, and land on
//!   the keys' next servers on the ring, while every other key stays where it was;
//! - a call without a key fails with `INVALID_ARGUMENT`, its source being tower-lb's `MissingKey`.
//!
//! Then it stops the servers and exits. The messages and the client and server glue are written
//! by hand (see `app.rs`), so no `protoc` is needed.

mod app;

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use app::{keyed_request, ClientConfig, Server, WhoamiRequest, KEY_HEADER};
use http::HeaderName;
use tower_lb::{
    error::MissingKey,
    key,
    strategy::{ConsistentHash, RoundRobin},
    BoxError,
};

/// The keys of the consistent-hashing calls.
const KEYS: [&str; 6] = ["alice", "bob", "carol", "dave", "erin", "frank"];

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), BoxError> {
    let mut servers: Vec<Server> = Vec::new();
    for i in 1..=3 {
        servers.push(app::spawn_server(&format!("server-{i}")).await?);
    }
    println!("servers:");
    for server in &servers {
        println!("  {}  {}", server.name(), server.addr());
    }
    let channels = app::channels(&servers)?;
    // A short timeout, so that the slow call below shows it quickly; loopback calls take well
    // under a millisecond.
    let config = ClientConfig {
        timeout: Duration::from_millis(500),
        ..ClientConfig::default()
    };
    println!(
        "client: timeout {} ms, {} retries, a server ejected after 1 failure",
        config.timeout.as_millis(),
        config.retries
    );

    let mut round_robin = app::balanced(RoundRobin::new(), &channels, &config).client;
    let mut answers = Vec::new();
    for _ in 0..6 {
        let reply = round_robin.whoami(WhoamiRequest::default()).await?;
        answers.push(reply.into_inner().server);
    }
    println!("\nround robin, 6 calls:\n  {}", answers.join(" "));

    let key = key::header(HeaderName::from_static(KEY_HEADER));
    let consistent = app::balanced(ConsistentHash::new(key), &channels, &config);
    let mut client = consistent.client.clone();
    println!("\nconsistent hash on the {KEY_HEADER} metadata, 3 calls per key:");
    for key in KEYS {
        let mut answers = Vec::new();
        for _ in 0..3 {
            answers.push(
                client
                    .whoami(keyed_request(key)?)
                    .await?
                    .into_inner()
                    .server,
            );
        }
        println!("  {key:<6} -> {}", answers.join(" "));
    }

    let delay_ms = 2 * config.timeout.as_millis() as u32;
    let started = Instant::now();
    let result = round_robin.whoami(WhoamiRequest { delay_ms }).await;
    let outcome = match result {
        Ok(reply) => format!("answered by {}", reply.into_inner().server),
        Err(status) => format!(
            "{:?} after {} ms",
            status.code(),
            started.elapsed().as_millis()
        ),
    };
    println!("\na call whose server waits {delay_ms} ms before answering: {outcome}");

    // Stop the server of the first key, and call again with every key.
    let before: Vec<String> = KEYS
        .iter()
        .map(|key| consistent.balance.endpoint_for_key(key).unwrap_or_default())
        .collect();
    let index = servers
        .iter()
        .position(|server| server.name() == before[0])
        .ok_or("the first key's server is not in the set")?;
    let stopped = servers.remove(index);
    let stopped_name = stopped.name().to_owned();
    stopped.stop().await?;
    println!("\n{stopped_name} stopped; the same keys again:");
    for (key, before) in KEYS.iter().zip(&before) {
        let server = client
            .whoami(keyed_request(key)?)
            .await?
            .into_inner()
            .server;
        let note = if server == *before {
            "(unchanged)".to_owned()
        } else {
            format!("(moved from {before})")
        };
        println!("  {key:<6} -> {server} {note}");
    }
    // Both clients' balancers count here: they share the endpoint set, and so its statistics and
    // ejections.
    println!("statistics of the endpoint set:");
    for stats in consistent.balance.stats() {
        let ejected = if stats.ejected_for.is_some() {
            "  ejected"
        } else {
            ""
        };
        println!(
            "  {}  picks {:>2}  failures {}{ejected}",
            stats.key, stats.picks, stats.failures
        );
    }

    let status = client
        .whoami(WhoamiRequest::default())
        .await
        .expect_err("a call without a key has nowhere to go");
    println!(
        "\na call without {KEY_HEADER}: {:?}, source MissingKey: {}",
        status.code(),
        app::source_of::<MissingKey>(&status).is_some()
    );

    for server in servers {
        server.stop().await?;
    }
    println!("\nservers stopped");
    Ok(())
}
