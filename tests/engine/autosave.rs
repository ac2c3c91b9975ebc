//! Autosave: the worker keeps the newest checkpoints of the active run, a
//! crashed session is found and offered for restoring, and a training process
//! killed with SIGKILL resumes from its last save.

use std::time::{Duration, Instant};

use candle_core::Device;
use flowlab::checkpoint::Checkpoint;
use flowlab::train::autosave::{
    AutosavePolicy, autosave_path, autosaves, crashed_sessions, marker_path,
};
use flowlab::train::worker::{Command, Event, Worker};

use crate::common::{temp_dir, tiny_config};

/// A process id that is not running (above Linux's pid_max).
const DEAD_PID: u32 = 4_000_000_000;

fn wait_for(w: &Worker, what: &str, mut done: impl FnMut(&Event) -> bool) -> Event {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        if let Some(e) = w.recv_timeout(Duration::from_millis(50))
            && done(&e)
        {
            return e;
        }
    }
}

#[test]
fn the_worker_autosaves_the_newest_checkpoints_and_reports_failures() {
    let dir = temp_dir("autosave-worker");
    let w = Worker::spawn(Device::Cpu, std::sync::Arc::new(|| {})).expect("worker");
    w.send(Command::Autosave(Some(AutosavePolicy {
        dir: dir.clone(),
        every: Duration::from_millis(30),
        keep: 2,
    })))
    .expect("send");
    w.send(Command::Start(Box::new(tiny_config(1_000_000))))
        .expect("send");
    let mut saves = 0;
    wait_for(&w, "three autosaves", |e| {
        if matches!(e, Event::Autosaved { .. }) {
            saves += 1;
        }
        saves >= 3
    });
    w.send(Command::Pause).expect("send");
    let paused = match wait_for(&w, "the pause", |e| matches!(e, Event::Paused { .. })) {
        Event::Paused { step } => step,
        _ => unreachable!(),
    };
    // Pausing autosaves the paused step; only the newest two are kept.
    wait_for(
        &w,
        "the pause's autosave",
        |e| matches!(e, Event::Autosaved { step } if *step == paused),
    );
    let files = autosaves(&dir);
    assert_eq!(files.len(), 2, "{files:?}");
    let (pid, step, path) = files.last().cloned().expect("newest");
    assert_eq!((pid, step), (std::process::id(), paused));
    let ck = Checkpoint::load(&path, &Device::Cpu).expect("a complete checkpoint");
    assert_eq!(ck.meta.step, paused);
    // No stray temporary files: every write was atomic.
    let names: Vec<String> = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    assert!(
        names.iter().all(|n| n.ends_with(".safetensors")),
        "{names:?}"
    );
    // A new run replaces the old one's autosaves.
    w.send(Command::Start(Box::new(tiny_config(5))))
        .expect("send");
    wait_for(&w, "the new run's end", |e| {
        matches!(e, Event::Finished { .. })
    });
    wait_for(&w, "its autosave", |e| {
        matches!(e, Event::Autosaved { step: 5 })
    });
    let steps: Vec<u64> = autosaves(&dir).iter().map(|(_, s, _)| *s).collect();
    assert_eq!(steps, vec![5]);
    // An unusable folder: one message, autosave off, training goes on.
    let file = dir.join("not-a-folder");
    std::fs::write(&file, b"x").expect("file");
    w.send(Command::Autosave(Some(AutosavePolicy {
        dir: file.join("autosave"),
        every: Duration::from_millis(10),
        keep: 1,
    })))
    .expect("send");
    w.send(Command::Start(Box::new(tiny_config(1_000_000))))
        .expect("send");
    let msg = match wait_for(&w, "the autosave error", |e| matches!(e, Event::Error(_))) {
        Event::Error(m) => m,
        _ => unreachable!(),
    };
    assert!(
        msg.contains("autosave failed") && msg.contains("not-a-folder"),
        "{msg}"
    );
    w.send(Command::Pause).expect("send");
    // Bad policies are refused.
    w.send(Command::Autosave(Some(AutosavePolicy {
        dir: dir.clone(),
        every: Duration::from_millis(10),
        keep: 0,
    })))
    .expect("send");
    let msg = match wait_for(&w, "the policy error", |e| matches!(e, Event::Error(_))) {
        Event::Error(m) => m,
        _ => unreachable!(),
    };
    assert!(msg.contains("at least one"), "{msg}");
}

#[test]
fn a_session_without_a_clean_exit_offers_its_newest_autosave() {
    let dir = temp_dir("autosave-crashed");
    let model = std::fs::read("weights/moons.safetensors").expect("shipped model");
    for step in [1000u64, 4000] {
        std::fs::write(autosave_path(&dir, DEAD_PID, step), &model).expect("write");
    }
    std::fs::write(marker_path(&dir, DEAD_PID), b"").expect("marker");
    // A live session (this process) with an autosave is not a crash.
    std::fs::write(autosave_path(&dir, std::process::id(), 7), &model).expect("write");
    std::fs::write(marker_path(&dir, std::process::id()), b"").expect("marker");
    let crashed = crashed_sessions(&dir);
    assert_eq!(crashed.len(), 1, "{crashed:?}");
    assert_eq!((crashed[0].pid, crashed[0].step), (DEAD_PID, 4000));
    // A session that exited cleanly left no marker: nothing to offer.
    std::fs::remove_file(marker_path(&dir, DEAD_PID)).expect("rm");
    assert!(crashed_sessions(&dir).is_empty());
    // The sweep removes what nothing can restore: those marker-less autosaves,
    // and a dead session's marker without autosaves; live sessions stay.
    std::fs::write(marker_path(&dir, DEAD_PID + 1), b"").expect("marker");
    flowlab::train::autosave::sweep(&dir);
    assert!(!marker_path(&dir, DEAD_PID + 1).exists());
    let left: Vec<u32> = autosaves(&dir).iter().map(|(p, _, _)| *p).collect();
    assert_eq!(left, vec![std::process::id()]);
    assert!(marker_path(&dir, std::process::id()).exists());
}

#[test]
fn a_killed_training_process_resumes_from_its_last_save() {
    let dir = temp_dir("autosave-kill");
    let out = dir.join("run.safetensors");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_flowlab"))
        .args([
            "train",
            "--steps",
            "1000000",
            "--batch",
            "64",
            "--save-every",
            "40",
        ])
        .arg("--out")
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    // Wait for a couple of saves, then kill -9 mid-run.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "no save appeared");
        if Checkpoint::load(&out, &Device::Cpu).is_ok_and(|c| c.meta.step >= 80) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    // The file on disk is a whole checkpoint (writes are atomic) at a save step.
    let saved = Checkpoint::load(&out, &Device::Cpu).expect("intact after kill -9");
    let step = saved.meta.step;
    assert!(step >= 80 && step.is_multiple_of(40), "step {step}");
    let target = step + 20;
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_flowlab"))
        .args(["train", "--resume"])
        .arg(&out)
        .arg("--out")
        .arg(&out)
        .args(["--steps", &target.to_string()])
        .output()
        .expect("resume");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let resumed = Checkpoint::load(&out, &Device::Cpu).expect("resumed");
    assert_eq!(resumed.meta.step, target);
    let history = resumed.history(&out).expect("history");
    assert_eq!(history.len() as u64, target, "the loss history continues");
}
