//! Checkpoints: a round trip of every part of the training state, `--resume` refusing other
//! data or another spec, and a failed write that leaves the previous checkpoint intact.

use std::path::Path;

mod common;

use candle_core::{Device, Tensor};
use common::values;
use zhiku_tuner::checkpoint::{
    Checkpoint, Hyperparameters, ModuleState, Progress, latest_checkpoint, load_checkpoint,
    resume_from, save_checkpoint,
};
use zhiku_tuner::{LoraInit, LoraSpec, TuneError};

fn spec() -> LoraSpec {
    LoraSpec {
        rank: 2,
        alpha: 4.0,
        dropout: 0.1,
        targets: vec!["q".into(), "v".into()],
        init: LoraInit::Kaiming,
        layers: zhiku_tuner::LayerSelection::All,
    }
}

fn hyperparameters() -> Hyperparameters {
    Hyperparameters {
        learning_rate: 2e-4,
        warmup_steps: 3,
        total_steps: 40,
        weight_decay: 0.0,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        batch_size: 2,
        grad_accumulation: 4,
        max_grad_norm: Some(1.0),
        seed: 42,
        packing: None,
    }
}

fn random(shape: (usize, usize)) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
}

fn checkpoint(step: u64) -> Checkpoint {
    Checkpoint {
        progress: Progress {
            optimizer_step: step,
            schedule_step: step,
            epoch: 1,
            batch_index: 7,
            rng_state: 0xDEAD_BEEF_u64 + step,
        },
        spec: spec(),
        hyperparameters: hyperparameters(),
        data_fingerprint: "ab".repeat(32),
        modules: [
            "model.layers.0.self_attn.q_proj",
            "model.layers.0.self_attn.v_proj",
        ]
        .map(|module| ModuleState {
            module: module.into(),
            a: random((2, 8)),
            b: random((6, 2)),
            a_first_moment: random((2, 8)),
            a_second_moment: random((2, 8)).abs().unwrap(),
            b_first_moment: random((6, 2)),
            b_second_moment: random((6, 2)).abs().unwrap(),
        })
        .to_vec(),
    }
}

fn assert_same(a: &Checkpoint, b: &Checkpoint) {
    assert_eq!(a.progress, b.progress);
    assert_eq!(a.spec, b.spec);
    assert_eq!(a.hyperparameters, b.hyperparameters);
    assert_eq!(a.data_fingerprint, b.data_fingerprint);
    assert_eq!(a.modules.len(), b.modules.len());
    for (x, y) in a.modules.iter().zip(&b.modules) {
        assert_eq!(x.module, y.module);
        for (p, q) in [
            (&x.a, &y.a),
            (&x.b, &y.b),
            (&x.a_first_moment, &y.a_first_moment),
            (&x.a_second_moment, &y.a_second_moment),
            (&x.b_first_moment, &y.b_first_moment),
            (&x.b_second_moment, &y.b_second_moment),
        ] {
            assert_eq!(p.dims(), q.dims());
            assert_eq!(values(p), values(q));
        }
    }
}

#[test]
fn a_checkpoint_round_trips_and_old_ones_go_once_the_new_one_is_complete() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("run/checkpoints");
    assert!(latest_checkpoint(&runs).unwrap().is_none());
    assert!(
        resume_from(&runs, &spec(), &hyperparameters(), "x", &Device::Cpu)
            .unwrap()
            .is_none()
    );

    let first = checkpoint(10);
    let path = save_checkpoint(&runs, &first, 2).unwrap();
    assert!(path.ends_with("step-0000000010"));
    assert_same(&first, &load_checkpoint(&path, &Device::Cpu).unwrap());

    let second = checkpoint(20);
    save_checkpoint(&runs, &second, 2).unwrap();
    let third = checkpoint(30);
    let newest = save_checkpoint(&runs, &third, 2).unwrap();
    let mut left: Vec<String> = std::fs::read_dir(&runs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["step-0000000020", "step-0000000030"]);
    assert_eq!(latest_checkpoint(&runs).unwrap(), Some(newest));
    let resume = |dir: &Path| {
        resume_from(
            dir,
            &spec(),
            &hyperparameters(),
            &"ab".repeat(32),
            &Device::Cpu,
        )
        .unwrap()
        .unwrap()
    };
    let (from, resumed) = resume(&runs);
    assert!(from.ends_with("step-0000000030"));
    assert_same(&third, &resumed);
    // One step-N directory resumes that checkpoint.
    let (from, older) = resume(&runs.join("step-0000000020"));
    assert!(from.ends_with("step-0000000020"));
    assert_eq!(older.progress.optimizer_step, 20);

    // Saving the same step again replaces it whole.
    let again = checkpoint(30);
    save_checkpoint(&runs, &again, 1).unwrap();
    assert_same(
        &again,
        &load_checkpoint(&latest_checkpoint(&runs).unwrap().unwrap(), &Device::Cpu).unwrap(),
    );
    assert_eq!(std::fs::read_dir(&runs).unwrap().count(), 1);
}

#[test]
fn resume_refuses_another_spec_or_other_data() {
    let dir = tempfile::tempdir().unwrap();
    save_checkpoint(dir.path(), &checkpoint(5), 1).unwrap();
    let mut other = spec();
    other.rank = 4;
    let h = hyperparameters();
    match resume_from(dir.path(), &other, &h, &"ab".repeat(32), &Device::Cpu) {
        Err(TuneError::Validation(m)) => {
            assert!(m.contains("step-0000000005"), "{m}");
            assert!(m.contains("rank 2") && m.contains("rank 4"), "{m}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let mut other = spec();
    other.targets.push("o".into());
    assert!(resume_from(dir.path(), &other, &h, &"ab".repeat(32), &Device::Cpu).is_err());
    let mut other = spec();
    other.layers = zhiku_tuner::LayerSelection::Only(vec![1]);
    match resume_from(dir.path(), &other, &h, &"ab".repeat(32), &Device::Cpu) {
        Err(TuneError::Validation(m)) => {
            assert!(m.contains("layers all") && m.contains("layers 1"), "{m}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let mut longer = h;
    longer.total_steps = 80;
    longer.batch_size = 4;
    longer.packing = Some(512);
    match resume_from(dir.path(), &spec(), &longer, &"ab".repeat(32), &Device::Cpu) {
        Err(TuneError::Validation(m)) => {
            assert!(
                m.contains("total steps") && m.contains("40 then, 80 now"),
                "{m}"
            );
            assert!(m.contains("batch size 2 then, 4 now"), "{m}");
            assert!(m.contains("packing off then, 512 tokens now"), "{m}");
            assert!(!m.contains("seed"), "{m}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    match resume_from(dir.path(), &spec(), &h, &"cd".repeat(32), &Device::Cpu) {
        Err(TuneError::Validation(m)) => {
            assert!(m.contains("training data differ"), "{m}");
            assert!(
                m.contains("cdcdcdcdcdcd") && m.contains("abababababab"),
                "{m}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // A checkpoint from before --layers (no `layers` in its spec) trained every block.
    let state = dir.path().join("step-0000000005/state.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    v["spec"].as_object_mut().unwrap().remove("layers").unwrap();
    std::fs::write(&state, v.to_string()).unwrap();
    let (_, old) = resume_from(dir.path(), &spec(), &h, &"ab".repeat(32), &Device::Cpu)
        .unwrap()
        .expect("the checkpoint");
    assert_eq!(old.spec.layers, zhiku_tuner::LayerSelection::All);
}

/// Whether writes into a read-only directory fail here (not as root).
fn read_only_stops_writes(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    let probe = dir.join(".probe");
    let stops = std::fs::write(&probe, b"").is_err();
    let _ = std::fs::remove_file(&probe);
    if !stops {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    stops
}

#[test]
fn a_failed_write_leaves_the_previous_checkpoint_and_names_the_path() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("checkpoints");
    let previous = checkpoint(10);
    save_checkpoint(&runs, &previous, 1).unwrap();

    let blocked = if read_only_stops_writes(&runs) {
        runs.clone()
    } else {
        // As root a read-only directory stops nothing: put a file where the new
        // checkpoint's temporary directory must be created.
        let blocker = runs.join(".step-0000000020.partial");
        std::fs::write(&blocker, b"not zhiku's").unwrap();
        blocker
    };
    let error = save_checkpoint(&runs, &checkpoint(20), 1).unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains(&blocked.display().to_string()),
        "the error names the path: {message}"
    );
    std::fs::set_permissions(&runs, std::fs::Permissions::from_mode(0o755)).unwrap();
    let latest = latest_checkpoint(&runs).unwrap().unwrap();
    assert!(latest.ends_with("step-0000000010"));
    assert_same(&previous, &load_checkpoint(&latest, &Device::Cpu).unwrap());
    assert!(!runs.join("step-0000000020").exists());

    // A checkpoint directory that cannot be created: a file stands where it should be.
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"").unwrap();
    let message = save_checkpoint(&file.join("checkpoints"), &previous, 1)
        .unwrap_err()
        .to_string();
    assert!(message.contains("plain-file/checkpoints"), "{message}");

    // A damaged checkpoint is an error that names it, never a panic.
    std::fs::write(latest.join("state.json"), b"{\"format\": 1").unwrap();
    let message = load_checkpoint(&latest, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(message.contains("step-0000000010"), "{message}");
}
