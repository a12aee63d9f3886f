//! The mark of a clean stop: written by a clean stop, beside sled's
//! files, it says what they looked like then; while they still look so, a
//! start need not check them all.

use std::fs::File;
use std::io::Write as _;
use std::path::Path;

/// Written by a clean stop, beside sled's files: what they looked like then.
const CLEAN_STOP_FILE: &str = "stopped-cleanly";

/// Names, sizes and modification times of the spool's files (and of
/// `blobs/`), but for the mark itself: any change to them, by the relay or
/// by anything else, shows.
fn fingerprint(path: &Path) -> Option<String> {
    let mut lines = Vec::new();
    for dir in [path.to_owned(), path.join("blobs")] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let entry = entry.ok()?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == CLEAN_STOP_FILE || name.ends_with(".tmp") {
                continue;
            }
            let meta = entry.metadata().ok()?;
            let modified = meta
                .modified()
                .ok()?
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?
                .as_nanos();
            lines.push(format!(
                "{}/{name} {} {modified}",
                dir.display(),
                meta.len()
            ));
        }
    }
    lines.sort();
    Some(lines.join("\n"))
}

/// Records that the spool was closed cleanly, as its files are now.
pub fn mark_clean_stop(path: &Path) {
    let Some(print) = fingerprint(path) else {
        return;
    };
    let written = File::create(path.join(CLEAN_STOP_FILE)).and_then(|mut file| {
        file.write_all(print.as_bytes())
            .and_then(|()| file.sync_all())
    });
    if let Err(err) = written {
        tracing::debug!(error = %err, "cannot mark the clean stop; the next start checks the whole spool");
    }
}

/// Whether the spool was closed cleanly and nothing has touched its files
/// since: then a full check before serving can be skipped.
pub fn stopped_cleanly(path: &Path) -> bool {
    let Ok(marked) = std::fs::read_to_string(path.join(CLEAN_STOP_FILE)) else {
        return false;
    };
    fingerprint(path).is_some_and(|now| now == marked)
}

pub(super) fn forget_clean_stop(path: &Path) {
    let _ = std::fs::remove_file(path.join(CLEAN_STOP_FILE));
}
