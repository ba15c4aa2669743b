//! Run with
//!
//! ```not_rust
//! cargo run --release --example gateway
//! ```
//!
//! An HTTP load-balancing gateway, the job tower-lb is built for: image-processing requests spread
//! over several backend instances. It starts three backends on 127.0.0.1 (or balances the servers
//! given with `--backend`), a gateway on 127.0.0.1:8080 that forwards every request to one of
//! them through `tower::timeout`, tower-lb's retry policy and its balancer (ejecting failing
//! backends for a while), sends a short demo load through the gateway, prints where the requests
//! went and the balancer's per-endpoint statistics, and serves until Ctrl-C. `--help` lists the
//! flags.
//!
//! The server is hyper-util's (HTTP/1.1 and h2c) with the limits nginx holds clients to
//! (`server.rs`); each backend is one hyper-util client bound to it by `tower_lb::http::Origin`
//! (`app.rs`, with `body.rs` for request bodies and `config.rs` for the settings); `backend.rs`
//! and `demo.rs` are the embedded backends and the demo load.
//!
//! ```not_rust
//! cargo run --release --example gateway -- --strategy weighted --weights 1,2,3 --exit-after-demo
//! cargo run --release --example gateway -- --strategy consistent --key header:x-key --no-demo
//! curl -s 'http://127.0.0.1:8080/resize?key=cat' --data-binary @image.png
//! ```

mod app;
mod backend;
mod body;
mod config;
mod demo;
mod server;

use std::{
    io::Write,
    net::SocketAddr,
    process::ExitCode,
    str::FromStr,
    time::{Duration, Instant},
};

use backend::{spawn_backend, Backend, BackendOptions};
use config::{Balancer, GatewayConfig, KeySource, StrategyKind, Target};
use demo::{DemoConfig, StatsTable};
use server::{Limits, Server};

const HELP: &str = "\
gateway: an HTTP load-balancing gateway built on tower-lb, with a built-in demo load

Starts backend servers on 127.0.0.1 (or balances the --backend servers), a gateway on --listen
that forwards every request to one backend, then sends a demo load through the gateway, prints
where the requests went and the balancer's statistics, and serves until Ctrl-C (then prints the
statistics again).

USAGE:
    cargo run --release --example gateway -- [FLAGS]

BACKENDS:
    --backends N         embedded backends to start on 127.0.0.1 ports picked by the system,
                         named backend-1 .. backend-N (default: 3)
    --backend URL        balance the server at URL (http://host:port) instead of embedded
                         backends; repeat for more. --backends is then ignored. Endpoint keys
                         are the URLs' host:port
    --work ROUNDS        crc32 rounds over the body per request in embedded backends (default: 256)
    --delay-ms MS        extra time per request in embedded backends (default: 0)

BALANCING:
    --strategy NAME      round-robin, weighted, hash, consistent, maglev, p2c or random
                         (default: round-robin)
    --weights W,W,..     one weight >= 1 per backend, for every strategy but round-robin and
                         p2c (default: 1 each)
    --key SOURCE         request key of hash, consistent and maglev: query:NAME or header:NAME
                         (default: query:key); requests without one use \"default_key\"
    --timeout-ms MS      time limit for a response, retries included; 504 beyond (default: 2000)
    --retries N          times a request is sent again after a failed connection (any method)
                         or a failed exchange or 502/503/504 (idempotent methods only), each time
                         to a backend it has not tried (default: 2)
    --eject-after N      failures in a row (errors, or 502/503/504 answers) after which a
                         backend is ejected: skipped for 250 ms, doubling up to 8 s (default: 1)
    --backend-http2      speak HTTP/2 (h2c, prior knowledge) to the backends
    --balancer NAME      tower-lb, or tower-p2c: tower's p2c balancer behind tower's Buffer, for
                         comparison (no strategy, weights or ejection) (default: tower-lb)

SERVER:
    --listen ADDR        gateway address; port 0 picks a free port (default: 127.0.0.1:8080)
    --workers N          tokio worker threads (default: $TOKIO_WORKER_THREADS if set, else the
                         number of CPUs)
    --header-timeout-ms MS   time for a request head to arrive (default: 60000)
    --idle-timeout-ms MS     time a connection may stay without a request (default: 75000)
    --send-timeout-ms MS     time a write to a client may wait (default: 60000)
    --body-timeout-ms MS     time between two pieces of a request or response body
                             (default: 60000)
    --max-body-bytes N   largest request body; 413 beyond (default: 8388608)
    --max-connections N  open client connections; at the cap a new one closes the oldest idle
                         one (default: half the descriptor limit)

DEMO:
    --requests N         demo requests, POST /resize?key=user-{i % 50} with an x-key header and
                         a 16 KiB body (default: 600)
    --concurrency N      demo requests in flight (default: 16)
    --no-demo            serve without sending the demo load
    --exit-after-demo    exit after the demo report instead of serving until Ctrl-C

    -h, --help           print this help

Exit status: 0 on success, 1 if the gateway cannot start (or, with --exit-after-demo, if a demo
request failed), 2 for bad flags.
";

/// The command line, validated.
#[derive(Debug)]
struct Options {
    backends: usize,
    backend_urls: Vec<Target>,
    backend: BackendOptions,
    gateway: GatewayConfig,
    limits: Limits,
    listen: SocketAddr,
    workers: usize,
    demo: Option<DemoConfig>,
    exit_after_demo: bool,
}

/// The options, or `None` when `--help` was asked for.
fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<Options>, String> {
    let mut options = Options {
        backends: 3,
        backend_urls: Vec::new(),
        backend: BackendOptions::default(),
        gateway: GatewayConfig::default(),
        limits: Limits::default(),
        listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
        workers: default_workers(),
        demo: Some(DemoConfig::default()),
        exit_after_demo: false,
    };
    let mut demo = DemoConfig::default();
    let (mut no_demo, mut key_given, mut backends_given) = (false, false, false);
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        // `--flag value` and `--flag=value` both work.
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg.clone(), None),
        };
        let mut value = || -> Result<String, String> {
            match inline.clone() {
                Some(value) => Ok(value),
                // A flag where a value should be means the value is missing.
                None => args
                    .next()
                    .filter(|next| !next.starts_with("--"))
                    .ok_or_else(|| format!("{flag} needs a value (see --help)")),
            }
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--backends" => {
                options.backends = positive(&flag, &value()?)?;
                backends_given = true;
            }
            "--backend" => options
                .backend_urls
                .push(Target::from_url(&value()?).map_err(|e| e.to_string())?),
            "--work" => options.backend.work_rounds = number(&flag, &value()?)?,
            "--delay-ms" => {
                options.backend.delay = Duration::from_millis(number(&flag, &value()?)?)
            }
            "--strategy" => {
                options.gateway.strategy =
                    StrategyKind::from_str(&value()?).map_err(|e| e.to_string())?
            }
            "--weights" => {
                let list = value()?;
                let weights = list
                    .split(',')
                    .map(|w| number(&flag, w.trim()))
                    .collect::<Result<Vec<u32>, _>>()?;
                options.gateway.weights = Some(weights);
            }
            "--key" => {
                options.gateway.key = KeySource::from_str(&value()?).map_err(|e| e.to_string())?;
                key_given = true;
            }
            "--timeout-ms" => options.gateway.timeout = millis(&flag, &value()?)?,
            "--retries" => options.gateway.retries = number(&flag, &value()?)?,
            "--eject-after" => options.gateway.eject_after = positive(&flag, &value()?)?,
            "--balancer" => {
                options.gateway.balancer =
                    Balancer::from_str(&value()?).map_err(|e| e.to_string())?
            }
            "--backend-http2" if inline.is_some() => return Err(format!("{flag} takes no value")),
            "--backend-http2" => options.gateway.backend_http2 = true,
            "--header-timeout-ms" => options.limits.header_timeout = millis(&flag, &value()?)?,
            "--idle-timeout-ms" => options.limits.idle_timeout = millis(&flag, &value()?)?,
            "--send-timeout-ms" => options.limits.send_timeout = millis(&flag, &value()?)?,
            "--body-timeout-ms" => options.gateway.body_timeout = millis(&flag, &value()?)?,
            "--max-body-bytes" => options.gateway.max_body_bytes = positive(&flag, &value()?)?,
            "--max-connections" => options.limits.max_connections = positive(&flag, &value()?)?,
            "--listen" => {
                let text = value()?;
                options.listen = text.parse().map_err(|_| {
                    format!("--listen: expected an address like 127.0.0.1:8080, got {text:?}")
                })?;
            }
            "--workers" => options.workers = positive(&flag, &value()?)?,
            "--requests" => demo.requests = positive(&flag, &value()?)?,
            "--concurrency" => demo.concurrency = positive(&flag, &value()?)?,
            "--no-demo" | "--exit-after-demo" if inline.is_some() => {
                return Err(format!("{flag} takes no value"))
            }
            "--no-demo" => no_demo = true,
            "--exit-after-demo" => options.exit_after_demo = true,
            other if other.starts_with('-') => {
                return Err(format!("unknown flag {other} (see --help)"))
            }
            other => return Err(format!("unexpected argument {other:?} (see --help)")),
        }
    }
    if no_demo && options.exit_after_demo {
        return Err("--no-demo and --exit-after-demo together would exit at once".to_owned());
    }
    if key_given && !options.gateway.strategy.is_keyed() {
        return Err(format!(
            "--key has no effect with the {} strategy: use hash, consistent or maglev",
            options.gateway.strategy
        ));
    }
    let backends = if options.backend_urls.is_empty() {
        options.backends
    } else {
        if backends_given {
            eprintln!("note: --backends is ignored with --backend");
        }
        let urls = &options.backend_urls;
        if let Some(twice) = (1..urls.len()).find(|&i| urls[..i].contains(&urls[i])) {
            return Err(format!("backend {} is given twice", urls[twice].url()));
        }
        options.backend_urls.len()
    };
    options.gateway.check(backends).map_err(|e| e.to_string())?;
    options.demo = (!no_demo).then_some(demo);
    Ok(Some(options))
}

/// The default worker count: `TOKIO_WORKER_THREADS`, as for a tokio runtime, or one per CPU.
fn default_workers() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|&n| n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
}

/// A whole number, for `flag`.
fn number<T: FromStr>(flag: &str, text: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{flag}: expected a whole number, got {text:?}"))
}

/// A duration of at least 1 ms, for `flag`.
fn millis(flag: &str, text: &str) -> Result<Duration, String> {
    positive(flag, text).map(Duration::from_millis)
}

/// A whole number of at least 1, for `flag`.
fn positive<T: FromStr + Default + PartialEq>(flag: &str, text: &str) -> Result<T, String> {
    let n: T = number(flag, text)?;
    if n == T::default() {
        return Err(format!("{flag}: must be at least 1"));
    }
    Ok(n)
}

fn main() -> ExitCode {
    let options = match parse(std::env::args().skip(1)) {
        Ok(Some(options)) => options,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.workers)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(options)) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(options: Options) -> Result<ExitCode, String> {
    let mut embedded: Vec<Backend> = Vec::new();
    let targets = if options.backend_urls.is_empty() {
        for i in 1..=options.backends {
            let backend = spawn_backend(&format!("backend-{i}"), options.backend.clone())
                .await
                .map_err(|e| format!("cannot start a backend: {e}"))?;
            embedded.push(backend);
        }
        embedded.iter().map(Backend::target).collect()
    } else {
        options.backend_urls.clone()
    };
    let app::Gateway {
        service,
        stats,
        endpoints: _endpoints,
    } = app::gateway(&targets, &options.gateway).map_err(|e| e.to_string())?;
    let gateway = Server::bind(options.listen, service, options.limits.clone())
        .await
        .map_err(|e| {
            format!(
                "cannot listen on {}: {e} (--listen 127.0.0.1:0 picks a free port)",
                options.listen
            )
        })?;

    let config = &options.gateway;
    println!("backends:");
    for target in &targets {
        println!("  {:<12} {}", target.key, target.url());
    }
    let weights = match &config.weights {
        Some(weights) if config.strategy.uses_weights() => format!(", weights {weights:?}"),
        _ => String::new(),
    };
    let key = if config.balancer == Balancer::TowerP2c {
        String::new()
    } else if config.strategy.is_keyed() {
        format!(", key {} (default \"{}\")", config.key, config::DEFAULT_KEY)
    } else {
        String::new()
    };
    println!(
        "gateway listening on http://{} ({} worker{}, {}{weights}{key}, timeout {} ms, {} retries, ejection after {} failure{})",
        gateway.addr(),
        options.workers,
        if options.workers == 1 { "" } else { "s" },
        match config.balancer {
            Balancer::TowerLb => format!("strategy {}", config.strategy),
            Balancer::TowerP2c => "tower's p2c balancer behind a buffer".to_owned(),
        },
        config.timeout.as_millis(),
        config.retries,
        config.eject_after,
        if config.eject_after == 1 { "" } else { "s" },
    );

    let mut code = ExitCode::SUCCESS;
    if let Some(demo) = &options.demo {
        println!(
            "\ndemo: {} requests, {} in flight: POST /resize?key=user-{{i % {}}} with an x-key header and a {} KiB body",
            demo.requests,
            demo.concurrency,
            demo.distinct_keys,
            demo.body_bytes / 1024
        );
        let report = demo::demo(gateway.addr(), &targets, demo, progress(demo.requests)).await;
        eprintln!();
        println!("{report}");
        println!("\nbalancer statistics:\n{}", StatsTable(&stats.snapshot()));
        if options.exit_after_demo && report.failed() > 0 {
            code = ExitCode::FAILURE;
        }
    }

    if !options.exit_after_demo {
        println!(
            "\nserving on http://{} until Ctrl-C, e.g.\n  curl -s 'http://{}/resize?key=cat' --data-binary 'an image'",
            gateway.addr(),
            gateway.addr()
        );
        tokio::signal::ctrl_c()
            .await
            .map_err(|e| format!("cannot wait for Ctrl-C: {e}"))?;
        println!(
            "\nshutting down; balancer statistics:\n{}",
            StatsTable(&stats.snapshot())
        );
    }
    // The gateway first, so that nothing is forwarded to backends that are going away.
    gateway.stop().await.map_err(|e| format!("gateway: {e}"))?;
    for backend in embedded {
        let name = backend.name().to_owned();
        backend.stop().await.map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(code)
}

/// A progress callback that rewrites one line on stderr at every tenth of the run.
fn progress(total: usize) -> impl FnMut(usize, usize) {
    let started = Instant::now();
    let mut shown = 0;
    move |done, _| {
        let tenth = done * 10 / total.max(1);
        if tenth > shown || done == total {
            shown = tenth;
            let mut stderr = std::io::stderr().lock();
            let _ = write!(
                stderr,
                "\r{done}/{total} requests ({}%) in {:.2} s",
                done * 100 / total.max(1),
                started.elapsed().as_secs_f64()
            );
            let _ = stderr.flush();
        }
    }
}
