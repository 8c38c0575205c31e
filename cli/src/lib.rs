//! The snapjournal command line as a library: its commands, the server
//! that serves a state directory on a unix socket (`snapjournal serve`,
//! or [`server::Server`] inside an agent), and the client the CLI uses
//! when a server holds the directory. docs/API.md describes the protocol.

pub mod api;
pub mod client;
pub mod commands;
pub mod output;
pub mod progress;
pub mod server;
