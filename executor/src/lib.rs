//! The snapjournal executor: turns a request into a complete plan of
//! idempotent, probe-able, undoable steps and runs it as a journaled
//! transaction, against qemu-img and the libvirt-format XML files.

pub mod durable;
pub mod engine;
pub mod error;
pub mod images;
pub mod libvirt;
pub mod live;
pub mod metadata;
pub mod names;
pub mod ops;
pub mod qcow2;
mod qcow2_create;
pub mod resume;
pub mod steps;
pub mod xml;

pub use engine::{BeginFn, Executor};
pub use error::{ChainSource, ExecError, ImageError, PlanError, Result, XmlError};
pub use ops::checkpoint::{CheckpointReport, CheckpointRequest};
pub use ops::create::{CreateReport, CreateRequest};
pub use ops::delete::{DeleteReport, DeleteRequest, MergeChoice};
pub use ops::domain::{DefineReport, SharedDisks};
pub use ops::redefine::{RedefineReport, RedefineRequest};
pub use ops::revert::{RevertReport, RevertRequest};
pub use xml::snapshot::DiskRequest;
