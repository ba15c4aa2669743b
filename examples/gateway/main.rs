//! Run with
//!
//! ```not_rust
//! cargo run --release --example gateway
//! ```
//!
//! An HTTP load-balancing gateway, the job tower-lb is built for: image-processing requests spread
//! over several backend instances. It starts three backends on 127.0.0.1 (or balances the servers
//! given with `--backend`), a gateway on 127.0.0.1:8080 that forwards every request to one of
//! them through `tower::timeout` and `tower::retry`, ejecting failing backends for a while, sends a
//! short demo load through the gateway, prints where the requests went and the balancer's
//! per-endpoint statistics, and serves until Ctrl-C. `--help` lists the flags.
//!
//! ```not_rust
//! cargo run --release --example gateway -- --strategy weighted --weights 1,2,3 --exit-after-demo
//! cargo run --release --example gateway -- --strategy consistent --key header:x-key --no-demo
//! curl -s 'http://127.0.0.1:8080/resize?key=cat' --data-binary @image.png
//! ```

mod app;
mod backend;
mod demo;
mod http1;
mod proxy;
mod upstream;

use std::{
    io::Write,
    net::SocketAddr,
    process::ExitCode,
    str::FromStr,
    time::{Duration, Instant},
};

use app::{GatewayConfig, KeySource, StrategyKind, Target};
use backend::{spawn_backend, Backend, BackendOptions};
use demo::{DemoConfig, StatsTable};
use proxy::Workers;

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
    --strategy NAME      round-robin, weighted, hash or consistent (default: round-robin)
    --weights W,W,..     one weight >= 1 per backend, for weighted, hash and consistent
                         (default: 1 each)
    --key SOURCE         request key of hash and consistent: query:NAME or header:NAME
                         (default: query:key); requests without one use \"default_key\"
    --timeout-ms MS      time limit for a response, retries included; 504 beyond (default: 2000)
    --retries N          times a request is sent again after a failed connection (any method)
                         or a failed exchange (idempotent methods only) (default: 2)
    --eject-after N      failures in a row (errors, or 502/503/504 answers) after which a
                         backend is ejected: skipped for 250 ms, doubling up to 8 s (default: 1).
                         With hash and consistent, retries stay on the key's backend until it is
                         ejected, so above 1 its requests may fail while it is down
    --listen ADDR        gateway address; port 0 picks a free port (default: 127.0.0.1:8080)
    --workers N          threads serving the gateway, each with its own listening socket and
                         backend connections (default: $TOKIO_WORKER_THREADS if set, else the
                         number of CPUs)

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
            "--timeout-ms" => {
                options.gateway.timeout = Duration::from_millis(positive(&flag, &value()?)?)
            }
            "--retries" => options.gateway.retries = number(&flag, &value()?)?,
            "--eject-after" => options.gateway.eject_after = positive(&flag, &value()?)?,
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
            "--key has no effect with the {} strategy: use hash or consistent",
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

/// A whole number of at least 1, for `flag`.
fn positive<T: FromStr + Default + PartialEq>(flag: &str, text: &str) -> Result<T, String> {
    let n: T = number(flag, text)?;
    if n == T::default() {
        return Err(format!("{flag}: must be at least 1"));
    }
    Ok(n)
}

#[tokio::main]
async fn main() -> ExitCode {
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
    match run(options).await {
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
    let config = GatewayConfig {
        workers: options.workers,
        ..options.gateway.clone()
    };
    let app::Gateway {
        proxy,
        stats,
        endpoints: _endpoints,
    } = app::gateway(&targets, &config).map_err(|e| e.to_string())?;
    let gateway = Workers::start(options.listen, proxy, options.workers).map_err(|e| {
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
    let key = if config.strategy.is_keyed() {
        format!(", key {} (default \"{}\")", config.key, app::DEFAULT_KEY)
    } else {
        String::new()
    };
    println!(
        "gateway listening on http://{} ({} worker{}, strategy {}{weights}{key}, timeout {} ms, {} retries, ejection after {} failure{})",
        gateway.addr(),
        options.workers,
        if options.workers == 1 { "" } else { "s" },
        config.strategy,
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
