//! `ConsistentHash` with `Placement::Libketama` against the real programs: twemproxy
//! (`nutcracker`, `distribution: ketama`, `hash: md5`) in front of N `memcached` servers, all on
//! free loopback ports. 10,000 keys are set through twemproxy with the memcached text protocol;
//! each memcached server is then asked directly which keys it holds, and tower-lb must map every
//! key to the server that holds it.
//!
//! Needs `memcached` and `nutcracker` on the PATH (Debian packages `memcached` and `nutcracker`;
//! CI's `.ci/run` installs them when missing).

mod processes;

use std::{
    collections::HashMap,
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, TcpStream},
    time::Duration,
};

use processes::{free_port, Process, TempDir};
use tower_lb::{
    key,
    strategy::{ConsistentHash, Placement},
    Balance, Endpoints,
};

/// The keys set through twemproxy in each case.
const KEYS: usize = 10_000;
/// How long a reply may take before the test fails rather than hangs.
const REPLY: Duration = Duration::from_secs(30);

/// A memcached server as twemproxy's `servers:` list gives it.
struct Server {
    port: u16,
    weight: u32,
    name: Option<String>,
}

impl Server {
    /// The `servers:` entry: `127.0.0.1:port:weight`, then the name if any.
    fn entry(&self) -> String {
        let mut entry = format!("127.0.0.1:{}:{}", self.port, self.weight);
        if let Some(name) = &self.name {
            write!(entry, " {name}").unwrap();
        }
        entry
    }

    /// The endpoint key that names it as twemproxy does: its name, else `host:port`.
    fn endpoint_key(&self) -> String {
        match &self.name {
            Some(name) => name.clone(),
            None => format!("127.0.0.1:{}", self.port),
        }
    }
}

/// The test's keys: memcached keys (no spaces, under 250 bytes) of varied shapes.
fn keys() -> Vec<String> {
    (0..KEYS)
        .map(|i| match i % 3 {
            0 => format!("key-{i}"),
            1 => format!("user:{i}:profile"),
            _ => format!("{:x}", (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        })
        .collect()
}

fn connect(port: u16) -> BufReader<TcpStream> {
    let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("a loopback connection");
    stream.set_read_timeout(Some(REPLY)).unwrap();
    stream.set_write_timeout(Some(REPLY)).unwrap();
    BufReader::new(stream)
}

fn read_line(connection: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    let read = connection.read_line(&mut line).expect("a reply line");
    assert!(read > 0, "the connection closed");
    line
}

/// Sets every key (to its own name) through the memcached text protocol, 500 commands a batch.
fn set_all(port: u16, keys: &[String]) {
    let mut connection = connect(port);
    for batch in keys.chunks(500) {
        let mut commands = String::new();
        for key in batch {
            write!(commands, "set {key} 0 0 {}\r\n{key}\r\n", key.len()).unwrap();
        }
        connection.get_mut().write_all(commands.as_bytes()).unwrap();
        for key in batch {
            assert_eq!(read_line(&mut connection), "STORED\r\n", "set {key}");
        }
    }
}

/// The keys among `keys` that the memcached server on `port` holds, asked 100 at a time.
fn held(port: u16, keys: &[String]) -> Vec<String> {
    let mut connection = connect(port);
    let mut found = Vec::new();
    for batch in keys.chunks(100) {
        let command = format!("get {}\r\n", batch.join(" "));
        connection.get_mut().write_all(command.as_bytes()).unwrap();
        loop {
            let line = read_line(&mut connection);
            if line == "END\r\n" {
                break;
            }
            // VALUE <key> <flags> <bytes>
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(fields.first(), Some(&"VALUE"), "reply {line:?}");
            let bytes: usize = fields[3].parse().unwrap();
            let mut data = vec![0; bytes + 2];
            connection.read_exact(&mut data).unwrap();
            assert_eq!(&data[..bytes], fields[1].as_bytes());
            found.push(fields[1].to_owned());
        }
    }
    found
}

/// Starts the servers and twemproxy over them, sets the keys through twemproxy, and returns the
/// share of keys that tower-lb's libketama placement maps to the server holding them, and the
/// first key it maps elsewhere.
fn run(weights: &[u32], name: impl Fn(usize) -> Option<String>) -> (f64, Option<String>) {
    let dir = TempDir::new("tower-lb-libketama");
    let servers: Vec<Server> = weights
        .iter()
        .enumerate()
        .map(|(i, &weight)| Server {
            port: free_port(),
            weight,
            name: name(i),
        })
        .collect();
    let _memcached: Vec<Process> = servers
        .iter()
        .map(|server| {
            let args = [
                "-l",
                "127.0.0.1",
                "-p",
                &server.port.to_string(),
                "-U",
                "0",
                "-t",
                "1",
                "-m",
                "16",
                // memcached refuses to run as root without a user to switch to; it ignores the
                // option otherwise.
                "-u",
                "root",
            ];
            let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            Process::start("memcached", &args, dir.path(), server.port)
        })
        .collect();

    let listen = free_port();
    let mut config = format!(
        "pool:\n  listen: 127.0.0.1:{listen}\n  hash: md5\n  distribution: ketama\n  \
         timeout: 10000\n  auto_eject_hosts: false\n  servers:\n"
    );
    for server in &servers {
        writeln!(config, "   - {}", server.entry()).unwrap();
    }
    let config_path = dir.path().join("nutcracker.yml");
    fs::write(&config_path, &config).unwrap();
    let stats = free_port();
    let args = [
        "-c".to_owned(),
        config_path.display().to_string(),
        "-s".to_owned(),
        stats.to_string(),
        "-a".to_owned(),
        "127.0.0.1".to_owned(),
    ];
    let _twemproxy = Process::start("nutcracker", &args, dir.path(), listen);

    let keys = keys();
    set_all(listen, &keys);
    let mut holder: HashMap<String, usize> = HashMap::new();
    for (index, server) in servers.iter().enumerate() {
        for key in held(server.port, &keys) {
            let previous = holder.insert(key.clone(), index);
            assert!(previous.is_none(), "{key} on two servers");
        }
    }
    assert_eq!(holder.len(), keys.len(), "every key set is on a server");

    let set = Endpoints::try_from_weighted(
        servers
            .iter()
            .map(|server| (server.endpoint_key(), (), server.weight)),
    )
    .unwrap();
    let strategy = ConsistentHash::new(key::path()).placement(Placement::Libketama);
    let balance = Balance::new(strategy, set);
    let map = balance.key_map();
    let mut same = 0;
    let mut first = None;
    for key in &keys {
        let ours = map.endpoint_for_key(key).expect("a nonempty set");
        let theirs = servers[holder[key]].endpoint_key();
        if *ours == theirs {
            same += 1;
        } else if first.is_none() {
            first = Some(format!("{key}: tower-lb {ours}, twemproxy {theirs}"));
        }
    }
    (same as f64 / keys.len() as f64, first)
}

#[test]
fn libketama_placement_puts_every_key_where_twemproxy_does_with_equal_weights() {
    for n in [3, 5, 10] {
        let (rate, first) = run(&vec![1; n], |_| None);
        println!(
            "N={n}, weights 1: {:.2}% of {KEYS} keys agree",
            100.0 * rate
        );
        assert_eq!(rate, 1.0, "N={n}: first {first:?}");
    }
}

#[test]
fn libketama_placement_puts_every_key_where_twemproxy_does_with_unequal_weights_and_names() {
    const WEIGHTS: [u32; 10] = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3];
    for n in [3, 5, 10] {
        // Every other server has a name, which twemproxy hashes instead of its address.
        let (rate, first) = run(&WEIGHTS[..n], |i| {
            (i % 2 == 1).then(|| format!("cache-{i}"))
        });
        println!(
            "N={n}, weights {:?}, named servers: {:.2}% of {KEYS} keys agree",
            &WEIGHTS[..n],
            100.0 * rate
        );
        assert_eq!(rate, 1.0, "N={n}: first {first:?}");
    }
}
