//! Shared helpers of the end-to-end tests: the chaos suite's fixtures on
//! real qcow2 images and the `snapjournal` binary.

pub use chaos::fixture::{domain_xml, files, region_holds, tool, write_pattern, Fixture, REGION};
pub use chaos::scenario::{A, B, C, D};

/// Asserts that `image` reads `want` (region → pattern, others 0) in
/// regions 0..6.
pub fn assert_view(image: &str, want: &[(u64, u8)]) {
    for r in 0..6u64 {
        let p = want.iter().find(|(x, _)| *x == r).map(|(_, p)| *p).unwrap_or(0);
        assert!(
            region_holds(image, p, r).expect("qemu-io"),
            "{image}: region {r} should hold {p:#04x}"
        );
    }
}
