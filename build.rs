//! Records the commit and target the binary is built from (`resilient-operator --version`, the build_info
//! metric), so that measurements name what they measured. "unknown" outside a git checkout.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    // Uncommitted changes to what is compiled make the commit alone a lie: say so.
    let dirty = git(&[
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        "src",
        "bench",
        "build.rs",
        "Cargo.toml",
        "Cargo.lock",
    ])
    .is_some_and(|s| !s.is_empty());
    println!("cargo:rustc-env=RESILIENT_COMMIT={commit}{}", if dirty { "-dirty" } else { "" });
    // The target names the C library and so the allocator (glibc's or musl's, as in the image).
    println!("cargo:rustc-env=RESILIENT_TARGET={}", std::env::var("TARGET").unwrap_or_default());
    for path in ["src", "build.rs", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={path}");
    }
    // Not the whole of bench/: every run writes bench/out and bench/results.json, and watching the
    // directory rebuilt the crate (minutes with fat LTO) at the start of every benchmark run.
    let written_by_runs = ["out", "results.json"];
    for entry in std::fs::read_dir("bench").into_iter().flatten().flatten() {
        if !written_by_runs.iter().any(|w| entry.file_name() == *w) {
            println!("cargo:rerun-if-changed={}", entry.path().display());
        }
    }
    // A new commit moves the branch's ref (HEAD itself only names the branch).
    let branch = git(&["rev-parse", "--symbolic-full-name", "HEAD"]).unwrap_or_default();
    for name in ["HEAD", branch.as_str()].into_iter().filter(|n| !n.is_empty()) {
        if let Some(path) = git(&["rev-parse", "--git-path", name]) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
