//! A real DNS server on loopback (Debian's dnsmasq) whose records a test changes: each change
//! restarts it on the same port with the new records (dnsmasq re-reads records given as
//! options only at start).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Dnsmasq {
    pub addr: SocketAddr,
    child: Option<Child>,
}

/// One record: `("cname", name, target)`, `("txt", name, value)` or `("a", name, ip)`.
pub type Record<'a> = (&'a str, &'a str, &'a str);

impl Dnsmasq {
    /// None when dnsmasq is not installed (scripts/test.sh installs it).
    pub fn start(records: &[Record]) -> Option<Dnsmasq> {
        if Command::new("dnsmasq").arg("--version").output().is_err() {
            assert!(std::env::var_os("CI").is_none(), "dnsmasq is not installed");
            eprintln!("dnsmasq is not installed: skipped outside CI");
            return None;
        }
        // A free port (UDP and TCP), chosen by the kernel.
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = udp.local_addr().unwrap();
        drop(udp);
        let mut d = Dnsmasq { addr, child: None };
        // Another test may take the port between its choice and dnsmasq's bind: choose again.
        for _ in 0..5 {
            if d.try_set(records) {
                return Some(d);
            }
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            d.addr = udp.local_addr().unwrap();
        }
        panic!("dnsmasq did not start on any of five ports");
    }

    /// Replaces every record (restarting on the same port).
    pub fn set(&mut self, records: &[Record]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.try_set(records) {
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not restart on {}",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts dnsmasq with `records`; false when it exited (its port is taken).
    fn try_set(&mut self, records: &[Record]) -> bool {
        self.stop();
        let mut args = vec![
            "--keep-in-foreground".to_string(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--conf-file=/dev/null".into(),
            "--bind-interfaces".into(),
            "--listen-address=127.0.0.1".into(),
            format!("--port={}", self.addr.port()),
            "--user=root".into(),
            "--pid-file".into(),
            "--local-ttl=0".into(),
        ];
        for (kind, name, value) in records {
            match *kind {
                "cname" => {
                    // dnsmasq serves a CNAME only to a target it knows.
                    args.push(format!("--host-record={value},127.0.0.1"));
                    args.push(format!("--cname={name},{value}"));
                }
                "txt" => args.push(format!("--txt-record={name},{value}")),
                "a" => args.push(format!("--host-record={name},{value}")),
                other => panic!("record kind {other}"),
            }
        }
        let child = Command::new("dnsmasq")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq");
        self.child = Some(child);
        // Ready when it answers on TCP; gone when it could not bind.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(self.addr).is_err() {
            let exited = self
                .child
                .as_mut()
                .is_some_and(|c| c.try_wait().ok().flatten().is_some());
            if exited {
                self.child = None;
                return false;
            }
            assert!(Instant::now() < deadline, "dnsmasq did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}
