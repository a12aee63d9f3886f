//! `spool backup FILE` (through a running relay's admin API) and `spool
//! restore FILE --path DIR` (offline). A backup is written to a temporary
//! file beside FILE, checked whole (checksum and counts), and only then
//! renamed to FILE: a failed or cut backup leaves no half file. Both
//! report their progress on stderr, every few seconds.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::remote::{AdminClient, RemoteArgs};
use crate::clock::Stopwatch;
use crate::spool::backup::{self, ArchiveCounts, BackupError, Manifest};
use crate::spool::Spool;

/// How often progress is told on stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// The admin API's backup endpoint.
const BACKUP_PATH: &str = "/api/spool/backup";

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

pub fn backup(config: &Path, remote: &RemoteArgs, file: &Path) -> anyhow::Result<()> {
    let client = AdminClient::locate(remote, config)?;
    let dir = match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => std::path::PathBuf::from("."),
    };
    let name = file
        .file_name()
        .with_context(|| format!("{} names no file", file.display()))?
        .to_string_lossy()
        .into_owned();
    let partial = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".partial")
        .tempfile_in(&dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    let started = Stopwatch::start();
    let mut told = started;
    let received = {
        let mut out = BufWriter::with_capacity(1 << 20, partial.as_file());
        let received = client.download(BACKUP_PATH, &mut out, &mut |bytes| {
            if told.elapsed() >= PROGRESS_EVERY {
                told = Stopwatch::start();
                eprintln!(
                    "backup: {:.1} MiB received ({:.0} s)",
                    mib(bytes),
                    started.elapsed().as_secs_f64()
                );
            }
        })?;
        out.flush()
            .with_context(|| format!("cannot write {}", partial.path().display()))?;
        received
    };
    partial
        .as_file()
        .sync_all()
        .with_context(|| format!("cannot write {}", partial.path().display()))?;
    eprintln!(
        "backup: {:.1} MiB received in {:.1} s; checking it",
        mib(received),
        started.elapsed().as_secs_f64()
    );
    let manifest = backup::verify(BufReader::with_capacity(
        1 << 20,
        File::open(partial.path())?,
    ))
    .context("the relay's archive does not check out (nothing was written)")?;
    partial
        .persist(file)
        .with_context(|| format!("cannot rename the backup to {}", file.display()))?;
    File::open(&dir)?.sync_all()?;
    if remote.json {
        println!("{}", serde_json::to_string(&manifest)?);
    } else {
        println!(
            "{}: {}, {:.1} MiB, {:.1} s",
            file.display(),
            summary(&manifest),
            mib(received),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

pub fn restore(file: &Path, target: &Path, json: bool) -> anyhow::Result<()> {
    let archive = File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
    let size = archive.metadata()?.len();
    let read = Arc::new(AtomicU64::new(0));
    let counted = Counted {
        inner: archive,
        read: read.clone(),
    };
    let started = Stopwatch::start();
    let mut told = started;
    let mut progress = |counts: &ArchiveCounts| {
        if told.elapsed() >= PROGRESS_EVERY {
            told = Stopwatch::start();
            let done = read.load(Ordering::Relaxed);
            eprintln!(
                "restore: {} notifications written, {:.0}% of the archive read ({:.0} s)",
                counts.notifications,
                100.0 * done as f64 / size.max(1) as f64,
                started.elapsed().as_secs_f64()
            );
        }
    };
    let manifest = Spool::restore(
        BufReader::with_capacity(1 << 20, counted),
        target,
        &mut progress,
    )
    .with_context(|| {
        format!(
            "cannot restore {} into {}",
            file.display(),
            target.display()
        )
    })?;
    if json {
        println!("{}", serde_json::to_string(&manifest)?);
    } else {
        println!(
            "{}: restored {} in {:.1} s; start a relay with [spool.sled] path = {:?}",
            target.display(),
            summary(&manifest),
            started.elapsed().as_secs_f64(),
            target.display().to_string()
        );
    }
    Ok(())
}

fn summary(manifest: &Manifest) -> String {
    let counts = &manifest.counts;
    format!(
        "{} notifications ({} delivery records), {} quarantined, {} audit records, \
         {} API subscriptions; newest {}; sha256 {}",
        counts.notifications,
        counts.deliveries,
        counts.quarantined,
        counts.audit_records,
        counts.subscriptions,
        manifest.newest.as_deref().unwrap_or("-"),
        manifest.sha256
    )
}

/// The exit code of a failed restore: a target in the way is the
/// operator's to change (64); an archive that does not check out is
/// damaged data (65).
pub fn exit_code(err: &BackupError) -> u8 {
    match err {
        BackupError::NotEmpty(_) => super::EXIT_CONFIG,
        BackupError::Io(_) | BackupError::Spool(_) => 1,
        _ => super::EXIT_DAMAGED,
    }
}

/// A reader that counts what was read, for the progress.
struct Counted<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}
