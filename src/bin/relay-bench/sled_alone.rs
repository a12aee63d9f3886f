//! The ceiling sled itself puts on durable ingest, measured without the
//! relay: one thread writes what the relay's writer writes for each final
//! notification (the dedup lookup; a record under a time-ordered key; a
//! dedup entry and an invoice-index entry under keys spread over the
//! tree), in groups as large as a closed loop of N connections can make
//! them (every connection's request in every group), each group one batch,
//! then sled's flush and an fdatasync of its log, as the relay's 200 needs.
//! No HTTP, TLS, parsing, validation or answering: nothing the relay adds.

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use rand::Rng;

/// A little under the relay's record of the bench's TusFacturas body (its
/// metadata, some 350 bytes of JSON, then the body's 190): if anything,
/// sled alone is flattered.
const RECORD_BYTES: usize = 512;

pub struct SledAlone {
    db: sled::Db,
    log: File,
    /// The next notification's number (its key is time-ordered, like an id).
    next: u64,
}

impl SledAlone {
    /// A spool of its own in `dir`, with the relay's sled settings.
    pub fn open(dir: &Path) -> SledAlone {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(16 << 20)
            .flush_every_ms(None)
            .open()
            .expect("sled-alone spool");
        let log = File::options()
            .read(true)
            .write(true)
            .open(dir.join("db"))
            .expect("sled-alone log file");
        SledAlone { db, log, next: 0 }
    }

    /// Writes groups of `group` notifications for `duration`; answers the
    /// notifications made durable per second.
    pub fn run(&mut self, group: usize, duration: Duration) -> f64 {
        let mut rng = rand::rng();
        let record = vec![b'r'; RECORD_BYTES];
        let started = Instant::now();
        let mut written = 0u64;
        while started.elapsed() < duration {
            let mut batch = sled::Batch::default();
            for _ in 0..group {
                self.next += 1;
                let mut dedup = b"dtusfacturas\0".to_vec();
                dedup.extend_from_slice(format!("{:032x}", rng.random::<u128>()).as_bytes());
                let _ = self.db.get(&dedup).expect("sled-alone dedup lookup");
                let mut key = vec![b'n'];
                key.extend_from_slice(&u128::from(self.next).to_be_bytes());
                batch.insert(key, record.as_slice());
                batch.insert(dedup, &[0u8; 24][..]);
                let mut entry = b"itusfacturas\0".to_vec();
                entry.extend_from_slice(format!("{:012}", rng.random::<u32>()).as_bytes());
                entry.push(0);
                entry.extend_from_slice(&(!u128::from(self.next)).to_be_bytes());
                batch.insert(entry, &[0u8; 7][..]);
            }
            self.db.apply_batch(batch).expect("sled-alone batch");
            self.db.flush().expect("sled-alone flush");
            self.log.sync_data().expect("sled-alone fdatasync");
            written += group as u64;
        }
        written as f64 / started.elapsed().as_secs_f64()
    }
}
