//! The one place that speaks QMP: connect and negotiate over a unix socket,
//! execute commands, keep the event stream polled, track block jobs, and
//! reconnect after the connection dropped.
//!
//! Transport, framing, negotiation and reply matching come from the `qapi`
//! crate. Commands are sent with JSON arguments and their replies read as
//! JSON: the crate's generated types follow QEMU 9.1's schema, and some
//! replies of the QEMU we run against (7.2) do not fit it.

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use qapi::futures::{QapiEvents, QapiService, QmpStreamTokio};
use serde_json::{json, Value};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::UnixStream;

type Reader = QmpStreamTokio<ReadHalf<UnixStream>>;
type Writer = QmpStreamTokio<WriteHalf<UnixStream>>;

/// How long one command may take before the connection is given up.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long connecting waits for QEMU's greeting.
const GREETING_TIMEOUT: Duration = Duration::from_secs(5);
/// How many events are kept for callers that look at them.
const EVENT_BACKLOG: usize = 256;

/// What went wrong talking to QEMU.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QmpError {
    /// Nothing listens on the socket: QEMU is not running there.
    #[error("no QEMU answers on QMP socket {socket}: {message}")]
    Unreachable { socket: String, message: String },
    /// The connection broke or timed out; whether the command ran is unknown.
    #[error("QMP {command} on {socket}: the connection failed ({message}); whether QEMU ran the command is unknown")]
    Connection {
        socket: String,
        command: String,
        message: String,
    },
    /// QEMU refused the command.
    #[error("QMP {command} on {socket}: QEMU refused it: {desc} ({class})")]
    Refused {
        socket: String,
        command: String,
        class: String,
        desc: String,
    },
    /// Block jobs kept QEMU's graph moving: it was not read (QEMU 7.2
    /// crashes when the graph is queried while a job finishes).
    #[error("QMP on {socket}: block job(s) {jobs} keep QEMU's block graph unsafe to read (QEMU 7.2 crashes when it is read then); it was not read and nothing was changed")]
    Unsettled { socket: String, jobs: String },
}

impl QmpError {
    /// Whether QEMU answered with an error whose text contains `needle`.
    pub fn refused_with(&self, needle: &str) -> bool {
        matches!(self, QmpError::Refused { desc, .. } if desc.contains(needle))
    }
}

macro_rules! raw_commands {
    ($($ty:ident => $name:literal),* $(,)?) => {
        /// The QMP commands snapjournal sends.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Cmd { $($ty),* }

        impl Cmd {
            /// The command's QMP name.
            pub fn name(self) -> &'static str {
                match self { $(Cmd::$ty => $name),* }
            }
        }

        $(
            #[derive(serde::Serialize)]
            #[serde(transparent)]
            struct $ty(Value);
            impl qapi::Command for $ty {
                type Ok = Value;
                const NAME: &'static str = $name;
                const ALLOW_OOB: bool = false;
            }
            impl qapi::qmp::QmpCommand for $ty {}
        )*

        async fn send(service: &QapiService<Writer>, cmd: Cmd, args: Value) -> Result<Value, qapi::ExecuteError> {
            match cmd { $(Cmd::$ty => service.execute($ty(args)).await),* }
        }
    };
}

raw_commands! {
    QueryStatus => "query-status",
    QueryKvm => "query-kvm",
    QueryBlock => "query-block",
    QueryNamedBlockNodes => "query-named-block-nodes",
    QueryJobs => "query-jobs",
    BlockdevAdd => "blockdev-add",
    BlockdevDel => "blockdev-del",
    Transaction => "transaction",
    BlockCommit => "block-commit",
    BlockStream => "block-stream",
    JobComplete => "job-complete",
    JobCancel => "job-cancel",
    JobDismiss => "job-dismiss",
    Stop => "stop",
    Cont => "cont",
    Quit => "quit",
    HumanMonitorCommand => "human-monitor-command",
}

/// Fault injection for the chaos suite: with
/// `SNAPJOURNAL_FAULT_QMP_DROP=<command>`, the first reply to that command
/// is lost and the connection dropped, after QEMU ran the command.
fn lose_reply(cmd: Cmd) -> bool {
    use std::sync::atomic::{AtomicBool, Ordering};
    static FIRED: AtomicBool = AtomicBool::new(false);
    match std::env::var("SNAPJOURNAL_FAULT_QMP_DROP") {
        Ok(name) if name == cmd.name() => !FIRED.swap(true, Ordering::SeqCst),
        _ => false,
    }
}

/// The QMP traffic log for tests and the chaos suite: with
/// `SNAPJOURNAL_QMP_TRACE=<file>`, every command and its outcome is
/// appended to the file, one line each, with the time, the process and the
/// socket.
mod trace {
    use std::io::Write;
    use std::path::Path;

    fn write(line: String) {
        let Some(path) = std::env::var_os("SNAPJOURNAL_QMP_TRACE") else {
            return;
        };
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = f.write_all(line.as_bytes());
        }
    }

    fn stamp(socket: &Path) -> String {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        format!(
            "{}.{:06} pid {} {}",
            t.as_secs(),
            t.subsec_micros(),
            std::process::id(),
            socket.display()
        )
    }

    pub(super) fn command(socket: &Path, name: &str, args: &serde_json::Value) {
        if std::env::var_os("SNAPJOURNAL_QMP_TRACE").is_some() {
            write(format!("{} -> {name} {args}\n", stamp(socket)));
        }
    }

    pub(super) fn reply<E: std::fmt::Display>(
        socket: &Path,
        name: &str,
        r: &Result<Result<serde_json::Value, qapi::ExecuteError>, E>,
    ) {
        if std::env::var_os("SNAPJOURNAL_QMP_TRACE").is_none() {
            return;
        }
        let what = match r {
            Ok(Ok(v)) => {
                let mut s = v.to_string();
                if s.len() > 300 {
                    s.truncate(300);
                    s.push('…');
                }
                format!("ok {s}")
            }
            Ok(Err(qapi::ExecuteError::Qapi(e))) => format!("refused {}", e.desc),
            Ok(Err(qapi::ExecuteError::Io(e))) => format!("connection failed: {e}"),
            Err(e) => format!("connection failed: {e}"),
        };
        write(format!("{} <- {name} {what}\n", stamp(socket)));
    }
}

struct Connection {
    service: QapiService<Writer>,
    events: QapiEvents<Reader>,
}

/// A blocking QMP client of one QEMU. It owns a small tokio runtime, so the
/// synchronous executor can use it; it reconnects on the next command after
/// the connection dropped.
pub struct Qmp {
    socket: PathBuf,
    rt: tokio::runtime::Runtime,
    conn: Option<Connection>,
    events: VecDeque<qapi::qmp::Event>,
    /// Jobs this client sent `job-complete` for (see [`super::settle`]).
    completing: BTreeSet<String>,
}

impl Qmp {
    /// Connects to the QMP socket at `socket` and negotiates capabilities.
    pub fn connect(socket: &Path) -> Result<Qmp, QmpError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| QmpError::Unreachable {
                socket: socket.display().to_string(),
                message: format!("cannot start the I/O runtime: {e}"),
            })?;
        let mut q = Qmp {
            socket: socket.to_path_buf(),
            rt,
            conn: None,
            events: VecDeque::new(),
            completing: BTreeSet::new(),
        };
        q.reconnect()?;
        Ok(q)
    }

    /// Connects, retrying until `deadline` while the socket does not exist
    /// or refuses (QEMU starting up).
    pub fn connect_until(socket: &Path, deadline: Instant) -> Result<Qmp, QmpError> {
        loop {
            match Qmp::connect(socket) {
                Ok(q) => return Ok(q),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn socket_name(&self) -> String {
        self.socket.display().to_string()
    }

    fn reconnect(&mut self) -> Result<(), QmpError> {
        self.conn = None;
        let socket = self.socket.clone();
        let unreachable = |message: String| QmpError::Unreachable {
            socket: socket.display().to_string(),
            message,
        };
        let conn = self.rt.block_on(async {
            let greeted = || async {
                tokio::time::timeout(GREETING_TIMEOUT, QmpStreamTokio::open_uds(&socket))
                    .await
                    .map_err(|_| {
                        unreachable(format!(
                            "no greeting within {GREETING_TIMEOUT:?} (another client may hold the monitor)"
                        ))
                    })
            };
            // A client killed while QEMU was writing to it (a reply, an
            // event) can leave that output to the next client, ahead of
            // its greeting: the line does not parse as a greeting. The
            // first connection took the stale line; a second one is
            // greeted.
            let negotiation = match greeted().await? {
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => greeted().await?,
                other => other,
            }
            .map_err(|e| unreachable(e.to_string()))?;
            let (service, mut events) = negotiation.stream.into_parts();
            // Negotiation is a command like any other: its reply arrives
            // only while the read half is polled.
            let caps = service.execute(qapi::qmp::qmp_capabilities { enable: None });
            tokio::pin!(caps);
            let deadline = tokio::time::sleep(GREETING_TIMEOUT);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    r = &mut caps => {
                        r.map_err(|e| unreachable(format!("capability negotiation failed: {e}")))?;
                        break;
                    }
                    ev = events.next() => {
                        if !matches!(ev, Some(Ok(_))) {
                            return Err(unreachable("the connection closed during negotiation".into()));
                        }
                    }
                    _ = &mut deadline => return Err(unreachable("capability negotiation timed out".into())),
                }
            }
            Ok(Connection { service, events })
        })?;
        self.conn = Some(conn);
        Ok(())
    }

    /// Executes `cmd` with `args` and returns QEMU's reply. A broken
    /// connection is reopened first; after a failure in flight, the next
    /// call reconnects.
    pub fn execute(&mut self, cmd: Cmd, args: Value) -> Result<Value, QmpError> {
        if self.conn.is_none() {
            self.reconnect()?;
        }
        let socket = self.socket_name();
        let conn_err = |message: String| QmpError::Connection {
            socket: socket.clone(),
            command: cmd.name().to_string(),
            message,
        };
        let Some(conn) = self.conn.as_mut() else {
            return Err(conn_err("not connected".into()));
        };
        if cmd == Cmd::JobComplete {
            if let Some(id) = args.get("id").and_then(Value::as_str) {
                self.completing.insert(id.to_string());
            }
        }
        trace::command(&self.socket, cmd.name(), &args);
        let events = &mut self.events;
        let result = self.rt.block_on(async {
            let reply = send(&conn.service, cmd, args);
            tokio::pin!(reply);
            let deadline = tokio::time::sleep(COMMAND_TIMEOUT);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    r = &mut reply => return Ok(r),
                    ev = conn.events.next() => match ev {
                        Some(Ok(e)) => {
                            if events.len() >= EVENT_BACKLOG {
                                events.pop_front();
                            }
                            events.push_back(e);
                        }
                        // An event the schema does not know ends the
                        // stream: the connection is reopened next time.
                        Some(Err(e)) => return Err(conn_err(e.to_string())),
                        None => return Err(conn_err("QEMU closed the connection".into())),
                    },
                    _ = &mut deadline => return Err(conn_err(format!("no reply within {COMMAND_TIMEOUT:?}"))),
                }
            }
        });
        trace::reply(&self.socket, cmd.name(), &result);
        match result {
            Ok(Ok(_)) if lose_reply(cmd) => {
                self.conn = None;
                Err(conn_err(
                    "the connection dropped before the reply (injected fault)".into(),
                ))
            }
            Ok(Ok(v)) => Ok(v),
            Ok(Err(qapi::ExecuteError::Qapi(e))) => Err(QmpError::Refused {
                socket,
                command: cmd.name().to_string(),
                class: format!("{:?}", e.class),
                desc: e.desc,
            }),
            Ok(Err(qapi::ExecuteError::Io(e))) => {
                self.conn = None;
                Err(conn_err(e.to_string()))
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }

    /// Events received so far (oldest first), removed from the backlog.
    pub fn take_events(&mut self) -> Vec<qapi::qmp::Event> {
        self.events.drain(..).collect()
    }

    /// `query-status`: whether the guest's vCPUs run.
    pub fn running(&mut self) -> Result<bool, QmpError> {
        let v = self.execute(Cmd::QueryStatus, json!({}))?;
        Ok(v.get("running").and_then(Value::as_bool).unwrap_or(false))
    }

    /// The block jobs QEMU knows (`query-jobs`).
    pub fn jobs(&mut self) -> Result<Vec<JobInfo>, QmpError> {
        let v = self.execute(Cmd::QueryJobs, json!({}))?;
        let jobs: Vec<JobInfo> = serde_json::from_value(v).unwrap_or_default();
        // A completion requested is on its way only while the job is ready.
        self.completing
            .retain(|id| jobs.iter().any(|j| &j.id == id && j.status == "ready"));
        Ok(jobs)
    }

    /// The jobs this client sent `job-complete` for that were still ready
    /// when last seen.
    pub fn completing(&self) -> &BTreeSet<String> {
        &self.completing
    }

    /// The job called `id`, if QEMU has it.
    pub fn job(&mut self, id: &str) -> Result<Option<JobInfo>, QmpError> {
        Ok(self.jobs()?.into_iter().find(|j| j.id == id))
    }

    /// Writes `pattern` at `offset` for `len` bytes through the guest-visible
    /// device `qdev_id` (qemu-io in QEMU's monitor), then flushes. For tests
    /// and the chaos suite.
    pub fn guest_write(&mut self, qdev_id: &str, pattern: u8, offset: u64, len: u64) -> Result<(), QmpError> {
        let line = format!(
            "qemu-io -d /machine/peripheral/{qdev_id}/virtio-backend \"write -P 0x{pattern:02x} {offset} {len}\""
        );
        let out = self.execute(Cmd::HumanMonitorCommand, json!({ "command-line": line }))?;
        let text = out.as_str().unwrap_or_default();
        if text.contains("error") || text.contains("failed") {
            return Err(QmpError::Refused {
                socket: self.socket_name(),
                command: "human-monitor-command qemu-io write".into(),
                class: "GenericError".into(),
                desc: text.trim().to_string(),
            });
        }
        let line = format!("qemu-io -d /machine/peripheral/{qdev_id}/virtio-backend \"flush\"");
        self.execute(Cmd::HumanMonitorCommand, json!({ "command-line": line }))?;
        Ok(())
    }
}

/// One entry of `query-jobs`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct JobInfo {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    #[serde(rename = "current-progress", default)]
    pub current: u64,
    #[serde(rename = "total-progress", default)]
    pub total: u64,
    #[serde(default)]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;

    const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}"#;

    /// A monitor that hands the first client a line left from a killed
    /// one before its greeting, as QEMU can, then greets the next client
    /// and answers its capability negotiation.
    #[test]
    fn a_stale_line_before_the_greeting_is_left_behind_with_its_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let monitor = std::thread::spawn(move || {
            let (mut first, _) = listener.accept().unwrap();
            let stale = r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "JOB_STATUS_CHANGE", "data": {"status": "concluded", "id": "j"}}"#;
            let _ = write!(first, "{stale}\r\n{GREETING}\r\n");
            let (second, _) = listener.accept().unwrap();
            let mut w = second.try_clone().unwrap();
            write!(w, "{GREETING}\r\n").unwrap();
            let mut reader = BufReader::new(second);
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            assert!(line.contains("qmp_capabilities"), "{line}");
            write!(w, "{{\"return\": {{}}}}\r\n").unwrap();
            // Open until the client leaves, as QEMU's monitor stays.
            let _ = reader.read_line(&mut line);
        });
        let q = Qmp::connect(&path);
        assert!(q.is_ok(), "{:?}", q.err());
        drop(q);
        monitor.join().unwrap();
    }
}
