//! The versioned, checksummed envelope around every stored value.
//!
//! Layout: `[version: u8][kind: u8][crc32c(payload): u32 LE][payload]`, the
//! payload being bincode 2 (serde, standard config). bincode is not
//! self-describing, so every format change bumps [`FORMAT_VERSION`].

use serde::{de::DeserializeOwned, Serialize};

use crate::error::{CorruptKind, JournalError, RecordName, Result};
use crate::event::TxnId;

/// The format version this build writes and reads.
///
/// - 1: the first format.
/// - 2: `Step::LiveSnapshot` carries the bitmaps of a checkpoint.
/// - 3: snapshot and checkpoint records leave their historic `<domain>` to
///   a document of its own (`StateChange::*Recorded` carry it beside); an
///   open transaction's progress is a record apart from its plan.
///   `Step::LiveBitmapCarry` was appended later within 3 (records written
///   before it decode unchanged), then `StateChange::LibvirtBound` and
///   `Step::{LibvirtSnapshot, LibvirtBlockJob, LibvirtCheckpoint,
///   LibvirtCheckpointDelete}`.
pub const FORMAT_VERSION: u8 = 3;
/// Size of the envelope header in bytes.
pub const HEADER_LEN: usize = 6;

/// What a stored value is; checked on decode so a value is never read as
/// something else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    Event = 1,
    OpenTxn = 2,
    Domain = 3,
    Snapshot = 4,
    Checkpoint = 5,
    Image = 6,
    History = 7,
    Meta = 8,
    Document = 9,
    OpenProgress = 10,
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes `value` into an envelope of the given kind (one buffer: the
/// header is filled in after the payload is written behind it).
pub fn encode<T: Serialize>(kind: RecordKind, value: &T) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&[FORMAT_VERSION, kind as u8, 0, 0, 0, 0]);
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .map_err(|e| JournalError::Encode(e.to_string()))?;
    let crc = crc32c::crc32c(&out[HEADER_LEN..]);
    out[2..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Decodes an envelope, checking version, kind and checksum. Every failure
/// is a [`JournalError::Corrupt`] naming `record` (and `txn` when known).
pub fn decode<T: DeserializeOwned>(
    kind: RecordKind,
    bytes: &[u8],
    record: RecordName,
    txn: Option<TxnId>,
) -> Result<T> {
    let corrupt = |kind: CorruptKind| JournalError::Corrupt {
        record: record.clone(),
        txn,
        kind,
    };
    if bytes.len() < HEADER_LEN {
        return Err(corrupt(CorruptKind::Truncated {
            len: bytes.len(),
            header: HEADER_LEN,
        }));
    }
    if bytes[0] != FORMAT_VERSION {
        return Err(corrupt(CorruptKind::UnknownVersion {
            found: bytes[0],
            supported: FORMAT_VERSION,
        }));
    }
    if bytes[1] != kind as u8 {
        return Err(corrupt(CorruptKind::WrongKind {
            found: bytes[1],
            expected: kind as u8,
        }));
    }
    let stored = u32::from_le_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
    let payload = &bytes[HEADER_LEN..];
    let computed = crc32c::crc32c(payload);
    if stored != computed {
        return Err(corrupt(CorruptKind::Checksum { stored, computed }));
    }
    let (value, used) = bincode::serde::decode_from_slice(payload, config())
        .map_err(|e| corrupt(CorruptKind::Payload(e.to_string())))?;
    if used != payload.len() {
        return Err(corrupt(CorruptKind::Payload(format!(
            "{} trailing bytes after the value",
            payload.len() - used
        ))));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name() -> RecordName {
        RecordName::Event { seq: 7 }
    }

    #[test]
    fn round_trip() {
        let v = (1u32, "x".to_string(), vec![3u8]);
        let b = encode(RecordKind::Meta, &v).unwrap();
        let back: (u32, String, Vec<u8>) = decode(RecordKind::Meta, &b, name(), None).unwrap();
        assert_eq!(v, back);
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let v = ("domain-a".to_string(), 42u64, vec!["vda".to_string()]);
        let good = encode(RecordKind::Event, &v).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            let r: Result<(String, u64, Vec<String>)> =
                decode(RecordKind::Event, &bad, name(), Some(TxnId(3)));
            let err = r.expect_err("flipped byte must not decode");
            let msg = err.to_string();
            assert!(msg.contains("event #7"), "{msg}");
            assert!(msg.contains("transaction txn-3"), "{msg}");
        }
    }

    #[test]
    fn truncation_and_versions_are_typed_errors() {
        let good = encode(RecordKind::Event, &"abc".to_string()).unwrap();
        for len in 0..good.len() {
            let r: Result<String> = decode(RecordKind::Event, &good[..len], name(), None);
            assert!(matches!(r, Err(JournalError::Corrupt { .. })), "len {len}");
        }
        // A newer format, and the older one (whose steps decode differently).
        for version in [FORMAT_VERSION + 1, 1] {
            let mut other = good.clone();
            other[0] = version;
            let r: Result<String> = decode(RecordKind::Event, &other, name(), None);
            assert!(
                matches!(
                    r,
                    Err(JournalError::Corrupt {
                        kind: CorruptKind::UnknownVersion { found, .. },
                        ..
                    }) if found == version
                ),
                "version {version}"
            );
        }
        let r: Result<String> = decode(RecordKind::Domain, &good, name(), None);
        assert!(matches!(
            r,
            Err(JournalError::Corrupt {
                kind: CorruptKind::WrongKind { .. },
                ..
            })
        ));
    }
}
