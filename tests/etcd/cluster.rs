//! Real etcd servers for the tests: one member or a three-member cluster on loopback, each
//! member on free ports with its own temporary data directory, killed by PID when the cluster
//! is dropped (so a failing test leaves no process behind).

use std::{
    fs::{self, File},
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tower_lb::etcd::etcd_client::{Client, ConnectOptions};

/// Raft timings for loopback: elections within a few hundred milliseconds, and leases as short
/// as etcd allows (1 s: its minimum is one and a half election timeouts, rounded up).
const HEARTBEAT_MS: u32 = 25;
const ELECTION_MS: u32 = 250;

/// The longest a cluster may take to start or to elect a leader.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A set of etcd members on loopback.
pub struct Cluster {
    dir: PathBuf,
    token: String,
    members: Vec<Member>,
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    process: Option<Child>,
}

impl Cluster {
    /// One member.
    pub async fn single() -> Self {
        Self::start(1).await
    }

    /// Three members.
    pub async fn three() -> Self {
        Self::start(3).await
    }

    async fn start(size: usize) -> Self {
        // Free ports are picked by binding and releasing them: another process may take one in
        // between, so a member that fails to start makes the whole cluster start again.
        let mut last_error = String::new();
        for _ in 0..3 {
            let mut cluster = Self::new(size);
            for index in 0..size {
                cluster.spawn(index, "new");
            }
            match cluster.wait_ready().await {
                Ok(()) => return cluster,
                Err(error) => last_error = error,
            }
        }
        panic!("etcd did not start: {last_error}");
    }

    fn new(size: usize) -> Self {
        static CLUSTERS: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let token = format!(
            "tower-lb-etcd-{}-{}-{nanos}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(&token);
        fs::create_dir_all(&dir).unwrap();
        // Holding every listener at once makes the ports distinct.
        let listeners: Vec<TcpListener> = (0..size * 2)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        drop(listeners);
        let members = (0..size)
            .map(|index| Member {
                name: format!("m{index}"),
                client_port: ports[index * 2],
                peer_port: ports[index * 2 + 1],
                process: None,
            })
            .collect();
        Self {
            dir,
            token,
            members,
        }
    }

    fn spawn(&mut self, index: usize, state: &str) {
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let member = &self.members[index];
        let data_dir = self.dir.join(&member.name);
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", member.name)))
            .unwrap();
        let client_url = format!("http://127.0.0.1:{}", member.client_port);
        let peer_url = format!("http://127.0.0.1:{}", member.peer_port);
        let child = Command::new("etcd")
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", &self.token])
            .args(["--heartbeat-interval", &HEARTBEAT_MS.to_string()])
            .args(["--election-timeout", &ELECTION_MS.to_string()])
            // One transaction may put a thousand endpoints.
            .args(["--max-txn-ops", "1024"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("etcd runs (Debian package etcd-server)");
        self.members[index].process = Some(child);
    }

    /// The client URL of each member.
    pub fn urls(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// The client URLs of the running members.
    pub fn running_urls(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.process.is_some())
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// A client of the running members.
    pub async fn client(&self) -> Client {
        let options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2));
        Client::connect(self.running_urls(), Some(options))
            .await
            .unwrap()
    }

    /// Kills member `index` (SIGKILL, by PID) and waits until it is gone.
    pub fn stop(&mut self, index: usize) {
        if let Some(mut process) = self.members[index].process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Starts member `index` again on its data directory.
    pub fn restart(&mut self, index: usize) {
        assert!(self.members[index].process.is_none(), "member is running");
        self.spawn(index, "existing");
    }

    /// Waits until every running member is up and the cluster has a leader: a linearizable read
    /// through each member succeeds.
    pub async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_DEADLINE;
        for index in 0..self.members.len() {
            let url = format!("http://127.0.0.1:{}", self.members[index].client_port);
            while let Some(process) = &mut self.members[index].process {
                if let Ok(Some(status)) = process.try_wait() {
                    return Err(format!(
                        "member {index} exited with {status}: {}",
                        self.log(index)
                    ));
                }
                if read_through(&url).await {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("member {index} not ready: {}", self.log(index)));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// The index of the current leader, once the running members agree on one.
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            for (index, member) in self.members.iter().enumerate() {
                if member.process.is_none() {
                    continue;
                }
                let url = format!("http://127.0.0.1:{}", member.client_port);
                let Ok(mut client) = Client::connect([url], None).await else {
                    continue;
                };
                let Ok(Ok(status)) =
                    tokio::time::timeout(Duration::from_secs(1), client.status()).await
                else {
                    continue;
                };
                let me = status.header().map(|h| h.member_id());
                if status.leader() != 0 && me == Some(status.leader()) {
                    return index;
                }
            }
            assert!(Instant::now() < deadline, "no etcd leader");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Makes member `index` the leader, and waits until it is.
    pub async fn move_leader(&self, index: usize) {
        let leader = self.leader().await;
        if leader == index {
            return;
        }
        let target = self.member_id(index).await;
        let mut client = Client::connect([self.url(leader)], None).await.unwrap();
        client.move_leader(target).await.unwrap();
        let deadline = Instant::now() + START_DEADLINE;
        while self.leader().await != index {
            assert!(Instant::now() < deadline, "leadership did not move");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn member_id(&self, index: usize) -> u64 {
        let mut client = Client::connect([self.url(index)], None).await.unwrap();
        let status = client.status().await.unwrap();
        status.header().unwrap().member_id()
    }

    /// How many watchers member `index` serves, from its metrics.
    pub async fn watchers(&self, index: usize) -> u64 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = format!("127.0.0.1:{}", self.members[index].client_port);
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: etcd\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix("etcd_debugging_mvcc_watcher_total "))
            .and_then(|value| value.trim().parse().ok())
            .expect("etcd reports its watchers")
    }

    fn url(&self, index: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[index].client_port)
    }

    /// Runs `etcdctl` against the running members; panics unless it succeeds. Returns its output.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let output = self.etcdctl_output(args);
        assert!(
            output.status.success(),
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Runs `etcdctl` against the running members, retrying while it fails (as during an
    /// election), for at most a few seconds.
    pub async fn etcdctl_retrying(&self, args: &[&str]) -> String {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let output = self.etcdctl_output(args);
            if output.status.success() {
                return String::from_utf8(output.stdout).unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "etcdctl {args:?} kept failing: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn etcdctl_output(&self, args: &[&str]) -> std::process::Output {
        self.etcdctl_command(args)
            .output()
            .expect("etcdctl runs (Debian package etcd-client)")
    }

    /// An `etcdctl` command against the running members, to run or spawn.
    pub fn etcdctl_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("etcdctl");
        command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.running_urls().join(",")))
            .args(["--dial-timeout=1s", "--command-timeout=2s"])
            .args(args)
            .stdin(Stdio::null());
        command
    }

    fn log(&self, index: usize) -> String {
        let text = fs::read_to_string(self.dir.join(format!("{}.log", self.members[index].name)))
            .unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for index in 0..self.members.len() {
            self.stop(index);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Whether a linearizable read through `url` succeeds within a second.
async fn read_through(url: &str) -> bool {
    let Ok(mut client) = Client::connect([url], None).await else {
        return false;
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), client.get("ready", None)).await,
        Ok(Ok(_))
    )
}
