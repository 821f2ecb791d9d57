//! An in-process fake node behind the [`Transport`] seam, for unit tests of the orchestration.
//!
//! A test gives a handler that answers each command (`wire` text, argv, sudo) with a [`Reply`];
//! the fake records every command in order, so a test can assert what was run and when (e.g.
//! that every QEMU is stopped before the run directory is removed).

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::Notify;

use super::transport::{Channel, Transport};
use super::{ChildEvent, RemoteCommand, SshError};

/// How the fake host answers one command.
#[derive(Debug)]
pub enum Reply {
    /// Exit at once with this output and status.
    Done { stdout: String, stderr: String, status: u32 },
    /// Print `stdout`, then keep running until stdin is closed (exit 0) or it is killed.
    Hold { stdout: String },
    /// Run until killed, printing nothing.
    Hang,
    /// Like `Hold`, with `stdout` arriving only after `after` (a real channel's latency).
    HoldAfter { after: std::time::Duration, stdout: String },
    /// The channel cannot even be opened.
    Fail(SshError),
}

impl Reply {
    pub fn ok(stdout: impl Into<String>) -> Reply {
        Reply::Done { stdout: stdout.into(), stderr: String::new(), status: 0 }
    }
    pub fn status(status: u32, stderr: impl Into<String>) -> Reply {
        Reply::Done { stdout: String::new(), stderr: stderr.into(), status }
    }
}

/// A command as the fake saw it.
#[derive(Debug, Clone)]
pub struct Call {
    pub argv: Vec<String>,
    pub sudo: bool,
    /// `argv` joined, for matching on script text.
    pub text: String,
}

pub type Handler = dyn Fn(&Call) -> Reply + Send + Sync;

pub struct FakeHost {
    addr: String,
    handler: Box<Handler>,
    log: Arc<Mutex<Vec<Call>>>,
}

impl FakeHost {
    pub fn new(addr: &str, handler: impl Fn(&Call) -> Reply + Send + Sync + 'static) -> Arc<FakeHost> {
        Arc::new(FakeHost { addr: addr.to_string(), handler: Box::new(handler), log: Arc::default() })
    }
    /// Every command started so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.log.lock().expect("log").clone()
    }
}

impl Transport for FakeHost {
    fn addr(&self) -> &str {
        &self.addr
    }
    fn start<'a>(&'a self, cmd: &'a RemoteCommand) -> BoxFuture<'a, Result<Box<dyn Channel>, SshError>> {
        Box::pin(async move {
            let call = Call { argv: cmd.argv.clone(), sudo: cmd.sudo, text: cmd.argv.join(" ") };
            self.log.lock().expect("log").push(call.clone());
            let reply = (self.handler)(&call);
            // Yield like a real channel open would, so concurrent tasks interleave.
            tokio::task::yield_now().await;
            match reply {
                Reply::Fail(e) => Err(e),
                r => Ok(Box::new(FakeChannel::new(r)) as Box<dyn Channel>),
            }
        })
    }
    fn is_closed(&self) -> bool {
        false
    }
}

struct FakeChannel {
    events: Vec<ChildEvent>,
    /// Ends when stdin is closed (Hold) or only when killed (Hang).
    hold: Option<bool>,
    stop: Arc<Notify>,
    stopped: bool,
    done: bool,
    /// Wait this long before the first event.
    delay: Option<std::time::Duration>,
}

impl FakeChannel {
    fn new(r: Reply) -> FakeChannel {
        let mut delay = None;
        let (mut events, hold) = match r {
            Reply::Done { stdout, stderr, status } => {
                let mut ev = Vec::new();
                if !stdout.is_empty() {
                    ev.push(ChildEvent::Stdout(Bytes::from(stdout)));
                }
                if !stderr.is_empty() {
                    ev.push(ChildEvent::Stderr(Bytes::from(stderr)));
                }
                ev.push(ChildEvent::Exit(Some(status)));
                (ev, None)
            }
            Reply::Hold { stdout } => (vec![ChildEvent::Stdout(Bytes::from(stdout))], Some(true)),
            Reply::Hang => (vec![], Some(false)),
            Reply::HoldAfter { after, stdout } => {
                delay = Some(after);
                (vec![ChildEvent::Stdout(Bytes::from(stdout))], Some(true))
            }
            Reply::Fail(_) => unreachable!("handled at start"),
        };
        events.reverse();
        FakeChannel { events, hold, stop: Arc::new(Notify::new()), stopped: false, done: false, delay }
    }
}

impl Channel for FakeChannel {
    fn pid(&self) -> Option<u32> {
        Some(4242)
    }
    fn next(&mut self) -> BoxFuture<'_, Option<ChildEvent>> {
        Box::pin(async move {
            if let Some(d) = self.delay.take() {
                tokio::time::sleep(d).await;
            }
            if let Some(ev) = self.events.pop() {
                if matches!(ev, ChildEvent::Exit(_)) {
                    self.done = true;
                }
                return Some(ev);
            }
            if self.done {
                return None;
            }
            if self.hold.is_some() && !self.stopped {
                self.stop.notified().await;
            }
            self.done = true;
            Some(ChildEvent::Exit(if self.hold == Some(false) { None } else { Some(0) }))
        })
    }
    fn write_stdin<'a>(&'a mut self, _bytes: &'a [u8]) -> BoxFuture<'a, Result<(), SshError>> {
        Box::pin(async { Ok(()) })
    }
    fn close_stdin(&mut self) -> BoxFuture<'_, Result<(), SshError>> {
        Box::pin(async move {
            if self.hold == Some(true) {
                self.stopped = true;
                self.stop.notify_one();
            }
            Ok(())
        })
    }
    fn kill(&mut self) -> BoxFuture<'_, Result<(), SshError>> {
        Box::pin(async move {
            self.stopped = true;
            self.stop.notify_one();
            self.events.clear();
            Ok(())
        })
    }
}
