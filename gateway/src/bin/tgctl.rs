//! `tgctl`: the operator's command line over the gateway's admin API — clusters and their
//! agent tokens. Tables for people, `--json` for scripts; `--admin-url` and `--admin-token`
//! from flags or `TG_ADMIN_URL` / `TG_ADMIN_TOKEN`.
// Indexing a `serde_json::Value` by key yields `Null` when the key is absent; it never panics.
#![allow(clippy::indexing_slicing)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::Value;

/// How long one admin call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(
    name = "tgctl",
    version,
    about = "Operate a Tunnelgate gateway through its admin API"
)]
struct Cli {
    /// The gateway's internal listener (`--admin-listen`).
    #[arg(long, env = "TG_ADMIN_URL", default_value = "http://127.0.0.1:9090")]
    admin_url: String,
    /// An admin token (`--admin-token` of the gateway).
    #[arg(long, env = "TG_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Clusters (tenants).
    #[command(subcommand)]
    Clusters(Clusters),
    /// Agent tokens of a cluster.
    #[command(subcommand)]
    Tokens(Tokens),
    /// Access tokens to a cluster's Kubernetes API (`{cluster}.k8s.{domain}`).
    #[command(subcommand)]
    Access(Access),
    /// Custom domains of a cluster.
    #[command(subcommand)]
    Domains(Domains),
    /// Sets a cluster's request rate limit.
    RateLimit {
        cluster: String,
        requests_per_second: u32,
        burst: u32,
    },
}

#[derive(Subcommand)]
enum Domains {
    /// Registers HOSTNAME; prints the DNS record that proves it.
    Add { cluster: String, hostname: String },
    /// Checks HOSTNAME's DNS record now.
    Verify { cluster: String, hostname: String },
    /// The cluster's domains and their status.
    List { cluster: String },
    /// Removes a domain: its routes stop serving.
    Remove { cluster: String, hostname: String },
}

#[derive(Subcommand)]
enum Access {
    /// Issues a token for USER; prints a kubeconfig using it (the token is shown only there).
    Issue {
        cluster: String,
        user: String,
        /// A group of the user (repeat for more).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Lifetime in seconds (default one day).
        #[arg(long, default_value_t = 86_400)]
        ttl_seconds: u64,
    },
    /// The cluster's live access tokens (no secrets).
    List { cluster: String },
    /// Revokes an access token: refused on every node within seconds.
    Revoke { cluster: String, token_id: String },
}

#[derive(Subcommand)]
enum Clusters {
    /// Every cluster, with whether it is online.
    List,
    /// One cluster.
    Get { id: String },
    /// A new cluster; prints its first agent token (shown once).
    Create { id: String },
    /// Deletes a cluster: its tunnels close and its names stop answering.
    Delete { id: String },
}

#[derive(Subcommand)]
enum Tokens {
    /// A new agent token for the cluster (shown once).
    Add { cluster: String },
    /// Revokes a token: tunnels that used it close on every node.
    Revoke { cluster: String, token_id: String },
}

/// One HTTP/1.1 call to the admin listener: (status, body as JSON or null).
fn call(cli: &Cli, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value), String> {
    let url = url::Url::parse(&cli.admin_url).map_err(|e| format!("--admin-url: {e}"))?;
    if url.scheme() != "http" {
        return Err("--admin-url: the admin listener speaks plain http (keep it internal)".into());
    }
    let host = url.host_str().ok_or("--admin-url: no host")?;
    let port = url.port_or_known_default().unwrap_or(9090);
    let mut s = TcpStream::connect((host, port))
        .map_err(|e| format!("cannot reach the admin API at {}: {e}", cli.admin_url))?;
    s.set_read_timeout(Some(CALL_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        cli.admin_token,
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or("malformed answer from the gateway")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("malformed status line from the gateway")?;
    // The admin API answers with Content-Length; a chunked body is not expected here.
    Ok((
        status,
        serde_json::from_str(rest.trim()).unwrap_or(Value::Null),
    ))
}

fn run(cli: &Cli) -> Result<(), String> {
    let (method, path, body) = match &cli.command {
        Command::Clusters(Clusters::List) => ("GET", "/admin/v1/clusters".to_string(), None),
        Command::Clusters(Clusters::Get { id }) => {
            ("GET", format!("/admin/v1/clusters/{id}"), None)
        }
        Command::Clusters(Clusters::Create { id }) => (
            "POST",
            "/admin/v1/clusters".to_string(),
            Some(serde_json::json!({ "id": id })),
        ),
        Command::Clusters(Clusters::Delete { id }) => {
            ("DELETE", format!("/admin/v1/clusters/{id}"), None)
        }
        Command::Tokens(Tokens::Add { cluster }) => {
            ("POST", format!("/admin/v1/clusters/{cluster}/tokens"), None)
        }
        Command::Tokens(Tokens::Revoke { cluster, token_id }) => (
            "DELETE",
            format!("/admin/v1/clusters/{cluster}/tokens/{token_id}"),
            None,
        ),
        Command::Access(Access::Issue {
            cluster,
            user,
            groups,
            ttl_seconds,
        }) => (
            "POST",
            format!("/admin/v1/clusters/{cluster}/access-tokens"),
            Some(serde_json::json!({"user": user, "groups": groups, "ttl_seconds": ttl_seconds})),
        ),
        Command::Access(Access::List { cluster }) => (
            "GET",
            format!("/admin/v1/clusters/{cluster}/access-tokens"),
            None,
        ),
        Command::Access(Access::Revoke { cluster, token_id }) => (
            "DELETE",
            format!("/admin/v1/clusters/{cluster}/access-tokens/{token_id}"),
            None,
        ),
        Command::Domains(Domains::Add { cluster, hostname }) => (
            "POST",
            format!("/admin/v1/clusters/{cluster}/domains"),
            Some(serde_json::json!({ "hostname": hostname })),
        ),
        Command::Domains(Domains::Verify { cluster, hostname }) => (
            "POST",
            format!("/admin/v1/clusters/{cluster}/domains/{hostname}/verify"),
            None,
        ),
        Command::Domains(Domains::List { cluster }) => {
            ("GET", format!("/admin/v1/clusters/{cluster}/domains"), None)
        }
        Command::Domains(Domains::Remove { cluster, hostname }) => (
            "DELETE",
            format!("/admin/v1/clusters/{cluster}/domains/{hostname}"),
            None,
        ),
        Command::RateLimit {
            cluster,
            requests_per_second,
            burst,
        } => (
            "PUT",
            format!("/admin/v1/clusters/{cluster}/rate-limit"),
            Some(serde_json::json!({"requests_per_second": requests_per_second, "burst": burst})),
        ),
    };
    let (status, v) = call(cli, method, &path, body.as_ref())?;
    if !(200..300).contains(&status) {
        let msg = v["error"]["message"].as_str().unwrap_or("no reason given");
        return Err(format!("{status}: {msg}"));
    }
    if cli.json {
        if !v.is_null() {
            println!("{v}");
        }
        return Ok(());
    }
    match &cli.command {
        Command::Clusters(Clusters::List) => {
            println!(
                "{:<24} {:<8} {:>7} {:>7}  TOKENS",
                "CLUSTER", "ONLINE", "TUNNELS", "ROUTES"
            );
            for c in v["items"].as_array().into_iter().flatten() {
                row(c);
            }
        }
        Command::Clusters(Clusters::Get { .. }) => {
            println!(
                "{:<24} {:<8} {:>7} {:>7}  TOKENS",
                "CLUSTER", "ONLINE", "TUNNELS", "ROUTES"
            );
            row(&v);
        }
        Command::Clusters(Clusters::Create { .. }) | Command::Tokens(Tokens::Add { .. }) => {
            println!("token id: {}", v["token_id"].as_str().unwrap_or("?"));
            println!(
                "token:    {}   (shown once: give it to the agent as --token)",
                v["token"].as_str().unwrap_or("?")
            );
        }
        Command::Clusters(Clusters::Delete { id }) => println!("cluster {id} deleted"),
        Command::Tokens(Tokens::Revoke { token_id, .. }) => println!("token {token_id} revoked"),
        Command::Access(Access::Issue { .. }) => {
            eprintln!(
                "access token {} (kubeconfig on stdout; the token is shown only there)",
                v["token_id"].as_str().unwrap_or("?")
            );
            print!("{}", v["kubeconfig"].as_str().unwrap_or(""));
        }
        Command::Access(Access::List { .. }) => {
            println!(
                "{:<18} {:<24} {:<24} EXPIRES (ms)",
                "TOKEN", "USER", "GROUPS"
            );
            for t in v["items"].as_array().into_iter().flatten() {
                let groups: Vec<&str> = t["groups"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                println!(
                    "{:<18} {:<24} {:<24} {}",
                    t["token_id"].as_str().unwrap_or("?"),
                    t["user"].as_str().unwrap_or("?"),
                    groups.join(","),
                    t["expires_at"].as_u64().unwrap_or(0)
                );
            }
        }
        Command::Access(Access::Revoke { token_id, .. }) => {
            println!("access token {token_id} revoked")
        }
        Command::Domains(Domains::Add { .. }) | Command::Domains(Domains::Verify { .. }) => {
            domain_row(&v, true)
        }
        Command::Domains(Domains::List { .. }) => {
            for d in v["items"].as_array().into_iter().flatten() {
                domain_row(d, false);
            }
        }
        Command::Domains(Domains::Remove { hostname, .. }) => println!("domain {hostname} removed"),
        Command::RateLimit { cluster, .. } => println!(
            "cluster {cluster}: {} requests/s, burst {}",
            v["requests_per_second"], v["burst"]
        ),
    }
    Ok(())
}

/// One domain: status and reason, and with `how`, the records that prove it.
fn domain_row(d: &Value, how: bool) {
    let s = |k: &str| d[k].as_str().unwrap_or("").to_string();
    println!("{:<40} {:<10} {}", s("hostname"), s("status"), s("reason"));
    if how && s("status") != "verified" {
        println!("  prove it with one of:");
        println!("    {} CNAME {}", s("hostname"), s("cname_target"));
        println!("    {} TXT \"{}\"", s("txt_name"), s("txt_value"));
    }
}

fn row(c: &Value) {
    let tokens: Vec<&str> = c["token_ids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    println!(
        "{:<24} {:<8} {:>7} {:>7}  {}",
        c["id"].as_str().unwrap_or("?"),
        if c["online"].as_bool() == Some(true) {
            "yes"
        } else {
            "no"
        },
        c["tunnels_here"].as_u64().unwrap_or(0),
        c["routes"].as_u64().unwrap_or(0),
        tokens.join(",")
    );
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tgctl: {e}");
            ExitCode::FAILURE
        }
    }
}
