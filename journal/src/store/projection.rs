//! The state projection and the documents beside it: writing what a
//! committed change implies, reading it back, folding the event log.

#[allow(unused_imports)]
use super::*;

/// Adds records to a map keyed by name; an empty map is built in bulk
/// (records arrive sorted by name), which is much cheaper than inserting.
pub(super) fn fill<T: Clone>(
    map: &mut crate::state::Map<String, T>,
    records: Vec<T>,
    key: impl Fn(&T) -> String,
) {
    map.extend(records.into_iter().map(|r| (key(&r), r)));
}

/// Splits (domain, record) pairs into runs of one domain, keeping order.
pub(super) fn group_by_domain<T>(items: Vec<(String, T)>) -> Vec<(String, Vec<T>)> {
    let mut out: Vec<(String, Vec<T>)> = Vec::new();
    for (d, item) in items {
        match out.last_mut() {
            Some((last, run)) if *last == d => run.push(item),
            _ => out.push((d, vec![item])),
        }
    }
    out
}

/// A stored (key, value) pair as RocksDB returns it.
pub(super) type RawEntry = (Box<[u8]>, Box<[u8]>);

/// What one slice of the `state` column family decodes to.
#[derive(Default)]
pub(super) struct ProjectionPart {
    domains: Vec<(String, DomainCore)>,
    snapshots: Vec<(String, SnapshotRecord)>,
    checkpoints: Vec<(String, CheckpointRecord)>,
    images: Vec<ImageRecord>,
}

/// Decodes projection entries (`d\0dom`, `s\0dom\0snap`, `c\0dom\0cp`,
/// `i\0path`); an entry that does not decode is an error naming its key.
pub(super) fn decode_projection(entries: &[RawEntry]) -> Result<ProjectionPart> {
    let mut part = ProjectionPart::default();
    for (k, v) in entries {
        let key = String::from_utf8_lossy(k);
        let name = || RecordName::Projection { key: key.to_string() };
        let mut parts = key.splitn(3, '\0');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("d"), Some(d), None) => part
                .domains
                .push((d.to_string(), decode(RecordKind::Domain, v, name(), None)?)),
            (Some("s"), Some(d), Some(_)) => part
                .snapshots
                .push((d.to_string(), decode(RecordKind::Snapshot, v, name(), None)?)),
            (Some("c"), Some(d), Some(_)) => part
                .checkpoints
                .push((d.to_string(), decode(RecordKind::Checkpoint, v, name(), None)?)),
            (Some("i"), Some(_), None) => part.images.push(decode(RecordKind::Image, v, name(), None)?),
            _ => {
                return Err(JournalError::Corrupt {
                    record: name(),
                    txn: None,
                    kind: crate::error::CorruptKind::Payload("unknown projection key".into()),
                })
            }
        }
    }
    Ok(part)
}

impl Journal {
    pub(super) fn put_projection(&self, state: &State, t: &Touched, batch: &mut RawBatch) -> Result<()> {
        let key = projection_key(t);
        let cf = self.ids.state;
        let value = match t {
            Touched::Domain(d) => state
                .domains
                .get(d)
                .map(|s| encode(RecordKind::Domain, &s.core))
                .transpose()?,
            Touched::Snapshot(d, s) => state
                .domains
                .get(d)
                .and_then(|x| x.snapshots.get(s))
                .map(|s| encode(RecordKind::Snapshot, s))
                .transpose()?,
            Touched::Checkpoint(d, c) => state
                .domains
                .get(d)
                .and_then(|x| x.checkpoints.get(c))
                .map(|c| encode(RecordKind::Checkpoint, c))
                .transpose()?,
            Touched::Image(p) => state
                .images
                .get(p)
                .map(|i| encode(RecordKind::Image, i))
                .transpose()?,
        };
        match value {
            Some(v) => batch.put_cf(cf, key.as_bytes(), v),
            None => batch.delete_cf(cf, key.as_bytes()),
        }
        Ok(())
    }

    /// Stores or removes the historic `<domain>` documents a change implies
    /// (after the change was applied to `state`).
    pub(super) fn put_document(
        &self,
        state: &State,
        change: &StateChange,
        batch: &mut RawBatch,
    ) -> Result<()> {
        let cf = self.ids.state;
        match change {
            // Stored only when the record was (its domain is defined).
            StateChange::SnapshotRecorded {
                domain,
                snapshot,
                domain_xml,
            } if state
                .domains
                .get(domain)
                .is_some_and(|d| d.snapshots.contains_key(&snapshot.name)) =>
            {
                let value = encode(RecordKind::Document, domain_xml)?;
                batch.put_cf(cf, document_key(DOC_SNAPSHOT, domain, &snapshot.name), value);
            }
            StateChange::CheckpointRecorded {
                domain,
                checkpoint,
                domain_xml,
            } if state
                .domains
                .get(domain)
                .is_some_and(|d| d.checkpoints.contains_key(&checkpoint.name)) =>
            {
                let value = encode(RecordKind::Document, domain_xml)?;
                batch.put_cf(cf, document_key(DOC_CHECKPOINT, domain, &checkpoint.name), value);
            }
            StateChange::SnapshotExtrasRecorded {
                domain,
                snapshot,
                xml,
            } if state
                .domains
                .get(domain)
                .is_some_and(|d| d.snapshots.contains_key(snapshot)) =>
            {
                let value = encode(RecordKind::Document, xml)?;
                batch.put_cf(cf, document_key(DOC_SNAPSHOT_EXTRAS, domain, snapshot), value);
            }
            StateChange::SnapshotRemoved { domain, snapshot } => {
                batch.delete_cf(cf, document_key(DOC_SNAPSHOT, domain, snapshot));
                batch.delete_cf(cf, document_key(DOC_SNAPSHOT_EXTRAS, domain, snapshot));
            }
            StateChange::CheckpointRemoved { domain, checkpoint } => {
                batch.delete_cf(cf, document_key(DOC_CHECKPOINT, domain, checkpoint));
            }
            StateChange::LibvirtBound { domain, uri } if state.domains.contains_key(domain) => match uri {
                Some(uri) => {
                    let value = encode(RecordKind::Document, uri)?;
                    batch.put_cf(cf, document_key(DOC_LIBVIRT, domain, LIBVIRT_URI), value);
                }
                None => batch.delete_cf(cf, document_key(DOC_LIBVIRT, domain, LIBVIRT_URI)),
            },
            StateChange::DomainUndefined { domain } => {
                for kind in [DOC_SNAPSHOT, DOC_CHECKPOINT, DOC_SNAPSHOT_EXTRAS, DOC_LIBVIRT] {
                    let (from, to) = document_range(kind, domain);
                    batch.delete_range_cf(cf, from, to);
                }
            }
            _ => {}
        }
        Ok(())
    }

    pub(super) fn document(&self, kind: char, domain: &str, name: &str) -> Result<Option<String>> {
        let key = document_key(kind, domain, name);
        let Some(v) = self
            .db
            .get_cf(self.cf(CF_STATE), &key)
            .map_err(|e| self.db_err(e))?
        else {
            return Ok(None);
        };
        let record = RecordName::Projection {
            key: String::from_utf8_lossy(&key).into_owned(),
        };
        Ok(Some(decode(RecordKind::Document, &v, record, None)?))
    }

    pub(super) fn documents(&self, kind: char, domain: &str) -> Result<BTreeMap<String, String>> {
        let (from, to) = document_range(kind, domain);
        let mut read = rocksdb::ReadOptions::default();
        read.set_iterate_upper_bound(to);
        let mut out = BTreeMap::new();
        for item in self.db.iterator_cf_opt(
            self.cf(CF_STATE),
            read,
            IteratorMode::From(&from, Direction::Forward),
        ) {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            let record = RecordName::Projection {
                key: String::from_utf8_lossy(&k).into_owned(),
            };
            let name = String::from_utf8_lossy(&k[from.len()..]).into_owned();
            out.insert(name, decode(RecordKind::Document, &v, record, None)?);
        }
        Ok(out)
    }

    /// The `<domain>` as it was when snapshot `name` of `domain` was taken
    /// (`None`: no such snapshot).
    pub fn snapshot_domain_xml(&self, domain: &str, name: &str) -> Result<Option<String>> {
        self.document(DOC_SNAPSHOT, domain, name)
    }

    /// The historic `<domain>` of checkpoint `name` of `domain`.
    pub fn checkpoint_domain_xml(&self, domain: &str, name: &str) -> Result<Option<String>> {
        self.document(DOC_CHECKPOINT, domain, name)
    }

    /// The `<extras>` document of snapshot `name` of `domain`: the parts of
    /// a redefined document its record does not model (`None`: none).
    pub fn snapshot_extras(&self, domain: &str, name: &str) -> Result<Option<String>> {
        self.document(DOC_SNAPSHOT_EXTRAS, domain, name)
    }

    /// The `<extras>` documents of `domain`'s snapshots, by name.
    pub fn snapshot_extras_all(&self, domain: &str) -> Result<BTreeMap<String, String>> {
        self.documents(DOC_SNAPSHOT_EXTRAS, domain)
    }

    /// The historic `<domain>` of every snapshot of `domain`, by name.
    pub fn snapshot_domain_xmls(&self, domain: &str) -> Result<BTreeMap<String, String>> {
        self.documents(DOC_SNAPSHOT, domain)
    }

    /// The historic `<domain>` of every checkpoint of `domain`, by name.
    pub fn checkpoint_domain_xmls(&self, domain: &str) -> Result<BTreeMap<String, String>> {
        self.documents(DOC_CHECKPOINT, domain)
    }

    /// The libvirt connection URI of `domain` when libvirt runs it
    /// (`None`: snapjournal runs its QEMU itself, or nobody does).
    pub fn libvirt_uri(&self, domain: &str) -> Result<Option<String>> {
        self.document(DOC_LIBVIRT, domain, LIBVIRT_URI)
    }

    /// Runs `f` on the current state projection.
    pub fn with_state<R>(&self, f: impl FnOnce(&State) -> R) -> Result<R> {
        let g = self.lock_inner()?;
        Ok(f(&g.state))
    }

    /// A copy of the current state projection.
    pub fn state(&self) -> Result<State> {
        self.with_state(|s| s.clone())
    }

    /// A copy of one domain's state.
    pub fn domain(&self, name: &str) -> Result<Option<DomainState>> {
        self.with_state(|s| s.domains.get(name).cloned())
    }

    /// Every stored event after the compaction checkpoint, in order. A
    /// record that does not decode is an error naming it.
    pub fn events(&self) -> Result<Vec<EventRecord>> {
        let mut out = Vec::new();
        self.for_each_event(|r| {
            out.push(r);
            Ok(())
        })?;
        Ok(out)
    }

    pub(super) fn for_each_event(&self, mut f: impl FnMut(EventRecord) -> Result<()>) -> Result<()> {
        for item in self
            .db
            .iterator_cf(self.cf(CF_EVENTS), IteratorMode::From(&[], Direction::Forward))
        {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            let seq = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
            f(decode(RecordKind::Event, &v, RecordName::Event { seq }, None)?)?;
        }
        Ok(())
    }

    /// The projection folded from the compaction checkpoint and every event
    /// after it: must equal [`Journal::state`].
    pub fn fold_events(&self) -> Result<State> {
        let mut state = self.checkpoint()?.map(|c| c.state).unwrap_or_default();
        let mut touched = BTreeSet::new();
        self.for_each_event(|r| {
            if let Event::Committed { changes, .. } = &r.event {
                for c in changes {
                    state.apply(c, &mut touched);
                }
            }
            Ok(())
        })?;
        Ok(state)
    }

    /// The projection as stored in the `state` column family.
    pub fn stored_projection(&self) -> Result<State> {
        // Read every entry, then decode on every core: with 10,000
        // snapshots, decoding is most of the time a command needs to open
        // the journal.
        let mut raw: Vec<RawEntry> = Vec::new();
        // One sequential pass: read ahead, keep the blocks out of the cache
        // (read once), and skip RocksDB's block checksums (every value
        // carries its own CRC32C, checked when it is decoded).
        let mut read = rocksdb::ReadOptions::default();
        read.set_readahead_size(4 << 20);
        read.fill_cache(false);
        read.set_verify_checksums(false);
        read.set_iterate_upper_bound(DOC_PREFIX.as_bytes());
        for item in self
            .db
            .iterator_cf_opt(self.cf(CF_STATE), read, IteratorMode::Start)
        {
            raw.push(item.map_err(|e| self.db_err(e))?);
        }
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 8);
        let chunk = raw.len().div_ceil(threads).max(1024);
        let parts: Vec<Result<ProjectionPart>> = std::thread::scope(|scope| {
            let handles: Vec<_> = raw
                .chunks(chunk)
                .map(|c| scope.spawn(move || decode_projection(c)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(JournalError::Poisoned("a decoding thread panicked".into())))
                })
                .collect()
        });
        let mut state = State::default();
        let mut snapshots = Vec::new();
        let mut checkpoints = Vec::new();
        for part in parts {
            let part = part?;
            for (d, core) in part.domains {
                state.domains.insert(
                    d,
                    DomainState {
                        core,
                        snapshots: crate::state::Map::new(),
                        checkpoints: crate::state::Map::new(),
                    },
                );
            }
            snapshots.extend(part.snapshots);
            checkpoints.extend(part.checkpoints);
            state
                .images
                .extend(part.images.into_iter().map(|i| (i.path.clone(), i)));
        }
        // Keys are stored sorted (`s\0dom\0name`), so each domain's records
        // arrive together and in name order: each map is built in bulk.
        for (d, records) in group_by_domain(snapshots) {
            if let Some(dom) = state.domains.get_mut(&d) {
                fill(&mut dom.snapshots, records, |s| s.name.clone());
            }
        }
        for (d, records) in group_by_domain(checkpoints) {
            if let Some(dom) = state.domains.get_mut(&d) {
                fill(&mut dom.checkpoints, records, |c| c.name.clone());
            }
        }
        Ok(state)
    }
}
