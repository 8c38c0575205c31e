//! The server: one owner of a state directory serving every client on a
//! unix socket (`snapjournal serve`, or [`Server`] inside an agent).
//!
//! Requests on different domains run at once (each on a thread of the
//! blocking pool); a second change to a busy domain is refused with the
//! running transaction's id; reads never wait. Recovery, repair and
//! compaction run alone. A client that disconnects does not cancel its
//! request. See docs/API.md for the protocol.

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use executor::Executor;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::api::{ApiError, ErrorKind, Frame, Request, MAX_REQUEST_BYTES, PROTOCOL_VERSION, SOCKET_NAME};
use crate::commands::{execute, Access, Inputs};
use crate::output::Out;

/// How a server listens and who may talk to it.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The socket to listen on.
    pub socket: PathBuf,
    /// A group whose members may read but not change (the socket becomes
    /// 0660 with this group); `None`: the socket is 0600.
    pub read_group: Option<u32>,
    /// How long a connection may stay silent before the server closes it
    /// (a client that connects and never writes, half a request).
    pub idle_timeout: Duration,
    /// How long a stop waits for running requests before leaving them to
    /// recovery.
    pub stop_timeout: Duration,
}

impl ServerOptions {
    /// The defaults for a state directory: its `snapjournal.sock`, 0600,
    /// 30 s idle, 600 s to stop.
    pub fn for_state_dir(dir: &Path) -> ServerOptions {
        ServerOptions {
            socket: dir.join(SOCKET_NAME),
            read_group: None,
            idle_timeout: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(600),
        }
    }
}

thread_local! {
    /// The output of the request running on this thread: progress and
    /// transaction beginnings reported by the executor go to its client.
    static CURRENT: RefCell<Option<Arc<Out>>> = const { RefCell::new(None) };
}

/// Serves one executor's state directory.
pub struct Server {
    shared: Arc<Shared>,
}

struct Shared {
    exec: Executor,
    gate: Gate,
    running: AtomicUsize,
    stopping: AtomicBool,
}

impl Server {
    /// A server over an open (and recovered) executor; it takes over the
    /// executor's progress and transaction callbacks to tell each request's
    /// client.
    pub fn new(mut exec: Executor) -> Server {
        exec.set_progress(Box::new(|p| {
            CURRENT.with(|c| {
                if let Some(out) = c.borrow().as_ref() {
                    out.progress(p);
                }
            })
        }));
        exec.set_on_begin(Box::new(|txn, what| {
            CURRENT.with(|c| {
                if let Some(out) = c.borrow().as_ref() {
                    out.began(&txn.to_string(), what);
                }
            })
        }));
        Server {
            shared: Arc::new(Shared {
                exec,
                gate: Gate::default(),
                running: AtomicUsize::new(0),
                stopping: AtomicBool::new(false),
            }),
        }
    }

    /// How many requests are running.
    pub fn requests_running(&self) -> usize {
        self.shared.running.load(Ordering::SeqCst)
    }

    /// The executor (an embedding agent may run operations itself; the
    /// journal keeps one transaction per domain either way).
    pub fn executor(&self) -> &Executor {
        &self.shared.exec
    }

    /// Serves until `shutdown` completes, then stops taking requests and
    /// waits (up to the stop timeout) for the running ones. The socket is
    /// removed at the end.
    pub async fn serve(
        &self,
        options: ServerOptions,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<()> {
        let listener = bind(&options)?;
        info!(socket = %options.socket.display(), "serving");
        let owner = unsafe { libc::geteuid() };
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let shared = self.shared.clone();
                        let options = options.clone();
                        tokio::spawn(async move { connection(shared, stream, owner, options).await });
                    }
                    Err(e) => warn!("accept failed: {e}"),
                },
            }
        }
        self.shared.stopping.store(true, Ordering::SeqCst);
        drop(listener);
        let _ = std::fs::remove_file(&options.socket);
        let running = self.shared.running.load(Ordering::SeqCst);
        info!(running, "stopping: no new requests; waiting for the running ones");
        let deadline = tokio::time::Instant::now() + options.stop_timeout;
        while self.shared.running.load(Ordering::SeqCst) > 0 {
            if tokio::time::Instant::now() >= deadline {
                warn!(
                    running = self.shared.running.load(Ordering::SeqCst),
                    "stop timeout: leaving the running requests to recovery"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        info!("stopped");
        Ok(())
    }
}

/// Binds the socket with its permissions from the start (0600, or 0660
/// with the read group); a socket left by a server that died is replaced.
fn bind(options: &ServerOptions) -> Result<UnixListener> {
    let path = &options.socket;
    if path.symlink_metadata().is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "{} already has a server listening; nothing was changed",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    // SAFETY: umask only sets the process's file-creation mask; it is put
    // back right after the bind.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    unsafe { libc::umask(old) };
    let listener = bound.with_context(|| format!("cannot listen on {}", path.display()))?;
    if let Some(gid) = options.read_group {
        use std::os::unix::fs::PermissionsExt;
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
        // SAFETY: chown of a path we just created; no memory is shared.
        if unsafe { libc::chown(c.as_ptr(), u32::MAX, gid) } != 0 {
            bail!(
                "cannot give {} to group {gid}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    }
    Ok(listener)
}

/// Whether the peer may change things (root or the server's user), only
/// read (a member of the read group), or nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    Owner,
    Reader,
    Stranger,
}

fn classify_peer(stream: &UnixStream, owner: u32, read_group: Option<u32>) -> Peer {
    let Ok(cred) = stream.peer_cred() else {
        return Peer::Stranger;
    };
    if cred.uid() == 0 || cred.uid() == owner {
        return Peer::Owner;
    }
    let Some(group) = read_group else {
        return Peer::Stranger;
    };
    if cred.gid() == group {
        return Peer::Reader;
    }
    // Supplementary groups are not in SO_PEERCRED: read them from /proc.
    let supplementary = cred
        .pid()
        .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Groups:")).map(|l| {
                l["Groups:".len()..]
                    .split_whitespace()
                    .any(|g| g == group.to_string())
            })
        })
        .unwrap_or(false);
    if supplementary {
        Peer::Reader
    } else {
        Peer::Stranger
    }
}

/// Reads one request line: `Ok(None)` at the end of the stream, an error
/// for a line longer than [`MAX_REQUEST_BYTES`].
async fn read_request_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Vec<u8>>, ApiError> {
    let mut buf = Vec::new();
    let n = reader
        .take(MAX_REQUEST_BYTES as u64 + 1)
        .read_until(b'\n', &mut buf)
        .await
        .map_err(|e| ApiError::unchanged(ErrorKind::BadRequest, format!("reading the request: {e}")))?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        if buf.len() > MAX_REQUEST_BYTES {
            return Err(ApiError::unchanged(
                ErrorKind::BadRequest,
                format!("request longer than {MAX_REQUEST_BYTES} bytes; nothing was changed"),
            ));
        }
        // The client closed after half a line.
        return Err(ApiError::unchanged(
            ErrorKind::BadRequest,
            "the request ended before its newline; nothing was changed",
        ));
    }
    Ok(Some(buf))
}

async fn send(writer: &mut tokio::net::unix::OwnedWriteHalf, frame: &Frame) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(frame).map_err(std::io::Error::other)?;
    line.push(b'\n');
    writer.write_all(&line).await
}

fn refused(e: ApiError) -> Frame {
    Frame::Done {
        code: 1,
        result: None,
        error: Some(e),
    }
}

/// One client connection: requests one after another, each answered by
/// frames ending in `done`.
async fn connection(shared: Arc<Shared>, stream: UnixStream, owner: u32, options: ServerOptions) {
    let peer = classify_peer(&stream, owner, options.read_group);
    let (reader, mut writer) = stream.into_split();
    if peer == Peer::Stranger {
        let _ = send(
            &mut writer,
            &refused(ApiError::unchanged(
                ErrorKind::Forbidden,
                "this user may not use this server; nothing was changed",
            )),
        )
        .await;
        return;
    }
    let mut reader = BufReader::new(reader);
    loop {
        let line = match tokio::time::timeout(options.idle_timeout, read_request_line(&mut reader)).await {
            Err(_) => {
                let _ = send(
                    &mut writer,
                    &refused(ApiError::unchanged(
                        ErrorKind::BadRequest,
                        format!(
                            "no complete request within {} s; the connection is closed",
                            options.idle_timeout.as_secs()
                        ),
                    )),
                )
                .await;
                return;
            }
            Ok(Ok(None)) => return,
            Ok(Ok(Some(line))) => line,
            Ok(Err(e)) => {
                let _ = send(&mut writer, &refused(e)).await;
                return;
            }
        };
        let request: Request = match serde_json::from_slice(&line) {
            Ok(r) => r,
            Err(e) => {
                let frame = refused(ApiError::unchanged(
                    ErrorKind::BadRequest,
                    format!("malformed request ({e}); see docs/API.md; nothing was changed"),
                ));
                if send(&mut writer, &frame).await.is_err() {
                    return;
                }
                continue;
            }
        };
        if let Some(e) = admit(&shared, &request, peer) {
            if send(&mut writer, &refused(e)).await.is_err() {
                return;
            }
            continue;
        }
        let detach = request.detach;
        let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
        shared.running.fetch_add(1, Ordering::SeqCst);
        let worker = shared.clone();
        tokio::task::spawn_blocking(move || handle(&worker, request, tx));
        // The request runs to its end whether or not the client stays: a
        // write that fails only stops the forwarding. It counts as running
        // until its last frame is written (the channel closes when it
        // ends), so a stop never drops a reply that was on its way.
        let mut client_gone = false;
        let mut detached = false;
        while let Some((frame, delivered)) = rx.recv().await {
            if !client_gone && send(&mut writer, &frame).await.is_err() {
                client_gone = true;
            }
            if let (true, Frame::Began { txn, what }) = (detach, &frame) {
                // The reply, now; the request runs on, unheard.
                let reply = Frame::Done {
                    code: 0,
                    result: Some(serde_json::json!({"txn": txn, "what": what, "detached": true})),
                    error: None,
                };
                if !client_gone && send(&mut writer, &reply).await.is_err() {
                    client_gone = true;
                }
                if let Some(ack) = delivered {
                    let _ = ack.send(());
                }
                // The rest of its frames go nowhere; the connection takes
                // its next request at once.
                let shared = shared.clone();
                tokio::spawn(async move {
                    while let Some((_, delivered)) = rx.recv().await {
                        if let Some(ack) = delivered {
                            let _ = ack.send(());
                        }
                    }
                    shared.running.fetch_sub(1, Ordering::SeqCst);
                });
                detached = true;
                break;
            }
            if let Some(ack) = delivered {
                let _ = ack.send(());
            }
        }
        if !detached {
            shared.running.fetch_sub(1, Ordering::SeqCst);
        }
        if client_gone {
            return;
        }
    }
}

/// Refuses a request before it runs: wrong version, a stopping server, a
/// change asked by a read-only peer.
fn admit(shared: &Shared, request: &Request, peer: Peer) -> Option<ApiError> {
    if request.v != PROTOCOL_VERSION {
        return Some(ApiError::unchanged(
            ErrorKind::BadRequest,
            format!(
                "protocol version {} is not spoken here (this server speaks {PROTOCOL_VERSION}); nothing was changed",
                request.v
            ),
        ));
    }
    if shared.stopping.load(Ordering::SeqCst) {
        return Some(ApiError::unchanged(
            ErrorKind::Stopping,
            "the server is stopping and takes no new requests; nothing was changed",
        ));
    }
    if peer == Peer::Reader && !request.cmd.reads_only() {
        return Some(ApiError::unchanged(
            ErrorKind::Forbidden,
            "this user may read but not change anything; nothing was changed",
        ));
    }
    None
}

/// A frame for the connection's writer, with whom to tell once it is
/// written.
type Outgoing = (Frame, Option<std::sync::mpsc::Sender<()>>);

/// Runs one request on a blocking thread, its output sent as frames.
fn handle(shared: &Shared, request: Request, tx: mpsc::UnboundedSender<Outgoing>) {
    let sender = tx.clone();
    let out = Arc::new(Out::remote(
        request.json,
        Box::new(move |f, delivered| {
            if !delivered {
                let _ = sender.send((f, None));
                return;
            }
            let (ack, written) = std::sync::mpsc::channel();
            if sender.send((f, Some(ack))).is_ok() {
                // Bounded: a writer stuck on a client that stopped reading
                // does not hold the transaction.
                let _ = written.recv_timeout(Duration::from_secs(5));
            }
        }),
    ));
    let inputs = Inputs::Sent(request.inputs);
    let access = request.cmd.access(&inputs);
    let domain = request.cmd.domain().map(str::to_string).or(match &access {
        Access::Domain(d) => Some(d.clone()),
        _ => None,
    });
    let done = match shared.gate.enter(&access, &shared.exec) {
        Err(mut e) => {
            e.domain = e.domain.or(domain);
            out.failed(&e);
            refused(e)
        }
        Ok(_held) => {
            CURRENT.with(|c| *c.borrow_mut() = Some(out.clone()));
            let result = recover_orphan(shared, &access, &out).and_then(|()| {
                // A panic in a command must not take the server down.
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    execute(&shared.exec, &request.cmd, &inputs, &out)
                }))
                .unwrap_or_else(|_| Err(anyhow::anyhow!("internal error: the command panicked (a bug)")))
            });
            CURRENT.with(|c| c.borrow_mut().take());
            match result {
                Ok(code) => Frame::Done {
                    code,
                    result: out.take_result(),
                    error: None,
                },
                Err(e) => {
                    let e = ApiError::classify(&e, domain.as_deref());
                    out.failed(&e);
                    refused(e)
                }
            }
        }
    };
    let _ = tx.send((done, None));
}

/// A transaction left open on the domain by an earlier request (its undo
/// or forward steps failed) is recovered before the next change, as the
/// CLI does at every start.
fn recover_orphan(shared: &Shared, access: &Access, out: &Out) -> Result<()> {
    let Access::Domain(domain) = access else {
        return Ok(());
    };
    let journal = shared.exec.journal();
    let Some(txn) = journal.busy_with(domain)? else {
        return Ok(());
    };
    let Some(open) = journal.open_transaction(txn)? else {
        return Ok(());
    };
    let outcome = recovery::recover_txn(&shared.exec, &open, false);
    let report = recovery::RecoveryReport {
        dry_run: false,
        transactions: vec![outcome],
        gone: vec![],
        sessions_removed: vec![],
        resumed: vec![],
    };
    out.note(&format!(
        "recovered open transactions first:\n{}",
        report.explain()
    ));
    Ok(())
}

/// Who runs: reads beside anything, one change per domain, the
/// whole-directory commands alone.
#[derive(Default)]
struct Gate {
    everything: RwLock<()>,
    domains: Mutex<HashSet<String>>,
}

/// What a running request holds; released when dropped.
enum Held<'a> {
    Nothing,
    Shared(#[allow(dead_code)] RwLockReadGuard<'a, ()>),
    Domain {
        gate: &'a Gate,
        domain: String,
        _shared: RwLockReadGuard<'a, ()>,
    },
    Alone(#[allow(dead_code)] RwLockWriteGuard<'a, ()>),
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Held::Domain { gate, domain, .. } = self {
            gate.domains
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(domain);
        }
    }
}

impl Gate {
    fn enter(&self, access: &Access, exec: &Executor) -> Result<Held<'_>, ApiError> {
        let whole_busy = || {
            ApiError::unchanged(
                ErrorKind::Busy,
                "recovery, repair or compaction of the whole state directory is running; nothing was changed: retry when it ends",
            )
        };
        match access {
            Access::Read => Ok(Held::Nothing),
            Access::Session => self.everything.try_read().map(Held::Shared).map_err(|_| whole_busy()),
            Access::Domain(domain) => {
                let shared = self.everything.try_read().map_err(|_| whole_busy())?;
                let mut domains = self.domains.lock().unwrap_or_else(|e| e.into_inner());
                if !domains.insert(domain.clone()) {
                    return Err(domain_busy(exec, domain));
                }
                Ok(Held::Domain {
                    gate: self,
                    domain: domain.clone(),
                    _shared: shared,
                })
            }
            Access::Everything => self.everything.try_write().map(Held::Alone).map_err(|_| {
                let running: Vec<String> = self
                    .domains
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .cloned()
                    .collect();
                ApiError::unchanged(
                    ErrorKind::Busy,
                    format!(
                        "requests are running (domains: {}); this command runs alone; nothing was changed: retry when they end",
                        if running.is_empty() {
                            "redefine sessions".to_string()
                        } else {
                            running.join(", ")
                        }
                    ),
                )
            }),
        }
    }
}

/// "busy", with the running transaction when it has begun.
fn domain_busy(exec: &Executor, domain: &str) -> ApiError {
    let txn = exec.journal().busy_with(domain).ok().flatten();
    let what = txn
        .and_then(|t| exec.journal().open_transaction(t).ok().flatten())
        .map(|o| o.intent.describe());
    let message = match (&txn, &what) {
        (Some(t), Some(w)) => {
            format!("domain {domain} is busy with transaction {t} ({w}); nothing was changed")
        }
        _ => format!("domain {domain} is busy with another request (being planned); nothing was changed"),
    };
    ApiError {
        kind: ErrorKind::Busy,
        message,
        domain: Some(domain.to_string()),
        txn: txn.map(|t| t.to_string()),
        changed: Some(false),
        reason: None,
    }
}

/// The group id of `name` (or a number).
fn group_id(name: &str) -> Result<u32> {
    if let Ok(n) = name.parse() {
        return Ok(n);
    }
    let c = std::ffi::CString::new(name)?;
    // SAFETY: getgrnam returns a pointer into static storage, read at once
    // on this thread before any other call of the getgr* family.
    let g = unsafe { libc::getgrnam(c.as_ptr()) };
    if g.is_null() {
        bail!("no group called {name}");
    }
    Ok(unsafe { (*g).gr_gid })
}

/// `snapjournal serve`: opens (and recovers) the state directory, serves it
/// until SIGTERM or SIGINT, and stops cleanly.
pub fn run_foreground(
    state_dir: &Path,
    socket: Option<PathBuf>,
    group: Option<&str>,
    stop_timeout: Duration,
    idle_timeout: Duration,
) -> Result<i32> {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let mut options = ServerOptions::for_state_dir(state_dir);
    if let Some(s) = socket {
        options.socket = s;
    }
    options.read_group = group.map(group_id).transpose()?;
    options.stop_timeout = stop_timeout;
    options.idle_timeout = idle_timeout;
    let (exec, report) = recovery::open(state_dir)?;
    if !report.transactions.is_empty() || !report.resumed.is_empty() {
        info!("recovered open transactions first:\n{}", report.explain());
    }
    let server = Server::new(exec);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the server's runtime")?;
    runtime.block_on(async {
        // Registered before the socket listens: a SIGTERM that arrives
        // once clients can connect always stops the server cleanly.
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let stop = async move {
            tokio::select! {
                _ = term.recv() => info!("SIGTERM"),
                _ = int.recv() => info!("SIGINT"),
            }
        };
        server.serve(options, stop).await
    })?;
    // The connections' tasks are dropped (they hold the executor), so the
    // journal closes before the process exits: RocksDB's threads must not
    // be running while the process tears down.
    runtime.shutdown_timeout(Duration::from_secs(2));
    if server.requests_running() > 0 {
        // Past the stop timeout: left to recovery, as after a crash. The
        // process ends at once, without the destructors a running request
        // still needs.
        warn!("exiting with requests running: recovery finishes them at the next open");
        // SAFETY: _exit ends the process; nothing runs after it.
        unsafe { libc::_exit(0) };
    }
    drop(server);
    Ok(0)
}
