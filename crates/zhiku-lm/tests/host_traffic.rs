//! Tensor-path code copies between the host and the device only through
//! `zhiku_lm::transfer`, where the copies are counted (and a test holds a step to its bound,
//! `crates/zhiku-generator/tests/tensor_path.rs`). This check reads the serving code's
//! sources and fails on a direct copy anywhere else, unless the line (or the line above it)
//! says `host:` and why: the CPU kernel path, or once at load time.

use std::path::{Path, PathBuf};

/// Calls that move data between the host and a tensor's device.
const COPIES: &[&str] = &[
    "Tensor::from_vec(",
    "Tensor::from_slice(",
    "Tensor::new(",
    ".to_vec1",
    ".to_vec2",
    ".to_vec3",
    ".to_scalar",
    ".to_device(",
];

/// What a forward step and the engine around it run (training, loaders, tokenizers and
/// the test-checkpoint writer are not in a serving step).
fn serving_sources() -> Vec<PathBuf> {
    let lm = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let generator = lm.join("../../zhiku-generator/src");
    let mut files: Vec<PathBuf> = [
        "attention.rs",
        "decoder.rs",
        "kv.rs",
        "layers.rs",
        "lora.rs",
        "lora_rows.rs",
    ]
    .iter()
    .chain(&["rotary.rs"])
    .map(|f| lm.join(f))
    .collect();
    files.extend(
        ["sampling.rs", "scoring.rs", "service.rs"]
            .iter()
            .map(|f| generator.join(f)),
    );
    let engine = generator.join("engine");
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&engine)
        .unwrap_or_else(|e| panic!("{}: {e}", engine.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .collect();
    entries.sort();
    files.extend(entries);
    files
}

/// The direct copies of `source` that no `host:` note explains, as "line: text".
fn unexplained_copies(source: &str) -> Vec<String> {
    let lines: Vec<&str> = source.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        // Unit tests sit at the end of a file, after `#[cfg(test)]`.
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        let code = line.split("//").next().unwrap_or("");
        if !COPIES.iter().any(|c| code.contains(c)) {
            continue;
        }
        let noted = |l: &str| l.contains("// host:");
        if noted(line) || (i > 0 && noted(lines[i - 1])) {
            continue;
        }
        out.push(format!("{}: {}", i + 1, line.trim()));
    }
    out
}

#[test]
fn serving_code_copies_between_host_and_device_only_through_transfer() {
    let mut found = Vec::new();
    for file in serving_sources() {
        let source =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for copy in unexplained_copies(&source) {
            found.push(format!("{}:{copy}", file.display()));
        }
    }
    assert!(
        found.is_empty(),
        "copies between host and device outside zhiku_lm::transfer (use transfer::upload / \
         read_back, or say `// host: why` for the CPU kernel path or load time):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_sees_a_copy_and_its_note() {
    let source = "fn f() {\n    let t = Tensor::from_vec(v, 3, d)?;\n    \
                  // host: at load time\n    let u = x.to_vec1::<f32>()?;\n    \
                  let w = y.to_device(d)?; // host: the same\n}\n#[cfg(test)]\n\
                  mod tests { fn g() { Tensor::new(1f32, &d) } }\n";
    assert_eq!(
        unexplained_copies(source),
        ["2: let t = Tensor::from_vec(v, 3, d)?;"]
    );
}
