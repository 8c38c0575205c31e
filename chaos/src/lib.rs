//! The snapjournal chaos suite: crash-point enumeration, fault injection
//! and invariant checking on real qcow2 images.

pub mod faults;
pub mod fixture;
pub mod invariants;
pub mod libvirt;
pub mod libvirtchaos;
pub mod live;
pub mod livechaos;
pub mod livekill;
pub mod powercut;
pub mod random;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod served;
pub mod witness;
