//! The power-cut layer bites (issue 17): with the directory fsync after an
//! overlay's creation dropped (`SNAPJOURNAL_TEST_DROP_FSYNC`), a power cut
//! after the snapshot committed loses the overlay — and the guest data
//! with it — and the suite reports it; with the fsync in place, the same
//! cut recovers clean.

use chaos::powercut::model::Policy;
use chaos::powercut::{run_case_with_env, CutAt};
use chaos::runner::{reference, Outcome};
use chaos::scenario::Op;

#[test]
fn dropping_the_overlay_directory_fsync_loses_a_committed_overlay() {
    let reference = reference(Op::Create, 1).unwrap();
    let drop_fsync = [(
        "SNAPJOURNAL_TEST_DROP_FSYNC".to_string(),
        "overlay-dir-fsync".to_string(),
    )];
    let mut failed = None;
    for n in 1..=reference.trace.len() as u64 {
        let case = run_case_with_env(
            Op::Create,
            1,
            &reference,
            CutAt::CrashPoint(n),
            Policy::DropAll,
            &drop_fsync,
        )
        .unwrap();
        if let Outcome::Violation(v) = case.outcome {
            failed = Some((n, case.point, v));
            break;
        }
    }
    let (n, point, violations) = failed.expect("no power cut caught the missing directory fsync");
    let text = violations.join("\n");
    assert!(text.contains("vda.s1"), "crash point {n} ({point}): {text}");
    // The same cut with every fsync in place.
    let case = run_case_with_env(
        Op::Create,
        1,
        &reference,
        CutAt::CrashPoint(n),
        Policy::DropAll,
        &[],
    )
    .unwrap();
    assert!(
        !matches!(case.outcome, Outcome::Violation(_)),
        "crash point {n} ({point}) fails even with the fsync: {:?}",
        case.outcome
    );
}
