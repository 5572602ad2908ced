//! Pebble, the ACME test CA (Debian's `pebble`), on loopback: its directory over HTTPS with a
//! test CA, validating HTTP-01 against the gateway's plain port and resolving names through a
//! DNS server the test runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::upstream::TestCa;

pub struct Pebble {
    pub directory: String,
    /// The CA of pebble's own HTTPS listener (`--acme-ca`).
    pub https_ca: PathBuf,
    mgmt: SocketAddr,
    child: Child,
}

/// A free loopback port, chosen by the kernel.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Pebble {
    pub fn installed() -> bool {
        let ok = Command::new("pebble").arg("-h").output().is_ok();
        if !ok {
            assert!(std::env::var_os("CI").is_none(), "pebble is not installed");
            eprintln!("pebble is not installed: skipped outside CI");
        }
        ok
    }

    /// Starts pebble listening on `port`, validating HTTP-01 on `http_port`, asking `dns`.
    pub fn start(dir: &Path, port: u16, http_port: u16, dns: SocketAddr) -> Pebble {
        let ca = TestCa::with_names(&["127.0.0.1", "localhost"]);
        let cert = dir.join("pebble.crt");
        let key = dir.join("pebble.key");
        let https_ca = dir.join("pebble-https-ca.pem");
        std::fs::write(&cert, &ca.cert_pem).unwrap();
        std::fs::write(&key, &ca.key_pem).unwrap();
        std::fs::write(&https_ca, &ca.ca_pem).unwrap();
        let mgmt: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": mgmt.to_string(),
            "certificate": cert, "privateKey": key,
            "httpPort": http_port, "tlsPort": free_port(),
            "ocspResponderURL": "", "externalAccountBindingRequired": false,
        }});
        let config_file = dir.join("pebble.json");
        std::fs::write(&config_file, config.to_string()).unwrap();
        let child = Command::new("pebble")
            .arg("-config")
            .arg(&config_file)
            .args(["-dnsserver", &dns.to_string()])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pebble");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "pebble did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Pebble {
            directory: format!("https://127.0.0.1:{port}/dir"),
            https_ca,
            mgmt,
            child,
        }
    }

    /// The root that signs the certificates pebble issues (new at each start).
    pub fn root_pem(&self) -> String {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(&self.https_ca)
            .arg(format!("https://{}/roots/0", self.mgmt))
            .output()
            .expect("curl installed");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
