//! Key layouts of the column families and of the documents beside the
//! projection.

#[allow(unused_imports)]
use super::*;

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(super) fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub(super) fn txn_key(txn: TxnId) -> [u8; 8] {
    txn.0.to_be_bytes()
}

/// The progress record of an open transaction, stored right after its
/// open record (`txn_key` + `p`).
pub(super) fn progress_key(txn: TxnId) -> [u8; 9] {
    let mut k = [b'p'; 9];
    k[..8].copy_from_slice(&txn_key(txn));
    k
}

/// The transaction an `open` key (`txn_key`, or `progress_key`) belongs to.
pub(super) fn open_key_txn(key: &[u8]) -> TxnId {
    TxnId(u64::from_be_bytes(
        key.get(..8).and_then(|b| b.try_into().ok()).unwrap_or([0; 8]),
    ))
}

pub(super) fn history_key(domain: &str, txn: TxnId) -> Vec<u8> {
    let mut k = domain.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&txn.0.to_be_bytes());
    k
}

/// Historic `<domain>` documents sort after every other projection key
/// (`x\0s\0dom\0snap`, `x\0c\0dom\0cp`), so the projection is read whole
/// without them.
pub(super) const DOC_PREFIX: &str = "x";

pub(super) const DOC_SNAPSHOT: char = 's';

pub(super) const DOC_CHECKPOINT: char = 'c';

pub(super) const DOC_SNAPSHOT_EXTRAS: char = 'e';

/// The libvirt binding of a domain (`x\0l\0dom\0uri`).
pub(super) const DOC_LIBVIRT: char = 'l';

/// The one document name under [`DOC_LIBVIRT`].
pub(super) const LIBVIRT_URI: &str = "uri";

pub(super) fn document_key(kind: char, domain: &str, name: &str) -> Vec<u8> {
    format!("{DOC_PREFIX}\0{kind}\0{domain}\0{name}").into_bytes()
}

/// The key range of one domain's documents of one kind.
pub(super) fn document_range(kind: char, domain: &str) -> (Vec<u8>, Vec<u8>) {
    let from = format!("{DOC_PREFIX}\0{kind}\0{domain}\0").into_bytes();
    let mut to = from.clone();
    if let Some(last) = to.last_mut() {
        *last = 1;
    }
    (from, to)
}

pub(super) fn projection_key(t: &Touched) -> String {
    match t {
        Touched::Domain(d) => format!("d\0{d}"),
        Touched::Snapshot(d, s) => format!("s\0{d}\0{s}"),
        Touched::Checkpoint(d, c) => format!("c\0{d}\0{c}"),
        Touched::Image(p) => format!("i\0{p}"),
    }
}
