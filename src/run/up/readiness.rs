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
///
/// The follower runs as the login user: `up` created the log owned by that user before QEMU
/// started (see `prepare`), which saves a sudo (PAM, sudoers, audit) per VM on the host while
/// its QEMUs start. Where the user still cannot read it (a run root below a directory closed to
/// it), the follower says so and is started again under sudo.
pub(super) async fn wait_serial(
    session: &Session,
    v: &VmPlan,
    pid: u32,
    deadline: tokio::time::Instant,
) -> Result<(), UpError> {
    let mut r = follow_serial(session, v, pid, deadline, false).await;
    if matches!(r, Err(Follow::Denied)) {
        r = follow_serial(session, v, pid, deadline, true).await;
    }
    r.map_err(|e| match e {
        Follow::Denied => fail(format!("cannot read {} even with sudo", v.paths.serial_log)),
        Follow::Up(e) => e,
    })
}

/// How one follower ended, when not with a ready marker.
enum Follow {
    /// `tail` may not read the log: try again with sudo.
    Denied,
    Up(UpError),
}

impl From<UpError> for Follow {
    fn from(e: UpError) -> Self {
        Follow::Up(e)
    }
}

/// The serial follower's command: tail from byte 0, by name, until QEMU `pid` exits. In the C
/// locale: its "Permission denied" is what the fallback to sudo looks for.
fn follower(v: &VmPlan, pid: u32, sudo: bool) -> RemoteCommand {
    let pid = format!("--pid={pid}");
    let argv = ["env", "LC_ALL=C", "tail", "-c", "+0", "-F", "-s", "0.2", &pid, &v.paths.serial_log];
    let mut cmd = RemoteCommand::new(argv).single_process().timeout(v.readiness.timeout + Duration::from_secs(30));
    cmd.sudo = sudo;
    cmd
}

/// How long a follower that started at or past the boot deadline may still read the log.
const LATE_FOLLOWER_GRACE: Duration = Duration::from_secs(5);

async fn follow_serial(
    session: &Session,
    v: &VmPlan,
    pid: u32,
    deadline: tokio::time::Instant,
    sudo: bool,
) -> Result<(), Follow> {
    let mut child = session.spawn(&follower(v, pid, sudo)).await.map_err(UpError::from)?;
    // The spawn may have waited for a channel slot (a node with more VMs than slots: its later
    // followers wait for earlier VMs to be ready), maybe past the deadline. The log is read
    // from byte 0, so a marker printed meanwhile is there: give the follower time to read it
    // rather than failing a ready VM on its first poll.
    let deadline = deadline.max(tokio::time::Instant::now() + LATE_FOLLOWER_GRACE);
    crate::run::testpause::at("serial", &v.name).await;
    let mut watch = SerialWatch::new(v.readiness.ready_markers.clone(), v.readiness.fail_markers.clone());
    let mut stderr = Vec::new();
    let result = loop {
        let ev = match tokio::time::timeout_at(deadline, child.next()).await {
            Ok(ev) => ev,
            Err(_) => {
                let markers: Vec<String> = v.readiness.ready_markers.iter().map(ToString::to_string).collect();
                break Err(Follow::Up(UpError::Guest {
                    message: format!(
                        "not ready after {}s (boot_timeout): {} never appeared in {}",
                        v.readiness.timeout.as_secs_f64(),
                        markers.join(" or "),
                        v.paths.serial_log
                    ),
                    tail: watch.tail(),
                }));
            }
        };
        match ev {
            Some(crate::ssh::ChildEvent::Stdout(b)) => match watch.feed(&b) {
                Some(Verdict::Ready { .. }) => break Ok(()),
                Some(Verdict::Failed { line, .. }) => {
                    break Err(Follow::Up(UpError::Guest {
                        message: format!("guest failed: {}", line.trim()),
                        tail: watch.tail(),
                    }));
                }
                None => {}
            },
            // tail -F retries an unreadable file forever: its complaint is the only sign.
            Some(crate::ssh::ChildEvent::Stderr(b)) if !sudo && stderr.len() < 4096 => {
                stderr.extend_from_slice(&b);
                if String::from_utf8_lossy(&stderr).contains("Permission denied") {
                    break Err(Follow::Denied);
                }
            }
            Some(crate::ssh::ChildEvent::Stderr(_)) => {}
            // The end of the stream is not QEMU exiting: the connection may be gone. Ask.
            Some(crate::ssh::ChildEvent::Exit(_)) | None => {
                break Err(Follow::Up(stream_ended(session, v, pid, watch.tail()).await));
            }
        }
    };
    let _ = child.kill().await;
    result
}

/// Why the serial stream ended: QEMU really exited, or the connection was lost (the error then
/// says so and the node counts as lost, not the guest as failed).
async fn stream_ended(session: &Session, v: &VmPlan, pid: u32, tail: Vec<String>) -> UpError {
    match qemu_alive(session, v).await {
        Err(e) => e,
        Ok((false, _)) => UpError::Guest { message: format!("qemu (pid {pid}) exited during boot"), tail },
        Ok((true, _)) => UpError::Guest {
            message: format!("the serial stream of {} ended while qemu (pid {pid}) still runs", v.paths.serial_log),
            tail,
        },
    }
}

/// Whether the VM's QEMU (our pidfile's process) still runs, and its pid.
async fn qemu_alive(session: &Session, v: &VmPlan) -> Result<(bool, Option<u32>), UpError> {
    let probe = RemoteCommand::sh(process::probe_script(&v.paths.pidfile)).sudo().timeout(Duration::from_secs(20));
    let out = session.run(&probe).await.map_err(UpError::Ssh)?;
    Ok(process::parse_probe(&out.stdout_str()))
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
    // Pause before re-opening a bridge that closed at once (socat could not connect): without
    // it, a guest whose QEMU died, or a missing socket, cost a `sudo socat` tens of times a
    // second until boot_timeout.
    let mut pause = Duration::from_millis(250);
    // At least one attempt, however late: the serial wait may have ended at the deadline (its
    // follower waited for a channel slot), and a guest that is ready deserves one question.
    let mut asked = false;
    loop {
        if asked && tokio::time::Instant::now() >= deadline {
            // The guest's fault, not the host's: reported like a boot timeout.
            return Err(UpError::Guest {
                message: format!("guest agent did not answer before boot_timeout: {last_err}"),
                tail: vec![],
            });
        }
        asked = true;
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
                drop(qga);
                let closed = matches!(e, crate::run::qga::QgaError::Closed);
                let said = bridge.close().await;
                last_err = match said.trim() {
                    "" => e.to_string(),
                    said => format!("{e}: {said}"),
                };
                if closed {
                    // The bridge ended by itself: is QEMU still there to answer at all?
                    if let (false, pid) = qemu_alive(session, v).await? {
                        let pid = pid.map_or(String::new(), |p| format!(" (pid {p})"));
                        return Err(UpError::Guest {
                            message: format!("qemu{pid} exited while waiting for the guest agent ({last_err})"),
                            tail: vec![],
                        });
                    }
                    tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + pause)).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}
