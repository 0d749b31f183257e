//! The deploy files agree with each other: one CUDA version and compute capability
//! (deploy/cuda.env) for the CUDA image, scripts/check-cuda and scripts/gpu-bench, and a
//! generator health check that leaves room for the first start's model download.

use std::collections::HashMap;
use std::path::Path;

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

fn cuda_env() -> HashMap<String, String> {
    read("deploy/cuda.env")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').expect("KEY=VALUE lines");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

#[test]
fn cuda_image_builds_with_the_shared_version_and_capability() {
    let env = cuda_env();
    let dockerfile = read("deploy/Dockerfile.cuda");
    let version = &env["CUDA_VERSION"];
    let cap = &env["CUDA_COMPUTE_CAP"];
    assert!(
        dockerfile.contains(&format!("ARG CUDA_VERSION={version}\n")),
        "deploy/Dockerfile.cuda must default CUDA_VERSION to deploy/cuda.env's {version}"
    );
    assert!(
        dockerfile.contains(&format!("CUDA_COMPUTE_CAP={cap}")),
        "deploy/Dockerfile.cuda must build for deploy/cuda.env's compute capability {cap}"
    );
    // The PyPI toolkit check-cuda installs is the image's CUDA release.
    let release = |v: &str| v.split('.').take(2).collect::<Vec<_>>().join(".");
    assert_eq!(release(version), release(&env["CUDA_PYPI_VERSION"]));
    assert_eq!(release(version), release(&env["CUDA_CCCL_PYPI_VERSION"]));
}

#[test]
fn check_cuda_reads_the_shared_versions() {
    // check-cuda and gpu-bench take the toolkit from one helper, which reads deploy/cuda.env.
    for script in ["scripts/check-cuda", "scripts/gpu-bench"] {
        assert!(
            read(script).contains("source scripts/cuda-toolkit.sh"),
            "{script} must install CUDA through scripts/cuda-toolkit.sh"
        );
    }
    let helper = read("scripts/cuda-toolkit.sh");
    assert!(helper.contains("source deploy/cuda.env"));
    for script in [
        "scripts/check-cuda",
        "scripts/gpu-bench",
        "scripts/cuda-toolkit.sh",
    ] {
        for pinned in read(script)
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
        {
            assert!(
                !pinned.contains("==1"),
                "{script} pins a version itself: {pinned}"
            );
        }
    }
    // The libraries a linked build needs come from the same CUDA release.
    let env = cuda_env();
    let release = |v: &str| v.split('.').take(2).collect::<Vec<_>>().join(".");
    assert_eq!(
        release(&env["CUDA_VERSION"]),
        release(&env["CUDA_CUBLAS_PYPI_VERSION"])
    );
    assert!(env.contains_key("CUDA_CURAND_PYPI_VERSION"));
}

#[test]
fn generator_health_check_allows_the_first_download() {
    let compose = read("docker-compose.yml");
    let generator = compose
        .split("\n  generator:\n")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .expect("a generator service in docker-compose.yml");
    let start_period = generator
        .lines()
        .find_map(|l| l.trim().strip_prefix("start_period:"))
        .expect("the generator's health check has a start_period");
    let minutes: u32 = start_period
        .trim()
        .strip_suffix('m')
        .and_then(|m| m.parse().ok())
        .expect("start_period in minutes, e.g. 60m");
    assert!(
        minutes >= 30,
        "a 19 GB download needs more than {minutes} minutes on slow links"
    );
    assert!(generator.contains("ZHIKU_GENERATOR_DEVICE: cuda"));
}

/// One compose service's block (up to the next blank line).
fn compose_service<'a>(compose: &'a str, name: &str) -> &'a str {
    compose
        .split(&format!("\n  {name}:\n"))
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .unwrap_or_else(|| panic!("a {name} service in docker-compose.yml"))
}

#[test]
fn tuner_trains_the_generators_model_on_its_gpu_into_the_volume_it_reads() {
    let compose = read("docker-compose.yml");
    let generator = compose_service(&compose, "generator");
    let tuner = compose_service(&compose, "tuner");
    assert!(tuner.contains("command: [\"zhiku-tuner\"]"));
    assert!(tuner.contains("ZHIKU_LISTEN: 0.0.0.0:50055"));
    // An adapter serves only on the model it was trained on: one variable sets both.
    assert!(tuner.contains("ZHIKU_TUNER_MODEL: ${ZHIKU_GENERATOR_MODEL:-THUDM/glm-4-9b-chat}"));
    assert!(
        generator.contains("ZHIKU_GENERATOR_MODEL: ${ZHIKU_GENERATOR_MODEL:-THUDM/glm-4-9b-chat}")
    );
    assert!(tuner.contains("ZHIKU_TUNER_DEVICE: cuda"));
    // The same GPU reservation.
    let reservation = |block: &str| {
        block
            .split("deploy:\n")
            .nth(1)
            .and_then(|r| r.split("healthcheck:").next())
            .map(str::to_owned)
            .expect("a deploy section")
    };
    assert_eq!(reservation(tuner), reservation(generator));
    // Adapters: written by the tuner, read by the generator, at the same path.
    assert!(tuner.contains("ZHIKU_TUNER_ADAPTER_DIR: /adapters"));
    assert!(tuner.contains("- adapters:/adapters\n"));
    assert!(generator.contains("- adapters:/adapters:ro"));
    assert!(compose.contains("\nvolumes:\n") && compose.contains("\n  adapters:\n"));
    // The CUDA image has the tuner, built for the GPU.
    let dockerfile = read("deploy/Dockerfile.cuda");
    assert!(dockerfile.contains("-p zhiku-tuner --features cuda"));
    assert!(dockerfile.contains("target/release/zhiku-tuner"));
}
