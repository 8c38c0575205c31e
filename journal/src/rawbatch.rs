//! Write batches built in Rust, in RocksDB's own write-batch format.
//!
//! Every record a transaction writes goes through the group commit; built
//! as `rocksdb::WriteBatch`es they cost a C++ object, a foreign call per
//! key and, concatenated on the writing thread, a free of memory another
//! thread allocated (glibc's arenas then contend). A [`RawBatch`] is the
//! same bytes in a `Vec`: appended to the group's queue under its lock and
//! handed to RocksDB once per group ([`RawBatch::inas_write_batch`]).
//!
//! The format (RocksDB `db/write_batch.cc`): a 12-byte header (sequence
//! number, set by RocksDB; record count, little-endian u32), then per
//! record a type byte, the column family id as a varint32, and the
//! key (and value, or range end) each as a varint32 length and bytes.
//! A test checks byte for byte against `WriteBatch`.

use rocksdb::{ColumnFamily, WriteBatch};

/// RocksDB's write-batch header: 8-byte sequence, 4-byte record count.
const HEADER: usize = 12;
const TYPE_CF_DELETION: u8 = 0x4;
const TYPE_CF_VALUE: u8 = 0x5;
const TYPE_CF_RANGE_DELETION: u8 = 0xE;

/// A column family as a write batch names it (its numeric id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CfId(pub(crate) u32);

impl CfId {
    /// The id RocksDB gave `cf`, read back from a batch holding one record
    /// for it; `None` if the batch does not look as expected (a RocksDB
    /// whose format this code does not know).
    pub(crate) fn of(cf: &ColumnFamily) -> Option<CfId> {
        let mut probe = WriteBatch::default();
        probe.put_cf(cf, b"", b"");
        let data = probe.data();
        if data.len() <= HEADER || data[HEADER] != TYPE_CF_VALUE {
            return None;
        }
        let (id, used) = read_varint32(&data[HEADER + 1..])?;
        // What follows the id: an empty key and an empty value.
        (data.len() == HEADER + 1 + used + 2).then_some(CfId(id))
    }
}

fn read_varint32(bytes: &[u8]) -> Option<(u32, usize)> {
    let mut value: u32 = 0;
    for (i, b) in bytes.iter().take(5).enumerate() {
        value |= u32::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Records in RocksDB's write-batch format.
#[derive(Debug, Clone)]
pub(crate) struct RawBatch {
    rep: Vec<u8>,
    count: u32,
}

impl Default for RawBatch {
    fn default() -> Self {
        RawBatch::with_capacity(256)
    }
}

impl RawBatch {
    /// An empty batch with room for `bytes` of records.
    pub(crate) fn with_capacity(bytes: usize) -> Self {
        let mut rep = Vec::with_capacity(HEADER + bytes);
        rep.resize(HEADER, 0);
        RawBatch { rep, count: 0 }
    }

    /// Whether the batch holds no record.
    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn put_varint32(&mut self, mut v: u32) {
        while v >= 0x80 {
            self.rep.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.rep.push(v as u8);
    }

    fn put_slice(&mut self, s: &[u8]) {
        // Keys and values are far below 4 GiB (RocksDB refuses more).
        self.put_varint32(s.len() as u32);
        self.rep.extend_from_slice(s);
    }

    fn record(&mut self, kind: u8, cf: CfId) {
        self.rep.push(kind);
        self.put_varint32(cf.0);
        self.count += 1;
    }

    /// Sets `key` to `value` in `cf`.
    pub(crate) fn put_cf(&mut self, cf: CfId, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.record(TYPE_CF_VALUE, cf);
        self.put_slice(key.as_ref());
        self.put_slice(value.as_ref());
    }

    /// Deletes `key` from `cf`.
    pub(crate) fn delete_cf(&mut self, cf: CfId, key: impl AsRef<[u8]>) {
        self.record(TYPE_CF_DELETION, cf);
        self.put_slice(key.as_ref());
    }

    /// Deletes the keys in `[from, to)` from `cf`.
    pub(crate) fn delete_range_cf(&mut self, cf: CfId, from: impl AsRef<[u8]>, to: impl AsRef<[u8]>) {
        self.record(TYPE_CF_RANGE_DELETION, cf);
        self.put_slice(from.as_ref());
        self.put_slice(to.as_ref());
    }

    /// Appends `other`'s records after this batch's.
    pub(crate) fn append(&mut self, other: &RawBatch) {
        self.rep.extend_from_slice(&other.rep[HEADER..]);
        self.count += other.count;
    }

    /// Empties the batch, keeping its memory.
    pub(crate) fn clear(&mut self) {
        self.rep.truncate(HEADER);
        self.count = 0;
    }

    /// The batch as RocksDB takes it (RocksDB copies the bytes).
    pub(crate) fn as_write_batch(&mut self) -> WriteBatch {
        self.rep[8..HEADER].copy_from_slice(&self.count.to_le_bytes());
        WriteBatch::from_data(&self.rep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_db(f: impl FnOnce(&rocksdb::DB)) {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let db = rocksdb::DB::open_cf(&opts, dir.path(), ["a", "b", "c"]).unwrap();
        f(&db);
    }

    #[test]
    fn the_same_bytes_as_rocksdbs_own_batch() {
        with_db(|db| {
            let (a, c) = (db.cf_handle("a").unwrap(), db.cf_handle("c").unwrap());
            let (ia, ic) = (CfId::of(a).unwrap(), CfId::of(c).unwrap());
            assert_ne!(ia, ic);
            let long = vec![7u8; 300];
            let mut theirs = WriteBatch::default();
            theirs.put_cf(a, b"key", b"value");
            theirs.put_cf(c, &long, b"");
            theirs.delete_cf(a, b"gone");
            theirs.delete_range_cf(c, &b"from"[..], &b"to"[..]);
            let mut ours = RawBatch::default();
            ours.put_cf(ia, b"key", b"value");
            let mut more = RawBatch::with_capacity(0);
            more.put_cf(ic, &long, b"");
            more.delete_cf(ia, b"gone");
            more.delete_range_cf(ic, &b"from"[..], &b"to"[..]);
            ours.append(&more);
            assert_eq!(ours.as_write_batch().data(), theirs.data());
            assert_eq!(ours.as_write_batch().len(), 4);
            ours.clear();
            assert!(ours.is_empty());
            assert_eq!(ours.as_write_batch().data(), WriteBatch::default().data());
        });
    }

    #[test]
    fn rocksdb_applies_what_we_build() {
        with_db(|db| {
            let b = db.cf_handle("b").unwrap();
            let ib = CfId::of(b).unwrap();
            let mut batch = RawBatch::default();
            for k in 0..10u8 {
                batch.put_cf(ib, [k], [k; 3]);
            }
            batch.delete_cf(ib, [0u8]);
            batch.delete_range_cf(ib, [5u8], [8u8]);
            db.write(batch.as_write_batch()).unwrap();
            let keys: Vec<u8> = db
                .iterator_cf(b, rocksdb::IteratorMode::Start)
                .map(|kv| kv.unwrap().0[0])
                .collect();
            assert_eq!(keys, vec![1, 2, 3, 4, 8, 9]);
            assert_eq!(db.get_cf(b, [9u8]).unwrap().unwrap(), vec![9u8; 3]);
        });
    }

    #[test]
    fn varints_round_trip() {
        for v in [0u32, 1, 127, 128, 300, 16_383, 16_384, u32::MAX] {
            let mut b = RawBatch::with_capacity(0);
            b.put_varint32(v);
            assert_eq!(read_varint32(&b.rep[HEADER..]), Some((v, b.rep.len() - HEADER)));
        }
        assert_eq!(read_varint32(&[0x80, 0x80]), None);
    }
}
