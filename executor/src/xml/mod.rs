//! libvirt-format XML: read with a span-keeping element tree, written by
//! splicing edits into the original text (so a definition round-trips
//! untouched apart from what we change) or rendered from the state.

pub mod checkpoint;
pub mod domain;
pub mod snapshot;
pub mod tree;
