//! `hivemesh model train-lm` and `model sample` (issue 27): a tiny model trained from a text
//! file, sampled with a seed (the same text twice), and bad input refused with the reason.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_hivemesh");

fn hivemesh(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run hivemesh")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn a_tiny_language_model_trains_samples_and_refuses_bad_input() {
    let dir = std::env::temp_dir().join(format!("hm-lm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let corpus = dir.join("corpus.txt");
    let line = "to be, or not to be, that is the question. ";
    std::fs::write(&corpus, line.repeat(200)).expect("corpus");
    let model = dir.join("lm.safetensors");
    let (c, m) = (
        corpus.to_str().expect("utf-8"),
        model.to_str().expect("utf-8"),
    );
    let small = [
        "--layers",
        "1",
        "--heads",
        "2",
        "--width",
        "16",
        "--context",
        "16",
        "--steps",
        "30",
        "--batch",
        "4",
        "--warmup",
        "5",
        "--eval-every",
        "0",
        "--bpe",
        "8",
    ];
    let mut args = vec!["model", "train-lm", "--corpus", c, "--out", m];
    args.extend(small);
    let o = hivemesh(&dir, &args);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(err.contains("learnt 8 merges"), "{err}");
    assert!(out.contains("validation loss"), "{out}");
    let first = std::fs::read(&model).expect("written");
    // The same command, the same file (bit-identical training).
    assert!(hivemesh(&dir, &args).status.success());
    assert_eq!(std::fs::read(&model).expect("written"), first);
    // Seeded sampling: the same text twice, starting with the prompt.
    let sample = ["model", "sample", m, "--prompt", "to be", "--tokens", "20"];
    let seeded = [sample.as_slice(), &["--temperature", "0.8", "--seed", "4"]].concat();
    let a = text(&hivemesh(&dir, &seeded)).0;
    assert!(a.starts_with("to be") && a.len() > 10, "{a}");
    assert_eq!(a, text(&hivemesh(&dir, &seeded)).0);
    assert!(hivemesh(&dir, &sample).status.success(), "greedy");
    // Scoring: the corpus's own continuation is likelier than a scrambled one.
    let score = |target: &str| -> f64 {
        let o = hivemesh(
            &dir,
            &[
                "model",
                "score",
                m,
                "--prompt",
                "to be, or not ",
                "--target",
                target,
            ],
        );
        let out = text(&o).0;
        assert!(o.status.success(), "{out}{}", text(&o).1);
        out.split("= ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .expect("a number")
            .parse()
            .expect("a number")
    };
    assert!(score("to be") > score("ot eb"));
    // A prompt character the model never saw, a corpus that is not UTF-8, a file that is not
    // a model: refused, saying what.
    let o = hivemesh(&dir, &["model", "sample", m, "--prompt", "toZ"]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("'Z'"), "{}", text(&o).1);
    std::fs::write(&corpus, b"abc\xffdef").expect("bad corpus");
    let o = hivemesh(&dir, &args);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("offset 3"), "{}", text(&o).1);
    let o = hivemesh(&dir, &["model", "sample", c]);
    assert!(
        text(&o).1.contains("not a model written by train-lm"),
        "{}",
        text(&o).1
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `model distill-lm`: a student trained from a teacher's text shards (as a campaign's
/// executors write them), refused with the reason when the shards leave a gap.
#[test]
fn a_student_trains_from_text_shards_and_a_gap_is_refused() {
    use hivemesh_trainer::Cpu;
    use hivemesh_trainer::lm::{distill::label_text, load_lm};
    let dir = std::env::temp_dir().join(format!("hm-lmkd-{}", std::process::id()));
    let shards = dir.join("shards");
    std::fs::create_dir_all(&shards).expect("dir");
    let corpus = dir.join("corpus.txt");
    let words = "to be, or not to be, that is the question. ".repeat(100);
    std::fs::write(&corpus, &words).expect("corpus");
    let teacher = dir.join("teacher.safetensors");
    let (c, t) = (
        corpus.to_str().expect("utf-8"),
        teacher.to_str().expect("utf-8"),
    );
    let small = [
        "--layers", "1", "--heads", "2", "--width", "16", "--batch", "4",
    ];
    let mut args = vec![
        "model",
        "train-lm",
        "--corpus",
        c,
        "--out",
        t,
        "--context",
        "16",
    ];
    args.extend(small);
    args.extend(["--steps", "30", "--warmup", "5", "--eval-every", "0"]);
    assert!(hivemesh(&dir, &args).status.success());
    let (model, tokenizer) =
        load_lm::<Cpu>(&std::fs::read(&teacher).expect("read"), &Default::default())
            .expect("a model");
    let tokens = tokenizer.encode(&words).expect("tokens");
    for (a, b) in [(0u64, 20u64), (20, 40)] {
        let l = label_text(&model, &tokens, a..b, 4, 8).expect("labels");
        std::fs::write(shards.join(format!("{a:09}-{b:09}.hmtk")), l.to_bytes()).expect("shard");
    }
    let student = dir.join("student.safetensors");
    let s = student.to_str().expect("utf-8");
    let sh = shards.to_str().expect("utf-8");
    let mut kd = vec![
        "model",
        "distill-lm",
        "--corpus",
        c,
        "--teacher",
        t,
        "--shards",
        sh,
        "--out",
        s,
    ];
    kd.extend(small);
    kd.extend(["--steps", "20"]);
    let o = hivemesh(&dir, &kd);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(err.contains("40 windows of 16 tokens (k = 4)"), "{err}");
    assert!(out.contains("validation loss"), "{out}");
    let sample = ["model", "sample", s, "--prompt", "to be", "--tokens", "5"];
    assert!(
        hivemesh(&dir, &sample).status.success(),
        "the student is a model file"
    );
    std::fs::remove_file(shards.join(format!("{:09}-{:09}.hmtk", 0, 20))).expect("removed");
    let l = label_text(&model, &tokens, 0..10, 4, 8).expect("labels");
    std::fs::write(shards.join("a.hmtk"), l.to_bytes()).expect("shard");
    let o = hivemesh(&dir, &kd);
    assert!(!o.status.success());
    assert!(
        text(&o).1.contains("does not follow windows 0..10"),
        "{}",
        text(&o).1
    );
    let _ = std::fs::remove_dir_all(&dir);
}
