//! The client of a server: the CLI uses it when a server holds the state
//! directory, and a Rust agent can use it the same way.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::api::{ApiError, Frame, Request, PROTOCOL_VERSION, SOCKET_NAME};
use crate::commands::{input_paths, Cli, Cmd, Inputs};
use crate::output::Out;

/// The end of a request: exit code, result, error.
#[derive(Debug, Clone)]
pub struct Done {
    /// The CLI's exit code.
    pub code: i32,
    /// What the CLI prints with `--json`.
    pub result: Option<serde_json::Value>,
    /// The typed error, when the request failed.
    pub error: Option<ApiError>,
}

/// Why a call did not end in a reply.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The connection broke before the reply: the server stopped (or was
    /// killed). `began` names the transaction it had begun, if any.
    #[error("the server stopped before it replied{}", began.as_ref().map(|(t, w)| format!(" (it had begun transaction {t}: {w})")).unwrap_or_default())]
    ServerGone { began: Option<(String, String)> },
    /// The request could not be sent or a frame not read.
    #[error("talking to the server: {0}")]
    Io(#[from] std::io::Error),
    /// The server sent something that is not a frame.
    #[error("the server sent a line that is not a frame: {0}")]
    Protocol(String),
}

/// A connection to a server.
pub struct Client {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

/// The server socket of a state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_NAME)
}

impl Client {
    /// Connects to the server at `socket`.
    pub fn connect(socket: &Path) -> std::io::Result<Client> {
        let writer = UnixStream::connect(socket)?;
        let reader = BufReader::new(writer.try_clone()?);
        Ok(Client { writer, reader })
    }

    /// Connects to the server of `state_dir` if one serves it: `None` when
    /// there is no socket or nothing listens on it (a server that stopped).
    pub fn connect_if_served(state_dir: &Path) -> Result<Option<Client>> {
        let socket = socket_path(state_dir);
        if socket.symlink_metadata().is_err() {
            return Ok(None);
        }
        match Client::connect(&socket) {
            Ok(c) => Ok(Some(c)),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
                ) =>
            {
                Ok(None)
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!(
                "a server holds {} but its socket {} does not let this user in ({e}); nothing was changed: ask its owner, or run as its user",
                state_dir.display(),
                socket.display()
            ),
            Err(e) => Err(e).with_context(|| format!("cannot connect to the server at {}", socket.display())),
        }
    }

    /// Sends `request` and reads frames until its reply, handing each
    /// frame before the reply to `on_frame`.
    pub fn call(&mut self, request: &Request, mut on_frame: impl FnMut(&Frame)) -> Result<Done, CallError> {
        let mut line = serde_json::to_vec(request).map_err(|e| CallError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        let mut began = None;
        loop {
            let mut buf = String::new();
            let n = match self.reader.read_line(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return Err(CallError::ServerGone { began });
            }
            let frame: Frame =
                serde_json::from_str(&buf).map_err(|e| CallError::Protocol(format!("{e}: {buf}")))?;
            match frame {
                Frame::Done { code, result, error } => return Ok(Done { code, result, error }),
                Frame::Began { ref txn, ref what } => {
                    began = Some((txn.clone(), what.clone()));
                    on_frame(&frame);
                }
                other => on_frame(&other),
            }
        }
    }
}

/// Runs the CLI's command through a server: the documents it names are
/// read here and sent, the server's output is printed as it comes, and
/// the exit code is the server's.
pub fn run_through(mut client: Client, cli: &Cli, out: &Out) -> Result<i32> {
    let mut cmd: Cmd = cli.cmd.clone();
    let mut inputs = BTreeMap::new();
    for p in input_paths(&mut cmd)? {
        let text = Inputs::Files.read(&p)?;
        inputs.insert(p.display().to_string(), text);
    }
    let request = Request {
        v: PROTOCOL_VERSION,
        cmd,
        json: cli.json,
        inputs,
        detach: cli.detach,
    };
    let progress = crate::progress::reporter(cli.json);
    let done = client.call(&request, |f| match f {
        Frame::Stdout { text } => out.text(text),
        Frame::Stderr { text } => out.err_text(text),
        Frame::Progress { progress: p } => {
            if let Ok(p) = serde_json::from_value(p.clone()) {
                progress(&p);
            }
        }
        Frame::Began { .. } | Frame::Done { .. } => {}
    });
    match done {
        Ok(d) if cli.detach && d.result.as_ref().is_some_and(|r| r["detached"] == true) => {
            let r = d.result.unwrap_or_default();
            let txn = r["txn"].as_str().unwrap_or("?").to_string();
            out.done(
                r.clone(),
                &format!(
                    "transaction {txn} began ({}); it runs on in the server: `snapjournal journal wait {txn}` follows it",
                    r["what"].as_str().unwrap_or("")
                ),
            );
            Ok(0)
        }
        Ok(d) => Ok(d.code),
        Err(CallError::ServerGone { began: Some((txn, what)) }) => Err(anyhow!(
            "the server stopped while running transaction {txn} ({what}); recovery finishes it when the server restarts (or at the next command once no server holds {})",
            cli.state_dir.display()
        )),
        Err(CallError::ServerGone { began: None }) => Err(anyhow!(
            "the server stopped before it replied and before a transaction of this request was under way; recovery undoes anything it had started, so nothing was changed"
        )),
        Err(e) => Err(e.into()),
    }
}
