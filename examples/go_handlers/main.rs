//! Run with
//!
//! ```not_rust
//! cargo run --example go_handlers
//! cargo run --example go_handlers -- --listen 127.0.0.1:0
//! ```
//!
//! then `curl -s http://127.0.0.1:8080/round-robin` (or the address printed at start-up).
//!
//! Serves the four handlers of a Go load-balancing tutorial with tower-lb balancers, over three
//! in-process servers that answer `Request handled by: serverN`:
//!
//! | route | strategy | answers |
//! |---|---|---|
//! | `/round-robin` | `RoundRobin` | server1, server2, server3, server1, ... |
//! | `/` | the `/round-robin` balancer (one shared rotation) | as `/round-robin` |
//! | `/weighted` | `WeightedRoundRobin`, weights 1, 2, 3 | server3 server2 server1 server3 server2 server3, per 6 requests |
//! | `/hash?key=K` | `Hash`: crc32 (IEEE) of `K` mod 3, `default_key` when missing | `a` → server1, `b` → server3 |
//! | `/consistent?key=K` | `ConsistentHash` on the same key | always the same server for `K` |
//!
//! Go's weighted handler always answers server2 (its index restarts on every request); this one
//! gives the true 1:2:3 distribution. Stop with Ctrl-C.

mod app;

use std::{ffi::OsString, net::SocketAddr, process::ExitCode};

use tokio::net::TcpListener;

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

const USAGE_LINE: &str = "usage: go_handlers [--listen ADDR]";

const USAGE: &str = "\
usage: go_handlers [--listen ADDR]

Serves /round-robin, /, /weighted, /hash?key=K and /consistent?key=K, each balancing over
server1, server2 and server3.

options:
  --listen ADDR  the address to listen on (default 127.0.0.1:8080; port 0 picks a free port)
  -h, --help     print this help";

#[derive(Debug)]
enum Command {
    Serve(SocketAddr),
    Help,
}

/// Parses the arguments after the program name.
fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Command, String> {
    let mut listen = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let arg = arg
            .into_string()
            .map_err(|arg| format!("argument is not valid UTF-8: {arg:?}"))?;
        let value = match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--listen" => args
                .next()
                .ok_or("--listen needs an address, such as 127.0.0.1:8080")?
                .into_string()
                .map_err(|value| format!("--listen address is not valid UTF-8: {value:?}"))?,
            _ => match arg.strip_prefix("--listen=") {
                Some(value) => value.to_owned(),
                None => return Err(format!("unexpected argument '{arg}'")),
            },
        };
        let addr = value
            .parse()
            .map_err(|err| format!("invalid --listen address '{value}': {err}"))?;
        listen = Some(addr);
    }
    match listen {
        Some(addr) => Ok(Command::Serve(addr)),
        None => DEFAULT_LISTEN
            .parse()
            .map(Command::Serve)
            .map_err(|err| format!("invalid default address: {err}")),
    }
}

/// Resolves on Ctrl-C (or SIGTERM on Unix).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            eprintln!("cannot listen for Ctrl-C: {err}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(err) => {
                eprintln!("cannot listen for SIGTERM: {err}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();

    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    println!("shutting down");
}

#[tokio::main]
async fn main() -> ExitCode {
    let addr = match parse_args(std::env::args_os().skip(1)) {
        Ok(Command::Serve(addr)) => addr,
        Ok(Command::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("error: {err}\n{USAGE_LINE} (--help for details)");
            return ExitCode::from(2);
        }
    };

    let listener = match TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("error: cannot listen on {addr}: {err}");
            return ExitCode::FAILURE;
        }
    };
    // With port 0 the system picks the port: print the one it chose.
    let addr = listener.local_addr().unwrap_or(addr);
    println!("listening on http://{addr}");
    println!("try: curl -s http://{addr}/round-robin");

    match axum::serve(listener, app::app())
        .with_graceful_shutdown(shutdown_signal())
        .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: the server failed: {err}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, String> {
        parse_args(args.iter().map(OsString::from))
    }

    #[test]
    fn listen_address_defaults_and_parses() {
        let addr = |args: &[&str]| match parse(args) {
            Ok(Command::Serve(addr)) => addr.to_string(),
            other => panic!("{other:?}"),
        };
        assert_eq!(addr(&[]), "127.0.0.1:8080");
        assert_eq!(addr(&["--listen", "127.0.0.1:0"]), "127.0.0.1:0");
        assert_eq!(addr(&["--listen=[::1]:9000"]), "[::1]:9000");
        assert!(matches!(parse(&["--help"]), Ok(Command::Help)));
        assert!(matches!(parse(&["-h"]), Ok(Command::Help)));
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert_eq!(
            parse(&["--port", "80"]).unwrap_err(),
            "unexpected argument '--port'"
        );
        assert!(parse(&["--listen"])
            .unwrap_err()
            .contains("needs an address"));
        assert!(parse(&["--listen", "localhost"])
            .unwrap_err()
            .starts_with("invalid --listen address 'localhost'"));
    }
}
