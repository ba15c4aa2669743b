//! The external programs of the test: started on free loopback ports, stopped by PID when dropped
//! (so that a failing test leaves nothing running), with their files in a temporary folder.

use std::{
    collections::BTreeSet,
    fs,
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
    thread,
    time::{Duration, Instant},
};

/// How long a program may take to accept connections on its port.
const STARTUP: Duration = Duration::from_secs(20);

/// A port on 127.0.0.1 that nothing listens on now (the kernel's pick for a listener that is
/// closed at once), and that this process has not handed out before: the kernel may offer a port
/// just closed again, and two servers of a test must not be told the same one.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    // Ports already handed out stay bound until a new one comes, so that the kernel offers others.
    let mut seen = Vec::new();
    loop {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a free loopback port");
        let port = listener.local_addr().expect("a bound address").port();
        if handed_out.insert(port) {
            return port;
        }
        seen.push(listener);
    }
}

/// A folder of the test's own, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).expect("a temporary folder");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A running program, killed by its PID and reaped when dropped.
pub struct Process {
    name: String,
    child: Child,
    /// Where its standard error goes, shown if it fails to start.
    log: PathBuf,
}

impl Process {
    /// Starts `program` with `args`, its output in `dir`, and waits until it accepts
    /// connections on 127.0.0.1:`port`. Panics, after killing it, if it exits or the port stays
    /// closed past the deadline.
    pub fn start(program: &str, args: &[String], dir: &Path, port: u16) -> Process {
        let log = dir.join(format!("{program}-{port}.log"));
        let stderr = fs::File::create(&log).expect("a log file");
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program} (is it installed?): {e}"));
        let mut process = Process {
            name: format!("{program} on port {port}"),
            child,
            log,
        };
        process.wait_for_port(port);
        process
    }

    fn wait_for_port(&mut self, port: u16) {
        let deadline = Instant::now() + STARTUP;
        loop {
            if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited with {status}: {}", self.name, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{} did not accept connections within {STARTUP:?}: {}",
                self.name,
                self.log()
            );
            // A connection refused comes back at once: pause briefly between attempts.
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // `Child::kill` signals this child's PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
