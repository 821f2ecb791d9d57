//! Stage 5: is the guest ready? Follow the serial log as a stream until a ready marker (a
//! failure marker or QEMU exiting ends the wait at once), then sync with the guest agent.

use std::time::Duration;

use super::super::bridge::Bridge;
use super::super::manifest::GuestInterfaceRecord;
use super::super::qga::Qga;
use super::super::serial::{SerialWatch, Verdict};
use super::{UpError, fail};
use crate::plan::VmPlan;
use crate::remote::process;
use crate::ssh::{RemoteCommand, Session};

/// Follow the serial log as a stream (`tail -F` from byte 0, ending when QEMU exits) until a
/// ready or failure marker appears anywhere in it.
pub(super) async fn wait_serial(
    session: &Session,
    v: &VmPlan,
    pid: u32,
    deadline: tokio::time::Instant,
) -> Result<(), UpError> {
    let cmd = RemoteCommand::new(["tail", "-c", "+0", "-F", "-s", "0.2", &format!("--pid={pid}"), &v.paths.serial_log])
        .sudo()
        .single_process()
        .timeout(v.readiness.timeout + Duration::from_secs(30));
    let mut child = session.spawn(&cmd).await?;
    super::testpause::at("serial", &v.name).await;
    let mut watch = SerialWatch::new(v.readiness.ready_markers.clone(), v.readiness.fail_markers.clone());
    let result = loop {
        let ev = match tokio::time::timeout_at(deadline, child.next()).await {
            Ok(ev) => ev,
            Err(_) => {
                let markers: Vec<String> = v.readiness.ready_markers.iter().map(|m| format!("{m:?}")).collect();
                break Err(UpError::Guest {
                    message: format!(
                        "not ready after {}s (boot_timeout): {} never appeared in {}",
                        v.readiness.timeout.as_secs_f64(),
                        markers.join(" or "),
                        v.paths.serial_log
                    ),
                    tail: watch.tail(),
                });
            }
        };
        match ev {
            Some(crate::ssh::ChildEvent::Stdout(b)) => match watch.feed(&b) {
                Some(Verdict::Ready { .. }) => break Ok(()),
                Some(Verdict::Failed { line, .. }) => {
                    break Err(UpError::Guest {
                        message: format!("guest failed: {}", line.trim()),
                        tail: watch.tail(),
                    });
                }
                None => {}
            },
            Some(crate::ssh::ChildEvent::Stderr(_)) => {}
            // The end of the stream is not QEMU exiting: the connection may be gone. Ask.
            Some(crate::ssh::ChildEvent::Exit(_)) | None => {
                break Err(stream_ended(session, v, pid, watch.tail()).await);
            }
        }
    };
    let _ = child.kill().await;
    result
}

/// Why the serial stream ended: QEMU really exited, or the connection was lost (the error then
/// says so and the node counts as lost, not the guest as failed).
async fn stream_ended(session: &Session, v: &VmPlan, pid: u32, tail: Vec<String>) -> UpError {
    let probe = RemoteCommand::sh(process::probe_script(&v.paths.pidfile)).sudo().timeout(Duration::from_secs(20));
    match session.run(&probe).await {
        Err(e) => UpError::Ssh(e),
        Ok(o) => match process::parse_probe(&o.stdout_str()) {
            (false, _) => UpError::Guest { message: format!("qemu (pid {pid}) exited during boot"), tail },
            (true, _) => UpError::Guest {
                message: format!("the serial stream of {} ended while qemu (pid {pid}) still runs", v.paths.serial_log),
                tail,
            },
        },
    }
}

/// Sync with the guest agent over one socat bridge (re-opened after each timed-out attempt, as
/// the QGA protocol requires), then map guest interfaces to our NICs by MAC.
pub(super) async fn qga_ready(
    session: &Session,
    v: &VmPlan,
    deadline: tokio::time::Instant,
) -> Result<Vec<GuestInterfaceRecord>, UpError> {
    let path = v.paths.qga.clone().ok_or_else(|| fail("qga requested but no qga socket planned"))?;
    let mut last_err = String::new();
    loop {
        if tokio::time::Instant::now() >= deadline {
            // The guest's fault, not the host's: reported like a boot timeout.
            return Err(UpError::Guest {
                message: format!("guest agent did not answer before boot_timeout: {last_err}"),
                tail: vec![],
            });
        }
        let mut bridge = Bridge::unix_socket(session, &path).await?;
        let mut qga = Qga::new(bridge.stream());
        match qga.sync(Duration::from_secs(3)).await {
            Ok(()) => {
                let ifaces = qga
                    .network_interfaces(Duration::from_secs(10))
                    .await
                    .map_err(|e| fail(format!("guest-network-get-interfaces: {e}")))?;
                drop(qga);
                bridge.close().await;
                return Ok(ifaces
                    .into_iter()
                    .map(|i| {
                        let nic = v
                            .nics
                            .iter()
                            .find(|n| {
                                n.mac.is_some()
                                    && n.mac.as_deref().map(str::to_ascii_lowercase)
                                        == i.mac.as_deref().map(str::to_ascii_lowercase)
                            })
                            .map(|n| n.id.clone());
                        GuestInterfaceRecord { name: i.name, mac: i.mac, ips: i.ips, nic }
                    })
                    .collect());
            }
            Err(e) => {
                last_err = e.to_string();
                drop(qga);
                bridge.close().await;
            }
        }
    }
}
