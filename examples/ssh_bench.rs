//! Latency of sequential commands over one harness SSH connection, on a multi-thread or a
//! current-thread tokio runtime (to see the runtime's share of the per-command cost).
//!
//! `cargo run --release --example ssh_bench -- PORT USER KEY KNOWN_HOSTS N [mt|ct]`

use std::time::Instant;

use harness::ssh::{ConnectOptions, RemoteCommand, Session, SshTarget};
use harness::topology::Auth;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 6 {
        eprintln!("usage: ssh_bench PORT USER KEY KNOWN_HOSTS N [mt|ct]");
        std::process::exit(2);
    }
    let target = SshTarget {
        name: "bench".into(),
        host: "127.0.0.1".into(),
        port: Some(a[1].parse().expect("port")),
        user: Some(a[2].clone()),
        auth: vec![Auth::IdentityFile { path: a[3].clone().into(), passphrase_env: None }],
        proxy_jump: None,
        known_hosts: Some(a[4].clone().into()),
        inherited_known_hosts: Vec::new(),
        accept_new_host_key: false,
    };
    let n: u32 = a[5].parse().expect("N");
    let rt = match a.get(6).map(String::as_str) {
        Some("ct") => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        _ => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
    }
    .expect("runtime");
    rt.block_on(async {
        let opts = ConnectOptions { ssh_config: None, agent_socket: None, ..ConnectOptions::default() };
        let t = Instant::now();
        let s = Session::connect(&target, &opts).await.expect("connect");
        let connect = t.elapsed();
        let t = Instant::now();
        for _ in 0..n {
            s.run_ok(&RemoteCommand::new(["true"])).await.expect("true");
        }
        let e = t.elapsed();
        println!("connect {connect:?}; {n} commands in {e:?} = {:.2} ms/command", e.as_secs_f64() * 1000.0 / n as f64);
    });
}
