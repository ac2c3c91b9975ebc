//! Autosave: the training worker keeps the last good checkpoints of the active
//! run in a folder, so that a crash, a `kill -9` or a power cut loses at most
//! one interval of training.
//!
//! Files are named `run-{pid}-{step:010}.safetensors` (written atomically, the
//! newest `keep` kept), and each running app holds a marker
//! `session-{pid}.lock`. A marker whose process is gone means that session
//! did not end cleanly: [`crashed_sessions`] finds its newest autosave, which
//! the app offers to restore. A clean exit removes the marker and the files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{Error, Result};

/// When and where to autosave.
#[derive(Debug, Clone, PartialEq)]
pub struct AutosavePolicy {
    /// The folder of the autosaves (created when needed).
    pub dir: PathBuf,
    /// Save at most this often while training (and when training pauses or ends).
    pub every: Duration,
    /// Autosaves kept (the newest), at least 1.
    pub keep: usize,
}

impl AutosavePolicy {
    /// Checks the values are in range.
    pub fn validate(&self) -> Result<()> {
        if self.keep == 0 {
            return Err(Error::config("autosave must keep at least one checkpoint"));
        }
        if self.every.is_zero() {
            return Err(Error::config("the autosave interval must be above 0"));
        }
        Ok(())
    }
}

/// The autosave file of process `pid` at `step`.
pub fn autosave_path(dir: &Path, pid: u32, step: u64) -> PathBuf {
    dir.join(format!("run-{pid}-{step:010}.safetensors"))
}

/// The marker of a running session of process `pid`.
pub fn marker_path(dir: &Path, pid: u32) -> PathBuf {
    dir.join(format!("session-{pid}.lock"))
}

/// `(pid, step, path)` of every autosave in `dir`, oldest step first per pid.
pub fn autosaves(dir: &Path) -> Vec<(u32, u64, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(u32, u64, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let rest = name.strip_prefix("run-")?.strip_suffix(".safetensors")?;
            let (pid, step) = rest.split_once('-')?;
            Some((pid.parse().ok()?, step.parse().ok()?, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Deletes all but the newest `keep` autosaves of process `pid`.
pub fn prune(dir: &Path, pid: u32, keep: usize) {
    let mine: Vec<PathBuf> = autosaves(dir)
        .into_iter()
        .filter(|(p, _, _)| *p == pid)
        .map(|(_, _, path)| path)
        .collect();
    let excess = mine.len().saturating_sub(keep);
    for path in mine.into_iter().take(excess) {
        std::fs::remove_file(path).ok();
    }
}

/// Whether process `pid` is running (checked through `/proc` where there is
/// one, a zombie counting as gone; elsewhere every other process counts as gone).
pub fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let Ok(stat) = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat"))
    else {
        return false;
    };
    // "pid (name) S ...": the state follows the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

/// A session that did not end cleanly: its process and newest autosave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashedSession {
    /// The process id of the lost session.
    pub pid: u32,
    /// Training steps in its newest autosave.
    pub step: u64,
    /// That autosave.
    pub path: PathBuf,
}

/// Sessions in `dir` whose marker remains but whose process is gone and that
/// left an autosave, newest step first.
pub fn crashed_sessions(dir: &Path) -> Vec<CrashedSession> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let saves = autosaves(dir);
    let mut out: Vec<CrashedSession> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let pid: u32 = name
                .strip_prefix("session-")?
                .strip_suffix(".lock")?
                .parse()
                .ok()?;
            if process_alive(pid) {
                return None;
            }
            let (_, step, path) = saves.iter().rfind(|(p, _, _)| *p == pid)?;
            Some(CrashedSession {
                pid,
                step: *step,
                path: path.clone(),
            })
        })
        .collect();
    out.sort_by_key(|s| std::cmp::Reverse(s.step));
    out
}

/// Removes what gone sessions left that nothing can restore: markers
/// without autosaves, and autosaves without a marker (their session ended
/// cleanly but was stopped before it could clean up).
pub fn sweep(dir: &Path) {
    let saves = autosaves(dir);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let markers: Vec<u32> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_prefix("session-")?
                .strip_suffix(".lock")?
                .parse()
                .ok()
        })
        .collect();
    for &pid in &markers {
        if !process_alive(pid) && !saves.iter().any(|(p, _, _)| *p == pid) {
            std::fs::remove_file(marker_path(dir, pid)).ok();
        }
    }
    for (pid, _, path) in &saves {
        if !process_alive(*pid) && !markers.contains(pid) {
            std::fs::remove_file(path).ok();
        }
    }
}

/// Removes the marker and autosaves of process `pid` (a clean exit, or a
/// crashed session that was restored or discarded).
pub fn clear_session(dir: &Path, pid: u32) {
    for (p, _, path) in autosaves(dir) {
        if p == pid {
            std::fs::remove_file(path).ok();
        }
    }
    std::fs::remove_file(marker_path(dir, pid)).ok();
}

/// Creates `dir` and the marker of this process.
pub fn start_session(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create", dir, e))?;
    let marker = marker_path(dir, std::process::id());
    crate::fsutil::write_atomic(&marker, std::process::id().to_string().as_bytes())
}
