//! The training worker thread, driven through its command and event channels.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use candle_core::Device;
use flowlab::solver::{SolverConfig, SolverKind};
use flowlab::train::worker::{Command, Event, LiveSettings, Worker};

use crate::common::{temp_dir, tiny_config};

fn spawn() -> (Worker, Arc<AtomicUsize>) {
    let repaints = Arc::new(AtomicUsize::new(0));
    let r = repaints.clone();
    let w = Worker::spawn(
        Device::Cpu,
        Arc::new(move || {
            r.fetch_add(1, Ordering::Relaxed);
        }),
    )
    .expect("spawn");
    (w, repaints)
}

/// Collects events until `pred` matches one (or panics after 30 s).
fn wait_for(w: &Worker, seen: &mut Vec<Event>, pred: impl Fn(&Event) -> bool) -> Event {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(e) = w.recv_timeout(Duration::from_millis(50)) {
            seen.push(e.clone());
            if pred(&e) {
                return e;
            }
        }
    }
    panic!(
        "timed out; events so far: {:?}",
        seen.iter().map(std::mem::discriminant).collect::<Vec<_>>()
    );
}

fn last_step(seen: &[Event]) -> u64 {
    seen.iter()
        .filter_map(|e| match e {
            Event::Progress(r) => r.last().map(|r| r.step),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn start_reports_progress_and_samples_then_pause_stops_within_a_step() {
    let (w, repaints) = spawn();
    let mut seen = Vec::new();
    w.send(Command::SetLive(LiveSettings {
        solver: SolverConfig::fixed(SolverKind::Euler, 8),
        preview_every: 20,
        preview_n: 64,
        lr: 2e-3,
        guidance: 2.0,
        class: None,
        sample_scheduler: None,
        corrector: 0.0,
    }))
    .expect("send");
    w.send(Command::Start(Box::new(tiny_config(100_000))))
        .expect("send");
    wait_for(&w, &mut seen, |e| matches!(e, Event::Ready { step: 0, .. }));
    let snap = wait_for(
        &w,
        &mut seen,
        |e| matches!(e, Event::Samples(s) if s.step >= 20),
    );
    let Event::Samples(s) = snap else {
        unreachable!()
    };
    assert_eq!(s.times.len(), 9, "Euler 8 steps: 9 states");
    assert_eq!((s.times[0], s.times[8]), (0.0, 1.0));
    assert!(s.states.iter().all(|v| v.len() == 64 * 2));
    assert_eq!(s.nfe, 8);
    w.send(Command::Pause).expect("send");
    let paused = wait_for(&w, &mut seen, |e| matches!(e, Event::Paused { .. }));
    let Event::Paused { step } = paused else {
        unreachable!()
    };
    // No step after the pause.
    std::thread::sleep(Duration::from_millis(300));
    while let Some(e) = w.try_recv() {
        seen.push(e);
    }
    assert_eq!(
        last_step(&seen),
        step,
        "training stopped at the paused step"
    );
    // Every step was reported exactly once, in order.
    let steps: Vec<u64> = seen
        .iter()
        .filter_map(|e| match e {
            Event::Progress(r) => Some(r.iter().map(|r| r.step).collect::<Vec<_>>()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(steps, (1..=step).collect::<Vec<_>>());
    assert!(repaints.load(Ordering::Relaxed) > 0, "the GUI was woken");
    // Step N runs exactly N more steps, then pauses.
    w.send(Command::Step(5)).expect("send");
    wait_for(
        &w,
        &mut seen,
        |e| matches!(e, Event::Paused { step: s } if *s == step + 5),
    );
    assert_eq!(last_step(&seen), step + 5);
}

#[test]
fn save_load_and_a_corrupt_file_through_the_worker() {
    let dir = temp_dir("worker-ckpt");
    let (w, _) = spawn();
    let mut seen = Vec::new();
    w.send(Command::Start(Box::new(tiny_config(30))))
        .expect("send");
    wait_for(&w, &mut seen, |e| matches!(e, Event::Finished { step: 30 }));
    let path = dir.join("w.safetensors");
    w.send(Command::Save(path.clone())).expect("send");
    wait_for(
        &w,
        &mut seen,
        |e| matches!(e, Event::Saved(p) if *p == path),
    );
    w.send(Command::Reset).expect("send");
    wait_for(&w, &mut seen, |e| matches!(e, Event::Ready { step: 0, .. }));
    w.send(Command::Load(path.clone())).expect("send");
    let ready = wait_for(&w, &mut seen, |e| matches!(e, Event::Ready { .. }));
    assert!(matches!(ready, Event::Ready { step: 30, .. }), "{ready:?}");
    wait_for(
        &w,
        &mut seen,
        |e| matches!(e, Event::Loaded(p) if *p == path),
    );
    let bad = dir.join("bad.safetensors");
    std::fs::write(&bad, b"garbage").expect("write");
    w.send(Command::Load(bad.clone())).expect("send");
    let err = wait_for(&w, &mut seen, |e| matches!(e, Event::Error(_)));
    let Event::Error(msg) = err else {
        unreachable!()
    };
    assert!(
        msg.contains("bad.safetensors") && msg.contains("not a readable safetensors file"),
        "{msg}"
    );
    // The worker keeps going after an error: the loaded run is still there.
    w.send(Command::Save(dir.join("again.safetensors")))
        .expect("send");
    wait_for(&w, &mut seen, |e| matches!(e, Event::Saved(_)));
}

#[test]
fn commands_without_a_model_give_an_error_and_drop_joins_quickly() {
    let (w, _) = spawn();
    let mut seen = Vec::new();
    w.send(Command::Resume).expect("send");
    let err = wait_for(&w, &mut seen, |e| matches!(e, Event::Error(_)));
    assert!(
        matches!(&err, Event::Error(m) if m.contains("no model yet")),
        "{err:?}"
    );
    let mut bad = tiny_config(10);
    bad.batch_size = 0;
    w.send(Command::Start(Box::new(bad))).expect("send");
    let err = wait_for(&w, &mut seen, |e| matches!(e, Event::Error(_)));
    assert!(
        matches!(&err, Event::Error(m) if m.contains("batch size")),
        "{err:?}"
    );
    // Dropping the handle while training stops and joins the thread within a step.
    w.send(Command::Start(Box::new(tiny_config(1_000_000))))
        .expect("send");
    wait_for(&w, &mut seen, |e| matches!(e, Event::Progress(_)));
    assert!(w.is_alive());
    let t = Instant::now();
    drop(w);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "join took {:?}",
        t.elapsed()
    );
}

#[test]
fn image_previews_fill_the_grid_part_by_part_with_the_asked_class() {
    use flowlab::train::worker::{GRID_COLUMNS, GRID_PART_ROWS, GRID_ROWS};
    let (w, _) = spawn();
    let cfg: flowlab::train::TrainConfig = serde_json::from_str(
        r#"{"dataset": {"kind": "mnist"}, "model": {"kind": "unet", "channels": [8, 16],
            "groups": 4, "embed_dim": 16, "attention": false, "classes": 10},
            "held_out_size": 8, "batch_size": 8, "steps": 3}"#,
    )
    .expect("config");
    let mut live = LiveSettings::for_config(&cfg);
    live.solver = SolverConfig::fixed(SolverKind::Euler, 3);
    live.class = Some(7);
    live.guidance = 1.5;
    w.send(Command::SetLive(live)).expect("send");
    w.send(Command::Start(Box::new(cfg))).expect("send");
    let mut seen = Vec::new();
    let done = match wait_for(
        &w,
        &mut seen,
        |e| matches!(e, Event::Samples(s) if s.complete),
    ) {
        Event::Samples(s) => s,
        _ => unreachable!(),
    };
    let n = GRID_ROWS * GRID_COLUMNS;
    let dim = 28 * 28;
    assert_eq!((done.labels.len(), done.guidance), (n, Some(1.5)));
    assert!(done.labels.iter().all(|&l| l == 7));
    assert_eq!((done.times.len(), done.nfe), (4, 3));
    // Every image moved away from its noise by t = 1.
    let (first, last) = (&done.states[0], &done.states[3]);
    let moved = |i: usize| first[i * dim..(i + 1) * dim] != last[i * dim..(i + 1) * dim];
    assert!((0..n).all(moved));
    // Earlier partial grids: the finished rows are the final ones, rows still
    // to come show their noise at every time.
    let partial: Vec<_> = seen
        .iter()
        .filter_map(|e| match e {
            Event::Samples(s) if !s.complete => Some(s),
            _ => None,
        })
        .collect();
    for p in &partial {
        let still_noise =
            |i: usize| p.states[3][i * dim..(i + 1) * dim] == first[i * dim..(i + 1) * dim];
        let finished =
            |i: usize| p.states[3][i * dim..(i + 1) * dim] == last[i * dim..(i + 1) * dim];
        assert!(finished(0), "the first rows are drawn first");
        assert!(still_noise(n - 1), "the last row comes last");
    }
    assert_eq!(
        partial.len(),
        GRID_ROWS / GRID_PART_ROWS - 1,
        "part by part"
    );
}
